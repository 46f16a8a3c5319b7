// cuda/timing.cu: what the graph timer (`Cuda::with_graph_timing`) runs before a timed replay.
// No WGSL twin: wgpu times its passes with timestamp queries and has no such step.
//
// Prepended: common.cuh only (no parameters struct, no storage dtype). Entry points:
//   timing_flush_l2 (buf[n] 16-byte words, n, sink[1] u32)
//                   reads every word of a buffer larger than L2, so that the timed work finds
//                   none of its own data there; loads only (a write-based flush would leave
//                   dirty lines for the timed work to write back); sink is written only if the
//                   xor of everything read is a value random data never gives, so the loads
//                   stay.
//   timing_spin     (cycles) one thread spins `cycles` SM clocks: while it runs the host
//                   enqueues the timed work, which then starts the moment the start event fires.

extern "C" __global__ void timing_flush_l2(const uint4* __restrict__ buf, const unsigned long long n,
                                           u32* __restrict__ sink) {
    u32 acc = 0u;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const uint4 w = buf[i];
        acc ^= w.x ^ w.y ^ w.z ^ w.w;
    }
    if (acc == 0x9e3779b9u && threadIdx.x == 0) sink[0] = acc;
}

extern "C" __global__ void timing_spin(const unsigned long long cycles) {
    const long long t0 = clock64();
    while ((unsigned long long)(clock64() - t0) < cycles) {
    }
}
