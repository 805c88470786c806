//! Qwen2.5-VL composition (`Qwen2_5_VLForConditionalGeneration`): the vision tower's merged
//! features fill the `<|image_pad|>` positions, and the Qwen2 decoder turns its rotary
//! frequencies with three position rows (M-RoPE): text advances all three together, an
//! image's tokens take its temporal, row and column positions.

pub mod config;
pub mod vision;

use tita_core::{Error, Result};

pub use config::{QwenVisionConfig, QwenVlConfig};
pub use vision::QwenVision;

use crate::family::{first_present, not_found, KeyLayout};
use crate::llama::{LlamaKeys, MropePositions};
use crate::weights::Weights;

/// transformers' `get_rope_index` for one row without its padding: the temporal, height and
/// width position of every token, and the row's `rope_delta` (the position after the last
/// token minus the number of tokens). `grids` are the row's images in order (`[t, h, w]` in
/// patches).
pub fn rope_index(
    c: &QwenVlConfig,
    ids: &[u32],
    grids: &[[usize; 3]],
) -> Result<([Vec<i64>; 3], i64)> {
    let m = c.vision.spatial_merge_size;
    let mut rows: [Vec<i64>; 3] = Default::default();
    let mut grids = grids.iter();
    let mut pos = 0i64;
    let mut i = 0;
    while i < ids.len() {
        if ids[i] != c.image_token_id {
            for r in rows.iter_mut() {
                r.push(pos);
            }
            pos += 1;
            i += 1;
            continue;
        }
        let run = ids[i..]
            .iter()
            .take_while(|&&t| t == c.image_token_id)
            .count();
        let &[t, h, w] = grids.next().ok_or_else(|| {
            Error::argument(
                "input_ids",
                "the prompt holds more image runs than images were given",
            )
        })?;
        let (lh, lw) = (h / m, w / m);
        if run != t * lh * lw {
            return Err(Error::argument(
                "input_ids",
                format!(
                    "an image run of {run} `<|image_pad|>` tokens (id {}) for an image of {} merged cells",
                    c.image_token_id,
                    t * lh * lw
                ),
            ));
        }
        for ti in 0..t {
            for y in 0..lh {
                for x in 0..lw {
                    rows[0].push(pos + ti as i64);
                    rows[1].push(pos + y as i64);
                    rows[2].push(pos + x as i64);
                }
            }
        }
        pos += lh.max(lw) as i64;
        i += run;
    }
    if grids.next().is_some() {
        return Err(Error::argument(
            "image",
            "more images were given than the prompt has image runs",
        ));
    }
    Ok((rows, pos - ids.len() as i64))
}

/// M-RoPE positions of a left-padded batch (padding at position 0, as transformers does with
/// an attention mask).
pub fn batch_positions(
    c: &QwenVlConfig,
    ids: &[Vec<u32>],
    pad_left: &[usize],
    grids: &[Vec<[usize; 3]>],
) -> Result<MropePositions> {
    let mut out = MropePositions {
        rows: Vec::with_capacity(ids.len()),
        deltas: Vec::with_capacity(ids.len()),
    };
    for ((row, &pad), grids) in ids.iter().zip(pad_left).zip(grids) {
        let (rows, delta) = rope_index(c, &row[pad..], grids)?;
        out.rows
            .push(rows.map(|r| std::iter::repeat_n(0, pad).chain(r).collect()));
        out.deltas.push(delta);
    }
    Ok(out)
}

/// The layout of the hub checkpoints: `model.*`, `lm_head.weight`, `visual.*`.
pub fn hub_keys() -> KeyLayout {
    KeyLayout {
        text: LlamaKeys {
            decoder: "model.".into(),
            lm_head: "lm_head.weight".into(),
        },
        vision: Some("visual.".into()),
        projector: None,
    }
}

/// The hub layout (`model.*`, `visual.*`) and transformers 5's in-memory one
/// (`model.language_model.*`, `model.visual.*`).
pub fn detect_keys(w: &Weights) -> Result<KeyLayout> {
    let text = ["model.", "model.language_model."];
    let decoder = first_present(w, &text, "embed_tokens.weight")
        .ok_or_else(|| not_found(w, "the language model", &text, "embed_tokens.weight"))?;
    let vis = ["visual.", "model.visual."];
    let vision = first_present(w, &vis, "patch_embed.proj.weight")
        .ok_or_else(|| not_found(w, "the vision tower", &vis, "patch_embed.proj.weight"))?;
    Ok(KeyLayout {
        text: LlamaKeys {
            decoder,
            lm_head: "lm_head.weight".into(),
        },
        vision: Some(vision),
        projector: None,
    })
}
