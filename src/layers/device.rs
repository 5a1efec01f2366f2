//! Modules on a CUDA device: [`CudaModule`] keeps a module's parameters, running statistics,
//! the statistics its forward saved and its parameter gradients in device memory, and runs
//! forward and backward with the device ops of a [`CudaDevice`] (the real GPU, or the host
//! emulation), never synchronising the host except to read state out.
//!
//! The module-level rules (lazy materialisation, accepted ranks, the counter and momentum,
//! train/eval, which statistics normalise) are the host module's own: `CudaModule` wraps the
//! host module, asks it for the plan of each forward (`plan_forward`), and runs that plan on
//! the device. The host module keeps the configuration, the mode and `num_batches_tracked`
//! (a host integer, as the cumulative momentum is computed on the host); its tensor state is
//! only the initial values (uploaded on construction, materialisation, load and reset).
//! SyncBatchNorm in a group runs [`CudaDevice::sync_batch_norm`] (host-side collectives).

use crate::backend::cuda::backward::{
    CudaGroupNormBackwardArgs, CudaLayerNormBackwardArgs, CudaNormBackwardArgs, DeviceForwardStats,
    DeviceGradients,
};
use crate::backend::cuda::device::{CudaDevice, DeviceBuffer, DeviceSavedStats};
use crate::backend::cuda::ops::{
    CudaBatchNormArgs, CudaGroupNormArgs, CudaInstanceNormArgs, CudaLayerNormArgs, DeviceTensor,
    DeviceTensorMut,
};
use crate::dtype::DType;
use crate::error::{Error, ErrorKind, Result};
use crate::layers::{
    BatchNorm, GroupNorm, InstanceNorm, LayerNorm, LocalResponseNorm, Module, State,
    check_forward_record, no_such_state,
};
use crate::tensor::Buffer;

/// Any normalization module (what [`CudaModule`] wraps).
#[derive(Clone, Debug)]
pub enum AnyModule {
    BatchNorm(BatchNorm),
    InstanceNorm(InstanceNorm),
    GroupNorm(GroupNorm),
    LayerNorm(LayerNorm),
    LocalResponseNorm(LocalResponseNorm),
}

macro_rules! any_from {
    ($($v:ident),*) => {$(
        impl From<$v> for AnyModule {
            fn from(m: $v) -> Self {
                AnyModule::$v(m)
            }
        }
    )*};
}
any_from!(
    BatchNorm,
    InstanceNorm,
    GroupNorm,
    LayerNorm,
    LocalResponseNorm
);

impl AnyModule {
    pub fn as_module(&self) -> &(dyn Module + Send) {
        match self {
            AnyModule::BatchNorm(m) => m,
            AnyModule::InstanceNorm(m) => m,
            AnyModule::GroupNorm(m) => m,
            AnyModule::LayerNorm(m) => m,
            AnyModule::LocalResponseNorm(m) => m,
        }
    }
    pub fn as_module_mut(&mut self) -> &mut (dyn Module + Send) {
        match self {
            AnyModule::BatchNorm(m) => m,
            AnyModule::InstanceNorm(m) => m,
            AnyModule::GroupNorm(m) => m,
            AnyModule::LayerNorm(m) => m,
            AnyModule::LocalResponseNorm(m) => m,
        }
    }
}

const TENSORS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

/// What the last successful forward saved, in device memory.
#[derive(Debug)]
struct DeviceSaved {
    shape: Vec<usize>,
    dtype: DType,
    /// Batch statistics, or `None` when the running statistics normalised.
    stats: Option<DeviceSavedStats>,
    /// SyncBatchNorm: the global element count per channel of a synchronised forward.
    sync_count: Option<f64>,
}

