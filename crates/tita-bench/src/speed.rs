//! Decode speed against the memory-bandwidth bound, and the cost of one POPE-shaped query.
//!
//! At batch 1 a decode step streams every weight matrix once, so tokens/s can be at most
//! `bandwidth / bytes(weights read per token)`. The report gives measured tokens/s, that
//! bound and their ratio, all from one run (machines are noisy; compare ratios, not times),
//! and how many cores each phase kept busy (process CPU time / wall time).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{backend::Backend, DType, Distribution, Tensor};
use serde::Serialize;
use tita_core::image::PixelValues;
use tita_core::sampling::SamplingConfig;
use tita_core::Result;
use tita_decode::guidance::Step;
use tita_decode::select::choose_ids;
use tita_decode::Fusion;
use tita_decode::{Prompt, Session};
use tita_models::{ClipVisionConfig, LlamaConfig, LlavaConfig, ModelConfig, QwenVlConfig};
use tita_models::{Precision, StoredDtype, Vlm};

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
    /// `150m` behind a small CLIP at LLaVA-1.5's 336-px / 14-px geometry (576 image tokens):
    /// POPE-shaped queries on a CPU.
    #[value(name = "llava-150m")]
    #[serde(rename = "llava-150m")]
    Llava150m,
    /// `25m` behind the same small CLIP (the reward of `llava-150m`).
    #[value(name = "llava-25m")]
    #[serde(rename = "llava-25m")]
    Llava25m,
    /// LLaVA-1.5-7B: CLIP ViT-L/14-336 + LLaMA-7B (GPU machines).
    #[value(name = "llava-7b")]
    #[serde(rename = "llava-7b")]
    Llava7b,
    /// Qwen2.5-VL-7B-Instruct's shapes (vocabulary 152064, untied output).
    #[value(name = "qwen2.5-vl-7b")]
    #[serde(rename = "qwen2.5-vl-7b")]
    QwenVl7b,
    /// Qwen2.5-VL-3B-Instruct's shapes (vocabulary 151936, tied output): the 7B's reward.
    #[value(name = "qwen2.5-vl-3b")]
    #[serde(rename = "qwen2.5-vl-3b")]
    QwenVl3b,
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
            Preset::Llava150m | Preset::Llava25m => {
                let ModelConfig::Llama(text) = (if self == Preset::Llava150m {
                    Preset::M150
                } else {
                    Preset::M25
                })
                .config() else {
                    unreachable!("text presets are LLaMA")
                };
                LlavaConfig::llava_1_5(
                    text,
                    ClipVisionConfig {
                        hidden_size: 256,
                        intermediate_size: 1024,
                        num_hidden_layers: 4,
                        num_attention_heads: 4,
                        image_size: 336,
                        patch_size: 14,
                        ..Default::default()
                    },
                )
            }
            Preset::Llava7b => LlavaConfig::llava_1_5(
                LlamaConfig::sized(4096, 32, 32, 32, 11008),
                ClipVisionConfig::vit_l_14_336(),
            ),
            Preset::QwenVl7b => QwenVlConfig::qwen2_5_vl((3584, 28, 28, 4, 18944), 152_064, false),
            Preset::QwenVl3b => QwenVlConfig::qwen2_5_vl((2048, 36, 16, 2, 11008), 151_936, true),
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

/// A model to benchmark: random weights at a preset's shapes, or a checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSpec {
    Preset(Preset),
    Dir(PathBuf),
}

impl ModelSpec {
    /// Loads the model in `precision` (`auto` is f32 for random weights); `seed` picks the
    /// random weights.
    pub fn load<B: Backend>(
        &self,
        precision: Precision,
        seed: u64,
        device: &B::Device,
    ) -> Result<Vlm<B>> {
        match self {
            ModelSpec::Preset(p) => Vlm::random_in(
                p.config(),
                seed,
                precision.resolve(StoredDtype::F32),
                device,
            ),
            ModelSpec::Dir(dir) => Vlm::load_in(dir, precision, device),
        }
    }
}

impl std::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSpec::Preset(p) => write!(f, "{}", p.name()),
            ModelSpec::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

impl Preset {
    /// The name the command line and results.json use.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// Process CPU time (user + system) in seconds, from `/proc/self/stat` (Linux; 0 elsewhere).
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // Clock ticks are 100 per second on every Linux configuration in use.
    f.iter().sum::<f64>() / 100.0
}

