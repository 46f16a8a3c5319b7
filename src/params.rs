//! Launch parameters shared by Rust, WGSL and CUDA.
//!
//! Every struct here is emitted three times from one definition by `gpu_params!`: the Rust
//! `#[repr(C)]` type, its WGSL declaration (`Self::WGSL`, prepended to the shaders that bind it as
//! a uniform) and its CUDA declaration (`Self::cuda_decl()`, prepended to the kernels that take it
//! by value). Fields are 4-byte scalars only and every struct is padded to 16 bytes, so the C,
//! WGSL-uniform and WGSL-storage layouts are the same bytes (checked against naga in tests).
//! One struct per kernel family (one `shaders/*.wgsl` / `cuda/*.cu` file); each op of the family
//! fills the fields it uses and leaves the rest zero.

macro_rules! wgsl_ty {
    (u32) => {
        "u32"
    };
    (i32) => {
        "i32"
    };
    (f32) => {
        "f32"
    };
}
macro_rules! cuda_ty {
    (u32) => {
        "unsigned int"
    };
    (i32) => {
        "int"
    };
    (f32) => {
        "float"
    };
}

macro_rules! gpu_params {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $field:ident : $ty:tt),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }

        impl $name {
            /// WGSL declaration, prepended to every shader that binds this struct.
            pub const WGSL: &'static str = concat!("struct ", stringify!($name), " {\n",
                $("    ", stringify!($field), ": ", wgsl_ty!($ty), ",\n",)* "}\n");
            /// CUDA declaration (see [`Self::cuda_decl`]).
            pub const CUDA: &'static str = concat!("struct ", stringify!($name), " {\n",
                $("    ", cuda_ty!($ty), " ", stringify!($field), ";\n",)* "};\n");
            /// `(field, byte offset)` pairs, checked against naga's layout in the tests.
            pub const FIELDS: &'static [(&'static str, usize)] =
                &[$((stringify!($field), core::mem::offset_of!($name, $field))),*];
            /// CUDA declaration plus a `static_assert` that pins the size.
            pub fn cuda_decl() -> String {
                format!("{}static_assert(sizeof({}) == {}, \"params layout drift\");\n",
                        Self::CUDA, stringify!($name), core::mem::size_of::<Self>())
            }
        }
        const _: () = assert!(core::mem::size_of::<$name>() % 16 == 0, "pad params to 16 bytes");
        #[cfg(feature = "cuda")]
        // SAFETY: #[repr(C)], only 4-byte scalar fields, no implicit padding; same layout as `Self::CUDA`.
        unsafe impl cudarc::driver::DeviceRepr for $name {}
    };
}

gpu_params! {
    /// `random` family: `pcg_hash`, `random_key`, `random_select`.
    pub struct RandomParams {
        /// Elements per row (candidates).
        pub n: u32,
        /// Rows (`R`); 1 for `pcg_hash`.
        pub rows: u32,
        /// Selected per row (`random_select`).
        pub k: u32,
        /// Seed of `random_key(seed, row, i)`; unused by `pcg_hash`.
        pub seed: u32,
    }
}

gpu_params! {
    /// `topk` family.
    pub struct TopkParams {
        /// Score rows (`R`).
        pub rows: u32,
        /// Scores per row (`N`).
        pub n: u32,
        /// Requested count per row.
        pub k: u32,
        /// `min(k, n)`: the output row width.
        pub out_k: u32,
    }
}

