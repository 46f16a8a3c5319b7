// cuda/cache.cu: the decoder's batched KV cache (src/ops/cache.rs): fill, append, advance, and
// the block ranking and selection of cache_decode (its attention is attention.cu's grouped
// decode, batched: attention_decode_g* with a batch index and `lens`, or attention_decode_rows).
//
// Prepended: CacheParams, KVS_STORE_* (storage dtype of k, v and the statistics), common.cuh.
// Cache layout: k, v [B, Hc, Tcap, D]; kmin, kmax, kmean [B, Hc, NB, D]; lens, pos [B] i32.
// Every kernel reads the live lengths from `lens` / `pos` on the device, so no launch shape
// depends on them; a length outside 0..Tcap is clamped (decode) or skipped (append), so no index
// leaves its buffer whatever the buffers hold.
// Entry points:
//   cache_fill    (p, k_src, v_src [Hs,Tsrc,D], idx[Hc,n] i32, k, v, kmin, kmax, kmean, lens, pos)
//                 one thread per (cache head c, block, channel d) of sequence p.seq_index over the
//                 blocks 0..ceil(n/bs): copies channel d of the block's tokens (source head
//                 c / (Hc/Hs), token e or idx[c, e]; an idx entry outside 0..Tsrc writes zeros)
//                 and recomputes the block's min/max/mean of the stored keys; thread 0 sets
//                 lens[b] = n, pos[b] = p.pos. idx is read only when p.indexed.
//   cache_append  (p, k_new, v_new [B,Hs,D], g [B,Hs,D] f32, lens, pos, hk, hv [B,Hs,D] f32,
//                 k, v, kmin, kmax, kmean)
//                 one thread per (b, s, i): RAT+ (p.ratplus) i < D/2, the rotation pair
//                 (i, i + D/2): hk, hv advanced in place and RoPE(hk', pos[b]) stored; plain:
//                 i < D, channel i stored as given. The row goes to slot t = lens[b] of cache heads
//                 s*R .. (s+1)*R (R = Hc/Hs), then the thread recomputes its own channels of
//                 block t/bs over tokens bs*(t/bs) ..= t (it wrote those channels of slot t
//                 itself, so no barrier is needed). t outside 0..Tcap: nothing is touched.
//                 g, hk, hv are read only when p.ratplus.
//   cache_advance (p, lens, pos)   lens[b] += 1, pos[b] += 1 (mod 2^32); one thread per sequence
//   cache_rank    (p, q[B,Hq,D], kmin, kmax, lens, ranking[B,Hq,NB])
//                 one warp per (b, h, block): selector 0: the Quest bound
//                 sum_d max(q*kmax, q*kmin) of cache head h / (Hq/Hc), -inf for blocks at or past
//                 NB_b = ceil(lens[b]/bs); selector 1: random_key(seed, h, block), 0 past NB_b.
//                 kmin/kmax are read only for selector 0 and live blocks.
//   cache_select  (p, lens, ranking, selected[B,Hq,width] i32)
//                 one CTA per (b, h): forced top-k over the NB_b live blocks (block 0 if
//                 force_first, the last n_local live blocks, the best others up to the budget
//                 resolved for NB_b), ascending, -1 padded to width.

// Live tokens of sequence b, clamped to 0..capacity.
__device__ __forceinline__ u32 cache_live(const CacheParams& p, const int* __restrict__ lens, u32 b) {
    const int t = lens[b];
    return t <= 0 ? 0u : min((u32)t, p.capacity);
}

// Recomputes channel d of the statistics of one block from the stored keys kh[t*D + d],
// t in t0..t1 (t0 < t1): min, max, and the f32 mean rounded once to the storage type.
__device__ __forceinline__ void cache_restat(const CacheParams& p, const store_t* kh, store_t* __restrict__ kmin,
                                             store_t* __restrict__ kmax, store_t* __restrict__ kmean, u32 so,
                                             u32 t0, u32 t1, u32 d) {
    float lo = KVS_INF;
    float hi = KVS_NEG_INF;
    float sum = 0.0f;
    for (u32 t = t0; t < t1; ++t) {
        const float x = load_f(kh, t * p.dim + d);
        lo = fminf(lo, x);
        hi = fmaxf(hi, x);
        sum += x;
    }
    store_f(kmin, so + d, lo);  // exact: a min/max of storage values is a storage value
    store_f(kmax, so + d, hi);
    store_f(kmean, so + d, sum / (float)(t1 - t0));
}

