//! Backward passes of the functional ops (spec §2.9, §4.5, §6.5, §7.5, §8.5, §11).
//!
//! Each takes the forward input `x`, the upstream gradient `grad_output` (same shape) and the
//! statistics the forward pass used (saved mean/invstd after a training forward, running
//! statistics after an inference forward), and writes any of `grad_input`, `grad_weight` and
//! `grad_bias` that are requested. Parameter gradients have the parameters' dtype (f32 for
//! f16/bf16 input with f32 parameters) and are overwritten, or accumulated into with
//! `accumulate`.

use super::{
    channel_geom, check_min_rank, check_numel, check_param_dtypes, fmt_shape, param_values,
    with_element,
};
use crate::backend::cpu::backward::{self as kernels, GradCoefficients, ShortGroups};
use crate::backend::cpu::moments::Centre;
use crate::backend::cpu::scratch::Scratch;
use crate::backend::cpu::{ChannelLayout, Geom, LrnParams};
use crate::comm::Communicator;
use crate::dtype::{DType, Real};
use crate::error::{Error, Result};
use crate::ops::LrnArgs;
use crate::tensor::{ElementData, Tensor, TensorMut};

/// Gradient outputs of a backward op; each is computed only when given.
#[derive(Debug, Default)]
pub struct Gradients<'a> {
    /// dL/dx, the input's shape and dtype (any strides).
    pub grad_input: Option<TensorMut<'a>>,
    /// dL/dγ, the weight's shape, in the parameters' dtype.
    pub grad_weight: Option<TensorMut<'a>>,
    /// dL/dβ, the bias's shape, in the parameters' dtype.
    pub grad_bias: Option<TensorMut<'a>>,
    /// Add into `grad_weight`/`grad_bias` instead of overwriting them.
    pub accumulate: bool,
}

/// The statistics a channel op's forward pass normalised with.
#[derive(Debug)]
pub enum ForwardStats<'a> {
    /// After a training forward (or input statistics): the saved mean and inverse std.
    Saved {
        mean: Tensor<'a>,
        invstd: Tensor<'a>,
    },
    /// After an inference forward: the running statistics and the forward's eps.
    Running {
        mean: Tensor<'a>,
        var: Tensor<'a>,
        eps: f64,
    },
}

/// Arguments of [`batch_norm_backward`] and [`instance_norm_backward`].
#[derive(Debug)]
pub struct NormBackwardArgs<'a> {
    /// The forward's weight (γ = 1 when none).
    pub weight: Option<Tensor<'a>>,
    pub stats: ForwardStats<'a>,
    pub grads: Gradients<'a>,
}

/// Arguments of [`group_norm_backward`].
#[derive(Debug)]
pub struct GroupNormBackwardArgs<'a> {
    pub num_groups: usize,
    pub weight: Option<Tensor<'a>>,
    /// Saved mean and inverse std per `(n, g)`.
    pub mean: Tensor<'a>,
    pub invstd: Tensor<'a>,
    pub grads: Gradients<'a>,
}

/// Arguments of [`layer_norm_backward`].
#[derive(Debug)]
pub struct LayerNormBackwardArgs<'a> {
    pub normalized_shape: Vec<usize>,
    pub weight: Option<Tensor<'a>>,
    /// Saved mean and inverse std per row.
    pub mean: Tensor<'a>,
    pub invstd: Tensor<'a>,
    pub grads: Gradients<'a>,
}

/// Shapes and dtypes of the requested gradient outputs, for validation without their memory
/// (the CUDA ops validate device gradients with the same checks).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GradSpec<'s> {
    pub input: Option<(&'s [usize], DType)>,
    pub weight: Option<(usize, DType)>,
    pub bias: Option<(usize, DType)>,
}

impl Gradients<'_> {
    pub(crate) fn spec(&self) -> GradSpec<'_> {
        GradSpec {
            input: self.grad_input.as_ref().map(|t| (t.shape(), t.dtype())),
            weight: self.grad_weight.as_ref().map(|t| (t.numel(), t.dtype())),
            bias: self.grad_bias.as_ref().map(|t| (t.numel(), t.dtype())),
        }
    }
}

fn check_same(op: &str, operand: &str, x: &Tensor, shape: &[usize], dtype: DType) -> Result<()> {
    if shape != x.shape() {
        return Err(Error::shape(
            op,
            operand,
            format!("shape {} (the input's)", fmt_shape(x.shape())),
            format!("shape {}", fmt_shape(shape)),
        ));
    }
    if dtype != x.dtype() {
        return Err(Error::dtype(
            op,
            operand,
            format!("dtype {} (the input's)", x.dtype()),
            dtype.to_string(),
        ));
    }
    Ok(())
}

