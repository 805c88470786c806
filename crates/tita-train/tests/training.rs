//! The trainers end to end on the fixture models: DPO and SFT lower their loss, checkpoints load
//! back with the input's key names and dtypes, an interrupted run resumes to the same numbers,
//! and bad data is reported with its line number.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use safetensors::SafeTensors;
use tita_train::{train, Objective, RunOptions, StepMetrics, TrainConfig, TrainPaths};

type A = Autodiff<Flex>;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

const PAIRS: &str = r#"{"image": "images/square56.png", "prompt": "Is there a cat in the image?", "chosen": "Yes, there is a cat.", "rejected": "No."}
{"image": "images/square56.png", "prompt": "How many objects are there?", "chosen": "There are two objects.", "rejected": "There are five dogs and a red car in the picture."}
{"image": "images/chelsea.png", "prompt": "What animal is this?", "chosen": "A cat.", "rejected": "A dog on a skateboard."}
{"image": "images/chelsea.png", "prompt": "Is there a car?", "chosen": "No.", "rejected": "Yes, a red car."}
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn paths(data: PathBuf, out: PathBuf) -> TrainPaths {
    TrainPaths {
        model: fixtures().join("llava-reward"),
        reference: Some(fixtures().join("llava-reward-ref")),
        data,
        images: Some(fixtures()),
        out,
        resume: None,
    }
}

fn dpo_config(steps: usize) -> TrainConfig {
    TrainConfig {
        objective: Objective::Dpo { beta: 0.1 },
        batch_size: 2,
        grad_accum: 2,
        max_steps: Some(steps),
        ..TrainConfig::default()
    }
}

fn run(paths: &TrainPaths, config: &TrainConfig, stop_after: Option<usize>) -> Vec<StepMetrics> {
    let options = RunOptions {
        progress: false,
        stop_after,
        ..Default::default()
    };
    train::<A>(paths, config, &options, &Default::default())
        .unwrap()
        .metrics
}

/// Asserts that the checkpoint saved in `saved` holds the tensors of `input`'s, by name, dtype
/// and shape; returns the sorted names and how many tensors' values changed.
fn same_layout(input: &Path, saved: &Path) -> (Vec<String>, usize) {
    let a = std::fs::read(input.join("model.safetensors")).unwrap();
    let b = std::fs::read(saved.join("model.safetensors")).unwrap();
    let (a, b) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&b).unwrap(),
    );
    let (mut na, mut nb) = (a.names(), b.names());
    na.sort();
    nb.sort();
    assert_eq!(na, nb);
    let mut changed = 0;
    for &name in &na {
        let (ta, tb) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!((ta.dtype(), ta.shape()), (tb.dtype(), tb.shape()), "{name}");
        changed += usize::from(ta.data() != tb.data());
    }
    (na.into_iter().map(str::to_string).collect(), changed)
}

#[test]
fn dpo_steps_lower_the_loss_and_raise_reward_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "pairs.jsonl", PAIRS);
    let out = dir.path().join("out");
    let m = run(&paths(data, out.clone()), &dpo_config(6), None);
    assert_eq!(m.len(), 6);
    let (first, last) = (&m[0], &m[5]);
    assert_eq!(first.step, 1);
    // Policy and reference differ, so step 1's loss is not log 2; it must fall from there.
    assert!(
        last.loss < first.loss - 0.05,
        "loss {} -> {}",
        first.loss,
        last.loss
    );
    assert!(last.reward_accuracy.unwrap() > first.reward_accuracy.unwrap());
    assert_eq!(last.reward_accuracy, Some(1.0));
    assert!(m
        .iter()
        .all(|s| s.loss.is_finite() && s.grad_norm > 0.0 && s.tokens > 0));

    // metrics.jsonl holds the same lines; the final model is an HF checkpoint like the input.
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let parsed: Vec<StepMetrics> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), m.len());
    for (a, b) in parsed.iter().zip(&m) {
        assert_eq!(a.step, b.step);
        assert!((a.loss - b.loss).abs() < 1e-12);
    }
    let (_, changed) = same_layout(&fixtures().join("llava-reward"), &out.join("final"));
    assert!(changed > 10, "training changed only {changed} tensors");
    for f in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
        assert!(out.join("final").join(f).is_file(), "{f}");
    }
    tita_models::Vlm::<Flex>::load(&out.join("final"), &Default::default()).unwrap();
}

