//! The decoder's batched KV cache: filling a sequence after prefill, appending one token per
//! sequence (RAT+ state and block statistics kept up to date), advancing the lengths, and decode
//! attention over the live tokens (dense, or Quest / random forced top-k blocks).
//!
//! Layout, for `B` sequences, `Hc` cache heads, `Tcap` token slots and `NB = ceil(Tcap / bs)`:
//!
//! | buffer  | shape              | dtype   | meaning |
//! |---------|--------------------|---------|---------|
//! | `k`     | `[B, Hc, Tcap, D]` | storage | keys (`RoPE(k~)` on the RAT+ backbone) |
//! | `v`     | `[B, Hc, Tcap, D]` | storage | values (`v~` on the RAT+ backbone) |
//! | `kmin`, `kmax`, `kmean` | `[B, Hc, NB, D]` | storage | per block and channel, over the live tokens of the block |
//! | `lens`  | `[B]`              | i32     | live tokens per sequence (slots `0..lens[b]`) |
//! | `pos`   | `[B]`              | i32     | RoPE position of the next token of each sequence |
//! | `hk`, `hv` | `[B, Hs, D]`    | f32     | RAT+ pre-RoPE states (the RAT+ backbone only) |
//!
//! The lengths and positions live on the device and every kernel reads them there, so no launch
//! shape depends on them: a decode step (append, advance, decode) can be recorded once (a CUDA
//! graph) and replayed while the lengths grow. Slots at or past `lens[b]` are never read.

use super::{fits, float_dtype, gqa, nonzero, scale, BufferSpec, Cost, Op, Selector};
use crate::params::CacheParams;
use crate::{DType, DeviceBuffer, Error, Result};

/// Shape of a batched KV cache: `B` sequences of `Hc` heads, `Tcap` token slots each, blocks of
/// `bs` tokens; the buffers of the cache ops are laid out `[B, Hc, Tcap, D]` (k, v) and
/// `[B, Hc, NB, D]` (block statistics), with `lens`, `pos` `[B]` on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    /// Sequences (`B`); at least 1.
    pub batch: usize,
    /// Cache heads (`Hc`); at least 1.
    pub heads: usize,
    /// Token slots per sequence and head (`Tcap`); at least 1.
    pub capacity: usize,
    /// Head dim (`D`); at least 1 (even on the RAT+ backbone, for RoPE).
    pub dim: usize,
    /// Tokens per statistics block (64 in the paper); at least 1.
    pub block_size: usize,
    /// Storage dtype of `k`, `v` and the statistics: a float type.
    pub dtype: DType,
}

impl CacheShape {
    /// Statistics blocks per sequence and head: `ceil(capacity / block_size)`.
    pub fn nb(&self) -> usize {
        self.capacity.div_ceil(self.block_size.max(1))
    }
    /// Elements of `k` (and of `v`): `B * Hc * Tcap * D`.
    pub fn kv_len(&self) -> usize {
        self.batch * self.heads * self.capacity * self.dim
    }
    /// Elements of each statistics buffer: `B * Hc * NB * D`.
    pub fn stats_len(&self) -> usize {
        self.batch * self.heads * self.nb() * self.dim
    }
    fn validate(&self, op: &'static str) -> Result<()> {
        nonzero(op, "batch", self.batch)?;
        nonzero(op, "heads", self.heads)?;
        nonzero(op, "capacity", self.capacity)?;
        nonzero(op, "dim", self.dim)?;
        nonzero(op, "block_size", self.block_size)?;
        float_dtype(op, self.dtype)?;
        fits(op, "batch * heads * capacity * dim", &[self.batch, self.heads, self.capacity, self.dim]).map(drop)
    }
    /// The cache's own buffers in argument order: `k`, `v`, `kmin`, `kmax`, `kmean` (written).
    fn cache_buffers(&self) -> [BufferSpec; 5] {
        let (kv, st) = (self.kv_len(), self.stats_len());
        [
            BufferSpec::output("k", self.dtype, kv),
            BufferSpec::output("v", self.dtype, kv),
            BufferSpec::output("kmin", self.dtype, st),
            BufferSpec::output("kmax", self.dtype, st),
            BufferSpec::output("kmean", self.dtype, st),
        ]
    }
    /// The fields of the `cache` parameter block that every op of the family shares.
    fn params(&self) -> CacheParams {
        CacheParams {
            batch: self.batch as u32,
            heads: self.heads as u32,
            capacity: self.capacity as u32,
            dim: self.dim as u32,
            block_size: self.block_size as u32,
            nb: self.nb() as u32,
            splits: 1,
            ..Default::default()
        }
    }
    fn label(&self) -> String {
        format!(
            "b{}_h{}_cap{}_d{}_bs{}_{}",
            self.batch, self.heads, self.capacity, self.dim, self.block_size, self.dtype
        )
    }
}

