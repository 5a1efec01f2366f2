//! SyncBatchNorm against one BatchNorm over the whole batch, for any [`Communicator`]: the
//! harness shared by `tests/sync_batch_norm.rs` (in-process ranks) and `tests/nccl.rs`.
#![allow(dead_code)]

use normkit::comm::Communicator;
use normkit::layers::{
    BatchNorm, BatchNormConfig, BatchNormKind, Module, State, convert_sync_batchnorm,
};
use normkit::{Buffer, DType, ElementData, Tensor, TensorMut};
use std::sync::Arc;

pub const C: usize = 3;
const HW: [usize; 2] = [2, 3];
/// The local batch sizes of the default 3-rank group (one rank empty).
pub const SLICES: [usize; 3] = [2, 0, 3];

pub fn shape(n: usize) -> [usize; 4] {
    [n, C, HW[0], HW[1]]
}

/// Logical (row-major NCHW) values of the whole batch (`total` samples) for step `step`.
pub fn batch(step: usize, total: usize) -> Vec<f64> {
    let n: usize = total * C * HW[0] * HW[1];
    (0..n)
        .map(|i| ((i * 31 + step * 7) % 17) as f64 * 0.37 - 2.0 + step as f64)
        .collect()
}

/// `n` pseudo-random values uniform in `[offset − 2, offset + 2)` (an LCG from `seed`).
pub fn lcg_data(n: usize, seed: u64, offset: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0 + offset
        })
        .collect()
}

/// Converts logical values of shape `sh` into memory order for `channels_last`.
pub fn to_memory<T: ElementData>(logical: &[f64], sh: &[usize], channels_last: bool) -> Vec<T> {
    let mut out = vec![T::default(); logical.len()];
    let strides = if channels_last {
        normkit::tensor::channels_last_strides(sh)
    } else {
        normkit::tensor::contiguous_strides(sh)
    };
    for (i, &v) in logical.iter().enumerate() {
        let (mut rem, mut off) = (i, 0);
        for d in (0..sh.len()).rev() {
            off += (rem % sh[d]) * strides[d];
            rem /= sh[d];
        }
        out[off] = T::from_f64(v);
    }
    out
}

pub fn view<'a, T: ElementData>(data: &'a [T], sh: &[usize], cl: bool) -> Tensor<'a> {
    if cl {
        Tensor::channels_last(data, sh).unwrap()
    } else {
        Tensor::new(data, sh).unwrap()
    }
}

pub fn view_mut<'a, T: ElementData>(data: &'a mut [T], sh: &[usize], cl: bool) -> TensorMut<'a> {
    if cl {
        TensorMut::channels_last(data, sh).unwrap()
    } else {
        TensorMut::new(data, sh).unwrap()
    }
}

/// One training step of `m` on logical input `x`: returns (logical y, logical dx).
pub fn step<T: ElementData>(
    m: &mut BatchNorm,
    x: &[f64],
    n: usize,
    cl: bool,
    gy: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let sh = shape(n);
    let xm: Vec<T> = to_memory(x, &sh, cl);
    let gm: Vec<T> = to_memory(gy, &sh, cl);
    let mut y = vec![T::default(); xm.len()];
    m.forward(&view(&xm, &sh, cl), &mut view_mut(&mut y, &sh, cl))
        .unwrap();
    let mut dx = vec![T::default(); xm.len()];
    if m.is_training() {
        m.backward(
            &view(&xm, &sh, cl),
            &view(&gm, &sh, cl),
            Some(&mut view_mut(&mut dx, &sh, cl)),
        )
        .unwrap();
    }
    (
        view(&y, &sh, cl).to_f64_vec(),
        view(&dx, &sh, cl).to_f64_vec(),
    )
}

pub fn tensor(m: &BatchNorm, name: &str) -> Vec<f64> {
    match m.state(name).unwrap() {
        State::Tensor(b) => b.to_f64_vec(),
        State::Counter(_) => panic!("{name}"),
    }
}

pub fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

pub fn new_bn(dtype: DType) -> BatchNorm {
    let mut m = BatchNorm::new(
        BatchNormKind::BatchNorm2d,
        BatchNormConfig {
            dtype,
            ..BatchNormConfig::new(C)
        },
    );
    m.load_state(
        "weight",
        &State::Tensor(Buffer::from_f64(dtype, &[1.5, -0.5, 2.0])),
    )
    .unwrap();
    m.load_state(
        "bias",
        &State::Tensor(Buffer::from_f64(dtype, &[0.1, 0.2, -0.3])),
    )
    .unwrap();
    m
}

