//! The real GPU behind [`CudaDevice`] (feature `cuda`): a primary context per ordinal, a
//! library-owned or borrowed stream, kernel modules compiled by NVRTC on first use (or up front
//! with [`CudaDevice::prepare`]), stream-ordered device memory and raw `cuLaunchKernel`s.
//!
//! * Creating a device runs [`super::probe::probe`] first, so a missing driver, device or
//!   NVRTC is an [`ErrorKind::DeviceUnavailable`] error, never a panic; the cudarc calls that
//!   create the context and stream run inside `catch_unwind` as well.
//! * A borrowed stream (`cudaStream_t` of the caller) is wrapped with cudarc's
//!   `wrap_borrowed_stream`, which never destroys it.
//! * Scratch memory and saved statistics are allocated stream-ordered (`cuMemAllocAsync`, when
//!   the device has memory pools) and freed the same way, so ops can be captured into a CUDA
//!   graph once [`CudaDevice::prepare`] has loaded their kernels; a kernel that is not loaded
//!   during capture is an error, not a compile.

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaStream, result, sys};
use cudarc::nvrtc::Ptx;

use super::device::{CudaDevice, GpuBackend};
use super::kernels::Launcher;
use super::launch::LaunchConfig;
use super::modules;
use super::nvrtc;
use super::probe::{CudaAvailability, CudaDeviceInfo, panic_text, probe};
use super::timer::{StreamTimer, not_started};
use crate::error::{Error, ErrorKind, Result};

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

type FunctionCache = HashMap<(usize, String), CudaFunction>;
/// Loaded kernels of every device, by (ordinal, entry point). Modules stay loaded (and the
/// primary context retained) for the process lifetime, shared by every `CudaDevice`.
static FUNCTIONS: Mutex<Option<FunctionCache>> = Mutex::new(None);

fn poisoned() -> Error {
    Error::new(
        ErrorKind::Backend,
        OP,
        "kernel cache",
        "an unpoisoned lock",
        "poisoned",
    )
}

/// One GPU (primary context) with one stream.
struct DriverGpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    borrowed: bool,
    info: CudaDeviceInfo,
}

impl CudaDevice {
    /// Device `ordinal` with a new, library-owned non-blocking stream.
    pub fn new(ordinal: usize) -> Result<CudaDevice> {
        create(ordinal, None).map(CudaDevice::from_backend)
    }

    /// Device `ordinal` launching on the caller's stream, which normkit never destroys or
    /// synchronises except in [`CudaDevice::synchronize`] and
    /// [`super::device::DeviceBuffer::download`]. Null is the legacy default stream, `2`
    /// (`CU_STREAM_PER_THREAD`) the per-thread one; any other stream must belong to the
    /// device's primary context (checked).
    ///
    /// # Safety
    /// `stream` must be a valid stream handle that outlives this device, its clones and
    /// every buffer it allocates (they are freed stream-ordered on it).
    pub unsafe fn with_borrowed_stream(ordinal: usize, stream: *mut c_void) -> Result<CudaDevice> {
        create(ordinal, Some(stream as sys::CUstream)).map(CudaDevice::from_backend)
    }
}

fn create(ordinal: usize, borrowed: Option<sys::CUstream>) -> Result<DriverGpu> {
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
                // SAFETY: `s` is valid, belongs to this (primary) context (checked above,
                // or a special handle valid in every context), and outlives the wrapper
                // per the caller's contract; the wrapper never destroys it.
                unsafe { ctx.wrap_borrowed_stream(s) }
            }
        };
        Ok((ctx, stream))
    }));
    let (ctx, stream) = match made {
        Ok(r) => r?,
        Err(p) => return Err(unavailable(format!("cudarc panicked: {}", panic_text(&p)))),
    };
    Ok(DriverGpu {
        ctx,
        stream,
        borrowed: borrowed.is_some(),
        info,
    })
}

impl DriverGpu {
    fn ordinal(&self) -> usize {
        self.info.ordinal
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver(OP, "context", e))
    }

    fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
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
        let (major, minor) = self.info.compute_capability;
        let ptx = nvrtc::compile_ptx(
            module.source,
            &format!("{}.cu", module.name),
            &nvrtc::options_for(major, minor),
        )?;
        self.bind()?;
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            let m = self.ctx.load_module(Ptx::from_src(ptx))?;
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
        let status = unsafe { result::stream::is_capturing(self.cu_stream()) }
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
}

