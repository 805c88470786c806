//! The built-in demo: the committed checkpoints reproduce the committed results, the toy-scale
//! pipeline (`--quick`) runs end to end and yields every metric, and CHAIR / ground-truth pairs
//! follow their definitions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use rand::SeedableRng;
use tita_bench::demo::{
    self, ground_truth_pairs, mentioned, ChairMetrics, DemoConfig, DemoResults, MODELS,
};
use tita_bench::pope::YesNoMetrics;
use tita_bench::world::{self, Category, Sampler, Statistics};

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../demo")
}

/// Every number in the JSON is finite and nothing is null (serde writes NaN as null).
fn assert_all_finite(v: &serde_json::Value, at: &str) {
    match v {
        serde_json::Value::Null => panic!("{at} is null (NaN?)"),
        serde_json::Value::Number(n) => {
            assert!(n.as_f64().is_some_and(f64::is_finite), "{at} = {n}")
        }
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| assert_all_finite(x, &format!("{at}[{i}]"))),
        serde_json::Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| assert_all_finite(x, &format!("{at}.{k}"))),
        _ => {}
    }
}

fn methods(results: &DemoResults) -> Vec<String> {
    let config = &results.config;
    let mut m = vec!["greedy".to_string()];
    m.extend(config.lambdas.iter().map(|l| format!("tita-{l}")));
    m.push(format!("reference-{}", config.reference_alpha));
    m.push(format!("vcd-{}", results.tuning.vcd_alpha));
    m.push("m3id-0.02".into());
    m.push(demo::MARINE_TRUTH.into());
    m.push(demo::TARGET_DPO.into());
    m.push(demo::REWARD_ALONE.into());
    m
}

/// The knobs were chosen among the values tried, as the best on the validation split.
fn assert_tuned(results: &DemoResults) {
    let (config, t) = (&results.config, &results.tuning);
    let tried = |values: Vec<f64>, accuracies: Vec<f64>, chosen: f64| {
        assert!(values.contains(&chosen), "{chosen} not among {values:?}");
        let best = accuracies.iter().cloned().fold(f64::MIN, f64::max);
        let at = values.iter().position(|&v| v == chosen).unwrap();
        assert_eq!(accuracies[at], best, "{values:?} {accuracies:?}");
    };
    let lambdas: Vec<f64> = config.lambdas.iter().map(|&l| l as f64).collect();
    assert_eq!(
        t.tita.iter().map(|x| x.value as f64).collect::<Vec<_>>(),
        lambdas
    );
    tried(
        lambdas,
        t.tita.iter().map(|x| x.accuracy).collect(),
        t.lambda as f64,
    );
    let alphas: Vec<f64> = config.vcd_alphas.iter().map(|&a| a as f64).collect();
    tried(
        alphas,
        t.vcd.iter().map(|x| x.accuracy).collect(),
        t.vcd_alpha as f64,
    );
    assert_eq!(
        t.dpo.iter().map(|x| x.value).collect::<Vec<_>>(),
        config.target_dpo
    );
    assert!(t.dpo.iter().any(|x| x.value == t.target_dpo));
}

fn assert_complete(results: &DemoResults, out: &Path) {
    let names = methods(results);
    assert_eq!(results.pope.len(), 3, "three POPE samplers");
    for row in results.pope.values() {
        assert_eq!(
            row.keys().cloned().collect::<BTreeSet<_>>(),
            names.iter().cloned().collect()
        );
    }
    for n in &names {
        assert!(results.chair.contains_key(n), "CHAIR of {n}");
        assert!(results.pope_overall[n].count > 0);
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_all_finite(&json, "results");
    for f in ["report.md", "lambda.png", "methods.png", "chair.png"] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let examples: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("![test image"))
        .collect();
    assert_eq!(examples.len(), 3);
    for line in examples {
        let file = line.split('(').nth(1).unwrap().trim_end_matches(')');
        assert!(out.join(file).is_file(), "{file}");
    }
}

