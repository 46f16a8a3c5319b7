// cuda/attention.cu: softmax attention with online softmax, writing out + lse (SPEC §7, §2.4, §3.4).
//
// Prepended: AttentionParams, KVS_STORE_* (storage dtype of q/k/v/out), KVS_DPL (head-dim slots
// per lane: D <= 32 * KVS_DPL), common.cuh.
//
// Thread mapping: one warp per query row; lane l owns channels l, l+32, ... (KVS_DPL of them) of
// q and of the output accumulator, so K/V rows are read coalesced. Keys go in tiles of KVS_KT:
// the KVS_KT partial dot products are reduced together (independent shuffles) and folded into the
// running (max m, sum l, acc) with one rescale per tile. lse = m + log(l) of the scaled logits.
// GQA: query head h reads kv head h / (q_heads / kv_heads).
// Split-K (flash-decoding): with p.splits > 1, blockIdx.y picks a contiguous chunk of the row's
// keys, the kernel writes a normalised partial output and its lse to part_out[rows, splits, D] /
// part_lse[rows, splits], and attention_merge combines them with
// out = sum_s exp(lse_s - lse) out_s, lse = log sum_s exp(lse_s). With splits == 1 the kernel
// writes out / lse directly and never touches the part buffers.
// An empty key set gives out = 0, lse = -inf.
//
// Entry points (same names as shaders/attention.wgsl):
//   attention_dense        (p, q[Hq,Tq,D], k, v [Hkv,Tk,D], out[Hq,Tq,D], lse[Hq,Tq], part_out, part_lse)
//                          causal = bottom-right aligned: query i sees keys j <= Tk - Tq + i
//   attention_sparse       (p, q[Hq,D], k, v [Hkv,T,D], idx[idx_heads, n_idx] i32, out[Hq,D], lse[Hq],
//                          part_out, part_lse)
//                          entry e of the row stands for tokens e*block_size .. +block_size (token
//                          ids when block_size = 1, Quest's selected blocks otherwise); entries
//                          outside the key range are padding; the row is idx[h] (idx_heads = Hq)
//                          or idx[h / G] (idx_heads = Hkv)
//   attention_blocks (p, q[Hq,T,D], k, v [Hkv,T,D], sel[Hq,T,n_idx] i32, out[Hq,T,D], lse[Hq,T])
//                          MoBA prefill: tokens of the selected blocks, causal (j <= query position)
//   attention_merge        (p, part_out, part_lse, out, lse)   one warp per query row
//
// TODO(perf): the prefill paths stream K/V per warp through L1/L2; an MMA (tensor core) path
// tiles Q x K in shared memory per block of query rows. Decode does not yet share one K/V load
// across a GQA group's query heads.

#ifndef KVS_KT
#define KVS_KT 8
#endif

struct RowState {
    float m;
    float l;
    float acc[KVS_DPL];
};

__device__ __forceinline__ void row_init(RowState& st) {
    st.m = KVS_NEG_INF;
    st.l = 0.0f;
#pragma unroll
    for (int c = 0; c < KVS_DPL; ++c) st.acc[c] = 0.0f;
}

__device__ __forceinline__ void load_row(const store_t* src, u32 off, u32 dim, float (&x)[KVS_DPL]) {
    const u32 lane = threadIdx.x & 31u;
#pragma unroll
    for (int c = 0; c < KVS_DPL; ++c) {
        const u32 d = lane + 32u * (u32)c;
        x[c] = d < dim ? load_f(src, off + d) : 0.0f;
    }
}

// Folds the keys tok(n), n in [n0, n1), into the row state. tok returns a token id in
// 0..kv_len or -1 (skip). kh, vh point at the kv head's [T, D] rows. Warp-uniform.
template <class Tok>
__device__ void attend_tokens(RowState& st, const float (&qv)[KVS_DPL], const store_t* kh, const store_t* vh,
                              u32 dim, float scale, u32 n0, u32 n1, const Tok& tok) {
    const u32 lane = threadIdx.x & 31u;
    for (u32 base = n0; base < n1; base += KVS_KT) {
        int j[KVS_KT];
        float s[KVS_KT];
#pragma unroll
        for (int u = 0; u < KVS_KT; ++u) {
            const u32 n = base + (u32)u;
            j[u] = n < n1 ? tok(n) : -1;
            float part = 0.0f;
            if (j[u] >= 0) {
                const u32 ko = (u32)j[u] * dim;
#pragma unroll
                for (int c = 0; c < KVS_DPL; ++c) {
                    const u32 d = lane + 32u * (u32)c;
                    if (d < dim) part += qv[c] * load_f(kh, ko + d);
                }
            }
            s[u] = part;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
            for (int u = 0; u < KVS_KT; ++u) s[u] += __shfl_xor_sync(KVS_FULL_MASK, s[u], o);
        }
        float tile_max = KVS_NEG_INF;
#pragma unroll
        for (int u = 0; u < KVS_KT; ++u) {
            s[u] = j[u] >= 0 ? s[u] * scale : KVS_NEG_INF;
            // NaN-propagating max: a NaN logit must reach the output (fmaxf would drop it).
            tile_max = (s[u] > tile_max || s[u] != s[u]) ? s[u] : tile_max;
        }
        if (tile_max == KVS_NEG_INF) continue;  // no valid key in this tile (uniform)
        const float m_new = fmaxf(st.m, tile_max);
        const float corr = expf(st.m - m_new);  // 0 while st.m is still -inf
        st.l *= corr;
#pragma unroll
        for (int c = 0; c < KVS_DPL; ++c) st.acc[c] *= corr;
#pragma unroll
        for (int u = 0; u < KVS_KT; ++u) {
            if (j[u] >= 0) {
                const float pr = expf(s[u] - m_new);
                st.l += pr;
                const u32 vo = (u32)j[u] * dim;
#pragma unroll
                for (int c = 0; c < KVS_DPL; ++c) {
                    const u32 d = lane + 32u * (u32)c;
                    if (d < dim) st.acc[c] += pr * load_f(vh, vo + d);
                }
            }
        }
        st.m = m_new;
    }
}

