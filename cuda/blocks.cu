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
//   quest_group_mean (p, scores[Hq,NB] f32, mean[Hkv,NB] f32)   one thread per (kv head, block):
//                 the mean of its G query heads' scores (summed in head order, then / G)
//   block_mean_f32 (p, k[H,T,D], kmean[H,NB,D] f32)           the same, f32 means for moba_gate
//   moba_gate    (p, q[Hq,T,D], kmean[Hkv,NB,D] f32, gate[Hq,T,NB] f32)
//                 grid (ceil(T / 64), Hq), 256 threads: a 64 x 64 tile of q . kmean (unscaled)
//                 per block tile
//   quest_scores_grouped_g{1,2,4,8}, quest_select_kv_g{1,2,4,8}: further down
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

extern "C" __global__ void quest_group_mean(const BlockParams p, const float* __restrict__ scores,
                                            float* __restrict__ mean) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.kv_heads * p.nb) return;
    const u32 kv = e / p.nb;
    const u32 b = e - kv * p.nb;
    const u32 g = p.q_heads / p.kv_heads;
    float s = 0.0f;
    for (u32 i = 0; i < g; ++i) s += scores[(kv * g + i) * p.nb + b];
    mean[e] = s / (float)g;
}

// 64 tokens x 64 blocks of the gate per CTA (256 threads, 4 x 4 outputs each, token ty + 16i
// and block tx + 16j), the channels in chunks of MG_DC staged as f32 in shared memory. The old
// kernel (a warp per token walking every block with a warp sum) took 83 ms of MoBA's 128 ms at
// T 32K (H200, ncu): it reread q and every mean row per block from L2 and reduced by shuffles.
// Each output still sums its channels in order 0..D-1, one FMA each.
#define MG_T 64
#define MG_B 64
#define MG_DC 32
extern "C" __global__ void __launch_bounds__(256)
    moba_gate(const BlockParams p, const store_t* __restrict__ q, const float* __restrict__ kmean,
              float* __restrict__ gate) {
    __shared__ float qs[MG_T][MG_DC + 1];  // +1: the 16 block rows a warp reads hit 16 banks
    __shared__ float ms[MG_B][MG_DC + 1];
    const u32 tx = threadIdx.x & 15u;
    const u32 ty = threadIdx.x >> 4;
    const u32 h = blockIdx.y;
    const u32 kvh = h / (p.q_heads / p.kv_heads);
    const u32 t0 = blockIdx.x * MG_T;
    const store_t* qh = q + h * p.seq * p.dim;
    const float* mh = kmean + kvh * p.nb * p.dim;
    for (u32 b0 = 0; b0 < p.nb; b0 += MG_B) {
        float acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
        }
        for (u32 d0 = 0; d0 < p.dim; d0 += MG_DC) {
            __syncthreads();  // every thread is done with the previous chunk
            for (u32 e = threadIdx.x; e < MG_T * MG_DC; e += blockDim.x) {
                const u32 r = e / MG_DC;
                const u32 c = e - r * MG_DC;
                const u32 d = d0 + c;
                qs[r][c] = (t0 + r < p.seq && d < p.dim) ? load_f(qh, (t0 + r) * p.dim + d) : 0.0f;
                ms[r][c] = (b0 + r < p.nb && d < p.dim) ? mh[(b0 + r) * p.dim + d] : 0.0f;
            }
            __syncthreads();
            const u32 dn = min((u32)MG_DC, p.dim - d0);  // only real channels (0 * inf is NaN)
            for (u32 dd = 0; dd < dn; ++dd) {
                float a[4], w[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) a[i] = qs[ty + 16u * (u32)i][dd];
#pragma unroll
                for (int j = 0; j < 4; ++j) w[j] = ms[tx + 16u * (u32)j][dd];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
                }
            }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u32 t = t0 + ty + 16u * (u32)i;
            if (t >= p.seq) continue;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const u32 b = b0 + tx + 16u * (u32)j;
                if (b < p.nb) gate[(h * p.seq + t) * p.nb + b] = acc[i][j];
            }
        }
    }
}

// quest_scores_grouped_g{1,2,4,8} (p, q[Hq,D], kmin, kmax [Hkv,NB,D], scores[Hq,NB] f32, hpc, lanes)
//   The scores of quest_scores, with one CTA per (run of blocks = blockIdx.x, chunk of `hpc`
//   query heads of one kv head = blockIdx.y): every statistics row is read once for the whole
//   chunk, with 16-byte loads; `lanes` = D / (16 / sizeof(store_t)) lanes cover a row (a power
//   of two <= 32, checked by the host), so a warp covers 32 / lanes rows per load. hpc <= GM.
//   Per lane the products are summed over its vector in channel order, then across lanes by an
//   xor butterfly: the same terms as quest_scores, in another order (f32 rounding only).
// QS_VE, ldg16, quest_score_run and its sinks: common.cuh (the one-launch Quest decode in
// attention.cu scores with them too).

