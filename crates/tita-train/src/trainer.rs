//! The training loop shared by DPO and SFT: seeded data order, micro-batches with gradient
//! accumulation, global-norm clipping, AdamW with warmup + cosine, one metrics line per step,
//! checkpoints that hold everything a resumed run needs (model in its HF layout, optimiser
//! moments and master weights, the step), written atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tita_core::output::{claim_dir, Reuse};
use tita_core::{jsonl, Error, Result};
use tita_decode::Pipeline;
use tita_models::{LoraConfig, Vlm};

use crate::data::Dataset;
use crate::objective::{dpo_loss, response_logps, Sequence};
use tita_models::lora::ADAPTER_WEIGHTS;

use crate::optim::{clip_scale, cosine_with_warmup, global_grad_norm, AdamW, AdamWConfig};

/// What is minimised.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Objective {
    /// DPO against a frozen reference, with inverse temperature `beta`.
    Dpo { beta: f64 },
    /// Token cross-entropy of the responses.
    Sft,
}

/// Everything that decides the result of a run (saved with every checkpoint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub objective: Objective,
    pub optimizer: AdamWConfig,
    /// Linear warmup steps before the cosine decay.
    pub warmup_steps: usize,
    /// Examples per micro-batch (pairs for DPO).
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    pub epochs: usize,
    /// Stop after this many optimiser steps (overrides `epochs`).
    pub max_steps: Option<usize>,
    /// Global gradient-norm clip (None: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Seeds the data order.
    pub seed: u64,
    pub freeze_vision: bool,
    pub freeze_projector: bool,
    /// Write a checkpoint every this many steps (and always after the last).
    pub save_every: Option<usize>,
    /// Expand images to squares with the mean colour before preprocessing (LLaVA's eval).
    pub pad: bool,
    /// Train only LoRA adapters on the decoder's projections, everything else frozen (PEFT's
    /// `get_peft_model`): checkpoints hold the adapter in PEFT's layout, `final/` the merged
    /// model and `final-adapter/` the adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            objective: Objective::Dpo { beta: 0.1 },
            optimizer: AdamWConfig::default(),
            warmup_steps: 0,
            batch_size: 1,
            grad_accum: 1,
            epochs: 1,
            max_steps: None,
            max_grad_norm: Some(1.0),
            seed: 0,
            freeze_vision: false,
            freeze_projector: false,
            save_every: None,
            pad: false,
            lora: None,
        }
    }
}

/// Files of a run.
#[derive(Debug, Clone)]
pub struct TrainPaths {
    /// Model to start from (the policy; for DPO also the default reference).
    pub model: PathBuf,
    /// DPO reference (default: `model`).
    pub reference: Option<PathBuf>,
    pub data: PathBuf,
    pub images: Option<PathBuf>,
    /// Metrics, checkpoints and the final model go here.
    pub out: PathBuf,
    /// A checkpoint directory, or an earlier run's `out` (its latest checkpoint is taken).
    pub resume: Option<PathBuf>,
}

/// One line of `metrics.jsonl`: the batch's loss is computed before that step's update.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    /// Before clipping.
    pub grad_norm: f64,
    pub examples: usize,
    pub tokens: usize,
    pub examples_per_s: f64,
    pub tokens_per_s: f64,
    pub policy_forward_ms: f64,
    pub reference_forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reward_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub margin: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chosen_reward: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rejected_reward: Option<f64>,
}

/// `trainer_state.json` of a checkpoint; written last, so its presence marks a complete one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub total_steps: usize,
    pub config: TrainConfig,
    pub model: PathBuf,
    pub reference: Option<PathBuf>,
    pub data: PathBuf,
    pub examples: usize,
    /// Fingerprints of the model, reference and data the run started with (absent in
    /// checkpoints written before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Inputs>,
}

/// A run's inputs by content: a resume with another model, reference or data file is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// [`tita_core::fingerprint::model_fingerprint`] of `--model`.
    pub model: String,
    /// The same of `--reference`, if one was given.
    pub reference: Option<String>,
    /// sha256 of `--data`.
    pub data: String,
}

