//! The TITA sampler against transformers' fused greedy outputs, batching, and its errors.

mod common;

use common::*;
use tita_decode::guidance::Vcd;
use tita_decode::{
    Fusion, GenerationConfig, Generator, Pipeline, Request, SamplingConfig, Tita, TitaConfig,
};

fn config(fusion: Fusion) -> TitaConfig {
    TitaConfig {
        fusion,
        ..Default::default()
    }
}

#[test]
fn fused_greedy_matches_transformers_single_and_batched() {
    let (target, reward, reference) = (
        load("llava-target"),
        load("llava-reward"),
        load("llava-reward-ref"),
    );
    let cases = cases();
    let requests: Vec<Request> = cases.iter().map(request).collect();
    let mut modes: Vec<(Fusion, &str, Option<&str>)> = vec![
        (Fusion::interpolate(0.3), "tita_interpolate", Some("0.3")),
        (Fusion::interpolate(0.6), "tita_interpolate", Some("0.6")),
    ];
    modes.push((Fusion::reference(1.0), "tita_reference", None));
    for (fusion, key, sub) in modes {
        let tita = Tita::new(
            &target,
            Some(&reward),
            Some(&reference),
            config(fusion.clone()),
            greedy(12),
        )
        .unwrap();
        let entries: Vec<&serde_json::Value> = cases
            .iter()
            .map(|c| {
                let e = &c[key];
                sub.map_or(e, |s| &e[s])
            })
            .collect();
        let expected: Vec<Vec<u32>> = entries.iter().map(|e| ids(&e["token_ids"])).collect();
        for ((req, want), e) in requests.iter().zip(&expected).zip(&entries) {
            let out = tita.generate(req).unwrap().generation;
            assert_eq!(&out.token_ids, want, "{fusion:?} single: {}", req.prompt);
            assert_eq!(out.text, e["text"].as_str().unwrap(), "{fusion:?} text");
        }
        let batched: Vec<Vec<u32>> = tita
            .generate_batch(&requests)
            .unwrap()
            .into_iter()
            .map(|g| g.generation.token_ids)
            .collect();
        assert_eq!(batched, expected, "{fusion:?} batched");
    }
}

#[test]
fn zero_weight_reproduces_plain_decoding() {
    let (target, reward, reference) = (
        load("llava-target"),
        load("llava-reward"),
        load("llava-reward-ref"),
    );
    for case in cases() {
        let plain = Generator::new(&target, greedy(12))
            .generate(&prompt(&target, &case))
            .unwrap();
        assert_eq!(plain.token_ids, ids(&case["greedy"]["token_ids"]));
        for fusion in [
            Fusion::interpolate(0.0),
            Fusion::reference(0.0),
            Vcd {
                beta: 1e-9,
                ..Vcd::new(0.0)
            }
            .into(),
        ] {
            let tita = Tita::new(
                &target,
                Some(&reward),
                Some(&reference),
                config(fusion.clone()),
                greedy(12),
            )
            .unwrap();
            assert_eq!(
                tita.generate(&request(&case)).unwrap().generation.token_ids,
                plain.token_ids,
                "{fusion:?}"
            );
        }
    }
}

#[test]
fn sampling_over_fused_scores_is_seeded_and_batch_equals_single() {
    let (target, reward) = (load("llava-target"), load("llava-reward"));
    let gen = GenerationConfig {
        sampling: SamplingConfig {
            temperature: 0.9,
            top_k: Some(40),
            top_p: Some(0.9),
            seed: 11,
        },
        ..greedy(8)
    };
    let tita = Tita::new(
        &target,
        Some(&reward),
        None,
        config(Fusion::interpolate(0.5)),
        gen,
    )
    .unwrap();
    let requests: Vec<Request> = cases().iter().map(request).collect();
    let a = tita.generate(&requests[0]).unwrap().generation.token_ids;
    assert_eq!(a, tita.generate(&requests[0]).unwrap().generation.token_ids);
    let batch = tita.generate_batch(&requests).unwrap();
    for (req, b) in requests.iter().zip(&batch) {
        assert_eq!(
            tita.generate(req).unwrap().generation.token_ids,
            b.generation.token_ids
        );
    }
}

