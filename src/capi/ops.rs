//! Stateless functional ops: `normkit_<op>(ctx, const args*)`, one args struct per family.
//!
//! Tensors: `x` is the input (rank >= 2, dim 1 = channels, any non-negative strides), `y` the
//! output (same shape and dtype; its own strides; it may be exactly `x` for in-place use).
//! Parameters (weight, bias, running statistics) have the input's dtype or f32 (for f16/bf16
//! input), all the same. Saved statistics (optional outputs for a backward pass) receive the
//! mean and inverse standard deviation of each normalised group, converted to their dtype.

use super::context::{context_ref, normkit_context_t};
use super::error::{CResult, CapiError, boundary, normkit_status_t, normkit_status_t as S};
use super::tensor::{Io, Need, normkit_tensor_t, required};
use super::{read_struct, write_out};
use crate::ops::{
    BatchNormArgs, GroupNormArgs, InstanceNormArgs, LayerNormArgs, LrnArgs, SavedStats,
};
use crate::tensor::{Buffer, Tensor, TensorMut};

const REQ: Need = Need::Required;
const OPT: Need = Need::Optional;

type In = (&'static str, *const normkit_tensor_t, Need);

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
    // SAFETY: forwarded contract.
    let mut io = unsafe { Io::new(&inputs, &outputs) }?;
    {
        let (ins, outs) = io.views::<N, M>()?;
        ctx.install(move || f(ins, outs))?;
    }
    io.write_back();
    Ok(())
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

/// # Safety
/// The args' tensor pointers follow the tensor contract; num_batches_tracked is NULL or valid.
unsafe fn batch_norm_call(
    ctx: *const normkit_context_t,
    args: *const normkit_batch_norm_args_t,
    training: bool,
) -> CResult<()> {
    // SAFETY: ctx is NULL or live (caller contract).
    let ctx = unsafe { context_ref(ctx) }?;
    // SAFETY: args is NULL or readable (caller contract).
    let a = unsafe { read_struct("args", args) }?;
    let mut counter = if training && !a.num_batches_tracked.is_null() {
        // SAFETY: non-NULL and readable (caller contract); read_unaligned needs no alignment.
        Some(unsafe { a.num_batches_tracked.read_unaligned() })
    } else {
        None
    };
    let momentum = (!a.momentum_cumulative).then_some(a.momentum);
    let eps = a.eps;
    let counter_ref = counter.as_mut();
    // SAFETY: the tensor contract, forwarded.
    unsafe {
        run_op(
            ctx,
            [
                ("x", a.x, REQ),
                ("weight", a.weight, OPT),
                ("bias", a.bias, OPT),
            ],
            [
                ("y", a.y, REQ),
                ("running_mean", a.running_mean, OPT),
                ("running_var", a.running_var, OPT),
                ("save_mean", a.save_mean, OPT),
                ("save_invstd", a.save_invstd, OPT),
            ],
            move |[x, weight, bias], [y, running_mean, running_var, sm, si]| {
                let x = required(x, "x")?;
                let mut y = required(y, "y")?;
                if let (true, Some(c)) = (training, dim(&x, 1)) {
                    check_saved("save_mean", &sm, c)?;
                    check_saved("save_invstd", &si, c)?;
                }
                let stats = crate::ops::batch_norm(
                    &x,
                    &mut y,
                    BatchNormArgs {
                        weight,
                        bias,
                        running_mean,
                        running_var,
                        num_batches_tracked: counter_ref,
                        training,
                        momentum,
                        eps,
                    },
                )?;
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
    Ok(())
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
        unsafe { batch_norm_call(ctx, args, true) }
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
        unsafe { batch_norm_call(ctx, args, false) }
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
        let (use_input_stats, momentum, eps) = (a.use_input_stats, a.momentum, a.eps);
        // SAFETY: the tensor contract, forwarded.
        unsafe {
            run_op(
                ctx,
                [
                    ("x", a.x, REQ),
                    ("weight", a.weight, OPT),
                    ("bias", a.bias, OPT),
                ],
                [
                    ("y", a.y, REQ),
                    ("running_mean", a.running_mean, OPT),
                    ("running_var", a.running_var, OPT),
                    ("save_mean", a.save_mean, OPT),
                    ("save_invstd", a.save_invstd, OPT),
                ],
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
        let eps = a.eps;
        // SAFETY: the tensor contract, forwarded.
        unsafe {
            run_op(
                ctx,
                [
                    ("x", a.x, REQ),
                    ("weight", a.weight, OPT),
                    ("bias", a.bias, OPT),
                ],
                [
                    ("y", a.y, REQ),
                    ("save_mean", a.save_mean, OPT),
                    ("save_invstd", a.save_invstd, OPT),
                ],
                move |[x, weight, bias], [y, sm, si]| {
                    let x = required(x, "x")?;
                    let mut y = required(y, "y")?;
                    if let Some(n) = dim(&x, 0) {
                        check_saved("save_mean", &sm, n * groups)?;
                        check_saved("save_invstd", &si, n * groups)?;
                    }
                    let args = GroupNormArgs {
                        num_groups: groups,
                        weight,
                        bias,
                        eps,
                    };
                    let stats = crate::ops::group_norm(&x, &mut y, args)?;
                    write_stats(sm, si, &stats);
                    Ok(())
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
        let (nd, eps) = (a.normalized_ndim, a.eps);
        // SAFETY: the tensor contract, forwarded.
        unsafe {
            run_op(
                ctx,
                [
                    ("x", a.x, REQ),
                    ("weight", a.weight, OPT),
                    ("bias", a.bias, OPT),
                ],
                [
                    ("y", a.y, REQ),
                    ("save_mean", a.save_mean, OPT),
                    ("save_invstd", a.save_invstd, OPT),
                ],
                move |[x, weight, bias], [y, sm, si]| {
                    let x = required(x, "x")?;
                    let mut y = required(y, "y")?;
                    let rank = x.rank();
                    let nd = usize::try_from(nd)
                        .ok()
                        .filter(|&n| n >= 1 && n <= rank)
                        .ok_or_else(|| {
                            CapiError::new(
                                S::NORMKIT_STATUS_SHAPE_MISMATCH,
                                format!(
                                    "args.normalized_ndim: must be in [1, x.ndim = {rank}], got {nd}"
                                ),
                            )
                        })?;
                    let rows = x.shape()[..rank - nd].iter().product();
                    check_saved("save_mean", &sm, rows)?;
                    check_saved("save_invstd", &si, rows)?;
                    let args = LayerNormArgs {
                        normalized_shape: x.shape()[rank - nd..].to_vec(),
                        weight,
                        bias,
                        eps,
                    };
                    let stats = crate::ops::layer_norm(&x, &mut y, args)?;
                    write_stats(sm, si, &stats);
                    Ok(())
                },
            )
        }
    })
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
        let p = LrnArgs {
            size: to_usize("args.size", a.size)?,
            alpha: a.alpha,
            beta: a.beta,
            k: a.k,
        };
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
