//! GEMV bandwidth per LLaVA-7B decode shape (issue 24): GB/s of our GEMV kernel (M = 1 and 4,
//! the epilogue each shape has in the model) beside today's burn path (`x · w` on the stored
//! `[in, out]` weight) and a read-only kernel over the same weight bytes (the bound).
//!
//!   gemv-bench [--dtype f16|f32] [--iters N] [--n-div D]
//!
//! `--n-div D` divides every N by D (a dry run on lavapipe, whose buffers stop at 128 MiB).
//! Built by scripts/device-build.sh (`--features cuda`) and run by scripts/device-check.sh; with
//! `--features wgpu` it runs (slowly) on lavapipe as a dry run.

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor, TensorPrimitive};
use tita_kernels::{Epilogue, KernelBackend};

/// (K, N, the epilogue the model uses there): q/k/v/o, gate|up packed, lm_head, down_proj.
const SHAPES: [(usize, usize, &str); 5] = [
    (4096, 4096, "none"),
    (4096, 12288, "none"),
    (4096, 22016, "silu-gate-up"),
    (4096, 32000, "none"),
    (11008, 4096, "residual"),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let dtype = match value("--dtype").as_deref().unwrap_or("f16") {
        "f16" => DType::F16,
        "f32" => DType::F32,
        other => {
            eprintln!("--dtype: expected f16 or f32, got {other}");
            std::process::exit(2);
        }
    };
    let iters: usize = match value("--iters").map(|v| v.parse()) {
        None => 50,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("--iters: expected a positive integer");
            std::process::exit(2);
        }
    };
    let n_div: usize = match value("--n-div").map(|v| v.parse()) {
        None => 1,
        Some(Ok(d)) if d > 0 => d,
        Some(_) => {
            eprintln!("--n-div: expected a positive integer");
            std::process::exit(2);
        }
    };
    run(dtype, iters, n_div);
}

#[cfg(feature = "cuda")]
fn run(dtype: DType, iters: usize, n_div: usize) {
    type B = burn::backend::Cuda;
    bench::<B>(dtype, iters, n_div, "cuda", |t| {
        Tensor::from_primitive(TensorPrimitive::Float(tita_kernels::bench::read_all(
            t.into_primitive().tensor(),
        )))
    });
}

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
fn run(dtype: DType, iters: usize, n_div: usize) {
    type B = burn::backend::Wgpu;
    bench::<B>(dtype, iters, n_div, "wgpu", |t| {
        Tensor::from_primitive(TensorPrimitive::Float(tita_kernels::bench::read_all(
            t.into_primitive().tensor(),
        )))
    });
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
fn run(_dtype: DType, _iters: usize, _n_div: usize) {
    eprintln!("gemv-bench needs a runtime: build with --features cuda (or wgpu)");
    std::process::exit(2);
}

/// Seconds per call of `f`, after a warm-up call, `iters` calls queued before one sync.
fn time<B: Backend, T>(device: &B::Device, iters: usize, mut f: impl FnMut() -> T) -> f64 {
    let warm = f();
    drop(warm);
    sync::<B>(device);
    let start = Instant::now();
    for _ in 0..iters {
        let out = f();
        drop(out);
    }
    sync::<B>(device);
    start.elapsed().as_secs_f64() / iters as f64
}

fn sync<B: Backend>(device: &B::Device) {
    if let Err(e) = B::sync(device) {
        eprintln!("device sync failed: {e:?}");
        std::process::exit(1);
    }
}

fn to_host<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .to_vec::<f32>()
        .unwrap_or_else(|e| {
            eprintln!("reading a tensor back: {e:?}");
            std::process::exit(1)
        })
}

fn residual_host<B: Backend>(epi: &Epilogue<Tensor<B, 2>>) -> Option<Vec<f32>> {
    match epi {
        Epilogue::Residual(r) => Some(to_host(r.clone())),
        _ => None,
    }
}

