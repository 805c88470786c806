//! What a decoder keeps of past positions, per layer, in a type its family chooses: per-head
//! keys and values ([`KvLayer`]) today; a family whose attention caches something else (MLA's
//! compressed `kv_lora_rank + rope` latent: `deepseek_vl2::MlaLayer`) supplies its own
//! [`LayerCache`] built on [`SeqBuffer`], and [`Cache`] holds it without a change here.
//!
//! Buffers are preallocated to the capacity the caller asks for (prompt + tokens to come) and
//! written in place (`slice_assign`), which also keeps shapes fixed for GPU kernels; they grow
//! only when a forward needs more than was asked for.

use std::any::Any;
use std::fmt::Debug;
use std::ops::Range;

use burn::tensor::{backend::Backend, Tensor};
use tita_core::{Error, Result};

/// One layer's cached state. Object-safe, so that a [`Cache`] holds any family's kind; a
/// `Clone` type gets [`LayerCacheDyn`] (copying and downcasting) for free.
pub trait LayerCache<B: Backend>: LayerCacheDyn<B> + Any + Debug + Send + Sync {
    /// Positions its buffers have room for.
    fn allocated(&self) -> usize;
}

/// What a boxed [`LayerCache`] needs of its concrete type, implemented for every `Clone` one.
pub trait LayerCacheDyn<B: Backend> {
    /// A copy that shares the tensors (a cloned session).
    fn boxed_clone(&self) -> Box<dyn LayerCache<B>>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn as_any(&self) -> &dyn Any;
}

impl<B: Backend, L: LayerCache<B> + Clone> LayerCacheDyn<B> for L {
    fn boxed_clone(&self) -> Box<dyn LayerCache<B>> {
        Box::new(self.clone())
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// How much room a write may allocate: `capacity` positions in all (0: none asked for, keep
/// what is written as it is), and the step by which a full buffer grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub capacity: usize,
    pub step: usize,
}

/// A tensor of past positions along `axis`, allocated once and written in place.
#[derive(Debug, Clone)]
pub struct SeqBuffer<B: Backend, const D: usize> {
    buf: Option<Tensor<B, D>>,
    axis: usize,
}

impl<B: Backend, const D: usize> SeqBuffer<B, D> {
    pub fn new(axis: usize) -> Self {
        SeqBuffer { buf: None, axis }
    }

    /// Positions the buffer has room for.
    pub fn allocated(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.dims()[self.axis])
    }

    /// The whole buffer (room included), None before the first write: what a family's cache
    /// actually keeps per position.
    pub fn buffer(&self) -> Option<&Tensor<B, D>> {
        self.buf.as_ref()
    }

    fn ranges(&self, dims: [usize; D], along: Range<usize>) -> [Range<usize>; D] {
        let mut r = dims.map(|d| 0..d);
        r[self.axis] = along;
        r
    }

    /// Writes `x` at positions `past..past + s` and returns positions `0..past + s`.
    pub fn append(&mut self, x: Tensor<B, D>, past: usize, room: Room) -> Tensor<B, D> {
        let s = x.dims()[self.axis];
        let t = past + s;
        let buf = match self.buf.take() {
            // Nothing reserved (training: one forward per batch): keep this forward's tensor.
            None if room.capacity == 0 => {
                self.buf = Some(x.clone());
                return x;
            }
            None => {
                let mut dims = x.dims();
                dims[self.axis] = room.capacity.max(t);
                Tensor::zeros(dims, (&x.device(), x.dtype()))
            }
            Some(buf) if buf.dims()[self.axis] < t => {
                let mut dims = buf.dims();
                let have = dims[self.axis];
                dims[self.axis] = room.capacity.max(t + room.step) - have;
                let more = Tensor::zeros(dims, (&buf.device(), buf.dtype()));
                Tensor::cat(vec![buf, more], self.axis)
            }
            Some(buf) => buf,
        };
        let dims = buf.dims();
        let buf = buf.slice_assign(self.ranges(dims, past..t), x);
        let filled = buf.clone().slice(self.ranges(dims, 0..t));
        self.buf = Some(buf);
        filled
    }
}

/// Keys and values per head, `[batch, kv_heads, positions, head_dim]` (LLaMA, Qwen2).
#[derive(Debug, Clone)]
pub struct KvLayer<B: Backend> {
    k: SeqBuffer<B, 4>,
    v: SeqBuffer<B, 4>,
}

impl<B: Backend> Default for KvLayer<B> {
    fn default() -> Self {
        // Two buffers: one shared by K and V would be copied at its first write.
        KvLayer {
            k: SeqBuffer::new(2),
            v: SeqBuffer::new(2),
        }
    }
}

