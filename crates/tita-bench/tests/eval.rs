//! End-to-end yes/no evaluation on the fixture models and images: every output written, a
//! resumed run asks nothing twice, the λ-sweep shortcut gives the answers of full decoding,
//! and bad question files are reported with their line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use tita_bench::eval::{answers_path, EvalConfig, Method, Models, QuestionSet};
use tita_bench::pope::Answer;
use tita_bench::report::evaluate;
use tita_decode::{Knobs, Pipeline};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

const QUESTIONS: &str = r#"{"question_id": 11, "image": "square56.png", "text": "Is there a cat in the image?", "label": "yes"}
{"question_id": 12, "image": "chelsea.png", "text": "Is there a cat in the image?", "label": "yes"}
{"question_id": 13, "image": "astronaut.png", "text": "Is there a dog in the image?", "label": "no"}
{"question_id": 14, "image": "rocket.jpg", "text": "Is there a car in the image?", "label": "no"}
"#;

fn config(shortcut: bool) -> EvalConfig {
    EvalConfig {
        methods: [
            "greedy",
            "tita:0.3",
            "tita:0.6",
            "tita:1",
            "reference:1",
            "vcd:1",
            "m3id",
            "marine:0.7",
        ]
        .iter()
        .map(|m| Method::parse(m, &shared_knobs()).unwrap())
        .collect(),
        max_new_tokens: 6,
        shortcut,
        ..EvalConfig::default()
    }
}

/// MARINE's detected objects, the same for every image.
fn shared_knobs() -> Knobs {
    Knobs::new().with("objects", Some(serde_json::json!(["cat", "rocket"])))
}

