//! One layer through the decoder: 32 query heads, 8 KV heads, D 128, a 4K prompt and 256 decode
//! steps, with each decode method (dense, Quest, the random selector, dense over a SnapKV cache)
//! on both backbones (attention and RAT+), checked against the float64 reference loop
//! ([`ReferenceDecoder`]) every `--check-every` steps, printing the time and bytes of a step.
//!
//! ```sh
//! cargo run --release --example decoder [--features cuda] -- [--backend cpu|wgpu|cuda]
//!     [--prompt 4096] [--steps 256] [--batch 1] [--dtype bf16] [--budget 8] [--check-every 32]
//!     [--only ratplus:quest,attention:dense] [--graph]
//! ```
//!
//! The backend defaults to the best one found (CUDA, wgpu, CPU). A batch of `B` holds prompts of
//! `prompt - 256 * i` tokens (mixed lengths). Dense and SnapKV runs prefill with dense causal
//! attention, Quest and random runs with MoBA (block 64, the same budget): sparse end to end. The
//! budget is 1/`budget` of the live blocks (Quest, random, MoBA) or of the longest prompt
//! (SnapKV, at least 128 tokens).
//! Times are the backend's own timers (CUDA events, wgpu timestamps) around one whole step
//! (append, advance, decode), median over the steps (with `--graph` on CUDA, every step after
//! the first is one replay of a CUDA graph recorded from the second step); bytes are the cost model's compulsory
//! traffic of the step at its live lengths. A checked step passes when its selected blocks and
//! outputs match the reference; a step whose selection differs only between blocks whose
//! reference scores lie within the keys' rounding margin is reported as a near tie (its
//! outputs legitimately differ) and does not fail the run.

use kvsparse::decoder::*;
use kvsparse::methods::{Budget, Moba, SnapKv};
use kvsparse::ops::Op;
use kvsparse::{Backend, DType, HostData, Result};
use std::time::Duration;

struct Args {
    backend: Option<String>,
    prompt: usize,
    steps: usize,
    batch: usize,
    dtype: DType,
    budget: usize,
    check_every: usize,
    /// `backbone:method` pairs to run (all when empty), e.g. `ratplus:quest`.
    only: Vec<String>,
    /// CUDA: record the step once in a graph and replay it (steps after the first).
    graph: bool,
}

