//! The decode step of guided decoding: the target's and every guide branch's next-token logits,
//! fused by the method and chosen on the device, or on the host for explanations and log-probs.

use burn::tensor::{backend::Backend, Tensor};
use tita_core::sampling::{argmax, SamplingConfig};
use tita_core::{Result, Tokenizer};

use crate::generator::{Next, Stepper, TokenEvent};
use crate::guidance::{log_softmax, Fusion, GuideModel, Step};
use crate::select::choose_ids;
use crate::session::{logits_to_host, Session};
use crate::tita::{Choice, TokenExplanation};

/// One step's scores of every branch on the host, and their fusion (the explanation path).
struct HostScores {
    target: Vec<Vec<f32>>,
    /// Per guide branch, per row.
    guides: Vec<Vec<Vec<f32>>>,
    fused: Vec<Vec<f32>>,
}

impl HostScores {
    fn new(fusion: &Fusion, step: Step, target: Vec<Vec<f32>>, guides: Vec<Vec<Vec<f32>>>) -> Self {
        let fused = (0..target.len())
            .map(|i| {
                let g: Vec<&[f32]> = guides.iter().map(|g| g[i].as_slice()).collect();
                fusion.fuse_host(step, &target[i], &g)
            })
            .collect();
        HostScores {
            target,
            guides,
            fused,
        }
    }
}

/// The explanation view: each token's favourites and log-probs, per row.
struct Explainer<'t> {
    tokenizer: &'t Tokenizer,
    rows: Vec<Vec<TokenExplanation>>,
}

impl Explainer<'_> {
    fn choice(&self, id: u32) -> Choice {
        Choice {
            id,
            text: self.tokenizer.decode(&[id], false).unwrap_or_default(),
        }
    }

    fn record(&mut self, fusion: &Fusion, scores: &HostScores, row: usize, token: u32) {
        let y = token as usize;
        let at = |logits: &[f32]| {
            log_softmax(logits)
                .get(y)
                .copied()
                .unwrap_or(f32::NEG_INFINITY)
        };
        let target_lp = at(&scores.target[row]);
        let guide_lps: Vec<f32> = scores.guides.iter().map(|g| at(&g[row])).collect();
        let reference = fusion
            .guides()
            .iter()
            .position(|g| g.model == GuideModel::Reference);
        // The first guide branch stands for "the guide" (every method has one).
        let guide = scores
            .guides
            .first()
            .map_or(&scores.target[row], |g| &g[row]);
        let explanation = TokenExplanation {
            token: self.choice(token),
            target_top: self.choice(argmax(&scores.target[row])),
            reward_top: self.choice(argmax(guide)),
            fused_top: self.choice(argmax(&scores.fused[row])),
            target_logprob: target_lp,
            reward_logprob: guide_lps.first().copied().unwrap_or(target_lp),
            reference_logprob: reference.map(|i| guide_lps[i]),
            implicit_reward: fusion.implicit_reward(target_lp, &guide_lps),
        };
        self.rows[row].push(explanation);
    }
}

/// Guided decoding's [`Stepper`]: steps the target and every guide branch, fuses.
pub(crate) struct Fused<'a, 'm, B: Backend> {
    fusion: &'a Fusion,
    target: Session<'m, B>,
    guides: Vec<Session<'m, B>>,
    /// The prefill's logits, until the first step uses them.
    first: Option<(Tensor<B, 2>, Vec<Tensor<B, 2>>)>,
    /// Answer tokens chosen so far.
    chosen: usize,
    sampling: &'a SamplingConfig,
    on_host: bool,
    /// The scores the last tokens were chosen from (host path).
    last: Option<HostScores>,
    explainer: Option<Explainer<'a>>,
}

impl<'a, 'm, B: Backend> Fused<'a, 'm, B> {
    /// `explain`: the tokenizer to name tokens with, when explanations are wanted (they need
    /// `on_host`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        fusion: &'a Fusion,
        target: Session<'m, B>,
        guides: Vec<Session<'m, B>>,
        first: (Tensor<B, 2>, Vec<Tensor<B, 2>>),
        sampling: &'a SamplingConfig,
        on_host: bool,
        explain: Option<&'a Tokenizer>,
        batch: usize,
    ) -> Self {
        Fused {
            fusion,
            target,
            guides,
            first: Some(first),
            chosen: 0,
            sampling,
            on_host: on_host || explain.is_some(),
            last: None,
            explainer: explain.map(|tokenizer| Explainer {
                tokenizer,
                rows: vec![Vec::new(); batch],
            }),
        }
    }

    /// Each row's explanations (empty without `explain`).
    pub(crate) fn into_explanations(self) -> Vec<Vec<TokenExplanation>> {
        let batch = self.target.batch();
        self.explainer
            .map_or_else(|| vec![Vec::new(); batch], |e| e.rows)
    }
}

impl<B: Backend> Stepper for Fused<'_, '_, B> {
    fn has_room(&self) -> bool {
        self.target.has_room() && self.guides.iter().all(Session::has_room)
    }

    fn next(&mut self, fed: Option<&[u32]>, draws: &[f64]) -> Result<Next> {
        let (t, g) = match fed {
            None => self
                .first
                .take()
                .expect("the prefill's logits are used once"),
            Some(tokens) => (
                self.target.step_on_device(tokens)?,
                self.guides
                    .iter_mut()
                    .map(|s| s.step_on_device(tokens))
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        self.chosen += 1;
        let step = Step { t: self.chosen };
        // A guide may live on another device of the same backend.
        let device = t.device();
        let g: Vec<Tensor<B, 2>> = g.into_iter().map(|l| l.to_device(&device)).collect();
        if self.on_host {
            let target = logits_to_host(self.target.model(), t)?;
            let guides = self
                .guides
                .iter()
                .zip(g)
                .map(|(s, l)| logits_to_host(s.model(), l))
                .collect::<Result<Vec<_>>>()?;
            let scores = HostScores::new(self.fusion, step, target, guides);
            let fused = scores.fused.clone();
            self.last = Some(scores);
            Ok(Next::Scores(fused))
        } else {
            let fused = self.fusion.fuse_device(step, t.clone(), &g);
            let mut checked = vec![(self.target.model(), &t)];
            checked.extend(self.guides.iter().map(Session::model).zip(&g));
            Ok(Next::Chosen(choose_ids(
                fused,
                &checked,
                self.sampling,
                draws,
            )?))
        }
    }

    fn observe(&mut self, event: &TokenEvent) {
        if let (Some(explainer), Some(scores)) = (&mut self.explainer, &self.last) {
            explainer.record(self.fusion, scores, event.row, event.token);
        }
    }
}
