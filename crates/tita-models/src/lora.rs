//! LoRA (Hu et al., 2021) on the decoder's linear projections, as PEFT computes, initialises and
//! stores it: `y = W·x + s·B·A·dropout(x)` with `A` `[r, in]` drawn kaiming-uniform (a = √5, i.e.
//! U(±1/√in)), `B` `[out, r]` zero, `s = lora_alpha / r` (`lora_alpha / √r` with rsLoRA), the
//! delta computed in f32 and added to the base output (PEFT's adapter-dtype autocast). An
//! adapter is saved as PEFT writes one (`adapter_config.json` + `adapter_model.safetensors`,
//! `base_model.model.<module path>.lora_{A,B}.weight`), so `PeftModel.from_pretrained` loads
//! it, and merges into the base weights (`merge_and_unload`) for a plain checkpoint.

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn;
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tita_core::config::Fields;
use tita_core::{Error, Result};

use crate::layers::project;
use crate::llama::DecoderLayer;
use crate::vlm::Vlm;
use crate::weights::{
    cast, named_param, param_id, save_safetensors, StoredDtype, StoredTensor, TensorSource, Weights,
};

/// PEFT's names of the decoder projections an adapter can target, in layer order.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The file names PEFT reads and writes.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// An adapter's hyper-parameters, by PEFT's `LoraConfig` names (`bias` is always `none`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub use_rslora: bool,
    /// Projection names from [`PROJECTIONS`] (`all-linear` stands for all seven).
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    /// Rank `r`, `lora_alpha`, on PEFT's default targets for LLaMA (`q_proj`, `v_proj`).
    pub fn new(r: usize, lora_alpha: f64) -> Self {
        LoraConfig {
            r,
            lora_alpha,
            lora_dropout: 0.0,
            use_rslora: false,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        }
    }

    /// The factor the delta is scaled by.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// The targeted projections, in [`PROJECTIONS`] order.
    pub fn targets(&self) -> Vec<&'static str> {
        let all = self.target_modules.iter().any(|t| t == "all-linear");
        PROJECTIONS
            .into_iter()
            .filter(|p| all || self.target_modules.iter().any(|t| t == p))
            .collect()
    }

    /// Checks every setting against its range, naming the flag.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::argument("lora-r", "0 is outside [1, ∞)"));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(Error::argument(
                "lora-alpha",
                format!("{} must be a finite number > 0", self.lora_alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::argument(
                "lora-dropout",
                format!("{} is outside [0, 1)", self.lora_dropout),
            ));
        }
        if self.target_modules.is_empty() {
            return Err(Error::argument("lora-targets", "no projection named"));
        }
        for t in &self.target_modules {
            if t != "all-linear" && !PROJECTIONS.contains(&t.as_str()) {
                return Err(Error::argument(
                    "lora-targets",
                    format!(
                        "`{t}` is not a decoder projection (expected {} or all-linear)",
                        PROJECTIONS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// One adapter: `lora_A` and `lora_B`, held transposed (`[in, r]`, `[r, out]`) like the
/// projections' weights, in f32.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub a: Param<Tensor<B, 2>>,
    pub b: Param<Tensor<B, 2>>,
    pub dropout: nn::Dropout,
    pub scaling: f64,
    /// The settings it was made with (saved in `adapter_config.json`).
    #[module(skip)]
    pub config: LoraConfig,
}

impl<B: Backend> Lora<B> {
    /// `y + s·B·A·dropout(x)`, the delta in f32 (PEFT casts the input to the adapter's dtype),
    /// the sum back in `y`'s dtype.
    pub fn add_to(&self, y: Tensor<B, 3>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, k] = x.dims();
        let (a, bm) = (self.a.val(), self.b.val());
        let n = bm.dims()[1];
        let x = cast(self.dropout.forward(x), a.dtype()).reshape([b * s, k]);
        let delta = x
            .matmul(a)
            .matmul(bm)
            .mul_scalar(self.scaling)
            .reshape([b, s, n]);
        let dtype = y.dtype();
        cast(cast(y, DType::F32) + delta, dtype)
    }

    /// `s·(B·A)` in the projection's transposed layout `[in, out]`, f32.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scaling)
    }
}

/// A decoder projection: the checkpoint's linear layer and, once attached, an adapter.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    pub base: nn::Linear<B>,
    pub lora: Option<Lora<B>>,
}

impl<B: Backend> From<nn::Linear<B>> for LoraLinear<B> {
    fn from(base: nn::Linear<B>) -> Self {
        LoraLinear { base, lora: None }
    }
}

impl<B: Backend> LoraLinear<B> {
    /// The base projection (see [`project`]) plus the adapter's delta.
    pub fn forward(&self, x: Tensor<B, 3>, split: usize) -> Tensor<B, 3> {
        match &self.lora {
            None => project(&self.base, x, split),
            Some(lora) => lora.add_to(project(&self.base, x.clone(), split), x),
        }
    }

    /// Folds the adapter into the base weight (`W + s·B·A`, summed in f32) and drops it.
    pub fn merge(&mut self) {
        let Some(lora) = self.lora.take() else {
            return;
        };
        let w = self.base.weight.val();
        let dtype = w.dtype();
        let merged = cast(cast(w, DType::F32) + lora.delta_weight(), dtype);
        let id = self.base.weight.id;
        let grad = self.base.weight.val().is_require_grad();
        self.base.weight = Param::initialized(id, merged.set_require_grad(grad));
    }
}

/// A decoder layer's projections by (submodule, PEFT name), in [`PROJECTIONS`] order.
fn projections_mut<B: Backend>(
    layer: &mut DecoderLayer<B>,
) -> [(&'static str, &'static str, &mut LoraLinear<B>); 7] {
    let (attn, mlp) = (&mut layer.self_attn, &mut layer.mlp);
    [
        ("self_attn", "q_proj", &mut attn.q_proj),
        ("self_attn", "k_proj", &mut attn.k_proj),
        ("self_attn", "v_proj", &mut attn.v_proj),
        ("self_attn", "o_proj", &mut attn.o_proj),
        ("mlp", "gate_proj", &mut mlp.gate_proj),
        ("mlp", "up_proj", &mut mlp.up_proj),
        ("mlp", "down_proj", &mut mlp.down_proj),
    ]
}

fn projections<B: Backend>(layer: &DecoderLayer<B>) -> [(&'static str, &LoraLinear<B>); 7] {
    let (attn, mlp) = (&layer.self_attn, &layer.mlp);
    [
        ("self_attn.q_proj", &attn.q_proj),
        ("self_attn.k_proj", &attn.k_proj),
        ("self_attn.v_proj", &attn.v_proj),
        ("self_attn.o_proj", &attn.o_proj),
        ("mlp.gate_proj", &mlp.gate_proj),
        ("mlp.up_proj", &mlp.up_proj),
        ("mlp.down_proj", &mlp.down_proj),
    ]
}

/// The module path transformers (>= 4.52) gives the module of checkpoint key `key` (its
/// `_checkpoint_conversion_mapping`): LLaVA's hub layout `language_model.model.*` lives at
/// `model.language_model.*`, Qwen2.5-VL's `model.layers.*` at `model.language_model.layers.*`,
/// a bare LLaMA decoder under `model.`. PEFT names adapter tensors by this path.
pub fn module_path(key: &str, family: &str) -> String {
    let renames: &[(&str, &str)] = match family {
        "llava" => &[
            ("language_model.model.", "model.language_model."),
            ("language_model.lm_head.", "lm_head."),
            ("vision_tower.", "model.vision_tower."),
            ("multi_modal_projector.", "model.multi_modal_projector."),
        ],
        "qwen2_5_vl" => &[("visual.", "model.visual.")],
        _ => &[],
    };
    for (from, to) in renames {
        if let Some(rest) = key.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    let modern = ["model.language_model.", "model.visual.", "lm_head."];
    match family {
        "qwen2_5_vl" if !modern.iter().any(|p| key.starts_with(p)) => {
            format!("model.language_model.{}", key.trim_start_matches("model."))
        }
        "llama" if !key.starts_with("model.") && !key.starts_with("lm_head.") => {
            format!("model.{key}")
        }
        _ => key.to_string(),
    }
}

/// `lora_A` values of a `[r, in]` adapter: kaiming-uniform with a = √5 (PEFT's default), i.e.
/// U(-1/√in, 1/√in), seeded by `seed` and the tensor's name (independent of attach order).
fn kaiming_uniform(name: &str, rows: usize, fan_in: usize, seed: u64) -> Vec<f32> {
    let id = param_id(name).val();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ id);
    let bound = 1.0 / (fan_in as f32).sqrt();
    (0..rows * fan_in)
        .map(|_| rng.random_range(-bound..bound))
        .collect()
}

impl<B: Backend> Vlm<B> {
    /// `base_model.model.<module path of the decoder>` (ends with `.`).
    fn adapter_prefix(&self) -> String {
        let decoder = &self.keys.text.decoder;
        format!(
            "base_model.model.{}",
            module_path(&format!("{decoder}layers."), self.family()).trim_end_matches("layers.")
        )
    }

    /// The adapter key names under which a file may hold layer `i`'s `part` (e.g.
    /// `self_attn.q_proj`): the current module path first, then the checkpoint's own key
    /// layout (what older transformers + PEFT wrote).
    fn adapter_names(&self, i: usize, part: &str) -> Vec<String> {
        let modern = format!("{}layers.{i}.{part}", self.adapter_prefix());
        let legacy = format!(
            "base_model.model.{}layers.{i}.{part}",
            self.keys.text.decoder
        );
        if modern == legacy {
            vec![modern]
        } else {
            vec![modern, legacy]
        }
    }

    /// Puts a fresh adapter (A kaiming-uniform, B zero: the model's output is unchanged) on
    /// every targeted projection of every decoder layer.
    pub fn attach_lora(
        &mut self,
        config: &LoraConfig,
        seed: u64,
        device: &B::Device,
    ) -> Result<()> {
        config.validate()?;
        self.check_no_adapter()?;
        let targets = config.targets();
        let names: Vec<Vec<String>> = (self.lora_layers().iter().enumerate())
            .map(|(i, layer)| {
                projections(layer)
                    .iter()
                    .map(|(part, _)| self.adapter_names(i, part).remove(0))
                    .collect()
            })
            .collect();
        let r = config.r;
        for (layer, names) in self.lora_layers_mut().iter_mut().zip(names) {
            for ((_, name, proj), key) in projections_mut(layer).into_iter().zip(names) {
                if !targets.contains(&name) {
                    continue;
                }
                let [fan_in, out] = proj.base.weight.dims();
                let a_name = format!("{key}.lora_A.weight");
                let a = kaiming_uniform(&a_name, r, fan_in, seed);
                // Drawn as `[r, in]` (PyTorch's layout), held transposed.
                let a =
                    Tensor::<B, 2>::from_data(TensorData::new(a, [r, fan_in]), device).transpose();
                let b = Tensor::<B, 2>::zeros([r, out], device);
                proj.lora = Some(Lora {
                    a: named_param(&a_name, a),
                    b: named_param(&format!("{key}.lora_B.weight"), b),
                    dropout: nn::DropoutConfig::new(config.lora_dropout).init(),
                    scaling: config.scaling(),
                    config: config.clone(),
                });
            }
        }
        Ok(())
    }

    fn check_no_adapter(&self) -> Result<()> {
        if !self.takes_lora() {
            return Err(Error::argument(
                "lora",
                format!(
                    "{} is a {} model: LoRA adapters attach to LLaMA-style decoders only",
                    self.name,
                    self.family()
                ),
            ));
        }
        if self.lora_config().is_some() {
            return Err(Error::argument(
                "lora",
                format!("{} already has an adapter (merge it first)", self.name),
            ));
        }
        Ok(())
    }

    /// Folds every adapter into its projection's weight (PEFT's `merge_and_unload`): the model
    /// is then a plain one, saved by [`Vlm::save_pretrained`].
    pub fn merge_lora(&mut self) {
        for layer in self.lora_layers_mut() {
            for (_, _, proj) in projections_mut(layer) {
                proj.merge();
            }
        }
    }

    /// The same model without its adapters (the base a LoRA run started from: DPO's reference).
    pub fn without_lora(mut self) -> Self {
        for layer in self.lora_layers_mut() {
            for (_, _, proj) in projections_mut(layer) {
                proj.lora = None;
            }
        }
        self
    }

    /// The attached adapter's settings, its targets those that carry one (None without).
    pub fn lora_config(&self) -> Option<LoraConfig> {
        let mut config: Option<LoraConfig> = None;
        let mut found = BTreeSet::new();
        for layer in self.lora_layers() {
            for (part, proj) in projections(layer) {
                if let Some(lora) = &proj.lora {
                    config.get_or_insert_with(|| lora.config.clone());
                    found.insert(part.rsplit('.').next().unwrap_or(part));
                }
            }
        }
        config.map(|mut c| {
            c.target_modules = PROJECTIONS
                .iter()
                .filter(|p| found.contains(*p))
                .map(|p| p.to_string())
                .collect();
            c
        })
    }

    /// The adapter's tensors as PEFT stores them (names, `[r, in]` / `[out, r]` shapes, f32), in
    /// layer order; empty without an adapter.
    pub fn adapter_tensors(&self) -> Vec<StoredTensor> {
        let mut out = Vec::new();
        for (i, layer) in self.lora_layers().iter().enumerate() {
            for (part, proj) in projections(layer) {
                let Some(lora) = &proj.lora else { continue };
                let key = self.adapter_names(i, part).remove(0);
                let [fan_in, r] = lora.a.dims();
                let n = lora.b.dims()[1];
                for (ab, shape) in [("A", [r, fan_in]), ("B", [n, r])] {
                    out.push(StoredTensor {
                        name: format!("{key}.lora_{ab}.weight"),
                        shape: shape.to_vec(),
                        transposed: true,
                        dtype: StoredDtype::F32,
                    });
                }
            }
        }
        out
    }

    /// Writes the adapter as PEFT does: `out/adapter_config.json` and
    /// `out/adapter_model.safetensors`, the directory appearing whole (written under a
    /// temporary name and renamed). `base_model` is recorded as `base_model_name_or_path`.
    pub fn save_adapter(&self, base_model: &Path, out: &Path) -> Result<()> {
        let config = self.lora_config().ok_or_else(|| {
            Error::argument("lora", format!("{} has no adapter to save", self.name))
        })?;
        let tmp = out.with_extension("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let written = save_safetensors(self, &self.adapter_tensors(), &tmp.join(ADAPTER_WEIGHTS))
            .and_then(|()| {
                let text = serde_json::to_string_pretty(&self.peft_config(&config, base_model))
                    .expect("plain data");
                std::fs::write(tmp.join(ADAPTER_CONFIG), text)
                    .map_err(|e| Error::io(tmp.join(ADAPTER_CONFIG), e))
            });
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
        }
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
    }

    /// `adapter_config.json` as PEFT writes it. A VLM's targets are a regex over the language
    /// model's module paths, so that PEFT leaves the vision tower's same-named projections alone.
    fn peft_config(&self, c: &LoraConfig, base_model: &Path) -> Value {
        let targets = c.targets();
        let target_modules = if self.vision.is_some() {
            json!(format!(".*language_model.*\\.({})", targets.join("|")))
        } else {
            json!(targets)
        };
        let alpha = if c.lora_alpha.fract() == 0.0 && c.lora_alpha < 1e15 {
            json!(c.lora_alpha as i64)
        } else {
            json!(c.lora_alpha)
        };
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model.display().to_string(),
            "revision": null,
            "r": c.r,
            "lora_alpha": alpha,
            "lora_dropout": c.lora_dropout,
            "use_rslora": c.use_rslora,
            "bias": "none",
            "target_modules": target_modules,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        })
    }

    /// Attaches the PEFT adapter in `dir` (`adapter_config.json`, `adapter_model.safetensors`)
    /// to this model's decoder: the projections the file holds tensors for get them (checked
    /// against the config's `r` and the projection's shape); a tensor for anything else, or a
    /// PEFT feature this implementation lacks (DoRA, bias, per-module ranks, modules_to_save),
    /// is an error naming the file and field. Returns the adapter's config.
    pub fn load_adapter(&mut self, dir: &Path, device: &B::Device) -> Result<LoraConfig> {
        self.check_no_adapter()?;
        let config = read_peft_config(&dir.join(ADAPTER_CONFIG))?;
        let weights = dir.join(ADAPTER_WEIGHTS);
        let mut w = Weights::open(&weights)?;
        let r = config.r;
        let scaling = config.scaling();
        let mut found = false;
        let names: Vec<Vec<Vec<String>>> = (0..self.lora_layers().len())
            .map(|i| {
                projections(&self.lora_layers()[i])
                    .iter()
                    .map(|(part, _)| self.adapter_names(i, part))
                    .collect()
            })
            .collect();
        for (layer, names) in self.lora_layers_mut().iter_mut().zip(names) {
            for ((_, _, proj), candidates) in projections_mut(layer).into_iter().zip(names) {
                let Some(key) = candidates
                    .into_iter()
                    .find(|k| w.contains(&format!("{k}.lora_A.weight")))
                else {
                    continue;
                };
                let [fan_in, out] = proj.base.weight.dims();
                let (a_name, b_name) = (
                    format!("{key}.lora_A.weight"),
                    format!("{key}.lora_B.weight"),
                );
                let a = w.take_transposed::<B>(&a_name, &[r, fan_in], device)?;
                let b = w.take_transposed::<B>(&b_name, &[out, r], device)?;
                proj.lora = Some(Lora {
                    a: named_param(&a_name, cast(a, DType::F32)),
                    b: named_param(&b_name, cast(b, DType::F32)),
                    dropout: nn::DropoutConfig::new(config.lora_dropout).init(),
                    scaling,
                    config: config.clone(),
                });
                found = true;
            }
        }
        // Tensors left over belong to modules this model does not adapt.
        w.finish()?;
        if !found {
            return Err(Error::checkpoint(
                &weights,
                format!(
                    "holds no LoRA tensor of this model's decoder (looked for `{}layers.N.self_attn.q_proj.lora_A.weight` and the like)",
                    self.adapter_prefix()
                ),
            ));
        }
        Ok(self.lora_config().expect("attached above"))
    }
}

