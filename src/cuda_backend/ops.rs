//! `Backend for Cuda`: one launch sequence per op, all on the backend's one stream.
//!
//! Every method starts with [`ops::check`] (problem valid, every buffer of the right length and
//! element type), so the SAFETY argument of each launch is the same three facts: the argument
//! list matches the kernel's signature in `cuda/<family>.cu` (params by value, then inputs, then
//! outputs, then scratch, in that order and with those element types); every buffer holds the
//! elements the params describe (checked, or sized here for scratch); and the kernel guards every
//! index it derives from the launch shape against the params.

use super::{device_err, kernel_arg, Cuda, CudaBuffer, Family, Launch, Spec};
use crate::ops::{self, *};
use crate::params::{AttentionParams, BlockParams, SelectParams};
use crate::{Backend, DType, Error, HostData, Result};
use cudarc::driver::{CudaFunction, CudaSlice, CudaViewMut, DevicePtr, LaunchConfig, PushKernelArg};

/// Threads per block of one-thread-per-element kernels.
const ELEMENTWISE: u32 = 256;
/// Warps (query rows) per block of the one-warp-per-row kernels.
const ROW_WARPS: u32 = 4;
/// Warps per block of `snapkv_lse` (one block per window query).
const LSE_WARPS: u32 = 8;
/// Rows of decode attention below which keys are split across blocks (per SM).
const ROWS_PER_SM: usize = 8;
/// Threads of the grouped decode kernels (`DEC_WARPS` warps in `cuda/attention.cu`).
const DECODE_THREADS: u32 = 128;
/// Resident CTAs per SM assumed for the grouped decode kernel when the occupancy query fails.
const DECODE_CTAS_PER_SM: usize = 4;
/// Fewest keys per decode split, and the most splits (`KVS_MERGE_MAX_SPLITS` bounds the merge).
const DECODE_MIN_KEYS: usize = 128;
const DECODE_MAX_SPLITS: usize = 256;
/// Waves of resident CTAs and fewest keys per split of the tuned decode (`KVSPARSE_CUDA_DECODE_TUNE=1`).
const DECODE_TUNE_WAVES: usize = 4;
const DECODE_TUNE_MIN_KEYS: usize = 512;
/// Most blocks for `quest_union` (one shared-memory word per block, within the default 48 KiB).
pub(super) const QUEST_UNION_MAX_NB: usize = 12 * 1024;

/// Threads of `quest_select_kv_g*` (its `__launch_bounds__`).
const QUEST_SELECT_KV_THREADS: u32 = 256;

/// Most blocks per row `quest_select_kv_g*` stages in shared memory (32 KiB of means).
const QUEST_SELECT_KV_MAX_NB: usize = 8 * 1024;

/// Warps of `quest_decode_cluster_g*` (`QUEST_CLUSTER_WARPS`): one CTA an SM at its 255
/// registers a thread, so that the decode keeps as many bytes in flight per SM as the grouped
/// decode's two CTAs of 4 warps.
const QUEST_CLUSTER_WARPS: u32 = 8;
/// Selection items per thread of `quest_decode_cluster_g*` (`QUEST_CLUSTER_ITEMS`): a CTA scores
/// and ranks at most `32 * QUEST_CLUSTER_WARPS * QUEST_CLUSTER_ITEMS` blocks.
const QUEST_CLUSTER_ITEMS: usize = 4;
/// Cluster sizes `quest_decode_cluster_g*` may take, preferred first (16 is non-portable).
const QUEST_CLUSTER_SIZES: [u32; 2] = [16, 8];

/// `KVSPARSE_CUDA_QUEST_CLUSTER`: `1` runs Quest's per-kv-head decode as the one-launch
/// `quest_decode_cluster_g*` where the device grants a cluster size, `8` or `16` with that size
/// only; unset or `0`, it stays on the three launches (`quest_select_kv_g*`, the grouped decode,
/// the merge), which measured as fast on the H200 (BENCHMARKS.md runs 53-55).
fn quest_cluster_switch() -> Option<u32> {
    static V: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *V.get_or_init(|| crate::env_number("KVSPARSE_CUDA_QUEST_CLUSTER", |_| true))
}

/// The sparse attention of Quest with one block set per kv head: every query head of kv head h
/// attends to the `n_sel` blocks of row h of `selected` (`block_size` tokens an entry).
fn quest_kv_params(op: &QuestDecode) -> AttentionParams {
    let mut p = AttentionSparse {
        q_heads: op.q_heads,
        kv_heads: op.kv_heads,
        seq: op.seq,
        dim: op.dim,
        idx_heads: op.kv_heads,
        n_idx: op.n_sel(),
        scale: op.scale,
        dtype: op.dtype,
    }
    .params();
    p.block_size = op.select.block_size as u32;
    p
}

/// Whether `quest_select_kv_g*` takes Quest's per-kv-head selection: a group of at most 8 query
/// heads, rows of a power-of-two number (<= 32) of 16-byte vectors, 1..=QUEST_SELECT_KV_MAX_NB
/// blocks, kv heads within the grid's y extent (65535, also within its ARRIVAL_SLOTS counters).
fn quest_select_kv_fits(op: &QuestDecode) -> bool {
    let ve = 16 / op.dtype.size();
    let lanes = op.dim / ve;
    !legacy()
        && !quest_unfused()
        && (1..=super::ARRIVAL_SLOTS.min(65_535)).contains(&op.kv_heads)
        && op.q_heads / op.kv_heads <= 8
        && op.dim.is_multiple_of(ve)
        && lanes.is_power_of_two()
        && lanes <= 32
        && (1..=QUEST_SELECT_KV_MAX_NB).contains(&op.nb())
}
/// Multi-CTA top-k: threads of `topk_hist` / `topk_gather` / `topk_sel_hist` /
/// `topk_sel_compact`, items per thread and round (`KVS_COMPACT_ITEMS`), fewest items per CTA,
/// the sorted run (`TOPK_RUN`) and the run sort's threads (`TOPK_SORT_THREADS`) in `cuda/topk.cu`.
const TOPK_THREADS: u32 = 256;
const TOPK_GATHER_ITEMS: usize = 8;
const TOPK_MIN_SLICE: usize = 2048;
const TOPK_RUN: usize = 4096;
const TOPK_SORT_THREADS: u32 = 1024;
/// Global histogram words per row (`TOPK_GH`: 4 passes of up to 2048 bins) and per-CTA
/// histogram words of the last pass (`TOPK_LB`) in `cuda/topk.cu`.
const TOPK_GH: usize = 4 * 2048;
const TOPK_LB: usize = 1024;
/// Most rows for the tuned top-k (its workspace holds 32 KiB of histograms per row and 4 KiB per
/// CTA); more rows go to `topk` (one CTA per row already fills the device).
const TOPK_TUNE_MAX_ROWS: usize = 4096;
/// Select design (`topk_sel_*` in `cuda/topk.cu`): resident CTAs per SM aimed at by the passes
/// over the row (256 threads each, so 4 use half an SM's threads: enough loads in flight for
/// latency-bound passes of 0.5-4 MiB), the words of the row histograms (`TOPK_SEL_GH`) and of a
/// CTA's record (`TOPK_REC`), the candidates stored per row (`TOPK_CAND_CAP`), the most pairs
/// sorted in shared memory (`TOPK_TILE`), the finish's threads (`TOPK_FINISH_THREADS`) and its
/// shared words after the tile (`TOPK_AUX`).
const TOPK_SEL_CTAS_PER_SM: usize = 4;
const TOPK_SEL_GH: usize = 2 * 256;
const TOPK_REC: usize = 257;
const TOPK_CAND_CAP: usize = 4096;
const TOPK_TILE: usize = 8192;
const TOPK_FINISH_THREADS: u32 = 1024;
const TOPK_AUX: usize = 32 * 257;
/// Most CTAs a row of `topk_sel_finish` (its ranks spread over them).
const TOPK_FINISH_MAX_CTAS: usize = 32;
/// The constants the kernels share with this launch code (block sizes, items per thread,
/// workspace and shared-memory layouts), as `(CUDA macro, value)`: `kernels::assemble` writes
/// them as `#define`s ahead of every module, so the two sides are one definition (the kernels
/// `static_assert` what they derive from them).
pub(super) fn kernel_defines() -> [(&'static str, usize); 25] {
    [
        ("TOPK_SEL_THREADS", TOPK_THREADS as usize),
        ("KVS_COMPACT_ITEMS", TOPK_GATHER_ITEMS),
        ("TOPK_RUN", TOPK_RUN),
        ("TOPK_SORT_THREADS", TOPK_SORT_THREADS as usize),
        ("TOPK_GH", TOPK_GH),
        ("TOPK_LB", TOPK_LB),
        ("TOPK_SEL_GH", TOPK_SEL_GH),
        ("TOPK_REC", TOPK_REC),
        ("TOPK_CAND_CAP", TOPK_CAND_CAP),
        ("TOPK_TILE", TOPK_TILE),
        ("TOPK_FINISH_THREADS", TOPK_FINISH_THREADS as usize),
        ("TOPK_AUX", TOPK_AUX),
        ("KVS_MERGE_THREADS", MERGE_THREADS as usize),
        ("KVS_MERGE_MAX_SPLITS", DECODE_MAX_SPLITS),
        ("KVS_SELECT_REG_ITEMS", SELECT_REG_ITEMS),
        ("QUEST_SELECT_KV_THREADS", QUEST_SELECT_KV_THREADS as usize),
        ("QUEST_CLUSTER_WARPS", QUEST_CLUSTER_WARPS as usize),
        ("QUEST_CLUSTER_ITEMS", QUEST_CLUSTER_ITEMS),
        ("MD_KT", DECODE_MMA_KEY_TILE),
        ("PF_BM", PREFILL_ROWS as usize),
        ("PF_THREADS", PREFILL_THREADS as usize),
        ("PF_MAX_NB", PREFILL_MAX_NB),
        ("MOBA_BUCKET_TOKENS", MOBA_BUCKET_TOKENS as usize),
        ("ROUTE_THREADS", ROUTE_THREADS as usize),
        ("ROUTE_MAX_NB", ROUTE_MAX_NB),
    ]
}

/// Row length from which top-k uses several CTAs per row by default.
const TOPK_MULTI_CTA_MIN_N: usize = 16384;
/// Threads of `attention_merge_rows` (`KVS_MERGE_THREADS`).
const MERGE_THREADS: u32 = 512;
/// One-pass look-back scans (`cuda/decay.cu`): lanes per CTA (`KVS_SCAN_TILE`), warps per CTA
/// (`KVS_SCAN_WARPS`), and time steps per CTA: warps x steps per thread (`KVS_SCAN_DECAY_R`,
/// `KVS_SCAN_RKV_R`).
const SCAN_TILE: usize = 32;
const SCAN_WARPS: u32 = 8;
const SCAN_STEPS_DECAY: usize = SCAN_WARPS as usize * 16;
const SCAN_STEPS_RATPLUS: usize = SCAN_WARPS as usize * 8;

// Run-time switches read once (`crate::env_switch`): `KVSPARSE_CUDA_LEGACY=1` routes decode and
// the scans back to the first, one-warp-per-row kernels, and `KVSPARSE_CUDA_NO_MMA=1` routes
// prefill and SnapKV scoring back from the tensor-core kernels to the CUDA-core ones (to time
// both in one GPU run, and as a fallback should a device misbehave).

/// `KVSPARSE_CUDA_QUEST_UNFUSED=1`: Quest's per-kv-head selection as three launches
/// (`quest_scores_grouped_g*`, `quest_group_mean`, `select_blocks`) instead of
/// `quest_select_kv_g*` (for timing beside the default; same results).
fn quest_unfused() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| crate::env_switch("KVSPARSE_CUDA_QUEST_UNFUSED", false))
}

fn legacy() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| crate::env_switch("KVSPARSE_CUDA_LEGACY", false))
}

/// `KVSPARSE_CUDA_DECODE_TUNE=1`: the grouped decode goes to `attention_decode_t*` (at least 4
/// CTAs per SM, streaming K/V loads) with about [`DECODE_TUNE_WAVES`] waves of splits (opt-in,
/// for timing beside the default; same results).
fn decode_tune() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| crate::env_switch("KVSPARSE_CUDA_DECODE_TUNE", false))
}

/// Whether the grouped decode goes to the tensor-core `attention_decode_mma` where it fits
/// ([`decode_mma_fits`]), with the same grid, arguments and split count: on by default
/// (validated and measured on the H200: dense decode at 128K in 150.5 µs against 221.5 µs for
/// `attention_decode_g4`, BENCHMARKS.md run 15); `KVSPARSE_CUDA_NO_MMA=1` (every tensor-core
/// path) or `KVSPARSE_CUDA_DECODE_MMA=0` (this one) turn it off. Results differ from the CUDA-core
/// kernel by the rounding of P to the storage type, as the tensor-core prefill's do.
fn decode_mma() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| tensor_cores() && crate::env_switch("KVSPARSE_CUDA_DECODE_MMA", true))
}

/// Keys a warp of the tensor-core decode takes per tile (`MD_KT`: `attention_decode_mma`,
/// `quest_decode_cluster_g*`); each warp stages the tile's V rows (D + 8 elements each, the
/// padding of `PF_LD`) in shared memory.
const DECODE_MMA_KEY_TILE: usize = 32;

/// Query heads per CTA of `attention_decode_mma` (`MD_GM` in `cuda/attention.cu`: the A rows
/// it fills of the 16 of an m16n8k16 tile).
const DECODE_MMA_MAX_HPC: usize = 8;

/// Whether `attention_decode_mma` covers a grouped decode of `hpc` heads per CTA: f16/bf16,
/// D = 64 or 128 (the tensor-core module), 2, 4 or 8 heads (a group of one stays on the
/// CUDA-core kernels: 15 of the 16 rows would be padding).
fn decode_mma_fits(spec: Spec, dim: usize, hpc: usize) -> bool {
    decode_mma()
        && super::kernels::prefill_mma_fits(&spec)
        && dim == 32 * spec.dpl as usize
        && hpc.is_power_of_two()
        && (2..=DECODE_MMA_MAX_HPC).contains(&hpc)
}

/// `KVSPARSE_CUDA_TOPK_TUNE=1`: every top-k shape (not only rows of `TOPK_MULTI_CTA_MIN_N`
/// scores or more) goes to the multi-CTA kernels of [`topk_path`] instead of the
/// one-CTA-per-row `topk` (opt-in, for timing and testing beside the default; same results).
fn topk_tune() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| crate::env_switch("KVSPARSE_CUDA_TOPK_TUNE", false))
}

/// How the multi-CTA top-k finds and sorts the top k (`KVSPARSE_CUDA_TOPK`; same results).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopkPath {
    /// The default: 2 histogram passes fix 16 bits of the threshold, a compaction pass stores
    /// the sure items and the few candidates, one CTA per row selects among the candidates and
    /// radix-sorts the out_k pairs in shared memory (`topk_sel_*`).
    Select,
    /// `runs`: 4 radix passes of 8-bit digits over the row, `topk_gather`, and the sort as its
    /// own `topk_sort_runs` launch (the default until the select design; H200: 63.1 µs at
    /// 1 x 131072, k 2048, and 99.6 µs at 8 x 131072, k 8192, BENCHMARKS.md run 13).
    Runs,
    /// `fused`: 3 passes of 11/11/10 bits with the sort fused into the gather's last CTA
    /// (measured slower than `runs`: 81.0 / 119.4 µs, run 13, its larger histograms costing
    /// more than the launches it saves).
    Fused,
}

fn topk_path() -> TopkPath {
    static PATH: std::sync::OnceLock<TopkPath> = std::sync::OnceLock::new();
    *PATH.get_or_init(|| match std::env::var("KVSPARSE_CUDA_TOPK").as_deref().map(str::trim) {
        Ok("runs") => TopkPath::Runs,
        Ok("fused") => TopkPath::Fused,
        _ => TopkPath::Select,
    })
}

