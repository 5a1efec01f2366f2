//! SyncBatchNorm on CUDA (`CudaDevice::sync_batch_norm` through `CudaModule`): K in-process
//! ranks, each with its own device (the GPU when there is one, else the host emulation),
//! holding uneven slices of a batch (one of them empty), against one CPU BatchNorm over the
//! concatenated batch: outputs, running statistics, counter, dx, and parameter gradients
//! summed over the ranks; and a failing collective leaving every rank's state unchanged.

mod emu_common;

use std::sync::Arc;

use emu_common::{close, host, host_mut};
use normkit::backend::cuda::device::CudaDevice;
use normkit::comm::{Communicator, LocalCommunicator};
use normkit::layers::{BatchNorm, BatchNormConfig, BatchNormKind, CudaModule, Module, State};
use normkit::{Buffer, DType, Error, ErrorKind, Layout, Result};

const C: usize = 3;
const SPATIAL: [usize; 2] = [2, 3];

fn shape(n: usize) -> Vec<usize> {
    [vec![n, C], SPATIAL.to_vec()].concat()
}

fn config(pd: DType) -> BatchNormConfig {
    let mut c = BatchNormConfig::new(C);
    c.dtype = pd;
    c
}

/// What one rank saw after its steps.
struct RankResult {
    y: Vec<Vec<f64>>,
    dx: Vec<Vec<f64>>,
    state: Vec<(&'static str, State)>,
    grads: [Vec<f64>; 2],
}

#[allow(clippy::too_many_arguments)]
fn run_rank(
    dev: CudaDevice,
    comm: Arc<dyn Communicator>,
    d: DType,
    pd: DType,
    lay: Layout,
    xs: Vec<Buffer>,
    gs: Vec<Buffer>,
    n: usize,
) -> Result<RankResult> {
    let bn = BatchNorm::new(BatchNormKind::SyncBatchNorm, config(pd)).into_sync(Some(comm));
    let mut m = CudaModule::new(bn, &dev)?;
    let sh = shape(n);
    let len: usize = sh.iter().product();
    let (mut ys, mut dxs) = (Vec::new(), Vec::new());
    for (xb, gb) in xs.iter().zip(&gs) {
        let (xd, gd) = (dev.upload_buffer(xb)?, dev.upload_buffer(gb)?);
        let mut yd = dev.alloc(d, len)?;
        let mut dxd = dev.alloc(d, len)?;
        m.forward(&xd.view_as(&sh, lay)?, &mut yd.view_mut_as(&sh, lay)?)?;
        m.backward(
            &xd.view_as(&sh, lay)?,
            &gd.view_as(&sh, lay)?,
            Some(&mut dxd.view_mut_as(&sh, lay)?),
        )?;
        ys.push(yd.download_f64()?);
        dxs.push(dxd.download_f64()?);
    }
    let grad = |name| -> Result<Vec<f64>> {
        Ok(m.grad(name)?.map(|b| b.to_f64_vec()).unwrap_or_default())
    };
    Ok(RankResult {
        y: ys,
        dx: dxs,
        state: m
            .state_names()
            .into_iter()
            .map(|n| (n, m.state(n).unwrap()))
            .collect(),
        grads: [grad("weight")?, grad("bias")?],
    })
}

#[test]
fn ranks_with_uneven_batches_match_one_batch_norm() {
    let Some(dev0) = emu_common::device() else {
        return;
    };
    let sizes = [3usize, 0, 2];
    let steps = 2;
    for (d, pd) in [(DType::F32, DType::F32), (DType::BF16, DType::F32)] {
        for lay in [Layout::Contiguous, Layout::ChannelsLast] {
            let total: usize = sizes.iter().sum();
            let per = C * SPATIAL.iter().product::<usize>();
            // the whole batch per step, and its slices by rank (N is outermost in both layouts)
            let whole: Vec<(Vec<f64>, Vec<f64>)> = (0..steps)
                .map(|k| {
                    (
                        emu_common::data(total * per, 70 + k as u64, 5.0),
                        emu_common::data(total * per, 80 + k as u64, 0.0),
                    )
                })
                .collect();
            let slice = |v: &Vec<f64>, r: usize| -> Buffer {
                let start: usize = sizes[..r].iter().sum::<usize>() * per;
                Buffer::from_f64(d, &v[start..start + sizes[r] * per])
            };
            let group = LocalCommunicator::group(sizes.len());
            let handles: Vec<_> = group
                .into_iter()
                .enumerate()
                .map(|(r, comm)| {
                    let dev = dev0.clone();
                    let xs: Vec<Buffer> = whole.iter().map(|(x, _)| slice(x, r)).collect();
                    let gs: Vec<Buffer> = whole.iter().map(|(_, g)| slice(g, r)).collect();
                    let n = sizes[r];
                    std::thread::spawn(move || run_rank(dev, Arc::new(comm), d, pd, lay, xs, gs, n))
                })
                .collect();
            let results: Vec<RankResult> = handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect();
            // one CPU BatchNorm over the whole batch
            let mut bn = BatchNorm::new(BatchNormKind::BatchNorm2d, config(pd));
            let sh = shape(total);
            for (k, (x, g)) in whole.iter().enumerate() {
                let (xb, gb) = (Buffer::from_f64(d, x), Buffer::from_f64(d, g));
                let mut yb = Buffer::filled(d, x.len(), 0.0);
                let mut dxb = Buffer::filled(d, x.len(), 0.0);
                bn.forward(&host(&xb, &sh, lay), &mut host_mut(&mut yb, &sh, lay))
                    .unwrap();
                bn.backward(
                    &host(&xb, &sh, lay),
                    &host(&gb, &sh, lay),
                    Some(&mut host_mut(&mut dxb, &sh, lay)),
                )
                .unwrap();
                let (y, dx) = (yb.to_f64_vec(), dxb.to_f64_vec());
                let mut start = 0;
                for (r, res) in results.iter().enumerate() {
                    let end = start + sizes[r] * per;
                    let what = format!("{d} {lay:?} step {k} rank {r}");
                    close(&format!("{what} y"), d, &res.y[k], &y[start..end]);
                    close(&format!("{what} dx"), d, &res.dx[k], &dx[start..end]);
                    start = end;
                }
            }
            for (r, res) in results.iter().enumerate() {
                for (name, st) in &res.state {
                    match (st, bn.state(name).unwrap()) {
                        (State::Tensor(a), State::Tensor(b)) => close(
                            &format!("{d} {lay:?} rank {r} {name}"),
                            d,
                            &a.to_f64_vec(),
                            &b.to_f64_vec(),
                        ),
                        (a, b) => assert_eq!(*a, b, "rank {r} {name}"),
                    }
                }
            }
            // parameter gradients: each rank's own sums; their sum is the whole batch's
            for (i, name) in ["weight", "bias"].iter().enumerate() {
                let want = bn.grad(name).unwrap().unwrap().to_f64_vec();
                let sum: Vec<f64> = (0..C)
                    .map(|c| {
                        results
                            .iter()
                            .filter(|r| !r.grads[i].is_empty())
                            .map(|r| r.grads[i][c])
                            .sum()
                    })
                    .collect();
                close(
                    &format!("{d} {lay:?} grad {name} summed over ranks"),
                    d,
                    &sum,
                    &want,
                );
            }
        }
    }
}

/// One rank's dx per step and parameter gradients (weight, bias).
type Backward = (Vec<Vec<f64>>, [Vec<f64>; 2]);

/// The CPU's SyncBatchNorm on one rank, as [`run_rank`]: dx per step and the parameter
/// gradients.
fn run_rank_cpu(
    comm: Arc<dyn Communicator>,
    lay: Layout,
    xs: Vec<Buffer>,
    gs: Vec<Buffer>,
    n: usize,
) -> Result<Backward> {
    let mut m =
        BatchNorm::new(BatchNormKind::SyncBatchNorm, config(DType::F32)).into_sync(Some(comm));
    let sh = shape(n);
    let mut dxs = Vec::new();
    for (xb, gb) in xs.iter().zip(&gs) {
        let mut yb = Buffer::filled(DType::F32, xb.len(), 0.0);
        let mut dxb = Buffer::filled(DType::F32, xb.len(), 0.0);
        m.forward(&host(xb, &sh, lay), &mut host_mut(&mut yb, &sh, lay))?;
        m.backward(
            &host(xb, &sh, lay),
            &host(gb, &sh, lay),
            Some(&mut host_mut(&mut dxb, &sh, lay)),
        )?;
        dxs.push(dxb.to_f64_vec());
    }
    let grad = |name| -> Result<Vec<f64>> {
        Ok(m.grad(name)?.map(|b| b.to_f64_vec()).unwrap_or_default())
    };
    Ok((dxs, [grad("weight")?, grad("bias")?]))
}

/// f32 data near 1e4 with a spread of 1e-2: SyncBatchNorm keeps its global saved mean as given
/// in the backward (the CPU op does: recovering its rounding would take one more collective),
/// so the device's reduce kernel must not recover it from this rank's slice, as plain
/// BatchNorm's does; dx and each rank's parameter gradients match the CPU's SyncBatchNorm.
#[test]
fn a_large_mean_keeps_the_global_saved_mean_as_the_cpu_op_does() {
    let Some(dev0) = emu_common::device() else {
        return;
    };
    let sizes = [3usize, 2];
    let per = C * SPATIAL.iter().product::<usize>();
    for lay in [Layout::Contiguous, Layout::ChannelsLast] {
        let (xs, gs): (Vec<Buffer>, Vec<Buffer>) = sizes
            .iter()
            .enumerate()
            .map(|(r, &n)| {
                let x: Vec<f64> = emu_common::data(n * per, 90 + r as u64, 0.0)
                    .iter()
                    .map(|v| 1e4 + v * 5e-3)
                    .collect();
                let g = emu_common::data(n * per, 95 + r as u64, 0.0);
                (
                    Buffer::from_f64(DType::F32, &x),
                    Buffer::from_f64(DType::F32, &g),
                )
            })
            .unzip();
        let spawn_all = |cpu: bool| -> Vec<Backward> {
            let handles: Vec<_> = LocalCommunicator::group(sizes.len())
                .into_iter()
                .enumerate()
                .map(|(r, comm)| {
                    let (dev, n) = (dev0.clone(), sizes[r]);
                    let (x, g) = (vec![xs[r].clone()], vec![gs[r].clone()]);
                    std::thread::spawn(move || {
                        if cpu {
                            run_rank_cpu(Arc::new(comm), lay, x, g, n)
                        } else {
                            run_rank(dev, Arc::new(comm), DType::F32, DType::F32, lay, x, g, n)
                                .map(|res| (res.dx, res.grads))
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        };
        let (device, cpu) = (spawn_all(false), spawn_all(true));
        for (r, (d, c)) in device.iter().zip(&cpu).enumerate() {
            let what = format!("{lay:?} rank {r}");
            close(&format!("{what} dx"), DType::F32, &d.0[0], &c.0[0]);
            close(&format!("{what} grad weight"), DType::F32, &d.1[0], &c.1[0]);
            close(&format!("{what} grad bias"), DType::F32, &d.1[1], &c.1[1]);
        }
    }
}

/// A communicator whose collectives fail on every rank.
struct Failing;

impl Communicator for Failing {
    fn world_size(&self) -> usize {
        2
    }
    fn rank(&self) -> usize {
        0
    }
    fn all_gather(&self, _: &[f64], _: &mut [f64]) -> Result<()> {
        Err(Error::new(
            ErrorKind::Communication,
            "test",
            "all_gather",
            "success",
            "link down",
        ))
    }
    fn all_reduce_sum(&self, _: &mut [f64]) -> Result<()> {
        Err(Error::new(
            ErrorKind::Communication,
            "test",
            "all_reduce_sum",
            "success",
            "link down",
        ))
    }
}

#[test]
fn a_failing_collective_leaves_the_state_unchanged() {
    let Some(dev) = emu_common::device() else {
        return;
    };
    let bn = BatchNorm::new(BatchNormKind::SyncBatchNorm, config(DType::F32))
        .into_sync(Some(Arc::new(Failing)));
    let mut m = CudaModule::new(bn, &dev).unwrap();
    let before: Vec<_> = m
        .state_names()
        .into_iter()
        .map(|n| m.state(n).unwrap())
        .collect();
    let sh = shape(2);
    let x = dev
        .upload_buffer(&Buffer::from_f64(DType::F32, &emu_common::data(36, 1, 0.0)))
        .unwrap();
    let mut y = dev.alloc(DType::F32, 36).unwrap();
    let e = m
        .forward(&x.view(&sh).unwrap(), &mut y.view_mut(&sh).unwrap())
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Communication, "{e}");
    let after: Vec<_> = m
        .state_names()
        .into_iter()
        .map(|n| m.state(n).unwrap())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn an_empty_rank_takes_part_and_overwrites_its_parameter_gradients() {
    use normkit::backend::cuda::backward::{
        CudaNormBackwardArgs, DeviceForwardStats, DeviceGradients,
    };
    let Some(dev) = emu_common::device() else {
        return;
    };
    let x = dev.alloc(DType::F32, 0).unwrap();
    let stats = dev.upload(&[0.0f32, 1.0, 2.0]).unwrap();
    let mut dx = dev.alloc(DType::F32, 0).unwrap();
    let mut gw = dev.upload(&[5.0f32; C]).unwrap();
    let sh = shape(0);
    dev.sync_batch_norm_backward(
        &x.view(&sh).unwrap(),
        &x.view(&sh).unwrap(),
        CudaNormBackwardArgs {
            weight: None,
            stats: DeviceForwardStats::Saved {
                mean: stats.view(&[C]).unwrap(),
                invstd: stats.view(&[C]).unwrap(),
            },
            grads: DeviceGradients {
                grad_input: Some(dx.view_mut(&sh).unwrap()),
                grad_weight: Some(gw.view_mut(&[C]).unwrap()),
                grad_bias: None,
                accumulate: false,
            },
        },
        4.0,
        &emu_common::Mirror,
    )
    .unwrap();
    assert_eq!(gw.download::<f32>().unwrap(), vec![0.0; C]);
}
