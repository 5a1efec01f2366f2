//! Backward ops on device tensors: the arguments (as [`crate::ops::NormBackwardArgs`] and
//! friends, with device views), their validation (the CPU ops' own checks on host proxies,
//! then the device-only requirements) and the launches on a [`CudaDevice`].
//!
//! Each op writes any of `grad_input`, `grad_weight`, `grad_bias` that is given (parameter
//! gradients overwritten, or accumulated into with `accumulate`) with one reduce launch with
//! per-block partials and a deterministic merge plus one elementwise launch (design/gpu-
//! kernels.md §5); nothing synchronises the host.

use super::device::CudaDevice;
use super::kernels::{self, Launcher};
use super::launch::{self, ChannelOrder};
use super::ops::{
    DeviceTensor, DeviceTensorMut, Meta, channel_order, check_compute_dtype, check_index_range,
    ncs, proxy, require_contiguous,
};
use super::params::{LayerNormBwdParams, LrnBwdParams, NormBwdParams};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{
    ForwardStats, GradSpec, LrnArgs, validate_batch_norm_backward, validate_group_norm_backward,
    validate_instance_norm_backward, validate_layer_norm_backward,
    validate_local_response_norm_backward,
};
use crate::tensor::Tensor;

/// Gradient outputs of a device backward op (as [`crate::ops::Gradients`]); each is
/// computed only when given. Parameter gradients are in the compute dtype (f32, f64 for f64).
#[derive(Debug, Default)]
pub struct DeviceGradients<'a> {
    pub grad_input: Option<DeviceTensorMut<'a>>,
    pub grad_weight: Option<DeviceTensorMut<'a>>,
    pub grad_bias: Option<DeviceTensorMut<'a>>,
    /// Add into `grad_weight`/`grad_bias` instead of overwriting them.
    pub accumulate: bool,
}

/// The statistics a channel op's forward normalised with (as [`ForwardStats`]).
#[derive(Debug)]
pub enum DeviceForwardStats<'a> {
    /// After a training forward (or input statistics): the saved mean and inverse std.
    Saved {
        mean: DeviceTensor<'a>,
        invstd: DeviceTensor<'a>,
    },
    /// After an inference forward: the running statistics and the forward's eps.
    Running {
        mean: DeviceTensor<'a>,
        var: DeviceTensor<'a>,
        eps: f64,
    },
}

/// Arguments of [`CudaDevice::batch_norm_backward`] and [`CudaDevice::instance_norm_backward`].
#[derive(Debug)]
pub struct CudaNormBackwardArgs<'a> {
    /// The forward's weight (γ = 1 when none).
    pub weight: Option<DeviceTensor<'a>>,
    pub stats: DeviceForwardStats<'a>,
    pub grads: DeviceGradients<'a>,
}

/// Arguments of [`CudaDevice::group_norm_backward`].
#[derive(Debug)]
pub struct CudaGroupNormBackwardArgs<'a> {
    pub num_groups: usize,
    pub weight: Option<DeviceTensor<'a>>,
    /// Saved mean and inverse std per `(n, g)`.
    pub mean: DeviceTensor<'a>,
    pub invstd: DeviceTensor<'a>,
    pub grads: DeviceGradients<'a>,
}

/// Arguments of [`CudaDevice::layer_norm_backward`].
#[derive(Debug)]
pub struct CudaLayerNormBackwardArgs<'a> {
    pub normalized_shape: Vec<usize>,
    pub weight: Option<DeviceTensor<'a>>,
    /// Saved mean and inverse std per row.
    pub mean: DeviceTensor<'a>,
    pub invstd: DeviceTensor<'a>,
    pub grads: DeviceGradients<'a>,
}

impl DeviceGradients<'_> {
    fn spec(&self) -> GradSpec<'_> {
        GradSpec {
            input: self.grad_input.as_ref().map(|t| (t.shape(), t.dtype())),
            weight: self.grad_weight.as_ref().map(|t| (t.numel(), t.dtype())),
            bias: self.grad_bias.as_ref().map(|t| (t.numel(), t.dtype())),
        }
    }
    fn ptrs(&self) -> (u64, u64, u64) {
        let p = |t: &Option<DeviceTensorMut>| t.as_ref().map_or(0, |t| t.ptr());
        (
            p(&self.grad_input),
            p(&self.grad_weight),
            p(&self.grad_bias),
        )
    }
}

