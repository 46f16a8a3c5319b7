// cache.wgsl: the decoder's batched KV cache (kvsparse::ops::CacheFill, CacheAppend,
// CacheAdvance, CacheDecode). Prepended: CacheParams, spec prelude (storage dtype of the cache,
// its statistics, the sources and q/out; the decode constants), common.wgsl, rowselect.wgsl,
// splitk.wgsl.
// Cache layout: k, v [B, Hc, Tcap, D]; kmin, kmax, kmean [B, Hc, NB, D]; lens, pos i32[B].
// Live lengths are read on the device: no dispatch size depends on them, and every index
// derived from them is clamped (lens outside 0..Tcap never reads or writes out of bounds).
//
// cache_fill:    one invocation per (cache head c, block < ceil(n / bs), channel d): copies the
//                block's tokens of channel d into sequence p.seq_index (source token idx[c, e]
//                or e; one outside 0..Tsrc writes 0), then the block's min / max / f32 mean of
//                the stored (rounded) keys; invocation 0 sets lens and pos.
//                Bindings: 1 k_src[Hs,Tsrc,D], 2 v_src, 3 idx i32[Hc,n], 4 k, 5 v, 6 kmin,
//                7 kmax, 8 kmean, 9 lens, 10 pos.
// cache_append:  one workgroup per (b, kv head s, chunk of 32 units j), units j < D/2 on RAT+
//                (the rotation pair j, j + D/2: state step, RoPE at pos[b]), else j < D (one
//                channel, stored as given); 8 token lanes per unit. Lane 0 makes the new token,
//                the workgroup stores slot t = lens[b] of cache heads s*R .. (s+1)*R (whole
//                groups of 4 channels where D allows), then recomputes their channels of block
//                t / bs over tokens bs*(t/bs) ..= t, the lanes splitting the tokens and one
//                invocation per group of channels combining them; t >= Tcap: nothing.
//                Bindings: 1 k_new[B,Hs,D], 2 v_new, 3 g f32, 4 lens, 5 pos, 6 hk f32, 7 hv f32,
//                8 k, 9 v, 10 kmin, 11 kmax, 12 kmean.
// cache_advance: one invocation per sequence: lens += 1, pos += 1. Bindings: 1 lens, 2 pos.
// cache_select:  one workgroup per query row (b, h): the row's ranking over NBcap blocks (Quest
//                score sum_d max(q*kmax, q*kmin) of cache head h / (Hq/Hc), or random_key(seed,
//                h, block); blocks >= NB_b = ceil(lens[b] / bs) hold -inf / 0), then forced
//                top-k over the NB_b live blocks (rowselect.wgsl), ascending, -1 after n_sel_b.
//                Bindings: 1 q[B,Hq,D], 2 kmin, 3 kmax, 4 lens, 5 ranking u32[B,Hq,NBcap] (f32
//                bits of the scores, or the keys), 6 selected i32[B,Hq,W].
// cache_decode_dense / cache_decode_blocks / cache_merge: splitk.wgsl over the query rows
//                b*Hq + h (kv rows b*Hc + c, stride Tcap, live lens[b]): dense over the live
//                tokens, or the row's selected blocks. Bindings: splitk.wgsl's, 8 lens.

override WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> p: CacheParams;

@group(0) @binding(1) var<storage, read> fl_ksrc: array<fl_ksrc_t>;
@group(0) @binding(2) var<storage, read> fl_vsrc: array<fl_vsrc_t>;
@group(0) @binding(3) var<storage, read> fl_idx: array<i32>;
@group(0) @binding(4) var<storage, read_write> fl_k: array<fl_k_t>;
@group(0) @binding(5) var<storage, read_write> fl_v: array<fl_v_t>;
@group(0) @binding(6) var<storage, read_write> fl_kmin: array<fl_kmin_t>;
@group(0) @binding(7) var<storage, read_write> fl_kmax: array<fl_kmax_t>;
@group(0) @binding(8) var<storage, read_write> fl_kmean: array<fl_kmean_t>;
@group(0) @binding(9) var<storage, read_write> fl_lens: array<i32>;
@group(0) @binding(10) var<storage, read_write> fl_pos: array<i32>;

