//! The burn-op path of each kernel: what the model forward computes today (`nn::Linear` on the
//! transposed weight, `nn::RmsNorm`, `activation::silu`), on any backend. The kernels are tested
//! against these.

use burn::tensor::backend::Backend;
use burn::tensor::{activation, DType, Tensor};

use crate::Epilogue;

/// `x · wᵀ` (`w` `[N, K]`, or `[2N, K]` packed for [`Epilogue::SiluGateUp`]) and its epilogue.
pub fn gemv<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    epilogue: Epilogue<Tensor<B, 2>>,
) -> Tensor<B, 2> {
    let [m, _] = x.dims();
    let [rows, _] = w.dims();
    let y = x.matmul(w.transpose());
    match epilogue {
        Epilogue::None => y,
        Epilogue::Residual(residual) => y + residual,
        Epilogue::SiluGateUp => {
            let n = rows / 2;
            let gate = y.clone().slice([0..m, 0..n]);
            let up = y.slice([0..m, n..rows]);
            activation::silu(gate) * up
        }
    }
}

/// burn's `nn::RmsNorm::forward`: the mean of squares in f32, the division in x's dtype.
pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let dtype = x.dtype();
    let rms = (x.clone().cast(DType::F32).square().mean_dim(1) + eps).sqrt();
    (x / rms.cast(dtype)) * weight.unsqueeze()
}
