//! Pure launch planning: which entry point, grid, block and workspace for a shape. No unsafe,
//! no device access; the GPU path and the host emulation call the same functions.

use crate::dtype::DType;

/// Element order of an (N, C, spatial) tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelOrder {
    /// (N, C, S): each (n, c) plane contiguous.
    Nchw,
    /// (N, S, C): each pixel's channels contiguous.
    Nhwc,
}

impl ChannelOrder {
    fn suffix(self) -> &'static str {
        match self {
            ChannelOrder::Nchw => "nchw",
            ChannelOrder::Nhwc => "nhwc",
        }
    }
}

/// Grid and block dimensions of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
}

/// One planned kernel launch (entry point + dimensions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub kernel: String,
    pub config: LaunchConfig,
}

/// Longest LayerNorm row the warp-per-row variant handles (32 lanes × 32 register values).
pub const LN_WARP_MAX_COLS: usize = 1024;
/// Rows the block variant keeps in registers (256 threads × 16 values); longer rows stream.
pub const LN_BLOCK_RESIDENT_COLS: usize = 4096;
const LN_WARP_BLOCK: u32 = 128;
const LN_BLOCK_THREADS: u32 = 256;
const ELEMENTWISE_THREADS: u32 = 256;
/// Resident blocks per SM assumed for persistent grid sizing.
const BLOCKS_PER_SM: u64 = 8;
/// Largest grid.x used by grid-stride kernels.
const MAX_GRID_X: u64 = 1 << 20;

/// Kernel name suffix of a storage dtype (`f32`, `f64`, `f16`, `bf16`).
pub fn dtype_suffix(dtype: DType) -> &'static str {
    dtype.name()
}

fn persistent_grid(work_items: u64, per_block: u64, sms: u32) -> u32 {
    let needed = work_items.div_ceil(per_block.max(1)).max(1);
    let cap = (sms.max(1) as u64 * BLOCKS_PER_SM).min(MAX_GRID_X);
    needed.min(cap) as u32
}

/// LayerNorm variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerNormVariant {
    /// One warp per row, row in registers (cols ≤ [`LN_WARP_MAX_COLS`]).
    Warp,
    /// One block per row; registers up to [`LN_BLOCK_RESIDENT_COLS`], streaming beyond.
    Block,
}

pub fn layer_norm_variant(cols: usize) -> LayerNormVariant {
    if cols <= LN_WARP_MAX_COLS {
        LayerNormVariant::Warp
    } else {
        LayerNormVariant::Block
    }
}

/// LayerNorm forward over `rows` rows of `cols` elements (both ≥ 1) on a device with `sms` SMs.
pub fn layer_norm_fwd(dtype: DType, rows: usize, cols: usize, sms: u32) -> Launch {
    let t = dtype_suffix(dtype);
    match layer_norm_variant(cols) {
        LayerNormVariant::Warp => Launch {
            kernel: format!("layer_norm_fwd_warp_{t}"),
            config: LaunchConfig {
                grid: [
                    persistent_grid(rows as u64, (LN_WARP_BLOCK / 32) as u64, sms),
                    1,
                    1,
                ],
                block: [LN_WARP_BLOCK, 1, 1],
            },
        },
        LayerNormVariant::Block => Launch {
            kernel: format!("layer_norm_fwd_block_{t}"),
            config: LaunchConfig {
                grid: [persistent_grid(rows as u64, 1, sms), 1, 1],
                block: [LN_BLOCK_THREADS, 1, 1],
            },
        },
    }
}

/// Values per thread of the GroupNorm NCHW kernel's register-resident path (`GN_ROW_VALUES`
/// in group_norm.cu).
pub const GN_ROW_VALUES: usize = 16;
/// Largest block of the GroupNorm NCHW kernel (`GN_ROW_MAX_THREADS`, its `__launch_bounds__`):
/// groups up to `GN_ROW_MAX_THREADS × GN_ROW_VALUES` (8192) elements are read once.
pub const GN_ROW_MAX_THREADS: usize = 512;
/// Block of the channels-last GroupNorm kernel.
const GN_NHWC_THREADS: u32 = 256;

