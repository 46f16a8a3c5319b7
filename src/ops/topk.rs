//! Top-k of score rows (SPEC §5.1).

use super::{fits, nonzero, BufferSpec, Cost, Op};
use crate::params::TopkParams;
use crate::{DType, Result};

/// `indices[R, min(k, N)]` of `scores[R, N]`: descending score, ties to the lower index, `-inf`
/// last. NaN scores are not allowed (the result for a row holding NaN is unspecified but in
/// bounds).
///
/// ```
/// use kvsparse::{ops::TopK, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let op = TopK::new(1, 4, 2)?;
/// let s = cpu.upload(&HostData::F32(vec![0.5, 2.0, 2.0, -1.0]))?;
/// let mut idx = cpu.alloc(DType::I32, 2)?;
/// cpu.topk(&op, &s, &mut idx)?;
/// assert_eq!(cpu.download(&idx)?, HostData::I32(vec![1, 2]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopK {
    /// Score rows (`R`); at least 1.
    pub rows: usize,
    /// Scores per row (`N`); at least 1.
    pub n: usize,
    /// Indices wanted per row; at least 1, clipped to `n` (see [`TopK::out_k`]).
    pub k: usize,
}

impl TopK {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `rows`, `n`, `k` at least 1; `rows * n` within
    /// [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(rows: usize, n: usize, k: usize) -> Result<Self> {
        let op = TopK { rows, n, k };
        op.validate()?;
        Ok(op)
    }
    /// Output row width `min(k, n)`.
    pub fn out_k(&self) -> usize {
        self.k.min(self.n)
    }
    /// Fills the kernel parameter block of the `topk` family.
    pub fn params(&self) -> TopkParams {
        TopkParams { rows: self.rows as u32, n: self.n as u32, k: self.k as u32, out_k: self.out_k() as u32 }
    }
}

impl Op for TopK {
    const NAME: &'static str = "topk";
    fn validate(&self) -> Result<()> {
        nonzero(Self::NAME, "rows", self.rows)?;
        nonzero(Self::NAME, "n", self.n)?;
        nonzero(Self::NAME, "k", self.k)?;
        fits(Self::NAME, "rows * n", &[self.rows, self.n]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        vec![
            BufferSpec::input("scores", DType::F32, self.rows * self.n),
            BufferSpec::output("indices", DType::I32, self.rows * self.out_k()),
        ]
    }
    fn cost(&self) -> Cost {
        Cost { flops: (self.rows * self.n) as u64, bytes: 4 * (self.rows * (self.n + self.out_k())) as u64 }
    }
    fn label(&self) -> String {
        format!("r{}_n{}_k{}", self.rows, self.n, self.k)
    }
}
