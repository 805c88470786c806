//! DPO training throughput (a benchmark, not a test): pairs/s and tokens/s of full optimiser
//! steps, split into policy forward, reference forward, backward and optimiser step. Runs on
//! a real checkpoint or on a random reward VLM of a preset's shapes with synthetic pairs.

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tita_core::image::PixelValues;
use tita_core::Result;
use tita_models::Vlm;
use tita_models::{ClipVisionConfig, LlamaConfig, LlavaConfig, ModelConfig};

use crate::data::{Dataset, Example};
use crate::optim::AdamW;
use crate::trainer::{Learner, Objective, StepMetrics, TrainConfig};

/// A ~25M-parameter reward VLM: the 25M LLaMA of the decode benchmark (hidden 320, 4 layers)
/// behind a small CLIP tower (hidden 256, 4 layers, 112 px, 64 image tokens).
pub fn reward_25m() -> ModelConfig {
    LlavaConfig::llava_1_5(
        LlamaConfig::sized(320, 4, 5, 5, 864),
        ClipVisionConfig {
            hidden_size: 256,
            intermediate_size: 1024,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            image_size: 112,
            patch_size: 14,
            ..Default::default()
        },
    )
}

/// Synthetic pairs for `model`'s shapes: random images, a prompt of `prompt_text` ids around
/// the image tokens, chosen/rejected of the given lengths (ids below 32000, EOS last).
pub fn synthetic_pairs<B: burn::tensor::backend::Backend>(
    model: &Vlm<B>,
    pairs: usize,
    prompt_text: usize,
    lengths: (usize, usize),
    seed: u64,
) -> Dataset {
    let c = model.llava_config().expect("a VLM");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s = c.vision.image_size;
    let mut words = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(3..32000)).collect() };
    let examples = (0..pairs)
        .map(|i| {
            let mut prompt = vec![1];
            prompt.extend(std::iter::repeat_n(c.image_token_id, c.image_tokens()));
            prompt.extend(words(prompt_text));
            let mut chosen = words(lengths.0 - 1);
            chosen.push(2);
            let mut rejected = words(lengths.1 - 1);
            rejected.push(2);
            Example {
                line: i + 1,
                image: i,
                prompt,
                responses: vec![chosen, rejected],
            }
        })
        .collect();
    let images = (0..pairs)
        .map(|_| PixelValues {
            data: (0..3 * s * s)
                .map(|_| rng.random_range(-1.5f32..1.5))
                .collect(),
            height: s,
            width: s,
        })
        .collect();
    Dataset {
        path: "synthetic".into(),
        examples,
        images,
        dropped: Vec::new(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSpeedReport {
    pub model: String,
    pub parameters: usize,
    pub batch_size: usize,
    pub steps: usize,
    pub pairs_per_s: f64,
    pub tokens_per_s: f64,
    /// Mean milliseconds per step.
    pub policy_forward_ms: f64,
    pub reference_forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
}

/// Times `steps` DPO steps of `batch_size` pairs after one warm-up step. The reference's
/// log-probs are computed fresh every step (no cache), as in a one-epoch run.
pub fn dpo_speed<A: AutodiffBackend>(
    name: &str,
    policy: Vlm<A>,
    reference: Vlm<A::InnerBackend>,
    data: &Dataset,
    batch_size: usize,
    steps: usize,
    device: &A::Device,
) -> Result<TrainSpeedReport> {
    let parameters = policy.num_params();
    let config = TrainConfig {
        objective: Objective::Dpo { beta: 0.1 },
        batch_size,
        ..TrainConfig::default()
    };
    let mut learner = Learner::new(policy, Some(reference), AdamW::new(config.optimizer));
    let mut runs: Vec<StepMetrics> = Vec::new();
    let n = data.len();
    for step in 0..=steps {
        let batch: Vec<usize> = (0..batch_size)
            .map(|i| (step * batch_size + i) % n)
            .collect();
        learner.forget_reference();
        let m;
        (learner, m) = learner.step(data, &batch, &config, 1e-5, step + 1, 0.0, device)?;
        if step > 0 {
            runs.push(m);
        }
    }
    let k = runs.len().max(1) as f64;
    let mean = |f: fn(&StepMetrics) -> f64| runs.iter().map(f).sum::<f64>() / k;
    let total_ms: f64 = mean(|m| m.examples as f64 / m.examples_per_s * 1e3);
    Ok(TrainSpeedReport {
        model: name.to_string(),
        parameters,
        batch_size,
        steps,
        pairs_per_s: batch_size as f64 / (total_ms / 1e3),
        tokens_per_s: mean(|m| m.tokens as f64) / (total_ms / 1e3),
        policy_forward_ms: mean(|m| m.policy_forward_ms),
        reference_forward_ms: mean(|m| m.reference_forward_ms),
        backward_ms: mean(|m| m.backward_ms),
        optimizer_ms: mean(|m| m.optimizer_ms),
    })
}
