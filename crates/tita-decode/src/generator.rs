//! The decoding loop: prefill once, then one KV-cached step per token, with greedy or seeded
//! sampling, max-new-tokens, EOS and stop strings, streaming, and batches of requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{backend::Backend, Tensor};
use serde::Serialize;
use tita_core::sampling::{Sampler, SamplingConfig};
use tita_core::{Error, Result, Tokenizer};

use crate::pipeline::{Pipeline, Prompt};
use crate::select::choose_ids;
use crate::session::{logits_to_host, Session};

/// A flag another thread (a server whose client went away, a UI) sets to stop a generation at
/// its next token; the rows end with [`FinishReason::Cancelled`] and keep what they have.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Two handles are equal when they share the flag.
impl PartialEq for Cancel {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// When to stop and how to pick tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Generation stops once the decoded text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
    /// EOS ids; `None` takes the model config's `eos_token_id`.
    pub eos_token_ids: Option<Vec<u32>>,
    /// Checked before every token.
    pub cancel: Option<Cancel>,
    /// Bring every step's scores to the host and choose there, so that each [`TokenEvent`]
    /// carries them (log-probs). Otherwise fusion and choice run on the device and only the
    /// chosen ids come back.
    pub scores_on_host: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 64,
            sampling: SamplingConfig::greedy(),
            stop_strings: Vec::new(),
            eos_token_ids: None,
            cancel: None,
            scores_on_host: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Eos,
    StopString,
    MaxNewTokens,
    /// The model's `max_position_embeddings` was reached.
    Context,
    /// [`GenerationConfig::cancel`] was set.
    Cancelled,
}

/// Wall-clock split of one generation call (shared by every row of a batch).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Image encoding and prompt prefill.
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

/// The result for one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// Generated ids (the EOS that ended it included).
    pub token_ids: Vec<u32>,
    /// Decoded text of `token_ids`, special tokens skipped, cut before a stop string.
    pub text: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub finish_reason: FinishReason,
    pub timings: Timings,
}

/// A streamed token: which row of the batch, the id, the text it added, and the scores it was
/// chosen from (the model's logits, or a sampler's fused scores) before temperature, when the
/// choice was made on the host ([`GenerationConfig::scores_on_host`]).
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent<'a> {
    pub row: usize,
    pub token: u32,
    pub text_delta: &'a str,
    pub scores: Option<&'a [f32]>,
}

/// What a step of the decoding loop hands back: what every row's next token comes from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    /// Each row's scores on the host; the row's sampler picks with its draw.
    Scores(Vec<Vec<f32>>),
    /// Each row's token, already chosen (on the device) with its draw.
    Chosen(Vec<u32>),
}

/// A source of next tokens for [`decode_loop`]: plain decoding, a fused method, a sweep.
pub(crate) trait Stepper {
    /// Whether another token still fits in every model's context.
    fn has_room(&self) -> bool;
    /// `fed = None` gives what the first tokens come from (the prefill's scores, or ids
    /// chosen from them); `Some(fed)` feeds one token per row and gives the same for the
    /// tokens after. `draws` holds each row's random number for this token
    /// ([`Sampler::draw`]; 0 for finished rows and greedy decoding).
    fn next(&mut self, fed: Option<&[u32]>, draws: &[f64]) -> Result<Next>;
    /// Sees every chosen token before the caller's `on_token` (explanations).
    fn observe(&mut self, _event: &TokenEvent) {}
}

/// Per-row bookkeeping of the decoding loop.
struct Row<'t> {
    tokens: Vec<u32>,
    /// Decoded text so far (cut before a stop string once one appears).
    text: String,
    /// Bytes of `text` already streamed.
    streamed: usize,
    stream: tita_core::tokenizer::TextStream<'t>,
    finish: Option<FinishReason>,
    sampler: Sampler,
}