/// An `adapter_config.json`, refusing what [`Vlm::load_adapter`] cannot reproduce.
pub fn read_peft_config(path: &Path) -> Result<LoraConfig> {
    let value = tita_core::error::read_json(path)?;
    let f = Fields::root(&value, path)?;
    match f.opt_str("peft_type")?.as_deref() {
        Some("LORA") => {}
        other => {
            return Err(f.err(
                "peft_type",
                format!("{other:?} is not a LoRA adapter (expected \"LORA\")"),
            ))
        }
    }
    if let Some(bias) = f.opt_str("bias")? {
        if bias != "none" {
            return Err(f.err("bias", format!("`{bias}`: only \"none\" is supported")));
        }
    }
    for flag in ["use_dora", "fan_in_fan_out", "lora_bias"] {
        if f.bool(flag, false)? {
            return Err(f.err(flag, "true is not supported (false expected)"));
        }
    }
    for field in ["rank_pattern", "alpha_pattern"] {
        if f.get(field)
            .is_some_and(|v| v.as_object().is_none_or(|o| !o.is_empty()))
        {
            return Err(f.err(
                field,
                "per-module ranks and alphas are not supported ({} expected)",
            ));
        }
    }
    if f.get("modules_to_save")
        .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(f.err(
            "modules_to_save",
            "fully trained modules beside the adapter are not supported (null expected)",
        ));
    }
    let r = f.usize("r", 8)?;
    let config = LoraConfig {
        r,
        lora_alpha: f.positive_f64("lora_alpha", 8.0)?,
        lora_dropout: f.f64("lora_dropout", 0.0)?,
        use_rslora: f.bool("use_rslora", false)?,
        target_modules: PROJECTIONS.iter().map(|p| p.to_string()).collect(),
    };
    if r == 0 {
        return Err(f.err("r", "must be greater than zero"));
    }
    if !(0.0..1.0).contains(&config.lora_dropout) {
        return Err(f.err(
            "lora_dropout",
            format!("{} is outside [0, 1)", config.lora_dropout),
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_follow_transformers_conversion() {
        let cases = [
            (
                "llava",
                "language_model.model.layers.0.self_attn.q_proj",
                "model.language_model.layers.0.self_attn.q_proj",
            ),
            (
                "llava",
                "model.language_model.layers.1.mlp.up_proj",
                "model.language_model.layers.1.mlp.up_proj",
            ),
            (
                "llava",
                "multi_modal_projector.linear_1",
                "model.multi_modal_projector.linear_1",
            ),
            (
                "qwen2_5_vl",
                "model.layers.2.mlp.down_proj",
                "model.language_model.layers.2.mlp.down_proj",
            ),
            (
                "qwen2_5_vl",
                "model.language_model.layers.2.mlp.down_proj",
                "model.language_model.layers.2.mlp.down_proj",
            ),
            (
                "qwen2_5_vl",
                "visual.blocks.0.attn.qkv",
                "model.visual.blocks.0.attn.qkv",
            ),
            (
                "llama",
                "model.layers.0.self_attn.o_proj",
                "model.layers.0.self_attn.o_proj",
            ),
            (
                "llama",
                "layers.0.self_attn.o_proj",
                "model.layers.0.self_attn.o_proj",
            ),
        ];
        for (family, key, want) in cases {
            assert_eq!(module_path(key, family), want, "{family} {key}");
        }
    }

    #[test]
    fn scaling_and_targets_as_peft() {
        let mut c = LoraConfig::new(4, 8.0);
        assert_eq!(c.scaling(), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scaling(), 4.0);
        assert_eq!(c.targets(), ["q_proj", "v_proj"]);
        c.target_modules = vec!["all-linear".into()];
        assert_eq!(c.targets(), PROJECTIONS);
        c.target_modules = vec!["lm_head".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("lora-targets") && e.contains("lm_head"), "{e}");
        let a = kaiming_uniform("x", 4, 100, 0);
        assert!(a.iter().all(|v| v.abs() <= 0.1) && a.iter().any(|v| v.abs() > 0.05));
    }
}
