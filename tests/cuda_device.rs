//! The CUDA device path: every op on a GPU against the CPU ops, and the error paths that need
//! no GPU (probe, device creation without a driver, validation shared with the CPU ops,
//! device-only checks, NVRTC compile errors).
//!
//! GPU tests skip with the probe's reason when there is no usable GPU, and fail instead when
//! `NORMKIT_REQUIRE_CUDA=1` (scripts/run-gpu-tests.sh sets it). Needs `--features cuda`.
#![cfg(feature = "cuda")]

use normkit::backend::cuda::device::{CudaDevice, CudaOp, DeviceBuffer};
use normkit::backend::cuda::emu::EmuDevice;
use normkit::backend::cuda::ops::{
    CudaBatchNormArgs, CudaGroupNormArgs, CudaInstanceNormArgs, CudaLayerNormArgs, DeviceTensor,
    DeviceTensorMut, InstanceNormPlan, plan_batch_norm, plan_group_norm, plan_instance_norm,
    plan_layer_norm, plan_local_response_norm,
};
use normkit::backend::cuda::{CudaAvailability, nvrtc, probe};
use normkit::comm::Communicator;
use normkit::device::{Device, DeviceRequest, select_device};
use normkit::ops::{
    BatchNormArgs, GroupNormArgs, InstanceNormArgs, LayerNormArgs, LrnArgs, batch_norm, group_norm,
    instance_norm, layer_norm, local_response_norm, sync_batch_norm,
};
use normkit::{Buffer, DType, ErrorKind, Layout, Tensor, TensorMut};

mod emu_common;
use emu_common::{host, host_mut};

fn require_cuda() -> bool {
    std::env::var("NORMKIT_REQUIRE_CUDA").as_deref() == Ok("1")
}

/// The GPU; without one, the host emulation (the same device ops, allocations and launches
/// on host memory, kernels run by the emulator), or `None` after printing why the test skips
/// (a failure under `NORMKIT_REQUIRE_CUDA=1`, or `NORMKIT_REQUIRE_CUDA_EMU=1` for the
/// emulation).
fn gpu(test: &str) -> Option<CudaDevice> {
    match probe() {
        CudaAvailability::Available { .. } => {
            let d = CudaDevice::new(0).expect("probe found a device, CudaDevice::new(0) failed");
            Some(d)
        }
        CudaAvailability::Unavailable { reason } => {
            assert!(!require_cuda(), "NORMKIT_REQUIRE_CUDA=1 but {reason}");
            match CudaDevice::emulated(EmuDevice {
                sms: 3,
                reverse_blocks: true,
                reverse_threads: false,
            }) {
                Ok(d) => {
                    eprintln!("{test}: no usable GPU ({reason}); running on the host emulation");
                    Some(d)
                }
                Err(e) => {
                    let require = std::env::var("NORMKIT_REQUIRE_CUDA_EMU").as_deref() == Ok("1");
                    assert!(!require, "NORMKIT_REQUIRE_CUDA_EMU=1 but {e}");
                    eprintln!("{test}: skipped, no usable GPU ({reason}) and {e}");
                    None
                }
            }
        }
    }
}

// ---------------------------------------------------------------- no GPU needed

#[test]
fn probe_and_device_selection_never_panic() {
    let p = probe();
    match &p {
        CudaAvailability::Unavailable { reason } => {
            assert!(!require_cuda(), "NORMKIT_REQUIRE_CUDA=1 but {reason}");
            let e = CudaDevice::new(0).unwrap_err();
            assert_eq!(e.kind, ErrorKind::DeviceUnavailable);
            assert_eq!(&e.got, reason);
            let s = select_device(DeviceRequest::Auto).unwrap();
            assert_eq!(s.device, Device::Cpu);
            assert_eq!(s.fallback_reason.as_deref(), Some(reason.as_str()));
            let e = select_device(DeviceRequest::Cuda(0)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::DeviceUnavailable);
        }
        CudaAvailability::Available { devices, .. } => {
            let e = CudaDevice::new(devices.len()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::DeviceUnavailable);
            assert_eq!(
                select_device(DeviceRequest::Auto).unwrap().device,
                Device::Cuda(0)
            );
        }
    }
}

#[test]
fn nvrtc_compile_errors_carry_the_log() {
    if let Err(e) = nvrtc::ensure_loaded() {
        let require = std::env::var("NORMKIT_REQUIRE_NVRTC").as_deref() == Ok("1");
        assert!(!require, "NORMKIT_REQUIRE_NVRTC=1: {e}");
        eprintln!("nvrtc_compile_errors_carry_the_log: skipped: {e}");
        return;
    }
    let src = "extern \"C\" __global__ void broken() { undefined_fn(); }\n";
    let e = nvrtc::compile_uncached(src, "broken.cu", &nvrtc::options_for(8, 0)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Backend);
    assert!(e.got.contains("undefined_fn"), "{e}");
}

/// A fake device address: planning never dereferences it.
const FAKE: u64 = 0x7f00_0000_0000;

fn dt<'a>(dtype: DType, shape: &[usize], layout: Layout, ptr: u64) -> DeviceTensor<'a> {
    // SAFETY: planning only reads the address, never the memory.
    unsafe { DeviceTensor::from_raw(ptr, dtype, shape, layout) }.unwrap()
}

fn dtm<'a>(dtype: DType, shape: &[usize], layout: Layout, ptr: u64) -> DeviceTensorMut<'a> {
    // SAFETY: as `dt`.
    unsafe { DeviceTensorMut::from_raw(ptr, dtype, shape, layout) }.unwrap()
}

