//! The CPU backend: every op runs the float64 reference (`kvsparse-reference`). It is the
//! oracle the GPU backends are tested against and the fallback when no GPU exists.
//!
//! Half-precision inputs are widened to f32 before the reference runs and outputs are rounded
//! back to the storage dtype, as a GPU kernel with f32 accumulation would.

use crate::ops::{self, *};
use crate::{Backend, DType, DeviceBuffer, Error, HostData, Result};
use kvsparse_reference as reference;

/// The CPU backend. Always available.
///
/// ```
/// use kvsparse::{Backend, Cpu, DType};
/// let cpu = Cpu::new();
/// assert_eq!(cpu.name(), "cpu");
/// assert!(cpu.supports(DType::BF16));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Cpu;

impl Cpu {
    /// The CPU backend (no setup needed).
    pub fn new() -> Self {
        Cpu
    }
}

/// A host vector standing in for device memory.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuBuffer(pub HostData);

impl DeviceBuffer for CpuBuffer {
    fn dtype(&self) -> DType {
        self.0.dtype()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

fn f32s(b: &CpuBuffer) -> Vec<f32> {
    b.0.to_f32().unwrap_or_default()
}
fn i32s(b: &CpuBuffer) -> &[i32] {
    match &b.0 {
        HostData::I32(v) => v,
        _ => &[],
    }
}
fn u32s(b: &CpuBuffer) -> &[u32] {
    match &b.0 {
        HostData::U32(v) => v,
        _ => &[],
    }
}
/// Stores f32 results, rounded to the output buffer's storage dtype.
fn put_f32(out: &mut CpuBuffer, values: &[f32]) {
    out.0 = HostData::from_f32(out.0.dtype(), values);
}
fn put_i32(out: &mut CpuBuffer, values: Vec<i32>) {
    out.0 = HostData::I32(values);
}
fn put_u32(out: &mut CpuBuffer, values: Vec<u32>) {
    out.0 = HostData::U32(values);
}
/// Writes a ranking output: f32 scores or u32 keys, whichever the buffer holds.
fn put_ranking(out: &mut CpuBuffer, scores: &[f32], keys: Vec<u32>) {
    match out.0.dtype() {
        DType::U32 => put_u32(out, keys),
        _ => put_f32(out, scores),
    }
}
/// Rounds a float input to f32 storage precision for the reference (already f32 values).
fn no_nan(op: &'static str, arg: &'static str, v: &[f32]) -> Result<()> {
    if v.iter().any(|x| x.is_nan()) {
        return Err(Error::invalid(op, arg, "no NaN (NaN scores cannot be ranked)"));
    }
    Ok(())
}
fn in_range(op: &'static str, arg: &'static str, v: &[i32], lo: i32, hi: usize) -> Result<()> {
    if let Some(bad) = v.iter().find(|&&x| x < lo || x as i64 >= hi as i64) {
        return Err(Error::invalid(op, arg, format!("entries in {lo}..{hi}, found {bad}")));
    }
    Ok(())
}

impl Backend for Cpu {
    type Buffer = CpuBuffer;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn device_name(&self) -> String {
        format!(
            "host CPU ({} threads available), float64 reference",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        )
    }
    fn supports(&self, _dtype: DType) -> bool {
        true
    }
    fn upload(&self, data: &HostData) -> Result<CpuBuffer> {
        Ok(CpuBuffer(data.clone()))
    }
    fn download(&self, buf: &CpuBuffer) -> Result<HostData> {
        Ok(buf.0.clone())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn pcg_hash(&self, op: &PcgHash, v: &CpuBuffer, hash: &mut CpuBuffer) -> Result<()> {
        ops::check(op, &[v, hash])?;
        put_u32(hash, u32s(v).iter().map(|&x| reference::pcg_hash(x)).collect());
        Ok(())
    }

    fn random_key(&self, op: &RandomKey, rows: &CpuBuffer, idx: &CpuBuffer, keys: &mut CpuBuffer) -> Result<()> {
        ops::check(op, &[rows, idx, keys])?;
        let out = u32s(rows)
            .iter()
            .flat_map(|&r| u32s(idx).iter().map(move |&i| reference::random_key(op.seed, r, i)))
            .collect();
        put_u32(keys, out);
        Ok(())
    }

    fn random_select(
        &self,
        op: &RandomSelect,
        rows: &CpuBuffer,
        cand: &CpuBuffer,
        keys: &mut CpuBuffer,
        selected: &mut CpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[rows, cand, keys, selected])?;
        let r = reference::random_select(op.seed, u32s(rows), i32s(cand), op.n, op.k);
        put_u32(keys, r.keys);
        put_i32(selected, r.selected);
        Ok(())
    }

    fn topk(&self, op: &TopK, scores: &CpuBuffer, indices: &mut CpuBuffer) -> Result<()> {
        ops::check(op, &[scores, indices])?;
        let s = f32s(scores);
        no_nan(TopK::NAME, "scores", &s)?;
        put_i32(indices, reference::topk(&s, op.n, op.k));
        Ok(())
    }

    fn decay_scan(
        &self,
        op: &DecayScan,
        x: &CpuBuffer,
        g: &CpuBuffer,
        h0: &CpuBuffer,
        y: &mut CpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[x, g, h0, y])?;
        let (x, g, h0) = (f32s(x), f32s(g), f32s(h0));
        let lane = op.seq * op.inner;
        let mut out = Vec::with_capacity(x.len());
        for o in 0..op.outer {
            let r = o * lane..(o + 1) * lane;
            out.extend(reference::decay_scan(&x[r.clone()], &g[r], &h0[o * op.inner..(o + 1) * op.inner]));
        }
        put_f32(y, &out);
        Ok(())
    }

    fn decay_step(
        &self,
        op: &DecayStep,
        x: &CpuBuffer,
        g: &CpuBuffer,
        h: &CpuBuffer,
        h_new: &mut CpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[x, g, h, h_new])?;
        put_f32(h_new, &reference::decay_step(&f32s(x), &f32s(g), &f32s(h)));
        Ok(())
    }

