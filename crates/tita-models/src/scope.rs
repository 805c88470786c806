//! A tensor source seen from one module's prefix (`w.pp("layers.3")`), so that each module
//! loads its own tensors by their short names and the model reads like the checkpoint's tree.
//! Every call goes to the underlying strict source under the full name: its checks (named,
//! shape-checked, finite, leftovers reported) and the parameter ids derived from names stay.

use burn::module::Param;
use burn::tensor::{backend::Backend, Tensor};
use tita_core::Result;

use crate::weights::{StoredDtype, TensorSource};

/// `inner` under `prefix` (empty, or ending with `.`). Cheap to make and pass by value.
pub struct Scope<'a, S> {
    inner: &'a mut S,
    prefix: String,
}

impl<'a, S: TensorSource> Scope<'a, S> {
    /// `inner` under `prefix` as a checkpoint writes it (e.g. `language_model.model.`, or empty).
    pub fn new(inner: &'a mut S, prefix: &str) -> Self {
        let prefix = if prefix.is_empty() || prefix.ends_with('.') {
            prefix.to_string()
        } else {
            format!("{prefix}.")
        };
        Scope { inner, prefix }
    }

    /// The child scope `name` (e.g. `self_attn`, or `layers.3`).
    pub fn pp(&mut self, name: impl std::fmt::Display) -> Scope<'_, S> {
        Scope {
            inner: self.inner,
            prefix: format!("{}{name}.", self.prefix),
        }
    }

    /// The full checkpoint name of `name` in this scope.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl<S: TensorSource> TensorSource for Scope<'_, S> {
    fn take_vec(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let key = self.key(name);
        self.inner.take_vec(&key, expected)
    }

    fn skip(&mut self, name: &str) {
        let key = self.key(name);
        self.inner.skip(&key)
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(&self.key(name))
    }

    fn stored_dtype(&self, name: &str) -> StoredDtype {
        self.inner.stored_dtype(&self.key(name))
    }

    // The rest forward too, so that the source's own versions (casting, drawing on the
    // device) run, and parameter ids hash the full name.
    fn take<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        expected: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let key = self.key(name);
        self.inner.take(&key, expected, device)
    }

    fn take_transposed<B: Backend>(
        &mut self,
        name: &str,
        stored: &[usize],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        let key = self.key(name);
        self.inner.take_transposed(&key, stored, device)
    }

    fn param<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        expected: [usize; D],
        device: &B::Device,
    ) -> Result<Param<Tensor<B, D>>> {
        let key = self.key(name);
        self.inner.param(&key, expected, device)
    }

    fn param_transposed<B: Backend>(
        &mut self,
        name: &str,
        stored: &[usize],
        device: &B::Device,
    ) -> Result<Param<Tensor<B, 2>>> {
        let key = self.key(name);
        self.inner.param_transposed(&key, stored, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the names asked for.
    struct Names(Vec<String>);
    impl TensorSource for Names {
        fn take_vec(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
            self.0.push(name.to_string());
            Ok(vec![0.0; expected.iter().product()])
        }
        fn skip(&mut self, name: &str) {
            self.0.push(format!("skip {name}"));
        }
        fn contains(&self, _name: &str) -> bool {
            false
        }
    }

    #[test]
    fn nested_scopes_name_the_full_key() {
        let mut names = Names(Vec::new());
        let mut root = Scope::new(&mut names, "model");
        let mut layer = root.pp("layers.3");
        layer
            .pp("self_attn")
            .take_vec("q_proj.weight", &[1])
            .unwrap();
        layer.skip("rotary_emb.inv_freq");
        Scope::new(&mut names, "")
            .take_vec("lm_head.weight", &[1])
            .unwrap();
        assert_eq!(
            names.0,
            [
                "model.layers.3.self_attn.q_proj.weight",
                "skip model.layers.3.rotary_emb.inv_freq",
                "lm_head.weight"
            ]
        );
    }
}
