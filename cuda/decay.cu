// cuda/decay.cu: RAT+ exponentially decaying memory (SPEC §1): scan, step, RoPE and fusions.
//
// Prepended: DecayParams, KVS_STORE_* (storage dtype of x / k / v / outputs), common.cuh.
// Gates and recurrence states are f32; tensors are [outer, seq, inner] ([H, T, D] for RAT+).
// Entry points (same names as shaders/decay.wgsl):
//   decay_scan   (p, x, g, h0[outer*inner], y)        one thread per (outer, inner) lane, loops
//                                                     over seq (coalesced across lanes)
//   decay_step   (p, x, g, h, h_new)                  one thread per lane
//   rope         (p, x, pos[seq] i32, y)              one thread per (row, i < D/2) pair
//   ratplus_kv   (p, k, v, g, k_tilde, v_tilde, k_rope)
//                one thread per (head, i < D/2): scans channels i and i + D/2 of k and v together
//                and rotates the f32 state at position pos0 + t (RoPE fused into the write)
//   ratplus_step (p, k, v, g, hk, hv, hk_new, hv_new, k_rope)  one thread per (head, i < D/2)
// RoPE angles are computed in f64 (pos * base^(-2i/D)), as the reference does; the rotation of
// the f32 value is done in f64 and rounded once.
//
// decay_scan and ratplus_kv walk the sequence serially per lane; with few lanes the host uses
// the one-pass look-back scans at the end of this file (decay_scan_onepass / ratplus_kv_onepass:
// inputs read once, outputs written once), or the older chunked scans (decay_scan_* /
// ratplus_kv_*: inputs read twice) under KVSPARSE_CUDA_SCAN=chunked.

// rope_inv_freq, rope_rotate and ratplus_pair_step (the one-token RAT+ update of a rotation
// pair, shared with cache_append): common.cuh.

extern "C" __global__ void decay_scan(const DecayParams p, const store_t* __restrict__ x, const float* __restrict__ g,
                                      const float* __restrict__ h0, store_t* __restrict__ y) {
    const u32 lane = blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= p.outer * p.inner) return;
    const u32 o = lane / p.inner;
    const u32 c = lane - o * p.inner;
    float h = h0[lane];
    u32 i = o * p.seq * p.inner + c;
    for (u32 t = 0; t < p.seq; ++t, i += p.inner) {
        const float gi = g[i];
        h = gi * h + (1.0f - gi) * load_f(x, i);
        store_f(y, i, h);
    }
}

extern "C" __global__ void decay_step(const DecayParams p, const store_t* __restrict__ x, const float* __restrict__ g,
                                      const float* __restrict__ h, float* __restrict__ h_new) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.outer * p.inner) return;
    const float gi = g[i];
    h_new[i] = gi * h[i] + (1.0f - gi) * load_f(x, i);
}

extern "C" __global__ void rope(const DecayParams p, const store_t* __restrict__ x, const int* __restrict__ pos,
                                store_t* __restrict__ y) {
    const u32 half = p.inner / 2u;
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.outer * p.seq * half) return;
    const u32 row = e / half;  // (head, t)
    const u32 i = e - row * half;
    const u32 t = row % p.seq;
    const u32 a = row * p.inner + i;
    const double angle = (double)pos[t] * rope_inv_freq(i, p.inner, p.base);
    float ya, yb;
    rope_rotate(load_f(x, a), load_f(x, a + half), angle, &ya, &yb);
    store_f(y, a, ya);
    store_f(y, a + half, yb);
}

