//! `tita-bench`: what `cargo xtask bench` runs.

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use burn::tensor::backend::Backend;
use clap::{Parser, Subcommand};
use tita_bench::benchmark::{self, Benchmark, DataSpec, ScoreOptions};
use tita_bench::demo::{self, DemoConfig};
use tita_bench::eval::{EvalConfig, Method, Models};
use tita_bench::speed::{self, ModelSpec, Preset, SpeedRun};
use tita_core::output::{claim_dir, Claim, Reuse};
use tita_decode::backend::{dispatch, BackendKind, BackendTask};
use tita_decode::Precision;
use tita_decode::{Fusion, Knobs, Pipeline};
use tita_models::ModelConfig;

#[derive(Parser)]
#[command(about = "TITA benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The built-in demo (what `cargo xtask bench` runs): evaluates the committed world models
    /// of every seed and checks the numbers against the committed results; --retrain rebuilds
    /// every model of every seed first; --quick does that at toy scale, for one seed.
    Demo {
        /// The committed demo: config.json and, per seed, seed-N/models and seed-N/results.json.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
        /// Rebuild every model of every seed (about an hour on 2 cores).
        #[arg(long)]
        retrain: bool,
        /// Rebuild at toy scale: checks the pipeline, not the numbers (CI).
        #[arg(long, conflicts_with = "retrain")]
        quick: bool,
        /// Default: bench-out/demo, bench-out/demo-retrain or bench-out/demo-quick.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue the demo --out holds (same settings; finished stages are kept).
        #[arg(long)]
        resume: bool,
        /// Delete what --out holds first.
        #[arg(long)]
        overwrite: bool,
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
    },
    /// POPE (or any {"image","text","label"} JSONL) with several decoding methods side by
    /// side; answers resume (--resume), results.json + report.md + plots under --out.
    #[command(allow_negative_numbers = true)]
    Pope {
        #[command(flatten)]
        run: EvalArgs,
        /// Question files, one per split (comma separated or repeated).
        #[arg(long, value_delimiter = ',', required = true)]
        questions: Vec<PathBuf>,
        /// Only the first N questions of each file.
        #[arg(long, value_parser = tita_core::args::count)]
        limit: Option<usize>,
    },
    /// MME from its release directory, several methods side by side.
    #[command(allow_negative_numbers = true)]
    Mme {
        #[command(flatten)]
        run: EvalArgs,
        /// The release: one folder per category.
        #[arg(long)]
        release: PathBuf,
    },
    /// Any registered benchmark (see `list`), several methods side by side.
    #[command(allow_negative_numbers = true)]
    Run {
        /// The benchmark's name.
        name: String,
        #[command(flatten)]
        run: EvalArgs,
        /// The benchmark's folder (or question files; see `list`), comma separated or repeated.
        #[arg(long, value_delimiter = ',', required = true)]
        data: Vec<PathBuf>,
        /// Only the first N questions of each set.
        #[arg(long, value_parser = tita_core::args::count)]
        limit: Option<usize>,
    },
    /// The paper's table: every benchmark whose folder is under --data (LLaVA's
    /// playground/data/eval layout), every method, one table (suite.md, suite.json, suite.png).
    #[command(allow_negative_numbers = true)]
    Suite {
        #[command(flatten)]
        run: EvalArgs,
        /// The folder holding one folder per benchmark (vqav2, gqa, MME, pope, ...).
        #[arg(long)]
        data: PathBuf,
        /// Only these benchmarks (comma separated; default: every one present).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Scores MM-Vet and LLaVA-Bench too (without one they are answered, not scored).
        #[command(flatten)]
        judge: JudgeArgs,
    },
    /// Scores an answers file in LLaVA's format and prints what the benchmark's official
    /// scoring code prints.
    Score {
        /// The benchmark's name (see `list`).
        name: String,
        /// The benchmark's folder, in LLaVA's `playground/data/eval/` layout.
        #[arg(long)]
        data: PathBuf,
        /// Answers JSONL as LLaVA's model_vqa*.py write it.
        #[arg(long)]
        answers: PathBuf,
        /// Print the numbers as one JSON object instead.
        #[arg(long)]
        json: bool,
        /// Also write the files the official code writes (converted answers, submissions) here.
        /// With a judge they are always written (grades, reviews, every judge request and
        /// reply): here, or by default into --data, where the official scripts put them.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        judge: JudgeArgs,
    },
    /// Joins the answers of `run --shard K/N` runs into one run folder, byte for byte what
    /// one unsharded run writes, and scores it.
    Merge {
        /// The benchmark's name.
        name: String,
        /// The benchmark's folder (as given to the shard runs).
        #[arg(long, value_delimiter = ',', required = true)]
        data: Vec<PathBuf>,
        /// The shard runs' --out folders (comma separated or repeated).
        #[arg(long = "from", value_delimiter = ',', required = true)]
        parts: Vec<PathBuf>,
        /// The merged run's folder.
        #[arg(long)]
        out: PathBuf,
        /// The methods the shards ran, as given to them.
        #[arg(long, value_delimiter = ',', default_value = "greedy")]
        methods: Vec<String>,
        /// The --knob settings the shards ran with.
        #[arg(long = "knob")]
        knobs: Vec<String>,
        /// Replace what --out holds.
        #[arg(long)]
        overwrite: bool,
    },
    /// The registered benchmarks and what --data each expects.
    List,
    /// Score an answers JSONL (this project's or LLaVA's) against POPE questions with the
    /// upstream rule.
    PopeScore {
        /// POPE questions (`coco_pope_{split}.json`) or any {"image","text","label"} JSONL.
        #[arg(long)]
        questions: PathBuf,
        /// Answers JSONL: {"question_id", "text", ...}.
        #[arg(long)]
        answers: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Decode and prefill speed against the memory-bandwidth bound, TITA's cost, and seconds
    /// per POPE-shaped query; on random weights at a preset's shapes or on a checkpoint.
    Speed {
        /// Random weights at these shapes (when no --model is given).
        #[arg(long, value_enum, default_value = "150m")]
        preset: Preset,
        /// A checkpoint directory instead of a preset.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The reward model of the TITA measurements: a checkpoint directory ...
        #[arg(long)]
        reward: Option<PathBuf>,
        /// ... or random weights at these shapes (default: llava-25m for a vision-language
        /// target, 25m otherwise).
        #[arg(long, value_enum)]
        reward_preset: Option<Preset>,
        /// Weights held and computed in: auto (the checkpoint's), f32, f16, bf16.
        #[arg(long, default_value = "f32")]
        dtype: Precision,
        /// Backends to measure in this run (comma separated); default: the first compiled in.
        #[arg(long, value_enum, value_delimiter = ',')]
        backend: Vec<BackendKind>,
        #[arg(long, value_parser = tita_core::args::count, default_value_t = 600)]
        prompt_tokens: usize,
        #[arg(long, value_parser = tita_core::args::count, default_value_t = 32)]
        new_tokens: usize,
        /// Also measure TITA decoding against plain decoding at each --batch.
        #[arg(long)]
        tita: bool,
        /// Batch sizes for --tita.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16", value_parser = tita_core::args::count)]
        batch: Vec<usize>,
        /// Also time POPE-shaped queries (image + question, short answer): greedy, TITA, VCD.
        #[arg(long)]
        pope: bool,
        /// Tokens per POPE answer ("Yes" and the end of the turn).
        #[arg(long, value_parser = tita_core::args::count, default_value_t = 2)]
        answer_tokens: usize,
        /// Measured POPE queries per method (after one warm-up).
        #[arg(long, value_parser = tita_core::args::count, default_value_t = 3)]
        queries: usize,
        /// Directory for results.json, report.md and speed.png.
        #[arg(long, default_value = "bench-out/speed")]
        out: PathBuf,
        /// Replace what an earlier run left in --out.
        #[arg(long)]
        overwrite: bool,
    },
}

