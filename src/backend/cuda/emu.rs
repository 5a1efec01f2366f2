//! The host emulation of the CUDA kernels: `kernels/*.cu` compiled by the system C++ compiler
//! against `kernels/emu/cuda_emu.hpp` (build.rs), run on the CPU with fibers for threads.
//!
//! [`EmuDevice`] implements [`Launcher`], so the same planning and launch code as the GPU
//! path runs the real kernel sources; its safe methods take host slices, check their lengths
//! and pass host addresses as "device" pointers. Used by tests/cuda_emulated.rs. Not a fast
//! CPU backend.

use super::device::GpuBackend;
use super::kernels::{self, Launcher};
use super::launch::{self, ChannelOrder, LaunchConfig};
use super::params::{
    BatchNormApplyParams, BatchNormStatsParams, GroupNormParams, LayerNormParams, LrnParams,
};
use super::params::{LayerNormBwdParams, LrnBwdParams, NormBwdParams};
use super::probe::CudaDeviceInfo;
use crate::dtype::{Element, Real};
use crate::error::{Error, ErrorKind, Result};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Mutex;

const OP: &str = "cuda_emu";

#[cfg(normkit_cuda_emu)]
mod ffi {
    use std::os::raw::{c_char, c_int, c_uint, c_ulong, c_void};
    unsafe extern "C" {
        pub fn normkit_emu_launch(
            name: *const c_char,
            grid: *const c_uint,
            block: *const c_uint,
            params: *const c_void,
            params_size: c_ulong,
            flags: c_uint,
            err: *mut c_char,
            err_len: c_ulong,
        ) -> c_int;
        pub fn normkit_emu_kernel_count() -> c_int;
        pub fn normkit_emu_kernel_name(i: c_int) -> *const c_char;
    }
}

/// Whether the emulation was built (build.rs found a working C++ compiler on Linux).
pub fn available() -> bool {
    cfg!(normkit_cuda_emu)
}

fn unavailable() -> Error {
    Error::new(
        ErrorKind::DeviceUnavailable,
        OP,
        "emulation",
        "the CUDA host emulation (built by build.rs with a C++ compiler, Linux only)",
        "not built",
    )
}

/// Names of every kernel entry point compiled into the emulation.
pub fn kernel_names() -> Vec<String> {
    #[cfg(normkit_cuda_emu)]
    {
        // SAFETY: plain calls into the emulation registry; each name is a static NUL-terminated
        // string (or null for an index out of range, which is skipped).
        unsafe {
            (0..ffi::normkit_emu_kernel_count())
                .filter_map(|i| {
                    let p = ffi::normkit_emu_kernel_name(i);
                    (!p.is_null())
                        .then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
                })
                .collect()
        }
    }
    #[cfg(not(normkit_cuda_emu))]
    Vec::new()
}

/// The emulated device: `sms` sets grid sizing (small values exercise grid-stride loops),
/// the flags reverse the order blocks and threads run in.
#[derive(Clone, Copy, Debug)]
pub struct EmuDevice {
    pub sms: u32,
    pub reverse_blocks: bool,
    pub reverse_threads: bool,
}

impl Launcher for EmuDevice {
    fn sm_count(&self) -> u32 {
        self.sms
    }

    unsafe fn launch_raw(&self, name: &str, config: LaunchConfig, params: &[u8]) -> Result<()> {
        #[cfg(normkit_cuda_emu)]
        {
            let cname = std::ffi::CString::new(name)
                .map_err(|_| Error::invalid(OP, "kernel", "a name without NUL", name))?;
            let flags = self.reverse_blocks as u32 | (self.reverse_threads as u32) << 1;
            let mut err = vec![0u8; 512];
            // SAFETY: the strings, arrays and the params buffer live across the call and have
            // the lengths passed; the addresses inside `params` are valid per this function's
            // contract (the caller's). The emulator runs the launch to completion before it
            // returns and writes at most `err.len()` bytes (NUL-terminated) into `err`.
            let rc = unsafe {
                ffi::normkit_emu_launch(
                    cname.as_ptr(),
                    config.grid.as_ptr(),
                    config.block.as_ptr(),
                    params.as_ptr().cast(),
                    params.len() as _,
                    flags,
                    err.as_mut_ptr().cast(),
                    err.len() as _,
                )
            };
            if rc != 0 {
                let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
                return Err(Error::new(
                    ErrorKind::Backend,
                    OP,
                    name,
                    "a successful emulated launch",
                    String::from_utf8_lossy(&err[..end]).into_owned(),
                ));
            }
            Ok(())
        }
        #[cfg(not(normkit_cuda_emu))]
        {
            let _ = (name, config, params);
            Err(unavailable())
        }
    }
}

