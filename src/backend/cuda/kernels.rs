//! Launch sites: the [`Launcher`] trait (implemented by the GPU device and by the host
//! emulation) and one function per op phase that plans with [`super::launch`] and launches.
//!
//! Every function here is `unsafe`: the parameter structs carry raw device addresses that the
//! kernels dereference, which the type system cannot check. Callers guarantee the contract
//! written on each function.

use super::launch::{self, ChannelOrder, LaunchConfig};
use super::params::{
    BatchNormApplyParams, BatchNormStatsParams, GroupNormParams, InstanceNormRunningParams,
    KernelParams, LayerNormParams, LrnParams,
};
use super::params::{LayerNormBwdParams, LrnBwdParams, NormBwdParams};
use crate::dtype::DType;
use crate::error::Result;

/// Something that runs a named kernel entry point: a CUDA stream, or the host emulation.
pub trait Launcher {
    /// Streaming multiprocessors of the device (grid sizing).
    fn sm_count(&self) -> u32;

    /// Enqueues kernel `name` with one by-value parameter struct (`params`, its C bytes).
    ///
    /// # Safety
    /// Every address inside `params` must be valid, for as long as the launch runs, for the
    /// reads and writes that kernel makes (documented in kernels/common/params.cuh and at the
    /// top of its .cu file), and buffers the kernel writes must not be accessed concurrently.
    unsafe fn launch_raw(&self, name: &str, config: LaunchConfig, params: &[u8]) -> Result<()>;
}

/// # Safety
/// As [`Launcher::launch_raw`].
unsafe fn launch<P: KernelParams>(
    l: &dyn Launcher,
    name: &str,
    config: LaunchConfig,
    p: &P,
) -> Result<()> {
    let bytes = p.to_bytes();
    debug_assert_eq!(bytes.len(), P::SIZE);
    // SAFETY: forwarded from this function's contract.
    unsafe { l.launch_raw(name, config, &bytes) }
}

/// LayerNorm forward over `p.rows` × `p.cols` (both ≥ 1).
///
/// # Safety
/// `x`, `y`: rows·cols elements of `dtype`; `weight`, `bias`: cols compute values or 0;
/// `mean`, `rstd`: rows compute values or 0 (compute type: f64 for f64, else f32).
pub unsafe fn layer_norm_fwd(l: &dyn Launcher, dtype: DType, p: &LayerNormParams) -> Result<()> {
    let plan = launch::layer_norm_fwd(dtype, p.rows as usize, p.cols as usize, l.sm_count());
    // SAFETY: the caller upholds the buffer contract above, which is the kernel's.
    unsafe { launch(l, &plan.kernel, plan.config, p) }
}

/// GroupNorm / InstanceNorm forward (n, c, s ≥ 1; groups ≥ 1 divides c).
///
/// # Safety
/// `x`, `y`: n·c·s elements of `dtype` in `order`; `weight`, `bias`: c compute values or 0;
/// `mean`, `rstd`: n·groups compute values or 0.
pub unsafe fn group_norm_fwd(
    l: &dyn Launcher,
    dtype: DType,
    order: ChannelOrder,
    p: &GroupNormParams,
) -> Result<()> {
    let (n, groups) = (p.n as usize, p.groups as usize);
    let len = (p.c as usize / groups.max(1)) * p.s as usize;
    let plan = launch::group_norm_fwd(dtype, order, n, groups, len, l.sm_count());
    // SAFETY: the caller upholds the buffer contract above, which is the kernel's.
    unsafe { launch(l, &plan.kernel, plan.config, p) }
}

/// InstanceNorm running-statistic update (after [`group_norm_fwd`] with groups = c wrote the
/// instance mean and M2), for input of `dtype` (the kernel runs in its compute type).
///
/// # Safety
/// `mean`, `m2`: n·c compute values (written by work already queued on this stream);
/// `running_mean`, `running_var`: c compute values or 0; `p.s` ≥ 2.
pub unsafe fn instance_norm_running(
    l: &dyn Launcher,
    dtype: DType,
    p: &InstanceNormRunningParams,
) -> Result<()> {
    let plan = launch::instance_norm_running(dtype, p.c as usize, l.sm_count());
    // SAFETY: the caller upholds the buffer contract above, which is the kernel's.
    unsafe { launch(l, &plan.kernel, plan.config, p) }
}

/// BatchNorm training forward: statistics (+ running-stat update), then apply. Two launches.
/// `stats.splits` and the workspace must come from [`launch::batch_norm_stats`] for the same
/// shape and `l.sm_count()`.
///
/// # Safety
/// `x`, `y`: n·c·s elements; `mean`, `rstd`: c compute values; running stats, weight, bias:
/// c compute values or 0; `workspace`: `workspace_bytes` bytes, 8-byte aligned; `counters`:
/// `counters` u32 values, zero before the first launch (the kernel leaves them zero).
pub unsafe fn batch_norm_train(
    l: &dyn Launcher,
    dtype: DType,
    order: ChannelOrder,
    stats: &BatchNormStatsParams,
    apply: &BatchNormApplyParams,
) -> Result<()> {
    // SAFETY: the caller upholds the buffer contract above, which is the kernels'.
    unsafe { batch_norm_stats(l, dtype, order, stats)? };
    // SAFETY: as above; mean/rstd were written by the stats launch on the same stream.
    unsafe { batch_norm_apply(l, dtype, order, apply) }
}

