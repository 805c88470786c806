//! What the VQA-style benchmarks (VQAv2, VizWiz, TextVQA, GQA) share: the answer normalisation
//! of EvalAI's `EvalAIAnswerProcessor` (LLaVA `llava/eval/m4c_evaluator.py`, also lmms-eval's)
//! and of the VQA evaluation (`vqaEval.py`), the leave-one-out VQA accuracy, LLaVA's question
//! files and its converters' way of reading answers files, and the run report.
//!
//! Quirks kept on purpose, because the official numbers carry them: `PERIOD_STRIP` removes at
//! most 32 periods (`re.UNICODE` is passed as the count); EvalAI's `word_tokenize` turns `'s`
//! into ` 's`; the two codes test for a comma between digits with different patterns
//! (`(?<=\d)(\,)+(?=\d)` and `(\d)(\,)(\d)`), and Python's `\d` is any Unicode decimal digit.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tita_core::{jsonl, Error, Result};

use tita_decode::ImageInput;

use crate::benchmark::{DataSpec, Headline, QuestionId, RunOutput};
use crate::eval::{answers_path, llava_answers, Query, QuerySet, RunAnswer, SHORT_ANSWER};
use crate::python;

/// The contractions both codes restore (the same 120 entries, `somebody'd` -> `somebodyd` too).
const CONTRACTIONS: [(&str, &str); 120] = [
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

const NUMBERS: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];
const ARTICLES: [&str; 3] = ["a", "an", "the"];
const PUNCTUATION: [&str; 21] = [
    ";", "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
];

/// Which "comma between digits" test decides whether punctuation is deleted or spaced.
#[derive(Clone, Copy)]
enum CommaRule {
    /// EvalAI: `(?<=\d)(\,)+(?=\d)`, a run of commas between digits.
    EvalAi,
    /// vqaEval.py: `(\d)(\,)(\d)`, one comma between digits.
    VqaEval,
}

fn has_digit_comma(text: &str, rule: CommaRule) -> bool {
    let chars: Vec<char> = text.chars().collect();
    (0..chars.len()).any(|i| {
        let commas = chars[i + 1..].iter().take_while(|c| **c == ',').count();
        let commas_ok = match rule {
            CommaRule::EvalAi => commas >= 1,
            CommaRule::VqaEval => commas == 1,
        };
        python::is_decimal(chars[i])
            && commas_ok
            && chars
                .get(i + 1 + commas)
                .is_some_and(|c| python::is_decimal(*c))
    })
}

/// `process_punctuation` / `processPunctuation`.
fn punctuation(text: &str, rule: CommaRule) -> String {
    let comma = has_digit_comma(text, rule);
    let mut out = text.to_string();
    for p in PUNCTUATION {
        // The test looks at the text as given, the replacement at the text so far.
        if text.contains(&format!("{p} ")) || text.contains(&format!(" {p}")) || comma {
            out = out.replace(p, "");
        } else {
            out = out.replace(p, " ");
        }
    }
    strip_periods(&out)
}

/// `PERIOD_STRIP.sub("", text, re.UNICODE)`: deletes every `.` not followed by a decimal digit
/// (the lookahead reads the text before any deletion), at most 32 of them.
fn strip_periods(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut removed = 0;
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        let digit_next = chars.get(i + 1).is_some_and(|n| python::is_decimal(*n));
        if c == '.' && !digit_next && removed < 32 {
            removed += 1;
        } else {
            out.push(c);
        }
    }
    out
}

/// `process_digit_article` / `processDigitArticle`: lower-case, number words to digits,
/// articles dropped, contractions restored, words joined by single spaces.
fn digit_article(text: &str) -> String {
    let lower = text.to_lowercase();
    let words: Vec<&str> = python::split(&lower)
        .into_iter()
        .map(|w| NUMBERS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| *v))
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| *v)
        })
        .collect();
    words.join(" ")
}

/// `EvalAIAnswerProcessor()(text)`: what LLaVA's converters write and TextVQA compares.
pub fn eval_ai(text: &str) -> String {
    let lower = text.to_lowercase();
    let tokenized = lower.replace([',', '?'], "").replace("'s", " 's");
    let item = python::strip(&tokenized).replace(['\n', '\t'], " ");
    let item = python::strip(&item);
    digit_article(&punctuation(item, CommaRule::EvalAi))
}

/// EvalAI's `process_punctuation` then `process_digit_article`, without `word_tokenize`
/// (lmms-eval's VQAv2 scoring).
pub fn eval_ai_without_tokenize(text: &str) -> String {
    digit_article(&punctuation(text, CommaRule::EvalAi))
}

/// vqaEval.py's `processPunctuation` then `processDigitArticle`.
pub fn vqa_eval(text: &str) -> String {
    digit_article(&punctuation(text, CommaRule::VqaEval))
}

