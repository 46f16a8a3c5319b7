//! The counter-based PCG hash and the seeded random selector (SPEC §8).

use super::{fits, nonzero, BufferSpec, Cost, Op};
use crate::params::RandomParams;
use crate::{DType, Result};

/// `hash[n] = pcg(v[n])` with the PCG hash of SPEC §8.1.
///
/// ```
/// use kvsparse::{ops::PcgHash, Backend, Cpu, HostData};
/// let cpu = Cpu::new();
/// let op = PcgHash::new(2)?;
/// let v = cpu.upload(&HostData::U32(vec![0, 1]))?;
/// let mut h = cpu.alloc(kvsparse::DType::U32, 2)?;
/// cpu.pcg_hash(&op, &v, &mut h)?;
/// assert_eq!(cpu.download(&h)?, HostData::U32(vec![129708002, 2831084092]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcgHash {
    pub n: usize,
}

impl PcgHash {
    pub fn new(n: usize) -> Result<Self> {
        let op = PcgHash { n };
        op.validate()?;
        Ok(op)
    }
    pub fn params(&self) -> RandomParams {
        RandomParams { n: self.n as u32, rows: 1, k: 0, seed: 0 }
    }
}

impl Op for PcgHash {
    const NAME: &'static str = "pcg_hash";
    fn validate(&self) -> Result<()> {
        nonzero(Self::NAME, "n", self.n)?;
        fits(Self::NAME, "n", &[self.n]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        vec![BufferSpec::input("v", DType::U32, self.n), BufferSpec::output("hash", DType::U32, self.n)]
    }
    fn cost(&self) -> Cost {
        Cost { flops: 8 * self.n as u64, bytes: 8 * self.n as u64 }
    }
    fn label(&self) -> String {
        format!("n{}", self.n)
    }
}

/// `keys[R, N] = key(seed, rows[r], idx[n])` with `key(seed, row, i) = pcg(seed ^ pcg(row ^ pcg(i)))`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RandomKey {
    pub rows: usize,
    pub n: usize,
    pub seed: u32,
}

impl RandomKey {
    pub fn new(rows: usize, n: usize, seed: u32) -> Result<Self> {
        let op = RandomKey { rows, n, seed };
        op.validate()?;
        Ok(op)
    }
    pub fn params(&self) -> RandomParams {
        RandomParams { n: self.n as u32, rows: self.rows as u32, k: 0, seed: self.seed }
    }
}

impl Op for RandomKey {
    const NAME: &'static str = "random_key";
    fn validate(&self) -> Result<()> {
        nonzero(Self::NAME, "rows", self.rows)?;
        nonzero(Self::NAME, "n", self.n)?;
        fits(Self::NAME, "rows * n", &[self.rows, self.n]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        vec![
            BufferSpec::input("rows", DType::U32, self.rows),
            BufferSpec::input("idx", DType::U32, self.n),
            BufferSpec::output("keys", DType::U32, self.rows * self.n),
        ]
    }
    fn cost(&self) -> Cost {
        let e = (self.rows * self.n) as u64;
        Cost { flops: 24 * e, bytes: 4 * (e + (self.rows + self.n) as u64) }
    }
    fn label(&self) -> String {
        format!("r{}_n{}", self.rows, self.n)
    }
}

/// Seeded uniform selection: of the eligible candidates of each row (`cand[R, N]`, 1 = eligible),
/// keep the `k` with the largest `key(seed, rows[r], n)` (u32 compare, ties to the lower `n`).
/// Outputs `keys[R, N]` and `selected[R, k]` ascending, padded with `-1` when fewer than `k`
/// are eligible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RandomSelect {
    pub rows: usize,
    pub n: usize,
    pub k: usize,
    pub seed: u32,
}

impl RandomSelect {
    pub fn new(rows: usize, n: usize, k: usize, seed: u32) -> Result<Self> {
        let op = RandomSelect { rows, n, k, seed };
        op.validate()?;
        Ok(op)
    }
    pub fn params(&self) -> RandomParams {
        RandomParams { n: self.n as u32, rows: self.rows as u32, k: self.k as u32, seed: self.seed }
    }
}

impl Op for RandomSelect {
    const NAME: &'static str = "random_select";
    fn validate(&self) -> Result<()> {
        nonzero(Self::NAME, "rows", self.rows)?;
        nonzero(Self::NAME, "n", self.n)?;
        nonzero(Self::NAME, "k", self.k)?;
        fits(Self::NAME, "rows * n", &[self.rows, self.n])?;
        fits(Self::NAME, "rows * k", &[self.rows, self.k]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        vec![
            BufferSpec::input("rows", DType::U32, self.rows),
            BufferSpec::input("cand", DType::I32, self.rows * self.n),
            BufferSpec::output("keys", DType::U32, self.rows * self.n),
            BufferSpec::output("selected", DType::I32, self.rows * self.k),
        ]
    }
    fn cost(&self) -> Cost {
        let e = (self.rows * self.n) as u64;
        Cost { flops: 24 * e, bytes: 8 * e + 4 * (self.rows * (1 + self.k)) as u64 }
    }
    fn label(&self) -> String {
        format!("r{}_n{}_k{}", self.rows, self.n, self.k)
    }
}