/// Workspace of the radix-pass top-k in u32 words (`TopkWs` in `cuda/topk.cu`): the words to
/// zero (histograms `TOPK_GH` and 2 counters per row) and the offset of the pairs (after the
/// per-CTA histograms `TOPK_LB`, rounded up to an even word).
fn topk_ws_words(rows: usize, ctas: usize) -> (usize, usize) {
    let zero = rows * (TOPK_GH + 2);
    (zero, (zero + rows * ctas * TOPK_LB).next_multiple_of(2))
}

/// Workspace of the select top-k in u32 words (`TopkSelWs` in `cuda/topk.cu`).
struct TopkSelWs {
    /// Words to zero: the row histograms.
    zero: usize,
    /// Offset of `pairs` (out_k > `TOPK_TILE` only).
    pairs: usize,
    /// All words.
    total: usize,
}

fn topk_sel_ws(rows: usize, ctas: usize, n: usize, m: usize) -> TopkSelWs {
    let zero = rows * TOPK_SEL_GH;
    let sure = (zero + rows * ctas * TOPK_REC).next_multiple_of(2);
    let pairs = sure + 2 * rows * (m + n.min(TOPK_CAND_CAP));
    let total = pairs + if m > TOPK_TILE { 2 * rows * m } else { 0 };
    TopkSelWs { zero, pairs, total }
}

/// `KVSPARSE_CUDA_SCAN=chunked`: decay_scan and ratplus_kv with few lanes go to the three-pass
/// chunked scans (`*_chunks`, `*_carry`, `*_apply`: inputs read twice) instead of the one-pass
/// look-back scans (`*_onepass`), to time both in one run; same results up to the f32 rounding
/// of the run-start states.
fn scan_chunked() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| std::env::var("KVSPARSE_CUDA_SCAN").is_ok_and(|v| v.trim() == "chunked"))
}

/// How decay_scan / ratplus_kv walk the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScanPath {
    /// One thread per lane over the whole sequence (`decay_scan`, `ratplus_kv`).
    Serial,
    /// `n_chunks` runs of `chunk` steps, three passes (`*_chunks`, `*_carry`, `*_apply`).
    Chunked { n_chunks: usize, chunk: usize },
    /// One pass with decoupled look-back between runs (`*_onepass`).
    OnePass,
}

fn tensor_cores() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| !crate::env_switch("KVSPARSE_CUDA_NO_MMA", false))
}

/// Query rows per CTA of the tensor-core prefill (`PF_BM`, also its key tile `PF_BN`), its
/// threads, and the most key blocks its MoBA variant keeps row sets for (`PF_MAX_NB`).
const PREFILL_ROWS: u32 = 64;
const PREFILL_THREADS: u32 = 128;
const PREFILL_MAX_NB: usize = 1024;

/// Dynamic shared memory of `attention_prefill_mma_wide`, its `PF_WIDE_SMEM_BYTES`: 2 x 64 query
/// rows, then a K and a V tile of 64 keys (PF_BN = PREFILL_ROWS), rows of D + 8 elements (PF_LD).
fn prefill_wide_smem(dim: usize, dtype: DType) -> usize {
    (2 * PREFILL_ROWS as usize + 2 * PREFILL_ROWS as usize) * (dim + 8) * dtype.size()
}

/// Dense prefill of more than one 64-row tile runs on `attention_prefill_mma_wide` (128 query
/// rows a CTA) unless `KVSPARSE_CUDA_PREFILL_WIDE=0` keeps `attention_prefill_mma` (64): on the
/// H200 (run 60, 32K, bf16, D 128) 29.0 ms against 36.3 ms, 1.25x.
fn prefill_wide(q_len: usize) -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    q_len > PREFILL_ROWS as usize && *FLAG.get_or_init(|| crate::env_switch("KVSPARSE_CUDA_PREFILL_WIDE", true))
}

/// Whether prefill goes to the tensor-core kernels (validated on an H100 on 2026-11-28: golden
/// cases and the equivalence suite): f16/bf16, D = 64 or 128, unless `KVSPARSE_CUDA_NO_MMA=1`.
fn prefill_mma_on(spec: Spec, dim: usize) -> bool {
    tensor_cores() && super::kernels::prefill_mma_fits(&spec) && dim == 32 * spec.dpl as usize
}

/// Whether the grouped decode kernels cover this head: D = 32 * dpl with dpl <= 8 (one 16-byte
/// vector per lane, D in {32, 64, 128, 256}).
pub(super) fn decode_fits(spec: Spec, dim: usize) -> bool {
    !legacy() && spec.dpl <= super::kernels::DECODE_MAX_DPL && dim == 32 * spec.dpl as usize
}

/// Query heads one decode CTA serves: the largest divisor of the group size that is at most 8
/// (the kernels' register tiles), and its kernel `attention_decode_g{1,2,4,8}` (or the tuned
/// `attention_decode_t{1,2,4,8}` under `KVSPARSE_CUDA_DECODE_TUNE=1`).
fn decode_chunk(group: usize) -> (usize, &'static str) {
    let hpc = (1..=group.min(8)).rev().find(|d| group.is_multiple_of(*d)).unwrap_or(1);
    (hpc, decode_entry(hpc))
}

/// The decode kernel for `hpc` query heads per CTA.
fn decode_entry(hpc: usize) -> &'static str {
    match (hpc.next_power_of_two(), decode_tune()) {
        (1, false) => "attention_decode_g1",
        (2, false) => "attention_decode_g2",
        (4, false) => "attention_decode_g4",
        (_, false) => "attention_decode_g8",
        (1, true) => "attention_decode_t1",
        (2, true) => "attention_decode_t2",
        (4, true) => "attention_decode_t4",
        (_, true) => "attention_decode_t8",
    }
}

/// Scratch and launch shape of a one-pass scan (see `Cuda::lookback`): `sync` = ticket counter
/// and run flags (zeroed), `agg` = each run's (A, B) per lane and state, `incl` = the state after
/// each run.
struct LookBack {
    sync: CudaSlice<u8>,
    agg: CudaSlice<u8>,
    incl: CudaSlice<u8>,
    n_chunks: u32,
    cfg: LaunchConfig,
}

