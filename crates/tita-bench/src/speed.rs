//! Decode speed against the memory-bandwidth bound.
//!
//! At batch 1 a decode step streams every weight matrix once, so tokens/s can be at most
//! `bandwidth / bytes(weights read per token)`. The report gives measured tokens/s, that
//! bound and their ratio, all from one run (machines are noisy; compare ratios, not times).

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{backend::Backend, Distribution, Tensor};
use serde::Serialize;
use tita_core::{
    Activation, ClipVisionConfig, LlamaConfig, LlavaConfig, ModelConfig, Result, SelectStrategy,
};
use tita_decode::{Prompt, Session};
use tita_models::Vlm;

/// Model shapes to benchmark with random weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// The fixtures' tiny LLaVA shapes (seconds on any machine).
    Tiny,
    /// A ~150M-parameter LLaMA (hidden 1024, 8 layers, 16 heads / 4 KV heads).
    #[value(name = "150m")]
    #[serde(rename = "150m")]
    M150,
    /// LLaVA-1.5-7B: CLIP ViT-L/14-336 + LLaMA-7B (GPU machines).
    #[value(name = "llava-7b")]
    #[serde(rename = "llava-7b")]
    Llava7b,
}

fn llama(hidden: usize, layers: usize, heads: usize, kv: usize, inter: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 32064,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: hidden / heads,
        hidden_act: Activation::Silu,
        max_position_embeddings: 4096,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: None,
        dtype: Some("float32".into()),
    }
}

fn llava(text: LlamaConfig, vision: ClipVisionConfig) -> ModelConfig {
    ModelConfig::Llava(LlavaConfig {
        text,
        vision,
        image_token_id: 32000,
        projector_hidden_act: Activation::Gelu,
        vision_feature_layers: vec![-2],
        vision_feature_select_strategy: SelectStrategy::Default,
        multimodal_projector_bias: true,
    })
}

impl Preset {
    pub fn config(self) -> ModelConfig {
        match self {
            Preset::Tiny => llava(
                llama(32, 2, 4, 4, 96),
                ClipVisionConfig {
                    hidden_size: 32,
                    intermediate_size: 64,
                    num_hidden_layers: 2,
                    num_attention_heads: 4,
                    image_size: 56,
                    patch_size: 14,
                    ..Default::default()
                },
            ),
            Preset::M150 => ModelConfig::Llama(llama(1024, 8, 16, 4, 2816)),
            Preset::Llava7b => llava(
                llama(4096, 32, 32, 32, 11008),
                ClipVisionConfig {
                    hidden_size: 1024,
                    intermediate_size: 4096,
                    num_hidden_layers: 24,
                    num_attention_heads: 16,
                    image_size: 336,
                    patch_size: 14,
                    ..Default::default()
                },
            ),
        }
    }
}

/// Host memory bandwidth in GB/s from a large copy (bytes read + written), best of several.
pub fn host_bandwidth_gbs() -> f64 {
    let n = 64 << 20; // 64 Mi floats = 256 MiB each way
    let src = vec![1f32; n];
    let mut dst = vec![0f32; n];
    let mut best = f64::MAX;
    for _ in 0..6 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n * 4) as f64 / best / 1e9
}

/// Device memory bandwidth in GB/s from a streaming elementwise op (read + write), best of several.
pub fn device_bandwidth_gbs<B: Backend>(device: &B::Device) -> f64 {
    let n = 64 << 20;
    let x = Tensor::<B, 1>::random([n], Distribution::Default, device);
    let _ = B::sync(device);
    let mut best = f64::MAX;
    for _ in 0..6 {
        let t = Instant::now();
        let y = x.clone().mul_scalar(1.0001);
        let _ = B::sync(device);
        best = best.min(t.elapsed().as_secs_f64());
        drop(y);
    }
    2.0 * (n * 4) as f64 / best / 1e9
}

#[derive(Debug, Clone, Serialize)]
pub struct SpeedReport {
    pub preset: Preset,
    pub backend: String,
    pub parameters: usize,
    /// f32 weight bytes a decode step reads (everything but the embedding table).
    pub decode_weight_bytes: usize,
    pub bandwidth_gbs: f64,
    pub bandwidth_source: &'static str,
    /// `bandwidth / decode_weight_bytes`.
    pub bound_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// `decode_tokens_per_s / bound_tokens_per_s`.
    pub decode_vs_bound: f64,
    pub prompt_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub image_encode_ms: Option<f64>,
}

