//! Helpers shared by this crate's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use tita_core::image::{ImageProcessor, PixelValues};
use tita_core::tokenizer::llava_prompt;
use tita_core::Tokenizer;
use tita_models::{DecodeState, TensorSource, Vlm, Weights};

#[cfg(feature = "test-cuda")]
pub type B = burn::backend::Cuda;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
pub type B = burn::backend::Wgpu;
#[cfg(not(any(feature = "test-wgpu", feature = "test-cuda")))]
pub type B = burn::backend::Flex;

pub fn device() -> burn::tensor::Device<B> {
    Default::default()
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn cases() -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    v["cases"].as_array().unwrap().clone()
}

pub fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Expected tensors of a fixture file, read with the loader under test's sibling API.
pub fn expected(file: &Path, name: &str) -> Vec<f32> {
    let mut w = Weights::open(file).unwrap();
    let shape = w
        .shape(name)
        .unwrap_or_else(|| panic!("{name} not in {}", file.display()))
        .to_vec();
    w.take_vec(name, &shape).unwrap()
}

/// Token ids (template + `<image>` expansion) and pixels of a case, for the model in `dir`.
pub fn prepare(dir: &Path, model: &Vlm<B>, case: &serde_json::Value) -> (Vec<u32>, PixelValues) {
    let tok = Tokenizer::from_file(dir).unwrap();
    let c = model.llava_config().unwrap();
    let ids = tok
        .encode_with_image(
            &llava_prompt(case["prompt"].as_str().unwrap()),
            c.image_token_id,
            c.image_tokens(),
        )
        .unwrap();
    let pixels = ImageProcessor::from_file(dir)
        .unwrap()
        .preprocess_file(&fixtures().join(case["image"].as_str().unwrap()), false)
        .unwrap();
    (ids, pixels)
}

/// Logits of every position `[seq][vocab]` from one prefill.
pub fn all_logits(
    model: &Vlm<B>,
    ids: &[u32],
    pixels: Option<&PixelValues>,
    cache: &mut DecodeState<B>,
) -> Vec<Vec<f32>> {
    let dev = device();
    let images = pixels.map(|p| {
        model
            .encode_images(model.pixels_tensor(&[p], &dev).unwrap())
            .unwrap()
    });
    let embeds = model.embed(&[ids.to_vec()], images, &dev).unwrap();
    let logits = model.logits(model.forward(embeds, cache).unwrap());
    rows(logits.reshape([ids.len() as i32, -1]))
}

/// A tensor's values, row-major, as f32.
pub fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

pub fn rows(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [_, v] = t.dims();
    values(t).chunks(v).map(<[f32]>::to_vec).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn tensor1(v: Vec<f32>) -> Tensor<B, 1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), &device())
}