#[derive(clap::Args, Clone)]
struct EvalArgs {
    /// Target VLM directory.
    #[arg(long)]
    target: PathBuf,
    /// Reward VLM (TITA methods).
    #[arg(long)]
    reward: Option<PathBuf>,
    /// The reward model's DPO reference (reference methods).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Weights held and computed in: auto (each checkpoint's stored type), f32, f16, bf16.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// Directory the question files' image names are relative to.
    #[arg(long)]
    images: Option<PathBuf>,
    /// greedy, or MODE[:VALUE] with VALUE the mode's first knob: tita:λ (interpolate),
    /// reference:α, vcd:α (contrastive), m3id:λ, marine:γ (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "greedy")]
    methods: Vec<String>,
    /// A knob for every method that takes it, NAME=VALUE (repeatable): e.g.
    /// objects=detections.json (MARINE), m3id_variant=avisc, noise_step=500 (VCD), tau=0.1.
    #[arg(long = "knob")]
    knobs: Vec<String>,
    /// Adds tita:λ for each λ (a sweep; costs about one run).
    #[arg(long, value_delimiter = ',')]
    lambdas: Vec<f32>,
    /// Appended on a new line to each question (default: the benchmark's instruction, for
    /// POPE and MME LLaVA's "Answer the question using a single word or phrase.").
    #[arg(long)]
    suffix: Option<String>,
    /// Default: the benchmark's, as LLaVA's scripts (128 for short answers, 1024 for
    /// ScienceQA, MMBench, MM-Vet and LLaVA-Bench).
    #[arg(long, value_parser = tita_core::args::count)]
    max_new_tokens: Option<usize>,
    /// Questions decoded together per method (padded, masked: the answers are those of
    /// batch 1, which shares prefills across methods instead).
    #[arg(long, default_value_t = 1, value_parser = tita_core::args::count)]
    batch: usize,
    /// Decode every method separately instead of sharing prefills (same answers, slower).
    #[arg(long)]
    no_shortcut: bool,
    /// Do not pad images to squares (LLaVA-1.5's evaluation pads).
    #[arg(long)]
    no_pad: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "bench-out/eval")]
    out: PathBuf,
    /// Continue the evaluation --out holds (same models and settings; answered questions are
    /// not asked again).
    #[arg(long)]
    resume: bool,
    /// Answer only part K of N of every set (K from 0: a Slurm array or Kubernetes indexed
    /// job index), split by question id; join the parts with `merge`.
    #[arg(long, value_parser = tita_bench::eval::Shard::parse)]
    shard: Option<tita_bench::eval::Shard>,
    /// Delete what --out holds first.
    #[arg(long)]
    overwrite: bool,
    /// Conversation template: a built-in name (llava_1_5, llava_v1, vicuna_v1), a .jinja file, a JSON
    /// file with `chat_template`, or a model directory. Default: the target directory's
    /// chat_template, else llava_1_5.
    #[arg(long)]
    template: Option<String>,
    /// A system message before every question.
    #[arg(long)]
    system: Option<String>,
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
}

