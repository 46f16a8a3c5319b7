//! The kernel table (one entry point each, grouped in families = `shaders/*.wgsl` files), the
//! specialisation key and WGSL source assembly.
//!
//! A module is assembled as `[enable f16;] + params struct + spec prelude + common.wgsl +
//! [rowselect.wgsl] + body`. The prelude gives every float tensor binding `x` of the family its
//! element type `x_t` and the helpers `ld_x(i) -> f32` / `st_x(i, v: f32)`, generated for the
//! binding's storage dtype, so that bodies never mention f16 or bf16:
//! f32 is `array<f32>`; f16 is `array<f16>` (needs `enable f16;`); bf16 is packed two per `u32`
//! (element `2j` in the low half of word `j`), widened with a shift and, for outputs, written
//! with `atomicAnd`/`atomicOr` on the half that belongs to the element, so that neighbouring
//! invocations writing the two halves of one word never race.

use crate::params::*;
use crate::DType;

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const ROWSELECT: &str = include_str!("../../shaders/rowselect.wgsl");
const SPLITK: &str = include_str!("../../shaders/splitk.wgsl");

/// Which dtype a float binding takes from the [`Spec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The op's storage dtype (q, k, v, x, outputs).
    Main,
    /// Block statistics (kmin, kmax, kmean): the storage dtype for the standalone ops, f32
    /// inside the Quest and MoBA composites.
    Stat,
    /// Always f32 (gates): listed so that large ones get chunked helpers too.
    F32,
}

/// Storage access of a binding (binding 0 is always the params uniform).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    /// Read-only, viewed as groups of 4 elements (`ld_x(j)` returns elements `4j..4j+4` as a
    /// `vec4<f32>`): one 8- or 16-byte load instead of four. Float table only.
    Read4,
}
use Access::{Read as R, Write as W};

/// One `shaders/<name>.wgsl` file.
pub(crate) struct Family {
    pub name: &'static str,
    pub body: &'static str,
    pub params: &'static str,
    /// Whether rowselect.wgsl is prepended.
    pub rowselect: bool,
    /// Whether splitk.wgsl (the split-K decode core) is prepended; such families also get the
    /// decode constants of the spec prelude (`GROUP`, `TEAM`, `ALIGNED`, ...).
    pub splitk: bool,
    /// Whether `KVSPARSE_WGPU_UNCHECKED` may drop naga's runtime checks for this family.
    pub unchecked_ok: bool,
    /// Every float tensor binding declared by the family's entry points: name, binding slot,
    /// dtype role, access. These are the bindings that may be split into chunks (see [`Spec::chunks`]).
    pub floats: &'static [(&'static str, u32, Role, Access)],
}

