//! `instance_norm`: statistics per `(n, c)` over the spatial dims (`F.instance_norm`).

use super::batch_norm::normalize_with_running_stats;
use super::{
    OutMeta, SavedStats, channel_geom, check_min_rank, check_numel, check_output_meta,
    check_param_dtypes, ema, param_values, run_dense, with_element,
};
use crate::backend::cpu::{self, moments};
use crate::dtype::{DType, Real};
use crate::error::{Error, Result, fmt_shape};
use crate::tensor::{ElementData, Tensor, TensorMut};

const OP: &str = "instance_norm";

/// Arguments of [`instance_norm`]; [`Default`] gives PyTorch's defaults (input statistics,
/// momentum 0.1, eps 1e-5, no parameters, no running statistics).
#[derive(Debug)]
pub struct InstanceNormArgs<'a> {
    pub weight: Option<Tensor<'a>>,
    pub bias: Option<Tensor<'a>>,
    /// Running mean (`C` elements), updated with the batch average of the instance means.
    pub running_mean: Option<TensorMut<'a>>,
    /// Running variance (`C` elements), updated with the batch average of the unbiased
    /// instance variances.
    pub running_var: Option<TensorMut<'a>>,
    /// Normalise with each instance's own statistics (true) or the running ones (false).
    pub use_input_stats: bool,
    /// Running-statistic factor (0 means no update; the module passes 0 for momentum None).
    pub momentum: f64,
    /// Not validated (PyTorch does not validate it either).
    pub eps: f64,
}

impl Default for InstanceNormArgs<'_> {
    fn default() -> Self {
        InstanceNormArgs {
            weight: None,
            bias: None,
            running_mean: None,
            running_var: None,
            use_input_stats: true,
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// Instance normalisation of `x` (shape `(N, C, *S)`) into `y`. Returns the saved mean and
/// inverse std per `(n, c)` (`N·C` each) when using input statistics, empty otherwise.
///
/// A constant plane with `eps = 0` normalises to 0 (not NaN), as in PyTorch.
pub fn instance_norm(
    x: &Tensor,
    y: &mut TensorMut,
    mut args: InstanceNormArgs,
) -> Result<SavedStats> {
    let Some(pdt) = validate(x, (y.shape(), y.dtype()), &args)? else {
        return Ok(SavedStats::empty(x.dtype()));
    };
    with_element!(x.dtype(), T => run_typed::<T>(x, y, &mut args, pdt))
}

/// Every check of [`instance_norm`], from shapes and dtypes only (the CUDA op shares it);
/// returns the parameters' dtype, or `None` for an empty input.
pub(crate) fn validate(x: &Tensor, y: OutMeta, args: &InstanceNormArgs) -> Result<Option<DType>> {
    check_min_rank(OP, x, 2, "(N, C, *)")?;
    check_output_meta(OP, x, y)?;
    let g = channel_geom(x.shape());
    if args.use_input_stats && g.s == 1 {
        return Err(Error::invalid(
            OP,
            "input",
            "more than 1 spatial element when using input statistics",
            format!("input of shape {}", fmt_shape(x.shape())),
        ));
    }
    if !args.use_input_stats && (args.running_mean.is_none() || args.running_var.is_none()) {
        return Err(Error::invalid(
            OP,
            "running_mean",
            "running_mean and running_var when use_input_stats is false",
            "none",
        ));
    }
    for (name, n) in [
        (
            "running_mean",
            args.running_mean.as_ref().map(|t| t.numel()),
        ),
        ("running_var", args.running_var.as_ref().map(|t| t.numel())),
        ("weight", args.weight.as_ref().map(|t| t.numel())),
        ("bias", args.bias.as_ref().map(|t| t.numel())),
    ] {
        check_numel(OP, name, n, g.c, "one per channel")?;
    }
    let pdt = check_param_dtypes(
        OP,
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
    Ok((x.numel() != 0).then_some(pdt))
}

fn run_typed<T: ElementData>(
    x: &Tensor,
    y: &mut TensorMut,
    args: &mut InstanceNormArgs,
    pdt: DType,
) -> Result<SavedStats> {
    let g = channel_geom(x.shape());
    let gamma: Vec<T::Compute> = param_values(args.weight.as_ref(), g.c, 1.0);
    let beta: Vec<T::Compute> = param_values(args.bias.as_ref(), g.c, 0.0);
    if !args.use_input_stats {
        normalize_with_running_stats::<T>(
            OP,
            x,
            y,
            args.running_mean.as_ref(),
            args.running_var.as_ref(),
            &gamma,
            &beta,
            args.eps,
        )?;
        return Ok(SavedStats::empty(x.dtype()));
    }
    let eps = args.eps;
    let finish = |m: f64| moments::finish::<T::Compute>(g.s, m, eps, false, true).1;
    let (mean, m2, rstd) = run_dense::<T, _>(OP, x, y, true, |xs, ys, lay| {
        let p = cpu::GroupAffine {
            groups: g.c,
            finish: &finish,
            gamma: &gamma,
            beta: &beta,
        };
        cpu::group_norm_fused(xs, ys, g, lay, &p)
    })?;
    // PyTorch updates N tiled copies of the running statistics and averages them.
    let f = args.momentum;
    if let Some(rm) = args.running_mean.as_mut() {
        for c in 0..g.c {
            let old = rm.get_linear_f64(c);
            let avg = (0..g.n)
                .map(|n| ema(pdt, old, mean[n * g.c + c], f))
                .sum::<f64>()
                / g.n as f64;
            rm.set_linear_f64(c, avg);
        }
    }
    if let Some(rv) = args.running_var.as_mut() {
        for c in 0..g.c {
            let old = rv.get_linear_f64(c);
            let avg = (0..g.n)
                .map(|n| {
                    let m = <T::Compute as Real>::from_f64(m2[n * g.c + c]).to_f64();
                    let unbiased = <T::Compute as Real>::from_f64(m / (g.s as f64 - 1.0)).to_f64();
                    ema(pdt, old, unbiased, f)
                })
                .sum::<f64>()
                / g.n as f64;
            rv.set_linear_f64(c, avg);
        }
    }
    Ok(SavedStats::from_parts(&mean, rstd))
}