fn host_stats(s: &DeviceForwardStats) -> Result<ForwardStats<'static>> {
    Ok(match s {
        DeviceForwardStats::Saved { mean, invstd } => ForwardStats::Saved {
            mean: proxy(&mean.meta)?,
            invstd: proxy(&invstd.meta)?,
        },
        DeviceForwardStats::Running { mean, var, eps } => ForwardStats::Running {
            mean: proxy(&mean.meta)?,
            var: proxy(&var.meta)?,
            eps: *eps,
        },
    })
}

fn opt_proxy(t: Option<&DeviceTensor>) -> Result<Option<Tensor<'static>>> {
    t.map(|t| proxy(&t.meta)).transpose()
}

/// Whether the byte ranges of two dense tensors intersect.
fn overlaps(a: &Meta, b: &Meta) -> bool {
    let end = |m: &Meta| m.ptr + (m.numel() * m.dtype.size_in_bytes()) as u64;
    a.numel() > 0 && b.numel() > 0 && a.ptr < end(b) && b.ptr < end(a)
}

/// The device-only checks shared by every backward: parameters and parameter gradients in
/// the compute dtype, `grad_output`/`grad_input` in the input's layout, `grad_input` apart
/// from `x` and `grad_output`.
fn device_checks(
    op: &str,
    g: &DeviceTensor,
    x: &DeviceTensor,
    params: &[(&str, Option<&Meta>)],
    grads: &DeviceGradients,
) -> Result<()> {
    let mut dtypes: Vec<(&str, Option<DType>)> = params
        .iter()
        .map(|(n, m)| (*n, m.map(|m| m.dtype)))
        .collect();
    dtypes.push(("grad_weight", grads.grad_weight.as_ref().map(|t| t.dtype())));
    dtypes.push(("grad_bias", grads.grad_bias.as_ref().map(|t| t.dtype())));
    check_compute_dtype(op, x.dtype(), &dtypes)?;
    match &grads.grad_input {
        Some(dx) => check_apart(op, dx, x, g, true),
        None => Ok(()),
    }
}

/// `grad_input` must not overlap `x` or `grad_output`, except that with `alias_grad_output`
/// it may be exactly `grad_output` (same address, dtype, shape, layout): the BatchNorm,
/// GroupNorm and LayerNorm kernels read each dy element before writing the dx element at the
/// same index in the same thread (their reductions finish before any write); LRN's window reads
/// neighbours, so it passes false.
fn check_apart(
    op: &str,
    dx: &DeviceTensorMut,
    x: &DeviceTensor,
    g: &DeviceTensor,
    alias_grad_output: bool,
) -> Result<()> {
    let same = |a: &Meta, b: &Meta| {
        a.ptr == b.ptr && a.dtype == b.dtype && a.shape == b.shape && a.layout == b.layout
    };
    for (name, other) in [("input", &x.meta), ("grad_output", &g.meta)] {
        if name == "grad_output" && alias_grad_output && same(&dx.meta, other) {
            continue;
        }
        if overlaps(&dx.meta, other) {
            return Err(Error::layout(
                op,
                "grad_input",
                format!("memory apart from {name}"),
                format!("memory overlapping {name}"),
            ));
        }
    }
    Ok(())
}

/// [`device_checks`] for an op with a weight and saved (mean, invstd).
fn saved_stats_checks(
    op: &str,
    g: &DeviceTensor,
    x: &DeviceTensor,
    weight: Option<&DeviceTensor>,
    (mean, invstd): (&DeviceTensor, &DeviceTensor),
    grads: &DeviceGradients,
) -> Result<()> {
    let params = [
        ("weight", weight.map(|w| &w.meta)),
        ("mean", Some(&mean.meta)),
        ("invstd", Some(&invstd.meta)),
    ];
    device_checks(op, g, x, &params, grads)
}

