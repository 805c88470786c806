//! ScienceQA-IMG as a [`Benchmark`]: every question of LLaVA's `llava_test_CQM-A.json`
//! (LLaVA-1.5's prompt layout), and scoring of LLaVA answers files exactly as LLaVA's
//! `llava/eval/eval_science_qa.py --split test` does it, prints it and writes it.
//!
//! eval_science_qa.py's rules, kept here on purpose: an answer is the exact letter (A–E), or a
//! letter followed by `. `, or else the one match of `The answer is ([A-Z]).` (the `.` is any
//! character but a newline; two matches fail); a letter beyond the problem's choices scores -1.
//! Every test problem counts in Total, answered or not; IMG counts the answers whose recorded
//! prompt holds `<image>` (an unanswered problem's prompt is `Unknown`). Answers are matched by
//! string `question_id`, as the script's dict lookup does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use tita_core::{jsonl, Error, Result};
use tita_decode::ImageInput;

use crate::benchmark::{
    expect_dir, headlines_in, read_answers, Benchmark, DataSpec, Headline, QuestionId, RunOutput,
    ScoreOptions, Scorecard,
};
use crate::benchmarks::mmbench::is_python_space;
use crate::eval::{run_answers, Query, QuerySet};
use crate::python::{json_dumps, PyJson};

pub struct ScienceQa;

/// LLaVA-1.5's multiple-choice instruction (`--single-pred-prompt`).
pub const LETTER_INSTRUCTION: &str =
    "Answer with the option's letter from the given choices directly.";
/// eval_science_qa.py's `--options`.
const OPTIONS: [&str; 5] = ["A", "B", "C", "D", "E"];
const QUESTIONS: &str = "llava_test_CQM-A.json";
const SPLIT: &str = "test";
const LAYOUT: &str = "LLaVA's scienceqa folder: llava_test_CQM-A.json, problems.json, \
                      pid_splits.json, images/test/<id>/";

