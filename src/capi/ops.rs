//! Stateless functional ops: `normkit_<op>(ctx, const args*)`, one args struct per family.
//!
//! Tensors: `x` is the input (rank >= 2, dim 1 = channels, any non-negative strides), `y` the
//! output (same shape and dtype; its own strides; it may be exactly `x` for in-place use).
//! Parameters (weight, bias, running statistics) have the input's dtype or f32 (for f16/bf16
//! input), all the same. Saved statistics (optional outputs for a backward pass) receive the
//! mean and inverse standard deviation of each normalised group, converted to their dtype.

use super::comm::{CCommunicator, normkit_communicator_t};
use super::context::{context_ref, normkit_context_t};
use super::cuda;
use super::error::{CResult, CapiError, boundary, normkit_status_t, normkit_status_t as S};
use super::tensor::{Io, Need, normkit_tensor_t, required};
use super::{read_struct, write_out};
use crate::ops::{
    BatchNormArgs, ForwardStats, Gradients, GroupNormArgs, GroupNormBackwardArgs, InstanceNormArgs,
    LayerNormArgs, LayerNormBackwardArgs, LrnArgs, NormBackwardArgs, SavedStats,
};
use crate::tensor::{Buffer, Tensor, TensorMut};

const REQ: Need = Need::Required;
const OPT: Need = Need::Optional;

pub(crate) type In = (&'static str, *const normkit_tensor_t, Need);

/// Validates the tensors, runs `f` on their views in the context's thread pool, and copies
/// staged outputs back on success.
///
/// # Safety
/// Every non-NULL tensor pointer is valid for the call (the C API's tensor contract).
pub(crate) unsafe fn run_op<const N: usize, const M: usize>(
    ctx: &normkit_context_t,
    inputs: [In; N],
    outputs: [In; M],
    f: impl for<'a> FnOnce([Option<Tensor<'a>>; N], [Option<TensorMut<'a>>; M]) -> CResult<()> + Send,
) -> CResult<()> {
    if ctx.cuda().is_some() {
        return Err(CapiError::new(
            S::NORMKIT_STATUS_DEVICE_MISMATCH,
            "ctx: this call runs on CPU contexts only (on a CUDA context use the functional \
             forward and backward ops)",
        ));
    }
    // SAFETY: forwarded contract.
    let mut io = unsafe { Io::new(&inputs, &outputs) }?;
    {
        let (ins, outs) = io.views::<N, M>()?;
        ctx.install(move || f(ins, outs))?;
    }
    io.write_back();
    Ok(())
}

/// The tensor arguments of a BatchNorm/InstanceNorm forward: (x, weight, bias) read and
/// (y, running_mean, running_var, save_mean, save_invstd) written (the CUDA path shares them).
pub(crate) fn channel_forward_args(
    [x, weight, bias]: [*const normkit_tensor_t; 3],
    [y, rm, rv, sm, si]: [*mut normkit_tensor_t; 5],
) -> ([In; 3], [In; 5]) {
    (
        [("x", x, REQ), ("weight", weight, OPT), ("bias", bias, OPT)],
        [
            ("y", y, REQ),
            ("running_mean", rm, OPT),
            ("running_var", rv, OPT),
            ("save_mean", sm, OPT),
            ("save_invstd", si, OPT),
        ],
    )
}

/// Checks an optional saved-statistics output's element count before the op runs.
fn check_saved(name: &str, t: &Option<TensorMut>, expected: usize) -> CResult<()> {
    match t {
        Some(t) if t.numel() != expected => Err(CapiError::new(
            S::NORMKIT_STATUS_SHAPE_MISMATCH,
            format!("{name}: expected {expected} elements, got {}", t.numel()),
        )),
        _ => Ok(()),
    }
}

fn write_saved(t: Option<TensorMut>, b: &Buffer) {
    if let Some(mut t) = t {
        if t.numel() == b.len() {
            let d = b.as_data();
            for i in 0..b.len() {
                t.set_linear_f64(i, d.get_f64(i));
            }
        }
    }
}

fn write_stats(mean: Option<TensorMut>, invstd: Option<TensorMut>, s: &SavedStats) {
    write_saved(mean, &s.mean);
    write_saved(invstd, &s.invstd);
}

fn dim(x: &Tensor, i: usize) -> Option<usize> {
    x.shape().get(i).copied()
}

fn lrn_args(size: i64, alpha: f64, beta: f64, k: f64) -> CResult<LrnArgs> {
    Ok(LrnArgs {
        size: to_usize("args.size", size)?,
        alpha,
        beta,
        k,
    })
}

fn to_usize(arg: &str, v: i64) -> CResult<usize> {
    usize::try_from(v).map_err(|_| CapiError::invalid(arg, format!("must be >= 0, got {v}")))
}

// ---------------------------------------------------------------------------------------------
// BatchNorm

/// Arguments of normkit_batch_norm_forward_training / _inference (F.batch_norm).
/// Initialise with normkit_batch_norm_args_init, then set the tensors.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_batch_norm_args_t {
    /// sizeof(normkit_batch_norm_args_t), set by the _init function.
    pub struct_size: u32,
    /// PyTorch momentum=None: a cumulative average with factor 1/num_batches_tracked (needs
    /// num_batches_tracked when running statistics are updated). Default false.
    pub momentum_cumulative: bool,
    /// Input (N, C, *), required.
    pub x: *const normkit_tensor_t,
    /// Output, required: x's shape and dtype, any non-overlapping strides; may be x itself.
    pub y: *mut normkit_tensor_t,
    /// Per-channel scale (C elements) or NULL for 1.
    pub weight: *const normkit_tensor_t,
    /// Per-channel shift (C elements) or NULL for 0.
    pub bias: *const normkit_tensor_t,
    /// Running mean (C): updated in training when given, required in inference.
    pub running_mean: *mut normkit_tensor_t,
    /// Running (unbiased) variance (C): updated in training when given, required in inference.
    pub running_var: *mut normkit_tensor_t,
    /// Batch counter (training only): incremented by each successful training call that
    /// updates running statistics; NULL = none.
    pub num_batches_tracked: *mut i64,
    /// Optional output (training only): the batch mean per channel (C elements).
    pub save_mean: *mut normkit_tensor_t,
    /// Optional output (training only): 1/sqrt(biased batch var + eps) per channel (C).
    pub save_invstd: *mut normkit_tensor_t,
    /// Running-statistics factor, default 0.1 (ignored when momentum_cumulative).
    pub momentum: f64,
    /// Added to the variance, default 1e-5 (> 0 in training, >= 0 in inference).
    pub eps: f64,
}

