//! LLaMA decoder (`LlamaForCausalLM`, also LLaVA's language model): RMSNorm, rotary position
//! embeddings in transformers' `rotate_half` form, grouped-query attention, SwiGLU MLP, and a
//! KV cache so that a prompt is prefilled once and every further token costs one step.

use burn::module::{Module, Param};
use burn::nn;
use burn::tensor::{activation, backend::Backend, DType, Tensor, TensorData};
use tita_core::{LlamaConfig, Result};

use crate::layers::{
    activate, attend_fused, cos_sin, fused_attention, linear, matvec_split, project, rms_norm,
    rope_inv_freq,
};
use crate::weights::{cast, TensorSource};

/// Keys and values of every layer for a batch of sequences, plus the left padding of each
/// sequence (padded positions are never attended to).
///
/// With a capacity ([`KvCache::reserve`]) each layer's keys and values live in one buffer of
/// that many positions, allocated at the first forward and written in place (`slice_assign`);
/// attention reads the filled part. A full buffer grows by the same reserve again. Without
/// one (training: one forward per batch) the first forward's keys and values are kept as they
/// are.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    len: usize,
    reserve: usize,
    pad_left: Vec<usize>,
    /// Per row, what to add to a token's index to get its rotary position (Qwen2-VL's
    /// `rope_deltas`: image tokens advance the position by less than their count).
    rope_delta: Vec<i64>,
    /// `[batch, 1, 1, 1, capacity]`: lowest-finite over each row's padding, else 0; built once
    /// for the decode steps of a padded batch.
    pad_bias: Option<Tensor<B, 5>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `batch` unpadded sequences.
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self::with_left_padding(num_layers, vec![0; batch])
    }

    /// An empty cache for sequences left-padded by `pad_left[b]` positions.
    pub fn with_left_padding(num_layers: usize, pad_left: Vec<usize>) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            len: 0,
            reserve: 0,
            rope_delta: vec![0; pad_left.len()],
            pad_left,
            pad_bias: None,
        }
    }

    /// Room for `extra` positions beyond the first forward (and the step by which a full
    /// buffer grows): decode steps then write in place instead of concatenating.
    pub fn reserve(mut self, extra: usize) -> Self {
        self.reserve = extra;
        self
    }

    /// Positions held, padding included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        self.pad_left.len()
    }

    pub fn pad_left(&self) -> &[usize] {
        &self.pad_left
    }

    /// Per row, the rotary position of token `i` (after the padding) minus `i`.
    pub fn rope_delta(&self) -> &[i64] {
        &self.rope_delta
    }

    /// Positions the buffers hold room for (`len` when there is no reserve).
    pub fn capacity(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dims()[2],
            _ => self.len,
        }
    }

    /// Writes this forward's keys and values after the `len` held and returns all of them.
    fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, h, s, d] = k.dims();
        let (past, t) = (self.len, self.len + s);
        let (device, dtype) = (k.device(), k.dtype());
        let (bk, bv) = match self.layers[layer].take() {
            None if self.reserve == 0 => {
                self.layers[layer] = Some((k.clone(), v.clone()));
                return (k, v);
            }
            None => {
                // Two buffers: a shared one would be copied at its first write.
                let zeros = || Tensor::<B, 4>::zeros([b, h, t + self.reserve, d], (&device, dtype));
                (zeros(), zeros())
            }
            Some((bk, bv)) if bk.dims()[2] < t => {
                let z = Tensor::<B, 4>::zeros(
                    [b, h, t + self.reserve - bk.dims()[2], d],
                    (&device, dtype),
                );
                (
                    Tensor::cat(vec![bk, z.clone()], 2),
                    Tensor::cat(vec![bv, z], 2),
                )
            }
            Some(kv) => kv,
        };
        let bk = bk.slice_assign([0..b, 0..h, past..t, 0..d], k);
        let bv = bv.slice_assign([0..b, 0..h, past..t, 0..d], v);
        let filled = (
            bk.clone().slice([0..b, 0..h, 0..t, 0..d]),
            bv.clone().slice([0..b, 0..h, 0..t, 0..d]),
        );
        self.layers[layer] = Some((bk, bv));
        filled
    }

    /// The additive mask of one decode step over `t` keys (padding only), from a mask built
    /// once per capacity.
    fn step_bias(&mut self, t: usize, capacity: usize, device: &B::Device) -> Tensor<B, 5> {
        let b = self.batch();
        let stale = self.pad_bias.as_ref().is_none_or(|m| m.dims()[4] < t);
        if stale {
            let capacity = capacity.max(t);
            let mut m = vec![0f32; b * capacity];
            for (bi, &pad) in self.pad_left.iter().enumerate() {
                m[bi * capacity..bi * capacity + pad.min(capacity)].fill(f32::MIN);
            }
            self.pad_bias = Some(Tensor::from_data(
                TensorData::new(m, [b, 1, 1, 1, capacity]),
                device,
            ));
        }
        let m = self.pad_bias.clone().expect("built above");
        m.slice([0..b, 0..1, 0..1, 0..1, 0..t])
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
struct Rotary<B: Backend> {
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
    fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, s, h, d] = x.dims();
        let rotated = x
            .clone()
            .reshape([b * s * h, d])
            .matmul(self.rotate_half.clone())
            .reshape([b, s, h, d]);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: nn::Linear<B>,
    pub k_proj: nn::Linear<B>,
    pub v_proj: nn::Linear<B>,
    pub o_proj: nn::Linear<B>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Blocks of a few-row projection (see [`project`]).
    pub split: usize,
}

