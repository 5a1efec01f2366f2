//! SyncBatchNorm over K in-process ranks holding uneven slices of a batch (one empty) equals
//! one BatchNorm over the whole batch: outputs, running statistics, counter and gradients.

mod sync_common;

use normkit::comm::{Communicator, LocalCommunicator};
use normkit::layers::{BatchNorm, BatchNormConfig, BatchNormKind, Module, State};
use normkit::{DType, ElementData, ErrorKind, Tensor, TensorMut, bf16};
use std::sync::Arc;
use sync_common::{C, SLICES, batch, new_bn, run_case, shape, tensor};

/// SyncBatchNorm over the default 3-rank in-process group.
fn local_case<T: ElementData>(cl: bool, tol: f64) {
    let group = LocalCommunicator::group(SLICES.len())
        .into_iter()
        .map(|c| Arc::new(c) as Arc<dyn Communicator>)
        .collect();
    run_case::<T>(cl, tol, &SLICES, group);
}

#[test]
fn sync_batch_norm_equals_full_batch_f32() {
    local_case::<f32>(false, 1e-4);
    local_case::<f32>(true, 1e-4);
}

#[test]
fn sync_batch_norm_equals_full_batch_bf16() {
    local_case::<bf16>(false, 2e-2);
    local_case::<bf16>(true, 2e-2);
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
    let x: Vec<f32> = batch(0, SLICES.iter().sum())
        .iter()
        .map(|&v| v as f32)
        .collect();
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
