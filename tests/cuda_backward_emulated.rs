//! The CUDA backward kernels (kernels/*.cu `*_bwd_*`), compiled for the host by build.rs and
//! run by the emulation through the same launch planning as the GPU path, compared with
//! normkit's CPU backward ops (`ops::*_backward`): every kernel, all four dtypes, both layouts,
//! odd shapes and sizes on both sides of the variant and split thresholds, with and without
//! the optional weight and gradient outputs, overwrite and accumulate.
//!
//! Skips (with a message) when the emulation was not built; `NORMKIT_REQUIRE_CUDA_EMU=1`
//! turns that into a failure.

use normkit::backend::cuda::emu::EmuGrads;
use normkit::backend::cuda::launch::{ChannelOrder, LN_BWD_RESIDENT_COLS};
use normkit::dtype::Real;
use normkit::ops::{
    BatchNormArgs, ForwardStats, Gradients, GroupNormArgs, GroupNormBackwardArgs, InstanceNormArgs,
    LayerNormArgs, LayerNormBackwardArgs, LrnArgs, NormBackwardArgs, batch_norm,
    batch_norm_backward, group_norm, group_norm_backward, instance_norm, instance_norm_backward,
    layer_norm, layer_norm_backward, local_response_norm_backward,
};
use normkit::tensor::ElementData;
use normkit::{Element, Tensor, TensorMut, bf16, f16};

mod emu_common;
use emu_common::{DEVICES, cast, data, ready};

fn f64s<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// (rtol, atol) of dx in dtype T (one rounding of the output apart, plus sum-order effects).
fn tol<T: Element>() -> (f64, f64) {
    match T::DTYPE.name() {
        "f64" => (1e-10, 1e-10),
        "f32" => (3e-5, 3e-5),
        "f16" => (4e-3, 4e-3),
        _ => (3e-2, 3e-2),
    }
}

/// (rtol, atol) of a parameter gradient summed over `count` elements: sums in a different
/// order (f32 on the device, f64 on the CPU for f32 input) differ by about √count roundings.
fn param_tol<T: Element>(count: usize) -> (f64, f64) {
    let base = if T::DTYPE.name() == "f64" {
        1e-11
    } else {
        1e-5
    };
    (base, base * (count as f64).sqrt())
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

fn view<'a, T: ElementData>(order: ChannelOrder, shape: &[usize], x: &'a [T]) -> Tensor<'a> {
    match order {
        ChannelOrder::Nchw => Tensor::new(x, shape).unwrap(),
        ChannelOrder::Nhwc => Tensor::channels_last(x, shape).unwrap(),
    }
}
fn view_mut<'a, T: ElementData>(
    order: ChannelOrder,
    shape: &[usize],
    x: &'a mut [T],
) -> TensorMut<'a> {
    match order {
        ChannelOrder::Nchw => TensorMut::new(x, shape).unwrap(),
        ChannelOrder::Nhwc => TensorMut::channels_last(x, shape).unwrap(),
    }
}

/// Which outputs a case requests: (dx, grad_weight, grad_bias, accumulate, weight given).
#[derive(Clone, Copy, Debug)]
struct Want {
    dx: bool,
    dw: bool,
    db: bool,
    accumulate: bool,
    weight: bool,
}

const WANTS: [Want; 4] = [
    Want {
        dx: true,
        dw: true,
        db: true,
        accumulate: false,
        weight: true,
    },
    Want {
        dx: true,
        dw: false,
        db: false,
        accumulate: false,
        weight: false,
    },
    Want {
        dx: false,
        dw: true,
        db: true,
        accumulate: true,
        weight: true,
    },
    Want {
        dx: true,
        dw: true,
        db: false,
        accumulate: true,
        weight: false,
    },
];

/// Gradient buffers of both sides: dx in T, parameter gradients in the compute type,
/// pre-filled (so accumulate and overwrite are both observable).
struct Bufs<T: Element> {
    dx: Vec<T>,
    dw: Vec<T::Compute>,
    db: Vec<T::Compute>,
}