impl EvalArgs {
    fn config(&self, benchmark: &dyn Benchmark) -> anyhow::Result<EvalConfig> {
        let shared = self.shared_knobs()?;
        let mut methods = self
            .methods
            .iter()
            .map(|m| Method::parse(m, &shared))
            .collect::<tita_core::Result<Vec<_>>>()?;
        for &lambda in &self.lambdas {
            methods.push(Method::parse(&format!("tita:{lambda}"), &shared)?);
        }
        // Answers are filed by method name: the same method twice runs once, two methods
        // under one name would mix their answers.
        let mut kept: Vec<Method> = Vec::new();
        for m in methods {
            match kept.iter().find(|k| k.name() == m.name()) {
                Some(k) if *k != m => bail!(
                    "--methods: two methods are named {} (give them other knobs)",
                    m.name()
                ),
                Some(_) => {}
                None => kept.push(m),
            }
        }
        let methods = kept;
        // A knob no method takes is a typo or a wrong method, not something to ignore.
        for (name, _) in shared.iter().filter(|(name, _)| *name != "noise_seed") {
            let takes = |m: &Method| match m {
                Method::Greedy => false,
                Method::Guided(f) => {
                    Fusion::knobs_of(f.name()).is_some_and(|ks| ks.iter().any(|k| k.name == name))
                }
            };
            if !methods.iter().any(takes) {
                bail!("--knob {name}: no method of --methods takes it");
            }
        }
        Ok(EvalConfig {
            methods,
            suffix: (self.suffix.as_deref())
                .unwrap_or(benchmark.instruction())
                .to_string(),
            max_new_tokens: self.max_new_tokens.unwrap_or(benchmark.max_new_tokens()),
            pad: !self.no_pad,
            shortcut: !self.no_shortcut,
            shard: self.shard,
            batch: self.batch,
            ..EvalConfig::default()
        })
    }

