//! Yes/no hallucination evaluation (POPE, MME, any `{"image", "text", "label"}` set) of several
//! decoding methods side by side in one run: plain greedy, TITA interpolate at a list of λ,
//! TITA reference mode, VCD. Answers are appended to LLaVA-format JSONL files as they come, so
//! an interrupted run resumes without asking anything twice. Greedy, interpolate and reference
//! methods of one question share one prefill of each model ([`Tita::sweep`]), so a λ sweep
//! costs about one run.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;
use tita_core::{jsonl, Error, Result};
use tita_decode::{
    Fusion, Generation, GenerationConfig, Generator, Pipeline, Request, Tita, TitaConfig,
};

use crate::pope::{Answer, Question};

/// LLaVA-1.5's instruction for short answers, appended on a new line to every question.
pub const SHORT_ANSWER: &str = "Answer the question using a single word or phrase.";

/// A decoding method under evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Method {
    Greedy,
    /// TITA interpolate with weight λ on the reward model.
    Tita {
        lambda: f32,
    },
    /// TITA reference mode with weight α on the implicit reward.
    Reference {
        alpha: f32,
    },
    /// Visual contrastive decoding against the target on a noised image.
    Vcd {
        alpha: f32,
    },
}

impl Method {
    /// `greedy`, `tita:0.3`, `reference:1`, `vcd:1`.
    pub fn parse(s: &str) -> Result<Self> {
        let (kind, value) = s.split_once(':').unwrap_or((s, ""));
        let num = |default: f32| -> Result<f32> {
            if value.is_empty() {
                return Ok(default);
            }
            value.parse().map_err(|_| {
                Error::argument("methods", format!("`{s}`: `{value}` is not a number"))
            })
        };
        let method = match kind {
            "greedy" => Method::Greedy,
            "tita" => Method::Tita { lambda: num(0.3)? },
            "reference" => Method::Reference { alpha: num(1.0)? },
            "vcd" => Method::Vcd { alpha: num(1.0)? },
            _ => {
                return Err(Error::argument(
                    "methods",
                    format!("`{s}`: expected greedy, tita:λ, reference:α or vcd:α"),
                ))
            }
        };
        method.fusion().validate()?;
        Ok(method)
    }

    pub fn name(&self) -> String {
        match self {
            Method::Greedy => "greedy".into(),
            Method::Tita { lambda } => format!("tita-{lambda}"),
            Method::Reference { alpha } => format!("reference-{alpha}"),
            Method::Vcd { alpha } => format!("vcd-{alpha}"),
        }
    }

    pub fn fusion(&self) -> Fusion {
        match *self {
            Method::Greedy => Fusion::interpolate(0.0),
            Method::Tita { lambda } => Fusion::interpolate(lambda),
            Method::Reference { alpha } => Fusion::reference(alpha),
            Method::Vcd { alpha } => Fusion::vcd(alpha),
        }
    }

    /// λ of the interpolate family (greedy is λ = 0), for plots against λ.
    pub fn lambda(&self) -> Option<f32> {
        match *self {
            Method::Greedy => Some(0.0),
            Method::Tita { lambda } => Some(lambda),
            _ => None,
        }
    }
}

/// The models of a run.
pub struct Models<'a, B: Backend> {
    pub target: &'a Pipeline<B>,
    pub reward: Option<&'a Pipeline<B>>,
    pub reference: Option<&'a Pipeline<B>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalConfig {
    pub methods: Vec<Method>,
    /// Appended on a new line to every question (empty: none).
    pub suffix: String,
    pub max_new_tokens: usize,
    pub pad: bool,
    /// Share prefills across greedy / interpolate / reference methods (exact; see module docs).
    pub shortcut: bool,
    /// Diffusion step of VCD's noised image.
    pub noise_step: usize,
    pub seed: u64,
    /// The conversation template the prompts were rendered with (recorded from the target).
    pub template: String,
    /// The system message, if any.
    pub system: Option<String>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            methods: vec![Method::Greedy, Method::Tita { lambda: 0.3 }],
            suffix: SHORT_ANSWER.into(),
            max_new_tokens: 16,
            pad: true,
            shortcut: true,
            noise_step: 500,
            seed: 0,
            template: String::new(),
            system: None,
        }
    }
}

/// One set of questions (a POPE split, an MME category, a yes/no file) with resolved images.
#[derive(Debug, Clone)]
pub struct QuestionSet {
    pub name: String,
    pub questions: Vec<Question>,
    /// Image file of each question.
    pub images: Vec<PathBuf>,
}

impl QuestionSet {
    /// Reads a questions file; images are looked up in `images` or next to the file.
    pub fn read(path: &Path, images: Option<&Path>, limit: Option<usize>) -> Result<Self> {
        let mut questions = crate::pope::read_questions(path)?;
        if let Some(n) = limit {
            questions.truncate(n);
        }
        let lines = jsonl::read::<serde_json::Value>(path)?;
        let files = questions
            .iter()
            .zip(&lines)
            .map(|(q, (line, _))| jsonl::resolve_image(path, *line, &q.image, images))
            .collect::<Result<Vec<_>>>()?;
        Ok(QuestionSet {
            name: crate::pope::split_name(path),
            questions,
            images: files,
        })
    }
}

/// Time spent per method (a shared sweep is split evenly among its methods).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MethodSpeed {
    pub answers: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
}

