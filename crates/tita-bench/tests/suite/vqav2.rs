//! VQAv2: LLaVA's converter output (printed line and upload file, byte for byte), the VQA
//! evaluation of that upload and lmms-eval's val numbers, as recorded in
//! `fixtures/benchmarks/expected.json`; LLaVA-1.5's prompts; bad input named.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tita_bench::benchmark::{by_name, DataSpec, Scorecard};
use tita_decode::ImageInput;

use crate::common::{
    assert_matches, data, error_of, expected, fixture_answers, lines, queries, read_json,
    report_run, score, write,
};

/// The prompts `name`'s queries give (question text, a newline, the instruction) are the
/// recorded ones, in order and under the same LLaVA question ids; the model input is LLaVA's
/// `vicuna_v1` turn around it.
pub fn check_prompts(name: &str, prompts_key: &str, dir: &Path) {
    let bench = by_name(name).unwrap();
    let sets = queries(name, dir, None);
    let want = expected()["prompts"][prompts_key]
        .as_array()
        .unwrap()
        .clone();
    let asked: Vec<_> = sets.iter().flat_map(|s| s.queries.iter()).collect();
    assert_eq!(asked.len(), want.len(), "{name}: number of prompts");
    for (q, w) in asked.iter().zip(&want) {
        let prompt = q.prompt(bench.instruction());
        assert_eq!(prompt, w["prompt"].as_str().unwrap(), "{name}");
        assert_eq!(
            serde_json::to_value(&q.id).unwrap(),
            w["question_id"],
            "{name}: question id of {prompt:?}"
        );
        let input = w["model_input"].as_str().unwrap();
        assert!(
            input.ends_with(&format!(" USER: <image>\n{prompt} ASSISTANT:")),
            "{name}: {input:?}"
        );
        assert!(
            matches!(&q.image, Some(ImageInput::Path(p)) if p.is_file()),
            "{name}: image of {prompt:?}"
        );
    }
    // LLaVA's scripts run model_vqa_loader with its default of 128 new tokens.
    assert_eq!(bench.max_new_tokens(), 128);
    assert_eq!(queries(name, dir, Some(2))[0].queries.len(), 2);
}

/// A run of `name` on the fixture folder whose greedy answers are the fixture's answers (the
/// later of two, lines that are not JSON skipped): `report_run` writes its report and the
/// answers in LLaVA's format, which `score` takes; returns that scorecard, the scorecard of the
/// fixture's own answers, and the run's numbers for its one set.
pub fn check_report_run(name: &str, dir: &Path, fixture: &Path) -> (Scorecard, Scorecard, Value) {
    let bench = by_name(name).unwrap();
    let sets = queries(name, dir, None);
    let answers = fixture_answers(fixture);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    let report = report_run(name, dir, &sets, out, |q, prompt| {
        answers.get(&(q.id.clone(), prompt.to_string())).cloned()
    });
    assert!(report.contains("| greedy |"), "{report}");
    // The suite's number: the same local accuracy.
    let headlines = bench.run_headlines(out).unwrap();
    assert!(headlines["greedy"].value.is_finite(), "{headlines:?}");
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        report
    );
    let results = read_json(&out.join("results.json"));
    let ours = score(name, dir, &out.join("llava/greedy.jsonl")).unwrap();
    let theirs = score(name, dir, fixture).unwrap();
    (
        ours,
        theirs,
        results["scores"][&sets[0].name]["greedy"].clone(),
    )
}

fn answers() -> PathBuf {
    data().join("vqav2/answers/llava_vqav2_mscoco_test-dev2015/llava-v1.5-7b/merge.jsonl")
}

#[test]
fn vqav2_score_writes_the_converters_upload_and_the_vqa_evaluation_of_it() {
    let dir = data().join("vqav2");
    let want = &expected()["vqav2"];
    let card = score("vqav2", &dir, &answers()).unwrap();
    assert_eq!(
        card.printed,
        want["llava_converter"]["stdout"].as_str().unwrap()
    );
    assert_matches(
        &card.metrics["llava_converter"],
        &want["llava_converter"],
        "llava_converter",
    );
    assert_eq!(
        card.metrics["llava_converter"]["submission"]
            .as_array()
            .unwrap()
            .len(),
        want["llava_converter"]["submission"]
            .as_array()
            .unwrap()
            .len()
    );
    for key in ["vqa_eval_on_submission", "lmms_eval_vqav2_val"] {
        assert_matches(&card.metrics[key], &want[key], key);
        // Every question the reference scored, and no other.
        for inner in ["evalQA", "per_question", "perQuestionType", "perAnswerType"] {
            if let Some(w) = want[key][inner].as_object() {
                assert_eq!(card.metrics[key][inner].as_object().unwrap().len(), w.len());
            }
        }
    }
    // The upload file, byte for byte, where the converter puts it.
    let upload = want["files"]["submission"].as_str().unwrap();
    assert_eq!(card.files.len(), 1);
    assert_eq!(card.files[0].0, PathBuf::from(upload));
    assert_eq!(
        String::from_utf8(card.files[0].1.clone()).unwrap(),
        std::fs::read_to_string(dir.join(upload)).unwrap()
    );
}

