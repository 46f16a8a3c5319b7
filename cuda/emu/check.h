// cuda/emu/check.h: what the emulation drivers (prefill_check.cpp, decode_check.cpp,
// dense_check.cpp) share, included after the module: the module's storage type, random inputs,
// the float64 reference of one attention row over a key list, and the tolerances.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace emu_check {

// The module's storage type: f32, or f16 / bf16 bits.
constexpr bool F32 = std::is_same_v<store_t, float>;
inline float to_f(store_t x) {
    if constexpr (F32) return x;
    else return emu_16_to_f(x, EMU_BF16);
}
inline store_t from_f(float x) {
    if constexpr (F32) return x;
    else return EMU_BF16 ? emu_f2bf(x) : emu_f2h(x);
}
// What outputs hold before a launch: NaN, so that an element left unwritten fails.
inline store_t poison() {
    if constexpr (F32) return NAN;
    else return (store_t)0xffffu;  // NaN in f16 and bf16
}
inline const char* dtype_name() { return F32 ? "f32" : (EMU_BF16 ? "bf16" : "f16"); }

// n standard-normal values in the storage type.
inline emu_vec<store_t> normal_values(size_t n, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    emu_vec<store_t> x(n);
    for (auto& e : x) e = from_f(normal(rng));
    return x;
}

// The float64 attention of query row `q` (d elements) over rows `keys` of one head's k / v (row
// stride d): out[e] for e < d, and the natural lse; no key gives 0 and -inf.
inline void attend_ref(const store_t* q, const store_t* k, const store_t* v, unsigned d,
                       const std::vector<unsigned>& keys, double scale, std::vector<double>& out, double& lse) {
    out.assign(d, 0.0);
    lse = -INFINITY;
    if (keys.empty()) return;
    std::vector<double> s(keys.size());
    double mx = -INFINITY;
    for (size_t i = 0; i < keys.size(); ++i) {
        double acc = 0.0;
        for (unsigned e = 0; e < d; ++e) acc += (double)to_f(q[e]) * to_f(k[(size_t)keys[i] * d + e]);
        s[i] = acc * scale;
        mx = std::max(mx, s[i]);
    }
    double l = 0.0;
    for (double x : s) l += std::exp(x - mx);
    for (size_t i = 0; i < keys.size(); ++i) {
        const double w = std::exp(s[i] - mx) / l;
        for (unsigned e = 0; e < d; ++e) out[e] += w * to_f(v[(size_t)keys[i] * d + e]);
    }
    lse = mx + std::log(l);
}

// Tolerances, relative to 1 + |reference|: the tensor-core kernels round P to the storage type
// before P V (relative 2^-9 for bf16, 2^-12 for f16, a few of them summed) and every kernel
// rounds its output to it; lse is f32 throughout.
struct Tol {
    double out, lse;
};
inline Tol tolerances() { return F32 ? Tol{1e-4, 1e-4} : (EMU_BF16 ? Tol{1.6e-2, 2e-3} : Tol{4e-3, 2e-3}); }
inline bool close(double got, double ref, double tol) { return std::fabs(got - ref) <= tol * (1.0 + std::fabs(ref)); }
inline bool lse_close(double got, double ref, double tol) {
    if (std::isinf(ref) && ref < 0) return std::isinf(got) && got < 0;
    return close(got, ref, tol);
}

// Compares one row's out / lse with the reference; prints the first few misses (`where` names
// the row) and returns how many elements missed.
inline int check_row(const store_t* out, float lse, const std::vector<double>& ref, double ref_lse, unsigned d,
                     const std::string& where, int& printed) {
    const Tol tol = tolerances();
    int bad = 0;
    if (!lse_close(lse, ref_lse, tol.lse)) {
        if (printed++ < 5) std::printf("    %s: lse %g, reference %g\n", where.c_str(), lse, ref_lse);
        ++bad;
    }
    for (unsigned e = 0; e < d; ++e) {
        if (!close(to_f(out[e]), ref[e], tol.out)) {
            if (printed++ < 5) std::printf("    %s e %u: %g, reference %g\n", where.c_str(), e, to_f(out[e]), ref[e]);
            ++bad;
        }
    }
    return bad;
}

}  // namespace emu_check
