//! The `Backend` trait: one method per op, implemented by [`crate::Cpu`] (the reference), the
//! wgpu backend (WGSL kernels) and the CUDA backend (NVRTC kernels).

use crate::ops::*;
use crate::{DType, HostData, Result};

/// What every backend buffer knows about itself.
pub trait DeviceBuffer {
    /// Element type.
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    /// Whether the buffer holds no element.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A place where kernels run.
///
/// Every op method takes its validated problem struct, then its input buffers, then its output
/// buffers, in the order of [`Op::buffers`]. Each method first re-validates the problem and
/// checks every buffer's length and element type ([`crate::ops::check`]), returning
/// [`crate::Error::Buffer`] on a mismatch, so a wrong buffer can never be read or written out of
/// bounds. Outputs are written in full.
///
/// Methods may return before the device has finished; [`Backend::download`] and
/// [`Backend::synchronize`] wait.
///
/// ```
/// use kvsparse::{ops::TopK, Backend, Cpu, DType, HostData};
/// fn best_two<B: Backend>(b: &B, scores: &[f32]) -> kvsparse::Result<HostData> {
///     let op = TopK::new(1, scores.len(), 2)?;
///     let s = b.upload(&HostData::F32(scores.to_vec()))?;
///     let mut idx = b.alloc(DType::I32, op.out_k())?;
///     b.topk(&op, &s, &mut idx)?;
///     b.download(&idx)
/// }
/// assert_eq!(best_two(&Cpu::new(), &[3.0, 1.0, 4.0])?, HostData::I32(vec![2, 0]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub trait Backend {
    /// Device memory of one element type.
    type Buffer: DeviceBuffer;

    /// Short lowercase name: `cpu`, `wgpu`, `cuda`.
    fn name(&self) -> &'static str;
    /// The device, as its driver names it (e.g. `NVIDIA H100 80GB HBM3`).
    fn device_name(&self) -> String;
    /// Whether the backend can store and compute with `dtype`.
    fn supports(&self, dtype: DType) -> bool;

    /// Copies host data to a new device buffer.
    fn upload(&self, data: &HostData) -> Result<Self::Buffer>;
    /// Copies a device buffer back (waits for the work that writes it).
    fn download(&self, buf: &Self::Buffer) -> Result<HostData>;
    /// A new buffer of `len` elements, filled with [`HostData::poison`].
    ///
    /// # Errors
    /// [`crate::Error::TooLarge`] when the poison cannot even be built on the host; the
    /// backend's own limits give `TooLarge` or [`crate::Error::Device`].
    fn alloc(&self, dtype: DType, len: usize) -> Result<Self::Buffer> {
        let too_large = || crate::Error::TooLarge {
            backend: self.name(),
            what: format!("{len} x {dtype}: the host cannot allocate that much"),
        };
        len.checked_mul(dtype.size()).filter(|&b| b <= isize::MAX as usize).ok_or_else(too_large)?;
        self.upload(&HostData::try_poison(dtype, len).ok_or_else(too_large)?)
    }
    /// Waits until every submitted op has finished.
    fn synchronize(&self) -> Result<()>;
    /// Copies `src` into `dst` on the device (same dtype and length). The default goes through
    /// the host; GPU backends override it with a device-to-device copy.
    fn copy_buffer(&self, src: &Self::Buffer, dst: &mut Self::Buffer) -> Result<()> {
        crate::ops::check_copy(src, dst)?;
        *dst = self.upload(&self.download(src)?)?;
        Ok(())
    }
    /// Device time of the work `f` submits, waiting for it to finish. GPU backends measure with
    /// the device's own timers (CUDA events, wgpu timestamp queries) and say so in
    /// [`Backend::timer_kind`]; the default is the host clock around `f` and a synchronize.
    fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<std::time::Duration> {
        self.synchronize()?;
        let t0 = std::time::Instant::now();
        f()?;
        self.synchronize()?;
        Ok(t0.elapsed())
    }
    /// Device time of one op's work as the report times it: [`Backend::time`], unless the
    /// backend is set to record the work once and time a replay of the recording (CUDA with
    /// `Cuda::with_graph_timing`: no host launch cost, L2 emptied first). The report's
    /// bandwidth copy is timed with [`Backend::time`] (a recorded copy runs on the copy engines,
    /// not at the rate kernels read and write).
    ///
    /// ```
    /// use kvsparse::{Backend, Cpu};
    /// let cpu = Cpu::new();
    /// let t = cpu.time_op(&mut || Ok(()))?;
    /// assert!(t.as_secs() < 1);
    /// # Ok::<(), kvsparse::Error>(())
    /// ```
    fn time_op(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<std::time::Duration> {
        self.time(f)
    }
    /// How [`Backend::time_op`] measures: `host-clock`, `cuda-events`, `cuda-graph-replay`,
    /// `wgpu-pass-timestamps` (kernel passes only) or `wgpu-timestamps` (first to last submit).
    fn timer_kind(&self) -> &'static str {
        "host-clock"
    }