gpu_params! {
    /// `decay` family: `decay_scan`, `decay_step`, `rope`, `ratplus_kv`, `ratplus_step`.
    /// Tensors are `[outer, seq, inner]` (`[H, T, D]` for RAT+ and RoPE, `[1, T, C]` for a plain scan).
    pub struct DecayParams {
        /// Outer extent: heads, or 1 for a plain scan.
        pub outer: u32,
        /// Time steps (`T`); 1 for the decode steps.
        pub seq: u32,
        /// Inner extent: head dim `D`, or channels `C`.
        pub inner: u32,
        /// Position of token 0 (RoPE, RAT+); `ratplus_step` uses it as the step's position.
        pub pos0: u32,
        /// RoPE base (10000 for RAT+).
        pub base: f32,
        /// `base^(-2/D)` as a two-float (`hi + lo`, from f64; see [`rope_step`]): WGSL builds
        /// each pair's frequency and angle from it without f32's rounding (CUDA uses f64).
        pub rope_step_hi: f32,
        /// The low part of `rope_step_hi`.
        pub rope_step_lo: f32,
        /// Padding to 16 bytes; always 0.
        pub _pad2: u32,
    }
}

gpu_params! {
    /// `blocks` family: `block_minmax`, `block_mean`, `quest_scores`, `moba_gate`.
    pub struct BlockParams {
        /// Query heads (`Hq`); equal to `kv_heads` for the block statistics.
        pub q_heads: u32,
        /// Key/value heads (`Hkv`).
        pub kv_heads: u32,
        /// Tokens (`T`); for `moba_gate` also the number of query tokens.
        pub seq: u32,
        /// Head dim (`D`).
        pub dim: u32,
        /// Tokens per block; 1 for `quest_scores`, which reads statistics only.
        pub block_size: u32,
        /// `ceil(seq / block_size)`.
        pub nb: u32,
        /// Padding to 16 bytes; always 0.
        pub _pad0: u32,
        /// Padding to 16 bytes; always 0.
        pub _pad1: u32,
    }
}

gpu_params! {
    /// `select` family: forced top-k block selection of Quest (one row per query head) and MoBA
    /// (one row per query head and token).
    pub struct SelectParams {
        /// Selection rows: `Hq` (Quest) or `Hq * T` (MoBA).
        pub rows: u32,
        /// Blocks per row (`NB`).
        pub nb: u32,
        /// Query tokens per head (1 for Quest decode); row `r` is head `r / seq`, token `r % seq`.
        pub seq: u32,
        /// Tokens per block.
        pub block_size: u32,
        /// Budget in blocks, forced ones included.
        pub n_blocks: u32,
        /// 1 = block 0 is always kept.
        pub force_first: u32,
        /// Local blocks forced: the current block and the `n_local - 1` before it.
        pub n_local: u32,
        /// Output row width (`n_sel` for Quest, `W` for MoBA).
        pub width: u32,
        /// 0 = Quest (current block = last block, candidates = all blocks);
        /// 1 = MoBA (current block = the token's block, candidates = past blocks).
        pub mode: u32,
        /// 0 = by score, 1 = by `random_key(seed, row, block)`.
        pub selector: u32,
        /// Seed of the random selector; 0 for the score selector.
        pub seed: u32,
        /// Padding to 16 bytes; always 0.
        pub _pad0: u32,
    }
}

gpu_params! {
    /// `attention` family: dense, index-set (decode) and block-sparse (MoBA prefill) attention.
    pub struct AttentionParams {
        /// Query heads (`Hq`); a multiple of `kv_heads`.
        pub q_heads: u32,
        /// Key/value heads (`Hkv`).
        pub kv_heads: u32,
        /// Query tokens per head (`Tq`); 1 for decode.
        pub q_len: u32,
        /// Key/value tokens per head (`Tk`).
        pub kv_len: u32,
        /// Head dim (`D`).
        pub dim: u32,
        /// 1 = causal, bottom-right aligned.
        pub causal: u32,
        /// Softmax scale (1/sqrt(D) by default).
        pub scale: f32,
        /// Rows of the index list: `q_heads` (per query head) or `kv_heads` (shared by a group).
        pub idx_heads: u32,
        /// Entries per index row (sparse decode) or selected blocks per token (block-sparse).
        pub n_idx: u32,
        /// Tokens per block (block-sparse; 1 when the indices are tokens).
        pub block_size: u32,
        /// Splits of the key range merged by log-sum-exp (flash-decoding); 1 = no split.
        pub splits: u32,
        /// Padding to 16 bytes; always 0.
        pub _pad0: u32,
    }
}

