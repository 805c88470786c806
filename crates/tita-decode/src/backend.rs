//! Picking a burn backend at run time among those compiled in (cargo features `flex`,
//! `ndarray`, `wgpu`, `cuda`). Models are generic; only binaries choose.

use burn::tensor::backend::Backend;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn-flex on the CPU (the default: fastest CPU backend measured).
    Flex,
    /// burn-ndarray on the CPU.
    Ndarray,
    /// wgpu: Vulkan/Metal/DX12 GPUs, or the CPU through Mesa's lavapipe.
    Wgpu,
    /// CUDA on NVIDIA GPUs.
    Cuda,
}

impl BackendKind {
    /// Backends this binary was built with, preferred first.
    pub fn compiled() -> Vec<BackendKind> {
        let mut v = Vec::new();
        if cfg!(feature = "cuda") {
            v.push(BackendKind::Cuda);
        }
        if cfg!(feature = "flex") {
            v.push(BackendKind::Flex);
        }
        if cfg!(feature = "ndarray") {
            v.push(BackendKind::Ndarray);
        }
        if cfg!(feature = "wgpu") {
            v.push(BackendKind::Wgpu);
        }
        v
    }

    /// Cargo feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// Work that runs on whichever backend is chosen (a closure cannot be generic over `B`).
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device, kind: BackendKind) -> Self::Output;
}

/// Runs `task` on `kind` (or the first compiled backend), with that backend's default device.
pub fn dispatch<T: BackendTask>(kind: Option<BackendKind>, task: T) -> Result<T::Output, String> {
    let compiled = BackendKind::compiled();
    let kind = match kind {
        Some(k) => k,
        None => *compiled
            .first()
            .ok_or("no backend compiled in: enable a feature (flex, ndarray, wgpu, cuda)")?,
    };
    match kind {
        #[cfg(feature = "flex")]
        BackendKind::Flex => Ok(task.run::<burn::backend::Flex>(Default::default(), kind)),
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => Ok(task.run::<burn::backend::NdArray>(Default::default(), kind)),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(task.run::<burn::backend::Wgpu>(Default::default(), kind)),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(task.run::<burn::backend::Cuda>(Default::default(), kind)),
        #[allow(unreachable_patterns)]
        other => Err(format!(
            "backend `{}` is not compiled into this binary (built with: {}); rebuild with `--features {}` or use `cargo xtask ... --backend {}`",
            other.feature(),
            compiled.iter().map(|k| k.feature()).collect::<Vec<_>>().join(", "),
            other.feature(),
            other.feature()
        )),
    }
}
