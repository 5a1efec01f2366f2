//! The device backward ops (`CudaDevice::*_backward`) against the CPU backward ops: every op,
//! dtype and layout on odd shapes, overwrite and accumulate, saved and running statistics,
//! and their error paths. Runs on the GPU when there is one (feature `cuda`), otherwise on the
//! host emulation (the same device code: validation, scratch, ticket counters, launches).

mod emu_common;

use normkit::backend::cuda::backward::{
    CudaGroupNormBackwardArgs, CudaLayerNormBackwardArgs, CudaNormBackwardArgs, DeviceForwardStats,
    DeviceGradients,
};
use normkit::backend::cuda::device::{CudaDevice, DeviceBuffer};
use normkit::ops::{
    BatchNormArgs, ForwardStats, Gradients, GroupNormArgs, GroupNormBackwardArgs, InstanceNormArgs,
    LayerNormArgs, LayerNormBackwardArgs, LrnArgs, NormBackwardArgs, SavedStats, batch_norm,
    batch_norm_backward, group_norm, group_norm_backward, instance_norm, instance_norm_backward,
    layer_norm, layer_norm_backward, local_response_norm_backward,
};
use normkit::{Buffer, DType, ErrorKind, Layout, Tensor, TensorMut};

/// The GPU (feature `cuda`, when the probe finds one), else the emulation in two grid
/// configurations; empty (with the reason printed) when neither exists.
fn devices() -> Vec<CudaDevice> {
    #[cfg(feature = "cuda")]
    if normkit::backend::cuda::probe().is_available() {
        return vec![CudaDevice::new(0).expect("probe found a GPU")];
    }
    if !emu_common::ready() {
        return Vec::new();
    }
    emu_common::DEVICES
        .iter()
        .map(|&d| CudaDevice::emulated(d).unwrap())
        .collect()
}

use emu_common::{close, host, host_mut};

/// Host and device copies of the operands of one backward case.
struct Operands {
    d: DType,
    shape: Vec<usize>,
    lay: Layout,
    x: Buffer,
    g: Buffer,
    w: Buffer,
    xd: DeviceBuffer,
    gd: DeviceBuffer,
    wd: DeviceBuffer,
}

impl Operands {
    fn new(dev: &CudaDevice, d: DType, shape: &[usize], lay: Layout, params: usize) -> Operands {
        let n: usize = shape.iter().product();
        let x = Buffer::from_f64(d, &emu_common::data(n, 11, 3.0));
        let g = Buffer::from_f64(d, &emu_common::data(n, 12, 0.0));
        let w = Buffer::from_f64(d.stat_dtype(), &emu_common::data(params, 13, 1.0));
        let (xd, gd, wd) = (
            dev.upload_buffer(&x).unwrap(),
            dev.upload_buffer(&g).unwrap(),
            dev.upload_buffer(&w).unwrap(),
        );
        Operands {
            d,
            shape: shape.to_vec(),
            lay,
            x,
            g,
            w,
            xd,
            gd,
            wd,
        }
    }
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Gradient buffers: host (dx, dγ, dβ) and device copies, parameter gradients pre-filled so
/// that accumulation is visible.
struct Grads {
    host: [Buffer; 3],
    dev: [DeviceBuffer; 3],
}

impl Grads {
    fn new(dev: &CudaDevice, o: &Operands, params: usize) -> Grads {
        let sd = o.d.stat_dtype();
        let host = [
            Buffer::filled(o.d, o.numel(), 0.0),
            Buffer::from_f64(sd, &emu_common::data(params, 21, 0.5)),
            Buffer::from_f64(sd, &emu_common::data(params, 22, -0.5)),
        ];
        let dev = [
            dev.alloc(o.d, o.numel()).unwrap(),
            dev.upload_buffer(&host[1]).unwrap(),
            dev.upload_buffer(&host[2]).unwrap(),
        ];
        Grads { host, dev }
    }
    fn cpu<'a>(&'a mut self, o: &Operands, accumulate: bool) -> Gradients<'a> {
        let [dx, dw, db] = &mut self.host;
        Gradients {
            grad_input: Some(host_mut(dx, &o.shape, o.lay)),
            grad_weight: Some(dw.view_mut()),
            grad_bias: Some(db.view_mut()),
            accumulate,
        }
    }
    fn device<'a>(&'a mut self, o: &Operands, accumulate: bool) -> DeviceGradients<'a> {
        let [dx, dw, db] = &mut self.dev;
        let (wn, bn) = (dw.len(), db.len());
        DeviceGradients {
            grad_input: Some(dx.view_mut_as(&o.shape, o.lay).unwrap()),
            grad_weight: Some(dw.view_mut(&[wn]).unwrap()),
            grad_bias: Some(db.view_mut(&[bn]).unwrap()),
            accumulate,
        }
    }
    fn compare(&self, what: &str, d: DType) {
        for (i, name) in ["grad_input", "grad_weight", "grad_bias"]
            .iter()
            .enumerate()
        {
            close(
                &format!("{what} {name}"),
                d,
                &self.dev[i].download_f64().unwrap(),
                &self.host[i].to_f64_vec(),
            );
        }
    }
}

