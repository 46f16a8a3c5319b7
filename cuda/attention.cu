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
//   attention_decode_rows  (p, q[B,Hq,D], k, v [B,Hkv,T,D], lens[B] i32, idx[B,idx_heads,n_idx] i32,
//                          out[B,Hq,D], lse[B,Hq], part_out, part_lse), B = p.q_len
//                          decode over a batched cache (cache_decode, any D): sequence b attends
//                          its live keys 0..lens[b] (n_idx = 0) or the tokens of its idx row
//                          (as attention_sparse) below lens[b]; split-K as attention_dense
//   attention_blocks (p, q[Hq,T,D], k, v [Hkv,T,D], sel[Hq,T,n_idx] i32, out[Hq,T,D], lse[Hq,T])
//                          MoBA prefill: tokens of the selected blocks, causal (j <= query position)
//   attention_merge        (p, part_out, part_lse, out, lse)   one warp per query row
// Faster paths further down (the host picks them where they apply, the kernels above stay the
// general case and the f32 path): attention_decode_g* + attention_merge_rows (decode, one K/V
// load per GQA group, D in {32, 64, 128, 256}); attention_prefill_mma / attention_blocks_mma
// (tensor cores, f16/bf16, D in {64, 128}); attention_buckets_mma + moba_merge_pairs (MoBA
// key-block-major over select.cu's buckets; CUDA only, the WGSL backend runs attention_blocks).

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
            // A NaN logit must reach the output (kvs_nan_max, not fmaxf).
            tile_max = kvs_nan_max(tile_max, s[u]);
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

// The tokens of index row `row` (block_size tokens per entry, >= 1) among keys 0..kv_len.
__device__ __forceinline__ SparseTok sparse_tok(const int* row, u32 block_size, u32 kv_len) {
    SparseTok tok;
    tok.idx = row;
    tok.block_size = max(block_size, 1u);
    tok.n_key_blocks = (kv_len + tok.block_size - 1u) / tok.block_size;
    tok.kv_len = kv_len;
    return tok;
}

extern "C" __global__ void attention_sparse(const AttentionParams p, const store_t* __restrict__ q,
                                            const store_t* __restrict__ k, const store_t* __restrict__ v,
                                            const int* __restrict__ idx, store_t* __restrict__ out,
                                            float* __restrict__ lse, float* __restrict__ part_out,
                                            float* __restrict__ part_lse) {
    const u32 h = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (h >= p.q_heads) return;  // whole warp
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    const u32 idx_row = p.idx_heads == p.q_heads ? h : kvh;
    const SparseTok tok = sparse_tok(idx + idx_row * p.n_idx, p.block_size, p.kv_len);
    u32 n0, n1;
    split_range(p.n_idx * tok.block_size, max(p.splits, 1u), blockIdx.y, &n0, &n1);
    float qv[KVS_DPL];
    load_row(q, h * p.dim, p.dim, qv);
    RowState st;
    row_init(st);
    const u32 kvo = kvh * p.kv_len * p.dim;
    attend_tokens(st, qv, k + kvo, v + kvo, p.dim, p.scale, n0, n1, tok);
    row_finish(st, p, h, blockIdx.y, out, lse, part_out, part_lse);
}

// attention_decode_rows: see the header. One warp per row (b, h), b < q_len (the batch); the
// cache of sequence b is k, v + b * Hkv * kv_len * D (kv_len = the capacity), its live keys
// 0..lens[b] (clamped to 0..kv_len).
extern "C" __global__ void attention_decode_rows(const AttentionParams p, const store_t* __restrict__ q,
                                                 const store_t* __restrict__ k, const store_t* __restrict__ v,
                                                 const int* __restrict__ lens, const int* __restrict__ idx,
                                                 store_t* __restrict__ out, float* __restrict__ lse,
                                                 float* __restrict__ part_out, float* __restrict__ part_lse) {
    const u32 row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);  // b * Hq + h
    const u32 b = row / p.q_heads;
    if (b >= p.q_len) return;  // whole warp
    const u32 h = row % p.q_heads;
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    const int len = lens[b];
    const u32 live = len <= 0 ? 0u : min((u32)len, p.kv_len);
    float qv[KVS_DPL];
    load_row(q, row * p.dim, p.dim, qv);
    RowState st;
    row_init(st);
    const u32 kvo = (b * p.kv_heads + kvh) * p.kv_len * p.dim;
    const u32 splits = max(p.splits, 1u);
    u32 n0, n1;
    if (p.n_idx == 0u) {
        split_range(live, splits, blockIdx.y, &n0, &n1);
        attend_tokens(st, qv, k + kvo, v + kvo, p.dim, p.scale, n0, n1, DenseTok());
    } else {
        const u32 idx_row = b * p.idx_heads + (p.idx_heads == p.q_heads ? h : kvh);
        const SparseTok tok = sparse_tok(idx + idx_row * p.n_idx, p.block_size, live);
        split_range(p.n_idx * tok.block_size, splits, blockIdx.y, &n0, &n1);
        attend_tokens(st, qv, k + kvo, v + kvo, p.dim, p.scale, n0, n1, tok);
    }
    row_finish(st, p, row, blockIdx.y, out, lse, part_out, part_lse);
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
        m = kvs_nan_max(m, ls);
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

// ---------------------------------------------------------------------------------------------
// Decode (one query row per head): GQA-grouped flash-decoding.
//
// attention_decode_g{1,2,4,8} (p, q[Hq,D], k, v [Hkv,T,D], idx, hmask, counts, out[Hq,D], lse[Hq],
//                              part_out, part_lse, mode, hpc, lens)
//   mode 0: dense over keys 0..kv_len (idx, hmask unused);
//   mode 1: the tokens of idx's row (as attention_sparse; block_size tokens per entry);
//   mode 2: as 1, and entry e of the row is attended by head h0+g only if bit g of hmask[row][e]
//           is set, g counted from the kv head's first query head (a kv head's union of its query heads' blocks, for per-query-head Quest).
//   One CTA per (split = blockIdx.x, head chunk = blockIdx.y): the chunk is `hpc` consecutive
//   query heads of one kv head (hpc <= GM), so every K/V row is loaded once for all of them
//   (decode is bytes-bound; reloading per query head multiplies the bytes by the group size).
//   The idx row is idx[kvh] (idx_heads == kv_heads or mode 2) or idx[h0] (hpc == 1).
//   Batched (cache_decode): blockIdx.z = sequence b; every tensor above gains a leading batch
//   dimension (q/out [B,Hq,D], k/v [B,Hkv,T,D] with T = kv_len the capacity, idx
//   [B,idx_heads,n_idx], hmask [B,Hkv,n_idx], counts [B,Hkv], lse [B,Hq], the partials
//   [B,Hq,splits]) and, with `lens` non-null, only keys 0..lens[b] (clamped to 0..kv_len) are live.
//   With gridDim.z == 1 and lens null this is the single-sequence kernel.
// Only for D == 32 * KVS_DPL with KVS_DPL <= 8 (D = 32, 64, 128, 256): each 16-byte vector of a
// row goes to one lane, DEC_LR lanes cover a row, a warp covers DEC_RPW rows per load and
// DEC_U loads per tile, all issued before the first use. Every lane group (DEC_LR lanes) keeps
// its own online-softmax state over the rows it reads; groups and then warps merge by
// log-sum-exp at the end, so the hot loop has no cross-group traffic besides the dot-product
// shuffles. Splits past the live length are empty and write lse = -inf, which the merge skips:
// the launch shape depends on the split count, not on kv_len.
// ---------------------------------------------------------------------------------------------
#if KVS_DPL <= 8
#if defined(KVS_STORE_F32)
#define DEC_VE 4
#else
#define DEC_VE 8
#endif
#define DEC_D (32 * KVS_DPL)
#define DEC_DV (DEC_D / DEC_VE)
#define DEC_LR (DEC_DV < 32 ? DEC_DV : 32)
#define DEC_VPL (DEC_DV / DEC_LR)
#define DEC_RPW (32 / DEC_LR)
#define DEC_CPL (DEC_VE * DEC_VPL)
#define DEC_U (DEC_VPL >= 2 ? 2 : 4)
#define DEC_WARPS 4

// K/V loads of the tuned decode entries (`attention_decode_t*`, KVSPARSE_CUDA_DECODE_TUNE=1):
// streaming, since every K/V byte is read exactly once per decode call. L1 no_allocate keeps the
// rows out of L1, and an L2 evict_first policy (createpolicy, sm_80+) keeps them from pushing
// out the partials, q and the index rows. Same bits as ldg16: only the cache behaviour differs.
__device__ __forceinline__ u64 kvs_policy_evict_first() {
    u64 pol = 0ull;
#if __CUDA_ARCH__ >= 800
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
#endif
    return pol;
}

__device__ __forceinline__ kvs_u4 ldg16_stream(const void* ptr, u64 pol) {
    kvs_u4 r;
#if __CUDA_ARCH__ >= 800
    asm("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(ptr), "l"(pol));
#else
    (void)pol;
    asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(ptr));
#endif
    return r;
}

template <bool STREAM>
__device__ __forceinline__ kvs_u4 ldg16_kv(const void* ptr, u64 pol) {
    if (STREAM) return ldg16_stream(ptr, pol);
    return ldg16(ptr);
}

// Element offset of this lane's vector i within a row.
__device__ __forceinline__ u32 dec_col(u32 lr, int i) { return (lr + DEC_LR * (u32)i) * DEC_VE; }

// Token of key n of a grouped decode CTA's range (n < n1), or -1 (past the range, padding, or
// at or past the live length); *hm = the entry's head mask in mode 2, all ones otherwise.
__device__ __forceinline__ int decode_token(u32 mode, u32 n, u32 n1, const int* __restrict__ irow,
                                            const u32* __restrict__ mrow, u32 bs, u32 n_key_blocks, u32 live,
                                            u32* hm) {
    int j = -1;
    *hm = 0xffffffffu;
    if (n < n1) {
        if (mode == 0u) {
            j = (int)n;
        } else {
            const u32 ent = n / bs;
            const int e = irow[ent];
            if (e >= 0 && (u32)e < n_key_blocks) {
                const u32 jj = (u32)e * bs + (n - ent * bs);
                if (jj < live) {
                    j = (int)jj;
                    if (mode == 2u) *hm = mrow[ent];
                }
            }
        }
    }
    return j;
}

// Where a grouped decode CTA's merged rows go: out / lse (splits == 1) or the split's partial
// (normalised output + lse). Pointers already offset to the CTA's sequence.
struct DecodeRowSink {
    u32 split, splits, h0;
    store_t* out;
    float* lse;
    float* part_out;
    float* part_lse;
    __device__ void put(u32 g, u32 d, float o, float row_lse) const {
        const u32 h = h0 + g;
        if (splits <= 1u) {
            store_f(out, h * DEC_D + d, o);
            if (d == 0u) lse[h] = row_lse;
        } else {
            const u32 ps = h * splits + split;
            part_out[ps * DEC_D + d] = o;
            if (d == 0u) part_lse[ps] = row_lse;
        }
    }
};

// The end of a grouped decode CTA: merges the WARPS warps' states of its hpc heads (max s_m in
// base e, sum s_l, unnormalised rows s_acc; s_m = -inf for a warp that saw no key) by
// log-sum-exp, one thread per (head, column), and hands sink.put(g, d, o, lse) the normalised
// output and lse of head g (out = 0, lse = -inf when no warp saw a key). Follows a
// __syncthreads().
template <int GM, int WARPS, class Sink>
__device__ __forceinline__ void decode_write_rows(const float (*s_m)[GM], const float (*s_l)[GM],
                                                  const float (*s_acc)[GM][DEC_D], u32 hpc, const Sink& sink) {
    // Merge the warps: one thread per (head, column).
    for (u32 t = threadIdx.x; t < hpc * DEC_D; t += blockDim.x) {
        const u32 g = t / DEC_D;
        const u32 d = t - g * DEC_D;
        float mm = KVS_NEG_INF;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) mm = kvs_nan_max(mm, s_m[w][g]);
        float tot = 0.0f;
        float a = 0.0f;
        if (mm != KVS_NEG_INF) {
#pragma unroll
            for (int w = 0; w < WARPS; ++w) {
                if (s_m[w][g] == KVS_NEG_INF) continue;  // empty warp
                const float wt = expf(s_m[w][g] - mm);
                tot += s_l[w][g] * wt;
                a += s_acc[w][g][d] * wt;
            }
        }
        const bool any = tot != 0.0f;  // NaN propagates
        sink.put(g, d, any ? a / tot : 0.0f, any ? mm + logf(tot) : KVS_NEG_INF);
    }
}

// Where sequence blockIdx.z of a batched cache starts in each tensor of a grouped decode, in
// rows (q/out/lse: q_heads per sequence; the split partials: q_heads * splits; k/v: kv_heads *
// kv_len, the capacity) or elements (idx, hmask, counts), and its live keys: all kv_len without
// `lens`, else lens[z] clipped to 0..kv_len. A single-call decode is sequence 0 without lens.
struct DecodeSeq {
    u32 q, part, kv, idx, mask, heads, live;
};

__device__ __forceinline__ DecodeSeq decode_seq(const AttentionParams& p, u32 splits, const int* lens) {
    const u32 z = blockIdx.z;
    DecodeSeq s;
    s.q = z * p.q_heads;
    s.part = z * p.q_heads * splits;
    s.kv = z * p.kv_heads * p.kv_len;
    s.idx = z * p.idx_heads * p.n_idx;
    s.mask = z * p.kv_heads * p.n_idx;
    s.heads = z * p.kv_heads;
    const int len = lens != nullptr ? lens[z] : (int)p.kv_len;
    s.live = len <= 0 ? 0u : min((u32)len, p.kv_len);
    return s;
}

