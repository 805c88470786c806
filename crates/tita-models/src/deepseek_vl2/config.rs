//! `DeepseekVLV2Config` in the hub's nesting: `language_config` (the authors' `DeepseekV2Config`),
//! `vision_config` (their SigLIP `VisionEncoderConfig`), `projector_config` (`MlpProjectorConfig`)
//! and the top-level tiling fields. The public `config.json` files list only what differs from
//! the authors' code defaults (e.g. `use_mla`, `rope_theta`, `image_size` are absent), so every
//! default here is theirs, not transformers'. Keys the public files carry but the model does not
//! read (`lm_head`, `rm_head`, `auto_map`, `architectures`, ...) are accepted.

use std::path::Path;

use serde_json::{json, Value};
use tita_core::config::{positive, read_config, Fields};
use tita_core::image::PixelValues;
use tita_core::{Activation, Error, Result};

use crate::llama::LlamaConfig;

/// The whole checkpoint's config (`model_type` `deepseek_vl_v2`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeepseekVl2Config {
    pub language: DeepseekV2Config,
    pub vision: VisionEncoderConfig,
    pub projector: ProjectorConfig,
    /// `(width, height)` in pixels of the tilings the processor may choose (the authors'
    /// processor reads each pair in that order).
    pub candidate_resolutions: Vec<(usize, usize)>,
    pub tile_tag: TileTag,
    pub global_view_pos: GlobalViewPos,
    /// The language model as every family's callers see it (vocabulary, context, special
    /// ids, rope): [`DeepseekV2Config`] seen as a LLaMA, derived from `language`.
    pub text: LlamaConfig,
}

/// `<image>`'s id in the DeepSeek-V3 tokenizer as the VL2 processor extends it (every public
/// checkpoint); a pipeline checks its tokenizer agrees.
pub const IMAGE_TOKEN_ID: u32 = 128_815;

/// How image tokens are laid out around the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileTag {
    /// `2D`: a newline embedding after every row of features, a view separator between the
    /// global view and the local tiles (all public checkpoints).
    TwoD,
    /// `1D`: learned tile indicators (the authors' code marks it abandoned).
    OneD,
}

/// Where the global view goes relative to the local tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalViewPos {
    Head,
    Tail,
}

/// The DeepSeek-V2 decoder (`language_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeepseekV2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the dense MLPs (layers below `first_k_dense_replace`, or every layer without
    /// experts).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Read by the MHA path only (MLA shares one latent across heads).
    pub num_key_value_heads: usize,
    pub attention: AttentionKind,
    /// None: every layer is dense (`n_routed_experts` null).
    pub moe: Option<MoeConfig>,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Bias on `q_a_proj`, `kv_a_proj_with_mqa` and `o_proj` (MLA), or on q/k/v/o (MHA).
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// `torch_dtype` as written (informative).
    pub dtype: Option<String>,
}

/// `use_mla` false (transformers' Llama attention) or true (multi-head latent attention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Separate q/k/v/o projections, `hidden_size / num_attention_heads` per head, rotate-half
    /// RoPE over the whole head.
    Mha,
    Mla(MlaDims),
}

/// The shapes of multi-head latent attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaDims {
    /// None: a plain `q_proj`; else `q_a_proj` -> `q_a_layernorm` -> `q_b_proj`.
    pub q_lora_rank: Option<usize>,
    /// Width of the compressed key/value latent (what the cache keeps, with the rope key).
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
}

impl MlaDims {
    /// Query and key width per head: nope + rope.
    pub fn q_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Values cached per position and layer: the latent and the shared rope key.
    pub fn latent_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }
}

/// The routed experts and how tokens are sent to them.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub n_routed_experts: usize,
    pub num_experts_per_tok: usize,
    /// None: no shared experts; else one MLP `n · moe_intermediate_size` wide.
    pub n_shared_experts: Option<usize>,
    pub moe_intermediate_size: usize,
    /// Layers below this index are dense.
    pub first_k_dense_replace: usize,
    /// Of the other layers, those whose index is a multiple of this have experts.
    pub moe_layer_freq: usize,
    pub scoring: Scoring,
    pub topk_method: TopkMethod,
    /// Divide the chosen weights by their sum (only when more than one expert is chosen).
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f64,
}

/// `scoring_func`: how gate logits become expert scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    Softmax,
    Sigmoid,
}