extern "C" __global__ void cache_fill(const CacheParams p, const store_t* __restrict__ k_src,
                                      const store_t* __restrict__ v_src, const int* __restrict__ idx,
                                      store_t* k, store_t* __restrict__ v, store_t* __restrict__ kmin,
                                      store_t* __restrict__ kmax, store_t* __restrict__ kmean, int* __restrict__ lens,
                                      int* __restrict__ pos) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    const u32 bs = max(p.block_size, 1u);
    const u32 n = min(p.n_tokens, p.capacity);
    const u32 n_blocks = (n + bs - 1u) / bs;
    if (e == 0u && p.seq_index < p.batch) {
        lens[p.seq_index] = (int)n;
        pos[p.seq_index] = (int)p.pos;
    }
    if (e >= p.heads * n_blocks * p.dim || p.seq_index >= p.batch) return;
    const u32 d = e % p.dim;
    const u32 cb = e / p.dim;
    const u32 blk = cb % n_blocks;
    const u32 c = cb / n_blocks;
    const u32 rep = p.heads / max(p.src_heads, 1u);
    const u32 src_head = c / max(rep, 1u);
    const u32 seq_head = p.seq_index * p.heads + c;
    const u32 t0 = blk * bs;
    const u32 t1 = min(t0 + bs, n);
    store_t* kh = k + seq_head * p.capacity * p.dim;
    store_t* vh = v + seq_head * p.capacity * p.dim;
    for (u32 t = t0; t < t1; ++t) {
        int j = (int)t;
        if (p.indexed != 0u) j = idx[c * p.n_tokens + t];
        const bool ok = j >= 0 && (u32)j < p.src_len && src_head < p.src_heads;
        const u32 so = (src_head * p.src_len + (ok ? (u32)j : 0u)) * p.dim + d;
        store_f(kh, t * p.dim + d, ok ? load_f(k_src, so) : 0.0f);
        store_f(vh, t * p.dim + d, ok ? load_f(v_src, so) : 0.0f);
    }
    // The statistics read back this thread's own stores: they are of the rounded keys.
    cache_restat(p, kh, kmin, kmax, kmean, (seq_head * p.nb + blk) * p.dim, t0, t1, d);
}

extern "C" __global__ void cache_append(const CacheParams p, const store_t* __restrict__ k_new,
                                        const store_t* __restrict__ v_new, const float* __restrict__ g,
                                        const int* __restrict__ lens, const int* __restrict__ pos,
                                        float* __restrict__ hk, float* __restrict__ hv, store_t* k,
                                        store_t* __restrict__ v, store_t* __restrict__ kmin,
                                        store_t* __restrict__ kmax, store_t* __restrict__ kmean) {
    const u32 per_row = p.ratplus != 0u ? p.dim / 2u : p.dim;  // threads per (b, s)
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (per_row == 0u || e >= p.batch * p.src_heads * per_row) return;
    const u32 row = e / per_row;  // b * Hs + s
    const u32 i = e - row * per_row;
    const u32 b = row / p.src_heads;
    const u32 s = row - b * p.src_heads;
    const int t_live = lens[b];
    if (t_live < 0 || (u32)t_live >= p.capacity) return;  // full (or garbage): untouched
    const u32 t = (u32)t_live;
    float kx[2], vx[2];
    u32 ch[2];
    u32 n_ch = 1u;
    const u32 a = row * p.dim + i;
    if (p.ratplus != 0u) {
        const u32 half = p.dim / 2u;
        float nk[2], nv[2];
        ratplus_pair_step(k_new, v_new, g, hk, hv, a, a + half, i, p.dim, p.base, (double)pos[b], nk, nv, kx);
        hk[a] = nk[0];
        hk[a + half] = nk[1];
        hv[a] = nv[0];
        hv[a + half] = nv[1];
        vx[0] = nv[0];
        vx[1] = nv[1];
        ch[0] = i;
        ch[1] = i + half;
        n_ch = 2u;
    } else {
        kx[0] = load_f(k_new, a);
        vx[0] = load_f(v_new, a);
        ch[0] = i;
    }
    const u32 bs = max(p.block_size, 1u);
    const u32 blk = t / bs;
    const u32 rep = p.heads / p.src_heads;
    for (u32 r = 0; r < rep; ++r) {
        const u32 seq_head = b * p.heads + s * rep + r;
        store_t* kh = k + seq_head * p.capacity * p.dim;
        store_t* vh = v + seq_head * p.capacity * p.dim;
        for (u32 c = 0; c < n_ch; ++c) {
            store_f(kh, t * p.dim + ch[c], kx[c]);
            store_f(vh, t * p.dim + ch[c], vx[c]);
            cache_restat(p, kh, kmin, kmax, kmean, (seq_head * p.nb + blk) * p.dim, blk * bs, t + 1u, ch[c]);
        }
    }
}

