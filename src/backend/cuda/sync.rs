//! SyncBatchNorm on device tensors: one rank's training step of a group whose collectives run
//! through a [`Communicator`] (in-process threads, NCCL, MPI through the C callbacks).
//!
//! Forward: the statistics kernel gives the local per-channel mean and 1/sqrt(var) (eps = 0,
//! so the variance comes back to f32/f64 relative precision; f32 input's mean as its f32 value
//! plus remainder, from the kernel's f64 statistics), the host packs `[count, mean, M2]` (f64),
//! exchanges it with one `all_gather` and merges with Chan's formula in f64 (the CPU op's
//! [`all_gather_moments`]); the global mean (f32 input: with its remainder below the saved f32
//! mean, as the CPU op's centre) and inverse std are uploaded and the apply kernel normalises;
//! the running statistics are updated with the CPU op's own rule from the global moments.
//! (An f32 mean of 1e4 alone is off by up to 4.9e-4, a twentieth of a spread of 1e-2: on such
//! data y was 1.6e-2 of the largest output off before the remainders, 4.662 for the CPU's
//! 4.750.) Backward: the reduce kernel gives the local Σdy and Σdy·(x − μ), one
//! `all_reduce_sum` adds them over the ranks, the host computes the dx coefficients with the
//! global count and the elementwise kernel applies them; parameter gradients are this rank's
//! sums (as the CPU op and PyTorch).
//!
//! The collectives take host payloads, so each step waits for the device twice (download of
//! the local sums, upload of the merged ones): inherent to host-side communicators.

use super::backward::{
    CudaNormBackwardArgs, DeviceForwardStats, DeviceGradients, Planned, plan_norm_backward,
};
use super::device::{CudaDevice, DeviceSavedStats};
use super::kernels::{self, Launcher};
use super::launch;
use super::ops::{
    BatchNormPlan, CudaBatchNormArgs, DeviceTensor, DeviceTensorMut, plan_sync_batch_norm,
};
use super::params::{BatchNormApplyParams, NormBwdParams};
use crate::backend::cpu::moments::Centre;
use crate::comm::{Communicator, RankMoments, all_gather_moments, communication};
use crate::dtype::{DType, Real};
use crate::error::{Error, Result};
use crate::ops::{SavedStats, with_element};
use crate::tensor::Buffer;

impl CudaDevice {
    /// One rank's SyncBatchNorm forward (as [`crate::ops::sync_batch_norm`]): returns the
    /// saved statistics (of the global batch) and the global element count per channel. In
    /// inference, or with one rank, it is [`CudaDevice::batch_norm`]. A failing collective
    /// leaves the running statistics and the counter unchanged.
    pub fn sync_batch_norm(
        &self,
        x: &DeviceTensor,
        y: &mut DeviceTensorMut,
        mut args: CudaBatchNormArgs,
        comm: &dyn Communicator,
    ) -> Result<(DeviceSavedStats, f64)> {
        const OP: &str = "sync_batch_norm";
        if !args.training || comm.world_size() < 2 {
            let c = x.shape().get(1).copied().unwrap_or(1).max(1);
            let count = (x.numel() / c) as f64;
            return Ok((self.batch_norm(x, y, args)?, count));
        }
        let BatchNormPlan::Train {
            dtype,
            order,
            mut apply,
            running_mean,
            running_var,
            momentum,
        } = plan_sync_batch_norm(x, y, &args)?
        else {
            return Err(Error::invalid(
                OP,
                "plan",
                "a training plan",
                "another plan",
            ));
        };
        self.check_train_pointers(OP, &apply, (running_mean, running_var))?;
        let (n, c, s) = (apply.n as usize, apply.c as usize, apply.s as usize);
        let sd = dtype.stat_dtype();
        // local moments
        let local_count = (n * s) as f64;
        let (mean, m2) = if local_count > 0.0 {
            let local = self.empty_stats_of(sd, c)?;
            let local_lo = self.mean_lo_buffer(dtype, c)?;
            let probe = BatchNormApplyParams {
                mean: local.mean.ptr(),
                rstd_or_var: local.invstd.ptr(),
                mean_lo: local_lo.as_ref().map_or(0, |b| b.ptr()),
                ..apply
            };
            // eps 0: 1/sqrt(var) keeps the variance to the compute type's relative precision
            self.bn_stats(dtype, order, &probe, (0, 0), 0.0, 0.0)?;
            let mut mu = local.mean.download_f64()?;
            if let Some(lo) = &local_lo {
                for (m, l) in mu.iter_mut().zip(lo.download_f64()?) {
                    *m += l;
                }
            }
            let r = local.invstd.download_f64()?;
            // r = 0 is the kernel's var == 0 && eps == 0 rule (PyTorch's): a constant channel,
            // M2 = 0 (count / r² gave inf: a global invstd of 0 and an infinite running
            // variance). 1/sqrt(var) is not 0 for any other variance the f64 (f32 for
            // f16/bf16) statistics of finite data reach, except overflowing ones (f64 data
            // beyond 1e154, bf16 near its maximum), taken as 0 too.
            let m2: Vec<f64> = r
                .iter()
                .map(|&r| if r == 0.0 { 0.0 } else { local_count / (r * r) })
                .collect();
            (mu, m2)
        } else {
            (vec![0.0; c], vec![0.0; c])
        };
        let local = RankMoments {
            count: local_count,
            mean,
            m2,
        };
        let g = all_gather_moments(comm, &local).map_err(|e| e.in_op(OP))?;
        // the CPU op's rounding of the saved statistics and of the running update
        let saved = with_element!(dtype, T => {
            type C = <T as crate::Element>::Compute;
            let rstd: Vec<C> = g
                .m2
                .iter()
                .map(|&m| crate::backend::cpu::moments::finish::<C>(g.count as usize, m, args.eps, false, true).1)
                .collect();
            SavedStats::from_parts(&g.mean, rstd)
        });
        let stats = DeviceSavedStats {
            mean: self.upload_buffer(&saved.mean)?,
            invstd: self.upload_buffer(&saved.invstd)?,
        };
        if local_count > 0.0 {
            // f32: the global mean's remainder below the saved f32 mean (the CPU op's centre)
            let global_lo = match dtype {
                DType::F32 => {
                    let lo: Vec<f32> = g.mean.iter().map(|&m| Centre::<f32>::of(m).lo).collect();
                    Some(self.upload(&lo)?)
                }
                _ => None,
            };
            apply.mean = stats.mean.ptr();
            apply.mean_lo = global_lo.as_ref().map_or(0, |b| b.ptr());
            apply.rstd_or_var = stats.invstd.ptr();
            // SAFETY: x, y hold n·c·s elements (plan), weight/bias c compute values or 0, all
            // this device's memory (checked); mean/rstd (and mean_lo for f32) are the c-value
            // buffers just uploaded.
            unsafe { kernels::batch_norm_apply(self, dtype, order, &apply)? };
        }
        if running_mean != 0 || running_var != 0 {
            self.update_running_on_host(&mut args, dtype, (&g.mean, &g.m2, g.count), momentum)?;
        }
        if let Some(nb) = args.num_batches_tracked.as_deref_mut() {
            *nb += 1;
        }
        Ok((stats, g.count))
    }

