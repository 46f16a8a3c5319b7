// cuda/emu/prefill_check.cpp: the tensor-core prefill kernels of one attention module (f16 or
// bf16, D 64 or 128) run under the host emulation (emu.h) on fresh random inputs, against a
// float64 reference of the same op: dense causal prefill on attention_prefill_mma (64 rows a CTA)
// and attention_prefill_mma_wide (128), causal with and without an offset and not causal; MoBA's
// query-major attention_blocks_mma over random per-row block selections, and its key-block-major
// attention_buckets_mma over random buckets. Outputs are poisoned
// (NaN) before each launch, so an unwritten element fails. Built and run by cuda/emu/run.sh.
#include EMU_MODULE

#include <random>
#include <string>

namespace {

struct Case {
    unsigned hq, hkv, tq, tk;
    bool causal;
    unsigned n_idx = 0;  // > 0: MoBA, that many selected blocks a row (block 64 or 128)
    unsigned block = 64;
};

float to_f(store_t x) { return emu_16_to_f(x, EMU_BF16); }
store_t from_f(float x) { return EMU_BF16 ? emu_f2bf(x) : emu_f2h(x); }

// Reference: out[h, t] = softmax over the keys row t sees (causal bottom-right, and for MoBA only
// the blocks the row selected) of scale * q . k, times v; lse natural; no key: 0 and -inf.
void reference(const Case& c, const emu_vec<store_t>& q, const emu_vec<store_t>& k,
               const emu_vec<store_t>& v, const emu_vec<int>& sel, float scale, std::vector<double>& out,
               std::vector<double>& lse) {
    const unsigned d = PF_D, group = c.hq / c.hkv;
    out.assign((size_t)c.hq * c.tq * d, 0.0);
    lse.assign((size_t)c.hq * c.tq, -INFINITY);
    const long long off = (long long)c.tk - (long long)c.tq;
    std::vector<double> s(c.tk);
    for (unsigned h = 0; h < c.hq; ++h) {
        const unsigned kh = h / group;
        for (unsigned t = 0; t < c.tq; ++t) {
            long long lim = c.causal ? off + t + 1 : c.tk;
            lim = lim < 0 ? 0 : (lim > c.tk ? c.tk : lim);
            std::vector<char> take(c.tk, 0);
            for (long long j = 0; j < lim; ++j) take[j] = 1;
            if (c.n_idx > 0) {
                std::vector<char> chosen((c.tk + c.block - 1) / c.block, 0);
                for (unsigned i = 0; i < c.n_idx; ++i) {
                    const int b = sel[((size_t)h * c.tq + t) * c.n_idx + i];
                    if (b >= 0 && (size_t)b < chosen.size()) chosen[b] = 1;
                }
                for (unsigned j = 0; j < c.tk; ++j) take[j] = take[j] && chosen[j / c.block];
            }
            double mx = -INFINITY;
            for (unsigned j = 0; j < c.tk; ++j) {
                if (!take[j]) continue;
                double acc = 0.0;
                for (unsigned e = 0; e < d; ++e)
                    acc += (double)to_f(q[((size_t)h * c.tq + t) * d + e]) * to_f(k[((size_t)kh * c.tk + j) * d + e]);
                s[j] = acc * scale;
                mx = std::max(mx, s[j]);
            }
            if (mx == -INFINITY) continue;
            double l = 0.0;
            for (unsigned j = 0; j < c.tk; ++j)
                if (take[j]) l += std::exp(s[j] - mx);
            for (unsigned j = 0; j < c.tk; ++j) {
                if (!take[j]) continue;
                const double p = std::exp(s[j] - mx) / l;
                for (unsigned e = 0; e < d; ++e)
                    out[((size_t)h * c.tq + t) * d + e] += p * to_f(v[((size_t)kh * c.tk + j) * d + e]);
            }
            lse[(size_t)h * c.tq + t] = mx + std::log(l);
        }
    }
}

// One case on one kernel; returns the number of elements outside tolerance.
int run_case(const Case& c, const char* kernel, std::mt19937& rng) {
    const unsigned d = PF_D;
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto fill = [&](size_t n) {
        emu_vec<store_t> x(n);
        for (auto& e : x) e = from_f(normal(rng));
        return x;
    };
    const auto q = fill((size_t)c.hq * c.tq * d), k = fill((size_t)c.hkv * c.tk * d), v = fill((size_t)c.hkv * c.tk * d);
    emu_vec<int> sel;
    const unsigned nb = (c.tk + c.block - 1) / c.block;
    if (c.n_idx > 0) {
        // As MoBA routes: the row's own block first; then the block before it for one 32-row
        // half of each 64-row tile (the first half in even tiles, the second in odd ones), so
        // that a tile's row set of a block can be full in one half only, as the union kernel's
        // unmasked-tile test must see; then block 0; the rest at random, -1 (padding) and nb
        // (out of range) among them.
        std::uniform_int_distribution<int> pick(-1, (int)nb);
        sel.resize((size_t)c.hq * c.tq * c.n_idx);
        for (size_t r = 0; r < (size_t)c.hq * c.tq; ++r) {
            const unsigned t = (unsigned)(r % c.tq), own = t / c.block;
            const bool first_half = t % 64u < 32u, even_tile = (t / 64u) % 2u == 0u;
            for (unsigned i = 0; i < c.n_idx; ++i) {
                int b = pick(rng);
                if (i == 0) b = (int)own;
                if (i == 1 && first_half == even_tile) b = own > 0 ? (int)own - 1 : 0;
                if (i == 2) b = 0;
                sel[r * c.n_idx + i] = b;
            }
        }
    }
    const float scale = 1.0f / std::sqrt((float)d);
    emu_vec<store_t> out((size_t)c.hq * c.tq * d, (store_t)0xffffu);  // NaN in f16 and bf16
    emu_vec<float> lse((size_t)c.hq * c.tq, NAN);
    AttentionParams p{};
    p.q_heads = c.hq;
    p.kv_heads = c.hkv;
    p.q_len = c.tq;
    p.kv_len = c.tk;
    p.dim = d;
    p.causal = c.causal ? 1u : 0u;
    p.scale = scale;
    p.idx_heads = c.hq;
    p.n_idx = c.n_idx;
    p.block_size = c.block;
    p.splits = 1;
    const std::string name = kernel;
    const unsigned rows = name == "attention_prefill_mma_wide" ? 2 * PF_BM : PF_BM;
    const dim3 grid{(c.tq + rows - 1) / rows, c.hq, 1};
    // Dynamic shared memory is poisoned before every CTA, as a GPU's holds stale data.
    auto poison = [] { std::memset(emu_dynamic_smem, 0xff, sizeof(emu_dynamic_smem)); };
    if (name == "attention_prefill_mma")
        emu_launch(grid, PF_THREADS, [&] { attention_prefill_mma(p, q.data(), k.data(), v.data(), out.data(), lse.data()); }, poison);
    else if (name == "attention_prefill_mma_wide")
        emu_launch(grid, PF_THREADS,
                   [&] { attention_prefill_mma_wide(p, q.data(), k.data(), v.data(), out.data(), lse.data()); }, poison);
    else
        emu_launch(grid, PF_THREADS,
                   [&] { attention_blocks_mma(p, q.data(), k.data(), v.data(), sel.data(), out.data(), lse.data()); },
                   poison);
    std::vector<double> ro, rl;
    reference(c, q, k, v, sel, scale, ro, rl);
    // Tolerances: P is rounded to the storage type before P V and the output is stored in it
    // (relative 2^-9 for bf16, 2^-12 for f16, a few of them summed); lse is f32 throughout.
    const double tol_o = EMU_BF16 ? 1.6e-2 : 4e-3, tol_l = 2e-3;
    int bad = 0;
    for (size_t i = 0; i < out.size(); ++i) {
        const double got = to_f(out[i]);
        if (!(std::fabs(got - ro[i]) <= tol_o * (1.0 + std::fabs(ro[i])))) {
            if (bad < 5)
                std::printf("    out[h %zu, t %zu, e %zu] = %g, reference %g\n", i / d / c.tq, i / d % c.tq, i % d, got,
                            ro[i]);
            ++bad;
        }
    }
    for (size_t i = 0; i < lse.size(); ++i) {
        const bool both_inf = std::isinf(lse[i]) && std::isinf(rl[i]) && lse[i] < 0 && rl[i] < 0;
        if (!both_inf && !(std::fabs(lse[i] - rl[i]) <= tol_l * (1.0 + std::fabs(rl[i])))) {
            if (bad < 5) std::printf("    lse[h %zu, t %zu] = %g, reference %g\n", i / c.tq, i % c.tq, lse[i], rl[i]);
            ++bad;
        }
    }
    return bad;
}

// MoBA's key-block-major pass (attention_buckets_mma): each (query head, block) bucket holds the
// tokens that chose the block; every (token, block) pair gets its normalised output over the
// block's keys the token sees (causal) and its lse. Buckets of up to 3 tiles, empty buckets, and
// CTAs past the last tile (they must return).
int run_buckets(unsigned hq, unsigned hkv, unsigned t_len, unsigned bs, std::mt19937& rng) {
    const unsigned d = PF_D, nb = (t_len + bs - 1) / bs;
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto fill = [&](size_t n) {
        emu_vec<store_t> x(n);
        for (auto& e : x) e = from_f(normal(rng));
        return x;
    };
    const auto q = fill((size_t)hq * t_len * d), k = fill((size_t)hkv * t_len * d), v = fill((size_t)hkv * t_len * d);
    std::vector<std::vector<unsigned>> bucket(hq * nb);
    std::uniform_int_distribution<unsigned> coin(0, 2);
    for (unsigned h = 0; h < hq; ++h)
        for (unsigned t = 0; t < t_len; ++t)
            for (unsigned b = 0; b <= t / bs; ++b)
                if (b == t / bs || coin(rng) == 0u) bucket[h * nb + b].push_back(t);
    const unsigned n = hq * nb;
    emu_vec<unsigned> entries, start(n + 1), tile_start(n + 1), tile_of;
    std::vector<unsigned> pair_h, pair_b;
    for (unsigned b = 0; b < n; ++b) {
        start[b] = (unsigned)entries.size();
        tile_start[b] = (unsigned)tile_of.size();
        for (unsigned t : bucket[b]) {
            entries.push_back(t);
            pair_h.push_back(b / nb);
            pair_b.push_back(b % nb);
        }
        for (unsigned i = 0; i < (bucket[b].size() + PF_BM - 1) / PF_BM; ++i) tile_of.push_back(b);
    }
    start[n] = (unsigned)entries.size();
    tile_start[n] = (unsigned)tile_of.size();
    const size_t pairs = entries.size();
    emu_vec<store_t> part_o(pairs * d, (store_t)0xffffu);
    emu_vec<float> part_lse(pairs, NAN);
    AttentionParams p{};
    p.q_heads = hq;
    p.kv_heads = hkv;
    p.q_len = t_len;
    p.kv_len = t_len;
    p.dim = d;
    p.causal = 1u;
    p.scale = 1.0f / std::sqrt((float)d);
    p.idx_heads = hq;
    p.block_size = bs;
    p.splits = 1;
    auto poison = [] { std::memset(emu_dynamic_smem, 0xff, sizeof(emu_dynamic_smem)); };
    emu_launch(dim3{tile_start[n] + 3u, 1, 1}, PF_THREADS,
               [&] {
                   attention_buckets_mma(p, q.data(), k.data(), v.data(), entries.data(), start.data(), tile_start.data(),
                                         tile_of.data(), part_o.data(), part_lse.data(), nb, 0u, n);
               },
               poison);
    const double tol_o = EMU_BF16 ? 1.6e-2 : 4e-3, tol_l = 2e-3;
    int bad = 0;
    std::vector<double> s(bs);
    for (size_t i = 0; i < pairs; ++i) {
        const unsigned h = pair_h[i], t = entries[i], kh = h / (hq / hkv), j0 = pair_b[i] * bs;
        const unsigned j1 = std::min(std::min(j0 + bs, t_len), t + 1);
        double mx = -INFINITY;
        for (unsigned j = j0; j < j1; ++j) {
            double acc = 0.0;
            for (unsigned e = 0; e < d; ++e)
                acc += (double)to_f(q[((size_t)h * t_len + t) * d + e]) * to_f(k[((size_t)kh * t_len + j) * d + e]);
            s[j - j0] = acc * p.scale;
            mx = std::max(mx, s[j - j0]);
        }
        double l = 0.0;
        for (unsigned j = j0; j < j1; ++j) l += std::exp(s[j - j0] - mx);
        const double ref_lse = mx + std::log(l);
        if (!(std::fabs(part_lse[i] - ref_lse) <= tol_l * (1.0 + std::fabs(ref_lse)))) {
            if (bad < 5) std::printf("    pair %zu (h %u, t %u, block %u): lse %g, reference %g\n", i, h, t, pair_b[i], part_lse[i], ref_lse);
            ++bad;
        }
        for (unsigned e = 0; e < d; ++e) {
            double ref = 0.0;
            for (unsigned j = j0; j < j1; ++j) ref += std::exp(s[j - j0] - mx) / l * to_f(v[((size_t)kh * t_len + j) * d + e]);
            const double got = to_f(part_o[i * d + e]);
            if (!(std::fabs(got - ref) <= tol_o * (1.0 + std::fabs(ref)))) {
                if (bad < 5) std::printf("    pair %zu (h %u, t %u, block %u) e %u: %g, reference %g\n", i, h, t, pair_b[i], e, got, ref);
                ++bad;
            }
        }
    }
    return bad;
}

}  // namespace

