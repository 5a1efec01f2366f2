//! `batch_norm`: per-channel statistics over the batch and spatial dims (`F.batch_norm`).

use super::{
    OutMeta, SavedStats, centres, channel_geom, check_min_rank, check_numel, check_output_meta,
    check_param_dtypes, ema, mut_values, param_values, run_dense, run_staged, with_element,
};
use crate::backend::cpu::moments::Centre;
use crate::backend::cpu::{self, ChannelLayout, Coefficients, moments};
use crate::comm::{Communicator, RankMoments, all_gather_moments};
use crate::dtype::{DType, Element, Real};
use crate::error::{Error, Result, fmt_shape};
use crate::tensor::{Tensor, TensorMut};

const OP: &str = "batch_norm";

/// Arguments of [`batch_norm`]. [`BatchNormArgs::default`] gives PyTorch's defaults
/// (inference, momentum 0.1, eps 1e-5, no parameters, no running statistics).
#[derive(Debug)]
pub struct BatchNormArgs<'a> {
    /// Per-channel scale γ (`C` elements), or none for γ = 1.
    pub weight: Option<Tensor<'a>>,
    /// Per-channel shift β (`C` elements), or none for β = 0.
    pub bias: Option<Tensor<'a>>,
    /// Running mean (`C` elements): read in inference, updated in training.
    pub running_mean: Option<TensorMut<'a>>,
    /// Running variance (`C` elements, unbiased): read in inference, updated in training.
    pub running_var: Option<TensorMut<'a>>,
    /// Batch counter. In training it is incremented once per successful call, and a
    /// `momentum` of `None` then uses the factor `1/num_batches_tracked` (cumulative average).
    pub num_batches_tracked: Option<&'a mut i64>,
    /// Batch statistics (true) or running statistics (false).
    pub training: bool,
    /// Running-statistic factor; `None` means cumulative average (needs the counter).
    pub momentum: Option<f64>,
    /// Added to the variance inside the square root. Must be > 0 in training, ≥ 0 otherwise.
    pub eps: f64,
}

impl Default for BatchNormArgs<'_> {
    fn default() -> Self {
        BatchNormArgs {
            weight: None,
            bias: None,
            running_mean: None,
            running_var: None,
            num_batches_tracked: None,
            training: false,
            momentum: Some(0.1),
            eps: 1e-5,
        }
    }
}

/// Batch normalisation of `x` (shape `(N, C, *S)`, rank ≥ 2) into `y`.
///
/// Training: normalises with the batch mean and biased variance, updates the running
/// statistics (when given) with the unbiased variance, and returns the saved mean and inverse
/// std (`C` each). Inference: normalises with the running statistics and returns empty saved
/// statistics.
///
/// ```
/// use normkit::{Tensor, TensorMut, ops::{batch_norm, BatchNormArgs}};
/// let x = vec![1.0f32, 10.0, 2.0, 20.0, 4.0, 60.0]; // (N=3, C=2)
/// let mut y = vec![0.0f32; 6];
/// let (mut rm, mut rv) = (vec![0.0f32; 2], vec![1.0f32; 2]);
/// let stats = batch_norm(
///     &Tensor::new(&x, &[3, 2])?,
///     &mut TensorMut::new(&mut y, &[3, 2])?,
///     BatchNormArgs {
///         training: true,
///         running_mean: Some(TensorMut::new(&mut rm, &[2])?),
///         running_var: Some(TensorMut::new(&mut rv, &[2])?),
///         ..Default::default()
///     },
/// )?;
/// assert!((y[0] + 1.0690415).abs() < 1e-5);
/// assert!((rm[1] - 3.0).abs() < 1e-6);
/// assert_eq!(stats.mean.len(), 2);
/// # Ok::<(), normkit::Error>(())
/// ```
pub fn batch_norm(x: &Tensor, y: &mut TensorMut, args: BatchNormArgs) -> Result<SavedStats> {
    batch_norm_impl(OP, x, y, args, None).map(|(stats, _)| stats)
}

