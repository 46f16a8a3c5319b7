//! The paper's methods as compositions of ops, each with a config and a budget.
//!
//! * [`Dense`]: full attention, the baseline (decode and causal prefill).
//! * [`Quest`]: decode-time block selection by the min/max bound (SPEC §2).
//! * [`Moba`]: prefill-time block routing by the mean-key gate (SPEC §3).
//! * [`SnapKv`]: compression after prefill, then decode over the kept tokens (SPEC §4).
//! * [`Random`]: the same budgets with uniformly random (seeded, reproducible) candidates.
//! * [`DecayMemory`]: RAT+'s transform `(k, v, g) -> (RoPE(k~), v~)`; any method runs over its
//!   output (the "RAT+" backbone) or over plain post-RoPE K/V (the "attention" backbone).
//!
//! Budgets are a fraction of the context or an absolute count ([`Budget`]); the presets
//! reproduce the paper (4K context, block 64, 16/8/4 blocks, i.e. 1/4, 1/8, 1/16; SnapKV window
//! 64 keeping 1024/512/256 tokens; first and local block always kept).

use crate::ops::*;
use crate::{Backend, DType, Error, Result};

/// How much of the context a method may attend to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// A fraction of the context in `(0, 1]`.
    Fraction(f64),
    /// An absolute count of blocks (Quest, MoBA) or tokens (SnapKV).
    Count(usize),
}

impl Budget {
    /// The budget in units of `unit` tokens (a block size, or 1 for tokens) for a context of
    /// `context` tokens: `Fraction(f)` gives `max(1, floor(f * ceil(context / unit)))`.
    ///
    /// ```
    /// use kvsparse::methods::Budget;
    /// assert_eq!(Budget::Fraction(0.25).units(4096, 64)?, 16);
    /// assert_eq!(Budget::Count(8).units(4096, 64)?, 8);
    /// assert!(Budget::Fraction(1.5).units(4096, 64).is_err());
    /// # Ok::<(), kvsparse::Error>(())
    /// ```
    pub fn units(&self, context: usize, unit: usize) -> Result<usize> {
        let total = context.div_ceil(unit.max(1));
        match *self {
            Budget::Fraction(f) if f > 0.0 && f <= 1.0 => Ok(((f * total as f64).floor() as usize).max(1)),
            Budget::Fraction(f) => Err(Error::invalid("budget", "fraction", format!("a fraction in (0, 1], got {f}"))),
            Budget::Count(0) => Err(Error::invalid("budget", "count", "at least 1")),
            Budget::Count(n) => Ok(n),
        }
    }
}

/// The attention shape a method runs on: `q[Hq, ., D]`, `k`, `v` `[Hkv, T, D]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Query heads (`Hq`); a multiple of `kv_heads`.
    pub q_heads: usize,
    /// Key/value heads (`Hkv`).
    pub kv_heads: usize,
    /// Context length (`T`): tokens in the cache (decode) or in the prompt (prefill).
    pub seq: usize,
    /// Head dim (`D`).
    pub dim: usize,
    /// Storage dtype of `q`, `k`, `v` and the outputs: a float type.
    pub dtype: DType,
}

/// Outputs of a decode step: `out[Hq, D]` and `lse[Hq]`.
pub struct Decoded<B: Backend> {
    /// Attention output, storage dtype: `[Hq, D]` (decode) or `[Hq, T, D]` (prefill).
    pub out: B::Buffer,
    /// Natural-log softmax normalizer, f32: `[Hq]` (decode) or `[Hq, T]` (prefill).
    pub lse: B::Buffer,
}

fn alloc_outputs<B: Backend>(b: &B, specs: Vec<BufferSpec>) -> Result<Vec<B::Buffer>> {
    specs.into_iter().filter(|s| s.output).map(|s| b.alloc(s.dtype, s.len)).collect()
}

/// Dense attention, the baseline.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Dense;

