//! `tita-train`: pair synthesis, DPO and SFT from the command line (what `cargo xtask train`
//! runs). Training uses burn's autodiff over the chosen backend.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use clap::{Args as ClapArgs, Parser, Subcommand};
use tita_core::output::{claim_dir, Reuse};
use tita_decode::backend::{dispatch, BackendKind, BackendTask};
use tita_decode::Pipeline;
use tita_models::{LoraConfig, Vlm};
use tita_train::optim::AdamWConfig;
use tita_train::report::write_training_plot;
use tita_train::speed::{dpo_speed, reward_25m, synthetic_pairs};
use tita_train::{synthesize, train, Objective, PairsConfig, RunOptions, TrainConfig, TrainPaths};

#[derive(Parser, Debug)]
#[command(about = "Make preference pairs, and train the reward VLM with DPO or SFT")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Preference pairs from a target VLM: its answer on the clean image (chosen) versus on a
    /// diffusion-noised one (rejected), appended to --out; --resume continues where it stopped.
    #[command(allow_negative_numbers = true)]
    Pairs {
        /// Target VLM directory.
        #[arg(long)]
        model: PathBuf,
        /// JSONL of {"image", "prompt"}.
        #[arg(long)]
        questions: PathBuf,
        /// Directory the image paths are relative to (default: the questions file's).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Output JSONL of {"image", "prompt", "chosen", "rejected"}.
        #[arg(long)]
        out: PathBuf,
        /// Diffusion step (of 1000) of the noise, VCD's schedule (ā_500 ≈ 0.745).
        #[arg(long, default_value_t = 500)]
        noise_step: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        #[arg(long)]
        pad: bool,
        /// Continue the pairs file --out holds (same settings).
        #[arg(long)]
        resume: bool,
        /// Replace the pairs file --out holds.
        #[arg(long)]
        overwrite: bool,
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
    },
    /// Direct Preference Optimisation of a reward VLM on {"image","prompt","chosen","rejected"}.
    #[command(allow_negative_numbers = true)]
    Dpo {
        #[command(flatten)]
        common: Common,
        /// Frozen DPO reference (default: --model itself).
        #[arg(long)]
        reference: Option<PathBuf>,
        #[arg(long, default_value_t = 0.1)]
        beta: f64,
    },
    /// Supervised fine-tuning on {"image","prompt","response"}.
    #[command(allow_negative_numbers = true)]
    Sft {
        #[command(flatten)]
        common: Common,
    },
    /// DPO throughput with the time split per phase, on a checkpoint (used as policy and
    /// reference, with synthetic pairs of its shapes) and on a random ~25M reward VLM.
    Speed {
        /// Checkpoint directories to time (the fixture reward model by default).
        #[arg(long, default_value = "fixtures/llava-reward")]
        model: Vec<PathBuf>,
        /// Skip the random ~25M-parameter reward VLM.
        #[arg(long)]
        no_random: bool,
        #[arg(long, value_parser = tita_core::args::count, default_value_t = 4)]
        batch_size: usize,
        #[arg(long, value_parser = tita_core::args::count, default_value_t = 3)]
        steps: usize,
        /// results.json goes here.
        #[arg(long, default_value = "bench-out/train-speed")]
        out: PathBuf,
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
    },
}

