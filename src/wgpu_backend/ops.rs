//! `Backend for Wgpu`: each op checks its problem and buffers, picks its kernels and records
//! them into one submission (see `Wgpu::run`).

use super::pipeline::{head_dim_bucket, Kernel, Spec, MERGE_DIMS, MERGE_MAX_SPLITS, QUEST_SCORE_LANES};
use super::{Dispatch, Wgpu, WgpuBuffer, NAME};
use crate::ops::{self, *};
use crate::params::{AttentionParams, BlockParams};
use crate::{Backend, DType, Error, HostData, Result};

impl Wgpu {
    /// Rejects storage dtypes this adapter cannot compute with.
    pub(super) fn require(&self, dtype: DType) -> Result<()> {
        if self.supports(dtype) {
            return Ok(());
        }
        Err(Error::UnsupportedDtype {
            backend: NAME,
            dtype,
            reason: format!("adapter {:?} lacks the SHADER_F16 feature", self.info.name),
        })
    }

    /// Rejects head dims whose workgroup arrays do not fit the adapter's workgroup memory.
    fn require_workgroup_memory(&self, op: &str, kernel: Kernel, spec: &Spec, bytes: u64) -> Result<()> {
        let limit = self.limits.max_compute_workgroup_storage_size as u64;
        if bytes > limit {
            return Err(super::too_large(format!(
                "{op}: {} with head dim bucket {} needs {bytes} bytes of workgroup memory, the adapter has {limit}",
                kernel.label(),
                spec.head_dim
            )));
        }
        Ok(())
    }

    /// Spec of the attention kernels for `dim`, checked against workgroup memory
    /// (q row + accumulator of HEAD_DIM f32, three WG_SIZE arrays).
    fn attention_spec(&self, op: &str, dtype: DType, dim: usize) -> Result<Spec> {
        let spec = Spec::new(dtype).with_dim(dim);
        let k = Kernel::AttentionDense;
        let bytes = 4 * (2 * spec.head_dim as u64 + 3 * k.workgroup() as u64);
        self.require_workgroup_memory(op, k, &spec, bytes)?;
        Ok(spec)
    }
}

/// How a decode (one query per head) runs on decode.wgsl: kernel spec, splits of the key slots
/// and the scratch for the splits' partial results.
pub(super) struct DecodePlan<'a> {
    pub spec: Spec,
    pub splits: u32,
    pub part: Option<super::reuse::Scratch<'a>>,
}

/// Largest divisor of `g` not above 8: query heads a decode workgroup scores per K/V load
/// (registers hold GROUP q and accumulator vectors per lane).
fn decode_group(g: usize) -> u32 {
    (1..=8usize.min(g)).rev().find(|d| g.is_multiple_of(*d)).unwrap_or(1) as u32
}

/// Invocations of `quest_scores` for `q_heads` x `nb` scores.
fn quest_score_items(q_heads: usize, nb: usize) -> usize {
    q_heads * nb * QUEST_SCORE_LANES
}

/// Workgroups of the split-K merge of `rows` query rows of `dim` (splitk.wgsl's `merge`: one
/// per `MERGE_DIMS` dims of a row).
pub(super) fn merge_workgroups(rows: usize, dim: usize) -> usize {
    rows * dim.div_ceil(MERGE_DIMS)
}

/// Keys a decode team loads before scoring them (`KB` of splitk.wgsl): 2, or
/// `KVSPARSE_WGPU_DECODE_KB` (1-8, to time more loads in flight a lane against the registers
/// they take).
fn decode_keys_per_step() -> u32 {
    static KB: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *KB.get_or_init(|| crate::env_number("KVSPARSE_WGPU_DECODE_KB", |k| (1..=8).contains(k)).unwrap_or(2))
}

/// `KVSPARSE_WGPU_DECODE_TEAM`: lanes a decode team gives one key row (a power of two, 1-64),
/// instead of the default (16 with subgroups, else 8).
fn decode_team() -> Option<u32> {
    static TEAM: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *TEAM.get_or_init(|| crate::env_number("KVSPARSE_WGPU_DECODE_TEAM", |t: &u32| t.is_power_of_two() && *t <= 64))
}

/// Workgroups a decode aims at (splits of the key slots times units): 2048, or
/// `KVSPARSE_WGPU_DECODE_WORKGROUPS` (64-65536, to time fewer and longer workgroups).
fn decode_workgroups() -> usize {
    static WG: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WG.get_or_init(|| {
        crate::env_number("KVSPARSE_WGPU_DECODE_WORKGROUPS", |w| (64..=65536).contains(w)).unwrap_or(2048)
    })
}

