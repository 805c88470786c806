//! The `Benchmark` registry and the official scorers: `score` on LLaVA's fixture answers prints
//! what eval_pope.py and MME's calculation.py printed (recorded in
//! `fixtures/benchmarks/expected.json`), with the same numbers; bad input names its file, line
//! and field.

use std::path::PathBuf;

use tita_bench::benchmark::{by_name, DataSpec, REGISTRY};

use crate::common::{assert_matches, data, expected, score, write};

#[test]
fn registry_lists_every_benchmark_and_refuses_unknown_names() {
    let names: Vec<&str> = REGISTRY.iter().map(|b| b.name()).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "duplicate names in {names:?}");
    for name in ["pope", "mme", "yesno"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let e = by_name("vqa2").err().unwrap().to_string();
    assert!(
        e.contains(&format!(
            "unknown benchmark `vqa2`; known: {}",
            names.join(", ")
        )),
        "{e}"
    );
    for b in REGISTRY {
        assert!(!b.about().is_empty() && !b.title().is_empty());
    }
    let pope = by_name("pope").unwrap();
    assert_eq!(pope.parse_answer("No, there is not."), "no");
    assert_eq!(pope.parse_answer("3.5 no"), "yes");
    let mme = by_name("mme").unwrap();
    assert_eq!(mme.parse_answer("Snow"), "no");
    assert_eq!(mme.parse_answer("Maybe"), "other");
}

#[test]
fn pope_score_prints_what_eval_pope_printed() {
    let dir = data().join("pope");
    let card = score("pope", &dir, &dir.join("answers/llava-v1.5-7b.jsonl")).unwrap();
    let want = &expected()["pope"]["eval_pope"];
    assert_eq!(card.printed, want["stdout"].as_str().unwrap());
    assert_matches(&card.metrics["per_split"], &want["per_split"], "per_split");
    assert!(card.files.is_empty());
}

#[test]
fn mme_score_prints_what_calculation_printed_and_writes_the_converted_files() {
    let dir = data().join("mme");
    let card = score("mme", &dir, &dir.join("answers/llava-v1.5-7b.jsonl")).unwrap();
    let want = &expected()["mme"]["calculation"];
    assert_eq!(card.printed, want["stdout"].as_str().unwrap());
    assert_matches(&card.metrics["per_task"], &want["per_task"], "per_task");
    assert_matches(&card.metrics["totals"], &want["totals"], "totals");
    // The converter's txt files, byte for byte.
    assert_eq!(card.files.len(), 5);
    for (name, bytes) in &card.files {
        let recorded = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&recorded),
            "{}",
            name.display()
        );
    }
    // The release folder itself works as --data too.
    let inner = score(
        "mme",
        &dir.join("MME_Benchmark_release_version"),
        &dir.join("answers/llava-v1.5-7b.jsonl"),
    )
    .unwrap();
    assert_eq!(inner.printed, card.printed);
}

#[test]
fn question_sets_come_from_llava_folders() {
    let pope = by_name("pope").unwrap();
    let spec = |p: PathBuf| DataSpec {
        paths: vec![p],
        ..DataSpec::default()
    };
    let sets = pope.question_sets(&spec(data().join("pope"))).unwrap();
    let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["adversarial", "popular", "random"]);
    for s in &sets {
        assert_eq!(s.questions.len(), 8);
        assert!(s.images.iter().all(|i| i.is_file()));
    }
    let limited = pope
        .question_sets(&DataSpec {
            limit: Some(3),
            ..spec(data().join("pope"))
        })
        .unwrap();
    assert_eq!(limited[0].questions.len(), 3);

    // MME's release has both layouts: artwork/images + questions_answers_YN, and flat
    // folders with one `question<TAB>answer` txt beside each image.
    let mme = by_name("mme").unwrap();
    let sets = mme.question_sets(&spec(data().join("mme"))).unwrap();
    let names: Vec<(&str, usize)> = sets
        .iter()
        .map(|s| (s.name.as_str(), s.questions.len()))
        .collect();
    assert_eq!(
        names,
        [
            ("OCR", 4),
            ("artwork", 4),
            ("code_reasoning", 6),
            ("count", 4),
            ("existence", 6)
        ]
    );
    let count = &sets[3];
    assert_eq!(count.questions[1].label, "no");
    assert!(count.images[1].ends_with("count/0001.jpg"));
    let e = mme
        .question_sets(&DataSpec {
            limit: Some(2),
            ..spec(data().join("mme"))
        })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`limit`"), "{e}");
}

