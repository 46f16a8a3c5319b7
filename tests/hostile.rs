//! Hostile inputs: every public entry point with bad input gets a typed error that names the
//! argument (or a documented result), never a panic. Runs on every backend available here.

mod common;

use common::{generate, Rng, OPS};
use kvsparse::golden::Case;
use kvsparse::ops::*;
use kvsparse::{Backend, Cpu, DType, DeviceBuffer, Error, HostData};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Tally of the catalogue: inputs tried and what each gave.
#[derive(Default, Debug)]
struct Tally {
    tried: usize,
    panics: Vec<String>,
    wrong: Vec<String>,
}

impl Tally {
    /// Runs `f`, which must return `Err` whose message contains `needle`.
    fn expect_err<T>(&mut self, what: &str, needle: &str, f: impl FnOnce() -> kvsparse::Result<T>) {
        self.tried += 1;
        match catch_unwind(AssertUnwindSafe(f)) {
            Err(_) => self.panics.push(what.to_string()),
            Ok(Ok(_)) => self.wrong.push(format!("{what}: accepted")),
            Ok(Err(e)) if !e.to_string().contains(needle) => {
                self.wrong.push(format!("{what}: error does not name `{needle}`: {e}"))
            }
            Ok(Err(_)) => {}
        }
    }
    /// Runs `f`, which may succeed or fail with a typed error, but must not panic.
    fn expect_no_panic<T>(&mut self, what: &str, f: impl FnOnce() -> kvsparse::Result<T>) {
        self.tried += 1;
        if catch_unwind(AssertUnwindSafe(f)).is_err() {
            self.panics.push(what.to_string());
        }
    }
    fn finish(self, name: &str) {
        println!(
            "{name}: {} inputs tried, {} panics, {} wrong answers",
            self.tried,
            self.panics.len(),
            self.wrong.len()
        );
        assert!(self.panics.is_empty(), "{name}: panics on {:?}", self.panics);
        assert!(self.wrong.is_empty(), "{name}: {:#?}", self.wrong);
    }
}

fn sel(block_size: usize, n_blocks: usize, n_local: usize) -> SelectConfig {
    SelectConfig { block_size, n_blocks, force_first: true, n_local, selector: Selector::Score }
}

fn snap(capacity: usize, window: usize, kernel: usize, scale: f32) -> SnapKvSettings {
    SnapKvSettings {
        capacity,
        window,
        kernel,
        pooling: Pooling::Avg,
        gqa: GqaMode::Mean,
        selector: Selector::Score,
        scale,
    }
}

