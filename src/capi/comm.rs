//! SyncBatchNorm's collectives from C: a callback table (`normkit_communicator_t`) wrapped as a
//! Rust [`Communicator`].
//!
//! The callbacks are called only during a normkit call that synchronises (a SyncBatchNorm
//! module's training forward/backward with world_size > 1, or normkit_sync_batch_norm_*), one
//! at a time, on the thread that made that call (plain MPI_Init, MPI_THREAD_SINGLE, is enough).

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::error::{CResult, CapiError, STATUS_TABLE, boundary, normkit_status_t};
use super::{read_struct, write_out};
use crate::comm::Communicator;
use crate::error::{Error, ErrorKind, Result};

/// The status a communicator callback returns: NORMKIT_STATUS_OK (0) for success, anything
/// else for failure. Received as a plain integer, so that any value a callback returns is well
/// defined on the Rust side; the header spells it normkit_status_t (cbindgen.toml renames it).
pub type normkit_callback_status_t = i32;

/// The process group of a SyncBatchNorm: this rank's place in it and the two collectives
/// normkit needs, implemented by the caller over MPI, NCCL, gloo, shared memory, ...
///
/// Initialise with normkit_communicator_init, then set every field. normkit copies the struct
/// (it keeps no pointer to it) but keeps `user_data` and calls the callbacks later: user_data
/// and whatever it points to must stay valid while a module holds the communicator (until
/// normkit_module_set_communicator(module, NULL) or normkit_module_destroy), or for the
/// duration of a functional call.
///
/// Every rank must make the same normkit calls in the same order (ranks with an empty local
/// batch included): each synchronising call makes exactly one collective per rank. A callback
/// that fails should fail on every rank (as MPI and NCCL collectives do); normkit then returns
/// NORMKIT_STATUS_COMMUNICATOR and leaves running statistics and counters unchanged. Callbacks
/// must not call normkit with the same module, and C++ callbacks must not throw.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_communicator_t {
    /// sizeof(normkit_communicator_t), set by normkit_communicator_init.
    pub struct_size: u32,
    /// Passed unchanged to both callbacks (e.g. an MPI_Comm* or an ncclComm_t wrapper).
    pub user_data: *mut c_void,
    /// Number of ranks (>= 1). Default 1.
    pub world_size: i32,
    /// This rank, 0 <= rank < world_size. Default 0.
    pub rank: i32,
    /// Required. Gathers `count` doubles from every rank into `recv` (world_size * count
    /// doubles in rank order: rank r's at recv + r * count), as MPI_Allgather(send, count,
    /// MPI_DOUBLE, recv, count, MPI_DOUBLE, comm) does; count (the same on every rank) is
    /// 2*C + 1 for a SyncBatchNorm forward. Returns NORMKIT_STATUS_OK, or any other value on
    /// failure (reported as NORMKIT_STATUS_COMMUNICATOR naming the callback and the value).
    pub all_gather: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            send: *const f64,
            recv: *mut f64,
            count: usize,
        ) -> normkit_callback_status_t,
    >,
    /// Required. Replaces the `count` doubles at `data` by their elementwise sum over all
    /// ranks, as MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_DOUBLE, MPI_SUM, comm) does;
    /// count is 2*C for a SyncBatchNorm backward. Returns as all_gather.
    pub all_reduce_sum: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            data: *mut f64,
            count: usize,
        ) -> normkit_callback_status_t,
    >,
}

impl Default for normkit_communicator_t {
    fn default() -> Self {
        normkit_communicator_t {
            struct_size: size_of::<Self>() as u32,
            user_data: std::ptr::null_mut(),
            world_size: 1,
            rank: 0,
            all_gather: None,
            all_reduce_sum: None,
        }
    }
}

/// Fills `comm` with a single-rank group (world_size 1, rank 0) and NULL callbacks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_communicator_init(
    comm: *mut normkit_communicator_t,
) -> normkit_status_t {
    boundary!("normkit_communicator_init", {
        // SAFETY: comm is NULL or writable (caller contract).
        unsafe { write_out("comm", comm, normkit_communicator_t::default()) }
    })
}

type GatherFn = unsafe extern "C" fn(*mut c_void, *const f64, *mut f64, usize) -> i32;
type ReduceFn = unsafe extern "C" fn(*mut c_void, *mut f64, usize) -> i32;

/// A validated copy of a caller's callback table.
pub(crate) struct CCommunicator {
    user_data: *mut c_void,
    world_size: usize,
    rank: usize,
    all_gather: GatherFn,
    all_reduce_sum: ReduceFn,
}

