//! Every op on every backend against the float64 reference, and every golden case on every
//! backend. One trial per (backend, check): `wgpu::quest_decode_matches_reference`,
//! `cuda::golden::p22_quest_decode_paper_mha`, ...
//!
//! A backend that is not available here shows as *ignored*; set `KVSPARSE_REQUIRE=wgpu` (or
//! `cuda`, comma-separated) to turn that into a failure, as CI does for wgpu on lavapipe.
//! `KVSPARSE_CASES` sets the random cases per (op, backend) (default 24).

mod common;

use common::{backend_trial, compare, generate, matches_reference, run_on, Rng, OPS};
use kvsparse::golden::{case_files, Case};
use kvsparse::{Backend, Cpu, HostData};
use libtest_mimic::{Arguments, Failed, Trial};
use std::sync::OnceLock;

fn cases_per_op() -> usize {
    std::env::var("KVSPARSE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

/// The trials of one backend: its golden cases and one equivalence check per op. `equivalence`
/// is false for the CPU backend, which *is* the reference (comparing it with itself would be a
/// test that cannot fail).
fn backend_trials<B: Backend + Sync + 'static>(
    name: &'static str,
    backend: &'static Result<B, String>,
    equivalence: bool,
) -> Vec<Trial> {
    let golden_dir = common::golden_dir();
    let files = case_files(&golden_dir).expect("tests/golden holds the golden cases");
    type Check<B> = Box<dyn FnOnce(&'static B) -> Result<(), Failed> + Send>;
    let mut checks: Vec<(String, Check<B>)> = Vec::new();
    for f in files {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        checks.push((
            format!("{name}::golden::{stem}"),
            Box::new(move |b: &'static B| {
                let case = Case::load(&f)?;
                let outcome = case.run(b)?;
                if outcome.passed() {
                    Ok(())
                } else {
                    Err(outcome.failures.join("; ").into())
                }
            }),
        ));
    }
    if !equivalence {
        // The generators must only produce valid problems, and the reference must take them all.
        for (i, &op) in OPS.iter().enumerate() {
            checks.push((
                format!("{name}::{op}_accepts_generated_problems"),
                Box::new(move |b: &'static B| {
                    let mut r = Rng::new(0x5eed + i as u64);
                    for dtype in [kvsparse::DType::F32, kvsparse::DType::F16, kvsparse::DType::BF16] {
                        for _ in 0..cases_per_op() {
                            let case = generate(op, dtype, &mut r);
                            run_on(b, &case).map_err(|e| format!("{}: {e}", case.op.label()))?;
                        }
                    }
                    Ok(())
                }),
            ));
        }
    } else {
        for (i, &op) in OPS.iter().enumerate() {
            checks.push((
                format!("{name}::{op}_matches_reference"),
                Box::new(move |b: &'static B| Ok(matches_reference(b, op, cases_per_op(), 0x5eed + i as u64)?)),
            ));
        }
    }
    checks.into_iter().map(|(trial_name, check)| backend_trial(trial_name, name, backend, check)).collect()
}

/// The comparison itself must be able to fail: a poisoned output and a perturbed output are both
/// caught, for a float op and an integer op.
fn harness_detects_wrong_outputs() -> Result<(), Failed> {
    let mut r = Rng::new(7);
    for op in ["attention_dense", "quest_decode", "topk"] {
        let case = generate(op, kvsparse::DType::F32, &mut r);
        let good = run_on(&Cpu::new(), &case)?;
        if !compare(&case.op, &good, &good).is_empty() {
            return Err(format!("{op}: identical outputs reported as different").into());
        }
        let specs: Vec<_> = case.op.buffers().into_iter().filter(|s| s.output).collect();
        for (i, spec) in specs.iter().enumerate() {
            let mut bad = good.clone();
            bad[i] = match &good[i] {
                HostData::F32(v) => {
                    HostData::F32(v.iter().enumerate().map(|(j, &x)| if j == 0 { x + 0.5 } else { x }).collect())
                }
                HostData::I32(v) => {
                    HostData::I32(v.iter().enumerate().map(|(j, &x)| if j == 0 { x + 1 } else { x }).collect())
                }
                HostData::U32(v) => {
                    HostData::U32(v.iter().enumerate().map(|(j, &x)| if j == 0 { x ^ 1 } else { x }).collect())
                }
                other => HostData::poison(other.dtype(), other.len()),
            };
            if compare(&case.op, &bad, &good).is_empty() {
                return Err(format!("{op}: a wrong `{}` went unnoticed", spec.name).into());
            }
            bad[i] = HostData::poison(spec.dtype, spec.len);
            if spec.len > 0 && compare(&case.op, &bad, &good).is_empty() {
                return Err(format!("{op}: a poisoned `{}` went unnoticed", spec.name).into());
            }
        }
    }
    Ok(())
}

static CPU: OnceLock<Result<Cpu, String>> = OnceLock::new();
#[cfg(feature = "wgpu")]
static WGPU: OnceLock<Result<kvsparse::Wgpu, String>> = OnceLock::new();
#[cfg(feature = "cuda")]
static CUDA: OnceLock<Result<kvsparse::Cuda, String>> = OnceLock::new();

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let mut trials = vec![Trial::test("harness_detects_wrong_outputs", harness_detects_wrong_outputs)];
    trials.extend(backend_trials("cpu", CPU.get_or_init(|| Ok(Cpu::new())), false));
    #[cfg(feature = "wgpu")]
    trials.extend(backend_trials("wgpu", WGPU.get_or_init(|| kvsparse::Wgpu::new().map_err(|e| e.to_string())), true));
    #[cfg(feature = "cuda")]
    trials.extend(backend_trials("cuda", CUDA.get_or_init(|| kvsparse::Cuda::new().map_err(|e| e.to_string())), true));
    libtest_mimic::run(&args, trials).exit_code()
}
