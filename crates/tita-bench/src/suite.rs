//! The paper's table in one run: every registered benchmark whose folder is under the suite's
//! data root, answered by every method with one load of the models, each scored by its
//! official rules, then one table of benchmark × method (markdown, JSON and a plot) with each
//! method's difference from the first. A benchmark without its folder is listed as missing,
//! never as 0; one that fails is listed with its error while the others go on (its answers
//! stay on disk, so a rerun with `--resume` continues it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::Serialize;
use tita_core::{jsonl, Error, Result};

use crate::benchmark::{self, Benchmark, DataSpec, Headline, Judge, ScoreOptions, REGISTRY};
use crate::eval::{llava_answers, EvalConfig, Models};

/// How one benchmark of the suite went.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Scored: the headline per method.
    Scored {
        metric: String,
        values: BTreeMap<String, f64>,
    },
    /// Answered, but no number came out: a judge-scored benchmark (score its answers with
    /// `bench score NAME --judge-url ...`) or a split without ground truth (a test split).
    Unscored { answers: PathBuf },
    /// No folder for it under the data root.
    Missing { expected: PathBuf },
    /// It ran into an error (message kept).
    Failed { error: String },
}

/// The suite's result: one outcome per benchmark, in registry order.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub methods: Vec<String>,
    /// The judge model that scored the judge-scored benchmarks, if one was given.
    pub judge: Option<String>,
    pub benchmarks: Vec<(String, Outcome)>,
}

/// The benchmarks the suite covers: every registered one but the generic yes/no reader.
pub fn benchmarks() -> impl Iterator<Item = &'static dyn Benchmark> {
    REGISTRY.iter().copied().filter(|b| b.name() != "yesno")
}

/// Where `benchmark`'s folder is under `root`: its LLaVA folder name, else its own name.
fn folder_of(benchmark: &dyn Benchmark, root: &Path) -> Option<PathBuf> {
    [benchmark.folder(), benchmark.name()]
        .iter()
        .map(|f| root.join(f))
        .find(|p| p.is_dir())
}

/// Runs every benchmark present under `root` (or only those named in `only`) with the methods
/// of `config` (its instruction and answer length per benchmark: each benchmark's own), each
/// into `out/<name>`, and writes `suite.md`, `suite.json` and `suite.png` into `out`. With a
/// judge in `judging`, the judge-scored benchmarks are scored too (their official files, every
/// judge request and reply included, in `out/<name>/judged/<method>/`).
pub fn run<B: Backend>(
    models: &Models<B>,
    root: &Path,
    only: &[String],
    config: &EvalConfig,
    judging: &ScoreOptions,
    out: &Path,
    progress: bool,
) -> Result<SuiteReport> {
    for name in only {
        benchmark::by_name(name)?;
    }
    let mut rows = Vec::new();
    for b in benchmarks().filter(|b| only.is_empty() || only.iter().any(|n| n == b.name())) {
        let Some(dir) = folder_of(b, root) else {
            rows.push((
                b.name().to_string(),
                Outcome::Missing {
                    expected: root.join(b.folder()),
                },
            ));
            continue;
        };
        let config = EvalConfig {
            suffix: b.instruction().to_string(),
            max_new_tokens: b.max_new_tokens(),
            ..config.clone()
        };
        let data = DataSpec {
            paths: vec![dir],
            ..DataSpec::default()
        };
        let dest = out.join(b.name());
        let outcome = benchmark::run(b, models, &data, &dest, &config, progress)
            .and_then(|_| match judging.judge {
                Some(judge) if b.judged() => {
                    judged_headlines(b, judge, judging, &data, &dest, &config)
                }
                _ => b.run_headlines(&dest),
            })
            .map(|h| match h.is_empty() {
                true => Outcome::Unscored {
                    answers: dest.join("answers"),
                },
                false => scored(&h),
            });
        rows.push((
            b.name().to_string(),
            outcome.unwrap_or_else(|e| Outcome::Failed {
                error: e.to_string(),
            }),
        ));
    }
    let report = SuiteReport {
        methods: config.methods.iter().map(|m| m.name()).collect(),
        judge: judging.judge.map(|j| j.model().to_string()),
        benchmarks: rows,
    };
    write(&report, out)?;
    Ok(report)
}