#[test]
fn planning_reports_the_cpu_ops_errors() {
    let c = Layout::Contiguous;
    // GroupNorm: groups not dividing the channels
    let shape = [2, 6, 4];
    let xs = vec![0.0f32; 48];
    let mut ys = vec![0.0f32; 48];
    let cpu = group_norm(
        &Tensor::new(&xs, &shape).unwrap(),
        &mut TensorMut::new(&mut ys, &shape).unwrap(),
        GroupNormArgs::new(4),
    )
    .unwrap_err();
    let args = CudaGroupNormArgs {
        num_groups: 4,
        weight: None,
        bias: None,
        eps: 1e-5,
    };
    let dev = plan_group_norm(
        &dt(DType::F32, &shape, c, FAKE),
        &dtm(DType::F32, &shape, c, FAKE + 4096),
        &args,
    )
    .unwrap_err();
    assert_eq!(dev, cpu);

    // LayerNorm: weight of the wrong shape
    let w = vec![1.0f32; 5];
    let cpu = layer_norm(
        &Tensor::new(&xs, &shape).unwrap(),
        &mut TensorMut::new(&mut ys, &shape).unwrap(),
        LayerNormArgs {
            weight: Some(Tensor::new(&w, &[5]).unwrap()),
            ..LayerNormArgs::new(&[4])
        },
    )
    .unwrap_err();
    let dev = plan_layer_norm(
        &dt(DType::F32, &shape, c, FAKE),
        &dtm(DType::F32, &shape, c, FAKE + 4096),
        &CudaLayerNormArgs {
            normalized_shape: vec![4],
            weight: Some(dt(DType::F32, &[5], c, FAKE + 8192)),
            bias: None,
            eps: 1e-5,
        },
    )
    .unwrap_err();
    assert_eq!(dev, cpu);

    // BatchNorm: one value per channel in training; output shape mismatch
    let one = [1, 3];
    let (x1, mut y1) = (vec![0.0f64; 3], vec![0.0f64; 3]);
    let cpu = batch_norm(
        &Tensor::new(&x1, &one).unwrap(),
        &mut TensorMut::new(&mut y1, &one).unwrap(),
        BatchNormArgs {
            training: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    let dev = plan_batch_norm(
        &dt(DType::F64, &one, c, FAKE),
        &dtm(DType::F64, &one, c, FAKE + 64),
        &CudaBatchNormArgs {
            training: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(dev, cpu);
    let e = plan_batch_norm(
        &dt(DType::F64, &[2, 3], c, FAKE),
        &dtm(DType::F64, &[3, 2], c, FAKE + 64),
        &CudaBatchNormArgs::default(),
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ShapeMismatch);
    assert_eq!(e.operand, "output");

    // InstanceNorm without running statistics in inference; LRN size 0
    let (x2, mut y2) = (vec![0.0f32; 24], vec![0.0f32; 24]);
    let cpu = instance_norm(
        &Tensor::new(&x2, &[2, 3, 4]).unwrap(),
        &mut TensorMut::new(&mut y2, &[2, 3, 4]).unwrap(),
        InstanceNormArgs {
            use_input_stats: false,
            ..Default::default()
        },
    )
    .unwrap_err();
    let dev = plan_instance_norm(
        &dt(DType::F32, &[2, 3, 4], c, FAKE),
        &dtm(DType::F32, &[2, 3, 4], c, FAKE + 4096),
        &CudaInstanceNormArgs {
            weight: None,
            bias: None,
            running_mean: None,
            running_var: None,
            use_input_stats: false,
            momentum: 0.1,
            eps: 1e-5,
        },
    )
    .unwrap_err();
    assert_eq!(dev, cpu);
    let cpu = local_response_norm(
        &Tensor::new(&x2, &[2, 3, 4]).unwrap(),
        &mut TensorMut::new(&mut y2, &[2, 3, 4]).unwrap(),
        LrnArgs::new(0),
    )
    .unwrap_err();
    let dev = plan_local_response_norm(
        &dt(DType::F32, &[2, 3, 4], c, FAKE),
        &dtm(DType::F32, &[2, 3, 4], c, FAKE + 4096),
        &LrnArgs::new(0),
    )
    .unwrap_err();
    assert_eq!(dev, cpu);
}

#[test]
fn device_only_checks() {
    let (c, cl) = (Layout::Contiguous, Layout::ChannelsLast);
    // parameters must be in the compute dtype on CUDA (the CPU op accepts f16 weights)
    let e = plan_group_norm(
        &dt(DType::F16, &[2, 4, 3], c, FAKE),
        &dtm(DType::F16, &[2, 4, 3], c, FAKE + 4096),
        &CudaGroupNormArgs {
            num_groups: 2,
            weight: Some(dt(DType::F16, &[4], c, FAKE + 8192)),
            bias: None,
            eps: 1e-5,
        },
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnsupportedDType);
    // LayerNorm needs contiguous rows
    let e = plan_layer_norm(
        &dt(DType::F32, &[2, 4, 3], cl, FAKE),
        &dtm(DType::F32, &[2, 4, 3], cl, FAKE + 4096),
        &CudaLayerNormArgs {
            normalized_shape: vec![3],
            weight: None,
            bias: None,
            eps: 1e-5,
        },
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnsupportedLayout);
    // input and output layouts must agree
    let e = plan_local_response_norm(
        &dt(DType::F32, &[2, 4, 3], c, FAKE),
        &dtm(DType::F32, &[2, 4, 3], cl, FAKE + 4096),
        &LrnArgs::new(3),
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnsupportedLayout);
    // strided device views do not exist
    // SAFETY: not dereferenced.
    let e = unsafe { DeviceTensor::from_raw(FAKE, DType::F32, &[2, 2], Layout::Strided) };
    assert_eq!(e.unwrap_err().kind, ErrorKind::UnsupportedLayout);
    // shapes beyond the kernels' index range
    let huge = [1usize << 31, 1 << 31, 2];
    let e = plan_local_response_norm(
        &dt(DType::F32, &huge, c, FAKE),
        &dtm(DType::F32, &huge, c, FAKE + 4096),
        &LrnArgs::new(3),
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Overflow);
    let wide = [2usize, (i32::MAX as usize) + 1];
    let e = plan_batch_norm(
        &dt(DType::F32, &wide, c, FAKE),
        &dtm(DType::F32, &wide, c, FAKE + 4096),
        &CudaBatchNormArgs {
            training: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Overflow);
    // InstanceNorm with input statistics and running statistics plans the forward plus the
    // running-stat update
    let plan = plan_instance_norm(
        &dt(DType::F32, &[2, 4, 3], c, FAKE),
        &dtm(DType::F32, &[2, 4, 3], c, FAKE + 4096),
        &CudaInstanceNormArgs {
            weight: None,
            bias: None,
            running_mean: Some(dtm(DType::F32, &[4], c, FAKE + 8192)),
            running_var: None,
            use_input_stats: true,
            momentum: 0.25,
            eps: 1e-5,
        },
    )
    .unwrap();
    let Some(InstanceNormPlan::InputStats {
        running: Some(r), ..
    }) = plan
    else {
        panic!("expected input statistics with a running-stat update, got {plan:?}");
    };
    assert_eq!((r.running_mean, r.running_var), (FAKE + 8192, 0));
    assert_eq!((r.n, r.c, r.s, r.momentum), (2, 4, 3, 0.25));
    // ... in the compute dtype, like every parameter
    let e = plan_instance_norm(
        &dt(DType::F16, &[2, 4, 3], c, FAKE),
        &dtm(DType::F16, &[2, 4, 3], c, FAKE + 4096),
        &CudaInstanceNormArgs {
            weight: None,
            bias: None,
            running_mean: None,
            running_var: Some(dtm(DType::F16, &[4], c, FAKE + 8192)),
            use_input_stats: true,
            momentum: 0.1,
            eps: 1e-5,
        },
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnsupportedDType, "{e}");
}

// ---------------------------------------------------------------- on a GPU

fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 1.5
        })
        .collect()
}

fn upload(dev: &CudaDevice, b: &Buffer) -> DeviceBuffer {
    match b {
        Buffer::F32(v) => dev.upload(v),
        Buffer::F64(v) => dev.upload(v),
        Buffer::F16(v) => dev.upload(v),
        Buffer::BF16(v) => dev.upload(v),
    }
    .unwrap()
}

fn tol(d: DType) -> f64 {
    match d {
        DType::F64 => 1e-10,
        DType::F32 => 2e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
    }
}

fn close(what: &str, d: DType, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tol(d) * w.abs().max(1.0) || (g.is_nan() && w.is_nan());
        assert!(ok, "{what} [{d}] element {i}: cuda {g}, cpu {w}");
    }
}

fn dview<'a>(b: &'a DeviceBuffer, shape: &[usize], layout: Layout) -> DeviceTensor<'a> {
    match layout {
        Layout::ChannelsLast => b.view_channels_last(shape).unwrap(),
        _ => b.view(shape).unwrap(),
    }
}

