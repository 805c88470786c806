//! POPE (Li et al., 2023): yes/no questions about objects in COCO images, in three splits by how
//! the absent objects were drawn (random, popular, adversarial). Questions and answers use the
//! upstream / LLaVA formats, and answers are scored with the upstream rule, so numbers here
//! compare with published ones.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tita_core::{jsonl, Error, Result};

/// One question (`coco_pope_{split}.json`: one JSON object per line). The generic yes/no
/// sets of the project (`{"image", "text", "label"}`) read into the same type, their line
/// number standing in for a missing `question_id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Question {
    #[serde(default)]
    pub question_id: Option<u64>,
    pub image: String,
    pub text: String,
    pub label: String,
}

/// One answer line as LLaVA's evaluation scripts write it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    pub question_id: u64,
    #[serde(default)]
    pub prompt: String,
    pub text: String,
    #[serde(default)]
    pub model_id: String,
}

/// Reads questions; labels must be `yes` or `no`, and every question gets an id, unique in the
/// file (answers are matched to questions by id).
pub fn read_questions(path: &Path) -> Result<Vec<Question>> {
    let mut out = Vec::new();
    let mut first_line = std::collections::HashMap::new();
    for (line, mut q) in jsonl::read::<Question>(path)? {
        let label = q.label.trim().to_ascii_lowercase();
        if label != "yes" && label != "no" {
            return Err(Error::data(
                path,
                line,
                format!("`label` must be \"yes\" or \"no\", found {:?}", q.label),
            ));
        }
        if q.text.trim().is_empty() {
            return Err(Error::data(path, line, "field `text` is empty"));
        }
        q.label = label;
        let id = *q.question_id.get_or_insert(line as u64);
        if let Some(earlier) = first_line.insert(id, line) {
            return Err(Error::data(
                path,
                line,
                format!("question_id {id} is already used on line {earlier}; ids must be unique"),
            ));
        }
        out.push(q);
    }
    if out.is_empty() {
        return Err(Error::data(path, 1, "no questions in this file"));
    }
    Ok(out)
}

/// The upstream POPE rule: keep the first sentence, drop commas, split on spaces; "No", "no"
/// or "not" among the words means no, anything else (the empty answer too) means yes.
pub fn is_yes(answer: &str) -> bool {
    let first = answer.split('.').next().unwrap_or("");
    let cleaned = first.replace(',', "");
    !cleaned
        .split(' ')
        .any(|w| w == "No" || w == "no" || w == "not")
}

/// Binary-classification metrics of yes/no answers ("yes" = positive).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct YesNoMetrics {
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Share of "yes" predictions.
    pub yes_ratio: f64,
    pub count: usize,
}

impl YesNoMetrics {
    /// From (prediction is yes, label is yes) pairs.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (bool, bool)>) -> Self {
        let (mut tp, mut fp, mut tn, mut fun) = (0usize, 0usize, 0usize, 0usize);
        for (pred, label) in pairs {
            match (pred, label) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, false) => tn += 1,
                (false, true) => fun += 1,
            }
        }
        let n = tp + fp + tn + fun;
        let div = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = div(tp, tp + fp);
        let recall = div(tp, tp + fun);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        YesNoMetrics {
            accuracy: div(tp + tn, n),
            precision,
            recall,
            f1,
            yes_ratio: div(tp + fp, n),
            count: n,
        }
    }
}

/// Scores `answers` against `questions` by `question_id`. Every answer must belong to a
/// question; questions without an answer are an error too (a partial run is not a score).
pub fn score(questions: &[Question], answers_path: &Path) -> Result<YesNoMetrics> {
    Ok(YesNoMetrics::from_pairs(judge(questions, answers_path)?))
}

/// How a benchmark reads an answer: yes, no, or neither (`None`: wrong whatever the label).
pub type Reading = fn(&str) -> Option<bool>;

/// POPE's reading: an answer is "no" if its first sentence says no or not, else "yes".
pub fn pope_reading(answer: &str) -> Option<bool> {
    Some(is_yes(answer))
}

/// (prediction is yes, label is yes) for every question, in question order; see [`score`].
pub fn judge(questions: &[Question], answers_path: &Path) -> Result<Vec<(bool, bool)>> {
    judge_as(questions, answers_path, pope_reading)
}

/// [`judge`] with a benchmark's own reading of answers; an answer that is neither yes nor no
/// counts as the opposite of its label (wrong, as that benchmark scores it).
pub fn judge_as(
    questions: &[Question],
    answers_path: &Path,
    read: Reading,
) -> Result<Vec<(bool, bool)>> {
    let labels: HashMap<u64, bool> = questions
        .iter()
        .map(|q| {
            (
                q.question_id.expect("set by read_questions"),
                q.label == "yes",
            )
        })
        .collect();
    let mut seen = HashMap::new();
    for (line, a) in jsonl::read::<Answer>(answers_path)? {
        let Some(&label) = labels.get(&a.question_id) else {
            return Err(Error::data(
                answers_path,
                line,
                format!("question_id {} is not among the questions", a.question_id),
            ));
        };
        if seen
            .insert(a.question_id, (read(&a.text).unwrap_or(!label), label))
            .is_some()
        {
            return Err(Error::data(
                answers_path,
                line,
                format!("question_id {} is answered twice", a.question_id),
            ));
        }
    }
    if seen.len() != labels.len() {
        return Err(Error::data(
            answers_path,
            0,
            format!(
                "{} of {} questions have no answer",
                labels.len() - seen.len(),
                labels.len()
            ),
        ));
    }
    Ok(questions
        .iter()
        .map(|q| seen[&q.question_id.expect("set by read_questions")])
        .collect())
}

/// The split a POPE file holds, from its name (`coco_pope_adversarial.json` -> adversarial).
pub fn split_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("questions");
    stem.rsplit('_').next().unwrap_or(stem).to_string()
}
