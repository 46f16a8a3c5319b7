// cuda/snapkv.cu: SnapKV compression after prefill (SPEC §4), streamed: the window attention
// [heads, window, T] is never materialised.
//
// Prepended: SnapKvParams, KVS_STORE_* (storage dtype of q_obs and k), KVS_DPL (D <= 32*KVS_DPL),
// common.cuh. Shapes: q_obs[Hq, w, D] (queries of positions T-w..T-1), k[Hkv, T, D];
// n_prefix = T - w competing tokens; out_heads Hs = Hkv (gqa = mean) or Hq (per head).
// Entry points (same names as shaders/snapkv.wgsl):
//   snapkv_lse  (p, q_obs, k, row_lse[Hq*w])          pass 1: one block per (head, window query);
//                   each warp folds a contiguous chunk of the visible keys j <= T-w+i (lanes over
//                   channels, online max/sum), warps merged in shared memory
//   snapkv_colsum   (p, q_obs, k, row_lse, colsum[Hq*n_prefix])
//                   pass 2: one warp per (head, prefix key j), lanes over channels; sums
//                   exp(scale q_i.k_j - lse_i) over the w window queries (every prefix key is
//                   visible to every window query)
//   snapkv_pool     (p, colsum, scores[Hs*n_prefix] f32)  one thread per (output head, j): 1-D pool
//                   (stride 1, padding kernel/2; avg divides by kernel, counting the zero padding;
//                   max ignores the padding) per query head, then the mean over the group
//   snapkv_keys     (p, keys[Hs*n_prefix] u32)            random selector: random_key(seed, s, j)
//   snapkv_select   (p, ranking[Hs*n_prefix], kept[Hs*capacity] i32)
//                   one block per output head: the window (forced) plus the top capacity - w
//                   prefix tokens (f32 scores or u32 keys; ties to the lower token), ascending
//   snapkv_keep_all (p, kept[Hs*T])                       T <= capacity: kept = 0..T per head

#ifndef KVS_KT
#define KVS_KT 8
#endif

