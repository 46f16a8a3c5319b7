//! The decoder's cache ops (`cache_fill`, `cache_append`, `cache_advance`, `cache_decode`) on
//! every GPU backend against the CPU backend (the float64 reference), on random problems: GQA
//! and per-head caches, odd head dims, every storage dtype, batches with mixed live lengths
//! including empty sequences. Every slot a kernel must not touch holds NaN (or a poison
//! integer) and must come back unchanged; every slot it must write starts as NaN too.
//!
//! One trial per (backend, op): `wgpu::cache_decode_matches_reference`. An absent backend is
//! *ignored* unless named in `KVSPARSE_REQUIRE`; `KVSPARSE_CASES` sets the cases per trial.

#![cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]

mod common;

use common::{backend_trial, compare_buffer, storage_tolerance, Rng};
use kvsparse::ops::*;
use kvsparse::{Backend, Cpu, DType, HostData};
use libtest_mimic::{Arguments, Failed, Trial};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use std::sync::OnceLock;

fn cases() -> usize {
    std::env::var("KVSPARSE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

/// One problem and all of its buffers, named as in `Op::buffers` (inputs and read-written ones).
struct Case {
    op: CacheOp,
    bufs: Vec<(&'static str, HostData)>,
}

enum CacheOp {
    Fill(CacheFill),
    Append(CacheAppend),
    Advance(CacheAdvance),
    Decode(CacheDecode),
}

impl CacheOp {
    fn label(&self) -> String {
        match self {
            CacheOp::Fill(o) => format!("{} {}", CacheFill::NAME, o.label()),
            CacheOp::Append(o) => format!("{} {}", CacheAppend::NAME, o.label()),
            CacheOp::Advance(o) => format!("{} {}", CacheAdvance::NAME, o.label()),
            CacheOp::Decode(o) => format!("{} {}", CacheDecode::NAME, o.label()),
        }
    }
    fn specs(&self) -> Vec<BufferSpec> {
        match self {
            CacheOp::Fill(o) => o.buffers(),
            CacheOp::Append(o) => o.buffers(),
            CacheOp::Advance(o) => o.buffers(),
            CacheOp::Decode(o) => o.buffers(),
        }
    }
}

/// Runs the case on `b` and returns every buffer the op writes, by name.
fn run<B: Backend>(b: &B, case: &Case) -> kvsparse::Result<Vec<(&'static str, HostData)>> {
    let mut dev: Vec<(&'static str, B::Buffer)> =
        case.bufs.iter().map(|(n, d)| Ok((*n, b.upload(d)?))).collect::<kvsparse::Result<_>>()?;
    let written: Vec<&'static str> = case.op.specs().iter().filter(|s| s.output).map(|s| s.name).collect();
    // Take the buffers out by name so each can be borrowed mutably or not as the method needs.
    let mut take = |name: &str| -> Option<B::Buffer> {
        let i = dev.iter().position(|(n, _)| *n == name)?;
        Some(dev.remove(i).1)
    };
    let mut got = Vec::new();
    match &case.op {
        CacheOp::Fill(op) => {
            let (ks, vs, idx) = (take("k_src").unwrap(), take("v_src").unwrap(), take("idx"));
            let [mut k, mut v, mut lo, mut hi, mut mean, mut lens, mut pos] =
                ["k", "v", "kmin", "kmax", "kmean", "lens", "pos"].map(|n| take(n).unwrap());
            b.cache_fill(op, &ks, &vs, idx.as_ref(), &mut k, &mut v, &mut lo, &mut hi, &mut mean, &mut lens, &mut pos)?;
            for (n, x) in
                [("k", k), ("v", v), ("kmin", lo), ("kmax", hi), ("kmean", mean), ("lens", lens), ("pos", pos)]
            {
                got.push((n, b.download(&x)?));
            }
        }
        CacheOp::Append(op) => {
            let (kn, vn, g) = (take("k_new").unwrap(), take("v_new").unwrap(), take("g"));
            let (lens, pos) = (take("lens").unwrap(), take("pos").unwrap());
            let (mut hk, mut hv) = (take("hk"), take("hv"));
            let [mut k, mut v, mut lo, mut hi, mut mean] =
                ["k", "v", "kmin", "kmax", "kmean"].map(|n| take(n).unwrap());
            let state = match (&mut hk, &mut hv) {
                (Some(a), Some(c)) => Some((a, c)),
                _ => None,
            };
            b.cache_append(op, &kn, &vn, g.as_ref(), &lens, &pos, state, &mut k, &mut v, &mut lo, &mut hi, &mut mean)?;
            if let (Some(a), Some(c)) = (hk, hv) {
                got.push(("hk", b.download(&a)?));
                got.push(("hv", b.download(&c)?));
            }
            for (n, x) in [("k", k), ("v", v), ("kmin", lo), ("kmax", hi), ("kmean", mean)] {
                got.push((n, b.download(&x)?));
            }
        }
        CacheOp::Advance(op) => {
            let (mut lens, mut pos) = (take("lens").unwrap(), take("pos").unwrap());
            b.cache_advance(op, &mut lens, &mut pos)?;
            got.push(("lens", b.download(&lens)?));
            got.push(("pos", b.download(&pos)?));
        }
        CacheOp::Decode(op) => {
            let [q, k, v, lens] = ["q", "k", "v", "lens"].map(|n| take(n).unwrap());
            let (lo, hi) = (take("kmin"), take("kmax"));
            let stats = lo.as_ref().zip(hi.as_ref());
            let specs = op.buffers();
            let alloc = |name: &str| -> kvsparse::Result<Option<B::Buffer>> {
                specs.iter().find(|s| s.name == name).map(|s| b.alloc(s.dtype, s.len)).transpose()
            };
            let (mut out, mut lse) = (alloc("out")?.unwrap(), alloc("lse")?.unwrap());
            let mut sel = alloc("selected")?;
            let rank_name = specs.last().map(|s| s.name).filter(|n| *n == "scores" || *n == "keys");
            let mut rank = match rank_name {
                Some(n) => alloc(n)?,
                None => None,
            };
            b.cache_decode(op, &q, &k, &v, &lens, stats, &mut out, &mut lse, sel.as_mut(), rank.as_mut())?;
            got.push(("out", b.download(&out)?));
            got.push(("lse", b.download(&lse)?));
            if let Some(s) = sel {
                got.push(("selected", b.download(&s)?));
            }
            if let (Some(r), Some(n)) = (rank, rank_name) {
                got.push((n, b.download(&r)?));
            }
        }
    }
    debug_assert!(got.iter().all(|(n, _)| written.contains(n)));
    Ok(got)
}

fn store(dtype: DType, v: &[f32]) -> HostData {
    HostData::from_f32(dtype, v)
}

fn shape(r: &mut Rng, dtype: DType, even_dim: bool) -> CacheShape {
    let dim = if even_dim { r.pick(&[2, 8, 16, 64, 128]) } else { r.head_dim() };
    CacheShape {
        batch: r.pick(&[1, 2, 3, 8]),
        heads: r.range(1, 3),
        capacity: r.size(&[1, 63, 64, 65], 1, 400),
        dim,
        block_size: r.pick(&[1, 3, 16, 64]),
        dtype,
    }
}

/// A cache whose sequence `b` holds `lens[b]` random tokens (grid values, so Quest scores are
/// exact) and NaN after them, with the statistics of exactly those tokens and NaN elsewhere.
fn cache_contents(r: &mut Rng, s: &CacheShape, lens: &[usize]) -> Vec<(&'static str, HostData)> {
    let d = s.dim;
    let (mut k, mut v) = (vec![f32::NAN; s.kv_len()], vec![f32::NAN; s.kv_len()]);
    let (mut lo, mut hi, mut mean) =
        (vec![f32::NAN; s.stats_len()], vec![f32::NAN; s.stats_len()], vec![f32::NAN; s.stats_len()]);
    for (b, &t) in lens.iter().enumerate() {
        for c in 0..s.heads {
            let at = (b * s.heads + c) * s.capacity * d;
            let kt = store(s.dtype, &r.grid(t * d)).to_f32().unwrap();
            k[at..at + t * d].copy_from_slice(&kt);
            v[at..at + t * d].copy_from_slice(&store(s.dtype, &r.normal(t * d, 1.0)).to_f32().unwrap());
            let nb = t.div_ceil(s.block_size);
            let (l, h) = kvsparse_reference::block_minmax(&kt, 1, d, s.block_size);
            let m = kvsparse_reference::block_mean(&kt, 1, d, s.block_size);
            let st = (b * s.heads + c) * s.nb() * d;
            lo[st..st + nb * d].copy_from_slice(&l);
            hi[st..st + nb * d].copy_from_slice(&h);
            mean[st..st + nb * d].copy_from_slice(&m);
        }
    }
    vec![
        ("k", store(s.dtype, &k)),
        ("v", store(s.dtype, &v)),
        ("kmin", store(s.dtype, &lo)),
        ("kmax", store(s.dtype, &hi)),
        ("kmean", store(s.dtype, &mean)),
    ]
}

fn i32s(v: &[usize]) -> HostData {
    HostData::I32(v.iter().map(|&x| x as i32).collect())
}

fn generate(op: &str, dtype: DType, r: &mut Rng) -> Case {
    match op {
        "cache_fill" => {
            let s = shape(r, dtype, false);
            let src_heads = if s.heads > 1 && r.bool(0.3) { 1 } else { s.heads };
            let indexed = r.bool(0.5);
            let src_len = r.range(1, 500);
            let n = if indexed { r.range(1, s.capacity) } else { r.range(1, s.capacity.min(src_len)) };
            let seq = r.range(0, s.batch - 1);
            let op = CacheFill::new(s, seq, src_heads, src_len, n, indexed, r.range(0, 100_000)).unwrap();
            let lens: Vec<usize> = (0..s.batch).map(|_| r.range(0, s.capacity)).collect();
            let src = src_heads * src_len * s.dim;
            let mut bufs =
                vec![("k_src", store(dtype, &r.normal(src, 1.0))), ("v_src", store(dtype, &r.normal(src, 1.0)))];
            if indexed {
                bufs.push(("idx", HostData::I32((0..s.heads * n).map(|_| r.range(0, src_len - 1) as i32).collect())));
            }
            bufs.extend(cache_contents(r, &s, &lens));
            bufs.push(("lens", i32s(&lens)));
            bufs.push(("pos", i32s(&lens)));
            Case { op: CacheOp::Fill(op), bufs }
        }
        "cache_append" => {
            let ratplus = r.bool(0.5);
            let s = shape(r, dtype, ratplus);
            let kv_heads = if s.heads > 1 && r.bool(0.3) { 1 } else { s.heads };
            let op = CacheAppend::new(s, kv_heads, ratplus, 10000.0).unwrap();
            // The new token goes to slot lens[b] < capacity.
            let lens: Vec<usize> = (0..s.batch).map(|_| r.size(&[0, s.capacity - 1], 0, s.capacity - 1)).collect();
            let pos: Vec<usize> = lens.iter().map(|&t| t + r.pick(&[0, 0, 17, 4000])).collect();
            let n = s.batch * kv_heads * s.dim;
            let mut bufs = vec![("k_new", store(dtype, &r.grid(n))), ("v_new", store(dtype, &r.normal(n, 1.0)))];
            if ratplus {
                bufs.push(("g", HostData::F32(r.gates(n))));
            }
            bufs.push(("lens", i32s(&lens)));
            bufs.push(("pos", i32s(&pos)));
            if ratplus {
                bufs.push(("hk", HostData::F32(r.normal(n, 1.0))));
                bufs.push(("hv", HostData::F32(r.normal(n, 1.0))));
            }
            bufs.extend(cache_contents(r, &s, &lens));
            Case { op: CacheOp::Append(op), bufs }
        }
        "cache_advance" => {
            let batch = r.range(1, 300);
            let lens: Vec<usize> = (0..batch).map(|_| r.range(0, 100_000)).collect();
            let pos: Vec<usize> = (0..batch).map(|_| r.range(0, 100_000)).collect();
            Case {
                op: CacheOp::Advance(CacheAdvance::new(batch).unwrap()),
                bufs: vec![("lens", i32s(&lens)), ("pos", i32s(&pos))],
            }
        }
        "cache_decode" => {
            let s = CacheShape { capacity: r.size(&[1, 64, 65], 1, 1200), ..shape(r, dtype, false) };
            let q_heads = s.heads * r.pick(&[1, 1, 2, 4]);
            let select = if r.bool(0.3) {
                CacheSelect::Dense
            } else {
                let budget = if r.bool(0.5) {
                    CacheBudget::Blocks(r.range(1, s.nb() + 2))
                } else {
                    CacheBudget::from_fraction(r.pick(&[1.0, 0.5, 0.25, 0.125, 1.0 / 3.0])).unwrap()
                };
                CacheSelect::Blocks {
                    budget,
                    force_first: r.bool(0.5),
                    n_local: r.range(0, 2),
                    selector: if r.bool(0.25) { Selector::Random { seed: r.u32() } } else { Selector::Score },
                }
            };
            let op = CacheDecode::new(s, q_heads, select, default_scale(s.dim)).unwrap();
            let lens: Vec<usize> = (0..s.batch).map(|_| r.size(&[0, 1, s.capacity], 0, s.capacity)).collect();
            let mut bufs = vec![("q", store(dtype, &r.grid(s.batch * q_heads * s.dim)))];
            let cache = cache_contents(r, &s, &lens);
            bufs.extend(cache.iter().filter(|(n, _)| *n == "k" || *n == "v").cloned());
            bufs.push(("lens", i32s(&lens)));
            if matches!(select, CacheSelect::Blocks { selector: Selector::Score, .. }) {
                bufs.extend(cache.iter().filter(|(n, _)| *n == "kmin" || *n == "kmax").cloned());
            }
            Case { op: CacheOp::Decode(op), bufs }
        }
        other => panic!("no generator for `{other}`"),
    }
}

const OPS: &[&str] = &["cache_fill", "cache_append", "cache_advance", "cache_decode"];

/// `(atol, rtol)` per written buffer: the storage dtype's, and RoPE's f32 angle error for keys
/// written by a RAT+ append.
fn tolerance(case: &Case, name: &str, dtype: DType) -> (f64, f64) {
    let (atol, rtol) = storage_tolerance(dtype);
    let rope = matches!(&case.op, CacheOp::Append(op) if op.ratplus) && ["k", "kmin", "kmax", "kmean"].contains(&name);
    if rope {
        (atol.max(2e-3), rtol)
    } else {
        (atol, rtol)
    }
}

fn matches_reference<B: Backend>(b: &B, op: &str, n: usize, seed: u64) -> Result<(), String> {
    let mut r = Rng::new(seed);
    let dtypes: Vec<DType> = [DType::F32, DType::F16, DType::BF16].into_iter().filter(|&d| b.supports(d)).collect();
    for i in 0..n {
        let case = generate(op, dtypes[i % dtypes.len()], &mut r);
        let label = format!("case {i} (seed {seed}) {}", case.op.label());
        let expected = run(&Cpu::new(), &case).map_err(|e| format!("{label}: reference failed: {e}"))?;
        let got = run(b, &case).map_err(|e| format!("{label}: {e}"))?;
        let mut errors = Vec::new();
        for ((name, g), (_, e)) in got.iter().zip(&expected) {
            let (atol, rtol) = tolerance(&case, name, e.dtype());
            errors.extend(compare_buffer(name, atol, rtol, g, e));
        }
        if !errors.is_empty() {
            return Err(format!("{label}:\n  {}", errors.join("\n  ")));
        }
    }
    Ok(())
}

/// The comparison must be able to fail: a cache op that leaves one live slot unwritten (NaN),
/// or writes one slot past the live ones, is caught.
fn harness_detects_wrong_outputs() -> Result<(), Failed> {
    let mut r = Rng::new(3);
    let case = generate("cache_append", DType::F32, &mut r);
    let good = run(&Cpu::new(), &case)?;
    let k_at = good.iter().position(|(n, _)| *n == "k").unwrap();
    let HostData::F32(k) = &good[k_at].1 else { unreachable!() };
    let (Some(live), Some(dead)) = (k.iter().position(|x| !x.is_nan()), k.iter().position(|x| x.is_nan())) else {
        return Err("the generated cache has no live or no dead slot".into());
    };
    for (at, value) in [(live, f32::NAN), (dead, 0.0)] {
        let mut bad = k.clone();
        bad[at] = value;
        if compare_buffer("k", 2e-5, 1e-4, &HostData::F32(bad), &good[k_at].1).is_none() {
            return Err(format!("a wrong k[{at}] went unnoticed").into());
        }
    }
    Ok(())
}

/// Bad input to every cache op: each buffer in turn with one element too many and with the
/// wrong element type must give an error naming that buffer; live lengths outside `0..=Tcap`
/// must never panic (GPU kernels clamp or skip them and never touch memory out of bounds, which
/// compute-sanitizer checks on the GPU machine; the CPU backend rejects them with an error
/// naming `lens`).
fn rejects_bad_input<B: Backend>(b: &B, seed: u64) -> Result<(), String> {
    let mut r = Rng::new(seed);
    let mut tried = 0;
    for op in OPS {
        let case = generate(op, DType::F32, &mut r);
        for i in 0..case.bufs.len() {
            let (name, good) = &case.bufs[i];
            let longer = match good {
                HostData::I32(v) => HostData::I32([&v[..], &[0]].concat()),
                HostData::U32(v) => HostData::U32([&v[..], &[0]].concat()),
                other => HostData::F32([other.to_f32().unwrap(), vec![0.0]].concat()),
            };
            let retyped = match good {
                HostData::I32(v) => HostData::F32(vec![0.0; v.len()]),
                other => HostData::I32(vec![0; other.len()]),
            };
            for bad in [longer, retyped] {
                let mut hostile = Case { op: clone_op(&case.op), bufs: case.bufs.clone() };
                hostile.bufs[i].1 = bad;
                tried += 1;
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(b, &hostile))) {
                    Err(_) => return Err(format!("{op}: a bad `{name}` panicked")),
                    Ok(Ok(_)) => return Err(format!("{op}: a bad `{name}` was accepted")),
                    Ok(Err(e)) if !e.to_string().contains(name) => {
                        return Err(format!("{op}: a bad `{name}` gave an error that does not name it: {e}"))
                    }
                    Ok(Err(_)) => {}
                }
            }
        }
    }
    for op in ["cache_append", "cache_decode"] {
        let mut case = generate(op, DType::F32, &mut r);
        let batch = case.bufs.iter().find(|(n, _)| *n == "lens").map(|(_, d)| d.len()).unwrap();
        let garbage: Vec<i32> = (0..batch).map(|i| [-5, i32::MAX, 1 << 20, -1][i % 4]).collect();
        for (name, data) in case.bufs.iter_mut() {
            if *name == "lens" {
                *data = HostData::I32(garbage.clone());
            }
        }
        tried += 1;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(b, &case))) {
            Err(_) => return Err(format!("{op}: garbage lengths panicked")),
            Ok(Err(e)) if !e.to_string().contains("lens") => {
                return Err(format!("{op}: garbage lengths gave an error that does not name `lens`: {e}"))
            }
            Ok(_) => {}
        }
    }
    println!("{}: {tried} hostile cache-op inputs, no panic, every error names its buffer", b.name());
    Ok(())
}

