//! The model above the families: a decoder (LLaMA, Qwen2 with M-RoPE, or DeepSeek-V2 with MLA
//! and experts) and, for a VLM, its vision half (LLaVA's CLIP + projector, Qwen2.5-VL's tower,
//! or DeepSeek-VL2's tiled SigLIP + projector). Decoding and training code
//! talks to this type only: pixels in, image features, embeddings of a prompt with its image
//! features in place, a decoding state, hidden states, logits.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};
use tita_core::image::PixelValues;
use tita_core::{Error, Result};

use crate::family::{KeyLayout, ModelConfig, TextModel, Vision};
use crate::llama::MropePositions;
use crate::state::DecodeState;
use crate::weights::{
    save_safetensors, Precision, RandomWeights, Recorder, StoredTensor, TensorSource, Weights,
};

/// Preprocessed images as the vision tower takes them.
#[derive(Debug, Clone)]
pub enum PixelBatch<B: Backend> {
    /// LLaVA: `[n, C, S, S]`.
    Square(Tensor<B, 4>),
    /// Qwen2-VL: every image's patch rows `[Σ patches, C·T·P·P]` and its `[t, h, w]` grid.
    Patches {
        rows: Tensor<B, 2>,
        grids: Vec<[usize; 3]>,
    },
    /// DeepSeek-VL2: every image's global view and local tiles `[Σ tiles, C, S, S]`, and its
    /// `[across, down]` local tiling (the authors' `images_spatial_crop`).
    Tiles {
        tiles: Tensor<B, 4>,
        crops: Vec<[usize; 2]>,
    },
}

/// Image features ready to fill a prompt's image positions: `rows` `[Σ counts, hidden]`, image
/// `i` taking `counts[i]` consecutive rows; Qwen2-VL images also carry their grids (positions).
#[derive(Debug, Clone)]
pub struct ImageFeatures<B: Backend> {
    pub rows: Tensor<B, 2>,
    pub counts: Vec<usize>,
    pub grids: Vec<[usize; 3]>,
}

impl<B: Backend> ImageFeatures<B> {
    /// The features of `images[j]` for `j` in order (an image may repeat).
    pub fn select(&self, images: &[usize]) -> Self {
        let starts: Vec<usize> = self
            .counts
            .iter()
            .scan(0, |acc, &c| {
                let s = *acc;
                *acc += c;
                Some(s)
            })
            .collect();
        let idx: Vec<i64> = images
            .iter()
            .flat_map(|&i| (starts[i]..starts[i] + self.counts[i]).map(|r| r as i64))
            .collect();
        let n = idx.len();
        let device = self.rows.device();
        ImageFeatures {
            rows: self.rows.clone().select(
                0,
                Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &device),
            ),
            counts: images.iter().map(|&i| self.counts[i]).collect(),
            grids: if self.grids.is_empty() {
                Vec::new()
            } else {
                images.iter().map(|&i| self.grids[i]).collect()
            },
        }
    }
}

/// Input embeddings of a batch and, for Qwen2-VL prompts with images, what their rotary
/// positions are computed from (the ids and each row's image grids).
#[derive(Debug, Clone)]
pub struct Embeds<B: Backend> {
    pub x: Tensor<B, 3>,
    layout: Option<ImageLayout>,
}

/// The ids of a batch and each row's image grids (`[t, h, w]` in patches).
#[derive(Debug, Clone)]
struct ImageLayout {
    ids: Vec<Vec<u32>>,
    grids: Vec<Vec<[usize; 3]>>,
}

impl<B: Backend> From<Tensor<B, 3>> for Embeds<B> {
    /// Embeddings of text tokens: positions follow the cache.
    fn from(x: Tensor<B, 3>) -> Self {
        Embeds { x, layout: None }
    }
}

/// What callers need to know of the language model: its vocabulary, context and special ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextLimits {
    pub vocab_size: usize,
    /// Positions the model takes (`max_position_embeddings`), prompt and generation together.
    pub context: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl TextLimits {
    fn of(c: &crate::llama::LlamaConfig) -> Self {
        TextLimits {
            vocab_size: c.vocab_size,
            context: c.max_position_embeddings,
            bos_token_id: c.bos_token_id,
            eos_token_ids: c.eos_token_ids.clone(),
            pad_token_id: c.pad_token_id,
        }
    }
}

