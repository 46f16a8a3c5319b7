// prefill.wgsl: tiled causal attention for many queries (SPEC §7, §3.4): dense prefill and
// MoBA's block-sparse prefill. Prepended: AttentionParams, spec prelude (storage dtype of
// q/k/v/out; HEAD_DIM >= dim; SUBGROUPS and sg_xor), common.wgsl.
//
// A workgroup owns BQ = 64 consecutive queries of one head; 4 lanes share a query row, each
// holding every 4th vec4 of q and of the accumulator in registers (interleaved, so the lanes of
// a row read different workgroup-memory banks). K and V are staged in workgroup memory BK keys
// at a time (f32, coalesced vec4 loads; BK * HEAD_DIM = 2048) and each staged key serves all 64
// rows: global K/V traffic drops by 64x against one workgroup per query. Per tile every row
// scores BK keys (partial dots summed over its 4 lanes by subgroup shuffles, or through
// workgroup memory without subgroups), then rescales once (online softmax) and accumulates.
//   prefill_dense:  keys 0..the tile's last visible key; causal bottom-right aligned, masked
//                   per row.
//   prefill_blocks: the union of the tile's selected blocks (a bitmap in workgroup memory, NB <=
//                   MAX_NB), ascending; a row takes a key when the block is in its own
//                   selection and the key is causally visible (selected = idx rows h*q_len+i).
// Requires dim % 4 == 0 (the op falls back to attention.wgsl otherwise).
//
// Bindings: 1 q[Hq,q_len,D], 2 k[Hkv,kv_len,D], 3 v[Hkv,kv_len,D], 4 idx i32 (blocks),
//           5 out[Hq,q_len,D], 6 lse f32[Hq,q_len].

override WG_SIZE: u32 = 256u;

const BQ: u32 = 64u;
const BK: u32 = 2048u / HEAD_DIM;
const NV: u32 = HEAD_DIM / 16u;
const H4: u32 = HEAD_DIM / 4u;
const MAX_NB: u32 = 4096u;

@group(0) @binding(0) var<uniform> p: AttentionParams;
@group(0) @binding(1) var<storage, read> pq: array<pq_t>;
@group(0) @binding(2) var<storage, read> pk: array<pk_t>;
@group(0) @binding(3) var<storage, read> pv: array<pv_t>;
@group(0) @binding(4) var<storage, read> pidx: array<i32>;
@group(0) @binding(5) var<storage, read_write> pout: array<pout_t>;
@group(0) @binding(6) var<storage, read_write> plse: array<f32>;

var<workgroup> kt: array<vec4<f32>, BK * H4>;
var<workgroup> vt: array<vec4<f32>, BK * H4>;
var<workgroup> pred: array<f32, RED_SIZE>;
var<workgroup> ubits: array<atomic<u32>, MAX_NB / 32u>;
var<workgroup> ubits_u: array<u32, MAX_NB / 32u>;

// Per-invocation state (private: every function below runs for one lane).
var<private> qv: array<vec4<f32>, NV>;
var<private> acc: array<vec4<f32>, NV>;
var<private> m_run: f32;
var<private> l_run: f32;

// Sum of `x` over the 4 lanes of a row (uniform control flow: barriers without subgroups).
fn row_sum(x: f32, lid: u32) -> f32 {
    if (SUBGROUPS) {
        let a = x + sg_xor(x, 1u);
        return a + sg_xor(a, 2u);
    }
    pred[lid] = x;
    workgroupBarrier();
    let b = lid & ~3u;
    let s = (pred[b] + pred[b + 1u]) + (pred[b + 2u] + pred[b + 3u]);
    workgroupBarrier();
    return s;
}

// Stages keys [t0, t1) (at most BK) of kv head `kvh` in workgroup memory; zeros past t1.
fn stage(kvh: u32, t0: u32, t1: u32, lid: u32) {
    let d4 = p.dim / 4u;
    let base = kvh * p.kv_len * d4;
    for (var it = lid; it < BK * H4; it += WG_SIZE) {
        let kk = it / H4;
        let c = it - kk * H4;
        var kx = vec4<f32>(0.0);
        var vx = vec4<f32>(0.0);
        if (t0 + kk < t1 && c < d4) {
            let a = base + (t0 + kk) * d4 + c;
            kx = ld_pk(a);
            vx = ld_pv(a);
        }
        kt[it] = kx;
        vt[it] = vx;
    }
}

// One staged tile: keys t0 + kk (kk < t1 - t0) for this lane's row. `take(kk)` decided by the
// caller through `mask` bits (bit kk set = the row attends key t0 + kk).
fn attend_tile(n: u32, mask_lo: u32, mask_hi: u32, s: u32, lid: u32) {
    var sc: array<f32, BK>;
    var mx = m_run;
    for (var kk = 0u; kk < BK; kk++) {
        var part = 0.0;
        for (var i = 0u; i < NV; i++) {
            part += dot(qv[i], kt[kk * H4 + s + 4u * i]);
        }
        let dotv = row_sum(part, lid);
        var bit = 0u;
        if (kk < 32u) {
            bit = (mask_lo >> kk) & 1u;
        } else {
            bit = (mask_hi >> (kk - 32u)) & 1u;
        }
        if (kk < n && bit == 1u) {
            sc[kk] = dotv;
            mx = max(mx, dotv);
        } else {
            sc[kk] = NEG_BIG;
        }
    }
    let corr = exp(m_run - mx);
    m_run = mx;
    l_run *= corr;
    for (var i = 0u; i < NV; i++) {
        acc[i] *= corr;
    }
    for (var kk = 0u; kk < BK; kk++) {
        if (sc[kk] > NEG_BIG) {
            let pr = exp(sc[kk] - mx);
            l_run += pr;
            for (var i = 0u; i < NV; i++) {
                acc[i] += pr * vt[kk * H4 + s + 4u * i];
            }
        }
    }
}

