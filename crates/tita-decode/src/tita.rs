//! Guided decoding: a frozen target VLM steered token by token by guide branches: a reward VLM
//! (and optionally its DPO reference) for TITA, or the target's own view of another input for
//! the baselines (VCD's noised image, M3ID's conversation without the image, MARINE's
//! object-list prompt). The method is a [`Fusion`] (see [`crate::guidance`]). Every branch keeps
//! its own KV cache and encodes the image with its own vision tower, so a step costs one cached
//! decode step per branch.

use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;
use tita_core::{Error, Result, Tokenizer};

use crate::fused::Fused;
use crate::generator::{decode_loop, finish, Generation, GenerationConfig, TokenEvent};
use crate::guidance::{Fusion, GuideModel, Interpolate};
use crate::pipeline::{Pipeline, Prompt, Request};
use crate::session::Session;

/// Settings of the guided decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct TitaConfig {
    /// The method and its knobs.
    pub fusion: Fusion,
    /// Record a per-token [`TokenExplanation`].
    pub explain: bool,
}

impl Default for TitaConfig {
    fn default() -> Self {
        TitaConfig {
            fusion: Interpolate::new(0.3).into(),
            explain: false,
        }
    }
}

/// A token id with its text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub id: u32,
    pub text: String,
}

/// Why a token was chosen: each branch's own favourite, the fused winner, and the implicit
/// reward of the chosen token: `log p_R(y) - log p_ref(y)` in reference mode (DPO's reward
/// against the reward model's own reference), `log p_guide(y) - log p_T(y)` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenExplanation {
    pub token: Choice,
    pub target_top: Choice,
    /// The first guide branch's favourite: the reward model's, or the target's on the method's
    /// other input (VCD's noised image, M3ID's text alone, MARINE's object prompt).
    pub reward_top: Choice,
    pub fused_top: Choice,
    pub target_logprob: f32,
    pub reward_logprob: f32,
    /// The DPO reference's log-prob (reference mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_logprob: Option<f32>,
    pub implicit_reward: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TitaGeneration {
    #[serde(flatten)]
    pub generation: Generation,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub explain: Vec<TokenExplanation>,
}

/// Guided decoding over a target and its guide models.
///
/// ```no_run
/// use tita_decode::{Fusion, GenerationConfig, Pipeline, Request, Tita, TitaConfig};
/// type B = burn::backend::Flex;
///
/// let device = Default::default();
/// let target = Pipeline::<B>::load("llava-1.5-7b-hf".as_ref(), &device)?;
/// let reward = Pipeline::<B>::load("tita-reward".as_ref(), &device)?;
/// let config = TitaConfig { fusion: Fusion::interpolate(0.3), ..Default::default() };
/// let tita = Tita::new(&target, Some(&reward), None, config, GenerationConfig::default())?;
/// let request = Request::new("Is there a dog in the image?", Some(std::path::PathBuf::from("photo.jpg")), true);
/// println!("{}", tita.generate(&request)?.generation.text);
/// # Ok::<(), tita_core::Error>(())
/// ```
pub struct Tita<'p, B: Backend> {
    pub(crate) target: &'p Pipeline<B>,
    reward: Option<&'p Pipeline<B>>,
    reference: Option<&'p Pipeline<B>>,
    pub config: TitaConfig,
    pub generation: GenerationConfig,
}

/// Refuses a guide model (`role`: "reward" or "reference") of another family than the target,
/// or whose tokenizer disagrees with the target's on their common id range.
pub fn check_guide<B: Backend>(
    role: &str,
    target: &Pipeline<B>,
    guide: &Pipeline<B>,
) -> Result<()> {
    let (g, t) = (guide.model.family(), target.model.family());
    if g != t {
        return Err(Error::argument(
            role,
            format!(
                "{} is a {g} model and the target {} a {t} one: the guide must be of the target's family (same tokenizer, same image tokens)",
                guide.dir.display(),
                target.dir.display()
            ),
        ));
    }
    check_vocabularies(role, &target.tokenizer, &guide.tokenizer)
}

fn check_vocabularies(role: &str, target: &Tokenizer, other: &Tokenizer) -> Result<()> {
    let (a, b) = (target.tokens(), other.tokens());
    let common = a.len().min(b.len());
    let differ: Vec<usize> = (0..common).filter(|&i| a[i] != b[i]).collect();
    if differ.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = differ
        .iter()
        .take(5)
        .map(|&i| {
            format!(
                "{i} ({:?} vs {:?})",
                a[i].as_deref().unwrap_or("?"),
                b[i].as_deref().unwrap_or("?")
            )
        })
        .collect();
    Err(Error::argument(
        role,
        format!(
            "tokenizer {} differs from the target's {} at {} of the {common} common ids, e.g. {}; TITA needs a shared vocabulary",
            other.path().display(),
            target.path().display(),
            differ.len(),
            shown.join(", ")
        ),
    ))
}

