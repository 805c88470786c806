//! MME as a [`Benchmark`]: the release's categories as question sets ([`crate::mme`]), the
//! yes/no report plus MME's perception/cognition scores for a run, and scoring of LLaVA
//! answers files as LLaVA's `convert_answer_to_mme.py` followed by MME's
//! `eval_tool/calculation.py` does it and prints it.
//!
//! The official rules, kept here on purpose (the run report's [`crate::mme::score`] keeps the
//! project's earlier reading): answers are matched to the ground truth by (category, the
//! image's txt file, question text); accuracy+ pairs consecutive answers of a category, not
//! answers of one image; a prediction is read from its first four characters without trimming;
//! a task's score is `acc·100 + acc_plus·100` in that order (so 99.99999999999999, not 100).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::json;
use tita_core::{Error, Result};

use crate::benchmark::{
    expect_dir, read_answers, Benchmark, DataSpec, Headline, LlavaAnswer, RunOutput, ScoreOptions,
    Scorecard,
};
use crate::benchmarks::yesno;
use crate::eval::QuestionSet;
use crate::mme::{self as rules, MmeQuestion, COGNITION, PERCEPTION};
use crate::python;

pub struct Mme;

fn perception(value: f64) -> Option<Headline> {
    Some(Headline {
        metric: "perception score".into(),
        value,
    })
}

/// The release folder's name inside LLaVA's `playground/data/eval/MME/`.
const RELEASE: &str = "MME_Benchmark_release_version";
const SHORT: &str = "Answer the question using a single word or phrase.";
const YES_NO: &str = "Please answer yes or no.";

impl Benchmark for Mme {
    fn name(&self) -> &'static str {
        "mme"
    }

    fn title(&self) -> &'static str {
        "MME"
    }

    fn folder(&self) -> &'static str {
        "MME"
    }

    fn about(&self) -> &'static str {
        "MME (Fu et al., 2023): --data LLaVA's MME folder (MME_Benchmark_release_version/) or \
         the release itself; score prints convert_answer_to_mme.py + calculation.py's output"
    }

    // LLaVA's pope.sh / mme.sh leave model_vqa_loader's default.
    fn max_new_tokens(&self) -> usize {
        128
    }

    fn question_sets(&self, data: &DataSpec) -> Result<Vec<QuestionSet>> {
        if data.limit.is_some() {
            // accuracy+ needs both questions of every image.
            return Err(Error::argument(
                "limit",
                "MME is scored on whole categories",
            ));
        }
        let questions = rules::read_release(&release_root(data.single("mme")?))?;
        Ok(rules::question_sets(&questions))
    }

    fn parse_answer(&self, text: &str) -> String {
        rules::parse_prediction(text).into()
    }

    /// The yes/no report, plus MME's scores per method (`mme.json`, a table in `report.md`,
    /// printed before the report).
    fn report_run(&self, run: &RunOutput) -> Result<String> {
        // The yes/no table reads answers as MME does, so that it agrees with the scores.
        let report = yesno::report(self.title(), run, mme_reading)?;
        let scores = rules::score_methods(&questions_of(run.sets), run.out, &run.config.methods)?;
        let json = serde_json::to_string_pretty(&scores).expect("plain data");
        tita_core::jsonl::write_atomic(&run.out.join("mme.json"), json.as_bytes())?;
        let mut md =
            String::from("\n## MME scores\n\n| method | perception | cognition |\n|---|---|---|\n");
        for (m, s) in &scores {
            md.push_str(&format!(
                "| {m} | {:.2} | {:.2} |\n",
                s.perception, s.cognition
            ));
        }
        let path = run.out.join("report.md");
        let full = report + &md;
        tita_core::jsonl::write_atomic(&path, full.as_bytes())?;
        Ok(format!("{md}{full}"))
    }

    // LLaVA's table gives the perception total.
    fn headline(&self, metrics: &serde_json::Value) -> Option<Headline> {
        perception(metrics["totals"]["Perception"].as_f64()?)
    }

    fn run_headlines(&self, out: &Path) -> Result<BTreeMap<String, Headline>> {
        let scores = tita_core::error::read_json(&out.join("mme.json"))?;
        Ok((scores.as_object().into_iter().flatten())
            .filter_map(|(m, s)| Some((m.clone(), perception(s["perception"].as_f64()?)?)))
            .collect())
    }

    fn score(&self, data: &Path, answers: &Path, _: &ScoreOptions) -> Result<Scorecard> {
        let root = release_root(&expect_dir(data, "mme", "LLaVA's MME folder")?);
        let truth = ground_truth(&root)?;
        let experiment = answers
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("answers");
        let converted = convert(&truth, answers)?;
        let mut files = Vec::new();
        for (category, rows) in &converted {
            let text: String = rows.iter().map(|r| r.line()).collect();
            let name = PathBuf::from(format!("eval_tool/answers/{experiment}/{category}.txt"));
            files.push((name, text.into_bytes()));
        }
        let (printed, metrics) = calculation(&converted, answers)?;
        Ok(Scorecard {
            printed,
            metrics,
            files,
        })
    }
}

