//! The kernel table (one entry point each, grouped in families = `shaders/*.wgsl` files), the
//! specialisation key and WGSL source assembly.
//!
//! A module is assembled as `[enable f16;] + params struct + spec prelude + common.wgsl +
//! [rowselect.wgsl] + body`. The prelude gives every float tensor binding `x` of the family its
//! element type `x_t` and the helpers `ld_x(i) -> f32` / `st_x(i, v: f32)`, generated for the
//! binding's storage dtype, so that bodies never mention f16 or bf16:
//! f32 is `array<f32>`; f16 is `array<f16>` (needs `enable f16;`); bf16 is packed two per `u32`
//! (element `2j` in the low half of word `j`), widened with a shift and, for outputs, written
//! with `atomicAnd`/`atomicOr` on the half that belongs to the element, so that neighbouring
//! invocations writing the two halves of one word never race.

use crate::params::*;
use crate::DType;

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const ROWSELECT: &str = include_str!("../../shaders/rowselect.wgsl");

/// Which dtype a float binding takes from the [`Spec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The op's storage dtype (q, k, v, x, outputs).
    Main,
    /// Block statistics (kmin, kmax, kmean): the storage dtype for the standalone ops, f32
    /// inside the Quest and MoBA composites.
    Stat,
}

/// Storage access of a binding (binding 0 is always the params uniform).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}
use Access::{Read as R, Write as W};

/// One `shaders/<name>.wgsl` file.
pub(crate) struct Family {
    pub name: &'static str,
    pub body: &'static str,
    pub params: &'static str,
    /// Whether rowselect.wgsl is prepended.
    pub rowselect: bool,
    /// Every float tensor binding declared by the family's entry points.
    pub floats: &'static [(&'static str, Role, Access)],
}

const RANDOM: Family = Family {
    name: "random",
    body: include_str!("../../shaders/random.wgsl"),
    params: RandomParams::WGSL,
    rowselect: true,
    floats: &[],
};
const TOPK: Family = Family {
    name: "topk",
    body: include_str!("../../shaders/topk.wgsl"),
    params: TopkParams::WGSL,
    rowselect: true,
    floats: &[],
};
const DECAY: Family = Family {
    name: "decay",
    body: include_str!("../../shaders/decay.wgsl"),
    params: DecayParams::WGSL,
    rowselect: false,
    floats: &[
        ("ds_x", Role::Main, R),
        ("ds_y", Role::Main, W),
        ("dst_x", Role::Main, R),
        ("rp_x", Role::Main, R),
        ("rp_y", Role::Main, W),
        ("rk_k", Role::Main, R),
        ("rk_v", Role::Main, R),
        ("rk_kt", Role::Main, W),
        ("rk_vt", Role::Main, W),
        ("rk_kr", Role::Main, W),
        ("rstep_k", Role::Main, R),
        ("rstep_v", Role::Main, R),
        ("rstep_kr", Role::Main, W),
    ],
};
const BLOCKS: Family = Family {
    name: "blocks",
    body: include_str!("../../shaders/blocks.wgsl"),
    params: BlockParams::WGSL,
    rowselect: false,
    floats: &[
        ("bm_k", Role::Main, R),
        ("bm_kmin", Role::Stat, W),
        ("bm_kmax", Role::Stat, W),
        ("bmean_k", Role::Main, R),
        ("bmean_out", Role::Stat, W),
        ("qs_q", Role::Main, R),
        ("qs_kmin", Role::Stat, R),
        ("qs_kmax", Role::Stat, R),
        ("mg_q", Role::Main, R),
        ("mg_kmean", Role::Stat, R),
    ],
};
const SELECT: Family = Family {
    name: "select",
    body: include_str!("../../shaders/select.wgsl"),
    params: SelectParams::WGSL,
    rowselect: true,
    floats: &[],
};
const ATTENTION: Family = Family {
    name: "attention",
    body: include_str!("../../shaders/attention.wgsl"),
    params: AttentionParams::WGSL,
    rowselect: false,
    floats: &[("q", Role::Main, R), ("k", Role::Main, R), ("v", Role::Main, R), ("out", Role::Main, W)],
};
const SNAPKV: Family = Family {
    name: "snapkv",
    body: include_str!("../../shaders/snapkv.wgsl"),
    params: SnapKvParams::WGSL,
    rowselect: true,
    floats: &[("sq", Role::Main, R), ("sk", Role::Main, R)],
};
const HIT_RATE: Family = Family {
    name: "hit_rate",
    body: include_str!("../../shaders/hit_rate.wgsl"),
    params: HitRateParams::WGSL,
    rowselect: false,
    floats: &[],
};

/// One WGSL entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    PcgHash,
    RandomKey,
    RandomSelect,
    Topk,
    DecayScan,
    DecayStep,
    Rope,
    RatplusKv,
    RatplusStep,
    BlockMinmax,
    BlockMean,
    QuestScores,
    MobaGate,
    SelectBlocks,
    AttentionDense,
    AttentionSparse,
    AttentionBlocks,
    SnapkvLse,
    SnapkvColsum,
    SnapkvPool,
    SnapkvSelect,
    SnapkvKeepAll,
    HitRate,
}

