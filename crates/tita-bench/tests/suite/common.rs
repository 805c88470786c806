//! What every scorer test needs: the fixture folder, `expected.json`, scoring by registry name,
//! comparison with the README's tolerance, fixture copies to break, and a run's report made
//! from the fixture's answers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tita_bench::benchmark::{by_name, DataSpec, QuestionId, RunOutput, ScoreOptions, Scorecard};
use tita_bench::eval::{answers_path, EvalConfig, Method, Query, QuerySet, RunAnswer};

pub fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/benchmarks")
}

pub fn expected() -> Value {
    let text = std::fs::read_to_string(data().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn score(name: &str, dir: &Path, answers: &Path) -> tita_core::Result<Scorecard> {
    by_name(name)
        .unwrap()
        .score(dir, answers, &ScoreOptions::default())
}

/// Every value of `want` is in `got`: integers and strings exactly, floats within 1e-12
/// relative (the README's tolerance).
pub fn assert_matches(got: &Value, want: &Value, at: &str) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, v) in w {
                let inner = g
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} missing in {got}"));
                assert_matches(inner, v, &format!("{at}.{k}"));
            }
        }
        (Value::Number(g), Value::Number(w)) if w.is_f64() || g.is_f64() => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!(
                g == w || (g - w).abs() <= 1e-12 * g.abs().max(w.abs()),
                "{at}: {g} != {w}"
            );
        }
        _ => assert_eq!(got, want, "{at}"),
    }
}

/// A copy of the fixture folder `name` under `to`, to break one file in.
pub fn copy_fixture(name: &str, to: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let dest = to.join(name);
    copy(&data().join(name), &dest);
    dest
}

pub fn error_of<T>(r: tita_core::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

pub fn write(p: &Path, text: &str) -> PathBuf {
    std::fs::write(p, text).unwrap();
    p.to_path_buf()
}

/// A file's lines.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `name`'s queries for the fixture folder `dir` (the first `limit`).
pub fn queries(name: &str, dir: &Path, limit: Option<usize>) -> Vec<QuerySet> {
    by_name(name)
        .unwrap()
        .queries(&DataSpec {
            paths: vec![dir.to_path_buf()],
            limit,
            ..DataSpec::default()
        })
        .unwrap()
}

/// The answers of a LLaVA answers file by (question id, recorded prompt); of two lines for one
/// question the later, lines that are not JSON skipped (as LLaVA's converters read them).
pub fn fixture_answers(path: &Path) -> HashMap<(QuestionId, String), String> {
    let mut all = HashMap::new();
    for line in lines(path) {
        let Ok(a) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let id: QuestionId = serde_json::from_value(a["question_id"].clone()).unwrap();
        let prompt = a["prompt"].as_str().unwrap_or_default().to_string();
        all.insert((id, prompt), a["text"].as_str().unwrap().to_string());
    }
    all
}

/// Writes the answers `answer` gives (from the question and the prompt the runner records) as
/// a greedy run of `name` over `sets` would have, lets `name` report the run on `dir`, and
/// returns the report.
pub fn report_run(
    name: &str,
    dir: &Path,
    sets: &[QuerySet],
    out: &Path,
    answer: impl Fn(&Query, &str) -> Option<String>,
) -> String {
    let bench = by_name(name).unwrap();
    let config = EvalConfig {
        methods: vec![Method::Greedy],
        suffix: bench.instruction().to_string(),
        ..EvalConfig::default()
    };
    for set in sets {
        let path = answers_path(out, &Method::Greedy, &set.name);
        let mut file = tita_core::jsonl::open_append(&path).unwrap();
        for q in &set.queries {
            let prompt = q.prompt(&config.suffix);
            if let Some(text) = answer(q, &prompt) {
                let a = RunAnswer {
                    question_id: q.id.clone(),
                    prompt,
                    text,
                    model_id: "fixture:greedy".into(),
                };
                tita_core::jsonl::append(&mut file, &path, &a).unwrap();
            }
        }
    }
    bench
        .report_run(&RunOutput {
            out,
            sets: &[],
            queries: sets,
            data: &DataSpec {
                paths: vec![dir.to_path_buf()],
                ..DataSpec::default()
            },
            config: &config,
            speed: Default::default(),
        })
        .unwrap()
}

/// A JSON file.
pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