/// `s.replace('\n', ' ').replace('\t', ' ').strip()`, the VQA evaluation's first step.
pub fn flatten(text: &str) -> String {
    python::strip(&text.replace(['\n', '\t'], " ")).to_string()
}

/// `min(1, matches / 3)` for every human answer left out in turn: `others` are the answers
/// that are not equal to the one left out (so identical entries leave together, as in the
/// official `item != gtAnsDatum`), `matches` those of them equal to the prediction.
pub fn leave_one_out<T: PartialEq>(answers: &[T], is_match: impl Fn(&T) -> bool) -> Vec<f64> {
    answers
        .iter()
        .map(|left_out| {
            let matches = answers
                .iter()
                .filter(|a| *a != left_out && is_match(a))
                .count();
            (matches as f64 / 3.0).min(1.0)
        })
        .collect()
}

/// `sum(values) / len(values)` as Python computes it (left to right); `None` when empty.
pub fn plain_mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// lmms-eval's per-question accuracy: the human answers and the prediction normalised by
/// `normalise`, left out by position, averaged with `statistics.mean` (0 without answers).
pub fn lmms_accuracy(answers: &[String], prediction: &str, normalise: fn(&str) -> String) -> f64 {
    let gt: Vec<(usize, String)> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| (i, normalise(a)))
        .collect();
    let pred = normalise(prediction);
    python::statistics_mean(&leave_one_out(&gt, |(_, a)| *a == pred)).unwrap_or(0.0)
}

/// A per-question lmms-eval accuracy as Python holds it: `min(1, k / 3)` is the int 1 for
/// k >= 3, and `statistics.mean` of ints only is an int, so a perfect score is `1`, not `1.0`.
pub fn lmms_value(accuracy: f64) -> Value {
    if accuracy == 1.0 {
        json!(1)
    } else {
        json!(accuracy)
    }
}

/// The lines of a text file as Python's `for line in open(path)` gives them: universal
/// newlines (`\n`, `\r\n`, `\r`), the last line without a terminator kept.
pub fn python_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                lines.push(&text[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&text[start..i]);
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < bytes.len() {
        lines.push(&text[start..]);
    }
    lines
}

pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// A JSON file parsed whole, into `T`; errors name the file, line and column.
pub fn read_json_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&read_text(path)?).map_err(|source| Error::Json {
        path: path.into(),
        source,
    })
}

/// A question id from a JSON value: an integer or a string, as LLaVA's files hold them.
pub fn question_id(value: Option<&Value>, path: &Path, line: usize) -> Result<QuestionId> {
    match value {
        Some(Value::Number(n)) if n.is_i64() => Ok(QuestionId::Int(n.as_i64().expect("i64"))),
        Some(Value::String(s)) => Ok(QuestionId::Str(s.clone())),
        Some(other) => Err(Error::data(
            path,
            line,
            format!("field `question_id`: expected an integer or a string, found {other}"),
        )),
        None => Err(Error::data(path, line, "missing field `question_id`")),
    }
}

/// A question id as `json.dumps` writes it.
pub fn id_json(id: &QuestionId) -> Value {
    match id {
        QuestionId::Int(i) => json!(i),
        QuestionId::Str(s) => json!(s),
    }
}

/// A question id as a JSON object key (`json.dumps` of a dict with int keys writes them as
/// strings too).
pub fn id_key(id: &QuestionId) -> String {
    match id {
        QuestionId::Int(i) => i.to_string(),
        QuestionId::Str(s) => s.clone(),
    }
}

/// An answers file as LLaVA's VQAv2 and VizWiz converters read it: lines that are not JSON
/// are skipped and counted (`error_line`); a later answer to a question replaces an earlier
/// one but keeps its place (`{x['question_id']: x['text'] for x in results}`).
pub struct ConverterAnswers {
    /// (question id, text) in order of first appearance.
    pub results: Vec<(QuestionId, String)>,
    pub error_line: usize,
}

impl ConverterAnswers {
    pub fn read(path: &Path) -> Result<Self> {
        let text = read_text(path)?;
        let mut parsed = Vec::new();
        let mut error_line = 0;
        for (i, line) in python_lines(&text).into_iter().enumerate() {
            match serde_json::from_str::<Value>(line) {
                Ok(v) => parsed.push((i + 1, v)),
                Err(_) => error_line += 1,
            }
        }
        let mut results: Vec<(QuestionId, String)> = Vec::new();
        let mut at: HashMap<QuestionId, usize> = HashMap::new();
        for (line, v) in parsed {
            let Value::Object(map) = &v else {
                return Err(Error::data(
                    path,
                    line,
                    "expected a JSON object (an answer)",
                ));
            };
            let id = question_id(map.get("question_id"), path, line)?;
            let text = match map.get("text") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(Error::data(
                        path,
                        line,
                        format!("field `text`: expected a string, found {other}"),
                    ))
                }
                None => return Err(Error::data(path, line, "missing field `text`")),
            };
            match at.get(&id) {
                Some(&i) => results[i].1 = text,
                None => {
                    at.insert(id.clone(), results.len());
                    results.push((id, text));
                }
            }
        }
        Ok(ConverterAnswers {
            results,
            error_line,
        })
    }

    pub fn get(&self, id: &QuestionId) -> Option<&str> {
        self.results
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, t)| t.as_str())
    }

    /// The answers by id.
    pub fn map(&self) -> HashMap<&QuestionId, &str> {
        self.results.iter().map(|(i, t)| (i, t.as_str())).collect()
    }
}

