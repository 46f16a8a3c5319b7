//! A persistent on-disk store of the CUBINs NVRTC builds, and the way of one module from source
//! to the driver with the store in front of NVRTC.
//!
//! Why: NVRTC takes seconds per module and every process paid it again for every module it used
//! (on the H200, `tests/cuda_large.rs` spent 36 s of its 52 s in NVRTC, BENCHMARKS run 36's note;
//! run 37 timed it at 53.7 s with the store empty and 19.1 s with it filled). Like Triton's kernel cache or the driver's JIT cache, a process now loads the CUBIN
//! an earlier process compiled from the same source, NVRTC options, arch, NVRTC version and crate
//! version, and skips NVRTC.
//!
//! The store is a cache, never a source of errors: an I/O failure is a miss or a skipped write.
//! It is never trusted either: an entry is `<family>-<label>-<arch>-<hash>.cubin` with a `.key`
//! file beside it holding the full key text (source included) and a checksum of the CUBIN; a
//! lookup hits only when that file matches byte for byte, so a hash collision, a torn write or
//! a truncated file is a miss and the driver is never handed an image that was not written whole.
//! Files are written to a temporary name and renamed, so readers never see half a file.
//!
//! Where: `$KVSPARSE_CACHE_DIR`, else `$XDG_CACHE_HOME/kvsparse/cuda`, else
//! `$HOME/.cache/kvsparse/cuda`; `KVSPARSE_CUDA_CACHE=0` turns it off. `KVSPARSE_CUDA_LOG=1`
//! prints one line per loaded module (where it came from and where its time went).

use super::device_err;
use super::kernels::{self, Compiled, Family, Spec};
use crate::Result;
use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::Ptx;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Everything a compiled module depends on, as text: what names its files (through a hash) and
/// what a lookup compares in full (the hash alone could collide).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModuleKey {
    /// `<family>-<label>-<arch>`, sanitised: the readable part of the file names.
    name: String,
    /// Crate version, NVRTC version, arch, options, module and the exact source.
    text: String,
}

impl ModuleKey {
    /// The key of `family` for `spec` on `arch`, compiled by NVRTC `nvrtc` (major, minor): the
    /// source and options exactly as [`kernels::compile`] hands them to NVRTC.
    pub(crate) fn of_module(family: Family, spec: &Spec, arch: &str, nvrtc: (i32, i32)) -> ModuleKey {
        let source = kernels::assemble(family, spec);
        ModuleKey::new(family.name(), &spec.label(), arch, &source, &kernels::options(arch), nvrtc)
    }

    /// The key from its parts (what the tests build without NVRTC).
    fn new(family: &str, label: &str, arch: &str, source: &str, options: &[String], nvrtc: (i32, i32)) -> ModuleKey {
        let text = format!(
            "kvsparse {}\nnvrtc {}.{}\narch {arch}\noptions {options:?}\nmodule {family} [{label}]\nsource {} bytes\n{source}",
            env!("CARGO_PKG_VERSION"),
            nvrtc.0,
            nvrtc.1,
            source.len(),
        );
        let name = [family, label, arch].map(file_name_part).join("-");
        ModuleKey { name, text }
    }

    /// File name without extension: readable name and the hash of the key text.
    fn stem(&self) -> String {
        format!("{}-{:016x}", self.name, fnv1a(self.text.as_bytes()))
    }

    fn cubin_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.cubin", self.stem()))
    }

    fn key_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.key", self.stem()))
    }

    /// What the `.key` file of an entry holds: the key text and a checksum of its CUBIN (so a
    /// CUBIN truncated, corrupted or written by a racing writer of another key is a miss).
    fn key_file(&self, cubin: &[u8]) -> String {
        format!("{}\n// cubin: {} bytes, fnv1a {:016x}\n", self.text, cubin.len(), fnv1a(cubin))
    }
}

/// `[A-Za-z0-9_]` only (anything else becomes `_`), so that `-` separates the parts of a name.
fn file_name_part(s: &str) -> String {
    let part: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if part.is_empty() {
        "_".to_string()
    } else {
        part
    }
}