// What a grouped decode CTA (decode_body, attention_decode_mma) derives from its grid position:
// split blockIdx.x of `splits`, query heads h0 .. h0+hpc-1 (chunk blockIdx.y) of kv head kvh,
// tokens per index entry, and its sequence's offsets and live keys (decode_seq).
struct DecodeCta {
    u32 splits, split, h0, kvh, bs, n_key_blocks;
    DecodeSeq sq;
};

__device__ __forceinline__ DecodeCta decode_cta(const AttentionParams& p, u32 hpc, const int* lens) {
    DecodeCta c;
    c.splits = max(p.splits, 1u);
    c.split = blockIdx.x;
    c.h0 = blockIdx.y * hpc;
    c.kvh = c.h0 / (p.q_heads / p.kv_heads);
    c.bs = max(p.block_size, 1u);
    c.sq = decode_seq(p, c.splits, lens);
    c.n_key_blocks = (c.sq.live + c.bs - 1u) / c.bs;
    return c;
}

template <int GM, bool STREAM>
__device__ __forceinline__ void decode_body(const AttentionParams& p, const store_t* __restrict__ q,
                                            const store_t* __restrict__ k, const store_t* __restrict__ v,
                                            const int* __restrict__ idx, const u32* __restrict__ hmask,
                                            const u32* __restrict__ counts, store_t* __restrict__ out,
                                            float* __restrict__ lse, float* __restrict__ part_out,
                                            float* __restrict__ part_lse, u32 mode, u32 hpc,
                                            const int* __restrict__ lens) {
    __shared__ float s_m[DEC_WARPS][GM];
    __shared__ float s_l[DEC_WARPS][GM];
    __shared__ float s_acc[DEC_WARPS][GM][DEC_D];
    kvs_grid_dependency();  // the merge after it may launch now
    const u32 lane = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    const u32 rg = lane / DEC_LR;  // row group within the warp
    const u32 lr = lane % DEC_LR;  // lane within the row
    // Sequence blockIdx.z of a batched cache (see decode_seq).
    const DecodeCta cta = decode_cta(p, hpc, lens);
    const u32 splits = cta.splits, split = cta.split, h0 = cta.h0, kvh = cta.kvh, bs = cta.bs;
    const DecodeSeq sq = cta.sq;
    q += sq.q * DEC_D, out += sq.q * DEC_D, lse += sq.q, part_out += sq.part * DEC_D, part_lse += sq.part;
    k += sq.kv * DEC_D, v += sq.kv * DEC_D, idx += sq.idx, hmask += sq.mask, counts += sq.heads;
    const u32 live = sq.live;
    const u32 n_key_blocks = cta.n_key_blocks;
    const int* irow = idx + (mode == 2u || p.idx_heads != p.q_heads ? kvh : h0) * p.n_idx;
    const u32* mrow = hmask + kvh * p.n_idx;  // read in mode 2 only
    const u32 gbit0 = h0 - kvh * (p.q_heads / p.kv_heads);  // hmask bit of head h0

    float qf[GM][DEC_CPL];
#pragma unroll
    for (int g = 0; g < GM; ++g) {
#pragma unroll
        for (int i = 0; i < DEC_VPL; ++i) {
            if ((u32)g < hpc) {
                vec_widen(ldg16(q + (h0 + (u32)g) * DEC_D + dec_col(lr, i)), &qf[g][i * DEC_VE]);
            } else {
#pragma unroll
                for (int e = 0; e < DEC_VE; ++e) qf[g][i * DEC_VE + e] = 0.0f;
            }
        }
    }
    float m[GM], l[GM], acc[GM][DEC_CPL];
#pragma unroll
    for (int g = 0; g < GM; ++g) {
        m[g] = KVS_NEG_INF;
        l[g] = 0.0f;
#pragma unroll
        for (int c = 0; c < DEC_CPL; ++c) acc[g][c] = 0.0f;
    }

    u32 n0, n1;
    // Mode 2 splits the live entries of the union (counts[kvh] <= n_idx), not its capacity, so
    // the splits stay balanced when the group's selections overlap.
    const u32 live_entries = mode == 2u ? min(counts[kvh], p.n_idx) : p.n_idx;
    split_range(mode == 0u ? live : live_entries * bs, splits, split, &n0, &n1);
    const store_t* kh = k + kvh * p.kv_len * DEC_D;
    const store_t* vh = v + kvh * p.kv_len * DEC_D;
    const u32 tile = DEC_RPW * DEC_U;
    const u64 pol = STREAM ? kvs_policy_evict_first() : 0ull;
    for (u32 base = n0 + warp * tile; base < n1; base += DEC_WARPS * tile) {  // warp-uniform
        int j[DEC_U];
        u32 hm[DEC_U];
#pragma unroll
        for (int u = 0; u < DEC_U; ++u) {
            const u32 n = base + (u32)u * DEC_RPW + rg;
            j[u] = decode_token(mode, n, n1, irow, mrow, bs, n_key_blocks, live, &hm[u]);
        }
        // All loads of the tile before any use: K and V rows in flight together.
        kvs_u4 kw[DEC_U][DEC_VPL], vw[DEC_U][DEC_VPL];
#pragma unroll
        for (int u = 0; u < DEC_U; ++u) {
#pragma unroll
            for (int i = 0; i < DEC_VPL; ++i) {
                if (j[u] >= 0) {
                    const u32 off = (u32)j[u] * DEC_D + dec_col(lr, i);
                    kw[u][i] = ldg16_kv<STREAM>(kh + off, pol);
                    vw[u][i] = ldg16_kv<STREAM>(vh + off, pol);
                } else {
                    kw[u][i] = kvs_u4{0u, 0u, 0u, 0u};
                    vw[u][i] = kvs_u4{0u, 0u, 0u, 0u};
                }
            }
        }
        float s[DEC_U][GM];
#pragma unroll
        for (int u = 0; u < DEC_U; ++u) {
            float kf[DEC_CPL];
#pragma unroll
            for (int i = 0; i < DEC_VPL; ++i) vec_widen(kw[u][i], &kf[i * DEC_VE]);
#pragma unroll
            for (int g = 0; g < GM; ++g) {
                float d = 0.0f;
#pragma unroll
                for (int c = 0; c < DEC_CPL; ++c) d += qf[g][c] * kf[c];
                s[u][g] = d;
            }
        }
        // Sum over the DEC_LR lanes of each row (xor offsets below DEC_LR stay inside the group).
#pragma unroll
        for (int o = DEC_LR / 2; o > 0; o >>= 1) {
#pragma unroll
            for (int u = 0; u < DEC_U; ++u) {
#pragma unroll
                for (int g = 0; g < GM; ++g) s[u][g] += __shfl_xor_sync(KVS_FULL_MASK, s[u][g], o);
            }
        }
        float m_new[GM];
        bool live[GM];
#pragma unroll
        for (int g = 0; g < GM; ++g) {
            float tile_max = KVS_NEG_INF;
#pragma unroll
            for (int u = 0; u < DEC_U; ++u) {
                const bool ok = j[u] >= 0 && (mode != 2u || ((hm[u] >> (gbit0 + (u32)g)) & 1u) != 0u);
                s[u][g] = ok ? s[u][g] * p.scale : KVS_NEG_INF;
                tile_max = kvs_nan_max(tile_max, s[u][g]);
            }
            // A tile with no live key for this head leaves its state untouched (as attend_tokens).
            live[g] = tile_max != KVS_NEG_INF;
            m_new[g] = live[g] ? fmaxf(m[g], tile_max) : m[g];
            const float corr = live[g] ? expf(m[g] - m_new[g]) : 1.0f;
            l[g] *= corr;
#pragma unroll
            for (int c = 0; c < DEC_CPL; ++c) acc[g][c] *= corr;
        }
#pragma unroll
        for (int u = 0; u < DEC_U; ++u) {
            float vf[DEC_CPL];
#pragma unroll
            for (int i = 0; i < DEC_VPL; ++i) vec_widen(vw[u][i], &vf[i * DEC_VE]);
#pragma unroll
            for (int g = 0; g < GM; ++g) {
                // s is -inf exactly for masked rows; a live tile's -inf logit adds 0 (expf(-inf)).
                if (live[g] && s[u][g] != KVS_NEG_INF) {
                    const float pr = expf(s[u][g] - m_new[g]);
                    l[g] += pr;
#pragma unroll
                    for (int c = 0; c < DEC_CPL; ++c) acc[g][c] += pr * vf[c];
                }
            }
        }
#pragma unroll
        for (int g = 0; g < GM; ++g) m[g] = m_new[g];
    }

    // Merge the row groups of the warp (xor offsets DEC_LR .. 16 pair lanes with the same columns).
#pragma unroll
    for (int o = DEC_LR; o < 32; o <<= 1) {
#pragma unroll
        for (int g = 0; g < GM; ++g) {
            const float m2 = __shfl_xor_sync(KVS_FULL_MASK, m[g], o);
            const float l2 = __shfl_xor_sync(KVS_FULL_MASK, l[g], o);
            float a2[DEC_CPL];
#pragma unroll
            for (int c = 0; c < DEC_CPL; ++c) a2[c] = __shfl_xor_sync(KVS_FULL_MASK, acc[g][c], o);
            const float mm = fmaxf(m[g], m2);
            if (mm != KVS_NEG_INF) {  // both empty: nothing to do
                const float wa = expf(m[g] - mm);
                const float wb = expf(m2 - mm);
                l[g] = l[g] * wa + l2 * wb;
#pragma unroll
                for (int c = 0; c < DEC_CPL; ++c) acc[g][c] = acc[g][c] * wa + a2[c] * wb;
                m[g] = mm;
            }
        }
    }
    if (rg == 0u) {
#pragma unroll
        for (int g = 0; g < GM; ++g) {
#pragma unroll
            for (int i = 0; i < DEC_VPL; ++i) {
#pragma unroll
                for (int e = 0; e < DEC_VE; ++e) s_acc[warp][g][dec_col(lr, i) + e] = acc[g][i * DEC_VE + e];
            }
            if (lr == 0u) {
                s_m[warp][g] = m[g];
                s_l[warp][g] = l[g];
            }
        }
    }
    __syncthreads();
    decode_write_rows<GM, DEC_WARPS>(s_m, s_l, s_acc, hpc,
                                     DecodeRowSink{split, splits, h0, out, lse, part_out, part_lse});
}

#define KVS_DECODE_ENTRY(GM)                                                                                  \
    extern "C" __global__ void __launch_bounds__(32 * DEC_WARPS) attention_decode_g##GM(                     \
        const AttentionParams p, const store_t* __restrict__ q, const store_t* __restrict__ k,                \
        const store_t* __restrict__ v, const int* __restrict__ idx, const u32* __restrict__ hmask,            \
        const u32* __restrict__ counts, store_t* __restrict__ out, float* __restrict__ lse,                   \
        float* __restrict__ part_out, float* __restrict__ part_lse, const u32 mode, const u32 hpc,            \
        const int* __restrict__ lens) {                                                                       \
        decode_body<GM, false>(p, q, k, v, idx, hmask, counts, out, lse, part_out, part_lse, mode, hpc, lens); \
    }
KVS_DECODE_ENTRY(1)
KVS_DECODE_ENTRY(2)
KVS_DECODE_ENTRY(4)
KVS_DECODE_ENTRY(8)

// attention_decode_t{1,2,4,8}: the same kernels tuned for bandwidth at long contexts (opt-in,
// KVSPARSE_CUDA_DECODE_TUNE=1; same arguments, same arithmetic in the same order, so the same
// bits): at least 4 resident CTAs per SM (ptxas caps the registers at
// 65536 / (128 * 4) = 128, from 157 for g4 bf16 D128) and streaming K/V loads (ldg16_stream).
// t8 keeps 2 CTAs per SM (its 8-head tile spills at 128 registers; g8 uses 251).
#define KVS_DECODE_TUNED(GM, CTAS)                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * DEC_WARPS, CTAS) attention_decode_t##GM(               \
        const AttentionParams p, const store_t* __restrict__ q, const store_t* __restrict__ k,                \
        const store_t* __restrict__ v, const int* __restrict__ idx, const u32* __restrict__ hmask,            \
        const u32* __restrict__ counts, store_t* __restrict__ out, float* __restrict__ lse,                   \
        float* __restrict__ part_out, float* __restrict__ part_lse, const u32 mode, const u32 hpc,            \
        const int* __restrict__ lens) {                                                                       \
        decode_body<GM, true>(p, q, k, v, idx, hmask, counts, out, lse, part_out, part_lse, mode, hpc, lens);  \
    }
KVS_DECODE_TUNED(1, 4)
KVS_DECODE_TUNED(2, 4)
KVS_DECODE_TUNED(4, 4)
KVS_DECODE_TUNED(8, 2)
#endif  // KVS_DPL <= 8