    /// See [`PcgHash`].
    fn pcg_hash(&self, op: &PcgHash, v: &Self::Buffer, hash: &mut Self::Buffer) -> Result<()>;
    /// See [`RandomKey`].
    fn random_key(
        &self,
        op: &RandomKey,
        rows: &Self::Buffer,
        idx: &Self::Buffer,
        keys: &mut Self::Buffer,
    ) -> Result<()>;
    /// See [`RandomSelect`].
    fn random_select(
        &self,
        op: &RandomSelect,
        rows: &Self::Buffer,
        cand: &Self::Buffer,
        keys: &mut Self::Buffer,
        selected: &mut Self::Buffer,
    ) -> Result<()>;
    /// See [`TopK`].
    fn topk(&self, op: &TopK, scores: &Self::Buffer, indices: &mut Self::Buffer) -> Result<()>;

    /// See [`DecayScan`].
    fn decay_scan(
        &self,
        op: &DecayScan,
        x: &Self::Buffer,
        g: &Self::Buffer,
        h0: &Self::Buffer,
        y: &mut Self::Buffer,
    ) -> Result<()>;
    /// See [`DecayStep`].
    fn decay_step(
        &self,
        op: &DecayStep,
        x: &Self::Buffer,
        g: &Self::Buffer,
        h: &Self::Buffer,
        h_new: &mut Self::Buffer,
    ) -> Result<()>;
    /// See [`Rope`].
    fn rope(&self, op: &Rope, x: &Self::Buffer, pos: &Self::Buffer, y: &mut Self::Buffer) -> Result<()>;
    /// See [`RatplusKv`].
    fn ratplus_kv(
        &self,
        op: &RatplusKv,
        k: &Self::Buffer,
        v: &Self::Buffer,
        g: &Self::Buffer,
        k_tilde: &mut Self::Buffer,
        v_tilde: &mut Self::Buffer,
        k_rope: &mut Self::Buffer,
    ) -> Result<()>;
    /// See [`RatplusStep`].
    fn ratplus_step(
        &self,
        op: &RatplusStep,
        k: &Self::Buffer,
        v: &Self::Buffer,
        g: &Self::Buffer,
        hk: &Self::Buffer,
        hv: &Self::Buffer,
        hk_new: &mut Self::Buffer,
        hv_new: &mut Self::Buffer,
        k_rope: &mut Self::Buffer,
    ) -> Result<()>;

    /// See [`BlockMinmax`].
    fn block_minmax(
        &self,
        op: &BlockMinmax,
        k: &Self::Buffer,
        kmin: &mut Self::Buffer,
        kmax: &mut Self::Buffer,
    ) -> Result<()>;
    /// See [`BlockMean`].
    fn block_mean(&self, op: &BlockMean, k: &Self::Buffer, kmean: &mut Self::Buffer) -> Result<()>;
    /// See [`QuestScores`].
    fn quest_scores(
        &self,
        op: &QuestScores,
        q: &Self::Buffer,
        kmin: &Self::Buffer,
        kmax: &Self::Buffer,
        scores: &mut Self::Buffer,
    ) -> Result<()>;

