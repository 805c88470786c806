//! VizWiz: LLaVA's converter output (printed line, upload file byte for byte, the truncated
//! line counted, the later of two answers kept) and lmms-eval's val accuracy, as recorded in
//! `fixtures/benchmarks/expected.json`; LLaVA-1.5's prompts; bad input named.

use std::path::PathBuf;

use tita_bench::benchmark::by_name;

use crate::common::{assert_matches, data, expected, score};
use crate::common::{lines, write};
use crate::vqav2::{check_prompts, check_report_run};

fn answers() -> PathBuf {
    data().join("vizwiz/answers/llava-v1.5-7b.jsonl")
}

#[test]
fn vizwiz_score_writes_the_converters_upload_and_lmms_evals_accuracy() {
    let dir = data().join("vizwiz");
    let want = &expected()["vizwiz"];
    let card = score("vizwiz", &dir, &answers()).unwrap();
    assert_eq!(
        card.printed,
        want["llava_converter"]["stdout"].as_str().unwrap()
    );
    assert_matches(
        &card.metrics["llava_converter"],
        &want["llava_converter"],
        "llava_converter",
    );
    let key = "lmms_eval_vizwiz_vqa_val";
    assert_matches(&card.metrics[key], &want[key], key);
    assert_eq!(
        card.metrics[key]["per_question"].as_object().unwrap().len(),
        want[key]["per_question"].as_object().unwrap().len()
    );
    let upload = want["files"]["submission"].as_str().unwrap();
    assert_eq!(card.files.len(), 1);
    assert_eq!(card.files[0].0, PathBuf::from(upload));
    assert_eq!(
        String::from_utf8(card.files[0].1.clone()).unwrap(),
        std::fs::read_to_string(dir.join(upload)).unwrap()
    );
}

#[test]
fn vizwiz_prompts_and_answer_reading_are_llavas() {
    check_prompts("vizwiz", "vizwiz", &data().join("vizwiz"));
    let b = by_name("vizwiz").unwrap();
    assert_eq!(b.parse_answer("unanswerable."), "unanswerable");
    assert_eq!(b.parse_answer("Twenty"), "twenty");
    assert_eq!(b.parse_answer("72\u{b0}F"), "72\u{b0}f");
}

#[test]
fn bad_vizwiz_input_names_file_line_and_field() {
    let dir = data().join("vizwiz");
    let tmp = tempfile::tempdir().unwrap();
    let e = score("vizwiz", &dir, &tmp.path().join("none.jsonl"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("none.jsonl: cannot read"), "{e}");
    // A question without an answer: the converter's assertion, named.
    let all = lines(&answers());
    let without: Vec<&String> = all
        .iter()
        .filter(|l| !l.starts_with("{\"question_id\": 7,"))
        .collect();
    let a = tmp.path().join("a.jsonl");
    write(
        &a,
        &without
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let e = score("vizwiz", &dir, &a).err().unwrap().to_string();
    assert!(
        e.contains("llava_val.jsonl:8: question_id 7 has no answer")
            && e.contains("assertion `x['question_id'] in results`"),
        "{e}"
    );
    // A JSON answer line without `text` is named (KeyError there).
    let mut broken = all.clone();
    broken[0] = broken[0].replace("\"text\"", "\"answer\"");
    write(&a, &broken.join("\n"));
    let e = score("vizwiz", &dir, &a).err().unwrap().to_string();
    assert!(e.contains("a.jsonl:1: missing field `text`"), "{e}");
    // A folder without a question file.
    let e = score("vizwiz", tmp.path(), &answers())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no llava_test.jsonl or llava_val.jsonl"), "{e}");
}

#[test]
fn vizwiz_run_report_writes_answers_llavas_converter_takes() {
    let (ours, theirs, scores) = check_report_run("vizwiz", &data().join("vizwiz"), &answers());
    assert_eq!(ours.files[0].1, theirs.files[0].1);
    let key = "lmms_eval_vizwiz_vqa_val";
    assert_eq!(ours.metrics[key], theirs.metrics[key]);
    let mean = expected()["vizwiz"][key]["exact_match_mean"]
        .as_f64()
        .unwrap();
    assert!((scores["accuracy"].as_f64().unwrap() - 100.0 * mean).abs() < 1e-9);
}
