//! Fusion and token choice on the device against their host forms: the fused scores agree,
//! the device picks the token the host sampler picks from the same draw, and whole
//! generations (plain, TITA, reference, VCD, M3ID, MARINE; greedy and sampled) give the same
//! tokens either way.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::*;
use tita_core::sampling::Sampler;
use tita_decode::guidance::{Interpolate, Reference, Step};
use tita_decode::select::{choose, choose_ids};
use tita_decode::{
    Error, Fusion, GenerationConfig, Generator, Knobs, Request, SamplingConfig, Tita, TitaConfig,
};

/// Deterministic scores with repeated values (ties) and a spread like logits'.
fn scores(rows: usize, vocab: usize, salt: u32) -> Vec<Vec<f32>> {
    (0..rows)
        .map(|r| {
            (0..vocab)
                .map(|i| {
                    let h = (i as u32 * 2_654_435_761) ^ (r as u32 * 40_503 + salt * 97);
                    ((h >> 7) % 61) as f32 / 6.0 - 5.0
                })
                .collect()
        })
        .collect()
}

fn tensor(rows: &[Vec<f32>]) -> Tensor<B, 2> {
    let flat: Vec<f32> = rows.concat();
    Tensor::from_data(
        TensorData::new(flat, [rows.len(), rows[0].len()]),
        &Default::default(),
    )
}

fn host(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let v = t.dims()[1];
    let flat: Vec<f32> = t.into_data().convert::<f32>().into_vec().unwrap();
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

#[test]
fn device_fusion_equals_host_fusion() {
    // The guides' vocabulary is shorter than the target's: ids past it must be -inf.
    let (t, g1, g2) = (scores(3, 50, 1), scores(3, 47, 2), scores(3, 50, 3));
    let knobs = |pairs: &[(&str, serde_json::Value)]| {
        let mut k = Knobs::new();
        for (name, v) in pairs {
            k.set(name, v.clone());
        }
        k
    };
    let methods: Vec<Fusion> = vec![
        Fusion::interpolate(0.3),
        Fusion::interpolate(0.0),
        Interpolate {
            lambda: 0.3,
            tau: Some(0.1),
        }
        .into(),
        Fusion::reference(0.7),
        Reference {
            alpha: 0.7,
            tau: Some(0.1),
        }
        .into(),
        Fusion::vcd(1.0),
        // An α gate that opens on some rows only, and the avisc variant's cut.
        Fusion::from_knobs("m3id", &knobs(&[("m3id_alpha", 0.2.into())])).unwrap(),
        Fusion::from_knobs("m3id", &knobs(&[("m3id_variant", "avisc".into())])).unwrap(),
        Fusion::from_knobs("marine", &knobs(&[("objects", serde_json::json!(["a"]))])).unwrap(),
    ];
    for fusion in methods {
        for step in [Step { t: 1 }, Step { t: 40 }] {
            let guides: Vec<Tensor<B, 2>> = [&g1, &g2][..fusion.guides().len()]
                .iter()
                .map(|g| tensor(g))
                .collect();
            let device = host(fusion.fuse_device(step, tensor(&t), &guides));
            for row in 0..3 {
                let g: Vec<&[f32]> = [&g1, &g2][..guides.len()]
                    .iter()
                    .map(|g| g[row].as_slice())
                    .collect();
                let want = fusion.fuse_host(step, &t[row], &g);
                for (y, (d, w)) in device[row].iter().zip(&want).enumerate() {
                    assert!(
                        (d == w) || (d - w).abs() < 1e-5,
                        "{fusion:?} {step:?} row {row} id {y}: device {d}, host {w}"
                    );
                }
            }
        }
    }
}

/// The method with a plausibility cut τ where it takes one (the TITA modes).
fn with_tau(fusion: &Fusion, tau: f32) -> Fusion {
    match fusion {
        Fusion::Interpolate(m) => Interpolate {
            tau: Some(tau),
            ..*m
        }
        .into(),
        Fusion::Reference(m) => Reference {
            tau: Some(tau),
            ..*m
        }
        .into(),
        other => other.clone(),
    }
}

#[test]
fn device_choice_picks_what_the_host_sampler_picks_from_the_same_draw() {
    let configs = [
        SamplingConfig::greedy(),
        SamplingConfig {
            temperature: 0.7,
            ..Default::default()
        },
        SamplingConfig {
            temperature: 1.0,
            top_k: Some(5),
            ..Default::default()
        },
        SamplingConfig {
            temperature: 1.3,
            top_p: Some(0.8),
            ..Default::default()
        },
        SamplingConfig {
            temperature: 0.9,
            top_k: Some(10),
            top_p: Some(0.5),
            seed: 3,
        },
    ];
    for config in configs {
        let mut samplers: Vec<Sampler> = (0..4)
            .map(|r| {
                Sampler::new(SamplingConfig {
                    seed: config.seed + r,
                    ..config.clone()
                })
                .unwrap()
            })
            .collect();
        for step in 0..40 {
            let mut rows = scores(4, 64, step);
            // Impossible tokens, as the plausibility cut leaves them.
            rows[1][..20].fill(f32::NEG_INFINITY);
            let draws: Vec<f64> = samplers.iter_mut().map(Sampler::draw).collect();
            let device: Vec<i64> = choose(tensor(&rows), &config, &draws)
                .into_data()
                .convert::<i64>()
                .into_vec()
                .unwrap();
            for (r, sampler) in samplers.iter().enumerate() {
                assert_eq!(
                    device[r],
                    sampler.pick(&rows[r], draws[r]) as i64,
                    "{config:?} step {step} row {r} (draw {})",
                    draws[r]
                );
            }
        }
    }
}

#[test]
fn non_finite_logits_are_an_error_naming_the_model() {
    let target = load("llava-target");
    let mut rows = scores(2, 30, 0);
    rows[1][7] = f32::NAN;
    let logits = tensor(&rows);
    let err = choose_ids(
        logits.clone(),
        &[(&target.model, &logits)],
        &SamplingConfig::greedy(),
        &[0.0, 0.0],
    )
    .unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&target.model.name) && msg.contains("batch row 1") && msg.contains("index 7"),
        "{msg}"
    );
}

