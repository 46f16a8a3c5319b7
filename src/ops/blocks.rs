//! Block statistics (Quest min/max, MoBA mean) and Quest block scores (SPEC §2.1, §2.2, §3.1).

use super::{fits, float_dtype, gqa, nonzero, BufferSpec, Cost, Op};
use crate::params::BlockParams;
use crate::{DType, Result};

/// Keys `k[H, T, D]` cut into `NB = ceil(T / block_size)` blocks; only the last may be partial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockShape {
    pub heads: usize,
    pub seq: usize,
    pub dim: usize,
    pub block_size: usize,
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
    pub shape: BlockShape,
}

impl BlockMinmax {
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
/// storage dtype (MoBA's block representative).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMean {
    pub shape: BlockShape,
}

impl BlockMean {
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuestScores {
    pub q_heads: usize,
    pub kv_heads: usize,
    pub nb: usize,
    pub dim: usize,
    pub dtype: DType,
}

impl QuestScores {
    pub fn new(q_heads: usize, kv_heads: usize, nb: usize, dim: usize, dtype: DType) -> Result<Self> {
        let op = QuestScores { q_heads, kv_heads, nb, dim, dtype };
        op.validate()?;
        Ok(op)
    }
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