/// A decode budget resolved on the device for each sequence's live block count `nb`.
///
/// `Blocks(n)` is `n` blocks; `Fraction { num, den }` is `max(1, floor(nb * num / den))` blocks,
/// exact integer arithmetic (so every backend agrees), `0 < num <= den <= 65536`.
///
/// ```
/// use kvsparse::ops::CacheBudget;
/// let eighth = CacheBudget::from_fraction(0.125)?;
/// assert_eq!(eighth, CacheBudget::Fraction { num: 1, den: 8 });
/// assert_eq!(eighth.blocks(64), 8);
/// assert_eq!(eighth.blocks(3), 1);
/// assert_eq!(CacheBudget::Blocks(4).blocks(64), 4);
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheBudget {
    /// A fixed number of blocks; at least 1.
    Blocks(usize),
    /// `max(1, floor(nb * num / den))` blocks.
    Fraction {
        /// Numerator; `1..=den`.
        num: u32,
        /// Denominator; `1..=65536`.
        den: u32,
    },
}

impl CacheBudget {
    /// The fraction `f` in `(0, 1]` as `num / den` with the smallest `den <= 65536` that
    /// represents it to within 1e-9 (so 1/4, 1/8, 1/16, 1/3 are exact), else `den = 65536`.
    pub fn from_fraction(f: f64) -> Result<Self> {
        if !(f > 0.0 && f <= 1.0) {
            return Err(Error::invalid("cache_budget", "fraction", format!("a fraction in (0, 1], got {f}")));
        }
        let den = (1..=65536u32).find(|&d| ((f * d as f64).round() - f * d as f64).abs() < 1e-9).unwrap_or(65536);
        let num = ((f * den as f64).round() as u32).clamp(1, den);
        let g = gcd(num, den);
        Ok(CacheBudget::Fraction { num: num / g, den: den / g })
    }
    /// Blocks granted to a sequence with `nb` live blocks (before the forced blocks are added).
    pub fn blocks(&self, nb: usize) -> usize {
        match *self {
            CacheBudget::Blocks(n) => n,
            CacheBudget::Fraction { num, den } => {
                let (num, den) = (num as usize, den.max(1) as usize);
                // The split form the 32-bit kernels use: no product exceeds den * num.
                ((nb / den) * num + (nb % den) * num / den).max(1)
            }
        }
    }
    fn validate(&self, op: &'static str) -> Result<()> {
        match *self {
            CacheBudget::Blocks(0) => Err(Error::invalid(op, "budget", "at least 1 block")),
            CacheBudget::Blocks(n) if n > u32::MAX as usize / 2 => {
                Err(Error::invalid(op, "budget", format!("at most {} blocks, got {n}", u32::MAX / 2)))
            }
            CacheBudget::Fraction { num, den } if num == 0 || num > den || den > 65536 => Err(Error::invalid(
                op,
                "budget",
                format!("a fraction num / den with 0 < num <= den <= 65536, got {num} / {den}"),
            )),
            _ => Ok(()),
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

/// Writes one sequence of the cache from a prefill: `n` tokens per cache head, taken in order
/// (`idx` absent: token `e` is source token `e`) or from a list (`idx[Hc, n]` i32, e.g. SnapKV's
/// kept set), recomputes the block statistics of blocks `0..ceil(n / bs)` of that sequence, and
/// sets `lens[b] = n`, `pos[b] = pos`. Cache head `c` copies source head `c / (Hc / Hs)`.
/// Slots `n..Tcap` and the other sequences are left as they were.
///
/// | buffer | shape | dtype | role |
/// |---|---|---|---|
/// | `k_src`, `v_src` | `[Hs, Tsrc, D]` | storage | input |
/// | `idx` | `[Hc, n]` | i32 | input when `indexed`: source tokens in `0..Tsrc` |
/// | `k`, `v`, `kmin`, `kmax`, `kmean` | cache | storage | read and written |
/// | `lens`, `pos` | `[B]` | i32 | read and written |
///
/// GPU kernels write zeros for an `idx` entry outside `0..Tsrc` (never reading out of bounds);
/// the CPU backend rejects it.
///
/// ```
/// use kvsparse::ops::{CacheFill, CacheShape};
/// use kvsparse::{Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let shape = CacheShape { batch: 2, heads: 1, capacity: 4, dim: 1, block_size: 2, dtype: DType::F32 };
/// let op = CacheFill::new(shape, 1, 1, 3, 3, false, 3)?;
/// let src = cpu.upload(&HostData::F32(vec![1.0, 5.0, 2.0]))?;
/// let [mut k, mut v, mut lo, mut hi, mut mean] =
///     [shape.kv_len(), shape.kv_len(), shape.stats_len(), shape.stats_len(), shape.stats_len()]
///         .map(|n| cpu.alloc(DType::F32, n).unwrap());
/// let (mut lens, mut pos) = (cpu.upload(&HostData::I32(vec![0, 0]))?, cpu.upload(&HostData::I32(vec![0, 0]))?);
/// cpu.cache_fill(&op, &src, &src, None, &mut k, &mut v, &mut lo, &mut hi, &mut mean, &mut lens, &mut pos)?;
/// assert_eq!(cpu.download(&lens)?, HostData::I32(vec![0, 3]));
/// let HostData::F32(hi) = cpu.download(&hi)? else { unreachable!() };
/// assert_eq!(&hi[2..], &[5.0, 2.0]); // sequence 1, blocks {1, 5} and {2}
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CacheFill {
    /// The cache written.
    pub shape: CacheShape,
    /// The sequence written (`b`); below `batch`.
    pub seq: usize,
    /// Source heads (`Hs`); divides `shape.heads`.
    pub src_heads: usize,
    /// Source tokens per head (`Tsrc`); at least 1.
    pub src_len: usize,
    /// Tokens written per cache head (`n`); `1..=capacity`, and at most `src_len` without `idx`.
    pub n_tokens: usize,
    /// Whether the tokens come from `idx` (else token `e` is source token `e`).
    pub indexed: bool,
    /// The RoPE position of the sequence's next token, stored in `pos[b]`; at most `i32::MAX`.
    pub pos: usize,
}

impl CacheFill {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: the shape (every extent at least 1, a float dtype, within
    /// [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS)); `seq < batch`; `src_heads` divides `heads`;
    /// `src_len` at least 1; `n_tokens` in `1..=capacity` and, without `indexed`, at most
    /// `src_len`; `pos` at most `i32::MAX`.
    pub fn new(
        shape: CacheShape,
        seq: usize,
        src_heads: usize,
        src_len: usize,
        n_tokens: usize,
        indexed: bool,
        pos: usize,
    ) -> Result<Self> {
        let op = CacheFill { shape, seq, src_heads, src_len, n_tokens, indexed, pos };
        op.validate()?;
        Ok(op)
    }
    /// Fills the `cache` parameter block.
    pub fn params(&self) -> CacheParams {
        CacheParams {
            src_heads: self.src_heads as u32,
            seq_index: self.seq as u32,
            src_len: self.src_len as u32,
            n_tokens: self.n_tokens as u32,
            indexed: self.indexed as u32,
            pos: self.pos as u32,
            ..self.shape.params()
        }
    }
}

impl Op for CacheFill {
    const NAME: &'static str = "cache_fill";
    fn validate(&self) -> Result<()> {
        self.shape.validate(Self::NAME)?;
        if self.seq >= self.shape.batch {
            return Err(Error::invalid(
                Self::NAME,
                "seq",
                format!("below batch = {}, got {}", self.shape.batch, self.seq),
            ));
        }
        gqa(Self::NAME, self.shape.heads, self.src_heads).map_err(|_| {
            Error::invalid(
                Self::NAME,
                "src_heads",
                format!("at least 1 and dividing heads = {}, got {}", self.shape.heads, self.src_heads),
            )
        })?;
        nonzero(Self::NAME, "src_len", self.src_len)?;
        fits(Self::NAME, "src_heads * src_len * dim", &[self.src_heads, self.src_len, self.shape.dim])?;
        let max_n = if self.indexed { self.shape.capacity } else { self.shape.capacity.min(self.src_len) };
        if self.n_tokens == 0 || self.n_tokens > max_n {
            return Err(Error::invalid(
                Self::NAME,
                "n_tokens",
                format!(
                    "in 1..={max_n} (capacity {}, src_len {}), got {}",
                    self.shape.capacity, self.src_len, self.n_tokens
                ),
            ));
        }
        if self.pos > i32::MAX as usize {
            return Err(Error::invalid(Self::NAME, "pos", format!("at most {}, got {}", i32::MAX, self.pos)));
        }
        Ok(())
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let s = &self.shape;
        let src = self.src_heads * self.src_len * s.dim;
        let mut v = vec![BufferSpec::input("k_src", s.dtype, src), BufferSpec::input("v_src", s.dtype, src)];
        if self.indexed {
            v.push(BufferSpec::input("idx", DType::I32, s.heads * self.n_tokens));
        }
        v.extend(s.cache_buffers());
        v.push(BufferSpec::output("lens", DType::I32, s.batch));
        v.push(BufferSpec::output("pos", DType::I32, s.batch));
        v
    }
    /// Reads the `n` tokens of every cache head once, writes them and their statistics.
    fn cost(&self) -> Cost {
        let s = &self.shape;
        let tok = (s.heads * self.n_tokens * s.dim) as u64;
        let stats = (s.heads * self.n_tokens.div_ceil(s.block_size) * s.dim) as u64;
        Cost { flops: 3 * tok, bytes: (4 * tok + 3 * stats) * s.dtype.size() as u64 }
    }
    fn label(&self) -> String {
        format!(
            "{}_seq{}_hs{}_n{}{}",
            self.shape.label(),
            self.seq,
            self.src_heads,
            self.n_tokens,
            if self.indexed { "_idx" } else { "" }
        )
    }
}

/// Appends one token to every sequence: at slot `t = lens[b]` of each cache head, with RoPE
/// position `p = pos[b]`.
///
/// On the RAT+ backbone (`ratplus`) the states advance first, `hk' = g*hk + (1-g)*k_new`,
/// `hv' = g*hv + (1-g)*v_new` (f32, written back), and the slot gets `RoPE(hk', p)` and `hv'`;
/// otherwise it gets `k_new`, `v_new` as given (already position-encoded by the caller). Kv head
/// `s`'s token goes to cache heads `s*R .. (s+1)*R`, `R = Hc / Hs`. The statistics of block
/// `t / bs` are recomputed over its tokens `bs*(t/bs) ..= t`. `lens` and `pos` are read, not
/// advanced (see [`CacheAdvance`]); a sequence with `t >= Tcap` is left untouched on the GPU (the
/// decoder refuses such a step before launching it; the CPU backend returns an error).
///
/// | buffer | shape | dtype | role |
/// |---|---|---|---|
/// | `k_new`, `v_new` | `[B, Hs, D]` | storage | input |
/// | `g` | `[B, Hs, D]` | f32 | input when `ratplus` |
/// | `lens`, `pos` | `[B]` | i32 | input |
/// | `hk`, `hv` | `[B, Hs, D]` | f32 | read and written when `ratplus` |
/// | `k`, `v`, `kmin`, `kmax`, `kmean` | cache | storage | read and written |
///
/// ```
/// use kvsparse::ops::{CacheAppend, CacheShape};
/// use kvsparse::{Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let shape = CacheShape { batch: 1, heads: 1, capacity: 4, dim: 2, block_size: 4, dtype: DType::F32 };
/// let op = CacheAppend::new(shape, 1, false, 10000.0)?;
/// let kn = cpu.upload(&HostData::F32(vec![3.0, -1.0]))?;
/// let (lens, pos) = (cpu.upload(&HostData::I32(vec![0]))?, cpu.upload(&HostData::I32(vec![0]))?);
/// let [mut k, mut v, mut lo, mut hi, mut mean] = [8, 8, 2, 2, 2].map(|n| cpu.alloc(DType::F32, n).unwrap());
/// cpu.cache_append(&op, &kn, &kn, None, &lens, &pos, None, &mut k, &mut v, &mut lo, &mut hi, &mut mean)?;
/// assert_eq!(cpu.download(&mean)?, HostData::F32(vec![3.0, -1.0]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CacheAppend {
    /// The cache appended to.
    pub shape: CacheShape,
    /// Kv heads of the new token (`Hs`); divides `shape.heads`.
    pub kv_heads: usize,
    /// RAT+ backbone: advance the decaying memory and store `RoPE(k~)`, `v~`.
    pub ratplus: bool,
    /// RoPE base (RAT+ only); finite and above 1.
    pub base: f32,
}

impl CacheAppend {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: the shape; `kv_heads` divides `heads`; with `ratplus`, `dim` even and
    /// `base` finite and above 1.
    pub fn new(shape: CacheShape, kv_heads: usize, ratplus: bool, base: f32) -> Result<Self> {
        let op = CacheAppend { shape, kv_heads, ratplus, base };
        op.validate()?;
        Ok(op)
    }
    /// Fills the `cache` parameter block.
    pub fn params(&self) -> CacheParams {
        let [rope_step_hi, rope_step_lo] = crate::params::rope_step(self.base, self.shape.dim);
        CacheParams {
            src_heads: self.kv_heads as u32,
            ratplus: self.ratplus as u32,
            base: self.base,
            rope_step_hi,
            rope_step_lo,
            ..self.shape.params()
        }
    }
}

impl Op for CacheAppend {
    const NAME: &'static str = "cache_append";
    fn validate(&self) -> Result<()> {
        self.shape.validate(Self::NAME)?;
        gqa(Self::NAME, self.shape.heads, self.kv_heads).map_err(|_| {
            Error::invalid(
                Self::NAME,
                "kv_heads",
                format!("at least 1 and dividing heads = {}, got {}", self.shape.heads, self.kv_heads),
            )
        })?;
        if self.ratplus {
            if !self.shape.dim.is_multiple_of(2) {
                return Err(Error::invalid(Self::NAME, "dim", format!("even for RoPE, got {}", self.shape.dim)));
            }
            if !(self.base.is_finite() && self.base > 1.0) {
                return Err(Error::invalid(Self::NAME, "base", format!("finite and above 1, got {}", self.base)));
            }
        }
        Ok(())
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let s = &self.shape;
        let n = s.batch * self.kv_heads * s.dim;
        let mut v = vec![BufferSpec::input("k_new", s.dtype, n), BufferSpec::input("v_new", s.dtype, n)];
        if self.ratplus {
            v.push(BufferSpec::input("g", DType::F32, n));
        }
        v.push(BufferSpec::input("lens", DType::I32, s.batch));
        v.push(BufferSpec::input("pos", DType::I32, s.batch));
        if self.ratplus {
            v.push(BufferSpec::output("hk", DType::F32, n));
            v.push(BufferSpec::output("hv", DType::F32, n));
        }
        v.extend(s.cache_buffers());
        v
    }
    /// The new token in, its cache rows out, the statistics block re-read (at most `bs` rows per
    /// head) and rewritten.
    fn cost(&self) -> Cost {
        let s = &self.shape;
        let es = s.dtype.size() as u64;
        let n = (s.batch * self.kv_heads * s.dim) as u64;
        let rows = (s.batch * s.heads * s.dim) as u64;
        let state = if self.ratplus { n * (4 + 16) } else { 0 };
        Cost {
            flops: rows * (3 * s.block_size as u64) + if self.ratplus { 9 * n } else { 0 },
            bytes: 2 * n * es + state + (2 * rows + rows * s.block_size as u64 + 3 * rows) * es,
        }
    }
    fn label(&self) -> String {
        format!("{}_hs{}{}", self.shape.label(), self.kv_heads, if self.ratplus { "_ratplus" } else { "" })
    }
}

/// Advances every sequence by one token: `lens[b] += 1`, `pos[b] += 1`. The last launch of a
/// decoder step, kept apart from [`CacheAppend`] so that no kernel reads a length another
/// kernel of the same launch writes.
///
/// ```
/// use kvsparse::ops::CacheAdvance;
/// use kvsparse::{Backend, Cpu, HostData};
/// let cpu = Cpu::new();
/// let (mut lens, mut pos) = (cpu.upload(&HostData::I32(vec![3, 7]))?, cpu.upload(&HostData::I32(vec![3, 9]))?);
/// cpu.cache_advance(&CacheAdvance::new(2)?, &mut lens, &mut pos)?;
/// assert_eq!(cpu.download(&pos)?, HostData::I32(vec![4, 10]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheAdvance {
    /// Sequences (`B`); at least 1.
    pub batch: usize,
}

impl CacheAdvance {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] when `batch`
    /// is 0.
    pub fn new(batch: usize) -> Result<Self> {
        let op = CacheAdvance { batch };
        op.validate()?;
        Ok(op)
    }
    /// Fills the `cache` parameter block (only `batch` is used).
    pub fn params(&self) -> CacheParams {
        CacheParams { batch: self.batch as u32, splits: 1, ..Default::default() }
    }
}

impl Op for CacheAdvance {
    const NAME: &'static str = "cache_advance";
    fn validate(&self) -> Result<()> {
        nonzero(Self::NAME, "batch", self.batch)?;
        fits(Self::NAME, "batch", &[self.batch]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        vec![BufferSpec::output("lens", DType::I32, self.batch), BufferSpec::output("pos", DType::I32, self.batch)]
    }
    fn cost(&self) -> Cost {
        Cost { flops: 2 * self.batch as u64, bytes: 16 * self.batch as u64 }
    }
    fn label(&self) -> String {
        format!("b{}", self.batch)
    }
}

/// Which keys [`CacheDecode`] attends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheSelect {
    /// Every live token `0..lens[b]`.
    Dense,
    /// Quest's forced top-k blocks over the live blocks `NB_b = ceil(lens[b] / bs)` (SPEC §2.3
    /// with `NB = NB_b`): block 0 if `force_first`, the `n_local` last live blocks, and the best
    /// others up to `budget.blocks(NB_b)` in all, by Quest score from `kmin`/`kmax` or by
    /// `random_key(seed, h, block)` (`Selector::Random`, `h` the query head, as
    /// [`QuestDecode`](crate::ops::QuestDecode)).
    Blocks {
        /// Blocks attended per query head, forced ones included.
        budget: CacheBudget,
        /// Whether block 0 is always kept.
        force_first: bool,
        /// The last live block and the `n_local - 1` before it are always kept.
        n_local: usize,
        /// Score or random key.
        selector: Selector,
    },
}

/// Decode attention of one query per head and sequence, `q[B, Hq, D]`, over the cache's live
/// tokens (the step's own token already appended): dense, or Quest / random forced top-k blocks
/// chosen per query head (see [`CacheSelect`]). A sequence with `lens[b] = 0` gets `out = 0`,
/// `lse = -inf`. Query head `h` reads cache head `h / (Hq / Hc)`.
///
/// | buffer | shape | dtype | role |
/// |---|---|---|---|
/// | `q` | `[B, Hq, D]` | storage | input |
/// | `k`, `v` | cache | storage | input |
/// | `lens` | `[B]` | i32 | input |
/// | `kmin`, `kmax` | cache stats | storage | input for `Blocks` by score |
/// | `out` | `[B, Hq, D]` | storage | output |
/// | `lse` | `[B, Hq]` | f32 | output |
/// | `selected` | `[B, Hq, W]` | i32 | output for `Blocks`: ascending, `-1` after `n_sel_b` |
/// | `scores` / `keys` | `[B, Hq, NB]` | f32 / u32 | output for `Blocks`: blocks `>= NB_b` hold `-inf` / 0 |
///
/// `W` = [`CacheDecode::width`], `n_sel_b = min(NB_b, max(budget.blocks(NB_b), |forced|))`.
///
/// ```
/// use kvsparse::ops::{CacheDecode, CacheSelect, CacheShape};
/// use kvsparse::{Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let shape = CacheShape { batch: 1, heads: 1, capacity: 4, dim: 1, block_size: 2, dtype: DType::F32 };
/// let op = CacheDecode::new(shape, 1, CacheSelect::Dense, 1.0)?;
/// let q = cpu.upload(&HostData::F32(vec![0.0]))?;
/// let k = cpu.upload(&HostData::F32(vec![0.0; 4]))?;
/// let v = cpu.upload(&HostData::F32(vec![1.0, 3.0, f32::NAN, f32::NAN]))?; // slots 2, 3 not live
/// let lens = cpu.upload(&HostData::I32(vec![2]))?;
/// let (mut out, mut lse) = (cpu.alloc(DType::F32, 1)?, cpu.alloc(DType::F32, 1)?);
/// cpu.cache_decode(&op, &q, &k, &v, &lens, None, &mut out, &mut lse, None, None)?;
/// assert_eq!(cpu.download(&out)?, HostData::F32(vec![2.0]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CacheDecode {
    /// The cache read.
    pub shape: CacheShape,
    /// Query heads (`Hq`); a multiple of `shape.heads`.
    pub q_heads: usize,
    /// Dense or forced top-k blocks.
    pub select: CacheSelect,
    /// Softmax scale; finite and positive.
    pub scale: f32,
}

