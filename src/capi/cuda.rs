//! The functional ops of a CUDA context: the C tensors become device views of the context's
//! [`CudaDevice`] and the device ops run on its stream (no host synchronisation).
//!
//! Rules on top of the CPU path (documented at normkit_context_create): tensors are memory of
//! the context's device, contiguous or channels-last and element-aligned (nothing can be
//! staged); parameters and statistics in the compute dtype; in place, `y` may be exactly `x`
//! and a backward's `grad_input` exactly `grad_output`, except for LocalResponseNorm (its
//! window reads neighbours); num_batches_tracked is host memory.

use super::context::normkit_context_t;
use super::error::{CResult, CapiError, normkit_status_t as S};
use super::ops::{
    normkit_batch_norm_args_t, normkit_group_norm_args_t, normkit_instance_norm_args_t,
    normkit_layer_norm_args_t, normkit_local_response_norm_args_t,
    normkit_local_response_norm_backward_args_t,
};
use super::tensor::{Desc, Memory, Need, normkit_tensor_t};
use crate::backend::cuda::backward::{
    CudaGroupNormBackwardArgs, CudaLayerNormBackwardArgs, CudaNormBackwardArgs, DeviceForwardStats,
    DeviceGradients,
};
use crate::backend::cuda::device::{CudaDevice, DeviceSavedStats};
use crate::backend::cuda::ops::{
    CudaBatchNormArgs, CudaGroupNormArgs, CudaInstanceNormArgs, CudaLayerNormArgs, DeviceTensor,
    DeviceTensorMut,
};
use crate::comm::Communicator;
use crate::layers::CudaModule;
use crate::ops::LrnArgs;
use crate::tensor::Buffer;

pub(crate) use super::ops::In;

/// The validated tensor arguments of one CUDA call.
pub(crate) struct DevIo {
    inputs: Vec<Option<Desc>>,
    outputs: Vec<Option<Desc>>,
}

