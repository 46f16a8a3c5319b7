// common.wgsl: helpers shared by every kernel. No bindings, no entry points.
//
// Assembled as: params struct(s) + spec prelude (dtype aliases, ld_*/st_* helpers, HEAD_DIM)
// + this file + [rowselect.wgsl] + the family body. Every body declares `override WG_SIZE`.
//
// Internals avoid infinities: some drivers treat inf/NaN loosely under their default float
// modes, so "no value yet" is NEG_BIG and infinities appear only in outputs (`neg_inf()`).

const NEG_BIG: f32 = -3.0e38;

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

// Flat workgroup index of a 2-D dispatch (x fastest): grids wider than 65535 spill into y.
fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// PCG hash, SPEC §8.1. u32 arithmetic wraps mod 2^32 in WGSL.
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// key(seed, row, i) = pcg(seed ^ pcg(row ^ pcg(i))), compared as u32 by the random selector.
fn hash_key(seed: u32, row: u32, i: u32) -> u32 {
    return pcg(seed ^ pcg(row ^ pcg(i)));
}

// Order-preserving map f32 -> u32 (a > b as floats iff key(a) > key(b)); -0 maps to +0 so equal
// scores tie exactly and the lower index wins. Selection compares these keys, never floats.
fn order_key(x: f32) -> u32 {
    var b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) == 0u) {
        b = 0u;
    }
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

// bf16 element `i` of a buffer packed two per u32 (element 2j in the low half of word j).
fn bf16_unpack(word: u32, i: u32) -> f32 {
    if ((i & 1u) == 1u) {
        return bitcast<f32>(word & 0xffff0000u);
    }
    return bitcast<f32>(word << 16u);
}

// f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN. Matches `half::bf16::from_f32`.
fn bf16_bits(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return (b >> 16u) | 0x40u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

// sin and cos of the two-float angle a.x + a.y, accurate to a few ulp for |a| up to ~1e5:
// Cody-Waite reduction of a.x by pi/2 with 8-bit constant parts (n * part stays exact), a.y
// added to the remainder, then Taylor polynomials on [-pi/4, pi/4]. Built-in sin/cos are only
// specified on [-pi, pi], and RoPE angles reach thousands of radians.
fn sincos(a: vec2<f32>) -> vec2<f32> {
    let n = round(a.x * 0.636619772);
    var r = a.x - n * 1.5703125;
    r = r - n * 4.84466552734375e-4;
    r = r + n * 6.397578431460715e-7;
    r = r + a.y;
    let r2 = r * r;
    let s = r + r * r2 * (-1.6666667e-1 + r2 * (8.3333333e-3 + r2 * (-1.9841270e-4 + r2 * 2.7557319e-6)));
    let c = 1.0 + r2 * (-0.5 + r2 * (4.1666667e-2 + r2 * (-1.3888889e-3 + r2 * (2.4801587e-5 - r2 * 2.7557319e-7))));
    let quadrant = u32(i32(n) & 3);
    switch quadrant {
        case 0u: { return vec2<f32>(s, c); }
        case 1u: { return vec2<f32>(c, -s); }
        case 2u: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}

// x * y of two-floats (hi, lo), the product's rounding error recovered by fma: about 2^-44
// relative, where one f32 product is 2^-24.
fn df_mul(x: vec2<f32>, y: vec2<f32>) -> vec2<f32> {
    let p = x.x * y.x;
    let e = fma(x.x, y.x, -p) + (x.x * y.y + x.y * y.x);
    let s = p + e;
    return vec2<f32>(s, e - (s - p));
}

// (cos, sin) of RoPE's rotate-half angle pos * base^(-2i/dim) for pair i. `step` is
// base^(-2/dim) as a two-float computed in f64 on the host (params::rope_step); its i-th power
// and the product with pos stay two-floats, so the angle keeps ~1e-8 relative error (CUDA
// computes it in f64; f32 alone loses ~1e-2 rad at positions near 32K).
fn rope_cos_sin(pos: i32, i: u32, step: vec2<f32>) -> vec2<f32> {
    var freq = vec2<f32>(1.0, 0.0);
    var pw = step;
    var e = i;
    loop {
        if (e == 0u) {
            break;
        }
        if ((e & 1u) != 0u) {
            freq = df_mul(freq, pw);
        }
        pw = df_mul(pw, pw);
        e = e >> 1u;
    }
    // f32(pos) is exact below 2^24.
    let sc = sincos(df_mul(freq, vec2<f32>(f32(pos), 0.0)));
    return vec2<f32>(sc.y, sc.x);
}

// Forced-block rule of the block selectors (SPEC §2.3) with block `c` current: block 0 when
// `first`, and the local range c - n_local + 1 ..= c (clipped at 0).
fn block_forced(b: u32, c: u32, first: bool, n_local: u32) -> bool {
    return (first && b == 0u) || (b <= c && b + n_local > c);
}

// How many blocks block_forced keeps.
fn forced_count(c: u32, first: bool, n_local: u32) -> u32 {
    let local = min(n_local, c + 1u);
    return local + select(0u, 1u, first && c + 1u > local);
}

// Four bf16 elements packed in two words (element 4j in the low half of x).
fn bf16x4(w: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(
        bitcast<f32>(w.x << 16u),
        bitcast<f32>(w.x & 0xffff0000u),
        bitcast<f32>(w.y << 16u),
        bitcast<f32>(w.y & 0xffff0000u),
    );
}