const RANDOM: Family = Family {
    name: "random",
    unchecked_ok: false,
    body: include_str!("../../shaders/random.wgsl"),
    params: RandomParams::WGSL,
    rowselect: true,
    splitk: false,
    floats: &[],
};
const TOPK: Family = Family {
    name: "topk",
    unchecked_ok: true,
    body: include_str!("../../shaders/topk.wgsl"),
    params: TopkParams::WGSL,
    rowselect: true,
    splitk: false,
    floats: &[("tk_scores", 1, Role::F32, R)],
};
const DECAY: Family = Family {
    name: "decay",
    unchecked_ok: true,
    body: include_str!("../../shaders/decay.wgsl"),
    params: DecayParams::WGSL,
    rowselect: false,
    splitk: false,
    floats: &[
        ("ds_x", 1, Role::Main, R),
        ("ds_g", 2, Role::F32, R),
        ("ds_y", 4, Role::Main, W),
        ("dst_x", 1, Role::Main, R),
        ("rp_x", 1, Role::Main, R),
        ("rp_y", 3, Role::Main, W),
        ("rk_k", 1, Role::Main, R),
        ("rk_v", 2, Role::Main, R),
        ("rk_g", 3, Role::F32, R),
        ("rk_kt", 4, Role::Main, W),
        ("rk_vt", 5, Role::Main, W),
        ("rk_kr", 6, Role::Main, W),
        ("rstep_k", 1, Role::Main, R),
        ("rstep_v", 2, Role::Main, R),
        ("rstep_kr", 8, Role::Main, W),
    ],
};
const BLOCKS: Family = Family {
    name: "blocks",
    unchecked_ok: false,
    body: include_str!("../../shaders/blocks.wgsl"),
    params: BlockParams::WGSL,
    rowselect: false,
    splitk: false,
    floats: &[
        ("bm_k", 1, Role::Main, R),
        ("bm_kmin", 2, Role::Stat, W),
        ("bm_kmax", 3, Role::Stat, W),
        ("bmean_k", 1, Role::Main, R),
        ("bmean_out", 2, Role::Stat, W),
        ("qs_q", 1, Role::Main, R),
        ("qs_kmin", 2, Role::Stat, R),
        ("qs_kmax", 3, Role::Stat, R),
        ("mg_q", 1, Role::Main, R),
        ("mg_kmean", 2, Role::Stat, R),
    ],
};
const SELECT: Family = Family {
    name: "select",
    unchecked_ok: false,
    body: include_str!("../../shaders/select.wgsl"),
    params: SelectParams::WGSL,
    rowselect: true,
    splitk: false,
    floats: &[("ms_q", 3, Role::Main, R), ("ms_kmean", 4, Role::Stat, R)],
};
const ATTENTION: Family = Family {
    name: "attention",
    unchecked_ok: false,
    body: include_str!("../../shaders/attention.wgsl"),
    params: AttentionParams::WGSL,
    rowselect: false,
    splitk: false,
    floats: &[("q", 1, Role::Main, R), ("k", 2, Role::Main, R), ("v", 3, Role::Main, R), ("out", 5, Role::Main, W)],
};
const DECODE: Family = Family {
    name: "decode",
    unchecked_ok: true,
    body: include_str!("../../shaders/decode.wgsl"),
    params: AttentionParams::WGSL,
    rowselect: false,
    splitk: true,
    floats: &[
        ("dq", 1, Role::Main, Access::Read4),
        ("dk", 2, Role::Main, Access::Read4),
        ("dv", 3, Role::Main, Access::Read4),
        ("dout", 5, Role::Main, W),
    ],
};
const PREFILL: Family = Family {
    name: "prefill",
    unchecked_ok: true,
    body: include_str!("../../shaders/prefill.wgsl"),
    params: AttentionParams::WGSL,
    rowselect: false,
    splitk: false,
    floats: &[
        ("pq", 1, Role::Main, Access::Read4),
        ("pk", 2, Role::Main, Access::Read4),
        ("pv", 3, Role::Main, Access::Read4),
        ("pout", 5, Role::Main, W),
    ],
};
const SNAPKV: Family = Family {
    name: "snapkv",
    unchecked_ok: false,
    body: include_str!("../../shaders/snapkv.wgsl"),
    params: SnapKvParams::WGSL,
    rowselect: true,
    splitk: false,
    floats: &[("sq", 1, Role::Main, R), ("sk", 2, Role::Main, R)],
};
// Unchecked: every index of the cache kernels is guarded against the validated shapes (the live
// lengths are clamped to the capacity, append's slot is skipped at or past it), loops are
// bounded by the shapes and divisors are validated non-zero; decode is splitk.wgsl's (trusted in
// the decode family) and select is rowselect.wgsl's (trusted in the top-k family).
const CACHE: Family = Family {
    name: "cache",
    unchecked_ok: true,
    body: include_str!("../../shaders/cache.wgsl"),
    params: CacheParams::WGSL,
    rowselect: true,
    splitk: true,
    floats: &[
        ("fl_ksrc", 1, Role::Main, R),
        ("fl_vsrc", 2, Role::Main, R),
        ("fl_k", 4, Role::Main, W),
        ("fl_v", 5, Role::Main, W),
        ("fl_kmin", 6, Role::Main, W),
        ("fl_kmax", 7, Role::Main, W),
        ("fl_kmean", 8, Role::Main, W),
        ("ap_knew", 1, Role::Main, R),
        ("ap_vnew", 2, Role::Main, R),
        ("ap_k", 8, Role::Main, W),
        ("ap_v", 9, Role::Main, W),
        ("ap_kmin", 10, Role::Main, W),
        ("ap_kmax", 11, Role::Main, W),
        ("ap_kmean", 12, Role::Main, W),
        ("cs_q", 1, Role::Main, R),
        ("cs_kmin", 2, Role::Main, R),
        ("cs_kmax", 3, Role::Main, R),
        ("dq", 1, Role::Main, Access::Read4),
        ("dk", 2, Role::Main, Access::Read4),
        ("dv", 3, Role::Main, Access::Read4),
        ("dout", 5, Role::Main, W),
    ],
};
const HIT_RATE: Family = Family {
    name: "hit_rate",
    unchecked_ok: false,
    body: include_str!("../../shaders/hit_rate.wgsl"),
    params: HitRateParams::WGSL,
    rowselect: false,
    splitk: false,
    floats: &[],
};

const COPY: Family = Family {
    name: "copy",
    // Every index is checked against p.words, which the host sets from the smaller binding.
    unchecked_ok: true,
    body: include_str!("../../shaders/copy.wgsl"),
    params: CopyParams::WGSL,
    rowselect: false,
    splitk: false,
    floats: &[],
};

/// One WGSL entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    PcgHash,
    RandomKey,
    RandomSelect,
    Topk,
    TkInit,
    TkHist,
    TkPick,
    TkCount,
    TkOffsets,
    TkEmit,
    TkSort,
    TkSortBlock,
    TkSortStage,
    TkSortOut,
    DecayScan,
    DecayStep,
    Rope,
    RatplusKv,
    RatplusStep,
    ScanChunks,
    ScanCarry,
    ScanFinal,
    RatplusChunks,
    RatplusCarry,
    RatplusFinal,
    BlockMinmax,
    BlockMean,
    QuestScores,
    QuestGroupMean,
    MobaGate,
    SelectBlocks,
    MobaSelect,
    AttentionDense,
    AttentionSparse,
    AttentionBlocks,
    DecodeDense,
    DecodeSparse,
    DecodeBlocks,
    DecodeMerge,
    PrefillDense,
    PrefillBlocks,
    SnapkvLse,
    SnapkvColsum,
    SnapkvPool,
    SnapkvSelect,
    SnapkvKeepAll,
    HitRate,
    CacheFill,
    CacheAppend,
    CacheAdvance,
    CacheSelect,
    CacheDecodeDense,
    CacheDecodeBlocks,
    CacheMerge,
    CopyWords,
}

