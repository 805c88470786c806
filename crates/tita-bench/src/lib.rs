//! tita-bench: benchmarks. For now the decode-speed benchmark against the memory-bandwidth
//! bound; POPE / MME evaluation comes with the benchmark issue.

pub mod speed;
