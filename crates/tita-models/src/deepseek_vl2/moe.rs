//! The feed-forward halves of DeepSeek-V2 layers: a dense SwiGLU MLP, or routed experts plus
//! always-on shared experts. The gate's logits and scores are computed on the device in f32;
//! the choice of experts is made on the host from the scores (a few values per token), so that
//! only the chosen experts run and, in a decode step, only their weights are read.

use burn::module::{Module, Param};
use burn::tensor::{
    activation, backend::Backend, DType, IndexingUpdateOp, Int, Tensor, TensorData,
};
use tita_core::{Activation, Result};

use crate::deepseek_vl2::config::{MoeConfig, Scoring, TopkMethod};
use crate::layers::linear;
use crate::llama::Mlp;
use crate::scope::Scope;
use crate::weights::{cast, TensorSource};

/// A SwiGLU MLP `hidden -> inter -> hidden` without biases (`gate_proj`, `up_proj`,
/// `down_proj` under `w`): a dense layer, an expert, or the shared experts.
pub fn load_mlp<B: Backend>(
    mut w: Scope<'_, impl TensorSource>,
    (hidden, inter): (usize, usize),
    act: Activation,
    split: usize,
    device: &B::Device,
) -> Result<Mlp<B>> {
    Ok(Mlp {
        gate_proj: linear(w.pp("gate_proj"), hidden, inter, false, device)?,
        up_proj: linear(w.pp("up_proj"), hidden, inter, false, device)?,
        down_proj: linear(w.pp("down_proj"), inter, hidden, false, device)?,
        act,
        split,
    })
}

/// The experts one token goes to, and the weights their outputs are summed with.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// In the order the selection ranks them (best first).
    pub experts: Vec<usize>,
    pub weights: Vec<f32>,
}

/// The router (`mlp.gate`): `weight` `[experts, hidden]` and, for `noaux_tc`,
/// `e_score_correction_bias`.
#[derive(Module, Debug)]
pub struct Gate<B: Backend> {
    /// Stored `[experts, hidden]`, held as `[hidden, experts]`.
    pub weight: Param<Tensor<B, 2>>,
    /// Added to the scores for choosing only (not to the weights). Kept on the host too.
    pub e_score_correction_bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub bias: Vec<f32>,
    #[module(skip)]
    pub config: MoeConfig,
}

impl<B: Backend> Gate<B> {
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        hidden: usize,
        c: &MoeConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let e = c.n_routed_experts;
        let weight = w.param_transposed("weight", &[e, hidden], device)?;
        let (param, bias) = match c.topk_method {
            TopkMethod::NoauxTc { .. } => {
                let p = w.param("e_score_correction_bias", [e], device)?;
                let host = cast(p.val(), DType::F32)
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap_or_default();
                (Some(p), host)
            }
            _ => (None, Vec::new()),
        };
        Ok(Gate {
            weight,
            e_score_correction_bias: param,
            bias,
            config: c.clone(),
        })
    }

    /// Gate logits and scores of `x` `[tokens, hidden]`, both `[tokens, experts]` in f32.
    pub fn scores(&self, x: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let logits = cast(x, DType::F32).matmul(cast(self.weight.val(), DType::F32));
        let scores = match self.config.scoring {
            Scoring::Softmax => activation::softmax(logits.clone(), 1),
            Scoring::Sigmoid => activation::sigmoid(logits.clone()),
        };
        (logits, scores)
    }

    /// The scores the experts are chosen by: with the correction bias for `noaux_tc`.
    pub fn scores_for_choice(&self, scores: &[f32]) -> Vec<f32> {
        if self.bias.is_empty() {
            return scores.to_vec();
        }
        scores.iter().zip(&self.bias).map(|(s, b)| s + b).collect()
    }

    /// Each group's score for the grouped methods (empty for `greedy`): the best score of the
    /// group (`group_limited_greedy`), or the sum of its two best biased scores (`noaux_tc`).
    pub fn group_scores(&self, choice: &[f32]) -> Vec<f32> {
        let (n_group, two) = match self.config.topk_method {
            TopkMethod::Greedy => return Vec::new(),
            TopkMethod::GroupLimitedGreedy { n_group, .. } => (n_group, false),
            TopkMethod::NoauxTc { n_group, .. } => (n_group, true),
        };
        choice
            .chunks(choice.len() / n_group)
            .map(|g| {
                let best = top_k(g, if two { 2 } else { 1 });
                if two {
                    g[best[0]] + g[best[1]]
                } else {
                    g[best[0]]
                }
            })
            .collect()
    }

    /// The route of one token from its scores, as the authors' gate chooses: groups outside
    /// the best `topk_group` have their scores set to 0.0 (not -inf) before the top-k; the
    /// weights are the chosen scores (for `noaux_tc` the unbiased ones), divided by their sum
    /// (+1e-20) when `norm_topk_prob` and more than one is chosen, times
    /// `routed_scaling_factor`.
    pub fn route(&self, scores: &[f32]) -> Route {
        let c = &self.config;
        let k = c.num_experts_per_tok;
        let mut choice = self.scores_for_choice(scores);
        if let TopkMethod::GroupLimitedGreedy { topk_group, .. }
        | TopkMethod::NoauxTc { topk_group, .. } = c.topk_method
        {
            let groups = self.group_scores(&choice);
            let kept = top_k(&groups, topk_group);
            let per_group = choice.len() / groups.len();
            for (g, chunk) in choice.chunks_mut(per_group).enumerate() {
                if !kept.contains(&g) {
                    chunk.fill(0.0);
                }
            }
        }
        let experts = top_k(&choice, k);
        // `noaux_tc` weighs by the unbiased, unmasked scores; the others by the (masked)
        // values they chose from, so an expert of a dropped group weighs 0.0.
        let weights_from = match c.topk_method {
            TopkMethod::NoauxTc { .. } => scores,
            _ => &choice[..],
        };
        let mut weights: Vec<f32> = experts.iter().map(|&e| weights_from[e]).collect();
        let factor = c.routed_scaling_factor as f32;
        if k > 1 && c.norm_topk_prob {
            let sum = weights.iter().sum::<f32>() + 1e-20;
            weights.iter_mut().for_each(|w| *w = *w / sum * factor);
        } else {
            weights.iter_mut().for_each(|w| *w *= factor);
        }
        Route { experts, weights }
    }
}