    /// The `--knob`s, with VCD's noise seeded by `--seed` unless a knob says otherwise.
    fn shared_knobs(&self) -> anyhow::Result<Knobs> {
        let mut knobs = Knobs::new().with("noise_seed", Some(self.seed));
        for k in &self.knobs {
            knobs.set_arg(k)?;
        }
        Ok(knobs)
    }
}

/// The models of an evaluation, loaded.
struct Loaded<B: Backend> {
    target: Pipeline<B>,
    reward: Option<Pipeline<B>>,
    reference: Option<Pipeline<B>>,
}

impl<B: Backend> Loaded<B> {
    fn models(&self) -> Models<'_, B> {
        Models {
            target: &self.target,
            reward: self.reward.as_ref(),
            reference: self.reference.as_ref(),
        }
    }
}

impl EvalArgs {
    /// Loads target, reward and reference with the run's dtype, template and system message.
    fn load<B: Backend>(&self, device: &B::Device) -> anyhow::Result<Loaded<B>> {
        let load = |dir: &PathBuf| -> anyhow::Result<Pipeline<B>> {
            let mut p = Pipeline::<B>::load_in(dir, self.dtype, device)?;
            if let Some(spec) = &self.template {
                p.set_template(tita_core::template::ChatTemplate::resolve(spec)?)?;
            }
            p.system = self.system.clone();
            Ok(p)
        };
        Ok(Loaded {
            target: load(&self.target)?,
            reward: self.reward.as_ref().map(load).transpose()?,
            reference: self.reference.as_ref().map(load).transpose()?,
        })
    }
}

/// Loads the models and runs a benchmark's questions.
struct EvalTask {
    run: EvalArgs,
    benchmark: &'static dyn Benchmark,
    data: DataSpec,
}

impl BackendTask for EvalTask {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device, _kind: BackendKind) -> anyhow::Result<()> {
        let a = &self.run;
        let config = a.config(self.benchmark)?;
        let _claim = claim_eval_dir(a, &config)?;
        let loaded = a.load::<B>(&device)?;
        let models = loaded.models();
        let report = benchmark::run(self.benchmark, &models, &self.data, &a.out, &config, true)?;
        println!("{report}");
        eprintln!("-> {}", a.out.display());
        Ok(())
    }
}

/// Loads the models once and runs the suite.
struct SuiteTask {
    run: EvalArgs,
    data: PathBuf,
    only: Vec<String>,
    judge: JudgeArgs,
}

impl BackendTask for SuiteTask {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device, _kind: BackendKind) -> anyhow::Result<()> {
        let a = &self.run;
        let config = a.config(benchmark::by_name("pope")?)?;
        let _claim = claim_eval_dir(a, &config)?;
        let judge = judge_of(&self.judge)?;
        let judging = ScoreOptions {
            judge: judge
                .as_ref()
                .map(|j| j as &dyn tita_bench::benchmark::Judge),
            judge_runs: self.judge.judge_runs,
        };
        let loaded = a.load::<B>(&device)?;
        let models = loaded.models();
        let report = tita_bench::suite::run(
            &models, &self.data, &self.only, &config, &judging, &a.out, true,
        )?;
        if let Some(j) = &judge {
            eprintln!(
                "judge: {} at {}; {}",
                tita_bench::benchmark::Judge::model(j),
                j.endpoint(),
                tita_bench::judge::NOT_COMPARABLE
            );
        }
        println!("{}", tita_bench::suite::table(&report));
        eprintln!("-> {}", a.out.join("suite.md").display());
        let failed: Vec<&str> = (report.benchmarks.iter())
            .filter(|(_, o)| matches!(o, tita_bench::suite::Outcome::Failed { .. }))
            .map(|(n, _)| n.as_str())
            .collect();
        if !failed.is_empty() {
            bail!("failed: {} (see the table)", failed.join(", "));
        }
        Ok(())
    }
}

