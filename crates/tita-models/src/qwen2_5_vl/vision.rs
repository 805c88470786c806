//! Qwen2.5-VL vision tower (`Qwen2_5_VisionTransformerPretrainedModel`): a linear patch
//! embedding (the Conv3d over `temporal_patch_size` frames of `patch_size`² pixels), 2-D
//! rotary embeddings, pre-norm blocks that attend within windows of merged cells except the
//! `fullatt_block_indexes` ones, and the 2×2 patch merger. Patches are reordered window by
//! window before the blocks and the merged cells put back in the processor's order after.

use burn::module::{Module, Param};
use burn::nn;
use burn::tensor::{activation, backend::Backend, DType, Int, Tensor, TensorData};
use tita_core::image::{flatten_patches, PixelValues};
use tita_core::{Activation, Error, Result};

use crate::layers::{activate, cos_sin, linear, rms_norm, rope_inv_freq};
use crate::qwen2_5_vl::QwenVisionConfig;
use crate::scope::Scope;
use crate::vlm::ImageFeatures;
use crate::weights::{cast, TensorSource};

/// Transformers' vision RMSNorm epsilon (fixed, not in the config).
const VISION_EPS: f64 = 1e-6;

#[derive(Module, Debug)]
pub struct VisionAttention<B: Backend> {
    pub qkv: nn::Linear<B>,
    pub proj: nn::Linear<B>,
    pub n_heads: usize,
}

impl<B: Backend> VisionAttention<B> {
    fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &QwenVisionConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let d = c.hidden_size;
        Ok(VisionAttention {
            qkv: linear(w.pp("qkv"), d, 3 * d, true, device)?,
            proj: linear(w.pp("proj"), d, d, true, device)?,
            n_heads: c.num_heads,
        })
    }

    /// `x`: `[n, hidden]` in window order.
    fn forward(
        &self,
        x: Tensor<B, 2>,
        rope: &(Tensor<B, 3>, Tensor<B, 3>),
        seg: &Segments<B>,
    ) -> Tensor<B, 2> {
        let [n, d] = x.dims();
        let (h, hd) = (self.n_heads, d / self.n_heads);
        let qkv = self.qkv.forward(x).reshape([n, 3, h, hd]);
        let part = |i: usize| {
            qkv.clone()
                .slice([0..n, i..i + 1, 0..h, 0..hd])
                .reshape([n, h, hd])
        };
        let dtype = qkv.dtype();
        // Rotary in f32, as transformers does.
        let rotate = |t: Tensor<B, 3>| {
            let t = cast(t, DType::F32);
            let x1 = t.clone().slice([0..n, 0..h, 0..hd / 2]);
            let x2 = t.clone().slice([0..n, 0..h, hd / 2..hd]);
            let rotated = Tensor::cat(vec![x2.neg(), x1], 2);
            cast(t * rope.0.clone() + rotated * rope.1.clone(), dtype)
        };
        let (q, k, v) = (rotate(part(0)), rotate(part(1)), part(2));
        let out = seg.attend(q, k, v, (hd as f64).powf(-0.5));
        self.proj.forward(out)
    }
}

#[derive(Module, Debug)]
pub struct VisionMlp<B: Backend> {
    pub gate_proj: nn::Linear<B>,
    pub up_proj: nn::Linear<B>,
    pub down_proj: nn::Linear<B>,
    #[module(skip)]
    pub act: Activation,
}

impl<B: Backend> VisionMlp<B> {
    fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &QwenVisionConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let (d, i) = (c.hidden_size, c.intermediate_size);
        Ok(VisionMlp {
            gate_proj: linear(w.pp("gate_proj"), d, i, true, device)?,
            up_proj: linear(w.pp("up_proj"), d, i, true, device)?,
            down_proj: linear(w.pp("down_proj"), i, d, true, device)?,
            act: c.hidden_act,
        })
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let gate = activate(self.gate_proj.forward(x.clone()), self.act);
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct VisionBlock<B: Backend> {
    pub norm1: nn::RmsNorm<B>,
    pub attn: VisionAttention<B>,
    pub norm2: nn::RmsNorm<B>,
    pub mlp: VisionMlp<B>,
}

impl<B: Backend> VisionBlock<B> {
    fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &QwenVisionConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let d = c.hidden_size;
        Ok(VisionBlock {
            norm1: rms_norm(w.pp("norm1"), d, VISION_EPS, device)?,
            attn: VisionAttention::load(w.pp("attn"), c, device)?,
            norm2: rms_norm(w.pp("norm2"), d, VISION_EPS, device)?,
            mlp: VisionMlp::load(w.pp("mlp"), c, device)?,
        })
    }

