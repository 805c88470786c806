//! The training stages in order (target, reward-sft, pairs, reward, target-dpo), each
//! skipped when its result is already there.

use super::*;

/// The target's greedy answers to `prompts` (a `{"image", "prompt"}` file), written as SFT data.
fn answer_prompts<B: Backend>(
    target: &Pipeline<B>,
    prompts: &Path,
    out: &Path,
    max_new_tokens: usize,
    progress: bool,
) -> Result<()> {
    let rows = jsonl::read::<tita_train::pairs::Question>(prompts)?;
    let generator = Generator::new(
        target,
        GenerationConfig {
            max_new_tokens,
            ..Default::default()
        },
    );
    let bar = tita_core::progress::bar(progress, rows.len(), "prompts");
    let mut text = String::new();
    for chunk in rows.chunks(16) {
        let ps = chunk
            .iter()
            .map(|(line, q)| {
                let image = jsonl::resolve_image(prompts, *line, &q.image, None)?;
                target.prompt(&q.prompt, Some(&image), false)
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<_> = ps.iter().collect();
        for ((_, q), g) in chunk.iter().zip(generator.generate_batch(&refs)?) {
            let response = g.text.trim();
            if !response.is_empty() {
                let line =
                    serde_json::json!({"image": q.image, "prompt": q.prompt, "response": response});
                text.push_str(&format!("{line}\n"));
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    jsonl::write_atomic(out, text.as_bytes())
}

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
    tita_train::report::write_training_plot(&summary.metrics, &run.join("metrics.png"))?;
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

fn check_config(out: &Path, config: &DemoConfig) -> Result<()> {
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
    let mut reports: BTreeMap<String, StageReport> = BTreeMap::new();
    let mut record = |name: &str, r: Option<StageReport>| {
        if let Some(r) = r {
            reports.insert(name.to_string(), r);
        }
    };
    let seed = config.seed;

    let target_init = init("target", &config.target, seed)?;
    record(
        "target",
        stage::<B>(
            out,
            "target",
            &target_init,
            &data.join("target-sft.jsonl"),
            Objective::Sft,
            &config.target_sft,
            seed,
            progress,
            device,
        )?,
    );
    let target = models.join("target");

    // Initialised before the branches below: initialisation draws from the backend's RNG.
    let reward_init = init("reward", &config.reward, seed + 1)?;
    let dpo = Objective::Dpo {
        beta: config.dpo_beta,
    };
    let pairs = data.join("pairs.jsonl");
    // Two independent branches from here, each on its own thread (the CPU backends run ops
    // this small on one core): the target's answers -> the reward model's SFT -> its DPO
    // (once the pairs exist), and the pairs -> the target's DPO. The second branch shows no
    // progress bar, so the first one's stays readable.
    let (pairs_made, pairs_ready) = std::sync::mpsc::channel::<()>();
    let (reward_reports, target_report) = std::thread::scope(|s| {
        let tuned = s.spawn(|| -> Result<Option<StageReport>> {
            make_pairs::<B>(&data, &target, config, progress, device)?;
            let _ = pairs_made.send(());
            stage::<B>(
                out,
                TARGET_DPO,
                &target,
                &pairs,
                dpo,
                &config.target_dpo,
                seed,
                false,
                device,
            )
        });
        let reward = (|| -> Result<Vec<(&str, Option<StageReport>)>> {
            let reward_sft_data = data.join("reward-sft.jsonl");
            if !reward_sft_data.is_file() {
                let pipeline = Pipeline::<B>::load(&target, device)?;
                if progress {
                    eprintln!("the target answers the reward model's training prompts");
                }
                answer_prompts(
                    &pipeline,
                    &data.join("reward-prompts.jsonl"),
                    &reward_sft_data,
                    config.caption_tokens,
                    progress,
                )?;
            }
            let sft = stage::<B>(
                out,
                "reward-sft",
                &reward_init,
                &reward_sft_data,
                Objective::Sft,
                &config.reward_sft,
                seed,
                progress,
                device,
            )?;
            if pairs_ready.recv().is_err() {
                // The other branch failed before the pairs were written; its error is reported.
                return Ok(vec![("reward-sft", sft)]);
            }
            let dpo = stage::<B>(
                out,
                "reward",
                &models.join("reward-sft"),
                &pairs,
                dpo,
                &config.reward_dpo,
                seed,
                progress,
                device,
            )?;
            Ok(vec![("reward-sft", sft), ("reward", dpo)])
        })();
        let tuned = tuned
            .join()
            .unwrap_or_else(|_| Err(Error::argument("demo", "the target-DPO thread panicked")));
        (reward, tuned)
    });
    let target_report = target_report?;
    for (name, r) in reward_reports? {
        record(name, r);
    }
    record(TARGET_DPO, target_report);
    if !reports.is_empty() {
        let path = out.join("training.json");
        let mut all: BTreeMap<String, StageReport> = if path.is_file() {
            read_json_as(&path)?
        } else {
            BTreeMap::new()
        };
        all.extend(reports);
        let json = serde_json::to_string_pretty(&all).expect("plain data");
        jsonl::write_atomic(&path, json.as_bytes())?;
    }
    evaluate::<B>(&models, out, config, progress, device)
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