impl Wgpu {
    /// The split-K plan for `slots` key slots of `q_heads` queries (`shared`: a group's heads
    /// attend the same keys, so they share each K/V load), or `None` where decode.wgsl does not
    /// apply (dim not a multiple of 4 unless `any_dim`, or head vectors too large for workgroup
    /// memory): attention.wgsl serves those. `any_dim` compiles other dims with scalar loads
    /// (`Spec::unaligned`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode_plan(
        &self,
        op: &str,
        dtype: DType,
        dim: usize,
        q_heads: usize,
        kv_heads: usize,
        shared: bool,
        slots: usize,
        any_dim: bool,
    ) -> Result<Option<DecodePlan<'_>>> {
        let unaligned = !dim.is_multiple_of(4);
        if unaligned && !any_dim {
            return Ok(None);
        }
        let group = if shared { decode_group(q_heads / kv_heads) } else { 1 };
        let base = Spec { unaligned, ..Spec::new(dtype).with_dim(dim) };
        let lanes = base.head_dim / 4;
        // A team sums its dot products with subgroup shuffles when a subgroup always holds a
        // whole team. 16 lanes (D = 128: 8 elements a lane) keep the shuffles at 4 per value
        // and 16 per KiB loaded, well under one per clock at the HBM rate; 32-lane teams
        // would need 2.5x as many.
        let sg = self.info.subgroup_min_size;
        let subgroups = self.features.contains(wgpu::Features::SUBGROUP) && sg >= 2 && sg.is_power_of_two();
        let team = if subgroups { lanes.min(sg).min(16) } else { lanes.min(8) };
        // `KVSPARSE_WGPU_DECODE_TEAM` (a power of two) to time other team sizes; never above
        // the lanes a row has or, with subgroups, the subgroup.
        let team = decode_team().map_or(team, |t| t.min(lanes).min(if subgroups { sg } else { u32::MAX }));
        let keys_per_step = decode_keys_per_step();
        let spec = Spec { group, team, subgroups, keys_per_step, ..base };
        let wg = Kernel::DecodeDense.workgroup() as u64;
        let red = spec.reduction_words(Kernel::DecodeDense);
        let bytes = 4 * (red + wg / team as u64 * 2 * group as u64 + group as u64 * spec.head_dim as u64);
        if bytes > self.limits.max_compute_workgroup_storage_size as u64 {
            return Ok(None);
        }
        // Enough workgroups to fill a large GPU (~2K), at least 128 slots per split so that
        // the merge stays small next to the K/V bytes.
        let units = q_heads / group as usize;
        let splits = slots.div_ceil(128).min(decode_workgroups().div_ceil(units)).clamp(1, MERGE_MAX_SPLITS) as u32;
        let part =
            if splits > 1 { Some(self.scratch(f32_bytes(q_heads * splits as usize * (dim + 2)), op)?) } else { None };
        Ok(Some(DecodePlan { spec, splits, part }))
    }

    /// The spec of prefill.wgsl for `dim`, or `None` where it does not apply (dim not a
    /// multiple of 4: attention.wgsl serves those).
    fn prefill_spec(&self, op: &str, dtype: DType, dim: usize) -> Result<Option<Spec>> {
        // BK = 2048 / HEAD_DIM keys per tile: at least 4.
        if !dim.is_multiple_of(4) || head_dim_bucket(dim) > 512 {
            return Ok(None);
        }
        // The 4 lanes of a row sum through subgroup shuffles when a subgroup holds them.
        let sg = self.info.subgroup_min_size;
        let subgroups = self.features.contains(wgpu::Features::SUBGROUP) && sg >= 4 && sg.is_power_of_two();
        let spec = Spec { subgroups, ..Spec::new(dtype).with_dim(dim) };
        // K and V tiles (BK x HEAD_DIM = 2048 f32 each), the reduction space, the union bitmap
        // (2 x MAX_NB / 32 words).
        let bytes = 2 * 2048 * 4 + 4 * spec.reduction_words(Kernel::PrefillDense) + 2 * 4096 / 8;
        self.require_workgroup_memory(op, Kernel::PrefillDense, &spec, bytes)?;
        Ok(Some(spec))
    }

    /// The decode dispatch (and the merge when split) of `plan`.
    #[allow(clippy::too_many_arguments)]
    fn decode_dispatches<'a>(
        &'a self,
        kernel: Kernel,
        plan: &'a DecodePlan<'a>,
        params: AttentionParams,
        q: &'a WgpuBuffer,
        k: &'a WgpuBuffer,
        v: &'a WgpuBuffer,
        idx: Option<&'a WgpuBuffer>,
        out: &'a WgpuBuffer,
        lse: &'a WgpuBuffer,
    ) -> Vec<Dispatch<'a>> {
        let p = AttentionParams { splits: plan.splits, ..params };
        let part = plan.part.as_ref().map_or(self.dummy_write.buf(), |s| s.buf());
        let idx = idx.map_or(self.dummy_read.buf(), |b| b.buf());
        let units = p.q_heads as usize / plan.spec.group as usize;
        let bufs = vec![q.buf(), k.buf(), v.buf(), idx, out.buf(), lse.buf(), part];
        let mut d = vec![Dispatch::rows(kernel, plan.spec, &p, bufs, units * plan.splits as usize)];
        if plan.splits > 1 {
            let dr = self.dummy_read.buf();
            let bufs = vec![dr, dr, dr, dr, out.buf(), lse.buf(), part];
            d.push(Dispatch::rows(
                Kernel::DecodeMerge,
                plan.spec,
                &p,
                bufs,
                merge_workgroups(p.q_heads as usize, p.dim as usize),
            ));
        }
        d
    }
}

/// Rows at least this long select over many workgroups (topk.wgsl, `tk_*`).
const TOPK_LONG: usize = 16384;
/// Scores per workgroup and header words per row of the long-row selection (`TK_CHUNK`,
/// `AUX_HEAD` in topk.wgsl).
const TK_CHUNK: usize = 4096;
const TK_AUX_HEAD: usize = 260;