    /// The CPU op's running-statistics update applied to device running statistics (read,
    /// updated on the host, written back).
    fn update_running_on_host(
        &self,
        args: &mut CudaBatchNormArgs,
        x_dtype: DType,
        global: (&[f64], &[f64], f64),
        factor: f64,
    ) -> Result<()> {
        const OP: &str = "sync_batch_norm";
        let mut rm = match &args.running_mean {
            Some(t) => Some(self.read_tensor(OP, "running_mean", &t.as_tensor())?),
            None => None,
        };
        let mut rv = match &args.running_var {
            Some(t) => Some(self.read_tensor(OP, "running_var", &t.as_tensor())?),
            None => None,
        };
        let pdt = rm
            .as_ref()
            .or(rv.as_ref())
            .map_or(DType::F32, Buffer::dtype);
        with_element!(x_dtype, T => crate::ops::update_running::<<T as crate::Element>::Compute>(
            pdt,
            (rm.as_mut().map(|b| b.view_mut()).as_mut(), rv.as_mut().map(|b| b.view_mut()).as_mut()),
            global,
            factor,
        ));
        if let (Some(t), Some(b)) = (args.running_mean.as_mut(), &rm) {
            self.write_tensor(OP, "running_mean", t, b)?;
        }
        if let (Some(t), Some(b)) = (args.running_var.as_mut(), &rv) {
            self.write_tensor(OP, "running_var", t, b)?;
        }
        Ok(())
    }

