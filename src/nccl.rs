//! SyncBatchNorm over NCCL (feature `nccl`): [`NcclCommunicator`] implements
//! [`Communicator`] with `ncclAllGather` / `ncclAllReduce` on a [`CudaDevice`]'s stream.
//!
//! * **Borrowing the caller's communicator.** [`NcclCommunicator::from_raw`] wraps an
//!   `ncclComm_t` the application created (and will destroy): normkit never destroys it.
//!   [`NcclCommunicator::init_all`] (one process, one rank per GPU) and
//!   [`NcclCommunicator::init_rank`] (from an [`NcclUniqueId`]) create communicators that
//!   normkit owns and destroys on drop.
//! * **Host payloads.** SyncBatchNorm's payloads are a few host doubles per step. Each
//!   collective uploads them to device memory, enqueues the NCCL call on the device's stream,
//!   downloads the result and synchronises that stream: the host wait is inherent (the CPU
//!   needs the values before it can go on), and costs one stream round trip per collective.
//!   Everything queued earlier on the same stream is waited for as well.
//! * **Results are identical on every rank**: all-gather copies; NCCL's all-reduce computes
//!   each element's sum once and broadcasts it.
//! * **Errors, not panics.** An `ncclResult_t` other than `ncclSuccess` is an
//!   [`ErrorKind::Communication`] error with op `nccl`, naming the NCCL call and NCCL's
//!   message; a missing library or device is [`ErrorKind::DeviceUnavailable`]. The calls run
//!   inside `catch_unwind` as well (cudarc panics on a partial driver).
//!
//! # Finding libnccl
//!
//! cudarc's NCCL loader only tries `libnccl.so` and `libnccl.so.{13,12,11,10,9,1}`, not the
//! SONAME `libnccl.so.2` that the runtime package and the PyPI wheels ship, so normkit loads
//! libnccl itself (cudarc's `nccl` feature supplies the bindgen'd types). The first that loads
//! with every symbol normkit needs wins, and stays loaded for the process lifetime:
//! 1. [`load_library`] called by the application (e.g. with the copy PyTorch uses);
//! 2. `NORMKIT_NCCL_PATH`: the library file itself, or a directory holding `libnccl.so.2`;
//! 3. `libnccl.so.2`, then `libnccl.so`, through the dynamic loader (`LD_LIBRARY_PATH`,
//!    RUNPATH, ld.so.cache). A libnccl already loaded in the process (by PyTorch, say) is
//!    found here by its SONAME, so a borrowed communicator and normkit use the same copy;
//! 4. `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`, the PyPI wheel layout
//!    `nvidia/nccl/lib` under `./.cuda-deps` and under the `site-packages` of `$VIRTUAL_ENV`
//!    and `$CONDA_PREFIX`.
//!
//! A failed search is an error listing every place tried; it is retried on the next call.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cudarc::nccl::sys::{ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};

use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::libsearch;
use crate::backend::cuda::probe::panic_text;
use crate::comm::Communicator;
use crate::error::{Error, ErrorKind, Result};

const OP: &str = "nccl";

/// `ncclResult_t` as returned by the library: an int, not cudarc's Rust enum, so that a value
/// newer than the bindings is reported instead of being undefined behaviour.
type Status = c_int;
const SUCCESS: Status = 0;
const IN_PROGRESS: Status = 7;
type Stream = *mut c_void;

/// The libnccl functions normkit calls, resolved once.
struct Api {
    path: String,
    get_version: unsafe extern "C" fn(*mut c_int) -> Status,
    get_error_string: unsafe extern "C" fn(Status) -> *const c_char,
    get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> Status,
    comm_init_rank: unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> Status,
    comm_init_all: unsafe extern "C" fn(*mut ncclComm_t, c_int, *const c_int) -> Status,
    comm_destroy: unsafe extern "C" fn(ncclComm_t) -> Status,
    comm_count: unsafe extern "C" fn(ncclComm_t, *mut c_int) -> Status,
    comm_user_rank: unsafe extern "C" fn(ncclComm_t, *mut c_int) -> Status,
    comm_cu_device: unsafe extern "C" fn(ncclComm_t, *mut c_int) -> Status,
    comm_get_async_error: unsafe extern "C" fn(ncclComm_t, *mut Status) -> Status,
    all_gather: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        ncclComm_t,
        Stream,
    ) -> Status,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        ncclRedOp_t,
        ncclComm_t,
        Stream,
    ) -> Status,
    /// Keeps the library mapped while the function pointers above are in use (forever: the
    /// `Api` lives in a static).
    _lib: libloading::Library,
}

