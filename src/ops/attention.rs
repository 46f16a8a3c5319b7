//! Dense attention (the baseline) and attention over an index set (SPEC §7).

use super::{fits, float_dtype, gqa, nonzero, scale, BufferSpec, Cost, Op};
use crate::params::AttentionParams;
use crate::{DType, Error, Result};

/// Softmax attention of `q[Hq, Tq, D]` over `k`, `v` `[Hkv, Tk, D]` (storage dtype); outputs
/// `out[Hq, Tq, D]` (storage dtype) and `lse[Hq, Tq]` (f32, natural log of the sum of
/// `exp(scale * q.k)` over the keys attended). Causal masking is bottom-right aligned: query `i`
/// sits at position `Tk - Tq + i` and sees keys `j <= Tk - Tq + i`.
///
/// ```
/// use kvsparse::{ops::AttentionDense, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let op = AttentionDense::new(1, 1, 1, 2, 2, false, 1.0, DType::F32)?;
/// let q = cpu.upload(&HostData::F32(vec![0.0, 0.0]))?;
/// let k = cpu.upload(&HostData::F32(vec![1.0, 0.0, 0.0, 1.0]))?;
/// let v = cpu.upload(&HostData::F32(vec![1.0, 2.0, 3.0, 4.0]))?;
/// let (mut out, mut lse) = (cpu.alloc(DType::F32, 2)?, cpu.alloc(DType::F32, 1)?);
/// cpu.attention_dense(&op, &q, &k, &v, &mut out, &mut lse)?;
/// assert_eq!(cpu.download(&out)?, HostData::F32(vec![2.0, 3.0]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionDense {
    /// Query heads (`Hq`); a multiple of `kv_heads`.
    pub q_heads: usize,
    /// Key/value heads (`Hkv`); at least 1.
    pub kv_heads: usize,
    /// Query tokens per head (`Tq`); at least 1, at most `kv_len` when `causal`.
    pub q_len: usize,
    /// Key/value tokens per head (`Tk`); at least 1.
    pub kv_len: usize,
    /// Head dim (`D`); at least 1.
    pub dim: usize,
    /// Causal mask, bottom-right aligned (query `i` sees keys `j <= Tk - Tq + i`).
    pub causal: bool,
    /// Softmax scale; finite and positive (usually [`default_scale`](crate::ops::default_scale)).
    pub scale: f32,
    /// Storage dtype of `q`, `k`, `v`, `out`: a float type.
    pub dtype: DType,
}

impl AttentionDense {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `q_heads`, `kv_heads` at least 1 and `q_heads` a multiple of
    /// `kv_heads`; `q_len`, `kv_len`, `dim` at least 1; `scale` finite and positive; `dtype` a
    /// float type; `q_len <= kv_len` when `causal`; `q` and `k` sizes within
    /// [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        q_heads: usize,
        kv_heads: usize,
        q_len: usize,
        kv_len: usize,
        dim: usize,
        causal: bool,
        scale: f32,
        dtype: DType,
    ) -> Result<Self> {
        let op = AttentionDense { q_heads, kv_heads, q_len, kv_len, dim, causal, scale, dtype };
        op.validate()?;
        Ok(op)
    }
    /// Fills the kernel parameter block of the `attention` family (no index list, no split).
    pub fn params(&self) -> AttentionParams {
        AttentionParams {
            q_heads: self.q_heads as u32,
            kv_heads: self.kv_heads as u32,
            q_len: self.q_len as u32,
            kv_len: self.kv_len as u32,
            dim: self.dim as u32,
            causal: self.causal as u32,
            scale: self.scale,
            idx_heads: 0,
            n_idx: 0,
            block_size: 1,
            splits: 1,
            _pad0: 0,
        }
    }
    /// Key-query pairs attended (causal counts only the unmasked ones).
    pub fn pairs(&self) -> u64 {
        let (tq, tk) = (self.q_len as u64, self.kv_len as u64);
        let per_head = if self.causal { (0..tq).map(|i| tk - tq + i + 1).sum() } else { tq * tk };
        per_head * self.q_heads as u64
    }
}

