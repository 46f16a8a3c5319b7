//! Shared pieces of the test binaries: a seeded RNG, problem generators for every op, per-op
//! and per-dtype tolerances, and comparisons that say what differs.

#![allow(dead_code)]

use kvsparse::ops::*;
use kvsparse::{Backend, Cpu, DType, HostData};

/// The golden cases: `tests/golden` under the working directory when it exists (test binaries
/// copied to another machine run from the repository root there), else under the crate.
pub fn golden_dir() -> std::path::PathBuf {
    let here = std::path::Path::new("tests/golden");
    if here.is_dir() {
        here.to_path_buf()
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
    }
}

/// Whether `KVSPARSE_REQUIRE` (comma-separated backend names) asks for backend `name`.
pub fn required(name: &str) -> bool {
    std::env::var("KVSPARSE_REQUIRE").is_ok_and(|v| v.split(',').any(|x| x.trim() == name))
}

/// The CUDA backend, or `None` with a note where no device exists (a failure under
/// `KVSPARSE_REQUIRE=cuda`).
#[cfg(feature = "cuda")]
pub fn cuda_or_skip() -> Option<kvsparse::Cuda> {
    kvsparse::Cuda::new()
        .inspect_err(|e| {
            assert!(!required("cuda"), "KVSPARSE_REQUIRE=cuda but no device: {e}");
            eprintln!("skipped: no CUDA device ({e})");
        })
        .ok()
}

/// A trial that runs `check` on `backend`: *ignored* when the backend is unavailable, or a
/// failure naming why when `KVSPARSE_REQUIRE` asks for it.
pub fn backend_trial<B: Sync + 'static>(
    trial: String,
    name: &'static str,
    backend: &'static Result<B, String>,
    check: impl FnOnce(&'static B) -> Result<(), libtest_mimic::Failed> + Send + 'static,
) -> libtest_mimic::Trial {
    use libtest_mimic::Trial;
    match backend {
        Ok(b) => Trial::test(trial, move || check(b)),
        Err(why) if required(name) => {
            let why = why.clone();
            Trial::test(trial, move || Err(format!("{name} required (KVSPARSE_REQUIRE) but unavailable: {why}").into()))
        }
        Err(_) => Trial::test(trial, || Ok(())).with_ignored_flag(true),
    }
}

/// splitmix64: small, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// One of the awkward sizes `special` half of the time, else uniform in `lo..=hi`.
    pub fn size(&mut self, special: &[usize], lo: usize, hi: usize) -> usize {
        let x = self.range(lo, hi);
        if self.bool(0.5) {
            self.pick(special)
        } else {
            x
        }
    }
    /// A head dim: usually a model's (16..128), sometimes one that no vector width divides
    /// (1, 3, 24, 40, 80, 200, 256), so that vectorised paths must handle their tails.
    pub fn head_dim(&mut self) -> usize {
        if self.bool(0.2) {
            self.pick(&[1, 3, 24, 40, 80, 200, 256])
        } else {
            self.pick(&[16, 32, 64, 128])
        }
    }
    pub fn bool(&mut self, p: f32) -> bool {
        self.unit() < p
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.range(0, xs.len() - 1)]
    }
    /// Approximately normal values (sum of uniforms), scale `s`.
    pub fn normal(&mut self, n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|_| s * ((0..4).map(|_| self.unit()).sum::<f32>() - 2.0) * 1.7).collect()
    }
    /// Multiples of 1/8 in [-2, 2]: exact in f32, f16 and bf16, and every dot product of a few
    /// hundred of them is exact in f32, so selection scores tie genuinely or not at all.
    pub fn grid(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.range(0, 32) as f32 - 16.0) / 8.0).collect()
    }
    pub fn gates(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| match self.range(0, 19) {
                0 => 0.0,
                1 => 1.0,
                _ => self.unit(),
            })
            .collect()
    }
}

/// A generated problem: the op and its inputs in `buffers()` order.
pub struct Case {
    pub op: AnyOp,
    pub inputs: Vec<HostData>,
}

fn heads(r: &mut Rng) -> (usize, usize) {
    let kv = r.range(1, 3);
    (kv * r.pick(&[1, 1, 2, 4]), kv)
}

