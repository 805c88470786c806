//! The built-in demo: the whole TITA recipe in the synthetic [`world`](crate::world), where
//! the ground truth of every image is known, with nothing downloaded.
//!
//! 1. world splits (train / preference / test) with captions and POPE question files;
//! 2. the target LLaVA trained from scratch by SFT on training captions and yes/no answers;
//! 3. a smaller reward LLaVA made to approximate the target by SFT on the target's own greedy
//!    outputs (`reward-sft`, also TITA's reference model);
//! 4. preference pairs on the preference split: the paper's self-pairs (the target's answer on
//!    the clean vs. the diffusion-noised image) and/or ground-truth pairs (true answer vs. the
//!    hallucination the priors suggest);
//! 5. DPO of the reward model on those pairs (`reward`), and, as the costly alternative TITA
//!    avoids, DPO of the target itself on the same pairs (`target-dpo`);
//! 6. evaluation on the test split: POPE (random / popular / adversarial) and CHAIR on captions
//!    for greedy, TITA at a λ sweep, TITA's reference mode, VCD and the DPO-tuned target.
//!
//! Training keeps the vision towers frozen, as LLaVA does. Every stage leaves its result in the
//! output directory and is skipped when that result is already there; training runs checkpoint
//! and resume; answers are appended as they come and reused only for the same models.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tita_core::error::read_json_as;
use tita_core::output::Reuse;
use tita_core::plot::{bar_chart, line_panels, Panel, Series};
use tita_core::{jsonl, Error, Result};
use tita_decode::{GenerationConfig, Generator, Pipeline};
use tita_train::optim::AdamWConfig;
use tita_train::pairs::{synthesize, PairsConfig};
use tita_train::trainer::{train, Objective, RunOptions, TrainConfig, TrainPaths};

use crate::eval::{answer_all, answers_path, EvalConfig, Method, Models, QuestionSet};
use crate::pope::{judge, Answer, Question, YesNoMetrics};
use crate::world::{
    self, question_text, Category, Sampler, Scene, Statistics, CAPTION_PROMPT, COLORS, SHAPES,
};

/// Width and depth of a world model (see [`world::model_config`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ModelSize {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub vision_hidden: usize,
    pub vision_layers: usize,
    /// Side of a vision patch in pixels.
    pub patch: usize,
}

impl ModelSize {
    pub fn config(&self) -> tita_core::ModelConfig {
        world::model_config(
            self.hidden,
            self.layers,
            self.heads,
            self.vision_hidden,
            self.vision_layers,
            self.patch,
        )
    }
}

/// One training stage.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Stage {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
}

/// Which preference pairs the reward model (and the DPO-tuned target) learn from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PairSource {
    /// The paper's: the target's answers on the clean vs. the noised image.
    Noised,
    /// True answer vs. the hallucination the co-occurrence priors suggest.
    GroundTruth,
    Both,
}

/// Everything that decides the demo's results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DemoConfig {
    pub seed: u64,
    pub train_images: usize,
    pub preference_images: usize,
    pub test_images: usize,
    pub target: ModelSize,
    pub reward: ModelSize,
    pub target_sft: Stage,
    /// Training images whose prompts the target answers for the reward model's SFT.
    pub reward_sft_images: usize,
    pub reward_sft: Stage,
    pub pairs: PairSource,
    pub dpo_beta: f64,
    pub reward_dpo: Stage,
    pub target_dpo: Stage,
    pub lambdas: Vec<f32>,
    pub reference_alpha: f32,
    pub vcd_alpha: f32,
    pub caption_tokens: usize,
}

impl DemoConfig {
    /// The committed demo (`--retrain`).
    pub fn full() -> Self {
        DemoConfig {
            seed: 7,
            train_images: 800,
            preference_images: 200,
            test_images: 100,
            target: ModelSize {
                hidden: 64,
                layers: 2,
                heads: 4,
                vision_hidden: 48,
                vision_layers: 2,
                patch: 16,
            },
            reward: ModelSize {
                hidden: 48,
                layers: 2,
                heads: 4,
                vision_hidden: 32,
                vision_layers: 1,
                patch: 16,
            },
            target_sft: Stage {
                steps: 1500,
                batch_size: 16,
                lr: 3e-3,
            },
            reward_sft_images: 400,
            reward_sft: Stage {
                steps: 500,
                batch_size: 16,
                lr: 3e-3,
            },
            pairs: PairSource::Both,
            dpo_beta: 0.1,
            reward_dpo: Stage {
                steps: 120,
                batch_size: 8,
                lr: 1e-3,
            },
            target_dpo: Stage {
                steps: 120,
                batch_size: 8,
                lr: 1e-3,
            },
            lambdas: vec![0.2, 0.4, 0.6, 0.8],
            reference_alpha: 1.0,
            vcd_alpha: 1.0,
            caption_tokens: 24,
        }
    }

