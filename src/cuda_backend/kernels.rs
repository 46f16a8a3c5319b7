//! Kernel sources, their specialisations, source assembly and NVRTC compilation.
//!
//! Every family (one `cuda/<family>.cu` file) is compiled as one module per [`Spec`]: the
//! assembled source is `[params struct][prelude][common.cuh][family .cu]`, with `#line`
//! directives so that NVRTC reports lines of the original files. Nothing is `#include`d and no
//! toolkit header is needed, so a bare `libnvrtc` compiles every kernel (CI does it without a GPU).

use crate::params::{
    AttentionParams, BlockParams, CacheParams, DecayParams, HitRateParams, RandomParams, SelectParams, SnapKvParams,
    TopkParams,
};
use crate::{DType, Error, Result};
use cudarc::nvrtc::Ptx;

const COMMON: &str = include_str!("../../cuda/common.cuh");

/// A kernel family: one `cuda/<name>.cu` file, one params struct, one module per [`Spec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    Random,
    Topk,
    Decay,
    Blocks,
    Select,
    Attention,
    SnapKv,
    HitRate,
    Cache,
    Timing,
}

impl Family {
    pub(crate) const ALL: [Family; 10] = [
        Family::Random,
        Family::Topk,
        Family::Decay,
        Family::Blocks,
        Family::Select,
        Family::Attention,
        Family::SnapKv,
        Family::HitRate,
        Family::Cache,
        Family::Timing,
    ];

