//! The benchmarks, one file each; [`crate::benchmark::REGISTRY`] lists them.

pub mod gqa;
pub mod llava_bench;
pub mod mm_vet;
pub mod mmbench;
pub mod mme;
pub mod pope;
pub mod scienceqa;
pub mod seed_bench;
pub mod textvqa;
pub mod vizwiz;
pub mod vqa_eval;
pub mod vqav2;
pub mod yesno;