impl Inputs {
    pub fn of(paths: &TrainPaths) -> Result<Self> {
        use tita_core::fingerprint::{file_sha256, model_fingerprint};
        Ok(Inputs {
            model: model_fingerprint(&paths.model)?,
            reference: paths
                .reference
                .as_deref()
                .map(model_fingerprint)
                .transpose()?,
            data: file_sha256(&paths.data)?,
        })
    }

    /// What differs between these inputs (`paths`) and those a checkpoint's run had, by flag.
    fn differences(&self, paths: &TrainPaths, run: &TrainerState, had: &Inputs) -> Vec<String> {
        let mut out = Vec::new();
        if self.model != had.model {
            out.push(format!(
                "--model {} is not the model the run started from ({})",
                paths.model.display(),
                run.model.display()
            ));
        }
        match (&paths.reference, &run.reference) {
            _ if self.reference == had.reference => {}
            (Some(now), None) => out.push(format!(
                "--reference {}: the run had none (its reference was its --model)",
                now.display()
            )),
            (None, Some(then)) => out.push(format!(
                "--reference missing: the run's was {}",
                then.display()
            )),
            (now, then) => out.push(format!(
                "--reference {} is not the run's reference ({})",
                now.as_deref().unwrap_or(Path::new("")).display(),
                then.as_deref().unwrap_or(Path::new("")).display()
            )),
        }
        if self.data != had.data {
            out.push(format!(
                "--data {} is not the file the run trained on ({}; its contents differ)",
                paths.data.display(),
                run.data.display()
            ));
        }
        out
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: usize,
    pub total_steps: usize,
    /// `out/final` once every step ran (with LoRA: the base with the adapter merged in).
    pub final_model: Option<PathBuf>,
    /// `out/final-adapter` once every step of a LoRA run ran: the adapter in PEFT's layout.
    pub adapter: Option<PathBuf>,
    pub metrics: Vec<StepMetrics>,
    /// Data lines left out: pairs whose chosen and rejected answers are the same.
    pub dropped_pairs: Vec<usize>,
}

/// Options that change how a run is carried out, not what it computes.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub progress: bool,
    /// Return after this many steps as if interrupted (tests; time-boxed jobs).
    pub stop_after: Option<usize>,
    /// Delete what the output folder holds before starting (`--overwrite`).
    pub overwrite: bool,
    /// Keep only the newest N checkpoints (transformers' `save_total_limit`).
    pub save_total_limit: Option<usize>,
}

impl TrainConfig {
    /// Checks every setting against its range, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, msg: String| Err(Error::argument(name, msg));
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad("lr", format!("{} must be a finite number > 0", o.lr));
        }
        for (name, b) in [("beta1", o.beta1), ("beta2", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(name, format!("{b} is outside [0, 1)"));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return bad("eps", format!("{} must be a finite number > 0", o.eps));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return bad(
                "weight-decay",
                format!("{} must be a finite number >= 0", o.weight_decay),
            );
        }
        if let Objective::Dpo { beta } = self.objective {
            if !(beta.is_finite() && beta > 0.0) {
                return bad(
                    "beta",
                    format!("{beta} must be a finite number > 0 (DPO's inverse temperature)"),
                );
            }
        }
        if let Some(g) = self.max_grad_norm {
            if !(g.is_finite() && g > 0.0) {
                return bad("max-grad-norm", format!("{g} must be a finite number > 0"));
            }
        }
        for (name, v) in [
            ("batch-size", Some(self.batch_size)),
            ("grad-accum", Some(self.grad_accum)),
            ("epochs", Some(self.epochs)),
            ("max-steps", self.max_steps),
            ("save-every", self.save_every),
        ] {
            if v == Some(0) {
                return bad(name, "0 is outside [1, ∞)".into());
            }
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        Ok(())
    }
}

fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// Whether `dir` is `out` or inside it (paths compared after resolving them).
fn same_or_inside(dir: &Path, out: &Path) -> bool {
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    resolve(dir).starts_with(resolve(out))
}

