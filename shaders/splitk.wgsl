// splitk.wgsl: split-K attention for one query token per row (flash-decoding), SPEC §7, §2.4,
// shared by decode.wgsl (attention ops, AttentionParams) and cache.wgsl (the batched KV cache,
// CacheParams); no entry points. Prepended after common.wgsl for those families; they declare
// `override WG_SIZE` and describe their problem as a DecodeJob (below).
// Spec prelude: storage dtype of q/k/v/out; HEAD_DIM >= dim; GROUP, TEAM, SUBGROUPS and sg_xor;
// ALIGNED = dim % 4 == 0 (else q/k/v are scalar arrays and ldv_* gathers 4 elements).
//
// Decode reads every selected K/V byte once, so the layout is built around the loads:
// - a workgroup owns one "unit" (GROUP query heads that share a KV head and a key set) and one
//   split of the key slots (`splits` per unit, merged by log-sum-exp in merge()): enough
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
// Slots map to tokens as in attention.wgsl: dense = 0..live (one query: all visible);
// sparse = the unit's index row (a kv head's row when shared, else GROUP = 1); blocks = the
// unit's n_idx selected blocks x min(bs, live) tokens (the kv head's row when shared, else the
// query head's with GROUP = 1), causal to the last token. Rows are "query rows": a head, or (sequence, head) flattened for the batched cache,
// whose kv rows are (sequence, cache head) `stride` slots apart; only the first `live` slots of
// a kv row are keys.
//
// Bindings: 1 q[rows,D], 2 k[kv rows,stride,D], 3 v[kv rows,stride,D], 4 idx i32, 5 out[rows,D],
//           6 lse f32[rows], 7 part f32[rows, splits, D + 2] ((max, sum, unnormalised acc) per
//           split; splits > 1).

// One decode problem as the workgroup sees it.
struct DecodeJob {
    // Query rows (`units = rows / GROUP` workgroups per split) and query rows per kv row.
    rows: u32,
    group: u32,
    // Token slots per kv row (row stride) and live slots of this workgroup's kv row (<= stride).
    stride: u32,
    live: u32,
    dim: u32,
    scale: f32,
    // Index row width (sparse: tokens, blocks: block ids) and tokens per block.
    n_idx: u32,
    block_size: u32,
    splits: u32,
    // Sparse: one index row per kv row (else one per query row).
    idx_shared: bool,
}

// KB (spec prelude): keys per team per step, loaded before any is scored: more loads in flight
// per lane, one reduction for all of them.
const EPV: u32 = HEAD_DIM / (4u * TEAM);
const QN: u32 = GROUP * EPV;
const DN: u32 = KB * GROUP;

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

// Token of slot `s` for unit row `r` (first query row of the unit), or -1.
fn slot_token(j: DecodeJob, mode: u32, s: u32, r: u32, kvh: u32) -> i32 {
    if (mode == MODE_DENSE) {
        return i32(s);
    }
    if (mode == MODE_SPARSE) {
        var row = r;
        if (j.idx_shared) {
            row = kvh;
        }
        let e = didx[row * j.n_idx + s];
        if (e < 0 || u32(e) >= j.live) {
            return -1;
        }
        return e;
    }
    let nb = (j.live + j.block_size - 1u) / j.block_size;
    let span = min(j.block_size, j.live);
    let i = s / span;
    var row = r;
    if (j.idx_shared) {
        row = kvh;
    }
    let b = didx[row * j.n_idx + i];
    if (b < 0 || u32(b) >= nb) {
        return -1;
    }
    let t = u32(b) * j.block_size + (s - i * span);
    if (t >= j.live) {
        return -1;
    }
    return i32(t);
}

