//! Metamorphic laws of the reference itself (no golden data, no GPU): each op agrees with a
//! simpler formulation of the same quantity on small random inputs.

use kvsparse_reference as r;
use proptest::prelude::*;

const CASES: u32 = 128;

fn vecf(n: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-2.0f32..2.0, n)
}

fn close(a: &[f32], b: &[f32], tol: f32) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        prop_assert!((x - y).abs() <= tol * (1.0 + y.abs()), "index {}: {} vs {}", i, x, y);
    }
    Ok(())
}

/// Attention problem: `(hq, hkv, dim, t, q[hq, tq, dim], k, v[hkv, t, dim])`.
fn attn_case(tq_is_t: bool) -> impl Strategy<Value = (usize, usize, usize, usize, Vec<f32>, Vec<f32>, Vec<f32>)> {
    (1usize..=2, 1usize..=2, prop::sample::select(vec![2usize, 4, 8]), 1usize..=40).prop_flat_map(
        move |(hkv, g, d, t)| {
            let hq = hkv * g;
            let tq = if tq_is_t { t } else { 1 };
            (Just(hq), Just(hkv), Just(d), Just(t), vecf(hq * tq * d), vecf(hkv * t * d), vecf(hkv * t * d))
        },
    )
}

fn scale(d: usize) -> f64 {
    1.0 / (d as f64).sqrt()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn decay_scan_gate_zero_copies_x((t, c) in (1usize..20, 1usize..6), seed in vecf(200)) {
        let x = &seed[..t * c];
        let y = r::decay_scan(x, &vec![0.0; t * c], &seed[t * c..t * c + c]);
        prop_assert_eq!(y, x.to_vec());
    }

    #[test]
    fn decay_scan_gate_one_holds_h0((t, c) in (1usize..20, 1usize..6), seed in vecf(200)) {
        let h0 = &seed[t * c..t * c + c];
        let y = r::decay_scan(&seed[..t * c], &vec![1.0; t * c], h0);
        for row in y.chunks_exact(c) {
            prop_assert_eq!(row, h0);
        }
    }

    #[test]
    fn decay_step_loop_equals_scan((t, c) in (1usize..30, 1usize..6), x in vecf(180), g in prop::collection::vec(0.0f32..1.0, 180), h0 in vecf(6)) {
        let (x, g, h0) = (&x[..t * c], &g[..t * c], &h0[..c]);
        let scan = r::decay_scan(x, g, h0);
        let mut h = h0.to_vec();
        for s in 0..t {
            h = r::decay_step(&x[s * c..(s + 1) * c], &g[s * c..(s + 1) * c], &h);
            close(&h, &scan[s * c..(s + 1) * c], 1e-6)?;
        }
    }

    #[test]
    fn ratplus_step_loop_equals_ratplus_kv(
        (h, t, d) in (1usize..=2, 1usize..=12, prop::sample::select(vec![2usize, 4, 8])),
        k in vecf(192), v in vecf(192), g in prop::collection::vec(0.0f32..1.0, 192),
    ) {
        let n = h * t * d;
        let (k, v, g) = (&k[..n], &v[..n], &g[..n]);
        let full = r::ratplus_kv(k, v, g, h, d, 10000.0);
        let (mut hk, mut hv) = (vec![0.0f32; h * d], vec![0.0f32; h * d]);
        // Gather the `[H, D]` slice of token s from an `[H, T, D]` tensor.
        let at = |x: &[f32], s: usize| -> Vec<f32> { (0..h).flat_map(|hh| x[(hh * t + s) * d..(hh * t + s + 1) * d].to_vec()).collect() };
        for s in 0..t {
            let step = r::ratplus_step(&at(k, s), &at(v, s), &at(g, s), &hk, &hv, d, 10000.0, s as i32);
            close(&step.hk_new, &at(&full.k_tilde, s), 1e-6)?;
            close(&step.hv_new, &at(&full.v_tilde, s), 1e-6)?;
            close(&step.k_rope, &at(&full.k_rope, s), 1e-6)?;
            hk = step.hk_new;
            hv = step.hv_new;
        }
    }

    #[test]
    fn quest_full_budget_is_dense_decode((hq, hkv, d, t, q, k, v) in attn_case(false), bs in 1usize..=9, ff in any::<bool>(), n_local in 0usize..3, random in any::<bool>()) {
        let nb = r::num_blocks(t, bs);
        let selector = if random { r::Selector::Random { seed: 7 } } else { r::Selector::Score };
        let cfg = r::SelectConfig { block_size: bs, n_blocks: nb, force_first: ff, n_local, selector };
        let want = r::attention_dense(&q, &k, &v, hq, hkv, d, false, scale(d));
        for (gqa, rows) in [(r::GqaMode::PerHead, hq), (r::GqaMode::Mean, hkv)] {
            let got = r::quest_decode(&q, &k, &v, None, hq, hkv, d, &cfg, gqa, scale(d));
            prop_assert_eq!(got.n_sel, nb);
            let all: Vec<i32> = (0..rows).flat_map(|_| 0..nb as i32).collect();
            prop_assert_eq!(&got.selected, &all);
            close(&got.out, &want.out, 1e-5)?;
            close(&got.lse, &want.lse, 1e-5)?;
        }
    }

    #[test]
    fn quest_group_mean_selects_on_the_mean_score((hq, hkv, d, t, q, k, v) in attn_case(false), bs in 1usize..=9, ff in any::<bool>(), n_local in 0usize..3, budget in 1usize..6) {
        // Mean mode = the per-head selection applied to the group-mean scores, shared by the group.
        let nb = r::num_blocks(t, bs);
        let cfg = r::SelectConfig { block_size: bs, n_blocks: budget, force_first: ff, n_local, selector: r::Selector::Score };
        let got = r::quest_decode(&q, &k, &v, None, hq, hkv, d, &cfg, r::GqaMode::Mean, scale(d));
        let per_head = r::quest_decode(&q, &k, &v, None, hq, hkv, d, &cfg, r::GqaMode::PerHead, scale(d));
        let g = hq / hkv;
        let mean: Vec<f32> = (0..hkv * nb)
            .map(|e| (0..g).map(|i| per_head.scores[(e / nb * g + i) * nb + e % nb] as f64).sum::<f64>() / g as f64)
            .map(|x| x as f32)
            .collect();
        close(&got.scores, &mean, 1e-6)?;
        if g == 1 {
            prop_assert_eq!(&got.selected, &per_head.selected);
        }
        let want = r::quest_select(&got.scores, hkv, nb, &cfg);
        prop_assert_eq!(&got.selected, &want.0);
    }

    #[test]
    fn moba_full_budget_is_dense_causal((hq, hkv, d, t, q, k, v) in attn_case(true), bs in 1usize..=9, ff in any::<bool>(), random in any::<bool>()) {
        let nb = r::num_blocks(t, bs);
        let selector = if random { r::Selector::Random { seed: 3 } } else { r::Selector::Score };
        let cfg = r::SelectConfig { block_size: bs, n_blocks: nb, force_first: ff, n_local: 1, selector };
        let got = r::moba_prefill(&q, &k, &v, hq, hkv, d, &cfg, scale(d));
        let want = r::attention_dense(&q, &k, &v, hq, hkv, d, true, scale(d));
        close(&got.out, &want.out, 1e-5)?;
        close(&got.lse, &want.lse, 1e-5)?;
        // Every token selects exactly the blocks 0..=c, the rest is padding.
        for (row, sel) in got.selected.chunks_exact(got.width).enumerate() {
            let c = (row % t) / bs;
            let expect: Vec<i32> = (0..got.width as i32).map(|b| if b as usize <= c { b } else { -1 }).collect();
            prop_assert_eq!(sel, expect.as_slice());
        }
    }

    #[test]
    fn moba_rows_are_sparse_attention_over_their_blocks(
        (hq, hkv, d, t, q, k, v) in attn_case(true), bs in 1usize..=6, n_blocks in 0usize..4,
        ff in any::<bool>(), n_local in 0usize..3,
    ) {
        let cfg = r::SelectConfig { block_size: bs, n_blocks, force_first: ff, n_local, selector: r::Selector::Score };
        let got = r::moba_prefill(&q, &k, &v, hq, hkv, d, &cfg, scale(d));
        let nb = r::num_blocks(t, bs);
        prop_assert_eq!(got.width, nb.min(n_blocks.max(n_local + ff as usize)));
        let g = hq / hkv;
        for h in 0..hq {
            for tt in 0..t {
                let row = &got.selected[(h * t + tt) * got.width..(h * t + tt + 1) * got.width];
                // Tokens j <= t of the selected blocks, as an index set for one query.
                let idx: Vec<i32> = row.iter().filter(|&&b| b >= 0)
                    .flat_map(|&b| (b as usize * bs..((b as usize + 1) * bs).min(tt + 1)).map(|j| j as i32))
                    .collect();
                let kv = h / g;
                let span = kv * t * d..(kv + 1) * t * d;
                let one = r::attention_sparse(
                    &q[(h * t + tt) * d..(h * t + tt + 1) * d], &k[span.clone()], &v[span], &idx, 1, 1, 1, d, scale(d));
                close(&got.out[(h * t + tt) * d..(h * t + tt + 1) * d], &one.out, 1e-6)?;
                prop_assert!(got.lse[h * t + tt] == one.lse[0] || (got.lse[h * t + tt] - one.lse[0]).abs() <= 1e-6);
            }
        }
    }

    #[test]
    fn sparse_over_all_indices_is_dense(
        (hq, hkv, d, t, q, k, v) in attn_case(false),
        per_q in any::<bool>(), pad in 0usize..3, perm_seed in any::<u32>(),
    ) {
        let hi = if per_q { hq } else { hkv };
        // Every token once, in a per-row pseudo-random order, then `pad` entries of -1.
        let idx: Vec<i32> = (0..hi)
            .flat_map(|row| {
                let mut order: Vec<i32> = (0..t as i32).collect();
                order.sort_by_key(|&j| r::random_key(perm_seed, row as u32, j as u32));
                order.into_iter().chain(std::iter::repeat_n(-1, pad))
            })
            .collect();
        let got = r::attention_sparse(&q, &k, &v, &idx, hi, hq, hkv, d, scale(d));
        let want = r::attention_dense(&q, &k, &v, hq, hkv, d, false, scale(d));
        close(&got.out, &want.out, 1e-5)?;
        close(&got.lse, &want.lse, 1e-5)?;
    }

    #[test]
    fn random_select_takes_largest_eligible_keys(
        (rows_n, n) in (1usize..4, 0usize..30), k in 0usize..12, seed in any::<u32>(),
        rows in prop::collection::vec(any::<u32>(), 4), mask in prop::collection::vec(any::<bool>(), 120),
    ) {
        let rows = &rows[..rows_n];
        let cand: Vec<i32> = mask[..rows_n * n].iter().map(|&b| b as i32).collect();
        let out = r::random_select(seed, rows, &cand, n, k);
        prop_assert_eq!(out.selected.len(), rows_n * k);
        for (ri, &row) in rows.iter().enumerate() {
            let eligible: Vec<usize> = (0..n).filter(|&i| cand[ri * n + i] != 0).collect();
            // Independent answer: eligible n sorted by (key desc, n asc), first min(k, #eligible).
            let mut by_key = eligible.clone();
            by_key.sort_by_key(|&i| (std::cmp::Reverse(r::random_key(seed, row, i as u32)), i));
            let mut expect: Vec<i32> = by_key.iter().take(k).map(|&i| i as i32).collect();
            expect.sort_unstable();
            let m = expect.len();
            prop_assert_eq!(m, k.min(eligible.len()));
            let got = &out.selected[ri * k..(ri + 1) * k];
            prop_assert_eq!(&got[..m], expect.as_slice());
            prop_assert!(got[m..].iter().all(|&x| x == -1));
            for i in 0..n {
                prop_assert_eq!(out.keys[ri * n + i], r::random_key(seed, row, i as u32));
            }
        }
    }

    #[test]
    fn topk_is_stable_descending_sort(
        (rows, n) in (1usize..4, 1usize..25), k in 0usize..30,
        levels in prop::collection::vec(0u8..6, 100),
    ) {
        // Few distinct levels (including -inf) so that ties are common.
        let level = |l: u8| if l == 0 { f32::NEG_INFINITY } else { l as f32 * 0.5 - 1.0 };
        let scores: Vec<f32> = levels[..rows * n].iter().map(|&l| level(l)).collect();
        let got = r::topk(&scores, n, k);
        let m = k.min(n);
        prop_assert_eq!(got.len(), rows * m);
        for rr in 0..rows {
            let row = &scores[rr * n..(rr + 1) * n];
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap()); // stable
            let expect: Vec<i32> = order[..m].iter().map(|&i| i as i32).collect();
            prop_assert_eq!(&got[rr * m..(rr + 1) * m], expect.as_slice());
        }
    }

    #[test]
    fn snapkv_capacity_at_least_t_keeps_everything(
        (hq, hkv, d, t, _q, k, _v) in attn_case(false), extra in 0usize..5, window in 1usize..4, per_head in any::<bool>(),
    ) {
        let w = window.min(t);
        let gqa = if per_head { r::GqaMode::PerHead } else { r::GqaMode::Mean };
        let cfg = r::SnapKvConfig {
            capacity: t + extra, window, kernel: 3, pooling: r::Pooling::Avg, gqa,
            selector: r::Selector::Score, scale: scale(d),
        };
        let q_obs = vec![0.5f32; hq * w * d];
        let out = r::snapkv_compress(&q_obs, &k, hq, hkv, d, &cfg);
        let hs = if per_head { hq } else { hkv };
        prop_assert_eq!(out.out_heads, hs);
        let all: Vec<i32> = (0..hs).flat_map(|_| 0..t as i32).collect();
        prop_assert_eq!(out.kept, all);
        prop_assert!(out.scores.is_empty() && out.keys.is_empty());
    }
}

#[test]
fn pcg_check_values() {
    assert_eq!(r::pcg_hash(0), 129_708_002);
    assert_eq!(r::pcg_hash(1), 2_831_084_092);
    assert_eq!(r::pcg_hash(0xFFFF_FFFF), 3_861_530_882);
    assert_eq!(r::random_key(42, 3, 17), 893_604_109);
}

#[test]
fn forced_topk_keeps_forced_over_budget() {
    // Budget 1 < |forced| = 2: the forced set alone comes back.
    let got = r::select_forced_topk(6, |_| true, |i| i == 1 || i == 4, 1, |a, b| a > b);
    assert_eq!(got, vec![1, 4]);
    // Equal scores: ties go to the lower index.
    let got = r::select_forced_topk(6, |i| i != 0, |i| i == 5, 3, |_, _| false);
    assert_eq!(got, vec![1, 2, 5]);
}
