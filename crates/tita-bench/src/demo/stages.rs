//! The training stages in order (both towers' pretraining, the two LLaVA stages of target and
//! reward model, pairs, reward, the target-dpo candidates, the choice on the validation split),
//! each skipped when its result is already there.

use super::*;

/// What `--retrain` reports about one training stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageReport {
    pub steps: usize,
    pub examples: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    /// DPO only: reward accuracy of the last step.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_reward_accuracy: Option<f64>,
    pub seconds: f64,
}

/// Runs one training stage into `runs/NAME` and moves its final model to `models/NAME`
/// (skipped when `models/NAME` exists: a finished stage).
#[allow(clippy::too_many_arguments)]
fn stage<B: Backend>(
    out: &Path,
    name: &str,
    start: &Path,
    data: &Path,
    objective: Objective,
    stage: &Stage,
    seed: u64,
    progress: bool,
    device: &B::Device,
) -> Result<Option<StageReport>> {
    let model = out.join("models").join(name);
    if model.join("model.safetensors").is_file() {
        return Ok(None);
    }
    let run = out.join("runs").join(name);
    let config = TrainConfig {
        objective,
        optimizer: AdamWConfig {
            lr: stage.lr,
            ..Default::default()
        },
        warmup_steps: stage.steps / 20,
        batch_size: stage.batch_size,
        max_steps: Some(stage.steps),
        seed,
        save_every: Some(100),
        // LLaVA trains with its vision tower frozen; here the tower is random, and the
        // projector + LLM learn to read its fixed features much sooner than while the tower
        // moves under them (measured after 300 steps: a caption is 0.5 nats likelier with its
        // own image than with another one when frozen, 0.05 nats end to end).
        freeze_vision: true,
        ..Default::default()
    };
    let resume = run
        .join("metrics.jsonl")
        .is_file()
        .then(|| tita_train::trainer::find_checkpoint(&run).ok())
        .flatten();
    let paths = TrainPaths {
        model: start.to_path_buf(),
        reference: None,
        data: data.to_path_buf(),
        images: None,
        out: run.clone(),
        resume,
    };
    if progress {
        eprintln!("training {name} ({} steps)", stage.steps);
    }
    let t = Instant::now();
    let summary = train::<Autodiff<B>>(
        &paths,
        &config,
        &RunOptions {
            progress,
            // The demo owns its run folders: one without a checkpoint is started afresh.
            overwrite: paths.resume.is_none(),
            ..Default::default()
        },
        device,
    )?;
    // Under a claim, so that the run folder's manifest lists the plot as the run's.
    let claim = claim_dir(&run, Reuse::Resume)?;
    tita_train::report::write_training_plot(&summary.metrics, &run.join("metrics.png"))?;
    drop(claim);
    let final_dir = summary
        .final_model
        .ok_or_else(|| Error::checkpoint(&run, "training ended without a final model"))?;
    std::fs::create_dir_all(out.join("models")).map_err(|e| Error::io(out, e))?;
    std::fs::rename(&final_dir, &model).map_err(|e| Error::io(&model, e))?;
    let (first, last) = (
        summary.metrics.first().map_or(f64::NAN, |m| m.loss),
        summary.metrics.last().map_or(f64::NAN, |m| m.loss),
    );
    Ok(Some(StageReport {
        steps: summary.steps,
        examples: jsonl::read::<serde_json::Value>(data)?.len(),
        first_loss: first,
        last_loss: last,
        last_reward_accuracy: summary.metrics.last().and_then(|m| m.reward_accuracy),
        seconds: t.elapsed().as_secs_f64(),
    }))
}

pub(super) fn check_config(out: &Path, config: &DemoConfig) -> Result<()> {
    let path = out.join("config.json");
    if path.is_file() {
        if read_json_as::<DemoConfig>(&path)? != *config {
            return Err(Error::argument(
                "out",
                format!(
                    "{} holds a demo made with other settings; use a fresh --out",
                    out.display()
                ),
            ));
        }
    } else {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let json = serde_json::to_string_pretty(config).expect("plain data");
        jsonl::write_atomic(&path, json.as_bytes())?;
    }
    Ok(())
}