static API: OnceLock<Api> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// Opens `name` (a path, or a bare name for the dynamic loader) and resolves every symbol.
fn open(name: &Path) -> std::result::Result<Api, String> {
    // SAFETY: loading libnccl runs only its ELF initialisers, which have no preconditions.
    let lib = unsafe { libloading::Library::new(name) }.map_err(|e| dl_error(&e))?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the field this initialises has the signature of `$name` in nccl.h
            // (NCCL ≥ 2.4, unchanged since); the library outlives the pointer (`_lib`).
            *unsafe { lib.get($name) }
                .map_err(|e| format!("{}: missing {}: {}", name.display(), $name, dl_error(&e)))?
        };
    }
    let mut api = Api {
        path: name.display().to_string(),
        get_version: sym!("ncclGetVersion"),
        get_error_string: sym!("ncclGetErrorString"),
        get_unique_id: sym!("ncclGetUniqueId"),
        comm_init_rank: sym!("ncclCommInitRank"),
        comm_init_all: sym!("ncclCommInitAll"),
        comm_destroy: sym!("ncclCommDestroy"),
        comm_count: sym!("ncclCommCount"),
        comm_user_rank: sym!("ncclCommUserRank"),
        comm_cu_device: sym!("ncclCommCuDevice"),
        comm_get_async_error: sym!("ncclCommGetAsyncError"),
        all_gather: sym!("ncclAllGather"),
        all_reduce: sym!("ncclAllReduce"),
        _lib: lib,
    };
    if let Some(file) = file_of(api.get_version as *const c_void) {
        api.path = file;
    }
    Ok(api)
}

/// libloading's message with the loader's reason (`dlerror()`), which it keeps as the source.
fn dl_error(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(why) => why.to_string(),
        None => e.to_string(),
    }
}

/// The file the dynamic loader mapped `addr` from (the real path behind a bare name).
fn file_of(addr: *const c_void) -> Option<String> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr only inspects the address and fills `info`; `dli_fname`, when set, is a
    // NUL-terminated string owned by the loader, copied out before the library could unload.
    unsafe {
        if libc::dladdr(addr, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        Some(
            CStr::from_ptr(info.dli_fname)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

const NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

fn candidates_in(dir: &Path) -> Vec<PathBuf> {
    NAMES.iter().map(|n| dir.join(n)).collect()
}

/// `<prefix>/lib/python3.*/site-packages/nvidia/nccl/lib` for every Python under `prefix`.
fn wheel_dirs(prefix: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(prefix.join("lib")) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/nvidia/nccl/lib"))
        .collect();
    dirs.sort();
    dirs
}

fn search() -> std::result::Result<Api, String> {
    if let Some(r) = libsearch::from_env("NORMKIT_NCCL_PATH", candidates_in, open) {
        return r;
    }
    let mut tried = Vec::new();
    for name in NAMES {
        match open(Path::new(name)) {
            Ok(api) => return Ok(api),
            Err(e) => tried.push(e),
        }
    }
    let mut dirs = libsearch::toolkit_dirs(&["nvidia/nccl/lib"]);
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.extend(wheel_dirs(Path::new(&v)));
        }
    }
    for d in dirs {
        for f in candidates_in(&d) {
            if f.is_file() {
                match open(&f) {
                    Ok(api) => return Ok(api),
                    Err(e) => tried.push(e),
                }
            }
        }
        tried.push(format!("{}: no libnccl", d.display()));
    }
    Err(format!("libnccl not found; tried: {}", tried.join("; ")))
}

fn unavailable(reason: String) -> Error {
    Error::new(
        ErrorKind::DeviceUnavailable,
        OP,
        "libnccl",
        "an NCCL library (libnccl.so.2 on the loader's path, or set NORMKIT_NCCL_PATH)",
        reason,
    )
}

fn lock_loading() -> std::sync::MutexGuard<'static, ()> {
    LOADING.lock().unwrap_or_else(|p| p.into_inner())
}

/// The loaded library, searching for it (see the module docs) if none is loaded yet.
fn api() -> Result<&'static Api> {
    if let Some(a) = API.get() {
        return Ok(a);
    }
    let _guard = lock_loading();
    if let Some(a) = API.get() {
        return Ok(a);
    }
    let api = search().map_err(unavailable)?;
    Ok(API.get_or_init(|| api))
}