@group(0) @binding(1) var<storage, read> ap_knew: array<ap_knew_t>;
@group(0) @binding(2) var<storage, read> ap_vnew: array<ap_vnew_t>;
@group(0) @binding(3) var<storage, read> ap_g: array<f32>;
@group(0) @binding(4) var<storage, read> ap_lens: array<i32>;
@group(0) @binding(5) var<storage, read> ap_pos: array<i32>;
@group(0) @binding(6) var<storage, read_write> ap_hk: array<f32>;
@group(0) @binding(7) var<storage, read_write> ap_hv: array<f32>;
@group(0) @binding(8) var<storage, read_write> ap_k: array<ap_k_t>;
@group(0) @binding(9) var<storage, read_write> ap_v: array<ap_v_t>;
@group(0) @binding(10) var<storage, read_write> ap_kmin: array<ap_kmin_t>;
@group(0) @binding(11) var<storage, read_write> ap_kmax: array<ap_kmax_t>;
@group(0) @binding(12) var<storage, read_write> ap_kmean: array<ap_kmean_t>;

@group(0) @binding(1) var<storage, read_write> adv_lens: array<i32>;
@group(0) @binding(2) var<storage, read_write> adv_pos: array<i32>;

@group(0) @binding(1) var<storage, read> cs_q: array<cs_q_t>;
@group(0) @binding(2) var<storage, read> cs_kmin: array<cs_kmin_t>;
@group(0) @binding(3) var<storage, read> cs_kmax: array<cs_kmax_t>;
@group(0) @binding(4) var<storage, read> cs_lens: array<i32>;
@group(0) @binding(5) var<storage, read_write> cs_ranking: array<u32>;
@group(0) @binding(6) var<storage, read_write> cs_selected: array<i32>;

@group(0) @binding(8) var<storage, read> cd_lens: array<i32>;

fn item_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_group(wid, nwg) * WG_SIZE + lid;
}

// Live tokens of a sequence whose lens entry is `t`, clamped to 0..=Tcap.
fn live_of(t: i32) -> u32 {
    return u32(clamp(t, 0, i32(p.capacity)));
}

// Element offset of slot `t` of cache head `c` of sequence `b`, and of block `blk`'s statistics.
fn slot_at(b: u32, c: u32, t: u32) -> u32 {
    return ((b * p.heads + c) * p.capacity + t) * p.dim;
}
fn stat_at(b: u32, c: u32, blk: u32) -> u32 {
    return ((b * p.heads + c) * p.nb + blk) * p.dim;
}

@compute @workgroup_size(WG_SIZE)
fn cache_fill(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = item_id(wid, nwg, lid);
    let n = p.n_tokens;
    let nblk = (n + p.block_size - 1u) / p.block_size;
    if (e == 0u) {
        fl_lens[p.seq_index] = i32(n);
        fl_pos[p.seq_index] = i32(p.pos);
    }
    if (e >= p.heads * nblk * p.dim) {
        return;
    }
    let hb = e / p.dim;
    let d = e - hb * p.dim;
    let c = hb / nblk;
    let blk = hb - c * nblk;
    let src = c / (p.heads / p.src_heads);
    let t0 = blk * p.block_size;
    let t1 = min(t0 + p.block_size, n);
    var lo = 0.0;
    var hi = 0.0;
    var sum = 0.0;
    for (var t = t0; t < t1; t++) {
        var j = i32(t);
        if (p.indexed == 1u) {
            j = fl_idx[c * n + t];
        }
        var kx = 0.0;
        var vx = 0.0;
        if (j >= 0 && u32(j) < p.src_len) {
            let at = (src * p.src_len + u32(j)) * p.dim + d;
            kx = ld_fl_ksrc(at);
            vx = ld_fl_vsrc(at);
        }
        let at = slot_at(p.seq_index, c, t) + d;
        st_fl_k(at, kx);
        st_fl_v(at, vx);
        // The statistics are of the stored keys: read back (rounded to the storage dtype).
        let x = ld_fl_k(at);
        if (t == t0) {
            lo = x;
            hi = x;
        }
        lo = min(lo, x);
        hi = max(hi, x);
        sum += x;
    }
    let at = stat_at(p.seq_index, c, blk) + d;
    st_fl_kmin(at, lo);
    st_fl_kmax(at, hi);
    st_fl_kmean(at, sum / f32(t1 - t0));
}

