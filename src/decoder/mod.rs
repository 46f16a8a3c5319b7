//! A decoder an inference engine can drop in: one layer's batched KV cache, kept up to date
//! token by token, with prefill and decode steps over it.
//!
//! * [`KvCache`] holds, for up to `batch` sequences, the keys and values every method attends
//!   to (`RoPE(k~)` and `v~` on the RAT+ backbone, the caller's post-RoPE `k` and `v` on the
//!   attention backbone), the decaying-memory state, and block statistics (min, max, mean) that
//!   each append updates for the one block it touches.
//! * [`KvCache::prefill`] runs dense or MoBA causal attention over each prompt and fills the
//!   sequence's slots, optionally after SnapKV compression (then the cache holds the kept
//!   tokens, and decoding attends to them plus every generated token).
//! * [`KvCache::decode_step`] appends one token to every sequence and attends with dense
//!   attention, Quest or the random selector (chosen per call). The live lengths live on the
//!   device and no launch shape depends on them, so on CUDA the step can be captured once in a
//!   graph and replayed ([`KvCache::replay_step`] keeps the host's view of the lengths in step).
//!
//! [`ReferenceDecoder`] is the same decoder written as a loop over the float64 reference ops,
//! the oracle of the tests and of `examples/decoder.rs`.
//!
//! ```
//! use kvsparse::decoder::{Backbone, DecodeMethod, DecoderConfig, KvCache, PrefillAttention, PrefillSeq};
//! use kvsparse::methods::Budget;
//! use kvsparse::{Backend, Cpu, DType, HostData};
//! let cpu = Cpu::new();
//! let cfg = DecoderConfig::new(4, 2, 16, DType::F32, 2, 300, 64, Backbone::RatPlus { rope_base: 10000.0 })?;
//! let mut cache = KvCache::new(&cpu, cfg, None)?;
//! let prompt = |t: usize, heads: usize| cpu.upload(&HostData::F32(vec![0.5; heads * t * 16]));
//! let gate = |t: usize| cpu.upload(&HostData::F32(vec![0.9; 2 * t * 16]));
//! let (q, k, v, g) = (prompt(100, 4)?, prompt(100, 2)?, prompt(100, 2)?, gate(100)?);
//! let seq = PrefillSeq { slot: 0, len: 100, q: &q, k: &k, v: &v, g: Some(&g) };
//! cache.prefill(&cpu, &[seq], PrefillAttention::Dense)?;
//! let (q1, k1, v1, g1) = (prompt(1, 8)?, prompt(1, 4)?, prompt(1, 4)?, gate(2)?);
//! let mut outs = cache.step_outputs(&cpu, &DecodeMethod::quest(Budget::Fraction(0.5)))?;
//! cache.decode_step(&cpu, &q1, &k1, &v1, Some(&g1), &DecodeMethod::quest(Budget::Fraction(0.5)), &mut outs)?;
//! assert_eq!(cache.lens(), &[101, 1]); // sequence 1 had an empty prompt
//! # Ok::<(), kvsparse::Error>(())
//! ```

mod reference;

pub use reference::ReferenceDecoder;

use crate::methods::{Budget, Moba, SnapKv};
use crate::ops::*;
use crate::{Backend, DType, Error, HostData, Result};

/// Which keys and values the cache holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backbone {
    /// Plain attention: `k`, `v` as the caller gives them (position-encoded already).
    Attention,
    /// RAT+: `k~_t = g_t k~_{t-1} + (1 - g_t) k_t` (and `v~`), one gate per channel, then RoPE of
    /// `k~` at the token's position. The caller gives pre-RoPE `k`, `v` and the gate `g`.
    RatPlus {
        /// RoPE base (10000 in RAT+).
        rope_base: f32,
    },
}

