// cuda/common.cuh: helpers shared by every kernel family.
//
// Never #included (NVRTC gets no include paths): the host assembles each module as
//   [params struct of the family, with a static_assert on its size]
//   [prelude: KVS_STORE_F32 | KVS_STORE_F16 | KVS_STORE_BF16 (families with a storage dtype),
//             KVS_DPL (head-dim slots per lane, families that keep a head vector in registers)]
//   [#line 1 "cuda/common.cuh"] [this file]
//   [#line 1 "cuda/<family>.cu"] [the family's kernels]
// and compiles it with NVRTC for the device's arch. No toolkit header is used: f16 converts through
// inline PTX, bf16 through bit shifts, so the same source builds with a bare libnvrtc.
//
// Conventions: every kernel is `extern "C"`, takes its params struct by value first, then its
// inputs, then its outputs (the order of `Op::buffers()`), then any scratch buffers. Element
// indices are 32-bit: the problem structs cap every tensor at 2^30 elements.

typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;

#define KVS_FULL_MASK 0xffffffffu
#define KVS_INF __int_as_float(0x7f800000)
#define KVS_NEG_INF __int_as_float(0xff800000)

// ---------------------------------------------------------------------------------------------
// Storage types: `store_t` holds q/k/v; every kernel computes in f32.
// ---------------------------------------------------------------------------------------------
#if defined(KVS_STORE_F32)
typedef float store_t;
__device__ __forceinline__ float load_f(const store_t* p, u32 i) { return p[i]; }
__device__ __forceinline__ void store_f(store_t* p, u32 i, float x) { p[i] = x; }
#elif defined(KVS_STORE_F16)
typedef unsigned short store_t;
__device__ __forceinline__ float kvs_h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ unsigned short kvs_f2h(float f) {
    unsigned short h;
    // Round to nearest even, like `half::f16::from_f32` on the host.
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float load_f(const store_t* p, u32 i) { return kvs_h2f(p[i]); }
__device__ __forceinline__ void store_f(store_t* p, u32 i, float x) { p[i] = kvs_f2h(x); }
#elif defined(KVS_STORE_BF16)
typedef unsigned short store_t;
__device__ __forceinline__ float kvs_bf2f(unsigned short h) { return __uint_as_float(((u32)h) << 16); }
__device__ __forceinline__ unsigned short kvs_f2bf(float f) {
    u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        // NaN: keep the sign and the top payload bits, force a quiet NaN (as `half::bf16`).
        return (unsigned short)((x >> 16) | 0x0040u);
    }
    // Round to nearest even on the 16 dropped bits.
    u32 rounding = 0x7fffu + ((x >> 16) & 1u);
    return (unsigned short)((x + rounding) >> 16);
}
__device__ __forceinline__ float load_f(const store_t* p, u32 i) { return kvs_bf2f(p[i]); }
__device__ __forceinline__ void store_f(store_t* p, u32 i, float x) { p[i] = kvs_f2bf(x); }
#endif

// ---------------------------------------------------------------------------------------------
// RoPE (rotation pairs (i, i + D/2)) and the one-token RAT+ update (decay.cu's ratplus_step and
// cache.cu's cache_append). Angles are pos * base^(-2i/D) in f64, as the reference computes them;
// the rotation of the f32 value is done in f64 and rounded once.
// ---------------------------------------------------------------------------------------------
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

#if defined(KVS_STORE_F32) || defined(KVS_STORE_F16) || defined(KVS_STORE_BF16)
// One RAT+ step of the rotation pair at element offsets (a, b = a + D/2) of channel index i:
// hk' = g*hk + (1-g)*k, hv' = g*hv + (1-g)*v (f32) into nk / nv, and RoPE(hk', pos) into y.
__device__ __forceinline__ void ratplus_pair_step(const store_t* __restrict__ k, const store_t* __restrict__ v,
                                                  const float* __restrict__ g, const float* hk, const float* hv,
                                                  u32 a, u32 b, u32 i, u32 dim, float base, double pos,
                                                  float nk[2], float nv[2], float y[2]) {
    const float ga = g[a];
    const float gb = g[b];
    nk[0] = ga * hk[a] + (1.0f - ga) * load_f(k, a);
    nk[1] = gb * hk[b] + (1.0f - gb) * load_f(k, b);
    nv[0] = ga * hv[a] + (1.0f - ga) * load_f(v, a);
    nv[1] = gb * hv[b] + (1.0f - gb) * load_f(v, b);
    rope_rotate(nk[0], nk[1], pos * rope_inv_freq(i, dim, base), &y[0], &y[1]);
}
#endif

// ---------------------------------------------------------------------------------------------
// Counter-based PCG hash and random keys (SPEC §8.1), all arithmetic mod 2^32.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ u32 kvs_pcg(u32 v) {
    u32 state = v * 747796405u + 2891336453u;
    u32 word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