impl Default for normkit_batch_norm_args_t {
    fn default() -> Self {
        normkit_batch_norm_args_t {
            struct_size: size_of::<Self>() as u32,
            momentum_cumulative: false,
            x: std::ptr::null(),
            y: std::ptr::null_mut(),
            weight: std::ptr::null(),
            bias: std::ptr::null(),
            running_mean: std::ptr::null_mut(),
            running_var: std::ptr::null_mut(),
            num_batches_tracked: std::ptr::null_mut(),
            save_mean: std::ptr::null_mut(),
            save_invstd: std::ptr::null_mut(),
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// Fills `args` with PyTorch's defaults (momentum 0.1, eps 1e-5, every tensor NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_batch_norm_args_init(
    args: *mut normkit_batch_norm_args_t,
) -> normkit_status_t {
    boundary!("normkit_batch_norm_args_init", {
        // SAFETY: args is NULL or writable (caller contract).
        unsafe { write_out("args", args, normkit_batch_norm_args_t::default()) }
    })
}

/// How a batch-norm forward runs.
#[derive(Clone, Copy)]
enum BnMode<'c> {
    Inference,
    Training,
    /// Training with statistics over every rank of the group.
    Sync(&'c CCommunicator),
}

/// Runs a batch-norm forward; returns the element count per channel the statistics were
/// computed over (the global count for BnMode::Sync).
///
/// # Safety
/// The args' tensor pointers follow the tensor contract; num_batches_tracked is NULL or valid.
unsafe fn batch_norm_call(
    ctx: *const normkit_context_t,
    args: *const normkit_batch_norm_args_t,
    mode: BnMode,
) -> CResult<f64> {
    let training = !matches!(mode, BnMode::Inference);
    // SAFETY: ctx is NULL or live (caller contract).
    let ctx = unsafe { context_ref(ctx) }?;
    // SAFETY: args is NULL or readable (caller contract).
    let a = unsafe { read_struct("args", args) }?;
    if let Some(dev) = ctx.cuda() {
        let comm: Option<&dyn crate::comm::Communicator> = match mode {
            BnMode::Sync(c) => Some(c),
            _ => None,
        };
        // SAFETY: the tensor and counter contract, forwarded.
        return unsafe { cuda::batch_norm(dev, &a, training, comm) };
    }
    let mut counter = if training && !a.num_batches_tracked.is_null() {
        // SAFETY: non-NULL and readable (caller contract); read_unaligned needs no alignment.
        Some(unsafe { a.num_batches_tracked.read_unaligned() })
    } else {
        None
    };
    let momentum = (!a.momentum_cumulative).then_some(a.momentum);
    let eps = a.eps;
    let counter_ref = counter.as_mut();
    let mut global_count = 0.0;
    let count_ref = &mut global_count;
    let (ins, outs) = channel_forward_args(
        [a.x, a.weight, a.bias],
        [
            a.y,
            a.running_mean,
            a.running_var,
            a.save_mean,
            a.save_invstd,
        ],
    );
    // SAFETY: the tensor contract, forwarded.
    unsafe {
        run_op(
            ctx,
            ins,
            outs,
            move |[x, weight, bias], [y, running_mean, running_var, sm, si]| {
                let x = required(x, "x")?;
                let mut y = required(y, "y")?;
                if let (true, Some(c)) = (training, dim(&x, 1)) {
                    check_saved("save_mean", &sm, c)?;
                    check_saved("save_invstd", &si, c)?;
                }
                let args = BatchNormArgs {
                    weight,
                    bias,
                    running_mean,
                    running_var,
                    num_batches_tracked: counter_ref,
                    training,
                    momentum,
                    eps,
                };
                let stats = match mode {
                    BnMode::Sync(comm) => {
                        let (stats, n) = crate::ops::sync_batch_norm(&x, &mut y, args, comm)?;
                        *count_ref = n;
                        stats
                    }
                    _ => {
                        let stats = crate::ops::batch_norm(&x, &mut y, args)?;
                        let c = dim(&x, 1).unwrap_or(1).max(1);
                        *count_ref = (x.numel() / c) as f64;
                        stats
                    }
                };
                if training {
                    write_stats(sm, si, &stats);
                }
                Ok(())
            },
        )
    }?;
    if let Some(n) = counter {
        // SAFETY: non-NULL (counter is Some only then) and writable (caller contract).
        unsafe { a.num_batches_tracked.write_unaligned(n) };
    }
    Ok(global_count)
}

/// Batch normalisation in training mode: normalises x with its per-channel batch mean and
/// biased variance, updates running_mean/running_var (when given) with the unbiased variance
/// (factor momentum, or 1/num_batches_tracked when momentum_cumulative), increments
/// *num_batches_tracked (when given), and writes save_mean/save_invstd (when given).
///
/// Errors: NULL ctx/args/x/y (NULL_POINTER), struct_size (STRUCT_SIZE), one value per channel
/// or eps <= 0 (INVALID_ARGUMENT), shapes (SHAPE_MISMATCH), dtypes (UNSUPPORTED_DTYPE),
/// strides/overlap (UNSUPPORTED_LAYOUT), non-host tensors (DEVICE_MISMATCH).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_batch_norm_forward_training(
    ctx: *mut normkit_context_t,
    args: *const normkit_batch_norm_args_t,
) -> normkit_status_t {
    boundary!("normkit_batch_norm_forward_training", {
        // SAFETY: the caller's contract for ctx and args.
        unsafe { batch_norm_call(ctx, args, BnMode::Training) }.map(drop)
    })
}

/// Batch normalisation in inference mode: y = (x - running_mean) / sqrt(running_var + eps) *
/// weight + bias. running_mean and running_var are required and not modified;
/// num_batches_tracked, save_mean and save_invstd are ignored.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_batch_norm_forward_inference(
    ctx: *mut normkit_context_t,
    args: *const normkit_batch_norm_args_t,
) -> normkit_status_t {
    boundary!("normkit_batch_norm_forward_inference", {
        // SAFETY: the caller's contract for ctx and args.
        unsafe { batch_norm_call(ctx, args, BnMode::Inference) }.map(drop)
    })
}

/// SyncBatchNorm's training forward on this rank (torch.nn.SyncBatchNorm in training): as
/// normkit_batch_norm_forward_training, but the batch statistics are those of the union of
/// every rank's local batch, exchanged with one comm->all_gather of 2*C + 1 doubles per rank;
/// every rank ends with the same running statistics (unbiased with the global count). x may
/// have an empty batch (N = 0) on some ranks; they still take part. `*global_count` receives
/// the element count per channel over all ranks, which normkit_sync_batch_norm_backward needs.
/// With comm->world_size 1 this is normkit_batch_norm_forward_training. A failing callback:
/// NORMKIT_STATUS_COMMUNICATOR, with the running statistics and the counter unchanged.
/// (Inference needs no communicator: use normkit_batch_norm_forward_inference.)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_sync_batch_norm_forward(
    ctx: *mut normkit_context_t,
    args: *const normkit_batch_norm_args_t,
    comm: *const normkit_communicator_t,
    global_count: *mut f64,
) -> normkit_status_t {
    boundary!("normkit_sync_batch_norm_forward", {
        // SAFETY: comm is NULL or a readable table (caller contract).
        let comm = unsafe { CCommunicator::from_c("comm", comm) }?;
        if global_count.is_null() {
            return Err(CapiError::null("global_count"));
        }
        // SAFETY: the caller's contract for ctx and args.
        let n = unsafe { batch_norm_call(ctx, args, BnMode::Sync(&comm)) }?;
        // SAFETY: global_count is NULL or writable (caller contract).
        unsafe { write_out("global_count", global_count, n) }
    })
}

