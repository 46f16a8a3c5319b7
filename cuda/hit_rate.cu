// cuda/hit_rate.cu: the head-level hit rate of the paper's analysis (SPEC §9).
//
// Prepended: HitRateParams, common.cuh (no storage dtype). Entry point (same name as
// shaders/hit_rate.wgsl):
//   hit_rate (p, sel[S,H,N] i32, gold[S] i32, head_hit[H] i32, rate[1] f32)
//   one block: thread h checks head h (strided), head_hit[h] = AND_s sel[s, h, gold[s] / bs] != 0;
//   a gold position that is negative or whose candidate is >= N counts as a miss; the block
//   sums the hits and thread 0 writes rate = hits / H (computed in f64, rounded once).

extern "C" __global__ void hit_rate(const HitRateParams p, const int* __restrict__ sel,
                                    const int* __restrict__ gold, int* __restrict__ head_hit,
                                    float* __restrict__ rate) {
    u32 hits = 0u;
    for (u32 h = threadIdx.x; h < p.heads; h += blockDim.x) {
        int hit = 1;
        for (u32 s = 0; s < p.steps && hit != 0; ++s) {
            const int g = gold[s];
            if (g < 0) {
                hit = 0;
                break;
            }
            const u32 c = (u32)g / p.block_size;
            if (c >= p.n || sel[(s * p.heads + h) * p.n + c] == 0) hit = 0;
        }
        head_hit[h] = hit;
        hits += (u32)hit;
    }
    hits = block_sum_u32(hits);
    if (threadIdx.x == 0) rate[0] = (float)((double)hits / (double)p.heads);
}
