//! tita-serve: an OpenAI-compatible HTTP API over loaded models, with TITA as an extra body
//! field. `GET /v1/models`, `POST /v1/chat/completions` (OpenAI's message format, `image_url`
//! parts as `data:` URLs or files under an allowed folder, `stream: true` as server-sent
//! events ending with `data: [DONE]`), `POST /v1/completions` (a raw prompt, tokenised as
//! given), `GET /metrics` (Prometheus text) and `GET /health`.
//!
//! The models live on one worker thread; HTTP handling, image decoding, tokenising and the
//! limit checks run beside it (in parallel, on tokio's blocking pool), so a huge request never
//! holds up a small one. Requests that queued up while the worker was busy are decoded
//! together as one batch when their settings are the same (sampled ones too: each row draws
//! as it would alone), the rest in turn.
//! Admitted requests not yet decoding are bounded (`max_queue`; past it, 429 with
//! `Retry-After`). A client that goes away stops receiving at once and its generation stops at
//! the next token (a batch stops when all of its clients have gone).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use burn::tensor::backend::Backend;
use http_body_util::BodyExt as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tita_core::template::{Message, Part};
use tita_decode::{
    guidance::GuideModel, Cancel, FinishReason, Fusion, GenerationConfig, Generator, ImageInput,
    Knobs, Pipeline, Prompt, Request, SamplingConfig, Tita, TitaConfig, TokenExplanation,
};
use tokio::sync::mpsc as tmpsc;

/// Limits and access settings of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name `/v1/models` lists and responses carry.
    pub model_name: String,
    /// Bearer key every request must carry, if set.
    pub api_key: Option<String>,
    /// Folder whose files `image_url` may name (file paths are refused without it).
    pub allow_images: Option<PathBuf>,
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Largest image in pixels (width · height; 400 above).
    pub max_image_pixels: u64,
    /// Longest prompt in tokens, image tokens included (400 above).
    pub max_prompt_tokens: usize,
    /// `max_tokens` when a request gives none, and the most one may ask for.
    pub max_tokens: usize,
    /// Decoding methods served by name (None: plain decoding), for clients that send only
    /// OpenAI's fields (lmms-eval): `{model_name}+{label}` selects one, and the first is what
    /// `model_name` (or no `model`) gets. A request's `tita` field overrides the choice.
    /// Empty: plain decoding unless the request has a `tita` field.
    pub methods: Vec<Option<Fusion>>,
    /// Requests admitted and not yet decoding (being prepared or waiting for the model);
    /// one more is answered 429 with `Retry-After`.
    pub max_queue: usize,
    /// A connection whose request headers are not complete by then is closed.
    pub header_timeout: Duration,
    /// A request whose body has not fully arrived by then is answered 408.
    pub body_timeout: Duration,
}

impl ServerConfig {
    /// The names `/v1/models` lists: the model's own name, then one per served method.
    pub fn served_names(&self) -> Vec<String> {
        std::iter::once(self.model_name.clone())
            .chain(self.methods.iter().map(|m| self.method_name(m)))
            .collect()
    }

    fn method_name(&self, method: &Option<Fusion>) -> String {
        let label = method.as_ref().map_or("greedy".into(), Fusion::label);
        format!("{}+{label}", self.model_name)
    }

    /// The served method a request's `model` names.
    fn method_of(&self, model: Option<&str>) -> Result<Option<&Fusion>, ApiError> {
        match model {
            None => Ok(self.methods.first().and_then(Option::as_ref)),
            Some(m) if m == self.model_name => Ok(self.methods.first().and_then(Option::as_ref)),
            Some(m) => (self.methods.iter())
                .find(|f| self.method_name(f) == m)
                .map(Option::as_ref)
                .ok_or_else(|| ApiError {
                    status: StatusCode::NOT_FOUND,
                    message: format!(
                        "model `{m}` is not served here (this server has {})",
                        self.served_names()
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    param: Some("model"),
                }),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_name: "tita".into(),
            api_key: None,
            allow_images: None,
            max_body_bytes: 20 << 20,
            max_image_pixels: 4096 * 4096,
            max_prompt_tokens: 4096,
            max_tokens: 512,
            methods: Vec::new(),
            max_queue: 64,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// The loaded models: the target, and the reward / reference models TITA modes use.
pub struct Models<B: Backend> {
    pub target: Pipeline<B>,
    pub reward: Option<Pipeline<B>>,
    pub reference: Option<Pipeline<B>>,
}

impl<B: Backend> Models<B> {
    /// Refuses guide models that would fail every `tita` request: a reference without a reward
    /// model, a guide of another family or vocabulary than the target.
    pub fn check(&self) -> tita_decode::Result<()> {
        self.check_methods(&[])
    }

    /// [`Models::check`], and that every served method has the models it reads.
    pub fn check_methods(&self, methods: &[Option<Fusion>]) -> tita_decode::Result<()> {
        for fusion in methods.iter().flatten() {
            for guide in fusion.guides() {
                let (given, flag) = match guide.model {
                    GuideModel::Target => (true, ""),
                    GuideModel::Reward => (self.reward.is_some(), "reward"),
                    GuideModel::Reference => (self.reference.is_some(), "reference"),
                };
                if !given {
                    return Err(tita_decode::Error::argument(
                        "method",
                        format!("{} needs --{flag}", fusion.label()),
                    ));
                }
            }
        }
        if self.reference.is_some() && self.reward.is_none() {
            return Err(tita_decode::Error::argument(
                "reference",
                "is the reward model's DPO reference; a reference needs a reward model",
            ));
        }
        for (role, guide) in [("reward", &self.reward), ("reference", &self.reference)] {
            if let Some(guide) = guide {
                tita_decode::tita::check_guide(role, &self.target, guide)?;
            }
        }
        Ok(())
    }
}

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }

    fn bad(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
        }
    }

    fn body(&self) -> Value {
        let (kind, code) = match self.status.as_u16() {
            401 => ("authentication_error", None),
            408 | 413 | 400 | 404 | 422 => ("invalid_request_error", None),
            // OpenAI's shape for a rate limit.
            429 => ("requests", Some("rate_limit_exceeded")),
            _ => ("server_error", None),
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": code}})
    }
}

/// Seconds a client refused for a full queue is told to wait.
const RETRY_AFTER_S: u64 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        response
    }
}

