// cuda/blocks.cu: block statistics and block scores (SPEC §2.1, §2.2, §3.1, §3.2).
//
// Prepended: BlockParams, SelectParams (quest_select_fused_g*), KVS_STORE_* (storage dtype of q,
// k and the statistics), common.cuh.
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
//                 one warp per (query head, token), loops over every block: q . kmean, unscaled
//   quest_select_fused_g{1,2,4,8}  Quest decode's scores + selection + GQA union in one launch
//                 (see the kernel below)
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

// quest_scores_grouped (p, q[Hq,D], kmin, kmax [Hkv,NB,D], scores[Hq,NB] f32, hpc, lanes)
//   The scores of quest_scores, with one CTA per (run of blocks = blockIdx.x, chunk of `hpc`
//   query heads of one kv head = blockIdx.y): every statistics row is read once for the whole
//   chunk, with 16-byte loads; `lanes` = D / (16 / sizeof(store_t)) lanes cover a row (a power
//   of two <= 32, checked by the host), so a warp covers 32 / lanes rows per load. hpc <= 8.
//   Per lane the products are summed over its vector in channel order, then across lanes by an
//   xor butterfly: the same terms as quest_scores, in another order (f32 rounding only).
#if defined(KVS_STORE_F32)
#define QS_VE 4
#else
#define QS_VE 8
#endif
#define QS_GM 8
#define QS_U 4

struct __attribute__((aligned(16))) qs_u4 {
    u32 x, y, z, w;
};

__device__ __forceinline__ qs_u4 qs_ldg16(const void* ptr) {
    qs_u4 r;
    asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(ptr));
    return r;
}

__device__ __forceinline__ void qs_widen(const qs_u4& w, float* f) {
#if defined(KVS_STORE_F32)
    f[0] = __uint_as_float(w.x);
    f[1] = __uint_as_float(w.y);
    f[2] = __uint_as_float(w.z);
    f[3] = __uint_as_float(w.w);
#elif defined(KVS_STORE_BF16)
    const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(ws[i] << 16);
        f[2 * i + 1] = __uint_as_float(ws[i] & 0xffff0000u);
    }
#else
    const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = kvs_h2f((unsigned short)(ws[i] & 0xffffu));
        f[2 * i + 1] = kvs_h2f((unsigned short)(ws[i] >> 16));
    }
#endif
}

// The scores of query heads h0 .. h0+hpc-1 (one kv head, hpc <= GM) over blocks [b0, b1) by the
// whole block, U rows per warp and load round (quest_scores_grouped's loop), into their rows of
// `scores`; or, with mean_row != QS_PER_HEAD, their mean (summed in head order, then / hpc, as
// quest_group_mean) into row mean_row.
#define QS_PER_HEAD 0xffffffffu
template <int GM, int U>
__device__ __forceinline__ void quest_score_run(const BlockParams& p, const store_t* __restrict__ q,
                                                const store_t* __restrict__ kmin, const store_t* __restrict__ kmax,
                                                float* __restrict__ scores, const u32 h0, const u32 hpc, const u32 b0,
                                                const u32 b1, const u32 lanes, const u32 mean_row) {
    const u32 lane = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    const u32 n_warps = blockDim.x >> 5;
    const u32 rg = lane / lanes;
    const u32 lr = lane - rg * lanes;
    const u32 rpw = 32u / lanes;
    const u32 kvh = h0 / (p.q_heads / p.kv_heads);
    const u32 col = lr * QS_VE;
    float qf[GM][QS_VE];
#pragma unroll
    for (int g = 0; g < GM; ++g) {
        if ((u32)g < hpc) {
            qs_widen(qs_ldg16(q + (h0 + (u32)g) * p.dim + col), qf[g]);
        } else {
#pragma unroll
            for (int e = 0; e < QS_VE; ++e) qf[g][e] = 0.0f;
        }
    }
    const store_t* lo = kmin + kvh * p.nb * p.dim;
    const store_t* hi = kmax + kvh * p.nb * p.dim;
    const u32 tile = rpw * U;
    for (u32 base = b0 + warp * tile; base < b1; base += n_warps * tile) {  // warp-uniform
        qs_u4 wl[U], wh[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 b = base + (u32)u * rpw + rg;
            if (b < b1) {
                wl[u] = qs_ldg16(lo + b * p.dim + col);
                wh[u] = qs_ldg16(hi + b * p.dim + col);
            } else {
                wl[u] = qs_u4{0u, 0u, 0u, 0u};
                wh[u] = qs_u4{0u, 0u, 0u, 0u};
            }
        }
        float s[U][GM];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float fl[QS_VE], fh[QS_VE];
            qs_widen(wl[u], fl);
            qs_widen(wh[u], fh);
#pragma unroll
            for (int g = 0; g < GM; ++g) {
                float a = 0.0f;
#pragma unroll
                for (int e = 0; e < QS_VE; ++e) a += fmaxf(qf[g][e] * fh[e], qf[g][e] * fl[e]);
                s[u][g] = a;
            }
        }
        for (u32 o = lanes >> 1; o > 0u; o >>= 1) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
#pragma unroll
                for (int g = 0; g < GM; ++g) s[u][g] += __shfl_xor_sync(KVS_FULL_MASK, s[u][g], o);
            }
        }
        if (lr == 0u) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const u32 b = base + (u32)u * rpw + rg;
                if (mean_row != QS_PER_HEAD) {
                    float t = 0.0f;
#pragma unroll
                    for (int g = 0; g < GM; ++g) t += (u32)g < hpc ? s[u][g] : 0.0f;
                    if (b < b1) scores[mean_row * p.nb + b] = t / (float)hpc;
                    continue;
                }
