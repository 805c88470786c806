//! `tita-generate`: generation from the command line (what `cargo xtask generate` runs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context};
use burn::tensor::backend::Backend;
use clap::Parser;
use tita_decode::backend::{dispatch, BackendKind, BackendTask};
use tita_decode::{
    Fusion, GenerationConfig, Generator, Pipeline, Request, SamplingConfig, Tita, TitaConfig,
    TokenExplanation,
};

#[derive(Parser, Debug)]
#[command(about = "Generate with a LLaVA (or LLaMA) checkpoint in Hugging Face layout")]
struct Args {
    /// Checkpoint directory (config.json, safetensors, tokenizer.json, preprocessor_config.json).
    #[arg(long)]
    model: PathBuf,
    /// Image file; the prompt is then wrapped in LLaVA-1.5's chat template.
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop once the text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Pad the image to a square of the mean colour first (LLaVA-1.5's evaluation setting).
    #[arg(long)]
    pad: bool,
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Reward VLM directory: turns on TITA (interpolate mode unless --mode says otherwise).
    #[arg(long)]
    reward: Option<PathBuf>,
    /// Weight of the reward model in interpolate mode, in [0, 1].
    #[arg(long, default_value_t = 0.3)]
    lambda: f32,
    /// The reward model's DPO reference: reference mode.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Weight of the implicit reward (reference mode) or of the contrast (contrastive mode).
    #[arg(long, default_value_t = 1.0)]
    alpha: f32,
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Diffusion step (of 1000) of the noised image in contrastive mode.
    #[arg(long, default_value_t = 500)]
    noise_step: usize,
    /// Plausibility cut: keep tokens with p_T >= tau * max p_T (interpolate / reference).
    #[arg(long)]
    tau: Option<f32>,
    /// VCD's plausibility cut in contrastive mode.
    #[arg(long, default_value_t = 0.1)]
    vcd_beta: f32,
    /// Print, per token, each model's favourite, the fused winner and the implicit reward.
    #[arg(long)]
    explain: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Interpolate,
    Reference,
    Contrastive,
}

impl Args {
    /// The fusion the flags ask for, or None for plain decoding.
    fn fusion(&self) -> Option<Fusion> {
        let mode = self.mode.or(if self.reference.is_some() {
            Some(Mode::Reference)
        } else if self.reward.is_some() {
            Some(Mode::Interpolate)
        } else {
            None
        })?;
        Some(match mode {
            Mode::Interpolate => Fusion::Interpolate {
                lambda: self.lambda,
            },
            Mode::Reference => Fusion::Reference { alpha: self.alpha },
            Mode::Contrastive => Fusion::Contrastive { alpha: self.alpha },
        })
    }
}

fn print_explanation(rows: &[TokenExplanation]) {
    eprintln!(
        "{:>4}  {:<16} {:<16} {:<16} {:<16} {:>9}",
        "step", "chosen", "target top", "reward top", "fused top", "log pR/pT"
    );
    for (i, e) in rows.iter().enumerate() {
        eprintln!(
            "{:>4}  {:<16} {:<16} {:<16} {:<16} {:>+9.3}",
            i,
            format!("{:?}", e.token.text),
            format!("{:?}", e.target_top.text),
            format!("{:?}", e.reward_top.text),
            format!("{:?}", e.fused_top.text),
            e.implicit_reward
        );
    }
}

struct Run(Args);

impl BackendTask for Run {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device, kind: BackendKind) -> anyhow::Result<()> {
        let a = self.0;
        let t0 = Instant::now();
        let pipeline = Pipeline::<B>::load(&a.model, &device)
            .with_context(|| format!("loading {}", a.model.display()))?;
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let config = GenerationConfig {
            max_new_tokens: a.max_new_tokens,
            sampling: SamplingConfig {
                temperature: a.temperature,
                top_k: a.top_k,
                top_p: a.top_p,
                seed: a.seed,
            },
            stop_strings: a.stop.clone(),
            eos_token_ids: None,
        };
        let json = a.json;
        let mut stream = |ev: tita_decode::TokenEvent| {
            use std::io::Write;
            if !json {
                print!("{}", ev.text_delta);
                let _ = std::io::stdout().flush();
            }
        };
        let (out, explain) = match a.fusion() {
            None => {
                let prompt = pipeline.prompt(&a.prompt, a.image.as_deref(), a.pad)?;
                (
                    Generator::new(&pipeline, config).generate_streaming(&prompt, &mut stream)?,
                    Vec::new(),
                )
            }
            Some(fusion) => {
                let load = |dir: &Option<PathBuf>| -> anyhow::Result<Option<Pipeline<B>>> {
                    dir.as_ref()
                        .map(|d| {
                            Pipeline::<B>::load(d, &device)
                                .with_context(|| format!("loading {}", d.display()))
                        })
                        .transpose()
                };
                let (reward, reference) = (load(&a.reward)?, load(&a.reference)?);
                let tita_config = TitaConfig {
                    fusion,
                    tau: a.tau,
                    vcd_beta: a.vcd_beta,
                    noise_step: a.noise_step,
                    noise_seed: a.seed,
                    explain: a.explain,
                };
                let tita = Tita::new(
                    &pipeline,
                    reward.as_ref(),
                    reference.as_ref(),
                    tita_config,
                    config,
                )?;
                let request = Request {
                    prompt: a.prompt.clone(),
                    image: a.image.clone(),
                    pad: a.pad,
                };
                let out = tita.generate_streaming(&request, &mut stream)?;
                (out.generation, out.explain)
            }
        };
        if !json {
            println!();
        }
        if a.explain && !json {
            print_explanation(&explain);
        }
        if a.json {
            let mut v = serde_json::to_value(&out)?;
            if a.explain {
                v["explain"] = serde_json::to_value(&explain)?;
            }
            if let Some(f) = a.fusion() {
                v["fusion"] = format!("{f:?}").into();
            }
            v["timings"]["load_ms"] = load_ms.into();
            v["backend"] = serde_json::to_value(kind)?;
            v["model"] = a.model.display().to_string().into();
            println!("{}", serde_json::to_string(&v)?);
        } else {
            let t = &out.timings;
            eprintln!(
                "[{} prompt tokens, {} generated ({:?}); load {:.0} ms, prefill {:.1} ms ({:.1} tok/s), decode {:.1} ms ({:.1} tok/s), backend {}]",
                out.prompt_tokens, out.generated_tokens, out.finish_reason, load_ms, t.prefill_ms,
                t.prefill_tokens_per_s, t.decode_ms, t.decode_tokens_per_s, kind.feature()
            );
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let backend = args.backend;
    dispatch(backend, Run(args)).map_err(|e| anyhow!(e))?
}