// cache_append's workgroup (WG_SIZE = AP_UNITS * AP_LANES = 256, the kernel table's): AP_UNITS
// consecutive units (channels, or RAT+ rotation pairs) of one (b, kv head) x AP_LANES token
// lanes. Local channel lc < AP_UNITS * nch is unit lc % AP_UNITS of half lc / AP_UNITS.
const AP_UNITS: u32 = 32u;
const AP_LANES: u32 = 8u;
const AP_LOCAL: u32 = 64u;
// The new token's (k, v) per local channel, then the lanes' (min, max, sum) per local channel.
var<workgroup> ap_new: array<vec2<f32>, AP_LOCAL>;
var<workgroup> ap_red: array<vec3<f32>, 512>;

// Element offset within a head vector of local channel `lc` of the workgroup's units `u0..`.
fn ap_channel(lc: u32, u0: u32) -> u32 {
    return (lc / AP_UNITS) * (p.dim / 2u) + u0 + lc % AP_UNITS;
}

// The new token's (k, v) of unit j of row b*Hs + s (RAT+: the pair j, j + D/2; the state step
// in f32, then RoPE of the new k state at pos[b]); components x for channel j, y for j + D/2.
fn ap_token(row: u32, b: u32, j: u32) -> array<vec2<f32>, 2> {
    let half = p.dim / 2u;
    let a = row * p.dim + j;
    if (p.ratplus != 1u) {
        return array<vec2<f32>, 2>(vec2<f32>(ld_ap_knew(a), 0.0), vec2<f32>(ld_ap_vnew(a), 0.0));
    }
    let ia = vec2<u32>(a, a + half);
    let g = vec2<f32>(ap_g[ia.x], ap_g[ia.y]);
    let hk = g * vec2<f32>(ap_hk[ia.x], ap_hk[ia.y]) + (1.0 - g) * vec2<f32>(ld_ap_knew(ia.x), ld_ap_knew(ia.y));
    let hv = g * vec2<f32>(ap_hv[ia.x], ap_hv[ia.y]) + (1.0 - g) * vec2<f32>(ld_ap_vnew(ia.x), ld_ap_vnew(ia.y));
    ap_hk[ia.x] = hk.x;
    ap_hk[ia.y] = hk.y;
    ap_hv[ia.x] = hv.x;
    ap_hv[ia.y] = hv.y;
    let cs = rope_cos_sin(ap_pos[b], j, vec2<f32>(p.rope_step_hi, p.rope_step_lo));
    let kr = vec2<f32>(hk.x * cs.x - hk.y * cs.y, hk.y * cs.x + hk.x * cs.y);
    return array<vec2<f32>, 2>(kr, hv);
}

