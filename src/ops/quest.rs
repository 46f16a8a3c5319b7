//! Quest decode: block scoring, forced top-k block selection, attention over the selected
//! blocks (SPEC §2).

use super::{fits, float_dtype, gqa, nonzero, scale, BufferSpec, Cost, GqaMode, Op, SelectConfig, Selector};
use crate::params::SelectParams;
use crate::{DType, Error, Result};

/// Checks a block selection config shared by Quest and MoBA.
pub(crate) fn validate_selection(op: &'static str, cfg: &SelectConfig) -> Result<()> {
    nonzero(op, "block_size", cfg.block_size)?;
    nonzero(op, "n_blocks", cfg.n_blocks)?;
    if cfg.n_local > u32::MAX as usize / 2 {
        return Err(Error::invalid(op, "n_local", format!("at most {}, got {}", u32::MAX / 2, cfg.n_local)));
    }
    Ok(())
}

/// Number of distinct forced blocks when block `current` is the query's block:
/// `{0 if force_first} ∪ {current - n_local + 1 ..= current}` clipped at 0.
pub(crate) fn forced_count(cfg: &SelectConfig, current: usize) -> usize {
    let local = cfg.n_local.min(current + 1);
    let first_extra = cfg.force_first && current + 1 > local;
    local + first_extra as usize
}

/// The name and element type of the ranking output: `scores` (f32) or `keys` (u32).
pub(crate) fn ranking(selector: Selector, score_name: &'static str) -> (&'static str, DType) {
    match selector {
        Selector::Score => (score_name, DType::F32),
        Selector::Random { .. } => ("keys", DType::U32),
    }
}

pub(crate) fn select_params(
    cfg: &SelectConfig,
    rows: usize,
    nb: usize,
    seq: usize,
    width: usize,
    mode: u32,
) -> SelectParams {
    let (selector, seed) = match cfg.selector {
        Selector::Score => (0, 0),
        Selector::Random { seed } => (1, seed),
    };
    SelectParams {
        rows: rows as u32,
        nb: nb as u32,
        seq: seq as u32,
        block_size: cfg.block_size as u32,
        n_blocks: cfg.n_blocks.min(u32::MAX as usize) as u32,
        force_first: cfg.force_first as u32,
        n_local: cfg.n_local as u32,
        width: width as u32,
        mode,
        selector,
        seed,
        _pad0: 0,
    }
}

/// Where Quest's block statistics come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuestStats {
    /// Computed from `k` inside the call.
    #[default]
    Compute,
    /// Passed in (`kmin`, `kmax` inputs after `v`).
    Cached,
}