// ---------------------------------------------------------------------------------------------
// InstanceNorm

/// Arguments of normkit_instance_norm_forward (F.instance_norm).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_instance_norm_args_t {
    /// sizeof(normkit_instance_norm_args_t), set by the _init function.
    pub struct_size: u32,
    /// Normalise with each (n, c) instance's own statistics (default true) or with the running
    /// statistics (false; they are then required).
    pub use_input_stats: bool,
    /// Input (N, C, *), required.
    pub x: *const normkit_tensor_t,
    /// Output, required (x's shape and dtype; may be x itself).
    pub y: *mut normkit_tensor_t,
    /// Per-channel scale (C) or NULL.
    pub weight: *const normkit_tensor_t,
    /// Per-channel shift (C) or NULL.
    pub bias: *const normkit_tensor_t,
    /// Running mean (C) or NULL; with use_input_stats it is updated with the batch average of
    /// the instance means.
    pub running_mean: *mut normkit_tensor_t,
    /// Running variance (C) or NULL; updated with the batch average of the unbiased instance
    /// variances.
    pub running_var: *mut normkit_tensor_t,
    /// Optional output (use_input_stats only): mean per (n, c), N*C elements.
    pub save_mean: *mut normkit_tensor_t,
    /// Optional output (use_input_stats only): inverse std per (n, c), N*C elements.
    pub save_invstd: *mut normkit_tensor_t,
    /// Running-statistics factor, default 0.1.
    pub momentum: f64,
    /// Default 1e-5.
    pub eps: f64,
}

impl Default for normkit_instance_norm_args_t {
    fn default() -> Self {
        normkit_instance_norm_args_t {
            struct_size: size_of::<Self>() as u32,
            use_input_stats: true,
            x: std::ptr::null(),
            y: std::ptr::null_mut(),
            weight: std::ptr::null(),
            bias: std::ptr::null(),
            running_mean: std::ptr::null_mut(),
            running_var: std::ptr::null_mut(),
            save_mean: std::ptr::null_mut(),
            save_invstd: std::ptr::null_mut(),
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// Fills `args` with PyTorch's defaults (use_input_stats, momentum 0.1, eps 1e-5).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_instance_norm_args_init(
    args: *mut normkit_instance_norm_args_t,
) -> normkit_status_t {
    boundary!("normkit_instance_norm_args_init", {
        // SAFETY: args is NULL or writable (caller contract).
        unsafe { write_out("args", args, normkit_instance_norm_args_t::default()) }
    })
}

/// Instance normalisation: statistics per (n, c) over the spatial dims.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_instance_norm_forward(
    ctx: *mut normkit_context_t,
    args: *const normkit_instance_norm_args_t,
) -> normkit_status_t {
    boundary!("normkit_instance_norm_forward", {
        // SAFETY: ctx is NULL or live (caller contract).
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: args is NULL or readable (caller contract).
        let a = unsafe { read_struct("args", args) }?;
        if let Some(dev) = ctx.cuda() {
            // SAFETY: the tensor contract, forwarded.
            return unsafe { cuda::instance_norm(dev, &a) };
        }
        let (use_input_stats, momentum, eps) = (a.use_input_stats, a.momentum, a.eps);
        let (ins, outs) = channel_forward_args(
            [a.x, a.weight, a.bias],
            [
                a.y,
                a.running_mean,
                a.running_var,
                a.save_mean,
                a.save_invstd,
            ],
        );
        // SAFETY: the tensor contract, forwarded.
        unsafe {
            run_op(
                ctx,
                ins,
                outs,
                move |[x, weight, bias], [y, running_mean, running_var, sm, si]| {
                    let x = required(x, "x")?;
                    let mut y = required(y, "y")?;
                    if let (true, Some(n), Some(c)) = (use_input_stats, dim(&x, 0), dim(&x, 1)) {
                        check_saved("save_mean", &sm, n * c)?;
                        check_saved("save_invstd", &si, n * c)?;
                    }
                    let stats = crate::ops::instance_norm(
                        &x,
                        &mut y,
                        InstanceNormArgs {
                            weight,
                            bias,
                            running_mean,
                            running_var,
                            use_input_stats,
                            momentum,
                            eps,
                        },
                    )?;
                    write_stats(sm, si, &stats);
                    Ok(())
                },
            )
        }
    })
}

// ---------------------------------------------------------------------------------------------
// GroupNorm

/// Arguments of normkit_group_norm_forward (F.group_norm).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_group_norm_args_t {
    /// sizeof(normkit_group_norm_args_t), set by the _init function.
    pub struct_size: u32,
    /// Input (N, C, *), required.
    pub x: *const normkit_tensor_t,
    /// Output, required (x's shape and dtype; may be x itself).
    pub y: *mut normkit_tensor_t,
    /// Per-channel scale (C) or NULL.
    pub weight: *const normkit_tensor_t,
    /// Per-channel shift (C) or NULL.
    pub bias: *const normkit_tensor_t,
    /// Optional output: mean per (n, group), N*num_groups elements.
    pub save_mean: *mut normkit_tensor_t,
    /// Optional output: inverse std per (n, group), N*num_groups elements.
    pub save_invstd: *mut normkit_tensor_t,
    /// Number of groups (> 0, divides C). No default: _init sets 1.
    pub num_groups: i64,
    /// Default 1e-5.
    pub eps: f64,
}

impl Default for normkit_group_norm_args_t {
    fn default() -> Self {
        normkit_group_norm_args_t {
            struct_size: size_of::<Self>() as u32,
            x: std::ptr::null(),
            y: std::ptr::null_mut(),
            weight: std::ptr::null(),
            bias: std::ptr::null(),
            save_mean: std::ptr::null_mut(),
            save_invstd: std::ptr::null_mut(),
            num_groups: 1,
            eps: 1e-5,
        }
    }
}

/// Fills `args` with the defaults (num_groups 1, eps 1e-5).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_group_norm_args_init(
    args: *mut normkit_group_norm_args_t,
) -> normkit_status_t {
    boundary!("normkit_group_norm_args_init", {
        // SAFETY: args is NULL or writable (caller contract).
        unsafe { write_out("args", args, normkit_group_norm_args_t::default()) }
    })
}

