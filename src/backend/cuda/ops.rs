//! Device tensors and the planning half of the CUDA forward ops: validation and kernel
//! parameters, without touching a device (so it is testable anywhere). The launching half is
//! [`super::device::CudaDevice`] (feature `cuda`).
//!
//! Validation is the CPU ops' own: each device operand is mirrored by a host view with the
//! same shape and dtype over a one-element buffer (zero strides; a few bytes for the
//! per-channel running statistics), and the CPU op's `validate` runs on those views, so the
//! device ops return exactly the CPU ops' errors. On top, the device path requires dense
//! layouts, parameters in the compute dtype and shapes within the kernels' index range.

use std::marker::PhantomData;

use super::launch::ChannelOrder;
use super::params::{
    BatchNormApplyParams, GroupNormParams, InstanceNormRunningParams, LayerNormParams, LrnParams,
};
use crate::dtype::DType;
use crate::error::{Error, ErrorKind, Result, fmt_shape};
use crate::ops::{
    BatchNormArgs, GroupNormArgs, InstanceNormArgs, LayerNormArgs, LrnArgs, batch_norm, group_norm,
    instance_norm, layer_norm, local_response_norm,
};
use crate::tensor::{Buffer, Layout, Tensor, TensorMut, checked_numel};
use half::{bf16, f16};

/// Largest element count the kernels index (i64 indices plus a grid stride of headroom).
pub const MAX_ELEMENTS: usize = 1 << 62;
/// Largest channel count (BatchNorm's statistics grid has one block column per channel).
pub const MAX_CHANNELS: usize = i32::MAX as usize;

#[derive(Clone, Debug)]
pub(super) struct Meta {
    pub(super) ptr: u64,
    pub(super) dtype: DType,
    pub(super) shape: Vec<usize>,
    pub(super) layout: Layout,
}

impl Meta {
    fn new(op: &str, ptr: u64, dtype: DType, shape: &[usize], layout: Layout) -> Result<Meta> {
        if layout == Layout::Strided {
            return Err(Error::layout(
                op,
                "tensor",
                "a contiguous or channels-last device tensor",
                "strided",
            ));
        }
        checked_numel(op, "shape", shape)?;
        Ok(Meta {
            ptr,
            dtype,
            shape: shape.to_vec(),
            layout,
        })
    }
    pub(super) fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    fn unsqueeze0(&self) -> Result<Meta> {
        if self.layout == Layout::ChannelsLast {
            return Err(Error::layout(
                "unsqueeze0",
                "input",
                "a contiguous unbatched tensor",
                "channels-last",
            ));
        }
        let mut shape = vec![1];
        shape.extend_from_slice(&self.shape);
        Ok(Meta {
            shape,
            layout: Layout::Contiguous,
            ..self.clone()
        })
    }
}

/// A read-only view of device memory: address, dtype, shape and a dense layout (contiguous,
/// or channels-last for `(N, C, *S)`).
#[derive(Clone, Debug)]
pub struct DeviceTensor<'a> {
    pub(super) meta: Meta,
    _borrow: PhantomData<&'a ()>,
}

/// A writable view of device memory.
#[derive(Debug)]
pub struct DeviceTensorMut<'a> {
    pub(super) meta: Meta,
    _borrow: PhantomData<&'a mut ()>,
}

macro_rules! tensor_accessors {
    ($t:ident) => {
        impl<'a> $t<'a> {
            /// Device address of element 0.
            pub fn ptr(&self) -> u64 {
                self.meta.ptr
            }
            pub fn dtype(&self) -> DType {
                self.meta.dtype
            }
            pub fn shape(&self) -> &[usize] {
                &self.meta.shape
            }
            pub fn layout(&self) -> Layout {
                self.meta.layout
            }
            pub fn numel(&self) -> usize {
                self.meta.numel()
            }
        }
    };
}
tensor_accessors!(DeviceTensor);
tensor_accessors!(DeviceTensorMut);

