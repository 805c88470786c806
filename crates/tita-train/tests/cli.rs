//! The `tita-train` binary: help, and bad runs answered with the flag, its range and exit code 1,
//! before anything is written (or with another run's files left as they were).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tita-train"))
        .args(args)
        .output()
        .unwrap()
}

fn refused(args: &[&str], want: &str) {
    let out = train(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.contains(want), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn help_lists_the_commands_and_output_flags() {
    let out = train(&["dpo", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--resume", "--overwrite", "--save-total-limit", "--beta"] {
        assert!(help.contains(flag), "{flag} missing");
    }
}

#[test]
fn bad_runs_fail_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.jsonl");
    std::fs::write(
        &data,
        r#"{"image": "images/square56.png", "prompt": "Is there a cat?", "chosen": "Yes.", "rejected": "No."}"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let model = fixtures().join("llava-reward");
    let (model, data_s, out_s, images) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        fixtures().display().to_string(),
    );
    let base = [
        "dpo",
        "--model",
        model,
        "--data",
        data_s,
        "--images",
        &images,
        "--out",
        out_s,
        "--max-steps",
        "1",
    ];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    refused(
        &with(&["--beta", "-1"]),
        "invalid argument `beta`: -1 must be a finite number > 0",
    );
    refused(
        &with(&["--save-every", "0"]),
        "invalid argument `save-every`: 0 is outside [1, ∞)",
    );
    refused(
        &with(&["--lr", "NaN"]),
        "invalid argument `lr`: NaN must be a finite number > 0",
    );
    refused(
        &with(&["--save-total-limit", "0"]),
        "invalid argument `save-total-limit`: 0 is outside [1, ∞)",
    );
    assert!(!out.exists(), "a refused run creates nothing");

    // Another run's files: refused, and left as they were.
    std::fs::create_dir_all(out.join("checkpoint-7")).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{\"step\": 1}\n").unwrap();
    let before = listing(&out);
    refused(
        &with(&[]),
        "holds another run's files (checkpoint-7, metrics.jsonl)",
    );
    assert_eq!(listing(&out), before);
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap(),
        "{\"step\": 1}\n"
    );

    // Pair synthesis into an existing file, likewise.
    let questions = dir.path().join("q.jsonl");
    std::fs::write(
        &questions,
        r#"{"image": "images/square56.png", "prompt": "What is this?"}"#,
    )
    .unwrap();
    let target = fixtures().join("llava-target");
    refused(
        &[
            "pairs",
            "--model",
            target.to_str().unwrap(),
            "--questions",
            questions.to_str().unwrap(),
            "--images",
            &images,
            "--out",
            data_s,
        ],
        "pairs.jsonl: exists (another run's output); pass --resume",
    );
    assert!(std::fs::read_to_string(&data)
        .unwrap()
        .contains("Is there a cat?"));
}