/// A library error as an answer: the caller's mistakes are 400, the rest 500.
fn from_library(e: tita_core::Error) -> ApiError {
    use tita_core::Error as E;
    match &e {
        E::Argument { .. } | E::ContextOverflow { .. } | E::Image { .. } | E::Template { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
        }
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The body of `POST /v1/chat/completions` (fields OpenAI defines that are not listed are
/// refused, so nothing is silently ignored).
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object with `messages` and OpenAI's chat completion fields"
)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<Value>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tita: Option<TitaOptions>,
    /// Per-token log-probabilities of the distribution each token was chosen from (the fused
    /// one under TITA), before temperature.
    #[serde(default)]
    pub logprobs: bool,
    /// How many alternatives per token with `logprobs` (0 to 20).
    #[serde(default)]
    pub top_logprobs: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    pub content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, or a list of {\"type\": \"text\", \"text\"} and {\"type\": \"image_url\", \"image_url\": {\"url\"}} parts"
)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default)]
    pub detail: Option<String>,
}

/// The `tita` body field: `mode` (default `interpolate`), `explain`, and the mode's knobs by
/// name (`lambda`, `alpha`, `tau`, `m3id_lambda`, `objects`, …; see `Fusion::knobs_of`). A knob
/// the mode does not take is refused.
#[derive(Debug, Deserialize)]
pub struct TitaOptions {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub explain: bool,
    #[serde(flatten)]
    pub knobs: serde_json::Map<String, Value>,
}

impl TitaOptions {
    fn config(&self) -> Result<TitaConfig, ApiError> {
        if matches!(self.knobs.get("objects"), Some(Value::String(_))) {
            // A path would make the server read its own files for a client.
            return Err(ApiError::bad(
                "tita.objects",
                "give the detected objects as a list of names",
            ));
        }
        let mode = self.mode.as_deref().unwrap_or("interpolate");
        let fusion = Fusion::from_knobs(mode, &Knobs::from_map(self.knobs.clone()))
            .map_err(|e| ApiError::bad("tita", e.to_string()))?;
        Ok(TitaConfig {
            fusion,
            explain: self.explain,
        })
    }
}

/// The body of `POST /v1/completions`: a prompt tokenised as given (no chat template), with
/// the settings chat requests take (log-probs excepted: the legacy shape is not served).
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object with `prompt` and OpenAI's completion fields"
)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: CompletionPrompt,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<Value>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tita: Option<TitaOptions>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string, or a list of one string")]
pub enum CompletionPrompt {
    One(String),
    Many(Vec<String>),
}

impl CompletionRequest {
    /// The prompt, and the request's settings in a chat request's terms.
    fn split(self) -> Result<(String, ChatRequest), ApiError> {
        let prompt = match self.prompt {
            CompletionPrompt::One(p) => p,
            CompletionPrompt::Many(mut v) if v.len() == 1 => v.remove(0),
            CompletionPrompt::Many(_) => {
                return Err(ApiError::bad(
                    "prompt",
                    "one prompt per request is supported",
                ))
            }
        };
        let settings = ChatRequest {
            model: self.model,
            messages: Vec::new(),
            max_tokens: self.max_tokens,
            max_completion_tokens: None,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop: self.stop,
            n: self.n,
            stream: self.stream,
            stream_options: self.stream_options,
            user: self.user,
            tita: self.tita,
            logprobs: false,
            top_logprobs: None,
        };
        Ok((prompt, settings))
    }
}