/// How the decode kernel finds its keys (`mode` of `attention_decode_g*`).
#[derive(Clone, Copy)]
pub(super) enum DecodeKeys<'a> {
    /// Keys 0..kv_len.
    Dense,
    /// The index rows (block_size tokens per entry); per query head when `idx_heads == q_heads`.
    Sparse(&'a CudaSlice<u8>),
    /// A kv head's index row shared by its group (`quest_union`): indices, a per-entry bit mask
    /// of the heads that attend it ([Hkv, n_idx] u32) and the live entries per row ([Hkv] u32).
    Masked(&'a CudaSlice<u8>, &'a CudaSlice<u8>, &'a CudaSlice<u8>),
}

/// One thread per element, `n >= 1`.
pub(super) fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(ELEMENTWISE).max(1), 1, 1),
        block_dim: (ELEMENTWISE, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row, `ROW_WARPS` rows per block; `grid_y` blocks along y (split-K).
pub(super) fn warp_rows(rows: usize, grid_y: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(ROW_WARPS).max(1), grid_y.max(1), 1),
        block_dim: (32 * ROW_WARPS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Items per thread of `block_select_row`'s register path (`KVS_SELECT_REG_ITEMS`).
const SELECT_REG_ITEMS: usize = 8;

/// One block per row of a `block_select_row` kernel; threads sized so that a row of up to 8192
/// items takes the register path with SELECT_REG_ITEMS items per thread (a multiple of 32, at
/// most 1024): fewer warps per barrier of the select's ~20 (a 1024-thread CTA per 2048-block
/// Quest row issued one instruction per warp every 23 cycles, 9 of them at barriers, H200 ncu).
pub(super) fn block_rows(rows: usize, row_len: usize) -> LaunchConfig {
    let threads = (row_len.div_ceil(SELECT_REG_ITEMS).div_ceil(32) * 32).clamp(32, 1024) as u32;
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

pub(super) fn head_spec(op: &'static str, dtype: DType, dim: usize) -> Result<Spec> {
    Spec::head(dtype, dim).ok_or_else(|| Error::TooLarge {
        backend: "cuda",
        what: format!("{op}: head dim {dim} exceeds {} (register-resident head vectors)", super::kernels::MAX_HEAD_DIM),
    })
}

/// A batch as the z extent of a grid (at most 65535).
fn grid_z(batch: usize) -> Result<u32> {
    if batch > 65_535 {
        return Err(Error::TooLarge {
            backend: "cuda",
            what: format!("{batch} sequences exceed the 65535 grid layers"),
        });
    }
    Ok(batch.max(1) as u32)
}

fn grid_y(op: &'static str, n: usize) -> Result<u32> {
    if n > 65_535 {
        return Err(Error::TooLarge { backend: "cuda", what: format!("{op}: {n} heads exceed the 65535 grid rows") });
    }
    Ok(n as u32)
}

impl Cuda {
    /// Key splits (flash-decoding) for `rows` attention rows over at most `keys` keys each:
    /// enough blocks to fill the device, chunks of at least 128 keys, at most 64 splits. Depends
    /// on the key capacity the caller passes, not on the live context where avoidable.
    pub(super) fn splits(&self, rows: usize, keys: usize) -> u32 {
        let target = ROWS_PER_SM * self.sm_count as usize;
        if rows >= target || keys <= 256 {
            return 1;
        }
        target.div_ceil(rows).min(keys.div_ceil(128)).clamp(1, 64) as u32
    }

    /// Scratch for the split-K partials of `rows` attention rows of width `dim`: `(out, lse)`
    /// with `rows * splits` entries when `splits > 1`, one placeholder entry otherwise (the
    /// kernels take the pointers either way and only write them when split).
    pub(super) fn split_partials(
        &self,
        rows: usize,
        splits: u32,
        dim: usize,
    ) -> Result<(CudaSlice<u8>, CudaSlice<u8>)> {
        let parts = if splits > 1 { rows * splits as usize } else { 1 };
        Ok((self.scratch(4 * parts * dim)?, self.scratch(4 * parts)?))
    }

    /// Runs of the chunked scans for `lanes` independent recurrences over `seq` steps: enough
    /// (run, lane-tile) CTAs for about 8 per SM, runs of at least 64 steps; `(1, seq)` means the
    /// serial kernel (already enough lanes, or too short a sequence).
    fn scan_runs(&self, lanes: usize, seq: usize) -> (usize, usize) {
        let tiles = lanes.div_ceil(ELEMENTWISE as usize).max(1);
        let want = (8 * self.sm_count as usize).div_ceil(tiles);
        let n = want.min(seq / 64).max(1);
        if n <= 1 {
            return (1, seq);
        }
        let chunk = seq.div_ceil(n);
        (seq.div_ceil(chunk), chunk)
    }

    /// The scan path for `lanes` independent recurrences over `seq` steps: serial when the lanes
    /// alone fill the device (or `KVSPARSE_CUDA_LEGACY=1`), else the one-pass look-back scan,
    /// or the chunked scan of [`Self::scan_runs`] under `KVSPARSE_CUDA_SCAN=chunked`.
    fn scan_path(&self, lanes: usize, seq: usize) -> ScanPath {
        if legacy() || lanes.div_ceil(ELEMENTWISE as usize) >= 8 * self.sm_count as usize {
            return ScanPath::Serial;
        }
        if !scan_chunked() {
            return ScanPath::OnePass;
        }
        match self.scan_runs(lanes, seq) {
            (1, _) => ScanPath::Serial,
            (n_chunks, chunk) => ScanPath::Chunked { n_chunks, chunk },
        }
    }

    /// Launch shape and scratch of a one-pass scan over `lanes` lanes of `states` states and
    /// `seq` steps, `steps` per CTA: one CTA per (lane tile of 32, run), the ticket counter and
    /// run flags zeroed by a stream-ordered memset.
    fn lookback(&self, lanes: usize, seq: usize, steps: usize, states: usize) -> Result<LookBack> {
        let tiles = lanes.div_ceil(SCAN_TILE);
        let n_chunks = seq.div_ceil(steps);
        let ctas = tiles * n_chunks;
        if n_chunks > u32::MAX as usize || ctas >= i32::MAX as usize {
            return Err(Error::TooLarge { backend: "cuda", what: format!("one-pass scan of {ctas} runs") });
        }
        let sync = self.scratch_zeroed_head(4 * (1 + ctas), 4 * (1 + ctas), "scan flags")?;
        let values = states * n_chunks * tiles * SCAN_TILE;
        Ok(LookBack {
            sync,
            agg: self.scratch(8 * values)?,
            incl: self.scratch(4 * values)?,
            n_chunks: n_chunks as u32,
            cfg: LaunchConfig {
                grid_dim: (ctas as u32, 1, 1),
                block_dim: (32 * SCAN_WARPS, 1, 1),
                shared_mem_bytes: 0,
            },
        })
    }

    /// SnapKV passes 1 and 2 on tensor cores: `snapkv_lse_mma` (each window row's lse over each
    /// 64-key tile, every tile and kv head a CTA) and `snapkv_lse_merge` (the tiles folded per
    /// row), then `snapkv_colsum_mma`. The caller checks `prefill_mma_on` and window % 16 == 0.
    fn snapkv_scores_mma(
        &self,
        op: &SnapKvCompress,
        spec: Spec,
        q_obs: &CudaBuffer,
        k: &CudaBuffer,
        row_lse: &mut CudaSlice<u8>,
        colsum: &mut CudaSlice<u8>,
    ) -> Result<()> {
        let sp = op.params();
        let rows = op.q_heads * sp.window as usize;
        let n_tiles = op.seq.div_ceil(64);
        let kv_grid = grid_y(SnapKvCompress::NAME, op.kv_heads)?;
        let mut part_lse = self.scratch(4 * rows * n_tiles)?;
        let f = self.function(Family::SnapKv, spec, "snapkv_lse_mma")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&sp).arg(&q_obs.slice).arg(&k.slice).arg(&mut part_lse);
        let cfg = LaunchConfig { grid_dim: (n_tiles as u32, kv_grid, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches `snapkv_lse_mma(p, q_obs, k, part_lse)`; q_obs [Hq, w, D], k [Hkv, T, D]
        // (checked; f16/bf16, D in {64, 128}, w % 16 == 0), part_lse sized Hq*w*n_tiles f32 here
        // with n_tiles = gridDim.x = ceil(T / 64); key rows staged only below T.
        unsafe { b.launch(cfg) }.map_err(|e| device_err("snapkv_lse_mma", e))?;
        let n_tiles32 = n_tiles as u32;
        let f = self.function(Family::SnapKv, spec, "snapkv_lse_merge")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&sp).arg(&part_lse).arg(&mut *row_lse).arg(&n_tiles32);
        // SAFETY: matches `snapkv_lse_merge(p, part_lse, row_lse, n_tiles)`; part_lse written
        // above (Hq*w rows of n_tiles), row_lse sized Hq*w f32 by the caller; one warp per row,
        // guarded row < Hq*w.
        unsafe { b.launch(warp_rows(rows, 1)) }.map_err(|e| device_err("snapkv_lse_merge", e))?;
        let n_prefix = sp.n_prefix as usize;
        let f = self.function(Family::SnapKv, spec, "snapkv_colsum_mma")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&sp).arg(&q_obs.slice).arg(&k.slice).arg(&*row_lse).arg(colsum);
        let cfg = LaunchConfig {
            grid_dim: ((n_prefix as u32).div_ceil(64), kv_grid, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches `snapkv_colsum_mma(p, q_obs, k, row_lse, colsum)`; row_lse written
        // above, colsum sized Hq*n_prefix f32 by the caller; window % 16 == 0 (checked by the
        // caller) so every 16-row fragment lies inside the window; keys guarded by n_prefix.
        unsafe { b.launch(cfg) }.map_err(|e| device_err("snapkv_colsum_mma", e))?;
        Ok(())
    }

    /// CUDA events recorded around the work `f` enqueues, waited for.
    fn time_between_events(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<std::time::Duration> {
        let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.ctx.new_event(timed).map_err(|e| device_err("create event", e))?;
        let end = self.ctx.new_event(timed).map_err(|e| device_err("create event", e))?;
        start.record(&self.stream).map_err(|e| device_err("record event", e))?;
        f()?;
        end.record(&self.stream).map_err(|e| device_err("record event", e))?;
        end.synchronize().map_err(|e| device_err("event synchronize", e))?;
        let ms = start.elapsed_ms(&end).map_err(|e| device_err("event elapsed", e))?;
        Ok(std::time::Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3))
    }

    /// Enqueues what precedes a timed graph replay: a read of four times L2's size (none of the
    /// timed work's data stays in L2: its working set counts as read from memory even when it
    /// would fit), then a 10 µs spin, so that the host has issued the replay before the start
    /// event fires behind them.
    pub(crate) fn flush_l2_and_wait(&self) -> Result<()> {
        let mut guard = self
            .l2_flush
            .lock()
            .map_err(|_| Error::Device { backend: "cuda", message: "l2 flush buffer: lock poisoned".into() })?;
        if guard.is_none() {
            let bytes = (4 * self.l2_bytes).max(64 << 20);
            let buf = self.stream.alloc_zeros::<u8>(bytes).map_err(|e| device_err("alloc l2 flush", e))?;
            let sink = self.stream.alloc_zeros::<u8>(4).map_err(|e| device_err("alloc l2 flush", e))?;
            *guard = Some((buf, sink));
        }
        let Some((buf, sink)) = guard.as_mut() else { unreachable!("allocated above") };
        let words = (buf.len() / 16) as u64;
        let f = self.function(Family::Timing, Spec::NONE, "timing_flush_l2")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&*buf).arg(&words).arg(sink);
        let cfg = LaunchConfig { grid_dim: (4 * self.sm_count, 1, 1), block_dim: (512, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches `timing_flush_l2(buf, n, sink)`: buf holds n 16-byte words (its
        // allocation is a multiple of 16 bytes), sink one u32; grid-stride loop guarded by n.
        unsafe { b.launch(cfg) }.map_err(|e| device_err("timing_flush_l2", e))?;
        let cycles = u64::from(self.clock_khz) * 10; // 10 µs at the SM clock
        let f = self.function(Family::Timing, Spec::NONE, "timing_spin")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&cycles);
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches `timing_spin(cycles)`; touches no memory.
        unsafe { b.launch(cfg) }.map_err(|e| device_err("timing_spin", e))?;
        Ok(())
    }

    /// Grouped flash-decoding (`attention_decode_g*` then `attention_merge_rows`); `p` has
    /// `q_len = 1` and, for index sets, `idx_heads`, `n_idx` and `block_size` set; over `batch`
    /// sequences (grid z; every tensor gains a leading batch dimension, `p.kv_len` is the
    /// per-sequence key capacity) whose live key counts are read from `lens` ([batch] i32) on
    /// the device when given (the single-sequence ops pass 1 and `None`). The split count
    /// depends on the device, the batch, the head counts and the key capacity only, never on
    /// `lens`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode(
        &self,
        spec: Spec,
        mut p: AttentionParams,
        keys: DecodeKeys<'_>,
        batch: usize,
        lens: Option<&CudaSlice<u8>>,
        q: &CudaBuffer,
        k: &CudaBuffer,
        v: &CudaBuffer,
        out: &mut CudaBuffer,
        lse: &mut CudaBuffer,
    ) -> Result<()> {
        let batch_z = grid_z(batch)?;
        let (q_heads, kv_heads) = (p.q_heads as usize, p.kv_heads as usize);
        let group = q_heads / kv_heads.max(1);
        let shared = match keys {
            DecodeKeys::Dense | DecodeKeys::Masked(..) => true,
            DecodeKeys::Sparse(_) => p.idx_heads != p.q_heads || group == 1,
        };
        let (hpc, entry) = if shared { decode_chunk(group) } else { (1, decode_entry(1)) };
        let entry = if decode_mma_fits(spec, p.dim as usize, hpc) { "attention_decode_mma" } else { entry };
        let chunks = q_heads / hpc;
        let capacity = match keys {
            DecodeKeys::Dense => p.kv_len as usize,
            _ => p.n_idx as usize * p.block_size.max(1) as usize,
        };
        let f = self.function(Family::Attention, spec, entry)?;
        // One full wave of resident CTAs (the register tile of g4/g8 allows 3 or 2 per SM), so
        // no split waits for a second wave; every split has the same length.
        let resident = self.resident_ctas(Family::Attention, spec, entry, DECODE_THREADS, DECODE_CTAS_PER_SM)?;
        let target = resident * self.sm_count as usize;
        let one_wave = (target / (chunks * batch)).min(capacity.div_ceil(DECODE_MIN_KEYS));
        let splits = if decode_tune() {
            // Up to DECODE_TUNE_WAVES waves at long contexts: CTAs that finish early (SMs differ
            // in clock and memory contention) pick up more splits instead of idling through the
            // slowest CTA's tail; splits of at least DECODE_TUNE_MIN_KEYS keys keep the per-CTA
            // fixed cost (q load, the cross-warp merge, the partial write) small against the
            // keys' bytes. Never fewer splits than the default.
            (DECODE_TUNE_WAVES * target)
                .div_ceil(chunks * batch)
                .min(capacity.div_ceil(DECODE_TUNE_MIN_KEYS))
                .max(one_wave)
        } else {
            one_wave
        };
        p.splits = splits.clamp(1, DECODE_MAX_SPLITS) as u32;
        let (mode, idx, hmask, counts) = match keys {
            // Unused pointers still need a valid device address: q stands in.
            DecodeKeys::Dense => (0u32, &q.slice, &q.slice, &q.slice),
            DecodeKeys::Sparse(i) => (1, i, &q.slice, &q.slice),
            DecodeKeys::Masked(i, m, c) => (2, i, m, c),
        };
        let rows = batch * q_heads;
        let (mut part_out, mut part_lse) = self.split_partials(rows, p.splits, p.dim as usize)?;
        let hpc32 = hpc as u32;
        let null: u64 = 0; // a null `const int*`: every key below kv_len is live
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&q.slice).arg(&k.slice).arg(&v.slice).arg(idx).arg(hmask).arg(counts);
        b.arg(&mut out.slice).arg(&mut lse.slice).arg(&mut part_out).arg(&mut part_lse).arg(&mode).arg(&hpc32);
        match lens {
            Some(l) => b.arg(l),
            None => b.arg(&null),
        };
        let cfg = LaunchConfig {
            grid_dim: (p.splits, chunks as u32, batch_z),
            block_dim: (DECODE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches `attention_decode_g*(p, q, k, v, idx, hmask, counts, out, lse,
        // part_out, part_lse, mode, hpc, lens)`; per sequence (batch of them along grid z,
        // 1 with lens null for the single-sequence ops) q/out [Hq, D], k/v [Hkv, T, D], lse [Hq]
        // checked by the caller, D = 32 * dpl of the module (decode_fits), idx [idx_heads, n_idx]
        // i32 is read in modes 1 and 2, hmask [Hkv, n_idx] u32 and counts [Hkv] u32 in mode 2
        // only (checked or written by the caller), lens [batch] i32 (checked) or null;
        // hpc divides the group and is at most the kernel's GM; part buffers hold
        // batch*Hq*splits rows when splits > 1; chunks*hpc = Hq <= 65535 grid rows (problem
        // caps), batch <= 65535 (grid_z); every token is checked against min(lens[b], T) and the
        // split range. `attention_decode_mma` (same signature and grid) additionally needs
        // f16/bf16 and D = 64 or 128 (its module) and hpc <= 8 (decode_mma_fits); its K/V rows
        // are read only for tokens that pass the same checks (cp.async zero-fills the others).
        unsafe { b.launch(cfg) }.map_err(|e| device_err(entry, e))?;
        if p.splits > 1 {
            let f = self.function(Family::Attention, spec, "attention_merge_rows")?;
            let ptr = |s: &CudaSlice<u8>| s.device_ptr(&self.stream).0;
            let (ppo, ppl, pout, plse) = (ptr(&part_out), ptr(&part_lse), ptr(&out.slice), ptr(&lse.slice));
            let mut args = [kernel_arg(&p), kernel_arg(&ppo), kernel_arg(&ppl), kernel_arg(&pout), kernel_arg(&plse)];
            let cfg =
                LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (MERGE_THREADS, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: args are `attention_merge_rows(p, part_out, part_lse, out, lse)` in order;
            // the partials hold batch*Hq*splits rows (splits <= 256) written by the decode launch
            // just above on this stream (read after kvs_grid_dependency); out/lse hold
            // batch*Hq*D and batch*Hq elements; one CTA per row (q_len = 1).
            unsafe { self.launch_args(&f, cfg, Launch::AfterKernel, &mut args) }
                .map_err(|e| device_err("attention_merge_rows", e))?;
        }
        Ok(())
    }

    /// Quest block scores `[Hq, NB]` f32 from block min/max: `quest_scores_grouped` (each
    /// statistics row read once per group, 16-byte loads) when a row splits into a power-of-two
    /// number (<= 32) of 16-byte vectors, else the one-warp-per-(head, block) `quest_scores`.
    #[allow(clippy::too_many_arguments)]
    fn launch_quest_scores(
        &self,
        op: &QuestScores,
        q: &CudaSlice<u8>,
        kmin: &CudaSlice<u8>,
        kmax: &CudaSlice<u8>,
        scores: &mut CudaSlice<u8>,
    ) -> Result<()> {
        let p = op.params();
        let ve = 16 / op.dtype.size();
        let lanes = op.dim / ve;
        let group = op.q_heads / op.kv_heads.max(1);
        if !legacy() && op.dim.is_multiple_of(ve) && lanes.is_power_of_two() && lanes <= 32 && op.nb > 0 {
            let (hpc, _) = decode_chunk(group);
            let chunks = op.q_heads / hpc;
            // About four CTAs per SM in all, each over a run of at least 32 blocks.
            let runs = (4 * self.sm_count as usize).div_ceil(chunks).min(op.nb.div_ceil(32)).max(1);
            let (hpc32, lanes32) = (hpc as u32, lanes as u32);
            let entry = match hpc.next_power_of_two() {
                1 => "quest_scores_grouped_g1",
                2 => "quest_scores_grouped_g2",
                4 => "quest_scores_grouped_g4",
                _ => "quest_scores_grouped_g8",
            };
            let f = self.function(Family::Blocks, Spec::dtype(op.dtype), entry)?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(q).arg(kmin).arg(kmax).arg(scores).arg(&hpc32).arg(&lanes32);
            let cfg =
                LaunchConfig { grid_dim: (runs as u32, chunks as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: matches `quest_scores_grouped_g*(p, q, kmin, kmax, scores, hpc, lanes)`; q
            // [Hq, D], kmin/kmax [Hkv, NB, D] in the module's dtype, scores [Hq, NB] f32 (checked
            // or sized by the caller); D = lanes * 16 bytes (16-byte aligned rows), hpc <= 8
            // divides the group and is at most the entry's GM, blocks guarded against NB.
            unsafe { b.launch(cfg) }.map_err(|e| device_err(entry, e))?;
            return Ok(());
        }
        let f = self.function(Family::Blocks, Spec::dtype(op.dtype), "quest_scores")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(q).arg(kmin).arg(kmax).arg(scores);
        // SAFETY: matches `quest_scores(p, q, kmin, kmax, scores)`; q [Hq, D], kmin/kmax
        // [Hkv, NB, D], scores [Hq, NB] f32 (checked or sized by the caller); guarded row < Hq*NB.
        unsafe { b.launch(warp_rows(op.q_heads * op.nb, 1)) }.map_err(|e| device_err("quest_scores", e))?;
        Ok(())
    }

    /// Launches the sparse (index-set) decode attention with split-K and merge.
    /// `p` must have `q_len = 1`, `idx_heads`, `n_idx`, `block_size` set; `splits` is chosen here.
    #[allow(clippy::too_many_arguments)]
    fn sparse_attention(
        &self,
        spec: Spec,
        mut p: AttentionParams,
        q: &CudaBuffer,
        k: &CudaBuffer,
        v: &CudaBuffer,
        idx: &CudaSlice<u8>,
        out: &mut CudaBuffer,
        lse: &mut CudaBuffer,
    ) -> Result<()> {
        if decode_fits(spec, p.dim as usize) {
            return self.decode(spec, p, DecodeKeys::Sparse(idx), 1, None, q, k, v, out, lse);
        }
        let rows = p.q_heads as usize;
        let keys = p.n_idx as usize * p.block_size.max(1) as usize;
        p.splits = self.splits(rows, keys);
        let (mut part_out, mut part_lse) = self.split_partials(rows, p.splits, p.dim as usize)?;
        let f = self.function(Family::Attention, spec, "attention_sparse")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&q.slice).arg(&k.slice).arg(&v.slice).arg(idx);
        b.arg(&mut out.slice).arg(&mut lse.slice).arg(&mut part_out).arg(&mut part_lse);
        // SAFETY: matches `attention_sparse(p, q, k, v, idx, out, lse, part_out, part_lse)`;
        // q [Hq, D], k/v [Hkv, T, D], idx [idx_heads, n_idx], out [Hq, D], lse [Hq] were checked
        // by the caller; part buffers hold Hq*splits rows when splits > 1 (unused otherwise);
        // the kernel guards h < Hq and every token against T.
        unsafe { b.launch(warp_rows(rows, p.splits)) }.map_err(|e| device_err("attention_sparse", e))?;
        if p.splits > 1 {
            self.merge(spec, &p, &part_out, &part_lse, out, lse)?;
        }
        Ok(())
    }

    /// Combines split-K partials by log-sum-exp into `out` / `lse`.
    pub(super) fn merge(
        &self,
        spec: Spec,
        p: &AttentionParams,
        part_out: &CudaSlice<u8>,
        part_lse: &CudaSlice<u8>,
        out: &mut CudaBuffer,
        lse: &mut CudaBuffer,
    ) -> Result<()> {
        let rows = (p.q_heads * p.q_len) as usize;
        let f = self.function(Family::Attention, spec, "attention_merge")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(p).arg(part_out).arg(part_lse).arg(&mut out.slice).arg(&mut lse.slice);
        // SAFETY: matches `attention_merge(p, part_out, part_lse, out, lse)`; the partials hold
        // rows*splits entries written by the preceding attention launch on this stream; out and
        // lse hold rows*D and rows elements; the kernel guards row < q_heads*q_len.
        unsafe { b.launch(warp_rows(rows, 1)) }.map_err(|e| device_err("attention_merge", e))?;
        Ok(())
    }

    /// CTAs per row and items per CTA of the multi-CTA top-k: about `per_sm` CTAs per SM over
    /// all rows, each over a slice of at least TOPK_MIN_SLICE items (a whole number of rounds of
    /// TOPK_THREADS x TOPK_GATHER_ITEMS).
    fn topk_split(&self, rows: usize, n: usize, per_sm: usize) -> (usize, usize) {
        let want = (per_sm * self.sm_count as usize).div_ceil(rows).max(1);
        let round = TOPK_THREADS as usize * TOPK_GATHER_ITEMS;
        let slice = n.div_ceil(want).max(TOPK_MIN_SLICE).div_ceil(round) * round;
        (n.div_ceil(slice).max(1), slice)
    }

    /// Top-k with several CTAs per row by radix passes over the whole row (see `cuda/topk.cu`;
    /// `KVSPARSE_CUDA_TOPK=runs` or `fused`): histogram passes (`topk_hist`: 4 of 8 bits, or 3
    /// of 11/11/10 bits when fused), the kept pairs (`topk_gather`, which also sorts them in its
    /// last CTA per row when `out_k <= TOPK_RUN` on the fused path), else [`Self::topk_sort_pairs`].
    /// One workspace allocation and one memset per call.
    fn topk_passes(&self, op: &TopK, scores: &CudaBuffer, indices: &mut CudaBuffer, wide: bool) -> Result<()> {
        let p = op.params();
        let (rows, n, m) = (op.rows, op.n, op.out_k());
        let (ctas, slice) = self.topk_split(rows, n, 2);
        let rows_y = grid_y(TopK::NAME, rows)?;
        let wide = u32::from(wide);
        let passes = if wide != 0 { 3u32 } else { 4 };
        let fuse = u32::from(wide != 0 && m <= TOPK_RUN);
        let (zero_words, pairs_words) = topk_ws_words(rows, ctas);
        let mut ws = self.scratch_zeroed_head(4 * pairs_words + 8 * m * rows, 4 * zero_words, "topk workspace")?;
        let (ctas32, slice32) = (ctas as u32, slice as u32);
        let cfg = LaunchConfig { grid_dim: (ctas32, rows_y, 1), block_dim: (TOPK_THREADS, 1, 1), shared_mem_bytes: 0 };
        let f = self.function(Family::Topk, Spec::NONE, "topk_hist")?;
        for pass in 0..passes {
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&scores.slice).arg(&mut ws).arg(&ctas32).arg(&slice32).arg(&pass).arg(&wide);
            // SAFETY: matches `topk_hist(p, scores, ws, ctas, slice, pass, wide)`; scores [R*n]
            // f32 (checked), ws laid out as `topk_ws_words` (= TopkWs in the kernel) with ghist
            // and the counters zeroed above; lhist written whole by the last pass; CTA c reads
            // items [c*slice, min(n, (c+1)*slice)).
            unsafe { b.launch(cfg) }.map_err(|e| device_err("topk_hist", e))?;
        }
        let f = self.function(Family::Topk, Spec::NONE, "topk_gather")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&scores.slice).arg(&mut ws).arg(&mut indices.slice);
        b.arg(&ctas32).arg(&slice32).arg(&wide).arg(&fuse);
        // SAFETY: matches `topk_gather(p, scores, ws, indices, ctas, slice, wide, fuse)`;
        // histograms written by the passes above, counters zeroed above, pairs R*out_k u64 at
        // the end of ws; every write position is checked against out_k; indices [R*out_k] i32
        // (checked), written by the row's last CTA when fuse (out_k <= TOPK_RUN).
        unsafe { b.launch(cfg) }.map_err(|e| device_err("topk_gather", e))?;
        if fuse != 0 {
            return Ok(());
        }
        let mut pairs = ws.slice_mut(4 * pairs_words..);
        self.topk_sort_pairs(op, &mut pairs, indices)
    }

    /// The indices of R rows of out_k pairs `(~key << 32 | index)` (written whole on this stream
    /// before), sorted ascending: a bitonic sort of runs of up to `TOPK_RUN` pairs
    /// (`topk_sort_runs`, straight to the indices when one run is the row), then merge passes
    /// (`topk_merge_runs`, ping-ponging with a second pair buffer).
    fn topk_sort_pairs(&self, op: &TopK, pairs_a: &mut CudaViewMut<'_, u8>, indices: &mut CudaBuffer) -> Result<()> {
        let p = op.params();
        let (rows, m) = (op.rows, op.out_k());
        let rows_y = grid_y(TopK::NAME, rows)?;
        let runs = m.div_ceil(TOPK_RUN);
        let direct = u32::from(runs == 1);
        let run32 = TOPK_RUN as u32;
        let f = self.function(Family::Topk, Spec::NONE, "topk_sort_runs")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&mut *pairs_a).arg(&mut indices.slice).arg(&run32).arg(&direct);
        let cfg = LaunchConfig {
            grid_dim: (runs as u32, rows_y, 1),
            block_dim: (TOPK_SORT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches `topk_sort_runs(p, pairs, indices, run, direct)`; pairs R*out_k u64
        // written whole by the caller's kernels (exactly out_k per row), indices [R*out_k] i32
        // (checked); run = TOPK_RUN, the kernel's shared tile.
        unsafe { b.launch(cfg) }.map_err(|e| device_err("topk_sort_runs", e))?;
        if runs == 1 {
            return Ok(());
        }
        let mut pairs_b = self.scratch(8 * m * rows)?;
        let f = self.function(Family::Topk, Spec::NONE, "topk_merge_runs")?;
        let mut run = TOPK_RUN;
        let mut in_a = true;
        while run < m {
            let last = u32::from(2 * run >= m);
            let run32 = run as u32;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p);
            // src is const in the kernel; both are passed as device pointers.
            if in_a {
                b.arg(&mut *pairs_a).arg(&mut pairs_b);
            } else {
                b.arg(&mut pairs_b).arg(&mut *pairs_a);
            }
            b.arg(&mut indices.slice).arg(&run32).arg(&last);
            let cfg = LaunchConfig {
                grid_dim: ((m as u32).div_ceil(ELEMENTWISE), rows_y, 1),
                block_dim: (ELEMENTWISE, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches `topk_merge_runs(p, src, dst, indices, run, last)`; src and dst
            // are R*out_k u64 (src sorted in runs of `run` by the previous launch), indices
            // [R*out_k] i32 (checked); guarded i < out_k, r < R.
            unsafe { b.launch(cfg) }.map_err(|e| device_err("topk_merge_runs", e))?;
            in_a = !in_a;
            run *= 2;
        }
        Ok(())
    }

    /// Top-k with several CTAs per row, select design (the default; see `cuda/topk.cu`): one
    /// memset of the row histograms, `topk_sel_hist` x 2 (16 bits of the threshold),
    /// `topk_sel_compact` (sure items and candidates, in index order), `topk_sel_finish` (one
    /// CTA per row: keeps the needed candidates, radix-sorts the out_k pairs in shared memory
    /// and writes the indices; for out_k > TOPK_TILE it leaves the pairs to
    /// [`Self::topk_sort_pairs`]). One workspace allocation; no host reads; every launch shape
    /// is fixed by (R, n, k).
    fn topk_select(&self, op: &TopK, scores: &CudaBuffer, indices: &mut CudaBuffer) -> Result<()> {
        let p = op.params();
        let (rows, n, m) = (op.rows, op.n, op.out_k());
        let (ctas, slice) = self.topk_split(rows, n, TOPK_SEL_CTAS_PER_SM);
        let rows_y = grid_y(TopK::NAME, rows)?;
        let lay = topk_sel_ws(rows, ctas, n, m);
        let mut ws = self.scratch_zeroed_head(4 * lay.total, 4 * lay.zero, "topk workspace")?;
        let (ctas32, slice32) = (ctas as u32, slice as u32);
        let cfg = LaunchConfig { grid_dim: (ctas32, rows_y, 1), block_dim: (TOPK_THREADS, 1, 1), shared_mem_bytes: 0 };
        // The first pass follows the workspace's memset, so it is launched plainly; the kernels
        // after it follow a kernel of this op (Launch::AfterKernel).
        let (pscores, pws, pidx) = (
            scores.slice.device_ptr(&self.stream).0,
            ws.device_ptr(&self.stream).0,
            indices.slice.device_ptr(&self.stream).0,
        );
        let f = self.function(Family::Topk, Spec::NONE, "topk_sel_hist")?;
        for pass in 0..2u32 {
            let mut args = [
                kernel_arg(&p),
                kernel_arg(&pscores),
                kernel_arg(&pws),
                kernel_arg(&ctas32),
                kernel_arg(&slice32),
                kernel_arg(&pass),
            ];
            // SAFETY: args are `topk_sel_hist(p, scores, ws, ctas, slice, pass)` in order, alive
            // across the call; scores [R*n] f32 (checked); ws laid out as `topk_sel_ws` (=
            // TopkSelWs in the kernel), ghist zeroed above, pass 1 writes every CTA's record
            // whole; TOPK_THREADS = TOPK_SEL_THREADS (one bin per thread); CTA c reads items
            // [c*slice, min(n, (c+1)*slice)); the kernel waits for the pass before it
            // (kvs_grid_dependency) before it touches ws.
            unsafe { self.launch_args(&f, cfg, if pass > 0 { Launch::AfterKernel } else { Launch::Plain }, &mut args) }
                .map_err(|e| device_err("topk_sel_hist", e))?;
        }
        let f = self.function(Family::Topk, Spec::NONE, "topk_sel_compact")?;
        let mut args =
            [kernel_arg(&p), kernel_arg(&pscores), kernel_arg(&pws), kernel_arg(&ctas32), kernel_arg(&slice32)];
        // SAFETY: args are `topk_sel_compact(p, scores, ws, ctas, slice)` in order; same grid,
        // slices and workspace as the passes above, whose histograms and records it reads after
        // kvs_grid_dependency; its writes are checked against out_k (sure) and min(n,
        // TOPK_CAND_CAP) (candidates) per row.
        unsafe { self.launch_args(&f, cfg, Launch::AfterKernel, &mut args) }
            .map_err(|e| device_err("topk_sel_compact", e))?;
        let tile = if m <= TOPK_TILE { m } else { 0 };
        let smem = 8 * tile + 4 * TOPK_AUX;
        let f = self.function_with_smem(Family::Topk, Spec::NONE, "topk_sel_finish", smem)?;
        let mut args = [kernel_arg(&p), kernel_arg(&pscores), kernel_arg(&pws), kernel_arg(&pidx), kernel_arg(&ctas32)];
        // Rows whose pairs are ranked in shared memory spread over CTAs that fill the device once
        // (one CTA an SM: 1024 threads of 64 registers); the pairs sorted by topk_sort_runs take
        // one CTA a row.
        let finish_ctas =
            if m <= TOPK_TILE { (self.sm_count as usize / rows).clamp(1, TOPK_FINISH_MAX_CTAS) } else { 1 };
        let cfg = LaunchConfig {
            grid_dim: (finish_ctas as u32, rows_y, 1),
            block_dim: (TOPK_FINISH_THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // SAFETY: args are `topk_sel_finish(p, scores, ws, indices, ctas)` in order, grid (C, R)
        // with C >= 1 CTAs a row sharing its ranks (C = 1 when out_k > TOPK_TILE); ws as above,
        // its sure items and candidates written by topk_sel_compact (read after
        // kvs_grid_dependency); the dynamic shared memory is the kernel's tile (out_k pairs when
        // out_k <= TOPK_TILE, else none) plus TOPK_AUX words, as it lays them out;
        // TOPK_FINISH_THREADS threads (its launch bounds); indices [R*out_k] i32 (checked),
        // written when out_k <= TOPK_TILE, else `pairs` (R*out_k u64) whole.
        unsafe { self.launch_args(&f, cfg, Launch::AfterKernel, &mut args) }
            .map_err(|e| device_err("topk_sel_finish", e))?;
        if m <= TOPK_TILE {
            return Ok(());
        }
        let mut pairs = ws.slice_mut(4 * lay.pairs..);
        self.topk_sort_pairs(op, &mut pairs, indices)
    }

    /// `select_blocks` (after `select_keys` for the random selector, which fills `ranking`).
    fn select(&self, sp: &SelectParams, ranking: &mut CudaBuffer, selected: &mut CudaBuffer) -> Result<()> {
        if sp.selector == 1 {
            let f = self.function(Family::Select, Spec::NONE, "select_keys")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(sp).arg(&mut ranking.slice);
            // SAFETY: matches `select_keys(p, keys)`; ranking holds rows*nb u32 (checked); the
            // kernel guards e < rows*nb.
            unsafe { b.launch(elementwise(sp.rows as usize * sp.nb as usize)) }
                .map_err(|e| device_err("select_keys", e))?;
        }
        let f = self.function(Family::Select, Spec::NONE, "select_blocks")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(sp).arg(&ranking.slice).arg(&mut selected.slice);
        // SAFETY: matches `select_blocks(p, ranking, selected)`; ranking holds rows*nb words
        // (f32 scores or u32 keys, written by the previous launch), selected rows*width i32
        // (checked); one block per row, every block index guarded against nb and width.
        unsafe { b.launch(block_rows(sp.rows as usize, sp.nb as usize)) }
            .map_err(|e| device_err("select_blocks", e))?;
        Ok(())
    }

    /// `quest_decode_cluster_g*` for `op` (on the `quest_select_kv_g*` path), its name, the
    /// cluster size to launch it with and its dynamic shared memory, or `None` to keep the three
    /// launches: unless `KVSPARSE_CUDA_QUEST_CLUSTER` asks for it, before sm_90, outside the
    /// tensor-core decode (f16/bf16, D 64 or 128, groups of 2, 4 or 8), or where no size the device grants covers
    /// the row (a CTA ranks at most 32 * QUEST_CLUSTER_WARPS * QUEST_CLUSTER_ITEMS blocks). Of
    /// the sizes granted, the one with the fewest waves of clusters over the kv heads, then the
    /// larger (less work a CTA).
    fn quest_cluster(&self, op: &QuestDecode, head: Spec) -> Result<Option<(CudaFunction, &'static str, u32, u32)>> {
        let group = op.q_heads / op.kv_heads;
        let switch = quest_cluster_switch().filter(|&s| s != 0);
        if switch.is_none() || self.cc.0 < 9 || !decode_mma_fits(head, op.dim, group) {
            return Ok(None);
        }
        let entry = match group {
            2 => "quest_decode_cluster_g2",
            4 => "quest_decode_cluster_g4",
            _ => "quest_decode_cluster_g8",
        };
        let threads = QUEST_CLUSTER_WARPS * 32;
        // The warps' V tiles (decode_mma_keys's `vs`).
        let smem = QUEST_CLUSTER_WARPS as usize * DECODE_MMA_KEY_TILE * (op.dim + 8) * op.dtype.size();
        let f = self.function_with_smem(Family::Attention, head, entry, smem)?;
        let per_cta = threads as usize * QUEST_CLUSTER_ITEMS;
        let mut best: Option<(u32, usize)> = None; // (size, waves)
        for size in QUEST_CLUSTER_SIZES {
            if switch.is_some_and(|s| s != 1 && s != size) || op.nb() > size as usize * per_cta {
                continue;
            }
            let resident = self.resident_clusters((Family::Attention, head, entry), &f, size, threads, smem as u32);
            if resident == 0 {
                continue;
            }
            // Each wave pays the kernel's fixed latency (scores, cluster barriers, the first
            // K/V round trips: most of a step at 1/16), so fewer waves win over smaller CTAs'
            // work; sizes are tried largest first.
            let waves = op.kv_heads.div_ceil(resident as usize);
            if best.is_none_or(|(_, w)| waves < w) {
                best = Some((size, waves));
            }
        }
        Ok(best.map(|(size, _)| (f, entry, size, smem as u32)))
    }
}

impl Backend for Cuda {
    type Buffer = CudaBuffer;

    fn name(&self) -> &'static str {
        "cuda"
    }
    fn device_name(&self) -> String {
        self.name.clone()
    }
    fn supports(&self, _dtype: DType) -> bool {
        // f16 and bf16 are converted in the kernels (inline PTX / bit shifts): every arch works.
        true
    }
    fn upload(&self, data: &HostData) -> Result<CudaBuffer> {
        self.buffer_from_bytes(data.dtype(), data.len(), data.as_bytes())
    }
    fn download(&self, buf: &CudaBuffer) -> Result<HostData> {
        let bytes = buf.len * buf.dtype.size();
        let host = if bytes == 0 {
            Vec::new()
        } else {
            self.stream.clone_dtoh(&buf.slice.slice(0..bytes)).map_err(|e| device_err("download", e))?
        };
        HostData::from_bytes(buf.dtype, &host)
            .ok_or_else(|| Error::Device { backend: "cuda", message: "download: ragged byte count".into() })
    }
    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| device_err("synchronize", e))
    }
    fn copy_buffer(&self, src: &CudaBuffer, dst: &mut CudaBuffer) -> Result<()> {
        ops::check_copy(src, dst)?;
        let bytes = src.len * src.dtype.size();
        if bytes > 0 {
            self.stream
                .memcpy_dtod(&src.slice.slice(0..bytes), &mut dst.slice.slice_mut(0..bytes))
                .map_err(|e| device_err("copy_buffer", e))?;
        }
        Ok(())
    }
    fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<std::time::Duration> {
        self.time_between_events(f)
    }
    fn time_op(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<std::time::Duration> {
        if !self.graph_timing {
            return self.time(f);
        }
        // The work recorded once, replayed once untimed (the first launch of a graph uploads it
        // and maps its memory), L2 emptied, then one replay timed.
        // SAFETY: the graph is dropped at the end of this call, while every buffer `f` touches
        // (borrowed by `f`) is still alive; `&self` ops run on this thread only.
        let graph = unsafe { self.capture(f)? };
        graph.replay()?;
        self.flush_l2_and_wait()?;
        self.time_between_events(&mut || graph.replay())
    }
    fn timer_kind(&self) -> &'static str {
        if self.graph_timing {
            "cuda-graph-replay"
        } else {
            "cuda-events"
        }
    }

    fn pcg_hash(&self, op: &PcgHash, v: &CudaBuffer, hash: &mut CudaBuffer) -> Result<()> {
        ops::check(op, &[v, hash])?;
        let p = op.params();
        let f = self.function(Family::Random, Spec::NONE, "pcg_hash")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&v.slice).arg(&mut hash.slice);
        // SAFETY: matches `pcg_hash(p, v, hash)`; v and hash hold n u32 (checked); guarded i < n.
        unsafe { b.launch(elementwise(op.n)) }.map_err(|e| device_err("pcg_hash", e))?;
        Ok(())
    }

    fn random_key(&self, op: &RandomKey, rows: &CudaBuffer, idx: &CudaBuffer, keys: &mut CudaBuffer) -> Result<()> {
        ops::check(op, &[rows, idx, keys])?;
        let p = op.params();
        let f = self.function(Family::Random, Spec::NONE, "random_key")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&rows.slice).arg(&idx.slice).arg(&mut keys.slice);
        // SAFETY: matches `random_key(p, rows, idx, keys)`; rows [R], idx [n], keys [R*n] u32
        // (checked); guarded e < R*n.
        unsafe { b.launch(elementwise(op.rows * op.n)) }.map_err(|e| device_err("random_key", e))?;
        Ok(())
    }

    fn random_select(
        &self,
        op: &RandomSelect,
        rows: &CudaBuffer,
        cand: &CudaBuffer,
        keys: &mut CudaBuffer,
        selected: &mut CudaBuffer,
    ) -> Result<()> {
        ops::check(op, &[rows, cand, keys, selected])?;
        let p = op.params();
        let f = self.function(Family::Random, Spec::NONE, "random_select")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&rows.slice).arg(&cand.slice).arg(&mut keys.slice).arg(&mut selected.slice);
        // SAFETY: matches `random_select(p, rows, cand, keys, selected)`; rows [R] u32,
        // cand [R*n] i32, keys [R*n] u32, selected [R*k] i32 (checked); one block per row.
        unsafe { b.launch(block_rows(op.rows, op.n)) }.map_err(|e| device_err("random_select", e))?;
        Ok(())
    }

    fn topk(&self, op: &TopK, scores: &CudaBuffer, indices: &mut CudaBuffer) -> Result<()> {
        ops::check(op, &[scores, indices])?;
        // Long rows go to the multi-CTA kernels (H100: 1 x 131072, k 2048 in 67 µs against 220 µs
        // for one CTA per row); short rows fit one CTA better. `KVSPARSE_CUDA_TOPK_TUNE=1` sends
        // every shape there, `KVSPARSE_CUDA_LEGACY=1` none.
        let long_row = op.n >= TOPK_MULTI_CTA_MIN_N && !legacy();
        if (topk_tune() || long_row) && op.rows <= TOPK_TUNE_MAX_ROWS {
            return match topk_path() {
                TopkPath::Select => self.topk_select(op, scores, indices),
                TopkPath::Runs => self.topk_passes(op, scores, indices, false),
                TopkPath::Fused => self.topk_passes(op, scores, indices, true),
            };
        }
        let p = op.params();
        let mut scratch = self.scratch(4 * 4 * op.rows * op.out_k())?;
        let f = self.function(Family::Topk, Spec::NONE, "topk")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&scores.slice).arg(&mut indices.slice).arg(&mut scratch);
        // SAFETY: matches `topk(p, scores, indices, scratch)`; scores [R*n] f32 and indices
        // [R*out_k] i32 (checked); scratch holds R*4*out_k u32, each row's part written by the
        // row's block before it reads it; one block per row.
        unsafe { b.launch(block_rows(op.rows, op.n)) }.map_err(|e| device_err("topk", e))?;
        Ok(())
    }

    fn decay_scan(
        &self,
        op: &DecayScan,
        x: &CudaBuffer,
        g: &CudaBuffer,
        h0: &CudaBuffer,
        y: &mut CudaBuffer,
    ) -> Result<()> {
        ops::check(op, &[x, g, h0, y])?;
        let p = op.params();
        let lanes = op.outer * op.inner;
        let path = self.scan_path(lanes, op.seq);
        if path == ScanPath::OnePass {
            let mut lb = self.lookback(lanes, op.seq, SCAN_STEPS_DECAY, 1)?;
            let f = self.function(Family::Decay, Spec::dtype(op.dtype), "decay_scan_onepass")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&x.slice).arg(&g.slice).arg(&h0.slice).arg(&mut y.slice);
            b.arg(&mut lb.sync).arg(&mut lb.agg).arg(&mut lb.incl).arg(&lb.n_chunks);
            // SAFETY: matches `decay_scan_onepass(p, x, g, h0, y, sync, agg, incl, n_chunks)`;
            // x, y [outer, seq, inner] in the module's storage dtype, g the same shape in f32, h0
            // [outer*inner] f32 (checked); sync holds 1 + grid u32, zeroed above on this stream;
            // agg / incl hold n_chunks * 32 * ceil(lanes / 32) float2 / f32, each entry written
            // before the flag that announces it; grid = ceil(lanes / 32) * n_chunks with
            // n_chunks = ceil(seq / (KVS_SCAN_WARPS * KVS_SCAN_DECAY_R)), as the kernel derives
            // its runs; lanes and steps guarded; every CTA waits only on smaller tickets.
            unsafe { b.launch(lb.cfg) }.map_err(|e| device_err("decay_scan_onepass", e))?;
            return Ok(());
        }
        if let ScanPath::Chunked { n_chunks, chunk } = path {
            let spec = Spec::dtype(op.dtype);
            let mut ab = self.scratch(4 * 2 * n_chunks * lanes)?;
            let grid = ((lanes as u32).div_ceil(ELEMENTWISE), n_chunks as u32, 1);
            let cfg = LaunchConfig { grid_dim: grid, block_dim: (ELEMENTWISE, 1, 1), shared_mem_bytes: 0 };
            let (chunk32, n32) = (chunk as u32, n_chunks as u32);
            let f = self.function(Family::Decay, spec, "decay_scan_chunks")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&x.slice).arg(&g.slice).arg(&mut ab).arg(&chunk32);
            // SAFETY: matches `decay_scan_chunks(p, x, g, ab, chunk)`; x, g [outer, seq, inner]
            // (checked), ab sized 2*n_chunks*lanes f32 here, n_chunks = grid rows, runs clipped
            // to seq, lanes guarded.
            unsafe { b.launch(cfg) }.map_err(|e| device_err("decay_scan_chunks", e))?;
            let f = self.function(Family::Decay, spec, "decay_scan_carry")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&h0.slice).arg(&mut ab).arg(&n32);
            // SAFETY: matches `decay_scan_carry(p, h0, ab, n_chunks)`; h0 [lanes] f32 (checked),
            // ab written above; lanes guarded.
            unsafe { b.launch(elementwise(lanes)) }.map_err(|e| device_err("decay_scan_carry", e))?;
            let f = self.function(Family::Decay, spec, "decay_scan_apply")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&x.slice).arg(&g.slice).arg(&ab).arg(&mut y.slice).arg(&chunk32);
            // SAFETY: matches `decay_scan_apply(p, x, g, ab, y, chunk)`; y as x (checked), ab
            // holds the run-start states written by the carry pass; same grid as the first pass.
            unsafe { b.launch(cfg) }.map_err(|e| device_err("decay_scan_apply", e))?;
            return Ok(());
        }
        let f = self.function(Family::Decay, Spec::dtype(op.dtype), "decay_scan")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&x.slice).arg(&g.slice).arg(&h0.slice).arg(&mut y.slice);
        // SAFETY: matches `decay_scan(p, x, g, h0, y)`; x, y [outer, seq, inner] in the storage
        // dtype of the module, g f32 of the same shape, h0 [outer*inner] f32 (checked); guarded
        // lane < outer*inner.
        unsafe { b.launch(elementwise(op.outer * op.inner)) }.map_err(|e| device_err("decay_scan", e))?;
        Ok(())
    }

    fn decay_step(
        &self,
        op: &DecayStep,
        x: &CudaBuffer,
        g: &CudaBuffer,
        h: &CudaBuffer,
        h_new: &mut CudaBuffer,
    ) -> Result<()> {
        ops::check(op, &[x, g, h, h_new])?;
        let p = op.params();
        let f = self.function(Family::Decay, Spec::dtype(op.dtype), "decay_step")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&x.slice).arg(&g.slice).arg(&h.slice).arg(&mut h_new.slice);
        // SAFETY: matches `decay_step(p, x, g, h, h_new)`; all hold `lanes` elements (checked);
        // guarded i < lanes.
        unsafe { b.launch(elementwise(op.lanes)) }.map_err(|e| device_err("decay_step", e))?;
        Ok(())
    }

    fn rope(&self, op: &Rope, x: &CudaBuffer, pos: &CudaBuffer, y: &mut CudaBuffer) -> Result<()> {
        ops::check(op, &[x, pos, y])?;
        let p = op.params();
        let f = self.function(Family::Decay, Spec::dtype(op.dtype), "rope")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&x.slice).arg(&pos.slice).arg(&mut y.slice);
        // SAFETY: matches `rope(p, x, pos, y)`; x, y [H, T, D], pos [T] i32 (checked, D even);
        // guarded e < H*T*D/2.
        unsafe { b.launch(elementwise(op.heads * op.seq * op.dim / 2)) }.map_err(|e| device_err("rope", e))?;
        Ok(())
    }

    fn ratplus_kv(
        &self,
        op: &RatplusKv,
        k: &CudaBuffer,
        v: &CudaBuffer,
        g: &CudaBuffer,
        k_tilde: &mut CudaBuffer,
        v_tilde: &mut CudaBuffer,
        k_rope: &mut CudaBuffer,
    ) -> Result<()> {
        ops::check(op, &[k, v, g, k_tilde, v_tilde, k_rope])?;
        let p = op.params();
        let lanes = op.heads * op.dim / 2;
        let path = self.scan_path(lanes, op.seq);
        if path == ScanPath::OnePass {
            // States k_a, k_b, v_a, v_b per lane (`RatplusLanes::NS` in cuda/decay.cu).
            let mut lb = self.lookback(lanes, op.seq, SCAN_STEPS_RATPLUS, 4)?;
            let f = self.function(Family::Decay, Spec::dtype(op.dtype), "ratplus_kv_onepass")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&k.slice).arg(&v.slice).arg(&g.slice);
            b.arg(&mut k_tilde.slice).arg(&mut v_tilde.slice).arg(&mut k_rope.slice);
            b.arg(&mut lb.sync).arg(&mut lb.agg).arg(&mut lb.incl).arg(&lb.n_chunks);
            // SAFETY: matches `ratplus_kv_onepass(p, k, v, g, k_tilde, v_tilde, k_rope, sync,
            // agg, incl, n_chunks)`; all tensors [H, T, D] (checked, D even), lanes = H*D/2;
            // sync holds 1 + grid u32, zeroed above on this stream; agg / incl hold 4 * n_chunks *
            // 32 * ceil(lanes / 32) float2 / f32, each entry written before the flag that
            // announces it; grid = ceil(lanes / 32) * n_chunks with n_chunks = ceil(seq /
            // (KVS_SCAN_WARPS * KVS_SCAN_RKV_R)); lanes and steps guarded; every CTA waits only
            // on smaller tickets.
            unsafe { b.launch(lb.cfg) }.map_err(|e| device_err("ratplus_kv_onepass", e))?;
            return Ok(());
        }
        if let ScanPath::Chunked { n_chunks, chunk } = path {
            let spec = Spec::dtype(op.dtype);
            // [4 states][A, B][n_chunks][lanes] (RKV_STATES in cuda/decay.cu).
            let mut ab = self.scratch(4 * 4 * 2 * n_chunks * lanes)?;
            let grid = ((lanes as u32).div_ceil(ELEMENTWISE), n_chunks as u32, 1);
            let cfg = LaunchConfig { grid_dim: grid, block_dim: (ELEMENTWISE, 1, 1), shared_mem_bytes: 0 };
            let (chunk32, n32) = (chunk as u32, n_chunks as u32);
            let f = self.function(Family::Decay, spec, "ratplus_kv_chunks")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&k.slice).arg(&v.slice).arg(&g.slice).arg(&mut ab).arg(&chunk32);
            // SAFETY: matches `ratplus_kv_chunks(p, k, v, g, ab, chunk)`; k, v, g [H, T, D]
            // (checked, D even), ab sized 8*n_chunks*lanes f32 here; lanes and runs guarded.
            unsafe { b.launch(cfg) }.map_err(|e| device_err("ratplus_kv_chunks", e))?;
            let f = self.function(Family::Decay, spec, "ratplus_kv_carry")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&mut ab).arg(&n32);
            // SAFETY: matches `ratplus_kv_carry(p, ab, n_chunks)`; ab written above; lanes guarded.
            unsafe { b.launch(elementwise(lanes)) }.map_err(|e| device_err("ratplus_kv_carry", e))?;
            let f = self.function(Family::Decay, spec, "ratplus_kv_apply")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&k.slice).arg(&v.slice).arg(&g.slice).arg(&ab);
            b.arg(&mut k_tilde.slice).arg(&mut v_tilde.slice).arg(&mut k_rope.slice).arg(&chunk32);
            // SAFETY: matches `ratplus_kv_apply(p, k, v, g, ab, k_tilde, v_tilde, k_rope, chunk)`;
            // outputs [H, T, D] (checked), ab holds the run-start states; same grid as above.
            unsafe { b.launch(cfg) }.map_err(|e| device_err("ratplus_kv_apply", e))?;
            return Ok(());
        }
        let f = self.function(Family::Decay, Spec::dtype(op.dtype), "ratplus_kv")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&k.slice).arg(&v.slice).arg(&g.slice);
        b.arg(&mut k_tilde.slice).arg(&mut v_tilde.slice).arg(&mut k_rope.slice);
        // SAFETY: matches `ratplus_kv(p, k, v, g, k_tilde, v_tilde, k_rope)`; all [H, T, D]
        // (checked, D even); guarded e < H*D/2.
        unsafe { b.launch(elementwise(op.heads * op.dim / 2)) }.map_err(|e| device_err("ratplus_kv", e))?;
        Ok(())
    }

    fn ratplus_step(
        &self,
        op: &RatplusStep,
        k: &CudaBuffer,
        v: &CudaBuffer,
        g: &CudaBuffer,
        hk: &CudaBuffer,
        hv: &CudaBuffer,
        hk_new: &mut CudaBuffer,
        hv_new: &mut CudaBuffer,
        k_rope: &mut CudaBuffer,
    ) -> Result<()> {
        ops::check(op, &[k, v, g, hk, hv, hk_new, hv_new, k_rope])?;
        let p = op.params();
        let f = self.function(Family::Decay, Spec::dtype(op.dtype), "ratplus_step")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&k.slice).arg(&v.slice).arg(&g.slice).arg(&hk.slice).arg(&hv.slice);
        b.arg(&mut hk_new.slice).arg(&mut hv_new.slice).arg(&mut k_rope.slice);
        // SAFETY: matches `ratplus_step(p, k, v, g, hk, hv, hk_new, hv_new, k_rope)`; all [H, D]
        // (checked, D even); guarded e < H*D/2.
        unsafe { b.launch(elementwise(op.heads * op.dim / 2)) }.map_err(|e| device_err("ratplus_step", e))?;
        Ok(())
    }

    fn block_minmax(
        &self,
        op: &BlockMinmax,
        k: &CudaBuffer,
        kmin: &mut CudaBuffer,
        kmax: &mut CudaBuffer,
    ) -> Result<()> {
        ops::check(op, &[k, kmin, kmax])?;
        let s = &op.shape;
        let p = s.params();
        let f = self.function(Family::Blocks, Spec::dtype(s.dtype), "block_minmax")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&k.slice).arg(&mut kmin.slice).arg(&mut kmax.slice);
        // SAFETY: matches `block_minmax(p, k, kmin, kmax)`; k [H, T, D], kmin/kmax [H, NB, D]
        // (checked); guarded e < H*NB*D, tokens clipped to T.
        unsafe { b.launch(elementwise(s.heads * s.nb() * s.dim)) }.map_err(|e| device_err("block_minmax", e))?;
        Ok(())
    }

    fn block_mean(&self, op: &BlockMean, k: &CudaBuffer, kmean: &mut CudaBuffer) -> Result<()> {
        ops::check(op, &[k, kmean])?;
        let s = &op.shape;
        let p = s.params();
        let f = self.function(Family::Blocks, Spec::dtype(s.dtype), "block_mean")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&k.slice).arg(&mut kmean.slice);
        // SAFETY: matches `block_mean(p, k, kmean)`; k [H, T, D], kmean [H, NB, D] (checked);
        // guarded e < H*NB*D, tokens clipped to T.
        unsafe { b.launch(elementwise(s.heads * s.nb() * s.dim)) }.map_err(|e| device_err("block_mean", e))?;
        Ok(())
    }

    fn quest_scores(
        &self,
        op: &QuestScores,
        q: &CudaBuffer,
        kmin: &CudaBuffer,
        kmax: &CudaBuffer,
        scores: &mut CudaBuffer,
    ) -> Result<()> {
        ops::check(op, &[q, kmin, kmax, scores])?;
        self.launch_quest_scores(op, &q.slice, &kmin.slice, &kmax.slice, &mut scores.slice)
    }

    fn quest_decode(
        &self,
        op: &QuestDecode,
        q: &CudaBuffer,
        k: &CudaBuffer,
        v: &CudaBuffer,
        stats: Option<(&CudaBuffer, &CudaBuffer)>,
        selected: &mut CudaBuffer,
        out: &mut CudaBuffer,
        lse: &mut CudaBuffer,
        ranking: &mut CudaBuffer,
    ) -> Result<()> {
        match stats {
            Some((lo, hi)) => ops::check(op, &[q, k, v, lo, hi, &*selected, &*out, &*lse, &*ranking])?,
            None => ops::check(op, &[q, k, v, &*selected, &*out, &*lse, &*ranking])?,
        }
        let head = head_spec(QuestDecode::NAME, op.dtype, op.dim)?;
        let nb = op.nb();
        let bs = op.select.block_size;
        let shared = op.gqa == GqaMode::Mean;
        // One selection per kv head from scores: scores, group means and selection in one launch.
        let fused = shared && op.select.selector == Selector::Score && quest_select_kv_fits(op);
        if op.select.selector == Selector::Score {
            // 1. block min/max per kv head (scratch in the storage dtype) unless cached,
            // 2. Quest scores.
            let computed;
            let (kmin, kmax) = match stats {
                Some((lo, hi)) => (&lo.slice, &hi.slice),
                None => {
                    let shape =
                        BlockShape { heads: op.kv_heads, seq: op.seq, dim: op.dim, block_size: bs, dtype: op.dtype };
                    let n_stats = op.kv_heads * nb * op.dim;
                    let mut lo = self.scratch(n_stats * op.dtype.size())?;
                    let mut hi = self.scratch(n_stats * op.dtype.size())?;
                    let p = shape.params();
                    let f = self.function(Family::Blocks, Spec::dtype(op.dtype), "block_minmax")?;
                    let mut b = self.stream.launch_builder(&f);
                    b.arg(&p).arg(&k.slice).arg(&mut lo).arg(&mut hi);
                    // SAFETY: matches `block_minmax(p, k, kmin, kmax)`; k [Hkv, T, D] (checked),
                    // kmin and kmax sized Hkv*NB*D storage elements here; guarded e < Hkv*NB*D.
                    unsafe { b.launch(elementwise(n_stats)) }.map_err(|e| device_err("block_minmax", e))?;
                    computed = (lo, hi);
                    (&computed.0, &computed.1)
                }
            };
            let sop = QuestScores { q_heads: op.q_heads, kv_heads: op.kv_heads, nb, dim: op.dim, dtype: op.dtype };
            // kmin/kmax: checked when cached, written above otherwise; ranking = scores [Hq, NB]
            // per head, or [Hkv, NB] group means of per-head scores in scratch.
            if fused {
                let sp = op.select_params();
                if let Some((f, entry, cluster, smem)) = self.quest_cluster(op, head)? {
                    // Scores, group means, selection, decode and merge in one launch
                    // (quest_decode_cluster_g*); ranking = the means [Hkv, NB] (checked).
                    let p = quest_kv_params(op);
                    let lanes = (op.dim / (16 / op.dtype.size())) as u32;
                    let nb32 = nb as u32;
                    let ptr = |s: &CudaSlice<u8>| s.device_ptr(&self.stream).0;
                    let (pq, pk, pv, plo, phi) = (ptr(&q.slice), ptr(&k.slice), ptr(&v.slice), ptr(kmin), ptr(kmax));
                    let (pmean, psel, pout, plse) =
                        (ptr(&ranking.slice), ptr(&selected.slice), ptr(&out.slice), ptr(&lse.slice));
                    let arg = |x: &u64| x as *const u64 as *mut std::ffi::c_void;
                    let val = |x: &u32| x as *const u32 as *mut std::ffi::c_void;
                    let mut args = [
                        &p as *const AttentionParams as *mut std::ffi::c_void,
                        arg(&pq),
                        arg(&pk),
                        arg(&pv),
                        arg(&plo),
                        arg(&phi),
                        arg(&pmean),
                        arg(&psel),
                        arg(&pout),
                        arg(&plse),
                        val(&nb32),
                        val(&lanes),
                        val(&sp.n_blocks),
                        val(&sp.n_local),
                        val(&sp.force_first),
                    ];
                    let cfg = LaunchConfig {
                        grid_dim: (cluster, op.kv_heads as u32, 1),
                        block_dim: (QUEST_CLUSTER_WARPS * 32, 1, 1),
                        shared_mem_bytes: smem,
                    };
                    // SAFETY: args are `quest_decode_cluster_g*(p, q, k, v, kmin, kmax, mean,
                    // selected, out, lse, nb, lanes, n_blocks, n_local, force_first)` in order, each
                    // alive across the call; q [Hq, D], k/v [Hkv, T, D], out [Hq, D], lse [Hq],
                    // ranking = mean [Hkv, NB] f32 and selected [Hkv, width] i32 (checked), kmin /
                    // kmax [Hkv, NB, D] in the module's dtype (checked or written above); the
                    // group (2, 4 or 8) is the entry's GM, D = lanes * 16 bytes = 32 * dpl, NB <=
                    // cluster * the CTA's QUEST_CLUSTER_ITEMS items a thread (quest_cluster), and
                    // the dynamic shared memory (the warps' V tiles) was allowed for the function.
                    unsafe { self.launch_args(&f, cfg, Launch::Cluster(cluster), &mut args) }
                        .map_err(|e| device_err(entry, e))?;
                    return Ok(());
                }
                // Scores, group means and the selection in one launch (quest_select_kv_g*);
                // ranking = the means [Hkv, NB] (checked).
                let entry = match (op.q_heads / op.kv_heads).next_power_of_two() {
                    1 => "quest_select_kv_g1",
                    2 => "quest_select_kv_g2",
                    4 => "quest_select_kv_g4",
                    _ => "quest_select_kv_g8",
                };
                // One tile of 4 * 32 / lanes blocks per warp (a warp waits for one round trip to
                // memory), so each CTA covers a tile per warp.
                let lanes = op.dim / (16 / op.dtype.size());
                let warps = QUEST_SELECT_KV_THREADS as usize / 32;
                let runs = nb.div_ceil(warps * 4 * (32 / lanes)).max(1);
                let p = sop.params();
                let lanes32 = lanes as u32;
                let f = self.function(Family::Blocks, Spec::dtype(op.dtype), entry)?;
                let mut b = self.stream.launch_builder(&f);
                b.arg(&p).arg(&q.slice).arg(kmin).arg(kmax).arg(&mut ranking.slice).arg(&mut selected.slice);
                b.arg(&*self.arrivals).arg(&lanes32).arg(&sp.n_blocks).arg(&sp.n_local).arg(&sp.force_first);
                b.arg(&sp.width);
                let cfg = LaunchConfig {
                    grid_dim: (runs as u32, op.kv_heads as u32, 1),
                    block_dim: (QUEST_SELECT_KV_THREADS, 1, 1),
                    shared_mem_bytes: 4 * nb as u32,
                };
                // SAFETY: matches `quest_select_kv_g*(p, q, kmin, kmax, mean, selected, arrivals,
                // lanes, n_blocks, n_local, force_first, width)`; q [Hq, D], kmin/kmax
                // [Hkv, NB, D] in the module's dtype (checked or written above), mean = ranking
                // [Hkv, NB] f32 and selected [Hkv, width] i32 (checked); D = lanes * 16 bytes,
                // group <= the entry's GM; arrivals holds ARRIVAL_SLOTS >= Hkv zeroed words that
                // every launch leaves zeroed; NB words of dynamic shared memory (<= 32 KiB).
                unsafe { b.launch(cfg) }.map_err(|e| device_err(entry, e))?;
            } else if shared {
                let mut per_head = self.scratch(4 * op.q_heads * nb)?;
                self.launch_quest_scores(&sop, &q.slice, kmin, kmax, &mut per_head)?;
                let p = BlockParams {
                    q_heads: op.q_heads as u32,
                    kv_heads: op.kv_heads as u32,
                    seq: 1,
                    dim: op.dim as u32,
                    block_size: 1,
                    nb: nb as u32,
                    ..Default::default()
                };
                let f = self.function(Family::Blocks, Spec::dtype(op.dtype), "quest_group_mean")?;
                let mut b = self.stream.launch_builder(&f);
                b.arg(&p).arg(&per_head).arg(&mut ranking.slice);
                // SAFETY: matches `quest_group_mean(p, scores, mean)`; per_head holds Hq*NB f32
                // written above, ranking = mean [Hkv, NB] f32 (checked); guarded e < Hkv*NB.
                unsafe { b.launch(elementwise(op.kv_heads * nb)) }.map_err(|e| device_err("quest_group_mean", e))?;
            } else {
                self.launch_quest_scores(&sop, &q.slice, kmin, kmax, &mut ranking.slice)?;
            }
        }
        // 3. forced top-k block selection per selection row (keys filled first for random),
        // unless quest_select_kv did it.
        if !fused {
            self.select(&op.select_params(), ranking, selected)?;
        }
        if shared {
            // 4. one block set per kv head: the grouped decode reads each block once per group.
            return self.sparse_attention(head, quest_kv_params(op), q, k, v, &selected.slice, out, lse);
        }
        // 4. attention over every token of the selected blocks: with GQA, over the union of the
        // group's blocks, each block read once for the group (per-head masks keep each query
        // head on its own selection).
        let group = op.q_heads / op.kv_heads;
        if group > 1 && group <= 32 && nb <= QUEST_UNION_MAX_NB && decode_fits(head, op.dim) {
            let cap = nb.min(group * op.n_sel());
            let mut uidx = self.scratch(4 * op.kv_heads * cap)?;
            let mut umask = self.scratch(4 * op.kv_heads * cap)?;
            let mut ucount = self.scratch(4 * op.kv_heads)?;
            let sp = op.select_params();
            let (group32, cap32) = (group as u32, cap as u32);
            let f = self.function(Family::Select, Spec::NONE, "quest_union")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&sp).arg(&selected.slice).arg(&mut uidx).arg(&mut umask).arg(&mut ucount).arg(&group32).arg(&cap32);
            let cfg = LaunchConfig {
                grid_dim: (op.kv_heads as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 4 * nb as u32,
            };
            // SAFETY: matches `quest_union(p, selected, uidx, umask, ucount, group, cap)`;
            // selected [Hq, width] i32 written by select_blocks above (Hq = Hkv * group), uidx /
            // umask sized Hkv*cap and ucount Hkv here, every entry below cap written; block ids
            // checked against nb; nb words of dynamic shared memory (<= 48 KiB); group <= 32.
            unsafe { b.launch(cfg) }.map_err(|e| device_err("quest_union", e))?;
            let p = AttentionParams {
                q_heads: op.q_heads as u32,
                kv_heads: op.kv_heads as u32,
                q_len: 1,
                kv_len: op.seq as u32,
                dim: op.dim as u32,
                causal: 0,
                scale: op.scale,
                idx_heads: op.kv_heads as u32,
                n_idx: cap32,
                block_size: bs as u32,
                splits: 1,
                _pad0: 0,
            };
            return self.decode(head, p, DecodeKeys::Masked(&uidx, &umask, &ucount), 1, None, q, k, v, out, lse);
        }
        let mut p = AttentionSparse {
            q_heads: op.q_heads,
            kv_heads: op.kv_heads,
            seq: op.seq,
            dim: op.dim,
            idx_heads: op.q_heads,
            n_idx: op.n_sel(),
            scale: op.scale,
            dtype: op.dtype,
        }
        .params();
        p.block_size = bs as u32;
        self.sparse_attention(head, p, q, k, v, &selected.slice, out, lse)
    }

    fn moba_prefill(
        &self,
        op: &MobaPrefill,
        q: &CudaBuffer,
        k: &CudaBuffer,
        v: &CudaBuffer,
        out: &mut CudaBuffer,
        lse: &mut CudaBuffer,
        selected: &mut CudaBuffer,
        ranking: Option<&mut CudaBuffer>,
    ) -> Result<()> {
        match ranking.as_deref() {
            Some(r) => ops::check(op, &[q, k, v, out, lse, selected, r])?,
            None => ops::check(op, &[q, k, v, out, lse, selected])?,
        }
        let head = head_spec(MobaPrefill::NAME, op.dtype, op.dim)?;
        let nb = op.nb();
        let bs = op.select.block_size;
        // Attention parameters (also the routing kernel's: heads, length, dim, block size, W).
        let p = AttentionParams {
            q_heads: op.q_heads as u32,
            kv_heads: op.kv_heads as u32,
            q_len: op.seq as u32,
            kv_len: op.seq as u32,
            dim: op.dim as u32,
            causal: 1,
            scale: op.scale,
            idx_heads: op.q_heads as u32,
            n_idx: op.width() as u32,
            block_size: bs as u32,
            splits: 1,
            _pad0: 0,
        };
        let route_bytes = route_smem_bytes(op);
        let fused_route = moba_route_on()
            && op.select.selector == Selector::Score
            && ranking.is_none()
            && op.dtype == DType::BF16
            && prefill_mma_on(head, op.dim)
            && nb <= ROUTE_MAX_NB
            && route_bytes <= self.smem_per_block_optin()?;
        if fused_route {
            // 1. block means per kv head (f32 scratch), 2. gate and routing in one pass.
            let kmean = self.block_means_f32(op, k)?;
            let f = self.function_with_smem(Family::Attention, head, "moba_route_mma", route_bytes)?;
            let sp = op.select_params();
            let key_stride = route_key_stride(nb) as u32;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&q.slice).arg(&kmean).arg(&mut selected.slice);
            b.arg(&sp.n_blocks).arg(&sp.n_local).arg(&sp.force_first).arg(&key_stride);
            let cfg = LaunchConfig {
                grid_dim: ((op.seq as u32).div_ceil(PREFILL_ROWS), grid_y(MobaPrefill::NAME, op.q_heads)?, 1),
                block_dim: (ROUTE_THREADS, 1, 1),
                shared_mem_bytes: route_bytes as u32,
            };
            // SAFETY: matches `moba_route_mma(p, q, kmean, selected, n_blocks, n_local,
            // force_first, key_stride)`; bf16 with D in {64, 128} (prefill_mma_on); q [Hq, T, D]
            // and selected [Hq, T, W] i32 (checked), kmean [Hkv, NB, D] f32 written above;
            // key_stride >= NB rounded up to 64 (route_key_stride) and `route_bytes` of dynamic
            // shared memory sized from it (within the device's opt-in limit, checked above); NB <=
            // ROUTE_MAX_NB, the keys a warp holds in registers; one
            // CTA per (64 tokens, query head); tokens, blocks and selected slots guarded.
            unsafe { b.launch(cfg) }.map_err(|e| device_err("moba_route_mma", e))?;
        } else {
            let mut rank_scratch;
            let ranking: &mut CudaBuffer = match ranking {
                Some(r) => r,
                None => {
                    let (dtype, len) = match op.select.selector {
                        Selector::Score => (DType::F32, op.q_heads * op.seq * nb),
                        Selector::Random { .. } => (DType::U32, op.q_heads * op.seq * nb),
                    };
                    rank_scratch = CudaBuffer { slice: self.scratch(len * 4)?, dtype, len };
                    &mut rank_scratch
                }
            };
            if op.select.selector == Selector::Score {
                // 1. block means per kv head (f32 scratch), 2. gate of every block.
                let kmean = self.block_means_f32(op, k)?;
                let gp = BlockParams { q_heads: op.q_heads as u32, ..moba_key_blocks(op).params() };
                let f = self.function(Family::Blocks, Spec::dtype(op.dtype), "moba_gate")?;
                let mut b = self.stream.launch_builder(&f);
                b.arg(&gp).arg(&q.slice).arg(&kmean).arg(&mut ranking.slice);
                let cfg = LaunchConfig {
                    grid_dim: ((op.seq as u32).div_ceil(64), grid_y(MobaPrefill::NAME, op.q_heads)?, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: matches `moba_gate(p, q, kmean, gate)`; q [Hq, T, D] (checked),
                // kmean written above, ranking = gate [Hq, T, NB] f32 (checked); one CTA per
                // (64 tokens, query head), 256 threads (its launch bounds); tokens, blocks
                // and channels guarded.
                unsafe { b.launch(cfg) }.map_err(|e| device_err("moba_gate", e))?;
            }
            // 3. per-token routing (the random selector's keys first, inside `select`).
            self.select(&op.select_params(), ranking, selected)?;
        }
        // 4. causal attention over the selected blocks' tokens.
        let mma = prefill_mma_on(head, op.dim) && bs.is_multiple_of(PREFILL_ROWS as usize) && nb <= PREFILL_MAX_NB;
        if mma && moba_takes_buckets(op) {
            if let Some(heads) = moba_bucket_heads(op, self.moba_workspace) {
                return self.moba_buckets(op, head, heads, p, q, k, v, out, lse, selected);
            }
        }
        if mma {
            let f = self.function(Family::Attention, head, "attention_blocks_mma")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&q.slice).arg(&k.slice).arg(&v.slice).arg(&selected.slice);
            b.arg(&mut out.slice).arg(&mut lse.slice);
            let cfg = LaunchConfig {
                grid_dim: ((op.seq as u32).div_ceil(PREFILL_ROWS), grid_y(MobaPrefill::NAME, op.q_heads)?, 1),
                block_dim: (PREFILL_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches `attention_blocks_mma(p, q, k, v, sel, out, lse)`; as
            // attention_blocks below, plus: f16/bf16 with D in {64, 128} (prefill_mma_on), block
            // size a multiple of the 64-key tile and NB <= PF_MAX_NB (the kernel's shared row
            // sets); one CTA per 64 query rows and head.
            unsafe { b.launch(cfg) }.map_err(|e| device_err("attention_blocks_mma", e))?;
            return Ok(());
        }
        let f = self.function(Family::Attention, head, "attention_blocks")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&q.slice).arg(&k.slice).arg(&v.slice).arg(&selected.slice);
        b.arg(&mut out.slice).arg(&mut lse.slice);
        // SAFETY: matches `attention_blocks(p, q, k, v, sel, out, lse)`; q/out [Hq, T, D],
        // k/v [Hkv, T, D], selected [Hq, T, W] (written above), lse [Hq, T] (checked); guarded
        // row < Hq*T, block ids checked against ceil(T / bs), tokens clipped causally.
        unsafe { b.launch(warp_rows(op.q_heads * op.seq, 1)) }.map_err(|e| device_err("attention_blocks", e))?;
        Ok(())
    }

    fn snapkv_compress(
        &self,
        op: &SnapKvCompress,
        q_obs: &CudaBuffer,
        k: &CudaBuffer,
        kept: &mut CudaBuffer,
        ranking: Option<&mut CudaBuffer>,
    ) -> Result<()> {
        match ranking.as_deref() {
            Some(r) => ops::check(op, &[q_obs, k, &*kept, r])?,
            None => ops::check(op, &[q_obs, k, &*kept])?,
        }
        let spec = head_spec(SnapKvCompress::NAME, op.dtype, op.dim)?;
        let p = op.params();
        let hs = op.out_heads();
        let Some(ranking) = ranking.filter(|_| op.compresses()) else {
            // T <= capacity: nothing is evicted.
            let f = self.function(Family::SnapKv, spec, "snapkv_keep_all")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&mut kept.slice);
            // SAFETY: matches `snapkv_keep_all(p, kept)`; kept [Hs, T] i32 (checked, T <=
            // capacity); guarded e < Hs*T.
            unsafe { b.launch(elementwise(hs * op.seq)) }.map_err(|e| device_err("snapkv_keep_all", e))?;
            return Ok(());
        };
        let n_prefix = p.n_prefix as usize;
        let window = p.window as usize;
        match op.settings.selector {
            Selector::Score => {
                let mut row_lse = self.scratch(4 * op.q_heads * window)?;
                let mut colsum = self.scratch(4 * op.q_heads * n_prefix)?;
                if prefill_mma_on(spec, op.dim) && window.is_multiple_of(16) {
                    self.snapkv_scores_mma(op, spec, q_obs, k, &mut row_lse, &mut colsum)?;
                } else {
                    // Pass 1: log-sum-exp of every window query's causal row.
                    let f = self.function(Family::SnapKv, spec, "snapkv_lse")?;
                    let mut b = self.stream.launch_builder(&f);
                    b.arg(&p).arg(&q_obs.slice).arg(&k.slice).arg(&mut row_lse);
                    let cfg = LaunchConfig {
                        grid_dim: ((op.q_heads * window) as u32, 1, 1),
                        block_dim: (32 * LSE_WARPS, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    // SAFETY: matches `snapkv_lse(p, q_obs, k, row_lse)`; q_obs [Hq, w, D],
                    // k [Hkv, T, D] (checked, T > capacity > w), row_lse sized Hq*w f32 here; one
                    // block per (head, window query), keys clipped to T-w+i.
                    unsafe { b.launch(cfg) }.map_err(|e| device_err("snapkv_lse", e))?;
                    // Pass 2: column sums of the window attention over the prefix keys.
                    let f = self.function(Family::SnapKv, spec, "snapkv_colsum")?;
                    let mut b = self.stream.launch_builder(&f);
                    b.arg(&p).arg(&q_obs.slice).arg(&k.slice).arg(&row_lse).arg(&mut colsum);
                    let mut cfg = warp_rows(n_prefix, 1);
                    cfg.grid_dim.1 = grid_y(SnapKvCompress::NAME, op.q_heads)?;
                    // SAFETY: matches `snapkv_colsum(p, q_obs, k, row_lse, colsum)`; row_lse written
                    // above, colsum sized Hq*n_prefix f32 here; guarded j < n_prefix, h < Hq.
                    unsafe { b.launch(cfg) }.map_err(|e| device_err("snapkv_colsum", e))?;
                }
                // Pooling and group combination into the scores output.
                let f = self.function(Family::SnapKv, spec, "snapkv_pool")?;
                let mut b = self.stream.launch_builder(&f);
                b.arg(&p).arg(&colsum).arg(&mut ranking.slice);
                // SAFETY: matches `snapkv_pool(p, colsum, scores)`; colsum written above,
                // ranking = scores [Hs, n_prefix] f32 (checked); guarded e < Hs*n_prefix.
                unsafe { b.launch(elementwise(hs * n_prefix)) }.map_err(|e| device_err("snapkv_pool", e))?;
            }
            Selector::Random { .. } => {
                let f = self.function(Family::SnapKv, spec, "snapkv_keys")?;
                let mut b = self.stream.launch_builder(&f);
                b.arg(&p).arg(&mut ranking.slice);
                // SAFETY: matches `snapkv_keys(p, keys)`; ranking = keys [Hs, n_prefix] u32
                // (checked); guarded e < Hs*n_prefix.
                unsafe { b.launch(elementwise(hs * n_prefix)) }.map_err(|e| device_err("snapkv_keys", e))?;
            }
        }
        let f = self.function(Family::SnapKv, spec, "snapkv_select")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&ranking.slice).arg(&mut kept.slice);
        // SAFETY: matches `snapkv_select(p, ranking, kept)`; ranking [Hs, n_prefix] written
        // above, kept [Hs, capacity] i32 (checked, T > capacity); one block per output head,
        // at most `capacity` entries written per row.
        unsafe { b.launch(block_rows(hs, op.seq)) }.map_err(|e| device_err("snapkv_select", e))?;
        Ok(())
    }

    fn attention_dense(
        &self,
        op: &AttentionDense,
        q: &CudaBuffer,
        k: &CudaBuffer,
        v: &CudaBuffer,
        out: &mut CudaBuffer,
        lse: &mut CudaBuffer,
    ) -> Result<()> {
        ops::check(op, &[q, k, v, out, lse])?;
        let spec = head_spec(AttentionDense::NAME, op.dtype, op.dim)?;
        let mut p = op.params();
        if op.q_len == 1 && decode_fits(spec, op.dim) {
            // One query per head: causal or not, it sees every key.
            return self.decode(spec, p, DecodeKeys::Dense, 1, None, q, k, v, out, lse);
        }
        if op.q_len > 1 && prefill_mma_on(spec, op.dim) {
            // The wide kernel: 128 query rows a CTA (two m-tiles a warp, the query tile in
            // dynamic shared memory: 2 x 64 rows of Q, K and V, rows padded by 8 elements).
            let wide = prefill_wide(op.q_len);
            let (entry, rows) = if wide {
                ("attention_prefill_mma_wide", 2 * PREFILL_ROWS)
            } else {
                ("attention_prefill_mma", PREFILL_ROWS)
            };
            let smem = if wide { prefill_wide_smem(op.dim, op.dtype) } else { 0 };
            let f = self.function_with_smem(Family::Attention, spec, entry, smem)?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p).arg(&q.slice).arg(&k.slice).arg(&v.slice).arg(&mut out.slice).arg(&mut lse.slice);
            let cfg = LaunchConfig {
                grid_dim: ((op.q_len as u32).div_ceil(rows), grid_y(AttentionDense::NAME, op.q_heads)?, 1),
                block_dim: (PREFILL_THREADS, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            // SAFETY: matches `attention_prefill_mma{,_wide}(p, q, k, v, out, lse)`; q/out [Hq, Tq,
            // D], k/v [Hkv, Tk, D], lse [Hq, Tq] (checked) in f16/bf16 with D = 32 * dpl in {64,
            // 128} (prefill_mma_on: 16-byte aligned rows); one CTA per `rows` query rows and head,
            // rows guarded against Tq and keys against Tk; the wide kernel's dynamic shared memory
            // is its PF_WIDE_SMEM_BYTES (allowed above by function_with_smem), the other's static
            // memory is under 48 KiB.
            unsafe { b.launch(cfg) }.map_err(|e| device_err(entry, e))?;
            return Ok(());
        }
        let rows = op.q_heads * op.q_len;
        p.splits = self.splits(rows, op.kv_len);
        let (mut part_out, mut part_lse) = self.split_partials(rows, p.splits, op.dim)?;
        let f = self.function(Family::Attention, spec, "attention_dense")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&q.slice).arg(&k.slice).arg(&v.slice);
        b.arg(&mut out.slice).arg(&mut lse.slice).arg(&mut part_out).arg(&mut part_lse);
        // SAFETY: matches `attention_dense(p, q, k, v, out, lse, part_out, part_lse)`;
        // q/out [Hq, Tq, D], k/v [Hkv, Tk, D], lse [Hq, Tq] (checked); part buffers hold
        // rows*splits entries when splits > 1 (unused otherwise); guarded row < Hq*Tq, keys < Tk.
        unsafe { b.launch(warp_rows(rows, p.splits)) }.map_err(|e| device_err("attention_dense", e))?;
        if p.splits > 1 {
            self.merge(spec, &p, &part_out, &part_lse, out, lse)?;
        }
        Ok(())
    }

    fn attention_sparse(
        &self,
        op: &AttentionSparse,
        q: &CudaBuffer,
        k: &CudaBuffer,
        v: &CudaBuffer,
        idx: &CudaBuffer,
        out: &mut CudaBuffer,
        lse: &mut CudaBuffer,
    ) -> Result<()> {
        ops::check(op, &[q, k, v, idx, out, lse])?;
        let spec = head_spec(AttentionSparse::NAME, op.dtype, op.dim)?;
        self.sparse_attention(spec, op.params(), q, k, v, &idx.slice, out, lse)
    }

    fn hit_rate(
        &self,
        op: &HitRate,
        sel: &CudaBuffer,
        gold: &CudaBuffer,
        head_hit: &mut CudaBuffer,
        rate: &mut CudaBuffer,
    ) -> Result<()> {
        ops::check(op, &[sel, gold, head_hit, rate])?;
        let p = op.params();
        let f = self.function(Family::HitRate, Spec::NONE, "hit_rate")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p).arg(&sel.slice).arg(&gold.slice).arg(&mut head_hit.slice).arg(&mut rate.slice);
        // SAFETY: matches `hit_rate(p, sel, gold, head_hit, rate)`; sel [S, H, N], gold [S],
        // head_hit [H] i32 and rate [1] f32 (checked); one block loops over the heads, every
        // candidate index checked against N.
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }.map_err(|e| device_err("hit_rate", e))?;
        Ok(())
    }

    fn cache_fill(
        &self,
        op: &CacheFill,
        k_src: &CudaBuffer,
        v_src: &CudaBuffer,
        idx: Option<&CudaBuffer>,
        k: &mut CudaBuffer,
        v: &mut CudaBuffer,
        kmin: &mut CudaBuffer,
        kmax: &mut CudaBuffer,
        kmean: &mut CudaBuffer,
        lens: &mut CudaBuffer,
        pos: &mut CudaBuffer,
    ) -> Result<()> {
        self.fill_cache(op, k_src, v_src, idx, [k, v, kmin, kmax, kmean], lens, pos)
    }

    fn cache_append(
        &self,
        op: &CacheAppend,
        k_new: &CudaBuffer,
        v_new: &CudaBuffer,
        g: Option<&CudaBuffer>,
        lens: &CudaBuffer,
        pos: &CudaBuffer,
        state: Option<(&mut CudaBuffer, &mut CudaBuffer)>,
        k: &mut CudaBuffer,
        v: &mut CudaBuffer,
        kmin: &mut CudaBuffer,
        kmax: &mut CudaBuffer,
        kmean: &mut CudaBuffer,
    ) -> Result<()> {
        self.append_cache(op, k_new, v_new, g, lens, pos, state, [k, v, kmin, kmax, kmean])
    }

    fn cache_advance(&self, op: &CacheAdvance, lens: &mut CudaBuffer, pos: &mut CudaBuffer) -> Result<()> {
        self.advance_cache(op, lens, pos)
    }

    fn cache_decode(
        &self,
        op: &CacheDecode,
        q: &CudaBuffer,
        k: &CudaBuffer,
        v: &CudaBuffer,
        lens: &CudaBuffer,
        stats: Option<(&CudaBuffer, &CudaBuffer)>,
        out: &mut CudaBuffer,
        lse: &mut CudaBuffer,
        selected: Option<&mut CudaBuffer>,
        ranking: Option<&mut CudaBuffer>,
    ) -> Result<()> {
        self.decode_cache(op, q, k, v, lens, stats, out, lse, selected, ranking)
    }
}

