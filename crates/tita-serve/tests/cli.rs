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

/// SIGTERM while an answer streams: the stream runs to its final chunk (finish reason and
/// usage) and `[DONE]`, new connections are refused at once, and the server exits 0.
#[cfg(unix)]
#[test]
fn sigterm_during_a_stream_finishes_it_and_exits_cleanly() {
    use std::io::{BufRead, BufReader, Write};
    let target = fixture("llava-target");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tita-serve"))
        .args(["--model", &target, "--port", "0", "--max-tokens", "512"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the server exited"
        );
        if let Some(rest) = line.split_once(" on http://") {
            break rest.1.split_whitespace().next().unwrap().to_string();
        }
    };
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = r#"{"stream": true, "max_tokens": 512, "messages": [{"role": "user", "content": "Hello"}]}"#;
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(conn);
    let mut data = Vec::new();
    let next_data = |reader: &mut BufReader<std::net::TcpStream>| loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap() == 0 {
            return None;
        }
        if let Some(d) = l.trim_end().strip_prefix("data: ") {
            return Some(d.to_string());
        }
    };
    data.push(next_data(&mut reader).expect("a first chunk"));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The listener closes at once.
    let start = Instant::now();
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    while let Some(d) = next_data(&mut reader) {
        let done = d == "[DONE]";
        data.push(d);
        if done {
            break;
        }
    }
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let last: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("shutting down"), "{rest}");
}
