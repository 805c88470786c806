//! tita-models: burn modules for the supported families, generic over the backend, loaded
//! from Hugging Face safetensors checkpoints: LLaVA (CLIP vision tower + projector + LLaMA)
//! and Qwen2.5-VL (its vision tower + the Qwen2 decoder with M-RoPE), behind one [`Vlm`].
//! One folder per family (config next to model); [`family`] alone maps `model_type` to one.

pub mod cache;
pub mod deepseek_vl2;
pub mod dinov2;
pub mod family;
pub mod gguf;
pub mod layers;
pub mod llama;
pub mod llava;
pub mod lora;
pub mod mask;
pub mod onnx;
pub mod qwen2_5_vl;
pub mod scope;
pub mod state;
pub mod vlm;
pub mod weights;

pub use cache::{Cache, KvLayer, LayerCache, LayerCacheDyn, Room, SeqBuffer};
pub use family::{ImagePreprocessor, KeyLayout, ModelConfig, TextModel, Vision};
pub use llama::{LlamaConfig, LlamaKeys, MropePositions, Positions};
pub use llava::{ClipVisionConfig, LlavaConfig, SelectStrategy};
pub use lora::{LoraConfig, LoraLinear};
pub use qwen2_5_vl::{QwenVisionConfig, QwenVlConfig};
pub use scope::Scope;
pub use state::DecodeState;
pub use vlm::{Embeds, ImageFeatures, PixelBatch, TextLimits, Vlm};
pub use weights::{
    cast, param_id, save_safetensors, Precision, RandomWeights, StoredDtype, StoredTensor,
    TensorSource, Weights,
};