/// Whether MoBA's attention runs key-block-major over buckets (`moba_buckets`) rather than as
/// one query-major pass over the union of each 64-query tile's selected blocks
/// (`attention_blocks_mma`). `KVSPARSE_CUDA_MOBA=buckets` or `=union` forces one (to time both in
/// one GPU run); by default the buckets run when the key-query pairs the selection allows
/// ([`MobaPrefill::pairs_bound`]) are at most 2/7 of dense causal attention's. Why 2/7: on the
/// H200 at 32K tokens (BENCHMARKS run 36, bucket CTAs over runs of 8 tiles) the bucket path
/// cost about 13 ms plus 140 ms per unit of that pair fraction, the union pass about 55 ms
/// whatever the budget: the two meet near 0.28, between 1/8 (0.23 of the pairs: 48.3 against
/// 55.2 ms) and 1/4 (0.44: 82.3 against 55.7 ms).
fn moba_takes_buckets(op: &MobaPrefill) -> bool {
    static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| match std::env::var("KVSPARSE_CUDA_MOBA").as_deref().map(str::trim) {
        Ok("buckets") => Some(true),
        Ok("union") => Some(false),
        _ => None,
    });
    forced.unwrap_or_else(|| {
        let dense_pairs = op.q_heads as u64 * (op.seq as u64 * (op.seq as u64 + 1) / 2);
        7 * op.pairs_bound() <= 2 * dense_pairs
    })
}