/// Builds every model from the seed into `out/models` (see the module docs), then evaluates.
pub fn retrain<B: Backend>(
    out: &Path,
    config: &DemoConfig,
    progress: bool,
    device: &B::Device,
) -> Result<DemoResults> {
    check_config(out, config)?;
    let data = out.join("data");
    let world = World::new(config);
    write_data(&data, &world, config)?;
    let models = out.join("models");
    let init = |name: &str, size: &ModelSize, seed: u64| -> Result<PathBuf> {
        let dir = out.join("init").join(name);
        if !dir.join("model.safetensors").is_file() {
            world::init_model::<B>(&dir, &size.config(), seed, device)?;
        }
        Ok(dir)
    };
    let mut reports: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut record = |name: &str, r: Option<serde_json::Value>| {
        if let Some(r) = r {
            reports.insert(name.to_string(), r);
        }
    };
    let json = |r: Option<StageReport>| r.map(|r| serde_json::to_value(r).expect("plain data"));
    let seed = config.seed;

    // Both towers pretrained before their VLMs exist; the reward's own, smaller one too.
    let sizes = parameter_counts::<B>(config, device)?;
    record(
        "parameters",
        Some(serde_json::to_value(sizes).expect("plain data")),
    );
    let mut pretrained = |name: &str, size: &ModelSize, seed: u64| -> Result<PathBuf> {
        let dir = out.join("init").join(format!("{name}-pretrained"));
        let report = pretrain_tower::<B>(
            &init(name, size, seed)?,
            &dir,
            &config.pretrain,
            seed,
            progress,
            device,
        )?;
        if let Some(r) = &report {
            if progress {
                eprintln!(
                    "{name} tower: held-out accuracy {:.3} (labels {:.3}, recall {:.3}, precision {:.3})",
                    r.accuracy, r.label_accuracy, r.recall, r.precision
                );
            }
        }
        record(
            &format!("{name}-tower"),
            report.map(|r| serde_json::to_value(r).expect("plain data")),
        );
        Ok(dir)
    };
    let target_init = pretrained("target", &config.target, seed)?;
    let reward_init = pretrained("reward", &config.reward, seed + 1)?;

    let dpo = Objective::Dpo {
        beta: config.dpo_beta,
    };
    let pairs = data.join("pairs.jsonl");
    // LLaVA's two stages for either model: captions, then the instruction mix, into
    // `models/{align}` and `models/{sft}`.
    let llava = |init: &Path, align: &str, sft: &str, stages: [&Stage; 2], progress: bool| {
        let a = stage::<B>(
            out,
            align,
            init,
            &data.join("target-align.jsonl"),
            Objective::Sft,
            stages[0],
            seed,
            progress,
            device,
        )?;
        let b = stage::<B>(
            out,
            sft,
            &models.join(align),
            &data.join("target-sft.jsonl"),
            Objective::Sft,
            stages[1],
            seed,
            progress,
            device,
        )?;
        Ok::<_, Error>(vec![(align.to_string(), a), (sft.to_string(), b)])
    };
    // Two independent branches, each on its own thread (the CPU backends run ops this small
    // on one core): the target's stages -> the pairs -> the target's DPO schedules, and the
    // reward model's stages -> its DPO (once the pairs exist). The second branch shows no
    // progress bar, so the first one's stays readable.
    let (pairs_made, pairs_ready) = std::sync::mpsc::channel::<()>();
    let (reward_reports, target_reports) = std::thread::scope(|s| {
        let (llava, reward_init, models, pairs) = (&llava, &reward_init, &models, &pairs);
        let reward = s.spawn(move || -> Result<Vec<(String, Option<StageReport>)>> {
            let mut reports = llava(
                reward_init,
                "reward-align",
                "reward-sft",
                [&config.reward_align, &config.reward_sft],
                false,
            )?;
            if pairs_ready.recv().is_err() {
                // The other branch failed before the pairs were written; its error is reported.
                return Ok(reports);
            }
            let r = stage::<B>(
                out,
                "reward",
                &models.join("reward-sft"),
                pairs,
                dpo,
                &config.reward_dpo,
                seed,
                false,
                device,
            )?;
            reports.push(("reward".into(), r));
            Ok(reports)
        });
        let target = (|| -> Result<Vec<(String, Option<StageReport>)>> {
            let mut reports = llava(
                &target_init,
                "target-align",
                "target",
                [&config.target_align, &config.target_sft],
                progress,
            )?;
            let target = models.join("target");
            make_pairs::<B>(&data, &target, config, progress, device)?;
            let _ = pairs_made.send(());
            // Every DPO schedule of the target; the validation split chooses one (see `tune`).
            for (k, schedule) in config.target_dpo.iter().enumerate() {
                let name = dpo_candidate(k);
                let r = stage::<B>(
                    &out.join("tune"),
                    &name,
                    &target,
                    pairs,
                    dpo,
                    schedule,
                    seed,
                    progress,
                    device,
                )?;
                reports.push((name, r));
            }
            Ok(reports)
        })();
        drop(pairs_made);
        let reward = reward.join().unwrap_or_else(|_| {
            Err(Error::argument(
                "demo",
                "the reward model's thread panicked",
            ))
        });
        (reward, target)
    });
    for (name, r) in target_reports? {
        record(&name, json(r));
    }
    for (name, r) in reward_reports? {
        record(&name, json(r));
    }
    if !reports.is_empty() {
        let path = out.join("training.json");
        let mut all: BTreeMap<String, serde_json::Value> = if path.is_file() {
            read_json_as(&path)?
        } else {
            BTreeMap::new()
        };
        all.extend(reports);
        let json = serde_json::to_string_pretty(&all).expect("plain data");
        jsonl::write_atomic(&path, json.as_bytes())?;
    }
    tune::<B>(out, &world, config, progress, device)?;
    evaluate::<B>(&models, out, config, progress, device)
}