// attention_merge_rows (p, part_out[rows,splits,D], part_lse[rows,splits], out, lse)
//   The split-K merge of attention_merge with one CTA (KVS_MERGE_THREADS threads) per row. The
//   merge sits on the critical path of every decode, and its bytes come from L2, so it is a
//   chain of round trips: each thread issues its whole first batch of partials (MERGE_BATCH
//   splits of one column; the column's sum is cut into blockDim/D interleaved slices) and their
//   lse together with the row's lse for the max, so that up to 4 * MERGE_BATCH splits (D <= 128)
//   cost one round trip; the max and the weights' total are warp reductions of registers (the
//   same tree in every warp, so every thread agrees on them). splits <= KVS_MERGE_MAX_SPLITS.
// KVS_MERGE_THREADS and KVS_MERGE_MAX_SPLITS: from the host (ops.rs MERGE_THREADS, the launch's
// block size, and DECODE_MAX_SPLITS, the most splits it asks for).
#define MERGE_BATCH 16
extern "C" __global__ void __launch_bounds__(KVS_MERGE_THREADS)
    attention_merge_rows(const AttentionParams p, const float* __restrict__ part_out,
                         const float* __restrict__ part_lse, store_t* __restrict__ out, float* __restrict__ lse) {
    __shared__ float s_red[KVS_MERGE_THREADS];
    kvs_grid_dependency();  // launched right after the decode (Cuda::launch_args)
    const u32 row = blockIdx.x;
    const u32 lane = threadIdx.x & 31u;
    const u32 splits = min(max(p.splits, 1u), (u32)KVS_MERGE_MAX_SPLITS);
    const float* pl = part_lse + row * splits;
    const float* po = part_out + (row * splits) * p.dim;
    const u32 slices = p.dim <= blockDim.x ? blockDim.x / p.dim : 1u;
    const u32 step = p.dim <= blockDim.x ? p.dim : blockDim.x;  // columns per pass
    const u32 r = threadIdx.x / step;                           // slice: splits r, r + slices, ...
    const u32 col = threadIdx.x - r * step;
    // The row's lse by lane (for the max and the total), then this thread's first batch.
    float lv[KVS_MERGE_MAX_SPLITS / 32];
#pragma unroll
    for (int i = 0; i < KVS_MERGE_MAX_SPLITS / 32; ++i) {
        const u32 s = lane + 32u * (u32)i;
        lv[i] = s < splits ? __ldcg(pl + s) : KVS_NEG_INF;
    }
    float xs[MERGE_BATCH], ws[MERGE_BATCH];
    // Splits s0, s0 + slices, ... of column c: value and lse (-inf past the row or the slices,
    // which weighs 0). Loads unconditional on the data, so a batch is in flight at once.
    auto load_batch = [&](u32 c, u32 s0) {
#pragma unroll
        for (int j = 0; j < MERGE_BATCH; ++j) {
            const u32 s = s0 + slices * (u32)j;
            const bool ok = r < slices && s < splits && c < p.dim;
            xs[j] = ok ? __ldcg(po + s * p.dim + c) : 0.0f;
            ws[j] = ok ? __ldcg(pl + s) : KVS_NEG_INF;
        }
    };
    load_batch(col, r);
    // NaN-propagating max of the split lse.
    float m = KVS_NEG_INF;
#pragma unroll
    for (int i = 0; i < KVS_MERGE_MAX_SPLITS / 32; ++i) m = kvs_nan_max(m, lv[i]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float y = __shfl_xor_sync(KVS_FULL_MASK, m, o);
        m = kvs_nan_max(m, y);
    }
    // Empty splits (lse = -inf) weigh 0 and are skipped below, as in attention_merge.
    auto weight = [&](float l) { return lse_weight(m, l); };
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < KVS_MERGE_MAX_SPLITS / 32; ++i) total += weight(lv[i]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(KVS_FULL_MASK, total, o);
    const bool any = total != 0.0f;  // NaN propagates
    const float inv = any ? 1.0f / total : 0.0f;
    for (u32 c0 = 0; c0 < p.dim; c0 += step) {
        float a = 0.0f;
        for (u32 s0 = r;; s0 += slices * MERGE_BATCH) {
            if (c0 != 0u || s0 != r) load_batch(c0 + col, s0);
            // An empty split's row may hold anything: the select drops it.
#pragma unroll
            for (int j = 0; j < MERGE_BATCH; ++j) {
                const float w = weight(ws[j]);
                a += w != 0.0f ? w * xs[j] : 0.0f;
            }
            if (s0 + slices * MERGE_BATCH >= splits) break;
        }
        s_red[threadIdx.x] = a;
        __syncthreads();
        const u32 d = c0 + col;
        if (r == 0u && d < p.dim) {
            float sum = 0.0f;
            for (u32 q2 = 0; q2 < slices; ++q2) sum += s_red[q2 * step + col];
            store_f(out, row * p.dim + d, sum * inv);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) lse[row] = any ? m + logf(total) : KVS_NEG_INF;
}

// ---------------------------------------------------------------------------------------------
// Tensor-core prefill (f16 / bf16 storage, D = 64 or 128): attention_prefill_mma
//   (p, q[Hq,Tq,D], k, v [Hkv,Tk,D], out[Hq,Tq,D], lse[Hq,Tq])   dense, causal or not
// One CTA (4 warps) per (64 query rows, query head); each warp owns 16 rows. K/V tiles of 64 keys
// are staged in shared memory (rows padded by 8 elements so the fragment reads hit 32 distinct
// banks); S = Q K^T and O += P V run on mma.sync m16n8k16 (f32 accumulators), with Q's fragments
// in registers for the whole key loop, the online softmax (base 2, f32) on the S fragments in
// registers, and P re-packed from the S accumulators into A fragments without a trip through
// shared memory. Causal masks are applied only to tiles that cross a row's limit. P is rounded to
// the storage type before P V (as flash attention does): error of the order of the storage
// rounding, not f32's.
// ---------------------------------------------------------------------------------------------
#if (KVS_DPL == 2 || KVS_DPL == 4) && !defined(KVS_STORE_F32)
#define PF_D (32 * KVS_DPL)
// PF_BM (query rows of a CTA), PF_MAX_NB and PF_THREADS come from the host (ops.rs PREFILL_*).
#define PF_BN 64
#define PF_LD (PF_D + 8)

// MMA helpers (kvs_mma16816, kvs_pack2, kvs_ldsm_x2_trans, kvs_ld2): common.cuh.

// MOBA: keys come from the selected blocks (sel[Hq, Tq, n_idx], block_size a multiple of PF_BN,
// ceil(kv_len / block_size) <= PF_MAX_NB): the CTA visits the union of its 64 rows' blocks, in
// ascending order, and each row keeps only its own blocks (a 64-bit row set per block in shared
// memory) on top of the causal limit, as attention_blocks does.
// A warp's query rows as A fragments: PfQueryRegs holds 16 rows' fragments in registers for the
// whole key loop; PfQueryShared reads MT m-tiles of 16 rows from the CTA's query tile in shared
// memory (ldmatrix.x4: lanes 0-15 address rows 0-15 at columns 0-7, lanes 16-31 the same rows at
// columns 8-15, which is the A fragment's register order).
struct PfQueryRegs {
    const u32 (&a)[PF_D / 16][4];
    __device__ __forceinline__ void frag(int, int kk, u32 (&r)[4]) const {
#pragma unroll
        for (int c = 0; c < 4; ++c) r[c] = a[kk][c];
    }
};
struct PfQueryShared {
    const store_t (*qs)[PF_LD];
    u32 row;  // the lane's row of the warp's first m-tile: its first row + (lane & 15)
    u32 col;  // (lane >> 4) * 8
    __device__ __forceinline__ void frag(int mt, int kk, u32 (&r)[4]) const {
        kvs_ldsm_x4(r, &qs[row + (u32)mt * 16u][(u32)kk * 16u + col]);
    }
};

// S (+)= Q K^T for a warp's MT m-tiles of 16 query rows against a 64-key tile in shared memory
// (keys x D, row-major): ldmatrix.x4 gives matrices (n, low 8 columns), (n, high 8), (n+1, low),
// (n+1, high), and each B fragment serves every m-tile (MT = 2 halves the shared-memory reads
// per mma).
template <int MT, class QF>
__device__ __forceinline__ void pf_scores_add(float (&s)[MT][PF_BN / 8][4], const QF& qf, const store_t (*ks)[PF_LD],
                                              u32 lane) {
    const u32 mi = lane >> 3;
#pragma unroll
    for (int kk = 0; kk < PF_D / 16; ++kk) {
        u32 a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) qf.frag(mt, kk, a[mt]);
#pragma unroll
        for (int n = 0; n < PF_BN / 8; n += 2) {
            u32 b[4];
            kvs_ldsm_x4(b, &ks[(u32)n * 8u + (mi >> 1) * 8u + (lane & 7u)][kk * 16 + (mi & 1u) * 8u]);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                kvs_mma16816(s[mt][n], a[mt], b[0], b[1]);
                kvs_mma16816(s[mt][n + 1], a[mt], b[2], b[3]);
            }
        }
    }
}

template <int MT, class QF>
__device__ __forceinline__ void pf_scores(float (&s)[MT][PF_BN / 8][4], const QF& qf, const store_t (*ks)[PF_LD],
                                          u32 lane) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < PF_BN / 8; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
    pf_scores_add(s, qf, ks, lane);
}

// O += P V for the same rows: P is the S accumulators (probabilities by now) rounded to the
// storage type, whose key columns 16kk .. 16kk+15 are exactly P's A fragment; V's tile is in
// shared memory, read by ldmatrix.x4.trans (lanes 16-31 address the rows of column block n + 1).
template <int MT>
__device__ __forceinline__ void pf_accumulate(float (&o)[MT][PF_D / 8][4], const float (&s)[MT][PF_BN / 8][4],
                                              const store_t (*vs)[PF_LD], u32 lane) {
#pragma unroll
    for (int kk = 0; kk < PF_BN / 16; ++kk) {
        u32 pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            pa[mt][0] = kvs_pack2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
            pa[mt][1] = kvs_pack2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
            pa[mt][2] = kvs_pack2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
            pa[mt][3] = kvs_pack2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int n = 0; n < PF_D / 8; n += 2) {
            u32 b[4];
            kvs_ldsm_x4_trans(b, &vs[kk * 16 + (lane & 15u)][((u32)n + (lane >> 4)) * 8u]);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                kvs_mma16816(o[mt][n], pa[mt], b[0], b[1]);
                kvs_mma16816(o[mt][n + 1], pa[mt], b[2], b[3]);
            }
        }
    }
}

// A fragments of a warp's query rows ta (fragment rows 0-7) and tb (8-15) from the head's rows
// qh[T, D] in global memory; zeros for a row that is not live.
__device__ __forceinline__ void pf_load_queries(u32 (&qa)[PF_D / 16][4], const store_t* qh, u32 ta, bool va, u32 tb,
                                                bool vb, u32 tg) {
#pragma unroll
    for (int kk = 0; kk < PF_D / 16; ++kk) {
        const u32 c = (u32)kk * 16u + tg * 2u;
        qa[kk][0] = va ? kvs_ld2(qh + ta * PF_D + c) : 0u;
        qa[kk][1] = vb ? kvs_ld2(qh + tb * PF_D + c) : 0u;
        qa[kk][2] = va ? kvs_ld2(qh + ta * PF_D + c + 8u) : 0u;
        qa[kk][3] = vb ? kvs_ld2(qh + tb * PF_D + c + 8u) : 0u;
    }
}

// Max and sum over the 4 threads of a fragment row group (each holds a quarter of the columns).
__device__ __forceinline__ float pf_quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(KVS_FULL_MASK, x, 1));
    return fmaxf(x, __shfl_xor_sync(KVS_FULL_MASK, x, 2));
}
__device__ __forceinline__ float pf_quad_sum(float x) {
    x += __shfl_xor_sync(KVS_FULL_MASK, x, 1);
    return x + __shfl_xor_sync(KVS_FULL_MASK, x, 2);
}

// Logits to probabilities in place, p = 2^(s * scale * log2 e - mu) as one FMA and ex2 per
// element (mu per row, base 2), adding this thread's share of each row's sum to l_a / l_b.
__device__ __forceinline__ void pf_exponentiate(float (&s)[PF_BN / 8][4], float sl2, float mu_a, float mu_b,
                                                float& l_a, float& l_b) {
#pragma unroll
    for (int n = 0; n < PF_BN / 8; ++n) {
        s[n][0] = kvs_exp2(fmaf(s[n][0], sl2, -mu_a));
        s[n][1] = kvs_exp2(fmaf(s[n][1], sl2, -mu_a));
        s[n][2] = kvs_exp2(fmaf(s[n][2], sl2, -mu_b));
        s[n][3] = kvs_exp2(fmaf(s[n][3], sl2, -mu_b));
        l_a += s[n][0] + s[n][1];
        l_b += s[n][2] + s[n][3];
    }
}

// Writes one of a thread's two rows (half 0: fragment rows 0-7, 1: 8-15): its quarter of the
// columns of o / l to `orow` (the row's first element, plus the thread's column offset), and, from
// the group's first thread, lse = m * ln 2 + log(l) (m in base 2), -inf for a row with no key.
__device__ __forceinline__ void pf_write_row(store_t* orow, float* lse_at, const float (&o)[PF_D / 8][4], int half,
                                             float l, float m, u32 tg) {
    const bool any = l != 0.0f;
    const float inv = any ? 1.0f / l : 0.0f;
#pragma unroll
    for (int n = 0; n < PF_D / 8; ++n) {
        store_f(orow, (u32)n * 8u, o[n][2 * half] * inv);
        store_f(orow, (u32)n * 8u + 1u, o[n][2 * half + 1] * inv);
    }
    if (tg == 0u) *lse_at = any ? m * 0.6931471805599453f + logf(l) : KVS_NEG_INF;
}

