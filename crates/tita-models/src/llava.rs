//! LLaVA composition (`LlavaForConditionalGeneration`): CLIP vision tower -> selected hidden
//! state(s) -> MLP projector -> features placed at the `<image>` positions of the prompt ->
//! LLaMA decoder. A plain `LlamaForCausalLM` checkpoint loads into the same type without the
//! vision part, for text-only use.

use std::path::Path;

use burn::module::Module;
use burn::nn;
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use tita_core::image::PixelValues;
use tita_core::{Activation, Error, LlavaConfig, ModelConfig, Result, SelectStrategy};

use crate::clip::ClipVision;
use crate::layers::{activate, linear};
use crate::llama::{KvCache, Llama, LlamaKeys};
use crate::weights::{
    save_safetensors, Precision, RandomWeights, Recorder, StoredTensor, TensorSource, Weights,
};

#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    pub linear_1: nn::Linear<B>,
    pub linear_2: nn::Linear<B>,
    #[module(skip)]
    pub act: Activation,
}

impl<B: Backend> Projector<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.linear_2
            .forward(activate(self.linear_1.forward(x), self.act))
    }
}

/// The vision half of a LLaVA model.
#[derive(Module, Debug)]
pub struct VisionPart<B: Backend> {
    pub vision_tower: ClipVision<B>,
    pub multi_modal_projector: Projector<B>,
    #[module(skip)]
    pub config: LlavaConfig,
}

/// Where each part's tensors live in the checkpoint, detected from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    pub text: LlamaKeys,
    /// Prefix of `embeddings.*`, `encoder.layers.N.*` (with or without `vision_model.`).
    pub vision: Option<String>,
    /// Prefix of `linear_1`, `linear_2`.
    pub projector: Option<String>,
}

fn first_present(w: &Weights, candidates: &[&str], suffix: &str) -> Option<String> {
    candidates
        .iter()
        .find(|p| w.contains(&format!("{p}{suffix}")))
        .map(|p| p.to_string())
}

impl KeyLayout {
    /// The layout of `llava-hf` hub checkpoints (and of plain `LlamaForCausalLM`).
    pub fn hub(config: &ModelConfig) -> Self {
        match config {
            ModelConfig::Llama(_) => KeyLayout {
                text: LlamaKeys {
                    decoder: "model.".into(),
                    lm_head: "lm_head.weight".into(),
                },
                vision: None,
                projector: None,
            },
            ModelConfig::Llava(_) => KeyLayout {
                text: LlamaKeys {
                    decoder: "language_model.model.".into(),
                    lm_head: "language_model.lm_head.weight".into(),
                },
                vision: Some("vision_tower.vision_model.".into()),
                projector: Some("multi_modal_projector.".into()),
            },
        }
    }