    /// File stem under `cuda/` (also the WGSL file stem; `timing` has no WGSL twin).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::Random => "random",
            Family::Topk => "topk",
            Family::Decay => "decay",
            Family::Blocks => "blocks",
            Family::Select => "select",
            Family::Attention => "attention",
            Family::SnapKv => "snapkv",
            Family::HitRate => "hit_rate",
            Family::Cache => "cache",
            Family::Timing => "timing",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Family::Random => include_str!("../../cuda/random.cu"),
            Family::Topk => include_str!("../../cuda/topk.cu"),
            Family::Decay => include_str!("../../cuda/decay.cu"),
            Family::Blocks => include_str!("../../cuda/blocks.cu"),
            Family::Select => include_str!("../../cuda/select.cu"),
            Family::Attention => include_str!("../../cuda/attention.cu"),
            Family::SnapKv => include_str!("../../cuda/snapkv.cu"),
            Family::HitRate => include_str!("../../cuda/hit_rate.cu"),
            Family::Cache => include_str!("../../cuda/cache.cu"),
            Family::Timing => include_str!("../../cuda/timing.cu"),
        }
    }

    fn params_decl(self) -> String {
        match self {
            Family::Random => RandomParams::cuda_decl(),
            Family::Topk => TopkParams::cuda_decl(),
            Family::Decay => DecayParams::cuda_decl(),
            Family::Blocks => BlockParams::cuda_decl(),
            Family::Select => SelectParams::cuda_decl(),
            Family::Attention => AttentionParams::cuda_decl(),
            Family::SnapKv => SnapKvParams::cuda_decl(),
            Family::HitRate => HitRateParams::cuda_decl(),
            Family::Cache => CacheParams::cuda_decl(),
            Family::Timing => String::new(),
        }
    }

    /// The `extern "C"` entry points the host launches (checked against the PTX by
    /// [`compile_all_ptx`]).
    pub(crate) fn entries(self) -> &'static [&'static str] {
        match self {
            Family::Random => &["pcg_hash", "random_key", "random_select"],
            Family::Topk => &[
                "topk",
                "topk_hist",
                "topk_gather",
                "topk_sort_runs",
                "topk_merge_runs",
                "topk_sel_hist",
                "topk_sel_compact",
                "topk_sel_finish",
            ],
            Family::Decay => &[
                "decay_scan",
                "decay_step",
                "rope",
                "ratplus_kv",
                "ratplus_step",
                "decay_scan_chunks",
                "decay_scan_carry",
                "decay_scan_apply",
                "ratplus_kv_chunks",
                "ratplus_kv_carry",
                "ratplus_kv_apply",
                "decay_scan_onepass",
                "ratplus_kv_onepass",
            ],
            Family::Blocks => &[
                "block_minmax",
                "block_mean",
                "block_mean_f32",
                "quest_scores",
                "quest_scores_grouped_g1",
                "quest_scores_grouped_g2",
                "quest_scores_grouped_g4",
                "quest_scores_grouped_g8",
                "quest_group_mean",
                "moba_gate",
                "quest_select_kv_g1",
                "quest_select_kv_g2",
                "quest_select_kv_g4",
                "quest_select_kv_g8",
            ],
            Family::Select => &[
                "select_keys",
                "select_blocks",
                "quest_union",
                "moba_bucket_count",
                "moba_bucket_scan",
                "moba_bucket_fill",
            ],
            Family::Attention => &[
                "attention_dense",
                "attention_sparse",
                "attention_decode_rows",
                "attention_blocks",
                "attention_merge",
                "attention_merge_rows",
                "attention_decode_g1",
                "attention_decode_g2",
                "attention_decode_g4",
                "attention_decode_g8",
                "attention_decode_t1",
                "attention_decode_t2",
                "attention_decode_t4",
                "attention_decode_t8",
                "attention_decode_mma",
                "attention_prefill_mma",
                "attention_prefill_mma_wide",
                "attention_blocks_mma",
                "attention_buckets_mma",
                "attention_bucket_runs_mma",
                "moba_merge_pairs",
                "moba_route_mma",
                "quest_decode_cluster_g2",
                "quest_decode_cluster_g4",
                "quest_decode_cluster_g8",
            ],
            Family::SnapKv => &[
                "snapkv_lse",
                "snapkv_colsum",
                "snapkv_pool",
                "snapkv_keys",
                "snapkv_select",
                "snapkv_keep_all",
                "snapkv_lse_mma",
                "snapkv_lse_merge",
                "snapkv_colsum_mma",
            ],
            Family::HitRate => &["hit_rate"],
            Family::Cache => &["cache_fill", "cache_append", "cache_advance", "cache_rank", "cache_select"],
            Family::Timing => &["timing_flush_l2", "timing_spin"],
        }
    }

    /// Whether `entry` exists in the module of `spec`: the grouped decode kernels are compiled only
    /// for head dims up to [`DECODE_MAX_DPL`] slots per lane (their register tiles grow with D),
    /// the tensor-core prefill and decode (`attention_decode_mma`) only where [`prefill_mma_fits`].
    pub(crate) fn has_entry(self, spec: &Spec, entry: &str) -> bool {
        if matches!(entry, "snapkv_lse_mma" | "snapkv_lse_merge" | "snapkv_colsum_mma") {
            return prefill_mma_fits(spec);
        }
        if self != Family::Attention {
            return true;
        }
        if entry == "attention_decode_mma" || entry.starts_with("quest_decode_cluster_") {
            return prefill_mma_fits(spec);
        }
        if entry == "moba_route_mma" {
            return prefill_mma_fits(spec) && spec.dtype == Some(DType::BF16);
        }
        if entry.starts_with("attention_decode_") {
            return spec.dpl <= DECODE_MAX_DPL;
        }
        if matches!(
            entry,
            "attention_prefill_mma"
                | "attention_prefill_mma_wide"
                | "attention_blocks_mma"
                | "attention_buckets_mma"
                | "attention_bucket_runs_mma"
                | "moba_merge_pairs"
        ) {
            return prefill_mma_fits(spec);
        }
        true
    }

    /// Whether the family's kernels are specialised on the storage dtype.
    fn has_dtype(self) -> bool {
        matches!(self, Family::Decay | Family::Blocks | Family::Attention | Family::SnapKv | Family::Cache)
    }

    /// Whether the family keeps a head vector in registers (specialised on [`Spec::dpl`]).
    fn has_dpl(self) -> bool {
        matches!(self, Family::Attention | Family::SnapKv)
    }

    /// Every specialisation the host can ask for.
    pub(crate) fn specs(self) -> Vec<Spec> {
        let dtypes: Vec<Option<DType>> =
            if self.has_dtype() { FLOAT_DTYPES.iter().map(|&d| Some(d)).collect() } else { vec![None] };
        let dpls: &[u32] = if self.has_dpl() { &DPL_CHOICES } else { &[0] };
        dtypes.iter().flat_map(|&dtype| dpls.iter().map(move |&dpl| Spec { dtype, dpl })).collect()
    }
}