#[test]
fn vqav2_prompts_and_answer_reading_are_llavas() {
    check_prompts("vqav2", "vqav2", &data().join("vqav2"));
    let b = by_name("vqav2").unwrap();
    assert_eq!(b.parse_answer("Woman's"), "woman 's");
    assert_eq!(b.parse_answer("Sitting"), "sitting");
    assert_eq!(b.parse_answer("1,000"), "1000");
    assert_eq!(
        b.parse_answer("The cat is on the couch."),
        "cat is on couch"
    );
}

#[test]
fn vqav2_run_report_writes_answers_llavas_converter_takes() {
    let dir = data().join("vqav2");
    let (ours, theirs, scores) = check_report_run("vqav2", &dir, &answers());
    assert_eq!(ours.files[0].1, theirs.files[0].1);
    assert_eq!(ours.printed, theirs.printed);
    assert_eq!(
        ours.metrics["vqa_eval_on_submission"],
        theirs.metrics["vqa_eval_on_submission"]
    );
    // The report's accuracy: the mean over the answered questions of what vqaEval gives each.
    let per_question = &theirs.metrics["vqa_eval_on_submission"]["evalQA"];
    let answered: Vec<f64> = ["100360000"]
        .iter()
        .fold(per_question.as_object().unwrap().clone(), |mut m, k| {
            m.remove(*k);
            m
        })
        .values()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(scores["answered"], 21);
    let mean = answered.iter().sum::<f64>() / answered.len() as f64;
    assert!((scores["accuracy"].as_f64().unwrap() - mean).abs() < 1e-9);
}

#[test]
fn bad_vqav2_input_names_file_line_and_field() {
    let dir = data().join("vqav2");
    let tmp = tempfile::tempdir().unwrap();
    let e = score("vqav2", &dir, &tmp.path().join("none.jsonl"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("none.jsonl: cannot read"), "{e}");

    // A line that is not JSON is counted, as the converter counts it.
    let mut all = lines(&answers());
    all[1].truncate(30);
    let a = write(&tmp.path().join("a.jsonl"), &all.join("\n"));
    let card = score("vqav2", &dir, &a).unwrap();
    assert_eq!(
        card.printed,
        "total results: 20, total split: 22, error_line: 1\n"
    );
    // The question then scores as unanswered ("").
    assert_eq!(
        card.metrics["vqa_eval_on_submission"]["evalQA"]["100020001"],
        0.0
    );

    // A JSON line without `text` stops it (KeyError there).
    let mut all = lines(&answers());
    all[2] = all[2].replace("\"text\"", "\"txt\"");
    write(&a, &all.join("\n"));
    let e = score("vqav2", &dir, &a).err().unwrap().to_string();
    assert!(e.contains("a.jsonl:3: missing field `text`"), "{e}");
    all[2] = "{\"question_id\": 1.5, \"text\": \"x\"}".into();
    write(&a, &all.join("\n"));
    let e = score("vqav2", &dir, &a).err().unwrap().to_string();
    assert!(
        e.contains("a.jsonl:3: field `question_id`: expected an integer or a string"),
        "{e}"
    );

    // A broken line of the split file is an error (the converter reads it with json.loads).
    let copy = tmp.path().join("vqav2");
    std::fs::create_dir_all(&copy).unwrap();
    let split = lines(&dir.join("llava_vqav2_mscoco_test2015.jsonl"));
    write(
        &copy.join("llava_vqav2_mscoco_test2015.jsonl"),
        &format!("{}\n{{\"question_id\": 5\n", split[0]),
    );
    let e = score("vqav2", &copy, &answers()).err().unwrap().to_string();
    assert!(
        e.contains("llava_vqav2_mscoco_test2015.jsonl:2: malformed line"),
        "{e}"
    );
    // With annotations, the VQA evaluation also loads the questions file (vqa.py's VQA()).
    std::fs::copy(
        dir.join("v2_mscoco_val2014_annotations.json"),
        copy.join("v2_mscoco_val2014_annotations.json"),
    )
    .unwrap();
    write(
        &copy.join("llava_vqav2_mscoco_test2015.jsonl"),
        &split.join("\n"),
    );
    let e = score("vqav2", &copy, &answers()).err().unwrap().to_string();
    assert!(
        e.contains("v2_OpenEnded_mscoco_val2014_questions.json: cannot read"),
        "{e}"
    );
    std::fs::copy(
        dir.join("v2_OpenEnded_mscoco_val2014_questions.json"),
        copy.join("v2_OpenEnded_mscoco_val2014_questions.json"),
    )
    .unwrap();
    // The upload must answer exactly the annotated questions.
    write(
        &copy.join("llava_vqav2_mscoco_test2015.jsonl"),
        &split[..3].join("\n"),
    );
    let e = score("vqav2", &copy, &answers()).err().unwrap().to_string();
    assert!(
        e.contains("Results do not correspond to current VQA set") && e.contains("100054000"),
        "{e}"
    );
    // Question text without LLaVA's instruction line cannot give LLaVA's prompt.
    write(
        &copy.join("llava_vqav2_mscoco_test-dev2015.jsonl"),
        "{\"question_id\": 1, \"image\": \"x.jpg\", \"text\": \"What?\"}\n",
    );
    let e = error_of(by_name("vqav2").unwrap().queries(&DataSpec {
        paths: vec![copy.clone()],
        ..DataSpec::default()
    }));
    assert!(
        e.contains(
            "llava_vqav2_mscoco_test-dev2015.jsonl:1: field `text`: expected LLaVA's question text"
        ),
        "{e}"
    );
}