#[test]
fn committed_checkpoints_reproduce_committed_results() {
    let dir = committed();
    let config: DemoConfig = tita_core::error::read_json_as(&dir.join("config.json")).unwrap();
    assert_eq!(
        config,
        DemoConfig::full(),
        "`--retrain` rebuilds what is committed"
    );
    assert_eq!(config.seeds.len(), 3, "three seeds of the whole pipeline");
    let out = tempfile::tempdir().unwrap();
    let (runs, summary) =
        demo::evaluate_seeds::<Flex>(&dir, out.path(), &config, false, &Default::default())
            .unwrap();
    for results in &runs {
        let seed_dir = demo::seed_dir(&dir, results.config.seed);
        let expected: DemoResults =
            tita_core::error::read_json_as(&seed_dir.join("results.json")).unwrap();
        assert_complete(results, &demo::seed_dir(out.path(), results.config.seed));
        assert_tuned(results);
        assert_eq!(results.tuning, expected.tuning);
        // Every metric of every method and split, to 1e-12 (JSON's float round trip): greedy
        // decoding on the backend and float precision that made the committed results is
        // deterministic, so one changed answer (0.002 of a split's accuracy, under the 0.01
        // the CLI tolerates across backends) is a regression here, not noise.
        for (what, got, want) in [
            ("pope", to_json(&results.pope), to_json(&expected.pope)),
            (
                "pope_overall",
                to_json(&results.pope_overall),
                to_json(&expected.pope_overall),
            ),
            ("chair", to_json(&results.chair), to_json(&expected.chair)),
        ] {
            same_numbers(&got, &want, what);
        }
        let (diff, _) = demo::max_difference(results, &expected).unwrap();
        assert!(diff <= 1e-12);
    }
    // The summary over the seeds: recomputed, it is the committed one, and all finite.
    let committed_summary: serde_json::Value =
        tita_core::error::read_json_as(&dir.join("summary.json")).unwrap();
    same_numbers(&to_json(&summary), &committed_summary, "summary");
    assert_all_finite(&committed_summary, "summary");
    for f in [
        "report.md",
        "seeds.png",
        "seeds-paired.png",
        "seeds-chair.png",
    ] {
        assert!(dir.join(f).is_file(), "{f} committed");
    }
}

#[test]
fn committed_training_reports_a_tower_that_sees_and_a_small_reward_model() {
    let dir = committed();
    let config: DemoConfig = tita_core::error::read_json_as(&dir.join("config.json")).unwrap();
    for seed in &config.seeds {
        let path = demo::seed_dir(&dir, *seed).join("training.json");
        let training: serde_json::Value = tita_core::error::read_json_as(&path).unwrap();
        assert_all_finite(&training, &path.display().to_string());
        let accuracy = training["target-tower"]["accuracy"].as_f64().unwrap();
        assert!(
            accuracy > 0.9,
            "seed {seed}: the target's tower names the exact set of categories of {accuracy} of held-out images"
        );
        let (t, r) = (
            training["parameters"]["target"].as_u64().unwrap(),
            training["parameters"]["reward"].as_u64().unwrap(),
        );
        assert!(r * 4 <= t, "reward {r} parameters, target {t}");
    }
}

fn to_json(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

/// The same keys everywhere, and every number within 1e-12.
fn same_numbers(got: &serde_json::Value, want: &serde_json::Value, at: &str) {
    use serde_json::Value::{Array, Number, Object};
    match (got, want) {
        (Array(a), Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: different lengths");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                same_numbers(x, y, &format!("{at}[{i}]"));
            }
        }
        (Object(a), Object(b)) => {
            let keys = |m: &serde_json::Map<String, serde_json::Value>| {
                m.keys().cloned().collect::<Vec<_>>()
            };
            assert_eq!(keys(a), keys(b), "{at}: different entries");
            for (k, v) in a {
                same_numbers(v, &b[k], &format!("{at}/{k}"));
            }
        }
        (Number(x), Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-12, "{at}: {x} vs committed {y}");
        }
        _ => assert_eq!(got, want, "{at}"),
    }
}

