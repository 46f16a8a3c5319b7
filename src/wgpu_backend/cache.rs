//! The decoder's cache ops on the wgpu backend (`cache_fill`, `cache_append`, `cache_advance`,
//! `cache_decode`; see `kvsparse::ops::CacheFill` and friends), on `shaders/cache.wgsl`.
//!
//! Every dispatch size comes from the problem's shape (batch, heads, capacity, dim, block
//! size), never from the live lengths, which the kernels read on the device:
//!
//! | op | kernels | workgroups |
//! |---|---|---|
//! | fill | `cache_fill` | one invocation per (cache head, block of the `n` tokens, channel) |
//! | append | `cache_append` | B x Hs x ceil(units / 32), units = D (or D / 2 RAT+ rotation pairs); 256 invocations: 32 units x 8 token lanes |
//! | advance | `cache_advance` | one invocation per sequence |
//! | decode, dense | `cache_decode_dense` [+ `cache_merge`] | (B x Hq / GROUP) x splits [+ B x Hq] |
//! | decode, blocks | `cache_select`, `cache_decode_blocks` [+ `cache_merge`] | B x Hq, (B x Hq) x splits [+ B x Hq] |
//!
//! The decode splits are chosen from the capacity (dense) or the selection's widest token span
//! (blocks), so a replayed step launches the same grid whatever the lengths.

use super::pipeline::{Kernel, Spec};
use super::{too_large, Buf, Dispatch, Wgpu, WgpuBuffer};
use crate::ops::{self, *};
use crate::params::CacheParams;
use crate::{DType, Result};

/// Units (channels, or RAT+ rotation pairs) of one `cache_append` workgroup (`AP_UNITS`).
const APPEND_UNITS: usize = 32;

impl Wgpu {
    /// Spec of the non-decode cache kernels: the storage dtype and the head-dim bucket (the
    /// family's split-K arrays are sized by it even where unused).
    fn cache_spec(&self, dtype: DType, dim: usize) -> Result<Spec> {
        self.require(dtype)?;
        Ok(Spec::new(dtype).with_dim(dim))
    }

    /// Refuses, naming the buffer, a buffer of a slot the kernel cannot split that exceeds the
    /// binding limit, and kernels with more storage bindings than the adapter allows.
    fn cache_bindable(&self, op: &str, kernel: Kernel, whole: &[(&str, &WgpuBuffer)]) -> Result<()> {
        let max = self.limits.max_storage_buffers_per_shader_stage as usize;
        if kernel.bindings().len() > max {
            return Err(too_large(format!(
                "{op}: {} needs {} storage buffers per stage, the adapter allows {max}",
                kernel.label(),
                kernel.bindings().len()
            )));
        }
        let limit = self.binding_limit();
        for (name, b) in whole {
            if b.buffer.size() > limit {
                return Err(too_large(format!(
                    "{op}: buffer `{name}` of {} bytes exceeds max_storage_buffer_binding_size {limit}",
                    b.buffer.size()
                )));
            }
        }
        Ok(())
    }

    fn or_dummy_read<'a>(&'a self, b: Option<&'a WgpuBuffer>) -> Buf<'a> {
        b.map_or(self.dummy_read.buf(), |b| b.buf())
    }
}

#[allow(clippy::too_many_arguments)]
impl Wgpu {
    pub(crate) fn fill_cache(
        &self,
        op: &CacheFill,
        k_src: &WgpuBuffer,
        v_src: &WgpuBuffer,
        idx: Option<&WgpuBuffer>,
        cache: [&mut WgpuBuffer; 5],
        lens: &mut WgpuBuffer,
        pos: &mut WgpuBuffer,
    ) -> Result<()> {
        let [k, v, lo, hi, mean] = cache;
        op.check(k_src, v_src, idx, [&*k, &*v, &*lo, &*hi, &*mean], &*lens, &*pos)?;
        let s = op.shape;
        let spec = self.cache_spec(s.dtype, s.dim)?;
        let name = CacheFill::NAME;
        let mut whole = vec![("lens", &*lens), ("pos", &*pos)];
        whole.extend(idx.map(|i| ("idx", i)));
        self.cache_bindable(name, Kernel::CacheFill, &whole)?;
        let bufs = vec![
            k_src.buf(),
            v_src.buf(),
            self.or_dummy_read(idx),
            k.buf(),
            v.buf(),
            lo.buf(),
            hi.buf(),
            mean.buf(),
            lens.buf(),
            pos.buf(),
        ];
        let items = s.heads * op.n_tokens.div_ceil(s.block_size) * s.dim;
        let d = Dispatch::items(Kernel::CacheFill, spec, &op.params(), bufs, items);
        self.run(name, &[d])
    }