/// Live emulated allocations by base address: (storage, size in bytes).
type Allocations = BTreeMap<u64, (Region, usize)>;

/// The host memory of one emulated allocation, filled with 0xFF bytes (NaN in every float
/// type, so reads of unwritten memory show up). On Unix the data ends (rounded up to 16 bytes,
/// the widest access) where an inaccessible guard page begins, so a kernel that reads or writes
/// past the end of a buffer faults at once in the emulation, as compute-sanitizer reports it on
/// a GPU, instead of silently using a neighbour's bytes (a LayerNorm kernel read γ/β one pack
/// past the row, unseen by the emulation and found by compute-sanitizer on an H100).
struct Region {
    /// Start of the data (16-byte aligned).
    ptr: u64,
    #[cfg(unix)]
    map: (usize, usize),
    #[cfg(not(unix))]
    _storage: Box<[u128]>,
}

impl Region {
    #[cfg(unix)]
    fn new(bytes: usize) -> Result<Region> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let data = bytes.div_ceil(16) * 16;
        let data_len = data.div_ceil(page) * page;
        let fail = |what: &str| {
            Error::new(
                ErrorKind::Backend,
                OP,
                "alloc",
                "host memory for an emulated allocation",
                format!(
                    "{what} failed for {bytes} bytes: {}",
                    std::io::Error::last_os_error()
                ),
            )
        };
        let map_len = data_len.checked_add(page).ok_or_else(|| fail("size"))?;
        // SAFETY: a new private anonymous mapping (no address hint, no file); the result is
        // checked before use.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(fail("mmap"));
        }
        let region = Region {
            ptr: map as u64 + (data_len - data) as u64,
            map: (map as usize, map_len),
        };
        // SAFETY: the guard page is the last page of the mapping just created (data_len is a
        // whole number of pages below map_len); on failure `region` unmaps it when dropped.
        if unsafe { libc::mprotect(map.cast::<u8>().add(data_len).cast(), page, libc::PROT_NONE) }
            != 0
        {
            return Err(fail("mprotect"));
        }
        // SAFETY: [ptr, ptr + data) lies in the readable and writable pages of the mapping.
        unsafe { std::ptr::write_bytes(region.ptr as *mut u8, 0xFF, data) };
        Ok(region)
    }

    #[cfg(not(unix))]
    fn new(bytes: usize) -> Result<Region> {
        let storage = vec![u128::MAX; bytes.div_ceil(16)].into_boxed_slice();
        Ok(Region {
            ptr: storage.as_ptr() as u64,
            _storage: storage,
        })
    }
}

#[cfg(unix)]
impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `map` is the mapping created in `Region::new`, unmapped only here; the
        // allocation has left the table, so no launch can reach it any more.
        unsafe { libc::munmap(self.map.0 as *mut c_void, self.map.1) };
    }
}

/// The emulated device as a [`GpuBackend`] (behind `CudaDevice::emulated`): device memory is
/// host memory registered here, so pointers that are not inside a live allocation are
/// rejected like host pointers on a GPU; launches run synchronously.
pub struct EmuGpu {
    device: EmuDevice,
    info: CudaDeviceInfo,
    /// Live allocations by base address: (storage, size in bytes).
    allocations: Mutex<Allocations>,
}

