//! What every scorer test needs: the fixture folder, `expected.json`, scoring by registry name,
//! and comparison with the README's tolerance.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tita_bench::benchmark::{by_name, ScoreOptions, Scorecard};

pub fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/benchmarks")
}

pub fn expected() -> Value {
    let text = std::fs::read_to_string(data().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn score(name: &str, dir: &Path, answers: &Path) -> tita_core::Result<Scorecard> {
    by_name(name)
        .unwrap()
        .score(dir, answers, &ScoreOptions::default())
}

/// Every value of `want` is in `got`: integers and strings exactly, floats within 1e-12
/// relative (the README's tolerance).
pub fn assert_matches(got: &Value, want: &Value, at: &str) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, v) in w {
                let inner = g
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} missing in {got}"));
                assert_matches(inner, v, &format!("{at}.{k}"));
            }
        }
        (Value::Number(g), Value::Number(w)) if w.is_f64() || g.is_f64() => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!(
                g == w || (g - w).abs() <= 1e-12 * g.abs().max(w.abs()),
                "{at}: {g} != {w}"
            );
        }
        _ => assert_eq!(got, want, "{at}"),
    }
}
