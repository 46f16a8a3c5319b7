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
    /// Outer extent (heads, or 1 for a plain `[T, C]` scan); at least 1.
    pub outer: usize,
    /// Time steps scanned (`T`); at least 1.
    pub seq: usize,
    /// Inner extent (head dim `D`, or channels `C`); at least 1.
    pub inner: usize,
    /// Storage dtype of `x` and `y`: a float type (`g` and `h0` are f32).
    pub dtype: DType,
}

impl DecayScan {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `outer`, `seq`, `inner` at least 1; `dtype` a float type;
    /// `outer * seq * inner` within [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(outer: usize, seq: usize, inner: usize, dtype: DType) -> Result<Self> {
        let op = DecayScan { outer, seq, inner, dtype };
        op.validate()?;
        Ok(op)
    }
    fn elems(&self) -> usize {
        self.outer * self.seq * self.inner
    }
    /// Fills the kernel parameter block of the `decay` family.
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
/// `g`, `h`, `h_new` in f32 (SPEC §1.3: the state is kept in f32 between steps).
///
/// | buffer  | shape | dtype   | role |
/// |---------|-------|---------|------|
/// | `x`     | `[C]` | storage | input: the new token's pre-RoPE key or value |
/// | `g`     | `[C]` | f32     | input: gates in `[0, 1]` |
/// | `h`     | `[C]` | f32     | input: the state after the previous token |
/// | `h_new` | `[C]` | f32     | output |
///
/// Cost: `3·C` FLOPs, `C·(elem + 12)` bytes. Reference: `kvsparse_reference::decay_step`.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`DecayStep::new`]; [`crate::Error::Buffer`] when a
/// buffer's length or dtype does not match the table.
///
/// ```
/// use kvsparse::{ops::DecayStep, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let op = DecayStep::new(2, DType::F32)?;
/// let x = cpu.upload(&HostData::F32(vec![1.0, 4.0]))?;
/// let g = cpu.upload(&HostData::F32(vec![0.5, 0.75]))?;
/// let h = cpu.upload(&HostData::F32(vec![3.0, 0.0]))?;
/// let mut h_new = cpu.alloc(DType::F32, 2)?;
/// cpu.decay_step(&op, &x, &g, &h, &mut h_new)?;
/// assert_eq!(cpu.download(&h_new)?, HostData::F32(vec![2.0, 1.0]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecayStep {
    /// Channels updated (`C`, e.g. `H * D`); at least 1.
    pub lanes: usize,
    /// Storage dtype of `x`: a float type.
    pub dtype: DType,
}

impl DecayStep {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `lanes` at least 1 and within
    /// [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS); `dtype` a float type.
    pub fn new(lanes: usize, dtype: DType) -> Result<Self> {
        let op = DecayStep { lanes, dtype };
        op.validate()?;
        Ok(op)
    }
    /// Fills the kernel parameter block of the `decay` family (`outer = seq = 1`).
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
/// `y_{i+D/2} = x_{i+D/2} cos a + x_i sin a`, `a = pos * inv_freq_i`, for `i < D/2` (SPEC §1.4).
///
/// | buffer | shape       | dtype   | role |
/// |--------|-------------|---------|------|
/// | `x`    | `[H, T, D]` | storage | input |
/// | `pos`  | `[T]`       | i32     | input: absolute position of each token |
/// | `y`    | `[H, T, D]` | storage | output |
///
/// Cost: `3·H·T·D` FLOPs, `2·H·T·D` elements plus `4·T` bytes. Reference:
/// `kvsparse_reference::rope`.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`Rope::new`]; [`crate::Error::Buffer`] when a
/// buffer's length or dtype does not match the table.
///
/// ```
/// use kvsparse::{ops::Rope, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let op = Rope::new(1, 2, 2, 10000.0, DType::F32)?;
/// let x = cpu.upload(&HostData::F32(vec![1.0, 0.0, 1.0, 0.0]))?;
/// let pos = cpu.upload(&HostData::I32(vec![0, 1]))?;
/// let mut y = cpu.alloc(DType::F32, 4)?;
/// cpu.rope(&op, &x, &pos, &mut y)?;
/// let y = cpu.download(&y)?.to_f32().unwrap();
/// assert_eq!(&y[..2], &[1.0, 0.0]); // position 0: unrotated
/// assert!((y[2] - 1f32.cos()).abs() < 1e-6 && (y[3] - 1f32.sin()).abs() < 1e-6); // angle 1 rad
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// Heads (`H`); at least 1.
    pub heads: usize,
    /// Tokens (`T`); at least 1.
    pub seq: usize,
    /// Head dim (`D`); even (rotate-half pairs `i` with `i + D/2`).
    pub dim: usize,
    /// Frequency base; finite and above 1 (10000 for RAT+).
    pub base: f32,
    /// Storage dtype of `x` and `y`: a float type.
    pub dtype: DType,
}

