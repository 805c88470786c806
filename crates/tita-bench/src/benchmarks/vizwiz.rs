//! VizWiz as a [`Benchmark`]: LLaVA's question file (`llava_test.jsonl`, or `llava_val.jsonl`),
//! the upload file LLaVA's `scripts/convert_vizwiz_for_submission.py` writes for the EvalAI
//! server, and the local val accuracy as lmms-eval's `vizwiz_vqa` computes it from
//! `Annotations/val.json` (the official scorer is the server).
//!
//! The converter's rules, kept on purpose: lines that are not JSON are skipped and counted as
//! `error_line`; of two answers to one question the later wins; every question of the file
//! must have an answer (its `assert`); answers go through EvalAI's processor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tita_core::{Error, Result};

use crate::benchmark::{expect_dir, Benchmark, DataSpec, RunOutput, ScoreOptions, Scorecard};
use crate::benchmarks::vqa_eval::{
    self, id_key, plain_mean, ConverterAnswers, LlavaQuestion, VqaStyle,
};
use crate::eval::QuerySet;
use crate::python;

pub struct VizWiz;

const ANNOTATIONS: &str = "Annotations/val.json";
const LAYOUT: &str = "LLaVA's vizwiz folder: llava_test.jsonl or llava_val.jsonl, test/ or val/ \
                      (images); optionally Annotations/val.json for local scores";

impl Benchmark for VizWiz {
    fn name(&self) -> &'static str {
        "vizwiz"
    }

    fn title(&self) -> &'static str {
        "VizWiz"
    }

    fn about(&self) -> &'static str {
        "VizWiz (Gurari et al., 2018): --data LLaVA's vizwiz folder (llava_test.jsonl or \
         llava_val.jsonl, test/ or val/, Annotations/val.json) or a question file; score writes \
         convert_vizwiz_for_submission.py's upload file and lmms-eval's val accuracy"
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
        let (dir, file) = question_file(data)?;
        let converted = ConverterAnswers::read(answers)?;
        let split = vqa_eval::read_llava_questions(&file)?;
        let printed = format!(
            "total results: {}, total split: {}, error_line: {}\n",
            converted.results.len(),
            split.len(),
            converted.error_line
        );
        let by_id = converted.map();
        let mut entries = Vec::new();
        let mut listed = Vec::new();
        for q in &split {
            let text = by_id
                .get(&q.id)
                .ok_or_else(|| missing_answer(&file, q, answers))?;
            let answer = vqa_eval::eval_ai(text);
            entries.push(python::json_object([
                ("image", &json!(q.image)),
                ("answer", &json!(answer)),
            ]));
            listed.push(json!({ "image": q.image, "answer": answer }));
        }
        let bytes = format!("[{}]", entries.join(", ")).into_bytes();
        let stem = answers
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("answers");
        let upload = PathBuf::from("answers_upload").join(format!("{stem}.json"));

        let mut metrics = Map::new();
        metrics.insert(
            "llava_converter".into(),
            json!({ "stdout": printed, "submission": listed }),
        );
        if let Some(truth) = annotations_if_any(&dir)? {
            metrics.insert(
                "lmms_eval_vizwiz_vqa_val".into(),
                lmms_eval(&truth, &split, &converted),
            );
        }
        Ok(Scorecard {
            printed,
            metrics: Value::Object(metrics),
            files: vec![(upload, bytes)],
        })
    }
}

impl VqaStyle for VizWiz {
    fn names(&self) -> (&'static str, &'static str) {
        (self.name(), self.title())
    }

    fn files(&self, given: &Path) -> Result<(PathBuf, PathBuf)> {
        question_file(given)
    }

    fn image_dirs(&self, dir: &Path, file: &Path) -> Vec<PathBuf> {
        vec![dir.join(split_of(file)), dir.to_path_buf()]
    }

    fn truth(&self, dir: &Path, questions: &[LlavaQuestion]) -> Result<Vec<Vec<String>>> {
        let truth = annotations_if_any(dir)?.unwrap_or_default();
        Ok((questions.iter())
            .map(|q| {
                truth
                    .get(&q.image)
                    .map_or_else(Vec::new, Annotation::answers)
            })
            .collect())
    }

    fn score_one(&self, truth: &[String], answer: &str) -> f64 {
        vqa_eval::lmms_accuracy(truth, answer, vqa_eval::eval_ai)
    }

    fn how(&self) -> &'static str {
        "Accuracy: lmms-eval's VizWiz accuracy (EvalAI-normalised answers, leave-one-out over the ten human answers), where the folder had Annotations/val.json."
    }
}

/// The converter's `assert x['question_id'] in results`.
fn missing_answer(file: &Path, q: &LlavaQuestion, answers: &Path) -> Error {
    Error::data(
        file,
        q.line,
        format!(
            "question_id {} has no answer in {} (convert_vizwiz_for_submission.py's assertion `x['question_id'] in results` fails)",
            q.id,
            answers.display()
        ),
    )
}

/// The folder and the question file: a question file as given, or in a folder
/// `llava_test.jsonl` (what LLaVA's script asks) or else `llava_val.jsonl`.
fn question_file(given: &Path) -> Result<(PathBuf, PathBuf)> {
    if given.is_file() {
        let dir = given.parent().map(Path::to_path_buf).unwrap_or_default();
        return Ok((dir, given.to_path_buf()));
    }
    let dir = expect_dir(given, "vizwiz", LAYOUT)?;
    let file = ["llava_test.jsonl", "llava_val.jsonl"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::checkpoint(
                &dir,
                format!("no llava_test.jsonl or llava_val.jsonl; vizwiz expects {LAYOUT}"),
            )
        })?;
    Ok((dir, file))
}

/// `test` or `val` from `llava_{split}.jsonl` (the image folder's name).
fn split_of(file: &Path) -> &str {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    stem.strip_prefix("llava_").unwrap_or(stem)
}

#[derive(Deserialize)]
struct HumanAnswer {
    answer: String,
}

#[derive(Deserialize)]
struct Annotation {
    image: String,
    answers: Vec<HumanAnswer>,
}

impl Annotation {
    fn answers(&self) -> Vec<String> {
        self.answers.iter().map(|a| a.answer.clone()).collect()
    }
}

/// `Annotations/val.json` by image name, when present.
fn annotations_if_any(dir: &Path) -> Result<Option<HashMap<String, Annotation>>> {
    let path = dir.join(ANNOTATIONS);
    if !path.is_file() {
        return Ok(None);
    }
    let list: Vec<Annotation> = vqa_eval::read_json_file(&path)?;
    Ok(Some(
        list.into_iter().map(|a| (a.image.clone(), a)).collect(),
    ))
}

/// lmms-eval's `vizwiz_vqa_process_results` on every answer (in the answers file's order)
/// whose question has annotations, and the mean of `exact_match`.
fn lmms_eval(
    truth: &HashMap<String, Annotation>,
    split: &[LlavaQuestion],
    converted: &ConverterAnswers,
) -> Value {
    let image_of: HashMap<_, _> = split.iter().map(|q| (&q.id, &q.image)).collect();
    let mut per_question = Map::new();
    let mut values = Vec::new();
    for (id, text) in &converted.results {
        let Some(a) = image_of.get(id).and_then(|image| truth.get(*image)) else {
            continue;
        };
        let acc = vqa_eval::lmms_accuracy(&a.answers(), text, vqa_eval::eval_ai);
        per_question.insert(id_key(id), vqa_eval::lmms_value(acc));
        values.push(acc);
    }
    json!({
        "per_question": per_question,
        "exact_match_mean": plain_mean(&values),
        "n": values.len(),
    })
}
