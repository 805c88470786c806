//! JPEG decoding against Pillow 13 (libjpeg-turbo) on files encoded with real-world settings:
//! decoded pixels identical, CLIPImageProcessor outputs within 1e-5.

use std::path::{Path, PathBuf};

use tita_core::image::{load_rgb, ImageProcessor};

fn jpeg_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/jpeg")
}

fn cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(jpeg_fixtures().join("cases.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

/// Pillow's pixels, stored as a lossless PNG (read by the `image` crate).
fn pillow_pixels(path: &Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

#[test]
fn decoded_pixels_equal_pillows_exactly() {
    let cases = cases();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let key = case["key"].as_str().unwrap();
        let got = load_rgb(&jpeg_fixtures().join(case["image"].as_str().unwrap())).unwrap();
        let want = pillow_pixels(&jpeg_fixtures().join(case["decoded"].as_str().unwrap()));
        let size = case["size"].as_array().unwrap();
        // Stored size, not the EXIF-rotated one: CLIPImageProcessor does not rotate.
        assert_eq!(
            (got.width() as u64, got.height() as u64),
            (size[0].as_u64().unwrap(), size[1].as_u64().unwrap()),
            "{key}"
        );
        assert_eq!(got.dimensions(), want.dimensions(), "{key}");
        let differing = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{key}: {differing} values differ from Pillow's"
        );
    }
}

#[test]
fn clip_image_processor_outputs_within_1e5() {
    let bytes = std::fs::read(jpeg_fixtures().join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names, ["coco_q90_420.crop336", "q75_444.pad336"]);
    let cfg = serde_json::json!({
        "size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}, "resample": 3
    });
    let processor =
        ImageProcessor::from_value(&cfg, Path::new("preprocessor_config.json")).unwrap();
    for name in names {
        let (key, mode) = name.split_once('.').unwrap();
        let view = st.tensor(&name).unwrap();
        let want: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let path = jpeg_fixtures().join(format!("images/{key}.jpg"));
        let got = processor
            .preprocess_file(&path, mode.starts_with("pad"))
            .unwrap();
        assert_eq!(vec![3, got.height, got.width], view.shape(), "{name}");
        let max = got
            .data
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max <= 1e-5, "{name}: max |Δ| = {max}");
    }
}

#[test]
fn truncated_and_corrupt_jpegs_are_errors_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("tita-jpeg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let full = std::fs::read(jpeg_fixtures().join("images/q75_444.jpg")).unwrap();
    let truncated = dir.join("truncated.jpg");
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let err = load_rgb(&truncated).unwrap_err().to_string();
    assert!(
        err.contains("truncated.jpg") && err.contains("truncated"),
        "{err}"
    );
    let header_only = dir.join("header.jpg");
    std::fs::write(&header_only, &full[..20]).unwrap();
    let err = load_rgb(&header_only).unwrap_err().to_string();
    assert!(err.contains("header.jpg: image:"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cmyk_jpeg_converts_as_pillow() {
    // Made by fixtures/jpeg_extra/gen_cmyk.py (Pillow 13 writes and reads CMYK with Adobe's
    // inverted convention; `convert("RGB")` applies cmyk2rgb).
    let dir = jpeg_fixtures().join("../jpeg_extra");
    let got = load_rgb(&dir.join("cmyk.jpg")).unwrap();
    let want = pillow_pixels(&dir.join("cmyk.png"));
    assert_eq!(got.dimensions(), want.dimensions());
    assert!(
        got.as_raw() == want.as_raw(),
        "CMYK pixels differ from Pillow's"
    );
}
