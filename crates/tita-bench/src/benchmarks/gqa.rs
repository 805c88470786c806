//! GQA as a [`Benchmark`]: LLaVA's question file (`llava_gqa_testdev_balanced.jsonl`), the
//! predictions LLaVA's `scripts/convert_gqa_for_eval.py` writes, and GQA's `eval.py` (as patched
//! for testdev, run as `eval.py --tier testdev_balanced` in `data/`) on them: its printed scores
//! and its `scores`.
//!
//! Rules kept on purpose: the converter only does `rstrip('.').lower()` (`The phone`, `dog `
//! and `Grey` stay wrong); eval.py scores balanced questions only, needs a prediction for each,
//! gives validity and plausibility 0 without a choices file (testdev has none), computes the
//! distribution score as a chi-square over the questions' global groups, and prints its type
//! keys unmapped (its `subMetrics` lookup tests a stale loop variable).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};
use tita_core::{Error, Result};

use crate::benchmark::{
    expect_dir, Benchmark, DataSpec, QuestionId, RunOutput, ScoreOptions, Scorecard,
};
use crate::benchmarks::vqa_eval::{self, id_json, python_lines, LlavaQuestion, VqaStyle};
use crate::eval::QuerySet;
use crate::python;

pub struct Gqa;

const LLAVA_QUESTIONS: &str = "llava_gqa_testdev_balanced.jsonl";
const TIER: &str = "testdev_balanced";
const LAYOUT: &str = "LLaVA's gqa folder: llava_gqa_testdev_balanced.jsonl, \
                      data/testdev_balanced_questions.json, data/images/";

impl Benchmark for Gqa {
    fn name(&self) -> &'static str {
        "gqa"
    }

    fn title(&self) -> &'static str {
        "GQA"
    }

    fn about(&self) -> &'static str {
        "GQA (Hudson & Manning, 2019): --data LLaVA's gqa folder (llava_gqa_testdev_balanced.jsonl, \
         data/testdev_balanced_questions.json, data/images/) or a question file; score writes \
         convert_gqa_for_eval.py's predictions and prints eval.py's scores"
    }

    // LLaVA's scripts leave model_vqa_loader's default.
    fn max_new_tokens(&self) -> usize {
        128
    }

    fn queries(&self, data: &DataSpec) -> Result<Vec<QuerySet>> {
        vqa_eval::queries(self, data)
    }

    fn parse_answer(&self, text: &str) -> String {
        convert(text)
    }

    fn run_headlines(
        &self,
        out: &Path,
    ) -> Result<std::collections::BTreeMap<String, crate::benchmark::Headline>> {
        vqa_eval::run_headlines(out)
    }

    fn report_run(&self, run: &RunOutput) -> Result<String> {
        vqa_eval::report(self, run)
    }

    fn score(&self, data: &Path, answers: &Path, _: &ScoreOptions) -> Result<Scorecard> {
        let dir = expect_dir(data, "gqa", LAYOUT)?;
        let predictions = converter(answers)?;
        let entries: Vec<String> = predictions
            .iter()
            .map(|(id, p)| {
                python::json_object([("questionId", &id_json(id)), ("prediction", &json!(p))])
            })
            .collect();
        let bytes = format!("[{}]", entries.join(", ")).into_bytes();
        let questions_path = dir.join("data").join(format!("{TIER}_questions.json"));
        let questions = read_questions(&questions_path)?;
        let choices_path = dir.join("data").join(format!("{TIER}_choices.json"));
        let choices = if choices_path.is_file() {
            Some(vqa_eval::read_json_file::<HashMap<String, Choices>>(
                &choices_path,
            )?)
        } else {
            None
        };
        let (printed, scores) = eval_py(
            &questions.0,
            &predictions,
            choices.as_ref(),
            &questions_path,
        )?;
        let listed: Vec<Value> = predictions
            .iter()
            .map(|(id, p)| json!({ "questionId": id_json(id), "prediction": p }))
            .collect();
        Ok(Scorecard {
            printed: printed.clone(),
            metrics: json!({
                "predictions": listed,
                "eval_py": { "stdout_scores": printed, "scores": scores },
            }),
            files: vec![(
                PathBuf::from("data").join(format!("{TIER}_predictions.json")),
                bytes,
            )],
        })
    }
}

impl VqaStyle for Gqa {
    fn names(&self) -> (&'static str, &'static str) {
        (self.name(), self.title())
    }

    fn files(&self, given: &Path) -> Result<(PathBuf, PathBuf)> {
        Ok(vqa_eval::folder_and_file(given, LLAVA_QUESTIONS))
    }

    fn image_dirs(&self, dir: &Path, _: &Path) -> Vec<PathBuf> {
        vec![dir.join("data").join("images"), dir.to_path_buf()]
    }