impl CacheDecode {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: the shape; `q_heads` a multiple of `heads`; `scale` finite and
    /// positive; for `Blocks`, the budget (see [`CacheBudget`]) and `n_local` at most
    /// `u32::MAX / 2`.
    pub fn new(shape: CacheShape, q_heads: usize, select: CacheSelect, scale: f32) -> Result<Self> {
        let op = CacheDecode { shape, q_heads, select, scale };
        op.validate()?;
        Ok(op)
    }
    /// Forced blocks when `nb` blocks are live.
    fn forced(&self, nb: usize) -> usize {
        match self.select {
            CacheSelect::Dense => 0,
            CacheSelect::Blocks { force_first, n_local, .. } => {
                let local = n_local.min(nb);
                local + (force_first && nb > local) as usize
            }
        }
    }
    /// Blocks selected per query head when `nb >= 1` blocks are live (0 for `Dense`).
    pub fn n_sel(&self, nb: usize) -> usize {
        match self.select {
            CacheSelect::Dense => 0,
            CacheSelect::Blocks { budget, .. } => nb.min(budget.blocks(nb).max(self.forced(nb))),
        }
    }
    /// Row width of `selected`: `n_sel` at full capacity (the widest any sequence can need).
    pub fn width(&self) -> usize {
        (1..=self.shape.nb()).map(|nb| self.n_sel(nb)).max().unwrap_or(0)
    }
    /// Fills the `cache` parameter block (`splits = 1`; backends choose their own).
    pub fn params(&self) -> CacheParams {
        let mut p = CacheParams { q_heads: self.q_heads as u32, scale: self.scale, ..self.shape.params() };
        if let CacheSelect::Blocks { budget, force_first, n_local, selector } = self.select {
            p.mode = 1;
            p.force_first = force_first as u32;
            p.n_local = n_local as u32;
            match budget {
                CacheBudget::Blocks(n) => p.budget_count = n as u32,
                CacheBudget::Fraction { num, den } => (p.budget_num, p.budget_den) = (num, den),
            }
            if let Selector::Random { seed } = selector {
                (p.selector, p.seed) = (1, seed);
            }
            p.width = self.width() as u32;
        }
        p
    }
    /// Compulsory work for sequences of the given live lengths: the query, the live keys and
    /// values read (dense) or the statistics of the live blocks plus the selected blocks'
    /// tokens (each query head choosing its own blocks: a cache head reads the union, counted
    /// as `min(NB_b, G * n_sel_b)` blocks), and the outputs.
    pub fn cost_at(&self, lens: &[usize]) -> Cost {
        let s = &self.shape;
        let (es, d) = (s.dtype.size() as u64, s.dim as u64);
        let group = self.q_heads / s.heads.max(1);
        let mut c = Cost::default();
        for &t in lens {
            let t = t.min(s.capacity);
            let nb = t.div_ceil(s.block_size);
            let q_io = 2 * (self.q_heads as u64) * d * es + 4 * self.q_heads as u64;
            let (tokens_read, tokens_attended, stats) = match self.select {
                CacheSelect::Dense => (t as u64, t as u64, 0),
                CacheSelect::Blocks { selector, .. } => {
                    let n_sel = self.n_sel(nb.max(1)) as u64;
                    let bs = s.block_size as u64;
                    let union = (nb as u64).min(group as u64 * n_sel);
                    let stats = if selector == Selector::Score { 2 * nb as u64 * d } else { 0 };
                    ((union * bs).min(t as u64), (n_sel * bs).min(t as u64), stats)
                }
            };
            c.bytes += q_io + (s.heads as u64) * (2 * tokens_read * d + stats) * es;
            c.flops += 4 * self.q_heads as u64 * tokens_attended * d;
            if stats > 0 {
                c.flops += 4 * (self.q_heads * nb) as u64 * d;
            }
        }
        c
    }
}

