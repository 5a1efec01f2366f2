//! The C ABI's CUDA context: every functional op, forward and backward, called through the
//! exported C functions on a context whose device is the CUDA host emulation (the same code
//! as on a GPU from the context down: device views of the C tensors, the device ops, the
//! kernels), against the same calls on a CPU context; and the CUDA context's errors.

mod emu_common;

use std::ffi::{CStr, c_void};
use std::ptr::null_mut;

use normkit::backend::cuda::device::{CudaDevice, DeviceBuffer};
use normkit::backend::cuda::emu::EmuDevice;
use normkit::capi::context::*;
use normkit::capi::error::normkit_status_t as S;
use normkit::capi::module::*;
use normkit::capi::ops::*;
use normkit::capi::tensor::*;
use normkit::{Buffer, DType, Layout};

/// A C tensor struct with the shape and strides arrays it points to.
struct CTensor {
    _shape: Vec<i64>,
    _strides: Vec<i64>,
    t: normkit_tensor_t,
}

fn dtype_code(d: DType) -> normkit_dtype_t {
    let (code, bits) = match d {
        DType::F32 => (NORMKIT_DTYPE_CODE_FLOAT, 32),
        DType::F64 => (NORMKIT_DTYPE_CODE_FLOAT, 64),
        DType::F16 => (NORMKIT_DTYPE_CODE_FLOAT, 16),
        DType::BF16 => (NORMKIT_DTYPE_CODE_BFLOAT, 16),
    };
    normkit_dtype_t {
        code,
        bits,
        lanes: 1,
    }
}

fn ctensor(
    data: *mut c_void,
    device: i32,
    d: DType,
    shape: &[usize],
    strides: &[usize],
) -> CTensor {
    let mut shape: Vec<i64> = shape.iter().map(|&v| v as i64).collect();
    let mut strides: Vec<i64> = strides.iter().map(|&v| v as i64).collect();
    let t = normkit_tensor_t {
        data,
        device: normkit_device_t {
            device_type: device,
            device_id: 0,
        },
        ndim: shape.len() as i32,
        dtype: dtype_code(d),
        shape: shape.as_mut_ptr(),
        strides: strides.as_mut_ptr(),
        byte_offset: 0,
    };
    CTensor {
        _shape: shape,
        _strides: strides,
        t,
    }
}

fn strides_of(shape: &[usize], lay: Layout) -> Vec<usize> {
    match lay {
        Layout::ChannelsLast => normkit::tensor::channels_last_strides(shape),
        _ => normkit::tensor::contiguous_strides(shape),
    }
}

/// One operand in host memory (for the CPU context) and device memory (the CUDA context).
struct Pair {
    host: Buffer,
    dev: DeviceBuffer,
    shape: Vec<usize>,
    strides: Vec<usize>,
    h: CTensor,
    d: CTensor,
}

impl Pair {
    fn new(dev: &CudaDevice, host: Buffer, shape: &[usize], lay: Layout) -> Box<Pair> {
        let db = dev.upload_buffer(&host).unwrap();
        let strides = strides_of(shape, lay);
        let mut p = Box::new(Pair {
            host,
            dev: db,
            shape: shape.to_vec(),
            strides,
            h: ctensor(null_mut(), NORMKIT_DEVICE_CPU, DType::F32, &[], &[]),
            d: ctensor(null_mut(), NORMKIT_DEVICE_CUDA, DType::F32, &[], &[]),
        });
        let d = p.host.dtype();
        let hp = host_ptr(&mut p.host);
        p.h = ctensor(hp, NORMKIT_DEVICE_CPU, d, &p.shape, &p.strides);
        p.d = ctensor(
            p.dev.ptr() as *mut c_void,
            NORMKIT_DEVICE_CUDA,
            d,
            &p.shape,
            &p.strides,
        );
        p
    }
    fn data(
        dev: &CudaDevice,
        d: DType,
        shape: &[usize],
        lay: Layout,
        seed: u64,
        offset: f64,
    ) -> Box<Pair> {
        let n = shape.iter().product();
        Pair::new(
            dev,
            Buffer::from_f64(d, &emu_common::data(n, seed, offset)),
            shape,
            lay,
        )
    }
    fn zeros(dev: &CudaDevice, d: DType, shape: &[usize], lay: Layout) -> Box<Pair> {
        let n = shape.iter().product();
        Pair::new(dev, Buffer::filled(d, n, 0.0), shape, lay)
    }
    fn h(&mut self) -> *mut normkit_tensor_t {
        &mut self.h.t
    }
    fn d(&mut self) -> *mut normkit_tensor_t {
        &mut self.d.t
    }
    /// Device values against host values, in the host tensor's element order.
    fn check(&self, what: &str) {
        let got = self.dev.download_f64().unwrap();
        emu_common::close(what, self.host.dtype(), &got, &self.host.to_f64_vec());
    }
}