const LAYOUTS: [Layout; 2] = [Layout::Contiguous, Layout::ChannelsLast];
const CHANNEL_SHAPES: [&[usize]; 4] = [&[1, 7, 13], &[3, 13, 1], &[2, 5, 97], &[2, 3, 7, 5]];

#[test]
fn batch_and_instance_norm_backward_match_cpu() {
    for dev in devices() {
        for d in DType::ALL {
            for lay in LAYOUTS {
                for shape in CHANNEL_SHAPES {
                    let c = shape[1];
                    let n = shape[0];
                    let o = Operands::new(&dev, d, shape, lay, c);
                    let sd = d.stat_dtype();
                    let rm = Buffer::from_f64(sd, &emu_common::data(c, 31, 3.0));
                    let rv = Buffer::from_f64(sd, &emu_common::data(c, 32, 4.0));
                    let (rmd, rvd) = (
                        dev.upload_buffer(&rm).unwrap(),
                        dev.upload_buffer(&rv).unwrap(),
                    );
                    // forward statistics from the CPU ops
                    let mut y = Buffer::filled(d, o.numel(), 0.0);
                    let bn: SavedStats = batch_norm(
                        &host(&o.x, shape, lay),
                        &mut host_mut(&mut y, shape, lay),
                        BatchNormArgs {
                            training: true,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                    // InstanceNorm needs more than one spatial element
                    let spatial: usize = shape[2..].iter().product();
                    let inst: Option<SavedStats> = (spatial > 1).then(|| {
                        instance_norm(
                            &host(&o.x, shape, lay),
                            &mut host_mut(&mut y, shape, lay),
                            InstanceNormArgs::default(),
                        )
                        .unwrap()
                    });
                    assert!(inst.as_ref().is_none_or(|s| s.mean.len() == n * c));
                    for (name, saved, instance) in [
                        ("batch_norm train", Some(&bn), false),
                        ("batch_norm frozen", None, false),
                        ("instance_norm saved", inst.as_ref(), true),
                        ("instance_norm running", None, true),
                    ] {
                        if instance && spatial == 1 {
                            continue;
                        }
                        for accumulate in [false, true] {
                            let what = format!("{name} {shape:?} {lay:?} acc={accumulate}");
                            let mut gr = Grads::new(&dev, &o, c);
                            let sdev = saved.map(|s| {
                                (
                                    dev.upload_buffer(&s.mean).unwrap(),
                                    dev.upload_buffer(&s.invstd).unwrap(),
                                )
                            });
                            let cpu_stats = match saved {
                                Some(s) => ForwardStats::Saved {
                                    mean: s.mean.view(),
                                    invstd: s.invstd.view(),
                                },
                                None => ForwardStats::Running {
                                    mean: rm.view(),
                                    var: rv.view(),
                                    eps: 1e-3,
                                },
                            };
                            let dev_stats = match &sdev {
                                Some((m, r)) => DeviceForwardStats::Saved {
                                    mean: m.view(&[m.len()]).unwrap(),
                                    invstd: r.view(&[r.len()]).unwrap(),
                                },
                                None => DeviceForwardStats::Running {
                                    mean: rmd.view(&[c]).unwrap(),
                                    var: rvd.view(&[c]).unwrap(),
                                    eps: 1e-3,
                                },
                            };
                            let cargs = NormBackwardArgs {
                                weight: Some(o.w.view()),
                                stats: cpu_stats,
                                grads: gr.cpu(&o, accumulate),
                            };
                            let (hx, hg) = (host(&o.x, shape, lay), host(&o.g, shape, lay));
                            if instance {
                                instance_norm_backward(&hg, &hx, cargs).unwrap();
                            } else {
                                batch_norm_backward(&hg, &hx, cargs).unwrap();
                            }
                            let dargs = CudaNormBackwardArgs {
                                weight: Some(o.wd.view(&[c]).unwrap()),
                                stats: dev_stats,
                                grads: gr.device(&o, accumulate),
                            };
                            let (dx, dg) = (
                                o.xd.view_as(shape, lay).unwrap(),
                                o.gd.view_as(shape, lay).unwrap(),
                            );
                            if instance {
                                dev.instance_norm_backward(&dg, &dx, dargs).unwrap();
                            } else {
                                dev.batch_norm_backward(&dg, &dx, dargs).unwrap();
                            }
                            gr.compare(&what, d);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn group_norm_backward_matches_cpu() {
    for dev in devices() {
        for d in DType::ALL {
            for lay in LAYOUTS {
                for (shape, groups) in [
                    (&[2, 6, 13][..], 3),
                    (&[1, 4, 97][..], 2),
                    (&[3, 5, 7][..], 1),
                ] {
                    let c = shape[1];
                    let o = Operands::new(&dev, d, shape, lay, c);
                    let mut y = Buffer::filled(d, o.numel(), 0.0);
                    let s = group_norm(
                        &host(&o.x, shape, lay),
                        &mut host_mut(&mut y, shape, lay),
                        GroupNormArgs::new(groups),
                    )
                    .unwrap();
                    let (md, rd) = (
                        dev.upload_buffer(&s.mean).unwrap(),
                        dev.upload_buffer(&s.invstd).unwrap(),
                    );
                    for accumulate in [false, true] {
                        let what =
                            format!("group_norm {shape:?} G={groups} {lay:?} acc={accumulate}");
                        let mut gr = Grads::new(&dev, &o, c);
                        group_norm_backward(
                            &host(&o.g, shape, lay),
                            &host(&o.x, shape, lay),
                            GroupNormBackwardArgs {
                                num_groups: groups,
                                weight: Some(o.w.view()),
                                mean: s.mean.view(),
                                invstd: s.invstd.view(),
                                grads: gr.cpu(&o, accumulate),
                            },
                        )
                        .unwrap();
                        dev.group_norm_backward(
                            &o.gd.view_as(shape, lay).unwrap(),
                            &o.xd.view_as(shape, lay).unwrap(),
                            CudaGroupNormBackwardArgs {
                                num_groups: groups,
                                weight: Some(o.wd.view(&[c]).unwrap()),
                                mean: md.view(&[md.len()]).unwrap(),
                                invstd: rd.view(&[rd.len()]).unwrap(),
                                grads: gr.device(&o, accumulate),
                            },
                        )
                        .unwrap();
                        gr.compare(&what, d);
                    }
                }
            }
        }
    }
}

#[test]
fn layer_norm_backward_matches_cpu() {
    for dev in devices() {
        for d in DType::ALL {
            // (shape, normalized_shape, affine): rows of whole 16-byte packs (64, 12 for
            // f32/f64, 1024 over 128 threads, 4104 streamed) and ragged ones; more rows than
            // the emulated grid (blocks walk several rows); without γ and dγ/dβ (dx only)
            for (shape, ns, affine) in [
                (&[7, 13][..], &[13][..], true),
                (&[3, 97][..], &[97][..], true),
                (&[2, 1025][..], &[1025][..], true),
                (&[2, 3, 7, 5][..], &[7, 5][..], true),
                (&[1, 1][..], &[1][..], true),
                (&[41, 64][..], &[64][..], true),
                (&[5, 12][..], &[12][..], true),
                (&[3, 2, 512][..], &[2, 512][..], true),
                (&[2, 4104][..], &[4104][..], true),
                (&[9, 64][..], &[64][..], false),
                (&[3, 1024][..], &[1024][..], false),
            ] {
                let cols: usize = ns.iter().product();
                let o = Operands::new(&dev, d, shape, Layout::Contiguous, cols);
                let mut y = Buffer::filled(d, o.numel(), 0.0);
                let s = layer_norm(
                    &host(&o.x, shape, o.lay),
                    &mut host_mut(&mut y, shape, o.lay),
                    LayerNormArgs::new(ns),
                )
                .unwrap();
                let (md, rd) = (
                    dev.upload_buffer(&s.mean).unwrap(),
                    dev.upload_buffer(&s.invstd).unwrap(),
                );
                for accumulate in [false, true] {
                    let what =
                        format!("layer_norm {shape:?} {ns:?} affine={affine} acc={accumulate}");
                    let mut gr = Grads::new(&dev, &o, cols);
                    layer_norm_backward(
                        &host(&o.g, shape, o.lay),
                        &host(&o.x, shape, o.lay),
                        LayerNormBackwardArgs {
                            normalized_shape: ns.to_vec(),
                            weight: affine.then(|| Tensor::new(o.w.as_data(), ns).unwrap()),
                            mean: s.mean.view(),
                            invstd: s.invstd.view(),
                            grads: {
                                let [hx, hw, hb] = &mut gr.host;
                                Gradients {
                                    grad_input: Some(host_mut(hx, shape, o.lay)),
                                    grad_weight: affine
                                        .then(|| TensorMut::new(hw.as_data_mut(), ns).unwrap()),
                                    grad_bias: affine
                                        .then(|| TensorMut::new(hb.as_data_mut(), ns).unwrap()),
                                    accumulate,
                                }
                            },
                        },
                    )
                    .unwrap();
                    let [dx, dw, db] = &mut gr.dev;
                    dev.layer_norm_backward(
                        &o.gd.view(shape).unwrap(),
                        &o.xd.view(shape).unwrap(),
                        CudaLayerNormBackwardArgs {
                            normalized_shape: ns.to_vec(),
                            weight: affine.then(|| o.wd.view(ns).unwrap()),
                            mean: md.view(&[md.len()]).unwrap(),
                            invstd: rd.view(&[rd.len()]).unwrap(),
                            grads: DeviceGradients {
                                grad_input: Some(dx.view_mut(shape).unwrap()),
                                grad_weight: affine.then(|| dw.view_mut(ns).unwrap()),
                                grad_bias: affine.then(|| db.view_mut(ns).unwrap()),
                                accumulate,
                            },
                        },
                    )
                    .unwrap();
                    gr.compare(&what, d);
                }
            }
        }
    }
}

#[test]
fn local_response_norm_backward_matches_cpu() {
    for dev in devices() {
        for d in DType::ALL {
            for lay in LAYOUTS {
                for (shape, size) in [
                    (&[2, 7, 13][..], 3),
                    (&[1, 5, 3, 3][..], 4),
                    (&[3, 1, 7][..], 2),
                ] {
                    let o = Operands::new(&dev, d, shape, lay, 1);
                    let mut dx = Buffer::filled(d, o.numel(), 0.0);
                    local_response_norm_backward(
                        &host(&o.g, shape, lay),
                        &host(&o.x, shape, lay),
                        &mut host_mut(&mut dx, shape, lay),
                        LrnArgs::new(size),
                    )
                    .unwrap();
                    let mut dxd = dev.alloc(d, o.numel()).unwrap();
                    dev.local_response_norm_backward(
                        &o.gd.view_as(shape, lay).unwrap(),
                        &o.xd.view_as(shape, lay).unwrap(),
                        &mut dxd.view_mut_as(shape, lay).unwrap(),
                        LrnArgs::new(size),
                    )
                    .unwrap();
                    close(
                        &format!("lrn {shape:?} size {size} {lay:?}"),
                        d,
                        &dxd.download_f64().unwrap(),
                        &dx.to_f64_vec(),
                    );
                }
            }
        }
    }
}

#[test]
fn backward_errors_and_empty_inputs() {
    for dev in devices().into_iter().take(1) {
        let shape = [2, 3, 5];
        let o = Operands::new(&dev, DType::F32, &shape, Layout::Contiguous, 3);
        let stats = dev.upload(&[0.0f32; 3]).unwrap();
        let args = |grads| CudaNormBackwardArgs {
            weight: None,
            stats: DeviceForwardStats::Saved {
                mean: stats.view(&[3]).unwrap(),
                invstd: stats.view(&[3]).unwrap(),
            },
            grads,
        };
        // grad_input aliasing the input (grad_output itself is allowed: in place, below)
        // SAFETY: a view of a live device buffer of 30 f32 (aliasing is what is tested).
        let alias = unsafe {
            normkit::backend::cuda::ops::DeviceTensorMut::from_raw(
                o.xd.ptr(),
                DType::F32,
                &shape,
                Layout::Contiguous,
            )
        }
        .unwrap();
        let e = dev
            .batch_norm_backward(
                &o.gd.view(&shape).unwrap(),
                &o.xd.view(&shape).unwrap(),
                args(DeviceGradients {
                    grad_input: Some(alias),
                    ..Default::default()
                }),
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnsupportedLayout, "{e}");
        assert!(e.to_string().contains("grad_input"), "{e}");
        // LRN cannot write dx over dy (its window reads neighbours)
        // SAFETY: as above, now over grad_output.
        let over_g = unsafe {
            normkit::backend::cuda::ops::DeviceTensorMut::from_raw(
                o.gd.ptr(),
                DType::F32,
                &shape,
                Layout::Contiguous,
            )
        }
        .unwrap();
        let mut over_g = over_g;
        let e = dev
            .local_response_norm_backward(
                &o.gd.view(&shape).unwrap(),
                &o.xd.view(&shape).unwrap(),
                &mut over_g,
                LrnArgs::new(3),
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnsupportedLayout, "{e}");
        // in place (grad_input = grad_output) gives what a separate grad_input gives
        let in_place = |dev: &CudaDevice, separate: bool| -> Vec<f64> {
            let g = dev.upload_buffer(&o.g).unwrap();
            let mut dx = dev.alloc(DType::F32, 30).unwrap();
            let gmut = dev.upload_buffer(&o.g).unwrap();
            let stats = dev.upload(&[0.5f32, 1.0, 2.0]).unwrap();
            let st = || DeviceForwardStats::Saved {
                mean: stats.view(&[3]).unwrap(),
                invstd: stats.view(&[3]).unwrap(),
            };
            if separate {
                dev.batch_norm_backward(
                    &g.view(&shape).unwrap(),
                    &o.xd.view(&shape).unwrap(),
                    CudaNormBackwardArgs {
                        weight: None,
                        stats: st(),
                        grads: DeviceGradients {
                            grad_input: Some(dx.view_mut(&shape).unwrap()),
                            ..Default::default()
                        },
                    },
                )
                .unwrap();
                dx.download_f64().unwrap()
            } else {
                let ptr = gmut.ptr();
                // SAFETY: two views of one live buffer: the read-only one is grad_output, the
                // writable one grad_input, exactly what an in-place call passes.
                let (gv, dv) = unsafe {
                    (
                        normkit::backend::cuda::ops::DeviceTensor::from_raw(
                            ptr,
                            DType::F32,
                            &shape,
                            Layout::Contiguous,
                        )
                        .unwrap(),
                        normkit::backend::cuda::ops::DeviceTensorMut::from_raw(
                            ptr,
                            DType::F32,
                            &shape,
                            Layout::Contiguous,
                        )
                        .unwrap(),
                    )
                };
                dev.batch_norm_backward(
                    &gv,
                    &o.xd.view(&shape).unwrap(),
                    CudaNormBackwardArgs {
                        weight: None,
                        stats: st(),
                        grads: DeviceGradients {
                            grad_input: Some(dv),
                            ..Default::default()
                        },
                    },
                )
                .unwrap();
                gmut.download_f64().unwrap()
            }
        };
        assert_eq!(in_place(&dev, true), in_place(&dev, false));
        // wrong number of saved statistics: the CPU op's error
        let short = dev.upload(&[0.0f32; 2]).unwrap();
        let e = dev
            .batch_norm_backward(
                &o.gd.view(&shape).unwrap(),
                &o.xd.view(&shape).unwrap(),
                CudaNormBackwardArgs {
                    weight: None,
                    stats: DeviceForwardStats::Saved {
                        mean: short.view(&[2]).unwrap(),
                        invstd: short.view(&[2]).unwrap(),
                    },
                    grads: DeviceGradients::default(),
                },
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::ShapeMismatch, "{e}");
        // f16 parameter gradient for f32 input: not the compute dtype
        let mut gw16 = dev.alloc(DType::F16, 3).unwrap();
        let e = dev
            .batch_norm_backward(
                &o.gd.view(&shape).unwrap(),
                &o.xd.view(&shape).unwrap(),
                args(DeviceGradients {
                    grad_weight: Some(gw16.view_mut(&[3]).unwrap()),
                    ..Default::default()
                }),
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnsupportedDType, "{e}");
        // a host pointer as grad_output
        let host_g = [0.0f32; 30];
        // SAFETY: planning and the pointer check only read the address.
        let hg = unsafe {
            normkit::backend::cuda::ops::DeviceTensor::from_raw(
                host_g.as_ptr() as u64,
                DType::F32,
                &shape,
                Layout::Contiguous,
            )
        }
        .unwrap();
        let mut dxd = dev.alloc(DType::F32, 30).unwrap();
        let e = dev
            .batch_norm_backward(
                &hg,
                &o.xd.view(&shape).unwrap(),
                args(DeviceGradients {
                    grad_input: Some(dxd.view_mut(&shape).unwrap()),
                    ..Default::default()
                }),
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::DeviceMismatch, "{e}");
        // empty input: parameter gradients zeroed (not accumulating), nothing launched
        let x0 = dev.alloc(DType::F32, 0).unwrap();
        let mut gw = dev.upload(&[5.0f32; 3]).unwrap();
        let zero = dev.upload(&[0.0f32; 3]).unwrap();
        dev.batch_norm_backward(
            &x0.view(&[0, 3]).unwrap(),
            &x0.view(&[0, 3]).unwrap(),
            CudaNormBackwardArgs {
                weight: None,
                stats: DeviceForwardStats::Saved {
                    mean: zero.view(&[3]).unwrap(),
                    invstd: zero.view(&[3]).unwrap(),
                },
                grads: DeviceGradients {
                    grad_weight: Some(gw.view_mut(&[3]).unwrap()),
                    ..Default::default()
                },
            },
        )
        .unwrap();
        assert_eq!(gw.download::<f32>().unwrap(), vec![0.0; 3]);
    }
}