#[test]
fn contrastive_decoding_matches_vcd_with_the_stored_noise() {
    // fixtures/vcd.json: VCD's greedy rule on cases 0 and 1 with a stored ε at step 500.
    let target = load("llava-target");
    let reference = json("vcd.json");
    let bytes = std::fs::read(fixtures().join("vcd.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let floats = |name: String| -> Vec<f32> {
        tensors
            .tensor(&name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let cases = cases();
    for case in reference["cases"].as_array().unwrap() {
        let k = case["case"].as_u64().unwrap() as usize;
        // The noised image itself agrees with VCD's (the schedule and x_t, on real pixels).
        let mut pixels = target
            .request_prompt(&request(&cases[k]))
            .unwrap()
            .pixels
            .unwrap();
        let eps = floats(format!("case{k}.eps"));
        tita_core::noise::add_noise_with(&mut pixels.data, 500, &eps).unwrap();
        let want = floats(format!("case{k}.noised_pixel_values"));
        let max = pixels
            .data
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max <= 1e-5, "case {k}: noised pixels max |Δ| {max}");
        let cfg = config(
            Vcd {
                beta: reference["beta"].as_f64().unwrap() as f32,
                noise_step: reference["noise_step"].as_u64().unwrap() as usize,
                noise_eps: Some(eps.into()),
                ..Vcd::new(reference["alpha"].as_f64().unwrap() as f32)
            }
            .into(),
        );
        let out = Tita::new(&target, None, None, cfg, greedy(12))
            .unwrap()
            .generate(&request(&cases[k]))
            .unwrap();
        assert_eq!(
            out.generation.token_ids,
            ids(&case["token_ids"]),
            "case {k}"
        );
    }
}

#[test]
fn contrastive_mode_is_deterministic_for_a_seed() {
    let target = load("llava-target");
    let run = |seed| {
        let cfg = config(
            Vcd {
                noise_seed: seed,
                ..Vcd::new(1.0)
            }
            .into(),
        );
        Tita::new(&target, None, None, cfg, greedy(12))
            .unwrap()
            .generate(&request(&cases()[1]))
            .unwrap()
            .generation
            .token_ids
    };
    let a = run(5);
    assert_eq!(a, run(5));
    assert_ne!(
        a,
        ids(&cases()[1]["greedy"]["token_ids"]),
        "the contrast must change something on this case"
    );
}

#[test]
fn explanation_view_is_consistent() {
    let (target, reward) = (load("llava-target"), load("llava-reward"));
    let cfg = TitaConfig {
        explain: true,
        ..config(Fusion::interpolate(0.3))
    };
    let out = Tita::new(&target, Some(&reward), None, cfg, greedy(12))
        .unwrap()
        .generate(&request(&cases()[0]))
        .unwrap();
    assert_eq!(out.explain.len(), 12);
    for (e, &t) in out.explain.iter().zip(&out.generation.token_ids) {
        assert_eq!(
            (e.token.id, e.fused_top.id),
            (t, t),
            "greedy picks the fused top"
        );
        assert!((e.implicit_reward - (e.reward_logprob - e.target_logprob)).abs() < 1e-6);
        assert!(e.target_logprob <= 0.0 && e.reward_logprob <= 0.0);
    }
    // The fixture's first greedy token of the target alone is the target's own favourite.
    assert_eq!(
        out.explain[0].target_top.id,
        ids(&cases()[0]["greedy"]["token_ids"])[0]
    );
}

#[test]
fn reference_mode_explains_with_the_dpo_reward() {
    let (target, reward, reference) = (
        load("llava-target"),
        load("llava-reward"),
        load("llava-reward-ref"),
    );
    let cfg = TitaConfig {
        explain: true,
        ..config(Fusion::reference(1.0))
    };
    let req = request(&cases()[0]);
    let out = Tita::new(&target, Some(&reward), Some(&reference), cfg, greedy(6))
        .unwrap()
        .generate(&req)
        .unwrap();
    for e in &out.explain {
        let r = e
            .reference_logprob
            .expect("reference mode reports the reference");
        assert!((e.implicit_reward - (e.reward_logprob - r)).abs() < 1e-6);
        assert!(r <= 0.0);
    }
    // The first row's reference log-prob is the reference model's own, computed apart.
    let prompt = reference.request_prompt(&req).unwrap();
    let (_, logits) =
        tita_decode::Session::prefill(&reference.model, &[&prompt], &reference.device).unwrap();
    let lp = tita_core::sampling::log_softmax(&logits[0]);
    let first = &out.explain[0];
    assert!((first.reference_logprob.unwrap() - lp[first.token.id as usize]).abs() < 1e-6);
}

#[test]
fn bad_configurations_are_clear_errors() {
    let (target, reward) = (load("llava-target"), load("llava-reward"));
    let err = |r: Result<Tita<B>, tita_core::Error>| r.err().expect("must be refused").to_string();
    let e = err(Tita::new(
        &target,
        Some(&reward),
        None,
        config(Fusion::interpolate(1.2)),
        greedy(4),
    ));
    assert!(e.contains("lambda") && e.contains("1.2"), "{e}");
    let e = err(Tita::new(
        &target,
        None,
        None,
        config(Fusion::interpolate(0.3)),
        greedy(4),
    ));
    assert!(e.contains("reward"), "{e}");
    let e = err(Tita::new(
        &target,
        Some(&reward),
        None,
        config(Fusion::reference(1.0)),
        greedy(4),
    ));
    assert!(e.contains("reference"), "{e}");
    // A text-only guide for a VLM target.
    let text = load("llama-text");
    let e = err(Tita::new(
        &target,
        Some(&text),
        None,
        config(Fusion::interpolate(0.3)),
        greedy(4),
    ));
    assert!(
        e.contains("a llama model") && e.contains("a llava one") && e.contains("family"),
        "{e}"
    );
    // A reward model whose tokenizer differs: its added token 32001 is another string.
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixtures().join("llava-reward").join(f), dir.path().join(f)).unwrap();
    }
    let tok = std::fs::read_to_string(fixtures().join("llava-reward/tokenizer.json")).unwrap();
    let swapped = tok.replacen("\"content\":\"<pad>\"", "\"content\":\"<PAD_SWAP>\"", 1);
    assert_ne!(tok, swapped);
    std::fs::write(dir.path().join("tokenizer.json"), swapped).unwrap();
    let other = Pipeline::<B>::load(dir.path(), &Default::default()).unwrap();
    let e = err(Tita::new(
        &target,
        Some(&other),
        None,
        config(Fusion::interpolate(0.3)),
        greedy(4),
    ));
    assert!(
        e.contains("differs") && e.contains("32001") && e.contains("PAD_SWAP"),
        "{e}"
    );
    // Methods that contrast the image with something else need one: without it they would be
    // plain decoding under another name.
    let text_only = Request::new("Hello", None::<std::path::PathBuf>, false);
    for fusion in [
        Fusion::vcd(1.0),
        Fusion::from_knobs("m3id", &Default::default()).unwrap(),
    ] {
        let tita = Tita::new(&target, None, None, config(fusion), greedy(4)).unwrap();
        let e = tita.generate(&text_only).expect_err("refused").to_string();
        assert!(e.contains("image") && e.contains("no image"), "{e}");
    }
}

