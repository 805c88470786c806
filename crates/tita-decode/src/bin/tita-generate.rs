//! `tita-generate`: generation from the command line (what `cargo xtask generate` runs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context};
use burn::tensor::backend::Backend;
use clap::Parser;
use tita_core::template::{read_messages, template_help, ChatTemplate};
use tita_decode::backend::{dispatch, BackendKind, BackendTask};
use tita_decode::{
    Fusion, GenerationConfig, Generator, Pipeline, Request, SamplingConfig, Tita, TitaConfig,
    TokenExplanation,
};

#[derive(Parser, Debug)]
#[command(
    about = "Generate with a LLaVA (or LLaMA) checkpoint in Hugging Face layout",
    allow_negative_numbers = true
)]
struct Args {
    /// Checkpoint directory (config.json, safetensors, tokenizer.json, preprocessor_config.json).
    #[arg(long)]
    model: PathBuf,
    /// Image file; the prompt is then rendered with the conversation template (see --template).
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(
        long,
        required_unless_present = "messages",
        conflicts_with = "messages"
    )]
    prompt: Option<String>,
    /// A conversation as JSON (a list of {role, content} messages, or {"messages": [...]});
    /// content is a string or a list of {"type": "text", "text"} / {"type": "image"} parts.
    #[arg(long)]
    messages: Option<PathBuf>,
    /// Conversation template: the model directory's chat_template unless given; a built-in
    /// name (llava_1_5, vicuna_v1), a .jinja file, a JSON file with `chat_template`, or a
    /// model directory. With it, text-only prompts are templated too.
    #[arg(long)]
    template: Option<String>,
    /// A system message before the prompt.
    #[arg(long)]
    system: Option<String>,
    /// Extra template variable KEY=VALUE (VALUE as JSON, else a string), e.g. add_vision_id=true.
    #[arg(long = "template-arg")]
    template_args: Vec<String>,
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
    /// Weights held and computed in (every model): auto (each checkpoint's stored type), f32,
    /// f16, bf16. Logits and the fusion are f32 whatever this is.
    #[arg(long, default_value = "f32")]
    dtype: tita_decode::Precision,
    /// Reward VLM directory: turns on TITA (interpolate mode unless --mode says otherwise).
    #[arg(long)]
    reward: Option<PathBuf>,
    /// Weight of the reward model in interpolate mode, in [0, 1] (default 0.3).
    #[arg(long)]
    lambda: Option<f32>,
    /// The reward model's DPO reference: reference mode.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Weight of the implicit reward (reference mode) or of the contrast (contrastive mode),
    /// >= 0 (default 1).
    #[arg(long)]
    alpha: Option<f32>,
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Diffusion step (of 1000) of the noised image in contrastive mode (VCD's schedule:
    /// betas = sigmoid(linspace(-6, 6, 1000))·(5e-3 - 1e-5) + 1e-5; ā_500 ≈ 0.745).
    #[arg(long, default_value_t = 500)]
    noise_step: usize,
    /// Plausibility cut: keep tokens with p_T >= tau * max p_T (interpolate / reference).
    #[arg(long)]
    tau: Option<f32>,
    /// VCD's plausibility cut in contrastive mode.
    #[arg(long, default_value_t = 0.1)]
    vcd_beta: f32,
    /// Print, per token, each model's favourite, the fused winner and the implicit reward.
    #[arg(long)]
    explain: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Interpolate,
    Reference,
    Contrastive,
}

impl Args {
    /// The fusion the flags ask for (None for plain decoding), refusing flags that the chosen
    /// mode would silently ignore.
    fn fusion(&self) -> anyhow::Result<Option<Fusion>> {
        let mode = self.mode.or(if self.reference.is_some() {
            Some(Mode::Reference)
        } else if self.reward.is_some() {
            Some(Mode::Interpolate)
        } else {
            None
        });
        let refuse = |flag: &str, why: &str| Err(anyhow!("--{flag}: {why}"));
        if self.lambda.is_some() && mode != Some(Mode::Interpolate) {
            return refuse("lambda", "is the weight of interpolate mode; give --reward (and no --reference / other --mode)");
        }
        if self.alpha.is_some() && !matches!(mode, Some(Mode::Reference | Mode::Contrastive)) {
            return refuse("alpha", "is used by reference mode (--reward and --reference) and contrastive mode (--mode contrastive)");
        }
        if self.reference.is_some() && mode != Some(Mode::Reference) {
            return refuse("reference", "is the DPO reference of reference mode only");
        }
        if self.reward.is_some() && mode == Some(Mode::Contrastive) {
            return refuse("reward", "contrastive mode uses no reward model");
        }
        if self.explain && mode.is_none() {
            return refuse(
                "explain",
                "explains fused decoding: give --reward or --mode contrastive",
            );
        }
        let fusion = mode.map(|mode| match mode {
            Mode::Interpolate => Fusion::interpolate(self.lambda.unwrap_or(0.3),),
            Mode::Reference => Fusion::reference(self.alpha.unwrap_or(1.0),),
            Mode::Contrastive => Fusion::vcd(self.alpha.unwrap_or(1.0),),
        });
        if let Some(f) = fusion {
            f.validate()?;
        }
        Ok(fusion)
    }

