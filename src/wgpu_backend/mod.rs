//! The wgpu backend: every op as WGSL kernels (`shaders/*.wgsl`) on Vulkan, Metal, DX12 or
//! WebGPU, through wgpu 30. All wgpu calls of the crate live in this module.

mod cache;
mod ops;
mod pipeline;

mod reuse;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::{DType, DeviceBuffer, Error, HostData, Result};
use pipeline::{Access, Kernel, Spec};

const NAME: &str = "wgpu";

fn device_error(message: impl Into<String>) -> Error {
    Error::Device { backend: NAME, message: message.into() }
}

fn too_large(what: impl Into<String>) -> Error {
    Error::TooLarge { backend: NAME, what: what.into() }
}

/// The wgpu backend: one adapter and device, built once, with a cache of compiled pipelines.
///
/// Honours `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`), `WGPU_ADAPTER_NAME` (a substring of
/// the adapter name, e.g. `llvmpipe`) and `WGPU_POWER_PREF`; `KVSPARSE_WGPU_NO_SUBGROUPS` turns
/// subgroups off (the kernels' workgroup-memory fallbacks) and `KVSPARSE_WGPU_CHUNK_BYTES=N`
/// binds every buffer above N bytes in chunks of N (to test the chunked kernels);
/// the decode, prefill, decay, top-k and cache kernels run without naga's runtime checks unless
/// `KVSPARSE_WGPU_CHECKED=1` turns them back on (see `Wgpu::pipeline` for why that is safe);
/// `KVSPARSE_WGPU_SPAN_TIMER` makes [`crate::Backend::time`] measure the whole span instead of
/// the passes (see there); `KVSPARSE_WGPU_DECODE_KB`, `_TEAM` and `_WORKGROUPS` set the split-K
/// decode's keys a step, lanes a key row and target workgroup count (for timing; BENCHMARKS
/// runs 64-65). The device gets the adapter's real
/// limits and, where the adapter has them, `SHADER_F16` (needed for f16 buffers), timestamp
/// queries and subgroups. f32 and bf16 (packed two per `u32`) work everywhere.
///
/// Op methods record their kernels into one command encoder and submit without waiting;
/// [`crate::Backend::download`] and [`crate::Backend::synchronize`] wait. The hot path allocates
/// nothing on the device once warm: params go through one reused uniform buffer, intermediate
/// buffers come from a pool and bind groups are cached (see `reuse.rs` for why reuse is safe).
///
/// ```no_run
/// use kvsparse::{ops::TopK, Backend, DType, HostData, Wgpu};
/// let gpu = Wgpu::new()?;
/// for line in gpu.info_lines() {
///     println!("{line}");
/// }
/// let op = TopK::new(1, 4, 2)?;
/// let scores = gpu.upload(&HostData::F32(vec![0.5, 2.0, 2.0, -1.0]))?;
/// let mut idx = gpu.alloc(DType::I32, op.out_k())?;
/// gpu.topk(&op, &scores, &mut idx)?;
/// assert_eq!(gpu.download(&idx)?, HostData::I32(vec![1, 2]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
pub struct Wgpu {
    _instance: wgpu::Instance,
    _adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    features: wgpu::Features,
    pipelines: RwLock<HashMap<(Kernel, Spec), Arc<Pipeline>>>,
    /// Stand-ins for bindings an entry point declares but a call does not need (one per access
    /// kind: a buffer may not be bound read-only and read-write in the same dispatch).
    dummy_read: reuse::Tracked,
    dummy_write: reuse::Tracked,
    /// Params, scratch pool, bind groups and the pass timer (see `reuse.rs`).
    reuse: reuse::Reuse,
    /// Errors wgpu reports outside an error scope (and device loss); surfaced by the next call.
    uncaptured: Arc<Mutex<Vec<String>>>,
    /// `KVSPARSE_WGPU_CHUNK_BYTES`: bind buffers above this many bytes in chunks of it (tests
    /// run every kernel's chunked form with small buffers); else the adapter's binding limit.
    chunk_override: Option<u64>,
    /// Compile the families marked `unchecked_ok` without naga's runtime bounds checks, loop
    /// bounding and division checks: the default; `KVSPARSE_WGPU_CHECKED=1` keeps the checks.
    unchecked: bool,
    /// `KVSPARSE_WGPU_SPAN_TIMER`: time with the span between two timestamps (host gaps
    /// included) even where pass timestamps work.
    span_timer: bool,
    /// `KVSPARSE_WGPU_BUFFER_COPY=1`: `copy_buffer` as a buffer-to-buffer copy always (to time
    /// it beside the compute pass that is the default).
    buffer_copy: bool,
}

