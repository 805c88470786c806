//! TITA's reference mode: `log_softmax(z_T) + α·(log_softmax(z_R) - log_softmax(z_ref))`, DPO's
//! implicit reward against the reward model's own frozen reference (proxy-tuning form).

use burn::tensor::{backend::Backend, Tensor};
use serde::Serialize;
use tita_core::Result;

use super::interpolate::{check_tau, TAU};
use super::{
    check_range, log_softmax, ls_device, over_common_device, over_common_host, weighted_device,
    weighted_host, Guidance, Guide, GuideModel, Knob, Knobs, Step,
};

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reference {
    /// Weight of the implicit reward, >= 0.
    pub alpha: f32,
    /// Plausibility cut τ on the target; off by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tau: Option<f32>,
}

impl Reference {
    pub fn new(alpha: f32) -> Self {
        Reference { alpha, tau: None }
    }
}

impl Guidance for Reference {
    const NAME: &'static str = "reference";
    const KNOBS: &'static [Knob] = &[
        Knob {
            name: "alpha",
            default: "1",
            help: "weight of the implicit reward log p_R - log p_ref, >= 0",
        },
        TAU,
    ];

    fn from_knobs(knobs: &Knobs) -> Result<Self> {
        let m = Reference {
            alpha: knobs.f32("alpha", 1.0)?,
            tau: knobs.f32_opt("tau")?,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        check_range("alpha", self.alpha, 0.0, f32::INFINITY)?;
        check_tau(self.tau)
    }

    fn label(&self) -> String {
        format!("reference-{}", self.alpha)
    }

    fn guides(&self) -> Vec<Guide> {
        vec![
            Guide::same(GuideModel::Reward),
            Guide::same(GuideModel::Reference),
        ]
    }

    fn is_identity(&self) -> bool {
        self.alpha == 0.0 && self.tau.is_none()
    }

    fn fuse_device<B: Backend>(
        &self,
        _: Step,
        t: Tensor<B, 2>,
        g: &[Tensor<B, 2>],
    ) -> Tensor<B, 2> {
        weighted_device(self.alpha, &t, self.tau, || {
            over_common_device(&t, g, |head| {
                let implicit = head(ls_device(g[0].clone())) - head(ls_device(g[1].clone()));
                head(ls_device(t.clone())) + implicit.mul_scalar(self.alpha)
            })
        })
    }

    fn fuse_host(&self, _: Step, t: &[f32], g: &[&[f32]]) -> Vec<f32> {
        weighted_host(self.alpha, t, self.tau, || {
            let (lt, lr, lref) = (log_softmax(t), log_softmax(g[0]), log_softmax(g[1]));
            over_common_host(t, g, |y| lt[y] + self.alpha * (lr[y] - lref[y]))
        })
    }

    /// DPO's reward: `log p_R - log p_ref`.
    fn implicit_reward(&self, _target: f32, guides: &[f32]) -> f32 {
        guides[0] - guides[1]
    }
}
