//! The GPU device handle and its ops: [`CudaDevice`] owns a [`GpuBackend`] (the real GPU of
//! feature `cuda`, or the host emulation of the CUDA execution model) and runs every forward
//! and backward op on [`DeviceTensor`]s through the same planning and launch code whichever
//! backend it holds, so the device ops (validation, stream-ordered scratch, statistics,
//! running-stat updates, ticket counters) run in CI without a GPU on the emulated backend.
//!
//! * Launches go through [`Launcher`] with a raw kernel launch on the device's stream.
//! * Ops never synchronise the host. Only [`DeviceBuffer::download`] and
//!   [`CudaDevice::synchronize`] wait for the stream.
//! * Device memory is freed on drop (stream-ordered on the GPU, after every use queued so far).

use std::ffi::c_void;
use std::sync::Arc;

use super::emu::{EmuDevice, EmuGpu};
use super::kernels::{self, Launcher};
use super::launch::{self, LaunchConfig};
use super::ops::{
    BatchNormPlan, CudaBatchNormArgs, CudaGroupNormArgs, CudaInstanceNormArgs, CudaLayerNormArgs,
    DeviceTensor, DeviceTensorMut, InstanceNormPlan, plan_batch_norm, plan_group_norm,
    plan_instance_norm, plan_layer_norm, plan_local_response_norm,
};
use super::params::{BatchNormApplyParams, BatchNormStatsParams};
use super::probe::CudaDeviceInfo;
use super::timer::StreamTimer;
use crate::dtype::{DType, Element};
use crate::error::{Error, ErrorKind, Result};
use crate::ops::LrnArgs;
use crate::tensor::{Buffer, Layout};

const OP: &str = "cuda";

/// What a GPU backend provides: launches ([`Launcher`]), memory and the stream. Implemented
/// by the driver-backed GPU (feature `cuda`) and by [`EmuGpu`] (host memory, kernels run by
/// the host emulation, synchronously).
pub trait GpuBackend: Launcher + Send + Sync {
    fn info(&self) -> &CudaDeviceInfo;
    /// The raw stream launches go to (null for the emulation).
    fn stream(&self) -> *mut c_void;
    fn has_borrowed_stream(&self) -> bool;
    fn is_emulated(&self) -> bool;
    /// Waits for everything queued on the stream.
    fn synchronize(&self) -> Result<()>;
    /// Compiles and loads the kernel modules `names` (`kernels/<name>.cu`).
    fn load_modules(&self, names: &[&str]) -> Result<()>;
    /// Checks that `ptr` (non-zero) is memory of this device.
    fn check_pointer(&self, op: &str, operand: &str, ptr: u64) -> Result<()>;
    /// `bytes` bytes of uninitialised device memory, 16-byte aligned (0 for 0 bytes), and
    /// whether the free must be stream-ordered.
    fn alloc(&self, bytes: usize) -> Result<(u64, bool)>;
    /// # Safety
    /// `ptr` came from [`GpuBackend::alloc`] of this backend (with its `stream_ordered`
    /// flag) and is freed once, after every use of it was queued.
    unsafe fn free(&self, ptr: u64, stream_ordered: bool);
    /// # Safety
    /// `ptr` addresses `bytes` writable bytes of this device.
    unsafe fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<()>;
    /// Queues a copy of `src` to `dst` (`src` may be reused on return).
    ///
    /// # Safety
    /// `dst` addresses `src.len()` writable bytes of this device.
    unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// Queues a device-to-device copy of `bytes` bytes.
    ///
    /// # Safety
    /// `src` and `dst` address `bytes` bytes of this device (readable, writable), not
    /// overlapping.
    unsafe fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// Copies `dst.len()` bytes from `src`, waiting for the stream first.
    ///
    /// # Safety
    /// `src` addresses `dst.len()` readable bytes of this device.
    unsafe fn download(&self, src: u64, dst: &mut [u8]) -> Result<()>;
    /// A timer recording events on the stream, if the backend has them (the GPU); `None`
    /// makes [`CudaDevice::timer`] fall back to the host wall clock.
    fn event_timer(&self) -> Result<Option<Box<dyn StreamTimer>>> {
        Ok(None)
    }
}