/// The complete `checkpoint-N` folders in `dir`, oldest first.
fn checkpoints(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(step) = step {
            if path.join("trainer_state.json").is_file() {
                found.push((step, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The complete checkpoint `dir` names: itself, or the latest `checkpoint-N` inside it.
pub fn find_checkpoint(dir: &Path) -> Result<PathBuf> {
    if dir.join("trainer_state.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    checkpoints(dir)?
        .pop()
        .map(|b| b.1)
        .ok_or_else(|| no_checkpoint(dir))
}

fn no_checkpoint(dir: &Path) -> Error {
    Error::checkpoint(
        dir,
        "no complete checkpoint here (a `trainer_state.json`, or `checkpoint-N/` directories holding one): the run stopped before its first save; start it again with --overwrite instead of --resume",
    )
}

/// The checkpoint to resume from in `dir` (itself, or its newest `checkpoint-N` whose files are
/// complete: an unreadable newest one is passed over for the one before, with a warning), after
/// checking that it belongs to a run of these settings and inputs.
fn resume_point(
    dir: &Path,
    paths: &TrainPaths,
    config: &TrainConfig,
    inputs: &Inputs,
) -> Result<(PathBuf, TrainerState)> {
    let candidates: Vec<PathBuf> = if dir.join("trainer_state.json").is_file() {
        vec![dir.to_path_buf()]
    } else {
        checkpoints(dir)?.into_iter().rev().map(|c| c.1).collect()
    };
    let mut last_error = None;
    for ckpt in &candidates {
        if let Some(e) = last_error.take() {
            eprintln!("warning: {e}; resuming from {} instead", ckpt.display());
        }
        match read_checkpoint(ckpt) {
            Ok(state) => {
                check_resume(ckpt, &state, paths, config, inputs)?;
                return Ok((ckpt.clone(), state));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| no_checkpoint(dir)))
}

/// A checkpoint's state, once its files are whole (not truncated, optimiser state present).
fn read_checkpoint(ckpt: &Path) -> Result<TrainerState> {
    let state: TrainerState = tita_core::error::read_json_as(&ckpt.join("trainer_state.json"))?;
    let optimizer = ckpt.join("optimizer.safetensors");
    if !optimizer.is_file() {
        return Err(Error::checkpoint(
            ckpt,
            "has no `optimizer.safetensors` (the optimiser's moments a resumed run needs)",
        ));
    }
    match state.config.lora {
        Some(_) => tita_models::weights::Weights::open(&ckpt.join(ADAPTER_WEIGHTS))?,
        None => tita_models::weights::Weights::open(ckpt)?,
    };
    tita_models::weights::Weights::open(&optimizer)?;
    Ok(state)
}

/// Refuses a resume whose settings, inputs or step do not continue the checkpoint's run.
fn check_resume(
    ckpt: &Path,
    state: &TrainerState,
    paths: &TrainPaths,
    config: &TrainConfig,
    inputs: &Inputs,
) -> Result<()> {
    if state.config != *config {
        let (run, now) = (
            serde_json::to_value(&state.config).expect("plain data"),
            serde_json::to_value(config).expect("plain data"),
        );
        return Err(Error::argument(
            "resume",
            format!(
                "{} was trained with other settings: {}; resume with the run's",
                ckpt.display(),
                differing_fields(&run, &now, "").join(", ")
            ),
        ));
    }
    match &state.inputs {
        Some(had) => {
            let differences = inputs.differences(paths, state, had);
            if !differences.is_empty() {
                return Err(Error::argument(
                    "resume",
                    format!(
                        "{} belongs to a run of other inputs: {}",
                        ckpt.display(),
                        differences.join("; ")
                    ),
                ));
            }
        }
        None => eprintln!(
            "warning: {} records no fingerprints of its model, reference and data (an older checkpoint): they are not checked",
            ckpt.display()
        ),
    }
    let named = ckpt
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("checkpoint-"))
        .and_then(|n| n.parse::<usize>().ok());
    if state.step == 0 || state.step > state.total_steps || named.is_some_and(|n| n != state.step) {
        return Err(Error::checkpoint(
            ckpt.join("trainer_state.json"),
            format!(
                "says step {} of {}, which is not this checkpoint's (the file was edited or mixed up)",
                state.step, state.total_steps
            ),
        ));
    }
    Ok(())
}

/// `field: run value → given value` for each leaf where two JSON values differ.
fn differing_fields(run: &serde_json::Value, now: &serde_json::Value, prefix: &str) -> Vec<String> {
    use serde_json::Value;
    match (run, now) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    differing_fields(
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                        &path,
                    )
                })
                .collect()
        }
        (a, b) if a == b => Vec::new(),
        (a, b) => vec![format!("{prefix} {a} (run) vs {b} (now)")],
    }
}

/// Runs DPO or SFT as `config` says; see the module docs.
pub fn train<A: AutodiffBackend>(
    paths: &TrainPaths,
    config: &TrainConfig,
    options: &RunOptions,
    device: &A::Device,
) -> Result<TrainSummary> {
    config.validate()?;
    if options.save_total_limit == Some(0) {
        return Err(Error::argument(
            "save-total-limit",
            "0 is outside [1, ∞): keep at least the newest checkpoint",
        ));
    }
    // Resuming continues the run in `out` (or starts a new one there from a checkpoint
    // elsewhere); otherwise `out` must be new or empty, or cleared by --overwrite.
    let reuse = match (&paths.resume, options.overwrite) {
        (Some(_), true) => Reuse::from_flags(true, true)?,
        (Some(dir), false) if same_or_inside(dir, &paths.out) => Reuse::Resume,
        (_, overwrite) => Reuse::from_flags(false, overwrite)?,
    };
    let _claim = claim_dir(&paths.out, reuse)?;
    let inputs = Inputs::of(paths)?;
    let resume = match &paths.resume {
        Some(dir) => Some(resume_point(dir, paths, config, &inputs)?),
        None => None,
    };
    // A LoRA run's checkpoints hold the adapter only: it starts from the base every time.
    let start_dir = match &resume {
        Some((ckpt, _)) if config.lora.is_none() => ckpt.clone(),
        _ => paths.model.clone(),
    };
    let pipeline = Pipeline::<A>::load(&start_dir, device)?;
    let data = match config.objective {
        Objective::Dpo { .. } => {
            Dataset::preference(&paths.data, paths.images.as_deref(), &pipeline, config.pad)?
        }
        Objective::Sft => {
            Dataset::sft(&paths.data, paths.images.as_deref(), &pipeline, config.pad)?
        }
    };
    if !data.dropped.is_empty() {
        eprintln!(
            "warning: {} pair(s) of {} have the same chosen and rejected answer and are left out (lines {:?})",
            data.dropped.len(),
            paths.data.display(),
            data.dropped
        );
    }
    let mut policy = freeze(pipeline.model, config);
    if let Some(lora) = &config.lora {
        match &resume {
            Some((ckpt, _)) => {
                policy.load_adapter(ckpt, device)?;
            }
            None => policy.attach_lora(lora, config.seed, device)?,
        }
    }
    let reference = match (config.objective, &paths.reference, &config.lora) {
        (Objective::Sft, _, _) => None,
        (Objective::Dpo { .. }, Some(dir), _) => Some(Vlm::<A::InnerBackend>::load(dir, device)?),
        // The frozen base under the adapter is the reference: no second copy of the model.
        (Objective::Dpo { .. }, None, Some(_)) => Some(policy.valid().without_lora()),
        (Objective::Dpo { .. }, None, None) => {
            Some(Vlm::<A::InnerBackend>::load(&paths.model, device)?)
        }
    };

    let n = data.len();
    let per_step = config.batch_size * config.grad_accum;
    let steps_per_epoch = n.div_ceil(per_step);
    let total = config.max_steps.unwrap_or(config.epochs * steps_per_epoch);
    let mut opt = AdamW::<A::InnerBackend>::new(config.optimizer);
    let mut start = 0;
    let metrics_path = paths.out.join("metrics.jsonl");
    let mut metrics: Vec<StepMetrics> = Vec::new();
    if let Some((ckpt, state)) = &resume {
        if state.examples != n {
            return Err(Error::argument(
                "data",
                format!(
                    "{} has {n} examples but the checkpoint was trained on {} ({})",
                    paths.data.display(),
                    state.examples,
                    state.data.display()
                ),
            ));
        }
        if state.total_steps != total {
            return Err(Error::checkpoint(
                ckpt.join("trainer_state.json"),
                format!(
                    "says the run has {} steps; these settings and data give {total}",
                    state.total_steps
                ),
            ));
        }
        let stored = trained_tensors(&policy, config);
        policy = opt.load(
            policy,
            &stored,
            &ckpt.join("optimizer.safetensors"),
            state.step,
            device,
        )?;
        start = state.step;
        // Keep the metrics of the steps the checkpoint holds, byte for byte; later lines are
        // redone.
        if metrics_path.exists() {
            let (kept, text) = metrics_up_to(&metrics_path, start)?;
            metrics = kept;
            jsonl::write_atomic(&metrics_path, text.as_bytes())?;
        }
        // Checkpoints past the one resumed from belong to the steps being redone.
        for (step, dir) in checkpoints(&paths.out)? {
            if step > start {
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
        }
    }
    let mut metrics_file = jsonl::open_append(&metrics_path)?;

    // What each checkpoint records besides its step.
    let record = TrainerState {
        step: start,
        total_steps: total,
        config: config.clone(),
        model: paths.model.clone(),
        reference: paths.reference.clone(),
        data: paths.data.clone(),
        examples: n,
        inputs: Some(inputs),
    };
    let bar = tita_core::progress::bar(options.progress, total, "steps");
    bar.set_position(start as u64);
    let mut learner = Learner::new(policy, reference, opt);
    let mut order_epoch = usize::MAX;
    let mut order: Vec<usize> = Vec::new();
    for step in start..total {
        let epoch = step / steps_per_epoch;
        if epoch != order_epoch {
            order = (0..n).collect();
            order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
                config.seed.wrapping_add(epoch as u64),
            ));
            order_epoch = epoch;
        }
        let k = step % steps_per_epoch;
        let batch = &order[k * per_step..((k + 1) * per_step).min(n)];
        let lr = cosine_with_warmup(config.optimizer.lr, step, config.warmup_steps, total);
        let epoch = (step + 1) as f64 / steps_per_epoch as f64;
        let m;
        (learner, m) = learner.step(&data, batch, config, lr, step + 1, epoch, device)?;
        jsonl::append(&mut metrics_file, &metrics_path, &m)?;
        bar.set_message(format!("loss {:.4}", m.loss));
        bar.inc(1);
        metrics.push(m);

        let done = step + 1;
        if done == total || config.save_every.is_some_and(|e| done % e == 0) {
            check_updated_model(&learner.policy, &data, done, lr, device)?;
            let state = TrainerState {
                step: done,
                ..record.clone()
            };
            save_checkpoint(&learner.policy, &learner.opt, &paths.out, &state)?;
            if let Some(keep) = options.save_total_limit {
                let all = checkpoints(&paths.out)?;
                for (_, dir) in &all[..all.len().saturating_sub(keep)] {
                    std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                }
            }
        }
        if options.stop_after == Some(done) && done < total {
            bar.abandon();
            return Ok(TrainSummary {
                steps: done,
                total_steps: total,
                final_model: None,
                adapter: None,
                metrics,
                dropped_pairs: data.dropped.clone(),
            });
        }
    }
    bar.finish();
    let final_dir = paths.out.join("final");
    let adapter = match config.lora {
        Some(_) => {
            let dir = paths.out.join("final-adapter");
            learner
                .policy
                .save_adapter(&base_name(&paths.model), &dir)?;
            let mut merged = learner.policy.valid();
            merged.merge_lora();
            merged.save_pretrained(&paths.model, &final_dir)?;
            Some(dir)
        }
        None => {
            learner.policy.save_pretrained(&paths.model, &final_dir)?;
            None
        }
    };
    Ok(TrainSummary {
        steps: total,
        total_steps: total,
        final_model: Some(final_dir),
        adapter,
        metrics,
        dropped_pairs: data.dropped.clone(),
    })
}

/// The models and optimiser of a run in progress.
pub struct Learner<A: AutodiffBackend> {
    pub policy: Vlm<A>,
    /// The frozen DPO reference (None for SFT).
    pub reference: Option<Vlm<A::InnerBackend>>,
    pub opt: AdamW<A::InnerBackend>,
    /// Reference log-probs (chosen, rejected) by example: the reference never changes.
    ref_cache: HashMap<usize, (f32, f32)>,
}

impl<A: AutodiffBackend> Learner<A> {
    pub fn new(
        policy: Vlm<A>,
        reference: Option<Vlm<A::InnerBackend>>,
        opt: AdamW<A::InnerBackend>,
    ) -> Self {
        Learner {
            policy,
            reference,
            opt,
            ref_cache: HashMap::new(),
        }
    }

    /// Drops the cached reference log-probs (benchmarks time the reference every step).
    pub fn forget_reference(&mut self) {
        self.ref_cache.clear();
    }

    /// One optimiser step on the examples `batch` (micro-batches of `config.batch_size`,
    /// gradients accumulated, the loss a mean over `batch`), at learning rate `lr`.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        self,
        data: &Dataset,
        batch: &[usize],
        config: &TrainConfig,
        lr: f64,
        step: usize,
        epoch: f64,
        device: &A::Device,
    ) -> Result<(Self, StepMetrics)> {
        let Learner {
            policy,
            reference,
            mut opt,
            mut ref_cache,
        } = self;
        let started = Instant::now();
        if config.lora.as_ref().is_some_and(|l| l.lora_dropout > 0.0) {
            // Dropout masks that depend on the step only, so a resumed run draws the same ones.
            A::seed(device, config.seed.wrapping_add(step as u64));
        }
        let mut acc = StepAccumulator::default();
        let mut grads_acc = GradientsAccumulator::<Vlm<A>>::new();
        let response_tokens: usize = batch
            .iter()
            .map(|&i| data.examples[i].responses[0].len())
            .sum();
        for micro in batch.chunks(config.batch_size) {
            let t0 = Instant::now();
            // The reference runs inside the policy's timed span; its share is taken out below.
            let mut reference_ms = 0.0;
            let loss = match config.objective {
                Objective::Dpo { beta } => {
                    let seqs = sequences(data, micro, &[0, 1]);
                    let lp = response_logps(&policy, data, &seqs, device)?;
                    let m = micro.len();
                    let pc = lp.clone().slice(0..m);
                    let pr = lp.slice(m..2 * m);
                    let t1 = Instant::now();
                    let reference = reference.as_ref().expect("DPO loads a reference");
                    let (rc, rr) = reference_logps(reference, data, micro, &mut ref_cache, device)?;
                    reference_ms = t1.elapsed().as_secs_f64() * 1e3;
                    let terms =
                        dpo_loss(pc, pr, Tensor::from_inner(rc), Tensor::from_inner(rr), beta);
                    let cr = host(terms.chosen_rewards.clone());
                    let rr = host(terms.rejected_rewards.clone());
                    for (c, r) in cr.iter().zip(&rr) {
                        acc.dpo.push((*c as f64, *r as f64));
                    }
                    acc.tokens += seqs.iter().map(Sequence::len).sum::<usize>();
                    terms.losses.sum().div_scalar(batch.len() as f64)
                }
                Objective::Sft => {
                    let seqs = sequences(data, micro, &[0]);
                    acc.tokens += seqs.iter().map(Sequence::len).sum::<usize>();
                    response_logps(&policy, data, &seqs, device)?
                        .sum()
                        .neg()
                        .div_scalar(response_tokens as f64)
                }
            };
            acc.loss += host(loss.clone())[0] as f64;
            acc.reference_ms += reference_ms;
            acc.policy_ms += t0.elapsed().as_secs_f64() * 1e3 - reference_ms;
            let t2 = Instant::now();
            let grads = GradientsParams::from_grads(loss.backward(), &policy);
            grads_acc.accumulate(&policy, grads);
            acc.backward_ms += t2.elapsed().as_secs_f64() * 1e3;
        }
        let t3 = Instant::now();
        let grads = grads_acc.grads();
        let grad_norm = global_grad_norm(&policy, &grads);
        // Stop before the update: nothing of this step is written, and the output folder's
        // last checkpoint stays the one to resume from.
        for (what, v) in [("loss", acc.loss), ("gradient norm", grad_norm)] {
            if !v.is_finite() {
                return Err(Error::NonFinite {
                    what: format!("the {what} at step {step}"),
                    detail: format!("{v}; no update, metrics line or checkpoint was written for it; lower the learning rate or check the data, then --resume from the last checkpoint"),
                });
            }
        }
        let scale = clip_scale(grad_norm, config.max_grad_norm);
        let policy = opt.step(policy, grads, lr, scale);
        let optimizer_ms = t3.elapsed().as_secs_f64() * 1e3;
        let secs = started.elapsed().as_secs_f64();
        let m = acc.finish(step, epoch, lr, grad_norm, batch.len(), secs, optimizer_ms);
        Ok((
            Learner {
                policy,
                reference,
                opt,
                ref_cache,
            },
            m,
        ))
    }
}