/// One queued generation: what to run and where its events go.
struct Job {
    request: Request,
    /// The request's model inputs, made off the worker.
    prompt: Prompt,
    generation: GenerationConfig,
    tita: Option<TitaConfig>,
    /// `Some(top)` when the client asked for log-probabilities.
    logprobs: Option<usize>,
    events: tmpsc::UnboundedSender<JobEvent>,
    /// The request's place in the queue, given up when it starts decoding.
    slot: Option<Slot>,
}

enum JobEvent {
    /// A token: the text it added and, when asked for, its log-probability entry.
    Delta(String, Option<Value>),
    Done(Finished),
    Failed(ApiError),
}

struct Finished {
    finish_reason: FinishReason,
    prompt_tokens: usize,
    completion_tokens: usize,
    explain: Vec<TokenExplanation>,
}

/// Upper bounds (seconds) of the latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Per bucket of [`LATENCY_BUCKETS`], the observations up to its bound (not cumulative).
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| seconds <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Counts behind `/metrics` and `/health`.
#[derive(Debug, Default)]
struct Metrics {
    completed: AtomicUsize,
    cancelled: AtomicUsize,
    failed: AtomicUsize,
    /// Most requests decoded together so far.
    largest_batch: AtomicUsize,
    /// Requests in the batch decoding now.
    batch_size: AtomicUsize,
    /// Requests admitted and not yet decoding.
    queued: AtomicUsize,
    /// Requests refused because the queue was full.
    queue_full: AtomicUsize,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// Answers by endpoint and status.
    responses: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Seconds from arrival to the last token, by method.
    latency: Mutex<BTreeMap<String, Histogram>>,
}

impl Metrics {
    fn count_response(&self, endpoint: &'static str, status: StatusCode) {
        let mut r = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry((endpoint, status.as_u16())).or_default() += 1;
    }

    fn observe_latency(&self, method: &str, seconds: f64) {
        let mut l = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        l.entry(method.to_string()).or_default().observe(seconds);
    }

    /// The Prometheus text exposition of every count.
    fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let load = |a: &AtomicUsize| a.load(Ordering::Relaxed).to_string();
        metric(
            "tita_generations_completed_total",
            "counter",
            "Generations delivered in full.",
            load(&self.completed),
        );
        metric(
            "tita_generations_cancelled_total",
            "counter",
            "Generations stopped because their client left.",
            load(&self.cancelled),
        );
        metric(
            "tita_generations_failed_total",
            "counter",
            "Generations refused or failed on the worker.",
            load(&self.failed),
        );
        metric(
            "tita_queue_depth",
            "gauge",
            "Requests admitted and not yet decoding.",
            load(&self.queued),
        );
        metric(
            "tita_queue_full_total",
            "counter",
            "Requests answered 429 because the queue was full.",
            load(&self.queue_full),
        );
        metric(
            "tita_batch_size",
            "gauge",
            "Requests in the batch decoding now.",
            load(&self.batch_size),
        );
        metric(
            "tita_batch_size_max",
            "gauge",
            "Most requests decoded together so far.",
            load(&self.largest_batch),
        );
        metric(
            "tita_prompt_tokens_total",
            "counter",
            "Prompt tokens of decoded requests (image tokens included).",
            self.prompt_tokens.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "tita_completion_tokens_total",
            "counter",
            "Tokens generated.",
            self.completion_tokens.load(Ordering::Relaxed).to_string(),
        );
        let name = "tita_http_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} Answered requests by endpoint and status.\n# TYPE {name} counter"
        );
        for ((endpoint, status), n) in self
            .responses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "{name}{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let name = "tita_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Seconds from a request's arrival to its last token, by decoding method.\n# TYPE {name} histogram"
        );
        for (method, h) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{method=\"{method}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{method=\"{method}\",le=\"+Inf\"}} {}\n{name}_sum{{method=\"{method}\"}} {}\n{name}_count{{method=\"{method}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        out
    }
}