impl MethodSpeed {
    pub fn tokens_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.generated_tokens as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Where the answers of `method` on `set` are written.
pub fn answers_path(out: &Path, method: &Method, set: &str) -> PathBuf {
    out.join("answers")
        .join(method.name())
        .join(format!("{set}.jsonl"))
}

/// Answers every question of every set with every method, appending to the answer files and
/// skipping what they already hold. Returns the time spent per method in this run.
pub fn answer_all<B: Backend>(
    models: &Models<B>,
    sets: &[QuestionSet],
    out: &Path,
    config: &EvalConfig,
    progress: bool,
) -> Result<BTreeMap<String, MethodSpeed>> {
    let generation = GenerationConfig {
        max_new_tokens: config.max_new_tokens,
        ..Default::default()
    };
    let needs_reward = config
        .methods
        .iter()
        .any(|m| matches!(m, Method::Tita { .. } | Method::Reference { .. }));
    if needs_reward && models.reward.is_none() {
        return Err(Error::argument("reward", "TITA methods need --reward"));
    }
    if config
        .methods
        .iter()
        .any(|m| matches!(m, Method::Reference { .. }))
        && models.reference.is_none()
    {
        return Err(Error::argument(
            "reference",
            "reference methods need --reference",
        ));
    }
    // The sweeper keeps every guide model (reference mode keeps the reference too).
    let sweep_fusion = if models.reference.is_some() {
        Fusion::reference(1.0)
    } else {
        Fusion::interpolate(0.3)
    };
    let sweeper = match models.reward {
        Some(r) => Some(Tita::new(
            models.target,
            Some(r),
            models.reference,
            TitaConfig {
                fusion: sweep_fusion,
                ..Default::default()
            },
            generation.clone(),
        )?),
        None => None,
    };
    let plain = Generator::new(models.target, generation.clone());
    // One sampler per fused method, built once (building one compares the vocabularies).
    let solo = config
        .methods
        .iter()
        .map(|m| match m {
            Method::Greedy => Ok(None),
            _ => Tita::new(
                models.target,
                models.reward,
                models.reference,
                TitaConfig {
                    fusion: m.fusion(),
                    noise_step: config.noise_step,
                    noise_seed: config.seed,
                    ..Default::default()
                },
                generation.clone(),
            )
            .map(Some),
        })
        .collect::<Result<Vec<_>>>()?;

    let total: usize = sets.iter().map(|s| s.questions.len()).sum();
    let bar = tita_core::progress::bar(progress, total, "questions");
    let mut speed: BTreeMap<String, MethodSpeed> = BTreeMap::new();
    let model_id = models
        .target
        .dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("target")
        .to_string();
    for set in sets {
        let mut files = Vec::new();
        let mut done: Vec<HashSet<u64>> = Vec::new();
        for m in &config.methods {
            let path = answers_path(out, m, &set.name);
            let have = if path.exists() {
                jsonl::read::<Answer>(&path)?
                    .into_iter()
                    .map(|(_, a)| a.question_id)
                    .collect()
            } else {
                HashSet::new()
            };
            done.push(have);
            files.push((jsonl::open_append(&path)?, path));
        }
        for (q, image) in set.questions.iter().zip(&set.images) {
            let id = q.question_id.expect("set by read_questions");
            let todo: Vec<usize> = (0..config.methods.len())
                .filter(|&i| !done[i].contains(&id))
                .collect();
            bar.inc(1);
            if todo.is_empty() {
                continue;
            }
            let prompt = if config.suffix.is_empty() {
                q.text.clone()
            } else {
                format!("{}\n{}", q.text, config.suffix)
            };
            let request = Request::new(prompt.clone(), Some(image.clone()), config.pad);
            let mut results: Vec<(usize, Generation, f64)> = Vec::new();
            let (shared, alone): (Vec<usize>, Vec<usize>) = todo.iter().partition(|&&i| {
                config.shortcut
                    && sweeper.is_some()
                    && !matches!(config.methods[i], Method::Vcd { .. })
            });
            if !shared.is_empty() {
                let t = Instant::now();
                let fusions: Vec<Fusion> =
                    shared.iter().map(|&i| config.methods[i].fusion()).collect();
                let gens = sweeper
                    .as_ref()
                    .expect("checked")
                    .sweep(&request, &fusions)?;
                let each = t.elapsed().as_secs_f64() / shared.len() as f64;
                results.extend(shared.iter().zip(gens).map(|(&i, g)| (i, g, each)));
            }
            for i in alone {
                let t = Instant::now();
                let g = match &solo[i] {
                    Some(tita) => tita.generate(&request)?.generation,
                    None => plain.generate(&models.target.request_prompt(&request)?)?,
                };
                results.push((i, g, t.elapsed().as_secs_f64()));
            }
            for (i, g, secs) in results {
                let m = &config.methods[i];
                let answer = Answer {
                    question_id: id,
                    prompt: prompt.clone(),
                    text: g.text.trim().to_string(),
                    model_id: format!("{model_id}:{}", m.name()),
                };
                let (file, path) = &mut files[i];
                jsonl::append(file, path, &answer)?;
                let s = speed.entry(m.name()).or_default();
                s.answers += 1;
                s.generated_tokens += g.generated_tokens;
                s.seconds += secs;
            }
            bar.set_message(set.name.clone());
        }
    }
    bar.finish();
    Ok(speed)
}
