//! Small building blocks shared by the model files: burn's `nn` modules filled from a
//! checkpoint, and the activations the configs name.

use burn::nn;
use burn::tensor::{activation, backend::Backend, Tensor};
use tita_core::{Activation, Result};

use crate::weights::TensorSource;

/// `nn::Linear` from a PyTorch `[out, in]` weight (and `.bias` when `bias`).
pub fn linear<B: Backend>(
    w: &mut impl TensorSource,
    prefix: &str,
    in_features: usize,
    out_features: usize,
    bias: bool,
    device: &B::Device,
) -> Result<nn::Linear<B>> {
    let weight = w.param_transposed(
        &format!("{prefix}.weight"),
        &[out_features, in_features],
        device,
    )?;
    let bias = if bias {
        Some(w.param(&format!("{prefix}.bias"), [out_features], device)?)
    } else {
        None
    };
    Ok(nn::Linear { weight, bias })
}

/// `nn::LayerNorm` from `.weight` and `.bias`.
pub fn layer_norm<B: Backend>(
    w: &mut impl TensorSource,
    prefix: &str,
    dim: usize,
    eps: f64,
    device: &B::Device,
) -> Result<nn::LayerNorm<B>> {
    // `epsilon` is private: build through the config, then put the stored values in.
    let mut norm = nn::LayerNormConfig::new(dim).with_epsilon(eps).init(device);
    norm.gamma = w.param(&format!("{prefix}.weight"), [dim], device)?;
    norm.beta = Some(w.param(&format!("{prefix}.bias"), [dim], device)?);
    Ok(norm)
}

/// `nn::RmsNorm` (LLaMA's: `x / sqrt(mean(x²) + eps) · weight`, computed in f32).
pub fn rms_norm<B: Backend>(
    w: &mut impl TensorSource,
    prefix: &str,
    dim: usize,
    eps: f64,
    device: &B::Device,
) -> Result<nn::RmsNorm<B>> {
    Ok(nn::RmsNorm {
        gamma: w.param(&format!("{prefix}.weight"), [dim], device)?,
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