fn check_stat(op: &str, operand: &str, t: &Tensor, len: usize, dtype: DType) -> Result<()> {
    check_numel(
        op,
        operand,
        Some(t.numel()),
        len,
        "one per normalised group",
    )?;
    if t.dtype() != dtype {
        return Err(Error::dtype(
            op,
            operand,
            format!("dtype {dtype}"),
            t.dtype().to_string(),
        ));
    }
    Ok(())
}

/// Checks the gradient outputs against the input, the expected parameter length and dtype.
fn check_grads(
    op: &str,
    x: &Tensor,
    g: &Tensor,
    grads: &GradSpec,
    param_len: usize,
    weight: Option<DType>,
) -> Result<DType> {
    check_same(op, "grad_output", x, g.shape(), g.dtype())?;
    if let Some((shape, dtype)) = grads.input {
        check_same(op, "grad_input", x, shape, dtype)?;
    }
    for (name, t) in [("grad_weight", grads.weight), ("grad_bias", grads.bias)] {
        check_numel(op, name, t.map(|t| t.0), param_len, "one per parameter")?;
    }
    check_param_dtypes(
        op,
        x.dtype(),
        &[
            ("weight", weight),
            ("grad_weight", grads.weight.map(|t| t.1)),
            ("grad_bias", grads.bias.map(|t| t.1)),
        ],
    )
}

/// Writes (or adds) `values` into a parameter gradient.
fn store(t: Option<&mut TensorMut>, values: &[f64], accumulate: bool) {
    if let Some(t) = t {
        for (i, &v) in values.iter().enumerate() {
            let v = if accumulate {
                t.get_linear_f64(i) + v
            } else {
                v
            };
            t.set_linear_f64(i, v);
        }
    }
}

/// Runs `f(x, g, dx, layout)` on dense data (see [`run_staged`](super::run_staged)).
fn run_dense_grad<T: ElementData, R: Send>(
    op: &str,
    x: &Tensor,
    g: &Tensor,
    dx: Option<&mut TensorMut>,
    channel_op: bool,
    f: impl FnOnce(&[T], &[T], Option<&mut [T]>, ChannelLayout) -> R + Send,
) -> Result<R> {
    super::run_staged::<T, R, 2>(op, [x, g], dx, channel_op, |[xs, gs], dx, lay| {
        f(xs, gs, dx, lay)
    })
}

/// Per-group statistics as `(centre, r)` in the compute type, from saved or running stats.
fn group_stats<C: Real>(stats: &ForwardStats) -> (Vec<Centre<C>>, Vec<C>) {
    match stats {
        ForwardStats::Saved { mean, invstd } => (
            mean.to_f64_vec().into_iter().map(Centre::of).collect(),
            invstd.to_f64_vec().into_iter().map(C::from_f64).collect(),
        ),
        ForwardStats::Running { mean, var, eps } => (
            mean.to_f64_vec()
                .into_iter()
                .map(|m| Centre {
                    hi: C::from_f64(m),
                    lo: C::ZERO,
                })
                .collect(),
            var.to_f64_vec()
                .into_iter()
                .map(|v| C::ONE / (C::from_f64(v) + C::from_f64(*eps)).sqrt())
                .collect(),
        ),
    }
}

/// The saved means of a channel op's statistics with their compute-type rounding recovered,
/// by the LayerNorm backward's rule (`kernels::rounding_matters`, `kernels::recentred`): a
/// statistic whose `|mean|·r` is at least `RECOVER_LIMIT` and whose saved mean is the
/// rounding of its elements' mean is centred on that mean (one pass of `Σ (x − mean)` in f64
/// over its elements) as `hi + lo`; every other statistic keeps its saved mean, and when there
/// is none such, `x` is not read. Such statistics are rare (a mean far from zero against a
/// tiny spread, or a group of two values): the pass goes over the whole tensor in logical
/// order, unvectorised.
fn recovered_centres<C: Real>(
    x: &Tensor,
    grouping: Grouping,
    mut mu: Vec<Centre<C>>,
    r: &[C],
) -> Vec<Centre<C>> {
    let far: Vec<bool> = mu
        .iter()
        .zip(r)
        .map(|(m, &r)| kernels::rounding_matters(m.hi, r))
        .collect();
    if !far.contains(&true) {
        return mu;
    }
    let s = grouping.geom.s.max(1);
    let mut sums = vec![0.0f64; mu.len()];
    let mut i = 0;
    x.for_each_f64(|v| {
        let k = grouping.stat(i / s);
        if far[k] {
            sums[k] += v - mu[k].hi.to_f64();
        }
        i += 1;
    });
    let count = grouping.count();
    for ((m, &far), &sum) in mu.iter_mut().zip(&far).zip(&sums) {
        if far {
            *m = kernels::recentred(*m, m.hi.to_f64() + sum / count);
        }
    }
    mu
}