/// Which ops a workload will run, for [`CudaDevice::prepare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CudaOp {
    LayerNorm,
    GroupNorm,
    InstanceNorm,
    BatchNorm,
    LocalResponseNorm,
}

impl CudaOp {
    pub const ALL: [CudaOp; 5] = [
        CudaOp::LayerNorm,
        CudaOp::GroupNorm,
        CudaOp::InstanceNorm,
        CudaOp::BatchNorm,
        CudaOp::LocalResponseNorm,
    ];

    /// The kernel modules (`kernels/<name>.cu`) the op launches from (forward and backward).
    pub fn modules(self) -> &'static [&'static str] {
        match self {
            CudaOp::LayerNorm => &["layer_norm"],
            CudaOp::GroupNorm => &["group_norm"],
            CudaOp::InstanceNorm => &["group_norm", "batch_norm"],
            CudaOp::BatchNorm => &["batch_norm"],
            CudaOp::LocalResponseNorm => &["local_response_norm"],
        }
    }
}

/// A GPU with one stream: the real device (feature `cuda`: `CudaDevice::new`,
/// `CudaDevice::with_borrowed_stream`) or the host emulation ([`CudaDevice::emulated`]).
/// Cheap to clone; clones share the stream. Not for concurrent use from several threads
/// without external synchronisation (like a cuDNN handle); separate `CudaDevice`s may run
/// concurrently.
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<dyn GpuBackend>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("info", self.inner.info())
            .field("emulated", &self.inner.is_emulated())
            .field("borrowed_stream", &self.inner.has_borrowed_stream())
            .finish()
    }
}

impl CudaDevice {
    pub(crate) fn from_backend(b: impl GpuBackend + 'static) -> CudaDevice {
        CudaDevice { inner: Arc::new(b) }
    }

    /// The host emulation of a GPU with `sms` streaming multiprocessors: device memory is host
    /// memory (filled with 0xFF bytes on allocation, so a read of memory no kernel wrote shows
    /// as NaN), kernels are the real `kernels/*.cu` compiled by the system C++ compiler and
    /// run synchronously. For tests and CI without a GPU; slow. Fails when the emulation was
    /// not built (build.rs needs a C++ compiler on Linux).
    pub fn emulated(device: EmuDevice) -> Result<CudaDevice> {
        EmuGpu::new(device).map(CudaDevice::from_backend)
    }

    pub fn info(&self) -> &CudaDeviceInfo {
        self.inner.info()
    }

    pub fn ordinal(&self) -> usize {
        self.inner.info().ordinal
    }

    /// Whether this is the host emulation rather than a GPU.
    pub fn is_emulated(&self) -> bool {
        self.inner.is_emulated()
    }

    /// The raw stream launches go to.
    pub fn stream(&self) -> *mut c_void {
        self.inner.stream()
    }

    pub fn has_borrowed_stream(&self) -> bool {
        self.inner.has_borrowed_stream()
    }