/// `topk_method`: how the experts of a token are chosen from the scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopkMethod {
    /// The `num_experts_per_tok` best scores.
    Greedy,
    /// Keep the `topk_group` groups with the best maximum score, zero the other groups'
    /// scores, then the best scores.
    GroupLimitedGreedy { n_group: usize, topk_group: usize },
    /// Choose by score + `e_score_correction_bias`: keep the `topk_group` groups whose two best
    /// biased scores sum highest, zero the others, take the best; weights are the unbiased
    /// scores of the chosen experts.
    NoauxTc { n_group: usize, topk_group: usize },
}

/// The SigLIP tower (`vision_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionEncoderConfig {
    /// Informative (`siglip_so400m_patch14_384`): the shape comes from the fields below.
    pub model_name: String,
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    /// MLP width is `int(width · mlp_ratio)` (3.7362 in the public checkpoints).
    pub mlp_ratio: f64,
    pub global_pool: String,
    pub ignore_head: bool,
    pub class_token: bool,
}

impl VisionEncoderConfig {
    /// The MLP's hidden width, as timm computes it: `int(width · mlp_ratio)`.
    pub fn mlp_hidden(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }

    /// Patches per side (the convolution drops what does not fill a patch).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// `projector_config`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectorConfig {
    pub projector_type: ProjectorType,
    pub input_dim: usize,
    pub n_embed: usize,
    pub depth: usize,
    pub mlp_ratio: usize,
    pub downsample_ratio: usize,
    pub token_pooling: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectorType {
    Identity,
    Linear,
    MlpGelu,
    /// `downsample_ratio`² neighbouring features concatenated, then the MLP (all public
    /// checkpoints).
    DownsampleMlpGelu,
}

impl DeepseekVl2Config {
    /// Reads and validates `config.json` (a file, or a directory that holds one).
    pub fn from_file(path: &Path) -> Result<Self> {
        let (value, path) = read_config(path)?;
        Self::from_value(&value, &path)
    }

    /// Parses an already loaded config; `path` names the file in errors.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let root = Fields::root(value, path)?;
        if let Some(mt) = root.opt_str("model_type")? {
            if mt != "deepseek_vl_v2" {
                return Err(root.err(
                    "model_type",
                    format!("`{mt}` is not a DeepSeek-VL2 config (expected `deepseek_vl_v2`)"),
                ));
            }
        }
        let language = parse_language(
            &root.child("language_config")?,
            value.get("language_config"),
            Some(&root),
        )?;
        let vision = parse_vision(&root.child("vision_config")?)?;
        let projector = parse_projector(&root.child("projector_config")?)?;
        let p = root.child("projector_config")?;
        if projector.input_dim != vision.width {
            return Err(p.err(
                "input_dim",
                format!(
                    "{} does not match vision_config.width = {}",
                    projector.input_dim, vision.width
                ),
            ));
        }
        if projector.n_embed != language.hidden_size {
            return Err(p.err(
                "n_embed",
                format!(
                    "{} does not match language_config.hidden_size = {}",
                    projector.n_embed, language.hidden_size
                ),
            ));
        }
        Ok(DeepseekVl2Config {
            text: language.llama_view(),
            language,
            vision,
            projector,
            candidate_resolutions: parse_resolutions(&root)?,
            tile_tag: match root.opt_str("tile_tag")?.as_deref() {
                Some("2D") => TileTag::TwoD,
                Some("1D") => TileTag::OneD,
                Some(other) => {
                    return Err(root.err("tile_tag", format!("`{other}` is not `2D` or `1D`")))
                }
                None => {
                    return Err(root.err(
                        "tile_tag",
                        "missing: the authors' default is the string `tile_tag`, which their \
                         model refuses (expected `2D` or `1D`)",
                    ))
                }
            },
            global_view_pos: match root.opt_str("global_view_pos")?.as_deref() {
                None | Some("head") => GlobalViewPos::Head,
                Some("tail") => GlobalViewPos::Tail,
                Some(other) => {
                    return Err(root.err(
                        "global_view_pos",
                        format!("`{other}` is not `head` or `tail`"),
                    ))
                }
            },
        })
    }
}

impl DeepseekVl2Config {
    /// Feature rows per tile side after the projector: `⌈(size / patch) / ratio⌉`.
    pub fn tokens_per_side(&self) -> usize {
        self.vision.grid().div_ceil(self.projector.downsample_ratio)
    }