/// A request's place in the bounded queue; given back when it is dropped (decoding started,
/// or the request was refused or abandoned before).
struct Slot(Arc<Metrics>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Makes a request's model inputs (template, tokens, image preprocessing) off the worker.
type Inputs = Arc<dyn Fn(&Request) -> tita_core::Result<Prompt> + Send + Sync>;

/// Shared state of the HTTP handlers.
struct AppState {
    config: ServerConfig,
    jobs: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    inputs: Inputs,
    /// The most characters one token of the target's vocabulary stands for: a prompt of `c`
    /// characters is at least `c / (max_token_chars · NORMALIZER_SLACK)` tokens long.
    max_token_chars: usize,
}

/// How many characters a tokenizer's normaliser may merge into one (NFC composes a Hangul
/// syllable from three jamo): the cheap token bound divides by it so it never over-counts.
const NORMALIZER_SLACK: usize = 4;

/// Most requests decoded together in one batch.
const MAX_BATCH: usize = 8;

/// Starts the worker thread that owns `models` and returns the API's router. Serve it with
/// [`serve`] (header read timeout, graceful shutdown).
pub fn router<B: Backend>(models: Models<B>, config: ServerConfig) -> Router {
    let models = Arc::new(models);
    let (jobs, queue) = mpsc::channel::<Job>();
    let metrics = Arc::new(Metrics::default());
    let counts = metrics.clone();
    let worker_models = models.clone();
    std::thread::Builder::new()
        .name("tita-worker".into())
        .spawn(move || worker(&worker_models, queue, &counts))
        .expect("spawning the worker thread");
    let max_token_chars = (models.target.tokenizer.tokens().iter().flatten())
        .map(|t| t.chars().count())
        .max()
        .unwrap_or(1)
        .max(1);
    let inputs: Inputs = Arc::new(move |request: &Request| models.target.request_prompt(request));
    let state = Arc::new(AppState {
        config,
        jobs,
        metrics,
        inputs,
        max_token_chars,
    });
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .with_state(state)
}

/// Serves `app` on `listener` (HTTP/1.1) until `shutdown` completes. A connection whose
/// request headers are not complete within `header_timeout` is closed. At shutdown the
/// listener closes at once (new connections are refused) and the answers in flight, streams
/// included, run to their end before this returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: wait, and keep serving the others.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stopped = stopped.clone();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout);
        connections.spawn(async move {
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped.changed() => {
                    // Finish the answer in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Requests decode together when everything but their prompts is the same. Each row's tokens
/// are what it gets alone: greedy rows by the batch's row independence, sampled rows also
/// because each row draws from its own generator seeded with the (shared) seed, one number
/// per token of its own (see `decode_loop`), so a row's draws are its solo draws.
fn batch_key(job: &Job) -> (GenerationConfig, Option<TitaConfig>, bool) {
    let g = GenerationConfig {
        cancel: None,
        ..job.generation.clone()
    };
    (g, job.tita.clone(), job.request.image.is_some())
}

/// The worker: takes what has queued up (at most [`MAX_BATCH`]), runs compatible requests as
/// one batch and the rest in turn, in arrival order.
fn worker<B: Backend>(models: &Models<B>, queue: mpsc::Receiver<Job>, counts: &Metrics) {
    while let Ok(first) = queue.recv() {
        let mut pending = vec![first];
        while pending.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => pending.push(job),
                Err(_) => break,
            }
        }
        while !pending.is_empty() {
            let key = batch_key(&pending[0]);
            let (group, rest): (Vec<Job>, Vec<Job>) =
                pending.into_iter().partition(|j| batch_key(j) == key);
            pending = rest;
            let senders: Vec<_> = group.iter().map(|j| j.events.clone()).collect();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_batch(models, group, counts)
            }));
            counts.batch_size.store(0, Ordering::Relaxed);
            if result.is_err() {
                for tx in senders {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(JobEvent::Failed(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the generation failed unexpectedly",
                    )));
                }
            }
        }
    }
}

/// Runs one batch of compatible jobs; each row's tokens go to its client as they are chosen.
/// A row whose client left is no longer sent; the batch stops when every client has left.
fn run_batch<B: Backend>(models: &Models<B>, mut ready: Vec<Job>, counts: &Metrics) {
    let target = &models.target;
    let fail = |job: &Job, e: ApiError| {
        counts.failed.fetch_add(1, Ordering::Relaxed);
        let _ = job.events.send(JobEvent::Failed(e));
    };
    // Decoding starts: these leave the queue.
    ready.iter_mut().for_each(|j| drop(j.slot.take()));
    let Some(first) = ready.first() else {
        return;
    };
    counts.batch_size.store(ready.len(), Ordering::Relaxed);
    counts
        .largest_batch
        .fetch_max(ready.len(), Ordering::Relaxed);
    let cancel = Cancel::new();
    let generation = GenerationConfig {
        cancel: Some(cancel.clone()),
        // Log-probs need each step's scores on the host; otherwise only the ids come back.
        scores_on_host: ready.iter().any(|job| job.logprobs.is_some()),
        ..first.generation.clone()
    };
    let tita = first.tita.clone();
    let mut open = vec![true; ready.len()];
    let tokenizer = &target.tokenizer;
    let mut on_token = |ev: tita_decode::TokenEvent| {
        let job = &ready[ev.row];
        let logprob = job
            .logprobs
            .zip(ev.scores)
            .map(|(top, scores)| logprob_entry(tokenizer, scores, ev.token, top));
        let delta = JobEvent::Delta(ev.text_delta.to_string(), logprob);
        if open[ev.row] && job.events.send(delta).is_err() {
            open[ev.row] = false;
            if open.iter().all(|o| !o) {
                cancel.cancel();
            }
        }
    };
    let outcome: Result<Vec<(tita_decode::Generation, Vec<TokenExplanation>)>, ApiError> =
        match tita {
            None => {
                let prompts: Vec<_> = ready.iter().map(|j| &j.prompt).collect();
                Generator::new(target, generation)
                    .generate_batch_streaming(&prompts, &mut on_token)
                    .map(|gs| gs.into_iter().map(|g| (g, Vec::new())).collect())
                    .map_err(from_library)
            }
            Some(config) => Tita::new(
                target,
                models.reward.as_ref(),
                models.reference.as_ref(),
                config,
                generation,
            )
            .map_err(|e| ApiError::bad("tita", e.to_string()))
            .and_then(|tita| {
                let requests: Vec<Request> = ready.iter().map(|j| j.request.clone()).collect();
                tita.generate_batch_streaming(&requests, &mut on_token)
                    .map(|gs| gs.into_iter().map(|g| (g.generation, g.explain)).collect())
                    .map_err(from_library)
            }),
        };
    match outcome {
        Err(e) => {
            for job in &ready {
                fail(job, e.clone());
            }
        }
        Ok(rows) => {
            for (job, (generation, explain)) in ready.iter().zip(rows) {
                counts
                    .prompt_tokens
                    .fetch_add(generation.prompt_tokens as u64, Ordering::Relaxed);
                counts
                    .completion_tokens
                    .fetch_add(generation.generated_tokens as u64, Ordering::Relaxed);
                let delivered = job
                    .events
                    .send(JobEvent::Done(Finished {
                        finish_reason: generation.finish_reason,
                        prompt_tokens: generation.prompt_tokens,
                        completion_tokens: generation.generated_tokens,
                        explain,
                    }))
                    .is_ok();
                let count = if delivered && generation.finish_reason != FinishReason::Cancelled {
                    &counts.completed
                } else {
                    &counts.cancelled
                };
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn check_key(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.config.api_key else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim_start());
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key (send `Authorization: Bearer KEY`)",
        ))
    }
}

