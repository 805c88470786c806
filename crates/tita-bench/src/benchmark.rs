//! The `Benchmark` trait: one value per benchmark, so that the runner, the `score` command and
//! (later) the suite go through one interface, and a new benchmark is one file in
//! `benchmarks/` plus its line in [`REGISTRY`].
//!
//! What a benchmark owns:
//! - its data: [`Benchmark::queries`] reads the benchmark's own layout into the questions the
//!   runner asks ([`crate::eval::answer_queries`]), under the ids its answer files carry
//!   (POPE and MME also give yes/no [`Benchmark::question_sets`] with labels);
//! - its prompts: a set question's `text` is the question as the benchmark words it (options
//!   included, for multiple choice); the runner sends `text + "\n" + instruction`, LLaVA's
//!   layout, with [`Benchmark::instruction`] as the default instruction;
//! - its answer reading ([`Benchmark::parse_answer`]) and scoring: [`Benchmark::report_run`]
//!   scores what a run wrote and writes the run's report; [`Benchmark::score`] scores an
//!   answers file in LLaVA's format and prints what the benchmark's official code prints.
//!
//! Room for the benchmarks still to come: free-form answers (VQAv2, GQA, TextVQA) parse to a
//! normalised phrase; multiple choice (MMBench, SEED, ScienceQA) words its options into the
//! question text and parses a letter; judge-scored ones (LLaVA-Bench, MM-Vet) get a [`Judge`]
//! through [`ScoreOptions`]; submission-file outputs (VQAv2 test-dev, MMBench's xlsx) come back
//! as [`Scorecard::files`]. Question ids that are strings in LLaVA's files are the
//! [`QuestionId`] of the answers reader.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use tita_core::{jsonl, Error, Result};

use crate::benchmarks::mmbench::{MMBENCH, MMBENCH_CN};
use crate::benchmarks::{
    gqa::Gqa, llava_bench::LlavaBench, mm_vet::MmVet, mme::Mme, pope::Pope, scienceqa::ScienceQa,
    seed_bench::SeedBench, textvqa::TextVqa, vizwiz::VizWiz, vqav2::Vqav2, yesno::YesNo,
};
use crate::eval::{
    answer_queries, llava_answers, EvalConfig, MethodSpeed, Models, QuerySet, QuestionSet,
    SHORT_ANSWER,
};
use crate::judge::{JudgeError, JudgeReply};

/// Every benchmark the tools know, by [`Benchmark::name`]. A new benchmark adds its line here.
pub static REGISTRY: &[&dyn Benchmark] = &[
    &Pope,
    &Mme,
    &YesNo,
    &Vqav2,
    &Gqa,
    &VizWiz,
    &TextVqa,
    &ScienceQa,
    &SeedBench,
    &MMBENCH,
    &MMBENCH_CN,
    &MmVet,
    &LlavaBench,
];

/// A benchmark: its question sets, prompts, answer reading, scoring and reports.
pub trait Benchmark: Sync {
    /// The registry name (`bench score NAME`, `bench run NAME`).
    fn name(&self) -> &'static str;

    /// The title of a run's report.
    fn title(&self) -> &'static str;

    /// One line for listings: what it is and the layout `--data` expects.
    fn about(&self) -> &'static str;

    /// Appended on a new line to every question unless the run gives its own (LLaVA's
    /// evaluation instruction for this benchmark).
    fn instruction(&self) -> &'static str {
        SHORT_ANSWER
    }

    /// New tokens an answer may take unless the run says otherwise.
    fn max_new_tokens(&self) -> usize {
        16
    }

    /// Yes/no questions with their labels, grouped in sets (a split, a category), images
    /// resolved, for benchmarks whose reports score from labels (POPE, MME); none for others.
    fn question_sets(&self, data: &DataSpec) -> Result<Vec<QuestionSet>> {
        let _ = data;
        Ok(Vec::new())
    }

    /// The questions to ask, grouped in sets, with their ids as the benchmark's answer files
    /// write them; by default those of [`Benchmark::question_sets`].
    fn queries(&self, data: &DataSpec) -> Result<Vec<QuerySet>> {
        Ok(self
            .question_sets(data)?
            .iter()
            .map(QuestionSet::queries)
            .collect())
    }

    /// Whether a [`Judge`] scores it (the suite then scores a run's answers when given one).
    fn judged(&self) -> bool {
        false
    }

    /// The folder under the suite's `--data` that holds this benchmark (LLaVA's
    /// `playground/data/eval/` names).
    fn folder(&self) -> &'static str {
        self.name()
    }

    /// The number the paper's table reports, from [`Benchmark::score`]'s metrics.
    fn headline(&self, metrics: &serde_json::Value) -> Option<Headline> {
        let _ = metrics;
        None
    }

    /// The headline of each method of a finished run in `out` (by method name), read from
    /// what [`Benchmark::report_run`] wrote there; by default [`score_run`]'s results.json.
    fn run_headlines(&self, out: &Path) -> Result<BTreeMap<String, Headline>> {
        let results = tita_core::error::read_json(&out.join("results.json"))?;
        let mut all = BTreeMap::new();
        for (method, entry) in results["methods"].as_object().into_iter().flatten() {
            if let Ok(h) = serde_json::from_value::<Headline>(entry["headline"].clone()) {
                all.insert(method.clone(), h);
            }
        }
        Ok(all)
    }

    /// A model's answer as the official scoring reads it (`yes`/`no`/`other`, an option
    /// letter, a normalised phrase); judge-scored benchmarks keep the text.
    fn parse_answer(&self, text: &str) -> String {
        text.to_string()
    }

    /// Scores what a run wrote (`answers_path(run.out, method, set)` for every method and set
    /// of `run`), writes the run's reports into `run.out`, and returns what the command prints.
    /// By default each method's answers become one LLaVA answers file, scored by
    /// [`Benchmark::score`] against the run's data folder.
    fn report_run(&self, run: &RunOutput) -> Result<String> {
        score_run(self, run)
    }

    /// Scores an answers file in LLaVA's format against the data in `data` (the benchmark's
    /// folder in LLaVA's `playground/data/eval/` layout) as the official code does.
    fn score(&self, data: &Path, answers: &Path, options: &ScoreOptions) -> Result<Scorecard>;
}