const SNAPKV_BINDINGS: &[Access] = &[R, R, W, W, W, W];
const TOPK_LONG: &[Access] = &[R, W, W, W];
const ATTENTION_BINDINGS: &[Access] = &[R, R, R, R, W, W];
const DECODE_BINDINGS: &[Access] = &[R, R, R, R, W, W, W];
/// decode.wgsl's bindings, then 8 lens i32[B].
const CACHE_DECODE_BINDINGS: &[Access] = &[R, R, R, R, W, W, W, R];

impl Kernel {
    #[cfg(test)]
    pub const ALL: &'static [Kernel] = &[
        Kernel::PcgHash,
        Kernel::RandomKey,
        Kernel::RandomSelect,
        Kernel::Topk,
        Kernel::TkInit,
        Kernel::TkHist,
        Kernel::TkPick,
        Kernel::TkCount,
        Kernel::TkOffsets,
        Kernel::TkEmit,
        Kernel::TkSort,
        Kernel::TkSortBlock,
        Kernel::TkSortStage,
        Kernel::TkSortOut,
        Kernel::DecayScan,
        Kernel::DecayStep,
        Kernel::Rope,
        Kernel::RatplusKv,
        Kernel::RatplusStep,
        Kernel::ScanChunks,
        Kernel::ScanCarry,
        Kernel::ScanFinal,
        Kernel::RatplusChunks,
        Kernel::RatplusCarry,
        Kernel::RatplusFinal,
        Kernel::BlockMinmax,
        Kernel::BlockMean,
        Kernel::QuestScores,
        Kernel::QuestGroupMean,
        Kernel::MobaGate,
        Kernel::SelectBlocks,
        Kernel::MobaSelect,
        Kernel::AttentionDense,
        Kernel::AttentionSparse,
        Kernel::AttentionBlocks,
        Kernel::DecodeDense,
        Kernel::DecodeSparse,
        Kernel::DecodeBlocks,
        Kernel::DecodeMerge,
        Kernel::PrefillDense,
        Kernel::PrefillBlocks,
        Kernel::SnapkvLse,
        Kernel::SnapkvColsum,
        Kernel::SnapkvPool,
        Kernel::SnapkvSelect,
        Kernel::SnapkvKeepAll,
        Kernel::HitRate,
        Kernel::CacheFill,
        Kernel::CacheAppend,
        Kernel::CacheAdvance,
        Kernel::CacheSelect,
        Kernel::CacheDecodeDense,
        Kernel::CacheDecodeBlocks,
        Kernel::CacheMerge,
        Kernel::CopyWords,
    ];

    /// `(family, entry point, storage bindings 1..=n, workgroup size)`.
    fn desc(self) -> (&'static Family, &'static str, &'static [Access], u32) {
        match self {
            Kernel::PcgHash => (&RANDOM, "pcg_hash", &[R, W], 256),
            Kernel::RandomKey => (&RANDOM, "random_key", &[R, R, W], 256),
            Kernel::RandomSelect => (&RANDOM, "random_select", &[R, R, W, W], 256),
            Kernel::Topk => (&TOPK, "topk", &[R, W, W], 256),
            Kernel::TkInit => (&TOPK, "tk_init", TOPK_LONG, 256),
            Kernel::TkHist => (&TOPK, "tk_hist", TOPK_LONG, 256),
            Kernel::TkPick => (&TOPK, "tk_pick", TOPK_LONG, 256),
            Kernel::TkCount => (&TOPK, "tk_count", TOPK_LONG, 256),
            Kernel::TkOffsets => (&TOPK, "tk_offsets", TOPK_LONG, 256),
            Kernel::TkEmit => (&TOPK, "tk_emit", TOPK_LONG, 256),
            Kernel::TkSort => (&TOPK, "tk_sort", TOPK_LONG, 256),
            Kernel::TkSortBlock => (&TOPK, "tk_sort_block", TOPK_LONG, 256),
            Kernel::TkSortStage => (&TOPK, "tk_sort_stage", TOPK_LONG, 256),
            Kernel::TkSortOut => (&TOPK, "tk_sort_out", TOPK_LONG, 256),
            Kernel::DecayScan => (&DECAY, "decay_scan", &[R, R, R, W], 256),
            Kernel::DecayStep => (&DECAY, "decay_step", &[R, R, R, W], 256),
            Kernel::Rope => (&DECAY, "rope", &[R, R, W], 256),
            Kernel::RatplusKv => (&DECAY, "ratplus_kv", &[R, R, R, W, W, W], 256),
            Kernel::RatplusStep => (&DECAY, "ratplus_step", &[R, R, R, R, R, W, W, W], 256),
            Kernel::ScanChunks => (&DECAY, "scan_chunks", &[R, R, R, W, W], 256),
            Kernel::ScanCarry => (&DECAY, "scan_carry", &[R, R, R, W, W], 256),
            Kernel::ScanFinal => (&DECAY, "scan_final", &[R, R, R, W, W], 256),
            Kernel::RatplusChunks => (&DECAY, "ratplus_chunks", &[R, R, R, W, W, W, W], 256),
            Kernel::RatplusCarry => (&DECAY, "ratplus_carry", &[R, R, R, W, W, W, W], 256),
            Kernel::RatplusFinal => (&DECAY, "ratplus_final", &[R, R, R, W, W, W, W], 256),
            Kernel::BlockMinmax => (&BLOCKS, "block_minmax", &[R, W, W], 256),
            Kernel::BlockMean => (&BLOCKS, "block_mean", &[R, W], 256),
            Kernel::QuestScores => (&BLOCKS, "quest_scores", &[R, R, R, W], 256),
            Kernel::QuestGroupMean => (&BLOCKS, "quest_group_mean", &[R, W], 256),
            Kernel::MobaGate => (&BLOCKS, "moba_gate", &[R, R, W], 256),
            Kernel::SelectBlocks => (&SELECT, "select_blocks", &[W, W], 64),
            Kernel::MobaSelect => (&SELECT, "moba_select", &[W, W, R, R, R], 64),
            Kernel::AttentionDense => (&ATTENTION, "attention_dense", ATTENTION_BINDINGS, 64),
            Kernel::AttentionSparse => (&ATTENTION, "attention_sparse", ATTENTION_BINDINGS, 64),
            Kernel::AttentionBlocks => (&ATTENTION, "attention_blocks", ATTENTION_BINDINGS, 64),
            Kernel::DecodeDense => (&DECODE, "decode_dense", DECODE_BINDINGS, 128),
            Kernel::DecodeSparse => (&DECODE, "decode_sparse", DECODE_BINDINGS, 128),
            Kernel::DecodeBlocks => (&DECODE, "decode_blocks", DECODE_BINDINGS, 128),
            Kernel::DecodeMerge => (&DECODE, "decode_merge", DECODE_BINDINGS, 128),
            Kernel::PrefillDense => (&PREFILL, "prefill_dense", ATTENTION_BINDINGS, 256),
            Kernel::PrefillBlocks => (&PREFILL, "prefill_blocks", ATTENTION_BINDINGS, 256),
            Kernel::SnapkvLse => (&SNAPKV, "snapkv_lse", SNAPKV_BINDINGS, 128),
            Kernel::SnapkvColsum => (&SNAPKV, "snapkv_colsum", SNAPKV_BINDINGS, 128),
            Kernel::SnapkvPool => (&SNAPKV, "snapkv_pool", SNAPKV_BINDINGS, 128),
            Kernel::SnapkvSelect => (&SNAPKV, "snapkv_select", SNAPKV_BINDINGS, 128),
            Kernel::SnapkvKeepAll => (&SNAPKV, "snapkv_keep_all", SNAPKV_BINDINGS, 128),
            Kernel::HitRate => (&HIT_RATE, "hit_rate", &[R, R, W, W], 256),
            Kernel::CacheFill => (&CACHE, "cache_fill", &[R, R, R, W, W, W, W, W, W, W], 256),
            Kernel::CacheAppend => (&CACHE, "cache_append", &[R, R, R, R, R, W, W, W, W, W, W, W], 256),
            Kernel::CacheAdvance => (&CACHE, "cache_advance", &[W, W], 64),
            Kernel::CacheSelect => (&CACHE, "cache_select", &[R, R, R, R, W, W], 64),
            Kernel::CacheDecodeDense => (&CACHE, "cache_decode_dense", CACHE_DECODE_BINDINGS, 128),
            Kernel::CacheDecodeBlocks => (&CACHE, "cache_decode_blocks", CACHE_DECODE_BINDINGS, 128),
            Kernel::CacheMerge => (&CACHE, "cache_merge", CACHE_DECODE_BINDINGS, 128),
            Kernel::CopyWords => (&COPY, "copy_words", &[R, W], 256),
        }
    }
    pub fn family(self) -> &'static Family {
        self.desc().0
    }
    pub fn entry(self) -> &'static str {
        self.desc().1
    }
    /// Access of the storage bindings `1..=n`, in order.
    pub fn bindings(self) -> &'static [Access] {
        self.desc().2
    }
    /// Invocations per workgroup (the `WG_SIZE` override).
    pub fn workgroup(self) -> u32 {
        self.desc().3
    }
    /// Storage slots bound to float bindings of the family table (the ones that may be split
    /// into chunks); every other slot of the kernel must fit one binding.
    pub fn chunked(self) -> &'static [u32] {
        match self {
            Kernel::Topk
            | Kernel::TkInit
            | Kernel::TkHist
            | Kernel::TkPick
            | Kernel::TkCount
            | Kernel::TkOffsets
            | Kernel::TkEmit
            | Kernel::TkSort
            | Kernel::TkSortBlock
            | Kernel::TkSortStage
            | Kernel::TkSortOut => &[1],
            Kernel::DecayScan | Kernel::ScanChunks | Kernel::ScanFinal => &[1, 2, 4],
            Kernel::ScanCarry => &[],
            Kernel::DecayStep => &[1],
            Kernel::Rope => &[1, 3],
            Kernel::RatplusKv | Kernel::RatplusChunks | Kernel::RatplusFinal => &[1, 2, 3, 4, 5, 6],
            Kernel::RatplusCarry => &[],
            Kernel::RatplusStep => &[1, 2, 8],
            Kernel::BlockMinmax | Kernel::QuestScores => &[1, 2, 3],
            Kernel::BlockMean | Kernel::MobaGate => &[1, 2],
            Kernel::MobaSelect => &[3, 4],
            Kernel::AttentionDense | Kernel::AttentionSparse | Kernel::AttentionBlocks => &[1, 2, 3, 5],
            Kernel::DecodeDense | Kernel::DecodeSparse | Kernel::DecodeBlocks => &[1, 2, 3, 5],
            Kernel::DecodeMerge | Kernel::CacheMerge => &[5],
            Kernel::CacheFill => &[1, 2, 4, 5, 6, 7, 8],
            Kernel::CacheAppend => &[1, 2, 8, 9, 10, 11, 12],
            Kernel::CacheSelect => &[1, 2, 3],
            Kernel::CacheDecodeDense | Kernel::CacheDecodeBlocks => &[1, 2, 3, 5],
            Kernel::PrefillDense | Kernel::PrefillBlocks => &[1, 2, 3, 5],
            Kernel::SnapkvLse
            | Kernel::SnapkvColsum
            | Kernel::SnapkvPool
            | Kernel::SnapkvSelect
            | Kernel::SnapkvKeepAll => &[1, 2],
            _ => &[],
        }
    }
    /// `family::entry`, for error messages.
    pub fn label(self) -> String {
        format!("{}::{}", self.family().name, self.entry())
    }
}