/// The checks of a backward with a weight and saved (mean, invstd): the CPU op's own
/// `validate` on host proxies of the device operands, then [`saved_stats_checks`].
fn validate_saved<R>(
    op: &str,
    g: &DeviceTensor,
    x: &DeviceTensor,
    (weight, (mean, invstd), grads): (
        Option<&DeviceTensor>,
        (&DeviceTensor, &DeviceTensor),
        &DeviceGradients,
    ),
    validate: impl FnOnce(&Tensor, &Tensor, Option<&Tensor>, (&Tensor, &Tensor), &GradSpec) -> Result<R>,
) -> Result<R> {
    let hw = opt_proxy(weight)?;
    let (hm, hr) = (proxy(&mean.meta)?, proxy(&invstd.meta)?);
    let r = validate(
        &proxy(&g.meta)?,
        &proxy(&x.meta)?,
        hw.as_ref(),
        (&hm, &hr),
        &grads.spec(),
    )?;
    saved_stats_checks(op, g, x, weight, (mean, invstd), grads)?;
    Ok(r)
}

/// Element order of `x`, checking that `grad_output` and `grad_input` share it.
fn order_of(
    op: &str,
    g: &DeviceTensor,
    x: &DeviceTensor,
    grads: &DeviceGradients,
) -> Result<ChannelOrder> {
    let order = channel_order(op, &x.meta, &g.meta).map_err(|e| Error {
        operand: "grad_output".into(),
        ..e
    })?;
    if let Some(dx) = &grads.grad_input {
        channel_order(op, &x.meta, &dx.meta).map_err(|e| Error {
            operand: "grad_input".into(),
            ..e
        })?;
    }
    Ok(order)
}

/// A planned BatchNorm / InstanceNorm / GroupNorm backward.
#[derive(Clone, Debug)]
pub struct NormBackwardPlan {
    pub dtype: DType,
    pub order: ChannelOrder,
    /// Per channel (the BatchNorm kernels) or per (n, group) (the GroupNorm kernel).
    pub per_channel: bool,
    /// Workspace and counters left 0 for the device to fill.
    pub params: NormBwdParams,
}

/// What a backward plan amounts to.
#[derive(Clone, Debug)]
pub enum Planned<P> {
    /// Empty input: no launch; parameter gradients are zeroed unless accumulating.
    Empty,
    Run(P),
}

#[allow(clippy::too_many_arguments)]
fn norm_params(
    g: &DeviceTensor,
    x: &DeviceTensor,
    weight: Option<&DeviceTensor>,
    (mean, rstd_or_var): (u64, u64),
    grads: &DeviceGradients,
    groups: usize,
    training: bool,
    eps: f64,
) -> NormBwdParams {
    let (n, c, s) = ncs(x.shape());
    let (dx, gw, gb) = grads.ptrs();
    NormBwdParams {
        x: x.ptr(),
        dy: g.ptr(),
        dx,
        mean,
        rstd_or_var,
        weight: weight.map_or(0, |w| w.ptr()),
        grad_weight: gw,
        grad_bias: gb,
        workspace: 0,
        counters: 0,
        n: n as i64,
        c: c as i64,
        s: s as i64,
        groups: groups as i64,
        splits: 1,
        eps,
        training: training as i32,
        accumulate: grads.accumulate as i32,
        // saved statistics of this batch: their f32 mean's rounding is recovered where it
        // matters (SyncBatchNorm clears it)
        recover: training as i32,
        reserved: 0,
    }
}

/// (mean, rstd-or-var, training, eps, the two operands by name) of forward statistics.
type StatsParts<'s> = (u64, u64, bool, f64, [(&'static str, &'s Meta); 2]);

fn stats_parts<'s>(s: &'s DeviceForwardStats) -> StatsParts<'s> {
    match s {
        DeviceForwardStats::Saved { mean, invstd } => (
            mean.ptr(),
            invstd.ptr(),
            true,
            0.0,
            [("mean", &mean.meta), ("invstd", &invstd.meta)],
        ),
        DeviceForwardStats::Running { mean, var, eps } => (
            mean.ptr(),
            var.ptr(),
            false,
            *eps,
            [("running_mean", &mean.meta), ("running_var", &var.meta)],
        ),
    }
}

