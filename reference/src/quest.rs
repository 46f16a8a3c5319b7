//! Quest decode (SPEC §2).

use crate::attention::attend;
use crate::blocks::{block_minmax, group, quest_scores_f64, seq_len};
use crate::{num_blocks, random_key, select_forced_topk, GqaMode, SelectConfig, Selector};

/// Output of [`quest_decode`].
#[derive(Clone, Debug, PartialEq)]
pub struct QuestDecode {
    /// `[Hs, n_sel]` ascending block ids: `Hs = Hq` (`GqaMode::PerHead`) or `Hkv` (`Mean`).
    pub selected: Vec<i32>,
    /// `n_sel = min(NB, max(n_blocks, |forced|))`.
    pub n_sel: usize,
    /// `[Hq, D]`.
    pub out: Vec<f32>,
    /// `[Hq]`.
    pub lse: Vec<f32>,
    /// `[Hs, NB]` Quest scores (filled for both selectors); for `Mean`, the group's mean.
    pub scores: Vec<f32>,
    /// `[Hs, NB]` random keys (row = selection row); empty for `Selector::Score`.
    pub keys: Vec<u32>,
}

/// Whether block `b` of `nb` is forced at decode: `b = 0` when `force_first`, or one of the
/// `n_local` last blocks `NB - n_local .. NB - 1` (clipped at 0).
fn quest_forced(b: usize, nb: usize, cfg: &SelectConfig) -> bool {
    (cfg.force_first && b == 0) || b >= nb.saturating_sub(cfg.n_local)
}

/// Shared selection: per query head, forced blocks plus the best others under `better(h, a, b)`.
fn quest_select_by(
    q_heads: usize,
    nb: usize,
    cfg: &SelectConfig,
    better: impl Fn(usize, usize, usize) -> bool,
) -> (Vec<i32>, usize) {
    let n_forced = (0..nb).filter(|&b| quest_forced(b, nb, cfg)).count();
    let n_sel = nb.min(cfg.n_blocks.max(n_forced));
    let mut selected = Vec::with_capacity(q_heads * n_sel);
    for h in 0..q_heads {
        let chosen =
            select_forced_topk(nb, |_| true, |b| quest_forced(b, nb, cfg), cfg.n_blocks, |a, b| better(h, a, b));
        debug_assert_eq!(chosen.len(), n_sel);
        selected.extend(chosen.iter().map(|&b| b as i32));
    }
    (selected, n_sel)
}

fn quest_keys(seed: u32, q_heads: usize, nb: usize) -> Vec<u32> {
    (0..q_heads).flat_map(|h| (0..nb).map(move |b| random_key(seed, h as u32, b as u32))).collect()
}

/// Block selection of one decode step: `selected[Hq, n_sel]` and `n_sel`, from `scores[Hq, NB]`
/// (used when the selector is `Score`).
///
/// SPEC §2.3: `forced = {0 if force_first} ∪ {NB-n_local, ..., NB-1}` (clipped at 0); every other
/// block competes; the top `max(0, n_blocks - |forced|)` by score (descending, ties to the lower
/// block) join; `selected = forced ∪ chosen` ascending, `n_sel = min(NB, max(n_blocks, |forced|))`
/// for every head. `n_blocks >= NB` selects every block. With `Selector::Random { seed }` the
/// score of block `b` for head `h` is `random_key(seed, h, b)` (u32) and `scores` is ignored.
pub fn quest_select(scores: &[f32], q_heads: usize, nb: usize, cfg: &SelectConfig) -> (Vec<i32>, usize) {
    match cfg.selector {
        Selector::Score => {
            assert_eq!(scores.len(), q_heads * nb, "quest_select: scores must be [Hq, NB]");
            quest_select_by(q_heads, nb, cfg, |h, a, b| scores[h * nb + a] > scores[h * nb + b])
        }
        Selector::Random { seed } => {
            let keys = quest_keys(seed, q_heads, nb);
            quest_select_by(q_heads, nb, cfg, |h, a, b| keys[h * nb + a] > keys[h * nb + b])
        }
    }
}

