//! Thread counts past `normkit::MAX_THREADS` run on that many threads, not on a pool of the
//! count asked for (100000 made the first op spawn 100000 threads and not return). Its own
//! test binary: it changes the process-wide default.

use normkit::ops::{LayerNormArgs, layer_norm};
use normkit::{MAX_THREADS, Tensor, TensorMut};

#[test]
fn counts_past_the_bound_are_clamped_and_ops_still_run() {
    normkit::set_num_threads(usize::MAX);
    assert_eq!(normkit::num_threads(), MAX_THREADS);
    normkit::set_num_threads(100_000);
    assert_eq!(normkit::num_threads(), MAX_THREADS);
    normkit::set_num_threads(3);
    assert_eq!(normkit::num_threads(), 3, "counts up to the bound are kept");
    // an op of more than one grain (2^17 elements) under a huge per-call count finishes and
    // normalises each row
    let (rows, cols) = (64usize, 4096usize);
    let x: Vec<f32> = (0..rows * cols).map(|i| (i % 97) as f32 * 0.5).collect();
    let mut y = vec![0f32; rows * cols];
    normkit::backend::cpu::threads::with_threads(100_000, || {
        layer_norm(
            &Tensor::new(&x[..], &[rows, cols]).unwrap(),
            &mut TensorMut::new(&mut y[..], &[rows, cols]).unwrap(),
            LayerNormArgs::new(&[cols]),
        )
        .unwrap();
    });
    for r in y.chunks(cols) {
        let mean: f64 = r.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        assert!(mean.abs() < 1e-5, "row mean {mean}");
    }
}
