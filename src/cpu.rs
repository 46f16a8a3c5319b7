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
            op.gqa,
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
        let cfg = op.settings.reference_config();
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

    fn cache_fill(
        &self,
        op: &CacheFill,
        k_src: &CpuBuffer,
        v_src: &CpuBuffer,
        idx: Option<&CpuBuffer>,
        k: &mut CpuBuffer,
        v: &mut CpuBuffer,
        kmin: &mut CpuBuffer,
        kmax: &mut CpuBuffer,
        kmean: &mut CpuBuffer,
        lens: &mut CpuBuffer,
        pos: &mut CpuBuffer,
    ) -> Result<()> {
        op.check(k_src, v_src, idx, [k, v, kmin, kmax, kmean], lens, pos)?;
        if let Some(idx) = idx {
            in_range(CacheFill::NAME, "idx", i32s(idx), 0, op.src_len)?;
        }
        let s = op.shape;
        let (n, d, rep) = (op.n_tokens, s.dim, s.heads / op.src_heads);
        let (ks, vs) = (f32s(k_src), f32s(v_src));
        // The sequence's tokens as [Hc, n, D], then written into its slots.
        let mut kt = Vec::with_capacity(s.heads * n * d);
        let mut vt = Vec::with_capacity(s.heads * n * d);
        for c in 0..s.heads {
            for e in 0..n {
                let j = idx.map_or(e, |i| i32s(i)[c * n + e] as usize);
                let row = ((c / rep) * op.src_len + j) * d;
                kt.extend_from_slice(&ks[row..row + d]);
                vt.extend_from_slice(&vs[row..row + d]);
            }
        }
        // Round to the storage dtype first: the statistics are of the stored keys.
        let kt = HostData::from_f32(s.dtype, &kt).to_f32().unwrap_or_default();
        let mut cache = CacheHost::new(s, k, v, kmin, kmax, kmean);
        for c in 0..s.heads {
            for e in 0..n {
                let at = cache.slot(op.seq, c, e);
                cache.k[at..at + d].copy_from_slice(&kt[(c * n + e) * d..(c * n + e + 1) * d]);
                cache.v[at..at + d].copy_from_slice(&vt[(c * n + e) * d..(c * n + e + 1) * d]);
            }
            for blk in 0..n.div_ceil(s.block_size) {
                cache.restat(op.seq, c, blk, n);
            }
        }
        cache.store(k, v, kmin, kmax, kmean);
        set_i32(lens, op.seq, n as i32);
        set_i32(pos, op.seq, op.pos as i32);
        Ok(())
    }

    fn cache_append(
        &self,
        op: &CacheAppend,
        k_new: &CpuBuffer,
        v_new: &CpuBuffer,
        g: Option<&CpuBuffer>,
        lens: &CpuBuffer,
        pos: &CpuBuffer,
        state: Option<(&mut CpuBuffer, &mut CpuBuffer)>,
        k: &mut CpuBuffer,
        v: &mut CpuBuffer,
        kmin: &mut CpuBuffer,
        kmax: &mut CpuBuffer,
        kmean: &mut CpuBuffer,
    ) -> Result<()> {
        op.check(k_new, v_new, g, lens, pos, state.as_ref().map(|(a, b)| (&**a, &**b)), [k, v, kmin, kmax, kmean])?;
        let s = op.shape;
        let (d, hs, rep) = (s.dim, op.kv_heads, s.heads / op.kv_heads);
        in_range(CacheAppend::NAME, "lens", i32s(lens), 0, s.capacity)?;
        in_range(CacheAppend::NAME, "pos", i32s(pos), 0, i32::MAX as usize)?;
        let (kn, vn) = (f32s(k_new), f32s(v_new));
        // The rows to store, [B, Hs, D], and on RAT+ the advanced states.
        let (rows_k, rows_v) = match (g, state) {
            (Some(g), Some((hk, hv))) => {
                let (gs, hks, hvs) = (f32s(g), f32s(hk), f32s(hv));
                let (mut rk, mut rv, mut nk, mut nv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for b in 0..s.batch {
                    let r = b * hs * d..(b + 1) * hs * d;
                    let st = reference::ratplus_step(
                        &kn[r.clone()],
                        &vn[r.clone()],
                        &gs[r.clone()],
                        &hks[r.clone()],
                        &hvs[r],
                        d,
                        op.base as f64,
                        i32s(pos)[b],
                    );
                    rk.extend_from_slice(&st.k_rope);
                    rv.extend_from_slice(&st.hv_new);
                    nk.extend_from_slice(&st.hk_new);
                    nv.extend_from_slice(&st.hv_new);
                }
                put_f32(hk, &nk);
                put_f32(hv, &nv);
                (rk, rv)
            }
            _ => (kn, vn),
        };
        let rows_k = HostData::from_f32(s.dtype, &rows_k).to_f32().unwrap_or_default();
        let rows_v = HostData::from_f32(s.dtype, &rows_v).to_f32().unwrap_or_default();
        let mut cache = CacheHost::new(s, k, v, kmin, kmax, kmean);
        for b in 0..s.batch {
            let t = i32s(lens)[b] as usize;
            for c in 0..s.heads {
                let src = (b * hs + c / rep) * d;
                let at = cache.slot(b, c, t);
                cache.k[at..at + d].copy_from_slice(&rows_k[src..src + d]);
                cache.v[at..at + d].copy_from_slice(&rows_v[src..src + d]);
                cache.restat(b, c, t / s.block_size, t + 1);
            }
        }
        cache.store(k, v, kmin, kmax, kmean);
        Ok(())
    }

    fn cache_advance(&self, op: &CacheAdvance, lens: &mut CpuBuffer, pos: &mut CpuBuffer) -> Result<()> {
        ops::check(op, &[&*lens, &*pos])?;
        for buf in [lens, pos] {
            let next: Vec<i32> = i32s(buf).iter().map(|x| x.wrapping_add(1)).collect();
            put_i32(buf, next);
        }
        Ok(())
    }

    fn cache_decode(
        &self,
        op: &CacheDecode,
        q: &CpuBuffer,
        k: &CpuBuffer,
        v: &CpuBuffer,
        lens: &CpuBuffer,
        stats: Option<(&CpuBuffer, &CpuBuffer)>,
        out: &mut CpuBuffer,
        lse: &mut CpuBuffer,
        selected: Option<&mut CpuBuffer>,
        ranking: Option<&mut CpuBuffer>,
    ) -> Result<()> {
        op.check(q, k, v, lens, stats, out, lse, selected.as_deref(), ranking.as_deref())?;
        let s = op.shape;
        in_range(CacheDecode::NAME, "lens", i32s(lens), 0, s.capacity + 1)?;
        let (d, hq, nb_cap, width) = (s.dim, op.q_heads, s.nb(), op.width());
        let (qs, ks, vs) = (f32s(q), f32s(k), f32s(v));
        let stats = stats.map(|(lo, hi)| (f32s(lo), f32s(hi)));
        let scale = op.scale as f64;
        let (mut o_all, mut l_all) = (Vec::new(), Vec::new());
        let (mut sel_all, mut score_all, mut key_all) = (Vec::new(), Vec::new(), Vec::new());
        for b in 0..s.batch {
            let t = i32s(lens)[b] as usize;
            let qb = &qs[b * hq * d..(b + 1) * hq * d];
            if t == 0 {
                o_all.extend(std::iter::repeat_n(0.0, hq * d));
                l_all.extend(std::iter::repeat_n(f32::NEG_INFINITY, hq));
                sel_all.extend(std::iter::repeat_n(-1, hq * width));
                score_all.extend(std::iter::repeat_n(f32::NEG_INFINITY, hq * nb_cap));
                key_all.extend(std::iter::repeat_n(0u32, hq * nb_cap));
                continue;
            }
            let live = |buf: &[f32], per: usize, n: usize| -> Vec<f32> {
                (0..s.heads).flat_map(|c| buf[((b * s.heads + c) * per) * d..][..n * d].iter().copied()).collect()
            };
            let (kl, vl) = (live(&ks, s.capacity, t), live(&vs, s.capacity, t));
            match op.select {
                CacheSelect::Dense => {
                    let r = reference::attention_dense(qb, &kl, &vl, hq, s.heads, d, false, scale);
                    o_all.extend(r.out);
                    l_all.extend(r.lse);
                }
                CacheSelect::Blocks { budget, force_first, n_local, selector } => {
                    let nb = t.div_ceil(s.block_size);
                    let cfg = SelectConfig {
                        block_size: s.block_size,
                        n_blocks: budget.blocks(nb),
                        force_first,
                        n_local,
                        selector,
                    };
                    let st = stats.as_ref().map(|(lo, hi)| (live(lo, nb_cap, nb), live(hi, nb_cap, nb)));
                    let r = reference::quest_decode(
                        qb,
                        &kl,
                        &vl,
                        st.as_ref().map(|(lo, hi)| (&lo[..], &hi[..])),
                        hq,
                        s.heads,
                        d,
                        &cfg,
                        reference::GqaMode::PerHead,
                        scale,
                    );
                    o_all.extend(r.out);
                    l_all.extend(r.lse);
                    for h in 0..hq {
                        sel_all.extend_from_slice(&r.selected[h * r.n_sel..(h + 1) * r.n_sel]);
                        sel_all.extend(std::iter::repeat_n(-1, width - r.n_sel));
                        let pad = nb_cap - nb;
                        if st.is_some() {
                            score_all.extend_from_slice(&r.scores[h * nb..(h + 1) * nb]);
                        }
                        score_all.extend(std::iter::repeat_n(f32::NEG_INFINITY, if st.is_some() { pad } else { 0 }));
                        if !r.keys.is_empty() {
                            key_all.extend_from_slice(&r.keys[h * nb..(h + 1) * nb]);
                            key_all.extend(std::iter::repeat_n(0u32, pad));
                        }
                    }
                }
            }
        }
        put_f32(out, &o_all);
        put_f32(lse, &l_all);
        if let Some(sel) = selected {
            put_i32(sel, sel_all);
        }
        if let Some(r) = ranking {
            put_ranking(r, &score_all, key_all);
        }
        Ok(())
    }
}

