//! The GPU device: primary context per ordinal, a library-owned or borrowed stream, kernel
//! modules compiled by NVRTC on first use (or up front with [`CudaDevice::prepare`]), device
//! buffers, and the forward ops on device tensors.
//!
//! * Creating a device runs [`super::probe::probe`] first, so a missing driver, device or
//!   NVRTC is an [`ErrorKind::DeviceUnavailable`] error, never a panic; the cudarc calls that
//!   create the context and stream run inside `catch_unwind` as well.
//! * Launches go through [`Launcher`] (the same planning and launch sites as the host
//!   emulation) with a raw `cuLaunchKernel` on the device's stream. A borrowed stream
//!   (`cudaStream_t` of the caller) is wrapped with cudarc's `wrap_borrowed_stream`, which
//!   never destroys it.
//! * Ops never synchronise the host. Scratch memory and saved statistics are allocated
//!   stream-ordered (`cuMemAllocAsync`, when the device has memory pools) and freed the same
//!   way, so ops can be captured into a CUDA graph once [`CudaDevice::prepare`] has loaded
//!   their kernels; a kernel that is not loaded during capture is an error, not a compile.
//! * Only [`DeviceBuffer::download`] and [`CudaDevice::synchronize`] wait for the stream.

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, result, sys};
use cudarc::nvrtc::Ptx;

use super::kernels::{self, Launcher};
use super::launch::{self, LaunchConfig};
use super::modules;
use super::nvrtc;
use super::ops::{
    BatchNormPlan, CudaBatchNormArgs, CudaGroupNormArgs, CudaInstanceNormArgs, CudaLayerNormArgs,
    DeviceTensor, DeviceTensorMut, InstanceNormPlan, plan_batch_norm, plan_group_norm,
    plan_instance_norm, plan_layer_norm, plan_local_response_norm,
};
use super::params::BatchNormStatsParams;
use super::probe::{CudaAvailability, CudaDeviceInfo, panic_text, probe};
use crate::dtype::{DType, Element};
use crate::error::{Error, ErrorKind, Result};
use crate::ops::LrnArgs;
use crate::tensor::Layout;

const OP: &str = "cuda";

fn driver(op: &str, what: &str, e: impl std::fmt::Debug) -> Error {
    Error::new(
        ErrorKind::Backend,
        op,
        what,
        "CUDA driver success",
        format!("{e:?}"),
    )
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::DeviceUnavailable,
        OP,
        "device",
        "a CUDA driver, device and NVRTC",
        reason,
    )
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

    /// The kernel modules (`kernels/<name>.cu`) the op launches from.
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

type FunctionCache = HashMap<(usize, String), CudaFunction>;
/// Loaded kernels of every device, by (ordinal, entry point). Modules stay loaded (and the
/// primary context retained) for the process lifetime, shared by every `CudaDevice`.
static FUNCTIONS: Mutex<Option<FunctionCache>> = Mutex::new(None);

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    borrowed: bool,
    info: CudaDeviceInfo,
}

/// One CUDA device (primary context) with one stream. Cheap to clone; clones share the
/// stream. Not for concurrent use from several threads without external synchronisation
/// (like a cuDNN handle); separate `CudaDevice`s may run concurrently.
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("info", &self.inner.info)
            .field("borrowed_stream", &self.inner.borrowed)
            .finish()
    }
}

impl CudaDevice {
    /// Device `ordinal` with a new, library-owned non-blocking stream.
    pub fn new(ordinal: usize) -> Result<CudaDevice> {
        Self::create(ordinal, None)
    }

    /// Device `ordinal` launching on the caller's stream, which normkit never destroys or
    /// synchronises except in [`CudaDevice::synchronize`] and [`DeviceBuffer::download`].
    /// Null is the legacy default stream, `2` (`CU_STREAM_PER_THREAD`) the per-thread one;
    /// any other stream must belong to the device's primary context (checked).
    ///
    /// # Safety
    /// `stream` must be a valid stream handle that outlives this device, its clones and
    /// every [`DeviceBuffer`] it allocates (they are freed stream-ordered on it).
    pub unsafe fn with_borrowed_stream(ordinal: usize, stream: *mut c_void) -> Result<CudaDevice> {
        Self::create(ordinal, Some(stream as sys::CUstream))
    }