#pragma unroll
                for (int g = 0; g < GM; ++g) {
                    if (b < b1 && (u32)g < hpc) scores[(h0 + (u32)g) * p.nb + b] = s[u][g];
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    quest_scores_grouped(const BlockParams p, const store_t* __restrict__ q, const store_t* __restrict__ kmin,
                         const store_t* __restrict__ kmax, float* __restrict__ scores, const u32 hpc,
                         const u32 lanes) {
    const u32 per_cta = (p.nb + gridDim.x - 1u) / gridDim.x;
    const u32 b0 = blockIdx.x * per_cta;
    const u32 b1 = min(b0 + per_cta, p.nb);
    quest_score_run<QS_GM, QS_U>(p, q, kmin, kmax, scores, blockIdx.y * hpc, hpc, b0, b1, lanes, QS_PER_HEAD);
}

// quest_select_fused_g{1,2,4,8} (p, sp, q[Hq,D], kmin, kmax [Hkv,NB,D], ranking[Hq,NB],
//                                selected[Hq,width] i32, uidx[Hkv,cap] i32, umask[Hkv,cap] u32,
//                                ucount[Hkv] u32, tickets[Hkv] u32, lanes, cap, mean)
//   Quest decode's scores, forced top-k selection and GQA union in one launch: grid (runs,
//   Hkv), QF_THREADS threads, group G = Hq / Hkv <= GM (the entry's suffix; slots G..GM-1 idle).
//   Selector 0 (score): CTA (r, kvh) scores run r of the blocks for the G query heads of kv head
//   kvh (quest_score_run: each statistics row read once for the group) into ranking (f32), then
//   takes a ticket; the kv head's last CTA reads the G rows back and selects. Selector 1
//   (random, one run): the CTA writes the keys random_key(seed, h, b) to ranking (u32) and
//   selects by them. Selection: block_select_rows_regs, one row slot of QF_THREADS / GM threads
//   per query head, at most QF_IPT(GM) blocks per thread (NB <= QF_THREADS / GM * QF_IPT(GM),
//   checked by the host). With cap > 0 the union of the group's selections (quest_union's
//   uidx / umask / ucount) is written too. With mean != 0 (gqa = mean) ranking and selected
//   have one row per kv head: the scoring CTAs write the group's mean score (or the keys with
//   row = kvh) and the last CTA selects that one row; cap must be 0.
//
//   Ticket protocol: every thread fences its score stores, the CTA synchronises, thread 0 adds 1
//   to tickets[kvh]; the CTA that draws runs - 1 is the last (all others have fenced and
//   counted), fences again and reads the rows with ld.global.cg (from L2, never a stale L1
//   line). It resets tickets[kvh] to 0 (every other CTA of the kv head has already counted), so
//   the next launch, a CUDA-graph replay included, starts from 0; launches on the backend's one
//   stream never overlap. The host zeroes the tickets once, at backend creation.
//
//   Why one CTA per kv head selects: the G rows are 4 * G * NB bytes (32 KiB at NB 2048, G 4),
//   read once from L2, and the selection runs from registers and shared memory (no global pass
//   per radix digit as select_blocks makes); the union needs the G selections in one place.
#define QF_THREADS 512
// Blocks per thread of the selection (the keys kept in registers): the NB cap is 4096 for
// GM 1, 2 and 4, 2048 for GM 8. Mirrored by `quest_fused_kernel` in src/cuda_backend/ops.rs
// (QF_THREADS by QUEST_FUSED_THREADS, the launch's block size).
#define QF_IPT(GM) ((GM) == 1 ? 8 : (GM) == 2 ? 16 : 32)
// Rows per warp and load round of the scoring: 4 as quest_scores_grouped, 2 for GM 8, whose
// 64 query registers would otherwise spill under the 128-register cap of 512 threads.
#define QF_U(GM) ((GM) == 8 ? 2 : 4)
#define QF_MAX_NB 4096
// Read-back of the group's rows: chunks of QF_STAGE words through shared memory, QF_STAGE_PT
// per thread; QF_CHUNKS(GM) = the most words (GM * the NB cap) over QF_STAGE.
#define QF_STAGE 4096
#define QF_STAGE_PT (QF_STAGE / QF_THREADS)
#define QF_CHUNKS(GM) ((GM) == 1 ? 1 : (GM) == 2 ? 2 : 4)

template <int GM>
__device__ __forceinline__ void quest_select_fused_body(const BlockParams& p, const SelectParams& sp,
                                                        const store_t* __restrict__ q,
                                                        const store_t* __restrict__ kmin,
                                                        const store_t* __restrict__ kmax, u32* __restrict__ ranking,
                                                        int* __restrict__ selected, int* __restrict__ uidx,
                                                        u32* __restrict__ umask, u32* __restrict__ ucount,
                                                        u32* __restrict__ tickets, const u32 lanes, const u32 cap,
                                                        const u32 mean) {
    constexpr int IPT = QF_IPT(GM);
    // Byte b & 3 of word b >> 2: bit g set when query head slot g kept block b (GM <= 8).
    __shared__ u32 heads_of[QF_MAX_NB / 4];
    __shared__ u32 s_ticket;
    const u32 nb = p.nb;
    const u32 group = p.q_heads / p.kv_heads;
    const u32 kvh = blockIdx.y;
    const u32 h0 = kvh * group;
    // Selection rows of this kv head: its G query heads, or (mean) one row, kvh, for the group.
    const u32 n_rows = mean != 0u ? 1u : group;
    const u32 row0 = mean != 0u ? kvh : h0;
    const bool by_key = sp.selector != 0u;
    if (!by_key) {
        const u32 per_cta = (nb + gridDim.x - 1u) / gridDim.x;
        const u32 b0 = blockIdx.x * per_cta;
        quest_score_run<GM, QF_U(GM)>(p, q, kmin, kmax, reinterpret_cast<float*>(ranking), h0, group, b0,
                                      min(b0 + per_cta, nb), lanes, mean != 0u ? kvh : QS_PER_HEAD);
    }
    if (gridDim.x > 1u) {  // uniform
        __threadfence();   // this thread's scores are visible device-wide before the ticket
        __syncthreads();
        if (threadIdx.x == 0) s_ticket = atomicAdd(&tickets[kvh], 1u);
        __syncthreads();
        if (s_ticket + 1u != gridDim.x) return;  // uniform: not the kv head's last CTA
        if (threadIdx.x == 0) tickets[kvh] = 0u;
        __threadfence();  // the other CTAs' scores (fenced before their tickets) are read after it
    }
    for (u32 x = threadIdx.x; x < QF_MAX_NB / 4u; x += blockDim.x) heads_of[x] = 0u;
    // This thread's items: slot g (query head h0 + g), blocks [i0, i0 + ipt).
    const u32 tph = QF_THREADS / GM;
    const u32 g = threadIdx.x / tph;
    const u32 ipt = (nb + tph - 1u) / tph;  // <= IPT (host cap on nb)
    const u32 i0 = (threadIdx.x - g * tph) * ipt;
    // The group's rows are group * nb consecutive words at ranking + h0 * nb. They are read
    // (score selector) or computed and written (random) in flat order, QF_STAGE_PT words per
    // thread and chunk, so every warp access is 128 contiguous bytes; all chunks' loads are
    // issued before the first is used (one L2 latency). Each chunk then goes through shared
    // memory to the threads that hold its items: a thread's ipt items are consecutive, so lanes
    // read with a stride of ipt words, which one pad word per 32 spreads over the banks.
    constexpr int CH = QF_CHUNKS(GM);
    __shared__ u32 stage[QF_STAGE + QF_STAGE / 32];
    const u32 total = n_rows * nb;
    u32* rows = ranking + row0 * nb;
    u32 pre[CH][QF_STAGE_PT];
    {
        // Random selector: row and block of the flat index f, advanced without a division.
        u32 hr = threadIdx.x / nb;
        u32 br = threadIdx.x - hr * nb;
        const u32 dh = QF_THREADS / nb;
        const u32 db = QF_THREADS - dh * nb;
        u32 f = threadIdx.x;
#pragma unroll
        for (int c = 0; c < CH; ++c) {
#pragma unroll
            for (int t = 0; t < QF_STAGE_PT; ++t) {
                pre[c][t] = 0u;
                if (f < total) {
                    if (by_key) {
                        pre[c][t] = kvs_key(sp.seed, row0 + hr, br);
                        rows[f] = pre[c][t];
                    } else {
                        pre[c][t] = __ldcg(rows + f);  // L2: written by the kv head's other CTAs
                    }
                }
                f += QF_THREADS;
                hr += dh;
                br += db;
                if (br >= nb) {
                    br -= nb;
                    ++hr;
                }
            }
        }
    }
    BlockSelectSrc src;  // forced / eligible of Quest's rows (its key() is not used here)
    src.ranking = nullptr;
    src.current = nb - 1u;
    src.n_local = sp.n_local;
    src.force_first = sp.force_first;
    src.past_only = 0u;
    src.by_key = sp.selector;
    u32 key[IPT];
#pragma unroll
    for (int u = 0; u < IPT; ++u) key[u] = 0u;
    u32 emask = 0u;
    u32 fmask = 0u;
    const bool live = g < n_rows;
    const u32 f0 = g * nb + i0;  // flat index of this thread's first item
#pragma unroll
    for (int c = 0; c < CH; ++c) {
        const u32 c0 = (u32)c * QF_STAGE;
        if (c0 >= total) break;  // uniform
#pragma unroll
        for (int t = 0; t < QF_STAGE_PT; ++t) {
            const u32 x = (u32)t * QF_THREADS + threadIdx.x;
            stage[x + (x >> 5)] = pre[c][t];
        }
        __syncthreads();
        if (live && f0 < c0 + QF_STAGE && f0 + ipt > c0) {  // this thread has items in the chunk
#pragma unroll
            for (int u = 0; u < IPT; ++u) {
                const u32 b = i0 + (u32)u;
                const u32 x = f0 + (u32)u - c0;  // wraps above QF_STAGE when f0 + u < c0
                if ((u32)u < ipt && b < nb && x < QF_STAGE) {
                    const u32 w = stage[x + (x >> 5)];
                    key[u] = by_key ? w : f32_order_key(__uint_as_float(w));
                    if (src.forced(b)) {
                        fmask |= 1u << u;
                    } else if (src.eligible(b)) {
                        emask |= 1u << u;
                    }
                }
            }
        }
        __syncthreads();  // the next chunk overwrites the stage
    }
    const u32 take =
        block_select_rows_regs<GM, IPT>(key, emask, fmask, ipt, n_rows, sp.n_blocks, selected + row0 * sp.width, sp.width);
    if (cap == 0u) return;  // uniform: no union asked for
#pragma unroll
    for (int u = 0; u < IPT; ++u) {
        const u32 b = i0 + (u32)u;
        if ((take >> u) & 1u) atomicOr(&heads_of[b >> 2], 1u << ((b & 3u) * 8u + g));
    }
    __syncthreads();
    // The union ascending: each thread takes wpt consecutive words (4 blocks each).
    const u32 words = (nb + 3u) / 4u;
    const u32 wpt = (words + blockDim.x - 1u) / blockDim.x;
    const u32 w0 = threadIdx.x * wpt;
    u32 n_mine = 0u;
    for (u32 x = w0; x < min(w0 + wpt, words); ++x) {
        const u32 m = heads_of[x];
#pragma unroll
        for (u32 c = 0; c < 4u; ++c) n_mine += ((m >> (8u * c)) & 255u) != 0u ? 1u : 0u;
    }
    u32 n_union;
    u32 pos = block_exclusive_scan(n_mine, &n_union);
    int* ui = uidx + kvh * cap;
    u32* um = umask + kvh * cap;
    for (u32 x = w0; x < min(w0 + wpt, words); ++x) {
        const u32 m = heads_of[x];
#pragma unroll
        for (u32 c = 0; c < 4u; ++c) {
            const u32 bits = (m >> (8u * c)) & 255u;
            if (bits != 0u) {
                if (pos < cap) {
                    ui[pos] = (int)(4u * x + c);
                    um[pos] = bits;
                }
                ++pos;
            }
        }
    }
    for (u32 x = n_union + threadIdx.x; x < cap; x += blockDim.x) {
        ui[x] = -1;
        um[x] = 0u;
    }
    if (threadIdx.x == 0) ucount[kvh] = min(n_union, cap);
}

#define QF_ENTRY(GM)                                                                                                  \
    extern "C" __global__ void __launch_bounds__(QF_THREADS) quest_select_fused_g##GM(                               \
        const BlockParams p, const SelectParams sp, const store_t* __restrict__ q, const store_t* __restrict__ kmin, \
        const store_t* __restrict__ kmax, u32* __restrict__ ranking, int* __restrict__ selected,                     \
        int* __restrict__ uidx, u32* __restrict__ umask, u32* __restrict__ ucount, u32* __restrict__ tickets,        \
        const u32 lanes, const u32 cap, const u32 mean) {                                                             \
        quest_select_fused_body<GM>(p, sp, q, kmin, kmax, ranking, selected, uidx, umask, ucount, tickets, lanes,   \
                                    cap, mean);                                                                       \
    }
QF_ENTRY(1)
QF_ENTRY(2)
QF_ENTRY(4)
QF_ENTRY(8)
