//! DINOv2 vision tower (transformers' `Dinov2Model`): a conv patch embedding with bias, CLS
//! token, learned position table (bicubically resized to the input's patch grid as
//! transformers does), pre-norm blocks with layer-scale on both residual branches, and a final
//! LayerNorm. Loads from `Dinov2Model` safetensors (hub names) or from an ONNX export whose
//! initializers carry those names ([`onnx`]).

pub mod config;
pub mod onnx;

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn;
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use tita_core::image::{ImageProcessor, PixelValues, ResizeTo};
use tita_core::{Activation, Error, Result};

pub use config::Dinov2Config;

use crate::layers::{activate, layer_norm, linear};
use crate::llava::clip::ClipAttention;
use crate::scope::Scope;
use crate::weights::{cast, Precision, Recorder, StoredTensor, TensorSource, Weights};

/// One `encoder.layer.N`: `x + ls1·attn(norm1(x))`, then `x + ls2·mlp(norm2(x))`.
#[derive(Module, Debug)]
pub struct Dinov2Layer<B: Backend> {
    pub norm1: nn::LayerNorm<B>,
    /// `attention.attention.{query,key,value}` and `attention.output.dense`: the same
    /// multi-head attention as CLIP's.
    pub attention: ClipAttention<B>,
    pub layer_scale1: Param<Tensor<B, 1>>,
    pub norm2: nn::LayerNorm<B>,
    pub fc1: nn::Linear<B>,
    pub fc2: nn::Linear<B>,
    pub layer_scale2: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub act: Activation,
}

