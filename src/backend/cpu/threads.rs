//! CPU thread pools: a team per calling thread (below), else one shared rayon pool per
//! requested thread count, built once and reused.
//!
//! `0` (the default) means "all available cores" (rayon's global pool). The setting is
//! per call site: [`install`] runs a closure inside the pool for the requested count, so a
//! Rust caller, a C ABI context and `normkit bench` can each pick their own count.
//!
//! **Caller teams.** A thread that runs ops with an explicit count `n >= 2` (a C ABI context's
//! `cpu_num_threads`, [`with_threads`], [`set_num_threads`], `normkit bench --threads`) gets
//! its own team, as an OpenMP master thread gets its own: a rayon pool of `n` threads whose
//! thread 0 is the calling thread itself (rayon's `use_current_thread`) and `n − 1` workers.
//! The op then runs on the caller, which takes its share of the pieces while the workers steal
//! the rest, and returns as soon as the last piece is done. Without a team the op is handed to
//! a shared pool and the caller sleeps until a worker wakes it: 30–37 µs per op on this
//! project's 2-vCPU VM against 5–8 µs with the team (a 64K-element two-piece loop, medians of
//! 4000 calls), and three runnable threads on two vCPUs instead of two; whole ops at two
//! threads: geometric mean 1.08x f32, 1.11x bf16 over the 22 standard cases (docs/perf/cpu.md,
//! round 12). The calling thread stays rayon's worker 0 of its team for the rest of its life:
//! rayon parallel iterators that the application itself runs on that thread afterwards run on
//! the team's `n` threads. A team serves one count (the first `n >= 2` the thread uses; other
//! counts use the shared pools) and is shut down when its thread exits. Teams are not made for
//! the default count 0 (all cores: rayon's global pool, shared by every caller), on a thread
//! that is already a rayon worker, past [`team_worker_budget`] live team workers or past
//! [`TEAMS_EVER`] teams; [`set_caller_teams`] or `NORMKIT_CALLER_TEAMS=0` turn them off (the
//! shared pools serve, as before).
//!
//! **Spin-wait.** After an op, the pool's workers keep looking for work for a short while
//! ([`spin_wait`], 2 ms by default; `NORMKIT_SPIN_US` or [`set_spin_wait`] change it, 0 turns
//! it off) instead of going to sleep at once, as OpenMP runtimes do (libgomp's
//! `GOMP_SPINCOUNT`, Intel's `KMP_BLOCKTIME`). A worker that has gone to sleep is woken by a
//! futex; on a virtual machine whose idle vCPU was descheduled that took 0.3–0.6 ms here
//! (2-vCPU KVM guest, measured with a `rayon::join` after 1–10 ms of idleness), against 5 µs
//! for a spinning worker — as long as a whole 2-thread op on a 1 MB tensor. The spinning
//! worker runs any work that arrives (`rayon::yield_now`), so it is never in the way, and it
//! offers its CPU to other threads (`sched_yield`) every few dozen polls.

use rayon::iter::{IndexedParallelIterator, MinLen};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

static DEFAULT_THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// A count chosen by the caller for calls made on this thread (see [`with_threads`]).
    static CALLER_THREADS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

