//! Element types and host-side tensors.

use half::{bf16, f16};

/// Element type of a buffer. Floats (`F32`, `F16`, `BF16`) are storage types: every kernel
/// accumulates in f32. `I32` holds indices and masks, `U32` hashes and random keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 binary32, 4 bytes.
    F32,
    /// IEEE 754 binary16 (half), 2 bytes; storage only.
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa), 2 bytes; storage only.
    BF16,
    /// Signed 32-bit integer, 4 bytes: indices (`-1` = padding) and masks.
    I32,
    /// Unsigned 32-bit integer, 4 bytes: hashes and random keys.
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            _ => 4,
        }
    }

    /// Whether this is one of the float storage types.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Lowercase name: `f32`, `f16`, `bf16`, `i32`, `u32`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::U32 => "u32",
        }
    }

    /// Parses [`DType::name`].
    pub fn parse(s: &str) -> Option<DType> {
        [DType::F32, DType::F16, DType::BF16, DType::I32, DType::U32].into_iter().find(|d| d.name() == s)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A host-side vector of one element type: what goes into [`crate::Backend::upload`] and comes
/// back from [`crate::Backend::download`].
///
/// ```
/// use kvsparse::{DType, HostData};
/// let x = HostData::from_f32(DType::BF16, &[1.0, 2.5]);
/// assert_eq!(x.dtype(), DType::BF16);
/// assert_eq!(x.to_f32().unwrap(), vec![1.0, 2.5]);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    /// [`DType::F32`] elements.
    F32(Vec<f32>),
    /// [`DType::F16`] elements.
    F16(Vec<f16>),
    /// [`DType::BF16`] elements.
    BF16(Vec<bf16>),
    /// [`DType::I32`] elements.
    I32(Vec<i32>),
    /// [`DType::U32`] elements.
    U32(Vec<u32>),
}

impl HostData {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
            HostData::I32(_) => DType::I32,
            HostData::U32(_) => DType::U32,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::BF16(v) => v.len(),
            HostData::I32(v) => v.len(),
            HostData::U32(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HostData::F32(v) => bytemuck::cast_slice(v),
            HostData::F16(v) => bytemuck::cast_slice(v),
            HostData::BF16(v) => bytemuck::cast_slice(v),
            HostData::I32(v) => bytemuck::cast_slice(v),
            HostData::U32(v) => bytemuck::cast_slice(v),
        }
    }

    /// Rebuilds elements of `dtype` from little-endian bytes; `None` if the length is not a
    /// multiple of the element size.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Option<HostData> {
        if !bytes.len().is_multiple_of(dtype.size()) {
            return None;
        }
        let words4 = || bytes.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
        let words2 = || bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
        Some(match dtype {
            DType::F32 => HostData::F32(words4().map(f32::from_le_bytes).collect()),
            DType::I32 => HostData::I32(words4().map(i32::from_le_bytes).collect()),
            DType::U32 => HostData::U32(words4().map(u32::from_le_bytes).collect()),
            DType::F16 => HostData::F16(words2().map(f16::from_bits).collect()),
            DType::BF16 => HostData::BF16(words2().map(bf16::from_bits).collect()),
        })
    }

    /// f32 values rounded to the float storage type `dtype` (round to nearest even).
    /// Integer `dtype`s are not float storage: they get `F32` back.
    pub fn from_f32(dtype: DType, values: &[f32]) -> HostData {
        match dtype {
            DType::F16 => HostData::F16(values.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => HostData::BF16(values.iter().map(|&x| bf16::from_f32(x)).collect()),
            _ => HostData::F32(values.to_vec()),
        }
    }

    /// Float elements widened to f32; `None` for integer data.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self {
            HostData::F32(v) => Some(v.clone()),
            HostData::F16(v) => Some(v.iter().map(|x| x.to_f32()).collect()),
            HostData::BF16(v) => Some(v.iter().map(|x| x.to_f32()).collect()),
            _ => None,
        }
    }

    /// [`HostData::poison`], or `None` when the host cannot allocate it (instead of aborting).
    pub fn try_poison(dtype: DType, len: usize) -> Option<HostData> {
        fn filled<T: Clone>(x: T, len: usize) -> Option<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(len).ok()?;
            v.resize(len, x);
            Some(v)
        }
        Some(match dtype {
            DType::F32 => HostData::F32(filled(f32::NAN, len)?),
            DType::F16 => HostData::F16(filled(f16::NAN, len)?),
            DType::BF16 => HostData::BF16(filled(bf16::NAN, len)?),
            DType::I32 => HostData::I32(filled(i32::MIN, len)?),
            DType::U32 => HostData::U32(filled(0xDEAD_BEEF, len)?),
        })
    }

    /// A vector of `len` elements that no kernel writes on purpose: NaN for floats,
    /// `i32::MIN` and `0xDEAD_BEEF` for integers. Tests fill outputs with it before a run so
    /// that an element a kernel forgot to write fails the comparison.
    pub fn poison(dtype: DType, len: usize) -> HostData {
        match dtype {
            DType::F32 => HostData::F32(vec![f32::NAN; len]),
            DType::F16 => HostData::F16(vec![f16::NAN; len]),
            DType::BF16 => HostData::BF16(vec![bf16::NAN; len]),
            DType::I32 => HostData::I32(vec![i32::MIN; len]),
            DType::U32 => HostData::U32(vec![0xDEAD_BEEF; len]),
        }
    }
}