    /// One rank's SyncBatchNorm backward (as [`crate::ops::sync_batch_norm_backward`]): with
    /// saved statistics, several ranks and `grad_input` requested, Σdy and Σdy·(x − μ) are
    /// all-reduced and dx uses `global_count`; otherwise it is
    /// [`CudaDevice::batch_norm_backward`].
    pub fn sync_batch_norm_backward(
        &self,
        grad_output: &DeviceTensor,
        x: &DeviceTensor,
        args: CudaNormBackwardArgs,
        global_count: f64,
        comm: &dyn Communicator,
    ) -> Result<()> {
        const OP: &str = "sync_batch_norm_backward";
        let saved = matches!(args.stats, DeviceForwardStats::Saved { .. });
        if !saved || comm.world_size() < 2 || args.grads.grad_input.is_none() {
            return self.batch_norm_backward(grad_output, x, args);
        }
        let c = x.shape().get(1).copied().unwrap_or(0);
        let plan = plan_norm_backward(grad_output, x, &args, false)?;
        let DeviceForwardStats::Saved { mean, invstd } = &args.stats else {
            return Err(Error::invalid(OP, "stats", "saved statistics", "running"));
        };
        let sd = x.dtype().stat_dtype();
        // local sums: Σdy (as grad_bias) and r·Σdy·(x − μ) (as grad_weight), overwritten
        let sums = self.empty_stats_of(sd, c)?;
        let plan = match plan {
            Planned::Empty => None,
            Planned::Run(p) => Some(p),
        };
        let (a, b) = if let Some(plan) = &plan {
            let mut p = NormBwdParams {
                dx: 0,
                grad_weight: sums.invstd.ptr(),
                grad_bias: sums.mean.ptr(),
                accumulate: 0,
                // the global mean as given (the CPU op's SyncBatchNorm backward)
                recover: 0,
                ..plan.params
            };
            self.grad_pointers(OP, &p)?;
            let bp = launch::batch_norm_bwd(
                plan.dtype,
                plan.order,
                p.n as usize,
                c,
                p.s as usize,
                self.sm_count(),
            );
            let workspace = self.alloc_bytes(bp.workspace_bytes)?;
            let tickets = self.zeroed_bytes(bp.counters * 4)?;
            (p.workspace, p.counters) = (workspace.ptr, tickets.ptr);
            // SAFETY: x, dy hold n·c·s elements (plan), mean/rstd and weight c compute values,
            // all this device's memory (checked); the two sum buffers were just allocated
            // with c compute values; workspace and zeroed counters from the same launch plan.
            unsafe { kernels::batch_norm_bwd(self, plan.dtype, plan.order, &p)? };
            let r = self.read_tensor(OP, "invstd", invstd)?.to_f64_vec();
            let a = sums.mean.download_f64()?;
            let b: Vec<f64> = sums
                .invstd
                .download_f64()?
                .iter()
                .zip(&r)
                .map(|(&br, &r)| br / r)
                .collect();
            (a, b)
        } else {
            (vec![0.0; c], vec![0.0; c])
        };
        let mut both = [a, b].concat();
        comm.all_reduce_sum(&mut both)
            .map_err(communication)
            .map_err(|e| e.in_op(OP))?;
        let (ga, gb) = both.split_at(c);
        let Some(plan) = plan else {
            // an empty local batch took part in the collective; its own backward is empty
            // (parameter gradients zeroed unless accumulating)
            return self.batch_norm_backward(grad_output, x, args);
        };
        // dx coefficients from the global sums (the reduce kernel's formula and rounding)
        let r = self.read_tensor(OP, "invstd", invstd)?.to_f64_vec();
        let gamma = match &args.weight {
            Some(w) => self.read_tensor(OP, "weight", w)?.to_f64_vec(),
            None => vec![1.0; c],
        };
        let bp = launch::batch_norm_bwd(
            plan.dtype,
            plan.order,
            plan.params.n as usize,
            c,
            plan.params.s as usize,
            self.sm_count(),
        );
        let mut ws = vec![0.0f64; bp.workspace_bytes / sd.size_in_bytes()];
        let coef = 2 * bp.splits * c;
        for ch in 0..c {
            let rc = Real::to_f64(round(sd, r[ch]));
            ws[coef + ch] = rc * gamma[ch];
            ws[coef + c + ch] = -rc * rc * rc * (gamma[ch] * gb[ch]) / global_count;
            ws[coef + 2 * c + ch] = -rc * (gamma[ch] * ga[ch]) / global_count;
        }
        let workspace = self.upload_buffer(&Buffer::from_f64(sd, &ws))?;
        let p = NormBwdParams {
            workspace: workspace.ptr(),
            grad_weight: 0,
            grad_bias: 0,
            ..plan.params
        };
        self.check_pointers(OP, &[("grad_input", p.dx)])?;
        // SAFETY: x, dy, dx hold n·c·s elements (dx apart from both, plan), mean c compute
        // values, all this device's memory (checked); the workspace holds the coefficients at
        // the offset the kernel reads, sized by the same launch plan.
        unsafe { kernels::batch_norm_bwd_input(self, plan.dtype, plan.order, &p)? };
        // this rank's parameter gradients (the plain reduce, honouring `accumulate`)
        if plan.params.grad_weight != 0 || plan.params.grad_bias != 0 {
            let DeviceGradients {
                grad_weight,
                grad_bias,
                accumulate,
                ..
            } = args.grads;
            self.batch_norm_backward_as(
                grad_output,
                x,
                CudaNormBackwardArgs {
                    weight: args.weight,
                    stats: DeviceForwardStats::Saved {
                        mean: mean.clone(),
                        invstd: invstd.clone(),
                    },
                    grads: DeviceGradients {
                        grad_input: None,
                        grad_weight,
                        grad_bias,
                        accumulate,
                    },
                },
                false,
            )?;
        }
        Ok(())
    }
}

/// `v` rounded to the compute type `sd` (as the kernels hold it).
fn round(sd: DType, v: f64) -> f64 {
    if sd == DType::F64 { v } else { v as f32 as f64 }
}
