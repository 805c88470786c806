//! llama.cpp checkpoints: a GGUF language model (`llama` architecture), alone or paired with a
//! LLaVA-1.5 `mmproj` CLIP GGUF. The file is read ([`reader`]), its tensors dequantised to f32
//! at load ([`dequant`]; keeping them quantised for compute is not done here), renamed to
//! Hugging Face names with llama.cpp's Q/K row order undone ([`names`]), so that the model code
//! loads them exactly as it loads safetensors; its config, tokenizer and chat template come
//! from the metadata ([`tokenizer`]).

pub mod dequant;
pub mod names;
pub mod reader;
pub mod tokenizer;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use tita_core::image::{ImageProcessor, ResizeTo};
use tita_core::template::ChatTemplate;
use tita_core::{Error, Result, Tokenizer};

pub use dequant::GgmlType;
pub use names::Transform;
pub use reader::{GgufFile, MetaValue, TensorInfo};

use crate::family::{KeyLayout, ModelConfig};
use crate::llama::LlamaKeys;
use crate::vlm::Vlm;
use crate::weights::{Precision, StoredDtype, TensorSource};

/// Where an HF-named tensor is stored.
struct Entry {
    file: usize,
    tensor: usize,
    transform: Transform,
}

/// The tensors of one or two GGUF files under their Hugging Face names, dequantised to f32 as
/// they are taken; like [`crate::Weights`], each is checked by shape and finiteness and
/// tensors nobody asked for are reported by [`GgufWeights::finish`].
pub struct GgufWeights {
    files: Vec<GgufFile>,
    entries: HashMap<String, Entry>,
    /// Tensors our modules load that the file lacks by design, with their constant value: the
    /// legacy mmproj drops CLIP's `post_layernorm`, which LLaVA never applies.
    constant: HashMap<String, f32>,
    taken: BTreeSet<String>,
}

impl GgufWeights {
    fn new() -> Self {
        GgufWeights {
            files: Vec::new(),
            entries: HashMap::new(),
            constant: HashMap::new(),
            taken: BTreeSet::new(),
        }
    }

    /// Adds `file`'s tensors under the names `name` gives them (unknown ones keep their GGUF
    /// name, so that `finish` reports them).
    fn add(
        &mut self,
        file: GgufFile,
        name: impl Fn(&str) -> Option<(String, Transform)>,
    ) -> Result<()> {
        let idx = self.files.len();
        for (t, info) in file.tensors.iter().enumerate() {
            let (hf, transform) = name(&info.name).unwrap_or((info.name.clone(), Transform::None));
            let entry = Entry {
                file: idx,
                tensor: t,
                transform,
            };
            if self.entries.insert(hf.clone(), entry).is_some() {
                return Err(Error::tensor(
                    file.path(),
                    &info.name,
                    format!("maps to `{hf}`, which another tensor already is"),
                ));
            }
        }
        self.files.push(file);
        Ok(())
    }

    pub fn files(&self) -> &[GgufFile] {
        &self.files
    }

    /// The stored type of the HF-named tensor `name`.
    pub fn ggml_type(&self, name: &str) -> Option<GgmlType> {
        self.entries
            .get(name)
            .map(|e| self.files[e.file].tensors[e.tensor].ggml_type)
    }

    /// Fails if the files hold tensors no module asked for, naming them by their GGUF names.
    pub fn finish(self) -> Result<()> {
        let mut unexpected: Vec<(&Path, &str)> = self
            .entries
            .iter()
            .filter(|(k, _)| !self.taken.contains(*k))
            .map(|(_, e)| {
                let f = &self.files[e.file];
                (f.path(), f.tensors[e.tensor].name.as_str())
            })
            .collect();
        if unexpected.is_empty() {
            return Ok(());
        }
        unexpected.sort();
        let shown: Vec<&str> = unexpected.iter().take(8).map(|(_, n)| *n).collect();
        let more = if unexpected.len() > 8 {
            format!(" and {} more", unexpected.len() - 8)
        } else {
            String::new()
        };
        Err(Error::tensor(
            unexpected[0].0,
            unexpected[0].1,
            format!(
                "tensor(s) that no supported architecture accounts for: {}{more}",
                shown.join(", ")
            ),
        ))
    }
}

