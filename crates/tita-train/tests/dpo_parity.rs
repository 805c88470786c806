//! DPO against the fixtures' `dpo.json` (PyTorch + transformers): token ids, the four summed
//! log-probs per pair, per-pair and mean loss, and gradient norms of the mean loss.

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use serde_json::Value;
use tita_decode::Pipeline;
use tita_models::{param_id, Vlm};
use tita_train::{dpo_loss, response_logps, Dataset, Sequence};

type B = Flex;
type A = Autodiff<Flex>;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn values(t: Tensor<A, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

#[test]
fn dpo_logps_loss_and_gradients_match_transformers() {
    let fx = fixtures();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("dpo.json")).unwrap()).unwrap();
    let pairs = expected["pairs"].as_array().unwrap();
    let device = Default::default();
    let policy = Pipeline::<A>::load(&fx.join("llava-reward"), &device).unwrap();
    let reference = Vlm::<B>::load(&fx.join("llava-reward-ref"), &device).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pairs.jsonl");
    let lines: Vec<String> = pairs
        .iter()
        .map(|p| {
            serde_json::json!({"image": p["image"], "prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]})
                .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let data = Dataset::preference(&file, Some(&fx), &policy, false).unwrap();

    for (ex, p) in data.examples.iter().zip(pairs) {
        assert_eq!(ex.prompt, ids(&p["prompt_ids"]));
        assert_eq!(ex.responses[0], ids(&p["chosen_ids"]));
        assert_eq!(ex.responses[1], ids(&p["rejected_ids"]));
    }

    // Chosen rows then rejected rows, all four sequences in one pass.
    let seqs: Vec<Sequence> = (0..2)
        .flat_map(|r| {
            data.examples.iter().map(move |ex| Sequence {
                prompt: &ex.prompt,
                response: &ex.responses[r],
                image: ex.image,
            })
        })
        .collect();
    let lp_policy = response_logps(&policy.model, &data, &seqs, &device).unwrap();
    let lp_ref = response_logps(&reference, &data, &seqs, &device).unwrap();
    let lp_ref = Tensor::<A, 1>::from_inner(lp_ref);
    let n = data.len();
    let pc = lp_policy.clone().slice(0..n);
    let pr = lp_policy.clone().slice(n..2 * n);
    let rc = lp_ref.clone().slice(0..n);
    let rr = lp_ref.clone().slice(n..2 * n);
    let (vpc, vpr, vrc, vrr) = (
        values(pc.clone()),
        values(pr.clone()),
        values(rc.clone()),
        values(rr.clone()),
    );
    for (i, p) in pairs.iter().enumerate() {
        let lp = &p["logps"];
        for (name, got) in [
            ("policy_chosen", vpc[i]),
            ("policy_rejected", vpr[i]),
            ("reference_chosen", vrc[i]),
            ("reference_rejected", vrr[i]),
        ] {
            let want = lp[name].as_f64().unwrap() as f32;
            assert!(
                (got - want).abs() <= 1e-3,
                "pair {i} {name}: {got} vs {want}"
            );
        }
    }

    let beta = expected["beta"].as_f64().unwrap();
    let terms = dpo_loss(pc, pr, rc, rr, beta);
    let losses = values(terms.losses.clone());
    let chosen = values(terms.chosen_rewards.clone());
    let rejected = values(terms.rejected_rewards.clone());
    for (i, p) in pairs.iter().enumerate() {
        let want = p["loss"].as_f64().unwrap() as f32;
        assert!(
            (losses[i] - want).abs() <= 1e-5,
            "pair {i} loss {} vs {want}",
            losses[i]
        );
        // β·(chosen - rejected implicit rewards); log-probs agree to 1e-3, so this to β·2e-3.
        let margin = chosen[i] - rejected[i];
        let want = p["reward_margin"].as_f64().unwrap() as f32;
        assert!(
            (margin - want).abs() <= beta as f32 * 2e-3,
            "pair {i} reward margin {margin} vs {want}"
        );
    }
    let mean = terms.losses.mean();
    let got_mean = mean.clone().into_scalar();
    let want_mean = expected["mean_loss"].as_f64().unwrap() as f32;
    assert!(
        (got_mean - want_mean).abs() <= 1e-5,
        "mean loss {got_mean} vs {want_mean}"
    );

    let grads = GradientsParams::from_grads(mean.backward(), &policy.model);
    let norms = expected["grad_l2_norms_of_mean_loss"].as_object().unwrap();
    assert!(norms.len() >= 5);
    for (name, want) in norms {
        let want = want.as_f64().unwrap() as f32;
        let id = param_id(name);
        let missing = || -> Tensor<B, 1> { panic!("no gradient for {name}") };
        let norm = if name.ends_with(".bias") {
            grads.get::<B, 1>(id).unwrap_or_else(missing).square().sum()
        } else {
            grads
                .get::<B, 2>(id)
                .map(|g| g.reshape([-1]))
                .unwrap_or_else(missing)
                .square()
                .sum()
        }
        .sqrt()
        .into_scalar();
        let rel = (norm - want).abs() / want;
        assert!(
            rel <= 1e-3,
            "{name}: grad norm {norm} vs {want} (rel {rel:.2e})"
        );
    }
}

/// One DPO pair on Qwen2.5-VL (`fixtures/qwen2_5_vl/tita.json`, policy = the reward, reference
/// = the target): ChatML answer ids, the four log-probs and the loss, with autodiff through the
/// vision tower and M-RoPE.
#[test]
fn qwen_dpo_logps_and_loss_match_transformers() {
    let fx = fixtures().join("qwen2_5_vl");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("tita.json")).unwrap()).unwrap();
    let p = &expected["dpo"];
    let device = Default::default();
    let policy = Pipeline::<A>::load(&fx.join("reward"), &device).unwrap();
    let reference = Vlm::<B>::load(&fx.join("model"), &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pairs.jsonl");
    let line = serde_json::json!({"image": p["image"], "prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]});
    std::fs::write(&file, line.to_string()).unwrap();
    let data = Dataset::preference(&file, Some(&fx), &policy, false).unwrap();
    let ex = &data.examples[0];
    assert_eq!(ex.prompt, ids(&p["prompt_ids"]));
    assert_eq!(ex.responses[0], ids(&p["chosen_ids"]));
    assert_eq!(ex.responses[1], ids(&p["rejected_ids"]));
    let seqs: Vec<Sequence> = (0..2)
        .map(|r| Sequence {
            prompt: &ex.prompt,
            response: &ex.responses[r],
            image: ex.image,
        })
        .collect();
    let lp_policy = response_logps(&policy.model, &data, &seqs, &device).unwrap();
    let lp_ref =
        Tensor::<A, 1>::from_inner(response_logps(&reference, &data, &seqs, &device).unwrap());
    let got = [values(lp_policy.clone()), values(lp_ref.clone())].concat();
    for (name, g) in [
        "policy_chosen",
        "policy_rejected",
        "reference_chosen",
        "reference_rejected",
    ]
    .iter()
    .zip(&got)
    {
        let want = p["logps"][name].as_f64().unwrap() as f32;
        assert!((g - want).abs() <= 1e-3, "{name}: {g} vs {want}");
    }
    let terms = dpo_loss(
        lp_policy.clone().slice(0..1),
        lp_policy.clone().slice(1..2),
        lp_ref.clone().slice(0..1),
        lp_ref.slice(1..2),
        p["beta"].as_f64().unwrap(),
    );
    let loss = terms.losses.mean();
    let want = p["loss"].as_f64().unwrap() as f32;
    let got = loss.clone().into_scalar();
    assert!((got - want).abs() <= 1e-5, "loss {got} vs {want}");
    let grads = GradientsParams::from_grads(loss.backward(), &policy.model);
    let g = grads
        .get::<B, 2>(param_id("visual.merger.mlp.0.weight"))
        .expect("a gradient reaches the vision merger");
    assert!(g.abs().sum().into_scalar() > 0.0);
}
