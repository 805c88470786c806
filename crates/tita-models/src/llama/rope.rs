//! Rotary position embeddings of the decoder, and the positions they turn with: transformers'
//! `rotate_half` form, tables built once per model for running positions, or per prefill for
//! Qwen2-VL's explicit M-RoPE rows. A left-padded row's token `i` sits at position
//! `i - pad + rope_delta`.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::layers::{cos_sin, rope_inv_freq};
use crate::weights::cast;

/// Where each row's tokens sit: its left padding, and what to add to a token's index (after
/// the padding) to get its rotary position (Qwen2-VL's `rope_deltas`: image tokens advance the
/// position by less than their count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positions {
    pub pad_left: Vec<usize>,
    pub rope_delta: Vec<i64>,
}

impl Positions {
    /// Rows left-padded by `pad_left[b]` positions.
    pub fn padded(pad_left: Vec<usize>) -> Self {
        Positions {
            rope_delta: vec![0; pad_left.len()],
            pad_left,
        }
    }

    pub fn batch(&self) -> usize {
        self.pad_left.len()
    }
}

/// Rotary tables of every position up to the context length, as transformers computes them
/// in float32: `inv_freq = 1 / theta^(2i/d)`, angle = position · inv_freq, duplicated over
/// both halves. Built once per model: `([positions, head_dim], [positions, head_dim])`.
fn rope_tables<B: Backend>(
    positions: usize,
    head_dim: usize,
    theta: f64,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let inv_freq = rope_inv_freq(theta, head_dim);
    let angles = (0..positions).flat_map(|p| {
        std::iter::repeat_n(&inv_freq, 2)
            .flatten()
            .map(move |f| p as f32 * f)
    });
    cos_sin(angles, [positions, head_dim], device)
}

/// Rows of a `[positions, head_dim]` table for each sequence's tokens `past..past + s`: token
/// `i` of a row left-padded by `pad` with rotary offset `delta` reads position
/// `i - pad + delta`, and padded tokens read position 0: `[batch, 1, s, d]`.
fn rope_rows<B: Backend>(
    table: &Tensor<B, 2>,
    pad_left: &[usize],
    delta: &[i64],
    past: usize,
    s: usize,
) -> Tensor<B, 4> {
    let d = table.dims()[1];
    let rows: Vec<Tensor<B, 2>> = pad_left
        .iter()
        .zip(delta)
        .map(|(&pad, &delta)| {
            let shift = delta - pad as i64;
            let first = (past as i64 + shift).max(0) as usize;
            let end = (past as i64 + s as i64 + shift).max(0) as usize;
            let real = table.clone().slice([first..end, 0..d]);
            let padded = s - (end - first);
            if padded == 0 {
                real
            } else {
                let zero = table.clone().slice([0..1, 0..d]).repeat_dim(0, padded);
                Tensor::cat(vec![zero, real], 0)
            }
        })
        .collect();
    let b = rows.len();
    let rows = if b == 1 {
        rows.into_iter().next().expect("one row")
    } else {
        Tensor::cat(rows, 0)
    };
    rows.reshape([b, 1, s, d])
}

/// Explicit rotary positions of a prefill (Qwen2-VL's M-RoPE): per batch row the temporal,
/// height and width position of every token (padding included, at 0), and the row's offset
/// for the tokens that follow (`rope_deltas`).
#[derive(Debug, Clone, PartialEq)]
pub struct MropePositions {
    pub rows: Vec<[Vec<i64>; 3]>,
    pub deltas: Vec<i64>,
}

/// M-RoPE cos and sin `[batch, 1, s, head_dim]`: frequency `i` turns with the position row its
/// `mrope_section` assigns (temporal, then height, then width), duplicated over both halves,
/// in f32 as transformers computes them.
fn mrope_tables<B: Backend>(
    positions: &MropePositions,
    section: &[usize],
    head_dim: usize,
    theta: f64,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let inv_freq = rope_inv_freq(theta, head_dim);
    let axis: Vec<usize> = section
        .iter()
        .enumerate()
        .flat_map(|(a, &n)| std::iter::repeat_n(a, n))
        .collect();
    let (b, s) = (positions.rows.len(), positions.rows[0][0].len());
    let (inv_freq, axis) = (&inv_freq, &axis);
    let angles = positions.rows.iter().flat_map(|[pt, ph, pw]| {
        pt.iter().zip(ph).zip(pw).flat_map(move |((&t, &h), &w)| {
            let pos = [t, h, w];
            (0..2).flat_map(move |_half| {
                inv_freq
                    .iter()
                    .zip(axis)
                    .map(move |(f, &a)| pos[a] as f32 * f)
            })
        })
    });
    cos_sin(angles, [b, 1, s, head_dim], device)
}

