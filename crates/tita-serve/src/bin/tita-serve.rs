//! `tita-serve`: what `cargo xtask serve` runs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use burn::tensor::backend::Backend;
use clap::Parser;
use tita_decode::backend::{dispatch, BackendKind, BackendTask};
use tita_decode::{Pipeline, Precision};
use tita_serve::{router, serve, Models, ServerConfig};

/// An OpenAI-compatible server (`/v1/models`, `/v1/chat/completions`) with TITA as the
/// `tita` body field.
#[derive(Parser)]
#[command(allow_negative_numbers = true)]
struct Args {
    /// Target VLM directory (Hugging Face layout).
    #[arg(long)]
    model: PathBuf,
    /// Reward VLM directory (enables `tita` interpolate / reference requests).
    #[arg(long)]
    reward: Option<PathBuf>,
    /// The reward model's DPO reference (reference mode).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Address to bind; loopback unless you mean to expose it.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Weights held and computed in: auto, f32, f16, bf16.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// Require `Authorization: Bearer KEY` on every request.
    #[arg(long, env = "TITA_API_KEY")]
    api_key: Option<String>,
    /// Folder whose files `image_url` may name (otherwise only data: URLs).
    #[arg(long)]
    allow_images: Option<PathBuf>,
    /// The model name `/v1/models` lists (default: the target folder's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Largest request body in MB.
    #[arg(long, value_parser = tita_core::args::count, default_value_t = 20)]
    max_body_mb: usize,
    /// Largest image in megapixels.
    #[arg(long, value_parser = tita_core::args::positive, default_value_t = 16.0)]
    max_image_megapixels: f64,
    /// Longest prompt in tokens (image tokens included).
    #[arg(long, value_parser = tita_core::args::count, default_value_t = 4096)]
    max_prompt_tokens: usize,
    /// Default and largest `max_tokens`.
    #[arg(long, value_parser = tita_core::args::count, default_value_t = 512)]
    max_tokens: usize,
    /// A decoding method to serve: greedy or MODE[:VALUE] (tita:0.3, reference:1, vcd, m3id,
    /// marine; repeatable). Each is listed as `NAME+LABEL` (e.g. `llava-target+tita-0.3`); the
    /// first is what requests without a `tita` field get under the plain name, so harnesses
    /// that send only OpenAI's fields (lmms-eval) decode with it.
    #[arg(long = "method")]
    methods: Vec<String>,
    /// A knob for every served method that takes it, NAME=VALUE (VALUE as JSON, else a
    /// string; repeatable), e.g. `--knob tau=0.1` or `--knob objects=detections.jsonl`.
    #[arg(long = "knob")]
    knobs: Vec<String>,
    /// Requests admitted and not yet decoding; one more is answered 429 with `Retry-After`.
    #[arg(long, value_parser = tita_core::args::count, default_value_t = 64)]
    max_queue: usize,
    /// Seconds a client has to send a request's headers before its connection is closed.
    #[arg(long, value_parser = tita_core::args::positive, default_value_t = 30.0)]
    header_timeout_s: f64,
    /// Seconds a client has to send a request's body before it is answered 408.
    #[arg(long, value_parser = tita_core::args::positive, default_value_t = 60.0)]
    body_timeout_s: f64,
}

struct Serve(Args);

impl BackendTask for Serve {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device, kind: BackendKind) -> anyhow::Result<()> {
        let a = self.0;
        let load = |dir: &PathBuf| {
            Pipeline::<B>::load_in(dir, a.dtype, &device)
                .with_context(|| format!("loading {}", dir.display()))
        };
        if let Some(dir) = a.allow_images.as_ref().filter(|d| !d.is_dir()) {
            anyhow::bail!("--allow-images: {} is not a folder", dir.display());
        }
        let models = Models {
            target: load(&a.model)?,
            reward: a.reward.as_ref().map(load).transpose()?,
            reference: a.reference.as_ref().map(load).transpose()?,
        };
        let mut shared = tita_decode::Knobs::new();
        for k in &a.knobs {
            shared.set_arg(k)?;
        }
        let methods = (a.methods.iter())
            .map(|m| tita_decode::Fusion::from_spec(m, &shared, "method"))
            .collect::<Result<Vec<_>, _>>()?;
        // A guide of another family or vocabulary, or a method without its models, would fail
        // every request: refuse them now.
        models.check_methods(&methods)?;
        let name = a.served_model_name.clone().unwrap_or_else(|| {
            a.model
                .file_name()
                .map_or("tita".into(), |n| n.to_string_lossy().into_owned())
        });
        let config = ServerConfig {
            model_name: name,
            api_key: a.api_key.clone(),
            allow_images: a.allow_images.clone(),
            max_body_bytes: a.max_body_mb << 20,
            max_image_pixels: (a.max_image_megapixels * 1e6) as u64,
            max_prompt_tokens: a.max_prompt_tokens,
            max_tokens: a.max_tokens,
            methods,
            max_queue: a.max_queue,
            header_timeout: Duration::from_secs_f64(a.header_timeout_s),
            body_timeout: Duration::from_secs_f64(a.body_timeout_s),
        };
        let header_timeout = config.header_timeout;
        let served: Vec<String> = (config.served_names().iter())
            .map(|n| format!("`{n}`"))
            .collect();
        let app = router(models, config);
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async move {
            // Listening for the signals before the port opens: one sent as soon as the
            // server answers is never missed.
            let stop = shutdown()?;
            let addr = format!("{}:{}", a.host, a.port);
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            eprintln!(
                "serving {} on http://{} ({} backend); Ctrl-C or SIGTERM stops after the answers in flight",
                served.join(", "),
                listener.local_addr()?,
                kind.feature()
            );
            serve(listener, app, header_timeout, stop).await?;
            eprintln!("stopped");
            Ok(())
        })
    }
}

/// Resolves at Ctrl-C or SIGTERM: stop accepting, finish the answers in flight.
fn shutdown() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    #[cfg(unix)]
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listening for SIGINT")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = interrupt.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("shutting down: finishing the answers in flight");
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let backend = args.backend;
    dispatch(backend, Serve(args)).map_err(|e| anyhow!(e))?
}
