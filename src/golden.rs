//! Golden cases: `.safetensors` files with inputs, expected outputs and metadata (op,
//! parameters, `atol`/`rtol`), computed by an independent float64 reference. See
//! `tests/golden/README.md` for the format.
//!
//! Loading never panics and never trusts the header: a malformed file gives
//! [`Error::File`] naming it and what is wrong.

use crate::ops::*;
use crate::{Backend, DType, Error, HostData, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One tensor of a golden file.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions as stored (row-major); their product is `data.len()`.
    pub shape: Vec<usize>,
    /// The elements: f32, i32 or u32 (the only dtypes golden files use).
    pub data: HostData,
}

/// A parsed golden case.
#[derive(Clone, Debug)]
pub struct Case {
    /// The file it was read from (named in errors).
    pub path: PathBuf,
    /// `op` metadata: which op this case exercises.
    pub op_name: String,
    /// The whole `__metadata__` map: `op`, the op's parameters, `atol`, `rtol`, ...
    pub meta: HashMap<String, String>,
    /// Inputs and expected outputs, by the buffer names of [`Op::buffers`].
    pub tensors: HashMap<String, Tensor>,
    /// Absolute tolerance of float outputs: pass if `|got - ref| <= atol + rtol * |ref|`.
    pub atol: f64,
    /// Relative tolerance of float outputs (see `atol`); integer outputs must match exactly.
    pub rtol: f64,
}

