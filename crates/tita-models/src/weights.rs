//! Reading Hugging Face safetensors checkpoints: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`; f32, f16 and bf16 stored weights (upcast to f32); every
//! tensor is checked by name and shape, and tensors nobody asked for are reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor, TensorData};
use memmap2::Mmap;
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
                    Error::checkpoint(
                        &file,
                        format!("not a valid safetensors file (truncated or corrupt?): {e}"),
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
        let values = match entry.dtype {
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

    /// A `[out, in]` PyTorch linear weight, transposed to burn's `[in, out]`.
    fn take_linear<B: Backend>(
        &mut self,
        name: &str,
        out_features: usize,
        in_features: usize,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        let values = self.take_vec(name, &[out_features, in_features])?;
        Ok(Tensor::from_data(
            TensorData::new(
                transpose(&values, out_features, in_features),
                [in_features, out_features],
            ),
            device,
        ))
    }
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
        if name.ends_with(".bias") || name.contains("position_embedding") {
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

    fn take_linear<B: Backend>(
        &mut self,
        name: &str,
        out_features: usize,
        in_features: usize,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        self.take(name, [in_features, out_features], device)
    }
}
