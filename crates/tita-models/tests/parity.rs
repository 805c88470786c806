//! Numeric parity with transformers on the reference fixtures (tolerance 1e-4 on logits).

mod common;

use common::*;
use tita_models::Vlm;

const TOL: f32 = 1e-4;

#[test]
fn target_and_reward_logits_match_transformers() {
    let exp = fixtures().join("expected.safetensors");
    let target_dir = fixtures().join("llava-target");
    let reward_dir = fixtures().join("llava-reward");
    let target = Vlm::<B>::load(&target_dir, &device()).unwrap();
    let reward = Vlm::<B>::load(&reward_dir, &device()).unwrap();
    for (i, case) in cases().iter().enumerate() {
        let (ids, pixels) = prepare(&target_dir, &target, case);
        assert_eq!(ids, ids_of(&case["input_ids"]), "case {i} input_ids");

        let logits = all_logits(&target, &ids, Some(&pixels), &mut target.new_cache(1));
        let head = expected(&exp, &format!("case{i}.target.logits_head"));
        assert_eq!(head.len(), ids.len() * 256);
        for (pos, row) in logits.iter().enumerate() {
            let d = max_abs_diff(&row[..256], &head[pos * 256..(pos + 1) * 256]);
            assert!(
                d <= TOL,
                "case {i} target logits_head position {pos}: max |Δ| {d}"
            );
        }
        let last = expected(&exp, &format!("case{i}.target.logits_last"));
        let d = max_abs_diff(logits.last().unwrap(), &last);
        assert!(d <= TOL, "case {i} target logits_last: max |Δ| {d}");

        let (rids, rpix) = prepare(&reward_dir, &reward, case);
        let rlogits = all_logits(&reward, &rids, Some(&rpix), &mut reward.new_cache(1));
        let d = max_abs_diff(
            rlogits.last().unwrap(),
            &expected(&exp, &format!("case{i}.reward.logits_last")),
        );
        assert!(d <= TOL, "case {i} reward logits_last: max |Δ| {d}");
    }
}

#[test]
fn prefill_all_equals_step_by_step() {
    let dir = fixtures().join("llava-reward-ref");
    let model = Vlm::<B>::load(&dir, &device()).unwrap();
    let case = &cases()[1];
    let (ids, pixels) = prepare(&dir, &model, case);
    let full = all_logits(&model, &ids, Some(&pixels), &mut model.new_cache(1));
    // Prefill up to just past the image, then feed the rest one token at a time.
    let split = ids.iter().rposition(|&t| t == 32000).unwrap() + 2;
    let mut cache = model.new_cache(1);
    let mut stepped = all_logits(&model, &ids[..split], Some(&pixels), &mut cache);
    for &t in &ids[split..] {
        stepped.extend(all_logits(&model, &[t], None, &mut cache));
    }
    assert_eq!(cache.len(), ids.len());
    for (pos, (a, b)) in full.iter().zip(&stepped).enumerate() {
        let d = max_abs_diff(a, b);
        assert!(d <= TOL, "position {pos}: prefill vs step max |Δ| {d}");
    }
}

#[test]
fn text_only_llama_with_tied_embeddings() {
    let dir = fixtures().join("llama-text");
    let model = Vlm::<B>::load(&dir, &device()).unwrap();
    assert!(model.vision.is_none() && model.ties_embeddings());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("llama-text.json")).unwrap())
            .unwrap();
    let exp = fixtures().join("llama-text.safetensors");
    for (i, case) in meta["cases"].as_array().unwrap().iter().enumerate() {
        let ids = ids_of(&case["input_ids"]);
        let logits = all_logits(&model, &ids, None, &mut model.new_cache(1));
        let head = expected(&exp, &format!("case{i}.logits_head"));
        for (pos, row) in logits.iter().enumerate() {
            let d = max_abs_diff(&row[..256], &head[pos * 256..(pos + 1) * 256]);
            assert!(d <= TOL, "case {i} position {pos}: max |Δ| {d}");
        }
        let d = max_abs_diff(
            logits.last().unwrap(),
            &expected(&exp, &format!("case{i}.logits_last")),
        );
        assert!(d <= TOL, "case {i} logits_last: max |Δ| {d}");
    }
}

