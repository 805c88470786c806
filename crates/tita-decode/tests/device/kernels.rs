//! The decode kernels of tita-kernels against the burn-op path they replace, on this backend:
//! GEMV (plain, + residual, silu(gate)·up) for M = 1..4 over every shape class (K below and
//! not a multiple of the widest load, N odd, a 7B-sized K), RMSNorm, and their launch count.
//!
//! Tolerances: f32 within 1e-5 of the burn path (O(1) outputs; the two sum in different
//! orders). f16: the kernel rounds once from an f32 sum, so it lies within 1e-3·max(1, |y|)
//! (an f16 half-ulp is 4.9e-4 at 1) of the f32 result on the same f16 inputs, and within
//! 4e-3·max(1, |y|) (four f16 ulps: burn rounds the product and each epilogue op) of burn's
//! own f16 path.

use burn::tensor::{DType, Tensor, TensorData};
use tita_kernels::{
    gemv, launches, reference, rms_norm, with_shared_reduction, Epilogue, KernelBackend,
};

#[cfg(feature = "cuda")]
type B = burn::backend::Cuda;
#[cfg(not(feature = "cuda"))]
type B = burn::backend::Wgpu;

/// (K, N): tiny, K and N odd (scalar loads); K a multiple of 2 only; K a multiple of 4 but
/// not 8 (CUDA's f16 width), N odd; a 7B-sized K with N odd and past one cube's outputs.
const GEMV_SHAPES: [(usize, usize); 4] = [(7, 5), (130, 33), (4100, 17), (4096, 67)];

