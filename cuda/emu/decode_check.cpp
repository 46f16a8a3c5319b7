// cuda/emu/decode_check.cpp: the grouped decode of one attention module (one query per head, up
// to 8 query heads of a kv head a CTA: attention_decode_g* on CUDA cores, and where the module
// has it the tensor-core attention_decode_mma) with the split-K merge (attention_merge_rows), run
// under the host emulation (emu.h) on fresh random inputs, against a float64 reference: dense
// keys (mode 0), index rows of tokens or blocks per kv head or per query head (mode 1), a kv
// head's union of blocks with per-head masks and a live count (mode 2), one split or several,
// and a batch with per-sequence live lengths. Outputs and partials are poisoned (NaN) before
// each launch. Built and run by cuda/emu/run.sh.
#include EMU_MODULE

#include "check.h"

using namespace emu_check;

namespace {

#if (KVS_DPL == 2 || KVS_DPL == 4) && !defined(KVS_STORE_F32)
constexpr bool HAVE_MMA = true;  // attention_decode_mma is in this module
#else
constexpr bool HAVE_MMA = false;
#endif

struct Case {
    const char* what;
    unsigned batch, hq, hkv, t, mode, idx_heads, n_idx, bs, splits;
    bool lens;  // per-sequence live lengths (some shorter than t, one 0 when batch > 2)
};

// `mma`: attention_decode_mma, else the attention_decode_g* entry for the head chunk.
int run_case(const Case& c, bool mma, std::mt19937& rng) {
    const unsigned d = 32 * KVS_DPL, group = c.hq / c.hkv;
    const unsigned bs = std::max(c.bs, 1u), nb = (c.t + bs - 1) / bs;
    const auto q = normal_values((size_t)c.batch * c.hq * d, rng);
    const auto k = normal_values((size_t)c.batch * c.hkv * c.t * d, rng);
    const auto v = normal_values((size_t)c.batch * c.hkv * c.t * d, rng);
    emu_vec<int> lens(c.batch, (int)c.t);
    if (c.lens)
        for (unsigned z = 0; z < c.batch; ++z) lens[z] = z == 2 ? 0 : (int)(c.t - (z * 97u) % c.t);
    // Index rows: distinct entries (tokens or blocks) in random order, some padding (-1) and one
    // out of range; mode 2 also a head mask per entry and a live count per kv head.
    emu_vec<int> idx((size_t)c.batch * std::max(c.idx_heads, 1u) * std::max(c.n_idx, 1u), -1);
    emu_vec<unsigned> hmask((size_t)c.batch * c.hkv * std::max(c.n_idx, 1u), 0u), counts((size_t)c.batch * c.hkv, 0u);
    if (c.mode != 0) {
        std::vector<int> all(nb);
        for (unsigned i = 0; i < nb; ++i) all[i] = (int)i;
        for (size_t r = 0; r < (size_t)c.batch * c.idx_heads; ++r) {
            std::shuffle(all.begin(), all.end(), rng);
            for (unsigned i = 0; i < c.n_idx; ++i) {
                const unsigned u = rng() % 10u;
                idx[r * c.n_idx + i] = u == 0 ? -1 : (u == 1 ? (int)nb + 3 : all[i % nb]);
            }
        }
        for (size_t r = 0; r < (size_t)c.batch * c.hkv; ++r) {
            counts[r] = c.n_idx - (unsigned)(r % 3);
            for (unsigned i = 0; i < c.n_idx; ++i) hmask[r * c.n_idx + i] = rng() & ((1u << group) - 1u);
        }
    }
    AttentionParams p{};
    p.q_heads = c.hq;
    p.kv_heads = c.hkv;
    p.q_len = 1;
    p.kv_len = c.t;
    p.dim = d;
    p.causal = 0;
    p.scale = 1.0f / std::sqrt((float)d);
    p.idx_heads = c.idx_heads;
    p.n_idx = c.n_idx;
    p.block_size = c.bs;
    p.splits = c.splits;
    // The host's head chunk (ops.rs decode_chunk): for shared keys the largest divisor of the
    // group up to 8, else one head a CTA.
    const bool shared = c.mode != 1 || c.idx_heads != c.hq || group == 1;
    unsigned hpc = 1;
    for (unsigned h = std::min(group, 8u); shared && h > 1; --h)
        if (group % h == 0) {
            hpc = h;
            break;
        }
    const size_t rows = (size_t)c.batch * c.hq;
    emu_vec<store_t> out(rows * d, poison());
    emu_vec<float> lse(rows, NAN), part_out(rows * c.splits * d, NAN), part_lse(rows * c.splits, NAN);
    const dim3 grid{c.splits, c.hq / hpc, c.batch};
    const int* lens_ptr = c.lens ? lens.data() : nullptr;
    auto decode = [&](auto entry) {
        emu_launch(grid, 32 * DEC_WARPS, [&] {
            entry(p, q.data(), k.data(), v.data(), idx.data(), hmask.data(), counts.data(), out.data(), lse.data(),
                  part_out.data(), part_lse.data(), c.mode, hpc, lens_ptr);
        });
    };
    if (mma) {
#if (KVS_DPL == 2 || KVS_DPL == 4) && !defined(KVS_STORE_F32)
        decode(attention_decode_mma);
#endif
    } else if (hpc == 1) {
        decode(attention_decode_g1);
    } else if (hpc == 2) {
        decode(attention_decode_g2);
    } else if (hpc <= 4) {
        decode(attention_decode_g4);
    } else {
        decode(attention_decode_g8);
    }
    if (c.splits > 1)
        emu_launch(dim3{(unsigned)rows, 1, 1}, KVS_MERGE_THREADS,
                   [&] { attention_merge_rows(p, part_out.data(), part_lse.data(), out.data(), lse.data()); });
    // Reference: the keys of head h, as decode_token picks them.
    int bad = 0, printed = 0;
    std::vector<double> ref;
    double ref_lse;
    for (unsigned z = 0; z < c.batch; ++z)
        for (unsigned h = 0; h < c.hq; ++h) {
            const unsigned kvh = h / group, live = (unsigned)std::clamp(lens[z], 0, (int)c.t);
            std::vector<unsigned> keys;
            if (c.mode == 0) {
                for (unsigned j = 0; j < live; ++j) keys.push_back(j);
            } else {
                const unsigned row = c.mode == 2 || c.idx_heads != c.hq ? kvh : h;
                const unsigned n_live = c.mode == 2 ? std::min(counts[z * c.hkv + kvh], c.n_idx) : c.n_idx;
                for (unsigned e = 0; e < n_live; ++e) {
                    const int b = idx[((size_t)z * c.idx_heads + row) * c.n_idx + e];
                    if (b < 0 || (unsigned)b >= (live + bs - 1) / bs) continue;
                    if (c.mode == 2 && !((hmask[((size_t)z * c.hkv + kvh) * c.n_idx + e] >> (h - kvh * group)) & 1u))
                        continue;
                    for (unsigned j = (unsigned)b * bs; j < (unsigned)b * bs + bs && j < live; ++j) keys.push_back(j);
                }
            }
            const size_t qrow = (size_t)z * c.hq + h, kv = ((size_t)z * c.hkv + kvh) * c.t * d;
            attend_ref(&q[qrow * d], &k[kv], &v[kv], d, keys, p.scale, ref, ref_lse);
            bad += check_row(&out[qrow * d], lse[qrow], ref, ref_lse, d,
                             "z " + std::to_string(z) + ", h " + std::to_string(h), printed);
        }
    return bad;
}

}  // namespace

