// GroupNorm NHWC forward through the Rust API at several channel counts (docs/perf/cpu.md,
// round 20). As an example: copy to examples/, `cargo run --release --example NAME -- THREADS`;
// GRAD=2 adds a brightness ramp over each sample's rows.
use normkit::ops::{GroupNormArgs, group_norm};
use normkit::{Tensor, TensorMut};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(1);
    normkit::set_num_threads(threads);
    // (C, groups): same elements per sample and group size where possible
    let cases = [(256usize, 32usize, 1024usize), (272, 34, 964), (240, 30, 1092), (264, 33, 993)];
    let mut res: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut bufs: Vec<(Vec<f32>, Vec<f32>)> = cases
        .iter()
        .map(|&(c, _, s)| {
            let n = 16 * c * s;
            let grad: f32 = std::env::var("GRAD").ok().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let noise = |i: usize| ((i.wrapping_mul(2654435761) >> 7) % 1013) as f32 / 500.0 - 1.0;
            // row (spatial position) i / c of sample (i / (c * s)): a brightness ramp over the image
            let x = (0..n).map(|i| noise(i) + grad * ((i / c) % s) as f32 / s as f32).collect();
            (x, vec![0.0f32; n])
        })
        .collect();
    for round in 0..8 {
        for (k, &(c, g, s)) in cases.iter().enumerate() {
            let k = if round % 2 == 0 { k } else { cases.len() - 1 - k };
            let (c, g, s) = if k == k { cases[k] } else { (c, g, s) };
            let (x, y) = &mut bufs[k];
            let shape = [16, c, s, 1];
            let xt = Tensor::channels_last(&x[..], &shape).unwrap();
            let mut times = Vec::new();
            for rep in 0..40 {
                let mut yt = TensorMut::channels_last(&mut y[..], &shape).unwrap();
                let t0 = Instant::now();
                group_norm(&xt, &mut yt, GroupNormArgs::new(g)).unwrap();
                if rep >= 10 {
                    times.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            res[k].push(times[times.len() / 2]);
        }
    }
    for (k, &(c, g, s)) in cases.iter().enumerate() {
        let mut v = res[k].clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = v[v.len() / 2];
        let ns = med * 1e6 / (16 * c * s) as f64;
        println!("C={c:3} G={g} S={s}: median {med:.3} ms, {ns:.3} ns/element");
    }
}