#[test]
fn interrupted_run_resumes_to_the_same_steps_and_losses() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "pairs.jsonl", PAIRS);
    let mut config = dpo_config(4);
    config.warmup_steps = 1;
    config.save_every = Some(2);
    config.freeze_vision = true;

    let whole = run(&paths(data.clone(), dir.path().join("a")), &config, None);

    let mut p = paths(data, dir.path().join("b"));
    let first = run(&p, &config, Some(3));
    assert_eq!(first.len(), 3);
    // Interrupted after step 3; the last checkpoint is step 2, so step 3 is redone.
    p.resume = Some(dir.path().join("b"));
    let resumed = run(&p, &config, None);
    assert_eq!(resumed.len(), 4);
    for (a, b) in whole.iter().zip(&resumed) {
        assert_eq!(a.step, b.step);
        assert!(
            (a.loss - b.loss).abs() <= 1e-6,
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
        assert!((a.lr - b.lr).abs() <= 1e-15);
    }
    let lines = std::fs::read_to_string(dir.path().join("b/metrics.jsonl")).unwrap();
    let steps: Vec<usize> = lines
        .lines()
        .map(|l| serde_json::from_str::<StepMetrics>(l).unwrap().step)
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4], "no step lost or written twice");
}

#[test]
fn resumes_continue_only_their_own_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "pairs.jsonl", PAIRS);
    let mut config = dpo_config(4);
    config.save_every = Some(1);
    let out = dir.path().join("out");
    let mut p = paths(data.clone(), out.clone());
    run(&p, &config, Some(3));
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    p.resume = Some(out.clone());
    let refused = |p: &TrainPaths, want: &str| {
        let err = train::<A>(p, &config, &RunOptions::default(), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
        assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before);
    };
    // Another model, a reference the run did not have (or lacking its own), other data of the
    // same row count: each named.
    let mut other = p.clone();
    other.model = fixtures().join("llava-reward-ref");
    refused(&other, "--model");
    let mut other = p.clone();
    other.reference = None;
    refused(&other, "--reference missing: the run's was");
    let shuffled: String = PAIRS.lines().rev().map(|l| format!("{l}\n")).collect();
    let mut other = p.clone();
    other.data = write(dir.path(), "shuffled.jsonl", &shuffled);
    refused(&other, "--data");
    // Other settings: the field is named, not the whole configuration.
    let mut lr = config.clone();
    lr.optimizer.lr *= 10.0;
    let err = train::<A>(&p, &lr, &RunOptions::default(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("optimizer.lr") && !err.contains("TrainConfig"),
        "{err}"
    );
    // An edited step is refused, not trusted.
    let state_path = out.join("checkpoint-3/trainer_state.json");
    let state = std::fs::read_to_string(&state_path).unwrap();
    std::fs::write(&state_path, state.replace("\"step\": 3", "\"step\": 99")).unwrap();
    refused(&p, "says step 99 of 4");
    std::fs::write(&state_path, &state).unwrap();
    // A truncated newest checkpoint: the one before it is taken, and the run ends as a whole
    // run would, keeping the metrics lines of the steps it kept byte for byte.
    let weights = out.join("checkpoint-3/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let resumed = run(&p, &config, None);
    let whole = run(&paths(data, dir.path().join("whole")), &config, None);
    assert_eq!(resumed.len(), 4);
    for (a, b) in whole.iter().zip(&resumed) {
        assert!((a.loss - b.loss).abs() <= 1e-6, "step {}", a.step);
    }
    let after = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let two_lines = before
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .unwrap()
        .0;
    assert_eq!(after[..=two_lines], before[..=two_lines]);

    // A run stopped before its first save: --resume says to start again.
    let early = dir.path().join("early");
    let mut q = paths(p.data.clone(), early.clone());
    config.save_every = None;
    run(&q, &config, Some(1));
    q.resume = Some(early);
    let err = train::<A>(&q, &config, &RunOptions::default(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no complete checkpoint") && err.contains("--overwrite"),
        "{err}"
    );
}

#[test]
fn sft_lowers_the_response_cross_entropy() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(
        dir.path(),
        "sft.jsonl",
        r#"{"image": "images/square56.png", "prompt": "What is this?", "response": "A square."}
{"image": "images/chelsea.png", "prompt": "What animal is this?", "response": "A cat."}
"#,
    );
    let config = TrainConfig {
        objective: Objective::Sft,
        batch_size: 2,
        max_steps: Some(5),
        ..TrainConfig::default()
    };
    let mut p = paths(data, dir.path().join("out"));
    p.reference = None;
    let m = run(&p, &config, None);
    assert!(
        m[4].loss < m[0].loss * 0.9,
        "{} -> {}",
        m[0].loss,
        m[4].loss
    );
    assert!(m[0].reward_accuracy.is_none());
}

#[test]
fn bad_data_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = PAIRS.lines().next().unwrap();
    let long = "word ".repeat(300);
    let cases = [
        (
            format!("{good}\n{{\"image\": \"images/nope.png\", \"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}}\n"),
            ":2: image `images/nope.png` not found",
        ),
        (
            format!("{good}\n{good}\n{{\"image\": \"images/square56.png\", \"prompt\": \"p\", \"chosen\": \" \", \"rejected\": \"b\"}}\n"),
            ":3: field `chosen` is empty",
        ),
        (format!("{good}\n{{\"image\": \"images/square56.png\", \"prompt\": \n"), ":2: malformed line"),
        (
            format!("{{\"image\": \"images/square56.png\", \"prompt\": \"p\", \"chosen\": \"{long}\", \"rejected\": \"b\"}}\n"),
            ":1: prompt (",
        ),
        (
            format!("{good}\n{{\"image\": \"config.json\", \"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}}\n"),
            ":2: ",
        ),
    ];
    std::fs::copy(
        fixtures().join("llava-reward/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    for (i, (text, want)) in cases.iter().enumerate() {
        let data = write(dir.path(), &format!("bad{i}.jsonl"), text);
        let mut p = paths(data, dir.path().join(format!("out{i}")));
        if i == 4 {
            p.images = Some(dir.path().to_path_buf());
            std::fs::create_dir_all(dir.path().join("images")).unwrap();
            std::fs::copy(
                fixtures().join("images/square56.png"),
                dir.path().join("images/square56.png"),
            )
            .unwrap();
        }
        let err = train::<A>(
            &p,
            &dpo_config(1),
            &RunOptions::default(),
            &Default::default(),
        )
        .err()
        .unwrap_or_else(|| panic!("case {i} must fail"))
        .to_string();
        assert!(
            err.contains(&format!("bad{i}.jsonl{want}")),
            "case {i}: {err}"
        );
    }
}

fn checkpoint_steps(out: &Path) -> Vec<usize> {
    let mut steps: Vec<usize> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix("checkpoint-").map(|n| n.parse().unwrap())
        })
        .collect();
    steps.sort();
    steps
}

