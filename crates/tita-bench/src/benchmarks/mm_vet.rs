//! MM-Vet (Yu et al., 2023) as a [`Benchmark`]: open-ended questions graded 0–1 by a judge
//! model, scored exactly as yuweihao/MM-Vet's `mm-vet_evaluator.py` (@ acde843e) does it,
//! after LLaVA's `scripts/convert_mmvet_for_eval.py`.
//!
//! The evaluator's rules, kept on purpose: the grader prompt is a few-shot table to which the
//! question's row is appended (`<AND>`/`<OR>` spaced, the last cell empty); a reply is its text
//! up to the first space, stripped, read by Python's `float` and accepted in [0, 1]; otherwise
//! it asks again with a suffix, the temperature rising by 0.5 after each retry, and after the
//! sixth call scores 0.0 keeping that last raw reply; a rate limit sleeps 30 s and repeats the
//! call (any other failure stops it). Per run, a capability's score is the sum of its
//! questions' scores over their count × 100; the table holds numpy's rounding of the mean over
//! runs, the population std of the totals and the rounded totals. Capability columns go by
//! frequency, combinations by `np.argsort(-counts)` (stable for up to 16 combinations, as
//! numpy's quicksort is there), combination names are `"_".join(set)` in CPython's set order
//! under `PYTHONHASHSEED=0`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};
use tita_core::{jsonl, Error, Result};

use crate::benchmark::{
    expect_dir, read_answers, Benchmark, DataSpec, Headline, Judge, JudgeRequest, QuestionId,
    RunOutput, ScoreOptions, Scorecard,
};
use crate::eval::{answers_path, QuestionSet};
use crate::judge::{file_part, judge_note, CallLog, JudgeError};
use crate::pope::Question;
use crate::python::semantics::{
    json_dumps, np_mean, np_round, np_std, parse_float, set_order, strip, PyJson,
};
use crate::python::{self};

pub struct MmVet;

const LAYOUT: &str = "the MM-Vet folder: mm-vet.json (questions, answers, capabilities), \
                      llava-mm-vet.jsonl (LLaVA's question file), images/";

/// The evaluator's grader prompt (its default `--prompt`), to which the question's row is
/// appended after a newline.
pub const GRADER_PROMPT: &str = "Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
";

/// Appended to the prompt when a reply was not a score.
pub const RETRY_SUFFIX: &str = "\nPredict the correctness of the answer (digit): ";

/// The evaluator's `max_tokens`.
pub const MAX_TOKENS: usize = 3;

/// Seconds the evaluator sleeps on a rate limit.
const RATE_LIMIT_SLEEP: f64 = 30.0;

/// The evaluator's `--decimal_places`.
const DECIMALS: i32 = 1;