/// Validates a BatchNorm (`instance` false) or InstanceNorm backward on device tensors.
pub fn plan_norm_backward(
    g: &DeviceTensor,
    x: &DeviceTensor,
    args: &CudaNormBackwardArgs,
    instance: bool,
) -> Result<Planned<NormBackwardPlan>> {
    let op = if instance {
        "instance_norm_backward"
    } else {
        "batch_norm_backward"
    };
    let (hx, hg) = (proxy(&x.meta)?, proxy(&g.meta)?);
    let hw = opt_proxy(args.weight.as_ref())?;
    let hs = host_stats(&args.stats)?;
    let spec = args.grads.spec();
    let geom = if instance {
        validate_instance_norm_backward(&hg, &hx, hw.as_ref(), &hs, &spec)?
    } else {
        validate_batch_norm_backward(op, &hg, &hx, hw.as_ref(), &hs, &spec)?
    };
    let (mean, var, training, eps, stat_metas) = stats_parts(&args.stats);
    let mut params: Vec<(&str, Option<&Meta>)> =
        vec![("weight", args.weight.as_ref().map(|w| &w.meta))];
    params.extend(stat_metas.iter().map(|(n, m)| (*n, Some(*m))));
    device_checks(op, g, x, &params, &args.grads)?;
    if x.numel() == 0 {
        return Ok(Planned::Empty);
    }
    let order = order_of(op, g, x, &args.grads)?;
    check_index_range(op, x.shape(), geom.c)?;
    // InstanceNorm with saved statistics: groups of one channel per sample (GroupNorm kernel)
    let per_channel = !(instance && training);
    Ok(Planned::Run(NormBackwardPlan {
        dtype: x.dtype(),
        order,
        per_channel,
        params: norm_params(
            g,
            x,
            args.weight.as_ref(),
            (mean, var),
            &args.grads,
            geom.c,
            training,
            eps,
        ),
    }))
}

/// Validates a GroupNorm backward on device tensors.
pub fn plan_group_norm_backward(
    g: &DeviceTensor,
    x: &DeviceTensor,
    args: &CudaGroupNormBackwardArgs,
) -> Result<Planned<NormBackwardPlan>> {
    const OP: &str = "group_norm_backward";
    let saved = (
        args.weight.as_ref(),
        (&args.mean, &args.invstd),
        &args.grads,
    );
    let geom = validate_saved(OP, g, x, saved, |hg, hx, hw, stats, spec| {
        validate_group_norm_backward(hg, hx, args.num_groups, hw, stats, spec)
    })?;
    if x.numel() == 0 {
        return Ok(Planned::Empty);
    }
    let order = order_of(OP, g, x, &args.grads)?;
    check_index_range(OP, x.shape(), geom.c)?;
    Ok(Planned::Run(NormBackwardPlan {
        dtype: x.dtype(),
        order,
        per_channel: false,
        params: norm_params(
            g,
            x,
            args.weight.as_ref(),
            (args.mean.ptr(), args.invstd.ptr()),
            &args.grads,
            args.num_groups,
            true,
            0.0,
        ),
    }))
}

/// Validates a LayerNorm backward on device tensors; the params' workspace is left 0.
pub fn plan_layer_norm_backward(
    g: &DeviceTensor,
    x: &DeviceTensor,
    args: &CudaLayerNormBackwardArgs,
) -> Result<Planned<(DType, LayerNormBwdParams)>> {
    const OP: &str = "layer_norm_backward";
    let saved = (
        args.weight.as_ref(),
        (&args.mean, &args.invstd),
        &args.grads,
    );
    let (rows, cols) = validate_saved(OP, g, x, saved, |hg, hx, hw, stats, spec| {
        validate_layer_norm_backward(hg, hx, &args.normalized_shape, hw, stats, spec)
    })?;
    if x.numel() == 0 {
        return Ok(Planned::Empty);
    }
    require_contiguous(OP, "input", &x.meta)?;
    require_contiguous(OP, "grad_output", &g.meta)?;
    if let Some(dx) = &args.grads.grad_input {
        require_contiguous(OP, "grad_input", &dx.meta)?;
    }
    check_index_range(OP, x.shape(), 1)?;
    let (dx, gw, gb) = args.grads.ptrs();
    Ok(Planned::Run((
        x.dtype(),
        LayerNormBwdParams {
            x: x.ptr(),
            dy: g.ptr(),
            dx,
            mean: args.mean.ptr(),
            rstd: args.invstd.ptr(),
            weight: args.weight.as_ref().map_or(0, |w| w.ptr()),
            grad_weight: gw,
            grad_bias: gb,
            workspace: 0,
            rows: rows as i64,
            cols: cols as i64,
            partials: 1,
            accumulate: args.grads.accumulate as i32,
            reserved: 0,
        },
    )))
}

