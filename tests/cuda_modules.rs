//! Modules on a CUDA device (`CudaModule`, state in device memory) against the same modules on
//! the CPU: train steps (running statistics, counter, saved statistics), eval, backward with
//! accumulated parameter gradients, lazy materialisation, state load/read, reset and the way
//! back to the host. Runs on the GPU (feature `cuda`) or on the host emulation.

mod emu_common;

use normkit::backend::cuda::device::CudaDevice;
use normkit::layers::{
    AnyModule, BatchNorm, BatchNormConfig, BatchNormKind, CudaModule, GroupNorm, GroupNormConfig,
    InstanceNorm, InstanceNormConfig, InstanceNormKind, LayerNorm, LayerNormConfig,
    LocalResponseNorm, Module, State,
};
use normkit::{Buffer, DType, ErrorKind, Layout};

use emu_common::{close, host, host_mut};

fn compare_state(what: &str, d: DType, cpu: &dyn Module, cuda: &CudaModule) {
    assert_eq!(cpu.state_names(), cuda.state_names(), "{what}: names");
    for name in cpu.state_names() {
        match (cpu.state(name).unwrap(), cuda.state(name).unwrap()) {
            (State::Tensor(a), State::Tensor(b)) => close(
                &format!("{what} {name}"),
                d,
                &b.to_f64_vec(),
                &a.to_f64_vec(),
            ),
            (a, b) => assert_eq!(a, b, "{what} {name}"),
        }
    }
    for name in ["weight", "bias"] {
        if let Ok(Some(a)) = cpu.grad(name) {
            let b = cuda.grad(name).unwrap().expect("device gradient");
            close(
                &format!("{what} grad {name}"),
                d,
                &b.to_f64_vec(),
                &a.to_f64_vec(),
            );
        }
    }
}

/// Runs `steps` (true = a training step, false = eval) forward + backward on a CPU module and
/// on the same module moved to the device, comparing everything after each step.
fn run(
    dev: &CudaDevice,
    make: &dyn Fn() -> AnyModule,
    d: DType,
    shape: &[usize],
    lay: Layout,
    steps: &[bool],
) {
    let mut cpu = make();
    let mut cuda = CudaModule::new(make(), dev).unwrap();
    let what = format!("{} {d} {shape:?} {lay:?}", cuda.name());
    let n: usize = shape.iter().product();
    for (k, &training) in steps.iter().enumerate() {
        let xb = Buffer::from_f64(d, &emu_common::data(n, 40 + k as u64, 2.0));
        let gb = Buffer::from_f64(d, &emu_common::data(n, 50 + k as u64, 0.0));
        if training {
            cpu.as_module_mut().train();
            cuda.train();
        } else {
            cpu.as_module_mut().eval();
            cuda.eval();
        }
        let mut yb = Buffer::filled(d, n, 0.0);
        let mut dxb = Buffer::filled(d, n, 0.0);
        let m = cpu.as_module_mut();
        m.forward(&host(&xb, shape, lay), &mut host_mut(&mut yb, shape, lay))
            .unwrap();
        m.backward(
            &host(&xb, shape, lay),
            &host(&gb, shape, lay),
            Some(&mut host_mut(&mut dxb, shape, lay)),
        )
        .unwrap();
        let (xd, gd) = (
            dev.upload_buffer(&xb).unwrap(),
            dev.upload_buffer(&gb).unwrap(),
        );
        let mut yd = dev.alloc(d, n).unwrap();
        let mut dxd = dev.alloc(d, n).unwrap();
        let xv = xd.view_as(shape, lay).unwrap();
        cuda.forward(&xv, &mut yd.view_mut_as(shape, lay).unwrap())
            .unwrap();
        cuda.backward(
            &xv,
            &gd.view_as(shape, lay).unwrap(),
            Some(&mut dxd.view_mut_as(shape, lay).unwrap()),
        )
        .unwrap();
        let step = format!("{what} step {k} training={training}");
        close(
            &format!("{step} y"),
            d,
            &yd.download_f64().unwrap(),
            &yb.to_f64_vec(),
        );
        close(
            &format!("{step} dx"),
            d,
            &dxd.download_f64().unwrap(),
            &dxb.to_f64_vec(),
        );
        compare_state(&step, d, cpu.as_module(), &cuda);
    }
    // the way back: a host module with the device's state
    let back = cuda.into_host().unwrap();
    for name in cpu.as_module().state_names() {
        if let (State::Tensor(a), State::Tensor(b)) = (
            cpu.as_module().state(name).unwrap(),
            back.as_module().state(name).unwrap(),
        ) {
            close(
                &format!("{what} into_host {name}"),
                d,
                &b.to_f64_vec(),
                &a.to_f64_vec(),
            );
        }
    }
}

const TRAIN_EVAL: [bool; 3] = [true, true, false];