/// 64-bit FNV-1a: a stable hash (unlike std's `DefaultHasher`, whose output may change between
/// Rust releases), good enough for file names since the key text is compared in full.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The stored CUBIN of `key` in `dir`, if its key file matches `key` and the CUBIN's checksum in
/// full; anything else (no entry, I/O error, mismatch) is `None`.
pub(crate) fn lookup(dir: &Path, key: &ModuleKey) -> Option<Vec<u8>> {
    let recorded = std::fs::read(key.key_path(dir)).ok()?;
    let cubin = std::fs::read(key.cubin_path(dir)).ok()?;
    (recorded == key.key_file(&cubin).as_bytes()).then_some(cubin)
}

/// Stores `cubin` as the entry of `key` in `dir` (created if missing), replacing any entry there.
/// The caller ignores the error (a cache that cannot be written is only slower); it is returned
/// for `KVSPARSE_CUDA_LOG=1` and the tests.
pub(crate) fn store(dir: &Path, key: &ModuleKey, cubin: &[u8]) -> std::io::Result<()> {
    // Failure shows in the writes below.
    let _ = std::fs::create_dir_all(dir);
    // The CUBIN first, the key file last: the key file is what makes an entry visible.
    write_atomically(&key.cubin_path(dir), cubin)?;
    write_atomically(&key.key_path(dir), key.key_file(cubin).as_bytes())
}

/// Writes `bytes` to a temporary file beside `path` (named by process and counter, so writers of
/// other threads and processes never share one) and renames it to `path`: readers see the old
/// file or the new one, never part of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The store's directory for this process (read once): `$KVSPARSE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/kvsparse/cuda`, else `$HOME/.cache/kvsparse/cuda`; `None` under
/// `KVSPARSE_CUDA_CACHE=0` or when none is set.
pub(crate) fn default_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        // An empty variable counts as unset (as the XDG spec says of its own).
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        let off = std::env::var("KVSPARSE_CUDA_CACHE").is_ok_and(|v| v.trim() == "0");
        if off {
            None
        } else {
            resolve_dir(var("KVSPARSE_CACHE_DIR"), var("XDG_CACHE_HOME"), var("HOME"))
        }
    })
    .as_deref()
}

/// The store's directory from the three variables it may come from, in order of precedence.
fn resolve_dir(explicit: Option<OsString>, xdg_cache: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    explicit
        .map(PathBuf::from)
        .or_else(|| xdg_cache.map(|x| PathBuf::from(x).join("kvsparse").join("cuda")))
        .or_else(|| home.map(|h| PathBuf::from(h).join(".cache").join("kvsparse").join("cuda")))
}

/// NVRTC's (major, minor), asked once; `None` (and so no store) if it cannot say.
fn nvrtc_version() -> Option<(i32, i32)> {
    static VERSION: OnceLock<Option<(i32, i32)>> = OnceLock::new();
    *VERSION.get_or_init(|| {
        // cudarc's loader panics on a missing library: probe first (`Cuda::new` already did).
        if !kernels::nvrtc_present() {
            return None;
        }
        let (mut major, mut minor) = (0i32, 0i32);
        // SAFETY: libnvrtc is present (probed above); both pointers are to live i32s.
        let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
    })
}

/// `KVSPARSE_CUDA_LOG=1`: one line per loaded module on stderr (see [`Trace::log`]).
fn log_modules() -> bool {
    static FLAG: OnceLock<bool> = OnceLock::new();
    *FLAG.get_or_init(|| crate::env_switch("KVSPARSE_CUDA_LOG", false))
}

/// Where the time of loading one module went and what got loaded, for `KVSPARSE_CUDA_LOG=1`.
struct Trace {
    /// What the store did: `off`, `miss`, `hit`, `hit, CUBIN refused: ...`, `wrote`, ...
    store: String,
    /// Seconds in NVRTC; `None` when the module came from the store.
    nvrtc_s: Option<f64>,
    /// Seconds in the driver's module loads (refused ones included).
    load_s: f64,
    /// Seconds reading and writing the store.
    store_s: f64,
    /// `cubin`, or `ptx (<why not the CUBIN>)`.
    loaded: String,
}