/// Quest decode of the query of token `T-1`: `q[Hq, D]`, `k`, `v` `[Hkv, T, D]` (they include token `T-1`).
///
/// SPEC §2: `NB = ceil(T / bs)`; block min/max per kv head ([`crate::block_minmax`]); `scores[h, b]
/// = sum_d max(q*kmax, q*kmin)` from kv head `h / G` (f64, always returned); selection as in
/// [`quest_select`] per query head, on the f64 scores (or on `keys[h, b] = random_key(seed, h, b)`
/// for the random selector); then softmax attention (f64, `scale`) of `q[h]` over every token of
/// the selected blocks (all `<= T-1`, no mask). `T = 1`: one block, attention over token 0.
/// `stats = Some((kmin, kmax))` (`[Hkv, NB, D]`) uses those statistics instead of computing them
/// from `k` (a decoder's cache keeps them; they must equal [`crate::block_minmax`] of `k`).
///
/// `gqa` (**[OURS]**, not in Quest, which has no GQA): `PerHead` selects per query head as above
/// (what Quest's evaluation does after `repeat_kv`); `Mean` selects once per kv head from the
/// mean over its `G` query heads of their scores (`sum_g scores[kvh*G + g, b] / G`; random keys
/// with `row = kvh`), and every query head of the group attends over that one set, so a
/// group reads each selected block once (SnapKV's `gqa = mean`, kvpress, applied to Quest).
#[allow(clippy::too_many_arguments)]
pub fn quest_decode(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stats: Option<(&[f32], &[f32])>,
    q_heads: usize,
    kv_heads: usize,
    dim: usize,
    cfg: &SelectConfig,
    gqa: GqaMode,
    scale: f64,
) -> QuestDecode {
    let g = group(q_heads, kv_heads);
    assert_eq!(q.len(), q_heads * dim, "quest_decode: q must be [Hq, D]");
    assert_eq!(k.len(), v.len(), "quest_decode: k and v must have the same shape");
    let bs = cfg.block_size;
    let t_len = seq_len(k.len(), kv_heads, dim);
    let nb = num_blocks(t_len, bs);
    let computed;
    let (kmin, kmax) = match stats {
        Some(given) => given,
        None => {
            computed = block_minmax(k, kv_heads, dim, bs);
            (&computed.0[..], &computed.1[..])
        }
    };
    assert_eq!(kmin.len(), kv_heads * nb * dim, "quest_decode: stats must be [Hkv, NB, D]");
    let per_head = quest_scores_f64(q, kmin, kmax, q_heads, kv_heads, dim);
    // Selection rows: one per query head, or one per kv head over the group's mean score.
    let (rows, scores) = match gqa {
        GqaMode::PerHead => (q_heads, per_head),
        GqaMode::Mean => {
            let mean = (0..kv_heads * nb)
                .map(|e| {
                    let (kvh, b) = (e / nb, e % nb);
                    (0..g).map(|i| per_head[(kvh * g + i) * nb + b]).sum::<f64>() / g as f64
                })
                .collect();
            (kv_heads, mean)
        }
    };
    let keys = match cfg.selector {
        Selector::Score => Vec::new(),
        Selector::Random { seed } => quest_keys(seed, rows, nb),
    };
    let (selected, n_sel) = match cfg.selector {
        Selector::Score => quest_select_by(rows, nb, cfg, |r, a, b| scores[r * nb + a] > scores[r * nb + b]),
        Selector::Random { .. } => quest_select_by(rows, nb, cfg, |r, a, b| keys[r * nb + a] > keys[r * nb + b]),
    };
    let mut out = Vec::with_capacity(q_heads * dim);
    let mut lse = Vec::with_capacity(q_heads);
    for h in 0..q_heads {
        let kv = h / g;
        let row = if gqa == GqaMode::Mean { kv } else { h };
        let tokens: Vec<usize> = selected[row * n_sel..(row + 1) * n_sel]
            .iter()
            .flat_map(|&b| b as usize * bs..((b as usize + 1) * bs).min(t_len))
            .collect();
        let span = kv * t_len * dim..(kv + 1) * t_len * dim;
        let (o, l) = attend(&q[h * dim..(h + 1) * dim], &k[span.clone()], &v[span], &tokens, scale);
        out.extend(o.iter().map(|&x| x as f32));
        lse.push(l as f32);
    }
    QuestDecode { selected, n_sel, out, lse, scores: scores.iter().map(|&s| s as f32).collect(), keys }
}
