//! The `tita-generate` binary: its help, its `--json` shape, and bad input answered with a
//! message naming what is wrong and a failing exit code (never a panic, never empty output).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn generate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tita-generate"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

/// Fails with exit code 1 and a message holding `want`; stdout stays empty.
fn refused(args: &[&str], want: &str) {
    let out = generate(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 1: the run refused it; 2: the command line's parser did (a value out of its range).
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{args:?}: {stderr}"
    );
    assert!(stderr.contains(want), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed output");
}

#[test]
fn help_and_json_output() {
    let out = generate(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--template", "--system", "--messages", "--lambda", "--json"] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let target = fixture("llava-target");
    let image = fixture("jpeg/images/coco_q90_420.jpg");
    let out = generate(&[
        "--model",
        &target,
        "--image",
        &image,
        "--prompt",
        "Describe the image.",
        "--max-new-tokens",
        "3",
        "--json",
        "--template",
        "vicuna_v1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 3);
    assert_eq!(v["generated_tokens"], 3);
    assert_eq!(v["finish_reason"], "max_new_tokens");
    assert_eq!(v["template"], "vicuna_v1");
    assert!(v["text"].is_string() && v["timings"]["decode_ms"].is_number());
    // vicuna_v1's system sentence and 16 image tokens: far longer than the bare LLaVA prompt.
    assert!(v["prompt_tokens"].as_u64().unwrap() > 50, "{v}");
}

#[test]
fn bad_flags_name_the_flag_and_its_range() {
    let target = fixture("llava-target");
    let reward = fixture("llava-reward");
    let image = fixture("images/square56.png");
    let base = [
        "--model",
        &target,
        "--image",
        &image,
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
    ];
    let r = ["--reward", reward.as_str()];
    let config_file = fixture("llava-reward/config.json");
    let cases: Vec<(Vec<&str>, &str)> =
        vec![
        (
            [&r[..], &["--lambda", "-1"]].concat(),
            "invalid argument `lambda`: -1 is outside [0, 1]",
        ),
        (
            [&r[..], &["--lambda", "1.5"]].concat(),
            "invalid argument `lambda`: 1.5 is outside [0, 1]",
        ),
        (
            vec!["--lambda", "0.5"],
            "--lambda: is a knob of a decoding method: give --reward or a --mode",
        ),
        (
            vec!["--alpha", "1"],
            "--alpha: is a knob of a decoding method",
        ),
        (
            [&r[..], &["--mode", "m3id"]].concat(),
            "--reward: mode m3id uses no reward model",
        ),
        (
            vec!["--mode", "m3id", "--lambda", "0.5"],
            "--lambda: is not a knob of mode `m3id` (its knobs: m3id_lambda",
        ),
        (
            vec!["--mode", "m3id", "--m3id-variant", "sideways"],
            "m3id_variant",
        ),
        (
            vec!["--mode", "marine"],
            "MARINE needs the detected objects (--objects FILE",
        ),
        (
            vec!["--mode", "marine", "--objects", "/nonexistent/objects.json"],
            "/nonexistent/objects.json",
        ),
        (
            vec!["--mode", "sideways"],
            "unknown mode `sideways` (known: interpolate, reference, contrastive, m3id, marine)",
        ),
        (
            [&r[..], &["--mode", "interpolate", "--reference", "x"]].concat(),
            "--reference: is the DPO reference of reference mode only",
        ),
        (
            vec!["--mode", "contrastive", "--alpha", "-2"],
            "invalid argument `alpha`: -2 must be a finite number >= 0",
        ),
        (
            vec!["--reward", &config_file],
            "is a file; give the checkpoint's directory",
        ),
        (
            vec!["--top-p", "0.9"],
            "--top-p: greedy decoding ignores it; give a --temperature",
        ),
        (
            vec!["--top-k", "5"],
            "--top-k: greedy decoding ignores it; give a --temperature",
        ),
        (
            vec!["--mode", "contrastive", "--vcd-beta", "0.2", "--lambda", "0.3"],
            "--lambda: is not a knob of mode `contrastive`",
        ),
        (
            vec!["--temperature", "-1"],
            "invalid argument `temperature`: -1 must be >= 0",
        ),
        (
            vec!["--template", "nope"],
            "`nope` is neither a built-in template (llava_1_5, llava_v1, vicuna_v1)",
        ),
    ];
    for (extra, want) in cases {
        let mut args = base.to_vec();
        args.extend(extra);
        refused(&args, want);
    }
    let mut none = base.to_vec();
    none[7] = "0";
    refused(&none, "must be at least 1");
}

#[test]
fn a_nan_weight_is_a_load_error_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("reward");
    std::fs::create_dir(&bad).unwrap();
    for f in std::fs::read_dir(fixtures().join("llava-reward")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, bad.join(f.file_name().unwrap())).unwrap();
    }
    let weights = bad.join("model.safetensors");
    let clean = std::fs::read(&weights).unwrap();
    let name = poison(&weights, "layers.0.mlp.up_proj", f32::NAN);
    let (target, image) = (fixture("llava-target"), fixture("images/square56.png"));
    let args = [
        "--model",
        &target,
        "--reward",
        bad.to_str().unwrap(),
        "--image",
        &image,
        "--prompt",
        "hi",
    ];
    refused(
        &args,
        &format!("tensor `{name}`: holds 1 non-finite value(s) (NaN at flat index 0"),
    );
    // A finite but huge weight overflows the logits at run time: an error naming the model,
    // not a finish_reason over empty text.
    std::fs::write(&weights, &clean).unwrap();
    poison(&weights, "layers.0.input_layernorm.weight", 3e38);
    refused(
        &args,
        &format!(
            "the next-token logits of {} (batch row 0) went non-finite",
            bad.display()
        ),
    );
}

/// Sets the first value of the tensor whose name holds `pattern`; returns the tensor's name.
fn poison(path: &Path, pattern: &str, value: f32) -> String {
    let bytes = std::fs::read(path).unwrap();
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let (name, info) = meta
        .tensors()
        .into_iter()
        .find(|(n, _)| n.contains(pattern))
        .unwrap();
    let start = 8 + header_len + info.data_offsets.0;
    let mut bytes = bytes;
    let stored: Vec<u8> = match info.dtype {
        safetensors::Dtype::BF16 => half::bf16::from_f32(value).to_le_bytes().to_vec(),
        safetensors::Dtype::F16 => half::f16::from_f32(value).to_le_bytes().to_vec(),
        _ => value.to_le_bytes().to_vec(),
    };
    bytes[start..start + stored.len()].copy_from_slice(&stored);
    std::fs::write(path, bytes).unwrap();
    name
}

/// A text-only prompt to a checkpoint that ships a chat template (the Qwen2.5-VL fixture) is
/// rendered by it by default, as transformers' chat pipeline and llama.cpp do: its ids are the
/// tokens of the template fixture's rendering. `--raw` sends the text as it is; a checkpoint
/// without a template (the LLaVA fixture) keeps plain prompts plain.
#[test]
fn text_prompts_use_the_checkpoints_chat_template_unless_raw() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("templates/cases.json")).unwrap(),
    )
    .unwrap();
    let case = (cases["cases"].as_array().unwrap().iter())
        .find(|c| {
            c["template"] == "chatml_vl"
                && c["conversation"] == "text only, unicode"
                && c["add_generation_prompt"] == true
        })
        .expect("the chatml_vl text-only case");
    let prompt = case["messages"][0]["content"][0]["text"].as_str().unwrap();
    let rendered = case["text"].as_str().unwrap();
    let model = fixture("qwen2_5_vl/model");
    let tokenizer = tita_core::Tokenizer::from_file(&fixtures().join("qwen2_5_vl/model")).unwrap();
    let ids = |extra: &[&str]| {
        let mut args = vec![
            "--model",
            &model,
            "--prompt",
            prompt,
            "--max-new-tokens",
            "1",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = generate(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ids: Vec<u32> = serde_json::from_value(v["prompt_ids"].clone()).unwrap();
        (ids, v["template"].clone())
    };
    let (templated, name) = ids(&[]);
    assert_eq!(templated, tokenizer.encode(rendered, true).unwrap());
    assert!(
        name.as_str().unwrap().ends_with("chat_template.jinja"),
        "{name}"
    );
    let (raw, name) = ids(&["--raw"]);
    assert_eq!(raw, tokenizer.encode(prompt, true).unwrap());
    assert!(name.is_null());
    refused(
        &[
            "--model",
            &model,
            "--prompt",
            "Hi",
            "--raw",
            "--template",
            "vicuna_v1",
        ],
        "--template",
    );
    // No template in the LLaVA fixture: the prompt is tokenised as given.
    let llava = fixture("llava-target");
    let out = generate(&[
        "--model",
        &llava,
        "--prompt",
        prompt,
        "--max-new-tokens",
        "1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let llava_tokenizer =
        tita_core::Tokenizer::from_file(&fixtures().join("llava-target")).unwrap();
    let ids: Vec<u32> = serde_json::from_value(v["prompt_ids"].clone()).unwrap();
    assert_eq!(ids, llava_tokenizer.encode(prompt, true).unwrap());
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

/// The fixture's `small` case from the command line: the DeepSeek conversation format, the
/// processor's tiling and image-token layout, and 12 greedy tokens and their text as the
/// authors' code produced them; then TITA with a DeepSeek reward of the same tokenizer, and a
/// reward whose tokenizer differs refused.
#[test]
fn deepseek_vl2_generates_the_authors_tokens_and_takes_a_deepseek_reward() {
    let tmp = tempfile::tempdir().unwrap();
    let target = deepseek_checkpoint(tmp.path(), "tiny-like");
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("deepseek_vl2/cases.json")).unwrap(),
    )
    .unwrap();
    let case = &cases["cases"]["small"];
    let want = &case["per_model"]["tiny-like"];
    let image = fixtures()
        .join("deepseek_vl2")
        .join(case["conversation"][0]["images"][0].as_str().unwrap());
    let prompt = case["conversation"][0]["content"]
        .as_str()
        .unwrap()
        .trim_start_matches("<image>\n");
    let steps = want["greedy_ids"].as_array().unwrap().len().to_string();
    let base = [
        "--model",
        target.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        prompt,
        "--json",
    ];
    let mut args = base.to_vec();
    args.extend(["--max-new-tokens", &steps]);
    let out = generate(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token_ids"], want["greedy_ids"], "{v}");
    assert_eq!(v["text"], want["greedy_text"], "{v}");
    assert_eq!(v["prompt_tokens"], case["num_tokens"], "{v}");
    assert_eq!(v["template"], "deepseek_vl2");

    let reward = deepseek_checkpoint(tmp.path(), "small-like");
    let mut args = base.to_vec();
    args.extend([
        "--reward",
        reward.to_str().unwrap(),
        "--max-new-tokens",
        "3",
    ]);
    let out = generate(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["generated_tokens"], 3, "{v}");

    // The same model with one added token renamed: not the target's vocabulary.
    let other = deepseek_checkpoint(&tmp.path().join("other"), "small-like");
    let path = other.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let added = tok["added_tokens"].as_array_mut().unwrap();
    let eot = added
        .iter_mut()
        .find(|t| t["content"] == "<|EOT|>")
        .unwrap();
    eot["content"] = "<|EOT renamed|>".into();
    std::fs::write(&path, tok.to_string()).unwrap();
    let mut args = base.to_vec();
    args.extend(["--reward", other.to_str().unwrap()]);
    refused(&args, "TITA needs a shared vocabulary");
    // A reward of another family.
    let llava = fixture("llava-reward");
    let mut args = base.to_vec();
    args.extend(["--reward", &llava]);
    refused(&args, "the guide must be of the target's family");
}