gpu_params! {
    /// `snapkv` family: window scoring, pooling, group combination and the kept set.
    pub struct SnapKvParams {
        /// Query heads (`Hq`); a multiple of `kv_heads`.
        pub q_heads: u32,
        /// Key heads (`Hkv`).
        pub kv_heads: u32,
        /// Prompt tokens (`T`).
        pub seq: u32,
        /// Head dim (`D`).
        pub dim: u32,
        /// Observation window `w`: the last `w` prompt queries.
        pub window: u32,
        /// Tokens kept per output head, the window included.
        pub capacity: u32,
        /// Odd pooling kernel size.
        pub kernel: u32,
        /// 0 = avg (zero padding counted), 1 = max.
        pub pooling: u32,
        /// 0 = mean over the group (one set per kv head), 1 = per query head.
        pub gqa: u32,
        /// Output heads: `kv_heads` (mean) or `q_heads` (per head).
        pub out_heads: u32,
        /// Prefix tokens competing: `seq - window`.
        pub n_prefix: u32,
        /// Prefix tokens kept: `capacity - window`.
        pub n_keep: u32,
        /// 0 = by score, 1 = by `random_key(seed, out_head, token)`.
        pub selector: u32,
        /// Seed of the random selector; 0 for the score selector.
        pub seed: u32,
        /// Softmax scale of the window scores (1/sqrt(D) by default).
        pub scale: f32,
        /// Padding to 16 bytes; always 0.
        pub _pad0: u32,
    }
}

gpu_params! {
    /// `hit_rate` family.
    pub struct HitRateParams {
        /// Decode steps (`S`).
        pub steps: u32,
        /// Heads (`H`).
        pub heads: u32,
        /// Candidates per head and step (`N`).
        pub n: u32,
        /// Tokens per candidate: maps a gold position to candidate `gold / block_size`.
        pub block_size: u32,
    }
}

gpu_params! {
    /// `cache` family: the decoder's batched KV cache (`cache_fill`, `cache_append`,
    /// `cache_advance`, `cache_decode`). The cache is `k`, `v` `[batch, heads, capacity, dim]`
    /// and block statistics `[batch, heads, nb, dim]`; per-sequence lengths and positions live
    /// in device buffers (`lens`, `pos`, i32 `[batch]`), so no launch shape depends on them.
    pub struct CacheParams {
        /// Sequences in the cache (`B`).
        pub batch: u32,
        /// Cache heads (`Hc`): the kv heads, or the query heads of a per-head SnapKV cache.
        pub heads: u32,
        /// Token slots per sequence and head (`Tcap`).
        pub capacity: u32,
        /// Head dim (`D`).
        pub dim: u32,
        /// Tokens per statistics block.
        pub block_size: u32,
        /// Statistics blocks per sequence and head: `ceil(capacity / block_size)`.
        pub nb: u32,
        /// Source heads (`Hs`): heads of the fill source, or kv heads of the appended token;
        /// cache head `c` takes source head `c / (heads / src_heads)`.
        pub src_heads: u32,
        /// Query heads (`Hq`) of `cache_decode`; a multiple of `heads`.
        pub q_heads: u32,
        /// `cache_fill`: the sequence written.
        pub seq_index: u32,
        /// `cache_fill`: tokens per head of the source (`Tsrc`).
        pub src_len: u32,
        /// `cache_fill`: tokens written per head (`n`); `lens[seq_index]` becomes `n`.
        pub n_tokens: u32,
        /// `cache_fill`: 1 = token `e` of head `c` is `idx[c, e]`, 0 = token `e` is `e`.
        pub indexed: u32,
        /// `cache_fill`: the value `pos[seq_index]` becomes (RoPE position of the next token).
        pub pos: u32,
        /// `cache_append`: 1 = RAT+ (state update, RoPE of the new state), 0 = store as given.
        pub ratplus: u32,
        /// `cache_append`: RoPE base (10000 for RAT+).
        pub base: f32,
        /// `cache_decode`: 0 = dense over the live tokens, 1 = forced top-k blocks.
        pub mode: u32,
        /// `cache_decode`: 1 = block 0 is always kept.
        pub force_first: u32,
        /// `cache_decode`: local blocks forced (the last block and the `n_local - 1` before it).
        pub n_local: u32,
        /// `cache_decode`: budget in blocks when `budget_den == 0`.
        pub budget_count: u32,
        /// `cache_decode`: budget numerator: `max(1, floor(nb_live * num / den))` blocks.
        pub budget_num: u32,
        /// `cache_decode`: budget denominator (at most 65536); 0 = use `budget_count`.
        pub budget_den: u32,
        /// `cache_decode`: 0 = by Quest score, 1 = by `random_key(seed, h, block)`.
        pub selector: u32,
        /// `cache_decode`: seed of the random selector.
        pub seed: u32,
        /// `cache_decode`: row width of `selected` (`n_sel` at full capacity).
        pub width: u32,
        /// `cache_decode`: softmax scale.
        pub scale: f32,
        /// Key splits chosen by the backend (flash-decoding); 1 = no split.
        pub splits: u32,
        /// `cache_append`: `base^(-2/D)` as a two-float (see [`rope_step`]).
        pub rope_step_hi: f32,
        /// The low part of `rope_step_hi`.
        pub rope_step_lo: f32,
    }
}

