// cuda/select.cu: forced top-k block selection of Quest decode and MoBA prefill
// (SPEC §2.3, §3.3, §5.2, §8.2).
//
// Prepended: SelectParams, common.cuh (no storage dtype). Entry points (same names as
// shaders/select.wgsl):
//   select_keys   (p, keys[rows*nb] u32)        keys[r, b] = random_key(seed, r, b); one thread
//                                               per entry (Quest: r = query head; MoBA: r = h*T + t)
//   select_blocks (p, ranking[rows*nb], selected[rows*width] i32)
//                 one block per row. `ranking` holds f32 scores (selector 0, ranked through
//                 f32_order_key) or u32 random keys (selector 1). Mode 0 (Quest): the current
//                 block is NB-1 and every block is a candidate. Mode 1 (MoBA): row r is query
//                 head r / seq, token r % seq; the current block is token / block_size and only
//                 past blocks are candidates. Forced = {0 if force_first} ∪
//                 {current-n_local+1 ..= current}; the best n_blocks - #forced candidates join;
//                 the row is written ascending and padded with -1 to `width`.
//   select_blocks_warp (p, ranking, selected)  the same, one warp per row (NB <= 2048)

extern "C" __global__ void select_keys(const SelectParams p, u32* __restrict__ keys) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.rows * p.nb) return;
    const u32 r = e / p.nb;
    keys[e] = kvs_key(p.seed, r, e - r * p.nb);
}

// BlockSelectSrc (the row of ranks block_select_row reads): common.cuh.

// Row r's forced / eligible rules and keys (Quest: current block NB-1; MoBA: the token's block).
__device__ __forceinline__ BlockSelectSrc select_row_src(const SelectParams& p, const u32* ranking, u32 r) {
    BlockSelectSrc src;
    src.ranking = ranking + r * p.nb;
    if (p.mode == 0u) {
        src.current = p.nb - 1u;
    } else {
        const u32 t = r % p.seq;
        src.current = min(t / p.block_size, p.nb - 1u);
    }
    src.n_local = p.n_local;
    src.force_first = p.force_first;
    src.past_only = p.mode;
    src.by_key = p.selector;
    return src;
}

extern "C" __global__ void select_blocks(const SelectParams p, const u32* __restrict__ ranking,
                                         int* __restrict__ selected) {
    const u32 r = blockIdx.x;
    if (r >= p.rows) return;  // uniform per block
    const BlockSelectSrc src = select_row_src(p, ranking, r);
    // Blocks after the current one are neither forced nor candidates.
    block_select_row(src, src.current + 1u, p.n_blocks, selected + r * p.width, p.width);
}

// select_blocks_warp (p, ranking, selected): select_blocks with one warp per row, for rows of at
//   most 32 * SW_ITEMS blocks (checked by the host): item u*32 + lane in register u of the lane,
//   so a ballot per register gives index-ordered counts. The cut is the want-th largest key,
//   found bit by bit from the top (a count of the keys >= each candidate), ties to the lowest
//   blocks by the ballots' ranks, and the row is written ascending. A CTA of up to 1024 threads
//   per row and four shared-memory radix passes (select_blocks) took 15 µs for Quest's 32 rows
//   of 2048 blocks and 30 ms for MoBA's 1M rows at T 32K (H200, ncu, run 17).
#define SW_ITEMS 64
extern "C" __global__ void __launch_bounds__(256)
    select_blocks_warp(const SelectParams p, const u32* __restrict__ ranking, int* __restrict__ selected) {
    const u32 lane = threadIdx.x & 31u;
    const u32 r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= p.rows) return;  // whole warp
    const BlockSelectSrc src = select_row_src(p, ranking, r);
    const u32 n = src.current + 1u;  // blocks after the current one take no part
    const u32 per = (n + 31u) / 32u;  // warp-uniform, <= SW_ITEMS
    const u32 below = (1u << lane) - 1u;
    u32 key[SW_ITEMS];
    unsigned long long elig = 0ull, keep = 0ull;
    u32 n_forced = 0u, n_elig = 0u;