__device__ __forceinline__ u32 kvs_key(u32 seed, u32 row, u32 i) {
    return kvs_pcg(seed ^ kvs_pcg(row ^ kvs_pcg(i)));
}

// Order-preserving u32 image of an f32: a < b (as floats) iff key(a) < key(b). -0 and +0 map to
// the same key (they compare equal, so the lower index must win the tie). -inf maps below every
// finite value; NaN lands outside the finite range (its rank is unspecified but in bounds).
__device__ __forceinline__ u32 f32_order_key(float x) {
    u32 b = (x == 0.0f) ? 0u : __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// ---------------------------------------------------------------------------------------------
// Warp and block collectives. Block helpers must be reached by every thread of the block
// (blockDim.x a multiple of 32, at most 1024) and contain __syncthreads().
// ---------------------------------------------------------------------------------------------
// max(m, x) that lets a NaN through (fmaxf would drop it): a NaN logit or split lse must reach
// the output.
__device__ __forceinline__ float kvs_nan_max(float m, float x) { return (x > m || x != x) ? x : m; }

// The weight exp(l - m) of a split (or warp) with lse l in a log-sum-exp merge of maximum m; an
// empty one (l = -inf), or all of them when every one is empty (m = -inf), weighs 0.
__device__ __forceinline__ float lse_weight(float m, float l) {
    return (m == KVS_NEG_INF || l == KVS_NEG_INF) ? 0.0f : expf(l - m);
}

__device__ __forceinline__ float warp_sum(float x) {
    // xor butterfly: every lane ends with the same bits (each step adds the same pair).
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(KVS_FULL_MASK, x, o);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(KVS_FULL_MASK, x, o));
    return x;
}