    /// Recognises the hub layout (`language_model.model.*`, `vision_tower.vision_model.*`), the
    /// transformers >= 4.52 layout (`model.language_model.*`, `lm_head.weight`) and the
    /// transformers 5 vision layout (`vision_tower.*` without `vision_model.`).
    pub fn detect(w: &Weights, config: &ModelConfig) -> Result<Self> {
        let not_found = |what: &str, tried: &[&str], suffix: &str| {
            let tried: Vec<String> = tried.iter().map(|p| format!("`{p}{suffix}`")).collect();
            Error::tensor(
                w.source(),
                suffix,
                format!("{what} not found; tried {}", tried.join(", ")),
            )
        };
        match config {
            ModelConfig::Llama(_) => {
                let decoder =
                    first_present(w, &["model.", ""], "embed_tokens.weight").ok_or_else(|| {
                        not_found(
                            "the token embedding",
                            &["model.", ""],
                            "embed_tokens.weight",
                        )
                    })?;
                Ok(KeyLayout {
                    text: LlamaKeys {
                        decoder,
                        lm_head: "lm_head.weight".into(),
                    },
                    vision: None,
                    projector: None,
                })
            }
            ModelConfig::Llava(_) => {
                let text = [
                    "language_model.model.",
                    "model.language_model.",
                    "language_model.",
                ];
                let decoder = first_present(w, &text, "embed_tokens.weight")
                    .ok_or_else(|| not_found("the language model", &text, "embed_tokens.weight"))?;
                let heads = ["language_model.lm_head.", "lm_head."];
                let lm_head = first_present(w, &heads, "weight").unwrap_or_else(|| {
                    if decoder == "language_model.model." {
                        heads[0]
                    } else {
                        heads[1]
                    }
                    .to_string()
                }) + "weight";
                let vis = [
                    "vision_tower.vision_model.",
                    "model.vision_tower.vision_model.",
                    "vision_tower.",
                    "model.vision_tower.",
                ];
                let vision = first_present(w, &vis, "embeddings.patch_embedding.weight")
                    .ok_or_else(|| {
                        not_found(
                            "the vision tower",
                            &vis,
                            "embeddings.patch_embedding.weight",
                        )
                    })?;
                let proj = ["multi_modal_projector.", "model.multi_modal_projector."];
                let projector = first_present(w, &proj, "linear_1.weight")
                    .ok_or_else(|| not_found("the projector", &proj, "linear_1.weight"))?;
                Ok(KeyLayout {
                    text: LlamaKeys { decoder, lm_head },
                    vision: Some(vision),
                    projector: Some(projector),
                })
            }
        }
    }
}

/// A loaded checkpoint: the language model and, for LLaVA, the vision part.
#[derive(Module, Debug)]
pub struct Vlm<B: Backend> {
    pub language_model: Llama<B>,
    pub vision: Option<VisionPart<B>>,
    #[module(skip)]
    pub config: ModelConfig,
    #[module(skip)]
    pub keys: KeyLayout,
    /// The checkpoint tensors the parameters came from, in load order (what a save writes).
    #[module(skip)]
    pub stored: Vec<StoredTensor>,
    /// Where the weights came from (the checkpoint directory), named in errors.
    #[module(skip)]
    pub name: String,
}