thread_local! {
    /// Set while a one-thread [`install`] runs its closure on this (the caller's) thread.
    static INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The number of threads the kernels started from here run on: 1 inside a one-thread
/// [`install`], else the current rayon pool's.
pub fn current_threads() -> usize {
    if INLINE.with(|c| c.get()) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// The kernels' parallel iterators split across the threads of the current [`install`]
/// ([`OnThreads::on_threads`] on every one of them): inside a one-thread install they never
/// split, so they run on the caller's thread and never reach a pool.
pub trait OnThreads: IndexedParallelIterator {
    /// This iterator with the minimum piece length for the current install: `usize::MAX` (no
    /// split: one piece on the calling thread) inside a one-thread install, else 1.
    fn on_threads(self) -> MinLen<Self> {
        let min = if INLINE.with(|c| c.get()) {
            usize::MAX
        } else {
            1
        };
        self.with_min_len(min)
    }
}

impl<I: IndexedParallelIterator> OnThreads for I {}

/// Runs `f` on the calling thread with `threads` as the count the kernels it starts use
/// (a C ABI context's setting). Unlike [`install`], `f` itself stays on the caller's thread,
/// so anything it calls back into (a SyncBatchNorm communicator, e.g. MPI) runs there too.
pub fn with_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    with_set(&CALLER_THREADS, Some(threads), f)
}

/// Runs `f` with the thread-local `key` set to `value`, restoring its previous value afterwards
/// (also when `f` unwinds).
fn with_set<T: Copy + 'static, R>(
    key: &'static std::thread::LocalKey<std::cell::Cell<T>>,
    value: T,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<std::cell::Cell<T>>, T);
    impl<T: Copy + 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(key, key.with(|c| c.replace(value)));
    f()
}

/// This thread's team ([`caller_team`]): not tried yet, built for a count, or not to be built.
enum TeamSlot {
    Untried,
    Built(Team),
    Unavailable,
}

/// A caller team: a pool of `n` threads whose thread 0 is the thread that built it.
struct Team {
    n: usize,
    pool: Arc<Pool>,
    /// How many of its workers have exited (their exit handler), for the tests.
    #[cfg(test)]
    exited: Arc<AtomicUsize>,
}

impl Drop for Team {
    fn drop(&mut self) {
        // the pool's drop (after this) tells the workers to exit, once every broadcast copy
        // has run
        drain_caller_copies();
        TEAM_WORKERS.fetch_sub(self.n - 1, Ordering::AcqRel);
    }
}

thread_local! {
    static TEAM: std::cell::RefCell<TeamSlot> = const { std::cell::RefCell::new(TeamSlot::Untried) };
}

/// Live team workers (threads other than the callers) in the process.
static TEAM_WORKERS: AtomicUsize = AtomicUsize::new(0);
/// Teams built so far: each leaves rayon's record of its caller behind when it ends (about
/// 9 KB, valgrind's "definitely lost" once the thread has exited: rayon cannot release a pool's
/// thread 0 that it did not start; include/normkit-valgrind.supp and normkit-lsan.supp
/// suppress it), so their number is bounded too.
static TEAMS_BUILT: AtomicUsize = AtomicUsize::new(0);
/// At most this many teams are ever built in a process; later threads use the shared pools.
pub const TEAMS_EVER: usize = 1024;

/// At most this many live team workers in the process (8 per core, at least 32); a thread that
/// would exceed it uses the shared pools. Each team of `n` adds `n − 1` threads, so an
/// embedder with many calling threads does not multiply its threads without bound.
pub fn team_worker_budget() -> usize {
    (8 * effective_threads(0)).max(32)
}

/// Caller teams: 0 = not set yet (environment, then on), 1 = on, 2 = off.
static TEAMS: AtomicU8 = AtomicU8::new(0);

