// cuda/emu/prefill_check.cpp: the tensor-core prefill kernels of one attention module (f16 or
// bf16, D 64 or 128) run under the host emulation (emu.h) on fresh random inputs, against a
// float64 reference of the same op: dense causal prefill on attention_prefill_mma (64 rows a CTA)
// and attention_prefill_mma_wide (128), causal with and without an offset and not causal; MoBA's
// query-major attention_blocks_mma over random per-row block selections, and its key-block-major
// attention_buckets_mma over random buckets. Outputs are poisoned (NaN) before each launch, so
// an unwritten element fails. Built and run by cuda/emu/run.sh.
#include EMU_MODULE

#include "check.h"

using namespace emu_check;

namespace {

struct Case {
    unsigned hq, hkv, tq, tk;
    bool causal;
    unsigned n_idx = 0;  // > 0: MoBA, that many selected blocks a row (block 64 or 128)
    unsigned block = 64;
};

// The keys row t of head h sees: causal bottom-right, and for MoBA only the blocks it selected
// (entries outside 0..NB-1 ignored).
std::vector<unsigned> keys_of(const Case& c, const emu_vec<int>& sel, unsigned h, unsigned t) {
    long long lim = c.causal ? (long long)c.tk - (long long)c.tq + t + 1 : c.tk;
    lim = std::clamp(lim, 0LL, (long long)c.tk);
    std::vector<char> chosen((c.tk + c.block - 1) / c.block, c.n_idx == 0);
    for (unsigned i = 0; i < c.n_idx; ++i) {
        const int b = sel[((size_t)h * c.tq + t) * c.n_idx + i];
        if (b >= 0 && (size_t)b < chosen.size()) chosen[b] = 1;
    }
    std::vector<unsigned> keys;
    for (unsigned j = 0; j < (unsigned)lim; ++j)
        if (chosen[j / c.block]) keys.push_back(j);
    return keys;
}

// One case on one kernel; returns the number of elements outside tolerance.
int run_case(const Case& c, const char* kernel, std::mt19937& rng) {
    const unsigned d = PF_D;
    const auto q = normal_values((size_t)c.hq * c.tq * d, rng);
    const auto k = normal_values((size_t)c.hkv * c.tk * d, rng), v = normal_values((size_t)c.hkv * c.tk * d, rng);
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
    emu_vec<store_t> out((size_t)c.hq * c.tq * d, poison());
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
    int bad = 0, printed = 0;
    std::vector<double> ref;
    double ref_lse;
    for (unsigned h = 0; h < c.hq; ++h)
        for (unsigned t = 0; t < c.tq; ++t) {
            const size_t row = (size_t)h * c.tq + t, kv = (size_t)(h / (c.hq / c.hkv)) * c.tk * d;
            attend_ref(&q[row * d], &k[kv], &v[kv], d, keys_of(c, sel, h, t), scale, ref, ref_lse);
            bad += check_row(&out[row * d], lse[row], ref, ref_lse, d,
                             "h " + std::to_string(h) + ", t " + std::to_string(t), printed);
        }
    return bad;
}

// MoBA's key-block-major pass (attention_buckets_mma): each (query head, block) bucket holds the
// tokens that chose the block; every (token, block) pair gets its normalised output over the
// block's keys the token sees (causal) and its lse. Buckets of up to 3 tiles, empty buckets, and
// CTAs past the last tile (they must return).
int run_buckets(unsigned hq, unsigned hkv, unsigned t_len, unsigned bs, std::mt19937& rng) {
    const unsigned d = PF_D, nb = (t_len + bs - 1) / bs;
    const auto q = normal_values((size_t)hq * t_len * d, rng);
    const auto k = normal_values((size_t)hkv * t_len * d, rng), v = normal_values((size_t)hkv * t_len * d, rng);
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
    emu_vec<store_t> part_o(pairs * d, poison());
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
    int bad = 0, printed = 0;
    std::vector<double> ref;
    double ref_lse;
    for (size_t i = 0; i < pairs; ++i) {
        // The pair's keys: its block's, up to the token itself.
        const unsigned h = pair_h[i], t = entries[i], j0 = pair_b[i] * bs;
        const unsigned j1 = std::min(std::min(j0 + bs, t_len), t + 1);
        std::vector<unsigned> keys;
        for (unsigned j = j0; j < j1; ++j) keys.push_back(j);
        const size_t kv = (size_t)(h / (hq / hkv)) * t_len * d;
        attend_ref(&q[((size_t)h * t_len + t) * d], &k[kv], &v[kv], d, keys, p.scale, ref, ref_lse);
        bad += check_row(&part_o[i * d], part_lse[i], ref, ref_lse, d,
                         "pair " + std::to_string(i) + " (h " + std::to_string(h) + ", t " + std::to_string(t) + ")",
                         printed);
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