    fn rope(&self, op: &Rope, x: &CpuBuffer, pos: &CpuBuffer, y: &mut CpuBuffer) -> Result<()> {
        ops::check(op, &[x, pos, y])?;
        put_f32(y, &reference::rope(&f32s(x), i32s(pos), op.heads, op.dim, op.base as f64));
        Ok(())
    }

    fn ratplus_kv(
        &self,
        op: &RatplusKv,
        k: &CpuBuffer,
        v: &CpuBuffer,
        g: &CpuBuffer,
        k_tilde: &mut CpuBuffer,
        v_tilde: &mut CpuBuffer,
        k_rope: &mut CpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[k, v, g, k_tilde, v_tilde, k_rope])?;
        // The state is f32 on every backend; the scan output is rounded to the storage dtype once.
        let r = reference::ratplus_kv(&f32s(k), &f32s(v), &f32s(g), op.heads, op.dim, op.base as f64);
        put_f32(k_tilde, &r.k_tilde);
        put_f32(v_tilde, &r.v_tilde);
        put_f32(k_rope, &r.k_rope);
        Ok(())
    }

    fn ratplus_step(
        &self,
        op: &RatplusStep,
        k: &CpuBuffer,
        v: &CpuBuffer,
        g: &CpuBuffer,
        hk: &CpuBuffer,
        hv: &CpuBuffer,
        hk_new: &mut CpuBuffer,
        hv_new: &mut CpuBuffer,
        k_rope: &mut CpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[k, v, g, hk, hv, hk_new, hv_new, k_rope])?;
        let r = reference::ratplus_step(
            &f32s(k),
            &f32s(v),
            &f32s(g),
            &f32s(hk),
            &f32s(hv),
            op.dim,
            op.base as f64,
            op.pos as i32,
        );
        put_f32(hk_new, &r.hk_new);
        put_f32(hv_new, &r.hv_new);
        put_f32(k_rope, &r.k_rope);
        Ok(())
    }

    fn block_minmax(&self, op: &BlockMinmax, k: &CpuBuffer, kmin: &mut CpuBuffer, kmax: &mut CpuBuffer) -> Result<()> {
        ops::check(op, &[k, kmin, kmax])?;
        let s = &op.shape;
        let (lo, hi) = reference::block_minmax(&f32s(k), s.heads, s.dim, s.block_size);
        put_f32(kmin, &lo);
        put_f32(kmax, &hi);
        Ok(())
    }

    fn block_mean(&self, op: &BlockMean, k: &CpuBuffer, kmean: &mut CpuBuffer) -> Result<()> {
        ops::check(op, &[k, kmean])?;
        let s = &op.shape;
        put_f32(kmean, &reference::block_mean(&f32s(k), s.heads, s.dim, s.block_size));
        Ok(())
    }

    fn quest_scores(
        &self,
        op: &QuestScores,
        q: &CpuBuffer,
        kmin: &CpuBuffer,
        kmax: &CpuBuffer,
        scores: &mut CpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[q, kmin, kmax, scores])?;
        let s = reference::quest_scores(&f32s(q), &f32s(kmin), &f32s(kmax), op.q_heads, op.kv_heads, op.dim);
        put_f32(scores, &s);
        Ok(())
    }

    fn quest_decode(
        &self,
        op: &QuestDecode,
        q: &CpuBuffer,
        k: &CpuBuffer,
        v: &CpuBuffer,
        stats: Option<(&CpuBuffer, &CpuBuffer)>,
        selected: &mut CpuBuffer,
        out: &mut CpuBuffer,
        lse: &mut CpuBuffer,
        ranking: &mut CpuBuffer,
    ) -> Result<()> {
        match stats {
            Some((lo, hi)) => ops::check(op, &[q, k, v, lo, hi, selected, out, lse, ranking])?,
            None => ops::check(op, &[q, k, v, selected, out, lse, ranking])?,
        }
        let stats = stats.map(|(lo, hi)| (f32s(lo), f32s(hi)));
        let r = reference::quest_decode(
            &f32s(q),
            &f32s(k),
            &f32s(v),
            stats.as_ref().map(|(lo, hi)| (&lo[..], &hi[..])),
            op.q_heads,
            op.kv_heads,
            op.dim,
            &op.select,
            op.scale as f64,
        );
        put_i32(selected, r.selected);
        put_f32(out, &r.out);
        put_f32(lse, &r.lse);
        put_ranking(ranking, &r.scores, r.keys);
        Ok(())
    }

    fn moba_prefill(
        &self,
        op: &MobaPrefill,
        q: &CpuBuffer,
        k: &CpuBuffer,
        v: &CpuBuffer,
        out: &mut CpuBuffer,
        lse: &mut CpuBuffer,
        selected: &mut CpuBuffer,
        ranking: Option<&mut CpuBuffer>,
    ) -> Result<()> {
        match ranking.as_deref() {
            Some(r) => ops::check(op, &[q, k, v, out, lse, selected, r])?,
            None => ops::check(op, &[q, k, v, out, lse, selected])?,
        }
        let r = reference::moba_prefill(
            &f32s(q),
            &f32s(k),
            &f32s(v),
            op.q_heads,
            op.kv_heads,
            op.dim,
            &op.select,
            op.scale as f64,
        );
        put_f32(out, &r.out);
        put_f32(lse, &r.lse);
        put_i32(selected, r.selected);
        if let Some(rank) = ranking {
            put_ranking(rank, &r.gate, r.keys);
        }
        Ok(())
    }

    fn snapkv_compress(
        &self,
        op: &SnapKvCompress,
        q_obs: &CpuBuffer,
        k: &CpuBuffer,
        kept: &mut CpuBuffer,
        ranking: Option<&mut CpuBuffer>,
    ) -> Result<()> {
        match ranking.as_deref() {
            Some(r) => ops::check(op, &[q_obs, k, kept, r])?,
            None => ops::check(op, &[q_obs, k, kept])?,
        }
        let s = &op.settings;
        let cfg = reference::SnapKvConfig {
            capacity: s.capacity,
            window: s.window,
            kernel: s.kernel,
            pooling: s.pooling,
            gqa: s.gqa,
            selector: s.selector,
            scale: s.scale as f64,
        };
        let r = reference::snapkv_compress(&f32s(q_obs), &f32s(k), op.q_heads, op.kv_heads, op.dim, &cfg);
        put_i32(kept, r.kept);
        if let Some(rank) = ranking {
            put_ranking(rank, &r.scores, r.keys);
        }
        Ok(())
    }

    fn attention_dense(
        &self,
        op: &AttentionDense,
        q: &CpuBuffer,
        k: &CpuBuffer,
        v: &CpuBuffer,
        out: &mut CpuBuffer,
        lse: &mut CpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[q, k, v, out, lse])?;
        let r = reference::attention_dense(
            &f32s(q),
            &f32s(k),
            &f32s(v),
            op.q_heads,
            op.kv_heads,
            op.dim,
            op.causal,
            op.scale as f64,
        );
        put_f32(out, &r.out);
        put_f32(lse, &r.lse);
        Ok(())
    }

    fn attention_sparse(
        &self,
        op: &AttentionSparse,
        q: &CpuBuffer,
        k: &CpuBuffer,
        v: &CpuBuffer,
        idx: &CpuBuffer,
        out: &mut CpuBuffer,
        lse: &mut CpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[q, k, v, idx, out, lse])?;
        in_range(AttentionSparse::NAME, "idx", i32s(idx), -1, op.seq)?;
        let r = reference::attention_sparse(
            &f32s(q),
            &f32s(k),
            &f32s(v),
            i32s(idx),
            op.idx_heads,
            op.q_heads,
            op.kv_heads,
            op.dim,
            op.scale as f64,
        );
        put_f32(out, &r.out);
        put_f32(lse, &r.lse);
        Ok(())
    }

    fn hit_rate(
        &self,
        op: &HitRate,
        sel: &CpuBuffer,
        gold: &CpuBuffer,
        head_hit: &mut CpuBuffer,
        rate: &mut CpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[sel, gold, head_hit, rate])?;
        in_range(HitRate::NAME, "gold", i32s(gold), 0, op.n * op.block_size)?;
        let r = reference::hit_rate(i32s(sel), i32s(gold), op.heads, op.n, op.block_size);
        put_i32(head_hit, r.head_hit);
        put_f32(rate, &[r.rate]);
        Ok(())
    }
}
