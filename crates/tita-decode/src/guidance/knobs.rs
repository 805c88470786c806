//! A method's settings as the CLI, the server and the benchmarks give them: name → JSON value.

use serde_json::{Map, Value};
use tita_core::{Error, Result};

/// One knob of a method: its name (the server's `tita` field key; the CLI flag is the same with
/// `-` for `_`), its default as text, and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knob {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Knob values by name. Absent knobs take the method's defaults; a knob the method does not
/// have is refused (so no flag is silently ignored).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Knobs(Map<String, Value>);

impl Knobs {
    pub fn new() -> Self {
        Self::default()
    }

    /// With `name` set to `value` (a `None` leaves it unset).
    pub fn with(mut self, name: &str, value: Option<impl Into<Value>>) -> Self {
        if let Some(v) = value {
            self.0.insert(name.to_string(), v.into());
        }
        self
    }

    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        self.0.insert(name.to_string(), value.into());
    }

    /// Sets a knob from the command line's `NAME=VALUE`: VALUE is read as JSON where it is
    /// JSON (a number, `true`, a list), as text otherwise (a file path, a variant name).
    pub fn set_arg(&mut self, arg: &str) -> Result<()> {
        let Some((name, text)) = arg.split_once('=') else {
            return Err(Error::argument(
                "knob",
                format!("`{arg}`: expected NAME=VALUE"),
            ));
        };
        let value = serde_json::from_str(text).unwrap_or_else(|_| Value::from(text));
        self.set(name.trim(), value);
        Ok(())
    }

    pub fn from_map(map: Map<String, Value>) -> Self {
        Knobs(map)
    }

    pub fn to_json(&self) -> Value {
        Value::Object(self.0.clone())
    }

    /// Refuses knobs that `mode` does not take, listing the ones it does.
    pub(crate) fn only(&self, mode: &str, knobs: &[Knob]) -> Result<()> {
        match self.0.keys().find(|k| !knobs.iter().any(|n| n.name == *k)) {
            None => Ok(()),
            Some(k) => {
                let names: Vec<&str> = knobs.iter().map(|n| n.name).collect();
                Err(Error::argument(
                    k,
                    format!(
                        "is not a knob of mode `{mode}` (its knobs: {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                ))
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// A number knob, `default` when absent.
    pub fn f32(&self, name: &str, default: f32) -> Result<f32> {
        Ok(self.f32_opt(name)?.unwrap_or(default))
    }

    pub fn f32_opt(&self, name: &str) -> Result<Option<f32>> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| Error::argument(name, format!("expected a number, got {v}"))),
        }
    }

    /// A non-negative integer knob, `default` when absent.
    pub fn u64(&self, name: &str, default: u64) -> Result<u64> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::argument(name, format!("expected a non-negative integer, got {v}"))
            }),
        }
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| Error::argument(name, format!("expected true or false, got {v}"))),
        }
    }

    pub fn str_opt(&self, name: &str) -> Result<Option<&str>> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Error::argument(name, format!("expected a string, got {v}"))),
        }
    }
}