/// Wall seconds and cores kept busy (CPU seconds / wall seconds) of `work`.
fn timed<T>(work: impl FnOnce() -> Result<T>) -> Result<(T, f64, f64)> {
    let (c, t) = (cpu_seconds(), Instant::now());
    let out = work()?;
    let wall = t.elapsed().as_secs_f64();
    Ok((out, wall, (cpu_seconds() - c) / wall))
}

#[derive(Debug, Clone, Serialize)]
pub struct SpeedReport {
    pub model: String,
    pub backend: String,
    pub dtype: String,
    pub parameters: usize,
    /// Weight bytes a decode step reads (everything but an untied embedding table).
    pub decode_weight_bytes: usize,
    pub bandwidth_gbs: f64,
    pub bandwidth_source: &'static str,
    /// `bandwidth / decode_weight_bytes`.
    pub bound_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// `decode_tokens_per_s / bound_tokens_per_s`.
    pub decode_vs_bound: f64,
    /// Process CPU time / wall time while decoding (1.0 = one core busy).
    pub decode_cores: f64,
    pub prompt_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub prefill_cores: f64,
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

/// Everything one speed run measured on one backend.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedRun {
    pub decode: SpeedReport,
    pub tita: Option<TitaSpeedReport>,
    pub pope: Option<PopeSpeedReport>,
}

/// `report.md` and `speed.png` (decode tokens/s against the bound per backend, plain against
/// TITA tokens/s per batch size) for a speed run.
pub fn write_report(out: &std::path::Path, runs: &[SpeedRun]) -> Result<()> {
    use std::fmt::Write as _;
    let mut md =
        String::from("# Speed\n\nOne run; compare the ratios, not the absolute times. Cores = process CPU time / wall time.\n\n");
    md.push_str("| model | backend | dtype | params | decode tok/s | bound tok/s | decode / bound | decode cores | prefill tok/s | prefill cores | image ms | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut bars = Vec::new();
    for SpeedRun { decode: r, .. } in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1}M | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} | {:.2} | {} | {} |",
            r.model,
            r.backend,
            r.dtype,
            r.parameters as f64 / 1e6,
            r.decode_tokens_per_s,
            r.bound_tokens_per_s,
            r.decode_vs_bound,
            r.decode_cores,
            r.prefill_tokens_per_s,
            r.prefill_cores,
            r.image_encode_ms.map_or("-".into(), |v| format!("{v:.1}")),
            r.peak_rss_mb.map_or("-".into(), |v| format!("{v:.0}")),
        );
        bars.push((format!("{} decode", r.backend), r.decode_tokens_per_s));
        bars.push((format!("{} bound", r.backend), r.bound_tokens_per_s));
    }
    for run in runs {
        if let Some(t) = &run.tita {
            let _ = writeln!(
                md,
                "\nTITA ({} target + {} reward on {}), bound 1 + R/T = {:.3}\n\n| batch | plain tok/s | TITA tok/s | slowdown | slowdown / bound |\n|---|---|---|---|---|",
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
        if let Some(p) = &run.pope {
            let _ = writeln!(md, "\n{p}");
        }
    }
    tita_core::jsonl::write_atomic(&out.join("report.md"), md.as_bytes())?;
    tita_core::plot::bar_chart(&out.join("speed.png"), "tokens/s", "tokens/s", &bars)
}

/// Bytes of weights read by one batch-1 decode step of `model`'s language model (an untied
/// embedding table is gathered from, not streamed).
pub fn decode_weight_bytes<B: Backend>(model: &Vlm<B>) -> usize {
    model.decode_weight_bytes()
}

fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_lowercase()
}

