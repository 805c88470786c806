//! ScienceQA-IMG: `score` prints eval_science_qa.py's line, gives its numbers and parsed letters,
//! and writes its two files byte for byte; the questions and prompts are LLaVA-1.5's; bad input
//! names its file, line and field.

use std::path::{Path, PathBuf};

use tita_bench::benchmark::{by_name, DataSpec};
use tita_bench::benchmarks::scienceqa::llava_prompts;

use crate::common::{assert_matches, data, expected, score};

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

#[test]
fn score_prints_and_writes_what_eval_science_qa_did() {
    let dir = data().join("scienceqa");
    let all = expected();
    let files = &all["scienceqa"]["files"];
    let answers = dir.join(files["answers"].as_str().unwrap());
    let card = score("scienceqa", &dir, &answers).unwrap();
    let want = &all["scienceqa"]["eval_science_qa"];
    assert_eq!(card.printed, want["stdout"].as_str().unwrap());
    let mut numbers = want.clone();
    numbers.as_object_mut().unwrap().remove("stdout");
    assert_matches(&card.metrics, &numbers, "eval_science_qa");
    // lmms-eval's reading, a comparison: every answered image question, none more.
    let lmms = &all["scienceqa"]["lmms_eval_scienceqa_img"];
    assert_matches(
        &card.metrics["lmms_eval_scienceqa_img"],
        lmms,
        "lmms_eval_scienceqa_img",
    );
    assert_eq!(
        card.metrics["lmms_eval_scienceqa_img"]["per_question"]
            .as_object()
            .unwrap()
            .len(),
        lmms["per_question"].as_object().unwrap().len()
    );

    let names: Vec<PathBuf> = card.files.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        names,
        [
            PathBuf::from(files["output_file"].as_str().unwrap()),
            PathBuf::from(files["output_result"].as_str().unwrap())
        ]
    );
    for (name, bytes) in &card.files {
        let recorded = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&recorded),
            "{}",
            name.display()
        );
    }
}