impl Trace {
    /// The line: module, origin, seconds per stage, what got loaded.
    fn log(&self, family: Family, spec: &Spec, arch: &str) {
        if log_modules() {
            eprintln!(
                "kvsparse cuda module {} [{}] {arch}: from {} (store {}), nvrtc {:.3} s, load {:.3} s, store i/o {:.3} s, loaded {}",
                family.name(),
                spec.label(),
                if self.nvrtc_s.is_some() { "nvrtc" } else { "store" },
                self.store,
                self.nvrtc_s.unwrap_or(0.0),
                self.load_s,
                self.store_s,
                self.loaded,
            );
        }
    }
}

/// Adds the seconds `f` takes to `seconds`.
fn timed<T>(seconds: &mut f64, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    *seconds += start.elapsed().as_secs_f64();
    out
}

/// The module of `family` for `spec` on `arch`, loaded into `ctx`: the stored CUBIN where an
/// earlier process compiled it, else NVRTC's CUBIN (then stored), else NVRTC's PTX (the driver
/// refused the CUBIN, NVRTC gave none, or `ptx_only`: `KVSPARSE_CUDA_PTX=1`, which also bypasses
/// the store, to time the two loads).
///
/// # Errors
/// [`crate::Error::Nvrtc`] when the module does not compile; [`crate::Error::Device`] when the
/// driver refuses the PTX as well.
pub(crate) fn load_module(
    ctx: &Arc<CudaContext>,
    family: Family,
    spec: &Spec,
    arch: &str,
    ptx_only: bool,
) -> Result<Arc<CudaModule>> {
    let dir = default_dir().filter(|_| !ptx_only);
    let entry = dir.zip(nvrtc_version()).map(|(dir, nvrtc)| (dir, ModuleKey::of_module(family, spec, arch, nvrtc)));
    let mut trace = Trace { store: "off".into(), nvrtc_s: None, load_s: 0.0, store_s: 0.0, loaded: "cubin".into() };
    if let Some(module) = entry.as_ref().and_then(|(dir, key)| from_store(ctx, dir, key, &mut trace)) {
        trace.log(family, spec, arch);
        return Ok(module);
    }
    let mut nvrtc_s = 0.0;
    let compiled = timed(&mut nvrtc_s, || kernels::compile(family, spec, arch))?;
    trace.nvrtc_s = Some(nvrtc_s);
    let (module, loaded_cubin) = load_compiled(ctx, compiled, ptx_only, &mut trace)
        .map_err(|e| device_err(&format!("load module {} [{}]", family.name(), spec.label()), e))?;
    if let (Some((dir, key)), Some(cubin)) = (&entry, loaded_cubin) {
        // Also replaces an entry whose CUBIN the driver refused.
        let written = timed(&mut trace.store_s, || store(dir, key, &cubin));
        trace.store = match written {
            Ok(()) => format!("{}, wrote", trace.store),
            Err(e) => format!("{}, write failed: {e}", trace.store),
        };
    }
    trace.log(family, spec, arch);
    Ok(module)
}

/// The stored CUBIN of `key`, loaded, if there is one and the driver takes it.
fn from_store(ctx: &Arc<CudaContext>, dir: &Path, key: &ModuleKey, trace: &mut Trace) -> Option<Arc<CudaModule>> {
    let Some(cubin) = timed(&mut trace.store_s, || lookup(dir, key)) else {
        trace.store = "miss".into();
        return None;
    };
    match timed(&mut trace.load_s, || ctx.load_module(Ptx::from_binary(cubin))) {
        Ok(module) => {
            trace.store = "hit".into();
            Some(module)
        }
        Err(e) => {
            trace.store = format!("hit, CUBIN refused: {e}");
            None
        }
    }
}