// Workgroup `w` of the decode of job `j` (uniform: `j` comes from the uniform params, and
// `j.live` from a uniform-indexed read-only buffer).
fn decode(j: DecodeJob, mode: u32, w: u32, lid: u32) {
    let units = j.rows / GROUP;
    if (w >= units * j.splits) {
        return;
    }
    let u = w / j.splits;
    let split = w - u * j.splits;
    let h0 = u * GROUP;
    let kvh = h0 / j.group;
    let lane = lid % TEAM;
    let team = lid / TEAM;
    let nt = WG_SIZE / TEAM;
    let dim = j.dim;
    let d4 = (dim + 3u) / 4u;

    var n_slots = j.live;
    if (mode == MODE_SPARSE) {
        n_slots = j.n_idx;
    } else if (mode == MODE_BLOCKS) {
        n_slots = j.n_idx * min(j.block_size, j.live);
    }
    let per = (n_slots + j.splits - 1u) / j.splits;
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
                x = ldv_dq((h0 + g) * dim + 4u * c, dim - 4u * c) * j.scale;
            }
            qv[g * EPV + e] = x;
            acc[g * EPV + e] = vec4<f32>(0.0);
        }
    }
    let kvbase = kvh * j.stride * dim;

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
                t = slot_token(j, mode, s, h0, kvh);
            }
            tok[kb] = t;
            if (t >= 0) {
                let rb = kvbase + u32(t) * dim;
                for (var e = 0u; e < EPV; e++) {
                    let c = e * TEAM + lane;
                    if (c < d4) {
                        kx[kb * EPV + e] = ldv_dk(rb + 4u * c, dim - 4u * c);
                        vx[kb * EPV + e] = ldv_dv(rb + 4u * c, dim - 4u * c);
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
    let rec = dim + 2u;
    for (var i = lid; i < GROUP * d4; i += WG_SIZE) {
        let g = i / d4;
        let c = i - g * d4;
        let a = t_acc[g * (HEAD_DIM / 4u) + c];
        let h = h0 + g;
        if (j.splits == 1u) {
            var o = vec4<f32>(0.0);
            if (ll[g] > 0.0) {
                o = a / ll[g];
            }
            if (ALIGNED) {
                st4_dout(h * d4 + c, o);
            } else {
                for (var k = 0u; k < min(4u, dim - 4u * c); k++) {
                    st_dout(h * dim + 4u * c + k, o[k]);
                }
            }
        } else {
            let r = (h * j.splits + split) * rec + 2u + c * 4u;
            for (var k = 0u; k < min(4u, dim - 4u * c); k++) {
                dpart[r + k] = a[k];
            }
        }
    }
    if (lid < GROUP) {
        let h = h0 + lid;
        if (j.splits == 1u) {
            if (ll[lid] > 0.0) {
                dlse[h] = mm[lid] + log(ll[lid]);
            } else {
                dlse[h] = neg_inf();
            }
        } else {
            let r = (h * j.splits + split) * rec;
            dpart[r] = mm[lid];
            dpart[r + 1u] = ll[lid];
        }
    }
}

// Merge of a query row's splits: out = sum_s acc_s e^(m_s - M) / L, lse = M + log L with
// M = max_s m_s, L = sum_s l_s e^(m_s - M); empty (L = 0) gives 0 and -inf.
// Workgroup `w` merges MERGE_DIMS dims of row w / ceil(dim / MERGE_DIMS) (the host's
// `merge_workgroups` dispatches that many). Every loop over the splits is spread over the
// workgroup. The first design walked a row's splits one by one, one lane a dim (3 x splits
// dependent reads a lane); replacing it took dense decode at 32K (256 splits) from 667 to
// 493 µs on the H200 (BENCHMARKS run 65).
// MERGE_DIMS and MERGE_MAX_SPLITS (the most splits decode_plan makes, their weights in
// workgroup memory) come with the spec prelude.
var<workgroup> mg_w: array<f32, MERGE_MAX_SPLITS>;
var<workgroup> mg_red: array<f32, WG_SIZE>;

// Sum (or max) of `v` over the workgroup (WG_SIZE a power of two); uniform control flow.
fn merge_reduce(v: f32, lid: u32, take_max: bool) -> f32 {
    mg_red[lid] = v;
    workgroupBarrier();
    for (var o = WG_SIZE / 2u; o > 0u; o = o >> 1u) {
        if (lid < o) {
            if (take_max) {
                mg_red[lid] = max(mg_red[lid], mg_red[lid + o]);
            } else {
                mg_red[lid] += mg_red[lid + o];
            }
        }
        workgroupBarrier();
    }
    let r = mg_red[0];
    workgroupBarrier();
    return r;
}

fn merge(j: DecodeJob, w: u32, lid: u32) {
    let chunks = (j.dim + MERGE_DIMS - 1u) / MERGE_DIMS;
    let h = w / chunks;
    if (h >= j.rows) {
        return;
    }
    let d0 = (w - h * chunks) * MERGE_DIMS;
    let rec = j.dim + 2u;
    let r0 = h * j.splits * rec;
    var mx = NEG_BIG;
    for (var s = lid; s < j.splits; s += WG_SIZE) {
        mx = max(mx, dpart[r0 + s * rec]);
    }
    let m_all = merge_reduce(mx, lid, true);
    var sum = 0.0;
    for (var s = lid; s < j.splits; s += WG_SIZE) {
        let wt = exp(dpart[r0 + s * rec] - m_all);
        mg_w[s] = wt;
        sum += dpart[r0 + s * rec + 1u] * wt;
    }
    let l_all = merge_reduce(sum, lid, false);
    // Lane (dim d0 + dl, split group sg) adds splits sg, sg + groups, ...: four independent
    // loads an iteration, then the groups' sums meet in workgroup memory.
    let dl = lid % MERGE_DIMS;
    let sg = lid / MERGE_DIMS;
    let groups = WG_SIZE / MERGE_DIMS;
    let d = d0 + dl;
    var a = 0.0;
    if (d < j.dim) {
        let base = r0 + 2u + d;
        var s = sg;
        for (; s + 3u * groups < j.splits; s += 4u * groups) {
            let x0 = dpart[base + s * rec];
            let x1 = dpart[base + (s + groups) * rec];
            let x2 = dpart[base + (s + 2u * groups) * rec];
            let x3 = dpart[base + (s + 3u * groups) * rec];
            a += x0 * mg_w[s] + x1 * mg_w[s + groups] + x2 * mg_w[s + 2u * groups] + x3 * mg_w[s + 3u * groups];
        }
        for (; s < j.splits; s += groups) {
            a += dpart[base + s * rec] * mg_w[s];
        }
    }
    mg_red[lid] = a;
    workgroupBarrier();
    if (sg == 0u && d < j.dim) {
        var t = 0.0;
        for (var g = 0u; g < groups; g++) {
            t += mg_red[g * MERGE_DIMS + dl];
        }
        var o = 0.0;
        if (l_all > 0.0) {
            o = t / l_all;
        }
        st_dout(h * j.dim + d, o);
    }
    if (lid == 0u && d0 == 0u) {
        if (l_all > 0.0) {
            dlse[h] = m_all + log(l_all);
        } else {
            dlse[h] = neg_inf();
        }
    }
}