// Exclusive prefix sum of `v` over the threads of the block in thread order; `*total` gets the
// sum over the block. Safe to call repeatedly (ends with a barrier).
__device__ u32 block_exclusive_scan(u32 v, u32* total) {
    __shared__ u32 warp_tot[32];
    const u32 lane = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    const u32 n_warps = blockDim.x >> 5;
    u32 x = v;  // inclusive scan within the warp
#pragma unroll
    for (u32 o = 1; o < 32; o <<= 1) {
        u32 y = __shfl_up_sync(KVS_FULL_MASK, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31u) warp_tot[warp] = x;
    __syncthreads();
    if (warp == 0) {
        u32 s = lane < n_warps ? warp_tot[lane] : 0u;
#pragma unroll
        for (u32 o = 1; o < 32; o <<= 1) {
            u32 y = __shfl_up_sync(KVS_FULL_MASK, s, o);
            if (lane >= o) s += y;
        }
        warp_tot[lane] = s;  // inclusive prefix over warps
    }
    __syncthreads();
    const u32 before = warp == 0 ? 0u : warp_tot[warp - 1];
    *total = warp_tot[n_warps - 1];
    __syncthreads();
    return before + x - v;
}

__device__ __forceinline__ u32 block_sum_u32(u32 v) {
    u32 total;
    block_exclusive_scan(v, &total);
    return total;
}

// The least and largest of the block's values (every thread passes its own *lo, *hi, the
// neutral 0xffffffff / 0 when it has none) to every thread. Every thread of the block must call
// it; it holds a barrier.
__device__ __forceinline__ void block_min_max_u32(u32* lo, u32* hi) {
    __shared__ u32 s_lo[32];
    __shared__ u32 s_hi[32];
    u32 l = *lo, h = *hi;
#pragma unroll
    for (u32 o = 16; o > 0u; o >>= 1) {
        l = min(l, __shfl_xor_sync(KVS_FULL_MASK, l, o));
        h = max(h, __shfl_xor_sync(KVS_FULL_MASK, h, o));
    }
    if ((threadIdx.x & 31u) == 0u) {
        s_lo[threadIdx.x >> 5] = l;
        s_hi[threadIdx.x >> 5] = h;
    }
    __syncthreads();
    for (u32 w = 0; w < (blockDim.x + 31u) / 32u; ++w) {
        l = min(l, s_lo[w]);
        h = max(h, s_hi[w]);
    }
    *lo = l;
    *hi = h;
}

// ---------------------------------------------------------------------------------------------
// Forced top-k selection of one row by one thread block (SPEC §5.2, §8.2).
//
// `Src` describes the row of `n` items:
//   bool forced(u32 i)   item always kept;
//   bool eligible(u32 i) item competes for the budget (must be false for forced items);
//   u32  key(u32 i)      rank of a competing item: larger wins, ties go to the lower index
//                        (f32 scores through f32_order_key, random keys as they are).
// The result is forced ∪ top_{min(#eligible, k_total - #forced)}(eligible), written ascending.
//
// Method: a 4-pass radix select (8-bit digits, most significant first, a 256-bin shared
// histogram per pass) finds the key `thr` of the last item kept and how many of the items with
// exactly that key are kept (`take_eq`, lowest indices first); one ordered compaction pass (block
// scans over chunks of blockDim items) then writes the kept indices in ascending order.
// ---------------------------------------------------------------------------------------------

// Adds one item's digit to a 256-bin shared histogram: lanes with the same digit add once
// (match.any), since the leading digits of similar scores fall into a few bins and one shared
// atomic per item on the same word serialises. bin >= 256: the lane has no item. Every lane of
// the warp must call it.
__device__ __forceinline__ void hist_add_warp(u32* hist, u32 bin) {
    const u32 same = __match_any_sync(KVS_FULL_MASK, bin);
    if (bin < 256u && (u32)(__ffs(same) - 1) == (threadIdx.x & 31u)) atomicAdd(&hist[bin], (u32)__popc(same));
}

// The 4-pass radix select over the candidates that count(hist, mask, prefix, shift) adds to the
// (zeroed) 256-bin histogram: the digit (key >> shift) & 255 of every eligible item whose key
// agrees with `prefix` on `mask`; every thread of the block calls count.
// `want` must satisfy 1 <= want <= #eligible. On return (every thread): `*thr` = the want-th
// largest eligible key, `*take_eq` = how many eligible items with key == thr are kept (>= 1).
// Every eligible key is below 2^top_bits (32: any key): the passes above it, where every digit
// is 0, are skipped.
template <class Count>
__device__ void block_radix_threshold_by(u32 want, u32* thr, u32* take_eq, const Count& count, u32 top_bits = 32u) {
    __shared__ u32 hist[256];
    __shared__ u32 s_prefix;
    __shared__ u32 s_rem;
    if (threadIdx.x == 0) {
        s_prefix = 0u;
        s_rem = want;
    }
    u32 mask = 0u;  // digits fixed so far (identical in every thread)
    for (int shift = 24; shift >= 0; shift -= 8) {
        if ((u32)shift >= top_bits) {  // uniform: every key's digit here is 0, as the prefix's
            mask |= 255u << shift;
            continue;
        }
        __syncthreads();  // the previous pass's digit search is done; s_prefix is visible
        for (u32 b = threadIdx.x; b < 256u; b += blockDim.x) hist[b] = 0u;
        __syncthreads();
        const u32 prefix = s_prefix;
        count(hist, mask, prefix, shift);
        __syncthreads();
        if (threadIdx.x < 32u) {
            // Walk the digits from the largest: skip whole bins while they hold fewer than the
            // items still needed; the bin where the count is reached holds the threshold. The
            // walk is cut in 32 runs of 8 bins (lane l: bins 255-8l down to 248-8l): a prefix sum
            // over the runs finds the run where the count is reached, one lane walks it. Same
            // result as the serial walk, including its stop at bin 0 when the count is never
            // reached.
            const u32 lane = threadIdx.x;
            const u32 top = 255u - 8u * lane;
            u32 run = 0u;
#pragma unroll
            for (u32 i = 0; i < 8u; ++i) run += hist[top - i];
            u32 incl = run;  // inclusive prefix over lanes 0..lane (largest digits first)
#pragma unroll
            for (u32 o = 1; o < 32u; o <<= 1) {
                const u32 y = __shfl_up_sync(KVS_FULL_MASK, incl, o);
                if (lane >= o) incl += y;
            }
            const u32 rem0 = s_rem;
            const u32 hit = __ballot_sync(KVS_FULL_MASK, incl >= rem0);
            const u32 owner = hit != 0u ? (u32)(__ffs(hit) - 1) : 31u;
            if (lane == owner) {
                u32 rem = rem0 - (incl - run);  // items still needed when this run starts
                u32 d = top;
                for (u32 i = 0; i < 7u && d > 0u && hist[d] < rem; ++i) {
                    rem -= hist[d];
                    --d;
                }
                s_prefix = prefix | (d << shift);
                s_rem = rem;
            }
        }
        mask |= 255u << shift;
    }
    __syncthreads();
    *thr = s_prefix;
    *take_eq = s_rem;
    __syncthreads();  // s_prefix / s_rem may be reused by a later call
}

// block_radix_threshold_by over the items 0..n-1 of `src`, read from it in every pass.
template <class Src>
__device__ void block_radix_threshold(const Src& src, u32 n, u32 want, u32* thr, u32* take_eq) {
    block_radix_threshold_by(want, thr, take_eq, [&](u32* hist, u32 mask, u32 prefix, int shift) {
        // The trip count is the same in every lane (n is), so every lane takes part.
        for (u32 base = 0; base < n; base += blockDim.x) {
            const u32 i = base + threadIdx.x;
            u32 bin = 256u;
            if (i < n && src.eligible(i)) {
                const u32 k = src.key(i);
                if ((k & mask) == prefix) bin = (k >> shift) & 255u;
            }
            hist_add_warp(hist, bin);
        }
    });
}

// The kept items of a thread's R consecutive items (bit masks): the `above` ones, and the `equal`
// ones while fewer than take_eq equal items come before them (eq_rank: the equal items before
// this thread's first), so that ties go to the lowest index.
template <u32 R>
__device__ __forceinline__ u32 select_regs_kept(u32 above, u32 equal, u32 eq_rank, u32 take_eq) {
    u32 take = above;
#pragma unroll
    for (u32 u = 0; u < R; ++u) {
        if ((equal >> u) & 1u) {
            if (eq_rank < take_eq) take |= 1u << u;
            ++eq_rank;
        }
    }
    return take;
}

// Hands every kept item (forced, or eligible and above the threshold, or among the first
// `take_eq` eligible items equal to it) to sink.put(pos, i): item i is the pos-th kept item in
// ascending index order. Returns how many were kept (every thread).
// Each thread classifies KVS_COMPACT_ITEMS consecutive items per round, so a round covers
// blockDim * KVS_COMPACT_ITEMS items for the price of two block scans (the scans and their
// barriers, not the loads, bound this pass on long rows). KVS_COMPACT_ITEMS comes from the host
// (ops.rs TOPK_GATHER_ITEMS, the multi-CTA top-k's slices are whole rounds of it).
template <class Src, class Sink>
__device__ u32 block_compact_kept_to(const Src& src, u32 n, bool have_chosen, u32 thr, u32 take_eq,
                                     const Sink& sink) {
    u32 written = 0u;
    u32 eq_seen = 0u;
    for (u32 base = 0; base < n; base += blockDim.x * KVS_COMPACT_ITEMS) {
        const u32 i0 = base + threadIdx.x * KVS_COMPACT_ITEMS;
        u32 above = 0u;  // bit u: item i0 + u is kept regardless of ties (forced or key > thr)
        u32 equal = 0u;  // bit u: item i0 + u competes with key == thr
#pragma unroll
        for (u32 u = 0; u < KVS_COMPACT_ITEMS; ++u) {
            const u32 i = i0 + u;
            const bool valid = i < n;
            const bool f = valid && src.forced(i);
            const bool e = valid && !f && have_chosen && src.eligible(i);
            const u32 k = e ? src.key(i) : 0u;
            if (f || (e && k > thr)) above |= 1u << u;
            if (e && k == thr) equal |= 1u << u;
        }
        u32 eq_total;
        // Items equal to the threshold are kept lowest index first: rank = equal items before.
        const u32 eq_rank = block_exclusive_scan((u32)__popc(equal), &eq_total) + eq_seen;
        const u32 take = select_regs_kept<KVS_COMPACT_ITEMS>(above, equal, eq_rank, take_eq);
        u32 take_total;
        u32 pos = block_exclusive_scan((u32)__popc(take), &take_total) + written;
#pragma unroll
        for (u32 u = 0; u < KVS_COMPACT_ITEMS; ++u) {
            if ((take >> u) & 1u) {
                sink.put(pos, i0 + u);
                ++pos;
            }
        }
        written += take_total;
        eq_seen += eq_total;
    }
    return written;
}

// block_compact_kept_to's sink for a list of kept indices: out[pos] = i, at most `cap` entries.
struct KeptIndexSink {
    int* out;
    u32 cap;
    __device__ void put(u32 pos, u32 i) const {
        if (pos < cap) out[pos] = (int)i;
    }
};

// The kept indices in ascending order to out[0..], at most `cap` entries; returns how many were
// kept (every thread).
template <class Src>
__device__ u32 block_compact_kept(const Src& src, u32 n, bool have_chosen, u32 thr, u32 take_eq, int* out,
                                  u32 cap) {
    return block_compact_kept_to(src, n, have_chosen, thr, take_eq, KeptIndexSink{out, cap});
}

// A thread's R register items against the threshold key `thr`: *above = the forced items and the
// competing ones (bits of `elig`) with key > thr, *equal = the competing ones with key == thr.
template <u32 R>
__device__ __forceinline__ void select_regs_split(const u32 (&key)[R], u32 forced, u32 elig, u32 thr, u32* above,
                                                  u32* equal) {
    u32 a = forced, e = 0u;
#pragma unroll
    for (u32 u = 0; u < R; ++u) {
        if ((elig >> u) & 1u) {
            a |= (key[u] > thr ? 1u : 0u) << u;
            e |= (key[u] == thr ? 1u : 0u) << u;
        }
    }
    *above = a;
    *equal = e;
}


// block_select_row for rows of at most blockDim * KVS_SELECT_REG_ITEMS items: thread t holds
// items t*R .. t*R+R-1 (their class and key read from src once, in registers), the radix passes
// count from registers, and one block scan of packed 16-bit counts (n <= 65535) gives both the
// forced / eligible totals and, in the compaction, the kept items' positions: the items equal to
// the threshold are kept lowest index first, so the kept ones before a thread are its items
// above the threshold before it plus min(its equal items before it, take_eq). Same result as
// the general path, which reads src in every pass (a 2048-block Quest row took 11 us in one CTA
// of 1024 threads on the H200). KVS_SELECT_REG_ITEMS comes from the host (ops.rs
// SELECT_REG_ITEMS, which sizes these kernels' CTAs to it).
template <class Src>
__device__ u32 block_select_row_regs(const Src& src, u32 n, u32 k_total, int* out, u32 width) {
    constexpr u32 R = KVS_SELECT_REG_ITEMS;
    const u32 i0 = threadIdx.x * R;
    u32 key[R];
    u32 forced = 0u;  // bit u: item i0 + u is forced
    u32 elig = 0u;    // bit u: item i0 + u competes
#pragma unroll
    for (u32 u = 0; u < R; ++u) {
        const u32 i = i0 + u;
        const bool valid = i < n;
        const bool f = valid && src.forced(i);
        const bool e = valid && !f && src.eligible(i);
        key[u] = e ? src.key(i) : 0u;
        forced |= (f ? 1u : 0u) << u;
        elig |= (e ? 1u : 0u) << u;
    }
    u32 totals;
    block_exclusive_scan(((u32)__popc(forced) << 16) | (u32)__popc(elig), &totals);
    const u32 n_forced = totals >> 16;
    const u32 n_elig = totals & 0xffffu;
    const u32 budget = k_total > n_forced ? k_total - n_forced : 0u;
    const u32 want = budget < n_elig ? budget : n_elig;
    u32 thr = 0u;
    u32 take_eq = 0u;
    if (want > 0u) {  // uniform branch
        // The radix runs on key - (least eligible key), over the bits in which the keys differ:
        // similar scores share their top bits, so 1-2 of the 4 passes drop out, and the digits
        // left spread the items over the bins, where plain shared atomics beat the aggregation
        // of hist_add_warp.
        u32 lo = 0xffffffffu;
        u32 hi = 0u;
#pragma unroll
        for (u32 u = 0; u < R; ++u) {
            if ((elig >> u) & 1u) {
                lo = min(lo, key[u]);
                hi = max(hi, key[u]);
            }
        }
        block_min_max_u32(&lo, &hi);
        const u32 top_bits = 32u - (u32)__clz(hi - lo);
        block_radix_threshold_by(
            want, &thr, &take_eq,
            [&](u32* hist, u32 mask, u32 prefix, int shift) {
#pragma unroll
                for (u32 u = 0; u < R; ++u) {
                    const u32 rel = key[u] - lo;
                    if (((elig >> u) & 1u) != 0u && (rel & mask) == prefix) atomicAdd(&hist[(rel >> shift) & 255u], 1u);
                }
            },
            top_bits);
        thr += lo;
    }
    u32 above, equal;  // kept regardless of ties; compete with key == thr
    select_regs_split<R>(key, forced, want > 0u ? elig : 0u, thr, &above, &equal);
    u32 kept_total;
    const u32 before = block_exclusive_scan(((u32)__popc(equal) << 16) | (u32)__popc(above), &kept_total);
    const u32 eq_rank = before >> 16;
    u32 pos = (before & 0xffffu) + min(eq_rank, take_eq);
    const u32 take = select_regs_kept<R>(above, equal, eq_rank, take_eq);
#pragma unroll
    for (u32 u = 0; u < R; ++u) {
        if ((take >> u) & 1u) {
            if (pos < width) out[pos] = (int)(i0 + u);
            ++pos;
        }
    }
    const u32 kept = (kept_total & 0xffffu) + min(kept_total >> 16, take_eq);
    for (u32 q = kept + threadIdx.x; q < width; q += blockDim.x) out[q] = -1;
    return kept;
}

// The whole forced top-k of one row: writes `width` entries to `out` (kept items ascending, then
// -1 padding) and returns the number kept. Every thread of the block must call it.
template <class Src>
__device__ u32 block_select_row(const Src& src, u32 n, u32 k_total, int* out, u32 width) {
    if (n <= blockDim.x * KVS_SELECT_REG_ITEMS) return block_select_row_regs(src, n, k_total, out, width);
    u32 n_forced = 0u;
    u32 n_elig = 0u;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        if (src.forced(i)) {
            ++n_forced;
        } else if (src.eligible(i)) {
            ++n_elig;
        }
    }
    n_forced = block_sum_u32(n_forced);
    n_elig = block_sum_u32(n_elig);
    const u32 budget = k_total > n_forced ? k_total - n_forced : 0u;
    const u32 want = budget < n_elig ? budget : n_elig;
    u32 thr = 0u;
    u32 take_eq = 0u;
    if (want > 0u) block_radix_threshold(src, n, want, &thr, &take_eq);  // uniform branch
    const u32 kept = block_compact_kept(src, n, want > 0u, thr, take_eq, out, width);
    for (u32 q = kept + threadIdx.x; q < width; q += blockDim.x) out[q] = -1;
    return kept;
}