impl Benchmark for ScienceQa {
    fn name(&self) -> &'static str {
        "scienceqa"
    }

    fn title(&self) -> &'static str {
        "ScienceQA-IMG"
    }

    fn about(&self) -> &'static str {
        "ScienceQA-IMG (Lu et al., 2022): --data LLaVA's scienceqa folder (llava_test_CQM-A.json, \
         problems.json, pid_splits.json, images/test/); score prints eval_science_qa.py's line and \
         writes its _output.jsonl and _result.json"
    }

    fn instruction(&self) -> &'static str {
        LETTER_INSTRUCTION
    }

    /// model_vqa_science.py generates up to 1024 tokens.
    fn max_new_tokens(&self) -> usize {
        1024
    }

    /// Every question of `llava_test_CQM-A.json` as one set `test`, under its string id, as
    /// model_vqa_science.py asks it: image questions with their image, text-only ones without
    /// (they count in eval_science_qa.py's Total; IMG-Accuracy counts the image ones).
    fn queries(&self, data: &DataSpec) -> Result<Vec<QuerySet>> {
        let dir = expect_dir(data.single("scienceqa")?, "scienceqa", LAYOUT)?;
        let path = dir.join(QUESTIONS);
        let images = data
            .images
            .clone()
            .unwrap_or_else(|| dir.join("images").join(SPLIT));
        let mut set = QuerySet {
            name: SPLIT.into(),
            queries: Vec::new(),
        };
        for (i, entry) in read_json::<Vec<LlavaEntry>>(&path)?.into_iter().enumerate() {
            if data.limit.is_some_and(|n| set.queries.len() >= n) {
                break;
            }
            let at = |msg: String| {
                Error::checkpoint(&path, format!("entry {} (id {:?}): {msg}", i + 1, entry.id))
            };
            let Some(human) = entry.conversations.first() else {
                return Err(at(
                    "field `conversations`: expected the question turn".into()
                ));
            };
            let image = match &entry.image {
                Some(name) => {
                    let file = images.join(name);
                    if !file.is_file() {
                        return Err(at(format!(
                            "image not found (looked for {})",
                            file.display()
                        )));
                    }
                    Some(ImageInput::Path(file))
                }
                None => None,
            };
            set.queries.push(Query {
                id: QuestionId::Str(entry.id.clone()),
                text: question_text(&human.value),
                image,
            });
        }
        if set.queries.is_empty() {
            return Err(Error::checkpoint(&path, "no questions here"));
        }
        Ok(vec![set])
    }

    // LLaVA's table gives IMG-Accuracy.
    fn headline(&self, metrics: &serde_json::Value) -> Option<Headline> {
        Some(Headline {
            metric: "IMG accuracy %".into(),
            value: metrics["img_accuracy"].as_f64()?,
        })
    }

    fn run_headlines(&self, out: &Path) -> Result<BTreeMap<String, Headline>> {
        headlines_in(&out.join("scienceqa.json"), |m| self.headline(m))
    }

    fn parse_answer(&self, text: &str) -> String {
        parse_letter(text)
    }

    fn report_run(&self, run: &RunOutput) -> Result<String> {
        let dir = expect_dir(run.data.single("scienceqa")?, "scienceqa", LAYOUT)?;
        let truth = Truth::read(&dir)?;
        let with_image: HashSet<&QuestionId> = (run.queries.iter())
            .flat_map(|s| &s.queries)
            .filter(|q| q.image.is_some())
            .map(|q| &q.id)
            .collect();
        let mut rows = Vec::new();
        let mut all = serde_json::Map::new();
        for method in &run.config.methods {
            let mut predictions = HashMap::new();
            for a in run_answers(run.queries, method, run.out)? {
                // model_vqa_science.py records `<image>\n` before an image question's prompt
                // (the runner's template puts the image there itself).
                let image = if with_image.contains(&a.question_id) {
                    "<image>\n"
                } else {
                    ""
                };
                let QuestionId::Str(id) = a.question_id else {
                    continue;
                };
                predictions.insert(
                    id,
                    Prediction {
                        prompt: format!("{image}{}", a.prompt),
                        text: a.text,
                    },
                );
            }
            let answered = predictions.len();
            let result = truth.evaluate(&predictions, &dir.join(QUESTIONS))?;
            rows.push(vec![
                method.name(),
                answered.to_string(),
                format!(
                    "{:.2}",
                    result.img_correct as f64 / result.img_total as f64 * 100.0
                ),
                format!("{:.2}", result.acc),
                result.printed.trim_end().to_string(),
            ]);
            all.insert(method.name(), result.metrics());
        }
        write_run_report(
            run,
            self.title(),
            "scienceqa.json",
            &[
                "method",
                "answers",
                "IMG-Accuracy",
                "Accuracy (all test)",
                "eval_science_qa.py",
            ],
            rows,
            serde_json::Value::Object(all),
        )
    }

    fn score(&self, data: &Path, answers: &Path, _: &ScoreOptions) -> Result<Scorecard> {
        let dir = expect_dir(data, "scienceqa", LAYOUT)?;
        let truth = Truth::read(&dir)?;
        let mut predictions = HashMap::new();
        for (line, a) in read_answers(answers)? {
            // The script's dict is keyed by the raw id: a number never matches a problem id.
            let QuestionId::Str(id) = a.question_id else {
                continue;
            };
            let prompt = a.prompt.ok_or_else(|| {
                Error::data(
                    answers,
                    line,
                    "missing field `prompt` (eval_science_qa.py reads it for IMG)",
                )
            })?;
            predictions.insert(
                id,
                Prediction {
                    prompt,
                    text: a.text,
                },
            );
        }
        let result = truth.evaluate(&predictions, answers)?;
        let stem = answers
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("answers");
        let files = vec![
            (
                PathBuf::from(format!("answers/{stem}_output.jsonl")),
                json_dumps(&result.output, Some(2)).into_bytes(),
            ),
            (
                PathBuf::from(format!("answers/{stem}_result.json")),
                json_dumps(&result.result, Some(2)).into_bytes(),
            ),
        ];
        Ok(Scorecard {
            printed: result.printed.clone(),
            metrics: {
                let mut m = result.metrics();
                m["lmms_eval_scienceqa_img"] = truth.lmms_eval(&predictions);
                m
            },
            files,
        })
    }
}