    pub(crate) fn append_cache(
        &self,
        op: &CacheAppend,
        k_new: &WgpuBuffer,
        v_new: &WgpuBuffer,
        g: Option<&WgpuBuffer>,
        lens: &WgpuBuffer,
        pos: &WgpuBuffer,
        state: Option<(&mut WgpuBuffer, &mut WgpuBuffer)>,
        cache: [&mut WgpuBuffer; 5],
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
        let spec = self.cache_spec(s.dtype, s.dim)?;
        let name = CacheAppend::NAME;
        let mut whole = vec![("lens", lens), ("pos", pos)];
        whole.extend(g.map(|g| ("g", g)));
        if let Some((hk, hv)) = &state {
            whole.extend([("hk", &**hk), ("hv", &**hv)]);
        }
        self.cache_bindable(name, Kernel::CacheAppend, &whole)?;
        let dw = self.dummy_write.buf();
        let (hk, hv) = state.as_ref().map_or((dw, dw), |(a, b)| (a.buf(), b.buf()));
        let bufs = vec![
            k_new.buf(),
            v_new.buf(),
            self.or_dummy_read(g),
            lens.buf(),
            pos.buf(),
            hk,
            hv,
            k.buf(),
            v.buf(),
            lo.buf(),
            hi.buf(),
            mean.buf(),
        ];
        // Units (channels, or RAT+ rotation pairs) per workgroup: cache.wgsl's AP_UNITS.
        let width = if op.ratplus { s.dim / 2 } else { s.dim };
        let groups = s.batch * op.kv_heads * width.div_ceil(APPEND_UNITS);
        let d = Dispatch::rows(Kernel::CacheAppend, spec, &op.params(), bufs, groups);
        self.run(name, &[d])
    }

    pub(crate) fn advance_cache(&self, op: &CacheAdvance, lens: &mut WgpuBuffer, pos: &mut WgpuBuffer) -> Result<()> {
        ops::check(op, &[&*lens, &*pos])?;
        let name = CacheAdvance::NAME;
        self.cache_bindable(name, Kernel::CacheAdvance, &[("lens", &*lens), ("pos", &*pos)])?;
        let spec = Spec::new(DType::F32).with_dim(1);
        let d = Dispatch::items(Kernel::CacheAdvance, spec, &op.params(), vec![lens.buf(), pos.buf()], op.batch);
        self.run(name, &[d])
    }

    pub(crate) fn decode_cache(
        &self,
        op: &CacheDecode,
        q: &WgpuBuffer,
        k: &WgpuBuffer,
        v: &WgpuBuffer,
        lens: &WgpuBuffer,
        stats: Option<(&WgpuBuffer, &WgpuBuffer)>,
        out: &mut WgpuBuffer,
        lse: &mut WgpuBuffer,
        selected: Option<&mut WgpuBuffer>,
        ranking: Option<&mut WgpuBuffer>,
    ) -> Result<()> {
        op.check(q, k, v, lens, stats, out, lse, selected.as_deref(), ranking.as_deref())?;
        let s = op.shape;
        let select_spec = self.cache_spec(s.dtype, s.dim)?;
        let name = CacheDecode::NAME;
        let (selected, ranking) = (selected.map(|b| &*b), ranking.map(|b| &*b));
        let rows = s.batch * op.q_heads;
        let mut whole = vec![("lens", lens), ("lse", &*lse)];
        whole.extend(selected.map(|b| ("selected", b)));
        whole.extend(ranking.map(|b| ("ranking", b)));
        let blocks = matches!(op.select, CacheSelect::Blocks { .. });
        let kernel = if blocks { Kernel::CacheDecodeBlocks } else { Kernel::CacheDecodeDense };
        self.cache_bindable(name, kernel, &whole)?;
        // Dense: a group of query heads shares each K/V load; blocks: every head its own
        // selection. The split count follows the widest span any sequence can reach.
        let slots = if blocks { op.width() * s.block_size.min(s.capacity) } else { s.capacity };
        let plan = self.decode_plan(name, s.dtype, s.dim, rows, s.batch * s.heads, !blocks, slots, true)?.ok_or_else(
            || too_large(format!("{name}: head dim {} does not fit the decode kernel's workgroup memory", s.dim)),
        )?;
        let p = CacheParams { splits: plan.splits, ..op.params() };
        let mut dispatches = Vec::new();
        let idx = match (selected, ranking) {
            (Some(sel), Some(rank)) => {
                let (lo, hi) = (self.or_dummy_read(stats.map(|s| s.0)), self.or_dummy_read(stats.map(|s| s.1)));
                let bufs = vec![q.buf(), lo, hi, lens.buf(), rank.buf(), sel.buf()];
                dispatches.push(Dispatch::rows(Kernel::CacheSelect, select_spec, &p, bufs, rows));
                Some(sel)
            }
            _ => None,
        };
        let part = plan.part.as_ref().map_or(self.dummy_write.buf(), |s| s.buf());
        let bufs = vec![q.buf(), k.buf(), v.buf(), self.or_dummy_read(idx), out.buf(), lse.buf(), part, lens.buf()];
        let units = rows / plan.spec.group as usize;
        dispatches.push(Dispatch::rows(kernel, plan.spec, &p, bufs, units * plan.splits as usize));
        if plan.splits > 1 {
            let dr = self.dummy_read.buf();
            let bufs = vec![dr, dr, dr, dr, out.buf(), lse.buf(), part, dr];
            dispatches.push(Dispatch::rows(
                Kernel::CacheMerge,
                plan.spec,
                &p,
                bufs,
                super::ops::merge_workgroups(rows, s.dim),
            ));
        }
        self.run(name, &dispatches)
    }
}