/// Tiles of its bucket each CTA of the bucket attention takes, the block's K and V staged once
/// (`attention_bucket_runs_mma`, block size 64; 1 = `attention_buckets_mma`, a tile a CTA). 8 by
/// default: on the H200 at 32K tokens runs of 8 took MoBA 1/4, 1/8, 1/16 from 99.0 / 57.9 / 36.1
/// ms to 83.1 / 49.3 / 32.1 ms, runs of 4 to 85.2 / 50.3 / 32.1 (BENCHMARKS run 36).
/// `KVSPARSE_CUDA_MOBA_RUN=R` (1 to 64) picks another run length.
fn moba_run_tiles() -> usize {
    static RUN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *RUN.get_or_init(|| crate::env_number("KVSPARSE_CUDA_MOBA_RUN", |r| (1..=64).contains(r)).unwrap_or(8))
}

/// Query rows of one bucket tile (the prefill's `PF_BM`).
const MOBA_TILE_ROWS: usize = PREFILL_ROWS as usize;

/// Tokens per CTA of `moba_bucket_count` / `moba_bucket_fill` (`MOBA_BUCKET_TOKENS`).
const MOBA_BUCKET_TOKENS: u32 = 256;

/// Room for the (token, selected block) pairs of one query head of `op`: a slot of each token's
/// row of `selected` each (T x W). The selection puts at most min(W, c + 1) distinct blocks in the
/// row of a token of block c, so this over-counts the first W blocks' tokens (3% at 1/16 of 32K
/// tokens), but no content of `selected` can make the lists outgrow it.
fn moba_pairs_per_head(op: &MobaPrefill) -> usize {
    op.seq * op.width()
}