impl<'a> DeviceTensor<'a> {
    /// A view of caller-owned device memory (a CUDA framework's tensor, `cudaMalloc` memory).
    /// Ops check with `cuPointerGetAttribute` that `ptr` is device memory of their device.
    ///
    /// # Safety
    /// `ptr` must address `numel(shape)` elements of `dtype` in `layout` that stay allocated
    /// and are not written by anyone else while work that reads them is queued.
    pub unsafe fn from_raw(
        ptr: u64,
        dtype: DType,
        shape: &[usize],
        layout: Layout,
    ) -> Result<DeviceTensor<'a>> {
        Ok(DeviceTensor {
            meta: Meta::new("DeviceTensor::from_raw", ptr, dtype, shape, layout)?,
            _borrow: PhantomData,
        })
    }
}

impl<'a> DeviceTensor<'a> {
    /// The same contiguous memory viewed with a leading dim of 1 (an unbatched input as a
    /// batch of one).
    pub fn unsqueeze0(&self) -> Result<DeviceTensor<'a>> {
        Ok(DeviceTensor {
            meta: self.meta.unsqueeze0()?,
            _borrow: PhantomData,
        })
    }
}

impl<'a> DeviceTensorMut<'a> {
    /// A writable view of caller-owned device memory.
    ///
    /// # Safety
    /// As [`DeviceTensor::from_raw`], and nothing else may read or write the memory while
    /// work that writes it is queued.
    pub unsafe fn from_raw(
        ptr: u64,
        dtype: DType,
        shape: &[usize],
        layout: Layout,
    ) -> Result<DeviceTensorMut<'a>> {
        Ok(DeviceTensorMut {
            meta: Meta::new("DeviceTensorMut::from_raw", ptr, dtype, shape, layout)?,
            _borrow: PhantomData,
        })
    }

    /// The same contiguous memory viewed with a leading dim of 1 (an unbatched input as a
    /// batch of one), borrowing this view.
    pub fn unsqueeze0(&mut self) -> Result<DeviceTensorMut<'_>> {
        Ok(DeviceTensorMut {
            meta: self.meta.unsqueeze0()?,
            _borrow: PhantomData,
        })
    }

    /// A shorter-lived writable view of the same memory (a reborrow).
    pub fn as_mut_view(&mut self) -> DeviceTensorMut<'_> {
        DeviceTensorMut {
            meta: self.meta.clone(),
            _borrow: PhantomData,
        }
    }

    /// A read-only view of the same memory, borrowing this one.
    pub fn as_tensor(&self) -> DeviceTensor<'_> {
        DeviceTensor {
            meta: self.meta.clone(),
            _borrow: PhantomData,
        }
    }
}

/// Arguments of [`super::device::CudaDevice::layer_norm`] (as [`LayerNormArgs`]).
#[derive(Debug)]
pub struct CudaLayerNormArgs<'a> {
    pub normalized_shape: Vec<usize>,
    pub weight: Option<DeviceTensor<'a>>,
    pub bias: Option<DeviceTensor<'a>>,
    pub eps: f64,
}

/// Arguments of [`super::device::CudaDevice::group_norm`] (as [`GroupNormArgs`]).
#[derive(Debug)]
pub struct CudaGroupNormArgs<'a> {
    pub num_groups: usize,
    pub weight: Option<DeviceTensor<'a>>,
    pub bias: Option<DeviceTensor<'a>>,
    pub eps: f64,
}

/// Arguments of [`super::device::CudaDevice::instance_norm`] (as [`InstanceNormArgs`]).
#[derive(Debug)]
pub struct CudaInstanceNormArgs<'a> {
    pub weight: Option<DeviceTensor<'a>>,
    pub bias: Option<DeviceTensor<'a>>,
    pub running_mean: Option<DeviceTensorMut<'a>>,
    pub running_var: Option<DeviceTensorMut<'a>>,
    pub use_input_stats: bool,
    pub momentum: f64,
    pub eps: f64,
}