impl Dense {
    /// Decode: the last token's query `q[Hq, D]` over all `T` keys.
    pub fn decode<B: Backend>(
        &self,
        b: &B,
        s: Shape,
        q: &B::Buffer,
        k: &B::Buffer,
        v: &B::Buffer,
    ) -> Result<Decoded<B>> {
        let op = AttentionDense::new(s.q_heads, s.kv_heads, 1, s.seq, s.dim, false, default_scale(s.dim), s.dtype)?;
        let (mut out, mut lse) = (b.alloc(s.dtype, s.q_heads * s.dim)?, b.alloc(DType::F32, s.q_heads)?);
        b.attention_dense(&op, q, k, v, &mut out, &mut lse)?;
        Ok(Decoded { out, lse })
    }
    /// Causal prefill of `q[Hq, T, D]`: returns `out[Hq, T, D]` and `lse[Hq, T]`.
    pub fn prefill<B: Backend>(
        &self,
        b: &B,
        s: Shape,
        q: &B::Buffer,
        k: &B::Buffer,
        v: &B::Buffer,
    ) -> Result<Decoded<B>> {
        let op = AttentionDense::new(s.q_heads, s.kv_heads, s.seq, s.seq, s.dim, true, default_scale(s.dim), s.dtype)?;
        let (mut out, mut lse) =
            (b.alloc(s.dtype, s.q_heads * s.seq * s.dim)?, b.alloc(DType::F32, s.q_heads * s.seq)?);
        b.attention_dense(&op, q, k, v, &mut out, &mut lse)?;
        Ok(Decoded { out, lse })
    }
}

/// Block selection shared by Quest and MoBA: block size, budget, the forced blocks and how the
/// other blocks compete (SPEC §2.3, §3.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockSelection {
    /// Tokens per block (64 in the paper; 16 in Quest's own kernels).
    pub block_size: usize,
    /// Blocks attended (per head, and per query token for MoBA), forced ones included.
    pub budget: Budget,
    /// Whether block 0 is always kept (the paper: yes; official Quest and MoBA: no).
    pub force_first: bool,
    /// Local blocks always kept: the query's block and the `n_local - 1` before it (at least 1
    /// for MoBA).
    pub n_local: usize,
    /// Candidates compete by score (Quest's bound, MoBA's gate) or by a random key ([`Random`]).
    pub selector: Selector,
}

impl BlockSelection {
    /// The paper's setting: block 64, the first and the local block forced, by score.
    pub fn paper(budget: Budget) -> Self {
        BlockSelection { block_size: 64, budget, force_first: true, n_local: 1, selector: Selector::Score }
    }
    /// The op-level config for a context of `seq` tokens (the budget resolved to blocks).
    pub fn config(&self, seq: usize) -> Result<SelectConfig> {
        Ok(SelectConfig {
            block_size: self.block_size,
            n_blocks: self.budget.units(seq, self.block_size)?,
            force_first: self.force_first,
            n_local: self.n_local,
            selector: self.selector,
        })
    }
}

/// Quest decode (SPEC §2): blocks scored by the min/max bound of their keys, the budget's best
/// plus the forced blocks attended, per query head.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quest {
    /// Which blocks are attended.
    pub select: BlockSelection,
}

impl Quest {
    /// The paper's setting: block 64, first and local block forced, `budget` e.g. `Fraction(1/8)`.
    pub fn paper(budget: Budget) -> Self {
        Quest { select: BlockSelection::paper(budget) }
    }
    /// The official Quest kernels: the current block forced, block 16.
    pub fn original(budget: Budget) -> Self {
        Quest { select: BlockSelection { block_size: 16, force_first: false, ..BlockSelection::paper(budget) } }
    }
    /// The problem for context shape `s` (statistics computed in the call).
    pub fn problem(&self, s: Shape) -> Result<QuestDecode> {
        let cfg = self.select.config(s.seq)?;
        QuestDecode::new(s.q_heads, s.kv_heads, s.seq, s.dim, cfg, default_scale(s.dim), s.dtype)
    }
    /// One decode step. `stats` are the cached `(kmin, kmax)` of `k`, or `None` to compute them.
    /// Returns the outputs and the selected blocks `[Hq, n_sel]`.
    ///
    /// ```
    /// use kvsparse::methods::{Budget, Quest, Shape};
    /// use kvsparse::{Backend, Cpu, DType, HostData};
    /// let cpu = Cpu::new();
    /// let s = Shape { q_heads: 2, kv_heads: 1, seq: 256, dim: 16, dtype: DType::F32 };
    /// let q = cpu.upload(&HostData::F32(vec![0.5; 2 * 16]))?;
    /// let k = cpu.upload(&HostData::F32((0..256 * 16).map(|i| (i % 7) as f32).collect()))?;
    /// let v = k.clone();
    /// let (dec, selected) = Quest::paper(Budget::Fraction(0.5)).decode(&cpu, s, &q, &k, &v, None)?;
    /// assert_eq!(cpu.download(&selected)?.len(), 2 * 2);
    /// # Ok::<(), kvsparse::Error>(())
    /// ```
    pub fn decode<B: Backend>(
        &self,
        b: &B,
        s: Shape,
        q: &B::Buffer,
        k: &B::Buffer,
        v: &B::Buffer,
        stats: Option<(&B::Buffer, &B::Buffer)>,
    ) -> Result<(Decoded<B>, B::Buffer)> {
        let mut op = self.problem(s)?;
        if stats.is_some() {
            op = op.with_cached_stats();
        }
        let [mut sel, mut out, mut lse, mut rank] = op.alloc_outputs(b)?;
        b.quest_decode(&op, q, k, v, stats, &mut sel, &mut out, &mut lse, &mut rank)?;
        Ok((Decoded { out, lse }, sel))
    }
}

