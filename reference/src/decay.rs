//! RAT+ exponentially decaying memory (SPEC §1): scan, step, RoPE and their fusions.

fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// f64 scan over `x[T, C]`, `g[T, C]` from `h0[C]` (values kept in f64 for fused users).
fn scan_f64(x: &[f32], g: &[f32], h0: &[f64]) -> Vec<f64> {
    let c = h0.len();
    assert_eq!(x.len(), g.len(), "decay_scan: x and g must have the same shape");
    if c == 0 {
        assert!(x.is_empty(), "decay_scan: C = 0 needs empty x");
        return Vec::new();
    }
    assert_eq!(x.len() % c, 0, "decay_scan: x must be [T, C]");
    let mut y = vec![0.0f64; x.len()];
    let mut h = h0.to_vec();
    for t in 0..x.len() / c {
        for (ch, state) in h.iter_mut().enumerate() {
            let i = t * c + ch;
            let gi = g[i] as f64;
            *state = gi * *state + (1.0 - gi) * x[i] as f64;
            y[i] = *state;
        }
    }
    y
}

/// `y[T, C]`: `y_t = g_t * y_{t-1} + (1 - g_t) * x_t`, `y_{-1} = h0`; `x`, `g` are `[T, C]`, `h0` is `[C]`.
///
/// SPEC §1.2 (RAT+ prefill uses `h0 = 0`; a non-zero `h0` resumes a chunked prefill). The state is
/// carried in f64 and every `y_t` is rounded to f32 on output. `g = 0` copies `x`, `g = 1` holds
/// `h0`. `T = 0` gives an empty output.
pub fn decay_scan(x: &[f32], g: &[f32], h0: &[f32]) -> Vec<f32> {
    let h0: Vec<f64> = h0.iter().map(|&v| v as f64).collect();
    to_f32(&scan_f64(x, g, &h0))
}

/// `h_new[C] = g * h + (1 - g) * x` (SPEC §1.3), computed in f64, rounded to f32.
pub fn decay_step(x: &[f32], g: &[f32], h: &[f32]) -> Vec<f32> {
    to_f32(&step_f64(x, g, h))
}

fn step_f64(x: &[f32], g: &[f32], h: &[f32]) -> Vec<f64> {
    assert!(x.len() == g.len() && x.len() == h.len(), "decay_step: x, g, h must all be [C]");
    x.iter()
        .zip(g)
        .zip(h)
        .map(|((&x, &g), &h)| {
            let g = g as f64;
            g * h as f64 + (1.0 - g) * x as f64
        })
        .collect()
}

/// Rotate-half RoPE in f64 of `x[H, T, D]` (any `H`) at `pos[T]`.
fn rope_f64(x: &[f64], pos: &[i32], dim: usize, base: f64) -> Vec<f64> {
    assert!(dim.is_multiple_of(2), "rope: head dim must be even");
    let t_len = pos.len();
    if x.is_empty() || dim == 0 {
        return x.to_vec();
    }
    assert!(t_len > 0, "rope: non-empty x needs at least one position");
    assert_eq!(x.len() % (t_len * dim), 0, "rope: x must be [H, T, D] with T = pos.len()");
    let half = dim / 2;
    let inv_freq: Vec<f64> = (0..half).map(|i| base.powf(-((2 * i) as f64) / dim as f64)).collect();
    let mut y = vec![0.0f64; x.len()];
    for (row, (xr, yr)) in x.chunks_exact(dim).zip(y.chunks_exact_mut(dim)).enumerate() {
        let p = pos[row % t_len] as f64;
        for i in 0..half {
            let (sin, cos) = (p * inv_freq[i]).sin_cos();
            yr[i] = xr[i] * cos - xr[i + half] * sin;
            yr[i + half] = xr[i + half] * cos + xr[i] * sin;
        }
    }
    y
}