/// Generates one case of op `name` with storage `dtype` (ignored by integer-only ops).
pub fn generate(name: &str, dtype: DType, r: &mut Rng) -> Case {
    let f = |v: Vec<f32>| HostData::from_f32(dtype, &v);
    let f32v = HostData::F32;
    match name {
        "pcg_hash" => {
            let n = r.range(1, 5000);
            Case {
                op: AnyOp::PcgHash(PcgHash::new(n).unwrap()),
                inputs: vec![HostData::U32((0..n).map(|_| r.u32()).collect())],
            }
        }
        "random_key" => {
            let (rows, n) = (r.range(1, 8), r.range(1, 600));
            Case {
                op: AnyOp::RandomKey(RandomKey::new(rows, n, r.u32()).unwrap()),
                inputs: vec![
                    HostData::U32((0..rows).map(|_| r.u32()).collect()),
                    HostData::U32((0..n as u32).collect()),
                ],
            }
        }
        "random_select" => {
            let (rows, n) = (r.range(1, 6), r.range(1, 400));
            let k = r.range(1, n + 5);
            let p = r.unit();
            Case {
                op: AnyOp::RandomSelect(RandomSelect::new(rows, n, k, r.u32()).unwrap()),
                inputs: vec![
                    HostData::U32((0..rows).map(|_| r.u32()).collect()),
                    HostData::I32((0..rows * n).map(|_| r.bool(p) as i32).collect()),
                ],
            }
        }
        "topk" => {
            let long = r.bool(0.15);
            let (rows, n) = if long { (r.range(1, 2), 131072) } else { (r.range(1, 8), r.range(1, 5000)) };
            let k = if long { r.pick(&[1, 2048, 8192, 32768]) } else { r.range(1, n + 3) };
            let mut s = if r.bool(0.5) { r.grid(rows * n) } else { r.normal(rows * n, 3.0) };
            s.iter_mut().for_each(|x| {
                if r.bool(0.02) {
                    *x = f32::NEG_INFINITY
                }
            });
            Case { op: AnyOp::TopK(TopK::new(rows, n, k).unwrap()), inputs: vec![f32v(s)] }
        }
        "decay_scan" => {
            let (o, t, c) = (r.range(1, 3), r.size(&[1, 2, 63, 64, 65], 1, 700), r.range(1, 70));
            let n = o * t * c;
            Case {
                op: AnyOp::DecayScan(DecayScan::new(o, t, c, dtype).unwrap()),
                inputs: vec![f(r.normal(n, 1.0)), f32v(r.gates(n)), f32v(r.normal(o * c, 1.0))],
            }
        }
        "decay_step" => {
            let c = r.range(1, 3000);
            Case {
                op: AnyOp::DecayStep(DecayStep::new(c, dtype).unwrap()),
                inputs: vec![f(r.normal(c, 1.0)), f32v(r.gates(c)), f32v(r.normal(c, 1.0))],
            }
        }
        "rope" => {
            let (h, t, d) = (r.range(1, 4), r.range(1, 100), r.pick(&[2, 8, 16, 32, 64, 128]));
            let pos = (0..t).map(|_| r.range(0, 4096) as i32).collect();
            Case {
                op: AnyOp::Rope(Rope::new(h, t, d, 10000.0, dtype).unwrap()),
                inputs: vec![f(r.normal(h * t * d, 1.0)), HostData::I32(pos)],
            }
        }
        "ratplus_kv" => {
            let (h, t, d) = (r.range(1, 4), r.size(&[1, 64, 65], 1, 400), r.pick(&[8, 16, 32, 64, 128]));
            let n = h * t * d;
            Case {
                op: AnyOp::RatplusKv(RatplusKv::new(h, t, d, 10000.0, dtype).unwrap()),
                inputs: vec![f(r.normal(n, 1.0)), f(r.normal(n, 1.0)), f32v(r.gates(n))],
            }
        }
        "ratplus_step" => {
            let (h, d) = (r.range(1, 8), r.pick(&[8, 16, 32, 64, 128]));
            let n = h * d;
            Case {
                op: AnyOp::RatplusStep(RatplusStep::new(h, d, 10000.0, r.range(0, 5000) as u32, dtype).unwrap()),
                inputs: vec![
                    f(r.normal(n, 1.0)),
                    f(r.normal(n, 1.0)),
                    f32v(r.gates(n)),
                    f32v(r.normal(n, 1.0)),
                    f32v(r.normal(n, 1.0)),
                ],
            }
        }
        "block_minmax" | "block_mean" => {
            let shape = BlockShape {
                heads: r.range(1, 4),
                seq: r.size(&[1, 63, 64, 65], 1, 700),
                dim: r.pick(&[1, 16, 32, 64, 128]),
                block_size: r.pick(&[1, 3, 16, 63, 64, 65]),
                dtype,
            };
            let n = shape.heads * shape.seq * shape.dim;
            let op = if name == "block_minmax" {
                AnyOp::BlockMinmax(BlockMinmax::new(shape).unwrap())
            } else {
                AnyOp::BlockMean(BlockMean::new(shape).unwrap())
            };
            Case { op, inputs: vec![f(r.normal(n, 1.0))] }
        }
        "quest_scores" => {
            let (hq, hkv) = heads(r);
            let (nb, d) = (r.range(1, 300), r.head_dim());
            Case {
                op: AnyOp::QuestScores(QuestScores::new(hq, hkv, nb, d, dtype).unwrap()),
                inputs: vec![f(r.grid(hq * d)), f(r.grid(hkv * nb * d)), f(r.grid(hkv * nb * d))],
            }
        }
        "quest_decode_grouped" => {
            // Quest with one selection per kv head from scores: the shapes of the GPU's one-launch
            // kernels (groups of 2, 4, 8; D 64, 128), rows from one block to thousands, so that a
            // kv head's blocks spread over a cluster's CTAs unevenly, with and without cached
            // statistics; grid-valued q and k give exact ties between blocks of different CTAs.
            let kv = r.range(1, 3);
            let hq = kv * r.pick(&[2, 4, 8, 8, 1]);
            let d = if r.bool(0.85) { r.pick(&[64, 128]) } else { r.head_dim() };
            let bs = r.pick(&[8, 16, 64]);
            let t = if r.bool(0.15) { r.range(20_000, 40_000) } else { r.size(&[1, bs, bs + 1], 1, 4000) };
            let nb = t.div_ceil(bs);
            let select = SelectConfig {
                block_size: bs,
                n_blocks: if r.bool(0.2) { r.range(1, nb + 2) } else { nb.div_ceil(r.pick(&[4, 8, 16])) },
                force_first: r.bool(0.5),
                n_local: r.range(0, 2),
                selector: Selector::Score,
            };
            let kvn = kv * t * d;
            let mut inputs = vec![f(r.grid(hq * d)), f(r.grid(kvn)), f(r.normal(kvn, 1.0))];
            let op = QuestDecode::new(hq, kv, t, d, select, default_scale(d), dtype).unwrap().with_group_selection();
            let op = if r.bool(0.5) {
                let k = inputs[1].to_f32().unwrap();
                let (lo, hi) = kvsparse_reference::block_minmax(&k, kv, d, bs);
                inputs.extend([f(lo), f(hi)]);
                op.with_cached_stats()
            } else {
                op
            };
            Case { op: AnyOp::QuestDecode(op), inputs }
        }
        "quest_decode" | "moba_prefill" => {
            let quest = name == "quest_decode";
            // Some Quest cases are long (up to 1024 blocks) with groups of 8: the GPU kernels
            // that select in one CTA per kv head hold NB / threads blocks per thread.
            let long = quest && r.bool(0.15);
            let (hq, hkv) = if long {
                let kv = r.range(1, 2);
                (kv * r.pick(&[4, 8]), kv)
            } else {
                heads(r)
            };
            let d = r.head_dim();
            // MoBA gates use block means: power-of-two blocks keep them exact on the grid.
            let bs = if quest { r.pick(&[16, 32, 63, 64]) } else { r.pick(&[16, 32, 64]) };
            let t = if long {
                r.range(1000, (1024 * bs).min(16384))
            } else if quest {
                r.size(&[1, bs, bs + 1], 1, 2000)
            } else {
                r.size(&[1, bs, bs + 1], 1, 500)
            };
            let nb = t.div_ceil(bs);
            let select = SelectConfig {
                block_size: bs,
                n_blocks: r.range(1, nb + 2),
                force_first: r.bool(0.5),
                n_local: if quest { r.range(0, 2) } else { r.range(1, 2) },
                selector: if r.bool(0.25) { Selector::Random { seed: r.u32() } } else { Selector::Score },
            };
            let scale = default_scale(d);
            let (q_len, kv) = (if quest { hq * d } else { hq * t * d }, hkv * t * d);
            let mut inputs = vec![f(r.grid(q_len)), f(r.grid(kv)), f(r.normal(kv, 1.0))];
            let op = if quest {
                let op = QuestDecode::new(hq, hkv, t, d, select, scale, dtype).unwrap();
                // One selection per kv head (gqa = mean) in a third of the cases.
                let op = if r.bool(0.35) { op.with_group_selection() } else { op };
                if r.bool(0.3) {
                    // A decoder passes the statistics its cache keeps.
                    let k = inputs[1].to_f32().unwrap();
                    let (lo, hi) = kvsparse_reference::block_minmax(&k, hkv, d, bs);
                    inputs.extend([f(lo), f(hi)]);
                    AnyOp::QuestDecode(op.with_cached_stats())
                } else {
                    AnyOp::QuestDecode(op)
                }
            } else {
                let op = MobaPrefill::new(hq, hkv, t, d, select, scale, dtype).unwrap();
                // Engines leave the [Hq, T, NB] ranking out; both forms must agree.
                AnyOp::MobaPrefill(if r.bool(0.3) { op.without_ranking() } else { op })
            };
            Case { op, inputs }
        }
        "snapkv_compress" => {
            let (hq, hkv) = heads(r);
            let d = r.head_dim();
            let window = r.pick(&[1, 8, 32, 64]);
            let t = r.range(window + 1, 1500);
            let capacity = if r.bool(0.2) { r.range(t.max(window + 1), t + 10) } else { r.range(window + 1, t) };
            let settings = SnapKvSettings {
                capacity,
                window,
                kernel: r.pick(&[1, 3, 5, 7]),
                pooling: if r.bool(0.5) { Pooling::Avg } else { Pooling::Max },
                gqa: if r.bool(0.5) { GqaMode::Mean } else { GqaMode::PerHead },
                selector: if r.bool(0.2) { Selector::Random { seed: r.u32() } } else { Selector::Score },
                scale: default_scale(d),
            };
            let op = SnapKvCompress::new(hq, hkv, t, d, settings, dtype).unwrap();
            let q = r.normal(hq * op.obs_len() * d, 1.0);
            Case { op: AnyOp::SnapKvCompress(op), inputs: vec![f(q), f(r.normal(hkv * t * d, 1.0))] }
        }
        "attention_dense" => {
            let (hq, hkv) = heads(r);
            let d = r.head_dim();
            let tk = r.size(&[1, 64, 65], 1, 700);
            let tq = r.size(&[1, tk], 1, tk.min(100));
            let causal = r.bool(0.6);
            let op = AttentionDense::new(hq, hkv, tq, tk, d, causal, default_scale(d), dtype).unwrap();
            Case {
                op: AnyOp::AttentionDense(op),
                inputs: vec![
                    f(r.normal(hq * tq * d, 1.0)),
                    f(r.normal(hkv * tk * d, 1.0)),
                    f(r.normal(hkv * tk * d, 1.0)),
                ],
            }
        }
        "attention_sparse" => {
            let (hq, hkv) = heads(r);
            let d = r.head_dim();
            let t = r.range(1, 2000);
            let hi = if r.bool(0.5) { hq } else { hkv };
            let n = r.range(1, t.min(300));
            let mut idx = Vec::with_capacity(hi * n);
            for _ in 0..hi {
                // n distinct tokens, shuffled, some replaced by -1 padding.
                let mut all: Vec<i32> = (0..t as i32).collect();
                for i in 0..n {
                    let j = r.range(i, t - 1);
                    all.swap(i, j);
                }
                idx.extend(all[..n].iter().map(|&x| if r.bool(0.1) { -1 } else { x }));
            }
            let op = AttentionSparse::new(hq, hkv, t, d, hi, n, default_scale(d), dtype).unwrap();
            Case {
                op: AnyOp::AttentionSparse(op),
                inputs: vec![
                    f(r.normal(hq * d, 1.0)),
                    f(r.normal(hkv * t * d, 1.0)),
                    f(r.normal(hkv * t * d, 1.0)),
                    HostData::I32(idx),
                ],
            }
        }
        "hit_rate" => {
            let (s, h, n, bs) = (r.range(1, 5), r.range(1, 16), r.range(1, 50), r.range(1, 64));
            let p = 0.5 + r.unit() / 2.0;
            Case {
                op: AnyOp::HitRate(HitRate::new(s, h, n, bs).unwrap()),
                inputs: vec![
                    HostData::I32((0..s * h * n).map(|_| r.bool(p) as i32).collect()),
                    HostData::I32((0..s).map(|_| r.range(0, n * bs - 1) as i32).collect()),
                ],
            }
        }
        other => panic!("no generator for op `{other}`"),
    }
}