extern "C" __global__ void cache_advance(const CacheParams p, int* __restrict__ lens, int* __restrict__ pos) {
    const u32 b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= p.batch) return;
    lens[b] = (int)((u32)lens[b] + 1u);
    pos[b] = (int)((u32)pos[b] + 1u);
}

extern "C" __global__ void cache_rank(const CacheParams p, const store_t* __restrict__ q,
                                      const store_t* __restrict__ kmin, const store_t* __restrict__ kmax,
                                      const int* __restrict__ lens, u32* __restrict__ ranking) {
    const u32 lane = threadIdx.x & 31u;
    const u32 e = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);  // (b, h, block)
    if (e >= p.batch * p.q_heads * p.nb) return;                        // whole warp
    const u32 row = e / p.nb;                                           // b * Hq + h
    const u32 blk = e - row * p.nb;
    const u32 b = row / p.q_heads;
    const u32 h = row - b * p.q_heads;
    const u32 bs = max(p.block_size, 1u);
    const u32 nb_live = (cache_live(p, lens, b) + bs - 1u) / bs;
    if (p.selector != 0u) {
        if (lane == 0u) ranking[e] = blk < nb_live ? kvs_key(p.seed, h, blk) : 0u;
        return;
    }
    if (blk >= nb_live) {
        if (lane == 0u) ranking[e] = __float_as_uint(KVS_NEG_INF);
        return;
    }
    const u32 c = h / (p.q_heads / p.heads);
    const u32 so = ((b * p.heads + c) * p.nb + blk) * p.dim;
    float s = 0.0f;
    for (u32 d = lane; d < p.dim; d += 32u) {
        const float qd = load_f(q, row * p.dim + d);
        s += fmaxf(qd * load_f(kmax, so + d), qd * load_f(kmin, so + d));
    }
    s = warp_sum(s);
    if (lane == 0u) ranking[e] = __float_as_uint(s);
}

// Blocks granted for nb live blocks before the forced ones join: budget_count, or
// max(1, floor(nb * num / den)) in the split form that keeps every product below 2^32.
__device__ __forceinline__ u32 cache_budget(const CacheParams& p, u32 nb) {
    if (p.budget_den == 0u) return p.budget_count;
    const u32 blocks = (nb / p.budget_den) * p.budget_num + (nb % p.budget_den) * p.budget_num / p.budget_den;
    return max(blocks, 1u);
}

extern "C" __global__ void cache_select(const CacheParams p, const int* __restrict__ lens,
                                        const u32* __restrict__ ranking, int* __restrict__ selected) {
    const u32 row = blockIdx.x;  // b * Hq + h
    if (row >= p.batch * p.q_heads) return;  // uniform per block
    const u32 bs = max(p.block_size, 1u);
    const u32 nb_live = (cache_live(p, lens, row / p.q_heads) + bs - 1u) / bs;
    BlockSelectSrc src;
    src.ranking = ranking + row * p.nb;
    src.current = nb_live > 0u ? nb_live - 1u : 0u;
    src.n_local = p.n_local;
    src.force_first = p.force_first;
    src.past_only = 0u;
    src.by_key = p.selector;
    // n_sel = min(NB_b, max(budget, |forced|)): block_select_row keeps the forced blocks and
    // min(#others, budget - #forced) others; nb_live = 0 writes -1 only.
    block_select_row(src, nb_live, cache_budget(p, nb_live), selected + row * p.width, p.width);
}