/// The device views of a call (None for absent optional tensors).
pub(crate) type DevViews<'a, const N: usize, const M: usize> = (
    [Option<DeviceTensor<'a>>; N],
    [Option<DeviceTensorMut<'a>>; M],
);

/// # Safety
/// `t` is NULL or points to a valid `normkit_tensor_t` whose shape/strides arrays are valid.
unsafe fn describe(
    dev: &CudaDevice,
    name: &'static str,
    t: *const normkit_tensor_t,
    need: Need,
) -> CResult<Option<Desc>> {
    let memory = Memory::Cuda(dev.ordinal() as i32);
    // SAFETY: forwarded contract.
    let d = unsafe { super::tensor::describe(name, t, need, memory) }?;
    if let Some(d) = &d {
        d.device_parts()?;
    }
    Ok(d)
}

fn overlap(out: &Desc, other: &Desc, why: &str) -> CapiError {
    CapiError::new(
        S::NORMKIT_STATUS_UNSUPPORTED_LAYOUT,
        format!(
            "{}: output memory overlaps {} ({why})",
            out.name, other.name
        ),
    )
}

impl DevIo {
    /// Describes and checks every argument: device memory of the context's device, dense,
    /// outputs apart from each other and from the inputs, except that an output named in
    /// `in_place` may be exactly (same address, dtype, shape, strides) the input paired with it
    /// there: the pairs whose kernels read each element before writing it, in the same thread.
    ///
    /// # Safety
    /// Every non-NULL pointer points to a valid `normkit_tensor_t` (shape and strides arrays
    /// valid for the call); their data must be device memory as the C contract says (checked
    /// with the driver where it can be).
    pub unsafe fn new(
        dev: &CudaDevice,
        inputs: &[In],
        outputs: &[In],
        in_place: &[(&str, &str)],
    ) -> CResult<DevIo> {
        let describe_all = |list: &[In]| -> CResult<Vec<Option<Desc>>> {
            list.iter()
                // SAFETY: forwarded contract.
                .map(|&(name, t, need)| unsafe { describe(dev, name, t, need) })
                .collect()
        };
        let io = DevIo {
            inputs: describe_all(inputs)?,
            outputs: describe_all(outputs)?,
        };
        let outs: Vec<&Desc> = io.outputs.iter().flatten().collect();
        for (i, o) in outs.iter().enumerate() {
            for other in &outs[i + 1..] {
                if o.overlap_with(other).0 {
                    return Err(overlap(o, other, "outputs must be apart"));
                }
            }
            for d in io.inputs.iter().flatten() {
                let (overlaps, same) = o.overlap_with(d);
                let pair = in_place.contains(&(o.name, d.name));
                if overlaps && !(same && pair) {
                    let why = if pair {
                        "in place needs the same address, dtype, shape and strides"
                    } else {
                        "this CUDA op cannot run in place on these two"
                    };
                    return Err(overlap(o, d, why));
                }
            }
        }
        Ok(io)
    }

    /// Views of every argument.
    pub fn views<const N: usize, const M: usize>(&mut self) -> CResult<DevViews<'_, N, M>> {
        let mut ins = Vec::with_capacity(N);
        for d in &self.inputs {
            ins.push(match d {
                None => None,
                Some(d) => {
                    let (ptr, dtype, layout) = d.device_parts()?;
                    // SAFETY: the C caller guarantees the tensor's memory is valid device
                    // memory for the call; no output overlaps it except an exactly equal
                    // in-place output, which the kernels read before writing each element.
                    Some(unsafe { DeviceTensor::from_raw(ptr, dtype, &d.shape, layout) }?)
                }
            });
        }
        let mut outs = Vec::with_capacity(M);
        for d in &self.outputs {
            outs.push(match d {
                None => None,
                Some(d) => {
                    let (ptr, dtype, layout) = d.device_parts()?;
                    // SAFETY: as above, and outputs are pairwise apart (checked in new), and
                    // `&mut self` makes these the only views of them.
                    Some(unsafe { DeviceTensorMut::from_raw(ptr, dtype, &d.shape, layout) }?)
                }
            });
        }
        let ins = ins
            .try_into()
            .map_err(|_| CapiError::internal("input count"))?;
        let outs = outs
            .try_into()
            .map_err(|_| CapiError::internal("output count"))?;
        Ok((ins, outs))
    }
}

fn required<T>(v: Option<T>, name: &str) -> CResult<T> {
    super::tensor::required(v, name)
}

/// Checks an optional saved-statistics output before the op runs: `n` values of the compute
/// dtype of `x`.
fn check_saved(x: &DeviceTensor, t: &Option<DeviceTensorMut>, name: &str, n: usize) -> CResult<()> {
    if let Some(t) = t {
        let want = x.dtype().stat_dtype();
        if t.numel() != n || t.dtype() != want {
            return Err(CapiError::new(
                if t.numel() != n {
                    S::NORMKIT_STATUS_SHAPE_MISMATCH
                } else {
                    S::NORMKIT_STATUS_UNSUPPORTED_DTYPE
                },
                format!(
                    "{name}: expected {n} elements of {want} on CUDA, got {} elements of {}",
                    t.numel(),
                    t.dtype()
                ),
            ));
        }
    }
    Ok(())
}

/// Copies the op's saved statistics into the caller's optional outputs (queued).
fn write_saved(
    dev: &CudaDevice,
    op: &str,
    s: &DeviceSavedStats,
    mean: Option<DeviceTensorMut>,
    invstd: Option<DeviceTensorMut>,
) -> CResult<()> {
    for (t, b) in [(mean, &s.mean), (invstd, &s.invstd)] {
        if let (Some(mut t), false) = (t, b.is_empty()) {
            dev.copy_to(op, &mut t, b)?;
        }
    }
    Ok(())
}

/// The tensors of a BatchNorm/InstanceNorm forward: (x, weight, bias) and (y, running_mean,
/// running_var, save_mean, save_invstd).
///
/// # Safety
/// The tensor contract for every tensor.
unsafe fn channel_io(
    dev: &CudaDevice,
    ins: [*const normkit_tensor_t; 3],
    outs: [*mut normkit_tensor_t; 5],
) -> CResult<DevIo> {
    let (ins, outs) = super::ops::channel_forward_args(ins, outs);
    // SAFETY: forwarded tensor contract.
    unsafe { DevIo::new(dev, &ins, &outs, &[("y", "x")]) }
}