const SNAPKV_BINDINGS: &[Access] = &[R, R, W, W, W, W];
const ATTENTION_BINDINGS: &[Access] = &[R, R, R, R, W, W];

impl Kernel {
    #[cfg(test)]
    pub const ALL: &'static [Kernel] = &[
        Kernel::PcgHash,
        Kernel::RandomKey,
        Kernel::RandomSelect,
        Kernel::Topk,
        Kernel::DecayScan,
        Kernel::DecayStep,
        Kernel::Rope,
        Kernel::RatplusKv,
        Kernel::RatplusStep,
        Kernel::BlockMinmax,
        Kernel::BlockMean,
        Kernel::QuestScores,
        Kernel::MobaGate,
        Kernel::SelectBlocks,
        Kernel::AttentionDense,
        Kernel::AttentionSparse,
        Kernel::AttentionBlocks,
        Kernel::SnapkvLse,
        Kernel::SnapkvColsum,
        Kernel::SnapkvPool,
        Kernel::SnapkvSelect,
        Kernel::SnapkvKeepAll,
        Kernel::HitRate,
    ];

    /// `(family, entry point, storage bindings 1..=n, workgroup size)`.
    fn desc(self) -> (&'static Family, &'static str, &'static [Access], u32) {
        match self {
            Kernel::PcgHash => (&RANDOM, "pcg_hash", &[R, W], 256),
            Kernel::RandomKey => (&RANDOM, "random_key", &[R, R, W], 256),
            Kernel::RandomSelect => (&RANDOM, "random_select", &[R, R, W, W], 256),
            Kernel::Topk => (&TOPK, "topk", &[R, W, W], 256),
            Kernel::DecayScan => (&DECAY, "decay_scan", &[R, R, R, W], 256),
            Kernel::DecayStep => (&DECAY, "decay_step", &[R, R, R, W], 256),
            Kernel::Rope => (&DECAY, "rope", &[R, R, W], 256),
            Kernel::RatplusKv => (&DECAY, "ratplus_kv", &[R, R, R, W, W, W], 256),
            Kernel::RatplusStep => (&DECAY, "ratplus_step", &[R, R, R, R, R, W, W, W], 256),
            Kernel::BlockMinmax => (&BLOCKS, "block_minmax", &[R, W, W], 256),
            Kernel::BlockMean => (&BLOCKS, "block_mean", &[R, W], 256),
            Kernel::QuestScores => (&BLOCKS, "quest_scores", &[R, R, R, W], 256),
            Kernel::MobaGate => (&BLOCKS, "moba_gate", &[R, R, W], 256),
            Kernel::SelectBlocks => (&SELECT, "select_blocks", &[W, W], 64),
            Kernel::AttentionDense => (&ATTENTION, "attention_dense", ATTENTION_BINDINGS, 64),
            Kernel::AttentionSparse => (&ATTENTION, "attention_sparse", ATTENTION_BINDINGS, 64),
            Kernel::AttentionBlocks => (&ATTENTION, "attention_blocks", ATTENTION_BINDINGS, 64),
            Kernel::SnapkvLse => (&SNAPKV, "snapkv_lse", SNAPKV_BINDINGS, 128),
            Kernel::SnapkvColsum => (&SNAPKV, "snapkv_colsum", SNAPKV_BINDINGS, 128),
            Kernel::SnapkvPool => (&SNAPKV, "snapkv_pool", SNAPKV_BINDINGS, 128),
            Kernel::SnapkvSelect => (&SNAPKV, "snapkv_select", SNAPKV_BINDINGS, 128),
            Kernel::SnapkvKeepAll => (&SNAPKV, "snapkv_keep_all", SNAPKV_BINDINGS, 128),
            Kernel::HitRate => (&HIT_RATE, "hit_rate", &[R, R, W, W], 256),
        }
    }
    pub fn family(self) -> &'static Family {
        self.desc().0
    }
    pub fn entry(self) -> &'static str {
        self.desc().1
    }
    /// Access of the storage bindings `1..=n`, in order.
    pub fn bindings(self) -> &'static [Access] {
        self.desc().2
    }
    /// Invocations per workgroup (the `WG_SIZE` override).
    pub fn workgroup(self) -> u32 {
        self.desc().3
    }
    /// `family::entry`, for error messages.
    pub fn label(self) -> String {
        format!("{}::{}", self.family().name, self.entry())
    }
}

/// Code-shaping knobs: anything here forces a new pipeline; shapes go in the params uniform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Spec {
    /// Storage dtype of the [`Role::Main`] bindings.
    pub dtype: DType,
    /// Storage dtype of the [`Role::Stat`] bindings.
    pub stat: DType,
    /// Sizes workgroup / local arrays of one head vector (`>= dim`; a power of two, so that a
    /// few pipelines serve every head dim).
    pub head_dim: u32,
}

