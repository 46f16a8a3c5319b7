//! The decoder as a loop over the float64 reference ops: the oracle of [`super::KvCache`].

use super::{Backbone, DecodeMethod, DecoderConfig, PrefillAttention};
use crate::methods::SnapKv;
use crate::ops::{CacheSelect, GqaMode, SelectConfig, SnapKvCompress};
use crate::{DType, Error, HostData, Result};
use kvsparse_reference as reference;

/// One sequence of the reference: its cache rows per cache head, state and next position.
#[derive(Clone, Debug, Default)]
struct Seq {
    /// `[Hc][t * D]`: keys and values as the cache stores them (rounded to the storage dtype).
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// RAT+ states `[Hkv * D]` (f32).
    hk: Vec<f32>,
    hv: Vec<f32>,
    pos: usize,
}

/// What [`ReferenceDecoder::prefill`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferencePrefill {
    /// `[Hq, T, D]` (empty without an attention).
    pub out: Vec<f32>,
    /// `[Hq, T]` (empty without an attention).
    pub lse: Vec<f32>,
    /// SnapKV's kept tokens `[Hs, n]` (the reference's own, or the override).
    pub kept: Option<Vec<i32>>,
}

/// What [`ReferenceDecoder::step`] returns, in the layout of [`super::StepOutputs`].
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceStep {
    /// `[B, Hq, D]`.
    pub out: Vec<f32>,
    /// `[B, Hq]`.
    pub lse: Vec<f32>,
    /// `[B, Hq, W]` ascending, `-1` padded (block methods only).
    pub selected: Option<Vec<i32>>,
    /// Per sequence, the Quest scores `[Hq, NB_b]` of its live blocks (block methods only; for
    /// the random selector these are the scores it ignored).
    pub scores: Vec<Vec<f32>>,
}

/// [`super::KvCache`] written as a loop over `kvsparse-reference`: every step runs the
/// reference's RAT+ step, and then its dense attention or Quest decode over everything the
/// sequence holds (statistics recomputed from the keys each time), so the decoder's incremental
/// statistics, device lengths and batching are checked against a from-scratch computation.
/// Values are rounded to the storage dtype wherever the decoder stores them.
///
/// ```
/// use kvsparse::decoder::{Backbone, DecodeMethod, DecoderConfig, PrefillAttention, ReferenceDecoder};
/// use kvsparse::DType;
/// let cfg = DecoderConfig::new(2, 1, 4, DType::F32, 1, 16, 4, Backbone::Attention)?;
/// let mut r = ReferenceDecoder::new(cfg, None);
/// r.prefill(0, &[0.1; 2 * 3 * 4], &[0.2; 3 * 4], &[0.3; 3 * 4], None, 3, Some(PrefillAttention::Dense), None)?;
/// let step = r.step(&[0.1; 2 * 4], &[0.2; 4], &[0.5; 4], None, &DecodeMethod::Dense)?;
/// assert!((step.out[0] - 0.35).abs() < 1e-6); // mean of 0.3, 0.3, 0.3, 0.5
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ReferenceDecoder {
    cfg: DecoderConfig,
    snapkv: Option<SnapKv>,
    heads: usize,
    seqs: Vec<Seq>,
}

impl ReferenceDecoder {
    /// An empty decoder of the same config as a [`super::KvCache`].
    pub fn new(cfg: DecoderConfig, snapkv: Option<SnapKv>) -> Self {
        let heads = match snapkv.map(|s| s.gqa) {
            Some(GqaMode::PerHead) => cfg.q_heads,
            _ => cfg.kv_heads,
        };
        let empty = Seq {
            keys: vec![Vec::new(); heads],
            values: vec![Vec::new(); heads],
            hk: vec![0.0; cfg.kv_heads * cfg.dim],
            hv: vec![0.0; cfg.kv_heads * cfg.dim],
            pos: 0,
        };
        ReferenceDecoder { cfg, snapkv, heads, seqs: vec![empty; cfg.batch] }
    }

    /// Live tokens per sequence.
    pub fn lens(&self) -> Vec<usize> {
        self.seqs.iter().map(|s| s.keys[0].len() / self.cfg.dim).collect()
    }

    fn round(&self, v: &[f32]) -> Vec<f32> {
        round_to(self.cfg.dtype, v)
    }

