//! POPE as a [`Benchmark`]: questions from the split files, POPE's answer rule
//! ([`crate::pope`]), and scoring of LLaVA answers files exactly as LLaVA's
//! `llava/eval/eval_pope.py` does it and prints it.
//!
//! eval_pope.py's rules, kept here on purpose: answers are grouped by the `category` their
//! `question_id` has in `llava_pope_test.jsonl` and paired with a split file's labels by
//! order, not by id (a missing answer shifts every later pair); the yes ratio counts every
//! answer of the split, TP/FP/TN/FN only the paired ones.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::json;
use tita_core::{jsonl, Error, Result};

use crate::benchmark::{
    expect_dir, read_answers, Benchmark, DataSpec, Headline, QuestionId, RunOutput, ScoreOptions,
    Scorecard,
};
use crate::benchmarks::yesno::{self, yes_no};
use crate::eval::QuestionSet;
use crate::pope::is_yes;
use crate::python;

pub struct Pope;

fn mean_f1(f1: &[f64]) -> Option<Headline> {
    (!f1.is_empty()).then(|| Headline {
        metric: "F1 × 100, mean of the splits".into(),
        value: 100.0 * f1.iter().sum::<f64>() / f1.len() as f64,
    })
}

const LAYOUT: &str = "LLaVA's POPE folder: coco/coco_pope_{split}.json (labels), \
                      llava_pope_test.jsonl (question ids and splits), val2014/ (images)";

impl Benchmark for Pope {
    fn name(&self) -> &'static str {
        "pope"
    }

    // The `pope` command has always read any yes/no file too, under this title.
    fn title(&self) -> &'static str {
        "POPE / yes-no evaluation"
    }

    fn about(&self) -> &'static str {
        "POPE (Li et al., 2023): --data LLaVA's POPE folder (coco/coco_pope_{split}.json, \
         val2014/, llava_pope_test.jsonl) or split files; score prints eval_pope.py's output"
    }

    // LLaVA's pope.sh / mme.sh leave model_vqa_loader's default.
    fn max_new_tokens(&self) -> usize {
        128
    }

    fn question_sets(&self, data: &DataSpec) -> Result<Vec<QuestionSet>> {
        match data.paths.as_slice() {
            [dir] if dir.is_dir() => {
                let files = split_files(&dir.join("coco"))?;
                let images = data.images.clone().or_else(|| {
                    let own = dir.join("val2014");
                    own.is_dir().then_some(own)
                });
                let paths: Vec<PathBuf> = files.into_iter().map(|(_, p)| p).collect();
                yesno::read_files(
                    &paths,
                    &DataSpec {
                        images,
                        ..data.clone()
                    },
                )
            }
            paths => yesno::read_files(paths, data),
        }
    }

    fn parse_answer(&self, text: &str) -> String {
        yes_no(is_yes(text)).into()
    }

    fn report_run(&self, run: &RunOutput) -> Result<String> {
        yesno::report(self.title(), run, crate::pope::pope_reading)
    }

    // LLaVA's table gives F1 × 100, averaged over the three splits.
    fn headline(&self, metrics: &serde_json::Value) -> Option<Headline> {
        let f1: Vec<f64> = (metrics["per_split"].as_object()?.values())
            .filter_map(|s| s["f1"].as_f64())
            .collect();
        mean_f1(&f1)
    }

    fn run_headlines(&self, out: &Path) -> Result<BTreeMap<String, Headline>> {
        let results = tita_core::error::read_json(&out.join("results.json"))?;
        let mut per_method: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for row in results["sets"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, r)| r)
        {
            for (method, m) in row.as_object().into_iter().flatten() {
                per_method
                    .entry(method.clone())
                    .or_default()
                    .extend(m["f1"].as_f64());
            }
        }
        Ok(per_method
            .into_iter()
            .filter_map(|(m, f1)| Some((m, mean_f1(&f1)?)))
            .collect())
    }

    fn score(&self, data: &Path, answers: &Path, _: &ScoreOptions) -> Result<Scorecard> {
        let dir = expect_dir(data, "pope", LAYOUT)?;
        let question_file = dir.join("llava_pope_test.jsonl");
        let (category_of, order) = read_categories(&question_file)?;
        let mut splits = split_files(&expect_dir(&dir.join("coco"), "pope", LAYOUT)?)?;
        // eval_pope.py walks os.listdir's order, which depends on the file system; the
        // question file's order is stable and is what LLaVA's own run printed.
        splits.sort_by_key(|(c, _)| {
            (
                order.iter().position(|o| o == c).unwrap_or(usize::MAX),
                c.clone(),
            )
        });

        // Every answer's split is looked up before anything is printed, as in eval_pope.py.
        let mut by_split: HashMap<&str, Vec<(&QuestionId, bool)>> = HashMap::new();
        let all = read_answers(answers)?;
        for (line, a) in &all {
            let category = category_of.get(&a.question_id).ok_or_else(|| {
                Error::data(
                    answers,
                    *line,
                    format!(
                        "question_id {} is not in {}",
                        a.question_id,
                        question_file.display()
                    ),
                )
            })?;
            by_split
                .entry(category)
                .or_default()
                .push((&a.question_id, is_yes(&a.text)));
        }
        let mut printed = String::new();
        let mut per_split = serde_json::Map::new();
        for (category, path) in &splits {
            let preds = by_split.get(category.as_str()).map_or(&[][..], |v| v);
            printed.push_str(&format!(
                "Category: {category}, # samples: {}\n",
                preds.len()
            ));
            let labels = read_labels(path)?;
            let (text, metrics) = split_score(category, preds, &labels, answers)?;
            printed.push_str(&text);
            printed.push_str("====================================\n");
            per_split.insert(category.clone(), metrics);
        }
        Ok(Scorecard {
            printed,
            metrics: json!({ "per_split": per_split }),
            files: Vec::new(),
        })
    }
}