impl<B: Backend> Dinov2Layer<B> {
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &Dinov2Config,
        device: &B::Device,
    ) -> Result<Self> {
        let (hid, eps) = (c.hidden_size, c.layer_norm_eps);
        let norm1 = layer_norm(w.pp("norm1"), hid, eps, device)?;
        let mut a = w.pp("attention");
        let mut qkv = a.pp("attention");
        let (q_proj, k_proj, v_proj) = (
            linear(qkv.pp("query"), hid, hid, c.qkv_bias, device)?,
            linear(qkv.pp("key"), hid, hid, c.qkv_bias, device)?,
            linear(qkv.pp("value"), hid, hid, c.qkv_bias, device)?,
        );
        let out_proj = linear(a.pp("output.dense"), hid, hid, true, device)?;
        Ok(Dinov2Layer {
            norm1,
            attention: ClipAttention {
                q_proj,
                k_proj,
                v_proj,
                out_proj,
                n_heads: c.num_attention_heads,
            },
            layer_scale1: w.param("layer_scale1.lambda1", [hid], device)?,
            norm2: layer_norm(w.pp("norm2"), hid, eps, device)?,
            fc1: linear(w.pp("mlp.fc1"), hid, c.intermediate_size(), true, device)?,
            fc2: linear(w.pp("mlp.fc2"), c.intermediate_size(), hid, true, device)?,
            layer_scale2: w.param("layer_scale2.lambda1", [hid], device)?,
            act: c.hidden_act,
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let scale = |p: &Param<Tensor<B, 1>>| p.val().unsqueeze::<3>();
        let attn = self.attention.forward(self.norm1.forward(x.clone()));
        let x = x + attn * scale(&self.layer_scale1);
        let h = self.fc2.forward(activate(
            self.fc1.forward(self.norm2.forward(x.clone())),
            self.act,
        ));
        x + h * scale(&self.layer_scale2)
    }
}

/// What `Dinov2Model` returns.
#[derive(Debug, Clone)]
pub struct Dinov2Output<B: Backend> {
    /// After the final LayerNorm, `[batch, 1 + patches, hidden]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// The CLS row of `last_hidden_state`, `[batch, hidden]`.
    pub pooler_output: Tensor<B, 2>,
    /// 0 = embeddings, i = output of block i (before the final LayerNorm).
    pub hidden_states: Vec<Tensor<B, 3>>,
}

#[derive(Module, Debug)]
pub struct Dinov2Vision<B: Backend> {
    /// The patch convolution as a `[channels·patch·patch, hidden]` matrix (stride = kernel).
    pub patch_embedding: Param<Tensor<B, 2>>,
    pub patch_bias: Param<Tensor<B, 1>>,
    pub cls_token: Param<Tensor<B, 3>>,
    /// `[1, 1 + grid², hidden]` at the trained size (`image_size / patch_size` per side).
    pub position_embeddings: Param<Tensor<B, 3>>,
    pub layers: Vec<Dinov2Layer<B>>,
    pub layernorm: nn::LayerNorm<B>,
    #[module(skip)]
    pub config: Dinov2Config,
}

impl<B: Backend> Dinov2Vision<B> {
    /// The tower under `w` (empty for a `Dinov2Model` checkpoint). `embeddings.mask_token`
    /// (masked image modelling only) is skipped.
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &Dinov2Config,
        device: &B::Device,
    ) -> Result<Self> {
        let (hid, ch, p) = (c.hidden_size, c.num_channels, c.patch_size);
        let mut e = w.pp("embeddings");
        e.skip("mask_token");
        let cls_token = e.param("cls_token", [1, 1, hid], device)?;
        let position_embeddings =
            e.param("position_embeddings", [1, c.num_positions(), hid], device)?;
        let mut proj = e.pp("patch_embeddings.projection");
        // [hidden, C, p, p] -> [C·p·p, hidden] so that patches · W gives the conv output.
        let patch_embedding = proj.param_transposed("weight", &[hid, ch, p, p], device)?;
        let patch_bias = proj.param("bias", [hid], device)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Dinov2Layer::load(w.pp(format_args!("encoder.layer.{i}")), c, device))
            .collect::<Result<_>>()?;
        let layernorm = layer_norm(w.pp("layernorm"), hid, c.layer_norm_eps, device)?;
        Ok(Dinov2Vision {
            patch_embedding,
            patch_bias,
            cls_token,
            position_embeddings,
            layers,
            layernorm,
            config: c.clone(),
        })
    }

    /// Builds the tower from `source` (HF names, no prefix) with parameters in `dtype`;
    /// returns it with the tensors it was built from (what a save writes back).
    pub fn from_source(
        source: &mut impl TensorSource,
        c: &Dinov2Config,
        dtype: DType,
        device: &B::Device,
    ) -> Result<(Self, Vec<StoredTensor>)> {
        let mut rec = Recorder::new(source, dtype);
        let model = Self::load(Scope::new(&mut rec, ""), c, device)?;
        Ok((model, rec.taken))
    }

    /// A `Dinov2Model` checkpoint directory (`config.json` + `model.safetensors`, as
    /// `facebook/dinov2-small` ships it); every tensor must be used.
    pub fn from_pretrained(dir: &Path, precision: Precision, device: &B::Device) -> Result<Self> {
        let config = Dinov2Config::from_file(dir)?;
        let mut weights = Weights::open(dir)?;
        if !weights.contains("embeddings.cls_token") {
            return Err(Error::checkpoint(
                weights.source(),
                "no `embeddings.cls_token`: not a `Dinov2Model` checkpoint (HF names, no prefix)",
            ));
        }
        let dtype = precision.resolve(weights.dtype());
        let (model, _) = Self::from_source(&mut weights, &config, dtype, device)?;
        weights.finish()?;
        Ok(model)
    }

    /// The backbone of an ONNX export (see [`onnx`]), its config inferred from the tensors.
    pub fn from_onnx(path: &Path, precision: Precision, device: &B::Device) -> Result<Self> {
        let (mut weights, config) = onnx::open(path)?;
        let dtype = precision.resolve(weights.dtype());
        let (model, _) = Self::from_source(&mut weights, &config, dtype, device)?;
        weights.finish()?;
        Ok(model)
    }

    /// The position table for a `gh`×`gw` patch grid `[1, 1 + gh·gw, hidden]`: as stored at
    /// the trained grid, else its CLS row and the patch rows resized by torch's bicubic
    /// interpolation (`align_corners=False`, A = −0.75, no antialias) in f32, as
    /// transformers' `Dinov2Embeddings.interpolate_pos_encoding`.
    pub fn position_table(&self, gh: usize, gw: usize) -> Tensor<B, 3> {
        let table = self.position_embeddings.val();
        let n = self.config.grid();
        if gh == n && gw == n {
            return table;
        }
        let hid = self.config.hidden_size;
        let device = table.device();
        let dtype = table.dtype();
        let cls = table.clone().slice([0..1, 0..1, 0..hid]);
        let grid = cast(table.slice([0..1, 1..n * n + 1, 0..hid]), DType::F32);
        let matrix = |out: usize| {
            Tensor::<B, 2>::from_data(TensorData::new(bicubic_matrix(n, out), [out, n]), &device)
        };
        // Rows first ([gh, n] · [n, n·hid]), then columns ([gh·hid, n] · [n, gw]).
        let rows = matrix(gh).matmul(grid.reshape([n, n * hid]));
        let both = rows
            .reshape([gh, n, hid])
            .swap_dims(1, 2)
            .reshape([gh * hid, n])
            .matmul(matrix(gw).transpose());
        let patches = both
            .reshape([gh, hid, gw])
            .swap_dims(1, 2)
            .reshape([1, gh * gw, hid]);
        Tensor::cat(vec![cls, cast(patches, dtype)], 1)
    }

    /// Hidden states 0..=`up_to` (0 = embeddings, i = after block i) of `pixels`
    /// `[batch, channels, height, width]`; rows and columns past whole patches are dropped
    /// (as the strided convolution does), blocks past `up_to` are not computed.
    pub fn hidden_states(&self, pixels: Tensor<B, 4>, up_to: usize) -> Vec<Tensor<B, 3>> {
        let [b, ch, h, w] = pixels.dims();
        let (p, hid) = (self.config.patch_size, self.config.hidden_size);
        let (gh, gw) = (h / p, w / p);
        let pixels = if h % p != 0 || w % p != 0 {
            pixels.slice([0..b, 0..ch, 0..gh * p, 0..gw * p])
        } else {
            pixels
        };
        let weight = self.patch_embedding.val();
        let pixels = cast(pixels, weight.dtype());
        // Non-overlapping patches, flattened in the conv weight's (channel, row, col) order.
        let patches = pixels
            .reshape([b, ch, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, ch * p * p]);
        let patch_emb =
            patches.matmul(weight.unsqueeze::<3>()) + self.patch_bias.val().unsqueeze::<3>();
        let cls = self.cls_token.val().expand([b, 1, hid]);
        let x = Tensor::cat(vec![cls, patch_emb], 1) + self.position_table(gh, gw);
        let mut states = vec![x];
        for layer in self.layers.iter().take(up_to) {
            let next = layer.forward(states.last().expect("at least the embeddings").clone());
            states.push(next);
        }
        states
    }

    /// `Dinov2Model(pixel_values, output_hidden_states=True)`.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Dinov2Output<B> {
        let hidden_states = self.hidden_states(pixels, self.layers.len());
        let last = hidden_states
            .last()
            .expect("at least the embeddings")
            .clone();
        let last_hidden_state = self.layernorm.forward(last);
        let [b, _, hid] = last_hidden_state.dims();
        let pooler_output = last_hidden_state
            .clone()
            .slice([0..b, 0..1, 0..hid])
            .reshape([b, hid]);
        Dinov2Output {
            last_hidden_state,
            pooler_output,
            hidden_states,
        }
    }

    /// Preprocessed images (all the same size) as a `[batch, channels, height, width]` tensor.
    pub fn pixels_tensor(
        &self,
        images: &[&PixelValues],
        device: &B::Device,
    ) -> Result<Tensor<B, 4>> {
        let ch = self.config.num_channels;
        let Some(first) = images.first() else {
            return Err(Error::argument("images", "no image given"));
        };
        let (h, w) = (first.height, first.width);
        let mut data = Vec::with_capacity(images.len() * ch * h * w);
        for (i, img) in images.iter().enumerate() {
            if (img.height, img.width) != (h, w) || img.data.len() != ch * h * w {
                return Err(Error::argument(
                    "images",
                    format!(
                        "image {i} is {}x{} with {} values; expected {w}x{h} with {ch} channels like image 0",
                        img.width,
                        img.height,
                        img.data.len()
                    ),
                ));
            }
            data.extend_from_slice(&img.data);
        }
        Ok(Tensor::from_data(
            TensorData::new(data, [images.len(), ch, h, w]),
            device,
        ))
    }
}

