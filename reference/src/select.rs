//! Top-k and forced top-k selection (SPEC §5), and the selection config shared by Quest and MoBA.

/// How blocks (or tokens) compete for the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selector {
    /// By score (Quest upper bound, MoBA gate, SnapKV pooled attention).
    Score,
    /// By `random_key(seed, row, i)` compared as u32 (SPEC §8).
    Random { seed: u32 },
}

/// Block selection parameters of Quest decode and MoBA prefill (SPEC §2.3, §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectConfig {
    pub block_size: usize,
    /// Total budget in blocks, forced blocks included.
    pub n_blocks: usize,
    pub force_first: bool,
    pub n_local: usize,
    pub selector: Selector,
}

/// `indices[R, min(k, N)]` per row of `scores[R, N]` (`R = scores.len() / n`): descending score,
/// ties to the lower index, `-inf` sorts last. NaN must not occur (the caller rejects it).
///
/// SPEC §5.1. Equivalent to a stable sort of `0..N` by descending score, truncated to `min(k, N)`.
/// `n = 0` gives an empty result. Panics on NaN.
pub fn topk(scores: &[f32], n: usize, k: usize) -> Vec<i32> {
    if n == 0 {
        return Vec::new();
    }
    assert_eq!(scores.len() % n, 0, "topk: scores must be [R, N]");
    assert!(scores.iter().all(|s| !s.is_nan()), "topk: NaN score");
    let take = k.min(n);
    let mut out = Vec::with_capacity(scores.len() / n * take);
    for row in scores.chunks_exact(n) {
        let mut order: Vec<usize> = (0..n).collect();
        // Stable sort: equal scores keep ascending index order. -inf compares below every finite.
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).expect("NaN rejected above"));
        out.extend(order[..take].iter().map(|&i| i as i32));
    }
    out
}

/// SPEC §5.2: `forced ∪ top_{max(0, k_total - |forced|)}(candidates not forced)`, ascending.
/// `better(a, b)` says whether candidate `a` ranks strictly above candidate `b` by score alone;
/// ties between equal scores go to the lower index.
///
/// * `forced` = every `i < n` with `is_forced(i)` (whether or not it is a candidate);
/// * the competitors are the `i < n` with `is_candidate(i) && !is_forced(i)`; the best
///   `min(#competitors, k_total.saturating_sub(|forced|))` of them join;
/// * the result has `|forced| + that many` entries, sorted ascending. If the budget is smaller
///   than the forced set, the whole forced set is still returned.
pub fn select_forced_topk(
    n: usize,
    is_candidate: impl Fn(usize) -> bool,
    is_forced: impl Fn(usize) -> bool,
    k_total: usize,
    better: impl Fn(usize, usize) -> bool,
) -> Vec<usize> {
    let forced: Vec<usize> = (0..n).filter(|&i| is_forced(i)).collect();
    let mut pool: Vec<usize> = (0..n).filter(|&i| is_candidate(i) && !is_forced(i)).collect();
    let want = k_total.saturating_sub(forced.len()).min(pool.len());
    let mut result = forced;
    // Naive selection: repeatedly take the best remaining competitor. `pool` is ascending and a
    // later entry only replaces the current best when strictly better, so ties go to the lower index.
    for _ in 0..want {
        let mut best = 0;
        for p in 1..pool.len() {
            if better(pool[p], pool[best]) {
                best = p;
            }
        }
        result.push(pool.remove(best));
    }
    result.sort_unstable();
    result
}
