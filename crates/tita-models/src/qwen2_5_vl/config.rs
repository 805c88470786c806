//! `Qwen2_5_VLConfig`: the Qwen2 decoder (M-RoPE) and the Qwen2.5-VL vision tower, parsed in
//! either layout transformers writes.

use serde_json::Value;
use tita_core::config::{positive, Fields};
use tita_core::{Activation, Result};

use crate::family::ModelConfig;
use crate::llama::config::{parse_text, LlamaConfig, TextFamily};

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
    pub fn patch_layout(&self) -> tita_core::image::PatchLayout {
        tita_core::image::PatchLayout {
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

    /// The config as transformers writes `config.json` (every field explicit).
    pub fn to_hf_json(&self) -> Value {
        let c = self;
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
}

/// `Qwen2_5_VLConfig` in either layout: transformers 5's nested `text_config`, or the flat one
/// of the official hub configs (text fields at the top level, `rope_scaling` with
/// `mrope_section`, the vision tower's `in_chans`).
pub(crate) fn parse_qwen_vl(f: &Fields) -> Result<QwenVlConfig> {
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
