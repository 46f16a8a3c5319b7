//! RAT+ exponentially decaying memory (SPEC §1): the scan (prefill), the step (decode), RoPE,
//! and their fusions `ratplus_kv` / `ratplus_step`. Gates and recurrence states are f32; the
//! scanned tensors use the storage dtype.

use super::{fits, float_dtype, nonzero, BufferSpec, Cost, Op};
use crate::params::DecayParams;
use crate::{DType, Error, Result};

/// `y_t = g_t * y_{t-1} + (1 - g_t) * x_t`, `y_{-1} = h0`, per lane, over tensors
/// `x`, `g`, `y` of shape `[outer, seq, inner]` and `h0[outer, inner]`.
/// A plain `[T, C]` scan is `outer = 1, inner = C`; RAT+ keys are `[H, T, D]`.
///
/// Gates must lie in `[0, 1]`; the kernels do not check every gate (that would cost a pass over
/// the data), and a gate outside that range gives the recurrence's value, not an error.
///
/// ```
/// use kvsparse::{ops::DecayScan, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let op = DecayScan::new(1, 2, 1, DType::F32)?;
/// let x = cpu.upload(&HostData::F32(vec![1.0, 1.0]))?;
/// let g = cpu.upload(&HostData::F32(vec![0.5, 0.5]))?;
/// let h0 = cpu.upload(&HostData::F32(vec![0.0]))?;
/// let mut y = cpu.alloc(DType::F32, 2)?;
/// cpu.decay_scan(&op, &x, &g, &h0, &mut y)?;
/// assert_eq!(cpu.download(&y)?, HostData::F32(vec![0.5, 0.75]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecayScan {
    pub outer: usize,
    pub seq: usize,
    pub inner: usize,
    pub dtype: DType,
}

impl DecayScan {
    pub fn new(outer: usize, seq: usize, inner: usize, dtype: DType) -> Result<Self> {
        let op = DecayScan { outer, seq, inner, dtype };
        op.validate()?;
        Ok(op)
    }
    fn elems(&self) -> usize {
        self.outer * self.seq * self.inner
    }
    pub fn params(&self) -> DecayParams {
        DecayParams { outer: self.outer as u32, seq: self.seq as u32, inner: self.inner as u32, ..Default::default() }
    }
}

impl Op for DecayScan {
    const NAME: &'static str = "decay_scan";
    fn validate(&self) -> Result<()> {
        nonzero(Self::NAME, "outer", self.outer)?;
        nonzero(Self::NAME, "seq", self.seq)?;
        nonzero(Self::NAME, "inner", self.inner)?;
        float_dtype(Self::NAME, self.dtype)?;
        fits(Self::NAME, "outer * seq * inner", &[self.outer, self.seq, self.inner]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let n = self.elems();
        vec![
            BufferSpec::input("x", self.dtype, n),
            BufferSpec::input("g", DType::F32, n),
            BufferSpec::input("h0", DType::F32, self.outer * self.inner),
            BufferSpec::output("y", self.dtype, n),
        ]
    }
    fn cost(&self) -> Cost {
        let n = self.elems() as u64;
        Cost { flops: 3 * n, bytes: n * (2 * self.dtype.size() as u64 + 4) + 4 * (self.outer * self.inner) as u64 }
    }
    fn label(&self) -> String {
        format!("o{}_t{}_c{}_{}", self.outer, self.seq, self.inner, self.dtype)
    }
}

/// One decode step of the memory: `h_new[C] = g * h + (1 - g) * x`; `x` in the storage dtype,
/// `g`, `h`, `h_new` in f32.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecayStep {
    pub lanes: usize,
    pub dtype: DType,
}

impl DecayStep {
    pub fn new(lanes: usize, dtype: DType) -> Result<Self> {
        let op = DecayStep { lanes, dtype };
        op.validate()?;
        Ok(op)
    }
    pub fn params(&self) -> DecayParams {
        DecayParams { outer: 1, seq: 1, inner: self.lanes as u32, ..Default::default() }
    }
}

