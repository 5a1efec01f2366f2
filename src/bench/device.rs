//! The standard cases on a CUDA device (`normkit bench --device cuda[:N]|emu`).
//!
//! A [`DevicePrepared`] wraps the host [`Prepared`] of a case (its inputs, parameters and
//! float64 reference check) and holds device copies of every operand: parameters in the
//! compute dtype (f32, f64 for f64 input), as the device ops require. It runs the device op
//! (the backward op for `bwd` cases, from the saved statistics of one device training forward
//! run when prepared), and checks by downloading the output (and parameter gradients) into
//! the host case and running its reference check.
//!
//! [`measure_device`] times it with a [`StreamTimer`]: CUDA events on a GPU, the host wall
//! clock on the emulation (`emu`, for exercising this whole path without a GPU; its times
//! say nothing about a GPU).

use super::{Case, Measurement, Prepared, Suite, median};
use crate::Buffer;
use crate::backend::cuda::backward::{
    CudaGroupNormBackwardArgs, CudaLayerNormBackwardArgs, CudaNormBackwardArgs, DeviceForwardStats,
    DeviceGradients,
};
use crate::backend::cuda::device::{CudaDevice, CudaOp, DeviceBuffer, DeviceSavedStats};
use crate::backend::cuda::emu::EmuDevice;
use crate::backend::cuda::ops::{
    CudaBatchNormArgs, CudaGroupNormArgs, CudaInstanceNormArgs, CudaLayerNormArgs, DeviceTensor,
    DeviceTensorMut,
};
use crate::backend::cuda::timer::StreamTimer;
use crate::error::{Error, Result};

/// The device of `--device`: a GPU by ordinal, or the host emulation of the CUDA execution
/// model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cuda(usize),
    Emu,
}

impl DeviceSpec {
    /// `cuda` (= `cuda:0`), `cuda:N` or `emu`; `None` for anything else.
    pub fn parse(s: &str) -> Option<DeviceSpec> {
        match s {
            "cuda" => Some(DeviceSpec::Cuda(0)),
            "emu" => Some(DeviceSpec::Emu),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda),
        }
    }

    /// The `device` field of the measurements: `cuda:N` or `cuda-emu`.
    pub fn name(self) -> String {
        match self {
            DeviceSpec::Cuda(n) => format!("cuda:{n}"),
            DeviceSpec::Emu => "cuda-emu".into(),
        }
    }

    /// Opens the device: a [`crate::ErrorKind::DeviceUnavailable`] error (with the probe's reason)
    /// when there is no usable GPU, or no emulation in this build.
    pub fn open(self) -> Result<CudaDevice> {
        match self {
            DeviceSpec::Emu => CudaDevice::emulated(EmuDevice {
                sms: 4,
                reverse_blocks: false,
                reverse_threads: false,
            }),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(n) => CudaDevice::new(n),
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => Err(Error::new(
                crate::error::ErrorKind::DeviceUnavailable,
                "cuda",
                "device",
                "a CUDA driver, device and NVRTC",
                crate::backend::cuda::probe()
                    .reason()
                    .unwrap_or("unavailable")
                    .to_string(),
            )),
        }
    }
}

/// Compiles and loads every kernel the standard cases launch (so no compile is timed).
pub fn prepare(dev: &CudaDevice) -> Result<()> {
    dev.prepare(&CudaOp::ALL)
}

fn view<'b>(b: &'b DeviceBuffer, shape: &[usize], cl: bool) -> Result<DeviceTensor<'b>> {
    if cl {
        b.view_channels_last(shape)
    } else {
        b.view(shape)
    }
}

fn view_mut<'b>(b: &'b mut DeviceBuffer, shape: &[usize], cl: bool) -> Result<DeviceTensorMut<'b>> {
    if cl {
        b.view_mut_channels_last(shape)
    } else {
        b.view_mut(shape)
    }
}

/// A 1-D view of a whole optional buffer.
fn flat_mut(b: &mut Option<DeviceBuffer>) -> Result<Option<DeviceTensorMut<'_>>> {
    b.as_mut()
        .map(|b| {
            let len = b.len();
            b.view_mut(&[len])
        })
        .transpose()
}

/// A case with device copies of its operands, ready to run on a device.
pub struct DevicePrepared {
    host: Prepared,
    dev: CudaDevice,
    x: DeviceBuffer,
    /// The output (`dx` for backward cases).
    y: DeviceBuffer,
    weight: Option<DeviceBuffer>,
    bias: Option<DeviceBuffer>,
    running_mean: Option<DeviceBuffer>,
    running_var: Option<DeviceBuffer>,
    dy: Option<DeviceBuffer>,
    grad_weight: Option<DeviceBuffer>,
    grad_bias: Option<DeviceBuffer>,
    saved: Option<DeviceSavedStats>,
}

