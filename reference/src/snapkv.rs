//! SnapKV compression after prefill (SPEC §4).

use crate::attention::attend_probs;
use crate::blocks::{group, seq_len};
use crate::{random_key, select_forced_topk, Selector};

/// 1-D pooling of the window attention along the key axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// `avg_pool1d` with the zero padding counted (always divide by `kernel`).
    Avg,
    /// `max_pool1d` (padding never wins).
    Max,
}

/// How a GQA group's query heads share the kept set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GqaMode {
    /// Pooled scores averaged over the group: one kept set per kv head (kvpress).
    Mean,
    /// One kept set per query head (original SnapKV after `repeat_kv`).
    PerHead,
}

/// SnapKV parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnapKvConfig {
    /// Tokens kept in total, window included.
    pub capacity: usize,
    pub window: usize,
    /// Odd pooling kernel size.
    pub kernel: usize,
    pub pooling: Pooling,
    pub gqa: GqaMode,
    pub selector: Selector,
    pub scale: f64,
}

/// Output of [`snapkv_compress`].
#[derive(Clone, Debug, PartialEq)]
pub struct SnapKvCompress {
    /// `Hs`: kv heads for `GqaMode::Mean`, query heads for `GqaMode::PerHead`.
    pub out_heads: usize,
    /// `[Hs, min(T, capacity)]` ascending token ids.
    pub kept: Vec<i32>,
    /// `[Hs, T - w]` pooled, group-combined window attention (empty when `T <= capacity`).
    pub scores: Vec<f32>,
    /// `[Hs, T - w]` random keys (row = output head); empty unless the selector is random and `T > capacity`.
    pub keys: Vec<u32>,
}

/// Number of output heads: `Hkv` for [`GqaMode::Mean`], `Hq` for [`GqaMode::PerHead`].
fn out_heads(q_heads: usize, kv_heads: usize, gqa: GqaMode) -> usize {
    match gqa {
        GqaMode::Mean => kv_heads,
        GqaMode::PerHead => q_heads,
    }
}

