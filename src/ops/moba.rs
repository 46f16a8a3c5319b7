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
/// f32 at 32K tokens, 32 heads, block 64): an engine leaves it out.
#[derive(Clone, Debug, PartialEq)]
pub struct MobaPrefill {
    pub q_heads: usize,
    pub kv_heads: usize,
    pub seq: usize,
    pub dim: usize,
    pub select: SelectConfig,
    pub scale: f32,
    pub dtype: DType,
    /// Whether the ranking (gate or keys) is an output.
    pub ranking: bool,
}

impl MobaPrefill {
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
