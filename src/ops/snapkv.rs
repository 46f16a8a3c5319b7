//! SnapKV compression after prefill (SPEC §4).

use super::{fits, float_dtype, gqa, nonzero, scale, BufferSpec, Cost, GqaMode, Op, Pooling, Selector};
use crate::params::SnapKvParams;
use crate::{DType, Error, Result};

/// SnapKV's knobs (paper preset: window 64, kernel 5, avg pooling, group mean).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnapKvSettings {
    /// Tokens kept in total, the window included; must exceed `window`.
    pub capacity: usize,
    /// Observation window: the last `window` prompt queries.
    pub window: usize,
    /// Odd 1-D pooling kernel.
    pub kernel: usize,
    /// How the window scores are pooled along the key axis (avg counts the zero padding).
    pub pooling: Pooling,
    /// One kept set per kv head ([`GqaMode::Mean`]) or per query head ([`GqaMode::PerHead`]).
    pub gqa: GqaMode,
    /// Prefix tokens compete by pooled score, or by `random_key(seed, out_head, token)`.
    pub selector: Selector,
    /// Softmax scale of the window attention; finite and positive (usually 1/sqrt(D)).
    pub scale: f32,
}

impl SnapKvSettings {
    /// The same settings as the float64 reference takes them.
    pub fn reference_config(&self) -> kvsparse_reference::SnapKvConfig {
        kvsparse_reference::SnapKvConfig {
            capacity: self.capacity,
            window: self.window,
            kernel: self.kernel,
            pooling: self.pooling,
            gqa: self.gqa,
            selector: self.selector,
            scale: self.scale as f64,
        }
    }
}

/// SnapKV: score the prefix tokens `j < T - w` by the summed softmax attention of the window
/// queries `q_obs[Hq, min(w, T), D]` (positions `T-w..T-1`, causal, softmax over the full row),
/// pool along `j`, combine a GQA group (mean, or per query head), and keep the top
/// `capacity - w` prefix tokens plus the whole window. When `T <= capacity` nothing is evicted.
///
/// Outputs, in order: `kept[Hs, min(T, capacity)]` (i32, ascending) and, only when
/// `T > capacity`, the ranking `[Hs, T - w]`: `scores` (f32) or `keys` (u32);
/// `Hs = Hkv` for [`GqaMode::Mean`], `Hq` for [`GqaMode::PerHead`].
///
/// | buffer              | shape                 | dtype     | role |
/// |---------------------|-----------------------|-----------|------|
/// | `q_obs`             | `[Hq, min(w, T), D]`  | storage   | input: post-RoPE window queries |
/// | `k`                 | `[Hkv, T, D]`         | storage   | input: post-RoPE keys |
/// | `kept`              | `[Hs, min(T, capacity)]` | i32    | output: ascending token ids |
/// | `scores` / `keys`   | `[Hs, T - w]`         | f32 / u32 | output, only when `T > capacity` |
///
/// Cost: `4·Hq·min(w, T)·T·D` FLOPs when it compresses (0 otherwise); bytes of `k`, `q_obs` and
/// `kept`. Reference: `kvsparse_reference::snapkv_compress` (SPEC §4).
///
/// # Errors
/// [`crate::Error::InvalidArgument`] from [`SnapKvCompress::new`], or naming `buffers` when
/// the ranking is passed to [`crate::Backend::snapkv_compress`] with `T <= capacity` (or left
/// out with `T > capacity`); [`crate::Error::Buffer`] when a buffer's length or dtype does not
/// match the table.
///
/// ```
/// use kvsparse::ops::{GqaMode, Pooling, Selector, SnapKvCompress, SnapKvSettings};
/// use kvsparse::{Backend, Cpu, DType, HostData};
/// let cpu = Cpu::new();
/// let settings = SnapKvSettings {
///     capacity: 3, window: 1, kernel: 1, pooling: Pooling::Avg,
///     gqa: GqaMode::Mean, selector: Selector::Score, scale: 1.0,
/// };
/// let op = SnapKvCompress::new(1, 1, 4, 1, settings, DType::F32)?;
/// let q_obs = cpu.upload(&HostData::F32(vec![1.0]))?; // the query of token 3
/// let k = cpu.upload(&HostData::F32(vec![0.0, 5.0, 0.0, 0.0]))?;
/// let (mut kept, mut scores) = (cpu.alloc(DType::I32, 3)?, cpu.alloc(DType::F32, 3)?);
/// cpu.snapkv_compress(&op, &q_obs, &k, &mut kept, Some(&mut scores))?;
/// // Token 1 wins, token 0 beats token 2 on the tie (lower index), token 3 is the window.
/// assert_eq!(cpu.download(&kept)?, HostData::I32(vec![0, 1, 3]));
/// # Ok::<(), kvsparse::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SnapKvCompress {
    /// Query heads (`Hq`); a multiple of `kv_heads`.
    pub q_heads: usize,
    /// Key heads (`Hkv`); at least 1.
    pub kv_heads: usize,
    /// Prompt tokens (`T`); at least 1.
    pub seq: usize,
    /// Head dim (`D`); at least 1.
    pub dim: usize,
    /// Capacity, window, pooling, GQA mode, selector and scale.
    pub settings: SnapKvSettings,
    /// Storage dtype of `q_obs` and `k`: a float type.
    pub dtype: DType,
}