    /// Image tokens of one image tiled `[across, down]`: the global view's rows with their
    /// newlines, the separator, the stitched local grid with a newline per row.
    pub fn image_tokens(&self, [across, down]: [usize; 2]) -> usize {
        let s = self.tokens_per_side();
        s * (s + 1) + 1 + (down * s) * (across * s + 1)
    }

    /// The tiling `[across, down]` of an image in the processor's band layout
    /// (`[3, (1 + down)·size, across·size]`, see `processor::band`), checked against the tile
    /// size.
    pub fn tiling_of(&self, image: &PixelValues) -> Result<[usize; 2]> {
        let s = self.vision.image_size;
        let (h, w) = (image.height, image.width);
        if h % s != 0 || w % s != 0 || h < 2 * s || w == 0 || image.data.len() != 3 * h * w {
            return Err(Error::argument(
                "image",
                format!(
                    "preprocessed to {h}x{w} ({} values), not a DeepSeek-VL2 tiling of {s}-pixel \
                     tiles (3 channels, a band of one tile over the local canvas)",
                    image.data.len()
                ),
            ));
        }
        Ok([w / s, h / s - 1])
    }

    /// The config with every field explicit, in the hub's nesting.
    pub fn to_hf_json(&self) -> Value {
        let l = &self.language;
        let mut language = json!({
            "model_type": "deepseek_v2",
            "architectures": ["DeepseekV2ForCausalLM"],
            "vocab_size": l.vocab_size,
            "hidden_size": l.hidden_size,
            "intermediate_size": l.intermediate_size,
            "num_hidden_layers": l.num_hidden_layers,
            "num_attention_heads": l.num_attention_heads,
            "num_key_value_heads": l.num_key_value_heads,
            "hidden_act": l.hidden_act.hf_name(),
            "max_position_embeddings": l.max_position_embeddings,
            "rms_norm_eps": l.rms_norm_eps,
            "rope_theta": l.rope_theta,
            "attention_bias": l.attention_bias,
            "tie_word_embeddings": l.tie_word_embeddings,
            "bos_token_id": l.bos_token_id,
            "eos_token_id": l.eos_token_ids,
            "pad_token_id": l.pad_token_id,
            "torch_dtype": l.dtype.clone().unwrap_or_else(|| "float32".into()),
            "use_mla": l.mla().is_some(),
            "n_routed_experts": Value::Null,
        });
        let m = language.as_object_mut().expect("an object");
        match &l.attention {
            AttentionKind::Mha => {
                m.insert("q_lora_rank".into(), Value::Null);
            }
            AttentionKind::Mla(d) => {
                m.insert("q_lora_rank".into(), json!(d.q_lora_rank));
                m.insert("kv_lora_rank".into(), json!(d.kv_lora_rank));
                m.insert("qk_nope_head_dim".into(), json!(d.qk_nope_head_dim));
                m.insert("qk_rope_head_dim".into(), json!(d.qk_rope_head_dim));
                m.insert("v_head_dim".into(), json!(d.v_head_dim));
            }
        }
        if let Some(e) = &l.moe {
            let (method, groups) = match e.topk_method {
                TopkMethod::Greedy => ("greedy", None),
                TopkMethod::GroupLimitedGreedy {
                    n_group,
                    topk_group,
                } => ("group_limited_greedy", Some((n_group, topk_group))),
                TopkMethod::NoauxTc {
                    n_group,
                    topk_group,
                } => ("noaux_tc", Some((n_group, topk_group))),
            };
            for (k, v) in [
                ("n_routed_experts", json!(e.n_routed_experts)),
                ("num_experts_per_tok", json!(e.num_experts_per_tok)),
                ("n_shared_experts", json!(e.n_shared_experts)),
                ("moe_intermediate_size", json!(e.moe_intermediate_size)),
                ("first_k_dense_replace", json!(e.first_k_dense_replace)),
                ("moe_layer_freq", json!(e.moe_layer_freq)),
                (
                    "scoring_func",
                    json!(match e.scoring {
                        Scoring::Softmax => "softmax",
                        Scoring::Sigmoid => "sigmoid",
                    }),
                ),
                ("topk_method", json!(method)),
                ("n_group", json!(groups.map(|g| g.0))),
                ("topk_group", json!(groups.map(|g| g.1))),
                ("norm_topk_prob", json!(e.norm_topk_prob)),
                ("routed_scaling_factor", json!(e.routed_scaling_factor)),
            ] {
                m.insert(k.into(), v);
            }
        }
        let v = &self.vision;
        let p = &self.projector;
        json!({
            "model_type": "deepseek_vl_v2",
            "architectures": ["DeepseekVLV2ForCausalLM"],
            "language_config": language,
            "vision_config": {
                "model_type": "vision",
                "model_name": v.model_name,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "width": v.width,
                "layers": v.layers,
                "heads": v.heads,
                "mlp_ratio": v.mlp_ratio,
                "global_pool": v.global_pool,
                "ignore_head": v.ignore_head,
                "class_token": v.class_token,
            },
            "projector_config": {
                "model_type": "mlp_projector",
                "projector_type": match p.projector_type {
                    ProjectorType::Identity => "identity",
                    ProjectorType::Linear => "linear",
                    ProjectorType::MlpGelu => "mlp_gelu",
                    ProjectorType::DownsampleMlpGelu => "downsample_mlp_gelu",
                },
                "input_dim": p.input_dim,
                "n_embed": p.n_embed,
                "depth": p.depth,
                "mlp_ratio": p.mlp_ratio,
                "downsample_ratio": p.downsample_ratio,
                "token_pooling": p.token_pooling,
            },
            "candidate_resolutions": self
                .candidate_resolutions
                .iter()
                .map(|&(w, h)| [w, h])
                .collect::<Vec<_>>(),
            "tile_tag": match self.tile_tag {
                TileTag::TwoD => "2D",
                TileTag::OneD => "1D",
            },
            "global_view_pos": match self.global_view_pos {
                GlobalViewPos::Head => "head",
                GlobalViewPos::Tail => "tail",
            },
            "torch_dtype": l.dtype.clone().unwrap_or_else(|| "float32".into()),
        })
    }
}

