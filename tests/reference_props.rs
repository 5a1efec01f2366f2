//! Property tests: normkit's functional ops against the independent float64 reference
//! (`tests/common/reference.rs`) over random shapes (dims drawn from 1, 2, 3, 7, 13, 97),
//! dtypes, layouts and parameters, plus adversarial numerics (large mean / small spread,
//! constant input, tiny and huge magnitudes, NaN/Inf propagation). The reference itself is
//! first checked against PyTorch's float64 golden values.

mod common;

use common::reference as rf;
use common::{Rng, Tol, assert_close, from_channels_last, max_rel_err, to_channels_last};
use normkit::ops::{
    BatchNormArgs, GroupNormArgs, InstanceNormArgs, LayerNormArgs, LrnArgs, SavedStats, batch_norm,
    group_norm, instance_norm, layer_norm, local_response_norm,
};
use normkit::{Buffer, DType, Tensor, TensorMut, bf16, f16};
use proptest::prelude::*;

const DIMS: [usize; 6] = [1, 2, 3, 7, 13, 97];
const MAX_NUMEL: usize = 4000;

/// Rounds a value to `dt` (round to nearest even), independently of normkit.
fn round_to(dt: DType, v: f64) -> f64 {
    match dt {
        DType::F64 => v,
        DType::F32 => v as f32 as f64,
        DType::F16 => f16::from_f64(v).to_f64(),
        DType::BF16 => bf16::from_f64(v).to_f64(),
    }
}

fn rounded(dt: DType, v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| round_to(dt, x)).collect()
}

/// Output tolerance per dtype (spec §10, loosened to be safe).
fn tol_for(dt: DType) -> Tol {
    match dt {
        DType::F64 => Tol::new(1e-10, 1e-10),
        DType::F32 => Tol::new(1e-4, 1e-5),
        DType::F16 => Tol::new(4e-3, 4e-3),
        DType::BF16 => Tol::new(2e-2, 2e-2),
    }
}

/// Tolerance for f32/f64 statistics computed from `dt` input.
fn stat_tol(dt: DType) -> Tol {
    if dt == DType::F64 {
        Tol::new(1e-10, 1e-10)
    } else {
        Tol::new(1e-4, 1e-5)
    }
}

fn dtype_of(i: usize) -> DType {
    [DType::F32, DType::F64, DType::F16, DType::BF16][i % 4]
}

/// A random `(N, C, *S)` shape of rank `rank` with dims from [`DIMS`] and at most `MAX_NUMEL`
/// elements (large dims are replaced by small ones until it fits).
fn random_shape(rng: &mut Rng, rank: usize) -> Vec<usize> {
    let mut s: Vec<usize> = (0..rank).map(|_| DIMS[rng.below(DIMS.len())]).collect();
    while s.iter().product::<usize>() > MAX_NUMEL {
        let (i, _) = s.iter().enumerate().max_by_key(|(_, d)| **d).unwrap();
        s[i] = DIMS[rng.below(3)];
    }
    s
}

/// Input/output data in one layout; values are given and returned in logical order.
struct Io {
    shape: Vec<usize>,
    cl: bool,
    x: Buffer,
    y: Buffer,
}

impl Io {
    fn new(dt: DType, logical: &[f64], shape: &[usize], cl: bool) -> Io {
        let cl = cl && shape.len() >= 3;
        let stored = if cl {
            to_channels_last(shape, logical)
        } else {
            logical.to_vec()
        };
        Io {
            shape: shape.to_vec(),
            cl,
            x: Buffer::from_f64(dt, &stored),
            y: Buffer::filled(dt, logical.len(), f64::NAN),
        }
    }
    fn views(&mut self) -> (Tensor<'_>, TensorMut<'_>) {
        if self.cl {
            (
                Tensor::channels_last(self.x.as_data(), &self.shape).unwrap(),
                TensorMut::channels_last(self.y.as_data_mut(), &self.shape).unwrap(),
            )
        } else {
            (
                Tensor::new(self.x.as_data(), &self.shape).unwrap(),
                TensorMut::new(self.y.as_data_mut(), &self.shape).unwrap(),
            )
        }
    }
    fn output(&self) -> Vec<f64> {
        let v = self.y.to_f64_vec();
        if self.cl {
            from_channels_last(&self.shape, &v)
        } else {
            v
        }
    }
}

fn opt_buf(dt: DType, v: &Option<Vec<f64>>) -> Option<Buffer> {
    v.as_ref().map(|v| Buffer::from_f64(dt, v))
}

fn tview<'a>(b: &'a Option<Buffer>, shape: &[usize]) -> Option<Tensor<'a>> {
    b.as_ref().map(|b| Tensor::new(b.as_data(), shape).unwrap())
}

// ----------------------------------------------------------------------------- ops under test