/// MoBA prefill (SPEC §3): past blocks routed per query token by the mean-key gate, attended
/// causally with the forced first and local blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moba {
    /// Which blocks each query token attends (`n_local` at least 1).
    pub select: BlockSelection,
}

impl Moba {
    /// The paper's setting: block 64, first and current block forced.
    pub fn paper(budget: Budget) -> Self {
        Moba { select: BlockSelection::paper(budget) }
    }
    /// Official MoBA routing: only the current block forced.
    pub fn original(block_size: usize, budget: Budget) -> Self {
        Moba { select: BlockSelection { block_size, force_first: false, ..BlockSelection::paper(budget) } }
    }
    /// The problem for shape `s`.
    pub fn problem(&self, s: Shape) -> Result<MobaPrefill> {
        let cfg = self.select.config(s.seq)?;
        MobaPrefill::new(s.q_heads, s.kv_heads, s.seq, s.dim, cfg, default_scale(s.dim), s.dtype)
    }
    /// Causal block-sparse prefill of `q[Hq, T, D]`.
    pub fn prefill<B: Backend>(
        &self,
        b: &B,
        s: Shape,
        q: &B::Buffer,
        k: &B::Buffer,
        v: &B::Buffer,
    ) -> Result<Decoded<B>> {
        let op = self.problem(s)?.without_ranking();
        let mut outs = alloc_outputs(b, op.buffers())?;
        let [out, lse, sel] = &mut outs[..] else { unreachable!("MobaPrefill without ranking has three outputs") };
        b.moba_prefill(&op, q, k, v, out, lse, sel, None)?;
        let mut it = outs.into_iter();
        let (out, lse) = (it.next().expect("out"), it.next().expect("lse"));
        Ok(Decoded { out, lse })
    }
}

/// SnapKV (SPEC §4): compression after prefill, then decode over the kept tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnapKv {
    /// Tokens kept in total (window included): a fraction of the prompt or a count.
    pub capacity: Budget,
    /// Observation window: the last `window` prompt queries (64 in the paper); always kept.
    pub window: usize,
    /// Odd pooling kernel size (5 by default).
    pub kernel: usize,
    /// Pooling of the window scores along the key axis.
    pub pooling: Pooling,
    /// One kept set per kv head (group mean) or per query head.
    pub gqa: GqaMode,
    /// Prefix tokens compete by pooled score or by a random key ([`Random::snapkv`]).
    pub selector: Selector,
}