fn freeze<A: AutodiffBackend>(mut model: Vlm<A>, config: &TrainConfig) -> Vlm<A> {
    use burn::module::Module;
    use tita_models::Vision;
    if config.lora.is_some() {
        // Only the adapters attached next are trained.
        return model.no_grad();
    }
    model.vision = model.vision.take().map(|v| match v {
        Vision::Llava(mut v) => {
            if config.freeze_vision {
                v.vision_tower = v.vision_tower.no_grad();
            }
            if config.freeze_projector {
                v.multi_modal_projector = v.multi_modal_projector.no_grad();
            }
            Vision::Llava(v)
        }
        // Qwen2.5-VL's merger is its projector.
        Vision::Qwen(mut v) => {
            if config.freeze_vision {
                v.patch_embed = v.patch_embed.no_grad();
                v.blocks = v.blocks.no_grad();
            }
            if config.freeze_projector {
                v.merger = v.merger.no_grad();
            }
            Vision::Qwen(v)
        }
        // DeepSeek-VL2's layout embeddings go with its projector.
        Vision::DeepseekVl2(mut v) => {
            if config.freeze_vision {
                v.vision = v.vision.no_grad();
            }
            if config.freeze_projector {
                v.projector = v.projector.no_grad();
                v.image_newline = v.image_newline.no_grad();
                v.view_seperator = v.view_seperator.no_grad();
            }
            Vision::DeepseekVl2(v)
        }
    });
    model
}

