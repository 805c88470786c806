//! tita-models: burn modules for the CLIP vision tower, the LLaMA decoder and their LLaVA
//! composition, generic over the backend, loaded from Hugging Face safetensors checkpoints.

pub mod clip;
pub mod layers;
pub mod llama;
pub mod llava;
pub mod weights;

pub use llama::{KvCache, Llama, LlamaKeys};
pub use llava::{KeyLayout, Vlm};
pub use weights::{
    cast, param_id, save_safetensors, Precision, RandomWeights, StoredDtype, StoredTensor,
    TensorSource, Weights,
};
