//! tita-serve: an OpenAI-compatible HTTP API over loaded models, with TITA as an extra body
//! field. `GET /v1/models`, `POST /v1/chat/completions` (OpenAI's message format, `image_url`
//! parts as `data:` URLs or files under an allowed folder, `stream: true` as server-sent
//! events ending with `data: [DONE]`).
//!
//! The models live on one worker thread; HTTP handling, image decoding and validation run on
//! tokio beside it. Requests that queued up while the worker was busy are decoded together as
//! one batch when their settings allow (greedy, same settings), the rest in turn. A client that
//! goes away stops receiving at once and its generation stops at the next token (a batch
//! stops when all of its clients have gone).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use burn::tensor::backend::Backend;
use serde::Deserialize;
use serde_json::{json, Value};
use tita_core::template::{Message, Part};
use tita_decode::{
    guidance::GuideModel, Cancel, FinishReason, Fusion, GenerationConfig, Generator, ImageInput,
    Knobs, Pipeline, Request, SamplingConfig, Tita, TitaConfig, TokenExplanation,
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
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            413 | 400 | 404 | 422 => "invalid_request_error",
            _ => "server_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": null}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
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

/// One queued generation: what to run and where its events go.
struct Job {
    request: Request,
    generation: GenerationConfig,
    tita: Option<TitaConfig>,
    /// `Some(top)` when the client asked for log-probabilities.
    logprobs: Option<usize>,
    events: tmpsc::UnboundedSender<JobEvent>,
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

/// Counts of finished generations (`GET /health`).
#[derive(Debug, Default)]
struct Stats {
    completed: AtomicUsize,
    cancelled: AtomicUsize,
    failed: AtomicUsize,
    /// Most requests decoded together so far.
    largest_batch: AtomicUsize,
}

/// Shared state of the HTTP handlers.
struct AppState {
    config: ServerConfig,
    jobs: mpsc::Sender<Job>,
    stats: Arc<Stats>,
}

/// Most requests decoded together in one batch.
const MAX_BATCH: usize = 8;

/// Starts the worker thread that owns `models` and returns the API's router.
pub fn router<B: Backend>(models: Models<B>, config: ServerConfig) -> Router {
    let (jobs, queue) = mpsc::channel::<Job>();
    let max_prompt = config.max_prompt_tokens;
    let stats = Arc::new(Stats::default());
    let counts = stats.clone();
    std::thread::Builder::new()
        .name("tita-worker".into())
        .spawn(move || worker(&models, queue, max_prompt, &counts))
        .expect("spawning the worker thread");
    let limit = config.max_body_bytes;
    let state = Arc::new(AppState {
        config,
        jobs,
        stats,
    });
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Requests decode together when everything but their prompts is the same, and greedy (so
/// each row's tokens are what it gets alone).
fn batch_key(job: &Job) -> Option<(GenerationConfig, Option<TitaConfig>, bool)> {
    let g = GenerationConfig {
        cancel: None,
        ..job.generation.clone()
    };
    (g.sampling.temperature == 0.0).then(|| (g, job.tita.clone(), job.request.image.is_some()))
}

/// The worker: takes what has queued up (at most [`MAX_BATCH`]), runs compatible requests as
/// one batch and the rest in turn, in arrival order.
fn worker<B: Backend>(
    models: &Models<B>,
    queue: mpsc::Receiver<Job>,
    max_prompt: usize,
    counts: &Stats,
) {
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
            let (group, rest): (Vec<Job>, Vec<Job>) = match key {
                None => {
                    let mut it = pending.into_iter();
                    (it.next().into_iter().collect(), it.collect())
                }
                Some(key) => pending
                    .into_iter()
                    .partition(|j| batch_key(j).as_ref() == Some(&key)),
            };
            pending = rest;
            let senders: Vec<_> = group.iter().map(|j| j.events.clone()).collect();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_batch(models, group, max_prompt, counts)
            }));
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
fn run_batch<B: Backend>(models: &Models<B>, jobs: Vec<Job>, max_prompt: usize, counts: &Stats) {
    let target = &models.target;
    let fail = |job: &Job, e: ApiError| {
        counts.failed.fetch_add(1, Ordering::Relaxed);
        let _ = job.events.send(JobEvent::Failed(e));
    };
    let mut ready = Vec::with_capacity(jobs.len());
    for job in jobs {
        let checked = target
            .request_prompt(&job.request)
            .map_err(from_library)
            .and_then(|prompt| {
                if prompt.ids.len() > max_prompt {
                    Err(ApiError::bad(
                        "messages",
                        format!(
                            "the prompt is {} tokens long (image tokens included); this server takes at most {max_prompt}",
                            prompt.ids.len()
                        ),
                    ))
                } else {
                    Ok(prompt)
                }
            });
        match checked {
            Ok(prompt) => ready.push((job, prompt)),
            Err(e) => fail(&job, e),
        }
    }
    let Some((first, _)) = ready.first() else {
        return;
    };
    counts
        .largest_batch
        .fetch_max(ready.len(), Ordering::Relaxed);
    let cancel = Cancel::new();
    let generation = GenerationConfig {
        cancel: Some(cancel.clone()),
        // Log-probs need each step's scores on the host; otherwise only the ids come back.
        scores_on_host: ready.iter().any(|(job, _)| job.logprobs.is_some()),
        ..first.generation.clone()
    };
    let tita = first.tita.clone();
    let mut open = vec![true; ready.len()];
    let tokenizer = &target.tokenizer;
    let mut on_token = |ev: tita_decode::TokenEvent| {
        let (job, _) = &ready[ev.row];
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
                let prompts: Vec<_> = ready.iter().map(|(_, p)| p).collect();
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
                let requests: Vec<Request> = ready.iter().map(|(j, _)| j.request.clone()).collect();
                tita.generate_batch_streaming(&requests, &mut on_token)
                    .map(|gs| gs.into_iter().map(|g| (g.generation, g.explain)).collect())
                    .map_err(from_library)
            }),
        };
    match outcome {
        Err(e) => {
            for (job, _) in &ready {
                fail(job, e.clone());
            }
        }
        Ok(rows) => {
            for ((job, _), (generation, explain)) in ready.iter().zip(rows) {
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
    let s = &state.stats;
    Json(json!({
        "status": "ok",
        "completed": s.completed.load(Ordering::Relaxed),
        "cancelled": s.cancelled.load(Ordering::Relaxed),
        "failed": s.failed.load(Ordering::Relaxed),
        "largest_batch": s.largest_batch.load(Ordering::Relaxed),
    }))
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

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    match chat(state, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    check_key(&state, &headers)?;
    let Json(req) = body.map_err(|e| {
        let status = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.body_text())
    })?;
    let config = state.config.clone();
    let stream = req.stream;
    let with_logprobs = req.logprobs;
    let (model, request, generation, tita, logprobs) =
        tokio::task::spawn_blocking(move || prepare(req, &config))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "request preparation failed",
                )
            })??;
    let (tx, mut rx) = tmpsc::unbounded_channel();
    state
        .jobs
        .send(Job {
            request,
            generation,
            tita,
            logprobs,
            events: tx,
        })
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
        })?;
    let id = format!("chatcmpl-{:x}", rand_id());
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
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
                    let mut body = json!({
                        "id": id, "object": "chat.completion", "created": created, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": finish_reason(f.finish_reason),
                                     "logprobs": if with_logprobs { json!({"content": logprobs}) } else { Value::Null }}],
                        "usage": usage(&f),
                    });
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
    // One chunk: the delta, the finish reason, a token's log-prob entry, and top-level extras
    // (`usage`, `tita_explain`) on the last one.
    let chunk = move |delta: Value,
                      finish: Option<&str>,
                      logprob: Option<Value>,
                      extra: Vec<(&str, Value)>| {
        let logprobs = logprob.map_or(Value::Null, |v| json!({"content": [v]}));
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
        });
        for (k, v) in extra {
            c[k] = v;
        }
        Event::default().data(c.to_string())
    };
    let events = async_stream(first, rx, chunk);
    Ok(Sse::new(events).into_response())
}