/// Planes (elements per (n, c) pair) below which a per-channel backward in channels-first
/// layout runs as column sums over rows of `C·S` elements (see `channel_backward`).
const SMALL_PLANE: usize = 64;

/// Planes below which statistics per (sample, group) (GroupNorm, InstanceNorm) take
/// `group_grad_short` (channels first and channels last), not the fused
/// per-unit path with coefficients per pair. One thread, same-run medians, GroupNorm(32) f32
/// backward, old / new: channels first (256, 256, 8, 8) 13.3–14.4 / 7.6–7.9 ms, (128, 256,
/// 16, 8) 8.5–9.7 / 6.7–7.2, (64, 256, 16, 16) 6.6–7.6 / 7.4–7.7; channels last (256, 256, 8,
/// 8) 7.8–8.1 / 6.6–6.7, (64, 256, 16, 16) 5.7–6.0 / 5.5–5.7, (16, 256, 32, 32) 6.2–6.4 /
/// 5.6–6.5 (docs/perf/cpu.md, round 28).
const SHORT_GROUP_PLANE: usize = 256;

/// How the `N·C` (sample, channel) pairs map onto the normalised groups of a channel op.
#[derive(Clone, Copy)]
struct Grouping {
    geom: Geom,
    /// Statistics are per channel (BatchNorm, and running statistics)...
    per_channel: bool,
    /// ...or per (sample, group) with this many groups (InstanceNorm: groups = C).
    groups: usize,
}

impl Grouping {
    fn stat(self, i: usize) -> usize {
        let c = self.geom.c;
        if self.per_channel {
            i % c
        } else {
            (i / c) * self.groups + (i % c) / (c / self.groups)
        }
    }
    /// Elements per statistic.
    fn count(self) -> f64 {
        if self.per_channel {
            (self.geom.n * self.geom.s) as f64
        } else {
            (self.geom.c / self.groups * self.geom.s) as f64
        }
    }
}

/// The parameter gradients `(dγ, dβ)` per channel from `units` units of sums, `per` to an
/// `(n, c)` pair in `(n, c)` order: `f(j, k)` is unit `j`'s `(dβ, dγ)` terms (`k` its pair's
/// statistic), added per channel in unit order. Counters walk the pairs: no division per pair.
fn per_channel_sums(
    grouping: Grouping,
    (units, per): (usize, usize),
    f: impl Fn(usize, usize) -> (f64, f64),
) -> (Vec<f64>, Vec<f64>) {
    let c = grouping.geom.c;
    let stats = if grouping.per_channel {
        c
    } else {
        grouping.groups
    };
    let planes = c / stats.max(1);
    let (mut dw, mut db) = (vec![0.0; c], vec![0.0; c]);
    let mut j = 0;
    for n in 0..units / (c * per).max(1) {
        for g in 0..stats {
            let k = if grouping.per_channel {
                g
            } else {
                n * stats + g
            };
            for ch in g * planes..(g + 1) * planes {
                for _ in 0..per {
                    let (vb, vw) = f(j, k);
                    db[ch] += vb;
                    dw[ch] += vw;
                    j += 1;
                }
            }
        }
    }
    (dw, db)
}