fn dim(x: &DeviceTensor, i: usize) -> usize {
    x.shape().get(i).copied().unwrap_or(0)
}

/// A BatchNorm forward (training or inference) on a CUDA context; returns the element count
/// per channel.
///
/// # Safety
/// The tensor contract for the args' tensors; `num_batches_tracked` NULL or a valid host i64.
pub(crate) unsafe fn batch_norm(
    dev: &CudaDevice,
    a: &normkit_batch_norm_args_t,
    training: bool,
    comm: Option<&dyn Communicator>,
) -> CResult<f64> {
    const OP: &str = "batch_norm";
    let mut counter = if training && !a.num_batches_tracked.is_null() {
        // SAFETY: non-NULL host memory, readable (caller contract); unaligned read.
        Some(unsafe { a.num_batches_tracked.read_unaligned() })
    } else {
        None
    };
    let t = [a.x, a.weight, a.bias];
    let o = [
        a.y,
        a.running_mean,
        a.running_var,
        a.save_mean,
        a.save_invstd,
    ];
    // SAFETY: forwarded tensor contract.
    let mut io = unsafe { channel_io(dev, t, o) }?;
    let ([x, weight, bias], [y, running_mean, running_var, sm, si]) = io.views::<3, 5>()?;
    let x = required(x, "x")?;
    let mut y = required(y, "y")?;
    let c = dim(&x, 1);
    if training {
        check_saved(&x, &sm, "save_mean", c)?;
        check_saved(&x, &si, "save_invstd", c)?;
    }
    let args = CudaBatchNormArgs {
        weight,
        bias,
        running_mean,
        running_var,
        num_batches_tracked: counter.as_mut(),
        training,
        momentum: (!a.momentum_cumulative).then_some(a.momentum),
        eps: a.eps,
    };
    let (stats, count) = match comm {
        Some(comm) => dev.sync_batch_norm(&x, &mut y, args, comm)?,
        None => (
            dev.batch_norm(&x, &mut y, args)?,
            (x.numel() / c.max(1)) as f64,
        ),
    };
    if training {
        write_saved(dev, OP, &stats, sm, si)?;
    }
    if let Some(n) = counter {
        // SAFETY: non-NULL (Some only then) and writable host memory (caller contract).
        unsafe { a.num_batches_tracked.write_unaligned(n) };
    }
    Ok(count)
}

/// InstanceNorm forward on a CUDA context.
///
/// # Safety
/// The tensor contract for the args' tensors.
pub(crate) unsafe fn instance_norm(
    dev: &CudaDevice,
    a: &normkit_instance_norm_args_t,
) -> CResult<()> {
    let t = [a.x, a.weight, a.bias];
    let o = [
        a.y,
        a.running_mean,
        a.running_var,
        a.save_mean,
        a.save_invstd,
    ];
    // SAFETY: forwarded tensor contract.
    let mut io = unsafe { channel_io(dev, t, o) }?;
    let ([x, weight, bias], [y, running_mean, running_var, sm, si]) = io.views::<3, 5>()?;
    let x = required(x, "x")?;
    let mut y = required(y, "y")?;
    if a.use_input_stats {
        let n = dim(&x, 0) * dim(&x, 1);
        check_saved(&x, &sm, "save_mean", n)?;
        check_saved(&x, &si, "save_invstd", n)?;
    }
    let stats = dev.instance_norm(
        &x,
        &mut y,
        CudaInstanceNormArgs {
            weight,
            bias,
            running_mean,
            running_var,
            use_input_stats: a.use_input_stats,
            momentum: a.momentum,
            eps: a.eps,
        },
    )?;
    write_saved(dev, "instance_norm", &stats, sm, si)
}