// Writes the final row (out in the storage dtype, lse f32) or, with splits > 1, the partial
// (normalised f32 output and its lse) of split `split`.
__device__ __forceinline__ void row_finish(const RowState& st, const AttentionParams& p, u32 row, u32 split,
                                           store_t* out, float* lse, float* part_out, float* part_lse) {
    const u32 lane = threadIdx.x & 31u;
    // l == 0 exactly when no key was attended; a NaN l (NaN input) propagates to out and lse.
    const bool any = st.l != 0.0f;
    const float inv = any ? 1.0f / st.l : 0.0f;
    const float row_lse = any ? st.m + logf(st.l) : KVS_NEG_INF;
    if (p.splits <= 1u) {
#pragma unroll
        for (int c = 0; c < KVS_DPL; ++c) {
            const u32 d = lane + 32u * (u32)c;
            if (d < p.dim) store_f(out, row * p.dim + d, st.acc[c] * inv);
        }
        if (lane == 0) lse[row] = row_lse;
    } else {
        const u32 ps = row * p.splits + split;
#pragma unroll
        for (int c = 0; c < KVS_DPL; ++c) {
            const u32 d = lane + 32u * (u32)c;
            if (d < p.dim) part_out[ps * p.dim + d] = st.acc[c] * inv;
        }
        if (lane == 0) part_lse[ps] = row_lse;
    }
}

// [n0, n1) = chunk `split` of `splits` equal chunks of [0, total).
__device__ __forceinline__ void split_range(u32 total, u32 splits, u32 split, u32* n0, u32* n1) {
    const u32 chunk = (total + splits - 1u) / splits;
    *n0 = min(split * chunk, total);
    *n1 = min(*n0 + chunk, total);
}

struct DenseTok {
    __device__ int operator()(u32 n) const { return (int)n; }
};

extern "C" __global__ void attention_dense(const AttentionParams p, const store_t* __restrict__ q,
                                           const store_t* __restrict__ k, const store_t* __restrict__ v,
                                           store_t* __restrict__ out, float* __restrict__ lse,
                                           float* __restrict__ part_out, float* __restrict__ part_lse) {
    const u32 row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);  // (h, i)
    if (row >= p.q_heads * p.q_len) return;                               // whole warp
    const u32 h = row / p.q_len;
    const u32 i = row - h * p.q_len;
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    u32 visible = p.kv_len;
    if (p.causal != 0u) {
        // Query i sits at position kv_len - q_len + i and sees keys 0 ..= that position.
        const u32 end = p.kv_len + i + 1u;
        visible = end > p.q_len ? min(end - p.q_len, p.kv_len) : 0u;
    }
    u32 n0, n1;
    split_range(visible, max(p.splits, 1u), blockIdx.y, &n0, &n1);
    float qv[KVS_DPL];
    load_row(q, row * p.dim, p.dim, qv);
    RowState st;
    row_init(st);
    const u32 kvo = kvh * p.kv_len * p.dim;
    attend_tokens(st, qv, k + kvo, v + kvo, p.dim, p.scale, n0, n1, DenseTok());
    row_finish(st, p, row, blockIdx.y, out, lse, part_out, part_lse);
}

struct SparseTok {
    const int* idx;  // this row's entries
    u32 block_size;
    u32 n_key_blocks;  // ceil(kv_len / block_size)
    u32 kv_len;
    __device__ int operator()(u32 n) const {
        const int e = idx[n / block_size];
        if (e < 0 || (u32)e >= n_key_blocks) return -1;
        const u32 j = (u32)e * block_size + n % block_size;
        return j < kv_len ? (int)j : -1;
    }
};