#[derive(ClapArgs, Debug)]
struct Common {
    /// Model to train (HF LLaVA directory).
    #[arg(long)]
    model: PathBuf,
    /// Training data (JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Directory the image paths are relative to (default: the data file's).
    #[arg(long)]
    images: Option<PathBuf>,
    /// metrics.jsonl, metrics.png, checkpoint-N/ and final/ go here.
    #[arg(long)]
    out: PathBuf,
    /// AdamW learning rate (PyTorch's default; the paper's DPO used 2e-6 on a 1.5B model).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    eps: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long)]
    max_steps: Option<usize>,
    /// Global gradient-norm clip; 0 turns clipping off.
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    freeze_vision: bool,
    #[arg(long)]
    freeze_projector: bool,
    /// Checkpoint every N steps (always after the last).
    #[arg(long)]
    save_every: Option<usize>,
    /// Keep only the newest N checkpoints (transformers' save_total_limit).
    #[arg(long)]
    save_total_limit: Option<usize>,
    /// Continue from a checkpoint directory, or from an earlier --out (its latest checkpoint).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Delete what --out holds (another run's checkpoints and metrics) before starting.
    #[arg(long)]
    overwrite: bool,
    #[arg(long)]
    pad: bool,
    /// Train LoRA adapters of this rank only (the model frozen, as PEFT does); checkpoints
    /// and final-adapter/ hold the adapter in PEFT's layout, final/ the merged model.
    #[arg(long)]
    lora_r: Option<usize>,
    /// LoRA's alpha: the delta is scaled by alpha / r (alpha / √r with --lora-rslora).
    #[arg(long, default_value_t = 8.0)]
    lora_alpha: f64,
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f64,
    /// The decoder projections adapted, by PEFT's names (q_proj, k_proj, v_proj, o_proj,
    /// gate_proj, up_proj, down_proj), comma-separated, or all-linear.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    lora_targets: Vec<String>,
    /// rsLoRA's scaling alpha / √r.
    #[arg(long)]
    lora_rslora: bool,
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
}

impl Common {
    fn config(&self, objective: Objective) -> TrainConfig {
        TrainConfig {
            objective,
            optimizer: AdamWConfig {
                lr: self.lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
            },
            warmup_steps: self.warmup_steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            epochs: self.epochs,
            max_steps: self.max_steps,
            // 0 turns clipping off; anything else (NaN and negatives too) goes to validation.
            max_grad_norm: (self.max_grad_norm != 0.0).then_some(self.max_grad_norm),
            seed: self.seed,
            freeze_vision: self.freeze_vision,
            freeze_projector: self.freeze_projector,
            save_every: self.save_every,
            pad: self.pad,
            lora: self.lora_r.map(|r| LoraConfig {
                r,
                lora_alpha: self.lora_alpha,
                lora_dropout: self.lora_dropout,
                use_rslora: self.lora_rslora,
                target_modules: self.lora_targets.clone(),
            }),
        }
    }

    fn paths(&self, reference: Option<PathBuf>) -> TrainPaths {
        TrainPaths {
            model: self.model.clone(),
            reference,
            data: self.data.clone(),
            images: self.images.clone(),
            out: self.out.clone(),
            resume: self.resume.clone(),
        }
    }
}

struct Job(Command);

impl BackendTask for Job {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device, _kind: BackendKind) -> anyhow::Result<()> {
        match self.0 {
            Command::Pairs {
                model,
                questions,
                images,
                out,
                noise_step,
                seed,
                max_new_tokens,
                pad,
                resume,
                overwrite,
                ..
            } => {
                let reuse = Reuse::from_flags(resume, overwrite)?;
                let target = Pipeline::<B>::load(&model, &device)?;
                let config = PairsConfig {
                    noise_step,
                    seed,
                    max_new_tokens,
                    pad,
                };
                let s = synthesize(
                    &target,
                    &questions,
                    images.as_deref(),
                    &out,
                    &config,
                    reuse,
                    true,
                )?;
                eprintln!(
                    "{} questions: {} done before, {} pairs written, {} dropped (identical answers) -> {}",
                    s.questions, s.resumed_after, s.written, s.dropped_identical, out.display()
                );
                Ok(())
            }
            Command::Dpo {
                common,
                reference,
                beta,
            } => fit::<B>(
                &common,
                common.config(Objective::Dpo { beta }),
                common.paths(reference),
                &device,
            ),
            Command::Sft { common } => fit::<B>(
                &common,
                common.config(Objective::Sft),
                common.paths(None),
                &device,
            ),
            Command::Speed {
                model,
                no_random,
                batch_size,
                steps,
                out,
                ..
            } => speed::<B>(&model, !no_random, batch_size, steps, &out, &device),
        }
    }
}