/// SyncBatchNorm's forward on one rank (spec §3.3): in training, the batch statistics are
/// those of the union of every rank's local batch, exchanged through `comm` as one
/// `[count, mean(C), M2(C)]` payload per rank and merged with Chan's formula in rank order;
/// the running statistics use the unbiased variance with the global count, so every rank ends
/// with the same running statistics. Ranks with an empty local batch take part with count 0.
/// In inference (or with one rank) this is exactly [`batch_norm`].
///
/// Returns the saved (global) statistics and the global element count per channel, which
/// [`sync_batch_norm_backward`](super::sync_batch_norm_backward) needs. If the exchange fails,
/// the error is returned and the running statistics and counter are left unchanged.
pub fn sync_batch_norm(
    x: &Tensor,
    y: &mut TensorMut,
    args: BatchNormArgs,
    comm: &dyn Communicator,
) -> Result<(SavedStats, f64)> {
    let comm = (args.training && comm.world_size() > 1).then_some(comm);
    batch_norm_impl("sync_batch_norm", x, y, args, comm)
}

fn batch_norm_impl(
    op: &str,
    x: &Tensor,
    y: &mut TensorMut,
    mut args: BatchNormArgs,
    comm: Option<&dyn Communicator>,
) -> Result<(SavedStats, f64)> {
    let g = channel_geom(x.shape());
    let (pdt, updates) = match validate(op, x, (y.shape(), y.dtype()), &args, comm.is_some())? {
        Checked::Run {
            param_dtype,
            updates,
        } => (param_dtype, updates),
        Checked::Empty => {
            if !args.training {
                return Ok((SavedStats::empty(x.dtype()), 0.0));
            }
            if let Some(n) = args.num_batches_tracked {
                *n += 1;
            }
            let sd = x.dtype().stat_dtype();
            let zeros = || crate::Buffer::filled(sd, g.c, 0.0);
            return Ok((
                SavedStats {
                    mean: zeros(),
                    invstd: zeros(),
                },
                0.0,
            ));
        }
    };
    // The counter moves only once nothing can fail any more (after the exchange).
    let next_count = args.num_batches_tracked.as_deref().map(|n| n + 1);
    let factor = match (updates, args.momentum, next_count) {
        (false, _, _) => 0.0,
        (true, Some(m), _) => m,
        (true, None, Some(n)) => 1.0 / n as f64,
        (true, None, None) => 0.0, // rejected above
    };
    let r = with_element!(x.dtype(), T => run_typed::<T>(op, x, y, &mut args, pdt, factor, comm))?;
    if let (true, Some(n), Some(next)) = (args.training, args.num_batches_tracked, next_count) {
        *n = next;
    }
    Ok(r)
}

/// The outcome of [`validate`].
pub(crate) enum Checked {
    /// An empty input that passed every check PyTorch makes for one (nothing to compute).
    Empty,
    /// Run: the parameters' dtype and whether running statistics are updated.
    Run { param_dtype: DType, updates: bool },
}

/// Every check of [`batch_norm`] (and of [`sync_batch_norm`] when `distributed`), from
/// shapes and dtypes only (the CUDA op shares it).
pub(crate) fn validate(
    op: &str,
    x: &Tensor,
    y: OutMeta,
    args: &BatchNormArgs,
    distributed: bool,
) -> Result<Checked> {
    check_min_rank(op, x, 2, "(N, C, *)")?;
    check_output_meta(op, x, y)?;
    let g = channel_geom(x.shape());
    let count = g.n * g.s;
    // With other ranks contributing, a local batch of one value per channel is fine.
    if args.training && count == 1 && !distributed {
        return Err(Error::invalid(
            op,
            "input",
            "more than 1 value per channel when training",
            format!("input of shape {}", fmt_shape(x.shape())),
        ));
    }
    if args.training && (args.eps <= 0.0 || args.eps.is_nan()) {
        return Err(Error::invalid(
            op,
            "eps",
            "eps > 0 in training",
            format!("{}", args.eps),
        ));
    }
    if args.eps < 0.0 || args.eps.is_nan() {
        return Err(Error::invalid(
            op,
            "eps",
            "eps >= 0",
            format!("{}", args.eps),
        ));
    }
    let numels = [
        (
            "running_mean",
            args.running_mean.as_ref().map(|t| t.numel()),
        ),
        ("running_var", args.running_var.as_ref().map(|t| t.numel())),
        ("weight", args.weight.as_ref().map(|t| t.numel())),
        ("bias", args.bias.as_ref().map(|t| t.numel())),
    ];
    let updates = args.training && (args.running_mean.is_some() || args.running_var.is_some());
    if updates && args.momentum.is_none() && args.num_batches_tracked.is_none() {
        return Err(Error::invalid(
            op,
            "momentum",
            "a momentum, or num_batches_tracked for the cumulative average (momentum None)",
            "momentum None without num_batches_tracked",
        ));
    }
    if x.numel() == 0 && !distributed {
        // PyTorch skips every further check for empty input (it only indexes weight[0]).
        if g.c == 0 && args.weight.is_some() {
            return Err(Error::shape(
                op,
                "weight",
                "an input with at least one channel",
                "0 channels",
            ));
        }
        return Ok(Checked::Empty);
    }
    if !args.training {
        for (name, present) in [("running_mean", numels[0].1), ("running_var", numels[1].1)] {
            if present.is_none() {
                return Err(Error::invalid(
                    op,
                    name,
                    format!("{name} in inference mode"),
                    "none",
                ));
            }
        }
    }
    for (name, n) in numels {
        check_numel(op, name, n, g.c, "one per channel")?;
    }
    let param_dtype = check_param_dtypes(
        op,
        x.dtype(),
        &[
            ("weight", args.weight.as_ref().map(|t| t.dtype())),
            ("bias", args.bias.as_ref().map(|t| t.dtype())),
            (
                "running_mean",
                args.running_mean.as_ref().map(|t| t.dtype()),
            ),
            ("running_var", args.running_var.as_ref().map(|t| t.dtype())),
        ],
    )?;
    Ok(Checked::Run {
        param_dtype,
        updates,
    })
}