impl TensorSource for GgufWeights {
    fn take_vec(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        if let Some(&v) = self.constant.get(name) {
            self.taken.insert(name.to_string());
            return Ok(vec![v; expected.iter().product()]);
        }
        let entry = self.entries.get(name).ok_or_else(|| {
            let files: Vec<String> = self
                .files
                .iter()
                .map(|f| f.path().display().to_string())
                .collect();
            Error::tensor(
                files.join(" + "),
                name,
                format!("missing from the GGUF file(s) (expected shape {expected:?})"),
            )
        })?;
        let file = &self.files[entry.file];
        let info = &file.tensors[entry.tensor];
        if info.shape() != expected {
            return Err(Error::tensor(
                file.path(),
                &info.name,
                format!(
                    "(`{name}`) has shape {:?}, but the config implies {expected:?}",
                    info.shape()
                ),
            ));
        }
        let mut values = file.dequantize_info(info)?;
        if let Transform::Unpermute(heads) = entry.transform {
            let rows = expected[0];
            let cols = values.len() / rows.max(1);
            if heads == 0 || !rows.is_multiple_of(2 * heads) {
                return Err(Error::tensor(
                    file.path(),
                    &info.name,
                    format!("{rows} rows are not {heads} heads of an even size"),
                ));
            }
            values = names::unpermute(&values, heads, cols);
        }
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::tensor(
                file.path(),
                &info.name,
                format!("holds a non-finite value ({v} at flat index {i}); the file is corrupt"),
            ));
        }
        self.taken.insert(name.to_string());
        Ok(values)
    }

    fn skip(&mut self, name: &str) {
        if self.entries.contains_key(name) {
            self.taken.insert(name.to_string());
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name) || self.constant.contains_key(name)
    }

    fn stored_dtype(&self, name: &str) -> StoredDtype {
        match self.ggml_type(name) {
            Some(GgmlType::F16) => StoredDtype::F16,
            Some(GgmlType::BF16) => StoredDtype::BF16,
            _ => StoredDtype::F32,
        }
    }
}

/// A GGUF checkpoint opened: the config transformers would have, where its tensors live and
/// the tensors themselves.
pub struct GgufCheckpoint {
    pub config: ModelConfig,
    pub keys: KeyLayout,
    pub weights: GgufWeights,
    /// The language model's file.
    pub path: PathBuf,
    /// The mmproj, if any.
    pub mmproj: Option<PathBuf>,
}

impl GgufCheckpoint {
    /// Opens a `llama` GGUF and, for LLaVA, its `clip` mmproj.
    pub fn open(model: &Path, mmproj: Option<&Path>) -> Result<Self> {
        let text = GgufFile::open(model)?;
        let text_json = names::llama_config(&text)?;
        let heads = text_json["num_attention_heads"].as_u64().unwrap_or(0) as usize;
        let kv = text_json["num_key_value_heads"].as_u64().unwrap_or(0) as usize;
        let mut weights = GgufWeights::new();
        let (json, keys) = match mmproj {
            None => (text_json, KeyLayout::text_only("model.")),
            Some(mp) => {
                let clip = GgufFile::open(mp)?;
                let image_id = tokenizer::token_id(&text, "<image>")?.ok_or_else(|| {
                    Error::config(
                        model,
                        "tokenizer.ggml.tokens",
                        "no `<image>` piece: this language model cannot be paired with an mmproj",
                    )
                })?;
                let json = names::llava_config(text_json, &clip, image_id as usize)?;
                let fc1_is_down = ffn_down_widens(&clip)?;
                if clip.tensor("v.post_ln.weight").is_none() {
                    let ln = format!("{}post_layernorm.", names::VISION_PREFIX);
                    weights.constant.insert(format!("{ln}weight"), 1.0);
                    weights.constant.insert(format!("{ln}bias"), 0.0);
                }
                weights.add(clip, |n| {
                    names::clip_name(n, fc1_is_down).map(|hf| (hf, Transform::None))
                })?;
                let keys = KeyLayout {
                    text: LlamaKeys {
                        decoder: "model.".into(),
                        lm_head: "lm_head.weight".into(),
                    },
                    vision: Some(names::VISION_PREFIX.into()),
                    projector: Some(names::PROJECTOR_PREFIX.into()),
                };
                (json, keys)
            }
        };
        weights.add(text, |n| names::llama_name(n, heads, kv))?;
        let config = ModelConfig::from_value(&json, model)?;
        Ok(GgufCheckpoint {
            config,
            keys,
            weights,
            path: model.to_path_buf(),
            mmproj: mmproj.map(Path::to_path_buf),
        })
    }

    /// The language model's file.
    pub fn text_file(&self) -> &GgufFile {
        self.weights
            .files
            .last()
            .expect("the language model is always added")
    }

    /// The mmproj's file, if any.
    pub fn mmproj_file(&self) -> Option<&GgufFile> {
        self.mmproj.as_ref().map(|_| &self.weights.files[0])
    }

