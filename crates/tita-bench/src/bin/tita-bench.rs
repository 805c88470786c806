//! `tita-bench`: what `cargo xtask bench` runs.

use std::path::PathBuf;

use anyhow::anyhow;
use burn::tensor::backend::Backend;
use clap::{Parser, Subcommand};
use tita_bench::speed::{self, Preset, SpeedReport};
use tita_decode::backend::{dispatch, BackendKind, BackendTask};

#[derive(Parser)]
#[command(about = "TITA benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode and prefill speed of a random model against the memory-bandwidth bound.
    Speed {
        #[arg(long, value_enum, default_value = "150m")]
        preset: Preset,
        /// Backends to measure in this run (comma separated); default: the first compiled in.
        #[arg(long, value_enum, value_delimiter = ',')]
        backend: Vec<BackendKind>,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        /// Directory for results.json.
        #[arg(long, default_value = "bench-out/speed")]
        out: PathBuf,
    },
}

struct SpeedTask {
    preset: Preset,
    prompt_tokens: usize,
    new_tokens: usize,
}

impl BackendTask for SpeedTask {
    type Output = tita_core::Result<SpeedReport>;
    fn run<B: Backend>(self, device: B::Device, kind: BackendKind) -> Self::Output {
        let on_gpu = matches!(kind, BackendKind::Wgpu | BackendKind::Cuda);
        speed::run::<B>(
            self.preset,
            kind.feature(),
            on_gpu,
            self.prompt_tokens,
            self.new_tokens,
            &device,
        )
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Speed {
            preset,
            backend,
            prompt_tokens,
            new_tokens,
            out,
        } => {
            let kinds: Vec<Option<BackendKind>> = if backend.is_empty() {
                vec![None]
            } else {
                backend.into_iter().map(Some).collect()
            };
            let mut reports = Vec::new();
            for kind in kinds {
                let report = dispatch(
                    kind,
                    SpeedTask {
                        preset,
                        prompt_tokens,
                        new_tokens,
                    },
                )
                .map_err(|e| anyhow!(e))??;
                println!("{report}");
                reports.push(report);
            }
            std::fs::create_dir_all(&out)?;
            let path = out.join("results.json");
            let tmp = out.join("results.json.tmp");
            std::fs::write(&tmp, serde_json::to_string_pretty(&reports)?)?;
            std::fs::rename(&tmp, &path)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