#[test]
fn sweep_equals_full_decoding_for_every_fusion() {
    let (target, reward, reference) = (
        load("llava-target"),
        load("llava-reward"),
        load("llava-reward-ref"),
    );
    let knobs = |pairs: &[(&str, serde_json::Value)]| {
        let mut k = tita_decode::Knobs::new();
        pairs.iter().for_each(|(n, v)| k.set(n, v.clone()));
        k
    };
    let method = |mode: &str, pairs: &[(&str, serde_json::Value)]| {
        Fusion::from_knobs(mode, &knobs(pairs)).unwrap()
    };
    let objects = |names: &[&str]| serde_json::json!(names);
    // Methods whose guide inputs differ only in a knob (noise seed, object list) must not
    // share a branch. The branch bookkeeping is host code, the same on every backend: on
    // lavapipe, where each of these runs costs minutes, the baselines are left to the CPU run.
    let baselines = [
        method("contrastive", &[("noise_seed", 1.into())]),
        method("contrastive", &[("noise_seed", 2.into())]),
        method("m3id", &[("m3id_lambda", 0.3.into())]),
        method("marine", &[("objects", objects(&["cat"]))]),
        method("marine", &[("objects", objects(&["rocket", "dog"]))]),
    ];
    // On lavapipe (half a minute per full run) a smaller sweep of one case still branches and
    // checks the forked caches on the device; the CPU run covers every entry and case.
    let on_lavapipe = cfg!(feature = "wgpu");
    let (lambdas, alphas): (&[f32], &[f32]) = if on_lavapipe {
        (&[0.0, 0.6, 1.0], &[3.0])
    } else {
        (&[0.0, 0.1, 0.3, 0.6, 0.9, 1.0], &[1.0, 3.0])
    };
    let fusions: Vec<Fusion> = lambdas
        .iter()
        .map(|&l| Fusion::interpolate(l))
        .chain(alphas.iter().map(|&a| Fusion::reference(a)))
        .chain(baselines.into_iter().filter(|_| !on_lavapipe))
        .collect();
    let cases = cases();
    let cases = &cases[..if on_lavapipe { 1 } else { cases.len() }];
    // Greedy and seeded sampling; 12 tokens so that answers branch at different depths.
    let sampled = GenerationConfig {
        sampling: SamplingConfig {
            temperature: 0.8,
            top_k: Some(20),
            top_p: None,
            seed: 7,
        },
        ..greedy(12)
    };
    for generation in [greedy(12), sampled] {
        // Built in reference mode so that it keeps the reference for the α entries.
        let sweeper = Tita::new(
            &target,
            Some(&reward),
            Some(&reference),
            config(Fusion::reference(1.0)),
            generation.clone(),
        )
        .unwrap();
        for case in cases {
            let req = request(case);
            let swept = sweeper.sweep(&req, &fusions).unwrap();
            let mut distinct: Vec<&Vec<u32>> = swept.iter().map(|g| &g.token_ids).collect();
            distinct.dedup();
            assert!(
                distinct.len() > 1,
                "the sweep should branch on the fixtures"
            );
            for (f, got) in fusions.iter().zip(&swept) {
                let full = Tita::new(
                    &target,
                    Some(&reward),
                    Some(&reference),
                    config(f.clone()),
                    generation.clone(),
                )
                .unwrap()
                .generate(&req)
                .unwrap()
                .generation;
                assert_eq!(got.token_ids, full.token_ids, "{f:?}: {}", req.prompt);
                assert_eq!(got.text, full.text);
                assert_eq!(got.finish_reason, full.finish_reason);
            }
        }
    }
}

