//! Reading Hugging Face safetensors checkpoints: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`; f32, f16 and bf16 stored weights (held in f32 unless a
//! [`Precision`] says otherwise); every tensor is checked by name and shape, and tensors nobody
//! asked for are reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tita_core::error::read_json;
use tita_core::{Error, Result};

/// Where a tensor lives: which shard, and its header entry.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    offsets: (usize, usize),
}

/// The stored dtype family of a checkpoint (what a save writes back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    BF16,
}

/// All tensors of a checkpoint, memory-mapped; `take` hands them out one by one as burn tensors.
pub struct Weights {
    files: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
    taken: BTreeSet<String>,
}

/// The first tensor whose header entry's byte range does not fit its dtype and shape, said in
/// words (safetensors' own error does not name it).
fn mismatched_tensor(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    header.iter().find_map(|(name, info)| {
        let dtype = info.get("dtype")?.as_str()?;
        let width = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            _ => return None,
        };
        let shape: Vec<u64> = info
            .get("shape")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<_>>()?;
        let offsets = info.get("data_offsets")?.as_array()?;
        let (start, end) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
        let need = shape.iter().product::<u64>() * width;
        (end.checked_sub(start) != Some(need)).then(|| {
            format!(
                "tensor `{name}`: {dtype} {shape:?} needs {need} bytes but its data_offsets [{start}, {end}] hold {}",
                end.saturating_sub(start)
            )
        })
    })
}

impl Weights {
    /// Opens `dir/model.safetensors`, or the shards of `dir/model.safetensors.index.json`,
    /// or a single `.safetensors` file given directly.
    pub fn open(path: &Path) -> Result<Self> {
        let files: Vec<PathBuf> = if path.is_file() {
            vec![path.to_path_buf()]
        } else if path.join("model.safetensors.index.json").exists() {
            let index_path = path.join("model.safetensors.index.json");
            let index = read_json(&index_path)?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::config(&index_path, "weight_map", "missing or not an object")
                })?;
            let mut shards = BTreeSet::new();
            for (k, v) in map {
                let shard = v.as_str().ok_or_else(|| {
                    Error::config(
                        &index_path,
                        format!("weight_map.{k}"),
                        "expected a file name",
                    )
                })?;
                shards.insert(shard.to_string());
            }
            shards.into_iter().map(|s| path.join(s)).collect()
        } else if path.join("model.safetensors").exists() {
            vec![path.join("model.safetensors")]
        } else {
            return Err(Error::checkpoint(
                path,
                "no `model.safetensors` or `model.safetensors.index.json` in this directory",
            ));
        };

        let mut weights = Weights {
            files: Vec::new(),
            entries: HashMap::new(),
            taken: BTreeSet::new(),
        };
        for file in files {
            let f = File::open(&file).map_err(|e| Error::io(&file, e))?;
            // SAFETY: read-only map of a checkpoint file; the file is not modified while loaded.
            let mmap = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&file, e))?;
            let idx = weights.files.len();
            {
                let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                    let why = match e {
                        safetensors::SafeTensorError::TensorInvalidInfo => {
                            mismatched_tensor(&mmap).unwrap_or_else(|| e.to_string())
                        }
                        e => e.to_string(),
                    };
                    Error::checkpoint(
                        &file,
                        format!("not a valid safetensors file (truncated or corrupt?): {why}"),
                    )
                })?;
                for (name, view) in st.tensors() {
                    let base = mmap.as_ptr() as usize;
                    let start = view.data().as_ptr() as usize - base;
                    let entry = Entry {
                        file: idx,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        offsets: (start, start + view.data().len()),
                    };
                    if weights.entries.insert(name.clone(), entry).is_some() {
                        return Err(Error::tensor(&file, name, "stored in more than one shard"));
                    }
                }
            }
            weights.files.push((file, mmap));
        }
        Ok(weights)
    }

    /// The file that holds `name` (for messages), or the first file.
    fn file_of(&self, name: &str) -> &Path {
        let idx = self.entries.get(name).map_or(0, |e| e.file);
        &self.files[idx].0
    }

    /// A description of the checkpoint for messages: the single file or the directory of shards.
    pub fn source(&self) -> PathBuf {
        match self.files.as_slice() {
            [(p, _)] => p.clone(),
            [(p, _), ..] => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            [] => PathBuf::new(),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The most common float dtype among the tensors (what the checkpoint "is").
    pub fn dtype(&self) -> StoredDtype {
        let mut counts: BTreeMap<u8, usize> = BTreeMap::new();
        for e in self.entries.values() {
            let k = match e.dtype {
                Dtype::F16 => 1,
                Dtype::BF16 => 2,
                _ => 0,
            };
            *counts.entry(k).or_default() += 1;
        }
        match counts.into_iter().max_by_key(|&(_, n)| n).map(|(k, _)| k) {
            Some(1) => StoredDtype::F16,
            Some(2) => StoredDtype::BF16,
            _ => StoredDtype::F32,
        }
    }

    /// The values of `name` as f32, after checking that its shape is `expected`.
    fn read(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let entry = self.entries.get(name).ok_or_else(|| {
            Error::tensor(
                self.source(),
                name,
                format!("missing from the checkpoint (expected shape {expected:?})"),
            )
        })?;
        let path = &self.files[entry.file].0;
        if entry.shape != expected {
            return Err(Error::tensor(
                path,
                name,
                format!(
                    "has shape {:?}, but the config implies {expected:?}",
                    entry.shape
                ),
            ));
        }
        let bytes = &self.files[entry.file].1[entry.offsets.0..entry.offsets.1];
        let values: Vec<f32> = match entry.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::tensor(
                    path,
                    name,
                    format!("dtype {other:?} is not supported (f32, f16, bf16)"),
                ))
            }
        };
        // One pass over values already in cache: a NaN/Inf weight would only surface later as
        // empty or garbage text.
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            let count = values.iter().filter(|v| !v.is_finite()).count();
            return Err(Error::tensor(
                path,
                name,
                format!(
                    "holds {count} non-finite value(s) ({v} at flat index {i} of {}); the checkpoint is corrupt",
                    values.len()
                ),
            ));
        }
        self.taken.insert(name.to_string());
        Ok(values)
    }

    /// Fails if the checkpoint holds tensors no module asked for, naming them.
    pub fn finish(self) -> Result<()> {
        let mut unexpected: Vec<&String> = self
            .entries
            .keys()
            .filter(|k| !self.taken.contains(*k))
            .collect();
        if unexpected.is_empty() {
            return Ok(());
        }
        unexpected.sort();
        let shown: Vec<&str> = unexpected.iter().take(8).map(|s| s.as_str()).collect();
        let more = if unexpected.len() > 8 {
            format!(" and {} more", unexpected.len() - 8)
        } else {
            String::new()
        };
        Err(Error::tensor(
            self.file_of(unexpected[0]),
            unexpected[0].clone(),
            format!(
                "unexpected tensor(s) that the config does not account for: {}{more}",
                shown.join(", ")
            ),
        ))
    }
}