impl Op for AttentionDense {
    const NAME: &'static str = "attention_dense";
    fn validate(&self) -> Result<()> {
        gqa(Self::NAME, self.q_heads, self.kv_heads)?;
        nonzero(Self::NAME, "q_len", self.q_len)?;
        nonzero(Self::NAME, "kv_len", self.kv_len)?;
        nonzero(Self::NAME, "dim", self.dim)?;
        scale(Self::NAME, self.scale)?;
        float_dtype(Self::NAME, self.dtype)?;
        if self.causal && self.q_len > self.kv_len {
            return Err(Error::invalid(
                Self::NAME,
                "q_len",
                format!("at most kv_len = {} for causal attention, got {}", self.kv_len, self.q_len),
            ));
        }
        fits(Self::NAME, "q_heads * q_len * dim", &[self.q_heads, self.q_len, self.dim])?;
        fits(Self::NAME, "kv_heads * kv_len * dim", &[self.kv_heads, self.kv_len, self.dim]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let q = self.q_heads * self.q_len * self.dim;
        let kv = self.kv_heads * self.kv_len * self.dim;
        vec![
            BufferSpec::input("q", self.dtype, q),
            BufferSpec::input("k", self.dtype, kv),
            BufferSpec::input("v", self.dtype, kv),
            BufferSpec::output("out", self.dtype, q),
            BufferSpec::output("lse", DType::F32, self.q_heads * self.q_len),
        ]
    }
    fn cost(&self) -> Cost {
        let q = (self.q_heads * self.q_len * self.dim) as u64;
        let kv = (self.kv_heads * self.kv_len * self.dim) as u64;
        Cost {
            flops: 4 * self.pairs() * self.dim as u64,
            bytes: (2 * q + 2 * kv) * self.dtype.size() as u64 + 4 * (self.q_heads * self.q_len) as u64,
        }
    }
    fn label(&self) -> String {
        format!(
            "hq{}_hkv{}_tq{}_tk{}_d{}{}_{}",
            self.q_heads,
            self.kv_heads,
            self.q_len,
            self.kv_len,
            self.dim,
            if self.causal { "_causal" } else { "" },
            self.dtype
        )
    }
}

/// Attention of one query per head `q[Hq, D]` over the tokens listed in `idx[Hi, n]` (i32):
/// `Hi = Hq` gives each query head its own list, `Hi = Hkv` shares a list across a GQA group.
/// Entries are token ids in `0..T` or `-1` (padding), in any order, without repeats. Outputs
/// `out[Hq, D]` (storage dtype) and `lse[Hq]` (f32); an all-padding row gives `out = 0`,
/// `lse = -inf`. GPU kernels treat any entry outside `0..T` as padding (they never read out of
/// bounds); the CPU backend rejects such entries with an error.
///
/// | buffer | shape         | dtype   | role |
/// |--------|---------------|---------|------|
/// | `q`    | `[Hq, D]`     | storage | input: one query per head |
/// | `k`    | `[Hkv, T, D]` | storage | input |
/// | `v`    | `[Hkv, T, D]` | storage | input |
/// | `idx`  | `[Hi, n]`     | i32     | input: token ids or `-1` |
/// | `out`  | `[Hq, D]`     | storage | output |
/// | `lse`  | `[Hq]`        | f32     | output: natural-log sum of `exp(scale * q.k)` |
///
/// Cost: `4·Hq·n·D` FLOPs; bytes = the K and V rows listed (`2·Hi·n·D` elements), `q`, `out`,
/// `idx` and `lse`. Reference: `kvsparse_reference::attention_sparse` (SPEC §7.2).
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`AttentionSparse::new`] (and, on the CPU backend,
/// for an `idx` entry outside `-1..T`); [`crate::Error::Buffer`] when a buffer's length or
/// dtype does not match the table.
///
/// ```
/// use kvsparse::{ops::AttentionSparse, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// // 1 head, 3 tokens, D = 1; attend to token 2 only (the rest is padding).
/// let op = AttentionSparse::new(1, 1, 3, 1, 1, 2, 1.0, DType::F32)?;
/// let q = cpu.upload(&HostData::F32(vec![1.0]))?;
/// let k = cpu.upload(&HostData::F32(vec![0.0, 0.0, 0.0]))?;
/// let v = cpu.upload(&HostData::F32(vec![1.0, 2.0, 3.0]))?;
/// let idx = cpu.upload(&HostData::I32(vec![2, -1]))?;
/// let (mut out, mut lse) = (cpu.alloc(DType::F32, 1)?, cpu.alloc(DType::F32, 1)?);
/// cpu.attention_sparse(&op, &q, &k, &v, &idx, &mut out, &mut lse)?;
/// assert_eq!(cpu.download(&out)?, HostData::F32(vec![3.0]));
/// assert_eq!(cpu.download(&lse)?, HostData::F32(vec![0.0])); // log(exp(0))
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionSparse {
    /// Query heads (`Hq`); a multiple of `kv_heads`.
    pub q_heads: usize,
    /// Key/value heads (`Hkv`); at least 1.
    pub kv_heads: usize,
    /// Tokens in the cache (`T`); at least 1. Valid `idx` entries are `0..T`.
    pub seq: usize,
    /// Head dim (`D`); at least 1.
    pub dim: usize,
    /// Rows of `idx`: `q_heads` or `kv_heads`.
    pub idx_heads: usize,
    /// Entries per row of `idx`.
    pub n_idx: usize,
    /// Softmax scale; finite and positive (usually [`default_scale`](crate::ops::default_scale)).
    pub scale: f32,
    /// Storage dtype of `q`, `k`, `v`, `out`: a float type.
    pub dtype: DType,
}

impl AttentionSparse {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `q_heads`, `kv_heads` at least 1 and `q_heads` a multiple of
    /// `kv_heads`; `seq`, `dim`, `n_idx` at least 1; `scale` finite and positive; `dtype` a float
    /// type; `idx_heads` equal to `q_heads` or `kv_heads`; `idx` and `k` sizes within
    /// [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        q_heads: usize,
        kv_heads: usize,
        seq: usize,
        dim: usize,
        idx_heads: usize,
        n_idx: usize,
        scale: f32,
        dtype: DType,
    ) -> Result<Self> {
        let op = AttentionSparse { q_heads, kv_heads, seq, dim, idx_heads, n_idx, scale, dtype };
        op.validate()?;
        Ok(op)
    }
    /// Fills the kernel parameter block of the `attention` family (`q_len = 1`, token indices).
    pub fn params(&self) -> AttentionParams {
        AttentionParams {
            q_heads: self.q_heads as u32,
            kv_heads: self.kv_heads as u32,
            q_len: 1,
            kv_len: self.seq as u32,
            dim: self.dim as u32,
            causal: 0,
            scale: self.scale,
            idx_heads: self.idx_heads as u32,
            n_idx: self.n_idx as u32,
            block_size: 1,
            splits: 1,
            _pad0: 0,
        }
    }
}