/// Loads libnccl from `path` (before normkit searches for it), e.g. the copy an embedding
/// application or PyTorch already uses; returns the file it was mapped from. Loading the same
/// library again is fine; a different one once a library is loaded is an
/// [`ErrorKind::InvalidArgument`] error (communicators of one copy are invalid in another).
pub fn load_library(path: impl AsRef<Path>) -> Result<&'static str> {
    let path = path.as_ref();
    let _guard = lock_loading();
    let api = open(path).map_err(unavailable)?;
    match API.get() {
        None => Ok(API.get_or_init(|| api).path.as_str()),
        Some(loaded) if std::ptr::fn_addr_eq(loaded.get_version, api.get_version) => {
            Ok(loaded.path.as_str())
        }
        Some(loaded) => Err(Error::invalid(
            "nccl::load_library",
            "path",
            format!("the libnccl already loaded ({})", loaded.path),
            path.display().to_string(),
        )),
    }
}

/// The file libnccl was loaded from (searching for it if needed).
pub fn library_path() -> Result<&'static str> {
    Ok(api()?.path.as_str())
}

/// NCCL's version `(major, minor, patch)` (searching for the library if needed).
pub fn version() -> Result<(u32, u32, u32)> {
    let api = api()?;
    let mut code: c_int = 0;
    // SAFETY: ncclGetVersion writes one int through a valid pointer.
    check(api, "ncclGetVersion", unsafe {
        (api.get_version)(&mut code)
    })?;
    Ok(decode_version(code.max(0) as u32))
}

/// NCCL_VERSION_CODE is X·10000 + Y·100 + Z since 2.9, X·1000 + Y·100 + Z before.
fn decode_version(code: u32) -> (u32, u32, u32) {
    if code >= 10000 {
        (code / 10000, code / 100 % 100, code % 100)
    } else {
        (code / 1000, code / 100 % 10, code % 100)
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        0 => "ncclSuccess",
        1 => "ncclUnhandledCudaError",
        2 => "ncclSystemError",
        3 => "ncclInternalError",
        4 => "ncclInvalidArgument",
        5 => "ncclInvalidUsage",
        6 => "ncclRemoteError",
        7 => "ncclInProgress",
        _ => "an unknown ncclResult_t",
    }
}

/// `Ok` for ncclSuccess, else a Communication error naming `call` and NCCL's message.
fn check(api: &Api, call: &str, s: Status) -> Result<()> {
    if s == SUCCESS {
        return Ok(());
    }
    // SAFETY: ncclGetErrorString accepts any value and returns a static NUL-terminated string
    // (or null, handled).
    let text = unsafe {
        let p = (api.get_error_string)(s);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Err(Error::new(
        ErrorKind::Communication,
        OP,
        call,
        "ncclSuccess",
        format!("{} ({s}): {text}", status_name(s)),
    ))
}

/// Relabels an error of the staging (CUDA copies) as a Communication error of `call`.
fn staging(call: &str, e: Error) -> Error {
    Error::new(
        ErrorKind::Communication,
        OP,
        call,
        e.expected,
        format!("{} ({}): {}", e.operand, e.op, e.got),
    )
}

/// Runs `f` under `catch_unwind`, turning a panic (cudarc on a partial driver) into an error.
fn guarded<T>(call: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(Error::new(
            ErrorKind::Communication,
            OP,
            call,
            "no panic",
            format!("a panic: {}", panic_text(&p)),
        ))
    })
}

/// The id that every rank of a new communicator passes to [`NcclCommunicator::init_rank`]:
/// create it on one rank and send its bytes ([`NcclUniqueId::as_bytes`]) to the others out of
/// band (MPI, a file, a TCP store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NcclUniqueId(ncclUniqueId);

impl NcclUniqueId {
    /// Size of the id in bytes (`NCCL_UNIQUE_ID_BYTES`).
    pub const BYTES: usize = 128;

    /// A fresh id (`ncclGetUniqueId`; sets up NCCL's bootstrap network).
    pub fn new() -> Result<NcclUniqueId> {
        let api = api()?;
        guarded("ncclGetUniqueId", || {
            let mut id = ncclUniqueId { internal: [0; 128] };
            // SAFETY: ncclGetUniqueId writes one ncclUniqueId through a valid pointer.
            check(api, "ncclGetUniqueId", unsafe {
                (api.get_unique_id)(&mut id)
            })?;
            Ok(NcclUniqueId(id))
        })
    }

