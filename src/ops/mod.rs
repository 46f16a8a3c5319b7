//! Problem structs: one per op. Each validates its shape and ranges (typed errors), lists the
//! buffers it reads and writes, fills the `#[repr(C)]` parameter block its kernels take, and
//! knows its cost (FLOPs and the minimal bytes it must move).
//!
//! Layouts are row-major; attention tensors are `[heads, seq, dim]`; GQA by contiguous groups
//! (query head `h` reads kv head `h / (q_heads / kv_heads)`).

mod any;
mod attention;
mod blocks;
mod cache;
mod decay;
mod hit_rate;
mod moba;
mod quest;
mod random;
mod snapkv;
mod topk;

pub use any::AnyOp;
pub use attention::{AttentionDense, AttentionSparse};
pub use blocks::{BlockMean, BlockMinmax, BlockShape, QuestScores};
pub use cache::{CacheAdvance, CacheAppend, CacheBudget, CacheDecode, CacheFill, CacheSelect, CacheShape};
pub use decay::{DecayScan, DecayStep, RatplusKv, RatplusStep, Rope};
pub use hit_rate::HitRate;
pub use kvsparse_reference::{GqaMode, Pooling, SelectConfig, Selector};
pub use moba::MobaPrefill;
pub use quest::{QuestDecode, QuestStats};
pub use random::{PcgHash, RandomKey, RandomSelect};
pub use snapkv::{SnapKvCompress, SnapKvSettings};
pub use topk::TopK;

use crate::{DType, DeviceBuffer, Error, Result};

/// Compulsory work of one op call: FLOPs (a multiply-add counts 2) and the bytes it must move
/// at least (every input read once, every output written once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Floating-point operations; a multiply-add counts 2.
    pub flops: u64,
    /// Bytes read plus bytes written, each input and output counted once.
    pub bytes: u64,
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost { flops: self.flops + o.flops, bytes: self.bytes + o.bytes }
    }
}

/// One buffer an op reads or writes: its name (the golden files use the same names), element
/// type and length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferSpec {
    /// Argument name of the backend method, e.g. `"q"`, `"kmin"`, `"selected"`.
    pub name: &'static str,
    /// Element type the buffer must have.
    pub dtype: DType,
    /// Element count (not bytes) the buffer must have.
    pub len: usize,
    /// `true` for a buffer the op writes, `false` for one it reads.
    pub output: bool,
}

impl BufferSpec {
    pub(crate) fn input(name: &'static str, dtype: DType, len: usize) -> Self {
        BufferSpec { name, dtype, len, output: false }
    }
    pub(crate) fn output(name: &'static str, dtype: DType, len: usize) -> Self {
        BufferSpec { name, dtype, len, output: true }
    }
}

/// What every problem struct provides.
pub trait Op {
    /// The op's snake_case name (the golden `op` metadata, the WGSL/CUDA file family).
    const NAME: &'static str;
    /// Checks shapes and ranges; every backend method calls it before touching a buffer.
    fn validate(&self) -> Result<()>;
    /// The buffers of the backend method, in argument order: inputs, then outputs.
    fn buffers(&self) -> Vec<BufferSpec>;
    /// FLOPs and minimal bytes.
    fn cost(&self) -> Cost;
    /// Short shape label for tests and benchmarks, e.g. `hq32_hkv8_t32768_d128_bf16`.
    fn label(&self) -> String;
}

/// Validates `op` and checks that `bufs` (in [`Op::buffers`] order) have the expected lengths
/// and element types. Every backend method starts with this.
pub fn check<O: Op>(op: &O, bufs: &[&dyn DeviceBuffer]) -> Result<()> {
    op.validate()?;
    let specs = op.buffers();
    if specs.len() != bufs.len() {
        return Err(Error::invalid(O::NAME, "buffers", format!("{} buffers, got {}", specs.len(), bufs.len())));
    }
    for (s, b) in specs.iter().zip(bufs) {
        if s.len != b.len() || s.dtype != b.dtype() {
            return Err(Error::Buffer {
                op: O::NAME,
                name: s.name,
                expected: s.len,
                expected_dtype: s.dtype,
                got: b.len(),
                got_dtype: b.dtype(),
            });
        }
    }
    Ok(())
}