#[test]
fn bad_pope_input_names_file_line_and_field() {
    let pope = data().join("pope");
    let tmp = tempfile::tempdir().unwrap();
    let a = write(
        &tmp.path().join("a.jsonl"),
        "{\"question_id\": 1, \"text\": \"Yes\"}\n{\"question_id\": 99, \"text\": \"Yes\"}\n",
    );
    let e = score("pope", &pope, &a).err().unwrap().to_string();
    assert!(
        e.contains("a.jsonl:2: question_id 99 is not in") && e.contains("llava_pope_test.jsonl"),
        "{e}"
    );
    write(&a, "{\"question_id\": 1, \"txt\": \"Yes\"}\n");
    let e = score("pope", &pope, &a).err().unwrap().to_string();
    assert!(
        e.contains("a.jsonl:1: malformed line: missing field `text`"),
        "{e}"
    );
    // Every answer "No": no yes prediction, so precision divides by zero, as upstream.
    let all_no: String = (1..=8)
        .map(|i| format!("{{\"question_id\": {i}, \"text\": \"No\"}}\n"))
        .collect();
    write(&a, &all_no);
    let e = score("pope", &pope, &a).err().unwrap().to_string();
    assert!(
        e.contains("split `adversarial`: precision divides by zero")
            && e.contains("ZeroDivisionError"),
        "{e}"
    );
    // A label other than yes/no is refused with its line.
    let copy = tmp.path().join("pope");
    std::fs::create_dir_all(copy.join("coco")).unwrap();
    std::fs::copy(
        pope.join("llava_pope_test.jsonl"),
        copy.join("llava_pope_test.jsonl"),
    )
    .unwrap();
    let labels = std::fs::read_to_string(pope.join("coco/coco_pope_random.json")).unwrap();
    write(
        &copy.join("coco/coco_pope_random.json"),
        &labels.replacen("\"label\": \"no\"", "\"label\": \"No\"", 1),
    );
    let e = score("pope", &copy, &pope.join("answers/llava-v1.5-7b.jsonl"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(
            "coco_pope_random.json:2: field `label`: expected \"yes\" or \"no\", found \"No\""
        ),
        "{e}"
    );
    write(&copy.join("coco/notes.txt"), "");
    let e = score("pope", &copy, &a).err().unwrap().to_string();
    assert!(
        e.contains("notes.txt: not a coco_pope_{split}.json file"),
        "{e}"
    );
    let e = score("pope", &tmp.path().join("nowhere"), &a)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nowhere: not a folder; pope expects"), "{e}");
}

#[test]
fn bad_mme_input_names_file_line_and_field() {
    let mme = data().join("mme");
    let tmp = tempfile::tempdir().unwrap();
    let lines: Vec<String> = std::fs::read_to_string(mme.join("answers/llava-v1.5-7b.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let a = tmp.path().join("a.jsonl");
    let mut with_tab = lines.clone();
    with_tab[2] = with_tab[2].replace("\"text\": \"yes, it is\"", "\"text\": \"yes,\\tit is\"");
    assert_ne!(with_tab[2], lines[2]);
    write(&a, &with_tab.join("\n"));
    let e = score("mme", &mme, &a).err().unwrap().to_string();
    assert!(
        e.contains("a.jsonl:3: field `text` holds a tab or line break"),
        "{e}"
    );

    let mut unknown = lines.clone();
    unknown[0] = unknown[0].replace("Is there a dog", "Is there a unicorn");
    write(&a, &unknown.join("\n"));
    let e = score("mme", &mme, &a).err().unwrap().to_string();
    assert!(
        e.contains("a.jsonl:1: no ground truth for category `existence`, file `0001.txt`"),
        "{e}"
    );

    write(&a, &lines[..lines.len() - 1].join("\n"));
    let e = score("mme", &mme, &a).err().unwrap().to_string();
    assert!(
        e.contains("has 5 answers; calculation.py pairs consecutive answers"),
        "{e}"
    );

    write(
        &a,
        "{\"question_id\": 7, \"prompt\": \"p\", \"text\": \"Yes\"}\n",
    );
    let e = score("mme", &mme, &a).err().unwrap().to_string();
    assert!(
        e.contains("a.jsonl:1: field `question_id`: expected \"category/image\""),
        "{e}"
    );
}