// A row of block ranks for block_select_row (Quest, MoBA, the cache decode): block `current` and
// the n_local - 1 before it are forced, and block 0 when force_first; with past_only (MoBA) only
// blocks before `current` compete. `ranking` holds f32 scores (as bits) or u32 random keys.
struct BlockSelectSrc {
    const u32* ranking;  // this row's scores (as bits) or keys
    u32 current;
    u32 n_local;
    u32 force_first;
    u32 past_only;  // 1 = MoBA: only blocks before `current` compete
    u32 by_key;     // 1 = ranking holds u32 random keys
    __device__ bool forced(u32 b) const {
        return (force_first != 0u && b == 0u) || (b <= current && b + n_local > current);
    }
    __device__ bool eligible(u32 b) const { return !forced(b) && (past_only == 0u || b < current); }
    __device__ u32 key(u32 b) const {
        const u32 w = ranking[b];
        return by_key != 0u ? w : f32_order_key(__uint_as_float(w));
    }
};

// Stable sort of m (key, value) pairs by key DESCENDING (equal keys keep their order), by 32
// one-bit LSD split passes between (ka, va) and (kb, vb); bits on which all keys agree are
// skipped. Returns true when the sorted pairs are in (ka, va), false when in (kb, vb).
__device__ bool block_sort_desc_stable(u32* ka, u32* va, u32* kb, u32* vb, u32 m) {
    bool in_a = true;
    for (u32 bit = 0; bit < 32u; ++bit) {
        const u32* ks = in_a ? ka : kb;
        const u32* vs = in_a ? va : vb;
        u32* kd = in_a ? kb : ka;
        u32* vd = in_a ? vb : va;
        u32 ones = 0u;
        for (u32 q = threadIdx.x; q < m; q += blockDim.x) ones += (ks[q] >> bit) & 1u;
        ones = block_sum_u32(ones);
        if (ones == 0u || ones == m) continue;  // uniform: every thread sees the same total
        u32 seen = 0u;
        for (u32 base = 0; base < m; base += blockDim.x) {
            const u32 q = base + threadIdx.x;
            const u32 b = q < m ? (ks[q] >> bit) & 1u : 0u;
            u32 tot;
            const u32 ones_before = block_exclusive_scan(b, &tot) + seen;
            if (q < m) {
                // Ones (larger keys) first, in order; zeros after them, in order.
                const u32 dst = b ? ones_before : ones + (q - ones_before);
                kd[dst] = ks[q];
                vd[dst] = vs[q];
            }
            seen += tot;
        }
        __syncthreads();  // the pass's writes are visible to the next pass
        in_a = !in_a;
    }
    return in_a;
}

