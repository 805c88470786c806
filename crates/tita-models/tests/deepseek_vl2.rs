//! DeepSeek-VL2 against the authors' code on `fixtures/deepseek_vl2` (three tiny seeded models,
//! bf16 weights computed in f32): the configs with the authors' defaults and named errors; per
//! model, the text-only case's logits (1e-4), final hidden states (1e-5) and 12 greedy tokens
//! through the cache (MLA: the latent only); the last position's dense/MoE blocks and router
//! decisions of the traced case; the SigLIP tower and projector on the stored tiles (1e-5); the
//! processor (token ids, image mask, tiling, pixel bytes, token layout) and tokenizer on every
//! case; and every case through the processor and the whole model (features, hidden states,
//! logits, 12 greedy tokens).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use common::*;
use serde_json::{json, Value};
use tita_core::image::load_rgb;
use tita_core::image::PixelValues;
use tita_core::Tokenizer;
use tita_models::deepseek_vl2::{
    hub_keys, image_layout, tiles_used, AttentionKind, DeepseekV2, DeepseekVision,
    DeepseekVl2Config, FeedForward, GlobalViewPos, ImageRow, Message, MlaDims, MlaLayer, Processor,
    ProjectorType, Scoring, TileTag, TopkMethod,
};
use tita_models::weights::Recorder;
use tita_models::{ImageFeatures, PixelBatch, Vision, Vlm, Weights};

const MODELS: [&str; 3] = ["tiny-like", "small-like", "vl2-like"];
const LOGITS_TOL: f32 = 1e-4;
const HIDDEN_TOL: f32 = 1e-5;
const STEPS: usize = 12;

fn dir() -> PathBuf {
    fixtures().join("deepseek_vl2")
}

fn cases_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap()
}

fn exp(name: &str) -> Vec<f32> {
    expected(&dir().join("expected.safetensors"), name)
}

fn config(model: &str) -> DeepseekVl2Config {
    DeepseekVl2Config::from_file(&dir().join(model)).unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let d = max_abs_diff(got, want);
    eprintln!("{what}: max |Δ| {d:.2e}");
    assert!(d <= tol, "{what}: max |Δ| {d} > {tol}");
}

/// The language model of `model`, checking that it takes every `language.*` tensor.
fn load(model: &str) -> DeepseekV2<B> {
    let path = dir().join(model);
    let cfg = config(model);
    let mut w = Weights::open(&path).unwrap();
    let language: BTreeSet<String> = w
        .names()
        .filter(|n| n.starts_with("language."))
        .map(String::from)
        .collect();
    let mut rec = Recorder::new(&mut w, burn::tensor::DType::F32);
    let m = DeepseekV2::load(&mut rec, &hub_keys(), &cfg.language, &device()).unwrap();
    let taken: BTreeSet<String> = rec.taken.iter().map(|t| t.name.clone()).collect();
    assert_eq!(taken, language, "{model}: language tensors taken");
    m
}

fn row(v: &[f32]) -> Tensor<B, 3> {
    Tensor::from_data(TensorData::new(v.to_vec(), [1, 1, v.len()]), &device())
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
        .unwrap()
}

/// log_softmax(v)[i] in f64, as the reference computes its log-probs.
fn log_prob(v: &[f32], i: usize) -> f64 {
    let max = v.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
    let sum: f64 = v.iter().map(|&x| (x as f64 - max).exp()).sum();
    v[i] as f64 - max - sum.ln()
}

