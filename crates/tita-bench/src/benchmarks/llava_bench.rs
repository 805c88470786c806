//! LLaVA-Bench-in-the-Wild as a [`Benchmark`]: a judge compares the model's answer with
//! GPT-4's reference answer, given a caption of the image, as LLaVA's
//! `llava/eval/eval_gpt_review_bench.py` asks it, and `llava/eval/summarize_gpt_review.py`
//! turns the reviews into relative scores (LLaVA @ c121f043).
//!
//! Their rules, kept on purpose: questions, reference answers and answers are paired by line;
//! the prompt comes from `rule.json` by category (`llava_bench_{category}`); a failed call
//! sleeps 0.5 s and asks again (a rate limit silently, other errors printed), with no retry on
//! an unparsable reply; the score line is the reply's first line, commas read as spaces, split
//! on single spaces, and only exactly two fields count, else `[-1, -1]`, which stays in the
//! averages. The summary rounds each category's mean pair to 3 decimals, then prints the
//! relative score `round(mean2 / mean1 * 100, 1)` and both means × 10.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tita_core::{jsonl, Error, Result};

use crate::benchmark::{
    expect_dir, Benchmark, DataSpec, Headline, Judge, JudgeRequest, RunOutput, ScoreOptions,
    Scorecard,
};
use crate::benchmarks::mm_vet::{judged_run_note, llava_question_set, no_judge};
use crate::eval::QuestionSet;
use crate::judge::{judge_note, CallLog, JudgeError};
use crate::python::semantics::{json_dumps, parse_float, repr_str, round, PyJson};
use crate::python::{self};

pub struct LlavaBench;

const LAYOUT: &str = "LLaVA's llava-bench-in-the-wild folder: questions.jsonl, context.jsonl, \
                      answers_gpt4.jsonl, rule.json (LLaVA's llava/eval/table/rule.json), images/";

/// eval_gpt_review_bench.py's system message.
pub const SYSTEM: &str =
    "You are a helpful and precise assistant for checking the quality of the answer.";
/// Its temperature.
pub const TEMPERATURE: f64 = 0.2;
/// Its `--max-tokens` default.
pub const MAX_TOKENS: usize = 1024;
/// Seconds it sleeps after a failed call.
const RETRY_SLEEP: f64 = 0.5;