/// Arguments of [`super::device::CudaDevice::batch_norm`] (as [`BatchNormArgs`]).
#[derive(Debug)]
pub struct CudaBatchNormArgs<'a> {
    pub weight: Option<DeviceTensor<'a>>,
    pub bias: Option<DeviceTensor<'a>>,
    pub running_mean: Option<DeviceTensorMut<'a>>,
    pub running_var: Option<DeviceTensorMut<'a>>,
    pub num_batches_tracked: Option<&'a mut i64>,
    pub training: bool,
    pub momentum: Option<f64>,
    pub eps: f64,
}

impl Default for CudaBatchNormArgs<'_> {
    fn default() -> Self {
        CudaBatchNormArgs {
            weight: None,
            bias: None,
            running_mean: None,
            running_var: None,
            num_batches_tracked: None,
            training: false,
            momentum: Some(0.1),
            eps: 1e-5,
        }
    }
}

static P_F32: [f32; 1] = [0.0];
static P_F64: [f64; 1] = [0.0];
static P_F16: [f16; 1] = [f16::ZERO];
static P_BF16: [bf16; 1] = [bf16::ZERO];

/// A host view with `m`'s shape and dtype over one element (zero strides), for validation.
pub(super) fn proxy(m: &Meta) -> Result<Tensor<'static>> {
    let strides = vec![0; m.shape.len()];
    match m.dtype {
        DType::F32 => Tensor::with_strides(&P_F32[..], &m.shape, &strides),
        DType::F64 => Tensor::with_strides(&P_F64[..], &m.shape, &strides),
        DType::F16 => Tensor::with_strides(&P_F16[..], &m.shape, &strides),
        DType::BF16 => Tensor::with_strides(&P_BF16[..], &m.shape, &strides),
    }
}

/// Host buffers standing in for writable per-channel operands during validation.
fn mut_proxy(m: Option<&DeviceTensorMut>) -> Option<Buffer> {
    m.map(|t| Buffer::filled(t.dtype(), t.numel(), 0.0))
}

fn mut_view(b: &mut Option<Buffer>) -> Option<TensorMut<'_>> {
    b.as_mut().map(|b| b.view_mut())
}

fn opt_proxy(t: Option<&DeviceTensor>) -> Result<Option<Tensor<'static>>> {
    t.map(|t| proxy(&t.meta)).transpose()
}

fn ptr_of(t: Option<&DeviceTensor>) -> u64 {
    t.map_or(0, |t| t.ptr())
}

fn ptr_of_mut(t: Option<&DeviceTensorMut>) -> u64 {
    t.map_or(0, |t| t.ptr())
}

/// Parameters must be in the compute dtype (the kernels read f32, or f64 for f64 input).
pub(super) fn check_compute_dtype(
    op: &str,
    x: DType,
    params: &[(&str, Option<DType>)],
) -> Result<()> {
    let want = x.stat_dtype();
    for (name, d) in params {
        if let Some(d) = d {
            if *d != want {
                return Err(Error::dtype(
                    op,
                    name,
                    format!("{want} on CUDA (the compute dtype of {x} input)"),
                    d.to_string(),
                ));
            }
        }
    }
    Ok(())
}