/// A loaded checkpoint: the language model and, for a VLM, the vision part.
#[derive(Module, Debug)]
pub struct Vlm<B: Backend> {
    text: TextModel<B>,
    pub vision: Option<Vision<B>>,
    #[module(skip)]
    limits: TextLimits,
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

fn text_only() -> Error {
    Error::argument("image", "this is a text-only model; it takes no image")
}

impl<B: Backend> Vlm<B> {
    /// Loads `config.json` and the safetensors weights of a checkpoint directory, or a llama.cpp
    /// GGUF checkpoint (see [`crate::gguf::GgufSpec`]). Every tensor the config implies must be
    /// present with its shape, and nothing else may be.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        Self::load_in(dir, Precision::F32, device)
    }

    /// [`Vlm::load`] with the weights held and computed in `precision`.
    pub fn load_in(dir: &Path, precision: Precision, device: &B::Device) -> Result<Self> {
        if let Some(gguf) = crate::gguf::GgufSpec::detect(dir)? {
            return gguf.open()?.load(precision, device);
        }
        if dir.is_file() {
            return Err(Error::argument(
                "model",
                format!(
                    "{} is a file; give the checkpoint's directory (config.json, *.safetensors, tokenizer.json) or a .gguf file",
                    dir.display()
                ),
            ));
        }
        let config = ModelConfig::from_file(dir)?;
        let mut w = Weights::open(dir)?;
        let keys = config.detect_keys(&w)?;
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
        let keys = config.hub_keys();
        // Large tensors come from the backend's generator: seeded, the same seed gives the same model.
        B::seed(device, seed);
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
        let text = TextModel::load(w, &config, &keys, device)?;
        let vision = Vision::load(w, &config, &keys, device)?;
        let stored = std::mem::take(&mut w.taken);
        Ok(Vlm {
            text,
            vision,
            limits: TextLimits::of(config.text()),
            config,
            keys,
            stored,
            name: "a model".into(),
        })
    }

    /// The decoder layers LoRA adapters attach to (see [`crate::lora`]): a LLaMA-style
    /// decoder's; none for DeepSeek-V2, whose MLA attention and experts take no adapters yet.
    pub(crate) fn lora_layers(&self) -> &[crate::llama::DecoderLayer<B>] {
        match &self.text {
            TextModel::Llama(m) => &m.layers,
            TextModel::DeepseekV2(_) => &[],
        }
    }

    pub(crate) fn takes_lora(&self) -> bool {
        matches!(self.text, TextModel::Llama(_))
    }

    pub(crate) fn lora_layers_mut(&mut self) -> &mut [crate::llama::DecoderLayer<B>] {
        match &mut self.text {
            TextModel::Llama(m) => &mut m.layers,
            TextModel::DeepseekV2(_) => &mut [],
        }
    }

    /// The float type the weights are held and computed in.
    pub fn dtype(&self) -> DType {
        self.text.dtype()
    }

