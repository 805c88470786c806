//! DeepSeek-VL2 (deepseek-ai/DeepSeek-VL2): a SigLIP tower with dynamic tiling, a 2x2-downsample
//! MLP projector and a DeepSeek-V2 language model (MLA or MHA attention, mixture-of-experts).
//! This folder holds the config ([`config`]) and the language model ([`language`], with
//! [`mla`] attention and its latent cache, and the [`moe`] feed-forward); the vision tower, the
//! processor and the registration in `family.rs` come next.

pub mod config;
pub mod language;
pub mod mla;
pub mod moe;

pub use config::{
    AttentionKind, DeepseekV2Config, DeepseekVl2Config, GlobalViewPos, MlaDims, MoeConfig,
    ProjectorConfig, ProjectorType, Scoring, TileTag, TopkMethod, VisionEncoderConfig,
};
pub use language::{hub_keys, DecoderLayer, DeepseekV2, SelfAttention};
pub use mla::{MlaAttention, MlaLayer};
pub use moe::{FeedForward, Gate, Moe, Route};