#[test]
fn configs_read_with_the_authors_defaults() {
    let tiny = config("tiny-like");
    let small = config("small-like");
    let vl2 = config("vl2-like");
    for c in [&tiny, &small, &vl2] {
        let l = &c.language;
        assert_eq!(
            (l.vocab_size, l.hidden_size, l.num_attention_heads),
            (129_280, 32, 4)
        );
        // Absent from the files: the authors' defaults.
        assert_eq!((l.rope_theta, l.rms_norm_eps), (10000.0, 1e-6));
        assert_eq!(l.max_position_embeddings, 4096);
        assert!(!l.tie_word_embeddings && !l.attention_bias);
        assert_eq!(
            (l.bos_token_id, l.eos_token_ids.clone()),
            (Some(0), vec![1])
        );
        let moe = l.moe.as_ref().unwrap();
        assert_eq!((moe.n_routed_experts, moe.n_shared_experts), (8, Some(2)));
        assert_eq!((moe.first_k_dense_replace, moe.moe_layer_freq), (1, 1));
        assert!(!l.is_moe_layer(0) && l.is_moe_layer(1));
        assert_eq!(c.candidate_resolutions.len(), 23);
        assert_eq!(c.candidate_resolutions[0], (384, 384));
        assert_eq!(c.candidate_resolutions[22], (1152, 1152));
        assert_eq!(
            (c.tile_tag, c.global_view_pos),
            (TileTag::TwoD, GlobalViewPos::Head)
        );
        let v = &c.vision;
        assert_eq!((v.image_size, v.patch_size, v.grid()), (384, 14, 27));
        assert_eq!(
            (v.width, v.layers, v.heads, v.mlp_hidden()),
            (64, 2, 4, 239)
        );
        let p = &c.projector;
        assert_eq!(p.projector_type, ProjectorType::DownsampleMlpGelu);
        assert_eq!(
            (p.input_dim, p.n_embed, p.depth, p.downsample_ratio),
            (64, 32, 2, 2)
        );
    }

    let l = &tiny.language;
    assert_eq!(l.attention, AttentionKind::Mha);
    assert_eq!((l.num_key_value_heads, l.num_hidden_layers), (4, 3));
    let moe = l.moe.as_ref().unwrap();
    assert_eq!(
        (moe.topk_method, moe.scoring, moe.num_experts_per_tok),
        (TopkMethod::Greedy, Scoring::Softmax, 2)
    );
    assert!(!moe.norm_topk_prob && moe.routed_scaling_factor == 1.0);

    let l = &small.language;
    assert_eq!(
        l.attention,
        AttentionKind::Mla(MlaDims {
            q_lora_rank: None,
            kv_lora_rank: 24,
            qk_nope_head_dim: 16,
            qk_rope_head_dim: 8,
            v_head_dim: 12
        })
    );
    assert_eq!(l.moe.as_ref().unwrap().num_experts_per_tok, 3);

    let l = &vl2.language;
    assert_eq!(
        l.attention,
        AttentionKind::Mla(MlaDims {
            q_lora_rank: Some(24),
            kv_lora_rank: 16,
            qk_nope_head_dim: 16,
            qk_rope_head_dim: 8,
            v_head_dim: 12
        })
    );
    assert_eq!(l.num_hidden_layers, 4);
    let moe = l.moe.as_ref().unwrap();
    assert_eq!(
        (moe.topk_method, moe.scoring),
        (
            TopkMethod::NoauxTc {
                n_group: 4,
                topk_group: 2
            },
            Scoring::Sigmoid
        )
    );
    assert!(moe.norm_topk_prob && moe.routed_scaling_factor == 2.0);

    // A nearly empty config: everything from the authors' defaults.
    let bare = json!({
        "model_type": "deepseek_vl_v2",
        "tile_tag": "2D",
        "projector_config": {"n_embed": 4096, "input_dim": 1024},
    });
    let c = DeepseekVl2Config::from_value(&bare, &PathBuf::from("bare.json")).unwrap();
    let l = &c.language;
    assert_eq!(
        l.attention,
        AttentionKind::Mla(MlaDims {
            q_lora_rank: Some(1536),
            kv_lora_rank: 512,
            qk_nope_head_dim: 128,
            qk_rope_head_dim: 64,
            v_head_dim: 128
        })
    );
    assert_eq!(
        (
            l.num_hidden_layers,
            l.num_attention_heads,
            l.num_key_value_heads
        ),
        (30, 32, 32)
    );
    assert_eq!(
        (l.vocab_size, l.hidden_size, l.max_position_embeddings),
        (102_400, 4096, 2048)
    );
    assert!(l.moe.is_none() && !l.is_moe_layer(5));
    assert_eq!(c.candidate_resolutions, vec![(384, 384)]);
    assert_eq!(c.global_view_pos, GlobalViewPos::Head);
    assert_eq!(
        (
            c.vision.width,
            c.vision.layers,
            c.vision.patch_size,
            c.vision.mlp_hidden()
        ),
        (1024, 24, 16, 4096)
    );
}

#[test]
fn bad_config_values_are_named_errors() {
    let base = |model: &str| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir().join(model).join("config.json")).unwrap(),
        )
        .unwrap()
    };
    // (model, section (None: top level), key, value (null removes the key), field named)
    let cases: Vec<(&str, Option<&str>, &str, Value, &str)> = vec![
        (
            "tiny-like",
            Some("language_config"),
            "num_key_value_heads",
            json!(3),
            "language_config.num_key_value_heads",
        ),
        (
            "tiny-like",
            Some("language_config"),
            "num_experts_per_tok",
            json!(9),
            "language_config.num_experts_per_tok",
        ),
        (
            "tiny-like",
            Some("language_config"),
            "topk_method",
            json!("best"),
            "language_config.topk_method",
        ),
        (
            "tiny-like",
            Some("language_config"),
            "topk_method",
            Value::Null,
            "language_config.topk_method",
        ),
        (
            "tiny-like",
            Some("language_config"),
            "scoring_func",
            json!("relu"),
            "language_config.scoring_func",
        ),
        (
            "tiny-like",
            Some("language_config"),
            "rope_theta",
            json!(0.0),
            "language_config.rope_theta",
        ),
        (
            "tiny-like",
            Some("language_config"),
            "rms_norm_eps",
            json!(-1e-6),
            "language_config.rms_norm_eps",
        ),
        (
            "tiny-like",
            Some("language_config"),
            "rope_scaling",
            json!({"type": "yarn", "factor": 4.0}),
            "language_config.rope_scaling",
        ),
        (
            "tiny-like",
            Some("language_config"),
            "hidden_size",
            json!("big"),
            "language_config.hidden_size",
        ),
        (
            "tiny-like",
            Some("language_config"),
            "model_type",
            json!("llama"),
            "language_config.model_type",
        ),
        (
            "small-like",
            Some("language_config"),
            "kv_lora_rank",
            json!(null),
            "language_config.kv_lora_rank",
        ),
        (
            "small-like",
            Some("language_config"),
            "qk_rope_head_dim",
            json!(7),
            "language_config.qk_rope_head_dim",
        ),
        (
            "vl2-like",
            Some("language_config"),
            "n_group",
            json!(3),
            "language_config.n_group",
        ),
        (
            "vl2-like",
            Some("language_config"),
            "topk_group",
            json!(5),
            "language_config.topk_group",
        ),
        (
            "vl2-like",
            Some("language_config"),
            "first_k_dense_replace",
            json!(9),
            "language_config.first_k_dense_replace",
        ),
        (
            "vl2-like",
            Some("projector_config"),
            "n_embed",
            json!(64),
            "projector_config.n_embed",
        ),
        (
            "vl2-like",
            Some("projector_config"),
            "projector_type",
            json!("conv"),
            "projector_config.projector_type",
        ),
        (
            "vl2-like",
            Some("vision_config"),
            "heads",
            json!(5),
            "vision_config.heads",
        ),
        ("vl2-like", None, "tile_tag", Value::Null, "tile_tag"),
        ("vl2-like", None, "tile_tag", json!("3D"), "tile_tag"),
        (
            "vl2-like",
            None,
            "global_view_pos",
            json!("middle"),
            "global_view_pos",
        ),
        (
            "vl2-like",
            None,
            "candidate_resolutions",
            json!([]),
            "candidate_resolutions",
        ),
        (
            "vl2-like",
            None,
            "candidate_resolutions",
            json!([[384, 384], [384]]),
            "candidate_resolutions",
        ),
        ("vl2-like", None, "model_type", json!("llava"), "model_type"),
    ];
    for (model, section, key, value, field) in cases {
        let mut v = base(model);
        let obj = match section {
            Some(s) => v[s].as_object_mut().unwrap(),
            None => v.as_object_mut().unwrap(),
        };
        // The one explicit null that means something (kv_lora_rank) stays a null.
        if value.is_null() && key != "kv_lora_rank" {
            obj.remove(key);
        } else {
            obj.insert(key.into(), value.clone());
        }
        let err = DeepseekVl2Config::from_value(&v, &PathBuf::from("config.json"))
            .expect_err(&format!("{model}: {key} = {value} accepted"))
            .to_string();
        assert!(
            err.contains(&format!("config.json: field `{field}`")),
            "{model}: {key} = {value}: {err}"
        );
    }
}

