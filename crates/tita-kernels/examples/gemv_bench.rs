//! GEMV bandwidth per LLaVA-7B decode shape (issue 24): GB/s of our GEMV kernel (M = 1 and 4,
//! the epilogue each shape has in the model) beside today's burn path (`x · w` on the stored
//! `[in, out]` weight) and a read-only kernel over the same weight bytes (the bound).
//!
//!   gemv-bench [--dtype f16|f32] [--iters N]
//!
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
    run(dtype, iters);
}

#[cfg(feature = "cuda")]
fn run(dtype: DType, iters: usize) {
    type B = burn::backend::Cuda;
    bench::<B>(dtype, iters, "cuda", |t| {
        Tensor::from_primitive(TensorPrimitive::Float(tita_kernels::bench::read_all(
            t.into_primitive().tensor(),
        )))
    });
}

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
fn run(dtype: DType, iters: usize) {
    type B = burn::backend::Wgpu;
    bench::<B>(dtype, iters, "wgpu", |t| {
        Tensor::from_primitive(TensorPrimitive::Float(tita_kernels::bench::read_all(
            t.into_primitive().tensor(),
        )))
    });
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
fn run(_dtype: DType, _iters: usize) {
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

#[allow(dead_code)] // one of the `run`s calls it
fn bench<B: KernelBackend>(
    dtype: DType,
    iters: usize,
    name: &str,
    read_all: impl Fn(Tensor<B, 2>) -> Tensor<B, 1>,
) {
    let device = B::Device::default();
    let elem = dtype.size() as f64;
    println!(
        "gemv-bench {name} {dtype:?}, {iters} iterations; GB/s = weight + x + out bytes / time"
    );
    println!(
        "{:>6} {:>6} {:>13} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "K", "N out", "epilogue", "read", "gemv m1", "gemv m4", "burn m1", "m1/read"
    );
    for (k, n, epilogue) in SHAPES {
        // N counts the weight's rows: a packed gate|up of 2 · 11008 gives 11008 outputs.
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
        let mut per_m = Vec::new();
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
        }
        let x1 =
            Tensor::<B, 2>::random([1, k], Distribution::Uniform(-1.0, 1.0), &device).cast(dtype);
        let burn = time::<B, _>(&device, iters, || x1.clone().matmul(w_t.clone()));
        let read_gbps = weight_bytes / read / 1e9;
        println!(
            "{k:>6} {out_n:>6} {epilogue:>13} {read_gbps:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6.0}%",
            per_m[0],
            per_m[1],
            gbps(1, burn),
            100.0 * per_m[0] / read_gbps
        );
    }
}