extern "C" __global__ void snapkv_lse(const SnapKvParams p, const store_t* __restrict__ q_obs,
                                          const store_t* __restrict__ k, float* __restrict__ row_lse) {
    __shared__ float warp_m[32];
    __shared__ float warp_l[32];
    const u32 row = blockIdx.x;  // (h, i)
    if (row >= p.q_heads * p.window) return;  // uniform per block
    const u32 lane = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    const u32 n_warps = blockDim.x >> 5;
    const u32 h = row / p.window;
    const u32 i = row - h * p.window;
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    const store_t* kh = k + kvh * p.seq * p.dim;
    float qv[KVS_DPL];
#pragma unroll
    for (int c = 0; c < KVS_DPL; ++c) {
        const u32 d = lane + 32u * (u32)c;
        qv[c] = d < p.dim ? load_f(q_obs, row * p.dim + d) : 0.0f;
    }
    const u32 count = p.n_prefix + i + 1u;  // keys 0 ..= T-w+i
    const u32 chunk = (count + n_warps - 1u) / n_warps;
    const u32 n0 = min(warp * chunk, count);
    const u32 n1 = min(n0 + chunk, count);
    float m = KVS_NEG_INF;
    float l = 0.0f;
    for (u32 base = n0; base < n1; base += KVS_KT) {
        float s[KVS_KT];
#pragma unroll
        for (int u = 0; u < KVS_KT; ++u) {
            const u32 j = base + (u32)u;
            float part = 0.0f;
            if (j < n1) {
#pragma unroll
                for (int c = 0; c < KVS_DPL; ++c) {
                    const u32 d = lane + 32u * (u32)c;
                    if (d < p.dim) part += qv[c] * load_f(kh, j * p.dim + d);
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
            s[u] = base + (u32)u < n1 ? s[u] * p.scale : KVS_NEG_INF;
            tile_max = fmaxf(tile_max, s[u]);
        }
        const float m_new = fmaxf(m, tile_max);
        l *= expf(m - m_new);
#pragma unroll
        for (int u = 0; u < KVS_KT; ++u) {
            if (base + (u32)u < n1) l += expf(s[u] - m_new);
        }
        m = m_new;
    }
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float mm = KVS_NEG_INF;
        for (u32 w = 0; w < n_warps; ++w) mm = fmaxf(mm, warp_m[w]);
        float ll = 0.0f;
        for (u32 w = 0; w < n_warps; ++w) {
            if (warp_l[w] != 0.0f) ll += warp_l[w] * expf(warp_m[w] - mm);  // NaN propagates
        }
        row_lse[row] = mm + logf(ll);  // count >= 1, so ll > 0
    }
}

extern "C" __global__ void snapkv_colsum(const SnapKvParams p, const store_t* __restrict__ q_obs,
                                         const store_t* __restrict__ k, const float* __restrict__ row_lse,
                                         float* __restrict__ colsum) {
    const u32 lane = threadIdx.x & 31u;
    const u32 h = blockIdx.y;
    const u32 j = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (h >= p.q_heads || j >= p.n_prefix) return;  // whole warp
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    float kv[KVS_DPL];
    const u32 ko = (kvh * p.seq + j) * p.dim;
#pragma unroll
    for (int c = 0; c < KVS_DPL; ++c) {
        const u32 d = lane + 32u * (u32)c;
        kv[c] = d < p.dim ? load_f(k, ko + d) : 0.0f;
    }
    float acc = 0.0f;
    for (u32 base = 0; base < p.window; base += KVS_KT) {
        float s[KVS_KT];
#pragma unroll
        for (int u = 0; u < KVS_KT; ++u) {
            const u32 i = base + (u32)u;
            float part = 0.0f;
            if (i < p.window) {
                const u32 qo = (h * p.window + i) * p.dim;
#pragma unroll
                for (int c = 0; c < KVS_DPL; ++c) {
                    const u32 d = lane + 32u * (u32)c;
                    if (d < p.dim) part += kv[c] * load_f(q_obs, qo + d);
                }
            }
            s[u] = part;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
            for (int u = 0; u < KVS_KT; ++u) s[u] += __shfl_xor_sync(KVS_FULL_MASK, s[u], o);
        }
#pragma unroll
        for (int u = 0; u < KVS_KT; ++u) {
            const u32 i = base + (u32)u;
            if (i < p.window) acc += expf(s[u] * p.scale - row_lse[h * p.window + i]);
        }
    }
    if (lane == 0) colsum[h * p.n_prefix + j] = acc;
}

extern "C" __global__ void snapkv_pool(const SnapKvParams p, const float* __restrict__ colsum,
                                       float* __restrict__ scores) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.out_heads * p.n_prefix) return;
    const u32 s = e / p.n_prefix;
    const u32 j = e - s * p.n_prefix;
    const u32 group = p.q_heads / p.kv_heads;
    const u32 h0 = p.gqa == 0u ? s * group : s;  // mean: the group's query heads; per head: s
    const u32 nh = p.gqa == 0u ? group : 1u;
    const u32 pad = p.kernel / 2u;
    const u32 lo = j >= pad ? j - pad : 0u;
    const u32 hi = min(j + pad + 1u, p.n_prefix);
    float total = 0.0f;
    for (u32 h = h0; h < h0 + nh; ++h) {
        const float* a = colsum + h * p.n_prefix;
        float pooled;
        if (p.pooling == 0u) {
            float sum = 0.0f;
            for (u32 x = lo; x < hi; ++x) sum += a[x];
            pooled = sum / (float)p.kernel;  // zero padding counted
        } else {
            pooled = KVS_NEG_INF;
            for (u32 x = lo; x < hi; ++x) pooled = fmaxf(pooled, a[x]);  // padding never wins
        }
        total += pooled;
    }
    scores[e] = total / (float)nh;
}