/// Every op with a generator, in a stable order.
pub const OPS: &[&str] = &[
    "pcg_hash",
    "random_key",
    "random_select",
    "topk",
    "decay_scan",
    "decay_step",
    "rope",
    "ratplus_kv",
    "ratplus_step",
    "block_minmax",
    "block_mean",
    "quest_scores",
    "quest_decode",
    "quest_decode_grouped",
    "moba_prefill",
    "snapkv_compress",
    "attention_dense",
    "attention_sparse",
    "hit_rate",
];

/// Whether the op has float storage (and so is run for every float dtype).
pub fn has_storage_dtype(name: &str) -> bool {
    !matches!(name, "pcg_hash" | "random_key" | "random_select" | "topk" | "hit_rate")
}

/// `(atol, rtol)` of a float output stored as `dtype`: one ulp of the storage each side plus
/// f32 accumulation.
pub fn storage_tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F16 => (2e-3, 2e-3),
        DType::BF16 => (1.6e-2, 1.6e-2),
        _ => (2e-5, 1e-4),
    }
}

/// `(atol, rtol)` for a float output, against the float64 reference: the storage dtype's
/// rounding of the output (one ulp each side), plus f32 accumulation, plus f32 RoPE angles.
pub fn tolerance(op: &AnyOp, output: &BufferSpec) -> (f64, f64) {
    let (atol, rtol) = storage_tolerance(output.dtype);
    // f32 RoPE angles: the error grows with the position (the golden cases allow 2e-3 there too).
    if output.name == "k_rope" || matches!(op, AnyOp::Rope(_)) {
        return (atol.max(2e-3), rtol);
    }
    (atol, rtol)
}