    /// Waits for everything queued on the stream (the only call besides
    /// [`DeviceBuffer::download`] that blocks the host).
    pub fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }

    /// Compiles (NVRTC, cached in memory and under `NORMKIT_KERNEL_CACHE_DIR`) and loads
    /// every kernel `ops` can launch, forward and backward, for every dtype and layout, so
    /// that no compile happens later (first-call latency, CUDA graph capture).
    pub fn prepare(&self, ops: &[CudaOp]) -> Result<()> {
        ops.iter()
            .try_for_each(|op| self.inner.load_modules(op.modules()))
    }

    pub(super) fn event_timer(&self) -> Result<Option<Box<dyn StreamTimer>>> {
        self.inner.event_timer()
    }

    pub(super) fn check_pointers(&self, op: &str, ptrs: &[(&str, u64)]) -> Result<()> {
        ptrs.iter()
            .filter(|(_, p)| *p != 0)
            .try_for_each(|&(name, p)| self.inner.check_pointer(op, name, p))
    }

    pub(super) fn alloc_bytes(&self, bytes: usize) -> Result<Allocation> {
        let (ptr, stream_ordered) = self.inner.alloc(bytes)?;
        Ok(Allocation {
            ptr,
            stream_ordered,
            gpu: self.inner.clone(),
        })
    }

    /// `bytes` zero bytes (the memset is queued).
    pub(super) fn zeroed_bytes(&self, bytes: usize) -> Result<Allocation> {
        let a = self.alloc_bytes(bytes)?;
        if bytes > 0 {
            // SAFETY: `a` was just allocated with `bytes` bytes on this device.
            unsafe { self.inner.memset_zero(a.ptr, bytes)? };
        }
        Ok(a)
    }

    /// Queues zeros over a device tensor.
    pub(super) fn zero_tensor(&self, t: &DeviceTensorMut) -> Result<()> {
        let bytes = t.numel() * t.dtype().size_in_bytes();
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: a DeviceTensorMut addresses numel elements of its dtype, writable, by its
        // constructor's contract; the caller checked that it is this device's memory.
        unsafe { self.inner.memset_zero(t.ptr(), bytes) }
    }

    /// Queues a copy of `src` into the device tensor `dst` (same dtype and element count).
    pub fn copy_to(&self, op: &str, dst: &mut DeviceTensorMut, src: &DeviceBuffer) -> Result<()> {
        if dst.dtype() != src.dtype() || dst.numel() != src.len() {
            return Err(Error::dtype(
                op,
                "output",
                format!("{} elements of {}", src.len(), src.dtype()),
                format!("{} elements of {}", dst.numel(), dst.dtype()),
            ));
        }
        self.check_pointers(op, &[("output", dst.ptr())])?;
        let bytes = src.len() * src.dtype().size_in_bytes();
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: `src` is a live buffer of this device with `bytes` bytes; `dst` addresses as
        // many writable bytes (DeviceTensorMut contract, same dtype and count checked) of this
        // device (checked) and cannot overlap a normkit-owned buffer it does not view.
        unsafe { self.inner.copy_dtod(dst.ptr(), src.ptr(), bytes) }
    }

    /// Copies a device tensor to a host buffer (waits for the stream).
    pub fn read_tensor(&self, op: &str, operand: &str, t: &DeviceTensor) -> Result<Buffer> {
        self.check_pointers(op, &[(operand, t.ptr())])?;
        let mut b = Buffer::filled(t.dtype(), t.numel(), 0.0);
        if t.numel() > 0 {
            let bytes = match &mut b {
                Buffer::F32(v) => as_bytes_mut(v),
                Buffer::F64(v) => as_bytes_mut(v),
                Buffer::F16(v) => as_bytes_mut(v),
                Buffer::BF16(v) => as_bytes_mut(v),
            };
            // SAFETY: a DeviceTensor addresses numel elements of its dtype (its constructor's
            // contract), as many bytes as the host buffer has; this device's memory (checked).
            unsafe { self.inner.download(t.ptr(), bytes)? };
        }
        Ok(b)
    }

    /// Queues a copy of `data` (same dtype and length) into a device tensor.
    pub fn write_tensor(
        &self,
        op: &str,
        operand: &str,
        t: &mut DeviceTensorMut,
        data: &Buffer,
    ) -> Result<()> {
        if data.dtype() != t.dtype() || data.len() != t.numel() {
            return Err(Error::dtype(
                op,
                operand,
                format!("{} elements of {}", t.numel(), t.dtype()),
                format!("{} elements of {}", data.len(), data.dtype()),
            ));
        }
        self.check_pointers(op, &[(operand, t.ptr())])?;
        let bytes = match data {
            Buffer::F32(v) => as_bytes(v),
            Buffer::F64(v) => as_bytes(v),
            Buffer::F16(v) => as_bytes(v),
            Buffer::BF16(v) => as_bytes(v),
        };
        // SAFETY: a DeviceTensorMut addresses numel writable elements of its dtype (same dtype
        // and count as `data`, checked), this device's memory (checked).
        unsafe { self.inner.upload(t.ptr(), bytes) }
    }

    /// `len` uninitialised elements of `dtype`.
    pub fn alloc(&self, dtype: DType, len: usize) -> Result<DeviceBuffer> {
        let bytes = len.checked_mul(dtype.size_in_bytes()).ok_or_else(|| {
            Error::new(
                ErrorKind::Overflow,
                OP,
                "len",
                "a byte count in range",
                len.to_string(),
            )
        })?;
        Ok(DeviceBuffer {
            alloc: self.alloc_bytes(bytes)?,
            dtype,
            len,
        })
    }

    /// `len` zeros of `dtype` (queued on the stream).
    pub fn alloc_zeroed(&self, dtype: DType, len: usize) -> Result<DeviceBuffer> {
        let b = self.alloc(dtype, len)?;
        if len > 0 {
            // SAFETY: `b` was just allocated with len·size bytes on this device.
            unsafe {
                self.inner
                    .memset_zero(b.ptr(), len * dtype.size_in_bytes())?
            };
        }
        Ok(b)
    }

    /// A device copy of `data` (the copy is queued; `data` may be reused on return).
    pub fn upload<T: Element>(&self, data: &[T]) -> Result<DeviceBuffer> {
        let b = self.alloc(T::DTYPE, data.len())?;
        // SAFETY: `b` was just allocated with data.len() elements of T, as_bytes(data).len()
        // bytes.
        unsafe { self.inner.upload(b.ptr(), as_bytes(data))? };
        Ok(b)
    }

    /// A device copy of a host buffer.
    pub fn upload_buffer(&self, data: &Buffer) -> Result<DeviceBuffer> {
        match data {
            Buffer::F32(v) => self.upload(v),
            Buffer::F64(v) => self.upload(v),
            Buffer::F16(v) => self.upload(v),
            Buffer::BF16(v) => self.upload(v),
        }
    }

    /// Layer normalisation on the device (as [`crate::ops::layer_norm`]); returns the saved
    /// statistics as device buffers (empty for an empty input).
    pub fn layer_norm(
        &self,
        x: &DeviceTensor,
        y: &mut DeviceTensorMut,
        args: CudaLayerNormArgs,
    ) -> Result<DeviceSavedStats> {
        const OP: &str = "layer_norm";
        let Some(mut plan) = plan_layer_norm(x, y, &args)? else {
            return self.empty_stats(x.dtype(), 0);
        };
        let p = &mut plan.params;
        self.check_pointers(
            OP,
            &[
                ("input", p.x),
                ("output", p.y),
                ("weight", p.weight),
                ("bias", p.bias),
            ],
        )?;
        let stats = self.empty_stats(x.dtype(), p.rows as usize)?;
        p.mean = stats.mean.ptr();
        p.rstd = stats.invstd.ptr();
        // SAFETY: x and y hold rows·cols elements (plan_layer_norm checked the shapes
        // against each other and check_pointers that they are this device's memory; their
        // sizes are the caller's contract for device views), weight/bias cols compute values,
        // mean/rstd were just allocated with `rows` compute values; all on this stream.
        unsafe { kernels::layer_norm_fwd(self, plan.dtype, &plan.params)? };
        Ok(stats)
    }

    /// Group normalisation on the device (as [`crate::ops::group_norm`]).
    pub fn group_norm(
        &self,
        x: &DeviceTensor,
        y: &mut DeviceTensorMut,
        args: CudaGroupNormArgs,
    ) -> Result<DeviceSavedStats> {
        let Some(plan) = plan_group_norm(x, y, &args)? else {
            return self.empty_stats(x.dtype(), 0);
        };
        self.run_group(plan, "group_norm", 0)
    }

    /// The GroupNorm forward launch; `m2` (0 for none): n·groups compute values of device
    /// memory for the groups' M2.
    fn run_group(
        &self,
        mut plan: super::ops::GroupNormPlan,
        op: &str,
        m2: u64,
    ) -> Result<DeviceSavedStats> {
        let p = &mut plan.params;
        self.check_pointers(
            op,
            &[
                ("input", p.x),
                ("output", p.y),
                ("weight", p.weight),
                ("bias", p.bias),
            ],
        )?;
        let stats = self.empty_stats(plan.dtype, (p.n * p.groups) as usize)?;
        p.mean = stats.mean.ptr();
        p.rstd = stats.invstd.ptr();
        p.m2 = m2;
        // SAFETY: x, y hold n·c·s elements in `order` (shapes checked by the plan, memory by
        // check_pointers); weight/bias c compute values; mean/rstd freshly allocated with
        // n·groups compute values, m2 likewise by the caller (or 0); everything is ordered on
        // this stream.
        unsafe { kernels::group_norm_fwd(self, plan.dtype, plan.order, &plan.params)? };
        Ok(stats)
    }

    /// Instance normalisation on the device (as [`crate::ops::instance_norm`]): with input
    /// statistics and running statistics, the running statistics are updated on the device
    /// (from each instance's mean and M2, averaged over the batch as PyTorch does); with
    /// use_input_stats false they are read.
    pub fn instance_norm(
        &self,
        x: &DeviceTensor,
        y: &mut DeviceTensorMut,
        args: CudaInstanceNormArgs,
    ) -> Result<DeviceSavedStats> {
        const OP: &str = "instance_norm";
        match plan_instance_norm(x, y, &args)? {
            None => self.empty_stats(x.dtype(), 0),
            Some(InstanceNormPlan::InputStats {
                group,
                running: None,
            }) => self.run_group(group, OP, 0),
            Some(InstanceNormPlan::InputStats {
                group,
                running: Some(mut rp),
            }) => {
                self.check_pointers(
                    OP,
                    &[
                        ("running_mean", rp.running_mean),
                        ("running_var", rp.running_var),
                    ],
                )?;
                let dtype = group.dtype;
                let m2 = self.alloc(dtype.stat_dtype(), group.stats_len())?;
                let stats = self.run_group(group, OP, m2.ptr())?;
                (rp.mean, rp.m2) = (stats.mean.ptr(), m2.ptr());
                // SAFETY: mean and m2 hold n·c compute values written by the forward just
                // queued on this stream; the running statistics are c compute values of this
                // device (plan: the CPU op's checks and the compute dtype; check_pointers);
                // s >= 2 (the CPU op's check for input statistics); m2 is freed (stream-ordered)
                // after the launch.
                unsafe { kernels::instance_norm_running(self, dtype, &rp)? };
                Ok(stats)
            }
            Some(InstanceNormPlan::RunningStats(p)) => {
                self.run_infer(&p, OP)?;
                self.empty_stats(x.dtype(), 0)
            }
        }
    }

    fn run_infer(&self, plan: &super::ops::BatchNormInferPlan, op: &str) -> Result<()> {
        let p = &plan.params;
        self.check_pointers(
            op,
            &[
                ("input", p.x),
                ("output", p.y),
                ("running_mean", p.mean),
                ("running_var", p.rstd_or_var),
                ("weight", p.weight),
                ("bias", p.bias),
            ],
        )?;
        // SAFETY: x, y hold n·c·s elements (plan), running stats, weight and bias c compute
        // values (plan), all memory of this device (check_pointers), ordered on this stream.
        unsafe { kernels::batch_norm_infer(self, plan.dtype, plan.order, p) }
    }

    /// Batch normalisation on the device (as [`crate::ops::batch_norm`]): training updates
    /// the running statistics on the device and returns the saved statistics; inference
    /// returns empty statistics. `num_batches_tracked` moves on success.
    pub fn batch_norm(
        &self,
        x: &DeviceTensor,
        y: &mut DeviceTensorMut,
        args: CudaBatchNormArgs,
    ) -> Result<DeviceSavedStats> {
        const OP: &str = "batch_norm";
        let training = args.training;
        let plan = plan_batch_norm(x, y, &args)?;
        let stats = match plan {
            BatchNormPlan::Empty { channels } => {
                if !training {
                    return self.empty_stats(x.dtype(), 0);
                }
                let sd = x.dtype().stat_dtype();
                DeviceSavedStats {
                    mean: self.alloc_zeroed(sd, channels)?,
                    invstd: self.alloc_zeroed(sd, channels)?,
                }
            }
            BatchNormPlan::Infer(p) => {
                self.run_infer(&p, OP)?;
                return self.empty_stats(x.dtype(), 0);
            }
            BatchNormPlan::Train {
                dtype,
                order,
                mut apply,
                running_mean,
                running_var,
                momentum,
            } => {
                self.check_train_pointers(OP, &apply, (running_mean, running_var))?;
                let stats = self.empty_stats(dtype, apply.c as usize)?;
                let mean_lo = self.mean_lo_buffer(dtype, apply.c as usize)?;
                apply.mean = stats.mean.ptr();
                apply.mean_lo = mean_lo.as_ref().map_or(0, |b| b.ptr());
                apply.rstd_or_var = stats.invstd.ptr();
                self.bn_stats(
                    dtype,
                    order,
                    &apply,
                    (running_mean, running_var),
                    apply.eps,
                    momentum,
                )?;
                // SAFETY: x, y hold n·c·s elements, weight/bias c compute values or 0 (plan),
                // all this device's memory (checked); mean/rstd were just written by the
                // statistics launch on this stream.
                unsafe { kernels::batch_norm_apply(self, dtype, order, &apply)? };
                stats
            }
        };
        if let Some(n) = args.num_batches_tracked {
            *n += 1;
        }
        Ok(stats)
    }

    /// Checks the operands of a BatchNorm training step against this device.
    pub(super) fn check_train_pointers(
        &self,
        op: &str,
        apply: &BatchNormApplyParams,
        (running_mean, running_var): (u64, u64),
    ) -> Result<()> {
        self.check_pointers(
            op,
            &[
                ("input", apply.x),
                ("output", apply.y),
                ("running_mean", running_mean),
                ("running_var", running_var),
                ("weight", apply.weight),
                ("bias", apply.bias),
            ],
        )
    }

    /// The BatchNorm statistics launch: per-channel mean and 1/sqrt(var + eps) of `apply.x`
    /// into `apply.mean` / `apply.rstd_or_var`, and the running-statistics update with
    /// `momentum` when `running` is non-zero. The operands must have been checked.
    pub(super) fn bn_stats(
        &self,
        dtype: DType,
        order: super::launch::ChannelOrder,
        apply: &BatchNormApplyParams,
        (running_mean, running_var): (u64, u64),
        eps: f64,
        momentum: f64,
    ) -> Result<()> {
        let (n, c, s) = (apply.n as usize, apply.c as usize, apply.s as usize);
        let sp = launch::batch_norm_stats(dtype, order, n, c, s, self.sm_count());
        let workspace = self.alloc_bytes(sp.workspace_bytes)?;
        let counters = self.zeroed_bytes(sp.counters * 4)?;
        let sparams = BatchNormStatsParams {
            x: apply.x,
            mean: apply.mean,
            rstd: apply.rstd_or_var,
            running_mean,
            running_var,
            workspace: workspace.ptr,
            counters: counters.ptr,
            n: n as i64,
            c: c as i64,
            s: s as i64,
            splits: 0, // set from the same plan by kernels::batch_norm_stats
            eps,
            momentum,
            mean_lo: apply.mean_lo,
        };
        // SAFETY: x holds n·c·s elements and mean/rstd (and the running statistics when
        // given) c compute values of this device (the caller's checks and allocations); the
        // workspace and the zeroed counters come from the plan for this shape and SM count
        // and are freed stream-ordered after the launch.
        unsafe { kernels::batch_norm_stats(self, dtype, order, &sparams) }
    }

    /// LocalResponseNorm on the device (as [`crate::ops::local_response_norm`]).
    pub fn local_response_norm(
        &self,
        x: &DeviceTensor,
        y: &mut DeviceTensorMut,
        args: LrnArgs,
    ) -> Result<()> {
        const OP: &str = "local_response_norm";
        let Some(plan) = plan_local_response_norm(x, y, &args)? else {
            return Ok(());
        };
        self.check_pointers(OP, &[("input", plan.params.x), ("output", plan.params.y)])?;
        // SAFETY: x, y hold n·c·s elements (plan), are distinct (plan) and are this
        // device's memory (check_pointers); the launch is ordered on this stream.
        unsafe { kernels::lrn_fwd(self, plan.dtype, plan.order, &plan.params) }
    }

    /// For f32 input, an uninitialised buffer of `c` f32 values for the remainder of the
    /// per-channel BatchNorm means below their saved f32 values (`mean_lo` of the statistics and
    /// apply kernels): the statistics run in f64, as the CPU op's, and the apply centres on both
    /// parts. Other dtypes' remainder is 0 (their statistics are in the compute type): `None`.
    pub(super) fn mean_lo_buffer(&self, dtype: DType, c: usize) -> Result<Option<DeviceBuffer>> {
        match dtype {
            DType::F32 => Ok(Some(self.alloc(dtype.stat_dtype(), c)?)),
            _ => Ok(None),
        }
    }

    /// Two uninitialised buffers of `len` values of the statistics dtype `sd`.
    pub(super) fn empty_stats_of(&self, sd: DType, len: usize) -> Result<DeviceSavedStats> {
        Ok(DeviceSavedStats {
            mean: self.alloc(sd, len)?,
            invstd: self.alloc(sd, len)?,
        })
    }

    fn empty_stats(&self, x: DType, len: usize) -> Result<DeviceSavedStats> {
        let sd = x.stat_dtype();
        Ok(DeviceSavedStats {
            mean: self.alloc(sd, len)?,
            invstd: self.alloc(sd, len)?,
        })
    }
}

