//! tita-decode: generation over loaded VLMs. [`Pipeline`] loads a checkpoint directory,
//! [`Generator`] decodes with a KV cache (greedy or seeded sampling, stop conditions,
//! streaming, batches), [`Tita`] decodes guided by a method of [`guidance`] (TITA's modes,
//! VCD, M3ID, MARINE).

pub mod backend;
mod fused;
pub mod generator;
pub mod guidance;
pub mod pipeline;
pub mod select;
pub mod session;
mod sweep;
pub mod tita;

pub use generator::{
    Cancel, FinishReason, Generation, GenerationConfig, Generator, Timings, TokenEvent,
};
pub use guidance::{Fusion, Guidance, Knob, Knobs};
pub use pipeline::{ImageInput, Pipeline, Prompt, Request};
pub use session::Session;
pub use tita::{Tita, TitaConfig, TitaGeneration, TokenExplanation};
pub use tita_core::sampling::SamplingConfig;
pub use tita_core::template::{ChatTemplate, Message, Part};
pub use tita_core::{Error, Result};
pub use tita_models::Precision;