// ---------------------------------------------------------------------------------------------
// Shared-memory addresses and thread block clusters (sm_90+: quest_decode_cluster_g*). A
// cluster's CTAs read each other's shared memory (distributed shared memory) between cluster
// barriers.
// ---------------------------------------------------------------------------------------------
// The 32-bit shared-window address of a generic pointer into shared memory (what ldmatrix,
// cp.async and mapa take).
__device__ __forceinline__ u32 kvs_smem_addr(const void* p) {
    u32 addr;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(addr) : "l"(p));
    return addr;
}

// Programmatic dependent launch (sm_90+; Cuda::launch_args, on unless KVSPARSE_CUDA_PDL=0): lets
// the kernel after this one on the stream launch now (it then waits here itself), and waits
// until the kernel before this one has finished and its writes are visible. A kernel launched
// with the attribute must call it before touching global memory; for one launched plainly it
// costs nothing. Elsewhere it is empty.
__device__ __forceinline__ void kvs_grid_dependency() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

#define KVS_MAX_CLUSTER 16  // the largest cluster the kernels are launched with (non-portable)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ u32 kvs_cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

__device__ __forceinline__ u32 kvs_cluster_size() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r));
    return r;
}

// Every thread of the cluster arrives and waits; shared (and global) writes before it are
// visible to every CTA of the cluster after it.
__device__ __forceinline__ void kvs_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// The word at `local` (a shared-memory address of this CTA) in CTA `rank` of the cluster.
__device__ __forceinline__ u32 kvs_cluster_ld(const void* local, u32 rank) {
    u32 remote, v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(kvs_smem_addr(local)), "r"(rank));
    asm volatile("ld.shared::cluster.u32 %0, [%1];" : "=r"(v) : "r"(remote) : "memory");
    return v;
}

