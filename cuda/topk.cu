// cuda/topk.cu: top-k of score rows (SPEC §5.1), for long rows too (N 131072+, k up to N/4).
//
// Prepended: TopkParams, common.cuh (no storage dtype). Entry point (same name as
// shaders/topk.wgsl):
//   topk (p, scores[R*n] f32, indices[R*out_k] i32, scratch[R * 4 * out_k] u32)
// One block per row:
//   1. radix select on the order-preserving u32 image of the score (8-bit digits) finds the
//      threshold of the out_k-th best; an ordered compaction writes the kept indices ascending
//      (ties at the threshold keep the lowest indices) into the row's scratch;
//   2. their keys are gathered and the (key, index) pairs sorted by key descending with a stable
//      LSD split sort, so equal scores stay in ascending index order;
//   3. the sorted indices are the output row.
// -inf ranks last; NaN (rejected by the CPU backend) gets an unspecified but in-bounds rank.

struct TopkSrc {
    const float* row;
    __device__ bool forced(u32) const { return false; }
    __device__ bool eligible(u32) const { return true; }
    __device__ u32 key(u32 i) const { return f32_order_key(row[i]); }
};

extern "C" __global__ void topk(const TopkParams p, const float* __restrict__ scores, int* __restrict__ indices,
                                u32* __restrict__ scratch) {
    const u32 r = blockIdx.x;
    if (r >= p.rows) return;  // uniform per block
    const u32 m = p.out_k;    // min(k, n) >= 1
    TopkSrc src;
    src.row = scores + r * p.n;
    u32* ka = scratch + r * 4u * m;
    u32* va = ka + m;
    u32* kb = va + m;
    u32* vb = kb + m;
    block_select_row(src, p.n, m, (int*)va, m);  // exactly m kept, ascending
    __syncthreads();
    for (u32 q = threadIdx.x; q < m; q += blockDim.x) ka[q] = src.key(va[q]);
    __syncthreads();
    const bool in_a = block_sort_desc_stable(ka, va, kb, vb, m);
    const u32* sorted = in_a ? va : vb;
    for (u32 q = threadIdx.x; q < m; q += blockDim.x) indices[r * m + q] = (int)sorted[q];
}

// ---------------------------------------------------------------------------------------------
// Tuned top-k (opt-in, KVSPARSE_CUDA_TOPK_TUNE=1): several CTAs per row, same result as `topk`.
//
//   topk_hist       (p, scores, ghist[R*4*256], lhist[R*ctas*256], ctas, slice, pass)
//                   grid (ctas, R). CTA c of row r takes items [c*slice, (c+1)*slice) and adds a
//                   256-bin shared histogram of digit `pass` (8 bits, most significant first)
//                   of the keys that match the digits fixed by passes 0..pass-1 into
//                   ghist[r][pass] (global atomics). The fixed digits are re-derived in every
//                   CTA from ghist[r][0..pass] (topk_state), so no launch is spent on them.
//                   Pass 3 also stores the CTA's own histogram in lhist[r][c].
//   topk_gather     (p, scores, ghist, lhist, counter[R], pairs[R*out_k] u64, ctas, slice)
//                   grid (ctas, R). Threshold key thr and take_eq from the 4 histograms; the
//                   items with key == thr in earlier CTAs are lhist[r][c'][thr & 255]; each
//                   CTA keeps its items with key > thr and its equal items whose rank among the
//                   row's equal items (index order) is below take_eq, and appends them as
//                   (~key << 32 | index) to the row's pairs at a position taken from
//                   counter[r] (atomics: the order is fixed by the sort, not here).
//   topk_sort_runs  (p, pairs, indices, run, direct)
//                   grid (runs, R), TOPK_SORT_THREADS threads: bitonic sort ascending of a run
//                   of at most TOPK_RUN pairs in shared memory (padded with ~0 to a power of
//                   two). Ascending (~key, index) = key descending, ties to the lower index:
//                   the order of `topk`. With direct != 0 (one run per row) the indices go
//                   straight to the output.
//   topk_merge_runs (p, src, dst, indices, run, last)
//                   grid (ceil(out_k / 256), R): merges neighbouring sorted runs of `run` pairs
//                   (2*run after). Every pair is distinct (the index is in it), so a pair's
//                   place is its place in its run plus the count of smaller pairs in the other
//                   run (a binary search): no ties, no merge path. `last` writes the indices.
// Scratch ghist and counter must be zero before topk_hist pass 0 (the host memsets them).
// ---------------------------------------------------------------------------------------------
#define TOPK_RUN 4096
#define TOPK_SORT_THREADS 1024