fn host_ptr(b: &mut Buffer) -> *mut c_void {
    match b {
        Buffer::F32(v) => v.as_mut_ptr().cast(),
        Buffer::F64(v) => v.as_mut_ptr().cast(),
        Buffer::F16(v) => v.as_mut_ptr().cast(),
        Buffer::BF16(v) => v.as_mut_ptr().cast(),
    }
}

struct Contexts {
    cpu: *mut normkit_context_t,
    cuda: *mut normkit_context_t,
    dev: CudaDevice,
}

impl Drop for Contexts {
    fn drop(&mut self) {
        // SAFETY: both were created by this test and are destroyed once.
        unsafe {
            normkit_context_destroy(self.cpu);
            normkit_context_destroy(self.cuda);
        }
    }
}

fn contexts() -> Option<Contexts> {
    if !emu_common::ready() {
        return None;
    }
    let dev = CudaDevice::emulated(EmuDevice {
        sms: 2,
        reverse_blocks: true,
        reverse_threads: false,
    })
    .unwrap();
    let mut cfg = std::mem::MaybeUninit::uninit();
    let mut cpu = null_mut();
    // SAFETY: valid out-pointers.
    unsafe {
        assert_eq!(
            normkit_context_config_init(cfg.as_mut_ptr()),
            S::NORMKIT_STATUS_OK
        );
        let mut cfg = cfg.assume_init();
        cfg.device.device_type = NORMKIT_DEVICE_CPU;
        assert_eq!(normkit_context_create(&cfg, &mut cpu), S::NORMKIT_STATUS_OK);
    }
    let cuda = context_for_cuda_device(dev.clone());
    Some(Contexts { cpu, cuda, dev })
}

fn ok(what: &str, s: S) {
    assert_eq!(s, S::NORMKIT_STATUS_OK, "{what}: {}", last_error());
}

