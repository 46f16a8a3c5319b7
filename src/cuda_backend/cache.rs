//! The decoder's cache ops on the cuda backend (`cache_fill`, `cache_append`, `cache_advance`,
//! `cache_decode`; see `kvsparse::ops::CacheFill` and friends), kernels in `cuda/cache.cu` and,
//! for the decode attention, `cuda/attention.cu`'s grouped decode run over the batch.
//!
//! No launch shape, split count or host decision depends on the live lengths: the kernels read
//! `lens` / `pos` on the device, and nothing here reads a device value or synchronises, so a
//! decode step (append, advance, decode) can be recorded into a CUDA graph
//! ([`Cuda::capture`](super::Cuda::capture)) and replayed while the lengths grow.

use super::ops::{block_rows, decode_fits, elementwise, head_spec, warp_rows, DecodeKeys, QUEST_UNION_MAX_NB};
use super::{device_err, Cuda, CudaBuffer, Family, Spec};
use crate::ops::{self, *};
use crate::params::{AttentionParams, SelectParams};
use crate::Result;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Threads of `quest_union` (as in `quest_decode`).
const UNION_THREADS: u32 = 256;

#[allow(clippy::too_many_arguments)]
impl Cuda {
    pub(crate) fn fill_cache(
        &self,
        op: &CacheFill,
        k_src: &CudaBuffer,
        v_src: &CudaBuffer,
        idx: Option<&CudaBuffer>,
        cache: [&mut CudaBuffer; 5],
        lens: &mut CudaBuffer,
        pos: &mut CudaBuffer,
    ) -> Result<()> {
        let [k, v, lo, hi, mean] = cache;
        op.check(k_src, v_src, idx, [&*k, &*v, &*lo, &*hi, &*mean], &*lens, &*pos)?;
        let s = op.shape;
        let p = op.params();
        let threads = s.heads * op.n_tokens.div_ceil(s.block_size) * s.dim;
        let f = self.function(Family::Cache, Spec::dtype(s.dtype), "cache_fill")?;
        let mut b = self.stream.launch_builder(&f);
        // Without idx the kernel never reads it: k_src stands in for the pointer.
        b.arg(&p).arg(&k_src.slice).arg(&v_src.slice).arg(idx.map_or(&k_src.slice, |i| &i.slice));
        b.arg(&mut k.slice).arg(&mut v.slice).arg(&mut lo.slice).arg(&mut hi.slice).arg(&mut mean.slice);
        b.arg(&mut lens.slice).arg(&mut pos.slice);
        // SAFETY: matches `cache_fill(p, k_src, v_src, idx, k, v, kmin, kmax, kmean, lens, pos)`;
        // k_src/v_src [Hs, Tsrc, D], idx [Hc, n] i32 when indexed, the cache buffers, lens and
        // pos [B] i32 are checked; one thread per (cache head, block < ceil(n / bs), channel),
        // guarded against that count; tokens stay below n <= Tcap, idx entries outside 0..Tsrc
        // read nothing; seq < B (checked).
        unsafe { b.launch(elementwise(threads)) }.map_err(|e| device_err("cache_fill", e))?;
        Ok(())
    }

    pub(crate) fn append_cache(
        &self,
        op: &CacheAppend,
        k_new: &CudaBuffer,
        v_new: &CudaBuffer,
        g: Option<&CudaBuffer>,
        lens: &CudaBuffer,
        pos: &CudaBuffer,
        state: Option<(&mut CudaBuffer, &mut CudaBuffer)>,
        cache: [&mut CudaBuffer; 5],
    ) -> Result<()> {
        let [k, v, lo, hi, mean] = cache;
        op.check(
            k_new,
            v_new,
            g,
            lens,
            pos,
            state.as_ref().map(|(a, b)| (&**a, &**b)),
            [&*k, &*v, &*lo, &*hi, &*mean],
        )?;
        let s = op.shape;
        let p = op.params();
        let per_row = if op.ratplus { s.dim / 2 } else { s.dim };
        let f = self.function(Family::Cache, Spec::dtype(s.dtype), "cache_append")?;
        let mut b = self.stream.launch_builder(&f);
        // Off the RAT+ backbone g, hk and hv are never read or written: k_new stands in.
        b.arg(&p).arg(&k_new.slice).arg(&v_new.slice).arg(g.map_or(&k_new.slice, |g| &g.slice));
        b.arg(&lens.slice).arg(&pos.slice);
        match state {
            Some((hk, hv)) => b.arg(&mut hk.slice).arg(&mut hv.slice),
            None => b.arg(&k_new.slice).arg(&k_new.slice),
        };
        b.arg(&mut k.slice).arg(&mut v.slice).arg(&mut lo.slice).arg(&mut hi.slice).arg(&mut mean.slice);
        // SAFETY: matches `cache_append(p, k_new, v_new, g, lens, pos, hk, hv, k, v, kmin, kmax,
        // kmean)`; k_new/v_new [B, Hs, D], g/hk/hv [B, Hs, D] f32 when ratplus (D even), lens and
        // pos [B] i32 and the cache buffers are checked; one thread per (b, s, channel or
        // rotation pair), guarded against B*Hs*per_row; a slot t = lens[b] outside 0..Tcap is
        // skipped, so every cache index stays inside [B, Hc, Tcap, D] / [B, Hc, NB, D].
        unsafe { b.launch(elementwise(s.batch * op.kv_heads * per_row)) }.map_err(|e| device_err("cache_append", e))?;
        Ok(())
    }

