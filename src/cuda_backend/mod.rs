//! The CUDA backend: kernels in `cuda/*.cu`, compiled at run time by NVRTC for the arch the
//! device reports, launched through cudarc (dynamic loading: building needs neither the CUDA
//! toolkit nor a driver).
//!
//! Layout: [`kernels`] holds the sources, their specialisations and the NVRTC step; this file the
//! device handle, buffers and module cache; `ops.rs` one launch sequence per [`crate::Backend`]
//! method. All work goes to one stream in order, so a multi-kernel op (Quest decode: block
//! statistics, scores, selection, sparse attention) needs no synchronisation between its kernels.

mod cache;
mod graph;
mod kernels;
mod module_store;
mod ops;

pub use graph::CudaGraph;
pub use kernels::compile_all_ptx;
pub(crate) use kernels::{Family, Spec};

use crate::{DType, DeviceBuffer, Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// The CUDA backend: one device, one stream, and a cache of compiled modules keyed by
/// (kernel family, specialisation); the arch is fixed per device.
///
/// [`Cuda::new`] never panics: without `libcuda`, without `libnvrtc` or without a device it
/// returns [`Error::Unavailable`].
///
/// ```no_run
/// use kvsparse::{ops::TopK, Backend, Cuda, DType, HostData};
/// let gpu = Cuda::new()?;
/// println!("{}", gpu.info_lines().join("\n"));
/// let op = TopK::new(1, 4, 2)?;
/// let scores = gpu.upload(&HostData::F32(vec![0.5, 2.0, 2.0, -1.0]))?;
/// let mut idx = gpu.alloc(DType::I32, op.out_k())?;
/// gpu.topk(&op, &scores, &mut idx)?;
/// assert_eq!(gpu.download(&idx)?, HostData::I32(vec![1, 2]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    cc: (i32, i32),
    arch: String,
    sm_count: u32,
    modules: RwLock<HashMap<(Family, Spec), Arc<CudaModule>>>,
    /// Entry points looked up so far: a `cuModuleGetFunction` per launch is host time that a
    /// short op (a few µs on the GPU) sees as latency.
    functions: RwLock<HashMap<EntryKey, CudaFunction>>,
    /// Resident CTAs per SM of an entry point at a block size (no dynamic shared memory).
    occupancy: RwLock<HashMap<(EntryKey, u32), usize>>,
    /// The dynamic shared memory each entry point has been allowed so far (above 48 KiB it
    /// must be raised by `cuFuncSetAttribute`, a driver call worth not repeating per launch).
    dynamic_smem: RwLock<HashMap<EntryKey, usize>>,
    /// Clusters of an entry point resident at once, by cluster size (at its block size and
    /// shared memory; 0 = the size is not granted).
    cluster_occupancy: RwLock<HashMap<(EntryKey, u32), u32>>,
    /// [`Backend::time_op`](crate::Backend::time_op) records the timed work as a CUDA graph and
    /// times one replay of it (see [`Cuda::with_graph_timing`]).
    graph_timing: bool,
    /// Device memory MoBA's bucket path may take (see [`Cuda::with_moba_workspace`]).
    pub(crate) moba_workspace: usize,
    /// What the graph timer reads to empty L2 (four times its size) and the word its flush
    /// kernel may write; allocated on first use.
    l2_flush: Mutex<Option<(CudaSlice<u8>, CudaSlice<u8>)>>,
    /// Arrival counters of kernels whose last CTA per row finishes the row's work
    /// (`quest_select_kv_g*`): [`ARRIVAL_SLOTS`] zeroed words that every such launch leaves
    /// zeroed. Shared with the graphs that record those kernels.
    pub(crate) arrivals: Arc<CudaSlice<u8>>,
    /// SM clock (kHz), for the graph timer's spin.
    clock_khz: u32,
    /// L2 size in bytes.
    l2_bytes: usize,
}