// One entry per power of two GM >= hpc: the register tile (q and the scores of GM heads) and
// the shuffles scale with GM, and at GM = 8 for a group of 4 the CTAs no longer fitted in one
// wave (11 us at 128K on the H200, ncu).
#define KVS_QUEST_SCORES_GROUPED(GM)                                                                         \
    extern "C" __global__ void __launch_bounds__(128) quest_scores_grouped_g##GM(                            \
        const BlockParams p, const store_t* __restrict__ q, const store_t* __restrict__ kmin,               \
        const store_t* __restrict__ kmax, float* __restrict__ scores, const u32 hpc, const u32 lanes) {    \
        const u32 h0 = blockIdx.y * hpc;                                                                     \
        const u32 kvh = h0 / (p.q_heads / p.kv_heads);                                                       \
        const u32 per_cta = (p.nb + gridDim.x - 1u) / gridDim.x;                                             \
        const u32 b0 = blockIdx.x * per_cta;                                                                 \
        const u32 b1 = min(b0 + per_cta, p.nb);                                                              \
        quest_score_run<GM>(p.nb, p.dim, q, kmin, kmax, h0, hpc, kvh, lanes, b0, b1, HeadScoreSink<GM>{scores, h0, hpc, p.nb}); \
    }
KVS_QUEST_SCORES_GROUPED(1)
KVS_QUEST_SCORES_GROUPED(2)
KVS_QUEST_SCORES_GROUPED(4)
KVS_QUEST_SCORES_GROUPED(8)

// quest_select_kv_g{1,2,4,8} (p, q, kmin, kmax, mean[Hkv,NB] f32, selected[Hkv,width] i32,
//                             arrivals[Hkv] u32, lanes, n_blocks, n_local, force_first, width)
//   Quest's selection with one block set per kv head (GqaMode::Mean), in one launch: grid
//   (runs, Hkv), the CTA of run r scores its blocks for the whole group (G = Hq / Hkv <= the
//   entry's GM query heads) and writes their group means; the last CTA of a kv head to finish
//   (counted in arrivals[kvh], which it sets back to 0 for the next launch) stages the row of
//   means in shared memory and runs block_select_row over it (current block NB - 1, every block
//   a candidate), as select_blocks does over the means of quest_group_mean. The means are those
//   two kernels' to the bit; the launches saved are the point (the group mean and the select
//   took 13 us of the 45 us of Quest's 1/16 decode at 128K, H200). 256 threads: rows of up to
//   2048 blocks take block_select_row's register path (8 items per thread). Dynamic shared memory: NB words.
template <int GM>
__device__ __forceinline__ void quest_select_kv_body(const BlockParams& p, const store_t* __restrict__ q,
                                                     const store_t* __restrict__ kmin,
                                                     const store_t* __restrict__ kmax, float* __restrict__ mean,
                                                     int* __restrict__ selected, u32* __restrict__ arrivals,
                                                     u32 lanes, u32 n_blocks, u32 n_local, u32 force_first,
                                                     u32 width) {
    extern __shared__ u32 s_rank[];
    __shared__ u32 s_last;
    const u32 kvh = blockIdx.y;
    const u32 group = p.q_heads / p.kv_heads;
    const u32 per_cta = (p.nb + gridDim.x - 1u) / gridDim.x;
    const u32 b0 = blockIdx.x * per_cta;
    const u32 b1 = min(b0 + per_cta, p.nb);
    float* row = mean + kvh * p.nb;
    quest_score_run<GM>(p.nb, p.dim, q, kmin, kmax, kvh * group, group, kvh, lanes, b0, b1, GroupMeanSink<GM>{row, group, nullptr, 0u});
    // Release this CTA's means, then count it in; the last arrival sees every CTA's means.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(&arrivals[kvh], 1u) == gridDim.x - 1u ? 1u : 0u;
    __syncthreads();
    if (s_last == 0u) return;  // uniform per CTA
    __threadfence();
    // L2 reads (ld.cg): other CTAs' means never went through this SM's L1.
    for (u32 b = threadIdx.x; b < p.nb; b += blockDim.x) s_rank[b] = __ldcg(reinterpret_cast<const unsigned int*>(row) + b);
    __syncthreads();
    BlockSelectSrc src;
    src.ranking = s_rank;
    src.current = p.nb - 1u;
    src.n_local = n_local;
    src.force_first = force_first;
    src.past_only = 0u;
    src.by_key = 0u;
    block_select_row(src, p.nb, n_blocks, selected + kvh * width, width);
    if (threadIdx.x == 0) arrivals[kvh] = 0u;
}

#define KVS_QUEST_SELECT_KV(GM)                                                                                 \
    extern "C" __global__ void __launch_bounds__(QUEST_SELECT_KV_THREADS) quest_select_kv_g##GM(                \
        const BlockParams p, const store_t* __restrict__ q, const store_t* __restrict__ kmin,                  \
        const store_t* __restrict__ kmax, float* __restrict__ mean, int* __restrict__ selected,                \
        u32* __restrict__ arrivals, const u32 lanes, const u32 n_blocks, const u32 n_local,                    \
        const u32 force_first, const u32 width) {                                                              \
        quest_select_kv_body<GM>(p, q, kmin, kmax, mean, selected, arrivals, lanes, n_blocks, n_local,         \
                                 force_first, width);                                                          \
    }
KVS_QUEST_SELECT_KV(1)
KVS_QUEST_SELECT_KV(2)
KVS_QUEST_SELECT_KV(4)
KVS_QUEST_SELECT_KV(8)
