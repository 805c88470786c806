//! GQA: LLaVA's converter output byte for byte, and GQA eval.py's printed scores and `scores`
//! as recorded in `fixtures/benchmarks/expected.json`; LLaVA-1.5's prompts; bad input named.

use std::path::PathBuf;

use tita_bench::benchmark::by_name;

use crate::common::{assert_matches, data, expected, score};
use crate::common::{lines, write};
use crate::vqav2::{check_prompts, check_report_run};

fn answers() -> PathBuf {
    data().join("gqa/answers/llava_gqa_testdev_balanced/llava-v1.5-7b/merge.jsonl")
}

#[test]
fn gqa_score_prints_what_eval_py_printed_and_writes_the_converted_predictions() {
    let dir = data().join("gqa");
    let want = &expected()["gqa"];
    let card = score("gqa", &dir, &answers()).unwrap();
    assert_eq!(
        card.printed,
        want["eval_py"]["stdout_scores"].as_str().unwrap()
    );
    assert_matches(
        &card.metrics["eval_py"]["scores"],
        &want["eval_py"]["scores"],
        "scores",
    );
    assert_matches(
        &card.metrics["predictions"],
        &want["predictions"],
        "predictions",
    );
    let preds = want["files"]["predictions"].as_str().unwrap();
    assert_eq!(card.files.len(), 1);
    assert_eq!(card.files[0].0, PathBuf::from(preds));
    assert_eq!(
        String::from_utf8(card.files[0].1.clone()).unwrap(),
        std::fs::read_to_string(dir.join(preds)).unwrap()
    );
}

#[test]
fn gqa_prompts_and_answer_reading_are_llavas() {
    check_prompts("gqa", "gqa", &data().join("gqa"));
    let b = by_name("gqa").unwrap();
    assert_eq!(b.parse_answer("Left..."), "left");
    assert_eq!(b.parse_answer("dog "), "dog ");
    assert_eq!(b.parse_answer("Yes, there are."), "yes, there are");
}

#[test]
fn bad_gqa_input_names_file_line_and_field() {
    let dir = data().join("gqa");
    let tmp = tempfile::tempdir().unwrap();
    let e = score("gqa", &dir, &tmp.path().join("none.jsonl"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("none.jsonl: cannot read"), "{e}");
    // The converter reads every line with json.loads: a broken one stops it.
    let mut all = lines(&answers());
    all[3].truncate(20);
    let a = write(&tmp.path().join("a.jsonl"), &all.join("\n"));
    let e = score("gqa", &dir, &a).err().unwrap().to_string();
    assert!(e.contains("a.jsonl:4: malformed line"), "{e}");
    // A balanced question without a prediction stops eval.py.
    let all = lines(&answers());
    write(&a, &all[1..].join("\n"));
    let e = score("gqa", &dir, &a).err().unwrap().to_string();
    assert!(
        e.contains("no prediction for question 201000000") && e.contains("missing predictions"),
        "{e}"
    );
    // Integer ids never match the questions' string keys.
    let ints: Vec<String> = all
        .iter()
        .map(|l| {
            l.replacen(
                "\"question_id\": \"201000000\"",
                "\"question_id\": 201000000",
                1,
            )
        })
        .collect();
    write(&a, &ints.join("\n"));
    let e = score("gqa", &dir, &a).err().unwrap().to_string();
    assert!(e.contains("no prediction for question 201000000"), "{e}");
    // A question without its answer field is named.
    let copy = tmp.path().join("gqa");
    std::fs::create_dir_all(copy.join("data")).unwrap();
    let questions =
        std::fs::read_to_string(dir.join("data/testdev_balanced_questions.json")).unwrap();
    write(
        &copy.join("data/testdev_balanced_questions.json"),
        &questions.replacen("\"answer\": \"no\"", "\"answr\": \"no\"", 1),
    );
    let e = score("gqa", &copy, &answers()).err().unwrap().to_string();
    assert!(
        e.contains("testdev_balanced_questions.json: invalid JSON: missing field `answer`"),
        "{e}"
    );
}

#[test]
fn gqa_run_report_writes_answers_llavas_converter_takes() {
    let (ours, theirs, scores) = check_report_run("gqa", &data().join("gqa"), &answers());
    assert_eq!(ours.printed, theirs.printed);
    assert_eq!(ours.files, theirs.files);
    let accuracy = &expected()["gqa"]["eval_py"]["scores"]["accuracy"];
    assert_matches(&scores["accuracy"], accuracy, "accuracy");
}
