//! The one public error type.

use crate::DType;

/// Everything that can go wrong in kvsparse. Every public entry point returns this instead of
/// panicking; messages name the op, the argument and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A backend cannot run here (no adapter, no libcuda, no NVRTC, no device).
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable { backend: &'static str, reason: String },
    /// A problem argument is out of range or inconsistent with another one.
    #[error("{op}: invalid `{arg}`: {expected}")]
    InvalidArgument { op: &'static str, arg: &'static str, expected: String },
    /// A buffer handed to an op has the wrong length or element type.
    #[error("{op}: buffer `{name}` holds {got} x {got_dtype}, expected {expected} x {expected_dtype}")]
    Buffer {
        op: &'static str,
        name: &'static str,
        expected: usize,
        expected_dtype: DType,
        got: usize,
        got_dtype: DType,
    },
    /// The backend or the device cannot store or compute this element type.
    #[error("{backend}: {dtype} is not supported here: {reason}")]
    UnsupportedDtype { backend: &'static str, dtype: DType, reason: String },
    /// The request exceeds what the device allows (buffer size, grid size, memory).
    #[error("{backend}: request too large: {what}")]
    TooLarge { backend: &'static str, what: String },
    /// wgpu rejected a generated WGSL module; `shader` holds the assembled source.
    #[error("{kernel}: WGSL rejected by wgpu:\n{message}")]
    Wgsl { kernel: String, message: String, shader: String },
    /// NVRTC could not compile a CUDA kernel; `log` is the compiler log.
    #[error("{kernel}: NVRTC failed:\n{log}")]
    Nvrtc { kernel: String, log: String },
    /// A device, driver or queue error at run time (lost device, failed launch, failed map).
    #[error("{backend} device error: {message}")]
    Device { backend: &'static str, message: String },
    /// A golden or input file that cannot be used.
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, arg: &'static str, expected: impl Into<String>) -> Self {
        Error::InvalidArgument { op, arg, expected: expected.into() }
    }
}