/// Bytes of f32 weights read by one batch-1 decode step of `model`'s language model.
pub fn decode_weight_bytes<B: Backend>(model: &Vlm<B>) -> usize {
    let lm = &model.language_model;
    let embed = if lm.lm_head.is_some() {
        lm.embed_tokens.val().dims().iter().product()
    } else {
        0
    };
    (lm.num_params() - embed) * 4
}

/// Builds `preset` with random weights and measures image encoding, prefill and decode.
pub fn run<B: Backend>(
    preset: Preset,
    backend: &str,
    on_gpu: bool,
    prompt_tokens: usize,
    new_tokens: usize,
    device: &B::Device,
) -> Result<SpeedReport> {
    let model = Vlm::<B>::random(preset.config(), 0, device)?;
    let (bandwidth_gbs, bandwidth_source) = if on_gpu {
        (device_bandwidth_gbs::<B>(device), "device elementwise op")
    } else {
        (host_bandwidth_gbs(), "host memcpy")
    };
    let image_encode_ms = match model.llava_config() {
        None => None,
        Some(c) => {
            let s = c.vision.image_size;
            let pixels = Tensor::<B, 4>::random(
                [1, c.vision.num_channels, s, s],
                Distribution::Default,
                device,
            );
            let _ = model.encode_images(pixels.clone())?; // warm-up
            let _ = B::sync(device);
            let t = Instant::now();
            let f = model.encode_images(pixels)?;
            let _ = f.into_data();
            Some(t.elapsed().as_secs_f64() * 1e3)
        }
    };
    let vocab = model.language_model.config.vocab_size as u32;
    let ids: Vec<u32> = (0..prompt_tokens as u32)
        .map(|i| 3 + (i * 7919) % (vocab.min(32000) - 3))
        .collect();
    let prompt = Prompt { ids, pixels: None };
    // Warm-up (kernel compilation / autotuning on GPU backends).
    {
        let (mut s, _) = Session::prefill(&model, &[&prompt], device)?;
        s.step(&[5])?;
    }
    let t = Instant::now();
    let (mut session, mut logits) = Session::prefill(&model, &[&prompt], device)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..new_tokens {
        let next = tita_core::sampling::argmax(&logits[0]);
        logits = session.step(&[next])?;
    }
    let decode_s = t.elapsed().as_secs_f64();
    let bytes = decode_weight_bytes(&model);
    let bound = bandwidth_gbs * 1e9 / bytes as f64;
    let decode = new_tokens as f64 / decode_s;
    Ok(SpeedReport {
        preset,
        backend: backend.into(),
        parameters: model.num_params(),
        decode_weight_bytes: bytes,
        bandwidth_gbs,
        bandwidth_source,
        bound_tokens_per_s: bound,
        decode_tokens_per_s: decode,
        decode_vs_bound: decode / bound,
        prompt_tokens,
        prefill_tokens_per_s: prompt_tokens as f64 / prefill_s,
        image_encode_ms,
    })
}

impl std::fmt::Display for SpeedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "preset {:?} on {} ({:.1}M parameters, {:.1} MB read per decode step)",
            self.preset,
            self.backend,
            self.parameters as f64 / 1e6,
            self.decode_weight_bytes as f64 / 1e6
        )?;
        writeln!(
            f,
            "  bandwidth        {:>10.1} GB/s ({})",
            self.bandwidth_gbs, self.bandwidth_source
        )?;
        writeln!(
            f,
            "  bound            {:>10.1} tok/s",
            self.bound_tokens_per_s
        )?;
        writeln!(
            f,
            "  decode           {:>10.1} tok/s  = {:.0}% of the bound",
            self.decode_tokens_per_s,
            100.0 * self.decode_vs_bound
        )?;
        write!(
            f,
            "  prefill          {:>10.1} tok/s  ({} prompt tokens)",
            self.prefill_tokens_per_s, self.prompt_tokens
        )?;
        if let Some(ms) = self.image_encode_ms {
            write!(f, "\n  image encoding   {ms:>10.1} ms")?;
        }
        Ok(())
    }
}