/// `(split, path)` of every `coco_pope_{split}.json` in `dir`, in name order; any other file
/// is an error, as it is for eval_pope.py.
fn split_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let split = name
            .strip_prefix("coco_pope_")
            .and_then(|n| n.strip_suffix(".json"))
            .ok_or_else(|| {
                Error::checkpoint(
                    &path,
                    "not a coco_pope_{split}.json file: eval_pope.py takes every file of this folder for a split",
                )
            })?;
        out.push((split.to_string(), path));
    }
    if out.is_empty() {
        return Err(Error::checkpoint(
            dir,
            "no coco_pope_{split}.json files here",
        ));
    }
    out.sort();
    Ok(out)
}

#[derive(Deserialize)]
struct LlavaQuestion {
    question_id: QuestionId,
    category: String,
}

/// The split of every question id, and the splits in order of first appearance.
fn read_categories(path: &Path) -> Result<(HashMap<QuestionId, String>, Vec<String>)> {
    let mut of = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for (_, q) in jsonl::read::<LlavaQuestion>(path)? {
        if !order.contains(&q.category) {
            order.push(q.category.clone());
        }
        of.insert(q.question_id, q.category);
    }
    Ok((of, order))
}

#[derive(Deserialize)]
struct Label {
    label: String,
}

/// A split file's labels in order (true = yes). eval_pope.py reads anything but `no` as yes;
/// a label other than `yes`/`no` is refused here rather than scored silently.
fn read_labels(path: &Path) -> Result<Vec<bool>> {
    jsonl::read::<Label>(path)?
        .into_iter()
        .map(|(line, l)| match l.label.as_str() {
            "yes" => Ok(true),
            "no" => Ok(false),
            other => Err(Error::data(
                path,
                line,
                format!("field `label`: expected \"yes\" or \"no\", found {other:?}"),
            )),
        })
        .collect()
}

/// eval_pope.py's `eval_pope` on one split: its printed lines and its numbers. A division by
/// zero (no answers, no yes answer, no yes label) stops it with ZeroDivisionError; here it is
/// an error naming the split.
fn split_score(
    split: &str,
    preds: &[(&QuestionId, bool)],
    labels: &[bool],
    answers: &Path,
) -> Result<(String, serde_json::Value)> {
    let (mut tp, mut fp, mut tn, mut fun) = (0usize, 0usize, 0usize, 0usize);
    for (&(_, pred), &label) in preds.iter().zip(labels) {
        match (pred, label) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fun += 1,
        }
    }
    let yes = preds.iter().filter(|(_, p)| *p).count();
    let div = |what: &str, a: f64, b: f64| -> Result<f64> {
        if b == 0.0 {
            Err(Error::checkpoint(
                answers,
                format!("split `{split}`: {what} divides by zero ({tp} TP, {fp} FP, {tn} TN, {fun} FN, {} answers); eval_pope.py stops here with ZeroDivisionError", preds.len()),
            ))
        } else {
            Ok(a / b)
        }
    };
    let yes_ratio = div("the yes ratio", yes as f64, preds.len() as f64)?;
    let precision = div("precision", tp as f64, (tp + fp) as f64)?;
    let recall = div("recall", tp as f64, (tp + fun) as f64)?;
    let f1 = div("F1", 2.0 * precision * recall, precision + recall)?;
    let acc = div("accuracy", (tp + tn) as f64, (tp + tn + fp + fun) as f64)?;
    let summary = format!("{f1:.3}, {acc:.3}, {precision:.3}, {recall:.3}, {yes_ratio:.3}");
    let f = python::float;
    let text = format!(
        "TP\tFP\tTN\tFN\t\n{tp}\t{fp}\t{tn}\t{fun}\nAccuracy: {}\nPrecision: {}\nRecall: {}\nF1 score: {}\nYes ratio: {}\n{summary}\n",
        f(acc),
        f(precision),
        f(recall),
        f(f1),
        f(yes_ratio)
    );
    let parsed: serde_json::Map<String, serde_json::Value> = preds
        .iter()
        .map(|(id, p)| (id_key(id), yes_no(*p).into()))
        .collect();
    let metrics = json!({
        "samples": preds.len(), "TP": tp, "FP": fp, "TN": tn, "FN": fun,
        "accuracy": acc, "precision": precision, "recall": recall, "f1": f1,
        "yes_ratio": yes_ratio, "summary_line": summary, "parsed": parsed,
    });
    Ok((text, metrics))
}

/// A question id as a JSON object key.
fn id_key(id: &QuestionId) -> String {
    match id {
        QuestionId::Int(i) => i.to_string(),
        QuestionId::Str(s) => s.clone(),
    }
}
