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
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
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
    assert!(!out.exists(), "a refused run creates nothing");
    std::fs::create_dir_all(out.join("answers")).unwrap();
    refused(
        &with(&[]),
        "holds another run's files (answers); pass --resume to continue that run or --overwrite",
    );
    assert!(out.join("answers").is_dir());
}
