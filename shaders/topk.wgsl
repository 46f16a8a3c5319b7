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
@group(0) @binding(1) var<storage, read> tk_scores: array<tk_scores_t>;
@group(0) @binding(2) var<storage, read_write> tk_indices: array<i32>;
@group(0) @binding(3) var<storage, read_write> tk_scratch: array<u32>;

var<workgroup> sort_key: array<u32, SORT_SMEM>;
var<workgroup> sort_idx: array<u32, SORT_SMEM>;
var<private> sort_global: bool;
var<private> sort_base: u32;
var<private> sort_len: u32;

fn rs_key(row: u32, i: u32) -> u32 {
    return order_key(ld_tk_scores(row * p.n + i));
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
    sort_and_write(row, m, len, lid);
}

// Sorts the sort area (len entries, best first) and writes the first m indices of `row`.
fn sort_and_write(row: u32, m: u32, len: u32, lid: u32) {
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

// ---- Long rows: the selection spread over many workgroups per row ----
//
// A row is cut into chunks of TK_CHUNK scores, a workgroup each. The radix select runs as four
// rounds of (tk_hist: every chunk adds its 8-bit histogram of the keys matching the prefix so
// far into the row's global histogram; tk_pick: one workgroup per row picks the bin holding the
// m-th best key). Then tau = the m-th best key and `remaining` = how many keys equal to tau are
// kept (the lowest-indexed ones). tk_count counts each chunk's keys > tau and == tau,
// tk_offsets turns the counts into each chunk's output position and ties seen before it,
// tk_emit writes the kept (key, index) pairs into the row's sort area (in index order, as
// rowselect does), and tk_sort pads, sorts and writes them like `topk`.
// Bindings: 3 scratch = sort areas (2P words per row), 4 aux u32 per row: [0] prefix, [1] mask,
// [2] remaining, [3] round, [4..260) histogram, then 2 words per chunk.

const TK_CHUNK: u32 = 4096u;
const AUX_HEAD: u32 = 260u;

@group(0) @binding(4) var<storage, read_write> tk_aux: array<atomic<u32>>;

var<workgroup> tk_hist_wg: array<atomic<u32>, 256>;
var<workgroup> tk_u: array<u32, 4>;

fn tk_chunks() -> u32 {
    return (p.n + TK_CHUNK - 1u) / TK_CHUNK;
}
fn tk_aux_base(row: u32) -> u32 {
    return row * (AUX_HEAD + 2u * tk_chunks());
}
fn tk_len() -> u32 {
    var len = 1u;
    while (len < p.out_k) {
        len = len << 1u;
    }
    return len;
}

@compute @workgroup_size(WG_SIZE)
fn tk_init(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let a = tk_aux_base(row);
    for (var i = lid; i < AUX_HEAD; i += WG_SIZE) {
        atomicStore(&tk_aux[a + i], 0u);
    }
    if (lid == 0u) {
        atomicStore(&tk_aux[a + 2u], p.out_k);
    }
}

@compute @workgroup_size(WG_SIZE)
fn tk_hist(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let nch = tk_chunks();
    let g = flat_group(wid, nwg);
    if (g >= p.rows * nch) {
        return;
    }
    let row = g / nch;
    let w = g - row * nch;
    let a = tk_aux_base(row);
    for (var b = lid; b < 256u; b += WG_SIZE) {
        atomicStore(&tk_hist_wg[b], 0u);
    }
    let prefix = atomicLoad(&tk_aux[a]);
    let mask = atomicLoad(&tk_aux[a + 1u]);
    let shift = 24u - 8u * atomicLoad(&tk_aux[a + 3u]);
    workgroupBarrier();
    let i1 = min(p.n, (w + 1u) * TK_CHUNK);
    for (var i = w * TK_CHUNK + lid; i < i1; i += WG_SIZE) {
        let key = order_key(ld_tk_scores(row * p.n + i));
        if ((key & mask) == prefix) {
            atomicAdd(&tk_hist_wg[(key >> shift) & 255u], 1u);
        }
    }
    workgroupBarrier();
    for (var b = lid; b < 256u; b += WG_SIZE) {
        let c = atomicLoad(&tk_hist_wg[b]);
        if (c > 0u) {
            atomicAdd(&tk_aux[a + 4u + b], c);
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn tk_pick(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let a = tk_aux_base(row);
    if (lid == 0u) {
        let round = atomicLoad(&tk_aux[a + 3u]);
        let shift = 24u - 8u * round;
        let remaining = atomicLoad(&tk_aux[a + 2u]);
        var acc = 0u;
        var bin = 0u;
        for (var b = 256u; b > 0u; b--) {
            let c = atomicLoad(&tk_aux[a + 4u + b - 1u]);
            if (acc + c >= remaining) {
                bin = b - 1u;
                break;
            }
            acc += c;
        }
        atomicOr(&tk_aux[a], bin << shift);
        atomicOr(&tk_aux[a + 1u], 255u << shift);
        atomicStore(&tk_aux[a + 2u], remaining - acc);
        atomicStore(&tk_aux[a + 3u], round + 1u);
    }
    workgroupBarrier();
    for (var b = lid; b < 256u; b += WG_SIZE) {
        atomicStore(&tk_aux[a + 4u + b], 0u);
    }
}

// Scores i0..i1 of chunk w handled by lane `lid`: TK_CHUNK / WG_SIZE consecutive ones.
fn tk_lane_range(w: u32, lid: u32) -> vec2<u32> {
    let per = TK_CHUNK / WG_SIZE;
    let i0 = min(p.n, w * TK_CHUNK + lid * per);
    return vec2<u32>(i0, min(p.n, i0 + per));
}

@compute @workgroup_size(WG_SIZE)
fn tk_count(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let nch = tk_chunks();
    let g = flat_group(wid, nwg);
    if (g >= p.rows * nch) {
        return;
    }
    let row = g / nch;
    let w = g - row * nch;
    let a = tk_aux_base(row);
    let tau = atomicLoad(&tk_aux[a]);
    var gt = 0u;
    var eq = 0u;
    let r = tk_lane_range(w, lid);
    for (var i = r.x; i < r.y; i++) {
        let key = order_key(ld_tk_scores(row * p.n + i));
        gt += select(0u, 1u, key > tau);
        eq += select(0u, 1u, key == tau);
    }
    let sg = rs_scan_excl(gt, lid);
    let se = rs_scan_excl(eq, lid);
    if (lid == 0u) {
        atomicStore(&tk_aux[a + AUX_HEAD + 2u * w], sg.y);
        atomicStore(&tk_aux[a + AUX_HEAD + 2u * w + 1u], se.y);
    }
}

// Per row: chunk w's (gt, eq) counts become (output position of its first kept item, keys
// equal to tau in the chunks before it). Lanes take contiguous runs of chunks.
@compute @workgroup_size(WG_SIZE)
fn tk_offsets(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let nch = tk_chunks();
    let a = tk_aux_base(row);
    let remaining = atomicLoad(&tk_aux[a + 2u]);
    let per = (nch + WG_SIZE - 1u) / WG_SIZE;
    let w0 = min(nch, lid * per);
    let w1 = min(nch, w0 + per);
    var gt = 0u;
    var eq = 0u;
    for (var w = w0; w < w1; w++) {
        gt += atomicLoad(&tk_aux[a + AUX_HEAD + 2u * w]);
        eq += atomicLoad(&tk_aux[a + AUX_HEAD + 2u * w + 1u]);
    }
    var eq_before = rs_scan_excl(eq, lid).x;
    var gt_before = rs_scan_excl(gt, lid).x;
    for (var w = w0; w < w1; w++) {
        let g_w = atomicLoad(&tk_aux[a + AUX_HEAD + 2u * w]);
        let e_w = atomicLoad(&tk_aux[a + AUX_HEAD + 2u * w + 1u]);
        // Ties kept before chunk w: the first `remaining` equal keys in index order.
        let taken_before = min(eq_before, remaining);
        atomicStore(&tk_aux[a + AUX_HEAD + 2u * w], gt_before + taken_before);
        atomicStore(&tk_aux[a + AUX_HEAD + 2u * w + 1u], eq_before);
        gt_before += g_w;
        eq_before += e_w;
    }
}

@compute @workgroup_size(WG_SIZE)
fn tk_emit(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let nch = tk_chunks();
    let g = flat_group(wid, nwg);
    if (g >= p.rows * nch) {
        return;
    }
    let row = g / nch;
    let w = g - row * nch;
    let a = tk_aux_base(row);
    let tau = atomicLoad(&tk_aux[a]);
    let remaining = atomicLoad(&tk_aux[a + 2u]);
    let base = atomicLoad(&tk_aux[a + AUX_HEAD + 2u * w]);
    let eq_chunk = atomicLoad(&tk_aux[a + AUX_HEAD + 2u * w + 1u]);
    let r = tk_lane_range(w, lid);
    var eq = 0u;
    for (var i = r.x; i < r.y; i++) {
        eq += select(0u, 1u, order_key(ld_tk_scores(row * p.n + i)) == tau);
    }
    var eq_seen = eq_chunk + rs_scan_excl(eq, lid).x;
    let eq0 = eq_seen;
    var take = 0u;
    for (var i = r.x; i < r.y; i++) {
        let key = order_key(ld_tk_scores(row * p.n + i));
        if (key > tau || (key == tau && eq_seen < remaining)) {
            take += 1u;
        }
        eq_seen += select(0u, 1u, key == tau);
    }
    var pos = base + rs_scan_excl(take, lid).x;
    let len = tk_len();
    let sb = row * 2u * len;
    eq_seen = eq0;
    for (var i = r.x; i < r.y; i++) {
        let key = order_key(ld_tk_scores(row * p.n + i));
        if (key > tau || (key == tau && eq_seen < remaining)) {
            tk_scratch[sb + pos] = key;
            tk_scratch[sb + len + pos] = i;
            pos += 1u;
        }
        eq_seen += select(0u, 1u, key == tau);
    }
}

@compute @workgroup_size(WG_SIZE)
fn tk_sort(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let m = p.out_k;
    let len = tk_len();
    sort_len = len;
    sort_base = row * 2u * len;
    sort_global = len > SORT_SMEM;
    // Sentinels as in `topk`; small areas move to workgroup memory first.
    for (var j = lid; j < len; j += WG_SIZE) {
        var e = vec2<u32>(0u, 0xffffffffu);
        if (j < m) {
            e = vec2<u32>(tk_scratch[sort_base + j], tk_scratch[sort_base + len + j]);
        }
        sort_set(j, e.x, e.y);
    }
    sort_and_write(row, m, len, lid);
}

// ---- Sorting long rows' kept sets across workgroups (len > SORT_SMEM) ----
//
// The bitonic network of sort_and_write, split by stride: strides below SORT_BLOCK run in
// workgroup memory, a block of the sort area per workgroup (tk_sort_block: with size = 0 the
// whole network up to the block size, padding sentinels past out_k first; with size > block,
// the strides below the block of that size's merge); larger strides are one global
// compare-exchange per invocation (tk_sort_stage). tk_sort_out writes the indices. The
// direction of every compare-exchange follows the global position, as in the one-workgroup sort.
// These entry points take SortParams at binding 0 (not TopkParams).

struct SortParams {
    rows: u32,
    // Sort area entries per row (a power of two >= out_k).
    len: u32,
    size: u32,
    stride: u32,
    out_k: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const SORT_BLOCK: u32 = 2048u;

@group(0) @binding(0) var<uniform> sp: SortParams;

var<workgroup> bl_key: array<u32, SORT_BLOCK>;
var<workgroup> bl_idx: array<u32, SORT_BLOCK>;

fn sort_blocks_per_row() -> u32 {
    return (sp.len + SORT_BLOCK - 1u) / SORT_BLOCK;
}

// Compare-exchange of block entries i < j (local), global position gi of i, merge size `size`.
fn bl_swap(i: u32, j: u32, gi: u32, size: u32) {
    let a = vec2<u32>(bl_key[i], bl_idx[i]);
    let b = vec2<u32>(bl_key[j], bl_idx[j]);
    let best_first = (gi & size) == 0u;
    if ((best_first && better(b, a)) || (!best_first && better(a, b))) {
        bl_key[i] = b.x;
        bl_idx[i] = b.y;
        bl_key[j] = a.x;
        bl_idx[j] = a.y;
    }
}

@compute @workgroup_size(WG_SIZE)
fn tk_sort_block(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let nb = sort_blocks_per_row();
    let g = flat_group(wid, nwg);
    if (g >= sp.rows * nb) {
        return;
    }
    let row = g / nb;
    let blk = g - row * nb;
    let bsize = min(SORT_BLOCK, sp.len);
    let base = row * 2u * sp.len;
    let g0 = blk * bsize;
    for (var t = lid; t < bsize; t += WG_SIZE) {
        var e = vec2<u32>(tk_scratch[base + g0 + t], tk_scratch[base + sp.len + g0 + t]);
        if (sp.size == 0u && g0 + t >= sp.out_k) {
            e = vec2<u32>(0u, 0xffffffffu);
        }
        bl_key[t] = e.x;
        bl_idx[t] = e.y;
    }
    workgroupBarrier();
    if (sp.size == 0u) {
        for (var size = 2u; size <= bsize; size = size << 1u) {
            for (var stride = size >> 1u; stride > 0u; stride = stride >> 1u) {
                for (var i = lid; i < bsize; i += WG_SIZE) {
                    let j = i ^ stride;
                    if (j > i) {
                        bl_swap(i, j, g0 + i, size);
                    }
                }
                workgroupBarrier();
            }
        }
    } else {
        for (var stride = bsize >> 1u; stride > 0u; stride = stride >> 1u) {
            for (var i = lid; i < bsize; i += WG_SIZE) {
                let j = i ^ stride;
                if (j > i) {
                    bl_swap(i, j, g0 + i, sp.size);
                }
            }
            workgroupBarrier();
        }
    }
    for (var t = lid; t < bsize; t += WG_SIZE) {
        tk_scratch[base + g0 + t] = bl_key[t];
        tk_scratch[base + sp.len + g0 + t] = bl_idx[t];
    }
}

@compute @workgroup_size(WG_SIZE)
fn tk_sort_stage(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let half = sp.len / 2u;
    let q = flat_group(wid, nwg) * WG_SIZE + lid;
    if (q >= sp.rows * half) {
        return;
    }
    let row = q / half;
    let k = q - row * half;
    let i = (k / sp.stride) * 2u * sp.stride + k % sp.stride;
    let j = i + sp.stride;
    let base = row * 2u * sp.len;
    let a = vec2<u32>(tk_scratch[base + i], tk_scratch[base + sp.len + i]);
    let b = vec2<u32>(tk_scratch[base + j], tk_scratch[base + sp.len + j]);
    let best_first = (i & sp.size) == 0u;
    if ((best_first && better(b, a)) || (!best_first && better(a, b))) {
        tk_scratch[base + i] = b.x;
        tk_scratch[base + sp.len + i] = b.y;
        tk_scratch[base + j] = a.x;
        tk_scratch[base + sp.len + j] = a.y;
    }
}

@compute @workgroup_size(WG_SIZE)
fn tk_sort_out(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = flat_group(wid, nwg) * WG_SIZE + lid;
    if (e >= sp.rows * sp.out_k) {
        return;
    }
    let row = e / sp.out_k;
    let j = e - row * sp.out_k;
    tk_indices[e] = i32(tk_scratch[row * 2u * sp.len + sp.len + j]);
}
