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
// Multi-CTA top-k (the default for long rows), same result as `topk`. Two digit schedules:
//   wide = 1 (default): 3 radix passes of 11, 11 and 10 bits, and the sort fused into the
//                       gather's last CTA when out_k <= TOPK_RUN;
//   wide = 0 (KVSPARSE_CUDA_TOPK=runs): 4 passes of 8 bits, sort always a separate launch.
//
//   topk_hist       (p, scores, ws, ctas, slice, pass, wide)
//                   grid (ctas, R). CTA c of row r takes items [c*slice, (c+1)*slice) and adds a
//                   shared histogram of digit `pass` (most significant first) of the keys that
//                   match the digits fixed by the earlier passes into the row's ghist (global
//                   atomics). The fixed digits are re-derived in every CTA from the earlier
//                   histograms (topk_state), so no launch is spent on them. The last pass also
//                   stores the CTA's own histogram in lhist[r][c].
//   topk_gather     (p, scores, ws, indices, ctas, slice, wide, fuse)
//                   grid (ctas, R). Threshold key thr and take_eq from the histograms; the items
//                   with key == thr in earlier CTAs are lhist[r][c'][low digit of thr]; each CTA
//                   keeps its items with key > thr and its equal items whose rank among the
//                   row's equal items (index order) is below take_eq, and appends them as
//                   (~key << 32 | index) to the row's pairs at a position taken from the row's
//                   counter (atomics: the order is fixed by the sort, not here). With fuse != 0
//                   (out_k <= TOPK_RUN) the row's last CTA to finish (ticket) sorts the pairs
//                   and writes the indices.
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
//
// Workspace ws (u32 words, one allocation; TopkWs below, mirrored by `topk_ws_words` in
// src/cuda_backend/ops.rs): ghist R*TOPK_GH, counters R*2 (gather position, done ticket),
// both zeroed by one memset before pass 0; lhist R*ctas*TOPK_LB; then (even word offset) the
// pairs R*out_k u64.
// ---------------------------------------------------------------------------------------------
#define TOPK_RUN 4096
#define TOPK_SORT_THREADS 1024
#define TOPK_BINS 2048                // bins of the widest digit (11 bits)
#define TOPK_GH (4 * TOPK_BINS)       // ghist words per row (pass t at t * TOPK_BINS)
#define TOPK_LB 1024                  // lhist words per CTA (the last digit has at most 10 bits)
#define TOPK_STATE_WORDS (5 * 1024)   // shared histogram words of topk_state (2048+2048+1024)

struct TopkWs {
    u32* ghist;
    u32* counter;
    u32* lhist;
    u64* pairs;
    __device__ TopkWs(u32* ws, u32 rows, u32 ctas) {
        ghist = ws;
        counter = ws + rows * TOPK_GH;
        lhist = counter + 2u * rows;
        const u32 off = rows * (TOPK_GH + 2u) + rows * ctas * TOPK_LB;
        pairs = (u64*)(ws + ((off + 1u) & ~1u));
    }
};

// Digit `pass` of a schedule: its width and shift (most significant first).
__device__ __forceinline__ u32 topk_passes(u32 wide) { return wide != 0u ? 3u : 4u; }
__device__ __forceinline__ u32 topk_bits(u32 wide, u32 pass) { return wide != 0u ? (pass < 2u ? 11u : 10u) : 8u; }
__device__ __forceinline__ u32 topk_shift(u32 wide, u32 pass) { return wide != 0u ? (pass < 2u ? 21u - 11u * pass : 0u) : 24u - 8u * pass; }

// Warp 0 of the block: the digit walk of block_radix_threshold over hist[1 << bits] (the count
// still needed is *s_rem; the digit found is or-ed into *s_prefix at `shift`). Lane l sums the
// `per` bins from top = nbins-1 - per*l down; one lane walks the run where the count is reached.
__device__ void topk_walk(const u32* hist, u32 bits, u32 shift, u32* s_prefix, u32* s_rem) {
    const u32 lane = threadIdx.x;
    const u32 per = (1u << bits) / 32u;
    const u32 top = (1u << bits) - 1u - per * lane;
    u32 run = 0u;
    for (u32 i = 0; i < per; ++i) run += hist[top - i];
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
        for (u32 i = 0; i + 1u < per && d > 0u && hist[d] < rem; ++i) {
            rem -= hist[d];
            --d;
        }
        *s_prefix |= d << shift;
        *s_rem = rem;
    }
}

// Every thread of the block: the digits fixed by the first `npass` passes (*prefix) and the
// count still needed among the keys that carry them (*rem), from the row's histograms gh.
// `hist` is TOPK_STATE_WORDS words of the caller's shared memory (free again on return).
__device__ void topk_state(const u32* gh, u32 wide, u32 npass, u32 want, u32* hist, u32* prefix, u32* rem) {
    // All the histograms in one round of loads (one L2 round trip), then warp 0 walks them.
    __shared__ u32 s_prefix;
    __shared__ u32 s_rem;
    if (threadIdx.x == 0) {
        s_prefix = 0u;
        s_rem = want;
    }
    u32 base = 0u;
    for (u32 t = 0; t < npass; ++t) {
        const u32 nb = 1u << topk_bits(wide, t);
        for (u32 b = threadIdx.x; b < nb; b += blockDim.x) hist[base + b] = gh[t * TOPK_BINS + b];
        base += nb;
    }
    __syncthreads();
    if (threadIdx.x < 32u) {
        base = 0u;
        for (u32 t = 0; t < npass; ++t) {
            topk_walk(hist + base, topk_bits(wide, t), topk_shift(wide, t), &s_prefix, &s_rem);
            base += 1u << topk_bits(wide, t);
            __syncwarp();  // the owner lane's s_prefix / s_rem are seen by the next walk
        }
    }
    __syncthreads();
    *prefix = s_prefix;
    *rem = s_rem;
    __syncthreads();
}