impl Benchmark for MmVet {
    fn name(&self) -> &'static str {
        "mm-vet"
    }

    fn title(&self) -> &'static str {
        "MM-Vet"
    }

    fn about(&self) -> &'static str {
        "MM-Vet (Yu et al., 2023), judge-scored: --data the MM-Vet folder (mm-vet.json, \
         llava-mm-vet.jsonl, images/); score needs --judge-url/--judge-model and prints \
         mm-vet_evaluator.py's output"
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
        let dir = expect_dir(data.single("mm-vet")?, "mm-vet", LAYOUT)?;
        let images = data.images.clone().unwrap_or_else(|| dir.join("images"));
        Ok(vec![llava_question_set(
            "mm-vet",
            &dir.join("llava-mm-vet.jsonl"),
            &images,
            data.limit,
        )?])
    }

    fn judged(&self) -> bool {
        true
    }

    // The evaluator's total: the mean over runs of the score of every question, in %.
    fn headline(&self, metrics: &Value) -> Option<Headline> {
        Some(Headline {
            metric: "total score (judge-graded)".into(),
            value: metrics["cap_score"]["total"].as_str()?.parse().ok()?,
        })
    }

    // A run only answers: the judge scores later (`score --judge-url`), so no number yet.
    fn run_headlines(
        &self,
        _out: &Path,
    ) -> Result<std::collections::BTreeMap<String, crate::benchmark::Headline>> {
        Ok(Default::default())
    }

    fn report_run(&self, run: &RunOutput) -> Result<String> {
        judged_run_note(self.name(), run, |answers, name| {
            let (_, bytes) = convert(answers)?;
            Ok((
                PathBuf::from(format!("results/{name}.json")),
                bytes.into_bytes(),
            ))
        })
    }

    fn score(&self, data: &Path, answers: &Path, options: &ScoreOptions) -> Result<Scorecard> {
        let judge = options.judge.ok_or_else(|| no_judge(self.name()))?;
        let runs = options.judge_runs.unwrap_or(1);
        if runs == 0 {
            return Err(Error::argument("judge-runs", "must be at least 1"));
        }
        let dir = expect_dir(data, "mm-vet", LAYOUT)?;
        let meta_path = dir.join("mm-vet.json");
        let samples = read_ordered::<Sample>(&meta_path)?;
        let model = answers
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("answers")
            .to_string();
        let (results, results_json) = convert(answers)?;
        for (id, _) in &samples {
            if !results.iter().any(|(k, _)| k == id) {
                return Err(Error::checkpoint(
                    answers,
                    format!(
                        "no answer for {id} of {} (question_id {}); the evaluator stops here with KeyError",
                        meta_path.display(),
                        id.strip_prefix("v1_").unwrap_or(id)
                    ),
                ));
            }
        }
        let results: HashMap<&str, &str> = results
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();

        let judge_model = judge.model().to_string();
        let stem = format!("{model}_{}", file_part(&judge_model));
        let grade_file = format!("results/{stem}-grade-{runs}runs.json");
        let cap_score_file = format!("results/{stem}-cap-score-{runs}runs.csv");
        let cap_int_score_file = format!("results/{stem}-cap-int-score-{runs}runs.csv");
        let calls_file = format!("results/{stem}-judge-calls-{runs}runs.jsonl");

        let mut printed = String::new();
        let mut log = CallLog::default();
        let mut grades: Vec<Grade> = vec![Grade::default(); samples.len()];
        for run in 0..runs {
            printed.push_str(&format!("eval run {run}\n"));
            for ((id, sample), grade) in samples.iter().zip(&mut grades) {
                let row = question_row(sample, results[id.as_str()]);
                let (reply_model, content, score) =
                    grade_once(judge, &mut log, &mut printed, Asked { id, run, row: &row })?;
                grade.model.push(reply_model);
                grade.content.push(content);
                grade.score.push(score);
            }
        }

        let grade_json = PyJson::Dict(
            samples
                .iter()
                .zip(&grades)
                .map(|((id, _), g)| (id.clone(), g.to_json()))
                .collect(),
        );
        let caps = Capabilities::of(&samples);
        let table = caps.scores(&samples, &grades, runs);
        let cap_csv = csv(&model, &table.cap);
        let cap_int_csv = csv(&model, &table.cap_int);
        printed.push_str(&frame_repr(&model, &table.cap));
        printed.push_str("\n\n\n");
        printed.push_str(&frame_repr(&model, &table.cap_int));
        printed.push_str("\n\n\n");
        printed.push_str(&format!(
            "Grading results are saved in:\n{grade_file}\n{cap_score_file}\n{cap_int_score_file}\n"
        ));

        let as_strings = |cells: &[(String, Cell)]| -> serde_json::Map<String, Value> {
            cells
                .iter()
                .map(|(k, c)| (k.clone(), Value::String(c.csv())))
                .collect()
        };
        let sets: serde_json::Map<String, Value> = caps
            .combos
            .iter()
            .map(|c| (c.name.clone(), json!(c.set)))
            .collect();
        let grade_value: serde_json::Map<String, Value> = samples
            .iter()
            .zip(&grades)
            .map(|((id, _), g)| {
                (
                    id.clone(),
                    json!({"model": g.model, "content": g.content, "score": g.score}),
                )
            })
            .collect();
        let metrics = json!({
            "judge": judge_note(judge, &log, &calls_file),
            "num_run": runs,
            "cap_score": as_strings(&table.cap),
            "cap_int_score": as_strings(&table.cap_int),
            "cap_int_columns_as_sets": sets,
            "grade": grade_value,
        });
        Ok(Scorecard {
            printed,
            metrics,
            files: vec![
                (
                    PathBuf::from(format!("results/{model}.json")),
                    results_json.into_bytes(),
                ),
                (
                    PathBuf::from(grade_file),
                    json_dumps(&grade_json, Some(4)).into_bytes(),
                ),
                (PathBuf::from(cap_score_file), cap_csv.into_bytes()),
                (PathBuf::from(cap_int_score_file), cap_int_csv.into_bytes()),
                (PathBuf::from(calls_file), log.to_jsonl()),
            ],
        })
    }
}