    /// The tokenizer the language model's metadata describes.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        tokenizer::tokenizer(self.text_file())
    }

    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>> {
        tokenizer::chat_template(self.text_file())
    }

    /// The mmproj's image preprocessing (CLIP's: shortest edge resized to the tower's size by
    /// bicubic, centre crop, `clip.vision.image_mean` / `image_std`), if there is an mmproj.
    pub fn image_processor(&self) -> Result<Option<ImageProcessor>> {
        let Some(clip) = self.mmproj_file() else {
            return Ok(None);
        };
        let size = clip.usize("clip.vision.image_size")?;
        let triple = |key: &str| -> Result<[f64; 3]> {
            let v = clip
                .get_array(key, "numbers", MetaValue::as_f64)?
                .ok_or_else(|| Error::config(clip.path(), key, "missing (three numbers)"))?;
            v.try_into().map_err(|v: Vec<f64>| {
                Error::config(clip.path(), key, format!("{} numbers, expected 3", v.len()))
            })
        };
        Ok(Some(ImageProcessor {
            size: ResizeTo::ShortestEdge(size),
            crop_size: (size, size),
            image_mean: triple("clip.vision.image_mean")?,
            image_std: triple("clip.vision.image_std")?,
            ..ImageProcessor::default()
        }))
    }

    /// The dtype the weights are "stored" in, by `general.file_type`: F16 and BF16 files are
    /// such, anything quantised dequantises to f32.
    pub fn stored_dtype(&self) -> Result<StoredDtype> {
        Ok(match self.text_file().get_usize("general.file_type")? {
            Some(1) => StoredDtype::F16,
            Some(32) => StoredDtype::BF16,
            _ => StoredDtype::F32,
        })
    }

    /// Builds the model, its parameters in `precision`; every tensor of the files must be used.
    pub fn load<B: Backend>(self, precision: Precision, device: &B::Device) -> Result<Vlm<B>> {
        let dtype = precision.resolve(self.stored_dtype()?);
        let mut weights = self.weights;
        let mut model = Vlm::from_source(&mut weights, self.config, self.keys, dtype, device)?;
        weights.finish()?;
        model.name = match &self.mmproj {
            Some(mp) => format!("{} + {}", self.path.display(), mp.display()),
            None => self.path.display().to_string(),
        };
        Ok(model)
    }
}

/// A GGUF checkpoint as a model path names it: a `.gguf` file (a language model alone), or a
/// directory without `config.json` that holds one language GGUF and at most one mmproj (a
/// `clip` GGUF), as llama.cpp's LLaVA downloads come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufSpec {
    pub model: PathBuf,
    pub mmproj: Option<PathBuf>,
}

impl GgufSpec {
    /// The GGUF checkpoint at `path`, or None when `path` is not one (a safetensors checkpoint).
    pub fn detect(path: &Path) -> Result<Option<Self>> {
        let is_gguf = |p: &Path| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        };
        if path.is_file() {
            return Ok(is_gguf(path).then(|| GgufSpec {
                model: path.to_path_buf(),
                mmproj: None,
            }));
        }
        if !path.is_dir() || path.join("config.json").exists() {
            return Ok(None);
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
            let p = entry.map_err(|e| Error::io(path, e))?.path();
            if p.is_file() && is_gguf(&p) {
                files.push(p);
            }
        }
        if files.is_empty() {
            return Ok(None);
        }
        files.sort();
        let (mut models, mut mmprojs) = (Vec::new(), Vec::new());
        for p in files {
            let clip = names::architecture(&GgufFile::open(&p)?)? == "clip";
            if clip { &mut mmprojs } else { &mut models }.push(p);
        }
        let list = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (models.len(), mmprojs.len()) {
            (1, 0 | 1) => Ok(Some(GgufSpec {
                model: models.remove(0),
                mmproj: mmprojs.pop(),
            })),
            _ => Err(Error::checkpoint(
                path,
                format!(
                    "holds {} language GGUF(s) [{}] and {} mmproj GGUF(s) [{}]; expected one language model and at most one mmproj",
                    models.len(),
                    list(&models),
                    mmprojs.len(),
                    list(&mmprojs)
                ),
            )),
        }
    }

    pub fn open(&self) -> Result<GgufCheckpoint> {
        GgufCheckpoint::open(&self.model, self.mmproj.as_deref())
    }
}

/// Whether the mmproj's `ffn_down` is CLIP's widening `fc1` (the legacy converter's names) or
/// `ffn_up` is (the newer converter's), told by the first block's shapes.
pub fn ffn_down_widens(clip: &GgufFile) -> Result<bool> {
    let inter = clip.usize("clip.vision.feed_forward_length")?;
    let rows = |n: &str| clip.tensor(n).map(|t| t.shape()[0]);
    let (down, up) = (
        rows("v.blk.0.ffn_down.weight"),
        rows("v.blk.0.ffn_up.weight"),
    );
    Ok(!(up == Some(inter) && down != Some(inter)))
}

/// Loads a GGUF model (and its mmproj) with weights in f32.
pub fn load<B: Backend>(model: &Path, mmproj: Option<&Path>, device: &B::Device) -> Result<Vlm<B>> {
    GgufCheckpoint::open(model, mmproj)?.load(Precision::F32, device)
}
