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
