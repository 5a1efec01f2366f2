//! Device selection: CPU or a CUDA device, honouring `NORMKIT_DEVICE=cpu|cuda|auto`
//! (design/cuda-infra.md §0, c-abi.md §2.4).
//!
//! `auto` (the default) takes CUDA device 0 when [`crate::backend::cuda::probe`](fn@crate::backend::cuda::probe) finds a
//! driver, a device and NVRTC, and the CPU otherwise, saying why; `cuda` turns a failed probe
//! into a [`ErrorKind::DeviceUnavailable`] error.

use std::fmt;

use crate::backend::cuda::probe::{CudaAvailability, probe};
use crate::error::{Error, ErrorKind, Result};

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// What the caller asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA device 0 when available, else the CPU.
    Auto,
    Cpu,
    /// A CUDA device; an error when CUDA is unavailable.
    Cuda(usize),
}

impl DeviceRequest {
    /// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Result<DeviceRequest> {
        let bad = || {
            Error::invalid(
                "select_device",
                "device",
                "auto, cpu, cuda or cuda:N",
                format!("'{s}'"),
            )
        };
        match s.trim() {
            "auto" | "" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceRequest::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }

    /// `NORMKIT_DEVICE`, or `auto` when unset.
    pub fn from_env() -> Result<DeviceRequest> {
        match std::env::var("NORMKIT_DEVICE") {
            Ok(v) => DeviceRequest::parse(&v).map_err(|e| Error {
                operand: "NORMKIT_DEVICE".into(),
                ..e
            }),
            Err(_) => Ok(DeviceRequest::Auto),
        }
    }
}

/// The chosen device and, when the CPU was chosen for `auto`, why CUDA was not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub device: Device,
    pub fallback_reason: Option<String>,
}

/// Resolves `request` against `availability` (pure; [`select_device`] passes the probe).
pub fn resolve(request: DeviceRequest, availability: &CudaAvailability) -> Result<Selection> {
    let unavailable = |reason: &str| {
        Error::new(
            ErrorKind::DeviceUnavailable,
            "select_device",
            "device",
            "an available CUDA device",
            reason.to_string(),
        )
    };
    match request {
        DeviceRequest::Cpu => Ok(Selection {
            device: Device::Cpu,
            fallback_reason: None,
        }),
        DeviceRequest::Auto => match availability {
            CudaAvailability::Available { .. } => Ok(Selection {
                device: Device::Cuda(0),
                fallback_reason: None,
            }),
            CudaAvailability::Unavailable { reason } => Ok(Selection {
                device: Device::Cpu,
                fallback_reason: Some(reason.clone()),
            }),
        },
        DeviceRequest::Cuda(i) => match availability {
            CudaAvailability::Available { devices, .. } if i < devices.len() => Ok(Selection {
                device: Device::Cuda(i),
                fallback_reason: None,
            }),
            CudaAvailability::Available { devices, .. } => Err(unavailable(&format!(
                "cuda:{i}, but only {} CUDA device(s)",
                devices.len()
            ))),
            CudaAvailability::Unavailable { reason } => Err(unavailable(reason)),
        },
    }
}

/// Chooses the device for `request` with the CUDA probe. Never panics.
pub fn select_device(request: DeviceRequest) -> Result<Selection> {
    let availability = match request {
        // no probe (no dlopen) when the CPU is asked for
        DeviceRequest::Cpu => CudaAvailability::Unavailable {
            reason: "not probed".into(),
        },
        _ => probe(),
    };
    resolve(request, &availability)
}

/// [`select_device`] for `NORMKIT_DEVICE` (default `auto`).
pub fn default_device() -> Result<Selection> {
    select_device(DeviceRequest::from_env()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_resolve() {
        assert_eq!(
            DeviceRequest::parse("cuda:3").unwrap(),
            DeviceRequest::Cuda(3)
        );
        assert_eq!(DeviceRequest::parse("auto").unwrap(), DeviceRequest::Auto);
        assert!(DeviceRequest::parse("gpu").is_err());
        assert!(DeviceRequest::parse("cuda:x").is_err());
        let none = CudaAvailability::Unavailable {
            reason: "libcuda.so not found".into(),
        };
        let s = resolve(DeviceRequest::Auto, &none).unwrap();
        assert_eq!(s.device, Device::Cpu);
        assert_eq!(s.fallback_reason.as_deref(), Some("libcuda.so not found"));
        let e = resolve(DeviceRequest::Cuda(0), &none).unwrap_err();
        assert_eq!(e.kind, ErrorKind::DeviceUnavailable);
        assert!(e.got.contains("libcuda.so not found"));
        let one = CudaAvailability::Available {
            devices: vec![crate::backend::cuda::probe::CudaDeviceInfo {
                ordinal: 0,
                name: "test".into(),
                compute_capability: (9, 0),
                sm_count: 132,
            }],
            nvrtc: "x".into(),
        };
        assert_eq!(
            resolve(DeviceRequest::Auto, &one).unwrap().device,
            Device::Cuda(0)
        );
        assert!(resolve(DeviceRequest::Cuda(1), &one).is_err());
        assert_eq!(
            select_device(DeviceRequest::Cpu).unwrap().device,
            Device::Cpu
        );
    }
}