#[test]
fn output_folders_are_never_mixed_and_old_checkpoints_go() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "pairs.jsonl", PAIRS);
    let out = dir.path().join("out");
    let p = paths(data, out.clone());
    let mut config = dpo_config(4);
    config.save_every = Some(1);
    let options = |overwrite, save_total_limit| RunOptions {
        overwrite,
        save_total_limit,
        ..Default::default()
    };
    let a = &Default::default();
    // --save-total-limit 2 keeps the newest two.
    train::<A>(&p, &config, &options(false, Some(2)), a).unwrap();
    assert_eq!(checkpoint_steps(&out), [3, 4]);
    let metrics = std::fs::read(out.join("metrics.jsonl")).unwrap();
    // A fresh run into that folder is refused and changes nothing.
    let err = train::<A>(&p, &dpo_config(2), &options(false, None), a)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "holds another run's files (checkpoint-3, checkpoint-4, final, metrics.jsonl)"
        ) && err.contains("--resume")
            && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), metrics);
    assert_eq!(checkpoint_steps(&out), [3, 4]);
    // --overwrite clears it: no stale checkpoint survives for a later --resume to pick up.
    train::<A>(&p, &dpo_config(2), &options(true, None), a).unwrap();
    assert_eq!(checkpoint_steps(&out), [2]);
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    // --resume together with --overwrite is a contradiction.
    let mut r = p.clone();
    r.resume = Some(out.clone());
    let err = train::<A>(&r, &dpo_config(2), &options(true, None), a)
        .unwrap_err()
        .to_string();
    assert!(err.contains("give one"), "{err}");
}