fn speed<B: Backend>(
    models: &[PathBuf],
    random: bool,
    batch_size: usize,
    steps: usize,
    out: &std::path::Path,
    device: &B::Device,
) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    // Prompts of 24 text tokens around the image, responses of 32 and 48 tokens.
    let (text, lengths) = (24, (32, 48));
    for dir in models {
        let policy = Vlm::<Autodiff<B>>::load(dir, device)?;
        let reference = Vlm::<B>::load(dir, device)?;
        let data = synthetic_pairs(&policy, batch_size, text, lengths, 0);
        let name = dir.display().to_string();
        reports.push(dpo_speed(
            &name, policy, reference, &data, batch_size, steps, device,
        )?);
    }
    if random {
        let policy = Vlm::<Autodiff<B>>::random(reward_25m(), 0, device)?;
        let reference = Vlm::<B>::random(reward_25m(), 1, device)?;
        let data = synthetic_pairs(&policy, batch_size, text, lengths, 0);
        let name = "random reward VLM (reward-25m)";
        reports.push(dpo_speed(
            name, policy, reference, &data, batch_size, steps, device,
        )?);
    }
    println!("| model | params | pairs/s | tokens/s | policy fwd ms | reference fwd ms | backward ms | optimizer ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &reports {
        println!(
            "| {} | {:.1}M | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.model,
            r.parameters as f64 / 1e6,
            r.pairs_per_s,
            r.tokens_per_s,
            r.policy_forward_ms,
            r.reference_forward_ms,
            r.backward_ms,
            r.optimizer_ms
        );
    }
    let json = serde_json::to_string_pretty(&reports)?;
    tita_core::jsonl::write_atomic(&out.join("results.json"), json.as_bytes())?;
    eprintln!("-> {}", out.join("results.json").display());
    Ok(())
}

fn fit<B: Backend>(
    common: &Common,
    config: TrainConfig,
    paths: TrainPaths,
    device: &B::Device,
) -> anyhow::Result<()> {
    let options = RunOptions {
        progress: true,
        stop_after: None,
        overwrite: common.overwrite,
        save_total_limit: common.save_total_limit,
    };
    let summary = train::<Autodiff<B>>(&paths, &config, &options, device)?;
    // Written under a claim of its own, so that the folder's manifest lists it as the run's.
    let _claim = claim_dir(&paths.out, Reuse::Resume)?;
    let all = tita_core::jsonl::read(&paths.out.join("metrics.jsonl"))?
        .into_iter()
        .map(|(_, m)| m)
        .collect::<Vec<_>>();
    let plot = paths.out.join("metrics.png");
    write_training_plot(&all, &plot)?;
    let last = summary
        .metrics
        .last()
        .ok_or_else(|| anyhow!("no step ran"))?;
    if let Some(adapter) = &summary.adapter {
        eprintln!("LoRA adapter (PEFT layout): {}", adapter.display());
    }
    eprintln!(
        "{} steps; last loss {:.4}; {} pair(s) left out (chosen = rejected); metrics {}, plot {}; model {}",
        summary.steps,
        last.loss,
        summary.dropped_pairs.len(),
        paths.out.join("metrics.jsonl").display(),
        plot.display(),
        summary
            .final_model
            .as_deref()
            .unwrap_or(&common.out)
            .display()
    );
    Ok(())
}

fn backend_of(c: &Command) -> Option<BackendKind> {
    match c {
        Command::Pairs { backend, .. } => *backend,
        Command::Dpo { common, .. } | Command::Sft { common } => common.backend,
        Command::Speed { backend, .. } => *backend,
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let backend = backend_of(&cli.command);
    dispatch(backend, Job(cli.command))
        .map_err(|e| anyhow!(e))
        .context("choosing the backend")?
}