/// Code-shaping knobs: anything here forces a new pipeline; shapes go in the params uniform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Spec {
    /// Storage dtype of the [`Role::Main`] bindings.
    pub dtype: DType,
    /// Storage dtype of the [`Role::Stat`] bindings.
    pub stat: DType,
    /// Sizes workgroup / local arrays of one head vector (`>= dim`; a power of two, so that a
    /// few pipelines serve every head dim).
    pub head_dim: u32,
    /// Bindings per float tensor: 1, or `n > 1` when some buffer exceeds the adapter's
    /// storage-binding limit. Chunk `j` of the binding in slot `s` is bound at `s + CHUNK_SLOTS * j`
    /// to bytes `[j * chunk_bytes, (j + 1) * chunk_bytes)`; the `ld_*`/`st_*` helpers pick it.
    pub chunks: u32,
    /// Slots (bit `s` = slot `s`) whose buffers are split into `chunks`; the others stay one
    /// binding (no chunk switch in their helpers, no extra bindings).
    pub split_slots: u32,
    /// Bytes per chunk (a multiple of 256, the largest storage offset alignment); 0 when unchunked.
    pub chunk_bytes: u32,
    /// decode.wgsl: query heads per workgroup (`GROUP`) and lanes per key row (`TEAM`, a power
    /// of two, `<= HEAD_DIM / 4`).
    pub group: u32,
    pub team: u32,
    /// splitk.wgsl: keys a team loads before it scores them (`KB`, at least 1): each lane keeps
    /// `2 * KB * HEAD_DIM / (4 * TEAM)` loads in flight.
    pub keys_per_step: u32,
    /// decode.wgsl: sum a team's lanes with subgroup shuffles (the adapter's subgroups hold at
    /// least `team` lanes, contiguous in the local index); else through workgroup memory.
    pub subgroups: bool,
    /// splitk.wgsl: head dim not a multiple of 4: the [`Access::Read4`] bindings are scalar
    /// arrays and `ldv_x` gathers their groups element by element (`ALIGNED = false`).
    pub unaligned: bool,
}