fn answers(out: &Path, m: &Method) -> Vec<Answer> {
    std::fs::read_to_string(answers_path(out, m, "questions"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn pope_run_writes_reports_resumes_and_the_sweep_equals_full_decoding() {
    let device = Default::default();
    let load = |n: &str| Pipeline::<Flex>::load(&fixtures().join(n), &device).unwrap();
    let (target, reward, reference) = (
        load("llava-target"),
        load("llava-reward"),
        load("llava-reward-ref"),
    );
    let models = Models {
        target: &target,
        reward: Some(&reward),
        reference: Some(&reference),
    };
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("questions.jsonl");
    std::fs::write(&q, QUESTIONS).unwrap();
    let sets = vec![QuestionSet::read(&q, Some(&fixtures().join("images")), None).unwrap()];

    let out = dir.path().join("fast");
    let r = evaluate(&models, &sets, &out, &config(true), false, "test").unwrap();
    for f in ["results.json", "report.md", "lambda.png", "speed.png"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let cfg = config(true);
    for m in &cfg.methods {
        let x = &r.sets["questions"][&m.name()];
        assert_eq!(x.count, 4);
        for v in [x.accuracy, x.precision, x.recall, x.f1, x.yes_ratio] {
            assert!(v.is_finite() && (0.0..=1.0).contains(&v));
        }
        assert_eq!(r.speed[&m.name()].answers, 4);
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| tita-0.6 |") && report.contains("| vcd-1 |"));

    // Full decoding of every method separately gives the same answers.
    let slow = dir.path().join("slow");
    evaluate(&models, &sets, &slow, &config(false), false, "test").unwrap();
    for m in &cfg.methods {
        let (a, b) = (answers(&out, m), answers(&slow, m));
        let text = |v: &[Answer]| {
            v.iter()
                .map(|a| (a.question_id, a.text.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(text(&a), text(&b), "{}", m.name());
    }

    // Rerun: nothing left to ask. Then lose the last two greedy answers (an interruption):
    // only those two are asked again.
    let again = evaluate(&models, &sets, &out, &config(true), false, "test").unwrap();
    assert!(again.speed.is_empty(), "{:?}", again.speed);
    let greedy = Method::Greedy;
    let path = answers_path(&out, &greedy, "questions");
    let before = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = before.lines().take(2).collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    let resumed = evaluate(&models, &sets, &out, &config(true), false, "test").unwrap();
    assert_eq!(resumed.speed.len(), 1);
    assert_eq!(resumed.speed["greedy"].answers, 2);
    let mut ids: Vec<u64> = answers(&out, &greedy)
        .iter()
        .map(|a| a.question_id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec![11, 12, 13, 14]);
    assert_eq!(
        resumed.sets["questions"]["greedy"],
        r.sets["questions"]["greedy"]
    );
}

#[test]
fn bad_question_files_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let images = fixtures().join("images");
    let q = dir.path().join("q.jsonl");
    std::fs::write(&q, QUESTIONS.replace("rocket.jpg", "missing.jpg")).unwrap();
    let e = QuestionSet::read(&q, Some(&images), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("q.jsonl:4: image `missing.jpg` not found"),
        "{e}"
    );
    std::fs::write(
        &q,
        QUESTIONS.replace("\"label\": \"no\"}\n{", "\"label\": \"no\"\n{"),
    )
    .unwrap();
    let e = QuestionSet::read(&q, Some(&images), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("q.jsonl:3: malformed line"), "{e}");
    let e = QuestionSet::read(
        &dir.path().join("coco_pope_nosuch.json"),
        Some(&images),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("coco_pope_nosuch.json: cannot read"), "{e}");
}

#[test]
fn mme_release_runs_end_to_end() {
    let device = Default::default();
    let target = Pipeline::<Flex>::load(&fixtures().join("llava-target"), &device).unwrap();
    let models = Models {
        target: &target,
        reward: None,
        reference: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("release");
    for (cat, img) in [("existence", "chelsea.png"), ("code_reasoning", "logo.png")] {
        std::fs::create_dir_all(root.join(cat)).unwrap();
        std::fs::copy(
            fixtures().join("images").join(img),
            root.join(cat).join(img),
        )
        .unwrap();
        std::fs::write(
            root.join(cat).join(format!("{cat}.txt")),
            format!("{img}\tIs there a cat in this image?\tYes\n{img}\tIs there a dog in this image?\tNo\n"),
        )
        .unwrap();
    }
    let questions = tita_bench::mme::read_release(&root).unwrap();
    let sets = tita_bench::mme::question_sets(&questions);
    assert_eq!(
        sets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["code_reasoning", "existence"]
    );
    let out = dir.path().join("out");
    let config = EvalConfig {
        methods: vec![
            Method::Greedy,
            Method::parse("vcd:1", &Knobs::new()).unwrap(),
        ],
        max_new_tokens: 3,
        ..EvalConfig::default()
    };
    evaluate(&models, &sets, &out, &config, false, "MME").unwrap();
    // The fixture model's answers are gibberish; put known answers into the files the run
    // wrote (same ids, format and paths) and check the scores against hand-computed ones.
    // existence (perception): cat "Yes." (right), dog "No, there is none." (right) -> acc 1,
    // acc+ 1 (the image has both right), score 200. code_reasoning (cognition): cat "yes"
    // (right), dog "There is not one." (MME reads "ther": neither, so wrong; POPE's reading
    // would call it a right "no") -> acc 0.5, acc+ 0, score 50.
    let hand = |set: &str, prompt: &str| match (set, prompt.contains("cat")) {
        ("existence", true) => "Yes.",
        ("existence", false) => "No, there is none.",
        (_, true) => "yes",
        (_, false) => "There is not one.",
    };
    for method in &config.methods {
        for set in &sets {
            let path = tita_bench::eval::answers_path(&out, method, &set.name);
            let text: String = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(|l| {
                    let mut a: serde_json::Value = serde_json::from_str(l).unwrap();
                    a["text"] = hand(&set.name, a["prompt"].as_str().unwrap()).into();
                    a.to_string() + "\n"
                })
                .collect();
            assert_eq!(text.lines().count(), 2, "{}", path.display());
            std::fs::write(&path, text).unwrap();
        }
    }
    let scores = tita_bench::mme::score_methods(&questions, &out, &config.methods).unwrap();
    assert_eq!(scores.len(), 2);
    for s in scores.values() {
        let e = &s.categories["existence"];
        let c = &s.categories["code_reasoning"];
        assert_eq!(
            (e.accuracy, e.accuracy_plus, e.score, e.questions),
            (1.0, 1.0, 200.0, 2)
        );
        assert_eq!(
            (c.accuracy, c.accuracy_plus, c.score, c.questions),
            (0.5, 0.0, 50.0, 2)
        );
        assert_eq!((s.perception, s.cognition), (200.0, 50.0));
    }
    // The run's report reads answers as MME does: its yes/no table agrees with the scores.
    let mme = tita_bench::benchmark::by_name("mme").unwrap();
    let queries: Vec<_> = sets.iter().map(|s| s.queries()).collect();
    let run = tita_bench::benchmark::RunOutput {
        out: &out,
        sets: &sets,
        queries: &queries,
        data: &Default::default(),
        config: &config,
        speed: Default::default(),
    };
    let report = mme.report_run(&run).unwrap();
    assert!(report.contains("| greedy | 200.00 | 50.00 |"), "{report}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    for (set, accuracy) in [("existence", 1.0), ("code_reasoning", 0.5)] {
        assert_eq!(
            results["sets"][set]["greedy"]["accuracy"], accuracy,
            "{set}"
        );
    }
    // With no cognition category the total is 0.00, not "-0.00".
    let perception_only: Vec<_> = questions
        .iter()
        .filter(|q| q.category == "existence")
        .cloned()
        .collect();
    let preds = vec!["Yes".to_string(); perception_only.len()];
    let scores = tita_bench::mme::score(&perception_only, &preds);
    assert_eq!(format!("{:.2}", scores.cognition), "0.00");
    // A category folder without questions is an error, not a total that leaves it out.
    std::fs::write(root.join("code_reasoning/code_reasoning.txt"), "\n").unwrap();
    let err = tita_bench::mme::read_release(&root)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("code_reasoning") && err.contains("holds no questions"),
        "{err}"
    );
}

/// POPE on Qwen2.5-VL (target + the Qwen reward of the fixtures): images of any size take the
/// tokens their grid gives, every method answers, and the λ-sweep shortcut equals full decoding.
#[test]
fn pope_run_on_qwen_models() {
    let device = Default::default();
    let q = fixtures().join("qwen2_5_vl");
    let load = |n: &str| Pipeline::<Flex>::load(&q.join(n), &device).unwrap();
    let (target, reward) = (load("model"), load("reward"));
    let models = Models {
        target: &target,
        reward: Some(&reward),
        reference: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("questions.jsonl");
    std::fs::write(
        &file,
        r#"{"question_id": 1, "image": "qwen2_5_vl/images/image_main_112x84.png", "text": "Is there a red square in the image?", "label": "yes"}
{"question_id": 2, "image": "images/chelsea.png", "text": "Is there a dog in the image?", "label": "no"}
"#,
    )
    .unwrap();
    let sets = vec![QuestionSet::read(&file, Some(&fixtures()), None).unwrap()];
    let config = |shortcut| EvalConfig {
        methods: ["greedy", "tita:0.3", "tita:0.6", "vcd:1"]
            .iter()
            .map(|m| Method::parse(m, &Knobs::new()).unwrap())
            .collect(),
        max_new_tokens: 4,
        shortcut,
        ..EvalConfig::default()
    };
    let (fast, slow) = (dir.path().join("fast"), dir.path().join("slow"));
    let r = evaluate(&models, &sets, &fast, &config(true), false, "test").unwrap();
    evaluate(&models, &sets, &slow, &config(false), false, "test").unwrap();
    for m in &config(true).methods {
        assert_eq!(r.sets["questions"][&m.name()].count, 2, "{}", m.name());
        let texts =
            |out: &Path| -> Vec<String> { answers(out, m).into_iter().map(|a| a.text).collect() };
        assert_eq!(texts(&fast), texts(&slow), "{}", m.name());
    }
}

/// The fixture target and reward models.
fn target_and_reward() -> (Pipeline<Flex>, Pipeline<Flex>) {
    let device = Default::default();
    let load = |n: &str| Pipeline::<Flex>::load(&fixtures().join(n), &device).unwrap();
    (load("llava-target"), load("llava-reward"))
}

/// Any benchmark's questions (string and number ids, text-only ones among them): shard runs
/// joined by `merge_shards` give byte for byte the unsharded run's files, and a run killed
/// mid-line resumes to the same files.
#[test]
fn shards_merge_into_the_unsharded_run_and_a_cut_line_is_asked_again() {
    use tita_bench::benchmark::QuestionId::{Int, Str};
    use tita_bench::eval::{answer_queries, merge_shards, Query, QuerySet, Shard};
    use tita_decode::ImageInput;

    let (target, reward) = target_and_reward();
    let models = Models {
        target: &target,
        reward: Some(&reward),
        reference: None,
    };
    let image = |name: &str| Some(ImageInput::Path(fixtures().join("images").join(name)));
    let q = |id, text: &str, image| Query {
        id,
        text: text.into(),
        image,
    };
    let sets = vec![
        QuerySet {
            name: "mixed".into(),
            queries: vec![
                q(
                    Str("q-a".into()),
                    "What animal is this?",
                    image("chelsea.png"),
                ),
                q(Int(7), "What is this?", image("rocket.jpg")),
                q(Str("text-1".into()), "What is two plus two?", None),
                q(Str("q-b".into()), "Who is this?", image("astronaut.png")),
            ],
        },
        QuerySet {
            name: "more".into(),
            queries: vec![
                q(Int(9), "What colour is it?", image("square56.png")),
                q(Str("text-2".into()), "Name a fruit.", None),
            ],
        },
    ];
    let methods: Vec<Method> = ["greedy", "tita:0.3"]
        .iter()
        .map(|m| Method::parse(m, &Knobs::new()).unwrap())
        .collect();
    let config = |shard| EvalConfig {
        methods: methods.clone(),
        max_new_tokens: 4,
        shard,
        ..EvalConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &Path, shard| {
        answer_queries(&models, &sets, out, &config(shard), false).unwrap();
    };
    let full = dir.path().join("full");
    run(&full, None);

    let parts: Vec<PathBuf> = (0..2)
        .map(|k| dir.path().join(format!("part{k}")))
        .collect();
    for (k, part) in parts.iter().enumerate() {
        run(part, Some(Shard { index: k, count: 2 }));
    }
    // Every question is in exactly one part.
    let all: Vec<_> = sets.iter().flat_map(|s| &s.queries).collect();
    for q in &all {
        let holders = (0..2)
            .filter(|&k| Shard { index: k, count: 2 }.holds(&q.id))
            .count();
        assert_eq!(holders, 1, "{}", q.id);
    }
    let merged = dir.path().join("merged");
    let summary = merge_shards(&sets, &methods, &parts, &merged).unwrap();
    assert_eq!(summary.answers["greedy"], all.len());
    let file =
        |out: &Path, m: &Method, set: &str| std::fs::read(answers_path(out, m, set)).unwrap();
    for m in &methods {
        for set in ["mixed", "more"] {
            assert_eq!(
                file(&merged, m, set),
                file(&full, m, set),
                "{} {set}",
                m.name()
            );
        }
    }
    // Ids keep their type: strings stay strings, as the benchmark's scorer expects.
    let first = String::from_utf8(file(&full, &methods[0], "mixed")).unwrap();
    assert!(first.starts_with(r#"{"question_id":"q-a","#), "{first}");

    // One part alone misses questions: named, not silently short.
    let err = merge_shards(&sets, &methods, &parts[..1], &dir.path().join("half"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is answered in none of the 1 parts"), "{err}");

    // A kill mid-line: the cut record is dropped and asked again.
    let path = answers_path(&full, &methods[1], "mixed");
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..whole.len() - 10]).unwrap();
    run(&full, None);
    assert_eq!(std::fs::read(&path).unwrap(), whole);

    assert!(Shard::parse("2/2").is_err() && Shard::parse("1/0").is_err());
    assert_eq!(Shard::parse("1/4").unwrap(), Shard { index: 1, count: 4 });
}

/// Batch invariance (lmms-eval#236: ScienceQA answers changed with the batch size): a fixture
/// benchmark's answer files, image and text-only questions mixed, are byte for byte the same
/// with batch 1, 3 and 8, for greedy and TITA.
#[test]
fn answers_do_not_depend_on_the_batch_size() {
    use tita_bench::benchmark::{by_name, DataSpec};
    use tita_bench::eval::answer_queries;

    let (target, reward) = target_and_reward();
    let models = Models {
        target: &target,
        reward: Some(&reward),
        reference: None,
    };
    let bench = by_name("scienceqa").unwrap();
    let sets = bench
        .queries(&DataSpec {
            paths: vec![fixtures().join("benchmarks/scienceqa")],
            ..DataSpec::default()
        })
        .unwrap();
    assert!(sets[0].queries.iter().any(|q| q.image.is_none()));
    // VCD and M3ID answer text-only questions plainly (the next test).
    let methods: Vec<Method> = ["greedy", "tita:0.3", "tita:1"]
        .iter()
        .map(|m| Method::parse(m, &Knobs::new()).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let files = |batch: usize| {
        let out = dir.path().join(format!("batch{batch}"));
        let config = EvalConfig {
            methods: methods.clone(),
            suffix: bench.instruction().into(),
            max_new_tokens: 4,
            batch,
            ..EvalConfig::default()
        };
        answer_queries(&models, &sets, &out, &config, false).unwrap();
        (methods.iter())
            .map(|m| std::fs::read_to_string(answers_path(&out, m, &sets[0].name)).unwrap())
            .collect::<Vec<_>>()
    };
    let one = files(1);
    assert_eq!(one[0].lines().count(), sets[0].queries.len());
    for batch in [3, 8] {
        assert_eq!(files(batch), one, "batch {batch}");
    }
}

/// ScienceQA asks its text-only questions without an image, which VCD and M3ID contrast: as
/// the server does, the runner answers those plainly (greedy's answers, counted in the run's
/// speed record) and the image questions under the method, the same with the shortcut on or
/// off and in batches.
#[test]
fn image_contrasting_methods_answer_text_only_questions_plainly() {
    use std::collections::HashSet;
    use tita_bench::benchmark::{by_name, DataSpec};
    use tita_bench::eval::{answer_queries, RunAnswer};

    let (target, reward) = target_and_reward();
    let models = Models {
        target: &target,
        reward: Some(&reward),
        reference: None,
    };
    let bench = by_name("scienceqa").unwrap();
    let sets = bench
        .queries(&DataSpec {
            paths: vec![fixtures().join("benchmarks/scienceqa")],
            ..DataSpec::default()
        })
        .unwrap();
    let text_only: HashSet<_> = (sets[0].queries.iter())
        .filter(|q| q.image.is_none())
        .map(|q| q.id.clone())
        .collect();
    assert!(!text_only.is_empty() && text_only.len() < sets[0].queries.len());
    let methods: Vec<Method> = ["greedy", "vcd:1", "m3id"]
        .iter()
        .map(|m| Method::parse(m, &Knobs::new()).unwrap())
        .collect();
    assert!(!methods[0].plain_for(false) && methods[1].plain_for(false));
    assert!(!methods[1].plain_for(true));
    let dir = tempfile::tempdir().unwrap();
    let run = |shortcut: bool, batch: usize| {
        let out = dir.path().join(format!("{shortcut}-{batch}"));
        let config = EvalConfig {
            methods: methods.clone(),
            suffix: bench.instruction().into(),
            max_new_tokens: 4,
            shortcut,
            batch,
            ..EvalConfig::default()
        };
        let speed = answer_queries(&models, &sets, &out, &config, false).unwrap();
        let answers: Vec<Vec<RunAnswer>> = (methods.iter())
            .map(|m| {
                let text = std::fs::read_to_string(answers_path(&out, m, &sets[0].name)).unwrap();
                (text.lines())
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect()
            })
            .collect();
        (speed, answers)
    };
    let (speed, answers) = run(true, 1);
    assert_eq!(speed["greedy"].plain_text_only, 0);
    for (m, got) in methods.iter().zip(&answers).skip(1) {
        assert_eq!(got.len(), sets[0].queries.len(), "{}", m.name());
        assert_eq!(speed[&m.name()].plain_text_only, text_only.len());
        for (a, greedy) in got.iter().zip(&answers[0]) {
            assert_eq!(a.question_id, greedy.question_id);
            if text_only.contains(&a.question_id) {
                assert_eq!(a.text, greedy.text, "{} {}", m.name(), a.question_id);
            }
        }
    }
    for (shortcut, batch) in [(false, 1), (false, 3)] {
        let (speed_again, again) = run(shortcut, batch);
        assert_eq!(again, answers, "shortcut {shortcut}, batch {batch}");
        assert_eq!(
            speed_again[&methods[1].name()].plain_text_only,
            text_only.len()
        );
    }
}
