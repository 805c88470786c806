//! llama.cpp's tensor names and metadata keys in Hugging Face terms: `blk.N.attn_q.weight` →
//! `model.layers.N.self_attn.q_proj.weight` (with the Q/K row order undone), the mmproj's
//! `v.*` / `mm.*` → LLaVA's `vision_tower.vision_model.*` / `multi_modal_projector.*`, and
//! `llama.*` / `clip.vision.*` keys → the `config.json` transformers would have written.

use serde_json::{json, Value};
use tita_core::{Error, Result};

use super::reader::GgufFile;

/// Where the vision tower and projector of an mmproj go (the llava-hf hub layout).
pub const VISION_PREFIX: &str = "vision_tower.vision_model.";
pub const PROJECTOR_PREFIX: &str = "multi_modal_projector.";

/// What a tensor needs besides dequantisation to be the HF tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    None,
    /// `convert_hf_to_gguf.py` interleaved the rotary halves of each of this many heads.
    Unpermute(usize),
}

/// The HF name and transform of a tensor of a `llama` GGUF (None: a name we do not know).
pub fn llama_name(gguf: &str, heads: usize, kv_heads: usize) -> Option<(String, Transform)> {
    let plain = |s: &str| Some((s.to_string(), Transform::None));
    match gguf {
        "token_embd.weight" => return plain("model.embed_tokens.weight"),
        "output_norm.weight" => return plain("model.norm.weight"),
        "output.weight" => return plain("lm_head.weight"),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (hf, transform) = match part {
        "attn_norm" => ("input_layernorm", Transform::None),
        "ffn_norm" => ("post_attention_layernorm", Transform::None),
        "attn_q" => ("self_attn.q_proj", Transform::Unpermute(heads)),
        "attn_k" => ("self_attn.k_proj", Transform::Unpermute(kv_heads)),
        "attn_v" => ("self_attn.v_proj", Transform::None),
        "attn_output" => ("self_attn.o_proj", Transform::None),
        "ffn_gate" => ("mlp.gate_proj", Transform::None),
        "ffn_up" => ("mlp.up_proj", Transform::None),
        "ffn_down" => ("mlp.down_proj", Transform::None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}.{kind}"), transform))
}

/// The HF name of a tensor of a LLaVA-1.5 `clip` mmproj (None: a name we do not know).
/// `fc1_is_down`: whether `ffn_down` is the widening layer (`mlp.fc1`), as the legacy
/// converter writes it.
pub fn clip_name(gguf: &str, fc1_is_down: bool) -> Option<String> {
    let v = VISION_PREFIX;
    let whole = match gguf {
        "v.patch_embd.weight" => Some("embeddings.patch_embedding.weight"),
        "v.class_embd" => Some("embeddings.class_embedding"),
        "v.position_embd.weight" => Some("embeddings.position_embedding.weight"),
        "v.pre_ln.weight" => Some("pre_layrnorm.weight"),
        "v.pre_ln.bias" => Some("pre_layrnorm.bias"),
        "v.post_ln.weight" => Some("post_layernorm.weight"),
        "v.post_ln.bias" => Some("post_layernorm.bias"),
        _ => None,
    };
    if let Some(hf) = whole {
        return Some(format!("{v}{hf}"));
    }
    if let Some(rest) = gguf.strip_prefix("mm.") {
        let (layer, kind) = rest.split_once('.')?;
        let linear = match layer {
            "0" => "linear_1",
            "2" => "linear_2",
            _ => return None,
        };
        return matches!(kind, "weight" | "bias")
            .then(|| format!("{PROJECTOR_PREFIX}{linear}.{kind}"));
    }
    let rest = gguf.strip_prefix("v.blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (fc_down, fc_up) = if fc1_is_down {
        ("mlp.fc1", "mlp.fc2")
    } else {
        ("mlp.fc2", "mlp.fc1")
    };
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_out" => "self_attn.out_proj",
        "ln1" => "layer_norm1",
        "ln2" => "layer_norm2",
        "ffn_down" => fc_down,
        "ffn_up" => fc_up,
        _ => return None,
    };
    Some(format!("{v}encoder.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's rotary interleave of a `[heads·d, cols]` matrix (or `[heads·d]` bias):
/// HF row `h·d + s·d/2 + i` is GGUF row `h·d + 2i + s`.
pub fn unpermute(values: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let d = rows / heads;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..d / 2 {
                let hf = h * d + s * (d / 2) + i;
                let gg = h * d + 2 * i + s;
                out[hf * cols..(hf + 1) * cols]
                    .copy_from_slice(&values[gg * cols..(gg + 1) * cols]);
            }
        }
    }
    out
}

/// The architecture a GGUF says it holds.
pub fn architecture(f: &GgufFile) -> Result<&str> {
    f.get_str("general.architecture")?.ok_or_else(|| {
        Error::config(
            f.path(),
            "general.architecture",
            "missing (every GGUF names its architecture)",
        )
    })
}

/// `LlamaForCausalLM`'s `config.json` from a `llama` GGUF's metadata; vocabulary size and
/// tying come from the tensors (`token_embd` rows; no `output.weight` = tied).
pub fn llama_config(f: &GgufFile) -> Result<Value> {
    let arch = architecture(f)?;
    if arch != "llama" {
        return Err(Error::config(
            f.path(),
            "general.architecture",
            format!("`{arch}` is not supported (expected `llama`; a `clip` file is an mmproj: give it as --mmproj)"),
        ));
    }
    let k = |s: &str| format!("llama.{s}");
    if f.get(&k("expert_count")).is_some() {
        return Err(Error::config(
            f.path(),
            k("expert_count"),
            "mixture-of-experts models are not supported",
        ));
    }
    if let Some(t) = f.get_str(&k("rope.scaling.type"))?.filter(|t| *t != "none") {
        return Err(Error::config(
            f.path(),
            k("rope.scaling.type"),
            format!("`{t}`: rope scaling is not supported"),
        ));
    }
    if let Some(x) = f
        .get_f64(&k("rope.scaling.factor"))?
        .filter(|&x| x != 0.0 && x != 1.0)
    {
        return Err(Error::config(
            f.path(),
            k("rope.scaling.factor"),
            format!("{x}: rope scaling is not supported"),
        ));
    }
    let hidden = f.usize(&k("embedding_length"))?;
    let heads = f.usize(&k("attention.head_count"))?;
    let kv = f.get_usize(&k("attention.head_count_kv"))?.unwrap_or(heads);
    let head_dim = match f.get_usize(&k("attention.key_length"))? {
        Some(d) => d,
        None if heads > 0 => hidden / heads,
        None => 0,
    };
    if let Some(rot) = f.get_usize(&k("rope.dimension_count"))? {
        if rot != head_dim {
            return Err(Error::config(
                f.path(),
                k("rope.dimension_count"),
                format!("{rot}: partial rotary embeddings are not supported (head dim {head_dim})"),
            ));
        }
    }
    let embd = f.tensor("token_embd.weight").ok_or_else(|| {
        Error::tensor(
            f.path(),
            "token_embd.weight",
            "missing (the token embedding)",
        )
    })?;
    let vocab = embd.shape().first().copied().unwrap_or(0);
    if let Some(v) = f.get_usize(&k("vocab_size"))? {
        if v != vocab {
            return Err(Error::config(
                f.path(),
                k("vocab_size"),
                format!("{v}, but token_embd.weight has {vocab} rows"),
            ));
        }
    }
    let dtype = match f.get_usize("general.file_type")? {
        Some(1) => "float16",
        Some(32) => "bfloat16",
        _ => "float32",
    };
    let mut c = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": f.usize(&k("feed_forward_length"))?,
        "num_hidden_layers": f.usize(&k("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": f.get_f64(&k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        "rope_theta": f.get_f64(&k("rope.freq_base"))?.unwrap_or(10000.0),
        "tie_word_embeddings": f.tensor("output.weight").is_none(),
        "attention_bias": f.tensor("blk.0.attn_q.bias").is_some(),
        "torch_dtype": dtype,
    });
    if let Some(n) = f.get_usize(&k("context_length"))? {
        c["max_position_embeddings"] = n.into();
    }
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(id) = f.get_usize(key)? {
            c[field] = id.into();
        }
    }
    Ok(c)
}

/// `LlavaConfig`'s `config.json` from the language GGUF's config and a LLaVA-1.5 mmproj's
/// `clip.*` keys. `image_token_id` is `<image>` of the language model's vocabulary (the mmproj
/// does not know it); every stored block runs and the last one's output is projected.
pub fn llava_config(text: Value, mmproj: &GgufFile, image_token_id: usize) -> Result<Value> {
    let arch = architecture(mmproj)?;
    let p = mmproj.path();
    if arch != "clip" {
        return Err(Error::config(
            p,
            "general.architecture",
            format!("`{arch}` is not an mmproj (expected `clip`)"),
        ));
    }
    for (key, want) in [
        ("clip.has_vision_encoder", true),
        ("clip.has_llava_projector", true),
    ] {
        if mmproj.get_bool(key)? != Some(want) {
            return Err(Error::config(
                p,
                key,
                format!("must be {want} for a LLaVA mmproj"),
            ));
        }
    }
    if let Some(t) = mmproj.get_str("clip.projector_type")? {
        if t != "mlp" {
            return Err(Error::config(
                p,
                "clip.projector_type",
                format!("`{t}` is not supported (LLaVA-1.5's `mlp`)"),
            ));
        }
    }
    for key in [
        "clip.vision.feature_layer",
        "clip.vision.image_grid_pinpoints",
    ] {
        if mmproj.get(key).is_some() {
            return Err(Error::config(
                p,
                key,
                "not supported (LLaVA-1.5 mmproj files only)",
            ));
        }
    }
    let k = |s: &str| format!("clip.vision.{s}");
    let gelu = mmproj.get_bool("clip.use_gelu")?.unwrap_or(false);
    let vision = json!({
        "model_type": "clip_vision_model",
        "hidden_size": mmproj.usize(&k("embedding_length"))?,
        "intermediate_size": mmproj.usize(&k("feed_forward_length"))?,
        "num_hidden_layers": mmproj.usize(&k("block_count"))?,
        "num_attention_heads": mmproj.usize(&k("attention.head_count"))?,
        "image_size": mmproj.usize(&k("image_size"))?,
        "patch_size": mmproj.usize(&k("patch_size"))?,
        "layer_norm_eps": mmproj.get_f64(&k("attention.layer_norm_epsilon"))?.unwrap_or(1e-5),
        "hidden_act": if gelu { "gelu" } else { "quick_gelu" },
        "num_channels": 3,
    });
    Ok(json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": image_token_id,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": mmproj.tensor("mm.0.bias").is_some(),
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "pad_token_id": text.get("pad_token_id").cloned().unwrap_or(Value::Null),
        "tie_word_embeddings": text["tie_word_embeddings"].clone(),
        "torch_dtype": text["torch_dtype"].clone(),
        "text_config": text,
        "vision_config": vision,
    }))
}
