// snapkv.wgsl: SnapKV window scoring and the kept set (SPEC §4), streamed: the [H, w, T]
// attention of the window is never stored. Prepended: SnapKvParams, spec prelude (storage dtype
// of q_obs and k; HEAD_DIM >= dim sizes the per-invocation key copy), common.wgsl, rowselect.wgsl.
// P = n_prefix = T - w prefix tokens compete; window query i sits at position P + i.
//
// snapkv_lse:      one workgroup per window query (h, i): log-sum-exp of scale * q.k_j over its
//                  causal keys j <= P + i (prefix and window keys both enter the normalizer).
// snapkv_colsum:   one invocation per (h, j < P): A[h, j] = sum_i exp(scale * q_i.k_j - lse[h, i]).
// snapkv_pool:     one invocation per (output head s, j < P): 1-D pooling of A along j (stride 1,
//                  padding kernel/2; avg divides by kernel, max ignores the padding), per query
//                  head first, then the mean over the G heads of kv head s (gqa 0) or head s
//                  itself (gqa 1). Selector 1 writes random_key(seed, s, j) instead.
// snapkv_select:   one workgroup per output head: the top n_keep prefix tokens (rowselect), then
//                  the whole window, ascending, into kept[s, 0..capacity].
// snapkv_keep_all: T <= capacity: kept[s, j] = j.
//
// Bindings (shared by all entries): 1 q_obs[Hq,w,D], 2 k[Hkv,T,D], 3 lse f32[Hq*w] (scratch),
// 4 colsum f32[Hq*P] (scratch), 5 ranking u32[Hs*P] (f32 bits of the scores, or keys),
// 6 kept i32[Hs*kept_len].

override WG_SIZE: u32 = 128u;

@group(0) @binding(0) var<uniform> p: SnapKvParams;
@group(0) @binding(1) var<storage, read> sq: array<sq_t>;
@group(0) @binding(2) var<storage, read> sk: array<sk_t>;
@group(0) @binding(3) var<storage, read_write> s_lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> s_col: array<f32>;
@group(0) @binding(5) var<storage, read_write> s_rank: array<u32>;
@group(0) @binding(6) var<storage, read_write> s_kept: array<i32>;

var<workgroup> q_row: array<f32, HEAD_DIM>;
var<workgroup> red: array<f32, WG_SIZE>;

fn wg_max(x: f32, lid: u32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn wg_sum(x: f32, lid: u32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn thread_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_group(wid, nwg) * WG_SIZE + lid;
}

fn group_size() -> u32 {
    return p.q_heads / p.kv_heads;
}

@compute @workgroup_size(WG_SIZE)
fn snapkv_lse(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);      // h * w + i
    if (row >= p.q_heads * p.window) {
        return;
    }
    let h = row / p.window;
    let i = row - h * p.window;
    let d = p.dim;
    for (var c = lid; c < d; c += WG_SIZE) {
        q_row[c] = ld_sq(row * d + c);
    }
    workgroupBarrier();
    let kbase = (h / group_size()) * p.seq * d;
    let visible = p.n_prefix + i + 1u;
    // Per-invocation online log-sum-exp over a strided subset of the keys, merged below.
    var m = NEG_BIG;
    var l = 0.0;
    for (var j = lid; j < visible; j += WG_SIZE) {
        var dot = 0.0;
        for (var c = 0u; c < d; c++) {
            dot += q_row[c] * ld_sk(kbase + j * d + c);
        }
        let x = dot * p.scale;
        let m_new = max(m, x);
        l = l * exp(m - m_new) + exp(x - m_new);
        m = m_new;
    }
    let gm = wg_max(m, lid);
    let gl = wg_sum(l * exp(m - gm), lid);
    if (lid == 0u) {
        s_lse[row] = gm + log(gl);
    }
}

@compute @workgroup_size(WG_SIZE)
fn snapkv_colsum(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = thread_id(wid, nwg, lid);
    if (e >= p.q_heads * p.n_prefix) {
        return;
    }
    let h = e / p.n_prefix;
    let j = e - h * p.n_prefix;
    let d = p.dim;
    let kb = ((h / group_size()) * p.seq + j) * d;
    var kr: array<f32, HEAD_DIM>;
    for (var c = 0u; c < d; c++) {
        kr[c] = ld_sk(kb + c);
    }
    var a = 0.0;
    for (var i = 0u; i < p.window; i++) {
        let qb = (h * p.window + i) * d;
        var dot = 0.0;
        for (var c = 0u; c < d; c++) {
            dot += ld_sq(qb + c) * kr[c];
        }
        a += exp(dot * p.scale - s_lse[h * p.window + i]);
    }
    s_col[e] = a;
}

@compute @workgroup_size(WG_SIZE)
fn snapkv_pool(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = thread_id(wid, nwg, lid);
    let np = p.n_prefix;
    if (e >= p.out_heads * np) {
        return;
    }
    let s = e / np;
    let j = e - s * np;
    if (p.selector == 1u) {
        s_rank[e] = hash_key(p.seed, s, j);
        return;
    }
    var h0 = s;
    var nh = 1u;
    if (p.gqa == 0u) {
        h0 = s * group_size();
        nh = group_size();
    }
    let pad = p.kernel / 2u;
    let lo = select(0u, j - pad, j >= pad);
    let hi = min(j + pad, np - 1u);
    var total = 0.0;
    for (var h = h0; h < h0 + nh; h++) {
        var pooled = 0.0;
        if (p.pooling == 0u) {
            for (var x = lo; x <= hi; x++) {
                pooled += s_col[h * np + x];
            }
            pooled = pooled / f32(p.kernel);
        } else {
            pooled = s_col[h * np + lo];
            for (var x = lo + 1u; x <= hi; x++) {
                pooled = max(pooled, s_col[h * np + x]);
            }
        }
        total += pooled;
    }
    s_rank[e] = bitcast<u32>(total / f32(nh));
}

fn rs_key(row: u32, j: u32) -> u32 {
    let r = s_rank[row * p.n_prefix + j];
    if (p.selector == 1u) {
        return r;
    }
    return order_key(bitcast<f32>(r));
}
fn rs_cand(row: u32, j: u32) -> bool {
    return true;
}
fn rs_forced(row: u32, j: u32) -> bool {
    return false;
}
fn rs_emit(row: u32, pos: u32, j: u32) {
    if (pos < p.n_keep) {
        s_kept[row * p.capacity + pos] = i32(j);
    }
}

@compute @workgroup_size(WG_SIZE)
fn snapkv_select(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = flat_group(wid, nwg);
    if (s >= p.out_heads) {
        return;
    }
    rs_select_row(s, p.n_prefix, p.n_keep, lid);
    for (var u = lid; u < p.window; u += WG_SIZE) {
        s_kept[s * p.capacity + p.n_keep + u] = i32(p.n_prefix + u);
    }
}

@compute @workgroup_size(WG_SIZE)
fn snapkv_keep_all(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = thread_id(wid, nwg, lid);
    if (e >= p.out_heads * p.seq) {
        return;
    }
    s_kept[e] = i32(e % p.seq);
}