/// GroupNorm / InstanceNorm forward over `n` samples of `groups` groups of `len = (c/groups)·s`
/// elements: one block per (n, group), grid-stride. NCHW: the smallest power-of-two block (32
/// to [`GN_ROW_MAX_THREADS`]) that holds the group in registers, so a group is read once
/// ([`GN_ROW_VALUES`] per thread; longer groups stream with the largest block).
pub fn group_norm_fwd(
    dtype: DType,
    order: ChannelOrder,
    n: usize,
    groups: usize,
    len: usize,
    sms: u32,
) -> Launch {
    let threads = match order {
        ChannelOrder::Nchw => len
            .div_ceil(GN_ROW_VALUES)
            .next_power_of_two()
            .clamp(32, GN_ROW_MAX_THREADS) as u32,
        ChannelOrder::Nhwc => GN_NHWC_THREADS,
    };
    Launch {
        kernel: format!("group_norm_fwd_{}_{}", order.suffix(), dtype_suffix(dtype)),
        config: LaunchConfig {
            grid: [persistent_grid((n * groups) as u64, 1, sms), 1, 1],
            block: [threads, 1, 1],
        },
    }
}

/// InstanceNorm running-statistic update: one thread per channel, grid-stride (the kernel
/// is per compute type: f64 for f64 input, f32 otherwise).
pub fn instance_norm_running(dtype: DType, c: usize, sms: u32) -> Launch {
    Launch {
        kernel: format!("instance_norm_running_{}", dtype_suffix(dtype.stat_dtype())),
        config: elementwise(c, sms),
    }
}

/// Plan of the BatchNorm training statistics launch and the scratch memory it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchNormStatsPlan {
    pub launch: Launch,
    /// Blocks per channel (NCHW) or per 32-channel tile (NHWC).
    pub splits: usize,
    /// Bytes of workspace: splits·c accumulator values of mean and of M2 (f64 for f32 input:
    /// `Traits<float>::A`, as the CPU op's statistics), then splits·c i64 counts.
    pub workspace_bytes: usize,
    /// Number of u32 ticket counters; zero them once when allocating, the kernel resets them.
    pub counters: usize,
}

/// Minimum elements (NCHW) or rows (NHWC) per split block.
const BN_MIN_PER_SPLIT_NCHW: usize = 256;
const BN_MIN_PER_SPLIT_NHWC: usize = 32;
const BN_MAX_SPLITS: usize = 1024;

/// BatchNorm training statistics for (n, c, s), n·s ≥ 1, c ≥ 1.
pub fn batch_norm_stats(
    dtype: DType,
    order: ChannelOrder,
    n: usize,
    c: usize,
    s: usize,
    sms: u32,
) -> BatchNormStatsPlan {
    let per_channel = n * s;
    let (tiles, min_per_split, block) = match order {
        ChannelOrder::Nchw => (c, BN_MIN_PER_SPLIT_NCHW, [256, 1, 1]),
        ChannelOrder::Nhwc => (c.div_ceil(32), BN_MIN_PER_SPLIT_NHWC, [32, 8, 1]),
    };
    let target_blocks = 2 * sms.max(1) as usize;
    let by_occupancy = target_blocks.div_ceil(tiles.max(1));
    let by_work = per_channel.div_ceil(min_per_split).max(1);
    let splits = by_occupancy.min(by_work).clamp(1, BN_MAX_SPLITS);
    // the kernels' accumulator type (`Traits<S>::A`): f64 for f32 and f64 input, f32 else
    let acc_bytes = match dtype {
        DType::F32 | DType::F64 => 8,
        DType::F16 | DType::BF16 => 4,
    };
    BatchNormStatsPlan {
        launch: Launch {
            kernel: format!(
                "batch_norm_stats_{}_{}",
                order.suffix(),
                dtype_suffix(dtype)
            ),
            config: LaunchConfig {
                grid: [tiles as u32, splits as u32, 1],
                block,
            },
        },
        splits,
        workspace_bytes: splits * c * (2 * acc_bytes + 8),
        counters: tiles,
    }
}

