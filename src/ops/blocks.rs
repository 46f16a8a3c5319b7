//! Block statistics (Quest min/max, MoBA mean) and Quest block scores (SPEC §2.1, §2.2, §3.1).

use super::{fits, float_dtype, gqa, nonzero, BufferSpec, Cost, Op};
use crate::params::BlockParams;
use crate::{DType, Result};

/// Keys `k[H, T, D]` cut into `NB = ceil(T / block_size)` blocks; only the last may be partial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockShape {
    /// Key heads (`H`, the kv heads); at least 1.
    pub heads: usize,
    /// Tokens (`T`); at least 1.
    pub seq: usize,
    /// Head dim (`D`); at least 1.
    pub dim: usize,
    /// Tokens per block; at least 1.
    pub block_size: usize,
    /// Storage dtype of the keys and of the statistics: a float type.
    pub dtype: DType,
}

impl BlockShape {
    /// Number of blocks, `ceil(seq / block_size)`.
    pub fn nb(&self) -> usize {
        self.seq.div_ceil(self.block_size)
    }
    fn validate(&self, op: &'static str) -> Result<()> {
        nonzero(op, "heads", self.heads)?;
        nonzero(op, "seq", self.seq)?;
        nonzero(op, "dim", self.dim)?;
        nonzero(op, "block_size", self.block_size)?;
        float_dtype(op, self.dtype)?;
        fits(op, "heads * seq * dim", &[self.heads, self.seq, self.dim]).map(drop)
    }
    /// Fills the kernel parameter block of the `blocks` family (`q_heads = kv_heads = heads`).
    pub fn params(&self) -> BlockParams {
        BlockParams {
            q_heads: self.heads as u32,
            kv_heads: self.heads as u32,
            seq: self.seq as u32,
            dim: self.dim as u32,
            block_size: self.block_size as u32,
            nb: self.nb() as u32,
            ..Default::default()
        }
    }
    fn label(&self) -> String {
        format!("h{}_t{}_d{}_bs{}_{}", self.heads, self.seq, self.dim, self.block_size, self.dtype)
    }
    fn cost(&self, outputs: usize) -> Cost {
        let n = (self.heads * self.seq * self.dim) as u64;
        let out = (outputs * self.heads * self.nb() * self.dim) as u64;
        Cost { flops: outputs as u64 * n, bytes: (n + out) * self.dtype.size() as u64 }
    }
}

/// Per block and channel, the min and max of the block's valid tokens: `kmin`, `kmax` of shape
/// `[H, NB, D]` in the storage dtype (Quest's block representatives).
///
/// ```
/// use kvsparse::{ops::{BlockMinmax, BlockShape}, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let op = BlockMinmax::new(BlockShape { heads: 1, seq: 3, dim: 1, block_size: 2, dtype: DType::F32 })?;
/// let k = cpu.upload(&HostData::F32(vec![1.0, -2.0, 5.0]))?;
/// let (mut lo, mut hi) = (cpu.alloc(DType::F32, 2)?, cpu.alloc(DType::F32, 2)?);
/// cpu.block_minmax(&op, &k, &mut lo, &mut hi)?;
/// assert_eq!(cpu.download(&lo)?, HostData::F32(vec![-2.0, 5.0]));
/// assert_eq!(cpu.download(&hi)?, HostData::F32(vec![1.0, 5.0]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMinmax {
    /// Keys `[H, T, D]` and their block size.
    pub shape: BlockShape,
}

impl BlockMinmax {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `heads`, `seq`, `dim`, `block_size` at least 1; `dtype` a float type;
    /// `heads * seq * dim` within [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(shape: BlockShape) -> Result<Self> {
        let op = BlockMinmax { shape };
        op.validate()?;
        Ok(op)
    }
}

impl Op for BlockMinmax {
    const NAME: &'static str = "block_minmax";
    fn validate(&self) -> Result<()> {
        self.shape.validate(Self::NAME)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let s = &self.shape;
        let out = s.heads * s.nb() * s.dim;
        vec![
            BufferSpec::input("k", s.dtype, s.heads * s.seq * s.dim),
            BufferSpec::output("kmin", s.dtype, out),
            BufferSpec::output("kmax", s.dtype, out),
        ]
    }
    fn cost(&self) -> Cost {
        self.shape.cost(2)
    }
    fn label(&self) -> String {
        self.shape.label()
    }
}

/// Per block and channel, the mean of the block's valid tokens: `kmean[H, NB, D]` in the
/// storage dtype (MoBA's block representative). A partial last block averages only its own
/// tokens.
///
/// | buffer  | shape        | dtype   | role |
/// |---------|--------------|---------|------|
/// | `k`     | `[H, T, D]`  | storage | input |
/// | `kmean` | `[H, NB, D]` | storage | output, `NB = ceil(T / block_size)` |
///
/// Cost: `H·T·D` FLOPs, `(H·T·D + H·NB·D)` elements moved. Reference:
/// `kvsparse_reference::block_mean` (SPEC §3.1).
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`BlockMean::new`]; [`crate::Error::Buffer`] when a
/// buffer's length or dtype does not match the table.
///
/// ```
/// use kvsparse::{ops::{BlockMean, BlockShape}, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let op = BlockMean::new(BlockShape { heads: 1, seq: 3, dim: 1, block_size: 2, dtype: DType::F32 })?;
/// let k = cpu.upload(&HostData::F32(vec![1.0, 3.0, 5.0]))?;
/// let mut kmean = cpu.alloc(DType::F32, 2)?;
/// cpu.block_mean(&op, &k, &mut kmean)?;
/// assert_eq!(cpu.download(&kmean)?, HostData::F32(vec![2.0, 5.0]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMean {
    /// Keys `[H, T, D]` and their block size.
    pub shape: BlockShape,
}

