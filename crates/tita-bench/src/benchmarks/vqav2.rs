//! VQAv2 as a [`Benchmark`]: LLaVA's question files, the submission file LLaVA's
//! `scripts/convert_vqav2_for_submission.py` writes for the EvalAI server (test-dev), and the
//! local score of that submission as the VQA evaluation code (GT-Vision-Lab/VQA `vqaEval.py`)
//! gives it where VQA-format annotations are present (val), with lmms-eval's `vqav2_val`
//! numbers beside it.
//!
//! Rules kept on purpose: the converter writes one answer for every question of the whole
//! split file (`llava_vqav2_mscoco_test2015.jsonl`), `""` for those never answered, answers
//! normalised by EvalAI's processor (`Woman's` -> `woman 's`); lines that are not JSON are
//! counted as `error_line`. The VQA evaluation normalises again only when the ten human answers
//! are not all the same, and rounds every number to two decimals.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tita_core::{Error, Result};

use crate::benchmark::{
    expect_dir, Benchmark, DataSpec, QuestionId, RunOutput, ScoreOptions, Scorecard,
};
use crate::benchmarks::vqa_eval::{
    self, flatten, id_json, id_key, leave_one_out, plain_mean, ConverterAnswers, LlavaQuestion,
    VqaStyle,
};
use crate::eval::QuerySet;
use crate::python;

pub struct Vqav2;

/// The whole test split, which the converter answers in full.
const FULL_SPLIT: &str = "llava_vqav2_mscoco_test2015.jsonl";
/// The questions LLaVA's script asks.
const ASKED: &str = "llava_vqav2_mscoco_test-dev2015";
const ANNOTATIONS: &str = "v2_mscoco_val2014_annotations.json";
const QUESTIONS: &str = "v2_OpenEnded_mscoco_val2014_questions.json";
const LAYOUT: &str = "LLaVA's vqav2 folder: llava_vqav2_mscoco_test2015.jsonl, \
                      llava_vqav2_mscoco_test-dev2015.jsonl, test2015/ (images); optionally \
                      v2_mscoco_val2014_annotations.json for local scores";

impl Benchmark for Vqav2 {
    fn name(&self) -> &'static str {
        "vqav2"
    }

    fn title(&self) -> &'static str {
        "VQAv2"
    }

    fn about(&self) -> &'static str {
        "VQAv2 (Goyal et al., 2017): --data LLaVA's vqav2 folder (llava_vqav2_mscoco_test-dev2015.jsonl, \
         llava_vqav2_mscoco_test2015.jsonl, test2015/) or a question file; score writes \
         convert_vqav2_for_submission.py's upload file and scores it with vqaEval.py where \
         v2_mscoco_val2014_annotations.json is present"
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
        let dir = expect_dir(data, "vqav2", LAYOUT)?;
        let converted = ConverterAnswers::read(answers)?;
        let split_path = dir.join(FULL_SPLIT);
        let split = vqa_eval::read_llava_questions(&split_path)?;
        let printed = format!(
            "total results: {}, total split: {}, error_line: {}\n",
            converted.results.len(),
            split.len(),
            converted.error_line
        );
        let by_id = converted.map();
        let submission: Vec<(QuestionId, String)> = split
            .iter()
            .map(|q| {
                let answer = by_id
                    .get(&q.id)
                    .map_or(String::new(), |t| vqa_eval::eval_ai(t));
                (q.id.clone(), answer)
            })
            .collect();
        let entries: Vec<String> = submission
            .iter()
            .map(|(id, a)| {
                python::json_object([("question_id", &id_json(id)), ("answer", &json!(a))])
            })
            .collect();
        let bytes = format!("[{}]", entries.join(", ")).into_bytes();
        let (split_name, ckpt) = split_and_checkpoint(answers);
        let upload = PathBuf::from("answers_upload")
            .join(split_name)
            .join(format!("{ckpt}.json"));

        let mut metrics = Map::new();
        let listed: Vec<Value> = submission
            .iter()
            .map(|(id, a)| json!({ "question_id": id_json(id), "answer": a }))
            .collect();
        metrics.insert(
            "llava_converter".into(),
            json!({ "stdout": printed, "submission": listed }),
        );
        let annotations_path = dir.join(ANNOTATIONS);
        if annotations_path.is_file() {
            // VQA(annFile, quesFile) loads the questions too.
            vqa_eval::read_json_file::<Value>(&dir.join(QUESTIONS))?;
            let annotations = read_annotations(&annotations_path)?;
            metrics.insert(
                "vqa_eval_on_submission".into(),
                vqa_eval_on(&annotations, &submission, &annotations_path)?,
            );
            metrics.insert(
                "lmms_eval_vqav2_val".into(),
                lmms_eval(&annotations, &converted),
            );
        }
        Ok(Scorecard {
            printed,
            metrics: Value::Object(metrics),
            files: vec![(upload, bytes)],
        })
    }
}