    fn forward(
        &self,
        x: Tensor<B, 2>,
        rope: &(Tensor<B, 3>, Tensor<B, 3>),
        seg: &Segments<B>,
    ) -> Tensor<B, 2> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x), rope, seg);
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}

/// RMSNorm, then the `merge²` patches of a cell concatenated, then Linear–GELU–Linear.
#[derive(Module, Debug)]
pub struct PatchMerger<B: Backend> {
    pub ln_q: nn::RmsNorm<B>,
    pub fc1: nn::Linear<B>,
    pub fc2: nn::Linear<B>,
}

impl<B: Backend> PatchMerger<B> {
    fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &QwenVisionConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let wide = c.hidden_size * c.spatial_merge_size.pow(2);
        Ok(PatchMerger {
            ln_q: rms_norm(w.pp("ln_q"), c.hidden_size, VISION_EPS, device)?,
            // `nn.Sequential(Linear, GELU, Linear)`: indices 0 and 2.
            fc1: linear(w.pp("mlp.0"), wide, wide, true, device)?,
            fc2: linear(w.pp("mlp.2"), wide, c.out_hidden_size, true, device)?,
        })
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let wide = self.fc1.weight.dims()[0];
        let x = self.ln_q.forward(x);
        let [n, d] = x.dims();
        let x = x.reshape([n * d / wide, wide]);
        self.fc2.forward(activation::gelu(self.fc1.forward(x)))
    }
}

#[derive(Module, Debug)]
pub struct QwenVision<B: Backend> {
    /// The Conv3d kernel as a `[C·T·P·P, hidden]` matrix (stride = kernel: one product per patch).
    pub patch_embed: Param<Tensor<B, 2>>,
    pub blocks: Vec<VisionBlock<B>>,
    pub merger: PatchMerger<B>,
    #[module(skip)]
    pub config: QwenVisionConfig,
}

/// How one forward's patches are ordered and grouped: computed on the host from the grids.
struct Plan {
    /// Patch permutation into window order.
    order: Vec<i64>,
    /// Merged cell permutation back from window order to the processor's order.
    cells_back: Vec<i64>,
    /// (h, w) grid position of every patch, in window order.
    hw: Vec<(usize, usize)>,
    /// Contiguous windows (in patches, window order).
    windows: Vec<(usize, usize)>,
    /// Contiguous whole images (frames), in patches.
    images: Vec<(usize, usize)>,
}

fn plan(c: &QwenVisionConfig, grids: &[[usize; 3]]) -> Plan {
    let m = c.spatial_merge_size;
    let unit = m * m;
    let ws = c.window_cells().max(1);
    let (mut cells, mut windows, mut images) = (Vec::new(), Vec::new(), Vec::new());
    let mut cell_hw = Vec::new();
    let (mut base, mut start) = (0usize, 0usize);
    for &[t, h, w] in grids {
        let (lh, lw) = (h / m, w / m);
        for frame in 0..t {
            images.push((base * unit + frame * lh * lw * unit, lh * lw * unit));
        }
        // Windows of `ws`×`ws` cells, row-major over windows, row-major inside each.
        for frame in 0..t {
            for wy in (0..lh).step_by(ws) {
                for wx in (0..lw).step_by(ws) {
                    let mut n = 0;
                    for y in wy..(wy + ws).min(lh) {
                        for x in wx..(wx + ws).min(lw) {
                            cells.push(base + frame * lh * lw + y * lw + x);
                            cell_hw.push((y, x));
                            n += 1;
                        }
                    }
                    windows.push((start, n * unit));
                    start += n * unit;
                }
            }
        }
        base += t * lh * lw;
    }
    let mut order = Vec::with_capacity(cells.len() * unit);
    let mut hw = Vec::with_capacity(cells.len() * unit);
    for (&cell, &(y, x)) in cells.iter().zip(&cell_hw) {
        for i in 0..unit {
            order.push((cell * unit + i) as i64);
            hw.push((y * m + i / m, x * m + i % m));
        }
    }
    let mut cells_back = vec![0i64; cells.len()];
    for (pos, &cell) in cells.iter().enumerate() {
        cells_back[cell] = pos as i64;
    }
    Plan {
        order,
        cells_back,
        hw,
        windows,
        images,
    }
}