impl EmuGpu {
    pub fn new(device: EmuDevice) -> Result<EmuGpu> {
        if !available() {
            return Err(unavailable());
        }
        Ok(EmuGpu {
            device,
            info: CudaDeviceInfo {
                ordinal: 0,
                name: "normkit CUDA host emulation".into(),
                compute_capability: (9, 0),
                sm_count: device.sms,
            },
            allocations: Mutex::new(BTreeMap::new()),
        })
    }

    fn allocations(&self) -> std::sync::MutexGuard<'_, Allocations> {
        self.allocations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `[ptr, ptr + bytes)` lies inside one live allocation.
    fn contains(&self, ptr: u64, bytes: usize) -> bool {
        let a = self.allocations();
        a.range(..=ptr)
            .next_back()
            .is_some_and(|(&base, &(_, size))| {
                ptr.checked_add(bytes as u64)
                    .is_some_and(|end| end <= base + size as u64)
            })
    }

    fn range_error(&self, what: &str, ptr: u64, bytes: usize) -> Error {
        Error::new(
            ErrorKind::DeviceMismatch,
            OP,
            what,
            "memory of the emulated device",
            format!("{bytes} bytes at {ptr:#x} outside every emulated allocation"),
        )
    }
}

impl Launcher for EmuGpu {
    fn sm_count(&self) -> u32 {
        self.device.sms
    }

    unsafe fn launch_raw(&self, name: &str, config: LaunchConfig, params: &[u8]) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.device.launch_raw(name, config, params) }
    }
}

impl GpuBackend for EmuGpu {
    fn info(&self) -> &CudaDeviceInfo {
        &self.info
    }
    fn stream(&self) -> *mut c_void {
        std::ptr::null_mut()
    }
    fn has_borrowed_stream(&self) -> bool {
        false
    }
    fn is_emulated(&self) -> bool {
        true
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn load_modules(&self, names: &[&str]) -> Result<()> {
        // every kernel is compiled into the emulation; check the names all the same
        for n in names {
            if !super::modules::all().any(|m| m.name == *n) {
                return Err(Error::invalid(
                    OP,
                    "module",
                    "a kernel module of kernels/",
                    *n,
                ));
            }
        }
        Ok(())
    }
    fn check_pointer(&self, op: &str, operand: &str, ptr: u64) -> Result<()> {
        if ptr == 0 || self.contains(ptr, 1) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::DeviceMismatch,
            op,
            operand,
            "memory of the emulated device",
            format!("a host pointer {ptr:#x}"),
        ))
    }
    fn alloc(&self, bytes: usize) -> Result<(u64, bool)> {
        if bytes == 0 {
            return Ok((0, false));
        }
        let region = Region::new(bytes)?;
        let ptr = region.ptr;
        self.allocations().insert(ptr, (region, bytes));
        Ok((ptr, false))
    }
    unsafe fn free(&self, ptr: u64, _stream_ordered: bool) {
        self.allocations().remove(&ptr);
    }
    unsafe fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<()> {
        if !self.contains(ptr, bytes) {
            return Err(self.range_error("memset", ptr, bytes));
        }
        // SAFETY: the range lies inside a live allocation (checked), which is host memory
        // owned by this backend; nothing else accesses it during this synchronous call.
        unsafe { std::ptr::write_bytes(ptr as *mut u8, 0, bytes) };
        Ok(())
    }
    unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        if !self.contains(dst, src.len()) {
            return Err(self.range_error("upload", dst, src.len()));
        }
        // SAFETY: the destination range lies inside a live allocation (checked) and cannot
        // overlap `src`, a borrowed host slice outside this backend's allocations.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }
    unsafe fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        if !self.contains(dst, bytes) || !self.contains(src, bytes) {
            return Err(self.range_error("copy", dst, bytes));
        }
        // SAFETY: both ranges lie inside live allocations (checked); `copy` tolerates overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    unsafe fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        if !self.contains(src, dst.len()) {
            return Err(self.range_error("download", src, dst.len()));
        }
        // SAFETY: the source range lies inside a live allocation (checked); `dst` is an
        // exclusive host slice outside this backend's allocations.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
}