// The sum over the cluster's CTAs of the word at `local`: the loads are issued before the adds.
__device__ __forceinline__ u32 kvs_cluster_sum(const u32* local, u32 n_ctas) {
    u32 v[KVS_MAX_CLUSTER];
#pragma unroll
    for (u32 r = 0; r < KVS_MAX_CLUSTER; ++r) v[r] = r < n_ctas ? kvs_cluster_ld(local, r) : 0u;
    u32 s = 0u;
#pragma unroll
    for (u32 r = 0; r < KVS_MAX_CLUSTER; ++r) s += v[r];
    return s;
}
#endif

// ---------------------------------------------------------------------------------------------
// 16-byte vectors of the storage type (the grouped decodes, the Quest scores).
// ---------------------------------------------------------------------------------------------
#if defined(KVS_STORE_F32) || defined(KVS_STORE_F16) || defined(KVS_STORE_BF16)
struct __attribute__((aligned(16))) kvs_u4 {
    u32 x, y, z, w;
};

// 16-byte read-only load; the address must be 16-byte aligned (rows of D * sizeof(store_t), a
// multiple of 16 where these are used, and cudarc allocations are 256-byte aligned).
__device__ __forceinline__ kvs_u4 ldg16(const void* ptr) {
    kvs_u4 r;
    asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(ptr));
    return r;
}