/// Loads NVRTC's CUBIN, or its PTX where there is none, the driver refuses it or `ptx_only`;
/// returns the module and the CUBIN if that is what got loaded (what is worth storing).
fn load_compiled(
    ctx: &Arc<CudaContext>,
    compiled: Compiled,
    ptx_only: bool,
    trace: &mut Trace,
) -> std::result::Result<(Arc<CudaModule>, Option<Vec<u8>>), cudarc::driver::DriverError> {
    match compiled.cubin {
        Some(_) if ptx_only => trace.loaded = "ptx (KVSPARSE_CUDA_PTX=1)".into(),
        None => trace.loaded = "ptx (NVRTC gave no CUBIN)".into(),
        Some(cubin) => match timed(&mut trace.load_s, || ctx.load_module(Ptx::from_binary(cubin.clone()))) {
            Ok(module) => return Ok((module, Some(cubin))),
            Err(e) => trace.loaded = format!("ptx (CUBIN refused: {e})"),
        },
    }
    timed(&mut trace.load_s, || ctx.load_module(compiled.ptx)).map(|module| (module, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(what: &str) -> TempDir {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("kvsparse-module-store-{}-{n}-{what}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn key(source: &str) -> ModuleKey {
        let options = ["--gpu-architecture=sm_90".to_string(), "-lineinfo".to_string()];
        ModuleKey::new("attention", "bf16,dpl4", "sm_90", source, &options, (12, 8))
    }

    fn cubin() -> Vec<u8> {
        (0..4096u32).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// Every file name in `dir`.
    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_key_is_stable_and_names_its_files_readably() {
        let k = key("__global__ void f() {}");
        assert_eq!(k, key("__global__ void f() {}"));
        let stem = k.stem();
        assert_eq!(stem, format!("attention-bf16_dpl4-sm_90-{:016x}", fnv1a(k.text.as_bytes())));
        assert!(stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "{stem}");
        assert!(k.text.ends_with("\n__global__ void f() {}"));
        assert!(k.text.starts_with(&format!("kvsparse {}\nnvrtc 12.8\narch sm_90\n", env!("CARGO_PKG_VERSION"))));
        assert_eq!(ModuleKey::new("topk", "-", "sm_90", "", &[], (12, 8)).name, "topk-_-sm_90");
    }

    #[test]
    fn a_module_key_holds_what_nvrtc_is_given() {
        let k = ModuleKey::of_module(Family::Topk, &Spec::NONE, "sm_90", (12, 8));
        assert_eq!(k, ModuleKey::of_module(Family::Topk, &Spec::NONE, "sm_90", (12, 8)));
        assert!(k.text.ends_with(&kernels::assemble(Family::Topk, &Spec::NONE)));
        assert!(k.text.contains(&format!("{:?}", kernels::options("sm_90"))));
        assert!(k.stem().starts_with("topk-_-sm_90-"), "{}", k.stem());
        assert_ne!(k.stem(), ModuleKey::of_module(Family::Topk, &Spec::NONE, "sm_80", (12, 8)).stem());
    }

    #[test]
    fn every_part_of_the_key_changes_it() {
        let opts = |o: &str| vec![o.to_string()];
        let base = ModuleKey::new("topk", "-", "sm_90", "src", &opts("-lineinfo"), (12, 8));
        let variants = [
            ModuleKey::new("blocks", "-", "sm_90", "src", &opts("-lineinfo"), (12, 8)),
            ModuleKey::new("topk", "f16", "sm_90", "src", &opts("-lineinfo"), (12, 8)),
            ModuleKey::new("topk", "-", "sm_80", "src", &opts("-lineinfo"), (12, 8)),
            ModuleKey::new("topk", "-", "sm_90", "src ", &opts("-lineinfo"), (12, 8)),
            ModuleKey::new("topk", "-", "sm_90", "src", &opts("-G"), (12, 8)),
            ModuleKey::new("topk", "-", "sm_90", "src", &opts("-lineinfo"), (12, 9)),
        ];
        for v in &variants {
            assert_ne!(v.text, base.text);
            assert_ne!(v.stem(), base.stem());
        }
    }

    #[test]
    fn a_stored_cubin_comes_back() {
        let dir = TempDir::new("round-trip");
        let k = key("src");
        assert_eq!(lookup(&dir.0, &k), None);
        store(&dir.0, &k, &cubin()).unwrap();
        assert_eq!(lookup(&dir.0, &k), Some(cubin()));
        // Exactly the entry's two files: no temporary file left behind.
        assert_eq!(files(&dir.0), vec![format!("{}.cubin", k.stem()), format!("{}.key", k.stem())]);
        // Storing again replaces the entry.
        store(&dir.0, &k, b"other").unwrap();
        assert_eq!(lookup(&dir.0, &k), Some(b"other".to_vec()));
        assert_eq!(files(&dir.0).len(), 2);
    }

    #[test]
    fn another_key_misses_even_under_the_same_file_name() {
        let dir = TempDir::new("mismatch");
        let (a, b) = (key("source a"), key("source b"));
        store(&dir.0, &a, &cubin()).unwrap();
        assert_eq!(lookup(&dir.0, &b), None);
        // A colliding hash: `b`'s key file under `a`'s name.
        std::fs::write(a.key_path(&dir.0), b.key_file(&cubin())).unwrap();
        assert_eq!(lookup(&dir.0, &a), None);
    }

    #[test]
    fn damaged_entries_miss() {
        let dir = TempDir::new("damaged");
        let k = key("src");
        /// Spoils the stored entry of a key in a dir.
        type Damage = fn(&ModuleKey, &Path);
        let damage: [(&str, Damage); 6] = [
            ("cubin truncated", |k, d| std::fs::write(k.cubin_path(d), &cubin()[..100]).unwrap()),
            ("cubin byte flipped", |k, d| {
                let mut bin = cubin();
                bin[1000] ^= 1;
                std::fs::write(k.cubin_path(d), bin).unwrap();
            }),
            ("cubin empty", |k, d| std::fs::write(k.cubin_path(d), b"").unwrap()),
            ("cubin missing", |k, d| std::fs::remove_file(k.cubin_path(d)).unwrap()),
            ("key truncated", |k, d| {
                let text = k.key_file(&cubin());
                std::fs::write(k.key_path(d), &text[..text.len() - 2]).unwrap();
            }),
            ("key missing", |k, d| std::fs::remove_file(k.key_path(d)).unwrap()),
        ];
        for (what, damage) in damage {
            store(&dir.0, &k, &cubin()).unwrap();
            damage(&k, &dir.0);
            assert_eq!(lookup(&dir.0, &k), None, "{what}");
        }
    }

    #[test]
    fn an_unwritable_dir_is_skipped_silently() {
        let dir = TempDir::new("unwritable");
        std::fs::create_dir_all(&dir.0).unwrap();
        // Below a regular file: nothing can be created there, even by root.
        let file = dir.0.join("a-file");
        std::fs::write(&file, b"").unwrap();
        for bad in [file.join("cache"), file.clone()] {
            let k = key("src");
            assert!(store(&bad, &k, &cubin()).is_err());
            assert_eq!(lookup(&bad, &k), None);
        }
        assert_eq!(files(&dir.0), vec!["a-file".to_string()]);
    }

    #[test]
    fn racing_writers_leave_a_whole_entry() {
        let dir = TempDir::new("race");
        let k = key("src");
        let bins: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 50_000 + usize::from(i)]).collect();
        std::thread::scope(|s| {
            for bin in &bins {
                let (dir, k) = (&dir.0, &k);
                s.spawn(move || (0..20).for_each(|_| store(dir, k, bin).unwrap()));
            }
        });
        let got = lookup(&dir.0, &k);
        // The key file and the CUBIN may come from different writers; then it is a miss.
        assert!(got.as_ref().is_none_or(|g| bins.contains(g)), "a CUBIN no writer wrote");
        assert_eq!(files(&dir.0).len(), 2, "temporary files left: {:?}", files(&dir.0));
    }

    #[test]
    fn the_dir_follows_the_variables_in_order() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(resolve_dir(os("/c"), os("/x"), os("/h")), Some(PathBuf::from("/c")));
        assert_eq!(resolve_dir(None, os("/x"), os("/h")), Some(PathBuf::from("/x/kvsparse/cuda")));
        assert_eq!(resolve_dir(None, None, os("/h")), Some(PathBuf::from("/h/.cache/kvsparse/cuda")));
        assert_eq!(resolve_dir(None, None, None), None);
    }
}