/// Group normalisation: statistics per (n, group of C/num_groups consecutive channels).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_group_norm_forward(
    ctx: *mut normkit_context_t,
    args: *const normkit_group_norm_args_t,
) -> normkit_status_t {
    boundary!("normkit_group_norm_forward", {
        // SAFETY: ctx is NULL or live (caller contract).
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: args is NULL or readable (caller contract).
        let a = unsafe { read_struct("args", args) }?;
        let groups = to_usize("args.num_groups", a.num_groups)?;
        if let Some(dev) = ctx.cuda() {
            // SAFETY: the tensor contract, forwarded.
            return unsafe { cuda::group_norm(dev, &a, groups) };
        }
        let eps = a.eps;
        let t = RowTensors::of(&a);
        // SAFETY: the tensor contract, forwarded.
        unsafe {
            row_stats_forward(
                ctx,
                t,
                move |x| Ok(dim(x, 0).map(|n| n * groups)),
                move |x, y, weight, bias| {
                    let args = GroupNormArgs {
                        num_groups: groups,
                        weight,
                        bias,
                        eps,
                    };
                    Ok(crate::ops::group_norm(x, y, args)?)
                },
            )
        }
    })
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/// Arguments of normkit_layer_norm_forward (F.layer_norm).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_layer_norm_args_t {
    /// sizeof(normkit_layer_norm_args_t), set by the _init function.
    pub struct_size: u32,
    /// How many trailing dims of x are normalised (PyTorch's len(normalized_shape)); the
    /// normalised shape is x's last normalized_ndim dims. Default 1.
    pub normalized_ndim: i32,
    /// Input (*, normalized shape), required.
    pub x: *const normkit_tensor_t,
    /// Output, required (x's shape and dtype; may be x itself).
    pub y: *mut normkit_tensor_t,
    /// Elementwise scale with the normalised shape, or NULL.
    pub weight: *const normkit_tensor_t,
    /// Elementwise shift with the normalised shape, or NULL.
    pub bias: *const normkit_tensor_t,
    /// Optional output: mean per row (product of the leading dims).
    pub save_mean: *mut normkit_tensor_t,
    /// Optional output: inverse std per row.
    pub save_invstd: *mut normkit_tensor_t,
    /// Default 1e-5.
    pub eps: f64,
}

impl Default for normkit_layer_norm_args_t {
    fn default() -> Self {
        normkit_layer_norm_args_t {
            struct_size: size_of::<Self>() as u32,
            normalized_ndim: 1,
            x: std::ptr::null(),
            y: std::ptr::null_mut(),
            weight: std::ptr::null(),
            bias: std::ptr::null(),
            save_mean: std::ptr::null_mut(),
            save_invstd: std::ptr::null_mut(),
            eps: 1e-5,
        }
    }
}

/// Fills `args` with the defaults (normalized_ndim 1, eps 1e-5).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_layer_norm_args_init(
    args: *mut normkit_layer_norm_args_t,
) -> normkit_status_t {
    boundary!("normkit_layer_norm_args_init", {
        // SAFETY: args is NULL or writable (caller contract).
        unsafe { write_out("args", args, normkit_layer_norm_args_t::default()) }
    })
}

/// Layer normalisation over the trailing normalized_ndim dims of x.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_layer_norm_forward(
    ctx: *mut normkit_context_t,
    args: *const normkit_layer_norm_args_t,
) -> normkit_status_t {
    boundary!("normkit_layer_norm_forward", {
        // SAFETY: ctx is NULL or live (caller contract).
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: args is NULL or readable (caller contract).
        let a = unsafe { read_struct("args", args) }?;
        if let Some(dev) = ctx.cuda() {
            // SAFETY: the tensor contract, forwarded.
            return unsafe { cuda::layer_norm(dev, &a) };
        }
        let (nd, eps) = (a.normalized_ndim, a.eps);
        let t = RowTensors::of(&a);
        // SAFETY: the tensor contract, forwarded.
        unsafe {
            row_stats_forward(
                ctx,
                t,
                move |x| {
                    let nd = normalized_dims(x, nd)?;
                    Ok(Some(x.shape()[..x.rank() - nd].iter().product()))
                },
                move |x, y, weight, bias| {
                    let nd = normalized_dims(x, nd)?;
                    let args = LayerNormArgs {
                        normalized_shape: x.shape()[x.rank() - nd..].to_vec(),
                        weight,
                        bias,
                        eps,
                    };
                    Ok(crate::ops::layer_norm(x, y, args)?)
                },
            )
        }
    })
}

/// x's last `nd` dims are normalised: checks 1 <= nd <= x's rank.
fn normalized_dims(x: &Tensor, nd: i32) -> CResult<usize> {
    cuda::normalized_dims(x.rank(), nd)
}

/// The tensors of a forward with one saved statistic per row (GroupNorm, LayerNorm).
struct RowTensors {
    x: *const normkit_tensor_t,
    y: *mut normkit_tensor_t,
    weight: *const normkit_tensor_t,
    bias: *const normkit_tensor_t,
    save_mean: *mut normkit_tensor_t,
    save_invstd: *mut normkit_tensor_t,
}

/// The args structs [`RowTensors`] is read from.
trait HasRowTensors {
    fn row_tensors(&self) -> RowTensors;
}

macro_rules! impl_row_tensors {
    ($($t:ty),*) => {$(
        impl HasRowTensors for $t {
            fn row_tensors(&self) -> RowTensors {
                RowTensors {
                    x: self.x,
                    y: self.y,
                    weight: self.weight,
                    bias: self.bias,
                    save_mean: self.save_mean,
                    save_invstd: self.save_invstd,
                }
            }
        }
    )*};
}
impl_row_tensors!(normkit_group_norm_args_t, normkit_layer_norm_args_t);

impl RowTensors {
    fn of(a: &impl HasRowTensors) -> RowTensors {
        a.row_tensors()
    }
}

/// Runs a row-statistics forward: validates the tensors, checks the saved-statistics outputs
/// against `rows(x)` (when x's shape gives it) before anything is written, runs `op` and writes the saved statistics.
///
/// # Safety
/// Every non-NULL tensor pointer in `t` follows the tensor contract.
unsafe fn row_stats_forward(
    ctx: &normkit_context_t,
    t: RowTensors,
    rows: impl FnOnce(&Tensor) -> CResult<Option<usize>> + Send,
    op: impl for<'a> FnOnce(
        &Tensor<'a>,
        &mut TensorMut<'a>,
        Option<Tensor<'a>>,
        Option<Tensor<'a>>,
    ) -> CResult<SavedStats>
    + Send,
) -> CResult<()> {
    // SAFETY: the tensor contract, forwarded.
    unsafe {
        run_op(
            ctx,
            [
                ("x", t.x, REQ),
                ("weight", t.weight, OPT),
                ("bias", t.bias, OPT),
            ],
            [
                ("y", t.y, REQ),
                ("save_mean", t.save_mean, OPT),
                ("save_invstd", t.save_invstd, OPT),
            ],
            move |[x, weight, bias], [y, sm, si]| {
                let x = required(x, "x")?;
                let mut y = required(y, "y")?;
                if let Some(n) = rows(&x)? {
                    check_saved("save_mean", &sm, n)?;
                    check_saved("save_invstd", &si, n)?;
                }
                let stats = op(&x, &mut y, weight, bias)?;
                write_stats(sm, si, &stats);
                Ok(())
            },
        )
    }
}

