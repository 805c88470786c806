//! Generation through the KV-cached path against transformers' greedy outputs, batching,
//! stop conditions and sampling.

mod common;

use common::*;
use tita_decode::{FinishReason, GenerationConfig, Generator, Pipeline, SamplingConfig};

#[test]
fn greedy_tokens_match_transformers_for_every_case() {
    let p = load("llava-target");
    let gen = Generator::new(&p, greedy(12));
    for case in json("cases.json")["cases"].as_array().unwrap() {
        let prompt = prompt(&p, case);
        assert_eq!(prompt.ids, ids(&case["input_ids"]));
        let out = gen.generate(&prompt).unwrap();
        assert_eq!(
            out.token_ids,
            ids(&case["greedy"]["token_ids"]),
            "{}",
            case["prompt"]
        );
        assert_eq!(out.text, case["greedy"]["text"].as_str().unwrap());
        assert_eq!(out.finish_reason, FinishReason::MaxNewTokens);
        assert_eq!(
            (out.prompt_tokens, out.generated_tokens),
            (prompt.ids.len(), 12)
        );
    }
}

#[test]
fn greedy_log_probs_through_the_kv_cache_match_transformers() {
    let p = load("llava-target");
    for case in json("cases.json")["cases"].as_array().unwrap() {
        let prompt = prompt(&p, case);
        let tokens = ids(&case["greedy"]["token_ids"]);
        let want: Vec<f32> = case["greedy"]["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(want.len(), tokens.len());
        let (mut session, mut logits) =
            tita_decode::Session::prefill(&p.model, &[&prompt], &p.device).unwrap();
        for (i, (&t, w)) in tokens.iter().zip(&want).enumerate() {
            let lp = tita_core::sampling::log_softmax(&logits[0])[t as usize];
            assert!(
                (lp - w).abs() <= 1e-4,
                "{} step {i}: {lp} vs {w}",
                case["prompt"]
            );
            logits = session.step(&[t]).unwrap();
        }
    }
}

#[test]
fn batched_generation_equals_one_by_one() {
    let p = load("llava-target");
    let gen = Generator::new(&p, greedy(12));
    let cases = json("cases.json");
    let prompts: Vec<_> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| prompt(&p, c))
        .collect();
    // The cases differ in length (35 and 36 tokens), so the batch is ragged.
    assert!(prompts.iter().any(|q| q.ids.len() != prompts[0].ids.len()));
    let refs: Vec<_> = prompts.iter().collect();
    let batched = gen.generate_batch(&refs).unwrap();
    for (q, b) in prompts.iter().zip(&batched) {
        assert_eq!(gen.generate(q).unwrap().token_ids, b.token_ids);
    }
}

#[test]
fn text_only_greedy_matches_transformers() {
    let p = load("llama-text");
    let gen = Generator::new(&p, greedy(12));
    for case in json("llama-text.json")["cases"].as_array().unwrap() {
        let prompt = p
            .prompt(case["text"].as_str().unwrap(), None, false)
            .unwrap();
        assert_eq!(prompt.ids, ids(&case["input_ids"]));
        assert_eq!(
            gen.generate(&prompt).unwrap().token_ids,
            ids(&case["greedy_token_ids"])
        );
    }
    // Ragged text batch equals one-by-one too.
    let a = p.prompt("The quick brown fox", None, false).unwrap();
    let b = p
        .prompt("Once upon a time, in a land far away,", None, false)
        .unwrap();
    let both = gen.generate_batch(&[&a, &b]).unwrap();
    assert_eq!(both[0].token_ids, gen.generate(&a).unwrap().token_ids);
    assert_eq!(both[1].token_ids, gen.generate(&b).unwrap().token_ids);
}

#[test]
fn eos_stop_strings_and_streaming() {
    let p = load("llama-text");
    let prompt = p.prompt("The quick brown fox", None, false).unwrap();
    let full = Generator::new(&p, greedy(12)).generate(&prompt).unwrap();
    // Treat the fifth greedy token (its first occurrence) as EOS: generation ends there, EOS included.
    let eos = full.token_ids[4];
    assert!(!full.token_ids[..4].contains(&eos));
    let cfg = GenerationConfig {
        eos_token_ids: Some(vec![eos]),
        ..greedy(12)
    };
    let out = Generator::new(&p, cfg).generate(&prompt).unwrap();
    assert_eq!(out.token_ids, full.token_ids[..5]);
    assert_eq!(out.finish_reason, FinishReason::Eos);
    // Stop string: the text is cut before it.
    let stop = "titolo";
    assert!(full.text.contains(stop));
    let cfg = GenerationConfig {
        stop_strings: vec![stop.into()],
        ..greedy(12)
    };
    let out = Generator::new(&p, cfg).generate(&prompt).unwrap();
    assert_eq!(out.finish_reason, FinishReason::StopString);
    assert_eq!(out.text, full.text[..full.text.find(stop).unwrap()]);
    // Streaming deltas add up to the text.
    let mut streamed = String::new();
    let mut count = 0;
    let out = Generator::new(&p, greedy(12))
        .generate_streaming(&prompt, &mut |ev| {
            streamed.push_str(ev.text_delta);
            count += 1;
        })
        .unwrap();
    assert_eq!((streamed, count), (out.text, 12));
}