/// The shared backward of BatchNorm, InstanceNorm and GroupNorm. With batch statistics
/// (`training`): `dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`, `ĝ = g·γ_c`, means over each statistic's
/// elements; with running statistics: `dx = g·γ·r`. `dγ_c = Σ g·x̂`, `dβ_c = Σ g`.
#[allow(clippy::too_many_arguments)]
fn channel_backward(
    op: &str,
    grad_output: &Tensor,
    x: &Tensor,
    weight: Option<&Tensor>,
    stats: &ForwardStats,
    grads: &mut Gradients,
    grouping: Grouping,
    sync: Option<(&dyn Communicator, f64)>,
) -> Result<()> {
    let geom = grouping.geom;
    let training = matches!(stats, ForwardStats::Saved { .. });
    let (dw, db) = with_element!(x.dtype(), T => {
        type C = <T as crate::Element>::Compute;
        let (mu_s, r_s) = group_stats::<C>(stats);
        // batch statistics of this rank alone: the saved means' rounding recovered where it
        // matters (SyncBatchNorm's means are over every rank's batch)
        let mu_s = if training && sync.is_none() {
            recovered_centres(x, grouping, mu_s, &r_s)
        } else {
            mu_s
        };
        let gamma: Vec<C> = param_values(weight, geom.c, 1.0);
        let stat = |i: usize| grouping.stat(i);
        // the centres of `units` units of the sums, `per` to an (n, c) pair (see `sums_geom`)
        let centres = |units: usize, per: usize| -> Vec<Centre<C>> { (0..units).map(|j| mu_s[stat(j / per)]).collect() };
        let count = sync.map_or(grouping.count(), |(_, n)| n);
        // statistic k's `(r, q, o)` from its γ-weighted sums (`p = r·γ_c` per channel)
        let stat_coefficients = |k: usize, sa: f64, sb: f64| {
            let r = r_s[k].to_f64();
            let (q, o) = if training { (-r * r * r * sb / count, -r * sa / count) } else { (0.0, 0.0) };
            (r, C::from_f64(q), C::from_f64(o))
        };
        // dx = g·p + (x − μ)·q + o for pair i, from its statistic's γ-weighted sums
        let coefficient = |i: usize, sa: f64, sb: f64| {
            let (r, q, o) = stat_coefficients(stat(i), sa, sb);
            (C::from_f64(r * gamma[i % geom.c].to_f64()), q, o)
        };
        // The coefficients of the pairs `i0 ..` of one statistic from their sums `A`, `B`.
        let unit_coefficients = |pairs: kernels::UnitPairs, a: &[f64], b: &[f64]| {
            // the statistic's γ-weighted sums, its pairs in order (as the unfused path)
            let (mut sa, mut sb) = (0.0, 0.0);
            for (j, (&a, &b)) in a.iter().zip(b).enumerate() {
                let gm = gamma[pairs.pair(j) % geom.c].to_f64();
                sa += gm * a;
                sb += gm * b;
            }
            let mut k = (Vec::with_capacity(a.len()), Vec::with_capacity(a.len()), Vec::with_capacity(a.len()));
            for j in 0..a.len() {
                let (p, q, o) = coefficient(pairs.pair(j), sa, sb);
                k.0.push(p);
                k.1.push(q);
                k.2.push(o);
            }
            k
        };
        // Every statistic's γ-weighted sums of A = Σg and B = Σg·(x − μ) (over every rank's
        // batch for SyncBatchNorm), then the apply over the whole tensor.
        // `units` as `sums_geom` below: `per` of them to an (n, c) pair.
        let two_pass_apply = |(xs, gs, dx): (&[T], &[T], &mut [T]), (units, per, lay): (Geom, usize, ChannelLayout), mu: &[Centre<C>], (a, b): (&[f64], &[f64])| -> Result<()> {
            let nc = units.n * units.c;
            let mut sa = vec![0.0; r_s.len()];
            let mut sb = vec![0.0; r_s.len()];
            for j in 0..nc {
                let i = j / per;
                let gm = gamma[i % geom.c].to_f64();
                sa[stat(i)] += gm * a[j];
                sb[stat(i)] += gm * b[j];
            }
            if let Some((comm, _)) = sync {
                let mut both = [sa.as_slice(), sb.as_slice()].concat();
                comm.all_reduce_sum(&mut both).map_err(crate::comm::communication)?;
                let (ga, gb) = both.split_at(sa.len());
                sa.copy_from_slice(ga);
                sb.copy_from_slice(gb);
            }
            let mut p = Vec::with_capacity(nc);
            let mut q = Vec::with_capacity(nc);
            let mut o = Vec::with_capacity(nc);
            for j in 0..nc {
                let i = j / per;
                let (pi, qi, oi) = coefficient(i, sa[stat(i)], sb[stat(i)]);
                p.push(pi);
                q.push(qi);
                o.push(oi);
            }
            let k = GradCoefficients { mu, p: &p, q: &q, o: &o, per_sample: true };
            kernels::apply_channel_grad(xs, gs, dx, units, lay, &k);
            Ok(())
        };
        run_dense_grad::<T, _>(op, x, grad_output, grads.grad_input.as_mut(), true, |xs, gs, dx, lay| -> Result<_> {
            // Planes shorter than SHORT_GROUP_PLANE, statistics per (sample, group): a kernel
            // per run of whole statistics (channels first, and every (N, C) input) or of whole
            // samples (channels last), coefficients per statistic (`group_grad_short`).
            // Statistics per channel on channels-first planes from SMALL_PLANE up: two passes
            // in memory order (`channel_grad_short`). One thread, same-run medians,
            // BatchNorm2d f32 backward, old / new: (256, 256, 8, 8) 17.5-18.0 / 6.4-8.5 ms,
            // (128, 256, 16, 8) 9.2-10.0 / 5.5-6.9 ms, (64, 256, 16, 16) 4.9-5.0 / 4.3-5.5 ms;
            // below 64 elements the column sums below stay faster ((4096, 256, 2, 2): 5.7-5.8
            // / 11.8-12.1 ms).
            let short_channels = lay == ChannelLayout::First && geom.s >= SMALL_PLANE;
            if sync.is_none() && geom.s < SHORT_GROUP_PLANE && (!grouping.per_channel || short_channels) {
                let gamma: Vec<f64> = gamma.iter().map(|g| g.to_f64()).collect();
                let stats = ShortGroups {
                    s: geom.s,
                    planes: geom.c / grouping.groups.max(1),
                    groups: grouping.groups,
                    mu: &mu_s,
                    gamma: &gamma,
                    coefficients: &stat_coefficients,
                };
                return Ok(if grouping.per_channel {
                    kernels::channel_grad_short((xs, gs, dx), geom, &stats)
                } else {
                    kernels::group_grad_short((xs, gs, dx), (geom.n, lay), &stats)
                });
            }
            // Statistics per (sample, group): reduce and apply per group (channels first) or
            // per sample (channels last) while it is in cache (the bits of the two passes).
            // Statistics per channel, channels first: per channel, its N planes gathered.
            // 2-byte elements, channels first, groups of several planes (GroupNorm): the two
            // passes. Same-run A/B on an AMD EPYC (Zen 4) VM, GroupNorm 16x256x32x32 bf16:
            // 1.41x (1 and 2 threads) over the per-group fusion, which f32 keeps (the two
            // passes measured 0.87-0.96x for it); docs/perf/cpu.md, round 17. The same bits.
            let two_byte_groups = std::mem::size_of::<T>() == 2
                && lay == ChannelLayout::First
                && geom.c / grouping.groups.max(1) > 1;
            let fused = !grouping.per_channel && sync.is_none() && !two_byte_groups;
            // Statistics per channel over channels-last rows (BatchNorm NHWC, and every (N, C)
            // input: s = 1 is channels last): the N samples are one (1, C, N·S) tensor for the
            // sums and the apply, so they take per-channel column sums over all rows and one
            // coefficient per channel, not one per (n, c) pair. With s = 1 a pair was one
            // element: BatchNorm1d's backward on 4096x1024 f32 took ~250 ms (N·C pairs of
            // sums, coefficients and per-sample passes), against 6 ms for PyTorch.
            // Channels first with planes shorter than SMALL_PLANE (BatchNorm1d on (N, C, L)):
            // its N rows of C·S elements are channels last too, with C·S columns (S to a
            // channel): column sums over the N rows and one coefficient per column, instead
            // of per-pair passes over planes of a few elements. 4096x256x4 f32 took 249 ms at
            // one thread this way (PyTorch 2.15: 81 ms).
            let (sums_geom, per, sums_lay) = if grouping.per_channel && lay == ChannelLayout::Last {
                (Geom { n: 1, c: geom.c, s: geom.n * geom.s }, 1, lay)
            } else if grouping.per_channel && geom.s < SMALL_PLANE {
                (Geom { n: 1, c: geom.c * geom.s, s: geom.n }, geom.s.max(1), ChannelLayout::Last)
            } else {
                (geom, 1, lay)
            };
            let mu = centres(sums_geom.n * sums_geom.c, per);
            let per_channel_fused = grouping.per_channel && sync.is_none() && sums_lay == ChannelLayout::First;
            let (a, b) = match dx {
                Some(dx) if fused => {
                    let planes = geom.c / grouping.groups.max(1);
                    kernels::channel_grad_fused((xs, gs, dx), (geom, lay), planes, &mu, unit_coefficients)
                }
                Some(dx) if per_channel_fused => {
                    kernels::channel_grad_fused_per_channel((xs, gs, dx), geom, &mu, unit_coefficients)
                }
                dx => {
                    let (a, b) = kernels::channel_grad_sums(xs, gs, sums_geom, sums_lay, &mu);
                    if let Some(dx) = dx {
                        two_pass_apply((xs, gs, dx), (sums_geom, per, sums_lay), &mu, (&a, &b))?;
                    }
                    (a, b)
                }
            };
            Ok(per_channel_sums(grouping, (sums_geom.n * sums_geom.c, per), |j, k| (a[j], b[j] * r_s[k].to_f64())))
        })?
    })
    .map_err(|e| e.in_op(op))?;
    store(grads.grad_weight.as_mut(), &dw, grads.accumulate);
    store(grads.grad_bias.as_mut(), &db, grads.accumulate);
    Ok(())
}

