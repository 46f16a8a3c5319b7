//! Dense decode (one query token a head) timed over a grid of layer shapes on one backend: how
//! its time scales with the context, the head dim and the query heads a KV head serves. Each
//! shape prints the median of 20 timed runs after 3 untimed ones, the rate its bytes imply,
//! and that rate against the backend's own copy of a 1 GiB buffer, timed the same way.
//!
//! `cargo run --release --example decode_sweep [--features cuda] -- [cpu|wgpu|cuda] [f32|f16|bf16]`
//!
//! The default backend is wgpu, the default storage dtype f16. The CPU reference runs only the
//! smallest contexts.

use kvsparse::ops::{default_scale, AttentionDense, Op};
use kvsparse::report::data;
use kvsparse::{Backend, DType, Result};

/// Query heads, KV heads and head dims of the grid.
const HEADS: [(usize, usize); 3] = [(8, 8), (32, 8), (32, 32)];
const DIMS: [usize; 2] = [64, 128];

/// Median of `runs` timings of `f` after `warm` untimed runs.
fn median<B: Backend>(b: &B, warm: usize, runs: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warm {
        f()?;
    }
    b.synchronize()?;
    let mut t: Vec<f64> = (0..runs).map(|_| b.time(f).map(|d| d.as_secs_f64())).collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn sweep<B: Backend>(b: &B, dtype: DType, contexts: &[usize]) -> Result<()> {
    // The copy ceiling (read + write) of a GPU backend; the CPU reference's copy is a
    // download and an upload, no ceiling for anything.
    let copy = if b.name() == "cpu" {
        f64::NAN
    } else {
        let n = (1usize << 30) / 4;
        let src = b.upload(&data(n, 1, DType::F32))?;
        let mut dst = b.alloc(DType::F32, n)?;
        2.0 * (n * 4) as f64 / median(b, 2, 10, &mut || b.copy_buffer(&src, &mut dst))?
    };
    println!("{} ({}), {dtype}: copy {:.0} GB/s", b.name(), b.timer_kind(), copy / 1e9);
    println!("{:>4} {:>4} {:>4} {:>7} {:>10} {:>10} {:>7}", "Hq", "Hkv", "D", "T", "time", "rate", "% copy");
    for &(hq, hkv) in &HEADS {
        for &d in &DIMS {
            for &t in contexts {
                let op = AttentionDense::new(hq, hkv, 1, t, d, false, default_scale(d), dtype)?;
                let q = b.upload(&data(hq * d, 2, dtype))?;
                let k = b.upload(&data(hkv * t * d, 3, dtype))?;
                let v = b.upload(&data(hkv * t * d, 4, dtype))?;
                let mut out = b.alloc(dtype, hq * d)?;
                let mut lse = b.alloc(DType::F32, hq)?;
                let secs = median(b, 3, 20, &mut || b.attention_dense(&op, &q, &k, &v, &mut out, &mut lse))?;
                let rate = op.cost().bytes as f64 / secs;
                println!(
                    "{hq:>4} {hkv:>4} {d:>4} {t:>7} {:>8.1} µs {:>6.0} GB/s {:>6.1}%",
                    secs * 1e6,
                    rate / 1e9,
                    100.0 * rate / copy
                );
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = args.first().map_or("wgpu", String::as_str);
    let dtype = match args.get(1).map(|s| DType::parse(s)) {
        None => DType::F16,
        Some(Some(d)) if d.is_float() => d,
        Some(_) => {
            eprintln!("decode_sweep: dtype: expected f32, f16 or bf16");
            return std::process::ExitCode::from(2);
        }
    };
    let long = [4096, 16384, 32768, 65536, 131072];
    let result = match backend {
        "cpu" => sweep(&kvsparse::Cpu::new(), dtype, &[1024, 4096]),
        #[cfg(feature = "wgpu")]
        "wgpu" => kvsparse::Wgpu::new().and_then(|w| sweep(&w, dtype, &long)),
        #[cfg(feature = "cuda")]
        "cuda" => kvsparse::Cuda::new().and_then(|c| sweep(&c, dtype, &long)),
        other => {
            eprintln!("decode_sweep: backend `{other}`: expected cpu, wgpu or cuda (built with its feature)");
            return std::process::ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("decode_sweep: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