/// MME's reading of an answer: yes, no, or "other" (wrong either way).
fn mme_reading(text: &str) -> Option<bool> {
    match rules::parse_prediction(text) {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// `dir`, or its `MME_Benchmark_release_version/` when it is LLaVA's MME folder.
fn release_root(dir: &Path) -> PathBuf {
    let inner = dir.join(RELEASE);
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}

/// The run's questions back from its question sets (one per category, release order).
fn questions_of(sets: &[QuestionSet]) -> Vec<MmeQuestion> {
    sets.iter()
        .flat_map(|s| {
            s.questions
                .iter()
                .zip(&s.images)
                .map(|(q, image)| MmeQuestion {
                    category: s.name.clone(),
                    image: image.clone(),
                    image_name: q.image.clone(),
                    question: q.text.clone(),
                    answer: q.label.clone(),
                })
        })
        .collect()
}

/// The converter's ground truth: (category, txt file name, question) -> answer as written.
type Truth = HashMap<(String, String, String), String>;

fn ground_truth(root: &Path) -> Result<Truth> {
    let mut truth = Truth::new();
    for category in sorted_entries(root)? {
        let dir = root.join(&category);
        if !dir.is_dir() {
            continue;
        }
        // Categories with an `images/` folder keep their txt files apart.
        let qa = if dir.join("images").exists() {
            dir.join("questions_answers_YN")
        } else {
            dir.clone()
        };
        for file in sorted_entries(&qa)?
            .into_iter()
            .filter(|f| f.ends_with(".txt"))
        {
            let path = qa.join(&file);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let fields: Vec<&str> = line.trim().split('\t').collect();
                let [question, answer] = fields[..] else {
                    return Err(Error::data(
                        &path,
                        i + 1,
                        "expected `question<TAB>answer` (the converter splits on one tab)",
                    ));
                };
                truth.insert(
                    (category.clone(), file.clone(), question.to_string()),
                    answer.to_string(),
                );
            }
        }
    }
    if truth.is_empty() {
        return Err(Error::checkpoint(
            root,
            "no MME ground truth (category/*.txt) here",
        ));
    }
    Ok(truth)
}

/// The names in `dir`, sorted (the converter's order does not matter: it builds a map).
fn sorted_entries(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// One line of the converter's `<category>.txt`.
struct Row {
    file: String,
    question: String,
    truth: String,
    answer: String,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\n",
            self.file, self.question, self.truth, self.answer
        )
    }
}

/// convert_answer_to_mme.py: every answer with its ground truth, per category in order of
/// first appearance.
fn convert(truth: &Truth, answers: &Path) -> Result<Vec<(String, Vec<Row>)>> {
    let mut out: Vec<(String, Vec<Row>)> = Vec::new();
    for (line, a) in read_answers(answers)? {
        let (category, row) = convert_one(truth, answers, line, &a)?;
        match out.iter_mut().find(|(c, _)| *c == category) {
            Some((_, rows)) => rows.push(row),
            None => out.push((category, vec![row])),
        }
    }
    Ok(out)
}

fn convert_one(truth: &Truth, path: &Path, line: usize, a: &LlavaAnswer) -> Result<(String, Row)> {
    let bad = |msg: String| Error::data(path, line, msg);
    let crate::benchmark::QuestionId::Str(id) = &a.question_id else {
        return Err(bad(format!(
            "field `question_id`: expected \"category/image\" as in llava_mme.jsonl, found {}",
            a.question_id
        )));
    };
    let prompt = a.prompt.as_ref().ok_or_else(|| {
        bad("missing field `prompt` (the converter matches questions by it)".into())
    })?;
    let category = id.split('/').next().unwrap_or_default().to_string();
    let image = id.rsplit('/').next().unwrap_or_default();
    let file = format!("{}.txt", image.split('.').next().unwrap_or_default());
    let mut question = prompt.clone();
    if question.contains(SHORT) {
        question = question.replace(SHORT, "").trim().to_string();
    }
    if !question.contains(YES_NO) {
        question = format!("{question} {YES_NO}");
        // Some MME files have two spaces before the instruction.
        if !truth.contains_key(&(category.clone(), file.clone(), question.clone())) {
            question = question.replace(&format!(" {YES_NO}"), &format!("  {YES_NO}"));
        }
    }
    // The txt lines the converter writes break on these (calculation.py then fails).
    for (field, value) in [("prompt", &question), ("text", &a.text)] {
        if value.contains(['\t', '\n', '\r']) {
            return Err(bad(format!(
                "field `{field}` holds a tab or line break, which MME's tab-separated answer files cannot hold"
            )));
        }
    }
    let key = (category.clone(), file.clone(), question);
    let gt = truth.get(&key).ok_or_else(|| {
        bad(format!(
            "no ground truth for category `{}`, file `{}`, question {:?} in the release",
            key.0, key.1, key.2
        ))
    })?;
    let row = Row {
        file,
        question: key.2,
        truth: gt.clone(),
        answer: a.text.clone(),
    };
    Ok((category, row))
}

