//! Preference pairs made by the target itself (SeVa-style, as the paper does): for each
//! question, `chosen` = the target's greedy answer on the clean image, `rejected` = its answer
//! after diffusion forward noise on the preprocessed pixels. Identical answers are dropped.
//! Pairs are appended as they are made; an interrupted run continues after the last question
//! it finished, so nothing is written twice.

use std::path::Path;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use tita_core::noise::add_diffusion_noise;
use tita_core::output::{claim_file, with_suffix, Reuse};
use tita_core::{jsonl, Error, Result};
use tita_decode::{GenerationConfig, Generator, Pipeline};

/// One line of a questions file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Question {
    pub image: String,
    pub prompt: String,
}

/// One written pair: the preference fields plus the question's line, for resuming.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SynthesizedPair {
    pub image: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub question_line: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairsConfig {
    /// Diffusion step of the noise (of 1000; VCD's sigmoid schedule, ā_500 ≈ 0.745).
    pub noise_step: usize,
    /// Noise of question line `l` is drawn with seed `seed + l`, so a resumed run draws the same.
    pub seed: u64,
    pub max_new_tokens: usize,
    pub pad: bool,
}

impl Default for PairsConfig {
    fn default() -> Self {
        PairsConfig {
            noise_step: 500,
            seed: 0,
            max_new_tokens: 64,
            pad: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairsSummary {
    pub questions: usize,
    /// Questions finished by an earlier run.
    pub resumed_after: usize,
    pub written: usize,
    pub dropped_identical: usize,
}

#[derive(Serialize, Deserialize)]
struct Progress {
    last_line: usize,
    /// The settings of the run, so that a resumed run can be refused if they changed.
    config: PairsConfig,
}

const PROGRESS: &str = ".progress.json";

/// Makes pairs for every question of `questions` not yet done, appending to `out`. An
/// existing `out` is continued with `Reuse::Resume` (same settings), replaced with
/// `Reuse::Overwrite`, and refused otherwise.
pub fn synthesize<B: Backend>(
    target: &Pipeline<B>,
    questions: &Path,
    images: Option<&Path>,
    out: &Path,
    config: &PairsConfig,
    reuse: Reuse,
    progress: bool,
) -> Result<PairsSummary> {
    let _claim = claim_file(out, &[PROGRESS], reuse)?;
    let qs = jsonl::read::<Question>(questions)?;
    let processor = target.processor.as_ref().ok_or_else(|| {
        Error::argument(
            "model",
            "pair synthesis needs a VLM target (it has no image processor)",
        )
    })?;
    // The last question finished: from the progress file, or from the pairs themselves (a
    // pair can be written just before an interruption that loses the progress update).
    let mut done = 0;
    if out.exists() {
        for (_, p) in jsonl::read::<SynthesizedPair>(out)? {
            done = done.max(p.question_line);
        }
    }
    let progress_file = with_suffix(out, PROGRESS);
    if progress_file.exists() {
        let p: Progress = tita_core::error::read_json_as(&progress_file)?;
        if p.config != *config {
            return Err(Error::argument(
                "resume",
                format!(
                    "{} was made with other settings ({:?}); resume with the same ones or --overwrite",
                    out.display(),
                    p.config
                ),
            ));
        }
        done = done.max(p.last_line);
    }
    let mut summary = PairsSummary {
        questions: qs.len(),
        resumed_after: qs.iter().filter(|(l, _)| *l <= done).count(),
        ..Default::default()
    };
    let mut file = jsonl::open_append(out)?;
    let generator = Generator::new(
        target,
        GenerationConfig {
            max_new_tokens: config.max_new_tokens,
            ..GenerationConfig::default()
        },
    );
    let todo: Vec<&(usize, Question)> = qs.iter().filter(|(l, _)| *l > done).collect();
    let bar = tita_core::progress::bar(progress, todo.len(), "questions");
    for (line, q) in todo {
        let line = *line;
        if q.prompt.trim().is_empty() {
            return Err(Error::data(questions, line, "field `prompt` is empty"));
        }
        let path = jsonl::resolve_image(questions, line, &q.image, images)?;
        let clean = processor
            .preprocess_file(&path, config.pad)
            .map_err(|e| Error::data(questions, line, e.to_string()))?;
        let mut noised = clean.clone();
        add_diffusion_noise(
            &mut noised.data,
            config.noise_step,
            config.seed.wrapping_add(line as u64),
        )?;
        let a = target.prompt_with_pixels(&q.prompt, clean)?;
        let b = target.prompt_with_pixels(&q.prompt, noised)?;
        let answers = generator.generate_batch(&[&a, &b])?;
        let (chosen, rejected) = (answers[0].text.trim(), answers[1].text.trim());
        if chosen == rejected || chosen.is_empty() || rejected.is_empty() {
            summary.dropped_identical += 1;
        } else {
            let image = match images {
                Some(_) => q.image.clone(),
                // Relative to the questions file: write a path that works from anywhere.
                None => std::fs::canonicalize(&path)
                    .unwrap_or(path)
                    .display()
                    .to_string(),
            };
            let pair = SynthesizedPair {
                image,
                prompt: q.prompt.clone(),
                chosen: chosen.to_string(),
                rejected: rejected.to_string(),
                question_line: line,
            };
            jsonl::append(&mut file, out, &pair)?;
            summary.written += 1;
        }
        let p = serde_json::to_string(&Progress {
            last_line: line,
            config: config.clone(),
        })
        .expect("plain data");
        jsonl::write_atomic(&progress_file, p.as_bytes())?;
        bar.set_message(format!(
            "{} pairs, {} dropped",
            summary.written, summary.dropped_identical
        ));
        bar.inc(1);
    }
    bar.finish();
    Ok(summary)
}