/// BatchNorm statistics only (the first launch of [`batch_norm_train`]).
///
/// # Safety
/// As [`batch_norm_train`] for `stats`.
pub unsafe fn batch_norm_stats(
    l: &dyn Launcher,
    dtype: DType,
    order: ChannelOrder,
    stats: &BatchNormStatsParams,
) -> Result<()> {
    let plan = launch::batch_norm_stats(
        dtype,
        order,
        stats.n as usize,
        stats.c as usize,
        stats.s as usize,
        l.sm_count(),
    );
    let stats = BatchNormStatsParams {
        splits: plan.splits as i64,
        ..*stats
    };
    // SAFETY: the caller upholds the buffer contract, which is the kernel's.
    unsafe { launch(l, &plan.launch.kernel, plan.launch.config, &stats) }
}

/// BatchNorm normalisation with given batch statistics (`p.mean`, `p.rstd_or_var` = rstd):
/// the second launch of [`batch_norm_train`].
///
/// # Safety
/// `x`, `y`: n·c·s elements; mean, rstd: c compute values; weight, bias: c compute values or 0.
pub unsafe fn batch_norm_apply(
    l: &dyn Launcher,
    dtype: DType,
    order: ChannelOrder,
    p: &BatchNormApplyParams,
) -> Result<()> {
    let total = (p.n * p.c * p.s) as usize;
    let a = launch::batch_norm_apply(dtype, order, total, false, l.sm_count());
    // SAFETY: the caller upholds the buffer contract above, which is the kernel's.
    unsafe { launch(l, &a.kernel, a.config, p) }
}

/// BatchNorm inference from running statistics (`p.mean` = running mean,
/// `p.rstd_or_var` = running var).
///
/// # Safety
/// `x`, `y`: n·c·s elements; mean, var: c compute values; weight, bias: c compute values or 0.
pub unsafe fn batch_norm_infer(
    l: &dyn Launcher,
    dtype: DType,
    order: ChannelOrder,
    p: &BatchNormApplyParams,
) -> Result<()> {
    let total = (p.n * p.c * p.s) as usize;
    let plan = launch::batch_norm_apply(dtype, order, total, true, l.sm_count());
    // SAFETY: the caller upholds the buffer contract above, which is the kernel's.
    unsafe { launch(l, &plan.kernel, plan.config, p) }
}

/// LocalResponseNorm forward.
///
/// # Safety
/// `x`, `y`: n·c·s elements of `dtype`, not overlapping.
pub unsafe fn lrn_fwd(
    l: &dyn Launcher,
    dtype: DType,
    order: ChannelOrder,
    p: &LrnParams,
) -> Result<()> {
    let total = (p.n * p.c * p.s) as usize;
    let plan = launch::lrn_fwd(dtype, order, total, l.sm_count());
    // SAFETY: the caller upholds the buffer contract above, which is the kernel's.
    unsafe { launch(l, &plan.kernel, plan.config, p) }
}

// ---- Backward --------------------------------------------------------------------------------

/// LayerNorm backward: the row kernel (dx and per-block dγ/dβ partials), then, when
/// `grad_weight` or `grad_bias` is requested, the column merge. `p.partials` is set from
/// [`launch::layer_norm_bwd`] (same shape and `l.sm_count()`), which also sizes the workspace.
///
/// # Safety
/// `x`, `dy`: rows·cols elements of `dtype`; `dx`: rows·cols elements or 0, not overlapping
/// `x`/`dy`; `mean`, `rstd`: rows compute values; `weight`, `grad_weight`, `grad_bias`: cols
/// compute values or 0; `workspace`: `workspace_bytes` bytes (8-byte aligned) when a parameter
/// gradient is requested.
pub unsafe fn layer_norm_bwd(l: &dyn Launcher, dtype: DType, p: &LayerNormBwdParams) -> Result<()> {
    let plan = launch::layer_norm_bwd(dtype, p.rows as usize, p.cols as usize, l.sm_count());
    let p = LayerNormBwdParams {
        partials: plan.partials as i64,
        ..*p
    };
    let params = p.workspace != 0 && (p.grad_weight != 0 || p.grad_bias != 0);
    if p.dx != 0 || params {
        // SAFETY: the caller upholds the buffer contract above, which is the kernel's.
        unsafe { launch(l, &plan.rows.kernel, plan.rows.config, &p)? };
    }
    if params {
        // SAFETY: as above; the partials were written by the previous launch on this stream.
        unsafe { launch(l, &plan.params.kernel, plan.params.config, &p)? };
    }
    Ok(())
}