/// Sequences of `examples` for the given response slots (all of slot 0, then all of slot 1).
fn sequences<'a>(data: &'a Dataset, examples: &[usize], slots: &[usize]) -> Vec<Sequence<'a>> {
    slots
        .iter()
        .flat_map(|&r| {
            examples.iter().map(move |&i| {
                let ex = &data.examples[i];
                Sequence {
                    prompt: &ex.prompt,
                    response: &ex.responses[r],
                    image: ex.image,
                }
            })
        })
        .collect()
}

/// The reference's summed log-probs of chosen and rejected for `examples`, computed once per
/// example (the reference is frozen) without autodiff.
fn reference_logps<B: burn::tensor::backend::Backend>(
    reference: &Vlm<B>,
    data: &Dataset,
    examples: &[usize],
    cache: &mut HashMap<usize, (f32, f32)>,
    device: &B::Device,
) -> Result<(Tensor<B, 1>, Tensor<B, 1>)> {
    let missing: Vec<usize> = examples
        .iter()
        .copied()
        .filter(|i| !cache.contains_key(i))
        .collect();
    if !missing.is_empty() {
        let seqs = sequences(data, &missing, &[0, 1]);
        let lp = host(response_logps(reference, data, &seqs, device)?);
        let m = missing.len();
        for (j, &i) in missing.iter().enumerate() {
            cache.insert(i, (lp[j], lp[m + j]));
        }
    }
    let (c, r): (Vec<f32>, Vec<f32>) = examples.iter().map(|i| cache[i]).unzip();
    let t =
        |v: Vec<f32>| Tensor::from_data(burn::tensor::TensorData::new(v, [examples.len()]), device);
    Ok((t(c), t(r)))
}