/// The dtypes of the optional parameter operands, named as the CPU ops name them.
fn param_dtypes(
    weight: Option<&DeviceTensor>,
    bias: Option<&DeviceTensor>,
    running_mean: Option<&DeviceTensorMut>,
    running_var: Option<&DeviceTensorMut>,
) -> [(&'static str, Option<DType>); 4] {
    [
        ("weight", weight.map(|t| t.dtype())),
        ("bias", bias.map(|t| t.dtype())),
        ("running_mean", running_mean.map(|t| t.dtype())),
        ("running_var", running_var.map(|t| t.dtype())),
    ]
}

/// Checks the element and channel counts against the kernels' index range.
pub fn check_index_range(op: &str, shape: &[usize], channels: usize) -> Result<()> {
    let numel = checked_numel(op, "input", shape)?;
    if numel > MAX_ELEMENTS || channels > MAX_CHANNELS {
        return Err(Error::new(
            ErrorKind::Overflow,
            op,
            "input",
            format!(
                "at most {MAX_ELEMENTS} elements and {MAX_CHANNELS} channels (the CUDA kernels' \
                 index range)"
            ),
            format!("shape {}", fmt_shape(shape)),
        ));
    }
    Ok(())
}

/// The kernel element order of `(N, C, *S)` input `x` and output `y`.
pub(super) fn channel_order(op: &str, x: &Meta, y: &Meta) -> Result<ChannelOrder> {
    let s: usize = x.shape[2..].iter().product();
    if x.shape.len() < 3 || s == 1 {
        // (N, C, 1...) is both layouts at once
        return Ok(ChannelOrder::Nhwc);
    }
    if x.layout != y.layout {
        return Err(Error::layout(
            op,
            "output",
            format!("the input's layout ({:?})", x.layout),
            format!("{:?}", y.layout),
        ));
    }
    Ok(match x.layout {
        Layout::ChannelsLast => ChannelOrder::Nhwc,
        _ => ChannelOrder::Nchw,
    })
}

pub(super) fn require_contiguous(op: &str, operand: &str, m: &Meta) -> Result<()> {
    let s: usize = m.shape.get(2..).map_or(1, |d| d.iter().product());
    if m.layout == Layout::ChannelsLast && m.shape.len() >= 3 && s > 1 {
        return Err(Error::layout(
            op,
            operand,
            "a contiguous tensor",
            "channels-last",
        ));
    }
    Ok(())
}

pub(super) fn ncs(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2..].iter().product())
}

/// A planned LayerNorm: parameters with `mean`/`rstd` left 0 for the device to fill.
#[derive(Clone, Debug)]
pub struct LayerNormPlan {
    pub dtype: DType,
    pub params: LayerNormParams,
}

/// Validates a LayerNorm on device tensors; `None` for an empty input (nothing to launch).
pub fn plan_layer_norm(
    x: &DeviceTensor,
    y: &DeviceTensorMut,
    args: &CudaLayerNormArgs,
) -> Result<Option<LayerNormPlan>> {
    const OP: &str = "layer_norm";
    let host = LayerNormArgs {
        normalized_shape: args.normalized_shape.clone(),
        weight: opt_proxy(args.weight.as_ref())?,
        bias: opt_proxy(args.bias.as_ref())?,
        eps: args.eps,
    };
    let Some((rows, cols)) = layer_norm::validate(&proxy(&x.meta)?, (y.shape(), y.dtype()), &host)?
    else {
        return Ok(None);
    };
    check_compute_dtype(
        OP,
        x.dtype(),
        &param_dtypes(args.weight.as_ref(), args.bias.as_ref(), None, None),
    )?;
    require_contiguous(OP, "input", &x.meta)?;
    require_contiguous(OP, "output", &y.meta)?;
    for (name, t) in [("weight", &args.weight), ("bias", &args.bias)] {
        if let Some(t) = t {
            require_contiguous(OP, name, &t.meta)?;
        }
    }
    check_index_range(OP, x.shape(), 1)?;
    Ok(Some(LayerNormPlan {
        dtype: x.dtype(),
        params: LayerNormParams {
            x: x.ptr(),
            y: y.ptr(),
            weight: ptr_of(args.weight.as_ref()),
            bias: ptr_of(args.bias.as_ref()),
            mean: 0,
            rstd: 0,
            rows: rows as i64,
            cols: cols as i64,
            eps: args.eps,
        },
    }))
}

/// A planned GroupNorm / InstanceNorm-with-input-statistics launch.
#[derive(Clone, Debug)]
pub struct GroupNormPlan {
    pub dtype: DType,
    pub order: ChannelOrder,
    pub params: GroupNormParams,
}