// ---------------------------------------------------------------------------------------------
// LocalResponseNorm

/// Arguments of normkit_local_response_norm_forward (F.local_response_norm).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_local_response_norm_args_t {
    /// sizeof(normkit_local_response_norm_args_t), set by the _init function.
    pub struct_size: u32,
    /// Input (N, C, *) with at least one spatial dim, required.
    pub x: *const normkit_tensor_t,
    /// Output, required (x's shape and dtype; may be x itself).
    pub y: *mut normkit_tensor_t,
    /// Window size in channels (> 0). No default in PyTorch: _init sets 0, which must be
    /// replaced.
    pub size: i64,
    /// Default 1e-4.
    pub alpha: f64,
    /// Default 0.75.
    pub beta: f64,
    /// Default 1.0.
    pub k: f64,
}

impl Default for normkit_local_response_norm_args_t {
    fn default() -> Self {
        let d = LrnArgs::new(0);
        normkit_local_response_norm_args_t {
            struct_size: size_of::<Self>() as u32,
            x: std::ptr::null(),
            y: std::ptr::null_mut(),
            size: 0,
            alpha: d.alpha,
            beta: d.beta,
            k: d.k,
        }
    }
}

/// Fills `args` with PyTorch's defaults (alpha 1e-4, beta 0.75, k 1; size 0 must be set).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_local_response_norm_args_init(
    args: *mut normkit_local_response_norm_args_t,
) -> normkit_status_t {
    boundary!("normkit_local_response_norm_args_init", {
        // SAFETY: args is NULL or writable (caller contract).
        unsafe { write_out("args", args, normkit_local_response_norm_args_t::default()) }
    })
}

