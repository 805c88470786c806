//! SEED-Bench as a [`Benchmark`]: the questions of LLaVA's `llava-seed-bench.jsonl` (image
//! questions and the middle frame of each video question), and scoring of LLaVA answers files
//! exactly as LLaVA's `scripts/convert_seed_for_submission.py` does it, prints it and writes it.
//!
//! The converter's rules, kept here on purpose: an answer is right only when its text equals the
//! annotation's letter exactly (`B.`, `c`, `Ｂ` are wrong); a question without an answer counts
//! as wrong in the accuracies, but the upload then fails (KeyError); so does a question type
//! whose answered questions are all wrong, and a run without video (or image) questions divides
//! by zero. Each failure is an error here, named after the converter's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use tita_core::{jsonl, Error, Result};
use tita_decode::ImageInput;

use crate::benchmark::{
    expect_dir, headlines_in, read_answers, Benchmark, DataSpec, Headline, QuestionId, RunOutput,
    ScoreOptions, Scorecard,
};
use crate::benchmarks::mmbench::is_python_space;
use crate::benchmarks::scienceqa::{read_json, write_run_report, LETTER_INSTRUCTION};
use crate::eval::{run_answers, Query, QuerySet};
use crate::python::json_str;

pub struct SeedBench;

const ANNOTATIONS: &str = "SEED-Bench.json";
const QUESTIONS: &str = "llava-seed-bench.jsonl";
const SET: &str = "seed_bench";
const LAYOUT: &str = "LLaVA's seed_bench folder: SEED-Bench.json, llava-seed-bench.jsonl, \
                      SEED-Bench-image/, SEED-Bench-video-image/";

fn image_accuracy(accuracies: &Value) -> Option<Headline> {
    Some(Headline {
        metric: "image accuracy %".into(),
        value: accuracies["image accuracy"].as_f64()?,
    })
}