/// A left-padded batch decoded step by step through a small in-place KV buffer (so that it
/// grows twice) gives each row the logits of that row's own unpadded prefill.
#[test]
fn padded_batch_in_place_cache_equals_unpadded_prefill() {
    let model = Vlm::<B>::load(&fixtures().join("llama-text"), &device()).unwrap();
    let dev = device();
    let prompts: [Vec<u32>; 2] = [vec![1, 15, 27, 3, 9, 44, 8], vec![1, 71, 5]];
    let steps: [u32; 5] = [12, 7, 30, 2, 19];
    let width = prompts[0].len();
    let pad: Vec<usize> = prompts.iter().map(|r| width - r.len()).collect();
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|r| {
            std::iter::repeat_n(0, width - r.len())
                .chain(r.iter().copied())
                .collect()
        })
        .collect();
    let mut cache = model.new_padded_cache(pad).with_capacity(width + 2);
    let hidden = model
        .forward(model.embed(&ids, None, &dev).unwrap(), &mut cache)
        .unwrap();
    let mut batched = vec![rows(model.last_logits(hidden))];
    for &t in &steps {
        let hidden = model
            .forward(model.embed_text(&[vec![t], vec![t]], &dev), &mut cache)
            .unwrap();
        batched.push(rows(model.last_logits(hidden)));
    }
    assert_eq!(cache.len(), width + steps.len());
    assert!(cache.capacity() >= cache.len() && cache.capacity() <= cache.len() + 2);
    for (r, row) in prompts.iter().enumerate() {
        let mut seq = row.clone();
        for (k, step) in batched.iter().enumerate() {
            let alone = all_logits(&model, &seq, None, &mut model.new_cache(1));
            let d = max_abs_diff(alone.last().unwrap(), &step[r]);
            assert!(d <= TOL, "row {r}, step {k}: batched vs alone max |Δ| {d}");
            if let Some(&t) = steps.get(k) {
                seq.push(t);
            }
        }
    }
}

/// Weights held in f16 / bf16 (computing in that type, softmax and logits in f32) stay as
/// close to the f32 logits on every fixture case as transformers' do: PyTorch 2.15 CPU with
/// transformers 5.24 loading this model with `dtype=float16` / `bfloat16` deviates by up to
/// 0.055 / 0.41 here (logits up to ~6). The bounds allow 1.5x that; the deviation is printed.
#[test]
fn half_precision_logits_stay_close_to_f32() {
    use tita_models::Precision;
    let dir = fixtures().join("llava-target");
    let f32_model = Vlm::<B>::load(&dir, &device()).unwrap();
    for (precision, bound) in [(Precision::F16, 0.083), (Precision::BF16, 0.62)] {
        let dtype = precision.resolve(tita_models::StoredDtype::F32);
        if !<B as burn::tensor::backend::Backend>::supports_dtype(&device(), dtype) {
            // wgpu has no bf16: the load must say so, not fail inside a kernel.
            let err = Vlm::<B>::load_in(&dir, precision, &device())
                .unwrap_err()
                .to_string();
            assert!(err.contains("not supported"), "{err}");
            eprintln!("{precision}: not supported on this backend (refused at load)");
            continue;
        }
        let model = Vlm::<B>::load_in(&dir, precision, &device()).unwrap();
        assert_eq!(
            format!("{:?}", model.dtype()).to_lowercase(),
            precision.to_string()
        );
        let mut worst = 0f32;
        let mut scale = 0f32;
        for case in cases().iter() {
            let (ids, pixels) = prepare(&dir, &f32_model, case);
            let exact = all_logits(&f32_model, &ids, Some(&pixels), &mut f32_model.new_cache(1));
            let half = all_logits(&model, &ids, Some(&pixels), &mut model.new_cache(1));
            for (a, b) in exact.iter().zip(&half) {
                assert!(b.iter().all(|v| v.is_finite()));
                worst = worst.max(max_abs_diff(a, b));
                scale = scale.max(a.iter().fold(0f32, |m, v| m.max(v.abs())));
            }
        }
        eprintln!(
            "{precision}: max |logit - f32 logit| = {worst:.2e} (largest |logit| {scale:.2})"
        );
        assert!(worst <= bound, "{precision}: max |Δ| {worst} > {bound}");
    }
}