/// Three training steps (forward + backward) and an eval step of SyncBatchNorm over `group`
/// (rank `r` holding `slices[r]` samples, each rank a thread) against one BatchNorm over the
/// whole batch: outputs, input gradients, summed parameter gradients, running statistics and
/// the counter.
pub fn run_case<T: ElementData>(
    cl: bool,
    tol: f64,
    slices: &[usize],
    group: Vec<Arc<dyn Communicator>>,
) {
    assert_eq!(slices.len(), group.len());
    let dtype = T::DTYPE.stat_dtype();
    let per = C * HW[0] * HW[1];
    let total: usize = slices.iter().sum();
    // reference: one BatchNorm over the whole batch
    let mut reference = new_bn(dtype);
    let mut ref_steps = Vec::new();
    for s in 0..3 {
        let x = batch(s, total);
        let gy: Vec<f64> = x.iter().map(|v| (v * 1.7).sin()).collect();
        ref_steps.push(step::<T>(&mut reference, &x, total, cl, &gy));
    }
    // K ranks, each with its own module converted to SyncBatchNorm over the group
    let handles: Vec<_> = group
        .into_iter()
        .enumerate()
        .map(|(rank, pg)| {
            let start: usize = slices[..rank].iter().sum();
            let n = slices[rank];
            std::thread::spawn(move || {
                let mut m = convert_sync_batchnorm(vec![new_bn(dtype)], Some(pg)).remove(0);
                let mut outs = Vec::new();
                for s in 0..3 {
                    let x = batch(s, total);
                    let gy: Vec<f64> = x.iter().map(|v| (v * 1.7).sin()).collect();
                    let r = start * per..(start + n) * per;
                    let (y, dx) = step::<T>(&mut m, &x[r.clone()], n, cl, &gy[r]);
                    let gw = m
                        .grad("weight")
                        .unwrap()
                        .map(|b| b.to_f64_vec())
                        .unwrap_or_default();
                    let gb = m
                        .grad("bias")
                        .unwrap()
                        .map(|b| b.to_f64_vec())
                        .unwrap_or_default();
                    m.zero_grad();
                    outs.push((y, dx, gw, gb));
                }
                (m, outs)
            })
        })
        .collect();
    let ranks: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut reference_grads = Vec::new();
    {
        // the reference's gradients per step (it accumulated; recompute step by step)
        let mut r = new_bn(dtype);
        for s in 0..3 {
            let x = batch(s, total);
            let gy: Vec<f64> = x.iter().map(|v| (v * 1.7).sin()).collect();
            step::<T>(&mut r, &x, total, cl, &gy);
            reference_grads.push((
                r.grad("weight").unwrap().unwrap().to_f64_vec(),
                r.grad("bias").unwrap().unwrap().to_f64_vec(),
            ));
            r.zero_grad();
        }
    }
    for s in 0..3 {
        let y: Vec<f64> = ranks.iter().flat_map(|(_, o)| o[s].0.clone()).collect();
        let dx: Vec<f64> = ranks.iter().flat_map(|(_, o)| o[s].1.clone()).collect();
        close(
            &y,
            &ref_steps[s].0,
            tol,
            &format!("{:?} cl={cl} step {s} y", T::DTYPE),
        );
        close(
            &dx,
            &ref_steps[s].1,
            tol,
            &format!("{:?} cl={cl} step {s} dx", T::DTYPE),
        );
        // local parameter gradients sum to the full-batch ones
        for (k, name) in [(2usize, "grad_weight"), (3, "grad_bias")] {
            let mut sum = vec![0.0; C];
            for (_, o) in &ranks {
                let g = if k == 2 { &o[s].2 } else { &o[s].3 };
                for (a, b) in sum.iter_mut().zip(g) {
                    *a += b;
                }
            }
            let want = if k == 2 {
                &reference_grads[s].0
            } else {
                &reference_grads[s].1
            };
            close(
                &sum,
                want,
                tol * 10.0,
                &format!("{:?} cl={cl} step {s} {name}", T::DTYPE),
            );
        }
    }
    for (m, _) in &ranks {
        close(
            &tensor(m, "running_mean"),
            &tensor(&reference, "running_mean"),
            1e-5,
            "running_mean",
        );
        close(
            &tensor(m, "running_var"),
            &tensor(&reference, "running_var"),
            1e-5,
            "running_var",
        );
        assert_eq!(m.state("num_batches_tracked").unwrap(), State::Counter(3));
    }
    // eval: plain BatchNorm with the (identical) running statistics, no exchange
    let (mut m0, _) = ranks.into_iter().next().unwrap();
    m0.eval();
    reference.eval();
    let x = batch(9, total);
    let (y, _) = step::<T>(
        &mut m0,
        &x[..slices[0] * per],
        slices[0],
        cl,
        &x[..slices[0] * per],
    );
    let (yr, _) = step::<T>(&mut reference, &x, total, cl, &x);
    close(&y, &yr[..slices[0] * per], tol, "eval");
}