// The three kinds of query tile prefill_mma_body runs.
#define PF_DENSE 0    // 64 consecutive query rows, every key tile up to the causal limit
#define PF_UNION 1    // the same rows, the union of their selected blocks (row sets in shared memory)
#define PF_BUCKETS 2  // 64 entries of one (query head, key block) bucket against that block's keys
// The bucket lists of select.cu's moba_bucket_* kernels (PF_BUCKETS only): bucket b = hl * nb +
// block of query head h0 + hl holds the tokens entries[start[b] .. start[b+1]); its tiles are
// tile_start[b] .. tile_start[b+1]; tile_of maps a tile back to its bucket; n buckets.
struct BucketTiles {
    const u32* entries;
    const u32* start;
    const u32* tile_start;
    const u32* tile_of;
    u32 nb;
    u32 h0;
    u32 n;
};
// Shared memory of the dense prefill with MT = 2 (dynamic: past the 48 KiB of static memory):
// the CTA's 128 query rows, then one K and one V tile, rows padded to PF_LD (the host's
// prefill_wide_smem in ops.rs sizes the launch by the same layout).
#define PF_WIDE_SMEM_BYTES ((2 * PF_BM + 2 * PF_BN) * PF_LD * (int)sizeof(store_t))
// MT: m-tiles of 16 query rows per warp (1, or 2 for the dense prefill: FlashAttention-2's 128 x
// 64 tile, whose K / V fragments each serve two m-tiles and whose K / V tiles serve 128 rows, half
// the shared-memory and L2 reads per FLOP; the query tile then lives in shared memory, as two
// tiles of fragments in registers would not fit beside 2 x 16 rows of O and S).
template <int MODE, int MT>
__device__ __forceinline__ void prefill_mma_body(const AttentionParams& p, const store_t* __restrict__ q,
                                                 const store_t* __restrict__ k, const store_t* __restrict__ v,
                                                 const int* __restrict__ sel, store_t* __restrict__ out,
                                                 float* __restrict__ lse, const BucketTiles& bt) {
    static_assert(MT == 1 || (MT == 2 && MODE == PF_DENSE), "two m-tiles per warp: the dense prefill only");
    constexpr bool MOBA = MODE == PF_UNION;
    constexpr int R = 2 * MT;             // rows per thread: m-tile i / 2, fragment half i % 2
    constexpr u32 BM = (u32)PF_BM * MT;   // rows per CTA (PF_THREADS / 32 warps of 16 MT rows)
    static_assert(PF_THREADS / 32 * 16 == PF_BM, "prefill: 16 rows per warp and m-tile");
    store_t (*ks)[PF_LD];
    store_t (*vs)[PF_LD];
    store_t (*qs)[PF_LD] = nullptr;
    if constexpr (MT == 1) {
        __shared__ __attribute__((aligned(16))) store_t ks_tile[PF_BN][PF_LD];
        __shared__ __attribute__((aligned(16))) store_t vs_tile[PF_BN][PF_LD];
        ks = ks_tile;
        vs = vs_tile;
    } else {
        extern __shared__ __attribute__((aligned(16))) unsigned char pf_wide_smem[];
        qs = reinterpret_cast<store_t (*)[PF_LD]>(pf_wide_smem);
        ks = qs + BM;
        vs = ks + PF_BN;
    }
    __shared__ u32 rows_lo[MOBA ? PF_MAX_NB : 1];  // bit i: row r0 + i selected the block
    __shared__ u32 rows_hi[MOBA ? PF_MAX_NB : 1];  // bit i: row r0 + 32 + i
    __shared__ u32 s_lim[2];                       // PF_BUCKETS: min and max of the rows' limits
    const u32 tid = threadIdx.x;
    const u32 lane = tid & 31u;
    const u32 warp = tid >> 5;
    const u32 gq = lane >> 2;  // fragment row (and key / column group)
    const u32 tg = lane & 3u;  // thread in the group
    // Keys visible to row r: j < lim(r) (bottom-right aligned when causal), as attention_dense.
    const long long off = (long long)p.kv_len - (long long)p.q_len;
    auto lim = [&](u32 r) -> u32 {
        if (p.causal == 0u) return p.kv_len;
        const long long e = off + (long long)r + 1;
        return e <= 0 ? 0u : (e < (long long)p.kv_len ? (u32)e : p.kv_len);
    };
    // This thread's rows of the tile: the warp's 16 MT rows from warp * 16 MT, fragment rows gq
    // and gq + 8 of each m-tile.
    u32 row[R];
#pragma unroll
    for (int i = 0; i < R; ++i) row[i] = warp * 16u * MT + (u32)(i >> 1) * 16u + gq + (u32)(i & 1) * 8u;
    u32 h, r0 = 0u, key_begin = 0u, key_end, tile_lim_min;
    // Per row: the query token, whether it exists, and where its output goes (row of out / lse).
    u32 tok[R];
    bool live[R];
    unsigned long long orow[R];
    if (MODE == PF_BUCKETS) {
        const u32 tile = blockIdx.x;
        if (tile >= bt.tile_start[bt.n]) return;  // the grid is sized for the most tiles possible
        const u32 b = bt.tile_of[tile];
        const u32 hl = b / bt.nb;
        const u32 blk = b - hl * bt.nb;
        h = bt.h0 + hl;
        const u32 first = bt.start[b] + (tile - bt.tile_start[b]) * BM;
        const u32 n_rows = min(BM, bt.start[b + 1u] - first);
#pragma unroll
        for (int i = 0; i < R; ++i) live[i] = row[i] < n_rows;
#pragma unroll
        for (int i = 0; i < R; ++i) tok[i] = live[i] ? bt.entries[first + row[i]] : 0u;
#pragma unroll
        for (int i = 0; i < R; ++i) orow[i] = first + row[i];
        if (tid == 0u) {
            s_lim[0] = 0xffffffffu;
            s_lim[1] = 0u;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < R; ++i) {
            if (tg == 0u && live[i]) {
                atomicMin(&s_lim[0], lim(tok[i]));
                atomicMax(&s_lim[1], lim(tok[i]));
            }
        }
        __syncthreads();
        const u32 bs = max(p.block_size, 1u);
        key_begin = blk * bs;
        key_end = min(s_lim[1], min(key_begin + bs, p.kv_len));
        tile_lim_min = s_lim[0];
    } else {
        h = blockIdx.y;
        // Heaviest (latest) causal tiles first, so the short ones fill the tail of the grid.
        r0 = (gridDim.x - 1u - blockIdx.x) * BM;
#pragma unroll
        for (int i = 0; i < R; ++i) tok[i] = r0 + row[i];
#pragma unroll
        for (int i = 0; i < R; ++i) live[i] = tok[i] < p.q_len;
#pragma unroll
        for (int i = 0; i < R; ++i) orow[i] = (unsigned long long)h * p.q_len + tok[i];
        const u32 last_row = min(r0 + BM, p.q_len) - 1u;
        key_end = lim(last_row);  // no row of the tile sees a key at or past this
        tile_lim_min = lim(r0);   // every row sees the keys below this
    }
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    u32 lims[R];
#pragma unroll
    for (int i = 0; i < R; ++i) lims[i] = live[i] ? lim(tok[i]) : 0u;

    const store_t* qh = q + (unsigned long long)h * p.q_len * PF_D;
    u32 qa[PF_D / 16][4];  // MT = 1 only (unused, so removed, otherwise)
    if constexpr (MT == 1) pf_load_queries(qa, qh, tok[0], live[0], tok[1], live[1], tg);
    const float sl2 = p.scale * 1.4426950408889634f;  // logits in base 2
    float o[MT][PF_D / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < PF_D / 8; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
    float m[R], l[R];
#pragma unroll
    for (int i = 0; i < R; ++i) {
        m[i] = KVS_NEG_INF;
        l[i] = 0.0f;
    }

    const store_t* kh = k + kvh * p.kv_len * PF_D;
    const store_t* vh = v + kvh * p.kv_len * PF_D;
    const u32 bs = max(p.block_size, 1u);
    const u32 n_key_blocks = (p.kv_len + bs - 1u) / bs;
    if (MOBA) {
        for (u32 b = tid; b < n_key_blocks; b += blockDim.x) rows_lo[b] = rows_hi[b] = 0u;
        __syncthreads();
        const u32 n_rows = min(r0 + BM, p.q_len) - r0;
        for (u32 e = tid; e < n_rows * p.n_idx; e += blockDim.x) {
            const u32 i = e / p.n_idx;
            const int b = sel[(h * p.q_len + r0 + i) * p.n_idx + (e - i * p.n_idx)];
            if (b >= 0 && (u32)b < n_key_blocks) atomicOr(i < 32u ? &rows_lo[b] : &rows_hi[b], 1u << (i & 31u));
        }
        __syncthreads();
    }
    // Dense: key tiles 0, 64, ...; MOBA: the tiles of each block some row of the tile selected;
    // buckets: the tiles of the bucket's block. The row sets and limits are in shared memory, so
    // every thread takes the same path.
    u32 blk = 0u, sub = 0u, dense_next = key_begin;
    auto next_tile = [&](u32& j) -> bool {
        if (!MOBA) {
            if (dense_next >= key_end) return false;
            j = dense_next;
            dense_next += PF_BN;
            return true;
        }
        while (blk < n_key_blocks) {
            const bool any_row = (rows_lo[blk] | rows_hi[blk]) != 0u;
            if (any_row && sub * PF_BN < bs && blk * bs + sub * PF_BN < key_end) break;
            ++blk;
            sub = 0u;
        }
        if (blk >= n_key_blocks) return false;
        j = blk * bs + sub * PF_BN;
        ++sub;
        return true;
    };
    // Rows j .. j+n-1 of a head ([len, D]) into a shared tile by cp.async, zeros past len. A
    // thread copies the same 16-byte column of rows st_r, st_r + step, ... of every tile, so only
    // the row offset is computed per tile (the staging loop was most of the kernel's integer work).
    const u32 st_r = tid / (PF_D / 8u);
    const u32 st_col = (tid % (PF_D / 8u)) * 8u;
    const u32 st_step = blockDim.x / (PF_D / 8u);
    auto stage = [&](store_t (*dst)[PF_LD], const store_t* src, u32 j, u32 n, u32 len) {
        for (u32 r = st_r; r < n; r += st_step) {
            const bool in = j + r < len;
            kvs_cp_async16(&dst[r][st_col], in ? src + (j + r) * PF_D + st_col : src, in ? 16u : 0u);
        }
    };
    // MT = 2: the query tile by cp.async with the first K tile (zero rows past q_len).
    if constexpr (MT == 2) stage(qs, qh, r0, BM, p.q_len);
    const PfQueryShared q_shared{qs, warp * 16u * MT + (lane & 15u), (lane >> 4) * 8u};
    const PfQueryRegs q_regs{qa};
    // Software pipeline with one K and one V tile (FlashAttention-2's schedule): V of tile j is
    // copied while S = Q K_j^T is computed, K of the next tile while P V runs. Before this the
    // copies were synchronous (H200, T 32K: 46.4 ms, 190 TFLOP/s, 32% of SDPA).
    u32 j0 = 0u;
    bool have = next_tile(j0);
    if (have) stage(ks, kh, j0, PF_BN, p.kv_len);
    while (have) {
        kvs_cp_async_wait_all();
        __syncthreads();  // K_j visible to every warp; every warp is done with the last V tile
        stage(vs, vh, j0, PF_BN, p.kv_len);
        float s[MT][PF_BN / 8][4];
        if constexpr (MT == 1)
            pf_scores(s, q_regs, ks, lane);
        else
            pf_scores(s, q_shared, ks, lane);
        // Uniform over the CTA: only tiles crossing a row's limit (or, for MoBA, a block some
        // row did not select) pay for the per-element mask.
        bool masked = j0 + PF_BN > tile_lim_min;
        u32 cap[R];
#pragma unroll
        for (int i = 0; i < R; ++i) cap[i] = lims[i];
        if (MOBA) {
            const u32 blk_of = j0 / bs;
            const u32 lo = rows_lo[blk_of], hi = rows_hi[blk_of];
#pragma unroll
            for (int i = 0; i < R; ++i) {
                const bool take = ((row[i] < 32u ? lo >> row[i] : hi >> (row[i] - 32u)) & 1u) != 0u;
                cap[i] = take ? lims[i] : 0u;
            }
            masked = masked || lo != 0xffffffffu || hi != 0xffffffffu;
        }
        // Max over the raw logits (the scale is positive, so it commutes with the max), then
        // p = 2^(s * scale * log2e - m) as one FMA and ex2.approx.ftz per element.
        float mx[R];
#pragma unroll
        for (int i = 0; i < R; ++i) mx[i] = KVS_NEG_INF;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int n = 0; n < PF_BN / 8; ++n) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    if (masked) {
                        const u32 key = j0 + (u32)n * 8u + tg * 2u + (u32)e;
                        s[mt][n][e] = key < cap[2 * mt] ? s[mt][n][e] : KVS_NEG_INF;
                        s[mt][n][2 + e] = key < cap[2 * mt + 1] ? s[mt][n][2 + e] : KVS_NEG_INF;
                    }
                    mx[2 * mt] = fmaxf(mx[2 * mt], s[mt][n][e]);
                    mx[2 * mt + 1] = fmaxf(mx[2 * mt + 1], s[mt][n][2 + e]);
                }
            }
        }
        float mu[R];
        bool unmoved = true;  // no row's max moved: every rescale factor is exactly 1
#pragma unroll
        for (int i = 0; i < R; ++i) {
            mx[i] = pf_quad_max(mx[i]);
            const float mn = fmaxf(m[i], mx[i] * sl2);
            // A row with no visible key yet keeps m = -inf; subtract 0 then so that exp2(-inf) = 0.
            mu[i] = mn == KVS_NEG_INF ? 0.0f : mn;
            mx[i] = kvs_exp2(m[i] - mu[i]);  // the rescale factor from here on
            m[i] = mn;
            l[i] *= mx[i];
            unmoved = unmoved && mx[i] == 1.0f;
        }
        // Past the first tiles a row's max rarely moves: skip the accumulator rescale (PF_D / 2
        // multiplies per m-tile and thread) when no row of the warp needs it.
        if (!__all_sync(KVS_FULL_MASK, unmoved)) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int n = 0; n < PF_D / 8; ++n) {
                    o[mt][n][0] *= mx[2 * mt];
                    o[mt][n][1] *= mx[2 * mt];
                    o[mt][n][2] *= mx[2 * mt + 1];
                    o[mt][n][3] *= mx[2 * mt + 1];
                }
            }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) pf_exponentiate(s[mt], sl2, mu[2 * mt], mu[2 * mt + 1], l[2 * mt], l[2 * mt + 1]);
        u32 j_next = 0u;
        const bool more = next_tile(j_next);
        kvs_cp_async_wait_all();
        __syncthreads();  // V_j visible to every warp; every warp is done with K_j
        if (more) stage(ks, kh, j_next, PF_BN, p.kv_len);
        pf_accumulate(o, s, vs, lane);
        j0 = j_next;
        have = more;
    }
    // Row sums: each of the 4 threads of a row holds a quarter of the columns.