/// `[d, d]` matrix of `rotate_half(x) = [-x2, x1]` as `x · R`: one signed 1 per column, so the
/// product is exact, and it runs as one contiguous (multi-core) product instead of slices and a
/// concatenation.
fn rotate_half_matrix<B: Backend>(d: usize, device: &B::Device) -> Tensor<B, 2> {
    let half = d / 2;
    let mut r = vec![0f32; d * d];
    for j in 0..half {
        r[(j + half) * d + j] = -1.0; // column j (first half) takes -x2[j]
        r[j * d + j + half] = 1.0; // column j + half takes x1[j]
    }
    Tensor::from_data(TensorData::new(r, [d, d]), device)
}

/// The rotary cos and sin of one forward's tokens, laid out as the projected queries and keys
/// `[batch, s, heads, d]`: every product of [`Rotary::apply`] is then between contiguous
/// tensors of one shape, the CPU backend's fast path.
#[derive(Clone)]
pub struct Rotary<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    rotate_half: Tensor<B, 2>,
}

impl<B: Backend> Rotary<B> {
    /// From `[batch, 1, s, d]` tables, for `heads` heads.
    fn new(
        (cos, sin): &(Tensor<B, 4>, Tensor<B, 4>),
        heads: usize,
        rotate_half: &Tensor<B, 2>,
    ) -> Self {
        let [b, _, s, d] = cos.dims();
        // One token per row (decode) broadcasts a shared row instead, as cheaply.
        let spread = |t: &Tensor<B, 4>| {
            let t = t.clone().reshape([b, s, 1, d]);
            if s == 1 {
                t
            } else {
                t.repeat_dim(2, heads)
            }
        };
        Rotary {
            cos: spread(cos),
            sin: spread(sin),
            rotate_half: rotate_half.clone(),
        }
    }

    /// `x · cos + rotate_half(x) · sin` for `x` of `[batch, s, heads, d]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, s, h, d] = x.dims();
        let rotated = x
            .clone()
            .reshape([b * s * h, d])
            .matmul(self.rotate_half.clone())
            .reshape([b, s, h, d]);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// The decoder's rotary constants (not parameters): cos and sin of every position up to the
/// context, `rotate_half` as a matrix, and what M-RoPE tables are built from.
#[derive(Module, Debug)]
pub struct Rope<B: Backend> {
    pub cos: Tensor<B, 2>,
    pub sin: Tensor<B, 2>,
    pub rotate_half: Tensor<B, 2>,
    pub heads: usize,
    pub kv_heads: usize,
    #[module(skip)]
    pub theta: f64,
    /// Empty: plain RoPE.
    #[module(skip)]
    pub mrope_section: Vec<usize>,
}

impl<B: Backend> Rope<B> {
    /// Tables of `positions` positions for heads of `head_dim`, in `dtype`.
    pub fn new(
        c: &crate::llama::LlamaConfig,
        dtype: burn::tensor::DType,
        device: &B::Device,
    ) -> Self {
        let (cos, sin) = rope_tables(c.max_position_embeddings, c.head_dim, c.rope_theta, device);
        Rope {
            cos: cast(cos, dtype),
            sin: cast(sin, dtype),
            rotate_half: cast(rotate_half_matrix(c.head_dim, device), dtype),
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            theta: c.rope_theta,
            mrope_section: c.mrope_section.clone(),
        }
    }

    /// The rotary cos and sin of `s` new tokens after `past`, for the queries and the keys.
    /// With explicit M-RoPE rows (a Qwen2-VL prefill), their deltas become the rows' offsets
    /// for the tokens that follow.
    pub fn for_tokens(
        &self,
        positions: &mut Positions,
        mrope: Option<&MropePositions>,
        (past, s): (usize, usize),
    ) -> (Rotary<B>, Rotary<B>) {
        let device = self.cos.device();
        let rope = match mrope {
            Some(p) => {
                positions.rope_delta = p.deltas.clone();
                let d = self.cos.dims()[1];
                let (cos, sin) = mrope_tables(p, &self.mrope_section, d, self.theta, &device);
                let dtype = self.cos.dtype();
                (cast(cos, dtype), cast(sin, dtype))
            }
            None => {
                let (pad, delta) = (&positions.pad_left, &positions.rope_delta);
                (
                    rope_rows(&self.cos, pad, delta, past, s),
                    rope_rows(&self.sin, pad, delta, past, s),
                )
            }
        };
        let for_queries = Rotary::new(&rope, self.heads, &self.rotate_half);
        // Without grouped queries the keys' tables are the same tensors.
        let for_keys = if self.kv_heads == self.heads {
            for_queries.clone()
        } else {
            Rotary::new(&rope, self.kv_heads, &self.rotate_half)
        };
        (for_queries, for_keys)
    }
}