/// Local response normalisation over a window of `size` neighbouring channels.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_local_response_norm_forward(
    ctx: *mut normkit_context_t,
    args: *const normkit_local_response_norm_args_t,
) -> normkit_status_t {
    boundary!("normkit_local_response_norm_forward", {
        // SAFETY: ctx is NULL or live (caller contract).
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: args is NULL or readable (caller contract).
        let a = unsafe { read_struct("args", args) }?;
        let p = lrn_args(a.size, a.alpha, a.beta, a.k)?;
        if let Some(dev) = ctx.cuda() {
            // SAFETY: the tensor contract, forwarded.
            return unsafe { cuda::local_response_norm(dev, &a, p) };
        }
        // SAFETY: the tensor contract, forwarded.
        unsafe {
            run_op(
                ctx,
                [("x", a.x, REQ)],
                [("y", a.y, REQ)],
                move |[x], [y]| {
                    let x = required(x, "x")?;
                    let mut y = required(y, "y")?;
                    Ok(crate::ops::local_response_norm(&x, &mut y, p)?)
                },
            )
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Backward

/// Arguments of normkit_batch_norm_backward, normkit_instance_norm_backward and
/// normkit_sync_batch_norm_backward. Initialise with normkit_norm_backward_args_init.
///
/// The statistics are the ones the forward normalised with: either save_mean + save_invstd
/// (the forward's saved outputs, after a training forward / use_input_stats) or running_mean +
/// running_var + eps (after an inference forward: frozen BatchNorm); exactly one pair.
/// Each gradient output is optional: NULL means "not computed".
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_norm_backward_args_t {
    /// sizeof(normkit_norm_backward_args_t), set by the _init function.
    pub struct_size: u32,
    /// Add into grad_weight/grad_bias instead of overwriting them. Default false.
    pub accumulate: bool,
    /// The forward's input (N, C, *), required.
    pub x: *const normkit_tensor_t,
    /// dL/dy, required: x's shape and dtype.
    pub grad_output: *const normkit_tensor_t,
    /// The forward's weight (C) or NULL (weight 1).
    pub weight: *const normkit_tensor_t,
    /// Saved mean: C elements (batch norm) or N*C (instance norm), the saved-stats dtype
    /// (float32 for float16/bfloat16 input, else the input's).
    pub save_mean: *const normkit_tensor_t,
    /// Saved inverse std, like save_mean.
    pub save_invstd: *const normkit_tensor_t,
    /// Running mean (C) the inference forward used.
    pub running_mean: *const normkit_tensor_t,
    /// Running variance (C) the inference forward used.
    pub running_var: *const normkit_tensor_t,
    /// Optional output dL/dx: x's shape and dtype, any strides; may be grad_output itself.
    pub grad_input: *mut normkit_tensor_t,
    /// Optional output dL/dweight (C), the parameters' dtype.
    pub grad_weight: *mut normkit_tensor_t,
    /// Optional output dL/dbias (C), the parameters' dtype.
    pub grad_bias: *mut normkit_tensor_t,
    /// The inference forward's eps (used with running statistics only). Default 1e-5.
    pub eps: f64,
}

impl Default for normkit_norm_backward_args_t {
    fn default() -> Self {
        normkit_norm_backward_args_t {
            struct_size: size_of::<Self>() as u32,
            accumulate: false,
            x: std::ptr::null(),
            grad_output: std::ptr::null(),
            weight: std::ptr::null(),
            save_mean: std::ptr::null(),
            save_invstd: std::ptr::null(),
            running_mean: std::ptr::null(),
            running_var: std::ptr::null(),
            grad_input: std::ptr::null_mut(),
            grad_weight: std::ptr::null_mut(),
            grad_bias: std::ptr::null_mut(),
            eps: 1e-5,
        }
    }
}

/// Fills `args` with the defaults (eps 1e-5, accumulate false, every tensor NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_norm_backward_args_init(
    args: *mut normkit_norm_backward_args_t,
) -> normkit_status_t {
    boundary!("normkit_norm_backward_args_init", {
        // SAFETY: args is NULL or writable (caller contract).
        unsafe { write_out("args", args, normkit_norm_backward_args_t::default()) }
    })
}

/// The tensors every backward op shares (`saved`: whether save_mean/save_invstd are required).
struct BackwardTensors {
    x: *const normkit_tensor_t,
    grad_output: *const normkit_tensor_t,
    weight: *const normkit_tensor_t,
    save_mean: *const normkit_tensor_t,
    save_invstd: *const normkit_tensor_t,
    running_mean: *const normkit_tensor_t,
    running_var: *const normkit_tensor_t,
    grad_input: *mut normkit_tensor_t,
    grad_weight: *mut normkit_tensor_t,
    grad_bias: *mut normkit_tensor_t,
    accumulate: bool,
    saved: Need,
}

impl BackwardTensors {
    /// The same tensors for the CUDA path (`running`: the running statistics pair).
    fn device_args(&self, running: bool, eps: f64) -> cuda::BackwardArgs {
        let stats = if running {
            [self.running_mean, self.running_var]
        } else {
            [self.save_mean, self.save_invstd]
        };
        cuda::BackwardArgs {
            x: self.x,
            grad_output: self.grad_output,
            weight: self.weight,
            stats,
            running,
            eps,
            grads: [self.grad_input, self.grad_weight, self.grad_bias],
            accumulate: self.accumulate,
        }
    }
}

/// Views of [`BackwardTensors`] for one call.
struct BackwardViews<'a> {
    x: Tensor<'a>,
    g: Tensor<'a>,
    weight: Option<Tensor<'a>>,
    mean: Option<Tensor<'a>>,
    invstd: Option<Tensor<'a>>,
    running_mean: Option<Tensor<'a>>,
    running_var: Option<Tensor<'a>>,
    grads: Gradients<'a>,
}

/// Validates the tensors, runs `f` on their views in the context's pool, writes staged
/// outputs back on success.
///
/// # Safety
/// Every non-NULL tensor pointer in `t` follows the tensor contract.
unsafe fn run_backward(
    ctx: &normkit_context_t,
    t: BackwardTensors,
    f: impl for<'a> FnOnce(BackwardViews<'a>) -> CResult<()> + Send,
) -> CResult<()> {
    let accumulate = t.accumulate;
    // SAFETY: the tensor contract, forwarded.
    unsafe {
        run_op(
            ctx,
            [
                ("x", t.x, REQ),
                ("grad_output", t.grad_output, REQ),
                ("weight", t.weight, OPT),
                ("save_mean", t.save_mean, t.saved),
                ("save_invstd", t.save_invstd, t.saved),
                ("running_mean", t.running_mean, OPT),
                ("running_var", t.running_var, OPT),
            ],
            [
                ("grad_input", t.grad_input, OPT),
                ("grad_weight", t.grad_weight, OPT),
                ("grad_bias", t.grad_bias, OPT),
            ],
            move |[x, g, weight, mean, invstd, running_mean, running_var], [gi, gw, gb]| {
                f(BackwardViews {
                    x: required(x, "x")?,
                    g: required(g, "grad_output")?,
                    weight,
                    mean,
                    invstd,
                    running_mean,
                    running_var,
                    grads: Gradients {
                        grad_input: gi,
                        grad_weight: gw,
                        grad_bias: gb,
                        accumulate,
                    },
                })
            },
        )
    }
}

/// Which channel op a normkit_norm_backward_args_t call is for.
#[derive(Clone, Copy)]
enum ChannelOp<'c> {
    Batch,
    Instance,
    /// SyncBatchNorm with its group and the forward's global count.
    SyncBatch(&'c CCommunicator, f64),
}

/// # Safety
/// ctx and args are NULL or valid; the args' tensors follow the tensor contract.
unsafe fn channel_backward(
    ctx: *const normkit_context_t,
    args: *const normkit_norm_backward_args_t,
    op: ChannelOp,
) -> CResult<()> {
    // SAFETY: ctx is NULL or live (caller contract).
    let ctx = unsafe { context_ref(ctx) }?;
    // SAFETY: args is NULL or readable (caller contract).
    let a = unsafe { read_struct("args", args) }?;
    let saved = match (
        a.save_mean.is_null(),
        a.save_invstd.is_null(),
        a.running_mean.is_null(),
        a.running_var.is_null(),
    ) {
        (false, false, true, true) => true,
        (true, true, false, false) => false,
        (false, true, true, true) => return Err(CapiError::null("args.save_invstd")),
        (true, false, true, true) => return Err(CapiError::null("args.save_mean")),
        (true, true, false, true) => return Err(CapiError::null("args.running_var")),
        (true, true, true, false) => return Err(CapiError::null("args.running_mean")),
        (true, true, true, true) => {
            return Err(CapiError::null(
                "args.save_mean/save_invstd and args.running_mean/running_var",
            ));
        }
        _ => {
            return Err(CapiError::invalid(
                "args",
                "give either save_mean + save_invstd (after a training forward) or \
                 running_mean + running_var (after an inference forward), not both",
            ));
        }
    };
    let eps = a.eps;
    if !saved && (eps.is_nan() || eps < 0.0) {
        return Err(CapiError::invalid(
            "args.eps",
            format!("must be >= 0, got {eps}"),
        ));
    }
    let t = BackwardTensors {
        x: a.x,
        grad_output: a.grad_output,
        weight: a.weight,
        save_mean: a.save_mean,
        save_invstd: a.save_invstd,
        running_mean: a.running_mean,
        running_var: a.running_var,
        grad_input: a.grad_input,
        grad_weight: a.grad_weight,
        grad_bias: a.grad_bias,
        accumulate: a.accumulate,
        saved: OPT,
    };
    if let Some(dev) = ctx.cuda() {
        let op = match op {
            ChannelOp::Batch => cuda::ChannelBackward::Batch,
            ChannelOp::Instance => cuda::ChannelBackward::Instance,
            ChannelOp::SyncBatch(comm, n) => cuda::ChannelBackward::SyncBatch(comm, n),
        };
        // SAFETY: the tensor contract, forwarded.
        return unsafe { cuda::channel_backward(dev, &t.device_args(!saved, eps), op) };
    }
    // SAFETY: the tensor contract, forwarded.
    unsafe {
        run_backward(ctx, t, move |v| {
            let stats = match (v.mean, v.invstd, v.running_mean, v.running_var) {
                (Some(mean), Some(invstd), _, _) => ForwardStats::Saved { mean, invstd },
                (_, _, Some(mean), Some(var)) => ForwardStats::Running { mean, var, eps },
                _ => return Err(CapiError::internal("statistics missing after validation")),
            };
            let args = NormBackwardArgs {
                weight: v.weight,
                stats,
                grads: v.grads,
            };
            match op {
                ChannelOp::Batch => crate::ops::batch_norm_backward(&v.g, &v.x, args),
                ChannelOp::Instance => crate::ops::instance_norm_backward(&v.g, &v.x, args),
                ChannelOp::SyncBatch(comm, n) => {
                    crate::ops::sync_batch_norm_backward(&v.g, &v.x, args, n, comm)
                }
            }?;
            Ok(())
        })
    }
}

/// Backward of batch normalisation (F.batch_norm): with save_mean/save_invstd (training) dx =
/// γ·r·(g − mean(g) − x̂·mean(g·x̂)); with running_mean/running_var/eps (frozen BatchNorm) dx =
/// g·γ/sqrt(running_var + eps). dweight = Σ g·x̂, dbias = Σ g per channel.
///
/// Errors: NULL ctx/args/x/grad_output (NULL_POINTER), neither or half a statistics pair
/// (NULL_POINTER), both pairs or eps < 0 (INVALID_ARGUMENT), shapes and element counts
/// (SHAPE_MISMATCH), dtypes (UNSUPPORTED_DTYPE), overlapping outputs (UNSUPPORTED_LAYOUT).
/// Nothing is written on failure.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_batch_norm_backward(
    ctx: *mut normkit_context_t,
    args: *const normkit_norm_backward_args_t,
) -> normkit_status_t {
    boundary!("normkit_batch_norm_backward", {
        // SAFETY: the caller's contract for ctx and args.
        unsafe { channel_backward(ctx, args, ChannelOp::Batch) }
    })
}