fn host<B: burn::tensor::backend::Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 data")
}

#[derive(Default)]
struct StepAccumulator {
    loss: f64,
    tokens: usize,
    policy_ms: f64,
    reference_ms: f64,
    backward_ms: f64,
    dpo: Vec<(f64, f64)>,
}

impl StepAccumulator {
    #[allow(clippy::too_many_arguments)]
    fn finish(
        self,
        step: usize,
        epoch: f64,
        lr: f64,
        grad_norm: f64,
        examples: usize,
        secs: f64,
        optimizer_ms: f64,
    ) -> StepMetrics {
        let k = self.dpo.len().max(1) as f64;
        let dpo = !self.dpo.is_empty();
        let mean =
            |f: &dyn Fn(&(f64, f64)) -> f64| dpo.then(|| self.dpo.iter().map(f).sum::<f64>() / k);
        StepMetrics {
            step,
            epoch,
            loss: self.loss,
            lr,
            grad_norm,
            examples,
            tokens: self.tokens,
            examples_per_s: examples as f64 / secs,
            tokens_per_s: self.tokens as f64 / secs,
            policy_forward_ms: self.policy_ms,
            reference_forward_ms: self.reference_ms,
            backward_ms: self.backward_ms,
            optimizer_ms,
            reward_accuracy: mean(&|(c, r)| if c > r { 1.0 } else { 0.0 }),
            margin: mean(&|(c, r)| c - r),
            chosen_reward: mean(&|(c, _)| *c),
            rejected_reward: mean(&|(_, r)| *r),
        }
    }
}