/// Bytes of bucket workspace per query head: per pair its position, entry, lse and partial
/// output (storage dtype); the tile map; the bucket counters, starts and tile starts.
fn moba_bucket_bytes_per_head(op: &MobaPrefill) -> usize {
    let pairs = moba_pairs_per_head(op);
    pairs * (4 + 4 + 4 + op.dim * op.dtype.size()) + 4 * (pairs.div_ceil(MOBA_TILE_ROWS) + 6 * op.nb() + 2)
}

/// Query heads per pass of the bucket path within `workspace` bytes, or `None` when one head's
/// lists do not fit (or positions would pass u32): the union kernel runs then.
fn moba_bucket_heads(op: &MobaPrefill, workspace: usize) -> Option<usize> {
    let per_head = moba_bucket_bytes_per_head(op);
    // At most 65535 heads a pass: the count and fill kernels put them on the grid's y axis.
    let heads = (workspace / per_head.max(1)).min(op.q_heads).min(65_535);
    (heads >= 1 && heads * moba_pairs_per_head(op) < u32::MAX as usize).then_some(heads)
}

/// Threads of `moba_route_mma` (`ROUTE_THREADS`): 8 warps, two per 16-row group of the tile.
const ROUTE_THREADS: u32 = 256;

/// Words per key row of `moba_route_mma`'s shared scores: NB rounded up to the 64-block chunks
/// it writes, plus 8 so that the rows of a warp's stores fall on different banks.
fn route_key_stride(nb: usize) -> usize {
    nb.next_multiple_of(64) + 8
}

