//! Block statistics and block scores (SPEC §2.1, §2.2, §3.1, §3.2).

use crate::num_blocks;

/// `T` of a `[H, T, D]` tensor.
pub(crate) fn seq_len(len: usize, heads: usize, dim: usize) -> usize {
    if heads == 0 || dim == 0 {
        return 0;
    }
    assert_eq!(len % (heads * dim), 0, "tensor length is not a multiple of heads * dim");
    len / (heads * dim)
}

/// Query heads per kv head, `G = Hq / Hkv` (must divide).
pub(crate) fn group(q_heads: usize, kv_heads: usize) -> usize {
    assert!(kv_heads > 0 && q_heads.is_multiple_of(kv_heads), "GQA: Hq must be a multiple of Hkv");
    q_heads / kv_heads
}

/// `(kmin, kmax)`, each `[H, NB, D]`, over the valid tokens of each block of `k[H, T, D]`.
///
/// `kmin[h, b, d] = min_{t in b} k[h, t, d]`, `kmax` likewise (SPEC §2.1); `NB = ceil(T / bs)`,
/// block `b` = tokens `[b*bs, min((b+1)*bs, T))`, so a partial last block uses only its valid
/// tokens. Exact in f32. `T = 0` gives empty outputs.
pub fn block_minmax(k: &[f32], heads: usize, dim: usize, block_size: usize) -> (Vec<f32>, Vec<f32>) {
    assert!(block_size > 0, "block_size must be positive");
    let t_len = seq_len(k.len(), heads, dim);
    let nb = num_blocks(t_len, block_size);
    let mut kmin = vec![f32::INFINITY; heads * nb * dim];
    let mut kmax = vec![f32::NEG_INFINITY; heads * nb * dim];
    for h in 0..heads {
        for t in 0..t_len {
            let b = t / block_size;
            for d in 0..dim {
                let x = k[(h * t_len + t) * dim + d];
                let o = (h * nb + b) * dim + d;
                kmin[o] = kmin[o].min(x);
                kmax[o] = kmax[o].max(x);
            }
        }
    }
    (kmin, kmax)
}

/// f64 block means `[H, NB, D]`.
pub(crate) fn block_mean_f64(k: &[f32], heads: usize, dim: usize, block_size: usize) -> Vec<f64> {
    assert!(block_size > 0, "block_size must be positive");
    let t_len = seq_len(k.len(), heads, dim);
    let nb = num_blocks(t_len, block_size);
    let mut mean = vec![0.0f64; heads * nb * dim];
    for h in 0..heads {
        for b in 0..nb {
            let (start, end) = (b * block_size, ((b + 1) * block_size).min(t_len));
            for d in 0..dim {
                let sum: f64 = (start..end).map(|t| k[(h * t_len + t) * dim + d] as f64).sum();
                mean[(h * nb + b) * dim + d] = sum / (end - start) as f64;
            }
        }
    }
    mean
}

/// `kmean[H, NB, D]`: the mean over the valid tokens of each block of `k[H, T, D]`.
///
/// `kmean[h, b, d] = (1 / |b|) sum_{t in b} k[h, t, d]` (SPEC §3.1), summed in f64; the partial
/// last block is divided by its valid count. `T = 0` gives an empty output.
pub fn block_mean(k: &[f32], heads: usize, dim: usize, block_size: usize) -> Vec<f32> {
    block_mean_f64(k, heads, dim, block_size).iter().map(|&v| v as f32).collect()
}

/// f64 Quest scores `[Hq, NB]`.
pub(crate) fn quest_scores_f64(
    q: &[f32],
    kmin: &[f32],
    kmax: &[f32],
    q_heads: usize,
    kv_heads: usize,
    dim: usize,
) -> Vec<f64> {
    let g = group(q_heads, kv_heads);
    assert_eq!(q.len(), q_heads * dim, "quest_scores: q must be [Hq, D]");
    assert_eq!(kmin.len(), kmax.len(), "quest_scores: kmin and kmax must have the same shape");
    let nb = seq_len(kmin.len(), kv_heads, dim);
    let mut scores = vec![0.0f64; q_heads * nb];
    for h in 0..q_heads {
        let kv = h / g;
        for b in 0..nb {
            let mut s = 0.0f64;
            for d in 0..dim {
                let qd = q[h * dim + d] as f64;
                let o = (kv * nb + b) * dim + d;
                s += (qd * kmax[o] as f64).max(qd * kmin[o] as f64);
            }
            scores[h * nb + b] = s;
        }
    }
    scores
}

/// Quest upper bound `scores[Hq, NB] = sum_d max(q*kmax, q*kmin)` for `q[Hq, D]` and
/// `kmin`, `kmax` of shape `[Hkv, NB, D]`.
///
/// SPEC §2.2: an upper bound of `q . k_t` over the block's tokens, unscaled, summed in f64.
/// Query head `h` reads kv head `h / (Hq / Hkv)`. `NB = kmin.len() / (Hkv * D)`.
pub fn quest_scores(q: &[f32], kmin: &[f32], kmax: &[f32], q_heads: usize, kv_heads: usize, dim: usize) -> Vec<f32> {
    quest_scores_f64(q, kmin, kmax, q_heads, kv_heads, dim).iter().map(|&v| v as f32).collect()
}

/// f64 MoBA gate `[Hq, T, NB]` from f64 means `[Hkv, NB, D]`.
pub(crate) fn moba_gate_f64(
    q: &[f32],
    kmean: &[f64],
    q_heads: usize,
    kv_heads: usize,
    dim: usize,
    nb: usize,
) -> Vec<f64> {
    let g = group(q_heads, kv_heads);
    assert_eq!(kmean.len(), kv_heads * nb * dim, "moba_gate: kmean must be [Hkv, NB, D]");
    let t_len = seq_len(q.len(), q_heads, dim);
    let mut gate = vec![0.0f64; q_heads * t_len * nb];
    for h in 0..q_heads {
        let kv = h / g;
        for t in 0..t_len {
            let qr = &q[(h * t_len + t) * dim..(h * t_len + t + 1) * dim];
            for b in 0..nb {
                let kr = &kmean[(kv * nb + b) * dim..(kv * nb + b + 1) * dim];
                gate[(h * t_len + t) * nb + b] = qr.iter().zip(kr).map(|(&a, &b)| a as f64 * b).sum();
            }
        }
    }
    gate
}

/// MoBA gate `gate[Hq, T, NB] = q_t . kmean_b` (unscaled) for `q[Hq, T, D]`, `kmean[Hkv, NB, D]`.
///
/// SPEC §3.2: the dot product in f64 of the query token with every block's mean key (future
/// blocks included; masking is the router's job), no softmax scale. Query head `h` reads kv head
/// `h / (Hq / Hkv)`.
pub fn moba_gate(q: &[f32], kmean: &[f32], q_heads: usize, kv_heads: usize, dim: usize, nb: usize) -> Vec<f32> {
    let kmean: Vec<f64> = kmean.iter().map(|&v| v as f64).collect();
    moba_gate_f64(q, &kmean, q_heads, kv_heads, dim, nb).iter().map(|&v| v as f32).collect()
}
