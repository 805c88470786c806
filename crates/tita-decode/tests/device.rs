//! The wgpu leg of CI (`cargo xtask ci`): the test files that compare the device paths (masks,
//! caches, fusion and choice on the device, both families' forward, the decode kernels) with
//! the host or with transformers, as modules of one binary. Built as separate binaries, each file instantiates
//! the whole model stack for the wgpu backend again: minutes per binary on a 2-core machine.
#![cfg(feature = "wgpu")]
// Each file is also a test crate of its own, which declares the shared `common` module itself.
#![allow(clippy::duplicate_mod)]

// The kernels extend burn's `CubeBackend`; under `fusion` the backend is burn's fusion wrapper.
#[cfg(not(feature = "fusion"))]
#[path = "device/kernels.rs"]
mod kernels;
#[path = "qwen.rs"]
mod qwen;
#[path = "select.rs"]
mod select;
#[path = "tita.rs"]
mod tita;
