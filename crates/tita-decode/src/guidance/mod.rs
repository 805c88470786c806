//! Decoding methods as values: each one a [`Guidance`] in its own file, registered once in
//! [`methods!`] below. A method says which guide branches it needs (a model and the input it
//! reads) and how their next-token logits combine with the target's, on the device and on the
//! host (for `--explain` and log-probs). The generate binary, the server's `tita` field, the
//! benchmarks and the λ sweep all go through [`Fusion`], the enum the registration builds.
//!
//! Adding a method: a file here with a type implementing [`Guidance`], and one line in
//! [`methods!`].

mod interpolate;
mod knobs;
mod m3id;
mod marine;
mod reference;
mod vcd;

use burn::tensor::{activation::log_softmax as ls, backend::Backend, Tensor};
use serde::Serialize;
pub use tita_core::sampling::log_softmax;
use tita_core::{Error, Result};

use crate::pipeline::{Pipeline, Prompt, Request};

pub use interpolate::Interpolate;
pub use knobs::{Knob, Knobs};
pub use m3id::{M3id, M3idVariant};
pub use marine::{Marine, ObjectList, TemplateSet};
pub use reference::Reference;
pub use vcd::Vcd;

/// The model a guide branch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuideModel {
    /// The target itself (on another input: a noised image, no image, another prompt).
    Target,
    /// The reward model.
    Reward,
    /// The reward model's frozen DPO reference.
    Reference,
}

/// One guide branch: a model and the input it reads. `input` is `None` for the request as the
/// target gets it; otherwise a key naming the method's derived input (equal keys are the same
/// input, so a sweep runs such a branch once).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Guide {
    pub model: GuideModel,
    pub input: Option<String>,
}

impl Guide {
    pub fn same(model: GuideModel) -> Self {
        Guide { model, input: None }
    }

    pub fn derived(model: GuideModel, key: impl Into<String>) -> Self {
        Guide {
            model,
            input: Some(key.into()),
        }
    }
}

/// Where in the answer a step is: `t` is 1 for the first answer token (chosen from the
/// prefill's logits), 2 for the next, and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub t: usize,
}

/// A decoding method: its knobs, the guide branches it needs and its fusion of their logits.
///
/// `fuse_device` and `fuse_host` compute the same formula (f32 on the device); ids past the
/// shortest vocabulary get `-inf`. An identity setting (λ = 0, α = 0, …) returns the target's
/// raw logits unchanged, so it reproduces plain decoding bit for bit.
pub trait Guidance: Clone + std::fmt::Debug + PartialEq + Serialize + Send + Sync {
    /// The mode name clients give (`--mode`, the server's `tita.mode`, bench's `--methods`).
    const NAME: &'static str;
    /// Its knobs, with their defaults and meaning; any other knob is refused.
    const KNOBS: &'static [Knob];

    /// Reads the knobs (absent ones take their defaults) and validates them.
    fn from_knobs(knobs: &Knobs) -> Result<Self>;
    /// Checks every knob's range; errors name the knob.
    fn validate(&self) -> Result<()>;
    /// A short name for tables and file names, e.g. `tita-0.3`.
    fn label(&self) -> String;
    fn guides(&self) -> Vec<Guide>;
    /// Whether the fused scores are the target's own (so decoding is plain decoding).
    fn is_identity(&self) -> bool;
    fn fuse_device<B: Backend>(
        &self,
        step: Step,
        target: Tensor<B, 2>,
        guides: &[Tensor<B, 2>],
    ) -> Tensor<B, 2>;
    fn fuse_host(&self, step: Step, target: &[f32], guides: &[&[f32]]) -> Vec<f32>;

    /// Whether the method contrasts the image with something else, so that a request without
    /// one is refused (it would be plain decoding under another name).
    fn needs_image(&self) -> bool {
        false
    }

    /// The prompt guide branch `guide` reads for `request` (only called for derived inputs).
    fn guide_prompt<B: Backend>(
        &self,
        guide: usize,
        pipeline: &Pipeline<B>,
        request: &Request,
    ) -> Result<Prompt> {
        let _ = (guide, pipeline, request);
        Err(Error::argument(
            "mode",
            format!("{} derives no guide input", Self::NAME),
        ))
    }

    /// The implicit reward shown by the explanation view for the chosen token, from its
    /// log-probs under the target and each guide: `log p_guide - log p_T` unless the method
    /// says otherwise.
    fn implicit_reward(&self, target: f32, guides: &[f32]) -> f32 {
        guides.first().map_or(0.0, |g| g - target)
    }
}

