//! The CUDA kernels (kernels/*.cu), compiled for the host by build.rs and run by the
//! emulation (kernels/emu/cuda_emu.hpp), through the same launch planning as the GPU path,
//! compared with normkit's CPU ops. Every kernel variant, all four dtypes, both layouts, odd
//! shapes and sizes on both sides of each variant threshold.
//!
//! Skips (with a message) when the emulation was not built; `NORMKIT_REQUIRE_CUDA_EMU=1`
//! turns that into a failure.

use normkit::backend::cuda::emu::{self, EmuDevice};
use normkit::backend::cuda::launch::{ChannelOrder, LN_BLOCK_RESIDENT_COLS, LN_WARP_MAX_COLS};
use normkit::dtype::Real;
use normkit::ops::{
    BatchNormArgs, GroupNormArgs, InstanceNormArgs, LayerNormArgs, LrnArgs, batch_norm, group_norm,
    instance_norm, layer_norm, local_response_norm,
};
use normkit::tensor::ElementData;
use normkit::{Element, Tensor, TensorMut, bf16, f16};

mod emu_common;
use emu_common::{DEVICES, cast, data, ready};

/// (rtol, atol) for outputs of dtype T.
fn tol<T: Element>() -> (f64, f64) {
    match T::DTYPE.name() {
        "f64" => (1e-10, 1e-10),
        "f32" => (3e-5, 3e-5),
        "f16" => (4e-3, 4e-3),
        _ => (3e-2, 3e-2),
    }
}

fn assert_close(what: &str, got: &[f64], want: &[f64], (rtol, atol): (f64, f64)) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut bad = Vec::new();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan()) || g == w;
        if !ok {
            bad.push((i, g, w));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} values differ; first: {:?}",
        bad.len(),
        got.len(),
        &bad[..bad.len().min(5)]
    );
}

fn f64s<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}
fn cf64s<C: Real>(v: &[C]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Channels-last copy of (n, c, s) data: (n, s, c).
fn to_nhwc<T: Copy>(x: &[T], n: usize, c: usize, s: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len());
    for ni in 0..n {
        for si in 0..s {
            for ci in 0..c {
                out.push(x[(ni * c + ci) * s + si]);
            }
        }
    }
    out
}

fn tensors<'a, T: ElementData>(
    order: ChannelOrder,
    shape: &[usize],
    x: &'a [T],
    y: &'a mut [T],
) -> (Tensor<'a>, TensorMut<'a>) {
    match order {
        ChannelOrder::Nchw => (
            Tensor::new(x, shape).unwrap(),
            TensorMut::new(y, shape).unwrap(),
        ),
        ChannelOrder::Nhwc => (
            Tensor::channels_last(x, shape).unwrap(),
            TensorMut::channels_last(y, shape).unwrap(),
        ),
    }
}

