//! DeepSeek-VL2's language model, the authors' `DeepseekV2ForCausalLM`: token embeddings, decoder
//! layers (pre-norm attention, MHA or MLA, then a dense MLP or mixture-of-experts), a final
//! RMSNorm and an untied `lm_head`. One cache kind per model: per-head K/V for MHA
//! ([`KvLayer`]), the compressed latent for MLA ([`MlaLayer`]).

use burn::module::{Module, Param};
use burn::nn;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use tita_core::{Error, Result};

use crate::cache::{Cache, KvLayer, Room};
use crate::deepseek_vl2::config::{AttentionKind, DeepseekV2Config};
use crate::deepseek_vl2::mla::{MlaAttention, MlaLayer};
use crate::deepseek_vl2::moe::{load_mlp, FeedForward, Moe};
use crate::layers::{fused_attention, linear, matvec_split, rms_norm, vocab_logits};
use crate::llama::rope::{Positions, Rope, Rotary};
use crate::llama::{Attention, LlamaKeys};
use crate::mask::Mask;
use crate::scope::Scope;
use crate::state::DecodeState;
use crate::weights::TensorSource;

/// Where the language model's tensors live in a DeepSeek-VL2 checkpoint.
pub fn hub_keys() -> LlamaKeys {
    LlamaKeys {
        decoder: "language.model.".into(),
        lm_head: "language.lm_head.weight".into(),
    }
}

/// A layer's attention: transformers' Llama attention (`use_mla` false) or MLA.
// One per layer, of one kind per model: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum SelfAttention<B: Backend> {
    Mha(Attention<B>),
    Mla(MlaAttention<B>),
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: nn::RmsNorm<B>,
    pub self_attn: SelfAttention<B>,
    pub post_attention_layernorm: nn::RmsNorm<B>,
    pub mlp: FeedForward<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// `layers.i` of the checkpoint.
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &DeepseekV2Config,
        i: usize,
        split: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let (hid, eps) = (c.hidden_size, c.rms_norm_eps);
        let self_attn = match &c.attention {
            AttentionKind::Mha => {
                let a = Attention::load(w.pp("self_attn"), &c.llama_view(), split, device)?;
                w.skip("self_attn.rotary_emb.inv_freq");
                SelfAttention::Mha(a)
            }
            AttentionKind::Mla(d) => {
                SelfAttention::Mla(MlaAttention::load(w.pp("self_attn"), c, d, split, device)?)
            }
        };
        let mlp = match &c.moe {
            Some(moe) if c.is_moe_layer(i) => FeedForward::Moe(Moe::load(
                w.pp("mlp"),
                hid,
                c.hidden_act,
                moe,
                split,
                device,
            )?),
            _ => FeedForward::Dense(load_mlp(
                w.pp("mlp"),
                (hid, c.intermediate_size),
                c.hidden_act,
                split,
                device,
            )?),
        };
        Ok(DecoderLayer {
            input_layernorm: rms_norm(w.pp("input_layernorm"), hid, eps, device)?,
            self_attn,
            post_attention_layernorm: rms_norm(w.pp("post_attention_layernorm"), hid, eps, device)?,
            mlp,
        })
    }

    /// The attention block's output (before the residual add) for `x`, the layer's input;
    /// writes this layer's cache, layer `i` of `cache`.
    pub fn attend(
        &self,
        x: Tensor<B, 3>,
        rope: &(Rotary<B>, Rotary<B>),
        mask: &Mask<B>,
        (cache, i): (&mut Cache<B>, usize),
        at: (usize, Room),
    ) -> Result<Tensor<B, 3>> {
        let x = self.input_layernorm.forward(x);
        let wrong = || Error::argument("cache", format!("layer {i} holds another kind of cache"));
        Ok(match &self.self_attn {
            SelfAttention::Mha(a) => {
                let kv = cache.layer::<KvLayer<B>>(i).ok_or_else(wrong)?;
                a.forward(x, rope, mask, kv, at)
            }
            SelfAttention::Mla(a) => {
                let latent = cache.layer::<MlaLayer<B>>(i).ok_or_else(wrong)?;
                a.forward(x, rope, mask, latent, at)
            }
        })
    }

    /// The feed-forward block's output (before the residual add) for `x`, the stream after
    /// attention.
    pub fn feed_forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct DeepseekV2<B: Backend> {
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: nn::RmsNorm<B>,
    /// None when tied to `embed_tokens`.
    pub lm_head: Option<nn::Linear<B>>,
    pub rope: Rope<B>,
    pub split: usize,
    /// Causal blocks through burn's fused attention (MHA on flex only; MLA computes its own).
    #[module(skip)]
    pub fused_attention: bool,
    #[module(skip)]
    pub config: DeepseekV2Config,
}

