//! MoBA block-sparse causal prefill (SPEC §3).

use crate::attention::attend;
use crate::blocks::{block_mean_f64, group, moba_gate_f64, seq_len};
use crate::{num_blocks, random_key, select_forced_topk, SelectConfig, Selector};

/// Output of [`moba_prefill`].
#[derive(Clone, Debug, PartialEq)]
pub struct MobaPrefill {
    /// `[Hq, T, D]`.
    pub out: Vec<f32>,
    /// `[Hq, T]` log-sum-exp of the scaled logits attended.
    pub lse: Vec<f32>,
    /// `[Hq, T, W]` ascending block ids per query token, `-1` padded.
    pub selected: Vec<i32>,
    /// `W = min(NB, max(n_blocks, n_local + force_first))`.
    pub width: usize,
    /// `[Hq, T, NB]` unscaled gate `q_t . mean-key` for every block.
    pub gate: Vec<f32>,
    /// `[Hq, T, NB]` random keys (row = h*T + t); empty for `Selector::Score`.
    pub keys: Vec<u32>,
}

/// Routing width `W = min(NB, max(n_blocks, n_local + force_first))`.
fn moba_width(nb: usize, cfg: &SelectConfig) -> usize {
    nb.min(cfg.n_blocks.max(cfg.n_local + cfg.force_first as usize))
}

/// Shared routing: for token `t` (current block `c = t / bs`), forced blocks
/// `{0 if force_first} ∪ {c-n_local+1 .. c}` plus the best past blocks under `better(h, t, a, b)`.
fn moba_select_by(
    q_heads: usize,
    seq: usize,
    nb: usize,
    cfg: &SelectConfig,
    better: impl Fn(usize, usize, usize, usize) -> bool,
) -> (Vec<i32>, usize) {
    assert!(cfg.block_size > 0, "block_size must be positive");
    assert_eq!(nb, num_blocks(seq, cfg.block_size), "moba_select: nb must be ceil(T / bs)");
    let width = moba_width(nb, cfg);
    let mut selected = Vec::with_capacity(q_heads * seq * width);
    for h in 0..q_heads {
        for t in 0..seq {
            let c = t / cfg.block_size;
            let forced = |b: usize| (cfg.force_first && b == 0) || (b <= c && b + cfg.n_local > c);
            let chosen = select_forced_topk(nb, |b| b < c, forced, cfg.n_blocks, |a, b| better(h, t, a, b));
            debug_assert!(chosen.len() <= width);
            selected.extend(chosen.iter().map(|&b| b as i32));
            selected.extend(std::iter::repeat_n(-1, width - chosen.len()));
        }
    }
    (selected, width)
}

fn moba_keys(seed: u32, q_heads: usize, seq: usize, nb: usize) -> Vec<u32> {
    (0..q_heads * seq).flat_map(|row| (0..nb).map(move |b| random_key(seed, row as u32, b as u32))).collect()
}

/// Per-token block routing `(selected[Hq, T, W], W)` from `gate[Hq, T, NB]` (score selector) or the
/// random keys (random selector; `gate` unused then).
///
/// SPEC §3.3, for query token `t` of head `h` in block `c = t / bs`:
/// `forced = {0 if force_first} ∪ {c-n_local+1, ..., c}` (clipped at 0); candidates = past blocks
/// `0..c-1` not forced (the current and future blocks never compete); the top
/// `max(0, n_blocks - |forced|)` candidates by gate (descending, ties to the lower block) join.
/// The row is `forced ∪ chosen` ascending, padded with `-1` to `W = min(NB, max(n_blocks,
/// n_local + force_first))`. With `Selector::Random { seed }` the gate is replaced by
/// `random_key(seed, h*T + t, b)` compared as u32. `force_first = false, n_local = 1` is official MoBA.
pub fn moba_select(gate: &[f32], q_heads: usize, seq: usize, nb: usize, cfg: &SelectConfig) -> (Vec<i32>, usize) {
    match cfg.selector {
        Selector::Score => {
            assert_eq!(gate.len(), q_heads * seq * nb, "moba_select: gate must be [Hq, T, NB]");
            let at = |h: usize, t: usize, b: usize| gate[(h * seq + t) * nb + b];
            moba_select_by(q_heads, seq, nb, cfg, |h, t, a, b| at(h, t, a) > at(h, t, b))
        }
        Selector::Random { seed } => {
            let keys = moba_keys(seed, q_heads, seq, nb);
            let at = |h: usize, t: usize, b: usize| keys[(h * seq + t) * nb + b];
            moba_select_by(q_heads, seq, nb, cfg, |h, t, a, b| at(h, t, a) > at(h, t, b))
        }
    }
}