struct SpeedTask {
    target: ModelSpec,
    reward: ModelSpec,
    dtype: Precision,
    prompt_tokens: usize,
    new_tokens: usize,
    /// Batch sizes of the TITA comparison, if asked for.
    tita: Option<Vec<usize>>,
    /// Answer tokens and queries of the POPE workload, if asked for.
    pope: Option<(usize, usize)>,
}

impl BackendTask for SpeedTask {
    type Output = tita_core::Result<SpeedRun>;
    fn run<B: Backend>(self, device: B::Device, kind: BackendKind) -> Self::Output {
        let on_gpu = matches!(kind, BackendKind::Wgpu | BackendKind::Cuda);
        let (p, n) = (self.prompt_tokens, self.new_tokens);
        let (tname, rname) = (self.target.to_string(), self.reward.to_string());
        let target = self.target.load::<B>(self.dtype, 0, &device)?;
        let decode = speed::run(&target, &tname, kind.feature(), on_gpu, p, n, &device)?;
        println!("{decode}");
        let reward = match (&self.tita, &self.pope) {
            (None, None) => None,
            _ => Some(self.reward.load::<B>(self.dtype, 1, &device)?),
        };
        let tita = match (&self.tita, &reward) {
            (Some(batches), Some(r)) => {
                let t = speed::run_tita(
                    (&target, &tname),
                    (r, &rname),
                    kind.feature(),
                    batches,
                    p,
                    n,
                    &device,
                )?;
                println!("{t}");
                Some(t)
            }
            _ => None,
        };
        let pope = match self.pope {
            Some((answer, queries)) => {
                let r = speed::run_pope(
                    (&target, &tname),
                    reward.as_ref().map(|r| (r, rname.as_str())),
                    kind.feature(),
                    answer,
                    queries,
                    &device,
                )?;
                println!("{r}");
                Some(r)
            }
            None => None,
        };
        Ok(SpeedRun { decode, tita, pope })
    }
}

/// Claims `--out` for this evaluation: refused if it holds another run unless --resume (and
/// then only with the same models and answer-deciding settings, kept in `run.json`) or
/// --overwrite.
fn claim_eval_dir(a: &EvalArgs, config: &EvalConfig) -> anyhow::Result<Claim> {
    let claim = claim_dir(&a.out, Reuse::from_flags(a.resume, a.overwrite)?)?;
    let mut settings = serde_json::json!({
        "target": a.target, "reward": a.reward, "reference": a.reference, "images": a.images,
        "suffix": config.suffix, "max_new_tokens": config.max_new_tokens, "pad": config.pad,
        "knobs": a.shared_knobs()?.to_json(), "seed": a.seed,
        "template": a.template, "system": a.system, "dtype": a.dtype,
    });
    // Only shard runs record one, so folders from before `--shard` still resume.
    if let (Some(shard), Some(o)) = (config.shard, settings.as_object_mut()) {
        o.insert("shard".into(), serde_json::json!(shard));
    }
    let path = a.out.join("run.json");
    if path.is_file() {
        let before = tita_core::error::read_json(&path)?;
        if before != settings {
            bail!(
                "{} holds answers made with other settings ({before}); --resume needs the same ones ({settings}), or use --overwrite",
                a.out.display()
            );
        }
    } else {
        let text = serde_json::to_string_pretty(&settings)?;
        tita_core::jsonl::write_atomic(&path, text.as_bytes())?;
    }
    Ok(claim)
}

/// Reads `name`'s questions (before anything is loaded or written, so bad data fails fast)
/// and runs them.
fn run_eval(run: EvalArgs, name: &str, data: DataSpec) -> anyhow::Result<()> {
    let benchmark = benchmark::by_name(name)?;
    benchmark.queries(&data)?;
    let backend = run.backend;
    let task = EvalTask {
        run,
        benchmark,
        data,
    };
    dispatch(backend, task).map_err(|e| anyhow!(e))?
}