/// Whether bf16 MoBA without a ranking output routes in one pass (`moba_route_mma`);
/// `KVSPARSE_CUDA_MOBA_ROUTE=0` takes the separate gate and selection kernels (to time both in
/// one GPU run).
fn moba_route_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| crate::env_switch("KVSPARSE_CUDA_MOBA_ROUTE", true))
}

/// Most key blocks `moba_route_mma` ranks (`ROUTE_MAX_NB`; its lanes hold NB / 32 keys each in
/// registers); longer prompts take the separate gate and selection kernels.
const ROUTE_MAX_NB: usize = 640;

/// Dynamic shared memory of `moba_route_mma`: a chunk's mean parts ([3][64][D + 8] bf16) and the
/// tile's keys ([64][key stride] u32). 181 KiB at NB 512, D 128.
fn route_smem_bytes(op: &MobaPrefill) -> usize {
    let parts = 3 * MOBA_TILE_ROWS * (op.dim + 8) * 2;
    parts + MOBA_TILE_ROWS * route_key_stride(op.nb()) * 4
}

/// The key blocks MoBA's gate ranks: per kv head, `T` keys in blocks of the selection's size.
fn moba_key_blocks(op: &MobaPrefill) -> BlockShape {
    BlockShape { heads: op.kv_heads, seq: op.seq, dim: op.dim, block_size: op.select.block_size, dtype: op.dtype }
}