    pub(crate) fn advance_cache(&self, op: &CacheAdvance, lens: &mut CudaBuffer, pos: &mut CudaBuffer) -> Result<()> {
        ops::check(op, &[&*lens, &*pos])?;
        let p = op.params();
        // The module of any storage dtype has the kernel (it touches no float tensor).
        let f = self.function(Family::Cache, Spec::dtype(crate::DType::F32), "cache_advance")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&mut lens.slice).arg(&mut pos.slice);
        // SAFETY: matches `cache_advance(p, lens, pos)`; lens and pos hold B i32 (checked);
        // guarded b < B.
        unsafe { b.launch(elementwise(op.batch)) }.map_err(|e| device_err("cache_advance", e))?;
        Ok(())
    }

    pub(crate) fn decode_cache(
        &self,
        op: &CacheDecode,
        q: &CudaBuffer,
        k: &CudaBuffer,
        v: &CudaBuffer,
        lens: &CudaBuffer,
        stats: Option<(&CudaBuffer, &CudaBuffer)>,
        out: &mut CudaBuffer,
        lse: &mut CudaBuffer,
        selected: Option<&mut CudaBuffer>,
        ranking: Option<&mut CudaBuffer>,
    ) -> Result<()> {
        op.check(q, k, v, lens, stats, out, lse, selected.as_deref(), ranking.as_deref())?;
        let s = op.shape;
        let spec = head_spec(CacheDecode::NAME, s.dtype, s.dim)?;
        let (batch, hq, hc, nb) = (s.batch, op.q_heads, s.heads, s.nb());
        let ap = AttentionParams {
            q_heads: hq as u32,
            kv_heads: hc as u32,
            q_len: 1,
            kv_len: s.capacity as u32,
            dim: s.dim as u32,
            causal: 0,
            scale: op.scale,
            idx_heads: hq as u32,
            n_idx: 0,
            block_size: s.block_size as u32,
            splits: 1,
            _pad0: 0,
        };
        let (selected, ranking) = match (op.select, selected, ranking) {
            (CacheSelect::Dense, ..) => {
                if decode_fits(spec, s.dim) {
                    let keys = DecodeKeys::Dense;
                    return self.decode(spec, ap, keys, batch, Some(&lens.slice), q, k, v, out, lse);
                }
                return self.cache_rows(spec, ap, batch, q, k, v, lens, None, out, lse);
            }
            (CacheSelect::Blocks { .. }, Some(sel), Some(rank)) => (sel, rank),
            // `check` requires both for Blocks.
            _ => return Err(crate::Error::invalid(CacheDecode::NAME, "selected", "present for Blocks")),
        };
        let p = op.params();
        let module = Spec::dtype(s.dtype);
        // 1. Ranking [B, Hq, NB]: Quest bounds or random keys of the live blocks.
        let f = self.function(Family::Cache, module, "cache_rank")?;
        let mut b = self.stream.launch_builder(&f);
        // The random selector reads no statistics: q stands in for kmin / kmax.
        let (lo, hi) = stats.map_or((&q.slice, &q.slice), |(lo, hi)| (&lo.slice, &hi.slice));
        b.arg(&p).arg(&q.slice).arg(lo).arg(hi).arg(&lens.slice).arg(&mut ranking.slice);
        // SAFETY: matches `cache_rank(p, q, kmin, kmax, lens, ranking)`; q [B, Hq, D], kmin/kmax
        // [B, Hc, NB, D] (read for the score selector only, when they are checked present), lens
        // [B] i32 and ranking [B, Hq, NB] 4-byte words are checked; one warp per (b, h, block),
        // guarded against B*Hq*NB; statistics read only for blocks below ceil(min(lens[b], Tcap) / bs).
        unsafe { b.launch(warp_rows(batch * hq * nb, 1)) }.map_err(|e| device_err("cache_rank", e))?;
        // 2. Forced top-k of every (b, h) row.
        let f = self.function(Family::Cache, module, "cache_select")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&lens.slice).arg(&ranking.slice).arg(&mut selected.slice);
        // SAFETY: matches `cache_select(p, lens, ranking, selected)`; lens [B] i32, ranking
        // [B, Hq, NB] written above, selected [B, Hq, width] i32 checked; one CTA per row
        // (guarded row < B*Hq), blocks below NB_b <= NB, writes below width.
        unsafe { b.launch(block_rows(batch * hq, nb)) }.map_err(|e| device_err("cache_select", e))?;
        // 3. Attention over the selected blocks' live tokens: with GQA over the union of each
        // kv head's group (each block read once for the group, per-head masks), as quest_decode.
        let group = hq / hc;
        let width = op.width();
        if !decode_fits(spec, s.dim) {
            let mut sp = ap;
            sp.n_idx = width as u32;
            return self.cache_rows(spec, sp, batch, q, k, v, lens, Some(&*selected), out, lse);
        }
        if group == 1 || group > 32 || nb > QUEST_UNION_MAX_NB {
            let mut sp = ap;
            sp.n_idx = width as u32;
            let keys = DecodeKeys::Sparse(&selected.slice);
            return self.decode(spec, sp, keys, batch, Some(&lens.slice), q, k, v, out, lse);
        }
        let cap = nb.min(group * width);
        let rows = batch * hc;
        let mut uidx = self.scratch(4 * rows * cap)?;
        let mut umask = self.scratch(4 * rows * cap)?;
        let mut ucount = self.scratch(4 * rows)?;
        let up = SelectParams { rows: (batch * hq) as u32, nb: nb as u32, width: width as u32, ..Default::default() };
        let (group32, cap32) = (group as u32, cap as u32);
        let f = self.function(Family::Select, Spec::NONE, "quest_union")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&up).arg(&selected.slice).arg(&mut uidx).arg(&mut umask).arg(&mut ucount).arg(&group32).arg(&cap32);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (UNION_THREADS, 1, 1),
            shared_mem_bytes: 4 * nb as u32,
        };
        // SAFETY: matches `quest_union(p, selected, uidx, umask, ucount, group, cap)`; the B*Hc
        // (sequence, cache head) rows are its kv heads: selected [B*Hc*group, width] i32 written
        // by cache_select above, uidx / umask sized B*Hc*cap and ucount B*Hc here, every entry
        // below cap written; block ids checked against nb; nb words of dynamic shared memory
        // (nb <= QUEST_UNION_MAX_NB, within 48 KiB); group <= 32.
        unsafe { b.launch(cfg) }.map_err(|e| device_err("quest_union", e))?;
        let mut up = ap;
        up.idx_heads = hc as u32;
        up.n_idx = cap32;
        let keys = DecodeKeys::Masked(&uidx, &umask, &ucount);
        self.decode(spec, up, keys, batch, Some(&lens.slice), q, k, v, out, lse)
    }

    /// `attention_decode_rows` (one warp per (sequence, query head), any head dim) then the
    /// split-K merge: dense over the live tokens without `idx`, else over the tokens of the
    /// per-query-head rows `idx` [B, Hq, n_idx]. `p` describes one sequence; the split count
    /// depends on the rows and the key capacity only.
    fn cache_rows(
        &self,
        spec: Spec,
        mut p: AttentionParams,
        batch: usize,
        q: &CudaBuffer,
        k: &CudaBuffer,
        v: &CudaBuffer,
        lens: &CudaBuffer,
        idx: Option<&CudaBuffer>,
        out: &mut CudaBuffer,
        lse: &mut CudaBuffer,
    ) -> Result<()> {
        let rows = batch * p.q_heads as usize;
        p.q_len = batch as u32; // the kernel's and the merge's rows: q_heads * q_len
        if idx.is_none() {
            p.n_idx = 0;
        }
        let keys = if p.n_idx == 0 { p.kv_len as usize } else { p.n_idx as usize * p.block_size.max(1) as usize };
        p.splits = self.splits(rows, keys);
        let (mut part_out, mut part_lse) = self.split_partials(rows, p.splits, p.dim as usize)?;
        let f = self.function(Family::Attention, spec, "attention_decode_rows")?;
        let mut b = self.stream.launch_builder(&f);
        // Dense: the index pointer is never read; q stands in.
        b.arg(&p).arg(&q.slice).arg(&k.slice).arg(&v.slice).arg(&lens.slice).arg(idx.map_or(&q.slice, |i| &i.slice));
        b.arg(&mut out.slice).arg(&mut lse.slice).arg(&mut part_out).arg(&mut part_lse);
        // SAFETY: matches `attention_decode_rows(p, q, k, v, lens, idx, out, lse, part_out,
        // part_lse)`; q/out [B, Hq, D], k/v [B, Hc, Tcap, D], lens [B] i32, lse [B, Hq] and idx
        // [B, Hq, n_idx] i32 (read when n_idx > 0) are checked by the caller; D <= 32 * dpl of
        // the module (head_spec); part buffers hold B*Hq*splits rows when splits > 1; the
        // kernel guards row < Hq*B and every token against min(lens[b], Tcap).
        unsafe { b.launch(warp_rows(rows, p.splits)) }.map_err(|e| device_err("attention_decode_rows", e))?;
        if p.splits > 1 {
            self.merge(spec, &p, &part_out, &part_lse, out, lse)?;
        }
        Ok(())
    }
}