    pub fn as_bytes(&self) -> [u8; Self::BYTES] {
        self.0.internal.map(|c| c as u8)
    }

    pub fn from_bytes(bytes: [u8; Self::BYTES]) -> NcclUniqueId {
        NcclUniqueId(ncclUniqueId {
            internal: bytes.map(|b| b as c_char),
        })
    }
}

/// NCCL runs on GPUs only: the host emulation of a `CudaDevice` is refused.
fn real_gpu(op: &str, device: &CudaDevice) -> Result<()> {
    if device.is_emulated() {
        return Err(Error::new(
            ErrorKind::DeviceUnavailable,
            op,
            "device",
            "a GPU (CudaDevice::new or with_borrowed_stream)",
            "the host emulation (CudaDevice::emulated)",
        ));
    }
    Ok(())
}

/// One rank of an NCCL communicator, as a SyncBatchNorm [`Communicator`]. See the module docs.
///
/// Collectives from several threads on one `NcclCommunicator` are serialised by a lock (an
/// NCCL communicator must not be used concurrently).
pub struct NcclCommunicator {
    api: &'static Api,
    comm: ncclComm_t,
    owned: bool,
    device: CudaDevice,
    rank: usize,
    size: usize,
    lock: Mutex<()>,
}

// SAFETY: the communicator handle is only used under `lock` (or in `drop`, with `&mut self`),
// and NCCL communicators may be used from any thread as long as calls are not concurrent;
// `CudaDevice` rebinds its context on the calling thread before every use.
unsafe impl Send for NcclCommunicator {}
// SAFETY: as for `Send`: every `&self` use of `comm` after construction takes `lock`.
unsafe impl Sync for NcclCommunicator {}

impl std::fmt::Debug for NcclCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCommunicator")
            .field("rank", &self.rank)
            .field("world_size", &self.size)
            .field("device", &self.device.ordinal())
            .field("owned", &self.owned)
            .finish()
    }
}

impl NcclCommunicator {
    /// Borrows the caller's NCCL communicator `comm` (an `ncclComm_t`), running its
    /// collectives on `device`'s stream. normkit never destroys `comm`. Rank and world size
    /// come from `ncclCommUserRank` / `ncclCommCount`; the communicator's device must be
    /// `device` (checked with `ncclCommCuDevice`).
    ///
    /// # Safety
    /// * `comm` is a valid, initialised communicator, created by the same libnccl that normkit
    ///   loads (see the module docs: a copy already loaded in the process is found by its
    ///   SONAME; pass its path to [`load_library`] when in doubt);
    /// * it stays valid (not destroyed, finalised or aborted) until this value and every
    ///   module holding it are dropped;
    /// * no other thread makes NCCL calls on `comm` while normkit's collectives run (NCCL
    ///   communicators are not thread-safe), and every rank makes normkit's collectives in the
    ///   same order relative to its own collectives on `comm`.
    pub unsafe fn from_raw(comm: *mut c_void, device: CudaDevice) -> Result<NcclCommunicator> {
        if comm.is_null() {
            return Err(Error::invalid(
                "NcclCommunicator::from_raw",
                "comm",
                "an initialised ncclComm_t",
                "null",
            ));
        }
        real_gpu("NcclCommunicator::from_raw", &device)?;
        let api = api()?;
        Self::wrap(api, comm.cast(), device, false)
    }

    /// Reads rank, size and device of `comm` and checks the device. On error `comm` is left
    /// alone (the caller destroys one it created).
    fn wrap(
        api: &'static Api,
        comm: ncclComm_t,
        device: CudaDevice,
        owned: bool,
    ) -> Result<NcclCommunicator> {
        let mut me = NcclCommunicator {
            api,
            comm,
            owned: false, // until every check passed: an early return must not destroy it
            device,
            rank: 0,
            size: 0,
            lock: Mutex::new(()),
        };
        let query = |call: &str, f: unsafe extern "C" fn(ncclComm_t, *mut c_int) -> Status| {
            let mut v: c_int = -1;
            // SAFETY: `comm` is a valid communicator (this function's callers' contracts);
            // the query writes one int through a valid pointer.
            check(api, call, unsafe { f(comm, &mut v) })?;
            usize::try_from(v).map_err(|_| {
                Error::new(
                    ErrorKind::Communication,
                    OP,
                    call,
                    "a non-negative value",
                    v.to_string(),
                )
            })
        };
        let size = query("ncclCommCount", api.comm_count)?;
        let rank = query("ncclCommUserRank", api.comm_user_rank)?;
        let dev = query("ncclCommCuDevice", api.comm_cu_device)?;
        if dev != me.device.ordinal() {
            return Err(Error::new(
                ErrorKind::DeviceMismatch,
                "NcclCommunicator",
                "device",
                format!("the communicator's device cuda:{dev}"),
                format!("cuda:{}", me.device.ordinal()),
            ));
        }
        (me.rank, me.size, me.owned) = (rank, size, owned);
        Ok(me)
    }