/// Measures image encoding, prefill of a `prompt_tokens` prompt and `new_tokens` decode steps.
pub fn run<B: Backend>(
    model: &Vlm<B>,
    label: &str,
    backend: &str,
    on_gpu: bool,
    prompt_tokens: usize,
    new_tokens: usize,
    device: &B::Device,
) -> Result<SpeedReport> {
    let image_encode_ms = match bench_image(model, 0) {
        None => None,
        Some(image) => {
            let encode = || -> Result<()> {
                let f = model.encode_images(model.pixels_tensor(&[&image], device)?)?;
                let _ = f.rows.into_data();
                Ok(())
            };
            encode()?; // warm-up
            let t = Instant::now();
            encode()?;
            Some(t.elapsed().as_secs_f64() * 1e3)
        }
    };
    let prompt = prompts(1, prompt_tokens, vocab(model)).remove(0);
    // Warm-up over the same lengths: GPU backends compile and tune kernels per shape.
    {
        let (mut s, _) = Session::prefill(model, &[&prompt], device)?;
        for _ in 0..new_tokens {
            s.step(&[5])?;
        }
    }
    let ((mut session, mut logits), prefill_s, prefill_cores) = timed(|| {
        let (session, logits) = Session::prefill_on_device(model, &[&prompt], device)?;
        // The prefill is done when its logits are.
        let _ = logits.clone().into_data();
        Ok((session, logits))
    })?;
    let ((), decode_s, decode_cores) = timed(|| {
        for _ in 0..new_tokens {
            let next = choose_next(
                &Fusion::interpolate(0.3),
                std::slice::from_ref(&session),
                &[logits],
            )?;
            logits = session.step_on_device(&next)?;
        }
        Ok(())
    })?;
    let peak_rss_mb = peak_rss_mb();
    // After the peak memory reading: the host measurement streams a buffer of its own.
    let (bandwidth_gbs, bandwidth_source) = if on_gpu {
        (device_bandwidth_gbs::<B>(device), "device elementwise op")
    } else {
        (host_bandwidth_gbs(), "host streaming read, all cores")
    };
    let bytes = decode_weight_bytes(model);
    let bound = bandwidth_gbs * 1e9 / bytes as f64;
    let decode = new_tokens as f64 / decode_s;
    Ok(SpeedReport {
        model: label.into(),
        backend: backend.into(),
        dtype: dtype_name(model.dtype()),
        parameters: model.num_params(),
        decode_weight_bytes: bytes,
        bandwidth_gbs,
        bandwidth_source,
        bound_tokens_per_s: bound,
        decode_tokens_per_s: decode,
        decode_vs_bound: decode / bound,
        decode_cores,
        prompt_tokens,
        prefill_tokens_per_s: prompt_tokens as f64 / prefill_s,
        prefill_cores,
        image_encode_ms,
        peak_rss_mb,
    })
}

impl std::fmt::Display for SpeedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} on {} in {} ({:.1}M parameters, {:.1} MB read per decode step)",
            self.model,
            self.backend,
            self.dtype,
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
            "  decode           {:>10.1} tok/s  = {:.0}% of the bound, {:.2} cores busy",
            self.decode_tokens_per_s,
            100.0 * self.decode_vs_bound,
            self.decode_cores
        )?;
        write!(
            f,
            "  prefill          {:>10.1} tok/s  ({} prompt tokens), {:.2} cores busy",
            self.prefill_tokens_per_s, self.prompt_tokens, self.prefill_cores
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
    pub target: String,
    pub reward: String,
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

/// The token range both models can embed, capped at LLaMA's 32000 text tokens (above them
/// LLaVA keeps `<image>` and padding).
fn vocab<B: Backend>(model: &Vlm<B>) -> u32 {
    model.text_limits().vocab_size.min(32000) as u32
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
/// row as TITA does when there are two; tokens are chosen on the device, as a generation does.
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
        let (s, l) = Session::prefill_on_device(m, &refs, device)?;
        sessions.push(s);
        logits.push(l);
    }
    let t = Instant::now();
    for _ in 0..steps {
        let next = choose_next(&Fusion::interpolate(0.3), &sessions, &logits)?;
        logits = sessions
            .iter_mut()
            .map(|s| s.step_on_device(&next))
            .collect::<Result<_>>()?;
    }
    Ok((steps * refs.len()) as f64 / t.elapsed().as_secs_f64())
}

/// Every row's greedy token, chosen on the device: the first session's model alone, or fused
/// with the second's.
fn choose_next<B: Backend>(
    fusion: &Fusion,
    sessions: &[Session<B>],
    logits: &[Tensor<B, 2>],
) -> Result<Vec<u32>> {
    let scores = match logits {
        [] => return Ok(Vec::new()),
        [t] => t.clone(),
        [t, guides @ ..] => fusion.fuse_device(Step { t: 1 }, t.clone(), guides),
    };
    let rows = scores.dims()[0];
    let checked: Vec<_> = sessions.iter().map(Session::model).zip(logits).collect();
    choose_ids(
        scores,
        &checked,
        &SamplingConfig::greedy(),
        &vec![0.0; rows],
    )
}