#[test]
fn seeded_sampling_is_reproducible() {
    let p = load("llava-target");
    let case = &json("cases.json")["cases"][1];
    let prompt = prompt(&p, case);
    let cfg = |seed| GenerationConfig {
        sampling: SamplingConfig {
            temperature: 1.0,
            top_k: Some(50),
            top_p: Some(0.95),
            seed,
        },
        ..greedy(10)
    };
    let a = Generator::new(&p, cfg(3)).generate(&prompt).unwrap();
    let b = Generator::new(&p, cfg(3)).generate(&prompt).unwrap();
    let c = Generator::new(&p, cfg(4)).generate(&prompt).unwrap();
    assert_eq!(a.token_ids, b.token_ids);
    assert_ne!(a.token_ids, c.token_ids);
    assert_ne!(a.token_ids, ids(&case["greedy"]["token_ids"])[..10]);
}

#[test]
fn bad_requests_are_clear_errors() {
    let p = load("llama-text");
    // The fixture's context is 128 positions.
    let long = "word ".repeat(200);
    let prompt = p.prompt(&long, None, false).unwrap();
    let err = Generator::new(&p, greedy(4))
        .generate(&prompt)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_position_embeddings") && err.contains("128"),
        "{err}"
    );
    // An empty stop string would end every generation before its first word.
    let short = p.prompt("hi", None, false).unwrap();
    let err = Generator::new(
        &p,
        GenerationConfig {
            stop_strings: vec![String::new()],
            ..greedy(4)
        },
    )
    .generate(&short)
    .unwrap_err()
    .to_string();
    assert!(err.contains("stop") && err.contains("empty"), "{err}");
    // Generation that runs into the context stops with `Context`.
    let near = p.prompt(&"word ".repeat(120), None, false).unwrap();
    let out = Generator::new(&p, greedy(50)).generate(&near).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Context);
    assert_eq!(near.ids.len() + out.generated_tokens, 129);

    let err = p
        .prompt("hi", Some(&fixtures().join("images/square56.png")), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("text-only"), "{err}");
    let v = load("llava-target");
    let err = v
        .prompt("hi", Some(&fixtures().join("cases.json")), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cases.json") && err.contains("image"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        std::fs::copy(fixtures().join("llava-target").join(f), dir.path().join(f)).unwrap();
    }
    let err = Pipeline::<B>::load(dir.path(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn conversations_go_through_the_template() {
    use tita_core::template::{ChatTemplate, Message};
    let mut p = load("llava-target");
    let path = fixtures().join("images/square56.png");
    let image = tita_decode::ImageInput::from(path.clone());
    let case = &json("cases.json")["cases"][0];
    // The default (llava_1_5) is the fixtures' prompt, however the request is put.
    let question = case["prompt"].as_str().unwrap();
    let plain = p.prompt(question, Some(&path), false).unwrap();
    let chat = p
        .chat_prompt(&[Message::user(question, true)], Some(&image), false)
        .unwrap();
    assert_eq!(plain.ids, ids(&case["input_ids"]));
    assert_eq!(chat.ids, plain.ids);
    // vicuna_v1 with a system message and an earlier turn: the rendered text, tokenised with
    // BOS, the image expanded to its 16 features.
    p.set_template(ChatTemplate::builtin("vicuna_v1").unwrap())
        .unwrap();
    let messages = vec![
        Message::system("Answer briefly."),
        Message::user("What is this?", true),
        Message {
            role: "assistant".into(),
            content: vec![tita_core::template::Part::Text {
                text: "A square.".into(),
            }],
        },
        Message::user("What colour is it?", false),
    ];
    let text = p.render(&messages).unwrap();
    assert_eq!(
        text,
        "Answer briefly. USER: <image>\nWhat is this? ASSISTANT: A square.</s>USER: What colour is it? ASSISTANT:"
    );
    let ids = p.chat_prompt(&messages, Some(&image), false).unwrap().ids;
    let want = p.tokenizer.encode_with_image(&text, 32000, 16).unwrap();
    assert_eq!(ids, want);
    assert_eq!(ids[0], 1, "BOS");
    // One image needs exactly one image part.
    let err = p
        .chat_prompt(&messages[2..], Some(&image), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("0 image part(s) and an image was given"),
        "{err}"
    );
    // A system message applies to text-only prompts too.
    p.system = Some("Be brief.".into());
    let text_only = p.prompt("Hi", None, false).unwrap();
    let want = p
        .tokenizer
        .encode("Be brief. USER: Hi ASSISTANT:", true)
        .unwrap();
    assert_eq!(text_only.ids, want);
}

#[test]
fn images_from_memory_equal_images_from_files() {
    use tita_decode::{ImageInput, Request};
    let p = load("llava-target");
    let path = fixtures().join("jpeg/images/coco_q90_420.jpg");
    let from_file = p
        .request_prompt(&Request::new("What is it?", Some(path.clone()), true))
        .unwrap();
    let bytes: std::sync::Arc<[u8]> = std::fs::read(&path).unwrap().into();
    let decoded = tita_core::image::load_rgb(&path).unwrap();
    for image in [
        ImageInput::Encoded(bytes),
        ImageInput::from_dynamic(&image::DynamicImage::ImageRgb8(decoded)),
    ] {
        let prompt = p
            .request_prompt(&Request::new("What is it?", Some(image), true))
            .unwrap();
        assert_eq!(prompt.ids, from_file.ids);
        assert_eq!(prompt.pixels, from_file.pixels);
    }
    let err = p
        .request_prompt(&Request::new(
            "What is it?",
            Some(ImageInput::Encoded(vec![1u8, 2, 3].into())),
            false,
        ))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("<image bytes>: image: not a readable image"),
        "{err}"
    );
}
