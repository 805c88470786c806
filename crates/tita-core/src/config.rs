//! Hugging Face `config.json` parsing for `llava` and `llama` checkpoints.
//!
//! Hub configs are sparse: every missing field takes the default of the matching transformers
//! class (`LlamaConfig`, `CLIPVisionConfig`, `LlavaConfig`), so a config written by any
//! transformers version reads the same here as it does there.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{read_json, Error, Result};

/// Activation functions that appear in the supported configs (`hidden_act`, `projector_hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// Exact (erf) GELU, transformers' `gelu`.
    Gelu,
    /// tanh approximation: `gelu_new`, `gelu_pytorch_tanh`.
    GeluTanh,
    /// CLIP's `x * sigmoid(1.702 x)`.
    QuickGelu,
    Relu,
}

impl Activation {
    /// The name transformers writes in a config.
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
            Activation::QuickGelu => "quick_gelu",
            Activation::Relu => "relu",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }
}

/// `vision_feature_select_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectStrategy {
    /// Drop the CLS token (`default`).
    Default,
    /// Keep every token (`full`).
    Full,
}

/// The decoder of `LlamaForCausalLM` (also LLaVA's `text_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections.
    pub attention_bias: bool,
    /// Bias on the output projection (LLaMA: as `attention_bias`; Qwen2: none).
    pub o_proj_bias: bool,
    pub mlp_bias: bool,
    /// Qwen2-VL's multimodal RoPE: how many rotary frequencies follow the temporal, height and
    /// width position rows. Empty: one position per token (plain RoPE).
    pub mrope_section: Vec<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// `torch_dtype` / `dtype` as written (informative: weights are read in their stored dtype).
    pub dtype: Option<String>,
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

/// `Qwen2_5_VLVisionConfig`: the Qwen2.5-VL vision tower and its patch merger.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenVisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    /// Side of an attention window in pixels.
    pub window_size: usize,
    /// Blocks that attend over the whole image; the others attend within windows.
    pub fullatt_block_indexes: Vec<usize>,
    pub out_hidden_size: usize,
    pub hidden_act: Activation,
    pub rope_theta: f64,
    pub tokens_per_second: usize,
}

impl QwenVisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Values in one flattened patch: channels × temporal patch × patch × patch.
    pub fn patch_values(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Side of a window in merged cells (`window_size / merge / patch`).
    pub fn window_cells(&self) -> usize {
        self.window_size / self.spatial_merge_size / self.patch_size
    }

    /// How the processor must cut images for this tower.
    pub fn patch_layout(&self) -> crate::image::PatchLayout {
        crate::image::PatchLayout {
            patch_size: self.patch_size,
            temporal_patch_size: self.temporal_patch_size,
            merge_size: self.spatial_merge_size,
        }
    }
}

/// `Qwen2_5_VLConfig`: the Qwen2 decoder (M-RoPE) and the vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenVlConfig {
    pub text: LlamaConfig,
    pub vision: QwenVisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

/// What a checkpoint directory holds.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Llava(LlavaConfig),
    Llama(LlamaConfig),
    QwenVl(QwenVlConfig),
}

impl ModelConfig {
    /// Reads and validates `config.json` (a file, or a directory that holds one).
    pub fn from_file(path: &Path) -> Result<Self> {
        let path = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let value = read_json(&path)?;
        Self::from_value(&value, &path)
    }