/// `merge`: the shard runs' answers joined into `out`, then scored as one run. Every part's
/// run.json must be the same but for its shard.
fn merge(
    name: &str,
    data: Vec<PathBuf>,
    parts: &[PathBuf],
    out: &std::path::Path,
    methods: &[String],
    knobs: &[String],
    overwrite: bool,
) -> anyhow::Result<()> {
    let benchmark = benchmark::by_name(name)?;
    let data = DataSpec {
        paths: data,
        ..DataSpec::default()
    };
    let mut settings: Option<serde_json::Value> = None;
    for part in parts {
        let mut run = tita_core::error::read_json(&part.join("run.json"))?;
        if let Some(o) = run.as_object_mut() {
            o.remove("shard");
        }
        match &settings {
            None => settings = Some(run),
            Some(first) if *first != run => bail!(
                "{}: its run.json differs from {}'s ({run} vs {first}); the shards of one run share their settings",
                part.display(),
                parts[0].display()
            ),
            Some(_) => {}
        }
    }
    let settings = settings.ok_or_else(|| anyhow!("--from: no shard folders given"))?;
    let mut shared = Knobs::new();
    for k in knobs {
        shared.set_arg(k)?;
    }
    let methods = (methods.iter())
        .map(|m| Method::parse(m, &shared))
        .collect::<tita_core::Result<Vec<_>>>()?;
    let queries = benchmark.queries(&data)?;
    let _claim = claim_dir(out, Reuse::from_flags(false, overwrite)?)?;
    let merged = tita_bench::eval::merge_shards(&queries, &methods, parts, out)?;
    tita_core::jsonl::write_atomic(
        &out.join("run.json"),
        serde_json::to_string_pretty(&settings)?.as_bytes(),
    )?;
    eprintln!(
        "merged {} parts into {}: {:?} answers",
        parts.len(),
        out.display(),
        merged.answers
    );
    let config = EvalConfig {
        methods,
        ..EvalConfig::default()
    };
    let report = benchmark.report_run(&benchmark::RunOutput {
        out,
        sets: &benchmark.question_sets(&data)?,
        queries: &queries,
        data: &data,
        config: &config,
        speed: Default::default(),
    })?;
    println!("{report}");
    Ok(())
}

/// The judge of judge-scored benchmarks (MM-Vet, LLaVA-Bench-in-the-Wild).
#[derive(clap::Args, Debug)]
struct JudgeArgs {
    /// An OpenAI-compatible endpoint: the API base (`https://api.openai.com/v1`, a local
    /// `tita-serve` or vLLM at `http://HOST:PORT/v1`) or its `/chat/completions` URL.
    #[arg(long)]
    judge_url: Option<String>,
    /// The judge model to ask (the official scripts used gpt-4-0613 for MM-Vet and
    /// gpt-4-0314 for LLaVA-Bench); it names the result files.
    #[arg(long)]
    judge_model: Option<String>,
    /// The API key (else $TITA_JUDGE_KEY; local servers need none).
    #[arg(long)]
    judge_key: Option<String>,
    /// How many times the judge grades every answer (MM-Vet's --num_run; its paper used 5).
    #[arg(long, value_parser = tita_core::args::count)]
    judge_runs: Option<usize>,
}

/// The judge the flags name, if any.
fn judge_of(args: &JudgeArgs) -> anyhow::Result<Option<tita_bench::judge::HttpJudge>> {
    Ok(match (&args.judge_url, &args.judge_model) {
        (Some(url), Some(model)) => Some(tita_bench::judge::HttpJudge::new(
            url,
            model,
            tita_bench::judge::HttpJudge::key_or_env(args.judge_key.clone()),
        )),
        (None, None) => None,
        _ => bail!("--judge-url and --judge-model go together"),
    })
}