/// Rotate-half RoPE of `x[H, T, D]` at positions `pos[T]`: for `i < D/2`,
/// `inv_freq_i = base^(-2i/D)`, `a = pos * inv_freq_i`, `y_i = x_i cos a - x_{i+D/2} sin a`,
/// `y_{i+D/2} = x_{i+D/2} cos a + x_i sin a`. Angles in f64.
///
/// SPEC §1.4. `D` must be even; `H` is implied by `x.len() / (T * D)` (the `heads` argument is
/// checked against it). Position 0 is the identity.
pub fn rope(x: &[f32], pos: &[i32], heads: usize, dim: usize, base: f64) -> Vec<f32> {
    assert_eq!(x.len(), heads * pos.len() * dim, "rope: x must be [H, T, D]");
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    to_f32(&rope_f64(&x64, pos, dim, base))
}

/// Output of [`ratplus_kv`], each `[H, T, D]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RatplusKv {
    pub k_tilde: Vec<f32>,
    pub v_tilde: Vec<f32>,
    /// `RoPE(k_tilde)` at positions `0..T`.
    pub k_rope: Vec<f32>,
}

/// RAT+ prefill: scans of `k` and `v` (`[H, T, D]`) with the shared gate `g`, zero initial state,
/// then RoPE of `k_tilde` at positions `0..T`.
///
/// Per head and channel: `k~_t = g_t k~_{t-1} + (1 - g_t) k_t`, `v~_t` likewise with the same `g`,
/// `k~_{-1} = v~_{-1} = 0` (SPEC §1.2); `k_rope = RoPE(k~)` (SPEC §1.4) is applied to the f64 scan
/// (not to the f32-rounded `k_tilde`). Values are never rotated. `T = 1` gives `k~ = (1-g) k`.
pub fn ratplus_kv(k: &[f32], v: &[f32], g: &[f32], heads: usize, dim: usize, base: f64) -> RatplusKv {
    assert!(k.len() == v.len() && k.len() == g.len(), "ratplus_kv: k, v, g must share [H, T, D]");
    let per_head = k.len().checked_div(heads).unwrap_or(0);
    assert_eq!(per_head * heads, k.len(), "ratplus_kv: k must be [H, T, D]");
    let t_len = per_head.checked_div(dim).unwrap_or(0);
    let zero = vec![0.0f64; dim];
    let pos: Vec<i32> = (0..t_len as i32).collect();
    let (mut k_tilde, mut v_tilde, mut k_rope) = (Vec::new(), Vec::new(), Vec::new());
    for h in 0..heads {
        let r = h * per_head..(h + 1) * per_head;
        let ks = scan_f64(&k[r.clone()], &g[r.clone()], &zero);
        let vs = scan_f64(&v[r.clone()], &g[r], &zero);
        k_rope.extend(to_f32(&rope_f64(&ks, &pos, dim, base)));
        k_tilde.extend(to_f32(&ks));
        v_tilde.extend(to_f32(&vs));
    }
    RatplusKv { k_tilde, v_tilde, k_rope }
}

/// Output of [`ratplus_step`], each `[H, D]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RatplusStep {
    pub hk_new: Vec<f32>,
    pub hv_new: Vec<f32>,
    /// `RoPE(hk_new)` at `pos`.
    pub k_rope: Vec<f32>,
}

/// RAT+ decode step on `[H, D]` tensors: pre-RoPE states `hk`, `hv` advance by one token.
///
/// `hk_new = g*hk + (1-g)*k`, `hv_new = g*hv + (1-g)*v` (SPEC §1.3, f64), `k_rope = RoPE(hk_new)`
/// at position `pos` (SPEC §1.4, from the f64 state). The carried states are the pre-RoPE ones.
#[allow(clippy::too_many_arguments)]
pub fn ratplus_step(
    k: &[f32],
    v: &[f32],
    g: &[f32],
    hk: &[f32],
    hv: &[f32],
    dim: usize,
    base: f64,
    pos: i32,
) -> RatplusStep {
    let hk_new = step_f64(k, g, hk);
    let hv_new = step_f64(v, g, hv);
    if dim > 0 {
        assert_eq!(k.len() % dim, 0, "ratplus_step: k must be [H, D]");
    }
    let k_rope = to_f32(&rope_f64(&hk_new, &[pos], dim, base));
    RatplusStep { hk_new: to_f32(&hk_new), hv_new: to_f32(&hv_new), k_rope }
}