#[test]
fn batch_norm_modules_match_the_cpu() {
    let Some(dev) = emu_common::device() else {
        return;
    };
    for (d, pd) in [
        (DType::F32, DType::F32),
        (DType::BF16, DType::F32),
        (DType::BF16, DType::BF16),
        (DType::F64, DType::F64),
    ] {
        for lay in [Layout::Contiguous, Layout::ChannelsLast] {
            let make = || -> AnyModule {
                let mut c = BatchNormConfig::new(5);
                c.dtype = pd;
                BatchNorm::new(BatchNormKind::BatchNorm2d, c).into()
            };
            run(&dev, &make, d, &[3, 5, 4, 3], lay, &TRAIN_EVAL);
        }
        // cumulative momentum, BatchNorm1d on (N, C)
        let make = || -> AnyModule {
            let mut c = BatchNormConfig::new(7);
            (c.dtype, c.momentum) = (pd, None);
            BatchNorm::new(BatchNormKind::BatchNorm1d, c).into()
        };
        run(&dev, &make, d, &[13, 7], Layout::Contiguous, &TRAIN_EVAL);
        // lazy, without running statistics
        let make = || -> AnyModule {
            let mut c = BatchNormConfig::new(0);
            (c.dtype, c.track_running_stats) = (pd, false);
            BatchNorm::lazy(BatchNormKind::BatchNorm3d, c).into()
        };
        run(
            &dev,
            &make,
            d,
            &[2, 3, 2, 3, 2],
            Layout::Contiguous,
            &TRAIN_EVAL,
        );
    }
}

#[test]
fn instance_group_layer_and_lrn_modules_match_the_cpu() {
    let Some(dev) = emu_common::device() else {
        return;
    };
    for (d, pd) in [
        (DType::F32, DType::F32),
        (DType::F16, DType::F32),
        (DType::F64, DType::F64),
    ] {
        let make = || -> AnyModule {
            let mut c = InstanceNormConfig::new(4);
            (c.dtype, c.affine) = (pd, true);
            InstanceNorm::new(InstanceNormKind::InstanceNorm2d, c).into()
        };
        run(
            &dev,
            &make,
            d,
            &[2, 4, 3, 5],
            Layout::ChannelsLast,
            &[true, false],
        );
        // tracked running statistics (updated on the device in training, used in eval)
        let make = || -> AnyModule {
            let mut c = InstanceNormConfig::new(4);
            (c.dtype, c.affine, c.track_running_stats) = (pd, true, true);
            InstanceNorm::new(InstanceNormKind::InstanceNorm2d, c).into()
        };
        run(
            &dev,
            &make,
            d,
            &[3, 4, 5, 2],
            Layout::Contiguous,
            &TRAIN_EVAL,
        );
        // unbatched (C, L) input
        let make = || -> AnyModule {
            let mut c = InstanceNormConfig::new(3);
            (c.dtype, c.affine) = (pd, true);
            InstanceNorm::new(InstanceNormKind::InstanceNorm1d, c).into()
        };
        run(&dev, &make, d, &[3, 13], Layout::Contiguous, &[true]);
        let make = || -> AnyModule {
            let mut c = GroupNormConfig::new(3, 6);
            c.dtype = pd;
            GroupNorm::new(c).unwrap().into()
        };
        run(&dev, &make, d, &[2, 6, 7], Layout::Contiguous, &TRAIN_EVAL);
        let make = || -> AnyModule {
            let mut c = LayerNormConfig::new(&[3, 5]);
            c.dtype = pd;
            LayerNorm::new(c).into()
        };
        run(&dev, &make, d, &[4, 3, 5], Layout::Contiguous, &TRAIN_EVAL);
        let make = || -> AnyModule { LocalResponseNorm::new(3).into() };
        run(&dev, &make, d, &[2, 5, 7], Layout::ChannelsLast, &[true]);
    }
}

#[test]
fn device_module_state_and_errors() {
    let Some(dev) = emu_common::device() else {
        return;
    };
    let mut m = CudaModule::new(
        BatchNorm::lazy(BatchNormKind::BatchNorm1d, BatchNormConfig::new(0)),
        &dev,
    )
    .unwrap();
    // lazy: state not readable before the first input
    assert_eq!(
        m.state("weight").unwrap_err().kind,
        ErrorKind::Uninitialized
    );
    assert!(!m.is_initialized());
    // backward before forward
    let x = dev.upload(&[1.0f32, 2.0, 3.0, 5.0, 8.0, 13.0]).unwrap();
    let e = m
        .backward(&x.view(&[3, 2]).unwrap(), &x.view(&[3, 2]).unwrap(), None)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    let mut y = dev.alloc(DType::F32, 6).unwrap();
    m.forward(&x.view(&[3, 2]).unwrap(), &mut y.view_mut(&[3, 2]).unwrap())
        .unwrap();
    assert!(m.is_initialized());
    assert_eq!(m.state("num_batches_tracked").unwrap(), State::Counter(1));
    // load a running mean, read it back from the device
    m.load_state("running_mean", &State::Tensor(Buffer::F32(vec![0.5, -0.5])))
        .unwrap();
    assert_eq!(
        m.state("running_mean").unwrap(),
        State::Tensor(Buffer::F32(vec![0.5, -0.5]))
    );
    let e = m
        .load_state("running_mean", &State::Tensor(Buffer::F32(vec![1.0; 3])))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ShapeMismatch);
    // backward with a different input shape than the forward's
    let e = m
        .backward(&x.view(&[2, 3]).unwrap(), &x.view(&[2, 3]).unwrap(), None)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ShapeMismatch);
    // reset: running statistics back to 0 / 1 on the device
    m.reset_running_stats().unwrap();
    assert_eq!(
        m.state("running_var").unwrap(),
        State::Tensor(Buffer::F32(vec![1.0, 1.0]))
    );
    assert_eq!(m.state("num_batches_tracked").unwrap(), State::Counter(0));
    // a rank the kind rejects: the host module's error, counter unchanged
    let e = m
        .forward(&x.view(&[6]).unwrap(), &mut y.view_mut(&[6]).unwrap())
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ShapeMismatch);
    assert_eq!(m.state("num_batches_tracked").unwrap(), State::Counter(0));
}