/// Plain versus TITA decoding of `target` and `reward` at each batch size.
#[allow(clippy::too_many_arguments)]
pub fn run_tita<B: Backend>(
    (t, target): (&Vlm<B>, &str),
    (r, reward): (&Vlm<B>, &str),
    backend: &str,
    batches: &[usize],
    prompt_tokens: usize,
    new_tokens: usize,
    device: &B::Device,
) -> Result<TitaSpeedReport> {
    let vocab = vocab(t).min(vocab(r));
    // Warm-up over the same lengths (GPU backends compile kernels per shape).
    for &batch in batches {
        decode_rate(
            &[t, r],
            &prompts(batch, prompt_tokens, vocab),
            new_tokens,
            device,
        )?;
    }
    let (tb, rb) = (decode_weight_bytes(t), decode_weight_bytes(r));
    let bound = 1.0 + rb as f64 / tb as f64;
    let mut rows = Vec::new();
    for &batch in batches {
        let ps = prompts(batch, prompt_tokens, vocab);
        let plain = decode_rate(&[t], &ps, new_tokens, device)?;
        let tita = decode_rate(&[t, r], &ps, new_tokens, device)?;
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
        target: target.into(),
        reward: reward.into(),
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
            "TITA {} target + {} reward on {} ({:.1} + {:.1} MB per step): slowdown bound 1 + R/T = {:.3}",
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

/// Seconds per POPE-shaped query (a LLaVA prompt around one image, a short answer) for greedy
/// decoding, TITA and VCD: what evaluating a benchmark costs per question.
#[derive(Debug, Clone, Serialize)]
pub struct PopeSpeedReport {
    pub target: String,
    pub reward: Option<String>,
    pub backend: String,
    /// Prompt length with the image tokens.
    pub prompt_tokens: usize,
    pub image_tokens: usize,
    /// Tokens generated per answer (prefill gives the first).
    pub answer_tokens: usize,
    /// Medians over the measured queries.
    pub greedy_s: f64,
    pub tita_s: Option<f64>,
    pub vcd_s: f64,
    /// `tita_s / greedy_s`.
    pub tita_vs_greedy: Option<f64>,
    /// `1 + bytes(reward) / bytes(target)`.
    pub tita_bound: Option<f64>,
    pub vcd_vs_greedy: f64,
    pub queries: usize,
}

/// A preprocessed-looking image of the size a model takes: LLaVA's square, or for Qwen2-VL a
/// COCO photo (640x480) after `smart_resize` (644x476: 391 image tokens). None: text-only.
fn bench_image<B: Backend>(model: &Vlm<B>, seed: u32) -> Option<PixelValues> {
    let (height, width) = match &model.config {
        ModelConfig::Llava(c) => (c.vision.image_size, c.vision.image_size),
        ModelConfig::QwenVl(_) => (476, 644),
        ModelConfig::DeepseekVl2(c) => (2 * c.vision.image_size, c.vision.image_size),
        ModelConfig::Llama(_) => return None,
    };
    let data = (0..3 * height * width)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                / (1u32 << 24) as f32
                * 4.0
                - 2.0
        })
        .collect();
    Some(PixelValues {
        data,
        height,
        width,
    })
}

/// A question prompt: a few tokens, the image's placeholder tokens, then `text` question
/// tokens.
fn pope_prompt<B: Backend>(model: &Vlm<B>, text: usize, seed: u32) -> Result<Prompt> {
    let (Some(image_id), Some(pixels)) = (model.image_token_id(), bench_image(model, seed)) else {
        return Err(tita_core::Error::argument(
            "workload",
            format!(
                "pope needs a vision-language target; {} is text-only",
                model.name
            ),
        ));
    };
    let v = vocab(model);
    let word = |i: u32| 3 + (i * 7919 + seed * 104_729) % (v - 3);
    let mut ids: Vec<u32> = [1].into_iter().chain((0..4).map(word)).collect();
    ids.extend(std::iter::repeat_n(
        image_id,
        model.image_tokens_for(&pixels)?,
    ));
    ids.extend((4..4 + text as u32).map(word));
    Ok(Prompt {
        ids,
        pixels: Some(pixels),
    })
}