    /// Prefills `slot` with a prompt of `len` tokens: `q[Hq, T, D]`, `k`, `v` `[Hkv, T, D]`, `g`
    /// on RAT+. `attention` `None` skips the prompt's attention output (empty `out`, `lse`);
    /// `kept` overrides SnapKV's kept set (a backend's, which may differ from the
    /// reference's where scores tie within rounding); `None` uses the reference's.
    #[allow(clippy::too_many_arguments)]
    pub fn prefill(
        &mut self,
        slot: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: Option<&[f32]>,
        len: usize,
        attention: Option<PrefillAttention>,
        kept: Option<&[i32]>,
    ) -> Result<ReferencePrefill> {
        let c = self.cfg;
        let (d, hkv, hq) = (c.dim, c.kv_heads, c.q_heads);
        if slot >= c.batch || len == 0 || k.len() != hkv * len * d || q.len() != hq * len * d {
            return Err(Error::invalid("reference_prefill", "prompt", "a slot below batch and [H, len, D] tensors"));
        }
        let (keys, values, state) = match (c.backbone, g) {
            (Backbone::RatPlus { rope_base }, Some(g)) => {
                let m = reference::ratplus_kv(k, v, g, hkv, d, rope_base as f64);
                let (kt, vt) = (self.round(&m.k_tilde), self.round(&m.v_tilde));
                let last = |x: &[f32]| -> Vec<f32> {
                    (0..hkv).flat_map(|h| x[(h * len + len - 1) * d..(h * len + len) * d].to_vec()).collect()
                };
                let state = (last(&kt), last(&vt));
                (self.round(&m.k_rope), vt, Some(state))
            }
            (Backbone::Attention, None) => (k.to_vec(), v.to_vec(), None),
            _ => return Err(Error::invalid("reference_prefill", "g", "given exactly on the RAT+ backbone")),
        };
        let scale = c.scale as f64;
        let (out, lse) = match attention {
            None => (Vec::new(), Vec::new()),
            Some(PrefillAttention::Dense) => {
                let a = reference::attention_dense(q, &keys, &values, hq, hkv, d, true, scale);
                (a.out, a.lse)
            }
            Some(PrefillAttention::Moba(m)) => {
                let cfg = m.select.config(len)?;
                let a = reference::moba_prefill(q, &keys, &values, hq, hkv, d, &cfg, scale);
                (a.out, a.lse)
            }
        };
        // The cache rows: every token, or SnapKV's kept set per output head.
        let kept: Option<Vec<i32>> = match (self.snapkv, kept) {
            (Some(_), Some(given)) => Some(given.to_vec()),
            (Some(snap), None) => {
                let shape = crate::methods::Shape { q_heads: hq, kv_heads: hkv, seq: len, dim: d, dtype: c.dtype };
                let op: SnapKvCompress = snap.problem(shape)?;
                let w = op.obs_len();
                let q_obs: Vec<f32> =
                    (0..hq).flat_map(|h| q[(h * len + len - w) * d..(h * len + len) * d].to_vec()).collect();
                let cfg = op.settings.reference_config();
                Some(reference::snapkv_compress(&q_obs, &keys, hq, hkv, d, &cfg).kept)
            }
            (None, _) => None,
        };
        let rep = self.heads / hkv;
        let n = kept.as_ref().map_or(len, |kp| kp.len() / self.heads);
        if n > c.capacity {
            return Err(Error::invalid("reference_prefill", "len", format!("at most the capacity {}", c.capacity)));
        }
        let seq = &mut self.seqs[slot];
        for head in 0..self.heads {
            let src = head / rep;
            let (kr, vr) = (&mut seq.keys[head], &mut seq.values[head]);
            kr.clear();
            vr.clear();
            for e in 0..n {
                let j = kept.as_ref().map_or(e, |kp| kp[head * n + e] as usize);
                kr.extend_from_slice(&keys[(src * len + j) * d..(src * len + j + 1) * d]);
                vr.extend_from_slice(&values[(src * len + j) * d..(src * len + j + 1) * d]);
            }
        }
        if let Some((hk, hv)) = state {
            (seq.hk, seq.hv) = (hk, hv);
        }
        seq.pos = len;
        Ok(ReferencePrefill { out, lse, kept })
    }

