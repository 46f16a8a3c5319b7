//! `kvsparse-reference`: the oracle.
//!
//! Naive, obviously-correct Rust for every op of kvsparse, accumulating in `f64`, with no
//! dependency on the rest of the crate. Every GPU kernel (WGSL and CUDA) and the CPU backend are
//! judged against these functions; the golden files in `tests/golden` pin them.
//!
//! Conventions (all ops):
//! * tensors are row-major slices; attention tensors are `[heads, seq, dim]`;
//! * GQA by contiguous groups: `G = q_heads / kv_heads`, query head `h` reads kv head `h / G`;
//! * blocks: `NB = ceil(T / bs)`, block `b` covers tokens `[b*bs, min((b+1)*bs, T))`;
//! * top-k order: descending score, ties to the lower index; sets are returned ascending;
//! * `lse` is the natural-log log-sum-exp of the *scaled* logits over the keys attended.
//!
//! Functions assume valid shapes (the main crate validates and returns typed errors); they
//! panic on inconsistent slice lengths, which is a bug in the caller.

mod attention;
mod blocks;
mod decay;
mod hit_rate;
mod moba;
mod quest;
mod random;
mod select;
mod snapkv;

pub use attention::{attention_dense, attention_sparse, Attention};
pub use blocks::{block_mean, block_minmax, moba_gate, quest_scores};
pub use decay::{decay_scan, decay_step, ratplus_kv, ratplus_step, rope, RatplusKv, RatplusStep};
pub use hit_rate::{hit_rate, HitRate};
pub use moba::{moba_prefill, moba_select, MobaPrefill};
pub use quest::{quest_decode, quest_select, QuestDecode};
pub use random::{pcg_hash, random_key, random_select, RandomSelect};
pub use select::{select_forced_topk, topk, SelectConfig, Selector};
pub use snapkv::{snapkv_compress, snapkv_scores, GqaMode, Pooling, SnapKvCompress, SnapKvConfig};

/// Number of blocks of `block_size` tokens needed to cover `seq` tokens: `ceil(seq / block_size)`.
pub fn num_blocks(seq: usize, block_size: usize) -> usize {
    seq.div_ceil(block_size)
}