impl GroupNormPlan {
    /// Number of saved statistics (N·G).
    pub fn stats_len(&self) -> usize {
        (self.params.n * self.params.groups) as usize
    }
}

fn group_plan(
    x: &DeviceTensor,
    y: &DeviceTensorMut,
    weight: Option<&DeviceTensor>,
    bias: Option<&DeviceTensor>,
    groups: usize,
    eps: f64,
    instance: bool,
) -> Result<GroupNormPlan> {
    let op = if instance {
        "instance_norm"
    } else {
        "group_norm"
    };
    let order = channel_order(op, &x.meta, &y.meta)?;
    let (n, c, s) = ncs(x.shape());
    check_index_range(op, x.shape(), c)?;
    Ok(GroupNormPlan {
        dtype: x.dtype(),
        order,
        params: GroupNormParams {
            x: x.ptr(),
            y: y.ptr(),
            weight: ptr_of(weight),
            bias: ptr_of(bias),
            mean: 0,
            rstd: 0,
            m2: 0,
            n: n as i64,
            c: c as i64,
            s: s as i64,
            groups: groups as i64,
            eps,
            clamp_var: (!instance) as i32,
            zero_var_rule: instance as i32,
        },
    })
}

/// Validates a GroupNorm on device tensors; `None` for an empty input.
pub fn plan_group_norm(
    x: &DeviceTensor,
    y: &DeviceTensorMut,
    args: &CudaGroupNormArgs,
) -> Result<Option<GroupNormPlan>> {
    let host = GroupNormArgs {
        num_groups: args.num_groups,
        weight: opt_proxy(args.weight.as_ref())?,
        bias: opt_proxy(args.bias.as_ref())?,
        eps: args.eps,
    };
    if !group_norm::validate(&proxy(&x.meta)?, (y.shape(), y.dtype()), &host)? {
        return Ok(None);
    }
    check_compute_dtype(
        "group_norm",
        x.dtype(),
        &param_dtypes(args.weight.as_ref(), args.bias.as_ref(), None, None),
    )?;
    group_plan(
        x,
        y,
        args.weight.as_ref(),
        args.bias.as_ref(),
        args.num_groups,
        args.eps,
        false,
    )
    .map(Some)
}

/// What an InstanceNorm runs on the device.
#[derive(Clone, Debug)]
pub enum InstanceNormPlan {
    /// Each instance's own statistics (the GroupNorm kernels with G = C); with running
    /// statistics, then their update from the instance mean and M2 (`running`: `mean` and
    /// `m2` left 0 for the device to fill).
    InputStats {
        group: GroupNormPlan,
        running: Option<InstanceNormRunningParams>,
    },
    /// Running statistics (the BatchNorm inference kernels).
    RunningStats(BatchNormInferPlan),
}

/// Validates an InstanceNorm on device tensors; `None` for an empty input.
pub fn plan_instance_norm(
    x: &DeviceTensor,
    y: &DeviceTensorMut,
    args: &CudaInstanceNormArgs,
) -> Result<Option<InstanceNormPlan>> {
    const OP: &str = "instance_norm";
    let (mut rm, mut rv) = (
        mut_proxy(args.running_mean.as_ref()),
        mut_proxy(args.running_var.as_ref()),
    );
    let host = InstanceNormArgs {
        weight: opt_proxy(args.weight.as_ref())?,
        bias: opt_proxy(args.bias.as_ref())?,
        running_mean: mut_view(&mut rm),
        running_var: mut_view(&mut rv),
        use_input_stats: args.use_input_stats,
        momentum: args.momentum,
        eps: args.eps,
    };
    if instance_norm::validate(&proxy(&x.meta)?, (y.shape(), y.dtype()), &host)?.is_none() {
        return Ok(None);
    }
    check_compute_dtype(
        OP,
        x.dtype(),
        &param_dtypes(
            args.weight.as_ref(),
            args.bias.as_ref(),
            args.running_mean.as_ref(),
            args.running_var.as_ref(),
        ),
    )?;
    if args.use_input_stats {
        let c = x.shape()[1];
        let group = group_plan(
            x,
            y,
            args.weight.as_ref(),
            args.bias.as_ref(),
            c,
            args.eps,
            true,
        )?;
        let (rm, rv) = (
            ptr_of_mut(args.running_mean.as_ref()),
            ptr_of_mut(args.running_var.as_ref()),
        );
        let p = &group.params;
        let running = (rm != 0 || rv != 0).then_some(InstanceNormRunningParams {
            mean: 0,
            m2: 0,
            running_mean: rm,
            running_var: rv,
            n: p.n,
            c: p.c,
            s: p.s,
            momentum: args.momentum,
        });
        return Ok(Some(InstanceNormPlan::InputStats { group, running }));
    }
    infer_plan(
        OP,
        x,
        y,
        args.weight.as_ref(),
        args.bias.as_ref(),
        args.running_mean.as_ref(),
        args.running_var.as_ref(),
        args.eps,
    )
    .map(|p| Some(InstanceNormPlan::RunningStats(p)))
}

