//! Qwen2.5-VL through the pipeline: the chat template and image-token expansion give
//! transformers' ids, greedy decoding its tokens, and TITA with a second Qwen (the reward of
//! `fixtures/qwen2_5_vl/gen_qwen_tita.py`) its fused tokens; mixed families are refused.

mod common;

use common::*;
use tita_decode::{Fusion, Generator, Request, Tita, TitaConfig};

fn qwen(name: &str) -> tita_decode::Pipeline<B> {
    load(&format!("qwen2_5_vl/{name}"))
}

fn case(name: &str) -> serde_json::Value {
    json("qwen2_5_vl/cases.json")["cases"][name].clone()
}

fn request(name: &str) -> Request {
    let c = case(name);
    Request::new(
        c["user_text"].as_str().unwrap(),
        c["image"]
            .as_str()
            .map(|f| fixtures().join("qwen2_5_vl").join(f)),
        false,
    )
}

#[test]
fn prompts_and_greedy_tokens_match_transformers() {
    let p = qwen("model");
    for name in ["image_main", "image_resize", "text_only"] {
        let c = case(name);
        let mut r = request(name);
        if c["image"].is_null() {
            // A text-only prompt goes through the template only when asked to.
            r.messages = Some(serde_json::from_value(c["messages"].clone()).unwrap());
        }
        let prompt = p.request_prompt(&r).unwrap();
        assert_eq!(prompt.ids, ids(&c["input_ids"]), "{name} ids");
        if let Some(g) = c.get("generation") {
            let out = Generator::new(&p, greedy(12)).generate(&prompt).unwrap();
            assert_eq!(out.token_ids, ids(&g["tokens"]), "{name} greedy");
        }
    }
}

#[test]
fn tita_interpolation_matches_transformers() {
    let (target, reward) = (qwen("model"), qwen("reward"));
    let expected = json("qwen2_5_vl/tita.json");
    for run in expected["tita"].as_array().unwrap() {
        let lambda = run["lambda"].as_f64().unwrap() as f32;
        let name = run["case"].as_str().unwrap();
        let tita = Tita::new(
            &target,
            Some(&reward),
            None,
            TitaConfig {
                fusion: Fusion::Interpolate { lambda },
                ..Default::default()
            },
            greedy(12),
        )
        .unwrap();
        let out = tita.generate(&request(name)).unwrap().generation;
        assert_eq!(out.token_ids, ids(&run["tokens"]), "{name} λ = {lambda}");
    }
}

#[test]
fn a_llava_guide_for_a_qwen_target_is_refused() {
    let (target, guide) = (qwen("model"), load("llava-reward"));
    let err = Tita::new(
        &target,
        Some(&guide),
        None,
        TitaConfig::default(),
        greedy(4),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("llava") && err.contains("qwen2_5_vl"), "{err}");
}