impl SnapKv {
    /// The paper's setting: window 64, kernel 5, average pooling, group mean.
    pub fn paper(capacity: Budget) -> Self {
        SnapKv { capacity, window: 64, kernel: 5, pooling: Pooling::Avg, gqa: GqaMode::Mean, selector: Selector::Score }
    }
    /// The problem for a prompt of shape `s`.
    pub fn problem(&self, s: Shape) -> Result<SnapKvCompress> {
        let settings = SnapKvSettings {
            capacity: self.capacity.units(s.seq, 1)?,
            window: self.window,
            kernel: self.kernel,
            pooling: self.pooling,
            gqa: self.gqa,
            selector: self.selector,
            scale: default_scale(s.dim),
        };
        SnapKvCompress::new(s.q_heads, s.kv_heads, s.seq, s.dim, settings, s.dtype)
    }
    /// Compresses: returns the kept token ids `[Hs, min(T, capacity)]` (ascending).
    pub fn compress<B: Backend>(&self, b: &B, s: Shape, q_obs: &B::Buffer, k: &B::Buffer) -> Result<B::Buffer> {
        let op = self.problem(s)?;
        let mut outs = alloc_outputs(b, op.buffers())?;
        match &mut outs[..] {
            [kept] => b.snapkv_compress(&op, q_obs, k, kept, None)?,
            [kept, rank] => b.snapkv_compress(&op, q_obs, k, kept, Some(rank))?,
            _ => unreachable!("SnapKvCompress has one or two outputs"),
        }
        Ok(outs.swap_remove(0))
    }
    /// Decode over the kept tokens `kept` (from [`SnapKv::compress`] on the same `s`).
    pub fn decode<B: Backend>(
        &self,
        b: &B,
        s: Shape,
        q: &B::Buffer,
        k: &B::Buffer,
        v: &B::Buffer,
        kept: &B::Buffer,
    ) -> Result<Decoded<B>> {
        let comp = self.problem(s)?;
        let op = AttentionSparse::new(
            s.q_heads,
            s.kv_heads,
            s.seq,
            s.dim,
            comp.out_heads(),
            comp.kept_len(),
            default_scale(s.dim),
            s.dtype,
        )?;
        let (mut out, mut lse) = (b.alloc(s.dtype, s.q_heads * s.dim)?, b.alloc(DType::F32, s.q_heads)?);
        b.attention_sparse(&op, q, k, v, kept, &mut out, &mut lse)?;
        Ok(Decoded { out, lse })
    }
}

/// The random selector: the same budget and forced items as a method, the rest uniformly at
/// random by the seeded PCG key (SPEC §8). Vary `seed` per layer and step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Random {
    /// Seed of `random_key(seed, row, i)`, e.g. `base ^ (layer << 16) ^ step`.
    pub seed: u32,
}

impl Random {
    /// Quest's budget and forced blocks, random candidates.
    pub fn quest(&self, mut q: Quest) -> Quest {
        q.select.selector = Selector::Random { seed: self.seed };
        q
    }
    /// MoBA's budget and forced blocks, random candidates.
    pub fn moba(&self, mut m: Moba) -> Moba {
        m.select.selector = Selector::Random { seed: self.seed };
        m
    }
    /// SnapKV's capacity and window, random prefix tokens.
    pub fn snapkv(&self, mut s: SnapKv) -> SnapKv {
        s.selector = Selector::Random { seed: self.seed };
        s
    }
}

/// RAT+'s exponentially decaying memory: `k~_t = g_t k~_{t-1} + (1 - g_t) k_t` (and `v~`), one
/// gate per channel, RoPE after the scan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecayMemory {
    /// RoPE base (10000 in RAT+).
    pub rope_base: f32,
}

/// What [`DecayMemory::prefill`] returns: the cache contents and the decode state.
pub struct Memory<B: Backend> {
    /// `RoPE(k~)` `[Hkv, T, D]`: the keys every method attends to.
    pub k_rope: B::Buffer,
    /// `v~` `[Hkv, T, D]`.
    pub v_tilde: B::Buffer,
    /// `k~` before RoPE `[Hkv, T, D]` (its last row is the decode state).
    pub k_tilde: B::Buffer,
}

impl Default for DecayMemory {
    fn default() -> Self {
        DecayMemory { rope_base: 10000.0 }
    }
}

impl DecayMemory {
    /// Prefill: scans of `k`, `v` (`[Hkv, T, D]`) with the gate `g` (f32), then RoPE.
    pub fn prefill<B: Backend>(
        &self,
        b: &B,
        s: Shape,
        k: &B::Buffer,
        v: &B::Buffer,
        g: &B::Buffer,
    ) -> Result<Memory<B>> {
        let op = RatplusKv::new(s.kv_heads, s.seq, s.dim, self.rope_base, s.dtype)?;
        let n = s.kv_heads * s.seq * s.dim;
        let (mut kt, mut vt, mut kr) = (b.alloc(s.dtype, n)?, b.alloc(s.dtype, n)?, b.alloc(s.dtype, n)?);
        b.ratplus_kv(&op, k, v, g, &mut kt, &mut vt, &mut kr)?;
        Ok(Memory { k_rope: kr, v_tilde: vt, k_tilde: kt })
    }
}
