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
// TODO(perf): decay_scan and ratplus_kv walk the sequence serially per lane; a chunked parallel
// scan with f32 carries would expose more parallelism for few lanes and long sequences.

__device__ __forceinline__ double rope_inv_freq(u32 i, u32 dim, float base) {
    return pow((double)base, -(2.0 * (double)i) / (double)dim);
}

// (a, b) = (x_i, x_{i+D/2}) rotated by `angle`.
__device__ __forceinline__ void rope_rotate(float a, float b, double angle, float* ya, float* yb) {
    double s, c;
    sincos(angle, &s, &c);
    *ya = (float)((double)a * c - (double)b * s);
    *yb = (float)((double)b * c + (double)a * s);
}

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

extern "C" __global__ void ratplus_kv(const DecayParams p, const store_t* __restrict__ k, const store_t* __restrict__ v,
                                      const float* __restrict__ g, store_t* __restrict__ k_tilde,
                                      store_t* __restrict__ v_tilde, store_t* __restrict__ k_rope) {
    const u32 half = p.inner / 2u;
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.outer * half) return;
    const u32 h = e / half;
    const u32 i = e - h * half;
    const double inv_freq = rope_inv_freq(i, p.inner, p.base);
    float hk_a = 0.0f, hk_b = 0.0f, hv_a = 0.0f, hv_b = 0.0f;
    u32 a = h * p.seq * p.inner + i;
    for (u32 t = 0; t < p.seq; ++t, a += p.inner) {
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
    const float ga = g[a];
    const float gb = g[b];
    const float ka = ga * hk[a] + (1.0f - ga) * load_f(k, a);
    const float kb = gb * hk[b] + (1.0f - gb) * load_f(k, b);
    hk_new[a] = ka;
    hk_new[b] = kb;
    hv_new[a] = ga * hv[a] + (1.0f - ga) * load_f(v, a);
    hv_new[b] = gb * hv[b] + (1.0f - gb) * load_f(v, b);
    float ya, yb;
    rope_rotate(ka, kb, (double)p.pos0 * rope_inv_freq(i, p.inner, p.base), &ya, &yb);
    store_f(k_rope, a, ya);
    store_f(k_rope, b, yb);
}