// Warp 0 of the block: the digit walk of block_radix_threshold over hist[256] (the count still
// needed is *s_rem; the digit found is or-ed into *s_prefix at `shift`).
__device__ void topk_walk(const u32* hist, u32 shift, u32* s_prefix, u32* s_rem) {
    const u32 lane = threadIdx.x;
    const u32 top = 255u - 8u * lane;
    u32 run = 0u;
#pragma unroll
    for (u32 i = 0; i < 8u; ++i) run += hist[top - i];
    u32 incl = run;
#pragma unroll
    for (u32 o = 1; o < 32u; o <<= 1) {
        const u32 y = __shfl_up_sync(KVS_FULL_MASK, incl, o);
        if (lane >= o) incl += y;
    }
    const u32 rem0 = *s_rem;
    const u32 hit = __ballot_sync(KVS_FULL_MASK, incl >= rem0);
    const u32 owner = hit != 0u ? (u32)(__ffs(hit) - 1) : 31u;
    if (lane == owner) {
        u32 rem = rem0 - (incl - run);
        u32 d = top;
        for (u32 i = 0; i < 7u && d > 0u && hist[d] < rem; ++i) {
            rem -= hist[d];
            --d;
        }
        *s_prefix |= d << shift;
        *s_rem = rem;
    }
}

// Every thread of the block: the digits fixed by the first `npass` passes (*prefix) and the
// count still needed among the keys that carry them (*rem), from the row's histograms gh.
__device__ void topk_state(const u32* gh, u32 npass, u32 want, u32* prefix, u32* rem) {
    // All the histograms in one round of loads (one L2 round trip), then warp 0 walks them.
    __shared__ u32 hist[1024];
    __shared__ u32 s_prefix;
    __shared__ u32 s_rem;
    if (threadIdx.x == 0) {
        s_prefix = 0u;
        s_rem = want;
    }
    for (u32 b = threadIdx.x; b < npass * 256u; b += blockDim.x) hist[b] = gh[b];
    __syncthreads();
    if (threadIdx.x < 32u) {
        for (u32 t = 0; t < npass; ++t) {
            topk_walk(hist + t * 256u, 24u - 8u * t, &s_prefix, &s_rem);
            __syncwarp();  // the owner lane's s_prefix / s_rem are seen by the next walk
        }
    }
    __syncthreads();
    *prefix = s_prefix;
    *rem = s_rem;
    __syncthreads();
}