    /// Parses an already loaded config; `path` is only used in error messages.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let root = Fields::root(value, path)?;
        match root.opt_str("model_type")?.as_deref() {
            Some("llava") => Ok(ModelConfig::Llava(parse_llava(&root)?)),
            Some("llama") => Ok(ModelConfig::Llama(parse_text(
                &root,
                None,
                TextFamily::Llama,
            )?)),
            Some("qwen2_5_vl") => Ok(ModelConfig::QwenVl(parse_qwen_vl(&root)?)),
            Some(other) => Err(root.err(
                "model_type",
                format!("`{other}` is not supported (expected `llava`, `llama` or `qwen2_5_vl`)"),
            )),
            None => Err(root.err(
                "model_type",
                "missing (expected `llava`, `llama` or `qwen2_5_vl`)",
            )),
        }
    }

    /// The config as transformers writes `config.json` (every field explicit), so that a model
    /// made here (random or trained from scratch) is a checkpoint like any other.
    pub fn to_hf_json(&self) -> Value {
        let text = |c: &LlamaConfig| {
            serde_json::json!({
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "vocab_size": c.vocab_size,
                "hidden_size": c.hidden_size,
                "intermediate_size": c.intermediate_size,
                "num_hidden_layers": c.num_hidden_layers,
                "num_attention_heads": c.num_attention_heads,
                "num_key_value_heads": c.num_key_value_heads,
                "head_dim": c.head_dim,
                "hidden_act": c.hidden_act.hf_name(),
                "max_position_embeddings": c.max_position_embeddings,
                "rms_norm_eps": c.rms_norm_eps,
                "rope_theta": c.rope_theta,
                "tie_word_embeddings": c.tie_word_embeddings,
                "attention_bias": c.attention_bias,
                "mlp_bias": c.mlp_bias,
                "bos_token_id": c.bos_token_id,
                "eos_token_id": c.eos_token_ids,
                "pad_token_id": c.pad_token_id,
                "torch_dtype": c.dtype.clone().unwrap_or_else(|| "float32".into()),
            })
        };
        match self {
            ModelConfig::Llama(c) => text(c),
            ModelConfig::QwenVl(c) => {
                let (t, v) = (&c.text, &c.vision);
                serde_json::json!({
                    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
                    "model_type": "qwen2_5_vl",
                    "image_token_id": c.image_token_id,
                    "video_token_id": c.video_token_id,
                    "vision_start_token_id": c.vision_start_token_id,
                    "vision_end_token_id": c.vision_end_token_id,
                    "tie_word_embeddings": t.tie_word_embeddings,
                    "dtype": t.dtype.clone().unwrap_or_else(|| "float32".into()),
                    "text_config": {
                        "model_type": "qwen2_5_vl_text",
                        "vocab_size": t.vocab_size,
                        "hidden_size": t.hidden_size,
                        "intermediate_size": t.intermediate_size,
                        "num_hidden_layers": t.num_hidden_layers,
                        "num_attention_heads": t.num_attention_heads,
                        "num_key_value_heads": t.num_key_value_heads,
                        "hidden_act": t.hidden_act.hf_name(),
                        "max_position_embeddings": t.max_position_embeddings,
                        "rms_norm_eps": t.rms_norm_eps,
                        "rope_parameters": {
                            "rope_type": "default",
                            "rope_theta": t.rope_theta,
                            "mrope_section": t.mrope_section,
                        },
                        "tie_word_embeddings": t.tie_word_embeddings,
                        "bos_token_id": t.bos_token_id,
                        "eos_token_id": t.eos_token_ids,
                        "pad_token_id": t.pad_token_id,
                    },
                    "vision_config": {
                        "model_type": "qwen2_5_vl_vision",
                        "depth": v.depth,
                        "hidden_size": v.hidden_size,
                        "intermediate_size": v.intermediate_size,
                        "num_heads": v.num_heads,
                        "in_channels": v.in_channels,
                        "patch_size": v.patch_size,
                        "temporal_patch_size": v.temporal_patch_size,
                        "spatial_merge_size": v.spatial_merge_size,
                        "window_size": v.window_size,
                        "fullatt_block_indexes": v.fullatt_block_indexes,
                        "out_hidden_size": v.out_hidden_size,
                        "hidden_act": v.hidden_act.hf_name(),
                        "tokens_per_second": v.tokens_per_second,
                        "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
                    },
                })
            }
            ModelConfig::Llava(c) => {
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
                    "text_config": text(&c.text),
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
    }

    /// The language model's config.
    pub fn text(&self) -> &LlamaConfig {
        match self {
            ModelConfig::Llava(c) => &c.text,
            ModelConfig::Llama(c) => c,
            ModelConfig::QwenVl(c) => &c.text,
        }
    }
}

/// A JSON object plus where it came from, so every error names file and dotted field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
    prefix: String,
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> Fields<'a> {
    fn root(value: &'a Value, path: &'a Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::config(path, "<root>", "expected a JSON object"))?;
        Ok(Fields {
            obj,
            path,
            prefix: String::new(),
        })
    }

    fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    fn err(&self, field: &str, msg: impl Into<String>) -> Error {
        Error::config(PathBuf::from(self.path), self.name(field), msg)
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    /// A nested object; absent or null gives an empty one (all defaults).
    fn child(&self, field: &str) -> Result<Fields<'a>> {
        let obj = match self.get(field) {
            None => &*EMPTY,
            Some(Value::Object(o)) => o,
            Some(_) => return Err(self.err(field, "expected an object")),
        };
        Ok(Fields {
            obj,
            path: self.path,
            prefix: format!("{}{field}.", self.prefix),
        })
    }

    fn usize(&self, field: &str, default: usize) -> Result<usize> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                self.err(field, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }

    fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        self.get(field).map(|_| self.usize(field, 0)).transpose()
    }

    fn f64(&self, field: &str, default: f64) -> Result<f64> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(field, format!("expected a number, found {v}"))),
        }
    }

    fn bool(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(field, format!("expected true or false, found {v}"))),
        }
    }

    fn opt_str(&self, field: &str) -> Result<Option<String>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(field, format!("expected a string, found {v}"))),
        }
    }

    fn activation(&self, field: &str, default: Activation) -> Result<Activation> {
        match self.opt_str(field)? {
            None => Ok(default),
            Some(name) => Activation::parse(&name)
                .ok_or_else(|| self.err(field, format!("unsupported activation `{name}`"))),
        }
    }

    /// An id or a list of ids (`eos_token_id` may be either).
    fn ids(&self, field: &str, default: &[u32]) -> Result<Vec<u32>> {
        let as_id = |v: &Value| {
            v.as_u64()
                .filter(|&x| x <= u32::MAX as u64)
                .map(|x| x as u32)
        };
        match self.get(field) {
            None => Ok(default.to_vec()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    as_id(v)
                        .ok_or_else(|| self.err(field, format!("expected token ids, found {v}")))
                })
                .collect(),
            Some(v) => as_id(v)
                .map(|x| vec![x])
                .ok_or_else(|| self.err(field, format!("expected a token id, found {v}"))),
        }
    }
}