/// `candidate_resolutions`: a non-empty list of `[width, height]` pairs; default `[[384, 384]]`.
pub(crate) fn parse_resolutions(root: &Fields) -> Result<Vec<(usize, usize)>> {
    let field = "candidate_resolutions";
    let Some(v) = root.get(field) else {
        return Ok(vec![(384, 384)]);
    };
    let bad = |what: String| root.err(field, what);
    let items = v.as_array().ok_or_else(|| {
        bad(format!(
            "expected a list of [width, height] pairs, found {v}"
        ))
    })?;
    if items.is_empty() {
        return Err(bad("empty: at least one resolution is needed".into()));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let pair: Option<Vec<usize>> = item.as_array().and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().filter(|&x| x > 0).map(|x| x as usize))
                    .collect()
            });
            match pair.as_deref() {
                Some(&[h, w]) => Ok((h, w)),
                _ => Err(bad(format!(
                    "entry {i} ({item}) is not a pair of positive integers [width, height]"
                ))),
            }
        })
        .collect()
}

/// A positive, finite number.
fn positive_f64(f: &Fields, field: &str, value: f64) -> Result<f64> {
    if !(value.is_finite() && value > 0.0) {
        return Err(f.err(field, format!("{value} must be a positive number")));
    }
    Ok(value)
}

/// An optional count where `null` and absence differ: absent takes `default`, `null` is None.
fn nullable_usize(
    f: &Fields,
    raw: Option<&Value>,
    field: &str,
    default: Option<usize>,
) -> Result<Option<usize>> {
    match raw.and_then(|r| r.get(field)) {
        None => Ok(default),
        Some(Value::Null) => Ok(None),
        Some(_) => f.opt_usize(field),
    }
}

