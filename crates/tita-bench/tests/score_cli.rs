//! `tita-bench score NAME --data DIR --answers FILE` (what `cargo xtask bench score` runs):
//! stdout is the official scorer's output, `--out` gets the files it writes, `--json` the
//! numbers; an unknown name lists the known ones.

use std::path::PathBuf;
use std::process::{Command, Output};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/benchmarks")
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tita-bench"))
        .args(args)
        .output()
        .unwrap()
}

fn expected(bench: &str, script: &str) -> String {
    let text = std::fs::read_to_string(data().join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[bench][script]["stdout"].as_str().unwrap().to_string()
}

fn score(name: &str, extra: &[&str]) -> Output {
    let dir = data().join(name);
    let answers = dir.join("answers/llava-v1.5-7b.jsonl");
    let args = [
        &["score", name, "--data", dir.to_str().unwrap()][..],
        &["--answers", answers.to_str().unwrap()],
        extra,
    ]
    .concat();
    bench(&args)
}

#[test]
fn score_prints_the_official_output() {
    for (name, script) in [("pope", "eval_pope"), ("mme", "calculation")] {
        let out = score(name, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected(name, script),
            "{name}"
        );
    }
}

#[test]
fn score_writes_the_official_files_and_prints_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = score("mme", &["--json", "--out", tmp.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(metrics["per_task"]["count"]["score"], 50.0);
    let name = "eval_tool/answers/llava-v1.5-7b/existence.txt";
    assert_eq!(
        std::fs::read(tmp.path().join(name)).unwrap(),
        std::fs::read(data().join("mme").join(name)).unwrap()
    );
}

#[test]
fn unknown_benchmarks_are_listed() {
    let out = bench(&["score", "vqav9", "--data", ".", "--answers", "a.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown benchmark `vqav9`; known: pope, mme, yesno"),
        "{stderr}"
    );
    let list = bench(&["list"]);
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout);
    for name in ["pope\t", "mme\t", "yesno\t"] {
        assert!(text.contains(name), "{text}");
    }
}
