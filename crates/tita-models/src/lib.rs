//! tita-models: burn modules for the supported families, generic over the backend, loaded
//! from Hugging Face safetensors checkpoints: LLaVA (CLIP vision tower + projector + LLaMA)
//! and Qwen2.5-VL (its vision tower + the Qwen2 decoder with M-RoPE), behind one [`Vlm`].

pub mod clip;
pub mod layers;
pub mod llama;
pub mod llava;
pub mod qwen_vision;
pub mod qwen_vl;
pub mod vlm;
pub mod weights;

pub use llama::{KvCache, Llama, LlamaKeys, MropePositions};
pub use llava::KeyLayout;
pub use vlm::{Embeds, ImageFeatures, PixelBatch, Vision, Vlm};
pub use weights::{
    cast, param_id, save_safetensors, Precision, RandomWeights, StoredDtype, StoredTensor,
    TensorSource, Weights,
};