int main(int argc, char** argv) {
    std::mt19937 rng(argc > 1 ? (unsigned)std::stoul(argv[1]) : 1u);
    const Case cases[] = {
        {"dense, one split", 1, 8, 2, 300, 0, 8, 0, 0, 1, false},
        {"dense, 5 splits", 1, 8, 2, 1000, 0, 8, 0, 0, 5, false},
        {"dense, group 8, 3 splits", 1, 8, 1, 777, 0, 8, 0, 0, 3, false},
        {"dense, batch 3 with lens (one 0)", 3, 4, 2, 500, 0, 4, 0, 0, 4, true},
        {"tokens per kv head, 3 splits", 1, 8, 2, 900, 1, 2, 300, 1, 3, false},
        {"tokens per query head", 1, 4, 2, 600, 1, 4, 200, 1, 2, false},
        {"blocks per kv head", 1, 8, 2, 1000, 1, 2, 7, 64, 4, false},
        {"union with head masks", 1, 8, 2, 1100, 2, 2, 9, 64, 3, false},
        {"union, batch 2 with lens", 2, 16, 2, 700, 2, 2, 6, 64, 2, true},
    };
    int failed = 0, ran = 0;
    for (bool mma : {false, true}) {
        if (mma && !HAVE_MMA) continue;
        for (const Case& c : cases) {
            const int bad = run_case(c, mma, rng);
            std::printf("%s %s D%d %s: %s\n", mma ? "attention_decode_mma" : "attention_decode_g*", dtype_name(),
                        32 * KVS_DPL, c.what, bad ? "FAIL" : "ok");
            failed += bad != 0;
            ++ran;
        }
    }
    std::printf("%d of %d cases passed\n", ran - failed, ran);
    return failed ? 1 : 0;
}
