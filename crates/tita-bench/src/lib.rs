//! tita-bench: hallucination benchmarks (POPE, MME, generic yes/no sets) with the upstream
//! scoring rules, and decode speed against the memory-bandwidth bound.

pub mod eval;
pub mod mme;
pub mod pope;
pub mod report;
pub mod speed;
pub mod world;