/// A module whose state lives on a CUDA device (see the module docs). Forward and backward
/// take device tensors; state is read and written by `state_dict` name, as [`Module`].
///
/// Parameters and running statistics are held in the compute dtype on the device (f32; f64
/// for f64 parameters): a module with f16/bf16 parameters keeps them in f32 there, and reads
/// them (and its gradients) out rounded to its dtype, so over several steps its running
/// statistics can differ from the CPU module's (which rounds them every step) by the
/// rounding of that dtype.
#[derive(Debug)]
pub struct CudaModule {
    dev: CudaDevice,
    module: AnyModule,
    /// Device copies of weight, bias, running_mean, running_var (by [`TENSORS`] index), in
    /// the compute dtype (f32, f64 for f64 parameters).
    tensors: [Option<DeviceBuffer>; 4],
    /// The module's parameter dtype (what state and gradients are read out as).
    param_dtype: Option<DType>,
    saved: Option<DeviceSaved>,
    /// Accumulated dL/dweight and dL/dbias.
    grads: [Option<DeviceBuffer>; 2],
}

fn slot(name: &str) -> Option<usize> {
    TENSORS.iter().position(|n| *n == name)
}

fn view<'a>(
    b: &'a Option<DeviceBuffer>,
    shape: Option<&[usize]>,
) -> Result<Option<DeviceTensor<'a>>> {
    b.as_ref()
        .map(|b| b.view(shape.unwrap_or(&[b.len()])))
        .transpose()
}

fn view_mut(b: &mut Option<DeviceBuffer>) -> Result<Option<DeviceTensorMut<'_>>> {
    b.as_mut()
        .map(|b| {
            let n = b.len();
            b.view_mut(&[n])
        })
        .transpose()
}

impl CudaModule {
    /// Moves `module` to `dev`: its present parameters and buffers are uploaded (lazy ones
    /// when they materialise).
    pub fn new(module: impl Into<AnyModule>, dev: &CudaDevice) -> Result<CudaModule> {
        let mut m = CudaModule {
            dev: dev.clone(),
            module: module.into(),
            tensors: [None, None, None, None],
            param_dtype: None,
            saved: None,
            grads: [None, None],
        };
        m.upload_from_host(false)?;
        Ok(m)
    }

