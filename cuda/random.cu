// cuda/random.cu: the counter-based PCG hash and the seeded random selector (SPEC §8).
//
// Prepended: RandomParams, common.cuh (no storage dtype). Entry points (same names as
// shaders/random.wgsl):
//   pcg_hash      (p, v[n], hash[n])                            one thread per element
//   random_key    (p, rows[R], idx[n], keys[R*n])               one thread per (row, element)
//   random_select (p, rows[R], cand[R*n], keys[R*n], selected[R*k])
//                 one block per row: keys of every candidate, then the k eligible candidates
//                 with the largest key (u32 compare, ties to the lower index), ascending,
//                 -1 padded (common.cuh block_select_row).

extern "C" __global__ void pcg_hash(const RandomParams p, const u32* __restrict__ v, u32* __restrict__ hash) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) hash[i] = kvs_pcg(v[i]);
}

extern "C" __global__ void random_key(const RandomParams p, const u32* __restrict__ rows,
                                      const u32* __restrict__ idx, u32* __restrict__ keys) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.rows * p.n) return;
    const u32 r = e / p.n;
    const u32 i = e - r * p.n;
    keys[e] = kvs_key(p.seed, rows[r], idx[i]);
}

struct RandomSelectSrc {
    const int* cand;  // this row's eligibility flags
    u32 seed;
    u32 row;
    __device__ bool forced(u32) const { return false; }
    __device__ bool eligible(u32 i) const { return cand[i] != 0; }
    __device__ u32 key(u32 i) const { return kvs_key(seed, row, i); }
};

extern "C" __global__ void random_select(const RandomParams p, const u32* __restrict__ rows,
                                         const int* __restrict__ cand, u32* __restrict__ keys,
                                         int* __restrict__ selected) {
    const u32 r = blockIdx.x;
    if (r >= p.rows) return;  // uniform per block
    const u32 row = rows[r];
    for (u32 i = threadIdx.x; i < p.n; i += blockDim.x) keys[r * p.n + i] = kvs_key(p.seed, row, i);
    RandomSelectSrc src;
    src.cand = cand + r * p.n;
    src.seed = p.seed;
    src.row = row;
    block_select_row(src, p.n, p.k, selected + r * p.k, p.k);
}
