//! Long MoBA prefills on the CUDA backend, where its bucket path (the tokens that selected each
//! key block gathered into lists, attention per list, partials merged per token) meets buckets of
//! many tiles, tokens of unequal selection counts and several passes over the query heads. The
//! random cases of `tests/equivalence.rs` stay under 500 tokens (8 blocks of 64); these run 4096
//! and 5000 tokens at f16 and bf16 against the CPU reference. The backend picks the bucket path
//! only for the sparsest budgets: run with `KVSPARSE_CUDA_MOBA=buckets` to put every case on it
//! (and `=union` for the query-major kernel), and with `KVSPARSE_CUDA_MOBA_WORKSPACE=20000000`
//! (bytes) to make it take the query heads one or two at a time. The bucket CTAs take runs of 8
//! tiles by default (`KVSPARSE_CUDA_MOBA_RUN=1` for one tile a CTA), and bf16 cases route on
//! tensor cores in one pass (`moba_route_mma`) where the f16 ones take the separate gate and
//! selection kernels.
//!
//! `long_dense_prefill_matches_the_reference` does the same for dense prefill over several query
//! tiles of either tensor-core kernel (128 rows a CTA by default, 64 with
//! `KVSPARSE_CUDA_PREFILL_WIDE=0`): causal with and without an offset, and not causal.
//!
//! Runs only where a CUDA device exists; `KVSPARSE_REQUIRE=cuda` turns a missing device into a
//! failure.

#![cfg(feature = "cuda")]

mod common;

use common::{compare, run_on, Case, Rng};
use kvsparse::ops::{default_scale, AnyOp, AttentionDense, MobaPrefill, SelectConfig, Selector};
use kvsparse::{Cpu, DType, HostData};

fn moba_case(r: &mut Rng, t: usize, d: usize, select: SelectConfig, dtype: DType) -> Case {
    let (hq, hkv) = (8, 2);
    let f = |v: Vec<f32>| HostData::from_f32(dtype, &v);
    let op = MobaPrefill::new(hq, hkv, t, d, select, default_scale(d), dtype).unwrap().without_ranking();
    let inputs = vec![f(r.grid(hq * t * d)), f(r.grid(hkv * t * d)), f(r.normal(hkv * t * d, 1.0))];
    Case { op: AnyOp::MobaPrefill(op), inputs }
}

#[test]
fn long_moba_prefill_matches_the_reference() {
    let Some(b) = common::cuda_or_skip() else { return };
    let mut r = Rng::new(0x30ba);
    let score = |n_blocks, force_first| SelectConfig {
        block_size: 64,
        n_blocks,
        force_first,
        n_local: 1,
        selector: Selector::Score,
    };
    let cases = [
        (4096, 128, score(16, true), DType::BF16),
        (4096, 128, score(8, true), DType::F16),
        (5000, 64, score(5, false), DType::BF16),
        (
            4096,
            64,
            SelectConfig { block_size: 128, n_blocks: 6, force_first: true, n_local: 2, selector: Selector::Score },
            DType::F16,
        ),
        (
            4096,
            128,
            SelectConfig {
                block_size: 64,
                n_blocks: 12,
                force_first: true,
                n_local: 1,
                selector: Selector::Random { seed: 7 },
            },
            DType::BF16,
        ),
    ];
    for (t, d, select, dtype) in cases {
        let case = moba_case(&mut r, t, d, select, dtype);
        let label = format!("{} {}", case.op.name(), case.op.label());
        let expected = run_on(&Cpu::new(), &case).unwrap_or_else(|e| panic!("{label}: reference: {e}"));
        let got = run_on(&b, &case).unwrap_or_else(|e| panic!("{label}: cuda: {e}"));
        let errors = compare(&case.op, &got, &expected);
        assert!(errors.is_empty(), "{label}:\n  {}", errors.join("\n  "));
    }
}

#[test]
fn long_dense_prefill_matches_the_reference() {
    let Some(b) = common::cuda_or_skip() else { return };
    let mut r = Rng::new(0xd0e5);
    // (q heads, kv heads, q_len, kv_len, D, causal, dtype): tiles cut by q_len, a causal offset
    // (q_len < kv_len), rows past the last tile's end.
    let cases = [
        (4, 2, 2000, 2000, 128, true, DType::BF16),
        (4, 1, 1000, 1777, 64, true, DType::F16),
        (4, 2, 777, 1300, 128, false, DType::F16),
        (2, 2, 300, 301, 64, true, DType::BF16),
        (8, 2, 1290, 1290, 128, true, DType::F16),
    ];
    for (hq, hkv, tq, tk, d, causal, dtype) in cases {
        let f = |v: Vec<f32>| HostData::from_f32(dtype, &v);
        let op = AttentionDense::new(hq, hkv, tq, tk, d, causal, default_scale(d), dtype).unwrap();
        let inputs =
            vec![f(r.normal(hq * tq * d, 1.0)), f(r.normal(hkv * tk * d, 1.0)), f(r.normal(hkv * tk * d, 1.0))];
        let case = Case { op: AnyOp::AttentionDense(op), inputs };
        let label = format!("{} {}", case.op.name(), case.op.label());
        let expected = run_on(&Cpu::new(), &case).unwrap_or_else(|e| panic!("{label}: reference: {e}"));
        let got = run_on(&b, &case).unwrap_or_else(|e| panic!("{label}: cuda: {e}"));
        let errors = compare(&case.op, &got, &expected);
        assert!(errors.is_empty(), "{label}:\n  {}", errors.join("\n  "));
    }
}
