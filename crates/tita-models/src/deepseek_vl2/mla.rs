//! Multi-head latent attention (DeepSeek-V2): keys and values are decompressed per head from one
//! shared latent, so the cache keeps only that latent and the shared rope key per position
//! (`kv_lora_rank + qk_rope_head_dim` values, against `heads · (nope + rope + v)` for full K/V).
//!
//! Computed in the absorbed form the authors' code uses: the key half of `kv_b_proj` is folded
//! into the queries and the value half applied after attending over the latent, so nothing is
//! decompressed per position.

use burn::module::{Module, Param};
use burn::nn;
use burn::tensor::{activation, backend::Backend, DType, Tensor};
use tita_core::Result;

use crate::cache::{LayerCache, Room, SeqBuffer};
use crate::deepseek_vl2::config::{DeepseekV2Config, MlaDims};
use crate::layers::{linear, project, rms_norm};
use crate::llama::rope::Rotary;
use crate::mask::Mask;
use crate::scope::Scope;
use crate::weights::{cast, TensorSource};

/// The authors' `q_a_layernorm` and `kv_a_layernorm` are built without the config's eps.
const LATENT_NORM_EPS: f64 = 1e-6;

/// One layer's cache: `[batch, positions, kv_lora_rank + qk_rope_head_dim]`, the normalised
/// latent followed by the rotated rope key (in the half-split order the rotation leaves it).
#[derive(Debug, Clone)]
pub struct MlaLayer<B: Backend> {
    latent: SeqBuffer<B, 3>,
}

impl<B: Backend> Default for MlaLayer<B> {
    fn default() -> Self {
        MlaLayer {
            latent: SeqBuffer::new(1),
        }
    }
}

impl<B: Backend> MlaLayer<B> {
    /// Writes this forward's latents after `past` and returns all of them.
    pub fn append(&mut self, latent: Tensor<B, 3>, past: usize, room: Room) -> Tensor<B, 3> {
        self.latent.append(latent, past, room)
    }

    /// Bytes the buffer holds per position and sequence (0 before the first write).
    pub fn bytes_per_position(&self) -> usize {
        self.latent.buffer().map_or(0, |t| {
            let [_, _, width] = t.dims();
            width * t.dtype().size()
        })
    }
}

impl<B: Backend> LayerCache<B> for MlaLayer<B> {
    fn allocated(&self) -> usize {
        self.latent.allocated()
    }
}

/// `q_a_proj` -> `q_a_layernorm` -> `q_b_proj`.
#[derive(Module, Debug)]
pub struct QueryLora<B: Backend> {
    pub q_a_proj: nn::Linear<B>,
    pub q_a_layernorm: nn::RmsNorm<B>,
    pub q_b_proj: nn::Linear<B>,
}

/// The query projection: plain (`q_lora_rank` null) or through a low-rank bottleneck.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum QueryProj<B: Backend> {
    Plain(nn::Linear<B>),
    Lora(QueryLora<B>),
}

impl<B: Backend> QueryProj<B> {
    fn forward(&self, x: Tensor<B, 3>, split: usize) -> Tensor<B, 3> {
        match self {
            QueryProj::Plain(q) => project(q, x, split),
            QueryProj::Lora(l) => {
                let a = l.q_a_layernorm.forward(project(&l.q_a_proj, x, split));
                project(&l.q_b_proj, a, split)
            }
        }
    }
}

#[derive(Module, Debug)]
pub struct MlaAttention<B: Backend> {
    pub q: QueryProj<B>,
    /// `[latent | rope key]` of each position.
    pub kv_a_proj_with_mqa: nn::Linear<B>,
    pub kv_a_layernorm: nn::RmsNorm<B>,
    /// `kv_b_proj.weight` as stored, `[heads · (nope + v), kv_lora_rank]`: per head the rows
    /// that turn the latent into the key's nope part, then those that make the value.
    pub kv_b_proj: Param<Tensor<B, 2>>,
    pub o_proj: nn::Linear<B>,
    pub heads: usize,
    pub kv_lora_rank: usize,
    pub nope: usize,
    pub rope: usize,
    pub v_dim: usize,
    pub split: usize,
}

