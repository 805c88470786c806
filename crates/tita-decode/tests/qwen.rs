//! Qwen2.5-VL through the pipeline: the chat template and image-token expansion give
//! transformers' ids, greedy decoding its tokens, and TITA with a second Qwen (the reward of
//! `fixtures/qwen2_5_vl/gen_qwen_tita.py`) its fused tokens; mixed families are refused.

mod common;

use common::*;
use tita_decode::{Fusion, Generator, Request, Session, Tita, TitaConfig};

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
                fusion: Fusion::interpolate(lambda),
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

#[test]
fn batched_prompts_of_different_images_equal_one_by_one() {
    // Two images of different grids (12 and 10 image tokens) and a text-only prompt: left
    // padding shifts no M-RoPE position, and each row's rope delta carries into decoding.
    let p = qwen("model");
    let gen = Generator::new(&p, greedy(6));
    let with_image: Vec<_> = ["image_main", "image_resize"]
        .iter()
        .map(|n| p.request_prompt(&request(n)).unwrap())
        .collect();
    assert_ne!(with_image[0].ids.len(), with_image[1].ids.len());
    let batched = gen
        .generate_batch(&with_image.iter().collect::<Vec<_>>())
        .unwrap();
    for (prompt, b) in with_image.iter().zip(&batched) {
        let alone = gen.generate(prompt).unwrap();
        assert_eq!(b.token_ids, alone.token_ids);
    }
    // The logits themselves, at the prefill and after a decode step.
    let (mut batch, first) =
        Session::prefill(&p.model, &with_image.iter().collect::<Vec<_>>(), &p.device).unwrap();
    let next = batch
        .step(&[batched[0].token_ids[0], batched[1].token_ids[0]])
        .unwrap();
    for (r, (prompt, out)) in with_image.iter().zip(&batched).enumerate() {
        let (mut one, alone) = Session::prefill(&p.model, &[prompt], &p.device).unwrap();
        let alone_next = one.step(&[out.token_ids[0]]).unwrap();
        for (a, b) in [(&first[r], &alone[0]), (&next[r], &alone_next[0])] {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(d <= 1e-4, "row {r}: max |Δ| {d}");
        }
    }
}