/// Validates a LocalResponseNorm backward on device tensors; `None` for an empty input.
pub fn plan_local_response_norm_backward(
    g: &DeviceTensor,
    x: &DeviceTensor,
    dx: &DeviceTensorMut,
    args: &LrnArgs,
) -> Result<Option<(DType, ChannelOrder, LrnBwdParams)>> {
    const OP: &str = "local_response_norm_backward";
    if !validate_local_response_norm_backward(
        &proxy(&g.meta)?,
        &proxy(&x.meta)?,
        (dx.shape(), dx.dtype()),
        args,
    )? {
        return Ok(None);
    }
    let order = channel_order(OP, &x.meta, &g.meta)?;
    channel_order(OP, &x.meta, &dx.meta)?;
    check_apart(OP, dx, x, g, false)?;
    let (n, c, s) = ncs(x.shape());
    check_index_range(OP, x.shape(), c)?;
    Ok(Some((
        x.dtype(),
        order,
        LrnBwdParams {
            x: x.ptr(),
            dy: g.ptr(),
            dx: dx.ptr(),
            n: n as i64,
            c: c as i64,
            s: s as i64,
            size: args.size as i64,
            alpha: args.alpha,
            beta: args.beta,
            k: args.k,
        },
    )))
}

impl CudaDevice {
    pub(super) fn grad_pointers(&self, op: &str, p: &NormBwdParams) -> Result<()> {
        self.check_pointers(
            op,
            &[
                ("input", p.x),
                ("grad_output", p.dy),
                ("grad_input", p.dx),
                ("mean", p.mean),
                ("invstd", p.rstd_or_var),
                ("weight", p.weight),
                ("grad_weight", p.grad_weight),
                ("grad_bias", p.grad_bias),
            ],
        )
    }

    /// Zeroes the parameter gradients of an empty input (unless accumulating).
    fn empty_grads(&self, op: &str, grads: &DeviceGradients) -> Result<()> {
        if grads.accumulate {
            return Ok(());
        }
        for (name, t) in [
            ("grad_weight", &grads.grad_weight),
            ("grad_bias", &grads.grad_bias),
        ] {
            if let Some(t) = t {
                self.check_pointers(op, &[(name, t.ptr())])?;
                self.zero_tensor(t)?;
            }
        }
        Ok(())
    }

    fn run_norm_backward(
        &self,
        op: &str,
        plan: Planned<NormBackwardPlan>,
        grads: &DeviceGradients,
    ) -> Result<()> {
        let plan = match plan {
            Planned::Empty => return self.empty_grads(op, grads),
            Planned::Run(plan) => plan,
        };
        let mut p = plan.params;
        self.grad_pointers(op, &p)?;
        let (n, c, s) = (p.n as usize, p.c as usize, p.s as usize);
        let sms = self.sm_count();
        let (workspace_bytes, counters) = if plan.per_channel {
            let b = launch::batch_norm_bwd(plan.dtype, plan.order, n, c, s, sms);
            (b.workspace_bytes, b.counters)
        } else {
            let b = launch::group_norm_bwd(plan.dtype, plan.order, n, c, p.groups as usize, sms);
            (b.workspace_bytes, b.counters)
        };
        let workspace = self.alloc_bytes(workspace_bytes)?;
        let tickets = self.zeroed_bytes(counters * 4)?;
        p.workspace = workspace.ptr;
        p.counters = tickets.ptr;
        // SAFETY: x, dy (and dx when given) hold n·c·s elements in `order`, dx apart from x
        // and dy (plan); mean/rstd_or_var hold one compute value per statistic, weight and
        // the parameter gradients c compute values (plan: the CPU op's checks plus the
        // compute dtype); all are this device's memory (checked above); the workspace and the
        // zeroed counters come from the same launch plan for this shape and SM count, and are
        // freed stream-ordered after the launches.
        unsafe {
            if plan.per_channel {
                kernels::batch_norm_bwd(self, plan.dtype, plan.order, &p)
            } else {
                kernels::group_norm_bwd(self, plan.dtype, plan.order, &p)
            }
        }
    }

    /// BatchNorm backward on the device (as [`crate::ops::batch_norm_backward`]): the
    /// training formula from saved statistics, or frozen BatchNorm from running statistics.
    pub fn batch_norm_backward(
        &self,
        grad_output: &DeviceTensor,
        x: &DeviceTensor,
        args: CudaNormBackwardArgs,
    ) -> Result<()> {
        self.batch_norm_backward_as(grad_output, x, args, true)
    }