impl<B: Backend> Vlm<B> {
    /// Loads `config.json` and the safetensors weights of a checkpoint directory. Every tensor
    /// the config implies must be present with its shape, and nothing else may be.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        Self::load_in(dir, Precision::F32, device)
    }

    /// [`Vlm::load`] with the weights held and computed in `precision`.
    pub fn load_in(dir: &Path, precision: Precision, device: &B::Device) -> Result<Self> {
        let config = ModelConfig::from_file(dir)?;
        let mut w = Weights::open(dir)?;
        let keys = KeyLayout::detect(&w, &config)?;
        let dtype = precision.resolve(w.dtype());
        let mut model = Self::from_source(&mut w, config, keys, dtype, device)?;
        w.finish()?;
        model.name = dir.display().to_string();
        Ok(model)
    }

    /// Writes the model as a Hugging Face checkpoint directory: `model.safetensors` with the
    /// key names and dtypes it was loaded from, next to a copy of every other file of
    /// `source_dir` (config, tokenizer, preprocessor). The directory appears complete or not
    /// at all: it is written under a temporary name and renamed.
    pub fn save_pretrained(&self, source_dir: &Path, out: &Path) -> Result<()> {
        let tmp = out.with_extension("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for entry in std::fs::read_dir(source_dir).map_err(|e| Error::io(source_dir, e))? {
            let path = entry.map_err(|e| Error::io(source_dir, e))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
            if path.is_file() && !weights {
                std::fs::copy(&path, tmp.join(name)).map_err(|e| Error::io(&path, e))?;
            }
        }
        if let Err(e) = save_safetensors(self, &self.stored, &tmp.join("model.safetensors")) {
            // Leave nothing half-written behind (a NaN weight is refused here, for instance).
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
        }
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
    }

    /// A model of `config`'s shapes with random weights (benchmarks at real sizes).
    pub fn random(config: ModelConfig, seed: u64, device: &B::Device) -> Result<Self> {
        Self::random_in(config, seed, DType::F32, device)
    }

    /// [`Vlm::random`] with the weights in `dtype`.
    pub fn random_in(
        config: ModelConfig,
        seed: u64,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self> {
        let keys = KeyLayout::hub(&config);
        let mut model = Self::from_source(
            &mut RandomWeights::new(0.02, seed),
            config,
            keys,
            dtype,
            device,
        )?;
        model.name = format!("a random model (seed {seed})");
        Ok(model)
    }

    /// Builds the model from any tensor source whose names follow `keys`, its parameters in
    /// `dtype`.
    pub fn from_source(
        source: &mut impl TensorSource,
        config: ModelConfig,
        keys: KeyLayout,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self> {
        if !B::supports_dtype(device, dtype) {
            return Err(Error::argument(
                "dtype",
                format!(
                    "{dtype:?} is not supported by the {} backend on this device; use f32{}",
                    B::name(device),
                    if B::supports_dtype(device, DType::F16) {
                        " or f16"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let w = &mut Recorder::new(source, dtype);
        let language_model = Llama::load(w, &keys.text, config.text(), device)?;
        let vision = match &config {
            ModelConfig::Llama(_) => None,
            ModelConfig::Llava(c) => {
                let vision_tower = ClipVision::load(
                    w,
                    keys.vision.as_deref().unwrap_or_default(),
                    &c.vision,
                    device,
                )?;
                let p = keys.projector.as_deref().unwrap_or_default();
                let feat = c.vision.hidden_size * c.vision_feature_layers.len();
                let th = c.text.hidden_size;
                let bias = c.multimodal_projector_bias;
                let multi_modal_projector = Projector {
                    linear_1: linear(w, &format!("{p}linear_1"), feat, th, bias, device)?,
                    linear_2: linear(w, &format!("{p}linear_2"), th, th, bias, device)?,
                    act: c.projector_hidden_act,
                };
                Some(VisionPart {
                    vision_tower,
                    multi_modal_projector,
                    config: c.clone(),
                })
            }
        };
        let stored = std::mem::take(&mut w.taken);
        Ok(Vlm {
            language_model,
            vision,
            config,
            keys,
            stored,
            name: "a model".into(),
        })
    }

    /// The float type the weights are held and computed in.
    pub fn dtype(&self) -> DType {
        self.language_model.embed_tokens.val().dtype()
    }

    pub fn llava_config(&self) -> Option<&LlavaConfig> {
        self.vision.as_ref().map(|v| &v.config)
    }

    /// Positions one image occupies in the prompt (None for a text-only model).
    pub fn image_tokens(&self) -> Option<usize> {
        self.llava_config().map(LlavaConfig::image_tokens)
    }

    pub fn new_cache(&self, batch: usize) -> KvCache<B> {
        self.language_model.new_cache(batch)
    }

    /// Stacks preprocessed images into `[n, channels, size, size]`, checking their size against
    /// the vision config.
    pub fn pixels_tensor(
        &self,
        images: &[&PixelValues],
        device: &B::Device,
    ) -> Result<Tensor<B, 4>> {
        let c = self.llava_config().ok_or_else(|| {
            Error::argument("image", "this is a text-only model; it takes no image")
        })?;
        let (ch, s) = (c.vision.num_channels, c.vision.image_size);
        let mut data = Vec::with_capacity(images.len() * ch * s * s);
        for img in images {
            if img.height != s || img.width != s || img.data.len() != ch * s * s {
                return Err(Error::argument(
                    "image",
                    format!(
                        "preprocessed to {}x{} ({} values) but vision_config.image_size is {s} with {ch} channels",
                        img.height,
                        img.width,
                        img.data.len()
                    ),
                ));
            }
            data.extend_from_slice(&img.data);
        }
        Ok(Tensor::from_data(
            TensorData::new(data, [images.len(), ch, s, s]),
            (device, self.dtype()),
        ))
    }

    /// Projected image features `[n, image_tokens, text_hidden]` of `[n, C, H, W]` pixels.
    pub fn encode_images(&self, pixels: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
        let v = self.vision.as_ref().ok_or_else(|| {
            Error::argument("image", "this is a text-only model; it takes no image")
        })?;
        let layers = v.config.feature_layer_indices();
        let up_to = *layers.iter().max().expect("validated non-empty");
        let states = v.vision_tower.hidden_states(pixels, up_to);
        let selected: Vec<Tensor<B, 3>> = layers
            .iter()
            .map(|&i| {
                let h = states[i].clone();
                match v.config.vision_feature_select_strategy {
                    SelectStrategy::Full => h,
                    SelectStrategy::Default => {
                        let [b, s, d] = h.dims();
                        h.slice([0..b, 1..s, 0..d])
                    }
                }
            })
            .collect();
        Ok(v.multi_modal_projector.forward(Tensor::cat(selected, 2)))
    }

    /// Input embeddings of a batch of equal-length id rows; row `b`'s `<image>` positions are
    /// filled, in order, with `images[b]` (`[n, image_tokens, hidden]`, one image per row).
    pub fn embed(
        &self,
        ids: &[Vec<u32>],
        images: Option<Tensor<B, 3>>,
        device: &B::Device,
    ) -> Result<Tensor<B, 3>> {
        let lm = &self.language_model;
        let text = lm.embed(ids, device);
        let Some(images) = images else {
            if let Some(c) = self.llava_config() {
                if ids.iter().flatten().any(|&t| t == c.image_token_id) {
                    return Err(Error::argument(
                        "input_ids",
                        "the prompt holds image tokens but no image was given",
                    ));
                }
            }
            return Ok(text);
        };
        let c = self
            .llava_config()
            .ok_or_else(|| Error::argument("image", "this is a text-only model"))?;
        let [n, per, hid] = images.dims();
        let (b, s) = (ids.len(), ids[0].len());
        if n != b {
            return Err(Error::argument(
                "image",
                format!("{n} images for {b} prompts (one each expected)"),
            ));
        }
        // One gather over [text rows; image rows] puts every feature in place (and keeps autodiff).
        let mut idx = Vec::with_capacity(b * s);
        for (bi, row) in ids.iter().enumerate() {
            let mut k = 0;
            for (i, &t) in row.iter().enumerate() {
                if t == c.image_token_id {
                    idx.push((b * s + bi * per + k.min(per - 1)) as i64);
                    k += 1;
                } else {
                    idx.push((bi * s + i) as i64);
                }
            }
            if k != per {
                return Err(Error::argument(
                    "input_ids",
                    format!("prompt {bi} holds {k} `<image>` tokens (id {}) but the image yields {per} features", c.image_token_id),
                ));
            }
        }
        let table = Tensor::cat(
            vec![text.reshape([b * s, hid]), images.reshape([n * per, hid])],
            0,
        );
        let idx = Tensor::from_data(TensorData::new(idx, [b * s]), device);
        Ok(table.select(0, idx).reshape([b, s, hid]))
    }

    /// Runs input embeddings through the decoder after what `cache` holds: final hidden states.
    pub fn forward(&self, embeds: Tensor<B, 3>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        self.language_model.forward(embeds, cache)
    }

    /// Vocabulary logits of hidden states.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.language_model.logits(hidden)
    }

    /// Logits of the last position of every row: `[batch, vocab]`.
    pub fn last_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, s, h] = hidden.dims();
        let last = hidden.slice([0..b, s - 1..s, 0..h]);
        self.logits(last)
            .reshape([b, self.language_model.config.vocab_size])
    }
}
