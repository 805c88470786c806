//! The benchmarks, one file each; [`crate::benchmark::REGISTRY`] lists them.

pub mod mme;
pub mod pope;
pub mod yesno;