extern "C" __global__ void topk_hist(const TopkParams p, const float* __restrict__ scores, u32* __restrict__ ws,
                                     const u32 ctas, const u32 slice, const u32 pass, const u32 wide) {
    __shared__ u32 sh[TOPK_STATE_WORDS];
    const u32 r = blockIdx.y;
    const u32 c = blockIdx.x;
    if (r >= p.rows || c >= ctas) return;  // uniform per block
    const TopkWs w(ws, p.rows, ctas);
    u32* gh = w.ghist + r * TOPK_GH;
    u32 prefix, rem;
    topk_state(gh, wide, pass, p.out_k, sh, &prefix, &rem);
    const u32 bits = topk_bits(wide, pass);
    const u32 shift = topk_shift(wide, pass);
    const u32 nb = 1u << bits;
    const u32 mask = shift + bits >= 32u ? 0u : 0xffffffffu << (shift + bits);
    for (u32 b = threadIdx.x; b < nb; b += blockDim.x) sh[b] = 0u;
    __syncthreads();
    const float* row = scores + r * p.n;
    const u32 i0 = c * slice;
    const u32 i1 = min(p.n, i0 + slice);
#pragma unroll 4
    for (u32 i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        const u32 key = f32_order_key(row[i]);
        if ((key & mask) == prefix) atomicAdd(&sh[(key >> shift) & (nb - 1u)], 1u);
    }
    __syncthreads();
    const bool last = pass + 1u == topk_passes(wide);
    for (u32 b = threadIdx.x; b < nb; b += blockDim.x) {
        const u32 x = sh[b];
        if (x != 0u) atomicAdd(&gh[pass * TOPK_BINS + b], x);
        if (last) w.lhist[(r * ctas + c) * TOPK_LB + b] = x;
    }
}

// The block's bitonic sort ascending of `len` <= TOPK_RUN pairs from src (padded with ~0 to a
// power of two in the shared tile s); the sorted pairs go back to src, or with out != nullptr
// only their indices to out.
__device__ void topk_sort_tile(u64* src, u32 len, u64* s, int* out) {
    u32 size_p = 1u;
    while (size_p < len) size_p <<= 1;
    for (u32 i = threadIdx.x; i < size_p; i += blockDim.x) s[i] = i < len ? __ldcg(src + i) : ~0ull;
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
        if (out != nullptr) {
            out[i] = (int)(u32)s[i];
        } else {
            src[i] = s[i];
        }
    }
}

extern "C" __global__ void topk_gather(const TopkParams p, const float* __restrict__ scores, u32* __restrict__ ws,
                                       int* __restrict__ indices, const u32 ctas, const u32 slice, const u32 wide,
                                       const u32 fuse) {
    // The state's histograms, then (fused sort, last CTA of the row) the sort tile.
    __shared__ u64 smem[TOPK_RUN];
    __shared__ u32 s_base;
    const u32 r = blockIdx.y;
    const u32 c = blockIdx.x;
    if (r >= p.rows || c >= ctas) return;  // uniform per block
    const u32 m = p.out_k;
    const TopkWs w(ws, p.rows, ctas);
    const u32 npass = topk_passes(wide);
    u32 thr, take_eq;
    topk_state(w.ghist + r * TOPK_GH, wide, npass, m, (u32*)smem, &thr, &take_eq);
    // Items equal to the threshold in the row's earlier CTAs (index order = CTA order).
    const u32 low = thr & ((1u << topk_bits(wide, npass - 1u)) - 1u);
    u32 eq_before = 0u;
    for (u32 c2 = threadIdx.x; c2 < c; c2 += blockDim.x) eq_before += w.lhist[(r * ctas + c2) * TOPK_LB + low];
    eq_before = block_sum_u32(eq_before);
    const float* row = scores + r * p.n;
    u64* out = w.pairs + r * m;
    u32* counter = w.counter + 2u * r;
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
            if (threadIdx.x == 0) s_base = atomicAdd(&counter[0], take_total);
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
    if (fuse == 0u) return;  // uniform
    // Last CTA of the row: every other CTA's pairs are written (each fenced its writes before
    // taking its ticket), so it sorts the row (m <= TOPK_RUN: one tile).
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_base = atomicAdd(&counter[1], 1u);
    __syncthreads();
    if (s_base + 1u != ctas) return;  // uniform
    __threadfence();
    topk_sort_tile(out, m, smem, indices + r * m);
}

extern "C" __global__ void __launch_bounds__(TOPK_SORT_THREADS)
    topk_sort_runs(const TopkParams p, u64* __restrict__ pairs, int* __restrict__ indices, const u32 run,
                   const u32 direct) {
    __shared__ u64 s[TOPK_RUN];
    const u32 r = blockIdx.y;
    const u32 m = p.out_k;
    const u32 start = blockIdx.x * run;
    if (r >= p.rows || start >= m) return;  // uniform per block
    topk_sort_tile(pairs + r * m + start, min(run, m - start), s, direct != 0u ? indices + r * m + start : nullptr);
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