/// `x · wᵀ` and its epilogue with f64 sums: `x` `[m, k]`, `w` `[rows, k]`.
fn host_gemv(
    x: &[f32],
    w: &[f32],
    residual: Option<&[f32]>,
    m: usize,
    k: usize,
    gate_up: bool,
) -> Vec<f32> {
    let rows = w.len() / k;
    let n = if gate_up { rows / 2 } else { rows };
    let dot = |r: usize, o: usize| -> f64 {
        let (xr, wr) = (&x[r * k..(r + 1) * k], &w[o * k..(o + 1) * k]);
        xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    let mut out = Vec::with_capacity(m * n);
    for r in 0..m {
        for o in 0..n {
            let mut y = dot(r, o);
            if gate_up {
                y = y / (1.0 + (-y).exp()) * dot(r, n + o);
            }
            if let Some(res) = residual {
                y += res[r * n + o] as f64;
            }
            out.push(y as f32);
        }
    }
    out
}

#[allow(dead_code)] // one of the `run`s calls it
fn bench<B: KernelBackend>(
    dtype: DType,
    iters: usize,
    n_div: usize,
    name: &str,
    read_all: impl Fn(Tensor<B, 2>) -> Tensor<B, 1>,
) {
    let device = B::Device::default();
    let elem = dtype.size() as f64;
    println!(
        "gemv-bench {name} {dtype:?}, {iters} iterations; GB/s = weight + x + out bytes / time"
    );
    println!("kernels: {}", B::describe(&device));
    println!(
        "{:>6} {:>6} {:>13} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "K", "N out", "epilogue", "read", "gemv m1", "gemv m4", "burn m1", "m1/read", "max rel Δ"
    );
    let mut failed = false;
    for (k, n, epilogue) in SHAPES {
        // N counts the weight's rows: a packed gate|up of 2 · 11008 gives 11008 outputs.
        let n = (n / n_div).max(2) & !1;
        let rows = n;
        let out_n = if epilogue == "silu-gate-up" { n / 2 } else { n };
        let scale = 1.0 / (k as f64).sqrt();
        let w = Tensor::<B, 2>::random([rows, k], Distribution::Uniform(-scale, scale), &device)
            .cast(dtype);
        // Today's layout: the weight stored transposed, `[in, out]` (its values do not matter).
        let w_t = Tensor::<B, 2>::random([k, rows], Distribution::Uniform(-scale, scale), &device)
            .cast(dtype);
        let weight_bytes = (rows * k) as f64 * elem;
        let gbps = |m: usize, secs: f64| {
            (weight_bytes + (m * k + 2 * m * out_n) as f64 * elem) / secs / 1e9
        };
        let read = time::<B, _>(&device, iters, || read_all(w.clone()));
        let w_host = to_host(w.clone());
        let mut per_m = Vec::new();
        let mut worst = 0f32;
        for m in [1, 4] {
            let x = Tensor::<B, 2>::random([m, k], Distribution::Uniform(-1.0, 1.0), &device)
                .cast(dtype);
            let residual =
                Tensor::<B, 2>::random([m, out_n], Distribution::Uniform(-1.0, 1.0), &device)
                    .cast(dtype);
            let secs = time::<B, _>(&device, iters, || {
                let epi = match epilogue {
                    "residual" => Epilogue::Residual(residual.clone()),
                    "silu-gate-up" => Epilogue::SiluGateUp,
                    _ => Epilogue::None,
                };
                tita_kernels::gemv(x.clone(), w.clone(), epi).unwrap_or_else(|e| {
                    eprintln!("gemv: {e}");
                    std::process::exit(1)
                })
            });
            per_m.push(gbps(m, secs));
            // Parity at this shape: against the burn path in f32 on the same rounded inputs.
            let epi = match epilogue {
                "residual" => Epilogue::Residual(residual.clone()),
                "silu-gate-up" => Epilogue::SiluGateUp,
                _ => Epilogue::None,
            };
            let got = tita_kernels::gemv(x.clone(), w.clone(), epi.clone()).unwrap_or_else(|e| {
                eprintln!("gemv: {e}");
                std::process::exit(1)
            });
            // The exact result on the host (f64 sums): f32 matmuls on the device may use TF32.
            let exact = host_gemv(
                &to_host(x.clone()),
                &w_host,
                residual_host(&epi).as_deref(),
                m,
                k,
                epilogue == "silu-gate-up",
            );
            let got = to_host(got);
            for (a, b) in got.iter().zip(&exact) {
                worst = worst.max((a - b).abs() / b.abs().max(1.0));
            }
        }
        let x1 =
            Tensor::<B, 2>::random([1, k], Distribution::Uniform(-1.0, 1.0), &device).cast(dtype);
        let burn = time::<B, _>(&device, iters, || x1.clone().matmul(w_t.clone()));
        let read_gbps = weight_bytes / read / 1e9;
        println!(
            "{k:>6} {out_n:>6} {epilogue:>13} {read_gbps:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6.0}% {worst:>9.1e}",
            per_m[0],
            per_m[1],
            gbps(1, burn),
            100.0 * per_m[0] / read_gbps
        );
        // One f16 rounding of an O(1) output is at most 4.9e-4; f32 agrees to rounding.
        let bound = if dtype == DType::F32 { 1e-5 } else { 1e-3 };
        if worst > bound {
            eprintln!("parity FAILED at K={k} N={n}: max relative Δ {worst:e} > {bound:e}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
