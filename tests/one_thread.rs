//! With one thread, an op runs on the caller's thread and never reaches a rayon pool: every
//! kernel's parallel iterator goes through `OnThreads::on_threads`, which does not split inside
//! a one-thread `install`. A parallel iterator without it would hand its pieces to rayon's global
//! pool; this test keeps every worker of that pool busy while it runs a small version of every
//! standard case (forward and backward, f32 and bf16) at one thread, so such an iterator would
//! wait for the pool instead of finishing.

use normkit::DType;
use normkit::backend::cpu::threads::install;
use normkit::bench::{Prepared, Suite};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn one_thread_ops_never_reach_a_pool() {
    let workers = rayon::current_num_threads();
    let entered = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    {
        let (entered, release) = (entered.clone(), release.clone());
        rayon::spawn_broadcast(move |_| {
            entered.fetch_add(1, Ordering::SeqCst);
            while !release.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    }
    let start = Instant::now();
    while entered.load(Ordering::SeqCst) < workers {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rayon's global pool did not start its {workers} workers"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let suite = Suite::standard().unwrap();
        let mut done = Vec::new();
        // the setup and the check (which may run ops) at one thread too
        install(Some(1), || {
            for mut case in suite.cases(&[DType::F32, DType::BF16]) {
                case.shape[0] = 2;
                let mut p = Prepared::new(&case, &suite).unwrap();
                p.run().unwrap();
                p.check(64).unwrap();
                done.push(case.name());
            }
        });
        let _ = tx.send(done);
    });
    let got = rx.recv_timeout(Duration::from_secs(20));
    release.store(true, Ordering::SeqCst);
    let done = got.expect(
        "a one-thread op waited for rayon's global pool (a parallel iterator without on_threads)",
    );
    let suite = Suite::standard().unwrap();
    assert_eq!(done.len(), suite.cases(&[DType::F32, DType::BF16]).len());
}