/// Backward of instance normalisation (F.instance_norm): save_mean/save_invstd have N*C
/// elements (use_input_stats), or running_mean/running_var (C) after a forward with
/// use_input_stats false. Parameter gradients sum over the batch. Errors as
/// normkit_batch_norm_backward.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_instance_norm_backward(
    ctx: *mut normkit_context_t,
    args: *const normkit_norm_backward_args_t,
) -> normkit_status_t {
    boundary!("normkit_instance_norm_backward", {
        // SAFETY: the caller's contract for ctx and args.
        unsafe { channel_backward(ctx, args, ChannelOp::Instance) }
    })
}

/// SyncBatchNorm's backward on this rank, after normkit_sync_batch_norm_forward (pass its
/// save_mean/save_invstd and `global_count`): when grad_input is requested, Σg and Σg·(x − μ)
/// are summed over the ranks with one comm->all_reduce_sum of 2*C doubles (every rank must
/// then request grad_input); grad_weight/grad_bias are this rank's sums (summing them over the
/// ranks gives the full-batch gradients). With running statistics, or comm->world_size 1, it
/// is normkit_batch_norm_backward (no collective). global_count must be finite and >= 0
/// (INVALID_ARGUMENT); a failing callback: COMMUNICATOR.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_sync_batch_norm_backward(
    ctx: *mut normkit_context_t,
    args: *const normkit_norm_backward_args_t,
    comm: *const normkit_communicator_t,
    global_count: f64,
) -> normkit_status_t {
    boundary!("normkit_sync_batch_norm_backward", {
        // SAFETY: comm is NULL or a readable table (caller contract).
        let comm = unsafe { CCommunicator::from_c("comm", comm) }?;
        if !(global_count.is_finite() && global_count >= 0.0) {
            return Err(CapiError::invalid(
                "global_count",
                format!("must be finite and >= 0, got {global_count}"),
            ));
        }
        // SAFETY: the caller's contract for ctx and args.
        unsafe { channel_backward(ctx, args, ChannelOp::SyncBatch(&comm, global_count)) }
    })
}

/// Arguments of normkit_group_norm_backward. Initialise with
/// normkit_group_norm_backward_args_init.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_group_norm_backward_args_t {
    /// sizeof(normkit_group_norm_backward_args_t), set by the _init function.
    pub struct_size: u32,
    /// Add into grad_weight/grad_bias instead of overwriting them. Default false.
    pub accumulate: bool,
    /// The forward's input (N, C, *), required.
    pub x: *const normkit_tensor_t,
    /// dL/dy, required: x's shape and dtype.
    pub grad_output: *const normkit_tensor_t,
    /// The forward's weight (C) or NULL.
    pub weight: *const normkit_tensor_t,
    /// Required: the forward's saved mean, N*num_groups elements.
    pub save_mean: *const normkit_tensor_t,
    /// Required: the forward's saved inverse std, N*num_groups elements.
    pub save_invstd: *const normkit_tensor_t,
    /// Optional output dL/dx (x's shape and dtype).
    pub grad_input: *mut normkit_tensor_t,
    /// Optional output dL/dweight (C).
    pub grad_weight: *mut normkit_tensor_t,
    /// Optional output dL/dbias (C).
    pub grad_bias: *mut normkit_tensor_t,
    /// The forward's number of groups. _init sets 1.
    pub num_groups: i64,
}

/// Arguments of normkit_layer_norm_backward. Initialise with
/// normkit_layer_norm_backward_args_init.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_layer_norm_backward_args_t {
    /// sizeof(normkit_layer_norm_backward_args_t), set by the _init function.
    pub struct_size: u32,
    /// Add into grad_weight/grad_bias instead of overwriting them. Default false.
    pub accumulate: bool,
    /// The forward's normalized_ndim (trailing dims of x). Default 1.
    pub normalized_ndim: i32,
    /// The forward's input, required.
    pub x: *const normkit_tensor_t,
    /// dL/dy, required: x's shape and dtype.
    pub grad_output: *const normkit_tensor_t,
    /// The forward's elementwise weight (normalised shape) or NULL.
    pub weight: *const normkit_tensor_t,
    /// Required: the forward's saved mean, one per row.
    pub save_mean: *const normkit_tensor_t,
    /// Required: the forward's saved inverse std, one per row.
    pub save_invstd: *const normkit_tensor_t,
    /// Optional output dL/dx (x's shape and dtype).
    pub grad_input: *mut normkit_tensor_t,
    /// Optional output dL/dweight (normalised shape).
    pub grad_weight: *mut normkit_tensor_t,
    /// Optional output dL/dbias (normalised shape).
    pub grad_bias: *mut normkit_tensor_t,
}

/// The tensors of a backward with required saved statistics and no running statistics.
trait HasSavedBackward {
    fn backward_tensors(&self) -> BackwardTensors;
}

macro_rules! impl_saved_backward {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // SAFETY: every field is an integer, a float, a bool (false) or a raw pointer
                // (NULL), for which all-zero bytes are valid.
                let mut v: Self = unsafe { std::mem::zeroed() };
                v.struct_size = size_of::<Self>() as u32;
                v
            }
        }
        impl HasSavedBackward for $t {
            fn backward_tensors(&self) -> BackwardTensors {
                BackwardTensors {
                    x: self.x,
                    grad_output: self.grad_output,
                    weight: self.weight,
                    save_mean: self.save_mean,
                    save_invstd: self.save_invstd,
                    running_mean: std::ptr::null(),
                    running_var: std::ptr::null(),
                    grad_input: self.grad_input,
                    grad_weight: self.grad_weight,
                    grad_bias: self.grad_bias,
                    accumulate: self.accumulate,
                    saved: REQ,
                }
            }
        }
    )*};
}
impl_saved_backward!(
    normkit_group_norm_backward_args_t,
    normkit_layer_norm_backward_args_t
);

/// Fills `args` with the defaults (num_groups 1, accumulate false, every tensor NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_group_norm_backward_args_init(
    args: *mut normkit_group_norm_backward_args_t,
) -> normkit_status_t {
    boundary!("normkit_group_norm_backward_args_init", {
        let v = normkit_group_norm_backward_args_t {
            num_groups: 1,
            ..Default::default()
        };
        // SAFETY: args is NULL or writable (caller contract).
        unsafe { write_out("args", args, v) }
    })
}