extern "C" __global__ void snapkv_keys(const SnapKvParams p, u32* __restrict__ keys) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.out_heads * p.n_prefix) return;
    const u32 s = e / p.n_prefix;
    keys[e] = kvs_key(p.seed, s, e - s * p.n_prefix);
}

struct SnapKvSelectSrc {
    const u32* ranking;  // this head's scores (as bits) or keys, n_prefix entries
    u32 n_prefix;
    u32 by_key;
    __device__ bool forced(u32 j) const { return j >= n_prefix; }  // the window
    __device__ bool eligible(u32 j) const { return j < n_prefix; }
    __device__ u32 key(u32 j) const {
        const u32 w = ranking[j];
        return by_key != 0u ? w : f32_order_key(__uint_as_float(w));
    }
};

extern "C" __global__ void snapkv_select(const SnapKvParams p, const u32* __restrict__ ranking,
                                         int* __restrict__ kept) {
    const u32 s = blockIdx.x;
    if (s >= p.out_heads) return;  // uniform per block
    SnapKvSelectSrc src;
    src.ranking = ranking + s * p.n_prefix;
    src.n_prefix = p.n_prefix;
    src.by_key = p.selector;
    block_select_row(src, p.seq, p.capacity, kept + s * p.capacity, p.capacity);
}

extern "C" __global__ void snapkv_keep_all(const SnapKvParams p, int* __restrict__ kept) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.out_heads * p.seq) return;
    kept[e] = (int)(e % p.seq);
}

// Tensor-core passes 1 and 2 (f16/bf16 storage, D = 64 or 128, window a multiple of 16). Both
// stage one tile of 64 keys in shared memory per (tile, kv head) CTA (4 warps), once for the
// whole group; warp w takes query heads w, w + 4, ... of the group and, per 16 window rows,
// computes S = Q K^T on mma.sync (sc_tile_scores). Pass 1 (snapkv_lse_mma) writes each row's
// log-sum-exp over the tile's visible keys; snapkv_lse_merge folds the tiles. Pass 2
// (snapkv_colsum_mma) sums exp(scale * s - lse) over the rows (fixed order: deterministic sums).
// Pass 1 used to be attention_prefill_mma with q = q_obs: one CTA per query head walking all T
// keys (32 CTAs on 132 SMs: 2.93 ms of the 3.2 ms compression at T 32K, H200 ncu).
//   snapkv_lse_mma   (p, q_obs, k, part_lse[Hq*w, n_tiles])  log2-domain lse of row i over keys
//                    j of the tile with j <= T-w+i (-inf if none); n_tiles = ceil(T / 64)
//   snapkv_lse_merge (p, part_lse, row_lse[Hq*w], n_tiles)  one warp per row, natural log
//   snapkv_colsum_mma (p, q_obs, k, row_lse, colsum)          prefix keys only (all visible)
#if (KVS_DPL == 2 || KVS_DPL == 4) && (defined(KVS_STORE_F16) || defined(KVS_STORE_BF16))
#define SC_D (32 * KVS_DPL)
#define SC_BN 64
#define SC_LD (SC_D + 8)

// Stages keys j0 .. j0+63 of one kv head (zeros at and past `limit`) and waits for the CTA.
__device__ __forceinline__ void sc_stage_keys(store_t (*ks)[SC_LD], const store_t* kh, u32 j0, u32 limit) {
    for (u32 c = threadIdx.x; c < SC_BN * (SC_D / 8u); c += blockDim.x) {
        const u32 r = c / (SC_D / 8u);
        const u32 col = (c - r * (SC_D / 8u)) * 8u;
        u32 w4[4] = {0u, 0u, 0u, 0u};
        if (j0 + r < limit) {
            const u32* src = reinterpret_cast<const u32*>(kh + (j0 + r) * SC_D + col);
#pragma unroll
            for (int i = 0; i < 4; ++i) w4[i] = src[i];
        }
        u32* dst = reinterpret_cast<u32*>(&ks[r][col]);
#pragma unroll
        for (int i = 0; i < 4; ++i) dst[i] = w4[i];
    }
    __syncthreads();
}

