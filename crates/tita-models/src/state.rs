//! What a batch of sequences carries from one forward to the next: the layers' caches (of
//! the kind the family chose), the rows' rotary positions and the masks built for their
//! padding.

use burn::tensor::backend::Backend;

use crate::cache::Cache;
use crate::llama::rope::Positions;
use crate::mask::Masks;

/// A batch's decoding state (one per model and batch; [`crate::Vlm::new_cache`] makes it).
#[derive(Debug, Clone)]
pub struct DecodeState<B: Backend> {
    pub cache: Cache<B>,
    pub positions: Positions,
    pub(crate) masks: Masks<B>,
}

impl<B: Backend> DecodeState<B> {
    pub fn new(cache: Cache<B>, positions: Positions) -> Self {
        DecodeState {
            cache,
            positions,
            masks: Masks::default(),
        }
    }

    /// Room for `positions` in all, prompt included (e.g. prompt + `max_new_tokens`): the
    /// first forward allocates it and later ones write in place; more grows the buffers.
    pub fn with_capacity(mut self, positions: usize) -> Self {
        self.cache.reserve(positions);
        self
    }

    /// Positions held, padding included.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    pub fn batch(&self) -> usize {
        self.positions.batch()
    }

    pub fn pad_left(&self) -> &[usize] {
        &self.positions.pad_left
    }

    /// Per row, the rotary position of token `i` (after the padding) minus `i`.
    pub fn rope_delta(&self) -> &[i64] {
        &self.positions.rope_delta
    }

    /// Positions the buffers have room for.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }
}
