//! TextVQA as a [`Benchmark`]: LLaVA's question file with the OCR-token line
//! (`llava_textvqa_val_v051_ocr.jsonl`), and scoring as LLaVA's `llava/eval/eval_textvqa.py`
//! with `TextVQAAccuracyEvaluator` (`m4c_evaluator.py`) does it and prints it, with lmms-eval's
//! `textvqa_val` numbers beside it.
//!
//! eval_textvqa.py's rules, kept on purpose: an answer finds its annotation by (image id,
//! lower-cased question), the question taken from the recorded prompt (its first line, when the
//! prompt has the OCR line and three lines), so two questions on one image are told apart by
//! their text; a prediction scores the soft accuracy of the EvalAI-normalised human answer it
//! equals (leave-one-out over exactly ten answers), else 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use tita_core::{Error, Result};

use crate::benchmark::{
    expect_dir, Benchmark, DataSpec, QuestionId, RunOutput, ScoreOptions, Scorecard,
};
use crate::benchmarks::vqa_eval::{
    self, leave_one_out, plain_mean, python_lines, LlavaQuestion, VqaStyle,
};
use crate::eval::QuerySet;

pub struct TextVqa;

const QUESTIONS: &str = "llava_textvqa_val_v051_ocr.jsonl";
const ANNOTATIONS: &str = "TextVQA_0.5.1_val.json";
const LAYOUT: &str = "LLaVA's textvqa folder: llava_textvqa_val_v051_ocr.jsonl, \
                      TextVQA_0.5.1_val.json, train_images/";

impl Benchmark for TextVqa {
    fn name(&self) -> &'static str {
        "textvqa"
    }

    fn title(&self) -> &'static str {
        "TextVQA"
    }

    fn about(&self) -> &'static str {
        "TextVQA (Singh et al., 2019): --data LLaVA's textvqa folder \
         (llava_textvqa_val_v051_ocr.jsonl, TextVQA_0.5.1_val.json, train_images/) or a question \
         file; score prints eval_textvqa.py's output"
    }

    // LLaVA's scripts leave model_vqa_loader's default.
    fn max_new_tokens(&self) -> usize {
        128
    }

    fn queries(&self, data: &DataSpec) -> Result<Vec<QuerySet>> {
        vqa_eval::queries(self, data)
    }

    fn parse_answer(&self, text: &str) -> String {
        vqa_eval::eval_ai(text)
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
        let dir = expect_dir(data, "textvqa", LAYOUT)?;
        let annotations_path = dir.join(ANNOTATIONS);
        let annotations = read_annotations(&annotations_path)?;
        let experiment = answers
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("answers");
        let text = vqa_eval::read_text(answers)?;
        let mut per_question = Vec::new();
        let mut lmms = Vec::new();
        let mut lmms_values = Vec::new();
        let mut scores = Vec::new();
        for (i, line) in python_lines(&text).into_iter().enumerate() {
            let line_no = i + 1;
            let result: AnswerLine = serde_json::from_str(line)
                .map_err(|e| Error::data(answers, line_no, format!("malformed line: {e}")))?;
            let question = prompt_question(&result.prompt).ok_or_else(|| {
                Error::data(
                    answers,
                    line_no,
                    "field `prompt`: eval_textvqa.py's prompt_processor reads no question from it (expected `question\\nReference OCR token: …\\ninstruction`, `question\\ninstruction` or `OCR tokens: … Question: … Short answer:`)",
                )
            })?;
            let Value::String(image_id) = &result.question_id else {
                return Err(Error::data(
                    answers,
                    line_no,
                    format!(
                        "field `question_id`: expected the image id (a string), found {}",
                        result.question_id
                    ),
                ));
            };
            let key = (image_id.clone(), question);
            let annotation = annotations.get(&key).ok_or_else(|| {
                Error::data(
                    answers,
                    line_no,
                    format!(
                        "no annotation in {} for image {:?} and question {:?}",
                        annotations_path.display(),
                        key.0,
                        key.1
                    ),
                )
            })?;
            if annotation.answers.len() != 10 {
                return Err(Error::data(
                    answers,
                    line_no,
                    format!(
                        "its annotation (image {:?}) has {} answers; TextVQAAccuracyEvaluator asserts 10",
                        key.0,
                        annotation.answers.len()
                    ),
                ));
            }
            let score = soft_score(&annotation.answers, &result.text);
            scores.push(score);
            per_question.push(json!({
                "normalized_pred": vqa_eval::eval_ai(&result.text),
                "score": score,
            }));
            lmms.push(vqa_eval::lmms_accuracy(
                &annotation.answers,
                &result.text,
                vqa_eval::eval_ai,
            ));
            lmms_values.push(vqa_eval::lmms_value(*lmms.last().expect("pushed")));
        }
        let accuracy = plain_mean(&scores).ok_or_else(|| {
            Error::checkpoint(answers, "no answers (eval_textvqa.py divides by zero)")
        })?;
        let printed = format!(
            "{experiment}\nSamples: {}\nAccuracy: {:.2}%\n\n",
            scores.len(),
            100.0 * accuracy
        );
        let metrics = json!({
            "eval_textvqa": {
                "stdout": printed,
                "accuracy": accuracy,
                "samples": scores.len(),
                "per_question": per_question,
            },
            "lmms_eval_textvqa_val": {
                "per_question": lmms_values,
                "exact_match_mean": plain_mean(&lmms),
            },
        });
        Ok(Scorecard {
            printed,
            metrics,
            files: Vec::<(PathBuf, Vec<u8>)>::new(),
        })
    }
}