/// Whether the weights after `step` still give finite log-probabilities (of the first
/// example's answer): an update that broke the model (a learning rate far too high) is caught
/// before it is saved, since no later step's loss would see it.
fn check_updated_model<A: AutodiffBackend>(
    policy: &Vlm<A>,
    data: &Dataset,
    step: usize,
    lr: f64,
    device: &A::Device,
) -> Result<()> {
    let logps = host(response_logps(
        policy,
        data,
        &sequences(data, &[0], &[0]),
        device,
    )?);
    match logps.iter().find(|v| !v.is_finite()) {
        None => Ok(()),
        Some(v) => Err(Error::NonFinite {
            what: format!("the model after step {step}"),
            detail: format!(
                "its log-probability of the answer on line {} of {} is {v}; checkpoint-{step} was not written; lower the learning rate (this step's was {lr}), then --resume from the last checkpoint",
                data.examples[0].line,
                data.path.display()
            ),
        }),
    }
}

/// The lines of `metrics.jsonl` up to `step`, parsed and as written. A last line cut short by a
/// kill (no newline; its step was not saved) is dropped.
fn metrics_up_to(path: &Path, step: usize) -> Result<(Vec<StepMetrics>, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let (mut metrics, mut kept) = (Vec::new(), String::new());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let m: StepMetrics = match serde_json::from_str(line) {
            Ok(m) => m,
            Err(_) if !line.ends_with('\n') => break,
            Err(e) => return Err(Error::data(path, i + 1, format!("malformed line: {e}"))),
        };
        if m.step <= step {
            metrics.push(m);
            kept.push_str(line);
        }
    }
    Ok((metrics, kept))
}

