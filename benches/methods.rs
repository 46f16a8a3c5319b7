//! Criterion benches: one group per method and backend (`quest_decode/wgpu`, ...), parameterised
//! by context and budget. Throughput reports both FLOPs (criterion's "elem/s" = FLOP/s here) and
//! the op's minimal bytes, from `Op::cost`. GPU backends time with their device timers
//! (`Backend::time`: CUDA events, wgpu timestamp queries) inside `iter_custom`, never a host
//! clock around one launch.
//!
//! `cargo bench --bench methods [--features cuda]`; `KVSPARSE_BENCH_CONTEXTS=4096,32768` picks
//! the contexts (default 4096, 32768, 131072 on GPUs, 4096 on the CPU).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvsparse::ops::*;
use kvsparse::{Backend, Cpu, DType, HostData};
use std::time::Duration;

const HQ: usize = 32;
const HKV: usize = 8;
const D: usize = 128;
const BLOCK: usize = 64;

fn contexts(gpu: bool) -> Vec<usize> {
    match std::env::var("KVSPARSE_BENCH_CONTEXTS") {
        Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) if gpu => vec![4096, 32768, 131072],
        Err(_) => vec![4096],
    }
}

fn data(n: usize, seed: u32, dtype: DType) -> HostData {
    let mut s = seed.wrapping_mul(2654435761) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    HostData::from_f32(dtype, &v)
}

/// Times `f` with the backend's timer, `iters` times in one measurement.
fn device_time<B: Backend>(b: &B, iters: u64, f: &mut dyn FnMut() -> kvsparse::Result<()>) -> Duration {
    b.time(&mut || (0..iters).try_for_each(|_| f())).expect("benchmarked op runs")
}

fn bench_backend<B: Backend>(c: &mut Criterion, b: &B, gpu: bool) {
    let dt = if b.supports(DType::BF16) { DType::BF16 } else { DType::F32 };
    let scale = default_scale(D);
    for t in contexts(gpu) {
        let nb = t.div_ceil(BLOCK);
        let kv = HKV * t * D;
        let (q, k, v) = (
            b.upload(&data(HQ * D, 1, dt)).unwrap(),
            b.upload(&data(kv, 2, dt)).unwrap(),
            b.upload(&data(kv, 3, dt)).unwrap(),
        );
        let (mut out, mut lse) = (b.alloc(dt, HQ * D).unwrap(), b.alloc(DType::F32, HQ).unwrap());

        let dense = AttentionDense::new(HQ, HKV, 1, t, D, false, scale, dt).unwrap();
        let mut g = c.benchmark_group(format!("dense_decode/{}", b.name()));
        g.throughput(Throughput::ElementsAndBytes { elements: dense.cost().flops, bytes: dense.cost().bytes });
        g.bench_function(BenchmarkId::from_parameter(format!("t{t}")), |bench| {
            bench.iter_custom(|n| device_time(b, n, &mut || b.attention_dense(&dense, &q, &k, &v, &mut out, &mut lse)))
        });
        g.finish();

        let shape = BlockShape { heads: HKV, seq: t, dim: D, block_size: BLOCK, dtype: dt };
        let (mut kmin, mut kmax) = (b.alloc(dt, HKV * nb * D).unwrap(), b.alloc(dt, HKV * nb * D).unwrap());
        b.block_minmax(&BlockMinmax::new(shape).unwrap(), &k, &mut kmin, &mut kmax).unwrap();
        let mut g = c.benchmark_group(format!("quest_decode/{}", b.name()));
        for den in [4, 8, 16] {
            let cfg = SelectConfig {
                block_size: BLOCK,
                n_blocks: nb / den,
                force_first: true,
                n_local: 1,
                selector: Selector::Score,
            };
            let op = QuestDecode::new(HQ, HKV, t, D, cfg, scale, dt).unwrap().with_cached_stats();
            let [mut sel, mut o, mut l, mut r] = op.alloc_outputs(b).unwrap();
            g.throughput(Throughput::ElementsAndBytes { elements: op.cost().flops, bytes: op.cost().bytes });
            g.bench_function(BenchmarkId::from_parameter(format!("t{t}_b1-{den}")), |bench| {
                bench.iter_custom(|n| {
                    device_time(b, n, &mut || {
                        b.quest_decode(&op, &q, &k, &v, Some((&kmin, &kmax)), &mut sel, &mut o, &mut l, &mut r)
                    })
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("topk/{}", b.name()));
        for (rows, n, k) in [(HQ, nb, nb / 8), (1, 131072, 2048), (8, 131072, 8192)] {
            let op = TopK::new(rows, n, k.max(1)).unwrap();
            let s = b.upload(&data(rows * n, 5, DType::F32)).unwrap();
            let mut idx = b.alloc(DType::I32, rows * op.out_k()).unwrap();
            g.throughput(Throughput::ElementsAndBytes { elements: op.cost().flops, bytes: op.cost().bytes });
            g.bench_function(BenchmarkId::from_parameter(op.label()), |bench| {
                bench.iter_custom(|n| device_time(b, n, &mut || b.topk(&op, &s, &mut idx)))
            });
        }
        g.finish();

        let scan = RatplusKv::new(HKV, t, D, 10000.0, dt).unwrap();
        let gate = b.upload(&HostData::F32(vec![0.9; kv])).unwrap();
        let mut outs = [b.alloc(dt, kv).unwrap(), b.alloc(dt, kv).unwrap(), b.alloc(dt, kv).unwrap()];
        let mut g = c.benchmark_group(format!("ratplus_kv/{}", b.name()));
        g.throughput(Throughput::ElementsAndBytes { elements: scan.cost().flops, bytes: scan.cost().bytes });
        g.bench_function(BenchmarkId::from_parameter(format!("t{t}")), |bench| {
            bench.iter_custom(|n| {
                device_time(b, n, &mut || {
                    let [kt, vt, kr] = &mut outs;
                    b.ratplus_kv(&scan, &k, &v, &gate, kt, vt, kr)
                })
            })
        });
        g.finish();
    }
}

fn benches(c: &mut Criterion) {
    bench_backend(c, &Cpu::new(), false);
    #[cfg(feature = "wgpu")]
    match kvsparse::Wgpu::new() {
        Ok(w) => {
            let hw = w.adapter_info().device_type != wgpu::DeviceType::Cpu;
            bench_backend(c, &w, hw)
        }
        Err(e) => eprintln!("wgpu skipped: {e}"),
    }
    #[cfg(feature = "cuda")]
    match kvsparse::Cuda::new() {
        Ok(cu) => bench_backend(c, &cu, true),
        Err(e) => eprintln!("cuda skipped: {e}"),
    }
}

criterion_group! {
    name = methods;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(methods);