/// Parameters of the target and the reward model (all of them, the unused last tower layer
/// included, as LLaVA's is).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ParameterCounts {
    pub target: usize,
    pub reward: usize,
}

/// The two models' sizes; the reward model may have at most a quarter of the target's.
pub fn parameter_counts<B: Backend>(
    config: &DemoConfig,
    device: &B::Device,
) -> Result<ParameterCounts> {
    let count = |size: &ModelSize| -> Result<usize> {
        Ok(burn::module::Module::num_params(
            &tita_models::Vlm::<B>::random(size.config(), 0, device)?,
        ))
    };
    let counts = ParameterCounts {
        target: count(&config.target)?,
        reward: count(&config.reward)?,
    };
    if counts.reward * 4 > counts.target {
        return Err(Error::argument(
            "reward",
            format!(
                "the reward model has {} parameters, more than a quarter of the target's {}",
                counts.reward, counts.target
            ),
        ));
    }
    Ok(counts)
}

/// `data/pairs.jsonl`: the target's self-pairs on clean vs. noised preference images and/or
/// the ground-truth pairs, as `config.pairs` says.
fn make_pairs<B: Backend>(
    data: &Path,
    target: &Path,
    config: &DemoConfig,
    progress: bool,
    device: &B::Device,
) -> Result<()> {
    let pairs = data.join("pairs.jsonl");
    if pairs.is_file() {
        return Ok(());
    }
    let mut text = String::new();
    if config.pairs != PairSource::GroundTruth {
        let noised = data.join("pairs-noised.jsonl");
        let pipeline = Pipeline::<B>::load(target, device)?;
        if progress {
            eprintln!("self-pairs: the target on clean and noised preference images; then the target's DPO (no progress bar)");
        }
        synthesize(
            &pipeline,
            &data.join("preference-prompts.jsonl"),
            None,
            &noised,
            &PairsConfig {
                seed: config.seed,
                max_new_tokens: config.caption_tokens,
                ..Default::default()
            },
            // A pairs file left by an interrupted demo run is continued.
            Reuse::Resume,
            false,
        )?;
        text.push_str(&read_text(&noised)?);
    }
    if config.pairs != PairSource::Noised {
        text.push_str(&read_text(&data.join("pairs-ground-truth.jsonl"))?);
    }
    jsonl::write_atomic(&pairs, text.as_bytes())
}