impl Benchmark for LlavaBench {
    fn name(&self) -> &'static str {
        "llava-bench-in-the-wild"
    }

    fn title(&self) -> &'static str {
        "LLaVA-Bench (In-the-Wild)"
    }

    fn about(&self) -> &'static str {
        "LLaVA-Bench-in-the-Wild, judge-scored: --data LLaVA's folder (questions.jsonl, \
         context.jsonl, answers_gpt4.jsonl, rule.json, images/); score needs \
         --judge-url/--judge-model and prints eval_gpt_review_bench.py's and \
         summarize_gpt_review.py's output"
    }

    /// The question as is (LLaVA's model_vqa.py adds nothing).
    fn instruction(&self) -> &'static str {
        ""
    }

    /// model_vqa.py's `max_new_tokens`.
    fn max_new_tokens(&self) -> usize {
        1024
    }

    fn question_sets(&self, data: &DataSpec) -> Result<Vec<QuestionSet>> {
        let dir = expect_dir(data.single(self.name())?, self.name(), LAYOUT)?;
        let images = data.images.clone().unwrap_or_else(|| dir.join("images"));
        Ok(vec![llava_question_set(
            "llava-bench",
            &dir.join("questions.jsonl"),
            &images,
            data.limit,
        )?])
    }

    // A run only answers: the judge scores later (`score --judge-url`), so no number yet.
    fn judged(&self) -> bool {
        true
    }

    // LLaVA's table: the relative score over all questions (model / reference, in %).
    fn headline(&self, metrics: &Value) -> Option<Headline> {
        Some(Headline {
            metric: "relative score (judge-graded)".into(),
            value: metrics["summary"]["all"]["relative_score"].as_f64()?,
        })
    }

    fn run_headlines(
        &self,
        _out: &Path,
    ) -> Result<std::collections::BTreeMap<String, crate::benchmark::Headline>> {
        Ok(Default::default())
    }

    fn report_run(&self, run: &RunOutput) -> Result<String> {
        // The answers file is already what the review script reads.
        judged_run_note(self.name(), run, |answers, name| {
            let bytes = std::fs::read(answers).map_err(|e| Error::io(answers, e))?;
            Ok((PathBuf::from(format!("answers/{name}.jsonl")), bytes))
        })
    }

    fn score(&self, data: &Path, answers: &Path, options: &ScoreOptions) -> Result<Scorecard> {
        let judge = options.judge.ok_or_else(|| no_judge(self.name()))?;
        let dir = expect_dir(data, self.name(), LAYOUT)?;
        let questions_path = dir.join("questions.jsonl");
        let reference_path = dir.join("answers_gpt4.jsonl");
        let questions = jsonl::read::<Value>(&questions_path)?;
        let references = jsonl::read::<Value>(&reference_path)?;
        let replies = jsonl::read::<Value>(answers)?;
        let rules = read_rules(&dir.join("rule.json"))?;
        let context = read_context(&dir.join("context.jsonl"))?;
        // zip() pairs by line and silently drops the rest; a short or shuffled file would be
        // scored against the wrong questions, so it is refused here.
        for (path, lines) in [
            (&reference_path, &references),
            (&answers.to_path_buf(), &replies),
        ] {
            if lines.len() != questions.len() {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "{} answers for {} questions in {}; the review pairs them by line",
                        lines.len(),
                        questions.len(),
                        questions_path.display()
                    ),
                ));
            }
        }

        let stem = answers
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("answers")
            .to_string();
        let review_file = format!("reviews/{stem}.jsonl");
        let calls_file = format!("reviews/{stem}-judge-calls.jsonl");
        let mut printed = String::new();
        let mut log = CallLog::default();
        let mut review_text = String::new();
        let mut reviews = Vec::new();
        for (idx, (((qline, q), (_, a1)), (aline, a2))) in
            questions.iter().zip(&references).zip(&replies).enumerate()
        {
            let field = |v: &Value, path: &Path, line: usize, name: &str| -> Result<String> {
                v[name].as_str().map(str::to_string).ok_or_else(|| {
                    Error::data(path, line, format!("field `{name}`: expected a string"))
                })
            };
            let qid = q["question_id"].clone();
            if a2["question_id"] != qid {
                return Err(Error::data(
                    answers,
                    *aline,
                    format!(
                        "question_id {} where line {qline} of {} has {qid}; the review pairs answers with questions by line",
                        a2["question_id"],
                        questions_path.display()
                    ),
                ));
            }
            let image = field(q, &questions_path, *qline, "image")?;
            let caption = context.get(&image).ok_or_else(|| {
                Error::data(
                    &questions_path,
                    *qline,
                    format!("image {image:?} has no line in context.jsonl"),
                )
            })?;
            let category = format!(
                "llava_bench_{}",
                field(q, &questions_path, *qline, "category")?
            );
            let (role, prompt) = rules.get(&category).ok_or_else(|| {
                Error::data(
                    &questions_path,
                    *qline,
                    format!("Visual QA category not found in rule file: {category}."),
                )
            })?;
            let content = review_prompt(
                caption,
                &field(q, &questions_path, *qline, "text")?,
                role,
                &field(a1, &reference_path, idx + 1, "text")?,
                &field(a2, answers, *aline, "text")?,
                prompt,
            );
            let request = JudgeRequest {
                model: judge.model().to_string(),
                system: Some(SYSTEM.to_string()),
                user: content,
                temperature: TEMPERATURE,
                max_tokens: MAX_TOKENS,
            };
            let review = ask_until_answered(judge, &mut log, &request, &qid, &mut printed);
            let pair = parse_score(&review, &mut printed);
            // answer1_id falls back to the question id, as the script does; it requires
            // answer2's `answer_id`, which this project's answer files may lack, so that falls
            // back too.
            let a1_id = id_or(&a1["answer_id"], &a1["question_id"]);
            let a2_id = id_or(&a2["answer_id"], &a2["question_id"]);
            let line = PyJson::Dict(vec![
                ("id".into(), PyJson::Int(idx as i64 + 1)),
                ("question_id".into(), PyJson::from(&qid)),
                ("answer1_id".into(), PyJson::from(&a1_id)),
                ("answer2_id".into(), PyJson::from(&a2_id)),
                ("category".into(), PyJson::Str(category.clone())),
                ("content".into(), PyJson::Str(review.clone())),
                ("tuple".into(), pair.to_json()),
            ]);
            review_text.push_str(&json_dumps(&line, None));
            review_text.push('\n');
            reviews.push((qid, category, pair));
            printed.push_str(&format!("{}\n", idx + 1));
        }

        let config = stem.replace("gpt4_text_", "");
        let (summary_text, summary) = summarize(&config, &reviews, answers)?;
        printed.push_str(&summary_text);
        let metrics = json!({
            "judge": judge_note(judge, &log, &calls_file),
            "reviews": reviews
                .iter()
                .map(|(qid, category, pair)| json!({
                    "question_id": qid,
                    "category": category,
                    "tuple": pair.to_value(),
                }))
                .collect::<Vec<_>>(),
            "summary": summary,
        });
        Ok(Scorecard {
            printed,
            metrics,
            files: vec![
                (PathBuf::from(review_file), review_text.into_bytes()),
                (PathBuf::from(calls_file), log.to_jsonl()),
            ],
        })
    }
}

