//! `LlavaConfig` (`LlavaForConditionalGeneration`) and its CLIP vision tower's
//! `CLIPVisionConfig`, parsed with transformers' defaults.

use serde_json::Value;
use tita_core::config::{positive, Fields};
use tita_core::{Activation, Result};

use crate::family::ModelConfig;
use crate::llama::config::{parse_text, LlamaConfig, TextFamily};

/// `vision_feature_select_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectStrategy {
    /// Drop the CLS token (`default`).
    Default,
    /// Keep every token (`full`).
    Full,
}

/// `CLIPVisionConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    /// CLIP ViT-L/14 at 336 px, LLaVA-1.5's vision tower.
    pub fn vit_l_14_336() -> Self {
        ClipVisionConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 336,
            patch_size: 14,
            ..ClipVisionConfig::default()
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

/// `LlavaConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaConfig {
    pub text: LlamaConfig,
    pub vision: ClipVisionConfig,
    pub image_token_id: u32,
    pub projector_hidden_act: Activation,
    /// One or several layers of the vision tower's hidden states (index into the
    /// `num_hidden_layers + 1` states, negative counts from the end); several are concatenated.
    pub vision_feature_layers: Vec<i64>,
    pub vision_feature_select_strategy: SelectStrategy,
    pub multimodal_projector_bias: bool,
}

impl LlavaConfig {
    /// Number of `<image>` positions one image fills in the prompt.
    pub fn image_tokens(&self) -> usize {
        let n = self.vision.num_patches();
        match self.vision_feature_select_strategy {
            SelectStrategy::Default => n,
            SelectStrategy::Full => n + 1,
        }
    }

    /// The hidden-state indices (0 = embeddings, `num_hidden_layers` = last layer) that feed the projector.
    pub fn feature_layer_indices(&self) -> Vec<usize> {
        let n = self.vision.num_hidden_layers as i64 + 1;
        self.vision_feature_layers
            .iter()
            .map(|&l| if l < 0 { (n + l) as usize } else { l as usize })
            .collect()
    }
}

/// `CLIPVisionConfig` with transformers' defaults (`LlavaConfig` fills a missing
/// `vision_config` with the CLIP ViT-L/14-336 values, handled by the caller).
pub(crate) fn parse_clip(f: &Fields, defaults: &ClipVisionConfig) -> Result<ClipVisionConfig> {
    if let Some(mt) = f.opt_str("model_type")? {
        if mt != "clip_vision_model" {
            return Err(f.err(
                "model_type",
                format!("`{mt}` is not supported (expected `clip_vision_model`)"),
            ));
        }
    }
    let hidden_size = positive(
        f,
        "hidden_size",
        f.usize("hidden_size", defaults.hidden_size)?,
    )?;
    let heads = positive(
        f,
        "num_attention_heads",
        f.usize("num_attention_heads", defaults.num_attention_heads)?,
    )?;
    if hidden_size % heads != 0 {
        return Err(f.err(
            "num_attention_heads",
            format!("{heads} heads do not divide hidden_size = {hidden_size}"),
        ));
    }
    let image_size = positive(f, "image_size", f.usize("image_size", defaults.image_size)?)?;
    let patch_size = positive(f, "patch_size", f.usize("patch_size", defaults.patch_size)?)?;
    if image_size % patch_size != 0 {
        return Err(f.err(
            "patch_size",
            format!("{patch_size} does not divide image_size = {image_size}"),
        ));
    }
    Ok(ClipVisionConfig {
        hidden_size,
        intermediate_size: positive(
            f,
            "intermediate_size",
            f.usize("intermediate_size", defaults.intermediate_size)?,
        )?,
        num_hidden_layers: f.usize("num_hidden_layers", defaults.num_hidden_layers)?,
        num_attention_heads: heads,
        num_channels: positive(
            f,
            "num_channels",
            f.usize("num_channels", defaults.num_channels)?,
        )?,
        image_size,
        patch_size,
        hidden_act: f.activation("hidden_act", defaults.hidden_act)?,
        layer_norm_eps: f.f64("layer_norm_eps", defaults.layer_norm_eps)?,
    })
}

