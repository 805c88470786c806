//! LLaVA's vision half (`LlavaForConditionalGeneration`): CLIP vision tower -> selected hidden
//! state(s) -> MLP projector, whose features fill the `<image>` positions of the prompt; and
//! where each part's tensors live in a checkpoint, for every family [`crate::Vlm`] loads.

use burn::module::Module;
use burn::nn;
use burn::tensor::{backend::Backend, Tensor};
use tita_core::{Activation, Error, LlavaConfig, ModelConfig, Result, SelectStrategy};

use crate::clip::ClipVision;
use crate::layers::{activate, linear};
use crate::llama::LlamaKeys;
use crate::weights::{TensorSource, Weights};

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

impl<B: Backend> VisionPart<B> {
    pub fn load(
        w: &mut impl TensorSource,
        keys: &KeyLayout,
        c: &LlavaConfig,
        device: &B::Device,
    ) -> Result<Self> {
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
            ModelConfig::QwenVl(_) => KeyLayout {
                text: LlamaKeys {
                    decoder: "model.".into(),
                    lm_head: "lm_head.weight".into(),
                },
                vision: Some("visual.".into()),
                projector: None,
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
            // The hub layout (`model.*`, `visual.*`) and transformers 5's in-memory one
            // (`model.language_model.*`, `model.visual.*`).
            ModelConfig::QwenVl(_) => {
                let text = ["model.", "model.language_model."];
                let decoder = first_present(w, &text, "embed_tokens.weight")
                    .ok_or_else(|| not_found("the language model", &text, "embed_tokens.weight"))?;
                let vis = ["visual.", "model.visual."];
                let vision =
                    first_present(w, &vis, "patch_embed.proj.weight").ok_or_else(|| {
                        not_found("the vision tower", &vis, "patch_embed.proj.weight")
                    })?;
                Ok(KeyLayout {
                    text: LlamaKeys {
                        decoder,
                        lm_head: "lm_head.weight".into(),
                    },
                    vision: Some(vision),
                    projector: None,
                })
            }
        }
    }
}
