//! The decoder's cache ops on the wgpu backend (`cache_fill`, `cache_append`, `cache_advance`,
//! `cache_decode`; see `kvsparse::ops::CacheFill` and friends).

use super::{Wgpu, WgpuBuffer};
use crate::ops::{self, *};
use crate::{Error, Result};

fn not_yet(op: &str) -> Error {
    Error::Unavailable { backend: "wgpu", reason: format!("{op} is not implemented on this backend yet") }
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
        Err(not_yet(CacheFill::NAME))
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
        Err(not_yet(CacheAppend::NAME))
    }

    pub(crate) fn advance_cache(&self, op: &CacheAdvance, lens: &mut WgpuBuffer, pos: &mut WgpuBuffer) -> Result<()> {
        ops::check(op, &[&*lens, &*pos])?;
        Err(not_yet(CacheAdvance::NAME))
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
        Err(not_yet(CacheDecode::NAME))
    }
}
