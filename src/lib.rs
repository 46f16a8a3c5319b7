//! # kvsparse
//!
//! Cross-vendor GPU kernels for query-aware sparse attention (Quest, MoBA, SnapKV, and a seeded
//! random selector) over RAT+'s exponentially decaying memory
//! `k~_t = g_t * k~_{t-1} + (1 - g_t) * k_t` (Wei & Gulcehre, 2026).
//!
//! One semantics, three implementations: the CPU backend ([`Cpu`], the float64 reference and
//! oracle), WGSL kernels through wgpu (Vulkan, Metal, DX12, WebGPU) and CUDA kernels compiled at
//! run time by NVRTC. Every op is a validated problem struct in [`ops`] and one method of
//! [`Backend`].
//!
//! ```
//! use kvsparse::{ops::{AttentionDense, Op}, Backend, Cpu, DType, HostData};
//! let cpu = Cpu::new();
//! let op = AttentionDense::new(2, 1, 1, 3, 4, false, 0.5, DType::F32)?;
//! let [q, k, v] = [2 * 4, 3 * 4, 3 * 4].map(|n| cpu.upload(&HostData::F32(vec![0.25; n])).unwrap());
//! let (mut out, mut lse) = (cpu.alloc(DType::F32, 8)?, cpu.alloc(DType::F32, 2)?);
//! cpu.attention_dense(&op, &q, &k, &v, &mut out, &mut lse)?;
//! assert_eq!(cpu.download(&out)?, HostData::F32(vec![0.25; 8]));
//! println!("{} FLOPs", op.cost().flops);
//! # Ok::<(), kvsparse::Error>(())
//! ```
//!
//! ## NaN and infinity policy
//! Kernels do not scan their inputs: a NaN or infinity in `q`, `k`, `v` or a gate propagates
//! into the outputs that depend on it, exactly as in the float64 reference. Selection scores are
//! the exception where it matters: the CPU backend rejects NaN scores in [`ops::TopK`] with an
//! error, and `-inf` scores rank last everywhere.

#![warn(missing_docs)]

mod backend;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda_backend;
pub mod decoder;
mod dtype;
mod error;
pub mod golden;
pub mod methods;
pub mod ops;
pub mod params;
pub mod report;
#[cfg(feature = "wgpu")]
mod wgpu_backend;

pub use backend::{Backend, DeviceBuffer};
pub use cpu::{Cpu, CpuBuffer};
#[cfg(feature = "cuda")]
pub use cuda_backend::{compile_all_ptx, Cuda, CudaBuffer, CudaGraph};
pub use dtype::{DType, HostData};
pub use error::{Error, Result};
#[cfg(feature = "wgpu")]
pub use wgpu_backend::{Wgpu, WgpuBuffer};

/// The on/off switch `name` read from the environment: `1` turns it on, `0` off, anything else
/// (or nothing) leaves `default` (the backends' `KVSPARSE_*` switches; each caches its value).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) fn env_switch(name: &str, default: bool) -> bool {
    match std::env::var(name).as_deref().map(str::trim) {
        Ok("1") => true,
        Ok("0") => false,
        _ => default,
    }
}

/// The tuning switch `name` read from the environment as a number, when it parses and `ok`
/// accepts it (the backends' `KVSPARSE_*` knobs; each caches its value in a `OnceLock`).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) fn env_number<T: std::str::FromStr>(name: &str, ok: impl Fn(&T) -> bool) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).filter(|v| ok(v))
}
