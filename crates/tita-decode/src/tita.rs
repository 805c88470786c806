//! The TITA sampler: a frozen target VLM steered token by token by a reward VLM (and
//! optionally its DPO reference), or by the target's own view of a noised image (VCD).
//! Every model keeps its own KV cache and encodes the image with its own vision tower, so a
//! step costs one cached decode step per model.

use std::cell::RefCell;
use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;
use tita_core::fusion::{fuse, log_softmax, Fusion};
use tita_core::noise::{add_diffusion_noise, add_noise_with};
use tita_core::sampling::argmax;
use tita_core::{Error, Result, Tokenizer};

use crate::generator::{decode_loop, finish, Generation, GenerationConfig, Next, TokenEvent};
use crate::pipeline::{Pipeline, Prompt, Request};
use crate::select::{choose_ids, fuse_tensors};
use crate::session::{logits_to_host, Session};

/// Settings of the fused decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct TitaConfig {
    pub fusion: Fusion,
    /// Plausibility cut τ for interpolate / reference (`p_T(y) >= τ·max p_T`); off by default.
    pub tau: Option<f32>,
    /// VCD's plausibility cut β (contrastive mode only).
    pub vcd_beta: f32,
    /// Diffusion step of the noised image (contrastive mode), of 1000 (VCD's schedule).
    pub noise_step: usize,
    /// Seeds ε of the noised image (each request draws the same ε).
    pub noise_seed: u64,
    /// A given ε instead (one value per pixel value; tests, and reproducing a reference run).
    pub noise_eps: Option<Vec<f32>>,
    /// Record a per-token [`TokenExplanation`].
    pub explain: bool,
}

impl Default for TitaConfig {
    fn default() -> Self {
        TitaConfig {
            fusion: Fusion::Interpolate { lambda: 0.3 },
            tau: None,
            vcd_beta: 0.1,
            noise_step: 500,
            noise_seed: 0,
            noise_eps: None,
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

/// Why a token was chosen: each model's own favourite, the fused winner, and the implicit
/// reward of the chosen token: `log p_R(y) - log p_ref(y)` in reference mode (DPO's reward
/// against the reward model's own reference), `log p_R(y) - log p_T(y)` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenExplanation {
    pub token: Choice,
    pub target_top: Choice,
    /// The reward model's favourite (contrastive mode: the target's on the noised image).
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

/// Fused decoding over a target and its guide models.
///
/// ```no_run
/// use tita_decode::{Fusion, GenerationConfig, Pipeline, Request, Tita, TitaConfig};
/// type B = burn::backend::Flex;
///
/// let device = Default::default();
/// let target = Pipeline::<B>::load("llava-1.5-7b-hf".as_ref(), &device)?;
/// let reward = Pipeline::<B>::load("tita-reward".as_ref(), &device)?;
/// let config = TitaConfig { fusion: Fusion::Interpolate { lambda: 0.3 }, ..Default::default() };
/// let tita = Tita::new(&target, Some(&reward), None, config, GenerationConfig::default())?;
/// let request = Request::new("Is there a dog in the image?", Some(std::path::PathBuf::from("photo.jpg")), true);
/// println!("{}", tita.generate(&request)?.generation.text);
/// # Ok::<(), tita_core::Error>(())
/// ```
pub struct Tita<'p, B: Backend> {
    target: &'p Pipeline<B>,
    reward: Option<&'p Pipeline<B>>,
    reference: Option<&'p Pipeline<B>>,
    pub config: TitaConfig,
    pub generation: GenerationConfig,
}

/// Refuses guide models whose tokenizer disagrees with the target's on their common id range.
pub fn check_vocabularies(target: &Tokenizer, other: &Tokenizer) -> Result<()> {
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
        "reward",
        format!(
            "tokenizer {} differs from the target's {} at {} of the {common} common ids, e.g. {}; TITA needs a shared vocabulary",
            other.path().display(),
            target.path().display(),
            differ.len(),
            shown.join(", ")
        ),
    ))
}

/// One step's scores of every model on the host, and their fusion (the explanation path).
struct HostScores {
    target: Vec<Vec<f32>>,
    guide: Vec<Vec<f32>>,
    reference: Option<Vec<Vec<f32>>>,
    fused: Vec<Vec<f32>>,
}

