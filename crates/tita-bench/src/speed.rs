//! Decode speed against the memory-bandwidth bound.
//!
//! At batch 1 a decode step streams every weight matrix once, so tokens/s can be at most
//! `bandwidth / bytes(weights read per token)`. The report gives measured tokens/s, that
//! bound and their ratio, all from one run (machines are noisy; compare ratios, not times).

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{backend::Backend, Distribution, Tensor};
use serde::Serialize;
use tita_core::sampling::argmax;
use tita_core::{ClipVisionConfig, LlamaConfig, LlavaConfig, ModelConfig, Result};
use tita_decode::{Prompt, Session};
use tita_models::Vlm;

/// Model shapes to benchmark with random weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// The fixtures' tiny LLaVA shapes (seconds on any machine).
    Tiny,
    /// A ~150M-parameter LLaMA (hidden 1024, 8 layers, 16 heads / 4 KV heads).
    #[value(name = "150m")]
    #[serde(rename = "150m")]
    M150,
    /// A ~25M-parameter LLaMA with the same vocabulary (the reward model of the TITA benchmark).
    #[value(name = "25m")]
    #[serde(rename = "25m")]
    M25,
    /// LLaVA-1.5-7B: CLIP ViT-L/14-336 + LLaMA-7B (GPU machines).
    #[value(name = "llava-7b")]
    #[serde(rename = "llava-7b")]
    Llava7b,
}

