//! The `tita-bench` binary: help, and bad runs answered with a message and exit code 1 before
//! anything is written (or with another run's files left as they were).

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tita-bench"))
        .args(args)
        .output()
        .unwrap()
}

fn refused(args: &[&str], want: &str) {
    let out = bench(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 1: the run refused it; 2: the command line's parser did (a value out of its range).
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{args:?}: {stderr}"
    );
    assert!(stderr.contains(want), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn help_names_the_run_flags() {
    let out = bench(&["pope", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--resume",
        "--overwrite",
        "--template",
        "--system",
        "--lambdas",
    ] {
        assert!(help.contains(flag), "{flag} missing");
    }
}

#[test]
fn bad_evaluations_fail_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let questions = dir.path().join("q.jsonl");
    std::fs::write(
        &questions,
        "{\"question_id\": 1, \"image\": \"images/square56.png\", \"text\": \"Is there a cat?\", \"label\": \"no\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let target = fixtures().join("llava-target");
    let images = fixtures().display().to_string();
    let base = [
        "pope",
        "--target",
        target.to_str().unwrap(),
        "--questions",
        questions.to_str().unwrap(),
        "--images",
        &images,
        "--out",
        out.to_str().unwrap(),
    ];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    refused(
        &with(&["--lambdas", "-1"]),
        "invalid argument `lambda`: -1 is outside [0, 1]",
    );
    refused(
        &with(&["--methods", "vcd:-2"]),
        "invalid argument `alpha`: -2 must be a finite number >= 0",
    );
    for zero in [["--limit", "0"], ["--max-new-tokens", "0"]] {
        refused(&with(&zero), "must be at least 1");
    }
    refused(
        &with(&["--methods", "greedy,m3id", "--knob", "lambda=0.3"]),
        "--knob lambda: no method of --methods takes it",
    );
    refused(
        &with(&["--methods", "marine"]),
        "MARINE needs the detected objects",
    );
    refused(
        &with(&["--methods", "sideways:1"]),
        "expected greedy or MODE[:VALUE] with MODE one of interpolate, reference, contrastive, m3id, marine",
    );
    refused(
        &with(&[
            "--methods",
            "m3id",
            "--knob",
            "m3id_variant=avisc",
            "--knob",
            "m3id_alpha=0.5",
        ]),
        "m3id_alpha",
    );
    // Two question files of one split name would file their answers together.
    let (d1, d2) = (dir.path().join("d1"), dir.path().join("d2"));
    for d in [&d1, &d2] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::copy(&questions, d.join("split.jsonl")).unwrap();
    }
    let both = format!(
        "{},{}",
        d1.join("split.jsonl").display(),
        d2.join("split.jsonl").display()
    );
    let mut twice = base.to_vec();
    let at = twice.iter().position(|a| *a == "--questions").unwrap() + 1;
    twice[at] = &both;
    refused(&twice, "are both the split `split`");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let mut into_file = base.to_vec();
    let at = into_file.iter().position(|a| *a == "--out").unwrap() + 1;
    into_file[at] = file.to_str().unwrap();
    refused(&into_file, "is a file; give a folder");
    assert!(!out.exists(), "a refused run creates nothing");
    // A folder of the user's: neither a run nor --overwrite touches it.
    std::fs::create_dir_all(out.join("sub")).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    std::fs::write(out.join("sub/data.csv"), "1,2").unwrap();
    refused(
        &with(&[]),
        "holds files that no run wrote (notes.txt, sub); give a new or empty folder",
    );
    refused(
        &with(&["--overwrite"]),
        "holds files that no run wrote (notes.txt, sub); --overwrite deletes only a run's own outputs",
    );
    assert!(out.join("notes.txt").is_file() && out.join("sub/data.csv").is_file());
}

#[test]
fn pope_score_prints_json_and_refuses_unknown_ids() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("coco_pope_random.json");
    std::fs::write(
        &q,
        [
            r#"{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "yes"}"#,
            r#"{"question_id": 2, "image": "a.jpg", "text": "Is there a cat?", "label": "no"}"#,
            r#"{"question_id": 3, "image": "b.jpg", "text": "Is there a car?", "label": "yes"}"#,
            r#"{"question_id": 4, "image": "b.jpg", "text": "Is there a bus?", "label": "no"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let a = dir.path().join("answers.jsonl");
    // yes (right), "No, there is not." (right), "There is no car." (no: wrong), "Yes." (wrong).
    std::fs::write(
        &a,
        [
            r#"{"question_id": 1, "text": "Yes"}"#,
            r#"{"question_id": 2, "text": "No, there is not."}"#,
            r#"{"question_id": 3, "text": "There is no car."}"#,
            r#"{"question_id": 4, "text": "Yes."}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let (q, a) = (q.to_str().unwrap(), a.to_str().unwrap());
    let out = bench(&["pope-score", "--questions", q, "--answers", a, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // TP 1, FP 1, FN 1, TN 1: accuracy, precision, recall, F1 all 0.5; yes ratio 0.5.
    assert_eq!(
        m,
        serde_json::json!({"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5,
            "yes_ratio": 0.5, "count": 4})
    );
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, r#"{"question_id": 9, "text": "Yes"}"#).unwrap();
    refused(
        &[
            "pope-score",
            "--questions",
            q,
            "--answers",
            bad.to_str().unwrap(),
            "--json",
        ],
        "bad.jsonl:1: question_id 9 is not among the questions",
    );
}

/// Runs `bench` with `args`, which must succeed, and reads the `results.json` it wrote in `out`.
fn speed_results(args: &[&str], out: &std::path::Path) -> serde_json::Value {
    let run = bench(args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

/// `speed` on checkpoints in f16: decode against the bound, TITA at two batch sizes and
/// POPE-shaped queries, every number finite; a text-only target is refused for --pope.
#[test]
fn speed_on_checkpoints_reports_every_phase() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("speed");
    let target = fixtures().join("llava-target");
    let reward = fixtures().join("llava-reward");
    // Counts of nothing measure nothing (the median of no queries used to panic).
    for flag in ["--queries", "--new-tokens", "--prompt-tokens", "--batch"] {
        refused(
            &[
                "speed",
                "--model",
                target.to_str().unwrap(),
                "--pope",
                flag,
                "0",
            ],
            "must be at least 1",
        );
    }
    let args = [
        "speed",
        "--model",
        target.to_str().unwrap(),
        "--reward",
        reward.to_str().unwrap(),
        "--dtype",
        "f16",
        "--prompt-tokens",
        "12",
        "--new-tokens",
        "3",
        "--tita",
        "--batch",
        "1,2",
        "--pope",
        "--queries",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    let runs = speed_results(&args, &out);
    let run = &runs[0];
    assert_eq!(run["decode"]["dtype"], "f16");
    for key in [
        "decode_tokens_per_s",
        "bound_tokens_per_s",
        "prefill_tokens_per_s",
        "decode_cores",
    ] {
        assert!(run["decode"][key].as_f64().unwrap().is_finite(), "{key}");
    }
    assert_eq!(run["tita"]["rows"].as_array().unwrap().len(), 2);
    let pope = &run["pope"];
    assert_eq!(pope["image_tokens"], 16);
    for key in [
        "greedy_s",
        "tita_s",
        "vcd_s",
        "tita_vs_greedy",
        "tita_bound",
    ] {
        assert!(pope[key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(out.join("report.md").is_file() && out.join("speed.png").is_file());
    // The same folder again needs --overwrite.
    refused(&args, "--overwrite");
    let text_only = fixtures().join("llama-text");
    refused(
        &[
            "speed",
            "--model",
            text_only.to_str().unwrap(),
            "--pope",
            "--out",
            dir.path().join("t").to_str().unwrap(),
        ],
        "text-only",
    );
    assert!(
        !dir.path().join("t").exists(),
        "a refused run wrote its folder"
    );
}

/// `speed --pope` on the Qwen2.5-VL fixtures: the image takes the tokens its grid gives (a
/// 644x476 photo: 23x17 merged cells), the Qwen reward steers, every number finite.
#[test]
fn speed_pope_on_qwen_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("speed");
    let q = fixtures().join("qwen2_5_vl");
    let runs = speed_results(
        &[
            "speed",
            "--model",
            q.join("model").to_str().unwrap(),
            "--reward",
            q.join("reward").to_str().unwrap(),
            "--prompt-tokens",
            "8",
            "--new-tokens",
            "2",
            "--pope",
            "--queries",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        &out,
    );
    let pope = &runs[0]["pope"];
    assert_eq!(pope["image_tokens"], 23 * 17);
    for key in ["greedy_s", "tita_s", "vcd_s"] {
        assert!(pope[key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(runs[0]["decode"]["image_encode_ms"].as_f64().unwrap() > 0.0);
}

/// `suite` runs the benchmarks present (POPE here), lists absent ones as missing, and writes
/// its table; `run --shard K/2` twice and `merge` give the unsharded run's answer files byte
/// for byte, and the same scores.
#[test]
fn suite_lists_missing_benchmarks_and_shards_merge_into_the_unsharded_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("eval");
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink(fixtures().join("benchmarks/pope"), root.join("pope")).unwrap();
    let target = fixtures().join("llava-target").display().to_string();
    let reward = fixtures().join("llava-reward").display().to_string();
    let models = [
        "--target",
        &target,
        "--reward",
        &reward,
        "--methods",
        "greedy,tita:0.3",
    ];
    let suite = dir.path().join("suite");
    let root_s = root.display().to_string();
    let suite_s = suite.display().to_string();
    let mut args = vec![
        "suite", "--data", &root_s, "--only", "pope,mme", "--out", &suite_s,
    ];
    args.extend(models);
    let out = bench(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(suite.join("suite.md")).unwrap();
    assert!(
        md.contains("| pope | F1 × 100, mean of the splits |"),
        "{md}"
    );
    assert!(md.contains("| mme | missing: no "), "{md}");
    assert!(suite.join("suite.png").is_file());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(suite.join("suite.json")).unwrap()).unwrap();
    let pope = &json["benchmarks"][0];
    assert_eq!(pope[0], "pope");
    let greedy = pope[1]["values"]["greedy"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&greedy), "{pope}");

    let pope_dir = fixtures().join("benchmarks/pope").display().to_string();
    let parts: Vec<String> = (0..2)
        .map(|k| {
            let part = dir.path().join(format!("part{k}")).display().to_string();
            let shard = format!("{k}/2");
            let mut args = vec![
                "run", "pope", "--data", &pope_dir, "--shard", &shard, "--out", &part,
            ];
            args.extend(models);
            let out = bench(&args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            part
        })
        .collect();
    let merged = dir.path().join("merged").display().to_string();
    let from = parts.join(",");
    let out = bench(&[
        "merge",
        "pope",
        "--data",
        &pope_dir,
        "--from",
        &from,
        "--out",
        &merged,
        "--methods",
        "greedy,tita:0.3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for method in ["greedy", "tita-0.3"] {
        for split in ["adversarial", "popular", "random"] {
            let file = |run: &std::path::Path| {
                std::fs::read(
                    run.join("answers")
                        .join(method)
                        .join(format!("{split}.jsonl")),
                )
                .unwrap()
            };
            assert_eq!(
                file(std::path::Path::new(&merged)),
                file(&suite.join("pope")),
                "{method} {split}"
            );
        }
    }
    let merged_results = std::fs::read(std::path::Path::new(&merged).join("results.json")).unwrap();
    let merged_results: serde_json::Value = serde_json::from_slice(&merged_results).unwrap();
    assert_eq!(
        merged_results["sets"]["random"]["greedy"]["f1"],
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(suite.join("pope/results.json")).unwrap()
        )
        .unwrap()["sets"]["random"]["greedy"]["f1"]
    );
}

/// A run killed with SIGKILL part way (after some answers are written) and run again ends with
/// the answers file of an uninterrupted run, byte for byte. TextVQA: its ids repeat (image
/// ids), so resuming must tell its questions apart by prompt too.
#[test]
fn a_run_killed_with_sigkill_resumes_to_the_uninterrupted_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixtures().join("benchmarks/textvqa").display().to_string();
    let target = fixtures().join("llava-target").display().to_string();
    let args = |out: &str| -> Vec<String> {
        [
            "run",
            "textvqa",
            "--data",
            &data,
            "--target",
            &target,
            "--methods",
            "greedy",
            "--max-new-tokens",
            "6",
            "--out",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let answers =
        |out: &std::path::Path| out.join("answers/greedy/llava_textvqa_val_v051_ocr.jsonl");
    let full = dir.path().join("full");
    let run_to_end = |out: &std::path::Path, extra: &[&str]| {
        let done = Command::new(env!("CARGO_BIN_EXE_tita-bench"))
            .args(args(&out.display().to_string()))
            .args(extra)
            .output()
            .unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
    };
    run_to_end(&full, &[]);
    let want = std::fs::read(answers(&full)).unwrap();
    let total = want.iter().filter(|b| **b == b'\n').count();

    let killed = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tita-bench"))
        .args(args(&killed.display().to_string()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let written = loop {
        let n = std::fs::read(answers(&killed))
            .map(|b| b.iter().filter(|c| **c == b'\n').count())
            .unwrap_or(0);
        if n >= 2 {
            break n;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended first");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    assert!(child.try_wait().unwrap().is_none(), "the run ended first");
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let left = std::fs::read(answers(&killed)).unwrap();
    assert!(
        written < total && left.len() < want.len(),
        "{written} of {total}"
    );

    run_to_end(&killed, &["--resume"]);
    assert_eq!(
        String::from_utf8(std::fs::read(answers(&killed)).unwrap()).unwrap(),
        String::from_utf8(want).unwrap()
    );
}

#[path = "suite/judge_server.rs"]
mod judge_server;

/// `suite --judge-url/--judge-model` scores LLaVA-Bench-in-the-Wild over HTTP (the fixtures'
/// scripted judge on 127.0.0.1, a rate limit and a server error among its replies), names the
/// judge in the table, and keeps every judge request and reply beside the scores.
#[test]
fn suite_with_a_judge_scores_the_judge_scored_benchmarks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("eval");
    std::fs::create_dir(&root).unwrap();
    let name = "llava-bench-in-the-wild";
    let fixture = fixtures().join("benchmarks").join(name);
    std::os::unix::fs::symlink(&fixture, root.join(name)).unwrap();
    // The fixture's replies are keyed on LLaVA's answers (Assistant 2); the run's answers are
    // the fixture model's, so each is keyed here on its question's reference answer
    // (Assistant 1) instead.
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(fixture.join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let llava = read("answers/llava-v1.5-7b.jsonl");
    let reference = read("answers_gpt4.jsonl");
    let block = |n: u8, text: &serde_json::Value| {
        format!(
            "[Assistant {n}]\n{}\n\n[End of Assistant {n}]",
            text.as_str().unwrap()
        )
    };
    let scripted: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("judge_replies.json")).unwrap())
            .unwrap();
    let replies: Vec<serde_json::Value> = (scripted.as_array().unwrap().iter())
        .map(|entry| {
            let asked = llava
                .iter()
                .find(|a| block(2, &a["text"]) == entry["match"].as_str().unwrap())
                .unwrap();
            let reference = (reference.iter())
                .find(|r| r["question_id"] == asked["question_id"])
                .unwrap();
            serde_json::json!({"match": block(1, &reference["text"]), "replies": entry["replies"]})
        })
        .collect();
    let judge = judge_server::ScriptedJudge::start(&serde_json::Value::Array(replies));
    let suite = dir.path().join("suite");
    let target = fixtures().join("llava-target").display().to_string();
    let out = bench(&[
        "suite",
        "--data",
        &root.display().to_string(),
        "--only",
        name,
        "--target",
        &target,
        "--methods",
        "greedy",
        "--judge-url",
        &judge.url,
        "--judge-model",
        "gpt-4-0314",
        "--out",
        &suite.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(suite.join("suite.json")).unwrap()).unwrap();
    assert_eq!(json["judge"], "gpt-4-0314");
    let (bench_name, outcome) = (&json["benchmarks"][0][0], &json["benchmarks"][0][1]);
    assert_eq!(bench_name, name);
    assert_eq!(outcome["status"], "scored", "{outcome}");
    assert!(
        outcome["metric"]
            .as_str()
            .unwrap()
            .contains("judge gpt-4-0314"),
        "{outcome}"
    );
    assert!(outcome["values"]["greedy"].as_f64().unwrap().is_finite());
    let md = std::fs::read_to_string(suite.join("suite.md")).unwrap();
    assert!(md.contains("Judge: gpt-4-0314."), "{md}");
    // Every question was reviewed once (the scripted replies all used), each request with the
    // official system message, and the requests and replies kept.
    assert_eq!(judge.unused(), 0);
    let received = judge.received();
    assert!(received
        .iter()
        .all(|r| r.path.ends_with("/chat/completions")
            && r.authorization
                .as_deref()
                .is_none_or(|a| a.starts_with("Bearer "))
            && r.system() == Some(tita_bench::benchmarks::llava_bench::SYSTEM)));
    let judged = suite.join(name).join("judged/greedy");
    let kept: Vec<_> = walk(&judged);
    assert!(kept.len() >= 2, "{kept:?}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(walk(&path));
        } else {
            all.push(path);
        }
    }
    all
}

/// A DeepSeek-VL2 fixture model as a checkpoint directory: its config and weights (linked)
/// next to the family's tokenizer, which the fixture keeps once for all models.
fn deepseek_checkpoint(root: &std::path::Path, model: &str) -> PathBuf {
    let src = fixtures().join("deepseek_vl2");
    let dir = root.join(model);
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(src.join(model)).unwrap() {
        let f = f.unwrap().path();
        std::os::unix::fs::symlink(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    dir
}

/// `bench pope` with a DeepSeek-VL2 target: the fixture POPE split answered by greedy decoding
/// and by TITA with a DeepSeek reward, in DeepSeek's conversation format, and scored.
#[test]
fn pope_on_deepseek_vl2_with_a_deepseek_reward() {
    let tmp = tempfile::tempdir().unwrap();
    let target = deepseek_checkpoint(tmp.path(), "tiny-like");
    let reward = deepseek_checkpoint(tmp.path(), "small-like");
    let pope = fixtures().join("benchmarks/pope");
    let questions = pope.join("coco/coco_pope_random.json");
    let images = pope.join("val2014");
    let out = tmp.path().join("out");
    let run = bench(&[
        "pope",
        "--target",
        target.to_str().unwrap(),
        "--reward",
        reward.to_str().unwrap(),
        "--questions",
        questions.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--methods",
        "greedy,tita:0.5",
        "--max-new-tokens",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ids: Vec<serde_json::Value> = std::fs::read_to_string(&questions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question_id"].clone())
        .collect();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["config"]["template"], "deepseek_vl2", "{results}");
    for method in ["greedy", "tita-0.5"] {
        let metrics = &results["sets"]["random"][method];
        assert_eq!(metrics["count"], ids.len(), "{method}: {results}");
        let accuracy = metrics["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{method}: {results}");
        let answered: Vec<serde_json::Value> =
            std::fs::read_to_string(out.join("answers").join(method).join("random.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["question_id"].clone()
                })
                .collect();
        assert_eq!(answered, ids, "{method}");
    }
}
