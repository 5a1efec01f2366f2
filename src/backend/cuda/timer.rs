//! Timing work queued on a device's stream, behind one trait so that benchmarks do not care
//! where the times come from: CUDA events recorded on the stream (a GPU, feature `cuda`) or
//! the host's wall clock around a synchronised stream (the host emulation, whose launches run
//! synchronously anyway).

use std::time::Instant;

use super::device::CudaDevice;
use crate::error::{Error, Result};

/// Times regions of work on one stream: [`start`](StreamTimer::start), queue the work,
/// [`stop`](StreamTimer::stop).
pub trait StreamTimer {
    /// Where the times come from (`cuda-events`, `wall-clock`).
    fn source(&self) -> &'static str;
    /// Marks the start of a timed region (queued on the stream for events).
    fn start(&mut self) -> Result<()>;
    /// Marks the end of the region and returns its length in milliseconds, waiting for the
    /// stream to reach the end mark.
    fn stop(&mut self) -> Result<f64>;
}

/// Host wall-clock time between two synchronisations of the stream: what a caller waiting on
/// the device sees (includes launch overheads; the emulation's only meaningful clock).
pub struct WallClock {
    device: CudaDevice,
    started: Option<Instant>,
}

impl WallClock {
    pub fn new(device: CudaDevice) -> WallClock {
        WallClock {
            device,
            started: None,
        }
    }
}

pub(super) fn not_started() -> Error {
    Error::invalid(
        "StreamTimer::stop",
        "timer",
        "a started timer (start before stop)",
        "stop without start",
    )
}

impl StreamTimer for WallClock {
    fn source(&self) -> &'static str {
        "wall-clock"
    }

    fn start(&mut self) -> Result<()> {
        self.device.synchronize()?;
        self.started = Some(Instant::now());
        Ok(())
    }

    fn stop(&mut self) -> Result<f64> {
        let t0 = self.started.take().ok_or_else(not_started)?;
        self.device.synchronize()?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }
}

impl CudaDevice {
    /// The best timer of this device's stream: CUDA events on a GPU, the host wall clock on
    /// the emulation.
    pub fn timer(&self) -> Result<Box<dyn StreamTimer>> {
        match self.event_timer()? {
            Some(t) => Ok(t),
            None => Ok(Box::new(WallClock::new(self.clone()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::emu::EmuDevice;
    use crate::error::ErrorKind;

    #[test]
    fn the_emulation_times_with_the_wall_clock() {
        let Ok(dev) = CudaDevice::emulated(EmuDevice {
            sms: 1,
            reverse_blocks: false,
            reverse_threads: false,
        }) else {
            return; // emulation not built
        };
        let mut t = dev.timer().unwrap();
        assert_eq!(t.source(), "wall-clock");
        assert_eq!(t.stop().unwrap_err().kind, ErrorKind::InvalidArgument);
        t.start().unwrap();
        let ms = t.stop().unwrap();
        assert!(ms.is_finite() && ms >= 0.0, "{ms}");
    }
}
