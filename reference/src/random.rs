//! The counter-based PCG hash and the seeded random selector (SPEC §8).

/// PCG hash of one 32-bit word (SPEC §8.1), all arithmetic wrapping mod 2^32:
///
/// ```text
/// state = v * 747796405 + 2891336453
/// word  = ((state >> ((state >> 28) + 4)) ^ state) * 277803737
/// pcg   = (word >> 22) ^ word
/// ```
///
/// Check values: `pcg(0) = 129708002`, `pcg(1) = 2831084092`, `pcg(0xFFFFFFFF) = 3861530882`.
pub fn pcg_hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// `key(seed, row, i) = pcg(seed ^ pcg(row ^ pcg(i)))` (SPEC §8.1); `key(42, 3, 17) = 893604109`.
///
/// The random selector ranks candidate `i` of row `row` by this key, compared as `u32`.
pub fn random_key(seed: u32, row: u32, i: u32) -> u32 {
    pcg_hash(seed ^ pcg_hash(row ^ pcg_hash(i)))
}

/// Output of [`random_select`].
#[derive(Clone, Debug, PartialEq)]
pub struct RandomSelect {
    /// `[R, N]`: `key(seed, rows[r], n)`.
    pub keys: Vec<u32>,
    /// `[R, k]`: the `k` eligible `n` with the largest key (u32 compare, ties to lower `n`),
    /// ascending, padded with `-1`.
    pub selected: Vec<i32>,
}

/// Random selection (SPEC §8.2): `cand` is `[R, N]` with nonzero = eligible; `rows.len() == R`.
///
/// * `keys[r, n] = random_key(seed, rows[r], n)` for every `n < N`, eligible or not;
/// * `selected[r, ..]` = the `min(k, #eligible)` eligible `n` with the largest key (u32 compare,
///   ties to the lower `n`), ascending, then `-1` up to width `k`.
///
/// Edge cases: `k = 0` gives an empty `selected`; no eligible candidate gives a row of `-1`.
pub fn random_select(seed: u32, rows: &[u32], cand: &[i32], n: usize, k: usize) -> RandomSelect {
    let r_count = rows.len();
    assert_eq!(cand.len(), r_count * n, "random_select: cand must be [R, N]");
    let mut keys = Vec::with_capacity(r_count * n);
    let mut selected = Vec::with_capacity(r_count * k);
    for (r, &row) in rows.iter().enumerate() {
        let row_keys: Vec<u32> = (0..n).map(|i| random_key(seed, row, i as u32)).collect();
        let eligible = &cand[r * n..(r + 1) * n];
        let chosen =
            crate::select::select_forced_topk(n, |i| eligible[i] != 0, |_| false, k, |a, b| row_keys[a] > row_keys[b]);
        selected.extend(chosen.iter().map(|&i| i as i32));
        selected.extend(std::iter::repeat_n(-1, k - chosen.len()));
        keys.extend(row_keys);
    }
    RandomSelect { keys, selected }
}