/// A JSON file as `T`, with the file and serde's line and column in any error.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.into(),
        source,
    })
}

#[derive(Deserialize)]
struct LlavaEntry {
    id: String,
    #[serde(default)]
    image: Option<String>,
    conversations: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    value: String,
}

/// model_vqa_science.py's question: the human turn without `<image>`, stripped.
pub fn question_text(value: &str) -> String {
    value.replace("<image>", "").trim().to_string()
}

/// The prompt model_vqa_science.py records for an entry of `llava_test_CQM-A.json`
/// (`<image>\n` in front for image questions, the letter instruction after).
pub fn llava_prompt(value: &str, has_image: bool) -> String {
    let image = if has_image { "<image>\n" } else { "" };
    format!("{image}{}\n{LETTER_INSTRUCTION}", question_text(value))
}

/// Every entry of `llava_test_CQM-A.json` in `dir` as `(id, recorded prompt)`.
pub fn llava_prompts(dir: &Path) -> Result<Vec<(String, String)>> {
    let path = dir.join(QUESTIONS);
    read_json::<Vec<LlavaEntry>>(&path)?
        .into_iter()
        .map(|e| {
            let value = e.conversations.first().map_or("", |t| t.value.as_str());
            let prompt = llava_prompt(value, e.image.is_some());
            Ok((e.id, prompt))
        })
        .collect()
}

/// eval_science_qa.py's reading of an answer: an option letter, or `FAILED`.
pub fn parse_letter(text: &str) -> String {
    if OPTIONS.contains(&text) {
        return text.to_string();
    }
    let mut chars = text.chars();
    if let (Some(first), Some('.'), Some(' ')) = (chars.next(), chars.next(), chars.next()) {
        if first.is_ascii_uppercase() && first <= 'E' {
            return first.to_string();
        }
    }
    match answer_is_matches(text).as_slice() {
        [one] => one.to_string(),
        _ => "FAILED".into(),
    }
}

/// Every non-overlapping match of `The answer is ([A-Z]).` (Python's `re.findall`; `.` is any
/// character but `\n`), as the captured letters.
fn answer_is_matches(text: &str) -> Vec<char> {
    const LEAD: &str = "The answer is ";
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(LEAD) {
        let after = &rest[at + LEAD.len()..];
        let mut chars = after.chars();
        match (chars.next(), chars.next()) {
            (Some(letter @ 'A'..='Z'), Some(any)) if any != '\n' => {
                found.push(letter);
                rest = &after[letter.len_utf8() + any.len_utf8()..];
            }
            // `T` is one byte: the search goes on from the next character.
            _ => rest = &rest[at + 1..],
        }
    }
    found
}

/// One answer as the script keeps it.
struct Prediction {
    prompt: String,
    text: String,
}

#[derive(Deserialize)]
struct Problem {
    choices: Vec<serde_json::Value>,
    answer: usize,
    #[serde(default)]
    image: Option<String>,
}

/// The test split's problems, in pid_splits.json's order.
struct Truth {
    problems: Vec<(String, Problem)>,
}