    /// Every stage at toy scale: checks the pipeline end to end (CI), not that TITA wins.
    pub fn quick() -> Self {
        let full = Self::full();
        let stage = |steps, batch_size| Stage {
            steps,
            batch_size,
            lr: 3e-3,
        };
        DemoConfig {
            train_images: 24,
            preference_images: 8,
            test_images: 6,
            target_sft: stage(12, 8),
            reward_sft_images: 8,
            reward_sft: stage(6, 8),
            reward_dpo: stage(4, 4),
            target_dpo: stage(4, 4),
            lambdas: vec![0.5],
            caption_tokens: 12,
            ..full
        }
    }

    fn methods(&self) -> Vec<Method> {
        let mut m = vec![Method::Greedy];
        m.extend(self.lambdas.iter().map(|&lambda| Method::Tita { lambda }));
        m.push(Method::Reference {
            alpha: self.reference_alpha,
        });
        m.push(Method::Vcd {
            alpha: self.vcd_alpha,
        });
        m
    }
}

/// The four models of the demo, as directories under `models/`.
pub const MODELS: [&str; 4] = ["target", "reward-sft", "reward", "target-dpo"];
/// Name of the DPO-tuned target among the methods of the results.
pub const TARGET_DPO: &str = "target-dpo";
const SPLITS: [(&str, u64); 3] = [("train", 0), ("preference", 1), ("test", 2)];
const SAMPLERS: [&str; 3] = ["random", "popular", "adversarial"];

/// The scenes of every split and the training statistics, regenerated from the seed.
pub struct World {
    pub scenes: BTreeMap<&'static str, Vec<Scene>>,
    pub stats: Statistics,
}

impl World {
    pub fn new(config: &DemoConfig) -> Self {
        let count = |name: &str| match name {
            "train" => config.train_images,
            "preference" => config.preference_images,
            _ => config.test_images,
        };
        let scenes: BTreeMap<&'static str, Vec<Scene>> = SPLITS
            .iter()
            .map(|&(name, k)| (name, world::split(config.seed, k, count(name))))
            .collect();
        let stats = Statistics::of(&scenes["train"]);
        World { scenes, stats }
    }
}

fn image_file(split: &str, k: usize) -> String {
    format!("images/{split}-{k}.png")
}

fn yes_no(label: bool) -> &'static str {
    if label {
        "Yes"
    } else {
        "No"
    }
}

fn lines<T: Serialize>(records: &[T]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).expect("plain data") + "\n")
        .collect()
}

/// Writes the splits and the training files into `data`: `target-sft.jsonl` (training
/// captions and yes/no answers with random negatives, as instruction data asks them),
/// `reward-prompts.jsonl` and `preference-prompts.jsonl` (prompts to answer) and
/// `pairs-ground-truth.jsonl`.
pub fn write_data(data: &Path, world: &World, config: &DemoConfig) -> Result<()> {
    for (name, _) in SPLITS {
        world::write_split(data, name, &world.scenes[name], &world.stats, config.seed)?;
    }
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x7a11);
    let train = &world.scenes["train"];
    let mut sft: Vec<serde_json::Value> = Vec::new();
    for (k, s) in train.iter().enumerate() {
        sft.push(serde_json::json!({"image": image_file("train", k), "prompt": CAPTION_PROMPT, "response": s.caption()}));
    }
    for q in world::questions(train, &world.stats, Sampler::Random, &mut rng) {
        sft.push(serde_json::json!({"image": image_file("train", q.image), "prompt": question_text(q.category), "response": yes_no(q.label)}));
    }
    jsonl::write_atomic(&data.join("target-sft.jsonl"), lines(&sft).as_bytes())?;

    // Prompts answered by the target: captions and the POPE questions of a split.
    let prompts = |split: &str, count: usize, sampler: Sampler, rng: &mut StdRng| {
        let scenes = &world.scenes[split][..count.min(world.scenes[split].len())];
        let mut out: Vec<serde_json::Value> = Vec::new();
        for k in 0..scenes.len() {
            out.push(serde_json::json!({"image": image_file(split, k), "prompt": CAPTION_PROMPT}));
        }
        for q in world::questions(scenes, &world.stats, sampler, rng) {
            out.push(serde_json::json!({"image": image_file(split, q.image), "prompt": question_text(q.category)}));
        }
        out
    };
    let reward = prompts("train", config.reward_sft_images, Sampler::Random, &mut rng);
    jsonl::write_atomic(
        &data.join("reward-prompts.jsonl"),
        lines(&reward).as_bytes(),
    )?;
    let pref = prompts("preference", usize::MAX, Sampler::Adversarial, &mut rng);
    jsonl::write_atomic(
        &data.join("preference-prompts.jsonl"),
        lines(&pref).as_bytes(),
    )?;

    let truth = ground_truth_pairs(&world.scenes["preference"], &world.stats, &mut rng);
    jsonl::write_atomic(
        &data.join("pairs-ground-truth.jsonl"),
        lines(&truth).as_bytes(),
    )
}