/// MoBA prefill: `q[Hq, T, D]`, `k`, `v` `[Hkv, T, D]`.
///
/// SPEC §3: block means of `k` per kv head (f64, partial last block over its valid tokens);
/// `gate[h, t, b] = q_t . kmean_b` (unscaled, every block, f64; always returned); routing as in
/// [`moba_select`] (on the f64 gate, or on `keys[h, t, b] = random_key(seed, h*T + t, b)`); then
/// for every query token softmax attention (f64, `scale`) over the tokens `j <= t` of its selected
/// blocks, with `lse[h, t]` the log-sum-exp of the scaled logits attended. `n_blocks >= NB` is
/// dense causal attention; `T = 1` gives `out = v_0`. If the selection leaves no key
/// (only possible with `n_local = 0`) the row is `out = 0`, `lse = -inf`.
#[allow(clippy::too_many_arguments)]
pub fn moba_prefill(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_heads: usize,
    kv_heads: usize,
    dim: usize,
    cfg: &SelectConfig,
    scale: f64,
) -> MobaPrefill {
    let g = group(q_heads, kv_heads);
    assert_eq!(k.len(), v.len(), "moba_prefill: k and v must have the same shape");
    let bs = cfg.block_size;
    let t_len = seq_len(k.len(), kv_heads, dim);
    assert_eq!(q.len(), q_heads * t_len * dim, "moba_prefill: q must be [Hq, T, D] with the T of k");
    let nb = num_blocks(t_len, bs);
    let kmean = block_mean_f64(k, kv_heads, dim, bs);
    let gate = moba_gate_f64(q, &kmean, q_heads, kv_heads, dim, nb);
    let keys = match cfg.selector {
        Selector::Score => Vec::new(),
        Selector::Random { seed } => moba_keys(seed, q_heads, t_len, nb),
    };
    let at = |h: usize, t: usize, b: usize| (h * t_len + t) * nb + b;
    let (selected, width) = match cfg.selector {
        Selector::Score => moba_select_by(q_heads, t_len, nb, cfg, |h, t, a, b| gate[at(h, t, a)] > gate[at(h, t, b)]),
        Selector::Random { .. } => {
            moba_select_by(q_heads, t_len, nb, cfg, |h, t, a, b| keys[at(h, t, a)] > keys[at(h, t, b)])
        }
    };
    let mut out = Vec::with_capacity(q.len());
    let mut lse = Vec::with_capacity(q_heads * t_len);
    for h in 0..q_heads {
        let kv = h / g;
        let span = kv * t_len * dim..(kv + 1) * t_len * dim;
        let (k_head, v_head) = (&k[span.clone()], &v[span]);
        for t in 0..t_len {
            let row = (h * t_len + t) * width;
            let tokens: Vec<usize> = selected[row..row + width]
                .iter()
                .filter(|&&b| b >= 0)
                .flat_map(|&b| b as usize * bs..((b as usize + 1) * bs).min(t + 1))
                .collect();
            let q_row = &q[(h * t_len + t) * dim..(h * t_len + t + 1) * dim];
            let (o, l) = attend(q_row, k_head, v_head, &tokens, scale);
            out.extend(o.iter().map(|&x| x as f32));
            lse.push(l as f32);
        }
    }
    MobaPrefill { out, lse, selected, width, gate: gate.iter().map(|&x| x as f32).collect(), keys }
}