/// RoPE's frequency ratio `base^(-2/dim)` (pair `i` turns at `pos * ratio^i` radians) computed
/// in f64 and split into two f32 (`hi + lo`), for kernels without f64.
///
/// ```
/// let [hi, lo] = kvsparse::params::rope_step(10000.0, 128);
/// assert!(((hi as f64 + lo as f64) - 10000f64.powf(-2.0 / 128.0)).abs() < 1e-15);
/// ```
pub fn rope_step(base: f32, dim: usize) -> [f32; 2] {
    let r = (base as f64).powf(-2.0 / dim.max(1) as f64);
    let hi = r as f32;
    [hi, (r - hi as f64) as f32]
}

/// One params struct described for the layout tests: name, WGSL declaration, `(field, offset)`
/// pairs and size in bytes.
pub type Layout = (&'static str, &'static str, &'static [(&'static str, usize)], usize);

gpu_params! {
    /// `copy` family (wgpu only: the buffer copy as a compute pass).
    pub struct CopyParams {
        /// 16-byte words to copy.
        pub words: u32,
        /// Padding to 16 bytes.
        pub _pad0: u32,
        /// Padding to 16 bytes.
        pub _pad1: u32,
        /// Padding to 16 bytes.
        pub _pad2: u32,
    }
}

/// Every params struct, for the layout tests.
pub const ALL: &[Layout] = &[
    ("RandomParams", RandomParams::WGSL, RandomParams::FIELDS, size_of::<RandomParams>()),
    ("TopkParams", TopkParams::WGSL, TopkParams::FIELDS, size_of::<TopkParams>()),
    ("DecayParams", DecayParams::WGSL, DecayParams::FIELDS, size_of::<DecayParams>()),
    ("BlockParams", BlockParams::WGSL, BlockParams::FIELDS, size_of::<BlockParams>()),
    ("SelectParams", SelectParams::WGSL, SelectParams::FIELDS, size_of::<SelectParams>()),
    ("AttentionParams", AttentionParams::WGSL, AttentionParams::FIELDS, size_of::<AttentionParams>()),
    ("SnapKvParams", SnapKvParams::WGSL, SnapKvParams::FIELDS, size_of::<SnapKvParams>()),
    ("HitRateParams", HitRateParams::WGSL, HitRateParams::FIELDS, size_of::<HitRateParams>()),
    ("CacheParams", CacheParams::WGSL, CacheParams::FIELDS, size_of::<CacheParams>()),
    ("CopyParams", CopyParams::WGSL, CopyParams::FIELDS, size_of::<CopyParams>()),
];
