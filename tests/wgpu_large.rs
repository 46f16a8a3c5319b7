//! Buffers larger than the adapter's storage-binding limit (128 MiB on lavapipe, 2 GiB on
//! NVIDIA): the wgpu backend binds them in chunks. A KV cache and a scan above 128 MiB of f32 go
//! through dense decode, Quest decode and the decay scan and must match the CPU reference.
//!
//! Runs only where a wgpu adapter exists; `KVSPARSE_REQUIRE=wgpu` turns a missing adapter into
//! a failure. On an adapter whose binding limit exceeds these sizes the kernels run unchunked
//! (still a valid check, not of the chunking).

#![cfg(feature = "wgpu")]

mod common;

use common::{compare, run_on, Case, Rng};
use kvsparse::ops::{default_scale, AnyOp, AttentionDense, DecayScan, QuestDecode, SelectConfig, Selector};
use kvsparse::{Cpu, DType, HostData, Wgpu};

fn wgpu() -> Option<Wgpu> {
    match Wgpu::new() {
        Ok(b) => Some(b),
        Err(e) => {
            let required = std::env::var("KVSPARSE_REQUIRE").is_ok_and(|v| v.split(',').any(|x| x.trim() == "wgpu"));
            assert!(!required, "KVSPARSE_REQUIRE=wgpu but no adapter: {e}");
            eprintln!("skipped: no wgpu adapter ({e})");
            None
        }
    }
}

/// f32 K of `HKV x T x D` exceeds 128 MiB. (llvmpipe stops any shader loop after 65535
/// iterations, its guard against hangs: long rows must be split across invocations, as the
/// split-K decode and the chunked scan do.)
const HKV: usize = 2;
const D: usize = 64;
const T: usize = 270_000;

fn check(b: &Wgpu, case: Case) {
    let label = format!("{} {}", case.op.name(), case.op.label());
    let expected = run_on(&Cpu::new(), &case).unwrap_or_else(|e| panic!("{label}: reference: {e}"));
    let got = run_on(b, &case).unwrap_or_else(|e| panic!("{label}: wgpu: {e}"));
    let errors = compare(&case.op, &got, &expected);
    assert!(errors.is_empty(), "{label}:\n  {}", errors.join("\n  "));
}

fn kv_inputs(r: &mut Rng, hq: usize) -> Vec<HostData> {
    const { assert!(HKV * T * D * 4 > 128 << 20) };
    vec![HostData::F32(r.grid(hq * D)), HostData::F32(r.grid(HKV * T * D)), HostData::F32(r.normal(HKV * T * D, 1.0))]
}

#[test]
fn large_kv_cache_decodes() {
    let Some(b) = wgpu() else { return };
    let mut r = Rng::new(0x1a46e);
    let hq = 4 * HKV;
    let inputs = kv_inputs(&mut r, hq);
    let dense = AttentionDense::new(hq, HKV, 1, T, D, true, default_scale(D), DType::F32).unwrap();
    check(&b, Case { op: AnyOp::AttentionDense(dense), inputs: inputs.clone() });
    let select = SelectConfig { block_size: 64, n_blocks: 8, force_first: true, n_local: 1, selector: Selector::Score };
    let quest = QuestDecode::new(hq, HKV, T, D, select, default_scale(D), DType::F32).unwrap();
    check(&b, Case { op: AnyOp::QuestDecode(quest), inputs });
}

#[test]
fn large_decay_scan() {
    let Some(b) = wgpu() else { return };
    let mut r = Rng::new(0x5ca9);
    let (outer, c) = (HKV, D);
    let n = outer * T * c;
    let op = DecayScan::new(outer, T, c, DType::F32).unwrap();
    let inputs =
        vec![HostData::F32(r.normal(n, 1.0)), HostData::F32(r.gates(n)), HostData::F32(r.normal(outer * c, 1.0))];
    check(&b, Case { op: AnyOp::DecayScan(op), inputs });
}