impl Op for DecayStep {
    const NAME: &'static str = "decay_step";
    fn validate(&self) -> Result<()> {
        nonzero(Self::NAME, "lanes", self.lanes)?;
        float_dtype(Self::NAME, self.dtype)?;
        fits(Self::NAME, "lanes", &[self.lanes]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        vec![
            BufferSpec::input("x", self.dtype, self.lanes),
            BufferSpec::input("g", DType::F32, self.lanes),
            BufferSpec::input("h", DType::F32, self.lanes),
            BufferSpec::output("h_new", DType::F32, self.lanes),
        ]
    }
    fn cost(&self) -> Cost {
        let n = self.lanes as u64;
        Cost { flops: 3 * n, bytes: n * (self.dtype.size() as u64 + 12) }
    }
    fn label(&self) -> String {
        format!("c{}_{}", self.lanes, self.dtype)
    }
}

fn check_rope(op: &'static str, dim: usize, base: f32) -> Result<()> {
    if !dim.is_multiple_of(2) {
        return Err(Error::invalid(op, "dim", format!("an even head dim for rotate-half RoPE, got {dim}")));
    }
    if !(base.is_finite() && base > 1.0) {
        return Err(Error::invalid(op, "base", format!("a finite RoPE base above 1, got {base}")));
    }
    Ok(())
}

/// Rotate-half RoPE of `x[H, T, D]` at positions `pos[T]` (i32, may be any value):
/// `inv_freq_i = base^(-2i/D)`, `y_i = x_i cos a - x_{i+D/2} sin a`,
/// `y_{i+D/2} = x_{i+D/2} cos a + x_i sin a`, `a = pos * inv_freq_i`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub heads: usize,
    pub seq: usize,
    pub dim: usize,
    pub base: f32,
    pub dtype: DType,
}

impl Rope {
    pub fn new(heads: usize, seq: usize, dim: usize, base: f32, dtype: DType) -> Result<Self> {
        let op = Rope { heads, seq, dim, base, dtype };
        op.validate()?;
        Ok(op)
    }
    pub fn params(&self) -> DecayParams {
        DecayParams {
            outer: self.heads as u32,
            seq: self.seq as u32,
            inner: self.dim as u32,
            base: self.base,
            ..Default::default()
        }
    }
}

impl Op for Rope {
    const NAME: &'static str = "rope";
    fn validate(&self) -> Result<()> {
        nonzero(Self::NAME, "heads", self.heads)?;
        nonzero(Self::NAME, "seq", self.seq)?;
        nonzero(Self::NAME, "dim", self.dim)?;
        check_rope(Self::NAME, self.dim, self.base)?;
        float_dtype(Self::NAME, self.dtype)?;
        fits(Self::NAME, "heads * seq * dim", &[self.heads, self.seq, self.dim]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let n = self.heads * self.seq * self.dim;
        vec![
            BufferSpec::input("x", self.dtype, n),
            BufferSpec::input("pos", DType::I32, self.seq),
            BufferSpec::output("y", self.dtype, n),
        ]
    }
    fn cost(&self) -> Cost {
        let n = (self.heads * self.seq * self.dim) as u64;
        Cost { flops: 3 * n, bytes: 2 * n * self.dtype.size() as u64 + 4 * self.seq as u64 }
    }
    fn label(&self) -> String {
        format!("h{}_t{}_d{}_{}", self.heads, self.seq, self.dim, self.dtype)
    }
}

/// RAT+ prefill of one layer: `k~`, `v~` = decay scans of `k`, `v` (`[H, T, D]`, storage dtype)
/// with the shared f32 gate `g[H, T, D]` and zero initial state, and `k_rope = RoPE(k~)` at
/// positions `0..T`. Outputs `k_tilde`, `v_tilde`, `k_rope` in the storage dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct RatplusKv {
    pub heads: usize,
    pub seq: usize,
    pub dim: usize,
    pub base: f32,
    pub dtype: DType,
}

