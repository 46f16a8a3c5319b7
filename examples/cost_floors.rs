//! Prints the cost model's floors for the kernels and shapes of the performance targets: the
//! FLOPs and minimal bytes each must move, and the time those imply at a given copy bandwidth
//! (default 2933 GB/s, PyTorch's device-to-device copy on the H100 of BASELINES.md) and bf16
//! dense tensor throughput (default 989 TFLOP/s, the H100 SXM datasheet figure).
//!
//! `cargo run --example cost_floors [GB/s] [TFLOP/s]`

use kvsparse::ops::*;
use kvsparse::DType;

fn main() -> kvsparse::Result<()> {
    let args: Vec<f64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let bw = args.first().copied().unwrap_or(2933.0) * 1e9;
    let peak = args.get(1).copied().unwrap_or(989.0) * 1e12;
    let (hq, hkv, d, bf16) = (32, 8, 128, DType::BF16);
    let scale = default_scale(d);
    let mut rows: Vec<(String, Cost)> = Vec::new();
    for t in [4096, 32768, 131072] {
        let dense = AttentionDense::new(hq, hkv, 1, t, d, false, scale, bf16)?;
        rows.push((format!("dense decode T{t}"), dense.cost()));
        for den in [4, 8, 16] {
            let nb = t / 64;
            let cfg = SelectConfig {
                block_size: 64,
                n_blocks: nb / den,
                force_first: true,
                n_local: 1,
                selector: Selector::Score,
            };
            let q = QuestDecode::new(hq, hkv, t, d, cfg, scale, bf16)?.with_cached_stats();
            rows.push((format!("quest decode T{t} b1/{den} (per-q-head selection)"), q.cost()));
            let mha = QuestDecode::new(hkv, hkv, t, d, cfg, scale, bf16)?.with_cached_stats();
            rows.push((format!("quest decode T{t} b1/{den}, one selection per kv head"), mha.cost()));
            let sparse = AttentionSparse::new(hq, hkv, t, d, hkv, t / den, scale, bf16)?;
            rows.push((format!("decode over kept tokens T{t} b1/{den}"), sparse.cost()));
        }
        let scores = QuestScores::new(hq, hkv, t / 64, d, bf16)?;
        rows.push((format!("quest scores T{t} block 64"), scores.cost()));
    }
    for (r, n, k) in [(1, 131072, 2048), (8, 131072, 8192)] {
        rows.push((format!("topk {r}x{n} k{k}"), TopK::new(r, n, k)?.cost()));
    }
    rows.push(("decay scan B1 T32K C4096 f32".into(), DecayScan::new(1, 32768, 4096, DType::F32)?.cost()));
    rows.push(("ratplus_kv Hkv8 T32K D128 bf16".into(), RatplusKv::new(8, 32768, 128, 10000.0, bf16)?.cost()));
    for t in [4096, 32768] {
        let dense = AttentionDense::new(hq, hkv, t, t, d, true, scale, bf16)?;
        rows.push((format!("dense causal prefill T{t}"), dense.cost()));
        for den in [8, 16] {
            let cfg = SelectConfig {
                block_size: 64,
                n_blocks: t / 64 / den,
                force_first: true,
                n_local: 1,
                selector: Selector::Score,
            };
            rows.push((
                format!("moba prefill T{t} b1/{den}"),
                MobaPrefill::new(hq, hkv, t, d, cfg, scale, bf16)?.cost(),
            ));
        }
        let s = SnapKvSettings {
            capacity: t / 8,
            window: 64,
            kernel: 5,
            pooling: Pooling::Avg,
            gqa: GqaMode::Mean,
            selector: Selector::Score,
            scale,
        };
        rows.push((format!("snapkv compress T{t} w64"), SnapKvCompress::new(hq, hkv, t, d, s, bf16)?.cost()));
    }
    println!("| kernel | GFLOP | MB moved | bytes floor | FLOP floor |");
    println!("|---|---|---|---|---|");
    for (name, c) in rows {
        let tb = c.bytes as f64 / bw;
        let tf = c.flops as f64 / peak;
        println!(
            "| {name} | {:.3} | {:.2} | {:.1} µs | {:.1} µs |",
            c.flops as f64 / 1e9,
            c.bytes as f64 / 1e6,
            tb * 1e6,
            tf * 1e6
        );
    }
    Ok(())
}