#pragma unroll
    for (int i = 0; i < R; ++i) {
        l[i] = pf_quad_sum(l[i]);
        if (live[i]) pf_write_row(out + orow[i] * PF_D + tg * 2u, lse + orow[i], o[i >> 1], i & 1, l[i], m[i], tg);
    }
}

// attention_prefill_mma (p, q, k, v, out, lse): dense prefill, one CTA (4 warps) per 64 query
// rows and head; attention_prefill_mma_wide: the same per 128 rows (two m-tiles a warp, the query
// tile in PF_WIDE_SMEM_BYTES of dynamic shared memory).
extern "C" __global__ void __launch_bounds__(PF_THREADS)
    attention_prefill_mma(const AttentionParams p, const store_t* __restrict__ q, const store_t* __restrict__ k,
                          const store_t* __restrict__ v, store_t* __restrict__ out, float* __restrict__ lse) {
    prefill_mma_body<PF_DENSE, 1>(p, q, k, v, (const int*)0, out, lse, BucketTiles{});
}
extern "C" __global__ void __launch_bounds__(PF_THREADS)
    attention_prefill_mma_wide(const AttentionParams p, const store_t* __restrict__ q, const store_t* __restrict__ k,
                               const store_t* __restrict__ v, store_t* __restrict__ out, float* __restrict__ lse) {
    prefill_mma_body<PF_DENSE, 2>(p, q, k, v, (const int*)0, out, lse, BucketTiles{});
}

// attention_blocks_mma (p, q, k, v, sel, out, lse): attention_blocks on tensor cores (see
// prefill_mma_body's MOBA notes for the limits the host checks).
extern "C" __global__ void __launch_bounds__(PF_THREADS)
    attention_blocks_mma(const AttentionParams p, const store_t* __restrict__ q, const store_t* __restrict__ k,
                         const store_t* __restrict__ v, const int* __restrict__ sel, store_t* __restrict__ out,
                         float* __restrict__ lse) {
    prefill_mma_body<PF_UNION, 1>(p, q, k, v, sel, out, lse, BucketTiles{});
}

// attention_buckets_mma (p, q, k, v, entries, start, tile_start, tile_of, part_o[pairs, D],
//                        part_lse[pairs] f32, nb, h0, n)
//   MoBA's key-block-major pass: one CTA per tile of 64 entries of a bucket (see select.cu's
//   moba_bucket_*): the entries' query rows against the bucket's block, causal for the tokens of
//   the block itself; writes each pair's normalised output (storage type) and lse at the pair's
//   position. Grid: at least tile_start[n] CTAs (the rest return); f16/bf16, D 64 / 128.
extern "C" __global__ void __launch_bounds__(PF_THREADS)
    attention_buckets_mma(const AttentionParams p, const store_t* __restrict__ q, const store_t* __restrict__ k,
                          const store_t* __restrict__ v, const u32* __restrict__ entries,
                          const u32* __restrict__ start, const u32* __restrict__ tile_start,
                          const u32* __restrict__ tile_of, store_t* __restrict__ part_o,
                          float* __restrict__ part_lse, const u32 nb, const u32 h0, const u32 n) {
    prefill_mma_body<PF_BUCKETS, 1>(p, q, k, v, (const int*)0, part_o, part_lse,
                                 BucketTiles{entries, start, tile_start, tile_of, nb, h0, n});
}

// attention_bucket_runs_mma (p, q, k, v, entries, start, run_start, run_of, part_o, part_lse, nb, h0,
//                            n, run_rows)
//   attention_buckets_mma for block size 64 with one CTA per run of up to run_rows / 64 tiles of
//   a bucket (run_start / run_of count runs where attention_buckets_mma's lists count tiles): the
//   block's K and V are staged once, each tile's 64 query rows are loaded while the tile before
//   computes, and with a single key tile the softmax needs no running state. The default (runs
//   of 8; KVSPARSE_CUDA_MOBA_RUN): 1.10-1.19x attention_buckets_mma's MoBA at 32K (run 36).
extern "C" __global__ void __launch_bounds__(PF_THREADS)
    attention_bucket_runs_mma(const AttentionParams p, const store_t* __restrict__ q, const store_t* __restrict__ k,
                              const store_t* __restrict__ v, const u32* __restrict__ entries,
                              const u32* __restrict__ start, const u32* __restrict__ run_start,
                              const u32* __restrict__ run_of, store_t* __restrict__ part_o,
                              float* __restrict__ part_lse, const u32 nb, const u32 h0, const u32 n,
                              const u32 run_rows) {
    __shared__ __attribute__((aligned(16))) store_t ks[PF_BN][PF_LD];
    __shared__ __attribute__((aligned(16))) store_t vs[PF_BN][PF_LD];
    const u32 run = blockIdx.x;
    if (run >= run_start[n]) return;  // the grid is sized for the most runs possible
    const u32 tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    const u32 gq = lane >> 2, tg = lane & 3u;
    const u32 b = run_of[run];
    const u32 hl = b / nb;
    const u32 blk = b - hl * nb;
    const u32 h = h0 + hl;
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    const u32 row_begin = start[b] + (run - run_start[b]) * run_rows;
    const u32 row_end = min(start[b + 1u], row_begin + run_rows);
    const u32 key0 = blk * PF_BN;  // block size == PF_BN (the host checks)
    {
        const store_t* kh = k + ((unsigned long long)kvh * p.kv_len + key0) * PF_D;
        const store_t* vh = v + ((unsigned long long)kvh * p.kv_len + key0) * PF_D;
        for (u32 c = tid; c < PF_BN * (PF_D / 8u); c += blockDim.x) {
            const u32 r = c / (PF_D / 8u), col = (c % (PF_D / 8u)) * 8u;
            const bool live = key0 + r < p.kv_len;
            kvs_cp_async16(&ks[r][col], live ? kh + r * PF_D + col : kh, live ? 16u : 0u);
            kvs_cp_async16(&vs[r][col], live ? vh + r * PF_D + col : vh, live ? 16u : 0u);
        }
    }
    const store_t* qh = q + (unsigned long long)h * p.q_len * PF_D;
    // This thread's rows of a tile at `row0` of the bucket: ia = warp*16 + gq and ia + 8.
    const u32 ia = warp * 16u + gq, ib = ia + 8u;
    auto load_rows = [&](u32 row0, u32& ta, u32& tb, u32 (&qa)[PF_D / 16][4]) {
        const bool va = row0 + ia < row_end, vb = row0 + ib < row_end;
        ta = va ? entries[row0 + ia] : 0xffffffffu;
        tb = vb ? entries[row0 + ib] : 0xffffffffu;
        pf_load_queries(qa, qh, ta, va, tb, vb, tg);
    };
    u32 ta, tb, qa[PF_D / 16][4];
    load_rows(row_begin, ta, tb, qa);
    kvs_cp_async_wait_all();
    __syncthreads();
    const float sl2 = p.scale * 1.4426950408889634f;  // logits in base 2
#pragma unroll 1
    for (u32 row0 = row_begin; row0 < row_end; row0 += PF_BM) {
        // The next tile's rows, requested before this tile's math so their loads overlap it
        // (past the run every row is dead: no loads, zeros). Unconditional: a guarded call made
        // ptxas spill the loop-carried fragments.
        u32 tna, tnb, qn[PF_D / 16][4];
        load_rows(row0 + PF_BM, tna, tnb, qn);
        float s[1][PF_BN / 8][4];
        pf_scores(s, PfQueryRegs{qa}, ks, lane);
        // Causal limit key0 + c <= t: only the block's own tokens (t < key0 + 64) are cut; rows
        // past the bucket (t = 0xffffffff) see every key and are never written.
        float mx_a = KVS_NEG_INF, mx_b = KVS_NEG_INF;
#pragma unroll
        for (int j = 0; j < PF_BN / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const u32 key = key0 + (u32)j * 8u + tg * 2u + (u32)e;
                s[0][j][e] = key <= ta && key < p.kv_len ? s[0][j][e] : KVS_NEG_INF;
                s[0][j][2 + e] = key <= tb && key < p.kv_len ? s[0][j][2 + e] : KVS_NEG_INF;
                mx_a = fmaxf(mx_a, s[0][j][e]);
                mx_b = fmaxf(mx_b, s[0][j][2 + e]);
            }
        }
        mx_a = pf_quad_max(mx_a);
        mx_b = pf_quad_max(mx_b);
        // A row without a visible key keeps max -inf: subtract 0 so that exp2(-inf) = 0.
        const float mu_a = mx_a == KVS_NEG_INF ? 0.0f : mx_a * sl2;
        const float mu_b = mx_b == KVS_NEG_INF ? 0.0f : mx_b * sl2;
        float l_a = 0.0f, l_b = 0.0f;
        pf_exponentiate(s[0], sl2, mu_a, mu_b, l_a, l_b);
        l_a = pf_quad_sum(l_a);
        l_b = pf_quad_sum(l_b);
        float o[1][PF_D / 8][4];
#pragma unroll
        for (int j = 0; j < PF_D / 8; ++j) o[0][j][0] = o[0][j][1] = o[0][j][2] = o[0][j][3] = 0.0f;
        pf_accumulate(o, s, vs, lane);
        const unsigned long long ra = row0 + ia, rb = row0 + ib;
        if (ra < row_end) pf_write_row(part_o + ra * PF_D + tg * 2u, part_lse + ra, o[0], 0, l_a, mu_a, tg);
        if (rb < row_end) pf_write_row(part_o + rb * PF_D + tg * 2u, part_lse + rb, o[0], 1, l_b, mu_b, tg);
        ta = tna;
        tb = tnb;
#pragma unroll
        for (int kk = 0; kk < PF_D / 16; ++kk)
#pragma unroll
            for (int c = 0; c < 4; ++c) qa[kk][c] = qn[kk][c];
    }
}

#if defined(KVS_STORE_BF16)
// moba_route_mma (p, q[Hq,T,D], kmean[Hkv,NB,D] f32, selected[Hq,T,W] i32, n_blocks, n_local,
//                 force_first, key_stride)
//   MoBA's gate and per-token routing in one pass, bf16 storage: the scores q . mean of every
//   block a token may pick never leave shared memory (the separate moba_gate + select_blocks
//   wrote and re-read Hq*T*NB f32, 2.1 GB at 32K tokens, and took 6.7 + 4.5 ms on the H200).
//   Scores on tensor cores: q is bf16 already and each f32 mean is split into three bf16 parts
//   (the top 8 significant bits, the next 8, the last 8, by truncation; exact for |mean| >=
//   2^-110, below that off by under 2^-133 where the parts turn subnormal: checked in numpy over
//   2M random floats), so the three products q . part are exact and only their f32 accumulation
//   rounds (in the tensor cores' order, not channel order). Only the blocks up to the CTA's last
//   token's block are scored (later ones are never candidates). Selection as select_blocks mode
//   1 (the same forced set, budget, key order and ties to the lower index), one warp per token
//   with its keys in registers (route_select_row; NB <= ROUTE_MAX_NB). The selection is what
//   costs: at 32K the first two versions (a radix select over a warp histogram, run 37; all
//   ROUTE_ITEMS registers compared per bit, run 38) took 13.1-13.3 ms, ALU-bound on 5.0G warp
//   instructions (ncu, run 39), more than the two kernels they replace; with only the registers a
//   row needs, 6.7 ms (run 40; starting the search below the bits all keys share changed nothing,
//   run 42). One CTA (ROUTE_THREADS) per
//   (64 tokens, query head); warp w scores rows 16(w%4).. of the tile against half w/4 of each
//   64-block chunk, then routes tokens 8w .. 8w+7.
//   Dynamic shared memory (route_smem_bytes on the host): the three parts of a chunk's means,
//   [3][64][PF_LD] bf16, and the keys (f32_order_key of the scores) [64][key_stride] u32,
//   key_stride a multiple of 64 plus 8 (>= NB) so that a warp's float2 stores of 8 rows hit
//   distinct banks.
#define ROUTE_WARPS (ROUTE_THREADS / 32)
static_assert(ROUTE_WARPS == 8 && PF_BM == 64, "moba_route_mma: 4 row groups of 16 x 2 column halves");
#define ROUTE_ITEMS (ROUTE_MAX_NB / 32)  // blocks a lane ranks (ROUTE_MAX_NB: ops.rs)
static_assert(ROUTE_MAX_NB % 128 == 0 && ROUTE_ITEMS <= 32 && ROUTE_ITEMS > 16, "register steps of 4; item bits fit a u32");
static_assert((PF_BN * PF_D) % (ROUTE_THREADS * 4) == 0, "a chunk's means split evenly into float4 loads");
// Sum of v over the warp (redux.sync where the arch has it).
__device__ __forceinline__ u32 route_warp_sum(u32 v) {
#if __CUDA_ARCH__ >= 800
    return __reduce_add_sync(KVS_FULL_MASK, v);
#else
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(KVS_FULL_MASK, v, o);
    return v;
#endif
}
// The three bf16 parts (as their 16 bits) of x: x = p0 + p1 + p2 exactly for finite |x| >=
// 2^-110; a non-finite x is its own first part (inf - inf would make a NaN).
__device__ __forceinline__ void route_split(float x, u32& p0, u32& p1, u32& p2) {
    const u32 top = __float_as_uint(x) & 0xffff0000u;
    const float r1 = x - __uint_as_float(top);
    const u32 mid = __float_as_uint(r1) & 0xffff0000u;
    const u32 low = __float_as_uint(r1 - __uint_as_float(mid)) & 0xffff0000u;
    const bool finite = isfinite(x);
    p0 = finite ? top >> 16 : (u32)kvs_f2bf(x);
    p1 = finite ? mid >> 16 : 0u;
    p2 = finite ? low >> 16 : 0u;
}
// One token's row for route_select_row: its keys in shared memory, its selected row, its
// current block and the selection's settings.
struct RouteRow {
    const u32* keys;
    int* out;
    u32 cur, n_blocks, n_local, force_first, width;
};

