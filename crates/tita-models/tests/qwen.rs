//! Qwen2.5-VL against transformers on `fixtures/qwen2_5_vl` (tiny seeded model, bf16 weights
//! computed in f32): config in both layouts, processor, M-RoPE positions, every vision block's
//! and decoder layer's output, image features, logits (1e-4) and 12 greedy tokens through the
//! KV cache.

mod common;

use std::path::PathBuf;

use common::*;
use tita_core::image::{flatten_patches, ImageProcessor, PatchLayout};
use tita_models::qwen2_5_vl::rope_index;
use tita_models::{ModelConfig, PixelBatch, Vlm};

const TOL: f32 = 1e-4;

fn dir() -> PathBuf {
    fixtures().join("qwen2_5_vl")
}

fn model_dir() -> PathBuf {
    dir().join("model")
}

fn case(name: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    v["cases"][name].clone()
}

fn exp(name: &str) -> Vec<f32> {
    expected(&dir().join("expected.safetensors"), name)
}

/// An int64 tensor of the expected file (the loader under test reads floats only).
fn exp_i64(name: &str) -> Vec<i64> {
    let bytes = std::fs::read(dir().join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
    t.data()
        .chunks(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn qwen_config(m: &Vlm<B>) -> &tita_models::QwenVlConfig {
    match &m.config {
        ModelConfig::QwenVl(c) => c,
        other => panic!("not a Qwen2.5-VL config: {other:?}"),
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let d = max_abs_diff(got, want);
    eprintln!("{what}: max |Δ| {d:.2e}");
    assert!(d <= tol, "{what}: max |Δ| {d} > {tol}");
}

#[test]
fn nested_and_hub_flat_configs_read_the_same() {
    let nested = ModelConfig::from_file(&model_dir().join("config.json")).unwrap();
    let flat = ModelConfig::from_file(&model_dir().join("config_hub_flat.json")).unwrap();
    assert_eq!(nested, flat);
    let ModelConfig::QwenVl(c) = nested else {
        panic!("not Qwen")
    };
    assert_eq!(c.text.mrope_section, vec![1, 1, 2]);
    assert!(c.text.attention_bias && !c.text.o_proj_bias && c.text.tie_word_embeddings);
    assert_eq!((c.text.head_dim, c.text.rope_theta), (8, 100.0));
    assert_eq!(c.vision.fullatt_block_indexes, vec![1]);
    assert_eq!(c.vision.window_cells(), 2);
}

#[test]
fn processor_matches_transformers_pixel_values_and_grid() {
    let proc = ImageProcessor::from_file(&model_dir()).unwrap();
    let layout = proc.patches.expect("a Qwen2-VL processor");
    assert_eq!(
        layout,
        PatchLayout {
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2
        }
    );
    for name in ["image_main", "image_resize"] {
        let c = case(name);
        let pixels = proc
            .preprocess_file(&dir().join(c["image"].as_str().unwrap()), false)
            .unwrap();
        let (rows, grid) = flatten_patches(&pixels, layout).unwrap();
        let want: Vec<usize> = c["image_grid_thw"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(grid.to_vec(), want, "{name} grid");
        assert_close(
            &format!("{name} pixel_values"),
            &rows,
            &exp(&format!("{name}.pixel_values")),
            1e-5,
        );
    }
}

#[test]
fn logits_positions_and_greedy_tokens_match_transformers() {
    let dev = device();
    let model = Vlm::<B>::load(&model_dir(), &dev).unwrap();
    let qc = qwen_config(&model).clone();
    let proc = ImageProcessor::from_file(&model_dir()).unwrap();
    for name in ["image_main", "image_resize", "text_only"] {
        let c = case(name);
        let ids = ids_of(&c["input_ids"]);
        let pixels = c["image"]
            .as_str()
            .map(|f| proc.preprocess_file(&dir().join(f), false).unwrap());
        let images = pixels.as_ref().map(|p| {
            let batch = model.pixels_tensor(&[p], &dev).unwrap();
            model.encode_images(batch).unwrap()
        });
        if let Some(p) = &pixels {
            // Every vision block's output, in the processor's patch order.
            let Some(tita_models::Vision::Qwen(tower)) = &model.vision else {
                panic!("a Qwen tower")
            };
            let PixelBatch::Patches { rows, grids } = model.pixels_tensor(&[p], &dev).unwrap()
            else {
                panic!("patches")
            };
            for (i, state) in tower.block_states(rows, &grids).into_iter().enumerate() {
                let got = values(state);
                assert_close(
                    &format!("{name} vision block {i}"),
                    &got,
                    &exp(&format!("{name}.vision_block{i}_out")),
                    TOL,
                );
            }
        }
        if let Some(f) = &images {
            let got = values(f.rows.clone());
            assert_close(
                &format!("{name} image_embeds"),
                &got,
                &exp(&format!("{name}.image_embeds")),
                TOL,
            );
            // Positions: transformers' get_rope_index.
            let (rows, delta) = rope_index(&qc, &ids, &f.grids).unwrap();
            let want: Vec<Vec<i64>> = c["position_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_i64().unwrap())
                        .collect()
                })
                .collect();
            assert_eq!(rows.to_vec(), want, "{name} position_ids");
            assert_eq!(
                delta,
                c["rope_delta"].as_i64().unwrap(),
                "{name} rope_delta"
            );
        }
        let embeds = model
            .embed(std::slice::from_ref(&ids), images, &dev)
            .unwrap();
        let got = values(embeds.x.clone());
        assert_close(
            &format!("{name} inputs_embeds"),
            &got,
            &exp(&format!("{name}.text_inputs_embeds")),
            TOL,
        );
        let states = model
            .layer_states(embeds.clone(), &mut model.new_cache(1))
            .unwrap();
        for (i, state) in states.into_iter().enumerate() {
            let got = values(state);
            assert_close(
                &format!("{name} text layer {i}"),
                &got,
                &exp(&format!("{name}.text_layer{i}_out")),
                TOL,
            );
        }
        let mut cache = model.new_cache(1);
        let hidden = model.forward(embeds, &mut cache).unwrap();
        let got = values(hidden.clone());
        assert_close(
            &format!("{name} final norm"),
            &got,
            &exp(&format!("{name}.text_final_norm")),
            TOL,
        );
        let logits = rows(model.logits(hidden).reshape([ids.len() as i32, -1]));
        let cols = exp_i64("logits_cols");
        let slice = exp(&format!("{name}.logits_cols_slice"));
        for (pos, row) in logits.iter().enumerate() {
            let picked: Vec<f32> = cols.iter().map(|&c| row[c as usize]).collect();
            assert_close(
                &format!("{name} logits_cols_slice[{pos}]"),
                &picked,
                &slice[pos * 256..(pos + 1) * 256],
                TOL,
            );
        }
        assert_close(
            &format!("{name} logits_last"),
            logits.last().unwrap(),
            &exp(&format!("{name}.logits_last")),
            TOL,
        );

        // Greedy decoding through the cache: positions continue with the row's rope delta.
        if let Some(g) = c.get("generation") {
            let want = ids_of(&g["tokens"]);
            let mut next = argmax(logits.last().unwrap());
            let mut got = vec![next];
            while got.len() < want.len() {
                let x = model.embed_text(&[vec![next]], &dev);
                let h = model.forward(x, &mut cache).unwrap();
                next = argmax(&rows(model.last_logits(h))[0]);
                got.push(next);
            }
            assert_eq!(got, want, "{name} greedy tokens");
        }
    }
}

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0 as u32
}

/// The second fixture model (other shapes: hidden 16, one KV head, full attention in block 0),
/// made by `gen_qwen_tita.py`: last logits at the checked columns.
#[test]
fn reward_model_of_other_shapes_matches_transformers() {
    let dev = device();
    let model = Vlm::<B>::load(&dir().join("reward"), &dev).unwrap();
    let proc = ImageProcessor::from_file(&dir().join("reward")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("tita.json")).unwrap()).unwrap();
    let cols = exp_i64("logits_cols");
    for name in ["image_main", "image_resize", "text_only"] {
        let c = case(name);
        let ids = ids_of(&c["input_ids"]);
        let images = c["image"].as_str().map(|f| {
            let p = proc.preprocess_file(&dir().join(f), false).unwrap();
            model
                .encode_images(model.pixels_tensor(&[&p], &dev).unwrap())
                .unwrap()
        });
        let embeds = model.embed(&[ids], images, &dev).unwrap();
        let hidden = model.forward(embeds, &mut model.new_cache(1)).unwrap();
        let last = &rows(model.last_logits(hidden))[0];
        let got: Vec<f32> = cols.iter().map(|&c| last[c as usize]).collect();
        let want: Vec<f32> = expected["reward_logits"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_close(&format!("reward {name} logits"), &got, &want, TOL);
    }
}