/// Fills `args` with the defaults (normalized_ndim 1, accumulate false, every tensor NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_layer_norm_backward_args_init(
    args: *mut normkit_layer_norm_backward_args_t,
) -> normkit_status_t {
    boundary!("normkit_layer_norm_backward_args_init", {
        let v = normkit_layer_norm_backward_args_t {
            normalized_ndim: 1,
            ..Default::default()
        };
        // SAFETY: args is NULL or writable (caller contract).
        unsafe { write_out("args", args, v) }
    })
}

/// Backward of group normalisation (F.group_norm), from the forward's saved statistics:
/// dx = r·(ĝ − mean_grp(ĝ) − x̂·mean_grp(ĝ·x̂)) with ĝ = g·γ_c; dweight = Σ g·x̂, dbias = Σ g per
/// channel. Errors as normkit_batch_norm_backward; num_groups not a positive divisor of C:
/// INVALID_ARGUMENT.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_group_norm_backward(
    ctx: *mut normkit_context_t,
    args: *const normkit_group_norm_backward_args_t,
) -> normkit_status_t {
    boundary!("normkit_group_norm_backward", {
        // SAFETY: ctx is NULL or live (caller contract).
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: args is NULL or readable (caller contract).
        let a = unsafe { read_struct("args", args) }?;
        let num_groups = to_usize("args.num_groups", a.num_groups)?;
        if let Some(dev) = ctx.cuda() {
            let b = a.backward_tensors().device_args(false, 0.0);
            // SAFETY: the tensor contract, forwarded.
            return unsafe { cuda::group_norm_backward(dev, &b, num_groups) };
        }
        // SAFETY: the tensor contract, forwarded.
        unsafe {
            run_backward(ctx, a.backward_tensors(), move |v| {
                let (mean, invstd) = saved_pair(v.mean, v.invstd)?;
                let args = GroupNormBackwardArgs {
                    num_groups,
                    weight: v.weight,
                    mean,
                    invstd,
                    grads: v.grads,
                };
                Ok(crate::ops::group_norm_backward(&v.g, &v.x, args)?)
            })
        }
    })
}

/// Backward of layer normalisation (F.layer_norm) over x's trailing normalized_ndim dims, from
/// the forward's saved statistics. Errors as normkit_batch_norm_backward.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_layer_norm_backward(
    ctx: *mut normkit_context_t,
    args: *const normkit_layer_norm_backward_args_t,
) -> normkit_status_t {
    boundary!("normkit_layer_norm_backward", {
        // SAFETY: ctx is NULL or live (caller contract).
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: args is NULL or readable (caller contract).
        let a = unsafe { read_struct("args", args) }?;
        let nd = a.normalized_ndim;
        if let Some(dev) = ctx.cuda() {
            let b = a.backward_tensors().device_args(false, 0.0);
            // SAFETY: the tensor contract, forwarded.
            return unsafe { cuda::layer_norm_backward(dev, &b, nd) };
        }
        // SAFETY: the tensor contract, forwarded.
        unsafe {
            run_backward(ctx, a.backward_tensors(), move |v| {
                let nd = normalized_dims(&v.x, nd)?;
                let (mean, invstd) = saved_pair(v.mean, v.invstd)?;
                let args = LayerNormBackwardArgs {
                    normalized_shape: v.x.shape()[v.x.rank() - nd..].to_vec(),
                    weight: v.weight,
                    mean,
                    invstd,
                    grads: v.grads,
                };
                Ok(crate::ops::layer_norm_backward(&v.g, &v.x, args)?)
            })
        }
    })
}

fn saved_pair<'a>(
    mean: Option<Tensor<'a>>,
    invstd: Option<Tensor<'a>>,
) -> CResult<(Tensor<'a>, Tensor<'a>)> {
    Ok((
        required(mean, "save_mean")?,
        required(invstd, "save_invstd")?,
    ))
}

/// Arguments of normkit_local_response_norm_backward. Initialise with
/// normkit_local_response_norm_backward_args_init.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_local_response_norm_backward_args_t {
    /// sizeof(normkit_local_response_norm_backward_args_t), set by the _init function.
    pub struct_size: u32,
    /// The forward's input (N, C, *) with at least one spatial dim, required.
    pub x: *const normkit_tensor_t,
    /// dL/dy, required: x's shape and dtype.
    pub grad_output: *const normkit_tensor_t,
    /// Output dL/dx, required (the op has no other output): x's shape and dtype; may be
    /// grad_output itself.
    pub grad_input: *mut normkit_tensor_t,
    /// The forward's window size (> 0); _init sets 0, which must be replaced.
    pub size: i64,
    /// Default 1e-4.
    pub alpha: f64,
    /// Default 0.75.
    pub beta: f64,
    /// Default 1.0.
    pub k: f64,
}

/// Fills `args` with PyTorch's defaults (alpha 1e-4, beta 0.75, k 1; size 0 must be set).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_local_response_norm_backward_args_init(
    args: *mut normkit_local_response_norm_backward_args_t,
) -> normkit_status_t {
    boundary!("normkit_local_response_norm_backward_args_init", {
        let d = LrnArgs::new(0);
        let v = normkit_local_response_norm_backward_args_t {
            struct_size: size_of::<normkit_local_response_norm_backward_args_t>() as u32,
            x: std::ptr::null(),
            grad_output: std::ptr::null(),
            grad_input: std::ptr::null_mut(),
            size: 0,
            alpha: d.alpha,
            beta: d.beta,
            k: d.k,
        };
        // SAFETY: args is NULL or writable (caller contract).
        unsafe { write_out("args", args, v) }
    })
}

/// Backward of local response normalisation (F.local_response_norm). size 0 or negative:
/// INVALID_ARGUMENT; otherwise errors as normkit_batch_norm_backward.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_local_response_norm_backward(
    ctx: *mut normkit_context_t,
    args: *const normkit_local_response_norm_backward_args_t,
) -> normkit_status_t {
    boundary!("normkit_local_response_norm_backward", {
        // SAFETY: ctx is NULL or live (caller contract).
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: args is NULL or readable (caller contract).
        let a = unsafe { read_struct("args", args) }?;
        let p = lrn_args(a.size, a.alpha, a.beta, a.k)?;
        if let Some(dev) = ctx.cuda() {
            // SAFETY: the tensor contract, forwarded.
            return unsafe { cuda::local_response_norm_backward(dev, &a, p) };
        }
        // SAFETY: the tensor contract, forwarded.
        unsafe {
            run_op(
                ctx,
                [("x", a.x, REQ), ("grad_output", a.grad_output, REQ)],
                [("grad_input", a.grad_input, REQ)],
                move |[x, g], [gi]| {
                    let x = required(x, "x")?;
                    let g = required(g, "grad_output")?;
                    let mut gi = required(gi, "grad_input")?;
                    Ok(crate::ops::local_response_norm_backward(
                        &g, &x, &mut gi, p,
                    )?)
                },
            )
        }
    })
}