/// The shape of one layer's cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Query heads (`Hq`); a multiple of `kv_heads`.
    pub q_heads: usize,
    /// Key/value heads (`Hkv`).
    pub kv_heads: usize,
    /// Head dim (`D`); even on the RAT+ backbone.
    pub dim: usize,
    /// Storage dtype of queries, keys, values and outputs (f32 accumulation throughout).
    pub dtype: DType,
    /// Sequences the cache holds (`B`).
    pub batch: usize,
    /// Token slots per sequence: prompt (or kept tokens) plus generated tokens.
    pub capacity: usize,
    /// Tokens per block of the statistics (and of Quest's selection).
    pub block_size: usize,
    /// Plain attention or RAT+.
    pub backbone: Backbone,
    /// Softmax scale (`1/sqrt(D)` from [`DecoderConfig::new`]).
    pub scale: f32,
}

impl DecoderConfig {
    /// A config with the default softmax scale; errors: [`Error::InvalidArgument`] naming the
    /// argument (heads, dims, capacity, block size, dtype; an odd `dim` on the RAT+ backbone).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        q_heads: usize,
        kv_heads: usize,
        dim: usize,
        dtype: DType,
        batch: usize,
        capacity: usize,
        block_size: usize,
        backbone: Backbone,
    ) -> Result<Self> {
        let cfg = DecoderConfig {
            q_heads,
            kv_heads,
            dim,
            dtype,
            batch,
            capacity,
            block_size,
            backbone,
            scale: default_scale(dim),
        };
        cfg.validate()?;
        Ok(cfg)
    }
    fn validate(&self) -> Result<()> {
        // The ops check everything; build the two that cover every argument.
        let shape = self.shape(self.kv_heads);
        CacheDecode::new(shape, self.q_heads, CacheSelect::Dense, self.scale).map_err(|e| rename(e, "decoder"))?;
        let (ratplus, base) = self.ratplus();
        CacheAppend::new(shape, self.kv_heads, ratplus, base).map_err(|e| rename(e, "decoder"))?;
        Ok(())
    }
    fn shape(&self, heads: usize) -> CacheShape {
        CacheShape {
            batch: self.batch,
            heads,
            capacity: self.capacity,
            dim: self.dim,
            block_size: self.block_size,
            dtype: self.dtype,
        }
    }
    fn ratplus(&self) -> (bool, f32) {
        match self.backbone {
            Backbone::Attention => (false, 10000.0),
            Backbone::RatPlus { rope_base } => (true, rope_base),
        }
    }
}

fn rename(e: Error, op: &'static str) -> Error {
    match e {
        Error::InvalidArgument { arg, expected, .. } => Error::InvalidArgument { op, arg, expected },
        other => other,
    }
}

/// Causal attention of a prefill.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PrefillAttention {
    /// Dense causal attention.
    Dense,
    /// MoBA block-sparse causal attention (its own block size and budget per prompt length).
    Moba(Moba),
}

/// One prompt of a prefill: its slot in the cache and its tensors (each its own buffer).
pub struct PrefillSeq<'a, B: Backend> {
    /// The cache slot (`0..batch`) the sequence occupies; its previous contents are replaced.
    pub slot: usize,
    /// Prompt tokens (`T`); at least 1.
    pub len: usize,
    /// Queries `[Hq, T, D]` (position-encoded by the caller).
    pub q: &'a B::Buffer,
    /// Keys `[Hkv, T, D]`: post-RoPE (attention backbone) or pre-RoPE (RAT+).
    pub k: &'a B::Buffer,
    /// Values `[Hkv, T, D]`.
    pub v: &'a B::Buffer,
    /// Gates `[Hkv, T, D]` f32; exactly on the RAT+ backbone.
    pub g: Option<&'a B::Buffer>,
}

/// What [`KvCache::prefill`] returns per prompt.
pub struct Prefilled<B: Backend> {
    /// Attention output `[Hq, T, D]`.
    pub out: B::Buffer,
    /// Log-sum-exp `[Hq, T]` f32.
    pub lse: B::Buffer,
    /// SnapKV's kept prompt tokens `[Hs, n]` i32 (ascending), when the cache compresses.
    pub kept: Option<B::Buffer>,
}