impl<T: Element> Bufs<T> {
    fn new(total: usize, params: usize) -> Self {
        Bufs {
            dx: vec![T::from_f64(7.0); total],
            dw: data(params, 11, 0.0)
                .into_iter()
                .map(Real::from_f64)
                .collect(),
            db: data(params, 12, 0.0)
                .into_iter()
                .map(Real::from_f64)
                .collect(),
        }
    }
    fn emu(&mut self, w: Want) -> EmuGrads<'_, T, T::Compute> {
        EmuGrads {
            dx: w.dx.then_some(&mut self.dx[..]),
            grad_weight: w.dw.then_some(&mut self.dw[..]),
            grad_bias: w.db.then_some(&mut self.db[..]),
            accumulate: w.accumulate,
        }
    }
    fn cpu(&mut self, w: Want, order: ChannelOrder, shape: &[usize]) -> Gradients<'_>
    where
        T: ElementData,
        T::Compute: ElementData,
    {
        let p = [self.dw.len()];
        Gradients {
            grad_input: w.dx.then(|| view_mut(order, shape, &mut self.dx[..])),
            grad_weight: w.dw.then(|| TensorMut::new(&mut self.dw[..], &p).unwrap()),
            grad_bias: w.db.then(|| TensorMut::new(&mut self.db[..], &p).unwrap()),
            accumulate: w.accumulate,
        }
    }
    fn compare(&self, what: &str, want: &Self, count: usize) {
        assert_close(
            &format!("{what}: dx"),
            &f64s(&self.dx),
            &f64s(&want.dx),
            tol::<T>(),
        );
        let c = |v: &[T::Compute]| v.iter().map(|x| x.to_f64()).collect::<Vec<_>>();
        let pt = param_tol::<T>(count);
        assert_close(
            &format!("{what}: grad_weight"),
            &c(&self.dw),
            &c(&want.dw),
            pt,
        );
        assert_close(
            &format!("{what}: grad_bias"),
            &c(&self.db),
            &c(&want.db),
            pt,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

fn layer_norm_case<T>(rows: usize, cols: usize, w: Want)
where
    T: ElementData,
    T::Compute: ElementData,
{
    let x: Vec<T> = cast(&data(rows * cols, (rows * 31 + cols) as u64, 3.0));
    layer_norm_case_of(&x, rows, cols, w);
}

/// [`layer_norm_case`] on the given `x` (`rows·cols` elements).
fn layer_norm_case_of<T>(x: &[T], rows: usize, cols: usize, w: Want)
where
    T: ElementData,
    T::Compute: ElementData,
{
    let g: Vec<T> = cast(&data(rows * cols, (rows * 17 + cols) as u64, 0.0));
    let weight: Vec<T::Compute> = cast(&data(cols, 7, 1.0));
    let wo = w.weight.then_some(&weight[..]);
    let mut y = vec![T::default(); rows * cols];
    let mut args = LayerNormArgs::new(&[cols]);
    args.weight = wo.map(|w| Tensor::new(w, &[cols]).unwrap());
    args.eps = 1e-5;
    let stats = layer_norm(
        &Tensor::new(x, &[rows, cols]).unwrap(),
        &mut TensorMut::new(&mut y[..], &[rows, cols]).unwrap(),
        args,
    )
    .unwrap();
    let mean: Vec<T::Compute> = cast(&stats.mean.to_f64_vec());
    let rstd: Vec<T::Compute> = cast(&stats.invstd.to_f64_vec());
    let mut want = Bufs::<T>::new(rows * cols, cols);
    layer_norm_backward(
        &Tensor::new(&g[..], &[rows, cols]).unwrap(),
        &Tensor::new(x, &[rows, cols]).unwrap(),
        LayerNormBackwardArgs {
            normalized_shape: vec![cols],
            weight: wo.map(|w| Tensor::new(w, &[cols]).unwrap()),
            mean: stats.mean.view(),
            invstd: stats.invstd.view(),
            grads: want.cpu(w, ChannelOrder::Nchw, &[rows, cols]),
        },
    )
    .unwrap();
    for dev in DEVICES {
        let what = format!(
            "layer_norm_bwd {} rows {rows} cols {cols} {w:?} sms {}",
            T::DTYPE.name(),
            dev.sms
        );
        let mut got = Bufs::<T>::new(rows * cols, cols);
        dev.layer_norm_backward::<T>(x, &g, &mean, &rstd, wo, rows, cols, got.emu(w))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        got.compare(&what, &want, rows);
    }
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
        256,
        257,
        1025,
        LN_BWD_RESIDENT_COLS,
        LN_BWD_RESIDENT_COLS + 1,
    ];
    for (i, &cols) in colses.iter().enumerate() {
        let rows = if cols > 1000 { 3 } else { [1, 7, 13][i % 3] };
        layer_norm_case::<T>(rows, cols, WANTS[i % 4]);
    }
    layer_norm_case::<T>(13, 97, WANTS[2]);
}

// ---------------------------------------------------------------------------------------------
// BatchNorm (training and frozen) and InstanceNorm with running statistics

fn batch_norm_case<T>(order: ChannelOrder, (n, c, s): (usize, usize, usize), w: Want, mode: u8)
where
    T: ElementData,
    T::Compute: ElementData,
{
    let x0: Vec<T> = cast(&data(n * c * s, (n * 100 + c * 10 + s) as u64, -2.0));
    batch_norm_case_of(order, (n, c, s), w, mode, x0);
}

/// [`batch_norm_case`] on the given `x0` (`n·c·s` elements in NCHW order).
fn batch_norm_case_of<T>(
    order: ChannelOrder,
    (n, c, s): (usize, usize, usize),
    w: Want,
    mode: u8,
    x0: Vec<T>,
) where
    T: ElementData,
    T::Compute: ElementData,
{
    // mode 0: BatchNorm training, 1: BatchNorm frozen, 2: InstanceNorm with running stats
    let total = n * c * s;
    let shape = [n, c, s, 1];
    let g0: Vec<T> = cast(&data(total, (n * 7 + c * 3 + s) as u64, 0.5));
    let (x, g) = match order {
        ChannelOrder::Nchw => (x0, g0),
        ChannelOrder::Nhwc => (to_nhwc(&x0, n, c, s), to_nhwc(&g0, n, c, s)),
    };
    let weight: Vec<T::Compute> = cast(&data(c, 3, 1.0));
    let wo = w.weight.then_some(&weight[..]);
    let rm: Vec<T::Compute> = cast(&data(c, 5, -1.5));
    let rv: Vec<T::Compute> = cast(
        &data(c, 6, 0.0)
            .iter()
            .map(|v| v * v + 0.5)
            .collect::<Vec<_>>(),
    );
    let eps = 1e-5;
    let mut want = Bufs::<T>::new(total, c);
    let mut y = vec![T::default(); total];
    let (mean, rstd_or_var): (Vec<T::Compute>, Vec<T::Compute>);
    let wt = || wo.map(|w| Tensor::new(w, &[c]).unwrap());
    let running = || ForwardStats::Running {
        mean: Tensor::new(&rm[..], &[c]).unwrap(),
        var: Tensor::new(&rv[..], &[c]).unwrap(),
        eps,
    };
    let (xt, gt) = (view(order, &shape, &x[..]), view(order, &shape, &g[..]));
    match mode {
        0 => {
            let stats = batch_norm(
                &xt,
                &mut view_mut(order, &shape, &mut y[..]),
                BatchNormArgs {
                    training: true,
                    weight: wt(),
                    eps,
                    ..Default::default()
                },
            )
            .unwrap();
            mean = cast(&stats.mean.to_f64_vec());
            rstd_or_var = cast(&stats.invstd.to_f64_vec());
            let args = NormBackwardArgs {
                weight: wt(),
                stats: ForwardStats::Saved {
                    mean: stats.mean.view(),
                    invstd: stats.invstd.view(),
                },
                grads: want.cpu(w, order, &shape),
            };
            batch_norm_backward(&gt, &xt, args).unwrap();
        }
        _ => {
            mean = rm.clone();
            rstd_or_var = rv.clone();
            let args = NormBackwardArgs {
                weight: wt(),
                stats: running(),
                grads: want.cpu(w, order, &shape),
            };
            if mode == 1 {
                batch_norm_backward(&gt, &xt, args).unwrap();
            } else {
                instance_norm_backward(&gt, &xt, args).unwrap();
            }
        }
    }
    for dev in DEVICES {
        let what = format!(
            "batch_norm_bwd mode {mode} {} {order:?} ({n},{c},{s}) {w:?} sms {}",
            T::DTYPE.name(),
            dev.sms
        );
        let mut got = Bufs::<T>::new(total, c);
        dev.batch_norm_backward::<T>(
            order,
            &x,
            &g,
            &mean,
            &rstd_or_var,
            wo,
            (n, c, s),
            mode == 0,
            eps,
            got.emu(w),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        got.compare(&what, &want, n * s);
    }
}

fn batch_norm_all<T>()
where
    T: ElementData,
    T::Compute: ElementData,
{
    let shapes = [
        (2, 3, 7),
        (1, 7, 13),
        (3, 5, 97),
        (1, 2, 1025),
        (13, 97, 1),
        (4, 33, 64),
    ];
    for order in [ChannelOrder::Nchw, ChannelOrder::Nhwc] {
        for (i, &shape) in shapes.iter().enumerate() {
            batch_norm_case::<T>(order, shape, WANTS[i % 4], 0);
            batch_norm_case::<T>(order, shape, WANTS[(i + 1) % 4], 1);
        }
        batch_norm_case::<T>(order, (2, 3, 13), WANTS[0], 2);
    }
}

// ---------------------------------------------------------------------------------------------
// GroupNorm and InstanceNorm (saved statistics)

fn group_norm_case<T>(
    order: ChannelOrder,
    (n, c, s): (usize, usize, usize),
    groups: usize,
    instance: bool,
    w: Want,
) where
    T: ElementData,
    T::Compute: ElementData,
{
    let x0: Vec<T> = cast(&data(n * c * s, (n * 100 + c * 10 + s) as u64, 2.5));
    group_norm_case_of(order, (n, c, s), groups, instance, w, x0);
}

/// [`group_norm_case`] on the given `x0` (`n·c·s` elements in NCHW order).
fn group_norm_case_of<T>(
    order: ChannelOrder,
    (n, c, s): (usize, usize, usize),
    groups: usize,
    instance: bool,
    w: Want,
    x0: Vec<T>,
) where
    T: ElementData,
    T::Compute: ElementData,
{
    let total = n * c * s;
    let shape = [n, c, s, 1];
    let g0: Vec<T> = cast(&data(total, (n * 7 + c * 3 + s) as u64, -0.5));
    let (x, g) = match order {
        ChannelOrder::Nchw => (x0, g0),
        ChannelOrder::Nhwc => (to_nhwc(&x0, n, c, s), to_nhwc(&g0, n, c, s)),
    };
    let weight: Vec<T::Compute> = cast(&data(c, 3, 1.0));
    let wo = w.weight.then_some(&weight[..]);
    let wt = || wo.map(|w| Tensor::new(w, &[c]).unwrap());
    let (xt, gt) = (view(order, &shape, &x[..]), view(order, &shape, &g[..]));
    let mut y = vec![T::default(); total];
    let stats = if instance {
        instance_norm(
            &xt,
            &mut view_mut(order, &shape, &mut y[..]),
            InstanceNormArgs {
                weight: wt(),
                ..Default::default()
            },
        )
    } else {
        let mut a = GroupNormArgs::new(groups);
        a.weight = wt();
        group_norm(&xt, &mut view_mut(order, &shape, &mut y[..]), a)
    }
    .unwrap();
    let mut want = Bufs::<T>::new(total, c);
    if instance {
        let args = NormBackwardArgs {
            weight: wt(),
            stats: ForwardStats::Saved {
                mean: stats.mean.view(),
                invstd: stats.invstd.view(),
            },
            grads: want.cpu(w, order, &shape),
        };
        instance_norm_backward(&gt, &xt, args).unwrap();
    } else {
        let args = GroupNormBackwardArgs {
            num_groups: groups,
            weight: wt(),
            mean: stats.mean.view(),
            invstd: stats.invstd.view(),
            grads: want.cpu(w, order, &shape),
        };
        group_norm_backward(&gt, &xt, args).unwrap();
    }
    let mean: Vec<T::Compute> = cast(&stats.mean.to_f64_vec());
    let rstd: Vec<T::Compute> = cast(&stats.invstd.to_f64_vec());
    let groups = if instance { c } else { groups };
    for dev in DEVICES {
        let what = format!(
            "{}_bwd {} {order:?} ({n},{c},{s}) groups {groups} {w:?} sms {}",
            if instance {
                "instance_norm"
            } else {
                "group_norm"
            },
            T::DTYPE.name(),
            dev.sms
        );
        let mut got = Bufs::<T>::new(total, c);
        dev.group_norm_backward::<T>(
            order,
            &x,
            &g,
            &mean,
            &rstd,
            wo,
            (n, c, s),
            groups,
            got.emu(w),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        got.compare(&what, &want, n * s);
    }
}

fn group_norm_all<T>()
where
    T: ElementData,
    T::Compute: ElementData,
{
    let cases = [
        ((2, 6, 7), 3),
        ((1, 4, 13), 1),
        ((3, 8, 1), 4),
        ((2, 5, 97), 5),
        ((1, 2, 1025), 1),
        ((5, 6, 3), 2),
    ];
    for order in [ChannelOrder::Nchw, ChannelOrder::Nhwc] {
        for (i, &(shape, groups)) in cases.iter().enumerate() {
            group_norm_case::<T>(order, shape, groups, false, WANTS[i % 4]);
        }
        group_norm_case::<T>(order, (2, 3, 13), 3, true, WANTS[0]);
        group_norm_case::<T>(order, (3, 4, 97), 4, true, WANTS[3]);
    }
}

// ---------------------------------------------------------------------------------------------
// LocalResponseNorm

fn lrn_case<T>(order: ChannelOrder, (n, c, s): (usize, usize, usize), size: usize)
where
    T: ElementData,
{
    let total = n * c * s;
    let shape = [n, c, s, 1];
    let x0: Vec<T> = cast(&data(total, (n * 100 + c * 10 + s) as u64, 0.5));
    let g0: Vec<T> = cast(&data(total, (n * 7 + c * 3 + s) as u64, 0.0));
    let (x, g) = match order {
        ChannelOrder::Nchw => (x0, g0),
        ChannelOrder::Nhwc => (to_nhwc(&x0, n, c, s), to_nhwc(&g0, n, c, s)),
    };
    let (alpha, beta, k) = (0.5, 0.75, 1.5);
    let mut want = vec![T::default(); total];
    local_response_norm_backward(
        &view(order, &shape, &g[..]),
        &view(order, &shape, &x[..]),
        &mut view_mut(order, &shape, &mut want[..]),
        LrnArgs {
            size,
            alpha,
            beta,
            k,
        },
    )
    .unwrap();
    for dev in DEVICES {
        let what = format!(
            "lrn_bwd {} {order:?} ({n},{c},{s}) size {size} sms {}",
            T::DTYPE.name(),
            dev.sms
        );
        let mut got = vec![T::from_f64(7.0); total];
        dev.lrn_backward::<T>(order, &x, &g, &mut got, (n, c, s), size, alpha, beta, k)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_close(&what, &f64s(&got), &f64s(&want), tol::<T>());
    }
}

fn lrn_all<T: ElementData>() {
    for order in [ChannelOrder::Nchw, ChannelOrder::Nhwc] {
        lrn_case::<T>(order, (1, 1, 1), 1);
        lrn_case::<T>(order, (2, 7, 13), 2);
        lrn_case::<T>(order, (3, 13, 5), 5);
        lrn_case::<T>(order, (1, 4, 97), 3);
        lrn_case::<T>(order, (2, 3, 7), 8);
    }
}

/// `len` f32 values of 1e4 ± 1e-2 (seeded): a large mean against their spread.
fn large_mean(len: usize, seed: u64) -> Vec<f32> {
    data(len, seed, 0.0)
        .into_iter()
        .map(|v| (1e4 + v * 5e-3) as f32)
        .collect()
}

/// Rows with a large mean against their spread (x ≈ 1e4 ± 1e-2): the f32 saved mean's rounding
/// (up to 4.9e-4) is a sizeable part of x − mean, and the kernel recovers it as the CPU backward
/// does (`recentred`, kernels/common/types.cuh); without that, dweight was about 10 % off the
/// CPU op here. Resident and streaming rows.
#[test]
fn layer_norm_bwd_recovers_the_saved_f32_mean() {
    if !ready() {
        return;
    }
    for (i, cols) in [97, 1025, LN_BWD_RESIDENT_COLS + 1].into_iter().enumerate() {
        let rows = 5;
        let x: Vec<f32> = large_mean(rows * cols, 40 + i as u64);
        layer_norm_case_of(&x, rows, cols, WANTS[i % 2]);
    }
}

/// GroupNorm and InstanceNorm backward on groups with a large mean against their spread
/// (x ≈ 1e4 ± 1e-2, both layouts): the kernel recovers the f32 saved mean's rounding as the
/// CPU backward does.
#[test]
fn group_norm_bwd_recovers_the_saved_f32_mean() {
    if !ready() {
        return;
    }
    for (i, order) in [ChannelOrder::Nchw, ChannelOrder::Nhwc]
        .into_iter()
        .enumerate()
    {
        let (n, c, s) = (2, 6, 97);
        let x0: Vec<f32> = large_mean(n * c * s, 60 + i as u64);
        group_norm_case_of(order, (n, c, s), 3, false, WANTS[0], x0.clone());
        group_norm_case_of(order, (n, c, s), c, true, WANTS[i], x0);
    }
}

/// BatchNorm's saved f32 mean (1e4 ± 1e-2 data: |μ|·r ≈ 1e6) is off by its rounding (up to
/// 4.9e-4, i.e. 0.1σ); the CPU backward recovers it, and so must the reduce kernel. Channels
/// of 97 to 8200 elements (one split, and several on the larger devices), both layouts, the
/// parameter gradients with and without dx.
#[test]
fn batch_norm_bwd_recovers_the_saved_f32_mean() {
    if !ready() {
        return;
    }
    for (i, order) in [ChannelOrder::Nchw, ChannelOrder::Nhwc]
        .into_iter()
        .enumerate()
    {
        for (j, shape) in [(1, 3, 97), (8, 3, 1025), (5, 33, 13)]
            .into_iter()
            .enumerate()
        {
            let (n, c, s) = shape;
            let x0: Vec<f32> = large_mean(n * c * s, 70 + (3 * i + j) as u64);
            batch_norm_case_of(order, shape, WANTS[(i + j) % 4], 0, x0);
        }
    }
}

macro_rules! per_dtype {
    ($all:ident: $($name:ident => $t:ty),*) => {
        $(#[test]
        fn $name() {
            if ready() {
                $all::<$t>();
            }
        })*
    };
}

per_dtype!(layer_norm_all: layer_norm_bwd_f32 => f32, layer_norm_bwd_f64 => f64,
    layer_norm_bwd_f16 => f16, layer_norm_bwd_bf16 => bf16);
per_dtype!(batch_norm_all: batch_norm_bwd_f32 => f32, batch_norm_bwd_f64 => f64,
    batch_norm_bwd_f16 => f16, batch_norm_bwd_bf16 => bf16);
per_dtype!(group_norm_all: group_norm_bwd_f32 => f32, group_norm_bwd_f64 => f64,
    group_norm_bwd_f16 => f16, group_norm_bwd_bf16 => bf16);
per_dtype!(lrn_all: lrn_bwd_f32 => f32, lrn_bwd_f64 => f64, lrn_bwd_f16 => f16,
    lrn_bwd_bf16 => bf16);
