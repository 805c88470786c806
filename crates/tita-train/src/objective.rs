//! What training minimises: summed response log-probabilities of a batch in one forward pass,
//! DPO's loss on them, and SFT's token cross-entropy.

use burn::tensor::{activation, backend::Backend, Int, Tensor, TensorData};
use tita_core::Result;
use tita_models::Vlm;

use crate::data::Dataset;

/// One sequence to score: a prompt, a response, and the image of the prompt.
#[derive(Debug, Clone, Copy)]
pub struct Sequence<'a> {
    pub prompt: &'a [u32],
    pub response: &'a [u32],
    /// Index into the dataset's images.
    pub image: usize,
}

impl Sequence<'_> {
    pub fn len(&self) -> usize {
        self.prompt.len() + self.response.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `log p(response | prompt, image)` of every sequence, summed over the response tokens (EOS
/// included, prompt excluded): `[n]`. One left-padded forward pass; each distinct image is
/// encoded once; only the response positions go through the vocabulary projection.
pub fn response_logps<B: Backend>(
    model: &Vlm<B>,
    data: &Dataset,
    seqs: &[Sequence],
    device: &B::Device,
) -> Result<Tensor<B, 1>> {
    let n = seqs.len();
    let width = seqs.iter().map(Sequence::len).max().unwrap_or(0);
    let resp = seqs.iter().map(|s| s.response.len()).max().unwrap_or(0);

    // Distinct images -> features, then one row of features per sequence.
    let mut distinct: Vec<usize> = seqs.iter().map(|s| s.image).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let pixels: Vec<_> = distinct.iter().map(|&i| &data.images[i]).collect();
    let features = model.encode_images(model.pixels_tensor(&pixels, device)?)?;
    let rows: Vec<usize> = seqs
        .iter()
        .map(|s| distinct.binary_search(&s.image).expect("listed above"))
        .collect();
    let features = features.select(&rows);

    let mut ids = Vec::with_capacity(n);
    let mut pad = Vec::with_capacity(n);
    let mut targets = Vec::with_capacity(n * resp);
    let mut mask = Vec::with_capacity(n * resp);
    for s in seqs {
        let p = width - s.len();
        // Pad id 0 is never attended to (the cache masks padding), so its value is irrelevant.
        let row: Vec<u32> = std::iter::repeat_n(0, p)
            .chain(s.prompt.iter().copied())
            .chain(s.response.iter().copied())
            .collect();
        // The last `resp` positions hold every response; shorter ones are masked.
        for j in 0..resp {
            let is_response = j >= resp - s.response.len();
            targets.push(row[width - resp + j] as i64);
            mask.push(if is_response { 1f32 } else { 0.0 });
        }
        ids.push(row);
        pad.push(p);
    }

    let embeds = model.embed(&ids, Some(features), device)?;
    let mut cache = model.new_padded_cache(pad);
    let hidden = model.forward(embeds, &mut cache)?;
    let h = hidden.dims()[2];
    // Position t predicts token t + 1.
    let hidden = hidden.slice([0..n, width - resp - 1..width - 1, 0..h]);
    let logits = model.logits(hidden);
    let targets = Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [n, resp, 1]), device);
    let picked = logits.clone().gather(2, targets).reshape([n, resp]) - log_sum_exp(logits);
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [n, resp]), device);
    Ok((picked * mask).sum_dim(1).reshape([n]))
}

/// `log Σ_v exp(z_v)` over the last axis: `[n, r]`.
///
/// Only the target tokens' log-probs are needed, so the full log-softmax is never formed. The
/// shift that keeps `exp` finite is one scalar (the largest logit) rather than a per-row
/// maximum: broadcasting a per-row value over the vocabulary is several times slower on the
/// CPU backend. A row whose maximum is far below the global one could underflow, so that case
/// (never seen with real logits) takes the per-row path.
fn log_sum_exp<B: Backend>(z: Tensor<B, 3>) -> Tensor<B, 2> {
    let [n, r, _] = z.dims();
    let row_max = z.clone().detach().max_dim(2);
    let host: Vec<f32> = row_max
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    let (lo, hi) = host
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    if hi.is_finite() && lo.is_finite() && hi - lo < 60.0 {
        let shifted = z.sub_scalar(hi).exp().sum_dim(2).log().add_scalar(hi);
        shifted.reshape([n, r])
    } else {
        ((z - row_max.clone()).exp().sum_dim(2).log() + row_max).reshape([n, r])
    }
}

/// DPO's per-pair quantities.
pub struct DpoTerms<B: Backend> {
    /// `-log σ(β·[(π_c - ref_c) - (π_r - ref_r)])`, per pair.
    pub losses: Tensor<B, 1>,
    /// Implicit rewards `β·(π - ref)` of the chosen and rejected responses.
    pub chosen_rewards: Tensor<B, 1>,
    pub rejected_rewards: Tensor<B, 1>,
}

/// Direct Preference Optimisation (Rafailov et al., 2023) on summed response log-probs of the
/// policy and of the frozen reference; `β` scales the implicit reward.
pub fn dpo_loss<B: Backend>(
    policy_chosen: Tensor<B, 1>,
    policy_rejected: Tensor<B, 1>,
    reference_chosen: Tensor<B, 1>,
    reference_rejected: Tensor<B, 1>,
    beta: f64,
) -> DpoTerms<B> {
    let chosen_rewards = (policy_chosen - reference_chosen).mul_scalar(beta);
    let rejected_rewards = (policy_rejected - reference_rejected).mul_scalar(beta);
    let losses = activation::log_sigmoid(chosen_rewards.clone() - rejected_rewards.clone()).neg();
    DpoTerms {
        losses,
        chosen_rewards,
        rejected_rewards,
    }
}