/// The error of a judge-scored benchmark asked to score without a judge.
pub(crate) fn no_judge(benchmark: &str) -> Error {
    Error::argument(
        "judge",
        format!(
            "{benchmark} is scored by a judge model: give --judge-url (an OpenAI-compatible \
             endpoint) and --judge-model (and --judge-key or $TITA_JUDGE_KEY if it needs one)"
        ),
    )
}

/// A LLaVA question file (`{"question_id", "image", "text", ...}` per line) as one set.
pub(crate) fn llava_question_set(
    name: &str,
    path: &Path,
    images: &Path,
    limit: Option<usize>,
) -> Result<QuestionSet> {
    #[derive(Deserialize)]
    struct Line {
        question_id: u64,
        image: String,
        text: String,
    }
    let mut questions = Vec::new();
    let mut files = Vec::new();
    for (line, q) in jsonl::read::<Line>(path)? {
        if limit.is_some_and(|n| questions.len() >= n) {
            break;
        }
        files.push(jsonl::resolve_image(path, line, &q.image, Some(images))?);
        questions.push(Question {
            question_id: Some(q.question_id),
            image: q.image,
            text: q.text,
            // Open-ended: no yes/no label.
            label: String::new(),
        });
    }
    Ok(QuestionSet {
        name: name.to_string(),
        questions,
        images: files,
    })
}

/// A run of a judge-scored benchmark: its answers converted as the official scripts want them
/// (`convert`), and how to score them, since a run has no judge.
pub(crate) fn judged_run_note(
    benchmark: &str,
    run: &RunOutput,
    convert: impl Fn(&Path, &str) -> Result<(PathBuf, Vec<u8>)>,
) -> Result<String> {
    let mut text =
        format!("{benchmark} is scored by a judge model; score each method's answers with\n");
    for method in &run.config.methods {
        for set in run.sets {
            let answers = answers_path(run.out, method, &set.name);
            if !answers.exists() {
                continue;
            }
            let (name, bytes) = convert(&answers, &method.name())?;
            let target = run.out.join(&name);
            jsonl::write_atomic(&target, &bytes)?;
            text.push_str(&format!(
                "  tita-bench score {benchmark} --data DIR --answers {} --judge-url URL --judge-model MODEL\n",
                answers.display()
            ));
        }
    }
    let path = run.out.join("report.md");
    jsonl::write_atomic(&path, text.as_bytes())?;
    Ok(text)
}

/// A JSON object's entries in file order (`serde_json::Map` may sort them; the evaluator walks
/// `dict` order). A repeated key keeps its first place and its last value, as `json.load` does.
pub(crate) struct Ordered<T>(pub Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Entries<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Ordered<T>, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, T>()? {
                    match out.iter_mut().find(|(key, _)| *key == k) {
                        Some(entry) => entry.1 = v,
                        None => out.push((k, v)),
                    }
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Entries(PhantomData))
    }
}

/// A JSON object file's entries in file order (read straight from the text: a
/// `serde_json::Value` in between may sort them).
pub(crate) fn read_ordered<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<(String, T)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str::<Ordered<T>>(&text)
        .map(|o| o.0)
        .map_err(|source| Error::Json {
            path: path.into(),
            source,
        })
}

/// One entry of `mm-vet.json`.
#[derive(Debug, Clone, Deserialize)]
struct Sample {
    capability: Vec<String>,
    question: String,
    answer: String,
}

/// convert_mmvet_for_eval.py: `v1_{question_id}` → answer text in file order (a repeated id
/// keeps its first place and its last text), and the JSON it writes (`indent=2`).
fn convert(answers: &Path) -> Result<(Vec<(String, String)>, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (_, a) in read_answers(answers)? {
        let key = match &a.question_id {
            QuestionId::Int(i) => format!("v1_{i}"),
            QuestionId::Str(s) => format!("v1_{s}"),
        };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = a.text,
            None => out.push((key, a.text)),
        }
    }
    let json = PyJson::Dict(
        out.iter()
            .map(|(k, v)| (k.clone(), PyJson::Str(v.clone())))
            .collect(),
    );
    let text = json_dumps(&json, Some(2));
    Ok((out, text))
}

/// The question's row of the grader table: `question | ground truth | prediction | `.
fn question_row(sample: &Sample, prediction: &str) -> String {
    let truth = sample
        .answer
        .replace("<AND>", " <AND> ")
        .replace("<OR>", " <OR> ");
    [sample.question.as_str(), &truth, prediction, ""].join(" | ")
}