impl std::fmt::Debug for Wgpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wgpu").field("adapter", &self.info.name).field("backend", &self.info.backend).finish()
    }
}

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// Device memory of the wgpu backend: one storage buffer of `len` elements of `dtype`, up to
/// the adapter's `max_buffer_size` (larger ones are refused with [`Error::TooLarge`]). Kernels
/// bind buffers above `max_storage_buffer_binding_size` as several chunks (see `Wgpu::run`).
/// f16 and bf16 take 2 bytes an element (bf16 is read as packed `u32` pairs by the kernels);
/// the allocation is rounded up to a multiple of 4 bytes.
#[derive(Debug)]
pub struct WgpuBuffer {
    buffer: wgpu::Buffer,
    dtype: DType,
    len: usize,
    /// Identity in the bind group cache; dropping the buffer evicts its bind groups.
    id: u64,
    groups: std::sync::Weak<reuse::GroupCache>,
}

impl Drop for WgpuBuffer {
    fn drop(&mut self) {
        if let Some(groups) = self.groups.upgrade() {
            groups.evict(self.id);
        }
    }
}

impl WgpuBuffer {
    /// The underlying wgpu buffer (usage `STORAGE | COPY_SRC | COPY_DST`), for engines that
    /// bind it in their own passes.
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The buffer as a binding of a dispatch.
    fn buf(&self) -> Buf<'_> {
        Buf { raw: &self.buffer, id: self.id }
    }
}

impl DeviceBuffer for WgpuBuffer {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Bytes of a buffer holding `len` elements of `dtype`: at least 4, a multiple of 4 (bindings
/// and copies work in 4-byte units).
fn buffer_bytes(dtype: DType, len: usize) -> u64 {
    ((len * dtype.size()) as u64).div_ceil(4).max(1) * 4
}

async fn pick_adapter(instance: &wgpu::Instance) -> std::result::Result<wgpu::Adapter, String> {
    // wgpu::util::initialize_adapter_from_env panics when the name matches nothing; match here.
    if let Ok(want) = std::env::var("WGPU_ADAPTER_NAME") {
        let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        let names: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({})", i.name, i.backend.to_str())
            })
            .collect();
        let want_lower = want.to_lowercase();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&want_lower))
            .ok_or_else(|| format!("no adapter matches WGPU_ADAPTER_NAME={want:?} (found {names:?})"));
    }
    let power_preference = wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance);
    instance
        .request_adapter(&wgpu::RequestAdapterOptions { power_preference, ..Default::default() })
        .await
        .map_err(|e| e.to_string())
}