/// The launch attribute for clusters of `cluster` CTAs along x.
fn cluster_attribute(cluster: u32) -> cudarc::driver::sys::CUlaunchAttribute {
    use cudarc::driver::sys;
    // SAFETY: the attribute is plain data; every field the driver reads for this id is set.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim.x = cluster;
    attr.value.clusterDim.y = 1;
    attr.value.clusterDim.z = 1;
    attr
}

/// The programmatic-dependent-launch attribute (sm_90+): the kernel may start while the kernel
/// before it on the stream drains, and waits in `kvs_grid_dependency` (cuda/common.cuh) until
/// that kernel has finished and its writes are visible.
fn pdl_attribute() -> cudarc::driver::sys::CUlaunchAttribute {
    use cudarc::driver::sys;
    // SAFETY: the attribute is plain data; every field the driver reads for this id is set.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    attr
}

/// The driver's launch configuration of `cfg` on `stream` with the attributes `attrs` (which
/// must outlive its use).
fn launch_config_with(
    cfg: cudarc::driver::LaunchConfig,
    stream: cudarc::driver::sys::CUstream,
    attrs: &mut [cudarc::driver::sys::CUlaunchAttribute],
) -> cudarc::driver::sys::CUlaunchConfig {
    cudarc::driver::sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream,
        attrs: if attrs.is_empty() { std::ptr::null_mut() } else { attrs.as_mut_ptr() },
        numAttrs: attrs.len() as u32,
    }
}

/// Programmatic dependent launch (sm_90+, on unless `KVSPARSE_CUDA_PDL=0`): the kernels that
/// follow another kernel of the same op on the stream (the top-k passes after the first, the
/// split-K merge after the decode) start while their predecessor drains instead of after it.
/// On the H200 (run 61) it took top-k 1 x 131072 k 2048 from 22.0 to 20.3 µs as a graph and
/// 8 x 131072 k 8192 from 39.0-43.6 to 35.9-38.5 µs eager, with the same results.
pub(crate) fn pdl_on() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| crate::env_switch("KVSPARSE_CUDA_PDL", true))
}

/// How [`Cuda::launch_args`] launches a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Launch {
    Plain,
    AfterKernel,
    Cluster(u32),
}

/// A kernel argument for [`Cuda::launch_args`]: the address of
/// a value the driver copies (a params struct, a scalar, a device pointer as `u64`).
pub(crate) fn kernel_arg<T>(x: &T) -> *mut std::ffi::c_void {
    x as *const T as *mut std::ffi::c_void
}

/// Rows the arrival counters cover (a grid dimension's limit).
pub(crate) const ARRIVAL_SLOTS: usize = 65536;

/// An entry point of a module: family, specialisation, name.
type EntryKey = (Family, Spec, &'static str);

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda").field("name", &self.name).field("arch", &self.arch).finish_non_exhaustive()
    }
}

/// Device memory holding `len` elements of `dtype` (raw bytes underneath; kernels see typed
/// pointers). Belongs to the [`Cuda`] that made it.
pub struct CudaBuffer {
    slice: CudaSlice<u8>,
    dtype: DType,
    len: usize,
}

impl std::fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBuffer").field("dtype", &self.dtype).field("len", &self.len).finish()
    }
}

impl DeviceBuffer for CudaBuffer {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// `Error::Device` for a failed driver call; `what` names the call.
pub(crate) fn device_err(what: &str, e: DriverError) -> Error {
    Error::Device { backend: "cuda", message: format!("{what}: {e}") }
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: "cuda", reason: reason.into() }
}