/// Where model constructors get their tensors: a checkpoint ([`Weights`]) or random
/// initialisation ([`RandomWeights`]) for benchmarks at real shapes without real weights.
pub trait TensorSource {
    /// The values of `name` (f32, row-major), which must have shape `expected`.
    fn take_vec(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>>;

    /// Marks `name` as accounted for without loading it (buffers the model recomputes).
    fn skip(&mut self, name: &str);

    /// Whether the source holds `name` (used to detect key layouts).
    fn contains(&self, name: &str) -> bool;

    /// The dtype `name` is stored in (what a save writes back).
    fn stored_dtype(&self, _name: &str) -> StoredDtype {
        StoredDtype::F32
    }

    /// `name` as a burn tensor of shape `expected`.
    fn take<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        expected: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let values = self.take_vec(name, &expected)?;
        Ok(Tensor::from_data(TensorData::new(values, expected), device))
    }

    /// A tensor stored as `[rows, ...]` (a PyTorch `[out, in]` linear weight, or a conv kernel
    /// flattened behind its first axis) as the `[rest, rows]` matrix burn multiplies with.
    fn take_transposed<B: Backend>(
        &mut self,
        name: &str,
        stored: &[usize],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        let values = self.take_vec(name, stored)?;
        let (rows, rest) = (stored[0], stored[1..].iter().product());
        Ok(Tensor::from_data(
            TensorData::new(transpose(&values, rows, rest), [rest, rows]),
            device,
        ))
    }