/// Registers the methods: builds [`Fusion`] (one variant per method) and its dispatch.
macro_rules! methods {
    ($($variant:ident),+ $(,)?) => {
        /// Any registered decoding method with its knobs.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Fusion {
            $($variant($variant),)+
        }

        $(impl From<$variant> for Fusion {
            fn from(m: $variant) -> Self {
                Fusion::$variant(m)
            }
        })+

        impl Fusion {
            /// Every registered mode name.
            pub const MODES: &'static [&'static str] = &[$($variant::NAME),+];

            /// The method called `mode`, from its knobs.
            pub fn from_knobs(mode: &str, knobs: &Knobs) -> Result<Self> {
                $(if mode == $variant::NAME {
                    knobs.only($variant::NAME, $variant::KNOBS)?;
                    return Ok(Fusion::$variant($variant::from_knobs(knobs)?));
                })+
                Err(Error::argument(
                    "mode",
                    format!("unknown mode `{mode}` (known: {})", Self::MODES.join(", ")),
                ))
            }

            /// The knobs of the method called `mode`.
            pub fn knobs_of(mode: &str) -> Option<&'static [Knob]> {
                $(if mode == $variant::NAME {
                    return Some($variant::KNOBS);
                })+
                None
            }

            pub fn name(&self) -> &'static str {
                match self { $(Fusion::$variant(_) => $variant::NAME,)+ }
            }

            pub fn validate(&self) -> Result<()> {
                match self { $(Fusion::$variant(m) => m.validate(),)+ }
            }

            pub fn label(&self) -> String {
                match self { $(Fusion::$variant(m) => m.label(),)+ }
            }

            pub fn guides(&self) -> Vec<Guide> {
                match self { $(Fusion::$variant(m) => m.guides(),)+ }
            }

            pub fn is_identity(&self) -> bool {
                match self { $(Fusion::$variant(m) => m.is_identity(),)+ }
            }

            pub fn needs_image(&self) -> bool {
                match self { $(Fusion::$variant(m) => m.needs_image(),)+ }
            }

            /// The mode and its knobs as JSON, for reports and `--json` output.
            pub fn describe(&self) -> serde_json::Value {
                let (name, v) = match self {
                    $(Fusion::$variant(m) => ($variant::NAME, serde_json::to_value(m)),)+
                };
                let mut v = v.unwrap_or_default();
                if let Some(map) = v.as_object_mut() {
                    map.insert("mode".into(), name.into());
                }
                v
            }

            pub fn fuse_device<B: Backend>(
                &self,
                step: Step,
                target: Tensor<B, 2>,
                guides: &[Tensor<B, 2>],
            ) -> Tensor<B, 2> {
                if self.is_identity() {
                    return target;
                }
                match self { $(Fusion::$variant(m) => m.fuse_device(step, target, guides),)+ }
            }

            pub fn fuse_host(&self, step: Step, target: &[f32], guides: &[&[f32]]) -> Vec<f32> {
                if self.is_identity() {
                    return target.to_vec();
                }
                match self { $(Fusion::$variant(m) => m.fuse_host(step, target, guides),)+ }
            }

            pub fn guide_prompt<B: Backend>(
                &self,
                guide: usize,
                pipeline: &Pipeline<B>,
                request: &Request,
            ) -> Result<Prompt> {
                if self.guides()[guide].input.is_none() {
                    return pipeline.request_prompt(request);
                }
                match self { $(Fusion::$variant(m) => m.guide_prompt(guide, pipeline, request),)+ }
            }

            pub fn implicit_reward(&self, target: f32, guides: &[f32]) -> f32 {
                match self { $(Fusion::$variant(m) => m.implicit_reward(target, guides),)+ }
            }
        }
    };
}

methods!(Interpolate, Reference, Vcd, M3id, Marine);

impl Fusion {
    /// TITA interpolate with weight λ, no cut.
    pub fn interpolate(lambda: f32) -> Self {
        Interpolate::new(lambda).into()
    }

    /// TITA reference mode with weight α, no cut.
    pub fn reference(alpha: f32) -> Self {
        Reference::new(alpha).into()
    }

    /// VCD with weight α and VCD's defaults otherwise.
    pub fn vcd(alpha: f32) -> Self {
        Vcd::new(alpha).into()
    }

    /// Whether a request decodes plainly under this method: one that contrasts the image has
    /// nothing to contrast on a text-only request. Harnesses mix both kinds of question under
    /// one method (a served model name, a benchmark run), so both the server and the benchmark
    /// runner answer those by plain decoding rather than refuse them.
    pub fn plain_for(&self, has_image: bool) -> bool {
        self.needs_image() && !has_image
    }

    /// Short names method lists take beside the registered mode names.
    pub const ALIASES: &'static [(&'static str, &'static str)] =
        &[("tita", "interpolate"), ("vcd", "contrastive")];

    /// A method as command lines name it: `greedy` (None: plain decoding), or `MODE[:VALUE]`
    /// where MODE is a registered mode or an alias (`tita`, `vcd`) and VALUE sets the mode's
    /// first knob (λ, α, α, M3ID's λ, MARINE's γ). Knobs of `shared` (MARINE's `objects`,
    /// VCD's `noise_seed`, ...) go to the mode when it takes them. Errors name `arg`.
    pub fn from_spec(spec: &str, shared: &Knobs, arg: &'static str) -> Result<Option<Self>> {
        let (kind, value) = spec.split_once(':').unwrap_or((spec, ""));
        if kind == "greedy" && value.is_empty() {
            return Ok(None);
        }
        let mode = Self::ALIASES
            .iter()
            .find(|(alias, _)| *alias == kind)
            .map_or(kind, |(_, mode)| mode);
        let Some(knobs) = Self::knobs_of(mode) else {
            return Err(Error::argument(
                arg,
                format!(
                    "`{spec}`: expected greedy or MODE[:VALUE] with MODE one of {}, tita, vcd",
                    Self::MODES.join(", ")
                ),
            ));
        };
        let mut own = Knobs::new();
        for knob in knobs {
            if let Some(v) = shared.get(knob.name) {
                own.set(knob.name, v.clone());
            }
        }
        if !value.is_empty() {
            let number: f64 = value.parse().map_err(|_| {
                Error::argument(arg, format!("`{spec}`: `{value}` is not a number"))
            })?;
            own.set(knobs[0].name, number);
        }
        Self::from_knobs(mode, &own).map(Some)
    }
}