#pragma unroll
    for (int u = 0; u < SW_ITEMS; ++u) {
        key[u] = 0u;
        if ((u32)u < per) {  // uniform
            const u32 b = (u32)u * 32u + lane;
            const bool f = b < n && src.forced(b);
            const bool e = b < n && !f && src.eligible(b);
            if (e) key[u] = src.key(b);
            if (f) keep |= 1ull << u;
            if (e) elig |= 1ull << u;
            n_forced += (u32)__popc(__ballot_sync(KVS_FULL_MASK, f));
            n_elig += (u32)__popc(__ballot_sync(KVS_FULL_MASK, e));
        }
    }
    const u32 room = p.n_blocks > n_forced ? p.n_blocks - n_forced : 0u;
    const u32 want = min(room, n_elig);
    if (want == n_elig) {
        keep |= elig;
    } else if (want > 0u) {
        u32 thr = 0u;  // the largest key with at least `want` eligible keys >= it
        for (int bit = 31; bit >= 0; --bit) {
            const u32 cand = thr | (1u << bit);
            u32 cnt = 0u;
#pragma unroll
            for (int u = 0; u < SW_ITEMS; ++u) {
                if ((u32)u < per) cnt += (u32)__popc(__ballot_sync(KVS_FULL_MASK, ((elig >> u) & 1ull) && key[u] >= cand));
            }
            if (cnt >= want) thr = cand;
        }
        u32 above = 0u;
#pragma unroll
        for (int u = 0; u < SW_ITEMS; ++u) {
            if ((u32)u < per) above += (u32)__popc(__ballot_sync(KVS_FULL_MASK, ((elig >> u) & 1ull) && key[u] > thr));
        }
        const u32 take_eq = want - above;  // >= 1
        u32 seen = 0u;
#pragma unroll
        for (int u = 0; u < SW_ITEMS; ++u) {
            if ((u32)u < per) {
                const bool e = ((elig >> u) & 1ull) != 0ull;
                const u32 eq = __ballot_sync(KVS_FULL_MASK, e && key[u] == thr);
                const bool tie_kept = ((eq >> lane) & 1u) && seen + (u32)__popc(eq & below) < take_eq;
                if ((e && key[u] > thr) || tie_kept) keep |= 1ull << u;
                seen += (u32)__popc(eq);
            }
        }
    }
    int* out = selected + r * p.width;
    u32 pos = 0u;
#pragma unroll
    for (int u = 0; u < SW_ITEMS; ++u) {
        if ((u32)u < per) {
            const bool k = ((keep >> u) & 1ull) != 0ull;
            const u32 km = __ballot_sync(KVS_FULL_MASK, k);
            const u32 at = pos + (u32)__popc(km & below);
            if (k && at < p.width) out[at] = (int)((u32)u * 32u + lane);
            pos += (u32)__popc(km);
        }
    }
    for (u32 e = pos + lane; e < p.width; e += 32u) out[e] = -1;
}

// quest_union (p, selected[Hkv*G, width] i32, uidx[Hkv, cap] i32, umask[Hkv, cap] u32,
//              ucount[Hkv] u32, group, cap)
//   One CTA per kv head: the union of the selected blocks of its `group` query heads (group <= 32),
//   ascending, with bit g of umask set when query head kvh*group + g selected the block; padded
//   with -1 / 0 to `cap` entries; ucount = the union's size. The grouped decode then reads each
//   block once for the whole group instead of once per query head. Dynamic shared memory: p.nb
//   words (a bit set of heads per block).
extern "C" __global__ void quest_union(const SelectParams p, const int* __restrict__ selected, int* __restrict__ uidx,
                                       u32* __restrict__ umask, u32* __restrict__ ucount, const u32 group,
                                       const u32 cap) {
    extern __shared__ u32 heads_of[];
    const u32 kvh = blockIdx.x;
    for (u32 b = threadIdx.x; b < p.nb; b += blockDim.x) heads_of[b] = 0u;
    __syncthreads();
    const int* sel = selected + kvh * group * p.width;
    for (u32 e = threadIdx.x; e < group * p.width; e += blockDim.x) {
        const int b = sel[e];
        if (b >= 0 && (u32)b < p.nb) atomicOr(&heads_of[b], 1u << (e / p.width));
    }
    __syncthreads();
    u32 written = 0u;
    for (u32 base = 0; base < p.nb; base += blockDim.x) {
        const u32 b = base + threadIdx.x;
        const u32 bits = b < p.nb ? heads_of[b] : 0u;
        u32 total;
        const u32 pos = block_exclusive_scan(bits != 0u ? 1u : 0u, &total) + written;
        if (bits != 0u && pos < cap) {
            uidx[kvh * cap + pos] = (int)b;
            umask[kvh * cap + pos] = bits;
        }
        written += total;
    }
    for (u32 e = written + threadIdx.x; e < cap; e += blockDim.x) {
        uidx[kvh * cap + e] = -1;
        umask[kvh * cap + e] = 0u;
    }
    if (threadIdx.x == 0) ucount[kvh] = min(written, cap);
}