impl<B: Backend> KvLayer<B> {
    /// Writes this forward's keys and values after `past` and returns all of them.
    pub fn append(
        &mut self,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        past: usize,
        room: Room,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        (self.k.append(k, past, room), self.v.append(v, past, room))
    }
}

impl<B: Backend> LayerCache<B> for KvLayer<B> {
    fn allocated(&self) -> usize {
        self.k.allocated()
    }
}

/// Every layer's cache for a batch of sequences, and how many positions they hold.
#[derive(Debug)]
pub struct Cache<B: Backend> {
    layers: Vec<Box<dyn LayerCache<B>>>,
    len: usize,
    /// Positions asked for (0: none).
    capacity: usize,
    /// Positions of the first forward (the prompt).
    first: Option<usize>,
}

impl<B: Backend> Clone for Cache<B> {
    fn clone(&self) -> Self {
        Cache {
            layers: self.layers.iter().map(|l| l.boxed_clone()).collect(),
            len: self.len,
            capacity: self.capacity,
            first: self.first,
        }
    }
}

impl<B: Backend> Cache<B> {
    /// `layers` empty caches of the kind the family chose.
    pub fn new(layers: Vec<Box<dyn LayerCache<B>>>) -> Self {
        Cache {
            layers,
            len: 0,
            capacity: 0,
            first: None,
        }
    }

    /// `n` empty caches of kind `L`.
    pub fn of<L: LayerCache<B> + Default>(n: usize) -> Self {
        Self::new(
            (0..n)
                .map(|_| Box::new(L::default()) as Box<dyn LayerCache<B>>)
                .collect(),
        )
    }

    /// Room for `positions` in all (prompt included); never shrinks what was asked before.
    pub fn reserve(&mut self, positions: usize) {
        self.capacity = self.capacity.max(positions);
    }

    /// Positions held, padding included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Positions the buffers have room for (what was asked for once written).
    pub fn capacity(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |l| l.allocated())
            .max(self.len)
    }

    /// The room a forward of `s` positions writes with: what was asked for, and when that is
    /// exceeded, growth by as much as was asked for beyond the first forward.
    pub fn room(&self, s: usize) -> Room {
        Room {
            capacity: self.capacity,
            step: self.capacity.saturating_sub(self.first.unwrap_or(s)),
        }
    }

    /// Fails unless this cache has `n` layers of kind `L` (a cache made for another model).
    pub fn check<L: LayerCache<B>>(&self, n: usize) -> Result<()> {
        let kind_ok = self.layers.iter().all(|l| l.as_any().is::<L>());
        if self.layers.len() != n || !kind_ok {
            return Err(Error::argument(
                "cache",
                format!(
                    "made for another model: {} layers, expected {n} of `{}`",
                    self.layers.len(),
                    std::any::type_name::<L>()
                ),
            ));
        }
        Ok(())
    }

    /// Layer `i` as kind `L`, or None when it is another kind (see [`Cache::check`]).
    pub fn layer<L: LayerCache<B>>(&mut self, i: usize) -> Option<&mut L> {
        self.layers.get_mut(i)?.as_any_mut().downcast_mut::<L>()
    }

    /// Counts the `s` positions a forward wrote into every layer.
    pub fn advance(&mut self, s: usize) {
        self.first.get_or_insert(s);
        self.len += s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = burn::backend::Flex;

    fn row(values: &[f32]) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [1, values.len()]),
            &Default::default(),
        )
    }

    #[test]
    fn buffer_writes_in_place_and_grows_only_past_the_capacity() {
        let mut b = SeqBuffer::<B, 2>::new(1);
        let room = Room {
            capacity: 4,
            step: 2,
        };
        let all = b.append(row(&[1.0, 2.0, 3.0]), 0, room);
        assert_eq!((all.dims(), b.allocated()), ([1, 3], 4));
        let all = b.append(row(&[4.0]), 3, room);
        assert_eq!((all.dims(), b.allocated()), ([1, 4], 4));
        let all = b.append(row(&[5.0]), 4, room);
        assert_eq!(b.allocated(), 7);
        let got: Vec<f32> = all.into_data().convert::<f32>().into_vec().unwrap();
        assert_eq!(got, [1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn a_cache_of_another_kind_is_refused() {
        #[derive(Debug, Clone, Default)]
        struct Other;
        impl LayerCache<B> for Other {
            fn allocated(&self) -> usize {
                0
            }
        }
        let mut c = Cache::<B>::of::<Other>(2);
        assert!(c.check::<Other>(2).is_ok());
        assert!(c.check::<KvLayer<B>>(2).is_err());
        assert!(c.check::<Other>(3).is_err());
        assert!(c.layer::<KvLayer<B>>(0).is_none());
    }
}