    fn create(ordinal: usize, borrowed: Option<sys::CUstream>) -> Result<CudaDevice> {
        let info = match probe() {
            CudaAvailability::Available { devices, .. } => {
                devices.get(ordinal).cloned().ok_or_else(|| {
                    unavailable(format!(
                        "cuda:{ordinal}, but only {} CUDA device(s)",
                        devices.len()
                    ))
                })?
            }
            CudaAvailability::Unavailable { reason } => return Err(unavailable(reason)),
        };
        let made = catch_unwind(AssertUnwindSafe(|| -> Result<_> {
            let ctx = CudaContext::new(ordinal).map_err(|e| driver(OP, "context", e))?;
            let stream = match borrowed {
                None => ctx.new_stream().map_err(|e| driver(OP, "stream", e))?,
                Some(s) => {
                    let special = s.is_null() || s as usize == 2;
                    if !special {
                        let mut owner: sys::CUcontext = std::ptr::null_mut();
                        // SAFETY: the caller guarantees `s` is a valid stream; the driver
                        // writes one context handle into `owner`.
                        unsafe { sys::cuStreamGetCtx(s, &mut owner) }
                            .result()
                            .map_err(|e| driver(OP, "stream", e))?;
                        if owner != ctx.cu_ctx() {
                            return Err(Error::new(
                                ErrorKind::DeviceMismatch,
                                OP,
                                "stream",
                                format!("a stream of the primary context of cuda:{ordinal}"),
                                "a stream of another context",
                            ));
                        }
                    }
                    // SAFETY: `s` is valid, belongs to this (primary) context (checked
                    // above, or a special handle valid in every context), and outlives the
                    // wrapper per this function's contract; the wrapper never destroys it.
                    unsafe { ctx.wrap_borrowed_stream(s) }
                }
            };
            Ok((ctx, stream))
        }));
        let (ctx, stream) = match made {
            Ok(r) => r?,
            Err(p) => return Err(unavailable(format!("cudarc panicked: {}", panic_text(&p)))),
        };
        Ok(CudaDevice {
            inner: Arc::new(Inner {
                ctx,
                stream,
                borrowed: borrowed.is_some(),
                info,
            }),
        })
    }

    pub fn info(&self) -> &CudaDeviceInfo {
        &self.inner.info
    }

    pub fn ordinal(&self) -> usize {
        self.inner.info.ordinal
    }

    /// The raw stream launches go to.
    pub fn stream(&self) -> *mut c_void {
        self.inner.stream.cu_stream() as *mut c_void
    }

    pub fn has_borrowed_stream(&self) -> bool {
        self.inner.borrowed
    }

