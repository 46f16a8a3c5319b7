//! The decoder ([`KvCache`]) on every backend against [`ReferenceDecoder`], the same decoder
//! written as a loop over the float64 reference: batches of 1, 3 and 8 sequences with mixed
//! prompt lengths (one slot left empty in the larger batches), both backbones, dense and MoBA
//! prefill, SnapKV caches (group-mean and per-head), and decode steps whose method changes from
//! step to step (dense, Quest by fraction and by count, the random selector). Every step's
//! output, log-sum-exp and selected blocks are compared.
//!
//! One trial per (backend, backbone, batch): `wgpu::ratplus_b3_matches_reference`. An absent
//! backend is *ignored* unless named in `KVSPARSE_REQUIRE`. `KVSPARSE_DECODER_STEPS` sets the
//! decode steps per case (default 32).

mod common;

use common::{backend_trial, compare_buffer, storage_tolerance, Rng};
use kvsparse::decoder::*;
use kvsparse::methods::{Budget, Moba, SnapKv};
use kvsparse::ops::{GqaMode, Selector};
use kvsparse::{Backend, DType, HostData};
use libtest_mimic::{Arguments, Trial};
use std::sync::OnceLock;

fn steps() -> usize {
    std::env::var("KVSPARSE_DECODER_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

/// The methods a step cycles through: the method is chosen per call.
fn methods(seed: u32) -> Vec<DecodeMethod> {
    vec![
        DecodeMethod::Dense,
        DecodeMethod::quest(Budget::Fraction(0.25)),
        DecodeMethod::Blocks { budget: Budget::Count(3), force_first: false, n_local: 2, selector: Selector::Score },
        DecodeMethod::random(Budget::Fraction(0.5), seed),
    ]
}

fn f32s(d: HostData) -> Vec<f32> {
    d.to_f32().unwrap_or_default()
}

/// Values as the device stores them.
fn stored(dtype: DType, v: Vec<f32>) -> (HostData, Vec<f32>) {
    let h = HostData::from_f32(dtype, &v);
    let r = h.to_f32().unwrap();
    (h, r)
}

/// Compares an attention output or log-sum-exp with the reference's. Both come from keys and
/// values rounded to the storage dtype `dtype`, and a RAT+ key computed in f32 (the device) or
/// f64 (the reference) may round to neighbouring storage values: the tolerance is that of the
/// storage dtype, twice, for `lse` (f32) too.
fn check(what: &str, dtype: DType, got: HostData, expected: &[f32]) -> Result<(), String> {
    let (atol, rtol) = storage_tolerance(dtype);
    let exp = HostData::F32(expected.to_vec());
    let got = HostData::F32(f32s(got));
    match compare_buffer(what, 2.0 * atol, 2.0 * rtol, &got, &exp) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// One decoder case on `b`: prefill every non-empty slot, then `steps()` decode steps.
fn decoder_case<B: Backend>(
    b: &B,
    backbone: Backbone,
    batch: usize,
    dtype: DType,
    snapkv: Option<SnapKv>,
    seed: u64,
) -> Result<(), String> {
    let mut r = Rng::new(seed);
    let (hq, hkv, d, bs) = (4, 2, 16, 8);
    let n_steps = steps();
    let lens: Vec<usize> =
        (0..batch).map(|i| if batch > 1 && i == 1 { 0 } else { r.size(&[1, 16, 17], 1, 120) }).collect();
    let capacity = lens.iter().max().unwrap() + n_steps;
    let cfg = DecoderConfig::new(hq, hkv, d, dtype, batch, capacity, bs, backbone).map_err(|e| e.to_string())?;
    let mut cache = KvCache::new(b, cfg, snapkv).map_err(|e| e.to_string())?;
    let mut oracle = ReferenceDecoder::new(cfg, snapkv);
    let ratplus = matches!(backbone, Backbone::RatPlus { .. });
    let label = format!("{backbone:?} b{batch} {dtype} snapkv {:?} lens {lens:?}", snapkv.map(|s| s.gqa));
    let err = |e: kvsparse::Error| format!("{label}: {e}");
    for (slot, &t) in lens.iter().enumerate() {
        if t == 0 {
            continue;
        }
        let (qh, q) = stored(dtype, r.normal(hq * t * d, 1.0));
        let (kh, k) = stored(dtype, r.normal(hkv * t * d, 1.0));
        let (vh, v) = stored(dtype, r.normal(hkv * t * d, 1.0));
        let g = r.gates(hkv * t * d);
        let attention =
            if slot % 2 == 0 { PrefillAttention::Dense } else { PrefillAttention::Moba(Moba::paper(Budget::Count(2))) };
        let attention = match attention {
            PrefillAttention::Moba(mut m) => {
                m.select.block_size = bs;
                PrefillAttention::Moba(m)
            }
            dense => dense,
        };
        let [qd, kd, vd] = [&qh, &kh, &vh].map(|h| b.upload(h).unwrap());
        let gd = b.upload(&HostData::F32(g.clone())).map_err(err)?;
        let seq = PrefillSeq { slot, len: t, q: &qd, k: &kd, v: &vd, g: ratplus.then_some(&gd) };
        let got = cache.prefill(b, &[seq], attention).map_err(err)?.remove(0);
        // SnapKV's kept set is checked by the equivalence suite (with its rounding rule); here the
        // reference keeps the backend's set, so the decode itself is what is compared.
        let kept = match &got.kept {
            Some(k) => Some(b.download(k).map_err(err)?),
            None => None,
        };
        let kept = kept.map(|k| match k {
            HostData::I32(v) => v,
            _ => Vec::new(),
        });
        let want = oracle
            .prefill(slot, &q, &k, &v, ratplus.then_some(&g[..]), t, Some(attention), kept.as_deref())
            .map_err(err)?;
        check(&format!("{label} prefill slot {slot} out"), dtype, b.download(&got.out).map_err(err)?, &want.out)?;
        check(&format!("{label} prefill slot {slot} lse"), dtype, b.download(&got.lse).map_err(err)?, &want.lse)?;
    }
    if cache.lens() != oracle.lens() {
        return Err(format!("{label}: lengths after prefill {:?}, reference {:?}", cache.lens(), oracle.lens()));
    }
    let methods = methods(r.u32());
    let mut outs: Vec<StepOutputs<B>> =
        methods.iter().map(|m| cache.step_outputs(b, m)).collect::<Result<_, _>>().map_err(err)?;
    for step in 0..n_steps {
        let which = step % methods.len();
        let method = methods[which];
        let (qh, q) = stored(dtype, r.normal(batch * hq * d, 1.0));
        let (kh, k) = stored(dtype, r.normal(batch * hkv * d, 1.0));
        let (vh, v) = stored(dtype, r.normal(batch * hkv * d, 1.0));
        let g = r.gates(batch * hkv * d);
        let [qd, kd, vd] = [&qh, &kh, &vh].map(|h| b.upload(h).unwrap());
        let gd = b.upload(&HostData::F32(g.clone())).map_err(err)?;
        let o = &mut outs[which];
        cache.decode_step(b, &qd, &kd, &vd, ratplus.then_some(&gd), &method, o).map_err(err)?;
        let want = oracle.step(&q, &k, &v, ratplus.then_some(&g[..]), &method).map_err(err)?;
        let at = format!("{label} step {step} {method:?}");
        if let (Some(sel), Some(want_sel)) = (&o.selected, &want.selected) {
            let got = b.download(sel).map_err(err)?;
            if got != HostData::I32(want_sel.clone()) {
                return Err(format!("{at}: selected blocks {got:?}, reference {want_sel:?}"));
            }
        }
        check(&format!("{at} out"), dtype, b.download(&o.out).map_err(err)?, &want.out)?;
        check(&format!("{at} lse"), dtype, b.download(&o.lse).map_err(err)?, &want.lse)?;
    }
    let (lens_dev, _) = cache.lengths();
    let dev: Vec<usize> = match b.download(lens_dev).map_err(err)? {
        HostData::I32(v) => v.into_iter().map(|x| x as usize).collect(),
        _ => Vec::new(),
    };
    if dev != oracle.lens() || cache.lens() != oracle.lens() {
        return Err(format!("{label}: device lengths {dev:?}, host {:?}, reference {:?}", cache.lens(), oracle.lens()));
    }
    Ok(())
}

/// Every case of one (backbone, batch): each dtype the backend supports, plain and SnapKV caches.
fn decoder_cases<B: Backend>(b: &B, backbone: Backbone, batch: usize, seed: u64) -> Result<(), String> {
    let dtypes: Vec<DType> = [DType::F32, DType::F16, DType::BF16].into_iter().filter(|&d| b.supports(d)).collect();
    let snap =
        |gqa| SnapKv { capacity: Budget::Count(40), window: 8, kernel: 3, gqa, ..SnapKv::paper(Budget::Count(40)) };
    for (i, &dtype) in dtypes.iter().enumerate() {
        decoder_case(b, backbone, batch, dtype, None, seed + i as u64)?;
    }
    decoder_case(b, backbone, batch, dtypes[0], Some(snap(GqaMode::Mean)), seed + 10)?;
    decoder_case(b, backbone, batch, *dtypes.last().unwrap(), Some(snap(GqaMode::PerHead)), seed + 11)?;
    Ok(())
}

/// A full sequence refuses a decode step with a typed error instead of writing past its slots.
fn full_cache_is_refused() -> Result<(), libtest_mimic::Failed> {
    let cpu = kvsparse::Cpu::new();
    let cfg = DecoderConfig::new(2, 1, 4, DType::F32, 1, 3, 2, Backbone::Attention)?;
    let mut cache = KvCache::new(&cpu, cfg, None)?;
    let data = |n: usize| cpu.upload(&HostData::F32(vec![0.5; n]));
    let (q, k, v) = (data(2 * 3 * 4)?, data(3 * 4)?, data(3 * 4)?);
    cache.prefill(&cpu, &[PrefillSeq { slot: 0, len: 3, q: &q, k: &k, v: &v, g: None }], PrefillAttention::Dense)?;
    let mut outs = cache.step_outputs(&cpu, &DecodeMethod::Dense)?;
    let (q1, k1) = (data(2 * 4)?, data(4)?);
    match cache.decode_step(&cpu, &q1, &k1, &k1, None, &DecodeMethod::Dense, &mut outs) {
        Err(kvsparse::Error::InvalidArgument { arg: "capacity", .. }) => Ok(()),
        other => Err(format!("a full cache gave {:?}", other.map(|_| ())).into()),
    }
}

/// A decode step captured once in a CUDA graph and replayed equals the eager step, bit for bit,
/// for 12 steps, then again after slot 0 is prefilled anew with a prompt of another length
/// (the lengths change on the device; the graph is not re-recorded).
#[cfg(feature = "cuda")]
fn graph_replay_matches_eager(gpu: &kvsparse::Cuda) -> Result<(), String> {
    let err = |e: kvsparse::Error| e.to_string();
    let mut r = Rng::new(77);
    let (hq, hkv, d, bs, batch, dtype) = (8, 2, 64, 16, 3, DType::BF16);
    let cfg =
        DecoderConfig::new(hq, hkv, d, dtype, batch, 400, bs, Backbone::RatPlus { rope_base: 10000.0 }).map_err(err)?;
    let mut eager = KvCache::new(gpu, cfg, None).map_err(err)?;
    let mut graphed = KvCache::new(gpu, cfg, None).map_err(err)?;
    let prefill = |cache: &mut KvCache<kvsparse::Cuda>, slot: usize, t: usize, seed: u64| -> Result<(), String> {
        let mut r = Rng::new(seed);
        let up = |v: Vec<f32>| gpu.upload(&HostData::from_f32(dtype, &v)).unwrap();
        let (q, k, v) = (up(r.normal(hq * t * d, 1.0)), up(r.normal(hkv * t * d, 1.0)), up(r.normal(hkv * t * d, 1.0)));
        let g = gpu.upload(&HostData::F32(r.gates(hkv * t * d))).map_err(err)?;
        let seq = PrefillSeq { slot, len: t, q: &q, k: &k, v: &v, g: Some(&g) };
        cache.prefill(gpu, &[seq], PrefillAttention::Dense).map(drop).map_err(err)
    };
    for (slot, t) in [(0, 100), (1, 7), (2, 250)] {
        prefill(&mut eager, slot, t, slot as u64)?;
        prefill(&mut graphed, slot, t, slot as u64)?;
    }
    let method = DecodeMethod::quest(Budget::Fraction(0.25));
    let (mut out_e, mut out_g) =
        (eager.step_outputs(gpu, &method).map_err(err)?, graphed.step_outputs(gpu, &method).map_err(err)?);
    // Fixed input buffers: each step's tokens are copied into them, as an engine would.
    let new_inputs = |r: &mut Rng| {
        let up = |v: Vec<f32>| gpu.upload(&HostData::from_f32(dtype, &v)).unwrap();
        (
            up(r.normal(batch * hq * d, 1.0)),
            up(r.normal(batch * hkv * d, 1.0)),
            up(r.normal(batch * hkv * d, 1.0)),
            gpu.upload(&HostData::F32(r.gates(batch * hkv * d))).unwrap(),
        )
    };
    let (mut q, mut k, mut v, mut g) = new_inputs(&mut r);
    // Warm-up step on both caches (compiles every kernel outside the capture).
    eager.decode_step(gpu, &q, &k, &v, Some(&g), &method, &mut out_e).map_err(err)?;
    graphed.decode_step(gpu, &q, &k, &v, Some(&g), &method, &mut out_g).map_err(err)?;
    // SAFETY: every buffer the step touches (the cache's, the outputs, q/k/v/g) lives until the
    // end of this function, longer than `graph`, and only this thread uses `gpu`.
    let graph =
        graphed.record_step(gpu, &q, &k, &v, Some(&g), &mut out_g, |f| unsafe { gpu.capture(f) }).map_err(err)?;
    for step in 0..24 {
        if step == 12 {
            // New lengths on the device: slot 0 gets a longer prompt.
            prefill(&mut eager, 0, 180, 99)?;
            prefill(&mut graphed, 0, 180, 99)?;
        }
        let (q2, k2, v2, g2) = new_inputs(&mut r);
        for (src, dst) in [(&q2, &mut q), (&k2, &mut k), (&v2, &mut v), (&g2, &mut g)] {
            gpu.copy_buffer(src, dst).map_err(err)?;
        }
        eager.decode_step(gpu, &q, &k, &v, Some(&g), &method, &mut out_e).map_err(err)?;
        graphed.replay_step(|| graph.replay()).map_err(err)?;
        let pairs = [
            (&out_e.out, &out_g.out),
            (&out_e.lse, &out_g.lse),
            (out_e.selected.as_ref().unwrap(), out_g.selected.as_ref().unwrap()),
        ];
        for (name, (a, b)) in ["out", "lse", "selected"].iter().zip(pairs) {
            let (a, b) = (gpu.download(a).map_err(err)?, gpu.download(b).map_err(err)?);
            if a != b {
                return Err(format!("step {step}: replayed `{name}` differs from the eager step"));
            }
        }
    }
    let (le, lg) = (gpu.download(eager.lengths().0).map_err(err)?, gpu.download(graphed.lengths().0).map_err(err)?);
    if le != lg || eager.lens() != graphed.lens() || le != HostData::I32(vec![192, 32, 275]) {
        return Err(format!("lengths: eager {le:?}, replayed {lg:?}, host {:?}", graphed.lens()));
    }
    Ok(())
}

const BACKBONES: [(&str, Backbone); 2] =
    [("attention", Backbone::Attention), ("ratplus", Backbone::RatPlus { rope_base: 10000.0 })];

fn backend_trials<B: Backend + Sync + 'static>(name: &'static str, backend: &'static Result<B, String>) -> Vec<Trial> {
    let mut trials = Vec::new();
    for (bi, (bname, backbone)) in BACKBONES.into_iter().enumerate() {
        for batch in [1, 3, 8] {
            let trial = format!("{name}::{bname}_b{batch}_matches_reference");
            let seed = 0xdec0de + 100 * bi as u64 + batch as u64;
            trials.push(backend_trial(trial, name, backend, move |b| Ok(decoder_cases(b, backbone, batch, seed)?)));
        }
    }
    trials
}

static CPU: OnceLock<Result<kvsparse::Cpu, String>> = OnceLock::new();
#[cfg(feature = "wgpu")]
static WGPU: OnceLock<Result<kvsparse::Wgpu, String>> = OnceLock::new();
#[cfg(feature = "cuda")]
static CUDA: OnceLock<Result<kvsparse::Cuda, String>> = OnceLock::new();

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let mut trials = vec![Trial::test("full_cache_is_refused", full_cache_is_refused)];
    trials.extend(backend_trials("cpu", CPU.get_or_init(|| Ok(kvsparse::Cpu::new()))));
    #[cfg(feature = "wgpu")]
    trials.extend(backend_trials("wgpu", WGPU.get_or_init(|| kvsparse::Wgpu::new().map_err(|e| e.to_string()))));
    #[cfg(feature = "cuda")]
    {
        let cuda = CUDA.get_or_init(|| kvsparse::Cuda::new().map_err(|e| e.to_string()));
        trials.extend(backend_trials("cuda", cuda));
        // Its own backend (own stream): a capture records everything enqueued on its stream,
        // and the other CUDA trials run on other threads at the same time.
        trials.push(backend_trial("cuda::graph_replay_matches_eager".into(), "cuda", cuda, |_| {
            Ok(graph_replay_matches_eager(&kvsparse::Cuda::new().map_err(|e| e.to_string())?)?)
        }));
    }
    libtest_mimic::run(&args, trials).exit_code()
}
