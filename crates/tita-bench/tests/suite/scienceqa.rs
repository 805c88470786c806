//! ScienceQA-IMG: `score` prints eval_science_qa.py's line, gives its numbers and parsed letters,
//! and writes its two files byte for byte; the questions and prompts are LLaVA-1.5's; bad input
//! names its file, line and field.

use std::path::PathBuf;

use tita_bench::benchmark::{by_name, DataSpec};
use tita_bench::benchmarks::scienceqa::llava_prompts;
use tita_decode::ImageInput;

use crate::common::{
    assert_matches, copy_fixture, data, error_of, expected, fixture_answers, queries, read_json,
    report_run, score,
};

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
    let sets = queries("scienceqa", &dir, None);
    assert_eq!(sets.len(), 1);
    // Every question as model_vqa_science.py asks it: text-only ones (230, 243) without image.
    let asked = &sets[0].queries;
    assert_eq!(asked.len(), want.len());
    for (q, w) in asked.iter().zip(&want) {
        assert_eq!(serde_json::to_value(&q.id).unwrap(), w["question_id"]);
        let prompt = q.prompt(bench.instruction());
        let recorded = match &q.image {
            Some(ImageInput::Path(image)) => {
                assert!(image.is_file(), "{}", image.display());
                format!("<image>\n{prompt}")
            }
            _ => prompt.clone(),
        };
        assert_eq!(recorded, w["prompt"].as_str().unwrap(), "{:?}", q.id);
        let input = w["model_input"].as_str().unwrap();
        assert!(
            input.ends_with(&format!(": {recorded} ASSISTANT:")),
            "{input}"
        );
    }
    assert!(asked.iter().any(|q| q.image.is_none()));
    assert_eq!(bench.parse_answer("A. sturgeon"), "A");
    assert_eq!(
        bench.parse_answer("The answer is A. The answer is A."),
        "FAILED"
    );
    assert_eq!(bench.parse_answer("The answer is Bx"), "B");
    assert_eq!(queries("scienceqa", &dir, Some(2))[0].queries.len(), 2);
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
    let e = error_of(by_name("scienceqa").unwrap().queries(&DataSpec {
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

#[test]
fn a_runs_answers_are_scored_the_same_way() {
    let dir = data().join("scienceqa");
    let sets = queries("scienceqa", &dir, None);
    let fixture = dir.join("answers/llava-v1.5-7b.jsonl");
    let answers = fixture_answers(&fixture);
    let tmp = tempfile::tempdir().unwrap();
    // The runner records the prompt without model_vqa_science.py's `<image>` line.
    let report = report_run("scienceqa", &dir, &sets, tmp.path(), |q, prompt| {
        let image = if q.image.is_some() { "<image>\n" } else { "" };
        answers
            .get(&(q.id.clone(), format!("{image}{prompt}")))
            .cloned()
    });
    // Text-only questions are asked too: every count is the official one.
    let numbers = read_json(&tmp.path().join("scienceqa.json"));
    let want = &expected()["scienceqa"]["eval_science_qa"];
    let greedy = &numbers["greedy"];
    for key in ["img_correct", "img_total", "count", "correct"] {
        assert_eq!(greedy[key], want[key], "{key}");
    }
    assert_matches(&greedy["acc"], &want["acc"], "acc");
    let img = want["img_correct"].as_f64().unwrap() / want["img_total"].as_f64().unwrap() * 100.0;
    let line = want["stdout"].as_str().unwrap().trim_end();
    assert!(
        report.contains(&format!(" | {img:.2} | ")) && report.contains(line),
        "{report}"
    );
}