fn save_checkpoint<A: AutodiffBackend>(
    policy: &Vlm<A>,
    opt: &AdamW<A::InnerBackend>,
    out: &Path,
    state: &TrainerState,
) -> Result<()> {
    let dir = checkpoint_dir(out, state.step);
    // Config and tokenizer files come from the original model directory, not from the
    // checkpoint a run resumed from (which also holds trainer files).
    match state.config.lora {
        Some(_) => policy.save_adapter(&base_name(&state.model), &dir)?,
        None => policy.save_pretrained(&state.model, &dir)?,
    }
    let trained = trained_tensors(policy, &state.config);
    opt.save(policy, &trained, &dir.join("optimizer.safetensors"))?;
    let text = serde_json::to_string_pretty(state).expect("plain data");
    jsonl::write_atomic(&dir.join("trainer_state.json"), text.as_bytes())
}

/// The tensors a run trains, by checkpoint name (what the optimiser's state is keyed by): the
/// adapter's with LoRA, else the model's.
fn trained_tensors<B: burn::tensor::backend::Backend>(
    policy: &Vlm<B>,
    config: &TrainConfig,
) -> Vec<tita_models::StoredTensor> {
    match config.lora {
        Some(_) => policy.adapter_tensors(),
        None => policy.stored.clone(),
    }
}

/// The base model as an adapter's `base_model_name_or_path` records it: its absolute path
/// when it can be resolved (PEFT resolves a relative one from the working directory).
fn base_name(model: &Path) -> PathBuf {
    std::fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf())
}
