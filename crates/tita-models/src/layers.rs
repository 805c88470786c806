//! Small building blocks shared by the model files: burn's `nn` modules filled from a
//! checkpoint, and the activations the configs name.

use burn::nn;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{activation, backend::Backend, Tensor, TensorData};
use tita_core::{Activation, Result};

use crate::scope::Scope;
use crate::weights::TensorSource;

/// `nn::Linear` from the scope's PyTorch `[out, in]` `weight` (and `bias` when `bias`), or what
/// wraps one (a decoder projection that can carry a LoRA adapter: [`crate::lora::LoraLinear`]).
pub fn linear<B: Backend, L: From<nn::Linear<B>>>(
    mut w: Scope<'_, impl TensorSource>,
    in_features: usize,
    out_features: usize,
    bias: bool,
    device: &B::Device,
) -> Result<L> {
    let weight = w.param_transposed("weight", &[out_features, in_features], device)?;
    let bias = if bias {
        Some(w.param("bias", [out_features], device)?)
    } else {
        None
    };
    Ok(nn::Linear { weight, bias }.into())
}

/// `nn::LayerNorm` from the scope's `weight` and `bias`.
pub fn layer_norm<B: Backend>(
    mut w: Scope<'_, impl TensorSource>,
    dim: usize,
    eps: f64,
    device: &B::Device,
) -> Result<nn::LayerNorm<B>> {
    // `epsilon` is private: build through the config, then put the stored values in.
    let mut norm = nn::LayerNormConfig::new(dim).with_epsilon(eps).init(device);
    norm.gamma = w.param("weight", [dim], device)?;
    norm.beta = Some(w.param("bias", [dim], device)?);
    Ok(norm)
}

/// `nn::RmsNorm` (LLaMA's: `x / sqrt(mean(x²) + eps) · weight`, computed in f32) from the
/// scope's `weight`.
pub fn rms_norm<B: Backend>(
    mut w: Scope<'_, impl TensorSource>,
    dim: usize,
    eps: f64,
    device: &B::Device,
) -> Result<nn::RmsNorm<B>> {
    Ok(nn::RmsNorm {
        gamma: w.param("weight", [dim], device)?,
        epsilon: eps,
    })
}

pub fn activate<B: Backend, const D: usize>(x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
    match act {
        Activation::Silu => activation::silu(x),
        Activation::Gelu => activation::gelu(x),
        Activation::GeluTanh => activation::gelu_approximate(x),
        Activation::QuickGelu => x.clone() * activation::sigmoid(x.mul_scalar(1.702)),
        Activation::Relu => activation::relu(x),
    }
}

/// How many blocks [`project`] splits a decode step's products into on this backend: one per
/// core on burn-flex, whose matrix-vector products are otherwise single-threaded (it
/// parallelises only large products, or batches of them); 1 elsewhere.
pub fn matvec_split<B: Backend>(device: &B::Device) -> usize {
    if B::name(device).contains("flex") {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    }
}

/// `linear.forward(x)`; when only a few rows are multiplied (a decode step), the inner
/// dimension is cut into `split` contiguous blocks multiplied as one batch, which flex runs
/// one block per core, and the partial products are summed.
pub fn project<B: Backend>(linear: &nn::Linear<B>, x: Tensor<B, 3>, split: usize) -> Tensor<B, 3> {
    let [b, s, k] = x.dims();
    let w = linear.weight.val();
    let n = w.dims()[1];
    if split <= 1 || b * s > 8 || k % split != 0 {
        return linear.forward(x);
    }
    let blocks = w.reshape([split, k / split, n]);
    let y = x
        .reshape([b * s, split, k / split])
        .swap_dims(0, 1)
        .matmul(blocks)
        .sum_dim(0)
        .reshape([b, s, n]);
    match &linear.bias {
        Some(bias) => y + bias.val().unsqueeze::<3>(),
        None => y,
    }
}

/// Vocabulary logits of hidden states `[batch, seq, hidden]` in f32: through the untied head,
/// or through the token embedding (tied), as `[batch, seq, vocab]`.
pub fn vocab_logits<B: Backend>(
    lm_head: Option<&nn::Linear<B>>,
    embed_tokens: &burn::module::Param<Tensor<B, 2>>,
    hidden: Tensor<B, 3>,
    split: usize,
) -> Tensor<B, 3> {
    let logits = match lm_head {
        Some(head) => project(head, hidden, split),
        None => {
            let [b, s, h] = hidden.dims();
            let w = embed_tokens.val();
            let vocab = w.dims()[0];
            hidden
                .reshape([b * s, h])
                .matmul(w.transpose())
                .reshape([b, s, vocab])
        }
    };
    crate::weights::cast(logits, burn::tensor::DType::F32)
}

/// Whether causal attention runs as burn's fused op ([`attend_fused`]): on burn-flex, whose
/// flash kernel never writes the score matrix or the mask to memory (prefill of 600 tokens:
/// 1.12x faster on 2 cores, though the kernel is single-threaded; CLIP's unmasked attention,
/// which the composed form runs on every core, was not faster, so it keeps that form). Not
/// under autodiff, which composes it from ops anyway, and not on the GPU backends, where
/// cubecl's flash kernel has not been checked against the parity tests.
pub fn fused_attention<B: Backend>(device: &B::Device) -> bool {
    B::name(device) == "flex"
}

/// `softmax(q·kᵀ/√d)·v` by burn's fused attention, with scores and softmax in f32 on flex
/// whatever the weights are: `q` is `[batch, heads, s, d]`, `k` and `v` are `[batch, kv_heads,
/// t, d]` (each shared by `heads / kv_heads` query heads, repeated here). `causal` masks key `j`
/// for query `i` when `j > i + t - s` (the new block sits at the end of the keys).
pub fn attend_fused<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Tensor<B, 4> {
    let [b, h, _, d] = q.dims();
    let [_, kvh, t, _] = k.dims();
    let repeat = |x: Tensor<B, 4>| {
        if kvh == h {
            x
        } else {
            x.unsqueeze_dim::<5>(2)
                .repeat_dim(2, h / kvh)
                .reshape([b, h, t, d])
        }
    };
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    };
    attention(q, repeat(k), repeat(v), None, None, options)
}

/// Rotary inverse frequencies `1 / theta^(2i/dim)` for `i < dim / 2`, in f32 as transformers
/// computes them.
pub fn rope_inv_freq(theta: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / dim as f32))
        .collect()
}

/// Cos and sin tables of rotation angles (in f32) laid out as `shape`.
pub fn cos_sin<B: Backend, const D: usize>(
    angles: impl Iterator<Item = f32>,
    shape: [usize; D],
    device: &B::Device,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let (cos, sin): (Vec<f32>, Vec<f32>) = angles.map(|a| (a.cos(), a.sin())).unzip();
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}
