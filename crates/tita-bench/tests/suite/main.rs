//! The benchmark suite's tests, one module per benchmark (one test binary, so CI links once):
//! every scorer against what the official code printed and wrote for the fixtures in
//! `fixtures/benchmarks/` (`expected.json`), prompts against LLaVA's, and bad input.

mod common;
mod gqa;
mod judge_server;
mod llava_bench;
mod mm_vet;
mod mmbench;
mod pope_mme;
mod scienceqa;
mod seed_bench;
mod textvqa;
mod vizwiz;
mod vqav2;