/// What the keys of one forward may not see, beyond positions after the query's own.
enum Mask<B: Backend> {
    /// Nothing: one new token per row and no padding.
    None,
    /// Only later positions: several new tokens, no padding (the fused path's case).
    Causal,
    /// An additive bias `[batch, kv_heads, rep, s, t]`: causality and padding.
    Bias(Tensor<B, 5>),
}

impl<B: Backend> Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(Rotary<B>, Rotary<B>),
        mask: &Mask<B>,
        cache: &mut KvCache<B>,
        layer: usize,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (h, kvh, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let rep = h / kvh;
        let sp = self.split;
        let q = rope
            .0
            .apply(project(&self.q_proj, x.clone(), sp).reshape([b, s, h, d]))
            .swap_dims(1, 2);
        let k = rope
            .1
            .apply(project(&self.k_proj, x.clone(), sp).reshape([b, s, kvh, d]))
            .swap_dims(1, 2);
        let v = project(&self.v_proj, x, sp)
            .reshape([b, s, kvh, d])
            .swap_dims(1, 2);
        let (k, v) = cache.append(layer, k, v);
        let t = k.dims()[2];
        if let Mask::Causal = mask {
            let out = attend_fused(q, k, v, true);
            return project(&self.o_proj, out.swap_dims(1, 2).reshape([b, s, h * d]), sp);
        }

        // Grouped-query attention without copying K/V: the `rep` query heads that share a KV
        // head are stacked along the sequence axis (heads are grouped as in `repeat_kv`).
        let q = q.reshape([b, kvh, rep * s, d]);
        let dtype = q.dtype();
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar((d as f64).powf(-0.5));
        // Mask and softmax in f32 whatever the weights are, as transformers does.
        let mut scores = cast(scores, DType::F32).reshape([b, kvh, rep, s, t]);
        if let Mask::Bias(bias) = mask {
            scores = scores + bias.clone();
        }
        let probs = cast(activation::softmax(scores, 4), dtype).reshape([b, kvh, rep * s, t]);
        let out = probs
            .matmul(v)
            .reshape([b, h, s, d])
            .swap_dims(1, 2)
            .reshape([b, s, h * d]);
        project(&self.o_proj, out, sp)
    }
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: nn::Linear<B>,
    pub up_proj: nn::Linear<B>,
    pub down_proj: nn::Linear<B>,
    #[module(skip)]
    pub act: tita_core::Activation,
    pub split: usize,
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let sp = self.split;
        let gate = activate(project(&self.gate_proj, x.clone(), sp), self.act);
        project(&self.down_proj, gate * project(&self.up_proj, x, sp), sp)
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: nn::RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: nn::RmsNorm<B>,
    pub mlp: Mlp<B>,
}

#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: nn::RmsNorm<B>,
    /// `None` when the output projection is tied to `embed_tokens`.
    pub lm_head: Option<nn::Linear<B>>,
    /// Rotary cos and sin of every position (constants, not parameters).
    pub rope: (Tensor<B, 2>, Tensor<B, 2>),
    /// `rotate_half` as a matrix (see [`rotate_half_matrix`]).
    pub rotate_half: Tensor<B, 2>,
    /// Blocks of a few-row projection (see [`project`]).
    pub split: usize,
    /// Causal blocks of several tokens by burn's fused attention (see [`fused_attention`]).
    #[module(skip)]
    pub fused_attention: bool,
    #[module(skip)]
    pub config: LlamaConfig,
}

