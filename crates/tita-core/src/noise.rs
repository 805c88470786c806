//! Diffusion forward noise on preprocessed pixels exactly as VCD's `add_diffusion_noise` (which
//! SeVa's pair synthesis and the TITA authors reuse): `x_t = sqrt(ā_t)·x_0 + sqrt(1-ā_t)·ε` with
//! `betas = sigmoid(linspace(-6, 6, 1000))·(5e-3 - 1e-5) + 1e-5` and `ā = cumprod(1 - betas)`,
//! all in float32 as PyTorch computes it. At VCD's default step 500, ā ≈ 0.745: the image is
//! still clearly visible, which is the point (a plausibly blurred view, not noise).

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{Error, Result};

pub const NUM_STEPS: usize = 1000;

/// `ā_t` for the 0-based step `t`, replaying PyTorch's float32 arithmetic: `torch.linspace`
/// (start + i·step in the first half, end - (n-1-i)·step in the second), `torch.sigmoid`, the
/// affine map, then `cumprod` (which PyTorch accumulates in double on the CPU).
pub fn alpha_bar(t: usize) -> f32 {
    let n = NUM_STEPS;
    let (start, end) = (-6.0f32, 6.0f32);
    let step = (end - start) / (n - 1) as f32;
    let scale = (0.5e-2f64 - 1e-5) as f32;
    let mut acc = 1.0f64;
    for i in 0..=t.min(n - 1) {
        let x = if i < n / 2 {
            start + step * i as f32
        } else {
            end - step * (n - 1 - i) as f32
        };
        let beta = 1.0 / (1.0 + (-x).exp()) * scale + 1e-5;
        acc *= (1.0 - beta) as f64;
    }
    acc as f32
}

/// Refuses a diffusion step outside the schedule.
pub fn check_step(t: usize) -> Result<()> {
    if t >= NUM_STEPS {
        return Err(Error::argument(
            "noise_step",
            format!("{t} is outside [0, {})", NUM_STEPS),
        ));
    }
    Ok(())
}

/// Noises `pixels` in place at step `t` with the given `eps` (one draw per value): VCD's rule
/// with a known ε, for tests and for reproducing a run.
pub fn add_noise_with(pixels: &mut [f32], t: usize, eps: &[f32]) -> Result<()> {
    check_step(t)?;
    if eps.len() != pixels.len() {
        return Err(Error::argument(
            "noise",
            format!(
                "ε has {} values, the pixels {}; give one per pixel value",
                eps.len(),
                pixels.len()
            ),
        ));
    }
    let a = alpha_bar(t);
    let (signal, noise) = (a.sqrt(), (1.0 - a).sqrt());
    for (x, &e) in pixels.iter_mut().zip(eps) {
        *x = signal * *x + noise * e;
    }
    Ok(())
}

/// Noises `pixels` in place at step `t` with standard normal ε drawn from `seed`.
pub fn add_diffusion_noise(pixels: &mut [f32], t: usize, seed: u64) -> Result<()> {
    check_step(t)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let eps: Vec<f32> = (0..pixels.len())
        .map(|_| standard_normal(&mut rng))
        .collect();
    add_noise_with(pixels, t, &eps)
}

/// Box–Muller: one N(0, 1) draw.
fn standard_normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_for_a_seed_and_roughly_standard() {
        let mut a = vec![0.5f32; 20000];
        let mut b = a.clone();
        add_diffusion_noise(&mut a, 999, 7).unwrap();
        add_diffusion_noise(&mut b, 999, 7).unwrap();
        assert_eq!(a, b);
        let mut c = vec![0.5f32; 20000];
        add_diffusion_noise(&mut c, 999, 8).unwrap();
        assert_ne!(a, c);
        // x_t = sqrt(ā)·0.5 + sqrt(1-ā)·ε: mean and variance follow from ā.
        let ab = alpha_bar(999) as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((mean - 0.5 * ab.sqrt()).abs() < 0.02, "{mean}");
        assert!((var - (1.0 - ab)).abs() < 0.03, "{var}");
        assert!(add_diffusion_noise(&mut c, 1000, 0).is_err());
        assert!(add_noise_with(&mut c, 500, &[0.0; 3]).is_err());
    }
}