impl RatplusKv {
    pub fn new(heads: usize, seq: usize, dim: usize, base: f32, dtype: DType) -> Result<Self> {
        let op = RatplusKv { heads, seq, dim, base, dtype };
        op.validate()?;
        Ok(op)
    }
    pub fn params(&self) -> DecayParams {
        DecayParams {
            outer: self.heads as u32,
            seq: self.seq as u32,
            inner: self.dim as u32,
            base: self.base,
            ..Default::default()
        }
    }
}

impl Op for RatplusKv {
    const NAME: &'static str = "ratplus_kv";
    fn validate(&self) -> Result<()> {
        Rope { heads: self.heads, seq: self.seq, dim: self.dim, base: self.base, dtype: self.dtype }
            .validate()
            .map_err(|e| rename(e, Self::NAME))
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let n = self.heads * self.seq * self.dim;
        vec![
            BufferSpec::input("k", self.dtype, n),
            BufferSpec::input("v", self.dtype, n),
            BufferSpec::input("g", DType::F32, n),
            BufferSpec::output("k_tilde", self.dtype, n),
            BufferSpec::output("v_tilde", self.dtype, n),
            BufferSpec::output("k_rope", self.dtype, n),
        ]
    }
    fn cost(&self) -> Cost {
        let n = (self.heads * self.seq * self.dim) as u64;
        Cost { flops: 9 * n, bytes: n * (5 * self.dtype.size() as u64 + 4) }
    }
    fn label(&self) -> String {
        format!("h{}_t{}_d{}_{}", self.heads, self.seq, self.dim, self.dtype)
    }
}

/// RAT+ decode step on `[H, D]`: `hk_new = g*hk + (1-g)*k`, `hv_new = g*hv + (1-g)*v` (f32
/// pre-RoPE states) and `k_rope = RoPE(hk_new)` at `pos` (storage dtype).
#[derive(Clone, Debug, PartialEq)]
pub struct RatplusStep {
    pub heads: usize,
    pub dim: usize,
    pub base: f32,
    pub pos: u32,
    pub dtype: DType,
}

impl RatplusStep {
    pub fn new(heads: usize, dim: usize, base: f32, pos: u32, dtype: DType) -> Result<Self> {
        let op = RatplusStep { heads, dim, base, pos, dtype };
        op.validate()?;
        Ok(op)
    }
    pub fn params(&self) -> DecayParams {
        DecayParams {
            outer: self.heads as u32,
            seq: 1,
            inner: self.dim as u32,
            pos0: self.pos,
            base: self.base,
            ..Default::default()
        }
    }
}

impl Op for RatplusStep {
    const NAME: &'static str = "ratplus_step";
    fn validate(&self) -> Result<()> {
        if self.pos > i32::MAX as u32 {
            return Err(Error::invalid(Self::NAME, "pos", format!("at most {}, got {}", i32::MAX, self.pos)));
        }
        Rope { heads: self.heads, seq: 1, dim: self.dim, base: self.base, dtype: self.dtype }
            .validate()
            .map_err(|e| rename(e, Self::NAME))
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let n = self.heads * self.dim;
        vec![
            BufferSpec::input("k", self.dtype, n),
            BufferSpec::input("v", self.dtype, n),
            BufferSpec::input("g", DType::F32, n),
            BufferSpec::input("hk", DType::F32, n),
            BufferSpec::input("hv", DType::F32, n),
            BufferSpec::output("hk_new", DType::F32, n),
            BufferSpec::output("hv_new", DType::F32, n),
            BufferSpec::output("k_rope", self.dtype, n),
        ]
    }
    fn cost(&self) -> Cost {
        let n = (self.heads * self.dim) as u64;
        Cost { flops: 9 * n, bytes: n * (3 * self.dtype.size() as u64 + 20) }
    }
    fn label(&self) -> String {
        format!("h{}_d{}_pos{}_{}", self.heads, self.dim, self.pos, self.dtype)
    }
}

/// Re-labels an argument error of a delegated check with the calling op's name.
fn rename(e: Error, op: &'static str) -> Error {
    match e {
        Error::InvalidArgument { arg, expected, .. } => Error::InvalidArgument { op, arg, expected },
        other => other,
    }
}