/// Ground-truth pairs of the preference split: for every image the true caption against the
/// same caption with one object (drawn with `rng`) swapped for the absent category that
/// co-occurs most with the present ones; for every POPE question (adversarial negatives) the
/// true answer against the other. Both captions of a pair name as many objects: with an
/// added object instead, DPO learns that shorter captions win and captions collapse to ".".
pub fn ground_truth_pairs(
    scenes: &[Scene],
    stats: &Statistics,
    rng: &mut StdRng,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (k, s) in scenes.iter().enumerate() {
        let present = s.present();
        let top = stats.ranked_negatives(&present, Sampler::Adversarial);
        if let (Some(&extra), false) = (top.first(), s.objects.is_empty()) {
            let mut hallucinated = s.clone();
            let swapped = rng.random_range(0..s.objects.len());
            hallucinated.objects[swapped].category = extra;
            out.push(
                serde_json::json!({"image": image_file("preference", k), "prompt": CAPTION_PROMPT,
                "chosen": s.caption(), "rejected": hallucinated.caption()}),
            );
        }
    }
    for q in world::questions(scenes, stats, Sampler::Adversarial, rng) {
        out.push(serde_json::json!({"image": image_file("preference", q.image), "prompt": question_text(q.category),
            "chosen": yes_no(q.label), "rejected": yes_no(!q.label)}));
    }
    out
}

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

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// CHAIR (Rohrbach et al., 2018) on captions, exact here because the ground truth is known.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ChairMetrics {
    /// Share of mentioned objects that are not in the image (CHAIR_i).
    pub chair_i: f64,
    /// Share of captions with at least one such object (CHAIR_s).
    pub chair_s: f64,
    /// Share of present objects the captions mention (what a silent model gives up).
    pub recall: f64,
    /// Mean number of objects a caption mentions.
    pub objects_per_caption: f64,
    pub captions: usize,
}

/// The categories a caption mentions: every colour word directly followed by a shape word.
pub fn mentioned(caption: &str) -> BTreeSet<Category> {
    let words: Vec<&str> = caption.split_whitespace().collect();
    words
        .windows(2)
        .filter_map(|w| {
            let color = COLORS.iter().position(|c| c.0 == w[0])?;
            let shape = SHAPES.iter().position(|s| *s == w[1])?;
            Some(Category { color, shape })
        })
        .collect()
}

impl ChairMetrics {
    /// From (caption, objects present) pairs.
    pub fn of<'a>(items: impl IntoIterator<Item = (&'a str, BTreeSet<Category>)>) -> Self {
        let (mut mentions, mut wrong, mut bad_captions, mut present, mut found, mut n) =
            (0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
        for (caption, truth) in items {
            let said = mentioned(caption);
            let hallucinated = said.difference(&truth).count();
            mentions += said.len();
            wrong += hallucinated;
            bad_captions += usize::from(hallucinated > 0);
            present += truth.len();
            found += said.intersection(&truth).count();
            n += 1;
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        ChairMetrics {
            chair_i: ratio(wrong, mentions),
            chair_s: ratio(bad_captions, n),
            recall: ratio(found, present),
            objects_per_caption: ratio(mentions, n),
            captions: n,
        }
    }
}

/// The demo's results: POPE per split (and pooled) and CHAIR, per method.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoResults {
    pub config: DemoConfig,
    /// pope[split][method]
    pub pope: BTreeMap<String, BTreeMap<String, YesNoMetrics>>,
    pub pope_overall: BTreeMap<String, YesNoMetrics>,
    pub chair: BTreeMap<String, ChairMetrics>,
    /// Seconds this invocation spent answering, per method (0 when all answers were there).
    pub seconds: BTreeMap<String, f64>,
}