/// Slot stride between the chunks of one binding (every family uses slots below 16).
pub(crate) const CHUNK_SLOTS: u32 = 16;

impl Spec {
    /// Every float binding in `dtype`; no head-dim arrays.
    pub fn new(dtype: DType) -> Self {
        Spec {
            dtype,
            stat: dtype,
            head_dim: 1,
            chunks: 1,
            split_slots: 0,
            chunk_bytes: 0,
            group: 1,
            team: 1,
            keys_per_step: 2,
            subgroups: false,
            unaligned: false,
        }
    }
    /// Statistics in `stat` instead of the storage dtype.
    pub fn with_stat(self, stat: DType) -> Self {
        Spec { stat, ..self }
    }
    /// Head vectors of `dim` elements.
    pub fn with_dim(self, dim: usize) -> Self {
        Spec { head_dim: head_dim_bucket(dim), ..self }
    }
    /// `RED_SIZE` of the decode and prefill families: the workgroup-memory words their
    /// reductions take when subgroups are off (decode: KB x GROUP values a lane; prefill: one a
    /// lane), 1 with subgroups. The hosts' workgroup-memory checks count the same.
    pub fn reduction_words(&self, kernel: Kernel) -> u64 {
        let per_lane = if kernel.family().splitk { self.keys_per_step.max(1) * self.group } else { 1 };
        if self.subgroups {
            1
        } else {
            kernel.workgroup() as u64 * per_lane as u64
        }
    }
    /// Bindings of the buffer in `slot`: `chunks` where it is split, else 1.
    pub fn chunks_of(&self, slot: u32) -> u32 {
        if self.chunks > 1 && slot < 32 && self.split_slots & (1 << slot) != 0 {
            self.chunks
        } else {
            1
        }
    }
    fn dtype_of(&self, role: Role) -> DType {
        match role {
            Role::Main => self.dtype,
            Role::Stat => self.stat,
            Role::F32 => DType::F32,
        }
    }
}