#[test]
fn generations_chosen_on_the_device_equal_those_chosen_on_the_host() {
    let (target, reward, reference) = (
        load("llava-target"),
        load("llava-reward"),
        load("llava-reward-ref"),
    );
    let sampled = SamplingConfig {
        temperature: 0.8,
        top_k: Some(30),
        top_p: Some(0.9),
        seed: 5,
    };
    let requests: Vec<Request> = cases().iter().map(request).collect();
    let prompts: Vec<_> = cases().iter().map(|c| prompt(&target, c)).collect();
    let prompt_refs: Vec<_> = prompts.iter().collect();
    // Greedy choice is the argmax either way (the fixture tests pin it); sampling is where the
    // two paths could part. On lavapipe, where each run costs half a minute, the sampled choice
    // is checked for a method with one guide and one with an image-less guide; every method's
    // device fusion is checked against its host fusion in `device_fusion_equals_host_fusion`.
    let on_lavapipe = cfg!(feature = "wgpu");
    let runs = [
        (SamplingConfig::greedy(), vec![Fusion::interpolate(0.4)]),
        (
            sampled,
            vec![
                Fusion::interpolate(0.4),
                Fusion::reference(1.0),
                Fusion::vcd(1.0),
                Fusion::from_knobs("m3id", &Knobs::new().with("m3id_alpha", Some(0.9))).unwrap(),
                Fusion::from_knobs(
                    "marine",
                    &Knobs::new().with("objects", Some(serde_json::json!(["cat", "dog"]))),
                )
                .unwrap(),
            ],
        ),
    ];
    for (sampling, fusions) in runs {
        if on_lavapipe && sampling.temperature == 0.0 {
            continue;
        }
        let fusions = fusions
            .into_iter()
            .filter(|f| !on_lavapipe || matches!(f.name(), "interpolate" | "m3id"));
        let config = |on_host: bool| GenerationConfig {
            sampling: sampling.clone(),
            scores_on_host: on_host,
            ..greedy(6)
        };
        let plain = |on_host: bool| -> Vec<Vec<u32>> {
            Generator::new(&target, config(on_host))
                .generate_batch(&prompt_refs)
                .unwrap()
                .into_iter()
                .map(|g| g.token_ids)
                .collect()
        };
        if sampling.temperature > 0.0 {
            assert_eq!(plain(false), plain(true), "plain, {sampling:?}");
        }
        for fusion in fusions {
            let run = |on_host: bool| -> Vec<Vec<u32>> {
                let tita = Tita::new(
                    &target,
                    Some(&reward),
                    Some(&reference),
                    TitaConfig {
                        fusion: with_tau(&fusion, 0.01),
                        ..Default::default()
                    },
                    config(on_host),
                )
                .unwrap();
                tita.generate_batch(&requests)
                    .unwrap()
                    .into_iter()
                    .map(|g| g.generation.token_ids)
                    .collect()
            };
            assert_eq!(run(false), run(true), "{fusion:?}, {sampling:?}");
        }
    }
}