const FLOAT_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Head-dim slots per lane that kernels are compiled for: `D <= 32 * dpl`.
const DPL_CHOICES: [u32; 6] = [1, 2, 4, 8, 16, 32];

/// Largest `dpl` with the grouped decode kernels (`attention_decode_g*`, D = 32 * dpl <= 256).
pub(crate) const DECODE_MAX_DPL: u32 = 8;

/// Whether the module of `spec` has the tensor-core kernels (`attention_prefill_mma`,
/// `attention_blocks_mma`, `snapkv_colsum_mma`): f16/bf16 storage (the MMA operand types) and
/// D = 64 or 128 (dpl 2 or 4).
pub(crate) fn prefill_mma_fits(spec: &Spec) -> bool {
    matches!(spec.dtype, Some(DType::F16 | DType::BF16)) && matches!(spec.dpl, 2 | 4)
}

/// Largest head dim the register-resident kernels (attention, SnapKV) accept.
pub(crate) const MAX_HEAD_DIM: usize = 32 * 32;

/// Compile-time knobs of one module. Everything else is a runtime param, so changing a length
/// never recompiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Spec {
    /// Storage dtype of the float tensors (`None` for dtype-free families).
    pub dtype: Option<DType>,
    /// Head-dim slots per lane (`0` for families that do not keep a head vector).
    pub dpl: u32,
}

impl Spec {
    /// No specialisation (random, topk, select, hit_rate).
    pub(crate) const NONE: Spec = Spec { dtype: None, dpl: 0 };

    /// Storage dtype only (decay, blocks, cache).
    pub(crate) fn dtype(dtype: DType) -> Spec {
        Spec { dtype: Some(dtype), dpl: 0 }
    }

    /// Storage dtype and head dim (attention, snapkv); `None` if `dim` exceeds [`MAX_HEAD_DIM`].
    pub(crate) fn head(dtype: DType, dim: usize) -> Option<Spec> {
        let dpl = dim.div_ceil(32).max(1).next_power_of_two();
        DPL_CHOICES.contains(&(dpl as u32)).then_some(Spec { dtype: Some(dtype), dpl: dpl as u32 })
    }

    fn prelude(&self) -> String {
        let mut s = String::new();
        match self.dtype {
            Some(DType::F32) => s.push_str("#define KVS_STORE_F32 1\n"),
            Some(DType::F16) => s.push_str("#define KVS_STORE_F16 1\n"),
            Some(DType::BF16) => s.push_str("#define KVS_STORE_BF16 1\n"),
            _ => {}
        }
        if self.dpl > 0 {
            s.push_str(&format!("#define KVS_DPL {}\n", self.dpl));
        }
        s
    }

    /// Short label, e.g. `bf16,dpl4`.
    pub(crate) fn label(&self) -> String {
        match (self.dtype, self.dpl) {
            (None, _) => "-".to_string(),
            (Some(d), 0) => d.name().to_string(),
            (Some(d), n) => format!("{d},dpl{n}"),
        }
    }
}