impl Truth {
    fn read(dir: &Path) -> Result<Self> {
        let splits_path = dir.join("pid_splits.json");
        let mut splits: HashMap<String, Vec<String>> = read_json(&splits_path)?;
        let ids = splits.remove(SPLIT).ok_or_else(|| {
            Error::checkpoint(
                &splits_path,
                format!("no `{SPLIT}` split (eval_science_qa.py: KeyError)"),
            )
        })?;
        let problems_path = dir.join("problems.json");
        let mut problems: HashMap<String, Problem> = read_json(&problems_path)?;
        let mut out = Vec::new();
        for id in ids {
            let problem = problems.remove(&id).ok_or_else(|| {
                Error::checkpoint(
                    &problems_path,
                    format!("problem `{id}` of the {SPLIT} split is missing (eval_science_qa.py: KeyError)"),
                )
            })?;
            if problem.answer >= OPTIONS.len() {
                return Err(Error::checkpoint(
                    &problems_path,
                    format!(
                        "problem `{id}`: field `answer`: {} is beyond the options A–E (eval_science_qa.py: IndexError)",
                        problem.answer
                    ),
                ));
            }
            out.push((id, problem));
        }
        Ok(Truth { problems: out })
    }

    /// lmms-eval's `scienceqa_img` on the answered test problems with an image (a comparison:
    /// after stripping, the lower-cased answer equals the letter, or it starts with an upper-case
    /// letter and `.`, which must be the answer's).
    fn lmms_eval(&self, predictions: &HashMap<String, Prediction>) -> serde_json::Value {
        let mut per_question = serde_json::Map::new();
        for (id, problem) in &self.problems {
            let Some(pred) = predictions.get(id).filter(|_| problem.image.is_some()) else {
                continue;
            };
            let target = OPTIONS[problem.answer].to_lowercase();
            let pred = pred.text.trim_matches(is_python_space);
            let mut chars = pred.chars();
            let hit = if pred.to_lowercase() == target {
                true
            } else {
                match (chars.next(), chars.next()) {
                    (Some(first), Some('.')) if first.is_uppercase() => {
                        first.to_lowercase().to_string() == target
                    }
                    _ => false,
                }
            };
            per_question.insert(id.clone(), json!(if hit { 1.0 } else { 0.0 }));
        }
        let n = per_question.len();
        let sum: f64 = per_question.values().filter_map(|v| v.as_f64()).sum();
        json!({
            "per_question": per_question,
            "exact_match_mean": if n == 0 { serde_json::Value::Null } else { json!(sum / n as f64) },
        })
    }

