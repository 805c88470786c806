//! TITA's per-token fusion of next-token logits, and the VCD contrastive baseline.

use crate::error::{Error, Result};
use crate::sampling::log_softmax_in_place;

/// How the next-token scores of several models are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// `(1-λ)·log_softmax(z_T) + λ·log_softmax(z_R)`: the paper's implicit reward
    /// `ls(z_R) - ls(z_T)` added to the target with weight λ.
    Interpolate { lambda: f32 },
    /// `log_softmax(z_T) + α·(log_softmax(z_R) - log_softmax(z_ref))`: DPO's implicit reward
    /// against the reward model's own reference (proxy-tuning form).
    Reference { alpha: f32 },
    /// VCD: `(1+α)·z(v) - α·z(v')` with `v'` a diffusion-noised copy of the image, one model.
    Contrastive { alpha: f32 },
}

impl Fusion {
    pub fn validate(&self) -> Result<()> {
        match *self {
            Fusion::Interpolate { lambda } if !(0.0..=1.0).contains(&lambda) => Err(
                Error::argument("lambda", format!("{lambda} is outside [0, 1]")),
            ),
            Fusion::Reference { alpha } | Fusion::Contrastive { alpha }
                if !(alpha >= 0.0 && alpha.is_finite()) =>
            {
                Err(Error::argument(
                    "alpha",
                    format!("{alpha} must be a finite number >= 0"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Whether the fusion reduces to the target alone (λ = 0 or α = 0).
    pub fn is_identity(&self) -> bool {
        match *self {
            Fusion::Interpolate { lambda } => lambda == 0.0,
            Fusion::Reference { alpha } | Fusion::Contrastive { alpha } => alpha == 0.0,
        }
    }
}

/// Fused scores over the target's vocabulary.
///
/// `target` are the target's logits; `other` the reward model's (interpolate, reference) or the
/// target's own on the noised image (contrastive); `reference` the DPO reference's. Ids past the
/// shortest vocabulary get `-inf`. `cut` (τ, or VCD's β) keeps only tokens with
/// `p_T(y) >= cut · max p_T`. With λ = 0 / α = 0 the target's raw logits come back unchanged,
/// so the argmax (and any sample) is bit for bit that of plain decoding.
pub fn fuse(
    fusion: Fusion,
    target: &[f32],
    other: &[f32],
    reference: Option<&[f32]>,
    cut: Option<f32>,
) -> Vec<f32> {
    let mut out = target.to_vec();
    if !fusion.is_identity() {
        let common = target
            .len()
            .min(other.len())
            .min(reference.map_or(usize::MAX, <[f32]>::len));
        match fusion {
            Fusion::Contrastive { alpha } => {
                for (o, &z) in out.iter_mut().zip(other).take(common) {
                    *o = (1.0 + alpha) * *o - alpha * z;
                }
            }
            Fusion::Interpolate { lambda } => {
                let (lt, lr) = (log_softmax(target), log_softmax(other));
                for (y, o) in out.iter_mut().enumerate().take(common) {
                    *o = (1.0 - lambda) * lt[y] + lambda * lr[y];
                }
            }
            Fusion::Reference { alpha } => {
                let (lt, lr) = (log_softmax(target), log_softmax(other));
                let lref = log_softmax(
                    reference.expect("reference mode needs the reference model's logits"),
                );
                for (y, o) in out.iter_mut().enumerate().take(common) {
                    *o = lt[y] + alpha * (lr[y] - lref[y]);
                }
            }
        }
        out[common..].fill(f32::NEG_INFINITY);
    }
    if let Some(cut) = cut {
        // p_T(y) < cut·max p_T  <=>  z_T(y) < ln(cut) + max z_T
        let threshold = cut.ln() + target.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (o, &z) in out.iter_mut().zip(target) {
            if z < threshold {
                *o = f32::NEG_INFINITY;
            }
        }
    }
    out
}

/// `log_softmax` of a copy.
pub fn log_softmax(xs: &[f32]) -> Vec<f32> {
    let mut v = xs.to_vec();
    log_softmax_in_place(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: [f32; 4] = [2.0, 1.0, 0.5, -1.0];
    const R: [f32; 4] = [0.0, 3.0, 0.0, 0.0];

    #[test]
    fn interpolate_is_the_weighted_sum_of_log_probs() {
        let s = fuse(Fusion::Interpolate { lambda: 0.3 }, &T, &R, None, None);
        let (lt, lr) = (log_softmax(&T), log_softmax(&R));
        for y in 0..4 {
            assert!((s[y] - (0.7 * lt[y] + 0.3 * lr[y])).abs() < 1e-6);
        }
    }

    #[test]
    fn zero_weight_returns_the_target_unchanged() {
        assert_eq!(
            fuse(Fusion::Interpolate { lambda: 0.0 }, &T, &R, None, None),
            T.to_vec()
        );
        assert_eq!(
            fuse(Fusion::Reference { alpha: 0.0 }, &T, &R, Some(&R), None),
            T.to_vec()
        );
        assert_eq!(
            fuse(Fusion::Contrastive { alpha: 0.0 }, &T, &R, None, None),
            T.to_vec()
        );
    }

    #[test]
    fn reference_with_equal_reward_and_reference_is_the_target_log_probs() {
        let s = fuse(Fusion::Reference { alpha: 1.0 }, &T, &R, Some(&R), None);
        let lt = log_softmax(&T);
        for y in 0..4 {
            assert!((s[y] - lt[y]).abs() < 1e-6);
        }
    }

    #[test]
    fn contrastive_and_cut() {
        let s = fuse(Fusion::Contrastive { alpha: 1.0 }, &T, &R, None, Some(0.3));
        // ln(0.3) + 2 = 0.796: ids 2 and 3 are implausible.
        // (1+1)·T - R = [4, -1, 1, -2]; ln(0.3) + max T = 0.796 cuts ids 2 and 3 (T = 0.5, -1).
        assert_eq!(s, vec![4.0, -1.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
    }

    #[test]
    fn ids_past_the_common_vocabulary_are_excluded() {
        let s = fuse(Fusion::Interpolate { lambda: 0.5 }, &T, &R[..3], None, None);
        assert_eq!(s[3], f32::NEG_INFINITY);
        assert!(s[..3].iter().all(|v| v.is_finite()));
    }

    #[test]
    fn out_of_range_weights_are_refused() {
        assert!(Fusion::Interpolate { lambda: 1.5 }.validate().is_err());
        assert!(Fusion::Interpolate { lambda: -0.1 }.validate().is_err());
        assert!(Fusion::Reference { alpha: f32::NAN }.validate().is_err());
        assert!(Fusion::Interpolate { lambda: 0.6 }.validate().is_ok());
    }
}