fn parse() -> std::result::Result<Args, String> {
    let mut a = Args {
        backend: None,
        prompt: 4096,
        steps: 256,
        batch: 1,
        dtype: DType::BF16,
        budget: 8,
        check_every: 32,
        only: Vec::new(),
        graph: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // `--graph` is the one flag without a value.
    a.graph = argv.iter().any(|f| f == "--graph");
    let argv: Vec<String> = argv.into_iter().filter(|f| f != "--graph").collect();
    let mut it = argv.chunks(2);
    for pair in &mut it {
        let [flag, value] = pair else { return Err(format!("{} needs a value", pair[0])) };
        let num = || value.parse::<usize>().map_err(|_| format!("{flag}: a number, got {value}"));
        match flag.as_str() {
            "--backend" => a.backend = Some(value.clone()),
            "--prompt" => a.prompt = num()?,
            "--steps" => a.steps = num()?,
            "--batch" => a.batch = num()?,
            "--budget" => a.budget = num()?,
            "--check-every" => a.check_every = num()?.max(1),
            "--only" => a.only = value.split(',').map(str::to_string).collect(),
            "--dtype" => a.dtype = DType::parse(value).ok_or(format!("--dtype: f32, f16 or bf16, got {value}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.prompt < 256 * a.batch.saturating_sub(1) + 1 {
        return Err(format!("--prompt must exceed 256 * (batch - 1) = {}", 256 * a.batch.saturating_sub(1)));
    }
    Ok(a)
}

/// Seeded test data (splitmix64 into roughly normal values).
struct Data(u64);
impl Data {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| ((0..4).map(|_| self.next()).sum::<f32>() - 2.0) * 1.7).collect()
    }
    fn gates(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| 0.5 + 0.5 * self.next()).collect()
    }
}

#[derive(Clone, Copy)]
enum Run {
    Dense,
    Quest,
    Random,
    SnapKv,
}

struct Row {
    backbone: &'static str,
    method: &'static str,
    prefill: Duration,
    step: Duration,
    bytes: u64,
    max_err: f64,
    checks: usize,
    failures: usize,
    near_ties: usize,
}

fn stored(dtype: DType, v: &[f32]) -> (HostData, Vec<f32>) {
    let h = HostData::from_f32(dtype, v);
    let r = h.to_f32().unwrap_or_default();
    (h, r)
}

/// Records the work a closure enqueues and returns a replay of it (a CUDA graph), where the
/// backend has one.
type Capture<'a> = &'a dyn Fn(&mut dyn FnMut() -> Result<()>) -> Result<Box<dyn Fn() -> Result<()> + 'a>>;

fn one_run<B: Backend>(b: &B, a: &Args, backbone: Backbone, run: Run, capture: Option<Capture<'_>>) -> Result<Row> {
    let (hq, hkv, d, bs) = (32, 8, 128, 64);
    let lens: Vec<usize> = (0..a.batch).map(|i| a.prompt - 256 * i).collect();
    let capacity = a.prompt + a.steps;
    let cfg = DecoderConfig::new(hq, hkv, d, a.dtype, a.batch, capacity, bs, backbone)?;
    let frac = 1.0 / a.budget as f64;
    // SnapKV keeps 1/budget of the longest prompt (at least twice its 64-token window).
    let snapkv = matches!(run, Run::SnapKv).then(|| SnapKv::paper(Budget::Count((a.prompt / a.budget).max(128))));
    let (method, attention, name) = match run {
        Run::Dense => (DecodeMethod::Dense, PrefillAttention::Dense, "dense"),
        Run::Quest => (
            DecodeMethod::quest(Budget::Fraction(frac)),
            PrefillAttention::Moba(Moba::paper(Budget::Fraction(frac))),
            "quest",
        ),
        Run::Random => (
            DecodeMethod::random(Budget::Fraction(frac), 0x5eed),
            PrefillAttention::Moba(Moba::paper(Budget::Fraction(frac))),
            "random",
        ),
        Run::SnapKv => (DecodeMethod::Dense, PrefillAttention::Dense, "snapkv"),
    };
    let ratplus = matches!(backbone, Backbone::RatPlus { .. });
    let mut cache = KvCache::new(b, cfg, snapkv)?;
    let mut oracle = ReferenceDecoder::new(cfg, snapkv);
    let mut data = Data(0x1234 + run as u64);
    let mut prefill = Duration::ZERO;
    for (slot, &t) in lens.iter().enumerate() {
        let (qh, q) = stored(a.dtype, &data.normal(hq * t * d));
        let (kh, k) = stored(a.dtype, &data.normal(hkv * t * d));
        let (vh, v) = stored(a.dtype, &data.normal(hkv * t * d));
        let g = data.gates(hkv * t * d);
        let (qd, kd, vd, gd) = (b.upload(&qh)?, b.upload(&kh)?, b.upload(&vh)?, b.upload(&HostData::F32(g.clone()))?);
        let seq = PrefillSeq { slot, len: t, q: &qd, k: &kd, v: &vd, g: ratplus.then_some(&gd) };
        let mut kept = None;
        prefill += b.time(&mut || {
            kept = cache.prefill(b, std::slice::from_ref(&seq), attention)?.remove(0).kept;
            Ok(())
        })?;
        // The reference keeps the backend's SnapKV set (the equivalence suite checks the set).
        let kept = match kept {
            Some(k) => match b.download(&k)? {
                HostData::I32(v) => Some(v),
                _ => None,
            },
            None => None,
        };
        oracle.prefill(slot, &q, &k, &v, ratplus.then_some(&g[..]), t, None, kept.as_deref())?;
    }
    let mut outs = cache.step_outputs(b, &method)?;
    let (mut times, mut bytes) = (Vec::with_capacity(a.steps), 0u64);
    let (mut max_err, mut checks, mut failures, mut near_ties) = (0.0f64, 0, 0, 0);
    let append_cost = {
        let (r, base) = match backbone {
            Backbone::RatPlus { rope_base } => (true, rope_base),
            Backbone::Attention => (false, 10000.0),
        };
        kvsparse::ops::CacheAppend::new(*cache.shape(), hkv, r, base)?.cost()
    };
    // Fixed input buffers (a captured step keeps their addresses); each step's tokens are copied in.
    let [mut qd, mut kd, mut vd] =
        [hq, hkv, hkv].map(|h| b.alloc(a.dtype, a.batch * h * d).expect("step input buffers"));
    let mut gd = b.alloc(DType::F32, a.batch * hkv * d)?;
    let mut replay: Option<Box<dyn Fn() -> Result<()> + '_>> = None;
    for step in 0..a.steps {
        let (qh, q) = stored(a.dtype, &data.normal(a.batch * hq * d));
        let (kh, k) = stored(a.dtype, &data.normal(a.batch * hkv * d));
        let (vh, v) = stored(a.dtype, &data.normal(a.batch * hkv * d));
        let g = data.gates(a.batch * hkv * d);
        b.copy_buffer(&b.upload(&qh)?, &mut qd)?;
        b.copy_buffer(&b.upload(&kh)?, &mut kd)?;
        b.copy_buffer(&b.upload(&vh)?, &mut vd)?;
        b.copy_buffer(&b.upload(&HostData::F32(g.clone()))?, &mut gd)?;
        let gate = ratplus.then_some(&gd);
        times.push(match (&replay, capture) {
            (Some(replay), _) => b.time(&mut || cache.replay_step(replay))?,
            (None, Some(capture)) if step > 0 => {
                // Step 0 ran eagerly (compiling every kernel); record the step once, then replay.
                let recorded = cache.record_step(b, &qd, &kd, &vd, gate, &mut outs, |f| capture(f))?;
                let replayed = &**replay.insert(recorded);
                b.time(&mut || cache.replay_step(replayed))?
            }
            _ => b.time(&mut || cache.decode_step(b, &qd, &kd, &vd, gate, &method, &mut outs))?,
        });
        bytes += outs.op().cost_at(cache.lens()).bytes + append_cost.bytes;
        oracle.append(&k, &v, ratplus.then_some(&g[..]))?;
        if (step + 1) % a.check_every == 0 || step + 1 == a.steps {
            let want = oracle.attend(&q, &method)?;
            let got = b.download(&outs.out)?.to_f32().unwrap_or_default();
            let err = got.iter().zip(&want.out).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max);
            let selection = match (&outs.selected, &want.selected) {
                (Some(s), Some(w)) => match b.download(s)? {
                    HostData::I32(g) => compare_selection(&g, w, &want.scores, &q, a, &method),
                    _ => Selection::Differs,
                },
                _ => Selection::Same,
            };
            checks += 1;
            let tol = match a.dtype {
                DType::F32 => 1e-4,
                DType::F16 => 4e-3,
                _ => 3.2e-2,
            };
            match selection {
                // Other blocks attended: the outputs legitimately differ.
                Selection::NearTie => near_ties += 1,
                Selection::Differs => failures += 1,
                Selection::Same => {
                    max_err = max_err.max(if err.is_nan() { f64::INFINITY } else { err });
                    failures += (err.is_nan() || err > tol * 4.0) as usize;
                }
            }
        }
    }
    times.sort();
    Ok(Row {
        backbone: if ratplus { "ratplus" } else { "attention" },
        method: name,
        prefill,
        step: times[times.len() / 2],
        bytes: bytes / a.steps.max(1) as u64,
        max_err,
        checks,
        failures,
        near_ties,
    })
}