fn set_i32(buf: &mut CpuBuffer, at: usize, value: i32) {
    if let HostData::I32(v) = &mut buf.0 {
        v[at] = value;
    }
}

/// A cache widened to f32 for the CPU ops: slot arithmetic and the statistics of one block.
struct CacheHost {
    shape: CacheShape,
    k: Vec<f32>,
    v: Vec<f32>,
    kmin: Vec<f32>,
    kmax: Vec<f32>,
    kmean: Vec<f32>,
}

impl CacheHost {
    fn new(shape: CacheShape, k: &CpuBuffer, v: &CpuBuffer, lo: &CpuBuffer, hi: &CpuBuffer, mean: &CpuBuffer) -> Self {
        CacheHost { shape, k: f32s(k), v: f32s(v), kmin: f32s(lo), kmax: f32s(hi), kmean: f32s(mean) }
    }
    /// Element offset of slot `t` of head `c` of sequence `b`.
    fn slot(&self, b: usize, c: usize, t: usize) -> usize {
        ((b * self.shape.heads + c) * self.shape.capacity + t) * self.shape.dim
    }
    /// Recomputes the statistics of block `blk` of (`b`, `c`) over its tokens below `live`.
    fn restat(&mut self, b: usize, c: usize, blk: usize, live: usize) {
        let (d, bs) = (self.shape.dim, self.shape.block_size);
        let (t0, t1) = (blk * bs, ((blk + 1) * bs).min(live));
        let tokens = &self.k[self.slot(b, c, t0)..self.slot(b, c, t1)];
        let (lo, hi) = reference::block_minmax(tokens, 1, d, bs);
        let mean = reference::block_mean(tokens, 1, d, bs);
        let at = ((b * self.shape.heads + c) * self.shape.nb() + blk) * d;
        self.kmin[at..at + d].copy_from_slice(&lo);
        self.kmax[at..at + d].copy_from_slice(&hi);
        self.kmean[at..at + d].copy_from_slice(&mean);
    }
    fn store(self, k: &mut CpuBuffer, v: &mut CpuBuffer, lo: &mut CpuBuffer, hi: &mut CpuBuffer, mean: &mut CpuBuffer) {
        put_f32(k, &self.k);
        put_f32(v, &self.v);
        put_f32(lo, &self.kmin);
        put_f32(hi, &self.kmax);
        put_f32(mean, &self.kmean);
    }
}
