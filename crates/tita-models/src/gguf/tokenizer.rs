//! The tokenizer a GGUF's `tokenizer.ggml.*` metadata describes, as the `tokenizer.json` a
//! Hugging Face conversion would have written, loaded by the `tokenizers` crate:
//!
//! - `llama` (SentencePiece): a BPE whose merges are every pair of pieces that concatenates
//!   to a piece, ranked by that piece's score (highest first), with byte fallback; a space is
//!   prepended to every fragment between special pieces and spaces become `▁`. This is
//!   llama.cpp's algorithm (merge the adjacent pair whose result scores highest) written as
//!   transformers' `LlamaConverter` writes it.
//! - `gpt2` (byte-level BPE): `tokenizer.ggml.merges` in rank order, with the pre-tokenizer
//!   `tokenizer.ggml.pre` names (`gpt2`, or `smollm`: digits split one by one first).
//!
//! Unknown, control and user-defined pieces are added tokens, matched in the text first.

use serde_json::{json, Map, Value};
use tita_core::template::ChatTemplate;
use tita_core::{Error, Result, Tokenizer};

use super::reader::{GgufFile, MetaValue};

const TOKENS: &str = "tokenizer.ggml.tokens";

/// llama.cpp's token types.
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const BYTE: i64 = 6;

fn tokens(f: &GgufFile) -> Result<Vec<&str>> {
    f.get_array(TOKENS, "strings", MetaValue::as_str)?
        .ok_or_else(|| Error::config(f.path(), TOKENS, "missing (the file has no tokenizer)"))
}

/// The id of piece `piece`, if the vocabulary has it.
pub fn token_id(f: &GgufFile, piece: &str) -> Result<Option<u32>> {
    Ok(tokens(f)?
        .iter()
        .position(|t| *t == piece)
        .map(|i| i as u32))
}

/// The tokenizer of `f`'s metadata.
pub fn tokenizer(f: &GgufFile) -> Result<Tokenizer> {
    let json = tokenizer_json(f)?;
    Tokenizer::from_json(&json.to_string(), f.path())
}

/// `tokenizer.chat_template` as a template, with the special tokens it may refer to.
pub fn chat_template(f: &GgufFile) -> Result<Option<ChatTemplate>> {
    let Some(source) = f.get_str("tokenizer.chat_template")? else {
        return Ok(None);
    };
    let mut t = ChatTemplate::new(
        source.to_string(),
        format!("{} (tokenizer.chat_template)", f.path().display()),
    );
    let pieces = tokens(f)?;
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token"),
        ("tokenizer.ggml.eos_token_id", "eos_token"),
        ("tokenizer.ggml.unknown_token_id", "unk_token"),
        ("tokenizer.ggml.padding_token_id", "pad_token"),
    ] {
        if let Some(piece) = f.get_usize(key)?.and_then(|id| pieces.get(id)) {
            t.set_special_token(field, piece);
        }
    }
    Ok(Some(t))
}