    /// The module with the device state copied back into it (waits for the device).
    pub fn into_host(mut self) -> Result<AnyModule> {
        for (i, name) in TENSORS.iter().enumerate() {
            if let Some(b) = &self.tensors[i] {
                let v = State::Tensor(self.read_param(b)?);
                self.module.as_module_mut().load_state(name, &v)?;
            }
        }
        Ok(self.module)
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// The BatchNorm behind this module (to set a SyncBatchNorm's process group), if it is one.
    pub fn batch_norm_mut(&mut self) -> Option<&mut BatchNorm> {
        match &mut self.module {
            AnyModule::BatchNorm(bn) => Some(bn),
            _ => None,
        }
    }

    /// The host module (configuration, mode, counter; its tensor values are not the device's).
    pub fn host(&self) -> &AnyModule {
        &self.module
    }

    /// Uploads the host module's tensor state: every present entry (`only_missing`: those
    /// without a device copy yet, i.e. just materialised).
    fn upload_from_host(&mut self, only_missing: bool) -> Result<()> {
        for (i, name) in TENSORS.iter().enumerate() {
            if only_missing && self.tensors[i].is_some() {
                continue;
            }
            self.tensors[i] = match self.module.as_module().state(name) {
                Ok(State::Tensor(b)) => Some(self.upload_param(&b)?),
                _ => None,
            };
        }
        Ok(())
    }

    /// Uploads a parameter or buffer in the compute dtype (f16/bf16 parameters are held in
    /// f32 on the device, as the kernels read them) and remembers the module's dtype.
    fn upload_param(&mut self, b: &Buffer) -> Result<DeviceBuffer> {
        self.param_dtype = Some(b.dtype());
        self.dev.upload_buffer(&b.cast(b.dtype().stat_dtype()))
    }

    /// A device parameter (or gradient) read out in the module's parameter dtype.
    fn read_param(&self, b: &DeviceBuffer) -> Result<Buffer> {
        let v = b.to_buffer()?;
        Ok(match self.param_dtype {
            Some(d) => v.cast(d),
            None => v,
        })
    }

    pub fn name(&self) -> &'static str {
        self.module.as_module().name()
    }
    pub fn train(&mut self) {
        self.module.as_module_mut().train()
    }
    pub fn eval(&mut self) {
        self.module.as_module_mut().eval()
    }
    pub fn is_training(&self) -> bool {
        self.module.as_module().is_training()
    }
    pub fn is_initialized(&self) -> bool {
        self.module.as_module().is_initialized()
    }
    pub fn state_names(&self) -> Vec<&'static str> {
        self.module.as_module().state_names()
    }

    /// One state entry, copied from the device (waits for it).
    pub fn state(&self, name: &str) -> Result<State> {
        match slot(name).and_then(|i| self.tensors[i].as_ref()) {
            Some(b) => Ok(State::Tensor(self.read_param(b)?)),
            None => self.module.as_module().state(name),
        }
    }

    /// Overwrites one state entry (validated and cast by the host module, then uploaded).
    pub fn load_state(&mut self, name: &str, value: &State) -> Result<()> {
        self.module.as_module_mut().load_state(name, value)?;
        if let Some(i) = slot(name) {
            if let State::Tensor(b) = self.module.as_module().state(name)? {
                self.tensors[i] = Some(self.upload_param(&b)?);
            }
        }
        Ok(())
    }

    pub fn reset_running_stats(&mut self) -> Result<()> {
        self.module.as_module_mut().reset_running_stats();
        self.upload_from_host(false)
    }

    pub fn reset_parameters(&mut self) -> Result<()> {
        self.module.as_module_mut().reset_parameters();
        self.upload_from_host(false)
    }

    /// The accumulated gradient of `weight` or `bias`, copied from the device.
    pub fn grad(&self, name: &str) -> Result<Option<Buffer>> {
        let i = match name {
            "weight" => 0,
            "bias" => 1,
            _ => return Err(no_such_state(self.name(), name)),
        };
        if self.tensors[i].is_none() {
            return Err(no_such_state(self.name(), name));
        }
        self.grads[i]
            .as_ref()
            .map(|b| self.read_param(b))
            .transpose()
    }

    pub fn zero_grad(&mut self) {
        self.grads = [None, None];
    }

    /// Normalises `x` into `y` on the device, as the host module's forward (running
    /// statistics updated in training, the counter moved on the host).
    pub fn forward(&mut self, x: &DeviceTensor, y: &mut DeviceTensorMut) -> Result<()> {
        self.saved = None;
        let dev = self.dev.clone();
        let shape = x.shape().to_vec();
        let stats: Option<DeviceSavedStats> = match &mut self.module {
            AnyModule::BatchNorm(bn) => {
                let plan = bn.plan_forward(&shape)?;
                let name = bn.name();
                let eps = bn.config.eps;
                self.upload_missing()?;
                let [w, b, rm, rv] = &mut self.tensors;
                let (running_mean, running_var) = if plan.pass_buffers {
                    (view_mut(rm)?, view_mut(rv)?)
                } else {
                    (None, None)
                };
                let args = CudaBatchNormArgs {
                    weight: view(w, None)?,
                    bias: view(b, None)?,
                    running_mean,
                    running_var,
                    num_batches_tracked: None,
                    training: plan.use_batch_stats,
                    momentum: Some(plan.momentum),
                    eps,
                };
                let Some(group) = &plan.group else {
                    let s = dev.batch_norm(x, y, args).map_err(|e| e.in_op(name))?;
                    self.saved = Some(DeviceSaved {
                        shape,
                        dtype: x.dtype(),
                        stats: plan.use_batch_stats.then_some(s),
                        sync_count: None,
                    });
                    return Ok(());
                };
                match dev.sync_batch_norm(x, y, args, group.as_ref()) {
                    Ok((s, count)) => {
                        self.saved = Some(DeviceSaved {
                            shape,
                            dtype: x.dtype(),
                            stats: Some(s),
                            sync_count: Some(count),
                        });
                        return Ok(());
                    }
                    Err(e) => {
                        // A failed exchange leaves the state as it was (the counter included).
                        if let (ErrorKind::Communication, AnyModule::BatchNorm(bn)) =
                            (e.kind(), &mut self.module)
                        {
                            bn.restore_counter(plan.counter_before);
                        }
                        return Err(e.in_op(name));
                    }
                }
            }
            AnyModule::InstanceNorm(m) => {
                let plan = m.plan_forward(&shape)?;
                let (name, eps) = (m.name(), m.config.eps);
                self.upload_missing()?;
                let [w, b, rm, rv] = &mut self.tensors;
                let args = CudaInstanceNormArgs {
                    weight: view(w, None)?,
                    bias: view(b, None)?,
                    running_mean: view_mut(rm)?,
                    running_var: view_mut(rv)?,
                    use_input_stats: plan.use_input_stats,
                    momentum: plan.momentum,
                    eps,
                };
                let s = if plan.unbatched {
                    dev.instance_norm(&x.unsqueeze0()?, &mut y.unsqueeze0()?, args)
                } else {
                    dev.instance_norm(x, y, args)
                }
                .map_err(|e| e.in_op(name))?;
                plan.use_input_stats.then_some(s)
            }
            AnyModule::GroupNorm(m) => {
                let [w, b, ..] = &self.tensors;
                let args = CudaGroupNormArgs {
                    num_groups: m.config.num_groups,
                    weight: view(w, None)?,
                    bias: view(b, None)?,
                    eps: m.config.eps,
                };
                Some(
                    dev.group_norm(x, y, args)
                        .map_err(|e| e.in_op("GroupNorm"))?,
                )
            }
            AnyModule::LayerNorm(m) => {
                let ns = m.config.normalized_shape.clone();
                let [w, b, ..] = &self.tensors;
                let args = CudaLayerNormArgs {
                    normalized_shape: ns.clone(),
                    weight: view(w, Some(&ns))?,
                    bias: view(b, Some(&ns))?,
                    eps: m.config.eps,
                };
                Some(
                    dev.layer_norm(x, y, args)
                        .map_err(|e| e.in_op("LayerNorm"))?,
                )
            }
            AnyModule::LocalResponseNorm(m) => {
                dev.local_response_norm(x, y, m.args)
                    .map_err(|e| e.in_op("LocalResponseNorm"))?;
                None
            }
        };
        self.saved = Some(DeviceSaved {
            shape,
            dtype: x.dtype(),
            stats,
            sync_count: None,
        });
        Ok(())
    }

    fn upload_missing(&mut self) -> Result<()> {
        self.upload_from_host(true)
    }

    /// Backward of the last successful forward (`x` its input, `grad_output` dL/dy): writes
    /// dL/dx into `grad_input` when given and accumulates the parameter gradients on the
    /// device ([`CudaModule::grad`]).
    pub fn backward(
        &mut self,
        x: &DeviceTensor,
        grad_output: &DeviceTensor,
        grad_input: Option<&mut DeviceTensorMut>,
    ) -> Result<()> {
        let name = self.name();
        check_forward_record(
            name,
            self.saved.as_ref().map(|s| (s.shape.as_slice(), s.dtype)),
            x.shape(),
            x.dtype(),
        )?;
        let Some(saved) = &self.saved else {
            return Err(Error::invalid(name, "backward", "a forward record", "none"));
        };
        // parameter gradients start at zero, then accumulate
        for i in 0..2 {
            if let (Some(p), None) = (&self.tensors[i], &self.grads[i]) {
                self.grads[i] = Some(self.dev.alloc_zeroed(p.dtype(), p.len())?);
            }
        }
        let dev = &self.dev;
        let [w, _, rm, rv] = &self.tensors;
        let [gw, gb] = &mut self.grads;
        let mut gi = grad_input;
        let (grad_weight, grad_bias) = (view_mut(gw)?, view_mut(gb)?);
        let grads = move |grad_input| -> Result<DeviceGradients> {
            Ok(DeviceGradients {
                grad_input,
                grad_weight,
                grad_bias,
                accumulate: true,
            })
        };
        let channel_stats = |eps: f64| -> Result<DeviceForwardStats> {
            match (&saved.stats, view(rm, None)?, view(rv, None)?) {
                (Some(s), _, _) => Ok(DeviceForwardStats::Saved {
                    mean: s.mean.view(&[s.mean.len()])?,
                    invstd: s.invstd.view(&[s.invstd.len()])?,
                }),
                (None, Some(mean), Some(var)) => Ok(DeviceForwardStats::Running { mean, var, eps }),
                _ => Err(Error::invalid(
                    name,
                    "backward",
                    "the running statistics the forward used",
                    "none",
                )),
            }
        };
        let saved_pair = || -> Result<(DeviceTensor, DeviceTensor)> {
            let s = saved
                .stats
                .as_ref()
                .ok_or_else(|| Error::invalid(name, "backward", "saved statistics", "none"))?;
            Ok((
                s.mean.view(&[s.mean.len()])?,
                s.invstd.view(&[s.invstd.len()])?,
            ))
        };
        match &self.module {
            AnyModule::BatchNorm(bn) => {
                let args = CudaNormBackwardArgs {
                    weight: view(w, None)?,
                    stats: channel_stats(bn.config.eps)?,
                    grads: grads(gi.as_deref_mut().map(|g| g.as_mut_view()))?,
                };
                match (saved.sync_count, bn.process_group()) {
                    (Some(count), Some(group)) => {
                        dev.sync_batch_norm_backward(grad_output, x, args, count, group.as_ref())
                    }
                    _ => dev.batch_norm_backward(grad_output, x, args),
                }
            }
            AnyModule::InstanceNorm(m) => {
                let unbatched = m.is_unbatched(x.shape().len());
                let mut g1 = match gi.as_deref_mut() {
                    Some(g) if unbatched => Some(g.unsqueeze0()?),
                    Some(g) => Some(g.as_mut_view()),
                    None => None,
                };
                let args = CudaNormBackwardArgs {
                    weight: view(w, None)?,
                    stats: channel_stats(m.config.eps)?,
                    grads: grads(g1.take())?,
                };
                if unbatched {
                    dev.instance_norm_backward(&grad_output.unsqueeze0()?, &x.unsqueeze0()?, args)
                } else {
                    dev.instance_norm_backward(grad_output, x, args)
                }
            }
            AnyModule::GroupNorm(m) => {
                let (mean, invstd) = saved_pair()?;
                let args = CudaGroupNormBackwardArgs {
                    num_groups: m.config.num_groups,
                    weight: view(w, None)?,
                    mean,
                    invstd,
                    grads: grads(gi.as_deref_mut().map(|g| g.as_mut_view()))?,
                };
                dev.group_norm_backward(grad_output, x, args)
            }
            AnyModule::LayerNorm(m) => {
                let ns = m.config.normalized_shape.clone();
                let (mean, invstd) = saved_pair()?;
                let args = CudaLayerNormBackwardArgs {
                    normalized_shape: ns.clone(),
                    weight: view(w, Some(&ns))?,
                    mean,
                    invstd,
                    grads: grads(gi.as_deref_mut().map(|g| g.as_mut_view()))?,
                };
                dev.layer_norm_backward(grad_output, x, args)
            }
            AnyModule::LocalResponseNorm(m) => match gi {
                Some(g) => dev.local_response_norm_backward(grad_output, x, g, m.args),
                None => Ok(()),
            },
        }
        .map_err(|e| e.in_op(name))
    }
}