fn need(operand: &str, len: usize, want: usize) -> Result<()> {
    if len < want {
        return Err(Error::new(
            ErrorKind::BufferTooSmall,
            OP,
            operand,
            format!("at least {want} elements"),
            format!("{len}"),
        ));
    }
    Ok(())
}

fn opt_ptr<C>(s: Option<&[C]>, operand: &str, want: usize) -> Result<u64> {
    match s {
        Some(s) => {
            need(operand, s.len(), want)?;
            Ok(s.as_ptr() as u64)
        }
        None => Ok(0),
    }
}

fn opt_ptr_mut<C>(s: &mut Option<&mut [C]>, operand: &str, want: usize) -> Result<u64> {
    match s {
        Some(s) => {
            need(operand, s.len(), want)?;
            Ok(s.as_mut_ptr() as u64)
        }
        None => Ok(0),
    }
}

fn product(dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&t| t <= i64::MAX as usize)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Overflow,
                OP,
                "shape",
                "a representable size",
                "overflow",
            )
        })
}

fn positive(operand: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::invalid(OP, operand, "> 0", "0"));
    }
    Ok(())
}

/// Per-(row / group / channel) statistics returned by the emulated ops.
pub type Stats<C> = (Vec<C>, Vec<C>);

impl EmuDevice {
    fn check(&self) -> Result<()> {
        if !available() {
            return Err(unavailable());
        }
        Ok(())
    }