impl HostScores {
    fn new(
        target: Vec<Vec<f32>>,
        guide: Vec<Vec<f32>>,
        reference: Option<Vec<Vec<f32>>>,
        fusion: Fusion,
        cut: Option<f32>,
    ) -> Self {
        let fused = (0..target.len())
            .map(|i| {
                let r = reference.as_ref().map(|r| r[i].as_slice());
                fuse(fusion, &target[i], &guide[i], r, cut)
            })
            .collect();
        HostScores {
            target,
            guide,
            reference,
            fused,
        }
    }
}

impl<'p, B: Backend> Tita<'p, B> {
    /// `reward` is required for interpolate and reference mode, `reference` for reference mode;
    /// contrastive mode uses the target alone.
    pub fn new(
        target: &'p Pipeline<B>,
        reward: Option<&'p Pipeline<B>>,
        reference: Option<&'p Pipeline<B>>,
        config: TitaConfig,
        generation: GenerationConfig,
    ) -> Result<Self> {
        config.fusion.validate()?;
        if let Some(tau) = config.tau {
            if !(0.0..=1.0).contains(&tau) {
                return Err(Error::argument("tau", format!("{tau} is outside [0, 1]")));
            }
        }
        if !(config.vcd_beta > 0.0 && config.vcd_beta <= 1.0) {
            return Err(Error::argument(
                "vcd_beta",
                format!("{} is outside (0, 1]", config.vcd_beta),
            ));
        }
        let needs = match config.fusion {
            Fusion::Interpolate { .. } => (true, false),
            Fusion::Reference { .. } => (true, true),
            Fusion::Contrastive { .. } => (false, false),
        };
        if needs.0 && reward.is_none() {
            return Err(Error::argument("reward", "this mode needs a reward model"));
        }
        if needs.1 && reference.is_none() {
            return Err(Error::argument(
                "reference",
                "reference mode needs the reward model's DPO reference",
            ));
        }
        for guide in [reward, reference].into_iter().flatten() {
            let (g, t) = (guide.model.family(), target.model.family());
            if g != t {
                return Err(Error::argument(
                    "reward",
                    format!(
                        "{} is a {g} model and the target {} a {t} one: the guide must be of the target's family (same tokenizer, same image tokens)",
                        guide.dir.display(),
                        target.dir.display()
                    ),
                ));
            }
            check_vocabularies(&target.tokenizer, &guide.tokenizer)?;
        }
        Ok(Tita {
            target,
            reward: if needs.0 { reward } else { None },
            reference: if needs.1 { reference } else { None },
            config,
            generation,
        })
    }