impl Launcher for CudaDevice {
    fn sm_count(&self) -> u32 {
        self.inner.sm_count()
    }

    unsafe fn launch_raw(&self, name: &str, config: LaunchConfig, params: &[u8]) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.inner.launch_raw(name, config, params) }
    }
}

/// The bytes of a slice of elements.
fn as_bytes<T: Element>(s: &[T]) -> &[u8] {
    // SAFETY: `Element` is sealed and implemented only for f32, f64, f16 and bf16: plain
    // numbers without padding, so every byte of the slice is initialised; u8 has alignment 1
    // and the length is the slice's size in bytes.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// The bytes of a mutable slice of elements.
fn as_bytes_mut<T: Element>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as `as_bytes`; in addition every bit pattern is a valid f32, f64, f16 or bf16,
    // so any bytes written through the view leave valid elements.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// Device memory freed (stream-ordered where allocated so) on drop.
pub(super) struct Allocation {
    pub(super) ptr: u64,
    stream_ordered: bool,
    gpu: Arc<dyn GpuBackend>,
}

impl Drop for Allocation {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated by `gpu` with this flag and is freed once, here; every
        // use of it was queued before the owner was dropped.
        unsafe { self.gpu.free(self.ptr, self.stream_ordered) }
    }
}

/// `len` elements of `dtype` in device memory, owned by normkit.
pub struct DeviceBuffer {
    alloc: Allocation,
    dtype: DType,
    len: usize,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer({} x {}, {:#x})",
            self.len, self.dtype, self.alloc.ptr
        )
    }
}

