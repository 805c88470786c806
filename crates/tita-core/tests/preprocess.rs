//! Image preprocessing against CLIPImageProcessor (PIL flavour) outputs.

use std::path::{Path, PathBuf};

use tita_core::image::ImageProcessor;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn expected(file: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, v.shape().to_vec(), vals)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn processor(size: usize) -> ImageProcessor {
    let cfg = serde_json::json!({
        "size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}, "resample": 3
    });
    ImageProcessor::from_value(&cfg, Path::new("preprocessor_config.json")).unwrap()
}

#[test]
fn matches_clip_image_processor_on_every_entry() {
    let entries = expected(&fixtures().join("preprocess/expected.safetensors"));
    assert_eq!(entries.len(), 4);
    for (name, shape, want) in entries {
        // Names are `{image}.{crop|pad}{size}`.
        let (image, mode) = name.rsplit_once('.').unwrap();
        let pad = mode.starts_with("pad");
        let size: usize = mode
            .trim_start_matches("pad")
            .trim_start_matches("crop")
            .parse()
            .unwrap();
        let got = processor(size)
            .preprocess_file(&fixtures().join("images").join(image), pad)
            .unwrap();
        assert_eq!(vec![3, got.height, got.width], shape, "{name}");
        let diffs: Vec<f32> = got
            .data
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let max = diffs.iter().copied().fold(0.0, f32::max);
        eprintln!("{name}: mean |Δ| {mean:.2e}, max |Δ| {max:.2e}");
        assert!(mean <= 0.01, "{name}: mean |Δ| = {mean}");
        // Decoding gives Pillow's pixels (lossless PNG; libjpeg-turbo for JPEG) and the resize
        // replays Pillow's fixed-point arithmetic, so these agree exactly.
        assert!(max <= 1e-5, "{name}: max |Δ| = {max}");
    }
}

#[test]
fn no_resize_is_exact_within_1e5() {
    // square56.png at 56 px: no resize, so only rescale + normalise, which must agree to 1e-5.
    let entries = expected(&fixtures().join("expected.safetensors"));
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let proc = ImageProcessor::from_file(&fixtures().join("llava-target")).unwrap();
    let mut checked = 0;
    for (i, case) in cases["cases"].as_array().unwrap().iter().enumerate() {
        let image = case["image"].as_str().unwrap();
        let (_, _, want) = entries
            .iter()
            .find(|e| e.0 == format!("case{i}.pixel_values"))
            .unwrap();
        let got = proc
            .preprocess_file(&fixtures().join(image), false)
            .unwrap();
        let max = got
            .data
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let img = tita_core::image::load_rgb(&fixtures().join(image)).unwrap();
        if img.width() == 56 && img.height() == 56 {
            assert!(max <= 1e-5, "{image}: max |Δ| = {max}");
            checked += 1;
        } else {
            assert!(
                got.data
                    .iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).abs())
                    .sum::<f32>()
                    / (want.len() as f32)
                    <= 0.01
            );
        }
    }
    assert!(checked > 0);
}

#[test]
fn non_image_file_is_a_clear_error() {
    let proc = ImageProcessor::default();
    let err = proc
        .preprocess_file(&fixtures().join("cases.json"), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cases.json") && err.contains("not a readable image"),
        "{err}"
    );
    let err = proc
        .preprocess_file(&fixtures().join("nope.png"), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.png"), "{err}");
}

#[test]
fn preprocessor_config_errors_name_the_field() {
    let bad = serde_json::json!({"resample": 1});
    let err = ImageProcessor::from_value(&bad, Path::new("p.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("resample"), "{err}");
    let bad = serde_json::json!({"image_std": [0.2, 0.0, 0.1]});
    let err = ImageProcessor::from_value(&bad, Path::new("p.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("image_std"), "{err}");
}
