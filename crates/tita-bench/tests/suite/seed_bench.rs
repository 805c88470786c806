//! SEED-Bench: `score` prints convert_seed_for_submission.py's accuracies and writes its upload
//! byte for byte; its failure modes are named errors; the questions and prompts are LLaVA-1.5's.

use tita_bench::benchmark::{by_name, DataSpec};
use tita_decode::ImageInput;

use crate::common::{
    assert_matches, copy_fixture, data, error_of, expected, fixture_answers, queries, read_json,
    report_run, score,
};

#[test]
fn score_prints_and_writes_what_the_converter_did() {
    let dir = data().join("seed_bench");
    let all = expected();
    let files = &all["seed_bench"]["files"];
    let answers = dir.join(files["answers"].as_str().unwrap());
    let card = score("seed_bench", &dir, &answers).unwrap();
    let want = &all["seed_bench"]["llava_converter"];
    assert_eq!(card.printed, want["stdout"].as_str().unwrap());
    assert_matches(
        &card.metrics["printed_accuracy_percent"],
        &want["printed_accuracy_percent"],
        "printed_accuracy_percent",
    );
    assert_eq!(card.metrics["submission"], want["submission"]);
    assert_matches(
        &card.metrics["lmms_eval_seedbench"],
        &all["seed_bench"]["lmms_eval_seedbench"],
        "lmms_eval_seedbench",
    );
    assert_eq!(card.files.len(), 1);
    let (name, bytes) = &card.files[0];
    assert_eq!(
        name.to_str().unwrap(),
        files["submission"].as_str().unwrap()
    );
    let recorded = std::fs::read(dir.join(name)).unwrap();
    assert_eq!(
        String::from_utf8_lossy(bytes),
        String::from_utf8_lossy(&recorded)
    );
}

#[test]
fn prompts_and_questions_are_llavas() {
    let dir = data().join("seed_bench");
    let want = expected()["prompts"]["seed"].as_array().unwrap().clone();
    let bench = by_name("seed_bench").unwrap();
    assert_eq!(bench.max_new_tokens(), 128);
    let sets = queries("seed_bench", &dir, None);
    assert_eq!(sets.len(), 1);
    let asked = &sets[0].queries;
    assert_eq!(asked.len(), want.len());
    let mut images = Vec::new();
    for (q, w) in asked.iter().zip(&want) {
        assert_eq!(serde_json::to_value(&q.id).unwrap(), w["question_id"]);
        let prompt = q.prompt(bench.instruction());
        assert_eq!(prompt, w["prompt"].as_str().unwrap());
        assert!(w["model_input"]
            .as_str()
            .unwrap()
            .contains(&format!("<image>\n{prompt}")));
        let Some(ImageInput::Path(image)) = &q.image else {
            panic!("{:?} has no image", q.id);
        };
        assert!(image.is_file(), "{}", image.display());
        images.push(image.clone());
    }
    // Video questions are asked on their middle frame.
    assert!(images[14].ends_with("SEED-Bench-video-image/10_115795.png"));
}

#[test]
fn the_converters_failures_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("seed_bench", tmp.path());
    let answers = dir.join("answers/llava-v1.5-7b/merge.jsonl");
    let text = std::fs::read_to_string(&answers).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let bad = dir.join("answers/llava-v1.5-7b/bad.jsonl");

    // Both Scene Understanding answers wrong: the type has no correct count (KeyError).
    let wrong: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i < 2 {
                l.replace("\"text\": \"A\"", "\"text\": \"Z\"")
                    .replace("\"text\": \"D\"", "\"text\": \"Z\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&bad, wrong.join("\n")).unwrap();
    let e = error_of(score("seed_bench", &dir, &bad));
    assert!(
        e.contains("question type 1: every answered question is wrong")
            && e.contains("KeyError: 1"),
        "{e}"
    );

    // A question without an answer: the accuracies count it wrong, the upload fails.
    std::fs::write(&bad, lines[1..].join("\n")).unwrap();
    let e = error_of(score("seed_bench", &dir, &bad));
    assert!(
        e.contains("question \"101669\" has no answer") && e.contains("KeyError"),
        "{e}"
    );

    std::fs::write(&bad, format!("{}\n{{\"question_id\": 1\n", lines[0])).unwrap();
    let e = error_of(score("seed_bench", &dir, &bad));
    assert!(e.contains("bad.jsonl:2: malformed line"), "{e}");

    // No video question: the video accuracy divides by zero.
    let annotations = dir.join("SEED-Bench.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&annotations).unwrap()).unwrap();
    json["questions"]
        .as_array_mut()
        .unwrap()
        .retain(|q| q["data_type"] == "image");
    std::fs::write(&annotations, json.to_string()).unwrap();
    let e = error_of(score("seed_bench", &dir, &answers));
    assert!(
        e.contains("no video questions") && e.contains("ZeroDivisionError"),
        "{e}"
    );

    json["questions"][0]
        .as_object_mut()
        .unwrap()
        .remove("question_type_id");
    std::fs::write(&annotations, json.to_string()).unwrap();
    let e = error_of(score("seed_bench", &dir, &answers));
    assert!(
        e.contains("SEED-Bench.json: invalid JSON: missing field `question_type_id`"),
        "{e}"
    );
    std::fs::remove_file(&annotations).unwrap();
    let e = error_of(score("seed_bench", &dir, &answers));
    assert!(e.contains("SEED-Bench.json: cannot read"), "{e}");

    let dir = copy_fixture("seed_bench", &tmp.path().join("again"));
    let questions = dir.join("llava-seed-bench.jsonl");
    let text = std::fs::read_to_string(&questions).unwrap();
    std::fs::write(&questions, text.replacen("directly.\"", "directly\"", 1)).unwrap();
    let e = error_of(by_name("seed_bench").unwrap().queries(&DataSpec {
        paths: vec![dir],
        ..DataSpec::default()
    }));
    assert!(
        e.contains("llava-seed-bench.jsonl:1: field `text`: expected the question to end with"),
        "{e}"
    );
}

#[test]
fn a_runs_answers_are_scored_the_same_way() {
    let dir = data().join("seed_bench");
    let sets = queries("seed_bench", &dir, None);
    let answers = fixture_answers(&dir.join("answers/llava-v1.5-7b/merge.jsonl"));
    let tmp = tempfile::tempdir().unwrap();
    let report = report_run("seed_bench", &dir, &sets, tmp.path(), |q, prompt| {
        answers.get(&(q.id.clone(), prompt.to_string())).cloned()
    });
    let numbers = read_json(&tmp.path().join("seed_bench.json"));
    let want = &expected()["seed_bench"]["llava_converter"]["printed_accuracy_percent"];
    for (name, value) in want.as_object().unwrap() {
        let got = numbers["greedy"][name].as_f64().unwrap();
        assert_eq!(
            format!("{got:.2}"),
            format!("{:.2}", value.as_f64().unwrap()),
            "{name}"
        );
    }
    assert!(
        report.contains("| greedy | 17 | 57.14 | 66.67 | 58.82 |"),
        "{report}"
    );
}