fn clone_op(op: &CacheOp) -> CacheOp {
    match op {
        CacheOp::Fill(o) => CacheOp::Fill(o.clone()),
        CacheOp::Append(o) => CacheOp::Append(o.clone()),
        CacheOp::Advance(o) => CacheOp::Advance(o.clone()),
        CacheOp::Decode(o) => CacheOp::Decode(o.clone()),
    }
}

fn backend_trials<B: Backend + Sync + 'static>(name: &'static str, backend: &'static Result<B, String>) -> Vec<Trial> {
    let mut trials = Vec::new();
    for (i, &op) in OPS.iter().enumerate() {
        let trial = format!("{name}::{op}_matches_reference");
        let seed = 0xcac4e + i as u64;
        trials.push(backend_trial(trial, name, backend, move |b| Ok(matches_reference(b, op, cases(), seed)?)));
    }
    trials.push(backend_trial(format!("{name}::cache_ops_reject_bad_input"), name, backend, |b| {
        Ok(rejects_bad_input(b, 0xbad)?)
    }));
    trials
}

#[cfg(feature = "wgpu")]
static WGPU: OnceLock<Result<kvsparse::Wgpu, String>> = OnceLock::new();
#[cfg(feature = "cuda")]
static CUDA: OnceLock<Result<kvsparse::Cuda, String>> = OnceLock::new();

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let mut trials = vec![Trial::test("harness_detects_wrong_outputs", harness_detects_wrong_outputs)];
    // The generators must produce problems the reference accepts.
    trials.push(Trial::test("cpu::cache_ops_reject_bad_input", || Ok(rejects_bad_input(&Cpu::new(), 0xbad)?)));
    trials.push(Trial::test("cpu::generated_problems_run", || {
        let mut r = Rng::new(11);
        for op in OPS {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                for _ in 0..4 {
                    let case = generate(op, dtype, &mut r);
                    run(&Cpu::new(), &case).map_err(|e| format!("{}: {e}", case.op.label()))?;
                }
            }
        }
        Ok(())
    }));
    #[cfg(feature = "wgpu")]
    trials.extend(backend_trials("wgpu", WGPU.get_or_init(|| kvsparse::Wgpu::new().map_err(|e| e.to_string()))));
    #[cfg(feature = "cuda")]
    trials.extend(backend_trials("cuda", CUDA.get_or_init(|| kvsparse::Cuda::new().map_err(|e| e.to_string()))));
    libtest_mimic::run(&args, trials).exit_code()
}