/// Where the decoder's tensors live in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaKeys {
    /// Prefix of `embed_tokens`, `layers.N`, `norm` (e.g. `model.` or `language_model.model.`).
    pub decoder: String,
    /// Full name of the output projection weight (e.g. `lm_head.weight`).
    pub lm_head: String,
}

impl<B: Backend> Llama<B> {
    /// Builds the decoder from a checkpoint, checking every tensor against `config`.
    pub fn load(
        w: &mut impl TensorSource,
        keys: &LlamaKeys,
        config: &LlamaConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let c = config;
        let p = &keys.decoder;
        let (hid, hd) = (c.hidden_size, c.head_dim);
        let embed_tokens = w.param(
            &format!("{p}embed_tokens.weight"),
            [c.vocab_size, hid],
            device,
        )?;
        let split = matvec_split::<B>(device);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = format!("{p}layers.{i}");
            let ab = c.attention_bias;
            let mb = c.mlp_bias;
            layers.push(DecoderLayer {
                input_layernorm: rms_norm(
                    w,
                    &format!("{l}.input_layernorm"),
                    hid,
                    c.rms_norm_eps,
                    device,
                )?,
                self_attn: Attention {
                    q_proj: linear(
                        w,
                        &format!("{l}.self_attn.q_proj"),
                        hid,
                        c.num_attention_heads * hd,
                        ab,
                        device,
                    )?,
                    k_proj: linear(
                        w,
                        &format!("{l}.self_attn.k_proj"),
                        hid,
                        c.num_key_value_heads * hd,
                        ab,
                        device,
                    )?,
                    v_proj: linear(
                        w,
                        &format!("{l}.self_attn.v_proj"),
                        hid,
                        c.num_key_value_heads * hd,
                        ab,
                        device,
                    )?,
                    o_proj: linear(
                        w,
                        &format!("{l}.self_attn.o_proj"),
                        c.num_attention_heads * hd,
                        hid,
                        c.o_proj_bias,
                        device,
                    )?,
                    n_heads: c.num_attention_heads,
                    n_kv_heads: c.num_key_value_heads,
                    head_dim: hd,
                    split,
                },
                post_attention_layernorm: rms_norm(
                    w,
                    &format!("{l}.post_attention_layernorm"),
                    hid,
                    c.rms_norm_eps,
                    device,
                )?,
                mlp: Mlp {
                    gate_proj: linear(
                        w,
                        &format!("{l}.mlp.gate_proj"),
                        hid,
                        c.intermediate_size,
                        mb,
                        device,
                    )?,
                    up_proj: linear(
                        w,
                        &format!("{l}.mlp.up_proj"),
                        hid,
                        c.intermediate_size,
                        mb,
                        device,
                    )?,
                    down_proj: linear(
                        w,
                        &format!("{l}.mlp.down_proj"),
                        c.intermediate_size,
                        hid,
                        mb,
                        device,
                    )?,
                    act: c.hidden_act,
                    split,
                },
            });
            // Old checkpoints carry the rotary buffer; it is recomputed from `rope_theta`.
            w.skip(&format!("{l}.self_attn.rotary_emb.inv_freq"));
        }
        let norm = rms_norm(w, &format!("{p}norm"), hid, c.rms_norm_eps, device)?;
        let lm_head = if c.tie_word_embeddings {
            w.skip(&keys.lm_head);
            None
        } else {
            let prefix = keys.lm_head.trim_end_matches(".weight");
            Some(linear(w, prefix, hid, c.vocab_size, false, device)?)
        };
        let rope = {
            let (cos, sin) = rope_tables(c.max_position_embeddings, hd, c.rope_theta, device);
            let dtype = embed_tokens.val().dtype();
            (cast(cos, dtype), cast(sin, dtype))
        };
        let rotate_half = cast(rotate_half_matrix(hd, device), embed_tokens.val().dtype());
        Ok(Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            rotate_half,
            split,
            fused_attention: fused_attention::<B>(device),
            config: config.clone(),
        })
    }

    pub fn new_cache(&self, batch: usize) -> KvCache<B> {
        KvCache::new(self.layers.len(), batch)
    }

    /// Embedding rows of `ids` for a batch: `[batch, seq, hidden]`.
    pub fn embed(&self, ids: &[Vec<u32>], device: &B::Device) -> Tensor<B, 3> {
        let (b, s) = (ids.len(), ids[0].len());
        let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
        let idx = Tensor::from_data(TensorData::new(flat, [b * s]), device);
        self.embed_tokens
            .val()
            .select(0, idx)
            .reshape([b, s, self.config.hidden_size])
    }

    /// Runs `x` (`[batch, seq, hidden]` input embeddings) after what `cache` holds and returns
    /// the final-normed hidden states; the cache grows by `seq`.
    pub fn forward(&self, x: Tensor<B, 3>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        self.forward_at(x, None, cache)
    }

    /// [`Llama::forward`] with explicit M-RoPE positions for these tokens; their deltas are
    /// kept in the cache for the tokens that follow.
    pub fn forward_at(
        &self,
        x: Tensor<B, 3>,
        positions: Option<&MropePositions>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        self.run(x, positions, cache, None)
    }

    /// The output of every decoder layer (before the final norm), as transformers'
    /// `hidden_states[1..]`; the cache advances as in a forward.
    pub fn layer_states(
        &self,
        x: Tensor<B, 3>,
        positions: Option<&MropePositions>,
        cache: &mut KvCache<B>,
    ) -> Vec<Tensor<B, 3>> {
        let mut states = Vec::with_capacity(self.layers.len());
        self.run(x, positions, cache, Some(&mut states));
        states
    }

    fn run(
        &self,
        x: Tensor<B, 3>,
        positions: Option<&MropePositions>,
        cache: &mut KvCache<B>,
        mut states: Option<&mut Vec<Tensor<B, 3>>>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let device = x.device();
        let past = cache.len;
        let t = past + s;
        let rope = match positions {
            Some(p) => {
                cache.rope_delta = p.deltas.clone();
                let c = &self.config;
                let (cos, sin) =
                    mrope_tables(p, &c.mrope_section, c.head_dim, c.rope_theta, &device);
                let dtype = self.embed_tokens.val().dtype();
                (cast(cos, dtype), cast(sin, dtype))
            }
            None => (
                rope_rows(&self.rope.0, &cache.pad_left, &cache.rope_delta, past, s),
                rope_rows(&self.rope.1, &cache.pad_left, &cache.rope_delta, past, s),
            ),
        };
        let c = &self.config;
        let (heads, kv_heads) = (c.num_attention_heads, c.num_key_value_heads);
        let for_queries = Rotary::new(&rope, heads, &self.rotate_half);
        // Without grouped queries the keys' tables are the same tensors.
        let for_keys = if kv_heads == heads {
            for_queries.clone()
        } else {
            Rotary::new(&rope, kv_heads, &self.rotate_half)
        };
        let rope = (for_queries, for_keys);

        // Additive mask over keys: causal within the new block, and never a padded position.
        // A lowest-finite value (not -inf) keeps fully padded query rows finite, as transformers does.
        let padded = cache.pad_left.iter().any(|&p| p > 0);
        let mask = if s > 1 && !padded && self.fused_attention {
            Mask::Causal
        } else if s > 1 {
            let mut m = vec![0f32; b * s * t];
            for (bi, &pad) in cache.pad_left.iter().enumerate() {
                for i in 0..s {
                    for j in 0..t {
                        if j > past + i || j < pad {
                            m[(bi * s + i) * t + j] = f32::MIN;
                        }
                    }
                }
            }
            // Repeated over the heads here, once per forward: adding a broadcast operand is a
            // slow strided loop on the CPU backend, in every layer.
            let heads = self.config.num_attention_heads;
            let kvh = self.config.num_key_value_heads;
            let m: Vec<f32> = m
                .chunks(s * t)
                .flat_map(|row| std::iter::repeat_n(row, heads).flatten().copied())
                .collect();
            Mask::Bias(Tensor::<B, 5>::from_data(
                TensorData::new(m, [b, kvh, heads / kvh, s, t]),
                &device,
            ))
        } else if padded {
            let capacity = t + cache.reserve;
            Mask::Bias(cache.step_bias(t, capacity, &device))
        } else {
            Mask::None
        };

        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                &rope,
                &mask,
                cache,
                i,
            );
            let x1 = x + h;
            x = x1.clone()
                + layer
                    .mlp
                    .forward(layer.post_attention_layernorm.forward(x1));
            if let Some(states) = states.as_deref_mut() {
                states.push(x.clone());
            }
        }
        cache.len = t;
        self.norm.forward(x)
    }

    /// Vocabulary logits of hidden states: `[batch, seq, vocab]`.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = match &self.lm_head {
            Some(head) => project(head, hidden, self.split),
            None => {
                let [b, s, h] = hidden.dims();
                let w = self.embed_tokens.val().transpose();
                hidden
                    .reshape([b * s, h])
                    .matmul(w)
                    .reshape([b, s, self.config.vocab_size])
            }
        };
        cast(logits, DType::F32)
    }
}