impl Op for CacheDecode {
    const NAME: &'static str = "cache_decode";
    fn validate(&self) -> Result<()> {
        self.shape.validate(Self::NAME)?;
        gqa(Self::NAME, self.q_heads, self.shape.heads).map_err(|e| match e {
            Error::InvalidArgument { arg: "kv_heads", .. } => Error::invalid(Self::NAME, "heads", "at least 1"),
            other => other,
        })?;
        scale(Self::NAME, self.scale)?;
        fits(
            Self::NAME,
            "batch * q_heads * nb",
            &[self.shape.batch, self.q_heads, self.shape.nb().max(self.shape.dim)],
        )?;
        if let CacheSelect::Blocks { budget, n_local, .. } = self.select {
            budget.validate(Self::NAME)?;
            if n_local > u32::MAX as usize / 2 {
                return Err(Error::invalid(Self::NAME, "n_local", format!("at most {}, got {n_local}", u32::MAX / 2)));
            }
        }
        Ok(())
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let s = &self.shape;
        let rows = s.batch * self.q_heads;
        let mut v = vec![
            BufferSpec::input("q", s.dtype, rows * s.dim),
            BufferSpec::input("k", s.dtype, s.kv_len()),
            BufferSpec::input("v", s.dtype, s.kv_len()),
            BufferSpec::input("lens", DType::I32, s.batch),
        ];
        let blocks = match self.select {
            CacheSelect::Dense => None,
            CacheSelect::Blocks { selector, .. } => Some(selector),
        };
        if blocks == Some(Selector::Score) {
            v.push(BufferSpec::input("kmin", s.dtype, s.stats_len()));
            v.push(BufferSpec::input("kmax", s.dtype, s.stats_len()));
        }
        v.push(BufferSpec::output("out", s.dtype, rows * s.dim));
        v.push(BufferSpec::output("lse", DType::F32, rows));
        if let Some(selector) = blocks {
            v.push(BufferSpec::output("selected", DType::I32, rows * self.width()));
            let (name, dtype) = super::quest::ranking(selector, "scores");
            v.push(BufferSpec::output(name, dtype, rows * s.nb()));
        }
        v
    }
    /// [`CacheDecode::cost_at`] with every sequence full.
    fn cost(&self) -> Cost {
        self.cost_at(&vec![self.shape.capacity; self.shape.batch])
    }
    fn label(&self) -> String {
        let sel = match self.select {
            CacheSelect::Dense => "dense".to_string(),
            CacheSelect::Blocks { budget, selector, .. } => {
                let b = match budget {
                    CacheBudget::Blocks(n) => format!("{n}"),
                    CacheBudget::Fraction { num, den } => format!("{num}of{den}"),
                };
                let s = if matches!(selector, Selector::Random { .. }) { "random" } else { "quest" };
                format!("{s}{b}")
            }
        };
        format!("{}_hq{}_{sel}", self.shape.label(), self.q_heads)
    }
}