    /// [`CudaDevice::batch_norm_backward`]; `recover` false keeps a saved mean as given where
    /// its f32 rounding would otherwise be recovered (SyncBatchNorm: its statistics are over
    /// every rank's batch, and the CPU op keeps them as given too).
    pub(crate) fn batch_norm_backward_as(
        &self,
        grad_output: &DeviceTensor,
        x: &DeviceTensor,
        args: CudaNormBackwardArgs,
        recover: bool,
    ) -> Result<()> {
        let mut plan = plan_norm_backward(grad_output, x, &args, false)?;
        if let Planned::Run(p) = &mut plan {
            p.params.recover &= recover as i32;
        }
        self.run_norm_backward("batch_norm_backward", plan, &args.grads)
    }

    /// InstanceNorm backward on the device (as [`crate::ops::instance_norm_backward`]).
    pub fn instance_norm_backward(
        &self,
        grad_output: &DeviceTensor,
        x: &DeviceTensor,
        args: CudaNormBackwardArgs,
    ) -> Result<()> {
        let plan = plan_norm_backward(grad_output, x, &args, true)?;
        self.run_norm_backward("instance_norm_backward", plan, &args.grads)
    }

    /// GroupNorm backward on the device (as [`crate::ops::group_norm_backward`]).
    pub fn group_norm_backward(
        &self,
        grad_output: &DeviceTensor,
        x: &DeviceTensor,
        args: CudaGroupNormBackwardArgs,
    ) -> Result<()> {
        let plan = plan_group_norm_backward(grad_output, x, &args)?;
        self.run_norm_backward("group_norm_backward", plan, &args.grads)
    }

    /// LayerNorm backward on the device (as [`crate::ops::layer_norm_backward`]).
    pub fn layer_norm_backward(
        &self,
        grad_output: &DeviceTensor,
        x: &DeviceTensor,
        args: CudaLayerNormBackwardArgs,
    ) -> Result<()> {
        const OP: &str = "layer_norm_backward";
        let (dtype, mut p) = match plan_layer_norm_backward(grad_output, x, &args)? {
            Planned::Empty => return self.empty_grads(OP, &args.grads),
            Planned::Run(r) => r,
        };
        self.check_pointers(
            OP,
            &[
                ("input", p.x),
                ("grad_output", p.dy),
                ("grad_input", p.dx),
                ("mean", p.mean),
                ("invstd", p.rstd),
                ("weight", p.weight),
                ("grad_weight", p.grad_weight),
                ("grad_bias", p.grad_bias),
            ],
        )?;
        let sms = self.sm_count();
        let plan = launch::layer_norm_bwd(dtype, p.rows as usize, p.cols as usize, sms);
        let workspace = self.alloc_bytes(plan.workspace_bytes)?;
        p.workspace = workspace.ptr;
        // SAFETY: x, dy (and dx when given, apart from both) hold rows·cols elements, mean
        // and rstd `rows` compute values, weight and the parameter gradients `cols` compute
        // values (plan); all this device's memory (checked above); the workspace is sized by
        // the same launch plan the launches use and freed stream-ordered after them.
        unsafe { kernels::layer_norm_bwd(self, dtype, &p) }
    }

    /// LocalResponseNorm backward on the device (as
    /// [`crate::ops::local_response_norm_backward`]).
    pub fn local_response_norm_backward(
        &self,
        grad_output: &DeviceTensor,
        x: &DeviceTensor,
        grad_input: &mut DeviceTensorMut,
        args: LrnArgs,
    ) -> Result<()> {
        const OP: &str = "local_response_norm_backward";
        let Some((dtype, order, p)) =
            plan_local_response_norm_backward(grad_output, x, grad_input, &args)?
        else {
            return Ok(());
        };
        self.check_pointers(
            OP,
            &[("input", p.x), ("grad_output", p.dy), ("grad_input", p.dx)],
        )?;
        // SAFETY: x, dy and dx hold n·c·s elements in `order`, dx apart from both (plan),
        // all this device's memory (checked above).
        unsafe { kernels::lrn_bwd(self, dtype, order, &p) }
    }
}