/// Backward of [`batch_norm`](super::batch_norm). With [`ForwardStats::Saved`] this is the
/// training formula `dx = γ·r·(g − mean(g) − x̂·mean(g·x̂))`; with
/// [`ForwardStats::Running`] (frozen BatchNorm) `dx = g·γ/sqrt(rv + eps)`.
pub fn batch_norm_backward(
    grad_output: &Tensor,
    x: &Tensor,
    mut args: NormBackwardArgs,
) -> Result<()> {
    const OP: &str = "batch_norm_backward";
    let geom = validate_batch_norm(
        OP,
        grad_output,
        x,
        args.weight.as_ref(),
        &args.stats,
        &args.grads.spec(),
    )?;
    let grouping = Grouping {
        geom,
        per_channel: true,
        groups: geom.c,
    };
    channel_backward(
        OP,
        grad_output,
        x,
        args.weight.as_ref(),
        &args.stats,
        &mut args.grads,
        grouping,
        None,
    )
}

/// SyncBatchNorm's backward on one rank (spec §3.4): `dx` uses `Σdy` and `Σdy·(x − μ)`
/// all-reduced over the group (one `all_reduce_sum` of `2C` values, only when `grad_input` is
/// requested: every rank must request it alike) and the global count returned by
/// [`sync_batch_norm`](super::sync_batch_norm); `grad_weight` and `grad_bias` are this rank's
/// local sums (summing them over ranks, e.g. in data-parallel training, gives the full-batch
/// gradients).
pub fn sync_batch_norm_backward(
    grad_output: &Tensor,
    x: &Tensor,
    mut args: NormBackwardArgs,
    global_count: f64,
    comm: &dyn Communicator,
) -> Result<()> {
    const OP: &str = "sync_batch_norm_backward";
    let geom = validate_batch_norm(
        OP,
        grad_output,
        x,
        args.weight.as_ref(),
        &args.stats,
        &args.grads.spec(),
    )?;
    if !matches!(args.stats, ForwardStats::Saved { .. }) || comm.world_size() < 2 {
        return batch_norm_backward(grad_output, x, args);
    }
    let grouping = Grouping {
        geom,
        per_channel: true,
        groups: geom.c,
    };
    let sync = args
        .grads
        .grad_input
        .is_some()
        .then_some((comm, global_count));
    channel_backward(
        OP,
        grad_output,
        x,
        args.weight.as_ref(),
        &args.stats,
        &mut args.grads,
        grouping,
        sync,
    )
}