/// BatchNorm backward (InstanceNorm with running statistics: the same, per channel).
/// Training (`p.training = 1`, saved mean/rstd): reduce (coefficients, dγ, dβ), then dx.
/// Frozen (`p.training = 0`, running mean/var, `p.eps`): dx in one launch; the reduce runs only
/// for dγ/dβ. `p.splits` is set from [`launch::batch_norm_bwd`], which sizes the scratch.
///
/// # Safety
/// `x`, `dy`: n·c·s elements of `dtype` in `order`; `dx`: as many or 0, not overlapping
/// `x`/`dy`; `mean`, `rstd_or_var`: c compute values; `weight`, `grad_weight`, `grad_bias`: c
/// compute values or 0; when the reduce runs (training, or a parameter gradient requested):
/// `workspace` of `workspace_bytes` bytes (8-byte aligned) and `counters` u32 values, zero
/// before the first launch (the kernel leaves them zero).
pub unsafe fn batch_norm_bwd(
    l: &dyn Launcher,
    dtype: DType,
    order: ChannelOrder,
    p: &NormBwdParams,
) -> Result<()> {
    let plan = launch::batch_norm_bwd(
        dtype,
        order,
        p.n as usize,
        p.c as usize,
        p.s as usize,
        l.sm_count(),
    );
    let p = NormBwdParams {
        splits: plan.splits as i64,
        ..*p
    };
    if p.training != 0 || p.grad_weight != 0 || p.grad_bias != 0 {
        // SAFETY: the caller upholds the buffer contract above, which is the kernel's.
        unsafe { launch(l, &plan.reduce.kernel, plan.reduce.config, &p)? };
    }
    if p.dx != 0 {
        // SAFETY: as above; the coefficients were written by the reduce on this stream.
        unsafe { launch(l, &plan.input.kernel, plan.input.config, &p)? };
    }
    Ok(())
}

/// The dx launch of a BatchNorm training backward alone, from coefficients already in the
/// workspace (`coef` at `2·splits·c` compute values, p/q/o per channel; SyncBatchNorm writes
/// them from the all-reduced sums). `p.splits` is set from [`launch::batch_norm_bwd`].
///
/// # Safety
/// `x`, `dy`, `dx`: n·c·s elements, dx apart from both; `mean`: c compute values; `workspace`
/// of `workspace_bytes` bytes holding the coefficients.
pub unsafe fn batch_norm_bwd_input(
    l: &dyn Launcher,
    dtype: DType,
    order: ChannelOrder,
    p: &NormBwdParams,
) -> Result<()> {
    let plan = launch::batch_norm_bwd(
        dtype,
        order,
        p.n as usize,
        p.c as usize,
        p.s as usize,
        l.sm_count(),
    );
    let p = NormBwdParams {
        splits: plan.splits as i64,
        training: 1,
        ..*p
    };
    // SAFETY: the caller upholds the buffer contract above, which is the kernel's.
    unsafe { launch(l, &plan.input.kernel, plan.input.config, &p) }
}

/// GroupNorm / InstanceNorm backward with saved statistics (`p.groups` divides `p.c`;
/// InstanceNorm: groups = c): one launch.
///
/// # Safety
/// `x`, `dy`: n·c·s elements of `dtype` in `order`; `dx`: as many or 0, not overlapping
/// `x`/`dy`; `mean`, `rstd_or_var`: n·groups compute values (saved rstd); `weight`,
/// `grad_weight`, `grad_bias`: c compute values or 0; with a parameter gradient: `workspace`
/// of `workspace_bytes` bytes from [`launch::group_norm_bwd`] and one u32 counter, zero before
/// the first launch (the kernel leaves it zero).
pub unsafe fn group_norm_bwd(
    l: &dyn Launcher,
    dtype: DType,
    order: ChannelOrder,
    p: &NormBwdParams,
) -> Result<()> {
    let plan = launch::group_norm_bwd(
        dtype,
        order,
        p.n as usize,
        p.c as usize,
        p.groups as usize,
        l.sm_count(),
    );
    if p.dx != 0 || (p.workspace != 0 && (p.grad_weight != 0 || p.grad_bias != 0)) {
        // SAFETY: the caller upholds the buffer contract above, which is the kernel's.
        unsafe { launch(l, &plan.launch.kernel, plan.launch.config, p)? };
    }
    Ok(())
}

/// LocalResponseNorm backward.
///
/// # Safety
/// `x`, `dy`, `dx`: n·c·s elements of `dtype`; `dx` does not overlap `x` or `dy`.
pub unsafe fn lrn_bwd(
    l: &dyn Launcher,
    dtype: DType,
    order: ChannelOrder,
    p: &LrnBwdParams,
) -> Result<()> {
    let total = (p.n * p.c * p.s) as usize;
    let plan = launch::lrn_bwd(dtype, order, total, l.sm_count());
    // SAFETY: the caller upholds the buffer contract above, which is the kernel's.
    unsafe { launch(l, &plan.kernel, plan.config, p) }
}