impl Launcher for DriverGpu {
    fn sm_count(&self) -> u32 {
        self.info.sm_count
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
                self.cu_stream(),
                &mut args,
            )
        }
        .map_err(|e| driver(OP, name, e))
    }
}

impl GpuBackend for DriverGpu {
    fn info(&self) -> &CudaDeviceInfo {
        &self.info
    }

    fn stream(&self) -> *mut c_void {
        self.cu_stream() as *mut c_void
    }

    fn has_borrowed_stream(&self) -> bool {
        self.borrowed
    }

    fn is_emulated(&self) -> bool {
        false
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.stream
            .synchronize()
            .map_err(|e| driver(OP, "synchronize", e))
    }

    fn load_modules(&self, names: &[&str]) -> Result<()> {
        names.iter().try_for_each(|m| self.load_module(m))
    }

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

    fn alloc(&self, bytes: usize) -> Result<(u64, bool)> {
        if bytes == 0 {
            return Ok((0, false));
        }
        self.bind()?;
        let stream_ordered = self.ctx.has_async_alloc();
        let ptr = if stream_ordered {
            // SAFETY: the stream is valid for the device's lifetime; the memory is only used
            // by work on this stream (ops, copies) and freed on it.
            unsafe { result::malloc_async(self.cu_stream(), bytes) }
        } else {
            // SAFETY: plain device allocation in the current (this device's) context.
            unsafe { result::malloc_sync(bytes) }
        }
        .map_err(|e| driver(OP, "allocation", e))?;
        Ok((ptr, stream_ordered))
    }

    unsafe fn free(&self, ptr: u64, stream_ordered: bool) {
        if ptr == 0 {
            return;
        }
        let _ = self.ctx.bind_to_thread();
        // SAFETY: per this function's contract `ptr` came from `alloc` of this device and is
        // freed once; a stream-ordered free runs after all work queued on the stream so far,
        // which includes every use. Errors cannot be reported from drop; the driver keeps
        // them for the next call.
        let _ = unsafe {
            if stream_ordered {
                result::free_async(ptr, self.cu_stream())
            } else {
                result::free_sync(ptr)
            }
        };
    }

    unsafe fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: per this function's contract `ptr` addresses `bytes` bytes of this device;
        // the memset is ordered on the stream like every use of it.
        unsafe { result::memset_d8_async(ptr, 0, bytes, self.cu_stream()) }
            .map_err(|e| driver(OP, "memset", e))
    }

    fn event_timer(&self) -> Result<Option<Box<dyn StreamTimer>>> {
        Ok(Some(Box::new(EventTimer {
            stream: self.stream.clone(),
            start: None,
        })))
    }

    unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: per this function's contract `dst` has room for `src.len()` bytes; the copy
        // is from pageable memory, which the driver stages before returning, so `src` may
        // change afterwards.
        unsafe { result::memcpy_htod_async(dst, src, self.cu_stream()) }
            .map_err(|e| driver(OP, "upload", e))
    }

    unsafe fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: per this function's contract both ranges are `bytes` bytes of this device
        // and do not overlap; the copy is ordered on the stream.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.cu_stream()) }
            .map_err(|e| driver(OP, "copy", e))
    }

    unsafe fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        let stream = self.cu_stream();
        // SAFETY: per this function's contract `src` holds `dst.len()` bytes; the stream is
        // synchronised before `dst` is read or moved.
        unsafe {
            result::memcpy_dtoh_async(dst, src, stream)
                .and_then(|_| result::stream::synchronize(stream))
        }
        .map_err(|e| driver(OP, "download", e))
    }
}

/// CUDA events (timing enabled) recorded on the device's stream around the timed work: the
/// GPU time between the two marks, without host launch overheads (cudarc's safe event API).
struct EventTimer {
    stream: Arc<CudaStream>,
    start: Option<CudaEvent>,
}

impl EventTimer {
    fn record(&self) -> Result<CudaEvent> {
        self.stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver("StreamTimer", "event", e))
    }
}

impl StreamTimer for EventTimer {
    fn source(&self) -> &'static str {
        "cuda-events"
    }

    fn start(&mut self) -> Result<()> {
        self.start = Some(self.record()?);
        Ok(())
    }

    fn stop(&mut self) -> Result<f64> {
        let start = self.start.take().ok_or_else(not_started)?;
        let end = self.record()?;
        start
            .elapsed_ms(&end)
            .map(f64::from)
            .map_err(|e| driver("StreamTimer", "elapsed time", e))
    }
}
