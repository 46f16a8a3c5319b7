// copy.wgsl: Backend::copy_buffer on wgpu as a compute pass, so that the bytes go through the
// shader cores as every kernel's do (a buffer-to-buffer copy may run on a copy engine, well
// below that rate: 849 GB/s against CUDA's 4.2 TB/s on the H200, BENCHMARKS run 22), and the
// report's copy bandwidth is the ceiling the WGSL kernels can reach.
// Prepended: CopyParams, spec prelude, common.wgsl.
//
// copy_words: one invocation per 16-byte word, dst[i] = src[i] for i < p.words.
// Bindings: 1 src (read), 2 dst (written), any dtype: the words are copied as bits.

override WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> p: CopyParams;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(WG_SIZE)
fn copy_words(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_group(wid, nwg) * WG_SIZE + lid;
    if (i < p.words) {
        dst[i] = src[i];
    }
}