impl<B: Backend> MlaAttention<B> {
    /// A layer's `self_attn`.
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &DeepseekV2Config,
        d: &MlaDims,
        split: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let (hid, h, bias) = (c.hidden_size, c.num_attention_heads, c.attention_bias);
        let qd = d.q_head_dim();
        let q = match d.q_lora_rank {
            None => QueryProj::Plain(linear(w.pp("q_proj"), hid, h * qd, false, device)?),
            Some(r) => QueryProj::Lora(QueryLora {
                q_a_proj: linear(w.pp("q_a_proj"), hid, r, bias, device)?,
                q_a_layernorm: rms_norm(w.pp("q_a_layernorm"), r, LATENT_NORM_EPS, device)?,
                q_b_proj: linear(w.pp("q_b_proj"), r, h * qd, false, device)?,
            }),
        };
        let r = d.kv_lora_rank;
        let attn = MlaAttention {
            q,
            kv_a_proj_with_mqa: linear(
                w.pp("kv_a_proj_with_mqa"),
                hid,
                d.latent_width(),
                bias,
                device,
            )?,
            kv_a_layernorm: rms_norm(w.pp("kv_a_layernorm"), r, LATENT_NORM_EPS, device)?,
            kv_b_proj: w.param(
                "kv_b_proj.weight",
                [h * (d.qk_nope_head_dim + d.v_head_dim), r],
                device,
            )?,
            o_proj: linear(w.pp("o_proj"), h * d.v_head_dim, hid, bias, device)?,
            heads: h,
            kv_lora_rank: r,
            nope: d.qk_nope_head_dim,
            rope: d.qk_rope_head_dim,
            v_dim: d.v_head_dim,
            split,
        };
        w.skip("rotary_emb.inv_freq");
        Ok(attn)
    }

    /// Attends `x`'s `s` new positions (after `past` cached ones, whose latents `cache` holds)
    /// over all of them. `rope` turns `[batch, s, heads, rope]` queries and the
    /// `[batch, s, 1, rope]` key; `mask` is never [`Mask::Causal`] (its caller asks for biases).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(Rotary<B>, Rotary<B>),
        mask: &Mask<B>,
        cache: &mut MlaLayer<B>,
        (past, room): (usize, Room),
    ) -> Tensor<B, 3> {
        debug_assert!(
            !matches!(mask, Mask::Causal),
            "MLA needs an explicit causal bias"
        );
        let [b, s, _] = x.dims();
        let (h, r, nope, rd, vd) = (
            self.heads,
            self.kv_lora_rank,
            self.nope,
            self.rope,
            self.v_dim,
        );
        let qd = nope + rd;
        let sp = self.split;

        let q = self.q.forward(x.clone(), sp).reshape([b, s, h, qd]);
        let q_nope = q.clone().slice([0..b, 0..s, 0..h, 0..nope]);
        let q_pe = rope.0.apply(halves(q.slice([0..b, 0..s, 0..h, nope..qd])));

        let kv = project(&self.kv_a_proj_with_mqa, x, sp);
        let latent = self
            .kv_a_layernorm
            .forward(kv.clone().slice([0..b, 0..s, 0..r]));
        let k_pe = rope
            .1
            .apply(halves(
                kv.slice([0..b, 0..s, r..r + rd]).reshape([b, s, 1, rd]),
            ))
            .reshape([b, s, rd]);
        let all = cache.append(Tensor::cat(vec![latent, k_pe], 2), past, room);
        let t = all.dims()[1];

        // Per head: [nope + v, r]; the key rows fold into the queries, the value rows follow.
        let kv_b = self.kv_b_proj.val().reshape([h, nope + vd, r]);
        let w_k = kv_b.clone().slice([0..h, 0..nope, 0..r]);
        let w_v = kv_b.slice([0..h, nope..nope + vd, 0..r]);
        let q_latent = q_nope
            .permute([2, 0, 1, 3])
            .reshape([h, b * s, nope])
            .matmul(w_k)
            .reshape([h, b, s, r])
            .swap_dims(0, 1);
        // Every head meets the same keys `[latent | rope key]`: one product for all heads.
        let q_all =
            Tensor::cat(vec![q_latent, q_pe.swap_dims(1, 2)], 3).reshape([b, h * s, r + rd]);
        let scores = q_all
            .matmul(all.clone().swap_dims(1, 2))
            .mul_scalar((qd as f64).powf(-0.5));
        let dtype = scores.dtype();
        // Mask and softmax in f32, as the authors' code does.
        let mut scores = cast(scores, DType::F32).reshape([b, 1, h, s, t]);
        if let Mask::Bias(bias) = mask {
            scores = scores + bias.clone();
        }
        let probs = cast(activation::softmax(scores, 4), dtype).reshape([b, h * s, t]);
        let out = probs
            .matmul(all.slice([0..b, 0..t, 0..r]))
            .reshape([b, h, s, r])
            .swap_dims(0, 1)
            .reshape([h, b * s, r])
            .matmul(w_v.swap_dims(1, 2))
            .reshape([h, b, s, vd])
            .permute([1, 2, 0, 3])
            .reshape([b, s, h * vd]);
        project(&self.o_proj, out, sp)
    }
}

/// The authors' interleaved rotary layout: pairs `(2i, 2i + 1)` of the last axis regrouped as
/// evens then odds, which rotate-half RoPE then turns as pairs `(i, i + d/2)`.
fn halves<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, s, h, d] = x.dims();
    x.reshape([b, s, h, d / 2, 2])
        .swap_dims(3, 4)
        .reshape([b, s, h, d])
}