// One token of the RAT+ scan for rotation pair (a, b = a + D/2): the states hk = (k_a, k_b),
// hv = (v_a, v_b) advance in place by gates (ga, gb) and inputs (ka, kb, va, vb), and k~, v~ and
// RoPE(k~, angle) are written at a and b. ratplus_run and the one-pass scan share it.
__device__ __forceinline__ void ratplus_token(store_t* __restrict__ k_tilde, store_t* __restrict__ v_tilde,
                                              store_t* __restrict__ k_rope, u32 a, u32 b, double angle, float ga,
                                              float gb, float ka, float kb, float va, float vb, float hk[2],
                                              float hv[2]) {
    hk[0] = ga * hk[0] + (1.0f - ga) * ka;
    hk[1] = gb * hk[1] + (1.0f - gb) * kb;
    hv[0] = ga * hv[0] + (1.0f - ga) * va;
    hv[1] = gb * hv[1] + (1.0f - gb) * vb;
    store_f(k_tilde, a, hk[0]);
    store_f(k_tilde, b, hk[1]);
    store_f(v_tilde, a, hv[0]);
    store_f(v_tilde, b, hv[1]);
    float ya, yb;
    rope_rotate(hk[0], hk[1], angle, &ya, &yb);
    store_f(k_rope, a, ya);
    store_f(k_rope, b, yb);
}

// Advances the RAT+ states of rotation pair `i` of head `h` over tokens t0..t1, writing k~, v~
// and RoPE(k~) on the way; the serial kernel and the chunked scan's last pass share it. The
// states `hk`, `hv` hold the pair (i, i + D/2) and are updated in place.
__device__ __forceinline__ void ratplus_run(const DecayParams& p, const store_t* __restrict__ k,
                                            const store_t* __restrict__ v, const float* __restrict__ g,
                                            store_t* __restrict__ k_tilde, store_t* __restrict__ v_tilde,
                                            store_t* __restrict__ k_rope, u32 h, u32 i, u32 t0, u32 t1,
                                            float hk[2], float hv[2]) {
    const u32 half = p.inner / 2u;
    const double inv_freq = rope_inv_freq(i, p.inner, p.base);
    u32 a = (h * p.seq + t0) * p.inner + i;
#pragma unroll 4
    for (u32 t = t0; t < t1; ++t, a += p.inner) {
        const u32 b = a + half;
        const float ga = g[a];
        const float gb = g[b];
        ratplus_token(k_tilde, v_tilde, k_rope, a, b, (double)(p.pos0 + t) * inv_freq, ga, gb, load_f(k, a),
                      load_f(k, b), load_f(v, a), load_f(v, b), hk, hv);
    }
}

extern "C" __global__ void ratplus_kv(const DecayParams p, const store_t* __restrict__ k, const store_t* __restrict__ v,
                                      const float* __restrict__ g, store_t* __restrict__ k_tilde,
                                      store_t* __restrict__ v_tilde, store_t* __restrict__ k_rope) {
    const u32 half = p.inner / 2u;
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.outer * half) return;
    const u32 h = e / half;
    float hk[2] = {0.0f, 0.0f}, hv[2] = {0.0f, 0.0f};
    ratplus_run(p, k, v, g, k_tilde, v_tilde, k_rope, h, e - h * half, 0u, p.seq, hk, hv);
}

extern "C" __global__ void ratplus_step(const DecayParams p, const store_t* __restrict__ k,
                                        const store_t* __restrict__ v, const float* __restrict__ g,
                                        const float* __restrict__ hk, const float* __restrict__ hv,
                                        float* __restrict__ hk_new, float* __restrict__ hv_new,
                                        store_t* __restrict__ k_rope) {
    const u32 half = p.inner / 2u;
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.outer * half) return;
    const u32 h = e / half;
    const u32 i = e - h * half;
    const u32 a = h * p.inner + i;
    const u32 b = a + half;
    float nk[2], nv[2], y[2];
    ratplus_pair_step(k, v, g, hk, hv, a, b, i, p.inner, p.base, (double)p.pos0, nk, nv, y);
    hk_new[a] = nk[0];
    hk_new[b] = nk[1];
    hv_new[a] = nv[0];
    hv_new[b] = nv[1];
    store_f(k_rope, a, y[0]);
    store_f(k_rope, b, y[1]);
}

// ---------------------------------------------------------------------------------------------
// Chunked scans: the serial kernels above give one thread per channel, so a few thousand lanes
// leave most SMs idle. The chunked form cuts seq into `n_chunks` runs of `chunk` steps, one CTA
// row per run (blockIdx.y), and composes the runs through their affine maps
// h_end = A * h_start + B (A = product of the gates, B = the run scanned from 0):
//   1. *_chunks: A, B of every (run, lane) (reads x/k/v and g once);
//   2. *_carry:  one thread per lane walks the runs, replacing B by the run's starting state;
//   3. *_apply:  each run rescanned from its starting state, writing the outputs (and RoPE).
// The rescan is the serial recurrence itself, so only the run-start states differ from the
// serial kernel's, by f32 rounding of the composition. Lanes are contiguous channels:
// every access is coalesced across the warp. Scratch: `ab` = [n_states, 2, n_chunks, lanes] f32.
// ---------------------------------------------------------------------------------------------

