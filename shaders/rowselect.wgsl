// rowselect.wgsl: exact top-m selection within one row, shared by topk, random_select,
// select_blocks and snapkv_select (prepended after common.wgsl for those families only).
//
// One workgroup owns one row of `n` items. Items with rs_forced() are always kept; the others
// with rs_cand() compete by rs_key() (a u32, larger is better; ties go to the lower index).
// rs_select_row keeps forced + the best m competitors and calls rs_emit(row, pos, i) with
// pos = 0, 1, ... in ascending index order. The body defines:
//   fn rs_key(row: u32, i: u32) -> u32
//   fn rs_cand(row: u32, i: u32) -> bool
//   fn rs_forced(row: u32, i: u32) -> bool
//   fn rs_emit(row: u32, pos: u32, i: u32)
//
// Method: a radix select (4 passes of 8-bit histograms, most significant byte first) finds the
// key `tau` of the m-th best competitor and how many competitors equal to tau are needed; a
// chunked ascending compaction (two workgroup scans per chunk) then emits the kept items, taking
// the lowest-indexed equal keys first. Keys are only compared as integers.
//
// Every function here contains barriers: call it from workgroup-uniform control flow only.

var<workgroup> rs_hist: array<atomic<u32>, 256>;
var<workgroup> rs_total: atomic<u32>;
var<workgroup> rs_total_u: u32;
var<workgroup> rs_bin: u32;
var<workgroup> rs_rem: u32;
var<workgroup> rs_scan: array<u32, WG_SIZE>;

// Exclusive prefix sum of `v` over the workgroup: (this invocation's prefix, workgroup total).
fn rs_scan_excl(v: u32, lid: u32) -> vec2<u32> {
    rs_scan[lid] = v;
    workgroupBarrier();
    for (var off = 1u; off < WG_SIZE; off = off << 1u) {
        var t = 0u;
        if (lid >= off) {
            t = rs_scan[lid - off];
        }
        workgroupBarrier();
        rs_scan[lid] = rs_scan[lid] + t;
        workgroupBarrier();
    }
    let incl = rs_scan[lid];
    let total = rs_scan[WG_SIZE - 1u];
    workgroupBarrier();
    return vec2<u32>(incl - v, total);
}

// Keeps the forced items and the best min(m_req, #competitors) competitors of `row`; returns
// how many items were emitted.
fn rs_select_row(row: u32, n: u32, m_req: u32, lid: u32) -> u32 {
    if (lid == 0u) {
        atomicStore(&rs_total, 0u);
    }
    workgroupBarrier();
    var local_count = 0u;
    for (var i = lid; i < n; i += WG_SIZE) {
        if (!rs_forced(row, i) && rs_cand(row, i)) {
            local_count += 1u;
        }
    }
    if (local_count > 0u) {
        atomicAdd(&rs_total, local_count);
    }
    workgroupBarrier();
    if (lid == 0u) {
        rs_total_u = atomicLoad(&rs_total);
    }
    let total = workgroupUniformLoad(&rs_total_u);
    let m = min(m_req, total);

    // mode 0: no competitor kept; 1: all of them; 2: by threshold.
    var mode = 2u;
    if (m == 0u) {
        mode = 0u;
    } else if (m == total) {
        mode = 1u;
    }
    var prefix = 0u;
    var mask = 0u;
    var remaining = m;
    // A trip count instead of an `if` around the barriers keeps the control flow uniform.
    let passes = select(0u, 4u, mode == 2u);
    for (var pi = 0u; pi < passes; pi++) {
        let shift = 24u - 8u * pi;
        for (var b = lid; b < 256u; b += WG_SIZE) {
            atomicStore(&rs_hist[b], 0u);
        }
        workgroupBarrier();
        for (var i = lid; i < n; i += WG_SIZE) {
            if (!rs_forced(row, i) && rs_cand(row, i)) {
                let key = rs_key(row, i);
                if ((key & mask) == prefix) {
                    atomicAdd(&rs_hist[(key >> shift) & 255u], 1u);
                }
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            // Walk the bins from the top until `remaining` competitors are covered.
            var acc = 0u;
            var bin = 0u;
            for (var b = 256u; b > 0u; b--) {
                let c = atomicLoad(&rs_hist[b - 1u]);
                if (acc + c >= remaining) {
                    bin = b - 1u;
                    break;
                }
                acc += c;
            }
            rs_bin = bin;
            rs_rem = remaining - acc;
        }
        workgroupBarrier();
        prefix = prefix | (rs_bin << shift);
        mask = mask | (255u << shift);
        remaining = rs_rem;
    }
    // Now, in mode 2: every competitor with key > prefix is kept, plus the `remaining`
    // lowest-indexed ones with key == prefix.

    var eq_seen = 0u;
    var emitted = 0u;
    let chunks = (n + WG_SIZE - 1u) / WG_SIZE;
    for (var ch = 0u; ch < chunks; ch++) {
        let i = ch * WG_SIZE + lid;
        var forced = false;
        var cand = false;
        var key = 0u;
        if (i < n) {
            forced = rs_forced(row, i);
            cand = !forced && rs_cand(row, i);
            if (cand && mode == 2u) {
                key = rs_key(row, i);
            }
        }
        let is_eq = cand && mode == 2u && key == prefix;
        let eq = rs_scan_excl(select(0u, 1u, is_eq), lid);
        var take = forced || (cand && mode == 1u);
        if (cand && mode == 2u) {
            take = key > prefix || (is_eq && eq_seen + eq.x < remaining);
        }
        let pos = rs_scan_excl(select(0u, 1u, take), lid);
        if (take) {
            rs_emit(row, emitted + pos.x, i);
        }
        eq_seen += eq.y;
        emitted += pos.y;
    }
    return emitted;
}