/// The registered benchmark called `name`; an unknown name is an error listing the known ones.
pub fn by_name(name: &str) -> Result<&'static dyn Benchmark> {
    REGISTRY
        .iter()
        .copied()
        .find(|b| b.name() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = REGISTRY.iter().map(|b| b.name()).collect();
            Error::argument(
                "benchmark",
                format!("unknown benchmark `{name}`; known: {}", known.join(", ")),
            )
        })
}

/// Where a run's questions come from.
#[derive(Debug, Clone, Default)]
pub struct DataSpec {
    /// The benchmark's folder, or its question files (what each benchmark accepts is in its
    /// [`Benchmark::about`]).
    pub paths: Vec<PathBuf>,
    /// The folder image names are relative to, when not the benchmark's own.
    pub images: Option<PathBuf>,
    /// Only the first N questions of each set.
    pub limit: Option<usize>,
}

impl DataSpec {
    /// The one path a benchmark that reads a single folder or file takes.
    pub fn single(&self, benchmark: &str) -> Result<&Path> {
        match self.paths.as_slice() {
            [one] => Ok(one),
            _ => Err(Error::argument(
                "data",
                format!(
                    "{benchmark} reads one folder or file, {} given",
                    self.paths.len()
                ),
            )),
        }
    }
}

/// What a run left for its benchmark to score and report.
pub struct RunOutput<'a> {
    pub out: &'a Path,
    /// The yes/no sets ([`Benchmark::question_sets`]; empty for other benchmarks).
    pub sets: &'a [QuestionSet],
    /// What was asked.
    pub queries: &'a [QuerySet],
    /// Where the questions came from.
    pub data: &'a DataSpec,
    /// The run's settings, with the template and system message the target used.
    pub config: &'a EvalConfig,
    /// Time of this invocation per method.
    pub speed: BTreeMap<String, MethodSpeed>,
}

/// Answers every question of `data` with every method (appending to the answer files, so a
/// run resumes), then lets the benchmark score and report. Returns what to print; a shard
/// run (`config.shard`) only answers, since its part cannot be scored alone.
pub fn run<B: Backend>(
    benchmark: &dyn Benchmark,
    models: &Models<B>,
    data: &DataSpec,
    out: &Path,
    config: &EvalConfig,
    progress: bool,
) -> Result<String> {
    let sets = benchmark.question_sets(data)?;
    let queries = benchmark.queries(data)?;
    let speed = answer_queries(models, &queries, out, config, progress)?;
    if let Some(shard) = config.shard {
        return Ok(format!(
            "answered shard {}/{} of {}; join the shards with `bench merge {}`, then score",
            shard.index,
            shard.count,
            benchmark.name(),
            benchmark.name()
        ));
    }
    let config = EvalConfig {
        template: models.target.template.name.clone(),
        system: models.target.system.clone(),
        ..config.clone()
    };
    benchmark.report_run(&RunOutput {
        out,
        sets: &sets,
        queries: &queries,
        data,
        config: &config,
        speed,
    })
}

/// A benchmark's main number as published tables give it (e.g. accuracy in %, MME's
/// perception score), with what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Headline {
    pub metric: String,
    pub value: f64,
}

/// An external model that grades answers (LLaVA-Bench, MM-Vet): one chat completion per call
/// ([`crate::judge::HttpJudge`] asks any OpenAI-compatible endpoint).
pub trait Judge {
    /// The model every request names, reported beside the scores.
    fn model(&self) -> &str;