/// `score`: the official output on stdout (or the numbers as JSON), the official files in --out.
fn score(
    name: &str,
    data: &std::path::Path,
    answers: &std::path::Path,
    json: bool,
    out: Option<PathBuf>,
    judge_args: JudgeArgs,
) -> anyhow::Result<()> {
    let judge = judge_of(&judge_args)?;
    let options = ScoreOptions {
        judge: judge
            .as_ref()
            .map(|j| j as &dyn tita_bench::benchmark::Judge),
        judge_runs: judge_args.judge_runs,
    };
    let card = benchmark::by_name(name)?.score(data, answers, &options)?;
    // Judge calls cost time and money: their record is always kept.
    let out = out.or_else(|| judge.as_ref().map(|_| data.to_path_buf()));
    if let Some(dir) = out {
        card.write_files(&dir)?;
        if let Some(j) = &judge {
            eprintln!(
                "judge: {} at {} ({} calls, every request and reply in {}); {}",
                tita_bench::benchmark::Judge::model(j),
                j.endpoint(),
                card.metrics["judge"]["calls"],
                dir.join(card.metrics["judge"]["calls_file"].as_str().unwrap_or(""))
                    .display(),
                tita_bench::judge::NOT_COMPARABLE
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&card.metrics)?);
    } else {
        print!("{}", card.printed);
    }
    Ok(())
}

/// The demo: evaluate the committed models, or retrain first.
struct DemoTask {
    dir: PathBuf,
    out: PathBuf,
    retrain: Option<DemoConfig>,
    reuse: Reuse,
}