/// The vocabulary every branch covers.
fn common_host(target: &[f32], guides: &[&[f32]]) -> usize {
    guides
        .iter()
        .map(|g| g.len())
        .fold(target.len(), usize::min)
}

/// Host scores over the target's vocabulary: `f(y)` on the common ids, `-inf` past them.
fn over_common_host(target: &[f32], guides: &[&[f32]], f: impl Fn(usize) -> f32) -> Vec<f32> {
    let common = common_host(target, guides);
    (0..target.len())
        .map(|y| if y < common { f(y) } else { f32::NEG_INFINITY })
        .collect()
}

/// Device scores over the target's vocabulary: what `f` builds from branches cut to the
/// common ids by the `head` it is given (cut after any log_softmax, which spans each model's
/// whole vocabulary), `-inf` past them.
fn over_common_device<B: Backend>(
    target: &Tensor<B, 2>,
    guides: &[Tensor<B, 2>],
    f: impl FnOnce(&dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>) -> Tensor<B, 2>,
) -> Tensor<B, 2> {
    let [rows, vocab] = target.dims();
    let common = guides.iter().map(|g| g.dims()[1]).fold(vocab, usize::min);
    let fused = f(&|x: Tensor<B, 2>| x.slice([0..rows, 0..common]));
    if common < vocab {
        let rest = Tensor::full([rows, vocab - common], f32::NEG_INFINITY, &target.device());
        Tensor::cat(vec![fused, rest], 1)
    } else {
        fused
    }
}

/// `log_softmax` over the vocabulary of `[rows, vocab]` logits.
fn ls_device<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    ls(x, 1)
}

/// A weighted method's host scores: at weight 0 the target's logits as they are (so that the
/// method at 0 is plain decoding, exactly), else `fused()`; then the plausibility cut.
fn weighted_host(
    weight: f32,
    target: &[f32],
    cut: Option<f32>,
    fused: impl FnOnce() -> Vec<f32>,
) -> Vec<f32> {
    let mut out = if weight == 0.0 {
        target.to_vec()
    } else {
        fused()
    };
    cut_host(&mut out, target, cut);
    out
}

/// [`weighted_host`] on the device.
fn weighted_device<B: Backend>(
    weight: f32,
    target: &Tensor<B, 2>,
    cut: Option<f32>,
    fused: impl FnOnce() -> Tensor<B, 2>,
) -> Tensor<B, 2> {
    let out = if weight == 0.0 {
        target.clone()
    } else {
        fused()
    };
    cut_device(out, target, cut)
}

/// The plausibility cut on the host: `-inf` where `p(y) < cut · max p` under `logits`.
fn cut_host(scores: &mut [f32], logits: &[f32], cut: Option<f32>) {
    let Some(cut) = cut else { return };
    // p(y) < cut·max p  <=>  z(y) < ln(cut) + max z
    let threshold = cut.ln() + logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (s, &z) in scores.iter_mut().zip(logits) {
        if z < threshold {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// [`cut_host`] on the device, row by row.
fn cut_device<B: Backend>(
    scores: Tensor<B, 2>,
    logits: &Tensor<B, 2>,
    cut: Option<f32>,
) -> Tensor<B, 2> {
    let Some(cut) = cut else { return scores };
    let [rows, vocab] = logits.dims();
    let threshold = logits
        .clone()
        .max_dim(1)
        .add_scalar(cut.ln())
        .expand([rows, vocab]);
    scores.mask_fill(logits.clone().lower(threshold), f32::NEG_INFINITY)
}

/// Refuses a weight outside `[lo, hi]` (or non-finite), naming the knob.
fn check_range(knob: &str, value: f32, lo: f32, hi: f32) -> Result<()> {
    if value.is_finite() && (lo..=hi).contains(&value) {
        Ok(())
    } else if hi == f32::INFINITY {
        Err(Error::argument(
            knob,
            format!("{value} must be a finite number >= {lo}"),
        ))
    } else {
        Err(Error::argument(
            knob,
            format!("{value} is outside [{lo}, {hi}]"),
        ))
    }
}

/// Refuses a plausibility cut outside `(0, 1]`.
fn check_cut(knob: &str, cut: Option<f32>) -> Result<()> {
    match cut {
        Some(c) if !(c > 0.0 && c <= 1.0) => {
            Err(Error::argument(knob, format!("{c} is outside (0, 1]")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