/// Block-diagonal attention over contiguous segments, run as one padded batch
/// `[segments, longest, ...]` with padded keys masked.
struct Segments<B: Backend> {
    /// None when one segment covers every row.
    gather: Option<Gather<B>>,
    count: usize,
    longest: usize,
}

/// Rows into the padded batch and back, and the mask of its padded keys.
struct Gather<B: Backend> {
    /// Row of each padded slot (padding reads row 0): `[segments · longest]`.
    into: Tensor<B, 1, Int>,
    /// Padded slot of each row: `[n]`.
    back: Tensor<B, 1, Int>,
    /// `[segments, 1, 1, longest]`: 0, or lowest-finite on padding.
    bias: Tensor<B, 4>,
}

impl<B: Backend> Segments<B> {
    fn new(segments: &[(usize, usize)], n: usize, device: &B::Device) -> Self {
        let longest = segments.iter().map(|s| s.1).max().unwrap_or(0);
        if segments.len() == 1 && longest == n {
            return Segments {
                gather: None,
                count: 1,
                longest,
            };
        }
        let mut into = Vec::with_capacity(segments.len() * longest);
        let mut back = vec![0i64; n];
        let mut bias = Vec::with_capacity(segments.len() * longest);
        for (i, &(start, len)) in segments.iter().enumerate() {
            for j in 0..longest {
                if j < len {
                    into.push((start + j) as i64);
                    back[start + j] = (i * longest + j) as i64;
                    bias.push(0f32);
                } else {
                    into.push(0);
                    bias.push(f32::MIN);
                }
            }
        }
        let k = segments.len();
        Segments {
            gather: Some(Gather {
                into: Tensor::from_data(TensorData::new(into, [k * longest]), device),
                back: Tensor::from_data(TensorData::new(back, [n]), device),
                bias: Tensor::from_data(TensorData::new(bias, [k, 1, 1, longest]), device),
            }),
            count: k,
            longest,
        }
    }

    /// `q`, `k`, `v`: `[n, heads, head_dim]` -> `[n, heads·head_dim]`.
    fn attend(
        &self,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        scale: f64,
    ) -> Tensor<B, 2> {
        let [n, h, d] = q.dims();
        let (s, l) = (self.count, self.longest);
        let batch = |t: Tensor<B, 3>| match &self.gather {
            Some(g) => t
                .select(0, g.into.clone())
                .reshape([s, l, h, d])
                .swap_dims(1, 2),
            None => t.reshape([1, n, h, d]).swap_dims(1, 2),
        };
        let (q, k, v) = (batch(q), batch(k), batch(v));
        let dtype = q.dtype();
        let mut scores = cast(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale), DType::F32);
        if let Some(g) = &self.gather {
            scores = scores + g.bias.clone();
        }
        let probs = cast(activation::softmax(scores, 3), dtype);
        let out = probs.matmul(v).swap_dims(1, 2).reshape([s * l, h * d]);
        match &self.gather {
            Some(g) => out.select(0, g.back.clone()),
            None => out,
        }
    }
}

