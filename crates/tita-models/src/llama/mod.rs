//! LLaMA decoder (`LlamaForCausalLM`, also LLaVA's language model and, with M-RoPE, Qwen2's):
//! RMSNorm, rotary position embeddings, grouped-query attention, SwiGLU MLP, and a per-layer
//! K/V cache so that a prompt is prefilled once and every further token costs one step.
//! Also the text-only `llama` family.

pub mod attention;
pub mod config;
pub mod rope;

use burn::module::{Module, Param};
use burn::nn;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use tita_core::Result;

pub use attention::{Attention, Mlp};
pub use config::LlamaConfig;
pub use rope::{MropePositions, Positions, Rope, Rotary};

use crate::cache::{Cache, KvLayer, Room};
use crate::family::{first_present, not_found, KeyLayout};
use crate::layers::{fused_attention, linear, matvec_split, rms_norm, vocab_logits};
use crate::mask::Mask;
use crate::scope::Scope;
use crate::state::DecodeState;
use crate::weights::{TensorSource, Weights};

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: nn::RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: nn::RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// One `layers.N` of the checkpoint.
    pub fn load(
        mut w: Scope<'_, impl TensorSource>,
        c: &LlamaConfig,
        split: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let (hid, eps) = (c.hidden_size, c.rms_norm_eps);
        let layer = DecoderLayer {
            input_layernorm: rms_norm(w.pp("input_layernorm"), hid, eps, device)?,
            self_attn: Attention::load(w.pp("self_attn"), c, split, device)?,
            post_attention_layernorm: rms_norm(w.pp("post_attention_layernorm"), hid, eps, device)?,
            mlp: Mlp::load(w.pp("mlp"), c, split, device)?,
        };
        // Old checkpoints carry the rotary buffer; it is recomputed from `rope_theta`.
        w.skip("self_attn.rotary_emb.inv_freq");
        Ok(layer)
    }

    /// Pre-norm attention and MLP, each added to the residual stream.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(Rotary<B>, Rotary<B>),
        mask: &Mask<B>,
        kv: &mut KvLayer<B>,
        at: (usize, Room),
    ) -> Tensor<B, 3> {
        let h = self
            .self_attn
            .forward(self.input_layernorm.forward(x.clone()), rope, mask, kv, at);
        let x = x + h;
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: nn::RmsNorm<B>,
    /// `None` when the output projection is tied to `embed_tokens`.
    pub lm_head: Option<nn::Linear<B>>,
    pub rope: Rope<B>,
    /// Blocks of a few-row projection (see [`project`]).
    pub split: usize,
    /// Causal blocks of several tokens by burn's fused attention (see [`fused_attention`]).
    #[module(skip)]
    pub fused_attention: bool,
    #[module(skip)]
    pub config: LlamaConfig,
}

/// Where the decoder's tensors live in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaKeys {
    /// Prefix of `embed_tokens`, `layers.N`, `norm` (e.g. `model.` or `language_model.model.`).
    pub decoder: String,
    /// Full name of the output projection weight (e.g. `lm_head.weight`).
    pub lm_head: String,
}

