//! MoBA block-sparse causal prefill (SPEC §3).

use super::quest::{ranking, select_params, validate_selection};
use super::{fits, float_dtype, gqa, nonzero, scale, BufferSpec, Cost, Op, SelectConfig};
use crate::params::SelectParams;
use crate::{DType, Error, Result};

/// MoBA prefill of `q[Hq, T, D]` over `k`, `v` `[Hkv, T, D]`.
///
/// Query token `t` in block `c = t / block_size` keeps the forced blocks
/// `{0 if force_first} ∪ {c - n_local + 1 ..= c}` plus the best `n_blocks - |forced|` past blocks
/// by the unscaled gate `q_t . mean(k of block)` (or by `random_key(seed, h*T + t, block)`), and
/// attends causally (`j <= t`) to the tokens of those blocks. `n_local >= 1` (a token always sees
/// its own block).
///
/// Outputs, in order: `out[Hq, T, D]` (storage dtype), `lse[Hq, T]` (f32),
/// `selected[Hq, T, W]` (i32, ascending block ids, `-1` padded,
/// `W = min(NB, max(n_blocks, n_local + force_first))`), and, unless the op was built
/// [`MobaPrefill::without_ranking`], the ranking `[Hq, T, NB]`: `gate` (f32, every block
/// including future ones) or `keys` (u32). The ranking grows as `T^2 / block_size` (2 GiB of
/// f32 at 32K tokens, 32 heads, block 64): an engine leaves it out. On CUDA, sparse budgets at
/// f16/bf16 take a key-block-major path whose scratch is bounded by `Cuda::with_moba_workspace`
/// (2 GiB by default).
///
/// | buffer     | shape          | dtype   | role |
/// |------------|----------------|---------|------|
/// | `q`        | `[Hq, T, D]`   | storage | input |
/// | `k`        | `[Hkv, T, D]`  | storage | input |
/// | `v`        | `[Hkv, T, D]`  | storage | input |
/// | `out`      | `[Hq, T, D]`   | storage | output |
/// | `lse`      | `[Hq, T]`      | f32     | output |
/// | `selected` | `[Hq, T, W]`   | i32     | output: ascending block ids, `-1` padded |
/// | `gate` / `keys` | `[Hq, T, NB]` | f32 / u32 | output, only with [`MobaPrefill::ranking`] |
///
/// Cost: `4·D` FLOPs per attended key-query pair ([`MobaPrefill::pairs_bound`]) plus
/// `2·Hq·T·NB·D` for the gate; bytes of `q`, `k`, `v`, `out` and `lse`. Reference:
/// `kvsparse_reference::moba_prefill` (SPEC §3.3, §3.4).
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`MobaPrefill::new`], or naming `buffers` when
/// `ranking` is passed to [`crate::Backend::moba_prefill`] for an op built
/// [`MobaPrefill::without_ranking`] (or left out for one with the ranking);
/// [`crate::Error::Buffer`] when a buffer's length or dtype does not match the table.
///
/// ```
/// use kvsparse::{ops::{MobaPrefill, SelectConfig, Selector}, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// // Budget 1 block: each token attends causally within its own block (official MoBA routing).
/// let cfg = SelectConfig { block_size: 2, n_blocks: 1, force_first: false, n_local: 1, selector: Selector::Score };
/// let op = MobaPrefill::new(1, 1, 4, 1, cfg, 1.0, DType::F32)?.without_ranking();
/// let q = cpu.upload(&HostData::F32(vec![0.0; 4]))?;
/// let k = cpu.upload(&HostData::F32(vec![0.0; 4]))?;
/// let v = cpu.upload(&HostData::F32(vec![1.0, 3.0, 5.0, 7.0]))?;
/// let (mut out, mut lse) = (cpu.alloc(DType::F32, 4)?, cpu.alloc(DType::F32, 4)?);
/// let mut sel = cpu.alloc(DType::I32, 4 * op.width())?;
/// cpu.moba_prefill(&op, &q, &k, &v, &mut out, &mut lse, &mut sel, None)?;
/// assert_eq!(cpu.download(&sel)?, HostData::I32(vec![0, 0, 1, 1]));
/// assert_eq!(cpu.download(&out)?, HostData::F32(vec![1.0, 2.0, 5.0, 6.0]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct MobaPrefill {
    /// Query heads (`Hq`); a multiple of `kv_heads`.
    pub q_heads: usize,
    /// Key/value heads (`Hkv`); at least 1.
    pub kv_heads: usize,
    /// Prompt tokens (`T`), queries and keys alike; at least 1.
    pub seq: usize,
    /// Head dim (`D`); at least 1.
    pub dim: usize,
    /// Block size, budget in blocks (forced ones included), forced blocks and selector;
    /// `n_local >= 1`.
    pub select: SelectConfig,
    /// Softmax scale of the attention (not of the gate); finite and positive.
    pub scale: f32,
    /// Storage dtype of `q`, `k`, `v`, `out`: a float type.
    pub dtype: DType,
    /// Whether the ranking (gate or keys) is an output.
    pub ranking: bool,
}