/// One line of the answers file, as eval_textvqa.py reads it.
impl VqaStyle for TextVqa {
    fn names(&self) -> (&'static str, &'static str) {
        (self.name(), self.title())
    }

    fn files(&self, given: &Path) -> Result<(PathBuf, PathBuf)> {
        Ok(vqa_eval::folder_and_file(given, QUESTIONS))
    }

    fn image_dirs(&self, dir: &Path, _: &Path) -> Vec<PathBuf> {
        vec![dir.join("train_images"), dir.to_path_buf()]
    }

    // Found as eval_textvqa.py finds them: by (image id, lower-cased question).
    fn truth(&self, dir: &Path, questions: &[LlavaQuestion]) -> Result<Vec<Vec<String>>> {
        let path = dir.join(ANNOTATIONS);
        let annotations = if path.is_file() {
            read_annotations(&path)?
        } else {
            HashMap::new()
        };
        Ok((questions.iter())
            .map(|q| match (&q.id, prompt_question(&q.text)) {
                (QuestionId::Str(id), Some(question)) => annotations
                    .get(&(id.clone(), question))
                    .map_or_else(Vec::new, |a| a.answers.clone()),
                _ => Vec::new(),
            })
            .collect())
    }

    fn score_one(&self, truth: &[String], answer: &str) -> f64 {
        soft_score(truth, answer)
    }

    fn how(&self) -> &'static str {
        "Accuracy: TextVQAAccuracyEvaluator's (EvalAI-normalised answers, leave-one-out soft score), where the folder had TextVQA_0.5.1_val.json."
    }
}

#[derive(Deserialize)]
struct AnswerLine {
    question_id: Value,
    prompt: String,
    text: String,
}

#[derive(Deserialize)]
struct Annotation {
    image_id: String,
    question: String,
    answers: Vec<String>,
}

#[derive(Deserialize)]
struct AnnotationFile {
    data: Vec<Annotation>,
}

/// The annotations by (image id, lower-cased question); a later duplicate wins, as in the
/// script's dict.
fn read_annotations(path: &Path) -> Result<HashMap<(String, String), Annotation>> {
    let file: AnnotationFile = vqa_eval::read_json_file(path)?;
    Ok(file
        .data
        .into_iter()
        .map(|a| ((a.image_id.clone(), a.question.to_lowercase()), a))
        .collect())
}

/// eval_textvqa.py's `prompt_processor`: the lower-cased question of a prompt, `None` where
/// it asserts.
fn prompt_question(prompt: &str) -> Option<String> {
    let lines: Vec<&str> = prompt.split('\n').collect();
    let question = if prompt.starts_with("OCR tokens: ") {
        // re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        let start = prompt.find("Question: ")? + "Question: ".len();
        let rest = &prompt[start..];
        &rest[..rest.find(" Short answer:")?]
    } else if prompt.contains("Reference OCR token: ") && lines.len() == 3 {
        if prompt.starts_with("Reference OCR token:") {
            lines[1]
        } else {
            lines[0]
        }
    } else if lines.len() == 2 {
        lines[0]
    } else {
        return None;
    };
    Some(question.to_lowercase())
}

/// TextVQAAccuracyEvaluator: the prediction's score among the unique normalised human answers
/// (mean over the answer left out of min(1, matches / 3)), 0 when it is none of them.
fn soft_score(answers: &[String], prediction: &str) -> f64 {
    let gt: Vec<(usize, String)> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| (i, vqa_eval::eval_ai(a)))
        .collect();
    let pred = vqa_eval::eval_ai(prediction);
    if !gt.iter().any(|(_, a)| *a == pred) {
        return 0.0;
    }
    plain_mean(&leave_one_out(&gt, |(_, a)| *a == pred)).unwrap_or(0.0)
}