/// `language_config` with the authors' `DeepseekV2Config` defaults. `raw` is the same object as
/// JSON, to tell an explicit `null` (e.g. `q_lora_rank: null`: no query compression) from an
/// absent field (the default, 1536). `parent` supplies `torch_dtype` when the section lacks it.
pub fn parse_language(
    f: &Fields,
    raw: Option<&Value>,
    parent: Option<&Fields>,
) -> Result<DeepseekV2Config> {
    if let Some(mt) = f.opt_str("model_type")? {
        if mt != "deepseek_v2" {
            return Err(f.err(
                "model_type",
                format!("`{mt}` is not supported (expected `deepseek_v2`)"),
            ));
        }
    }
    let hidden_size = positive(f, "hidden_size", f.usize("hidden_size", 4096)?)?;
    let heads = positive(
        f,
        "num_attention_heads",
        f.usize("num_attention_heads", 32)?,
    )?;
    // The authors default to 32, not to the number of heads.
    let kv_heads = positive(
        f,
        "num_key_value_heads",
        f.usize("num_key_value_heads", 32)?,
    )?;
    let use_mla = f.bool("use_mla", true)?;
    let attention = if use_mla {
        parse_mla(f, raw)?
    } else {
        if hidden_size % heads != 0 {
            return Err(f.err(
                "num_attention_heads",
                format!("{heads} heads do not divide hidden_size = {hidden_size}"),
            ));
        }
        if heads % kv_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads = {heads}"),
            ));
        }
        if (hidden_size / heads) % 2 != 0 {
            return Err(f.err(
                "num_attention_heads",
                format!(
                    "the head size hidden_size / heads = {} must be even for rotary embeddings",
                    hidden_size / heads
                ),
            ));
        }
        AttentionKind::Mha
    };
    if f.get("rope_scaling").is_some() {
        return Err(f.err(
            "rope_scaling",
            "RoPE scaling (linear, dynamic, yarn) is not supported yet; the public DeepSeek-VL2 \
             configs set none",
        ));
    }
    let num_hidden_layers = f.usize("num_hidden_layers", 30)?;
    let moe = parse_moe(f, raw, num_hidden_layers)?;
    let dtype = match f.opt_str("torch_dtype")? {
        Some(d) => Some(d),
        None => match parent {
            Some(p) => p.opt_str("torch_dtype")?,
            None => None,
        },
    };
    Ok(DeepseekV2Config {
        vocab_size: positive(f, "vocab_size", f.usize("vocab_size", 102_400)?)?,
        hidden_size,
        intermediate_size: positive(f, "intermediate_size", f.usize("intermediate_size", 11008)?)?,
        num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        attention,
        moe,
        hidden_act: f.activation("hidden_act", Activation::Silu)?,
        max_position_embeddings: positive(
            f,
            "max_position_embeddings",
            f.usize("max_position_embeddings", 2048)?,
        )?,
        rms_norm_eps: positive_f64(f, "rms_norm_eps", f.f64("rms_norm_eps", 1e-6)?)?,
        rope_theta: positive_f64(f, "rope_theta", f.f64("rope_theta", 10000.0)?)?,
        attention_bias: f.bool("attention_bias", false)?,
        tie_word_embeddings: f.bool("tie_word_embeddings", false)?,
        bos_token_id: f.ids("bos_token_id", &[100_000])?.first().copied(),
        eos_token_ids: f.ids("eos_token_id", &[100_001])?,
        pad_token_id: f.ids("pad_token_id", &[])?.first().copied(),
        dtype,
    })
}

fn parse_mla(f: &Fields, raw: Option<&Value>) -> Result<AttentionKind> {
    let q_lora_rank = nullable_usize(f, raw, "q_lora_rank", Some(1536))?
        .map(|r| positive(f, "q_lora_rank", r))
        .transpose()?;
    let kv_lora_rank = match nullable_usize(f, raw, "kv_lora_rank", Some(512))? {
        Some(r) => positive(f, "kv_lora_rank", r)?,
        None => {
            return Err(f.err(
                "kv_lora_rank",
                "null, but `use_mla` is true (absent or true) and needs a latent width",
            ))
        }
    };
    let rope = positive(f, "qk_rope_head_dim", f.usize("qk_rope_head_dim", 64)?)?;
    if rope % 2 != 0 {
        return Err(f.err(
            "qk_rope_head_dim",
            format!("{rope} must be even for rotary embeddings"),
        ));
    }
    Ok(AttentionKind::Mla(MlaDims {
        q_lora_rank,
        kv_lora_rank,
        qk_nope_head_dim: positive(f, "qk_nope_head_dim", f.usize("qk_nope_head_dim", 128)?)?,
        qk_rope_head_dim: rope,
        v_head_dim: positive(f, "v_head_dim", f.usize("v_head_dim", 128)?)?,
    }))
}