/// A planned BatchNorm inference (or InstanceNorm with running statistics).
#[derive(Clone, Debug)]
pub struct BatchNormInferPlan {
    pub dtype: DType,
    pub order: ChannelOrder,
    pub params: BatchNormApplyParams,
}

#[allow(clippy::too_many_arguments)]
fn infer_plan(
    op: &str,
    x: &DeviceTensor,
    y: &DeviceTensorMut,
    weight: Option<&DeviceTensor>,
    bias: Option<&DeviceTensor>,
    running_mean: Option<&DeviceTensorMut>,
    running_var: Option<&DeviceTensorMut>,
    eps: f64,
) -> Result<BatchNormInferPlan> {
    let order = channel_order(op, &x.meta, &y.meta)?;
    let (n, c, s) = ncs(x.shape());
    check_index_range(op, x.shape(), c)?;
    Ok(BatchNormInferPlan {
        dtype: x.dtype(),
        order,
        params: BatchNormApplyParams {
            x: x.ptr(),
            y: y.ptr(),
            mean: ptr_of_mut(running_mean),
            rstd_or_var: ptr_of_mut(running_var),
            weight: ptr_of(weight),
            bias: ptr_of(bias),
            n: n as i64,
            c: c as i64,
            s: s as i64,
            eps,
            mean_lo: 0,
        },
    })
}

/// What a BatchNorm runs on the device.
#[derive(Clone, Debug)]
pub enum BatchNormPlan {
    /// Empty input: nothing to launch; in training the saved statistics are C zeros and
    /// the counter moves.
    Empty { channels: usize },
    /// Batch statistics: the statistics launch (with the running-statistic update) then the
    /// apply launch. `momentum` is the factor already resolved (cumulative average included).
    Train {
        dtype: DType,
        order: ChannelOrder,
        /// x, y, weight, bias, n, c, s, eps filled; mean/rstd left 0 for the device.
        apply: BatchNormApplyParams,
        running_mean: u64,
        running_var: u64,
        momentum: f64,
    },
    /// Running statistics.
    Infer(BatchNormInferPlan),
}

/// Validates a BatchNorm on device tensors.
pub fn plan_batch_norm(
    x: &DeviceTensor,
    y: &DeviceTensorMut,
    args: &CudaBatchNormArgs,
) -> Result<BatchNormPlan> {
    plan_batch_norm_in("batch_norm", x, y, args, false)
}

/// Validates one rank's SyncBatchNorm training step on device tensors: as
/// [`plan_batch_norm`], but an empty or one-value local batch takes part (the global batch
/// decides), so it is never [`BatchNormPlan::Empty`].
pub fn plan_sync_batch_norm(
    x: &DeviceTensor,
    y: &DeviceTensorMut,
    args: &CudaBatchNormArgs,
) -> Result<BatchNormPlan> {
    plan_batch_norm_in("sync_batch_norm", x, y, args, true)
}