/// Turns caller teams on or off (process-wide; on by default, or `NORMKIT_CALLER_TEAMS=0`).
/// A thread that has its team keeps it while off, but its ops go to the shared pools.
pub fn set_caller_teams(on: bool) {
    TEAMS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether caller teams are on ([`set_caller_teams`], else `NORMKIT_CALLER_TEAMS`, else on).
pub fn caller_teams() -> bool {
    let mut v = TEAMS.load(Ordering::Relaxed);
    if v == 0 {
        let off = std::env::var("NORMKIT_CALLER_TEAMS").is_ok_and(|v| v.trim() == "0");
        let _ = TEAMS.compare_exchange(
            0,
            if off { 2 } else { 1 },
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        v = TEAMS.load(Ordering::Relaxed);
    }
    v == 1
}

/// This thread's team for `n` threads, built on first use: `None` for another count than the
/// one it was built for, on a thread that is a rayon worker already, past the budgets, or when
/// its threads cannot be started.
fn caller_team(n: usize) -> Option<Arc<Pool>> {
    // `try_with`: an op from another thread-local's destructor, after this one's, gets none
    TEAM.try_with(|slot| {
        let mut slot = slot.borrow_mut();
        if let TeamSlot::Untried = *slot {
            if rayon::current_thread_index().is_some() {
                return None; // a worker of another pool (not marked: it may be asked again)
            }
            *slot = build_team(n).map_or(TeamSlot::Unavailable, TeamSlot::Built);
        }
        match &*slot {
            TeamSlot::Built(t) if t.n == n => Some(t.pool.clone()),
            _ => None,
        }
    })
    .ok()
    .flatten()
}

/// Builds a team of `n` with the calling thread as its thread 0, within the budgets.
fn build_team(n: usize) -> Option<Team> {
    let workers = n - 1;
    let budget = team_worker_budget();
    if TEAM_WORKERS
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (w + workers <= budget).then_some(w + workers)
        })
        .is_err()
    {
        return None;
    }
    if TEAMS_BUILT
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
            (t < TEAMS_EVER).then_some(t + 1)
        })
        .is_err()
    {
        TEAM_WORKERS.fetch_sub(workers, Ordering::AcqRel);
        return None;
    }
    let builder = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .use_current_thread()
        .thread_name(|i| format!("normkit-team-{i}"));
    #[cfg(test)]
    let (builder, exited) = {
        let exited = Arc::new(AtomicUsize::new(0));
        let on_exit = exited.clone();
        let builder = builder.exit_handler(move |_| {
            on_exit.fetch_add(1, Ordering::AcqRel);
        });
        (builder, exited)
    };
    match builder.build() {
        Ok(pool) => Some(Team {
            n,
            pool: Arc::new(Pool {
                pool,
                warm: Arc::default(),
            }),
            #[cfg(test)]
            exited,
        }),
        Err(_) => {
            TEAM_WORKERS.fetch_sub(workers, Ordering::AcqRel);
            None
        }
    }
}

/// Keeps the `n − 1` workers of a team awake for `spin`; the caller (its thread 0) does not
/// spin: its copy of the broadcast does nothing.
fn keep_team(team: &Pool, n: usize, spin: Duration) {
    drain_caller_copies();
    team.warm.keep(n - 1, spin, |job| {
        team.pool.spawn_broadcast(move |c| {
            if c.index() != 0 {
                job()
            }
        })
    });
}

/// Runs what waits in this thread's own queues: at rest only the no-op copies of
/// [`keep_team`]'s broadcasts (the caller runs them when it waits inside an op, or here). A
/// copy left there when the thread exits would keep rayon from ever ending the team's workers
/// (each broadcast holds the pool open until every copy has run).
fn drain_caller_copies() {
    while let Some(rayon::Yield::Executed) = rayon::yield_local() {}
}

/// Whether this thread has a team (it is then rayon's worker 0 of it).
fn has_team() -> bool {
    TEAM.try_with(|slot| matches!(*slot.borrow(), TeamSlot::Built(_)))
        .unwrap_or(false)
}

/// A pool with its spin-wait state.
struct Pool {
    pool: rayon::ThreadPool,
    warm: Arc<Warmth>,
}

fn pools() -> &'static Mutex<HashMap<usize, Arc<Pool>>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<Pool>>>> = OnceLock::new();
    POOLS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Default spin-wait after an op, in microseconds.
const DEFAULT_SPIN_US: u64 = 2000;
/// `u64::MAX`: not set yet (the environment, then the default, decide on first use).
static SPIN_US: AtomicU64 = AtomicU64::new(u64::MAX);

/// Sets how long the CPU workers keep looking for work after an op before they sleep
/// (process-wide; `Duration::ZERO` turns spinning off). See the module documentation.
pub fn set_spin_wait(d: Duration) {
    SPIN_US.store(
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1),
        Ordering::Relaxed,
    );
}