/// The grader prompt for a question's row, first asking (`retry: false`) or asking again.
pub fn grader_prompt(row: &str, retry: bool) -> String {
    let suffix = if retry { RETRY_SUFFIX } else { "" };
    format!("{GRADER_PROMPT}\n{row}{suffix}")
}

/// What one grading is about.
struct Asked<'a> {
    id: &'a str,
    run: usize,
    row: &'a str,
}

/// The evaluator's grading of one answer in one run: `(response.model, content, score)`, its
/// prints appended to `printed`.
fn grade_once(
    judge: &dyn Judge,
    log: &mut CallLog,
    printed: &mut String,
    asked: Asked,
) -> Result<(String, String, f64)> {
    // Both persist across a rate limit: the evaluator repeats the call it was making.
    let mut retry = false;
    let mut temperature = 0.0f64;
    let ask = |log: &mut CallLog, retry: bool, temperature: f64| {
        let request = JudgeRequest {
            model: judge.model().to_string(),
            system: None,
            user: grader_prompt(asked.row, retry),
            temperature,
            max_tokens: MAX_TOKENS,
        };
        let tag = json!({
            "id": asked.id,
            "run": asked.run,
            "kind": if retry { "retry" } else { "initial" },
        });
        log.ask(judge, &request, tag)
    };
    let failed = |message: String| {
        Error::argument(
            "judge",
            format!(
                "mm-vet {} (run {}): the judge failed: {message}; the evaluator stops here too",
                asked.id, asked.run
            ),
        )
    };
    'call: loop {
        let reply = match ask(log, retry, temperature) {
            Ok(reply) => reply,
            Err(JudgeError::RateLimited(_)) => {
                printed.push_str("sleep 30s\n");
                log.pause(judge, RATE_LIMIT_SLEEP);
                continue 'call;
            }
            Err(JudgeError::Failed(m)) => return Err(failed(m)),
        };
        let mut model = reply.model;
        let mut content = reply.content;
        let mut tries = 1;
        loop {
            content = strip(content.split(' ').next().unwrap_or("")).to_string();
            // `score > 1.0 or score < 0.0` fails; NaN passes, as in Python.
            if let Some(score) = parse_float(&content).filter(|s| !(*s > 1.0 || *s < 0.0)) {
                return Ok((model, content, score));
            }
            retry = true;
            let reply = match ask(log, retry, temperature) {
                Ok(reply) => reply,
                Err(JudgeError::RateLimited(_)) => {
                    printed.push_str("sleep 30s\n");
                    log.pause(judge, RATE_LIMIT_SLEEP);
                    continue 'call;
                }
                Err(JudgeError::Failed(m)) => return Err(failed(m)),
            };
            model = reply.model;
            content = reply.content;
            tries += 1;
            temperature += 0.5;
            printed.push_str(&format!("{} try {tries} times\n{content}\n", asked.id));
            if tries > 5 {
                return Ok((model, content, 0.0));
            }
        }
    }
}

/// One question's grades, a value per run.
#[derive(Debug, Clone, Default)]
struct Grade {
    model: Vec<String>,
    content: Vec<String>,
    score: Vec<f64>,
}

impl Grade {
    fn to_json(&self) -> PyJson {
        let strings = |v: &[String]| PyJson::List(v.iter().cloned().map(PyJson::Str).collect());
        PyJson::Dict(vec![
            ("model".into(), strings(&self.model)),
            ("content".into(), strings(&self.content)),
            (
                "score".into(),
                PyJson::List(self.score.iter().map(|&s| PyJson::Float(s)).collect()),
            ),
        ])
    }
}

/// A capability combination: its name as the evaluator spells it, its members (sorted), and
/// how many questions have exactly it.
#[derive(Debug, Clone)]
struct Combo {
    name: String,
    set: BTreeSet<String>,
    count: usize,
}

/// The evaluator's `load_metadata`: capability columns by frequency, combinations by count.
struct Capabilities {
    /// `Counter.most_common()`: by count, ties in first-seen order (set order within a question).
    columns: Vec<(String, usize)>,
    combos: Vec<Combo>,
}