#[test]
fn problems_reject_bad_arguments() {
    let f = DType::F32;
    let mut t = Tally::default();
    t.expect_err("pcg n=0", "`n`", || PcgHash::new(0));
    t.expect_err("random_key rows=0", "`rows`", || RandomKey::new(0, 4, 1));
    t.expect_err("random_select k=0", "`k`", || RandomSelect::new(2, 4, 0, 1));
    t.expect_err("topk k=0", "`k`", || TopK::new(1, 4, 0));
    t.expect_err("topk n=0", "`n`", || TopK::new(1, 0, 4));
    t.expect_err("topk huge", "elements", || TopK::new(1 << 20, 1 << 20, 4));
    t.expect_err("scan seq=0", "`seq`", || DecayScan::new(1, 0, 4, f));
    t.expect_err("scan int dtype", "`dtype`", || DecayScan::new(1, 4, 4, DType::I32));
    t.expect_err("step lanes=0", "`lanes`", || DecayStep::new(0, f));
    t.expect_err("rope odd dim", "`dim`", || Rope::new(1, 4, 7, 10000.0, f));
    t.expect_err("rope base nan", "`base`", || Rope::new(1, 4, 8, f32::NAN, f));
    t.expect_err("rope base 1", "`base`", || Rope::new(1, 4, 8, 1.0, f));
    t.expect_err("ratplus_kv odd dim", "`dim`", || RatplusKv::new(1, 4, 5, 10000.0, f));
    t.expect_err("ratplus_step pos", "`pos`", || RatplusStep::new(1, 8, 10000.0, u32::MAX, f));
    let bs = |block_size| BlockShape { heads: 2, seq: 10, dim: 4, block_size, dtype: f };
    t.expect_err("block_minmax block 0", "`block_size`", || BlockMinmax::new(bs(0)));
    t.expect_err("block_mean block 0", "`block_size`", || BlockMean::new(bs(0)));
    t.expect_err("quest_scores gqa", "`q_heads`", || QuestScores::new(3, 2, 4, 8, f));
    t.expect_err("quest_scores kv 0", "`kv_heads`", || QuestScores::new(4, 0, 4, 8, f));
    t.expect_err("quest gqa", "`q_heads`", || QuestDecode::new(6, 4, 100, 8, sel(16, 2, 1), 0.3, f));
    t.expect_err("quest block 0", "`block_size`", || QuestDecode::new(4, 2, 100, 8, sel(0, 2, 1), 0.3, f));
    t.expect_err("quest budget 0", "`n_blocks`", || QuestDecode::new(4, 2, 100, 8, sel(16, 0, 1), 0.3, f));
    t.expect_err("quest seq 0", "`seq`", || QuestDecode::new(4, 2, 0, 8, sel(16, 2, 1), 0.3, f));
    t.expect_err("quest scale nan", "`scale`", || QuestDecode::new(4, 2, 100, 8, sel(16, 2, 1), f32::NAN, f));
    t.expect_err("quest scale 0", "`scale`", || QuestDecode::new(4, 2, 100, 8, sel(16, 2, 1), 0.0, f));
    t.expect_err("quest scale inf", "`scale`", || QuestDecode::new(4, 2, 100, 8, sel(16, 2, 1), f32::INFINITY, f));
    t.expect_err("moba n_local 0", "`n_local`", || MobaPrefill::new(4, 2, 100, 8, sel(16, 2, 0), 0.3, f));
    t.expect_err("moba dim 0", "`dim`", || MobaPrefill::new(4, 2, 100, 0, sel(16, 2, 1), 0.3, f));
    t.expect_err("snapkv capacity <= window", "`capacity`", || {
        SnapKvCompress::new(2, 1, 100, 8, snap(64, 64, 5, 0.3), f)
    });
    t.expect_err("snapkv even kernel", "`kernel`", || SnapKvCompress::new(2, 1, 100, 8, snap(80, 64, 4, 0.3), f));
    t.expect_err("snapkv kernel 0", "`kernel`", || SnapKvCompress::new(2, 1, 100, 8, snap(80, 64, 0, 0.3), f));
    t.expect_err("snapkv window 0", "`window`", || SnapKvCompress::new(2, 1, 100, 8, snap(80, 0, 5, 0.3), f));
    t.expect_err("snapkv gqa", "`q_heads`", || SnapKvCompress::new(3, 2, 100, 8, snap(80, 64, 5, 0.3), f));
    t.expect_err("dense causal tq > tk", "`q_len`", || AttentionDense::new(2, 1, 10, 5, 8, true, 0.3, f));
    t.expect_err("dense gqa", "`q_heads`", || AttentionDense::new(2, 4, 1, 5, 8, false, 0.3, f));
    t.expect_err("dense f16 int", "`dtype`", || AttentionDense::new(2, 1, 1, 5, 8, false, 0.3, DType::U32));
    t.expect_err("sparse idx heads", "`idx_heads`", || AttentionSparse::new(4, 2, 10, 8, 3, 2, 0.3, f));
    t.expect_err("sparse n 0", "`n_idx`", || AttentionSparse::new(4, 2, 10, 8, 4, 0, 0.3, f));
    t.expect_err("hit_rate block 0", "`block_size`", || HitRate::new(2, 2, 2, 0));
    use kvsparse::methods::Budget;
    for bad in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        t.expect_err(&format!("budget fraction {bad}"), "fraction", || Budget::Fraction(bad).units(4096, 64));
    }
    t.expect_err("budget count 0", "count", || Budget::Count(0).units(4096, 64));
    t.finish("problems");
}