/// Compares one backend's outputs with the reference's. Returns a message per mismatch.
pub fn compare(op: &AnyOp, got: &[HostData], expected: &[HostData]) -> Vec<String> {
    let specs: Vec<BufferSpec> = op.buffers().into_iter().filter(|s| s.output).collect();
    let mut errors = Vec::new();
    for ((spec, g), e) in specs.iter().zip(got).zip(expected) {
        if g.dtype() != e.dtype() || g.len() != e.len() {
            errors.push(format!(
                "`{}`: got {} x {}, expected {} x {}",
                spec.name,
                g.len(),
                g.dtype(),
                e.len(),
                e.dtype()
            ));
            continue;
        }
        if spec.name == "kept" {
            if let Some(msg) = snapkv_kept_differs(op, got, expected) {
                errors.push(msg);
            }
            continue;
        }
        let (atol, rtol) = tolerance(op, spec);
        errors.extend(compare_buffer(spec.name, atol, rtol, g, e));
    }
    errors
}

/// Compares one buffer: floats within `atol + rtol * |expected|` (a non-finite expected value
/// must be matched exactly, NaN by NaN), integers exactly. `None` when they agree.
pub fn compare_buffer(name: &str, atol: f64, rtol: f64, g: &HostData, e: &HostData) -> Option<String> {
    if g.dtype() != e.dtype() || g.len() != e.len() {
        return Some(format!("`{name}`: got {} x {}, expected {} x {}", g.len(), g.dtype(), e.len(), e.dtype()));
    }
    match (g.to_f32(), e.to_f32()) {
        (Some(gv), Some(ev)) => {
            let bad: Vec<usize> = (0..gv.len())
                .filter(|&i| {
                    let (a, b) = (gv[i] as f64, ev[i] as f64);
                    if b.is_finite() {
                        // Written so that a NaN `a` is never within tolerance.
                        let within = (a - b).abs() <= atol + rtol * b.abs();
                        !within
                    } else {
                        !(a == b || (a.is_nan() && b.is_nan()))
                    }
                })
                .collect();
            if bad.is_empty() {
                return None;
            }
            let show: Vec<String> =
                bad.iter().take(5).map(|&i| format!("[{i}] got {} expected {}", gv[i], ev[i])).collect();
            Some(format!(
                "`{name}`: {} of {} outside atol {atol:e} rtol {rtol:e}: {}",
                bad.len(),
                gv.len(),
                show.join(", ")
            ))
        }
        _ if g == e => None,
        _ => {
            let pos = match (g, e) {
                (HostData::I32(a), HostData::I32(b)) => {
                    a.iter().zip(b).position(|(x, y)| x != y).map(|i| format!("[{i}] got {} expected {}", a[i], b[i]))
                }
                (HostData::U32(a), HostData::U32(b)) => {
                    a.iter().zip(b).position(|(x, y)| x != y).map(|i| format!("[{i}] got {} expected {}", a[i], b[i]))
                }
                _ => None,
            };
            Some(format!("`{name}`: integers differ: {}", pos.unwrap_or_default()))
        }
    }
}