/// The `HEAD_DIM` a problem with head dim `dim` compiles with.
pub(crate) fn head_dim_bucket(dim: usize) -> u32 {
    dim.next_power_of_two().max(32).min(u32::MAX as usize / 2 + 1) as u32
}

/// The element alias and load/store helpers of one float binding in slot `slot`, split into
/// `spec.chunks_of(slot)` bindings when that is above 1.
fn binding_helpers(name: &str, slot: u32, dtype: DType, access: Access, spec: &Spec) -> String {
    if access == Access::Read4 {
        return vec4_helpers(name, slot, dtype, spec);
    }
    let write = access == Access::Write;
    // Array element: `e` indexes chunk array `a` (the unchunked binding is chunk 0, `name`).
    let (alias, unit, word) = match dtype {
        DType::F16 => ("f16", 2, "i"),
        DType::BF16 if write => ("atomic<u32>", 4, "i >> 1u"),
        DType::BF16 => ("u32", 4, "i >> 1u"),
        // f32 (integer dtypes never reach a float binding).
        _ => ("f32", 4, "i"),
    };
    let load = |a: &str, e: &str| match dtype {
        DType::F16 => format!("f32({a}[{e}])"),
        DType::BF16 if write => format!("bf16_unpack(atomicLoad(&{a}[{e}]), i)"),
        DType::BF16 => format!("bf16_unpack({a}[{e}], i)"),
        _ => format!("{a}[{e}]"),
    };
    let store = |a: &str, e: &str| match dtype {
        DType::F16 => format!("{a}[{e}] = f16(v);"),
        DType::BF16 => format!(
            "let sh = (i & 1u) * 16u; atomicAnd(&{a}[{e}], ~(0xffffu << sh)); atomicOr(&{a}[{e}], bf16_bits(v) << sh);"
        ),
        _ => format!("{a}[{e}] = v;"),
    };
    // st4_x(j, v): elements 4j..4j+4 at once (bf16: two whole words, plain stores, no
    // read-modify-write); `e` is the first array element of the group.
    let store4 = |a: &str, e: &str| match dtype {
        DType::F16 => format!("for (var k = 0u; k < 4u; k++) {{ {a}[({e}) + k] = f16(v[k]); }}"),
        DType::BF16 => format!(
            "atomicStore(&{a}[{e}], bf16_bits(v.x) | (bf16_bits(v.y) << 16u)); \
             atomicStore(&{a}[({e}) + 1u], bf16_bits(v.z) | (bf16_bits(v.w) << 16u));"
        ),
        _ => format!("for (var k = 0u; k < 4u; k++) {{ {a}[({e}) + k] = v[k]; }}"),
    };
    let chunks = spec.chunks_of(slot);
    let mut s = format!("alias {name}_t = {alias};\n");
    if chunks <= 1 {
        s += &format!("fn ld_{name}(i: u32) -> f32 {{\n    return {};\n}}\n", load(name, word));
        if write {
            s += &format!("fn st_{name}(i: u32, v: f32) {{\n    {}\n}}\n", store(name, word));
            s += &format!(
                "fn st4_{name}(j: u32, v: vec4<f32>) {{\n    let i = 4u * j;\n    {}\n}}\n",
                store4(name, word)
            );
        }
        return s;
    }
    // Chunked: element `w` of the whole buffer is element `w % per` of chunk `w / per` (a
    // division by a constant, cheap; chunks stay as large as the binding limit allows).
    let per = spec.chunk_bytes / unit;
    let space = if write { "read_write" } else { "read" };
    let chunk = |j: u32| if j == 0 { name.to_string() } else { format!("{name}_c{j}") };
    for j in 1..chunks {
        s += &format!(
            "@group(0) @binding({}) var<storage, {space}> {}: array<{name}_t>;\n",
            slot + CHUNK_SLOTS * j,
            chunk(j)
        );
    }
    let dispatch = |body: &dyn Fn(&str) -> String| {
        let mut f =
            format!("    let w = {word};\n    let c = w / {per}u;\n    let e = w - c * {per}u;\n    switch c {{\n");
        for j in 1..chunks {
            f += &format!("        case {j}u: {{ {} }}\n", body(&chunk(j)));
        }
        f += &format!("        default: {{ {} }}\n    }}\n", body(&chunk(0)));
        f
    };
    let body = dispatch(&|a| format!("r = {};", load(a, "e")));
    s += &format!("fn ld_{name}(i: u32) -> f32 {{\n    var r: f32;\n{body}    return r;\n}}\n");
    if write {
        s += &format!("fn st_{name}(i: u32, v: f32) {{\n{}}}\n", dispatch(&|a| store(a, "e")));
        // A group of 4 never straddles chunks (chunk_bytes is a multiple of 256).
        s += &format!(
            "fn st4_{name}(j: u32, v: vec4<f32>) {{\n    let i = 4u * j;\n{}}}\n",
            dispatch(&|a| store4(a, "e"))
        );
    }
    s
}