// The storage values of one 16-byte vector (4 f32 or 8 f16/bf16), widened to f32 (element 0 in
// the low bits).
__device__ __forceinline__ void vec_widen(const kvs_u4& w, float* f) {
#if defined(KVS_STORE_F32)
    f[0] = __uint_as_float(w.x);
    f[1] = __uint_as_float(w.y);
    f[2] = __uint_as_float(w.z);
    f[3] = __uint_as_float(w.w);
#elif defined(KVS_STORE_BF16)
    const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(ws[i] << 16);
        f[2 * i + 1] = __uint_as_float(ws[i] & 0xffff0000u);
    }
#else
    const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = kvs_h2f((unsigned short)(ws[i] & 0xffffu));
        f[2 * i + 1] = kvs_h2f((unsigned short)(ws[i] >> 16));
    }
#endif
}

// ---------------------------------------------------------------------------------------------
// Quest block scores (blocks.cu's quest_scores_grouped_g* and quest_select_kv_g*, attention.cu's
// quest_decode_cluster_g*): sum_d max(q_d * kmax_d, q_d * kmin_d) of one kv head's blocks for a
// chunk of its query heads, from [Hkv, nb, dim] statistics rows read with 16-byte loads.
// ---------------------------------------------------------------------------------------------
#if defined(KVS_STORE_F32)
#define QS_VE 4
#else
#define QS_VE 8
#endif
#define QS_U 4

// The scores of the heads h0 .. h0+hpc-1 (one kv head `kvh`, hpc <= GM) for the blocks
// [b0, b1), handed per block to sink.put(b, s) by one lane (s[g] = the score of head h0 + g).
template <int GM, class Sink>
__device__ __forceinline__ void quest_score_run(u32 nb, u32 dim, const store_t* __restrict__ q,
                                                const store_t* __restrict__ kmin, const store_t* __restrict__ kmax,
                                                u32 h0, u32 hpc, u32 kvh, u32 lanes, u32 b0, u32 b1,
                                                const Sink& sink) {
    const u32 lane = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    const u32 n_warps = blockDim.x >> 5;
    const u32 rg = lane / lanes;
    const u32 lr = lane - rg * lanes;
    const u32 rpw = 32u / lanes;
    const u32 col = lr * QS_VE;
    const store_t* lo = kmin + kvh * nb * dim;
    const store_t* hi = kmax + kvh * nb * dim;
    const u32 tile = rpw * QS_U;
    const u32 stride = n_warps * tile;
    // The statistics of the warp's first tile are requested before q, and each next tile's
    // before the current one's shuffles: a warp has a few tiles (one or two in quest_select_kv,
    // four in the cluster decode), so what bounds it is how many round trips it waits for in turn.
    kvs_u4 wl[QS_U], wh[QS_U];
    auto load_tile = [&](u32 base) {
#pragma unroll
        for (int u = 0; u < QS_U; ++u) {
            const u32 b = base + (u32)u * rpw + rg;
            if (b < b1) {
                wl[u] = ldg16(lo + b * dim + col);
                wh[u] = ldg16(hi + b * dim + col);
            } else {
                wl[u] = kvs_u4{0u, 0u, 0u, 0u};
                wh[u] = kvs_u4{0u, 0u, 0u, 0u};
            }
        }
    };
    u32 base = b0 + warp * tile;
    load_tile(base);
    float qf[GM][QS_VE];
#pragma unroll
    for (int g = 0; g < GM; ++g) {
        // Heads past hpc load head h0 + hpc - 1 (in bounds) and are zeroed: no branch in front
        // of the loads.
        vec_widen(ldg16(q + (h0 + min((u32)g, hpc - 1u)) * dim + col), qf[g]);
        if ((u32)g >= hpc) {
#pragma unroll
            for (int e = 0; e < QS_VE; ++e) qf[g][e] = 0.0f;
        }
    }
    for (; base < b1; base += stride) {  // warp-uniform
        float s[QS_U][GM];
#pragma unroll
        for (int u = 0; u < QS_U; ++u) {
            float fl[QS_VE], fh[QS_VE];
            vec_widen(wl[u], fl);
            vec_widen(wh[u], fh);
#pragma unroll
            for (int g = 0; g < GM; ++g) {
                float a = 0.0f;
#pragma unroll
                for (int e = 0; e < QS_VE; ++e) a += fmaxf(qf[g][e] * fh[e], qf[g][e] * fl[e]);
                s[u][g] = a;
            }
        }
        load_tile(base + stride);
        for (u32 o = lanes >> 1; o > 0u; o >>= 1) {
#pragma unroll
            for (int u = 0; u < QS_U; ++u) {
#pragma unroll
                for (int g = 0; g < GM; ++g) s[u][g] += __shfl_xor_sync(KVS_FULL_MASK, s[u][g], o);
            }
        }
        if (lr == 0u) {
#pragma unroll
            for (int u = 0; u < QS_U; ++u) {
                const u32 b = base + (u32)u * rpw + rg;
                if (b < b1) sink.put(b, s[u]);
            }
        }
    }
}

