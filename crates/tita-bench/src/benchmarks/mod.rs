//! The benchmarks, one file each; [`crate::benchmark::REGISTRY`] lists them.

pub mod llava_bench;
pub mod mm_vet;
pub mod mme;
pub mod pope;
pub mod yesno;
