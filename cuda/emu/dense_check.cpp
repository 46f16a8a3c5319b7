// cuda/emu/dense_check.cpp: attention_dense, the CUDA-core attention of any query count (one
// warp a query row, split-K over the keys along grid y, merged by attention_merge), of one module
// under the host emulation (emu.h), against the float64 reference: causal with and without an
// offset and not causal, head dims below the module's 32 * KVS_DPL, GQA, one split or several.
// This is the path of f32 prefill (the golden cases' dtype) and of heads the tensor-core kernels
// do not take. Built and run by cuda/emu/run.sh.
#include EMU_MODULE

#include "check.h"

using namespace emu_check;

namespace {

struct Case {
    unsigned hq, hkv, tq, tk, d, splits;
    bool causal;
};

int run_case(const Case& c, std::mt19937& rng) {
    const unsigned group = c.hq / c.hkv, rows = c.hq * c.tq;
    const auto q = normal_values((size_t)rows * c.d, rng);
    const auto k = normal_values((size_t)c.hkv * c.tk * c.d, rng), v = normal_values((size_t)c.hkv * c.tk * c.d, rng);
    AttentionParams p{};
    p.q_heads = c.hq;
    p.kv_heads = c.hkv;
    p.q_len = c.tq;
    p.kv_len = c.tk;
    p.dim = c.d;
    p.causal = c.causal ? 1u : 0u;
    p.scale = 1.0f / std::sqrt((float)c.d);
    p.splits = c.splits;
    emu_vec<store_t> out((size_t)rows * c.d, poison());
    emu_vec<float> lse(rows, NAN), part_out((size_t)rows * c.splits * c.d, NAN), part_lse((size_t)rows * c.splits, NAN);
    // ops.rs: warp_rows(rows, splits), 4 warps a CTA; then attention_merge over warp_rows(rows, 1).
    const unsigned ctas = (rows + 3) / 4;
    emu_launch(dim3{ctas, c.splits, 1}, 128, [&] {
        attention_dense(p, q.data(), k.data(), v.data(), out.data(), lse.data(), part_out.data(), part_lse.data());
    });
    if (c.splits > 1)
        emu_launch(dim3{ctas, 1, 1}, 128,
                   [&] { attention_merge(p, part_out.data(), part_lse.data(), out.data(), lse.data()); });
    int bad = 0, printed = 0;
    std::vector<double> ref;
    double ref_lse;
    const long long off = (long long)c.tk - (long long)c.tq;
    for (unsigned h = 0; h < c.hq; ++h)
        for (unsigned t = 0; t < c.tq; ++t) {
            long long lim = c.causal ? off + t + 1 : c.tk;
            lim = std::clamp(lim, 0LL, (long long)c.tk);
            std::vector<unsigned> keys((size_t)lim);
            for (unsigned j = 0; j < keys.size(); ++j) keys[j] = j;
            const size_t row = (size_t)h * c.tq + t, kv = (size_t)(h / group) * c.tk * c.d;
            attend_ref(&q[row * c.d], &k[kv], &v[kv], c.d, keys, p.scale, ref, ref_lse);
            bad += check_row(&out[row * c.d], lse[row], ref, ref_lse, c.d,
                             "h " + std::to_string(h) + ", t " + std::to_string(t), printed);
        }
    return bad;
}

}  // namespace

int main(int argc, char** argv) {
    std::mt19937 rng(argc > 1 ? (unsigned)std::stoul(argv[1]) : 1u);
    const unsigned dmax = 32 * KVS_DPL;
    const Case cases[] = {
        {2, 1, 70, 70, dmax, 1, true},
        {4, 2, 33, 200, dmax, 3, true},                // causal offset, split-K
        {2, 2, 50, 90, dmax, 4, false},
        {4, 1, 1, 300, dmax, 5, true},                 // one query (a decode step)
        {2, 1, 40, 61, dmax > 32 ? dmax - 28 : 20, 2, true},  // a head dim under the module's
    };
    int failed = 0, ran = 0;
    for (const Case& c : cases) {
        const int bad = run_case(c, rng);
        std::printf("attention_dense %s D%u hq %u hkv %u tq %u tk %u splits %u causal %d: %s\n", dtype_name(), c.d, c.hq,
                    c.hkv, c.tq, c.tk, c.splits, (int)c.causal, bad ? "FAIL" : "ok");
        failed += bad != 0;
        ++ran;
    }
    std::printf("%d of %d cases passed\n", ran - failed, ran);
    return failed ? 1 : 0;
}