    /// One step of every sequence: [`ReferenceDecoder::append`] then
    /// [`ReferenceDecoder::attend`].
    pub fn step(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: Option<&[f32]>,
        method: &DecodeMethod,
    ) -> Result<ReferenceStep> {
        self.append(k, v, g)?;
        self.attend(q, method)
    }

    /// Appends one token to every sequence: `k`, `v` `[B, Hkv, D]`, `g` on RAT+.
    pub fn append(&mut self, k: &[f32], v: &[f32], g: Option<&[f32]>) -> Result<()> {
        let c = self.cfg;
        let (d, hkv) = (c.dim, c.kv_heads);
        let rep = self.heads / hkv;
        for b in 0..c.batch {
            if self.seqs[b].keys[0].len() / d >= c.capacity {
                return Err(Error::invalid("reference_step", "capacity", format!("room in sequence {b}")));
            }
            let r = b * hkv * d..(b + 1) * hkv * d;
            let (rows_k, rows_v) = match (c.backbone, g) {
                (Backbone::RatPlus { rope_base }, Some(g)) => {
                    let s = &self.seqs[b];
                    let st = reference::ratplus_step(
                        &k[r.clone()],
                        &v[r.clone()],
                        &g[r],
                        &s.hk,
                        &s.hv,
                        d,
                        rope_base as f64,
                        s.pos as i32,
                    );
                    let rows = (self.round(&st.k_rope), self.round(&st.hv_new));
                    let s = &mut self.seqs[b];
                    (s.hk, s.hv) = (st.hk_new, st.hv_new);
                    rows
                }
                (Backbone::Attention, None) => (k[r.clone()].to_vec(), v[r].to_vec()),
                _ => return Err(Error::invalid("reference_step", "g", "given exactly on the RAT+ backbone")),
            };
            let s = &mut self.seqs[b];
            for head in 0..self.heads {
                let src = head / rep;
                s.keys[head].extend_from_slice(&rows_k[src * d..(src + 1) * d]);
                s.values[head].extend_from_slice(&rows_v[src * d..(src + 1) * d]);
            }
            s.pos += 1;
        }
        Ok(())
    }

    /// Decode attention of `q[B, Hq, D]` over everything each sequence holds, by `method`.
    pub fn attend(&self, q: &[f32], method: &DecodeMethod) -> Result<ReferenceStep> {
        let c = self.cfg;
        let (d, hq, bs) = (c.dim, c.q_heads, c.block_size);
        let select = method.select()?;
        let op = crate::ops::CacheDecode::new(c.shape(self.heads), hq, select, c.scale)?;
        let width = op.width();
        let (mut out, mut lse, mut selected, mut scores) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (b, s) in self.seqs.iter().enumerate() {
            let t = s.keys[0].len() / d;
            let keys: Vec<f32> = s.keys.concat();
            let values: Vec<f32> = s.values.concat();
            let qb = &q[b * hq * d..(b + 1) * hq * d];
            let scale = c.scale as f64;
            match select {
                CacheSelect::Dense => {
                    let a = reference::attention_dense(qb, &keys, &values, hq, self.heads, d, false, scale);
                    out.extend(a.out);
                    lse.extend(a.lse);
                }
                CacheSelect::Blocks { budget, force_first, n_local, selector } => {
                    let nb = t.div_ceil(bs);
                    let cfg =
                        SelectConfig { block_size: bs, n_blocks: budget.blocks(nb), force_first, n_local, selector };
                    let a = reference::quest_decode(
                        qb,
                        &keys,
                        &values,
                        None,
                        hq,
                        self.heads,
                        d,
                        &cfg,
                        reference::GqaMode::PerHead,
                        scale,
                    );
                    out.extend(a.out);
                    lse.extend(a.lse);
                    scores.push(a.scores);
                    for h in 0..hq {
                        selected.extend_from_slice(&a.selected[h * a.n_sel..(h + 1) * a.n_sel]);
                        selected.extend(std::iter::repeat_n(-1, width - a.n_sel));
                    }
                }
            }
        }
        let selected = matches!(select, CacheSelect::Blocks { .. }).then_some(selected);
        Ok(ReferenceStep { out: self.round(&out), lse, selected, scores })
    }
}

fn round_to(dtype: DType, v: &[f32]) -> Vec<f32> {
    HostData::from_f32(dtype, v).to_f32().unwrap_or_default()
}