/// How a decode step attends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DecodeMethod {
    /// Every live token (on a SnapKV cache: the kept tokens and every generated one).
    Dense,
    /// Forced top-k blocks of the cache's block size: Quest by score, or the random selector.
    Blocks {
        /// Blocks attended per query head, forced ones included: a fraction of the live blocks
        /// (resolved on the device per sequence, see [`CacheBudget`]) or a count.
        budget: Budget,
        /// Block 0 always kept (the paper: yes).
        force_first: bool,
        /// The last `n_local` live blocks always kept (the paper: 1).
        n_local: usize,
        /// Quest score or seeded random key.
        selector: Selector,
    },
}

impl DecodeMethod {
    /// Quest with the paper's forced blocks (first and local).
    pub fn quest(budget: Budget) -> Self {
        DecodeMethod::Blocks { budget, force_first: true, n_local: 1, selector: Selector::Score }
    }
    /// The random selector with the paper's forced blocks.
    pub fn random(budget: Budget, seed: u32) -> Self {
        DecodeMethod::Blocks { budget, force_first: true, n_local: 1, selector: Selector::Random { seed } }
    }
    /// The op-level selection.
    pub fn select(&self) -> Result<CacheSelect> {
        Ok(match *self {
            DecodeMethod::Dense => CacheSelect::Dense,
            DecodeMethod::Blocks { budget, force_first, n_local, selector } => CacheSelect::Blocks {
                budget: match budget {
                    Budget::Count(n) => CacheBudget::Blocks(n),
                    Budget::Fraction(f) => CacheBudget::from_fraction(f)?,
                },
                force_first,
                n_local,
                selector,
            },
        })
    }
}

/// The outputs of a decode step, allocated once ([`KvCache::step_outputs`]) and rewritten by
/// every step (fixed addresses, as a captured graph needs).
pub struct StepOutputs<B: Backend> {
    /// Attention output `[B, Hq, D]`.
    pub out: B::Buffer,
    /// Log-sum-exp `[B, Hq]` f32.
    pub lse: B::Buffer,
    /// Selected blocks `[B, Hq, W]` i32 (ascending, `-1` padded), for block methods.
    pub selected: Option<B::Buffer>,
    /// Block scores (f32) or random keys (u32) `[B, Hq, NB]`, for block methods.
    pub ranking: Option<B::Buffer>,
    op: CacheDecode,
}

impl<B: Backend> StepOutputs<B> {
    /// The decode problem these outputs belong to.
    pub fn op(&self) -> &CacheDecode {
        &self.op
    }
}

/// One layer's batched KV cache (see the [module docs](self)).
pub struct KvCache<B: Backend> {
    cfg: DecoderConfig,
    shape: CacheShape,
    snapkv: Option<SnapKv>,
    k: B::Buffer,
    v: B::Buffer,
    kmin: B::Buffer,
    kmax: B::Buffer,
    kmean: B::Buffer,
    lens: B::Buffer,
    pos: B::Buffer,
    state: Option<(B::Buffer, B::Buffer)>,
    append: CacheAppend,
    advance: CacheAdvance,
    host_lens: Vec<usize>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache (every length 0). With `snapkv`, each prefill compresses its prompt and
    /// the cache keeps one set of tokens per SnapKV output head (`Hkv`, or `Hq` for per-head
    /// GQA, in which case each kv head's generated tokens are stored once per query head).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad config; [`Error::TooLarge`] when the device cannot
    /// hold the cache.
    pub fn new(b: &B, cfg: DecoderConfig, snapkv: Option<SnapKv>) -> Result<Self> {
        cfg.validate()?;
        if !b.supports(cfg.dtype) {
            return Err(Error::UnsupportedDtype {
                backend: b.name(),
                dtype: cfg.dtype,
                reason: "the device cannot store it".into(),
            });
        }
        let heads = match snapkv.map(|s| s.gqa) {
            Some(GqaMode::PerHead) => cfg.q_heads,
            _ => cfg.kv_heads,
        };
        let shape = cfg.shape(heads);
        let (ratplus, base) = cfg.ratplus();
        let append = CacheAppend::new(shape, cfg.kv_heads, ratplus, base)?;
        let zeros_i32 = || b.upload(&HostData::I32(vec![0; cfg.batch]));
        let state_len = cfg.batch * cfg.kv_heads * cfg.dim;
        let state = if ratplus {
            let zero = HostData::F32(vec![0.0; state_len]);
            Some((b.upload(&zero)?, b.upload(&zero)?))
        } else {
            None
        };
        Ok(KvCache {
            cfg,
            shape,
            snapkv,
            // Poisoned (NaN): a kernel that reads a slot past the live length shows up as NaN.
            k: b.alloc(cfg.dtype, shape.kv_len())?,
            v: b.alloc(cfg.dtype, shape.kv_len())?,
            kmin: b.alloc(cfg.dtype, shape.stats_len())?,
            kmax: b.alloc(cfg.dtype, shape.stats_len())?,
            kmean: b.alloc(cfg.dtype, shape.stats_len())?,
            lens: zeros_i32()?,
            pos: zeros_i32()?,
            state,
            append,
            advance: CacheAdvance::new(cfg.batch)?,
            host_lens: vec![0; cfg.batch],
        })
    }

