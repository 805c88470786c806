//! `LlamaConfig` (also the text config of LLaVA and, with M-RoPE, of Qwen2.5-VL) and its
//! parsing with transformers' defaults per decoder family.

use serde_json::Value;
use tita_core::config::{positive, Fields};
use tita_core::{Activation, Result};

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

/// The decoder families a text config can describe; each has transformers' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextFamily {
    Llama,
    /// `Qwen2_5_VLTextConfig`: bias on q/k/v only, `head_dim = hidden / heads`, M-RoPE.
    Qwen2Vl,
}

/// A text config with its family's transformers defaults. `parent` is the enclosing VLM
/// config, whose top-level ids and dtype stand in when the text config leaves them out.
pub(crate) fn parse_text(
    f: &Fields,
    parent: Option<&Fields>,
    family: TextFamily,
) -> Result<LlamaConfig> {
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
    let rope_theta = match rope.get("rope_theta") {
        Some(_) => rope.positive_f64("rope_theta", theta_default)?,
        None => f.positive_f64("rope_theta", theta_default)?,
    };
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
            mrope_section = fields.counts("mrope_section")?;
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
        rms_norm_eps: f.positive_f64("rms_norm_eps", if qwen { 1e-5 } else { 1e-6 })?,
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

    /// The config as transformers writes `LlamaForCausalLM`'s `config.json` (every field
    /// explicit).
    pub fn to_hf_json(&self) -> Value {
        let c = self;
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
    }
}