/// One line of a LLaVA question file (`question_id`, `image`, `text`, `category`).
#[derive(Debug, Clone)]
pub struct LlavaQuestion {
    pub line: usize,
    pub id: QuestionId,
    pub image: String,
    pub text: String,
}

/// A LLaVA question file, read as `[json.loads(line) for line in open(path)]` reads it (a
/// line that is not JSON is an error, blank ones too).
pub fn read_llava_questions(path: &Path) -> Result<Vec<LlavaQuestion>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in python_lines(&text).into_iter().enumerate() {
        let line_no = i + 1;
        let v: Value = serde_json::from_str(line)
            .map_err(|e| Error::data(path, line_no, format!("malformed line: {e}")))?;
        let Value::Object(map) = &v else {
            return Err(Error::data(
                path,
                line_no,
                "expected a JSON object (a question)",
            ));
        };
        let string = |field: &str| match map.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(Error::data(
                path,
                line_no,
                format!("field `{field}`: expected a string, found {other}"),
            )),
            None => Err(Error::data(
                path,
                line_no,
                format!("missing field `{field}`"),
            )),
        };
        out.push(LlavaQuestion {
            line: line_no,
            id: question_id(map.get("question_id"), path, line_no)?,
            image: string("image")?,
            text: string("text")?,
        });
    }
    Ok(out)
}

/// What a VQA-style benchmark (VQAv2, GQA, VizWiz, TextVQA) adds to the run code they share:
/// where its files are, its ground truth and its per-question score.
pub trait VqaStyle {
    /// The benchmark's registry name and report title.
    fn names(&self) -> (&'static str, &'static str);

    /// The benchmark's folder and LLaVA's question file, for `--data` (the folder or the file).
    fn files(&self, given: &Path) -> Result<(PathBuf, PathBuf)>;

    /// The folders an image name is looked up in, first match wins.
    fn image_dirs(&self, dir: &Path, file: &Path) -> Vec<PathBuf>;

    /// The human answers (or GQA's one answer) of each of `questions`, in order; empty where
    /// the folder holds none (a test split).
    fn truth(&self, dir: &Path, questions: &[LlavaQuestion]) -> Result<Vec<Vec<String>>>;

    /// One question's local score (0..1) against its ground truth.
    fn score_one(&self, truth: &[String], answer: &str) -> f64;

    /// What the report's accuracy is, in a sentence.
    fn how(&self) -> &'static str;
}

/// `given` as the benchmark's folder (holding `default`, LLaVA's question file) or a question
/// file in it.
pub fn folder_and_file(given: &Path, default: &str) -> (PathBuf, PathBuf) {
    if given.is_dir() {
        (given.to_path_buf(), given.join(default))
    } else {
        let dir = given.parent().map(Path::to_path_buf).unwrap_or_default();
        (dir, given.to_path_buf())
    }
}

/// The set a VQA-style run asks: every question of LLaVA's file (the first `limit`) under its
/// own id, its text without the closing instruction line (the runner appends the benchmark's
/// instruction, giving LLaVA's prompt back), its image found in the first folder that has it.
/// The set is named after the question file.
pub fn queries(style: &dyn VqaStyle, data: &DataSpec) -> Result<Vec<QuerySet>> {
    let (name, _) = style.names();
    let (dir, file) = style.files(data.single(name)?)?;
    let questions = read_llava_questions(&file)?;
    let dirs = match data.images.as_deref() {
        Some(images) => vec![images.to_path_buf()],
        None => style.image_dirs(&dir, &file),
    };
    let mut set = QuerySet {
        name: file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(name)
            .to_string(),
        queries: Vec::new(),
    };
    for q in questions.iter().take(data.limit.unwrap_or(usize::MAX)) {
        let text = q
            .text
            .strip_suffix(SHORT_ANSWER)
            .and_then(|t| t.strip_suffix('\n'))
            .ok_or_else(|| {
                Error::data(
                    &file,
                    q.line,
                    format!("field `text`: expected LLaVA's question text ending in \"\\n{SHORT_ANSWER}\""),
                )
            })?;
        let image = dirs
            .iter()
            .map(|d| d.join(&q.image))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                Error::data(
                    &file,
                    q.line,
                    format!(
                        "field `image`: `{}` is in none of {}",
                        q.image,
                        dirs.join(", ")
                    ),
                )
            })?;
        set.queries.push(Query {
            id: q.id.clone(),
            text: text.to_string(),
            image: Some(ImageInput::Path(image)),
        });
    }
    if set.queries.is_empty() {
        return Err(Error::data(&file, 1, "no questions in this file"));
    }
    Ok(vec![set])
}

