// topk.wgsl: `indices[R, out_k]` of `scores[R, N]` in descending score order, ties to the lower
// index (SPEC §5.1). Prepended: TopkParams, spec prelude, common.wgsl, rowselect.wgsl.
//
// One workgroup per row: rowselect finds the kept set exactly (radix select on the order key of
// the score) and emits it in index order into a sort area, padded to a power of two P with
// sentinels; a bitonic sort (best first) then orders it. The sort area lives in workgroup memory
// when P <= SORT_SMEM and in `scratch` (2P words per row: keys, then indices) otherwise.
//
// Bindings: 0 params, 1 scores f32[R*N], 2 indices i32[R*out_k], 3 scratch u32[R*2P] (a dummy
// when P <= SORT_SMEM).

override WG_SIZE: u32 = 256u;
const SORT_SMEM: u32 = 1024u;

@group(0) @binding(0) var<uniform> p: TopkParams;
@group(0) @binding(1) var<storage, read> tk_scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> tk_indices: array<i32>;
@group(0) @binding(3) var<storage, read_write> tk_scratch: array<u32>;

var<workgroup> sort_key: array<u32, SORT_SMEM>;
var<workgroup> sort_idx: array<u32, SORT_SMEM>;
var<private> sort_global: bool;
var<private> sort_base: u32;
var<private> sort_len: u32;

fn rs_key(row: u32, i: u32) -> u32 {
    return order_key(tk_scores[row * p.n + i]);
}
fn rs_cand(row: u32, i: u32) -> bool {
    return true;
}
fn rs_forced(row: u32, i: u32) -> bool {
    return false;
}
fn rs_emit(row: u32, pos: u32, i: u32) {
    sort_set(pos, rs_key(row, i), i);
}

fn sort_set(j: u32, key: u32, i: u32) {
    if (sort_global) {
        tk_scratch[sort_base + j] = key;
        tk_scratch[sort_base + sort_len + j] = i;
    } else {
        sort_key[j] = key;
        sort_idx[j] = i;
    }
}
fn sort_get(j: u32) -> vec2<u32> {
    if (sort_global) {
        return vec2<u32>(tk_scratch[sort_base + j], tk_scratch[sort_base + sort_len + j]);
    }
    return vec2<u32>(sort_key[j], sort_idx[j]);
}
fn sort_barrier() {
    storageBarrier();
    workgroupBarrier();
}
// Whether (key a, index a) ranks strictly before (key b, index b).
fn better(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x > b.x || (a.x == b.x && a.y < b.y);
}

@compute @workgroup_size(WG_SIZE)
fn topk(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let m = p.out_k;
    var len = 1u;
    while (len < m) {
        len = len << 1u;
    }
    sort_len = len;
    sort_global = len > SORT_SMEM;
    sort_base = row * 2u * len;

    let kept = rs_select_row(row, p.n, m, lid);
    // Sentinels (key 0 is below every non-NaN score, index u32::MAX loses every tie).
    for (var j = kept + lid; j < len; j += WG_SIZE) {
        sort_set(j, 0u, 0xffffffffu);
    }
    sort_barrier();

    for (var size = 2u; size <= len; size = size << 1u) {
        for (var stride = size >> 1u; stride > 0u; stride = stride >> 1u) {
            for (var i = lid; i < len; i += WG_SIZE) {
                let j = i ^ stride;
                if (j > i) {
                    let a = sort_get(i);
                    let b = sort_get(j);
                    let best_first = (i & size) == 0u;
                    if ((best_first && better(b, a)) || (!best_first && better(a, b))) {
                        sort_set(i, b.x, b.y);
                        sort_set(j, a.x, a.y);
                    }
                }
            }
            sort_barrier();
        }
    }
    for (var j = lid; j < m; j += WG_SIZE) {
        tk_indices[row * m + j] = i32(sort_get(j).y);
    }
}