// Buffer checks shared by every backend: the same argument lists as the `Backend` methods.
#[allow(clippy::too_many_arguments)]
impl CacheFill {
    /// Validates the problem and every buffer of [`crate::Backend::cache_fill`] (lengths,
    /// dtypes, `idx` present exactly when `indexed`).
    pub fn check<B: DeviceBuffer>(
        &self,
        k_src: &B,
        v_src: &B,
        idx: Option<&B>,
        cache: [&B; 5],
        lens: &B,
        pos: &B,
    ) -> Result<()> {
        let [k, v, lo, hi, mean] = cache.map(|b| Some(b as &dyn DeviceBuffer));
        super::check_some(
            self,
            &[
                ("k_src", Some(k_src as &dyn DeviceBuffer)),
                ("v_src", Some(v_src as &dyn DeviceBuffer)),
                ("idx", idx.map(|b| b as &dyn DeviceBuffer)),
                ("k", k),
                ("v", v),
                ("kmin", lo),
                ("kmax", hi),
                ("kmean", mean),
                ("lens", Some(lens as &dyn DeviceBuffer)),
                ("pos", Some(pos as &dyn DeviceBuffer)),
            ],
        )
    }
}

#[allow(clippy::too_many_arguments)]
impl CacheAppend {
    /// Validates the problem and every buffer of [`crate::Backend::cache_append`] (`g`, `hk`,
    /// `hv` present exactly when `ratplus`).
    pub fn check<B: DeviceBuffer>(
        &self,
        k_new: &B,
        v_new: &B,
        g: Option<&B>,
        lens: &B,
        pos: &B,
        state: Option<(&B, &B)>,
        cache: [&B; 5],
    ) -> Result<()> {
        let [k, v, lo, hi, mean] = cache.map(|b| Some(b as &dyn DeviceBuffer));
        super::check_some(
            self,
            &[
                ("k_new", Some(k_new as &dyn DeviceBuffer)),
                ("v_new", Some(v_new as &dyn DeviceBuffer)),
                ("g", g.map(|b| b as &dyn DeviceBuffer)),
                ("lens", Some(lens as &dyn DeviceBuffer)),
                ("pos", Some(pos as &dyn DeviceBuffer)),
                ("hk", state.map(|s| s.0 as &dyn DeviceBuffer)),
                ("hv", state.map(|s| s.1 as &dyn DeviceBuffer)),
                ("k", k),
                ("v", v),
                ("kmin", lo),
                ("kmax", hi),
                ("kmean", mean),
            ],
        )
    }
}