#[test]
fn settings_out_of_range_name_the_flag_and_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "pairs.jsonl", PAIRS);
    let p = paths(data, dir.path().join("out"));
    let cases: Vec<(TrainConfig, &str)> = vec![
        (
            TrainConfig {
                save_every: Some(0),
                ..dpo_config(1)
            },
            "invalid argument `save-every`: 0 is outside [1, ∞)",
        ),
        (
            TrainConfig {
                objective: Objective::Dpo { beta: -1.0 },
                ..dpo_config(1)
            },
            "invalid argument `beta`: -1 must be a finite number > 0",
        ),
        (
            TrainConfig {
                objective: Objective::Dpo { beta: 0.0 },
                ..dpo_config(1)
            },
            "invalid argument `beta`: 0 must be a finite number > 0",
        ),
        (
            TrainConfig {
                optimizer: tita_train::optim::AdamWConfig {
                    lr: f64::NAN,
                    ..Default::default()
                },
                ..dpo_config(1)
            },
            "invalid argument `lr`: NaN must be a finite number > 0",
        ),
        (
            TrainConfig {
                optimizer: tita_train::optim::AdamWConfig {
                    lr: f64::INFINITY,
                    ..Default::default()
                },
                ..dpo_config(1)
            },
            "invalid argument `lr`: inf must be a finite number > 0",
        ),
        (
            TrainConfig {
                max_grad_norm: Some(-1.0),
                ..dpo_config(1)
            },
            "invalid argument `max-grad-norm`: -1 must be a finite number > 0",
        ),
    ];
    for (config, want) in cases {
        let err = train::<A>(&p, &config, &RunOptions::default(), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(want), "{err}");
    }
    let options = RunOptions {
        save_total_limit: Some(0),
        ..Default::default()
    };
    let err = train::<A>(&p, &dpo_config(1), &options, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid argument `save-total-limit`: 0 is outside [1, ∞)"),
        "{err}"
    );
    assert!(
        !p.out.join("metrics.jsonl").exists(),
        "a refused run writes nothing"
    );
}