#[test]
fn quick_pipeline_runs_end_to_end_with_every_metric() {
    let out = tempfile::tempdir().unwrap();
    let config = DemoConfig::quick();
    let device = Default::default();
    let (runs, summary) = demo::retrain_seeds::<Flex>(out.path(), &config, false, &device).unwrap();
    assert_eq!(runs.len(), config.seeds.len());
    let results = &runs[0];
    let run = demo::seed_dir(out.path(), config.seeds[0]);
    assert_complete(results, &run);
    assert_tuned(results);
    for m in MODELS {
        let dir = run.join("models").join(m);
        tita_decode::Pipeline::<Flex>::load(&dir, &device).unwrap();
    }
    // Every stage's training curve, every DPO candidate's and the pairs of both sources.
    let mut curves: Vec<PathBuf> = [
        "target-align",
        "target",
        "reward-align",
        "reward-sft",
        "reward",
    ]
    .iter()
    .map(|r| run.join("runs").join(r))
    .collect();
    curves.extend((0..config.target_dpo.len()).map(|k| {
        run.join("tune")
            .join("runs")
            .join(format!("{}-{k}", demo::TARGET_DPO))
    }));
    for c in curves {
        assert!(c.join("metrics.png").is_file(), "{}", c.display());
    }
    let training: serde_json::Value =
        tita_core::error::read_json_as(&run.join("training.json")).unwrap();
    assert_all_finite(&training, "training");
    let stages: BTreeSet<&str> = training
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = BTreeSet::from([
        "parameters",
        "target-tower",
        "reward-tower",
        "target-align",
        "target",
        "reward-align",
        "reward-sft",
        "reward",
    ]);
    let candidates: Vec<String> = (0..config.target_dpo.len())
        .map(|k| format!("{}-{k}", demo::TARGET_DPO))
        .collect();
    expected.extend(candidates.iter().map(String::as_str));
    assert_eq!(stages, expected);
    for tower in ["target-tower", "reward-tower"] {
        let a = training[tower]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{tower} accuracy {a}");
    }
    // The summary over the seeds: every row, finite, with its plots.
    assert_eq!(
        summary
            .methods
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>(),
        demo::summary_rows(&config)
    );
    let json: serde_json::Value =
        tita_core::error::read_json_as(&out.path().join("summary.json")).unwrap();
    assert_all_finite(&json, "summary");
    for f in [
        "report.md",
        "seeds.png",
        "seeds-paired.png",
        "seeds-chair.png",
    ] {
        assert!(out.path().join(f).is_file(), "{f} written");
    }

    // A second run finds every stage and answer done: same results, nothing answered again.
    let (again, _) = demo::retrain_seeds::<Flex>(out.path(), &config, false, &device).unwrap();
    assert_eq!(demo::max_difference(&again[0], results).unwrap().0, 0.0);
    assert!(
        again[0].seconds.values().all(|&s| s == 0.0),
        "{:?}",
        again[0].seconds
    );
    // Other settings are refused for an existing output directory.
    let other = DemoConfig {
        test_images: 7,
        ..config
    };
    let err = demo::retrain_seeds::<Flex>(out.path(), &other, false, &device).unwrap_err();
    assert!(err.to_string().contains("other settings"), "{err}");
}

/// A run of `seed` where the k-th method scores `base + 0.01 k` on every POPE metric.
fn fake_run(config: &DemoConfig, seed: u64, base: f64) -> DemoResults {
    let tuning = demo::Tuning {
        lambda: config.lambdas[1],
        vcd_alpha: config.vcd_alphas[0],
        target_dpo: config.target_dpo[0],
        tita: Vec::new(),
        vcd: Vec::new(),
        dpo: Vec::new(),
    };
    let names = demo::method_names(config, &tuning);
    let score = |k: usize| {
        let v = base + 0.01 * k as f64;
        YesNoMetrics {
            accuracy: v,
            precision: v,
            recall: v,
            f1: v,
            yes_ratio: v,
            count: 10,
        }
    };
    let row = || -> BTreeMap<String, YesNoMetrics> {
        names
            .iter()
            .enumerate()
            .map(|(k, n)| (n.clone(), score(k)))
            .collect()
    };
    DemoResults {
        config: config.for_seed(seed),
        pope: ["test-random", "test-popular", "test-adversarial"]
            .iter()
            .map(|s| (s.to_string(), row()))
            .collect(),
        pope_overall: row(),
        chair: names
            .iter()
            .map(|n| {
                let c = ChairMetrics {
                    chair_i: base,
                    ..Default::default()
                };
                (n.clone(), c)
            })
            .collect(),
        tuning,
        seconds: BTreeMap::new(),
    }
}