    /// Waits for everything queued on the stream (the only call besides
    /// [`DeviceBuffer::download`] that blocks the host).
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.inner
            .stream
            .synchronize()
            .map_err(|e| driver(OP, "synchronize", e))
    }

    fn bind(&self) -> Result<()> {
        self.inner
            .ctx
            .bind_to_thread()
            .map_err(|e| driver(OP, "context", e))
    }

    /// Compiles (NVRTC, cached in memory and under `NORMKIT_KERNEL_CACHE_DIR`) and loads
    /// every kernel `ops` can launch, for every dtype and layout, so that no compile happens
    /// later (first-call latency, CUDA graph capture).
    pub fn prepare(&self, ops: &[CudaOp]) -> Result<()> {
        for op in ops {
            for m in op.modules() {
                self.load_module(m)?;
            }
        }
        Ok(())
    }

    fn load_module(&self, name: &str) -> Result<()> {
        let ordinal = self.ordinal();
        let module = modules::all().find(|m| m.name == name).ok_or_else(|| {
            Error::invalid(
                OP,
                "module",
                "a kernel module of kernels/",
                name.to_string(),
            )
        })?;
        {
            let cache = FUNCTIONS.lock().map_err(|_| poisoned())?;
            if let Some(c) = cache.as_ref() {
                if module
                    .entry_points
                    .iter()
                    .all(|e| c.contains_key(&(ordinal, e.to_string())))
                {
                    return Ok(());
                }
            }
        }
        let (major, minor) = self.inner.info.compute_capability;
        let ptx = nvrtc::compile_ptx(
            module.source,
            &format!("{}.cu", module.name),
            &nvrtc::options_for(major, minor),
        )?;
        self.bind()?;
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            let m = self.inner.ctx.load_module(Ptx::from_src(ptx))?;
            module
                .entry_points
                .iter()
                .map(|e| m.load_function(e).map(|f| (e.to_string(), f)))
                .collect::<std::result::Result<Vec<_>, _>>()
        }));
        let functions = match loaded {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return Err(driver(OP, module.name, e)),
            Err(p) => return Err(driver(OP, module.name, panic_text(&p))),
        };
        let mut cache = FUNCTIONS.lock().map_err(|_| poisoned())?;
        let cache = cache.get_or_insert_with(HashMap::new);
        for (name, f) in functions {
            cache.entry((ordinal, name)).or_insert(f);
        }
        Ok(())
    }

    fn function(&self, name: &str) -> Result<CudaFunction> {
        let key = (self.ordinal(), name.to_string());
        let cached = |key: &(usize, String)| -> Result<Option<CudaFunction>> {
            let cache = FUNCTIONS.lock().map_err(|_| poisoned())?;
            Ok(cache.as_ref().and_then(|c| c.get(key).cloned()))
        };
        if let Some(f) = cached(&key)? {
            return Ok(f);
        }
        // SAFETY: the stream handle is valid for the device's lifetime (owned, or borrowed
        // under `with_borrowed_stream`'s contract); the call only reads its capture state.
        let status = unsafe { result::stream::is_capturing(self.inner.stream.cu_stream()) }
            .map_err(|e| driver(OP, "stream", e))?;
        if status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                OP,
                name,
                "kernels loaded before stream capture (call CudaDevice::prepare first)",
                "a kernel that is not loaded yet, during capture",
            ));
        }
        let module = modules::module_of(name).ok_or_else(|| {
            Error::invalid(
                OP,
                "kernel",
                "an entry point of kernels/*.cu",
                name.to_string(),
            )
        })?;
        self.load_module(module.name)?;
        cached(&key)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Backend,
                OP,
                name,
                "the entry point in its loaded module",
                "missing",
            )
        })
    }

    /// Checks that `ptr` is memory of this device (device or managed memory), not a host
    /// pointer or another device's memory.
    fn check_pointer(&self, op: &str, operand: &str, ptr: u64) -> Result<()> {
        if ptr == 0 {
            return Ok(());
        }
        let attr = |a: sys::CUpointer_attribute| -> std::result::Result<i32, sys::CUresult> {
            let mut v: u32 = 0;
            // SAFETY: MEMORY_TYPE, IS_MANAGED and DEVICE_ORDINAL each write one 32-bit value
            // into `v`; the driver only inspects `ptr`'s address, never dereferences it.
            let r = unsafe {
                sys::cuPointerGetAttribute((&mut v as *mut u32).cast::<c_void>(), a, ptr)
            };
            match r {
                sys::CUresult::CUDA_SUCCESS => Ok(v as i32),
                e => Err(e),
            }
        };
        self.bind()?;
        use sys::CUpointer_attribute as P;
        let host = |why: String| {
            Error::new(
                ErrorKind::DeviceMismatch,
                op,
                operand,
                format!("memory of cuda:{}", self.ordinal()),
                why,
            )
        };
        let mem = attr(P::CU_POINTER_ATTRIBUTE_MEMORY_TYPE).map_err(|e| {
            host(format!(
                "a host pointer {ptr:#x} (cuPointerGetAttribute: {e:?})"
            ))
        })?;
        let managed = attr(P::CU_POINTER_ATTRIBUTE_IS_MANAGED).unwrap_or(0) != 0;
        let device = sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as i32;
        let unified = sys::CUmemorytype::CU_MEMORYTYPE_UNIFIED as i32;
        if mem != device && mem != unified && !managed {
            return Err(host(format!("page-locked host memory at {ptr:#x}")));
        }
        if !managed {
            let ord =
                attr(P::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL).map_err(|e| driver(op, operand, e))?;
            if ord as usize != self.ordinal() {
                return Err(host(format!("memory of cuda:{ord}")));
            }
        }
        Ok(())
    }

    fn check_pointers(&self, op: &str, ptrs: &[(&str, u64)]) -> Result<()> {
        ptrs.iter()
            .try_for_each(|&(name, p)| self.check_pointer(op, name, p))
    }

    fn alloc_bytes(&self, bytes: usize) -> Result<Allocation> {
        if bytes == 0 {
            return Ok(Allocation {
                ptr: 0,
                stream_ordered: false,
                dev: self.inner.clone(),
            });
        }
        self.bind()?;
        let stream_ordered = self.inner.ctx.has_async_alloc();
        let ptr = if stream_ordered {
            // SAFETY: the stream is valid for the device's lifetime; the memory is only used
            // by work on this stream (ops, copies) and freed on it.
            unsafe { result::malloc_async(self.inner.stream.cu_stream(), bytes) }
        } else {
            // SAFETY: plain device allocation in the current (this device's) context.
            unsafe { result::malloc_sync(bytes) }
        }
        .map_err(|e| driver(OP, "allocation", e))?;
        Ok(Allocation {
            ptr,
            stream_ordered,
            dev: self.inner.clone(),
        })
    }

    fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: `ptr` is an allocation of at least `bytes` bytes made by this device; the
        // memset is ordered on the stream like every use of it.
        unsafe { result::memset_d8_async(ptr, 0, bytes, self.inner.stream.cu_stream()) }
            .map_err(|e| driver(OP, "memset", e))
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
        self.memset_zero(b.ptr(), len * dtype.size_in_bytes())?;
        Ok(b)
    }

    /// A device copy of `data` (the copy is queued; `data` may be reused on return).
    pub fn upload<T: Element>(&self, data: &[T]) -> Result<DeviceBuffer> {
        let b = self.alloc(T::DTYPE, data.len())?;
        if !data.is_empty() {
            // SAFETY: `b` holds `data.len()` elements of T; the copy is from pageable memory,
            // which the driver stages before returning, so `data` may change afterwards.
            unsafe { result::memcpy_htod_async(b.ptr(), data, self.inner.stream.cu_stream()) }
                .map_err(|e| driver(OP, "upload", e))?;
        }
        Ok(b)
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
        self.run_group(plan, "group_norm")
    }

    fn run_group(&self, mut plan: super::ops::GroupNormPlan, op: &str) -> Result<DeviceSavedStats> {
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
        // SAFETY: x, y hold n·c·s elements in `order` (shapes checked by the plan, memory by
        // check_pointers); weight/bias c compute values; mean/rstd freshly allocated with
        // n·groups compute values; everything is ordered on this stream.
        unsafe { kernels::group_norm_fwd(self, plan.dtype, plan.order, &plan.params)? };
        Ok(stats)
    }

    /// Instance normalisation on the device (as [`crate::ops::instance_norm`]); running
    /// statistics are read (use_input_stats false) but not updated on CUDA.
    pub fn instance_norm(
        &self,
        x: &DeviceTensor,
        y: &mut DeviceTensorMut,
        args: CudaInstanceNormArgs,
    ) -> Result<DeviceSavedStats> {
        match plan_instance_norm(x, y, &args)? {
            None => self.empty_stats(x.dtype(), 0),
            Some(InstanceNormPlan::InputStats(p)) => self.run_group(p, "instance_norm"),
            Some(InstanceNormPlan::RunningStats(p)) => {
                self.run_infer(&p, "instance_norm")?;
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
                self.check_pointers(
                    OP,
                    &[
                        ("input", apply.x),
                        ("output", apply.y),
                        ("running_mean", running_mean),
                        ("running_var", running_var),
                        ("weight", apply.weight),
                        ("bias", apply.bias),
                    ],
                )?;
                let (n, c, s) = (apply.n as usize, apply.c as usize, apply.s as usize);
                let sp = launch::batch_norm_stats(dtype, order, n, c, s, self.sm_count());
                let stats = self.empty_stats(dtype, c)?;
                let workspace = self.alloc_bytes(sp.workspace_bytes)?;
                let counters = self.alloc_bytes(sp.counters * 4)?;
                self.memset_zero(counters.ptr, sp.counters * 4)?;
                apply.mean = stats.mean.ptr();
                apply.rstd_or_var = stats.invstd.ptr();
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
                    splits: 0, // set from the same plan by kernels::batch_norm_train
                    eps: apply.eps,
                    momentum,
                };
                // SAFETY: x, y hold n·c·s elements, per-channel operands c compute values
                // (plan), all this device's memory (check_pointers); mean/rstd, workspace
                // and zeroed counters were allocated above from the plan for this shape and
                // this device's SM count, and are freed stream-ordered after the launches.
                unsafe { kernels::batch_norm_train(self, dtype, order, &sparams, &apply)? };
                stats
            }
        };
        if let Some(n) = args.num_batches_tracked {
            *n += 1;
        }
        Ok(stats)
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

    fn empty_stats(&self, x: DType, len: usize) -> Result<DeviceSavedStats> {
        let sd = x.stat_dtype();
        Ok(DeviceSavedStats {
            mean: self.alloc(sd, len)?,
            invstd: self.alloc(sd, len)?,
        })
    }
}

