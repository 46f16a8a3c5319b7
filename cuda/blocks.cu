// cuda/blocks.cu: block statistics and block scores (SPEC §2.1, §2.2, §3.1, §3.2).
//
// Prepended: BlockParams, KVS_STORE_* (storage dtype of q, k and the statistics), common.cuh.
// Entry points (same names as shaders/blocks.wgsl):
//   block_minmax (p, k[H,T,D], kmin[H,NB,D], kmax[H,NB,D])   one thread per (head, block, channel);
//                 loops over the block's valid tokens (coalesced across channels). H = kv_heads.
//   block_mean   (p, k[H,T,D], kmean[H,NB,D])                 same mapping; f32 sum / valid count
//   quest_scores (p, q[Hq,D], kmin, kmax [Hkv,NB,D], scores[Hq,NB] f32)
//                 one warp per (query head, block), lanes over channels:
//                 sum_d max(q*kmax, q*kmin), unscaled
//   block_mean_f32 (p, k[H,T,D], kmean[H,NB,D] f32)           the same, f32 means for moba_gate
//   moba_gate    (p, q[Hq,T,D], kmean[Hkv,NB,D] f32, gate[Hq,T,NB] f32)
//                 one warp per (query head, token), loops over every block: q . kmean, unscaled
// Query head h reads kv head h / (q_heads / kv_heads).

extern "C" __global__ void block_minmax(const BlockParams p, const store_t* __restrict__ k, store_t* __restrict__ kmin,
                                        store_t* __restrict__ kmax) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.kv_heads * p.nb * p.dim) return;
    const u32 d = e % p.dim;
    const u32 hb = e / p.dim;
    const u32 b = hb % p.nb;
    const u32 h = hb / p.nb;
    const u32 t0 = b * p.block_size;
    const u32 t1 = min(t0 + p.block_size, p.seq);
    float lo = KVS_INF;
    float hi = KVS_NEG_INF;
    for (u32 t = t0; t < t1; ++t) {
        const float x = load_f(k, (h * p.seq + t) * p.dim + d);
        lo = fminf(lo, x);
        hi = fmaxf(hi, x);
    }
    store_f(kmin, e, lo);  // exact: a min/max of storage values is a storage value
    store_f(kmax, e, hi);
}

// The mean is written in the storage dtype for the `block_mean` op, and in f32 for MoBA's gate:
// rounding a mean to f16/bf16 would move the routing away from the reference's.
template <bool F32_OUT>
__device__ __forceinline__ void block_mean_body(const BlockParams p, const store_t* __restrict__ k, void* __restrict__ kmean) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.kv_heads * p.nb * p.dim) return;
    const u32 d = e % p.dim;
    const u32 hb = e / p.dim;
    const u32 b = hb % p.nb;
    const u32 h = hb / p.nb;
    const u32 t0 = b * p.block_size;
    const u32 t1 = min(t0 + p.block_size, p.seq);
    float sum = 0.0f;
    for (u32 t = t0; t < t1; ++t) sum += load_f(k, (h * p.seq + t) * p.dim + d);
    const float mean = sum / (float)(t1 - t0);
    if (F32_OUT) {
        static_cast<float*>(kmean)[e] = mean;
    } else {
        store_f(static_cast<store_t*>(kmean), e, mean);
    }
}

extern "C" __global__ void block_mean(const BlockParams p, const store_t* __restrict__ k, store_t* __restrict__ kmean) {
    block_mean_body<false>(p, k, kmean);
}

extern "C" __global__ void block_mean_f32(const BlockParams p, const store_t* __restrict__ k, float* __restrict__ kmean) {
    block_mean_body<true>(p, k, kmean);
}

extern "C" __global__ void quest_scores(const BlockParams p, const store_t* __restrict__ q,
                                        const store_t* __restrict__ kmin, const store_t* __restrict__ kmax,
                                        float* __restrict__ scores) {
    const u32 lane = threadIdx.x & 31u;
    const u32 row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);  // (h, b)
    if (row >= p.q_heads * p.nb) return;                                  // whole warp
    const u32 h = row / p.nb;
    const u32 b = row - h * p.nb;
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    const u32 so = (kvh * p.nb + b) * p.dim;
    float s = 0.0f;
    for (u32 d = lane; d < p.dim; d += 32u) {
        const float qd = load_f(q, h * p.dim + d);
        s += fmaxf(qd * load_f(kmax, so + d), qd * load_f(kmin, so + d));
    }
    s = warp_sum(s);
    if (lane == 0) scores[row] = s;
}

extern "C" __global__ void moba_gate(const BlockParams p, const store_t* __restrict__ q,
                                     const float* __restrict__ kmean, float* __restrict__ gate) {
    const u32 lane = threadIdx.x & 31u;
    const u32 row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);  // (h, t)
    if (row >= p.q_heads * p.seq) return;                                 // whole warp
    const u32 h = row / p.seq;
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    const u32 qo = row * p.dim;
    for (u32 b = 0; b < p.nb; ++b) {
        const u32 mo = (kvh * p.nb + b) * p.dim;
        float s = 0.0f;
        for (u32 d = lane; d < p.dim; d += 32u) s += load_f(q, qo + d) * kmean[mo + d];
        s = warp_sum(s);
        if (lane == 0) gate[row * p.nb + b] = s;
    }
}
