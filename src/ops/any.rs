//! [`AnyOp`]: every problem struct behind one enum, so the CLI, the golden runner, the tests and
//! the benchmarks can drive any op on any backend by buffer name.

use super::*;
use crate::{Backend, Error, Result};

/// One op of any kind.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum AnyOp {
    PcgHash(PcgHash),
    RandomKey(RandomKey),
    RandomSelect(RandomSelect),
    TopK(TopK),
    DecayScan(DecayScan),
    DecayStep(DecayStep),
    Rope(Rope),
    RatplusKv(RatplusKv),
    RatplusStep(RatplusStep),
    BlockMinmax(BlockMinmax),
    BlockMean(BlockMean),
    QuestScores(QuestScores),
    QuestDecode(QuestDecode),
    MobaPrefill(MobaPrefill),
    SnapKvCompress(SnapKvCompress),
    AttentionDense(AttentionDense),
    AttentionSparse(AttentionSparse),
    HitRate(HitRate),
}

/// Applies `$body` to the inner problem struct, whatever the variant.
macro_rules! each {
    ($self:expr, $op:ident => $body:expr) => {
        match $self {
            AnyOp::PcgHash($op) => $body,
            AnyOp::RandomKey($op) => $body,
            AnyOp::RandomSelect($op) => $body,
            AnyOp::TopK($op) => $body,
            AnyOp::DecayScan($op) => $body,
            AnyOp::DecayStep($op) => $body,
            AnyOp::Rope($op) => $body,
            AnyOp::RatplusKv($op) => $body,
            AnyOp::RatplusStep($op) => $body,
            AnyOp::BlockMinmax($op) => $body,
            AnyOp::BlockMean($op) => $body,
            AnyOp::QuestScores($op) => $body,
            AnyOp::QuestDecode($op) => $body,
            AnyOp::MobaPrefill($op) => $body,
            AnyOp::SnapKvCompress($op) => $body,
            AnyOp::AttentionDense($op) => $body,
            AnyOp::AttentionSparse($op) => $body,
            AnyOp::HitRate($op) => $body,
        }
    };
}

/// The name of an op's `Op::NAME`, from a value.
fn name_of<O: Op>(_: &O) -> &'static str {
    O::NAME
}

impl AnyOp {
    /// The op's snake_case name.
    pub fn name(&self) -> &'static str {
        each!(self, op => name_of(op))
    }
    /// See [`Op::validate`].
    pub fn validate(&self) -> Result<()> {
        each!(self, op => op.validate())
    }
    /// See [`Op::buffers`].
    pub fn buffers(&self) -> Vec<BufferSpec> {
        each!(self, op => op.buffers())
    }
    /// See [`Op::cost`].
    pub fn cost(&self) -> Cost {
        each!(self, op => op.cost())
    }
    /// See [`Op::label`].
    pub fn label(&self) -> String {
        each!(self, op => op.label())
    }

    /// Runs the op on `b`: `inputs` and `outputs` in [`Op::buffers`] order.
    ///
    /// ```
    /// use kvsparse::{ops::{AnyOp, PcgHash}, Backend, Cpu, DType, HostData};
    /// let cpu = Cpu::new();
    /// let op = AnyOp::PcgHash(PcgHash::new(1)?);
    /// let v = cpu.upload(&HostData::U32(vec![0]))?;
    /// let mut outs = vec![cpu.alloc(DType::U32, 1)?];
    /// op.run(&cpu, &[&v], &mut outs)?;
    /// assert_eq!(cpu.download(&outs[0])?, HostData::U32(vec![129708002]));
    /// # Ok::<(), kvsparse::Error>(())
    /// ```
    pub fn run<B: Backend>(&self, b: &B, inputs: &[&B::Buffer], outputs: &mut [B::Buffer]) -> Result<()> {
        let specs = self.buffers();
        let n_in = specs.iter().filter(|s| !s.output).count();
        if inputs.len() != n_in || outputs.len() != specs.len() - n_in {
            return Err(Error::invalid(
                self.name(),
                "buffers",
                format!(
                    "{} inputs and {} outputs, got {} and {}",
                    n_in,
                    specs.len() - n_in,
                    inputs.len(),
                    outputs.len()
                ),
            ));
        }
        let arity = || Error::invalid(self.name(), "buffers", "the op's buffer list");
        macro_rules! call {
            ($method:ident, $op:expr, [$($i:ident),*], [$($o:ident),*]) => {{
                let [$($i),*] = inputs else { return Err(arity()) };
                let [$($o),*] = outputs else { return Err(arity()) };
                b.$method($op, $($i,)* $($o),*)
            }};
        }
        match self {
            AnyOp::PcgHash(op) => call!(pcg_hash, op, [v], [h]),
            AnyOp::RandomKey(op) => call!(random_key, op, [rows, idx], [keys]),
            AnyOp::RandomSelect(op) => call!(random_select, op, [rows, cand], [keys, sel]),
            AnyOp::TopK(op) => call!(topk, op, [s], [idx]),
            AnyOp::DecayScan(op) => call!(decay_scan, op, [x, g, h0], [y]),
            AnyOp::DecayStep(op) => call!(decay_step, op, [x, g, h], [hn]),
            AnyOp::Rope(op) => call!(rope, op, [x, pos], [y]),
            AnyOp::RatplusKv(op) => call!(ratplus_kv, op, [k, v, g], [kt, vt, kr]),
            AnyOp::RatplusStep(op) => call!(ratplus_step, op, [k, v, g, hk, hv], [hkn, hvn, kr]),
            AnyOp::BlockMinmax(op) => call!(block_minmax, op, [k], [lo, hi]),
            AnyOp::BlockMean(op) => call!(block_mean, op, [k], [m]),
            AnyOp::QuestScores(op) => call!(quest_scores, op, [q, lo, hi], [s]),
            AnyOp::QuestDecode(op) => {
                let [sel, out, lse, rank] = outputs else { return Err(arity()) };
                match inputs {
                    [q, k, v] => b.quest_decode(op, q, k, v, None, sel, out, lse, rank),
                    [q, k, v, lo, hi] => b.quest_decode(op, q, k, v, Some((lo, hi)), sel, out, lse, rank),
                    _ => Err(arity()),
                }
            }
            AnyOp::MobaPrefill(op) => {
                let [q, k, v] = inputs else { return Err(arity()) };
                match outputs {
                    [out, lse, sel] => b.moba_prefill(op, q, k, v, out, lse, sel, None),
                    [out, lse, sel, rank] => b.moba_prefill(op, q, k, v, out, lse, sel, Some(rank)),
                    _ => Err(arity()),
                }
            }
            AnyOp::SnapKvCompress(op) => match outputs {
                [kept] => {
                    let [q, k] = inputs else { return Err(arity()) };
                    b.snapkv_compress(op, q, k, kept, None)
                }
                [kept, rank] => {
                    let [q, k] = inputs else { return Err(arity()) };
                    b.snapkv_compress(op, q, k, kept, Some(rank))
                }
                _ => Err(arity()),
            },
            AnyOp::AttentionDense(op) => call!(attention_dense, op, [q, k, v], [out, lse]),
            AnyOp::AttentionSparse(op) => call!(attention_sparse, op, [q, k, v, idx], [out, lse]),
            AnyOp::HitRate(op) => call!(hit_rate, op, [sel, gold], [hit, rate]),
        }
    }
}
