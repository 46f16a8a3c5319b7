//! `kvsparse report`: every method at every budget on one backend, against dense attention and
//! against the hardware limit.
//!
//! For each context length the report measures the device's copy bandwidth (the bytes ceiling),
//! then times (median of repeats, device timers where the backend has them):
//! * decode: dense attention (the baseline), Quest over cached block statistics, the random
//!   selector with Quest's budget, and decode over SnapKV's kept tokens; each on the plain
//!   attention backbone and on RAT+ (decaying memory: the decode step's `ratplus_step` included);
//! * prefill: dense causal attention, MoBA at each budget (RAT+: the `ratplus_kv` scan included),
//!   and SnapKV's compression.
//!
//! Every row carries the op's FLOPs and minimal bytes ([`crate::ops::Op::cost`]), the achieved
//! rate, the share of the ceiling that rate is, the speedup over dense, and the FLOP and byte
//! savings the budget promises.

use crate::ops::*;
use crate::{Backend, DType, HostData, Result};
use std::fmt::Write as _;
use std::time::Duration;

/// A report configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    /// Name on the command line and in the output: `paper`, `long`, `quick`.
    pub name: &'static str,
    /// Query heads (`Hq`) of the layer timed; a multiple of `kv_heads`.
    pub q_heads: usize,
    /// Key/value heads (`Hkv`).
    pub kv_heads: usize,
    /// Head dim (`D`).
    pub dim: usize,
    /// Storage dtype of q, k, v and the outputs.
    pub dtype: DType,
    /// Context lengths (tokens) measured, one block of rows each.
    pub contexts: Vec<usize>,
    /// Prefill rows only for contexts up to this length (dense causal prefill is quadratic).
    pub prefill_max: usize,
    /// Tokens per block of Quest and MoBA.
    pub block_size: usize,
    /// Budgets as fractions `1/n` of the context.
    pub budget_denominators: Vec<usize>,
    /// SnapKV observation window (tokens).
    pub snapkv_window: usize,
    /// Timed runs per row (after one warm-up); slow rows use fewer, at least three.
    pub repeats: usize,
    /// Bytes of the copy used to measure bandwidth.
    pub copy_bytes: usize,
    /// Top-k kernel rows `(rows, n, k)` (peers: torch.topk).
    pub topk_shapes: Vec<(usize, usize, usize)>,
    /// Device warm-up (repeated copies) before anything is timed.
    pub warmup: Duration,
}

impl Preset {
    /// The paper's setting: 4K context, block 64 with 16/8/4 blocks, SnapKV window 64 keeping
    /// 1024/512/256 tokens; a Llama-3-8B-like layer (32 query heads, 8 KV heads, D 128, bf16).
    pub fn paper() -> Self {
        Preset {
            name: "paper",
            q_heads: 32,
            kv_heads: 8,
            dim: 128,
            dtype: DType::BF16,
            contexts: vec![4096],
            prefill_max: 4096,
            block_size: 64,
            budget_denominators: vec![4, 8, 16],
            snapkv_window: 64,
            repeats: 50,
            copy_bytes: 1 << 30,
            topk_shapes: vec![(8, 2048, 128), (32, 2048, 128), (1, 131072, 2048), (8, 131072, 8192)],
            warmup: Duration::from_secs(2),
        }
    }
    /// Long contexts: 32K and 128K, same layer as [`Preset::paper`].
    pub fn long() -> Self {
        Preset { name: "long", contexts: vec![32768, 131072], prefill_max: 32768, repeats: 30, ..Preset::paper() }
    }
    /// A small run that finishes in seconds on the CPU reference and on software Vulkan.
    pub fn quick() -> Self {
        Preset {
            name: "quick",
            q_heads: 4,
            kv_heads: 2,
            dim: 64,
            dtype: DType::F32,
            contexts: vec![1024],
            prefill_max: 1024,
            block_size: 64,
            budget_denominators: vec![4, 8, 16],
            snapkv_window: 64,
            repeats: 3,
            copy_bytes: 16 << 20,
            topk_shapes: vec![(8, 2048, 128)],
            warmup: Duration::from_millis(100),
        }
    }
    /// Looks a preset up by name.
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "paper" => Some(Self::paper()),
            "long" => Some(Self::long()),
            "quick" => Some(Self::quick()),
            _ => None,
        }
    }
    /// Rows the report will time (for the progress bar).
    pub fn row_count(&self) -> usize {
        let b = self.budget_denominators.len();
        self.contexts
            .iter()
            .map(|&t| 2 + 2 * (1 + 4 * b) + if t <= self.prefill_max { 2 * (1 + b) + b } else { 0 })
            .sum::<usize>()
            + 1
            + self.topk_shapes.len()
    }
}

