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

//
// moba_select: select_blocks for MoBA without the [rows, NB] ranking buffer: the workgroup
// computes its row's gates q_t . kmean_b (the same f32 sums, in the same order, as
// blocks.wgsl's moba_gate) for the past blocks into workgroup memory and selects from there;
// random keys are hashed on the fly and not stored. Needs NB <= MAX_NB (the op falls back to
// moba_gate + select_blocks beyond). Extra bindings: 3 q[Hq,T,D], 4 kmean f32[Hkv,NB,D],
// 5 shape u32[2] = (query heads per kv head, D); `ranking` is not touched.

override WG_SIZE: u32 = 64u;

const MAX_NB: u32 = 2048u;

@group(0) @binding(0) var<uniform> p: SelectParams;
@group(0) @binding(1) var<storage, read_write> sel_ranking: array<u32>;
@group(0) @binding(2) var<storage, read_write> sel_selected: array<i32>;
@group(0) @binding(3) var<storage, read> ms_q: array<ms_q_t>;
@group(0) @binding(4) var<storage, read> ms_kmean: array<ms_kmean_t>;
@group(0) @binding(5) var<storage, read> ms_shape: array<u32>;

var<workgroup> gates_wg: array<f32, MAX_NB>;
// Set by moba_select: rs_key reads the workgroup gates instead of `sel_ranking`.
var<private> fused: bool;

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
    if (fused) {
        return order_key(gates_wg[b]);
    }
    return order_key(bitcast<f32>(sel_ranking[row * p.nb + b]));
}
fn rs_cand(row: u32, b: u32) -> bool {
    return p.mode == 0u || b < current_block(row);
}
fn rs_forced(row: u32, b: u32) -> bool {
    return block_forced(b, current_block(row), p.force_first == 1u, p.n_local);
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
    let kept = rs_select_row(row, p.nb, row_budget(row), lid);
    for (var j = kept + lid; j < p.width; j += WG_SIZE) {
        sel_selected[row * p.width + j] = -1;
    }
}

// Competitors kept for `row`: the budget less the forced blocks.
fn row_budget(row: u32) -> u32 {
    let n_forced = forced_count(current_block(row), p.force_first == 1u, p.n_local);
    return p.n_blocks - min(p.n_blocks, n_forced);
}

@compute @workgroup_size(WG_SIZE)
fn moba_select(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    fused = true;
    let row = flat_group(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    if (p.selector == 0u) {
        // Only past blocks compete; later ones are never read.
        let group = ms_shape[0];
        let dim = ms_shape[1];
        let kv = row / p.seq / group;
        let c = min(current_block(row), MAX_NB);
        for (var b = lid; b < c; b += WG_SIZE) {
            let mean = (kv * p.nb + b) * dim;
            var s = 0.0;
            for (var d = 0u; d < dim; d++) {
                s += ld_ms_q(row * dim + d) * ld_ms_kmean(mean + d);
            }
            gates_wg[b] = s;
        }
        workgroupBarrier();
    }
    let kept = rs_select_row(row, p.nb, row_budget(row), lid);
    for (var j = kept + lid; j < p.width; j += WG_SIZE) {
        sel_selected[row * p.width + j] = -1;
    }
}