extern "C" __global__ void topk_hist(const TopkParams p, const float* __restrict__ scores, u32* __restrict__ ghist,
                                     u32* __restrict__ lhist, const u32 ctas, const u32 slice, const u32 pass) {
    __shared__ u32 sh[256];
    const u32 r = blockIdx.y;
    const u32 c = blockIdx.x;
    if (r >= p.rows || c >= ctas) return;  // uniform per block
    u32* gh = ghist + r * 1024u;
    u32 prefix, rem;
    topk_state(gh, pass, p.out_k, &prefix, &rem);
    const u32 mask = pass == 0u ? 0u : 0xffffffffu << (32u - 8u * pass);
    const u32 shift = 24u - 8u * pass;
    for (u32 b = threadIdx.x; b < 256u; b += blockDim.x) sh[b] = 0u;
    __syncthreads();
    const float* row = scores + r * p.n;
    const u32 i0 = c * slice;
    const u32 i1 = min(p.n, i0 + slice);
#pragma unroll 4
    for (u32 i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        const u32 key = f32_order_key(row[i]);
        if ((key & mask) == prefix) atomicAdd(&sh[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    for (u32 b = threadIdx.x; b < 256u; b += blockDim.x) {
        const u32 x = sh[b];
        if (x != 0u) atomicAdd(&gh[pass * 256u + b], x);
        if (pass == 3u) lhist[(r * ctas + c) * 256u + b] = x;
    }
}

extern "C" __global__ void topk_gather(const TopkParams p, const float* __restrict__ scores,
                                       const u32* __restrict__ ghist, const u32* __restrict__ lhist,
                                       u32* __restrict__ counter, u64* __restrict__ pairs, const u32 ctas,
                                       const u32 slice) {
    __shared__ u32 s_base;
    const u32 r = blockIdx.y;
    const u32 c = blockIdx.x;
    if (r >= p.rows || c >= ctas) return;  // uniform per block
    const u32 m = p.out_k;
    u32 thr, take_eq;
    topk_state(ghist + r * 1024u, 4u, m, &thr, &take_eq);
    // Items equal to the threshold in the row's earlier CTAs (index order = CTA order).
    u32 eq_before = 0u;
    for (u32 c2 = threadIdx.x; c2 < c; c2 += blockDim.x) eq_before += lhist[(r * ctas + c2) * 256u + (thr & 255u)];
    eq_before = block_sum_u32(eq_before);
    const float* row = scores + r * p.n;
    u64* out = pairs + r * m;
    const u32 i1 = min(p.n, c * slice + slice);
    u32 eq_seen = eq_before;
    for (u32 base = c * slice; base < i1; base += blockDim.x * KVS_COMPACT_ITEMS) {
        const u32 j0 = base + threadIdx.x * KVS_COMPACT_ITEMS;
        u32 keys[KVS_COMPACT_ITEMS];
        u32 above = 0u;
        u32 equal = 0u;
#pragma unroll
        for (u32 u = 0; u < KVS_COMPACT_ITEMS; ++u) {
            const u32 i = j0 + u;
            keys[u] = i < i1 ? f32_order_key(row[i]) : 0u;
            if (i < i1 && keys[u] > thr) above |= 1u << u;
            if (i < i1 && keys[u] == thr) equal |= 1u << u;
        }
        u32 eq_total;
        u32 eq_rank = block_exclusive_scan((u32)__popc(equal), &eq_total) + eq_seen;
        u32 take = above;
#pragma unroll
        for (u32 u = 0; u < KVS_COMPACT_ITEMS; ++u) {
            if ((equal >> u) & 1u) {
                if (eq_rank < take_eq) take |= 1u << u;
                ++eq_rank;
            }
        }
        u32 take_total;
        u32 pos = block_exclusive_scan((u32)__popc(take), &take_total);
        if (take_total != 0u) {  // uniform
            if (threadIdx.x == 0) s_base = atomicAdd(&counter[r], take_total);
            __syncthreads();
            pos += s_base;
#pragma unroll
            for (u32 u = 0; u < KVS_COMPACT_ITEMS; ++u) {
                if ((take >> u) & 1u) {
                    if (pos < m) out[pos] = ((u64)(~keys[u]) << 32) | (u64)(j0 + u);
                    ++pos;
                }
            }
            __syncthreads();  // s_base is rewritten by the next round
        }
        eq_seen += eq_total;
    }
}

extern "C" __global__ void __launch_bounds__(TOPK_SORT_THREADS)
    topk_sort_runs(const TopkParams p, u64* __restrict__ pairs, int* __restrict__ indices, const u32 run,
                   const u32 direct) {
    __shared__ u64 s[TOPK_RUN];
    const u32 r = blockIdx.y;
    const u32 m = p.out_k;
    const u32 start = blockIdx.x * run;
    if (r >= p.rows || start >= m) return;  // uniform per block
    const u32 len = min(run, m - start);
    u32 size_p = 1u;
    while (size_p < len) size_p <<= 1;
    u64* src = pairs + r * m + start;
    for (u32 i = threadIdx.x; i < size_p; i += blockDim.x) s[i] = i < len ? src[i] : ~0ull;
    for (u32 size = 2u; size <= size_p; size <<= 1) {
        for (u32 stride = size >> 1; stride > 0u; stride >>= 1) {
            __syncthreads();
            for (u32 t = threadIdx.x; t < size_p / 2u; t += blockDim.x) {
                const u32 i = (t / stride) * stride * 2u + (t % stride);
                const u32 j = i + stride;
                const bool asc = (i & size) == 0u;
                const u64 a = s[i];
                const u64 b = s[j];
                if ((a > b) == asc) {
                    s[i] = b;
                    s[j] = a;
                }
            }
        }
    }
    __syncthreads();
    for (u32 i = threadIdx.x; i < len; i += blockDim.x) {
        if (direct != 0u) {
            indices[r * m + start + i] = (int)(u32)s[i];
        } else {
            src[i] = s[i];
        }
    }
}

extern "C" __global__ void topk_merge_runs(const TopkParams p, const u64* __restrict__ src, u64* __restrict__ dst,
                                           int* __restrict__ indices, const u32 run, const u32 last) {
    const u32 r = blockIdx.y;
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    const u32 m = p.out_k;
    if (r >= p.rows || i >= m) return;
    const u64* row = src + r * m;
    const u32 own = i / run;
    const u32 own_start = own * run;
    const u32 other_start = (own ^ 1u) * run;
    const u64 x = row[i];
    u32 place = i;  // a last run without a partner stays where it is
    if (other_start < m) {
        const u32 other_end = min(other_start + run, m);
        // Count of the other run's pairs below x (lower bound; the pairs are distinct).
        u32 lo = other_start;
        u32 hi = other_end;
        while (lo < hi) {
            const u32 mid = (lo + hi) >> 1;
            if (row[mid] < x) {
                lo = mid + 1u;
            } else {
                hi = mid;
            }
        }
        place = min(own_start, other_start) + (i - own_start) + (lo - other_start);
    }
    dst[r * m + place] = x;
    if (last != 0u) indices[r * m + place] = (int)(u32)x;
}
