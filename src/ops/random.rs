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
    /// Values hashed (`N`); at least 1.
    pub n: usize,
}

impl PcgHash {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `n` at least 1 and within [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(n: usize) -> Result<Self> {
        let op = PcgHash { n };
        op.validate()?;
        Ok(op)
    }
    /// Fills the kernel parameter block of the `random` family (`rows = 1`, no seed).
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

/// `keys[R, N] = key(seed, rows[r], idx[n])` with `key(seed, row, i) = pcg(seed ^ pcg(row ^ pcg(i)))`
/// (SPEC §8.1, all arithmetic mod 2^32).
///
/// | buffer | shape    | dtype | role |
/// |--------|----------|-------|------|
/// | `rows` | `[R]`    | u32   | input: row ids (e.g. query head, or `h*T + t`) |
/// | `idx`  | `[N]`    | u32   | input: candidate ids (block id or token position) |
/// | `keys` | `[R, N]` | u32   | output |
///
/// Cost: `24·R·N` integer ops, `4·(R·N + R + N)` bytes. Reference:
/// `kvsparse_reference::random_key`.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`RandomKey::new`]; [`crate::Error::Buffer`] when a
/// buffer's length or dtype does not match the table.
///
/// ```
/// use kvsparse::{ops::RandomKey, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let op = RandomKey::new(1, 1, 42)?;
/// let rows = cpu.upload(&HostData::U32(vec![3]))?;
/// let idx = cpu.upload(&HostData::U32(vec![17]))?;
/// let mut keys = cpu.alloc(DType::U32, 1)?;
/// cpu.random_key(&op, &rows, &idx, &mut keys)?;
/// assert_eq!(cpu.download(&keys)?, HostData::U32(vec![893604109])); // key(42, 3, 17), SPEC §8.1
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RandomKey {
    /// Rows (`R`); at least 1.
    pub rows: usize,
    /// Candidates per row (`N`); at least 1.
    pub n: usize,
    /// Seed; vary it per layer and decode step.
    pub seed: u32,
}

impl RandomKey {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `rows`, `n` at least 1; `rows * n` within
    /// [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(rows: usize, n: usize, seed: u32) -> Result<Self> {
        let op = RandomKey { rows, n, seed };
        op.validate()?;
        Ok(op)
    }
    /// Fills the kernel parameter block of the `random` family (`k = 0`).
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
///
/// | buffer     | shape    | dtype | role |
/// |------------|----------|-------|------|
/// | `rows`     | `[R]`    | u32   | input: row ids of the key |
/// | `cand`     | `[R, N]` | i32   | input: 1 = eligible, 0 = not |
/// | `keys`     | `[R, N]` | u32   | output: `key(seed, rows[r], n)` for every candidate |
/// | `selected` | `[R, k]` | i32   | output: ascending, `-1` padded |
///
/// Cost: `24·R·N` integer ops, `8·R·N + 4·R·(1 + k)` bytes. Reference:
/// `kvsparse_reference::random_select`.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`RandomSelect::new`]; [`crate::Error::Buffer`] when
/// a buffer's length or dtype does not match the table.
///
/// ```
/// use kvsparse::{ops::RandomSelect, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let op = RandomSelect::new(1, 4, 2, 7)?;
/// let rows = cpu.upload(&HostData::U32(vec![0]))?;
/// let cand = cpu.upload(&HostData::I32(vec![1, 0, 0, 0]))?; // only candidate 0 is eligible
/// let (mut keys, mut sel) = (cpu.alloc(DType::U32, 4)?, cpu.alloc(DType::I32, 2)?);
/// cpu.random_select(&op, &rows, &cand, &mut keys, &mut sel)?;
/// assert_eq!(cpu.download(&sel)?, HostData::I32(vec![0, -1]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RandomSelect {
    /// Rows (`R`); at least 1.
    pub rows: usize,
    /// Candidates per row (`N`); at least 1.
    pub n: usize,
    /// Selected per row: the width of `selected`; at least 1 (may exceed `n`: padded).
    pub k: usize,
    /// Seed; vary it per layer and decode step.
    pub seed: u32,
}

impl RandomSelect {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `rows`, `n`, `k` at least 1; `rows * n` and `rows * k` within
    /// [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(rows: usize, n: usize, k: usize, seed: u32) -> Result<Self> {
        let op = RandomSelect { rows, n, k, seed };
        op.validate()?;
        Ok(op)
    }
    /// Fills the kernel parameter block of the `random` family.
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