impl Rope {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `heads`, `seq`, `dim` at least 1; `dim` even; `base` finite and above
    /// 1; `dtype` a float type; `heads * seq * dim` within
    /// [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(heads: usize, seq: usize, dim: usize, base: f32, dtype: DType) -> Result<Self> {
        let op = Rope { heads, seq, dim, base, dtype };
        op.validate()?;
        Ok(op)
    }
    /// Fills the kernel parameter block of the `decay` family (positions start at 0).
    pub fn params(&self) -> DecayParams {
        DecayParams {
            outer: self.heads as u32,
            seq: self.seq as u32,
            inner: self.dim as u32,
            ..rope_params(self.base, self.dim)
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
///
/// | buffer    | shape       | dtype   | role |
/// |-----------|-------------|---------|------|
/// | `k`       | `[H, T, D]` | storage | input: pre-RoPE keys |
/// | `v`       | `[H, T, D]` | storage | input |
/// | `g`       | `[H, T, D]` | f32     | input: gates in `[0, 1]`, shared by keys and values |
/// | `k_tilde` | `[H, T, D]` | storage | output: `k~` (its last row seeds the decode state) |
/// | `v_tilde` | `[H, T, D]` | storage | output: `v~`, the cached values |
/// | `k_rope`  | `[H, T, D]` | storage | output: `RoPE(k~)`, the cached keys |
///
/// Cost: `9·H·T·D` FLOPs, `H·T·D·(5·elem + 4)` bytes. Reference:
/// `kvsparse_reference::ratplus_kv` (SPEC §1.2, §1.4).
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`RatplusKv::new`]; [`crate::Error::Buffer`] when a
/// buffer's length or dtype does not match the table.
///
/// ```
/// use kvsparse::{ops::RatplusKv, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let op = RatplusKv::new(1, 2, 2, 10000.0, DType::F32)?;
/// let k = cpu.upload(&HostData::F32(vec![2.0, 0.0, 2.0, 0.0]))?;
/// let v = cpu.upload(&HostData::F32(vec![4.0, 4.0, 0.0, 0.0]))?;
/// let g = cpu.upload(&HostData::F32(vec![0.5; 4]))?;
/// let [mut kt, mut vt, mut kr] = [0; 3].map(|_| cpu.alloc(DType::F32, 4).unwrap());
/// cpu.ratplus_kv(&op, &k, &v, &g, &mut kt, &mut vt, &mut kr)?;
/// assert_eq!(cpu.download(&kt)?, HostData::F32(vec![1.0, 0.0, 1.5, 0.0]));
/// assert_eq!(cpu.download(&vt)?, HostData::F32(vec![2.0, 2.0, 1.0, 1.0]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RatplusKv {
    /// Key/value heads (`H`); at least 1.
    pub heads: usize,
    /// Prompt tokens (`T`); at least 1.
    pub seq: usize,
    /// Head dim (`D`); even.
    pub dim: usize,
    /// RoPE base; finite and above 1 (10000 for RAT+).
    pub base: f32,
    /// Storage dtype of `k`, `v` and the outputs: a float type.
    pub dtype: DType,
}