    /// The config the cache was built with.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }
    /// The cache's layout (heads = `Hkv`, or `Hq` for a per-head SnapKV cache).
    pub fn shape(&self) -> &CacheShape {
        &self.shape
    }
    /// Live tokens per sequence, as the host tracks them (the device holds the same values).
    pub fn lens(&self) -> &[usize] {
        &self.host_lens
    }
    /// The device buffers `(k, v)` `[B, Hc, capacity, D]`.
    pub fn kv(&self) -> (&B::Buffer, &B::Buffer) {
        (&self.k, &self.v)
    }
    /// The device buffers `(kmin, kmax, kmean)` `[B, Hc, NB, D]`.
    pub fn stats(&self) -> (&B::Buffer, &B::Buffer, &B::Buffer) {
        (&self.kmin, &self.kmax, &self.kmean)
    }
    /// The device buffers `(lens, pos)` `[B]` i32.
    pub fn lengths(&self) -> (&B::Buffer, &B::Buffer) {
        (&self.lens, &self.pos)
    }

    /// Prefills each prompt into its slot: causal attention (dense or MoBA) over the prompt's
    /// keys (after the RAT+ scan and RoPE on that backbone), then the slot's cache, statistics,
    /// state and length. With SnapKV, the slot keeps the compressed prompt. Returns each
    /// prompt's attention output.
    ///
    /// The RAT+ state after a prefill is the scan's last row as stored (storage dtype), and
    /// SnapKV's observation queries are sliced on the host: a prefill is eager work, not part of
    /// a captured step.
    pub fn prefill(
        &mut self,
        b: &B,
        seqs: &[PrefillSeq<'_, B>],
        attention: PrefillAttention,
    ) -> Result<Vec<Prefilled<B>>> {
        let mut results = Vec::with_capacity(seqs.len());
        for s in seqs {
            results.push(self.prefill_one(b, s, attention)?);
        }
        Ok(results)
    }

    fn prefill_one(&mut self, b: &B, s: &PrefillSeq<'_, B>, attention: PrefillAttention) -> Result<Prefilled<B>> {
        let cfg = self.cfg;
        if s.slot >= cfg.batch {
            return Err(Error::invalid("prefill", "slot", format!("below batch = {}, got {}", cfg.batch, s.slot)));
        }
        let shape = crate::methods::Shape {
            q_heads: cfg.q_heads,
            kv_heads: cfg.kv_heads,
            seq: s.len,
            dim: cfg.dim,
            dtype: cfg.dtype,
        };
        let (ratplus, base) = cfg.ratplus();
        if s.g.is_some() != ratplus {
            return Err(Error::invalid("prefill", "g", "given exactly on the RAT+ backbone"));
        }
        // The keys and values attended: RoPE(k~), v~ (RAT+) or k, v as given.
        let memory = match s.g {
            Some(g) => Some(crate::methods::DecayMemory { rope_base: base }.prefill(b, shape, s.k, s.v, g)?),
            None => None,
        };
        let (keys, values) = match &memory {
            Some(m) => (&m.k_rope, &m.v_tilde),
            None => (s.k, s.v),
        };
        let decoded = match attention {
            PrefillAttention::Dense => crate::methods::Dense.prefill(b, shape, s.q, keys, values)?,
            PrefillAttention::Moba(m) => m.prefill(b, shape, s.q, keys, values)?,
        };
        let kept = match self.snapkv {
            Some(snap) => {
                let comp = snap.problem(shape)?;
                let q_obs = last_queries(b, s.q, cfg.q_heads, s.len, comp.obs_len(), cfg.dim)?;
                Some((snap.compress(b, shape, &q_obs, keys)?, comp))
            }
            None => None,
        };
        let (n, idx) = match &kept {
            Some((idx, comp)) => (comp.kept_len(), Some(idx)),
            None => (s.len, None),
        };
        let src_heads = cfg.kv_heads;
        if n > cfg.capacity {
            return Err(Error::invalid(
                "prefill",
                "len",
                format!("at most the capacity {} tokens (after compression), got {n}", cfg.capacity),
            ));
        }
        let fill = CacheFill::new(self.shape, s.slot, src_heads, s.len, n, idx.is_some(), s.len)?;
        b.cache_fill(
            &fill,
            keys,
            values,
            idx,
            &mut self.k,
            &mut self.v,
            &mut self.kmin,
            &mut self.kmax,
            &mut self.kmean,
            &mut self.lens,
            &mut self.pos,
        )?;
        if let (Some(m), Some((hk, hv))) = (&memory, &mut self.state) {
            // The scan's last rows become the slot's decaying-memory state.
            let (kt, vt) = (b.download(&m.k_tilde)?, b.download(&m.v_tilde)?);
            for (state, scanned) in [(hk, kt), (hv, vt)] {
                let mut all = b.download(state)?.to_f32().unwrap_or_default();
                let scanned = scanned.to_f32().unwrap_or_default();
                let d = cfg.dim;
                for h in 0..cfg.kv_heads {
                    let last = (h * s.len + s.len - 1) * d;
                    let at = (s.slot * cfg.kv_heads + h) * d;
                    all[at..at + d].copy_from_slice(&scanned[last..last + d]);
                }
                // In place: a captured step keeps the state's address.
                b.copy_buffer(&b.upload(&HostData::F32(all))?, state)?;
            }
        }
        self.host_lens[s.slot] = n;
        Ok(Prefilled { out: decoded.out, lse: decoded.lse, kept: kept.map(|(k, _)| k) })
    }

    /// Allocates the outputs of a decode step with `method` (poisoned until the first step).
    pub fn step_outputs(&self, b: &B, method: &DecodeMethod) -> Result<StepOutputs<B>> {
        let op = CacheDecode::new(self.shape, self.cfg.q_heads, method.select()?, self.cfg.scale)?;
        let specs = op.buffers();
        let alloc = |name: &str| -> Result<Option<B::Buffer>> {
            specs.iter().find(|s| s.name == name).map(|s| b.alloc(s.dtype, s.len)).transpose()
        };
        let ranking = match specs.last().map(|s| s.name) {
            Some(n @ ("scores" | "keys")) => alloc(n)?,
            _ => None,
        };
        Ok(StepOutputs {
            out: alloc("out")?.expect("out"),
            lse: alloc("lse")?.expect("lse"),
            selected: alloc("selected")?,
            ranking,
            op,
        })
    }

    /// One decode step for every sequence: appends the new token (`k`, `v` `[B, Hkv, D]`, and
    /// on RAT+ the gate `g` `[B, Hkv, D]` f32), advances the lengths, and attends with `q`
    /// `[B, Hq, D]` by `method` into `outs` (from [`KvCache::step_outputs`] with the same
    /// method). Everything it launches reads the lengths on the device.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a sequence is full (`capacity` tokens) or `outs` was made
    /// for another method; buffer errors name the argument.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_step(
        &mut self,
        b: &B,
        q: &B::Buffer,
        k: &B::Buffer,
        v: &B::Buffer,
        g: Option<&B::Buffer>,
        method: &DecodeMethod,
        outs: &mut StepOutputs<B>,
    ) -> Result<()> {
        let expected = CacheDecode::new(self.shape, self.cfg.q_heads, method.select()?, self.cfg.scale)?;
        if expected != outs.op {
            return Err(Error::invalid("decode_step", "outs", "step outputs made for this method (step_outputs)"));
        }
        self.check_room()?;
        self.launch_step(b, q, k, v, g, outs)?;
        self.host_lens.iter_mut().for_each(|t| *t += 1);
        Ok(())
    }

