//! Contexts: the device an op runs on, its (borrowed) stream and the CPU thread count.

use std::ffi::c_void;

use super::error::{CResult, CapiError, boundary, normkit_status_t, normkit_status_t as S};
use super::tensor::{NORMKIT_DEVICE_CPU, NORMKIT_DEVICE_CUDA, normkit_device_t};
use super::{NORMKIT_ABI_VERSION, read_struct, write_out};
use crate::backend::cuda::device::CudaDevice;

/// device_type of a context config meaning "choose": CUDA device 0 when usable (a library
/// built with the `cuda` feature, a driver, a device and NVRTC), else the CPU.
pub const NORMKIT_DEVICE_AUTO: i32 = 0;

/// Configuration of normkit_context_create. Initialise it with normkit_context_config_init.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_context_config_t {
    /// sizeof(normkit_context_config_t), set by normkit_context_config_init.
    pub struct_size: u32,
    /// NORMKIT_ABI_VERSION as the caller compiled it, set by normkit_context_config_init.
    pub abi_version: u32,
    /// {NORMKIT_DEVICE_CPU, 0}, {NORMKIT_DEVICE_CUDA, ordinal} or {NORMKIT_DEVICE_AUTO, 0}
    /// (the default: CUDA when usable, else CPU).
    pub device: normkit_device_t,
    /// The CUDA stream (cudaStream_t / CUstream) the context launches on, borrowed: normkit
    /// never destroys it. NULL is the legacy default stream. Ignored by CPU contexts.
    pub stream: *mut c_void,
    /// CPU worker threads for this context's ops: 0 (default) = the process default (all
    /// cores unless changed), n in 1..=1024 = a pool of n threads (pools are shared by contexts
    /// asking for the same count).
    pub cpu_num_threads: i32,
    /// Reserved, must be 0.
    pub flags: u32,
}

impl Default for normkit_context_config_t {
    fn default() -> Self {
        normkit_context_config_t {
            struct_size: size_of::<Self>() as u32,
            abi_version: NORMKIT_ABI_VERSION,
            device: normkit_device_t {
                device_type: NORMKIT_DEVICE_AUTO,
                device_id: 0,
            },
            stream: std::ptr::null_mut(),
            cpu_num_threads: 0,
            flags: 0,
        }
    }
}

/// An execution context (opaque): a device, a borrowed stream and a CPU thread count.
///
/// A context is used by one thread at a time (or with external synchronisation); different
/// contexts may be used concurrently. Contexts are cheap: create one per thread or stream.
pub struct normkit_context_t {
    device: normkit_device_t,
    stream: *mut c_void,
    threads: usize,
    /// The CUDA device (on the context's stream) of a CUDA context.
    cuda: Option<CudaDevice>,
}

/// A context on a CUDA device handle: the real GPU, or the host emulation for tests of the C
/// ABI's CUDA path without a GPU (its tensors are then buffers of that emulated device, with
/// device type NORMKIT_DEVICE_CUDA and id 0). Destroy it with normkit_context_destroy.
/// Rust-only (not in the C header).
#[doc(hidden)]
pub fn context_for_cuda_device(dev: CudaDevice) -> *mut normkit_context_t {
    Box::into_raw(Box::new(normkit_context_t {
        device: normkit_device_t {
            device_type: NORMKIT_DEVICE_CUDA,
            device_id: dev.ordinal() as i32,
        },
        stream: dev.stream(),
        threads: 0,
        cuda: Some(dev),
    }))
}

/// Opens CUDA device `ordinal` on the caller's stream.
#[cfg(feature = "cuda")]
fn open_cuda(ordinal: i32, stream: *mut c_void) -> CResult<CudaDevice> {
    let i = usize::try_from(ordinal).map_err(|_| {
        CapiError::invalid(
            "config.device.device_id",
            format!("must be >= 0, got {ordinal}"),
        )
    })?;
    // SAFETY: the C contract of normkit_context_create / _set_stream: `stream` is NULL or a
    // valid stream that outlives the context (and every call made with it).
    Ok(unsafe { CudaDevice::with_borrowed_stream(i, stream) }?)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: i32, _stream: *mut c_void) -> CResult<CudaDevice> {
    Err(CapiError::new(
        S::NORMKIT_STATUS_DEVICE_UNAVAILABLE,
        format!(
            "config.device: CUDA device {ordinal} requested, but this libnormkit was built \
             without the `cuda` feature"
        ),
    ))
}

