// hit_rate.wgsl: head-level hit rate (SPEC §9). Prepended: HitRateParams, spec prelude, common.wgsl.
//
// hit_rate: a single workgroup; invocation lid handles heads lid, lid + WG, ...:
// head_hit[h] = AND_s sel[s, h, gold[s] / bs] != 0 (a gold candidate outside 0..N is a miss);
// then rate = (number of hits) / H.
//
// Bindings: 1 sel i32[S*H*N], 2 gold i32[S], 3 head_hit i32[H], 4 rate f32[1].

override WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> p: HitRateParams;
@group(0) @binding(1) var<storage, read> hr_sel: array<i32>;
@group(0) @binding(2) var<storage, read> hr_gold: array<i32>;
@group(0) @binding(3) var<storage, read_write> hr_head_hit: array<i32>;
@group(0) @binding(4) var<storage, read_write> hr_rate: array<f32>;

var<workgroup> hits: atomic<u32>;

@compute @workgroup_size(WG_SIZE)
fn hit_rate(@builtin(local_invocation_index) lid: u32) {
    if (lid == 0u) {
        atomicStore(&hits, 0u);
    }
    workgroupBarrier();
    var local_hits = 0u;
    for (var h = lid; h < p.heads; h += WG_SIZE) {
        var hit = true;
        for (var s = 0u; s < p.steps; s++) {
            let g = hr_gold[s];
            if (g < 0 || u32(g) / p.block_size >= p.n) {
                hit = false;
                break;
            }
            if (hr_sel[(s * p.heads + h) * p.n + u32(g) / p.block_size] == 0) {
                hit = false;
                break;
            }
        }
        hr_head_hit[h] = select(0, 1, hit);
        local_hits += select(0u, 1u, hit);
    }
    atomicAdd(&hits, local_hits);
    workgroupBarrier();
    if (lid == 0u) {
        hr_rate[0] = f32(atomicLoad(&hits)) / f32(p.heads);
    }
}
