//! A scripted OpenAI-compatible judge on 127.0.0.1: it answers `POST …/chat/completions`
//! with the fixtures' scripted replies (`judge_replies.json`: per `match`, the replies in
//! order; `{"raise": "RateLimitError"}` is an HTTP 429, any other `raise` an HTTP 500 with
//! OpenAI's error body) and records every request it got.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// One request as the server got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

impl Received {
    pub fn user(&self) -> &str {
        let messages = self.body["messages"].as_array().unwrap();
        messages.last().unwrap()["content"].as_str().unwrap()
    }

    pub fn system(&self) -> Option<&str> {
        let messages = self.body["messages"].as_array().unwrap();
        (messages.len() == 2).then(|| messages[0]["content"].as_str().unwrap())
    }
}

/// Per `match`, the replies not yet given.
type Script = Mutex<Vec<(String, VecDeque<Value>)>>;

pub struct ScriptedJudge {
    /// The API base, `http://127.0.0.1:PORT/v1`.
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Script>,
}

impl ScriptedJudge {
    /// Serves `replies` (the fixture's `judge_replies.json`) until the test ends.
    pub fn start(replies: &Value) -> Self {
        let script: Vec<(String, VecDeque<Value>)> = replies
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let queue = e["replies"].as_array().unwrap().iter().cloned().collect();
                (e["match"].as_str().unwrap().to_string(), queue)
            })
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script));
        let (r, s) = (received.clone(), script.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                serve(stream, &r, &s);
            }
        });
        ScriptedJudge {
            url,
            received,
            script,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Scripted replies nobody asked for.
    pub fn unused(&self) -> usize {
        self.script
            .lock()
            .unwrap()
            .iter()
            .map(|(_, q)| q.len())
            .sum()
    }
}

fn serve(stream: TcpStream, received: &Mutex<Vec<Received>>, script: &Script) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let (mut length, mut authorization) = (0usize, None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "authorization" => authorization = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    let request = Received {
        path,
        authorization,
        body,
    };
    let (status, reply) = answer(&request, script);
    received.lock().unwrap().push(request);
    let text = reply.to_string();
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    stream.flush().unwrap();
}

/// The scripted reply for a request: the entry whose `match` sits last in the user message
/// (MM-Vet's few-shot table holds one question's row too).
fn answer(request: &Received, script: &Script) -> (&'static str, Value) {
    let user = request.user();
    let mut script = script.lock().unwrap();
    let entry = script
        .iter_mut()
        .filter_map(|(m, q)| user.rfind(m.as_str()).map(|at| (at, q)))
        .max_by_key(|(at, _)| *at)
        .map(|(_, q)| q);
    let Some(next) = entry.and_then(|q| q.pop_front()) else {
        return (
            "500 Internal Server Error",
            json!({"error": {"message": "no scripted reply left for this prompt", "type": "test"}}),
        );
    };
    match next {
        Value::String(content) => (
            "200 OK",
            json!({
                "id": "chatcmpl-scripted",
                "object": "chat.completion",
                "created": 0,
                "model": request.body["model"],
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }],
            }),
        ),
        raise if raise["raise"] == "RateLimitError" => (
            "429 Too Many Requests",
            json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}),
        ),
        raise => (
            "500 Internal Server Error",
            json!({"error": {
                "message": raise["message"].as_str().unwrap_or("server error"),
                "type": "server_error",
            }}),
        ),
    }
}
