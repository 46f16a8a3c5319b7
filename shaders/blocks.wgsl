// blocks.wgsl: block statistics and block scores (SPEC §2.1, §2.2, §3.1, §3.2).
// Prepended: BlockParams, spec prelude (dtype of the key/query tensors, and of the statistics:
// the storage dtype for the standalone ops, f32 inside Quest/MoBA), common.wgsl.
// Blocks: NB = ceil(T / bs), block b = tokens [b*bs, min((b+1)*bs, T)); only the last is partial.
//
// block_minmax: one invocation per (h, b, d).  Bindings: 1 k[H,T,D], 2 kmin[H,NB,D], 3 kmax[H,NB,D].
// block_mean:   one invocation per (h, b, d).  Bindings: 1 k[H,T,D], 2 kmean[H,NB,D].
// quest_scores: 32 invocations per (h, b): sum_d max(q*kmax, q*kmin), unscaled, f32.
//               Bindings: 1 q[Hq,D], 2 kmin[Hkv,NB,D], 3 kmax[Hkv,NB,D], 4 scores f32[Hq,NB].
// quest_group_mean: one invocation per (kv head, b): the mean of its G query heads' scores
//               (summed in head order, then / G). Bindings: 1 scores f32[Hq,NB], 2 mean f32[Hkv,NB].
// moba_gate:    one invocation per (h, t, b): q_t . kmean_b, unscaled, f32 (every block).
//               Bindings: 1 q[Hq,T,D], 2 kmean[Hkv,NB,D], 3 gate f32[Hq,T,NB].

override WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> p: BlockParams;

@group(0) @binding(1) var<storage, read> bm_k: array<bm_k_t>;
@group(0) @binding(2) var<storage, read_write> bm_kmin: array<bm_kmin_t>;
@group(0) @binding(3) var<storage, read_write> bm_kmax: array<bm_kmax_t>;

@group(0) @binding(1) var<storage, read> bmean_k: array<bmean_k_t>;
@group(0) @binding(2) var<storage, read_write> bmean_out: array<bmean_out_t>;

@group(0) @binding(1) var<storage, read> qs_q: array<qs_q_t>;
@group(0) @binding(2) var<storage, read> qs_kmin: array<qs_kmin_t>;
@group(0) @binding(3) var<storage, read> qs_kmax: array<qs_kmax_t>;
@group(0) @binding(4) var<storage, read_write> qs_scores: array<f32>;

@group(0) @binding(1) var<storage, read> qm_scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> qm_mean: array<f32>;

@group(0) @binding(1) var<storage, read> mg_q: array<mg_q_t>;
@group(0) @binding(2) var<storage, read> mg_kmean: array<mg_kmean_t>;
@group(0) @binding(3) var<storage, read_write> mg_gate: array<f32>;

fn thread_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_group(wid, nwg) * WG_SIZE + lid;
}

@compute @workgroup_size(WG_SIZE)
fn block_minmax(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = thread_id(wid, nwg, lid);
    if (e >= p.kv_heads * p.nb * p.dim) {
        return;
    }
    let hb = e / p.dim;
    let d = e - hb * p.dim;
    let h = hb / p.nb;
    let b = hb - h * p.nb;
    let start = b * p.block_size;
    let end = min(start + p.block_size, p.seq);
    var lo = ld_bm_k((h * p.seq + start) * p.dim + d);
    var hi = lo;
    for (var t = start + 1u; t < end; t++) {
        let x = ld_bm_k((h * p.seq + t) * p.dim + d);
        lo = min(lo, x);
        hi = max(hi, x);
    }
    st_bm_kmin(e, lo);
    st_bm_kmax(e, hi);
}

@compute @workgroup_size(WG_SIZE)
fn block_mean(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = thread_id(wid, nwg, lid);
    if (e >= p.kv_heads * p.nb * p.dim) {
        return;
    }
    let hb = e / p.dim;
    let d = e - hb * p.dim;
    let h = hb / p.nb;
    let b = hb - h * p.nb;
    let start = b * p.block_size;
    let end = min(start + p.block_size, p.seq);
    var sum = 0.0;
    for (var t = start; t < end; t++) {
        sum += ld_bmean_k((h * p.seq + t) * p.dim + d);
    }
    st_bmean_out(e, sum / f32(end - start));
}

// quest_scores: QS_TEAM invocations per (h, b), each summing the dims d = lane, lane + QS_TEAM,
// ... (consecutive lanes read consecutive dims), then a tree over the team in workgroup memory.
// One invocation per (h, b) walking all D dims (the first design) left 16K invocations at 32K
// tokens each D dependent rounds of scattered loads: 211 µs on the H200 (BENCHMARKS run 62),
// against CUDA's 8-10 µs. QS_TEAM comes with the spec prelude.
var<workgroup> qs_red: array<f32, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn quest_scores(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let pair = thread_id(wid, nwg, lid) / QS_TEAM;
    let lane = lid % QS_TEAM;
    let live = pair < p.q_heads * p.nb;
    var s = 0.0;
    if (live) {
        let h = pair / p.nb;
        let b = pair - h * p.nb;
        let kv = h / (p.q_heads / p.kv_heads);
        let stats = (kv * p.nb + b) * p.dim;
        for (var d = lane; d < p.dim; d += QS_TEAM) {
            let qd = ld_qs_q(h * p.dim + d);
            s += max(qd * ld_qs_kmax(stats + d), qd * ld_qs_kmin(stats + d));
        }
    }
    qs_red[lid] = s;
    workgroupBarrier();
    for (var o = QS_TEAM / 2u; o > 0u; o = o >> 1u) {
        if (lane < o) {
            qs_red[lid] += qs_red[lid + o];
        }
        workgroupBarrier();
    }
    if (live && lane == 0u) {
        qs_scores[pair] = qs_red[lid];
    }
}

@compute @workgroup_size(WG_SIZE)
fn quest_group_mean(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = thread_id(wid, nwg, lid);
    if (e >= p.kv_heads * p.nb) {
        return;
    }
    let kv = e / p.nb;
    let b = e - kv * p.nb;
    let g = p.q_heads / p.kv_heads;
    var s = 0.0;
    for (var i = 0u; i < g; i++) {
        s += qm_scores[(kv * g + i) * p.nb + b];
    }
    qm_mean[e] = s / f32(g);
}

@compute @workgroup_size(WG_SIZE)
fn moba_gate(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = thread_id(wid, nwg, lid);
    if (e >= p.q_heads * p.seq * p.nb) {
        return;
    }
    let row = e / p.nb;                  // h * T + t
    let b = e - row * p.nb;
    let h = row / p.seq;
    let kv = h / (p.q_heads / p.kv_heads);
    let mean = (kv * p.nb + b) * p.dim;
    var s = 0.0;
    for (var d = 0u; d < p.dim; d++) {
        s += ld_mg_q(row * p.dim + d) * ld_mg_kmean(mean + d);
    }
    mg_gate[e] = s;
}