/// DINOv2's standard preprocessing (the hub's `preprocessor_config.json` for
/// `facebook/dinov2-*`, a `BitImageProcessor`): shortest edge 256 by Pillow's bicubic, centre
/// crop 224, rescale 1/255, ImageNet mean and std.
pub fn image_processor() -> ImageProcessor {
    ImageProcessor {
        size: ResizeTo::ShortestEdge(256),
        crop_size: (224, 224),
        image_mean: [0.485, 0.456, 0.406],
        image_std: [0.229, 0.224, 0.225],
        ..ImageProcessor::default()
    }
}

/// torch's `upsample_bicubic2d` along one axis (`align_corners=False`, A = −0.75, taps
/// clamped at the border) as an `[output, input]` matrix, computed in f32 as torch does.
pub fn bicubic_matrix(input: usize, output: usize) -> Vec<f32> {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f32 / output as f32;
    let mut m = vec![0f32; output * input];
    for o in 0..output {
        let real = scale * (o as f32 + 0.5) - 0.5;
        let base = real.floor();
        let t = real - base;
        let weights = [far(t + 1.0), near(t), near(1.0 - t), far((1.0 - t) + 1.0)];
        for (j, wt) in weights.into_iter().enumerate() {
            let idx = (base as i64 - 1 + j as i64).clamp(0, input as i64 - 1) as usize;
            m[o * input + idx] += wt;
        }
    }
    m
}