impl Spec {
    /// Every float binding in `dtype`; no head-dim arrays.
    pub fn new(dtype: DType) -> Self {
        Spec { dtype, stat: dtype, head_dim: 1 }
    }
    /// Statistics in `stat` instead of the storage dtype.
    pub fn with_stat(self, stat: DType) -> Self {
        Spec { stat, ..self }
    }
    /// Head vectors of `dim` elements.
    pub fn with_dim(self, dim: usize) -> Self {
        Spec { head_dim: head_dim_bucket(dim), ..self }
    }
    fn dtype_of(&self, role: Role) -> DType {
        match role {
            Role::Main => self.dtype,
            Role::Stat => self.stat,
        }
    }
}

/// The `HEAD_DIM` a problem with head dim `dim` compiles with.
pub(crate) fn head_dim_bucket(dim: usize) -> u32 {
    dim.next_power_of_two().max(32).min(u32::MAX as usize / 2 + 1) as u32
}

/// The element alias and load/store helpers of one float binding.
fn binding_helpers(name: &str, dtype: DType, access: Access) -> String {
    let write = access == Access::Write;
    let (alias, load, store) = match dtype {
        DType::F16 => ("f16".to_string(), format!("return f32({name}[i]);"), format!("{name}[i] = f16(v);")),
        DType::BF16 if write => (
            "atomic<u32>".to_string(),
            format!("return bf16_unpack(atomicLoad(&{name}[i >> 1u]), i);"),
            format!(
                "let sh = (i & 1u) * 16u;\n    atomicAnd(&{name}[i >> 1u], ~(0xffffu << sh));\n    \
                 atomicOr(&{name}[i >> 1u], bf16_bits(v) << sh);"
            ),
        ),
        DType::BF16 => ("u32".to_string(), format!("return bf16_unpack({name}[i >> 1u], i);"), String::new()),
        // f32 (integer dtypes never reach a float binding).
        _ => ("f32".to_string(), format!("return {name}[i];"), format!("{name}[i] = v;")),
    };
    let mut s = format!("alias {name}_t = {alias};\nfn ld_{name}(i: u32) -> f32 {{\n    {load}\n}}\n");
    if write {
        s += &format!("fn st_{name}(i: u32, v: f32) {{\n    {store}\n}}\n");
    }
    s
}

/// The assembled WGSL module of `kernel`'s family for `spec`.
pub(crate) fn wgsl_source(kernel: Kernel, spec: &Spec) -> String {
    let fam = kernel.family();
    let uses_f16 = fam.floats.iter().any(|&(_, role, _)| spec.dtype_of(role) == DType::F16);
    let mut src = String::new();
    if uses_f16 {
        src += "enable f16;\n";
    }
    src += fam.params;
    src += &format!("\n// spec prelude: {spec:?}\nconst HEAD_DIM: u32 = {}u;\n", spec.head_dim.max(1));
    for &(name, role, access) in fam.floats {
        src += &binding_helpers(name, spec.dtype_of(role), access);
    }
    src += "\n";
    src += COMMON;
    if fam.rowselect {
        src += "\n";
        src += ROWSELECT;
    }
    src += "\n";
    src += fam.body;
    src
}

#[cfg(test)]
mod tests {
    //! No GPU needed: every kernel, assembled for every storage dtype, must pass naga's
    //! validator, and the bindings its entry point uses must match the layout table above.
    use super::*;

    fn check(kernel: Kernel, spec: Spec) {
        let src = wgsl_source(kernel, &spec);
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{} {spec:?}: {}", kernel.label(), e.emit_to_string(&src)));
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{} {spec:?}: {}", kernel.label(), e.emit_to_string(&src)));
        let ep = module
            .entry_points
            .iter()
            .position(|e| e.name == kernel.entry())
            .unwrap_or_else(|| panic!("{}: no entry point", kernel.label()));
        let ep_info = info.get_entry_point(ep);
        for (handle, var) in module.global_variables.iter() {
            let Some(binding) = &var.binding else { continue };
            if ep_info[handle].is_empty() {
                continue;
            }
            let name = var.name.clone().unwrap_or_default();
            assert_eq!(binding.group, 0, "{}: {name}", kernel.label());
            if binding.binding == 0 {
                assert_eq!(var.space, naga::AddressSpace::Uniform, "{}: {name}", kernel.label());
                continue;
            }
            let access = kernel.bindings().get(binding.binding as usize - 1).unwrap_or_else(|| {
                panic!("{}: binding {} ({name}) not in the layout", kernel.label(), binding.binding)
            });
            let naga::AddressSpace::Storage { access: declared } = var.space else {
                panic!("{}: {name} is not a storage buffer", kernel.label())
            };
            let writable = declared.contains(naga::StorageAccess::STORE);
            assert_eq!(writable, *access == Access::Write, "{}: access of {name}", kernel.label());
        }
    }

    #[test]
    fn every_kernel_validates_for_every_dtype() {
        for &kernel in Kernel::ALL {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                check(kernel, Spec::new(dtype).with_dim(128));
                check(kernel, Spec::new(dtype).with_stat(DType::F32).with_dim(64));
            }
        }
    }

    #[test]
    fn head_dim_buckets() {
        assert_eq!(head_dim_bucket(1), 32);
        assert_eq!(head_dim_bucket(64), 64);
        assert_eq!(head_dim_bucket(65), 128);
    }
}
