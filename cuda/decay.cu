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
// the chunked scans at the end of this file instead (decay_scan_* / ratplus_kv_*).
// TODO(perf): the chunked scans read the inputs twice (5 passes of bytes against the floor's 3);
// a one-pass form (decoupled look-back between runs) would reach the floor.

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
    float hk_a = hk[0], hk_b = hk[1], hv_a = hv[0], hv_b = hv[1];
    u32 a = (h * p.seq + t0) * p.inner + i;
#pragma unroll 4
    for (u32 t = t0; t < t1; ++t, a += p.inner) {
        const u32 b = a + half;
        const float ga = g[a];
        const float gb = g[b];
        hk_a = ga * hk_a + (1.0f - ga) * load_f(k, a);
        hk_b = gb * hk_b + (1.0f - gb) * load_f(k, b);
        hv_a = ga * hv_a + (1.0f - ga) * load_f(v, a);
        hv_b = gb * hv_b + (1.0f - gb) * load_f(v, b);
        store_f(k_tilde, a, hk_a);
        store_f(k_tilde, b, hk_b);
        store_f(v_tilde, a, hv_a);
        store_f(v_tilde, b, hv_b);
        float ya, yb;
        rope_rotate(hk_a, hk_b, (double)(p.pos0 + t) * inv_freq, &ya, &yb);
        store_f(k_rope, a, ya);
        store_f(k_rope, b, yb);
    }
    hk[0] = hk_a;
    hk[1] = hk_b;
    hv[0] = hv_a;
    hv[1] = hv_b;
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