impl Capabilities {
    fn of(samples: &[(String, Sample)]) -> Self {
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut combos: Vec<Combo> = Vec::new();
        for (_, s) in samples {
            let listed: Vec<&str> = s.capability.iter().map(String::as_str).collect();
            let ordered = set_order(&listed);
            for c in &ordered {
                match counts.iter_mut().find(|(k, _)| k == c) {
                    Some(entry) => entry.1 += 1,
                    None => counts.push((c.to_string(), 1)),
                }
            }
            let set: BTreeSet<String> = ordered.iter().map(|c| c.to_string()).collect();
            match combos.iter_mut().find(|c| c.set == set) {
                Some(c) => c.count += 1,
                None => combos.push(Combo {
                    name: ordered.join("_"),
                    set,
                    count: 1,
                }),
            }
        }
        // Both sorts are stable, as most_common is and as argsort is on small arrays.
        counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        combos.sort_by_key(|c| std::cmp::Reverse(c.count));
        Capabilities {
            columns: counts,
            combos,
        }
    }

    /// `export_result`: both tables' cells (capabilities or combinations, then total, std,
    /// runs).
    fn scores(&self, samples: &[(String, Sample)], grades: &[Grade], runs: usize) -> Tables {
        let n = samples.len();
        let mut cap: Vec<Vec<f64>> = vec![vec![0.0; runs]; self.columns.len()];
        let mut combo: Vec<Vec<f64>> = vec![vec![0.0; runs]; self.combos.len()];
        let mut total = vec![0.0; runs];
        for ((_, s), g) in samples.iter().zip(grades) {
            let set: BTreeSet<String> = s.capability.iter().cloned().collect();
            let k = (self.combos.iter())
                .position(|c| c.set == set)
                .expect("every combination was counted");
            for i in 0..runs {
                let score = g.score[i];
                for (j, (name, _)) in self.columns.iter().enumerate() {
                    if set.contains(name) {
                        cap[j][i] += score;
                    }
                }
                total[i] += score;
                combo[k][i] += score;
            }
        }
        let percent = |v: &[f64], count: usize| -> Vec<f64> {
            v.iter().map(|x| x / count as f64 * 100.0).collect()
        };
        let total_pct = percent(&total, n);
        let std = np_round(np_std(&total_pct), DECIMALS);
        let rounded: Vec<String> = total_pct
            .iter()
            .map(|&t| python::float(np_round(t, DECIMALS)))
            .collect();
        let runs_cell = Cell::Text(format!("[{}]", rounded.join(", ")));
        let mean =
            |v: &[f64], count: usize| Cell::Num(np_round(np_mean(&percent(v, count)), DECIMALS));
        let tail = |cells: &mut Vec<(String, Cell)>| {
            cells.push(("total".into(), mean(&total, n)));
            cells.push(("std".into(), Cell::Num(std)));
            cells.push(("runs".into(), runs_cell.clone()));
        };
        let mut cap_cells: Vec<(String, Cell)> = (self.columns.iter())
            .zip(&cap)
            .map(|((name, count), v)| (name.clone(), mean(v, *count)))
            .collect();
        tail(&mut cap_cells);
        let mut combo_cells: Vec<(String, Cell)> = (self.combos.iter())
            .zip(&combo)
            .map(|(c, v)| (c.name.clone(), mean(v, c.count)))
            .collect();
        tail(&mut combo_cells);
        Tables {
            cap: cap_cells,
            cap_int: combo_cells,
        }
    }
}

struct Tables {
    cap: Vec<(String, Cell)>,
    cap_int: Vec<(String, Cell)>,
}

/// A cell of the one-row score tables: a float64 column or the `runs` text.
#[derive(Debug, Clone)]
enum Cell {
    Num(f64),
    Text(String),
}

impl Cell {
    /// As `DataFrame.to_csv` writes it (floats by numpy's shortest repr).
    fn csv(&self) -> String {
        match self {
            Cell::Num(x) => python::float(*x),
            Cell::Text(s) => s.clone(),
        }
    }
}

/// A CSV field as Python's csv module quotes it (QUOTE_MINIMAL).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `df.to_csv(path)` of the one-row table indexed by the model name.
fn csv(model: &str, cells: &[(String, Cell)]) -> String {
    let header: Vec<String> = cells.iter().map(|(k, _)| csv_field(k)).collect();
    let row: Vec<String> = cells.iter().map(|(_, c)| csv_field(&c.csv())).collect();
    format!(
        ",{}\n{},{}\n",
        header.join(","),
        csv_field(model),
        row.join(",")
    )
}