// [t0, t1) of run `c`.
__device__ __forceinline__ void run_range(u32 seq, u32 chunk, u32 c, u32* t0, u32* t1) {
    *t0 = min(c * chunk, seq);
    *t1 = min(*t0 + chunk, seq);
}

extern "C" __global__ void decay_scan_chunks(const DecayParams p, const store_t* __restrict__ x,
                                             const float* __restrict__ g, float* __restrict__ ab, const u32 chunk) {
    const u32 lanes = p.outer * p.inner;
    const u32 lane = blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= lanes) return;
    const u32 c = blockIdx.y;
    const u32 n_chunks = gridDim.y;
    const u32 o = lane / p.inner;
    const u32 ch = lane - o * p.inner;
    u32 t0, t1;
    run_range(p.seq, chunk, c, &t0, &t1);
    float a = 1.0f, b = 0.0f;
    u32 i = (o * p.seq + t0) * p.inner + ch;
#pragma unroll 8
    for (u32 t = t0; t < t1; ++t, i += p.inner) {
        const float gi = g[i];
        b = gi * b + (1.0f - gi) * load_f(x, i);
        a *= gi;
    }
    ab[c * lanes + lane] = a;
    ab[(n_chunks + c) * lanes + lane] = b;
}

// One thread per lane: B of run c becomes the state entering run c (h0 enters run 0).
extern "C" __global__ void decay_scan_carry(const DecayParams p, const float* __restrict__ h0, float* __restrict__ ab,
                                            const u32 n_chunks) {
    const u32 lanes = p.outer * p.inner;
    const u32 lane = blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= lanes) return;
    float h = h0[lane];
    for (u32 c = 0; c < n_chunks; ++c) {
        const float a = ab[c * lanes + lane];
        float* bp = ab + (n_chunks + c) * lanes + lane;
        const float b = *bp;
        *bp = h;
        h = a * h + b;
    }
}

extern "C" __global__ void decay_scan_apply(const DecayParams p, const store_t* __restrict__ x,
                                            const float* __restrict__ g, const float* __restrict__ ab,
                                            store_t* __restrict__ y, const u32 chunk) {
    const u32 lanes = p.outer * p.inner;
    const u32 lane = blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= lanes) return;
    const u32 c = blockIdx.y;
    const u32 n_chunks = gridDim.y;
    const u32 o = lane / p.inner;
    const u32 ch = lane - o * p.inner;
    u32 t0, t1;
    run_range(p.seq, chunk, c, &t0, &t1);
    float h = ab[(n_chunks + c) * lanes + lane];
    u32 i = (o * p.seq + t0) * p.inner + ch;
#pragma unroll 8
    for (u32 t = t0; t < t1; ++t, i += p.inner) {
        const float gi = g[i];
        h = gi * h + (1.0f - gi) * load_f(x, i);
        store_f(y, i, h);
    }
}

// RAT+ (k, v, g) -> (k~, v~, RoPE(k~)), chunked: lane = (head, i < D/2) as ratplus_kv, g read
// once for k and v; four states per lane (k_a, k_b, v_a, v_b: k and v at channels i and
// i + D/2), so `ab` is [4 states][2][n_chunks][lanes]: state s's A at (2s * n_chunks + c) *
// lanes + lane, B at ((2s + 1) * n_chunks + c) * lanes + lane. States start at 0 (ratplus_kv has
// no h0).
#define RKV_STATES 4
__device__ __forceinline__ u32 rkv_at(u32 s, u32 ab_sel, u32 n_chunks, u32 c, u32 lanes, u32 lane) {
    return ((2u * s + ab_sel) * n_chunks + c) * lanes + lane;
}