impl DeviceBuffer {
    pub fn ptr(&self) -> u64 {
        self.alloc.ptr
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check_view(&self, shape: &[usize]) -> Result<()> {
        let n = crate::tensor::checked_numel("DeviceBuffer::view", "shape", shape)?;
        if n > self.len {
            return Err(Error::new(
                ErrorKind::BufferTooSmall,
                "DeviceBuffer::view",
                "shape",
                format!("at most {} elements", self.len),
                format!("{n} elements"),
            ));
        }
        Ok(())
    }

    fn view_in(&self, shape: &[usize], layout: Layout) -> Result<DeviceTensor<'_>> {
        self.check_view(shape)?;
        // SAFETY: the buffer holds at least numel(shape) elements of its dtype (checked) and
        // stays allocated for the view's lifetime (borrow).
        unsafe { DeviceTensor::from_raw(self.ptr(), self.dtype, shape, layout) }
    }

    fn view_mut_in(&mut self, shape: &[usize], layout: Layout) -> Result<DeviceTensorMut<'_>> {
        self.check_view(shape)?;
        // SAFETY: as `view_in`; the mutable borrow excludes every other view.
        unsafe { DeviceTensorMut::from_raw(self.ptr(), self.dtype, shape, layout) }
    }

    /// A contiguous view with `shape`.
    pub fn view(&self, shape: &[usize]) -> Result<DeviceTensor<'_>> {
        self.view_in(shape, Layout::Contiguous)
    }
    /// A channels-last view of logical `(N, C, *S)` shape.
    pub fn view_channels_last(&self, shape: &[usize]) -> Result<DeviceTensor<'_>> {
        self.view_in(shape, Layout::ChannelsLast)
    }
    /// A view with `shape` in `layout` (contiguous or channels-last).
    pub fn view_as(&self, shape: &[usize], layout: Layout) -> Result<DeviceTensor<'_>> {
        self.view_in(shape, layout)
    }
    pub fn view_mut(&mut self, shape: &[usize]) -> Result<DeviceTensorMut<'_>> {
        self.view_mut_in(shape, Layout::Contiguous)
    }
    pub fn view_mut_channels_last(&mut self, shape: &[usize]) -> Result<DeviceTensorMut<'_>> {
        self.view_mut_in(shape, Layout::ChannelsLast)
    }
    /// A writable view with `shape` in `layout`.
    pub fn view_mut_as(&mut self, shape: &[usize], layout: Layout) -> Result<DeviceTensorMut<'_>> {
        self.view_mut_in(shape, layout)
    }

    /// Copies the buffer to the host, waiting for the stream (a documented copy-out).
    pub fn download<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::dtype(
                "DeviceBuffer::download",
                "T",
                self.dtype.to_string(),
                T::DTYPE.to_string(),
            ));
        }
        let mut out = vec![T::default(); self.len];
        // SAFETY: the buffer holds `len` elements of T = the buffer's dtype, as many bytes as
        // `out` has.
        unsafe {
            self.alloc
                .gpu
                .download(self.ptr(), as_bytes_mut(&mut out))?
        };
        Ok(out)
    }

    /// The buffer as a host [`Buffer`] of its dtype (waits for the stream).
    pub fn to_buffer(&self) -> Result<Buffer> {
        Ok(match self.dtype {
            DType::F32 => Buffer::F32(self.download()?),
            DType::F64 => Buffer::F64(self.download()?),
            DType::F16 => Buffer::F16(self.download()?),
            DType::BF16 => Buffer::BF16(self.download()?),
        })
    }

    /// [`DeviceBuffer::download`] converted to f64, whatever the dtype.
    pub fn download_f64(&self) -> Result<Vec<f64>> {
        Ok(self.to_buffer()?.to_f64_vec())
    }

    /// Overwrites the buffer with `data` (same dtype and length; the copy is queued).
    pub fn copy_from_host(&mut self, data: &Buffer) -> Result<()> {
        if data.dtype() != self.dtype || data.len() != self.len {
            return Err(Error::shape(
                "DeviceBuffer::copy_from_host",
                "data",
                format!("{} elements of {}", self.len, self.dtype),
                format!("{} elements of {}", data.len(), data.dtype()),
            ));
        }
        let bytes = match data {
            Buffer::F32(v) => as_bytes(v),
            Buffer::F64(v) => as_bytes(v),
            Buffer::F16(v) => as_bytes(v),
            Buffer::BF16(v) => as_bytes(v),
        };
        // SAFETY: the buffer holds len elements of its dtype, exactly bytes.len() bytes.
        unsafe { self.alloc.gpu.upload(self.ptr(), bytes) }
    }
}

/// Saved statistics of a device op (as [`crate::ops::SavedStats`]), in device memory.
#[derive(Debug)]
pub struct DeviceSavedStats {
    pub mean: DeviceBuffer,
    pub invstd: DeviceBuffer,
}