/// Full-sequence logits and final hidden states of the text-only case, then 12 greedy tokens
/// through the cache, against the authors' outputs.
fn text_only_matches(model: &str) {
    let dev = device();
    let m = load(model);
    let all = cases_json();
    let case = &all["cases"]["text_only"];
    let per = &case["per_model"][model];
    let ids = ids_of(&case["input_ids"]);
    let t = ids.len();
    let vocab = m.config.vocab_size;

    let mut state = m.new_state(vec![0]).with_capacity(t + STEPS);
    let hidden = m
        .forward(
            m.embed(std::slice::from_ref(&ids), &dev).unwrap(),
            &mut state,
        )
        .unwrap();
    let h = m.config.hidden_size;
    let hidden_rows = rows(hidden.clone().reshape([t, h]));
    let logits = rows(m.logits(hidden).reshape([t, vocab]));

    let other: Vec<usize> = per["other_positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as usize)
        .collect();
    let got_hidden: Vec<f32> = other
        .iter()
        .copied()
        .chain([t - 1])
        .flat_map(|p| hidden_rows[p].clone())
        .collect();
    assert_close(
        &format!("{model} hidden_final"),
        &got_hidden,
        &exp(&format!("{model}.text_only.hidden_final")),
        HIDDEN_TOL,
    );
    let got_other: Vec<f32> = other
        .iter()
        .flat_map(|&p| logits[p][..1024].to_vec())
        .collect();
    assert_close(
        &format!("{model} logits_other"),
        &got_other,
        &exp(&format!("{model}.text_only.logits_other")),
        LOGITS_TOL,
    );
    assert_close(
        &format!("{model} logits_last"),
        &logits[t - 1],
        &exp(&format!("{model}.text_only.logits_last")),
        LOGITS_TOL,
    );

    // Greedy decoding through the cache: the first token from the prefill.
    let want_ids = ids_of(&per["greedy_ids"]);
    let want_lp: Vec<f64> = per["greedy_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!((want_ids.len(), want_lp.len()), (STEPS, STEPS));
    let mut step_logits = logits[t - 1].clone();
    let mut got_ids = Vec::new();
    let mut lp_diff = 0f64;
    for (step, want) in want_lp.iter().enumerate() {
        let next = argmax(&step_logits);
        got_ids.push(next as u32);
        lp_diff = lp_diff.max((log_prob(&step_logits, next) - want).abs());
        if step + 1 < STEPS {
            let x = m.embed(&[vec![next as u32]], &dev).unwrap();
            let hidden = m.forward(x, &mut state).unwrap();
            step_logits = values(m.logits(hidden));
        }
    }
    assert_eq!(got_ids, want_ids, "{model}: greedy ids");
    eprintln!("{model} greedy log-probs: max |Δ| {lp_diff:.2e}");
    assert!(lp_diff <= LOGITS_TOL as f64, "{model}: log-probs {lp_diff}");
    assert_eq!(state.len(), t + STEPS - 1);

    // The last cached step equals a full recompute of the same sequence.
    let seq: Vec<u32> = ids.iter().chain(&got_ids[..STEPS - 1]).copied().collect();
    let mut fresh = m.new_state(vec![0]);
    let full = m
        .forward(
            m.embed(std::slice::from_ref(&seq), &dev).unwrap(),
            &mut fresh,
        )
        .unwrap();
    let full_last = rows(m.logits(full).reshape([seq.len(), vocab]))
        .pop()
        .unwrap();
    assert_close(
        &format!("{model} cached step vs recompute"),
        &step_logits,
        &full_last,
        LOGITS_TOL,
    );

    // MLA caches the latent and the shared rope key, not per-head keys and values.
    if let Some(d) = m.config.mla() {
        let heads = m.config.num_attention_heads;
        let full_kv = heads * (d.q_head_dim() + d.v_head_dim) * 4;
        for i in 0..m.layers.len() {
            let layer = state.cache.layer::<MlaLayer<B>>(i).unwrap();
            assert_eq!(
                layer.bytes_per_position(),
                d.latent_width() * 4,
                "layer {i}"
            );
            assert!(layer.bytes_per_position() < full_kv);
        }
    }
}

#[test]
fn tiny_like_text_only_matches_the_authors() {
    text_only_matches("tiny-like");
}

#[test]
fn small_like_text_only_matches_the_authors() {
    text_only_matches("small-like");
}

#[test]
fn vl2_like_text_only_matches_the_authors() {
    text_only_matches("vl2-like");
}

/// The traced case's last position: every layer's feed-forward block (dense or MoE) from the
/// stream after attention, the gate's logits and scores, the chosen experts and their weights,
/// and the final norm. (The attention blocks need the image features: a later slice.)
#[test]
fn feed_forward_and_routing_at_the_traced_position_match_the_authors() {
    let all = cases_json();
    for model in MODELS {
        let m = load(model);
        let h = m.config.hidden_size;
        let n = m.layers.len();
        let layer_out = exp(&format!("{model}.trace.layer_out"));
        let attn_out = exp(&format!("{model}.trace.attn_out"));
        let mlp_out = exp(&format!("{model}.trace.mlp_out"));
        assert_eq!(layer_out.len(), (n + 1) * h);
        for (l, layer) in m.layers.iter().enumerate() {
            let mid: Vec<f32> = layer_out[l * h..(l + 1) * h]
                .iter()
                .zip(&attn_out[l * h..(l + 1) * h])
                .map(|(x, a)| x + a)
                .collect();
            let got = values(layer.feed_forward(row(&mid)));
            assert_close(
                &format!("{model} layer {l} mlp_out"),
                &got,
                &mlp_out[l * h..(l + 1) * h],
                HIDDEN_TOL,
            );
            let FeedForward::Moe(moe) = &layer.mlp else {
                assert!(!m.config.is_moe_layer(l));
                continue;
            };
            let key = |name: &str| format!("{model}.trace.router.{l}.{name}");
            let gate_input = values(layer.post_attention_layernorm.forward(row(&mid)));
            assert_close(
                &key("gate_input"),
                &gate_input,
                &exp(&key("gate_input")),
                HIDDEN_TOL,
            );
            let x = Tensor::<B, 2>::from_data(
                TensorData::new(exp(&key("gate_input")), [1, h]),
                &device(),
            );
            let (logits, scores) = moe.gate.scores(x);
            assert_close(
                &key("gate_logits"),
                &values(logits),
                &exp(&key("gate_logits")),
                HIDDEN_TOL,
            );
            let scores = values(scores);
            assert_close(&key("scores"), &scores, &exp(&key("scores")), HIDDEN_TOL);
            if moe.gate.e_score_correction_bias.is_some() {
                let choice = moe.gate.scores_for_choice(&scores);
                assert_close(
                    &key("scores_for_choice"),
                    &choice,
                    &exp(&key("scores_for_choice")),
                    HIDDEN_TOL,
                );
                assert_close(
                    &key("group_scores"),
                    &moe.gate.group_scores(&choice),
                    &exp(&key("group_scores")),
                    HIDDEN_TOL,
                );
            }
            let want = &all["models"][model]["trace_router_last_token"][l.to_string()];
            let route = moe.gate.route(&scores);
            let mut pairs: Vec<(usize, f32)> = route
                .experts
                .iter()
                .copied()
                .zip(route.weights.iter().copied())
                .collect();
            pairs.sort_by_key(|p| p.0);
            let experts: Vec<u32> = pairs.iter().map(|p| p.0 as u32).collect();
            assert_eq!(
                experts,
                ids_of(&want["experts_sorted"]),
                "{model} layer {l} experts"
            );
            let weights: Vec<f32> = pairs.iter().map(|p| p.1).collect();
            let want_w: Vec<f32> = want["weights_sorted"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_close(
                &format!("{model} layer {l} weights"),
                &weights,
                &want_w,
                HIDDEN_TOL,
            );
        }
        let last = &layer_out[n * h..];
        assert_close(
            &format!("{model} final_norm"),
            &values(m.norm.forward(row(last))),
            &exp(&format!("{model}.trace.final_norm")),
            HIDDEN_TOL,
        );
    }
}

#[test]
fn a_bad_token_id_and_a_cache_of_another_kind_are_refused() {
    let dev = device();
    let mla = load("small-like");
    assert!(mla.embed(&[vec![0, 129_280]], &dev).is_err());
    let mha = load("tiny-like");
    // The MHA model's per-head K/V cache does not fit the MLA model.
    let mut state = mha.new_state(vec![0]);
    let x = mla.embed(&[vec![0, 5]], &dev).unwrap();
    assert!(mla.forward(x, &mut state).is_err());
}

/// A left-padded batch: each row's logits (prefill and one step) equal the row run alone.
#[test]
fn left_padded_rows_equal_each_row_alone() {
    let dev = device();
    let all = cases_json();
    let ids = ids_of(&all["cases"]["text_only"]["input_ids"]);
    let pad = 5;
    let short: Vec<u32> = ids[pad..].to_vec();
    let padded: Vec<u32> = std::iter::repeat_n(2, pad).chain(short.clone()).collect();
    for model in ["tiny-like", "small-like"] {
        let m = load(model);
        let vocab = m.config.vocab_size;
        let last = |state: &mut tita_models::DecodeState<B>, rows_: &[Vec<u32>]| {
            let hidden = m.forward(m.embed(rows_, &dev).unwrap(), state).unwrap();
            let [b, s, _] = hidden.dims();
            let logits = m.logits(hidden).slice([0..b, s - 1..s, 0..vocab]);
            rows(logits.reshape([b, vocab]))
        };
        let mut batch = m.new_state(vec![0, pad]).with_capacity(ids.len() + 1);
        let got = last(&mut batch, &[ids.clone(), padded.clone()]);
        let step = last(&mut batch, &[vec![7], vec![7]]);
        for (r, row_ids) in [ids.clone(), short.clone()].iter().enumerate() {
            let mut alone = m.new_state(vec![0]);
            let want = last(&mut alone, std::slice::from_ref(row_ids));
            assert_close(
                &format!("{model} row {r} prefill"),
                &got[r],
                &want[0],
                LOGITS_TOL,
            );
            let want = last(&mut alone, &[vec![7]]);
            assert_close(
                &format!("{model} row {r} step"),
                &step[r],
                &want[0],
                LOGITS_TOL,
            );
        }
    }
}

// ---- Vision, processor and the whole model ----

const CASES: [&str; 5] = ["small", "wide", "text_only", "three_images", "two_images"];

/// A tensor of `processor.safetensors` as raw bytes (u8 pixels, i32 layouts, f32 lut).
fn processor_bytes(name: &str) -> Vec<u8> {
    let bytes = std::fs::read(dir().join("processor.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .data()
        .to_vec()
}

fn pixel_lut() -> Vec<f32> {
    processor_bytes("pixel_lut")
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The whole model of `model` as any family loads, checking that it takes every tensor but
/// the unused attention-pool head.
fn load_vlm(model: &str) -> Vlm<B> {
    let path = dir().join(model);
    let used: BTreeSet<String> = Weights::open(&path)
        .unwrap()
        .names()
        .filter(|n| !n.starts_with("vision.attn_pool."))
        .map(String::from)
        .collect();
    let m = Vlm::<B>::load(&path, &device()).unwrap();
    assert_eq!(m.family(), "deepseek_vl_v2");
    let taken: BTreeSet<String> = m.stored.iter().map(|t| t.name.clone()).collect();
    assert_eq!(taken, used, "{model}: tensors taken");
    m
}

/// The vision half of a loaded DeepSeek-VL2.
fn vision_of(m: &Vlm<B>) -> &DeepseekVision<B> {
    match &m.vision {
        Some(Vision::DeepseekVl2(v)) => v,
        other => panic!("not a DeepSeek-VL2 vision half: {other:?}"),
    }
}

fn processor() -> Processor {
    let tok = Tokenizer::from_file(&dir().join("tokenizer.json")).unwrap();
    Processor::new(&config("tiny-like"), tok).unwrap()
}

/// The case's conversation as messages, and its images in order (as the authors' loader).
fn conversation(case: &Value) -> (Vec<Message>, Vec<image::RgbImage>) {
    let mut messages = Vec::new();
    let mut images = Vec::new();
    for m in case["conversation"].as_array().unwrap() {
        let content = m["content"].as_str().unwrap();
        messages.push(match m["role"].as_str().unwrap() {
            "<|User|>" => Message::user(content),
            "<|Assistant|>" => Message::assistant(content),
            other => panic!("role {other}"),
        });
        for f in m["images"].as_array().into_iter().flatten() {
            images.push(load_rgb(&dir().join(f.as_str().unwrap())).unwrap());
        }
    }
    (messages, images)
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// `[start, length]` of every run of set entries.
fn runs(mask: &[bool]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, &m) in mask.iter().enumerate() {
        if !m {
            continue;
        }
        match out.last_mut() {
            Some(r) if r[0] + r[1] == i => r[1] += 1,
            _ => out.push(vec![i, 1]),
        }
    }
    out
}

#[test]
fn vision_tower_and_projector_match_on_the_stored_tiles() {
    let lut = pixel_lut();
    let bytes = processor_bytes("small.pixel_bytes");
    let s = 384;
    let tiles = bytes.len() / (3 * s * s);
    let pixels: Vec<f32> = bytes.iter().map(|&b| lut[b as usize]).collect();
    for model in MODELS {
        let vlm = load_vlm(model);
        let m = vision_of(&vlm);
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(pixels.clone(), [tiles, 3, s, s]), &device());
        let features = m.vision.forward(x).unwrap();
        let [_, per, width] = features.dims();
        assert_eq!((per, width), (729, 64));
        assert_close(
            &format!("{model} ViT tile 0"),
            &values(features.clone().slice([0..1, 0..per, 0..width])),
            &exp(&format!("{model}.trace.vision_tile0")),
            HIDDEN_TOL,
        );
        let projected = m.projector.forward(features).unwrap();
        assert_eq!(projected.dims(), [tiles, 196, 32]);
        assert_close(
            &format!("{model} projector"),
            &values(projected),
            &exp(&format!("{model}.small.projector_out")),
            HIDDEN_TOL,
        );
    }
}

#[test]
fn processor_matches_the_authors_on_every_case() {
    let p = processor();
    let all = cases_json();
    let pr = &all["processor"];
    assert_eq!(
        (p.image_token_id, p.bos_id, p.eos_id),
        (
            pr["image_token_id"].as_u64().unwrap() as u32,
            pr["bos_id"].as_u64().unwrap() as u32,
            pr["eos_id"].as_u64().unwrap() as u32
        )
    );
    assert_eq!(
        p.pad_color().to_vec(),
        usizes(&pr["pad_colour_rgb"])
            .iter()
            .map(|&v| v as u8)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        p.tokens_per_side(),
        pr["tokens_per_tile_side"].as_u64().unwrap() as usize
    );
    let lut = pixel_lut();
    for case_name in CASES {
        let case = &all["cases"][case_name];
        let (messages, images) = conversation(case);
        let out = p.process(&messages, &images).unwrap();
        assert_eq!(
            p.sft_format(&messages),
            case["sft_format"].as_str().unwrap(),
            "{case_name}: sft_format"
        );
        assert_eq!(
            out.input_ids,
            ids_of(&case["input_ids"]),
            "{case_name}: input_ids"
        );
        let want_runs: Vec<Vec<usize>> = case["images_seq_mask_runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(usizes)
            .collect();
        assert_eq!(
            runs(&out.images_seq_mask),
            want_runs,
            "{case_name}: images_seq_mask"
        );
        assert_eq!(out.images_seq_mask.len(), out.input_ids.len());
        let crops: Vec<[usize; 2]> = case["images_spatial_crop"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let c = usizes(c);
                [c[0], c[1]]
            })
            .collect();
        assert_eq!(
            out.images_spatial_crop, crops,
            "{case_name}: images_spatial_crop"
        );
        assert_eq!(
            out.num_image_tokens,
            usizes(&case["num_image_tokens"]),
            "{case_name}"
        );
        for (t, info) in out
            .tilings
            .iter()
            .zip(case["image_info"].as_array().unwrap())
        {
            let best = usizes(&info["best_resolution_wh"]);
            assert_eq!(
                t.best_wh,
                (best[0], best[1]),
                "{case_name}: best resolution"
            );
            assert_eq!(
                t.tiles.to_vec(),
                usizes(&info["tiles_wh"]),
                "{case_name}: tiles"
            );
        }
        assert_eq!(
            out.tilings.len(),
            case["image_info"].as_array().unwrap().len()
        );

        // Pixels: the byte hash of every case, the bytes themselves where stored, the floats.
        match case["pixel_fnv1a64"].as_str() {
            Some(h) => {
                let want_shape = usizes(&case["pixel_values"]["shape"]);
                assert_eq!(out.tiles, want_shape[0], "{case_name}: tiles");
                assert_eq!(
                    format!("{:016x}", fnv1a64(&out.pixel_bytes)),
                    h,
                    "{case_name}: pixel bytes"
                );
            }
            None => assert_eq!(out.tiles, 0, "{case_name}: no images, no tiles"),
        }
        if case_name == "small" {
            assert!(out.pixel_bytes == processor_bytes("small.pixel_bytes"));
            let want: Vec<f32> = out.pixel_bytes.iter().map(|&b| lut[b as usize]).collect();
            assert!(
                out.pixel_values() == want,
                "pixel values are pixel_lut[byte]"
            );
        }

        // The image-token layout the model builds from the crops.
        let layout = image_layout(&out.images_spatial_crop, p.tokens_per_side());
        let want: Vec<i32> = if out.tiles > 0 {
            processor_bytes(&format!("{case_name}.image_layout"))
                .chunks(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        } else {
            Vec::new()
        };
        let got: Vec<i32> = layout
            .iter()
            .map(|r| match r {
                ImageRow::Feature(i) => *i as i32,
                ImageRow::Newline => -1,
                ImageRow::Separator => -2,
            })
            .collect();
        assert!(got == want, "{case_name}: image layout");
        assert_eq!(tiles_used(&out.images_spatial_crop), out.tiles);
    }
}

#[test]
fn tokenizer_matches_the_authors() {
    let tok = Tokenizer::from_file(&dir().join("tokenizer.json")).unwrap();
    let all = cases_json();
    let cases = all["tokenizer_cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids, ids_of(&c["ids"]), "{text:?}");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            c["decoded"].as_str().unwrap(),
            "{text:?}"
        );
    }
    for (token, id) in [
        ("<image>", 128815),
        ("<|User|>", 128821),
        ("<|Assistant|>", 128822),
        ("<｜▁pad▁｜>", 2),
    ] {
        assert_eq!(tok.token_to_id(token), Some(id), "{token}");
    }
}

#[test]
fn processor_refuses_mismatched_images_and_unfinished_conversations() {
    let p = processor();
    let img = image::RgbImage::new(20, 10);
    let err = p
        .process(&[Message::user("<image>\nHi"), Message::assistant("")], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("images") && err.contains("message 0"), "{err}");
    let err = p
        .process(
            &[Message::user("Hi"), Message::assistant("")],
            std::slice::from_ref(&img),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 images for 0"), "{err}");
    let err = p
        .process(&[Message::user("<image>Hi")], &[img])
        .unwrap_err()
        .to_string();
    assert!(err.contains("must end with an assistant message"), "{err}");
}

#[test]
fn unsupported_layouts_are_refused_by_name() {
    let base: Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join("tiny-like/config.json")).unwrap(),
    )
    .unwrap();
    let cases: Vec<(Option<&str>, &str, Value, &str)> = vec![
        (None, "tile_tag", json!("1D"), "tile_tag"),
        (None, "global_view_pos", json!("tail"), "global_view_pos"),
        (
            Some("projector_config"),
            "projector_type",
            json!("mlp_gelu"),
            "projector_type",
        ),
        (
            Some("projector_config"),
            "token_pooling",
            json!(true),
            "token_pooling",
        ),
        (
            Some("vision_config"),
            "class_token",
            json!(true),
            "class_token",
        ),
    ];
    for (section, key, value, named) in cases {
        let mut v = base.clone();
        match section {
            Some(s) => v[s][key] = value,
            None => v[key] = value,
        }
        let path = dir().join("tiny-like/config.json");
        let c = DeepseekVl2Config::from_value(&v, &path).unwrap();
        let mut w = Weights::open(&dir().join("tiny-like")).unwrap();
        let err = DeepseekVision::<B>::load(&mut w, &c, &device())
            .unwrap_err()
            .to_string();
        assert!(err.contains(named), "{key}: {err}");
    }
}

/// Every case through the processor and the whole model as [`Vlm`] runs any family: the
/// band-layout pixels back to the processor's tiles, image features (1e-5), final hidden
/// states (1e-5) and logits (1e-4) at the reference positions, then 12 greedy tokens through
/// the cache (prefill, then one step per token) with their log-probs and top-5 logits; for MLA
/// the cache holds the latent only.
fn image_cases_match(model: &str) {
    let dev = device();
    let m = load_vlm(model);
    let p = processor();
    let all = cases_json();
    let vocab = m.text_limits().vocab_size;
    for case_name in CASES {
        let case = &all["cases"][case_name];
        let per = &case["per_model"][model];
        let (messages, images) = conversation(case);
        let out = p.process(&messages, &images).unwrap();
        let ids = out.input_ids.clone();
        let t = ids.len();
        let image_id = m.image_token_id();
        let mask: Vec<bool> = ids.iter().map(|&i| Some(i) == image_id).collect();
        assert_eq!(mask, out.images_seq_mask, "{case_name}: image positions");
        let bands = out.images();
        let features = (!bands.is_empty()).then(|| {
            for (band, &n) in bands.iter().zip(&out.num_image_tokens) {
                assert_eq!(m.image_tokens_for(band).unwrap(), n, "{case_name}");
            }
            let refs: Vec<&PixelValues> = bands.iter().collect();
            let PixelBatch::Tiles { tiles, crops } = m.pixels_tensor(&refs, &dev).unwrap() else {
                panic!("{case_name}: not DeepSeek-VL2 tiles");
            };
            assert_eq!(crops, out.images_spatial_crop, "{case_name}: tilings");
            let want = out.tiles_tensor::<B>(&dev).unwrap();
            assert_eq!(values(tiles.clone()), values(want), "{case_name}: tiles");
            assert_close(
                &format!("{model} {case_name} projector_out"),
                &values(vision_of(&m).encode_tiles(tiles.clone()).unwrap()),
                &exp(&format!("{model}.{case_name}.projector_out")),
                HIDDEN_TOL,
            );
            let f = m.encode_images(PixelBatch::Tiles { tiles, crops }).unwrap();
            assert_eq!(f.counts, out.num_image_tokens, "{case_name}");
            // The prompt's images fill its image positions in order: one run for the row.
            ImageFeatures {
                counts: vec![f.counts.iter().sum()],
                rows: f.rows,
                grids: Vec::new(),
            }
        });
        let x = m.embed(std::slice::from_ref(&ids), features, &dev).unwrap();
        let mut state = m.new_cache(1).with_capacity(t + STEPS);
        let hidden = m.forward(x, &mut state).unwrap();
        let mut at = usizes(&per["other_positions"]);
        at.push(t - 1);
        let index = Tensor::from_data(
            TensorData::new(at.iter().map(|&p| p as i64).collect::<Vec<_>>(), [at.len()]),
            &dev,
        );
        let picked = hidden.select(1, index);
        assert_close(
            &format!("{model} {case_name} hidden_final"),
            &values(picked.clone()),
            &exp(&format!("{model}.{case_name}.hidden_final")),
            HIDDEN_TOL,
        );
        let logits = rows(m.logits(picked).reshape([at.len(), vocab]));
        let other: Vec<f32> = logits[..at.len() - 1]
            .iter()
            .flat_map(|l| l[..1024].to_vec())
            .collect();
        assert_close(
            &format!("{model} {case_name} logits_other"),
            &other,
            &exp(&format!("{model}.{case_name}.logits_other")),
            LOGITS_TOL,
        );
        if case_name == "small" {
            assert_close(
                &format!("{model} {case_name} logits_last"),
                &logits[at.len() - 1],
                &exp(&format!("{model}.{case_name}.logits_last")),
                LOGITS_TOL,
            );
        }

        let want_ids = ids_of(&per["greedy_ids"]);
        let want_lp: Vec<f64> = per["greedy_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let top5: Vec<Vec<f64>> = per["greedy_top5_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect();
        let top5_ids: Vec<Vec<u32>> = per["greedy_top5_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids_of)
            .collect();
        let mut step_logits = logits[at.len() - 1].clone();
        let mut got = Vec::new();
        let (mut lp_diff, mut top_diff) = (0f64, 0f64);
        for step in 0..STEPS {
            let next = argmax(&step_logits);
            got.push(next as u32);
            lp_diff = lp_diff.max((log_prob(&step_logits, next) - want_lp[step]).abs());
            for (&id, &want) in top5_ids[step].iter().zip(&top5[step]) {
                top_diff = top_diff.max((step_logits[id as usize] as f64 - want).abs());
            }
            if step + 1 < STEPS {
                let x = m.embed_text(&[vec![next as u32]], &dev);
                step_logits = values(m.last_logits(m.forward(x, &mut state).unwrap()));
            }
        }
        assert_eq!(got, want_ids, "{model} {case_name}: greedy ids");
        eprintln!("{model} {case_name}: greedy log-probs |Δ| {lp_diff:.2e}, top-5 logits |Δ| {top_diff:.2e}");
        assert!(lp_diff <= LOGITS_TOL as f64 && top_diff <= LOGITS_TOL as f64);
        assert_eq!(state.len(), t + STEPS - 1);
        assert_latent_cache(&m, &mut state);
    }
}

/// An MLA model's cache holds `kv_lora_rank + qk_rope_head_dim` values per position and
/// layer (4 bytes each at f32), not per-head keys and values: MLA's point.
fn assert_latent_cache(m: &Vlm<B>, state: &mut tita_models::DecodeState<B>) {
    let tita_models::ModelConfig::DeepseekVl2(c) = &m.config else {
        panic!("not DeepSeek-VL2");
    };
    let Some(d) = c.language.mla() else {
        return;
    };
    let full_kv = c.language.num_attention_heads * (d.q_head_dim() + d.v_head_dim) * 4;
    for i in 0..c.language.num_hidden_layers {
        let layer = state.cache.layer::<MlaLayer<B>>(i).unwrap();
        assert_eq!(
            layer.bytes_per_position(),
            d.latent_width() * 4,
            "layer {i}"
        );
        assert!(layer.bytes_per_position() < full_kv);
    }
}

/// Two image prompts of different lengths in one left-padded batch through [`Vlm`]: each
/// row's last logits after the prefill and after one step equal the row run alone.
#[test]
fn left_padded_image_rows_equal_each_row_alone() {
    let dev = device();
    let m = load_vlm("small-like");
    let p = processor();
    let all = cases_json();
    let vocab = m.text_limits().vocab_size;
    let prepared: Vec<_> = ["small", "wide"]
        .iter()
        .map(|name| {
            let (messages, images) = conversation(&all["cases"][name]);
            p.process(&messages, &images).unwrap()
        })
        .collect();
    let features = |i: usize| {
        let bands = prepared[i].images();
        let px = m.pixels_tensor(&[&bands[0]], &dev).unwrap();
        m.encode_images(px).unwrap()
    };
    let len = prepared.iter().map(|o| o.input_ids.len()).max().unwrap();
    let pad: Vec<usize> = prepared.iter().map(|o| len - o.input_ids.len()).collect();
    let pad_id = m.text_limits().pad_token_id.unwrap_or(0);
    let rows_ids: Vec<Vec<u32>> = prepared
        .iter()
        .zip(&pad)
        .map(|(o, &n)| {
            std::iter::repeat_n(pad_id, n)
                .chain(o.input_ids.clone())
                .collect()
        })
        .collect();
    let both = {
        let (a, b) = (features(0), features(1));
        ImageFeatures {
            rows: Tensor::cat(vec![a.rows, b.rows], 0),
            counts: vec![a.counts[0], b.counts[0]],
            grids: Vec::new(),
        }
    };
    let mut batch = m.new_padded_cache(pad.clone()).with_capacity(len + 1);
    let x = m.embed(&rows_ids, Some(both), &dev).unwrap();
    let got = rows(m.last_logits(m.forward(x, &mut batch).unwrap()));
    let step = rows(
        m.last_logits(
            m.forward(m.embed_text(&[vec![7], vec![7]], &dev), &mut batch)
                .unwrap(),
        ),
    );
    for (r, o) in prepared.iter().enumerate() {
        let mut alone = m.new_cache(1);
        let x = m
            .embed(std::slice::from_ref(&o.input_ids), Some(features(r)), &dev)
            .unwrap();
        let want = rows(m.last_logits(m.forward(x, &mut alone).unwrap()));
        assert_eq!(want[0].len(), vocab);
        assert_close(&format!("row {r} prefill"), &got[r], &want[0], LOGITS_TOL);
        let x = m.embed_text(&[vec![7]], &dev);
        let want = rows(m.last_logits(m.forward(x, &mut alone).unwrap()));
        assert_close(&format!("row {r} step"), &step[r], &want[0], LOGITS_TOL);
    }
    assert_latent_cache(&m, &mut batch);
}

#[test]
fn tiny_like_image_cases_match_the_authors() {
    image_cases_match("tiny-like");
}

#[test]
fn small_like_image_cases_match_the_authors() {
    image_cases_match("small-like");
}

#[test]
fn vl2_like_image_cases_match_the_authors() {
    image_cases_match("vl2-like");
}