/// Validates a BatchNorm backward; returns the channel geometry.
pub(crate) fn validate_batch_norm(
    op: &str,
    g: &Tensor,
    x: &Tensor,
    weight: Option<&Tensor>,
    stats: &ForwardStats,
    grads: &GradSpec,
) -> Result<Geom> {
    check_min_rank(op, x, 2, "(N, C, *)")?;
    let geom = channel_geom(x.shape());
    check_channel_args(op, x, g, weight, stats, grads, geom.c, geom.c)?;
    Ok(geom)
}

#[allow(clippy::too_many_arguments)]
fn check_channel_args(
    op: &str,
    x: &Tensor,
    g: &Tensor,
    weight: Option<&Tensor>,
    stats: &ForwardStats,
    grads: &GradSpec,
    c: usize,
    stat_len: usize,
) -> Result<()> {
    check_numel(
        op,
        "weight",
        weight.map(|t| t.numel()),
        c,
        "one per channel",
    )?;
    let sd = x.dtype().stat_dtype();
    match stats {
        ForwardStats::Saved { mean, invstd } => {
            check_stat(op, "mean", mean, stat_len, sd)?;
            check_stat(op, "invstd", invstd, stat_len, sd)?;
        }
        ForwardStats::Running { mean, var, .. } => {
            check_numel(op, "running_mean", Some(mean.numel()), c, "one per channel")?;
            check_numel(op, "running_var", Some(var.numel()), c, "one per channel")?;
            check_param_dtypes(
                op,
                x.dtype(),
                &[
                    ("weight", weight.map(|t| t.dtype())),
                    ("running_mean", Some(mean.dtype())),
                    ("running_var", Some(var.dtype())),
                ],
            )?;
        }
    }
    check_grads(op, x, g, grads, c, weight.map(|t| t.dtype()))?;
    Ok(())
}

