//! The `kvsparse` command line: `info`, `verify`, `report`.

use kvsparse::golden::Case;
use kvsparse::{Backend, Cpu, Error};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
kvsparse: sparse attention over decaying memory, on every GPU

usage:
  kvsparse info                                   backends and devices found
  kvsparse verify --golden DIR [--backend NAME]   run golden cases; NAME = cpu, wgpu, cuda or all (default)
  kvsparse report [--preset P | --quick] [--backend NAME] [--out DIR] [--repeats N] [--dtype D] [--contexts T,T]
                  [--timer events|graph]
                                                  time every method at every budget; P = quick, paper or
                                                  long (default: paper on a GPU, quick on the CPU); NAME =
                                                  best (default), cpu, wgpu or cuda; writes DIR/report-*.json
                                                  and .svg (DIR defaults to report-out); --dtype (f32,
                                                  f16, bf16) and --contexts override the preset; --timer
                                                  graph (CUDA): each op recorded as a CUDA graph, L2
                                                  flushed, one replay timed (no host launch cost)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("info") => info(),
        Some("verify") => verify(&args[1..]),
        Some("report") => report(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("kvsparse: {msg}");
            ExitCode::from(2)
        }
    }
}

/// `--name value` pairs; unknown flags are an error.
fn flags(args: &[String], known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let name =
            a.strip_prefix("--").filter(|n| known.contains(n)).ok_or_else(|| format!("unknown argument `{a}`"))?;
        let value = it.next().ok_or_else(|| format!("`--{name}` needs a value"))?;
        out.push((name.to_string(), value.clone()));
    }
    Ok(out)
}

/// A backend that could not be opened, with the reason.
#[allow(dead_code)] // used only when a GPU backend is compiled in
fn unavailable(name: &str, e: Error) -> String {
    format!("{name}: {e}")
}

fn info() -> Result<ExitCode, String> {
    let cpu = Cpu::new();
    println!("cpu: {}", cpu.device_name());
    #[cfg(feature = "wgpu")]
    match kvsparse::Wgpu::new() {
        Ok(w) => w.info_lines().iter().for_each(|l| println!("wgpu: {l}")),
        Err(e) => println!("{}", unavailable("wgpu", e)),
    }
    #[cfg(not(feature = "wgpu"))]
    println!("wgpu: not compiled in (build with --features wgpu)");
    #[cfg(feature = "cuda")]
    match kvsparse::Cuda::new() {
        Ok(c) => c.info_lines().iter().for_each(|l| println!("cuda: {l}")),
        Err(e) => println!("{}", unavailable("cuda", e)),
    }
    #[cfg(not(feature = "cuda"))]
    println!("cuda: not compiled in (build with --features cuda)");
    Ok(ExitCode::SUCCESS)
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
}

fn run_cases<B: Backend>(b: &B, cases: &[Case], tally: &mut Tally) {
    for case in cases {
        let file = case.path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        match case.run(b) {
            Ok(o) if o.passed() => {
                tally.passed += 1;
                println!("{file:<52} {:<16} {:<7} {:>10.3e}  pass", case.op_name, b.name(), o.max_abs_err);
            }
            Ok(o) => {
                tally.failed += 1;
                println!(
                    "{file:<52} {:<16} {:<7} {:>10.3e}  FAIL  {}",
                    case.op_name,
                    b.name(),
                    o.max_abs_err,
                    o.failures.join("; ")
                );
            }
            Err(e) => {
                tally.failed += 1;
                println!("{file:<52} {:<16} {:<7} {:>10}  FAIL  {e}", case.op_name, b.name(), "-");
            }
        }
    }
}

