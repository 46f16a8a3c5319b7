// cuda/emu/emu.h: a host emulation of the CUDA features the kernels use, so that a kernel's logic
// (indexing, masking, fragment layouts, the order of its warp collectives) can be checked against a
// reference on a machine with no GPU. One CTA runs at a time, each of its threads a fiber (its own
// stack, switched cooperatively on one OS thread: x86-64 only); warp collectives (shuffles,
// votes, ldmatrix, mma.sync) meet at a per-warp barrier, __syncthreads at a per-CTA one, and a
// barrier that can never complete (threads gone while others wait) aborts. A cp.async lands
// when the issuing thread waits for it (so a read before the wait sees the old bytes),
// ex2.approx is exp2f, and nothing about timing, occupancy or memory ordering is modelled: this
// is a logic check, not a simulator. Only full-warp collectives are supported (a partial mask
// aborts).
// Used by cuda/emu/prep.py, which rewrites a module's inline-PTX helpers to call the emu_*
// functions below.
#pragma once
#include <atomic>
#include <type_traits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __cluster_dims__(...)

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint2 {
    unsigned x, y;
};
struct uint4 {
    unsigned x, y, z, w;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

#if !defined(__x86_64__)
#error "cuda/emu: the fiber switch is written for x86-64"
#endif

[[noreturn]] inline void emu_fail(const char* what) {
    std::fprintf(stderr, "emu: %s\n", what);
    std::abort();
}

// Fibers: a saved stack pointer each; emu_swap saves the callee-saved registers on the current
// stack, stores its pointer in *from and resumes `to` (SysV x86-64).
extern "C" void emu_swap(void** from, void* to);
asm(R"(
.text
.globl emu_swap
.type emu_swap, @function
emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)");

// A cp.async this thread issued and has not waited for yet.
struct EmuCopy {
    void* dst;
    const void* src;
    unsigned bytes;  // of 16; the rest is zero-filled
};

struct EmuFiber {
    void* sp = nullptr;
    std::vector<unsigned char> stack;
    uint3 tid{};
    unsigned phase = 0;  // collectives entered, for the warp's alternating slot sets
    bool done = false;
    std::vector<EmuCopy> pending;
};
inline EmuFiber* emu_current = nullptr;
inline void* emu_scheduler_sp = nullptr;
inline const std::function<void()>* emu_kernel = nullptr;
inline void emu_yield() { emu_swap(&emu_current->sp, emu_scheduler_sp); }
inline void emu_fiber_main() {
    (*emu_kernel)();
    emu_current->done = true;
    emu_yield();
    emu_fail("finished fiber resumed");
}

// Launch geometry: blockIdx / gridDim / blockDim are the current CTA's; threadIdx the fiber's.
#define threadIdx (emu_current->tid)
inline uint3 blockIdx;
inline dim3 gridDim, blockDim;

// Arrivals at and departures from barriers: a scheduler round without any is a deadlock.
inline unsigned long long emu_progress = 0;

// A reusable barrier for n fibers (generation counted): arrive, then yield until it turns.
struct EmuBarrier {
    unsigned n = 0, waiting = 0, generation = 0;
    void wait() {
        const unsigned gen = generation;
        ++emu_progress;
        if (++waiting == n) {
            waiting = 0;
            ++generation;
            return;
        }
        while (generation == gen) emu_yield();
        ++emu_progress;
    }
};

// Per-warp exchange: every lane writes its slot, all meet, every lane reads. Slots alternate
// between two sets, one per collective in turn: a lane writes a set again only after the next
// collective's barrier, which every lane reaches after reading, so one barrier a collective does.
struct EmuWarp {
    EmuBarrier bar;
    uint64_t slot[2][32][8];
    const void* ptr[2][32];
};
inline std::vector<EmuWarp>* emu_warps = nullptr;
inline EmuBarrier* emu_cta = nullptr;

inline unsigned emu_lane() { return emu_current->tid.x & 31u; }
inline EmuWarp& emu_warp() { return (*emu_warps)[emu_current->tid.x >> 5]; }
inline void emu_full(unsigned mask) {
    if (mask != 0xffffffffu) emu_fail("partial-warp collective");
}

inline void __syncthreads() { emu_cta->wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu_full(mask);
    emu_warp().bar.wait();
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// This lane's slot set for the collective it enters now.
inline uint64_t (&emu_slots())[32][8] { return emu_warp().slot[emu_current->phase++ & 1u]; }

template <class T>
inline T emu_exchange(T v, unsigned src) {
    static_assert(sizeof(T) <= 8, "one word per lane");
    auto& slot = emu_slots();
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slot[emu_lane()][0] = bits;
    emu_warp().bar.wait();
    T r;
    std::memcpy(&r, &slot[src & 31u][0], sizeof(T));
    return r;
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    emu_full(mask);
    const unsigned lane = emu_lane();
    return emu_exchange(v, (lane & ~(unsigned)(width - 1)) + ((unsigned)src & (unsigned)(width - 1)));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    emu_full(mask);
    const unsigned lane = emu_lane();
    const unsigned src = lane ^ (unsigned)lane_mask;
    return emu_exchange(v, ((src & ~(unsigned)(width - 1)) == (lane & ~(unsigned)(width - 1))) ? src : lane);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    emu_full(mask);
    const unsigned lane = emu_lane(), base = lane & ~(unsigned)(width - 1);
    const unsigned src = lane + delta;
    return emu_exchange(v, src < base + (unsigned)width ? src : lane);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    emu_full(mask);
    const unsigned lane = emu_lane(), base = lane & ~(unsigned)(width - 1);
    return emu_exchange(v, lane >= base + delta ? lane - delta : lane);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    emu_full(mask);
    auto& slot = emu_slots();
    slot[emu_lane()][0] = pred != 0;
    emu_warp().bar.wait();
    unsigned r = 0;
    for (unsigned i = 0; i < 32; ++i) r |= (unsigned)slot[i][0] << i;
    return r;
}
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == 0xffffffffu; }
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0u; }
template <class T>
inline unsigned __match_any_sync(unsigned mask, T v) {
    emu_full(mask);
    auto& slot = emu_slots();
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slot[emu_lane()][0] = bits;
    emu_warp().bar.wait();
    unsigned r = 0;
    for (unsigned i = 0; i < 32; ++i) r |= (unsigned)(slot[i][0] == bits) << i;
    return r;
}
inline unsigned __activemask() { return 0xffffffffu; }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline int __float_as_int(float f) { return (int)__float_as_uint(f); }
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float __int_as_float(int i) { return __uint_as_float((unsigned)i); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
using std::isfinite;
using std::isinf;
using std::isnan;
template <class T>
inline T __ldcg(const T* p) {
    return *p;
}
template <class T>
inline T __ldg(const T* p) {
    return *p;
}
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline void sincos(double x, double* s, double* c) {
    *s = std::sin(x);
    *c = std::cos(x);
}

// Atomics (shared and global alike) through the compiler's builtins.
template <class T>
inline T atomicAdd(T* p, T v) {
    if constexpr (std::is_floating_point_v<T>) {
        const T old = *p;  // fibers switch only at barriers: no other thread runs meanwhile
        *p = old + v;
        return old;
    } else {
        return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    }
}
template <class T>
inline T atomicOr(T* p, T v) {
    return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}
template <class T>
inline T atomicAnd(T* p, T v) {
    return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST);
}
template <class T>
inline T atomicExch(T* p, T v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
template <class T>
inline T atomicCAS(T* p, T cmp, T v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
template <class T>
inline T atomicMin(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
template <class T>
inline T atomicMax(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v > old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}

// cp.async of 16 bytes: done when the issuing thread waits (cp.async.wait_all), not before, so
// a kernel that reads the tile before its wait (and barrier) reads what was there.
inline void emu_cp_async(void* dst, const void* src, unsigned bytes) {
    emu_current->pending.push_back(EmuCopy{dst, src, bytes});
}
inline void emu_cp_async_wait() {
    for (const EmuCopy& c : emu_current->pending) {
        std::memset(c.dst, 0, 16);
        if (c.bytes) std::memcpy(c.dst, c.src, c.bytes);
    }
    emu_current->pending.clear();
}

// 16-bit float conversions (round to nearest even; f16 through the compiler's _Float16).
inline float emu_h2f(unsigned short h) {
    _Float16 x;
    std::memcpy(&x, &h, 2);
    return (float)x;
}
inline unsigned short emu_f2h(float f) {
    const _Float16 x = (_Float16)f;
    unsigned short h;
    std::memcpy(&h, &x, 2);
    return h;
}
inline unsigned short emu_f2bf(float f) {
    const unsigned x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x0040u);
    return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float emu_bf2f(unsigned short h) { return __uint_as_float((unsigned)h << 16); }
inline float emu_16_to_f(unsigned short h, bool bf16) { return bf16 ? emu_bf2f(h) : emu_h2f(h); }
inline unsigned emu_pack2(float lo, float hi, bool bf16) {
    const unsigned short l = bf16 ? emu_f2bf(lo) : emu_f2h(lo), h = bf16 ? emu_f2bf(hi) : emu_f2h(hi);
    return (unsigned)l | ((unsigned)h << 16);
}
// ex2.approx.ftz: 2^x, subnormal results flushed to zero.
inline float emu_exp2(float x) {
    const float y = std::exp2(x);
    return std::fpclassify(y) == FP_SUBNORMAL ? 0.0f : y;
}

// ldmatrix .m8n8 .x(n) [.trans]: lanes 8i .. 8i+7 give the rows of matrix i (8 x 16-bit each);
// lane t gets from matrix i the word of row t / 4, elements 2 (t % 4) and +1 (not transposed), or
// of column t / 4, rows 2 (t % 4) and +1 (transposed).
inline void emu_ldmatrix(unsigned* r, int n, bool trans, const void* row) {
    EmuWarp& w = emu_warp();
    const unsigned lane = emu_lane();
    const void** ptr = w.ptr[emu_current->phase++ & 1u];
    ptr[lane] = row;
    w.bar.wait();
    for (int i = 0; i < n; ++i) {
        unsigned short e[2];
        for (int k = 0; k < 2; ++k) {
            const unsigned rr = trans ? 2u * (lane % 4u) + (unsigned)k : lane / 4u;
            const unsigned cc = trans ? lane / 4u : 2u * (lane % 4u) + (unsigned)k;
            e[k] = static_cast<const unsigned short*>(ptr[8 * i + rr])[cc];
        }
        r[i] = (unsigned)e[0] | ((unsigned)e[1] << 16);
    }
}

// mma.sync m16n8k16 row.col, f32 += {f16|bf16} x {f16|bf16}: lane t (group g = t / 4, thread
// c = t % 4) holds A (16 x 16) rows g, g+8 at columns 2c, 2c+1 (a0, a1) and 8+2c, 9+2c (a2, a3),
// B (16 x 8) rows 2c, 2c+1 (b0) and 8+2c, 9+2c (b1) of column g, and C rows g (c0, c1) and g+8
// (c2, c3) at columns 2c, 2c+1.
inline void emu_mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1, bool bf16) {
    auto& slot = emu_slots();
    const unsigned lane = emu_lane();
    uint64_t* s = slot[lane];
    for (int i = 0; i < 4; ++i) s[i] = a[i];
    s[4] = b0;
    s[5] = b1;
    emu_warp().bar.wait();
    auto half = [&](unsigned word, int k) { return emu_16_to_f((unsigned short)(word >> (16 * k)), bf16); };
    auto A = [&](unsigned row, unsigned col) {
        const unsigned t = (row % 8u) * 4u + (col % 8u) / 2u;
        const int reg = (row >= 8u ? 1 : 0) + (col >= 8u ? 2 : 0);
        return half((unsigned)slot[t][reg], (int)(col % 2u));
    };
    auto B = [&](unsigned row, unsigned col) {
        const unsigned t = col * 4u + (row % 8u) / 2u;
        return half((unsigned)slot[t][row >= 8u ? 5 : 4], (int)(row % 2u));
    };
    const unsigned g = lane / 4u, cc = lane % 4u;
    float out[4];
    for (int j = 0; j < 4; ++j) {
        const unsigned row = g + (j >= 2 ? 8u : 0u), col = 2u * cc + (unsigned)(j % 2);
        double acc = 0.0;  // products of 16-bit values are exact in f64
        for (unsigned k = 0; k < 16; ++k) acc += (double)A(row, k) * (double)B(k, col);
        out[j] = (float)((double)c[j] + acc);
    }
    for (int j = 0; j < 4; ++j) c[j] = out[j];
}

// The memory a driver hands a kernel: a std::vector whose storage ends at an inaccessible page,
// so that a read or write past a buffer's end faults instead of landing in a neighbour (the
// last 15 bytes of a length that is not a multiple of 16 are not covered). Storage is 16-byte
// aligned, as cudaMalloc's is for the kernels' vector loads.
template <class T>
struct EmuGuarded {
    using value_type = T;
    EmuGuarded() = default;
    template <class U>
    EmuGuarded(const EmuGuarded<U>&) {}
    static size_t page() { return (size_t)sysconf(_SC_PAGESIZE); }
    static size_t data_bytes(size_t n) { return (n * sizeof(T) + 15) / 16 * 16; }
    static size_t total_bytes(size_t n) { return (data_bytes(n) + page() - 1) / page() * page() + page(); }
    T* allocate(size_t n) {
        const size_t total = total_bytes(n);
        void* base = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) emu_fail("mmap");
        unsigned char* guard = static_cast<unsigned char*>(base) + total - page();
        if (mprotect(guard, page(), PROT_NONE) != 0) emu_fail("mprotect");
        return reinterpret_cast<T*>(guard - data_bytes(n));
    }
    void deallocate(T* p, size_t n) {
        unsigned char* guard = reinterpret_cast<unsigned char*>(p) + data_bytes(n);
        munmap(guard + page() - total_bytes(n), total_bytes(n));
    }
    template <class U>
    bool operator==(const EmuGuarded<U>&) const {
        return true;
    }
    template <class U>
    bool operator!=(const EmuGuarded<U>&) const {
        return false;
    }
};
template <class T>
using emu_vec = std::vector<T, EmuGuarded<T>>;

// Runs `kernel()` over a grid, one CTA at a time, blockDim.x fibers each (1-D CTAs only), resumed
// round-robin; `before_cta` runs before each CTA (poisoning its dynamic shared memory, say).
inline void emu_launch(dim3 grid, unsigned threads, const std::function<void()>& kernel,
                       const std::function<void()>& before_cta = {}) {
    if (threads % 32u != 0u) emu_fail("CTA size not a multiple of 32");
    gridDim = grid;
    blockDim = dim3{threads, 1, 1};
    std::vector<EmuWarp> warps(threads / 32u);
    EmuBarrier cta;
    emu_warps = &warps;
    emu_cta = &cta;
    emu_kernel = &kernel;
    std::vector<EmuFiber> fibers(threads);
    constexpr size_t stack_bytes = 512 << 10;
    for (auto& f : fibers) f.stack.resize(stack_bytes);
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = uint3{x, y, z};
                if (before_cta) before_cta();
                for (auto& w : warps) w.bar = EmuBarrier{32};
                cta = EmuBarrier{threads};
                for (unsigned t = 0; t < threads; ++t) {
                    EmuFiber& f = fibers[t];
                    f.tid = uint3{t, 0, 0};
                    f.phase = 0;
                    f.done = false;
                    f.pending.clear();
                    // Top of stack: a zero return address (16-aligned + 8 on entry, as after a
                    // call), emu_fiber_main for emu_swap's ret, six zeroed callee-saved registers.
                    auto* top = reinterpret_cast<uintptr_t*>(
                        (reinterpret_cast<uintptr_t>(f.stack.data() + stack_bytes)) & ~uintptr_t(15));
                    top[-1] = 0;
                    top[-2] = reinterpret_cast<uintptr_t>(&emu_fiber_main);
                    for (int r = 3; r <= 8; ++r) top[-r] = 0;
                    f.sp = top - 8;
                }
                unsigned live = threads;
                while (live > 0) {
                    const unsigned long long before = emu_progress;
                    unsigned finished = 0;
                    for (auto& f : fibers) {
                        if (f.done) continue;
                        emu_current = &f;
                        emu_swap(&emu_scheduler_sp, f.sp);
                        if (f.done) ++finished;
                    }
                    emu_current = nullptr;
                    live -= finished;
                    // A whole round in which no fiber arrived at, left or finished anything: the
                    // barriers they wait at can never complete.
                    if (live > 0 && finished == 0 && emu_progress == before)
                        emu_fail("deadlock: threads wait at a barrier the others never reach");
                }
            }
    emu_warps = nullptr;
    emu_cta = nullptr;
}