extern "C" __global__ void attention_sparse(const AttentionParams p, const store_t* __restrict__ q,
                                            const store_t* __restrict__ k, const store_t* __restrict__ v,
                                            const int* __restrict__ idx, store_t* __restrict__ out,
                                            float* __restrict__ lse, float* __restrict__ part_out,
                                            float* __restrict__ part_lse) {
    const u32 h = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (h >= p.q_heads) return;  // whole warp
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    const u32 bs = max(p.block_size, 1u);
    const u32 idx_row = p.idx_heads == p.q_heads ? h : kvh;
    SparseTok tok;
    tok.idx = idx + idx_row * p.n_idx;
    tok.block_size = bs;
    tok.n_key_blocks = (p.kv_len + bs - 1u) / bs;
    tok.kv_len = p.kv_len;
    u32 n0, n1;
    split_range(p.n_idx * bs, max(p.splits, 1u), blockIdx.y, &n0, &n1);
    float qv[KVS_DPL];
    load_row(q, h * p.dim, p.dim, qv);
    RowState st;
    row_init(st);
    const u32 kvo = kvh * p.kv_len * p.dim;
    attend_tokens(st, qv, k + kvo, v + kvo, p.dim, p.scale, n0, n1, tok);
    row_finish(st, p, h, blockIdx.y, out, lse, part_out, part_lse);
}

extern "C" __global__ void attention_blocks(const AttentionParams p, const store_t* __restrict__ q,
                                                  const store_t* __restrict__ k, const store_t* __restrict__ v,
                                                  const int* __restrict__ sel, store_t* __restrict__ out,
                                                  float* __restrict__ lse) {
    const u32 row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);  // (h, t)
    if (row >= p.q_heads * p.q_len) return;                               // whole warp
    const u32 h = row / p.q_len;
    const u32 t = row - h * p.q_len;
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    const u32 bs = max(p.block_size, 1u);
    const u32 n_key_blocks = (p.kv_len + bs - 1u) / bs;
    // Keys visible to the query: j < limit (bottom-right aligned position + 1 when causal).
    u32 limit = p.kv_len;
    if (p.causal != 0u) {
        const u32 end = p.kv_len + t + 1u;
        limit = end > p.q_len ? min(end - p.q_len, p.kv_len) : 0u;
    }
    float qv[KVS_DPL];
    load_row(q, row * p.dim, p.dim, qv);
    RowState st;
    row_init(st);
    const u32 kvo = kvh * p.kv_len * p.dim;
    const int* srow = sel + row * p.n_idx;
    for (u32 w = 0; w < p.n_idx; ++w) {
        const int b = srow[w];
        if (b < 0 || (u32)b >= n_key_blocks) continue;  // padding
        const u32 j0 = (u32)b * bs;
        const u32 j1 = min(j0 + bs, limit);
        if (j0 < j1) attend_tokens(st, qv, k + kvo, v + kvo, p.dim, p.scale, j0, j1, DenseTok());
    }
    AttentionParams direct = p;
    direct.splits = 1u;
    row_finish(st, direct, row, 0u, out, lse, (float*)0, (float*)0);
}

extern "C" __global__ void attention_merge(const AttentionParams p, const float* __restrict__ part_out,
                                           const float* __restrict__ part_lse, store_t* __restrict__ out,
                                           float* __restrict__ lse) {
    const u32 lane = threadIdx.x & 31u;
    const u32 row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= p.q_heads * p.q_len) return;  // whole warp
    const u32 splits = max(p.splits, 1u);
    float m = KVS_NEG_INF;
    for (u32 s = 0; s < splits; ++s) {
        const float ls = part_lse[row * splits + s];
        m = (ls > m || ls != ls) ? ls : m;  // NaN-propagating max
    }
    float acc[KVS_DPL];
#pragma unroll
    for (int c = 0; c < KVS_DPL; ++c) acc[c] = 0.0f;
    float total = 0.0f;
    if (m != KVS_NEG_INF) {
        for (u32 s = 0; s < splits; ++s) {
            const float ls = part_lse[row * splits + s];
            if (ls == KVS_NEG_INF) continue;  // empty split
            const float w = expf(ls - m);
            total += w;
            const u32 po = (row * splits + s) * p.dim;
#pragma unroll
            for (int c = 0; c < KVS_DPL; ++c) {
                const u32 d = lane + 32u * (u32)c;
                if (d < p.dim) acc[c] += w * part_out[po + d];
            }
        }
    }
    const bool any = total != 0.0f;  // NaN propagates
    const float inv = any ? 1.0f / total : 0.0f;
#pragma unroll
    for (int c = 0; c < KVS_DPL; ++c) {
        const u32 d = lane + 32u * (u32)c;
        if (d < p.dim) store_f(out, row * p.dim + d, acc[c] * inv);
    }
    if (lane == 0) lse[row] = any ? m + logf(total) : KVS_NEG_INF;
}
