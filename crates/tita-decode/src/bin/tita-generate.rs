//! `tita-generate`: generation from the command line (what `cargo xtask generate` runs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context};
use burn::tensor::backend::Backend;
use clap::Parser;
use tita_core::template::{read_messages, template_help, ChatTemplate};
use tita_decode::backend::{dispatch, BackendKind, BackendTask};
use tita_decode::guidance::GuideModel;
use tita_decode::{
    Fusion, GenerationConfig, Generator, Knobs, Pipeline, Request, SamplingConfig, Tita,
    TitaConfig, TokenExplanation,
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
    /// model directory. Text-only prompts are templated too when the checkpoint ships a chat
    /// template (as transformers' chat pipeline and llama.cpp do) or one is given here.
    #[arg(long)]
    template: Option<String>,
    /// Tokenise a text-only prompt as it is, without the chat template (base models,
    /// completions). A prompt with an image is still templated unless it holds the model's
    /// image placeholder.
    #[arg(long, conflicts_with_all = ["template", "system", "messages"])]
    raw: bool,
    /// A system message before the prompt.
    #[arg(long)]
    system: Option<String>,
    /// Extra template variable KEY=VALUE (VALUE as JSON, else a string), e.g. add_vision_id=true.
    #[arg(long = "template-arg")]
    template_args: Vec<String>,
    #[arg(long, value_parser = tita_core::args::count, default_value_t = 64)]
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
    /// The reward model's DPO reference: reference mode.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The decoding method: interpolate, reference, contrastive (VCD), m3id, marine. Default:
    /// reference with --reference, interpolate with --reward, else plain decoding.
    #[arg(long)]
    mode: Option<String>,
    /// Weight of the reward model in interpolate mode, in [0, 1] (default 0.3).
    #[arg(long)]
    lambda: Option<f32>,
    /// Weight of the implicit reward (reference mode) or of the contrast (contrastive mode),
    /// >= 0 (default 1).
    #[arg(long)]
    alpha: Option<f32>,
    /// Plausibility cut: keep tokens with p_T >= tau * max p_T (interpolate / reference).
    #[arg(long)]
    tau: Option<f32>,
    /// Diffusion step (of 1000) of the noised image in contrastive mode (default 500; VCD's
    /// schedule: betas = sigmoid(linspace(-6, 6, 1000))·(5e-3 - 1e-5) + 1e-5).
    #[arg(long)]
    noise_step: Option<u64>,
    /// VCD's plausibility cut in contrastive mode (default 0.1).
    #[arg(long)]
    vcd_beta: Option<f32>,
    /// M3ID's decay λ of the visual information loss over the answer (default 0.02).
    #[arg(long)]
    m3id_lambda: Option<f32>,
    /// M3ID's confidence gate α (default 0.95).
    #[arg(long)]
    m3id_alpha: Option<f32>,
    /// M3ID's update: paper (the formula of the paper) or avisc (the released code's).
    #[arg(long)]
    m3id_variant: Option<String>,
    /// MARINE's guidance strength γ in [0, 1] (default 0.7).
    #[arg(long)]
    marine_gamma: Option<f32>,
    /// MARINE's detected objects: a JSON list or JSONL file of {"image", "objects"} records.
    #[arg(long)]
    objects: Option<PathBuf>,
    /// Any other knob of the mode, NAME=VALUE (VALUE as JSON, else a string; repeatable).
    #[arg(long = "knob")]
    knobs: Vec<String>,
    /// Print, per token, each model's favourite, the fused winner and the implicit reward.
    #[arg(long)]
    explain: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

impl Args {
    /// The method the flags ask for (None for plain decoding), refusing flags that the chosen
    /// mode would silently ignore.
    fn fusion(&self) -> anyhow::Result<Option<Fusion>> {
        let mode = self.mode.clone().or_else(|| {
            if self.reference.is_some() {
                Some("reference".into())
            } else {
                self.reward.as_ref().map(|_| "interpolate".into())
            }
        });
        let Some(mode) = mode else {
            if self.explain {
                return Err(anyhow!(
                    "--explain: explains guided decoding: give --reward or a --mode"
                ));
            }
            if let Some(flag) = self.knobs().next().map(|(name, _)| name) {
                return Err(anyhow!(
                    "--{}: is a knob of a decoding method: give --reward or a --mode",
                    flag.replace('_', "-")
                ));
            }
            return Ok(None);
        };
        let mut knobs = Knobs::new();
        for (name, value) in self.knobs() {
            knobs.set(name, value);
        }
        for k in &self.knobs {
            knobs.set_arg(k)?;
        }
        // --seed seeds VCD's noise as well as sampling.
        if Fusion::knobs_of(&mode).is_some_and(|ks| ks.iter().any(|k| k.name == "noise_seed"))
            && knobs.get("noise_seed").is_none()
        {
            knobs.set("noise_seed", self.seed);
        }
        let fusion = Fusion::from_knobs(&mode, &knobs).map_err(|e| match e {
            tita_core::Error::Argument { name, msg } if msg.contains("not a knob") => {
                anyhow!("--{}: {msg}", name.replace('_', "-"))
            }
            e => e.into(),
        })?;
        let uses = |m: GuideModel| fusion.guides().iter().any(|g| g.model == m);
        if self.reward.is_some() && !uses(GuideModel::Reward) {
            return Err(anyhow!("--reward: mode {mode} uses no reward model"));
        }
        if self.reference.is_some() && !uses(GuideModel::Reference) {
            return Err(anyhow!(
                "--reference: is the DPO reference of reference mode only"
            ));
        }
        Ok(Some(fusion))
    }

    /// The knob flags given, by knob name.
    fn knobs(&self) -> impl Iterator<Item = (&'static str, serde_json::Value)> + '_ {
        let path = |p: &PathBuf| p.display().to_string();
        [
            ("lambda", self.lambda.map(Into::into)),
            ("alpha", self.alpha.map(Into::into)),
            ("tau", self.tau.map(Into::into)),
            ("noise_step", self.noise_step.map(Into::into)),
            ("vcd_beta", self.vcd_beta.map(Into::into)),
            ("m3id_lambda", self.m3id_lambda.map(Into::into)),
            ("m3id_alpha", self.m3id_alpha.map(Into::into)),
            ("m3id_variant", self.m3id_variant.clone().map(Into::into)),
            ("marine_gamma", self.marine_gamma.map(Into::into)),
            ("objects", self.objects.as_ref().map(|p| path(p).into())),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| (name, v)))
    }

    /// The sampling settings, each checked against its range.
    fn sampling(&self) -> anyhow::Result<SamplingConfig> {
        if self.temperature == 0.0 {
            if self.top_k.is_some() {
                return Err(anyhow!(
                    "--top-k: greedy decoding ignores it; give a --temperature"
                ));
            }
            if self.top_p.is_some() {
                return Err(anyhow!(
                    "--top-p: greedy decoding ignores it; give a --temperature"
                ));
            }
        }
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
        // A chat model's own template, not the built-in fallback for checkpoints without one.
        let ships_template = ChatTemplate::builtin(&pipeline.template.name).is_none();
        if ships_template && !self.raw {
            pipeline.template_text_prompts = true;
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
        let (out, explain) = match &fusion {
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
                    fusion: fusion.clone(),
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
            if let Some(f) = &fusion {
                v["fusion"] = f.describe();
            }
            let templated = pipeline.template_text_prompts || request.image.is_some();
            v["template"] = if templated || request.messages.is_some() {
                pipeline.template.name.clone().into()
            } else {
                serde_json::Value::Null
            };
            v["prompt_ids"] = pipeline.request_prompt(&request)?.ids.into();
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