@compute @workgroup_size(WG_SIZE)
fn cache_append(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    var width = p.dim;
    var nch = 1u;
    if (p.ratplus == 1u) {
        width = p.dim / 2u;
        nch = 2u;
    }
    let chunks = (width + AP_UNITS - 1u) / AP_UNITS;
    let w = flat_group(wid, nwg);
    if (w >= p.batch * p.src_heads * chunks) {
        return;
    }
    let row = w / chunks;                // b * Hs + s
    let u0 = (w - row * chunks) * AP_UNITS;
    let b = row / p.src_heads;
    let s = row - b * p.src_heads;
    let tl = ap_lens[b];
    if (tl < 0 || u32(tl) >= p.capacity) {
        return;
    }
    let t = u32(tl);
    let unit = lid % AP_UNITS;
    let lane = lid / AP_UNITS;
    let live = u0 + unit < width;
    let rep = p.heads / p.src_heads;
    let c0 = s * rep;
    // One invocation stores a group of `grp` local channels: 4 (whole 32-bit words of f16 and
    // bf16, plain stores) where every group is aligned and inside the head, else 1.
    var grp = 1u;
    if (width % 4u == 0u) {
        grp = 4u;
    }
    let ng = AP_UNITS * nch / grp;

    if (lane == 0u && live) {
        let kv = ap_token(row, b, u0 + unit);
        ap_new[unit] = vec2<f32>(kv[0].x, kv[1].x);
        ap_new[unit + AP_UNITS] = vec2<f32>(kv[0].y, kv[1].y);
    }
    workgroupBarrier();
    // Slot t of cache heads s*R .. (s+1)*R: work item (r, k or v, group).
    for (var i = lid; i < 2u * rep * ng; i += WG_SIZE) {
        let q = i % ng;
        let lc = q * grp;
        if (u0 + lc % AP_UNITS >= width) {
            continue;
        }
        let which = (i / ng) % 2u;
        let at = slot_at(b, c0 + i / (2u * ng), t) + ap_channel(lc, u0);
        var x = vec4<f32>(0.0);
        for (var e = 0u; e < grp; e++) {
            x[e] = ap_new[lc + e][which];
        }
        if (grp == 4u) {
            if (which == 0u) {
                st4_ap_k(at / 4u, x);
            } else {
                st4_ap_v(at / 4u, x);
            }
        } else if (which == 0u) {
            st_ap_k(at, x.x);
        } else {
            st_ap_v(at, x.x);
        }
    }
    storageBarrier();
    // Statistics of block t / bs over tokens bs*(t/bs) ..= t of the stored keys: lane l reads
    // tokens t0 + l, t0 + l + AP_LANES, ...; the group's invocation combines the lanes.
    let blk = t / p.block_size;
    let t0 = blk * p.block_size;
    for (var r = 0u; r < rep; r++) {
        let c = c0 + r;
        for (var h = 0u; h < nch; h++) {
            let lc = h * AP_UNITS + unit;
            var acc = vec3<f32>(-neg_inf(), neg_inf(), 0.0);
            if (live) {
                let ch = ap_channel(lc, u0);
                for (var u = t0 + lane; u <= t; u += AP_LANES) {
                    let x = ld_ap_k(slot_at(b, c, u) + ch);
                    acc = vec3<f32>(min(acc.x, x), max(acc.y, x), acc.z + x);
                }
            }
            ap_red[lane * AP_LOCAL + lc] = acc;
        }
        workgroupBarrier();
        let lc = lid * grp;
        if (lid < ng && u0 + lc % AP_UNITS < width) {
            var lo = vec4<f32>(0.0);
            var hi = vec4<f32>(0.0);
            var sum = vec4<f32>(0.0);
            for (var e = 0u; e < grp; e++) {
                var a = ap_red[lc + e];
                for (var l = 1u; l < AP_LANES; l++) {
                    let o = ap_red[l * AP_LOCAL + lc + e];
                    a = vec3<f32>(min(a.x, o.x), max(a.y, o.y), a.z + o.z);
                }
                lo[e] = a.x;
                hi[e] = a.y;
                sum[e] = a.z;
            }
            let mean = sum / f32(t + 1u - t0);
            let st = stat_at(b, c, blk) + ap_channel(lc, u0);
            if (grp == 4u) {
                st4_ap_kmin(st / 4u, lo);
                st4_ap_kmax(st / 4u, hi);
                st4_ap_kmean(st / 4u, mean);
            } else {
                st_ap_kmin(st, lo.x);
                st_ap_kmax(st, hi.x);
                st_ap_kmean(st, mean.x);
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG_SIZE)
fn cache_advance(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let b = item_id(wid, nwg, lid);
    if (b >= p.batch) {
        return;
    }
    adv_lens[b] = adv_lens[b] + 1;
    adv_pos[b] = adv_pos[b] + 1;
}

// cache_select's row state for the rowselect.wgsl callbacks: the current (last live) block.
var<private> sel_current: u32;

fn rs_key(row: u32, b: u32) -> u32 {
    if (p.selector == 1u) {
        return hash_key(p.seed, row % p.q_heads, b);
    }
    return order_key(bitcast<f32>(cs_ranking[row * p.nb + b]));
}
fn rs_cand(row: u32, b: u32) -> bool {
    return true;
}
fn rs_forced(row: u32, b: u32) -> bool {
    return block_forced(b, sel_current, p.force_first == 1u, p.n_local);
}
fn rs_emit(row: u32, pos: u32, b: u32) {
    if (pos < p.width) {
        cs_selected[row * p.width + pos] = i32(b);
    }
}

// Blocks granted to a sequence with `nb` live blocks (CacheBudget::blocks).
fn budget_blocks(nb: u32) -> u32 {
    if (p.budget_den == 0u) {
        return p.budget_count;
    }
    let den = p.budget_den;
    return max(1u, (nb / den) * p.budget_num + (nb % den) * p.budget_num / den);
}

@compute @workgroup_size(WG_SIZE)
fn cache_select(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.batch * p.q_heads) {
        return;
    }
    let b = row / p.q_heads;
    let h = row - b * p.q_heads;
    let c = h / (p.q_heads / p.heads);
    let nb = (live_of(cs_lens[b]) + p.block_size - 1u) / p.block_size;
    for (var blk = lid; blk < p.nb; blk += WG_SIZE) {
        var bits = 0u;
        if (p.selector == 1u) {
            if (blk < nb) {
                bits = hash_key(p.seed, h, blk);
            }
        } else {
            var s = neg_inf();
            if (blk < nb) {
                let st = stat_at(b, c, blk);
                s = 0.0;
                for (var d = 0u; d < p.dim; d++) {
                    let qd = ld_cs_q(row * p.dim + d);
                    s += max(qd * ld_cs_kmax(st + d), qd * ld_cs_kmin(st + d));
                }
            }
            bits = bitcast<u32>(s);
        }
        cs_ranking[row * p.nb + blk] = bits;
    }
    storageBarrier();
    var m = 0u;
    if (nb > 0u) {
        sel_current = nb - 1u;
        let budget = budget_blocks(nb);
        m = budget - min(budget, forced_count(nb - 1u, p.force_first == 1u, p.n_local));
    }
    let kept = rs_select_row(row, nb, m, lid);
    for (var j = kept + lid; j < p.width; j += WG_SIZE) {
        cs_selected[row * p.width + j] = -1;
    }
}

// The split-K job of workgroup `w`: query rows b*Hq + h, kv rows b*Hc + c, live = lens[b].
fn cache_job(w: u32, n_idx: u32) -> DecodeJob {
    let rows = p.batch * p.q_heads;
    let h0 = min(w / p.splits, rows / GROUP - 1u) * GROUP;
    let live = live_of(cd_lens[h0 / p.q_heads]);
    return DecodeJob(
        rows,
        p.q_heads / p.heads,
        p.capacity,
        live,
        p.dim,
        p.scale,
        n_idx,
        p.block_size,
        p.splits,
        false,
    );
}

@compute @workgroup_size(WG_SIZE)
fn cache_decode_dense(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = flat_group(wid, nwg);
    decode(cache_job(w, 0u), MODE_DENSE, w, lid);
}

@compute @workgroup_size(WG_SIZE)
fn cache_decode_blocks(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = flat_group(wid, nwg);
    decode(cache_job(w, p.width), MODE_BLOCKS, w, lid);
}

@compute @workgroup_size(WG_SIZE)
fn cache_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let job = DecodeJob(p.batch * p.q_heads, 1u, p.capacity, 0u, p.dim, p.scale, 0u, 1u, p.splits, false);
    merge(job, flat_group(wid, nwg), lid);
}