/// The event stream of one streamed answer: a role chunk, content chunks, a final chunk with
/// the finish reason and usage, then `[DONE]`.
fn async_stream(
    first: Option<JobEvent>,
    mut rx: tmpsc::UnboundedReceiver<JobEvent>,
    chunk: impl Fn(Value, Option<&str>, Option<Value>, Vec<(&str, Value)>) -> Event + Send + 'static,
) -> impl tokio_stream::Stream<Item = Result<Event, std::convert::Infallible>> {
    let (tx, out) = tmpsc::unbounded_channel();
    tokio::spawn(async move {
        let send = |e: Event| tx.send(Ok(e)).is_ok();
        if !send(chunk(
            json!({"role": "assistant", "content": ""}),
            None,
            None,
            Vec::new(),
        )) {
            return;
        }
        let mut next = first;
        while let Some(ev) = next {
            let open = match ev {
                JobEvent::Delta(d, None) if d.is_empty() => true,
                JobEvent::Delta(d, lp) => send(chunk(json!({"content": d}), None, lp, Vec::new())),
                JobEvent::Failed(e) => {
                    let _ = send(Event::default().data(e.body().to_string()));
                    false
                }
                JobEvent::Done(f) => {
                    let mut extra = vec![("usage", usage(&f))];
                    if !f.explain.is_empty() {
                        extra.push(("tita_explain", json!(f.explain)));
                    }
                    let _ = send(chunk(
                        json!({}),
                        Some(finish_reason(f.finish_reason)),
                        None,
                        extra,
                    ));
                    false
                }
            };
            if !open {
                break;
            }
            next = rx.recv().await;
        }
        let _ = send(Event::default().data("[DONE]"));
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

/// Checks a request and turns it into the library's terms; images are decoded here, so a bad
/// one is answered before anything is queued.
/// The served name answering, the request, its settings, TITA's and the logprob count.
type Prepared = (
    String,
    Request,
    GenerationConfig,
    Option<TitaConfig>,
    Option<usize>,
);

fn prepare(req: ChatRequest, config: &ServerConfig) -> Result<Prepared, ApiError> {
    let served = config.method_of(req.model.as_deref())?.cloned();
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| config.model_name.clone());
    if req.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad("n", "only n = 1 is supported"));
    }
    if req.messages.is_empty() {
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
        (None, Some(fusion)) if fusion.needs_image() && image.is_none() => None,
        (None, served) => served.map(|fusion| TitaConfig {
            fusion,
            explain: false,
        }),
    };
    if let Some(t) = tita
        .as_ref()
        .filter(|t| t.fusion.needs_image() && image.is_none())
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
    let request = Request {
        prompt: String::new(),
        image,
        pad: false,
        messages: Some(messages),
        position: None,
    };
    Ok((model, request, generation, tita, logprobs))
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