// Unscaled S of window rows ra = m0 + lane/4 and rb = ra + 8 of head h against the staged tile:
// s[n][0..1] row ra, s[n][2..3] row rb, columns n*8 + (lane%4)*2 + {0, 1} (mma C layout).
__device__ __forceinline__ void sc_tile_scores(float (&s)[SC_BN / 8][4], const SnapKvParams& p,
                                               const store_t* __restrict__ q_obs, store_t (*ks)[SC_LD], u32 h,
                                               u32 m0) {
    const u32 lane = threadIdx.x & 31u;
    const u32 gq = lane >> 2;
    const u32 tg = lane & 3u;
    const store_t* qa_row = q_obs + (h * p.window + m0 + gq) * SC_D;
    const store_t* qb_row = qa_row + 8u * SC_D;
#pragma unroll
    for (int n = 0; n < SC_BN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < SC_D / 16; ++kk) {
        const u32 c = (u32)kk * 16u + tg * 2u;
        const u32 a[4] = {kvs_ld2(qa_row + c), kvs_ld2(qb_row + c), kvs_ld2(qa_row + c + 8u),
                          kvs_ld2(qb_row + c + 8u)};
#pragma unroll
        for (int n = 0; n < SC_BN / 8; ++n) {
            const store_t* kr = &ks[n * 8 + gq][kk * 16 + tg * 2u];
            kvs_mma16816(s[n], a, kvs_ld2(kr), kvs_ld2(kr + 8));
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    snapkv_lse_mma(const SnapKvParams p, const store_t* __restrict__ q_obs, const store_t* __restrict__ k,
                   float* __restrict__ part_lse) {
    __shared__ __attribute__((aligned(16))) store_t ks[SC_BN][SC_LD];
    const u32 lane = threadIdx.x & 31u;
    const u32 gq = lane >> 2;
    const u32 tg = lane & 3u;
    const u32 kvh = blockIdx.y;
    const u32 tile = blockIdx.x;
    const u32 n_tiles = gridDim.x;
    const u32 j0 = tile * SC_BN;
    const u32 group = p.q_heads / p.kv_heads;
    sc_stage_keys(ks, k + kvh * p.seq * SC_D, j0, p.seq);
    const float sl2 = p.scale * 1.4426950408889634f;
    for (u32 hg = threadIdx.x >> 5; hg < group; hg += blockDim.x >> 5) {  // warp-uniform
        const u32 h = kvh * group + hg;
        for (u32 m0 = 0; m0 < p.window; m0 += 16u) {
            float s[SC_BN / 8][4];
            sc_tile_scores(s, p, q_obs, ks, h, m0);
            // Row i sees key j iff j < T and j <= n_prefix + i (bottom-right causal).
            const u32 rows[2] = {m0 + gq, m0 + gq + 8u};
            float mx[2] = {KVS_NEG_INF, KVS_NEG_INF};
#pragma unroll
            for (int n = 0; n < SC_BN / 8; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const u32 j = j0 + (u32)n * 8u + tg * 2u + (u32)(e & 1);
                    const bool vis = j < p.seq && j <= p.n_prefix + rows[e >> 1];
                    s[n][e] = vis ? s[n][e] * sl2 : KVS_NEG_INF;
                    mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
                }
            }
            // The four lanes of a row (same gq) hold its 64 columns.
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(KVS_FULL_MASK, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(KVS_FULL_MASK, mx[r], 2));
            }
            float sum[2] = {0.0f, 0.0f};
#pragma unroll
            for (int n = 0; n < SC_BN / 8; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    if (s[n][e] != KVS_NEG_INF) sum[e >> 1] += exp2f(s[n][e] - mx[e >> 1]);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                sum[r] += __shfl_xor_sync(KVS_FULL_MASK, sum[r], 1);
                sum[r] += __shfl_xor_sync(KVS_FULL_MASK, sum[r], 2);
                if (tg == 0u) {
                    part_lse[(h * p.window + rows[r]) * n_tiles + tile] =
                        mx[r] == KVS_NEG_INF ? KVS_NEG_INF : mx[r] + log2f(sum[r]);
                }
            }
        }
    }
}

extern "C" __global__ void snapkv_lse_merge(const SnapKvParams p, const float* __restrict__ part_lse,
                                            float* __restrict__ row_lse, const u32 n_tiles) {
    const u32 lane = threadIdx.x & 31u;
    const u32 row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= p.q_heads * p.window) return;  // whole warp
    const float* pl = part_lse + row * n_tiles;
    float m = KVS_NEG_INF;
    for (u32 t = lane; t < n_tiles; t += 32u) m = fmaxf(m, __ldcg(pl + t));
    m = warp_max(m);
    float l = 0.0f;
    for (u32 t = lane; t < n_tiles; t += 32u) {
        const float x = __ldcg(pl + t);
        if (x != KVS_NEG_INF) l += exp2f(x - m);
    }
    l = warp_sum(l);
    // Every row sees key 0, so m is finite (NaN inputs propagate through l).
    if (lane == 0) row_lse[row] = (m + log2f(l)) * 0.6931471805599453f;
}