    /// [`TensorSource::take`] as a module parameter whose id is derived from `name`.
    fn param<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        expected: [usize; D],
        device: &B::Device,
    ) -> Result<Param<Tensor<B, D>>> {
        Ok(named_param(name, self.take(name, expected, device)?))
    }

    /// [`TensorSource::take_transposed`] as a module parameter whose id is derived from `name`.
    fn param_transposed<B: Backend>(
        &mut self,
        name: &str,
        stored: &[usize],
        device: &B::Device,
    ) -> Result<Param<Tensor<B, 2>>> {
        Ok(named_param(
            name,
            self.take_transposed(name, stored, device)?,
        ))
    }
}

/// A parameter whose [`ParamId`] is a hash of its checkpoint name, so that the same tensor gets
/// the same id in every load (optimiser state saved by one run is found again on resume).
pub fn named_param<B: Backend, const D: usize>(
    name: &str,
    tensor: Tensor<B, D>,
) -> Param<Tensor<B, D>> {
    Param::initialized(param_id(name), tensor.require_grad())
}

/// FNV-1a of the checkpoint name.
pub fn param_id(name: &str) -> ParamId {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    ParamId::from(hash)
}

/// One checkpoint tensor a model was built from: enough to write it back as it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTensor {
    pub name: String,
    /// Shape in the checkpoint.
    pub shape: Vec<usize>,
    /// The parameter holds it as `[rest, rows]` (see [`TensorSource::take_transposed`]).
    pub transposed: bool,
    pub dtype: StoredDtype,
}

/// Wraps a source and notes every tensor taken from it, in order.
pub struct Recorder<'a, S> {
    inner: &'a mut S,
    pub taken: Vec<StoredTensor>,
    /// The float type parameters are held in.
    dtype: DType,
}

impl<'a, S: TensorSource> Recorder<'a, S> {
    pub fn new(inner: &'a mut S, dtype: DType) -> Self {
        Recorder {
            inner,
            taken: Vec::new(),
            dtype,
        }
    }

    fn note(&mut self, name: &str, shape: &[usize], transposed: bool) {
        self.taken.push(StoredTensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            transposed,
            dtype: self.inner.stored_dtype(name),
        });
    }
}

impl<S: TensorSource> TensorSource for Recorder<'_, S> {
    fn take_vec(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let v = self.inner.take_vec(name, expected)?;
        self.note(name, expected, false);
        Ok(v)
    }

    fn skip(&mut self, name: &str) {
        self.inner.skip(name)
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn stored_dtype(&self, name: &str) -> StoredDtype {
        self.inner.stored_dtype(name)
    }

    fn take<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        expected: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let t = self.inner.take(name, expected, device)?;
        self.note(name, &expected, false);
        Ok(cast(t, self.dtype))
    }

    fn take_transposed<B: Backend>(
        &mut self,
        name: &str,
        stored: &[usize],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        let t = self.inner.take_transposed(name, stored, device)?;
        self.note(name, stored, true);
        Ok(cast(t, self.dtype))
    }
}

/// `t` in `dtype` (no copy when it already is).
pub fn cast<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(dtype)
    }
}

/// The float type a model computes in: the checkpoint's own (`Auto`) or a chosen one. Logits
/// and everything after them are f32 whatever this is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The checkpoint's stored dtype (its most common float type).
    Auto,
    /// f32 whatever the checkpoint stores: the reference for parity.
    #[default]
    F32,
    F16,
    BF16,
}

impl Precision {
    /// The burn dtype for a checkpoint stored as `stored`.
    pub fn resolve(self, stored: StoredDtype) -> DType {
        match (self, stored) {
            (Precision::Auto, StoredDtype::F16) | (Precision::F16, _) => DType::F16,
            (Precision::Auto, StoredDtype::BF16) | (Precision::BF16, _) => DType::BF16,
            _ => DType::F32,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Precision::Auto),
            "f32" | "float32" => Ok(Precision::F32),
            "f16" | "float16" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::BF16),
            other => Err(Error::argument(
                "dtype",
                format!("`{other}` is not one of auto, f32, f16, bf16"),
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::BF16 => "bf16",
        })
    }
}