/// calculation.py's `parse_pred_ans` on a line's last field, which keeps its newline.
fn parse_pred(answer: &str) -> &'static str {
    let pred = format!("{}\n", answer.to_lowercase());
    let prefix: String = pred.chars().take(4).collect();
    if prefix.contains("yes") {
        "yes"
    } else if prefix.contains("no") {
        "no"
    } else {
        "other"
    }
}

/// calculation.py over the converted answers: the tasks present, in its order.
fn calculation(
    converted: &[(String, Vec<Row>)],
    answers: &Path,
) -> Result<(String, serde_json::Value)> {
    let mut printed = String::new();
    let mut totals = serde_json::Map::new();
    let mut per_task = serde_json::Map::new();
    for (kind, tasks) in [
        ("Perception", &PERCEPTION[..]),
        ("Cognition", &COGNITION[..]),
    ] {
        printed.push_str(&format!("=========== {kind} ===========\n"));
        // `scores` starts as Python's int 0: printed `0` when no task of this kind is present.
        let mut total: Option<f64> = None;
        let mut lines = String::new();
        for &task in tasks {
            let Some((_, rows)) = converted.iter().find(|(c, _)| c == task) else {
                continue;
            };
            let metrics = task_metrics(task, rows, answers)?;
            let score = metrics["score"].as_f64().expect("set by task_metrics");
            total = Some(total.unwrap_or(0.0) + score);
            lines.push_str(&format!("\t {task}  score: {}\n", python::float(score)));
            per_task.insert(task.to_string(), metrics);
        }
        let shown = total.map_or("0".to_string(), python::float);
        printed.push_str(&format!("total score: {shown} \n\n{lines}\n\n"));
        totals.insert(kind.to_string(), json!(total.unwrap_or(0.0)));
    }
    Ok((printed, json!({ "totals": totals, "per_task": per_task })))
}

/// One task's numbers as calculation.py computes them (sklearn's precision and recall give 0
/// where they would divide by zero).
fn task_metrics(task: &str, rows: &[Row], answers: &Path) -> Result<serde_json::Value> {
    if !rows.len().is_multiple_of(2) {
        return Err(Error::checkpoint(
            answers,
            format!("category `{task}` has {} answers; calculation.py pairs consecutive answers (two per image)", rows.len()),
        ));
    }
    let (mut tp, mut fun, mut tn, mut fp, mut other, mut right, mut both) = (0, 0, 0, 0, 0, 0, 0);
    for pair in rows.chunks(2) {
        let mut pair_right = 0;
        for row in pair {
            let gt = row.truth.to_lowercase();
            if gt != "yes" && gt != "no" {
                return Err(Error::checkpoint(
                    answers,
                    format!(
                        "category `{task}`, file `{}`: ground truth {:?} is not yes or no",
                        row.file, row.truth
                    ),
                ));
            }
            let pred = parse_pred(&row.answer);
            if pred == gt {
                pair_right += 1;
                right += 1;
            }
            match (gt == "yes", pred) {
                (_, "other") => other += 1,
                (true, "yes") => tp += 1,
                (true, _) => fun += 1,
                (false, "yes") => fp += 1,
                (false, _) => tn += 1,
            }
        }
        both += usize::from(pair_right == 2);
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let acc = ratio(right, rows.len());
    let acc_plus = ratio(both, rows.len() / 2);
    Ok(json!({
        "TP": tp, "FN": fun, "TN": tn, "FP": fp,
        "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fun),
        "other_num": other, "acc": acc, "acc_plus": acc_plus,
        "score": acc * 100.0 + acc_plus * 100.0,
    }))
}