/// SnapKV keeps a set chosen by softmax sums that f32 and f64 round differently: a backend's set
/// is accepted when it has the right size and shape, keeps the window, and every prefix token it
/// keeps scores (by the reference) at least the reference's cut-off minus a rounding margin.
fn snapkv_kept_differs(op: &AnyOp, got: &[HostData], expected: &[HostData]) -> Option<String> {
    let AnyOp::SnapKvCompress(op) = op else { return None };
    let (HostData::I32(g), HostData::I32(e)) = (&got[0], &expected[0]) else { return Some("kept is not i32".into()) };
    if g == e {
        return None;
    }
    if !op.compresses() || matches!(op.settings.selector, Selector::Random { .. }) {
        return Some("`kept` differs where the selection is exact".into());
    }
    let Some(scores) = expected[1].to_f32() else { return Some("no reference scores".into()) };
    let (w, t, width) = (op.settings.window, op.seq, op.kept_len());
    let prefix = t - w;
    for h in 0..op.out_heads() {
        let row_g = &g[h * width..(h + 1) * width];
        let row_e = &e[h * width..(h + 1) * width];
        if row_g == row_e {
            continue;
        }
        let s = &scores[h * prefix..(h + 1) * prefix];
        if row_g.windows(2).any(|p| p[0] >= p[1]) || row_g.iter().any(|&x| x < 0 || x as usize >= t) {
            return Some(format!("`kept` row {h} is not an ascending set of tokens: {row_g:?}"));
        }
        if !(prefix..t).all(|j| row_g.contains(&(j as i32))) {
            return Some(format!("`kept` row {h} misses window tokens"));
        }
        let cut =
            row_e.iter().filter(|&&j| (j as usize) < prefix).map(|&j| s[j as usize]).fold(f32::INFINITY, f32::min);
        let margin = 1e-5 + 1e-4 * cut.abs();
        if let Some(&j) = row_g.iter().find(|&&j| (j as usize) < prefix && s[j as usize] < cut - margin) {
            return Some(format!("`kept` row {h} keeps token {j} scoring {} below the cut-off {cut}", s[j as usize]));
        }
    }
    None
}

