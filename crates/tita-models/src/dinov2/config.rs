//! `Dinov2Config` (transformers' `Dinov2Model`), parsed with transformers' defaults.

use std::path::Path;

use serde_json::Value;
use tita_core::config::{positive, Fields};
use tita_core::{Activation, Result};

/// `Dinov2Config`: a pre-norm ViT with layer-scale on both residual branches.
#[derive(Debug, Clone, PartialEq)]
pub struct Dinov2Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// The MLP's width is `hidden_size · mlp_ratio`.
    pub mlp_ratio: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// The size the position table was trained for (518 for the hub checkpoints: 37×37 patches).
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub qkv_bias: bool,
}

impl Default for Dinov2Config {
    /// transformers' `Dinov2Config()` (ViT-B/14 at 224 px).
    fn default() -> Self {
        Dinov2Config {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            mlp_ratio: 4,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-6,
            image_size: 224,
            patch_size: 14,
            num_channels: 3,
            qkv_bias: true,
        }
    }
}

impl Dinov2Config {
    /// DINOv2's attention heads are 64 wide in every released size (S/14 6 heads, B/14 12,
    /// L/14 16, g/14 24): what a checkpoint without a config (an ONNX export) implies.
    pub const HEAD_DIM: usize = 64;

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn intermediate_size(&self) -> usize {
        self.hidden_size * self.mlp_ratio
    }

    /// Patches per side of the stored position table.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Rows of the stored position table: one per patch of the trained size, plus CLS.
    pub fn num_positions(&self) -> usize {
        self.grid().pow(2) + 1
    }

    /// Reads `config.json` (a file, or a directory that holds one).
    pub fn from_file(path: &Path) -> Result<Self> {
        let (v, path) = tita_core::config::read_config(path)?;
        Self::from_value(&v, &path)
    }

    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let f = Fields::root(v, path)?;
        let d = Dinov2Config::default();
        match f.opt_str("model_type")?.as_deref() {
            None | Some("dinov2") => {}
            Some(other) => {
                return Err(f.err(
                    "model_type",
                    format!("`{other}` is not supported (expected `dinov2`; registers and other variants are not)"),
                ))
            }
        }
        if f.bool("use_swiglu_ffn", false)? {
            return Err(f.err(
                "use_swiglu_ffn",
                "the SwiGLU MLP (DINOv2-giant) is not supported",
            ));
        }
        let hidden_size = positive(&f, "hidden_size", f.usize("hidden_size", d.hidden_size)?)?;
        let heads = positive(
            &f,
            "num_attention_heads",
            f.usize("num_attention_heads", d.num_attention_heads)?,
        )?;
        if hidden_size % heads != 0 {
            return Err(f.err(
                "num_attention_heads",
                format!("{heads} heads do not divide hidden_size = {hidden_size}"),
            ));
        }
        let image_size = positive(&f, "image_size", f.usize("image_size", d.image_size)?)?;
        let patch_size = positive(&f, "patch_size", f.usize("patch_size", d.patch_size)?)?;
        if image_size % patch_size != 0 {
            return Err(f.err(
                "patch_size",
                format!("{patch_size} does not divide image_size = {image_size}"),
            ));
        }
        Ok(Dinov2Config {
            hidden_size,
            num_hidden_layers: f.usize("num_hidden_layers", d.num_hidden_layers)?,
            num_attention_heads: heads,
            mlp_ratio: positive(&f, "mlp_ratio", f.usize("mlp_ratio", d.mlp_ratio)?)?,
            hidden_act: f.activation("hidden_act", d.hidden_act)?,
            layer_norm_eps: f.positive_f64("layer_norm_eps", d.layer_norm_eps)?,
            image_size,
            patch_size,
            num_channels: positive(&f, "num_channels", f.usize("num_channels", d.num_channels)?)?,
            qkv_bias: f.bool("qkv_bias", d.qkv_bias)?,
        })
    }

    /// The config as transformers writes `config.json` for a `Dinov2Model`.
    pub fn to_hf_json(&self) -> Value {
        serde_json::json!({
            "architectures": ["Dinov2Model"],
            "model_type": "dinov2",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "mlp_ratio": self.mlp_ratio,
            "hidden_act": self.hidden_act.hf_name(),
            "layer_norm_eps": self.layer_norm_eps,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "qkv_bias": self.qkv_bias,
            "layerscale_value": 1.0,
            "use_swiglu_ffn": false,
        })
    }
}
