//! DeepSeek-VL2 (deepseek-ai/DeepSeek-VL2): a SigLIP tower with dynamic tiling, a 2x2-downsample
//! MLP projector and a DeepSeek-V2 language model (MLA or MHA attention, mixture-of-experts).
//! This folder holds the config ([`config`]), the [`processor`] (conversation format, tiling,
//! tokens), the [`vision`] tower and the [`projector`], the language model ([`language`], with
//! [`mla`] attention and its latent cache, and the [`moe`] feed-forward) and the whole
//! vision half ([`model`]); `family.rs` registers the family (`deepseek_vl_v2`) and
//! [`crate::Vlm`] runs it like the others.

use crate::family::{not_found, KeyLayout};
use crate::weights::{TensorSource, Weights};
use tita_core::Result;

pub mod config;
pub mod language;
pub mod mla;
pub mod model;
pub mod moe;
pub mod processor;
pub mod projector;
pub mod vision;

pub use config::{
    AttentionKind, DeepseekV2Config, DeepseekVl2Config, GlobalViewPos, MlaDims, MoeConfig,
    ProjectorConfig, ProjectorType, Scoring, TileTag, TopkMethod, VisionEncoderConfig,
    IMAGE_TOKEN_ID,
};
pub use language::{hub_keys, DecoderLayer, DeepseekV2, SelfAttention};
pub use mla::{MlaAttention, MlaLayer};
pub use model::{image_layout, tiles_used, DeepseekVision, ImageRow};
pub use moe::{FeedForward, Gate, Moe, Route};
pub use processor::{
    band, best_resolution, pad_to, Message, Prepared, Processor, Role, Tiler, Tiling, CHAT_TEMPLATE,
};
pub use projector::Projector;
pub use vision::{SiglipBlock, SiglipVit};

/// Where a DeepSeek-VL2 checkpoint's tensors live (the hub's layout; random models use it too).
pub fn keys() -> KeyLayout {
    KeyLayout {
        text: hub_keys(),
        vision: Some("vision".into()),
        projector: Some("projector".into()),
    }
}

/// The hub's layout, checked on the file (the only one the family is known in).
pub fn detect_keys(w: &Weights) -> Result<KeyLayout> {
    let keys = keys();
    let suffix = "embed_tokens.weight";
    if !w.contains(&format!("{}{suffix}", keys.text.decoder)) {
        return Err(not_found(
            w,
            "the token embedding",
            &[&keys.text.decoder],
            suffix,
        ));
    }
    Ok(keys)
}