/// BatchNorm elementwise apply (training: `inference = false`) or inference from running stats.
pub fn batch_norm_apply(
    dtype: DType,
    order: ChannelOrder,
    total: usize,
    inference: bool,
    sms: u32,
) -> Launch {
    let phase = if inference { "infer" } else { "apply" };
    Launch {
        kernel: format!(
            "batch_norm_{phase}_{}_{}",
            order.suffix(),
            dtype_suffix(dtype)
        ),
        config: elementwise(total, sms),
    }
}

/// LocalResponseNorm forward, one thread per element.
pub fn lrn_fwd(dtype: DType, order: ChannelOrder, total: usize, sms: u32) -> Launch {
    Launch {
        kernel: format!("lrn_fwd_{}_{}", order.suffix(), dtype_suffix(dtype)),
        config: elementwise(total, sms),
    }
}

fn elementwise(total: usize, sms: u32) -> LaunchConfig {
    LaunchConfig {
        grid: [
            persistent_grid(total as u64, ELEMENTWISE_THREADS as u64, sms),
            1,
            1,
        ],
        block: [ELEMENTWISE_THREADS, 1, 1],
    }
}

// ---- Backward --------------------------------------------------------------------------------

/// Values per thread the LayerNorm backward keeps in registers (`LN_BWD_VALUES` in
/// layer_norm.cu); rows up to [`LN_BWD_MAX_THREADS`] × this are read once.
pub const LN_BWD_VALUES: usize = 8;
/// Largest block of the LayerNorm backward row kernel. 512 (was 256): a 4096-column row stays
/// in registers, where the streaming path read x and dy twice and read-modify-wrote the dγ/dβ
/// partial row for every row (4096×4096 bf16 on an H100: 0.37 ms, PyTorch 0.13 ms). Not 1024:
/// that would need ≤ 64 registers per thread.
pub const LN_BWD_MAX_THREADS: usize = 512;
/// Longest LayerNorm row the backward keeps in registers; longer rows are read twice.
pub const LN_BWD_RESIDENT_COLS: usize = LN_BWD_MAX_THREADS * LN_BWD_VALUES;
/// Block of the LayerNorm dγ/dβ merge: 32 columns × 16 slices of the partial rows (was one
/// thread per column summing every partial row: `cols` threads, a few SMs, for 2·SMs rows).
const LN_BWD_PARAMS_BLOCK: [u32; 3] = [32, 16, 1];
/// Threads per SM the LayerNorm backward's grid aims at: SMs × (this / block) blocks, 1 to 16
/// per SM (was 2 blocks per SM whatever the block: 256 threads per SM for 1024-column rows,
/// which left the row loop latency-bound: 16384×1024 took the same 0.189 ms in f32 and bf16 on
/// an H200). ptxas gives the row kernel about 100 registers, so about 600 threads fit an SM.
const LN_BWD_THREADS_PER_SM: usize = 512;

/// Plan of a LayerNorm backward: the row kernel (dx + per-block dγ/dβ partials) and the
/// column kernel that merges the partials (launch it only when dγ or dβ is requested).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerNormBwdPlan {
    pub rows: Launch,
    pub params: Launch,
    /// Blocks of `rows` = partial rows in the workspace.
    pub partials: usize,
    /// Bytes of workspace: 2·partials·cols compute values.
    pub workspace_bytes: usize,
}