/// The tensors of a GroupNorm/LayerNorm forward as device views, with the saved outputs
/// checked against `rows(x)`.
///
/// # Safety
/// The tensor contract for every tensor.
#[allow(clippy::type_complexity)]
unsafe fn row_forward(
    dev: &CudaDevice,
    op: &str,
    t: [*const normkit_tensor_t; 6],
    rows: impl FnOnce(&DeviceTensor) -> CResult<usize>,
    run: impl for<'a> FnOnce(
        &DeviceTensor<'a>,
        &mut DeviceTensorMut<'a>,
        Option<DeviceTensor<'a>>,
        Option<DeviceTensor<'a>>,
    ) -> CResult<DeviceSavedStats>,
) -> CResult<()> {
    let [x, weight, bias, y, save_mean, save_invstd] = t;
    // SAFETY: forwarded tensor contract.
    let mut io = unsafe {
        DevIo::new(
            dev,
            &[
                ("x", x, Need::Required),
                ("weight", weight, Need::Optional),
                ("bias", bias, Need::Optional),
            ],
            &[
                ("y", y, Need::Required),
                ("save_mean", save_mean, Need::Optional),
                ("save_invstd", save_invstd, Need::Optional),
            ],
            &[("y", "x")],
        )
    }?;
    let ([x, weight, bias], [y, sm, si]) = io.views::<3, 3>()?;
    let x = required(x, "x")?;
    let mut y = required(y, "y")?;
    let n = rows(&x)?;
    check_saved(&x, &sm, "save_mean", n)?;
    check_saved(&x, &si, "save_invstd", n)?;
    let stats = run(&x, &mut y, weight, bias)?;
    write_saved(dev, op, &stats, sm, si)
}

/// GroupNorm forward on a CUDA context.
///
/// # Safety
/// The tensor contract for the args' tensors.
pub(crate) unsafe fn group_norm(
    dev: &CudaDevice,
    a: &normkit_group_norm_args_t,
    groups: usize,
) -> CResult<()> {
    let t = [
        a.x,
        a.weight,
        a.bias,
        a.y.cast_const(),
        a.save_mean.cast_const(),
        a.save_invstd.cast_const(),
    ];
    // SAFETY: forwarded tensor contract.
    unsafe {
        row_forward(
            dev,
            "group_norm",
            t,
            |x| Ok(dim(x, 0) * groups),
            |x, y, weight, bias| {
                Ok(dev.group_norm(
                    x,
                    y,
                    CudaGroupNormArgs {
                        num_groups: groups,
                        weight,
                        bias,
                        eps: a.eps,
                    },
                )?)
            },
        )
    }
}

/// x's last `nd` dims: 1 <= nd <= rank.
pub(crate) fn normalized_dims(rank: usize, nd: i32) -> CResult<usize> {
    usize::try_from(nd)
        .ok()
        .filter(|&n| n >= 1 && n <= rank)
        .ok_or_else(|| {
            CapiError::new(
                S::NORMKIT_STATUS_SHAPE_MISMATCH,
                format!("args.normalized_ndim: must be in [1, x.ndim = {rank}], got {nd}"),
            )
        })
}

/// LayerNorm forward on a CUDA context.
///
/// # Safety
/// The tensor contract for the args' tensors.
pub(crate) unsafe fn layer_norm(dev: &CudaDevice, a: &normkit_layer_norm_args_t) -> CResult<()> {
    let t = [
        a.x,
        a.weight,
        a.bias,
        a.y.cast_const(),
        a.save_mean.cast_const(),
        a.save_invstd.cast_const(),
    ];
    let nd = a.normalized_ndim;
    // SAFETY: forwarded tensor contract.
    unsafe {
        row_forward(
            dev,
            "layer_norm",
            t,
            |x| {
                let k = normalized_dims(x.shape().len(), nd)?;
                Ok(x.shape()[..x.shape().len() - k].iter().product())
            },
            |x, y, weight, bias| {
                let k = normalized_dims(x.shape().len(), nd)?;
                let normalized_shape = x.shape()[x.shape().len() - k..].to_vec();
                Ok(dev.layer_norm(
                    x,
                    y,
                    CudaLayerNormArgs {
                        normalized_shape,
                        weight,
                        bias,
                        eps: a.eps,
                    },
                )?)
            },
        )
    }
}

