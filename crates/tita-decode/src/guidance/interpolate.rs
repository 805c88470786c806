//! TITA's default mode: `(1-λ)·log_softmax(z_T) + λ·log_softmax(z_R)`, the paper's implicit
//! reward `ls(z_R) - ls(z_T)` added to the target with weight λ.

use burn::tensor::{backend::Backend, Tensor};
use serde::Serialize;
use tita_core::{Error, Result};

use super::{
    check_range, log_softmax, ls_device, over_common_device, over_common_host, weighted_device,
    weighted_host, Guidance, Guide, GuideModel, Knob, Knobs, Step,
};

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interpolate {
    /// Weight of the reward model, in [0, 1].
    pub lambda: f32,
    /// Plausibility cut τ: keep `p_T(y) >= τ·max p_T`; off by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tau: Option<f32>,
}

impl Interpolate {
    pub fn new(lambda: f32) -> Self {
        Interpolate { lambda, tau: None }
    }
}

/// τ is shared by the two TITA modes.
pub(super) const TAU: Knob = Knob {
    name: "tau",
    default: "off",
    help: "plausibility cut: keep tokens with p_T >= tau * max p_T, in [0, 1]",
};

pub(super) fn check_tau(tau: Option<f32>) -> Result<()> {
    match tau {
        Some(t) if !(0.0..=1.0).contains(&t) => {
            Err(Error::argument("tau", format!("{t} is outside [0, 1]")))
        }
        _ => Ok(()),
    }
}

impl Guidance for Interpolate {
    const NAME: &'static str = "interpolate";
    const KNOBS: &'static [Knob] = &[
        Knob {
            name: "lambda",
            default: "0.3",
            help: "weight of the reward model, in [0, 1]",
        },
        TAU,
    ];

    fn from_knobs(knobs: &Knobs) -> Result<Self> {
        let m = Interpolate {
            lambda: knobs.f32("lambda", 0.3)?,
            tau: knobs.f32_opt("tau")?,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        check_range("lambda", self.lambda, 0.0, 1.0)?;
        check_tau(self.tau)
    }

    fn label(&self) -> String {
        format!("tita-{}", self.lambda)
    }

    fn guides(&self) -> Vec<Guide> {
        vec![Guide::same(GuideModel::Reward)]
    }

    /// λ = 0 without a cut: the target's own logits.
    fn is_identity(&self) -> bool {
        self.lambda == 0.0 && self.tau.is_none()
    }

    fn fuse_device<B: Backend>(
        &self,
        _: Step,
        t: Tensor<B, 2>,
        g: &[Tensor<B, 2>],
    ) -> Tensor<B, 2> {
        weighted_device(self.lambda, &t, self.tau, || {
            over_common_device(&t, g, |head| {
                head(ls_device(t.clone())).mul_scalar(1.0 - self.lambda)
                    + head(ls_device(g[0].clone())).mul_scalar(self.lambda)
            })
        })
    }

    fn fuse_host(&self, _: Step, t: &[f32], g: &[&[f32]]) -> Vec<f32> {
        weighted_host(self.lambda, t, self.tau, || {
            let (lt, lr) = (log_softmax(t), log_softmax(g[0]));
            over_common_host(t, g, |y| (1.0 - self.lambda) * lt[y] + self.lambda * lr[y])
        })
    }
}
