//! Helpers shared by this crate's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use tita_decode::{GenerationConfig, Pipeline, Prompt, Request};

#[cfg(feature = "cuda")]
pub type B = burn::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type B = burn::backend::Wgpu;
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub type B = burn::backend::Flex;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn load(name: &str) -> Pipeline<B> {
    Pipeline::load(&fixtures().join(name), &Default::default()).unwrap()
}

pub fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

/// The (image, prompt) cases of `cases.json`.
pub fn cases() -> Vec<serde_json::Value> {
    json("cases.json")["cases"].as_array().unwrap().clone()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Greedy decoding of exactly `n` tokens: the fixtures' runs ignore EOS.
pub fn greedy(n: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: n,
        eos_token_ids: Some(vec![]),
        ..Default::default()
    }
}

/// A case as a request for the TITA sampler.
pub fn request(case: &serde_json::Value) -> Request {
    Request::new(
        case["prompt"].as_str().unwrap(),
        Some(fixtures().join(case["image"].as_str().unwrap())),
        false,
    )
}

/// A case's model inputs for `p`.
pub fn prompt(p: &Pipeline<B>, case: &serde_json::Value) -> Prompt {
    let r = request(case);
    p.request_prompt(&r).unwrap()
}