#[test]
fn jpeg_inputs_give_transformers_log_probs() {
    // fixtures/jpeg_extra/tita_jpeg.json: transformers + Pillow on COCO-style JPEGs (4:2:0
    // cropped, 4:4:4 padded), TITA λ 0.3, the chosen token's log-prob under each model.
    let (target, reward) = (load("llava-target"), load("llava-reward"));
    let reference = json("jpeg_extra/tita_jpeg.json");
    for case in reference["cases"].as_array().unwrap() {
        let request = Request::new(
            case["prompt"].as_str().unwrap(),
            Some(fixtures().join(case["image"].as_str().unwrap())),
            case["pad"].as_bool().unwrap(),
        );
        assert_eq!(
            target.request_prompt(&request).unwrap().ids,
            ids(&case["input_ids"])
        );
        let lambda = case["lambda"].as_f64().unwrap() as f32;
        let mut tita_config = config(Fusion::interpolate(lambda));
        tita_config.explain = true;
        let tita = Tita::new(&target, Some(&reward), None, tita_config, greedy(12)).unwrap();
        let out = tita.generate(&request).unwrap();
        assert_eq!(
            out.generation.token_ids,
            ids(&case["token_ids"]),
            "{}",
            case["image"]
        );
        for (key, got) in [
            (
                "target_logprobs",
                out.explain
                    .iter()
                    .map(|e| e.target_logprob)
                    .collect::<Vec<_>>(),
            ),
            (
                "reward_logprobs",
                out.explain.iter().map(|e| e.reward_logprob).collect(),
            ),
        ] {
            let want: Vec<f32> = case[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let max = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert_eq!(got.len(), want.len());
            assert!(max <= 1e-4, "{} {key}: max |Δ| {max:.2e}", case["image"]);
        }
    }
}

/// Greedy decoding by brute force on the host: every step runs each branch's whole prompt plus
/// the answer so far from scratch (no cache) and picks the argmax of `fuse(t, l_target,
/// l_guide)` over log-probs.
fn brute_force(
    target: &Pipeline<B>,
    main: &tita_decode::Prompt,
    guide: &tita_decode::Prompt,
    steps: usize,
    fuse: impl Fn(usize, &[f32], &[f32]) -> Vec<f32>,
) -> Vec<u32> {
    let last_logits = |p: &tita_decode::Prompt, answer: &[u32]| -> Vec<f32> {
        let full = tita_decode::Prompt {
            ids: [&p.ids[..], answer].concat(),
            pixels: p.pixels.clone(),
        };
        let (_, logits) =
            tita_decode::Session::prefill(&target.model, &[&full], &Default::default()).unwrap();
        tita_core::sampling::log_softmax(&logits[0])
    };
    let mut answer = Vec::new();
    for t in 1..=steps {
        let scores = fuse(t, &last_logits(main, &answer), &last_logits(guide, &answer));
        answer.push(tita_core::sampling::argmax(&scores));
    }
    answer
}

/// M3ID and MARINE as published, written out by hand, against the library's generations:
/// M3ID's unconditioned branch is the conversation rendered without the image, MARINE's guide
/// the official guidance prompt (template 2 of the general set, numpy's first draw). Method
/// logic checked on the CPU backend; the device fusions of both are checked on every backend
/// in `select.rs`.
#[test]
#[cfg_attr(
    feature = "wgpu",
    ignore = "72 uncached prefills: minutes on lavapipe; runs on the CPU backend"
)]
fn m3id_and_marine_equal_a_brute_force_host_implementation() {
    let target = load("llava-target");
    let steps = 6;
    // Whether each method moved some answer off plain greedy (else this test shows nothing).
    let mut moved = [false; 2];
    for case in cases() {
        let plain = Generator::new(&target, greedy(steps))
            .generate(&prompt(&target, &case))
            .unwrap()
            .token_ids;
        let question = case["prompt"].as_str().unwrap();
        let image = fixtures().join(case["image"].as_str().unwrap());
        let with_image = prompt(&target, &case);
        let req = request(&case);

        let (lambda, alpha) = (0.3f32, 0.9f32);
        let text_only = Request {
            messages: Some(vec![tita_decode::Message::user(question, false)]),
            ..Request::new("", None::<std::path::PathBuf>, false)
        };
        let without = target.request_prompt(&text_only).unwrap();
        let m3id = |t: usize, lc: &[f32], lu: &[f32]| -> Vec<f32> {
            let open = lc.iter().copied().fold(f32::NEG_INFINITY, f32::max) < alpha.ln();
            let gamma = (-(lambda as f64) * t as f64).exp();
            let w = if open {
                ((1.0 - gamma) / gamma) as f32
            } else {
                0.0
            };
            lc.iter().zip(lu).map(|(c, u)| c + w * (c - u)).collect()
        };
        let want = brute_force(&target, &with_image, &without, steps, m3id);
        let knobs = tita_decode::Knobs::new()
            .with("m3id_lambda", Some(lambda))
            .with("m3id_alpha", Some(alpha));
        let fusion = Fusion::from_knobs("m3id", &knobs).unwrap();
        let got = Tita::new(&target, None, None, config(fusion), greedy(steps))
            .unwrap()
            .generate(&req)
            .unwrap();
        assert_eq!(got.generation.token_ids, want, "m3id: {question}");
        moved[0] |= want != plain;

        let gamma = 0.7f32;
        let guided_text = format!(
            "This image shows the following objects: cat, dog, and rocket. Using this information, {}",
            question.to_lowercase()
        );
        let guided = target
            .request_prompt(&Request::new(guided_text, Some(image), false))
            .unwrap();
        let marine = |_: usize, lo: &[f32], lg: &[f32]| -> Vec<f32> {
            let mixed: Vec<f32> = lo
                .iter()
                .zip(lg)
                .map(|(o, g)| o + gamma * (g - o))
                .collect();
            tita_core::sampling::log_softmax(&mixed)
        };
        let want = brute_force(&target, &with_image, &guided, steps, marine);
        let knobs = tita_decode::Knobs::new()
            .with("objects", Some(serde_json::json!(["cat", "dog", "rocket"])))
            .with("marine_gamma", Some(gamma));
        let fusion = Fusion::from_knobs("marine", &knobs).unwrap();
        let got = Tita::new(&target, None, None, config(fusion), greedy(steps))
            .unwrap()
            .generate(&req)
            .unwrap();
        assert_eq!(got.generation.token_ids, want, "marine: {question}");
        moved[1] |= want != plain;
    }
    assert_eq!(moved, [true, true], "M3ID, MARINE changed no answer");
}
