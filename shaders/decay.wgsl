// decay.wgsl: RAT+ exponentially decaying memory (SPEC §1). Prepended: DecayParams, spec
// prelude (storage dtype of the x/k/v/y tensors; gates and recurrence states are f32), common.wgsl.
// Tensors are [outer, seq, inner] = [H, T, D] row-major; a "lane" is one (outer, inner) pair.
//
// decay_scan:   one invocation per lane, sequential over T, f32 state.
//               Bindings: 1 x[o,T,C], 2 g f32[o,T,C], 3 h0 f32[o,C], 4 y[o,T,C].
// decay_step:   one invocation per lane.  Bindings: 1 x[C], 2 g f32[C], 3 h f32[C], 4 h_new f32[C].
// rope:         one invocation per (h, t, i < D/2) rotation pair.
//               Bindings: 1 x[H,T,D], 2 pos i32[T], 3 y[H,T,D].
// ratplus_kv:   one invocation per (h, i < D/2): scans the k and v lanes i and i + D/2 together,
//               so RoPE of k~ is fused into the write.
//               Bindings: 1 k, 2 v, 3 g f32, 4 k_tilde, 5 v_tilde, 6 k_rope (all [H,T,D]).
// ratplus_step: one invocation per (h, i < D/2). Bindings: 1 k, 2 v, 3 g f32, 4 hk f32, 5 hv f32,
//               6 hk_new f32, 7 hv_new f32, 8 k_rope (all [H,D]).
//
// decay_scan and ratplus_kv walk T sequentially per lane (coalesced across lanes): enough when
// T fits one chunk. Longer scans run chunked, so that every (chunk, lane) is an invocation:
//   *_chunks: per chunk of SCAN_L tokens and lane, the chunk's gate product A = prod g and its
//             scan from zero B; the recurrence over a chunk is h_out = A * h_in + B;
//   *_carry:  per lane, sequentially over the chunks (summaries only): carry-in of each chunk;
//   *_final:  per chunk and lane, the chunk's scan again from its carry-in, writing the outputs
//             (and, for ratplus_kv, RoPE of k~ fused into the write; g read once for k and v).
// The f32 summaries live in `sums` (sections of N = outer * chunks * inner: A, B, carry for the
// scan; A, Bk, Bv, carry k, carry v for ratplus_kv). x and g are read twice, y written once.
// Extra bindings: decay_scan family 5 sums f32; ratplus family 7 sums f32.

override WG_SIZE: u32 = 256u;

// Tokens per chunk of the chunked scans (`SCAN_L` in ops.rs).
const SCAN_L: u32 = 256u;

@group(0) @binding(0) var<uniform> p: DecayParams;

@group(0) @binding(1) var<storage, read> ds_x: array<ds_x_t>;
@group(0) @binding(2) var<storage, read> ds_g: array<ds_g_t>;
@group(0) @binding(3) var<storage, read> ds_h0: array<f32>;
@group(0) @binding(4) var<storage, read_write> ds_y: array<ds_y_t>;
@group(0) @binding(5) var<storage, read_write> ds_sums: array<f32>;

@group(0) @binding(1) var<storage, read> dst_x: array<dst_x_t>;
@group(0) @binding(2) var<storage, read> dst_g: array<f32>;
@group(0) @binding(3) var<storage, read> dst_h: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst_hnew: array<f32>;

@group(0) @binding(1) var<storage, read> rp_x: array<rp_x_t>;
@group(0) @binding(2) var<storage, read> rp_pos: array<i32>;
@group(0) @binding(3) var<storage, read_write> rp_y: array<rp_y_t>;

@group(0) @binding(1) var<storage, read> rk_k: array<rk_k_t>;
@group(0) @binding(2) var<storage, read> rk_v: array<rk_v_t>;
@group(0) @binding(3) var<storage, read> rk_g: array<rk_g_t>;
@group(0) @binding(4) var<storage, read_write> rk_kt: array<rk_kt_t>;
@group(0) @binding(5) var<storage, read_write> rk_vt: array<rk_vt_t>;
@group(0) @binding(6) var<storage, read_write> rk_kr: array<rk_kr_t>;
@group(0) @binding(7) var<storage, read_write> rk_sums: array<f32>;

@group(0) @binding(1) var<storage, read> rstep_k: array<rstep_k_t>;
@group(0) @binding(2) var<storage, read> rstep_v: array<rstep_v_t>;
@group(0) @binding(3) var<storage, read> rstep_g: array<f32>;
@group(0) @binding(4) var<storage, read> rstep_hk: array<f32>;
@group(0) @binding(5) var<storage, read> rstep_hv: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstep_hkn: array<f32>;
@group(0) @binding(7) var<storage, read_write> rstep_hvn: array<f32>;
@group(0) @binding(8) var<storage, read_write> rstep_kr: array<rstep_kr_t>;

