//! Results of a yes/no evaluation as a person reads them: `results.json`, `report.md` and PNG
//! plots (metrics against λ per question set; generated tokens/s per method).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use tita_core::plot::{bar_chart, line_panels, Panel, Series};
use tita_core::{jsonl, Result};

use crate::eval::{answers_path, EvalConfig, Method, MethodSpeed, QuestionSet};
use crate::pope::{judge_as, Reading, YesNoMetrics};

#[derive(Debug, Clone, Serialize)]
pub struct EvalResults {
    pub config: EvalConfig,
    /// metrics[set][method]
    pub sets: BTreeMap<String, BTreeMap<String, YesNoMetrics>>,
    /// All sets pooled, per method.
    pub overall: BTreeMap<String, YesNoMetrics>,
    /// Time of this invocation per method (a resumed run only counts what it answered).
    pub speed: BTreeMap<String, MethodSpeed>,
}

/// Scores every method's answer files.
pub fn score_all(
    out: &Path,
    sets: &[QuestionSet],
    config: &EvalConfig,
    speed: BTreeMap<String, MethodSpeed>,
    read: Reading,
) -> Result<EvalResults> {
    let mut per_set = BTreeMap::new();
    let mut pooled: BTreeMap<String, Vec<(bool, bool)>> = BTreeMap::new();
    for set in sets {
        let mut row = BTreeMap::new();
        for m in &config.methods {
            let pairs = judge_as(&set.questions, &answers_path(out, m, &set.name), read)?;
            row.insert(m.name(), YesNoMetrics::from_pairs(pairs.iter().copied()));
            pooled.entry(m.name()).or_default().extend(pairs);
        }
        per_set.insert(set.name.clone(), row);
    }
    let overall = pooled
        .into_iter()
        .map(|(k, v)| (k, YesNoMetrics::from_pairs(v)))
        .collect();
    Ok(EvalResults {
        config: config.clone(),
        sets: per_set,
        overall,
        speed,
    })
}

fn table(
    out: &mut String,
    title: &str,
    methods: &[Method],
    metrics: &BTreeMap<String, YesNoMetrics>,
) {
    let _ = writeln!(out, "### {title}\n\n| method | accuracy | precision | recall | F1 | yes ratio | n |\n|---|---|---|---|---|---|---|");
    for m in methods {
        if let Some(x) = metrics.get(&m.name()) {
            let _ = writeln!(
                out,
                "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} |",
                m.name(),
                x.accuracy,
                x.precision,
                x.recall,
                x.f1,
                x.yes_ratio,
                x.count
            );
        }
    }
    out.push('\n');
}

/// Writes `results.json`, `report.md`, `lambda.png` (when two or more λ were run) and
/// `speed.png` into `out`.
pub fn write_reports(out: &Path, title: &str, results: &EvalResults) -> Result<()> {
    let methods = &results.config.methods;
    let json = serde_json::to_string_pretty(results).expect("plain data");
    jsonl::write_atomic(&out.join("results.json"), json.as_bytes())?;

    let mut md = format!("# {title}\n\n");
    for (set, metrics) in &results.sets {
        table(&mut md, set, methods, metrics);
    }
    if results.sets.len() > 1 {
        table(&mut md, "all sets pooled", methods, &results.overall);
    }
    let _ = writeln!(md, "### speed (this invocation)\n\n| method | answers | generated tokens | seconds | tokens/s |\n|---|---|---|---|---|");
    for (name, s) in &results.speed {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {:.1} | {:.2} |",
            s.answers,
            s.generated_tokens,
            s.seconds,
            s.tokens_per_s()
        );
    }
    if results.config.shortcut {
        md.push_str("\nGreedy, interpolate and reference methods share one prefill per question (exact), so their time is split evenly.\n");
    }
    md.push_str("\nPlots: `lambda.png` (metrics against λ; λ = 0 is greedy), `speed.png`.\n");
    jsonl::write_atomic(&out.join("report.md"), md.as_bytes())?;

    let lambdas: Vec<(f32, String)> = methods
        .iter()
        .filter_map(|m| m.lambda().map(|l| (l, m.name())))
        .collect();
    if lambdas.len() >= 2 {
        let mut panels = Vec::new();
        let mut sets: Vec<(&String, &BTreeMap<String, YesNoMetrics>)> =
            results.sets.iter().collect();
        let all = "all".to_string();
        if results.sets.len() > 1 {
            sets.push((&all, &results.overall));
        }
        for (set, metrics) in sets {
            let series = |label: &str, f: fn(&YesNoMetrics) -> f64| Series {
                name: label.into(),
                points: {
                    let mut p: Vec<(f64, f64)> = lambdas
                        .iter()
                        .filter_map(|(l, n)| metrics.get(n).map(|x| (*l as f64, f(x))))
                        .collect();
                    p.sort_by(|a, b| a.0.total_cmp(&b.0));
                    p
                },
            };
            panels.push(Panel {
                title: set.clone(),
                x_label: "λ (weight of the reward model)".into(),
                y_label: "metric".into(),
                series: vec![
                    series("accuracy", |x| x.accuracy),
                    series("F1", |x| x.f1),
                    series("yes ratio", |x| x.yes_ratio),
                ],
            });
        }
        line_panels(&out.join("lambda.png"), &panels)?;
    }
    if !results.speed.is_empty() {
        let bars: Vec<(String, f64)> = results
            .speed
            .iter()
            .map(|(n, s)| (n.clone(), s.tokens_per_s()))
            .collect();
        bar_chart(
            &out.join("speed.png"),
            "generated tokens/s per method",
            "tokens/s",
            &bars,
        )?;
    }
    Ok(())
}

/// Answers, scores and reports in one call: what `tita-bench pope` runs.
pub fn evaluate<B: burn::tensor::backend::Backend>(
    models: &crate::eval::Models<B>,
    sets: &[QuestionSet],
    out: &Path,
    config: &EvalConfig,
    progress: bool,
    title: &str,
) -> Result<EvalResults> {
    let speed = crate::eval::answer_all(models, sets, out, config, progress)?;
    let config = &EvalConfig {
        template: models.target.template.name.clone(),
        system: models.target.system.clone(),
        ..config.clone()
    };
    let results = score_all(out, sets, config, speed, crate::pope::pope_reading)?;
    write_reports(out, title, &results)?;
    Ok(results)
}