/// Wrong buffer lengths and dtypes for every op, on backend `b`: each gives `Error::Buffer`
/// naming the buffer.
fn buffers_are_checked<B: Backend>(b: &B) {
    let mut t = Tally::default();
    let mut r = Rng::new(99);
    for &name in OPS {
        let case = generate(name, DType::F32, &mut r);
        let specs = case.op.buffers();
        for (i, spec) in specs.iter().enumerate() {
            for (kind, dtype, len) in [
                ("length", spec.dtype, spec.len + 1),
                ("dtype", if spec.dtype == DType::I32 { DType::U32 } else { DType::I32 }, spec.len),
            ] {
                let what = format!("{} on {}: `{}` with wrong {kind}", case.op.name(), b.name(), spec.name);
                t.expect_err(&what, &format!("`{}`", spec.name), || {
                    let mut ins = Vec::new();
                    let mut outs = Vec::new();
                    for (j, s) in specs.iter().enumerate() {
                        let (d, n) = if i == j { (dtype, len) } else { (s.dtype, s.len) };
                        let buf = if s.output {
                            b.alloc(d, n)?
                        } else if i == j {
                            b.upload(&HostData::poison(d, n))?
                        } else {
                            b.upload(&case.inputs[j])?
                        };
                        if s.output {
                            outs.push(buf)
                        } else {
                            ins.push(buf)
                        }
                    }
                    let refs: Vec<&B::Buffer> = ins.iter().collect();
                    case.op.run(b, &refs, &mut outs)
                });
            }
        }
    }
    // Buffers of another op's size, and ops built by hand with invalid fields.
    let bad = TopK { rows: 1, n: 4, k: 0 };
    t.expect_err("topk built by hand with k = 0", "`k`", || {
        let s = b.upload(&HostData::F32(vec![1.0; 4]))?;
        let mut i = b.alloc(DType::I32, 0)?;
        b.topk(&bad, &s, &mut i)
    });
    for len in [usize::MAX / 2, 1usize << 50] {
        t.expect_err(&format!("alloc of {len} f32 on {}", b.name()), "too large", || b.alloc(DType::F32, len));
    }
    // Quest switched to one selection per kv head with the per-head outputs still in hand: the
    // selection and ranking outputs are [Hkv, ...] now, and the per-head ones must be refused.
    let per_head = QuestDecode::new(8, 2, 256, 16, sel(16, 4, 1), 0.25, DType::F32).unwrap();
    let group = per_head.clone().with_group_selection();
    for (i, name) in [(0usize, "selected"), (3, "scores")] {
        t.expect_err(&format!("quest gqa=mean with a per-head `{name}` on {}", b.name()), &format!("`{name}`"), || {
            let q = b.upload(&HostData::F32(vec![0.5; 8 * 16]))?;
            let kv = b.upload(&HostData::F32(vec![0.25; 2 * 256 * 16]))?;
            let [mut sel_o, mut out, mut lse, mut rank] = group.alloc_outputs(b)?;
            let [ph_sel, _, _, ph_rank] = per_head.alloc_outputs(b)?;
            if i == 0 {
                sel_o = ph_sel;
            } else {
                rank = ph_rank;
            }
            b.quest_decode(&group, &q, &kv, &kv, None, &mut sel_o, &mut out, &mut lse, &mut rank)
        });
    }
    t.finish(&format!("buffers/{}", b.name()));
}

/// NaN and infinity in q/k/v propagate (documented), never panic or read out of bounds;
/// out-of-range sparse indices are padding on GPUs and an error on the CPU.
fn non_finite_inputs<B: Backend>(b: &B) {
    let mut t = Tally::default();
    let mut r = Rng::new(5);
    for name in
        ["attention_dense", "attention_sparse", "quest_decode", "moba_prefill", "snapkv_compress", "decay_scan", "topk"]
    {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut case = generate(name, DType::F32, &mut r);
            for d in case.inputs.iter_mut() {
                if let HostData::F32(v) = d {
                    let n = v.len();
                    v[n / 2] = bad;
                }
            }
            t.expect_no_panic(&format!("{name} with {bad} on {}", b.name()), || common::run_on(b, &case));
        }
    }
    let op = AttentionSparse::new(2, 1, 8, 4, 2, 3, 0.5, DType::F32).unwrap();
    let q = b.upload(&HostData::F32(vec![0.1; 8])).unwrap();
    let kv = b.upload(&HostData::F32(vec![0.2; 32])).unwrap();
    for idx in [vec![0, 1, 8, 2, 3, 1000], vec![-5, 0, 1, i32::MIN, i32::MAX, 7]] {
        let what = format!("attention_sparse out-of-range idx {idx:?} on {}", b.name());
        let idx = b.upload(&HostData::I32(idx)).unwrap();
        let (mut o, mut l) = (b.alloc(DType::F32, 8).unwrap(), b.alloc(DType::F32, 2).unwrap());
        if b.name() == "cpu" {
            t.expect_err(&what, "`idx`", || b.attention_sparse(&op, &q, &kv, &kv, &idx, &mut o, &mut l));
        } else {
            t.expect_no_panic(&what, || b.attention_sparse(&op, &q, &kv, &kv, &idx, &mut o, &mut l));
        }
    }
    t.finish(&format!("non-finite/{}", b.name()));
}