/// Whether the driver library can be loaded (never panics).
fn driver_present() -> bool {
    // SAFETY: only tries to dlopen each of cudarc's candidate names for libcuda; touches no
    // cudarc state and calls no function of the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

impl Cuda {
    /// Opens device 0.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when `libcuda` or `libnvrtc` cannot be loaded or there is no CUDA
    /// device; [`Error::Device`] when the driver fails while opening it.
    pub fn new() -> Result<Cuda> {
        Cuda::with_ordinal(0)
    }

    /// Opens device `ordinal` (see [`Cuda::new`]).
    pub fn with_ordinal(ordinal: usize) -> Result<Cuda> {
        // cudarc's dynamic loader panics when a library is missing: probe before any call.
        if !driver_present() {
            return Err(unavailable("libcuda (the NVIDIA driver library) not found"));
        }
        if !kernels::nvrtc_present() {
            return Err(unavailable(
                "libnvrtc not found (install the CUDA toolkit or the nvidia-cuda-nvrtc-cu12 wheel and put its lib folder on LD_LIBRARY_PATH)",
            ));
        }
        // Belt and braces: a panic inside cudarc (e.g. a symbol missing from an old driver)
        // must still come out as an error.
        std::panic::catch_unwind(|| Cuda::open(ordinal))
            .unwrap_or_else(|_| Err(unavailable("the CUDA driver panicked while opening the device")))
    }

    fn open(ordinal: usize) -> Result<Cuda> {
        let count = CudaContext::device_count().map_err(|e| unavailable(format!("cuInit / device count: {e}")))?;
        if count <= 0 {
            return Err(unavailable("no CUDA device"));
        }
        if ordinal >= count as usize {
            return Err(unavailable(format!("device {ordinal} requested, {count} present")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| device_err("create context", e))?;
        // SAFETY: every buffer of this context is allocated, used and freed on the one stream
        // made below (cudarc's per-buffer events order work across streams; with one stream
        // they only cost an event per buffer, and waiting on them is illegal in a graph capture).
        unsafe { ctx.disable_event_tracking() };
        // One stream of our own for every op, copy and free, in order: unlike the legacy default
        // stream it can be captured into a CUDA graph (`Cuda::capture`).
        let stream = ctx.new_stream().map_err(|e| device_err("create stream", e))?;
        let name = ctx.name().map_err(|e| device_err("device name", e))?;
        let cc = ctx.compute_capability().map_err(|e| device_err("compute capability", e))?;
        let arrivals =
            Arc::new(stream.alloc_zeros::<u8>(4 * ARRIVAL_SLOTS).map_err(|e| device_err("alloc arrivals", e))?);
        let attr = |a| ctx.attribute(a).map_err(|e| device_err("device attribute", e));
        use cudarc::driver::sys::CUdevice_attribute as A;
        let clock_khz = attr(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)?.max(1) as u32;
        let l2_bytes = attr(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?.max(0) as usize;
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| device_err("SM count", e))?
            .max(1) as u32;
        Ok(Cuda {
            ctx,
            stream,
            name,
            cc,
            arch: format!("sm_{}{}", cc.0, cc.1),
            sm_count,
            modules: RwLock::new(HashMap::new()),
            functions: RwLock::new(HashMap::new()),
            occupancy: RwLock::new(HashMap::new()),
            dynamic_smem: RwLock::new(HashMap::new()),
            cluster_occupancy: RwLock::new(HashMap::new()),
            graph_timing: false,
            moba_workspace: default_moba_workspace(),
            l2_flush: Mutex::new(None),
            arrivals,
            clock_khz,
            l2_bytes,
        })
    }

    /// Makes [`Backend::time_op`](crate::Backend::time_op) (what `kvsparse report` times ops
    /// with) time the device work alone: the work is
    /// recorded once as a CUDA graph ([`Cuda::capture`]), replayed once untimed, and one replay
    /// is timed with CUDA events. Serving engines run decode steps as graphs; without this,
    /// the events also count the host's launch calls whenever the GPU finishes a kernel before
    /// the host has issued the next one (an op of several short kernels is then host-bound).
    /// [`Backend::timer_kind`](crate::Backend::timer_kind) says `cuda-graph-replay`. Work that
    /// cannot be captured (it waits for the host) is an error.
    ///
    /// ```no_run
    /// use kvsparse::{Backend, Cuda};
    /// let gpu = Cuda::new()?.with_graph_timing(true);
    /// assert_eq!(gpu.timer_kind(), "cuda-graph-replay");
    /// # Ok::<(), kvsparse::Error>(())
    /// ```
    pub fn with_graph_timing(mut self, on: bool) -> Cuda {
        self.graph_timing = on;
        self
    }

    /// Sets the device memory MoBA prefill's key-block-major path may allocate for one call (its
    /// per-pair lists and partial outputs, about `(W * 4 + per-pair bytes) * T` a query head;
    /// query heads go in chunks that fit). Default 2 GiB, or `KVSPARSE_CUDA_MOBA_WORKSPACE`
    /// bytes. Where one head does not fit, MoBA runs its query-major kernel, which needs none.
    ///
    /// ```no_run
    /// use kvsparse::Cuda;
    /// let gpu = Cuda::new()?.with_moba_workspace(512 << 20);
    /// # Ok::<(), kvsparse::Error>(())
    /// ```
    pub fn with_moba_workspace(mut self, bytes: usize) -> Cuda {
        self.moba_workspace = bytes;
        self
    }

    /// The NVRTC target, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Lines for `kvsparse info`: device, compute capability, driver, memory, SMs, NVRTC.
    pub fn info_lines(&self) -> Vec<String> {
        let mut lines = vec![format!("device: {}", self.name)];
        lines.push(format!("compute capability: {}.{} (kernels compiled for {})", self.cc.0, self.cc.1, self.arch));
        let mut driver = 0i32;
        // SAFETY: libcuda is loaded (probed in `new`) and the pointer is to a live i32.
        let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
        lines.push(match r {
            cudarc::driver::sys::CUresult::CUDA_SUCCESS => {
                format!("driver: CUDA {}.{}", driver / 1000, (driver % 1000) / 10)
            }
            e => format!("driver: unknown ({e:?})"),
        });
        match self.ctx.mem_get_info() {
            Ok((free, total)) => lines.push(format!(
                "memory: {:.1} GiB total, {:.1} GiB free",
                total as f64 / (1u64 << 30) as f64,
                free as f64 / (1u64 << 30) as f64
            )),
            Err(e) => lines.push(format!("memory: unknown ({e})")),
        }
        lines.push(format!("multiprocessors: {}", self.sm_count));
        let (mut major, mut minor) = (0i32, 0i32);
        // SAFETY: libnvrtc is loaded (probed in `new`); both pointers are to live i32s.
        let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        lines.push(match r {
            cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS => format!("nvrtc: {major}.{minor}"),
            e => format!("nvrtc: unknown ({e:?})"),
        });
        lines
    }

    /// The compiled module of `family` for `spec` (loaded on first use: from the module store or
    /// compiled by NVRTC, see [`module_store::load_module`]).
    fn module(&self, family: Family, spec: Spec) -> Result<Arc<CudaModule>> {
        if let Some(m) = self.modules.read().ok().and_then(|m| m.get(&(family, spec)).cloned()) {
            return Ok(m);
        }
        // The CUBIN an earlier process stored, else NVRTC's (then stored); the PTX if the driver
        // refuses the CUBIN or under KVSPARSE_CUDA_PTX=1 (to time the two; bypasses the store).
        let module = module_store::load_module(&self.ctx, family, &spec, &self.arch, load_ptx_only())?;
        let mut cache = self
            .modules
            .write()
            .map_err(|_| Error::Device { backend: "cuda", message: "module cache lock poisoned".into() })?;
        // Another thread may have compiled it meanwhile; keep the first.
        Ok(cache.entry((family, spec)).or_insert(module).clone())
    }

    /// Entry point `entry` of `family` for `spec`.
    pub(crate) fn function(&self, family: Family, spec: Spec, entry: &'static str) -> Result<CudaFunction> {
        debug_assert!(family.entries().contains(&entry), "{entry} is not listed for {}", family.name());
        if let Some(f) = self.functions.read().ok().and_then(|m| m.get(&(family, spec, entry)).cloned()) {
            return Ok(f);
        }
        let f = self
            .module(family, spec)?
            .load_function(entry)
            .map_err(|e| device_err(&format!("load function {entry} of {}", family.name()), e))?;
        if let Ok(mut cache) = self.functions.write() {
            cache.insert((family, spec, entry), f.clone());
        }
        Ok(f)
    }

    /// How many CTAs of `threads` threads of `entry` fit on one SM (`fallback` if the driver
    /// cannot say), asked of the driver once per entry point and block size.
    pub(crate) fn resident_ctas(
        &self,
        family: Family,
        spec: Spec,
        entry: &'static str,
        threads: u32,
        fallback: usize,
    ) -> Result<usize> {
        let key = ((family, spec, entry), threads);
        if let Some(n) = self.occupancy.read().ok().and_then(|m| m.get(&key).copied()) {
            return Ok(n);
        }
        let f = self.function(family, spec, entry)?;
        let n = f
            .occupancy_max_active_blocks_per_multiprocessor(threads, 0, None)
            .map_or(fallback, |n| (n as usize).max(1));
        if let Ok(mut cache) = self.occupancy.write() {
            cache.insert(key, n);
        }
        Ok(n)
    }

    /// Entry point `entry`, allowed at least `bytes` of dynamic shared memory per CTA (the
    /// driver's default cap is 48 KiB).
    pub(crate) fn function_with_smem(
        &self,
        family: Family,
        spec: Spec,
        entry: &'static str,
        bytes: usize,
    ) -> Result<CudaFunction> {
        let f = self.function(family, spec, entry)?;
        let key = (family, spec, entry);
        let allowed = self.dynamic_smem.read().ok().and_then(|m| m.get(&key).copied()).unwrap_or(48 << 10);
        if bytes > allowed {
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(|e| device_err(&format!("{entry}: {bytes} bytes of shared memory"), e))?;
            if let Ok(mut m) = self.dynamic_smem.write() {
                m.insert(key, bytes);
            }
        }
        Ok(f)
    }

    /// How many clusters of `cluster` CTAs (along x) of `entry` the device holds at once, at
    /// `threads` threads and `smem` bytes of dynamic shared memory per CTA (`f` is its function,
    /// already allowed that memory); 0 when the driver grants no such cluster (before sm_90, or a
    /// non-portable size above 8 the device does not take). Asked of the driver once per size.
    pub(crate) fn resident_clusters(
        &self,
        key: (Family, Spec, &'static str),
        f: &CudaFunction,
        cluster: u32,
        threads: u32,
        smem: u32,
    ) -> u32 {
        use cudarc::driver::sys;
        if let Some(n) = self.cluster_occupancy.read().ok().and_then(|m| m.get(&(key, cluster)).copied()) {
            return n;
        }
        let n = if self.cc.0 < 9 {
            0
        } else {
            // Sizes above 8 need the function's opt-in; a refusal leaves the query at 0.
            let opt_in = cluster <= 8
                || f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1)
                    .is_ok();
            let mut attr = cluster_attribute(cluster);
            let one = cudarc::driver::LaunchConfig {
                grid_dim: (cluster, 1, 1),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: smem,
            };
            // No stream: the query enqueues nothing (and may come during a graph capture).
            let cfg = launch_config_with(one, std::ptr::null_mut(), std::slice::from_mut(&mut attr));
            let mut clusters: std::ffi::c_int = 0;
            // SAFETY: cfg and its one attribute live across the call; f is a loaded function.
            let ok = opt_in
                && unsafe { sys::cuOccupancyMaxActiveClusters(&mut clusters, f.cu_function(), &cfg) }
                    == sys::CUresult::CUDA_SUCCESS;
            if ok {
                clusters.max(0) as u32
            } else {
                0
            }
        };
        if let Ok(mut m) = self.cluster_occupancy.write() {
            m.insert((key, cluster), n);
        }
        n
    }

    /// Launches `f` on the stream with its arguments `args`, as `how` says:
    /// - [`Launch::Plain`];
    /// - [`Launch::AfterKernel`]: the operation before it on the stream is another kernel of the
    ///   same op (never a copy, a memset or an allocation), so where [`pdl_on`] and the device
    ///   is sm_90+ it is launched with programmatic dependent launch, and `f` must call
    ///   `kvs_grid_dependency()` before it touches global memory;
    /// - [`Launch::Cluster`]: thread block clusters of that many CTAs along x (sm_90+).
    ///
    /// # Safety
    /// `args` point at the kernel's arguments in order, each alive across the call, and `cfg`
    /// is a valid launch of `f` for them that touches only memory the kernel's contract allows
    /// (as `LaunchArgs::launch`).
    pub(crate) unsafe fn launch_args(
        &self,
        f: &CudaFunction,
        cfg: cudarc::driver::LaunchConfig,
        how: Launch,
        args: &mut [*mut std::ffi::c_void],
    ) -> std::result::Result<(), DriverError> {
        use cudarc::driver::sys;
        let mut attrs = match how {
            Launch::Cluster(c) => vec![cluster_attribute(c)],
            Launch::AfterKernel if pdl_on() && self.cc.0 >= 9 => vec![pdl_attribute()],
            _ => Vec::new(),
        };
        let launch = launch_config_with(cfg, self.stream.cu_stream(), &mut attrs);
        self.ctx.bind_to_thread()?;
        // SAFETY: launch and its attributes live across the call; the caller vouches for args.
        unsafe { sys::cuLaunchKernelEx(&launch, f.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()) }.result()
    }

    /// Uninitialised device scratch of `bytes` bytes (at least 4).
    ///
    /// Every scratch buffer is fully written by the kernel that produces it before any kernel
    /// reads it (or is never read at all: the split-K part buffers when `splits == 1`).
    pub(crate) fn scratch(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        // SAFETY: the memory is uninitialised device memory; see the contract above: no
        // kernel reads a scratch element that an earlier kernel on the stream did not write.
        unsafe { self.stream.alloc::<u8>(bytes.max(4)) }.map_err(|e| device_err("alloc scratch", e))
    }

    /// [`Cuda::scratch`] of `bytes` bytes whose first `zeroed` bytes are zeroed by a
    /// stream-ordered memset (the counters and histograms a workspace starts from); `what`
    /// names the workspace in errors.
    pub(crate) fn scratch_zeroed_head(&self, bytes: usize, zeroed: usize, what: &str) -> Result<CudaSlice<u8>> {
        let mut ws = self.scratch(bytes)?;
        let mut head = ws.slice_mut(..zeroed.min(ws.len()));
        self.stream.memset_zeros(&mut head).map_err(|e| device_err(&format!("memset {what}"), e))?;
        Ok(ws)
    }

    pub(crate) fn buffer_from_bytes(&self, dtype: DType, len: usize, bytes: &[u8]) -> Result<CudaBuffer> {
        // cuMemAlloc rejects 0 bytes: an empty buffer still owns a small allocation.
        let slice = if bytes.is_empty() { self.stream.alloc_zeros::<u8>(4) } else { self.stream.clone_htod(bytes) }
            .map_err(|e| device_err("upload", e))?;
        Ok(CudaBuffer { slice, dtype, len })
    }
}

/// `KVSPARSE_CUDA_PTX=1`: modules are loaded from their PTX (assembled by the driver) instead of
/// the CUBIN NVRTC built alongside.
fn load_ptx_only() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| crate::env_switch("KVSPARSE_CUDA_PTX", false))
}

/// `KVSPARSE_CUDA_MOBA_WORKSPACE` bytes, else 2 GiB (tests set it small to run several chunks).
fn default_moba_workspace() -> usize {
    crate::env_number("KVSPARSE_CUDA_MOBA_WORKSPACE", |_| true).unwrap_or(2 << 30)
}