impl VqaStyle for Vqav2 {
    fn names(&self) -> (&'static str, &'static str) {
        (self.name(), self.title())
    }

    fn files(&self, given: &Path) -> Result<(PathBuf, PathBuf)> {
        Ok(vqa_eval::folder_and_file(given, &format!("{ASKED}.jsonl")))
    }

    fn image_dirs(&self, dir: &Path, _: &Path) -> Vec<PathBuf> {
        vec![dir.join("test2015"), dir.join("val2014"), dir.to_path_buf()]
    }

    fn truth(&self, dir: &Path, questions: &[LlavaQuestion]) -> Result<Vec<Vec<String>>> {
        let annotations = annotations_if_any(dir)?.unwrap_or_default();
        Ok((questions.iter())
            .map(|q| match &q.id {
                QuestionId::Int(id) => annotations.get(id).map_or_else(Vec::new, |a| {
                    a.answers.iter().map(|x| x.answer.clone()).collect()
                }),
                QuestionId::Str(_) => Vec::new(),
            })
            .collect())
    }

    // The VQA evaluation's accuracy of the converted answer.
    fn score_one(&self, truth: &[String], answer: &str) -> f64 {
        let mut raw: Vec<RawAnswer> = (truth.iter().enumerate())
            .map(|(i, a)| RawAnswer {
                answer: a.clone(),
                rest: json!({ "answer_id": i })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect();
        vqa_accuracy(&mut raw, &vqa_eval::eval_ai(answer)).unwrap_or(0.0)
    }

    fn how(&self) -> &'static str {
        "Accuracy: the VQA evaluation's on the converted answers, where the folder had VQA-format annotations for the questions."
    }
}

/// The converter's output path parts from `answers/<split>/<ckpt>/merge.jsonl`; any other
/// answers file is its own checkpoint under the test-dev split.
fn split_and_checkpoint(answers: &Path) -> (String, String) {
    let name = |p: Option<&Path>| {
        p.and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .map(str::to_string)
    };
    if answers.file_name().and_then(|n| n.to_str()) == Some("merge.jsonl") {
        let ckpt_dir = answers.parent();
        if let (Some(ckpt), Some(split)) = (name(ckpt_dir), name(ckpt_dir.and_then(Path::parent))) {
            return (split, ckpt);
        }
    }
    let stem = answers
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("answers");
    (ASKED.to_string(), stem.to_string())
}

/// One human answer: the `answer` and the other fields, compared whole as the official
/// `item != gtAnsDatum` compares dicts.
#[derive(Debug, Clone, PartialEq)]
struct RawAnswer {
    answer: String,
    rest: Map<String, Value>,
}

impl<'de> Deserialize<'de> for RawAnswer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut rest = Map::<String, Value>::deserialize(d)?;
        match rest.remove("answer") {
            Some(Value::String(answer)) => Ok(RawAnswer { answer, rest }),
            _ => Err(serde::de::Error::custom(
                "field `answer`: expected a string",
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Annotation {
    question_id: i64,
    question_type: String,
    answer_type: String,
    answers: Vec<RawAnswer>,
}

#[derive(Deserialize)]
struct AnnotationFile {
    annotations: Vec<Annotation>,
}

fn read_annotations(path: &Path) -> Result<Vec<Annotation>> {
    Ok(vqa_eval::read_json_file::<AnnotationFile>(path)?.annotations)
}

/// The annotations by question id, when the folder has them.
fn annotations_if_any(dir: &Path) -> Result<Option<HashMap<i64, Annotation>>> {
    let path = dir.join(ANNOTATIONS);
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(
        read_annotations(&path)?
            .into_iter()
            .map(|a| (a.question_id, a))
            .collect(),
    ))
}

/// vqaEval.py's accuracy of one prediction: the answers are flattened (and normalised when
/// they differ) in place, as the official code does to its annotations. `None` without answers
/// (ZeroDivisionError there).
fn vqa_accuracy(answers: &mut [RawAnswer], prediction: &str) -> Option<f64> {
    for a in answers.iter_mut() {
        a.answer = flatten(&a.answer);
    }
    let mut res = flatten(prediction);
    let first = answers.first().map(|a| a.answer.clone());
    if answers.iter().any(|a| Some(&a.answer) != first.as_ref()) {
        for a in answers.iter_mut() {
            a.answer = vqa_eval::vqa_eval(&a.answer);
        }
        res = vqa_eval::vqa_eval(&res);
    }
    plain_mean(&leave_one_out(answers, |a| a.answer == res))
}

/// `VQAEval(vqa, vqa.loadRes(submission)).evaluate()` and its `accuracy` and `evalQA`.
fn vqa_eval_on(
    annotations: &[Annotation],
    submission: &[(QuestionId, String)],
    path: &Path,
) -> Result<Value> {
    // loadRes: the submission must answer exactly the annotated questions.
    let mut res: HashMap<i64, &str> = HashMap::new();
    for (id, answer) in submission {
        let QuestionId::Int(i) = id else {
            return Err(Error::checkpoint(
                path,
                format!("the submission's question_id {id} is not an integer; vqa.py's loadRes finds no annotation for it"),
            ));
        };
        res.insert(*i, answer);
    }
    let mut gts: HashMap<i64, Annotation> = HashMap::new();
    for a in annotations {
        gts.insert(a.question_id, a.clone());
    }
    let mut missing: Vec<String> = gts
        .keys()
        .filter(|k| !res.contains_key(k))
        .map(|k| k.to_string())
        .collect();
    let mut extra: Vec<String> = res
        .keys()
        .filter(|k| !gts.contains_key(k))
        .map(|k| k.to_string())
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        missing.sort();
        extra.sort();
        return Err(Error::checkpoint(
            path,
            format!(
                "the submission does not answer the annotated questions (vqa.py's loadRes assertion: \"Results do not correspond to current VQA set\"): unanswered {:?}, not annotated {:?}",
                missing, extra
            ),
        ));
    }
    let mut all = Vec::new();
    let mut per_question_type: Vec<(String, Vec<f64>)> = Vec::new();
    let mut per_answer_type: Vec<(String, Vec<f64>)> = Vec::new();
    let mut eval_qa = Map::new();
    let push = |groups: &mut Vec<(String, Vec<f64>)>, key: &str, v: f64| match groups
        .iter_mut()
        .find(|(k, _)| k == key)
    {
        Some((_, list)) => list.push(v),
        None => groups.push((key.to_string(), vec![v])),
    };
    for a in annotations {
        let gt = gts.get_mut(&a.question_id).expect("indexed above");
        let acc = vqa_accuracy(&mut gt.answers, res[&a.question_id]).ok_or_else(|| {
            Error::checkpoint(
                path,
                format!(
                    "question {} has no answers (vqaEval.py divides by zero)",
                    a.question_id
                ),
            )
        })?;
        all.push(acc);
        push(&mut per_question_type, &gt.question_type, acc);
        push(&mut per_answer_type, &gt.answer_type, acc);
        eval_qa.insert(
            a.question_id.to_string(),
            json!(python::round(100.0 * acc, 2)),
        );
    }
    // round(100*float(sum(acc))/len(acc), n)
    let rounded = |v: &[f64]| python::round(100.0 * v.iter().sum::<f64>() / v.len() as f64, 2);
    let groups = |g: &[(String, Vec<f64>)]| -> Map<String, Value> {
        g.iter()
            .map(|(k, v)| (k.clone(), json!(rounded(v))))
            .collect()
    };
    let overall = if all.is_empty() {
        return Err(Error::checkpoint(
            path,
            "no annotations (vqaEval.py divides by zero)",
        ));
    } else {
        rounded(&all)
    };
    Ok(json!({
        "overall": overall,
        "perQuestionType": groups(&per_question_type),
        "perAnswerType": groups(&per_answer_type),
        "evalQA": eval_qa,
    }))
}

/// lmms-eval's `vqav2_process_results` on every answered, annotated question (answers in the
/// answers file's order) and the mean of `exact_match`.
fn lmms_eval(annotations: &[Annotation], converted: &ConverterAnswers) -> Value {
    let by_id: HashMap<i64, &Annotation> = annotations.iter().map(|a| (a.question_id, a)).collect();
    let mut per_question = Map::new();
    let mut values = Vec::new();
    for (id, text) in &converted.results {
        let QuestionId::Int(i) = id else { continue };
        let Some(a) = by_id.get(i) else { continue };
        let answers: Vec<RawAnswer> = a
            .answers
            .iter()
            .map(|x| RawAnswer {
                answer: vqa_eval::eval_ai_without_tokenize(&flatten(&x.answer)),
                rest: x.rest.clone(),
            })
            .collect();
        let res = vqa_eval::eval_ai_without_tokenize(&flatten(text));
        let acc =
            python::statistics_mean(&leave_one_out(&answers, |x| x.answer == res)).unwrap_or(0.0);
        per_question.insert(id_key(id), vqa_eval::lmms_value(acc));
        values.push(acc);
    }
    json!({
        "per_question": per_question,
        "exact_match_mean": plain_mean(&values),
        "n": values.len(),
    })
}