impl Wgpu {
    /// Top-k of long rows: four histogram rounds across the row's chunks, then counting,
    /// offsets, emission into the sort areas and a sort per row (topk.wgsl).
    fn topk_long(&self, op: &TopK, scores: &WgpuBuffer, indices: &WgpuBuffer, len: usize) -> Result<()> {
        let nch = op.n.div_ceil(TK_CHUNK);
        let sort = self.scratch(f32_bytes(2 * len * op.rows), TopK::NAME)?;
        let aux = self.scratch(f32_bytes(op.rows * (TK_AUX_HEAD + 2 * nch)), TopK::NAME)?;
        let p = op.params();
        let spec = Spec::new(DType::F32);
        let bufs = || vec![scores.buf(), indices.buf(), sort.buf(), aux.buf()];
        let (rows, chunks) = (op.rows, op.rows * nch);
        let mut d = vec![Dispatch::rows(Kernel::TkInit, spec, &p, bufs(), rows)];
        for _ in 0..4 {
            d.push(Dispatch::rows(Kernel::TkHist, spec, &p, bufs(), chunks));
            d.push(Dispatch::rows(Kernel::TkPick, spec, &p, bufs(), rows));
        }
        d.push(Dispatch::rows(Kernel::TkCount, spec, &p, bufs(), chunks));
        d.push(Dispatch::rows(Kernel::TkOffsets, spec, &p, bufs(), rows));
        d.push(Dispatch::rows(Kernel::TkEmit, spec, &p, bufs(), chunks));
        if len <= TK_SORT_SMEM {
            d.push(Dispatch::rows(Kernel::TkSort, spec, &p, bufs(), rows));
            return self.run(TopK::NAME, &d);
        }
        // The bitonic network across workgroups: strides below a block in workgroup memory,
        // larger ones one compare-exchange per invocation.
        let sp = |size: usize, stride: usize| SortParams {
            rows: rows as u32,
            len: len as u32,
            size: size as u32,
            stride: stride as u32,
            out_k: op.out_k() as u32,
            ..Default::default()
        };
        let blocks = rows * len.div_ceil(TK_SORT_BLOCK);
        d.push(Dispatch::rows(Kernel::TkSortBlock, spec, &sp(0, 0), bufs(), blocks));
        let mut size = 2 * TK_SORT_BLOCK;
        while size <= len {
            let mut stride = size / 2;
            while stride >= TK_SORT_BLOCK {
                d.push(Dispatch::items(Kernel::TkSortStage, spec, &sp(size, stride), bufs(), rows * len / 2));
                stride /= 2;
            }
            d.push(Dispatch::rows(Kernel::TkSortBlock, spec, &sp(size, 0), bufs(), blocks));
            size *= 2;
        }
        d.push(Dispatch::items(Kernel::TkSortOut, spec, &sp(0, 0), bufs(), rows * op.out_k()));
        self.run(TopK::NAME, &d)
    }
}

/// Sort areas up to this many entries are sorted in one workgroup's memory (`SORT_SMEM`), larger
/// ones in blocks of `TK_SORT_BLOCK` (`SORT_BLOCK` in topk.wgsl).
const TK_SORT_SMEM: usize = 1024;
const TK_SORT_BLOCK: usize = 2048;

/// Uniform of the cross-workgroup sort (`SortParams` in topk.wgsl; 4-byte fields, 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct SortParams {
    rows: u32,
    len: u32,
    size: u32,
    stride: u32,
    out_k: u32,
    _pad: [u32; 3],
}

/// Attention params of `q_heads x q_len` query rows over `kv_len` keys; the caller sets the rest.
fn attention_rows(q_heads: usize, kv_heads: usize, q_len: usize, kv_len: usize, dim: usize) -> AttentionParams {
    AttentionParams {
        q_heads: q_heads as u32,
        kv_heads: kv_heads as u32,
        q_len: q_len as u32,
        kv_len: kv_len as u32,
        dim: dim as u32,
        causal: 0,
        scale: 1.0,
        idx_heads: q_heads as u32,
        n_idx: 0,
        block_size: 1,
        splits: 1,
        _pad0: 0,
    }
}

/// Tokens per chunk of the chunked scans (`SCAN_L` in decay.wgsl); shorter scans run as one chunk.
const SCAN_L: usize = 256;

/// Queries per workgroup and the largest block count of prefill.wgsl (`BQ`, `MAX_NB` there).
const PREFILL_BQ: usize = 64;
const PREFILL_MAX_NB: usize = 4096;

pub(super) fn f32_bytes(n: usize) -> u64 {
    4 * n as u64
}

impl Backend for Wgpu {
    type Buffer = WgpuBuffer;

