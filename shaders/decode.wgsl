// decode.wgsl: split-K attention for one query token per head (flash-decoding), SPEC §7, §2.4.
// Prepended: AttentionParams, spec prelude (storage dtype of q/k/v/out; HEAD_DIM >= dim; GROUP,
// TEAM, SUBGROUPS and sg_xor, see below), common.wgsl.
//
// Decode reads every selected K/V byte once, so the layout is built around the loads:
// - a workgroup owns one "unit" (GROUP query heads that share a KV head and a key set) and one
//   split of the key slots (`p.splits` per unit, merged by log-sum-exp in decode_merge): enough
//   workgroups to fill the GPU even with 8 KV heads;
// - a team of TEAM lanes reads one key row, each lane 4 elements per load (one 8- or 16-byte
//   load, consecutive lanes on consecutive groups), and scores it against all GROUP query heads
//   held in registers: K/V are loaded once per group, never once per query head; a step issues
//   the K and V loads of KB keys before any arithmetic (memory-level parallelism); lanes that
//   cover elements past dim hold zeros (vars start zeroed), so they add nothing;
// - teams walk their slots independently with their own online-softmax state (no barrier per
//   key); the team's dot products are summed with subgroup shuffles (SUBGROUPS, when the
//   adapter has subgroups of at least TEAM lanes) or through workgroup memory otherwise;
// - at the end the teams' states are merged in workgroup memory.
// Slots map to tokens as in attention.wgsl: dense = 0..kv_len (one query: all visible);
// sparse = the unit's index row (a kv head's row when shared, else GROUP = 1); blocks = the
// query head's n_idx selected blocks x min(bs, kv_len) tokens (GROUP = 1), causal to the last
// token. Requires dim % 4 == 0 (the ops fall back to attention.wgsl otherwise).
//
// Bindings: 1 q[Hq,D], 2 k[Hkv,T,D], 3 v[Hkv,T,D], 4 idx i32, 5 out[Hq,D], 6 lse f32[Hq],
//           7 part f32[Hq, splits, D + 2] ((max, sum, unnormalised acc) per split; splits > 1).

override WG_SIZE: u32 = 128u;

// Keys per team per step: more loads in flight per lane, one reduction for both.
const KB: u32 = 2u;
const EPV: u32 = HEAD_DIM / (4u * TEAM);
const QN: u32 = GROUP * EPV;
const DN: u32 = KB * GROUP;

@group(0) @binding(0) var<uniform> p: AttentionParams;
@group(0) @binding(1) var<storage, read> dq: array<dq_t>;
@group(0) @binding(2) var<storage, read> dk: array<dk_t>;
@group(0) @binding(3) var<storage, read> dv: array<dv_t>;
@group(0) @binding(4) var<storage, read> didx: array<i32>;
@group(0) @binding(5) var<storage, read_write> dout: array<dout_t>;
@group(0) @binding(6) var<storage, read_write> dlse: array<f32>;
@group(0) @binding(7) var<storage, read_write> dpart: array<f32>;

var<workgroup> red: array<f32, RED_SIZE>;
var<workgroup> t_ml: array<f32, WG_SIZE / TEAM * 2u * GROUP>;
var<workgroup> t_acc: array<vec4<f32>, GROUP * HEAD_DIM / 4u>;

const MODE_DENSE: u32 = 0u;
const MODE_SPARSE: u32 = 1u;
const MODE_BLOCKS: u32 = 2u;

// Sums each entry of `v` over the lanes of a team; every lane of the team gets the same sums
// (butterfly additions are commutative pairwise, the workgroup path sums in one order).
// Contains barriers without subgroups: call from uniform control flow.
fn team_reduce(v: ptr<function, array<f32, DN>>, lid: u32) {
    if (SUBGROUPS) {
        for (var i = 0u; i < DN; i++) {
            var s = (*v)[i];
            for (var o = 1u; o < TEAM; o = o << 1u) {
                s += sg_xor(s, o);
            }
            (*v)[i] = s;
        }
        return;
    }
    let base = lid - lid % TEAM;
    for (var i = 0u; i < DN; i++) {
        red[i * WG_SIZE + lid] = (*v)[i];
    }
    workgroupBarrier();
    for (var i = 0u; i < DN; i++) {
        var s = 0.0;
        for (var j = 0u; j < TEAM; j++) {
            s += red[i * WG_SIZE + base + j];
        }
        (*v)[i] = s;
    }
    workgroupBarrier();
}