/// 1-D pooling of `a` with stride 1 and padding `kernel / 2` on both sides (same length out).
fn pool(a: &[f64], kernel: usize, pooling: Pooling) -> Vec<f64> {
    let pad = kernel / 2;
    (0..a.len())
        .map(|j| {
            let window = &a[j.saturating_sub(pad)..(j + pad + 1).min(a.len())];
            match pooling {
                // count_include_pad: the zero padding counts, so always divide by `kernel`.
                Pooling::Avg => window.iter().sum::<f64>() / kernel as f64,
                // Padding never wins: the max over the valid entries only.
                Pooling::Max => window.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect()
}

/// f64 SnapKV scores `[Hs, T - w]`.
fn snapkv_scores_f64(
    q_obs: &[f32],
    k: &[f32],
    q_heads: usize,
    kv_heads: usize,
    dim: usize,
    cfg: &SnapKvConfig,
) -> Vec<f64> {
    let g = group(q_heads, kv_heads);
    let t_len = seq_len(k.len(), kv_heads, dim);
    let w = cfg.window;
    assert!(t_len > w, "snapkv: scoring needs T > window (T = {t_len}, window = {w})");
    assert!(cfg.kernel % 2 == 1, "snapkv: the pooling kernel must be odd");
    assert_eq!(q_obs.len(), q_heads * w * dim, "snapkv: q_obs must be [Hq, window, D]");
    let prefix = t_len - w;
    let pooled: Vec<Vec<f64>> = (0..q_heads)
        .map(|h| {
            let kv = h / g;
            let k_head = &k[kv * t_len * dim..(kv + 1) * t_len * dim];
            let mut acc = vec![0.0f64; prefix];
            for i in 0..w {
                // Window query i sits at position T-w+i and sees keys 0..=T-w+i; the softmax runs
                // over that whole row, then only the prefix columns are summed.
                let q_row = &q_obs[(h * w + i) * dim..(h * w + i + 1) * dim];
                let probs = attend_probs(q_row, k_head, prefix + i + 1, cfg.scale);
                for (a, p) in acc.iter_mut().zip(&probs[..prefix]) {
                    *a += p;
                }
            }
            pool(&acc, cfg.kernel, cfg.pooling)
        })
        .collect();
    match cfg.gqa {
        GqaMode::PerHead => pooled.concat(),
        // Pool per query head first, then average the G pooled rows of each kv head.
        GqaMode::Mean => (0..kv_heads)
            .flat_map(|kv| {
                let rows = &pooled[kv * g..(kv + 1) * g];
                (0..prefix).map(move |j| rows.iter().map(|r| r[j]).sum::<f64>() / g as f64)
            })
            .collect(),
    }
}

/// `scores[Hs, T - w]`: pooled and group-combined sums of the window queries' attention over the
/// prefix keys. `q_obs[Hq, w, D]` holds the queries of positions `T-w..T-1`; `k[Hkv, T, D]`.
///
/// SPEC §4.3-4.5, all in f64: `P[h, i, j] = softmax_j(scale * q_obs[h, i] . k[h / G, j])` over
/// `j <= T-w+i` (the full causal row, window keys included in the normalizer);
/// `A[h, j] = sum_i P[h, i, j]` for prefix keys `j < T-w`; pooled along `j` with stride 1 and
/// padding `kernel / 2` (`Avg` divides by `kernel` always, counting the zero padding; `Max`
/// ignores the padding); for [`GqaMode::Mean`] the pooled rows of the `G` query heads of each kv
/// head are averaged (`Hs = Hkv`), for [`GqaMode::PerHead`] `Hs = Hq`. Requires `T > w` and an odd
/// `kernel`.
pub fn snapkv_scores(
    q_obs: &[f32],
    k: &[f32],
    q_heads: usize,
    kv_heads: usize,
    dim: usize,
    cfg: &SnapKvConfig,
) -> Vec<f32> {
    snapkv_scores_f64(q_obs, k, q_heads, kv_heads, dim, cfg).iter().map(|&x| x as f32).collect()
}

/// SnapKV compression: keep the top `capacity - w` prefix tokens plus the whole window.
/// Requires `T > w` when `T > capacity`; `T <= capacity` keeps everything.
///
/// SPEC §4.6: if `T <= capacity`, `kept[s] = 0..T` for every output head and `scores`, `keys` are
/// empty. Otherwise `scores` = [`snapkv_scores`] (always returned), and per output head `s` the
/// top `capacity - w` prefix tokens `j < T-w` by score (descending, ties to the lower `j`) - or,
/// for `Selector::Random { seed }`, by `keys[s, j] = random_key(seed, s, j)` compared as u32 -
/// are kept together with the whole window `T-w..T-1`; `kept[Hs, capacity]` ascending.
/// Requires `capacity >= w` when compressing.
pub fn snapkv_compress(
    q_obs: &[f32],
    k: &[f32],
    q_heads: usize,
    kv_heads: usize,
    dim: usize,
    cfg: &SnapKvConfig,
) -> SnapKvCompress {
    group(q_heads, kv_heads);
    let hs = out_heads(q_heads, kv_heads, cfg.gqa);
    let t_len = seq_len(k.len(), kv_heads, dim);
    if t_len <= cfg.capacity {
        let kept = (0..hs).flat_map(|_| 0..t_len as i32).collect();
        return SnapKvCompress { out_heads: hs, kept, scores: Vec::new(), keys: Vec::new() };
    }
    let w = cfg.window;
    assert!(cfg.capacity >= w, "snapkv: capacity must cover the window");
    let scores = snapkv_scores_f64(q_obs, k, q_heads, kv_heads, dim, cfg);
    let prefix = t_len - w;
    let keys: Vec<u32> = match cfg.selector {
        Selector::Score => Vec::new(),
        Selector::Random { seed } => {
            (0..hs).flat_map(|s| (0..prefix).map(move |j| random_key(seed, s as u32, j as u32))).collect()
        }
    };
    let mut kept = Vec::with_capacity(hs * cfg.capacity);
    for s in 0..hs {
        let row = s * prefix;
        let chosen = match cfg.selector {
            Selector::Score => {
                let sc = &scores[row..row + prefix];
                select_forced_topk(prefix, |_| true, |_| false, cfg.capacity - w, |a, b| sc[a] > sc[b])
            }
            Selector::Random { .. } => {
                let ks = &keys[row..row + prefix];
                select_forced_topk(prefix, |_| true, |_| false, cfg.capacity - w, |a, b| ks[a] > ks[b])
            }
        };
        kept.extend(chosen.iter().map(|&j| j as i32));
        kept.extend(prefix as i32..t_len as i32);
    }
    SnapKvCompress { out_heads: hs, kept, scores: scores.iter().map(|&x| x as f32).collect(), keys }
}
