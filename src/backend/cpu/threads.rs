//! CPU thread pools: one rayon pool per requested thread count, built once and reused.
//!
//! `0` (the default) means "all available cores" (rayon's global pool). The setting is
//! per call site: [`install`] runs a closure inside the pool for the requested count, so a
//! Rust caller, a C ABI context and `normkit bench` can each pick their own count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

static DEFAULT_THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// A count chosen by the caller for calls made on this thread (see [`with_threads`]).
    static CALLER_THREADS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` on the calling thread with `threads` as the count the kernels it starts use
/// (a C ABI context's setting). Unlike [`install`], `f` itself stays on the caller's thread,
/// so anything it calls back into (a SyncBatchNorm communicator, e.g. MPI) runs there too.
pub fn with_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    let previous = CALLER_THREADS.with(|c| c.replace(Some(threads)));
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CALLER_THREADS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(previous);
    f()
}

fn pools() -> &'static Mutex<HashMap<usize, Arc<rayon::ThreadPool>>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    POOLS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Sets the process-wide default CPU thread count (0 = all cores).
pub fn set_num_threads(n: usize) {
    DEFAULT_THREADS.store(n, Ordering::Relaxed);
}

/// The process-wide default CPU thread count (0 = all cores).
pub fn num_threads() -> usize {
    DEFAULT_THREADS.load(Ordering::Relaxed)
}

/// The number of threads a count of `n` resolves to.
pub fn effective_threads(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
    } else {
        n
    }
}

/// Runs `f` on a pool of `threads` threads (`None`: the process default).
pub fn install<R: Send>(threads: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
    // Already on a normkit pool (a caller chose the count): stay on it.
    if threads.is_none() && rayon::current_thread_index().is_some() {
        return f();
    }
    let n = threads
        .or_else(|| CALLER_THREADS.with(|c| c.get()))
        .unwrap_or_else(num_threads);
    if n == 0 {
        return f();
    }
    let pool = {
        let mut map = match pools().lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        match map.get(&n) {
            Some(p) => Some(p.clone()),
            None => match rayon::ThreadPoolBuilder::new().num_threads(n).build() {
                Ok(p) => {
                    let p = Arc::new(p);
                    map.insert(n, p.clone());
                    Some(p)
                }
                // Could not spawn threads: run on the caller's pool instead of failing.
                Err(_) => None,
            },
        }
    };
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_threads_keeps_the_caller_thread_and_sets_the_kernels_count() {
        let caller = std::thread::current().id();
        let (same, n) = with_threads(3, || {
            (
                std::thread::current().id() == caller,
                install(None, rayon::current_num_threads),
            )
        });
        assert!(same);
        assert_eq!(n, 3);
        // restored afterwards
        assert_eq!(CALLER_THREADS.with(|c| c.get()), None);
    }

    #[test]
    fn install_uses_the_requested_count() {
        assert_eq!(install(Some(1), rayon::current_num_threads), 1);
        assert_eq!(install(Some(3), rayon::current_num_threads), 3);
    }
}