impl normkit_context_t {
    /// Runs `f` on the calling thread with this context's CPU thread count for the kernels it
    /// starts (callbacks such as a SyncBatchNorm communicator run on the calling thread).
    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        crate::backend::cpu::threads::with_threads(self.threads, f)
    }

    /// The CUDA device of a CUDA context (`None` for a CPU context).
    pub(crate) fn cuda(&self) -> Option<&CudaDevice> {
        self.cuda.as_ref()
    }
}

/// Borrows a context from a C pointer.
///
/// # Safety
/// `ctx` is NULL or a pointer returned by normkit_context_create and not yet destroyed.
pub(crate) unsafe fn context_ref<'a>(
    ctx: *const normkit_context_t,
) -> CResult<&'a normkit_context_t> {
    // SAFETY: the function's contract.
    unsafe { ctx.as_ref() }.ok_or_else(|| CapiError::null("ctx"))
}

/// Fills `config` with the defaults: automatic device choice, NULL stream, default thread
/// count, struct_size and abi_version.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_context_config_init(
    config: *mut normkit_context_config_t,
) -> normkit_status_t {
    boundary!("normkit_context_config_init", {
        // SAFETY: config is NULL or writable (caller contract).
        unsafe { write_out("config", config, normkit_context_config_t::default()) }
    })
}

/// Creates a context. CPU: always available. CUDA: the device `config.device.device_id` on
/// the borrowed `config.stream` (which must belong to the device's primary context, the one
/// the CUDA runtime uses); NORMKIT_STATUS_DEVICE_UNAVAILABLE with what the CUDA probe found
/// when there is no driver, device or NVRTC (or the library was built without `cuda`).
/// AUTO: CUDA device 0 when that works, else the CPU (normkit_context_get_device tells which).
///
/// On a CUDA context every functional op (forward and backward) runs on the device, on the
/// context's stream, without synchronising the host: tensors must be device (or managed)
/// memory of that device, contiguous or channels-last, element-aligned; parameters, running
/// and saved statistics in the compute dtype (float32, float64 for float64 input);
/// num_batches_tracked stays a host int64. SyncBatchNorm runs too (its communicator callbacks
/// receive host payloads, so each step waits for the device). Modules created with a CUDA
/// context keep their state on its device.
///
/// Errors: NULL pointers (NULL_POINTER), struct_size too small (STRUCT_SIZE), abi_version
/// different from this library's (ABI_MISMATCH), an unknown device type, negative thread count
/// or non-zero flags (INVALID_ARGUMENT). `*out` is written only on success; destroy it with
/// normkit_context_destroy.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_context_create(
    config: *const normkit_context_config_t,
    out: *mut *mut normkit_context_t,
) -> normkit_status_t {
    boundary!("normkit_context_create", {
        // SAFETY: config is NULL or readable (caller contract).
        let cfg = unsafe { read_struct("config", config) }?;
        if out.is_null() {
            return Err(CapiError::null("out"));
        }
        if cfg.abi_version != NORMKIT_ABI_VERSION {
            return Err(CapiError::new(
                S::NORMKIT_STATUS_ABI_MISMATCH,
                format!(
                    "config.abi_version: the caller was compiled against ABI version {}, this \
                     library implements {NORMKIT_ABI_VERSION}",
                    cfg.abi_version
                ),
            ));
        }
        if cfg.flags != 0 {
            return Err(CapiError::invalid(
                "config.flags",
                format!("no flags are defined yet (must be 0), got {:#x}", cfg.flags),
            ));
        }
        let max = crate::backend::cpu::threads::MAX_THREADS;
        let threads = usize::try_from(cfg.cpu_num_threads)
            .ok()
            .filter(|&t| t <= max)
            .ok_or_else(|| {
                CapiError::invalid(
                    "config.cpu_num_threads",
                    format!("must be 0 (default) to {max}, got {}", cfg.cpu_num_threads),
                )
            })?;
        let cpu = normkit_device_t {
            device_type: NORMKIT_DEVICE_CPU,
            device_id: 0,
        };
        let (device, cuda) = match cfg.device.device_type {
            NORMKIT_DEVICE_CPU => (cpu, None),
            NORMKIT_DEVICE_AUTO => match open_cuda(0, cfg.stream) {
                Ok(d) => (
                    normkit_device_t {
                        device_type: NORMKIT_DEVICE_CUDA,
                        device_id: 0,
                    },
                    Some(d),
                ),
                Err(_) => (cpu, None),
            },
            NORMKIT_DEVICE_CUDA => (
                cfg.device,
                Some(open_cuda(cfg.device.device_id, cfg.stream)?),
            ),
            other => {
                return Err(CapiError::invalid(
                    "config.device.device_type",
                    format!(
                        "{other} is not NORMKIT_DEVICE_AUTO (0), NORMKIT_DEVICE_CPU (1) or \
                         NORMKIT_DEVICE_CUDA (2)"
                    ),
                ));
            }
        };
        let ctx = Box::new(normkit_context_t {
            device,
            stream: cfg.stream,
            threads,
            cuda,
        });
        // SAFETY: out is non-NULL (checked) and writable (caller contract).
        unsafe { out.write(Box::into_raw(ctx)) };
        Ok(())
    })
}

