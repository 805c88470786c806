//! LLaVA (`LlavaForConditionalGeneration`): CLIP vision tower -> selected hidden state(s) ->
//! MLP projector, whose features fill the `<image>` positions of the prompt; the language
//! model is the LLaMA decoder. Also where each part's tensors live in a checkpoint.

pub mod clip;
pub mod config;

use burn::module::Module;
use burn::nn;
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use tita_core::image::PixelValues;
use tita_core::{Activation, Error, Result};

pub use clip::ClipVision;
pub use config::{ClipVisionConfig, LlavaConfig, SelectStrategy};

use crate::family::{first_present, not_found, KeyLayout};
use crate::layers::{activate, linear};
use crate::llama::LlamaKeys;
use crate::scope::Scope;
use crate::vlm::ImageFeatures;
use crate::weights::{TensorSource, Weights};

#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    pub linear_1: nn::Linear<B>,
    pub linear_2: nn::Linear<B>,
    #[module(skip)]
    pub act: Activation,
}

impl<B: Backend> Projector<B> {
    /// `linear_1`, `linear_2` under `w` (`multi_modal_projector.`).
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &LlavaConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let feat = c.vision.hidden_size * c.vision_feature_layers.len();
        let (th, bias) = (c.text.hidden_size, c.multimodal_projector_bias);
        Ok(Projector {
            linear_1: linear(w.pp("linear_1"), feat, th, bias, device)?,
            linear_2: linear(w.pp("linear_2"), th, th, bias, device)?,
            act: c.projector_hidden_act,
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
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

impl<B: Backend> VisionPart<B> {
    pub fn load(
        w: &mut impl TensorSource,
        keys: &KeyLayout,
        c: &LlavaConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let prefix = |p: &Option<String>| p.clone().unwrap_or_default();
        let vision_tower =
            ClipVision::load(Scope::new(w, &prefix(&keys.vision)), &c.vision, device)?;
        let multi_modal_projector =
            Projector::load(Scope::new(w, &prefix(&keys.projector)), c, device)?;
        Ok(VisionPart {
            vision_tower,
            multi_modal_projector,
            config: c.clone(),
        })
    }

    /// Projected features `[n, image_tokens, text_hidden]` of `[n, C, H, W]` pixels.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        self.multi_modal_projector
            .forward(self.selected_features(pixels))
    }

    /// The tower's hidden states the projector reads, `[n, image_tokens, feature width]`:
    /// the configured layers, concatenated, without CLS under the default strategy.
    pub fn selected_features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let layers = self.config.feature_layer_indices();
        let up_to = *layers.iter().max().expect("validated non-empty");
        let states = self.vision_tower.hidden_states(pixels, up_to);
        let selected: Vec<Tensor<B, 3>> = layers
            .iter()
            .map(|&i| {
                let h = states[i].clone();
                match self.config.vision_feature_select_strategy {
                    SelectStrategy::Full => h,
                    SelectStrategy::Default => {
                        let [b, s, d] = h.dims();
                        h.slice([0..b, 1..s, 0..d])
                    }
                }
            })
            .collect();
        Tensor::cat(selected, 2)
    }

    /// Images as the tower takes them, `[n, C, S, S]`: all of the configured size.
    pub fn pixels(
        &self,
        images: &[&PixelValues],
        dtype: DType,
        device: &B::Device,
    ) -> Result<Tensor<B, 4>> {
        let c = &self.config;
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
            (device, dtype),
        ))
    }

    /// Image features, `image_tokens` rows per image.
    pub fn encode(&self, pixels: Tensor<B, 4>) -> ImageFeatures<B> {
        let f = self.forward(pixels);
        let [n, per, hid] = f.dims();
        ImageFeatures {
            rows: f.reshape([n * per, hid]),
            counts: vec![per; n],
            grids: Vec::new(),
        }
    }
}

/// The layout of `llava-hf` hub checkpoints.
pub fn hub_keys() -> KeyLayout {
    KeyLayout {
        text: LlamaKeys {
            decoder: "language_model.model.".into(),
            lm_head: "language_model.lm_head.weight".into(),
        },
        vision: Some("vision_tower.vision_model.".into()),
        projector: Some("multi_modal_projector.".into()),
    }
}

/// Recognises the hub layout (`language_model.model.*`, `vision_tower.vision_model.*`), the
/// transformers >= 4.52 layout (`model.language_model.*`, `lm_head.weight`) and the
/// transformers 5 vision layout (`vision_tower.*` without `vision_model.`).
pub fn detect_keys(w: &Weights) -> Result<KeyLayout> {
    let text = [
        "language_model.model.",
        "model.language_model.",
        "language_model.",
    ];
    let decoder = first_present(w, &text, "embed_tokens.weight")
        .ok_or_else(|| not_found(w, "the language model", &text, "embed_tokens.weight"))?;
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
    let patch = "embeddings.patch_embedding.weight";
    let vision = first_present(w, &vis, patch)
        .ok_or_else(|| not_found(w, "the vision tower", &vis, patch))?;
    let proj = ["multi_modal_projector.", "model.multi_modal_projector."];
    let projector = first_present(w, &proj, "linear_1.weight")
        .ok_or_else(|| not_found(w, "the projector", &proj, "linear_1.weight"))?;
    Ok(KeyLayout {
        text: LlamaKeys { decoder, lm_head },
        vision: Some(vision),
        projector: Some(projector),
    })
}
