//! AdamW, global-norm clipping and the warmup + cosine schedule against eight steps of PyTorch
//! (fixtures/reference/reference.json `adamw`: torch.optim.AdamW + clip_grad_norm_(1.0) +
//! transformers' get_cosine_schedule_with_warmup on a least-squares problem, float32).

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use tita_train::optim::{clip_scale, cosine_with_warmup, global_grad_norm, AdamW, AdamWConfig};

type A = Autodiff<Flex>;

#[derive(Module, Debug)]
struct LeastSquares<B: Backend> {
    w: Param<Tensor<B, 2>>,
    b: Param<Tensor<B, 1>>,
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn values<const D: usize>(t: Tensor<A, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// max |got - want| / max(|want|, 1e-3): relative, with a floor for values near zero.
fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
        .fold(0.0, f32::max)
}

#[test]
fn eight_steps_match_pytorch() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/reference/reference.json");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let r = &r["adamw"];
    let device = Default::default();
    let tensor = |v: Vec<f32>, shape: Vec<usize>| TensorData::new(v, shape);
    let mut model = LeastSquares::<A> {
        w: Param::from_data(tensor(floats(&r["w0"]), vec![3, 4]), &device),
        b: Param::from_data(tensor(floats(&r["b0"]), vec![4]), &device),
    };
    let config = AdamWConfig {
        lr: 1e-2,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(config);
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 8);
    let mut clipped = 0;
    for (i, s) in steps.iter().enumerate() {
        let x = Tensor::<A, 2>::from_data(tensor(floats(&s["x"]), vec![5, 3]), &device);
        let y = Tensor::<A, 2>::from_data(tensor(floats(&s["y"]), vec![5, 4]), &device);
        let pred = x.matmul(model.w.val()) + model.b.val().unsqueeze::<2>();
        let weight = if i == 3 { 10.0 } else { 1.0 };
        let loss = (pred - y).square().mean().mul_scalar(weight);
        let l = values(loss.clone())[0];
        let want_loss = s["loss"].as_f64().unwrap() as f32;
        assert!(
            (l - want_loss).abs() <= 1e-5 * want_loss.abs(),
            "step {i}: loss {l} vs {want_loss}"
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let gw: Tensor<Flex, 2> = grads.get(model.w.id).unwrap();
        let gb: Tensor<Flex, 1> = grads.get(model.b.id).unwrap();
        let g = &s["grads_before_clip"];
        assert!(
            max_rel(&gw.into_data().to_vec::<f32>().unwrap(), &floats(&g["w"])) <= 1e-5,
            "step {i}: grad w"
        );
        assert!(
            max_rel(&gb.into_data().to_vec::<f32>().unwrap(), &floats(&g["b"])) <= 1e-5,
            "step {i}: grad b"
        );
        // The norm as float32, and the lr the schedule gives, exactly.
        let norm = global_grad_norm(&model, &grads);
        let want_norm = s["grad_norm_before_clip"].as_f64().unwrap() as f32;
        assert!(
            (norm as f32 - want_norm).abs() <= f32::EPSILON * want_norm,
            "step {i}: norm {norm} vs {want_norm}"
        );
        let lr = cosine_with_warmup(config.lr, i, 2, 8);
        assert_eq!(
            lr as f32,
            s["lr_used"].as_f64().unwrap() as f32,
            "step {i}: lr"
        );
        let scale = clip_scale(norm, Some(1.0));
        clipped += (scale < 1.0) as usize;
        model = opt.step(model, grads, lr, scale);
        let w = values(model.w.val());
        let b = values(model.b.val());
        let (ew, eb) = (
            max_rel(&w, &floats(&s["w_after"])),
            max_rel(&b, &floats(&s["b_after"])),
        );
        assert!(
            ew <= 1e-6 && eb <= 1e-6,
            "step {i}: parameters off by {ew:.1e} / {eb:.1e} (relative)"
        );
    }
    assert!(clipped > 0, "clipping must be exercised");
}