    /// Notes one replay of a captured decode step (see the module docs): checks that every
    /// sequence has room and advances the host's view of the lengths; call it before each
    /// replay. `replay` runs the captured work.
    pub fn replay_step(&mut self, replay: impl FnOnce() -> Result<()>) -> Result<()> {
        self.check_room()?;
        replay()?;
        self.host_lens.iter_mut().for_each(|t| *t += 1);
        Ok(())
    }

    /// The launches of one step, without the host bookkeeping: what a graph captures.
    /// `decode_step` is this plus the checks; capture it once with [`KvCache::record_step`].
    fn launch_step(
        &mut self,
        b: &B,
        q: &B::Buffer,
        k: &B::Buffer,
        v: &B::Buffer,
        g: Option<&B::Buffer>,
        outs: &mut StepOutputs<B>,
    ) -> Result<()> {
        let state = self.state.as_mut().map(|(a, c)| (a, c));
        b.cache_append(
            &self.append,
            k,
            v,
            g,
            &self.lens,
            &self.pos,
            state,
            &mut self.k,
            &mut self.v,
            &mut self.kmin,
            &mut self.kmax,
            &mut self.kmean,
        )?;
        b.cache_advance(&self.advance, &mut self.lens, &mut self.pos)?;
        let stats = match outs.op.select {
            CacheSelect::Blocks { selector: Selector::Score, .. } => Some((&self.kmin, &self.kmax)),
            _ => None,
        };
        b.cache_decode(
            &outs.op,
            q,
            &self.k,
            &self.v,
            &self.lens,
            stats,
            &mut outs.out,
            &mut outs.lse,
            outs.selected.as_mut(),
            outs.ranking.as_mut(),
        )
    }

