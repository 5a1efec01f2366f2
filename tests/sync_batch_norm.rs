//! SyncBatchNorm over K in-process ranks holding uneven slices of a batch (one empty) equals
//! one BatchNorm over the whole batch: outputs, running statistics, counter and gradients.

use normkit::comm::{Communicator, LocalCommunicator};
use normkit::layers::{
    BatchNorm, BatchNormConfig, BatchNormKind, Module, State, convert_sync_batchnorm,
};
use normkit::{Buffer, DType, ElementData, ErrorKind, Tensor, TensorMut, bf16};
use std::sync::Arc;

const C: usize = 3;
const HW: [usize; 2] = [2, 3];
const SLICES: [usize; 3] = [2, 0, 3];

fn shape(n: usize) -> [usize; 4] {
    [n, C, HW[0], HW[1]]
}

/// Logical (row-major NCHW) values of the whole batch for step `step`.
fn batch(step: usize) -> Vec<f64> {
    let n: usize = SLICES.iter().sum::<usize>() * C * HW[0] * HW[1];
    (0..n)
        .map(|i| ((i * 31 + step * 7) % 17) as f64 * 0.37 - 2.0 + step as f64)
        .collect()
}

/// Converts logical values of shape `sh` into memory order for `channels_last`.
fn to_memory<T: ElementData>(logical: &[f64], sh: &[usize], channels_last: bool) -> Vec<T> {
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

fn view<'a, T: ElementData>(data: &'a [T], sh: &[usize], cl: bool) -> Tensor<'a> {
    if cl {
        Tensor::channels_last(data, sh).unwrap()
    } else {
        Tensor::new(data, sh).unwrap()
    }
}

fn view_mut<'a, T: ElementData>(data: &'a mut [T], sh: &[usize], cl: bool) -> TensorMut<'a> {
    if cl {
        TensorMut::channels_last(data, sh).unwrap()
    } else {
        TensorMut::new(data, sh).unwrap()
    }
}

/// One training step of `m` on logical input `x`: returns (logical y, logical dx).
fn step<T: ElementData>(
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

fn tensor(m: &BatchNorm, name: &str) -> Vec<f64> {
    match m.state(name).unwrap() {
        State::Tensor(b) => b.to_f64_vec(),
        State::Counter(_) => panic!("{name}"),
    }
}

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

fn new_bn(dtype: DType) -> BatchNorm {
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

fn run_case<T: ElementData>(cl: bool, tol: f64) {
    let dtype = T::DTYPE.stat_dtype();
    let per = C * HW[0] * HW[1];
    let total: usize = SLICES.iter().sum();
    // reference: one BatchNorm over the whole batch
    let mut reference = new_bn(dtype);
    let mut ref_steps = Vec::new();
    for s in 0..3 {
        let x = batch(s);
        let gy: Vec<f64> = x.iter().map(|v| (v * 1.7).sin()).collect();
        ref_steps.push(step::<T>(&mut reference, &x, total, cl, &gy));
    }
    // K ranks, each with its own module converted to SyncBatchNorm over an in-process group
    let group = LocalCommunicator::group(SLICES.len());
    let handles: Vec<_> = group
        .into_iter()
        .enumerate()
        .map(|(rank, comm)| {
            std::thread::spawn(move || {
                let start: usize = SLICES[..rank].iter().sum();
                let n = SLICES[rank];
                let pg: Arc<dyn Communicator> = Arc::new(comm);
                let mut m = convert_sync_batchnorm(vec![new_bn(dtype)], Some(pg)).remove(0);
                let mut outs = Vec::new();
                for s in 0..3 {
                    let x = batch(s);
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
            let x = batch(s);
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
    let x = batch(9);
    let (y, _) = step::<T>(
        &mut m0,
        &x[..SLICES[0] * per],
        SLICES[0],
        cl,
        &x[..SLICES[0] * per],
    );
    let (yr, _) = step::<T>(&mut reference, &x, total, cl, &x);
    close(&y, &yr[..SLICES[0] * per], tol, "eval");
}

#[test]
fn sync_batch_norm_equals_full_batch_f32() {
    run_case::<f32>(false, 1e-4);
    run_case::<f32>(true, 1e-4);
}

#[test]
fn sync_batch_norm_equals_full_batch_bf16() {
    run_case::<bf16>(false, 2e-2);
    run_case::<bf16>(true, 2e-2);
}

/// A communicator that fails every collective (on every rank).
struct Broken;
impl Communicator for Broken {
    fn world_size(&self) -> usize {
        2
    }
    fn rank(&self) -> usize {
        0
    }
    fn all_gather(&self, _: &[f64], _: &mut [f64]) -> normkit::Result<()> {
        Err(normkit::Error::new(
            ErrorKind::Backend,
            "test",
            "all_gather",
            "a working network",
            "a broken one",
        ))
    }
    fn all_reduce_sum(&self, _: &mut [f64]) -> normkit::Result<()> {
        Err(normkit::Error::new(
            ErrorKind::Backend,
            "test",
            "all_reduce",
            "a working network",
            "a broken one",
        ))
    }
}

#[test]
fn a_failing_communicator_leaves_the_state_unchanged() {
    let mut m = new_bn(DType::F32).into_sync(Some(Arc::new(Broken)));
    let x: Vec<f32> = batch(0).iter().map(|&v| v as f32).collect();
    let mut y = vec![0.0f32; x.len()];
    let sh = shape(SLICES.iter().sum());
    let e = m
        .forward(
            &Tensor::new(&x, &sh).unwrap(),
            &mut TensorMut::new(&mut y, &sh).unwrap(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Communication);
    assert!(e.to_string().contains("broken"), "{e}");
    assert_eq!(m.state("num_batches_tracked").unwrap(), State::Counter(0));
    assert_eq!(tensor(&m, "running_mean"), vec![0.0; C]);
    assert_eq!(tensor(&m, "running_var"), vec![1.0; C]);
    assert!(
        m.backward(
            &Tensor::new(&x, &sh).unwrap(),
            &Tensor::new(&x, &sh).unwrap(),
            None
        )
        .is_err()
    );
}

#[test]
fn mismatched_channel_counts_fail_on_every_rank() {
    let group = LocalCommunicator::group(2);
    let handles: Vec<_> = group
        .into_iter()
        .enumerate()
        .map(|(rank, comm)| {
            std::thread::spawn(move || {
                let c = 2 + rank; // ranks disagree on C
                let mut m = BatchNorm::new(BatchNormKind::SyncBatchNorm, BatchNormConfig::new(c));
                m.set_process_group(Some(Arc::new(comm)));
                let x = vec![1.0f32; 2 * c * 4];
                let mut y = x.clone();
                let r = m.forward(
                    &Tensor::new(&x, &[2, c, 4]).unwrap(),
                    &mut TensorMut::new(&mut y, &[2, c, 4]).unwrap(),
                );
                (r, m)
            })
        })
        .collect();
    for h in handles {
        let (r, m) = h.join().unwrap();
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Communication);
        assert_eq!(m.state("num_batches_tracked").unwrap(), State::Counter(0));
    }
}
