//! The head-level hit rate of the paper's analysis (SPEC §9).

use super::{fits, nonzero, BufferSpec, Cost, Op};
use crate::params::HitRateParams;
use crate::{DType, Result};

/// `head_hit[h] = AND_s sel[s, h, gold[s] / block_size]` and `rate = mean(head_hit)`, for
/// `sel[S, H, N]` (i32 0/1: candidate `n` selected by head `h` at step `s`) and `gold[S]` (i32
/// token positions). A gold position whose candidate lies outside `0..N` counts as a miss on the
/// GPU backends; the CPU backend rejects it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HitRate {
    pub steps: usize,
    pub heads: usize,
    pub n: usize,
    pub block_size: usize,
}

impl HitRate {
    pub fn new(steps: usize, heads: usize, n: usize, block_size: usize) -> Result<Self> {
        let op = HitRate { steps, heads, n, block_size };
        op.validate()?;
        Ok(op)
    }
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