impl<B: Backend> Llama<B> {
    /// Builds the decoder from a checkpoint, checking every tensor against `c`.
    pub fn load(
        w: &mut impl TensorSource,
        keys: &LlamaKeys,
        c: &LlamaConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let split = matvec_split::<B>(device);
        let mut d = Scope::new(w, &keys.decoder);
        let embed_tokens = d.param("embed_tokens.weight", [c.vocab_size, c.hidden_size], device)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::load(d.pp(format_args!("layers.{i}")), c, split, device))
            .collect::<Result<_>>()?;
        let norm = rms_norm(d.pp("norm"), c.hidden_size, c.rms_norm_eps, device)?;
        Ok(Llama {
            lm_head: load_head(w, keys, c, device)?,
            rope: Rope::new(c, embed_tokens.val().dtype(), device),
            embed_tokens,
            layers,
            norm,
            split,
            fused_attention: fused_attention::<B>(device),
            config: c.clone(),
        })
    }

    /// An empty state for a batch left-padded by `pad_left[b]` positions.
    pub fn new_state(&self, pad_left: Vec<usize>) -> DecodeState<B> {
        DecodeState::new(
            Cache::of::<KvLayer<B>>(self.layers.len()),
            Positions::padded(pad_left),
        )
    }

    /// Embedding rows of `ids` for a batch: `[batch, seq, hidden]`.
    pub fn embed(&self, ids: &[Vec<u32>], device: &B::Device) -> Tensor<B, 3> {
        let (b, s) = (ids.len(), ids[0].len());
        let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
        let idx = Tensor::from_data(TensorData::new(flat, [b * s]), device);
        self.embed_tokens
            .val()
            .select(0, idx)
            .reshape([b, s, self.config.hidden_size])
    }

    /// Runs `x` (`[batch, seq, hidden]` input embeddings) after what `state` holds, with
    /// explicit M-RoPE positions for these tokens when given, and returns the final-normed
    /// hidden states; the state advances by `seq`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        positions: Option<&MropePositions>,
        state: &mut DecodeState<B>,
    ) -> Result<Tensor<B, 3>> {
        Ok(self.norm.forward(self.run(x, positions, state, None)?))
    }

    /// The output of every decoder layer (before the final norm), as transformers'
    /// `hidden_states[1..]`; the state advances as in a forward.
    pub fn layer_states(
        &self,
        x: Tensor<B, 3>,
        positions: Option<&MropePositions>,
        state: &mut DecodeState<B>,
    ) -> Result<Vec<Tensor<B, 3>>> {
        let mut states = Vec::with_capacity(self.layers.len());
        self.run(x, positions, state, Some(&mut states))?;
        Ok(states)
    }

    fn run(
        &self,
        mut x: Tensor<B, 3>,
        mrope: Option<&MropePositions>,
        state: &mut DecodeState<B>,
        mut states: Option<&mut Vec<Tensor<B, 3>>>,
    ) -> Result<Tensor<B, 3>> {
        state.cache.check::<KvLayer<B>>(self.layers.len())?;
        let [_, s, _] = x.dims();
        let past = state.cache.len();
        let rope = self.rope.for_tokens(&mut state.positions, mrope, (past, s));
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
            let kv = state.cache.layer::<KvLayer<B>>(i).expect("checked above");
            x = layer.forward(x, &rope, &mask, kv, (past, room));
            if let Some(states) = states.as_deref_mut() {
                states.push(x.clone());
            }
        }
        state.cache.advance(s);
        Ok(x)
    }

    /// Vocabulary logits of hidden states: `[batch, seq, vocab]`.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        vocab_logits(
            self.lm_head.as_ref(),
            &self.embed_tokens,
            hidden,
            self.split,
        )
    }

    /// Parameters read by one decode step (an untied embedding table is gathered from, not
    /// streamed).
    pub fn decode_params(&self) -> usize {
        let embed = if self.lm_head.is_some() {
            self.embed_tokens.val().dims().iter().product()
        } else {
            0
        };
        self.num_params() - embed
    }
}

/// The output projection, or None when it is tied to the embedding table (a stored copy is
/// accounted for, not loaded).
fn load_head<B: Backend>(
    w: &mut impl TensorSource,
    keys: &LlamaKeys,
    c: &LlamaConfig,
    device: &B::Device,
) -> Result<Option<nn::Linear<B>>> {
    if c.tie_word_embeddings {
        w.skip(&keys.lm_head);
        return Ok(None);
    }
    let head = Scope::new(w, keys.lm_head.trim_end_matches("weight"));
    Ok(Some(linear(
        head,
        c.hidden_size,
        c.vocab_size,
        false,
        device,
    )?))
}

/// Key layout of the text-only `llama` family: `model.*` (or bare) and `lm_head.weight`.
pub fn hub_keys() -> KeyLayout {
    KeyLayout::text_only("model.")
}

pub fn detect_keys(w: &Weights) -> Result<KeyLayout> {
    let tried = ["model.", ""];
    let decoder = first_present(w, &tried, "embed_tokens.weight")
        .ok_or_else(|| not_found(w, "the token embedding", &tried, "embed_tokens.weight"))?;
    Ok(KeyLayout::text_only(&decoder))
}