/// LocalResponseNorm forward on a CUDA context.
///
/// # Safety
/// The tensor contract for the args' tensors.
pub(crate) unsafe fn local_response_norm(
    dev: &CudaDevice,
    a: &normkit_local_response_norm_args_t,
    p: LrnArgs,
) -> CResult<()> {
    // SAFETY: forwarded tensor contract.
    let mut io = unsafe {
        DevIo::new(
            dev,
            &[("x", a.x, Need::Required)],
            &[("y", a.y.cast_const(), Need::Required)],
            &[],
        )
    }?;
    let ([x], [y]) = io.views::<1, 1>()?;
    let (x, mut y) = (required(x, "x")?, required(y, "y")?);
    Ok(dev.local_response_norm(&x, &mut y, p)?)
}

/// Which channel backward a CUDA call runs.
#[derive(Clone, Copy)]
pub(crate) enum ChannelBackward<'c> {
    Batch,
    Instance,
    /// SyncBatchNorm with its group and the forward's global count.
    SyncBatch(&'c dyn Communicator, f64),
}

/// The tensors of a backward call, in the order of [`backward_io`].
pub(crate) struct BackwardArgs {
    pub x: *const normkit_tensor_t,
    pub grad_output: *const normkit_tensor_t,
    pub weight: *const normkit_tensor_t,
    /// Saved mean / invstd, or the running mean / var (with `eps`).
    pub stats: [*const normkit_tensor_t; 2],
    pub running: bool,
    pub eps: f64,
    pub grads: [*mut normkit_tensor_t; 3],
    pub accumulate: bool,
}

/// Device views of a backward call: (x, g, weight, stat0, stat1) and the gradients.
///
/// # Safety
/// The tensor contract for every tensor.
unsafe fn backward_io(dev: &CudaDevice, b: &BackwardArgs) -> CResult<DevIo> {
    let (m, v) = if b.running {
        ("running_mean", "running_var")
    } else {
        ("save_mean", "save_invstd")
    };
    // SAFETY: forwarded tensor contract.
    unsafe {
        DevIo::new(
            dev,
            &[
                ("x", b.x, Need::Required),
                ("grad_output", b.grad_output, Need::Required),
                ("weight", b.weight, Need::Optional),
                (m, b.stats[0], Need::Required),
                (v, b.stats[1], Need::Required),
            ],
            &[
                ("grad_input", b.grads[0].cast_const(), Need::Optional),
                ("grad_weight", b.grads[1].cast_const(), Need::Optional),
                ("grad_bias", b.grads[2].cast_const(), Need::Optional),
            ],
            &[("grad_input", "grad_output")],
        )
    }
}

/// The gradient outputs and forward statistics of a backward call.
struct BackwardViews<'a> {
    x: DeviceTensor<'a>,
    g: DeviceTensor<'a>,
    weight: Option<DeviceTensor<'a>>,
    stats: [DeviceTensor<'a>; 2],
    grads: DeviceGradients<'a>,
}

fn backward_views<'a>(io: &'a mut DevIo, accumulate: bool) -> CResult<BackwardViews<'a>> {
    let ([x, g, weight, s0, s1], [gi, gw, gb]) = io.views::<5, 3>()?;
    Ok(BackwardViews {
        x: required(x, "x")?,
        g: required(g, "grad_output")?,
        weight,
        stats: [required(s0, "save_mean")?, required(s1, "save_invstd")?],
        grads: DeviceGradients {
            grad_input: gi,
            grad_weight: gw,
            grad_bias: gb,
            accumulate,
        },
    })
}