fn last_error() -> String {
    // SAFETY: the library returns a NUL-terminated thread-local string.
    unsafe { CStr::from_ptr(normkit::capi::normkit_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

const LAYOUTS: [Layout; 2] = [Layout::Contiguous, Layout::ChannelsLast];

#[test]
fn batch_norm_train_then_eval_matches_the_cpu_context() {
    let Some(c) = contexts() else { return };
    for d in [DType::F32, DType::BF16, DType::F64] {
        for lay in LAYOUTS {
            let shape = [3, 5, 7, 2];
            let sd = d.stat_dtype();
            let mut x = Pair::data(&c.dev, d, &shape, lay, 1, 4.0);
            let mut y = Pair::zeros(&c.dev, d, &shape, lay);
            let mut w = Pair::data(&c.dev, sd, &[5], Layout::Contiguous, 2, 1.0);
            let mut b = Pair::data(&c.dev, sd, &[5], Layout::Contiguous, 3, 0.0);
            let mut rm = Pair::zeros(&c.dev, sd, &[5], Layout::Contiguous);
            let mut rv = Pair::new(&c.dev, Buffer::filled(sd, 5, 1.0), &[5], Layout::Contiguous);
            let mut sm = Pair::zeros(&c.dev, sd, &[5], Layout::Contiguous);
            let mut si = Pair::zeros(&c.dev, sd, &[5], Layout::Contiguous);
            let (mut nh, mut nd) = (0i64, 0i64);
            for step in 0..3 {
                let training = step < 2;
                for (ctx, on_dev) in [(c.cpu, false), (c.cuda, true)] {
                    let t = |p: &mut Pair| if on_dev { p.d() } else { p.h() };
                    let mut a = normkit_batch_norm_args_t {
                        momentum_cumulative: true,
                        x: t(&mut x),
                        y: t(&mut y),
                        weight: t(&mut w),
                        bias: t(&mut b),
                        running_mean: t(&mut rm),
                        running_var: t(&mut rv),
                        num_batches_tracked: if on_dev { &mut nd } else { &mut nh },
                        save_mean: t(&mut sm),
                        save_invstd: t(&mut si),
                        ..unsafe_default_bn()
                    };
                    a.eps = 1e-3;
                    // SAFETY: every tensor struct and buffer outlives the call.
                    let s = unsafe {
                        if training {
                            normkit_batch_norm_forward_training(ctx, &a)
                        } else {
                            normkit_batch_norm_forward_inference(ctx, &a)
                        }
                    };
                    ok(&format!("batch_norm step {step} cuda={on_dev}"), s);
                }
                let what = format!("batch_norm {d} {lay:?} step {step}");
                y.check(&format!("{what} y"));
                rm.check(&format!("{what} running_mean"));
                rv.check(&format!("{what} running_var"));
                if training {
                    sm.check(&format!("{what} save_mean"));
                    si.check(&format!("{what} save_invstd"));
                }
                assert_eq!(nh, nd, "{what} num_batches_tracked");
            }
            assert_eq!(nd, 2);
        }
    }
}

fn unsafe_default_bn() -> normkit_batch_norm_args_t {
    let mut a = std::mem::MaybeUninit::uninit();
    // SAFETY: a valid out-pointer.
    unsafe {
        ok("args_init", normkit_batch_norm_args_init(a.as_mut_ptr()));
        a.assume_init()
    }
}

macro_rules! init {
    ($f:ident) => {{
        let mut a = std::mem::MaybeUninit::uninit();
        // SAFETY: a valid out-pointer.
        unsafe {
            ok(stringify!($f), $f(a.as_mut_ptr()));
            a.assume_init()
        }
    }};
}

#[test]
fn row_and_window_ops_and_their_backward_match_the_cpu_context() {
    let Some(c) = contexts() else { return };
    for d in [DType::F32, DType::F16, DType::F64] {
        for lay in LAYOUTS {
            let shape = [2, 6, 13];
            let sd = d.stat_dtype();
            let mut x = Pair::data(&c.dev, d, &shape, lay, 5, 2.0);
            let mut g = Pair::data(&c.dev, d, &shape, lay, 6, 0.0);
            let mut w = Pair::data(&c.dev, sd, &[6], Layout::Contiguous, 7, 1.0);
            let mut bias = Pair::data(&c.dev, sd, &[6], Layout::Contiguous, 8, 0.0);
            let mut y = Pair::zeros(&c.dev, d, &shape, lay);
            let mut dx = Pair::zeros(&c.dev, d, &shape, lay);
            let mut dw = Pair::zeros(&c.dev, sd, &[6], Layout::Contiguous);
            let mut db = Pair::zeros(&c.dev, sd, &[6], Layout::Contiguous);
            let mut sm = Pair::zeros(&c.dev, sd, &[6], Layout::Contiguous); // N·G = 2·3
            let mut si = Pair::zeros(&c.dev, sd, &[6], Layout::Contiguous);
            let mut sm_in = Pair::zeros(&c.dev, sd, &[12], Layout::Contiguous); // N·C
            let mut si_in = Pair::zeros(&c.dev, sd, &[12], Layout::Contiguous);
            let what = format!("{d} {lay:?}");
            for (ctx, on) in [(c.cpu, false), (c.cuda, true)] {
                let t = |p: &mut Pair| if on { p.d() } else { p.h() };
                // GroupNorm, 3 groups, forward then backward
                let mut a: normkit_group_norm_args_t = init!(normkit_group_norm_args_init);
                (a.x, a.y, a.weight, a.bias) = (t(&mut x), t(&mut y), t(&mut w), t(&mut bias));
                (a.save_mean, a.save_invstd, a.num_groups) = (t(&mut sm), t(&mut si), 3);
                // SAFETY: every tensor outlives the call.
                ok("group_norm", unsafe { normkit_group_norm_forward(ctx, &a) });
                let mut b: normkit_group_norm_backward_args_t =
                    init!(normkit_group_norm_backward_args_init);
                (b.x, b.grad_output, b.weight) = (t(&mut x), t(&mut g), t(&mut w));
                (b.save_mean, b.save_invstd, b.num_groups) = (t(&mut sm), t(&mut si), 3);
                (b.grad_input, b.grad_weight, b.grad_bias) = (t(&mut dx), t(&mut dw), t(&mut db));
                // SAFETY: as above.
                ok("group_norm_backward", unsafe {
                    normkit_group_norm_backward(ctx, &b)
                });
            }
            for (p, n) in [
                (&y, "y"),
                (&sm, "save_mean"),
                (&si, "save_invstd"),
                (&dx, "dx"),
                (&dw, "dw"),
                (&db, "db"),
            ] {
                p.check(&format!("group_norm {what} {n}"));
            }
            for (ctx, on) in [(c.cpu, false), (c.cuda, true)] {
                let t = |p: &mut Pair| if on { p.d() } else { p.h() };
                // InstanceNorm (input statistics), forward then backward, accumulating
                let mut a: normkit_instance_norm_args_t = init!(normkit_instance_norm_args_init);
                (a.x, a.y, a.weight, a.bias) = (t(&mut x), t(&mut y), t(&mut w), t(&mut bias));
                (a.save_mean, a.save_invstd) = (t(&mut sm_in), t(&mut si_in));
                // SAFETY: every tensor outlives the call.
                ok("instance_norm", unsafe {
                    normkit_instance_norm_forward(ctx, &a)
                });
                let mut b: normkit_norm_backward_args_t = init!(normkit_norm_backward_args_init);
                (b.x, b.grad_output, b.weight) = (t(&mut x), t(&mut g), t(&mut w));
                (b.save_mean, b.save_invstd, b.accumulate) = (t(&mut sm_in), t(&mut si_in), true);
                (b.grad_input, b.grad_weight, b.grad_bias) = (t(&mut dx), t(&mut dw), t(&mut db));
                // SAFETY: as above.
                ok("instance_norm_backward", unsafe {
                    normkit_instance_norm_backward(ctx, &b)
                });
                // LocalResponseNorm forward and backward (size 4)
                let mut l: normkit_local_response_norm_args_t =
                    init!(normkit_local_response_norm_args_init);
                (l.x, l.y, l.size) = (t(&mut x), t(&mut y), 4);
                // SAFETY: as above.
                ok("lrn", unsafe {
                    normkit_local_response_norm_forward(ctx, &l)
                });
            }
            for (p, n) in [
                (&y, "lrn y"),
                (&sm_in, "in save_mean"),
                (&si_in, "in save_invstd"),
                (&dx, "in dx"),
                (&dw, "in dw acc"),
                (&db, "in db acc"),
            ] {
                p.check(&format!("instance_norm/lrn {what} {n}"));
            }
            for (ctx, on) in [(c.cpu, false), (c.cuda, true)] {
                let t = |p: &mut Pair| if on { p.d() } else { p.h() };
                let mut l: normkit_local_response_norm_backward_args_t =
                    init!(normkit_local_response_norm_backward_args_init);
                (l.x, l.grad_output, l.grad_input, l.size) = (t(&mut x), t(&mut g), t(&mut dx), 3);
                // SAFETY: every tensor outlives the call.
                ok("lrn_backward", unsafe {
                    normkit_local_response_norm_backward(ctx, &l)
                });
            }
            dx.check(&format!("lrn backward {what}"));
        }
    }
}

#[test]
fn layer_norm_and_frozen_batch_norm_backward_match_the_cpu_context() {
    let Some(c) = contexts() else { return };
    for d in [DType::F32, DType::BF16] {
        let shape = [3, 4, 5];
        let sd = d.stat_dtype();
        let lay = Layout::Contiguous;
        let mut x = Pair::data(&c.dev, d, &shape, lay, 9, -3.0);
        let mut g = Pair::data(&c.dev, d, &shape, lay, 10, 0.0);
        let mut y = Pair::zeros(&c.dev, d, &shape, lay);
        let mut w = Pair::data(&c.dev, sd, &[4, 5], lay, 11, 1.0);
        let mut sm = Pair::zeros(&c.dev, sd, &[3], lay);
        let mut si = Pair::zeros(&c.dev, sd, &[3], lay);
        let mut dx = Pair::zeros(&c.dev, d, &shape, lay);
        let mut dw = Pair::zeros(&c.dev, sd, &[4, 5], lay);
        let mut rm = Pair::data(&c.dev, sd, &[4], lay, 12, 0.0);
        let mut rv = Pair::new(&c.dev, Buffer::filled(sd, 4, 2.5), &[4], lay);
        let mut wc = Pair::data(&c.dev, sd, &[4], lay, 13, 1.0);
        let mut dwc = Pair::zeros(&c.dev, sd, &[4], lay);
        let mut dbc = Pair::zeros(&c.dev, sd, &[4], lay);
        for (ctx, on) in [(c.cpu, false), (c.cuda, true)] {
            let t = |p: &mut Pair| if on { p.d() } else { p.h() };
            let mut a: normkit_layer_norm_args_t = init!(normkit_layer_norm_args_init);
            (a.x, a.y, a.weight, a.normalized_ndim) = (t(&mut x), t(&mut y), t(&mut w), 2);
            (a.save_mean, a.save_invstd) = (t(&mut sm), t(&mut si));
            // SAFETY: every tensor outlives the call.
            ok("layer_norm", unsafe { normkit_layer_norm_forward(ctx, &a) });
            let mut b: normkit_layer_norm_backward_args_t =
                init!(normkit_layer_norm_backward_args_init);
            (b.x, b.grad_output, b.weight, b.normalized_ndim) =
                (t(&mut x), t(&mut g), t(&mut w), 2);
            (b.save_mean, b.save_invstd) = (t(&mut sm), t(&mut si));
            (b.grad_input, b.grad_weight) = (t(&mut dx), t(&mut dw));
            // SAFETY: as above.
            ok("layer_norm_backward", unsafe {
                normkit_layer_norm_backward(ctx, &b)
            });
        }
        for (p, n) in [
            (&y, "y"),
            (&sm, "save_mean"),
            (&si, "save_invstd"),
            (&dx, "dx"),
            (&dw, "dw"),
        ] {
            p.check(&format!("layer_norm {d} {n}"));
        }
        for (ctx, on) in [(c.cpu, false), (c.cuda, true)] {
            let t = |p: &mut Pair| if on { p.d() } else { p.h() };
            let mut b: normkit_norm_backward_args_t = init!(normkit_norm_backward_args_init);
            (b.x, b.grad_output, b.weight) = (t(&mut x), t(&mut g), t(&mut wc));
            (b.running_mean, b.running_var, b.eps) = (t(&mut rm), t(&mut rv), 1e-2);
            (b.grad_input, b.grad_weight, b.grad_bias) = (t(&mut dx), t(&mut dwc), t(&mut dbc));
            // SAFETY: every tensor outlives the call.
            ok("frozen batch_norm_backward", unsafe {
                normkit_batch_norm_backward(ctx, &b)
            });
        }
        for (p, n) in [(&dx, "dx"), (&dwc, "dw"), (&dbc, "db")] {
            p.check(&format!("frozen batch_norm backward {d} {n}"));
        }
    }
}

#[test]
fn cuda_context_errors() {
    let Some(c) = contexts() else { return };
    let shape = [2, 3, 4];
    let mut x = Pair::data(&c.dev, DType::F32, &shape, Layout::Contiguous, 1, 0.0);
    let mut y = Pair::zeros(&c.dev, DType::F32, &shape, Layout::Contiguous);
    let status = |s: S, want: S, what: &str| {
        assert_eq!(s, want, "{what}: {}", last_error());
        assert!(!last_error().is_empty());
    };
    let mut l: normkit_local_response_norm_args_t = init!(normkit_local_response_norm_args_init);
    l.size = 3;
    // host memory on a CUDA context
    (l.x, l.y) = (x.h(), y.d());
    // SAFETY: every tensor outlives the call (also below).
    status(
        unsafe { normkit_local_response_norm_forward(c.cuda, &l) },
        S::NORMKIT_STATUS_DEVICE_MISMATCH,
        "host x",
    );
    assert!(last_error().contains("CUDA device 0"), "{}", last_error());
    // device memory on a CPU context
    (l.x, l.y) = (x.d(), y.h());
    status(
        unsafe { normkit_local_response_norm_forward(c.cpu, &l) },
        S::NORMKIT_STATUS_DEVICE_MISMATCH,
        "device x on cpu",
    );
    // a device-typed tensor whose address is not device memory (the driver/emulator check)
    let mut fake = ctensor(
        host_ptr(&mut x.host),
        NORMKIT_DEVICE_CUDA,
        DType::F32,
        &shape,
        &strides_of(&shape, Layout::Contiguous),
    );
    (l.x, l.y) = (&mut fake.t, y.d());
    status(
        unsafe { normkit_local_response_norm_forward(c.cuda, &l) },
        S::NORMKIT_STATUS_DEVICE_MISMATCH,
        "host address typed CUDA",
    );
    // LRN in place is not possible on CUDA
    (l.x, l.y) = (x.d(), x.d());
    status(
        unsafe { normkit_local_response_norm_forward(c.cuda, &l) },
        S::NORMKIT_STATUS_UNSUPPORTED_LAYOUT,
        "lrn in place",
    );
    // strided (non-dense) device tensor
    let mut strided = ctensor(
        x.dev.ptr() as *mut c_void,
        NORMKIT_DEVICE_CUDA,
        DType::F32,
        &[2, 3, 2],
        &[12, 4, 2],
    );
    let mut ys = Pair::zeros(&c.dev, DType::F32, &[2, 3, 2], Layout::Contiguous);
    (l.x, l.y) = (&mut strided.t, ys.d());
    status(
        unsafe { normkit_local_response_norm_forward(c.cuda, &l) },
        S::NORMKIT_STATUS_UNSUPPORTED_LAYOUT,
        "strided",
    );
    // misaligned device address
    let mut mis = ctensor(
        x.dev.ptr() as *mut c_void,
        NORMKIT_DEVICE_CUDA,
        DType::F32,
        &shape,
        &strides_of(&shape, Layout::Contiguous),
    );
    mis.t.byte_offset = 2;
    (l.x, l.y) = (&mut mis.t, y.d());
    status(
        unsafe { normkit_local_response_norm_forward(c.cuda, &l) },
        S::NORMKIT_STATUS_UNSUPPORTED_LAYOUT,
        "misaligned",
    );
    // in-place (same view) LayerNorm works on CUDA
    let mut a: normkit_layer_norm_args_t = init!(normkit_layer_norm_args_init);
    (a.x, a.y) = (x.d(), x.d());
    ok("layer_norm in place", unsafe {
        normkit_layer_norm_forward(c.cuda, &a)
    });
    // wrong saved-statistics dtype on CUDA (f64 for f32 input)
    let mut sm64 = Pair::zeros(&c.dev, DType::F64, &[6], Layout::Contiguous);
    (a.x, a.y, a.save_mean) = (x.d(), y.d(), sm64.d());
    status(
        unsafe { normkit_layer_norm_forward(c.cuda, &a) },
        S::NORMKIT_STATUS_UNSUPPORTED_DTYPE,
        "save_mean dtype",
    );
    // a module created on the CUDA context lives there: the CPU context is refused
    let mut cfg: normkit_layer_norm_config_t = init!(normkit_layer_norm_config_init);
    cfg.normalized_shape[0] = 4;
    cfg.normalized_ndim = 1;
    let mut m = null_mut();
    ok("module on cuda", unsafe {
        normkit_layer_norm_create(c.cuda, &cfg, &mut m)
    });
    status(
        unsafe { normkit_module_forward(c.cpu, m, x.h(), y.h()) },
        S::NORMKIT_STATUS_DEVICE_MISMATCH,
        "cuda module, cpu ctx",
    );
    ok("cuda module forward", unsafe {
        normkit_module_forward(c.cuda, m, x.d(), y.d())
    });
    // SAFETY: created above, destroyed once.
    unsafe { normkit_module_destroy(m) };
}

use normkit::capi::comm::{normkit_communicator_init, normkit_communicator_t};

/// all_gather of a mirrored 2-rank group: the other rank sent the same payload.
unsafe extern "C" fn mirror_gather(
    _: *mut c_void,
    send: *const f64,
    recv: *mut f64,
    n: usize,
) -> i32 {
    // SAFETY: normkit passes `n` readable doubles at `send` and 2·n writable ones at `recv`.
    unsafe {
        std::ptr::copy_nonoverlapping(send, recv, n);
        std::ptr::copy_nonoverlapping(send, recv.add(n), n);
    }
    0
}

/// all_reduce_sum of a mirrored 2-rank group: twice this rank's values.
unsafe extern "C" fn mirror_reduce(_: *mut c_void, data: *mut f64, n: usize) -> i32 {
    // SAFETY: normkit passes `n` writable doubles at `data`.
    let d = unsafe { std::slice::from_raw_parts_mut(data, n) };
    d.iter_mut().for_each(|v| *v *= 2.0);
    0
}

#[test]
fn sync_batch_norm_on_a_cuda_context_matches_the_cpu_context() {
    let Some(c) = contexts() else { return };
    let mut comm: normkit_communicator_t = init!(normkit_communicator_init);
    comm.world_size = 2;
    comm.rank = 0;
    comm.all_gather = Some(mirror_gather);
    comm.all_reduce_sum = Some(mirror_reduce);
    for lay in LAYOUTS {
        let d = DType::F32;
        let shape = [2, 3, 5, 2];
        let mut x = Pair::data(&c.dev, d, &shape, lay, 21, 3.0);
        let mut g = Pair::data(&c.dev, d, &shape, lay, 22, 0.0);
        let mut y = Pair::zeros(&c.dev, d, &shape, lay);
        let mut dx = Pair::zeros(&c.dev, d, &shape, lay);
        let mut w = Pair::data(&c.dev, d, &[3], Layout::Contiguous, 23, 1.0);
        let mut rm = Pair::zeros(&c.dev, d, &[3], Layout::Contiguous);
        let mut rv = Pair::new(&c.dev, Buffer::filled(d, 3, 1.0), &[3], Layout::Contiguous);
        let mut sm = Pair::zeros(&c.dev, d, &[3], Layout::Contiguous);
        let mut si = Pair::zeros(&c.dev, d, &[3], Layout::Contiguous);
        let mut dw = Pair::zeros(&c.dev, d, &[3], Layout::Contiguous);
        let mut counts = [0.0f64; 2];
        for (k, (ctx, on)) in [(c.cpu, false), (c.cuda, true)].into_iter().enumerate() {
            let t = |p: &mut Pair| if on { p.d() } else { p.h() };
            let mut a = unsafe_default_bn();
            (a.x, a.y, a.weight) = (t(&mut x), t(&mut y), t(&mut w));
            (a.running_mean, a.running_var) = (t(&mut rm), t(&mut rv));
            (a.save_mean, a.save_invstd) = (t(&mut sm), t(&mut si));
            // SAFETY: every tensor and the table outlive the call.
            ok("sync forward", unsafe {
                normkit_sync_batch_norm_forward(ctx, &a, &comm, &mut counts[k])
            });
            let mut b: normkit_norm_backward_args_t = init!(normkit_norm_backward_args_init);
            (b.x, b.grad_output, b.weight) = (t(&mut x), t(&mut g), t(&mut w));
            (b.save_mean, b.save_invstd) = (t(&mut sm), t(&mut si));
            (b.grad_input, b.grad_weight) = (t(&mut dx), t(&mut dw));
            // SAFETY: as above.
            ok("sync backward", unsafe {
                normkit_sync_batch_norm_backward(ctx, &b, &comm, counts[k])
            });
        }
        assert_eq!(counts[0], counts[1]);
        assert_eq!(
            counts[0],
            2.0 * 2.0 * 10.0,
            "the mirrored group doubles the batch"
        );
        for (p, n) in [
            (&y, "y"),
            (&rm, "running_mean"),
            (&rv, "running_var"),
            (&sm, "save_mean"),
            (&si, "save_invstd"),
            (&dx, "dx"),
            (&dw, "dw"),
        ] {
            p.check(&format!("sync_batch_norm {lay:?} {n}"));
        }
    }
}

#[test]
fn modules_on_a_cuda_context_match_the_cpu_context() {
    let Some(c) = contexts() else { return };
    let d = DType::F32;
    let shape = [3, 4, 5, 2];
    let lay = Layout::ChannelsLast;
    let mut cfg: normkit_batch_norm_config_t = init!(normkit_batch_norm_config_init);
    (cfg.kind, cfg.num_features, cfg.momentum_cumulative) = (NORMKIT_KIND_2D, 4, true);
    let (mut mh, mut md) = (null_mut(), null_mut());
    // SAFETY: valid config and out-pointers.
    unsafe {
        ok(
            "create cpu",
            normkit_batch_norm_create(c.cpu, &cfg, &mut mh),
        );
        ok(
            "create cuda",
            normkit_batch_norm_create(c.cuda, &cfg, &mut md),
        );
    }
    let mut y = Pair::zeros(&c.dev, d, &shape, lay);
    let mut dx = Pair::zeros(&c.dev, d, &shape, lay);
    let mut w = Pair::data(&c.dev, d, &[4], Layout::Contiguous, 31, 1.0);
    let name = std::ffi::CString::new("weight").unwrap();
    // SAFETY: the weight tensors outlive the calls.
    unsafe {
        ok(
            "set weight cpu",
            normkit_module_set_state(c.cpu, mh, name.as_ptr(), w.h()),
        );
        ok(
            "set weight cuda",
            normkit_module_set_state(c.cuda, md, name.as_ptr(), w.d()),
        );
    }
    for (k, training) in [true, true, false].into_iter().enumerate() {
        let mut x = Pair::data(&c.dev, d, &shape, lay, 90 + k as u64, 2.0);
        let mut g = Pair::data(&c.dev, d, &shape, lay, 95 + k as u64, 0.0);
        for (ctx, m, on) in [(c.cpu, mh, false), (c.cuda, md, true)] {
            let t = |p: &mut Pair| if on { p.d() } else { p.h() };
            // SAFETY: every tensor outlives the calls; the module is live.
            unsafe {
                ok("set_training", normkit_module_set_training(m, training));
                ok(
                    "module forward",
                    normkit_module_forward(ctx, m, t(&mut x), t(&mut y)),
                );
                ok(
                    "module backward",
                    normkit_module_backward(ctx, m, t(&mut x), t(&mut g), t(&mut dx)),
                );
            }
        }
        y.check(&format!("module step {k} y"));
        dx.check(&format!("module step {k} dx"));
    }
    // state read into device memory (CUDA context) vs host memory (CPU context)
    for entry in ["running_mean", "running_var", "weight", "bias"] {
        let n = std::ffi::CString::new(entry).unwrap();
        let mut s = Pair::zeros(&c.dev, d, &[4], Layout::Contiguous);
        // SAFETY: the tensors outlive the calls.
        unsafe {
            ok(
                "get_state cpu",
                normkit_module_get_state(c.cpu, mh, n.as_ptr(), s.h()),
            );
            ok(
                "get_state cuda",
                normkit_module_get_state(c.cuda, md, n.as_ptr(), s.d()),
            );
        }
        s.check(&format!("module state {entry}"));
    }
    // gradients (host memory for both)
    for entry in ["weight", "bias"] {
        let n = std::ffi::CString::new(entry).unwrap();
        let (mut a, mut b) = (Buffer::filled(d, 4, 0.0), Buffer::filled(d, 4, 0.0));
        let mut ta = ctensor(host_ptr(&mut a), NORMKIT_DEVICE_CPU, d, &[4], &[1]);
        let mut tb = ctensor(host_ptr(&mut b), NORMKIT_DEVICE_CPU, d, &[4], &[1]);
        // SAFETY: the buffers outlive the calls.
        unsafe {
            ok(
                "get_grad cpu",
                normkit_module_get_grad(mh, n.as_ptr(), &mut ta.t),
            );
            ok(
                "get_grad cuda",
                normkit_module_get_grad(md, n.as_ptr(), &mut tb.t),
            );
        }
        emu_common::close(
            &format!("module grad {entry}"),
            d,
            &b.to_f64_vec(),
            &a.to_f64_vec(),
        );
    }
    let mut counts = [0i64; 2];
    let cn = std::ffi::CString::new("num_batches_tracked").unwrap();
    for (i, m) in [mh, md].into_iter().enumerate() {
        let mut t = ctensor(
            (&mut counts[i] as *mut i64).cast(),
            NORMKIT_DEVICE_CPU,
            DType::F32,
            &[],
            &[],
        );
        t.t.dtype = normkit_dtype_t {
            code: NORMKIT_DTYPE_CODE_INT,
            bits: 64,
            lanes: 1,
        };
        // SAFETY: the counter outlives the call.
        ok("counter", unsafe {
            normkit_module_get_state(c.cpu, m, cn.as_ptr(), &mut t.t)
        });
    }
    assert_eq!(counts, [2, 2]);
    // SAFETY: created above, destroyed once.
    unsafe {
        normkit_module_destroy(mh);
        normkit_module_destroy(md);
    }
}