/// The full NVRTC input of one module.
pub(crate) fn assemble(family: Family, spec: &Spec) -> String {
    let defines: String =
        super::ops::kernel_defines().iter().map(|(name, value)| format!("#define {name} {value}\n")).collect();
    format!(
        "// kvsparse: {family} [{label}]\n{params}{prelude}{defines}#line 1 \"cuda/common.cuh\"\n{COMMON}\n#line 1 \"cuda/{family}.cu\"\n{body}",
        family = family.name(),
        label = spec.label(),
        params = family.params_decl(),
        prelude = spec.prelude(),
        body = family.body(),
    )
}

/// NVRTC options: the real arch of the device and line info for profilers. No `--use_fast_math`:
/// selection and softmax paths need IEEE `expf`/`logf`/division (NVRTC's defaults).
pub(crate) fn options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "-lineinfo".to_string(), "--std=c++17".to_string()]
}

/// One module as NVRTC compiled it: the PTX, and the CUBIN it assembled alongside when the arch
/// is a real one (`sm_XX`). The backend loads the CUBIN (no assembly by the driver) and keeps it
/// in the module store (`module_store.rs`) so that later processes skip NVRTC. The CUBIN alone
/// did not remove the first-process cost: on the H200 with the driver's JIT cache disabled, the
/// first process took 58.3 s loading CUBINs and 61.0 s loading PTX (`benches/device-moba.sh`).
/// NVRTC is where that time goes: `KVSPARSE_CUDA_LOG=1` showed 36 s of NVRTC in a 52 s process
/// and about 1 ms per module load (BENCHMARKS run 36's note); with the store filled the same
/// test took 19.1 s against 53.7 s (run 37).
pub(crate) struct Compiled {
    pub(crate) ptx: Ptx,
    pub(crate) cubin: Option<Vec<u8>>,
}

/// Compiles one module. NVRTC failures become [`Error::Nvrtc`] with the compiler log.
pub(crate) fn compile(family: Family, spec: &Spec, arch: &str) -> Result<Compiled> {
    use cudarc::nvrtc::{result, sys};
    let kernel = || format!("{} [{}] for {arch}", family.name(), spec.label());
    let failed = |what: &str, e: &dyn std::fmt::Debug| Error::Nvrtc { kernel: kernel(), log: format!("{what}: {e:?}") };
    let src = std::ffi::CString::new(assemble(family, spec))
        .map_err(|e| failed("the assembled source holds a NUL byte", &e))?;
    let name = std::ffi::CString::new(format!("{}.cu", family.name())).map_err(|e| failed("module name", &e))?;
    let prog = result::create_program(&src, Some(&name)).map_err(|e| failed("nvrtcCreateProgram", &e))?;
    // SAFETY: `prog` was created above and is destroyed once, after its last use, below.
    let out = unsafe {
        let opts = options(arch);
        match result::compile_program(prog, &opts) {
            Err(e) => {
                let log = result::get_program_log(prog).map(|l| c_text(&l)).unwrap_or_default();
                Err(Error::Nvrtc {
                    kernel: kernel(),
                    log: format!("{}\n(options: {}; NVRTC status {e:?})", log.trim_end(), opts.join(" ")),
                })
            }
            Ok(()) => result::get_ptx(prog).map_err(|e| failed("nvrtcGetPTX", &e)).map(|ptx| {
                let mut size = 0usize;
                // No CUBIN for a virtual arch (compute_XX): NVRTC then reports an error or size 0.
                let cubin = (sys::nvrtcGetCUBINSize(prog, &mut size) == sys::nvrtcResult::NVRTC_SUCCESS && size > 0)
                    .then(|| {
                        let mut bytes = vec![0u8; size];
                        (sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr().cast()) == sys::nvrtcResult::NVRTC_SUCCESS)
                            .then_some(bytes)
                    })
                    .flatten();
                Compiled { ptx: Ptx::from_src(c_text(&ptx)), cubin }
            }),
        }
    };
    // SAFETY: as above; nothing uses `prog` after this.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// A NUL-terminated C string from NVRTC as text.
