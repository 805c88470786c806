//! tita-kernels: the decode step's kernels (issue 24) as cubecl `#[cube]` kernels, launched on
//! the handles of burn tensors through burn's backend-extension route (a trait implemented for
//! `CubeBackend<R, F, I, BT>`, as in burn's `examples/custom-cubecl-kernel`), so that the same
//! kernels run on CUDA and, in CI, on wgpu (lavapipe).
//!
//! - [`gemv`]: `[M ≤ 4, K] × [N, K]ᵀ` with weights in transformers' `[out, in]` layout (K
//!   contiguous), f32 accumulation, and the epilogues of [`Epilogue`]: a residual add (o_proj,
//!   down_proj) or `silu(gate) · up` over a packed `gate | up` weight.
//! - [`rms_norm`]: LLaMA's RMSNorm in one launch.
//!
//! [`reference`] is the burn-op path each kernel computes (and is tested against). Every launch
//! goes through [`launches`]' counter, so a test can hold a decode layer to its launch budget.
//!
//! A kernel crate of its own rather than a module of tita-decode: the model forward that will
//! call these kernels lives in tita-models, below tita-decode.

pub mod reference;

#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "cube")]
pub use cube::{bench, vector_size_for};

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use std::cell::Cell;
use tita_core::{Error, Result};

/// The most rows (batched sequences) a GEMV launch takes: decode batches beyond it are GEMMs.
pub const MAX_GEMV_ROWS: usize = 4;

/// What a GEMV does with each output besides the product.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Epilogue<T> {
    /// `x · wᵀ`.
    None,
    /// `x · wᵀ + residual` (`residual` is `[M, N]`, the output's shape).
    Residual(T),
    /// `silu(x · gateᵀ) · (x · upᵀ)` with `w = [gate; up]` (`[2N, K]`); the output is `[M, N]`.
    SiluGateUp,
}

impl<T> Epilogue<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Epilogue<U> {
        match self {
            Epilogue::None => Epilogue::None,
            Epilogue::Residual(r) => Epilogue::Residual(f(r)),
            Epilogue::SiluGateUp => Epilogue::SiluGateUp,
        }
    }
}

/// The kernels a backend runs natively; the free functions of this crate check shapes and
/// call these.
pub trait KernelBackend: Backend {
    /// `x` `[M, K]`, `w` `[rows, K]`, a residual `[M, N]`; shapes and dtypes already checked.
    fn gemv(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        epilogue: Epilogue<FloatTensor<Self>>,
    ) -> FloatTensor<Self>;

    /// `x` `[M, H]`, `weight` `[H]`; shapes already checked.
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;

    /// How the kernels run on `device`: the reduction (plane or shared memory, over how many
    /// lanes) and the widest loads, for logs and benchmark headers.
    fn describe(device: &Self::Device) -> String;
}

thread_local! {
    static SHARED_REDUCTION: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the kernels' shared-memory reduction even where the runtime has plane
/// operations, so that tests cover both paths on one device.
pub fn with_shared_reduction<T>(f: impl FnOnce() -> T) -> T {
    let before = SHARED_REDUCTION.with(|c| c.replace(true));
    let out = f();
    SHARED_REDUCTION.with(|c| c.set(before));
    out
}

#[allow(dead_code)] // only the cube kernels reduce
pub(crate) fn shared_reduction_forced() -> bool {
    SHARED_REDUCTION.with(Cell::get)
}

thread_local! {
    // Per thread, so that tests running side by side count only their own launches.
    static LAUNCHES: Cell<u64> = const { Cell::new(0) };
}

/// Kernel launches this thread has made through this crate (its own kernels and the copies it
/// asked burn for), since the thread began.
pub fn launches() -> u64 {
    LAUNCHES.with(Cell::get)
}

#[allow(dead_code)] // only the cube kernels launch
pub(crate) fn count_launch() {
    LAUNCHES.with(|c| c.set(c.get() + 1));
}

fn argument(name: &str, msg: String) -> Error {
    Error::Argument {
        name: name.to_string(),
        msg,
    }
}

/// `x · wᵀ` and its [`Epilogue`] in one launch: `x` `[M, K]` (`1 ≤ M ≤` [`MAX_GEMV_ROWS`]), `w`
/// `[N, K]` (`[2N, K]` for [`Epilogue::SiluGateUp`]), a residual `[M, N]`; all of one float
/// dtype.
pub fn gemv<B: KernelBackend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    epilogue: Epilogue<Tensor<B, 2>>,
) -> Result<Tensor<B, 2>> {
    let [m, k] = x.dims();
    let [rows, kw] = w.dims();
    if m == 0 || m > MAX_GEMV_ROWS {
        return Err(argument(
            "x",
            format!("a GEMV takes 1 to {MAX_GEMV_ROWS} rows, got {m}"),
        ));
    }
    if k == 0 || kw != k {
        return Err(argument(
            "w",
            format!("weight is [{rows}, {kw}], expected [out, {k}] (x is [{m}, {k}])"),
        ));
    }
    let n = match &epilogue {
        Epilogue::SiluGateUp if !rows.is_multiple_of(2) => {
            return Err(argument(
                "w",
                format!("a packed gate|up weight has an even number of rows, got {rows}"),
            ))
        }
        Epilogue::SiluGateUp => rows / 2,
        _ => rows,
    };
    if n == 0 {
        return Err(argument("w", "weight has no rows".to_string()));
    }
    if x.dtype() != w.dtype() {
        return Err(argument(
            "w",
            format!("weight is {:?}, x is {:?}", w.dtype(), x.dtype()),
        ));
    }
    if let Epilogue::Residual(r) = &epilogue {
        if r.dims() != [m, n] || r.dtype() != x.dtype() {
            return Err(argument(
                "residual",
                format!(
                    "residual is {:?} {:?}, expected [{m}, {n}] {:?}",
                    r.dims(),
                    r.dtype(),
                    x.dtype()
                ),
            ));
        }
    }
    Ok(Tensor::from_primitive(TensorPrimitive::Float(B::gemv(
        x.into_primitive().tensor(),
        w.into_primitive().tensor(),
        epilogue.map(|r| r.into_primitive().tensor()),
    ))))
}

/// RMSNorm over the last axis in one launch: `x / sqrt(mean(x²) + eps) · weight`, in f32 with
/// one rounding to the dtype at the end; `x` `[M, H]`, `weight` `[H]`.
pub fn rms_norm<B: KernelBackend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Result<Tensor<B, 2>> {
    let [m, h] = x.dims();
    let [hw] = weight.dims();
    if m == 0 || h == 0 || hw != h || weight.dtype() != x.dtype() {
        return Err(argument(
            "weight",
            format!(
                "weight is [{hw}] {:?}, x is [{m}, {h}] {:?}: expected [{h}] of x's dtype",
                weight.dtype(),
                x.dtype()
            ),
        ));
    }
    Ok(Tensor::from_primitive(TensorPrimitive::Float(B::rms_norm(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        eps,
    ))))
}