extern "C" __global__ void ratplus_kv_chunks(const DecayParams p, const store_t* __restrict__ k,
                                             const store_t* __restrict__ v, const float* __restrict__ g,
                                             float* __restrict__ ab, const u32 chunk) {
    const u32 half = p.inner / 2u;
    const u32 lanes = p.outer * half;
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= lanes) return;
    const u32 c = blockIdx.y;
    const u32 n_chunks = gridDim.y;
    const u32 h = e / half;
    const u32 i = e - h * half;
    u32 t0, t1;
    run_range(p.seq, chunk, c, &t0, &t1);
    float pa = 1.0f, pb = 1.0f, ka = 0.0f, kb = 0.0f, va = 0.0f, vb = 0.0f;
    u32 a = (h * p.seq + t0) * p.inner + i;
#pragma unroll 4
    for (u32 t = t0; t < t1; ++t, a += p.inner) {
        const u32 b = a + half;
        const float ga = g[a];
        const float gb = g[b];
        ka = ga * ka + (1.0f - ga) * load_f(k, a);
        kb = gb * kb + (1.0f - gb) * load_f(k, b);
        va = ga * va + (1.0f - ga) * load_f(v, a);
        vb = gb * vb + (1.0f - gb) * load_f(v, b);
        pa *= ga;
        pb *= gb;
    }
    // States k_a, k_b, v_a, v_b (gates a, b, a, b).
    const float as[RKV_STATES] = {pa, pb, pa, pb};
    const float bs[RKV_STATES] = {ka, kb, va, vb};
#pragma unroll
    for (u32 s = 0; s < RKV_STATES; ++s) {
        ab[rkv_at(s, 0u, n_chunks, c, lanes, e)] = as[s];
        ab[rkv_at(s, 1u, n_chunks, c, lanes, e)] = bs[s];
    }
}

extern "C" __global__ void ratplus_kv_carry(const DecayParams p, float* __restrict__ ab, const u32 n_chunks) {
    const u32 lanes = p.outer * (p.inner / 2u);
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= lanes) return;
#pragma unroll
    for (u32 s = 0; s < RKV_STATES; ++s) {
        float hs = 0.0f;
        for (u32 c = 0; c < n_chunks; ++c) {
            const float a = ab[rkv_at(s, 0u, n_chunks, c, lanes, e)];
            float* bp = ab + rkv_at(s, 1u, n_chunks, c, lanes, e);
            const float b = *bp;
            *bp = hs;
            hs = a * hs + b;
        }
    }
}

extern "C" __global__ void ratplus_kv_apply(const DecayParams p, const store_t* __restrict__ k,
                                            const store_t* __restrict__ v, const float* __restrict__ g,
                                            const float* __restrict__ ab, store_t* __restrict__ k_tilde,
                                            store_t* __restrict__ v_tilde, store_t* __restrict__ k_rope,
                                            const u32 chunk) {
    const u32 half = p.inner / 2u;
    const u32 lanes = p.outer * half;
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= lanes) return;
    const u32 c = blockIdx.y;
    const u32 n_chunks = gridDim.y;
    const u32 h = e / half;
    const u32 i = e - h * half;
    u32 t0, t1;
    run_range(p.seq, chunk, c, &t0, &t1);
    float hk[2] = {ab[rkv_at(0u, 1u, n_chunks, c, lanes, e)], ab[rkv_at(1u, 1u, n_chunks, c, lanes, e)]};
    float hv[2] = {ab[rkv_at(2u, 1u, n_chunks, c, lanes, e)], ab[rkv_at(3u, 1u, n_chunks, c, lanes, e)]};
    ratplus_run(p, k, v, g, k_tilde, v_tilde, k_rope, h, i, t0, t1, hk, hv);
}

