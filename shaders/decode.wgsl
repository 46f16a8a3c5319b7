// decode.wgsl: decode attention of the attention ops (attention_dense with one query,
// attention_sparse, quest_decode's blocks) on the split-K kernel of splitk.wgsl.
// Prepended: AttentionParams, spec prelude (see splitk.wgsl), common.wgsl, splitk.wgsl.
//
// decode_dense / decode_sparse / decode_blocks: one workgroup per (unit of GROUP query heads,
//   split); dense = slots 0..kv_len, sparse = the unit's index row, blocks = the head's n_idx
//   selected blocks. decode_merge: one workgroup per 32 dims of a query head (splitk.wgsl's
//   merge), when p.splits > 1.
// Bindings: as splitk.wgsl, with rows = Hq, kv rows = Hkv, stride = live = kv_len.

override WG_SIZE: u32 = 128u;

@group(0) @binding(0) var<uniform> p: AttentionParams;

fn job() -> DecodeJob {
    return DecodeJob(
        p.q_heads,
        p.q_heads / p.kv_heads,
        p.kv_len,
        p.kv_len,
        p.dim,
        p.scale,
        p.n_idx,
        p.block_size,
        p.splits,
        p.idx_heads != p.q_heads,
    );
}

@compute @workgroup_size(WG_SIZE)
fn decode_dense(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    decode(job(), MODE_DENSE, flat_group(wid, nwg), lid);
}

@compute @workgroup_size(WG_SIZE)
fn decode_sparse(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    decode(job(), MODE_SPARSE, flat_group(wid, nwg), lid);
}

@compute @workgroup_size(WG_SIZE)
fn decode_blocks(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    decode(job(), MODE_BLOCKS, flat_group(wid, nwg), lid);
}

@compute @workgroup_size(WG_SIZE)
fn decode_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    merge(job(), flat_group(wid, nwg), lid);
}