/// BatchNorm / InstanceNorm backward on a CUDA context.
///
/// # Safety
/// The tensor contract for the args' tensors.
pub(crate) unsafe fn channel_backward(
    dev: &CudaDevice,
    b: &BackwardArgs,
    op: ChannelBackward,
) -> CResult<()> {
    // SAFETY: forwarded tensor contract.
    let mut io = unsafe { backward_io(dev, b) }?;
    let v = backward_views(&mut io, b.accumulate)?;
    let [mean, second] = v.stats;
    let stats = if b.running {
        DeviceForwardStats::Running {
            mean,
            var: second,
            eps: b.eps,
        }
    } else {
        DeviceForwardStats::Saved {
            mean,
            invstd: second,
        }
    };
    let args = CudaNormBackwardArgs {
        weight: v.weight,
        stats,
        grads: v.grads,
    };
    match op {
        ChannelBackward::Batch => dev.batch_norm_backward(&v.g, &v.x, args)?,
        ChannelBackward::Instance => dev.instance_norm_backward(&v.g, &v.x, args)?,
        ChannelBackward::SyncBatch(comm, n) => {
            dev.sync_batch_norm_backward(&v.g, &v.x, args, n, comm)?
        }
    }
    Ok(())
}

/// GroupNorm backward on a CUDA context.
///
/// # Safety
/// The tensor contract for the args' tensors.
pub(crate) unsafe fn group_norm_backward(
    dev: &CudaDevice,
    b: &BackwardArgs,
    num_groups: usize,
) -> CResult<()> {
    // SAFETY: forwarded tensor contract.
    let mut io = unsafe { backward_io(dev, b) }?;
    let v = backward_views(&mut io, b.accumulate)?;
    let [mean, invstd] = v.stats;
    let args = CudaGroupNormBackwardArgs {
        num_groups,
        weight: v.weight,
        mean,
        invstd,
        grads: v.grads,
    };
    Ok(dev.group_norm_backward(&v.g, &v.x, args)?)
}

/// LayerNorm backward on a CUDA context.
///
/// # Safety
/// The tensor contract for the args' tensors.
pub(crate) unsafe fn layer_norm_backward(
    dev: &CudaDevice,
    b: &BackwardArgs,
    nd: i32,
) -> CResult<()> {
    // SAFETY: forwarded tensor contract.
    let mut io = unsafe { backward_io(dev, b) }?;
    let v = backward_views(&mut io, b.accumulate)?;
    let rank = v.x.shape().len();
    let k = normalized_dims(rank, nd)?;
    let [mean, invstd] = v.stats;
    let args = CudaLayerNormBackwardArgs {
        normalized_shape: v.x.shape()[rank - k..].to_vec(),
        weight: v.weight,
        mean,
        invstd,
        grads: v.grads,
    };
    Ok(dev.layer_norm_backward(&v.g, &v.x, args)?)
}

/// LocalResponseNorm backward on a CUDA context.
///
/// # Safety
/// The tensor contract for the args' tensors.
pub(crate) unsafe fn local_response_norm_backward(
    dev: &CudaDevice,
    a: &normkit_local_response_norm_backward_args_t,
    p: LrnArgs,
) -> CResult<()> {
    // SAFETY: forwarded tensor contract.
    let mut io = unsafe {
        DevIo::new(
            dev,
            &[
                ("x", a.x, Need::Required),
                ("grad_output", a.grad_output, Need::Required),
            ],
            &[("grad_input", a.grad_input.cast_const(), Need::Required)],
            &[],
        )
    }?;
    let ([x, g], [gi]) = io.views::<2, 1>()?;
    let (x, g, mut gi) = (
        required(x, "x")?,
        required(g, "grad_output")?,
        required(gi, "grad_input")?,
    );
    Ok(dev.local_response_norm_backward(&g, &x, &mut gi, p)?)
}

/// The CUDA device of `ctx`, which must be the device `module` lives on.
fn module_device<'c>(ctx: &'c normkit_context_t, module: &CudaModule) -> CResult<&'c CudaDevice> {
    match ctx.cuda() {
        Some(dev) if dev.ordinal() == module.device().ordinal() => Ok(dev),
        _ => Err(CapiError::new(
            S::NORMKIT_STATUS_DEVICE_MISMATCH,
            format!(
                "ctx: the module lives on CUDA device {}; call it with a CUDA context of that \
                 device",
                module.device().ordinal()
            ),
        )),
    }
}