impl Benchmark for SeedBench {
    fn name(&self) -> &'static str {
        "seed_bench"
    }

    fn title(&self) -> &'static str {
        "SEED-Bench"
    }

    fn about(&self) -> &'static str {
        "SEED-Bench (Li et al., 2023): --data LLaVA's seed_bench folder (SEED-Bench.json, \
         llava-seed-bench.jsonl, SEED-Bench-image/, SEED-Bench-video-image/ middle frames); score \
         prints convert_seed_for_submission.py's accuracies and writes its upload"
    }

    fn instruction(&self) -> &'static str {
        LETTER_INSTRUCTION
    }

    /// model_vqa_loader.py's default.
    fn max_new_tokens(&self) -> usize {
        128
    }

    /// The questions of `llava-seed-bench.jsonl` as one set, the letter instruction its texts
    /// end with taken off (the runner appends the benchmark's instruction), labels from
    /// `SEED-Bench.json`.
    fn queries(&self, data: &DataSpec) -> Result<Vec<QuerySet>> {
        let dir = expect_dir(data.single("seed_bench")?, "seed_bench", LAYOUT)?;
        let annotations = Annotations::read(&dir.join(ANNOTATIONS))?;
        let known: HashSet<String> = (annotations.questions.iter())
            .map(|q| id_text(&q.question_id))
            .collect();
        let path = dir.join(QUESTIONS);
        let images = data.images.as_deref().unwrap_or(&dir);
        let suffix = format!("\n{LETTER_INSTRUCTION}");
        let mut set = QuerySet {
            name: SET.into(),
            queries: Vec::new(),
        };
        for (line, q) in jsonl::read::<LlavaQuestion>(&path)? {
            if data.limit.is_some_and(|n| set.queries.len() >= n) {
                break;
            }
            let text = q.text.strip_suffix(&suffix).ok_or_else(|| {
                Error::data(
                    &path,
                    line,
                    format!("field `text`: expected the question to end with {suffix:?}"),
                )
            })?;
            if !known.contains(&q.question_id.to_string()) {
                return Err(Error::data(
                    &path,
                    line,
                    format!("question_id {} is not in {ANNOTATIONS}", q.question_id),
                ));
            }
            let image = jsonl::resolve_image(&path, line, &q.image, Some(images))?;
            set.queries.push(Query {
                id: QuestionId::Int(q.question_id as i64),
                text: text.to_string(),
                image: Some(ImageInput::Path(image)),
            });
        }
        if set.queries.is_empty() {
            return Err(Error::data(&path, 1, "no questions in this file"));
        }
        Ok(vec![set])
    }

    // LLaVA's table gives the image accuracy.
    fn headline(&self, metrics: &Value) -> Option<Headline> {
        image_accuracy(&metrics["accuracy_percent"])
    }

    fn run_headlines(&self, out: &Path) -> Result<BTreeMap<String, Headline>> {
        headlines_in(&out.join("seed_bench.json"), image_accuracy)
    }

    fn report_run(&self, run: &RunOutput) -> Result<String> {
        let dir = expect_dir(run.data.single("seed_bench")?, "seed_bench", LAYOUT)?;
        let annotations = Annotations::read(&dir.join(ANNOTATIONS))?;
        let mut rows = Vec::new();
        let mut all = serde_json::Map::new();
        for method in &run.config.methods {
            let results: HashMap<QuestionId, String> = (run_answers(run.queries, method, run.out)?)
                .into_iter()
                .map(|a| (a.question_id, a.text))
                .collect();
            let answered = results.len();
            let acc = annotations.accuracies(&results, &dir.join(ANNOTATIONS))?;
            let pick = |name: &str| {
                acc.iter()
                    .find(|(n, _)| n == name)
                    .map_or("-".to_string(), |(_, v)| format!("{v:.2}"))
            };
            rows.push(vec![
                method.name(),
                answered.to_string(),
                pick("image accuracy"),
                pick("video accuracy"),
                pick("Total accuracy"),
            ]);
            let map: serde_json::Map<String, Value> =
                acc.iter().map(|(n, v)| (n.clone(), json!(v))).collect();
            all.insert(method.name(), Value::Object(map));
        }
        write_run_report(
            run,
            self.title(),
            "seed_bench.json",
            &["method", "answers", "image", "video", "total"],
            rows,
            Value::Object(all),
        )
    }

    fn score(&self, data: &Path, answers: &Path, _: &ScoreOptions) -> Result<Scorecard> {
        let dir = expect_dir(data, "seed_bench", LAYOUT)?;
        let annotations_path = dir.join(ANNOTATIONS);
        let annotations = Annotations::read(&annotations_path)?;
        // `results[row['question_id']] = row`: the last answer of an id wins.
        let mut results = HashMap::new();
        for (_, a) in read_answers(answers)? {
            results.insert(a.question_id, a.text);
        }
        let accuracies = annotations.accuracies(&results, answers)?;
        let printed: String = accuracies
            .iter()
            .map(|(name, acc)| format!("{name}: {acc:.2}%\n"))
            .collect();
        let (upload, submission) = annotations.upload(&results, answers)?;
        let rounded: serde_json::Map<String, Value> = accuracies
            .iter()
            .map(|(n, v)| {
                let shown: f64 = format!("{v:.2}").parse().expect("a formatted float");
                (n.clone(), json!(shown))
            })
            .collect();
        let exact: serde_json::Map<String, Value> = accuracies
            .iter()
            .map(|(n, v)| (n.clone(), json!(v)))
            .collect();
        // seed.sh: answers/$CKPT/merge.jsonl -> answers_upload/$CKPT.jsonl.
        let experiment = match answers.file_stem().and_then(|s| s.to_str()) {
            Some("merge") | None => answers
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|s| s.to_str())
                .unwrap_or("answers"),
            Some(stem) => stem,
        };
        Ok(Scorecard {
            printed,
            metrics: json!({
                "printed_accuracy_percent": rounded,
                "accuracy_percent": exact,
                "submission": submission,
                "lmms_eval_seedbench": annotations.lmms_eval(&results),
            }),
            files: vec![(
                PathBuf::from(format!("answers_upload/{experiment}.jsonl")),
                upload.into_bytes(),
            )],
        })
    }
}

#[derive(Deserialize)]
struct LlavaQuestion {
    question_id: u64,
    image: String,
    text: String,
}

#[derive(Deserialize)]
struct SeedQuestion {
    answer: String,
    data_type: String,
    /// A string in SEED-Bench.json; the converter also takes a number.
    question_id: Value,
    question_type_id: i64,
}

#[derive(Deserialize)]
struct Annotations {
    question_type: BTreeMap<String, i64>,
    questions: Vec<SeedQuestion>,
}

/// An id as text (a JSON string without its quotes).
fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `int(question_id)` where Python's int() takes it, else the id as it is.
fn lookup_key(id: &Value) -> Option<QuestionId> {
    match id {
        Value::String(s) => Some(
            s.trim()
                .parse()
                .map_or_else(|_| QuestionId::Str(s.clone()), QuestionId::Int),
        ),
        Value::Number(n) => n.as_i64().map(QuestionId::Int),
        _ => None,
    }
}