// Token of slot `s` for unit row `r` (first query head of the unit), or -1.
fn slot_token(mode: u32, s: u32, r: u32, kvh: u32) -> i32 {
    if (mode == MODE_DENSE) {
        return i32(s);
    }
    if (mode == MODE_SPARSE) {
        var row = r;
        if (p.idx_heads != p.q_heads) {
            row = kvh;
        }
        let e = didx[row * p.n_idx + s];
        if (e < 0 || u32(e) >= p.kv_len) {
            return -1;
        }
        return e;
    }
    let nb = (p.kv_len + p.block_size - 1u) / p.block_size;
    let span = min(p.block_size, p.kv_len);
    let j = s / span;
    let b = didx[r * p.n_idx + j];
    if (b < 0 || u32(b) >= nb) {
        return -1;
    }
    let t = u32(b) * p.block_size + (s - j * span);
    if (t >= p.kv_len) {
        return -1;
    }
    return i32(t);
}

fn decode(mode: u32, w: u32, lid: u32) {
    let units = p.q_heads / GROUP;
    if (w >= units * p.splits) {
        return;
    }
    let u = w / p.splits;
    let split = w - u * p.splits;
    let h0 = u * GROUP;
    let kvh = h0 / (p.q_heads / p.kv_heads);
    let lane = lid % TEAM;
    let team = lid / TEAM;
    let nt = WG_SIZE / TEAM;
    let d4 = p.dim / 4u;

    var n_slots = p.kv_len;
    if (mode == MODE_SPARSE) {
        n_slots = p.n_idx;
    } else if (mode == MODE_BLOCKS) {
        n_slots = p.n_idx * min(p.block_size, p.kv_len);
    }
    let per = (n_slots + p.splits - 1u) / p.splits;
    let s0 = min(n_slots, split * per);
    let s1 = min(n_slots, s0 + per);

    // The scale is folded into q: logits come out scaled.
    var qv: array<vec4<f32>, QN>;
    var acc: array<vec4<f32>, QN>;
    var m: array<f32, GROUP>;
    var l: array<f32, GROUP>;
    for (var g = 0u; g < GROUP; g++) {
        m[g] = NEG_BIG;
        l[g] = 0.0;
        for (var e = 0u; e < EPV; e++) {
            let c = e * TEAM + lane;
            var x = vec4<f32>(0.0);
            if (c < d4) {
                x = ld_dq((h0 + g) * d4 + c) * p.scale;
            }
            qv[g * EPV + e] = x;
            acc[g * EPV + e] = vec4<f32>(0.0);
        }
    }
    let kvbase = kvh * p.kv_len * d4;

    for (var base = s0; base < s1; base += nt * KB) {
        // All K and V loads of the step first: they do not depend on the scores, so every
        // lane keeps 2 * KB * EPV loads in flight before the first reduction.
        var tok: array<i32, KB>;
        var kx: array<vec4<f32>, KB * EPV>;
        var vx: array<vec4<f32>, KB * EPV>;
        for (var kb = 0u; kb < KB; kb++) {
            let s = base + kb * nt + team;
            var t = -1;
            if (s < s1) {
                t = slot_token(mode, s, h0, kvh);
            }
            tok[kb] = t;
            if (t >= 0) {
                let rb = kvbase + u32(t) * d4;
                for (var e = 0u; e < EPV; e++) {
                    let c = e * TEAM + lane;
                    if (c < d4) {
                        kx[kb * EPV + e] = ld_dk(rb + c);
                        vx[kb * EPV + e] = ld_dv(rb + c);
                    }
                }
            }
        }
        var dots: array<f32, DN>;
        for (var kb = 0u; kb < KB; kb++) {
            for (var g = 0u; g < GROUP; g++) {
                var part = 0.0;
                for (var e = 0u; e < EPV; e++) {
                    part += dot(qv[g * EPV + e], kx[kb * EPV + e]);
                }
                dots[kb * GROUP + g] = part;
            }
        }
        team_reduce(&dots, lid);
        for (var g = 0u; g < GROUP; g++) {
            var mx = m[g];
            for (var kb = 0u; kb < KB; kb++) {
                if (tok[kb] >= 0) {
                    mx = max(mx, dots[kb * GROUP + g]);
                }
            }
            let corr = exp(m[g] - mx);
            m[g] = mx;
            l[g] *= corr;
            for (var e = 0u; e < EPV; e++) {
                acc[g * EPV + e] *= corr;
            }
        }
        for (var kb = 0u; kb < KB; kb++) {
            if (tok[kb] >= 0) {
                for (var g = 0u; g < GROUP; g++) {
                    let pr = exp(dots[kb * GROUP + g] - m[g]);
                    l[g] += pr;
                    for (var e = 0u; e < EPV; e++) {
                        acc[g * EPV + e] += pr * vx[kb * EPV + e];
                    }
                }
            }
        }
    }

    // Merge the teams: common max, rescaled sums, accumulators added team by team.
    if (lane == 0u) {
        for (var g = 0u; g < GROUP; g++) {
            t_ml[(team * GROUP + g) * 2u] = m[g];
            t_ml[(team * GROUP + g) * 2u + 1u] = l[g];
        }
    }
    workgroupBarrier();
    var mm: array<f32, GROUP>;
    var ll: array<f32, GROUP>;
    for (var g = 0u; g < GROUP; g++) {
        var mx = NEG_BIG;
        for (var t = 0u; t < nt; t++) {
            mx = max(mx, t_ml[(t * GROUP + g) * 2u]);
        }
        var sum = 0.0;
        for (var t = 0u; t < nt; t++) {
            sum += t_ml[(t * GROUP + g) * 2u + 1u] * exp(t_ml[(t * GROUP + g) * 2u] - mx);
        }
        mm[g] = mx;
        ll[g] = sum;
        let f = exp(m[g] - mx);
        for (var e = 0u; e < EPV; e++) {
            acc[g * EPV + e] *= f;
        }
    }
    for (var t = 0u; t < nt; t++) {
        if (team == t) {
            for (var g = 0u; g < GROUP; g++) {
                for (var e = 0u; e < EPV; e++) {
                    let c = e * TEAM + lane;
                    if (c < d4) {
                        let i = g * (HEAD_DIM / 4u) + c;
                        if (t == 0u) {
                            t_acc[i] = acc[g * EPV + e];
                        } else {
                            t_acc[i] += acc[g * EPV + e];
                        }
                    }
                }
            }
        }
        workgroupBarrier();
    }
    let rec = p.dim + 2u;
    for (var i = lid; i < GROUP * d4; i += WG_SIZE) {
        let g = i / d4;
        let c = i - g * d4;
        let a = t_acc[g * (HEAD_DIM / 4u) + c];
        let h = h0 + g;
        if (p.splits == 1u) {
            var o = vec4<f32>(0.0);
            if (ll[g] > 0.0) {
                o = a / ll[g];
            }
            st4_dout(h * d4 + c, o);
        } else {
            let r = (h * p.splits + split) * rec + 2u + c * 4u;
            for (var j = 0u; j < 4u; j++) {
                dpart[r + j] = a[j];
            }
        }
    }
    if (lid < GROUP) {
        let h = h0 + lid;
        if (p.splits == 1u) {
            if (ll[lid] > 0.0) {
                dlse[h] = mm[lid] + log(ll[lid]);
            } else {
                dlse[h] = neg_inf();
            }
        } else {
            let r = (h * p.splits + split) * rec;
            dpart[r] = mm[lid];
            dpart[r + 1u] = ll[lid];
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn decode_dense(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    decode(MODE_DENSE, flat_group(wid, nwg), lid);
}

@compute @workgroup_size(WG_SIZE)
fn decode_sparse(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    decode(MODE_SPARSE, flat_group(wid, nwg), lid);
}

@compute @workgroup_size(WG_SIZE)
fn decode_blocks(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    decode(MODE_BLOCKS, flat_group(wid, nwg), lid);
}

// One workgroup per query head: out = sum_s acc_s e^(m_s - M) / L, lse = M + log L with
// M = max_s m_s, L = sum_s l_s e^(m_s - M); empty (L = 0) gives 0 and -inf.
@compute @workgroup_size(WG_SIZE)
fn decode_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let h = flat_group(wid, nwg);
    if (h >= p.q_heads) {
        return;
    }
    let rec = p.dim + 2u;
    let r0 = h * p.splits * rec;
    var mx = NEG_BIG;
    for (var s = 0u; s < p.splits; s++) {
        mx = max(mx, dpart[r0 + s * rec]);
    }
    var sum = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        sum += dpart[r0 + s * rec + 1u] * exp(dpart[r0 + s * rec] - mx);
    }
    for (var d = lid; d < p.dim; d += WG_SIZE) {
        var a = 0.0;
        for (var s = 0u; s < p.splits; s++) {
            a += dpart[r0 + s * rec + 2u + d] * exp(dpart[r0 + s * rec] - mx);
        }
        var o = 0.0;
        if (sum > 0.0) {
            o = a / sum;
        }
        st_dout(h * p.dim + d, o);
    }
    if (lid == 0u) {
        if (sum > 0.0) {
            dlse[h] = mx + log(sum);
        } else {
            dlse[h] = neg_inf();
        }
    }
}
