//! AdamW exactly as PyTorch's `torch.optim.AdamW` computes it, a warmup + cosine learning-rate
//! schedule as transformers' `get_cosine_schedule_with_warmup`, and global-norm gradient
//! clipping as `torch.nn.utils.clip_grad_norm_`. The optimiser state is keyed by checkpoint
//! tensor names when saved, so a resumed run finds it again.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use tita_core::{Error, Result};
use tita_models::{param_id, StoredTensor, TensorSource, Weights};

/// AdamW hyper-parameters; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// Learning rate at optimiser step `step` (0-based) of `total`: linear warmup from 0 over
/// `warmup` steps, then half a cosine down to 0 (transformers' schedule, step for step).
pub fn cosine_with_warmup(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()).max(0.0)
}

/// The factor `clip_grad_norm_(max_norm)` scales every gradient by: `max / (norm + 1e-6)`,
/// at most 1 (1 without clipping).
pub fn clip_scale(grad_norm: f64, max_norm: Option<f64>) -> f64 {
    max_norm.map_or(1.0, |max| (max / (grad_norm + 1e-6)).min(1.0))
}

/// The L2 norm of all gradients together.
pub fn global_grad_norm<A: AutodiffBackend, M: AutodiffModule<A>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    struct SumSquares<'a, B: Backend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B, 1>>,
    }
    impl<A: AutodiffBackend> ModuleVisitor<A> for SumSquares<'_, A::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
            if let Some(g) = self.grads.get::<A::InnerBackend, D>(param.id) {
                let s = g.square().sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut v = SumSquares::<A::InnerBackend> { grads, total: None };
    module.visit(&mut v);
    v.total
        .map(|t| t.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0].sqrt())
        .unwrap_or(0.0)
}

/// First and second moments of one parameter, flattened.
struct Moments<B: Backend> {
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
}