    /// LayerNorm forward; returns (mean, rstd) per row.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm<T: Element>(
        &self,
        x: &[T],
        y: &mut [T],
        weight: Option<&[T::Compute]>,
        bias: Option<&[T::Compute]>,
        rows: usize,
        cols: usize,
        eps: f64,
    ) -> Result<Stats<T::Compute>> {
        self.check()?;
        positive("rows", rows)?;
        positive("cols", cols)?;
        let total = product(&[rows, cols])?;
        need("x", x.len(), total)?;
        need("y", y.len(), total)?;
        let mut mean = vec![T::Compute::ZERO; rows];
        let mut rstd = vec![T::Compute::ZERO; rows];
        let p = LayerNormParams {
            x: x.as_ptr() as u64,
            y: y.as_mut_ptr() as u64,
            weight: opt_ptr(weight, "weight", cols)?,
            bias: opt_ptr(bias, "bias", cols)?,
            mean: mean.as_mut_ptr() as u64,
            rstd: rstd.as_mut_ptr() as u64,
            rows: rows as i64,
            cols: cols as i64,
            eps,
        };
        // SAFETY: every address points into a live slice checked above to hold what the
        // kernel touches (x, y: rows·cols; weight, bias: cols; mean, rstd: rows), and the
        // emulated launch completes before this function returns.
        unsafe { kernels::layer_norm_fwd(self, T::DTYPE, &p)? };
        Ok((mean, rstd))
    }

    /// GroupNorm forward (InstanceNorm: groups = c, clamp_var false, zero_var_rule true);
    /// returns (mean, rstd) per (n, group).
    #[allow(clippy::too_many_arguments)]
    pub fn group_norm<T: Element>(
        &self,
        order: ChannelOrder,
        x: &[T],
        y: &mut [T],
        weight: Option<&[T::Compute]>,
        bias: Option<&[T::Compute]>,
        (n, c, s): (usize, usize, usize),
        groups: usize,
        eps: f64,
        clamp_var: bool,
        zero_var_rule: bool,
    ) -> Result<Stats<T::Compute>> {
        self.check()?;
        for (name, v) in [("n", n), ("c", c), ("s", s), ("groups", groups)] {
            positive(name, v)?;
        }
        if c % groups != 0 {
            return Err(Error::invalid(
                OP,
                "groups",
                "a divisor of c",
                format!("{groups}"),
            ));
        }
        let total = product(&[n, c, s])?;
        need("x", x.len(), total)?;
        need("y", y.len(), total)?;
        let mut mean = vec![T::Compute::ZERO; n * groups];
        let mut rstd = vec![T::Compute::ZERO; n * groups];
        let p = GroupNormParams {
            x: x.as_ptr() as u64,
            y: y.as_mut_ptr() as u64,
            weight: opt_ptr(weight, "weight", c)?,
            bias: opt_ptr(bias, "bias", c)?,
            mean: mean.as_mut_ptr() as u64,
            rstd: rstd.as_mut_ptr() as u64,
            m2: 0,
            n: n as i64,
            c: c as i64,
            s: s as i64,
            groups: groups as i64,
            eps,
            clamp_var: clamp_var as i32,
            zero_var_rule: zero_var_rule as i32,
        };
        // SAFETY: addresses point into live slices checked above (x, y: n·c·s; weight, bias:
        // c; mean, rstd: n·groups); the emulated launch completes before returning.
        unsafe { kernels::group_norm_fwd(self, T::DTYPE, order, &p)? };
        Ok((mean, rstd))
    }

    /// BatchNorm training forward; updates the running statistics when given and returns the
    /// saved (mean, rstd) per channel. Fails if the kernel leaves a ticket counter non-zero.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_train<T: Element>(
        &self,
        order: ChannelOrder,
        x: &[T],
        y: &mut [T],
        weight: Option<&[T::Compute]>,
        bias: Option<&[T::Compute]>,
        mut running_mean: Option<&mut [T::Compute]>,
        mut running_var: Option<&mut [T::Compute]>,
        (n, c, s): (usize, usize, usize),
        eps: f64,
        momentum: f64,
    ) -> Result<Stats<T::Compute>> {
        self.check()?;
        for (name, v) in [("n", n), ("c", c), ("s", s)] {
            positive(name, v)?;
        }
        let total = product(&[n, c, s])?;
        need("x", x.len(), total)?;
        need("y", y.len(), total)?;
        let plan = launch::batch_norm_stats(T::DTYPE, order, n, c, s, self.sms);
        let mut workspace = vec![0u64; plan.workspace_bytes.div_ceil(8)];
        let mut counters = vec![0u32; plan.counters];
        let mut mean = vec![T::Compute::ZERO; c];
        let mut mean_lo = vec![T::Compute::ZERO; c];
        let mut rstd = vec![T::Compute::ZERO; c];
        let stats = BatchNormStatsParams {
            x: x.as_ptr() as u64,
            mean: mean.as_mut_ptr() as u64,
            rstd: rstd.as_mut_ptr() as u64,
            running_mean: opt_ptr_mut(&mut running_mean, "running_mean", c)?,
            running_var: opt_ptr_mut(&mut running_var, "running_var", c)?,
            workspace: workspace.as_mut_ptr() as u64,
            counters: counters.as_mut_ptr() as u64,
            n: n as i64,
            c: c as i64,
            s: s as i64,
            splits: plan.splits as i64,
            eps,
            momentum,
            mean_lo: mean_lo.as_mut_ptr() as u64,
        };
        let apply = BatchNormApplyParams {
            x: x.as_ptr() as u64,
            y: y.as_mut_ptr() as u64,
            mean: mean.as_ptr() as u64,
            rstd_or_var: rstd.as_ptr() as u64,
            weight: opt_ptr(weight, "weight", c)?,
            bias: opt_ptr(bias, "bias", c)?,
            n: n as i64,
            c: c as i64,
            s: s as i64,
            eps,
            mean_lo: mean_lo.as_ptr() as u64,
        };
        // SAFETY: addresses point into live slices and vectors checked or sized above (x, y:
        // n·c·s; per-channel buffers: c; workspace and counters sized by the same plan the
        // launch uses, counters zeroed); the emulated launches complete before returning.
        unsafe { kernels::batch_norm_train(self, T::DTYPE, order, &stats, &apply)? };
        if counters.iter().any(|&t| t != 0) {
            return Err(Error::new(
                ErrorKind::Backend,
                OP,
                "counters",
                "ticket counters reset to 0 by the last block",
                format!("{counters:?}"),
            ));
        }
        Ok((mean, rstd))
    }

    /// BatchNorm inference from running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_infer<T: Element>(
        &self,
        order: ChannelOrder,
        x: &[T],
        y: &mut [T],
        weight: Option<&[T::Compute]>,
        bias: Option<&[T::Compute]>,
        running_mean: &[T::Compute],
        running_var: &[T::Compute],
        (n, c, s): (usize, usize, usize),
        eps: f64,
    ) -> Result<()> {
        self.check()?;
        for (name, v) in [("n", n), ("c", c), ("s", s)] {
            positive(name, v)?;
        }
        let total = product(&[n, c, s])?;
        need("x", x.len(), total)?;
        need("y", y.len(), total)?;
        need("running_mean", running_mean.len(), c)?;
        need("running_var", running_var.len(), c)?;
        let p = BatchNormApplyParams {
            x: x.as_ptr() as u64,
            y: y.as_mut_ptr() as u64,
            mean: running_mean.as_ptr() as u64,
            rstd_or_var: running_var.as_ptr() as u64,
            weight: opt_ptr(weight, "weight", c)?,
            bias: opt_ptr(bias, "bias", c)?,
            n: n as i64,
            c: c as i64,
            s: s as i64,
            eps,
            mean_lo: 0,
        };
        // SAFETY: addresses point into live slices checked above (x, y: n·c·s; per-channel
        // buffers: c); the emulated launch completes before returning.
        unsafe { kernels::batch_norm_infer(self, T::DTYPE, order, &p) }
    }

    /// LocalResponseNorm forward.
    #[allow(clippy::too_many_arguments)]
    pub fn lrn<T: Element>(
        &self,
        order: ChannelOrder,
        x: &[T],
        y: &mut [T],
        (n, c, s): (usize, usize, usize),
        size: usize,
        alpha: f64,
        beta: f64,
        k: f64,
    ) -> Result<()> {
        self.check()?;
        for (name, v) in [("n", n), ("c", c), ("s", s), ("size", size)] {
            positive(name, v)?;
        }
        let total = product(&[n, c, s])?;
        need("x", x.len(), total)?;
        need("y", y.len(), total)?;
        let p = LrnParams {
            x: x.as_ptr() as u64,
            y: y.as_mut_ptr() as u64,
            n: n as i64,
            c: c as i64,
            s: s as i64,
            size: size as i64,
            alpha,
            beta,
            k,
        };
        // SAFETY: x and y are distinct live slices of at least n·c·s elements (checked above);
        // the emulated launch completes before returning.
        unsafe { kernels::lrn_fwd(self, T::DTYPE, order, &p) }
    }
}

