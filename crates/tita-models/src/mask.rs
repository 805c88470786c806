//! Attention masks of a left-padded batch: causal within a forward's new positions, and never
//! a padded position. Built on the device as `[batch, 1, 1, s, t]` (broadcast over heads, not
//! copied per head) and memoised per shape for the sequences' lifetime.

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

/// What the keys of one forward may not see, beyond positions after the query's own.
#[derive(Debug, Clone)]
pub enum Mask<B: Backend> {
    /// Nothing: one new token per row and no padding.
    None,
    /// Only later positions: several new tokens, no padding (the fused path's case).
    Causal,
    /// An additive bias `[batch, 1, 1, s, t]`: 0, or lowest-finite where masked.
    Bias(Tensor<B, 5>),
}

/// Shapes kept at once (a prefill and its decode steps need two).
const KEPT: usize = 4;

/// Masks already built for one batch's padding.
#[derive(Debug, Clone)]
pub struct Masks<B: Backend> {
    /// `((s, t), mask)` of multi-token forwards.
    blocks: Vec<((usize, usize), Tensor<B, 5>)>,
    /// The padding of one-token steps over as many keys as the cache holds room for: a step
    /// reads its first `t` columns.
    steps: Option<Tensor<B, 5>>,
}

impl<B: Backend> Default for Masks<B> {
    fn default() -> Self {
        Masks {
            blocks: Vec::new(),
            steps: None,
        }
    }
}

impl<B: Backend> Masks<B> {
    /// The mask of `s` new positions after `past` for rows left-padded by `pad_left`.
    /// `capacity` sizes the one-token steps' mask; `fused` says causal attention without a
    /// bias is available.
    pub fn get(
        &mut self,
        pad_left: &[usize],
        (past, s): (usize, usize),
        capacity: usize,
        fused: bool,
        device: &B::Device,
    ) -> Mask<B> {
        let padded = pad_left.iter().any(|&p| p > 0);
        let t = past + s;
        match (s, padded) {
            (1, false) => Mask::None,
            (_, false) if fused => Mask::Causal,
            (1, true) => {
                let stale = self.steps.as_ref().is_none_or(|m| m.dims()[4] < t);
                if stale {
                    // One step's causal part is empty: `past` equal to the width leaves padding only.
                    let width = capacity.max(t);
                    self.steps = Some(build(pad_left, (width, 1), width, device));
                }
                let m = self.steps.clone().expect("built above");
                let b = pad_left.len();
                Mask::Bias(m.slice([0..b, 0..1, 0..1, 0..1, 0..t]))
            }
            _ => {
                if let Some((_, m)) = self.blocks.iter().find(|(k, _)| *k == (s, t)) {
                    return Mask::Bias(m.clone());
                }
                let m = build(pad_left, (past, s), t, device);
                if self.blocks.len() == KEPT {
                    self.blocks.remove(0);
                }
                self.blocks.push(((s, t), m.clone()));
                Mask::Bias(m)
            }
        }
    }
}

/// `[batch, 1, 1, s, t]` f32: key `j` is hidden from new position `i` (at `past + i`) when
/// `j > past + i` or `j < pad_left[row]`. A lowest-finite value (not -inf) keeps fully padded
/// query rows finite, as transformers does.
fn build<B: Backend>(
    pad_left: &[usize],
    (past, s): (usize, usize),
    t: usize,
    device: &B::Device,
) -> Tensor<B, 5> {
    let b = pad_left.len();
    let pads: Vec<i64> = pad_left.iter().map(|&p| p as i64).collect();
    let pad = Tensor::<B, 1, Int>::from_data(TensorData::new(pads, [b]), device)
        .reshape([b, 1, 1])
        .expand([b, s, t]);
    let keys = Tensor::<B, 1, Int>::arange(0..t as i64, device)
        .reshape([1, 1, t])
        .expand([b, s, t]);
    let queries = Tensor::<B, 1, Int>::arange(past as i64..(past + s) as i64, device)
        .reshape([1, s, 1])
        .expand([b, s, t]);
    let hidden = keys.clone().greater(queries).bool_or(keys.lower(pad));
    Tensor::<B, 3>::zeros([b, s, t], (device, DType::F32))
        .mask_fill(hidden, f32::MIN)
        .reshape([b, 1, 1, s, t])
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    fn values(m: Mask<B>) -> Vec<f32> {
        match m {
            Mask::Bias(t) => t.into_data().convert::<f32>().into_vec().unwrap(),
            _ => panic!("expected a bias"),
        }
    }

    #[test]
    fn causal_and_padding_as_the_host_loop_had_them() {
        let dev = Default::default();
        let pad = [2usize, 0];
        let (past, s) = (1, 3);
        let t = past + s;
        let mut masks = Masks::<B>::default();
        let got = values(masks.get(&pad, (past, s), 0, true, &dev));
        let mut want = Vec::new();
        for &p in &pad {
            for i in 0..s {
                for j in 0..t {
                    want.push(if j > past + i || j < p { f32::MIN } else { 0.0 });
                }
            }
        }
        assert_eq!(got, want);
        // One step: padding only, from a mask as wide as the capacity.
        let got = values(masks.get(&pad, (4, 1), 8, true, &dev));
        assert_eq!(
            got,
            [f32::MIN, f32::MIN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        assert!(matches!(
            masks.get(&[0, 0], (0, 3), 0, true, &dev),
            Mask::Causal
        ));
        assert!(matches!(
            masks.get(&[0, 0], (3, 1), 0, true, &dev),
            Mask::None
        ));
    }
}
