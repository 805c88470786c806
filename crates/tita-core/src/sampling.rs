//! Choosing the next token from a score vector: greedy argmax, or a seeded sample after
//! temperature, top-k and top-p in the order transformers applies them.

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{Error, Result};

/// Index of the largest finite-or-infinite score; ties go to the lowest id (as `torch.argmax`).
pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// In-place `log_softmax` over a score vector (`-inf` entries stay `-inf`).
pub fn log_softmax_in_place(xs: &mut [f32]) {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = xs.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    xs.iter_mut().for_each(|x| *x -= lse);
}

/// `log_softmax` of a copy.
pub fn log_softmax(xs: &[f32]) -> Vec<f32> {
    let mut v = xs.to_vec();
    log_softmax_in_place(&mut v);
    v
}

/// How the next token is picked.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    pub fn greedy() -> Self {
        Self::default()
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::argument(
                "temperature",
                format!("{} must be >= 0", self.temperature),
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::argument("top_p", format!("{p} must be in (0, 1]")));
            }
        }
        if self.top_k == Some(0) {
            return Err(Error::argument("top_k", "must be at least 1"));
        }
        Ok(())
    }
}

/// A sampler with its own seeded random stream, so a run is reproducible.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Result<Self> {
        config.validate()?;
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Sampler { config, rng })
    }

    pub fn is_greedy(&self) -> bool {
        self.config.temperature == 0.0
    }

    /// The uniform number in [0, 1) the next token is drawn with; 0 without consuming the
    /// stream when greedy. One draw per token, wherever the choice is then made (here, or on
    /// the device), so both give the same stream.
    pub fn draw(&mut self) -> f64 {
        if self.is_greedy() {
            0.0
        } else {
            self.rng.random()
        }
    }

    /// Picks the next token from unnormalised scores (logits or fused log-probs).
    pub fn sample(&mut self, scores: &[f32]) -> u32 {
        let u = self.draw();
        self.pick(scores, u)
    }

    /// Picks the token that `u` (from [`Sampler::draw`]) falls on in the distribution after
    /// temperature, top-k and top-p, walking the kept tokens in id order; the argmax when greedy.
    pub fn pick(&self, scores: &[f32], u: f64) -> u32 {
        if self.is_greedy() {
            return argmax(scores);
        }
        let t = self.config.temperature;
        let mut cand: Vec<(u32, f32)> = scores
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_finite())
            .map(|(i, &s)| (i as u32, s / t))
            .collect();
        if cand.is_empty() {
            return argmax(scores);
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = self.config.top_k {
            cand.truncate(k.max(1));
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|&(_, s)| ((s - max) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.config.top_p {
            // Keep the smallest prefix whose mass reaches top_p (always at least one token).
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            cand.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        // The draw walks the kept tokens in id order: a device does the same without sorting.
        let mut kept: Vec<(u32, f64)> = cand.iter().map(|c| c.0).zip(probs).collect();
        kept.sort_by_key(|k| k.0);
        let mut u = u;
        for &(id, p) in &kept {
            if u < p {
                return id;
            }
            u -= p;
        }
        kept[kept.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingConfig::greedy()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let scores: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let cfg = SamplingConfig {
            temperature: 0.8,
            top_k: Some(3),
            top_p: Some(0.9),
            seed: 7,
        };
        let run = || {
            let mut s = Sampler::new(cfg.clone()).unwrap();
            (0..20).map(|_| s.sample(&scores)).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let mut order: Vec<usize> = (0..50).collect();
        order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
        assert!(
            a.iter().all(|t| order[..3].contains(&(*t as usize))),
            "{a:?}"
        );
    }

    #[test]
    fn log_softmax_normalises() {
        let mut x = vec![1.0, 2.0, 3.0, f32::NEG_INFINITY];
        log_softmax_in_place(&mut x);
        let s: f32 = x.iter().map(|v| v.exp()).sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert_eq!(x[3], f32::NEG_INFINITY);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Sampler::new(SamplingConfig {
            temperature: -1.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingConfig {
            top_p: Some(1.5),
            temperature: 1.0,
            ..Default::default()
        })
        .is_err());
    }
}