impl DevicePrepared {
    /// Prepares the host case ([`Prepared::new`]) and uploads it; a backward case runs the
    /// device training forward once for its saved statistics.
    pub fn new(dev: &CudaDevice, case: &Case, suite: &Suite) -> std::result::Result<Self, String> {
        let host = Prepared::new(case, suite)?;
        let name = case.name();
        Self::upload(dev, host)
            .and_then(|mut p| {
                if p.host.case.is_backward() {
                    p.saved = Some(p.forward()?);
                }
                Ok(p)
            })
            .map_err(|e| format!("{name}: {e}"))
    }

    fn upload(dev: &CudaDevice, host: Prepared) -> Result<DevicePrepared> {
        let sd = host.case.dtype.stat_dtype();
        let param = |b: &Option<Buffer>| -> Result<Option<DeviceBuffer>> {
            b.as_ref()
                .map(|b| dev.upload_buffer(&b.cast(sd)))
                .transpose()
        };
        let grad = |b: &Option<Buffer>| -> Result<Option<DeviceBuffer>> {
            b.as_ref()
                .map(|b| dev.alloc_zeroed(sd, b.len()))
                .transpose()
        };
        Ok(DevicePrepared {
            dev: dev.clone(),
            x: dev.upload_buffer(&host.x.to_buffer())?,
            y: dev.alloc_zeroed(host.case.dtype, host.y.len())?,
            weight: param(&host.weight)?,
            bias: param(&host.bias)?,
            running_mean: param(&host.running_mean)?,
            running_var: param(&host.running_var)?,
            dy: host
                .dy
                .as_ref()
                .map(|b| dev.upload_buffer(&b.to_buffer()))
                .transpose()?,
            grad_weight: grad(&host.grad_weight)?,
            grad_bias: grad(&host.grad_bias)?,
            saved: None,
            host,
        })
    }

    pub fn case(&self) -> &Case {
        &self.host.case
    }

    /// Queues the op once on the device's stream (the backward op for `bwd` cases).
    pub fn run(&mut self) -> Result<()> {
        if self.host.case.is_backward() {
            self.backward()
        } else {
            self.forward().map(|_| ())
        }
    }

    /// The forward op (BatchNorm in training mode for backward cases); returns the saved
    /// statistics (empty for LocalResponseNorm and inference).
    fn forward(&mut self) -> Result<DeviceSavedStats> {
        let pshape = self.host.param_shape();
        let c = &self.host.case;
        let (shape, cl, eps) = (c.shape.as_slice(), c.channels_last(), self.host.eps);
        let x = view(&self.x, shape, cl)?;
        let mut y = view_mut(&mut self.y, shape, cl)?;
        let weight = self.weight.as_ref().map(|b| b.view(&pshape)).transpose()?;
        let bias = self.bias.as_ref().map(|b| b.view(&pshape)).transpose()?;
        match c.layer.as_str() {
            l if l.starts_with("BatchNorm") => {
                let args = CudaBatchNormArgs {
                    weight,
                    bias,
                    running_mean: flat_mut(&mut self.running_mean)?,
                    running_var: flat_mut(&mut self.running_var)?,
                    training: c.mode != "eval",
                    eps,
                    ..Default::default()
                };
                self.dev.batch_norm(&x, &mut y, args)
            }
            l if l.starts_with("InstanceNorm") => {
                let args = CudaInstanceNormArgs {
                    weight,
                    bias,
                    running_mean: None,
                    running_var: None,
                    use_input_stats: true,
                    momentum: 0.1,
                    eps,
                };
                self.dev.instance_norm(&x, &mut y, args)
            }
            "GroupNorm" => {
                let num_groups = c.num_groups.unwrap_or(1);
                let args = CudaGroupNormArgs {
                    num_groups,
                    weight,
                    bias,
                    eps,
                };
                self.dev.group_norm(&x, &mut y, args)
            }
            "LayerNorm" => {
                let args = CudaLayerNormArgs {
                    normalized_shape: pshape.clone(),
                    weight,
                    bias,
                    eps,
                };
                self.dev.layer_norm(&x, &mut y, args)
            }
            "LocalResponseNorm" => {
                self.dev.local_response_norm(&x, &mut y, self.host.lrn)?;
                Ok(DeviceSavedStats {
                    mean: self.dev.alloc(c.dtype.stat_dtype(), 0)?,
                    invstd: self.dev.alloc(c.dtype.stat_dtype(), 0)?,
                })
            }
            other => Err(Error::invalid(
                "bench",
                "layer",
                "a layer of the standard suite",
                other.to_string(),
            )),
        }
    }