// select_blocks mode 1 for one row by one warp, blocks lane + 32i (i < ITEMS, ITEMS * 32 > cur)
// in registers: forced = block 0 under force_first and cur - n_local + 1 ..= cur; competing = the
// other blocks before cur, whose keys are kept (0 for the rest). These are common.cuh's
// BlockSelectSrc rules with past_only, written out here: expressed through BlockSelectSrc the
// kernel compiled to different PTX (extra branches) that no GPU run has checked, so a change to
// one must be made to the other. thr = the want-th largest
// competing key, the largest value with at least `want` keys at or above it, bit by bit from the
// top with one warp sum per bit; a zero key never counts at a candidate >= 1, so the rest need
// no mask there (an eligible zero key, -NaN's, is only kept through take_eq). Then the kept
// blocks in ascending order by ballot positions, ties to the lower block, -1 up to the width.
template <int ITEMS>
__device__ __forceinline__ void route_select_row(const RouteRow& r, u32 lane) {
    const u32 n = r.cur + 1u;
    u32 key[ITEMS];
    u32 forc = 0u, elig = 0u;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const u32 b = lane + 32u * (u32)i;
        const bool f = b < n && ((r.force_first != 0u && b == 0u) || (b <= r.cur && b + r.n_local > r.cur));
        const bool e = b < r.cur && !f;
        key[i] = e ? r.keys[b] : 0u;
        forc |= (f ? 1u : 0u) << i;
        elig |= (e ? 1u : 0u) << i;
    }
    const u32 n_forced = route_warp_sum((u32)__popc(forc));
    const u32 budget = r.n_blocks > n_forced ? r.n_blocks - n_forced : 0u;
    const u32 want = min(budget, route_warp_sum((u32)__popc(elig)));
    u32 thr = 0u, take_eq = 0u;
    if (want > 0u) {  // warp-uniform
#pragma unroll 1
        for (int bit = 31; bit >= 0; --bit) {
            const u32 c = thr | (1u << bit);
            u32 at_least[4] = {0u, 0u, 0u, 0u};  // four chains, not one ITEMS adds long
#pragma unroll
            for (int i = 0; i < ITEMS; ++i) at_least[i & 3] += key[i] >= c ? 1u : 0u;
            if (route_warp_sum((at_least[0] + at_least[1]) + (at_least[2] + at_least[3])) >= want) thr = c;
        }
        u32 above = 0u;
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) above += ((elig >> i) & 1u) != 0u && key[i] > thr ? 1u : 0u;
        take_eq = want - route_warp_sum(above);
    }
    const u32 lt = (1u << lane) - 1u;  // lanes below this one
    u32 pos = 0u, eq_seen = 0u;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        if (32u * (u32)i >= n) break;  // warp-uniform
        const bool e = want > 0u && ((elig >> i) & 1u) != 0u;
        const u32 eq = __ballot_sync(KVS_FULL_MASK, e && key[i] == thr);
        const bool take = ((forc >> i) & 1u) != 0u || (e && key[i] > thr) ||
                          (((eq >> lane) & 1u) != 0u && eq_seen + (u32)__popc(eq & lt) < take_eq);
        const u32 tm = __ballot_sync(KVS_FULL_MASK, take);
        const u32 at = pos + (u32)__popc(tm & lt);
        if (take && at < r.width) r.out[at] = (int)(lane + 32u * (u32)i);
        pos += (u32)__popc(tm);
        eq_seen += (u32)__popc(eq);
    }
    for (u32 i = pos + lane; i < r.width; i += 32u) r.out[i] = -1;
}

