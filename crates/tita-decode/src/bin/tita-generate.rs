//! `tita-generate`: generation from the command line (what `cargo xtask generate` runs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context};
use burn::tensor::backend::Backend;
use clap::Parser;
use tita_decode::backend::{dispatch, BackendKind, BackendTask};
use tita_decode::{GenerationConfig, Generator, Pipeline, SamplingConfig};

#[derive(Parser, Debug)]
#[command(about = "Generate with a LLaVA (or LLaMA) checkpoint in Hugging Face layout")]
struct Args {
    /// Checkpoint directory (config.json, safetensors, tokenizer.json, preprocessor_config.json).
    #[arg(long)]
    model: PathBuf,
    /// Image file; the prompt is then wrapped in LLaVA-1.5's chat template.
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop once the text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Pad the image to a square of the mean colour first (LLaVA-1.5's evaluation setting).
    #[arg(long)]
    pad: bool,
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

struct Run(Args);

impl BackendTask for Run {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device, kind: BackendKind) -> anyhow::Result<()> {
        let a = self.0;
        let t0 = Instant::now();
        let pipeline = Pipeline::<B>::load(&a.model, &device).with_context(|| format!("loading {}", a.model.display()))?;
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let prompt = pipeline.prompt(&a.prompt, a.image.as_deref(), a.pad)?;
        let config = GenerationConfig {
            max_new_tokens: a.max_new_tokens,
            sampling: SamplingConfig { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed },
            stop_strings: a.stop.clone(),
            eos_token_ids: None,
        };
        let generator = Generator::new(&pipeline, config);
        let out = if a.json {
            generator.generate(&prompt)?
        } else {
            use std::io::Write;
            let out = generator.generate_streaming(&prompt, &mut |ev| {
                print!("{}", ev.text_delta);
                let _ = std::io::stdout().flush();
            })?;
            println!();
            out
        };
        if a.json {
            let mut v = serde_json::to_value(&out)?;
            v["timings"]["load_ms"] = load_ms.into();
            v["backend"] = serde_json::to_value(kind)?;
            v["model"] = a.model.display().to_string().into();
            println!("{}", serde_json::to_string(&v)?);
        } else {
            let t = &out.timings;
            eprintln!(
                "[{} prompt tokens, {} generated ({:?}); load {:.0} ms, prefill {:.1} ms ({:.1} tok/s), decode {:.1} ms ({:.1} tok/s), backend {}]",
                out.prompt_tokens, out.generated_tokens, out.finish_reason, load_ms, t.prefill_ms,
                t.prefill_tokens_per_s, t.decode_ms, t.decode_tokens_per_s, kind.feature()
            );
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let backend = args.backend;
    dispatch(backend, Run(args)).map_err(|e| anyhow!(e))?
}