impl Row<'_> {
    /// Takes the row's next token: its text, whether it ends the row (a stop string, EOS, the
    /// token limit, a full context), and how far the text may be streamed now.
    fn accept(
        &mut self,
        token: u32,
        tokenizer: &Tokenizer,
        config: &GenerationConfig,
        eos: &[u32],
        room: bool,
    ) -> Result<usize> {
        self.tokens.push(token);
        let piece = self.stream.step(token)?;
        self.text.push_str(&piece);
        if let Some(pos) = config
            .stop_strings
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(pos);
            self.finish = Some(FinishReason::StopString);
        } else if eos.contains(&token) {
            self.finish = Some(FinishReason::Eos);
        } else if self.tokens.len() >= config.max_new_tokens {
            self.finish = Some(FinishReason::MaxNewTokens);
        } else if !room {
            self.finish = Some(FinishReason::Context);
        }
        if self.finish.is_some() && self.finish != Some(FinishReason::StopString) {
            // A character left incomplete at the end decodes as transformers shows it.
            let full = tokenizer.decode(&self.tokens, true)?;
            if let Some(rest) = full.strip_prefix(self.text.as_str()) {
                self.text.push_str(rest);
            }
        }
        Ok(if self.finish.is_some() {
            self.text.len()
        } else {
            self.text.len() - held_back(&self.text, &config.stop_strings)
        })
    }
}

/// The longest tail of `text` that could still grow into one of `stops`: held back from the
/// stream so that streamed text never shows what a stop string later cuts.
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .filter(|&n| s.is_char_boundary(n))
                .map(|n| &s[..n])
        })
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

/// Runs the loop for `batch` rows on top of any [`Stepper`]. Used by the plain generator and by
/// every fused method, so stop conditions and streaming behave the same.
///
/// Streaming: each token's event carries the text it completes (through the tokenizer's
/// incremental decoder); text that may be the start of a stop string waits until it is known
/// not to be. The deltas of a row concatenate to its final `text`.
pub(crate) fn decode_loop(
    tokenizer: &Tokenizer,
    config: &GenerationConfig,
    default_eos: &[u32],
    batch: usize,
    stepper: &mut dyn Stepper,
    on_token: &mut dyn FnMut(TokenEvent),
) -> Result<Vec<(Vec<u32>, String, FinishReason)>> {
    if config.stop_strings.iter().any(String::is_empty) {
        // Every text contains "": it would stop before the first token's text.
        return Err(Error::argument(
            "stop",
            "an empty stop string would end every generation at once",
        ));
    }
    let eos = config
        .eos_token_ids
        .clone()
        .unwrap_or_else(|| default_eos.to_vec());
    let mut rows: Vec<Row> = (0..batch)
        .map(|_| {
            Ok(Row {
                tokens: Vec::new(),
                text: String::new(),
                streamed: 0,
                stream: tokenizer.stream(true),
                finish: None,
                sampler: Sampler::new(config.sampling.clone())?,
            })
        })
        .collect::<Result<_>>()?;
    let mut fed: Option<Vec<u32>> = None;
    if config.max_new_tokens == 0 {
        rows.iter_mut()
            .for_each(|r| r.finish = Some(FinishReason::MaxNewTokens));
    }
    while rows.iter().any(|r| r.finish.is_none()) {
        if config.cancel.as_ref().is_some_and(Cancel::is_cancelled) {
            for row in rows.iter_mut().filter(|r| r.finish.is_none()) {
                row.finish = Some(FinishReason::Cancelled);
                // Text held back for a possible stop string was never streamed: the result is
                // what the caller has seen.
                row.text.truncate(row.streamed);
            }
            break;
        }
        let draws: Vec<f64> = rows
            .iter_mut()
            .map(|r| {
                if r.finish.is_none() {
                    r.sampler.draw()
                } else {
                    0.0
                }
            })
            .collect();
        let choice = stepper.next(fed.as_deref(), &draws)?;
        let room = stepper.has_room();
        let mut feed = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter_mut().enumerate() {
            if row.finish.is_some() {
                // Finished rows keep stepping with a harmless id; their outputs are ignored.
                feed.push(
                    *row.tokens
                        .last()
                        .unwrap_or(&eos.first().copied().unwrap_or(0)),
                );
                continue;
            }
            let (token, scores) = match &choice {
                Next::Scores(s) => (row.sampler.pick(&s[i], draws[i]), Some(s[i].as_slice())),
                Next::Chosen(ids) => (ids[i], None),
            };
            feed.push(token);
            let end = row.accept(token, tokenizer, config, &eos, room)?;
            let delta = &row.text[row.streamed.min(end)..end];
            let event = TokenEvent {
                row: i,
                token,
                text_delta: delta,
                scores,
            };
            stepper.observe(&event);
            on_token(event);
            row.streamed = row.streamed.max(end);
        }
        if rows.iter().all(|r| r.finish.is_some()) {
            break;
        }
        fed = Some(feed);
    }
    Ok(rows
        .into_iter()
        .map(|r| (r.tokens, r.text, r.finish.expect("every row finished")))
        .collect())
}