#[test]
fn a_diverging_run_stops_at_the_first_non_finite_step_and_keeps_its_good_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "pairs.jsonl", PAIRS);
    let out = dir.path().join("out");
    let p = paths(data, out.clone());
    let mut config = dpo_config(8);
    config.optimizer.lr = 1e9;
    config.max_grad_norm = None;
    config.save_every = Some(1);
    let err = train::<A>(&p, &config, &RunOptions::default(), &Default::default())
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(err.contains("went non-finite"), "{err}");
    // Every metrics line written is a finite, parseable step; nothing after the failure.
    let metrics: Vec<StepMetrics> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(metrics
        .iter()
        .all(|m| m.loss.is_finite() && m.grad_norm.is_finite()));
    let failed = metrics.len() + 1;
    assert!(
        err.contains(&format!("at step {failed}"))
            || err.contains(&format!("checkpoint-{}", metrics.len())),
        "the error names the step ({failed}) or the checkpoint it refused: {err}"
    );
    assert!(
        !out.join("final").exists(),
        "no final model after a failure"
    );
    let steps = checkpoint_steps(&out);
    assert!(steps.iter().all(|&s| s < failed), "{steps:?}");
    assert!(!std::fs::read_dir(&out).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
    // The last checkpoint left is whole and loads (every weight finite).
    if let Some(last) = steps.last() {
        tita_models::Vlm::<Flex>::load(
            &out.join(format!("checkpoint-{last}")),
            &Default::default(),
        )
        .unwrap();
    }
}

#[test]
fn pairs_with_the_same_answers_are_left_out_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let same = r#"{"image": "images/chelsea.png", "prompt": "What is this?", "chosen": "A cat.", "rejected": " A cat. "}"#;
    let data = write(dir.path(), "pairs.jsonl", &format!("{PAIRS}{same}\n"));
    let summary = train::<A>(
        &paths(data, dir.path().join("out")),
        &dpo_config(1),
        &RunOptions::default(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(summary.dropped_pairs, [5]);
    let state = std::fs::read_to_string(dir.path().join("out/checkpoint-1/trainer_state.json"));
    assert!(state.unwrap().contains("\"examples\": 4"));
    let only = write(dir.path(), "same.jsonl", &format!("{same}\n"));
    let err = train::<A>(
        &paths(only, dir.path().join("out2")),
        &dpo_config(1),
        &RunOptions::default(),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nothing to learn from"), "{err}");
}

#[test]
fn an_update_that_breaks_the_model_is_not_saved() {
    // The loss of each step is computed before its update; the last update is checked on its own.
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "pairs.jsonl", PAIRS);
    let out = dir.path().join("out");
    // At this rate step 1's update leaves the model finite and step 2's breaks it; step 2 is
    // the last, so no loss would ever see it.
    let mut config = dpo_config(2);
    config.optimizer.lr = 1e6;
    config.max_grad_norm = None;
    let err = train::<A>(
        &paths(data, out.clone()),
        &config,
        &RunOptions::default(),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("the model after step 2")
            && err.contains("checkpoint-2 was not written")
            && err.contains("lower the learning rate"),
        "{err}"
    );
    assert!(!out.join("final").exists() && checkpoint_steps(&out).is_empty());
}

/// DPO of a Qwen2.5-VL reward model (reference: the fixture target, same tokenizer): the loss
/// falls, and the final checkpoint is in the hub layout and dtype it was loaded from.
#[test]
fn dpo_on_qwen_saves_a_hub_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let q = fixtures().join("qwen2_5_vl");
    let data = write(
        dir.path(),
        "pairs.jsonl",
        r#"{"image": "qwen2_5_vl/images/image_main_112x84.png", "prompt": "What is in this image?", "chosen": "A red square and a blue disc.", "rejected": "Two cats on a sofa."}
{"image": "qwen2_5_vl/images/image_resize_200x90.png", "prompt": "Describe the picture.", "chosen": "Colour gradients.", "rejected": "A dog."}
"#,
    );
    let out = dir.path().join("out");
    let paths = TrainPaths {
        model: q.join("reward"),
        reference: Some(q.join("model")),
        ..paths(data, out.clone())
    };
    let config = TrainConfig {
        batch_size: 2,
        grad_accum: 1,
        ..dpo_config(4)
    };
    let m = run(&paths, &config, None);
    assert!(m[3].loss < m[0].loss, "loss {} -> {}", m[0].loss, m[3].loss);
    let (names, _) = same_layout(&q.join("reward"), &out.join("final"));
    assert!(
        names.iter().any(|n| n.starts_with("visual.")) && !names.contains(&"lm_head.weight".into())
    );
    tita_models::Vlm::<Flex>::load(&out.join("final"), &Default::default()).unwrap();
}