int main(int argc, char** argv) {
    const unsigned seed = argc > 1 ? (unsigned)std::stoul(argv[1]) : 1u;
    std::mt19937 rng(seed);
    // (hq, hkv, tq, tk, causal): several query tiles of either size, a causal offset, rows past the
    // last tile's end, tq = 1, not causal, GQA groups 1 / 2 / 4.
    const Case dense[] = {
        {2, 1, 300, 300, true}, {2, 2, 200, 333, true}, {1, 1, 129, 129, true}, {4, 1, 70, 200, false},
        {2, 1, 1, 90, true},    {1, 1, 257, 190, false}, {2, 2, 64, 64, true},
        {1, 1, 130, 192, true},  // offset 62: the first visible key of a tile's first row ends a tile
    };
    // Plus random shapes from the seed (offsets and tile cuts the list above does not reach).
    std::vector<Case> cases(std::begin(dense), std::end(dense));
    std::uniform_int_distribution<unsigned> len(1, 400), extra(0, 200), heads(0, 2), coin(0, 1);
    for (int i = 0; i < 3; ++i) {
        const unsigned g = heads(rng), tq = len(rng), tk = tq + extra(rng);
        cases.push_back({g == 2 ? 4u : g + 1u, g == 2 ? 2u : 1u, tq, tk, coin(rng) == 1u});
    }
    int failed = 0, ran = 0;
    for (const char* kernel : {"attention_prefill_mma", "attention_prefill_mma_wide"}) {
        for (const Case& c : cases) {
            const int bad = run_case(c, kernel, rng);
            std::printf("%s %s D%d hq %u hkv %u tq %u tk %u causal %d: %s\n", kernel, EMU_BF16 ? "bf16" : "f16", PF_D,
                        c.hq, c.hkv, c.tq, c.tk, (int)c.causal, bad ? "FAIL" : "ok");
            failed += bad != 0;
            ++ran;
        }
    }
    // MoBA over the union of a tile's rows' blocks: causal, q_len = kv_len, block 64 or 128.
    const Case moba[] = {{2, 1, 300, 300, true, 3, 64}, {2, 2, 260, 260, true, 2, 128}, {1, 1, 70, 70, true, 1, 64}};
    for (const Case& c : moba) {
        const int bad = run_case(c, "attention_blocks_mma", rng);
        std::printf("attention_blocks_mma %s D%d hq %u tq %u blocks %u of %u: %s\n", EMU_BF16 ? "bf16" : "f16", PF_D, c.hq,
                    c.tq, c.n_idx, c.block, bad ? "FAIL" : "ok");
        failed += bad != 0;
        ++ran;
    }
    // (hq, hkv, T, block): block 64 and 128; GQA.
    const unsigned buckets[][4] = {{2, 1, 300, 64}, {2, 2, 270, 128}};
    for (const auto& c : buckets) {
        const int bad = run_buckets(c[0], c[1], c[2], c[3], rng);
        std::printf("attention_buckets_mma %s D%d hq %u T %u block %u: %s\n", EMU_BF16 ? "bf16" : "f16", PF_D, c[0], c[2],
                    c[3], bad ? "FAIL" : "ok");
        failed += bad != 0;
        ++ran;
    }
    std::printf("%d of %d cases passed\n", ran - failed, ran);
    return failed ? 1 : 0;
}