#[test]
fn seeds_summary_pairs_each_method_with_greedy_of_the_same_seed() {
    use demo::Spread;
    let s = Spread::of(&[0.5, 0.7, 0.6]);
    assert!((s.mean - 0.6).abs() < 1e-12);
    assert!((s.sd - 0.1).abs() < 1e-12, "sample sd: {}", s.sd);
    assert_eq!(Spread::of(&[0.4]).sd, 0.0);

    // Two seeds far apart: every method's spread is wide, but each is 0.01 k above greedy in
    // both, so its paired difference has no spread at all.
    let config = DemoConfig {
        seeds: vec![7, 8],
        ..DemoConfig::full()
    };
    let runs = [fake_run(&config, 7, 0.5), fake_run(&config, 8, 0.7)];
    let summary = demo::summarise(&config, &runs).unwrap();
    let rows: Vec<&str> = summary.methods.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(rows, demo::summary_rows(&config));
    let get = |n: &str| &summary.methods.iter().find(|(m, _)| m == n).unwrap().1;
    let greedy = get("greedy");
    assert!((greedy.accuracy.mean - 0.6).abs() < 1e-12);
    assert!((greedy.accuracy.sd - 0.2 / 2f64.sqrt()).abs() < 1e-12);
    // tita-tuned is the λ each seed chose (the second λ: method 2 after greedy and tita-0.2).
    let tuned = get(demo::TITA_TUNED);
    assert!((tuned.accuracy_vs_greedy.mean - 0.02).abs() < 1e-12);
    assert!(tuned.accuracy_vs_greedy.sd < 1e-12);
    assert!(tuned.accuracy.sd > 0.1);
    // vcd-tuned: VCD at the chosen α, after greedy, the λs and the reference mode.
    let vcd_k = 1 + config.lambdas.len() + 1;
    let vcd = get(demo::VCD_TUNED);
    assert!((vcd.popular_vs_greedy.mean - 0.01 * vcd_k as f64).abs() < 1e-12);
    assert!(get(demo::REWARD_ALONE).chair_i_vs_greedy.mean.abs() < 1e-12);
    // A seed that lacks a method is named.
    let mut broken = fake_run(&config, 8, 0.7);
    broken.pope_overall.remove(demo::REWARD_ALONE);
    let err = demo::summarise(&config, &[runs[0].clone(), broken]).unwrap_err();
    assert!(err.to_string().contains("seed 8"), "{err}");
}

#[test]
fn chair_counts_mentioned_objects_against_the_ground_truth() {
    let cat = |color, shape| Category { color, shape };
    // red = 0, green = 1; circle = 0, square = 1.
    assert_eq!(
        mentioned("a red circle , a green square and a red circle ."),
        BTreeSet::from([cat(0, 0), cat(1, 1)])
    );
    assert!(mentioned("red green circle square .").contains(&cat(1, 0)));
    assert!(mentioned("Yes").is_empty());
    let truth = BTreeSet::from([cat(0, 0), cat(2, 3)]);
    let m = ChairMetrics::of([
        ("a red circle and a green square .", truth.clone()), // 1 of 2 wrong
        ("a red circle .", truth.clone()),                    // right
        ("nothing .", truth.clone()),                         // says nothing
    ]);
    assert_eq!(m.captions, 3);
    assert!((m.chair_i - 1.0 / 3.0).abs() < 1e-12);
    assert!((m.chair_s - 1.0 / 3.0).abs() < 1e-12);
    assert!((m.recall - 2.0 / 6.0).abs() < 1e-12);
    assert!((m.objects_per_caption - 1.0).abs() < 1e-12);
}

#[test]
fn ground_truth_pairs_contrast_truth_with_the_likeliest_hallucination() {
    let train = world::split(5, 0, 80);
    let stats = Statistics::of(&train);
    let scenes = world::split(5, 1, 10);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let pairs = ground_truth_pairs(&scenes, &stats, &mut rng);
    let captions: Vec<&serde_json::Value> = pairs
        .iter()
        .filter(|p| p["prompt"] == world::CAPTION_PROMPT)
        .collect();
    assert_eq!(captions.len(), scenes.len());
    for (p, s) in captions.iter().zip(&scenes) {
        assert_eq!(p["chosen"], s.caption());
        let rejected = mentioned(p["rejected"].as_str().unwrap());
        // One present object swapped for the top adversarial category: same length.
        let present = s.present();
        let extra: Vec<&Category> = rejected.difference(&present).collect();
        let top = stats.ranked_negatives(&present, Sampler::Adversarial)[0];
        assert_eq!(extra, vec![&top]);
        assert_eq!(present.difference(&rejected).count(), 1);
        assert_eq!(rejected.len(), present.len());
    }
    for p in pairs
        .iter()
        .filter(|p| p["prompt"] != world::CAPTION_PROMPT)
    {
        let (c, r) = (
            p["chosen"].as_str().unwrap(),
            p["rejected"].as_str().unwrap(),
        );
        assert!((c == "Yes" && r == "No") || (c == "No" && r == "Yes"));
    }
    let yes = pairs.iter().filter(|p| p["chosen"] == "Yes").count();
    let no = pairs.iter().filter(|p| p["chosen"] == "No").count();
    assert_eq!(yes, no, "as many absent as present objects are asked about");
}