    /// The sampling settings, each checked against its range.
    fn sampling(&self) -> anyhow::Result<SamplingConfig> {
        let config = SamplingConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        };
        config.validate()?;
        Ok(config)
    }

    fn request(&self) -> anyhow::Result<Request> {
        let mut request = Request::new(
            self.prompt.clone().unwrap_or_default(),
            self.image.clone(),
            self.pad,
        );
        if let Some(path) = &self.messages {
            let mut messages = read_messages(path)?;
            if let Some(system) = &self.system {
                messages.insert(0, tita_core::template::Message::system(system));
            }
            request.messages = Some(messages);
        }
        Ok(request)
    }

    /// Applies --template, --system and --template-arg to a loaded model.
    fn configure<B: Backend>(&self, pipeline: &mut Pipeline<B>) -> anyhow::Result<()> {
        if let Some(spec) = &self.template {
            pipeline.set_template(
                ChatTemplate::resolve(spec)
                    .with_context(|| format!("--template expects {}", template_help()))?,
            )?;
        }
        if self.messages.is_none() {
            pipeline.system = self.system.clone();
        }
        for arg in &self.template_args {
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| anyhow!("--template-arg `{arg}`: expected KEY=VALUE"))?;
            let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
            pipeline.template_kwargs.insert(key.to_string(), value);
        }
        Ok(())
    }
}

fn print_explanation(rows: &[TokenExplanation]) {
    let reward = if rows.iter().any(|e| e.reference_logprob.is_some()) {
        "log pR/pref"
    } else {
        "log pR/pT"
    };
    eprintln!(
        "{:>4}  {:<16} {:<16} {:<16} {:<16} {:>11}",
        "step", "chosen", "target top", "reward top", "fused top", reward
    );
    for (i, e) in rows.iter().enumerate() {
        eprintln!(
            "{:>4}  {:<16} {:<16} {:<16} {:<16} {:>+11.3}",
            i,
            format!("{:?}", e.token.text),
            format!("{:?}", e.target_top.text),
            format!("{:?}", e.reward_top.text),
            format!("{:?}", e.fused_top.text),
            e.implicit_reward
        );
    }
}

struct Run(Args);

impl BackendTask for Run {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device, kind: BackendKind) -> anyhow::Result<()> {
        let a = self.0;
        let t0 = Instant::now();
        let fusion = a.fusion()?;
        let config = GenerationConfig {
            max_new_tokens: a.max_new_tokens,
            sampling: a.sampling()?,
            stop_strings: a.stop.clone(),
            eos_token_ids: None,
            cancel: None,
            scores_on_host: false,
        };
        let request = a.request()?;
        let load = |dir: &PathBuf| -> anyhow::Result<Pipeline<B>> {
            let mut p = Pipeline::<B>::load_in(dir, a.dtype, &device)
                .with_context(|| format!("loading {}", dir.display()))?;
            a.configure(&mut p)?;
            Ok(p)
        };
        let pipeline = load(&a.model)?;
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let json = a.json;
        let mut stream = |ev: tita_decode::TokenEvent| {
            use std::io::Write;
            if !json {
                print!("{}", ev.text_delta);
                let _ = std::io::stdout().flush();
            }
        };
        let (out, explain) = match fusion {
            None => {
                let prompt = pipeline.request_prompt(&request)?;
                (
                    Generator::new(&pipeline, config).generate_streaming(&prompt, &mut stream)?,
                    Vec::new(),
                )
            }
            Some(fusion) => {
                let reward = a.reward.as_ref().map(load).transpose()?;
                let reference = a.reference.as_ref().map(load).transpose()?;
                let tita_config = TitaConfig {
                    fusion,
                    tau: a.tau,
                    vcd_beta: a.vcd_beta,
                    noise_step: a.noise_step,
                    noise_seed: a.seed,
                    noise_eps: None,
                    explain: a.explain,
                };
                let tita = Tita::new(
                    &pipeline,
                    reward.as_ref(),
                    reference.as_ref(),
                    tita_config,
                    config,
                )?;
                let out = tita.generate_streaming(&request, &mut stream)?;
                (out.generation, out.explain)
            }
        };
        if !json {
            println!();
        }
        if a.explain && !json {
            print_explanation(&explain);
        }
        if a.json {
            let mut v = serde_json::to_value(&out)?;
            if a.explain {
                v["explain"] = serde_json::to_value(&explain)?;
            }
            if let Some(f) = fusion {
                v["fusion"] = format!("{f:?}").into();
            }
            v["template"] = pipeline.template.name.clone().into();
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