    fn prompts(&self, pipeline: &Pipeline<B>, requests: &[Request]) -> Result<Vec<Prompt>> {
        requests
            .iter()
            .map(|r| pipeline.request_prompt(r))
            .collect()
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

    /// One request decoded under several fusions (a λ or α sweep) at about the cost of one:
    /// the models prefill once, and fusions whose answers share a prefix share the decode
    /// steps of that prefix. For one-word answers this is one prefill and a step or two per
    /// distinct answer. Each result equals what [`Tita::generate`] gives with that fusion.
    /// Contrastive fusions are not allowed (their guide is a different image); reference
    /// fusions need a sampler built in reference mode (which keeps the reference model).
    pub fn sweep(&self, request: &Request, fusions: &[Fusion]) -> Result<Vec<Generation>> {
        if fusions.is_empty() {
            return Err(Error::argument("fusions", "nothing to sweep"));
        }
        for f in fusions {
            f.validate()?;
            match f {
                Fusion::Contrastive { .. } => {
                    return Err(Error::argument(
                        "fusions",
                        "contrastive decoding cannot share a sweep",
                    ))
                }
                Fusion::Reference { .. } if self.reference.is_none() => {
                    return Err(Error::argument(
                        "reference",
                        "reference mode needs the reward model's DPO reference",
                    ))
                }
                _ => {}
            }
        }
        let reward = self
            .reward
            .ok_or_else(|| Error::argument("reward", "a sweep needs a reward model"))?;
        let start = Instant::now();
        let t_prompt = self.target.request_prompt(request)?;
        let g_prompt = reward.request_prompt(request)?;
        let (ts, tl) = Session::prefill(&self.target.model, &[&t_prompt], &self.target.device)?;
        let (gs, gl) = Session::prefill(&reward.model, &[&g_prompt], &reward.device)?;
        let (rs, rl) = match self.reference {
            Some(r) => {
                let p = r.request_prompt(request)?;
                let (s, l) = Session::prefill(&r.model, &[&p], &r.device)?;
                (Some(s), Some(l.into_iter().next().expect("one row")))
            }
            None => (None, None),
        };
        let prefill_s = start.elapsed().as_secs_f64();

        /// A distinct token history: the sessions after it and their next-token logits.
        struct Branch<'m, B: Backend> {
            sessions: (Session<'m, B>, Session<'m, B>, Option<Session<'m, B>>),
            logits: (Vec<f32>, Vec<f32>, Option<Vec<f32>>),
        }
        let tau = self.config.tau;
        let fused = |b: &Branch<B>, f: Fusion| {
            fuse(f, &b.logits.0, &b.logits.1, b.logits.2.as_deref(), tau)
        };
        let root = Branch {
            sessions: (ts, gs, rs),
            logits: (
                tl.into_iter().next().expect("one row"),
                gl.into_iter().next().expect("one row"),
                rl,
            ),
        };
        let state = RefCell::new((vec![root], vec![0usize; fusions.len()]));
        let t0 = Instant::now();
        let rows = decode_loop(
            &self.target.tokenizer,
            &self.generation,
            &self.target.model.text_limits().eos_token_ids,
            fusions.len(),
            || {
                let s = state.borrow();
                let b = &s.0[0].sessions;
                b.0.has_room() && b.1.has_room() && b.2.as_ref().is_none_or(Session::has_room)
            },
            |fed, _draws| {
                let Some(tokens) = fed else {
                    let root = &state.borrow().0[0];
                    return Ok(Next::Scores(
                        fusions.iter().map(|&f| fused(root, f)).collect(),
                    ));
                };
                let mut s = state.borrow_mut();
                let (branches, of_row) = &mut *s;
                let mut next: Vec<Branch<B>> = Vec::new();
                let mut made: Vec<(usize, u32)> = Vec::new();
                let mut new_of_row = Vec::with_capacity(tokens.len());
                for (row, &tok) in tokens.iter().enumerate() {
                    let key = (of_row[row], tok);
                    let idx = match made.iter().position(|k| *k == key) {
                        Some(i) => i,
                        None => {
                            let mut ss = branches[key.0].sessions.clone();
                            let t = ss.0.step(&[tok])?.remove(0);
                            let g = ss.1.step(&[tok])?.remove(0);
                            let r =
                                ss.2.as_mut()
                                    .map(|r| r.step(&[tok]))
                                    .transpose()?
                                    .map(|mut v| v.remove(0));
                            next.push(Branch {
                                sessions: ss,
                                logits: (t, g, r),
                            });
                            made.push(key);
                            made.len() - 1
                        }
                    };
                    new_of_row.push(idx);
                }
                let out = new_of_row
                    .iter()
                    .zip(fusions)
                    .map(|(&b, &f)| fused(&next[b], f))
                    .collect();
                *branches = next;
                *of_row = new_of_row;
                Ok(Next::Scores(out))
            },
            &mut |_| {},
        )?;
        let decode_s = t0.elapsed().as_secs_f64();
        let prompts = vec![&t_prompt; fusions.len()];
        Ok(finish(rows, &prompts, prefill_s, decode_s))
    }

    /// Decodes a batch with fused scores; each row equals what decoding it alone gives.
    pub fn generate_batch_streaming(
        &self,
        requests: &[Request],
        on_token: &mut dyn FnMut(TokenEvent),
    ) -> Result<Vec<TitaGeneration>> {
        let start = Instant::now();
        let target_prompts = self.prompts(self.target, requests)?;
        let (guide, guide_prompts) = match (self.config.fusion, self.reward) {
            (Fusion::Contrastive { .. }, _) => {
                let mut noised = target_prompts.clone();
                for p in &mut noised {
                    if let Some(px) = &mut p.pixels {
                        let step = self.config.noise_step;
                        match &self.config.noise_eps {
                            Some(eps) => add_noise_with(&mut px.data, step, eps)?,
                            None => {
                                add_diffusion_noise(&mut px.data, step, self.config.noise_seed)?
                            }
                        }
                    }
                }
                (self.target, noised)
            }
            (_, Some(reward)) => (reward, self.prompts(reward, requests)?),
            (_, None) => unreachable!("checked in Tita::new"),
        };
        let t_refs: Vec<&Prompt> = target_prompts.iter().collect();
        let (target, first_t) =
            Session::prefill_on_device(&self.target.model, &t_refs, &self.target.device)?;
        let (guide_session, first_g) = Session::prefill_on_device(
            &guide.model,
            &guide_prompts.iter().collect::<Vec<_>>(),
            &guide.device,
        )?;
        let (reference, first_r) = match self.reference {
            Some(r) => {
                let ps = self.prompts(r, requests)?;
                let refs: Vec<&Prompt> = ps.iter().collect();
                let (s, l) = Session::prefill_on_device(&r.model, &refs, &r.device)?;
                (Some(s), Some(l))
            }
            None => (None, None),
        };
        let prefill_s = start.elapsed().as_secs_f64();

        let cut = match self.config.fusion {
            Fusion::Contrastive { .. } => Some(self.config.vcd_beta),
            _ => self.config.tau,
        };
        let fusion = self.config.fusion;
        // Explanations need every model's scores on the host; otherwise only ids come back.
        let on_host = self.config.explain || self.generation.scores_on_host;
        // The scores each row's next token is chosen from, kept for the explanation view.
        let last: RefCell<Option<HostScores>> = RefCell::new(None);
        let mut first = Some((first_t, first_g, first_r));
        let sessions = RefCell::new((target, guide_session, reference));
        let explanations: RefCell<Vec<Vec<TokenExplanation>>> =
            RefCell::new(vec![Vec::new(); requests.len()]);
        let tok = &self.target.tokenizer;
        let choice = |id: u32| Choice {
            id,
            text: tok.decode(&[id], false).unwrap_or_default(),
        };

        let t0 = Instant::now();
        let rows = decode_loop(
            tok,
            &self.generation,
            &self.target.model.text_limits().eos_token_ids,
            requests.len(),
            || {
                let s = sessions.borrow();
                s.0.has_room() && s.1.has_room() && s.2.as_ref().is_none_or(Session::has_room)
            },
            |fed, draws| {
                let mut s = sessions.borrow_mut();
                let (t, g, r) = match fed {
                    None => first.take().expect("the prefill's logits are used once"),
                    Some(tokens) => (
                        s.0.step_on_device(tokens)?,
                        s.1.step_on_device(tokens)?,
                        s.2.as_mut().map(|r| r.step_on_device(tokens)).transpose()?,
                    ),
                };
                // The guide may live on another device of the same backend.
                let device = &self.target.device;
                let g = g.to_device(device);
                let r = r.map(|r| r.to_device(device));
                if on_host {
                    let reference = match (&s.2, r) {
                        (Some(session), Some(r)) => Some(logits_to_host(session.model(), r)?),
                        _ => None,
                    };
                    let scores = HostScores::new(
                        logits_to_host(s.0.model(), t)?,
                        logits_to_host(s.1.model(), g)?,
                        reference,
                        fusion,
                        cut,
                    );
                    let fused = scores.fused.clone();
                    *last.borrow_mut() = Some(scores);
                    Ok(Next::Scores(fused))
                } else {
                    let fused = fuse_tensors(fusion, t.clone(), &g, r.as_ref(), cut);
                    let mut checked = vec![(s.0.model(), &t), (s.1.model(), &g)];
                    if let (Some(session), Some(r)) = (&s.2, &r) {
                        checked.push((session.model(), r));
                    }
                    let ids = choose_ids(fused, &checked, &self.generation.sampling, draws)?;
                    Ok(Next::Chosen(ids))
                }
            },
            &mut |ev: TokenEvent| {
                if let Some(l) = last.borrow().as_ref().filter(|_| self.config.explain) {
                    let (lt, lg) = (
                        log_softmax(&l.target[ev.row]),
                        log_softmax(&l.guide[ev.row]),
                    );
                    let y = ev.token as usize;
                    let at = |lp: &[f32]| lp.get(y).copied().unwrap_or(f32::NEG_INFINITY);
                    let reward_lp = at(&lg);
                    let reference_lp = l.reference.as_ref().map(|r| at(&log_softmax(&r[ev.row])));
                    explanations.borrow_mut()[ev.row].push(TokenExplanation {
                        token: choice(ev.token),
                        target_top: choice(argmax(&l.target[ev.row])),
                        reward_top: choice(argmax(&l.guide[ev.row])),
                        fused_top: choice(argmax(&l.fused[ev.row])),
                        target_logprob: lt[y],
                        reward_logprob: reward_lp,
                        reference_logprob: reference_lp,
                        implicit_reward: reward_lp - reference_lp.unwrap_or(lt[y]),
                    });
                }
                on_token(ev);
            },
        )?;
        let decode_s = t0.elapsed().as_secs_f64();
        let gens = finish(rows, &t_refs, prefill_s, decode_s);
        Ok(gens
            .into_iter()
            .zip(explanations.into_inner())
            .map(|(generation, explain)| TitaGeneration {
                generation,
                explain,
            })
            .collect())
    }
}