/// AdamW over the parameters that receive gradients (frozen ones are left alone, weight decay
/// included, as PyTorch skips parameters whose `.grad` is None).
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    /// Optimiser steps taken.
    pub steps: usize,
    state: HashMap<ParamId, Moments<B>>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            steps: 0,
            state: HashMap::new(),
        }
    }

    /// One update of `module` with `grads` scaled by `grad_scale` (the clipping factor) at
    /// learning rate `lr`.
    pub fn step<A, M>(&mut self, module: M, grads: GradientsParams, lr: f64, grad_scale: f64) -> M
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<A>,
    {
        self.steps += 1;
        let mut update = Update {
            opt: self,
            grads,
            lr,
            grad_scale,
        };
        module.map(&mut update)
    }

    /// Writes moments and full-precision master weights of every updated parameter, keyed by
    /// checkpoint name (`exp_avg.NAME`, `exp_avg_sq.NAME`, `master.NAME`; parameter layout,
    /// flattened), to `path` atomically.
    pub fn save<A, M>(&self, module: &M, stored: &[StoredTensor], path: &Path) -> Result<()>
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<A>,
    {
        // Only the trained parameters' values: a frozen base (LoRA) is not copied.
        let mut masters = collect_values(module, |id| self.state.contains_key(id));
        let mut tensors: Vec<(String, Vec<u8>, usize)> = Vec::new();
        let bytes = |t: &Tensor<B, 1>| -> Vec<u8> {
            let v = t
                .clone()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default();
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        };
        for t in stored {
            let id = param_id(&t.name);
            let Some(m) = self.state.get(&id) else {
                continue;
            };
            let n = m.exp_avg.dims()[0];
            tensors.push((format!("exp_avg.{}", t.name), bytes(&m.exp_avg), n));
            tensors.push((format!("exp_avg_sq.{}", t.name), bytes(&m.exp_avg_sq), n));
            if let Some(v) = masters.remove(&id) {
                let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                tensors.push((format!("master.{}", t.name), b, v.len()));
            }
        }
        let views = tensors
            .iter()
            .map(|(name, b, n)| {
                TensorView::new(Dtype::F32, vec![*n], b)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::tensor(path, name, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(views, None, &tmp)
            .map_err(|e| Error::checkpoint(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// Restores what [`AdamW::save`] wrote: the moments into the optimiser, the master weights
    /// into `module` (which was loaded from the checkpoint's possibly half-precision file).
    pub fn load<A, M>(
        &mut self,
        module: M,
        stored: &[StoredTensor],
        path: &Path,
        steps: usize,
        device: &B::Device,
    ) -> Result<M>
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<A>,
    {
        let mut w = Weights::open(path)?;
        let mut masters = HashMap::new();
        for t in stored {
            let key = format!("exp_avg.{}", t.name);
            let Some(shape) = w.shape(&key).map(<[usize]>::to_vec) else {
                continue;
            };
            let read = |w: &mut Weights, k: &str| -> Result<Tensor<B, 1>> {
                let v = w.take_vec(k, &shape)?;
                Ok(Tensor::from_data(TensorData::new(v, [shape[0]]), device))
            };
            let moments = Moments {
                exp_avg: read(&mut w, &key)?,
                exp_avg_sq: read(&mut w, &format!("exp_avg_sq.{}", t.name))?,
            };
            let id = param_id(&t.name);
            self.state.insert(id, moments);
            masters.insert(id, w.take_vec(&format!("master.{}", t.name), &shape)?);
        }
        w.finish()?;
        self.steps = steps;
        let mut restore = Restore::<B> {
            values: masters,
            device: device.clone(),
        };
        Ok(module.map(&mut restore))
    }
}

struct Update<'a, B: Backend> {
    opt: &'a mut AdamW<B>,
    grads: GradientsParams,
    lr: f64,
    grad_scale: f64,
}

impl<A: AutodiffBackend> ModuleMapper<A> for Update<'_, A::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<A::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let c = self.opt.config;
        let shape = tensor.shape();
        let n = shape.num_elements();
        let p = tensor.inner().reshape([n]);
        let g = grad.reshape([n]).mul_scalar(self.grad_scale);
        let m = match self.opt.state.remove(&id) {
            Some(m) => Moments {
                exp_avg: m.exp_avg.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1),
                exp_avg_sq: m.exp_avg_sq.mul_scalar(c.beta2) + g.square().mul_scalar(1.0 - c.beta2),
            },
            None => Moments {
                exp_avg: g.clone().mul_scalar(1.0 - c.beta1),
                exp_avg_sq: g.square().mul_scalar(1.0 - c.beta2),
            },
        };
        let t = self.opt.steps as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        // PyTorch: p *= 1 - lr·wd; p -= lr/bias1 · m / (sqrt(v)/sqrt(bias2) + eps).
        let denom = m
            .exp_avg_sq
            .clone()
            .sqrt()
            .div_scalar(bias2.sqrt())
            .add_scalar(c.eps);
        let p = p.mul_scalar(1.0 - self.lr * c.weight_decay)
            - m.exp_avg.clone().div(denom).mul_scalar(self.lr / bias1);
        self.opt.state.insert(id, m);
        let updated = Tensor::<A, D>::from_inner(p.reshape(shape)).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// The values of the float parameters `keep` picks, flattened, by id.
fn collect_values<A: AutodiffBackend, M: AutodiffModule<A>>(
    module: &M,
    keep: impl Fn(&ParamId) -> bool,
) -> HashMap<ParamId, Vec<f32>> {
    struct Collect<F>(HashMap<ParamId, Vec<f32>>, F);
    impl<A: AutodiffBackend, F: Fn(&ParamId) -> bool> ModuleVisitor<A> for Collect<F> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
            if !(self.1)(&param.id) {
                return;
            }
            let v = param
                .val()
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap_or_default();
            self.0.insert(param.id, v);
        }
    }
    let mut c = Collect(HashMap::new(), keep);
    module.visit(&mut c);
    c.0
}

struct Restore<B: Backend> {
    values: HashMap<ParamId, Vec<f32>>,
    device: B::Device,
}

impl<A: AutodiffBackend> ModuleMapper<A> for Restore<A::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(v) = self.values.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let grad = tensor.is_require_grad();
        let t = Tensor::<A::InnerBackend, D>::from_data(
            TensorData::new(v, tensor.shape()),
            &self.device,
        );
        let t = Tensor::<A, D>::from_inner(t);
        Param::from_mapped_value(id, if grad { t.require_grad() } else { t }, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_transformers() {
        // get_cosine_schedule_with_warmup(num_warmup_steps=2, num_training_steps=10), base 1.
        let want = [
            0.0,
            0.5,
            1.0,
            0.9619397662556434,
            0.8535533905932737,
            0.6913417161825449,
            0.5,
            0.3086582838174551,
            0.14644660940672627,
            0.03806023374435663,
        ];
        for (s, w) in want.iter().enumerate() {
            assert!(
                (cosine_with_warmup(1.0, s, 2, 10) - w).abs() < 1e-12,
                "step {s}"
            );
        }
    }
}