/// Destroys a context. NULL is a no-op. The context must not be in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_context_destroy(ctx: *mut normkit_context_t) {
    boundary_or!("normkit_context_destroy", (), {
        if !ctx.is_null() {
            // SAFETY: ctx came from Box::into_raw in normkit_context_create and is destroyed
            // once (caller contract).
            drop(unsafe { Box::from_raw(ctx) });
        }
    })
}

/// Sets the borrowed CUDA stream the context launches on (NULL = legacy default stream; it
/// must belong to the device's primary context). No synchronisation: work already queued
/// stays on the old stream. CPU contexts store and ignore it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_context_set_stream(
    ctx: *mut normkit_context_t,
    stream: *mut c_void,
) -> normkit_status_t {
    boundary!("normkit_context_set_stream", {
        // SAFETY: ctx is NULL or a live context used by this thread only (caller contract).
        let ctx = unsafe { ctx.as_mut() }.ok_or_else(|| CapiError::null("ctx"))?;
        if let Some(dev) = &ctx.cuda {
            if !dev.is_emulated() {
                ctx.cuda = Some(open_cuda(ctx.device.device_id, stream)?);
            }
        }
        ctx.stream = stream;
        Ok(())
    })
}

/// Writes the context's stream to `*out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_context_get_stream(
    ctx: *const normkit_context_t,
    out: *mut *mut c_void,
) -> normkit_status_t {
    boundary!("normkit_context_get_stream", {
        // SAFETY: ctx is NULL or a live context (caller contract).
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: out is NULL or writable (caller contract).
        unsafe { write_out("out", out, ctx.stream) }
    })
}

/// Writes the device the context runs on (after AUTO resolution) to `*out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_context_get_device(
    ctx: *const normkit_context_t,
    out: *mut normkit_device_t,
) -> normkit_status_t {
    boundary!("normkit_context_get_device", {
        // SAFETY: ctx is NULL or a live context (caller contract).
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: out is NULL or writable (caller contract).
        unsafe { write_out("out", out, ctx.device) }
    })
}

use super::error::boundary_or;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_thread_count_is_honoured() {
        let ctx = normkit_context_t {
            device: normkit_device_t::default(),
            stream: std::ptr::null_mut(),
            threads: 3,
            cuda: None,
        };
        let kernels = || crate::backend::cpu::threads::install(None, rayon::current_num_threads);
        assert_eq!(ctx.install(kernels), 3);
    }
}