/// pandas' `display.max_colwidth`.
const MAX_COLWIDTH: usize = 50;
/// The terminal width pandas assumes when stdout is not a terminal.
const TERMINAL_WIDTH: usize = 80;

/// `print(df)` of a one-row table as pandas 2.x prints it to a pipe: float columns
/// (`" {x:.6f}"` with trailing zeros trimmed) under headers with a leading space, the text
/// column with a leading space (cut at 50 characters), columns right-justified and joined by
/// one space, and, when a line would pass 80 characters, middle columns dropped for ` ...`
/// and the dimensions printed below.
fn frame_repr(index: &str, cells: &[(String, Cell)]) -> String {
    // Each column: its header and its value, already of one width.
    let column = |(name, cell): &(String, Cell)| -> [String; 2] {
        let (header, value) = match cell {
            Cell::Num(x) => (format!(" {name}"), float_cell(*x)),
            Cell::Text(s) => {
                let mut v = format!(" {s}");
                if v.chars().count() > MAX_COLWIDTH {
                    v = v.chars().take(MAX_COLWIDTH - 3).collect::<String>() + "...";
                }
                (name.clone(), v)
            }
        };
        let width = header.chars().count().max(value.chars().count());
        [rjust(&header, width), rjust(&value, width)]
    };
    let mut strcols: Vec<[String; 2]> = vec![[String::new(), index.to_string()]];
    strcols.extend(cells.iter().map(column));
    let full = adjoin(&strcols);
    let longest = full.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    // pandas' `_fit_strcols_to_terminal_width`: drop middle columns (the index counts as
    // one) until the excess is used up.
    let mut excess = longest as i64 - TERMINAL_WIDTH as i64 + 1;
    let mut widths: Vec<usize> = strcols.iter().map(|c| c[0].chars().count()).collect();
    while excess > 0 && widths.len() > 1 {
        let mid = round_half_even_halves(widths.len());
        excess -= widths.remove(mid) as i64 + 1;
    }
    let fitted = (widths.len() - 1).max(2);
    if cells.len() <= fitted {
        return full;
    }
    let keep = fitted / 2;
    let mut shown: Vec<[String; 2]> = strcols[..=keep].to_vec();
    shown.push([" ...".into(), " ...".into()]);
    shown.extend(strcols[strcols.len() - keep..].iter().cloned());
    format!("{}\n\n[1 rows x {} columns]", adjoin(&shown), cells.len())
}

/// `round(n / 2)` in Python: halves go to the even neighbour.
fn round_half_even_halves(n: usize) -> usize {
    let floor = n / 2;
    if n % 2 == 1 && floor % 2 == 1 {
        floor + 1
    } else {
        floor
    }
}

/// A float column's cell: `f"{x: .6f}"`, trailing zeros trimmed to one decimal.
fn float_cell(x: f64) -> String {
    let mut s = if x.is_sign_negative() {
        format!("{x:.6}")
    } else {
        format!(" {x:.6}")
    };
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.push('0');
        }
    }
    s
}

fn rjust(s: &str, width: usize) -> String {
    let len = s.chars().count();
    format!("{}{s}", " ".repeat(width.saturating_sub(len)))
}

/// pandas' `adjoin(1, ...)`: each column left-justified to its width plus one space, the last
/// to its width.
fn adjoin(columns: &[[String; 2]]) -> String {
    let mut lines = [String::new(), String::new()];
    for (i, col) in columns.iter().enumerate() {
        let mut width = col.iter().map(|s| s.chars().count()).max().unwrap_or(0);
        if i + 1 < columns.len() {
            width += 1;
        }
        for (line, cell) in lines.iter_mut().zip(col) {
            line.push_str(cell);
            line.push_str(&" ".repeat(width - cell.chars().count()));
        }
    }
    format!("{}\n{}", lines[0], lines[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_cells_and_halves_round_as_pandas_and_python_do() {
        assert_eq!(float_cell(65.8), " 65.8");
        assert_eq!(float_cell(100.0), " 100.0");
        assert_eq!(float_cell(0.0), " 0.0");
        assert_eq!(float_cell(-2.5), "-2.5");
        assert_eq!(round_half_even_halves(13), 6);
        assert_eq!(round_half_even_halves(11), 6);
        assert_eq!(round_half_even_halves(9), 4);
        assert_eq!(round_half_even_halves(12), 6);
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("rec"), "rec");
        assert_eq!(csv_field("[69.2, 81.7]"), "\"[69.2, 81.7]\"");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
    }
}