/// `rule.json`: `(role, prompt)` per category.
fn read_rules(path: &Path) -> Result<HashMap<String, (String, String)>> {
    let value = tita_core::error::read_json(path)?;
    let map = value.as_object().ok_or_else(|| {
        Error::checkpoint(
            path,
            "expected an object of rules by category (LLaVA's rule.json)",
        )
    })?;
    let mut out = HashMap::new();
    for (category, rule) in map {
        let text = |name: &str| {
            rule[name].as_str().map(str::to_string).ok_or_else(|| {
                Error::checkpoint(
                    path,
                    format!("rule `{category}`: field `{name}` is not a string"),
                )
            })
        };
        out.insert(category.clone(), (text("role")?, text("prompt")?));
    }
    Ok(out)
}

/// `context.jsonl`: the caption per image (a list of captions joined by newlines); a repeated
/// image keeps its last line, as the script's dict does.
fn read_context(path: &Path) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (line, c) in jsonl::read::<Value>(path)? {
        let image = c["image"]
            .as_str()
            .ok_or_else(|| Error::data(path, line, "field `image`: expected a string"))?;
        let caption = match &c["caption"] {
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| Error::data(path, line, "field `caption`: expected strings"))
                })
                .collect::<Result<Vec<_>>>()?
                .join("\n"),
            _ => {
                return Err(Error::data(
                    path,
                    line,
                    "field `caption`: expected a string or a list of strings",
                ))
            }
        };
        out.insert(image.to_string(), caption);
    }
    Ok(out)
}

/// The review prompt eval_gpt_review_bench.py builds.
pub fn review_prompt(
    caption: &str,
    question: &str,
    role: &str,
    reference: &str,
    answer: &str,
    prompt: &str,
) -> String {
    format!(
        "[Context]\n{caption}\n\n[Question]\n{question}\n\n\
         [{role} 1]\n{reference}\n\n[End of {role} 1]\n\n\
         [{role} 2]\n{answer}\n\n[End of {role} 2]\n\n[System]\n{prompt}\n\n"
    )
}

/// `get_eval`: asks until an answer comes, 0.5 s apart; rate limits pass silently, other
/// errors are printed.
fn ask_until_answered(
    judge: &dyn Judge,
    log: &mut CallLog,
    request: &JudgeRequest,
    qid: &Value,
    printed: &mut String,
) -> String {
    loop {
        match log.ask(judge, request, json!({ "question_id": qid })) {
            Ok(reply) => return reply.content,
            Err(JudgeError::RateLimited(_)) => {}
            Err(JudgeError::Failed(message)) => {
                printed.push_str(&message);
                printed.push('\n');
            }
        }
        log.pause(judge, RETRY_SLEEP);
    }
}