fn poisoned() -> Error {
    Error::new(
        ErrorKind::Backend,
        OP,
        "kernel cache",
        "an unpoisoned lock",
        "poisoned",
    )
}

impl Launcher for CudaDevice {
    fn sm_count(&self) -> u32 {
        self.inner.info.sm_count
    }

    unsafe fn launch_raw(&self, name: &str, config: LaunchConfig, params: &[u8]) -> Result<()> {
        let f = self.function(name)?;
        self.bind()?;
        // The struct's bytes in 8-byte-aligned storage (the driver copies `sizeof` bytes).
        let mut words: Vec<u64> = params
            .chunks(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                u64::from_ne_bytes(b)
            })
            .collect();
        let mut args = [words.as_mut_ptr().cast::<c_void>()];
        let [gx, gy, gz] = config.grid;
        let [bx, by, bz] = config.block;
        // SAFETY: `f` is a loaded entry point of this device's context (bound above) taking
        // one by-value parameter struct, whose bytes `args[0]` points to for the duration of
        // the call (the driver copies them); the addresses inside are valid per this
        // function's contract; the stream is valid for the device's lifetime.
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                (gx, gy, gz),
                (bx, by, bz),
                0,
                self.inner.stream.cu_stream(),
                &mut args,
            )
        }
        .map_err(|e| driver(OP, name, e))
    }
}