/// The spin-wait after an op: [`set_spin_wait`], else `NORMKIT_SPIN_US` (microseconds), else
/// 2 ms.
pub fn spin_wait() -> Duration {
    let mut us = SPIN_US.load(Ordering::Relaxed);
    if us == u64::MAX {
        us = std::env::var("NORMKIT_SPIN_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_SPIN_US, |v| v.min(u64::MAX - 1));
        // First caller wins; a concurrent set_spin_wait is not overwritten.
        let _ = SPIN_US.compare_exchange(u64::MAX, us, Ordering::Relaxed, Ordering::Relaxed);
        us = SPIN_US.load(Ordering::Relaxed);
    }
    Duration::from_micros(us)
}

/// Nanoseconds since a process-wide epoch (monotonic).
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Spin-wait state of one pool: how many of its workers run a spinner, and until when they
/// spin.
#[derive(Default)]
struct Warmth {
    live: AtomicUsize,
    deadline: AtomicU64,
}

thread_local! {
    /// Whether this worker already runs a spinner (a second one nested in it returns at once).
    static SPINNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Warmth {
    /// Keeps `threads` workers of a pool awake until `spin` from now: extends the deadline
    /// of the running spinners, or starts one per worker through `broadcast` (rayon's
    /// `spawn_broadcast` of that pool; a team's is given `n − 1` and its caller's copy does
    /// nothing).
    fn keep(
        self: &Arc<Self>,
        threads: usize,
        spin: Duration,
        broadcast: impl FnOnce(Box<dyn Fn() + Send + Sync>),
    ) {
        if spin.is_zero() || threads == 0 {
            return;
        }
        let until = now_ns().saturating_add(u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX));
        self.deadline.fetch_max(until, Ordering::Relaxed);
        // Every worker spins already: they see the new deadline. Otherwise start one spinner
        // per worker; those landing on a worker that still spins return at once.
        if self.live.fetch_add(threads, Ordering::AcqRel) >= threads {
            self.live.fetch_sub(threads, Ordering::AcqRel);
            return;
        }
        let warm = self.clone();
        broadcast(Box::new(move || {
            if !SPINNING.with(|s| s.replace(true)) {
                let mut polls = 0u32;
                while now_ns() < warm.deadline.load(Ordering::Relaxed) {
                    if let Some(rayon::Yield::Executed) = rayon::yield_now() {
                        polls = 0;
                        continue;
                    }
                    polls = polls.wrapping_add(1);
                    if polls % 32 == 0 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                SPINNING.with(|s| s.set(false));
            }
            warm.live.fetch_sub(1, Ordering::AcqRel);
        }));
    }
}

/// Spin-wait state of rayon's global pool (thread count 0).
fn global_warmth() -> &'static Arc<Warmth> {
    static GLOBAL: OnceLock<Arc<Warmth>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Warmth::default()))
}

/// Sets the process-wide default CPU thread count (0 = all cores).
pub fn set_num_threads(n: usize) {
    DEFAULT_THREADS.store(n.min(MAX_THREADS), Ordering::Relaxed);
}

/// The largest thread count normkit runs an op on. A larger count asked of the Rust API
/// ([`set_num_threads`], [`install`], [`with_threads`]) runs on this many; the C ABI
/// (`normkit_context_config_t::cpu_num_threads`) and `normkit bench --threads` reject it. Without
/// a bound a count such as 100000 made the first op spawn that many pool threads and had not
/// returned after two minutes.
pub const MAX_THREADS: usize = 1024;

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