/// The ids of `llama-text.json`'s cases (the LoRA fixtures' inputs).
fn llama_text_ids() -> Vec<Vec<u32>> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("llama-text.json")).unwrap())
            .unwrap();
    let cases = meta["cases"].as_array().unwrap();
    cases.iter().map(|c| ids_of(&c["input_ids"])).collect()
}

/// Asserts that `model` gives the logits PEFT gave for base + adapter `name` (fixtures/lora).
fn assert_lora_logits(model: &Vlm<B>, name: &str, what: &str) {
    let exp = fixtures().join("lora/expected.safetensors");
    for (i, ids) in llama_text_ids().iter().enumerate() {
        let logits = all_logits(model, ids, None, &mut model.new_cache(1));
        let head = expected(&exp, &format!("{name}.case{i}.logits_head"));
        let width = head.len() / ids.len();
        for (pos, row) in logits.iter().enumerate() {
            let d = max_abs_diff(&row[..width], &head[pos * width..(pos + 1) * width]);
            assert!(
                d <= TOL,
                "{name} {what} case {i} position {pos}: max |Δ| {d}"
            );
        }
        let last = expected(&exp, &format!("{name}.case{i}.logits_last"));
        let d = max_abs_diff(logits.last().unwrap(), &last);
        assert!(d <= TOL, "{name} {what} case {i} logits_last: max |Δ| {d}");
    }
}

/// Every float parameter's values by id.
fn param_values(model: &Vlm<B>) -> std::collections::HashMap<burn::module::ParamId, Vec<f32>> {
    use burn::module::{Module, ModuleVisitor, Param};
    struct Collect(std::collections::HashMap<burn::module::ParamId, Vec<f32>>);
    impl ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, p: &Param<burn::tensor::Tensor<B, D>>) {
            self.0.insert(p.id, values(p.val()));
        }
    }
    let mut c = Collect(Default::default());
    model.visit(&mut c);
    c.0
}