/// Quest decode of the query of token `T-1` (`q[Hq, D]`) over `k`, `v` `[Hkv, T, D]`, which
/// already hold token `T-1`.
///
/// Blocks of `block_size` tokens are scored per query head with the min/max bound of its kv
/// head's keys (or a random key, `row = h`); the forced set `{0 if force_first} ∪ {NB-n_local..NB-1}`
/// plus the best `n_blocks - |forced|` others are kept, `n_sel = min(NB, max(n_blocks, |forced|))`
/// blocks in all, and attention runs over every token of those blocks.
///
/// The block statistics (`kmin`, `kmax`, `[Hkv, NB, D]`) are either computed from `k` on each
/// call ([`QuestStats::Compute`], what a one-off call needs) or passed in as inputs after `v`
/// ([`QuestStats::Cached`], what a decoder whose cache keeps them up to date passes; then only
/// the statistics and the selected blocks are read).
///
/// Under GQA each query head selects its own blocks ([`GqaMode::PerHead`], the default: Quest's
/// evaluation after `repeat_kv`), so a kv head's K/V is read over the union of its group's
/// selections; or, with [`QuestDecode::with_group_selection`] ([`GqaMode::Mean`], ours), each kv
/// head selects once from the mean of its group's scores and the group attends over that one
/// set, so the selected blocks are read once and the budget is the bytes read.
///
/// Outputs, in order: `selected[Hs, n_sel]` (i32, ascending block ids), `out[Hq, D]` (storage
/// dtype), `lse[Hq]` (f32), and the ranking `[Hs, NB]`: `scores` (f32, the group mean for
/// `Mean`) for the score selector or `keys` (u32, row = selection row) for the random one;
/// `Hs = Hq` per head, `Hkv` for `Mean`.
///
/// Cost: the statistics (or all of `k` when computed), `q`, and the K and V of the selected
/// blocks; see the [`Op::cost`] impl for the GQA count. Reference:
/// `kvsparse_reference::quest_decode` (SPEC §2.3, §2.4).
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`QuestDecode::new`], or naming `buffers` when
/// `stats` is passed to [`crate::Backend::quest_decode`] for an op built without
/// [`QuestDecode::with_cached_stats`] (or left out for one built with it);
/// [`crate::Error::Buffer`] when a buffer's length or dtype does not match.
///
/// ```
/// use kvsparse::{ops::{QuestDecode, SelectConfig, Selector}, Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let cfg = SelectConfig { block_size: 2, n_blocks: 1, force_first: false, n_local: 1, selector: Selector::Score };
/// let op = QuestDecode::new(1, 1, 4, 1, cfg, 1.0, DType::F32)?;
/// let q = cpu.upload(&HostData::F32(vec![1.0]))?;
/// let k = cpu.upload(&HostData::F32(vec![9.0, 9.0, 0.0, 0.0]))?;
/// let v = cpu.upload(&HostData::F32(vec![5.0, 5.0, 1.0, 3.0]))?;
/// let bufs = op.alloc_outputs(&cpu)?;
/// let [mut sel, mut out, mut lse, mut scores] = bufs;
/// cpu.quest_decode(&op, &q, &k, &v, None, &mut sel, &mut out, &mut lse, &mut scores)?;
/// assert_eq!(cpu.download(&sel)?, HostData::I32(vec![1])); // only the local block
/// assert_eq!(cpu.download(&out)?, HostData::F32(vec![2.0]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct QuestDecode {
    /// Query heads (`Hq`); a multiple of `kv_heads`.
    pub q_heads: usize,
    /// Key/value heads (`Hkv`); at least 1.
    pub kv_heads: usize,
    /// Tokens in the cache (`T`), the current one included; at least 1.
    pub seq: usize,
    /// Head dim (`D`); at least 1.
    pub dim: usize,
    /// Block size, budget in blocks (forced ones included), forced blocks and selector.
    pub select: SelectConfig,
    /// Softmax scale of the attention (scores are unscaled); finite and positive.
    pub scale: f32,
    /// Storage dtype of `q`, `k`, `v`, `out` and the statistics: a float type.
    pub dtype: DType,
    /// Whether the block statistics are computed in the call or passed in.
    pub stats: QuestStats,
    /// One selection per query head (default) or one per kv head from the group's mean score.
    pub gqa: GqaMode,
}

impl QuestDecode {
    /// Validates and builds the problem, statistics computed in the call; errors:
    /// [`crate::Error::InvalidArgument`] naming the argument. Checks: `q_heads`, `kv_heads` at
    /// least 1 and `q_heads` a multiple of `kv_heads`; `seq`, `dim`, `block_size`, `n_blocks` at
    /// least 1; `n_local` at most `u32::MAX / 2`; `scale` finite and positive; `dtype` a float
    /// type; `kv_heads * seq * dim` and `q_heads * NB` within
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
        let op = QuestDecode {
            q_heads,
            kv_heads,
            seq,
            dim,
            select,
            scale,
            dtype,
            stats: QuestStats::Compute,
            gqa: GqaMode::PerHead,
        };
        op.validate()?;
        Ok(op)
    }
    /// Number of blocks `ceil(T / block_size)`.
    pub fn nb(&self) -> usize {
        self.seq.div_ceil(self.select.block_size)
    }
    /// Blocks selected per head: `min(NB, max(n_blocks, |forced|))`.
    pub fn n_sel(&self) -> usize {
        let nb = self.nb();
        nb.min(self.select.n_blocks.max(forced_count(&self.select, nb - 1)))
    }
    /// Selection rows `Hs`: `Hq` per head, `Hkv` for [`GqaMode::Mean`].
    pub fn select_rows(&self) -> usize {
        match self.gqa {
            GqaMode::PerHead => self.q_heads,
            GqaMode::Mean => self.kv_heads,
        }
    }
    /// Parameters of the selection kernel (one row per selection row).
    pub fn select_params(&self) -> SelectParams {
        select_params(&self.select, self.select_rows(), self.nb(), 1, self.n_sel(), 0)
    }
    /// The same problem with the block statistics passed in.
    pub fn with_cached_stats(mut self) -> Self {
        self.stats = QuestStats::Cached;
        self
    }
    /// The same problem with one block selection per kv head ([`GqaMode::Mean`]).
    ///
    /// ```
    /// use kvsparse::ops::{GqaMode, QuestDecode, SelectConfig, Selector};
    /// use kvsparse::DType;
    /// let cfg = SelectConfig { block_size: 16, n_blocks: 4, force_first: true, n_local: 1, selector: Selector::Score };
    /// let op = QuestDecode::new(32, 8, 4096, 128, cfg, 0.088, DType::BF16)?.with_group_selection();
    /// assert_eq!((op.gqa, op.select_rows()), (GqaMode::Mean, 8));
    /// # Ok::<(), kvsparse::Error>(())
    /// ```
    pub fn with_group_selection(mut self) -> Self {
        self.gqa = GqaMode::Mean;
        self
    }
    /// Allocates the four outputs (poisoned) in argument order.
    pub fn alloc_outputs<B: crate::Backend>(&self, b: &B) -> Result<[B::Buffer; 4]> {
        let outs: Vec<BufferSpec> = self.buffers().into_iter().filter(|s| s.output).collect();
        let alloc = |i: usize| b.alloc(outs[i].dtype, outs[i].len);
        Ok([alloc(0)?, alloc(1)?, alloc(2)?, alloc(3)?])
    }
}