/// [`check`] for a method with optional buffers: the `Some` ones, in order, must be exactly
/// [`Op::buffers`] (an optional buffer passed when the op has none, or missing when it has one,
/// is reported by name).
pub fn check_some<O: Op>(op: &O, bufs: &[(&'static str, Option<&dyn DeviceBuffer>)]) -> Result<()> {
    op.validate()?;
    let specs = op.buffers();
    let given: Vec<&'static str> = bufs.iter().filter(|(_, b)| b.is_some()).map(|(n, _)| *n).collect();
    let expected: Vec<&'static str> = specs.iter().map(|s| s.name).collect();
    // Ranking buffers are named by the selector (`scores` or `keys`): match them by position.
    let same = given.len() == expected.len()
        && given.iter().zip(&expected).all(|(g, e)| g == e || (*g == "ranking" && (*e == "scores" || *e == "keys")));
    if !same {
        return Err(Error::invalid(O::NAME, "buffers", format!("{expected:?}, got {given:?}")));
    }
    let present: Vec<&dyn DeviceBuffer> = bufs.iter().filter_map(|(_, b)| *b).collect();
    check(op, &present)
}

/// Checks that `dst` can receive a copy of `src`: same element type and length. Every
/// [`crate::Backend::copy_buffer`] starts with this.
pub fn check_copy(src: &dyn DeviceBuffer, dst: &dyn DeviceBuffer) -> Result<()> {
    if src.dtype() != dst.dtype() || src.len() != dst.len() {
        return Err(Error::Buffer {
            op: "copy_buffer",
            name: "dst",
            expected: src.len(),
            expected_dtype: src.dtype(),
            got: dst.len(),
            got_dtype: dst.dtype(),
        });
    }
    Ok(())
}

/// Largest extent of any one dimension and of any one tensor we accept: indices are 32-bit on
/// every GPU backend.
pub const MAX_ELEMENTS: usize = (i32::MAX as usize) / 2;

pub(crate) fn nonzero(op: &'static str, arg: &'static str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::invalid(op, arg, "must be at least 1"));
    }
    Ok(())
}

pub(crate) fn float_dtype(op: &'static str, dtype: DType) -> Result<()> {
    if !dtype.is_float() {
        return Err(Error::invalid(op, "dtype", format!("a float storage type (f32, f16, bf16), got {dtype}")));
    }
    Ok(())
}

/// Checks `q_heads % kv_heads == 0` (both non-zero).
pub(crate) fn gqa(op: &'static str, q_heads: usize, kv_heads: usize) -> Result<()> {
    nonzero(op, "q_heads", q_heads)?;
    nonzero(op, "kv_heads", kv_heads)?;
    if !q_heads.is_multiple_of(kv_heads) {
        return Err(Error::invalid(op, "q_heads", format!("a multiple of kv_heads = {kv_heads}, got {q_heads}")));
    }
    Ok(())
}

/// Checks that a product of extents stays within [`MAX_ELEMENTS`].
pub(crate) fn fits(op: &'static str, arg: &'static str, dims: &[usize]) -> Result<usize> {
    let mut n: usize = 1;
    for &d in dims {
        n = n.checked_mul(d).filter(|&n| n <= MAX_ELEMENTS).ok_or_else(|| {
            Error::invalid(op, arg, format!("at most {MAX_ELEMENTS} elements, got the product of {dims:?}"))
        })?;
    }
    Ok(n)
}

/// Checks a softmax scale: finite and positive.
pub(crate) fn scale(op: &'static str, scale: f32) -> Result<()> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::invalid(op, "scale", format!("a finite positive number, got {scale}")));
    }
    Ok(())
}

/// `1/sqrt(dim)`, the default softmax scale.
pub fn default_scale(dim: usize) -> f32 {
    (1.0 / (dim as f64).sqrt()) as f32
}