// ---------------------------------------------------------------------------------------------
// One-pass scans (decoupled look-back, Merrill & Garland 2016, one affine map per lane instead
// of one sum). A CTA is one run: KVS_SCAN_TILE consecutive lanes x KVS_SCAN_WARPS * R steps,
// warp w holding steps [w * R, (w + 1) * R) of the run in registers (lane = channel, so each
// warp reads and writes consecutive channels of one time step: coalesced). x, g (k, v, g) are
// read once and the outputs written once:
//   1. ticket: run id from a global atomic counter, chunk-major (ticket = chunk * n_tiles +
//      tile), never from blockIdx: a CTA only waits on runs of smaller tickets, whose CTAs are
//      already resident and publish their aggregates without waiting on anyone;
//   2. each warp scans its R steps from 0 in registers: map h -> A h + B per state
//      (A = product of the gates, B = the steps scanned from 0);
//   3. warp 0 composes the warps' maps into the run's map, publishes it (chunk > 0) with status
//      AGGREGATE, then looks back over the preceding runs of its tile, 32 at a time (one flag
//      per lane of the warp): from the nearest run with status INCLUSIVE (its end state; run 0
//      always has one) it applies the aggregates in between; a window of 32 aggregates without
//      one is composed and the look-back moves 32 runs further; then it applies the warps' maps
//      in turn (each warp's start state to shared memory) and publishes the run's end state
//      with status INCLUSIVE (except for the last run, which no one reads);
//   4. every warp rescans its registers from its start state with the serial recurrence,
//      writing the outputs. Only the start states differ from the serial kernel's (f32
//      rounding of the composition), as for the chunked scans.
// Memory order: values are stored, every lane fences (__threadfence), the warp syncs and lane 0
// stores the flag with st.release.gpu; readers poll flags with ld.acquire.gpu, sync the warp and
// read values with ld.global.cg (L2, never a stale L1 line).
// Scratch (the host zeroes `sync` with a stream-ordered memset before each launch):
//   sync [1 + n_tiles * n_chunks] u32: ticket counter, then run flags [tile][chunk];
//   agg  [n_chunks][NS][n_tiles * 32] float2: (A, B) of the run (chunk 0 never written);
//   incl [n_chunks][NS][n_tiles * 32] f32: the state after the run.
// Padding lanes (past the last lane) and steps (past seq) are identity maps (g = 1, x = 0:
// exact in f32) and write no outputs; padding lanes still store their agg / incl entries, so
// every entry a flag announces is written.
// ---------------------------------------------------------------------------------------------
#define KVS_SCAN_TILE 32u
#define KVS_SCAN_WARPS 8u
#define KVS_SCAN_THREADS (32u * KVS_SCAN_WARPS)
#define KVS_SCAN_DECAY_R 16  // steps per thread of decay_scan_onepass (x, g: 32 registers)
#define KVS_SCAN_RKV_R 8     // steps per thread of ratplus_kv_onepass (k, v, g at a and b: 48)
#define KVS_SCAN_DECAY_CTAS 4  // resident CTAs per SM asked of decay_scan_onepass (64 registers)
#define KVS_LB_NONE 0u
#define KVS_LB_AGGREGATE 1u
#define KVS_LB_INCLUSIVE 2u

