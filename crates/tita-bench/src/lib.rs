//! tita-bench: hallucination benchmarks (POPE, MME, generic yes/no sets) with the upstream
//! scoring rules, decode speed against the memory-bandwidth bound, and the synthetic world of
//! the built-in demo.

pub mod demo;
pub mod eval;
pub mod mme;
pub mod pope;
pub mod report;
pub mod speed;
pub mod world;