/// LayerNorm backward over `rows` × `cols` (both ≥ 1): one block per row with 32–512 threads
/// (enough for `cols` at [`LN_BWD_VALUES`] per thread), grid ≤ SMs × (512 / threads), 1 to 16
/// blocks per SM; the merge of the partial rows takes one block per 32 columns.
pub fn layer_norm_bwd(dtype: DType, rows: usize, cols: usize, sms: u32) -> LayerNormBwdPlan {
    let t = dtype_suffix(dtype);
    let threads = cols
        .div_ceil(LN_BWD_VALUES)
        .next_power_of_two()
        .clamp(32, LN_BWD_MAX_THREADS) as u32;
    let per_sm = (LN_BWD_THREADS_PER_SM / threads as usize).clamp(1, 16);
    let partials = rows.clamp(1, per_sm * sms.max(1) as usize);
    LayerNormBwdPlan {
        rows: Launch {
            kernel: format!("layer_norm_bwd_{t}"),
            config: LaunchConfig {
                grid: [partials as u32, 1, 1],
                block: [threads, 1, 1],
            },
        },
        params: Launch {
            kernel: format!("layer_norm_bwd_params_{t}"),
            config: LaunchConfig {
                grid: [
                    (cols.div_ceil(LN_BWD_PARAMS_BLOCK[0] as usize) as u64).min(MAX_GRID_X) as u32,
                    1,
                    1,
                ],
                block: LN_BWD_PARAMS_BLOCK,
            },
        },
        partials,
        workspace_bytes: 2 * partials * cols * dtype.stat_dtype().size_in_bytes(),
    }
}

/// Plan of a BatchNorm backward (also InstanceNorm with running statistics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchNormBwdPlan {
    /// Per-channel sums + last-block merge (coefficients, dγ, dβ); same decomposition as the
    /// statistics kernel. Needed in training, and in frozen mode only for dγ/dβ.
    pub reduce: Launch,
    /// dx elementwise.
    pub input: Launch,
    pub splits: usize,
    /// Bytes of workspace: (3·splits·c + 3·c) compute values (partial Σdy, Σdy·(x − μ), the
    /// coefficients, then partial Σ(x − μ) for the channels whose saved mean's rounding is
    /// recovered).
    pub workspace_bytes: usize,
    /// u32 ticket counters (zero once; the kernel resets them).
    pub counters: usize,
}

pub fn batch_norm_bwd(
    dtype: DType,
    order: ChannelOrder,
    n: usize,
    c: usize,
    s: usize,
    sms: u32,
) -> BatchNormBwdPlan {
    let stats = batch_norm_stats(dtype, order, n, c, s, sms);
    let (o, t) = (order.suffix(), dtype_suffix(dtype));
    BatchNormBwdPlan {
        reduce: Launch {
            kernel: format!("batch_norm_bwd_reduce_{o}_{t}"),
            config: stats.launch.config,
        },
        input: Launch {
            kernel: format!("batch_norm_bwd_input_{o}_{t}"),
            config: elementwise(n * c * s, sms),
        },
        splits: stats.splits,
        workspace_bytes: (3 * stats.splits + 3) * c * dtype.stat_dtype().size_in_bytes(),
        counters: stats.counters,
    }
}

/// Plan of a GroupNorm / InstanceNorm (saved statistics) backward: one launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupNormBwdPlan {
    pub launch: Launch,
    /// Bytes of workspace for dγ/dβ: 2·n·c compute values.
    pub workspace_bytes: usize,
    /// u32 ticket counters (one; zero once, the kernel resets it).
    pub counters: usize,
}

pub fn group_norm_bwd(
    dtype: DType,
    order: ChannelOrder,
    n: usize,
    c: usize,
    groups: usize,
    sms: u32,
) -> GroupNormBwdPlan {
    GroupNormBwdPlan {
        launch: Launch {
            kernel: format!("group_norm_bwd_{}_{}", order.suffix(), dtype_suffix(dtype)),
            config: LaunchConfig {
                grid: [persistent_grid((n * groups) as u64, 1, sms), 1, 1],
                block: [256, 1, 1],
            },
        },
        workspace_bytes: 2 * n * c * dtype.stat_dtype().size_in_bytes(),
        counters: 1,
    }
}