// quest_score_run's sink for per-head scores: scores[h0 + g, b].
template <int GM>
struct HeadScoreSink {
    float* scores;
    u32 h0, hpc, nb;
    __device__ void put(u32 b, const float (&s)[GM]) const {
#pragma unroll
        for (int g = 0; g < GM; ++g) {
            if ((u32)g < hpc) scores[(h0 + (u32)g) * nb + b] = s[g];
        }
    }
};

// quest_score_run's sink for the group mean of a whole group (hpc = G heads): the heads' scores
// summed in head order, then / G, as quest_group_mean computes it from per-head scores.
// With `copy`, the mean of block b also goes to copy[b - copy_base] (quest_decode_cluster_g*'s
// share of the row in shared memory).
template <int GM>
struct GroupMeanSink {
    float* mean;  // this kv head's row
    u32 group;
    float* copy;
    u32 copy_base;
    __device__ void put(u32 b, const float (&s)[GM]) const {
        float t = 0.0f;
#pragma unroll
        for (int g = 0; g < GM; ++g) {
            if ((u32)g < group) t += s[g];
        }
        mean[b] = t / (float)group;
        if (copy != nullptr) copy[b - copy_base] = t / (float)group;
    }
};
#endif  // storage vectors, Quest block scores

// ---------------------------------------------------------------------------------------------
// Tensor-core helpers for 16-bit storage (mma.sync m16n8k16, f32 accumulators; sm_80+), shared
// by the prefill attention and the SnapKV scoring kernels.
// ---------------------------------------------------------------------------------------------
#if defined(KVS_STORE_F16) || defined(KVS_STORE_BF16)
// c += a * b for one m16n8k16 tile (a: 4 regs of 2 elements, b: 2 regs, c: 4 f32).
__device__ __forceinline__ void kvs_mma16816(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#if defined(KVS_STORE_BF16)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// 2^x by the SFU alone (ex2.approx.ftz: about 2 ulp, subnormal results flushed to 0, 2^-inf = 0):
// exp2f without fast-math adds range handling around the same instruction.
__device__ __forceinline__ float kvs_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Two f32 rounded to the storage type, `lo` in the low half (the element with the lower index).
__device__ __forceinline__ u32 kvs_pack2(float lo, float hi) {
    u32 r;
#if defined(KVS_STORE_BF16)
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

// Two 8x8 16-bit matrices from shared memory, transposed (B fragments of P V from row-major V):
// lanes 0-7 address the rows of the first matrix, lanes 8-15 those of the second.
__device__ __forceinline__ void kvs_ldsm_x2_trans(u32& r0, u32& r1, const store_t* smem_row) {
    const u32 addr = kvs_smem_addr(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];" : "=r"(r0), "=r"(r1) : "r"(addr));
}

// 16-byte global -> shared copy; src_bytes = 0 writes zeros and reads nothing.
__device__ __forceinline__ void kvs_cp_async16(void* smem, const void* gmem, u32 src_bytes) {
    const u32 addr = kvs_smem_addr(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(addr), "l"(gmem), "r"(src_bytes));
}

__device__ __forceinline__ void kvs_cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// Four 8x8 16-bit matrices from shared memory, transposed: lanes 8i .. 8i+7 address matrix i.
__device__ __forceinline__ void kvs_ldsm_x4_trans(u32 (&r)[4], const store_t* smem_row) {
    const u32 addr = kvs_smem_addr(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Four 8x8 16-bit matrices from shared memory: lanes 8i .. 8i+7 address the rows of matrix i
// (B fragments of Q K^T from row-major K: rows = keys, columns = the reduction dimension).
__device__ __forceinline__ void kvs_ldsm_x4(u32 (&r)[4], const store_t* smem_row) {
    const u32 addr = kvs_smem_addr(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Two consecutive 16-bit elements as one word (4-byte aligned: even element offset).
__device__ __forceinline__ u32 kvs_ld2(const store_t* p) { return *reinterpret_cast<const u32*>(p); }
#endif
