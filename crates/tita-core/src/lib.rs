//! tita-core: what every family's config parsing shares, tokenizer and chat template, image
//! preprocessing and sampling for TITA. No model code lives here.

pub mod args;
pub mod config;
pub mod error;
pub mod fingerprint;
pub mod image;
pub mod jpeg;
pub mod jsonl;
pub mod noise;
pub mod output;
#[cfg(feature = "report")]
pub mod plot;
#[cfg(feature = "report")]
pub mod progress;
pub mod sampling;
pub mod template;
pub mod tokenizer;
pub mod wheels;

pub use config::Activation;
pub use error::{Error, Result};
pub use tokenizer::Tokenizer;