/// `alias x_t` and `ld_x(j) -> vec4<f32>` (elements `4j..4j+4`) of a read-only binding viewed
/// as 4-element groups: `vec2<u32>` of packed bf16, `vec4<f16>` or `vec4<f32>`.
fn vec4_helpers(name: &str, slot: u32, dtype: DType, spec: &Spec) -> String {
    if spec.unaligned {
        // Scalar elements (`ld1_x`); `ldv_x(e, n)` gathers elements e..e+min(n, 4), zeros after.
        let mut s = binding_helpers(name, slot, dtype, Access::Read, spec)
            .replace(&format!("fn ld_{name}("), &format!("fn ld1_{name}("));
        s += &format!(
            "fn ldv_{name}(e: u32, n: u32) -> vec4<f32> {{\n    var r = vec4<f32>(0.0);\n    \
             for (var k = 0u; k < min(n, 4u); k++) {{\n        r[k] = ld1_{name}(e + k);\n    }}\n    return r;\n}}\n\
             fn ld_{name}(j: u32) -> vec4<f32> {{\n    return ldv_{name}(4u * j, 4u);\n}}\n"
        );
        return s;
    }
    let (alias, unit) = match dtype {
        DType::F16 => ("vec4<f16>", 8),
        DType::BF16 => ("vec2<u32>", 8),
        _ => ("vec4<f32>", 16),
    };
    let load = |a: &str, e: &str| match dtype {
        DType::F16 => format!("vec4<f32>({a}[{e}])"),
        DType::BF16 => format!("bf16x4({a}[{e}])"),
        _ => format!("{a}[{e}]"),
    };
    let chunks = spec.chunks_of(slot);
    // ldv_x(e, n): the group starting at element e (a multiple of 4 here; n >= 4 is implied).
    let mut s = format!(
        "alias {name}_t = {alias};\nfn ldv_{name}(e: u32, n: u32) -> vec4<f32> {{\n    return ld_{name}(e >> 2u);\n}}\n"
    );
    if chunks <= 1 {
        s += &format!("fn ld_{name}(j: u32) -> vec4<f32> {{\n    return {};\n}}\n", load(name, "j"));
        return s;
    }
    let per = spec.chunk_bytes / unit;
    let chunk = |j: u32| if j == 0 { name.to_string() } else { format!("{name}_c{j}") };
    for j in 1..chunks {
        s += &format!(
            "@group(0) @binding({}) var<storage, read> {}: array<{name}_t>;\n",
            slot + CHUNK_SLOTS * j,
            chunk(j)
        );
    }
    s += &format!(
        "fn ld_{name}(j: u32) -> vec4<f32> {{\n    var r: vec4<f32>;\n    let c = j / {per}u;\n    \
         let e = j - c * {per}u;\n    switch c {{\n"
    );
    for j in 1..chunks {
        s += &format!("        case {j}u: {{ r = {}; }}\n", load(&chunk(j), "e"));
    }
    s += &format!("        default: {{ r = {}; }}\n    }}\n    return r;\n}}\n", load(&chunk(0), "e"));
    s
}

/// Dims of a query row one workgroup of the split-K merge combines (`MERGE_DIMS` in WGSL).
pub(crate) const MERGE_DIMS: usize = 32;
/// The most splits a decode makes (`MERGE_MAX_SPLITS`: the merge keeps their weights in
/// workgroup memory).
pub(crate) const MERGE_MAX_SPLITS: usize = 2048;
/// Invocations that sum one Quest score (`QS_TEAM` of blocks.wgsl's `quest_scores`).
pub(crate) const QUEST_SCORE_LANES: usize = 32;