fn plan_batch_norm_in(
    op: &str,
    x: &DeviceTensor,
    y: &DeviceTensorMut,
    args: &CudaBatchNormArgs,
    distributed: bool,
) -> Result<BatchNormPlan> {
    let (mut rm, mut rv) = (
        mut_proxy(args.running_mean.as_ref()),
        mut_proxy(args.running_var.as_ref()),
    );
    let mut counter = args.num_batches_tracked.as_deref().copied();
    let host = BatchNormArgs {
        weight: opt_proxy(args.weight.as_ref())?,
        bias: opt_proxy(args.bias.as_ref())?,
        running_mean: mut_view(&mut rm),
        running_var: mut_view(&mut rv),
        num_batches_tracked: counter.as_mut(),
        training: args.training,
        momentum: args.momentum,
        eps: args.eps,
    };
    let checked = batch_norm::validate(
        op,
        &proxy(&x.meta)?,
        (y.shape(), y.dtype()),
        &host,
        distributed,
    )?;
    let updates = match checked {
        batch_norm::Checked::Empty => {
            return Ok(BatchNormPlan::Empty {
                channels: x.shape()[1],
            });
        }
        batch_norm::Checked::Run { updates, .. } => updates,
    };
    check_compute_dtype(
        op,
        x.dtype(),
        &param_dtypes(
            args.weight.as_ref(),
            args.bias.as_ref(),
            args.running_mean.as_ref(),
            args.running_var.as_ref(),
        ),
    )?;
    let infer = infer_plan(
        op,
        x,
        y,
        args.weight.as_ref(),
        args.bias.as_ref(),
        args.running_mean.as_ref(),
        args.running_var.as_ref(),
        args.eps,
    )?;
    if !args.training {
        return Ok(BatchNormPlan::Infer(infer));
    }
    let next = args.num_batches_tracked.as_deref().map(|n| n + 1);
    let momentum = match (updates, args.momentum, next) {
        (false, _, _) => 0.0,
        (true, Some(m), _) => m,
        (true, None, Some(n)) => 1.0 / n as f64,
        (true, None, None) => 0.0, // rejected by validate
    };
    Ok(BatchNormPlan::Train {
        dtype: infer.dtype,
        order: infer.order,
        apply: BatchNormApplyParams {
            mean: 0,
            rstd_or_var: 0,
            ..infer.params
        },
        running_mean: if updates { infer.params.mean } else { 0 },
        running_var: if updates { infer.params.rstd_or_var } else { 0 },
        momentum,
    })
}

/// A planned LocalResponseNorm launch.
#[derive(Clone, Debug)]
pub struct LrnPlan {
    pub dtype: DType,
    pub order: ChannelOrder,
    pub params: LrnParams,
}

/// Validates a LocalResponseNorm on device tensors; `None` for an empty input.
pub fn plan_local_response_norm(
    x: &DeviceTensor,
    y: &DeviceTensorMut,
    args: &LrnArgs,
) -> Result<Option<LrnPlan>> {
    const OP: &str = "local_response_norm";
    if !local_response_norm::validate(&proxy(&x.meta)?, (y.shape(), y.dtype()), args)? {
        return Ok(None);
    }
    let order = channel_order(OP, &x.meta, &y.meta)?;
    let (n, c, s) = ncs(x.shape());
    check_index_range(OP, x.shape(), c)?;
    if x.ptr() == y.ptr() {
        return Err(Error::layout(
            OP,
            "output",
            "memory separate from the input (the window reads neighbours)",
            "the input's memory",
        ));
    }
    Ok(Some(LrnPlan {
        dtype: x.dtype(),
        order,
        params: LrnParams {
            x: x.ptr(),
            y: y.ptr(),
            n: n as i64,
            c: c as i64,
            s: s as i64,
            size: args.size as i64,
            alpha: args.alpha,
            beta: args.beta,
            k: args.k,
        },
    }))
}
