//! Server settings that would make every request fail are refused when it starts, naming the
//! flag, before it listens.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
        .display()
        .to_string()
}

/// Starts the server with `extra` and expects it to exit with `want` in its message; one that
/// is still running after a minute (it started serving) is killed and fails the test.
fn refused(extra: &[&str], want: &str) {
    let target = fixture("llava-target");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tita-serve"))
        .args(["--model", &target, "--port", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("{extra:?}: the server started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{extra:?}: {stderr}");
    assert!(stderr.contains(want), "{extra:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn settings_that_would_fail_every_request_are_refused_at_start() {
    for flag in ["--max-tokens", "--max-body-mb", "--max-prompt-tokens"] {
        refused(&[flag, "0"], "must be at least 1");
    }
    for bad in ["NaN", "-1", "0"] {
        refused(
            &["--max-image-megapixels", bad],
            "must be a finite number above 0",
        );
    }
    refused(
        &["--allow-images", "/nonexistent/images"],
        "--allow-images: /nonexistent/images is not a folder",
    );
    refused(
        &["--reference", &fixture("llava-reward-ref")],
        "a reference needs a reward model",
    );
    refused(&["--reward", &fixture("qwen2_5_vl/reward")], "family");
    refused(&["--method", "tita:0.3"], "tita-0.3 needs --reward");
    refused(
        &["--method", "beam"],
        "`beam`: expected greedy or MODE[:VALUE]",
    );
}