struct BnOut {
    y: Vec<f64>,
    saved: SavedStats,
    rm: Vec<f64>,
    rv: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn nk_batch_norm(
    dt: DType,
    pd: DType,
    x: &[f64],
    shape: &[usize],
    cl: bool,
    w: &Option<Vec<f64>>,
    b: &Option<Vec<f64>>,
    rm: &[f64],
    rv: &[f64],
    training: bool,
    momentum: f64,
    eps: f64,
) -> BnOut {
    let c = shape[1];
    let mut io = Io::new(dt, x, shape, cl);
    let (wb, bb) = (opt_buf(pd, w), opt_buf(pd, b));
    let (mut rmb, mut rvb) = (Buffer::from_f64(pd, rm), Buffer::from_f64(pd, rv));
    let (xt, mut yt) = io.views();
    let saved = batch_norm(
        &xt,
        &mut yt,
        BatchNormArgs {
            weight: tview(&wb, &[c]),
            bias: tview(&bb, &[c]),
            running_mean: Some(TensorMut::new(rmb.as_data_mut(), &[c]).unwrap()),
            running_var: Some(TensorMut::new(rvb.as_data_mut(), &[c]).unwrap()),
            num_batches_tracked: None,
            training,
            momentum: Some(momentum),
            eps,
        },
    )
    .expect("batch_norm");
    BnOut {
        y: io.output(),
        saved,
        rm: rmb.to_f64_vec(),
        rv: rvb.to_f64_vec(),
    }
}

fn nk_instance_norm(
    dt: DType,
    x: &[f64],
    shape: &[usize],
    cl: bool,
    w: &Option<Vec<f64>>,
    b: &Option<Vec<f64>>,
    eps: f64,
) -> (Vec<f64>, SavedStats) {
    let c = shape[1];
    let mut io = Io::new(dt, x, shape, cl);
    let (wb, bb) = (opt_buf(dt, w), opt_buf(dt, b));
    let (xt, mut yt) = io.views();
    let saved = instance_norm(
        &xt,
        &mut yt,
        InstanceNormArgs {
            weight: tview(&wb, &[c]),
            bias: tview(&bb, &[c]),
            eps,
            ..Default::default()
        },
    )
    .expect("instance_norm");
    (io.output(), saved)
}

#[allow(clippy::too_many_arguments)]
fn nk_group_norm(
    dt: DType,
    x: &[f64],
    shape: &[usize],
    cl: bool,
    groups: usize,
    w: &Option<Vec<f64>>,
    b: &Option<Vec<f64>>,
    eps: f64,
) -> (Vec<f64>, SavedStats) {
    let c = shape[1];
    let mut io = Io::new(dt, x, shape, cl);
    let (wb, bb) = (opt_buf(dt, w), opt_buf(dt, b));
    let (xt, mut yt) = io.views();
    let saved = group_norm(
        &xt,
        &mut yt,
        GroupNormArgs {
            num_groups: groups,
            weight: tview(&wb, &[c]),
            bias: tview(&bb, &[c]),
            eps,
        },
    )
    .expect("group_norm");
    (io.output(), saved)
}

#[allow(clippy::too_many_arguments)]
fn nk_layer_norm(
    dt: DType,
    x: &[f64],
    shape: &[usize],
    cl: bool,
    ns: &[usize],
    w: &Option<Vec<f64>>,
    b: &Option<Vec<f64>>,
    eps: f64,
) -> (Vec<f64>, SavedStats) {
    let mut io = Io::new(dt, x, shape, cl);
    let (wb, bb) = (opt_buf(dt, w), opt_buf(dt, b));
    let (xt, mut yt) = io.views();
    let saved = layer_norm(
        &xt,
        &mut yt,
        LayerNormArgs {
            normalized_shape: ns.to_vec(),
            weight: tview(&wb, ns),
            bias: tview(&bb, ns),
            eps,
        },
    )
    .expect("layer_norm");
    (io.output(), saved)
}

fn nk_lrn(dt: DType, x: &[f64], shape: &[usize], cl: bool, a: LrnArgs) -> Vec<f64> {
    let mut io = Io::new(dt, x, shape, cl);
    let (xt, mut yt) = io.views();
    local_response_norm(&xt, &mut yt, a).expect("local_response_norm");
    io.output()
}

// ----------------------------------------------------------------------------- random cases

/// Random input data for `shape` in dtype `dt` (exactly representable), scale `std`, mean `mean`.
fn data(rng: &mut Rng, dt: DType, n: usize, mean: f64, std: f64) -> Vec<f64> {
    rounded(dt, &rng.normal_vec(n, mean, std))
}

fn affine(
    rng: &mut Rng,
    pd: DType,
    c: usize,
    on: bool,
    bias_on: bool,
) -> (Option<Vec<f64>>, Option<Vec<f64>>) {
    let w = on.then(|| data(rng, pd, c, 1.0, 0.5));
    let b = (on && bias_on).then(|| data(rng, pd, c, 0.0, 0.5));
    (w, b)
}

fn check_bn(
    seed: u64,
    rank: usize,
    dt_i: usize,
    cl: bool,
    training: bool,
    affine_on: bool,
    mixed: bool,
) {
    let mut rng = Rng::new(seed);
    let dt = dtype_of(dt_i);
    let pd = if mixed && dt.is_low_precision() {
        DType::F32
    } else {
        dt
    };
    let mut shape = random_shape(&mut rng, rank);
    if training && shape[0] * shape[2..].iter().product::<usize>() == 1 {
        shape[0] = 2;
    }
    let c = shape[1];
    let n: usize = shape.iter().product();
    let (mu, sd) = (rng.range(-2.0, 2.0), rng.range(0.1, 3.0));
    let x = data(&mut rng, dt, n, mu, sd);
    let bias_on = rng.below(2) == 0;
    let (w, b) = affine(&mut rng, pd, c, affine_on, bias_on);
    let rm = data(&mut rng, pd, c, 0.0, 0.3);
    let rv = rounded(pd, &(0..c).map(|_| rng.range(0.5, 1.5)).collect::<Vec<_>>());
    let momentum = [0.1, 0.3, 1.0][rng.below(3)];
    let eps = [1e-5, 1e-3][rng.below(2)];
    let got = nk_batch_norm(
        dt, pd, &x, &shape, cl, &w, &b, &rm, &rv, training, momentum, eps,
    );
    let ctx = format!("batch_norm {dt:?}/{pd:?} shape {shape:?} cl {cl} training {training}");
    let (exp, st) = if training {
        let (y, st) = rf::batch_norm_train(&x, &shape, w.as_deref(), b.as_deref(), eps);
        (y, Some(st))
    } else {
        (
            rf::batch_norm_eval(&x, &shape, &rm, &rv, w.as_deref(), b.as_deref(), eps),
            None,
        )
    };
    assert_close(
        &got.y,
        &rounded(dt, &exp),
        tol_for(dt),
        &format!("{ctx}: output"),
        Some(seed),
    );
    if let Some(st) = st {
        assert_close(
            &got.saved.mean.to_f64_vec(),
            &st.mean,
            stat_tol(dt),
            &format!("{ctx}: saved mean"),
            Some(seed),
        );
        assert_close(
            &got.saved.invstd.to_f64_vec(),
            &st.invstd,
            stat_tol(dt).scaled(10.0),
            &format!("{ctx}: saved invstd"),
            Some(seed),
        );
        let (mut erm, mut erv) = (rm.clone(), rv.clone());
        rf::update_running(&mut erm, &mut erv, &st.mean, &st.unbiased_var, momentum);
        let stol = tol_for(pd).scaled(if pd == DType::F32 { 10.0 } else { 1.0 });
        assert_close(
            &got.rm,
            &rounded(pd, &erm),
            stol,
            &format!("{ctx}: running_mean"),
            Some(seed),
        );
        assert_close(
            &got.rv,
            &rounded(pd, &erv),
            stol,
            &format!("{ctx}: running_var"),
            Some(seed),
        );
    } else {
        assert_eq!(got.rm, rm, "{ctx}: eval changed running_mean");
        assert_eq!(got.rv, rv, "{ctx}: eval changed running_var");
    }
}

fn check_in(seed: u64, rank: usize, dt_i: usize, cl: bool, affine_on: bool) {
    let mut rng = Rng::new(seed);
    let dt = dtype_of(dt_i);
    let mut shape = random_shape(&mut rng, rank);
    if shape[2..].iter().product::<usize>() == 1 {
        shape[2] = 3;
    }
    let c = shape[1];
    let n: usize = shape.iter().product();
    let (mu, sd) = (rng.range(-2.0, 2.0), rng.range(0.1, 3.0));
    let x = data(&mut rng, dt, n, mu, sd);
    let (w, b) = affine(&mut rng, dt, c, affine_on, true);
    let (got, saved) = nk_instance_norm(dt, &x, &shape, cl, &w, &b, 1e-5);
    let (exp, st) = rf::instance_norm_train(&x, &shape, w.as_deref(), b.as_deref(), 1e-5);
    let ctx = format!("instance_norm {dt:?} shape {shape:?} cl {cl}");
    assert_close(
        &got,
        &rounded(dt, &exp),
        tol_for(dt),
        &format!("{ctx}: output"),
        Some(seed),
    );
    assert_close(
        &saved.mean.to_f64_vec(),
        &st.mean,
        stat_tol(dt),
        &format!("{ctx}: saved mean"),
        Some(seed),
    );
}

fn check_gn(seed: u64, rank: usize, dt_i: usize, cl: bool, affine_on: bool) {
    let mut rng = Rng::new(seed);
    let dt = dtype_of(dt_i);
    let mut shape = random_shape(&mut rng, rank);
    let c = shape[1];
    let divisors: Vec<usize> = (1..=c).filter(|g| c % g == 0).collect();
    let g = divisors[rng.below(divisors.len())];
    if shape[0] * (c / g) * shape[2..].iter().product::<usize>() == 1 {
        shape[0] = 2;
    }
    let n: usize = shape.iter().product();
    let (mu, sd) = (rng.range(-2.0, 2.0), rng.range(0.1, 3.0));
    let x = data(&mut rng, dt, n, mu, sd);
    let (w, b) = affine(&mut rng, dt, c, affine_on, true);
    let (got, saved) = nk_group_norm(dt, &x, &shape, cl, g, &w, &b, 1e-5);
    let (exp, mean, inv) = rf::group_norm(&x, &shape, g, w.as_deref(), b.as_deref(), 1e-5);
    let ctx = format!("group_norm {dt:?} shape {shape:?} G {g} cl {cl}");
    // one element per group: PyTorch-style rounding can leave ~r·|x|·ulp instead of exact β
    let t = if c / g * shape[2..].iter().product::<usize>() == 1 {
        tol_for(dt).scaled(10.0)
    } else {
        tol_for(dt)
    };
    assert_close(
        &got,
        &rounded(dt, &exp),
        t,
        &format!("{ctx}: output"),
        Some(seed),
    );
    assert_close(
        &saved.mean.to_f64_vec(),
        &mean,
        stat_tol(dt),
        &format!("{ctx}: saved mean"),
        Some(seed),
    );
    if c / g * shape[2..].iter().product::<usize>() > 1 {
        assert_close(
            &saved.invstd.to_f64_vec(),
            &inv,
            stat_tol(dt).scaled(10.0),
            &format!("{ctx}: saved invstd"),
            Some(seed),
        );
    }
}

fn check_ln(seed: u64, rank: usize, dt_i: usize, cl: bool, affine_on: bool) {
    let mut rng = Rng::new(seed);
    let dt = dtype_of(dt_i);
    let shape = random_shape(&mut rng, rank);
    let d = 1 + rng.below(rank);
    let ns = shape[rank - d..].to_vec();
    let m: usize = ns.iter().product();
    let n: usize = shape.iter().product();
    let (mu, sd) = (rng.range(-2.0, 2.0), rng.range(0.1, 3.0));
    let x = data(&mut rng, dt, n, mu, sd);
    let w = affine_on.then(|| data(&mut rng, dt, m, 1.0, 0.5));
    let b = (affine_on && rng.below(2) == 0).then(|| data(&mut rng, dt, m, 0.0, 0.5));
    let (got, saved) = nk_layer_norm(dt, &x, &shape, cl, &ns, &w, &b, 1e-5);
    let (exp, mean, _) = rf::layer_norm(&x, m, w.as_deref(), b.as_deref(), 1e-5);
    let ctx = format!("layer_norm {dt:?} shape {shape:?} ns {ns:?} cl {cl}");
    // normalized size 1 gives exactly 0 (+ β) in the reference.
    assert_close(
        &got,
        &rounded(dt, &exp),
        tol_for(dt),
        &format!("{ctx}: output"),
        Some(seed),
    );
    assert_close(
        &saved.mean.to_f64_vec(),
        &mean,
        stat_tol(dt),
        &format!("{ctx}: saved mean"),
        Some(seed),
    );
}

fn check_lrn(seed: u64, rank: usize, dt_i: usize, cl: bool) {
    let mut rng = Rng::new(seed);
    let dt = dtype_of(dt_i);
    let shape = random_shape(&mut rng, rank);
    let n: usize = shape.iter().product();
    let sd = rng.range(0.5, 3.0);
    let x = data(&mut rng, dt, n, 0.0, sd);
    let a = LrnArgs {
        size: 1 + rng.below(8),
        alpha: [1e-4, 0.1, 1.0][rng.below(3)],
        beta: [0.5, 0.75, 1.0][rng.below(3)],
        k: [1.0, 2.0][rng.below(2)],
    };
    let got = nk_lrn(dt, &x, &shape, cl, a);
    let exp = rf::local_response_norm(&x, &shape, a.size, a.alpha, a.beta, a.k);
    let ctx = format!("local_response_norm {dt:?} shape {shape:?} {a:?} cl {cl}");
    assert_close(&got, &rounded(dt, &exp), tol_for(dt), &ctx, Some(seed));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn batch_norm_matches_reference(seed in any::<u64>(), rank in 2usize..=5, dt in 0usize..4, cl in any::<bool>(),
                                    training in any::<bool>(), aff in any::<bool>(), mixed in any::<bool>()) {
        check_bn(seed, rank, dt, cl, training, aff, mixed);
    }

    #[test]
    fn instance_norm_matches_reference(seed in any::<u64>(), rank in 3usize..=5, dt in 0usize..4,
                                       cl in any::<bool>(), aff in any::<bool>()) {
        check_in(seed, rank, dt, cl, aff);
    }

    #[test]
    fn group_norm_matches_reference(seed in any::<u64>(), rank in 2usize..=5, dt in 0usize..4, cl in any::<bool>(),
                                    aff in any::<bool>()) {
        check_gn(seed, rank, dt, cl, aff);
    }

    #[test]
    fn layer_norm_matches_reference(seed in any::<u64>(), rank in 1usize..=5, dt in 0usize..4, cl in any::<bool>(),
                                    aff in any::<bool>()) {
        check_ln(seed, rank, dt, cl, aff);
    }

    #[test]
    fn local_response_norm_matches_reference(seed in any::<u64>(), rank in 3usize..=6, dt in 0usize..4,
                                             cl in any::<bool>()) {
        check_lrn(seed, rank, dt, cl);
    }
}

// ----------------------------------------------------------------------------- odd sizes

#[test]
fn odd_sizes_1_7_13_97_every_op() {
    let dims = [1usize, 7, 13, 97];
    let mut seed = 0x0dd5;
    for &c in &dims {
        for &s in &dims {
            for cl in [false, true] {
                for dt in 0..4 {
                    seed += 1;
                    let shape = [2, c, s];
                    let mut rng = Rng::new(seed);
                    let n = 2 * c * s;
                    let dtt = dtype_of(dt);
                    let x = data(&mut rng, dtt, n, 0.5, 1.5);
                    let ctx = format!("{dtt:?} shape {shape:?} cl {cl}");
                    // batch norm (training)
                    let (w, b) = affine(&mut rng, dtt, c, true, true);
                    let ones = vec![1.0; c];
                    let zeros = vec![0.0; c];
                    let got = nk_batch_norm(
                        dtt, dtt, &x, &shape, cl, &w, &b, &zeros, &ones, true, 0.1, 1e-5,
                    );
                    let (exp, _) =
                        rf::batch_norm_train(&x, &shape, w.as_deref(), b.as_deref(), 1e-5);
                    assert_close(
                        &got.y,
                        &rounded(dtt, &exp),
                        tol_for(dtt),
                        &format!("bn {ctx}"),
                        Some(seed),
                    );
                    // group norm with G = C and G = 1
                    for g in [1, c] {
                        if 2 * (c / g) * s < 2 {
                            continue;
                        }
                        let (got, _) = nk_group_norm(dtt, &x, &shape, cl, g, &w, &b, 1e-5);
                        let (exp, _, _) =
                            rf::group_norm(&x, &shape, g, w.as_deref(), b.as_deref(), 1e-5);
                        let t = if c / g * s == 1 {
                            tol_for(dtt).scaled(10.0)
                        } else {
                            tol_for(dtt)
                        };
                        assert_close(
                            &got,
                            &rounded(dtt, &exp),
                            t,
                            &format!("gn G={g} {ctx}"),
                            Some(seed),
                        );
                    }
                    // instance norm
                    if s > 1 {
                        let (got, _) = nk_instance_norm(dtt, &x, &shape, cl, &w, &b, 1e-5);
                        let (exp, _) =
                            rf::instance_norm_train(&x, &shape, w.as_deref(), b.as_deref(), 1e-5);
                        assert_close(
                            &got,
                            &rounded(dtt, &exp),
                            tol_for(dtt),
                            &format!("in {ctx}"),
                            Some(seed),
                        );
                    }
                    // layer norm over the last dim
                    let (got, _) = nk_layer_norm(dtt, &x, &shape, cl, &[s], &None, &None, 1e-5);
                    let (exp, _, _) = rf::layer_norm(&x, s, None, None, 1e-5);
                    assert_close(
                        &got,
                        &rounded(dtt, &exp),
                        tol_for(dtt),
                        &format!("ln {ctx}"),
                        Some(seed),
                    );
                    // LRN, size 5 (> C for C = 1)
                    let a = LrnArgs {
                        size: 5,
                        alpha: 0.5,
                        beta: 0.75,
                        k: 1.0,
                    };
                    let got = nk_lrn(dtt, &x, &shape, cl, a);
                    let exp = rf::local_response_norm(&x, &shape, 5, 0.5, 0.75, 1.0);
                    assert_close(
                        &got,
                        &rounded(dtt, &exp),
                        tol_for(dtt),
                        &format!("lrn {ctx}"),
                        Some(seed),
                    );
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------- adversarial

/// Relative error of normalised outputs, floored at 1 (the outputs are O(1)).
fn norm_rel_err(got: &[f64], exp: &[f64]) -> f64 {
    max_rel_err(got, exp, 1.0)
}

#[test]
fn batch_norm_channels_last_stays_within_a_few_roundings_at_any_mean() {
    // Channels last, normkit applies BatchNorm in PyTorch's folded form `x·α + (β − μ·α)` where
    // every channel's |μ| is within two standard deviations, and in the centred form
    // `(x − μ)·α + β` elsewhere (a folded apply of data far from zero loses the mean's digits).
    // Either way, eval and train, every output must be within 32 f32 roundings of
    // max|γ| + max|β| of the float64 result on the same inputs and statistics.
    let dt = DType::F32;
    let eps = 1e-5;
    for (k, &mean_sd) in [0.0, 1.9, -1.9, 1e3].iter().enumerate() {
        for shape in [vec![64, 97], vec![3, 13, 2, 5]] {
            let mut rng = Rng::new(0xf01d + k as u64);
            let c = shape[1];
            let n: usize = shape.iter().product();
            let sd = 0.25;
            let x = data(&mut rng, dt, n, mean_sd * sd, sd);
            let (w, b) = affine(&mut rng, dt, c, true, true);
            let (w, b) = (w.unwrap(), b.unwrap());
            let bound = 32.0 * f32::EPSILON as f64 / 2.0
                * (w.iter().fold(0.0f64, |a, v| a.max(v.abs()))
                    + b.iter().fold(0.0f64, |a, v| a.max(v.abs())));
            // eval: running statistics near the data's own
            let rm = rounded(dt, &vec![mean_sd * sd; c]);
            let rv = rounded(dt, &vec![sd * sd; c]);
            let plane: usize = shape[2..].iter().product();
            let eval: Vec<f64> = x
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let ch = i / plane % c;
                    (v - rm[ch]) / (rv[ch] + eps).sqrt() * w[ch] + b[ch]
                })
                .collect();
            // train: the batch's own statistics
            let (train, _) = rf::batch_norm_train(&x, &shape, Some(&w), Some(&b), eps);
            for (training, exp) in [(false, eval), (true, train)] {
                let (wo, bo) = (Some(w.clone()), Some(b.clone()));
                let got = nk_batch_norm(
                    dt, dt, &x, &shape, true, &wo, &bo, &rm, &rv, training, 0.1, eps,
                );
                let err = got
                    .y
                    .iter()
                    .zip(&exp)
                    .fold(0.0f64, |a, (g, e)| a.max((g - e).abs()));
                assert!(
                    err <= bound,
                    "training {training}, mean {mean_sd} sd, shape {shape:?}: error {err:e} > \
                     {bound:e}"
                );
            }
        }
    }
}

#[test]
fn large_mean_small_std_f32_every_layer_and_layout() {
    // Data with mean 1e4 and std 1e-2 in f32: every layer must stay within 1e-3 relative error of
    // the float64 reference on the same (f32-rounded) values, in both layouts (spec Preface 1).
    let dt = DType::F32;
    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, msg: String| {
        if !ok {
            failures.push(msg);
        }
    };
    for (i, shape) in [vec![4, 3, 5, 5], vec![2, 4, 97], vec![3, 8, 2, 3, 4]]
        .into_iter()
        .enumerate()
    {
        for cl in [false, true] {
            let seed = 0x1e4 + i as u64;
            let mut rng = Rng::new(seed);
            let n: usize = shape.iter().product();
            let c = shape[1];
            let x = data(&mut rng, dt, n, 1e4, 1e-2);
            let ctx = format!("shape {shape:?} cl {cl}");
            let (w, b) = affine(&mut rng, dt, c, true, true);
            let zeros = vec![0.0; c];
            let ones = vec![1.0; c];
            let got = nk_batch_norm(
                dt, dt, &x, &shape, cl, &w, &b, &zeros, &ones, true, 0.1, 1e-5,
            );
            let (exp, st) = rf::batch_norm_train(&x, &shape, w.as_deref(), b.as_deref(), 1e-5);
            let e = norm_rel_err(&got.y, &exp);
            check(
                e <= 1e-3,
                format!("batch_norm {ctx}: rel err {e:e} (seed {seed:#x})"),
            );
            let mut erm = zeros.clone();
            let mut erv = ones.clone();
            rf::update_running(&mut erm, &mut erv, &st.mean, &st.unbiased_var, 0.1);
            assert!(
                max_rel_err(&got.rm, &erm, 1e-30) <= 1e-5,
                "batch_norm {ctx}: running_mean"
            );
            assert!(
                max_rel_err(&got.rv, &erv, 1e-30) <= 1e-3,
                "batch_norm {ctx}: running_var"
            );
            let (got, _) = nk_instance_norm(dt, &x, &shape, cl, &w, &b, 1e-5);
            let (exp, _) = rf::instance_norm_train(&x, &shape, w.as_deref(), b.as_deref(), 1e-5);
            let e = norm_rel_err(&got, &exp);
            check(
                e <= 1e-3,
                format!("instance_norm {ctx}: rel err {e:e} (seed {seed:#x})"),
            );
            let mut groups = vec![1, c / 2, c];
            groups.dedup();
            for g in groups {
                let (got, _) = nk_group_norm(dt, &x, &shape, cl, g, &w, &b, 1e-5);
                let (exp, _, _) = rf::group_norm(&x, &shape, g, w.as_deref(), b.as_deref(), 1e-5);
                let e = norm_rel_err(&got, &exp);
                check(
                    e <= 1e-3,
                    format!("group_norm G={g} {ctx}: rel err {e:e} (seed {seed:#x})"),
                );
            }
            let last = *shape.last().unwrap();
            let (got, _) = nk_layer_norm(dt, &x, &shape, cl, &[last], &None, &None, 1e-5);
            let (exp, _, _) = rf::layer_norm(&x, last, None, None, 1e-5);
            let e = norm_rel_err(&got, &exp);
            check(
                e <= 1e-3,
                format!("layer_norm {ctx}: rel err {e:e} (seed {seed:#x})"),
            );
            let tail = shape[1..].to_vec();
            let m: usize = tail.iter().product();
            let (got, _) = nk_layer_norm(dt, &x, &shape, cl, &tail, &None, &None, 1e-5);
            let (exp, _, _) = rf::layer_norm(&x, m, None, None, 1e-5);
            let e = norm_rel_err(&got, &exp);
            check(
                e <= 1e-3,
                format!("layer_norm (multi-dim) {ctx}: rel err {e:e} (seed {seed:#x})"),
            );
            let a = LrnArgs {
                size: 3,
                alpha: 1e-4,
                beta: 0.75,
                k: 1.0,
            };
            let got = nk_lrn(dt, &x, &shape, cl, a);
            let exp = rf::local_response_norm(&x, &shape, 3, 1e-4, 0.75, 1.0);
            let e = max_rel_err(&got, &exp, 1e-30);
            check(
                e <= 1e-3,
                format!("local_response_norm {ctx}: rel err {e:e} (seed {seed:#x})"),
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn constant_input_gives_bias() {
    for dt in DType::ALL {
        for cl in [false, true] {
            let shape = [2, 4, 3, 3];
            let n: usize = shape.iter().product();
            let x = vec![round_to(dt, 7.25); n];
            let w = Some(rounded(dt, &[0.5, 1.0, 1.5, 2.0]));
            let b = Some(rounded(dt, &[-1.0, 0.0, 0.25, 3.0]));
            let expect: Vec<f64> = (0..n).map(|i| b.as_ref().unwrap()[(i / 9) % 4]).collect();
            let ctx = format!("{dt:?} cl {cl}");
            let t = tol_for(dt);
            let zeros = vec![0.0; 4];
            let ones = vec![1.0; 4];
            let got = nk_batch_norm(
                dt, dt, &x, &shape, cl, &w, &b, &zeros, &ones, true, 0.1, 1e-5,
            );
            assert_close(&got.y, &expect, t, &format!("batch_norm {ctx}"), None);
            // running var: (1 − 0.1)·1 + 0.1·0
            assert_close(
                &got.rv,
                &[round_to(dt, 0.9); 4],
                t,
                &format!("batch_norm rv {ctx}"),
                None,
            );
            let (got, _) = nk_instance_norm(dt, &x, &shape, cl, &w, &b, 1e-5);
            assert_close(&got, &expect, t, &format!("instance_norm {ctx}"), None);
            // eps = 0 with a constant plane: 0 (+β), not NaN (spec §4.4)
            let (got, _) = nk_instance_norm(dt, &x, &shape, cl, &w, &b, 0.0);
            assert_close(
                &got,
                &expect,
                t,
                &format!("instance_norm eps=0 {ctx}"),
                None,
            );
            for g in [1, 2, 4] {
                let (got, _) = nk_group_norm(dt, &x, &shape, cl, g, &w, &b, 1e-5);
                assert_close(&got, &expect, t, &format!("group_norm G={g} {ctx}"), None);
            }
            let (got, _) = nk_layer_norm(dt, &x, &shape, cl, &[3, 3], &None, &None, 1e-5);
            assert_close(&got, &vec![0.0; n], t, &format!("layer_norm {ctx}"), None);
            // eps = 0: LayerNorm and GroupNorm give NaN (spec §6.3, §7.3)
            let (got, _) = nk_layer_norm(dt, &x, &shape, cl, &[3, 3], &None, &None, 0.0);
            assert!(
                got.iter().all(|v| v.is_nan()),
                "layer_norm eps=0 constant row {ctx}: {:?}",
                &got[..4]
            );
            let (got, _) = nk_group_norm(dt, &x, &shape, cl, 2, &None, &None, 0.0);
            assert!(
                got.iter().all(|v| v.is_nan()),
                "group_norm eps=0 constant group {ctx}: {:?}",
                &got[..4]
            );
        }
    }
}

#[test]
fn tiny_and_huge_magnitudes() {
    // f64 with scale 1e-30 and 1e30 (eps scaled with the variance so normalisation matters), and
    // f32 with 1e-30 / 1e15 (1e30² would overflow f32 in PyTorch too).
    let cases: [(DType, f64); 4] = [
        (DType::F64, 1e-30),
        (DType::F64, 1e30),
        (DType::F32, 1e-30),
        (DType::F32, 1e15),
    ];
    for (k, (dt, scale)) in cases.into_iter().enumerate() {
        for cl in [false, true] {
            let seed = 0x7e57 + k as u64;
            let mut rng = Rng::new(seed);
            let shape = [3, 4, 7];
            let n: usize = shape.iter().product();
            let x = data(&mut rng, dt, n, 0.0, scale);
            let eps = if dt == DType::F64 {
                1e-5 * scale * scale
            } else {
                1e-5
            };
            let ctx = format!("{dt:?} scale {scale:e} cl {cl}");
            let t = tol_for(dt).scaled(if dt == DType::F32 { 10.0 } else { 1.0 });
            let zeros = vec![0.0; 4];
            let ones = vec![1.0; 4];
            let got = nk_batch_norm(
                dt, dt, &x, &shape, cl, &None, &None, &zeros, &ones, true, 0.1, eps,
            );
            let (exp, _) = rf::batch_norm_train(&x, &shape, None, None, eps);
            assert_close(
                &got.y,
                &rounded(dt, &exp),
                t,
                &format!("batch_norm {ctx}"),
                Some(seed),
            );
            let (got, _) = nk_instance_norm(dt, &x, &shape, cl, &None, &None, eps);
            let (exp, _) = rf::instance_norm_train(&x, &shape, None, None, eps);
            assert_close(
                &got,
                &rounded(dt, &exp),
                t,
                &format!("instance_norm {ctx}"),
                Some(seed),
            );
            let (got, _) = nk_group_norm(dt, &x, &shape, cl, 2, &None, &None, eps);
            let (exp, _, _) = rf::group_norm(&x, &shape, 2, None, None, eps);
            assert_close(
                &got,
                &rounded(dt, &exp),
                t,
                &format!("group_norm {ctx}"),
                Some(seed),
            );
            let (got, _) = nk_layer_norm(dt, &x, &shape, cl, &[4, 7], &None, &None, eps);
            let (exp, _, _) = rf::layer_norm(&x, 28, None, None, eps);
            assert_close(
                &got,
                &rounded(dt, &exp),
                t,
                &format!("layer_norm {ctx}"),
                Some(seed),
            );
            let alpha = if dt == DType::F64 {
                1.0 / (scale * scale)
            } else {
                1e-4
            };
            let a = LrnArgs {
                size: 3,
                alpha,
                beta: 0.75,
                k: 1.0,
            };
            let got = nk_lrn(dt, &x, &shape, cl, a);
            let exp = rf::local_response_norm(&x, &shape, 3, alpha, 0.75, 1.0);
            assert_close(
                &got,
                &rounded(dt, &exp),
                t,
                &format!("local_response_norm {ctx}"),
                Some(seed),
            );
        }
    }
}

#[test]
fn group_norm_saved_mean_of_an_infinite_group_is_infinite() {
    // +∞ in the first channel of a group (then a finite channel is merged after it), or in the
    // last: the saved mean is Σx / n = +∞ as in PyTorch, in both layouts; -∞ and +∞ in one
    // group give NaN
    for cl in [false, true] {
        for (spots, want_nan) in [
            (vec![(0, 2)], false),
            (vec![(1, 4)], false),
            (vec![(0, 1), (1, 3)], true),
        ] {
            let shape = [1, 4, 5];
            let mut x: Vec<f64> = (0..20).map(|i| (i as f64 * 0.3).sin()).collect();
            for (k, &(c, s)) in spots.iter().enumerate() {
                x[c * 5 + s] = if k == 0 {
                    f64::INFINITY
                } else {
                    f64::NEG_INFINITY
                };
            }
            let (_, saved) = nk_group_norm(DType::F32, &x, &shape, cl, 2, &None, &None, 1e-5);
            let m = saved.mean.to_f64_vec();
            let ok = if want_nan {
                m[0].is_nan()
            } else {
                m[0] == f64::INFINITY
            };
            assert!(ok && m[1].is_finite(), "cl {cl} {spots:?}: {m:?}");
        }
    }
}

#[test]
fn nan_and_inf_propagate_like_the_reference() {
    // A NaN / +Inf in one element poisons exactly the statistics it belongs to; everything else
    // stays finite and correct. The reference computes the same IEEE propagation.
    for dt in DType::ALL {
        for cl in [false, true] {
            for bad in [f64::NAN, f64::INFINITY] {
                let seed = 0xbad;
                let mut rng = Rng::new(seed);
                let shape = [2, 4, 5];
                let n: usize = shape.iter().product();
                let mut x = data(&mut rng, dt, n, 0.0, 1.0);
                x[5 + 2] = bad; // (n=0, c=1, s=2)
                let ctx = format!("{dt:?} cl {cl} bad {bad}");
                let t = tol_for(dt);
                let zeros = vec![0.0; 4];
                let ones = vec![1.0; 4];
                let got = nk_batch_norm(
                    dt, dt, &x, &shape, cl, &None, &None, &zeros, &ones, true, 0.1, 1e-5,
                );
                let (exp, _) = rf::batch_norm_train(&x, &shape, None, None, 1e-5);
                assert_close(
                    &got.y,
                    &rounded(dt, &exp),
                    t,
                    &format!("batch_norm {ctx}"),
                    None,
                );
                // PyTorch: the batch mean is Σx / n, so +∞ for an infinity (running mean
                // 0.9·0 + 0.1·∞ = ∞), NaN for a NaN, in either layout
                assert!(
                    if bad.is_nan() {
                        got.rm[1].is_nan()
                    } else {
                        got.rm[1] == f64::INFINITY
                    },
                    "batch_norm {ctx}: running_mean[1] {}",
                    got.rm[1]
                );
                assert!(
                    got.rm[0].is_finite() && got.rm[2].is_finite(),
                    "batch_norm {ctx}: other channels"
                );
                let (got, _) = nk_instance_norm(dt, &x, &shape, cl, &None, &None, 1e-5);
                let (exp, _) = rf::instance_norm_train(&x, &shape, None, None, 1e-5);
                assert_close(
                    &got,
                    &rounded(dt, &exp),
                    t,
                    &format!("instance_norm {ctx}"),
                    None,
                );
                let (got, saved) = nk_group_norm(dt, &x, &shape, cl, 2, &None, &None, 1e-5);
                // the saved mean of group (n=0, g=0) is Σx / n as in PyTorch: +∞ or NaN
                let m00 = saved.mean.to_f64_vec()[0];
                assert!(
                    if bad.is_nan() {
                        m00.is_nan()
                    } else {
                        m00 == f64::INFINITY
                    },
                    "group_norm {ctx}: saved mean of group 0 {m00}"
                );
                let (exp, _, _) = rf::group_norm(&x, &shape, 2, None, None, 1e-5);
                assert_close(
                    &got,
                    &rounded(dt, &exp),
                    t,
                    &format!("group_norm {ctx}"),
                    None,
                );
                let (got, _) = nk_layer_norm(dt, &x, &shape, cl, &[5], &None, &None, 1e-5);
                let (exp, _, _) = rf::layer_norm(&x, 5, None, None, 1e-5);
                assert_close(
                    &got,
                    &rounded(dt, &exp),
                    t,
                    &format!("layer_norm {ctx}"),
                    None,
                );
                let a = LrnArgs {
                    size: 3,
                    alpha: 0.5,
                    beta: 0.75,
                    k: 1.0,
                };
                let got = nk_lrn(dt, &x, &shape, cl, a);
                let exp = rf::local_response_norm(&x, &shape, 3, 0.5, 0.75, 1.0);
                assert_close(
                    &got,
                    &rounded(dt, &exp),
                    t,
                    &format!("local_response_norm {ctx}"),
                    None,
                );
            }
        }
    }
}

// ----------------------------------------------------------------------------- reference check

/// The reference must agree with PyTorch's float64 golden values (1e-10), otherwise the
/// properties above would test against the wrong thing.
#[test]
fn reference_agrees_with_pytorch_f64_golden_values() {
    use common::golden::{self, f64_of, list, name, nums, nums_opt, shape, str_of};
    let t = Tol::new(1e-10, 1e-10);
    let mut checked = 0;
    for family in golden::FAMILIES {
        let file = golden::load(family);
        for case in list(&file, "functional") {
            if str_of(case, "dtype") != "f64" {
                continue;
            }
            let shp = shape(case, "shape");
            let x = nums(case, "input");
            let w = nums_opt(case, "weight");
            let b = nums_opt(case, "bias");
            let args = &case["args"];
            let exp = nums(case, "output");
            let ctx = name(case);
            let got = match str_of(case, "op") {
                "batch_norm" => {
                    let eps = f64_of(args, "eps");
                    if args["training"].as_bool().unwrap() {
                        let (y, st) =
                            rf::batch_norm_train(&x, &shp, w.as_deref(), b.as_deref(), eps);
                        if let Some(mut rm) = nums_opt(case, "running_mean") {
                            let mut rv = nums(case, "running_var");
                            rf::update_running(
                                &mut rm,
                                &mut rv,
                                &st.mean,
                                &st.unbiased_var,
                                f64_of(args, "momentum"),
                            );
                            assert_close(&rm, &nums(case, "running_mean_after"), t, &ctx, None);
                            assert_close(&rv, &nums(case, "running_var_after"), t, &ctx, None);
                        }
                        if let Some(sm) = nums_opt(case, "save_mean") {
                            assert_close(&st.mean, &sm, t, &ctx, None);
                            assert_close(&st.invstd, &nums(case, "save_invstd"), t, &ctx, None);
                        }
                        y
                    } else {
                        rf::batch_norm_eval(
                            &x,
                            &shp,
                            &nums(case, "running_mean"),
                            &nums(case, "running_var"),
                            w.as_deref(),
                            b.as_deref(),
                            eps,
                        )
                    }
                }
                "instance_norm" => {
                    let eps = f64_of(args, "eps");
                    if args["use_input_stats"].as_bool().unwrap() {
                        let (y, st) =
                            rf::instance_norm_train(&x, &shp, w.as_deref(), b.as_deref(), eps);
                        if let Some(mut rm) = nums_opt(case, "running_mean") {
                            let mut rv = nums(case, "running_var");
                            rf::instance_norm_update(
                                &mut rm,
                                &mut rv,
                                &st,
                                shp[0],
                                f64_of(args, "momentum"),
                            );
                            assert_close(&rm, &nums(case, "running_mean_after"), t, &ctx, None);
                            assert_close(&rv, &nums(case, "running_var_after"), t, &ctx, None);
                        }
                        y
                    } else {
                        rf::batch_norm_eval(
                            &x,
                            &shp,
                            &nums(case, "running_mean"),
                            &nums(case, "running_var"),
                            w.as_deref(),
                            b.as_deref(),
                            eps,
                        )
                    }
                }
                "group_norm" => {
                    let g = args["num_groups"].as_u64().unwrap() as usize;
                    let (y, m, r) = rf::group_norm(
                        &x,
                        &shp,
                        g,
                        w.as_deref(),
                        b.as_deref(),
                        f64_of(args, "eps"),
                    );
                    assert_close(&m, &nums(case, "save_mean"), t, &ctx, None);
                    assert_close(&r, &nums(case, "save_invstd"), t, &ctx, None);
                    y
                }
                "layer_norm" => {
                    let m: usize = args["normalized_shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .product();
                    let (y, mm, r) =
                        rf::layer_norm(&x, m, w.as_deref(), b.as_deref(), f64_of(args, "eps"));
                    assert_close(&mm, &nums(case, "save_mean"), t, &ctx, None);
                    assert_close(&r, &nums(case, "save_invstd"), t, &ctx, None);
                    y
                }
                "local_response_norm" => rf::local_response_norm(
                    &x,
                    &shp,
                    args["size"].as_u64().unwrap() as usize,
                    f64_of(args, "alpha"),
                    f64_of(args, "beta"),
                    f64_of(args, "k"),
                ),
                other => panic!("unknown op {other}"),
            };
            assert_close(&got, &exp, t, &ctx, None);
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} f64 golden cases checked");
}