/// Runs `case` on `b` with poisoned outputs and returns the outputs.
pub fn run_on<B: Backend>(b: &B, case: &Case) -> kvsparse::Result<Vec<HostData>> {
    let ins: Vec<B::Buffer> = case.inputs.iter().map(|d| b.upload(d)).collect::<Result<_, _>>()?;
    let refs: Vec<&B::Buffer> = ins.iter().collect();
    let mut outs: Vec<B::Buffer> =
        case.op.buffers().iter().filter(|s| s.output).map(|s| b.alloc(s.dtype, s.len)).collect::<Result<_, _>>()?;
    case.op.run(b, &refs, &mut outs)?;
    outs.iter().map(|o| b.download(o)).collect()
}

/// Runs `cases` random cases of op `name` on `b` and on the reference; the first mismatch fails.
pub fn matches_reference<B: Backend>(b: &B, name: &str, cases: usize, seed: u64) -> Result<(), String> {
    let dtypes: Vec<DType> = if has_storage_dtype(name) {
        [DType::F32, DType::F16, DType::BF16].into_iter().filter(|&d| b.supports(d)).collect()
    } else {
        vec![DType::F32]
    };
    let mut r = Rng::new(seed);
    for i in 0..cases {
        let dtype = dtypes[i % dtypes.len()];
        let case = generate(name, dtype, &mut r);
        let label = format!("case {i} (seed {seed}) {} {}", case.op.name(), case.op.label());
        let expected = run_on(&Cpu::new(), &case).map_err(|e| format!("{label}: reference failed: {e}"))?;
        let got = run_on(b, &case).map_err(|e| format!("{label}: {e}"))?;
        let errors = compare(&case.op, &got, &expected);
        if !errors.is_empty() {
            return Err(format!("{label}:\n  {}", errors.join("\n  ")));
        }
    }
    Ok(())
}
