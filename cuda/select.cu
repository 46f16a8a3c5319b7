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
