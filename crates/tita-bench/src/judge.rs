//! The judge of MM-Vet and LLaVA-Bench: any OpenAI-compatible chat-completions endpoint
//! (OpenAI, vLLM, llama.cpp's server, our own `tita-serve`), asked over HTTP(S) with a small
//! blocking client (ureq), and the record of every exchange.
//!
//! The official scripts treat a rate limit and other failures differently (MM-Vet sleeps 30 s
//! and asks again on a rate limit and stops on anything else; LLaVA-Bench sleeps 0.5 s and
//! asks again on anything), so a failed call says which it was: HTTP 429 is
//! [`JudgeError::RateLimited`], everything else [`JudgeError::Failed`]. The client makes one
//! attempt per call; retrying is the benchmark's business, as in the official code.

use std::time::Duration;

use serde_json::{json, Value};

use crate::benchmark::{Judge, JudgeRequest};

/// The environment variable the judge's API key is read from when none is given.
pub const KEY_ENV: &str = "TITA_JUDGE_KEY";

/// Said beside every judge-scored result.
pub const NOT_COMPARABLE: &str =
    "scores from different judge models (or judge versions) are not comparable";

/// A judge's answer: the reply text and the model the endpoint says answered.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeReply {
    pub content: String,
    pub model: String,
}

/// A call that got no answer.
#[derive(Debug, Clone, PartialEq)]
pub enum JudgeError {
    /// HTTP 429: the official scripts wait and ask again.
    RateLimited(String),
    /// Anything else (other HTTP statuses, network errors, a reply without a message), with
    /// the endpoint's error message where it gave one.
    Failed(String),
}

impl std::fmt::Display for JudgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JudgeError::RateLimited(m) => write!(f, "rate limited: {m}"),
            JudgeError::Failed(m) => write!(f, "{m}"),
        }
    }
}

/// An OpenAI-compatible `POST …/chat/completions` endpoint as a [`Judge`].
pub struct HttpJudge {
    endpoint: String,
    model: String,
    key: Option<String>,
    agent: ureq::Agent,
    pauses: bool,
}

impl HttpJudge {
    /// `url` is the API base (`https://api.openai.com/v1`, `http://127.0.0.1:8080/v1`), to
    /// which `/chat/completions` is appended, or the full endpoint ending in it. `key`, when
    /// given, is sent as `Authorization: Bearer KEY`.
    pub fn new(url: &str, model: &str, key: Option<String>) -> Self {
        let url = url.trim_end_matches('/');
        let endpoint = if url.ends_with("/chat/completions") {
            url.to_string()
        } else {
            format!("{url}/chat/completions")
        };
        let agent = ureq::Agent::config_builder()
            // Error statuses come back as responses, so their message can be read.
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .new_agent();
        HttpJudge {
            endpoint,
            model: model.to_string(),
            key,
            agent,
            pauses: true,
        }
    }

    /// The key given, else [`KEY_ENV`]'s value, else none (local servers need none).
    pub fn key_or_env(key: Option<String>) -> Option<String> {
        key.or_else(|| std::env::var(KEY_ENV).ok().filter(|k| !k.is_empty()))
    }

    /// Makes [`Judge::pause`] return at once (tests; the pauses are still recorded).
    pub fn without_pauses(mut self) -> Self {
        self.pauses = false;
        self
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn post(&self, body: &str) -> Result<(u16, String), JudgeError> {
        let mut request = self
            .agent
            .post(&self.endpoint)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = request
            .send(body)
            .map_err(|e| JudgeError::Failed(format!("{}: {e}", self.endpoint)))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| {
            JudgeError::Failed(format!("{}: reading the reply: {e}", self.endpoint))
        })?;
        Ok((status, text))
    }
}

impl Judge for HttpJudge {
    fn model(&self) -> &str {
        &self.model
    }