fn positive(f: &Fields, field: &str, value: usize) -> Result<usize> {
    if value == 0 {
        return Err(f.err(field, "must be greater than zero"));
    }
    Ok(value)
}

/// The decoder families a text config can describe; each has transformers' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextFamily {
    Llama,
    /// `Qwen2_5_VLTextConfig`: bias on q/k/v only, `head_dim = hidden / heads`, M-RoPE.
    Qwen2Vl,
}

/// A text config with its family's transformers defaults. `parent` is the enclosing VLM
/// config, whose top-level ids and dtype stand in when the text config leaves them out.
fn parse_text(f: &Fields, parent: Option<&Fields>, family: TextFamily) -> Result<LlamaConfig> {
    let qwen = family == TextFamily::Qwen2Vl;
    let accepted: &[&str] = if qwen {
        &["qwen2_5_vl_text", "qwen2_5_vl", "qwen2_vl_text", "qwen2_vl"]
    } else {
        &["llama"]
    };
    if let Some(mt) = f.opt_str("model_type")? {
        if !accepted.contains(&mt.as_str()) {
            return Err(f.err(
                "model_type",
                format!("`{mt}` is not supported (expected `{}`)", accepted[0]),
            ));
        }
    }
    let d = |llama: usize, qwen2: usize| if qwen { qwen2 } else { llama };
    let hidden_size = positive(f, "hidden_size", f.usize("hidden_size", d(4096, 8192))?)?;
    let num_attention_heads = positive(
        f,
        "num_attention_heads",
        f.usize("num_attention_heads", d(32, 64))?,
    )?;
    let num_key_value_heads = positive(
        f,
        "num_key_value_heads",
        f.usize("num_key_value_heads", d(num_attention_heads, 8))?,
    )?;
    if num_attention_heads % num_key_value_heads != 0 {
        return Err(f.err(
            "num_key_value_heads",
            format!(
                "{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"
            ),
        ));
    }
    // Qwen2-VL's attention takes `hidden_size / heads` whatever `head_dim` says.
    let head_dim = match f.opt_usize("head_dim")?.filter(|_| !qwen) {
        Some(d) => positive(f, "head_dim", d)?,
        None => {
            if hidden_size % num_attention_heads != 0 {
                return Err(f.err(
                    "num_attention_heads",
                    format!(
                        "{num_attention_heads} heads do not divide hidden_size = {hidden_size}"
                    ),
                ));
            }
            hidden_size / num_attention_heads
        }
    };
    if head_dim % 2 != 0 {
        return Err(f.err(
            "head_dim",
            format!("{head_dim} must be even for rotary embeddings"),
        ));
    }

    // transformers < 5 writes `rope_theta` (+ `rope_scaling`); 5 writes `rope_parameters`.
    let rope = f.child("rope_parameters")?;
    let theta_default = if qwen { 1_000_000.0 } else { 10000.0 };
    let rope_theta = rope.f64("rope_theta", f.f64("rope_theta", theta_default)?)?;
    let mut mrope_section = Vec::new();
    for (block, fields) in [
        ("rope_scaling", f.child("rope_scaling")?),
        ("rope_parameters", rope),
    ] {
        let kind = match fields.opt_str("rope_type")? {
            Some(k) => Some(k),
            None => fields.opt_str("type")?,
        };
        let plain = |k: &String| k == "default" || (qwen && k == "mrope");
        if let Some(kind) = kind.filter(|k| !plain(k)) {
            return Err(f.err(
                block,
                format!("rope type `{kind}` is not supported (only `default`)"),
            ));
        }
        if qwen && fields.get("mrope_section").is_some() {
            mrope_section = fields
                .ids("mrope_section", &[])?
                .into_iter()
                .map(|x| x as usize)
                .collect();
        }
    }
    if qwen {
        if mrope_section.is_empty() {
            mrope_section = vec![16, 24, 24];
        }
        let sum: usize = mrope_section.iter().sum();
        if mrope_section.len() != 3 || sum != head_dim / 2 {
            return Err(f.err(
                "rope_parameters.mrope_section",
                format!(
                    "{mrope_section:?} must be three counts summing to head_dim / 2 = {}",
                    head_dim / 2
                ),
            ));
        }
        if f.bool("use_sliding_window", false)? {
            return Err(f.err(
                "use_sliding_window",
                "sliding-window attention is not supported",
            ));
        }
    }

    let hidden_act = f.activation("hidden_act", Activation::Silu)?;
    let pick = |field: &str| -> Result<Option<Vec<u32>>> {
        if f.get(field).is_some() {
            return f.ids(field, &[]).map(Some);
        }
        match parent {
            Some(p) if p.get(field).is_some() => p.ids(field, &[]).map(Some),
            _ => Ok(None),
        }
    };
    let dtype = match f.opt_str("torch_dtype")?.or(f.opt_str("dtype")?) {
        Some(d) => Some(d),
        None => match parent {
            Some(p) => p.opt_str("torch_dtype")?.or(p.opt_str("dtype")?),
            None => None,
        },
    };
    // Qwen2.5-VL ties when either the top level or the text config says so.
    let tie = f.bool("tie_word_embeddings", false)?
        || (qwen && parent.map_or(Ok(false), |p| p.bool("tie_word_embeddings", false))?);
    let attention_bias = qwen || f.bool("attention_bias", false)?;
    let (bos, eos) = if qwen { (151643, 151645) } else { (1, 2) };
    Ok(LlamaConfig {
        vocab_size: positive(f, "vocab_size", f.usize("vocab_size", d(32000, 152064))?)?,
        hidden_size,
        intermediate_size: positive(
            f,
            "intermediate_size",
            f.usize("intermediate_size", d(11008, 29568))?,
        )?,
        num_hidden_layers: f.usize("num_hidden_layers", d(32, 80))?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        hidden_act,
        max_position_embeddings: positive(
            f,
            "max_position_embeddings",
            f.usize("max_position_embeddings", d(2048, 32768))?,
        )?,
        rms_norm_eps: f.f64("rms_norm_eps", if qwen { 1e-5 } else { 1e-6 })?,
        rope_theta,
        tie_word_embeddings: tie,
        attention_bias,
        o_proj_bias: attention_bias && !qwen,
        mlp_bias: !qwen && f.bool("mlp_bias", false)?,
        mrope_section,
        bos_token_id: pick("bos_token_id")?.map_or(Some(bos), |v| v.first().copied()),
        eos_token_ids: pick("eos_token_id")?.unwrap_or_else(|| vec![eos]),
        pad_token_id: pick("pad_token_id")?.and_then(|v| v.first().copied()),
        dtype,
    })
}