/// Method names in report order: greedy, TITA by λ, reference, VCD, the DPO-tuned target.
fn method_names(config: &DemoConfig) -> Vec<String> {
    let mut names: Vec<String> = config.methods().iter().map(Method::name).collect();
    names.push(TARGET_DPO.into());
    names
}

/// Evaluates the models in `models` (the directories of [`MODELS`]) on the test split of
/// `config`'s world, writing answers, `results.json`, `report.md` and plots into `out`.
pub fn evaluate<B: Backend>(
    models: &Path,
    out: &Path,
    config: &DemoConfig,
    progress: bool,
    device: &B::Device,
) -> Result<DemoResults> {
    let world = World::new(config);
    let data = out.join("data");
    let test = &world.scenes["test"];
    world::write_split(&data, "test", test, &world.stats, config.seed)?;
    let load = |name: &str| {
        let dir = models.join(name);
        if !dir.join("config.json").is_file() {
            return Err(Error::argument(
                "models",
                format!(
                    "{} is not a model directory (expected {} under {})",
                    dir.display(),
                    MODELS.join(", "),
                    models.display()
                ),
            ));
        }
        Pipeline::<B>::load(&dir, device)
    };
    let target = load("target")?;
    let reward = load("reward")?;
    let reference = load("reward-sft")?;
    let target_dpo = load(TARGET_DPO)?;
    claim_answers(models, out, config)?;

    let sets = SAMPLERS
        .iter()
        .map(|s| QuestionSet::read(&data.join(format!("test-{s}.jsonl")), None, None))
        .collect::<Result<Vec<_>>>()?;
    let captions = QuestionSet {
        name: "captions".into(),
        questions: (0..test.len())
            .map(|k| Question {
                question_id: Some(k as u64 + 1),
                image: image_file("test", k),
                text: CAPTION_PROMPT.into(),
                label: "yes".into(),
            })
            .collect(),
        images: (0..test.len())
            .map(|k| data.join(image_file("test", k)))
            .collect(),
    };
    let pope_config = EvalConfig {
        methods: config.methods(),
        // POPE's question as such, as in training: LLaVA's short-answer suffix would put ten
        // more tokens between the object asked about and the answer, which a model this small
        // learns to bridge much later.
        suffix: String::new(),
        max_new_tokens: 4,
        pad: false,
        shortcut: true,
        noise_step: 500,
        seed: config.seed,
        ..EvalConfig::default()
    };
    let caption_config = EvalConfig {
        suffix: String::new(),
        max_new_tokens: config.caption_tokens,
        ..pope_config.clone()
    };
    let dpo_config = |c: &EvalConfig| EvalConfig {
        methods: vec![Method::Greedy],
        ..c.clone()
    };
    let eval = out.join("eval");
    let dpo_eval = eval.join(TARGET_DPO);
    let all = Models {
        target: &target,
        reward: Some(&reward),
        reference: Some(&reference),
    };
    let tuned = Models {
        target: &target_dpo,
        reward: None,
        reference: None,
    };
    let mut seconds: BTreeMap<String, f64> = BTreeMap::new();
    let mut add = |speed: BTreeMap<String, crate::eval::MethodSpeed>, rename: Option<&str>| {
        for (name, s) in speed {
            *seconds
                .entry(rename.map_or(name, str::to_string))
                .or_default() += s.seconds;
        }
    };
    let caption_sets = std::slice::from_ref(&captions);
    add(
        answer_all(&all, &sets, &eval, &pope_config, progress)?,
        None,
    );
    add(
        answer_all(&all, caption_sets, &eval, &caption_config, progress)?,
        None,
    );
    add(
        answer_all(
            &tuned,
            &sets,
            &dpo_eval,
            &dpo_config(&pope_config),
            progress,
        )?,
        Some(TARGET_DPO),
    );
    add(
        answer_all(
            &tuned,
            caption_sets,
            &dpo_eval,
            &dpo_config(&caption_config),
            progress,
        )?,
        Some(TARGET_DPO),
    );

    // Where each method's answers are: (name, directory, method as written).
    let mut sources: Vec<(String, &Path, Method)> = config
        .methods()
        .into_iter()
        .map(|m| (m.name(), eval.as_path(), m))
        .collect();
    sources.push((TARGET_DPO.into(), dpo_eval.as_path(), Method::Greedy));
    let mut pope: BTreeMap<String, BTreeMap<String, YesNoMetrics>> = BTreeMap::new();
    let mut pooled: BTreeMap<String, Vec<(bool, bool)>> = BTreeMap::new();
    let mut chair = BTreeMap::new();
    let mut captions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, dir, method) in &sources {
        for set in &sets {
            let pairs = judge(&set.questions, &answers_path(dir, method, &set.name))?;
            pope.entry(set.name.clone()).or_default().insert(
                name.clone(),
                YesNoMetrics::from_pairs(pairs.iter().copied()),
            );
            pooled.entry(name.clone()).or_default().extend(pairs);
        }
        let texts = caption_texts(&answers_path(dir, method, "captions"), test.len())?;
        let m = ChairMetrics::of(
            texts
                .iter()
                .zip(test)
                .map(|(t, s)| (t.as_str(), s.present())),
        );
        chair.insert(name.clone(), m);
        captions.insert(name.clone(), texts);
    }
    let results = DemoResults {
        config: config.clone(),
        pope,
        pope_overall: pooled
            .into_iter()
            .map(|(k, v)| (k, YesNoMetrics::from_pairs(v)))
            .collect(),
        chair,
        seconds,
    };
    write_report(out, &results, test, &captions)?;
    Ok(results)
}