impl Annotations {
    fn read(path: &Path) -> Result<Self> {
        let a: Annotations = read_json(path)?;
        for (i, q) in a.questions.iter().enumerate() {
            if lookup_key(&q.question_id).is_none() {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "questions[{i}]: field `question_id`: expected a string or an integer, found {}",
                        q.question_id
                    ),
                ));
            }
        }
        Ok(a)
    }

    /// The converter's three `eval_single` passes: per type (sorted by id) and total, then
    /// image, then video; `(printed name, accuracy in percent)` in printing order.
    fn accuracies(
        &self,
        results: &HashMap<QuestionId, String>,
        source: &Path,
    ) -> Result<Vec<(String, f64)>> {
        let names: HashMap<i64, &str> = self
            .question_type
            .iter()
            .map(|(n, id)| (*id, n.as_str()))
            .collect();
        let mut out = Vec::new();
        for only in [None, Some("image"), Some("video")] {
            let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
            let mut correct: HashMap<i64, usize> = HashMap::new();
            for q in &self.questions {
                if only.is_some_and(|t| q.data_type != t) {
                    continue;
                }
                let t = q.question_type_id;
                *counts.entry(t).or_default() += 1;
                let key = lookup_key(&q.question_id).expect("checked when read");
                match results.get(&key) {
                    None => {
                        correct.entry(t).or_default();
                    }
                    Some(text) if *text == q.answer => *correct.entry(t).or_default() += 1,
                    Some(_) => {}
                }
            }
            let (mut total, mut total_correct) = (0, 0);
            for (t, n) in &counts {
                let c = *correct.get(t).ok_or_else(|| {
                    Error::checkpoint(
                        source,
                        format!(
                            "question type {t}: every answered question is wrong, so the converter has no count for it (convert_seed_for_submission.py: KeyError: {t})"
                        ),
                    )
                })?;
                if only.is_none() {
                    let name = names.get(t).ok_or_else(|| {
                        Error::checkpoint(
                            source,
                            format!("question type {t} is not in SEED-Bench.json's `question_type` (KeyError: {t})"),
                        )
                    })?;
                    out.push((name.to_string(), c as f64 / *n as f64 * 100.0));
                }
                total += n;
                total_correct += c;
            }
            if total == 0 {
                return Err(Error::checkpoint(
                    source,
                    format!(
                        "no {} questions: the total accuracy divides by zero (convert_seed_for_submission.py: ZeroDivisionError)",
                        only.unwrap_or("SEED-Bench")
                    ),
                ));
            }
            let name = match only {
                None => "Total".to_string(),
                Some(kind) => kind.to_string(),
            };
            out.push((
                format!("{name} accuracy"),
                total_correct as f64 / total as f64 * 100.0,
            ));
        }
        Ok(out)
    }

    /// lmms-eval's `seedbench` accuracies over the answered questions (a comparison: the first
    /// character of the stripped answer against the letter, case-insensitively).
    fn lmms_eval(&self, results: &HashMap<QuestionId, String>) -> Value {
        let mut tally: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for q in &self.questions {
            let key = lookup_key(&q.question_id).expect("checked when read");
            let Some(text) = results.get(&key) else {
                continue;
            };
            let pred = text.trim_matches(is_python_space);
            let pred: String = if pred.chars().count() > 1 {
                pred.chars().take(1).collect()
            } else {
                pred.to_string()
            };
            let clean = |s: &str| s.to_lowercase().trim_matches(is_python_space).to_string();
            let hit = usize::from(clean(&pred) == clean(&q.answer));
            for name in [format!("seed_{}", q.data_type), "seed_all".to_string()] {
                let t = tally.entry(name).or_default();
                t.0 += hit;
                t.1 += 1;
            }
        }
        Value::Object(
            tally
                .into_iter()
                .map(|(name, (hits, n))| (name, json!(hits as f64 / n as f64)))
                .collect(),
        )
    }

    /// The upload jsonl (`{"question_id": <as in SEED-Bench.json>, "prediction": <text>}` per
    /// question, json.dumps' layout) and its records.
    fn upload(
        &self,
        results: &HashMap<QuestionId, String>,
        source: &Path,
    ) -> Result<(String, Vec<Value>)> {
        let mut text = String::new();
        let mut records = Vec::new();
        for q in &self.questions {
            let raw = match &q.question_id {
                Value::String(s) => Some(QuestionId::Str(s.clone())),
                Value::Number(n) => n.as_i64().map(QuestionId::Int),
                _ => None,
            };
            let found = raw.and_then(|k| results.get(&k)).or_else(|| {
                lookup_key(&q.question_id)
                    .filter(|k| matches!(k, QuestionId::Int(_)))
                    .and_then(|k| results.get(&k))
            });
            let prediction = found.ok_or_else(|| {
                Error::checkpoint(
                    source,
                    format!(
                        "question {} has no answer, so the upload cannot be written (convert_seed_for_submission.py: KeyError)",
                        q.question_id
                    ),
                )
            })?;
            let id = match &q.question_id {
                Value::String(s) => json_str(s),
                other => other.to_string(),
            };
            text.push_str(&format!(
                "{{\"question_id\": {id}, \"prediction\": {}}}\n",
                json_str(prediction)
            ));
            records.push(json!({"question_id": q.question_id, "prediction": prediction}));
        }
        Ok((text, records))
    }
}
