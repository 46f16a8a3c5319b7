//! Head-level hit rate of the paper's analysis (SPEC §9).

/// Output of [`hit_rate`].
#[derive(Clone, Debug, PartialEq)]
pub struct HitRate {
    /// `[H]`: 1 iff head `h` selected the candidate holding `gold[s]` at every step `s`.
    pub head_hit: Vec<i32>,
    /// Mean of `head_hit`.
    pub rate: f32,
}

/// `sel[S, H, N]` (0/1), `gold[S]` token positions; candidate of `gold[s]` is `gold[s] / block_size`.
///
/// SPEC §9: `head_hit[h] = AND_s (sel[s, h, gold[s] / block_size] != 0)`, `rate = mean_h
/// head_hit[h]` (computed in f64). `S = gold.len()`; with `S = 0` every head hits vacuously; with
/// `H = 0` the rate is 0. Use `block_size = 1` for token-level selections (SnapKV). Panics when a
/// gold position is negative or its candidate is `>= N`.
pub fn hit_rate(sel: &[i32], gold: &[i32], heads: usize, n: usize, block_size: usize) -> HitRate {
    assert!(block_size > 0, "hit_rate: block_size must be positive");
    let steps = gold.len();
    assert_eq!(sel.len(), steps * heads * n, "hit_rate: sel must be [S, H, N]");
    let head_hit: Vec<i32> = (0..heads)
        .map(|h| {
            gold.iter().enumerate().all(|(s, &pos)| {
                assert!(pos >= 0, "hit_rate: negative gold position");
                let c = pos as usize / block_size;
                assert!(c < n, "hit_rate: gold candidate {c} out of range (N = {n})");
                sel[(s * heads + h) * n + c] != 0
            }) as i32
        })
        .collect();
    let rate = if heads == 0 { 0.0 } else { head_hit.iter().map(|&x| x as f64).sum::<f64>() / heads as f64 };
    HitRate { head_hit, rate: rate as f32 }
}