/// Indices of the `k` largest values, largest first (ties: the lower index first).
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Routed experts plus shared experts (`mlp` of a MoE layer).
#[derive(Module, Debug)]
pub struct Moe<B: Backend> {
    pub gate: Gate<B>,
    pub experts: Vec<Mlp<B>>,
    pub shared_experts: Option<Mlp<B>>,
}

impl<B: Backend> Moe<B> {
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        hidden: usize,
        act: Activation,
        c: &MoeConfig,
        split: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let inter = c.moe_intermediate_size;
        let experts = (0..c.n_routed_experts)
            .map(|e| {
                load_mlp(
                    w.pp(format_args!("experts.{e}")),
                    (hidden, inter),
                    act,
                    split,
                    device,
                )
            })
            .collect::<Result<_>>()?;
        let shared_experts = c
            .n_shared_experts
            .map(|n| {
                load_mlp(
                    w.pp("shared_experts"),
                    (hidden, n * inter),
                    act,
                    split,
                    device,
                )
            })
            .transpose()?;
        Ok(Moe {
            gate: Gate::load(w.pp("gate"), hidden, c, device)?,
            experts,
            shared_experts,
        })
    }

    /// The routes of `x`'s tokens `[tokens, hidden]` (reads the scores back to the host).
    pub fn routes(&self, x: Tensor<B, 2>) -> Vec<Route> {
        let n_experts = self.experts.len();
        let (_, scores) = self.gate.scores(x);
        let scores: Vec<f32> = scores.into_data().to_vec::<f32>().unwrap_or_default();
        scores
            .chunks(n_experts)
            .map(|row| self.gate.route(row))
            .collect()
    }

    /// Each token through its chosen experts, weighted and summed, plus the shared experts.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, h] = x.dims();
        let n = b * s;
        let flat = x.clone().reshape([n, h]);
        let routes = self.routes(flat.clone());
        let routed = if n == 1 {
            // A decode step: the chosen experts in turn, as the reference sums them.
            let r = &routes[0];
            r.experts
                .iter()
                .zip(&r.weights)
                .map(|(&e, &w)| self.experts[e].forward(x.clone()).mul_scalar(w))
                .reduce(|a, b| a + b)
                .unwrap_or_else(|| x.zeros_like())
        } else {
            self.grouped(flat, &routes).reshape([b, s, h])
        };
        match &self.shared_experts {
            Some(shared) => routed + shared.forward(x),
            None => routed,
        }
    }

    /// Several tokens: each expert runs once on the tokens routed to it, and its weighted
    /// outputs are added at their rows.
    fn grouped(&self, flat: Tensor<B, 2>, routes: &[Route]) -> Tensor<B, 2> {
        let [n, h] = flat.dims();
        let device = flat.device();
        let dtype = flat.dtype();
        let mut tokens: Vec<(Vec<i64>, Vec<f32>)> =
            vec![(Vec::new(), Vec::new()); self.experts.len()];
        for (t, r) in routes.iter().enumerate() {
            for (&e, &w) in r.experts.iter().zip(&r.weights) {
                tokens[e].0.push(t as i64);
                tokens[e].1.push(w);
            }
        }
        let mut out = Tensor::<B, 2>::zeros([n, h], (&device, dtype));
        for (expert, (rows, weights)) in self.experts.iter().zip(tokens) {
            let m = rows.len();
            if m == 0 {
                continue;
            }
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [m]), &device);
            let w = cast(
                Tensor::<B, 2>::from_data(TensorData::new(weights, [m, 1]), &device),
                dtype,
            );
            let y = expert
                .forward(flat.clone().select(0, idx.clone()).reshape([1, m, h]))
                .reshape([m, h])
                * w;
            out = out.select_assign(0, idx, y, IndexingUpdateOp::Add);
        }
        out
    }
}

/// A layer's feed-forward half.
// One per layer: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum FeedForward<B: Backend> {
    Dense(Mlp<B>),
    Moe(Moe<B>),
}

impl<B: Backend> FeedForward<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            FeedForward::Dense(m) => m.forward(x),
            FeedForward::Moe(m) => m.forward(x),
        }
    }
}