/// Whether a row is bound by bytes (decode, scans, scoring) or by FLOPs (prefill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Limited by memory traffic: the rate is GB/s, the ceiling the copy bandwidth.
    Bytes,
    /// Limited by arithmetic: the rate is TFLOP/s, the ceiling dense attention's FLOP rate.
    Flops,
}

/// One measured row.
///
/// ```
/// use kvsparse::report::{Bound, Row};
/// use std::time::Duration;
/// let row = Row {
///     phase: "decode", method: "quest", backbone: "attention", context: 4096,
///     budget: "1/8".into(), median: Duration::from_millis(1), min: Duration::from_millis(1),
///     flops: 2_000_000_000, bytes: 500_000_000, bound: Bound::Bytes,
///     speedup: 6.5, ideal_speedup: 7.8, of_ceiling: 0.6,
/// };
/// assert!((row.gbps() - 500.0).abs() < 1e-9); // 5e8 bytes in 1 ms
/// assert!((row.tflops() - 2.0).abs() < 1e-9);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `decode`, `prefill`, `compress` (SnapKV, once per prompt) or `kernel` (one op alone).
    pub phase: &'static str,
    /// `dense`, `quest`, `quest_kv` (Quest with one selection per kv head), `random`, `snapkv`,
    /// `moba`, or for kernel rows the op's name
    /// (`topk`, `decay_scan`, `quest_scores`).
    pub method: &'static str,
    /// `attention` (plain K/V) or `ratplus` (decaying memory).
    pub backbone: &'static str,
    /// Context length (tokens); for the `topk` kernel rows, the score row length `n`.
    pub context: usize,
    /// `dense`, `1/4`, ...
    pub budget: String,
    /// Median of the timed runs.
    pub median: Duration,
    /// Fastest of the timed runs.
    pub min: Duration,
    /// FLOPs of one run ([`Cost::flops`]), the RAT+ step or scan included on that backbone.
    pub flops: u64,
    /// Minimal bytes of one run ([`Cost::bytes`]), the RAT+ step or scan included on that
    /// backbone.
    pub bytes: u64,
    /// Which ceiling the row is measured against.
    pub bound: Bound,
    /// Speedup over the dense row of the same phase, backbone and context.
    pub speedup: f64,
    /// Best possible speedup from the cost model (dense bytes or FLOPs over this row's).
    pub ideal_speedup: f64,
    /// Achieved rate over the ceiling (copy bandwidth for bytes-bound rows; for FLOP-bound rows,
    /// the dense row's FLOP rate, so 1.0 = as efficient per FLOP as dense).
    pub of_ceiling: f64,
}

impl Row {
    /// GB/s of compulsory traffic.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / self.median.as_secs_f64() / 1e9
    }
    /// TFLOP/s.
    pub fn tflops(&self) -> f64 {
        self.flops as f64 / self.median.as_secs_f64() / 1e12
    }
}

/// A finished report: what [`run`] returns; print it with [`Report::table`], save it with
/// [`Report::json`] or [`Report::svg`].
///
/// ```
/// use kvsparse::report::{Preset, Report};
/// let report = Report {
///     preset: Preset::quick(),
///     backend: "cpu",
///     device: "host".into(),
///     timer: "host-clock",
///     copy_bandwidth: 1e10,
///     rows: Vec::new(), // filled by `run`
/// };
/// assert!(report.table().contains("10.0 GB/s"));
/// assert!(report.json().contains("\"preset\": \"quick\""));
/// assert!(report.svg().starts_with("<svg"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The configuration that was run.
    pub preset: Preset,
    /// Backend name ([`Backend::name`]): `cpu`, `wgpu` or `cuda`.
    pub backend: &'static str,
    /// Device description ([`Backend::device_name`]).
    pub device: String,
    /// How rows were timed ([`Backend::timer_kind`]), e.g. `host-clock`.
    pub timer: &'static str,
    /// Measured device copy bandwidth, bytes read + written per second.
    pub copy_bandwidth: f64,
    /// Every measured row (see [`Row::phase`] for the kinds).
    pub rows: Vec<Row>,
}