impl SnapKvCompress {
    /// Validates and builds the problem; errors: [`crate::Error::InvalidArgument`] naming the
    /// argument. Checks: `q_heads`, `kv_heads` at least 1 and `q_heads` a multiple of
    /// `kv_heads`; `seq`, `dim`, `window` at least 1; `scale` finite and positive; `dtype` a
    /// float type; `capacity > window`; `kernel` odd; `q_heads * seq * dim` and
    /// `kv_heads * seq * dim` within [`MAX_ELEMENTS`](crate::ops::MAX_ELEMENTS).
    pub fn new(
        q_heads: usize,
        kv_heads: usize,
        seq: usize,
        dim: usize,
        settings: SnapKvSettings,
        dtype: DType,
    ) -> Result<Self> {
        let op = SnapKvCompress { q_heads, kv_heads, seq, dim, settings, dtype };
        op.validate()?;
        Ok(op)
    }
    /// Output heads `Hs`.
    pub fn out_heads(&self) -> usize {
        match self.settings.gqa {
            GqaMode::Mean => self.kv_heads,
            GqaMode::PerHead => self.q_heads,
        }
    }
    /// Whether anything is evicted (`T > capacity`).
    pub fn compresses(&self) -> bool {
        self.seq > self.settings.capacity
    }
    /// Tokens kept per output head, `min(T, capacity)`.
    pub fn kept_len(&self) -> usize {
        self.seq.min(self.settings.capacity)
    }
    /// Window queries present, `min(w, T)`.
    pub fn obs_len(&self) -> usize {
        self.settings.window.min(self.seq)
    }
    /// Fills the kernel parameter block of the `snapkv` family.
    pub fn params(&self) -> SnapKvParams {
        let s = &self.settings;
        let (selector, seed) = match s.selector {
            Selector::Score => (0, 0),
            Selector::Random { seed } => (1, seed),
        };
        SnapKvParams {
            q_heads: self.q_heads as u32,
            kv_heads: self.kv_heads as u32,
            seq: self.seq as u32,
            dim: self.dim as u32,
            window: s.window as u32,
            capacity: s.capacity as u32,
            kernel: s.kernel as u32,
            pooling: matches!(s.pooling, Pooling::Max) as u32,
            gqa: matches!(s.gqa, GqaMode::PerHead) as u32,
            out_heads: self.out_heads() as u32,
            n_prefix: self.seq.saturating_sub(s.window) as u32,
            n_keep: s.capacity.saturating_sub(s.window) as u32,
            selector,
            seed,
            scale: s.scale,
            _pad0: 0,
        }
    }
}

impl Op for SnapKvCompress {
    const NAME: &'static str = "snapkv_compress";
    fn validate(&self) -> Result<()> {
        let s = &self.settings;
        gqa(Self::NAME, self.q_heads, self.kv_heads)?;
        nonzero(Self::NAME, "seq", self.seq)?;
        nonzero(Self::NAME, "dim", self.dim)?;
        nonzero(Self::NAME, "window", s.window)?;
        scale(Self::NAME, s.scale)?;
        float_dtype(Self::NAME, self.dtype)?;
        if s.capacity <= s.window {
            return Err(Error::invalid(
                Self::NAME,
                "capacity",
                format!("more than window = {} (it counts the window), got {}", s.window, s.capacity),
            ));
        }
        if s.kernel == 0 || s.kernel.is_multiple_of(2) {
            return Err(Error::invalid(Self::NAME, "kernel", format!("an odd pooling kernel size, got {}", s.kernel)));
        }
        fits(Self::NAME, "q_heads * seq * dim", &[self.q_heads, self.seq, self.dim])?;
        fits(Self::NAME, "kv_heads * seq * dim", &[self.kv_heads, self.seq, self.dim]).map(drop)
    }
    fn buffers(&self) -> Vec<BufferSpec> {
        let hs = self.out_heads();
        let mut v = vec![
            BufferSpec::input("q_obs", self.dtype, self.q_heads * self.obs_len() * self.dim),
            BufferSpec::input("k", self.dtype, self.kv_heads * self.seq * self.dim),
            BufferSpec::output("kept", DType::I32, hs * self.kept_len()),
        ];
        if self.compresses() {
            let (name, dtype) = match self.settings.selector {
                Selector::Score => ("scores", DType::F32),
                Selector::Random { .. } => ("keys", DType::U32),
            };
            v.push(BufferSpec::output(name, dtype, hs * (self.seq - self.settings.window)));
        }
        v
    }
    /// Window scoring reads `K` once per pass (two passes: row log-sum-exp, column sums).
    fn cost(&self) -> Cost {
        let es = self.dtype.size() as u64;
        let w = self.obs_len() as u64;
        let k = (self.kv_heads * self.seq * self.dim) as u64;
        let pairs = w * self.seq as u64 * self.q_heads as u64;
        Cost {
            flops: if self.compresses() { 2 * 2 * pairs * self.dim as u64 } else { 0 },
            bytes: (k + w * (self.q_heads * self.dim) as u64) * es + 4 * (self.out_heads() * self.kept_len()) as u64,
        }
    }
    fn label(&self) -> String {
        let s = &self.settings;
        format!(
            "hq{}_hkv{}_t{}_d{}_w{}_cap{}_{}",
            self.q_heads, self.kv_heads, self.seq, self.dim, s.window, s.capacity, self.dtype
        )
    }
}