/// A CUDA module's forward on device tensors.
///
/// # Safety
/// The tensor contract for x and y.
pub(crate) unsafe fn module_forward(
    ctx: &normkit_context_t,
    module: &mut CudaModule,
    x: *const normkit_tensor_t,
    y: *mut normkit_tensor_t,
) -> CResult<()> {
    let dev = module_device(ctx, module)?;
    // SAFETY: forwarded tensor contract.
    let mut io = unsafe {
        DevIo::new(
            dev,
            &[("x", x, Need::Required)],
            &[("y", y.cast_const(), Need::Required)],
            &[("y", "x")],
        )
    }?;
    let ([x], [y]) = io.views::<1, 1>()?;
    let (x, mut y) = (required(x, "x")?, required(y, "y")?);
    Ok(module.forward(&x, &mut y)?)
}

/// A CUDA module's backward on device tensors.
///
/// # Safety
/// The tensor contract for x, grad_output and grad_input.
pub(crate) unsafe fn module_backward(
    ctx: &normkit_context_t,
    module: &mut CudaModule,
    x: *const normkit_tensor_t,
    grad_output: *const normkit_tensor_t,
    grad_input: *mut normkit_tensor_t,
) -> CResult<()> {
    let dev = module_device(ctx, module)?;
    // SAFETY: forwarded tensor contract.
    let mut io = unsafe {
        DevIo::new(
            dev,
            &[
                ("x", x, Need::Required),
                ("grad_output", grad_output, Need::Required),
            ],
            &[("grad_input", grad_input.cast_const(), Need::Optional)],
            &[("grad_input", "grad_output")],
        )
    }?;
    let ([x, g], [mut gi]) = io.views::<2, 1>()?;
    let (x, g) = (required(x, "x")?, required(g, "grad_output")?);
    Ok(module.backward(&x, &g, gi.as_mut())?)
}

/// Writes `b` (converted to the tensor's dtype) into the device tensor `dst` (queued).
///
/// # Safety
/// The tensor contract for dst.
pub(crate) unsafe fn write_device(
    what: &str,
    dev: &CudaDevice,
    dst: *mut normkit_tensor_t,
    b: &Buffer,
) -> CResult<()> {
    // SAFETY: forwarded tensor contract.
    let mut io =
        unsafe { DevIo::new(dev, &[], &[("dst", dst.cast_const(), Need::Required)], &[]) }?;
    let ([], [dst]) = io.views::<0, 1>()?;
    let mut dst = required(dst, "dst")?;
    if dst.numel() != b.len() {
        return Err(CapiError::new(
            S::NORMKIT_STATUS_SHAPE_MISMATCH,
            format!(
                "dst: the {what} has {} elements, the tensor has {}",
                b.len(),
                dst.numel()
            ),
        ));
    }
    let value = b.cast(dst.dtype());
    Ok(dev.write_tensor(what, "dst", &mut dst, &value)?)
}

/// Reads the device tensor `src` (waits for the device); `expected`: its required element
/// count, when known.
///
/// # Safety
/// The tensor contract for src.
pub(crate) unsafe fn read_device(
    what: &str,
    dev: &CudaDevice,
    src: *const normkit_tensor_t,
    expected: Option<usize>,
) -> CResult<Buffer> {
    // SAFETY: forwarded tensor contract.
    let mut io = unsafe { DevIo::new(dev, &[("src", src, Need::Required)], &[], &[]) }?;
    let ([src], []) = io.views::<1, 0>()?;
    let src = required(src, "src")?;
    if let Some(n) = expected.filter(|&n| n != src.numel()) {
        return Err(CapiError::new(
            S::NORMKIT_STATUS_SHAPE_MISMATCH,
            format!(
                "src: the {what} has {n} elements, the tensor has {}",
                src.numel()
            ),
        ));
    }
    Ok(dev.read_tensor(what, "src", &src)?)
}