/// A review's score pair, or the script's `[-1, -1]` (ints) when the line did not parse.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pair {
    Parsed(f64, f64),
    Failed,
}

impl Pair {
    fn values(self) -> (f64, f64) {
        match self {
            Pair::Parsed(a, b) => (a, b),
            Pair::Failed => (-1.0, -1.0),
        }
    }

    fn to_json(self) -> PyJson {
        match self {
            Pair::Parsed(a, b) => PyJson::List(vec![PyJson::Float(a), PyJson::Float(b)]),
            Pair::Failed => PyJson::List(vec![PyJson::Int(-1), PyJson::Int(-1)]),
        }
    }

    fn to_value(self) -> Value {
        match self {
            Pair::Parsed(a, b) => json!([a, b]),
            Pair::Failed => json!([-1, -1]),
        }
    }
}

/// `parse_score`, with its prints.
fn parse_score(review: &str, printed: &mut String) -> Pair {
    let first = review.split('\n').next().unwrap_or("").replace(',', " ");
    let fields: Vec<&str> = first.split(' ').collect();
    if fields.len() != 2 {
        printed.push_str(&format!("error {review}\n"));
        return Pair::Failed;
    }
    for field in &fields {
        if parse_float(field).is_none() {
            printed.push_str(&format!(
                "could not convert string to float: {}\nerror {review}\n",
                repr_str(field)
            ));
            return Pair::Failed;
        }
    }
    Pair::Parsed(
        parse_float(fields[0]).expect("checked"),
        parse_float(fields[1]).expect("checked"),
    )
}

fn id_or(id: &Value, fallback: &Value) -> Value {
    if id.is_null() {
        fallback.clone()
    } else {
        id.clone()
    }
}

/// summarize_gpt_review.py on the reviews: its printed text, and per category the relative
/// score and both means × 10.
fn summarize(
    config: &str,
    reviews: &[(Value, String, Pair)],
    answers: &Path,
) -> Result<(String, Value)> {
    let mut by_category: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for (_, category, pair) in reviews {
        by_category.entry(category).or_default().push(pair.values());
        by_category.entry("all").or_default().push(pair.values());
    }
    let mut text = format!("{config}\n");
    let mut summary = serde_json::Map::new();
    for (category, pairs) in &by_category {
        let n = pairs.len() as f64;
        // numpy's mean over axis 0 of an (n, 2) array adds row by row.
        let (s0, s1) = pairs
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let (m0, m1) = (round(s0 / n, 3), round(s1 / n, 3));
        if m0 == 0.0 {
            return Err(Error::checkpoint(
                answers,
                format!("category {category}: the reference's mean score is 0; summarize_gpt_review.py stops here with ZeroDivisionError"),
            ));
        }
        let relative = round(m1 / m0 * 100.0, 1);
        let (x0, x1) = (round(m0 * 10.0, 1), round(m1 * 10.0, 1));
        text.push_str(&format!(
            "{category} {} {} {}\n",
            python::float(relative),
            python::float(x0),
            python::float(x1)
        ));
        summary.insert(
            category.to_string(),
            json!({"relative_score": relative, "gpt4_score_x10": x0, "model_score_x10": x1}),
        );
    }
    text.push_str("=================================\n");
    Ok((text, Value::Object(summary)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_lines_parse_as_the_script_parses_them() {
        let mut printed = String::new();
        assert_eq!(
            parse_score("8 9\nwhy", &mut printed),
            Pair::Parsed(8.0, 9.0)
        );
        assert_eq!(parse_score("8.5 7.5", &mut printed), Pair::Parsed(8.5, 7.5));
        assert!(printed.is_empty());
        assert_eq!(parse_score("9, 7\nx", &mut printed), Pair::Failed);
        assert_eq!(printed, "error 9, 7\nx\n");
        printed.clear();
        assert_eq!(parse_score("A 7", &mut printed), Pair::Failed);
        assert_eq!(
            printed,
            "could not convert string to float: 'A'\nerror A 7\n"
        );
        assert_eq!(
            parse_score("1,2", &mut String::new()),
            Pair::Parsed(1.0, 2.0)
        );
    }
}