impl BlockMean {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `heads`, `seq`, `dim`, `block_size` at least 1; `dtype` a float type;
    /// `heads * seq * dim` within [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(shape: BlockShape) -> Result<Self> {
        let op = BlockMean { shape };
        op.validate()?;
        Ok(op)
    }
}

impl Op for BlockMean {
    const NAME: &'static str = "block_mean";
    fn validate(&self) -> Result<()> {
        self.shape.validate(Self::NAME)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let s = &self.shape;
        vec![
            BufferSpec::input("k", s.dtype, s.heads * s.seq * s.dim),
            BufferSpec::output("kmean", s.dtype, s.heads * s.nb() * s.dim),
        ]
    }
    fn cost(&self) -> Cost {
        self.shape.cost(1)
    }
    fn label(&self) -> String {
        self.shape.label()
    }
}

/// Quest's upper bound of `q . k_t` over a block: `scores[Hq, NB] = sum_d max(q*kmax, q*kmin)`
/// for `q[Hq, D]` and `kmin`, `kmax` `[Hkv, NB, D]` (storage dtype); scores in f32, unscaled.
/// Query head `h` reads the statistics of kv head `h / (Hq / Hkv)`.
///
/// | buffer   | shape          | dtype   | role |
/// |----------|----------------|---------|------|
/// | `q`      | `[Hq, D]`      | storage | input: the decode query |
/// | `kmin`   | `[Hkv, NB, D]` | storage | input, as [`BlockMinmax`] writes it |
/// | `kmax`   | `[Hkv, NB, D]` | storage | input, as [`BlockMinmax`] writes it |
/// | `scores` | `[Hq, NB]`     | f32     | output |
///
/// Cost: `4·Hq·NB·D` FLOPs; bytes = the statistics once, `q`, and the scores. Reference:
/// `kvsparse_reference::quest_scores` (SPEC §2.2).
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`QuestScores::new`]; [`crate::Error::Buffer`] when
/// a buffer's length or dtype does not match the table.
///
/// ```
/// use kvsparse::{ops::QuestScores, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let op = QuestScores::new(1, 1, 2, 2, DType::F32)?;
/// let q = cpu.upload(&HostData::F32(vec![1.0, -1.0]))?;
/// let kmin = cpu.upload(&HostData::F32(vec![0.0, -2.0, /* block 1: */ 1.0, 1.0]))?;
/// let kmax = cpu.upload(&HostData::F32(vec![3.0, 0.0, /* block 1: */ 2.0, 4.0]))?;
/// let mut scores = cpu.alloc(DType::F32, 2)?;
/// cpu.quest_scores(&op, &q, &kmin, &kmax, &mut scores)?;
/// // block 0: max(3, 0) + max(0, 2) = 5; block 1: max(2, 1) + max(-4, -1) = 1
/// assert_eq!(cpu.download(&scores)?, HostData::F32(vec![5.0, 1.0]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuestScores {
    /// Query heads (`Hq`); a multiple of `kv_heads`.
    pub q_heads: usize,
    /// Key heads (`Hkv`) of the statistics; at least 1.
    pub kv_heads: usize,
    /// Blocks (`NB`); at least 1.
    pub nb: usize,
    /// Head dim (`D`); at least 1.
    pub dim: usize,
    /// Storage dtype of `q`, `kmin`, `kmax`: a float type.
    pub dtype: DType,
}

impl QuestScores {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `q_heads`, `kv_heads` at least 1 and `q_heads` a multiple of
    /// `kv_heads`; `nb`, `dim` at least 1; `dtype` a float type; `q_heads * nb * dim` within
    /// [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(q_heads: usize, kv_heads: usize, nb: usize, dim: usize, dtype: DType) -> Result<Self> {
        let op = QuestScores { q_heads, kv_heads, nb, dim, dtype };
        op.validate()?;
        Ok(op)
    }
    /// Fills the kernel parameter block of the `blocks` family (`seq = block_size = 1`).
    pub fn params(&self) -> BlockParams {
        BlockParams {
            q_heads: self.q_heads as u32,
            kv_heads: self.kv_heads as u32,
            seq: 1,
            dim: self.dim as u32,
            block_size: 1,
            nb: self.nb as u32,
            ..Default::default()
        }
    }
}

impl Op for QuestScores {
    const NAME: &'static str = "quest_scores";
    fn validate(&self) -> Result<()> {
        gqa(Self::NAME, self.q_heads, self.kv_heads)?;
        nonzero(Self::NAME, "nb", self.nb)?;
        nonzero(Self::NAME, "dim", self.dim)?;
        float_dtype(Self::NAME, self.dtype)?;
        fits(Self::NAME, "q_heads * nb * dim", &[self.q_heads, self.nb, self.dim]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let stats = self.kv_heads * self.nb * self.dim;
        vec![
            BufferSpec::input("q", self.dtype, self.q_heads * self.dim),
            BufferSpec::input("kmin", self.dtype, stats),
            BufferSpec::input("kmax", self.dtype, stats),
            BufferSpec::output("scores", DType::F32, self.q_heads * self.nb),
        ]
    }
    fn cost(&self) -> Cost {
        let stats = (2 * self.kv_heads * self.nb * self.dim) as u64;
        Cost {
            flops: 4 * (self.q_heads * self.nb * self.dim) as u64,
            bytes: (stats + (self.q_heads * self.dim) as u64) * self.dtype.size() as u64
                + 4 * (self.q_heads * self.nb) as u64,
        }
    }
    fn label(&self) -> String {
        format!("hq{}_hkv{}_nb{}_d{}_{}", self.q_heads, self.kv_heads, self.nb, self.dim, self.dtype)
    }
}
