//! Caller teams through the public API: with them on, a thread that runs an op with an
//! explicit count of 2 becomes thread 0 of its own pool (rayon's worker index 0 on that
//! thread afterwards); with them off it does not, and the results are the same either way.

use normkit::backend::cpu::threads::{GRAIN, with_threads};
use normkit::ops::{LayerNormArgs, layer_norm};
use normkit::{Tensor, TensorMut, caller_teams, set_caller_teams};

fn run_layer_norm(x: &[f32]) -> Vec<f32> {
    let cols = 1024;
    let rows = x.len() / cols;
    let mut y = vec![0.0f32; x.len()];
    layer_norm(
        &Tensor::new(x, &[rows, cols]).unwrap(),
        &mut TensorMut::new(&mut y, &[rows, cols]).unwrap(),
        LayerNormArgs::new(&[cols]),
    )
    .unwrap();
    y
}

#[test]
fn the_setting_decides_whether_the_caller_joins_and_results_do_not_change() {
    let before = caller_teams();
    let n = 2 * GRAIN; // large enough for two threads
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1013) as f32 * 0.01 + 50.0)
        .collect();

    // on a fresh thread (its first op decides about its team): the output and rayon's worker
    // index of that thread afterwards
    let on_fresh_thread = |x: Vec<f32>| {
        std::thread::spawn(move || {
            let y = with_threads(2, || run_layer_norm(&x));
            (y, rayon::current_thread_index())
        })
        .join()
        .unwrap()
    };

    set_caller_teams(false);
    assert!(!caller_teams());
    let (off, index_off) = on_fresh_thread(x.clone());
    assert_eq!(index_off, None, "no team without teams");

    set_caller_teams(true);
    assert!(caller_teams());
    let (on, index_on) = on_fresh_thread(x);
    assert_eq!(index_on, Some(0), "the caller is thread 0 of its team");

    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&off), bits(&on));
    set_caller_teams(before);
}
