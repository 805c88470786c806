//! TextVQA: eval_textvqa.py's printed output, accuracy and per-question normalised prediction
//! and score, and lmms-eval's numbers, as recorded in `fixtures/benchmarks/expected.json`;
//! LLaVA-1.5's prompts with the OCR-token line; bad input named.

use std::path::PathBuf;

use tita_bench::benchmark::by_name;

use crate::common::{assert_matches, data, expected, score};
use crate::common::{lines, write};
use crate::vqav2::{check_prompts, check_report_run};

fn answers() -> PathBuf {
    data().join("textvqa/answers/llava-v1.5-7b.jsonl")
}

#[test]
fn textvqa_score_prints_what_eval_textvqa_printed() {
    let dir = data().join("textvqa");
    let want = &expected()["textvqa"];
    let card = score("textvqa", &dir, &answers()).unwrap();
    assert_eq!(
        card.printed,
        want["eval_textvqa"]["stdout"].as_str().unwrap()
    );
    for key in ["eval_textvqa", "lmms_eval_textvqa_val"] {
        assert_matches(&card.metrics[key], &want[key], key);
        // Objects are compared key by key: the lists must not be longer either.
        assert_eq!(
            card.metrics[key]["per_question"].as_array().unwrap().len(),
            want[key]["per_question"].as_array().unwrap().len()
        );
    }
    assert!(card.files.is_empty());
}

#[test]
fn textvqa_prompts_and_answer_reading_are_llavas() {
    check_prompts("textvqa", "textvqa", &data().join("textvqa"));
    let b = by_name("textvqa").unwrap();
    assert_eq!(b.parse_answer("J.K. Rowling"), "jk rowling");
    assert_eq!(b.parse_answer("twenty-three"), "twenty 3");
}

#[test]
fn bad_textvqa_input_names_file_line_and_field() {
    let dir = data().join("textvqa");
    let tmp = tempfile::tempdir().unwrap();
    let e = score("textvqa", &dir, &tmp.path().join("none.jsonl"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("none.jsonl: cannot read"), "{e}");
    let all = lines(&answers());
    let a = tmp.path().join("a.jsonl");
    let mut broken = all.clone();
    broken[4].truncate(25);
    write(&a, &broken.join("\n"));
    let e = score("textvqa", &dir, &a).err().unwrap().to_string();
    assert!(e.contains("a.jsonl:5: malformed line"), "{e}");
    // A prompt of one line: prompt_processor asserts.
    let mut broken = all.clone();
    broken[1] = broken[1].replacen(
        "What type of camera is this?\\nReference OCR token: DAKOTA, DIGITAL, Single-Use, Camera\\n",
        "",
        1,
    );
    assert_ne!(broken[1], all[1]);
    write(&a, &broken.join("\n"));
    let e = score("textvqa", &dir, &a).err().unwrap().to_string();
    assert!(e.contains("a.jsonl:2: field `prompt`"), "{e}");
    // A question the annotations do not have (matched by image id and question text).
    let mut broken = all.clone();
    broken[2] = broken[2].replace("What is the price?", "What is the cost?");
    write(&a, &broken.join("\n"));
    let e = score("textvqa", &dir, &a).err().unwrap().to_string();
    assert!(
        e.contains("a.jsonl:3: no annotation in")
            && e.contains("\"5464cd36bd24fd1a\" and question \"what is the cost?\""),
        "{e}"
    );
}

#[test]
fn textvqa_run_report_writes_answers_eval_textvqa_takes() {
    let (ours, theirs, scores) = check_report_run("textvqa", &data().join("textvqa"), &answers());
    assert_eq!(
        ours.metrics["eval_textvqa"]["per_question"],
        theirs.metrics["eval_textvqa"]["per_question"]
    );
    let accuracy = expected()["textvqa"]["eval_textvqa"]["accuracy"]
        .as_f64()
        .unwrap();
    assert!((scores["accuracy"].as_f64().unwrap() - 100.0 * accuracy).abs() < 1e-9);
}
