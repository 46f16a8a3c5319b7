// cuda/select.cu: forced top-k block selection of Quest decode and MoBA prefill
// (SPEC §2.3, §3.3, §5.2, §8.2).
//
// Prepended: SelectParams, common.cuh (no storage dtype). Entry points (the first three have
// the same names as shaders/select.wgsl; moba_bucket_* at the end are CUDA only):
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

extern "C" __global__ void select_keys(const SelectParams p, u32* __restrict__ keys) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.rows * p.nb) return;
    const u32 r = e / p.nb;
    keys[e] = kvs_key(p.seed, r, e - r * p.nb);
}

// BlockSelectSrc (the row of ranks block_select_row reads): common.cuh.

extern "C" __global__ void select_blocks(const SelectParams p, const u32* __restrict__ ranking,
                                         int* __restrict__ selected) {
    const u32 r = blockIdx.x;
    if (r >= p.rows) return;  // uniform per block
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
    // Blocks after the current one are neither forced nor candidates.
    block_select_row(src, src.current + 1u, p.n_blocks, selected + r * p.width, p.width);
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

// ---------------------------------------------------------------------------------------------
// MoBA's routing turned key-block-major (the bucket path of moba_prefill; attention.cu's
// attention_buckets_mma and moba_merge_pairs finish it). A 64-query tile of the query-major
// kernel visits the union of its rows' selections, most blocks at long contexts; here every
// (query head, key block) gets the list of the tokens that selected it (a bucket), the attention
// runs over tiles of 64 bucket entries against that one block, and the per-pair partials are
// merged per token. Buckets are per query head of a chunk of `nh` heads starting at h0:
// bucket b = hl * nb + block, hl = h - h0.
//
// moba_bucket_count (sel[Hq,T,W] i32, counts[nh*nb] u32 zeroed, seq, width, nb, h0)
//   grid (ceil(T / 256), nh); dynamic shared memory nb words. counts[b] += tokens of the chunk
//   head that selected the block (a shared histogram per CTA, one global add per touched block).
// moba_bucket_scan (counts[n], start[n+1], tile_start[n+1], tile_of[tiles], n, unit)
//   one CTA: start = exclusive prefix of counts (start[n] = pairs), tile_start the same over
//   ceil(counts / unit) (tile_start[n] = tiles), tile_of[tile] = the bucket it belongs to. A tile
//   is `unit` entries: 64 for attention_buckets_mma, 64 * run tiles for attention_bucket_runs_mma.
// moba_bucket_fill (sel, start, cursor[n] u32 zeroed, entries[pairs] u32, pair_pos[nh*T*W] u32,
//                   seq, width, nb, h0)
//   grid as moba_bucket_count; dynamic shared memory 2 * nb words. Each CTA reserves a range of
//   each touched bucket (one global atomic per block), then hands its entries positions inside it:
//   entries[pos] = token, pair_pos[(hl*T + t)*W + s] = pos (0xffffffff for a -1 slot). Positions
//   within a bucket depend on the CTAs' order, the values computed at each do not.
// ---------------------------------------------------------------------------------------------
// MOBA_BUCKET_TOKENS: tokens per CTA of the count and fill kernels, from the host (ops.rs).

// Histogram of the selections of this CTA's tokens into hist[nb] (zeroed here).
__device__ __forceinline__ void moba_bucket_hist(const int* __restrict__ s, u32 n_entries, u32 nb, u32* hist) {
    for (u32 b = threadIdx.x; b < nb; b += blockDim.x) hist[b] = 0u;
    __syncthreads();
    for (u32 e = threadIdx.x; e < n_entries; e += blockDim.x) {
        const int b = s[e];
        if (b >= 0 && (u32)b < nb) atomicAdd(&hist[b], 1u);
    }
    __syncthreads();
}

extern "C" __global__ void moba_bucket_count(const int* __restrict__ sel, u32* __restrict__ counts, const u32 seq,
                                             const u32 width, const u32 nb, const u32 h0) {
    extern __shared__ u32 hist[];
    const u32 hl = blockIdx.y;
    const u32 t0 = blockIdx.x * (u32)MOBA_BUCKET_TOKENS;
    const u32 n = min((u32)MOBA_BUCKET_TOKENS, seq - t0);
    moba_bucket_hist(sel + ((unsigned long long)(h0 + hl) * seq + t0) * width, n * width, nb, hist);
    for (u32 b = threadIdx.x; b < nb; b += blockDim.x)
        if (hist[b] != 0u) atomicAdd(&counts[hl * nb + b], hist[b]);
}

extern "C" __global__ void moba_bucket_scan(const u32* __restrict__ counts, u32* __restrict__ start,
                                            u32* __restrict__ tile_start, u32* __restrict__ tile_of, const u32 n,
                                            const u32 unit) {
    u32 pairs = 0u, tiles = 0u;
    for (u32 base = 0; base < n; base += blockDim.x) {
        const u32 b = base + threadIdx.x;
        const u32 c = b < n ? counts[b] : 0u;
        const u32 nt = (c + unit - 1u) / unit;
        u32 c_tot, t_tot;
        const u32 c_before = block_exclusive_scan(c, &c_tot);
        const u32 t_before = block_exclusive_scan(nt, &t_tot);
        if (b < n) {
            start[b] = pairs + c_before;
            tile_start[b] = tiles + t_before;
            for (u32 i = 0; i < nt; ++i) tile_of[tiles + t_before + i] = b;
        }
        pairs += c_tot;
        tiles += t_tot;
    }
    if (threadIdx.x == 0) {
        start[n] = pairs;
        tile_start[n] = tiles;
    }
}

extern "C" __global__ void moba_bucket_fill(const int* __restrict__ sel, const u32* __restrict__ start,
                                            u32* __restrict__ cursor, u32* __restrict__ entries,
                                            u32* __restrict__ pair_pos, const u32 seq, const u32 width, const u32 nb,
                                            const u32 h0) {
    extern __shared__ u32 hist[];  // [nb] counts, then local cursors; [nb] bases
    u32* base = hist + nb;
    const u32 hl = blockIdx.y;
    const u32 t0 = blockIdx.x * (u32)MOBA_BUCKET_TOKENS;
    const u32 n = min((u32)MOBA_BUCKET_TOKENS, seq - t0);
    const unsigned long long row0 = (unsigned long long)hl * seq + t0;  // chunk row of token t0
    const int* s = sel + ((unsigned long long)h0 * seq + row0) * width;
    moba_bucket_hist(s, n * width, nb, hist);
    for (u32 b = threadIdx.x; b < nb; b += blockDim.x) {
        const u32 c = hist[b];
        base[b] = c != 0u ? start[hl * nb + b] + atomicAdd(&cursor[hl * nb + b], c) : 0u;
        hist[b] = 0u;
    }
    __syncthreads();
    for (u32 e = threadIdx.x; e < n * width; e += blockDim.x) {
        const int b = s[e];
        u32 pos = 0xffffffffu;
        if (b >= 0 && (u32)b < nb) {
            pos = base[b] + atomicAdd(&hist[b], 1u);
            entries[pos] = t0 + e / width;
        }
        pair_pos[row0 * width + e] = pos;
    }
}