// ---- Backward --------------------------------------------------------------------------------

/// Gradient outputs of an emulated backward; each is computed only when given.
#[derive(Debug)]
pub struct EmuGrads<'a, T, C> {
    pub dx: Option<&'a mut [T]>,
    pub grad_weight: Option<&'a mut [C]>,
    pub grad_bias: Option<&'a mut [C]>,
    /// Add into grad_weight / grad_bias instead of overwriting them.
    pub accumulate: bool,
}

fn counters_reset(counters: &[u32]) -> Result<()> {
    if counters.iter().any(|&t| t != 0) {
        return Err(Error::new(
            ErrorKind::Backend,
            OP,
            "counters",
            "ticket counters reset to 0 by the last block",
            format!("{counters:?}"),
        ));
    }
    Ok(())
}

impl EmuDevice {
    /// LayerNorm backward from the forward's saved (mean, rstd) per row.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_backward<T: Element>(
        &self,
        x: &[T],
        dy: &[T],
        mean: &[T::Compute],
        rstd: &[T::Compute],
        weight: Option<&[T::Compute]>,
        rows: usize,
        cols: usize,
        mut grads: EmuGrads<'_, T, T::Compute>,
    ) -> Result<()> {
        self.check()?;
        positive("rows", rows)?;
        positive("cols", cols)?;
        let total = product(&[rows, cols])?;
        need("x", x.len(), total)?;
        need("dy", dy.len(), total)?;
        need("mean", mean.len(), rows)?;
        need("rstd", rstd.len(), rows)?;
        let plan = launch::layer_norm_bwd(T::DTYPE, rows, cols, self.sms);
        let mut workspace = vec![0u64; plan.workspace_bytes.div_ceil(8)];
        let p = LayerNormBwdParams {
            x: x.as_ptr() as u64,
            dy: dy.as_ptr() as u64,
            dx: opt_ptr_mut(&mut grads.dx, "dx", total)?,
            mean: mean.as_ptr() as u64,
            rstd: rstd.as_ptr() as u64,
            weight: opt_ptr(weight, "weight", cols)?,
            grad_weight: opt_ptr_mut(&mut grads.grad_weight, "grad_weight", cols)?,
            grad_bias: opt_ptr_mut(&mut grads.grad_bias, "grad_bias", cols)?,
            workspace: workspace.as_mut_ptr() as u64,
            rows: rows as i64,
            cols: cols as i64,
            partials: plan.partials as i64,
            accumulate: grads.accumulate as i32,
            reserved: 0,
        };
        // SAFETY: every address points into a live slice or vector checked or sized above
        // (x, dy, dx: rows·cols; mean, rstd: rows; weight and gradients: cols; workspace from
        // the same plan the launch uses); the emulated launches complete before returning.
        unsafe { kernels::layer_norm_bwd(self, T::DTYPE, &p) }
    }

    /// BatchNorm backward: `training` with the saved (mean, rstd) per channel, otherwise with
    /// the running (mean, var) and `eps`. Fails if a ticket counter is left non-zero.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_backward<T: Element>(
        &self,
        order: ChannelOrder,
        x: &[T],
        dy: &[T],
        mean: &[T::Compute],
        rstd_or_var: &[T::Compute],
        weight: Option<&[T::Compute]>,
        (n, c, s): (usize, usize, usize),
        training: bool,
        eps: f64,
        mut grads: EmuGrads<'_, T, T::Compute>,
    ) -> Result<()> {
        self.check()?;
        for (name, v) in [("n", n), ("c", c), ("s", s)] {
            positive(name, v)?;
        }
        let total = product(&[n, c, s])?;
        need("x", x.len(), total)?;
        need("dy", dy.len(), total)?;
        need("mean", mean.len(), c)?;
        need("rstd_or_var", rstd_or_var.len(), c)?;
        let plan = launch::batch_norm_bwd(T::DTYPE, order, n, c, s, self.sms);
        let mut workspace = vec![0u64; plan.workspace_bytes.div_ceil(8)];
        let mut counters = vec![0u32; plan.counters];
        let p = NormBwdParams {
            x: x.as_ptr() as u64,
            dy: dy.as_ptr() as u64,
            dx: opt_ptr_mut(&mut grads.dx, "dx", total)?,
            mean: mean.as_ptr() as u64,
            rstd_or_var: rstd_or_var.as_ptr() as u64,
            weight: opt_ptr(weight, "weight", c)?,
            grad_weight: opt_ptr_mut(&mut grads.grad_weight, "grad_weight", c)?,
            grad_bias: opt_ptr_mut(&mut grads.grad_bias, "grad_bias", c)?,
            workspace: workspace.as_mut_ptr() as u64,
            counters: counters.as_mut_ptr() as u64,
            n: n as i64,
            c: c as i64,
            s: s as i64,
            groups: c as i64,
            splits: plan.splits as i64,
            eps,
            training: training as i32,
            accumulate: grads.accumulate as i32,
            recover: training as i32,
            reserved: 0,
        };
        // SAFETY: addresses point into live slices and vectors checked or sized above (x, dy,
        // dx: n·c·s; per-channel buffers: c; workspace and zeroed counters from the same plan
        // the launches use); the emulated launches complete before returning.
        unsafe { kernels::batch_norm_bwd(self, T::DTYPE, order, &p)? };
        counters_reset(&counters)
    }

    /// GroupNorm backward (InstanceNorm: groups = c) from the saved (mean, rstd) per
    /// (n, group). Fails if the ticket counter is left non-zero.
    #[allow(clippy::too_many_arguments)]
    pub fn group_norm_backward<T: Element>(
        &self,
        order: ChannelOrder,
        x: &[T],
        dy: &[T],
        mean: &[T::Compute],
        rstd: &[T::Compute],
        weight: Option<&[T::Compute]>,
        (n, c, s): (usize, usize, usize),
        groups: usize,
        mut grads: EmuGrads<'_, T, T::Compute>,
    ) -> Result<()> {
        self.check()?;
        for (name, v) in [("n", n), ("c", c), ("s", s), ("groups", groups)] {
            positive(name, v)?;
        }
        if c % groups != 0 {
            return Err(Error::invalid(
                OP,
                "groups",
                "a divisor of c",
                format!("{groups}"),
            ));
        }
        let total = product(&[n, c, s])?;
        need("x", x.len(), total)?;
        need("dy", dy.len(), total)?;
        need("mean", mean.len(), n * groups)?;
        need("rstd", rstd.len(), n * groups)?;
        let plan = launch::group_norm_bwd(T::DTYPE, order, n, c, groups, self.sms);
        let mut workspace = vec![0u64; plan.workspace_bytes.div_ceil(8)];
        let mut counters = vec![0u32; plan.counters];
        let p = NormBwdParams {
            x: x.as_ptr() as u64,
            dy: dy.as_ptr() as u64,
            dx: opt_ptr_mut(&mut grads.dx, "dx", total)?,
            mean: mean.as_ptr() as u64,
            rstd_or_var: rstd.as_ptr() as u64,
            weight: opt_ptr(weight, "weight", c)?,
            grad_weight: opt_ptr_mut(&mut grads.grad_weight, "grad_weight", c)?,
            grad_bias: opt_ptr_mut(&mut grads.grad_bias, "grad_bias", c)?,
            workspace: workspace.as_mut_ptr() as u64,
            counters: counters.as_mut_ptr() as u64,
            n: n as i64,
            c: c as i64,
            s: s as i64,
            groups: groups as i64,
            splits: 1,
            eps: 0.0,
            training: 1,
            accumulate: grads.accumulate as i32,
            recover: 1,
            reserved: 0,
        };
        // SAFETY: addresses point into live slices and vectors checked or sized above (x, dy,
        // dx: n·c·s; mean, rstd: n·groups; per-channel buffers: c; workspace and the zeroed
        // counter from the same plan the launch uses); the launch completes before returning.
        unsafe { kernels::group_norm_bwd(self, T::DTYPE, order, &p)? };
        counters_reset(&counters)
    }

    /// LocalResponseNorm backward.
    #[allow(clippy::too_many_arguments)]
    pub fn lrn_backward<T: Element>(
        &self,
        order: ChannelOrder,
        x: &[T],
        dy: &[T],
        dx: &mut [T],
        (n, c, s): (usize, usize, usize),
        size: usize,
        alpha: f64,
        beta: f64,
        k: f64,
    ) -> Result<()> {
        self.check()?;
        for (name, v) in [("n", n), ("c", c), ("s", s), ("size", size)] {
            positive(name, v)?;
        }
        let total = product(&[n, c, s])?;
        need("x", x.len(), total)?;
        need("dy", dy.len(), total)?;
        need("dx", dx.len(), total)?;
        let p = LrnBwdParams {
            x: x.as_ptr() as u64,
            dy: dy.as_ptr() as u64,
            dx: dx.as_mut_ptr() as u64,
            n: n as i64,
            c: c as i64,
            s: s as i64,
            size: size as i64,
            alpha,
            beta,
            k,
        };
        // SAFETY: x, dy and the exclusive dx are live slices of at least n·c·s elements
        // (checked above); the emulated launch completes before returning.
        unsafe { kernels::lrn_bwd(self, T::DTYPE, order, &p) }
    }
}
