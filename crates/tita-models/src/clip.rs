//! CLIP vision tower (`CLIPVisionModel`): patch embedding, class and position embeddings,
//! `pre_layrnorm`, pre-norm encoder layers; returns the hidden state of every layer so that
//! any `vision_feature_layer` can be selected.

use burn::module::{Module, Param};
use burn::nn;
use burn::tensor::{activation, backend::Backend, DType, Tensor};
use tita_core::{ClipVisionConfig, Result};

use crate::layers::{activate, layer_norm, linear};
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
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
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
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
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
    /// `prefix` is e.g. `vision_tower.vision_model.` (hub) or `vision_tower.` (transformers 5).
    pub fn load(
        w: &mut impl TensorSource,
        prefix: &str,
        config: &ClipVisionConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let c = config;
        let (hid, ch, p) = (c.hidden_size, c.num_channels, c.patch_size);
        // [hidden, C, p, p] -> [C·p·p, hidden] so that patches · W gives the conv output.
        let patch_embedding = w.param_transposed(
            &format!("{prefix}embeddings.patch_embedding.weight"),
            &[hid, ch, p, p],
            device,
        )?;
        let class_embedding = w.param(
            &format!("{prefix}embeddings.class_embedding"),
            [hid],
            device,
        )?;
        let position_embedding = w.param(
            &format!("{prefix}embeddings.position_embedding.weight"),
            [c.num_patches() + 1, hid],
            device,
        )?;
        w.skip(&format!("{prefix}embeddings.position_ids"));
        let eps = c.layer_norm_eps;
        let pre_layrnorm = layer_norm(w, &format!("{prefix}pre_layrnorm"), hid, eps, device)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = format!("{prefix}encoder.layers.{i}");
            layers.push(ClipLayer {
                layer_norm1: layer_norm(w, &format!("{l}.layer_norm1"), hid, eps, device)?,
                self_attn: ClipAttention {
                    q_proj: linear(w, &format!("{l}.self_attn.q_proj"), hid, hid, true, device)?,
                    k_proj: linear(w, &format!("{l}.self_attn.k_proj"), hid, hid, true, device)?,
                    v_proj: linear(w, &format!("{l}.self_attn.v_proj"), hid, hid, true, device)?,
                    out_proj: linear(
                        w,
                        &format!("{l}.self_attn.out_proj"),
                        hid,
                        hid,
                        true,
                        device,
                    )?,
                    n_heads: c.num_attention_heads,
                },
                layer_norm2: layer_norm(w, &format!("{l}.layer_norm2"), hid, eps, device)?,
                fc1: linear(
                    w,
                    &format!("{l}.mlp.fc1"),
                    hid,
                    c.intermediate_size,
                    true,
                    device,
                )?,
                fc2: linear(
                    w,
                    &format!("{l}.mlp.fc2"),
                    c.intermediate_size,
                    hid,
                    true,
                    device,
                )?,
                act: c.hidden_act,
            });
        }
        let post_layernorm = layer_norm(w, &format!("{prefix}post_layernorm"), hid, eps, device)?;
        Ok(ClipVision {
            patch_embedding,
            class_embedding,
            position_embedding,
            pre_layrnorm,
            layers,
            post_layernorm,
            config: config.clone(),
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
