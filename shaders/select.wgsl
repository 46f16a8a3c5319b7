// select.wgsl: forced top-k block selection (SPEC §2.3, §3.3, §5.2, §8).
// Prepended: SelectParams, spec prelude, common.wgsl, rowselect.wgsl.
//
// select_blocks: one workgroup per row. Quest (mode 0): a row per query head, current block =
// NB-1, every block a candidate. MoBA (mode 1): a row per (head, token) (row = h*T + t), current
// block = t / bs, candidates = past blocks b < current. Forced = {0 if force_first} U
// {current-n_local+1 ..= current} (clipped at 0); the best max(0, n_blocks - |forced|) other
// candidates join, by the f32 score in `ranking` (compared through order_key) or by
// random_key(seed, row, b) (selector 1, which also writes those keys into `ranking`).
// Output: the row's blocks ascending, padded with -1 to `width`.
//
// Bindings: 1 ranking u32[rows*NB] (f32 bits of the scores, or the keys written here),
//           2 selected i32[rows*width].

override WG_SIZE: u32 = 64u;

@group(0) @binding(0) var<uniform> p: SelectParams;
@group(0) @binding(1) var<storage, read_write> sel_ranking: array<u32>;
@group(0) @binding(2) var<storage, read_write> sel_selected: array<i32>;

fn current_block(row: u32) -> u32 {
    if (p.mode == 0u) {
        return p.nb - 1u;
    }
    return (row % p.seq) / p.block_size;
}

fn rs_key(row: u32, b: u32) -> u32 {
    if (p.selector == 1u) {
        return hash_key(p.seed, row, b);
    }
    return order_key(bitcast<f32>(sel_ranking[row * p.nb + b]));
}
fn rs_cand(row: u32, b: u32) -> bool {
    return p.mode == 0u || b < current_block(row);
}
fn rs_forced(row: u32, b: u32) -> bool {
    let c = current_block(row);
    return (p.force_first == 1u && b == 0u) || (b <= c && b + p.n_local > c);
}
fn rs_emit(row: u32, pos: u32, b: u32) {
    if (pos < p.width) {
        sel_selected[row * p.width + pos] = i32(b);
    }
}

@compute @workgroup_size(WG_SIZE)
fn select_blocks(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    if (p.selector == 1u) {
        for (var b = lid; b < p.nb; b += WG_SIZE) {
            sel_ranking[row * p.nb + b] = hash_key(p.seed, row, b);
        }
    }
    // |forced| = |local range| + (block 0 when forced and outside the local range).
    let c = current_block(row);
    let n_local = min(p.n_local, c + 1u);
    var n_forced = n_local;
    if (p.force_first == 1u && c + 1u > n_local) {
        n_forced += 1u;
    }
    var budget = 0u;
    if (p.n_blocks > n_forced) {
        budget = p.n_blocks - n_forced;
    }
    let kept = rs_select_row(row, p.nb, budget, lid);
    for (var j = kept + lid; j < p.width; j += WG_SIZE) {
        sel_selected[row * p.width + j] = -1;
    }
}