    /// eval_science_qa.py's loop over the split. `source` is named in a division by zero.
    fn evaluate(
        &self,
        predictions: &HashMap<String, Prediction>,
        source: &Path,
    ) -> Result<Evaluation> {
        let (mut correct, mut incorrect) = (Vec::new(), Vec::new());
        let (mut results, mut outputs, mut parsed) = (Vec::new(), Vec::new(), Vec::new());
        let (mut img_correct, mut img_total) = (0usize, 0usize);
        let unknown = Prediction {
            prompt: "Unknown".into(),
            text: "FAILED".into(),
        };
        for (id, problem) in &self.problems {
            let pred = predictions.get(id).unwrap_or(&unknown);
            let answer = parse_letter(&pred.text);
            let index = OPTIONS[..problem.choices.len().min(OPTIONS.len())]
                .iter()
                .position(|o| *o == answer)
                .map_or(-1, |i| i as i64);
            let multimodal = pred.prompt.contains("<image>");
            let analysis = PyJson::Dict(vec![
                ("question_id".into(), PyJson::Str(id.clone())),
                ("parsed_ans".into(), PyJson::Str(answer.clone())),
                (
                    "ground_truth".into(),
                    PyJson::Str(OPTIONS[problem.answer].into()),
                ),
                ("question".into(), PyJson::Str(pred.prompt.clone())),
                ("pred".into(), PyJson::Str(pred.text.clone())),
                ("is_multimodal".into(), PyJson::Bool(multimodal)),
            ]);
            results.push((id.clone(), index));
            outputs.push((id.clone(), PyJson::Str(pred.text.clone())));
            parsed.push((id.clone(), answer));
            img_total += usize::from(multimodal);
            if index == problem.answer as i64 {
                correct.push(analysis);
                img_correct += usize::from(multimodal);
            } else {
                incorrect.push(analysis);
            }
        }
        let count = correct.len() + incorrect.len();
        if count == 0 || img_total == 0 {
            return Err(Error::checkpoint(
                source,
                format!(
                    "{} divides by zero ({count} problems, {img_total} answered with an image); eval_science_qa.py stops here with ZeroDivisionError",
                    if count == 0 { "Accuracy" } else { "IMG-Accuracy" }
                ),
            ));
        }
        let n_correct = correct.len();
        let acc = n_correct as f64 / count as f64 * 100.0;
        let img_acc = img_correct as f64 / img_total as f64 * 100.0;
        let printed = format!(
            "Total: {count}, Correct: {n_correct}, Accuracy: {acc:.2}%, IMG-Accuracy: {img_acc:.2}%\n"
        );
        let output = PyJson::Dict(vec![
            ("correct".into(), PyJson::List(correct)),
            ("incorrect".into(), PyJson::List(incorrect)),
        ]);
        let result = PyJson::Dict(vec![
            ("acc".into(), PyJson::Float(acc)),
            ("correct".into(), PyJson::Int(n_correct as i64)),
            ("count".into(), PyJson::Int(count as i64)),
            (
                "results".into(),
                PyJson::Dict(
                    results
                        .iter()
                        .map(|(k, v)| (k.clone(), PyJson::Int(*v)))
                        .collect(),
                ),
            ),
            ("outputs".into(), PyJson::Dict(outputs)),
        ]);
        Ok(Evaluation {
            printed,
            acc,
            correct: n_correct,
            count,
            img_correct,
            img_total,
            results,
            parsed,
            output,
            result,
        })
    }
}

struct Evaluation {
    printed: String,
    acc: f64,
    correct: usize,
    count: usize,
    img_correct: usize,
    img_total: usize,
    results: Vec<(String, i64)>,
    parsed: Vec<(String, String)>,
    output: PyJson,
    result: PyJson,
}

impl Evaluation {
    fn metrics(&self) -> serde_json::Value {
        let results: serde_json::Map<String, serde_json::Value> = self
            .results
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let parsed: serde_json::Map<String, serde_json::Value> = self
            .parsed
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "acc": self.acc, "correct": self.correct, "count": self.count,
            "img_correct": self.img_correct, "img_total": self.img_total,
            "img_accuracy": self.img_correct as f64 / self.img_total as f64 * 100.0,
            "results": results, "parsed": parsed,
        })
    }
}

/// Writes a run's report (`report.md`: one row per method, and `json_name` with every
/// method's numbers) and returns the report.
pub(crate) fn write_run_report(
    run: &RunOutput,
    title: &str,
    json_name: &str,
    header: &[&str],
    rows: Vec<Vec<String>>,
    numbers: serde_json::Value,
) -> Result<String> {
    let mut md = format!("# {title}\n\n| {} | tokens/s |\n|", header.join(" | "));
    md.push_str(&"---|".repeat(header.len() + 1));
    md.push('\n');
    for row in rows {
        let speed = run
            .speed
            .get(&row[0])
            .map_or("-".to_string(), |s| format!("{:.1}", s.tokens_per_s()));
        md.push_str(&format!("| {} | {speed} |\n", row.join(" | ")));
    }
    let settings = serde_json::to_string_pretty(run.config).expect("plain data");
    md.push_str(&format!("\nSettings:\n\n```json\n{settings}\n```\n"));
    let json = serde_json::to_string_pretty(&numbers).expect("plain data");
    jsonl::write_atomic(&run.out.join(json_name), json.as_bytes())?;
    jsonl::write_atomic(&run.out.join("report.md"), md.as_bytes())?;
    Ok(md)
}