/// Rows measured on both backbones before they become [`Row`]s: method, budget, cost, and
/// `(median, min)` on the attention and the RAT+ backbone.
type Timed = (&'static str, String, Cost, [(Duration, Duration); 2]);

/// The report's deterministic inputs (never zeros): `n` values of a 32-bit LCG seeded with
/// `seed`, mapped to [-1, 1), stored as `dtype`. Benchmarks outside the report use it too, so
/// that their inputs are the report's.
///
/// ```
/// use kvsparse::{report::data, DType, HostData};
/// let HostData::F32(v) = data(4, 7, DType::F32) else { unreachable!() };
/// assert!(v.iter().all(|x| (-1.0..1.0).contains(x) && *x != 0.0));
/// assert_eq!(data(4, 7, DType::F32), data(4, 7, DType::F32));
/// ```
pub fn data(n: usize, seed: u32, dtype: DType) -> HostData {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    HostData::from_f32(dtype, &v)
}

/// Gates in (0, 1), as RAT+'s sigmoid produces.
fn gates(n: usize, seed: u32) -> HostData {
    match data(n, seed, DType::F32) {
        HostData::F32(v) => HostData::F32(v.into_iter().map(|x| 0.5 + 0.45 * x).collect()),
        other => other,
    }
}

/// Median and minimum of `repeats` timings of `f` after one warm-up run, each timed with
/// [`Backend::time_op`]. Slow rows (a run over 50 ms, e.g. quadratic prefill on a slow backend)
/// are repeated only until about two seconds are spent, and at least three times.
fn measure<B: Backend>(b: &B, repeats: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<(Duration, Duration)> {
    measure_by(&|f| b.time_op(f), repeats, f)
}

/// Times one run of the work it is given.
type Timer<'a> = dyn Fn(&mut dyn FnMut() -> Result<()>) -> Result<Duration> + 'a;

/// [`measure`] with the timer given: the bandwidth copy is timed with [`Backend::time`], since a
/// copy recorded into a CUDA graph runs on the copy engines, well below the rate kernels stream at.
fn measure_by(timer: &Timer, repeats: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<(Duration, Duration)> {
    let warm = timer(f)?;
    let repeats = if warm > Duration::from_millis(50) {
        repeats.min(((2.0 / warm.as_secs_f64()) as usize).max(3))
    } else {
        repeats
    };
    let mut times: Vec<Duration> = (0..repeats.max(1)).map(|_| timer(f)).collect::<Result<_>>()?;
    times.sort();
    Ok((times[times.len() / 2], times[0]))
}

/// Times `f` alone (the attention backbone) and after `backbone` (RAT+: the decode step or the
/// prefill scan that produces the keys `f` reads).
fn measure_backbones<B: Backend>(
    b: &B,
    repeats: usize,
    backbone: &mut dyn FnMut() -> Result<()>,
    f: &mut dyn FnMut() -> Result<()>,
    prog: &mut Progress,
    what: &str,
) -> Result<[(Duration, Duration); 2]> {
    let plain = measure(b, repeats, f)?;
    prog.step(what);
    let rat = measure(b, repeats, &mut || {
        backbone()?;
        f()
    })?;
    prog.step(what);
    Ok([plain, rat])
}

/// Turns rows timed on both backbones into [`Row`]s, against the dense row `dense` of the same
/// phase; `backbone_cost` is what the RAT+ backbone adds (step or scan).
#[allow(clippy::too_many_arguments)]
fn backbone_rows(
    rows: &mut Vec<Row>,
    phase: &'static str,
    bound: Bound,
    context: usize,
    timed: Vec<Timed>,
    dense: (Cost, [(Duration, Duration); 2]),
    backbone_cost: Cost,
    copy_bandwidth: f64,
) {
    for (method, budget, cost, times) in timed {
        for (bi, backbone) in ["attention", "ratplus"].into_iter().enumerate() {
            let extra = if bi == 1 { backbone_cost } else { Cost::default() };
            let (c, dense_c) = (cost + extra, dense.0 + extra);
            let (median, min) = times[bi];
            let (t, base) = (median.as_secs_f64(), dense.1[bi].0.as_secs_f64());
            let (ideal_speedup, of_ceiling) = match bound {
                Bound::Bytes => (dense_c.bytes as f64 / c.bytes as f64, c.bytes as f64 / t / copy_bandwidth),
                Bound::Flops => {
                    (dense_c.flops as f64 / c.flops as f64, (c.flops as f64 / t) / (dense_c.flops as f64 / base))
                }
            };
            rows.push(Row {
                phase,
                method,
                backbone,
                context,
                budget: budget.clone(),
                median,
                min,
                flops: c.flops,
                bytes: c.bytes,
                bound,
                speedup: base / t,
                ideal_speedup,
                of_ceiling,
            });
        }
    }
}

struct Progress {
    done: usize,
    total: usize,
    enabled: bool,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        if self.enabled {
            let width = 30;
            let filled = width * self.done / self.total.max(1);
            eprint!(
                "\r[{}{}] {:>3}/{} {:<40}",
                "#".repeat(filled),
                " ".repeat(width - filled.min(width)),
                self.done,
                self.total,
                what
            );
            if self.done >= self.total {
                eprintln!();
            }
        }
    }
}

/// Runs the report on `b`. `progress` draws a progress bar on stderr.
///
/// ```
/// use kvsparse::{report::{run, Preset}, Cpu};
/// let mut preset = Preset::quick();
/// preset.contexts = vec![128];
/// preset.prefill_max = 128;
/// preset.repeats = 1;
/// let report = run(&Cpu::new(), &preset, false)?;
/// assert!(report.rows.iter().any(|r| r.method == "quest"));
/// # Ok::<(), kvsparse::Error>(())
/// ```
pub fn run<B: Backend>(b: &B, preset: &Preset, progress: bool) -> Result<Report> {
    let p = preset;
    let mut prog = Progress { done: 0, total: p.row_count(), enabled: progress };
    let (hq, hkv, d, dt) = (p.q_heads, p.kv_heads, p.dim, p.dtype);
    let scale = default_scale(d);

    // Copy bandwidth: one buffer copied into another, through the shader cores as the kernels'
    // bytes go (wgpu's copy_buffer is a compute pass: a buffer-to-buffer copy can run on a copy
    // engine at a fraction of the rate); bytes = read + write.
    let words = p.copy_bytes / 4;
    let src = b.upload(&data(words, 1, DType::F32))?;
    let mut dst = b.alloc(DType::F32, words)?;
    // Warm the device first: a GPU idling between small submissions sits in a low clock state,
    // and the first rows timed would pay for it (seen through wgpu on an H100: the first context
    // of a report ran 2.5-5x slower than the same rows timed later).
    let warm_until = std::time::Instant::now() + p.warmup;
    while std::time::Instant::now() < warm_until {
        b.time(&mut || b.copy_buffer(&src, &mut dst))?;
    }
    let (copy_t, _) = measure_by(&|f| b.time(f), p.repeats.min(20), &mut || b.copy_buffer(&src, &mut dst))?;
    drop((src, dst));
    let copy_bandwidth = 2.0 * (words * 4) as f64 / copy_t.as_secs_f64();
    prog.step("copy bandwidth");

    let mut rows = Vec::new();
    let kernel_row =
        |method: &'static str, context: usize, budget: String, cost: Cost, (median, min): (Duration, Duration)| Row {
            phase: "kernel",
            method,
            backbone: "-",
            context,
            budget,
            median,
            min,
            flops: cost.flops,
            bytes: cost.bytes,
            bound: Bound::Bytes,
            speedup: 1.0,
            ideal_speedup: 1.0,
            of_ceiling: cost.bytes as f64 / median.as_secs_f64() / copy_bandwidth,
        };
    for &(r, n, k) in &p.topk_shapes {
        let op = TopK::new(r, n, k)?;
        let scores = b.upload(&data(r * n, 13, DType::F32))?;
        let mut idx = b.alloc(DType::I32, r * op.out_k())?;
        let times = measure(b, p.repeats, &mut || b.topk(&op, &scores, &mut idx))?;
        prog.step(&format!("topk {r}x{n} k{k}"));
        rows.push(kernel_row("topk", n, format!("{r}x{n}/k{k}"), op.cost(), times));
    }
    // The decay scan alone, f32, over all channels of a layer's keys (C = Hq * D).
    let scan_t = p.contexts.iter().copied().find(|&t| t <= p.prefill_max).unwrap_or(p.contexts[0]).min(32768);
    {
        let c = p.q_heads * p.dim;
        let op = DecayScan::new(1, scan_t, c, DType::F32)?;
        let (x, g, h0) = (
            b.upload(&data(scan_t * c, 14, DType::F32))?,
            b.upload(&gates(scan_t * c, 15))?,
            b.upload(&data(c, 16, DType::F32))?,
        );
        let mut y = b.alloc(DType::F32, scan_t * c)?;
        let times = measure(b, p.repeats, &mut || b.decay_scan(&op, &x, &g, &h0, &mut y))?;
        prog.step("decay scan");
        rows.push(kernel_row("decay_scan", scan_t, format!("C{c}"), op.cost(), times));
    }
    let mut kernel_rows = Vec::new();
    for &t in &p.contexts {
        let nb = t.div_ceil(p.block_size);
        let kv_len = hkv * t * d;
        let q = b.upload(&data(hq * d, 2, dt))?;
        let k = b.upload(&data(kv_len, 3, dt))?;
        let v = b.upload(&data(kv_len, 4, dt))?;
        let g_step = b.upload(&gates(hkv * d, 5))?;
        let (k1, v1) = (b.upload(&data(hkv * d, 6, dt))?, b.upload(&data(hkv * d, 7, dt))?);
        let (hk, hv) = (b.upload(&data(hkv * d, 8, DType::F32))?, b.upload(&data(hkv * d, 9, DType::F32))?);
        let step = RatplusStep::new(hkv, d, 10000.0, t as u32 - 1, dt)?;
        let mut step_out = [b.alloc(DType::F32, hkv * d)?, b.alloc(DType::F32, hkv * d)?, b.alloc(dt, hkv * d)?];
        let mut ratplus_step = || -> Result<()> {
            let [hkn, hvn, kr] = &mut step_out;
            b.ratplus_step(&step, &k1, &v1, &g_step, &hk, &hv, hkn, hvn, kr)
        };

        // ---- decode ----
        let dense = AttentionDense::new(hq, hkv, 1, t, d, false, scale, dt)?;
        let (mut out, mut lse) = (b.alloc(dt, hq * d)?, b.alloc(DType::F32, hq)?);
        let shape = BlockShape { heads: hkv, seq: t, dim: d, block_size: p.block_size, dtype: dt };
        let (mut kmin, mut kmax) = (b.alloc(dt, hkv * nb * d)?, b.alloc(dt, hkv * nb * d)?);
        b.block_minmax(&BlockMinmax::new(shape)?, &k, &mut kmin, &mut kmax)?;

        let scores_op = QuestScores::new(hq, hkv, nb, d, dt)?;
        let mut scores = b.alloc(DType::F32, hq * nb)?;
        let times = measure(b, p.repeats, &mut || b.quest_scores(&scores_op, &q, &kmin, &kmax, &mut scores))?;
        prog.step("quest scores");
        kernel_rows.push(("quest_scores", t, format!("nb{nb}"), scores_op.cost(), times));

        let mut decode_rows: Vec<Timed> = Vec::new();
        let dense_t = measure_backbones(
            b,
            p.repeats,
            &mut ratplus_step,
            &mut || b.attention_dense(&dense, &q, &k, &v, &mut out, &mut lse),
            &mut prog,
            "dense decode",
        )?;
        decode_rows.push(("dense", "dense".into(), dense.cost(), dense_t));

        for &den in &p.budget_denominators {
            let n_blocks = (nb / den).max(1);
            // `quest_kv`: one selection per kv head from the group's mean score (GqaMode::Mean).
            let methods = [
                ("quest", Selector::Score, GqaMode::PerHead),
                ("quest_kv", Selector::Score, GqaMode::Mean),
                ("random", Selector::Random { seed: 42 }, GqaMode::PerHead),
            ];
            for (method, selector, gqa) in methods {
                let cfg = SelectConfig { block_size: p.block_size, n_blocks, force_first: true, n_local: 1, selector };
                let op = QuestDecode::new(hq, hkv, t, d, cfg, scale, dt)?.with_cached_stats();
                let op = if gqa == GqaMode::Mean { op.with_group_selection() } else { op };
                let [mut sel, mut o, mut l, mut rank] = op.alloc_outputs(b)?;
                let times = measure_backbones(
                    b,
                    p.repeats,
                    &mut ratplus_step,
                    &mut || b.quest_decode(&op, &q, &k, &v, Some((&kmin, &kmax)), &mut sel, &mut o, &mut l, &mut rank),
                    &mut prog,
                    &format!("{method} decode 1/{den}"),
                )?;
                decode_rows.push((method, format!("1/{den}"), op.cost(), times));
            }
            // SnapKV: decode over the kept tokens (one set per kv head), `capacity = T / den`.
            let capacity = (t / den).max(p.snapkv_window + 1).min(t);
            let idx = b.upload(&HostData::I32(
                (0..hkv).flat_map(|_| (0..capacity as i32).map(|j| j * den as i32 % t as i32)).collect(),
            ))?;
            let op = AttentionSparse::new(hq, hkv, t, d, hkv, capacity, scale, dt)?;
            let times = measure_backbones(
                b,
                p.repeats,
                &mut ratplus_step,
                &mut || b.attention_sparse(&op, &q, &k, &v, &idx, &mut out, &mut lse),
                &mut prog,
                &format!("snapkv decode 1/{den}"),
            )?;
            decode_rows.push(("snapkv", format!("1/{den}"), op.cost(), times));
        }
        backbone_rows(
            &mut rows,
            "decode",
            Bound::Bytes,
            t,
            decode_rows,
            (dense.cost(), dense_t),
            step.cost(),
            copy_bandwidth,
        );

        // ---- prefill ----
        if t <= p.prefill_max {
            let qp = b.upload(&data(hq * t * d, 10, dt))?;
            let g = b.upload(&gates(kv_len, 11))?;
            let scan = RatplusKv::new(hkv, t, d, 10000.0, dt)?;
            let mut scan_out = [b.alloc(dt, kv_len)?, b.alloc(dt, kv_len)?, b.alloc(dt, kv_len)?];
            let mut ratplus_kv = || -> Result<()> {
                let [kt, vt, kr] = &mut scan_out;
                b.ratplus_kv(&scan, &k, &v, &g, kt, vt, kr)
            };
            let dense_p = AttentionDense::new(hq, hkv, t, t, d, true, scale, dt)?;
            let (mut out_p, mut lse_p) = (b.alloc(dt, hq * t * d)?, b.alloc(DType::F32, hq * t)?);
            let mut prefill_rows: Vec<Timed> = Vec::new();
            let dense_pt = measure_backbones(
                b,
                p.repeats,
                &mut ratplus_kv,
                &mut || b.attention_dense(&dense_p, &qp, &k, &v, &mut out_p, &mut lse_p),
                &mut prog,
                "dense prefill",
            )?;
            prefill_rows.push(("dense", "dense".into(), dense_p.cost(), dense_pt));
            for &den in &p.budget_denominators {
                let cfg = SelectConfig {
                    block_size: p.block_size,
                    n_blocks: (nb / den).max(2),
                    force_first: true,
                    n_local: 1,
                    selector: Selector::Score,
                };
                let op = MobaPrefill::new(hq, hkv, t, d, cfg, scale, dt)?.without_ranking();
                let specs: Vec<BufferSpec> = op.buffers().into_iter().filter(|s| s.output).collect();
                let mut outs: Vec<B::Buffer> = specs.iter().map(|s| b.alloc(s.dtype, s.len)).collect::<Result<_>>()?;
                let times = measure_backbones(
                    b,
                    p.repeats,
                    &mut ratplus_kv,
                    &mut || {
                        let [o, l, s] = &mut outs[..] else { unreachable!("three MoBA outputs") };
                        b.moba_prefill(&op, &qp, &k, &v, o, l, s, None)
                    },
                    &mut prog,
                    &format!("moba prefill 1/{den}"),
                )?;
                prefill_rows.push(("moba", format!("1/{den}"), op.cost(), times));
            }
            let dense = (dense_p.cost(), dense_pt);
            backbone_rows(&mut rows, "prefill", Bound::Flops, t, prefill_rows, dense, scan.cost(), copy_bandwidth);
            // SnapKV compression, once per prompt, after prefill.
            for &den in &p.budget_denominators {
                let w = p.snapkv_window.min(t - 1);
                let settings = SnapKvSettings {
                    capacity: (t / den).max(w + 1),
                    window: w,
                    kernel: 5,
                    pooling: Pooling::Avg,
                    gqa: GqaMode::Mean,
                    selector: Selector::Score,
                    scale,
                };
                let op = SnapKvCompress::new(hq, hkv, t, d, settings, dt)?;
                let q_obs = b.upload(&data(hq * op.obs_len() * d, 12, dt))?;
                let specs: Vec<BufferSpec> = op.buffers().into_iter().filter(|s| s.output).collect();
                let mut outs: Vec<B::Buffer> = specs.iter().map(|s| b.alloc(s.dtype, s.len)).collect::<Result<_>>()?;
                let (median, min) = measure(b, p.repeats, &mut || match &mut outs[..] {
                    [kept, rank] => b.snapkv_compress(&op, &q_obs, &k, kept, Some(rank)),
                    [kept] => b.snapkv_compress(&op, &q_obs, &k, kept, None),
                    _ => unreachable!("one or two SnapKV outputs"),
                })?;
                prog.step(&format!("snapkv compress 1/{den}"));
                let c = op.cost();
                let base = dense_pt[0].0.as_secs_f64();
                rows.push(Row {
                    phase: "compress",
                    method: "snapkv",
                    backbone: "attention",
                    context: t,
                    budget: format!("1/{den}"),
                    median,
                    min,
                    flops: c.flops,
                    bytes: c.bytes,
                    bound: Bound::Bytes,
                    speedup: base / median.as_secs_f64(),
                    ideal_speedup: dense_p.cost().flops as f64 / c.flops.max(1) as f64,
                    of_ceiling: c.bytes as f64 / median.as_secs_f64() / copy_bandwidth,
                });
            }
        }
    }
    for (method, t, budget, cost, times) in kernel_rows {
        rows.push(kernel_row(method, t, budget, cost, times));
    }
    Ok(Report {
        preset: preset.clone(),
        backend: b.name(),
        device: b.device_name(),
        timer: b.timer_kind(),
        copy_bandwidth,
        rows,
    })
}

fn fmt_time(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

impl Report {
    /// The table printed on the terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let p = &self.preset;
        let _ = writeln!(
            s,
            "kvsparse report, preset {}: {} on {} (timer: {}); Hq {}, Hkv {}, D {}, {}, block {}",
            p.name, self.backend, self.device, self.timer, p.q_heads, p.kv_heads, p.dim, p.dtype, p.block_size
        );
        let _ = writeln!(s, "copy bandwidth: {:.1} GB/s (read + write)", self.copy_bandwidth / 1e9);
        let _ = writeln!(
            s,
            "{:<8} {:<12} {:<9} {:>7} {:>13} {:>11} {:>12} {:>8} {:>8} {:>7}",
            "phase", "method", "backbone", "context", "budget", "time", "rate", "% ceil", "speedup", "ideal"
        );
        for r in &self.rows {
            let rate = match r.bound {
                Bound::Bytes => format!("{:.1} GB/s", r.gbps()),
                Bound::Flops => format!("{:.2} TF/s", r.tflops()),
            };
            let _ = writeln!(
                s,
                "{:<8} {:<12} {:<9} {:>7} {:>13} {:>11} {:>12} {:>7.1}% {:>7.2}x {:>6.2}x",
                r.phase,
                r.method,
                r.backbone,
                r.context,
                r.budget,
                fmt_time(r.median),
                rate,
                100.0 * r.of_ceiling,
                r.speedup,
                r.ideal_speedup
            );
        }
        s.push_str("% ceil: bytes-bound rows against the measured copy bandwidth; prefill rows against dense prefill's FLOP rate.\n");
        s.push_str("ideal: dense bytes (decode) or FLOPs (prefill) over the row's, i.e. the speedup a perfect kernel would get.\n");
        s
    }

    /// The report as JSON (no dependency: the schema is flat).
    pub fn json(&self) -> String {
        let p = &self.preset;
        let esc = |x: &str| x.replace('\\', "\\\\").replace('"', "\\\"");
        let mut s = String::from("{\n");
        let _ = writeln!(
            s,
            "  \"preset\": \"{}\", \"backend\": \"{}\", \"device\": \"{}\", \"timer\": \"{}\",",
            p.name,
            self.backend,
            esc(&self.device),
            self.timer
        );
        let _ = writeln!(
            s,
            "  \"q_heads\": {}, \"kv_heads\": {}, \"dim\": {}, \"dtype\": \"{}\", \"block_size\": {}, \"repeats\": {},",
            p.q_heads, p.kv_heads, p.dim, p.dtype, p.block_size, p.repeats
        );
        let _ = writeln!(s, "  \"copy_bandwidth_bytes_per_s\": {:.6e},", self.copy_bandwidth);
        s.push_str("  \"rows\": [\n");
        for (i, r) in self.rows.iter().enumerate() {
            let _ = write!(
                s,
                "    {{\"phase\": \"{}\", \"method\": \"{}\", \"backbone\": \"{}\", \"context\": {}, \"budget\": \"{}\", \
                 \"median_s\": {:.6e}, \"min_s\": {:.6e}, \"flops\": {}, \"bytes\": {}, \"bound\": \"{}\", \
                 \"speedup\": {:.4}, \"ideal_speedup\": {:.4}, \"of_ceiling\": {:.4}}}",
                r.phase,
                r.method,
                r.backbone,
                r.context,
                r.budget,
                r.median.as_secs_f64(),
                r.min.as_secs_f64(),
                r.flops,
                r.bytes,
                if r.bound == Bound::Bytes { "bytes" } else { "flops" },
                r.speedup,
                r.ideal_speedup,
                r.of_ceiling
            );
            s.push_str(if i + 1 < self.rows.len() { ",\n" } else { "\n" });
        }
        s.push_str("  ]\n}\n");
        s
    }

    /// An SVG chart: decode speedup over dense against the budget, one line per method and
    /// backbone, with the ideal (cost-model) speedup drawn dashed.
    pub fn svg(&self) -> String {
        // Plot on the left, legend in a column on the right.
        let (w, h, m, legend) = (900.0, 420.0, 60.0, 230.0);
        let decode: Vec<&Row> = self.rows.iter().filter(|r| r.phase == "decode" && r.method != "dense").collect();
        let budgets: Vec<String> = {
            let mut b: Vec<String> = decode.iter().map(|r| r.budget.clone()).collect();
            b.dedup();
            b.sort_by_key(|x| x.trim_start_matches("1/").parse::<usize>().unwrap_or(0));
            b.dedup();
            b
        };
        let ymax = decode.iter().map(|r| r.speedup.max(r.ideal_speedup)).fold(1.0f64, f64::max).ceil();
        let x = |i: usize| m + (w - legend - 2.0 * m) * i as f64 / (budgets.len().max(2) - 1) as f64;
        let y = |v: f64| h - m - (h - 2.0 * m) * v / ymax;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{m}\" y=\"24\" font-size=\"15\">kvsparse decode speedup over dense ({} on {}, preset {})</text>\n",
            self.backend,
            self.device.replace('&', "&amp;").replace('<', "&lt;"),
            self.preset.name
        );
        let _ = writeln!(
            s,
            "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
            h - m,
            w - legend - m,
            h - m
        );
        let _ = writeln!(s, "<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>", h - m);
        for i in 0..=ymax as usize {
            let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{i}x</text>", m - 6.0, y(i as f64) + 4.0);
        }
        for (i, b) in budgets.iter().enumerate() {
            let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{b}</text>", x(i), h - m + 18.0);
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">KV budget</text>",
            (w - legend) / 2.0,
            h - 16.0
        );
        let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
        type Series = (String, Vec<(usize, f64, f64)>); // label, (budget index, measured, ideal)
        let mut series: Vec<Series> = Vec::new();
        for r in &decode {
            let key = format!("{} {} T={}", r.method, r.backbone, r.context);
            let bi = budgets.iter().position(|b| *b == r.budget).unwrap_or(0);
            match series.iter_mut().find(|(k, _)| *k == key) {
                Some((_, pts)) => pts.push((bi, r.speedup, r.ideal_speedup)),
                None => series.push((key, vec![(bi, r.speedup, r.ideal_speedup)])),
            }
        }
        for (si, (key, pts)) in series.iter().enumerate() {
            let c = colors[si % colors.len()];
            let line = |sel: fn(&(usize, f64, f64)) -> f64| {
                pts.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(sel(p)))).collect::<Vec<_>>().join(" ")
            };
            let _ =
                writeln!(s, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>", line(|p| p.1));
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{c}\" stroke-dasharray=\"4 3\" points=\"{}\"/>",
                line(|p| p.2)
            );
            let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{key}</text>", w - legend, m + 16.0 * si as f64);
        }
        let _ = writeln!(
            s,
            "<text x=\"{m}\" y=\"{}\" fill=\"gray\">solid: measured; dashed: ceiling from the cost model (dense bytes / method bytes)</text>",
            m - 8.0
        );
        s.push_str("</svg>\n");
        s
    }
}