impl Wgpu {
    /// Finds an adapter and opens a device, or says why not ([`Error::Unavailable`]). Never
    /// panics.
    pub fn new() -> Result<Wgpu> {
        // Drivers and wgpu are not supposed to panic while probing; should one, report the
        // backend as unavailable instead of taking the caller down.
        std::panic::catch_unwind(Self::open).unwrap_or_else(|panic| {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "wgpu panicked while opening the device".into());
            Err(Error::Unavailable { backend: NAME, reason })
        })
    }

    fn open() -> Result<Wgpu> {
        let unavailable = |reason: String| Error::Unavailable { backend: NAME, reason };
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(pick_adapter(&instance)).map_err(unavailable)?;
        let info = adapter.get_info();
        let wanted = wgpu::Features::SHADER_F16
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
            | wgpu::Features::SUBGROUP;
        let mut features = adapter.features() & wanted;
        // Exercises the kernels' fallbacks for adapters without subgroups (tests, comparisons).
        if std::env::var_os("KVSPARSE_WGPU_NO_SUBGROUPS").is_some() {
            features.remove(wgpu::Features::SUBGROUP);
        }
        let limits = adapter.limits();
        let request = |limits: wgpu::Limits| {
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("kvsparse"),
                required_features: features,
                required_limits: limits,
                ..Default::default()
            }))
        };
        // Ask for everything the adapter offers; should a driver refuse its own limits, fall
        // back to WebGPU's defaults (8 storage buffers a stage, which ratplus_step needs).
        let (device, queue, limits) = match request(limits.clone()) {
            Ok((d, q)) => (d, q, limits),
            Err(_) => {
                let fallback = wgpu::Limits::default();
                let (d, q) = request(fallback.clone())
                    .map_err(|e| unavailable(format!("{}: request_device failed: {e}", info.name)))?;
                (d, q, fallback)
            }
        };
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        // The default handler panics; record instead and report from the next call.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
        }));
        let sink = uncaptured.clone();
        device.set_device_lost_callback(move |reason, message| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(format!("device lost ({reason:?}): {message}"));
        });
        let dummy = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let (dummy_read, dummy_write) =
            (reuse::Tracked::new(dummy("kvsparse dummy read")), reuse::Tracked::new(dummy("kvsparse dummy write")));
        let reuse = reuse::Reuse::new(&device);
        Ok(Wgpu {
            _instance: instance,
            _adapter: adapter,
            device,
            queue,
            info,
            limits,
            features,
            pipelines: RwLock::new(HashMap::new()),
            dummy_read,
            dummy_write,
            reuse,
            uncaptured,
            chunk_override: std::env::var("KVSPARSE_WGPU_CHUNK_BYTES")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map(|b| b.max(256) / 256 * 256),
            unchecked: !std::env::var("KVSPARSE_WGPU_CHECKED").is_ok_and(|v| !v.is_empty() && v != "0"),
            span_timer: std::env::var_os("KVSPARSE_WGPU_SPAN_TIMER").is_some(),
            buffer_copy: crate::env_switch("KVSPARSE_WGPU_BUFFER_COPY", false),
        })
    }

    /// Frees what the backend keeps between op calls: idle scratch buffers of composite ops
    /// and cached bind groups (which hold the buffers they bind). Later calls allocate again.
    pub fn trim(&self) {
        self.reuse.groups.clear();
        self.reuse.pool.clear(&self.reuse.groups);
    }

    /// The adapter: name, vendor, device type, driver, backend.
    pub fn adapter_info(&self) -> wgpu::AdapterInfo {
        self.info.clone()
    }

    /// The limits the device was opened with (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The optional features enabled on the device (a subset of `SHADER_F16`, timestamp
    /// queries, `SUBGROUP`).
    pub fn features(&self) -> wgpu::Features {
        self.features
    }

    /// Human-readable description for `kvsparse info`: adapter, backend, driver, device type,
    /// features and the limits that matter to the kernels.
    pub fn info_lines(&self) -> Vec<String> {
        let i = &self.info;
        let l = &self.limits;
        let yes = |f: wgpu::Features| if self.features.contains(f) { "yes" } else { "no" };
        let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0));
        vec![
            format!("adapter: {}", i.name),
            format!("backend: {}", i.backend.to_str()),
            format!("driver: {} {}", i.driver, i.driver_info).trim_end().to_string(),
            format!("device type: {:?}", i.device_type),
            format!(
                "features: f16 {}, subgroups {} (size {}..{}), timestamps {} (inside passes {})",
                yes(wgpu::Features::SHADER_F16),
                yes(wgpu::Features::SUBGROUP),
                i.subgroup_min_size,
                i.subgroup_max_size,
                yes(wgpu::Features::TIMESTAMP_QUERY),
                yes(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            ),
            format!(
                "max storage binding: {} (larger buffers are bound in chunks), storage buffers per stage {}",
                mib(l.max_storage_buffer_binding_size),
                l.max_storage_buffers_per_shader_stage
            ),
            format!("max buffer: {}", mib(l.max_buffer_size)),
            format!(
                "workgroup memory: {} KiB, max invocations {}, max workgroups per dimension {}",
                l.max_compute_workgroup_storage_size / 1024,
                l.max_compute_invocations_per_workgroup,
                l.max_compute_workgroups_per_dimension
            ),
        ]
    }

    /// Reports (and clears) errors wgpu raised outside a scope since the last call.
    fn take_uncaptured(&self, what: &str) -> Result<()> {
        let mut errors = self.uncaptured.lock().unwrap_or_else(|p| p.into_inner());
        if errors.is_empty() {
            return Ok(());
        }
        let message = format!("{what}: {}", errors.join("; "));
        errors.clear();
        Err(device_error(message))
    }

    /// Runs `f` inside validation and out-of-memory error scopes; wgpu errors become
    /// [`Error::Device`].
    fn scoped<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.take_uncaptured(what)?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = v.or(o) {
            return Err(device_error(format!("{what}: {e}")));
        }
        self.take_uncaptured(what)?;
        result
    }

    fn check_buffer_size(&self, bytes: u64, what: &str) -> Result<()> {
        if bytes > self.limits.max_buffer_size {
            return Err(too_large(format!(
                "{what}: a buffer of {bytes} bytes exceeds the adapter's max_buffer_size {}",
                self.limits.max_buffer_size
            )));
        }
        Ok(())
    }

    fn new_buffer(&self, bytes: u64, usage: wgpu::BufferUsages, mapped: bool, what: &str) -> Result<wgpu::Buffer> {
        self.check_buffer_size(bytes, what)?;
        self.scoped(what, || {
            Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kvsparse"),
                size: bytes,
                usage,
                mapped_at_creation: mapped,
            }))
        })
    }

    /// An intermediate buffer of a composite op of at least `bytes` bytes (`STORAGE | COPY_DST`),
    /// from the pool when one of its size class is idle; it goes back to the pool when the
    /// returned guard drops, which is after the op's submission (see `reuse.rs`). Its contents
    /// are whatever an earlier call left: kernels initialise every scratch word they read.
    fn scratch(&self, bytes: u64, what: &str) -> Result<reuse::Scratch<'_>> {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let size = self.size_class(bytes.div_ceil(4).max(1) * 4);
        if let Some(s) = self.reuse.pool.take(size, usage) {
            return Ok(s);
        }
        let buffer = match self.new_buffer(size, usage, false, what) {
            Ok(b) => b,
            // Idle pooled buffers may be what fills the device: free them and try once more.
            Err(Error::Device { .. }) if self.reuse.pool.idle_bytes() > 0 => {
                self.reuse.pool.clear(&self.reuse.groups);
                self.new_buffer(size, usage, false, what)?
            }
            Err(e) => return Err(e),
        };
        Ok(self.reuse.pool.wrap(buffer, size, usage))
    }

    /// The size a scratch of `bytes` is allocated with, so that nearby sizes share pooled
    /// buffers: a power of two up to 64 KiB, above that a multiple of 1/16 of the next power
    /// of two (at most 6.25% more). Never more chunks (see `chunk_bytes`) than `bytes` needs,
    /// nor more than the adapter's `max_buffer_size`.
    fn size_class(&self, bytes: u64) -> u64 {
        let p = bytes.next_power_of_two();
        let mut size = if p <= 1 << 16 { p.max(256) } else { bytes.div_ceil(p / 16) * (p / 16) };
        let (limit, chunk) = (self.binding_limit(), self.chunk_bytes());
        if bytes <= limit {
            size = size.min(limit / 4 * 4);
        } else {
            size = size.min(bytes.div_ceil(chunk) * chunk);
        }
        size.min(self.limits.max_buffer_size / 4 * 4).max(bytes)
    }

    /// The cached pipeline of `kernel` for `spec`, compiled on first use.
    fn pipeline(&self, kernel: Kernel, spec: Spec) -> Result<Arc<Pipeline>> {
        let key = (kernel, spec);
        if let Some(p) = self.pipelines.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(p.clone());
        }
        let shader = pipeline::wgsl_source(kernel, &spec);
        let label = kernel.label();
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: None,
            },
            count: None,
        }];
        for (i, access) in kernel.bindings().iter().enumerate() {
            let slot = i as u32 + 1;
            let chunks = if kernel.chunked().contains(&slot) { spec.chunks_of(slot) } else { 1 };
            for j in 0..chunks {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: slot + pipeline::CHUNK_SLOTS * j,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: *access != Access::Write },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
        }
        self.take_uncaptured(&label)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries });
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(shader.as_str().into()),
        };
        let module = if self.unchecked && kernel.family().unchecked_ok {
            // SAFETY: the default for the families marked `unchecked_ok` (decode, prefill, decay
            // and top-k; `KVSPARSE_WGPU_CHECKED=1` keeps naga's checks). Every index of these
            // kernels is guarded explicitly in the shader against the bounds it derives from
            // validated shapes (ops::check: buffer lengths match the shapes, so an index below
            // the shape's bound is inside its binding), chunked bindings are indexed within the
            // chunk sizes the host binds, loops are bounded by the same shapes and divisors are
            // validated non-zero. The equivalence suite runs these kernels on awkward sizes
            // (non-multiples of the workgroup, tile and chunk sizes), on the chunked-binding
            // path (KVSPARSE_WGPU_CHUNK_BYTES) and on both reduction paths, against the CPU
            // reference. Families whose safety rests on a runtime check stay checked.
            unsafe { self.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
        } else {
            self.device.create_shader_module(desc)
        };
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(kernel.entry()),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("WG_SIZE", kernel.workgroup() as f64)],
                ..Default::default()
            },
            cache: None,
        });
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Wgsl { kernel: label, message: err.to_string(), shader });
        }
        let p = Arc::new(Pipeline { pipeline, layout });
        let mut cache = self.pipelines.write().unwrap_or_else(|p| p.into_inner());
        Ok(cache.entry(key).or_insert(p).clone())
    }

    /// Bytes per chunk of a buffer bound in several pieces: the binding limit rounded down to
    /// the storage offset alignment, capped at 2 GiB so that word indices stay in u32.
    fn chunk_bytes(&self) -> u64 {
        let align = (self.limits.min_storage_buffer_offset_alignment as u64).max(256);
        let limit = self.binding_limit().min(1 << 31);
        (limit / align * align).max(align)
    }

    /// Largest buffer bound whole.
    fn binding_limit(&self) -> u64 {
        let limit = self.limits.max_storage_buffer_binding_size;
        self.chunk_override.map_or(limit, |c| c.min(limit))
    }

    /// The spec a dispatch compiles with: `d.spec`, with as many chunks as its largest chunked
    /// buffer needs. Any other buffer above the binding limit is refused ([`Error::TooLarge`]).
    fn chunked_spec(&self, op: &str, d: &Dispatch<'_>) -> Result<Spec> {
        let limit = self.binding_limit();
        let chunk = self.chunk_bytes();
        let mut chunks = 1u64;
        let mut split_slots = 0u32;
        for (i, b) in d.buffers.iter().enumerate() {
            if b.raw.size() <= limit {
                continue;
            }
            split_slots |= 1 << (i + 1);
            if !d.kernel.chunked().contains(&(i as u32 + 1)) {
                return Err(too_large(format!(
                    "{op}: {} binds a buffer of {} bytes in slot {}, which cannot be split and exceeds \
                     max_storage_buffer_binding_size {limit}",
                    d.kernel.label(),
                    b.raw.size(),
                    i + 1
                )));
            }
            chunks = chunks.max(b.raw.size().div_ceil(chunk));
        }
        if chunks == 1 {
            return Ok(d.spec);
        }
        // Every split slot takes `chunks` storage bindings.
        let slots = d.kernel.bindings().len() as u64 + (chunks - 1) * split_slots.count_ones() as u64;
        let max_slots = self.limits.max_storage_buffers_per_shader_stage as u64;
        if chunks >= pipeline::CHUNK_SLOTS as u64 * 4 || slots > max_slots {
            return Err(too_large(format!(
                "{op}: {} would need {chunks} chunks of {chunk} bytes per buffer ({slots} storage bindings, the \
                 adapter allows {max_slots})",
                d.kernel.label()
            )));
        }
        Ok(Spec { chunks: chunks as u32, split_slots, chunk_bytes: chunk as u32, ..d.spec })
    }

    /// Records `dispatches` into one command encoder, in order, and submits it (no wait).
    fn run(&self, op: &str, dispatches: &[Dispatch<'_>]) -> Result<()> {
        let max_dim = self.limits.max_compute_workgroups_per_dimension.max(1) as u64;
        let mut planned = Vec::with_capacity(dispatches.len());
        for d in dispatches {
            if d.groups == 0 {
                continue;
            }
            let x = d.groups.min(max_dim);
            let y = d.groups.div_ceil(x);
            if y > max_dim {
                return Err(too_large(format!(
                    "{op}: {} needs {} workgroups, more than {max_dim} x {max_dim}",
                    d.kernel.label(),
                    d.groups
                )));
            }
            let spec = self.chunked_spec(op, d)?;
            planned.push((self.pipeline(d.kernel, spec)?, spec, x as u32, y as u32));
        }
        let chunk = self.chunk_bytes();
        let live: Vec<&Dispatch<'_>> = dispatches.iter().filter(|d| d.groups > 0).collect();
        for d in &live {
            if d.params.len() as u64 > reuse::PARAM_SLOT {
                return Err(device_error(format!("{op}: params of {} exceed a slot", d.kernel.label())));
            }
        }
        let result = self.scoped(op, || {
            let mut encoder = self.encoder(op);
            // Held until the submission: no other call writes the params buffer in between.
            let params = self.reuse.params(&self.device, live.len().max(1) as u64);
            let slot = reuse::PARAM_SLOT as usize;
            let mut bytes = vec![0u8; live.len() * slot];
            for (i, d) in live.iter().enumerate() {
                bytes[i * slot..i * slot + d.params.len()].copy_from_slice(&d.params);
            }
            if !bytes.is_empty() {
                self.queue.write_buffer(&params.buffer.buffer, 0, &bytes);
            }
            let mut groups = Vec::with_capacity(planned.len());
            for (d, (p, spec, _, _)) in live.iter().zip(&planned) {
                let key = reuse::GroupKey {
                    kernel: d.kernel,
                    spec: *spec,
                    params: params.buffer.id,
                    buffers: d.buffers.iter().map(|b| b.id).collect(),
                };
                groups
                    .push(self.reuse.groups.get(key, || self.bind_group(op, d, p, spec, &params.buffer.buffer, chunk)));
            }
            let timer = self.reuse.timer().as_mut().map(|t| t.next_pair(&self.device));
            {
                let timestamp_writes = timer.as_ref().map(|(set, i)| wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(*i),
                    end_of_pass_write_index: Some(*i + 1),
                });
                let mut pass =
                    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(op), timestamp_writes });
                for (i, ((p, _, x, y), group)) in planned.iter().zip(&groups).enumerate() {
                    pass.set_pipeline(&p.pipeline);
                    pass.set_bind_group(0, group, &[(i as u64 * reuse::PARAM_SLOT) as u32]);
                    pass.dispatch_workgroups(*x, *y, 1);
                }
            }
            self.queue.submit([encoder.finish()]);
            drop(params);
            Ok(())
        });
        if result.is_err() {
            // A group created in a failed scope may be invalid: never hand it out again.
            self.reuse.groups.clear();
        }
        result
    }

    /// The bind group of dispatch `d` on pipeline `p`: params slot (dynamic offset), then each
    /// buffer whole or, for a chunked slot, as chunks of `chunk` bytes.
    fn bind_group(
        &self,
        op: &str,
        d: &Dispatch<'_>,
        p: &Pipeline,
        spec: &Spec,
        params: &wgpu::Buffer,
        chunk: u64,
    ) -> wgpu::BindGroup {
        let uniform =
            wgpu::BufferBinding { buffer: params, offset: 0, size: std::num::NonZeroU64::new(reuse::PARAM_SLOT) };
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(uniform) }];
        for (i, b) in d.buffers.iter().enumerate() {
            let (slot, b) = (i as u32 + 1, b.raw);
            if spec.chunks_of(slot) <= 1 || !d.kernel.chunked().contains(&slot) {
                entries.push(wgpu::BindGroupEntry { binding: slot, resource: b.as_entire_binding() });
                continue;
            }
            let dummy = match d.kernel.bindings()[i] {
                Access::Read | Access::Read4 => &self.dummy_read.buffer,
                Access::Write => &self.dummy_write.buffer,
            };
            for j in 0..spec.chunks_of(slot) as u64 {
                let offset = j * chunk;
                // Chunks past the end of a smaller buffer are never indexed: bind a stand-in.
                let resource = if offset < b.size() {
                    let size = std::num::NonZeroU64::new(chunk.min(b.size() - offset));
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: b, offset, size })
                } else {
                    dummy.as_entire_binding()
                };
                entries.push(wgpu::BindGroupEntry { binding: slot + pipeline::CHUNK_SLOTS * j as u32, resource });
            }
        }
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(op),
            layout: &p.layout,
            entries: &entries,
        })
    }

    fn wait(&self, what: &str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| device_error(format!("{what}: waiting for the device failed: {e}")))?;
        self.take_uncaptured(what)
    }

    fn upload_bytes(&self, dtype: DType, len: usize, bytes: &[u8]) -> Result<WgpuBuffer> {
        let size = buffer_bytes(dtype, len);
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let buffer = self.new_buffer(size, usage, true, "upload")?;
        self.scoped("upload", || {
            // Mapped at creation (and zero-filled), so no staging copy is needed.
            let mut view = buffer.slice(..).get_mapped_range_mut().map_err(|e| device_error(format!("upload: {e}")))?;
            view.slice(..bytes.len()).copy_from_slice(bytes);
            drop(view);
            buffer.unmap();
            Ok(())
        })?;
        Ok(WgpuBuffer { buffer, dtype, len, id: reuse::next_id(), groups: Arc::downgrade(&self.reuse.groups) })
    }

    /// Copies the first `size` bytes of `src` (a `COPY_SRC` buffer) to the host, after the
    /// work already submitted, recording the copy into `encoder` first.
    fn read_back(
        &self,
        what: &str,
        mut encoder: wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        size: u64,
    ) -> Result<Vec<u8>> {
        let staging =
            self.new_buffer(size, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, false, what)?;
        self.scoped(what, || {
            encoder.copy_buffer_to_buffer(src, 0, &staging, 0, size);
            self.queue.submit([encoder.finish()]);
            Ok(())
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait(what)?;
        rx.recv()
            .map_err(|_| device_error(format!("{what}: the map callback never ran")))?
            .map_err(|e| device_error(format!("{what}: mapping failed: {e}")))?;
        let bytes = {
            let view = staging.slice(..).get_mapped_range().map_err(|e| device_error(format!("{what}: {e}")))?;
            view.to_vec()
        };
        staging.unmap();
        Ok(bytes)
    }

    fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    fn download_bytes(&self, buf: &WgpuBuffer) -> Result<HostData> {
        let bytes = self.read_back("download", self.encoder("download"), &buf.buffer, buf.buffer.size())?;
        HostData::from_bytes(buf.dtype, &bytes[..buf.len * buf.dtype.size()])
            .ok_or_else(|| device_error("download: byte count does not match the dtype"))
    }

    /// `dst <- src`: as a compute pass (`copy_words`) where the bytes are whole 16-byte words
    /// within one binding, so that they stream through the shader cores as the kernels' do;
    /// else (and for empty buffers, or with `KVSPARSE_WGPU_BUFFER_COPY=1`) a buffer-to-buffer
    /// copy, which may run on a copy engine.
    fn copy_bytes(&self, src: &WgpuBuffer, dst: &WgpuBuffer) -> Result<()> {
        let size = src.buffer.size().min(dst.buffer.size());
        let words = size / 16;
        let whole_words = size.is_multiple_of(16) && words > 0 && words <= u32::MAX as u64;
        if !self.buffer_copy && whole_words && size <= self.binding_limit() {
            let params = crate::params::CopyParams { words: words as u32, ..Default::default() };
            let groups = words.div_ceil(Kernel::CopyWords.workgroup() as u64) as usize;
            let d =
                Dispatch::rows(Kernel::CopyWords, Spec::new(DType::F32), &params, vec![src.buf(), dst.buf()], groups);
            return self.run("copy_buffer", &[d]);
        }
        self.scoped("copy_buffer", || {
            let mut encoder = self.encoder("copy_buffer");
            // Timed like a pass (the pass timer runs only where timestamps work inside encoders).
            let timer = self.reuse.timer().as_mut().map(|t| t.next_pair(&self.device));
            if let Some((set, i)) = &timer {
                encoder.write_timestamp(set, *i);
            }
            encoder.copy_buffer_to_buffer(&src.buffer, 0, &dst.buffer, 0, size);
            if let Some((set, i)) = &timer {
                encoder.write_timestamp(set, *i + 1);
            }
            self.queue.submit([encoder.finish()]);
            Ok(())
        })
    }

    /// Whether [`crate::Backend::time`] can use timestamp queries between submissions.
    fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    }

    /// Whether [`crate::Backend::time`] sums pass timestamps (copies are timed with timestamps
    /// written in their encoder, hence the same features as the span).
    fn has_pass_timestamps(&self) -> bool {
        self.has_timestamps() && !self.span_timer
    }

    /// Device time of the work `f` records: the sum over its compute passes (one per op call)
    /// and buffer copies of end minus beginning timestamp.
    fn time_passes(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<std::time::Duration> {
        {
            let mut timer = self.reuse.timer();
            if timer.is_some() {
                return Err(device_error("time: already timing (nested calls of time)"));
            }
            *timer = Some(reuse::PassTimer { sets: std::mem::take(&mut *self.reuse.spare_sets()), pairs: 0 });
        }
        let result = f();
        let timer = self.reuse.timer().take();
        let Some(timer) = timer else {
            return Err(device_error("time: the pass timer went missing"));
        };
        let pairs = timer.pairs;
        let sets = timer.sets;
        let measured = result.and_then(|()| self.resolve_passes(&sets, pairs));
        *self.reuse.spare_sets() = sets;
        measured
    }

    /// Reads back the first `pairs` timestamp pairs of `sets` and sums their durations.
    fn resolve_passes(&self, sets: &[wgpu::QuerySet], pairs: u32) -> Result<std::time::Duration> {
        if pairs == 0 {
            return Ok(std::time::Duration::ZERO);
        }
        let used = pairs.div_ceil(reuse::TIMER_PAIRS) as u64;
        let set_bytes = 16 * reuse::TIMER_PAIRS as u64;
        let resolve = self.new_buffer(
            used * set_bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            false,
            "time",
        )?;
        let mut encoder = self.encoder("time");
        for (s, set) in sets.iter().take(used as usize).enumerate() {
            let n = (pairs - s as u32 * reuse::TIMER_PAIRS).min(reuse::TIMER_PAIRS);
            encoder.resolve_query_set(set, 0..2 * n, &resolve, s as u64 * set_bytes);
        }
        let bytes = self.read_back("time", encoder, &resolve, used * set_bytes)?;
        let ticks: u64 = (0..pairs as usize)
            .map(|p| {
                let s = p / reuse::TIMER_PAIRS as usize;
                let at = s * set_bytes as usize + 16 * (p % reuse::TIMER_PAIRS as usize);
                let word = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or_default());
                word(at + 8).saturating_sub(word(at))
            })
            .sum();
        let ns = ticks as f64 * self.queue.get_timestamp_period() as f64;
        Ok(std::time::Duration::from_nanos(ns.round() as u64))
    }

    /// Device time from a timestamp written before the work `f` submits to one written after it.
    fn time_with_queries(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<std::time::Duration> {
        self.wait("time")?;
        let (set, resolve) = self.scoped("time", || {
            let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kvsparse time"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kvsparse time"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut encoder = self.encoder("time");
            encoder.write_timestamp(&set, 0);
            self.queue.submit([encoder.finish()]);
            Ok((set, resolve))
        })?;
        f()?;
        let mut encoder = self.encoder("time");
        encoder.write_timestamp(&set, 1);
        encoder.resolve_query_set(&set, 0..2, &resolve, 0);
        let bytes = self.read_back("time", encoder, &resolve, 16)?;
        let t0 = u64::from_le_bytes(bytes[0..8].try_into().unwrap_or_default());
        let t1 = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
        let ns = t1.saturating_sub(t0) as f64 * self.queue.get_timestamp_period() as f64;
        Ok(std::time::Duration::from_nanos(ns.round() as u64))
    }
}

/// A buffer bound by a dispatch, with its identity in the bind group cache.
#[derive(Clone, Copy)]
struct Buf<'a> {
    raw: &'a wgpu::Buffer,
    id: u64,
}

