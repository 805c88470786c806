//! Non-model references (fixtures/reference/reference.json, PyTorch 2.15): VCD's noise schedule.

use std::path::PathBuf;

use tita_core::noise::{add_noise_with, alpha_bar};

fn reference() -> serde_json::Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/reference/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn vcd_schedule_and_noised_image_match_pytorch() {
    let r = &reference()["vcd_noise"];
    let table = r["alpha_bar"].as_object().unwrap();
    assert_eq!(table.len(), 11);
    for (t, want) in table {
        let got = alpha_bar(t.parse().unwrap());
        let want = want.as_f64().unwrap() as f32;
        assert!((got - want).abs() <= 1e-6, "ā_{t}: {got} vs {want}");
    }
    let mut x = floats(&r["x0"]);
    let t = r["t"].as_u64().unwrap() as usize;
    add_noise_with(&mut x, t, &floats(&r["eps"])).unwrap();
    let want = floats(&r["x_t"]);
    assert_eq!(x.len(), want.len());
    let max = x
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(max <= 1e-6, "x_t max |Δ| {max}");
}