extern "C" __global__ void __launch_bounds__(ROUTE_THREADS)
    moba_route_mma(const AttentionParams p, const store_t* __restrict__ q, const float* __restrict__ kmean,
                   int* __restrict__ selected, const u32 n_blocks, const u32 n_local, const u32 force_first,
                   const u32 key_stride) {
    extern __shared__ __attribute__((aligned(16))) unsigned char route_smem[];
    store_t(*ms)[PF_BN][PF_LD] = reinterpret_cast<store_t(*)[PF_BN][PF_LD]>(route_smem);
    u32* keys = reinterpret_cast<u32*>(route_smem + sizeof(store_t) * 3 * PF_BN * PF_LD);
    const u32 tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    const u32 gq = lane >> 2, tg = lane & 3u;
    const u32 h = blockIdx.y;
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    const u32 bs = max(p.block_size, 1u);
    const u32 nb = (p.q_len + bs - 1u) / bs;
    const u32 width = p.n_idx;
    const u32 t0 = blockIdx.x * PF_BM;
    const u32 nb_live = (min(t0 + PF_BM, p.q_len) - 1u) / bs + 1u;  // blocks up to the last token's
    const u32 rg = warp & 3u, half = warp >> 2;
    const u32 ta = t0 + rg * 16u + gq, tb = ta + 8u;
    const bool va = ta < p.q_len, vb = tb < p.q_len;
    u32 qa[PF_D / 16][4];
    pf_load_queries(qa, q + (unsigned long long)h * p.q_len * PF_D, ta, va, tb, vb, tg);
    const float* mh = kmean + (unsigned long long)kvh * nb * PF_D;
    // The means of a chunk, ROUTE_LOADS float4 a thread, loaded a chunk ahead: the next chunk's
    // loads are in flight while this one's products run (one CTA per SM: nothing else hides them).
    constexpr int ROUTE_LOADS = PF_BN * PF_D / (ROUTE_THREADS * 4);
    float4 next[ROUTE_LOADS];
    auto load_chunk = [&](u32 j0) {
#pragma unroll
        for (int it = 0; it < ROUTE_LOADS; ++it) {
            const u32 e = (tid + (u32)it * ROUTE_THREADS) * 4u;
            const u32 r = e / PF_D, c = e % PF_D;
            next[it] = j0 + r < nb_live ? *reinterpret_cast<const float4*>(mh + (unsigned long long)(j0 + r) * PF_D + c)
                                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    };
    load_chunk(0u);
#pragma unroll 1
    for (u32 j0 = 0; j0 < nb_live; j0 += PF_BN) {
        __syncthreads();  // every warp is done with the previous chunk's parts
#pragma unroll
        for (int it = 0; it < ROUTE_LOADS; ++it) {
            const u32 e = (tid + (u32)it * ROUTE_THREADS) * 4u;
            const u32 r = e / PF_D, c = e % PF_D;
            const float x[4] = {next[it].x, next[it].y, next[it].z, next[it].w};
            u32 bits[3][4];
#pragma unroll
            for (int i = 0; i < 4; ++i) route_split(x[i], bits[0][i], bits[1][i], bits[2][i]);
#pragma unroll
            for (int k = 0; k < 3; ++k)
                *reinterpret_cast<uint2*>(&ms[k][r][c]) =
                    make_uint2(bits[k][0] | (bits[k][1] << 16), bits[k][2] | (bits[k][3] << 16));
        }
        if (j0 + PF_BN < nb_live) load_chunk(j0 + PF_BN);
        __syncthreads();
        // This warp's 16 rows against blocks j0 + 32 half .. + 31: 4 column tiles of 8.
        float s[4][4];
#pragma unroll
        for (int n = 0; n < 4; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        const u32 mi = lane >> 3;
#pragma unroll
        for (int part = 0; part < 3; ++part) {
#pragma unroll
            for (int kk = 0; kk < PF_D / 16; ++kk) {
#pragma unroll
                for (int n = 0; n < 4; n += 2) {
                    u32 b[4];
                    kvs_ldsm_x4(b, &ms[part][half * 32u + (u32)n * 8u + (mi >> 1) * 8u + (lane & 7u)]
                                      [kk * 16 + (mi & 1u) * 8u]);
                    kvs_mma16816(s[n], qa[kk], b[0], b[1]);
                    kvs_mma16816(s[n + 1], qa[kk], b[2], b[3]);
                }
            }
        }
        // s[n][e]: row ta (e < 2) or tb, block j0 + 32 half + 8n + 2tg + e % 2; the key rows
        // hold blocks up to a multiple of 64 past nb_live (never read past it).
#pragma unroll
        for (int n = 0; n < 4; ++n) {
            const u32 col = j0 + half * 32u + (u32)n * 8u + tg * 2u;
            const u32 ra = rg * 16u + gq;
            *reinterpret_cast<uint2*>(&keys[ra * key_stride + col]) =
                make_uint2(f32_order_key(s[n][0]), f32_order_key(s[n][1]));
            *reinterpret_cast<uint2*>(&keys[(ra + 8u) * key_stride + col]) =
                make_uint2(f32_order_key(s[n][2]), f32_order_key(s[n][3]));
        }
    }
    __syncthreads();
#pragma unroll 1
    for (u32 lr = warp * (PF_BM / ROUTE_WARPS); lr < (warp + 1u) * (PF_BM / ROUTE_WARPS); ++lr) {
        const u32 t = t0 + lr;
        if (t >= p.q_len) break;  // warp-uniform
        const u32 cur = min(t / bs, nb - 1u);
        const RouteRow r{keys + lr * key_stride, selected + ((unsigned long long)h * p.q_len + t) * width, cur,
                         n_blocks, n_local, force_first, width};
        // As many registers a lane as the row needs, in steps of 4 (a row of NB blocks costs its
        // NB / 32 compares per bit, not ROUTE_MAX_NB / 32).
        const u32 groups = cur / 32u + 1u;
        if (groups <= 4u) {
            route_select_row<4>(r, lane);
        } else if (groups <= 8u) {
            route_select_row<8>(r, lane);
        } else if (groups <= 12u) {
            route_select_row<12>(r, lane);
        } else if (groups <= 16u) {
            route_select_row<16>(r, lane);
        } else {
            route_select_row<ROUTE_ITEMS>(r, lane);
        }
    }
}
#endif

// moba_merge_pairs (p, pair_pos[nh*T*W] u32, part_o, part_lse, out[Hq,T,D], lse[Hq,T], h0, nh)
//   One warp per (chunk head, token): the partials of the token's selected blocks (pair_pos,
//   0xffffffff for none), merged by their lse in slot order: out = sum_s exp(lse_s - L) o_s with
//   L = logsumexp_s lse_s. p.n_idx = W; f16/bf16, D 64 / 128.
extern "C" __global__ void __launch_bounds__(256)
    moba_merge_pairs(const AttentionParams p, const u32* __restrict__ pair_pos, const store_t* __restrict__ part_o,
                     const float* __restrict__ part_lse, store_t* __restrict__ out, float* __restrict__ lse,
                     const u32 h0, const u32 nh) {
    const u32 lane = threadIdx.x & 31u;
    const unsigned long long row = (unsigned long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (unsigned long long)nh * p.q_len) return;  // warp-uniform
    const u32* pos = pair_pos + row * p.n_idx;
    float m = KVS_NEG_INF;
    for (u32 s = lane; s < p.n_idx; s += 32u)
        if (pos[s] != 0xffffffffu) m = fmaxf(m, part_lse[pos[s]]);
    m = warp_max(m);
    const unsigned long long orow = (unsigned long long)h0 * p.q_len + row;
    if (m == KVS_NEG_INF) {
        for (u32 c = lane; c < PF_D; c += 32u) store_f(out + orow * PF_D, c, 0.0f);
        if (lane == 0u) lse[orow] = KVS_NEG_INF;
        return;
    }
    float l = 0.0f;
    for (u32 s = lane; s < p.n_idx; s += 32u)
        if (pos[s] != 0xffffffffu) l += expf(part_lse[pos[s]] - m);
    l = warp_sum(l);
    const float total = m + logf(l);
    float acc[KVS_DPL];
#pragma unroll
    for (int c = 0; c < KVS_DPL; ++c) acc[c] = 0.0f;
    for (u32 s = 0; s < p.n_idx; ++s) {
        const u32 at = pos[s];
        if (at == 0xffffffffu) continue;
        const float w = expf(part_lse[at] - total);
        const store_t* src = part_o + (unsigned long long)at * PF_D;
#pragma unroll
        for (int c = 0; c < KVS_DPL; ++c) acc[c] = fmaf(w, load_f(src, lane + 32u * (u32)c), acc[c]);
    }
#pragma unroll
    for (int c = 0; c < KVS_DPL; ++c) store_f(out + orow * PF_D, lane + 32u * (u32)c, acc[c]);
    if (lane == 0u) lse[orow] = total;
}
// ---------------------------------------------------------------------------------------------
// Tensor-core grouped decode (f16 / bf16, D = 64 or 128, opt-in: KVSPARSE_CUDA_DECODE_MMA=1):
// attention_decode_mma, the arguments, grid, modes 0/1/2, batch / lens handling and partials of
// attention_decode_g* (see there), for hpc <= MD_GM query heads per CTA.
// Per warp and tile of MD_KT keys: S = Q K^T on mma.sync m16n8k16 with the hpc query heads as
// the A rows 0..hpc-1 (rows hpc..15 zero, never written back) and the tile's K rows as the B
// columns, the online softmax (base 2, f32) on the S fragments, then O += P V with P rounded to
// the storage type in registers (as attention_prefill_mma) and V from shared memory through
// ldmatrix.trans. K goes straight from global memory into B fragments with 16-byte loads: the
// head dimension is the reduction of Q K^T, so any permutation of it applied to both Q and K
// gives the same S; thread (g, t) of a fragment takes the 16-byte chunks t, t+4, ... of its row,
// and word w of those chunks is the B (and A) register of k-step w/2, half w%2. V rows go to the
// warp's shared tile by cp.async (zero-filled for masked keys, which also carry P = 0). Keys are
// masked by a per-tile ballot of the row's live keys (per head in mode 2). Each warp keeps its own
// state; the warps merge at the end by decode_write_rows, as in decode_body.
// ---------------------------------------------------------------------------------------------
#define MD_GM 8
// MD_KT, the keys a warp takes per tile: from the host (ops.rs DECODE_MMA_KEY_TILE, which sizes the
// cluster decode's dynamic shared memory by it).
#define MD_CH (PF_D / 8)  // 16-byte chunks per row

// The key loop of the tensor-core decode (attention_decode_mma, quest_decode_cluster_g*): query
// heads h0 .. h0+hpc-1 (rows of q) over keys [n0, n1) of the CTA's range (tokens of kh / vh, the
// kv head's [T, D] rows, as decode_token maps them), warp w taking the tiles n0 + w * MD_KT,
// + WARPS * MD_KT, ...; vs holds the WARPS warps' V tiles. Leaves each warp's state in s_m (base
// e), s_l and the unnormalised rows s_acc (aliasing vs) for decode_write_rows, behind a
// __syncthreads().
template <int WARPS>
__device__ __forceinline__ void decode_mma_keys(const store_t* __restrict__ q, u32 h0, u32 hpc,
                                                const store_t* __restrict__ kh, const store_t* __restrict__ vh,
                                                u32 mode, const int* irow, const u32* __restrict__ mrow, u32 hbit,
                                                u32 bs, u32 n_key_blocks, u32 live, u32 n0, u32 n1, float scale,
                                                store_t (*vs)[MD_KT][PF_LD], float (*s_m)[MD_GM],
                                                float (*s_l)[MD_GM]) {
    const u32 lane = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    const u32 gq = lane >> 2;  // fragment row (query head h0 + gq) and key column group
    const u32 tg = lane & 3u;  // thread in the group
    // Q's A fragments (rows 8..15 are zero: a[1] = a[3] = 0): words 2kk, 2kk+1 of row gq's chunks.
    u32 qw[KVS_DPL * 4];
#pragma unroll
    for (int i = 0; i < KVS_DPL; ++i) {
        const kvs_u4 x = gq < hpc ? ldg16(q + (h0 + gq) * PF_D + (tg + 4u * (u32)i) * 8u) : kvs_u4{0u, 0u, 0u, 0u};
        qw[4 * i] = x.x;
        qw[4 * i + 1] = x.y;
        qw[4 * i + 2] = x.z;
        qw[4 * i + 3] = x.w;
    }
    const float sl2 = scale * 1.4426950408889634f;  // logits in base 2
    float o[PF_D / 8][4];
#pragma unroll
    for (int n = 0; n < PF_D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m = KVS_NEG_INF, l = 0.0f;  // row gq, base 2; l over this thread's columns

    store_t(*vw)[PF_LD] = vs[warp];
    // The tile's token and head mask, read one tile ahead: in modes 1 and 2 the index row is a
    // load that the tile's K/V loads depend on, so it is issued with the previous tile's.
    u32 hm_next;
    int jl_next = decode_token(mode, n0 + warp * MD_KT + lane, n1, irow, mrow, bs, n_key_blocks, live, &hm_next);
    for (u32 base = n0 + warp * MD_KT; base < n1; base += WARPS * MD_KT) {  // warp-uniform
        const u32 hm = hm_next;
        const int jl = jl_next;
        // Bit c: key base + c is attended by this row's head.
        u32 keep;
        if (mode == 2u) {
            keep = 0u;
#pragma unroll
            for (int g = 0; g < MD_GM; ++g) {
                const u32 b = __ballot_sync(KVS_FULL_MASK, jl >= 0 && ((hm >> ((hbit - gq + (u32)g) & 31u)) & 1u) != 0u);
                keep = (u32)g == gq ? b : keep;
            }
        } else {
            keep = __ballot_sync(KVS_FULL_MASK, jl >= 0);
        }
        __syncwarp();  // the previous tile's V fragments are read
        // V rows of the tile -> shared (zeros for dropped keys).
#pragma unroll
        for (int i = 0; i < MD_KT * MD_CH / 32; ++i) {
            const u32 c = (u32)i * 32u + lane;
            const u32 r = c / MD_CH;
            const u32 col = (c - r * MD_CH) * 8u;
            const int jr = __shfl_sync(KVS_FULL_MASK, jl, (int)r);
            kvs_cp_async16(&vw[r][col], jr >= 0 ? vh + (u32)jr * PF_D + col : vh, jr >= 0 ? 16u : 0u);
        }
        // K rows straight into B fragments: row t*8 + gq, chunks tg + 4i.
        u32 kw[MD_KT / 8][KVS_DPL * 4];
#pragma unroll
        for (int t = 0; t < MD_KT / 8; ++t) {
            const int jr = __shfl_sync(KVS_FULL_MASK, jl, t * 8 + (int)gq);
#pragma unroll
            for (int i = 0; i < KVS_DPL; ++i) {
                const kvs_u4 x =
                    jr >= 0 ? ldg16(kh + (u32)jr * PF_D + (tg + 4u * (u32)i) * 8u) : kvs_u4{0u, 0u, 0u, 0u};
                kw[t][4 * i] = x.x;
                kw[t][4 * i + 1] = x.y;
                kw[t][4 * i + 2] = x.z;
                kw[t][4 * i + 3] = x.w;
            }
        }
        jl_next = decode_token(mode, base + WARPS * MD_KT + lane, n1, irow, mrow, bs, n_key_blocks, live, &hm_next);
        float s[MD_KT / 8][4];
#pragma unroll
        for (int t = 0; t < MD_KT / 8; ++t) {
            s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < PF_D / 16; ++kk) {
                const u32 a[4] = {qw[2 * kk], 0u, qw[2 * kk + 1], 0u};
                kvs_mma16816(s[t], a, kw[t][2 * kk], kw[t][2 * kk + 1]);
            }
        }
        // Online softmax of row gq over the tile (columns t*8 + tg*2 + e of this thread).
        float mx = KVS_NEG_INF;
#pragma unroll
        for (int t = 0; t < MD_KT / 8; ++t) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const u32 c = (u32)t * 8u + tg * 2u + (u32)e;
                const float x = ((keep >> c) & 1u) != 0u ? s[t][e] * sl2 : KVS_NEG_INF;
                s[t][e] = x;
                mx = fmaxf(mx, x);
            }
        }
        mx = fmaxf(mx, __shfl_xor_sync(KVS_FULL_MASK, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(KVS_FULL_MASK, mx, 2));
        const float mn = fmaxf(m, mx);
        // A row with no attended key yet keeps m = -inf; subtract 0 then so that exp2(-inf) = 0.
        const float mu = mn == KVS_NEG_INF ? 0.0f : mn;
        const float corr = exp2f(m - mu);
        m = mn;
        l *= corr;
#pragma unroll
        for (int n = 0; n < PF_D / 8; ++n) {
            o[n][0] *= corr;
            o[n][1] *= corr;
        }
#pragma unroll
        for (int t = 0; t < MD_KT / 8; ++t) {
            s[t][0] = exp2f(s[t][0] - mu);
            s[t][1] = exp2f(s[t][1] - mu);
            l += s[t][0] + s[t][1];
        }
        kvs_cp_async_wait_all();
        __syncwarp();  // every lane's V rows have landed
#pragma unroll
        for (int kk = 0; kk < MD_KT / 16; ++kk) {
            // S accumulators of key columns 16kk .. 16kk+15 are P's A fragment (rows 8..15 zero).
            const u32 pa[4] = {kvs_pack2(s[2 * kk][0], s[2 * kk][1]), 0u, kvs_pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               0u};
#pragma unroll
            for (int n = 0; n < PF_D / 8; n += 2) {
                u32 b[4];  // B fragments of output columns n*8.. and (n+1)*8..
                kvs_ldsm_x4_trans(b, &vw[kk * 16 + (lane & 15u)][(n + (int)(lane >> 4)) * 8]);
                kvs_mma16816(o[n], pa, b[0], b[1]);
                kvs_mma16816(o[n + 1], pa, b[2], b[3]);
            }
        }
    }
    l += __shfl_xor_sync(KVS_FULL_MASK, l, 1);
    l += __shfl_xor_sync(KVS_FULL_MASK, l, 2);
    __syncthreads();  // every warp is done with its V tile: vs becomes s_acc
    float(*s_acc)[MD_GM][PF_D] = reinterpret_cast<float(*)[MD_GM][PF_D]>(&vs[0][0][0]);
    if (gq < hpc) {
#pragma unroll
        for (int n = 0; n < PF_D / 8; ++n) {
            s_acc[warp][gq][n * 8 + tg * 2u] = o[n][0];
            s_acc[warp][gq][n * 8 + tg * 2u + 1u] = o[n][1];
        }
        if (tg == 0u) {
            s_m[warp][gq] = m == KVS_NEG_INF ? KVS_NEG_INF : m * 0.6931471805599453f;  // base e
            s_l[warp][gq] = l;
        }
    }
    __syncthreads();
}

extern "C" __global__ void __launch_bounds__(32 * DEC_WARPS)
    attention_decode_mma(const AttentionParams p, const store_t* __restrict__ q, const store_t* __restrict__ k,
                         const store_t* __restrict__ v, const int* __restrict__ idx, const u32* __restrict__ hmask,
                         const u32* __restrict__ counts, store_t* __restrict__ out, float* __restrict__ lse,
                         float* __restrict__ part_out, float* __restrict__ part_lse, const u32 mode, const u32 hpc,
                         const int* __restrict__ lens) {
    // The warps' V tiles; after the key loop, the warps' output rows for decode_write_rows.
    __shared__ __attribute__((aligned(16))) store_t vs[DEC_WARPS][MD_KT][PF_LD];
    __shared__ float s_m[DEC_WARPS][MD_GM];
    __shared__ float s_l[DEC_WARPS][MD_GM];
    static_assert(sizeof(vs) >= sizeof(float) * DEC_WARPS * MD_GM * PF_D, "s_acc aliases vs");
    kvs_grid_dependency();  // the merge after it may launch now
    const DecodeCta cta = decode_cta(p, hpc, lens);
    const u32 splits = cta.splits, split = cta.split, h0 = cta.h0, kvh = cta.kvh, bs = cta.bs;
    const DecodeSeq sq = cta.sq;
    q += sq.q * PF_D, out += sq.q * PF_D, lse += sq.q, part_out += sq.part * PF_D, part_lse += sq.part;
    k += sq.kv * PF_D, v += sq.kv * PF_D, idx += sq.idx, hmask += sq.mask, counts += sq.heads;
    const u32 live = sq.live;
    const u32 n_key_blocks = cta.n_key_blocks;
    const int* irow = idx + (mode == 2u || p.idx_heads != p.q_heads ? kvh : h0) * p.n_idx;
    const u32* mrow = hmask + kvh * p.n_idx;  // read in mode 2 only
    const u32 hbit = (h0 - kvh * (p.q_heads / p.kv_heads) + ((threadIdx.x & 31u) >> 2)) & 31u;  // this row's hmask bit
    u32 n0, n1;
    const u32 live_entries = mode == 2u ? min(counts[kvh], p.n_idx) : p.n_idx;
    split_range(mode == 0u ? live : live_entries * bs, splits, split, &n0, &n1);
    decode_mma_keys<DEC_WARPS>(q, h0, hpc, k + kvh * p.kv_len * PF_D, v + kvh * p.kv_len * PF_D, mode, irow, mrow,
                               hbit, bs, n_key_blocks, live, n0, n1, p.scale, vs, s_m, s_l);
    float(*s_acc)[MD_GM][PF_D] = reinterpret_cast<float(*)[MD_GM][PF_D]>(&vs[0][0][0]);
    decode_write_rows<MD_GM, DEC_WARPS>(s_m, s_l, s_acc, hpc,
                                        DecodeRowSink{split, splits, h0, out, lse, part_out, part_lse});
}

// ---------------------------------------------------------------------------------------------
// Quest decode in one launch (sm_90+: thread block clusters and distributed shared memory).
// quest_decode_cluster_g{2,4,8} (p, q[Hq,D], k, v [Hkv,T,D], kmin, kmax [Hkv,NB,D],
//                                  mean[Hkv,NB] f32, selected[Hkv,width] i32, out[Hq,D], lse[Hq],
//                                  nb, lanes, n_blocks, n_local, force_first)
//   What quest_select_kv_g* followed by the grouped sparse decode and attention_merge_rows compute
//   (GqaMode::Mean: one block set per kv head, G = Hq / Hkv = the entry's GM query heads), with
//   the three launches and their single-CTA tails replaced by one cluster of C CTAs (the cluster
//   size, 8 or 16; grid (C, Hkv)) per kv head:
//   1. CTA r scores blocks [r * ceil(NB / C), ...) for the group and writes their group means
//      (quest_score_run + GroupMeanSink, so the means are quest_select_kv's to the bit);
//   2. the forced top-k of the row of means is found by the cluster: each CTA keeps its share of
//      the keys in registers (QC_ITEMS per thread) and the radix passes of
//      block_radix_threshold_by add up the CTAs' 256-bin histograms through distributed shared
//      memory, so every CTA walks the same totals to the same threshold; the kept blocks go to
//      `selected` ascending (ties lowest index first, as block_select_row), then -1 padding;
//   3. CTA r attends to chunk r of the selected tokens (decode_mma_keys over its entries of the
//      cluster's list, gathered from the CTAs that kept them), so the budget is spread evenly
//      whatever blocks were chosen;
//   4. the C partials are merged by log-sum-exp (attention_merge_rows' rules) from distributed
//      shared memory, each CTA writing a slice of the (head, column) outputs.
//   p: q_heads, kv_heads, kv_len = T, dim, scale, block_size, n_idx = width. Every CTA takes part
//   in every cluster barrier (all branches before them are uniform over the cluster).
// ---------------------------------------------------------------------------------------------
#define QC_THREADS (32 * QUEST_CLUSTER_WARPS)
#define QC_ITEMS QUEST_CLUSTER_ITEMS  // selection items per thread: blocks per CTA <= QC_THREADS * QC_ITEMS

// decode_write_rows' sink for a CTA's partial in its own shared memory (read by the cluster).
struct SmemRowSink {
    float (*po)[PF_D];
    float* plse;
    __device__ void put(u32 g, u32 d, float o, float row_lse) const {
        po[g][d] = o;
        if (d == 0u) plse[g] = row_lse;
    }
};

template <int GM>
__device__ __forceinline__ void quest_decode_cluster_body(
    const AttentionParams& p, const store_t* __restrict__ q, const store_t* __restrict__ k,
    const store_t* __restrict__ v, const store_t* __restrict__ kmin, const store_t* __restrict__ kmax,
    float* __restrict__ mean, int* __restrict__ selected, store_t* __restrict__ out, float* __restrict__ lse, u32 nb,
    u32 lanes, u32 n_blocks, u32 n_local, u32 force_first) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __attribute__((aligned(16))) unsigned char qc_smem[];  // the warps' V tiles
    store_t(*vs)[MD_KT][PF_LD] = reinterpret_cast<store_t(*)[MD_KT][PF_LD]>(qc_smem);
    constexpr u32 R = QC_ITEMS;
    constexpr u32 SHARE = QC_THREADS * QC_ITEMS;
    // Read by the other CTAs of the cluster (each written once per launch, so no reuse hazard).
    __shared__ u32 s_hist[4][256];            // this CTA's histogram of each radix pass
    __shared__ u32 s_stat[4];                 // forced count, eligible count, least / largest key
    __shared__ u32 s_cnt;                     // (equal count << 16) | above count
    __shared__ int s_kept[SHARE];             // this CTA's kept blocks, ascending
    __shared__ float s_po[MD_GM][PF_D];       // this CTA's normalised partial per head
    __shared__ float s_plse[MD_GM];
    // Local.
    __shared__ float s_mean[SHARE];           // the group means of this CTA's blocks
    __shared__ int s_sel[SHARE + 1];          // the cluster's entries this CTA attends to
    __shared__ u32 s_tot[4];
    __shared__ u32 s_pre[KVS_MAX_CLUSTER + 1];  // kept entries before CTA r (s_pre[C]: all)
    __shared__ float s_m[QUEST_CLUSTER_WARPS][MD_GM];
    __shared__ float s_l[QUEST_CLUSTER_WARPS][MD_GM];
    static_assert(sizeof(float) * MD_GM * PF_D <= sizeof(store_t) * MD_KT * PF_LD, "s_acc aliases vs");

    const u32 rank = kvs_cluster_rank();
    const u32 n_ctas = kvs_cluster_size();
    const u32 lane = threadIdx.x & 31u;
    const u32 kvh = blockIdx.y;
    const u32 group = p.q_heads / p.kv_heads;
    const u32 h0 = kvh * group;
    const u32 per = (nb + n_ctas - 1u) / n_ctas;
    const u32 b0 = min(rank * per, nb);
    const u32 b1 = min(b0 + per, nb);
    const u32 width = p.n_idx;
    for (u32 i = threadIdx.x; i < 4u * 256u; i += blockDim.x) (&s_hist[0][0])[i] = 0u;

    // 1. Group means of this CTA's blocks, to `mean` and to s_mean.
    quest_score_run<GM>(nb, p.dim, q, kmin, kmax, h0, group, kvh, lanes, b0, b1,
                        GroupMeanSink<GM>{mean + kvh * nb, group, s_mean, b0});
    __syncthreads();

    // 2. The selection: thread t holds blocks b0 + t * R + u.
    BlockSelectSrc src;
    src.ranking = nullptr;  // keys come from s_mean
    src.current = nb - 1u;
    src.n_local = n_local;
    src.force_first = force_first;
    src.past_only = 0u;
    src.by_key = 0u;
    const u32 i0 = threadIdx.x * R;
    u32 key[R];
    u32 forced = 0u, elig = 0u;
    u32 lo = 0xffffffffu, hi = 0u;
#pragma unroll
    for (u32 u = 0; u < R; ++u) {
        const u32 b = b0 + i0 + u;
        const bool valid = b < b1;
        const bool f = valid && src.forced(b);
        const bool e = valid && !f && src.eligible(b);
        key[u] = e ? f32_order_key(s_mean[i0 + u]) : 0u;
        forced |= (f ? 1u : 0u) << u;
        elig |= (e ? 1u : 0u) << u;
        if (e) {
            lo = min(lo, key[u]);
            hi = max(hi, key[u]);
        }
    }
    u32 local_counts;
    block_exclusive_scan(((u32)__popc(forced) << 16) | (u32)__popc(elig), &local_counts);
    block_min_max_u32(&lo, &hi);
    if (threadIdx.x == 0) {
        s_stat[0] = local_counts >> 16;
        s_stat[1] = local_counts & 0xffffu;
        s_stat[2] = lo;
        s_stat[3] = hi;
    }
    kvs_cluster_sync();  // every CTA's counts and key range are in
    if (threadIdx.x < 32u) {
        u32 f = 0u, e = 0u, l = 0xffffffffu, h = 0u;
        if (lane < n_ctas) {
            f = kvs_cluster_ld(&s_stat[0], lane);
            e = kvs_cluster_ld(&s_stat[1], lane);
            l = kvs_cluster_ld(&s_stat[2], lane);
            h = kvs_cluster_ld(&s_stat[3], lane);
        }
#pragma unroll
        for (u32 o = 16; o > 0u; o >>= 1) {
            f += __shfl_xor_sync(KVS_FULL_MASK, f, o);
            e += __shfl_xor_sync(KVS_FULL_MASK, e, o);
            l = min(l, __shfl_xor_sync(KVS_FULL_MASK, l, o));
            h = max(h, __shfl_xor_sync(KVS_FULL_MASK, h, o));
        }
        if (lane == 0u) {
            s_tot[0] = f;
            s_tot[1] = e;
            s_tot[2] = l;
            s_tot[3] = h;
        }
    }
    __syncthreads();
    const u32 n_forced = s_tot[0];
    const u32 n_elig = s_tot[1];
    lo = s_tot[2];
    hi = s_tot[3];
    const u32 budget = n_blocks > n_forced ? n_blocks - n_forced : 0u;
    const u32 want = min(budget, n_elig);
    u32 thr = 0u, take_eq = 0u;
    if (want > 0u) {  // uniform over the cluster
        // As block_select_row_regs: the radix on key - (least eligible key of the row).
        const u32 top_bits = 32u - (u32)__clz(hi - lo);
        block_radix_threshold_by(
            want, &thr, &take_eq,
            [&](u32* hist, u32 mask, u32 prefix, int shift) {
                u32* mine = s_hist[(24 - shift) / 8];
#pragma unroll
                for (u32 u = 0; u < R; ++u) {
                    const u32 rel = key[u] - lo;
                    if (((elig >> u) & 1u) != 0u && (rel & mask) == prefix) atomicAdd(&mine[(rel >> shift) & 255u], 1u);
                }
                kvs_cluster_sync();  // every CTA's histogram of this pass is in
                for (u32 b = threadIdx.x; b < 256u; b += blockDim.x) hist[b] = kvs_cluster_sum(&mine[b], n_ctas);
            },
            top_bits);
        thr += lo;
    }
    u32 above, equal;
    select_regs_split<R>(key, forced, want > 0u ? elig : 0u, thr, &above, &equal);
    u32 local_kept;
    const u32 before = block_exclusive_scan(((u32)__popc(equal) << 16) | (u32)__popc(above), &local_kept);
    if (threadIdx.x == 0) s_cnt = local_kept;
    kvs_cluster_sync();  // every CTA's above / equal counts are in
    if (threadIdx.x < 32u) {
        // Lane r: the above / equal items of the CTAs before r (CTA order is block order).
        const u32 c = lane < n_ctas ? kvs_cluster_ld(&s_cnt, lane) : 0u;
        u32 ab = c & 0xffffu, eq = c >> 16;
#pragma unroll
        for (u32 o = 1; o < 32u; o <<= 1) {
            const u32 ya = __shfl_up_sync(KVS_FULL_MASK, ab, o);
            const u32 ye = __shfl_up_sync(KVS_FULL_MASK, eq, o);
            if (lane >= o) ab += ya, eq += ye;
        }
        const u32 ab_before = ab - (c & 0xffffu), eq_before = eq - (c >> 16);
        if (lane <= n_ctas) s_pre[lane] = ab_before + min(eq_before, take_eq);
        if (lane == rank) {
            s_tot[0] = ab_before;
            s_tot[1] = eq_before;
        }
    }
    __syncthreads();
    // This thread's kept items: above ones before it plus min(equal ones before it, take_eq).
    const u32 eq_rank = s_tot[1] + (before >> 16);
    u32 pos = s_tot[0] + (before & 0xffffu) + min(eq_rank, take_eq);
    const u32 first = s_pre[rank];
    const u32 take = select_regs_kept<R>(above, equal, eq_rank, take_eq);
#pragma unroll
    for (u32 u = 0; u < R; ++u) {
        if ((take >> u) & 1u) {
            const int b = (int)(b0 + i0 + u);
            if (pos < width) selected[kvh * width + pos] = b;
            s_kept[pos - first] = b;
            ++pos;
        }
    }
    const u32 kept = s_pre[n_ctas];
    for (u32 j = kept + rank * blockDim.x + threadIdx.x; j < width; j += n_ctas * blockDim.x) selected[kvh * width + j] = -1;
    kvs_cluster_sync();  // every CTA's kept blocks are in

    // 3. Chunk `rank` of the selected tokens, its entries gathered from the CTAs that kept them.
    const u32 bs = max(p.block_size, 1u);
    const u32 n_entries = min(kept, width);
    u32 n0, n1;
    split_range(n_entries * bs, n_ctas, rank, &n0, &n1);
    const u32 e0 = n0 / bs;
    const u32 e1 = (n1 + bs - 1u) / bs;
    for (u32 j = e0 + threadIdx.x; j < e1; j += blockDim.x) {
        u32 owner = 0u;
        for (u32 r = 1; r < n_ctas; ++r) owner = s_pre[r] <= j ? r : owner;
        s_sel[j - e0] = (int)kvs_cluster_ld(&s_kept[j - s_pre[owner]], owner);
    }
    __syncthreads();
    const u32 live = p.kv_len;
    decode_mma_keys<QUEST_CLUSTER_WARPS>(q, h0, group, k + kvh * p.kv_len * PF_D, v + kvh * p.kv_len * PF_D, 1u, s_sel,
                              nullptr, 0u, bs, (live + bs - 1u) / bs, live, n0 - e0 * bs, n1 - e0 * bs, p.scale, vs,
                              s_m, s_l);
    float(*s_acc)[MD_GM][PF_D] = reinterpret_cast<float(*)[MD_GM][PF_D]>(&vs[0][0][0]);
    decode_write_rows<MD_GM, QUEST_CLUSTER_WARPS>(s_m, s_l, s_acc, group, SmemRowSink{s_po, s_plse});
    kvs_cluster_sync();  // every CTA's partial is in

    // 4. Merge by log-sum-exp, as attention_merge_rows: NaN-propagating max, empty partials
    // (lse = -inf) weigh 0.
    for (u32 t = rank * blockDim.x + threadIdx.x; t < group * PF_D; t += n_ctas * blockDim.x) {
        const u32 g = t / PF_D;
        const u32 d = t - g * PF_D;
        float ls[KVS_MAX_CLUSTER], xs[KVS_MAX_CLUSTER];
#pragma unroll
        for (u32 r = 0; r < KVS_MAX_CLUSTER; ++r) {
            ls[r] = r < n_ctas ? __uint_as_float(kvs_cluster_ld(&s_plse[g], r)) : KVS_NEG_INF;
            xs[r] = r < n_ctas ? __uint_as_float(kvs_cluster_ld(&s_po[g][d], r)) : 0.0f;
        }
        float m = KVS_NEG_INF;
#pragma unroll
        for (u32 r = 0; r < KVS_MAX_CLUSTER; ++r) m = kvs_nan_max(m, ls[r]);
        float total = 0.0f, acc = 0.0f;
#pragma unroll
        for (u32 r = 0; r < KVS_MAX_CLUSTER; ++r) {
            const float w = lse_weight(m, ls[r]);
            total += w;
            acc += w != 0.0f ? w * xs[r] : 0.0f;
        }
        const bool any = total != 0.0f;  // NaN propagates
        store_f(out, (h0 + g) * PF_D + d, acc * (any ? 1.0f / total : 0.0f));
        if (d == 0u) lse[h0 + g] = any ? m + logf(total) : KVS_NEG_INF;
    }
    kvs_cluster_sync();  // no CTA leaves while its partial may still be read
#endif
}

#define KVS_QUEST_DECODE_CLUSTER(GM)                                                                               \
    extern "C" __global__ void __launch_bounds__(QC_THREADS, 1) quest_decode_cluster_g##GM(                       \
        const AttentionParams p, const store_t* __restrict__ q, const store_t* __restrict__ k,                    \
        const store_t* __restrict__ v, const store_t* __restrict__ kmin, const store_t* __restrict__ kmax,        \
        float* __restrict__ mean, int* __restrict__ selected, store_t* __restrict__ out, float* __restrict__ lse, \
        const u32 nb, const u32 lanes, const u32 n_blocks, const u32 n_local, const u32 force_first) {            \
        quest_decode_cluster_body<GM>(p, q, k, v, kmin, kmax, mean, selected, out, lse, nb, lanes, n_blocks,     \
                                      n_local, force_first);                                                      \
    }
KVS_QUEST_DECODE_CLUSTER(2)
KVS_QUEST_DECODE_CLUSTER(4)
KVS_QUEST_DECODE_CLUSTER(8)

#endif  // tensor-core prefill
