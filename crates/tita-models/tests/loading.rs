//! Checkpoint loading: the key layouts of different transformers versions, sharded files, and
//! clear errors (naming file and tensor or field) for every kind of bad checkpoint.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use tita_models::Vlm;

/// Copies a fixture checkpoint to a temp dir, with its tensors renamed / dropped / replaced by
/// `edit` (name -> new name, or None to drop) and extra tensors appended.
fn rewrite(
    src: &str,
    edit: impl Fn(&str) -> Option<String>,
    extra: Vec<(String, Vec<usize>, Vec<f32>)>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join(src);
    for f in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let extra_bytes: Vec<(String, Vec<usize>, Vec<u8>)> = extra
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let mut views: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .filter_map(|(name, v)| {
            edit(&name).map(|n| {
                (
                    n,
                    TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap(),
                )
            })
        })
        .collect();
    for (n, s, b) in &extra_bytes {
        views.push((
            n.clone(),
            TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
        ));
    }
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

fn last_logits(dir: &Path) -> Vec<f32> {
    let model = Vlm::<B>::load(dir, &device()).unwrap();
    let case = &cases()[0];
    let (ids, pixels) = prepare(dir, &model, case);
    all_logits(&model, &ids, Some(&pixels), &mut model.new_cache(1))
        .pop()
        .unwrap()
}

fn load_err(dir: &Path) -> String {
    Vlm::<B>::load(dir, &device())
        .expect_err("loading must fail")
        .to_string()
}

#[test]
fn newer_transformers_key_layouts_load_the_same_model() {
    let reference = last_logits(&fixtures().join("llava-target"));
    // transformers >= 4.52: `model.language_model.*`, `lm_head.weight`, `model.vision_tower.*`.
    let v452 = |n: &str| {
        Some(
            if let Some(rest) = n.strip_prefix("language_model.model.") {
                format!("model.language_model.{rest}")
            } else if n == "language_model.lm_head.weight" {
                "lm_head.weight".to_string()
            } else {
                format!("model.{n}")
            },
        )
    };
    let dir = rewrite("llava-target", v452, vec![]);
    assert_eq!(last_logits(dir.path()), reference);
    // transformers 5 also drops `vision_model.` from the vision tower.
    let dir = rewrite(
        "llava-target",
        |n| v452(&n.replace("vision_tower.vision_model.", "vision_tower.")),
        vec![],
    );
    assert_eq!(last_logits(dir.path()), reference);
    let model = Vlm::<B>::load(dir.path(), &device()).unwrap();
    assert_eq!(model.keys.vision.as_deref(), Some("model.vision_tower."));
    assert_eq!(model.keys.text.lm_head, "lm_head.weight");
}

#[test]
fn sharded_checkpoint_with_index() {
    let reference = last_logits(&fixtures().join("llava-target"));
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("llava-target");
    for f in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut map = HashMap::new();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (name, v) in st.tensors() {
        let view = TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap();
        let shard = if name.starts_with("language_model") {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(name.clone(), serde_json::Value::from(shard));
        if shard.contains("00001") {
            a.push((name, view))
        } else {
            b.push((name, view))
        }
    }
    safetensors::serialize_to_file(
        a,
        None,
        &dir.path().join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    safetensors::serialize_to_file(
        b,
        None,
        &dir.path().join("model-00002-of-00002.safetensors"),
    )
    .unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    assert_eq!(last_logits(dir.path()), reference);
}

#[test]
fn truncated_or_corrupt_safetensors() {
    let dir = rewrite("llava-target", |n| Some(n.to_string()), vec![]);
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("truncated or corrupt"),
        "{err}"
    );
    std::fs::write(&file, b"definitely not safetensors").unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
    // A header entry whose byte range does not fit its shape: the tensor is named.
    let header = br#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend([0u8; 4]);
    std::fs::write(&file, bytes).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("tensor `w`: F32 [2, 2] needs 16 bytes but its data_offsets [0, 4] hold 4"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let gone = "language_model.model.layers.1.mlp.up_proj.weight";
    let dir = rewrite(
        "llava-target",
        |n| (n != gone).then(|| n.to_string()),
        vec![],
    );
    let err = load_err(dir.path());
    assert!(
        err.contains(gone) && err.contains("missing") && err.contains("[96, 32]"),
        "{err}"
    );
}

#[test]
fn misshaped_tensor_is_named() {
    let bad = "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.bias";
    let dir = rewrite(
        "llava-target",
        |n| (n != bad).then(|| n.to_string()),
        vec![(bad.into(), vec![31], vec![0.0; 31])],
    );
    let err = load_err(dir.path());
    assert!(
        err.contains(bad)
            && err.contains("[31]")
            && err.contains("[32]")
            && err.contains("model.safetensors"),
        "{err}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let dir = rewrite(
        "llava-target",
        |n| Some(n.to_string()),
        vec![(
            "language_model.model.layers.7.extra.weight".into(),
            vec![2],
            vec![1.0, 2.0],
        )],
    );
    let err = load_err(dir.path());
    assert!(
        err.contains("language_model.model.layers.7.extra.weight") && err.contains("unexpected"),
        "{err}"
    );
}

#[test]
fn config_that_contradicts_the_weights() {
    let edit_config = |f: &dyn Fn(&mut serde_json::Value)| {
        let dir = rewrite("llava-target", |n| Some(n.to_string()), vec![]);
        let path = dir.path().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        f(&mut cfg);
        std::fs::write(&path, cfg.to_string()).unwrap();
        dir
    };
    let dir = edit_config(&|c| c["text_config"]["intermediate_size"] = 100.into());
    let err = load_err(dir.path());
    assert!(
        err.contains("mlp.gate_proj.weight") && err.contains("[100, 32]"),
        "{err}"
    );
    let dir = edit_config(&|c| c["text_config"]["num_hidden_layers"] = 3.into());
    let err = load_err(dir.path());
    assert!(
        err.contains("language_model.model.layers.2.") && err.contains("missing"),
        "{err}"
    );
    let dir = edit_config(&|c| c["text_config"]["num_hidden_layers"] = 1.into());
    let err = load_err(dir.path());
    assert!(
        err.contains("language_model.model.layers.1.") && err.contains("unexpected"),
        "{err}"
    );
    let dir = edit_config(&|c| c["text_config"]["num_attention_heads"] = 5.into());
    let err = load_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("num_attention_heads"),
        "{err}"
    );
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("config.json"), "{err}");
    std::fs::copy(
        fixtures().join("llava-target/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn save_then_load_gives_identical_tensors_names_dtypes_and_logits() {
    // f16 target, bf16 reward, f32 text-only LLaMA with tied embeddings (no lm_head stored).
    for src in ["llava-target", "llava-reward", "llama-text"] {
        let src = fixtures().join(src);
        let model = Vlm::<B>::load(&src, &device()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let saved = out.path().join("saved");
        model.save_pretrained(&src, &saved).unwrap();

        let a = std::fs::read(src.join("model.safetensors")).unwrap();
        let b = std::fs::read(saved.join("model.safetensors")).unwrap();
        let (a, b) = (
            SafeTensors::deserialize(&a).unwrap(),
            SafeTensors::deserialize(&b).unwrap(),
        );
        let mut names_a = a.names();
        let mut names_b = b.names();
        names_a.sort();
        names_b.sort();
        assert_eq!(names_a, names_b, "{}", src.display());
        for name in names_a {
            let (ta, tb) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
            assert_eq!(ta.dtype(), tb.dtype(), "{name}");
            assert_eq!(ta.shape(), tb.shape(), "{name}");
            // Stored values round-trip exactly (f16/bf16 -> f32 -> f16/bf16 is lossless).
            assert!(ta.data() == tb.data(), "{name}: values changed");
        }
        for f in ["config.json", "tokenizer.json"] {
            assert_eq!(
                std::fs::read(src.join(f)).unwrap(),
                std::fs::read(saved.join(f)).unwrap(),
                "{f}"
            );
        }
        if src.ends_with("llama-text") {
            continue;
        }
        assert_eq!(last_logits(&src), last_logits(&saved));
    }
}

// ---- Qwen2.5-VL (fixtures/qwen2_5_vl/model: hub layout, bf16, tied lm_head) ----

const QWEN: &str = "qwen2_5_vl/model";

#[test]
fn qwen_in_memory_layout_loads_and_errors_name_the_tensor() {
    // transformers 5's in-memory names: `model.language_model.*`, `model.visual.*`.
    let moved = rewrite(
        QWEN,
        |n| {
            Some(match n.strip_prefix("model.") {
                Some(rest) => format!("model.language_model.{rest}"),
                None => format!("model.{n}"),
            })
        },
        vec![],
    );
    let model = Vlm::<B>::load(moved.path(), &device()).unwrap();
    assert_eq!(model.keys.vision.as_deref(), Some("model.visual."));
    assert_eq!(model.keys.text.decoder, "model.language_model.");

    let gone = "visual.merger.mlp.0.weight";
    let dir = rewrite(QWEN, |n| (n != gone).then(|| n.to_string()), vec![]);
    let err = load_err(dir.path());
    assert!(err.contains(gone) && err.contains("missing"), "{err}");

    let bad = "model.layers.1.self_attn.k_proj.bias";
    let dir = rewrite(
        QWEN,
        |n| (n != bad).then(|| n.to_string()),
        vec![(bad.into(), vec![15], vec![0.0; 15])],
    );
    let err = load_err(dir.path());
    assert!(
        err.contains(bad) && err.contains("[15]") && err.contains("[16]"),
        "{err}"
    );
}

#[test]
fn qwen_config_errors_name_the_field() {
    let src = fixtures().join(QWEN).join("config.json");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&src).unwrap()).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 6] = [
        ("text_config.rope_parameters.mrope_section", |c| {
            c["text_config"]["rope_parameters"]["mrope_section"] = serde_json::json!([1, 1, 1])
        }),
        (
            "mrope_section`: expected a list of counts (integers >= 0), found -1",
            |c| {
                c["text_config"]["rope_parameters"]["mrope_section"] = serde_json::json!([-1, 3, 2])
            },
        ),
        (
            "rope_theta`: 0 must be a finite number greater than zero",
            |c| {
                c["text_config"]["rope_parameters"]["rope_theta"] = serde_json::json!(0.0);
                c["text_config"]["rope_theta"] = serde_json::json!(0.0)
            },
        ),
        ("rms_norm_eps`: -0.001 must be a finite number", |c| {
            c["text_config"]["rms_norm_eps"] = serde_json::json!(-0.001)
        }),
        ("vision_config.fullatt_block_indexes", |c| {
            c["vision_config"]["fullatt_block_indexes"] = serde_json::json!([5])
        }),
        ("vision_config.out_hidden_size", |c| {
            c["vision_config"]["out_hidden_size"] = serde_json::json!(48)
        }),
    ];
    for (field, edit) in cases {
        let mut c = config.clone();
        edit(&mut c);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, c.to_string()).unwrap();
        let err = tita_models::ModelConfig::from_file(&path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(field) && err.contains("config.json"),
            "{field}: {err}"
        );
    }
}

#[test]
fn qwen_save_then_load_round_trips_names_and_dtypes() {
    let src = fixtures().join(QWEN);
    let model = Vlm::<B>::load(&src, &device()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dst = out.path().join("saved");
    model.save_pretrained(&src, &dst).unwrap();
    let (a, b) = (
        std::fs::read(src.join("model.safetensors")).unwrap(),
        std::fs::read(dst.join("model.safetensors")).unwrap(),
    );
    let (a, b) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&b).unwrap(),
    );
    let mut names: Vec<String> = a.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut saved: Vec<String> = b.names().into_iter().map(str::to_string).collect();
    saved.sort();
    assert_eq!(names, saved);
    for n in &names {
        let (x, y) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
        assert_eq!(
            (x.dtype(), x.shape(), x.data()),
            (y.dtype(), y.shape(), y.data()),
            "{n}"
        );
    }
}