/// Liveness and counts of finished generations (not part of OpenAI's API).
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let s = &state.metrics;
    Json(json!({
        "status": "ok",
        "completed": s.completed.load(Ordering::Relaxed),
        "cancelled": s.cancelled.load(Ordering::Relaxed),
        "failed": s.failed.load(Ordering::Relaxed),
        "largest_batch": s.largest_batch.load(Ordering::Relaxed),
        "queued": s.queued.load(Ordering::Relaxed),
    }))
    .into_response()
}

/// Counts in Prometheus' text format (not part of OpenAI's API; no key, as `/health`).
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn list_models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_key(&state, &headers) {
        return e.into_response();
    }
    Json(json!({
        "object": "list",
        "data": state.config.served_names().iter()
            .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "tita"}))
            .collect::<Vec<_>>(),
    }))
    .into_response()
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::MaxNewTokens | FinishReason::Context => "length",
        FinishReason::Eos | FinishReason::StopString | FinishReason::Cancelled => "stop",
    }
}

/// The two generation endpoints and the shapes of their answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(state, headers, body, Endpoint::Chat).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(state, headers, body, Endpoint::Completions).await
}

async fn answer(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Response {
    let response = match generate(&state, headers, body, endpoint).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    state
        .metrics
        .count_response(endpoint.path(), response.status());
    response
}

/// Reads a body within the size limit and the body read timeout. A body over the limit
/// is read to its end (within the timeout) and dropped before the 413, so that a client that
/// sends all of it before reading the answer gets the answer, not a broken pipe.
async fn read_body(config: &ServerConfig, body: Body) -> Result<Vec<u8>, ApiError> {
    let limit = config.max_body_bytes;
    let over = std::sync::atomic::AtomicBool::new(false);
    let read = async {
        let mut body = body;
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            })?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            if bytes.len() + data.len() > limit {
                over.store(true, Ordering::Relaxed);
                bytes = Vec::new();
            } else if !over.load(Ordering::Relaxed) {
                bytes.extend_from_slice(data);
            }
        }
        Ok::<_, ApiError>(bytes)
    };
    let read = tokio::time::timeout(config.body_timeout, read).await;
    if over.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than this server's limit of {limit} bytes"),
        ));
    }
    read.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} s",
                config.body_timeout.as_secs_f64()
            ),
        )
    })?
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Failed to deserialize the JSON body into the target type: {e}"),
        )
    })
}

/// Takes a place in the queue, or answers 429 when it is full.
fn admit(state: &AppState) -> Result<Slot, ApiError> {
    let m = &state.metrics;
    let before = m.queued.fetch_add(1, Ordering::Relaxed);
    let slot = Slot(m.clone());
    if before >= state.config.max_queue {
        m.queue_full.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} requests are waiting, as many as this server queues; retry after {RETRY_AFTER_S} s",
                state.config.max_queue
            ),
        ));
    }
    Ok(slot)
}