// SAFETY: the callbacks and user_data are called on the thread that made the normkit call,
// one call at a time (a module, and so its communicator, is used by one thread at a time, as
// the header documents); CCommunicator itself holds no Rust data that could race.
unsafe impl Send for CCommunicator {}
// SAFETY: as for Send: callers of one communicator are serialised by the module/call contract.
unsafe impl Sync for CCommunicator {}

impl CCommunicator {
    /// Validates and copies the table at `p` (`arg` names it in errors).
    ///
    /// # Safety
    /// `p` is NULL or points to at least struct_size readable bytes of a normkit_communicator_t.
    pub(crate) unsafe fn from_c(
        arg: &str,
        p: *const normkit_communicator_t,
    ) -> CResult<CCommunicator> {
        // SAFETY: forwarded contract.
        let t = unsafe { read_struct(arg, p) }?;
        let world_size = usize::try_from(t.world_size)
            .ok()
            .filter(|&w| w >= 1)
            .ok_or_else(|| {
                CapiError::invalid(
                    &format!("{arg}.world_size"),
                    format!("must be >= 1, got {}", t.world_size),
                )
            })?;
        let rank = usize::try_from(t.rank)
            .ok()
            .filter(|&r| r < world_size)
            .ok_or_else(|| {
                CapiError::invalid(
                    &format!("{arg}.rank"),
                    format!("must be in [0, world_size = {world_size}), got {}", t.rank),
                )
            })?;
        let all_gather = t
            .all_gather
            .ok_or_else(|| CapiError::null(&format!("{arg}.all_gather")))?;
        let all_reduce_sum = t
            .all_reduce_sum
            .ok_or_else(|| CapiError::null(&format!("{arg}.all_reduce_sum")))?;
        Ok(CCommunicator {
            user_data: t.user_data,
            world_size,
            rank,
            all_gather,
            all_reduce_sum,
        })
    }

    /// As [`CCommunicator::from_c`], NULL giving `None`.
    ///
    /// # Safety
    /// As for [`CCommunicator::from_c`].
    pub(crate) unsafe fn from_c_opt(
        arg: &str,
        p: *const normkit_communicator_t,
    ) -> CResult<Option<Arc<dyn Communicator>>> {
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: forwarded contract.
        let c = unsafe { Self::from_c(arg, p) }?;
        Ok(Some(Arc::new(c)))
    }
}

/// Runs one callback, turning a non-OK status (or a panic, which a C callback cannot raise)
/// into an [`ErrorKind::Communication`] error naming the callback.
fn call(name: &str, f: impl FnOnce() -> i32) -> Result<()> {
    let status = catch_unwind(AssertUnwindSafe(f));
    let got = match status {
        Ok(0) => return Ok(()),
        Ok(s) => {
            let text = STATUS_TABLE
                .iter()
                .find(|(_, n, _)| *n == s)
                .map_or("unknown status".into(), |(_, _, t)| t.to_string_lossy());
            format!("status {s} ({text})")
        }
        Err(_) => "a panic inside the callback".to_string(),
    };
    Err(Error::new(
        ErrorKind::Communication,
        "communicator",
        name,
        "NORMKIT_STATUS_OK (0)",
        got,
    ))
}

impl Communicator for CCommunicator {
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn all_gather(&self, send: &[f64], recv: &mut [f64]) -> Result<()> {
        if send.len().checked_mul(self.world_size) != Some(recv.len()) {
            return Err(Error::new(
                ErrorKind::Communication,
                "communicator",
                "all_gather recv",
                format!(
                    "{} values (world size × payload)",
                    send.len() * self.world_size
                ),
                format!("{} values", recv.len()),
            ));
        }
        let f = self.all_gather;
        call("all_gather", || {
            // SAFETY: send holds count readable doubles and recv world_size * count writable
            // ones (checked above); user_data is the caller's, valid per the documented
            // lifetime contract.
            unsafe { f(self.user_data, send.as_ptr(), recv.as_mut_ptr(), send.len()) }
        })
    }
    fn all_reduce_sum(&self, data: &mut [f64]) -> Result<()> {
        let f = self.all_reduce_sum;
        call("all_reduce_sum", || {
            // SAFETY: data holds count readable and writable doubles; user_data as above.
            unsafe { f(self.user_data, data.as_mut_ptr(), data.len()) }
        })
    }
}
