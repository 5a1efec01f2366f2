//! Status codes, the thread-local last error, and the panic boundary every export runs in.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::{Error, ErrorKind};

/// The result of every fallible normkit function. `NORMKIT_STATUS_OK` (0) means success.
///
/// Numbers are stable: they are grouped by kind (1xx arguments, 2xx module state, 3xx devices,
/// 9xx internal), only ever appended, and never renumbered or reused. Treat an unknown value as
/// a failure. After any failure, normkit_last_error_message() says which function, which
/// argument and why.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum normkit_status_t {
    /// Success.
    NORMKIT_STATUS_OK = 0,
    /// An argument's value is out of its domain (an unknown enum value, eps < 0, an ndim
    /// outside [0, NORMKIT_MAX_DIMS], a negative dim, an unknown state name, ...).
    NORMKIT_STATUS_INVALID_ARGUMENT = 100,
    /// A required pointer is NULL (also a NULL tensor data pointer for a non-empty tensor).
    NORMKIT_STATUS_NULL_POINTER = 101,
    /// A tensor's shape or rank disagrees with the op, the module's configuration or another
    /// tensor.
    NORMKIT_STATUS_SHAPE_MISMATCH = 102,
    /// A dtype (code, bits, lanes) or dtype combination normkit does not support.
    NORMKIT_STATUS_UNSUPPORTED_DTYPE = 103,
    /// Strides normkit does not support: negative strides, an output whose elements share
    /// memory, or an output that partially overlaps another tensor.
    NORMKIT_STATUS_UNSUPPORTED_LAYOUT = 104,
    /// A caller buffer is too small (normkit_last_error_copy).
    NORMKIT_STATUS_BUFFER_TOO_SMALL = 105,
    /// A struct's struct_size is smaller than this library needs (initialise structs with
    /// their _init function).
    NORMKIT_STATUS_STRUCT_SIZE = 106,
    /// The abi_version in a config differs from this library's NORMKIT_ABI_VERSION.
    NORMKIT_STATUS_ABI_MISMATCH = 107,
    /// An element count, byte size or offset overflows.
    NORMKIT_STATUS_OVERFLOW = 108,
    /// A lazy module's state was read before its first input (or before it was loaded).
    NORMKIT_STATUS_NOT_INITIALIZED = 200,
    /// A parameter has no gradient yet: no normkit_module_backward since the module was
    /// created or since normkit_module_zero_grad.
    NORMKIT_STATUS_NO_GRADIENT = 201,
    /// A tensor lives on a device the context does not run on.
    NORMKIT_STATUS_DEVICE_MISMATCH = 300,
    /// The requested device is not available (no CUDA backend in this build, no driver, no
    /// such device).
    NORMKIT_STATUS_DEVICE_UNAVAILABLE = 301,
    /// A backend (driver, runtime compiler) failed.
    NORMKIT_STATUS_BACKEND = 302,
    /// A SyncBatchNorm communicator (collective) failed or ranks disagreed.
    NORMKIT_STATUS_COMMUNICATOR = 303,
    /// A bug in normkit: please report it with the last error message.
    NORMKIT_STATUS_INTERNAL = 900,
    /// normkit panicked; the panic was caught at the C boundary and its message is the last
    /// error. Objects passed to the failing call may be in an unspecified (but safe to
    /// destroy) state.
    NORMKIT_STATUS_PANIC = 901,
}

use normkit_status_t as S;

/// Every status with its number and static description (the source of
/// normkit_status_string and of the test that pins the numbers).
pub(crate) const STATUS_TABLE: [(normkit_status_t, i32, &std::ffi::CStr); 18] = [
    (S::NORMKIT_STATUS_OK, 0, c"success"),
    (S::NORMKIT_STATUS_INVALID_ARGUMENT, 100, c"invalid argument"),
    (S::NORMKIT_STATUS_NULL_POINTER, 101, c"NULL pointer"),
    (S::NORMKIT_STATUS_SHAPE_MISMATCH, 102, c"shape mismatch"),
    (
        S::NORMKIT_STATUS_UNSUPPORTED_DTYPE,
        103,
        c"unsupported dtype",
    ),
    (
        S::NORMKIT_STATUS_UNSUPPORTED_LAYOUT,
        104,
        c"unsupported layout",
    ),
    (S::NORMKIT_STATUS_BUFFER_TOO_SMALL, 105, c"buffer too small"),
    (S::NORMKIT_STATUS_STRUCT_SIZE, 106, c"struct_size too small"),
    (S::NORMKIT_STATUS_ABI_MISMATCH, 107, c"ABI version mismatch"),
    (S::NORMKIT_STATUS_OVERFLOW, 108, c"size overflow"),
    (
        S::NORMKIT_STATUS_NOT_INITIALIZED,
        200,
        c"lazy module not initialized",
    ),
    (S::NORMKIT_STATUS_NO_GRADIENT, 201, c"no gradient yet"),
    (S::NORMKIT_STATUS_DEVICE_MISMATCH, 300, c"device mismatch"),
    (
        S::NORMKIT_STATUS_DEVICE_UNAVAILABLE,
        301,
        c"device unavailable",
    ),
    (S::NORMKIT_STATUS_BACKEND, 302, c"backend error"),
    (S::NORMKIT_STATUS_COMMUNICATOR, 303, c"communicator error"),
    (S::NORMKIT_STATUS_INTERNAL, 900, c"internal error"),
    (S::NORMKIT_STATUS_PANIC, 901, c"panic inside normkit"),
];

