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
// Radix-pass multi-CTA top-k (KVSPARSE_CUDA_TOPK=runs / fused; the select design at the end of
// this file is the default), same result as `topk`. Two digit schedules:
//   wide = 0 (runs):  4 passes of 8 bits, sort always a separate launch;
//   wide = 1 (fused): 3 radix passes of 11, 11 and 10 bits, and the sort fused into the
//                     gather's last CTA when out_k <= TOPK_RUN.
// topk_sort_runs and topk_merge_runs also sort the select design's pairs when out_k > TOPK_TILE.
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
// From the host (ops.rs), which lays out the workspace and sizes the launches with them:
// TOPK_RUN (pairs a sort CTA holds), TOPK_SORT_THREADS, TOPK_GH (ghist words per row, pass t at
// t * TOPK_BINS), TOPK_LB (lhist words per CTA: the last digit has at most 10 bits).
#define TOPK_BINS 2048                // bins of the widest digit (11 bits)
static_assert(TOPK_GH == 4 * TOPK_BINS && TOPK_LB == 1024, "topk workspace: the host's layout");
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
// count still needed among the keys that carry them (*rem), from the row's histograms gh (pass t
// at gh + t * gh_stride). `hist` is the caller's shared memory for the histograms (the bins of
// the npass digits: at most TOPK_STATE_WORDS words); on return it still holds them, pass t's
// after the bins of the passes before it.
__device__ void topk_state(const u32* gh, u32 gh_stride, u32 wide, u32 npass, u32 want, u32* hist, u32* prefix,
                           u32* rem) {
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
        for (u32 b = threadIdx.x; b < nb; b += blockDim.x) hist[base + b] = gh[t * gh_stride + b];
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
    topk_state(gh, TOPK_BINS, wide, pass, p.out_k, sh, &prefix, &rem);
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
    topk_state(w.ghist + r * TOPK_GH, TOPK_BINS, wide, npass, m, (u32*)smem, &thr, &take_eq);
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
        const u32 eq_rank = block_exclusive_scan((u32)__popc(equal), &eq_total) + eq_seen;
        const u32 take = select_regs_kept<KVS_COMPACT_ITEMS>(above, equal, eq_rank, take_eq);
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

// ---------------------------------------------------------------------------------------------
// Select design (the default for long rows): two histogram passes fix the top 16 bits of the
// threshold key, one compaction pass writes the few items that can still be in the top out_k
// to the workspace, and one CTA per row selects among them and sorts in shared memory. Three
// reads of the row (L2-resident after the first) and four launches whatever k is; no atomics
// decide where an item goes, so every intermediate list is in index order and the result does
// not depend on which CTA ran first.
//
//   topk_sel_hist    (p, scores, ws, ctas, slice, pass)   grid (ctas, R), TOPK_SEL_THREADS
//       CTA c of row r reads items [c*slice, (c+1)*slice) (slice a multiple of TOPK_SEL_ROUND).
//       pass 0: the row's histogram of digit 1 (key >> 24) into ghist[r][0] (global atomics).
//       pass 1: d1 = digit 1 of the out_k-th largest key (walk of pass 0's histogram); the
//               histogram of digit 2 ((key >> 16) & 255) of the items with digit 1 == d1 into
//               ghist[r][1], and the CTA's record rec[r][c][b], b in 0..=256: its items with
//               digit 1 > d1, or == d1 and digit 2 >= b (so rec[d2 + 1] counts its sure items and
//               rec[d2] - rec[d2 + 1] its candidates, for any d2).
//   topk_sel_compact (p, scores, ws, ctas, slice)         grid (ctas, R), TOPK_SEL_THREADS
//       t16 = the top 16 bits of the out_k-th largest key (both walks), s = out_k - need of
//       them strictly above. Items with key >> 16 > t16 are sure (s < out_k of them), those with
//       key >> 16 == t16 candidates (c >= need). Each CTA writes its sure items to sure[r] and
//       its candidates to cand[r], as (key << 32 | index), at their rank in index order: the
//       earlier CTAs' counts from their records plus a block scan. Candidates from
//       TOPK_CAND_CAP on are not stored (the finish then reads the row instead).
//   topk_sel_finish  (p, scores, ws, indices, ctas)       grid (C, R), TOPK_FINISH_THREADS,
//       dynamic shared memory 8 * (out_k <= TOPK_TILE ? out_k : 0) + 4 * TOPK_AUX bytes.
//       out_k <= TOPK_TILE and the candidates stored: the C CTAs of the row rank its sure items
//       and candidates together (topk_rank_finish) and write the indices at their ranks. Else
//       (and where the keys crowd into a few buckets) CTA 0 of the row keeps need of the c
//       candidates, ties to the lower index (block_radix_threshold and
//       block_compact_kept_to over the candidates staged in shared memory, or when c exceeds
//       TOPK_CAND_CAP (heavy ties) over the row's items with key >> 16 == t16, index order both
//       ways). The out_k pairs are the sure items then the kept candidates: every sure key is
//       above every candidate key and both parts are in index order, so a stable sort by key
//       descending gives the order of `topk`. out_k <= TOPK_TILE: that sort in shared memory
//       (topk_tile_sort) and the indices to the output; else the pairs go to `pairs` as
//       (~key << 32 | index) for topk_sort_runs / topk_merge_runs.
//
// Workspace ws (u32 words; TopkSelWs, mirrored by `topk_sel_ws` in src/cuda_backend/ops.rs):
// ghist R*TOPK_SEL_GH (zeroed by one memset before pass 0), rec R*ctas*TOPK_REC (written whole by
// pass 1), then at an even word offset u64 sure R*out_k, cand R*min(n, TOPK_CAND_CAP), and
// pairs R*out_k when out_k > TOPK_TILE.
// ---------------------------------------------------------------------------------------------
// From the host (ops.rs), which lays out the workspace and sizes the launches and the finish's
// shared memory with them: TOPK_SEL_THREADS, TOPK_SEL_GH (ghist words per row), TOPK_REC
// (record words per CTA), TOPK_CAND_CAP (candidates stored per row), TOPK_TILE (most pairs
// sorted in shared memory), TOPK_FINISH_THREADS, TOPK_AUX (finish scratch words after the tile).
#define TOPK_SEL_ROUND (TOPK_SEL_THREADS * KVS_COMPACT_ITEMS)  // items per CTA round
#define TOPK_SEL_BINS 256                                      // bins of an 8-bit digit
#define TOPK_SORT_ITEMS (TOPK_TILE / TOPK_FINISH_THREADS)      // items per thread of topk_tile_sort
#define TOPK_SORT_WARPS (TOPK_FINISH_THREADS / 32)
#define TOPK_SORT_STRIDE (TOPK_SEL_BINS + 1)                   // counter words per warp (bank spread)
static_assert(TOPK_SEL_GH == 2 * TOPK_SEL_BINS && TOPK_REC == TOPK_SEL_BINS + 1 &&
                  TOPK_AUX == TOPK_SORT_WARPS * TOPK_SORT_STRIDE,
              "topk select: the host's workspace and shared-memory layout");
static_assert(TOPK_SEL_THREADS == TOPK_SEL_BINS, "topk_sel_hist: one bin per thread");
static_assert(2 * TOPK_CAND_CAP <= TOPK_AUX && TOPK_SEL_GH <= TOPK_AUX, "finish scratch holds the staged candidates");
static_assert(TOPK_FINISH_THREADS % 32 == 0 && TOPK_FINISH_THREADS / 32 <= 32, "topk finish: whole warps, one lane each");

__device__ __forceinline__ u32 topk_cand_cap(u32 n) { return min(n, (u32)TOPK_CAND_CAP); }

struct TopkSelWs {
    u32* ghist;
    u32* rec;
    u64* sure;
    u64* cand;
    u64* pairs;
    __device__ TopkSelWs(u32* ws, u32 rows, u32 ctas, u32 n, u32 m) {
        ghist = ws;
        rec = ws + rows * TOPK_SEL_GH;
        const u32 off = rows * TOPK_SEL_GH + rows * ctas * TOPK_REC;
        sure = (u64*)(ws + ((off + 1u) & ~1u));
        cand = sure + rows * m;
        pairs = cand + rows * topk_cand_cap(n);
    }
};

// Keys of the KVS_COMPACT_ITEMS items from i0 (a multiple of 8) of a row with `end` items; items
// at or past `end` get key 0 (callers test the index). With `vec` (the row starts 16-byte
// aligned) a whole group is two float4 loads: one round trip for the thread's 8 items.
__device__ __forceinline__ void topk_load_keys(const float* row, u32 i0, u32 end, bool vec,
                                               u32 (&keys)[KVS_COMPACT_ITEMS]) {
    if (vec && i0 + KVS_COMPACT_ITEMS <= end) {
        const float4 a = __ldg((const float4*)(row + i0));
        const float4 b = __ldg((const float4*)(row + i0 + 4u));
        keys[0] = f32_order_key(a.x);
        keys[1] = f32_order_key(a.y);
        keys[2] = f32_order_key(a.z);
        keys[3] = f32_order_key(a.w);
        keys[4] = f32_order_key(b.x);
        keys[5] = f32_order_key(b.y);
        keys[6] = f32_order_key(b.z);
        keys[7] = f32_order_key(b.w);
    } else {
#pragma unroll
        for (u32 u = 0; u < KVS_COMPACT_ITEMS; ++u) keys[u] = i0 + u < end ? f32_order_key(row[i0 + u]) : 0u;
    }
}

extern "C" __global__ void __launch_bounds__(TOPK_SEL_THREADS)
    topk_sel_hist(const TopkParams p, const float* __restrict__ scores, u32* __restrict__ ws, const u32 ctas,
                  const u32 slice, const u32 pass) {
    __shared__ u32 state[TOPK_SEL_BINS];  // pass 0's row histogram, for pass 1's walk
    __shared__ u32 hist[TOPK_SEL_BINS];
    const u32 r = blockIdx.y;
    const u32 c = blockIdx.x;
    if (r >= p.rows || c >= ctas) return;  // uniform per block
    const TopkSelWs w(ws, p.rows, ctas, p.n, p.out_k);
    u32* gh = w.ghist + r * TOPK_SEL_GH;
    const float* row = scores + r * p.n;
    const bool vec = ((r * p.n) & 3u) == 0u;
    const u32 i1 = min(p.n, c * slice + slice);
    u32 keys[KVS_COMPACT_ITEMS];
    // The first round's loads go out before the state's: they do not depend on it.
    topk_load_keys(row, c * slice + threadIdx.x * KVS_COMPACT_ITEMS, i1, vec, keys);
    // The scores come from before the chain: only the workspace waits for the pass before.
    kvs_grid_dependency();
    hist[threadIdx.x] = 0u;
    u32 d1 = 0u;
    if (pass != 0u) {  // uniform
        u32 prefix, rem;
        topk_state(gh, TOPK_SEL_BINS, 0u, 1u, p.out_k, state, &prefix, &rem);
        d1 = prefix >> 24;
    }
    __syncthreads();  // hist zeroed
    u32 above = 0u;   // this thread's items with digit 1 > d1 (pass 1)
    for (u32 base = c * slice; base < i1; base += TOPK_SEL_ROUND) {
        const u32 j0 = base + threadIdx.x * KVS_COMPACT_ITEMS;
        u32 next[KVS_COMPACT_ITEMS];  // the next round's keys, in flight while this one counts
        topk_load_keys(row, j0 + TOPK_SEL_ROUND, i1, vec, next);
#pragma unroll
        for (u32 u = 0; u < KVS_COMPACT_ITEMS; ++u) {
            if (j0 + u >= i1) continue;
            const u32 key = keys[u];
            if (pass == 0u) {
                atomicAdd(&hist[key >> 24], 1u);
            } else if ((key >> 24) == d1) {
                atomicAdd(&hist[(key >> 16) & 255u], 1u);
            } else if ((key >> 24) > d1) {
                ++above;
            }
        }
#pragma unroll
        for (u32 u = 0; u < KVS_COMPACT_ITEMS; ++u) keys[u] = next[u];
    }
    __syncthreads();
    const u32 x = hist[threadIdx.x];
    if (x != 0u) atomicAdd(&gh[pass * TOPK_SEL_BINS + threadIdx.x], x);
    if (pass == 0u) return;  // uniform
    // The record: thread t takes bin b = 255 - t, so the exclusive scan counts the bins above b.
    const u32 b = TOPK_SEL_BINS - 1u - threadIdx.x;
    const u32 v = hist[b];
    u32 total;
    const u32 from_b = block_exclusive_scan(v, &total) + v;
    const u32 above_all = block_sum_u32(above);
    u32* rec = w.rec + (r * ctas + c) * TOPK_REC;
    rec[b] = above_all + from_b;
    if (threadIdx.x == 0u) rec[TOPK_SEL_BINS] = above_all;
}

extern "C" __global__ void __launch_bounds__(TOPK_SEL_THREADS)
    topk_sel_compact(const TopkParams p, const float* __restrict__ scores, u32* __restrict__ ws, const u32 ctas,
                     const u32 slice) {
    __shared__ u32 state[TOPK_SEL_GH];
    const u32 r = blockIdx.y;
    const u32 c = blockIdx.x;
    if (r >= p.rows || c >= ctas) return;  // uniform per block
    kvs_grid_dependency();
    const u32 m = p.out_k;
    const TopkSelWs w(ws, p.rows, ctas, p.n, m);
    const float* row = scores + r * p.n;
    const bool vec = ((r * p.n) & 3u) == 0u;
    const u32 i1 = min(p.n, c * slice + slice);
    u32 keys[KVS_COMPACT_ITEMS];
    topk_load_keys(row, c * slice + threadIdx.x * KVS_COMPACT_ITEMS, i1, vec, keys);  // before the state
    u32 prefix, need;
    topk_state(w.ghist + r * TOPK_SEL_GH, TOPK_SEL_BINS, 0u, 2u, m, state, &prefix, &need);
    const u32 t16 = prefix >> 16;
    const u32 d2 = t16 & 255u;
    // Where this CTA's items go: the sure items and candidates of the row's earlier CTAs.
    u32 sure_at = 0u;
    u32 cand_at = 0u;
    for (u32 c2 = threadIdx.x; c2 < c; c2 += blockDim.x) {
        const u32* rc = w.rec + (r * ctas + c2) * TOPK_REC;
        const u32 hi = rc[d2 + 1u];
        sure_at += hi;
        cand_at += rc[d2] - hi;
    }
    sure_at = block_sum_u32(sure_at);
    cand_at = block_sum_u32(cand_at);
    const u32 cap = topk_cand_cap(p.n);
    u64* sure = w.sure + r * m;
    u64* cand = w.cand + r * cap;
    for (u32 base = c * slice; base < i1; base += TOPK_SEL_ROUND) {
        const u32 j0 = base + threadIdx.x * KVS_COMPACT_ITEMS;
        u32 next[KVS_COMPACT_ITEMS];
        topk_load_keys(row, j0 + TOPK_SEL_ROUND, i1, vec, next);
        u32 is_sure = 0u;  // bit u: item j0 + u
        u32 is_cand = 0u;
#pragma unroll
        for (u32 u = 0; u < KVS_COMPACT_ITEMS; ++u) {
            const u32 top = keys[u] >> 16;
            if (j0 + u < i1 && top > t16) is_sure |= 1u << u;
            if (j0 + u < i1 && top == t16) is_cand |= 1u << u;
        }
        // Both counts in one scan: a round has at most TOPK_SEL_ROUND < 2^16 of each.
        u32 total;
        const u32 before = block_exclusive_scan(((u32)__popc(is_sure) << 16) | (u32)__popc(is_cand), &total);
        u32 ps = sure_at + (before >> 16);
        u32 pc = cand_at + (before & 0xffffu);
#pragma unroll
        for (u32 u = 0; u < KVS_COMPACT_ITEMS; ++u) {
            const u64 pair = ((u64)keys[u] << 32) | (u64)(j0 + u);
            if ((is_sure >> u) & 1u) {
                if (ps < m) sure[ps] = pair;  // always (s < out_k); the test keeps NaN keys in bounds too
                ++ps;
            }
            if ((is_cand >> u) & 1u) {
                if (pc < cap) cand[pc] = pair;
                ++pc;
            }
        }
        sure_at += total >> 16;
        cand_at += total & 0xffffu;
#pragma unroll
        for (u32 u = 0; u < KVS_COMPACT_ITEMS; ++u) keys[u] = next[u];
    }
}

// Sources of the finish's candidate selection (the Src of block_radix_threshold and
// block_compact_kept_to), both in index order, with pair(i) = (key << 32 | index) of item i.
struct TopkListSrc {  // the stored candidates
    const u64* list;
    __device__ bool forced(u32) const { return false; }
    __device__ bool eligible(u32) const { return true; }
    __device__ u32 key(u32 i) const { return (u32)(list[i] >> 32); }
    __device__ u64 pair(u32 i) const { return list[i]; }
};

struct TopkRowSrc {  // the row itself, when the candidates did not fit TOPK_CAND_CAP
    const float* row;
    u32 t16;
    __device__ bool forced(u32) const { return false; }
    __device__ bool eligible(u32 i) const { return (key(i) >> 16) == t16; }
    __device__ u32 key(u32 i) const { return f32_order_key(row[i]); }
    __device__ u64 pair(u32 i) const { return ((u64)key(i) << 32) | (u64)i; }
};

// (key << 32 | index) as topk_sort_runs orders it: ascending (~key << 32 | index) = key
// descending, ties to the lower index.
__device__ __forceinline__ u64 topk_run_pair(u64 x) { return x ^ 0xffffffff00000000ull; }

// block_compact_kept_to's sink of the finish: kept candidate number pos to out[pos].
template <class Src>
struct TopkPairSink {
    Src src;
    u64* out;
    u32 cap;
    bool for_runs;  // store as topk_run_pair
    __device__ void put(u32 pos, u32 i) const {
        if (pos < cap) out[pos] = for_runs ? topk_run_pair(src.pair(i)) : src.pair(i);
    }
};

// Every thread of the block: the `want` largest of the `n_elig` eligible items of src (ties to
// the lower index) to out[0..want), in index order.
template <class Src>
__device__ void topk_keep(const Src& src, u32 n, u32 n_elig, u32 want, u64* out, bool for_runs) {
    u32 thr = 0u;  // want == n_elig: every eligible key is >= 0, and take_eq covers them all
    u32 take_eq = n_elig;
    if (want < n_elig) block_radix_threshold(src, n, want, &thr, &take_eq);  // uniform
    block_compact_kept_to(src, n, true, thr, take_eq, TopkPairSink<Src>{src, out, want, for_runs});
}

// Stable sort of tile[0..len) ((key << 32 | index) pairs, 1 <= len <= TOPK_TILE) by key
// descending, in place, by the whole block of TOPK_FINISH_THREADS; cnt: TOPK_AUX words of shared
// memory. LSD radix sort on 8-bit digits of key - (least key): the subtraction keeps the order and
// drops the bits every key shares, so only ceil(log2(span) / 8) passes run (3 for the top 2048
// of 131072 normal scores). Per pass: warp w owns items [w*32*per, (w+1)*32*per), warp-striped
// (item u of lane l is w*32*per + 32u + l), so its rounds see its items in order; it ranks them
// with __match_any_sync against its own 256 counters (cnt[w * TOPK_SORT_STRIDE + digit]); one
// block scan over the counters in (digit, warp) order gives each (digit, warp) its first slot;
// the items are stored from registers back into the tile.
__device__ void topk_tile_sort(u64* tile, u32 len, u32* cnt) {
    const u32 lane = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    u32 lo = 0xffffffffu;
    u32 hi = 0u;
    for (u32 q = threadIdx.x; q < len; q += blockDim.x) {
        const u32 key = (u32)(tile[q] >> 32);
        lo = min(lo, key);
        hi = max(hi, key);
    }
    block_min_max_u32(&lo, &hi);
    const u32 span = hi - lo;
    const u32 passes = (32u - (u32)__clz(span) + 7u) / 8u;  // 0 when every key is equal
    const u32 per = (len + blockDim.x - 1u) / blockDim.x;   // items per lane, <= TOPK_SORT_ITEMS
    const u32 wbase = warp * 32u * per;
    u32* wcnt = cnt + warp * TOPK_SORT_STRIDE;
    for (u32 pass = 0; pass < passes; ++pass) {
        const u32 shift = 8u * pass;
        u64 item[TOPK_SORT_ITEMS];
        u32 slot[TOPK_SORT_ITEMS];  // digit, then (rank in the warp << 8) | digit
#pragma unroll
        for (u32 u = 0; u < TOPK_SORT_ITEMS; ++u) {
            const u32 q = wbase + 32u * u + lane;
            const bool real = u < per && q < len;
            item[u] = real ? tile[q] : 0ull;
            // Larger keys get smaller digits (descending). Padding gets the last digit: it comes
            // after every real item in the order, so it ranks after them all and is not stored.
            slot[u] = real ? 255u - ((((u32)(item[u] >> 32) - lo) >> shift) & 255u) : 255u;
        }
        for (u32 b = lane; b < TOPK_SEL_BINS; b += 32u) wcnt[b] = 0u;
        __syncwarp();
#pragma unroll
        for (u32 u = 0; u < TOPK_SORT_ITEMS; ++u) {
            if (u < per) {  // uniform
                const u32 d = slot[u];
                const u32 peers = __match_any_sync(KVS_FULL_MASK, d);
                const u32 lower = peers & ((1u << lane) - 1u);
                const u32 seen = wcnt[d];
                slot[u] = ((seen + (u32)__popc(lower)) << 8) | d;
                __syncwarp();  // every lane has read wcnt[d] before the leader adds to it
                if (lower == 0u) wcnt[d] = seen + (u32)__popc(peers);
                __syncwarp();
            }
        }
        __syncthreads();  // every warp's counters are complete (and every tile read is done)
        // Thread t owns counters t*8 .. t*8+7 of the (digit, warp) order: 256 * warps counters
        // over 32 * warps threads.
        u32 v[8];
        u32 sum = 0u;
#pragma unroll
        for (u32 j = 0; j < 8u; ++j) {
            const u32 f = threadIdx.x * 8u + j;
            v[j] = cnt[(f % TOPK_SORT_WARPS) * TOPK_SORT_STRIDE + f / TOPK_SORT_WARPS];
            sum += v[j];
        }
        u32 total;
        u32 at = block_exclusive_scan(sum, &total);
#pragma unroll
        for (u32 j = 0; j < 8u; ++j) {
            const u32 f = threadIdx.x * 8u + j;
            cnt[(f % TOPK_SORT_WARPS) * TOPK_SORT_STRIDE + f / TOPK_SORT_WARPS] = at;
            at += v[j];
        }
        __syncthreads();  // every (digit, warp) slot is set
#pragma unroll
        for (u32 u = 0; u < TOPK_SORT_ITEMS; ++u) {
            const u32 q = wbase + 32u * u + lane;
            if (u < per && q < len) tile[wcnt[slot[u] & 255u] + (slot[u] >> 8)] = item[u];
        }
        __syncthreads();  // the tile is whole again (and the counters free)
    }
}

// The finish by ranks, spread over the gridDim.x CTAs of a row (the single-CTA sort below took
// 21 us for out_k 2048 and 42 us for 8 rows of 8192 on the H200, ncu, run 46: one CTA's chain
// of barriers). The row's U = n_sure + n_cand pairs (sure items, then every stored candidate)
// are ranked by (key descending, index ascending), a total order in which the sure items come
// first and the candidates follow by key, ties to the lower index: the pairs ranked below out_k
// are exactly the sure items and the kept candidates, in topk's order, so no keep step is needed.
// Every CTA of the row stages all U pairs in buckets by the top 8 bits of key - (least key)
// (histogram, suffix scan, scatter): each bucket holds the same pairs at the same places in
// every CTA, in an order inside it that differs, so each bucket is ranked whole by one CTA: work
// is cut in units of 32 pairs of one bucket, the CTAs take the buckets that start in their
// share of the units and deal those units to their warps. A pair's rank is the pairs of the
// buckets above its own plus those of its bucket that come before it.
// When that costs more than TOPK_RANK_WORK compares a thread (keys in a narrow band, heavy
// ties: the sum of the buckets' squared sizes), it returns false in every CTA of the row (the
// histogram is the same) and CTA 0 sorts instead.
// bsm: U pairs of shared memory (topk_run_pair form: one u64 compare orders them).
#define TOPK_RANK_ITEMS ((TOPK_TILE + TOPK_CAND_CAP + TOPK_FINISH_THREADS - 1) / TOPK_FINISH_THREADS)
#define TOPK_RANK_WORK 512
// Not inlined: inlined into the finish (64 registers at 1024 threads) it spilled 48 bytes.
__device__ __noinline__ bool topk_rank_finish(const u64* __restrict__ sure, u32 n_sure, const u64* __restrict__ cand,
                                 u32 n_cand, u32 m, int* __restrict__ out, u64* bsm) {
    __shared__ u32 s_cnt[TOPK_SEL_BINS];
    __shared__ u32 s_start[TOPK_SEL_BINS];  // pairs in the buckets above
    __shared__ u32 s_unit[TOPK_SEL_BINS];   // units in the buckets above
    __shared__ u32 s_units;
    __shared__ u32 s_cost;
    const u32 lane = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    const u32 warps = blockDim.x / 32u;
    const u32 total = n_sure + n_cand;  // <= TOPK_TILE + TOPK_CAND_CAP
    // The thread's pairs, all loads in flight at once.
    u64 it[TOPK_RANK_ITEMS];
#pragma unroll
    for (u32 j = 0; j < TOPK_RANK_ITEMS; ++j) {
        const u32 q = threadIdx.x + j * blockDim.x;
        it[j] = q < n_sure ? sure[q] : (q < total ? cand[q - n_sure] : 0ull);
    }
    for (u32 b = threadIdx.x; b < TOPK_SEL_BINS; b += blockDim.x) s_cnt[b] = 0u;
    u32 lo = 0xffffffffu;
    u32 hi = 0u;
#pragma unroll
    for (u32 j = 0; j < TOPK_RANK_ITEMS; ++j) {
        if (threadIdx.x + j * blockDim.x < total) {
            const u32 key = (u32)(it[j] >> 32);
            lo = min(lo, key);
            hi = max(hi, key);
        }
    }
    block_min_max_u32(&lo, &hi);  // its barrier also orders s_cnt's zeroing before the counts
    // Bucket = the top 8 of the bits in which the keys differ from the least: larger keys get
    // larger buckets, and every bucket is a range of keys.
    const u32 bits = 32u - (u32)__clz(hi - lo);
    const u32 shift = bits > 8u ? bits - 8u : 0u;
    auto bucket = [&](u64 x) { return ((u32)(x >> 32) - lo) >> shift; };
    // Plain shared atomics: a warp's pairs mostly fall into distinct buckets, where the
    // aggregation by __match_any_sync (hist_add_warp) costs more than it saves.
#pragma unroll
    for (u32 j = 0; j < TOPK_RANK_ITEMS; ++j) {
        if (threadIdx.x + j * blockDim.x < total) atomicAdd(&s_cnt[bucket(it[j])], 1u);
    }
    __syncthreads();
    // Warp 0, 8 bins a lane from the top: the pairs and units of the buckets above each, and
    // the cost of the ranks (sum of squared bucket sizes).
    if (warp == 0u) {
        const u32 top = TOPK_SEL_BINS - 1u - 8u * lane;
        u32 run = 0u, units = 0u, cost = 0u;
#pragma unroll
        for (u32 i = 0; i < 8u; ++i) {
            const u32 c = s_cnt[top - i];
            run += c;
            units += (c + 31u) / 32u;
            cost += c * c;
        }
        u32 incl = run, uincl = units;
#pragma unroll
        for (u32 o = 1; o < 32u; o <<= 1) {
            const u32 y = __shfl_up_sync(KVS_FULL_MASK, incl, o);
            const u32 uy = __shfl_up_sync(KVS_FULL_MASK, uincl, o);
            if (lane >= o) {
                incl += y;
                uincl += uy;
            }
        }
        u32 at = incl - run, uat = uincl - units;
#pragma unroll
        for (u32 i = 0; i < 8u; ++i) {
            const u32 c = s_cnt[top - i];
            s_start[top - i] = at;
            s_unit[top - i] = uat;
            at += c;
            uat += (c + 31u) / 32u;
        }
#pragma unroll
        for (u32 o = 16; o > 0u; o >>= 1) cost += __shfl_xor_sync(KVS_FULL_MASK, cost, o);
        if (lane == 31u) s_units = uincl;
        if (lane == 0u) s_cost = cost;
    }
    __syncthreads();
    // The ranks cost s_cost compares over the row's C * blockDim threads (s_cost <= U^2 < 2^32).
    if (s_cost / 32u > (u32)TOPK_RANK_WORK * gridDim.x * warps) return false;  // uniform (every CTA of the row)
    // Scatter into the buckets; s_cnt counts down the places left in each.
#pragma unroll
    for (u32 j = 0; j < TOPK_RANK_ITEMS; ++j) {
        if (threadIdx.x + j * blockDim.x < total) {
            const u32 d = bucket(it[j]);
            bsm[s_start[d] + atomicSub(&s_cnt[d], 1u) - 1u] = topk_run_pair(it[j]);
        }
    }
    __syncthreads();
    const u32 n_units = s_units;
    // The bucket of unit u: the least d whose units above are <= u (s_unit falls with d).
    auto unit_bucket = [&](u32 u) {
        u32 d = 0u;
#pragma unroll
        for (u32 step = TOPK_SEL_BINS / 2u; step > 0u; step >>= 1) {
            if (s_unit[d + step] > u) d += step;
        }
        return s_unit[d] > u ? d + 1u : d;
    };
    // The first unit at or past u that starts a bucket (n_units past the last).
    auto bucket_start_from = [&](u32 u) {
        if (u >= n_units) return n_units;
        const u32 d = unit_bucket(u);
        if (s_unit[d] == u) return u;
        return d == 0u ? n_units : s_unit[d] + (s_start[d - 1u] - s_start[d] + 31u) / 32u;  // bucket d's end
    };
    // This CTA's buckets: those that start in its share of the units. A bucket's places hold
    // the same pairs in every CTA, but not in the same order, so each bucket is ranked whole by
    // one CTA.
    const u32 u0 = bucket_start_from((u32)(((u64)n_units * blockIdx.x) / gridDim.x));
    const u32 u1 = bucket_start_from((u32)(((u64)n_units * (blockIdx.x + 1u)) / gridDim.x));
    for (u32 u = u0 + warp; u < u1; u += warps) {  // warp-uniform
        const u32 d = unit_bucket(u);
        const u32 b0 = s_start[d];
        const u32 b1 = d == 0u ? total : s_start[d - 1u];
        const u32 q = b0 + (u - s_unit[d]) * 32u + lane;
        if (q < b1) {
            const u64 x = bsm[q];
            u32 rank = b0;
#pragma unroll 4
            for (u32 e = b0; e < b1; ++e) rank += bsm[e] < x ? 1u : 0u;
            if (rank < m) out[rank] = (int)(u32)x;
        }
    }
    return true;
}

extern "C" __global__ void __launch_bounds__(TOPK_FINISH_THREADS)
    topk_sel_finish(const TopkParams p, const float* __restrict__ scores, u32* __restrict__ ws,
                    int* __restrict__ indices, const u32 ctas) {
    extern __shared__ u64 topk_dyn[];
    const u32 r = blockIdx.y;
    if (r >= p.rows) return;  // uniform per block
    kvs_grid_dependency();
    const u32 m = p.out_k;
    const TopkSelWs w(ws, p.rows, ctas, p.n, m);
    const bool in_tile = m <= TOPK_TILE;
    u64* tile = topk_dyn;
    u32* aux = (u32*)(topk_dyn + (in_tile ? m : 0u));  // TOPK_AUX words
    u32 prefix, need;
    topk_state(w.ghist + r * TOPK_SEL_GH, TOPK_SEL_BINS, 0u, 2u, m, aux, &prefix, &need);
    const u32 t16 = prefix >> 16;
    const u32 n_cand = aux[TOPK_SEL_BINS + (t16 & 255u)];  // pass 1's bin d2, still in aux
    const u32 n_sure = m - need;
    const u32 cap = topk_cand_cap(p.n);
    __syncthreads();  // every thread has n_cand before aux is reused
    // The pairs' buckets alias the tile and aux: U <= out_k + TOPK_CAND_CAP pairs fit in
    // 8 out_k + 4 TOPK_AUX bytes, and the single-CTA path below only runs when they were not
    // written.
    if (in_tile && n_cand <= cap &&
        topk_rank_finish(w.sure + r * m, n_sure, w.cand + r * cap, n_cand, m, indices + r * m, topk_dyn)) {
        return;  // uniform per row
    }
    if (blockIdx.x != 0u) return;  // uniform: the sort takes one CTA of the row
    u64* out = in_tile ? tile : w.pairs + r * m;
    const u64* sure = w.sure + r * m;
#pragma unroll 4
    for (u32 q = threadIdx.x; q < n_sure; q += blockDim.x) {
        const u64 x = sure[q];
        out[q] = in_tile ? x : topk_run_pair(x);
    }
    if (n_cand <= cap) {  // uniform
        u64* stage = (u64*)aux;
        const u64* cand = w.cand + r * cap;
#pragma unroll 4
        for (u32 q = threadIdx.x; q < n_cand; q += blockDim.x) stage[q] = cand[q];
        __syncthreads();
        topk_keep(TopkListSrc{stage}, n_cand, n_cand, need, out + n_sure, !in_tile);
    } else {
        topk_keep(TopkRowSrc{scores + r * p.n, t16}, p.n, n_cand, need, out + n_sure, !in_tile);
    }
    if (!in_tile) return;  // uniform: topk_sort_runs takes the pairs from here
    __syncthreads();       // the tile is whole; the staged candidates are dead
    topk_tile_sort(tile, m, aux);
    for (u32 q = threadIdx.x; q < m; q += blockDim.x) indices[r * m + q] = (int)(u32)tile[q];
}
