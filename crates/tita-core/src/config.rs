//! What every model family's `config.json` parsing shares: a JSON object that names file and
//! dotted field in every error, transformers-style defaults for missing fields, and the
//! activations configs name. The families' own configs live with their models (tita-models).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{read_json, Error, Result};

/// Activation functions that appear in the supported configs (`hidden_act`, `projector_hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// Exact (erf) GELU, transformers' `gelu`.
    Gelu,
    /// tanh approximation: `gelu_new`, `gelu_pytorch_tanh`.
    GeluTanh,
    /// CLIP's `x * sigmoid(1.702 x)`.
    QuickGelu,
    Relu,
}

impl Activation {
    /// The name transformers writes in a config.
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
            Activation::QuickGelu => "quick_gelu",
            Activation::Relu => "relu",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }
}

/// Reads `config.json` (a file, or a directory that holds one) as JSON, with its path.
pub fn read_config(path: &Path) -> Result<(Value, PathBuf)> {
    let path = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    Ok((read_json(&path)?, path))
}

/// A JSON object plus where it came from, so every error names file and dotted field.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
    prefix: String,
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> Fields<'a> {
    pub fn root(value: &'a Value, path: &'a Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::config(path, "<root>", "expected a JSON object"))?;
        Ok(Fields {
            obj,
            path,
            prefix: String::new(),
        })
    }

    pub fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    pub fn err(&self, field: &str, msg: impl Into<String>) -> Error {
        Error::config(PathBuf::from(self.path), self.name(field), msg)
    }

    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    /// A nested object; absent or null gives an empty one (all defaults).
    pub fn child(&self, field: &str) -> Result<Fields<'a>> {
        let obj = match self.get(field) {
            None => &*EMPTY,
            Some(Value::Object(o)) => o,
            Some(_) => return Err(self.err(field, "expected an object")),
        };
        Ok(Fields {
            obj,
            path: self.path,
            prefix: format!("{}{field}.", self.prefix),
        })
    }

    pub fn usize(&self, field: &str, default: usize) -> Result<usize> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                self.err(field, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }

    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        self.get(field).map(|_| self.usize(field, 0)).transpose()
    }

    pub fn f64(&self, field: &str, default: f64) -> Result<f64> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(field, format!("expected a number, found {v}"))),
        }
    }

    /// A finite number above zero (a rotary base, a norm's epsilon): zero or a negative
    /// would load and then give non-finite logits.
    pub fn positive_f64(&self, field: &str, default: f64) -> Result<f64> {
        let v = self.f64(field, default)?;
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(self.err(
                field,
                format!("{v} must be a finite number greater than zero"),
            ))
        }
    }

    /// A list of counts (non-negative integers), e.g. M-RoPE's sections.
    pub fn counts(&self, field: &str) -> Result<Vec<usize>> {
        let bad = |v: &Value| {
            self.err(
                field,
                format!("expected a list of counts (integers >= 0), found {v}"),
            )
        };
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().map(|x| x as usize).ok_or_else(|| bad(v)))
                .collect(),
            Some(v) => Err(bad(v)),
        }
    }

    pub fn bool(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(field, format!("expected true or false, found {v}"))),
        }
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<String>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(field, format!("expected a string, found {v}"))),
        }
    }

    pub fn activation(&self, field: &str, default: Activation) -> Result<Activation> {
        match self.opt_str(field)? {
            None => Ok(default),
            Some(name) => Activation::parse(&name)
                .ok_or_else(|| self.err(field, format!("unsupported activation `{name}`"))),
        }
    }

    /// An id or a list of ids (`eos_token_id` may be either).
    pub fn ids(&self, field: &str, default: &[u32]) -> Result<Vec<u32>> {
        let as_id = |v: &Value| {
            v.as_u64()
                .filter(|&x| x <= u32::MAX as u64)
                .map(|x| x as u32)
        };
        match self.get(field) {
            None => Ok(default.to_vec()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    as_id(v)
                        .ok_or_else(|| self.err(field, format!("expected token ids, found {v}")))
                })
                .collect(),
            Some(v) => as_id(v)
                .map(|x| vec![x])
                .ok_or_else(|| self.err(field, format!("expected a token id, found {v}"))),
        }
    }
}

pub fn positive(f: &Fields, field: &str, value: usize) -> Result<usize> {
    if value == 0 {
        return Err(f.err(field, "must be greater than zero"));
    }
    Ok(value)
}