impl MobaPrefill {
    /// Validates and builds the problem, with the ranking output; errors:
    /// [`crate::Error::InvalidArgument`] naming the argument. Checks: `q_heads`, `kv_heads` at
    /// least 1 and `q_heads` a multiple of `kv_heads`; `seq`, `dim`, `block_size`, `n_blocks`,
    /// `n_local` at least 1; `n_local` at most `u32::MAX / 2`; `scale` finite and positive;
    /// `dtype` a float type; `q_heads * seq * dim` and `q_heads * seq * NB` within
    /// [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        q_heads: usize,
        kv_heads: usize,
        seq: usize,
        dim: usize,
        select: SelectConfig,
        scale: f32,
        dtype: DType,
    ) -> Result<Self> {
        let op = MobaPrefill { q_heads, kv_heads, seq, dim, select, scale, dtype, ranking: true };
        op.validate()?;
        Ok(op)
    }
    /// The same problem without the `[Hq, T, NB]` ranking output.
    pub fn without_ranking(mut self) -> Self {
        self.ranking = false;
        self
    }
    /// Number of blocks `ceil(T / block_size)`.
    pub fn nb(&self) -> usize {
        self.seq.div_ceil(self.select.block_size)
    }
    /// Selected-block row width `W = min(NB, max(n_blocks, n_local + force_first))`.
    pub fn width(&self) -> usize {
        let s = &self.select;
        self.nb().min(s.n_blocks.max(s.n_local + s.force_first as usize))
    }
    /// Parameters of the selection kernel (one row per query head and token).
    pub fn select_params(&self) -> SelectParams {
        select_params(&self.select, self.q_heads * self.seq, self.nb(), self.seq, self.width(), 1)
    }
    /// Key-query pairs attended at most (every token sees `W` full blocks, clipped causally).
    pub fn pairs_bound(&self) -> u64 {
        let bs = self.select.block_size as u64;
        let w = self.width() as u64;
        (0..self.seq as u64).map(|t| (w * bs).min(t + 1)).sum::<u64>() * self.q_heads as u64
    }
}

impl Op for MobaPrefill {
    const NAME: &'static str = "moba_prefill";
    fn validate(&self) -> Result<()> {
        gqa(Self::NAME, self.q_heads, self.kv_heads)?;
        nonzero(Self::NAME, "seq", self.seq)?;
        nonzero(Self::NAME, "dim", self.dim)?;
        validate_selection(Self::NAME, &self.select)?;
        if self.select.n_local == 0 {
            return Err(Error::invalid(Self::NAME, "n_local", "at least 1: a token always attends to its own block"));
        }
        scale(Self::NAME, self.scale)?;
        float_dtype(Self::NAME, self.dtype)?;
        fits(Self::NAME, "q_heads * seq * dim", &[self.q_heads, self.seq, self.dim])?;
        fits(Self::NAME, "q_heads * seq * nb", &[self.q_heads, self.seq, self.nb()]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let q = self.q_heads * self.seq * self.dim;
        let kv = self.kv_heads * self.seq * self.dim;
        let rows = self.q_heads * self.seq;
        let (rank_name, rank_dtype) = ranking(self.select.selector, "gate");
        let mut v = vec![
            BufferSpec::input("q", self.dtype, q),
            BufferSpec::input("k", self.dtype, kv),
            BufferSpec::input("v", self.dtype, kv),
            BufferSpec::output("out", self.dtype, q),
            BufferSpec::output("lse", DType::F32, rows),
            BufferSpec::output("selected", DType::I32, rows * self.width()),
        ];
        if self.ranking {
            v.push(BufferSpec::output(rank_name, rank_dtype, rows * self.nb()));
        }
        v
    }
    /// Attention FLOPs over the selected blocks plus the gate; bytes of q, k, v, out.
    fn cost(&self) -> Cost {
        let es = self.dtype.size() as u64;
        let q = (self.q_heads * self.seq * self.dim) as u64;
        let kv = (self.kv_heads * self.seq * self.dim) as u64;
        let rows = (self.q_heads * self.seq) as u64;
        Cost {
            flops: 4 * self.pairs_bound() * self.dim as u64 + 2 * rows * (self.nb() * self.dim) as u64,
            bytes: (2 * q + 2 * kv) * es + 4 * rows,
        }
    }
    fn label(&self) -> String {
        format!(
            "hq{}_hkv{}_t{}_d{}_bs{}_nb{}_{}",
            self.q_heads, self.kv_heads, self.seq, self.dim, self.select.block_size, self.select.n_blocks, self.dtype
        )
    }
}
