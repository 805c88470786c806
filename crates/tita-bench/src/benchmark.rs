//! The `Benchmark` trait: one value per benchmark, so that the runner, the `score` command and
//! (later) the suite go through one interface, and a new benchmark is one file in
//! `benchmarks/` plus its line in [`REGISTRY`].
//!
//! What a benchmark owns:
//! - its data: [`Benchmark::question_sets`] reads the benchmark's own layout into the question
//!   sets the runner asks ([`crate::eval::answer_all`]);
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
use serde::Deserialize;
use tita_core::{jsonl, Error, Result};

use crate::benchmarks::{
    llava_bench::LlavaBench, mm_vet::MmVet, mme::Mme, pope::Pope, yesno::YesNo,
};
use crate::eval::{answer_all, EvalConfig, MethodSpeed, Models, QuestionSet, SHORT_ANSWER};
use crate::judge::{JudgeError, JudgeReply};

/// Every benchmark the tools know, by [`Benchmark::name`]. A new benchmark adds its line here.
pub static REGISTRY: &[&dyn Benchmark] = &[&Pope, &Mme, &YesNo, &MmVet, &LlavaBench];

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

    /// The questions to ask, grouped in sets (a split, a category), images resolved.
    fn question_sets(&self, data: &DataSpec) -> Result<Vec<QuestionSet>>;

    /// A model's answer as the official scoring reads it (`yes`/`no`/`other`, an option
    /// letter, a normalised phrase); judge-scored benchmarks keep the text.
    fn parse_answer(&self, text: &str) -> String {
        text.to_string()
    }

    /// Scores what a run wrote (`answers_path(run.out, method, set)` for every method and set
    /// of `run`), writes the run's reports into `run.out`, and returns what the command prints.
    fn report_run(&self, run: &RunOutput) -> Result<String>;

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
    pub sets: &'a [QuestionSet],
    /// The run's settings, with the template and system message the target used.
    pub config: &'a EvalConfig,
    /// Time of this invocation per method.
    pub speed: BTreeMap<String, MethodSpeed>,
}

/// Answers every question of `sets` with every method (appending to the answer files, so a
/// run resumes), then lets the benchmark score and report. Returns what to print.
pub fn run<B: Backend>(
    benchmark: &dyn Benchmark,
    models: &Models<B>,
    sets: &[QuestionSet],
    out: &Path,
    config: &EvalConfig,
    progress: bool,
) -> Result<String> {
    let speed = answer_all(models, sets, out, config, progress)?;
    let config = EvalConfig {
        template: models.target.template.name.clone(),
        system: models.target.system.clone(),
        ..config.clone()
    };
    benchmark.report_run(&RunOutput {
        out,
        sets,
        config: &config,
        speed,
    })
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
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