/// Each method's answers of a finished run in `dest` scored by `judge` as `score` does it.
fn judged_headlines(
    b: &dyn Benchmark,
    judge: &dyn Judge,
    judging: &ScoreOptions,
    data: &DataSpec,
    dest: &Path,
    config: &EvalConfig,
) -> Result<BTreeMap<String, Headline>> {
    let queries = b.queries(data)?;
    let dir = data.single(b.name())?;
    let mut all = BTreeMap::new();
    for m in &config.methods {
        let answers = llava_answers(&queries, m, dest)?;
        let card = b.score(dir, &answers, judging)?;
        card.write_files(&dest.join("judged").join(m.name()))?;
        if let Some(h) = b.headline(&card.metrics) {
            let metric = format!("{}, judge {}", h.metric, judge.model());
            all.insert(m.name(), Headline { metric, ..h });
        }
    }
    Ok(all)
}

fn scored(headlines: &BTreeMap<String, Headline>) -> Outcome {
    Outcome::Scored {
        metric: headlines
            .values()
            .next()
            .map_or_else(String::new, |h| h.metric.clone()),
        values: headlines
            .iter()
            .map(|(m, h)| (m.clone(), h.value))
            .collect(),
    }
}

/// The table: a row per benchmark, a column per method, then each method's difference from
/// the first method.
pub fn table(report: &SuiteReport) -> String {
    let methods = &report.methods;
    let mut md = String::from("| benchmark | metric |");
    for m in methods {
        let _ = write!(md, " {m} |");
    }
    for m in methods.iter().skip(1) {
        let _ = write!(md, " {m} − {} |", methods[0]);
    }
    let columns = methods.len() + methods.len().saturating_sub(1);
    md.push_str("\n|---|---|");
    md.push_str(&"---|".repeat(columns));
    md.push('\n');
    for (name, outcome) in &report.benchmarks {
        match outcome {
            Outcome::Scored { metric, values } => {
                let _ = write!(md, "| {name} | {metric} |");
                let cell = |m: &String| values.get(m).map_or("–".into(), |v| format!("{v:.2}"));
                for m in methods {
                    let _ = write!(md, " {} |", cell(m));
                }
                for m in methods.iter().skip(1) {
                    let diff = values
                        .get(m)
                        .zip(values.get(&methods[0]))
                        .map_or("–".into(), |(a, b)| format!("{:+.2}", a - b));
                    let _ = write!(md, " {diff} |");
                }
            }
            Outcome::Unscored { answers } => {
                let _ = write!(
                    md,
                    "| {name} | answered, not scored here (judge-scored or no ground truth): {} |",
                    answers.display()
                );
            }
            Outcome::Missing { expected } => {
                let _ = write!(md, "| {name} | missing: no {} |", expected.display());
            }
            Outcome::Failed { error } => {
                let _ = write!(md, "| {name} | failed: {} |", error.replace('|', "\\|"));
            }
        }
        md.push('\n');
    }
    md
}

fn write(report: &SuiteReport, out: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(report).map_err(|e| Error::Json {
        path: out.join("suite.json"),
        source: e,
    })?;
    jsonl::write_atomic(&out.join("suite.json"), json.as_bytes())?;
    let md = format!(
        "# Benchmark suite\n\nEach benchmark scored by its official rules; `–` where a method has no \
         score. Judge-scored benchmarks name their judge: scores from different judges are not \
         comparable.{}\n\n{}",
        report
            .judge
            .as_ref()
            .map_or(String::new(), |j| format!(" Judge: {j}.")),
        table(report)
    );
    jsonl::write_atomic(&out.join("suite.md"), md.as_bytes())?;
    // The plot: each method's difference from the first, per benchmark.
    let Some(first) = report.methods.first() else {
        return Ok(());
    };
    let mut bars = Vec::new();
    for (name, outcome) in &report.benchmarks {
        if let Outcome::Scored { values, .. } = outcome {
            for m in report.methods.iter().skip(1) {
                if let (Some(a), Some(b)) = (values.get(m), values.get(first)) {
                    bars.push((format!("{name} {m}"), a - b));
                }
            }
        }
    }
    if !bars.is_empty() {
        tita_core::plot::bar_chart(
            &out.join("suite.png"),
            &format!("difference from {first}"),
            "headline difference",
            &bars,
        )?;
    }
    Ok(())
}