/// Plain generation with one model.
pub struct Generator<'p, B: Backend> {
    pub pipeline: &'p Pipeline<B>,
    pub config: GenerationConfig,
}

impl<'p, B: Backend> Generator<'p, B> {
    pub fn new(pipeline: &'p Pipeline<B>, config: GenerationConfig) -> Self {
        Generator { pipeline, config }
    }

    /// Generates for one prompt.
    pub fn generate(&self, prompt: &Prompt) -> Result<Generation> {
        self.generate_streaming(prompt, &mut |_| {})
    }

    /// Generates for one prompt, calling `on_token` as each token is chosen.
    pub fn generate_streaming(
        &self,
        prompt: &Prompt,
        on_token: &mut dyn FnMut(TokenEvent),
    ) -> Result<Generation> {
        Ok(self
            .generate_batch_streaming(&[prompt], on_token)?
            .remove(0))
    }

    /// Decodes several prompts together (left-padded, masked); each row's tokens equal what
    /// decoding it alone gives.
    pub fn generate_batch(&self, prompts: &[&Prompt]) -> Result<Vec<Generation>> {
        self.generate_batch_streaming(prompts, &mut |_| {})
    }

    pub fn generate_batch_streaming(
        &self,
        prompts: &[&Prompt],
        on_token: &mut dyn FnMut(TokenEvent),
    ) -> Result<Vec<Generation>> {
        let p = self.pipeline;
        let start = Instant::now();
        let (session, first) = Session::prefill_reserving(
            &p.model,
            prompts,
            Some(self.config.max_new_tokens),
            &p.device,
        )?;
        let prefill_s = start.elapsed().as_secs_f64();
        let mut stepper = Plain {
            session,
            first: Some(first),
            config: &self.config,
        };
        let start = Instant::now();
        let rows = decode_loop(
            &p.tokenizer,
            &self.config,
            &p.model.text_limits().eos_token_ids,
            prompts.len(),
            &mut stepper,
            on_token,
        )?;
        let decode_s = start.elapsed().as_secs_f64();
        Ok(finish(rows, prompts, prefill_s, decode_s))
    }
}

/// Plain decoding: one model's session, its logits as they are.
struct Plain<'m, 'c, B: Backend> {
    session: Session<'m, B>,
    /// The prefill's logits, until the first step uses them.
    first: Option<Tensor<B, 2>>,
    config: &'c GenerationConfig,
}

impl<B: Backend> Stepper for Plain<'_, '_, B> {
    fn has_room(&self) -> bool {
        self.session.has_room()
    }

    fn next(&mut self, fed: Option<&[u32]>, draws: &[f64]) -> Result<Next> {
        let logits = match fed {
            None => self
                .first
                .take()
                .expect("the prefill's logits are used once"),
            Some(tokens) => self.session.step_on_device(tokens)?,
        };
        let model = self.session.model();
        if self.config.scores_on_host {
            Ok(Next::Scores(logits_to_host(model, logits)?))
        } else {
            let checked = [(model, &logits)];
            let ids = choose_ids(logits.clone(), &checked, &self.config.sampling, draws)?;
            Ok(Next::Chosen(ids))
        }
    }
}

/// Wraps loop results with counts and timings.
pub(crate) fn finish(
    rows: Vec<(Vec<u32>, String, FinishReason)>,
    prompts: &[&Prompt],
    prefill_s: f64,
    decode_s: f64,
) -> Vec<Generation> {
    let prompt_total: usize = prompts.iter().map(|p| p.ids.len()).sum();
    // Every token after the first of each row costs one decode step.
    let steps = rows
        .iter()
        .map(|r| r.0.len())
        .max()
        .unwrap_or(0)
        .saturating_sub(1);
    let decoded: usize = rows.iter().map(|r| r.0.len().saturating_sub(1)).sum();
    let timings = Timings {
        prefill_ms: prefill_s * 1e3,
        decode_ms: decode_s * 1e3,
        prefill_tokens_per_s: prompt_total as f64 / prefill_s.max(1e-9),
        decode_tokens_per_s: if steps == 0 {
            0.0
        } else {
            decoded as f64 / decode_s.max(1e-9)
        },
    };
    rows.into_iter()
        .zip(prompts)
        .map(|((token_ids, text, finish_reason), p)| Generation {
            generated_tokens: token_ids.len(),
            token_ids,
            text,
            prompt_tokens: p.ids.len(),
            finish_reason,
            timings: timings.clone(),
        })
        .collect()
}

#[cfg(test)]
#[path = "streaming_tests.rs"]
mod streaming_tests;