fn lora_config(steps: usize) -> TrainConfig {
    let mut lora = tita_models::LoraConfig::new(4, 8.0);
    lora.target_modules = vec!["all-linear".into()];
    let mut config = TrainConfig {
        lora: Some(lora),
        ..dpo_config(steps)
    };
    // LoRA takes a larger step than full fine-tuning (B starts at zero).
    config.optimizer.lr = 5e-3;
    config
}

/// The names of the tensors whose stored bytes differ between two checkpoints of one layout.
fn changed_tensors(a: &Path, b: &Path) -> Vec<String> {
    let (a, b) = (
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap(),
    );
    let (a, b) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&b).unwrap(),
    );
    let mut out: Vec<String> = a
        .names()
        .into_iter()
        .filter(|n| a.tensor(n).unwrap().data() != b.tensor(n).unwrap().data())
        .map(str::to_string)
        .collect();
    out.sort();
    out
}

/// DPO with LoRA: the adapter starts as a no-op (policy = its own frozen base, the reference:
/// loss log 2), the loss falls as in full training, and only the adapted projections change;
/// checkpoints hold the adapter in PEFT's layout and the optimiser state of A and B only, and
/// an interrupted run resumes to the same losses.
#[test]
fn lora_dpo_trains_only_the_adapters_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "pairs.jsonl", PAIRS);
    let mut config = lora_config(4);
    config.save_every = Some(2);
    let mut p = paths(data.clone(), dir.path().join("a"));
    p.reference = None;
    let m = run(&p, &config, None);
    assert!(
        (m[0].loss - std::f64::consts::LN_2).abs() < 1e-6,
        "{}",
        m[0].loss
    );
    assert!(
        m[3].loss < m[0].loss - 0.05,
        "loss {} -> {}",
        m[0].loss,
        m[3].loss
    );
    assert!(m.iter().all(|s| s.grad_norm > 0.0));

    let out = dir.path().join("a");
    let base = fixtures().join("llava-reward");
    let changed = changed_tensors(&base, &out.join("final"));
    let layers = 3;
    assert_eq!(changed.len(), 7 * layers, "{changed:?}");
    assert!(changed.iter().all(|n| {
        n.starts_with("language_model.model.layers.")
            && tita_models::lora::PROJECTIONS
                .iter()
                .any(|p| n.ends_with(&format!("{p}.weight")))
    }));
    let ckpt = out.join("checkpoint-4");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "trainer_state.json",
    ] {
        assert!(ckpt.join(f).is_file(), "{f}");
    }
    assert!(!ckpt.join("model.safetensors").exists());
    let opt = std::fs::read(ckpt.join("optimizer.safetensors")).unwrap();
    let opt = SafeTensors::deserialize(&opt).unwrap();
    assert_eq!(opt.names().len(), 3 * 2 * 7 * layers);
    assert!(
        opt.names().iter().all(|n| n.contains(".lora_")),
        "{:?}",
        opt.names()
    );
    let mut model = tita_models::Vlm::<Flex>::load(&base, &Default::default()).unwrap();
    let loaded = model
        .load_adapter(&out.join("final-adapter"), &Default::default())
        .unwrap();
    let want = config.lora.clone().unwrap();
    assert_eq!(loaded.targets(), want.targets());
    assert_eq!((loaded.r, loaded.scaling()), (want.r, want.scaling()));

    // Interrupted after step 3 (last checkpoint: step 2), resumed: the same losses.
    let mut q = paths(data, dir.path().join("b"));
    q.reference = None;
    assert_eq!(run(&q, &config, Some(3)).len(), 3);
    q.resume = Some(dir.path().join("b"));
    let resumed = run(&q, &config, None);
    for (a, b) in m.iter().zip(&resumed) {
        assert!(
            (a.loss - b.loss).abs() <= 1e-6,
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
    }
}
