//! The one public error type.

use crate::DType;

/// Everything that can go wrong in kvsparse. Every public entry point returns this instead of
/// panicking; messages name the op, the argument and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A backend cannot run here (no adapter, no libcuda, no NVRTC, no device).
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable {
        /// Backend name: `"cpu"`, `"wgpu"` or `"cuda"`.
        backend: &'static str,
        /// Why it cannot run (the driver's or loader's message).
        reason: String,
    },
    /// A problem argument is out of range or inconsistent with another one.
    #[error("{op}: invalid `{arg}`: {expected}")]
    InvalidArgument {
        /// Op (problem struct) that rejected the argument, e.g. `"quest_select"`.
        op: &'static str,
        /// Name of the offending argument, as spelled in the constructor.
        arg: &'static str,
        /// What a valid value looks like, e.g. `"a multiple of kv_heads"`.
        expected: String,
    },
    /// A buffer handed to an op has the wrong length or element type.
    #[error("{op}: buffer `{name}` holds {got} x {got_dtype}, expected {expected} x {expected_dtype}")]
    Buffer {
        /// Op the buffer was handed to.
        op: &'static str,
        /// Name of the buffer argument, e.g. `"q"` or `"out"`.
        name: &'static str,
        /// Element count the op needs.
        expected: usize,
        /// Element type the op needs.
        expected_dtype: DType,
        /// Element count of the buffer passed.
        got: usize,
        /// Element type of the buffer passed.
        got_dtype: DType,
    },
    /// The backend or the device cannot store or compute this element type.
    #[error("{backend}: {dtype} is not supported here: {reason}")]
    UnsupportedDtype {
        /// Backend name: `"cpu"`, `"wgpu"` or `"cuda"`.
        backend: &'static str,
        /// The element type asked for.
        dtype: DType,
        /// Why it is not supported (missing device feature, op restriction).
        reason: String,
    },
    /// The request exceeds what the device allows (buffer size, grid size, memory).
    #[error("{backend}: request too large: {what}")]
    TooLarge {
        /// Backend name: `"cpu"`, `"wgpu"` or `"cuda"`.
        backend: &'static str,
        /// Which limit was exceeded, with the requested and allowed sizes.
        what: String,
    },
    /// wgpu rejected a generated WGSL module; `shader` holds the assembled source.
    #[error("{kernel}: WGSL rejected by wgpu:\n{message}")]
    Wgsl {
        /// Kernel (entry point / shader) name.
        kernel: String,
        /// wgpu's validation message.
        message: String,
        /// The full assembled WGSL source that was rejected.
        shader: String,
    },
    /// NVRTC could not compile a CUDA kernel; `log` is the compiler log.
    #[error("{kernel}: NVRTC failed:\n{log}")]
    Nvrtc {
        /// Kernel (CUDA source) name.
        kernel: String,
        /// NVRTC's compile log.
        log: String,
    },
    /// A device, driver or queue error at run time (lost device, failed launch, failed map).
    #[error("{backend} device error: {message}")]
    Device {
        /// Backend name: `"cpu"`, `"wgpu"` or `"cuda"`.
        backend: &'static str,
        /// The driver's or runtime's message.
        message: String,
    },
    /// A golden or input file that cannot be used.
    #[error("{path}: {reason}")]
    File {
        /// Path of the file, as given.
        path: String,
        /// What is wrong with it (I/O error, parse error, missing field).
        reason: String,
    },
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, arg: &'static str, expected: impl Into<String>) -> Self {
        Error::InvalidArgument { op, arg, expected: expected.into() }
    }
}