fn c_text(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether `libnvrtc` can be loaded (cudarc's own candidate names; never panics).
pub(crate) fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen each candidate library name; touches no cudarc state and
    // calls no function of the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Assembles and NVRTC-compiles every CUDA kernel family for every supported specialisation
/// (storage dtype f32/f16/bf16, head-dim register tiles for D up to 1024) to PTX for `arch`
/// (e.g. `"sm_90"`), and checks that every entry point the host launches is in the PTX and, for
/// a real arch, that NVRTC also returned the CUBIN the backend loads.
///
/// Needs `libnvrtc` only (no driver, no GPU): this is what CI runs. Returns one
/// `("family[spec]", PTX size in bytes)` pair per module. With the environment variable
/// `KVSPARSE_DUMP_PTX=DIR` set, every assembled source (`.cu`) and its PTX (`.ptx`) are also
/// written to `DIR` (for `ptxas -v`, diffing, or reading what NVRTC saw).
///
/// # Errors
/// [`Error::Unavailable`] when `libnvrtc` cannot be loaded (see `tests/cuda_compile.rs` for
/// where CI gets it); [`Error::Nvrtc`] with the compiler log when a module does not compile or
/// lacks an entry point.
///
/// ```no_run
/// for (module, bytes) in kvsparse::compile_all_ptx("sm_90")? {
///     println!("{module}: {bytes} bytes of PTX");
/// }
/// # Ok::<(), kvsparse::Error>(())
/// ```
pub fn compile_all_ptx(arch: &str) -> Result<Vec<(String, usize)>> {
    if !nvrtc_present() {
        return Err(Error::Unavailable { backend: "cuda", reason: "libnvrtc not found (set LD_LIBRARY_PATH)".into() });
    }
    let jobs: Vec<(Family, Spec)> =
        Family::ALL.iter().flat_map(|&f| f.specs().into_iter().map(move |s| (f, s))).collect();
    // NVRTC is thread-safe per program; spread the modules over the available cores.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let results: Vec<Result<(String, usize)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let jobs = &jobs;
                scope.spawn(move || {
                    jobs.iter()
                        .skip(t)
                        .step_by(threads)
                        .map(|&(family, spec)| compile_checked(family, &spec, arch))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(Error::Nvrtc {
                        kernel: "compile_all_ptx".into(),
                        log: "a compile thread panicked".into(),
                    })]
                })
            })
            .collect()
    });
    let mut out = results.into_iter().collect::<Result<Vec<_>>>()?;
    out.sort();
    Ok(out)
}

fn compile_checked(family: Family, spec: &Spec, arch: &str) -> Result<(String, usize)> {
    let compiled = compile(family, spec, arch)?;
    if arch.starts_with("sm_") && compiled.cubin.is_none() {
        return Err(Error::Nvrtc {
            kernel: format!("{} [{}] for {arch}", family.name(), spec.label()),
            log: "NVRTC returned no CUBIN for a real arch".into(),
        });
    }
    let text = compiled.ptx.to_src();
    if let Some(dir) = std::env::var_os("KVSPARSE_DUMP_PTX") {
        let stem = format!("{}_{}_{}", family.name(), spec.label().replace(',', "_"), arch);
        let dir = std::path::Path::new(&dir);
        let write = |ext: &str, text: &str| {
            std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::write(dir.join(format!("{stem}.{ext}")), text))
                .map_err(|e| Error::File { path: dir.display().to_string(), reason: e.to_string() })
        };
        write("cu", &assemble(family, spec))?;
        write("ptx", &text)?;
    }
    for entry in family.entries().iter().filter(|e| family.has_entry(spec, e)) {
        if !text.contains(&format!(".entry {entry}(")) {
            return Err(Error::Nvrtc {
                kernel: format!("{} [{}] for {arch}", family.name(), spec.label()),
                log: format!("entry point `{entry}` missing from the PTX"),
            });
        }
    }
    Ok((format!("{}[{}]", family.name(), spec.label()), text.len()))
}