    fn name(&self) -> &'static str {
        NAME
    }
    fn device_name(&self) -> String {
        self.info.name.clone()
    }
    fn supports(&self, dtype: DType) -> bool {
        dtype != DType::F16 || self.features.contains(wgpu::Features::SHADER_F16)
    }
    fn upload(&self, data: &HostData) -> Result<WgpuBuffer> {
        self.upload_bytes(data.dtype(), data.len(), data.as_bytes())
    }
    fn download(&self, buf: &WgpuBuffer) -> Result<HostData> {
        self.download_bytes(buf)
    }
    fn synchronize(&self) -> Result<()> {
        self.wait("synchronize")
    }
    fn copy_buffer(&self, src: &WgpuBuffer, dst: &mut WgpuBuffer) -> Result<()> {
        ops::check_copy(src, dst)?;
        self.copy_bytes(src, dst)
    }
    /// Device time of the work `f` submits.
    ///
    /// Where the adapter has timestamp queries (also inside encoders), the sum over every compute
    /// pass `f` records (one per op call) of the timestamps written at the pass's beginning and
    /// end, plus the same around each buffer copy: the kernels' execution, including the
    /// barriers between the dispatches of one op, is counted; host work (recording, params
    /// writes, submission), gaps between submissions, `write_buffer` staging copies, uploads
    /// and downloads are not. `KVSPARSE_WGPU_SPAN_TIMER` (or, where pass timing is unavailable,
    /// nothing) selects the span from a timestamp before the first submission to one after the
    /// last instead, which includes the host gaps; without timestamp queries, the host clock
    /// between two waits. [`Backend::timer_kind`] says which: `wgpu-pass-timestamps`,
    /// `wgpu-timestamps` (span) or `host-clock`.
    fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<std::time::Duration> {
        if self.has_pass_timestamps() {
            return self.time_passes(f);
        }
        if self.has_timestamps() {
            return self.time_with_queries(f);
        }
        self.synchronize()?;
        let t0 = std::time::Instant::now();
        f()?;
        self.synchronize()?;
        Ok(t0.elapsed())
    }
    fn timer_kind(&self) -> &'static str {
        if self.has_pass_timestamps() {
            "wgpu-pass-timestamps"
        } else if self.has_timestamps() {
            "wgpu-timestamps"
        } else {
            "host-clock"
        }
    }

    fn pcg_hash(&self, op: &PcgHash, v: &WgpuBuffer, hash: &mut WgpuBuffer) -> Result<()> {
        ops::check(op, &[v, hash])?;
        let d = Dispatch::items(Kernel::PcgHash, Spec::new(DType::F32), &op.params(), vec![v.buf(), hash.buf()], op.n);
        self.run(PcgHash::NAME, &[d])
    }

    fn random_key(&self, op: &RandomKey, rows: &WgpuBuffer, idx: &WgpuBuffer, keys: &mut WgpuBuffer) -> Result<()> {
        ops::check(op, &[rows, idx, keys])?;
        let bufs = vec![rows.buf(), idx.buf(), keys.buf()];
        let d = Dispatch::items(Kernel::RandomKey, Spec::new(DType::F32), &op.params(), bufs, op.rows * op.n);
        self.run(RandomKey::NAME, &[d])
    }

    fn random_select(
        &self,
        op: &RandomSelect,
        rows: &WgpuBuffer,
        cand: &WgpuBuffer,
        keys: &mut WgpuBuffer,
        selected: &mut WgpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[rows, cand, keys, selected])?;
        let bufs = vec![rows.buf(), cand.buf(), keys.buf(), selected.buf()];
        let d = Dispatch::rows(Kernel::RandomSelect, Spec::new(DType::F32), &op.params(), bufs, op.rows);
        self.run(RandomSelect::NAME, &[d])
    }

    fn topk(&self, op: &TopK, scores: &WgpuBuffer, indices: &mut WgpuBuffer) -> Result<()> {
        ops::check(op, &[scores, indices])?;
        // Sort areas above SORT_SMEM (topk.wgsl) entries live in a scratch buffer: keys, then indices.
        const SORT_SMEM: usize = 1024;
        let len = op.out_k().next_power_of_two();
        if op.n >= TOPK_LONG {
            return self.topk_long(op, scores, indices, len);
        }
        let scratch =
            if len > SORT_SMEM { Some(self.scratch(f32_bytes(2 * len * op.rows), TopK::NAME)?) } else { None };
        let bufs = vec![scores.buf(), indices.buf(), scratch.as_ref().map_or(self.dummy_write.buf(), |s| s.buf())];
        let d = Dispatch::rows(Kernel::Topk, Spec::new(DType::F32), &op.params(), bufs, op.rows);
        self.run(TopK::NAME, &[d])
    }

    fn decay_scan(
        &self,
        op: &DecayScan,
        x: &WgpuBuffer,
        g: &WgpuBuffer,
        h0: &WgpuBuffer,
        y: &mut WgpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[x, g, h0, y])?;
        self.require(op.dtype)?;
        let spec = Spec::new(op.dtype);
        let lanes = op.outer * op.inner;
        if op.seq <= SCAN_L {
            let bufs = vec![x.buf(), g.buf(), h0.buf(), y.buf()];
            let d = Dispatch::items(Kernel::DecayScan, spec, &op.params(), bufs, lanes);
            return self.run(DecayScan::NAME, &[d]);
        }
        // Chunked: A, B and carry per (outer, chunk, inner), see decay.wgsl.
        let n = lanes * op.seq.div_ceil(SCAN_L);
        let sums = self.scratch(f32_bytes(3 * n), DecayScan::NAME)?;
        let p = op.params();
        let bufs = vec![x.buf(), g.buf(), h0.buf(), y.buf(), sums.buf()];
        let (dr, dw) = (self.dummy_read.buf(), self.dummy_write.buf());
        let d = [
            Dispatch::items(Kernel::ScanChunks, spec, &p, bufs.clone(), n),
            Dispatch::items(Kernel::ScanCarry, spec, &p, vec![dr, dr, h0.buf(), dw, sums.buf()], lanes),
            Dispatch::items(Kernel::ScanFinal, spec, &p, bufs, n),
        ];
        self.run(DecayScan::NAME, &d)
    }

    fn decay_step(
        &self,
        op: &DecayStep,
        x: &WgpuBuffer,
        g: &WgpuBuffer,
        h: &WgpuBuffer,
        h_new: &mut WgpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[x, g, h, h_new])?;
        self.require(op.dtype)?;
        let bufs = vec![x.buf(), g.buf(), h.buf(), h_new.buf()];
        let d = Dispatch::items(Kernel::DecayStep, Spec::new(op.dtype), &op.params(), bufs, op.lanes);
        self.run(DecayStep::NAME, &[d])
    }

    fn rope(&self, op: &Rope, x: &WgpuBuffer, pos: &WgpuBuffer, y: &mut WgpuBuffer) -> Result<()> {
        ops::check(op, &[x, pos, y])?;
        self.require(op.dtype)?;
        let bufs = vec![x.buf(), pos.buf(), y.buf()];
        let pairs = op.heads * op.seq * (op.dim / 2);
        let d = Dispatch::items(Kernel::Rope, Spec::new(op.dtype), &op.params(), bufs, pairs);
        self.run(Rope::NAME, &[d])
    }

    fn ratplus_kv(
        &self,
        op: &RatplusKv,
        k: &WgpuBuffer,
        v: &WgpuBuffer,
        g: &WgpuBuffer,
        k_tilde: &mut WgpuBuffer,
        v_tilde: &mut WgpuBuffer,
        k_rope: &mut WgpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[k, v, g, k_tilde, v_tilde, k_rope])?;
        self.require(op.dtype)?;
        let spec = Spec::new(op.dtype);
        let pairs = op.heads * (op.dim / 2);
        let p = op.params();
        if op.seq <= SCAN_L {
            let bufs = vec![k.buf(), v.buf(), g.buf(), k_tilde.buf(), v_tilde.buf(), k_rope.buf()];
            let d = Dispatch::items(Kernel::RatplusKv, spec, &p, bufs, pairs);
            return self.run(RatplusKv::NAME, &[d]);
        }
        // Chunked: A, Bk, Bv, carry k, carry v per (head, chunk, d), see decay.wgsl.
        let nch = op.seq.div_ceil(SCAN_L);
        let sums = self.scratch(f32_bytes(5 * op.heads * nch * op.dim), RatplusKv::NAME)?;
        let bufs = vec![k.buf(), v.buf(), g.buf(), k_tilde.buf(), v_tilde.buf(), k_rope.buf(), sums.buf()];
        let (dr, dw) = (self.dummy_read.buf(), self.dummy_write.buf());
        let d = [
            Dispatch::items(Kernel::RatplusChunks, spec, &p, bufs.clone(), pairs * nch),
            Dispatch::items(
                Kernel::RatplusCarry,
                spec,
                &p,
                vec![dr, dr, dr, dw, dw, dw, sums.buf()],
                op.heads * op.dim,
            ),
            Dispatch::items(Kernel::RatplusFinal, spec, &p, bufs, pairs * nch),
        ];
        self.run(RatplusKv::NAME, &d)
    }

    fn ratplus_step(
        &self,
        op: &RatplusStep,
        k: &WgpuBuffer,
        v: &WgpuBuffer,
        g: &WgpuBuffer,
        hk: &WgpuBuffer,
        hv: &WgpuBuffer,
        hk_new: &mut WgpuBuffer,
        hv_new: &mut WgpuBuffer,
        k_rope: &mut WgpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[k, v, g, hk, hv, hk_new, hv_new, k_rope])?;
        self.require(op.dtype)?;
        let bufs = vec![k.buf(), v.buf(), g.buf(), hk.buf(), hv.buf(), hk_new.buf(), hv_new.buf(), k_rope.buf()];
        let d = Dispatch::items(Kernel::RatplusStep, Spec::new(op.dtype), &op.params(), bufs, op.heads * (op.dim / 2));
        self.run(RatplusStep::NAME, &[d])
    }

    fn block_minmax(
        &self,
        op: &BlockMinmax,
        k: &WgpuBuffer,
        kmin: &mut WgpuBuffer,
        kmax: &mut WgpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[k, kmin, kmax])?;
        let s = &op.shape;
        self.require(s.dtype)?;
        let bufs = vec![k.buf(), kmin.buf(), kmax.buf()];
        let d = Dispatch::items(Kernel::BlockMinmax, Spec::new(s.dtype), &s.params(), bufs, s.heads * s.nb() * s.dim);
        self.run(BlockMinmax::NAME, &[d])
    }

    fn block_mean(&self, op: &BlockMean, k: &WgpuBuffer, kmean: &mut WgpuBuffer) -> Result<()> {
        ops::check(op, &[k, kmean])?;
        let s = &op.shape;
        self.require(s.dtype)?;
        let bufs = vec![k.buf(), kmean.buf()];
        let d = Dispatch::items(Kernel::BlockMean, Spec::new(s.dtype), &s.params(), bufs, s.heads * s.nb() * s.dim);
        self.run(BlockMean::NAME, &[d])
    }

    fn quest_scores(
        &self,
        op: &QuestScores,
        q: &WgpuBuffer,
        kmin: &WgpuBuffer,
        kmax: &WgpuBuffer,
        scores: &mut WgpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[q, kmin, kmax, scores])?;
        self.require(op.dtype)?;
        let bufs = vec![q.buf(), kmin.buf(), kmax.buf(), scores.buf()];
        let d = Dispatch::items(
            Kernel::QuestScores,
            Spec::new(op.dtype),
            &op.params(),
            bufs,
            quest_score_items(op.q_heads, op.nb),
        );
        self.run(QuestScores::NAME, &[d])
    }

    fn quest_decode(
        &self,
        op: &QuestDecode,
        q: &WgpuBuffer,
        k: &WgpuBuffer,
        v: &WgpuBuffer,
        stats: Option<(&WgpuBuffer, &WgpuBuffer)>,
        selected: &mut WgpuBuffer,
        out: &mut WgpuBuffer,
        lse: &mut WgpuBuffer,
        ranking: &mut WgpuBuffer,
    ) -> Result<()> {
        match stats {
            Some((lo, hi)) => ops::check(op, &[q, k, v, lo, hi, selected, out, lse, ranking])?,
            None => ops::check(op, &[q, k, v, selected, out, lse, ranking])?,
        }
        self.require(op.dtype)?;
        let name = QuestDecode::NAME;
        let (nb, bs) = (op.nb(), op.select.block_size);
        let att_spec = self.attention_spec(name, op.dtype, op.dim)?;
        let mut dispatches = Vec::new();
        let p = BlockParams {
            q_heads: op.kv_heads as u32,
            kv_heads: op.kv_heads as u32,
            seq: op.seq as u32,
            dim: op.dim as u32,
            block_size: bs as u32,
            nb: nb as u32,
            ..Default::default()
        };
        // Computed statistics stay in f32 (pooled scratch); cached ones arrive in
        // the storage dtype. The random selector needs none.
        let computed = match (op.select.selector, stats) {
            (Selector::Score, None) => {
                let bytes = f32_bytes(op.kv_heads * nb * op.dim);
                Some((self.scratch(bytes, name)?, self.scratch(bytes, name)?))
            }
            _ => None,
        };
        if let Some((kmin, kmax)) = &computed {
            let spec = Spec::new(op.dtype).with_stat(DType::F32);
            let items = op.kv_heads * nb * op.dim;
            dispatches.push(Dispatch::items(
                Kernel::BlockMinmax,
                spec,
                &p,
                vec![k.buf(), kmin.buf(), kmax.buf()],
                items,
            ));
        }
        let stat_bufs = match (&computed, stats) {
            (Some((lo, hi)), _) => Some((lo.buf(), hi.buf(), DType::F32)),
            (None, Some((lo, hi))) => Some((lo.buf(), hi.buf(), op.dtype)),
            (None, None) => None,
        };
        // gqa = mean: the per-head scores go to scratch, their group mean to the ranking.
        let shared = op.gqa == GqaMode::Mean;
        let head_scores = if shared && op.select.selector == Selector::Score {
            Some(self.scratch(f32_bytes(op.q_heads * nb), name)?)
        } else {
            None
        };
        if let (Selector::Score, Some((kmin, kmax, stat))) = (op.select.selector, stat_bufs) {
            let spec = Spec::new(op.dtype).with_stat(stat);
            let p = BlockParams { q_heads: op.q_heads as u32, seq: 1, ..p };
            let dst = head_scores.as_ref().map_or(ranking.buf(), |s| s.buf());
            let bufs = vec![q.buf(), kmin, kmax, dst];
            dispatches.push(Dispatch::items(Kernel::QuestScores, spec, &p, bufs, quest_score_items(op.q_heads, nb)));
        }
        if let Some(scores) = &head_scores {
            let p = BlockParams { q_heads: op.q_heads as u32, seq: 1, ..p };
            let bufs = vec![scores.buf(), ranking.buf()];
            dispatches.push(Dispatch::items(Kernel::QuestGroupMean, Spec::new(DType::F32), &p, bufs, op.kv_heads * nb));
        }
        let sel = op.select_params();
        let bufs = vec![ranking.buf(), selected.buf()];
        dispatches.push(Dispatch::rows(Kernel::SelectBlocks, Spec::new(DType::F32), &sel, bufs, op.select_rows()));
        let p = AttentionParams {
            causal: 1,
            scale: op.scale,
            n_idx: op.n_sel() as u32,
            block_size: bs as u32,
            idx_heads: op.select_rows() as u32,
            ..attention_rows(op.q_heads, op.kv_heads, 1, op.seq, op.dim)
        };
        // Per head, each query head reads its own selected blocks (contiguous tokens), split
        // across workgroups; a group's heads overlap in L2 rather than sharing loads (their
        // selections differ). With gqa = mean a unit of the group's heads shares each load.
        let slots = op.n_sel() * bs.min(op.seq);
        let plan = self.decode_plan(name, op.dtype, op.dim, op.q_heads, op.kv_heads, shared, slots, false)?;
        match &plan {
            Some(plan) => dispatches.extend(self.decode_dispatches(
                Kernel::DecodeBlocks,
                plan,
                p,
                q,
                k,
                v,
                Some(selected),
                out,
                lse,
            )),
            None => {
                let bufs = vec![q.buf(), k.buf(), v.buf(), selected.buf(), out.buf(), lse.buf()];
                dispatches.push(Dispatch::rows(Kernel::AttentionBlocks, att_spec, &p, bufs, op.q_heads));
            }
        }
        self.run(name, &dispatches)
    }

    fn moba_prefill(
        &self,
        op: &MobaPrefill,
        q: &WgpuBuffer,
        k: &WgpuBuffer,
        v: &WgpuBuffer,
        out: &mut WgpuBuffer,
        lse: &mut WgpuBuffer,
        selected: &mut WgpuBuffer,
        ranking: Option<&mut WgpuBuffer>,
    ) -> Result<()> {
        match ranking.as_deref() {
            Some(r) => ops::check(op, &[q, k, v, out, lse, selected, r])?,
            None => ops::check(op, &[q, k, v, out, lse, selected])?,
        }
        self.require(op.dtype)?;
        let name = MobaPrefill::NAME;
        let (nb, bs, rows) = (op.nb(), op.select.block_size, op.q_heads * op.seq);
        // Without a ranking output, moba_select computes each row's gates in workgroup memory
        // (no [Hq, T, NB] buffer: 2 GiB at 32K); beyond its MAX_NB (select.wgsl) blocks the
        // gates go through scratch.
        const MAX_NB: usize = 2048;
        let fused = ranking.is_none() && nb <= MAX_NB;
        let rank_scratch;
        let rank_buf = match &ranking {
            Some(r) => r.buf(),
            None if fused => self.dummy_write.buf(),
            None => {
                rank_scratch = self.scratch(f32_bytes(rows * nb), name)?;
                rank_scratch.buf()
            }
        };
        let att_spec = self.attention_spec(name, op.dtype, op.dim)?;
        let mut dispatches = Vec::new();
        // Block means in f32 (pooled scratch).
        let kmean = match op.select.selector {
            Selector::Score => Some(self.scratch(f32_bytes(op.kv_heads * nb * op.dim), name)?),
            Selector::Random { .. } => None,
        };
        let stat_spec = Spec::new(op.dtype).with_stat(DType::F32);
        if let Some(kmean) = &kmean {
            let p = BlockParams {
                q_heads: op.kv_heads as u32,
                kv_heads: op.kv_heads as u32,
                seq: op.seq as u32,
                dim: op.dim as u32,
                block_size: bs as u32,
                nb: nb as u32,
                ..Default::default()
            };
            let items = op.kv_heads * nb * op.dim;
            dispatches.push(Dispatch::items(Kernel::BlockMean, stat_spec, &p, vec![k.buf(), kmean.buf()], items));
            if !fused {
                let p = BlockParams { q_heads: op.q_heads as u32, ..p };
                let bufs = vec![q.buf(), kmean.buf(), rank_buf];
                dispatches.push(Dispatch::items(Kernel::MobaGate, stat_spec, &p, bufs, rows * nb));
            }
        }
        let sel = op.select_params();
        let shape;
        if fused {
            let words = [(op.q_heads / op.kv_heads) as u32, op.dim as u32];
            // Written in queue order: after earlier users of the pooled buffer, before this call.
            shape = self.scratch(8, name)?;
            self.queue.write_buffer(shape.raw(), 0, bytemuck::cast_slice(&words));
            let kmean = kmean.as_ref().map_or(self.dummy_read.buf(), |s| s.buf());
            let bufs = vec![rank_buf, selected.buf(), q.buf(), kmean, shape.buf()];
            dispatches.push(Dispatch::rows(Kernel::MobaSelect, stat_spec, &sel, bufs, rows));
        } else {
            let bufs = vec![rank_buf, selected.buf()];
            dispatches.push(Dispatch::rows(Kernel::SelectBlocks, Spec::new(DType::F32), &sel, bufs, rows));
        }
        let p = AttentionParams {
            causal: 1,
            scale: op.scale,
            n_idx: op.width() as u32,
            block_size: bs as u32,
            ..attention_rows(op.q_heads, op.kv_heads, op.seq, op.seq, op.dim)
        };
        let bufs = vec![q.buf(), k.buf(), v.buf(), selected.buf(), out.buf(), lse.buf()];
        // Query tiles visit the union of their rows' blocks; the bitmap holds PREFILL_MAX_NB.
        match self.prefill_spec(name, op.dtype, op.dim)? {
            Some(pspec) if nb <= PREFILL_MAX_NB => {
                let groups = op.q_heads * op.seq.div_ceil(PREFILL_BQ);
                dispatches.push(Dispatch::rows(Kernel::PrefillBlocks, pspec, &p, bufs, groups));
            }
            _ => dispatches.push(Dispatch::rows(Kernel::AttentionBlocks, att_spec, &p, bufs, rows)),
        }
        self.run(name, &dispatches)
    }

    fn snapkv_compress(
        &self,
        op: &SnapKvCompress,
        q_obs: &WgpuBuffer,
        k: &WgpuBuffer,
        kept: &mut WgpuBuffer,
        ranking: Option<&mut WgpuBuffer>,
    ) -> Result<()> {
        match ranking.as_deref() {
            Some(r) => ops::check(op, &[q_obs, k, kept, r])?,
            None => ops::check(op, &[q_obs, k, kept])?,
        }
        self.require(op.dtype)?;
        let name = SnapKvCompress::NAME;
        let p = op.params();
        let spec = Spec::new(op.dtype).with_dim(op.dim);
        // q row of HEAD_DIM f32 and a WG_SIZE reduction array, plus rowselect's histogram and scan.
        let wg = Kernel::SnapkvLse.workgroup() as u64;
        let bytes = 4 * (spec.head_dim as u64 + wg) + 4 * (256 + wg + 4);
        self.require_workgroup_memory(name, Kernel::SnapkvLse, &spec, bytes)?;
        let hs = op.out_heads();
        let dw = self.dummy_write.buf();
        let Some(ranking) = ranking else {
            let bufs = vec![q_obs.buf(), k.buf(), dw, dw, dw, kept.buf()];
            let d = Dispatch::items(Kernel::SnapkvKeepAll, spec, &p, bufs, hs * op.seq);
            return self.run(name, &[d]);
        };
        let w = op.settings.window;
        let prefix = op.seq - w;
        let scratch = match op.settings.selector {
            Selector::Score => Some((
                self.scratch(f32_bytes(op.q_heads * w), name)?,
                self.scratch(f32_bytes(op.q_heads * prefix), name)?,
            )),
            Selector::Random { .. } => None,
        };
        let (lse, col) = match &scratch {
            Some((lse, col)) => (lse.buf(), col.buf()),
            None => (dw, dw),
        };
        let bufs = || vec![q_obs.buf(), k.buf(), lse, col, ranking.buf(), kept.buf()];
        let mut dispatches = Vec::new();
        if scratch.is_some() {
            dispatches.push(Dispatch::rows(Kernel::SnapkvLse, spec, &p, bufs(), op.q_heads * w));
            dispatches.push(Dispatch::items(Kernel::SnapkvColsum, spec, &p, bufs(), op.q_heads * prefix));
        }
        dispatches.push(Dispatch::items(Kernel::SnapkvPool, spec, &p, bufs(), hs * prefix));
        dispatches.push(Dispatch::rows(Kernel::SnapkvSelect, spec, &p, bufs(), hs));
        self.run(name, &dispatches)
    }

    fn attention_dense(
        &self,
        op: &AttentionDense,
        q: &WgpuBuffer,
        k: &WgpuBuffer,
        v: &WgpuBuffer,
        out: &mut WgpuBuffer,
        lse: &mut WgpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[q, k, v, out, lse])?;
        self.require(op.dtype)?;
        let spec = self.attention_spec(AttentionDense::NAME, op.dtype, op.dim)?;
        if op.q_len == 1 {
            let (name, hq, hkv) = (AttentionDense::NAME, op.q_heads, op.kv_heads);
            if let Some(plan) = self.decode_plan(name, op.dtype, op.dim, hq, hkv, true, op.kv_len, false)? {
                let d = self.decode_dispatches(Kernel::DecodeDense, &plan, op.params(), q, k, v, None, out, lse);
                return self.run(name, &d);
            }
        }
        let bufs = vec![q.buf(), k.buf(), v.buf(), self.dummy_read.buf(), out.buf(), lse.buf()];
        if let Some(pspec) = self.prefill_spec(AttentionDense::NAME, op.dtype, op.dim)? {
            let groups = op.q_heads * op.q_len.div_ceil(PREFILL_BQ);
            let d = Dispatch::rows(Kernel::PrefillDense, pspec, &op.params(), bufs, groups);
            return self.run(AttentionDense::NAME, &[d]);
        }
        let d = Dispatch::rows(Kernel::AttentionDense, spec, &op.params(), bufs, op.q_heads * op.q_len);
        self.run(AttentionDense::NAME, &[d])
    }

    fn attention_sparse(
        &self,
        op: &AttentionSparse,
        q: &WgpuBuffer,
        k: &WgpuBuffer,
        v: &WgpuBuffer,
        idx: &WgpuBuffer,
        out: &mut WgpuBuffer,
        lse: &mut WgpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[q, k, v, idx, out, lse])?;
        self.require(op.dtype)?;
        let spec = self.attention_spec(AttentionSparse::NAME, op.dtype, op.dim)?;
        let (name, hq, hkv) = (AttentionSparse::NAME, op.q_heads, op.kv_heads);
        let shared = op.idx_heads != op.q_heads;
        if let Some(plan) = self.decode_plan(name, op.dtype, op.dim, hq, hkv, shared, op.n_idx, false)? {
            let d = self.decode_dispatches(Kernel::DecodeSparse, &plan, op.params(), q, k, v, Some(idx), out, lse);
            return self.run(name, &d);
        }
        let bufs = vec![q.buf(), k.buf(), v.buf(), idx.buf(), out.buf(), lse.buf()];
        let d = Dispatch::rows(Kernel::AttentionSparse, spec, &op.params(), bufs, op.q_heads);
        self.run(AttentionSparse::NAME, &[d])
    }

    fn hit_rate(
        &self,
        op: &HitRate,
        sel: &WgpuBuffer,
        gold: &WgpuBuffer,
        head_hit: &mut WgpuBuffer,
        rate: &mut WgpuBuffer,
    ) -> Result<()> {
        ops::check(op, &[sel, gold, head_hit, rate])?;
        let bufs = vec![sel.buf(), gold.buf(), head_hit.buf(), rate.buf()];
        let d = Dispatch::rows(Kernel::HitRate, Spec::new(DType::F32), &op.params(), bufs, 1);
        self.run(HitRate::NAME, &[d])
    }

    fn cache_fill(
        &self,
        op: &CacheFill,
        k_src: &WgpuBuffer,
        v_src: &WgpuBuffer,
        idx: Option<&WgpuBuffer>,
        k: &mut WgpuBuffer,
        v: &mut WgpuBuffer,
        kmin: &mut WgpuBuffer,
        kmax: &mut WgpuBuffer,
        kmean: &mut WgpuBuffer,
        lens: &mut WgpuBuffer,
        pos: &mut WgpuBuffer,
    ) -> Result<()> {
        self.fill_cache(op, k_src, v_src, idx, [k, v, kmin, kmax, kmean], lens, pos)
    }

    fn cache_append(
        &self,
        op: &CacheAppend,
        k_new: &WgpuBuffer,
        v_new: &WgpuBuffer,
        g: Option<&WgpuBuffer>,
        lens: &WgpuBuffer,
        pos: &WgpuBuffer,
        state: Option<(&mut WgpuBuffer, &mut WgpuBuffer)>,
        k: &mut WgpuBuffer,
        v: &mut WgpuBuffer,
        kmin: &mut WgpuBuffer,
        kmax: &mut WgpuBuffer,
        kmean: &mut WgpuBuffer,
    ) -> Result<()> {
        self.append_cache(op, k_new, v_new, g, lens, pos, state, [k, v, kmin, kmax, kmean])
    }

    fn cache_advance(&self, op: &CacheAdvance, lens: &mut WgpuBuffer, pos: &mut WgpuBuffer) -> Result<()> {
        self.advance_cache(op, lens, pos)
    }

    fn cache_decode(
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
        self.decode_cache(op, q, k, v, lens, stats, out, lse, selected, ranking)
    }
}