fn run_typed<T: crate::tensor::ElementData>(
    op: &str,
    x: &Tensor,
    y: &mut TensorMut,
    args: &mut BatchNormArgs,
    pdt: DType,
    factor: f64,
    comm: Option<&dyn Communicator>,
) -> Result<(SavedStats, f64)> {
    let g = channel_geom(x.shape());
    let gamma: Vec<T::Compute> = param_values(args.weight.as_ref(), g.c, 1.0);
    let beta: Vec<T::Compute> = param_values(args.bias.as_ref(), g.c, 0.0);
    if !args.training {
        normalize_with_running_stats::<T>(
            op,
            x,
            y,
            args.running_mean.as_ref(),
            args.running_var.as_ref(),
            &gamma,
            &beta,
            args.eps,
        )?;
        return Ok((SavedStats::empty(x.dtype()), 0.0));
    }
    let local_count = (g.n * g.s) as f64;
    let eps = args.eps;
    let finish =
        |count: f64, m: f64| moments::finish::<T::Compute>(count as usize, m, eps, false, true).1;
    if comm.is_none() && x.numel() > 0 && g.s != 1 {
        // Local statistics: channels-first input is normalised channel by channel while the
        // channel is in cache, or in memory order where a channel does not fit in L2
        // (bit-identical to the moments-then-apply path below either way). Dense
        // channels-last data (always the case for S = 1) returns `None` before touching `y`
        // and takes that path.
        let fin = |m: f64| finish(local_count, m);
        let fused = run_dense::<T, _>(op, x, y, true, |xs, ys, lay| {
            matches!(lay, ChannelLayout::First)
                .then(|| cpu::batch_norm_first_fused(xs, ys, g, fin, &gamma, &beta))
        })?;
        if let Some((mean, m2, rstd)) = fused {
            update_running::<T::Compute>(
                pdt,
                (args.running_mean.as_mut(), args.running_var.as_mut()),
                (&mean, &m2, local_count),
                factor,
            );
            return Ok((SavedStats::from_parts(&mean, rstd), local_count));
        }
    }
    let (mean, m2) = if x.numel() == 0 {
        (vec![0.0; g.c], vec![0.0; g.c])
    } else {
        run_staged::<T, _, 1>(op, [x], None, true, |[xs], _, lay| {
            cpu::channel_moments(xs, g, lay)
        })?
    };
    let local = RankMoments {
        count: local_count,
        mean,
        m2,
    };
    let RankMoments { count, mean, m2 } = match comm {
        Some(c) => all_gather_moments(c, &local).map_err(|e| e.in_op(op))?,
        None => local,
    };
    let rstd: Vec<T::Compute> = m2.iter().map(|&m| finish(count, m)).collect();
    if x.numel() > 0 {
        let scale: Vec<T::Compute> = rstd.iter().zip(&gamma).map(|(&r, &w)| r * w).collect();
        let shift = centres(&mean);
        let fold = cpu::foldable(mean.iter().copied().zip(rstd.iter().copied()));
        run_dense::<T, _>(op, x, y, true, |xs, ys, lay| {
            let k = Coefficients {
                shift: &shift,
                scale: &scale,
                offset: &beta,
                per_sample: false,
                fold,
            };
            cpu::apply_channel(xs, ys, g, lay, &k);
        })?;
    }
    update_running::<T::Compute>(
        pdt,
        (args.running_mean.as_mut(), args.running_var.as_mut()),
        (&mean, &m2, count),
        factor,
    );
    Ok((SavedStats::from_parts(&mean, rstd), count))
}