enum Selection {
    Same,
    /// Differs only by blocks whose reference scores lie within the rounding margin of each other.
    NearTie,
    Differs,
}

/// Compares a backend's selected blocks with the reference's. Where they differ, the swapped
/// blocks count as a near tie when their reference Quest scores are within what the keys'
/// rounding can move a score: each key element may differ by the f32 RoPE angle error (2e-3)
/// plus a few storage ulps, so a score by `||q_h||_1` times that.
fn compare_selection(
    got: &[i32],
    want: &[i32],
    scores: &[Vec<f32>],
    q: &[f32],
    a: &Args,
    method: &DecodeMethod,
) -> Selection {
    if got == want {
        return Selection::Same;
    }
    let DecodeMethod::Blocks { selector: kvsparse::ops::Selector::Score, .. } = method else {
        return Selection::Differs;
    };
    let (hq, d) = (32, 128);
    let width = got.len() / (a.batch * hq);
    let ulp = match a.dtype {
        DType::F32 => 1.0 / (1 << 23) as f32,
        DType::F16 => 1.0 / 1024.0,
        _ => 1.0 / 128.0,
    };
    for row in 0..a.batch * hq {
        let (b, h) = (row / hq, row % hq);
        let (g, w) = (&got[row * width..(row + 1) * width], &want[row * width..(row + 1) * width]);
        if g == w {
            continue;
        }
        let nb = scores[b].len() / hq;
        let score = |blk: i32| scores[b][h * nb + blk as usize];
        let only_g: Vec<f32> = g.iter().filter(|x| **x >= 0 && !w.contains(x)).map(|&x| score(x)).collect();
        let only_w: Vec<f32> = w.iter().filter(|x| **x >= 0 && !g.contains(x)).map(|&x| score(x)).collect();
        let q1: f32 = q[row * d..(row + 1) * d].iter().map(|x| x.abs()).sum();
        let margin = q1 * (2e-3 + 8.0 * ulp);
        let lowest_wanted = only_w.iter().copied().fold(f32::INFINITY, f32::min);
        let highest_taken = only_g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if only_g.len() != only_w.len() || highest_taken < lowest_wanted - margin {
            return Selection::Differs;
        }
    }
    Selection::NearTie
}

