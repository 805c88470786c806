//! The benchmarks, one file each; [`crate::benchmark::REGISTRY`] lists them.

pub mod mmbench;
pub mod mme;
pub mod pope;
pub mod scienceqa;
pub mod seed_bench;
pub mod yesno;