impl<B: Backend> DeepseekV2<B> {
    /// Builds the decoder from a checkpoint, checking every tensor against `c`.
    pub fn load(
        w: &mut impl TensorSource,
        keys: &LlamaKeys,
        c: &DeepseekV2Config,
        device: &B::Device,
    ) -> Result<Self> {
        let split = matvec_split::<B>(device);
        let mut d = Scope::new(w, &keys.decoder);
        let embed_tokens = d.param("embed_tokens.weight", [c.vocab_size, c.hidden_size], device)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::load(d.pp(format_args!("layers.{i}")), c, i, split, device))
            .collect::<Result<_>>()?;
        let norm = rms_norm(d.pp("norm"), c.hidden_size, c.rms_norm_eps, device)?;
        let lm_head = if c.tie_word_embeddings {
            w.skip(&keys.lm_head);
            None
        } else {
            let head = Scope::new(w, keys.lm_head.trim_end_matches("weight"));
            Some(linear(head, c.hidden_size, c.vocab_size, false, device)?)
        };
        let mla = c.mla().is_some();
        Ok(DeepseekV2 {
            rope: Rope::new(&c.llama_view(), embed_tokens.val().dtype(), device),
            embed_tokens,
            layers,
            norm,
            lm_head,
            split,
            fused_attention: !mla && fused_attention::<B>(device),
            config: c.clone(),
        })
    }

    /// The cache of every layer, of this model's kind.
    fn new_cache(&self) -> Cache<B> {
        let n = self.layers.len();
        match self.config.attention {
            AttentionKind::Mha => Cache::of::<KvLayer<B>>(n),
            AttentionKind::Mla(_) => Cache::of::<MlaLayer<B>>(n),
        }
    }

    /// An empty state for a batch left-padded by `pad_left[b]` positions.
    pub fn new_state(&self, pad_left: Vec<usize>) -> DecodeState<B> {
        DecodeState::new(self.new_cache(), Positions::padded(pad_left))
    }

    /// Embedding rows of `ids` for a batch of equal-length rows: `[batch, seq, hidden]`.
    pub fn embed(&self, ids: &[Vec<u32>], device: &B::Device) -> Result<Tensor<B, 3>> {
        let (b, s) = (ids.len(), ids.first().map_or(0, Vec::len));
        let vocab = self.config.vocab_size;
        if b == 0 || s == 0 || ids.iter().any(|r| r.len() != s) {
            return Err(Error::argument(
                "ids",
                "expected a non-empty batch of rows of one length",
            ));
        }
        if let Some(&bad) = ids.iter().flatten().find(|&&t| t as usize >= vocab) {
            return Err(Error::argument(
                "ids",
                format!("token id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        Ok(self.embed_rows(ids, device))
    }

    /// [`DeepseekV2::embed`] without the checks (ids already known to be in the vocabulary).
    pub fn embed_rows(&self, ids: &[Vec<u32>], device: &B::Device) -> Tensor<B, 3> {
        let (b, s) = (ids.len(), ids[0].len());
        let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
        let idx = Tensor::from_data(TensorData::new(flat, [b * s]), device);
        self.embed_tokens
            .val()
            .select(0, idx)
            .reshape([b, s, self.config.hidden_size])
    }

    /// Parameters read by one decode step: all but an untied embedding table (gathered from,
    /// not streamed) and the routed experts a token does not choose.
    pub fn decode_params(&self) -> usize {
        let embed = if self.lm_head.is_some() {
            self.embed_tokens.val().dims().iter().product()
        } else {
            0
        };
        let idle: usize = self
            .layers
            .iter()
            .map(|l| match &l.mlp {
                FeedForward::Moe(m) => {
                    let per = m.experts.first().map_or(0, |e| e.num_params());
                    (m.experts.len() - m.gate.config.num_experts_per_tok) * per
                }
                FeedForward::Dense(_) => 0,
            })
            .sum();
        self.num_params() - embed - idle
    }

    /// Runs `x` (`[batch, seq, hidden]` input embeddings) after what `state` holds and returns
    /// the final-normed hidden states; the state advances by `seq`.
    pub fn forward(&self, x: Tensor<B, 3>, state: &mut DecodeState<B>) -> Result<Tensor<B, 3>> {
        Ok(self.norm.forward(self.run(x, state, None)?))
    }

    /// The output of every decoder layer (before the final norm); the state advances as in a
    /// forward.
    pub fn layer_states(
        &self,
        x: Tensor<B, 3>,
        state: &mut DecodeState<B>,
    ) -> Result<Vec<Tensor<B, 3>>> {
        let mut states = Vec::with_capacity(self.layers.len());
        self.run(x, state, Some(&mut states))?;
        Ok(states)
    }

    fn run(
        &self,
        mut x: Tensor<B, 3>,
        state: &mut DecodeState<B>,
        mut states: Option<&mut Vec<Tensor<B, 3>>>,
    ) -> Result<Tensor<B, 3>> {
        let n = self.layers.len();
        match self.config.attention {
            AttentionKind::Mha => state.cache.check::<KvLayer<B>>(n)?,
            AttentionKind::Mla(_) => state.cache.check::<MlaLayer<B>>(n)?,
        }
        let [b, s, hidden] = x.dims();
        if b != state.batch() || hidden != self.config.hidden_size {
            return Err(Error::argument(
                "embeddings",
                format!(
                    "shape [{b}, {s}, {hidden}] does not fit a batch of {} rows of width {}",
                    state.batch(),
                    self.config.hidden_size
                ),
            ));
        }
        let past = state.cache.len();
        let context = self.config.max_position_embeddings;
        if past + s > context {
            return Err(Error::ContextOverflow {
                tokens: past + s,
                context,
            });
        }
        let rope = self.rope.for_tokens(&mut state.positions, None, (past, s));
        let capacity = state.cache.capacity();
        let mask = state.masks.get(
            &state.positions.pad_left,
            (past, s),
            capacity,
            self.fused_attention,
            &x.device(),
        );
        let room = state.cache.room(s);
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.attend(x.clone(), &rope, &mask, (&mut state.cache, i), (past, room))?;
            let mid = x + h;
            x = mid.clone() + layer.feed_forward(mid);
            if let Some(states) = states.as_deref_mut() {
                states.push(x.clone());
            }
        }
        state.cache.advance(s);
        Ok(x)
    }

    /// Vocabulary logits of hidden states: `[batch, seq, vocab]`, in f32.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        vocab_logits(
            self.lm_head.as_ref(),
            &self.embed_tokens,
            hidden,
            self.split,
        )
    }
}