#[allow(clippy::too_many_arguments)]
impl CacheDecode {
    /// Validates the problem and every buffer of [`crate::Backend::cache_decode`] (`stats`
    /// exactly for blocks by score, `selected` and `ranking` exactly for blocks).
    pub fn check<B: DeviceBuffer>(
        &self,
        q: &B,
        k: &B,
        v: &B,
        lens: &B,
        stats: Option<(&B, &B)>,
        out: &B,
        lse: &B,
        selected: Option<&B>,
        ranking: Option<&B>,
    ) -> Result<()> {
        super::check_some(
            self,
            &[
                ("q", Some(q as &dyn DeviceBuffer)),
                ("k", Some(k as &dyn DeviceBuffer)),
                ("v", Some(v as &dyn DeviceBuffer)),
                ("lens", Some(lens as &dyn DeviceBuffer)),
                ("kmin", stats.map(|s| s.0 as &dyn DeviceBuffer)),
                ("kmax", stats.map(|s| s.1 as &dyn DeviceBuffer)),
                ("out", Some(out as &dyn DeviceBuffer)),
                ("lse", Some(lse as &dyn DeviceBuffer)),
                ("selected", selected.map(|b| b as &dyn DeviceBuffer)),
                ("ranking", ranking.map(|b| b as &dyn DeviceBuffer)),
            ],
        )
    }
}