/// The assembled WGSL module of `kernel`'s family for `spec`.
pub(crate) fn wgsl_source(kernel: Kernel, spec: &Spec) -> String {
    let fam = kernel.family();
    let uses_f16 = fam.floats.iter().any(|&(_, _, role, _)| spec.dtype_of(role) == DType::F16);
    let mut src = String::new();
    if uses_f16 {
        src += "enable f16;\n";
    }
    src += fam.params;
    src += &format!("\n// spec prelude: {spec:?}\nconst HEAD_DIM: u32 = {}u;\n", spec.head_dim.max(1));
    // Layout constants the host sizes dispatches and scratch by: one definition, here.
    src += &format!(
        "const MERGE_DIMS: u32 = {MERGE_DIMS}u;\nconst MERGE_MAX_SPLITS: u32 = {MERGE_MAX_SPLITS}u;\n\
         const QS_TEAM: u32 = {QUEST_SCORE_LANES}u;\n"
    );
    if fam.splitk || fam.name == PREFILL.name {
        let red = spec.reduction_words(kernel);
        src += &format!(
            "const GROUP: u32 = {}u;\nconst TEAM: u32 = {}u;\nconst KB: u32 = {}u;\nconst SUBGROUPS: bool = {};\n\
             const RED_SIZE: u32 = {red}u;\nconst ALIGNED: bool = {};\n",
            spec.group,
            spec.team,
            spec.keys_per_step.max(1),
            spec.subgroups,
            !spec.unaligned
        );
        src += if spec.subgroups {
            "fn sg_xor(x: f32, o: u32) -> f32 {\n    return subgroupShuffleXor(x, o);\n}\n"
        } else {
            "fn sg_xor(x: f32, o: u32) -> f32 {\n    return x;\n}\n"
        };
    }
    for &(name, slot, role, access) in fam.floats {
        src += &binding_helpers(name, slot, spec.dtype_of(role), access, spec);
    }
    src += "\n";
    src += COMMON;
    if fam.rowselect {
        src += "\n";
        src += ROWSELECT;
    }
    if fam.splitk {
        src += "\n";
        src += SPLITK;
    }
    src += "\n";
    src += fam.body;
    src
}

#[cfg(test)]
mod tests {
    //! No GPU needed: every kernel, assembled for every storage dtype, must pass naga's
    //! validator, and the bindings its entry point uses must match the layout table above.
    use super::*;

    fn check(kernel: Kernel, spec: Spec) {
        let src = wgsl_source(kernel, &spec);
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{} {spec:?}: {}", kernel.label(), e.emit_to_string(&src)));
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{} {spec:?}: {}", kernel.label(), e.emit_to_string(&src)));
        let ep = module
            .entry_points
            .iter()
            .position(|e| e.name == kernel.entry())
            .unwrap_or_else(|| panic!("{}: no entry point", kernel.label()));
        let ep_info = info.get_entry_point(ep);
        for (handle, var) in module.global_variables.iter() {
            let Some(binding) = &var.binding else { continue };
            if ep_info[handle].is_empty() {
                continue;
            }
            let name = var.name.clone().unwrap_or_default();
            assert_eq!(binding.group, 0, "{}: {name}", kernel.label());
            if binding.binding == 0 {
                assert_eq!(var.space, naga::AddressSpace::Uniform, "{}: {name}", kernel.label());
                continue;
            }
            let slot = binding.binding % CHUNK_SLOTS;
            assert!(binding.binding / CHUNK_SLOTS < spec.chunks_of(slot), "{}: {name}", kernel.label());
            let chunkable = kernel.family().floats.iter().any(|f| name.starts_with(f.0) && f.1 == slot);
            assert_eq!(chunkable, kernel.chunked().contains(&slot), "{}: chunked slot of {name}", kernel.label());
            let access = kernel.bindings().get(slot as usize - 1).unwrap_or_else(|| {
                panic!("{}: binding {} ({name}) not in the layout", kernel.label(), binding.binding)
            });
            let naga::AddressSpace::Storage { access: declared } = var.space else {
                panic!("{}: {name} is not a storage buffer", kernel.label())
            };
            let writable = declared.contains(naga::StorageAccess::STORE);
            assert_eq!(writable, *access == Access::Write, "{}: access of {name}", kernel.label());
        }
    }

    #[test]
    fn every_kernel_validates_for_every_dtype() {
        for &kernel in Kernel::ALL {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                check(kernel, Spec::new(dtype).with_dim(128));
                check(kernel, Spec::new(dtype).with_stat(DType::F32).with_dim(64));
                check(
                    kernel,
                    Spec { chunks: 3, split_slots: !0, chunk_bytes: 1 << 27, ..Spec::new(dtype).with_dim(128) },
                );
                let decode = Spec { group: 4, team: 8, ..Spec::new(dtype).with_dim(128) };
                check(kernel, decode);
                check(kernel, Spec { subgroups: true, team: 32, ..decode });
                check(kernel, Spec { chunks: 2, split_slots: !0, chunk_bytes: 1 << 27, ..decode });
                check(kernel, Spec { chunks: 2, split_slots: 0b100, chunk_bytes: 1 << 27, ..decode });
                if kernel.family().splitk {
                    check(kernel, Spec { unaligned: true, ..decode });
                    check(kernel, Spec { unaligned: true, chunks: 2, split_slots: !0, chunk_bytes: 1 << 27, ..decode });
                }
            }
        }
    }

    #[test]
    fn head_dim_buckets() {
        assert_eq!(head_dim_bucket(1), 32);
        assert_eq!(head_dim_bucket(64), 64);
        assert_eq!(head_dim_bucket(65), 128);
    }
}
