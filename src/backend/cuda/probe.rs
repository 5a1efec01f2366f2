//! The CUDA probe: is there a driver, a device and NVRTC? Never panics.
//!
//! Order (design/cuda-infra.md §2): `driver::sys::is_culib_present()` (a dlopen test with
//! cudarc's own candidate names) before any cudarc driver call, because cudarc panics when
//! libcuda is missing; then `cuInit`, the device count and each device's attributes inside
//! `catch_unwind` (a partial driver makes cudarc panic with "Missing symbol"); then the NVRTC
//! search of `super::nvrtc`. The result is computed once per process.

use std::fmt;
use std::sync::OnceLock;

/// One CUDA device as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (major, minor): the NVRTC target `sm_<major><minor>`.
    pub compute_capability: (u32, u32),
    /// Streaming multiprocessors (grid sizing).
    pub sm_count: u32,
}

/// Whether the CUDA backend can run here, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CudaAvailability {
    /// A driver, at least one device and NVRTC were found.
    Available {
        devices: Vec<CudaDeviceInfo>,
        /// Where libnvrtc was loaded from.
        nvrtc: String,
    },
    /// The backend cannot run; `reason` says why ("libcuda.so not found", "no CUDA device",
    /// "NVRTC not found: looked in ...", "CUDA backend not compiled in ...").
    Unavailable { reason: String },
}

impl CudaAvailability {
    pub fn is_available(&self) -> bool {
        matches!(self, CudaAvailability::Available { .. })
    }

    /// Why the backend cannot run (`None` when it can).
    pub fn reason(&self) -> Option<&str> {
        match self {
            CudaAvailability::Available { .. } => None,
            CudaAvailability::Unavailable { reason } => Some(reason),
        }
    }

    /// The devices found (empty when unavailable).
    pub fn devices(&self) -> &[CudaDeviceInfo] {
        match self {
            CudaAvailability::Available { devices, .. } => devices,
            CudaAvailability::Unavailable { .. } => &[],
        }
    }
}

impl fmt::Display for CudaAvailability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaAvailability::Available { devices, nvrtc } => {
                let list: Vec<String> = devices
                    .iter()
                    .map(|d| {
                        format!(
                            "{}: {} (sm_{}{}, {} SMs)",
                            d.ordinal,
                            d.name,
                            d.compute_capability.0,
                            d.compute_capability.1,
                            d.sm_count
                        )
                    })
                    .collect();
                write!(f, "available: {}; NVRTC from {nvrtc}", list.join(", "))
            }
            CudaAvailability::Unavailable { reason } => write!(f, "unavailable: {reason}"),
        }
    }
}

/// Probes for the CUDA backend once per process (later calls return the first answer).
pub fn probe() -> CudaAvailability {
    static PROBE: OnceLock<CudaAvailability> = OnceLock::new();
    PROBE.get_or_init(probe_uncached).clone()
}

#[cfg(not(feature = "cuda"))]
fn probe_uncached() -> CudaAvailability {
    CudaAvailability::Unavailable {
        reason: "CUDA backend not compiled in (build with --features cuda)".into(),
    }
}

#[cfg(feature = "cuda")]
fn probe_uncached() -> CudaAvailability {
    let devices = match driver_devices() {
        Ok(d) => d,
        Err(reason) => return CudaAvailability::Unavailable { reason },
    };
    match super::nvrtc::ensure_loaded() {
        Ok(nvrtc) => CudaAvailability::Available { devices, nvrtc },
        Err(e) => CudaAvailability::Unavailable {
            reason: format!("NVRTC not found: {}", e.got),
        },
    }
}

/// The driver's devices, or why there are none. Never panics.
#[cfg(feature = "cuda")]
pub(crate) fn driver_devices() -> Result<Vec<CudaDeviceInfo>, String> {
    use cudarc::driver::{result, sys};
    // SAFETY: a dlopen test over cudarc's candidate library names; no driver symbol is called.
    if !unsafe { sys::is_culib_present() } {
        return Err(
            "libcuda.so not found (no NVIDIA driver on the dynamic loader's search \
                    path: libcuda.so, libcuda.so.1, ...)"
                .into(),
        );
    }
    let query = || -> Result<Vec<CudaDeviceInfo>, String> {
        result::init().map_err(|e| format!("cuInit failed: {e:?}"))?;
        let count = result::device::get_count().map_err(|e| format!("{e:?}"))?;
        if count <= 0 {
            return Err("no CUDA device (the driver reports 0 devices)".into());
        }
        let mut out = Vec::new();
        for i in 0..count {
            let dev = result::device::get(i).map_err(|e| format!("device {i}: {e:?}"))?;
            let attr = |a| {
                // SAFETY: `dev` is a device handle the driver just returned; the attribute
                // query writes one int.
                unsafe { result::device::get_attribute(dev, a) }
                    .map_err(|e| format!("device {i} attribute {a:?}: {e:?}"))
            };
            use sys::CUdevice_attribute_enum as A;
            let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
            let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
            let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
            let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown".into());
            out.push(CudaDeviceInfo {
                ordinal: i as usize,
                name,
                compute_capability: (major.max(0) as u32, minor.max(0) as u32),
                sm_count: sms.max(1) as u32,
            });
        }
        Ok(out)
    };
    match std::panic::catch_unwind(query) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) if e.contains("CUDA_ERROR_NO_DEVICE") => {
            Err(format!("no CUDA device (cuInit: {e})"))
        }
        Ok(Err(e)) => Err(format!("CUDA driver unusable: {e}")),
        Err(p) => Err(format!(
            "CUDA driver unusable (cudarc panicked: {})",
            panic_text(&p)
        )),
    }
}

#[cfg(feature = "cuda")]
pub(crate) fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_never_panics_and_explains_itself() {
        let p = probe();
        match &p {
            CudaAvailability::Available { devices, .. } => assert!(!devices.is_empty()),
            CudaAvailability::Unavailable { reason } => assert!(!reason.is_empty()),
        }
        assert_eq!(p, probe(), "cached");
        assert!(p.to_string().starts_with("available") || p.to_string().starts_with("unavailable"));
    }

    /// On a machine without libcuda (CI, this build host) the reason names the driver.
    #[cfg(feature = "cuda")]
    #[test]
    fn missing_driver_is_reported_not_panicked() {
        // SAFETY: dlopen test only.
        let present = unsafe { cudarc::driver::sys::is_culib_present() };
        if !present {
            let r = probe();
            assert!(
                r.reason()
                    .is_some_and(|r| r.contains("libcuda.so not found")),
                "{r}"
            );
            assert!(r.devices().is_empty());
        }
    }
}