impl<B: Backend> QwenVision<B> {
    /// Loads the tower under `w` (`visual.` in hub checkpoints).
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &QwenVisionConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let (d, pt, ps) = (c.hidden_size, c.temporal_patch_size, c.patch_size);
        let patch_embed = w.param_transposed(
            "patch_embed.proj.weight",
            &[d, c.in_channels, pt, ps, ps],
            device,
        )?;
        let blocks = (0..c.depth)
            .map(|i| VisionBlock::load(w.pp(format_args!("blocks.{i}")), c, device))
            .collect::<Result<_>>()?;
        Ok(QwenVision {
            patch_embed,
            blocks,
            merger: PatchMerger::load(w.pp("merger"), c, device)?,
            config: c.clone(),
        })
    }

    /// Images as the tower takes them: every image's patch rows `[Σ patches, C·T·P·P]` and
    /// its `[t, h, w]` grid (sides in whole merged patches).
    pub fn pixels(
        &self,
        images: &[&PixelValues],
        dtype: DType,
        device: &B::Device,
    ) -> Result<(Tensor<B, 2>, Vec<[usize; 3]>)> {
        let c = &self.config;
        let (layout, width) = (c.patch_layout(), c.patch_values());
        let mut data = Vec::new();
        let mut grids = Vec::with_capacity(images.len());
        for img in images {
            let (rows, grid) = flatten_patches(img, layout)?;
            if rows.len() != grid.iter().product::<usize>() * width {
                return Err(Error::argument(
                    "image",
                    format!(
                        "{} channels, but vision_config.in_channels is {}",
                        img.data.len() / (img.height * img.width),
                        c.in_channels
                    ),
                ));
            }
            data.extend_from_slice(&rows);
            grids.push(grid);
        }
        let n = data.len() / width;
        let rows = Tensor::from_data(TensorData::new(data, [n, width]), (device, dtype));
        Ok((rows, grids))
    }

    /// Image features, one merged cell per row.
    pub fn encode(&self, rows: Tensor<B, 2>, grids: Vec<[usize; 3]>) -> ImageFeatures<B> {
        let layout = self.config.patch_layout();
        ImageFeatures {
            rows: self.forward(rows, &grids),
            counts: grids.iter().map(|&g| layout.tokens(g)).collect(),
            grids,
        }
    }

    /// 2-D rotary cos and sin `[n, 1, head_dim]` (f32): the first quarter of the frequencies
    /// turns with the patch row, the second with the column, then both halves repeat.
    fn rope(&self, hw: &[(usize, usize)], device: &B::Device) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let hd = self.config.head_dim();
        let inv_freq = rope_inv_freq(self.config.rope_theta, hd / 2);
        let inv_freq = &inv_freq;
        let angles = hw.iter().flat_map(|&(y, x)| {
            [y, x, y, x]
                .into_iter()
                .flat_map(move |pos| inv_freq.iter().map(move |f| pos as f32 * f))
        });
        cos_sin(angles, [hw.len(), 1, hd], device)
    }

    /// Merged features `[Σ cells, out_hidden]` of patch rows `[Σ patches, C·T·P·P]` (the
    /// processor's order) of images with `grids` (`[t, h, w]` in patches), in the processor's
    /// cell order.
    pub fn forward(&self, rows: Tensor<B, 2>, grids: &[[usize; 3]]) -> Tensor<B, 2> {
        self.run(rows, grids, None)
    }

    /// The output of every block `[Σ patches, hidden]`, in the processor's patch order.
    pub fn block_states(&self, rows: Tensor<B, 2>, grids: &[[usize; 3]]) -> Vec<Tensor<B, 2>> {
        let mut states = Vec::with_capacity(self.blocks.len());
        self.run(rows, grids, Some(&mut states));
        states
    }

    fn run(
        &self,
        rows: Tensor<B, 2>,
        grids: &[[usize; 3]],
        mut states: Option<&mut Vec<Tensor<B, 2>>>,
    ) -> Tensor<B, 2> {
        let device = rows.device();
        let plan = plan(&self.config, grids);
        let n = plan.order.len();
        let index = |v: Vec<i64>| {
            let len = v.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(v, [len]), &device)
        };
        // Block outputs go back to the processor's patch order (only when asked for).
        let patches_back = states.is_some().then(|| {
            let mut back = vec![0i64; n];
            for (pos, &patch) in plan.order.iter().enumerate() {
                back[patch as usize] = pos as i64;
            }
            index(back)
        });
        let mut x = rows
            .matmul(self.patch_embed.val())
            .select(0, index(plan.order));
        let rope = self.rope(&plan.hw, &device);
        let windows = Segments::new(&plan.windows, n, &device);
        let images = Segments::new(&plan.images, n, &device);
        for (i, block) in self.blocks.iter().enumerate() {
            let seg = if self.config.fullatt_block_indexes.contains(&i) {
                &images
            } else {
                &windows
            };
            x = block.forward(x, &rope, seg);
            if let (Some(states), Some(back)) = (states.as_deref_mut(), &patches_back) {
                states.push(x.clone().select(0, back.clone()));
            }
        }
        self.merger.forward(x).select(0, index(plan.cells_back))
    }
}
