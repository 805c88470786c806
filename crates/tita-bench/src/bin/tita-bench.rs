//! `tita-bench`: what `cargo xtask bench` runs.

use std::path::PathBuf;

use anyhow::anyhow;
use burn::tensor::backend::Backend;
use clap::{Parser, Subcommand};
use tita_bench::speed::{self, Preset, SpeedReport, TitaSpeedReport};
use tita_decode::backend::{dispatch, BackendKind, BackendTask};

#[derive(Parser)]
#[command(about = "TITA benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score an answers JSONL (this project's or LLaVA's) against POPE questions with the
    /// upstream rule.
    PopeScore {
        /// POPE questions (`coco_pope_{split}.json`) or any {"image","text","label"} JSONL.
        #[arg(long)]
        questions: PathBuf,
        /// Answers JSONL: {"question_id", "text", ...}.
        #[arg(long)]
        answers: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
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
        /// Also measure TITA decoding (this preset as target) against plain decoding.
        #[arg(long)]
        tita: bool,
        /// Reward model shapes for --tita.
        #[arg(long, value_enum, default_value = "25m")]
        reward_preset: Preset,
        /// Batch sizes for --tita.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        batch: Vec<usize>,
        /// Directory for results.json.
        #[arg(long, default_value = "bench-out/speed")]
        out: PathBuf,
    },
}

struct SpeedTask {
    preset: Preset,
    prompt_tokens: usize,
    new_tokens: usize,
    /// Reward preset and batch sizes of the TITA comparison, if asked for.
    tita: Option<(Preset, Vec<usize>)>,
}

impl BackendTask for SpeedTask {
    type Output = tita_core::Result<(SpeedReport, Option<TitaSpeedReport>)>;
    fn run<B: Backend>(self, device: B::Device, kind: BackendKind) -> Self::Output {
        let on_gpu = matches!(kind, BackendKind::Wgpu | BackendKind::Cuda);
        let (p, n) = (self.prompt_tokens, self.new_tokens);
        let plain = speed::run::<B>(self.preset, kind.feature(), on_gpu, p, n, &device)?;
        println!("{plain}");
        let tita = match self.tita {
            None => None,
            Some((reward, batches)) => {
                let r = speed::run_tita::<B>(
                    self.preset,
                    reward,
                    kind.feature(),
                    &batches,
                    p,
                    n,
                    &device,
                )?;
                println!("{r}");
                Some(r)
            }
        };
        Ok((plain, tita))
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::PopeScore {
            questions,
            answers,
            json,
        } => {
            let qs = tita_bench::pope::read_questions(&questions)?;
            let m = tita_bench::pope::score(&qs, &answers)?;
            if json {
                println!("{}", serde_json::to_string(&m)?);
            } else {
                println!("| split | count | accuracy | precision | recall | F1 | yes ratio |");
                println!("|---|---|---|---|---|---|---|");
                println!(
                    "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |",
                    tita_bench::pope::split_name(&questions),
                    m.count,
                    m.accuracy,
                    m.precision,
                    m.recall,
                    m.f1,
                    m.yes_ratio
                );
            }
        }
        Command::Speed {
            preset,
            backend,
            prompt_tokens,
            new_tokens,
            tita,
            reward_preset,
            batch,
            out,
        } => {
            let kinds: Vec<Option<BackendKind>> = if backend.is_empty() {
                vec![None]
            } else {
                backend.into_iter().map(Some).collect()
            };
            let mut reports = Vec::new();
            for kind in kinds {
                let tita = tita.then(|| (reward_preset, batch.clone()));
                let task = SpeedTask {
                    preset,
                    prompt_tokens,
                    new_tokens,
                    tita,
                };
                let (plain, tita) = dispatch(kind, task).map_err(|e| anyhow!(e))??;
                reports.push(serde_json::json!({"decode": plain, "tita": tita}));
            }
            let path = out.join("results.json");
            tita_core::jsonl::write_atomic(
                &path,
                serde_json::to_string_pretty(&reports)?.as_bytes(),
            )?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