macro_rules! on_every_backend {
    ($check:ident, $cpu:ident, $wgpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() {
            $check(&Cpu::new());
        }
        #[cfg(feature = "wgpu")]
        #[test]
        fn $wgpu() {
            match kvsparse::Wgpu::new() {
                Ok(b) => $check(&b),
                Err(e) => eprintln!("wgpu unavailable, skipped: {e}"),
            }
        }
        #[cfg(feature = "cuda")]
        #[test]
        fn $cuda() {
            match kvsparse::Cuda::new() {
                Ok(b) => $check(&b),
                Err(e) => eprintln!("cuda unavailable, skipped: {e}"),
            }
        }
    };
}

on_every_backend!(buffers_are_checked, buffers_cpu, buffers_wgpu, buffers_cuda);
on_every_backend!(non_finite_inputs, non_finite_cpu, non_finite_wgpu, non_finite_cuda);

/// Malformed golden files: truncated at every length, header lengths that lie, wrong dtypes,
/// missing tensors or metadata, shapes that do not match the bytes. Always `Error::File` naming
/// the file, never a panic, never an allocation sized by the header.
#[test]
fn malformed_golden_files() {
    let dir = std::env::temp_dir().join(format!("kvsparse-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = common::golden_dir().join("p03_topk_random.safetensors");
    let good = std::fs::read(&src).unwrap();
    let mut t = Tally::default();
    let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in (0..good.len()).step_by(7) {
        variants.push((format!("truncated at {cut}"), good[..cut].to_vec()));
    }
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(good[8..8 + header_len].to_vec()).unwrap();
    let with_header = |h: &str| {
        let mut v = (h.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(&good[8 + header_len..]);
        v
    };
    for lie in [u64::MAX, u64::MAX / 2, 1 << 40, (header_len + 1) as u64, 1] {
        let mut v = good.clone();
        v[..8].copy_from_slice(&lie.to_le_bytes());
        variants.push((format!("header length {lie}"), v));
    }
    variants.push(("wrong dtype".into(), with_header(&header.replacen("\"F32\"", "\"F64\"", 1))));
    variants.push(("no metadata".into(), with_header(&header.replacen("__metadata__", "__other__", 1))));
    variants.push(("no op".into(), with_header(&header.replacen("\"op\"", "\"oq\"", 1))));
    variants.push(("unknown op".into(), with_header(&header.replacen("\"topk\"", "\"tokp\"", 1))));
    variants.push(("missing input".into(), with_header(&header.replacen("\"scores\"", "\"scorez\"", 1))));
    variants.push(("bad k".into(), with_header(&header.replacen("\"k\":\"7\"", "\"k\":\"seven\"", 1))));
    variants.push(("shape lie".into(), with_header(&header.replacen("[4,50]", "[4,51]", 1))));
    variants.push(("garbage".into(), vec![0xff; 64]));
    variants.push(("empty".into(), Vec::new()));
    for (i, (what, bytes)) in variants.iter().enumerate() {
        let path = dir.join(format!("case{i}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        let name = path.display().to_string();
        t.tried += 1;
        match catch_unwind(|| Case::load(&path).and_then(|c| c.op().map(|_| c)).and_then(|c| c.run(&Cpu::new()))) {
            Err(_) => t.panics.push(what.clone()),
            Ok(Ok(o)) if o.passed() => t.wrong.push(format!("{what}: accepted and passed")),
            Ok(Ok(_)) => {} // a valid file whose numbers no longer match: a failing case, not a crash
            Ok(Err(Error::File { path, .. })) if path == name => {}
            Ok(Err(e)) => t.wrong.push(format!("{what}: not a file error naming the file: {e}")),
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    t.finish("golden loader");
}

#[test]
fn buffer_lengths_are_what_devicebuffer_says() {
    let cpu = Cpu::new();
    let b = cpu.alloc(DType::BF16, 5).unwrap();
    assert_eq!((b.len(), b.dtype()), (5, DType::BF16));
}
