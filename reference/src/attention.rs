//! Dense and index-set attention (SPEC §7).

use crate::blocks::{group, seq_len};

/// Attention output: `out[Hq, Tq, D]` and `lse[Hq, Tq]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub out: Vec<f32>,
    pub lse: Vec<f32>,
}

/// `scale * q . k_j` in f64 for each listed key token of one kv head (`k_head` is `[T, D]`).
fn logits(q_row: &[f32], k_head: &[f32], tokens: impl Iterator<Item = usize>, scale: f64) -> Vec<f64> {
    let dim = q_row.len();
    tokens
        .map(|j| {
            let kr = &k_head[j * dim..(j + 1) * dim];
            scale * q_row.iter().zip(kr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
        })
        .collect()
}

/// Softmax attention in f64 of one query row over the listed key tokens of one kv head
/// (`k_head`, `v_head` are `[T, D]`). Returns `(out[D], lse)`; an empty list gives `(0, -inf)`.
///
/// `s_j = scale * q . k_j`, `m = max s`, `lse = m + ln sum exp(s_j - m)`,
/// `out = sum exp(s_j - m) v_j / sum exp(s_j - m)`. Keys not listed contribute exactly 0.
pub(crate) fn attend(q_row: &[f32], k_head: &[f32], v_head: &[f32], tokens: &[usize], scale: f64) -> (Vec<f64>, f64) {
    let dim = q_row.len();
    let mut out = vec![0.0f64; dim];
    if tokens.is_empty() {
        return (out, f64::NEG_INFINITY);
    }
    let s = logits(q_row, k_head, tokens.iter().copied(), scale);
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut denom = 0.0f64;
    for (&j, &sj) in tokens.iter().zip(&s) {
        let p = (sj - m).exp();
        denom += p;
        for (o, &vv) in out.iter_mut().zip(&v_head[j * dim..(j + 1) * dim]) {
            *o += p * vv as f64;
        }
    }
    for o in &mut out {
        *o /= denom;
    }
    (out, m + denom.ln())
}

/// Softmax probabilities in f64 of one query row over the keys `0..n_keys` of one kv head
/// (max-subtracted; `n_keys >= 1`).
pub(crate) fn attend_probs(q_row: &[f32], k_head: &[f32], n_keys: usize, scale: f64) -> Vec<f64> {
    let s = logits(q_row, k_head, 0..n_keys, scale);
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
    let denom: f64 = e.iter().sum();
    e.iter().map(|&x| x / denom).collect()
}

/// Dense attention of `q[Hq, Tq, D]` over `k`, `v` of shape `[Hkv, Tk, D]`; causal is
/// bottom-right aligned (query `i` sits at position `Tk - Tq + i` and sees keys `j <= Tk - Tq + i`).
///
/// SPEC §7.1: `out[h, i] = sum_j softmax_j(scale * q_i . k_j) v_j`, `lse[h, i] = ln sum_j
/// exp(scale * q_i . k_j)` over the visible keys, all in f64 with the row max subtracted. Query
/// head `h` reads kv head `h / (Hq / Hkv)`. A query that sees no key (causal with `Tq > Tk`, or
/// `Tk = 0`) gets `out = 0`, `lse = -inf`.
#[allow(clippy::too_many_arguments)]
pub fn attention_dense(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_heads: usize,
    kv_heads: usize,
    dim: usize,
    causal: bool,
    scale: f64,
) -> Attention {
    let g = group(q_heads, kv_heads);
    assert_eq!(k.len(), v.len(), "attention_dense: k and v must have the same shape");
    let tq = seq_len(q.len(), q_heads, dim);
    let tk = seq_len(k.len(), kv_heads, dim);
    let mut out = Vec::with_capacity(q.len());
    let mut lse = Vec::with_capacity(q_heads * tq);
    for h in 0..q_heads {
        let kv = h / g;
        let (k_head, v_head) = (&k[kv * tk * dim..(kv + 1) * tk * dim], &v[kv * tk * dim..(kv + 1) * tk * dim]);
        for i in 0..tq {
            // Keys visible to query i: all, or j <= Tk - Tq + i (none when that is negative).
            let visible = if causal { (tk + i + 1).saturating_sub(tq).min(tk) } else { tk };
            let tokens: Vec<usize> = (0..visible).collect();
            let q_row = &q[(h * tq + i) * dim..(h * tq + i + 1) * dim];
            let (o, l) = attend(q_row, k_head, v_head, &tokens, scale);
            out.extend(o.iter().map(|&x| x as f32));
            lse.push(l as f32);
        }
    }
    Attention { out, lse }
}

/// Attention of one query per head `q[Hq, D]` over the keys listed in `idx[idx_heads, n]`, with
/// `idx_heads == Hq` (one index row per query head) or `idx_heads == Hkv` (one row per kv head,
/// shared by its `G` query heads). `-1` entries are padding; valid entries must be `< T` and unique.
/// An empty set gives `out = 0`, `lse = -inf`.
#[allow(clippy::too_many_arguments)]
pub fn attention_sparse(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    idx: &[i32],
    idx_heads: usize,
    q_heads: usize,
    kv_heads: usize,
    dim: usize,
    scale: f64,
) -> Attention {
    let g = group(q_heads, kv_heads);
    assert_eq!(q.len(), q_heads * dim, "attention_sparse: q must be [Hq, D]");
    assert_eq!(k.len(), v.len(), "attention_sparse: k and v must have the same shape");
    assert!(idx_heads == q_heads || idx_heads == kv_heads, "attention_sparse: idx rows must be Hq or Hkv");
    let n = idx.len().checked_div(idx_heads).unwrap_or(0);
    assert_eq!(n * idx_heads, idx.len(), "attention_sparse: idx must be [Hi, n]");
    let t_len = seq_len(k.len(), kv_heads, dim);
    let mut out = Vec::with_capacity(q.len());
    let mut lse = Vec::with_capacity(q_heads);
    for h in 0..q_heads {
        let kv = h / g;
        let row = if idx_heads == q_heads { h } else { kv };
        let tokens: Vec<usize> = idx[row * n..(row + 1) * n]
            .iter()
            .filter(|&&j| j >= 0)
            .map(|&j| {
                assert!((j as usize) < t_len, "attention_sparse: index {j} out of range (T = {t_len})");
                j as usize
            })
            .collect();
        let span = kv * t_len * dim..(kv + 1) * t_len * dim;
        let (o, l) = attend(&q[h * dim..(h + 1) * dim], &k[span.clone()], &v[span], &tokens, scale);
        out.extend(o.iter().map(|&x| x as f32));
        lse.push(l as f32);
    }
    Attention { out, lse }
}
