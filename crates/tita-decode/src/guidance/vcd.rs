//! VCD (Leng et al., CVPR 2024), the contrastive baseline: `(1+α)·z(v) - α·z(v')` with `v'` the
//! image after diffusion noise, one model; VCD's plausibility cut β on `p(v)`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use burn::tensor::{backend::Backend, Tensor};
use serde::Serialize;
use tita_core::noise::{add_diffusion_noise, add_noise_with};
use tita_core::{Error, Result};

use super::{
    check_range, over_common_device, over_common_host, weighted_device, weighted_host, Guidance,
    Guide, GuideModel, Knob, Knobs, Step,
};
use crate::pipeline::{Pipeline, Prompt, Request};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vcd {
    /// Weight of the contrast, >= 0.
    pub alpha: f32,
    /// VCD's plausibility cut β: keep `p(y|v) >= β·max p(·|v)`, in (0, 1].
    pub beta: f32,
    /// Diffusion step of the noised image, of 1000 (VCD's schedule).
    pub noise_step: usize,
    /// Seeds ε of the noised image (every request draws the same ε).
    pub noise_seed: u64,
    /// A given ε instead (one value per pixel value; tests, and reproducing a reference run).
    #[serde(skip)]
    pub noise_eps: Option<Arc<[f32]>>,
}

impl Vcd {
    pub fn new(alpha: f32) -> Self {
        Vcd {
            alpha,
            beta: 0.1,
            noise_step: 500,
            noise_seed: 0,
            noise_eps: None,
        }
    }
}

impl Guidance for Vcd {
    const NAME: &'static str = "contrastive";
    const KNOBS: &'static [Knob] = &[
        Knob {
            name: "alpha",
            default: "1",
            help: "weight of the contrast with the noised image, >= 0",
        },
        Knob {
            name: "vcd_beta",
            default: "0.1",
            help:
                "plausibility cut: keep tokens with p >= beta * max p on the clean image, in (0, 1]",
        },
        Knob {
            name: "noise_step",
            default: "500",
            help: "diffusion step (of 1000) of the noised image",
        },
        Knob {
            name: "noise_seed",
            default: "0",
            help: "seed of the noise",
        },
    ];

    fn from_knobs(knobs: &Knobs) -> Result<Self> {
        let m = Vcd {
            alpha: knobs.f32("alpha", 1.0)?,
            beta: knobs.f32("vcd_beta", 0.1)?,
            noise_step: knobs.u64("noise_step", 500)? as usize,
            noise_seed: knobs.u64("noise_seed", 0)?,
            noise_eps: None,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        check_range("alpha", self.alpha, 0.0, f32::INFINITY)?;
        super::check_cut("vcd_beta", Some(self.beta))?;
        tita_core::noise::check_step(self.noise_step)
    }

    fn label(&self) -> String {
        format!("vcd-{}", self.alpha)
    }

    fn guides(&self) -> Vec<Guide> {
        let eps = match &self.noise_eps {
            // Its bits identify a given ε (a sweep must not share two different ones).
            Some(eps) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                eps.iter().for_each(|x| x.to_bits().hash(&mut h));
                format!("given ε {:016x}", h.finish())
            }
            None => format!("seed {}", self.noise_seed),
        };
        vec![Guide::derived(
            GuideModel::Target,
            format!("noised image (step {}, {eps})", self.noise_step),
        )]
    }

    /// The cut always applies, so VCD is never plain decoding (α = 0 picks the same greedy
    /// tokens, not the same samples).
    fn needs_image(&self) -> bool {
        true
    }

    fn is_identity(&self) -> bool {
        false
    }

    fn fuse_device<B: Backend>(
        &self,
        _: Step,
        t: Tensor<B, 2>,
        g: &[Tensor<B, 2>],
    ) -> Tensor<B, 2> {
        weighted_device(self.alpha, &t, Some(self.beta), || {
            over_common_device(&t, g, |head| {
                head(t.clone()).mul_scalar(1.0 + self.alpha)
                    - head(g[0].clone()).mul_scalar(self.alpha)
            })
        })
    }

    fn fuse_host(&self, _: Step, t: &[f32], g: &[&[f32]]) -> Vec<f32> {
        weighted_host(self.alpha, t, Some(self.beta), || {
            over_common_host(t, g, |y| (1.0 + self.alpha) * t[y] - self.alpha * g[0][y])
        })
    }

    /// The target's prompt with its pixels noised.
    fn guide_prompt<B: Backend>(
        &self,
        _: usize,
        pipeline: &Pipeline<B>,
        request: &Request,
    ) -> Result<Prompt> {
        let mut prompt = pipeline.request_prompt(request)?;
        // Without an image both branches would read the same input: plain decoding in disguise.
        let Some(px) = &mut prompt.pixels else {
            return Err(Error::argument(
                "image",
                "contrastive decoding contrasts the image with a noised copy of it; this request has no image",
            ));
        };
        match &self.noise_eps {
            Some(eps) => add_noise_with(&mut px.data, self.noise_step, eps)?,
            None => add_diffusion_noise(&mut px.data, self.noise_step, self.noise_seed)?,
        }
        Ok(prompt)
    }
}
