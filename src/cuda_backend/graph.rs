//! CUDA graphs of the backend's own work: record a sequence of ops once (stream capture),
//! replay it with one launch.
//!
//! Everything the backend does goes to its one stream, so capturing that stream records every
//! kernel, copy and memset an op enqueues. Per-call scratch (split-K partials, rankings, union
//! rows) is stream-ordered memory (`cuMemAllocAsync` / `cuMemFreeAsync`); under capture those
//! calls become the graph's own allocation and free nodes, so the scratch belongs to the graph:
//! its addresses are fixed for the graph's lifetime, every replay maps it before the first kernel
//! that writes it and releases it after the last that reads it, and nothing outside the graph
//! can reuse it in between. The [`CudaGraph`] also keeps the compiled modules whose kernels it
//! launches, and (through the stream) the context, so it stays valid after the [`Cuda`] that
//! recorded it is dropped.

use super::{device_err, Cuda};
use crate::{Error, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaModule;
use std::sync::Arc;

/// A recorded sequence of [`Cuda`] ops (see [`Cuda::capture`]), replayed with
/// [`CudaGraph::replay`] on the backend's stream, in order with everything else enqueued there.
///
/// Not `Send`/`Sync`: CUDA graph objects must not be used from several threads at once.
pub struct CudaGraph {
    /// `None` when the capture recorded no work (replaying it does nothing).
    graph: Option<cudarc::driver::CudaGraph>,
    /// The modules of the recorded kernels (the graph's kernel nodes point into them).
    _modules: Vec<Arc<CudaModule>>,
    /// The arrival counters recorded kernels may use.
    _arrivals: Arc<cudarc::driver::CudaSlice<u8>>,
}

impl std::fmt::Debug for CudaGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaGraph").field("empty", &self.graph.is_none()).finish_non_exhaustive()
    }
}

impl Cuda {
    /// Records the work that `f` enqueues on this backend into a [`CudaGraph`] instead of
    /// running it (stream capture in relaxed mode, then instantiation).
    ///
    /// Inside `f`, call only ops that enqueue device work without a host round trip: the
    /// decoder's cache ops ([`crate::Backend::cache_append`], `cache_advance`, `cache_decode`,
    /// `cache_fill`) and the other kernels' launches qualify; `upload`, `download`,
    /// `synchronize` and `time` do not (the driver rejects them during capture and the capture
    /// fails). Run the same ops once before capturing: the first call of an op compiles and
    /// loads its module, which should not happen inside a capture. Nothing runs until
    /// [`CudaGraph::replay`]. Per-call scratch becomes memory owned by the graph (see the
    /// module docs of `graph.rs`).
    ///
    /// # Safety
    /// The graph keeps raw device addresses of every buffer the ops in `f` read or write. Those
    /// buffers must stay alive (not dropped, not replaced) for as long as the graph can be
    /// replayed, and no other thread may enqueue work on this backend while `f` runs (it would
    /// be recorded too).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the device has no stream-ordered allocator (its scratch
    /// could not be captured); the error of `f`; [`Error::Device`] when capture or
    /// instantiation fails (e.g. `f` synchronised or copied to the host).
    ///
    /// ```no_run
    /// use kvsparse::ops::{CacheAdvance, CacheAppend, CacheShape};
    /// use kvsparse::{Backend, Cuda, DType, HostData};
    /// let gpu = Cuda::new()?;
    /// let shape = CacheShape { batch: 2, heads: 1, capacity: 8, dim: 2, block_size: 4, dtype: DType::F32 };
    /// let (append, advance) = (CacheAppend::new(shape, 1, false, 10000.0)?, CacheAdvance::new(2)?);
    /// let kn = gpu.upload(&HostData::F32(vec![1.0, -1.0, 2.0, 0.5]))?;
    /// let (mut lens, mut pos) = (gpu.upload(&HostData::I32(vec![0, 3]))?, gpu.upload(&HostData::I32(vec![0, 3]))?);
    /// let [mut k, mut v, mut lo, mut hi, mut mean] =
    ///     [shape.kv_len(), shape.kv_len(), shape.stats_len(), shape.stats_len(), shape.stats_len()]
    ///         .map(|n| gpu.alloc(DType::F32, n).unwrap());
    /// let mut step = || {
    ///     gpu.cache_append(&append, &kn, &kn, None, &lens, &pos, None, &mut k, &mut v, &mut lo, &mut hi, &mut mean)?;
    ///     gpu.cache_advance(&advance, &mut lens, &mut pos)
    /// };
    /// step()?; // warm-up: compiles and loads the kernels outside the capture
    /// // SAFETY: every buffer the step touches outlives `graph`; one thread uses `gpu`.
    /// let graph = unsafe { gpu.capture(&mut step)? };
    /// for _ in 0..4 {
    ///     graph.replay()?; // lens and pos grow on the device; no host round trip
    /// }
    /// assert_eq!(gpu.download(&lens)?, HostData::I32(vec![5, 8]));
    /// # Ok::<(), kvsparse::Error>(())
    /// ```
    pub unsafe fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<CudaGraph> {
        if !self.ctx.has_async_alloc() {
            return Err(Error::Unavailable {
                backend: "cuda",
                reason: "CUDA graphs need stream-ordered allocation (memory pools), which this device lacks".into(),
            });
        }
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| device_err("begin capture", e))?;
        let recorded = f();
        // Always end the capture, so the stream is usable again whatever `f` did.
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        let graph = graph.map_err(|e| device_err("end capture / instantiate graph", e))?;
        let modules = self.modules.read().map(|m| m.values().cloned().collect()).unwrap_or_default();
        Ok(CudaGraph { graph, _modules: modules, _arrivals: Arc::clone(&self.arrivals) })
    }
}

impl CudaGraph {
    /// Enqueues one run of the recorded work on the recording backend's stream (no host
    /// synchronisation; `download` or `synchronize` on the backend waits for it).
    ///
    /// # Errors
    /// [`Error::Device`] when the launch fails.
    pub fn replay(&self) -> Result<()> {
        match &self.graph {
            Some(g) => g.launch().map_err(|e| device_err("graph launch", e)),
            None => Ok(()),
        }
    }
}