/// The running-statistics update of a training step from the (global) per-channel `mean`
/// and `m2` over `count` values: `rm ← ema(rm, mean)`, `rv ← ema(rv, m2/(count − 1))`, with
/// PyTorch's roundings (`C` is the compute type). Nothing happens for an empty batch.
pub(crate) fn update_running<C: Real>(
    pdt: DType,
    (rm, rv): (Option<&mut TensorMut>, Option<&mut TensorMut>),
    (mean, m2, count): (&[f64], &[f64], f64),
    factor: f64,
) {
    if count < 1.0 {
        return;
    }
    if let Some(rm) = rm {
        for (c, &mu) in mean.iter().enumerate() {
            let old = rm.get_linear_f64(c);
            rm.set_linear_f64(c, ema(pdt, old, mu, factor));
        }
    }
    if let Some(rv) = rv {
        for (c, &m) in m2.iter().enumerate() {
            let unbiased = C::from_f64(m).to_f64() / (count - 1.0);
            let unbiased = C::from_f64(unbiased).to_f64();
            let old = rv.get_linear_f64(c);
            rv.set_linear_f64(c, ema(pdt, old, unbiased, factor));
        }
    }
}

/// Normalises `x` into `y` with running statistics (BatchNorm and InstanceNorm inference):
/// `y = (x − running_mean)·γ/sqrt(running_var + eps) + β` per channel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn normalize_with_running_stats<T: crate::tensor::ElementData>(
    op: &str,
    x: &Tensor,
    y: &mut TensorMut,
    running_mean: Option<&TensorMut>,
    running_var: Option<&TensorMut>,
    gamma: &[T::Compute],
    beta: &[T::Compute],
    eps: f64,
) -> Result<()> {
    let (Some(rm), Some(rv)) = (running_mean, running_var) else {
        return Err(Error::invalid(
            op,
            "running_mean",
            "running statistics in inference mode",
            "none",
        ));
    };
    let g = channel_geom(x.shape());
    let (mean, var) = (mut_values(rm), mut_values(rv));
    let k = eval_coefficients::<T>(&mean, &var, gamma, beta, eps);
    // the inverse standard deviation as `eval_coefficients` computes it
    let rstd = var
        .iter()
        .map(|&v| T::Compute::ONE / (v + T::Compute::from_f64(eps)).sqrt());
    let fold = cpu::foldable(mean.iter().map(|m| m.to_f64()).zip(rstd));
    run_dense::<T, _>(op, x, y, true, |xs, ys, lay| {
        let c = Coefficients {
            shift: &k.0,
            scale: &k.1,
            offset: &k.2,
            per_sample: false,
            fold,
        };
        cpu::apply_channel(xs, ys, g, lay, &c);
    })
}

/// Coefficients `(shift, scale, offset)` for normalising with running statistics:
/// `scale = γ / sqrt(var + eps)` (the reciprocal square root in the compute type, as PyTorch).
/// Where the scale is not finite (var + eps = 0), PyTorch's folded form `x·α + (β − μ·α)` is
/// reproduced exactly (shift 0, offset `β − μ·α`), so NaN and ∞ come out where PyTorch's do.
pub(crate) type EvalCoefficients<C> = (Vec<Centre<C>>, Vec<C>, Vec<C>);

pub(crate) fn eval_coefficients<T: Element>(
    mean: &[T::Compute],
    var: &[T::Compute],
    gamma: &[T::Compute],
    beta: &[T::Compute],
    eps: f64,
) -> EvalCoefficients<T::Compute> {
    let mut shift: Vec<Centre<T::Compute>> = mean
        .iter()
        .map(|&m| Centre {
            hi: m,
            lo: T::Compute::ZERO,
        })
        .collect();
    let mut offset = beta.to_vec();
    let scale: Vec<T::Compute> = var
        .iter()
        .zip(gamma)
        .map(|(&v, &w)| T::Compute::ONE / (v + T::Compute::from_f64(eps)).sqrt() * w)
        .collect();
    for c in 0..scale.len() {
        if !scale[c].is_finite() {
            offset[c] = beta[c] - mean[c] * scale[c];
            shift[c] = Centre::default();
        }
    }
    (shift, scale, offset)
}