impl Op for QuestDecode {
    const NAME: &'static str = "quest_decode";
    fn validate(&self) -> Result<()> {
        gqa(Self::NAME, self.q_heads, self.kv_heads)?;
        nonzero(Self::NAME, "seq", self.seq)?;
        nonzero(Self::NAME, "dim", self.dim)?;
        validate_selection(Self::NAME, &self.select)?;
        scale(Self::NAME, self.scale)?;
        float_dtype(Self::NAME, self.dtype)?;
        fits(Self::NAME, "kv_heads * seq * dim", &[self.kv_heads, self.seq, self.dim])?;
        fits(Self::NAME, "q_heads * nb", &[self.q_heads, self.nb()]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let kv = self.kv_heads * self.seq * self.dim;
        let (rank_name, rank_dtype) = ranking(self.select.selector, "scores");
        let stats = self.kv_heads * self.nb() * self.dim;
        let mut v = vec![
            BufferSpec::input("q", self.dtype, self.q_heads * self.dim),
            BufferSpec::input("k", self.dtype, kv),
            BufferSpec::input("v", self.dtype, kv),
        ];
        if self.stats == QuestStats::Cached {
            v.push(BufferSpec::input("kmin", self.dtype, stats));
            v.push(BufferSpec::input("kmax", self.dtype, stats));
        }
        let rows = self.select_rows();
        v.extend([
            BufferSpec::output("selected", DType::I32, rows * self.n_sel()),
            BufferSpec::output("out", self.dtype, self.q_heads * self.dim),
            BufferSpec::output("lse", DType::F32, self.q_heads),
            BufferSpec::output(rank_name, rank_dtype, rows * self.nb()),
        ]);
        v
    }
    /// Statistics read (or all of `k` when they are computed), the query, and the K and V of
    /// the selected blocks. Per head, each query head selects its own blocks, so a kv head
    /// reads the union of its group's selections: counted as `min(NB, G * n_sel)` blocks (the
    /// heads of a group choosing disjoint blocks), which for MHA is exactly `n_sel`; with
    /// [`GqaMode::Mean`] a kv head reads its `n_sel` blocks.
    fn cost(&self) -> Cost {
        let es = self.dtype.size() as u64;
        let (d, bs) = (self.dim as u64, self.select.block_size as u64);
        let group = self.q_heads / self.kv_heads;
        let stats = match self.stats {
            QuestStats::Cached => 2 * (self.kv_heads * self.nb()) as u64 * d,
            QuestStats::Compute => (self.kv_heads * self.seq) as u64 * d,
        };
        let sharing = if self.gqa == GqaMode::Mean { 1 } else { group };
        let blocks_read = self.nb().min(sharing * self.n_sel()) as u64;
        let tokens_read = (blocks_read * bs).min(self.seq as u64);
        let kv_read = 2 * self.kv_heads as u64 * tokens_read * d;
        let tokens_attended = (self.n_sel() as u64 * bs).min(self.seq as u64);
        Cost {
            flops: 4 * (self.q_heads * self.nb()) as u64 * d + 4 * self.q_heads as u64 * tokens_attended * d,
            bytes: (stats + kv_read + 2 * self.q_heads as u64 * d) * es
                + 4 * (self.select_rows() * (self.nb() + self.n_sel()) + self.q_heads) as u64,
        }
    }
    fn label(&self) -> String {
        let gqa = if self.gqa == GqaMode::Mean { "_kvsel" } else { "" };
        format!(
            "hq{}_hkv{}_t{}_d{}_bs{}_nb{}_{}{gqa}",
            self.q_heads, self.kv_heads, self.seq, self.dim, self.select.block_size, self.select.n_blocks, self.dtype
        )
    }
}