fn lane_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_group(wid, nwg) * WG_SIZE + lid;
}

// (cos, sin) of the rotate-half angle pos * base^(-2i/D) (see rope_cos_sin).
fn rope_cs(pos: i32, i: u32) -> vec2<f32> {
    return rope_cos_sin(pos, i, vec2<f32>(p.rope_step_hi, p.rope_step_lo));
}

@compute @workgroup_size(WG_SIZE)
fn decay_scan(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane = lane_id(wid, nwg, lid);
    if (lane >= p.outer * p.inner) {
        return;
    }
    let o = lane / p.inner;
    let c = lane - o * p.inner;
    var h = ds_h0[lane];
    for (var t = 0u; t < p.seq; t++) {
        let i = (o * p.seq + t) * p.inner + c;
        let g = ld_ds_g(i);
        h = g * h + (1.0 - g) * ld_ds_x(i);
        st_ds_y(i, h);
    }
}

@compute @workgroup_size(WG_SIZE)
fn decay_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = lane_id(wid, nwg, lid);
    if (i >= p.inner) {
        return;
    }
    let g = dst_g[i];
    dst_hnew[i] = g * dst_h[i] + (1.0 - g) * ld_dst_x(i);
}

@compute @workgroup_size(WG_SIZE)
fn rope(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let half = p.inner / 2u;
    let e = lane_id(wid, nwg, lid);
    if (e >= p.outer * p.seq * half) {
        return;
    }
    let row = e / half;                  // (h, t)
    let i = e - row * half;
    let t = row % p.seq;
    let cs = rope_cs(rp_pos[t], i);
    let a = row * p.inner + i;
    let x0 = ld_rp_x(a);
    let x1 = ld_rp_x(a + half);
    st_rp_y(a, x0 * cs.x - x1 * cs.y);
    st_rp_y(a + half, x1 * cs.x + x0 * cs.y);
}

@compute @workgroup_size(WG_SIZE)
fn ratplus_kv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let half = p.inner / 2u;
    let e = lane_id(wid, nwg, lid);
    if (e >= p.outer * half) {
        return;
    }
    let h = e / half;
    let i = e - h * half;
    var k0 = 0.0;
    var k1 = 0.0;
    var v0 = 0.0;
    var v1 = 0.0;
    for (var t = 0u; t < p.seq; t++) {
        let a = (h * p.seq + t) * p.inner + i;
        let b = a + half;
        let ga = ld_rk_g(a);
        let gb = ld_rk_g(b);
        k0 = ga * k0 + (1.0 - ga) * ld_rk_k(a);
        v0 = ga * v0 + (1.0 - ga) * ld_rk_v(a);
        k1 = gb * k1 + (1.0 - gb) * ld_rk_k(b);
        v1 = gb * v1 + (1.0 - gb) * ld_rk_v(b);
        st_rk_kt(a, k0);
        st_rk_kt(b, k1);
        st_rk_vt(a, v0);
        st_rk_vt(b, v1);
        let cs = rope_cs(i32(p.pos0 + t), i);
        st_rk_kr(a, k0 * cs.x - k1 * cs.y);
        st_rk_kr(b, k1 * cs.x + k0 * cs.y);
    }
}

@compute @workgroup_size(WG_SIZE)
fn ratplus_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let half = p.inner / 2u;
    let e = lane_id(wid, nwg, lid);
    if (e >= p.outer * half) {
        return;
    }
    let h = e / half;
    let i = e - h * half;
    let a = h * p.inner + i;
    let b = a + half;
    let ga = rstep_g[a];
    let gb = rstep_g[b];
    let k0 = ga * rstep_hk[a] + (1.0 - ga) * ld_rstep_k(a);
    let k1 = gb * rstep_hk[b] + (1.0 - gb) * ld_rstep_k(b);
    rstep_hkn[a] = k0;
    rstep_hkn[b] = k1;
    rstep_hvn[a] = ga * rstep_hv[a] + (1.0 - ga) * ld_rstep_v(a);
    rstep_hvn[b] = gb * rstep_hv[b] + (1.0 - gb) * ld_rstep_v(b);
    let cs = rope_cs(i32(p.pos0), i);
    st_rstep_kr(a, k0 * cs.x - k1 * cs.y);
    st_rstep_kr(b, k1 * cs.x + k0 * cs.y);
}

fn n_chunks() -> u32 {
    return (p.seq + SCAN_L - 1u) / SCAN_L;
}

