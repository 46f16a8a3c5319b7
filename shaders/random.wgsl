// random.wgsl: the counter-based PCG hash and the seeded random selector (SPEC §8).
// Prepended: RandomParams, spec prelude, common.wgsl, rowselect.wgsl.
//
// pcg_hash:      one invocation per element.       Bindings: 1 v u32[n], 2 hash u32[n].
// random_key:    one invocation per (row, n).      Bindings: 1 rows u32[R], 2 idx u32[N], 3 keys u32[R*N].
// random_select: one workgroup per row; writes the row's keys, then keeps the k eligible
//                candidates with the largest key (u32 compare, ties to the lower n), ascending,
//                padded with -1.                   Bindings: 1 rows u32[R], 2 cand i32[R*N],
//                                                  3 keys u32[R*N], 4 selected i32[R*k].

override WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> p: RandomParams;

@group(0) @binding(1) var<storage, read> ph_v: array<u32>;
@group(0) @binding(2) var<storage, read_write> ph_hash: array<u32>;

@group(0) @binding(1) var<storage, read> rk_rows: array<u32>;
@group(0) @binding(2) var<storage, read> rk_idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> rk_keys: array<u32>;

@group(0) @binding(1) var<storage, read> rsel_rows: array<u32>;
@group(0) @binding(2) var<storage, read> rsel_cand: array<i32>;
@group(0) @binding(3) var<storage, read_write> rsel_keys: array<u32>;
@group(0) @binding(4) var<storage, read_write> rsel_selected: array<i32>;

@compute @workgroup_size(WG_SIZE)
fn pcg_hash(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_group(wid, nwg) * WG_SIZE + lid;
    if (i >= p.n) {
        return;
    }
    ph_hash[i] = pcg(ph_v[i]);
}

@compute @workgroup_size(WG_SIZE)
fn random_key(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = flat_group(wid, nwg) * WG_SIZE + lid;
    if (e >= p.rows * p.n) {
        return;
    }
    let r = e / p.n;
    rk_keys[e] = hash_key(p.seed, rk_rows[r], rk_idx[e - r * p.n]);
}

fn rs_key(row: u32, i: u32) -> u32 {
    return hash_key(p.seed, rsel_rows[row], i);
}
fn rs_cand(row: u32, i: u32) -> bool {
    return rsel_cand[row * p.n + i] != 0;
}
fn rs_forced(row: u32, i: u32) -> bool {
    return false;
}
fn rs_emit(row: u32, pos: u32, i: u32) {
    if (pos < p.k) {
        rsel_selected[row * p.k + pos] = i32(i);
    }
}

@compute @workgroup_size(WG_SIZE)
fn random_select(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    for (var i = lid; i < p.n; i += WG_SIZE) {
        rsel_keys[row * p.n + i] = rs_key(row, i);
    }
    let kept = rs_select_row(row, p.n, p.k, lid);
    for (var j = kept + lid; j < p.k; j += WG_SIZE) {
        rsel_selected[row * p.k + j] = -1;
    }
}
