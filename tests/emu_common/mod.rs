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