/// Validates an InstanceNorm backward (saved statistics per `(n, c)`, running per `c`).
pub(crate) fn validate_instance_norm(
    g: &Tensor,
    x: &Tensor,
    weight: Option<&Tensor>,
    stats: &ForwardStats,
    grads: &GradSpec,
) -> Result<Geom> {
    const OP: &str = "instance_norm_backward";
    check_min_rank(OP, x, 2, "(N, C, *)")?;
    let geom = channel_geom(x.shape());
    let training = matches!(stats, ForwardStats::Saved { .. });
    let stat_len = if training { geom.n * geom.c } else { geom.c };
    check_channel_args(OP, x, g, weight, stats, grads, geom.c, stat_len)?;
    Ok(geom)
}

/// Backward of [`instance_norm`](super::instance_norm): per instance as the BatchNorm
/// training formula over the spatial dims (saved stats per `(n, c)`), or
/// `dx = g·γ/sqrt(rv + eps)` with running statistics. Parameter gradients sum over the batch.
pub fn instance_norm_backward(
    grad_output: &Tensor,
    x: &Tensor,
    mut args: NormBackwardArgs,
) -> Result<()> {
    const OP: &str = "instance_norm_backward";
    let geom = validate_instance_norm(
        grad_output,
        x,
        args.weight.as_ref(),
        &args.stats,
        &args.grads.spec(),
    )?;
    let training = matches!(args.stats, ForwardStats::Saved { .. });
    let grouping = Grouping {
        geom,
        per_channel: !training,
        groups: geom.c,
    };
    channel_backward(
        OP,
        grad_output,
        x,
        args.weight.as_ref(),
        &args.stats,
        &mut args.grads,
        grouping,
        None,
    )
}

/// Validates a GroupNorm backward; returns the channel geometry.
pub(crate) fn validate_group_norm(
    g: &Tensor,
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    (mean, invstd): (&Tensor, &Tensor),
    grads: &GradSpec,
) -> Result<Geom> {
    const OP: &str = "group_norm_backward";
    check_min_rank(OP, x, 2, "(N, C, *)")?;
    let geom: Geom = channel_geom(x.shape());
    let groups = num_groups;
    if groups == 0 || geom.c % groups != 0 {
        return Err(Error::invalid(
            OP,
            "num_groups",
            format!("a positive divisor of the channel count {}", geom.c),
            groups.to_string(),
        ));
    }
    check_numel(
        OP,
        "weight",
        weight.map(|t| t.numel()),
        geom.c,
        "one per channel",
    )?;
    let sd = x.dtype().stat_dtype();
    check_stat(OP, "mean", mean, geom.n * groups, sd)?;
    check_stat(OP, "invstd", invstd, geom.n * groups, sd)?;
    check_grads(OP, x, g, grads, geom.c, weight.map(|t| t.dtype()))?;
    Ok(geom)
}

/// Backward of [`group_norm`](super::group_norm):
/// `dx = r·(ĝ − mean_grp(ĝ) − x̂·mean_grp(ĝ·x̂))` with `ĝ = g·γ_c`.
pub fn group_norm_backward(
    grad_output: &Tensor,
    x: &Tensor,
    mut args: GroupNormBackwardArgs,
) -> Result<()> {
    const OP: &str = "group_norm_backward";
    let geom = validate_group_norm(
        grad_output,
        x,
        args.num_groups,
        args.weight.as_ref(),
        (&args.mean, &args.invstd),
        &args.grads.spec(),
    )?;
    let groups = args.num_groups;
    let stats = ForwardStats::Saved {
        mean: args.mean.clone(),
        invstd: args.invstd.clone(),
    };
    let grouping = Grouping {
        geom,
        per_channel: false,
        groups,
    };
    channel_backward(
        OP,
        grad_output,
        x,
        args.weight.as_ref(),
        &stats,
        &mut args.grads,
        grouping,
        None,
    )
}