fn parse_moe(f: &Fields, raw: Option<&Value>, layers: usize) -> Result<Option<MoeConfig>> {
    let scoring = match f.opt_str("scoring_func")?.as_deref() {
        None | Some("softmax") => Scoring::Softmax,
        Some("sigmoid") => Scoring::Sigmoid,
        Some(other) => {
            return Err(f.err(
                "scoring_func",
                format!("`{other}` is not `softmax` or `sigmoid`"),
            ))
        }
    };
    let method = f.opt_str("topk_method")?;
    let known = ["greedy", "group_limited_greedy", "noaux_tc", "gready"];
    if let Some(m) = method.as_deref().filter(|m| !known.contains(m)) {
        return Err(f.err(
            "topk_method",
            format!("`{m}` is not `greedy`, `group_limited_greedy` or `noaux_tc`"),
        ));
    }
    let Some(experts) = nullable_usize(f, raw, "n_routed_experts", None)? else {
        return Ok(None);
    };
    let experts = positive(f, "n_routed_experts", experts)?;
    let per_tok = match nullable_usize(f, raw, "num_experts_per_tok", None)? {
        Some(k) => positive(f, "num_experts_per_tok", k)?,
        None => {
            return Err(f.err(
                "num_experts_per_tok",
                "missing, but `n_routed_experts` is set",
            ))
        }
    };
    if per_tok > experts {
        return Err(f.err(
            "num_experts_per_tok",
            format!("{per_tok} is more than n_routed_experts = {experts}"),
        ));
    }
    let groups = |f: &Fields| -> Result<(usize, usize)> {
        let n_group = positive(
            f,
            "n_group",
            nullable_usize(f, raw, "n_group", None)?
                .ok_or_else(|| f.err("n_group", "missing, but the topk_method groups experts"))?,
        )?;
        let topk_group = positive(
            f,
            "topk_group",
            nullable_usize(f, raw, "topk_group", None)?.ok_or_else(|| {
                f.err("topk_group", "missing, but the topk_method groups experts")
            })?,
        )?;
        if experts % n_group != 0 {
            return Err(f.err(
                "n_group",
                format!("{n_group} groups do not divide n_routed_experts = {experts}"),
            ));
        }
        if topk_group > n_group {
            return Err(f.err(
                "topk_group",
                format!("{topk_group} is more than n_group = {n_group}"),
            ));
        }
        Ok((n_group, topk_group))
    };
    let topk_method = match method.as_deref() {
        Some("greedy") => TopkMethod::Greedy,
        Some("group_limited_greedy") => {
            let (n_group, topk_group) = groups(f)?;
            TopkMethod::GroupLimitedGreedy {
                n_group,
                topk_group,
            }
        }
        Some("noaux_tc") => {
            let (n_group, topk_group) = groups(f)?;
            if experts / n_group < 2 {
                return Err(f.err(
                    "n_group",
                    format!(
                        "{n_group} groups of {experts} experts leave fewer than the two per \
                         group that noaux_tc scores a group by"
                    ),
                ));
            }
            TopkMethod::NoauxTc {
                n_group,
                topk_group,
            }
        }
        _ => {
            return Err(f.err(
                "topk_method",
                "missing or `gready` (the authors' default, a typo that matches none of \
                 their routing branches); a model with routed experts needs `greedy`, \
                 `group_limited_greedy` or `noaux_tc`",
            ))
        }
    };
    let n_shared_experts = nullable_usize(f, raw, "n_shared_experts", None)?
        .map(|n| positive(f, "n_shared_experts", n))
        .transpose()?;
    let first_k_dense_replace = f.usize("first_k_dense_replace", 0)?;
    if first_k_dense_replace > layers {
        return Err(f.err(
            "first_k_dense_replace",
            format!("{first_k_dense_replace} is more than num_hidden_layers = {layers}"),
        ));
    }
    let routed_scaling_factor = f.f64("routed_scaling_factor", 1.0)?;
    if !routed_scaling_factor.is_finite() {
        return Err(f.err("routed_scaling_factor", "must be a finite number"));
    }
    Ok(Some(MoeConfig {
        n_routed_experts: experts,
        num_experts_per_tok: per_tok,
        n_shared_experts,
        moe_intermediate_size: positive(
            f,
            "moe_intermediate_size",
            f.usize("moe_intermediate_size", 1407)?,
        )?,
        first_k_dense_replace,
        moe_layer_freq: positive(f, "moe_layer_freq", f.usize("moe_layer_freq", 1)?)?,
        scoring,
        topk_method,
        norm_topk_prob: f.bool("norm_topk_prob", false)?,
        routed_scaling_factor,
    }))
}