impl LlavaConfig {
    /// LLaVA-1.5's composition of a text and a vision config: `<image>` = 32000, GELU
    /// projector with bias, features of the second-to-last layer without CLS.
    pub fn llava_1_5(text: LlamaConfig, vision: ClipVisionConfig) -> ModelConfig {
        ModelConfig::Llava(LlavaConfig {
            text,
            vision,
            image_token_id: 32000,
            projector_hidden_act: Activation::Gelu,
            vision_feature_layers: vec![-2],
            vision_feature_select_strategy: SelectStrategy::Default,
            multimodal_projector_bias: true,
        })
    }

    /// The config as transformers writes `config.json` (every field explicit).
    pub fn to_hf_json(&self) -> Value {
        let c = self;
        let v = &c.vision;
        let layer = match c.vision_feature_layers.as_slice() {
            [one] => serde_json::json!(one),
            many => serde_json::json!(many),
        };
        serde_json::json!({
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "image_token_index": c.image_token_id,
            "projector_hidden_act": c.projector_hidden_act.hf_name(),
            "multimodal_projector_bias": c.multimodal_projector_bias,
            "vision_feature_layer": layer,
            "vision_feature_select_strategy": match c.vision_feature_select_strategy {
                SelectStrategy::Default => "default",
                SelectStrategy::Full => "full",
            },
            "pad_token_id": c.text.pad_token_id,
            "tie_word_embeddings": c.text.tie_word_embeddings,
            "torch_dtype": c.text.dtype.clone().unwrap_or_else(|| "float32".into()),
            "text_config": c.text.to_hf_json(),
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers,
                "num_attention_heads": v.num_attention_heads,
                "num_channels": v.num_channels,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "hidden_act": v.hidden_act.hf_name(),
                "layer_norm_eps": v.layer_norm_eps,
            },
        })
    }
}

impl Default for ClipVisionConfig {
    /// `CLIPVisionConfig()` in transformers.
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

pub(crate) fn parse_llava(f: &Fields) -> Result<LlavaConfig> {
    // LlavaConfig builds CLIPVisionConfig(ViT-L/14-336 shape) when `vision_config` is absent.
    let vision = if f.get("vision_config").is_some() {
        parse_clip(&f.child("vision_config")?, &ClipVisionConfig::default())?
    } else {
        ClipVisionConfig::vit_l_14_336()
    };
    let text = parse_text(&f.child("text_config")?, Some(f), TextFamily::Llama)?;
    let image_token_id = match f.ids("image_token_index", &[])?.first() {
        Some(&id) => id,
        None => *f.ids("image_token_id", &[32000])?.first().unwrap_or(&32000),
    };
    let vision_feature_layers = match f.get("vision_feature_layer") {
        None => vec![-2],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| f.err("vision_feature_layer", "expected integers"))
            })
            .collect::<Result<_>>()?,
        Some(v) => vec![v.as_i64().ok_or_else(|| {
            f.err(
                "vision_feature_layer",
                format!("expected an integer, found {v}"),
            )
        })?],
    };
    let n_states = vision.num_hidden_layers as i64 + 1;
    for &l in &vision_feature_layers {
        if l >= n_states || l < -n_states {
            return Err(f.err(
                "vision_feature_layer",
                format!(
                    "{l} is outside the {n_states} hidden states of a {}-layer vision tower",
                    vision.num_hidden_layers
                ),
            ));
        }
    }
    if vision_feature_layers.is_empty() {
        return Err(f.err("vision_feature_layer", "empty list"));
    }
    let vision_feature_select_strategy =
        match f.opt_str("vision_feature_select_strategy")?.as_deref() {
            None | Some("default") => SelectStrategy::Default,
            Some("full") => SelectStrategy::Full,
            Some(other) => {
                return Err(f.err(
                    "vision_feature_select_strategy",
                    format!("`{other}` (expected `default` or `full`)"),
                ))
            }
        };
    if image_token_id as usize >= text.vocab_size {
        return Err(f.err(
            "image_token_index",
            format!(
                "{image_token_id} is outside the vocabulary of {} ids",
                text.vocab_size
            ),
        ));
    }
    Ok(LlavaConfig {
        text,
        vision,
        image_token_id,
        projector_hidden_act: f.activation("projector_hidden_act", Activation::Gelu)?,
        vision_feature_layers,
        vision_feature_select_strategy,
        multimodal_projector_bias: f.bool("multimodal_projector_bias", true)?,
    })
}
