//! CLIP vision tower (`CLIPVisionModel`): patch embedding, class and position embeddings,
//! `pre_layrnorm`, pre-norm encoder layers; returns the hidden state of every layer so that
//! any `vision_feature_layer` can be selected.

use burn::module::{Module, Param};
use burn::nn;
use burn::tensor::{activation, backend::Backend, DType, Tensor};
use tita_core::Result;

use crate::layers::{activate, layer_norm, linear};
use crate::llava::ClipVisionConfig;
use crate::scope::Scope;
use crate::weights::{cast, TensorSource};

#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    pub q_proj: nn::Linear<B>,
    pub k_proj: nn::Linear<B>,
    pub v_proj: nn::Linear<B>,
    pub out_proj: nn::Linear<B>,
    pub n_heads: usize,
}

impl<B: Backend> ClipAttention<B> {
    /// `q_proj`, `k_proj`, `v_proj`, `out_proj` under `w` (a layer's `self_attn`).
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &ClipVisionConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let hid = c.hidden_size;
        Ok(ClipAttention {
            q_proj: linear(w.pp("q_proj"), hid, hid, true, device)?,
            k_proj: linear(w.pp("k_proj"), hid, hid, true, device)?,
            v_proj: linear(w.pp("v_proj"), hid, hid, true, device)?,
            out_proj: linear(w.pp("out_proj"), hid, hid, true, device)?,
            n_heads: c.num_attention_heads,
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, hid] = x.dims();
        let (h, d) = (self.n_heads, hid / self.n_heads);
        let split = |t: Tensor<B, 3>| t.reshape([b, s, h, d]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar((d as f64).powf(-0.5));
        // Softmax in f32 whatever the weights are, as transformers does.
        let dtype = scores.dtype();
        let probs = cast(activation::softmax(cast(scores, DType::F32), 3), dtype);
        let out = probs.matmul(v);
        self.out_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, hid]))
    }
}

#[derive(Module, Debug)]
pub struct ClipLayer<B: Backend> {
    pub layer_norm1: nn::LayerNorm<B>,
    pub self_attn: ClipAttention<B>,
    pub layer_norm2: nn::LayerNorm<B>,
    pub fc1: nn::Linear<B>,
    pub fc2: nn::Linear<B>,
    #[module(skip)]
    pub act: tita_core::Activation,
}

impl<B: Backend> ClipLayer<B> {
    /// One `encoder.layers.N` of the tower.
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &ClipVisionConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let (hid, inter, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        Ok(ClipLayer {
            layer_norm1: layer_norm(w.pp("layer_norm1"), hid, eps, device)?,
            self_attn: ClipAttention::load(w.pp("self_attn"), c, device)?,
            layer_norm2: layer_norm(w.pp("layer_norm2"), hid, eps, device)?,
            fc1: linear(w.pp("mlp.fc1"), hid, inter, true, device)?,
            fc2: linear(w.pp("mlp.fc2"), inter, hid, true, device)?,
            act: c.hidden_act,
        })
    }

    /// Pre-norm attention and MLP, each added to the residual stream.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        let h = self.fc2.forward(activate(
            self.fc1.forward(self.layer_norm2.forward(x.clone())),
            self.act,
        ));
        x + h
    }
}

#[derive(Module, Debug)]
pub struct ClipVision<B: Backend> {
    /// The patch convolution as a `[channels·patch·patch, hidden]` matrix (stride = kernel, no bias).
    pub patch_embedding: Param<Tensor<B, 2>>,
    pub class_embedding: Param<Tensor<B, 1>>,
    pub position_embedding: Param<Tensor<B, 2>>,
    pub pre_layrnorm: nn::LayerNorm<B>,
    pub layers: Vec<ClipLayer<B>>,
    /// Loaded because checkpoints hold it; LLaVA's features are taken before it.
    pub post_layernorm: nn::LayerNorm<B>,
    #[module(skip)]
    pub config: ClipVisionConfig,
}

impl<B: Backend> ClipVision<B> {
    /// The tower under `w` (`vision_tower.vision_model.` in hub checkpoints, `vision_tower.`
    /// in transformers 5's).
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &ClipVisionConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let (hid, ch, p, eps) = (
            c.hidden_size,
            c.num_channels,
            c.patch_size,
            c.layer_norm_eps,
        );
        let mut e = w.pp("embeddings");
        // [hidden, C, p, p] -> [C·p·p, hidden] so that patches · W gives the conv output.
        let patch_embedding =
            e.param_transposed("patch_embedding.weight", &[hid, ch, p, p], device)?;
        let class_embedding = e.param("class_embedding", [hid], device)?;
        let position_embedding = e.param(
            "position_embedding.weight",
            [c.num_patches() + 1, hid],
            device,
        )?;
        e.skip("position_ids");
        let pre_layrnorm = layer_norm(w.pp("pre_layrnorm"), hid, eps, device)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| ClipLayer::load(w.pp(format_args!("encoder.layers.{i}")), c, device))
            .collect::<Result<_>>()?;
        let post_layernorm = layer_norm(w.pp("post_layernorm"), hid, eps, device)?;
        Ok(ClipVision {
            patch_embedding,
            class_embedding,
            position_embedding,
            pre_layrnorm,
            layers,
            post_layernorm,
            config: c.clone(),
        })
    }

    /// Hidden states 0..=`up_to` (0 = embeddings after `pre_layrnorm`, i = after layer i) of
    /// `pixels` `[batch, channels, size, size]`; layers past `up_to` are not computed.
    pub fn hidden_states(&self, pixels: Tensor<B, 4>, up_to: usize) -> Vec<Tensor<B, 3>> {
        let [b, ch, hgt, wid] = pixels.dims();
        let p = self.config.patch_size;
        let (gh, gw) = (hgt / p, wid / p);
        let hid = self.config.hidden_size;
        // Non-overlapping patches, flattened in the conv weight's (channel, row, col) order.
        let patches = pixels
            .reshape([b, ch, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, ch * p * p]);
        let patch_emb = patches.matmul(self.patch_embedding.val().unsqueeze::<3>());
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, hid])
            .expand([b, 1, hid]);
        let x =
            Tensor::cat(vec![cls, patch_emb], 1) + self.position_embedding.val().unsqueeze::<3>();
        let mut states = vec![self.pre_layrnorm.forward(x)];
        for layer in self.layers.iter().take(up_to) {
            let next = layer.forward(states.last().expect("at least the embeddings").clone());
            states.push(next);
        }
        states
    }
}