/// Input elements below which an op runs on the caller's thread whatever the thread count (as
/// PyTorch's `GRAIN_SIZE` keeps small loops serial): handing an op to a pool and waiting for
/// it costs 25–35 µs on this project's 2-vCPU VM, while one thread normalises 128K f32
/// elements in about that time. Same-machine medians, one thread vs two (`normkit bench
/// --max-elements N`): 128K elements GroupNorm 21 vs 43 µs, LayerNorm 30 vs 49 µs, BatchNorm
/// eval 12 vs 37 µs; 256K elements 63 vs 62, 68 vs 67, 25 vs 44 µs; 512K elements two threads
/// ahead (140 vs 193 µs GroupNorm). That was a shared pool; with caller teams (5–8 µs per op)
/// the crossover moved down to this grain (round 12, two threads forced below it by a scratch
/// switch, medians of 200 calls, 4 alternations): at 128K elements two threads 1.0–1.5x faster
/// on all 22 cases (GroupNorm NCHW fwd 19 vs 15 µs, BatchNorm3d eval 12 vs 8 µs); at 64K even
/// (forward 0.89–1.2x, backward 0.87–1.26x); at 32K one thread faster for every forward
/// (0.73–0.9x).
pub const GRAIN: usize = 1 << 17;

/// [`install`] for an op on `elements` input elements: on the caller's thread below
/// [`GRAIN`], else on the pool of the process default or the caller's count.
pub fn install_sized<R: Send>(elements: usize, f: impl FnOnce() -> R + Send) -> R {
    install((elements < GRAIN).then_some(1), f)
}

/// Runs `f` on a pool of `threads` threads (`None`: the process default).
///
/// One thread means the caller's own: `f` runs here, and the kernels' parallel iterators
/// ([`OnThreads`]) do not split, as an OpenMP region of one thread runs on its caller. Handing
/// the op to a one-worker pool and sleeping until it finishes cost 10–25 µs per call on this
/// VM (a futex wake-up each way), more than a whole GroupNorm of 64K elements.
pub fn install<R: Send>(threads: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
    install_on(threads, caller_teams(), f)
}