fn dview_mut<'a>(b: &'a mut DeviceBuffer, shape: &[usize], layout: Layout) -> DeviceTensorMut<'a> {
    match layout {
        Layout::ChannelsLast => b.view_mut_channels_last(shape).unwrap(),
        _ => b.view_mut(shape).unwrap(),
    }
}

const LAYOUTS: [Layout; 2] = [Layout::Contiguous, Layout::ChannelsLast];

/// `(part, device, cpu)` for y and the saved mean and invstd of one op run on `dev` and on the
/// CPU from the same operands.
type Parts = Vec<(&'static str, Vec<f64>, Vec<f64>)>;

/// A comparison of device values with the CPU's ([`close`], [`same_incl_nonfinite`]).
type Compare = fn(&str, DType, &[f64], &[f64]);

/// Compares every part with `cmp`, labelled `what` and the part.
fn compare_parts(what: &str, d: DType, parts: Parts, cmp: Compare) {
    for (part, got, want) in parts {
        cmp(&format!("{what} {part}"), d, &got, &want);
    }
}

/// γ and β of `len` values in the statistics dtype of `d`: `values(len, seed)` and
/// `values(len, seed + 1)`.
fn affine(d: DType, len: usize, seed: u64) -> (Buffer, Buffer) {
    let sd = d.stat_dtype();
    (
        Buffer::from_f64(sd, &values(len, seed)),
        Buffer::from_f64(sd, &values(len, seed + 1)),
    )
}

/// LayerNorm over the trailing dims `ns` of `xs` (shape `shape`) in dtype `d`, with γ and β
/// from [`affine`]`(seed)`, on the CPU and on `dev`, every part compared with `cmp`.
#[allow(clippy::too_many_arguments)]
fn check_layer_norm(
    dev: &CudaDevice,
    d: DType,
    xs: &[f64],
    shape: &[usize],
    ns: &[usize],
    seed: u64,
    cmp: Compare,
    what: &str,
) {
    let (xb, n) = (Buffer::from_f64(d, xs), xs.len());
    let (wb, bb) = affine(d, ns.iter().product(), seed);
    let (xb, wb, bb) = (&xb, &wb, &bb);
    let mut yb = Buffer::filled(d, n, 0.0);
    let cpu = layer_norm(
        &host(xb, shape, Layout::Contiguous),
        &mut host_mut(&mut yb, shape, Layout::Contiguous),
        LayerNormArgs {
            weight: Some(Tensor::new(wb.as_data(), ns).unwrap()),
            bias: Some(Tensor::new(bb.as_data(), ns).unwrap()),
            ..LayerNormArgs::new(ns)
        },
    )
    .unwrap();
    let (xd, wd, bd) = (upload(dev, xb), upload(dev, wb), upload(dev, bb));
    let mut yd = dev.alloc(d, n).unwrap();
    let stats = dev
        .layer_norm(
            &xd.view(shape).unwrap(),
            &mut yd.view_mut(shape).unwrap(),
            CudaLayerNormArgs {
                normalized_shape: ns.to_vec(),
                weight: Some(wd.view(ns).unwrap()),
                bias: Some(bd.view(ns).unwrap()),
                eps: 1e-5,
            },
        )
        .unwrap();
    let parts = vec![
        ("y", yd.download_f64().unwrap(), yb.to_f64_vec()),
        (
            "mean",
            stats.mean.download_f64().unwrap(),
            cpu.mean.to_f64_vec(),
        ),
        (
            "invstd",
            stats.invstd.download_f64().unwrap(),
            cpu.invstd.to_f64_vec(),
        ),
    ];
    compare_parts(what, d, parts, cmp);
}

/// GroupNorm with `groups` groups (`Some`), or InstanceNorm from the input's statistics
/// (`None`), of `xs` (shape `shape`, values in the memory order of `lay`) in dtype `d`, with γ
/// and β from [`affine`]`(seed)`, on the CPU and on `dev`, every part compared with `cmp`.
#[allow(clippy::too_many_arguments)]
fn check_group_norm(
    dev: &CudaDevice,
    d: DType,
    xs: &[f64],
    (shape, lay): (&[usize], Layout),
    groups: Option<usize>,
    seed: u64,
    cmp: Compare,
    what: &str,
) {
    let (xb, n, c) = (Buffer::from_f64(d, xs), xs.len(), shape[1]);
    let (wb, bb) = affine(d, c, seed);
    let (xb, wb, bb) = (&xb, &wb, &bb);
    let (xd, wd, bd) = (upload(dev, xb), upload(dev, wb), upload(dev, bb));
    let (weight, bias) = (Some(wd.view(&[c]).unwrap()), Some(bd.view(&[c]).unwrap()));
    let mut yb = Buffer::filled(d, n, 0.0);
    let mut yd = dev.alloc(d, n).unwrap();
    let (x, y) = (&host(xb, shape, lay), &mut host_mut(&mut yb, shape, lay));
    let (xv, yv) = (&dview(&xd, shape, lay), &mut dview_mut(&mut yd, shape, lay));
    let (cpu, stats) = match groups {
        Some(num_groups) => {
            let args = GroupNormArgs {
                weight: Some(wb.view()),
                bias: Some(bb.view()),
                ..GroupNormArgs::new(num_groups)
            };
            let dargs = CudaGroupNormArgs {
                num_groups,
                weight,
                bias,
                eps: 1e-5,
            };
            (
                group_norm(x, y, args).unwrap(),
                dev.group_norm(xv, yv, dargs).unwrap(),
            )
        }
        None => {
            let args = InstanceNormArgs {
                weight: Some(wb.view()),
                bias: Some(bb.view()),
                ..Default::default()
            };
            let dargs = CudaInstanceNormArgs {
                weight,
                bias,
                running_mean: None,
                running_var: None,
                use_input_stats: true,
                momentum: 0.1,
                eps: 1e-5,
            };
            (
                instance_norm(x, y, args).unwrap(),
                dev.instance_norm(xv, yv, dargs).unwrap(),
            )
        }
    };
    let parts = vec![
        ("y", yd.download_f64().unwrap(), yb.to_f64_vec()),
        (
            "mean",
            stats.mean.download_f64().unwrap(),
            cpu.mean.to_f64_vec(),
        ),
        (
            "invstd",
            stats.invstd.download_f64().unwrap(),
            cpu.invstd.to_f64_vec(),
        ),
    ];
    compare_parts(what, d, parts, cmp);
}

#[test]
fn layer_norm_matches_cpu() {
    let Some(dev) = gpu("layer_norm_matches_cpu") else {
        return;
    };
    dev.prepare(&CudaOp::ALL).unwrap();
    for d in DType::ALL {
        // warp variant, block variant in registers, block variant streaming
        for (shape, ns) in [
            (vec![4, 3, 40], vec![3, 40]),
            (vec![3, 1500], vec![1500]),
            (vec![2, 5000], vec![5000]),
        ] {
            let xs = values(shape.iter().product(), 1);
            let what = format!("layer_norm {shape:?}");
            check_layer_norm(&dev, d, &xs, &shape, &ns, 2, close, &what);
        }
    }
}

#[test]
fn group_and_instance_norm_match_cpu() {
    let Some(dev) = gpu("group_and_instance_norm_match_cpu") else {
        return;
    };
    let shape = [2, 6, 3, 5];
    let n = 180;
    for d in DType::ALL {
        for lay in LAYOUTS {
            let xs = values(n, 4);
            let xb = Buffer::from_f64(d, &xs);
            // GroupNorm, 3 groups; InstanceNorm with input statistics
            for (op, groups) in [("group_norm", Some(3)), ("instance_norm", None)] {
                let what = format!("{op} {lay:?}");
                check_group_norm(&dev, d, &xs, (&shape, lay), groups, 5, close, &what);
            }
            let (xd, mut yd) = (upload(&dev, &xb), dev.alloc(d, n).unwrap());
            // InstanceNorm with running statistics
            let rm = Buffer::from_f64(d.stat_dtype(), &values(6, 7));
            let rv = Buffer::from_f64(
                d.stat_dtype(),
                &values(6, 8)
                    .iter()
                    .map(|v| v.abs() + 0.5)
                    .collect::<Vec<_>>(),
            );
            let (mut rmh, mut rvh) = (rm.clone(), rv.clone());
            let mut yb = Buffer::filled(d, n, 0.0);
            instance_norm(
                &host(&xb, &shape, lay),
                &mut host_mut(&mut yb, &shape, lay),
                InstanceNormArgs {
                    running_mean: Some(rmh.view_mut()),
                    running_var: Some(rvh.view_mut()),
                    use_input_stats: false,
                    ..Default::default()
                },
            )
            .unwrap();
            let (mut rmd, mut rvd) = (upload(&dev, &rm), upload(&dev, &rv));
            dev.instance_norm(
                &dview(&xd, &shape, lay),
                &mut dview_mut(&mut yd, &shape, lay),
                CudaInstanceNormArgs {
                    weight: None,
                    bias: None,
                    running_mean: Some(rmd.view_mut(&[6]).unwrap()),
                    running_var: Some(rvd.view_mut(&[6]).unwrap()),
                    use_input_stats: false,
                    momentum: 0.1,
                    eps: 1e-5,
                },
            )
            .unwrap();
            close(
                "instance_norm running",
                d,
                &yd.download_f64().unwrap(),
                &yb.to_f64_vec(),
            );
        }
    }
}

/// InstanceNorm training with running statistics: two steps (momentum 0.1, then 0.25) on the
/// device against the CPU op: running mean and variance (unbiased instance variances, averaged
/// over N), outputs and saved statistics; N = 1, 3, 7, S = 2, 13, 97, every dtype, both
/// layouts. Channel scales from 1e-3 to 2 (variances down to ~1e-7, far below eps = 1e-5), and
/// the running statistics are compared relative to the channel's own scale, so a variance
/// recovered from rstd would fail. Also: only one of the two running statistics given.
#[test]
fn instance_norm_running_stats_match_cpu() {
    let Some(dev) = gpu("instance_norm_running_stats_match_cpu") else {
        return;
    };
    const C: usize = 4;
    let scales = [1e-3, 1.0, 0.05, 2.0];
    for d in DType::ALL {
        for lay in LAYOUTS {
            for n in [1usize, 3, 7] {
                for s in [2usize, 13, 97] {
                    let which = match (n, s) {
                        (3, 13) => (true, false),
                        (7, 2) => (false, true),
                        _ => (true, true),
                    };
                    let what = format!("instance_norm running {d} {lay:?} N={n} S={s} {which:?}");
                    instance_norm_running_case(&dev, d, lay, [n, C, s], &scales, which, &what);
                }
            }
        }
    }
}

fn instance_norm_running_case(
    dev: &CudaDevice,
    d: DType,
    lay: Layout,
    shape: [usize; 3],
    scales: &[f64],
    (with_mean, with_var): (bool, bool),
    what: &str,
) {
    let [n, c, s] = shape;
    let len = n * c * s;
    let sd = d.stat_dtype();
    let scale = |i: usize| scales[i % c];
    let rm0: Vec<f64> = values(c, 21)
        .iter()
        .enumerate()
        .map(|(i, v)| v * scale(i))
        .collect();
    let rv0: Vec<f64> = values(c, 22)
        .iter()
        .enumerate()
        .map(|(i, v)| (v.abs() + 0.5) * scale(i) * scale(i))
        .collect();
    let (mut rmh, mut rvh) = (Buffer::from_f64(sd, &rm0), Buffer::from_f64(sd, &rv0));
    let (mut rmd, mut rvd) = (upload(dev, &rmh), upload(dev, &rvh));
    for (step, momentum) in [(0u64, 0.1), (1, 0.25)] {
        // element (n, c, s) of the logical shape, in the layout's memory order
        let logical = values(len, 30 + step);
        let mut xs = vec![0.0; len];
        for (i, v) in logical.iter().enumerate() {
            let (ni, ci, si) = (i / (c * s), i / s % c, i % s);
            let off = match lay {
                Layout::ChannelsLast => (ni * s + si) * c + ci,
                _ => i,
            };
            xs[off] = (v + 0.5) * scale(ci);
        }
        let xb = Buffer::from_f64(d, &xs);
        let xd = upload(dev, &xb);
        let mut yb = Buffer::filled(d, len, 0.0);
        let cpu = instance_norm(
            &host(&xb, &shape, lay),
            &mut host_mut(&mut yb, &shape, lay),
            InstanceNormArgs {
                running_mean: with_mean.then(|| rmh.view_mut()),
                running_var: with_var.then(|| rvh.view_mut()),
                momentum,
                ..Default::default()
            },
        )
        .unwrap();
        let mut yd = dev.alloc(d, len).unwrap();
        let stats = dev
            .instance_norm(
                &dview(&xd, &shape, lay),
                &mut dview_mut(&mut yd, &shape, lay),
                CudaInstanceNormArgs {
                    weight: None,
                    bias: None,
                    running_mean: with_mean.then(|| rmd.view_mut(&[c]).unwrap()),
                    running_var: with_var.then(|| rvd.view_mut(&[c]).unwrap()),
                    use_input_stats: true,
                    momentum,
                    eps: 1e-5,
                },
            )
            .unwrap();
        let what = format!("{what} step {step}");
        close(&what, d, &yd.download_f64().unwrap(), &yb.to_f64_vec());
        let mean = stats.mean.download_f64().unwrap();
        let cpu_mean = cpu.mean.to_f64_vec();
        for (i, (g, w)) in mean.iter().zip(&cpu_mean).enumerate() {
            let ok = (g - w).abs() <= tol(d) * (w.abs() + scale(i));
            assert!(ok, "{what}: saved mean {i}: cuda {g}, cpu {w}");
        }
        // running statistics, relative to the channel's scale (variance: scale²)
        for (name, given, dev_buf, cpu_buf, power) in [
            ("running_mean", with_mean, &rmd, &rmh, 1),
            ("running_var", with_var, &rvd, &rvh, 2),
        ] {
            let (got, want) = (dev_buf.download_f64().unwrap(), cpu_buf.to_f64_vec());
            for ch in 0..c {
                let (g, w) = (got[ch], want[ch]);
                let unit = scale(ch).powi(power);
                let ok = (g - w).abs() <= tol(d) * (w.abs() + unit);
                assert!(
                    ok,
                    "{what}: {name}[{ch}]: cuda {g}, cpu {w} (scale {unit:e})"
                );
                if !given {
                    let init = if power == 1 { &rm0 } else { &rv0 };
                    let untouched = Buffer::from_f64(sd, &init[ch..=ch]).to_f64_vec()[0];
                    assert_eq!(g, untouched, "{what}: {name} not given but changed");
                }
            }
        }
    }
}

/// One BatchNorm training step (running statistics, a batch counter from 3) on the CPU and on
/// `dev` from the same operands (SyncBatchNorm's in the group of `comm` when given): the device
/// operands and the host running statistics after it, and `(part, device, cpu)` for y, the
/// saved mean and invstd, and the running statistics.
struct BnTrainStep {
    xd: DeviceBuffer,
    wd: DeviceBuffer,
    rmd: DeviceBuffer,
    rvd: DeviceBuffer,
    rmh: Buffer,
    rvh: Buffer,
    outs: Vec<(&'static str, Vec<f64>, Vec<f64>)>,
}

#[allow(clippy::too_many_arguments)]
fn bn_train_step(
    dev: &CudaDevice,
    xb: &Buffer,
    shape: &[usize],
    lay: Layout,
    wb: &Buffer,
    bb: &Buffer,
    rm: &Buffer,
    momentum: Option<f64>,
    comm: Option<&dyn Communicator>,
) -> BnTrainStep {
    let (d, n, c) = (xb.dtype(), xb.len(), shape[1]);
    let rv = Buffer::filled(d.stat_dtype(), c, 1.0);
    let (mut rmh, mut rvh) = (rm.clone(), rv.clone());
    let mut yb = Buffer::filled(d, n, 0.0);
    let mut count_h = 3i64;
    let (x, y) = (&host(xb, shape, lay), &mut host_mut(&mut yb, shape, lay));
    let args = BatchNormArgs {
        weight: Some(wb.view()),
        bias: Some(bb.view()),
        running_mean: Some(rmh.view_mut()),
        running_var: Some(rvh.view_mut()),
        num_batches_tracked: Some(&mut count_h),
        training: true,
        momentum,
        eps: 1e-5,
    };
    let cpu = match comm {
        Some(comm) => sync_batch_norm(x, y, args, comm).unwrap().0,
        None => batch_norm(x, y, args).unwrap(),
    };
    let (xd, wd, bd) = (upload(dev, xb), upload(dev, wb), upload(dev, bb));
    let (mut rmd, mut rvd) = (upload(dev, rm), upload(dev, &rv));
    let mut yd = dev.alloc(d, n).unwrap();
    let mut count_d = 3i64;
    let (x, y) = (&dview(&xd, shape, lay), &mut dview_mut(&mut yd, shape, lay));
    let args = CudaBatchNormArgs {
        weight: Some(wd.view(&[c]).unwrap()),
        bias: Some(bd.view(&[c]).unwrap()),
        running_mean: Some(rmd.view_mut(&[c]).unwrap()),
        running_var: Some(rvd.view_mut(&[c]).unwrap()),
        num_batches_tracked: Some(&mut count_d),
        training: true,
        momentum,
        eps: 1e-5,
    };
    let stats = match comm {
        Some(comm) => dev.sync_batch_norm(x, y, args, comm).unwrap().0,
        None => dev.batch_norm(x, y, args).unwrap(),
    };
    assert_eq!(
        count_d, count_h,
        "batch_norm {shape:?}: num_batches_tracked"
    );
    let outs = vec![
        ("y", yd.download_f64().unwrap(), yb.to_f64_vec()),
        (
            "mean",
            stats.mean.download_f64().unwrap(),
            cpu.mean.to_f64_vec(),
        ),
        (
            "invstd",
            stats.invstd.download_f64().unwrap(),
            cpu.invstd.to_f64_vec(),
        ),
        (
            "running_mean",
            rmd.download_f64().unwrap(),
            rmh.to_f64_vec(),
        ),
        ("running_var", rvd.download_f64().unwrap(), rvh.to_f64_vec()),
    ];
    BnTrainStep {
        xd,
        wd,
        rmd,
        rvd,
        rmh,
        rvh,
        outs,
    }
}

#[test]
fn batch_norm_matches_cpu() {
    let Some(dev) = gpu("batch_norm_matches_cpu") else {
        return;
    };
    // small (one split) and large enough to split the statistics across blocks
    for shape in [vec![3, 5, 2, 3], vec![8, 40, 24, 24]] {
        let n: usize = shape.iter().product();
        let c = shape[1];
        for d in DType::ALL {
            for lay in LAYOUTS {
                for momentum in [Some(0.1), None] {
                    let xb = Buffer::from_f64(d, &values(n, 9));
                    let wb = Buffer::from_f64(d.stat_dtype(), &values(c, 10));
                    let bb = Buffer::from_f64(d.stat_dtype(), &values(c, 11));
                    let rm = Buffer::from_f64(d.stat_dtype(), &values(c, 12));
                    let mut t =
                        bn_train_step(&dev, &xb, &shape, lay, &wb, &bb, &rm, momentum, None);
                    let what = format!("batch_norm {shape:?} {lay:?} {momentum:?}");
                    for (part, got, want) in &t.outs {
                        close(&format!("{what} {part}"), d, got, want);
                    }
                    // inference from the updated running statistics
                    let mut yb = Buffer::filled(d, n, 0.0);
                    batch_norm(
                        &host(&xb, &shape, lay),
                        &mut host_mut(&mut yb, &shape, lay),
                        BatchNormArgs {
                            weight: Some(wb.view()),
                            running_mean: Some(t.rmh.view_mut()),
                            running_var: Some(t.rvh.view_mut()),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                    let mut yd = dev.alloc(d, n).unwrap();
                    let infer = dev
                        .batch_norm(
                            &dview(&t.xd, &shape, lay),
                            &mut dview_mut(&mut yd, &shape, lay),
                            CudaBatchNormArgs {
                                weight: Some(t.wd.view(&[c]).unwrap()),
                                running_mean: Some(t.rmd.view_mut(&[c]).unwrap()),
                                running_var: Some(t.rvd.view_mut(&[c]).unwrap()),
                                ..Default::default()
                            },
                        )
                        .unwrap();
                    assert!(infer.mean.is_empty());
                    close(&what, d, &yd.download_f64().unwrap(), &yb.to_f64_vec());
                }
            }
        }
    }
}

#[test]
fn local_response_norm_matches_cpu() {
    let Some(dev) = gpu("local_response_norm_matches_cpu") else {
        return;
    };
    let shape = [2, 7, 3, 4];
    let n = 168;
    for d in DType::ALL {
        for lay in LAYOUTS {
            for size in [1, 2, 5] {
                let xb = Buffer::from_f64(d, &values(n, 13));
                let mut yb = Buffer::filled(d, n, 0.0);
                let args = LrnArgs {
                    size,
                    alpha: 0.5,
                    beta: 0.75,
                    k: 2.0,
                };
                local_response_norm(
                    &host(&xb, &shape, lay),
                    &mut host_mut(&mut yb, &shape, lay),
                    args,
                )
                .unwrap();
                let xd = upload(&dev, &xb);
                let mut yd = dev.alloc(d, n).unwrap();
                dev.local_response_norm(
                    &dview(&xd, &shape, lay),
                    &mut dview_mut(&mut yd, &shape, lay),
                    args,
                )
                .unwrap();
                close(
                    &format!("lrn {lay:?} size {size}"),
                    d,
                    &yd.download_f64().unwrap(),
                    &yb.to_f64_vec(),
                );
            }
        }
    }
}

#[test]
fn device_errors_on_a_gpu() {
    let Some(dev) = gpu("device_errors_on_a_gpu") else {
        return;
    };
    // a host pointer where device memory is required
    let host_data = [0.0f32; 24];
    let x = dt(
        DType::F32,
        &[2, 3, 4],
        Layout::Contiguous,
        host_data.as_ptr() as u64,
    );
    let mut yd = dev.alloc(DType::F32, 24).unwrap();
    let e = dev
        .local_response_norm(&x, &mut yd.view_mut(&[2, 3, 4]).unwrap(), LrnArgs::new(3))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::DeviceMismatch, "{e}");
    // views larger than the buffer
    assert_eq!(
        yd.view(&[5, 5]).unwrap_err().kind,
        ErrorKind::BufferTooSmall
    );
    // empty input: nothing launched, empty statistics
    let mut e0 = dev.alloc(DType::F32, 0).unwrap();
    let x0 = dev.alloc(DType::F32, 0).unwrap();
    let s = dev
        .group_norm(
            &x0.view(&[0, 4, 3]).unwrap(),
            &mut e0.view_mut(&[0, 4, 3]).unwrap(),
            CudaGroupNormArgs {
                num_groups: 2,
                weight: None,
                bias: None,
                eps: 1e-5,
            },
        )
        .unwrap();
    assert!(s.mean.is_empty());
    dev.synchronize().unwrap();
}

/// `got` against `want` element by element: NaN where the CPU has NaN, the same infinity where
/// it has one, else within the dtype's tolerance of the largest finite `want`.
fn same_incl_nonfinite(what: &str, d: DType, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .filter(|w| w.is_finite())
        .fold(1.0f64, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol(d) * scale
        };
        assert!(
            ok,
            "{what} [{d}] element {i}: device {g}, cpu {w} (scale {scale})"
        );
    }
}

/// The adversarial inputs of the `*_on_adversarial_data_matches_cpu` tests, as logical
/// (N, C, S) values of `shape` (N, C, then any spatial dims): `large mean` 1e4 + 1e-2·u (f32
/// and f64 only, see [`adversarial_dtypes`]: E[x²] − E[x]² loses every digit, f32 sums and an
/// f32 centre lose most), `constant` per channel (variance 0), and `non-finite`: u except the
/// whole planes (b, ch) of `special`, set to the given value (NaN, ±inf). u in [-1.5, 2.5)
/// from `values(·, seed)`.
fn adversarial_inputs(
    shape: &[usize],
    seed: u64,
    special: &[(usize, usize, f64)],
) -> [(&'static str, Vec<f64>); 3] {
    let (n, c) = (shape.iter().product::<usize>(), shape[1]);
    let s = n / (shape[0] * c);
    let noise = values(n, seed);
    // element (b, ch, i) of the logical (N, C, S) tensor
    let data = |f: &dyn Fn(usize, usize, f64) -> f64| -> Vec<f64> {
        (0..n)
            .map(|e| f(e / (c * s), (e / s) % c, noise[e]))
            .collect()
    };
    [
        ("large mean", data(&|_, _, u| 1e4 + 1e-2 * u)),
        ("constant", data(&|_, ch, _| ch as f64 - 2.5)),
        (
            "non-finite",
            data(&|b, ch, u| {
                special
                    .iter()
                    .find(|&&(sb, sc, _)| (sb, sc) == (b, ch))
                    .map_or(u, |&(_, _, v)| v)
            }),
        ),
    ]
}

/// The dtypes an adversarial case runs in: all, but `large mean` in f32 and f64 only (1e4 +
/// 1e-2·u is not representable in f16/bf16: a constant there).
fn adversarial_dtypes(case: &str) -> impl Iterator<Item = DType> {
    let all = case != "large mean";
    DType::ALL
        .into_iter()
        .filter(move |d| all || matches!(d, DType::F32 | DType::F64))
}

/// Logical (N, C, S) values `xs` of `shape` in the memory order of `lay`.
fn stored_as(xs: &[f64], shape: &[usize], lay: Layout) -> Vec<f64> {
    let (n, c) = (xs.len(), shape[1]);
    let s = n / (shape[0] * c);
    match lay {
        Layout::ChannelsLast => (0..n)
            .map(|e| {
                let (b, i, ch) = (e / (s * c), (e / c) % s, e % c);
                xs[(b * c + ch) * s + i]
            })
            .collect(),
        _ => xs.to_vec(),
    }
}

/// BatchNorm training on data that breaks naive statistics, against the CPU op: a mean of 1e4
/// with a spread of 1e-2 (f32/f64: E[x²] − E[x]² would lose every digit; f32 statistics in f32
/// with an f32 centre were 14 % off, so the device accumulates f32 input in f64 and centres on
/// the mean's hi + lo, as the CPU op does), constant channels
/// (variance 0), and channels holding a NaN, a +inf, and both infinities. The statistics run in
/// four-element Welford chunks merged per thread (welford_push_k) and across splits, so each
/// case crosses the chunk, tail and split paths (4608 elements per channel).
#[test]
fn batch_norm_on_adversarial_data_matches_cpu() {
    let Some(dev) = gpu("batch_norm_on_adversarial_data_matches_cpu") else {
        return;
    };
    bn_on_adversarial_data(&dev, &[8, 6, 24, 24], None);
}

/// SyncBatchNorm training on the device (`CudaDevice::sync_batch_norm`: local statistics on
/// the device, the exchange and Chan merge on the host, the apply on the device) on the
/// adversarial inputs, against the CPU op in the same group: a 2-rank group whose other rank
/// mirrors this one ([`emu_common::Mirror`]), so the merge runs on equal halves. Before f32
/// local means were exchanged with their remainder and the apply centred on the global mean's
/// hi + lo, f32 large-mean y was 1.6e-2 of the largest output off (4.662 for the CPU's 4.750;
/// either half alone fails too); before M2 = 0 was recovered for r = 0, constant channels got
/// invstd 0 (CPU 316.2) and an infinite running variance, in every dtype.
#[test]
fn sync_batch_norm_on_adversarial_data_matches_cpu() {
    let Some(dev) = gpu("sync_batch_norm_on_adversarial_data_matches_cpu") else {
        return;
    };
    bn_on_adversarial_data(&dev, &[8, 6, 12, 12], Some(&emu_common::Mirror));
}

/// The BatchNorm (or, with `comm`, SyncBatchNorm) training step of [`bn_train_step`] on the
/// adversarial inputs of `shape` (N ≥ 7, C ≥ 3: the non-finite planes), compared with
/// [`same_incl_nonfinite`].
fn bn_on_adversarial_data(dev: &CudaDevice, shape: &[usize], comm: Option<&dyn Communicator>) {
    let c = shape[1];
    let special = [
        (3, 0, f64::NAN),
        (5, 1, f64::INFINITY),
        (1, 2, f64::INFINITY),
        (6, 2, f64::NEG_INFINITY),
    ];
    let op = if comm.is_some() {
        "sync_batch_norm"
    } else {
        "batch_norm"
    };
    for (name, xs) in adversarial_inputs(shape, 21, &special) {
        for d in adversarial_dtypes(name) {
            for lay in LAYOUTS {
                let what = format!("{op} {name} {lay:?}");
                let xb = Buffer::from_f64(d, &stored_as(&xs, shape, lay));
                let (wb, bb) = affine(d, c, 22);
                let rm = Buffer::filled(d.stat_dtype(), c, 0.0);
                let t = bn_train_step(dev, &xb, shape, lay, &wb, &bb, &rm, Some(0.1), comm);
                for (part, got, want) in &t.outs {
                    same_incl_nonfinite(&format!("{what} {part}"), d, got, want);
                }
            }
        }
    }
}

/// LayerNorm on the adversarial inputs ([`adversarial_inputs`]) against the CPU op: y, saved
/// mean and invstd. Rows of 120 and 999 (ragged) take the warp kernel (≤ 1024 columns), 3000
/// the block kernel with the row in registers (≤ 4096), 5100 and 4101 (ragged) its streaming
/// path. Input (8, 3, k) normalised over (3, k): row 3 starts with a NaN plane, row 1 with +inf
/// and holds −inf too, rows 5 and 6 start finite and hold +inf / −inf (a finite and a
/// non-finite first element: the statistics are taken relative to it). Before the device took
/// f32 rows' sums relative to their first element, f32 large-mean rows were up to 1.3 % off.
#[test]
fn layer_norm_on_adversarial_data_matches_cpu() {
    let Some(dev) = gpu("layer_norm_on_adversarial_data_matches_cpu") else {
        return;
    };
    let special = [
        (3, 0, f64::NAN),
        (1, 0, f64::INFINITY),
        (1, 2, f64::NEG_INFINITY),
        (5, 1, f64::INFINITY),
        (6, 2, f64::NEG_INFINITY),
    ];
    for k in [40usize, 333, 1000, 1700, 1367] {
        let (shape, ns) = ([8, 3, k], [3, k]);
        for (name, xs) in adversarial_inputs(&shape, 24, &special) {
            for d in adversarial_dtypes(name) {
                let what = format!("layer_norm {name} {shape:?}");
                check_layer_norm(&dev, d, &xs, &shape, &ns, 25, same_incl_nonfinite, &what);
            }
        }
    }
}

/// GroupNorm (2 groups of 3 channels) and InstanceNorm on the adversarial inputs
/// ([`adversarial_inputs`]) against the CPU op, both layouts: y, saved mean and invstd.
/// Contiguous (NCHW) groups of 210 elements and instances of 70 (shape (2, 6, 7, 10)) are held
/// in registers by the row kernel, groups of 9408 ((2, 6, 56, 56)) and instances of 9216 ((1,
/// 4, 96, 96)) stream (> 8192 elements); channels last runs Welford per element. Group (1, 0)
/// starts with a NaN plane, (0, 0) holds +inf after finite data, (0, 1) starts with +inf and
/// holds −inf.
#[test]
fn group_and_instance_norm_on_adversarial_data_match_cpu() {
    let Some(dev) = gpu("group_and_instance_norm_on_adversarial_data_match_cpu") else {
        return;
    };
    let special = [
        (1, 0, f64::NAN),
        (0, 1, f64::INFINITY),
        (0, 3, f64::INFINITY),
        (0, 5, f64::NEG_INFINITY),
    ];
    for (shape, op, groups) in [
        ([2usize, 6, 7, 10], "group_norm", Some(2)),
        ([2, 6, 7, 10], "instance_norm", None),
        ([2, 6, 56, 56], "group_norm", Some(2)),
        ([1, 4, 96, 96], "instance_norm", None),
    ] {
        for (name, xs) in adversarial_inputs(&shape, 27, &special) {
            for d in adversarial_dtypes(name) {
                for lay in LAYOUTS {
                    let what = format!("{op} {name} {shape:?} {lay:?}");
                    let stored = stored_as(&xs, &shape, lay);
                    let cmp = same_incl_nonfinite;
                    check_group_norm(&dev, d, &stored, (&shape, lay), groups, 28, cmp, &what);
                }
            }
        }
    }
}