__device__ __forceinline__ u32 ld_acquire_gpu(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void st_release_gpu(u32* p, u32 v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" : : "l"(p), "r"(v) : "memory");
}

// Warp 0: announces the values its lanes have just stored under `status`.
__device__ __forceinline__ void lb_publish(u32* flag, u32 status) {
    __threadfence();
    __syncwarp();
    if ((threadIdx.x & 31u) == 0u) st_release_gpu(flag, status);
}

// Warp 0 of run c >= 1: the state entering run c, per state of this thread's lane. `flags` are
// the tile's run flags, `at(run, s)` = (run * NS + s) * lanes_pad + lane indexes agg / incl.
template <int NS>
__device__ __forceinline__ void lb_carry(const u32* flags, const float2* agg, const float* incl, u32 c,
                                         u32 lanes_pad, u32 lane, float h[NS]) {
    const u32 me = threadIdx.x & 31u;
    float pa[NS], pb[NS];  // map of the runs composed so far (j + 1 .. c - 1)
#pragma unroll
    for (int s = 0; s < NS; ++s) {
        pa[s] = 1.0f;
        pb[s] = 0.0f;
    }
    u32 j = c - 1u;  // newest run not yet composed
    for (;;) {
        // Lane `me` polls run j - me (runs before 0 count as absent).
        u32 st = KVS_LB_NONE;
        if (me <= j) {
            const u32* f = flags + (j - me);
            while ((st = ld_acquire_gpu(f)) == KVS_LB_NONE) __nanosleep(32);
        }
        const u32 have = __ballot_sync(0xffffffffu, st == KVS_LB_INCLUSIVE);
        __syncwarp();  // orders every lane's acquire before the value loads of all lanes
        if (have != 0u) {
            // Nearest run with its end state: j - n; runs j - n + 1 .. j are aggregates.
            const u32 n = (u32)(__ffs(have) - 1);
            float hs[NS];
#pragma unroll
            for (int s = 0; s < NS; ++s) hs[s] = __ldcg(incl + ((j - n) * NS + s) * lanes_pad + lane);
#pragma unroll 1
            for (u32 i = n; i-- > 0u;) {
#pragma unroll
                for (int s = 0; s < NS; ++s) {
                    const float2 ab = __ldcg(agg + ((j - i) * NS + s) * lanes_pad + lane);
                    hs[s] = ab.x * hs[s] + ab.y;
                }
            }
#pragma unroll
            for (int s = 0; s < NS; ++s) h[s] = pa[s] * hs[s] + pb[s];
            return;
        }
        // 32 aggregates and no end state: j >= 32 (run 0 always has its end state, so a window
        // reaching it has one). Compose runs j, j - 1, ..., j - 31 under the map so far (rare:
        // kept rolled, so that its loads do not hold registers beside the run's inputs).
#pragma unroll 1
        for (u32 i = 0; i < 32u; ++i) {
#pragma unroll
            for (int s = 0; s < NS; ++s) {
                const float2 ab = __ldcg(agg + ((j - i) * NS + s) * lanes_pad + lane);
                pb[s] = pa[s] * ab.y + pb[s];
                pa[s] = pa[s] * ab.x;
            }
        }
        j -= 32u;
    }
}

// The shared body of the one-pass scans. `Body` holds one thread's R steps of one lane:
//   NS, R: states per lane, steps per thread; lanes: lanes of the problem;
//   load(lane, t0): steps t0 .. t0 + R - 1 into registers (identity past seq or lanes);
//   local(A, B): the map of those steps per state; start(h): the state entering run 0;
//   emit(h): rescans from h, writing the outputs.
template <class Body>
__device__ __forceinline__ void lookback_scan(Body& body, u32 n_chunks, u32* sync, float2* agg, float* incl) {
    constexpr int NS = Body::NS;
    __shared__ u32 s_ticket;
    __shared__ float2 s_ab[KVS_SCAN_WARPS][NS][KVS_SCAN_TILE];
    __shared__ float s_in[KVS_SCAN_WARPS][NS][KVS_SCAN_TILE];
    const u32 me = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    if (threadIdx.x == 0u) s_ticket = atomicAdd(sync, 1u);
    __syncthreads();
    const u32 n_tiles = (body.lanes + KVS_SCAN_TILE - 1u) / KVS_SCAN_TILE;
    const u32 c = s_ticket / n_tiles;
    const u32 tile = s_ticket - c * n_tiles;
    if (c >= n_chunks) return;  // not reached: the grid is n_tiles * n_chunks CTAs (CTA-uniform)
    const u32 lanes_pad = n_tiles * KVS_SCAN_TILE;
    const u32 lane = tile * KVS_SCAN_TILE + me;
    body.load(lane, (c * KVS_SCAN_WARPS + warp) * (u32)Body::R);
    float a[NS], b[NS];
    body.local(a, b);
#pragma unroll
    for (int s = 0; s < NS; ++s) s_ab[warp][s][me] = make_float2(a[s], b[s]);
    __syncthreads();
    if (warp == 0u) {
        u32* flags = sync + 1u + tile * n_chunks;
        float h[NS];
        if (c == 0u) {
            body.start(h);
        } else {
            float ca[NS], cb[NS];  // the run's map: the warps' maps, oldest first
#pragma unroll
            for (int s = 0; s < NS; ++s) {
                ca[s] = 1.0f;
                cb[s] = 0.0f;
            }
#pragma unroll
            for (u32 w = 0; w < KVS_SCAN_WARPS; ++w) {
#pragma unroll
                for (int s = 0; s < NS; ++s) {
                    const float2 ab = s_ab[w][s][me];
                    cb[s] = ab.x * cb[s] + ab.y;
                    ca[s] = ab.x * ca[s];
                }
            }
#pragma unroll
            for (int s = 0; s < NS; ++s) agg[(c * NS + s) * lanes_pad + lane] = make_float2(ca[s], cb[s]);
            lb_publish(flags + c, KVS_LB_AGGREGATE);
            lb_carry<NS>(flags, agg, incl, c, lanes_pad, lane, h);
        }
#pragma unroll
        for (u32 w = 0; w < KVS_SCAN_WARPS; ++w) {
#pragma unroll
            for (int s = 0; s < NS; ++s) {
                s_in[w][s][me] = h[s];
                const float2 ab = s_ab[w][s][me];
                h[s] = ab.x * h[s] + ab.y;
            }
        }
        if (c + 1u < n_chunks) {
#pragma unroll
            for (int s = 0; s < NS; ++s) incl[(c * NS + s) * lanes_pad + lane] = h[s];
            lb_publish(flags + c, KVS_LB_INCLUSIVE);
        }
    }
    __syncthreads();
    float h[NS];
#pragma unroll
    for (int s = 0; s < NS; ++s) h[s] = s_in[warp][s][me];
    body.emit(h);
}

// decay_scan: lane = (outer, channel), one state (h0 enters run 0).
struct DecayLanes {
    static constexpr int NS = 1;
    static constexpr int R = KVS_SCAN_DECAY_R;
    const store_t* __restrict__ x;
    const float* __restrict__ g;
    const float* __restrict__ h0;
    store_t* __restrict__ y;
    u32 seq, inner, lanes;
    u32 lane, i0, n;  // this thread's lane, element of its first step, steps within seq
    float xs[R], gs[R];

    __device__ __forceinline__ void load(u32 lane_, u32 t0) {
        lane = lane_;
        n = (lane < lanes && t0 < seq) ? min((u32)R, seq - t0) : 0u;
        const u32 o = lane / inner;
        i0 = (o * seq + t0) * inner + (lane - o * inner);
#pragma unroll
        for (int j = 0; j < R; ++j) {
            gs[j] = 1.0f;
            xs[j] = 0.0f;
            if ((u32)j < n) {
                gs[j] = g[i0 + j * inner];
                xs[j] = load_f(x, i0 + j * inner);
            }
        }
    }
    __device__ __forceinline__ void local(float a[NS], float b[NS]) const {
        float pa = 1.0f, pb = 0.0f;
#pragma unroll
        for (int j = 0; j < R; ++j) {
            pb = gs[j] * pb + (1.0f - gs[j]) * xs[j];
            pa *= gs[j];
        }
        a[0] = pa;
        b[0] = pb;
    }
    __device__ __forceinline__ void start(float h[NS]) const { h[0] = lane < lanes ? h0[lane] : 0.0f; }
    __device__ __forceinline__ void emit(float h[NS]) const {
        float hh = h[0];
#pragma unroll
        for (int j = 0; j < R; ++j) {
            hh = gs[j] * hh + (1.0f - gs[j]) * xs[j];
            if ((u32)j < n) store_f(y, i0 + j * inner, hh);
        }
    }
};

// ratplus_kv: lane = (head, i < D/2) as ratplus_kv; states (k_a, k_b, v_a, v_b) with gates
// (g_a, g_b, g_a, g_b), all 0 entering run 0.
struct RatplusLanes {
    static constexpr int NS = 4;
    static constexpr int R = KVS_SCAN_RKV_R;
    const store_t* __restrict__ k;
    const store_t* __restrict__ v;
    const float* __restrict__ g;
    store_t* __restrict__ k_tilde;
    store_t* __restrict__ v_tilde;
    store_t* __restrict__ k_rope;
    u32 seq, inner, lanes, pos0;
    float base;
    u32 i, t0, a0, n;  // channel i < D/2, first step, element of (head, t0, i), steps within seq
    float ka[R], kb[R], va[R], vb[R], ga[R], gb[R];

    __device__ __forceinline__ void load(u32 lane, u32 t0_) {
        const u32 half = inner / 2u;
        t0 = t0_;
        n = (lane < lanes && t0 < seq) ? min((u32)R, seq - t0) : 0u;
        const u32 h = lane / half;
        i = lane - h * half;
        a0 = (h * seq + t0) * inner + i;
#pragma unroll
        for (int j = 0; j < R; ++j) {
            ga[j] = 1.0f;
            gb[j] = 1.0f;
            ka[j] = kb[j] = va[j] = vb[j] = 0.0f;
            if ((u32)j < n) {
                const u32 a = a0 + j * inner;
                ga[j] = g[a];
                gb[j] = g[a + half];
                ka[j] = load_f(k, a);
                kb[j] = load_f(k, a + half);
                va[j] = load_f(v, a);
                vb[j] = load_f(v, a + half);
            }
        }
    }
    __device__ __forceinline__ void local(float a[NS], float b[NS]) const {
        float pa = 1.0f, pb = 1.0f, hka = 0.0f, hkb = 0.0f, hva = 0.0f, hvb = 0.0f;
#pragma unroll
        for (int j = 0; j < R; ++j) {
            hka = ga[j] * hka + (1.0f - ga[j]) * ka[j];
            hkb = gb[j] * hkb + (1.0f - gb[j]) * kb[j];
            hva = ga[j] * hva + (1.0f - ga[j]) * va[j];
            hvb = gb[j] * hvb + (1.0f - gb[j]) * vb[j];
            pa *= ga[j];
            pb *= gb[j];
        }
        a[0] = pa;
        a[1] = pb;
        a[2] = pa;
        a[3] = pb;
        b[0] = hka;
        b[1] = hkb;
        b[2] = hva;
        b[3] = hvb;
    }
    __device__ __forceinline__ void start(float h[NS]) const {
#pragma unroll
        for (int s = 0; s < NS; ++s) h[s] = 0.0f;
    }
    __device__ __forceinline__ void emit(float h[NS]) const {
        if (n == 0u) return;
        const u32 half = inner / 2u;
        const double inv_freq = rope_inv_freq(i, inner, base);
        float hk[2] = {h[0], h[1]}, hv[2] = {h[2], h[3]};
#pragma unroll
        for (int j = 0; j < R; ++j) {
            if ((u32)j < n) {
                const u32 a = a0 + j * inner;
                ratplus_token(k_tilde, v_tilde, k_rope, a, a + half, (double)(pos0 + t0 + j) * inv_freq, ga[j], gb[j],
                              ka[j], kb[j], va[j], vb[j], hk, hv);
            }
        }
    }
};

extern "C" __global__ void __launch_bounds__(KVS_SCAN_THREADS, KVS_SCAN_DECAY_CTAS)
    decay_scan_onepass(const DecayParams p, const store_t* __restrict__ x, const float* __restrict__ g,
                       const float* __restrict__ h0, store_t* __restrict__ y, u32* sync, float2* agg, float* incl,
                       const u32 n_chunks) {
    DecayLanes body;
    body.x = x;
    body.g = g;
    body.h0 = h0;
    body.y = y;
    body.seq = p.seq;
    body.inner = p.inner;
    body.lanes = p.outer * p.inner;
    lookback_scan(body, n_chunks, sync, agg, incl);
}

extern "C" __global__ void __launch_bounds__(KVS_SCAN_THREADS)
    ratplus_kv_onepass(const DecayParams p, const store_t* __restrict__ k, const store_t* __restrict__ v,
                       const float* __restrict__ g, store_t* __restrict__ k_tilde, store_t* __restrict__ v_tilde,
                       store_t* __restrict__ k_rope, u32* sync, float2* agg, float* incl, const u32 n_chunks) {
    RatplusLanes body;
    body.k = k;
    body.v = v;
    body.g = g;
    body.k_tilde = k_tilde;
    body.v_tilde = v_tilde;
    body.k_rope = k_rope;
    body.seq = p.seq;
    body.inner = p.inner;
    body.lanes = p.outer * (p.inner / 2u);
    body.pos0 = p.pos0;
    body.base = p.base;
    lookback_scan(body, n_chunks, sync, agg, incl);
}