/// LocalResponseNorm backward, one thread per element.
pub fn lrn_bwd(dtype: DType, order: ChannelOrder, total: usize, sms: u32) -> Launch {
    Launch {
        kernel: format!("lrn_bwd_{}_{}", order.suffix(), dtype_suffix(dtype)),
        config: elementwise(total, sms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_variant_switches_at_the_threshold() {
        assert_eq!(layer_norm_variant(1), LayerNormVariant::Warp);
        assert_eq!(layer_norm_variant(1024), LayerNormVariant::Warp);
        assert_eq!(layer_norm_variant(1025), LayerNormVariant::Block);
        let l = layer_norm_fwd(DType::BF16, 10, 4097, 132);
        assert_eq!(l.kernel, "layer_norm_fwd_block_bf16");
        assert_eq!(l.config.grid, [10, 1, 1]);
        let l = layer_norm_fwd(DType::F32, 1_000_000, 64, 132);
        assert_eq!(l.kernel, "layer_norm_fwd_warp_f32");
        assert_eq!(l.config.grid[0], 132 * 8);
    }

    #[test]
    fn batch_norm_splits_follow_work_and_occupancy() {
        // tiny channel: one split
        let p = batch_norm_stats(DType::F32, ChannelOrder::Nchw, 2, 64, 3, 132);
        assert_eq!(p.splits, 1);
        assert_eq!(p.launch.config.grid, [64, 1, 1]);
        // few channels, much work: split to fill the GPU
        let p = batch_norm_stats(DType::F16, ChannelOrder::Nhwc, 32, 64, 56 * 56, 132);
        assert_eq!(p.counters, 2);
        assert_eq!(p.splits, 132);
        assert_eq!(p.workspace_bytes, 132 * 64 * 16);
        assert_eq!(p.launch.kernel, "batch_norm_stats_nhwc_f16");
        let p = batch_norm_stats(DType::F64, ChannelOrder::Nchw, 1, 1, 1 << 30, 132);
        assert_eq!(p.splits, 264);
        assert_eq!(p.workspace_bytes, 264 * 24);
    }

    #[test]
    fn grids_never_exceed_the_cap_or_go_to_zero() {
        let l = lrn_fwd(DType::F64, ChannelOrder::Nhwc, 1, 132);
        assert_eq!(l.config.grid, [1, 1, 1]);
        let l = batch_norm_apply(DType::F32, ChannelOrder::Nchw, usize::MAX / 2, true, 132);
        assert_eq!(l.config.grid[0] as u64, 132 * 8);
        assert_eq!(l.kernel, "batch_norm_infer_nchw_f32");
        let l = group_norm_fwd(DType::F16, ChannelOrder::Nchw, 2, 3, 10, 132);
        assert_eq!(l.config.grid, [6, 1, 1]);
        let l = instance_norm_running(DType::BF16, 1000, 132);
        assert_eq!(l.kernel, "instance_norm_running_f32");
        assert_eq!(l.config.grid, [4, 1, 1]);
        assert_eq!(
            instance_norm_running(DType::F64, 1, 1).kernel,
            "instance_norm_running_f64"
        );
    }

    /// The statistics workspace holds the kernels' accumulator type (`Traits<S>::A`): f64
    /// partials for f32 input, so 24 bytes per (split, channel) there, not 16.
    #[test]
    fn batch_norm_stats_workspace_fits_the_accumulator() {
        for (dt, per) in [
            (DType::F32, 24),
            (DType::F64, 24),
            (DType::BF16, 16),
            (DType::F16, 16),
        ] {
            for order in [ChannelOrder::Nchw, ChannelOrder::Nhwc] {
                let p = batch_norm_stats(dt, order, 8, 40, 576, 132);
                assert_eq!(p.workspace_bytes, p.splits * 40 * per, "{dt:?} {order:?}");
            }
        }
    }

    /// The LayerNorm forward block kernels are bounded for occupancy (`LN_BLOCK_BOUNDS`, three
    /// blocks per SM) with exactly the block the host launches: a larger block than the bound
    /// would fail at launch on a GPU only.
    #[test]
    fn layer_norm_block_bounds_match_the_launch() {
        use crate::backend::cuda::modules::module_of;
        let src = module_of("layer_norm_fwd_block_f32")
            .expect("a module")
            .source;
        let define = format!("#define LN_BLOCK_BOUNDS {LN_BLOCK_THREADS}, 3\n");
        assert!(src.contains(&define), "layer_norm.cu lacks '{define}'");
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let l = layer_norm_fwd(dt, 8, LN_BLOCK_RESIDENT_COLS, 132);
            assert_eq!(l.config.block, [LN_BLOCK_THREADS, 1, 1]);
            let line = format!(
                "NK_ENTRY_BOUNDED({}, LayerNormParams, LN_BLOCK_BOUNDS,",
                l.kernel
            );
            assert!(
                src.contains(&line),
                "{}: not declared with {line}",
                l.kernel
            );
        }
    }

    /// Blocks over 256 threads launch only kernels declared with `__launch_bounds__` of at least
    /// that size (without it a kernel may be compiled for more registers than such a block can
    /// have, and fails at launch on a GPU only: layer_norm_bwd_bf16 did at 512 threads).
    #[test]
    fn blocks_over_256_threads_use_bounded_kernels() {
        use crate::backend::cuda::modules::module_of;
        let p = layer_norm_bwd(DType::BF16, 8, LN_BWD_RESIDENT_COLS, 132);
        assert_eq!(p.rows.config.block[0] as usize, LN_BWD_MAX_THREADS);
        for dt in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            let kernel = layer_norm_bwd(dt, 8, LN_BWD_RESIDENT_COLS, 132).rows.kernel;
            let src = module_of(&kernel).expect("a module").source;
            let line =
                format!("NK_ENTRY_BOUNDED({kernel}, LayerNormBwdParams, LN_BWD_MAX_THREADS,");
            assert!(src.contains(&line), "{kernel}: not declared with {line}");
        }
        let define = format!("#define LN_BWD_MAX_THREADS {LN_BWD_MAX_THREADS} ");
        let src = module_of("layer_norm_bwd_f32").expect("a module").source;
        assert!(src.contains(&define), "layer_norm.cu lacks '{define}'");
        let p = group_norm_fwd(DType::F32, ChannelOrder::Nchw, 2, 4, 8192, 132);
        assert_eq!(p.config.block[0] as usize, GN_ROW_MAX_THREADS);
        for dt in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            let kernel = group_norm_fwd(dt, ChannelOrder::Nchw, 1, 1, 1 << 20, 132).kernel;
            let src = module_of(&kernel).expect("a module").source;
            let line = format!("NK_ENTRY_BOUNDED({kernel}, GroupNormParams, GN_ROW_BOUNDS,");
            assert!(src.contains(&line), "{kernel}: not declared with {line}");
        }
        let src = module_of("group_norm_fwd_nchw_f32")
            .expect("a module")
            .source;
        for define in [
            format!("#define GN_ROW_MAX_THREADS {GN_ROW_MAX_THREADS} "),
            "#define GN_ROW_BOUNDS GN_ROW_MAX_THREADS, 1\n".to_string(),
            format!("#define GN_ROW_VALUES {GN_ROW_VALUES}\n"),
        ] {
            assert!(src.contains(&define), "group_norm.cu lacks '{define}'");
        }
    }

    /// NCHW GroupNorm blocks: the smallest power of two from 32 that holds the group at
    /// GN_ROW_VALUES per thread, at most GN_ROW_MAX_THREADS; channels last: 256.
    #[test]
    fn group_norm_blocks_fit_the_group() {
        let threads = |order, len| {
            group_norm_fwd(DType::F32, order, 3, 2, len, 132)
                .config
                .block
        };
        for (len, want) in [
            (1, 32),
            (512, 32),
            (513, 64),
            (4096, 256),
            (4097, 512),
            (8192, 512),
            (1 << 30, 512),
        ] {
            assert_eq!(threads(ChannelOrder::Nchw, len), [want, 1, 1], "len {len}");
            assert_eq!(threads(ChannelOrder::Nhwc, len), [256, 1, 1], "len {len}");
        }
    }

    #[test]
    fn every_planned_kernel_exists_in_the_sources() {
        use crate::backend::cuda::modules::module_of;
        for dt in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            for order in [ChannelOrder::Nchw, ChannelOrder::Nhwc] {
                let names = [
                    layer_norm_fwd(dt, 1, 1, 1).kernel,
                    layer_norm_fwd(dt, 1, 5000, 1).kernel,
                    group_norm_fwd(dt, order, 1, 1, 1, 1).kernel,
                    instance_norm_running(dt, 1, 1).kernel,
                    batch_norm_stats(dt, order, 1, 1, 2, 1).launch.kernel,
                    batch_norm_apply(dt, order, 1, false, 1).kernel,
                    batch_norm_apply(dt, order, 1, true, 1).kernel,
                    lrn_fwd(dt, order, 1, 1).kernel,
                ];
                for n in names {
                    assert!(module_of(&n).is_some(), "{n} missing from kernels/*.cu");
                }
            }
        }
    }

    #[test]
    fn backward_plans() {
        let p = layer_norm_bwd(DType::F32, 1, 7, 132);
        assert_eq!(p.rows.config.block, [32, 1, 1]);
        assert_eq!(p.rows.config.grid, [1, 1, 1]);
        assert_eq!(p.partials, 1);
        assert_eq!(p.workspace_bytes, 2 * 7 * 4);
        let p = layer_norm_bwd(DType::F64, 100_000, LN_BWD_RESIDENT_COLS + 1, 132);
        assert_eq!(p.rows.config.block, [512, 1, 1]);
        assert_eq!(p.params.config.block, [32, 16, 1]);
        assert_eq!(p.params.config.grid, [129, 1, 1]);
        assert_eq!(p.partials, 132, "512-thread blocks: one per SM");
        assert_eq!(p.rows.kernel, "layer_norm_bwd_f64");
        assert_eq!(p.params.kernel, "layer_norm_bwd_params_f64");
        let p = layer_norm_bwd(DType::F32, 4096, 4096, 132);
        assert_eq!(p.rows.config.block, [512, 1, 1]);
        let p = layer_norm_bwd(DType::BF16, 16384, 1024, 132);
        assert_eq!(p.rows.config.block, [128, 1, 1]);
        assert_eq!(p.partials, 4 * 132, "128-thread blocks: four per SM");
        assert_eq!(
            layer_norm_bwd(DType::F32, 100_000, 8, 132).partials,
            16 * 132
        );
        assert_eq!(layer_norm_bwd(DType::F32, 5, 1024, 132).partials, 5);
        let p = layer_norm_bwd(DType::BF16, 3, 1025, 132);
        assert_eq!(p.rows.config.block, [256, 1, 1]);
        let p = layer_norm_bwd(DType::F16, 3, 513, 132);
        assert_eq!(p.rows.config.block, [128, 1, 1]);
        let p = batch_norm_bwd(DType::F16, ChannelOrder::Nhwc, 32, 64, 56 * 56, 132);
        assert_eq!(p.splits, 132);
        assert_eq!(p.counters, 2);
        assert_eq!(p.reduce.config.grid, [2, 132, 1]);
        assert_eq!(p.workspace_bytes, (3 * 132 + 3) * 64 * 4);
        assert_eq!(p.input.kernel, "batch_norm_bwd_input_nhwc_f16");
        let p = group_norm_bwd(DType::F32, ChannelOrder::Nchw, 2, 6, 3, 132);
        assert_eq!(p.launch.config.grid, [6, 1, 1]);
        assert_eq!(p.workspace_bytes, 2 * 2 * 6 * 4);
        assert_eq!(
            lrn_bwd(DType::F64, ChannelOrder::Nchw, 1, 1).config.grid,
            [1, 1, 1]
        );
        use crate::backend::cuda::modules::module_of;
        for dt in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            for order in [ChannelOrder::Nchw, ChannelOrder::Nhwc] {
                let ln = layer_norm_bwd(dt, 1, 1, 1);
                let bn = batch_norm_bwd(dt, order, 1, 1, 2, 1);
                let names = [
                    ln.rows.kernel,
                    ln.params.kernel,
                    bn.reduce.kernel,
                    bn.input.kernel,
                    group_norm_bwd(dt, order, 1, 1, 1, 1).launch.kernel,
                    lrn_bwd(dt, order, 1, 1).kernel,
                ];
                for n in names {
                    assert!(module_of(&n).is_some(), "{n} missing from kernels/*.cu");
                }
            }
        }
    }
}