async fn generate(
    state: &Arc<AppState>,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    // The body first, even for a request refused for its key: a client that sends all of it
    // before reading gets the answer, not a broken pipe.
    let bytes = read_body(&state.config, body).await?;
    check_key(state, &headers)?;
    let (raw, req) = match endpoint {
        Endpoint::Chat => (None, parse_json::<ChatRequest>(&bytes)?),
        Endpoint::Completions => {
            let (prompt, req) = parse_json::<CompletionRequest>(&bytes)?.split()?;
            (Some(prompt), req)
        }
    };
    drop(bytes);
    let slot = admit(state)?;
    let stream = req.stream;
    let with_logprobs = req.logprobs;
    let prep = state.clone();
    let (model, request, prompt, generation, tita, logprobs) =
        tokio::task::spawn_blocking(move || prepare(req, raw, &prep))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "request preparation failed",
                )
            })??;
    let method = tita
        .as_ref()
        .map_or_else(|| "greedy".to_string(), |t| t.fusion.label());
    let (tx, mut rx) = tmpsc::unbounded_channel();
    state
        .jobs
        .send(Job {
            request,
            prompt,
            generation,
            tita,
            logprobs,
            events: tx,
            slot: Some(slot),
        })
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
        })?;
    let id = match endpoint {
        Endpoint::Chat => format!("chatcmpl-{:x}", rand_id()),
        Endpoint::Completions => format!("cmpl-{:x}", rand_id()),
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let metrics = state.metrics.clone();
    let observe = move || metrics.observe_latency(&method, arrived.elapsed().as_secs_f64());
    if !stream {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                JobEvent::Delta(d, lp) => {
                    text.push_str(&d);
                    logprobs.extend(lp);
                }
                JobEvent::Failed(e) => return Err(e),
                JobEvent::Done(f) => {
                    observe();
                    let finish = finish_reason(f.finish_reason);
                    let mut body = match endpoint {
                        Endpoint::Chat => json!({
                            "id": id, "object": "chat.completion", "created": created, "model": model,
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": finish,
                                         "logprobs": if with_logprobs { json!({"content": logprobs}) } else { Value::Null }}],
                            "usage": usage(&f),
                        }),
                        Endpoint::Completions => json!({
                            "id": id, "object": "text_completion", "created": created, "model": model,
                            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": null}],
                            "usage": usage(&f),
                        }),
                    };
                    if !f.explain.is_empty() {
                        body["tita_explain"] = json!(f.explain);
                    }
                    return Ok(Json(body).into_response());
                }
            }
        }
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the generation ended without an answer",
        ));
    }
    // The first event decides the status: a request the worker refuses is answered 400, not
    // an event stream that carries an error.
    let first = rx.recv().await;
    if let Some(JobEvent::Failed(e)) = first {
        return Err(e);
    }
    // One chunk: the piece (the role, text, or the finish reason), a token's log-prob entry,
    // and top-level extras (`usage`, `tita_explain`) on the last one. Completions have no role.
    let chunk = move |piece: Piece, logprob: Option<Value>, extra: Vec<(&str, Value)>| {
        let finish = match piece {
            Piece::Finish(reason) => Some(reason),
            _ => None,
        };
        let mut c = match endpoint {
            Endpoint::Chat => {
                let logprobs = logprob.map_or(Value::Null, |v| json!({"content": [v]}));
                let delta = match piece {
                    Piece::Role => json!({"role": "assistant", "content": ""}),
                    Piece::Text(t) => json!({"content": t}),
                    Piece::Finish(_) => json!({}),
                };
                json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
                })
            }
            Endpoint::Completions => {
                let text = match piece {
                    Piece::Role => return None,
                    Piece::Text(t) => t,
                    Piece::Finish(_) => "",
                };
                json!({
                    "id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": null}],
                })
            }
        };
        for (k, v) in extra {
            c[k] = v;
        }
        Some(Event::default().data(c.to_string()))
    };
    let events = async_stream(first, rx, chunk, observe);
    Ok(Sse::new(events).into_response())
}