// One invocation of a chunked scan pass: lane `e` = (outer, chunk, channel) with `width`
// channels per (outer, chunk) row; the chunk covers tokens t0..t1.
struct ChunkLane {
    row: u32,
    outer: u32,
    channel: u32,
    t0: u32,
    t1: u32,
}

fn chunk_lane(e: u32, width: u32) -> ChunkLane {
    let row = e / width;
    let outer = row / n_chunks();
    let t0 = (row - outer * n_chunks()) * SCAN_L;
    return ChunkLane(row, outer, e - row * width, t0, min(p.seq, t0 + SCAN_L));
}

// Gates and inputs of steps t..t+4 of channel c (steps past t1 repeat t1 - 1's, unused). The
// chunk passes load a batch before the recurrence consumes it (the loads do not depend on h),
// written as vector lanes, not an array, so that the batch stays in registers whether or not
// the driver unrolls the loop that consumes it. On the H200's Vulkan driver this took the scan
// at 32K x 4096 from 1.91 to 1.80 ms (BENCHMARKS runs 64-65): the one-load-a-step loop was not
// what held it at 21% of the copy rate.
struct ScanSteps {
    g: vec4<f32>,
    x: vec4<f32>,
}

fn scan_steps(o: u32, c: u32, t: u32, t1: u32) -> ScanSteps {
    let row = o * p.seq;
    let i0 = (row + t) * p.inner + c;
    let i1 = (row + min(t + 1u, t1 - 1u)) * p.inner + c;
    let i2 = (row + min(t + 2u, t1 - 1u)) * p.inner + c;
    let i3 = (row + min(t + 3u, t1 - 1u)) * p.inner + c;
    return ScanSteps(
        vec4<f32>(ld_ds_g(i0), ld_ds_g(i1), ld_ds_g(i2), ld_ds_g(i3)),
        vec4<f32>(ld_ds_x(i0), ld_ds_x(i1), ld_ds_x(i2), ld_ds_x(i3)),
    );
}

@compute @workgroup_size(WG_SIZE)
fn scan_chunks(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let nch = n_chunks();
    let n = p.outer * nch * p.inner;
    let e = lane_id(wid, nwg, lid);
    if (e >= n) {
        return;
    }
    let lane = chunk_lane(e, p.inner);
    let c = lane.channel;
    let o = lane.outer;
    let t0 = lane.t0;
    let t1 = lane.t1;
    var a = 1.0;
    var b = 0.0;
    for (var t = t0; t < t1; t += 4u) {
        let s = scan_steps(o, c, t, t1);
        for (var u = 0u; u < 4u; u++) {
            if (t + u < t1) {
                a *= s.g[u];
                b = s.g[u] * b + (1.0 - s.g[u]) * s.x[u];
            }
        }
    }
    ds_sums[e] = a;
    ds_sums[n + e] = b;
}

