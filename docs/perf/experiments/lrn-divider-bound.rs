//! The divider's floor under LocalResponseNorm with beta = 0.75 (round 27, docs/perf/cpu.md).
//!
//! `y = x / (sqrt(d) · sqrt(sqrt(d)))` is what the kernel computes per element after its window
//! sums: three operations of the divide/square-root unit. This loop does only those, on an
//! L1-resident array, so its time per element is a lower bound for the kernel's on this core.
//! A plain multiply over the same arrays is the reference.
//!
//! Build and run (a standalone crate; not part of normkit's build):
//!   cargo new divb && cp lrn-divider-bound.rs divb/src/main.rs && cd divb
//!   RUSTFLAGS="-C target-cpu=native" cargo build --release && ./target/release/divb
//! Two copies at once (`./divb & ./divb`) time the same, so each vCPU has its own divider.
use std::time::Instant;

#[inline(never)]
fn divider(x: &[f32], d: &[f32], y: &mut [f32]) {
    for ((y, &x), &d) in y.iter_mut().zip(x).zip(d) {
        let s = d.sqrt();
        *y = x / (s * s.sqrt());
    }
}

#[inline(never)]
fn multiply(x: &[f32], d: &[f32], y: &mut [f32]) {
    for ((y, &x), &d) in y.iter_mut().zip(x).zip(d) {
        *y = x * d;
    }
}

fn main() {
    let n = 4096;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.001 + 0.5).collect();
    let d: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.01).collect();
    let mut y = vec![0f32; n];
    type Kernel = fn(&[f32], &[f32], &mut [f32]);
    for (name, f) in [("x / (sqrt(d)·sqrt(sqrt(d)))", divider as Kernel), ("x · d", multiply)] {
        let mut best = f64::MAX;
        for _ in 0..2000 {
            let t = Instant::now();
            for _ in 0..200 {
                f(&x, &d, &mut y);
                std::hint::black_box(&mut y);
            }
            best = best.min(t.elapsed().as_secs_f64() / (200.0 * n as f64));
        }
        println!("{name}: {:.3} ns/element (best of 2000)", best * 1e9);
    }
}
