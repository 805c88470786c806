//! The `tita-train` binary: help, and bad runs answered with the flag, its range and exit code 1,
//! before anything is written (or with another run's files left as they were).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tita-train"))
        .args(args)
        .output()
        .unwrap()
}

fn refused(args: &[&str], want: &str) {
    let out = train(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 1: the run refused it; 2: the command line's parser did (a value out of its range).
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{args:?}: {stderr}"
    );
    assert!(stderr.contains(want), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn help_lists_the_commands_and_output_flags() {
    let out = train(&["dpo", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--resume",
        "--overwrite",
        "--save-total-limit",
        "--beta",
        "--lora-r",
    ] {
        assert!(help.contains(flag), "{flag} missing");
    }
}

#[test]
fn bad_runs_fail_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.jsonl");
    std::fs::write(
        &data,
        r#"{"image": "images/square56.png", "prompt": "Is there a cat?", "chosen": "Yes.", "rejected": "No."}"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let model = fixtures().join("llava-reward");
    // The speed run's batch of nothing used to panic (chunks of size 0), and no steps printed NaN.
    for flag in ["--batch-size", "--steps"] {
        refused(
            &["speed", "--model", model.to_str().unwrap(), flag, "0"],
            "must be at least 1",
        );
    }
    let (model, data_s, out_s, images) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        fixtures().display().to_string(),
    );
    let base = [
        "dpo",
        "--model",
        model,
        "--data",
        data_s,
        "--images",
        &images,
        "--out",
        out_s,
        "--max-steps",
        "1",
    ];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    refused(
        &with(&["--beta", "-1"]),
        "invalid argument `beta`: -1 must be a finite number > 0",
    );
    refused(
        &with(&["--save-every", "0"]),
        "invalid argument `save-every`: 0 is outside [1, ∞)",
    );
    refused(
        &with(&["--lr", "NaN"]),
        "invalid argument `lr`: NaN must be a finite number > 0",
    );
    refused(
        &with(&["--save-total-limit", "0"]),
        "invalid argument `save-total-limit`: 0 is outside [1, ∞)",
    );
    refused(
        &with(&["--lora-r", "0"]),
        "invalid argument `lora-r`: 0 is outside [1, ∞)",
    );
    refused(
        &with(&["--lora-r", "4", "--lora-targets", "q_proj,lm_head"]),
        "invalid argument `lora-targets`: `lm_head` is not a decoder projection",
    );
    assert!(!out.exists(), "a refused run creates nothing");

    // Files no run of ours wrote (no manifest): refused, with --overwrite too, and left as
    // they were.
    std::fs::create_dir_all(out.join("checkpoint-7")).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{\"step\": 1}\n").unwrap();
    let before = listing(&out);
    refused(
        &with(&[]),
        "holds files that no run wrote (checkpoint-7, metrics.jsonl)",
    );
    refused(
        &with(&["--overwrite"]),
        "--overwrite deletes only a run's own outputs",
    );
    assert_eq!(listing(&out), before);
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap(),
        "{\"step\": 1}\n"
    );

    // Pair synthesis into an existing file, likewise.
    let questions = dir.path().join("q.jsonl");
    std::fs::write(
        &questions,
        r#"{"image": "images/square56.png", "prompt": "What is this?"}"#,
    )
    .unwrap();
    let target = fixtures().join("llava-target");
    refused(
        &[
            "pairs",
            "--model",
            target.to_str().unwrap(),
            "--questions",
            questions.to_str().unwrap(),
            "--images",
            &images,
            "--out",
            data_s,
        ],
        "pairs.jsonl: exists (another run's output); pass --resume",
    );
    assert!(std::fs::read_to_string(&data)
        .unwrap()
        .contains("Is there a cat?"));
}

/// Whether `out` shows a checkpoint being written: a `checkpoint-N.tmp` folder, or a
/// `checkpoint-N` without its `trainer_state.json` yet (N >= 2).
fn mid_checkpoint(out: &Path) -> bool {
    listing(out).iter().any(|name| {
        let Some(rest) = name.strip_prefix("checkpoint-") else {
            return false;
        };
        let step: usize = rest.trim_end_matches(".tmp").parse().unwrap_or(0);
        step >= 2 && (rest.ends_with(".tmp") || !out.join(name).join("trainer_state.json").exists())
    })
}

#[test]
fn a_run_killed_mid_checkpoint_resumes_to_the_same_final_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.jsonl");
    let pairs = [
        r#"{"image": "images/square56.png", "prompt": "Is there a cat?", "chosen": "Yes, a cat.", "rejected": "No."}"#,
        r#"{"image": "images/chelsea.png", "prompt": "What animal is this?", "chosen": "A cat.", "rejected": "A dog on a skateboard."}"#,
    ];
    std::fs::write(&data, pairs.join("\n")).unwrap();
    let model = fixtures().join("llava-reward");
    let images = fixtures().display().to_string();
    let args = |out: &Path| -> Vec<String> {
        [
            "dpo",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--images",
            &images,
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "8",
            "--save-every",
            "1",
            "--batch-size",
            "2",
            "--warmup-steps",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole = dir.path().join("whole");
    let out = train(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same run, killed (SIGKILL: no chance to clean up) while it writes a checkpoint.
    let killed = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tita-train"))
        .args(args(&killed))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut caught = false;
    while child.try_wait().unwrap().is_none() {
        if killed.is_dir() && mid_checkpoint(&killed) {
            child.kill().unwrap();
            caught = true;
            break;
        }
    }
    child.wait().unwrap();
    assert!(
        caught,
        "the run finished before it could be killed mid-checkpoint"
    );
    assert!(!killed.join("final").exists());

    // --resume takes the last complete checkpoint and ends where the uninterrupted run ended.
    let mut resume = args(&killed);
    resume.extend(["--resume".to_string(), killed.display().to_string()]);
    let out = train(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let final_weights = |d: &Path| std::fs::read(d.join("final/model.safetensors")).unwrap();
    assert!(
        final_weights(&killed) == final_weights(&whole),
        "the resumed run's final weights differ from the uninterrupted run's"
    );
    let steps = |d: &Path| -> Vec<u64> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(
        steps(&killed),
        (1..=8).collect::<Vec<_>>(),
        "no step lost or written twice"
    );
}

/// A DeepSeek-VL2 fixture model as a checkpoint directory: its config and weights (linked)
/// next to the family's tokenizer, which the fixture keeps once for all models.
fn deepseek_checkpoint(root: &Path, model: &str) -> PathBuf {
    let src = fixtures().join("deepseek_vl2");
    let dir = root.join(model);
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(src.join(model)).unwrap() {
        let f = f.unwrap().path();
        std::os::unix::fs::symlink(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    dir
}

/// A safetensors file's tensors as f32 values by name (bf16 widened).
fn tensors_f32(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    use safetensors::{Dtype, SafeTensors};
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    (file.tensors().into_iter())
        .map(|(name, view)| {
            let data = view.data();
            let values = match view.dtype() {
                Dtype::F32 => (data.chunks_exact(4))
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::BF16 => (data.chunks_exact(2))
                    .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, values)
        })
        .collect()
}

/// `train dpo` on a DeepSeek-VL2 reward: the answers tokenised as the authors' processor lays
/// them out after `<|Assistant|>:` (no space; cases.json's multi-turn case), a few steps, the
/// result saved in the hub layout under the checkpoint's own tensor names, loaded back and
/// generating.
#[test]
fn dpo_trains_a_deepseek_vl2_reward_that_loads_back_and_generates() {
    use burn::backend::Flex;
    use tita_decode::{GenerationConfig, Generator, ImageInput, Pipeline, Request};

    let dir = tempfile::tempdir().unwrap();
    let model = deepseek_checkpoint(dir.path(), "tiny-like");
    let data = dir.path().join("pairs.jsonl");
    let pairs = [
        r#"{"image": "images/square56.png", "prompt": "Is there a cat?", "chosen": "No, a square.", "rejected": "Yes, a cat."}"#,
        r#"{"image": "images/square56.png", "prompt": "What shape is this?", "chosen": "A square.", "rejected": "A circle on a skateboard."}"#,
    ];
    std::fs::write(&data, pairs.join("\n")).unwrap();
    let out = dir.path().join("out");
    let images = fixtures().display().to_string();
    let run = train(&[
        "dpo",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--images",
        &images,
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "0.01",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
    for line in metrics.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(m["loss"].as_f64().unwrap().is_finite(), "{line}");
    }

    // The hub layout: one model.safetensors under the checkpoint's names, config and tokenizer.
    let saved = out.join("final");
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(
            saved.join(f).is_file(),
            "{f} missing: {:?}",
            listing(&saved)
        );
    }
    let before = tensors_f32(&model.join("model.safetensors"));
    let after = tensors_f32(&saved.join("model.safetensors"));
    // Every tensor under its name in the source; only the vision tower's attention-pool head,
    // which the model skips at load (`ignore_head`), is not written.
    assert!(after.keys().all(|k| before.contains_key(k)));
    let left_out: Vec<_> = (before.keys())
        .filter(|k| !after.contains_key(*k))
        .collect();
    assert!(
        left_out.iter().all(|k| k.starts_with("vision.attn_pool.")),
        "{left_out:?}"
    );
    assert!(
        before.iter().any(|(name, v)| after[name] != *v),
        "training changed no weight"
    );

    let device = Default::default();
    let vlm = tita_models::Vlm::<Flex>::load(&saved, &device).unwrap();
    assert_eq!(vlm.stored.len(), after.len());
    drop(vlm);
    let pipeline = Pipeline::<Flex>::load(&saved, &device).unwrap();
    assert_eq!(pipeline.template.name, "deepseek_vl2");

    // The authors' processor: the first answer of the multi-turn case right after
    // `<|Assistant|>:`, EOS appended.
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("deepseek_vl2/cases.json")).unwrap(),
    )
    .unwrap();
    let case = &cases["cases"]["two_images"];
    let answer = case["conversation"][1]["content"].as_str().unwrap();
    let assistant = pipeline.tokenizer.encode("<|Assistant|>:", false).unwrap();
    let ids: Vec<u32> = (case["input_ids"].as_array().unwrap().iter())
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let at = (ids.windows(assistant.len()))
        .position(|w| w == assistant.as_slice())
        .unwrap()
        + assistant.len();
    let separator = pipeline.answer_separator().unwrap();
    assert_eq!(separator, "");
    let response = tita_train::data::response_ids(&pipeline, &separator, answer).unwrap();
    assert_eq!(response, ids[at..at + response.len()]);

    // The prompt as training tokenises it: the authors' ids of the fixture's `small` case.
    let small = &cases["cases"]["small"];
    let image = fixtures()
        .join("deepseek_vl2")
        .join(small["conversation"][0]["images"][0].as_str().unwrap());
    let text = small["conversation"][0]["content"]
        .as_str()
        .unwrap()
        .trim_start_matches("<image>\n");
    let pixels = (pipeline.processor.as_ref().unwrap())
        .preprocess_file(&image, false)
        .unwrap();
    let want: Vec<u32> = (small["input_ids"].as_array().unwrap().iter())
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pipeline.image_prompt_ids(text, &pixels).unwrap(), want);

    let image = ImageInput::Path(fixtures().join("images/square56.png"));
    let prompt = pipeline
        .request_prompt(&Request::new("Is there a cat?", Some(image), false))
        .unwrap();
    let generation = GenerationConfig {
        max_new_tokens: 3,
        ..Default::default()
    };
    let g = Generator::new(&pipeline, generation)
        .generate(&prompt)
        .unwrap();
    assert!(
        (1..=3).contains(&g.generated_tokens) && g.token_ids.len() == g.generated_tokens,
        "{g:?}"
    );
}
