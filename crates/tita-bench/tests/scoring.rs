//! POPE and MME scoring on hand-made files whose metrics were worked out by hand.

use std::path::{Path, PathBuf};

use tita_bench::{mme, pope};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const QUESTIONS: &str = r#"{"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"}
{"question_id": 2, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "no"}
{"question_id": 3, "image": "b.jpg", "text": "Is there a car in the image?", "label": "yes"}
{"question_id": 4, "image": "b.jpg", "text": "Is there a cat in the image?", "label": "no"}
{"question_id": 5, "image": "c.jpg", "text": "Is there a cup in the image?", "label": "yes"}
{"question_id": 6, "image": "c.jpg", "text": "Is there a bus in the image?", "label": "no"}
"#;

#[test]
fn pope_rule_and_metrics_on_tricky_answers() {
    // first sentence only; commas dropped; "No"/"no"/"not" => no; anything else (even "") => yes
    assert!(pope::is_yes("Yes, there is."));
    assert!(!pope::is_yes("There is no dog."));
    assert!(!pope::is_yes("not sure"));
    assert!(pope::is_yes(""));
    assert!(pope::is_yes("Yes. But no cat."));
    assert!(!pope::is_yes("No"));
    assert!(!pope::is_yes("No, there is not."));
    assert!(pope::is_yes("Nope.")); // upstream matches whole words only
    assert!(!pope::is_yes("no,"));

    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("coco_pope_random.json");
    write(&q, QUESTIONS);
    let a = dir.path().join("answers.jsonl");
    // TP: 1, 5; TN: 2, 6; FN: 3 ("not sure"); FP: 4 ("").
    write(
        &a,
        r#"{"question_id": 1, "prompt": "p", "text": "Yes, there is.", "model_id": "m"}
{"question_id": 2, "prompt": "p", "text": "There is no dog.", "model_id": "m"}
{"question_id": 3, "prompt": "p", "text": "not sure", "model_id": "m"}
{"question_id": 4, "prompt": "p", "text": "", "model_id": "m"}
{"question_id": 5, "prompt": "p", "text": "Yes. But no cat.", "model_id": "m"}
{"question_id": 6, "prompt": "p", "text": "No", "model_id": "m"}
"#,
    );
    let questions = pope::read_questions(&q).unwrap();
    let m = pope::score(&questions, &a).unwrap();
    let close = |x: f64, y: f64| (x - y).abs() < 1e-12;
    assert_eq!(m.count, 6);
    assert!(close(m.accuracy, 4.0 / 6.0));
    assert!(close(m.precision, 2.0 / 3.0));
    assert!(close(m.recall, 2.0 / 3.0));
    assert!(close(m.f1, 2.0 / 3.0));
    assert!(close(m.yes_ratio, 0.5));
    assert_eq!(pope::split_name(&q), "random");

    // LLaVA's model_vqa_loader writes extra fields (answer_id, metadata) and any order.
    let llava = dir.path().join("llava.jsonl");
    let mut lines = Vec::new();
    for (id, text) in [
        (6, "No"),
        (5, "Yes"),
        (4, "Yes"),
        (3, "Yes"),
        (2, "No"),
        (1, "Yes"),
    ] {
        lines.push(format!(r#"{{"question_id": {id}, "prompt": "Is there ...?\nAnswer the question using a single word or phrase.", "text": "{text}", "answer_id": "x{id}", "model_id": "llava-v1.5-7b", "metadata": {{}}}}"#));
    }
    write(&llava, &lines.join("\n"));
    let m = pope::score(&questions, &llava).unwrap();
    // TP 1,3,5; FP 4; TN 2,6.
    assert!(close(m.accuracy, 5.0 / 6.0) && close(m.precision, 0.75) && close(m.recall, 1.0));
    assert!(close(m.f1, 2.0 * 0.75 / 1.75) && close(m.yes_ratio, 4.0 / 6.0));
}

#[test]
fn pope_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q.json");
    write(
        &q,
        &QUESTIONS.replace(r#""label": "no"}"#, r#""label": "maybe"}"#),
    );
    let e = pope::read_questions(&q).unwrap_err().to_string();
    assert!(e.contains("q.json:2: `label` must be"), "{e}");
    // Two questions with one id: answers could not be told apart.
    let first = QUESTIONS.lines().next().unwrap();
    write(&q, &format!("{QUESTIONS}{first}\n"));
    let e = pope::read_questions(&q).unwrap_err().to_string();
    let n = QUESTIONS.lines().count() + 1;
    assert!(
        e.contains(&format!(
            "q.json:{n}: question_id 1 is already used on line 1"
        )),
        "{e}"
    );
    write(&q, QUESTIONS);
    let questions = pope::read_questions(&q).unwrap();
    let a = dir.path().join("a.jsonl");
    write(
        &a,
        "{\"question_id\": 1, \"text\": \"Yes\"}\n{\"question_id\": 99, \"text\": \"Yes\"}\n",
    );
    let e = pope::score(&questions, &a).unwrap_err().to_string();
    assert!(e.contains("a.jsonl:2: question_id 99"), "{e}");
    write(&a, "{\"question_id\": 1, \"text\": \"Yes\"}\n{oops\n");
    let e = pope::score(&questions, &a).unwrap_err().to_string();
    assert!(e.contains("a.jsonl:2: malformed line"), "{e}");
}

#[test]
fn mme_scores_of_a_hand_made_release() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let img = std::fs::read(fixtures().join("images/square56.png")).unwrap();
    // Layout A: images/ + questions_answers_YN/<image>.txt
    for name in ["e1", "e2"] {
        write(&root.join(format!("existence/images/{name}.png")), "");
        std::fs::write(root.join(format!("existence/images/{name}.png")), &img).unwrap();
    }
    write(
        &root.join("existence/questions_answers_YN/e1.txt"),
        "Is there a cat?\tYes\nIs there a dog?\tNo\n",
    );
    write(
        &root.join("existence/questions_answers_YN/e2.txt"),
        "Is there a car?\tNo\nIs there a tree?\tYes\n",
    );
    // Layout B: images next to a tab-separated list.
    for name in ["c1.png", "c2.png", "k1.png"] {
        let cat = if name.starts_with('k') {
            "code_reasoning"
        } else {
            "count"
        };
        std::fs::create_dir_all(root.join(cat)).unwrap();
        std::fs::write(root.join(cat).join(name), &img).unwrap();
    }
    write(&root.join("count/count.txt"), "c1.png\tAre there two cats?\tyes\nc1.png\tAre there three cats?\tno\nc2.png\tIs there one dog?\tno\nc2.png\tAre there two dogs?\tyes\n");
    write(
        &root.join("code_reasoning/code_reasoning.txt"),
        "k1.png\tDoes it print 3?\tyes\nk1.png\tDoes it print 4?\tno\n",
    );

    let qs = mme::read_release(root).unwrap();
    assert_eq!(qs.len(), 10);
    let preds: Vec<String> = qs
        .iter()
        .map(|q| match (q.category.as_str(), q.question.as_str()) {
            // existence: e2's second question wrong -> acc 3/4, acc+ 1/2, score 125
            ("existence", "Is there a tree?") => "No".into(),
            // count: c2's first answer unparseable ("other" is wrong) -> acc 3/4, acc+ 1/2
            ("count", "Is there one dog?") => "Maybe".into(),
            // free-form answers are read from their first four characters
            _ if q.answer == "yes" => "Yes, it does.".into(),
            _ => "no".into(),
        })
        .collect();
    let s = mme::score(&qs, &preds);
    let ex = &s.categories["existence"];
    assert_eq!(
        (ex.accuracy, ex.accuracy_plus, ex.score, ex.questions),
        (0.75, 0.5, 125.0, 4)
    );
    assert_eq!(s.categories["count"].score, 125.0);
    assert_eq!(s.categories["code_reasoning"].score, 200.0);
    assert_eq!((s.perception, s.cognition), (250.0, 200.0));
    assert_eq!(mme::parse_prediction("Nothing"), "no"); // MME's rule, literally
    assert_eq!(mme::parse_prediction("I think so"), "other");

    write(
        &root.join("count/count.txt"),
        "c1.png\tAre there two cats?\tperhaps\n",
    );
    let e = mme::read_release(root).unwrap_err().to_string();
    assert!(e.contains("count.txt:1: expected"), "{e}");
}