    /// Runs the launches of one decode step inside `record` (e.g. a CUDA stream capture) without
    /// touching the host's lengths: the recorded work advances the device lengths each time it
    /// runs, and [`KvCache::replay_step`] keeps the host in step. Checks room for one step.
    #[allow(clippy::too_many_arguments)]
    pub fn record_step<R>(
        &mut self,
        b: &B,
        q: &B::Buffer,
        k: &B::Buffer,
        v: &B::Buffer,
        g: Option<&B::Buffer>,
        outs: &mut StepOutputs<B>,
        record: impl FnOnce(&mut dyn FnMut() -> Result<()>) -> Result<R>,
    ) -> Result<R> {
        self.check_room()?;
        let mut launches = || self.launch_step(b, q, k, v, g, outs);
        record(&mut launches)
    }

    fn check_room(&self) -> Result<()> {
        if let Some(full) = self.host_lens.iter().position(|&t| t >= self.cfg.capacity) {
            return Err(Error::invalid(
                "decode_step",
                "capacity",
                format!(
                    "room for one more token; sequence {full} holds {} of {} slots",
                    self.host_lens[full], self.cfg.capacity
                ),
            ));
        }
        Ok(())
    }
}

/// `q[:, T-w.., :]` of `q[H, T, D]` as its own buffer (through the host).
fn last_queries<B: Backend>(b: &B, q: &B::Buffer, heads: usize, t: usize, w: usize, d: usize) -> Result<B::Buffer> {
    let all = b.download(q)?;
    let dtype = all.dtype();
    let values = all.to_f32().unwrap_or_default();
    let mut obs = Vec::with_capacity(heads * w * d);
    for h in 0..heads {
        obs.extend_from_slice(&values[(h * t + t - w) * d..(h * t + t) * d]);
    }
    b.upload(&HostData::from_f32(dtype, &obs))
}