@compute @workgroup_size(WG_SIZE)
fn scan_carry(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let nch = n_chunks();
    let n = p.outer * nch * p.inner;
    let lane = lane_id(wid, nwg, lid);
    if (lane >= p.outer * p.inner) {
        return;
    }
    let o = lane / p.inner;
    let c = lane - o * p.inner;
    var h = ds_h0[lane];
    // The chain is h only: summaries are loaded a batch ahead of it.
    for (var j0 = 0u; j0 < nch; j0 += 8u) {
        var a: array<f32, 8>;
        var b: array<f32, 8>;
        for (var u = 0u; u < 8u; u++) {
            let e = (o * nch + min(j0 + u, nch - 1u)) * p.inner + c;
            a[u] = ds_sums[e];
            b[u] = ds_sums[n + e];
        }
        for (var u = 0u; u < 8u; u++) {
            if (j0 + u < nch) {
                ds_sums[2u * n + (o * nch + j0 + u) * p.inner + c] = h;
                h = a[u] * h + b[u];
            }
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn scan_final(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let nch = n_chunks();
    let n = p.outer * nch * p.inner;
    let e = lane_id(wid, nwg, lid);
    if (e >= n) {
        return;
    }
    let lane = chunk_lane(e, p.inner);
    let c = lane.channel;
    let o = lane.outer;
    let t0 = lane.t0;
    let t1 = lane.t1;
    var h = ds_sums[2u * n + e];
    for (var t = t0; t < t1; t += 4u) {
        let s = scan_steps(o, c, t, t1);
        for (var u = 0u; u < 4u; u++) {
            if (t + u < t1) {
                h = s.g[u] * h + (1.0 - s.g[u]) * s.x[u];
                st_ds_y((o * p.seq + t + u) * p.inner + c, h);
            }
        }
    }
}

// ratplus_kv chunked: an invocation per (head, chunk, rotation pair i < D/2), as ratplus_kv.
@compute @workgroup_size(WG_SIZE)
fn ratplus_chunks(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let half = p.inner / 2u;
    let nch = n_chunks();
    let n = p.outer * nch * p.inner;
    let e = lane_id(wid, nwg, lid);
    if (e >= p.outer * nch * half) {
        return;
    }
    let lane = chunk_lane(e, half);
    let hj = lane.row;
    let i = lane.channel;
    let h = lane.outer;
    let t0 = lane.t0;
    let t1 = lane.t1;
    var aa = 1.0;
    var ab = 1.0;
    var k0 = 0.0;
    var k1 = 0.0;
    var v0 = 0.0;
    var v1 = 0.0;
    for (var t = t0; t < t1; t++) {
        let a = (h * p.seq + t) * p.inner + i;
        let b = a + half;
        let ga = ld_rk_g(a);
        let gb = ld_rk_g(b);
        aa *= ga;
        ab *= gb;
        k0 = ga * k0 + (1.0 - ga) * ld_rk_k(a);
        v0 = ga * v0 + (1.0 - ga) * ld_rk_v(a);
        k1 = gb * k1 + (1.0 - gb) * ld_rk_k(b);
        v1 = gb * v1 + (1.0 - gb) * ld_rk_v(b);
    }
    let sa = hj * p.inner + i;
    let sb = sa + half;
    rk_sums[sa] = aa;
    rk_sums[sb] = ab;
    rk_sums[n + sa] = k0;
    rk_sums[n + sb] = k1;
    rk_sums[2u * n + sa] = v0;
    rk_sums[2u * n + sb] = v1;
}

// An invocation per (head, d < D): carries of k and v from zero state.
@compute @workgroup_size(WG_SIZE)
fn ratplus_carry(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let nch = n_chunks();
    let n = p.outer * nch * p.inner;
    let lane = lane_id(wid, nwg, lid);
    if (lane >= p.outer * p.inner) {
        return;
    }
    let h = lane / p.inner;
    let d = lane - h * p.inner;
    var hk = 0.0;
    var hv = 0.0;
    for (var j0 = 0u; j0 < nch; j0 += 8u) {
        var a: array<f32, 8>;
        var bk: array<f32, 8>;
        var bv: array<f32, 8>;
        for (var u = 0u; u < 8u; u++) {
            let e = (h * nch + min(j0 + u, nch - 1u)) * p.inner + d;
            a[u] = rk_sums[e];
            bk[u] = rk_sums[n + e];
            bv[u] = rk_sums[2u * n + e];
        }
        for (var u = 0u; u < 8u; u++) {
            if (j0 + u < nch) {
                let e = (h * nch + j0 + u) * p.inner + d;
                rk_sums[3u * n + e] = hk;
                rk_sums[4u * n + e] = hv;
                hk = a[u] * hk + bk[u];
                hv = a[u] * hv + bv[u];
            }
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn ratplus_final(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let half = p.inner / 2u;
    let nch = n_chunks();
    let n = p.outer * nch * p.inner;
    let e = lane_id(wid, nwg, lid);
    if (e >= p.outer * nch * half) {
        return;
    }
    let lane = chunk_lane(e, half);
    let hj = lane.row;
    let i = lane.channel;
    let h = lane.outer;
    let t0 = lane.t0;
    let t1 = lane.t1;
    let sa = hj * p.inner + i;
    let sb = sa + half;
    var k0 = rk_sums[3u * n + sa];
    var k1 = rk_sums[3u * n + sb];
    var v0 = rk_sums[4u * n + sa];
    var v1 = rk_sums[4u * n + sb];
    for (var t = t0; t < t1; t++) {
        let a = (h * p.seq + t) * p.inner + i;
        let b = a + half;
        let ga = ld_rk_g(a);
        let gb = ld_rk_g(b);
        k0 = ga * k0 + (1.0 - ga) * ld_rk_k(a);
        v0 = ga * v0 + (1.0 - ga) * ld_rk_v(a);
        k1 = gb * k1 + (1.0 - gb) * ld_rk_k(b);
        v1 = gb * v1 + (1.0 - gb) * ld_rk_v(b);
        st_rk_kt(a, k0);
        st_rk_kt(b, k1);
        st_rk_vt(a, v0);
        st_rk_vt(b, v1);
        let cs = rope_cs(i32(p.pos0 + t), i);
        st_rk_kr(a, k0 * cs.x - k1 * cs.y);
        st_rk_kr(b, k1 * cs.x + k0 * cs.y);
    }
}