impl Cuda {
    /// f32 means of every key block of `k` ([Hkv, NB, D] scratch), MoBA's gate operand.
    fn block_means_f32(&self, op: &MobaPrefill, k: &CudaBuffer) -> Result<CudaSlice<u8>> {
        let shape = moba_key_blocks(op);
        let stats = op.kv_heads * op.nb() * op.dim;
        let mut kmean = self.scratch(stats * 4)?;
        let f = self.function(Family::Blocks, Spec::dtype(op.dtype), "block_mean_f32")?;
        let mean_p = shape.params();
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mean_p).arg(&k.slice).arg(&mut kmean);
        // SAFETY: matches `block_mean_f32(p, k, kmean)`; k [Hkv, T, D] (checked by the caller),
        // kmean sized Hkv*NB*D f32 here; guarded e < Hkv*NB*D.
        unsafe { b.launch(elementwise(stats)) }.map_err(|e| device_err("block_mean_f32", e))?;
        Ok(kmean)
    }

    /// The most dynamic shared memory one CTA may opt in to on this device.
    fn smem_per_block_optin(&self) -> Result<usize> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let bytes = self
            .ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| device_err("device attribute", e))?;
        Ok(bytes.max(0) as usize)
    }
}

impl Cuda {
    /// MoBA's attention key-block-major, `heads` query heads per pass: buckets of the tokens that
    /// selected each (head, block) (`moba_bucket_count`, `moba_bucket_scan`, `moba_bucket_fill`),
    /// 64 bucket entries per CTA against their block on tensor cores (`attention_buckets_mma`),
    /// then each token's partials merged by lse (`moba_merge_pairs`). Work is the selected pairs
    /// only, where the union kernel's query tiles see the union of 64 rows' blocks.
    #[allow(clippy::too_many_arguments)]
    fn moba_buckets(
        &self,
        op: &MobaPrefill,
        head: Spec,
        heads: usize,
        p: AttentionParams,
        q: &CudaBuffer,
        k: &CudaBuffer,
        v: &CudaBuffer,
        out: &mut CudaBuffer,
        lse: &mut CudaBuffer,
        selected: &CudaBuffer,
    ) -> Result<()> {
        let (t, w, nb) = (op.seq, op.width(), op.nb());
        let pairs = heads * moba_pairs_per_head(op);
        let n = heads * nb;
        // A CTA takes `run` tiles of a bucket (attention_bucket_runs_mma, block 64) or one.
        let run = if op.select.block_size == MOBA_TILE_ROWS { moba_run_tiles() } else { 1 };
        let unit = MOBA_TILE_ROWS * run;
        let tiles = pairs.div_ceil(unit) + n;
        let mut counters = self.scratch(8 * n)?;
        let mut start = self.scratch(4 * (n + 1))?;
        let mut tile_start = self.scratch(4 * (n + 1))?;
        let mut tile_of = self.scratch(4 * tiles)?;
        let mut entries = self.scratch(4 * pairs)?;
        let mut pair_pos = self.scratch(4 * heads * t * w)?;
        let mut part_o = self.scratch(pairs * op.dim * op.dtype.size())?;
        let mut part_lse = self.scratch(4 * pairs)?;
        let (t32, w32, nb32) = (t as u32, w as u32, nb as u32);
        let count_f = self.function_with_smem(Family::Select, Spec::NONE, "moba_bucket_count", 4 * nb)?;
        let scan_f = self.function(Family::Select, Spec::NONE, "moba_bucket_scan")?;
        let fill_f = self.function_with_smem(Family::Select, Spec::NONE, "moba_bucket_fill", 8 * nb)?;
        let attend_entry = if run > 1 { "attention_bucket_runs_mma" } else { "attention_buckets_mma" };
        let attend_f = self.function(Family::Attention, head, attend_entry)?;
        let unit32 = unit as u32;
        let merge_f = self.function(Family::Attention, head, "moba_merge_pairs")?;
        for h0 in (0..op.q_heads).step_by(heads) {
            let nh = heads.min(op.q_heads - h0);
            let (h0_32, nh_32, n_live) = (h0 as u32, nh as u32, (nh * nb) as u32);
            self.stream.memset_zeros(&mut counters).map_err(|e| device_err("memset moba buckets", e))?;
            let by_tokens = LaunchConfig {
                grid_dim: (t32.div_ceil(MOBA_BUCKET_TOKENS), nh_32, 1),
                block_dim: (MOBA_BUCKET_TOKENS, 1, 1),
                shared_mem_bytes: 4 * nb32,
            };
            let mut b = self.stream.launch_builder(&count_f);
            let mut counts = counters.slice_mut(..4 * n);
            b.arg(&selected.slice).arg(&mut counts).arg(&t32).arg(&w32).arg(&nb32).arg(&h0_32);
            // SAFETY: matches `moba_bucket_count(sel, counts, seq, width, nb, h0)`; selected is
            // [Hq, T, W] i32 (checked by the caller), h0 + nh <= Hq; counts holds n >= nh*nb
            // zeroed words; nb words of dynamic shared memory; tokens guarded t < T.
            unsafe { b.launch(by_tokens) }.map_err(|e| device_err("moba_bucket_count", e))?;
            let mut b = self.stream.launch_builder(&scan_f);
            b.arg(&counters).arg(&mut start).arg(&mut tile_start).arg(&mut tile_of).arg(&n_live).arg(&unit32);
            // SAFETY: matches `moba_bucket_scan(counts, start, tile_start, tile_of, n, unit)`;
            // counts are the first n_live <= n words of counters; start / tile_start hold n + 1
            // words; tile_of holds ceil(pairs / unit) + n >= the tiles of any n_live buckets of at
            // most `pairs` entries; one CTA.
            unsafe { b.launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 }) }
                .map_err(|e| device_err("moba_bucket_scan", e))?;
            let mut b = self.stream.launch_builder(&fill_f);
            let mut cursor = counters.slice_mut(4 * n..);
            b.arg(&selected.slice).arg(&start).arg(&mut cursor).arg(&mut entries).arg(&mut pair_pos);
            b.arg(&t32).arg(&w32).arg(&nb32).arg(&h0_32);
            // SAFETY: matches `moba_bucket_fill(sel, start, cursor, entries, pair_pos, seq, width,
            // nb, h0)`; as moba_bucket_count, plus: cursor n zeroed words, entries `pairs` words
            // (one entry per slot of `selected` at most, T*W a head), pair_pos heads*T*W words;
            // 2*nb words of dynamic shared memory.
            unsafe { b.launch(LaunchConfig { shared_mem_bytes: 8 * nb32, ..by_tokens }) }
                .map_err(|e| device_err("moba_bucket_fill", e))?;
            let mut b = self.stream.launch_builder(&attend_f);
            b.arg(&p).arg(&q.slice).arg(&k.slice).arg(&v.slice);
            b.arg(&entries).arg(&start).arg(&tile_start).arg(&tile_of).arg(&mut part_o).arg(&mut part_lse);
            b.arg(&nb32).arg(&h0_32).arg(&n_live);
            if run > 1 {
                b.arg(&unit32);
            }
            let cfg = LaunchConfig {
                grid_dim: ((nh * moba_pairs_per_head(op)).div_ceil(unit) as u32 + n_live, 1, 1),
                block_dim: (PREFILL_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches `attention_buckets_mma(p, q, k, v, entries, start, tile_start,
            // tile_of, part_o, part_lse, nb, h0, n)` (or attention_bucket_runs_mma with the run's
            // rows last, block size 64); q [Hq, T, D], k / v [Hkv, T, D] (checked);
            // the bucket lists written above for heads h0 .. h0 + nh; the grid covers every tile
            // (CTAs past tile_start[n] return); part_o / part_lse hold `pairs` rows; f16/bf16 with
            // D in {64, 128} and block size a multiple of 64 (the caller's mma check).
            unsafe { b.launch(cfg) }.map_err(|e| device_err(attend_entry, e))?;
            let mut b = self.stream.launch_builder(&merge_f);
            b.arg(&p).arg(&pair_pos).arg(&part_o).arg(&part_lse).arg(&mut out.slice).arg(&mut lse.slice);
            b.arg(&h0_32).arg(&nh_32);
            let cfg = LaunchConfig {
                grid_dim: ((nh * t).div_ceil(8) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches `moba_merge_pairs(p, pair_pos, part_o, part_lse, out, lse, h0, nh)`;
            // p.n_idx = W, p.q_len = T; pair_pos and the partials written above; out [Hq, T, D],
            // lse [Hq, T] (checked); rows guarded < nh*T, 8 warps per CTA.
            unsafe { b.launch(cfg) }.map_err(|e| device_err("moba_merge_pairs", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{default_scale, SelectConfig, Selector};

    fn moba_32k(den: usize) -> MobaPrefill {
        let select = SelectConfig {
            block_size: 64,
            n_blocks: 512 / den,
            force_first: true,
            n_local: 1,
            selector: Selector::Score,
        };
        MobaPrefill::new(32, 8, 32768, 128, select, default_scale(128), DType::BF16).unwrap().without_ranking()
    }

    /// The choice run 36 measured: buckets at 1/16 and 1/8 of 32K tokens, the union kernel at
    /// 1/4 (unless `KVSPARSE_CUDA_MOBA` forces one).
    #[test]
    fn moba_takes_buckets_for_the_sparser_budgets() {
        if std::env::var_os("KVSPARSE_CUDA_MOBA").is_some() {
            return;
        }
        assert!(moba_takes_buckets(&moba_32k(16)));
        assert!(moba_takes_buckets(&moba_32k(8)));
        assert!(!moba_takes_buckets(&moba_32k(4)));
    }

    /// The one-pass routing's shared memory fits a Hopper CTA (227 KiB) at 32K tokens of block
    /// 64, and its key rows start 8 words past a multiple of 32 (the stores' bank spread).
    #[test]
    fn moba_route_fits_hopper_at_32k() {
        let bytes = route_smem_bytes(&moba_32k(16));
        assert!(bytes <= 227 << 10, "{bytes}");
        assert_eq!(route_key_stride(512) % 32, 8);
        assert_eq!(route_key_stride(65), 136);
    }

    /// A pass's lists fit the workspace: 2 GiB hold several heads at 1/16 of 32K tokens.
    #[test]
    fn moba_bucket_chunks_fit_the_workspace() {
        let op = moba_32k(16);
        let heads = moba_bucket_heads(&op, 2 << 30).unwrap();
        assert!(heads >= 2 && heads * moba_bucket_bytes_per_head(&op) <= 2 << 30, "{heads}");
        // A slot per token and selected-row entry.
        assert_eq!(moba_pairs_per_head(&op), 32768 * 32);
    }
}
