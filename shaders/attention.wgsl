// attention.wgsl: softmax attention producing `out` and `lse` (SPEC §7, §2.4, §3.4).
// Prepended: AttentionParams, spec prelude (storage dtype of q/k/v/out; HEAD_DIM >= dim sizes
// the workgroup copies of q and of the accumulator), common.wgsl.
//
// One workgroup per query row (head h, query i). Key "slots" are visited in tiles of WG_SIZE,
// one slot per invocation; each slot maps to a key token or to nothing (masked/padding):
//   attention_dense:  slots 0..visible, slot = token; causal is bottom-right aligned (query i at
//                     position kv_len - q_len + i).
//   attention_sparse: slots = the n_idx entries of the query's index row (row h when idx_heads =
//                     q_heads, else its kv head h / G); entries outside 0..kv_len are padding.
//   attention_blocks: slots = n_idx selected blocks x min(bs, kv_len) tokens of row r*q_len + i
//                     (r = h, or its kv head h / G when idx_heads != q_heads);
//                     block ids < 0 or >= NB are padding; causal keeps tokens <= the query position.
// Per tile: logits (f32 dot products), workgroup max, online-softmax rescale of the running
// (max, sum, acc[D]); every invocation then accumulates p_j * v_j for its dims d = lid + k*WG.
// An empty key set gives out = 0 and lse = -inf.
//
// Bindings: 1 q[Hq,q_len,D], 2 k[Hkv,kv_len,D], 3 v[Hkv,kv_len,D], 4 idx i32 (a dummy for dense),
//           5 out[Hq,q_len,D], 6 lse f32[Hq,q_len].

override WG_SIZE: u32 = 64u;

@group(0) @binding(0) var<uniform> p: AttentionParams;
@group(0) @binding(1) var<storage, read> q: array<q_t>;
@group(0) @binding(2) var<storage, read> k: array<k_t>;
@group(0) @binding(3) var<storage, read> v: array<v_t>;
@group(0) @binding(4) var<storage, read> idx: array<i32>;
@group(0) @binding(5) var<storage, read_write> out: array<out_t>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;

var<workgroup> q_row: array<f32, HEAD_DIM>;
var<workgroup> acc: array<f32, HEAD_DIM>;
var<workgroup> probs: array<f32, WG_SIZE>;
var<workgroup> toks: array<i32, WG_SIZE>;
var<workgroup> red: array<f32, WG_SIZE>;

const MODE_DENSE: u32 = 0u;
const MODE_SPARSE: u32 = 1u;
const MODE_BLOCKS: u32 = 2u;

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

// Key token of slot `s` for query row (h, i) at position `qpos`, or -1.
fn slot_token(mode: u32, s: u32, h: u32, i: u32, qpos: u32) -> i32 {
    if (mode == MODE_DENSE) {
        return i32(s);
    }
    if (mode == MODE_SPARSE) {
        var r = h;
        if (p.idx_heads != p.q_heads) {
            r = h / (p.q_heads / p.kv_heads);
        }
        let e = idx[r * p.n_idx + s];
        if (e < 0 || u32(e) >= p.kv_len) {
            return -1;
        }
        return e;
    }
    // A block holds at most span = min(bs, kv_len) tokens, so n_idx * span slots cover them all.
    let nb = (p.kv_len + p.block_size - 1u) / p.block_size;
    let span = min(p.block_size, p.kv_len);
    let j = s / span;
    // A group's heads share their kv head's row when idx_heads = Hkv (Quest with gqa = mean).
    var r = h;
    if (p.idx_heads != p.q_heads) {
        r = h / (p.q_heads / p.kv_heads);
    }
    let b = idx[(r * p.q_len + i) * p.n_idx + j];
    if (b < 0 || u32(b) >= nb) {
        return -1;
    }
    let t = u32(b) * p.block_size + (s - j * span);
    if (t >= p.kv_len || (p.causal == 1u && t > qpos)) {
        return -1;
    }
    return i32(t);
}

// Attention of query row (h, i) over `n_slots` key slots. Workgroup-uniform.
fn attend_row(mode: u32, h: u32, i: u32, n_slots: u32, lid: u32) {
    let d = p.dim;
    let kvh = h / (p.q_heads / p.kv_heads);
    let row = h * p.q_len + i;
    let qbase = row * d;
    let kvbase = kvh * p.kv_len * d;
    let qpos = p.kv_len - p.q_len + i;
    for (var c = lid; c < d; c += WG_SIZE) {
        q_row[c] = ld_q(qbase + c);
        acc[c] = 0.0;
    }
    workgroupBarrier();
    var m = NEG_BIG;
    var l = 0.0;
    for (var base = 0u; base < n_slots; base += WG_SIZE) {
        let s = base + lid;
        var tok = -1;
        if (s < n_slots) {
            tok = slot_token(mode, s, h, i, qpos);
        }
        var logit = NEG_BIG;
        if (tok >= 0) {
            let kb = kvbase + u32(tok) * d;
            var dot = 0.0;
            for (var c = 0u; c < d; c++) {
                dot += q_row[c] * ld_k(kb + c);
            }
            logit = dot * p.scale;
        }
        let m_new = max(m, wg_max(logit, lid));
        var pr = 0.0;
        if (tok >= 0) {
            pr = exp(logit - m_new);
        }
        probs[lid] = pr;
        toks[lid] = tok;
        let tile_sum = wg_sum(pr, lid);  // its barriers also publish probs/toks
        let corr = exp(m - m_new);
        l = l * corr + tile_sum;
        m = m_new;
        for (var c = lid; c < d; c += WG_SIZE) {
            var a = acc[c] * corr;
            for (var j = 0u; j < WG_SIZE; j++) {
                let t = toks[j];
                if (t >= 0) {
                    a += probs[j] * ld_v(kvbase + u32(t) * d + c);
                }
            }
            acc[c] = a;
        }
        workgroupBarrier();
    }
    for (var c = lid; c < d; c += WG_SIZE) {
        var o = 0.0;
        if (l > 0.0) {
            o = acc[c] / l;
        }
        st_out(qbase + c, o);
    }
    if (lid == 0u) {
        if (l > 0.0) {
            lse[row] = m + log(l);
        } else {
            lse[row] = neg_inf();
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn attention_dense(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.q_heads * p.q_len) {
        return;
    }
    let h = row / p.q_len;
    let i = row - h * p.q_len;
    var visible = p.kv_len;
    if (p.causal == 1u) {
        visible = min(p.kv_len, p.kv_len - p.q_len + i + 1u);
    }
    attend_row(MODE_DENSE, h, i, visible, lid);
}

@compute @workgroup_size(WG_SIZE)
fn attention_sparse(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let h = flat_group(wid, nwg);
    if (h >= p.q_heads) {
        return;
    }
    attend_row(MODE_SPARSE, h, 0u, p.n_idx, lid);
}

@compute @workgroup_size(WG_SIZE)
fn attention_blocks(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.q_heads * p.q_len) {
        return;
    }
    let h = row / p.q_len;
    let i = row - h * p.q_len;
    attend_row(MODE_BLOCKS, h, i, p.n_idx * min(p.block_size, p.kv_len), lid);
}