    /// The model family, as `model_type` names it.
    pub fn family(&self) -> &'static str {
        self.config.family()
    }

    /// Vocabulary, context and special ids of the language model.
    pub fn text_limits(&self) -> &TextLimits {
        &self.limits
    }

    /// Whether the output projection is the embedding table (no `lm_head` of its own).
    pub fn ties_embeddings(&self) -> bool {
        self.text.ties_embeddings()
    }

    /// Bytes of weights read by one batch-1 decode step of the language model.
    pub fn decode_weight_bytes(&self) -> usize {
        self.text.decode_params() * self.dtype().size()
    }

    pub fn llava_config(&self) -> Option<&crate::llava::LlavaConfig> {
        match &self.config {
            ModelConfig::Llava(c) => Some(c),
            _ => None,
        }
    }

    /// The id that stands for image features in a prompt (None for a text-only model).
    pub fn image_token_id(&self) -> Option<u32> {
        self.config.image_token_id()
    }

    /// Positions every image occupies in the prompt when that is fixed (LLaVA); None for a
    /// text-only model or one whose count depends on the image (Qwen2-VL: see
    /// [`Vlm::image_tokens_for`]).
    pub fn image_tokens(&self) -> Option<usize> {
        self.llava_config()
            .map(crate::llava::LlavaConfig::image_tokens)
    }

    /// Positions `image` occupies in the prompt.
    pub fn image_tokens_for(&self, image: &PixelValues) -> Result<usize> {
        self.config.image_tokens_for(image)?.ok_or_else(text_only)
    }

    /// An empty decoding state for `batch` unpadded sequences.
    pub fn new_cache(&self, batch: usize) -> DecodeState<B> {
        self.new_padded_cache(vec![0; batch])
    }

    /// An empty decoding state for sequences left-padded by `pad_left[b]` positions (padded
    /// positions are never attended to). Give it room with [`DecodeState::with_capacity`].
    pub fn new_padded_cache(&self, pad_left: Vec<usize>) -> DecodeState<B> {
        self.text.new_state(pad_left)
    }

    /// Puts preprocessed images into the tower's input form, checking them against the
    /// vision config (LLaVA: one size for all; Qwen2-VL: sides in whole merged patches).
    pub fn pixels_tensor(
        &self,
        images: &[&PixelValues],
        device: &B::Device,
    ) -> Result<PixelBatch<B>> {
        let vision = self.vision.as_ref().ok_or_else(text_only)?;
        vision.pixels(images, self.dtype(), device)
    }

    /// Image features in the text model's width, one run of rows per image.
    pub fn encode_images(&self, pixels: PixelBatch<B>) -> Result<ImageFeatures<B>> {
        self.vision.as_ref().ok_or_else(text_only)?.encode(pixels)
    }

    /// Input embeddings of text ids only, whatever their values (generated tokens).
    pub fn embed_text(&self, ids: &[Vec<u32>], device: &B::Device) -> Embeds<B> {
        self.text.embed(ids, device).into()
    }

    /// Input embeddings of a batch of equal-length id rows; row `b`'s image positions are
    /// filled, in order, with image `b`'s features (one image per row).
    pub fn embed(
        &self,
        ids: &[Vec<u32>],
        images: Option<ImageFeatures<B>>,
        device: &B::Device,
    ) -> Result<Embeds<B>> {
        let text = self.text.embed(ids, device);
        let Some(images) = images else {
            if let Some(image_id) = self.image_token_id() {
                if ids.iter().flatten().any(|&t| t == image_id) {
                    return Err(Error::argument(
                        "input_ids",
                        "the prompt holds image tokens but no image was given",
                    ));
                }
            }
            return Ok(text.into());
        };
        let image_id = self.image_token_id().ok_or_else(text_only)?;
        let [total, hid] = images.rows.dims();
        let (b, s) = (ids.len(), ids[0].len());
        if images.counts.len() != b {
            return Err(Error::argument(
                "image",
                format!(
                    "{} images for {b} prompts (one each expected)",
                    images.counts.len()
                ),
            ));
        }
        // One gather over [text rows; image rows] puts every feature in place (and keeps autodiff).
        let mut idx = Vec::with_capacity(b * s);
        let mut first = 0;
        for (bi, (row, &per)) in ids.iter().zip(&images.counts).enumerate() {
            let mut k = 0;
            for (i, &t) in row.iter().enumerate() {
                if t == image_id {
                    idx.push((b * s + first + k.min(per - 1)) as i64);
                    k += 1;
                } else {
                    idx.push((bi * s + i) as i64);
                }
            }
            if k != per {
                // None at all: the prompt was made for another model (a guide of another
                // family, or another model's chat template).
                let hint = if k == 0 {
                    "; the prompt was not built for this model: is it of another family than the model whose tokenizer and template made the prompt (a reward or reference of another family, another model's --template)?"
                } else {
                    ""
                };
                return Err(Error::argument(
                    "input_ids",
                    format!("prompt {bi} holds {k} image tokens (id {image_id}) but the image yields {per} features{hint}"),
                ));
            }
            first += per;
        }
        let table = Tensor::cat(vec![text.reshape([b * s, hid]), images.rows], 0);
        debug_assert_eq!(first, total);
        let idx = Tensor::from_data(TensorData::new(idx, [b * s]), device);
        let x = table.select(0, idx).reshape([b, s, hid]);
        let layout = (!images.grids.is_empty()).then(|| ImageLayout {
            ids: ids.to_vec(),
            grids: images.grids.iter().map(|&g| vec![g]).collect(),
        });
        Ok(Embeds { x, layout })
    }

    /// Runs input embeddings through the decoder after what `state` holds: final hidden
    /// states.
    pub fn forward(&self, embeds: Embeds<B>, state: &mut DecodeState<B>) -> Result<Tensor<B, 3>> {
        let positions = self.positions(&embeds, state)?;
        self.text.forward(embeds.x, positions.as_ref(), state)
    }

    /// [`Vlm::forward`] returning every decoder layer's output (before the final norm).
    pub fn layer_states(
        &self,
        embeds: Embeds<B>,
        state: &mut DecodeState<B>,
    ) -> Result<Vec<Tensor<B, 3>>> {
        let positions = self.positions(&embeds, state)?;
        self.text.layer_states(embeds.x, positions.as_ref(), state)
    }

    /// Explicit rotary positions for prompts with images where the family has them; None
    /// where the state's running positions serve.
    fn positions(
        &self,
        embeds: &Embeds<B>,
        state: &DecodeState<B>,
    ) -> Result<Option<MropePositions>> {
        let Some(ImageLayout { ids, grids }) = &embeds.layout else {
            return Ok(None);
        };
        let positions = self.config.rope_positions(ids, state.pad_left(), grids)?;
        if positions.is_some() && !state.is_empty() {
            return Err(Error::argument(
                "image",
                "images are taken in the first forward of a sequence only",
            ));
        }
        Ok(positions)
    }

    /// Vocabulary logits of hidden states.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.text.logits(hidden)
    }

    /// Logits of the last position of every row: `[batch, vocab]`.
    pub fn last_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, s, h] = hidden.dims();
        let last = hidden.slice([0..b, s - 1..s, 0..h]);
        self.logits(last).reshape([b, self.limits.vocab_size])
    }
}