// Bits kk < n of the keys t0 + kk that row (query position qpos) may see causally.
fn causal_mask(t0: u32, n: u32, qpos: u32, live: bool) -> vec2<u32> {
    var lo = 0u;
    var hi = 0u;
    if (!live) {
        return vec2<u32>(0u, 0u);
    }
    for (var kk = 0u; kk < n; kk++) {
        let t = t0 + kk;
        if (p.causal == 0u || t <= qpos) {
            if (kk < 32u) {
                lo |= 1u << kk;
            } else {
                hi |= 1u << (kk - 32u);
            }
        }
    }
    return vec2<u32>(lo, hi);
}

fn prefill(blocks: bool, w: u32, lid: u32) {
    let tiles = (p.q_len + BQ - 1u) / BQ;
    if (w >= p.q_heads * tiles) {
        return;
    }
    let h = w / tiles;
    let q0 = (w - h * tiles) * BQ;
    let kvh = h / (p.q_heads / p.kv_heads);
    let r = lid / 4u;
    let s = lid % 4u;
    let i = q0 + r;
    let live = i < p.q_len;
    let qpos = p.kv_len - p.q_len + i;
    let d4 = p.dim / 4u;
    let row = h * p.q_len + i;
    m_run = NEG_BIG;
    l_run = 0.0;
    for (var j = 0u; j < NV; j++) {
        let c = s + 4u * j;
        var x = vec4<f32>(0.0);
        if (live && c < d4) {
            x = ld_pq(row * d4 + c) * p.scale;
        }
        qv[j] = x;
        acc[j] = vec4<f32>(0.0);
    }

    if (!blocks) {
        // Keys up to the last row's position (causal) or all of them.
        var end = p.kv_len;
        if (p.causal == 1u) {
            end = min(p.kv_len, p.kv_len - p.q_len + min(q0 + BQ, p.q_len));
        }
        for (var t0 = 0u; t0 < end; t0 += BK) {
            let n = min(BK, end - t0);
            workgroupBarrier();
            stage(kvh, t0, t0 + n, lid);
            workgroupBarrier();
            let mk = causal_mask(t0, n, qpos, live);
            attend_tile(n, mk.x, mk.y, s, lid);
        }
    } else {
        let nb = (p.kv_len + p.block_size - 1u) / p.block_size;
        let words = (nb + 31u) / 32u;
        for (var wd = lid; wd < words; wd += WG_SIZE) {
            atomicStore(&ubits[wd], 0u);
        }
        workgroupBarrier();
        if (live && s == 0u) {
            for (var j = 0u; j < p.n_idx; j++) {
                let b = pidx[row * p.n_idx + j];
                if (b >= 0 && u32(b) < nb) {
                    atomicOr(&ubits[u32(b) / 32u], 1u << (u32(b) % 32u));
                }
            }
        }
        workgroupBarrier();
        for (var wd = lid; wd < words; wd += WG_SIZE) {
            ubits_u[wd] = atomicLoad(&ubits[wd]);
        }
        for (var wd = 0u; wd < words; wd++) {
            var bits = workgroupUniformLoad(&ubits_u[wd]);
            while (bits != 0u) {
                let b = wd * 32u + firstTrailingBit(bits);
                bits &= bits - 1u;
                // Does this row select block b?
                var mine = false;
                if (live) {
                    for (var j = 0u; j < p.n_idx; j++) {
                        if (pidx[row * p.n_idx + j] == i32(b)) {
                            mine = true;
                        }
                    }
                }
                let b0 = b * p.block_size;
                let b1 = min(p.kv_len, b0 + p.block_size);
                for (var t0 = b0; t0 < b1; t0 += BK) {
                    let n = min(BK, b1 - t0);
                    workgroupBarrier();
                    stage(kvh, t0, t0 + n, lid);
                    workgroupBarrier();
                    let mk = causal_mask(t0, n, qpos, mine);
                    attend_tile(n, mk.x, mk.y, s, lid);
                }
            }
        }
    }

    if (live) {
        for (var j = 0u; j < NV; j++) {
            let c = s + 4u * j;
            if (c < d4) {
                var o = vec4<f32>(0.0);
                if (l_run > 0.0) {
                    o = acc[j] / l_run;
                }
                st4_pout(row * d4 + c, o);
            }
        }
        if (s == 0u) {
            if (l_run > 0.0) {
                plse[row] = m_run + log(l_run);
            } else {
                plse[row] = neg_inf();
            }
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn prefill_dense(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    prefill(false, flat_group(wid, nwg), lid);
}

@compute @workgroup_size(WG_SIZE)
fn prefill_blocks(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    prefill(true, flat_group(wid, nwg), lid);
}