impl Preset {
    pub fn config(self) -> ModelConfig {
        match self {
            Preset::Tiny => LlavaConfig::llava_1_5(
                LlamaConfig::sized(32, 2, 4, 4, 96),
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
            Preset::M150 => ModelConfig::Llama(LlamaConfig::sized(1024, 8, 16, 4, 2816)),
            Preset::M25 => ModelConfig::Llama(LlamaConfig::sized(320, 4, 5, 5, 864)),
            Preset::Llava7b => LlavaConfig::llava_1_5(
                LlamaConfig::sized(4096, 32, 32, 32, 11008),
                ClipVisionConfig::vit_l_14_336(),
            ),
        }
    }
}

/// Host memory bandwidth in GB/s: a streaming read of 1 GiB split over every core, best of
/// several. A decode step reads weights with all cores, so a one-thread copy would flatter
/// the ratio to this bound.
pub fn host_bandwidth_gbs() -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let words: usize = 128 << 20; // 128 Mi u64 = 1 GiB
    let data: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(threads);
    let mut best = f64::MAX;
    for _ in 0..6 {
        let t = Instant::now();
        std::thread::scope(|scope| {
            for part in data.chunks(chunk) {
                // Integer sums vectorise freely; black_box keeps the read.
                scope.spawn(move || {
                    std::hint::black_box(part.iter().fold(0u64, |a, &w| a.wrapping_add(w)))
                });
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best / 1e9
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
    /// Peak resident memory of the process so far (Linux), in MB.
    pub peak_rss_mb: Option<f64>,
}

/// The process's peak resident set size (`VmHWM` in `/proc/self/status`), in MB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `report.md` and `speed.png` (decode tokens/s against the bound per backend, and plain
/// against TITA tokens/s per batch size) for a speed run.
pub fn write_report(
    out: &std::path::Path,
    runs: &[(SpeedReport, Option<TitaSpeedReport>)],
) -> Result<()> {
    use std::fmt::Write as _;
    let mut md =
        String::from("# Speed\n\nOne run; compare the ratios, not the absolute times.\n\n");
    md.push_str("| preset | backend | params | decode tok/s | bound tok/s | decode / bound | prefill tok/s | image ms | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut bars = Vec::new();
    for (r, _) in runs {
        let _ = writeln!(
            md,
            "| {:?} | {} | {:.1}M | {:.1} | {:.1} | {:.2} | {:.1} | {} | {} |",
            r.preset,
            r.backend,
            r.parameters as f64 / 1e6,
            r.decode_tokens_per_s,
            r.bound_tokens_per_s,
            r.decode_vs_bound,
            r.prefill_tokens_per_s,
            r.image_encode_ms.map_or("-".into(), |v| format!("{v:.1}")),
            r.peak_rss_mb.map_or("-".into(), |v| format!("{v:.0}")),
        );
        bars.push((format!("{} decode", r.backend), r.decode_tokens_per_s));
        bars.push((format!("{} bound", r.backend), r.bound_tokens_per_s));
    }
    for (_, t) in runs {
        let Some(t) = t else { continue };
        let _ = writeln!(
            md,
            "\nTITA ({:?} target + {:?} reward on {}), bound 1 + R/T = {:.3}\n\n| batch | plain tok/s | TITA tok/s | slowdown | slowdown / bound |\n|---|---|---|---|---|",
            t.target, t.reward, t.backend, t.slowdown_bound
        );
        for row in &t.rows {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {:.3} | {:.3} |",
                row.batch,
                row.plain_tokens_per_s,
                row.tita_tokens_per_s,
                row.slowdown,
                row.slowdown_vs_bound
            );
            bars.push((
                format!("{} b={} plain", t.backend, row.batch),
                row.plain_tokens_per_s,
            ));
            bars.push((
                format!("{} b={} TITA", t.backend, row.batch),
                row.tita_tokens_per_s,
            ));
        }
    }
    tita_core::jsonl::write_atomic(&out.join("report.md"), md.as_bytes())?;
    tita_core::plot::bar_chart(&out.join("speed.png"), "tokens/s", "tokens/s", &bars)
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
    // Warm-up over the same lengths: GPU backends compile kernels for each new cache length.
    {
        let (mut s, _) = Session::prefill(&model, &[&prompt], device)?;
        for _ in 0..new_tokens {
            s.step(&[5])?;
        }
    }
    let t = Instant::now();
    let (mut session, mut logits) = Session::prefill(&model, &[&prompt], device)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..new_tokens {
        let next = argmax(&logits[0]);
        logits = session.step(&[next])?;
    }
    let decode_s = t.elapsed().as_secs_f64();
    let peak_rss_mb = peak_rss_mb();
    // After the peak memory reading: the host measurement streams a buffer of its own.
    let (bandwidth_gbs, bandwidth_source) = if on_gpu {
        (device_bandwidth_gbs::<B>(device), "device elementwise op")
    } else {
        (host_bandwidth_gbs(), "host streaming read, all cores")
    };
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
        peak_rss_mb,
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
        if let Some(mb) = self.peak_rss_mb {
            write!(f, "\n  peak RSS         {mb:>10.0} MB")?;
        }
        Ok(())
    }
}

/// TITA's decode cost against plain decoding of the target alone, at several batch sizes.
#[derive(Debug, Clone, Serialize)]
pub struct TitaSpeedReport {
    pub target: Preset,
    pub reward: Preset,
    pub backend: String,
    pub target_bytes: usize,
    pub reward_bytes: usize,
    /// `1 + bytes(reward) / bytes(target)`: the slowdown if both steps are bandwidth-bound.
    pub slowdown_bound: f64,
    pub rows: Vec<TitaSpeedRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TitaSpeedRow {
    pub batch: usize,
    /// Generated tokens per second over the whole batch.
    pub plain_tokens_per_s: f64,
    pub tita_tokens_per_s: f64,
    /// `plain / tita`.
    pub slowdown: f64,
    /// `slowdown / slowdown_bound` (1.0 = at the bound; the CPU target is <= 1.05).
    pub slowdown_vs_bound: f64,
}

fn prompts(n: usize, len: usize, vocab: u32) -> Vec<Prompt> {
    (0..n)
        .map(|r| Prompt {
            ids: (0..len as u32)
                .map(|i| 3 + (i * 7919 + r as u32 * 104_729) % (vocab - 3))
                .collect(),
            pixels: None,
        })
        .collect()
}

/// Tokens/s of `steps` decode steps over `models` (one session each), fusing their logits per
/// row as TITA does when there are two.
fn decode_rate<B: Backend>(
    models: &[&Vlm<B>],
    prompts: &[Prompt],
    steps: usize,
    device: &B::Device,
) -> Result<f64> {
    let refs: Vec<&Prompt> = prompts.iter().collect();
    let mut sessions = Vec::new();
    let mut logits = Vec::new();
    for m in models {
        let (s, l) = Session::prefill(m, &refs, device)?;
        sessions.push(s);
        logits.push(l);
    }
    let fusion = tita_core::fusion::Fusion::Interpolate { lambda: 0.3 };
    let t = Instant::now();
    for _ in 0..steps {
        let next: Vec<u32> = (0..refs.len())
            .map(|r| match logits.as_slice() {
                [t] => argmax(&t[r]),
                [t, g, ..] => argmax(&tita_core::fusion::fuse(fusion, &t[r], &g[r], None, None)),
                [] => 0,
            })
            .collect();
        logits = sessions
            .iter_mut()
            .map(|s| s.step(&next))
            .collect::<Result<_>>()?;
    }
    Ok((steps * refs.len()) as f64 / t.elapsed().as_secs_f64())
}

/// Plain versus TITA decoding of random `target` and `reward` models at each batch size.
pub fn run_tita<B: Backend>(
    target: Preset,
    reward: Preset,
    backend: &str,
    batches: &[usize],
    prompt_tokens: usize,
    new_tokens: usize,
    device: &B::Device,
) -> Result<TitaSpeedReport> {
    let t = Vlm::<B>::random(target.config(), 0, device)?;
    let r = Vlm::<B>::random(reward.config(), 1, device)?;
    let vocab = t
        .language_model
        .config
        .vocab_size
        .min(r.language_model.config.vocab_size)
        .min(32000) as u32;
    // Warm-up over the same lengths (GPU backends compile kernels per cache length).
    for &batch in batches {
        decode_rate(
            &[&t, &r],
            &prompts(batch, prompt_tokens, vocab),
            new_tokens,
            device,
        )?;
    }
    let (tb, rb) = (decode_weight_bytes(&t), decode_weight_bytes(&r));
    let bound = 1.0 + rb as f64 / tb as f64;
    let mut rows = Vec::new();
    for &batch in batches {
        let ps = prompts(batch, prompt_tokens, vocab);
        let plain = decode_rate(&[&t], &ps, new_tokens, device)?;
        let tita = decode_rate(&[&t, &r], &ps, new_tokens, device)?;
        let slowdown = plain / tita;
        rows.push(TitaSpeedRow {
            batch,
            plain_tokens_per_s: plain,
            tita_tokens_per_s: tita,
            slowdown,
            slowdown_vs_bound: slowdown / bound,
        });
    }
    Ok(TitaSpeedReport {
        target,
        reward,
        backend: backend.into(),
        target_bytes: tb,
        reward_bytes: rb,
        slowdown_bound: bound,
        rows,
    })
}

impl std::fmt::Display for TitaSpeedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "TITA {:?} target + {:?} reward on {} ({:.1} + {:.1} MB per step): slowdown bound 1 + R/T = {:.3}",
            self.target, self.reward, self.backend, self.target_bytes as f64 / 1e6, self.reward_bytes as f64 / 1e6, self.slowdown_bound
        )?;
        write!(
            f,
            "  {:>5}  {:>12}  {:>12}  {:>9}  {:>9}",
            "batch", "plain tok/s", "TITA tok/s", "slowdown", "vs bound"
        )?;
        for r in &self.rows {
            write!(
                f,
                "\n  {:>5}  {:>12.1}  {:>12.1}  {:>9.3}  {:>9.3}",
                r.batch, r.plain_tokens_per_s, r.tita_tokens_per_s, r.slowdown, r.slowdown_vs_bound
            )?;
        }
        Ok(())
    }
}