/// Files `*.safetensors` in `dir`, sorted by name.
pub fn case_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let err = |reason: String| Error::File { path: dir.display().to_string(), reason };
    let entries = std::fs::read_dir(dir).map_err(|e| err(format!("cannot read directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err("no .safetensors files".into()));
    }
    Ok(files)
}

impl Case {
    /// Reads and checks one golden file.
    ///
    /// ```no_run
    /// let case = kvsparse::golden::Case::load("tests/golden/p03_topk_random.safetensors".as_ref())?;
    /// assert_eq!(case.op_name, "topk");
    /// # Ok::<(), kvsparse::Error>(())
    /// ```
    pub fn load(path: &Path) -> Result<Case> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::File { path: path.display().to_string(), reason: format!("cannot read: {e}") })?;
        Case::from_bytes(path, &bytes)
    }

    /// Parses a golden case from the bytes of a file (`path` only names it in errors). The
    /// header is checked against the byte length before anything is allocated from it.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Case> {
        let err = |reason: String| Error::File { path: path.display().to_string(), reason };
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
        let meta = header.metadata().clone().ok_or_else(|| err("no __metadata__ map".into()))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::I32 => DType::I32,
                safetensors::Dtype::U32 => DType::U32,
                other => return Err(err(format!("tensor `{name}` has dtype {other:?}; only F32, I32, U32 occur"))),
            };
            let shape = view.shape().to_vec();
            let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if count.and_then(|c| c.checked_mul(4)) != Some(view.data().len()) {
                return Err(err(format!(
                    "tensor `{name}`: shape {shape:?} does not match {} bytes",
                    view.data().len()
                )));
            }
            let data = HostData::from_bytes(dtype, view.data())
                .ok_or_else(|| err(format!("tensor `{name}`: byte length not a multiple of 4")))?;
            tensors.insert(name, Tensor { shape, data });
        }
        let op_name = meta.get("op").cloned().ok_or_else(|| err("metadata has no `op`".into()))?;
        let float = |key: &str| -> Result<f64> {
            let v = meta.get(key).ok_or_else(|| err(format!("metadata has no `{key}`")))?;
            v.parse::<f64>().map_err(|_| err(format!("metadata `{key}` = {v:?} is not a number")))
        };
        let (atol, rtol) = (float("atol")?, float("rtol")?);
        Ok(Case { path: path.to_path_buf(), op_name, meta, tensors, atol, rtol })
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::File { path: self.path.display().to_string(), reason: reason.into() }
    }

    fn meta_str(&self, key: &str) -> Result<&str> {
        self.meta.get(key).map(String::as_str).ok_or_else(|| self.err(format!("metadata has no `{key}`")))
    }
    fn meta_usize(&self, key: &str) -> Result<usize> {
        let v = self.meta_str(key)?;
        v.parse().map_err(|_| self.err(format!("metadata `{key}` = {v:?} is not a non-negative integer")))
    }
    fn meta_u32(&self, key: &str) -> Result<u32> {
        let v = self.meta_str(key)?;
        v.parse().map_err(|_| self.err(format!("metadata `{key}` = {v:?} is not a u32")))
    }
    fn meta_f32(&self, key: &str) -> Result<f32> {
        let v = self.meta_str(key)?;
        v.parse::<f64>().map(|x| x as f32).map_err(|_| self.err(format!("metadata `{key}` = {v:?} is not a number")))
    }
    fn meta_bool(&self, key: &str) -> Result<bool> {
        match self.meta_str(key)? {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            v => Err(self.err(format!("metadata `{key}` = {v:?} is not a boolean"))),
        }
    }
    /// The shape of tensor `name`, checked to have `rank` dimensions.
    fn shape(&self, name: &str, rank: usize) -> Result<&[usize]> {
        let t = self.tensors.get(name).ok_or_else(|| self.err(format!("missing tensor `{name}`")))?;
        if t.shape.len() != rank {
            return Err(self.err(format!("tensor `{name}` has shape {:?}, expected rank {rank}", t.shape)));
        }
        Ok(&t.shape)
    }
    fn selector(&self) -> Result<Selector> {
        match self.meta_str("selector")? {
            "score" => Ok(Selector::Score),
            "random" => Ok(Selector::Random { seed: self.meta_u32("seed")? }),
            v => Err(self.err(format!("metadata `selector` = {v:?}, expected score or random"))),
        }
    }
    fn select_config(&self) -> Result<SelectConfig> {
        Ok(SelectConfig {
            block_size: self.meta_usize("block_size")?,
            n_blocks: self.meta_usize("n_blocks")?,
            force_first: self.meta_bool("force_first")?,
            n_local: self.meta_usize("n_local")?,
            selector: self.selector()?,
        })
    }

    /// Builds the op this case describes (all golden cases store f32).
    pub fn op(&self) -> Result<AnyOp> {
        let f = DType::F32;
        let op = match self.op_name.as_str() {
            "pcg_hash" => AnyOp::PcgHash(PcgHash::new(self.shape("v", 1)?[0])?),
            "random_key" => AnyOp::RandomKey(RandomKey::new(
                self.shape("rows", 1)?[0],
                self.shape("idx", 1)?[0],
                self.meta_u32("seed")?,
            )?),
            "random_select" => {
                let s = self.shape("cand", 2)?;
                AnyOp::RandomSelect(RandomSelect::new(s[0], s[1], self.meta_usize("k")?, self.meta_u32("seed")?)?)
            }
            "topk" => {
                let s = self.shape("scores", 2)?;
                AnyOp::TopK(TopK::new(s[0], s[1], self.meta_usize("k")?)?)
            }
            "decay_scan" => {
                let s = self.shape("x", 2)?;
                AnyOp::DecayScan(DecayScan::new(1, s[0], s[1], f)?)
            }
            "decay_step" => AnyOp::DecayStep(DecayStep::new(self.shape("x", 1)?[0], f)?),
            "rope" => {
                let s = self.shape("x", 3)?;
                AnyOp::Rope(Rope::new(s[0], s[1], s[2], self.meta_f32("base")?, f)?)
            }
            "ratplus_kv" => {
                let s = self.shape("k", 3)?;
                AnyOp::RatplusKv(RatplusKv::new(s[0], s[1], s[2], self.meta_f32("base")?, f)?)
            }
            "ratplus_step" => {
                let s = self.shape("k", 2)?;
                AnyOp::RatplusStep(RatplusStep::new(s[0], s[1], self.meta_f32("base")?, self.meta_u32("pos")?, f)?)
            }
            "block_minmax" | "block_mean" => {
                let s = self.shape("k", 3)?;
                let shape = BlockShape {
                    heads: s[0],
                    seq: s[1],
                    dim: s[2],
                    block_size: self.meta_usize("block_size")?,
                    dtype: f,
                };
                if self.op_name == "block_minmax" {
                    AnyOp::BlockMinmax(BlockMinmax::new(shape)?)
                } else {
                    AnyOp::BlockMean(BlockMean::new(shape)?)
                }
            }
            "quest_scores" => {
                let q = self.shape("q", 2)?;
                let s = self.shape("kmin", 3)?;
                AnyOp::QuestScores(QuestScores::new(q[0], s[0], s[1], s[2], f)?)
            }
            "quest_decode" => {
                let q = self.shape("q", 2)?;
                let k = self.shape("k", 3)?;
                let scale = self.meta_f32("scale")?;
                AnyOp::QuestDecode(QuestDecode::new(q[0], k[0], k[1], k[2], self.select_config()?, scale, f)?)
            }
            "moba_prefill" => {
                let q = self.shape("q", 3)?;
                let k = self.shape("k", 3)?;
                let scale = self.meta_f32("scale")?;
                AnyOp::MobaPrefill(MobaPrefill::new(q[0], k[0], k[1], k[2], self.select_config()?, scale, f)?)
            }
            "snapkv_compress" => {
                let q = self.shape("q_obs", 3)?;
                let k = self.shape("k", 3)?;
                let settings = SnapKvSettings {
                    capacity: self.meta_usize("capacity")?,
                    window: self.meta_usize("window")?,
                    kernel: self.meta_usize("kernel")?,
                    pooling: match self.meta_str("pooling")? {
                        "avg" => Pooling::Avg,
                        "max" => Pooling::Max,
                        v => return Err(self.err(format!("metadata `pooling` = {v:?}, expected avg or max"))),
                    },
                    gqa: match self.meta_str("gqa")? {
                        "mean" => GqaMode::Mean,
                        "per_head" => GqaMode::PerHead,
                        v => return Err(self.err(format!("metadata `gqa` = {v:?}, expected mean or per_head"))),
                    },
                    selector: self.selector()?,
                    scale: self.meta_f32("scale")?,
                };
                AnyOp::SnapKvCompress(SnapKvCompress::new(q[0], k[0], k[1], k[2], settings, f)?)
            }
            "attention_dense" => {
                let q = self.shape("q", 3)?;
                let k = self.shape("k", 3)?;
                AnyOp::AttentionDense(AttentionDense::new(
                    q[0],
                    k[0],
                    q[1],
                    k[1],
                    k[2],
                    self.meta_bool("causal")?,
                    self.meta_f32("scale")?,
                    f,
                )?)
            }
            "attention_sparse" => {
                let q = self.shape("q", 2)?;
                let k = self.shape("k", 3)?;
                let idx = self.shape("idx", 2)?;
                AnyOp::AttentionSparse(AttentionSparse::new(
                    q[0],
                    k[0],
                    k[1],
                    k[2],
                    idx[0],
                    idx[1],
                    self.meta_f32("scale")?,
                    f,
                )?)
            }
            "hit_rate" => {
                let s = self.shape("sel", 3)?;
                AnyOp::HitRate(HitRate::new(s[0], s[1], s[2], self.meta_usize("block_size")?)?)
            }
            other => return Err(self.err(format!("unknown op `{other}`"))),
        };
        // A case whose tensors do not fit the op built from its shapes and metadata is malformed.
        for spec in op.buffers() {
            if let Some(t) = self.tensors.get(spec.name) {
                if t.data.len() != spec.len || t.data.dtype() != spec.dtype {
                    return Err(self.err(format!(
                        "tensor `{}` holds {} x {}, but {} needs {} x {}",
                        spec.name,
                        t.data.len(),
                        t.data.dtype(),
                        op.name(),
                        spec.len,
                        spec.dtype
                    )));
                }
            } else if !spec.output {
                return Err(self.err(format!("missing input tensor `{}`", spec.name)));
            }
        }
        Ok(op)
    }

    /// Runs the case on `b` and compares every stored output.
    pub fn run<B: Backend>(&self, b: &B) -> Result<Outcome> {
        let op = self.op()?;
        let specs = op.buffers();
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for s in &specs {
            if s.output {
                outputs.push(b.alloc(s.dtype, s.len)?);
            } else {
                inputs.push(b.upload(&self.tensors[s.name].data)?);
            }
        }
        let input_refs: Vec<&B::Buffer> = inputs.iter().collect();
        op.run(b, &input_refs, &mut outputs)?;
        let mut outcome = Outcome { max_abs_err: 0.0, failures: Vec::new(), compared: 0 };
        let out_specs = specs.iter().filter(|s| s.output);
        for (spec, buf) in out_specs.zip(&outputs) {
            let Some(expected) = self.tensors.get(spec.name) else { continue };
            let got = b.download(buf)?;
            outcome.compared += 1;
            compare(spec.name, &got, &expected.data, self.atol, self.rtol, &mut outcome);
        }
        let inputs: Vec<&str> = specs.iter().filter(|s| !s.output).map(|s| s.name).collect();
        for name in self.tensors.keys() {
            if !inputs.contains(&name.as_str()) && !specs.iter().any(|s| s.name == name) {
                outcome.failures.push(format!("stored output `{name}` is not produced by {}", op.name()));
            }
        }
        Ok(outcome)
    }
}