impl RatplusKv {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `heads`, `seq`, `dim` at least 1; `dim` even; `base` finite and above
    /// 1; `dtype` a float type; `heads * seq * dim` within
    /// [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(heads: usize, seq: usize, dim: usize, base: f32, dtype: DType) -> Result<Self> {
        let op = RatplusKv { heads, seq, dim, base, dtype };
        op.validate()?;
        Ok(op)
    }
    /// Fills the kernel parameter block of the `decay` family (positions start at 0).
    pub fn params(&self) -> DecayParams {
        DecayParams {
            outer: self.heads as u32,
            seq: self.seq as u32,
            inner: self.dim as u32,
            ..rope_params(self.base, self.dim)
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
///
/// | buffer   | shape    | dtype   | role |
/// |----------|----------|---------|------|
/// | `k`      | `[H, D]` | storage | input: the new token's pre-RoPE key |
/// | `v`      | `[H, D]` | storage | input: the new token's value |
/// | `g`      | `[H, D]` | f32     | input: gates in `[0, 1]` |
/// | `hk`     | `[H, D]` | f32     | input: `k~` of the previous token |
/// | `hv`     | `[H, D]` | f32     | input: `v~` of the previous token |
/// | `hk_new` | `[H, D]` | f32     | output: the new `k~` (next step's `hk`) |
/// | `hv_new` | `[H, D]` | f32     | output: the new `v~`, to append to the value cache |
/// | `k_rope` | `[H, D]` | storage | output: `RoPE(hk_new)`, to append to the key cache |
///
/// Cost: `9·H·D` FLOPs, `H·D·(3·elem + 20)` bytes. Reference:
/// `kvsparse_reference::ratplus_step` (SPEC §1.3, §1.4).
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`RatplusStep::new`]; [`crate::Error::Buffer`] when a
/// buffer's length or dtype does not match the table.
///
/// ```
/// use kvsparse::{ops::RatplusStep, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let op = RatplusStep::new(1, 2, 10000.0, 0, DType::F32)?; // position 0: RoPE is the identity
/// let k = cpu.upload(&HostData::F32(vec![2.0, 4.0]))?;
/// let v = cpu.upload(&HostData::F32(vec![1.0, 1.0]))?;
/// let g = cpu.upload(&HostData::F32(vec![0.5, 0.5]))?;
/// let hk = cpu.upload(&HostData::F32(vec![0.0, 2.0]))?;
/// let hv = cpu.upload(&HostData::F32(vec![1.0, 3.0]))?;
/// let [mut hkn, mut hvn, mut kr] = [0; 3].map(|_| cpu.alloc(DType::F32, 2).unwrap());
/// cpu.ratplus_step(&op, &k, &v, &g, &hk, &hv, &mut hkn, &mut hvn, &mut kr)?;
/// assert_eq!(cpu.download(&hkn)?, HostData::F32(vec![1.0, 3.0]));
/// assert_eq!(cpu.download(&hvn)?, HostData::F32(vec![1.0, 2.0]));
/// assert_eq!(cpu.download(&kr)?, HostData::F32(vec![1.0, 3.0]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RatplusStep {
    /// Key/value heads (`H`); at least 1.
    pub heads: usize,
    /// Head dim (`D`); even.
    pub dim: usize,
    /// RoPE base; finite and above 1 (10000 for RAT+).
    pub base: f32,
    /// Absolute position of the new token (its RoPE angle); at most `i32::MAX`.
    pub pos: u32,
    /// Storage dtype of `k`, `v`, `k_rope`: a float type.
    pub dtype: DType,
}

impl RatplusStep {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `pos <= i32::MAX`; `heads`, `dim` at least 1; `dim` even; `base` finite
    /// and above 1; `dtype` a float type; `heads * dim` within
    /// [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(heads: usize, dim: usize, base: f32, pos: u32, dtype: DType) -> Result<Self> {
        let op = RatplusStep { heads, dim, base, pos, dtype };
        op.validate()?;
        Ok(op)
    }
    /// Fills the kernel parameter block of the `decay` family (`seq = 1`, `pos0 = pos`).
    pub fn params(&self) -> DecayParams {
        DecayParams {
            outer: self.heads as u32,
            seq: 1,
            inner: self.dim as u32,
            pos0: self.pos,
            ..rope_params(self.base, self.dim)
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

/// The RoPE fields of the `decay` parameter block (the rest zero).
fn rope_params(base: f32, dim: usize) -> DecayParams {
    let [rope_step_hi, rope_step_lo] = crate::params::rope_step(base, dim);
    DecayParams { base, rope_step_hi, rope_step_lo, ..Default::default() }
}

/// Re-labels an argument error of a delegated check with the calling op's name.
fn rename(e: Error, op: &'static str) -> Error {
    match e {
        Error::InvalidArgument { arg, expected, .. } => Error::InvalidArgument { op, arg, expected },
        other => other,
    }
}
