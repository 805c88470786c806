//! The authors' `MlpProjector` of type `downsample_mlp_gelu`: the tower's grid is zero-padded
//! at the bottom and right to a multiple of `downsample_ratio`, each `r×r` block of features is
//! concatenated channel-major (`F.unfold`'s order: input index `c·r² + r·dy + dx`), then
//! `Linear → (GELU → Linear)×(depth-1)` with the exact (erf) GELU.

use burn::module::Module;
use burn::nn;
use burn::tensor::{activation, backend::Backend, Tensor};
use tita_core::{Error, Result};

use crate::deepseek_vl2::config::{ProjectorConfig, ProjectorType};
use crate::layers::linear;
use crate::scope::Scope;
use crate::weights::{cast, TensorSource};

#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    /// `layers.0`, `layers.2`, ... of the checkpoint's `nn.Sequential` (GELUs in between).
    pub layers: Vec<nn::Linear<B>>,
    pub ratio: usize,
}

impl<B: Backend> Projector<B> {
    /// The projector under `w` (`projector.` in the checkpoints).
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &ProjectorConfig,
        device: &B::Device,
    ) -> Result<Self> {
        if c.projector_type != ProjectorType::DownsampleMlpGelu {
            return Err(Error::argument(
                "projector_config.projector_type",
                format!(
                    "{:?} is not supported (only `downsample_mlp_gelu`, what every public \
                     DeepSeek-VL2 checkpoint uses)",
                    c.projector_type
                ),
            ));
        }
        if c.token_pooling {
            return Err(Error::argument(
                "projector_config.token_pooling",
                "true is not supported (no public DeepSeek-VL2 checkpoint uses it)",
            ));
        }
        let r = c.downsample_ratio;
        let inner = c.n_embed * c.mlp_ratio;
        let layers = (0..c.depth)
            .map(|i| {
                let fan_in = if i == 0 { c.input_dim * r * r } else { inner };
                let fan_out = if i + 1 == c.depth { c.n_embed } else { inner };
                linear(
                    w.pp(format_args!("layers.{}", 2 * i)),
                    fan_in,
                    fan_out,
                    true,
                    device,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Projector { layers, ratio: r })
    }

    /// `[n, grid², width]` tower features to `[n, ⌈grid/r⌉², n_embed]` image embeddings.
    pub fn forward(&self, x: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
        let [n, hw, ch] = x.dims();
        let g = (hw as f64).sqrt() as usize;
        if g * g != hw {
            return Err(Error::argument(
                "features",
                format!("{hw} tower features per tile are not a square grid"),
            ));
        }
        let r = self.ratio;
        let side = g.div_ceil(r) * r;
        let mut x = x.reshape([n, g, g, ch]);
        if side != g {
            let device = x.device();
            let dtype = x.dtype();
            let right = cast(Tensor::<B, 4>::zeros([n, g, side - g, ch], &device), dtype);
            x = Tensor::cat(vec![x, right], 2);
            let bottom = cast(
                Tensor::<B, 4>::zeros([n, side - g, side, ch], &device),
                dtype,
            );
            x = Tensor::cat(vec![x, bottom], 1);
        }
        let s = side / r;
        // [n, by, dy, bx, dx, c] -> [n, by, bx, c, dy, dx]
        let mut x = x
            .reshape([n, s, r, s, r, ch])
            .permute([0, 1, 3, 5, 2, 4])
            .reshape([n, s * s, ch * r * r]);
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                x = activation::gelu(x);
            }
            x = layer.forward(x);
        }
        Ok(x)
    }
}
