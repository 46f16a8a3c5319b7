//! The head-level hit rate of the paper's analysis (SPEC §9).

use super::{fits, nonzero, BufferSpec, Cost, Op};
use crate::params::HitRateParams;
use crate::{DType, Result};

/// `head_hit[h] = AND_s sel[s, h, gold[s] / block_size]` and `rate = mean(head_hit)`, for
/// `sel[S, H, N]` (i32 0/1: candidate `n` selected by head `h` at step `s`) and `gold[S]` (i32
/// token positions). A gold position whose candidate lies outside `0..N` counts as a miss on the
/// GPU backends; the CPU backend rejects it.
///
/// | buffer     | shape       | dtype | role |
/// |------------|-------------|-------|------|
/// | `sel`      | `[S, H, N]` | i32   | input: 1 = candidate selected, 0 = not |
/// | `gold`     | `[S]`       | i32   | input: the gold token position of each step |
/// | `head_hit` | `[H]`       | i32   | output: 1 if the head hit at every step |
/// | `rate`     | `[1]`       | f32   | output: mean of `head_hit` |
///
/// Cost: `S·H` ops, `4·(S·(H + 1) + H + 1)` bytes (one gathered element per head and step).
/// Reference: `kvsparse_reference::hit_rate`.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`HitRate::new`] (and, on the CPU backend, for a gold
/// position outside `0..N·block_size`); [`crate::Error::Buffer`] when a buffer's length or
/// dtype does not match the table.
///
/// ```
/// use kvsparse::{ops::HitRate, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// // 1 step, 2 heads, 2 blocks of 4 tokens; the gold token 5 lies in block 1.
/// let op = HitRate::new(1, 2, 2, 4)?;
/// let sel = cpu.upload(&HostData::I32(vec![1, 0, /* head 1: */ 0, 1]))?;
/// let gold = cpu.upload(&HostData::I32(vec![5]))?;
/// let (mut hit, mut rate) = (cpu.alloc(DType::I32, 2)?, cpu.alloc(DType::F32, 1)?);
/// cpu.hit_rate(&op, &sel, &gold, &mut hit, &mut rate)?;
/// assert_eq!(cpu.download(&hit)?, HostData::I32(vec![0, 1]));
/// assert_eq!(cpu.download(&rate)?, HostData::F32(vec![0.5]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HitRate {
    /// Decode steps (`S`); at least 1.
    pub steps: usize,
    /// Heads (`H`); at least 1.
    pub heads: usize,
    /// Candidates per head and step (`N`: blocks, or tokens with `block_size = 1`); at least 1.
    pub n: usize,
    /// Tokens per candidate; at least 1.
    pub block_size: usize,
}

impl HitRate {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `steps`, `heads`, `n`, `block_size` at least 1; `steps * heads * n`
    /// within [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(steps: usize, heads: usize, n: usize, block_size: usize) -> Result<Self> {
        let op = HitRate { steps, heads, n, block_size };
        op.validate()?;
        Ok(op)
    }
    /// Fills the kernel parameter block of the `hit_rate` family.
    pub fn params(&self) -> HitRateParams {
        HitRateParams {
            steps: self.steps as u32,
            heads: self.heads as u32,
            n: self.n as u32,
            block_size: self.block_size as u32,
        }
    }
}

impl Op for HitRate {
    const NAME: &'static str = "hit_rate";
    fn validate(&self) -> Result<()> {
        nonzero(Self::NAME, "steps", self.steps)?;
        nonzero(Self::NAME, "heads", self.heads)?;
        nonzero(Self::NAME, "n", self.n)?;
        nonzero(Self::NAME, "block_size", self.block_size)?;
        fits(Self::NAME, "steps * heads * n", &[self.steps, self.heads, self.n]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        vec![
            BufferSpec::input("sel", DType::I32, self.steps * self.heads * self.n),
            BufferSpec::input("gold", DType::I32, self.steps),
            BufferSpec::output("head_hit", DType::I32, self.heads),
            BufferSpec::output("rate", DType::F32, 1),
        ]
    }
    fn cost(&self) -> Cost {
        Cost {
            flops: (self.steps * self.heads) as u64,
            bytes: 4 * (self.steps * (self.heads + 1) + self.heads + 1) as u64,
        }
    }
    fn label(&self) -> String {
        format!("s{}_h{}_n{}_bs{}", self.steps, self.heads, self.n, self.block_size)
    }
}