/// [`install`] with caller teams on or off.
fn install_on<R: Send>(threads: Option<usize>, teams: bool, f: impl FnOnce() -> R + Send) -> R {
    // Already on a normkit pool (a worker, not a team's caller, whose count is resolved
    // again below) or in a one-thread install (a caller chose the count): stay.
    if threads.is_none()
        && (INLINE.with(|c| c.get()) || (rayon::current_thread_index().is_some() && !has_team()))
    {
        return f();
    }
    let mut n = threads
        .or_else(|| CALLER_THREADS.with(|c| c.get()))
        .unwrap_or_else(num_threads)
        .min(MAX_THREADS);
    if n == 0 && has_team() {
        // rayon's global pool is out of reach from a team's caller (its iterators run on the
        // team): the shared pool of all cores, or the team when it has them
        n = effective_threads(0);
    }
    if n == 1 {
        return with_set(&INLINE, true, f);
    }
    if n == 0 {
        let r = f();
        global_warmth().keep(rayon::current_num_threads(), spin_wait(), |job| {
            rayon::spawn_broadcast(move |_| job())
        });
        return r;
    }
    if teams {
        if let Some(team) = caller_team(n) {
            // on this thread, which takes its share of the pieces (thread 0 of the team); out
            // of a one-thread install it may be nested in
            let r = with_set(&INLINE, false, || team.pool.install(f));
            keep_team(&team, n, spin_wait());
            return r;
        }
    }
    let pool = {
        let mut map = match pools().lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        match map.get(&n) {
            Some(p) => Some(p.clone()),
            None => match rayon::ThreadPoolBuilder::new().num_threads(n).build() {
                Ok(pool) => {
                    let p = Arc::new(Pool {
                        pool,
                        warm: Arc::default(),
                    });
                    map.insert(n, p.clone());
                    Some(p)
                }
                // Could not spawn threads: run on the caller's pool instead of failing.
                Err(_) => None,
            },
        }
    };
    match pool {
        Some(p) => {
            let r = p.pool.install(f);
            p.warm
                .keep(n, spin_wait(), |job| p.pool.spawn_broadcast(move |_| job()));
            r
        }
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

    /// Waits up to 2 s for `cond`.
    fn eventually(cond: impl Fn() -> bool) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn spinners_start_on_every_worker_run_work_and_stop_at_the_deadline() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let warm = Arc::new(Warmth::default());
        let keep = |spin| warm.keep(3, spin, |job| pool.spawn_broadcast(move |_| job()));
        // off: nothing starts
        keep(Duration::ZERO);
        assert_eq!(warm.live.load(Ordering::Acquire), 0);
        keep(Duration::from_millis(300));
        assert_eq!(warm.live.load(Ordering::Acquire), 3);
        // a second call while they spin only extends the deadline
        keep(Duration::from_millis(300));
        assert_eq!(warm.live.load(Ordering::Acquire), 3);
        // the spinning workers still run the pool's work
        let sum: u64 = pool.install(|| {
            use rayon::prelude::*;
            (0..10_000u64).into_par_iter().sum()
        });
        assert_eq!(sum, 10_000 * 9_999 / 2);
        assert!(
            eventually(|| warm.live.load(Ordering::Acquire) == 0),
            "spinners still running 2 s after a 300 ms deadline"
        );
    }

    #[test]
    fn spin_wait_setting_is_read_back() {
        let before = spin_wait();
        set_spin_wait(Duration::from_micros(1234));
        assert_eq!(spin_wait(), Duration::from_micros(1234));
        set_spin_wait(before);
        assert_eq!(spin_wait(), before);
    }

    #[test]
    fn install_uses_the_requested_count() {
        assert_eq!(install(Some(1), current_threads), 1);
        assert_eq!(install(Some(3), current_threads), 3);
        assert_eq!(install(Some(3), rayon::current_num_threads), 3);
        // a count chosen inside a one-thread install still gets its pool, and back
        assert_eq!(install(Some(1), || install(Some(3), current_threads)), 3);
        assert_eq!(install(Some(1), || install(None, current_threads)), 1);
    }

    #[test]
    fn small_ops_run_on_the_caller_whatever_the_count() {
        let caller = std::thread::current().id();
        let small = with_threads(2, || {
            install_sized(GRAIN - 1, || {
                (current_threads(), std::thread::current().id())
            })
        });
        assert_eq!(small, (1, caller));
        let large = with_threads(2, || install_sized(GRAIN, current_threads));
        assert_eq!(large, 2);
    }

    #[test]
    fn one_thread_runs_on_the_caller_and_its_iterators_do_not_split() {
        use rayon::prelude::*;
        let caller = std::thread::current().id();
        let ids = |n| {
            install(Some(n), || {
                (0..64usize)
                    .into_par_iter()
                    .on_threads()
                    .map(|_| std::thread::current().id())
                    .collect::<Vec<_>>()
            })
        };
        assert!(ids(1).iter().all(|&id| id == caller));
        // on a shared pool the same iterator runs on the pool's workers
        let shared = install_on(Some(2), false, || {
            (0..64usize)
                .into_par_iter()
                .on_threads()
                .map(|_| std::thread::current().id())
                .collect::<Vec<_>>()
        });
        assert!(shared.iter().all(|&id| id != caller));
        assert!(!INLINE.with(|c| c.get()), "the flag is restored");
    }

    /// The distinct threads that ran `n` pieces which each wait (up to 2 s) until all `n`
    /// pieces have started: `n` threads when the pool runs them at the same time.
    fn rendezvous(n: usize) -> Vec<std::thread::ThreadId> {
        use rayon::prelude::*;
        let arrived = AtomicUsize::new(0);
        let mut ids: Vec<_> = (0..n)
            .into_par_iter()
            .with_max_len(1)
            .map(|_| {
                arrived.fetch_add(1, Ordering::AcqRel);
                eventually(|| arrived.load(Ordering::Acquire) >= n);
                std::thread::current().id()
            })
            .collect();
        ids.sort_by_key(|id| format!("{id:?}"));
        ids.dedup();
        ids
    }

    #[test]
    fn a_team_runs_the_op_on_the_caller_and_its_workers_at_once() {
        // a fresh thread: its first count >= 2 builds its team
        std::thread::spawn(|| {
            let caller = std::thread::current().id();
            let (ids, n) = with_threads(3, || install(None, || (rendezvous(3), current_threads())));
            assert_eq!(n, 3);
            assert_eq!(ids.len(), 3, "three threads at once: {ids:?}");
            assert!(ids.contains(&caller), "the caller took a piece: {ids:?}");
            assert!(has_team());
            // the same count again: the same team, the caller again
            let again = install(Some(3), || rendezvous(3));
            assert!(again.contains(&caller));
            // another count: a shared pool of that count, without the caller
            let (other, m) = install(Some(2), || (rendezvous(2), current_threads()));
            assert_eq!((other.len(), m), (2, 2));
            assert!(!other.contains(&caller), "{other:?}");
            // one thread is still the caller alone
            assert_eq!(install(Some(1), || rendezvous(1)), vec![caller]);
            // the default (all cores) is all cores, not the team's three
            assert_eq!(install(Some(0), current_threads), effective_threads(0));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn without_teams_the_op_runs_on_a_shared_pool() {
        std::thread::spawn(|| {
            let caller = std::thread::current().id();
            let ids = install_on(Some(3), false, || rendezvous(3));
            assert_eq!(ids.len(), 3);
            assert!(!ids.contains(&caller));
            assert!(!has_team(), "no team was built");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_rayon_worker_gets_no_team_and_still_its_count() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let (n, team) = pool.install(|| (install(Some(3), current_threads), has_team()));
        assert_eq!((n, team), (3, false));
    }

    #[test]
    fn a_team_ends_with_its_thread() {
        let exited = std::thread::spawn(|| {
            assert_eq!(install(Some(3), current_threads), 3);
            TEAM.with(|slot| match &*slot.borrow() {
                TeamSlot::Built(t) => t.exited.clone(),
                _ => panic!("no team built"),
            })
        })
        .join()
        .unwrap();
        assert!(
            eventually(|| exited.load(Ordering::Acquire) == 2),
            "{} of 2 team workers exited",
            exited.load(Ordering::Acquire)
        );
    }

    #[test]
    fn an_op_from_a_later_thread_local_destructor_still_runs() {
        // a thread-local registered before the team is destroyed after it (reverse order):
        // its destructor's op finds no team and runs on a shared pool
        struct Late(std::sync::mpsc::Sender<usize>);
        impl Drop for Late {
            fn drop(&mut self) {
                let _ = self.0.send(install(Some(2), current_threads));
            }
        }
        thread_local! {
            static LATE: std::cell::RefCell<Option<Late>> = const { std::cell::RefCell::new(None) };
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            LATE.with(|l| *l.borrow_mut() = Some(Late(tx)));
            assert_eq!(install(Some(2), current_threads), 2);
            assert!(has_team());
        })
        .join()
        .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(2));
    }

    #[test]
    fn only_a_teams_workers_spin() {
        std::thread::spawn(|| {
            let team = match build_team(3) {
                Some(t) => t,
                None => return eprintln!("skipped: team budget taken by concurrent tests"),
            };
            keep_team(&team.pool, 3, Duration::from_secs(3));
            assert_eq!(team.pool.warm.live.load(Ordering::Acquire), 2);
            // the caller is not held by a spinner: the team's next op is done long before the
            // spinners' 3 s are over (each one runs work when it arrives)
            let t = Instant::now();
            let ids = team.pool.pool.install(|| rendezvous(3));
            assert_eq!(ids.len(), 3);
            assert!(
                t.elapsed() < Duration::from_millis(1500),
                "{:?}",
                t.elapsed()
            );
        })
        .join()
        .unwrap();
    }
}