/// One kernel launch of an op: pipeline, params bytes, storage buffers for bindings `1..`,
/// and the number of workgroups (laid out as a 2-D grid when it exceeds one dimension).
struct Dispatch<'a> {
    kernel: Kernel,
    spec: Spec,
    params: Vec<u8>,
    buffers: Vec<Buf<'a>>,
    groups: u64,
}

impl<'a> Dispatch<'a> {
    /// One invocation per item: `items` invocations rounded up to whole workgroups.
    fn items<P: bytemuck::Pod>(kernel: Kernel, spec: Spec, params: &P, buffers: Vec<Buf<'a>>, items: usize) -> Self {
        let groups = (items as u64).div_ceil(kernel.workgroup() as u64);
        Dispatch { kernel, spec, params: bytemuck::bytes_of(params).to_vec(), buffers, groups }
    }
    /// One workgroup per row.
    fn rows<P: bytemuck::Pod>(kernel: Kernel, spec: Spec, params: &P, buffers: Vec<Buf<'a>>, rows: usize) -> Self {
        Dispatch { kernel, spec, params: bytemuck::bytes_of(params).to_vec(), buffers, groups: rows as u64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::DecayScan;
    use crate::{Backend, Cpu};

    fn data(n: usize, seed: u32) -> HostData {
        HostData::F32((0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0).collect())
    }

    /// `copy_buffer` copies every element exactly, on the compute pass (whole 16-byte words)
    /// and on the buffer-to-buffer fallback (other sizes), into a destination poisoned first.
    #[test]
    fn copy_buffer_copies_every_element() -> Result<()> {
        let Ok(gpu) = Wgpu::new() else {
            eprintln!("no wgpu adapter: skipped");
            return Ok(());
        };
        for (n, seed) in [(1000usize, 1u32), (1001, 2), (4, 3), (1, 4), (70_000, 5)] {
            let src = gpu.upload(&data(n, seed))?;
            let mut dst = gpu.upload(&HostData::F32(vec![f32::NAN; n]))?;
            gpu.copy_buffer(&src, &mut dst)?;
            assert_eq!(gpu.download(&dst)?, data(n, seed), "{n} elements");
        }
        let halves: Vec<half::f16> = (0..24).map(|i| half::f16::from_f32(i as f32 - 7.5)).collect();
        let src = gpu.upload(&HostData::F16(halves.clone()))?;
        let mut dst = gpu.upload(&HostData::F16(vec![half::f16::NAN; 24]))?;
        gpu.copy_buffer(&src, &mut dst)?;
        assert_eq!(gpu.download(&dst)?, HostData::F16(halves));
        Ok(())
    }

    /// Repeated calls of a composite op reuse its pooled scratch (whose stale contents must not
    /// leak into results), `time` sums pass timestamps, and dropping a buffer evicts its groups.
    #[test]
    fn reuse_and_pass_timer() -> Result<()> {
        let Ok(gpu) = Wgpu::new() else {
            eprintln!("no wgpu adapter: skipped");
            return Ok(());
        };
        let op = DecayScan::new(3, 700, 5, DType::F32)?;
        let n = 3 * 700 * 5;
        for seed in 0..3 {
            let (x, g, h0) = (data(n, seed), data(n, seed + 7), data(15, seed + 11));
            let mut want = Cpu.alloc(DType::F32, n)?;
            let (cx, cg, ch) = (Cpu.upload(&x)?, Cpu.upload(&g)?, Cpu.upload(&h0)?);
            Cpu.decay_scan(&op, &cx, &cg, &ch, &mut want)?;
            let (wx, wg, wh) = (gpu.upload(&x)?, gpu.upload(&g)?, gpu.upload(&h0)?);
            let mut y = gpu.alloc(DType::F32, n)?;
            let t = gpu.time(&mut || gpu.decay_scan(&op, &wx, &wg, &wh, &mut y))?;
            if gpu.timer_kind() == "wgpu-pass-timestamps" {
                assert!(t > std::time::Duration::ZERO);
            }
            let (HostData::F32(got), HostData::F32(want)) = (gpu.download(&y)?, Cpu.download(&want)?) else {
                panic!("f32 expected");
            };
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
            // The scan's chunk sums went back to the pool.
            assert!(gpu.reuse.pool.idle_bytes() > 0);
            let cached = gpu.reuse.groups.len();
            drop(y);
            assert!(gpu.reuse.groups.len() < cached);
        }
        assert!(gpu.time(&mut || gpu.time(&mut || Ok(())).map(|_| ())).is_err() || !gpu.has_pass_timestamps());
        gpu.trim();
        assert_eq!(gpu.reuse.pool.idle_bytes(), 0);
        Ok(())
    }
}
