//! Helpers shared by the emulated-CUDA test files.
#![allow(dead_code)]

use normkit::Element;
use normkit::backend::cuda::emu::{self, EmuDevice};

/// Whether the CUDA host emulation was built; `NORMKIT_REQUIRE_CUDA_EMU=1` makes its absence a
/// failure, otherwise the caller skips with the printed reason.
pub fn ready() -> bool {
    if emu::available() {
        return true;
    }
    assert!(
        std::env::var("NORMKIT_REQUIRE_CUDA_EMU").as_deref() != Ok("1"),
        "NORMKIT_REQUIRE_CUDA_EMU=1 but the CUDA host emulation was not built (see build.rs warnings)"
    );
    eprintln!("skipped: the CUDA host emulation was not built (needs Linux and a C++ compiler)");
    false
}

/// Devices to run on: few SMs (grid-stride loops, several rows/groups per block, few splits)
/// with blocks and threads in reverse order, and a full-size grid in forward order.
pub const DEVICES: [EmuDevice; 2] = [
    EmuDevice {
        sms: 2,
        reverse_blocks: true,
        reverse_threads: true,
    },
    EmuDevice {
        sms: 132,
        reverse_blocks: false,
        reverse_threads: false,
    },
];

/// Deterministic data with an offset (exercises the centred statistics) and a spread.
pub fn data(len: usize, seed: u64, offset: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            offset + ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 4.0
        })
        .collect()
}

pub fn cast<T: Element>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

/// Tolerance per dtype for device-vs-CPU comparisons (relative to the largest magnitude).
pub fn tol(d: normkit::DType) -> f64 {
    use normkit::DType;
    match d {
        DType::F64 => 1e-9,
        DType::F32 => 5e-5,
        DType::F16 => 4e-3,
        DType::BF16 => 3e-2,
    }
}

/// Elementwise closeness relative to the largest magnitude of `want` (sums of many terms);
/// NaN matches NaN.
pub fn close(what: &str, d: normkit::DType, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f64, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol(d) * scale || (g.is_nan() && w.is_nan()),
            "{what} [{d}] element {i}: device {g}, cpu {w} (scale {scale})"
        );
    }
}

/// A host view of `b` in `lay`.
pub fn host<'a>(
    b: &'a normkit::Buffer,
    shape: &[usize],
    lay: normkit::Layout,
) -> normkit::Tensor<'a> {
    match lay {
        normkit::Layout::ChannelsLast => {
            normkit::Tensor::channels_last(b.as_data(), shape).unwrap()
        }
        _ => normkit::Tensor::new(b.as_data(), shape).unwrap(),
    }
}

/// A writable host view of `b` in `lay`.
pub fn host_mut<'a>(
    b: &'a mut normkit::Buffer,
    shape: &[usize],
    lay: normkit::Layout,
) -> normkit::TensorMut<'a> {
    match lay {
        normkit::Layout::ChannelsLast => {
            normkit::TensorMut::channels_last(b.as_data_mut(), shape).unwrap()
        }
        _ => normkit::TensorMut::new(b.as_data_mut(), shape).unwrap(),
    }
}

/// The GPU (feature `cuda`, when the probe finds one), else the host emulation; `None` (with
/// the reason printed) when neither exists.
pub fn device() -> Option<normkit::backend::cuda::device::CudaDevice> {
    use normkit::backend::cuda::device::CudaDevice;
    #[cfg(feature = "cuda")]
    if normkit::backend::cuda::probe().is_available() {
        return Some(CudaDevice::new(0).expect("probe found a GPU"));
    }
    if !ready() {
        return None;
    }
    Some(CudaDevice::emulated(DEVICES[0]).unwrap())
}

/// A 2-rank group whose other rank mirrors this one.
pub struct Mirror;

impl normkit::comm::Communicator for Mirror {
    fn world_size(&self) -> usize {
        2
    }
    fn rank(&self) -> usize {
        0
    }
    fn all_gather(&self, send: &[f64], recv: &mut [f64]) -> normkit::Result<()> {
        recv[..send.len()].copy_from_slice(send);
        recv[send.len()..].copy_from_slice(send);
        Ok(())
    }
    fn all_reduce_sum(&self, data: &mut [f64]) -> normkit::Result<()> {
        data.iter_mut().for_each(|v| *v *= 2.0);
        Ok(())
    }
}
