//! The decoder's cache ops on the cuda backend (`cache_fill`, `cache_append`, `cache_advance`,
//! `cache_decode`; see `kvsparse::ops::CacheFill` and friends).

use super::{Cuda, CudaBuffer};
use crate::ops::{self, *};
use crate::{Error, Result};

fn not_yet(op: &str) -> Error {
    Error::Unavailable { backend: "cuda", reason: format!("{op} is not implemented on this backend yet") }
}

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
        Err(not_yet(CacheFill::NAME))
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
        Err(not_yet(CacheAppend::NAME))
    }

    pub(crate) fn advance_cache(&self, op: &CacheAdvance, lens: &mut CudaBuffer, pos: &mut CudaBuffer) -> Result<()> {
        ops::check(op, &[&*lens, &*pos])?;
        Err(not_yet(CacheAdvance::NAME))
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
        Err(not_yet(CacheDecode::NAME))
    }
}