/// PEFT's adapters (fixtures/lora: all seven projections of the text LLaMA; rsLoRA on three of
/// the LLaVA reward's language model) give PEFT's logits; merged, PEFT's merged weights and the
/// same logits; saved by us, the same tensors under the same names, loading back to the same
/// logits.
#[test]
fn peft_adapters_load_merge_and_save_as_peft() {
    use tita_models::lora::module_path;
    use tita_models::param_id;
    let exp = fixtures().join("lora/expected.safetensors");
    let expected_names: Vec<String> = {
        let bytes = std::fs::read(&exp).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.names().into_iter().map(str::to_string).collect()
    };
    for (name, base, targets) in [
        ("llama-text", "llama-text", 7),
        ("llava", "llava-reward", 3),
    ] {
        let adapter = fixtures().join("lora").join(name);
        let mut model = Vlm::<B>::load(&fixtures().join(base), &device()).unwrap();
        let config = model.load_adapter(&adapter, &device()).unwrap();
        assert_eq!(config.target_modules.len(), targets, "{config:?}");
        assert_lora_logits(&model, name, "adapter");

        // Saved by us: PEFT's names, shapes and values.
        let dir = tempfile::tempdir().unwrap();
        model
            .save_adapter(&fixtures().join(base), dir.path())
            .unwrap();
        let read = |p: &std::path::Path| {
            let bytes = std::fs::read(p.join("adapter_model.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut out: Vec<(String, Vec<usize>, Vec<u8>)> = st
                .tensors()
                .into_iter()
                .map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec()))
                .collect();
            out.sort();
            out
        };
        assert_eq!(
            read(dir.path()),
            read(&adapter),
            "{name}: saved adapter differs"
        );
        let mut again = Vlm::<B>::load(&fixtures().join(base), &device()).unwrap();
        assert_eq!(again.load_adapter(dir.path(), &device()).unwrap(), config);

        // Merged: PEFT's merged weights (by module path), and the adapter's logits.
        again.merge_lora();
        assert!(again.lora_config().is_none());
        let params = param_values(&again);
        let mut compared = 0;
        for t in &again.stored {
            let path = module_path(t.name.trim_end_matches(".weight"), again.family());
            let key = format!("{name}.merged.{path}.weight");
            if !expected_names.contains(&key) {
                continue;
            }
            let want = expected(&exp, &key);
            let [rows, cols] = [t.shape[0], t.shape[1]];
            let got = &params[&param_id(&t.name)];
            // Held transposed ([in, out]).
            let got: Vec<f32> = (0..rows * cols)
                .map(|i| got[(i % cols) * rows + i / cols])
                .collect();
            let d = max_abs_diff(&got, &want);
            assert!(d <= 1e-6, "{key}: max |Δ| {d}");
            compared += 1;
        }
        let layers = again.config.text().num_hidden_layers;
        assert_eq!(
            compared,
            targets * layers,
            "{name}: merged weights compared"
        );
        assert_lora_logits(&again, name, "merged");
    }
}

/// A fresh adapter leaves the model's output as it was (B = 0) and is saved with PEFT's names;
/// bad adapter files are errors naming the file and field.
#[test]
fn fresh_adapters_and_bad_adapter_files() {
    use tita_models::LoraConfig;
    let dir = fixtures().join("llama-text");
    let plain = Vlm::<B>::load(&dir, &device()).unwrap();
    let mut model = Vlm::<B>::load(&dir, &device()).unwrap();
    let mut config = LoraConfig::new(2, 4.0);
    config.target_modules = vec!["all-linear".into()];
    model.attach_lora(&config, 0, &device()).unwrap();
    let ids = &llama_text_ids()[0];
    let a = all_logits(&plain, ids, None, &mut plain.new_cache(1));
    let b = all_logits(&model, ids, None, &mut model.new_cache(1));
    assert_eq!(a, b);
    let names: Vec<String> = model
        .adapter_tensors()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(names.len(), 2 * 7 * 2);
    assert_eq!(
        names[0],
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    assert!(model.attach_lora(&config, 0, &device()).is_err());

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adapter");
    model.save_adapter(&dir, &out).unwrap();
    let cfg_path = out.join("adapter_config.json");
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    let load = || {
        Vlm::<B>::load(&dir, &device())
            .unwrap()
            .load_adapter(&out, &device())
    };
    for (from, to, field) in [
        ("\"use_dora\": false", "\"use_dora\": true", "use_dora"),
        ("\"bias\": \"none\"", "\"bias\": \"all\"", "bias"),
        (
            "\"peft_type\": \"LORA\"",
            "\"peft_type\": \"IA3\"",
            "peft_type",
        ),
        ("\"r\": 2", "\"r\": 3", "lora_A"),
    ] {
        assert!(good.contains(from), "{from} in {good}");
        std::fs::write(&cfg_path, good.replace(from, to)).unwrap();
        let e = load().unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    // Adapter tensors for a model of other shapes: the text model's adapter on the LLaVA reward.
    std::fs::write(&cfg_path, &good).unwrap();
    let e = Vlm::<B>::load(&fixtures().join("llava-reward"), &device())
        .unwrap()
        .load_adapter(&out, &device())
        .unwrap_err()
        .to_string();
    assert!(e.contains("adapter_model.safetensors"), "{e}");
}
