//! Diffusion forward noise on preprocessed pixels, as VCD and SeVa-style pair synthesis use it:
//! `x_t = sqrt(ā_t)·x_0 + sqrt(1-ā_t)·ε` with a linear beta schedule over 1000 steps.

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{Error, Result};

pub const NUM_STEPS: usize = 1000;
const BETA_START: f64 = 1e-4;
const BETA_END: f64 = 0.02;

/// `ā_t = Π_{s<=t} (1 - β_s)` for the 0-based step `t` of the linear schedule
/// (`torch.linspace(1e-4, 0.02, 1000)`, then `cumprod`, then index `t`).
pub fn alpha_bar(t: usize) -> f64 {
    (0..=t)
        .map(|s| 1.0 - (BETA_START + (BETA_END - BETA_START) * s as f64 / (NUM_STEPS - 1) as f64))
        .product()
}

/// Noises `pixels` in place at step `t` with standard normal noise from `seed`.
pub fn add_diffusion_noise(pixels: &mut [f32], t: usize, seed: u64) -> Result<()> {
    if t >= NUM_STEPS {
        return Err(Error::argument(
            "noise_step",
            format!("{t} is outside 0..{NUM_STEPS}"),
        ));
    }
    let a = alpha_bar(t);
    let (signal, noise) = (a.sqrt() as f32, (1.0 - a).sqrt() as f32);
    let mut rng = StdRng::seed_from_u64(seed);
    for x in pixels.iter_mut() {
        *x = signal * *x + noise * standard_normal(&mut rng);
    }
    Ok(())
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
    fn schedule_matches_the_linear_cumprod() {
        assert!((alpha_bar(0) - (1.0 - 1e-4)).abs() < 1e-12);
        // Step 500 of 1000 keeps about 7.8% of the signal variance.
        assert!((alpha_bar(500) - 0.0778).abs() < 1e-3, "{}", alpha_bar(500));
        assert!(alpha_bar(999) < 1e-4);
    }

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
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
        assert!(add_diffusion_noise(&mut c, 1000, 0).is_err());
    }
}