/// Answers under `out/eval` resume a run only if they came from the same models and settings:
/// a fingerprint of both is kept next to them, and answers of anything else are cleared.
fn claim_answers(models: &Path, out: &Path, config: &DemoConfig) -> Result<()> {
    let mut hash = 0xcbf2_9ce4_8422_2325u64; // FNV-1a
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(serde_json::to_string(config)
        .expect("plain data")
        .as_bytes());
    for m in MODELS {
        for file in ["config.json", "model.safetensors"] {
            let path = models.join(m).join(file);
            eat(&std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
        }
    }
    let stamp = format!("{hash:016x}");
    let eval = out.join("eval");
    let path = eval.join("fingerprint");
    if path.is_file() && read_text(&path)?.trim() == stamp {
        return Ok(());
    }
    if eval.exists() {
        std::fs::remove_dir_all(&eval).map_err(|e| Error::io(&eval, e))?;
    }
    std::fs::create_dir_all(&eval).map_err(|e| Error::io(&eval, e))?;
    jsonl::write_atomic(&path, stamp.as_bytes())
}

/// The caption of each test image (question id k+1), in image order.
fn caption_texts(path: &Path, n: usize) -> Result<Vec<String>> {
    let mut texts = vec![None; n];
    for (line, a) in jsonl::read::<Answer>(path)? {
        let slot = (a.question_id as usize)
            .checked_sub(1)
            .and_then(|k| texts.get_mut(k))
            .ok_or_else(|| Error::data(path, line, format!("no test image {}", a.question_id)))?;
        *slot = Some(a.text);
    }
    texts
        .into_iter()
        .enumerate()
        .map(|(k, t)| {
            t.ok_or_else(|| Error::data(path, 0, format!("no caption of image {}", k + 1)))
        })
        .collect()
}

fn write_report(
    out: &Path,
    results: &DemoResults,
    test: &[Scene],
    captions: &BTreeMap<String, Vec<String>>,
) -> Result<()> {
    let json = serde_json::to_string_pretty(results).expect("plain data");
    jsonl::write_atomic(&out.join("results.json"), json.as_bytes())?;
    let config = &results.config;
    let names = method_names(config);

    let mut md = String::from("# TITA in the synthetic world\n\n");
    let _ = writeln!(
        md,
        "Test split: {} images, POPE questions per sampler as in `data/test-*.jsonl`. Accuracy / F1 pooled over the three POPE samplers; CHAIR_i = share of objects mentioned in captions that are not in the image (lower is better), recall = share of present objects mentioned.\n",
        test.len()
    );
    md.push_str("| method | POPE acc | POPE F1 | yes ratio | random acc | popular acc | adversarial acc | CHAIR_i | CHAIR_s | recall |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for n in &names {
        let p = results.pope_overall.get(n).copied().unwrap_or_default();
        let split = |s: &str| {
            results
                .pope
                .get(s)
                .and_then(|r| r.get(n))
                .map_or(f64::NAN, |m| m.accuracy)
        };
        let c = results.chair.get(n).copied().unwrap_or_default();
        let _ = writeln!(
            md,
            "| {n} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            p.accuracy,
            p.f1,
            p.yes_ratio,
            split("test-random"),
            split("test-popular"),
            split("test-adversarial"),
            c.chair_i,
            c.chair_s,
            c.recall
        );
    }
    // The reading of the table, computed, so that it stays true after a retrain.
    let pope = |n: &str| results.pope_overall.get(n).copied().unwrap_or_default();
    let chair = |n: &str| results.chair.get(n).copied().unwrap_or_default();
    let popular = |n: &str| {
        results
            .pope
            .get("test-popular")
            .and_then(|r| r.get(n))
            .map_or(f64::NAN, |m| m.accuracy)
    };
    let best = config
        .lambdas
        .iter()
        .map(|&lambda| Method::Tita { lambda }.name())
        .max_by(|a, b| pope(a).accuracy.total_cmp(&pope(b).accuracy));
    if let Some(b) = best {
        let (t, g) = (pope(&b), pope("greedy"));
        let _ = writeln!(
            md,
            "\nBest TITA λ by pooled POPE accuracy: `{b}`, {:.3} against greedy's {:.3} ({:+.3}; popular split {:+.3}); its captions: CHAIR_i {:.3} against {:.3}, recall {:.3} against {:.3}. `{TARGET_DPO}`: POPE accuracy {:.3}, yes ratio {:.3}.",
            t.accuracy,
            g.accuracy,
            t.accuracy - g.accuracy,
            popular(&b) - popular("greedy"),
            chair(&b).chair_i,
            chair("greedy").chair_i,
            chair(&b).recall,
            chair("greedy").recall,
            pope(TARGET_DPO).accuracy,
            pope(TARGET_DPO).yes_ratio,
        );
    }
    md.push_str("\n`tita-λ`: interpolate fusion with weight λ on the DPO-trained reward model; `reference-α`: log p_target + α (log p_reward − log p_reward-sft); `vcd-α`: visual contrastive decoding against the target on a noised image; `target-dpo`: the target itself DPO-tuned on the reward model's pairs.\n\nPlots: `lambda.png` (POPE accuracy / F1 per sampler and CHAIR against λ), `methods.png` (pooled POPE F1 and CHAIR_i per method).\n");

    // Example images: the first three where greedy hallucinated, else the first three.
    let greedy = &captions["greedy"];
    let mut picks: Vec<usize> = (0..test.len())
        .filter(|&k| !mentioned(&greedy[k]).is_subset(&test[k].present()))
        .take(3)
        .collect();
    for k in 0..test.len() {
        if picks.len() >= 3 {
            break;
        }
        if !picks.contains(&k) {
            picks.push(k);
        }
    }
    let examples = out.join("examples");
    std::fs::create_dir_all(&examples).map_err(|e| Error::io(&examples, e))?;
    md.push_str("\n## Examples\n");
    for k in picks {
        let file = format!("examples/test-{k}.png");
        let big = image::imageops::resize(
            &test[k].image,
            world::SIZE * 4,
            world::SIZE * 4,
            image::imageops::FilterType::Nearest,
        );
        save_png(&big, &out.join(&file))?;
        let _ = writeln!(
            md,
            "\n![test image {k}]({file})\n\ntruth: {}\n\n| method | caption | hallucinated |\n|---|---|---|",
            test[k].caption()
        );
        for n in &names {
            let c = &captions[n][k];
            let wrong: Vec<String> = mentioned(c)
                .difference(&test[k].present())
                .map(Category::name)
                .collect();
            let _ = writeln!(md, "| {n} | {c} | {} |", wrong.join(", "));
        }
    }
    md.push_str("\nSeconds spent answering in this run, per method (sweep methods share one prefill, split evenly):\n\n");
    for (n, s) in &results.seconds {
        let _ = writeln!(md, "- {n}: {s:.1}");
    }
    jsonl::write_atomic(&out.join("report.md"), md.as_bytes())?;
    write_plots(out, results)
}

fn save_png(img: &image::RgbImage, path: &Path) -> Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    jsonl::write_atomic(path, bytes.get_ref())
}