    /// See [`QuestDecode`]. `stats` are the cached block statistics `(kmin, kmax)` of `k`
    /// (`[Hkv, NB, D]`, storage dtype, as [`Backend::block_minmax`] writes them); `None` computes
    /// them from `k` first. `ranking` is `scores` (f32) or `keys` (u32), per the selector.
    fn quest_decode(
        &self,
        op: &QuestDecode,
        q: &Self::Buffer,
        k: &Self::Buffer,
        v: &Self::Buffer,
        stats: Option<(&Self::Buffer, &Self::Buffer)>,
        selected: &mut Self::Buffer,
        out: &mut Self::Buffer,
        lse: &mut Self::Buffer,
        ranking: &mut Self::Buffer,
    ) -> Result<()>;
    /// See [`MobaPrefill`]. `ranking` is `gate` (f32) or `keys` (u32), per the selector; it
    /// must be `Some` exactly when the op has a ranking output ([`MobaPrefill::ranking`]).
    fn moba_prefill(
        &self,
        op: &MobaPrefill,
        q: &Self::Buffer,
        k: &Self::Buffer,
        v: &Self::Buffer,
        out: &mut Self::Buffer,
        lse: &mut Self::Buffer,
        selected: &mut Self::Buffer,
        ranking: Option<&mut Self::Buffer>,
    ) -> Result<()>;
    /// See [`SnapKvCompress`]. `ranking` must be `Some` exactly when `T > capacity`.
    fn snapkv_compress(
        &self,
        op: &SnapKvCompress,
        q_obs: &Self::Buffer,
        k: &Self::Buffer,
        kept: &mut Self::Buffer,
        ranking: Option<&mut Self::Buffer>,
    ) -> Result<()>;

    /// See [`AttentionDense`].
    fn attention_dense(
        &self,
        op: &AttentionDense,
        q: &Self::Buffer,
        k: &Self::Buffer,
        v: &Self::Buffer,
        out: &mut Self::Buffer,
        lse: &mut Self::Buffer,
    ) -> Result<()>;
    /// See [`AttentionSparse`].
    fn attention_sparse(
        &self,
        op: &AttentionSparse,
        q: &Self::Buffer,
        k: &Self::Buffer,
        v: &Self::Buffer,
        idx: &Self::Buffer,
        out: &mut Self::Buffer,
        lse: &mut Self::Buffer,
    ) -> Result<()>;

    /// See [`HitRate`].
    fn hit_rate(
        &self,
        op: &HitRate,
        sel: &Self::Buffer,
        gold: &Self::Buffer,
        head_hit: &mut Self::Buffer,
        rate: &mut Self::Buffer,
    ) -> Result<()>;

    /// See [`CacheFill`]. `idx` must be `Some` exactly when `op.indexed`.
    fn cache_fill(
        &self,
        op: &CacheFill,
        k_src: &Self::Buffer,
        v_src: &Self::Buffer,
        idx: Option<&Self::Buffer>,
        k: &mut Self::Buffer,
        v: &mut Self::Buffer,
        kmin: &mut Self::Buffer,
        kmax: &mut Self::Buffer,
        kmean: &mut Self::Buffer,
        lens: &mut Self::Buffer,
        pos: &mut Self::Buffer,
    ) -> Result<()>;
    /// See [`CacheAppend`]. `g` and `state` (`hk`, `hv`) must be `Some` exactly when
    /// `op.ratplus`.
    fn cache_append(
        &self,
        op: &CacheAppend,
        k_new: &Self::Buffer,
        v_new: &Self::Buffer,
        g: Option<&Self::Buffer>,
        lens: &Self::Buffer,
        pos: &Self::Buffer,
        state: Option<(&mut Self::Buffer, &mut Self::Buffer)>,
        k: &mut Self::Buffer,
        v: &mut Self::Buffer,
        kmin: &mut Self::Buffer,
        kmax: &mut Self::Buffer,
        kmean: &mut Self::Buffer,
    ) -> Result<()>;
    /// See [`CacheAdvance`].
    fn cache_advance(&self, op: &CacheAdvance, lens: &mut Self::Buffer, pos: &mut Self::Buffer) -> Result<()>;
    /// See [`CacheDecode`]. `stats` (`kmin`, `kmax`) must be `Some` exactly for blocks by score;
    /// `selected` and `ranking` exactly for blocks.
    fn cache_decode(
        &self,
        op: &CacheDecode,
        q: &Self::Buffer,
        k: &Self::Buffer,
        v: &Self::Buffer,
        lens: &Self::Buffer,
        stats: Option<(&Self::Buffer, &Self::Buffer)>,
        out: &mut Self::Buffer,
        lse: &mut Self::Buffer,
        selected: Option<&mut Self::Buffer>,
        ranking: Option<&mut Self::Buffer>,
    ) -> Result<()>;
}
