//! Token choice as tensor ops, so that a decode step sends the device the fed ids (and the
//! rows' random draws) and brings back only the chosen ids, never a vocabulary of scores (the
//! methods' fusions run on the device too: [`crate::guidance`]). The host forms
//! ([`Fusion::fuse_host`](crate::Fusion::fuse_host), [`Sampler::pick`]) stay for what needs the
//! scores themselves: explanations and log-probs.
//!
//! Both forms compute the same formulas; the device one in f32 throughout (the host one sums
//! the softmax in f64), so a token whose score ties another's within f32 rounding, or whose
//! cumulative probability lies within rounding of the draw, may go the other way.
//!
//! [`Sampler::pick`]: tita_core::sampling::Sampler::pick

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use tita_core::sampling::SamplingConfig;
use tita_core::{Error, Result};
use tita_models::Vlm;

use crate::session::logits_to_host;

/// Every row's next token as `[rows, 1]` ids: the argmax (lowest id on ties) when greedy;
/// otherwise the token that the row's draw `u` falls on, walking the tokens that temperature,
/// top-k and top-p keep in id order, as [`Sampler::pick`](tita_core::sampling::Sampler::pick)
/// does. Without top-k and top-p nothing is sorted.
pub fn choose<B: Backend>(
    scores: Tensor<B, 2>,
    sampling: &SamplingConfig,
    draws: &[f64],
) -> Tensor<B, 2, Int> {
    if sampling.temperature == 0.0 {
        return scores.argmax(1);
    }
    let [rows, vocab] = scores.dims();
    let device = scores.device();
    let scaled = scores.div_scalar(sampling.temperature);
    let max = scaled.clone().max_dim(1).expand([rows, vocab]);
    // Unnormalised probabilities in id order; impossible (-inf) tokens get 0.
    let mut weights = (scaled - max).exp();
    if sampling.top_k.is_some() || sampling.top_p.is_some() {
        weights = keep_top(weights, sampling.top_k, sampling.top_p);
    }
    let cumulative = weights.clone().cumsum(1);
    let total = cumulative.clone().slice([0..rows, vocab - 1..vocab]);
    let u: Vec<f32> = draws.iter().map(|&u| u as f32).collect();
    let u = Tensor::<B, 2>::from_data(TensorData::new(u, [rows, 1]), &device);
    // The first id whose cumulative mass exceeds u·total, never past the last possible one.
    let chosen = cumulative
        .lower_equal((u * total).expand([rows, vocab]))
        .int()
        .sum_dim(1);
    let last = Tensor::<B, 1, Int>::arange(0..vocab as i64, &device)
        .reshape([1, vocab])
        .expand([rows, vocab])
        .mask_fill(weights.lower_equal_elem(0.0), -1)
        .max_dim(1);
    chosen
        .clone()
        .mask_where(chosen.greater(last.clone()), last)
}

/// `weights` (`[rows, vocab]`, unnormalised probabilities) with 0 outside what top-k and top-p
/// keep: per row the first `count` tokens in the host sampler's order (weight descending, id
/// ascending), where `count` is at most `top_k` and, with `top_p`, the length of the smallest
/// prefix whose mass reaches it. The kept set is chosen by a threshold and the ids of the
/// tokens tied at it, so it does not depend on how a sort orders ties.
fn keep_top<B: Backend>(
    weights: Tensor<B, 2>,
    top_k: Option<usize>,
    top_p: Option<f32>,
) -> Tensor<B, 2> {
    let [rows, vocab] = weights.dims();
    let device = weights.device();
    let k = top_k.unwrap_or(vocab).clamp(1, vocab);
    // The sorted values are the same whatever order the ties come in.
    let sorted = weights.clone().sort_descending(1).slice([0..rows, 0..k]);
    let count = match top_p {
        Some(top_p) => {
            let probs = sorted.clone() / sorted.clone().sum_dim(1).expand([rows, k]);
            let below = probs.cumsum(1).lower_elem(top_p).int().sum_dim(1);
            below.add_scalar(1).clamp_max(k as i64)
        }
        None => Tensor::full([rows, 1], k as i64, &device),
    };
    let threshold = sorted
        .gather(1, count.clone().sub_scalar(1))
        .expand([rows, vocab]);
    let above = weights.clone().greater(threshold.clone());
    let tied = weights.clone().equal(threshold);
    // Of the tokens tied at the threshold, the lowest ids fill the places left.
    let room = (count - above.clone().int().sum_dim(1)).expand([rows, vocab]);
    let tie_rank = tied.clone().int().cumsum(1);
    let keep = above.bool_or(tied.bool_and(tie_rank.lower_equal(room)));
    weights.mask_fill(keep.bool_not(), 0.0)
}

/// Per row, whether `logits` hold a NaN or an infinity: `[rows, 1]`.
fn non_finite<B: Backend>(logits: &Tensor<B, 2>) -> Tensor<B, 2, Bool> {
    logits
        .clone()
        .is_nan()
        .bool_or(logits.clone().is_inf())
        .any_dim(1)
}

/// Chooses every row's token on the device (see [`choose`]) and brings back only the ids. A
/// row whose logits (of any model in `logits`) hold a NaN or an infinity is an error naming
/// the model and the first bad value, as on the host.
pub fn choose_ids<B: Backend>(
    scores: Tensor<B, 2>,
    logits: &[(&Vlm<B>, &Tensor<B, 2>)],
    sampling: &SamplingConfig,
    draws: &[f64],
) -> Result<Vec<u32>> {
    let mut ids = choose(scores, sampling, draws);
    // A flagged row reads -1 - (the model's index): one transfer carries ids and checks.
    for (m, (_, l)) in logits.iter().enumerate() {
        ids = ids.mask_fill(non_finite(l), -1 - m as i64);
    }
    let ids: Vec<i64> = ids
        .into_data()
        .convert::<i64>()
        .into_vec()
        .expect("int tensor");
    if let Some(&code) = ids.iter().find(|&&id| id < 0) {
        let (model, l) = logits[(-1 - code) as usize];
        // The error itself comes from the host check, which names the row and the value.
        logits_to_host(model, (*l).clone())?;
        return Err(Error::NonFinite {
            what: format!("the next-token logits of {}", model.name),
            detail: "a NaN or infinity (found on the device)".into(),
        });
    }
    Ok(ids.into_iter().map(|id| id as u32).collect())
}