impl<B: Backend> TextModel<B> {
    fn dtype(&self) -> DType {
        match self {
            TextModel::Llama(m) => m.embed_tokens.val().dtype(),
            TextModel::DeepseekV2(m) => m.embed_tokens.val().dtype(),
        }
    }

    fn ties_embeddings(&self) -> bool {
        match self {
            TextModel::Llama(m) => m.lm_head.is_none(),
            TextModel::DeepseekV2(m) => m.lm_head.is_none(),
        }
    }

    fn decode_params(&self) -> usize {
        match self {
            TextModel::Llama(m) => m.decode_params(),
            TextModel::DeepseekV2(m) => m.decode_params(),
        }
    }

    fn new_state(&self, pad_left: Vec<usize>) -> DecodeState<B> {
        match self {
            TextModel::Llama(m) => m.new_state(pad_left),
            TextModel::DeepseekV2(m) => m.new_state(pad_left),
        }
    }

    fn embed(&self, ids: &[Vec<u32>], device: &B::Device) -> Tensor<B, 3> {
        match self {
            TextModel::Llama(m) => m.embed(ids, device),
            TextModel::DeepseekV2(m) => m.embed_rows(ids, device),
        }
    }

    /// The final-normed hidden states. `positions` are a family's explicit rotary positions
    /// (Qwen2-VL's M-RoPE); DeepSeek-V2 has none (`ModelConfig::rope_positions`).
    fn forward(
        &self,
        x: Tensor<B, 3>,
        positions: Option<&MropePositions>,
        state: &mut DecodeState<B>,
    ) -> Result<Tensor<B, 3>> {
        match self {
            TextModel::Llama(m) => m.forward(x, positions, state),
            TextModel::DeepseekV2(m) => m.forward(x, state),
        }
    }

    /// Every decoder layer's output (before the final norm).
    fn layer_states(
        &self,
        x: Tensor<B, 3>,
        positions: Option<&MropePositions>,
        state: &mut DecodeState<B>,
    ) -> Result<Vec<Tensor<B, 3>>> {
        match self {
            TextModel::Llama(m) => m.layer_states(x, positions, state),
            TextModel::DeepseekV2(m) => m.layer_states(x, state),
        }
    }

    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            TextModel::Llama(m) => m.logits(hidden),
            TextModel::DeepseekV2(m) => m.logits(hidden),
        }
    }
}