fn run_all<B: Backend>(b: &B, a: &Args, capture: Option<Capture<'_>>) -> Result<bool> {
    println!(
        "decoder example on {} ({}), timer {}{}: 32 q / 8 kv heads, D 128, {} prompt(s) of up to {} tokens, {} steps, {}, budget 1/{}",
        b.name(),
        b.device_name(),
        b.timer_kind(),
        if capture.is_some() { ", steps replayed from a CUDA graph" } else { "" },
        a.batch,
        a.prompt,
        a.steps,
        a.dtype,
        a.budget
    );
    println!(
        "{:<10} {:<8} {:>12} {:>12} {:>12} {:>9} {:>10} {:>8}",
        "backbone", "method", "prefill ms", "step µs", "MB/step", "GB/s", "max err", "checks"
    );
    let mut ok = true;
    for backbone in [Backbone::Attention, Backbone::RatPlus { rope_base: 10000.0 }] {
        for (run, name) in
            [(Run::Dense, "dense"), (Run::Quest, "quest"), (Run::Random, "random"), (Run::SnapKv, "snapkv")]
        {
            let bname = if matches!(backbone, Backbone::Attention) { "attention" } else { "ratplus" };
            if !a.only.is_empty() && !a.only.iter().any(|o| *o == format!("{bname}:{name}")) {
                continue;
            }
            let r = one_run(b, a, backbone, run, capture)?;
            let secs = r.step.as_secs_f64();
            let ties = if r.near_ties > 0 { format!(" ({} near-tie selection)", r.near_ties) } else { String::new() };
            println!(
                "{:<10} {:<8} {:>12.2} {:>12.1} {:>12.2} {:>9.1} {:>10.2e} {:>5}/{:<2}{ties}",
                r.backbone,
                r.method,
                r.prefill.as_secs_f64() * 1e3,
                secs * 1e6,
                r.bytes as f64 / 1e6,
                r.bytes as f64 / secs.max(1e-12) / 1e9,
                r.max_err,
                r.checks - r.failures - r.near_ties,
                r.checks
            );
            ok &= r.failures == 0;
        }
    }
    println!("{}", if ok { "every checked step matches the reference" } else { "MISMATCH against the reference" });
    Ok(ok)
}

fn main() -> std::process::ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("decoder: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let want = a.backend.clone();
    let result = (|| -> std::result::Result<bool, String> {
        #[cfg(feature = "cuda")]
        if want.as_deref().is_none_or(|w| w == "cuda") {
            match kvsparse::Cuda::new() {
                Ok(c) => {
                    // SAFETY: the example keeps every buffer a recorded step touches (the cache,
                    // the step outputs and inputs) alive for as long as its replay, and uses the
                    // backend from this thread only.
                    let capture = |f: &mut dyn FnMut() -> Result<()>| -> Result<Box<dyn Fn() -> Result<()> + '_>> {
                        let graph = unsafe { c.capture(f)? };
                        Ok(Box::new(move || graph.replay()))
                    };
                    return run_all(&c, &a, a.graph.then_some(&capture as Capture<'_>)).map_err(|e| e.to_string());
                }
                Err(e) if want.is_some() => return Err(e.to_string()),
                Err(_) => {}
            }
        }
        #[cfg(feature = "wgpu")]
        if want.as_deref().is_none_or(|w| w == "wgpu") {
            match kvsparse::Wgpu::new() {
                Ok(w) => return run_all(&w, &a, None).map_err(|e| e.to_string()),
                Err(e) if want.is_some() => return Err(e.to_string()),
                Err(_) => {}
            }
        }
        match want.as_deref() {
            None | Some("cpu") => run_all(&kvsparse::Cpu::new(), &a, None).map_err(|e| e.to_string()),
            Some(other) => Err(format!("backend {other} is not available in this build")),
        }
    })();
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("decoder: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