/// One query: prefill each (model, prompt) pair, then `answer_tokens - 1` steps of the fused
/// greedy choice.
fn query<B: Backend>(
    runs: &[(&Vlm<B>, &Prompt)],
    fusion: &Fusion,
    answer_tokens: usize,
    device: &B::Device,
) -> Result<f64> {
    let t = Instant::now();
    let mut sessions = Vec::new();
    let mut logits = Vec::new();
    for (m, p) in runs {
        let (s, l) = Session::prefill_on_device(m, &[*p], device)?;
        sessions.push(s);
        logits.push(l);
    }
    for _ in 1..answer_tokens {
        let next = choose_next(fusion, &sessions, &logits)?;
        logits = sessions
            .iter_mut()
            .map(|s| s.step_on_device(&next))
            .collect::<Result<_>>()?;
    }
    Ok(t.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times POPE-shaped queries (`queries` of each method after one warm-up) for greedy, TITA
/// (with `reward`) and VCD (the target on the image and on a noised copy).
pub fn run_pope<B: Backend>(
    (target, tname): (&Vlm<B>, &str),
    reward: Option<(&Vlm<B>, &str)>,
    backend: &str,
    answer_tokens: usize,
    queries: usize,
    device: &B::Device,
) -> Result<PopeSpeedReport> {
    const QUESTION_TOKENS: usize = 36; // "\nIs there a … in the image? Answer … ASSISTANT:"
    let answer_tokens = answer_tokens.max(1);
    let mut greedy = Vec::new();
    let mut tita = Vec::new();
    let mut vcd = Vec::new();
    let (tita_fusion, vcd_fusion) = (Fusion::interpolate(0.3), Fusion::vcd(1.0));
    for q in 0..=queries {
        let tp = pope_prompt(target, QUESTION_TOKENS, q as u32)?;
        let mut noised = tp.clone();
        if let Some(px) = noised.pixels.as_mut() {
            tita_core::noise::add_diffusion_noise(&mut px.data, 500, q as u64)?;
        }
        let g = query(&[(target, &tp)], &tita_fusion, answer_tokens, device)?;
        let t = match reward {
            Some((r, _)) => {
                let rp = pope_prompt(r, QUESTION_TOKENS, q as u32)?;
                Some(query(
                    &[(target, &tp), (r, &rp)],
                    &tita_fusion,
                    answer_tokens,
                    device,
                )?)
            }
            None => None,
        };
        let v = query(
            &[(target, &tp), (target, &noised)],
            &vcd_fusion,
            answer_tokens,
            device,
        )?;
        if q > 0 {
            greedy.push(g);
            tita.extend(t);
            vcd.push(v);
        }
    }
    let greedy_s = median(greedy);
    let tita_s = (!tita.is_empty()).then(|| median(tita));
    let vcd_s = median(vcd);
    let tp = pope_prompt(target, QUESTION_TOKENS, 0)?;
    Ok(PopeSpeedReport {
        target: tname.into(),
        reward: reward.map(|(_, n)| n.to_string()),
        backend: backend.into(),
        prompt_tokens: tp.ids.len(),
        image_tokens: tp
            .ids
            .iter()
            .filter(|&&t| Some(t) == target.image_token_id())
            .count(),
        answer_tokens,
        greedy_s,
        tita_s,
        vcd_s,
        tita_vs_greedy: tita_s.map(|t| t / greedy_s),
        tita_bound: reward.map(|(r, _)| 1.0 + r.num_params() as f64 / target.num_params() as f64),
        vcd_vs_greedy: vcd_s / greedy_s,
        queries,
    })
}

impl std::fmt::Display for PopeSpeedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "POPE-shaped queries on {}: {} prompt tokens ({} image), {} answer token(s), median of {}",
            self.backend, self.prompt_tokens, self.image_tokens, self.answer_tokens, self.queries
        )?;
        write!(
            f,
            "  greedy ({})      {:>8.3} s/query",
            self.target, self.greedy_s
        )?;
        if let (Some(t), Some(r), Some(b), Some(name)) = (
            self.tita_s,
            self.tita_vs_greedy,
            self.tita_bound,
            &self.reward,
        ) {
            write!(
                f,
                "\n  TITA (+ {name}) {t:>8.3} s/query = {r:.3}x greedy (bound 1 + params(R)/params(T) = {b:.3})"
            )?;
        }
        write!(
            f,
            "\n  VCD               {:>8.3} s/query = {:.3}x greedy",
            self.vcd_s, self.vcd_vs_greedy
        )
    }
}