    /// One attempt; a rate limit is told apart from other failures, as the official scripts
    /// handle them differently.
    fn complete(&self, request: &JudgeRequest) -> std::result::Result<JudgeReply, JudgeError>;

    /// Waits before asking again, as the official scripts do (tests may skip the wait).
    fn pause(&self, seconds: f64) {
        std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
    }
}

/// One request to a [`Judge`], with the settings the official scripts pass.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeRequest {
    pub model: String,
    pub system: Option<String>,
    pub user: String,
    pub temperature: f64,
    pub max_tokens: usize,
}

/// What scoring may use besides the data and the answers.
#[derive(Default)]
pub struct ScoreOptions<'a> {
    /// Needed by judge-scored benchmarks, which refuse to score without one.
    pub judge: Option<&'a dyn Judge>,
    /// How many times the judge grades every answer (MM-Vet's `--num_run`; default 1).
    pub judge_runs: Option<usize>,
}

/// The outcome of [`Benchmark::score`].
#[derive(Debug, Clone, PartialEq)]
pub struct Scorecard {
    /// What the official scoring code prints, character for character.
    pub printed: String,
    /// The numbers behind it, named as the official code names them.
    pub metrics: serde_json::Value,
    /// Files the official code writes (converted answers, submission files): path relative
    /// to an output folder, and contents.
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

impl Scorecard {
    /// Writes [`Scorecard::files`] under `dir`.
    pub fn write_files(&self, dir: &Path) -> Result<()> {
        for (name, bytes) in &self.files {
            jsonl::write_atomic(&dir.join(name), bytes)?;
        }
        Ok(())
    }
}

/// A question id as LLaVA's files hold it: a number (POPE) or a string (MME, GQA).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QuestionId {
    Int(i64),
    Str(String),
}

impl fmt::Display for QuestionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuestionId::Int(i) => write!(f, "{i}"),
            QuestionId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// One line of an answers file as LLaVA's `model_vqa*.py` write it (other fields ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaAnswer {
    pub question_id: QuestionId,
    #[serde(default)]
    pub prompt: Option<String>,
    pub text: String,
}

/// Every answer of `path` with its line number.
pub fn read_answers(path: &Path) -> Result<Vec<(usize, LlavaAnswer)>> {
    jsonl::read(path)
}

/// `path`, which must exist, as a directory; the error says what `benchmark` expected there.
pub fn expect_dir(path: &Path, benchmark: &str, layout: &str) -> Result<PathBuf> {
    if path.is_dir() {
        Ok(path.to_path_buf())
    } else {
        Err(Error::checkpoint(
            path,
            format!("not a folder; {benchmark} expects {layout}"),
        ))
    }
}

/// [`Benchmark::report_run`]'s default: every method's answers as one LLaVA answers file
/// (`llava/<method>.jsonl` in the run's folder), scored by the benchmark's official rules;
/// the official output per method goes to `report.md` and the numbers to `results.json`.
pub fn score_run<B: Benchmark + ?Sized>(benchmark: &B, run: &RunOutput) -> Result<String> {
    let data = run.data.single(benchmark.name())?;
    let mut printed = format!("# {}\n", benchmark.title());
    let mut results = serde_json::Map::new();
    for m in &run.config.methods {
        let answers = llava_answers(run.queries, m, run.out)?;
        let card = benchmark.score(data, &answers, &ScoreOptions::default())?;
        card.write_files(&run.out.join("official").join(m.name()))?;
        let headline = benchmark.headline(&card.metrics);
        printed.push_str(&format!("\n## {}\n\n```\n{}```\n", m.name(), card.printed));
        results.insert(
            m.name(),
            serde_json::json!({"headline": headline, "metrics": card.metrics}),
        );
    }
    let results = serde_json::json!({
        "benchmark": benchmark.name(),
        "config": run.config,
        "methods": results,
        "speed": run.speed,
    });
    let text = serde_json::to_string_pretty(&results).map_err(|e| Error::Json {
        path: run.out.join("results.json"),
        source: e,
    })?;
    jsonl::write_atomic(&run.out.join("results.json"), text.as_bytes())?;
    jsonl::write_atomic(&run.out.join("report.md"), printed.as_bytes())?;
    Ok(printed)
}

/// The headline of each method in a run report's JSON (`path`: method, or `method/split`, to
/// that method's numbers), read by `pick`.
pub fn headlines_in(
    path: &Path,
    pick: impl Fn(&serde_json::Value) -> Option<Headline>,
) -> Result<BTreeMap<String, Headline>> {
    let numbers = tita_core::error::read_json(path)?;
    Ok((numbers.as_object().into_iter().flatten())
        .filter_map(|(key, m)| {
            let method = key.split_once('/').map_or(key.as_str(), |(m, _)| m);
            Some((method.to_string(), pick(m)?))
        })
        .collect())
}