impl BackendTask for DemoTask {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device, _kind: BackendKind) -> anyhow::Result<()> {
        let _claim = claim_dir(&self.out, self.reuse)?;
        match &self.retrain {
            Some(config) => {
                demo::retrain_seeds::<B>(&self.out, config, true, &device)?;
            }
            None => {
                let config: DemoConfig =
                    tita_core::error::read_json_as(&self.dir.join("config.json"))?;
                let (runs, _) =
                    demo::evaluate_seeds::<B>(&self.dir, &self.out, &config, true, &device)?;
                for results in &runs {
                    let seed = results.config.seed;
                    let committed_path = demo::seed_dir(&self.dir, seed).join("results.json");
                    let committed: demo::DemoResults =
                        tita_core::error::read_json_as(&committed_path)?;
                    let (diff, at) = demo::max_difference(results, &committed).map_err(|e| {
                        anyhow!("{} does not match this run: {e}", committed_path.display())
                    })?;
                    let verdict = if diff <= demo::TOLERANCE {
                        "within"
                    } else {
                        "OUTSIDE"
                    };
                    eprintln!(
                        "seed {seed}: largest difference from {}: {diff:.4} ({at}), {verdict} the tolerance of {}",
                        committed_path.display(),
                        demo::TOLERANCE
                    );
                    let new = demo::new_methods(results, &committed);
                    if !new.is_empty() {
                        eprintln!(
                            "seed {seed}: methods not in the committed results: {}",
                            new.join(", ")
                        );
                    }
                }
            }
        }
        println!("{}", std::fs::read_to_string(self.out.join("report.md"))?);
        eprintln!("-> {}", self.out.display());
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo {
            dir,
            retrain,
            quick,
            out,
            resume,
            overwrite,
            backend,
        } => {
            let reuse = Reuse::from_flags(resume, overwrite)?;
            let (retrain, default_out) = if quick {
                (Some(DemoConfig::quick()), "bench-out/demo-quick")
            } else if retrain {
                (Some(DemoConfig::full()), "bench-out/demo-retrain")
            } else {
                (None, "bench-out/demo")
            };
            let out = out.unwrap_or_else(|| default_out.into());
            dispatch(
                backend,
                DemoTask {
                    dir,
                    out,
                    retrain,
                    reuse,
                },
            )
            .map_err(|e| anyhow!(e))??;
        }
        Command::Pope {
            run,
            questions,
            limit,
        } => {
            let images = run.images.clone();
            let data = DataSpec {
                paths: questions,
                images,
                limit,
            };
            run_eval(run, "pope", data)?;
        }
        Command::Mme { run, release } => {
            let images = run.images.clone();
            let data = DataSpec {
                paths: vec![release],
                images,
                limit: None,
            };
            run_eval(run, "mme", data)?;
        }
        Command::Run {
            name,
            run,
            data,
            limit,
        } => {
            let images = run.images.clone();
            let data = DataSpec {
                paths: data,
                images,
                limit,
            };
            run_eval(run, &name, data)?;
        }
        Command::Score {
            name,
            data,
            answers,
            json,
            out,
            judge,
        } => score(&name, &data, &answers, json, out, judge)?,
        Command::Suite {
            run,
            data,
            only,
            judge,
        } => {
            if run.suffix.is_some() || run.max_new_tokens.is_some() || run.shard.is_some() {
                bail!("suite: each benchmark asks with its own instruction and answer length, unsharded; --suffix, --max-new-tokens and --shard are for `run`");
            }
            if !data.is_dir() {
                bail!("--data: {} is not a folder", data.display());
            }
            let backend = run.backend;
            // A judge flag alone is refused before any model loads.
            judge_of(&judge)?;
            dispatch(
                backend,
                SuiteTask {
                    run,
                    data,
                    only,
                    judge,
                },
            )
            .map_err(|e| anyhow!(e))??;
        }
        Command::Merge {
            name,
            data,
            parts,
            out,
            methods,
            knobs,
            overwrite,
        } => merge(&name, data, &parts, &out, &methods, &knobs, overwrite)?,
        Command::List => {
            for b in benchmark::REGISTRY {
                println!("{}\t{}", b.name(), b.about());
            }
        }
        Command::PopeScore {
            questions,
            answers,
            json,
        } => {
            let qs = tita_bench::pope::read_questions(&questions)?;
            let m = tita_bench::pope::score(&qs, &answers)?;
            if json {
                println!("{}", serde_json::to_string(&m)?);
            } else {
                let split = tita_bench::pope::split_name(&questions);
                print!("{}", tita_bench::benchmarks::yesno::table(&split, &m));
            }
        }
        Command::Speed {
            preset,
            model,
            reward,
            reward_preset,
            dtype,
            backend,
            prompt_tokens,
            new_tokens,
            tita,
            batch,
            pope,
            answer_tokens,
            queries,
            out,
            overwrite,
        } => {
            let target = match model {
                Some(dir) => ModelSpec::Dir(dir),
                None => ModelSpec::Preset(preset),
            };
            let target_config = match &target {
                ModelSpec::Preset(p) => p.config(),
                ModelSpec::Dir(d) => ModelConfig::from_file(d)?,
            };
            if pope && matches!(target_config, ModelConfig::Llama(_)) {
                bail!("--pope times image questions: {target} is a text-only model (try --preset llava-150m)");
            }
            // By default a guide of the target's family (its image tokens and vocabulary).
            let reward = match (reward, reward_preset, target_config) {
                (Some(dir), _, _) => ModelSpec::Dir(dir),
                (None, Some(p), _) => ModelSpec::Preset(p),
                (None, None, ModelConfig::Llava(_)) => ModelSpec::Preset(Preset::Llava25m),
                (None, None, ModelConfig::QwenVl(_)) => ModelSpec::Preset(Preset::QwenVl3b),
                (None, None, ModelConfig::Llama(_)) => ModelSpec::Preset(Preset::M25),
                (None, None, ModelConfig::DeepseekVl2(_)) => bail!(
                    "--reward: give a DeepSeek-VL2 reward checkpoint (the family has no preset)"
                ),
            };
            let _claim = claim_dir(&out, Reuse::from_flags(false, overwrite)?)?;
            let kinds: Vec<Option<BackendKind>> = if backend.is_empty() {
                vec![None]
            } else {
                backend.into_iter().map(Some).collect()
            };
            let mut runs = Vec::new();
            for kind in kinds {
                let task = SpeedTask {
                    target: target.clone(),
                    reward: reward.clone(),
                    dtype,
                    prompt_tokens,
                    new_tokens,
                    tita: tita.then(|| batch.clone()),
                    pope: pope.then_some((answer_tokens, queries)),
                };
                runs.push(dispatch(kind, task).map_err(|e| anyhow!(e))??);
            }
            let path = out.join("results.json");
            tita_core::jsonl::write_atomic(&path, serde_json::to_string_pretty(&runs)?.as_bytes())?;
            speed::write_report(&out, &runs)?;
            eprintln!("wrote {}, report.md, speed.png", path.display());
        }
    }
    Ok(())
}
