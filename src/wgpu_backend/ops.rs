//! `Backend for Wgpu`: each op checks its problem and buffers, picks its kernels and records
//! them into one submission (see `Wgpu::run`).

use super::pipeline::{Kernel, Spec};
use super::{Dispatch, Wgpu, WgpuBuffer, NAME};
use crate::ops::{self, *};
use crate::params::{AttentionParams, BlockParams};
use crate::{Backend, DType, Error, HostData, Result};

impl Wgpu {
    /// Rejects storage dtypes this adapter cannot compute with.
    fn require(&self, dtype: DType) -> Result<()> {
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

fn f32_bytes(n: usize) -> u64 {
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
        if src.dtype != dst.dtype || src.len != dst.len {
            return Err(Error::Buffer {
                op: "copy_buffer",
                name: "dst",
                expected: src.len,
                expected_dtype: src.dtype,
                got: dst.len,
                got_dtype: dst.dtype,
            });
        }
        self.copy_bytes(src, dst)
    }
    fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<std::time::Duration> {
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
        if self.has_timestamps() {
            "wgpu-timestamps"
        } else {
            "host-clock"
        }
    }

    fn pcg_hash(&self, op: &PcgHash, v: &WgpuBuffer, hash: &mut WgpuBuffer) -> Result<()> {
        ops::check(op, &[v, hash])?;
        let d =
            Dispatch::items(Kernel::PcgHash, Spec::new(DType::F32), &op.params(), vec![&v.buffer, &hash.buffer], op.n);
        self.run(PcgHash::NAME, &[d])
    }

    fn random_key(&self, op: &RandomKey, rows: &WgpuBuffer, idx: &WgpuBuffer, keys: &mut WgpuBuffer) -> Result<()> {
        ops::check(op, &[rows, idx, keys])?;
        let bufs = vec![&rows.buffer, &idx.buffer, &keys.buffer];
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
        let bufs = vec![&rows.buffer, &cand.buffer, &keys.buffer, &selected.buffer];
        let d = Dispatch::rows(Kernel::RandomSelect, Spec::new(DType::F32), &op.params(), bufs, op.rows);
        self.run(RandomSelect::NAME, &[d])
    }

    fn topk(&self, op: &TopK, scores: &WgpuBuffer, indices: &mut WgpuBuffer) -> Result<()> {
        ops::check(op, &[scores, indices])?;
        // Sort areas above SORT_SMEM (topk.wgsl) entries live in a scratch buffer: keys, then indices.
        const SORT_SMEM: usize = 1024;
        let len = op.out_k().next_power_of_two();
        let scratch =
            if len > SORT_SMEM { Some(self.scratch(f32_bytes(2 * len * op.rows), TopK::NAME)?) } else { None };
        let bufs = vec![&scores.buffer, &indices.buffer, scratch.as_ref().unwrap_or(&self.dummy_write)];
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
        let bufs = vec![&x.buffer, &g.buffer, &h0.buffer, &y.buffer];
        let d = Dispatch::items(Kernel::DecayScan, Spec::new(op.dtype), &op.params(), bufs, op.outer * op.inner);
        self.run(DecayScan::NAME, &[d])
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
        let bufs = vec![&x.buffer, &g.buffer, &h.buffer, &h_new.buffer];
        let d = Dispatch::items(Kernel::DecayStep, Spec::new(op.dtype), &op.params(), bufs, op.lanes);
        self.run(DecayStep::NAME, &[d])
    }

    fn rope(&self, op: &Rope, x: &WgpuBuffer, pos: &WgpuBuffer, y: &mut WgpuBuffer) -> Result<()> {
        ops::check(op, &[x, pos, y])?;
        self.require(op.dtype)?;
        let bufs = vec![&x.buffer, &pos.buffer, &y.buffer];
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
        let bufs = vec![&k.buffer, &v.buffer, &g.buffer, &k_tilde.buffer, &v_tilde.buffer, &k_rope.buffer];
        let d = Dispatch::items(Kernel::RatplusKv, Spec::new(op.dtype), &op.params(), bufs, op.heads * (op.dim / 2));
        self.run(RatplusKv::NAME, &[d])
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
        let bufs = vec![
            &k.buffer,
            &v.buffer,
            &g.buffer,
            &hk.buffer,
            &hv.buffer,
            &hk_new.buffer,
            &hv_new.buffer,
            &k_rope.buffer,
        ];
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
        let bufs = vec![&k.buffer, &kmin.buffer, &kmax.buffer];
        let d = Dispatch::items(Kernel::BlockMinmax, Spec::new(s.dtype), &s.params(), bufs, s.heads * s.nb() * s.dim);
        self.run(BlockMinmax::NAME, &[d])
    }

    fn block_mean(&self, op: &BlockMean, k: &WgpuBuffer, kmean: &mut WgpuBuffer) -> Result<()> {
        ops::check(op, &[k, kmean])?;
        let s = &op.shape;
        self.require(s.dtype)?;
        let bufs = vec![&k.buffer, &kmean.buffer];
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
        let bufs = vec![&q.buffer, &kmin.buffer, &kmax.buffer, &scores.buffer];
        let d = Dispatch::items(Kernel::QuestScores, Spec::new(op.dtype), &op.params(), bufs, op.q_heads * op.nb);
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
        // Computed statistics stay in f32 (allocated per call for now); cached ones arrive in
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
            dispatches.push(Dispatch::items(Kernel::BlockMinmax, spec, &p, vec![&k.buffer, kmin, kmax], items));
        }
        let stat_bufs = match (&computed, stats) {
            (Some((lo, hi)), _) => Some((lo, hi, DType::F32)),
            (None, Some((lo, hi))) => Some((&lo.buffer, &hi.buffer, op.dtype)),
            (None, None) => None,
        };
        if let (Selector::Score, Some((kmin, kmax, stat))) = (op.select.selector, stat_bufs) {
            let spec = Spec::new(op.dtype).with_stat(stat);
            let p = BlockParams { q_heads: op.q_heads as u32, seq: 1, ..p };
            let bufs = vec![&q.buffer, kmin, kmax, &ranking.buffer];
            dispatches.push(Dispatch::items(Kernel::QuestScores, spec, &p, bufs, op.q_heads * nb));
        }
        let sel = op.select_params();
        let bufs = vec![&ranking.buffer, &selected.buffer];
        dispatches.push(Dispatch::rows(Kernel::SelectBlocks, Spec::new(DType::F32), &sel, bufs, op.q_heads));
        let p = AttentionParams {
            causal: 1,
            scale: op.scale,
            n_idx: op.n_sel() as u32,
            block_size: bs as u32,
            ..attention_rows(op.q_heads, op.kv_heads, 1, op.seq, op.dim)
        };
        let bufs = vec![&q.buffer, &k.buffer, &v.buffer, &selected.buffer, &out.buffer, &lse.buffer];
        dispatches.push(Dispatch::rows(Kernel::AttentionBlocks, att_spec, &p, bufs, op.q_heads));
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
        // Without a ranking output the gate (or keys) still go through scratch for now.
        let rank_scratch;
        let rank_buf = match &ranking {
            Some(r) => &r.buffer,
            None => {
                rank_scratch = self.scratch(f32_bytes(rows * nb), name)?;
                &rank_scratch
            }
        };
        let att_spec = self.attention_spec(name, op.dtype, op.dim)?;
        let mut dispatches = Vec::new();
        // Block means in f32 (per call for now).
        let kmean = match op.select.selector {
            Selector::Score => Some(self.scratch(f32_bytes(op.kv_heads * nb * op.dim), name)?),
            Selector::Random { .. } => None,
        };
        if let Some(kmean) = &kmean {
            let spec = Spec::new(op.dtype).with_stat(DType::F32);
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
            dispatches.push(Dispatch::items(Kernel::BlockMean, spec, &p, vec![&k.buffer, kmean], items));
            let p = BlockParams { q_heads: op.q_heads as u32, ..p };
            let bufs = vec![&q.buffer, kmean, rank_buf];
            dispatches.push(Dispatch::items(Kernel::MobaGate, spec, &p, bufs, rows * nb));
        }
        let sel = op.select_params();
        let bufs = vec![rank_buf, &selected.buffer];
        dispatches.push(Dispatch::rows(Kernel::SelectBlocks, Spec::new(DType::F32), &sel, bufs, rows));
        let p = AttentionParams {
            causal: 1,
            scale: op.scale,
            n_idx: op.width() as u32,
            block_size: bs as u32,
            ..attention_rows(op.q_heads, op.kv_heads, op.seq, op.seq, op.dim)
        };
        let bufs = vec![&q.buffer, &k.buffer, &v.buffer, &selected.buffer, &out.buffer, &lse.buffer];
        dispatches.push(Dispatch::rows(Kernel::AttentionBlocks, att_spec, &p, bufs, rows));
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
        let dw = &self.dummy_write;
        let Some(ranking) = ranking else {
            let bufs = vec![&q_obs.buffer, &k.buffer, dw, dw, dw, &kept.buffer];
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
            Some((lse, col)) => (lse, col),
            None => (dw, dw),
        };
        let bufs = || vec![&q_obs.buffer, &k.buffer, lse, col, &ranking.buffer, &kept.buffer];
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
        let bufs = vec![&q.buffer, &k.buffer, &v.buffer, &self.dummy_read, &out.buffer, &lse.buffer];
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
        let bufs = vec![&q.buffer, &k.buffer, &v.buffer, &idx.buffer, &out.buffer, &lse.buffer];
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
        let bufs = vec![&sel.buffer, &gold.buffer, &head_hit.buffer, &rate.buffer];
        let d = Dispatch::rows(Kernel::HitRate, Spec::new(DType::F32), &op.params(), bufs, 1);
        self.run(HitRate::NAME, &[d])
    }
}