/// Writes the parameters of `module` as one safetensors file holding `stored` (names, shapes,
/// dtypes and layouts of the checkpoint they came from), via a temporary file and a rename.
pub fn save_safetensors<B: Backend, M: Module<B>>(
    module: &M,
    stored: &[StoredTensor],
    path: &Path,
) -> Result<()> {
    struct Collect(HashMap<ParamId, Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0.insert(param.id, data.to_vec().unwrap_or_default());
        }
    }
    let mut values = Collect(HashMap::new());
    module.visit(&mut values);

    let mut buffers = Vec::with_capacity(stored.len());
    for t in stored {
        let v = values.0.remove(&param_id(&t.name)).ok_or_else(|| {
            Error::tensor(path, &t.name, "no parameter of the model holds this tensor")
        })?;
        let n: usize = t.shape.iter().product();
        if v.len() != n {
            return Err(Error::tensor(
                path,
                &t.name,
                format!(
                    "the parameter has {} values, the stored shape {:?} needs {n}",
                    v.len(),
                    t.shape
                ),
            ));
        }
        // A checkpoint never stores a NaN/Inf (nor a value its half-precision dtype turns into one).
        Error::check_finite(
            || format!("tensor `{}` being saved to {}", t.name, path.display()),
            &v,
        )?;
        if t.dtype == StoredDtype::F16 {
            if let Some(x) = v.iter().find(|x| x.abs() > f32::from(half::f16::MAX)) {
                return Err(Error::tensor(
                    path,
                    &t.name,
                    format!("{x} is outside float16's range, in which this tensor is stored"),
                ));
            }
        }
        let v = if t.transposed {
            transpose(&v, n / t.shape[0], t.shape[0])
        } else {
            v
        };
        let (dtype, bytes): (Dtype, Vec<u8>) = match t.dtype {
            StoredDtype::F32 => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            StoredDtype::F16 => (
                Dtype::F16,
                v.iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect(),
            ),
            StoredDtype::BF16 => (
                Dtype::BF16,
                v.iter()
                    .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                    .collect(),
            ),
        };
        buffers.push((t, dtype, bytes));
    }
    let mut views = Vec::with_capacity(buffers.len());
    for (t, dtype, bytes) in &buffers {
        let view = TensorView::new(*dtype, t.shape.clone(), bytes)
            .map_err(|e| Error::tensor(path, &t.name, e.to_string()))?;
        views.push((t.name.clone(), view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| Error::checkpoint(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Row-major `[rows, cols]` -> `[cols, rows]`.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = values[r * cols + c];
        }
    }
    t
}

impl TensorSource for Weights {
    fn take_vec(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        self.read(name, expected)
    }

    fn skip(&mut self, name: &str) {
        if self.entries.contains_key(name) {
            self.taken.insert(name.to_string());
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn stored_dtype(&self, name: &str) -> StoredDtype {
        match self.entries.get(name).map(|e| e.dtype) {
            Some(Dtype::F16) => StoredDtype::F16,
            Some(Dtype::BF16) => StoredDtype::BF16,
            _ => StoredDtype::F32,
        }
    }
}

/// Random weights for any config: N(0, std) matrices, unit norm scales, zero biases. Tensors
/// are drawn on the device, so a 7B-shaped model costs no host memory.
pub struct RandomWeights {
    pub std: f64,
    rng: rand::rngs::StdRng,
}

impl RandomWeights {
    pub fn new(std: f64, seed: u64) -> Self {
        use rand::SeedableRng;
        RandomWeights {
            std,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    fn fill(name: &str) -> Option<f32> {
        let norm = name.contains("norm") || name.contains("layrnorm");
        if name.ends_with(".bias") {
            Some(0.0)
        } else if norm {
            Some(1.0)
        } else {
            None
        }
    }
}

impl TensorSource for RandomWeights {
    fn take_vec(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        use rand::Rng;
        let n: usize = expected.iter().product();
        Ok(match Self::fill(name) {
            Some(v) => vec![v; n],
            // Uniform with the same variance as N(0, std): cheap and good enough for timing.
            None => {
                let a = (self.std * 3f64.sqrt()) as f32;
                (0..n).map(|_| self.rng.random_range(-a..a)).collect()
            }
        })
    }

    fn skip(&mut self, _name: &str) {}

    fn contains(&self, _name: &str) -> bool {
        false
    }

    fn take<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        expected: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        Ok(match Self::fill(name) {
            Some(v) => Tensor::full(expected, v, device),
            None => Tensor::random(
                expected,
                burn::tensor::Distribution::Normal(0.0, self.std),
                device,
            ),
        })
    }

    fn take_transposed<B: Backend>(
        &mut self,
        name: &str,
        stored: &[usize],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        let rest = stored[1..].iter().product();
        self.take(name, [rest, stored[0]], device)
    }
}