/// What one streamed chunk carries.
#[derive(Debug, Clone, Copy)]
enum Piece<'a> {
    Role,
    Text(&'a str),
    Finish(&'static str),
}

/// The event stream of one streamed answer: (chat) a role chunk, content chunks, a final chunk
/// with the finish reason and usage, then `[DONE]`.
fn async_stream(
    first: Option<JobEvent>,
    mut rx: tmpsc::UnboundedReceiver<JobEvent>,
    chunk: impl Fn(Piece, Option<Value>, Vec<(&str, Value)>) -> Option<Event> + Send + 'static,
    observe: impl FnOnce() + Send + 'static,
) -> impl tokio_stream::Stream<Item = Result<Event, std::convert::Infallible>> {
    let (tx, out) = tmpsc::unbounded_channel();
    tokio::spawn(async move {
        let send = |e: Option<Event>| e.is_none_or(|e| tx.send(Ok(e)).is_ok());
        if !send(chunk(Piece::Role, None, Vec::new())) {
            return;
        }
        let mut next = first;
        let mut observe = Some(observe);
        while let Some(ev) = next {
            let open = match ev {
                JobEvent::Delta(d, None) if d.is_empty() => true,
                JobEvent::Delta(d, lp) => send(chunk(Piece::Text(&d), lp, Vec::new())),
                JobEvent::Failed(e) => {
                    let _ = send(Some(Event::default().data(e.body().to_string())));
                    false
                }
                JobEvent::Done(f) => {
                    if let Some(observe) = observe.take() {
                        observe();
                    }
                    let mut extra = vec![("usage", usage(&f))];
                    if !f.explain.is_empty() {
                        extra.push(("tita_explain", json!(f.explain)));
                    }
                    let finish = Piece::Finish(finish_reason(f.finish_reason));
                    let _ = send(chunk(finish, None, extra));
                    false
                }
            };
            if !open {
                break;
            }
            next = rx.recv().await;
        }
        let _ = send(Some(Event::default().data("[DONE]")));
        // Dropping `rx` here (or earlier, when the client left) tells the worker to stop.
    });
    tokio_stream::wrappers::UnboundedReceiverStream::new(out)
}

fn usage(f: &Finished) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Checks a request and turns it into the library's terms: images decoded, the prompt
/// templated and tokenised, its length checked (a cheap bound on the characters first, so a
/// huge prompt is refused without tokenising it). Runs off the worker, in parallel with other
/// requests' preparation.
/// The served name answering, the request, its model inputs, its settings, TITA's and the
/// logprob count.
type Prepared = (
    String,
    Request,
    Prompt,
    GenerationConfig,
    Option<TitaConfig>,
    Option<usize>,
);

/// `raw`: a completion's prompt, tokenised as given (`req.messages` is then empty).
fn prepare(req: ChatRequest, raw: Option<String>, state: &AppState) -> Result<Prepared, ApiError> {
    let config = &state.config;
    let served = config.method_of(req.model.as_deref())?.cloned();
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| config.model_name.clone());
    if req.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad("n", "only n = 1 is supported"));
    }
    if raw.is_none() && req.messages.is_empty() {
        return Err(ApiError::bad("messages", "no messages"));
    }
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(config.max_tokens);
    if max_tokens == 0 || max_tokens > config.max_tokens {
        return Err(ApiError::bad(
            "max_tokens",
            format!("must be between 1 and {}", config.max_tokens),
        ));
    }
    let temperature = req.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad("temperature", "must be in [0, 2]"));
    }
    if let Some(p) = req.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad("top_p", "must be in (0, 1]"));
        }
    }
    let (param, chars) = match &raw {
        Some(text) => ("prompt", text.chars().count()),
        None => (
            "messages",
            (req.messages.iter())
                .map(|m| match &m.content {
                    Content::Text(t) => t.chars().count(),
                    Content::Parts(parts) => (parts.iter())
                        .map(|p| match p {
                            ContentPart::Text { text } => text.chars().count(),
                            ContentPart::ImageUrl { .. } => 0,
                        })
                        .sum(),
                })
                .sum(),
        ),
    };
    let per_token = state.max_token_chars * NORMALIZER_SLACK;
    let at_least = chars.div_ceil(per_token);
    if at_least > config.max_prompt_tokens {
        return Err(ApiError::bad(
            param,
            format!(
                "the prompt is at least {at_least} tokens long ({chars} characters; one token stands for at most {per_token}); this server takes at most {}",
                config.max_prompt_tokens
            ),
        ));
    }
    let mut image = None;
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ApiError::bad(
                "messages",
                format!("unknown role `{}`", m.role),
            ));
        }
        let content = match m.content {
            Content::Text(text) => vec![Part::Text { text }],
            Content::Parts(parts) => {
                let mut out = Vec::with_capacity(parts.len());
                for p in parts {
                    match p {
                        ContentPart::Text { text } => out.push(Part::Text { text }),
                        ContentPart::ImageUrl { image_url } => {
                            if image.is_some() {
                                return Err(ApiError::bad(
                                    "messages",
                                    "one image per request is supported",
                                ));
                            }
                            image = Some(load_image(&image_url.url, config)?);
                            out.push(Part::Image {});
                        }
                    }
                }
                out
            }
        };
        messages.push(Message {
            role: m.role,
            content,
        });
    }
    let stop_strings = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop_strings.iter().any(String::is_empty) {
        return Err(ApiError::bad(
            "stop",
            "an empty stop string would end every answer at once",
        ));
    }
    let generation = GenerationConfig {
        max_new_tokens: max_tokens,
        sampling: SamplingConfig {
            temperature,
            top_p: req.top_p,
            seed: req.seed.unwrap_or(0),
            ..SamplingConfig::default()
        },
        stop_strings,
        eos_token_ids: None,
        cancel: Some(Cancel::new()),
        scores_on_host: false,
    };
    let tita = match (&req.tita, served) {
        (Some(options), _) => Some(options.config()?),
        // A served method that contrasts the image answers a text-only request as plain
        // decoding: harnesses mix both kinds in one run under one model name.
        (None, Some(fusion)) if fusion.plain_for(image.is_some()) => None,
        (None, served) => served.map(|fusion| TitaConfig {
            fusion,
            explain: false,
        }),
    };
    if let Some(t) = tita
        .as_ref()
        .filter(|t| t.fusion.plain_for(image.is_some()))
    {
        // Refused here, before it could share a batch with other requests.
        return Err(ApiError::bad(
            "tita.mode",
            format!(
                "{} contrasts the image with something else; this request has no image",
                t.fusion.name()
            ),
        ));
    }
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (_, Some(k)) if k > 20 => {
            return Err(ApiError::bad("top_logprobs", "must be between 0 and 20"))
        }
        (false, Some(_)) => return Err(ApiError::bad("top_logprobs", "needs `logprobs: true`")),
        (true, k) => Some(k.unwrap_or(0)),
        (false, None) => None,
    };
    let request = match raw {
        Some(prompt) => Request {
            prompt,
            ..Request::default()
        },
        None => Request {
            prompt: String::new(),
            image,
            pad: false,
            messages: Some(messages),
            position: None,
        },
    };
    let prompt = (state.inputs)(&request).map_err(from_library)?;
    let max_prompt = config.max_prompt_tokens;
    if prompt.ids.len() > max_prompt {
        return Err(ApiError::bad(
            param,
            format!(
                "the prompt is {} tokens long (image tokens included); this server takes at most {max_prompt}",
                prompt.ids.len()
            ),
        ));
    }
    Ok((model, request, prompt, generation, tita, logprobs))
}