    fn complete(&self, request: &JudgeRequest) -> Result<JudgeReply, JudgeError> {
        let body = request_body(request).to_string();
        let (status, text) = self.post(&body)?;
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        if !(200..300).contains(&status) {
            // OpenAI's error body: {"error": {"message": …}}; anything else is shown as is.
            let message = parsed
                .as_ref()
                .and_then(|v| v["error"]["message"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status} from {}: {text}", self.endpoint));
            return Err(if status == 429 {
                JudgeError::RateLimited(message)
            } else {
                JudgeError::Failed(message)
            });
        }
        let reply = parsed.ok_or_else(|| {
            JudgeError::Failed(format!(
                "{}: the reply is not JSON: {}",
                self.endpoint,
                text.chars().take(200).collect::<String>()
            ))
        })?;
        parse_reply(&reply, &request.model)
            .map_err(|what| JudgeError::Failed(format!("{}: {what}", self.endpoint)))
    }

    fn pause(&self, seconds: f64) {
        if self.pauses {
            std::thread::sleep(Duration::from_secs_f64(seconds));
        }
    }
}

/// The chat-completions request body of `request`.
pub fn request_body(request: &JudgeRequest) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": request.user}));
    json!({
        "model": request.model,
        "messages": messages,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
    })
}

/// `choices[0].message.content` and `model` of a chat-completions reply (the requested model
/// when the endpoint names none). A null content (a refusal, a tool call) reads as empty, which
/// both graders then fail to parse, as they fail on Python's None.
fn parse_reply(reply: &Value, requested: &str) -> Result<JudgeReply, String> {
    let message = &reply["choices"][0]["message"];
    if !message.is_object() {
        return Err(format!(
            "the reply has no choices[0].message: {}",
            reply.to_string().chars().take(200).collect::<String>()
        ));
    }
    let content = match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => return Err(format!("choices[0].message.content is not text: {other}")),
    };
    let model = reply["model"].as_str().unwrap_or(requested).to_string();
    Ok(JudgeReply { content, model })
}

/// Every exchange with the judge in one scoring, in order: the JSONL stored next to the scores.
#[derive(Debug, Default)]
pub struct CallLog {
    lines: Vec<Value>,
}

impl CallLog {
    /// Asks `judge` and records the request (with `tag`: which question, run, attempt), the
    /// reply or the error.
    pub fn ask(
        &mut self,
        judge: &dyn Judge,
        request: &JudgeRequest,
        tag: Value,
    ) -> Result<JudgeReply, JudgeError> {
        let result = judge.complete(request);
        let mut line = json!({ "tag": tag, "request": request_body(request) });
        match &result {
            Ok(r) => line["reply"] = json!({"content": r.content, "model": r.model}),
            Err(e) => {
                let (kind, message) = match e {
                    JudgeError::RateLimited(m) => ("rate_limit", m),
                    JudgeError::Failed(m) => ("failed", m),
                };
                line["error"] = json!({"kind": kind, "message": message});
            }
        }
        self.lines.push(line);
        result
    }

    /// Waits `seconds` through the judge, recorded on the last exchange.
    pub fn pause(&mut self, judge: &dyn Judge, seconds: f64) {
        if let Some(last) = self.lines.last_mut() {
            last["pause_s"] = json!(seconds);
        }
        judge.pause(seconds);
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The record as JSONL, one exchange a line.
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut out = String::new();
        for line in &self.lines {
            out.push_str(&line.to_string());
            out.push('\n');
        }
        out.into_bytes()
    }
}

/// What a judge-scored result says about its judge (in `Scorecard::metrics`).
pub fn judge_note(judge: &dyn Judge, calls: &CallLog, log_file: &str) -> Value {
    json!({
        "model": judge.model(),
        "calls": calls.len(),
        "calls_file": log_file,
        "note": NOT_COMPARABLE,
    })
}

/// A file name part from a model name (`org/model` → `org_model`).
pub fn file_part(name: &str) -> String {
    name.chars()
        .map(|c| if c == '/' || c == '\\' { '_' } else { c })
        .collect()
}