fn verify(args: &[String]) -> Result<ExitCode, String> {
    let mut dir = None;
    let mut backend = "all".to_string();
    for (name, value) in flags(args, &["golden", "backend"])? {
        match name.as_str() {
            "golden" => dir = Some(PathBuf::from(value)),
            _ => backend = value,
        }
    }
    let dir = dir.ok_or("verify needs --golden DIR")?;
    if !["cpu", "wgpu", "cuda", "all"].contains(&backend.as_str()) {
        return Err(format!("unknown backend `{backend}`: expected cpu, wgpu, cuda or all"));
    }
    let files = kvsparse::golden::case_files(&dir).map_err(|e| e.to_string())?;
    let mut cases = Vec::new();
    let mut malformed = Vec::new();
    for f in &files {
        match Case::load(f).and_then(|c| c.op().map(|_| c)) {
            Ok(c) => cases.push(c),
            Err(e) => malformed.push(e.to_string()),
        }
    }
    let wants = |name: &str| backend == "all" || backend == name;
    let mut tally = Tally::default();
    let mut missing = Vec::new();
    println!("{:<52} {:<16} {:<7} {:>10}  result", "file", "op", "backend", "max error");
    if wants("cpu") {
        run_cases(&Cpu::new(), &cases, &mut tally);
    }
    if wants("wgpu") {
        #[cfg(feature = "wgpu")]
        match kvsparse::Wgpu::new() {
            Ok(w) => run_cases(&w, &cases, &mut tally),
            Err(e) => missing.push(unavailable("wgpu", e)),
        }
        #[cfg(not(feature = "wgpu"))]
        missing.push("wgpu: not compiled in (build with --features wgpu)".to_string());
    }
    if wants("cuda") {
        #[cfg(feature = "cuda")]
        match kvsparse::Cuda::new() {
            Ok(c) => run_cases(&c, &cases, &mut tally),
            Err(e) => missing.push(unavailable("cuda", e)),
        }
        #[cfg(not(feature = "cuda"))]
        missing.push("cuda: not compiled in (build with --features cuda)".to_string());
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    for m in &missing {
        eprintln!("kvsparse: skipped {m}");
    }
    for m in &malformed {
        eprintln!("kvsparse: unusable golden file {m}");
    }
    // A backend asked for by name that cannot run, or a malformed file, is unusable input.
    if !malformed.is_empty() || (backend != "all" && !missing.is_empty()) {
        return Ok(ExitCode::from(2));
    }
    Ok(if tally.failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Runs the report on one backend, prints its table and writes JSON and SVG into `out`.
fn report_on<B: Backend>(b: &B, preset: &kvsparse::report::Preset, out: &std::path::Path) -> Result<(), String> {
    eprintln!("report: preset {} on {} ({})", preset.name, b.name(), b.device_name());
    let r = kvsparse::report::run(b, preset, true).map_err(|e| format!("report on {}: {e}", b.name()))?;
    print!("{}", r.table());
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (ext, text) in [("json", r.json()), ("svg", r.svg())] {
        let path = out.join(format!("report-{}-{}.{ext}", preset.name, b.name()));
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn report(args: &[String]) -> Result<ExitCode, String> {
    use kvsparse::report::Preset;
    let (mut preset, mut backend, mut out, mut repeats) = (None, "best".to_string(), PathBuf::from("report-out"), None);
    let (mut dtype, mut contexts, mut graph_timer) = (None, None, false);
    // `--quick` is short for `--preset quick`.
    let args: Vec<String> = args
        .iter()
        .flat_map(|a| if a == "--quick" { vec!["--preset".into(), "quick".into()] } else { vec![a.clone()] })
        .collect();
    for (name, value) in flags(&args, &["preset", "backend", "out", "repeats", "dtype", "contexts", "timer"])? {
        match name.as_str() {
            "dtype" => {
                dtype = Some(
                    kvsparse::DType::parse(&value)
                        .filter(|d| d.is_float())
                        .ok_or(format!("--dtype {value}: expected f32, f16 or bf16"))?,
                )
            }
            "contexts" => {
                let ts: Result<Vec<usize>, _> = value.split(',').map(|t| t.trim().parse::<usize>()).collect();
                contexts = Some(
                    ts.ok()
                        .filter(|t| !t.is_empty() && !t.contains(&0))
                        .ok_or(format!("--contexts {value}: expected positive token counts separated by commas"))?,
                );
            }
            "preset" => {
                preset = Some(Preset::by_name(&value).ok_or(format!("unknown preset `{value}`: quick, paper or long"))?)
            }
            "backend" => backend = value,
            "timer" => {
                graph_timer = match value.as_str() {
                    "events" => false,
                    "graph" => true,
                    _ => return Err(format!("--timer {value}: expected events or graph")),
                }
            }
            "out" => out = PathBuf::from(value),
            _ => repeats = Some(value.parse::<usize>().map_err(|_| format!("--repeats {value}: not a count"))?),
        }
    }
    if !["best", "cpu", "wgpu", "cuda"].contains(&backend.as_str()) {
        return Err(format!("unknown backend `{backend}`: expected best, cpu, wgpu or cuda"));
    }
    if graph_timer && (backend == "cpu" || backend == "wgpu" || !cfg!(feature = "cuda")) {
        return Err("--timer graph: CUDA graphs, for the cuda backend only (build with --features cuda)".into());
    }
    let pick = |gpu: bool| {
        let mut p = preset.clone().unwrap_or_else(|| if gpu { Preset::paper() } else { Preset::quick() });
        if let Some(n) = repeats {
            p.repeats = n;
        }
        if let Some(d) = dtype {
            p.dtype = d;
        }
        if let Some(ts) = &contexts {
            p.contexts = ts.clone();
        }
        p
    };
    // The best device: CUDA, else a hardware wgpu adapter; without a GPU, the CPU reference and
    // (if present) a software wgpu adapter such as lavapipe, on the quick preset.
    #[cfg(feature = "cuda")]
    if backend == "best" || backend == "cuda" {
        match kvsparse::Cuda::new() {
            Ok(c) => {
                report_on(&c.with_graph_timing(graph_timer), &pick(true), &out)?;
                if backend == "cuda" {
                    return Ok(ExitCode::SUCCESS);
                }
                backend = "wgpu".into();
            }
            Err(e) if backend == "cuda" => return Err(unavailable("cuda", e)),
            Err(_) => {}
        }
    }
    #[cfg(not(feature = "cuda"))]
    if backend == "cuda" {
        return Err("cuda: not compiled in (build with --features cuda)".into());
    }
    #[allow(unused_mut)] // only a hardware wgpu adapter sets it
    let mut ran_gpu = false;
    #[cfg(feature = "wgpu")]
    if backend == "best" || backend == "wgpu" {
        match kvsparse::Wgpu::new() {
            Ok(w) => {
                let hardware = w.adapter_info().device_type != wgpu::DeviceType::Cpu;
                report_on(&w, &pick(hardware), &out)?;
                ran_gpu = hardware;
            }
            Err(e) if backend == "wgpu" => return Err(unavailable("wgpu", e)),
            Err(_) => {}
        }
    }
    #[cfg(not(feature = "wgpu"))]
    if backend == "wgpu" {
        return Err("wgpu: not compiled in (build with --features wgpu)".into());
    }
    if backend == "cpu" || (backend == "best" && !ran_gpu) {
        report_on(&Cpu::new(), &pick(false), &out)?;
    }
    Ok(ExitCode::SUCCESS)
}