fn parse_vision(f: &Fields) -> Result<VisionEncoderConfig> {
    let width = positive(f, "width", f.usize("width", 1024)?)?;
    let heads = positive(f, "heads", f.usize("heads", 16)?)?;
    if width % heads != 0 {
        return Err(f.err(
            "heads",
            format!("{heads} heads do not divide width = {width}"),
        ));
    }
    let image_size = positive(f, "image_size", f.usize("image_size", 384)?)?;
    let patch_size = positive(f, "patch_size", f.usize("patch_size", 16)?)?;
    if patch_size > image_size {
        return Err(f.err(
            "patch_size",
            format!("{patch_size} is larger than image_size = {image_size}"),
        ));
    }
    Ok(VisionEncoderConfig {
        model_name: f
            .opt_str("model_name")?
            .unwrap_or_else(|| "siglip_large_patch16_384".into()),
        image_size,
        patch_size,
        width,
        layers: f.usize("layers", 24)?,
        heads,
        mlp_ratio: positive_f64(f, "mlp_ratio", f.f64("mlp_ratio", 4.0)?)?,
        global_pool: f.opt_str("global_pool")?.unwrap_or_else(|| "map".into()),
        ignore_head: f.bool("ignore_head", true)?,
        class_token: f.bool("class_token", false)?,
    })
}

fn parse_projector(f: &Fields) -> Result<ProjectorConfig> {
    let projector_type = match f.opt_str("projector_type")?.as_deref() {
        None | Some("downsample_mlp_gelu") => ProjectorType::DownsampleMlpGelu,
        Some("identity") => ProjectorType::Identity,
        Some("linear") => ProjectorType::Linear,
        Some("mlp_gelu") => ProjectorType::MlpGelu,
        Some(other) => {
            return Err(f.err(
                "projector_type",
                format!(
                    "`{other}` is not `downsample_mlp_gelu`, `mlp_gelu`, `linear` or `identity`"
                ),
            ))
        }
    };
    Ok(ProjectorConfig {
        projector_type,
        input_dim: positive(f, "input_dim", f.usize("input_dim", 1152)?)?,
        n_embed: positive(f, "n_embed", f.usize("n_embed", 2048)?)?,
        depth: positive(f, "depth", f.usize("depth", 2)?)?,
        mlp_ratio: positive(f, "mlp_ratio", f.usize("mlp_ratio", 1)?)?,
        downsample_ratio: positive(f, "downsample_ratio", f.usize("downsample_ratio", 2)?)?,
        token_pooling: f.bool("token_pooling", false)?,
    })
}

impl DeepseekV2Config {
    /// Whether layer `i` has routed experts (else a dense MLP).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|m| i >= m.first_k_dense_replace && i.is_multiple_of(m.moe_layer_freq))
    }

    /// The MLA shapes, or None for MHA.
    pub fn mla(&self) -> Option<&MlaDims> {
        match &self.attention {
            AttentionKind::Mla(d) => Some(d),
            AttentionKind::Mha => None,
        }
    }

    /// The same decoder seen as a LLaMA for what the two share: the MHA path is transformers'
    /// Llama attention (q/k/v/o, heads of `hidden / heads`); for MLA, only the rotary tables
    /// are taken from it (heads of `qk_rope_head_dim`, one key head: the shared rope key).
    pub(crate) fn llama_view(&self) -> LlamaConfig {
        let (head_dim, kv_heads) = match &self.attention {
            AttentionKind::Mha => (
                self.hidden_size / self.num_attention_heads,
                self.num_key_value_heads,
            ),
            AttentionKind::Mla(d) => (d.qk_rope_head_dim, 1),
        };
        LlamaConfig {
            vocab_size: self.vocab_size,
            head_dim,
            hidden_act: self.hidden_act,
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias,
            o_proj_bias: self.attention_bias,
            mlp_bias: false,
            mrope_section: Vec::new(),
            bos_token_id: self.bos_token_id,
            eos_token_ids: self.eos_token_ids.clone(),
            pad_token_id: self.pad_token_id,
            dtype: self.dtype.clone(),
            ..LlamaConfig::sized(
                self.hidden_size,
                self.num_hidden_layers,
                self.num_attention_heads,
                kv_heads,
                self.intermediate_size,
            )
        }
    }
}