/// Deterministic values in [-scale, scale), a different sequence per salt.
fn values(len: usize, salt: u32, scale: f32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| {
            let h = (i.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503))
                .wrapping_mul(2_246_822_519);
            ((h >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor2(rows: usize, cols: usize, salt: u32, scale: f32, dtype: DType) -> Tensor<B, 2> {
    Tensor::<B, 2>::from_data(
        TensorData::new(values(rows * cols, salt, scale), [rows, cols]),
        &Default::default(),
    )
    .cast(dtype)
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
}

/// The largest |a − b| / max(1, |b|), with where it is.
fn worst(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .enumerate()
        .fold((0.0, 0), |(w, wi), (i, d)| {
            assert!(d.is_finite(), "non-finite at {i}: {} vs {}", a[i], b[i]);
            if d > w {
                (d, i)
            } else {
                (w, wi)
            }
        })
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Plain,
    Residual,
    GateUp,
}

fn epilogue(kind: Kind, m: usize, n: usize, salt: u32, dtype: DType) -> Epilogue<Tensor<B, 2>> {
    match kind {
        Kind::Plain => Epilogue::None,
        Kind::Residual => Epilogue::Residual(tensor2(m, n, salt + 3, 1.0, dtype)),
        Kind::GateUp => Epilogue::SiluGateUp,
    }
}

/// Every shape class with every epilogue at `dtype`, M cycling so that each epilogue meets
/// M = 1..4 (every kernel variant costs a shader compilation on lavapipe), against the burn
/// path (at `dtype`, and in f32 on the same rounded inputs).
fn check_gemv(dtype: DType, tol_burn: f32, tol_f32: f32) {
    let kinds = [Kind::Plain, Kind::Residual, Kind::GateUp];
    for (si, (k, n)) in GEMV_SHAPES.into_iter().enumerate() {
        for (ki, kind) in kinds.into_iter().enumerate() {
            let m = 1 + (si + ki) % 4;
            let salt = (k * 31 + n * 7 + m) as u32 * 3 + ki as u32;
            let rows = if matches!(kind, Kind::GateUp) {
                2 * n
            } else {
                n
            };
            let x = tensor2(m, k, salt, 1.0, dtype);
            // Weights like a trained layer's: outputs of order 1 whatever K is.
            let w = tensor2(rows, k, salt + 1, 2.0 / (k as f32).sqrt(), dtype);
            let got = host(gemv(x.clone(), w.clone(), epilogue(kind, m, n, salt, dtype)).unwrap());
            let burn = host(reference::gemv(
                x.clone(),
                w.clone(),
                epilogue(kind, m, n, salt, dtype),
            ));
            let (d, i) = worst(&got, &burn);
            assert!(
                d <= tol_burn,
                "{dtype:?} {kind:?} m={m} k={k} n={n}: {d:e} at {i} ({} vs burn {})",
                got[i],
                burn[i]
            );
            if dtype != DType::F32 {
                let exact = host(reference::gemv(
                    x.cast(DType::F32),
                    w.cast(DType::F32),
                    epilogue(kind, m, n, salt, dtype).map(|r| r.cast(DType::F32)),
                ));
                let (d, i) = worst(&got, &exact);
                assert!(
                    d <= tol_f32,
                    "{dtype:?} {kind:?} m={m} k={k} n={n}: {d:e} at {i} ({} vs f32 {})",
                    got[i],
                    exact[i]
                );
            }
        }
    }
}

#[test]
fn gemv_matches_the_burn_path_at_f32() {
    eprintln!("kernels: {}", B::describe(&Default::default()));
    check_gemv(DType::F32, 1e-5, 0.0);
}

/// The shared-memory reduction (the path of runtimes without fixed-size planes) on a device
/// that has them too; where it has not, this repeats the path above.
#[test]
fn gemv_and_rms_norm_match_with_the_shared_memory_reduction() {
    with_shared_reduction(|| {
        check_gemv(DType::F32, 1e-5, 0.0);
        check_rms_norm(DType::F32, 1e-5, 0.0);
    });
}

#[test]
fn gemv_matches_the_burn_path_at_f16() {
    check_gemv(DType::F16, 4e-3, 1e-3);
}

/// H below, at, and not a multiple of the widest load; M = 1..4.
fn check_rms_norm(dtype: DType, tol_burn: f32, tol_f32: f32) {
    for (h, m) in [(7, 1), (130, 2), (4096, 3), (4098, 4)] {
        let salt = (h * 5 + m) as u32;
        let x = tensor2(m, h, salt, 3.0, dtype);
        let weight = tensor2(1, h, salt + 1, 1.5, dtype).reshape([h]);
        let got = host(rms_norm(x.clone(), weight.clone(), 1e-6).unwrap());
        let burn = host(reference::rms_norm(x.clone(), weight.clone(), 1e-6));
        let (d, i) = worst(&got, &burn);
        assert!(
            d <= tol_burn,
            "{dtype:?} m={m} h={h}: {d:e} at {i} ({} vs burn {})",
            got[i],
            burn[i]
        );
        if dtype != DType::F32 {
            let exact = host(reference::rms_norm(
                x.cast(DType::F32),
                weight.cast(DType::F32),
                1e-6,
            ));
            let (d, i) = worst(&got, &exact);
            assert!(
                d <= tol_f32,
                "{dtype:?} m={m} h={h}: {d:e} at {i} ({} vs f32 {})",
                got[i],
                exact[i]
            );
        }
    }
}

#[test]
fn rms_norm_matches_the_burn_path() {
    check_rms_norm(DType::F32, 1e-5, 0.0);
    check_rms_norm(DType::F16, 4e-3, 1e-3);
}

/// One launch per kernel call on contiguous inputs; a transposed weight view costs a copy,
/// which the counter sees too (so a layer's budget test counts what it really launches).
#[test]
fn each_kernel_is_one_launch() {
    let x = tensor2(2, 64, 1, 1.0, DType::F32);
    let w = tensor2(48, 64, 2, 0.25, DType::F32);
    let norm = tensor2(1, 64, 3, 1.0, DType::F32).reshape([64]);
    let residual = tensor2(2, 24, 4, 1.0, DType::F32);
    let before = launches();
    let h = rms_norm(x.clone(), norm, 1e-5).unwrap();
    let y = gemv(h.clone(), w.clone(), Epilogue::SiluGateUp).unwrap();
    let y = gemv(
        y,
        tensor2(24, 24, 5, 0.25, DType::F32),
        Epilogue::Residual(residual),
    )
    .unwrap();
    assert_eq!(launches() - before, 3);
    assert_eq!(y.dims(), [2, 24]);

    let before = launches();
    let stored_in_out = tensor2(64, 48, 6, 0.25, DType::F32);
    gemv(h, stored_in_out.transpose(), Epilogue::None).unwrap();
    assert_eq!(launches() - before, 2);
}

#[test]
fn bad_shapes_are_errors() {
    let x = tensor2(5, 8, 1, 1.0, DType::F32);
    let w = tensor2(4, 8, 2, 1.0, DType::F32);
    let err = gemv(x, w.clone(), Epilogue::None).unwrap_err().to_string();
    assert!(err.contains("1 to 4 rows, got 5"), "{err}");
    let x = tensor2(1, 7, 1, 1.0, DType::F32);
    let err = gemv(x.clone(), w.clone(), Epilogue::None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected [out, 7]"), "{err}");
    let x = tensor2(1, 8, 1, 1.0, DType::F32);
    let odd = tensor2(3, 8, 2, 1.0, DType::F32);
    let err = gemv(x.clone(), odd, Epilogue::SiluGateUp)
        .unwrap_err()
        .to_string();
    assert!(err.contains("even number of rows, got 3"), "{err}");
    let r = tensor2(1, 3, 3, 1.0, DType::F32);
    let err = gemv(x.clone(), w, Epilogue::Residual(r))
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected [1, 4]"), "{err}");
    let norm = tensor2(1, 7, 3, 1.0, DType::F32).reshape([7]);
    let err = rms_norm(x, norm, 1e-5).unwrap_err().to_string();
    assert!(err.contains("expected [8]"), "{err}");
}