/// Device memory freed (stream-ordered where allocated so) on drop.
struct Allocation {
    ptr: u64,
    stream_ordered: bool,
    dev: Arc<Inner>,
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if self.ptr == 0 {
            return;
        }
        let _ = self.dev.ctx.bind_to_thread();
        // SAFETY: `ptr` was allocated by this device and is freed once; a stream-ordered
        // free runs after all work queued on the stream so far, which includes every use.
        // Errors cannot be reported from drop; the driver keeps them for the next call.
        let _ = unsafe {
            if self.stream_ordered {
                result::free_async(self.ptr, self.dev.stream.cu_stream())
            } else {
                result::free_sync(self.ptr)
            }
        };
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
    pub fn view_mut(&mut self, shape: &[usize]) -> Result<DeviceTensorMut<'_>> {
        self.view_mut_in(shape, Layout::Contiguous)
    }
    pub fn view_mut_channels_last(&mut self, shape: &[usize]) -> Result<DeviceTensorMut<'_>> {
        self.view_mut_in(shape, Layout::ChannelsLast)
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
        if self.len == 0 {
            return Ok(out);
        }
        self.alloc
            .dev
            .ctx
            .bind_to_thread()
            .map_err(|e| driver(OP, "context", e))?;
        let stream = self.alloc.dev.stream.cu_stream();
        // SAFETY: `out` has room for `len` elements of T = the buffer's dtype; the stream is
        // synchronised before `out` is read or moved.
        unsafe {
            result::memcpy_dtoh_async(&mut out, self.ptr(), stream)
                .and_then(|_| result::stream::synchronize(stream))
        }
        .map_err(|e| driver(OP, "download", e))?;
        Ok(out)
    }

    /// [`DeviceBuffer::download`] converted to f64, whatever the dtype.
    pub fn download_f64(&self) -> Result<Vec<f64>> {
        crate::ops::with_element!(self.dtype, T => Ok(self
            .download::<T>()?
            .into_iter()
            .map(Element::to_f64)
            .collect()))
    }
}

/// Saved statistics of a device op (as [`crate::ops::SavedStats`]), in device memory.
#[derive(Debug)]
pub struct DeviceSavedStats {
    pub mean: DeviceBuffer,
    pub invstd: DeviceBuffer,
}
