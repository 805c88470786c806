//! The one error type of the project's libraries: every variant names the file and the field or
//! tensor at fault, so a user can act on the message without a debugger.

use std::path::PathBuf;

/// Result alias used across the TITA crates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("{}: field `{field}`: {msg}", path.display())]
    Config {
        path: PathBuf,
        field: String,
        msg: String,
    },

    #[error("{}: tokenizer: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },

    #[error("chat template {name}: {msg}")]
    Template { name: String, msg: String },

    #[error("{}: image: {msg}", path.display())]
    Image { path: PathBuf, msg: String },

    #[error("{}: tensor `{name}`: {msg}", path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        msg: String,
    },

    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    /// A bad line of a data file (JSONL, MME lists); `line` counts from 1.
    #[error("{}:{line}: {msg}", path.display())]
    Data {
        path: PathBuf,
        line: usize,
        msg: String,
    },

    #[error("prompt has {tokens} tokens, which leaves no room in the model's context of {context} positions (`max_position_embeddings`)")]
    ContextOverflow { tokens: usize, context: usize },

    /// A NaN or infinity where numbers must be finite: never passed on as output.
    #[error("{what} went non-finite ({detail})")]
    NonFinite { what: String, detail: String },

    #[error("invalid argument `{name}`: {msg}")]
    Argument { name: String, msg: String },
}

impl Error {
    /// The first non-finite value of `values`, if any, as an error about `what`.
    pub fn check_finite(what: impl FnOnce() -> String, values: &[f32]) -> Result<()> {
        match values.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(Error::NonFinite {
                what: what(),
                detail: format!("{} at index {i} of {}", values[i], values.len()),
            }),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Config {
            path: path.into(),
            field: field.into(),
            msg: msg.into(),
        }
    }
    pub fn tensor(
        path: impl Into<PathBuf>,
        name: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Tensor {
            path: path.into(),
            name: name.into(),
            msg: msg.into(),
        }
    }
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn data(path: impl Into<PathBuf>, line: usize, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }
    pub fn argument(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Argument {
            name: name.into(),
            msg: msg.into(),
        }
    }
}

/// Reads a JSON file into a `serde_json::Value`, with the path in any error.
pub fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.into(),
        source,
    })
}

/// Reads a JSON file into `T`, with the path in any error.
pub fn read_json_as<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    serde_json::from_value(read_json(path)?).map_err(|source| Error::Json {
        path: path.into(),
        source,
    })
}