impl Op for AttentionSparse {
    const NAME: &'static str = "attention_sparse";
    fn validate(&self) -> Result<()> {
        gqa(Self::NAME, self.q_heads, self.kv_heads)?;
        nonzero(Self::NAME, "seq", self.seq)?;
        nonzero(Self::NAME, "dim", self.dim)?;
        nonzero(Self::NAME, "n_idx", self.n_idx)?;
        scale(Self::NAME, self.scale)?;
        float_dtype(Self::NAME, self.dtype)?;
        if self.idx_heads != self.q_heads && self.idx_heads != self.kv_heads {
            return Err(Error::invalid(
                Self::NAME,
                "idx_heads",
                format!("q_heads = {} or kv_heads = {}, got {}", self.q_heads, self.kv_heads, self.idx_heads),
            ));
        }
        fits(Self::NAME, "idx_heads * n_idx", &[self.idx_heads, self.n_idx])?;
        fits(Self::NAME, "kv_heads * seq * dim", &[self.kv_heads, self.seq, self.dim]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let kv = self.kv_heads * self.seq * self.dim;
        vec![
            BufferSpec::input("q", self.dtype, self.q_heads * self.dim),
            BufferSpec::input("k", self.dtype, kv),
            BufferSpec::input("v", self.dtype, kv),
            BufferSpec::input("idx", DType::I32, self.idx_heads * self.n_idx),
            BufferSpec::output("out", self.dtype, self.q_heads * self.dim),
            BufferSpec::output("lse", DType::F32, self.q_heads),
        ]
    }
    fn cost(&self) -> Cost {
        let read = (self.idx_heads * self.n_idx * 2 * self.dim) as u64;
        Cost {
            flops: 4 * (self.q_heads * self.n_idx * self.dim) as u64,
            bytes: (read + 2 * (self.q_heads * self.dim) as u64) * self.dtype.size() as u64
                + 4 * (self.idx_heads * self.n_idx + self.q_heads) as u64,
        }
    }
    fn label(&self) -> String {
        format!(
            "hq{}_hkv{}_t{}_d{}_hi{}_n{}_{}",
            self.q_heads, self.kv_heads, self.seq, self.dim, self.idx_heads, self.n_idx, self.dtype
        )
    }
}