fn orders() -> [ChannelOrder; 2] {
    [ChannelOrder::Nchw, ChannelOrder::Nhwc]
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

fn layer_norm_case<T>(
    dev: EmuDevice,
    rows: usize,
    cols: usize,
    affine: (bool, bool),
    misalign: bool,
) where
    T: ElementData,
    T::Compute: ElementData,
{
    let what = format!(
        "layer_norm {} rows {rows} cols {cols} affine {affine:?} misaligned {misalign} sms {}",
        T::DTYPE.name(),
        dev.sms
    );
    let pad = misalign as usize;
    let mut xs: Vec<T> = cast(&data(rows * cols + pad, (rows * 31 + cols) as u64, 3.0));
    if misalign {
        xs[0] = T::from_f64(0.0);
    }
    let x = &xs[pad..];
    let w: Vec<T::Compute> = cast::<T::Compute>(&data(cols, 7, 1.0));
    let b: Vec<T::Compute> = cast::<T::Compute>(&data(cols, 8, 0.0));
    let (wo, bo) = (affine.0.then_some(&w[..]), affine.1.then_some(&b[..]));
    let mut y_ref = vec![T::default(); rows * cols];
    let mut args = LayerNormArgs::new(&[cols]);
    args.weight = wo.map(|w| Tensor::new(w, &[cols]).unwrap());
    args.bias = bo.map(|b| Tensor::new(b, &[cols]).unwrap());
    args.eps = 1e-5;
    let stats = layer_norm(
        &Tensor::new(x, &[rows, cols]).unwrap(),
        &mut TensorMut::new(&mut y_ref[..], &[rows, cols]).unwrap(),
        args,
    )
    .unwrap();
    let mut ybuf = vec![T::default(); rows * cols + pad];
    let y = &mut ybuf[pad..];
    let (mean, rstd) = dev
        .layer_norm::<T>(x, y, wo, bo, rows, cols, 1e-5)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_close(&format!("{what}: y"), &f64s(y), &f64s(&y_ref), tol::<T>());
    let stat_tol = if T::DTYPE.name() == "f64" {
        (1e-10, 1e-10)
    } else {
        (1e-4, 1e-5)
    };
    assert_close(
        &format!("{what}: mean"),
        &cf64s(&mean),
        &stats.mean.to_f64_vec(),
        stat_tol,
    );
    assert_close(
        &format!("{what}: rstd"),
        &cf64s(&rstd),
        &stats.invstd.to_f64_vec(),
        stat_tol,
    );
}

fn layer_norm_all<T>()
where
    T: ElementData,
    T::Compute: ElementData,
{
    let colses = [
        1,
        7,
        13,
        97,
        LN_WARP_MAX_COLS,
        LN_WARP_MAX_COLS + 1,
        LN_BLOCK_RESIDENT_COLS,
        LN_BLOCK_RESIDENT_COLS + 1,
        // streamed rows with whole packs: vector loads of x, y, γ and β
        LN_BLOCK_RESIDENT_COLS + 8,
    ];
    for (i, &cols) in colses.iter().enumerate() {
        let rows = if cols > 1000 { 3 } else { [1, 7, 13][i % 3] };
        let affine = [(true, true), (false, false), (true, false), (false, true)][i % 4];
        for dev in DEVICES {
            layer_norm_case::<T>(dev, rows, cols, affine, false);
        }
        // odd base address: the scalar path of the same kernel
        layer_norm_case::<T>(DEVICES[0], rows, cols, affine, true);
    }
}

#[test]
fn layer_norm_f32() {
    if ready() {
        layer_norm_all::<f32>();
    }
}
#[test]
fn layer_norm_f64() {
    if ready() {
        layer_norm_all::<f64>();
    }
}
#[test]
fn layer_norm_f16() {
    if ready() {
        layer_norm_all::<f16>();
    }
}
#[test]
fn layer_norm_bf16() {
    if ready() {
        layer_norm_all::<bf16>();
    }
}

// ---------------------------------------------------------------------------------------------
// GroupNorm and InstanceNorm

fn group_norm_case<T>(
    dev: EmuDevice,
    order: ChannelOrder,
    (n, c, s): (usize, usize, usize),
    groups: usize,
    instance: bool,
) where
    T: ElementData,
    T::Compute: ElementData,
{
    let what = format!(
        "{} {} {order:?} shape ({n},{c},{s}) groups {groups} sms {}",
        if instance {
            "instance_norm"
        } else {
            "group_norm"
        },
        T::DTYPE.name(),
        dev.sms
    );
    let x: Vec<T> = cast(&data(n * c * s, (n * 100 + c * 10 + s) as u64, -2.0));
    let w: Vec<T::Compute> = cast::<T::Compute>(&data(c, 3, 1.0));
    let b: Vec<T::Compute> = cast::<T::Compute>(&data(c, 4, 0.5));
    let shape = [n, c, s, 1];
    let xt = match order {
        ChannelOrder::Nchw => x.clone(),
        ChannelOrder::Nhwc => to_nhwc(&x, n, c, s),
    };
    let mut y_ref = vec![T::default(); x.len()];
    let (xin, mut yout) = match order {
        ChannelOrder::Nchw => (
            Tensor::new(&xt[..], &shape).unwrap(),
            TensorMut::new(&mut y_ref[..], &shape).unwrap(),
        ),
        ChannelOrder::Nhwc => (
            Tensor::channels_last(&xt[..], &shape).unwrap(),
            TensorMut::channels_last(&mut y_ref[..], &shape).unwrap(),
        ),
    };
    let stats = if instance {
        instance_norm(
            &xin,
            &mut yout,
            InstanceNormArgs {
                weight: Some(Tensor::new(&w[..], &[c]).unwrap()),
                bias: Some(Tensor::new(&b[..], &[c]).unwrap()),
                ..Default::default()
            },
        )
    } else {
        let mut a = GroupNormArgs::new(groups);
        a.weight = Some(Tensor::new(&w[..], &[c]).unwrap());
        a.bias = Some(Tensor::new(&b[..], &[c]).unwrap());
        group_norm(&xin, &mut yout, a)
    }
    .unwrap();
    drop(yout);
    let mut y = vec![T::default(); x.len()];
    let (mean, rstd) = dev
        .group_norm::<T>(
            order,
            &xt,
            &mut y,
            Some(&w),
            Some(&b),
            (n, c, s),
            groups,
            1e-5,
            !instance,
            instance,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_close(&format!("{what}: y"), &f64s(&y), &f64s(&y_ref), tol::<T>());
    let stat_tol = if T::DTYPE.name() == "f64" {
        (1e-10, 1e-10)
    } else {
        (1e-4, 1e-5)
    };
    assert_close(
        &format!("{what}: mean"),
        &cf64s(&mean),
        &stats.mean.to_f64_vec(),
        stat_tol,
    );
    assert_close(
        &format!("{what}: rstd"),
        &cf64s(&rstd),
        &stats.invstd.to_f64_vec(),
        stat_tol,
    );
}

fn group_norm_all<T>()
where
    T: ElementData,
    T::Compute: ElementData,
{
    // The NCHW kernel (row_norm_block): (2, 8, 64) and (1, 4, 4096) take 16-byte packs within
    // one channel, registers up to a 512-thread block; (1, 2, 8200) streams with packs,
    // (1, 3, 3001) streams element by element; s % N != 0 elsewhere (packs across channels).
    let cases: [((usize, usize, usize), usize); 10] = [
        ((1, 1, 7), 1),
        ((2, 6, 7), 3),
        ((3, 4, 13), 2),
        ((1, 8, 97), 8),
        ((2, 12, 1), 4),
        ((1, 4, 1025), 2),
        ((2, 8, 64), 4),
        ((1, 4, 4096), 2),
        ((1, 2, 8200), 1),
        ((1, 3, 3001), 1),
    ];
    for (i, &(shape, groups)) in cases.iter().enumerate() {
        for order in orders() {
            group_norm_case::<T>(DEVICES[i % 2], order, shape, groups, false);
            if shape.2 > 1 {
                group_norm_case::<T>(DEVICES[(i + 1) % 2], order, shape, shape.1, true);
            }
        }
    }
}

#[test]
fn group_and_instance_norm_f32() {
    if ready() {
        group_norm_all::<f32>();
    }
}
#[test]
fn group_and_instance_norm_f64() {
    if ready() {
        group_norm_all::<f64>();
    }
}
#[test]
fn group_and_instance_norm_f16() {
    if ready() {
        group_norm_all::<f16>();
    }
}
#[test]
fn group_and_instance_norm_bf16() {
    if ready() {
        group_norm_all::<bf16>();
    }
}

// ---------------------------------------------------------------------------------------------
// BatchNorm

fn batch_norm_case<T>(
    dev: EmuDevice,
    order: ChannelOrder,
    (n, c, s): (usize, usize, usize),
    affine: bool,
) where
    T: ElementData,
    T::Compute: ElementData,
{
    let what = format!(
        "batch_norm {} {order:?} shape ({n},{c},{s}) affine {affine} sms {}",
        T::DTYPE.name(),
        dev.sms
    );
    let x: Vec<T> = cast(&data(n * c * s, (n * 7 + c * 3 + s) as u64, 5.0));
    let xt = match order {
        ChannelOrder::Nchw => x.clone(),
        ChannelOrder::Nhwc => to_nhwc(&x, n, c, s),
    };
    let w: Vec<T::Compute> = cast::<T::Compute>(&data(c, 5, 1.0));
    let b: Vec<T::Compute> = cast::<T::Compute>(&data(c, 6, 0.0));
    let rm0: Vec<T::Compute> = cast::<T::Compute>(&data(c, 9, 0.0));
    let rv0: Vec<T::Compute> = cast::<T::Compute>(&data(c, 10, 3.0));
    let shape = [n, c, s, 1];
    let (wo, bo) = if affine {
        (Some(&w[..]), Some(&b[..]))
    } else {
        (None, None)
    };

    // training, with running statistics
    let (mut rm_ref, mut rv_ref) = (rm0.clone(), rv0.clone());
    let mut y_ref = vec![T::default(); x.len()];
    let stats = {
        let (xin, mut yout) = tensors(order, &shape, &xt, &mut y_ref);
        batch_norm(
            &xin,
            &mut yout,
            BatchNormArgs {
                weight: wo.map(|w| Tensor::new(w, &[c]).unwrap()),
                bias: bo.map(|b| Tensor::new(b, &[c]).unwrap()),
                running_mean: Some(TensorMut::new(&mut rm_ref[..], &[c]).unwrap()),
                running_var: Some(TensorMut::new(&mut rv_ref[..], &[c]).unwrap()),
                training: true,
                momentum: Some(0.25),
                eps: 1e-5,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
    let mut y = vec![T::default(); x.len()];
    let (mean, rstd) = dev
        .batch_norm_train::<T>(
            order,
            &xt,
            &mut y,
            wo,
            bo,
            Some(&mut rm),
            Some(&mut rv),
            (n, c, s),
            1e-5,
            0.25,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_close(&format!("{what}: y"), &f64s(&y), &f64s(&y_ref), tol::<T>());
    let stat_tol = if T::DTYPE.name() == "f64" {
        (1e-10, 1e-10)
    } else {
        (1e-4, 1e-5)
    };
    assert_close(
        &format!("{what}: mean"),
        &cf64s(&mean),
        &stats.mean.to_f64_vec(),
        stat_tol,
    );
    assert_close(
        &format!("{what}: rstd"),
        &cf64s(&rstd),
        &stats.invstd.to_f64_vec(),
        stat_tol,
    );
    assert_close(
        &format!("{what}: running_mean"),
        &cf64s(&rm),
        &cf64s(&rm_ref),
        stat_tol,
    );
    assert_close(
        &format!("{what}: running_var"),
        &cf64s(&rv),
        &cf64s(&rv_ref),
        stat_tol,
    );

    // a second launch (counters were reset) gives bit-identical results
    let mut y2 = vec![T::default(); x.len()];
    let (mean2, rstd2) = dev
        .batch_norm_train::<T>(
            order,
            &xt,
            &mut y2,
            wo,
            bo,
            None,
            None,
            (n, c, s),
            1e-5,
            0.25,
        )
        .unwrap();
    assert!(
        y2 == y && mean2 == mean && rstd2 == rstd,
        "{what}: not deterministic"
    );

    // inference with the running statistics
    let mut y_ref = vec![T::default(); x.len()];
    {
        let (mut rm_in, mut rv_in) = (rm0.clone(), rv0.clone());
        let (xin, mut yout) = tensors(order, &shape, &xt, &mut y_ref);
        batch_norm(
            &xin,
            &mut yout,
            BatchNormArgs {
                weight: wo.map(|w| Tensor::new(w, &[c]).unwrap()),
                bias: bo.map(|b| Tensor::new(b, &[c]).unwrap()),
                running_mean: Some(TensorMut::new(&mut rm_in[..], &[c]).unwrap()),
                running_var: Some(TensorMut::new(&mut rv_in[..], &[c]).unwrap()),
                training: false,
                eps: 1e-5,
                ..Default::default()
            },
        )
        .unwrap();
    }
    let mut y = vec![T::default(); x.len()];
    dev.batch_norm_infer::<T>(order, &xt, &mut y, wo, bo, &rm0, &rv0, (n, c, s), 1e-5)
        .unwrap_or_else(|e| panic!("{what} inference: {e}"));
    assert_close(
        &format!("{what} inference: y"),
        &f64s(&y),
        &f64s(&y_ref),
        tol::<T>(),
    );
}

fn batch_norm_all<T>()
where
    T: ElementData,
    T::Compute: ElementData,
{
    // (8, 3, 169) and (4, 33, 97) split over several blocks at sms = 8 (straddling the
    // 32-channel NHWC tile for C = 33); (13, 1, 1) is BatchNorm1d-like. (3, 16, 24) and
    // (2, 40, 8): C and S multiples of every pack width, so the apply and inference kernels
    // take their 16-byte pack paths (with vector loads of the per-channel parameters).
    let cases = [
        (2, 3, 7),
        (8, 3, 169),
        (1, 5, 97),
        (13, 1, 1),
        (4, 33, 97),
        (3, 16, 24),
        (2, 40, 8),
    ];
    let split_dev = EmuDevice {
        sms: 8,
        reverse_blocks: true,
        reverse_threads: false,
    };
    for (i, &shape) in cases.iter().enumerate() {
        for order in orders() {
            batch_norm_case::<T>(DEVICES[i % 2], order, shape, i % 2 == 0);
            batch_norm_case::<T>(split_dev, order, shape, i % 2 == 1);
        }
    }
}

#[test]
fn batch_norm_f32() {
    if ready() {
        batch_norm_all::<f32>();
    }
}
#[test]
fn batch_norm_f64() {
    if ready() {
        batch_norm_all::<f64>();
    }
}
#[test]
fn batch_norm_f16() {
    if ready() {
        batch_norm_all::<f16>();
    }
}
#[test]
fn batch_norm_bf16() {
    if ready() {
        batch_norm_all::<bf16>();
    }
}

// ---------------------------------------------------------------------------------------------
// LocalResponseNorm

fn lrn_all<T>()
where
    T: ElementData,
    T::Compute: ElementData,
{
    for (i, &(n, c, s)) in [(1, 1, 1), (2, 7, 13), (1, 13, 7), (2, 3, 97)]
        .iter()
        .enumerate()
    {
        for size in [1, 2, 3, 5, 8] {
            for order in orders() {
                let dev = DEVICES[(i + size) % 2];
                let what = format!(
                    "lrn {} {order:?} ({n},{c},{s}) size {size}",
                    T::DTYPE.name()
                );
                let x: Vec<T> = cast(&data(n * c * s, (n + c + s + size) as u64, 0.5));
                let xt = match order {
                    ChannelOrder::Nchw => x.clone(),
                    ChannelOrder::Nhwc => to_nhwc(&x, n, c, s),
                };
                let shape = [n, c, s, 1];
                let mut y_ref = vec![T::default(); x.len()];
                let args = LrnArgs {
                    size,
                    alpha: 0.3,
                    beta: 0.75,
                    k: 1.5,
                };
                match order {
                    ChannelOrder::Nchw => local_response_norm(
                        &Tensor::new(&xt[..], &shape).unwrap(),
                        &mut TensorMut::new(&mut y_ref[..], &shape).unwrap(),
                        args,
                    ),
                    ChannelOrder::Nhwc => local_response_norm(
                        &Tensor::channels_last(&xt[..], &shape).unwrap(),
                        &mut TensorMut::channels_last(&mut y_ref[..], &shape).unwrap(),
                        args,
                    ),
                }
                .unwrap();
                let mut y = vec![T::default(); x.len()];
                dev.lrn::<T>(order, &xt, &mut y, (n, c, s), size, 0.3, 0.75, 1.5)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_close(&what, &f64s(&y), &f64s(&y_ref), tol::<T>());
            }
        }
    }
}

#[test]
fn lrn_f32() {
    if ready() {
        lrn_all::<f32>();
    }
}
#[test]
fn lrn_f64() {
    if ready() {
        lrn_all::<f64>();
    }
}
#[test]
fn lrn_f16() {
    if ready() {
        lrn_all::<f16>();
    }
}
#[test]
fn lrn_bf16() {
    if ready() {
        lrn_all::<bf16>();
    }
}

// ---------------------------------------------------------------------------------------------
// Emulator self-checks

#[test]
fn every_kernel_entry_point_is_in_the_emulation() {
    if !ready() {
        return;
    }
    let names = emu::kernel_names();
    for m in normkit::backend::cuda::modules::all() {
        for e in m.entry_points {
            assert!(
                names.iter().any(|n| n == e),
                "{e} ({}) not registered",
                m.name
            );
        }
    }
    assert_eq!(
        names.len(),
        normkit::backend::cuda::modules::all()
            .map(|m| m.entry_points.len())
            .sum::<usize>()
    );
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    if !ready() {
        return;
    }
    let dev = DEVICES[0];
    let x = vec![1.0f32; 4];
    let mut y = vec![0.0f32; 3];
    assert!(
        dev.layer_norm::<f32>(&x, &mut y, None, None, 2, 2, 1e-5)
            .is_err()
    );
    let mut y = vec![0.0f32; 4];
    assert!(
        dev.layer_norm::<f32>(&x, &mut y, None, None, 0, 2, 1e-5)
            .is_err()
    );
    assert!(
        dev.group_norm::<f32>(
            ChannelOrder::Nchw,
            &x,
            &mut y,
            None,
            None,
            (1, 4, 1),
            3,
            1e-5,
            true,
            false
        )
        .is_err()
    );
}

/// An infinity (NaN) in one channel / group: the kernels' saved mean and BatchNorm's running
/// mean are Σx/n as on the CPU and in PyTorch, +∞ (NaN), not the NaN that ∞ − ∞ in the Welford
/// update and Chan's merge would give; the other channels stay finite. Shapes that run one
/// block per channel, and split over several blocks (sms = 8), both layouts.
#[test]
fn non_finite_input_gives_the_mean_of_the_sum() {
    if !ready() {
        return;
    }
    let split_dev = EmuDevice {
        sms: 8,
        reverse_blocks: true,
        reverse_threads: false,
    };
    for dev in [DEVICES[0], DEVICES[1], split_dev] {
        for order in orders() {
            for (n, c, s) in [(2usize, 4usize, 5usize), (8, 3, 169), (64, 4, 1000)] {
                for bad in [f32::INFINITY, f32::NAN] {
                    let what = format!("{order:?} ({n},{c},{s}) sms {} bad {bad}", dev.sms);
                    let mut x: Vec<f32> = cast(&data(n * c * s, 3, 1.0));
                    // channel 1 of sample 0, at its last spatial position (NCHW) / row (NHWC)
                    let at = match order {
                        ChannelOrder::Nchw => s + s - 1,
                        ChannelOrder::Nhwc => (s - 1) * c + 1,
                    };
                    x[at] = bad;
                    let want = |v: f32| {
                        if bad.is_nan() {
                            v.is_nan()
                        } else {
                            v == f32::INFINITY
                        }
                    };
                    let (mut rm, mut rv) = (vec![0f32; c], vec![1f32; c]);
                    let mut y = vec![0f32; x.len()];
                    let (mean, _) = dev
                        .batch_norm_train::<f32>(
                            order,
                            &x,
                            &mut y,
                            None,
                            None,
                            Some(&mut rm),
                            Some(&mut rv),
                            (n, c, s),
                            1e-5,
                            0.1,
                        )
                        .unwrap();
                    assert!(
                        want(mean[1]) && want(rm[1]),
                        "batch_norm {what}: {mean:?} {rm:?}"
                    );
                    assert!(
                        [0, 2]
                            .iter()
                            .all(|&k| mean[k].is_finite() && rm[k].is_finite()),
                        "batch_norm {what}: {mean:?}"
                    );
                    if c % 2 == 0 {
                        let (mean, _) = dev
                            .group_norm::<f32>(
                                order,
                                &x,
                                &mut y,
                                None,
                                None,
                                (n, c, s),
                                2,
                                1e-5,
                                false,
                                false,
                            )
                            .unwrap();
                        // channel 1 of sample 0 is in group 0
                        assert!(want(mean[0]), "group_norm {what}: {mean:?}");
                        assert!(mean[1..].iter().all(|m| m.is_finite()), "group_norm {what}");
                    }
                }
            }
        }
    }
}
