//! The decoder layer's two halves: grouped-query self-attention over the cached keys and
//! values, and the gated (SwiGLU) MLP.

use burn::module::Module;
use burn::tensor::{activation, backend::Backend, DType, Tensor};
use tita_core::{Activation, Result};

use crate::cache::{KvLayer, Room};
use crate::layers::{activate, attend_fused, linear};
use crate::llama::rope::Rotary;
use crate::llama::LlamaConfig;
use crate::lora::LoraLinear;
use crate::mask::Mask;
use crate::scope::Scope;
use crate::weights::{cast, TensorSource};

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: LoraLinear<B>,
    pub k_proj: LoraLinear<B>,
    pub v_proj: LoraLinear<B>,
    pub o_proj: LoraLinear<B>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Blocks of a few-row projection (see [`project`]).
    pub split: usize,
}

impl<B: Backend> Attention<B> {
    /// `q_proj`, `k_proj`, `v_proj`, `o_proj` under `w` (a layer's `self_attn`).
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &LlamaConfig,
        split: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let (hid, q, kv) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let ab = c.attention_bias;
        Ok(Attention {
            q_proj: linear(w.pp("q_proj"), hid, q, ab, device)?,
            k_proj: linear(w.pp("k_proj"), hid, kv, ab, device)?,
            v_proj: linear(w.pp("v_proj"), hid, kv, ab, device)?,
            o_proj: linear(w.pp("o_proj"), q, hid, c.o_proj_bias, device)?,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            split,
        })
    }

    /// Attends `x`'s `s` new positions (after `past` cached ones, written to `kv`) over all of
    /// them.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(Rotary<B>, Rotary<B>),
        mask: &Mask<B>,
        kv: &mut KvLayer<B>,
        (past, room): (usize, Room),
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (h, kvh, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let rep = h / kvh;
        let sp = self.split;
        let q = rope
            .0
            .apply(self.q_proj.forward(x.clone(), sp).reshape([b, s, h, d]))
            .swap_dims(1, 2);
        let k = rope
            .1
            .apply(self.k_proj.forward(x.clone(), sp).reshape([b, s, kvh, d]))
            .swap_dims(1, 2);
        let v = self
            .v_proj
            .forward(x, sp)
            .reshape([b, s, kvh, d])
            .swap_dims(1, 2);
        let (k, v) = kv.append(k, v, past, room);
        let t = k.dims()[2];
        if let Mask::Causal = mask {
            let out = attend_fused(q, k, v, true);
            return self
                .o_proj
                .forward(out.swap_dims(1, 2).reshape([b, s, h * d]), sp);
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
        self.o_proj.forward(out, sp)
    }
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: LoraLinear<B>,
    pub up_proj: LoraLinear<B>,
    pub down_proj: LoraLinear<B>,
    #[module(skip)]
    pub act: Activation,
    pub split: usize,
}

impl<B: Backend> Mlp<B> {
    /// `gate_proj`, `up_proj`, `down_proj` under `w` (a layer's `mlp`).
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &LlamaConfig,
        split: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let (hid, inter, bias) = (c.hidden_size, c.intermediate_size, c.mlp_bias);
        Ok(Mlp {
            gate_proj: linear(w.pp("gate_proj"), hid, inter, bias, device)?,
            up_proj: linear(w.pp("up_proj"), hid, inter, bias, device)?,
            down_proj: linear(w.pp("down_proj"), inter, hid, bias, device)?,
            act: c.hidden_act,
            split,
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let sp = self.split;
        let gate = activate(self.gate_proj.forward(x.clone(), sp), self.act);
        self.down_proj
            .forward(gate * self.up_proj.forward(x, sp), sp)
    }
}