impl<'p, B: Backend> Tita<'p, B> {
    /// `reward` is required by the methods with a reward branch (interpolate, reference),
    /// `reference` by reference mode; the baselines use the target alone. Guide models given
    /// but not used by `config`'s method are kept for [`Tita::sweep`].
    pub fn new(
        target: &'p Pipeline<B>,
        reward: Option<&'p Pipeline<B>>,
        reference: Option<&'p Pipeline<B>>,
        config: TitaConfig,
        generation: GenerationConfig,
    ) -> Result<Self> {
        config.fusion.validate()?;
        for (role, guide) in [("reward", reward), ("reference", reference)] {
            if let Some(guide) = guide {
                check_guide(role, target, guide)?;
            }
        }
        let tita = Tita {
            target,
            reward,
            reference,
            config,
            generation,
        };
        tita.check_models(&tita.config.fusion)?;
        Ok(tita)
    }

    /// The pipeline a guide branch runs on.
    pub(crate) fn pipeline(&self, model: GuideModel) -> Result<&'p Pipeline<B>> {
        match model {
            GuideModel::Target => Ok(self.target),
            GuideModel::Reward => self
                .reward
                .ok_or_else(|| Error::argument("reward", "this mode needs a reward model")),
            GuideModel::Reference => self.reference.ok_or_else(|| {
                Error::argument(
                    "reference",
                    "reference mode needs the reward model's DPO reference",
                )
            }),
        }
    }

    /// Refuses a method whose guide models were not given.
    pub(crate) fn check_models(&self, fusion: &Fusion) -> Result<()> {
        for g in fusion.guides() {
            self.pipeline(g.model)?;
        }
        Ok(())
    }

    pub fn generate(&self, request: &Request) -> Result<TitaGeneration> {
        self.generate_streaming(request, &mut |_| {})
    }

    pub fn generate_streaming(
        &self,
        request: &Request,
        on_token: &mut dyn FnMut(TokenEvent),
    ) -> Result<TitaGeneration> {
        Ok(self
            .generate_batch_streaming(std::slice::from_ref(request), on_token)?
            .remove(0))
    }

    pub fn generate_batch(&self, requests: &[Request]) -> Result<Vec<TitaGeneration>> {
        self.generate_batch_streaming(requests, &mut |_| {})
    }

    /// Decodes a batch with fused scores; each row equals what decoding it alone gives.
    pub fn generate_batch_streaming(
        &self,
        requests: &[Request],
        on_token: &mut dyn FnMut(TokenEvent),
    ) -> Result<Vec<TitaGeneration>> {
        let start = Instant::now();
        let fusion = &self.config.fusion;
        let target_prompts = requests
            .iter()
            .map(|r| self.target.request_prompt(r))
            .collect::<Result<Vec<Prompt>>>()?;
        let t_refs: Vec<&Prompt> = target_prompts.iter().collect();
        let room = Some(self.generation.max_new_tokens);
        let (target, first_t) =
            Session::prefill_reserving(&self.target.model, &t_refs, room, &self.target.device)?;
        let mut guides = Vec::new();
        let mut first_g = Vec::new();
        for (i, guide) in fusion.guides().iter().enumerate() {
            let pipeline = self.pipeline(guide.model)?;
            let prompts = requests
                .iter()
                .map(|r| fusion.guide_prompt(i, pipeline, r))
                .collect::<Result<Vec<Prompt>>>()?;
            let refs: Vec<&Prompt> = prompts.iter().collect();
            let (session, logits) =
                Session::prefill_reserving(&pipeline.model, &refs, room, &pipeline.device)?;
            guides.push(session);
            first_g.push(logits);
        }
        let prefill_s = start.elapsed().as_secs_f64();

        // Explanations need every model's scores on the host; otherwise only ids come back.
        let on_host = self.config.explain || self.generation.scores_on_host;
        let explain = self.config.explain.then_some(&self.target.tokenizer);
        let mut stepper = Fused::new(
            fusion,
            target,
            guides,
            (first_t, first_g),
            &self.generation.sampling,
            on_host,
            explain,
            requests.len(),
        );
        let t0 = Instant::now();
        let rows = decode_loop(
            &self.target.tokenizer,
            &self.generation,
            &self.target.model.text_limits().eos_token_ids,
            requests.len(),
            &mut stepper,
            on_token,
        )?;
        let decode_s = t0.elapsed().as_secs_f64();
        let gens = finish(rows, &t_refs, prefill_s, decode_s);
        Ok(gens
            .into_iter()
            .zip(stepper.into_explanations())
            .map(|(generation, explain)| TitaGeneration {
                generation,
                explain,
            })
            .collect())
    }
}