#[test]
fn prompts_and_questions_are_llavas() {
    let dir = data().join("scienceqa");
    let want = expected()["prompts"]["scienceqa"]
        .as_array()
        .unwrap()
        .clone();
    let prompts = llava_prompts(&dir).unwrap();
    let recorded: Vec<(String, String)> = want
        .iter()
        .map(|w| {
            let id = w["question_id"].as_str().unwrap().to_string();
            (id, w["prompt"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(prompts, recorded);

    let bench = by_name("scienceqa").unwrap();
    assert_eq!(bench.max_new_tokens(), 1024);
    let sets = bench
        .question_sets(&DataSpec {
            paths: vec![dir.clone()],
            ..DataSpec::default()
        })
        .unwrap();
    assert_eq!(sets.len(), 1);
    let set = &sets[0];
    // Only image questions: 230 and 243 are text-only.
    let ids: Vec<u64> = set
        .questions
        .iter()
        .map(|q| q.question_id.unwrap())
        .collect();
    assert!(!ids.contains(&230) && !ids.contains(&243), "{ids:?}");
    for (q, image) in set.questions.iter().zip(&set.images) {
        assert!(image.is_file(), "{}", image.display());
        let id = q.question_id.unwrap().to_string();
        let w = want
            .iter()
            .find(|w| w["question_id"] == id.as_str())
            .unwrap();
        let asked = format!("<image>\n{}\n{}", q.text, bench.instruction());
        assert_eq!(asked, w["prompt"].as_str().unwrap(), "{id}");
        assert!(w["model_input"].as_str().unwrap().contains(&asked));
    }
    assert_eq!(bench.parse_answer("A. sturgeon"), "A");
    assert_eq!(
        bench.parse_answer("The answer is A. The answer is A."),
        "FAILED"
    );
    assert_eq!(bench.parse_answer("The answer is Bx"), "B");
    let limited = bench
        .question_sets(&DataSpec {
            paths: vec![dir],
            limit: Some(2),
            ..DataSpec::default()
        })
        .unwrap();
    assert_eq!(limited[0].questions.len(), 2);
}

#[test]
fn bad_scienceqa_input_names_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("scienceqa", tmp.path());
    let answers = dir.join("answers/llava-v1.5-7b.jsonl");
    let text = std::fs::read_to_string(&answers).unwrap();
    let lines: Vec<&str> = text.lines().collect();

    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{}\n{{\"question_id\": \"113\"\n", lines[0])).unwrap();
    let e = error_of(score("scienceqa", &dir, &bad));
    assert!(e.contains("bad.jsonl:2: malformed line"), "{e}");

    std::fs::write(&bad, "{\"question_id\": \"113\", \"text\": \"A\"}\n").unwrap();
    let e = error_of(score("scienceqa", &dir, &bad));
    assert!(e.contains("bad.jsonl:1: missing field `prompt`"), "{e}");

    // Only text-only answers: IMG-Accuracy divides by zero, as upstream.
    std::fs::write(&bad, format!("{}\n", lines[10])).unwrap();
    let e = error_of(score("scienceqa", &dir, &bad));
    assert!(
        e.contains("IMG-Accuracy divides by zero") && e.contains("ZeroDivisionError"),
        "{e}"
    );

    let problems = dir.join("problems.json");
    let original = std::fs::read_to_string(&problems).unwrap();
    std::fs::write(
        &problems,
        original.replacen("\"answer\": 0", "\"answer\": 7", 1),
    )
    .unwrap();
    let e = error_of(score("scienceqa", &dir, &answers));
    assert!(
        e.contains("problems.json: problem `100`: field `answer`: 7 is beyond the options"),
        "{e}"
    );
    std::fs::write(&problems, original.replacen("\"answer\": 0,", "", 1)).unwrap();
    let e = error_of(score("scienceqa", &dir, &answers));
    assert!(
        e.contains("problems.json: invalid JSON: missing field `answer`"),
        "{e}"
    );
    std::fs::remove_file(&problems).unwrap();
    let e = error_of(score("scienceqa", &dir, &answers));
    assert!(e.contains("problems.json: cannot read"), "{e}");

    std::fs::write(dir.join("pid_splits.json"), "{\"val\": []}").unwrap();
    let e = error_of(score("scienceqa", &dir, &answers));
    assert!(e.contains("pid_splits.json: no `test` split"), "{e}");

    std::fs::remove_file(dir.join("images/test/100/image.png")).unwrap();
    let e = error_of(by_name("scienceqa").unwrap().question_sets(&DataSpec {
        paths: vec![dir.clone()],
        ..DataSpec::default()
    }));
    assert!(
        e.contains("llava_test_CQM-A.json: entry 1 (id \"100\"): image not found"),
        "{e}"
    );
    let e = error_of(score("scienceqa", &tmp.path().join("nowhere"), &answers));
    assert!(
        e.contains("nowhere: not a folder; scienceqa expects"),
        "{e}"
    );
}

/// Writes `answers` (question id -> text) as a greedy run over `sets` would have, lets `name`
/// report the run, and returns the run folder's numbers file `json` and the report.
pub fn report_run(
    name: &str,
    sets: &[tita_bench::eval::QuestionSet],
    answers: &std::collections::HashMap<u64, String>,
    out: &Path,
    json: &str,
) -> (serde_json::Value, String) {
    use tita_bench::benchmark::RunOutput;
    use tita_bench::eval::{answers_path, EvalConfig, Method};
    let config = EvalConfig {
        methods: vec![Method::Greedy],
        ..EvalConfig::default()
    };
    for set in sets {
        let path = answers_path(out, &Method::Greedy, &set.name);
        let mut file = tita_core::jsonl::open_append(&path).unwrap();
        for q in &set.questions {
            let id = q.question_id.unwrap();
            if let Some(text) = answers.get(&id) {
                let answer = tita_bench::pope::Answer {
                    question_id: id,
                    prompt: format!("{}\n{}", q.text, config.suffix),
                    text: text.clone(),
                    model_id: "fixture:greedy".into(),
                };
                tita_core::jsonl::append(&mut file, &path, &answer).unwrap();
            }
        }
    }
    let report = by_name(name)
        .unwrap()
        .report_run(&RunOutput {
            out,
            sets,
            queries: &sets.iter().map(|s| s.queries()).collect::<Vec<_>>(),
            data: &Default::default(),
            config: &config,
            speed: Default::default(),
        })
        .unwrap();
    let text = std::fs::read_to_string(out.join(json)).unwrap();
    (serde_json::from_str(&text).unwrap(), report)
}

/// The answers of a LLaVA answers file by numeric question id.
pub fn fixture_answers(path: &Path) -> std::collections::HashMap<u64, String> {
    tita_bench::benchmark::read_answers(path)
        .unwrap()
        .into_iter()
        .map(|(_, a)| {
            let id = match a.question_id {
                tita_bench::benchmark::QuestionId::Int(i) => i as u64,
                tita_bench::benchmark::QuestionId::Str(s) => s.parse().unwrap(),
            };
            (id, a.text)
        })
        .collect()
}

#[test]
fn a_runs_answers_are_scored_the_same_way() {
    let dir = data().join("scienceqa");
    let sets = by_name("scienceqa")
        .unwrap()
        .question_sets(&DataSpec {
            paths: vec![dir.clone()],
            ..DataSpec::default()
        })
        .unwrap();
    let answers = fixture_answers(&dir.join("answers/llava-v1.5-7b.jsonl"));
    let tmp = tempfile::tempdir().unwrap();
    let (numbers, report) = report_run("scienceqa", &sets, &answers, tmp.path(), "scienceqa.json");
    // The run asks the image questions only: IMG counts are the official ones.
    let want = &expected()["scienceqa"]["eval_science_qa"];
    let greedy = &numbers["greedy"];
    assert_eq!(greedy["img_correct"], want["img_correct"]);
    assert_eq!(greedy["img_total"], want["img_total"]);
    assert_eq!(greedy["count"], want["count"]);
    let img = want["img_correct"].as_f64().unwrap() / want["img_total"].as_f64().unwrap() * 100.0;
    assert!(
        report.contains(&format!("| greedy | 12 | {img:.2} |")),
        "{report}"
    );
}