fn write_plots(out: &Path, results: &DemoResults) -> Result<()> {
    let config = &results.config;
    let lambdas: Vec<(f64, String)> = config
        .methods()
        .iter()
        .filter_map(|m| m.lambda().map(|l| (l as f64, m.name())))
        .collect();
    let curve = |name: &str, get: &dyn Fn(&str) -> Option<f64>| Series {
        name: name.into(),
        points: lambdas
            .iter()
            .filter_map(|(l, n)| get(n).map(|v| (*l, v)))
            .collect(),
    };
    let mut panels: Vec<Panel> = SAMPLERS
        .iter()
        .map(|s| {
            let split = format!("test-{s}");
            let metric = |f: fn(&YesNoMetrics) -> f64| {
                let split = split.clone();
                move |n: &str| results.pope.get(&split).and_then(|r| r.get(n)).map(f)
            };
            Panel {
                title: format!("POPE {s}"),
                x_label: "λ (weight of the reward model)".into(),
                y_label: "metric".into(),
                series: vec![
                    curve("accuracy", &metric(|m| m.accuracy)),
                    curve("F1", &metric(|m| m.f1)),
                    curve("yes ratio", &metric(|m| m.yes_ratio)),
                ],
            }
        })
        .collect();
    panels.push(Panel {
        title: "captions".into(),
        x_label: "λ (weight of the reward model)".into(),
        y_label: "rate".into(),
        series: vec![
            curve("CHAIR_i", &|n| results.chair.get(n).map(|c| c.chair_i)),
            curve("CHAIR_s", &|n| results.chair.get(n).map(|c| c.chair_s)),
            curve("recall", &|n| results.chair.get(n).map(|c| c.recall)),
        ],
    });
    line_panels(&out.join("lambda.png"), &panels)?;
    let names = method_names(config);
    let bars = |f: &dyn Fn(&str) -> Option<f64>| -> Vec<(String, f64)> {
        names
            .iter()
            .filter_map(|n| f(n).map(|v| (n.clone(), v)))
            .collect()
    };
    bar_chart(
        &out.join("methods.png"),
        "POPE F1, all samplers pooled (higher is better)",
        "F1",
        &bars(&|n| results.pope_overall.get(n).map(|m| m.f1)),
    )?;
    bar_chart(
        &out.join("chair.png"),
        "CHAIR_i of captions (lower is better)",
        "CHAIR_i",
        &bars(&|n| results.chair.get(n).map(|c| c.chair_i)),
    )
}