/// The `tokenizer.json` (as JSON) of `f`'s metadata.
pub fn tokenizer_json(f: &GgufFile) -> Result<Value> {
    let model = f.get_str("tokenizer.ggml.model")?.ok_or_else(|| {
        Error::config(
            f.path(),
            "tokenizer.ggml.model",
            "missing (the file has no tokenizer)",
        )
    })?;
    let pieces = tokens(f)?;
    let types = match f.get_array("tokenizer.ggml.token_type", "integers", |v| {
        v.as_f64().map(|x| x as i64)
    })? {
        Some(t) if t.len() == pieces.len() => t,
        Some(t) => {
            return Err(Error::config(
                f.path(),
                "tokenizer.ggml.token_type",
                format!("{} entries for {} tokens", t.len(), pieces.len()),
            ))
        }
        None => vec![1; pieces.len()],
    };
    let id_of = |key: &str| -> Result<Option<usize>> {
        match f.get_usize(key)? {
            Some(id) if id >= pieces.len() => Err(Error::config(
                f.path(),
                key,
                format!("{id} is outside the vocabulary of {} pieces", pieces.len()),
            )),
            id => Ok(id),
        }
    };
    let spm = match model {
        "llama" => true,
        "gpt2" => false,
        other => {
            return Err(Error::config(
                f.path(),
                "tokenizer.ggml.model",
                format!(
                "`{other}` is not supported (`llama` SentencePiece and `gpt2` byte-level BPE are)"
            ),
            ))
        }
    };
    let add_bos = f.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(spm);
    let add_eos = f.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let bos = id_of("tokenizer.ggml.bos_token_id")?;
    let eos = id_of("tokenizer.ggml.eos_token_id")?;
    let unk = id_of("tokenizer.ggml.unknown_token_id")?;

    let mut vocab = Map::new();
    for (id, piece) in pieces.iter().enumerate() {
        // A repeated piece keeps its first id, as llama.cpp's text-to-token map does.
        vocab.entry(piece.to_string()).or_insert(id.into());
    }
    let added: Vec<Value> = (0..pieces.len())
        .filter(|&id| {
            !pieces[id].is_empty() && matches!(types[id], UNKNOWN | CONTROL | USER_DEFINED)
        })
        .map(|id| {
            json!({
                "id": id, "content": pieces[id], "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": types[id] != USER_DEFINED,
            })
        })
        .collect();

    let (normalizer, pre_tokenizer, decoder, merges, unk_token);
    if spm {
        let scores = f
            .get_array("tokenizer.ggml.scores", "numbers", MetaValue::as_f64)?
            .ok_or_else(|| {
                Error::config(
                    f.path(),
                    "tokenizer.ggml.scores",
                    "missing (a `llama` tokenizer needs its piece scores)",
                )
            })?;
        if scores.len() != pieces.len() {
            return Err(Error::config(
                f.path(),
                "tokenizer.ggml.scores",
                format!("{} scores for {} tokens", scores.len(), pieces.len()),
            ));
        }
        if scores.windows(2).all(|w| w[0] == w[1]) && pieces.len() > 1 {
            eprintln!(
                "warning: {}: every tokenizer.ggml.scores entry is {}; the file was converted without a SentencePiece model and its token merges will not be the original tokenizer's",
                f.path().display(),
                scores[0]
            );
        }
        merges = spm_merges(&pieces, &types, &scores, &vocab);
        let space_prefix = f
            .get_bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(true);
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        normalizer = if space_prefix {
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
        } else {
            replace
        };
        pre_tokenizer = Value::Null;
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if space_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        decoder = json!({"type": "Sequence", "decoders": decoders});
        unk_token = unk.map_or(Value::Null, |id| Value::from(pieces[id]));
    } else {
        let listed = f
            .get_array("tokenizer.ggml.merges", "strings", MetaValue::as_str)?
            .ok_or_else(|| {
                Error::config(
                    f.path(),
                    "tokenizer.ggml.merges",
                    "missing (a `gpt2` tokenizer needs its merges)",
                )
            })?;
        merges = listed
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| json!([a, b]))
                    .ok_or_else(|| {
                        Error::config(
                            f.path(),
                            format!("tokenizer.ggml.merges[{i}]"),
                            format!("`{m}` is not two pieces separated by a space"),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let pre = f.get_str("tokenizer.ggml.pre")?.unwrap_or("gpt2");
        pre_tokenizer = match pre {
            "gpt2" => byte_level.clone(),
            "smollm" => {
                json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level.clone()]})
            }
            other => {
                return Err(Error::config(
                    f.path(),
                    "tokenizer.ggml.pre",
                    format!("pre-tokenizer `{other}` is not supported (`gpt2` and `smollm` are)"),
                ))
            }
        };
        normalizer = Value::Null;
        decoder = byte_level;
        unk_token = Value::Null;
    }

    let need = |id: Option<usize>, key: &str| {
        id.map(|id| (pieces[id].to_string(), id))
            .ok_or_else(|| Error::config(f.path(), key, "missing, but the tokenizer is to add it"))
    };
    let bos = if add_bos {
        Some(need(bos, "tokenizer.ggml.bos_token_id")?)
    } else {
        None
    };
    let eos = if add_eos {
        Some(need(eos, "tokenizer.ggml.eos_token_id")?)
    } else {
        None
    };
    let post_processor = if bos.is_some() || eos.is_some() {
        let piece = |t: &Option<(String, usize)>, seq: &str, type_id: u32| {
            let mut items = Vec::new();
            if let Some((p, _)) = &bos {
                items.push(json!({"SpecialToken": {"id": p, "type_id": type_id}}));
            }
            items.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
            if let Some((p, _)) = t {
                items.push(json!({"SpecialToken": {"id": p, "type_id": type_id}}));
            }
            items
        };
        let mut pair = piece(&eos, "A", 0);
        pair.extend(piece(&eos, "B", 1));
        let mut specials = Map::new();
        for (p, id) in bos.iter().chain(eos.iter()) {
            specials.insert(p.clone(), json!({"id": p, "ids": [id], "tokens": [p]}));
        }
        json!({"type": "TemplateProcessing", "single": piece(&eos, "A", 0), "pair": pair, "special_tokens": specials})
    } else {
        Value::Null
    };

    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk_token,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": spm,
            "byte_fallback": spm,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        },
    }))
}

/// SentencePiece scores as BPE merges: every split of every piece into two pieces, ranked by
/// the whole piece's score, highest first (ties: piece id, then the halves' ids), as
/// transformers' `SentencePieceExtractor` orders them. Byte pieces are never merge results.
fn spm_merges(
    pieces: &[&str],
    types: &[i64],
    scores: &[f64],
    vocab: &Map<String, Value>,
) -> Vec<Value> {
    let id = |s: &str| vocab.get(s).and_then(Value::as_u64);
    let mut merges: Vec<(f64, u64, u64, &str, &str)> = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        if types[i] == BYTE || id(piece) != Some(i as u64) {
            continue;
        }
        let start = merges.len();
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(a), Some(b)) = (id(l), id(r)) {
                merges.push((scores[i], a, b, l, r));
            }
        }
        merges[start..].sort_by_key(|m| (m.1, m.2));
    }
    // Stable: equal scores keep piece order.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| json!([l, r]))
        .collect()
}