/// `CLIPVisionConfig` with transformers' defaults (`LlavaConfig` fills a missing
/// `vision_config` with the CLIP ViT-L/14-336 values, handled by the caller).
fn parse_clip(f: &Fields, defaults: &ClipVisionConfig) -> Result<ClipVisionConfig> {
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

impl LlamaConfig {
    /// A LLaMA of the given shape with LLaVA-1.5's vocabulary (32064) and LLaMA-2's other
    /// settings: random-weight models for benchmarks.
    pub fn sized(hidden: usize, layers: usize, heads: usize, kv: usize, inter: usize) -> Self {
        LlamaConfig {
            vocab_size: 32064,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: hidden / heads,
            hidden_act: Activation::Silu,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: false,
            attention_bias: false,
            o_proj_bias: false,
            mlp_bias: false,
            mrope_section: Vec::new(),
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: None,
            dtype: Some("float32".into()),
        }
    }
}

impl QwenVlConfig {
    /// A Qwen2.5-VL of the given decoder shape (hidden, layers, heads, KV heads, MLP width,
    /// vocabulary, tied output) behind the released models' vision tower (32 blocks of width
    /// 1280, windows of 112 px, full attention in blocks 7/15/23/31): random-weight benchmarks.
    pub fn qwen2_5_vl(
        (hidden, layers, heads, kv, inter): (usize, usize, usize, usize, usize),
        vocab_size: usize,
        tie_word_embeddings: bool,
    ) -> ModelConfig {
        let text = LlamaConfig {
            vocab_size,
            max_position_embeddings: 128_000,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            tie_word_embeddings,
            attention_bias: true,
            mrope_section: vec![16, 24, 24],
            bos_token_id: Some(151_643),
            eos_token_ids: vec![151_645],
            ..LlamaConfig::sized(hidden, layers, heads, kv, inter)
        };
        ModelConfig::QwenVl(QwenVlConfig {
            vision: QwenVisionConfig {
                depth: 32,
                hidden_size: 1280,
                intermediate_size: 3420,
                num_heads: 16,
                in_channels: 3,
                patch_size: 14,
                temporal_patch_size: 2,
                spatial_merge_size: 2,
                window_size: 112,
                fullatt_block_indexes: vec![7, 15, 23, 31],
                out_hidden_size: hidden,
                hidden_act: Activation::Silu,
                rope_theta: 10000.0,
                tokens_per_second: 2,
            },
            text,
            image_token_id: 151_655,
            video_token_id: 151_656,
            vision_start_token_id: 151_652,
            vision_end_token_id: 151_653,
        })
    }
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

fn parse_llava(f: &Fields) -> Result<LlavaConfig> {
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

/// `Qwen2_5_VLConfig` in either layout: transformers 5's nested `text_config`, or the flat one
/// of the official hub configs (text fields at the top level, `rope_scaling` with
/// `mrope_section`, the vision tower's `in_chans`).
fn parse_qwen_vl(f: &Fields) -> Result<QwenVlConfig> {
    let text = if f.get("text_config").is_some() {
        parse_text(&f.child("text_config")?, Some(f), TextFamily::Qwen2Vl)?
    } else {
        parse_text(f, None, TextFamily::Qwen2Vl)?
    };
    let v = f.child("vision_config")?;
    if let Some(mt) = v.opt_str("model_type")? {
        if mt != "qwen2_5_vl_vision" && mt != "qwen2_5_vl" {
            return Err(v.err(
                "model_type",
                format!("`{mt}` is not supported (expected `qwen2_5_vl_vision`)"),
            ));
        }
    }
    let hidden_size = positive(&v, "hidden_size", v.usize("hidden_size", 3584)?)?;
    let num_heads = positive(&v, "num_heads", v.usize("num_heads", 16)?)?;
    if hidden_size % num_heads != 0 || (hidden_size / num_heads) % 4 != 0 {
        return Err(v.err(
            "num_heads",
            format!(
                "{num_heads} heads must divide hidden_size = {hidden_size} into a head size divisible by 4 (2-D rotary)"
            ),
        ));
    }
    let in_channels = match v.opt_usize("in_channels")? {
        Some(c) => c,
        None => v.usize("in_chans", 3)?,
    };
    let patch_size = positive(&v, "patch_size", v.usize("patch_size", 14)?)?;
    let spatial_merge_size = positive(&v, "spatial_merge_size", v.usize("spatial_merge_size", 2)?)?;
    let window_size = v.usize("window_size", 112)?;
    if window_size < patch_size * spatial_merge_size {
        return Err(v.err(
            "window_size",
            format!(
                "{window_size} is smaller than one merged cell ({} pixels)",
                patch_size * spatial_merge_size
            ),
        ));
    }
    let depth = v.usize("depth", 32)?;
    let fullatt_block_indexes: Vec<usize> = v
        .ids("fullatt_block_indexes", &[7, 15, 23, 31])?
        .into_iter()
        .map(|x| x as usize)
        .collect();
    if let Some(&bad) = fullatt_block_indexes.iter().find(|&&i| i >= depth) {
        return Err(v.err(
            "fullatt_block_indexes",
            format!("{bad} is not a block of a {depth}-block tower"),
        ));
    }
    let rope = v.child("rope_parameters")?;
    if let Some(kind) = rope.opt_str("rope_type")?.filter(|k| k != "axial") {
        return Err(rope.err(
            "rope_type",
            format!("`{kind}` is not supported (expected `axial`)"),
        ));
    }
    let vision = QwenVisionConfig {
        depth,
        hidden_size,
        intermediate_size: positive(&v, "intermediate_size", v.usize("intermediate_size", 3420)?)?,
        num_heads,
        in_channels: positive(&v, "in_channels", in_channels)?,
        patch_size,
        temporal_patch_size: positive(
            &v,
            "temporal_patch_size",
            v.usize("temporal_patch_size", 2)?,
        )?,
        spatial_merge_size,
        window_size,
        fullatt_block_indexes,
        out_hidden_size: positive(&v, "out_hidden_size", v.usize("out_hidden_size", 3584)?)?,
        hidden_act: v.activation("hidden_act", Activation::Silu)?,
        rope_theta: rope.f64("rope_theta", 10000.0)?,
        tokens_per_second: v.usize("tokens_per_second", 4)?,
    };
    if vision.out_hidden_size != text.hidden_size {
        return Err(v.err(
            "out_hidden_size",
            format!(
                "{} differs from the text hidden_size {}",
                vision.out_hidden_size, text.hidden_size
            ),
        ));
    }
    let id = |field: &str, default: u32| -> Result<u32> {
        let id = *f.ids(field, &[default])?.first().unwrap_or(&default);
        if id as usize >= text.vocab_size {
            return Err(f.err(
                field,
                format!("{id} is outside the vocabulary of {} ids", text.vocab_size),
            ));
        }
        Ok(id)
    };
    Ok(QwenVlConfig {
        image_token_id: id("image_token_id", 151655)?,
        video_token_id: id("video_token_id", 151656)?,
        vision_start_token_id: id("vision_start_token_id", 151652)?,
        vision_end_token_id: id("vision_end_token_id", 151653)?,
        text,
        vision,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn written_configs_read_back_equal() {
        let mut text = LlamaConfig::sized(64, 2, 4, 2, 128);
        text.pad_token_id = Some(5);
        text.tie_word_embeddings = true;
        let vision = ClipVisionConfig {
            hidden_size: 32,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            image_size: 64,
            patch_size: 16,
            ..Default::default()
        };
        let mut llava = LlavaConfig::llava_1_5(text.clone(), vision);
        if let ModelConfig::Llava(c) = &mut llava {
            c.vision_feature_layers = vec![-2, -1];
        }
        for config in [llava, ModelConfig::Llama(text)] {
            let json = config.to_hf_json();
            let back = ModelConfig::from_value(&json, Path::new("config.json")).unwrap();
            assert_eq!(back, config, "{json:#}");
        }
    }

    use super::*;

    fn parse(json: &str) -> Result<ModelConfig> {
        ModelConfig::from_value(
            &serde_json::from_str(json).unwrap(),
            Path::new("config.json"),
        )
    }

    #[test]
    fn sparse_llava_takes_transformers_defaults() {
        let c = match parse(r#"{"model_type": "llava", "text_config": {"model_type": "llama", "vocab_size": 32064}}"#).unwrap() {
            ModelConfig::Llava(c) => c,
            other => panic!("expected llava, got {other:?}"),
        };
        assert_eq!(c.text.hidden_size, 4096);
        assert_eq!(c.text.num_key_value_heads, 32);
        assert_eq!(c.text.rope_theta, 10000.0);
        assert_eq!(c.text.rms_norm_eps, 1e-6);
        assert_eq!(c.vision.image_size, 336);
        assert_eq!(c.vision.hidden_act, Activation::QuickGelu);
        assert_eq!(c.vision.layer_norm_eps, 1e-5);
        assert_eq!(c.vision_feature_layers, vec![-2]);
        assert_eq!(c.image_tokens(), 576);
        assert_eq!(c.feature_layer_indices(), vec![23]);
        assert_eq!(c.image_token_id, 32000);
    }

    #[test]
    fn rope_parameters_and_dtype_of_transformers_5() {
        let c = parse(r#"{"model_type": "llama", "dtype": "bfloat16", "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}"#).unwrap();
        assert_eq!(c.text().rope_theta, 500000.0);
        assert_eq!(c.text().dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let e = parse(r#"{"model_type": "llama", "hidden_size": 30, "num_attention_heads": 4}"#)
            .unwrap_err();
        assert!(e.to_string().contains("num_attention_heads"), "{e}");
        let e =
            parse(r#"{"model_type": "llama", "num_attention_heads": 8, "num_key_value_heads": 3}"#)
                .unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
        let e =
            parse(r#"{"model_type": "llava", "text_config": {"hidden_size": "big"}}"#).unwrap_err();
        assert!(e.to_string().contains("text_config.hidden_size"), "{e}");
        let e = parse(r#"{"model_type": "llava", "vision_feature_layer": -30}"#).unwrap_err();
        assert!(e.to_string().contains("vision_feature_layer"), "{e}");
        let e =
            parse(r#"{"model_type": "llama", "rope_scaling": {"type": "yarn", "factor": 2.0}}"#)
                .unwrap_err();
        assert!(e.to_string().contains("rope_scaling"), "{e}");
        let e = parse(r#"{"model_type": "bert"}"#).unwrap_err();
        assert!(e.to_string().contains("model_type"), "{e}");
    }
}
