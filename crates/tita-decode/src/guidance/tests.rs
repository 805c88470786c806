//! Each method's formula on hand-made logits, on the host and on the device, its knobs and its
//! guide prompts' pieces.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};

use super::marine::{template_index, TemplateSet};
use super::*;

const T: [f32; 4] = [2.0, 1.0, 0.5, -1.0];
const R: [f32; 4] = [0.0, 3.0, 0.0, 0.0];
const FIRST: Step = Step { t: 1 };

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        let same_inf = x.is_infinite() && x == y;
        assert!(same_inf || (x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

fn softmax(scores: &[f32]) -> Vec<f32> {
    log_softmax(scores).iter().map(|l| l.exp()).collect()
}

fn logs(p: &[f32]) -> Vec<f32> {
    p.iter().map(|p| p.ln()).collect()
}

/// The device formula on one row, back on the host.
fn on_device(f: &Fusion, step: Step, target: &[f32], guides: &[&[f32]]) -> Vec<f32> {
    let device = Default::default();
    let row = |x: &[f32]| {
        Tensor::<Flex, 2>::from_data(TensorData::new(x.to_vec(), [1, x.len()]), &device)
    };
    let g: Vec<_> = guides.iter().map(|x| row(x)).collect();
    f.fuse_device(step, row(target), &g)
        .into_data()
        .to_vec()
        .unwrap()
}

fn m3id(knobs: &[(&str, serde_json::Value)]) -> Fusion {
    let mut k = Knobs::new();
    knobs.iter().for_each(|(n, v)| k.set(n, v.clone()));
    Fusion::from_knobs("m3id", &k).unwrap()
}

fn marine(gamma: f32, objects: &[&str]) -> Marine {
    Marine {
        gamma,
        ..Marine::new(ObjectList::fixed(
            objects.iter().map(|s| s.to_string()).collect(),
        ))
    }
}

#[test]
fn interpolate_is_the_weighted_sum_of_log_probs() {
    let s = Fusion::interpolate(0.3).fuse_host(FIRST, &T, &[&R]);
    let (lt, lr) = (log_softmax(&T), log_softmax(&R));
    let want: Vec<f32> = (0..4).map(|y| 0.7 * lt[y] + 0.3 * lr[y]).collect();
    close(&s, &want, 1e-6);
}

#[test]
fn zero_weight_returns_the_target_unchanged() {
    assert_eq!(Fusion::interpolate(0.0).fuse_host(FIRST, &T, &[&R]), T);
    assert_eq!(Fusion::reference(0.0).fuse_host(FIRST, &T, &[&R, &R]), T);
    assert_eq!(
        m3id(&[("m3id_lambda", 0.0.into())]).fuse_host(FIRST, &T, &[&R]),
        T
    );
    let none = Fusion::from(marine(0.0, &["cat"]));
    assert_eq!(none.fuse_host(FIRST, &T, &[&R]), T);
    for f in [Fusion::interpolate(0.0), Fusion::reference(0.0), none] {
        assert!(f.is_identity(), "{f:?}");
    }
    // VCD's cut applies even at α = 0.
    assert!(!Fusion::vcd(0.0).is_identity());
}

#[test]
fn reference_with_equal_reward_and_reference_is_the_target_log_probs() {
    let s = Fusion::reference(1.0).fuse_host(FIRST, &T, &[&R, &R]);
    close(&s, &log_softmax(&T), 1e-6);
}

#[test]
fn contrastive_contrasts_raw_logits_and_cuts() {
    let vcd = Vcd {
        beta: 0.3,
        ..Vcd::new(1.0)
    };
    let s = Fusion::from(vcd).fuse_host(FIRST, &T, &[&R]);
    // (1+1)·T − R = [4, −1, 1, −2]; ln(0.3) + max T = 0.796 cuts ids 2 and 3 (T = 0.5, −1).
    assert_eq!(s, vec![4.0, -1.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
}

#[test]
fn ids_past_the_common_vocabulary_are_excluded() {
    let fusions = [
        Fusion::interpolate(0.5),
        Fusion::vcd(1.0),
        m3id(&[("m3id_alpha", 1.0.into())]),
        marine(0.7, &["cat"]).into(),
    ];
    for f in fusions {
        for s in [
            f.fuse_host(Step { t: 5 }, &T, &[&R[..3]]),
            on_device(&f, Step { t: 5 }, &T, &[&R[..3]]),
        ] {
            assert_eq!(s[3], f32::NEG_INFINITY, "{f:?}");
            assert!(s[..2].iter().all(|v| v.is_finite()), "{f:?}: {s:?}");
        }
    }
}

#[test]
fn out_of_range_knobs_are_refused_by_name() {
    let refused = |mode: &str, knob: &str, value: serde_json::Value| {
        let mut knobs = Knobs::new();
        if mode == "marine" {
            knobs.set("objects", serde_json::json!(["cat"]));
        }
        let e = Fusion::from_knobs(mode, &knobs.with(knob, Some(value))).unwrap_err();
        assert!(e.to_string().contains(knob), "{e}");
    };
    refused("interpolate", "lambda", 1.5.into());
    refused("interpolate", "lambda", (-0.1).into());
    refused("reference", "alpha", (-1.0).into());
    refused("interpolate", "tau", 2.0.into());
    refused("contrastive", "vcd_beta", 0.0.into());
    refused("m3id", "m3id_lambda", (-0.5).into());
    refused("m3id", "m3id_alpha", 1.5.into());
    refused("m3id", "m3id_variant", "sideways".into());
    refused("marine", "marine_gamma", 1.5.into());
    refused("interpolate", "lambda", "high".into());
    // A knob of another mode is refused, not ignored.
    refused("m3id", "lambda", 0.3.into());
    refused("interpolate", "objects", serde_json::json!(["cat"]));
    // The avisc variant has no gate and the paper's no cut.
    let both = Knobs::new()
        .with("m3id_variant", Some("avisc"))
        .with("m3id_alpha", Some(0.9));
    assert!(Fusion::from_knobs("m3id", &both).is_err());
    assert!(Fusion::from_knobs("sideways", &Knobs::new()).is_err());
    assert!(Fusion::from_knobs("interpolate", &Knobs::new().with("lambda", Some(0.6))).is_ok());
}

#[test]
fn every_mode_reads_its_defaults() {
    for mode in Fusion::MODES {
        let knobs = match *mode {
            "marine" => Knobs::new().with("objects", Some(serde_json::json!([]))),
            _ => Knobs::new(),
        };
        let f = Fusion::from_knobs(mode, &knobs).unwrap();
        assert_eq!(f.name(), *mode);
        assert_eq!(f.describe()["mode"], *mode);
        assert!(Fusion::knobs_of(mode).is_some());
    }
    let m = M3id::default();
    assert_eq!(
        (m.lambda, m.alpha, m.variant),
        (0.02, 0.95, M3idVariant::Paper)
    );
}

#[test]
fn m3id_at_the_start_of_the_answer_is_the_target() {
    // γ_0 = 1: no correction yet.
    let f = m3id(&[("m3id_alpha", 1.0.into())]);
    close(
        &f.fuse_host(Step { t: 0 }, &T, &[&R]),
        &log_softmax(&T),
        1e-6,
    );
}

#[test]
fn m3id_gate_leaves_confident_steps_alone() {
    // max p_c = 0.5 is not below α = 0.4: the gate is closed at every t.
    let pc = [0.5, 0.3, 0.2];
    let pu = [0.2, 0.3, 0.5];
    let f = m3id(&[("m3id_alpha", 0.4.into())]);
    for t in [1, 50, 500] {
        let step = Step { t };
        close(
            &softmax(&f.fuse_host(step, &logs(&pc), &[&logs(&pu)])),
            &pc,
            1e-6,
        );
        close(
            &softmax(&on_device(&f, step, &logs(&pc), &[&logs(&pu)])),
            &pc,
            1e-6,
        );
    }
}

#[test]
fn m3id_matches_the_paper_formula_by_hand() {
    // λ = 0.02, t = 50: (1−γ)/γ = e − 1, so p̂ ∝ p_c^e / p_u^(e−1).
    let pc = [0.5, 0.3, 0.2];
    let pu = [0.2, 0.3, 0.5];
    let want = [0.876_091_5, 0.108_874_87, 0.015_033_61];
    let step = Step { t: 50 };
    assert!((M3id::default().weight(50) - (std::f32::consts::E - 1.0)).abs() < 1e-6);
    let f = m3id(&[]);
    close(
        &softmax(&f.fuse_host(step, &logs(&pc), &[&logs(&pu)])),
        &want,
        1e-5,
    );
    close(
        &softmax(&on_device(&f, step, &logs(&pc), &[&logs(&pu)])),
        &want,
        1e-5,
    );
}

#[test]
fn m3id_avisc_always_corrects_and_cuts_by_beta() {
    let f = m3id(&[("m3id_variant", "avisc".into()), ("m3id_beta", 0.5.into())]);
    // p_c = [0.5, 0.3, 0.2]: β = 0.5 keeps p_c >= 0.25, ids 0 and 1.
    let (lc, lu) = (logs(&[0.5, 0.3, 0.2]), logs(&[0.2, 0.3, 0.5]));
    let s = f.fuse_host(Step { t: 50 }, &lc, &[&lu]);
    assert!(
        s[0].is_finite() && s[1].is_finite() && s[2] == f32::NEG_INFINITY,
        "{s:?}"
    );
    let w = std::f32::consts::E - 1.0;
    assert!((s[0] - s[1] - ((1.0 + w) * (lc[0] - lc[1]) - w * (lu[0] - lu[1]))).abs() < 1e-5);
    close(&on_device(&f, Step { t: 50 }, &lc, &[&lu]), &s, 1e-5);
}

#[test]
fn marine_moves_the_original_towards_the_guided_by_gamma() {
    let (pg, po) = ([0.6, 0.1, 0.3], [0.3, 0.4, 0.3]);
    let (lg, lo) = (logs(&pg), logs(&po));
    let f = Fusion::from(marine(0.7, &["cat"]));
    let want = [0.519_053_6, 0.161_431_4, 0.319_515];
    close(&softmax(&f.fuse_host(FIRST, &lo, &[&lg])), &want, 1e-5);
    close(&softmax(&on_device(&f, FIRST, &lo, &[&lg])), &want, 1e-5);
    // γ = 1: the guided distribution itself.
    let all = Fusion::from(marine(1.0, &["cat"]));
    close(&softmax(&all.fuse_host(FIRST, &lo, &[&lg])), &pg, 1e-6);
}

#[test]
fn marine_templates_follow_numpy_seed_42() {
    // numpy: seed(42); randint(0, 4, 2000), positions 0–11, 620–629 (past the first
    // regeneration of the state) and 1990–1999.
    let first: Vec<usize> = (0..12).map(template_index).collect();
    assert_eq!(first, [2, 3, 0, 2, 2, 3, 0, 0, 2, 1, 2, 2]);
    let mid: Vec<usize> = (620..630).map(template_index).collect();
    assert_eq!(mid, [3, 1, 2, 1, 0, 1, 0, 1, 2, 2]);
    let late: Vec<usize> = (1990..2000).map(template_index).collect();
    assert_eq!(late, [3, 2, 2, 0, 0, 0, 1, 0, 2, 0]);
}

#[test]
fn marine_guidance_text_is_the_official_one() {
    let objects = |names: &[&str]| -> Vec<String> { names.iter().map(|s| s.to_string()).collect() };
    let m = marine(0.7, &[]);
    // Position 2 draws template 0; 9 draws template 1.
    assert_eq!(
        m.guidance_text("Describe This image.", &objects(&["cat", "dog", "sofa"]), 2),
        "This image contains cat, dog, and sofa. Based on this, describe this image."
    );
    assert_eq!(
        m.guidance_text("What is here?", &objects(&["cat", "dog"]), 9),
        "The image contains the following objects: cat and dog. Given these detected objects, what is here?"
    );
    assert_eq!(
        m.guidance_text("Is There a cat?", &[], 2),
        "Is There a cat?"
    );
    let pope = Marine {
        templates: TemplateSet::Pope,
        ..m
    };
    assert_eq!(
        pope.guidance_text("Is there a cat in the image?", &objects(&["cat"]), 1),
        "The objects found in this image are limited to: cat. You should rely strictly on this list of objects and make no other guesses. Based on this, is there a cat in the image?"
    );
}

#[test]
fn marine_reads_object_lists_by_image() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("objects.json");
    std::fs::write(
        &json,
        r#"[{"image": "a.jpg", "objects": ["cat"]}, {"image": "b.jpg", "objects": []}]"#,
    )
    .unwrap();
    let jsonl = dir.path().join("objects.jsonl");
    std::fs::write(&jsonl, "{\"image\": \"a.jpg\", \"objects\": [\"cat\"]}\n").unwrap();
    for path in [&json, &jsonl] {
        let knobs = Knobs::new().with("objects", Some(path.display().to_string()));
        let f = Fusion::from_knobs("marine", &knobs).unwrap();
        assert_eq!(
            f.describe()["objects"]["source"],
            path.display().to_string()
        );
    }
    std::fs::write(&json, r#"[{"image": "a.jpg"}]"#).unwrap();
    let knobs = Knobs::new().with("objects", Some(json.display().to_string()));
    let e = Fusion::from_knobs("marine", &knobs)
        .unwrap_err()
        .to_string();
    assert!(e.contains("objects.json") && e.contains("objects"), "{e}");
    let truth = Knobs::new()
        .with("objects", Some(serde_json::json!(["cat"])))
        .with("objects_truth", Some(true));
    assert_eq!(
        Fusion::from_knobs("marine", &truth).unwrap().label(),
        "MARINE-truth (oracle)"
    );
}

#[test]
fn knobs_from_the_command_line() {
    let mut k = Knobs::new();
    k.set_arg("m3id_lambda=0.1").unwrap();
    k.set_arg("objects=dets/objects.json").unwrap();
    k.set_arg("objects_truth=true").unwrap();
    assert_eq!(k.get("m3id_lambda"), Some(&serde_json::json!(0.1)));
    assert_eq!(
        k.get("objects"),
        Some(&serde_json::json!("dets/objects.json"))
    );
    assert_eq!(k.get("objects_truth"), Some(&serde_json::json!(true)));
    assert!(k.set_arg("no-equals-sign").is_err());
}