/// How far a rerun's metrics may be from the committed ones: greedy answers of the same
/// weights only move if a near-tie flips under another summation order, by 1/count each.
pub const TOLERANCE: f64 = 0.01;

/// Largest absolute difference between the metrics of two results (POPE and CHAIR), with
/// where it is; errors when one has a split or method the other lacks.
pub fn max_difference(
    a: &DemoResults,
    b: &DemoResults,
) -> std::result::Result<(f64, String), String> {
    let mut worst = (0.0f64, String::new());
    let mut see = |what: String, x: f64, y: f64| {
        let d = (x - y).abs();
        if d > worst.0 || worst.1.is_empty() {
            worst = (d, what);
        }
    };
    for (split, row) in &a.pope {
        let other = b.pope.get(split).ok_or(format!("no POPE split {split}"))?;
        for (m, x) in row {
            let y = other.get(m).ok_or(format!("no method {m} on {split}"))?;
            see(format!("{split}/{m}/accuracy"), x.accuracy, y.accuracy);
            see(format!("{split}/{m}/f1"), x.f1, y.f1);
            see(format!("{split}/{m}/yes_ratio"), x.yes_ratio, y.yes_ratio);
        }
    }
    for (m, x) in &a.chair {
        let y = b.chair.get(m).ok_or(format!("no CHAIR of {m}"))?;
        see(format!("chair/{m}/chair_i"), x.chair_i, y.chair_i);
        see(format!("chair/{m}/chair_s"), x.chair_s, y.chair_s);
        see(format!("chair/{m}/recall"), x.recall, y.recall);
    }
    Ok(worst)
}
