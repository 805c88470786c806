//! tita-decode: generation over loaded VLMs. [`Pipeline`] loads a checkpoint directory,
//! [`Generator`] decodes with a KV cache (greedy or seeded sampling, stop conditions,
//! streaming, batches).

pub mod backend;
pub mod generator;
pub mod pipeline;
pub mod select;
pub mod session;
pub mod tita;

pub use generator::{
    decode_loop, Cancel, FinishReason, Generation, GenerationConfig, Generator, Next, Timings,
    TokenEvent,
};
pub use pipeline::{ImageInput, Pipeline, Prompt, Request};
pub use session::Session;
pub use tita::{Tita, TitaConfig, TitaGeneration, TokenExplanation};
pub use tita_core::fusion::Fusion;
pub use tita_core::sampling::SamplingConfig;
pub use tita_core::template::{ChatTemplate, Message, Part};
pub use tita_core::{Error, Result};
pub use tita_models::Precision;