extern "C" __global__ void __launch_bounds__(128)
    snapkv_colsum_mma(const SnapKvParams p, const store_t* __restrict__ q_obs, const store_t* __restrict__ k,
                      const float* __restrict__ row_lse, float* __restrict__ colsum) {
    __shared__ __attribute__((aligned(16))) store_t ks[SC_BN][SC_LD];
    const u32 lane = threadIdx.x & 31u;
    const u32 gq = lane >> 2;
    const u32 tg = lane & 3u;
    const u32 kvh = blockIdx.y;
    const u32 j0 = blockIdx.x * SC_BN;
    const u32 group = p.q_heads / p.kv_heads;
    sc_stage_keys(ks, k + kvh * p.seq * SC_D, j0, p.n_prefix);
    const float log2e = 1.4426950408889634f;
    const float sl2 = p.scale * log2e;
    for (u32 hg = threadIdx.x >> 5; hg < group; hg += blockDim.x >> 5) {  // warp-uniform
        const u32 h = kvh * group + hg;
        float col[SC_BN / 8][2];
#pragma unroll
        for (int n = 0; n < SC_BN / 8; ++n) col[n][0] = col[n][1] = 0.0f;
        for (u32 m0 = 0; m0 < p.window; m0 += 16u) {
            float s[SC_BN / 8][4];
            sc_tile_scores(s, p, q_obs, ks, h, m0);
            const float la = row_lse[h * p.window + m0 + gq] * log2e;
            const float lb = row_lse[h * p.window + m0 + gq + 8u] * log2e;
#pragma unroll
            for (int n = 0; n < SC_BN / 8; ++n) {
#pragma unroll
                for (int e = 0; e < 2; ++e) col[n][e] += exp2f(s[n][e] * sl2 - la) + exp2f(s[n][2 + e] * sl2 - lb);
            }
        }
        // Sum the 8 row groups of the warp (lanes with the same tg hold the same columns).
#pragma unroll
        for (int n = 0; n < SC_BN / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
#pragma unroll
                for (int o = 4; o < 32; o <<= 1) col[n][e] += __shfl_xor_sync(KVS_FULL_MASK, col[n][e], o);
            }
        }
        if (gq == 0u) {
#pragma unroll
            for (int n = 0; n < SC_BN / 8; ++n) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const u32 j = j0 + (u32)n * 8u + tg * 2u + (u32)e;
                    if (j < p.n_prefix) colsum[h * p.n_prefix + j] = col[n][e];
                }
            }
        }
    }
}
#endif  // tensor-core passes