    fn truth(&self, dir: &Path, questions: &[LlavaQuestion]) -> Result<Vec<Vec<String>>> {
        let path = dir.join("data").join(format!("{TIER}_questions.json"));
        let answers: HashMap<String, String> = if path.is_file() {
            (read_questions(&path)?.0.into_iter())
                .map(|(id, q)| (id, q.answer))
                .collect()
        } else {
            HashMap::new()
        };
        Ok((questions.iter())
            .map(|q| match &q.id {
                QuestionId::Str(id) => answers.get(id).cloned().into_iter().collect(),
                QuestionId::Int(_) => Vec::new(),
            })
            .collect())
    }

    fn score_one(&self, truth: &[String], answer: &str) -> f64 {
        f64::from(u8::from(truth.first() == Some(&convert(answer))))
    }

    fn how(&self) -> &'static str {
        "Accuracy: exact match of the converted answer (convert_gqa_for_eval.py's `rstrip('.').lower()`) with GQA's answer, over every question with one in data/testdev_balanced_questions.json (eval.py counts balanced questions only)."
    }
}

/// The converter's answer: `text.rstrip('.').lower()`.
fn convert(text: &str) -> String {
    text.trim_end_matches('.').to_lowercase()
}

/// convert_gqa_for_eval.py: every line's (question_id, converted text), in order; a line that
/// is not JSON stops it.
fn converter(answers: &Path) -> Result<Vec<(QuestionId, String)>> {
    let text = vqa_eval::read_text(answers)?;
    let mut out = Vec::new();
    for (i, line) in python_lines(&text).into_iter().enumerate() {
        let line_no = i + 1;
        let v: Value = serde_json::from_str(line)
            .map_err(|e| Error::data(answers, line_no, format!("malformed line: {e}")))?;
        let id = vqa_eval::question_id(v.get("question_id"), answers, line_no)?;
        let Some(Value::String(text)) = v.get("text") else {
            return Err(Error::data(
                answers,
                line_no,
                "field `text`: expected a string",
            ));
        };
        out.push((id, convert(text)));
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct Step {
    operation: String,
    argument: String,
}

#[derive(Debug, Deserialize)]
struct Types {
    structural: String,
    semantic: String,
    #[serde(default)]
    detailed: String,
}

#[derive(Debug, Deserialize)]
struct Groups {
    global: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GqaQuestion {
    question: String,
    is_balanced: bool,
    answer: String,
    types: Types,
    groups: Groups,
    semantic: Vec<Step>,
}

#[derive(Debug, Deserialize)]
struct Choices {
    valid: Vec<String>,
    plausible: Vec<String>,
}

/// GQA's questions file: an object keyed by question id, kept in file order (eval.py walks
/// it in that order, and the distribution score's float sums follow it).
struct Ordered(Vec<(String, GqaQuestion)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of GQA questions keyed by question id")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut out: Vec<(String, GqaQuestion)> = Vec::new();
                let mut at: HashMap<String, usize> = HashMap::new();
                while let Some((k, v)) = map.next_entry::<String, GqaQuestion>()? {
                    // json.load keeps a repeated key's first place and last value.
                    match at.get(&k) {
                        Some(&i) => out[i].1 = v,
                        None => {
                            at.insert(k.clone(), out.len());
                            out.push((k, v));
                        }
                    }
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn read_questions(path: &Path) -> Result<Ordered> {
    vqa_eval::read_json_file(path)
}

/// eval.py's `getStepsNum`: semantic steps other than the final querying ones.
fn steps(q: &GqaQuestion) -> usize {
    q.semantic
        .iter()
        .filter(|c| {
            let step = format!("{}: {}", c.operation, c.argument);
            !["exist", "query: name", "choose name"]
                .iter()
                .any(|o| step.contains(o))
        })
        .count()
}

/// Lists keyed in first-seen order.
#[derive(Default)]
struct Keyed<K> {
    keys: Vec<K>,
    values: Vec<Vec<f64>>,
}

impl<K: PartialEq + Clone> Keyed<K> {
    fn push(&mut self, key: &K, v: f64) {
        match self.keys.iter().position(|k| k == key) {
            Some(i) => self.values[i].push(v),
            None => {
                self.keys.push(key.clone());
                self.values.push(vec![v]);
            }
        }
    }
}

/// eval.py's `avg(l) * 100` (an empty list gives 0).
fn percent(values: &[f64]) -> f64 {
    vqa_eval::plain_mean(values).unwrap_or(0.0) * 100.0
}

/// eval.py on the predictions: what it prints from its score lines on, and its `scores`.
fn eval_py(
    questions: &[(String, GqaQuestion)],
    predictions: &[(QuestionId, String)],
    choices: Option<&HashMap<String, Choices>>,
    path: &Path,
) -> Result<(String, Value)> {
    // {p["questionId"]: p["prediction"]}: string ids only can match the questions' keys.
    let mut predicted: HashMap<&str, &str> = HashMap::new();
    for (id, p) in predictions {
        if let QuestionId::Str(s) = id {
            predicted.insert(s, p);
        }
    }
    for (qid, q) in questions {
        if q.is_balanced && !predicted.contains_key(qid.as_str()) {
            return Err(Error::checkpoint(
                path,
                format!("no prediction for question {qid}. Please add prediction for all questions. (eval.py raises \"missing predictions\")"),
            ));
        }
    }
    let (mut accuracy, mut binary, mut open, mut validity, mut plausibility) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut structural: Keyed<String> = Keyed::default();
    let mut semantic: Keyed<String> = Keyed::default();
    let mut by_steps: Keyed<usize> = Keyed::default();
    let mut by_words: Keyed<usize> = Keyed::default();
    // gold / predicted answer counts per global group, in first-seen order.
    let mut gold: Vec<(String, Vec<(String, u64)>)> = Vec::new();
    let mut guessed: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for (qid, q) in questions.iter().filter(|(_, q)| q.is_balanced) {
        let p = predicted[qid.as_str()];
        let score = f64::from(u8::from(p == q.answer));
        accuracy.push(score);
        by_words.push(&python::split(&q.question).len(), score);
        by_steps.push(&steps(q), score);
        structural.push(&q.types.structural, score);
        semantic.push(&q.types.semantic, score);
        if q.types.structural == "query" {
            open.push(score);
        } else {
            binary.push(score);
        }
        let belongs = |group: &[String]| {
            if q.types.detailed.contains("Common") {
                ["color", "material", "shape"].contains(&p)
            } else {
                group.iter().any(|g| g == p)
            }
        };
        let (valid, plausible) = match choices {
            Some(c) => {
                let c = c.get(qid).ok_or_else(|| {
                    Error::checkpoint(
                        path,
                        format!("question {qid} is not in the choices file (eval.py: KeyError)"),
                    )
                })?;
                (belongs(&c.valid), belongs(&c.plausible))
            }
            None => (false, false),
        };
        validity.push(f64::from(u8::from(valid)));
        plausibility.push(f64::from(u8::from(plausible)));
        if let Some(group) = &q.groups.global {
            let i = match gold.iter().position(|(g, _)| g == group) {
                Some(i) => i,
                None => {
                    gold.push((group.clone(), Vec::new()));
                    gold.len() - 1
                }
            };
            match gold[i].1.iter_mut().find(|(a, _)| *a == q.answer) {
                Some((_, n)) => *n += 1,
                None => gold[i].1.push((q.answer.clone(), 1)),
            }
            *guessed
                .entry(group.clone())
                .or_default()
                .entry(p.to_string())
                .or_default() += 1;
        }
    }
    // chiSquare(gold, predicted) / 100
    let (mut sum_score, mut sum_overall) = (0.0f64, 0u64);
    for (group, answers) in &gold {
        let (mut score, mut overall) = (0.0f64, 0u64);
        for (answer, &e) in answers.iter().map(|(a, n)| (a, n)) {
            let o = guessed
                .get(group)
                .and_then(|g| g.get(answer))
                .copied()
                .unwrap_or(0);
            score += (o as f64 - e as f64).powi(2) / e as f64;
            overall += e;
        }
        sum_score += score * overall as f64;
        sum_overall += overall;
    }
    if sum_overall == 0 {
        return Err(Error::checkpoint(
            path,
            "no balanced question has a global group: eval.py's distribution score divides by zero",
        ));
    }
    let distribution = sum_score / sum_overall as f64 / 100.0;

    let mut printed = String::new();
    let headline = [
        ("binary", percent(&binary)),
        ("open", percent(&open)),
        ("accuracy", percent(&accuracy)),
        ("validity", percent(&validity)),
        ("plausibility", percent(&plausibility)),
    ];
    for (name, v) in headline {
        let mut title = name.to_string();
        title[..1].make_ascii_uppercase();
        let _ = writeln!(printed, "{title}: {v:.2}%");
    }
    let _ = writeln!(printed, "Distribution: {distribution:.2} (lower is better)");
    let mut scores = Map::new();
    for (name, v) in headline {
        scores.insert(name.into(), json!(v));
    }
    scores.insert("distribution".into(), json!(distribution));

    fn detail<K: Ord + Clone + ToString>(
        printed: &mut String,
        title: &str,
        groups: &Keyed<K>,
    ) -> Value {
        let _ = writeln!(printed, "\n{title}:");
        let mut order: Vec<usize> = (0..groups.keys.len()).collect();
        order.sort_by(|&a, &b| groups.keys[a].cmp(&groups.keys[b]));
        let mut out = Map::new();
        for i in order {
            let (acc, n) = (percent(&groups.values[i]), groups.values[i].len());
            let key = groups.keys[i].to_string();
            let _ = writeln!(printed, "  {key}: {acc:.2}% ({n} questions)");
            out.insert(key, json!({ "accuracy": acc, "count": n }));
        }
        Value::Object(out)
    }
    let s = detail(&mut printed, "Accuracy / structural type", &structural);
    scores.insert("accuracyPerStructuralType".into(), s);
    let s = detail(&mut printed, "Accuracy / semantic type", &semantic);
    scores.insert("accuracyPerSemanticType".into(), s);
    let s = detail(&mut printed, "Accuracy / steps number", &by_steps);
    scores.insert("accuracyPerSteps".into(), s);
    let s = detail(&mut printed, "Accuracy / words number", &by_words);
    scores.insert("accuracyPerLength".into(), s);
    Ok((printed, Value::Object(scores)))
}