/// Result of one case on one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Largest `|got - expected|` over the float outputs.
    pub max_abs_err: f64,
    /// One line per output that failed.
    pub failures: Vec<String>,
    /// Outputs compared.
    pub compared: usize,
}

impl Outcome {
    /// Whether every stored output matched.
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.compared > 0
    }
}

fn compare(name: &str, got: &HostData, expected: &HostData, atol: f64, rtol: f64, outcome: &mut Outcome) {
    match (got.to_f32(), expected.to_f32()) {
        (Some(g), Some(e)) => {
            let mut bad = 0usize;
            let mut first = None;
            for (i, (&g, &e)) in g.iter().zip(&e).enumerate() {
                let (g64, e64) = (g as f64, e as f64);
                let ok = if e.is_finite() {
                    (g64 - e64).abs() <= atol + rtol * e64.abs()
                } else {
                    g == e || (g.is_nan() && e.is_nan())
                };
                if e.is_finite() && g.is_finite() {
                    outcome.max_abs_err = outcome.max_abs_err.max((g64 - e64).abs());
                }
                if !ok {
                    bad += 1;
                    first.get_or_insert((i, g, e));
                    if !g.is_finite() {
                        outcome.max_abs_err = f64::INFINITY;
                    }
                }
            }
            if let Some((i, g, e)) = first {
                outcome
                    .failures
                    .push(format!("`{name}`: {bad} of {} off; first at {i}: got {g}, expected {e}", got.len()));
            }
        }
        _ => {
            if got != expected {
                let diff = match (got, expected) {
                    (HostData::I32(a), HostData::I32(b)) => a.iter().zip(b).position(|(x, y)| x != y),
                    (HostData::U32(a), HostData::U32(b)) => a.iter().zip(b).position(|(x, y)| x != y),
                    _ => None,
                };
                outcome.failures.push(format!("`{name}`: integers differ (first at {diff:?})"));
            }
        }
    }
}