/// Validates a LayerNorm backward; returns `(rows, cols)`.
pub(crate) fn validate_layer_norm(
    g: &Tensor,
    x: &Tensor,
    ns: &[usize],
    weight: Option<&Tensor>,
    (mean, invstd): (&Tensor, &Tensor),
    grads: &GradSpec,
) -> Result<(usize, usize)> {
    const OP: &str = "layer_norm_backward";
    let shape = x.shape();
    if ns.is_empty() || shape.len() < ns.len() || shape[shape.len() - ns.len()..] != ns[..] {
        return Err(Error::shape(
            OP,
            "input",
            format!("a shape ending in normalized_shape {}", fmt_shape(ns)),
            format!("shape {}", fmt_shape(shape)),
        ));
    }
    let cols: usize = ns.iter().product();
    let rows: usize = shape[..shape.len() - ns.len()].iter().product();
    check_numel(
        OP,
        "weight",
        weight.map(|t| t.numel()),
        cols,
        "normalized_shape",
    )?;
    let sd = x.dtype().stat_dtype();
    check_stat(OP, "mean", mean, rows, sd)?;
    check_stat(OP, "invstd", invstd, rows, sd)?;
    check_grads(OP, x, g, grads, cols, weight.map(|t| t.dtype()))?;
    Ok((rows, cols))
}

/// Backward of [`layer_norm`](super::layer_norm):
/// `dx = r·(ĝ − mean_row(ĝ) − x̂·mean_row(ĝ·x̂))`, `ĝ = g ⊙ γ`; `dγ = Σ_rows g·x̂`, `dβ = Σ_rows g`.
pub fn layer_norm_backward(
    grad_output: &Tensor,
    x: &Tensor,
    mut args: LayerNormBackwardArgs,
) -> Result<()> {
    const OP: &str = "layer_norm_backward";
    let (rows, cols) = validate_layer_norm(
        grad_output,
        x,
        &args.normalized_shape,
        args.weight.as_ref(),
        (&args.mean, &args.invstd),
        &args.grads.spec(),
    )?;
    let accumulate = args.grads.accumulate;
    let (dw, db) = with_element!(x.dtype(), T => {
        type C = <T as crate::Element>::Compute;
        // per-row, so from the scratch pool (no per-call allocation of `rows` values)
        let mut mu = Scratch::filled(Centre::<C>::default(), rows);
        args.mean.map_into(&mut mu, Centre::of);
        let mut r = Scratch::filled(C::ZERO, rows);
        args.invstd.map_into(&mut r, C::from_f64);
        let w: Option<Vec<C>> = args.weight.as_ref().map(|w| param_values(Some(w), cols, 1.0));
        run_dense_grad::<T, _>(OP, x, grad_output, args.grads.grad_input.as_mut(), false, |xs, gs, dx, _| {
            kernels::layer_norm_backward(xs, gs, dx, cols, &mu, &r, w.as_deref())
        })?
    });
    store(args.grads.grad_weight.as_mut(), &dw, accumulate);
    store(args.grads.grad_bias.as_mut(), &db, accumulate);
    Ok(())
}

/// Validates a LocalResponseNorm backward; false when there is nothing to compute.
pub(crate) fn validate_local_response_norm(
    g: &Tensor,
    x: &Tensor,
    grad_input: (&[usize], DType),
    args: &LrnArgs,
) -> Result<bool> {
    const OP: &str = "local_response_norm_backward";
    check_min_rank(OP, x, 3, "(N, C, *) with at least one spatial dim")?;
    if args.size == 0 {
        return Err(Error::invalid(OP, "size", "size > 0", "0"));
    }
    check_same(OP, "grad_output", x, g.shape(), g.dtype())?;
    check_same(OP, "grad_input", x, grad_input.0, grad_input.1)?;
    Ok(x.numel() > 0)
}

/// Backward of [`local_response_norm`](super::local_response_norm) (spec §8.5).
pub fn local_response_norm_backward(
    grad_output: &Tensor,
    x: &Tensor,
    grad_input: &mut TensorMut,
    args: LrnArgs,
) -> Result<()> {
    const OP: &str = "local_response_norm_backward";
    if !validate_local_response_norm(
        grad_output,
        x,
        (grad_input.shape(), grad_input.dtype()),
        &args,
    )? {
        return Ok(());
    }
    let geom = channel_geom(x.shape());
    let p = LrnParams {
        size: args.size,
        alpha: args.alpha,
        beta: args.beta,
        k: args.k,
    };
    with_element!(x.dtype(), T => run_dense_grad::<T, _>(OP, x, grad_output, Some(grad_input), true, |xs, gs, dx, lay| {
        if let Some(dx) = dx {
            kernels::lrn_backward(xs, gs, dx, geom, lay, p);
        }
    }))
}
