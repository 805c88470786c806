//! tita-bench: hallucination benchmarks (POPE, MME, generic yes/no sets, CHAIR) with the
//! upstream scoring rules, decode speed against the memory-bandwidth bound, and the built-in
//! demo: the whole TITA recipe in a synthetic world whose ground truth is known. Each
//! benchmark is a [`benchmark::Benchmark`] (one file in `benchmarks/`, one registry line).

pub mod benchmark;
pub mod benchmarks;
pub mod demo;
pub mod eval;
pub mod judge;
pub mod mme;
pub mod pope;
pub mod python;
pub mod report;
pub mod speed;
pub mod suite;
pub mod world;
