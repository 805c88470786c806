//! DeepSeek-VL2 (deepseek-ai/DeepSeek-VL2): a SigLIP tower with dynamic tiling, a 2x2-downsample
//! MLP projector and a DeepSeek-V2 language model (MLA or MHA attention, mixture-of-experts).
//! This folder holds the config ([`config`]), the [`processor`] (conversation format, tiling,
//! tokens), the [`vision`] tower and the [`projector`], the language model ([`language`], with
//! [`mla`] attention and its latent cache, and the [`moe`] feed-forward) and the whole
//! [`model`]; the registration in `family.rs` comes next.

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
};
pub use language::{hub_keys, DecoderLayer, DeepseekV2, SelfAttention};
pub use mla::{MlaAttention, MlaLayer};
pub use model::{image_layout, tiles_used, DeepseekVl2, ImageRow};
pub use moe::{FeedForward, Gate, Moe, Route};
pub use processor::{best_resolution, pad_to, Message, Prepared, Processor, Role, Tiling};
pub use projector::Projector;
pub use vision::{SiglipBlock, SiglipVit};