/// The report of a run of a VQA-style benchmark: every method's answers as one LLaVA answers
/// file (`llava/<method>.jsonl`, ready for `score`), and the local accuracy per set and method
/// over the questions with ground truth, in `results.json` and `report.md`. Returns the report.
pub fn report(style: &dyn VqaStyle, run: &RunOutput) -> Result<String> {
    let (name, title) = style.names();
    let (dir, file) = style.files(run.data.single(name)?)?;
    let truth = style.truth(&dir, &read_llava_questions(&file)?)?;
    let mut scores = serde_json::Map::new();
    let mut md = format!("# {title}\n\n{}\n\n", style.how());
    let mut merged = serde_json::Map::new();
    for m in &run.config.methods {
        merged.insert(m.name(), json!(llava_answers(run.queries, m, run.out)?));
    }
    for set in run.queries {
        let _ = writeln!(
            md,
            "### {}\n\n| method | answered | with ground truth | accuracy (%) |\n|---|---|---|---|",
            set.name
        );
        let mut per_method = serde_json::Map::new();
        for m in &run.config.methods {
            let path = answers_path(run.out, m, &set.name);
            let mut text: HashMap<(QuestionId, String), String> = HashMap::new();
            if path.exists() {
                for (_, a) in jsonl::read::<RunAnswer>(&path)? {
                    text.insert((a.question_id, a.prompt), a.text);
                }
            }
            let mut values = Vec::new();
            let mut answered = 0;
            // The set is the file's first questions, in order.
            for (q, t) in set.queries.iter().zip(&truth) {
                let key = (q.id.clone(), q.prompt(&run.config.suffix));
                let Some(answer) = text.get(&key) else {
                    continue;
                };
                answered += 1;
                if !t.is_empty() {
                    values.push(style.score_one(t, answer));
                }
            }
            let accuracy = plain_mean(&values).map(|a| a * 100.0);
            let shown = accuracy.map_or("–".to_string(), |a| format!("{a:.2}"));
            let _ = writeln!(
                md,
                "| {} | {answered} | {} | {shown} |",
                m.name(),
                values.len()
            );
            per_method.insert(
                m.name(),
                json!({ "answered": answered, "scored": values.len(), "accuracy": accuracy,
                        "llava_answers": merged[&m.name()] }),
            );
        }
        md.push('\n');
        scores.insert(set.name.clone(), Value::Object(per_method));
    }
    let _ = writeln!(
        md,
        "Official scoring of a method's answers: `tita-bench score {name} --data DIR --answers OUT/llava/METHOD.jsonl`.\n\n### speed (this invocation)\n\n| method | answers | generated tokens | seconds | tokens/s |\n|---|---|---|---|---|"
    );
    for (method, s) in &run.speed {
        let _ = writeln!(
            md,
            "| {method} | {} | {} | {:.1} | {:.2} |",
            s.answers,
            s.generated_tokens,
            s.seconds,
            s.tokens_per_s()
        );
    }
    let results = json!({ "config": run.config, "scores": scores, "speed": run.speed });
    let pretty = serde_json::to_string_pretty(&results).expect("plain data");
    jsonl::write_atomic(&run.out.join("results.json"), pretty.as_bytes())?;
    jsonl::write_atomic(&run.out.join("report.md"), md.as_bytes())?;
    Ok(md)
}

/// The suite's number for a run [`report`] wrote: each method's local accuracy (%), averaged
/// over the sets that have ground truth (none: no headline, e.g. a test split).
pub fn run_headlines(out: &Path) -> Result<BTreeMap<String, Headline>> {
    let results = tita_core::error::read_json(&out.join("results.json"))?;
    let mut per_method: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for set in results["scores"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, s)| s)
    {
        for (method, m) in set.as_object().into_iter().flatten() {
            per_method
                .entry(method.clone())
                .or_default()
                .extend(m["accuracy"].as_f64());
        }
    }
    Ok(per_method
        .into_iter()
        .filter(|(_, a)| !a.is_empty())
        .map(|(m, a)| {
            let value = a.iter().sum::<f64>() / a.len() as f64;
            (
                m,
                Headline {
                    metric: "accuracy %".into(),
                    value,
                },
            )
        })
        .collect())
}