/// OpenAI's `logprobs.content` entry of `token` under the scores it was chosen from, with
/// the `top` most likely alternatives. Impossible tokens get -9999, as OpenAI reports them.
fn logprob_entry(
    tokenizer: &tita_core::Tokenizer,
    scores: &[f32],
    token: u32,
    top: usize,
) -> Value {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + scores.iter().map(|s| (s - max).exp()).sum::<f32>().ln();
    let entry = |id: u32| {
        let text = tokenizer.decode(&[id], false).unwrap_or_default();
        let lp = (scores[id as usize] - lse).max(-9999.0);
        json!({"token": text, "logprob": lp, "bytes": text.as_bytes()})
    };
    let mut best: Vec<u32> = (0..scores.len() as u32).collect();
    if top > 0 && top < best.len() {
        best.select_nth_unstable_by(top, |&a, &b| {
            scores[b as usize].total_cmp(&scores[a as usize])
        });
    }
    best.truncate(top);
    best.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
    let mut e = entry(token);
    e["top_logprobs"] = best.into_iter().map(entry).collect();
    e
}

/// An `image_url`: a `data:` URL, or a file under `--allow-images`; decoded and size-checked.
fn load_image(url: &str, config: &ServerConfig) -> Result<ImageInput, ApiError> {
    let bytes = if let Some(rest) = url.strip_prefix("data:") {
        let (_, b64) = rest.split_once(";base64,").ok_or_else(|| {
            ApiError::bad(
                "image_url",
                "a data: URL must be base64 (`data:image/png;base64,...`)",
            )
        })?;
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| ApiError::bad("image_url", format!("invalid base64: {e}")))?
    } else if url.starts_with("http://") || url.starts_with("https://") {
        return Err(ApiError::bad(
            "image_url",
            "this server fetches nothing from the network: send the image as a data: URL",
        ));
    } else {
        let Some(root) = &config.allow_images else {
            return Err(ApiError::bad(
                "image_url",
                "file paths are refused (start the server with --allow-images DIR)",
            ));
        };
        let path = std::path::Path::new(url.strip_prefix("file://").unwrap_or(url));
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            root.join(path)
        };
        let (root, path) = (
            root.canonicalize()
                .map_err(|e| ApiError::bad("image_url", format!("{}: {e}", root.display())))?,
            path.canonicalize()
                .map_err(|e| ApiError::bad("image_url", format!("{url}: {e}")))?,
        );
        if !path.starts_with(&root) {
            return Err(ApiError::bad(
                "image_url",
                format!("{url} is outside the allowed folder"),
            ));
        }
        std::fs::read(&path).map_err(|e| ApiError::bad("image_url", format!("{url}: {e}")))?
    };
    let img = tita_core::image::decode_rgb(&bytes, std::path::Path::new("<image_url>"))
        .map_err(|e| ApiError::bad("image_url", e.to_string()))?;
    let pixels = img.width() as u64 * img.height() as u64;
    if pixels > config.max_image_pixels {
        return Err(ApiError::bad(
            "image_url",
            format!(
                "the image has {pixels} pixels; this server takes at most {}",
                config.max_image_pixels
            ),
        ));
    }
    Ok(ImageInput::Decoded(Arc::new(img)))
}
