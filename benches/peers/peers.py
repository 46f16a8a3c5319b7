"""Peer baselines, timed on the GPU machine in the same run as kvsparse's report.

Times (CUDA events, median of repeats after warm-up, fresh random inputs, never zeros):
  copy            device-to-device copy of 1 GiB (read + write bytes / time = the bandwidth ceiling)
  sdpa_decode     PyTorch SDPA, one query token, GQA (32 q / 8 kv heads, D 128, bf16), context T
  sdpa_prefill    PyTorch SDPA causal prefill (flash), T x T
  topk            torch.topk rows x n, k
  chunk_hgrn      fla-core's chunk_hgrn (Triton), the same recurrence through log-gates, B1 T32K C4096 f32
The *_graph rows time the same call the way `kvsparse report --timer graph` times ours: captured
once as a CUDA graph, L2 emptied by reading four times its size, a 10 us GPU sleep while the host
issues the replay, then one replay between the events (no host launch cost, cold L2).
Writes JSON to argv[1] (default peers.json) and prints one line per row.
"""

import json
import math
import sys

import torch
import torch.nn.functional as F

HQ, HKV, D = 32, 8, 128
dev = "cuda"


def timed(fn, repeats=50, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e-3)
    times.sort()
    return times[len(times) // 2]


def timed_graph(fn, repeats=50):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graph asks
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    flush = torch.ones(torch.cuda.get_device_properties(0).L2_cache_size, device=dev)  # 4 B each: 4x L2
    sleep_cycles = 20000  # about 10 us at the H100's / H200's ~2 GHz SM clock
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        flush.sum()
        torch.cuda._sleep(sleep_cycles)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e-3)
    times.sort()
    return times[len(times) // 2]


rows = []


def add(name, shape, seconds, **extra):
    rows.append(dict(peer=name, shape=shape, median_s=seconds, **extra))
    rate = ", ".join(f"{k} {v:.4g}" for k, v in extra.items())
    print(f"{name:<14} {shape:<28} {seconds * 1e6:10.1f} us  {rate}", flush=True)


def main(out):
    torch.manual_seed(0)
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    n = 1 << 28
    src, dst = torch.randn(n, device=dev), torch.empty(n, device=dev)
    t = timed(lambda: dst.copy_(src), repeats=20)
    add("copy", "1 GiB f32", t, gbps=2 * n * 4 / t / 1e9)
    del src, dst

    for T in (4096, 32768, 131072):
        q = torch.randn(1, HQ, 1, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16)
        t = timed(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        nbytes = 2 * HKV * T * D * 2 + 2 * HQ * D * 2
        add("sdpa_decode", f"T{T}", t, gbps=nbytes / t / 1e9)
        t = timed_graph(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        add("sdpa_decode_graph", f"T{T}", t, gbps=nbytes / t / 1e9)
        del q, k, v

    for T in (4096, 32768):
        q = torch.randn(1, HQ, T, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16)
        t = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), repeats=10)
        flops = 4 * HQ * D * T * (T + 1) / 2
        add("sdpa_prefill", f"T{T}", t, tflops=flops / t / 1e12)
        del q, k, v

    for r, n, k in ((8, 2048, 128), (32, 2048, 128), (1, 131072, 2048), (8, 131072, 8192), (8, 131072, 32768)):
        s = torch.randn(r, n, device=dev)
        t = timed(lambda: torch.topk(s, k, dim=-1))
        add("topk", f"{r}x{n} k{k}", t)
        t = timed_graph(lambda: torch.topk(s, k, dim=-1))
        add("topk_graph", f"{r}x{n} k{k}", t)

    try:
        from fla.ops.hgrn import chunk_hgrn

        T, C = 32768, 4096
        x = torch.randn(1, T, C, device=dev)
        g = F.logsigmoid(torch.randn(1, T, C, device=dev))
        # chunk_hgrn computes h_t = exp(g_t) * h_{t-1} + x_t; feed x = (1 - gate) * x for the decay form.
        t = timed(lambda: chunk_hgrn(x, g), repeats=20)
        add("chunk_hgrn", f"B1 T{T} C{C} f32", t, gbps=3 * T * C * 4 / t / 1e9)
    except Exception as e:  # fla-core missing or failing: say so, do not hide it
        print("chunk_hgrn skipped:", repr(e), flush=True)

    with open(out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "peers.json")
