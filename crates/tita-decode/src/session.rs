//! One model's decoding state: its KV cache after a prefill, advanced one token at a time.

use burn::tensor::{backend::Backend, Tensor};
use tita_core::{Error, Result};
use tita_models::{DecodeState, Vlm};

use crate::pipeline::Prompt;

/// Copies `[rows, vocab]` logits to the host, one `Vec` per row.
fn rows_to_host<B: Backend>(logits: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [_, v] = logits.dims();
    let flat: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("float tensor");
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

/// `[rows, vocab]` next-token logits of `model` on the host; a NaN or infinity is an error
/// naming the model, never a token.
pub(crate) fn logits_to_host<B: Backend>(
    model: &Vlm<B>,
    logits: Tensor<B, 2>,
) -> Result<Vec<Vec<f32>>> {
    let rows = rows_to_host(logits);
    for (r, row) in rows.iter().enumerate() {
        Error::check_finite(
            || format!("the next-token logits of {} (batch row {r})", model.name),
            row,
        )?;
    }
    Ok(rows)
}

/// Positions of KV cache allocated beyond the prompt when the caller does not say how many
/// tokens will come.
const DECODE_RESERVE: usize = 256;

/// A prefilled KV cache of one model for a batch of sequences.
pub struct Session<'m, B: Backend> {
    model: &'m Vlm<B>,
    cache: DecodeState<B>,
    device: B::Device,
}

// By hand: a derive would require `B: Clone`. The cache's tensors are shared, not copied.
impl<B: Backend> Clone for Session<'_, B> {
    fn clone(&self) -> Self {
        Session {
            model: self.model,
            cache: self.cache.clone(),
            device: self.device.clone(),
        }
    }
}

impl<'m, B: Backend> Session<'m, B> {
    /// Encodes the images, runs every prompt once (left-padded to a common length) and returns
    /// the session with the next-token logits of each row.
    pub fn prefill(
        model: &'m Vlm<B>,
        prompts: &[&Prompt],
        device: &B::Device,
    ) -> Result<(Self, Vec<Vec<f32>>)> {
        let (session, logits) = Self::prefill_on_device(model, prompts, device)?;
        Ok((session, logits_to_host(model, logits)?))
    }

    /// [`Session::prefill`] with the `[rows, vocab]` f32 logits left on the device (unchecked).
    pub fn prefill_on_device(
        model: &'m Vlm<B>,
        prompts: &[&Prompt],
        device: &B::Device,
    ) -> Result<(Self, Tensor<B, 2>)> {
        Self::prefill_reserving(model, prompts, None, device)
    }

    /// [`Session::prefill_on_device`] with KV room for `max_new_tokens` tokens after the
    /// longest prompt (capped at the context), allocated once; None reserves a default of
    /// 256. Steps past the room still work: the buffers grow.
    pub fn prefill_reserving(
        model: &'m Vlm<B>,
        prompts: &[&Prompt],
        max_new_tokens: Option<usize>,
        device: &B::Device,
    ) -> Result<(Self, Tensor<B, 2>)> {
        if prompts.is_empty() {
            return Err(Error::argument("prompts", "empty batch"));
        }
        let context = model.text_limits().context;
        let len = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        if prompts.iter().any(|p| p.ids.is_empty()) {
            return Err(Error::argument("prompt", "no tokens"));
        }
        if len >= context {
            return Err(Error::ContextOverflow {
                tokens: len,
                context,
            });
        }
        let with_image = prompts.iter().filter(|p| p.pixels.is_some()).count();
        if with_image != 0 && with_image != prompts.len() {
            return Err(Error::argument(
                "prompts",
                "a batch must be all with images or all without",
            ));
        }
        let images = if with_image > 0 {
            let pixels: Vec<_> = prompts.iter().filter_map(|p| p.pixels.as_ref()).collect();
            Some(model.encode_images(model.pixels_tensor(&pixels, device)?)?)
        } else {
            None
        };
        // Left padding keeps every row's last prompt token in the same column.
        let pad_id = model.text_limits().pad_token_id.unwrap_or(0);
        let pad_left: Vec<usize> = prompts.iter().map(|p| len - p.ids.len()).collect();
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| {
                std::iter::repeat_n(pad_id, len - p.ids.len())
                    .chain(p.ids.iter().copied())
                    .collect()
            })
            .collect();
        let embeds = model.embed(&ids, images, device)?;
        // Decode steps write into buffers allocated here (they grow by as much again when full).
        let capacity = (len + max_new_tokens.unwrap_or(DECODE_RESERVE)).min(context);
        let mut cache = model.new_padded_cache(pad_left).with_capacity(capacity);
        let hidden = model.forward(embeds, &mut cache)?;
        let logits = model.last_logits(hidden);
        Ok((
            Session {
                model,
                cache,
                device: device.clone(),
            },
            logits,
        ))
    }

    /// Positions the cache holds (padding included).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Whether another token still fits in the model's context.
    pub fn has_room(&self) -> bool {
        self.cache.len() < self.model.text_limits().context
    }

    /// Rows of the batch.
    pub fn batch(&self) -> usize {
        self.cache.batch()
    }

    pub fn model(&self) -> &'m Vlm<B> {
        self.model
    }

    /// Feeds one token per row and returns each row's next-token logits.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let logits = self.step_on_device(tokens)?;
        logits_to_host(self.model, logits)
    }

    /// [`Session::step`] with the `[rows, vocab]` f32 logits left on the device (unchecked).
    pub fn step_on_device(&mut self, tokens: &[u32]) -> Result<Tensor<B, 2>> {
        if tokens.len() != self.cache.batch() {
            return Err(Error::argument(
                "tokens",
                format!(
                    "{} tokens for a batch of {}",
                    tokens.len(),
                    self.cache.batch()
                ),
            ));
        }
        if !self.has_room() {
            let context = self.model.text_limits().context;
            return Err(Error::ContextOverflow {
                tokens: self.cache.len() + 1,
                context,
            });
        }
        let ids: Vec<Vec<u32>> = tokens.iter().map(|&t| vec![t]).collect();
        // Straight to the embedding table: a generated id is text, whatever its value.
        let embeds = self.model.embed_text(&ids, &self.device);
        let hidden = self.model.forward(embeds, &mut self.cache)?;
        Ok(self.model.last_logits(hidden))
    }
}
