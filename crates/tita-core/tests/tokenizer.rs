//! The LLaMA tokenizer against llama.cpp's 46 test vectors and transformers' `cases.json`.

use std::path::PathBuf;

use tita_core::tokenizer::llava_prompt;
use tita_core::Tokenizer;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&fixtures().join("tokenizer/tokenizer.json")).unwrap()
}

#[test]
fn llama_cpp_vectors() {
    let tok = tokenizer();
    let inp = std::fs::read_to_string(fixtures().join("tokenizer/llama-spm-cases.inp")).unwrap();
    let out = std::fs::read_to_string(fixtures().join("tokenizer/llama-spm-cases.out")).unwrap();
    let inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    // The input file ends with a separator, which leaves one empty trailing piece.
    let inputs = &inputs[..expected.len()];
    assert_eq!(expected.len(), 46);
    for (text, want) in inputs.iter().zip(&expected) {
        let got = tok.encode(text, false).unwrap();
        assert_eq!(&got, want, "input {text:?}");
    }
}

#[test]
fn transformers_cases_encode_and_decode() {
    let tok = tokenizer();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tokenizer/cases.json")).unwrap(),
    )
    .unwrap();
    let cases = cases.as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, true).unwrap(), ids, "encode {text:?}");
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decode {text:?}"
        );
    }
}

#[test]
fn image_placeholder_expands_to_feature_count() {
    let tok = tokenizer();
    let ids = tok
        .encode_with_image(&llava_prompt("Is there a dog in the image?"), 32000, 16)
        .unwrap();
    let plain = tok
        .encode(&llava_prompt("Is there a dog in the image?"), true)
        .unwrap();
    assert_eq!(ids.len(), plain.len() + 15);
    assert_eq!(ids.iter().filter(|&&t| t == 32000).count(), 16);
    // No placeholder, or two of them, for one image: refused.
    assert!(tok
        .encode_with_image("USER: hi ASSISTANT:", 32000, 16)
        .is_err());
    let err = tok
        .encode_with_image("<image> <image>", 32000, 16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("found 2"), "{err}");
}

#[test]
fn missing_tokenizer_names_the_file() {
    let err = Tokenizer::from_file(&fixtures().join("images"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("not found"),
        "{err}"
    );
}

// ---- Qwen2.5 (fixtures/qwen2_5_vl): byte-level BPE with the Qwen2 pre-tokenizer ----

fn qwen_dir() -> PathBuf {
    fixtures().join("qwen2_5_vl")
}

fn json(path: PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn qwen_llama_cpp_vectors() {
    let tok = Tokenizer::from_file(&qwen_dir().join("model")).unwrap();
    let v = json(qwen_dir().join("tokenizer/test_vectors.json"));
    let cases = v["ggml-vocab-qwen2.gguf"]["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 46);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["llamacpp_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, false).unwrap(), want, "input {text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), text, "decode {text:?}");
    }
}

#[test]
fn qwen_chat_template_text_and_ids() {
    use tita_core::template::{ChatTemplate, Message};
    let dir = qwen_dir().join("model");
    let tok = Tokenizer::from_file(&dir).unwrap();
    let template = ChatTemplate::for_model(&dir).unwrap();
    let cases = json(qwen_dir().join("cases.json"));
    for (name, case) in cases["cases"].as_object().unwrap() {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let text = template
            .render(&messages, true, &serde_json::Map::new())
            .unwrap();
        assert_eq!(text, case["prompt_text"].as_str().unwrap(), "{name} text");
        let ids = tok
            .encode(&text, template.add_special_tokens(&text))
            .unwrap();
        let image_pad = tok.token_to_id("<|image_pad|>").unwrap();
        let ids = match case["num_image_tokens"].as_u64() {
            Some(n) => tok.expand_image_ids(ids, image_pad, n as usize).unwrap(),
            None => ids,
        };
        let want: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want, "{name} ids");
    }
}
