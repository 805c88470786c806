//! DeepSeek-VL2's vision tower: timm's SigLIP `VisionTransformer` as the authors configure it
//! (no class token, learned position embedding, pre-norm blocks with a fused `qkv`, LayerNorm
//! eps 1e-6, GELU with the tanh approximation, a final LayerNorm). The attention-pool head the
//! checkpoints carry (`attn_pool.*`) is not used by the model and is skipped.

use burn::module::{Module, Param};
use burn::nn;
use burn::tensor::{activation, backend::Backend, DType, Tensor};
use tita_core::{Error, Result};

use crate::deepseek_vl2::config::VisionEncoderConfig;
use crate::layers::{layer_norm, linear};
use crate::scope::Scope;
use crate::weights::{cast, TensorSource};

/// timm's `LayerNorm` default in the SigLIP builders.
const EPS: f64 = 1e-6;

/// The `attn_pool` tensors timm's `AttentionPoolLatent` holds (unused: `ignore_head`).
const ATTN_POOL: [&str; 13] = [
    "latent",
    "q.weight",
    "q.bias",
    "kv.weight",
    "kv.bias",
    "proj.weight",
    "proj.bias",
    "norm.weight",
    "norm.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
];

#[derive(Module, Debug)]
pub struct SiglipBlock<B: Backend> {
    pub norm1: nn::LayerNorm<B>,
    /// q, k and v in one `[width, 3·width]` projection (timm's layout: q rows first).
    pub qkv: nn::Linear<B>,
    pub proj: nn::Linear<B>,
    pub norm2: nn::LayerNorm<B>,
    pub fc1: nn::Linear<B>,
    pub fc2: nn::Linear<B>,
    pub heads: usize,
}

impl<B: Backend> SiglipBlock<B> {
    /// `blocks.i` of the tower.
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &VisionEncoderConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let (wd, hid) = (c.width, c.mlp_hidden());
        Ok(SiglipBlock {
            norm1: layer_norm(w.pp("norm1"), wd, EPS, device)?,
            qkv: linear(w.pp("attn.qkv"), wd, 3 * wd, true, device)?,
            proj: linear(w.pp("attn.proj"), wd, wd, true, device)?,
            norm2: layer_norm(w.pp("norm2"), wd, EPS, device)?,
            fc1: linear(w.pp("mlp.fc1"), wd, hid, true, device)?,
            fc2: linear(w.pp("mlp.fc2"), hid, wd, true, device)?,
            heads: c.heads,
        })
    }

    /// Unmasked multi-head attention over the tile's patches, scale `1/√head_dim`.
    fn attend(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, wd] = x.dims();
        let (h, d) = (self.heads, wd / self.heads);
        // [b, s, 3·wd] -> [3, b, h, s, d]
        let qkv = self
            .qkv
            .forward(x)
            .reshape([b, s, 3, h, d])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .slice([i..i + 1, 0..b, 0..h, 0..s, 0..d])
                .reshape([b, h, s, d])
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar((d as f64).powf(-0.5));
        // Softmax in f32 whatever the weights are.
        let dtype = scores.dtype();
        let probs = cast(activation::softmax(cast(scores, DType::F32), 3), dtype);
        let out = probs.matmul(v).swap_dims(1, 2).reshape([b, s, wd]);
        self.proj.forward(out)
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.attend(self.norm1.forward(x));
        let h = self.fc2.forward(activation::gelu_approximate(
            self.fc1.forward(self.norm2.forward(x.clone())),
        ));
        x + h
    }
}

#[derive(Module, Debug)]
pub struct SiglipVit<B: Backend> {
    /// The patch convolution as a `[3·patch·patch, width]` matrix (stride = kernel).
    pub patch_weight: Param<Tensor<B, 2>>,
    pub patch_bias: Param<Tensor<B, 1>>,
    /// `[grid², width]`, one row per patch (no class token).
    pub pos_embed: Param<Tensor<B, 2>>,
    pub blocks: Vec<SiglipBlock<B>>,
    pub norm: nn::LayerNorm<B>,
    #[module(skip)]
    pub config: VisionEncoderConfig,
}

impl<B: Backend> SiglipVit<B> {
    /// The tower under `w` (`vision.` in the checkpoints).
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &VisionEncoderConfig,
        device: &B::Device,
    ) -> Result<Self> {
        if c.class_token {
            return Err(Error::argument(
                "vision_config.class_token",
                "true is not supported (the DeepSeek-VL2 towers have no class token)",
            ));
        }
        let (wd, p, g) = (c.width, c.patch_size, c.grid());
        let patch_weight = w.param_transposed("patch_embed.proj.weight", &[wd, 3, p, p], device)?;
        let patch_bias = w.param("patch_embed.proj.bias", [wd], device)?;
        let pos_embed = w
            .take::<B, 3>("pos_embed", [1, g * g, wd], device)?
            .reshape([g * g, wd]);
        let pos_embed = crate::weights::named_param(&w.key("pos_embed"), pos_embed);
        let blocks = (0..c.layers)
            .map(|i| SiglipBlock::load(w.pp(format_args!("blocks.{i}")), c, device))
            .collect::<Result<_>>()?;
        let norm = layer_norm(w.pp("norm"), wd, EPS, device)?;
        let mut pool = w.pp("attn_pool");
        for name in ATTN_POOL {
            pool.skip(name);
        }
        Ok(SiglipVit {
            patch_weight,
            patch_bias,
            pos_embed,
            blocks,
            norm,
            config: c.clone(),
        })
    }

    /// Features of `tiles` `[n, 3, image_size, image_size]`: `[n, grid², width]` after the
    /// final LayerNorm. Pixels past the last whole patch (384 = 27·14 + 6) are dropped, as the
    /// stride-`patch` convolution drops them.
    pub fn forward(&self, tiles: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
        let c = &self.config;
        let [n, ch, hgt, wid] = tiles.dims();
        if ch != 3 || hgt != c.image_size || wid != c.image_size {
            return Err(Error::argument(
                "pixels",
                format!(
                    "tiles of shape [{ch}, {hgt}, {wid}] do not fit the tower's [3, {s}, {s}]",
                    s = c.image_size
                ),
            ));
        }
        let (p, g, wd) = (c.patch_size, c.grid(), c.width);
        let used = g * p;
        let patches = tiles
            .slice([0..n, 0..3, 0..used, 0..used])
            .reshape([n, 3, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([n, g * g, 3 * p * p]);
        let mut x = patches.matmul(self.patch_weight.val().unsqueeze::<3>())
            + self.patch_bias.val().reshape([1, 1, wd])
            + self.pos_embed.val().unsqueeze::<3>();
        for block in &self.blocks {
            x = block.forward(x);
        }
        Ok(self.norm.forward(x))
    }
}