    /// The backward op: `dx` into `y`, parameter gradients, from the saved statistics.
    fn backward(&mut self) -> Result<()> {
        let pshape = self.host.param_shape();
        let c = &self.host.case;
        let (shape, cl) = (c.shape.as_slice(), c.channels_last());
        let (Some(dy), Some(saved)) = (&self.dy, &self.saved) else {
            return Err(Error::invalid(
                "bench",
                "case",
                "a prepared backward case",
                c.name(),
            ));
        };
        let (g, x) = (view(dy, shape, cl)?, view(&self.x, shape, cl)?);
        let weight = self.weight.as_ref().map(|b| b.view(&pshape)).transpose()?;
        let grads = DeviceGradients {
            grad_input: Some(view_mut(&mut self.y, shape, cl)?),
            grad_weight: flat_mut(&mut self.grad_weight)?,
            grad_bias: flat_mut(&mut self.grad_bias)?,
            accumulate: false,
        };
        let mean = saved.mean.view(&[saved.mean.len()])?;
        let invstd = saved.invstd.view(&[saved.invstd.len()])?;
        match c.layer.as_str() {
            l if l.starts_with("BatchNorm") => self.dev.batch_norm_backward(
                &g,
                &x,
                CudaNormBackwardArgs {
                    weight,
                    stats: DeviceForwardStats::Saved { mean, invstd },
                    grads,
                },
            ),
            "GroupNorm" => self.dev.group_norm_backward(
                &g,
                &x,
                CudaGroupNormBackwardArgs {
                    num_groups: c.num_groups.unwrap_or(1),
                    weight,
                    mean,
                    invstd,
                    grads,
                },
            ),
            "LayerNorm" => self.dev.layer_norm_backward(
                &g,
                &x,
                CudaLayerNormBackwardArgs {
                    normalized_shape: pshape,
                    weight,
                    mean,
                    invstd,
                    grads,
                },
            ),
            other => Err(Error::invalid(
                "bench",
                "layer",
                "a layer with a backward case (BatchNorm, GroupNorm, LayerNorm)",
                other.to_string(),
            )),
        }
    }

    /// Downloads the output (and parameter gradients) into the host case and runs its
    /// float64 reference check on `samples` outputs.
    pub fn check(&mut self, samples: usize) -> std::result::Result<(), String> {
        let name = self.host.case.name();
        let download = |b: &Option<DeviceBuffer>| -> Result<Option<Buffer>> {
            b.as_ref().map(|b| b.to_buffer()).transpose()
        };
        let fetched = (|| -> Result<_> {
            Ok((
                self.y.to_buffer()?,
                download(&self.grad_weight)?,
                download(&self.grad_bias)?,
            ))
        })()
        .map_err(|e| format!("{name}: download: {e}"))?;
        let (y, grad_weight, grad_bias) = fetched;
        self.host.y = super::Lined::from_buffer(y);
        (self.host.grad_weight, self.host.grad_bias) = (grad_weight, grad_bias);
        self.host.check(samples)
    }
}

/// Runs the case once and checks it, runs `warmup` more times, then times `reps` runs, one
/// timed region each, with `timer`; reports the median and minimum.
pub fn measure_device(
    prep: &mut DevicePrepared,
    timer: &mut dyn StreamTimer,
    device: &str,
    warmup: usize,
    reps: usize,
) -> std::result::Result<Measurement, String> {
    let name = prep.case().name();
    let fail = |e: Error| format!("{name}: {e}");
    prep.run().map_err(fail)?;
    prep.check(256)?;
    for _ in 0..warmup {
        prep.run().map_err(fail)?;
    }
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        timer.start().map_err(fail)?;
        prep.run().map_err(fail)?;
        times.push(timer.stop().map_err(fail)?);
    }
    let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(Measurement {
        case: prep.case().clone(),
        device: device.to_string(),
        threads: 0,
        median_ms: median(&mut times),
        min_ms,
        reps: times.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn device_specs_parse() {
        assert_eq!(DeviceSpec::parse("cuda"), Some(DeviceSpec::Cuda(0)));
        assert_eq!(DeviceSpec::parse("cuda:3"), Some(DeviceSpec::Cuda(3)));
        assert_eq!(DeviceSpec::parse("emu"), Some(DeviceSpec::Emu));
        assert_eq!(DeviceSpec::parse("cuda:x"), None);
        assert_eq!(DeviceSpec::parse("cpu"), None);
        assert_eq!(DeviceSpec::Cuda(1).name(), "cuda:1");
        assert_eq!(DeviceSpec::Emu.name(), "cuda-emu");
    }

    #[test]
    fn a_missing_gpu_is_device_unavailable_with_the_probe_reason() {
        if let Some(reason) = crate::backend::cuda::probe().reason() {
            let e = DeviceSpec::Cuda(0).open().unwrap_err();
            assert_eq!(e.kind, ErrorKind::DeviceUnavailable);
            assert_eq!(e.got, reason);
        }
    }
}