pub(crate) fn status_text(code: i32) -> *const c_char {
    STATUS_TABLE
        .iter()
        .find(|(_, n, _)| *n == code)
        .map_or(c"unknown status".as_ptr(), |(_, _, s)| s.as_ptr())
}

/// A failure inside a C entry point: its status and a message naming the argument and reason
/// (the entry point's name is prefixed by the boundary).
#[derive(Debug)]
pub(crate) struct CapiError {
    pub status: normkit_status_t,
    pub message: String,
}

pub(crate) type CResult<T> = std::result::Result<T, CapiError>;

impl CapiError {
    pub fn new(status: normkit_status_t, message: impl Into<String>) -> Self {
        CapiError {
            status,
            message: message.into(),
        }
    }
    pub fn null(arg: &str) -> Self {
        Self::new(
            S::NORMKIT_STATUS_NULL_POINTER,
            format!("{arg}: must not be NULL"),
        )
    }
    pub fn invalid(arg: &str, why: impl std::fmt::Display) -> Self {
        Self::new(S::NORMKIT_STATUS_INVALID_ARGUMENT, format!("{arg}: {why}"))
    }
    pub fn internal(what: &str) -> Self {
        Self::new(
            S::NORMKIT_STATUS_INTERNAL,
            format!("internal error: {what}"),
        )
    }
}

/// The status a core [`ErrorKind`] maps to.
pub(crate) fn status_of(kind: ErrorKind) -> normkit_status_t {
    match kind {
        ErrorKind::InvalidArgument => S::NORMKIT_STATUS_INVALID_ARGUMENT,
        ErrorKind::ShapeMismatch => S::NORMKIT_STATUS_SHAPE_MISMATCH,
        ErrorKind::UnsupportedDType => S::NORMKIT_STATUS_UNSUPPORTED_DTYPE,
        ErrorKind::UnsupportedLayout => S::NORMKIT_STATUS_UNSUPPORTED_LAYOUT,
        ErrorKind::BufferTooSmall => S::NORMKIT_STATUS_BUFFER_TOO_SMALL,
        ErrorKind::Uninitialized => S::NORMKIT_STATUS_NOT_INITIALIZED,
        ErrorKind::DeviceUnavailable => S::NORMKIT_STATUS_DEVICE_UNAVAILABLE,
        ErrorKind::DeviceMismatch => S::NORMKIT_STATUS_DEVICE_MISMATCH,
        ErrorKind::Overflow => S::NORMKIT_STATUS_OVERFLOW,
        ErrorKind::Backend => S::NORMKIT_STATUS_BACKEND,
        ErrorKind::Communication => S::NORMKIT_STATUS_COMMUNICATOR,
    }
}

impl From<Error> for CapiError {
    fn from(e: Error) -> Self {
        CapiError::new(status_of(e.kind()), e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Stores `message` as this thread's last error (interior NULs are escaped).
pub(crate) fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

pub(crate) fn clear_last_error() {
    LAST_ERROR.with(|l| *l.borrow_mut() = CString::default());
}

/// Runs `f` with this thread's last error (NUL-terminated bytes).
pub(crate) fn with_last_error<R>(f: impl FnOnce(&CString) -> R) -> R {
    LAST_ERROR.with(|l| f(&l.borrow()))
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// The panic boundary of a fallible entry point: runs `f`, turns an error into its status and
/// last-error message (prefixed with `fname`), and a panic into `NORMKIT_STATUS_PANIC`.
pub(crate) fn run(fname: &'static str, f: impl FnOnce() -> CResult<()>) -> normkit_status_t {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => S::NORMKIT_STATUS_OK,
        Ok(Err(e)) => {
            set_last_error(&format!("{fname}: {}", e.message));
            e.status
        }
        Err(payload) => {
            set_last_error(&format!("{fname}: panic: {}", panic_text(&*payload)));
            S::NORMKIT_STATUS_PANIC
        }
    }
}

/// The panic boundary of an infallible entry point: a panic returns `default` and sets the
/// last error.
pub(crate) fn run_or<T>(fname: &'static str, default: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            set_last_error(&format!("{fname}: panic: {}", panic_text(&*payload)));
            default
        }
    }
}

/// Wraps the body of a fallible `extern "C"` function (returns `normkit_status_t`). The body
/// is a block evaluating to `CResult<()>`; the literal must be the function's name.
macro_rules! boundary {
    ($fname:literal, $body:block) => {
        $crate::capi::error::run($fname, move || -> $crate::capi::error::CResult<()> {
            $body
        })
    };
}

/// Wraps the body of an infallible `extern "C"` function: a panic returns `$default`.
macro_rules! boundary_or {
    ($fname:literal, $default:expr, $body:block) => {
        $crate::capi::error::run_or($fname, $default, move || $body)
    };
}

pub(crate) use {boundary, boundary_or};
