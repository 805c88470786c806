//! M3ID (Favero et al., CVPR 2024, §4.1, Algorithm 1; no official code): the target's log-probs
//! with the image, `l_c`, pushed away from its log-probs on the same conversation without the
//! image, `l_u`, more strongly as the answer grows (the image's influence fades with distance):
//! `γ_t = exp(−λt)`, `l̂ = l_c + 1[max l_c < log α] · ((1−γ_t)/γ_t) · (l_c − l_u)`, with `t = 1`
//! at the first answer token. The defaults (λ 0.02, α 0.95) are those of public
//! reimplementations (AvisC / RITUAL use λ 0.02; CRoPS α 0.95), not values from the paper. The
//! `avisc` variant, as those reimplementations run it, replaces the α gate by VCD's β cut on
//! `p_c` and always applies the weight.

use burn::tensor::{backend::Backend, Tensor};
use serde::Serialize;
use tita_core::{Error, Result};

use super::{
    check_cut, check_range, cut_device, cut_host, log_softmax, ls_device, over_common_device,
    over_common_host, Guidance, Guide, GuideModel, Knob, Knobs, Step,
};
use crate::pipeline::{Pipeline, Prompt, Request};

/// Which M3ID rule: the paper's α gate, or the AvisC/RITUAL β cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum M3idVariant {
    Paper,
    Avisc,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct M3id {
    /// Decay λ of the image's influence, >= 0.
    pub lambda: f32,
    /// The gate α: a step is corrected only while `max p_c < α`, in (0, 1].
    pub alpha: f32,
    pub variant: M3idVariant,
    /// VCD's cut β of the `avisc` variant, in (0, 1].
    pub beta: f32,
}

impl Default for M3id {
    fn default() -> Self {
        M3id {
            lambda: 0.02,
            alpha: 0.95,
            variant: M3idVariant::Paper,
            beta: 0.1,
        }
    }
}

impl M3id {
    /// `(1−γ_t)/γ_t = e^{λt} − 1`, 0 at `t = 0`.
    pub fn weight(&self, t: usize) -> f32 {
        (self.lambda as f64 * t as f64).exp_m1() as f32
    }
}

impl Guidance for M3id {
    const NAME: &'static str = "m3id";
    const KNOBS: &'static [Knob] = &[
        Knob {
            name: "m3id_lambda",
            default: "0.02",
            help: "decay λ: gamma_t = exp(-λ t), >= 0",
        },
        Knob {
            name: "m3id_alpha",
            default: "0.95",
            help: "gate α: correct a step only while max p < α, in (0, 1] (paper variant)",
        },
        Knob {
            name: "m3id_variant",
            default: "paper",
            help: "paper (the α gate) or avisc (VCD's β cut instead, as AvisC/RITUAL run it)",
        },
        Knob {
            name: "m3id_beta",
            default: "0.1",
            help: "plausibility cut β of the avisc variant, in (0, 1]",
        },
    ];

    fn from_knobs(knobs: &Knobs) -> Result<Self> {
        let variant = match knobs.str_opt("m3id_variant")? {
            None | Some("paper") => M3idVariant::Paper,
            Some("avisc") => M3idVariant::Avisc,
            Some(other) => {
                return Err(Error::argument(
                    "m3id_variant",
                    format!("`{other}`: expected paper or avisc"),
                ))
            }
        };
        let given = |k: &str| knobs.get(k).is_some();
        match variant {
            M3idVariant::Paper if given("m3id_beta") => {
                return Err(Error::argument(
                    "m3id_beta",
                    "is the cut of the avisc variant; the paper variant gates by m3id_alpha",
                ))
            }
            M3idVariant::Avisc if given("m3id_alpha") => {
                return Err(Error::argument(
                    "m3id_alpha",
                    "is the gate of the paper variant; the avisc variant cuts by m3id_beta",
                ))
            }
            _ => {}
        }
        let d = M3id::default();
        let m = M3id {
            lambda: knobs.f32("m3id_lambda", d.lambda)?,
            alpha: knobs.f32("m3id_alpha", d.alpha)?,
            variant,
            beta: knobs.f32("m3id_beta", d.beta)?,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        check_range("m3id_lambda", self.lambda, 0.0, f32::INFINITY)?;
        check_cut("m3id_alpha", Some(self.alpha))?;
        check_cut("m3id_beta", Some(self.beta))
    }

    fn label(&self) -> String {
        match self.variant {
            M3idVariant::Paper => format!("m3id-{}", self.lambda),
            M3idVariant::Avisc => format!("m3id-avisc-{}", self.lambda),
        }
    }

    fn guides(&self) -> Vec<Guide> {
        vec![Guide::derived(
            GuideModel::Target,
            "conversation without the image",
        )]
    }

    /// λ = 0 keeps γ_t = 1: no correction ever (the paper variant; the avisc one still cuts).
    fn needs_image(&self) -> bool {
        true
    }

    fn is_identity(&self) -> bool {
        self.lambda == 0.0 && self.variant == M3idVariant::Paper
    }

    fn fuse_device<B: Backend>(
        &self,
        s: Step,
        t: Tensor<B, 2>,
        g: &[Tensor<B, 2>],
    ) -> Tensor<B, 2> {
        let w = self.weight(s.t);
        let fused = over_common_device(&t, g, |head| {
            let lc = ls_device(t.clone());
            let gap = head(lc.clone()) - head(ls_device(g[0].clone()));
            let gap = match self.variant {
                // 1[max l_c < log α], per row
                M3idVariant::Paper => {
                    let [rows, common] = gap.dims();
                    let open = lc.clone().max_dim(1).lower_elem(self.alpha.ln()).float();
                    gap * open.mul_scalar(w).expand([rows, common])
                }
                M3idVariant::Avisc => gap.mul_scalar(w),
            };
            head(lc) + gap
        });
        match self.variant {
            M3idVariant::Paper => fused,
            M3idVariant::Avisc => cut_device(fused, &t, Some(self.beta)),
        }
    }

    fn fuse_host(&self, s: Step, t: &[f32], g: &[&[f32]]) -> Vec<f32> {
        let (lc, lu) = (log_softmax(t), log_softmax(g[0]));
        let w = match self.variant {
            M3idVariant::Paper => {
                let max = lc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if max < self.alpha.ln() {
                    self.weight(s.t)
                } else {
                    0.0
                }
            }
            M3idVariant::Avisc => self.weight(s.t),
        };
        let mut out = over_common_host(t, g, |y| lc[y] + w * (lc[y] - lu[y]));
        if self.variant == M3idVariant::Avisc {
            cut_host(&mut out, t, Some(self.beta));
        }
        out
    }

    /// The same conversation rendered without the image.
    fn guide_prompt<B: Backend>(
        &self,
        _: usize,
        pipeline: &Pipeline<B>,
        request: &Request,
    ) -> Result<Prompt> {
        if request.image.is_none() {
            return Err(Error::argument(
                "image",
                "M3ID contrasts the answer with and without the image; this request has no image",
            ));
        }
        pipeline.prompt_without_image(request)
    }
}