    /// One communicator per device for a single process (`ncclCommInitAll`), rank `i` on
    /// `devices[i]`; normkit owns and destroys them. Move each to the thread that drives its
    /// device. NCCL refuses two ranks on the same GPU.
    pub fn init_all(devices: &[CudaDevice]) -> Result<Vec<NcclCommunicator>> {
        devices
            .iter()
            .try_for_each(|d| real_gpu("NcclCommunicator::init_all", d))?;
        let api = api()?;
        let ordinals: Vec<c_int> = devices.iter().map(|d| d.ordinal() as c_int).collect();
        let n = c_int::try_from(devices.len()).map_err(|_| {
            Error::invalid(
                "NcclCommunicator::init_all",
                "devices",
                "fewer than 2^31 devices",
                devices.len().to_string(),
            )
        })?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let comms = guarded("ncclCommInitAll", || {
            let mut comms: Vec<ncclComm_t> = vec![std::ptr::null_mut(); devices.len()];
            // SAFETY: `comms` and `ordinals` hold `n` elements each; NCCL writes `n` handles.
            check(api, "ncclCommInitAll", unsafe {
                (api.comm_init_all)(comms.as_mut_ptr(), n, ordinals.as_ptr())
            })?;
            Ok(comms)
        })?;
        // Wrap every handle first, so that each is destroyed on any error.
        let mut out = Vec::with_capacity(comms.len());
        let mut first_err = None;
        for (comm, dev) in comms.into_iter().zip(devices) {
            match Self::wrap(api, comm, dev.clone(), true) {
                Ok(c) => out.push(c),
                Err(e) => {
                    // SAFETY: `comm` was just created by ncclCommInitAll and is destroyed
                    // once, here (it was not wrapped).
                    let _ = unsafe { (api.comm_destroy)(comm) };
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Rank `rank` of a `world_size`-rank communicator on `device` (`ncclCommInitRank`):
    /// every rank calls this with the same `id`, concurrently (each call waits for all
    /// ranks). normkit owns and destroys the communicator.
    pub fn init_rank(
        device: CudaDevice,
        id: &NcclUniqueId,
        world_size: usize,
        rank: usize,
    ) -> Result<NcclCommunicator> {
        let op = "NcclCommunicator::init_rank";
        let n = c_int::try_from(world_size)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::invalid(op, "world_size", "1..2^31", world_size.to_string()))?;
        if rank >= world_size {
            return Err(Error::invalid(
                op,
                "rank",
                format!("0..{world_size}"),
                rank.to_string(),
            ));
        }
        real_gpu(op, &device)?;
        let api = api()?;
        // binds the device's primary context to this thread (and waits for its stream, which
        // is harmless here), so that NCCL sees this device as the current one
        device
            .synchronize()
            .map_err(|e| staging("ncclCommInitRank", e))?;
        let comm = guarded("ncclCommInitRank", || {
            let mut comm: ncclComm_t = std::ptr::null_mut();
            // SAFETY: NCCL writes one handle into `comm`; the id is passed by value; the
            // device's context is current, so NCCL uses that device.
            check(api, "ncclCommInitRank", unsafe {
                (api.comm_init_rank)(&mut comm, n, id.0, rank as c_int)
            })?;
            Ok(comm)
        })?;
        Self::wrap(api, comm, device, true).inspect_err(|_| {
            // SAFETY: `comm` was just created above and was not wrapped; destroyed once.
            let _ = unsafe { (api.comm_destroy)(comm) };
        })
    }

    /// The device whose stream the collectives run on.
    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// The raw `ncclComm_t`.
    pub fn as_raw(&self) -> *mut c_void {
        self.comm.cast()
    }

    /// Whether normkit destroys the communicator on drop (`init_all` / `init_rank`).
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    /// Waits while a non-blocking communicator reports `ncclInProgress`, then checks its
    /// asynchronous error state.
    fn settle(&self, call: &str, mut status: Status) -> Result<()> {
        while status == IN_PROGRESS {
            std::thread::yield_now();
            let mut state = SUCCESS;
            // SAFETY: `comm` is valid (constructors' contracts); one status is written.
            check(self.api, "ncclCommGetAsyncError", unsafe {
                (self.api.comm_get_async_error)(self.comm, &mut state)
            })?;
            status = state;
        }
        check(self.api, call, status)
    }

    /// Uploads `send`, runs `enqueue(send_ptr, recv_ptr)` on the stream, downloads
    /// `recv.len()` values into `recv` (synchronising the stream) and checks NCCL's
    /// asynchronous error state.
    fn run(
        &self,
        call: &'static str,
        send: &[f64],
        recv: &mut [f64],
        enqueue: impl FnOnce(u64, u64, Stream) -> Status,
    ) -> Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        guarded(call, || {
            let dev = &self.device;
            let sbuf = dev.upload(send).map_err(|e| staging(call, e))?;
            let rbuf = dev
                .alloc(crate::DType::F64, recv.len())
                .map_err(|e| staging(call, e))?;
            self.settle(call, enqueue(sbuf.ptr(), rbuf.ptr(), dev.stream()))?;
            let out = rbuf.download::<f64>().map_err(|e| staging(call, e))?;
            self.settle(call, IN_PROGRESS)?;
            recv.copy_from_slice(&out);
            Ok(())
        })
    }
}

impl Communicator for NcclCommunicator {
    fn world_size(&self) -> usize {
        self.size
    }

    fn rank(&self) -> usize {
        self.rank
    }

    /// `ncclAllGather` of `send.len()` doubles. NCCL cannot check that every rank passes the
    /// same length (a mismatch hangs or garbles, as with MPI); `recv`'s length is checked.
    fn all_gather(&self, send: &[f64], recv: &mut [f64]) -> Result<()> {
        let call = "ncclAllGather";
        if Some(recv.len()) != send.len().checked_mul(self.size) {
            return Err(Error::new(
                ErrorKind::Communication,
                OP,
                call,
                format!(
                    "recv of world size {} × payload {} values",
                    self.size,
                    send.len()
                ),
                format!("{} values", recv.len()),
            ));
        }
        if send.is_empty() {
            return Ok(());
        }
        let (api, comm, count) = (self.api, self.comm, send.len());
        self.run(call, send, recv, |s, r, stream| {
            // SAFETY: `s` holds `count` doubles and `r` `count · world size` doubles of the
            // communicator's device (allocated on its stream just before); `comm` is valid
            // (constructors' contracts) and used under the lock; `stream` is the device's.
            unsafe {
                (api.all_gather)(
                    s as *const c_void,
                    r as *mut c_void,
                    count,
                    ncclDataType_t::ncclFloat64,
                    comm,
                    stream,
                )
            }
        })
    }

    /// `ncclAllReduce` (`ncclSum`) of `data.len()` doubles.
    fn all_reduce_sum(&self, data: &mut [f64]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let (api, comm, count) = (self.api, self.comm, data.len());
        let send = data.to_vec();
        self.run("ncclAllReduce", &send, data, |s, r, stream| {
            // SAFETY: `s` and `r` each hold `count` doubles of the communicator's device;
            // `comm` is valid and used under the lock; `stream` is the device's.
            unsafe {
                (api.all_reduce)(
                    s as *const c_void,
                    r as *mut c_void,
                    count,
                    ncclDataType_t::ncclFloat64,
                    ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            }
        })
    }
}

impl Drop for NcclCommunicator {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: normkit created this communicator (init_all / init_rank) and destroys
            // it once; `&mut self` excludes concurrent use. Errors cannot be reported here.
            let _ = unsafe { (self.api.comm_destroy)(self.comm) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_codes_decode_both_schemes() {
        assert_eq!(decode_version(23007), (2, 30, 7));
        assert_eq!(decode_version(2804), (2, 8, 4));
    }

    #[test]
    fn unique_id_bytes_round_trip() {
        let mut b = [0u8; NcclUniqueId::BYTES];
        b.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i * 7) as u8);
        assert_eq!(NcclUniqueId::from_bytes(b).as_bytes(), b);
        assert_eq!(std::mem::size_of::<ncclUniqueId>(), NcclUniqueId::BYTES);
    }

    #[test]
    fn status_names_cover_nccl_results() {
        assert_eq!(status_name(5), "ncclInvalidUsage");
        assert_eq!(status_name(42), "an unknown ncclResult_t");
    }
}
