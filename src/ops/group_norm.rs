//! `group_norm`: statistics per `(n, group)` over `(C/G)·S` elements (`F.group_norm`).

use super::{
    OutMeta, SavedStats, channel_geom, check_min_rank, check_output_meta, check_param_dtypes,
    param_values, run_dense, with_element,
};
use crate::backend::cpu::{self, moments};
use crate::error::{Error, Result, fmt_shape};
use crate::tensor::{ElementData, Tensor, TensorMut};

const OP: &str = "group_norm";

/// Arguments of [`group_norm`]; [`GroupNormArgs::new`] gives PyTorch's defaults.
#[derive(Debug)]
pub struct GroupNormArgs<'a> {
    /// Number of groups G; must divide the channel count. Group g holds channels
    /// `g·C/G .. (g+1)·C/G`.
    pub num_groups: usize,
    /// Per-channel scale (`C` elements, 1-D), or none.
    pub weight: Option<Tensor<'a>>,
    /// Per-channel shift (`C` elements, 1-D), or none.
    pub bias: Option<Tensor<'a>>,
    /// Not validated (PyTorch does not validate it).
    pub eps: f64,
}

impl GroupNormArgs<'_> {
    /// `num_groups` groups, no affine parameters, eps 1e-5.
    pub fn new(num_groups: usize) -> Self {
        GroupNormArgs {
            num_groups,
            weight: None,
            bias: None,
            eps: 1e-5,
        }
    }
}

/// Group normalisation of `x` (shape `(N, C, *S)`) into `y`; returns the mean and inverse std
/// per `(n, g)` (`N·G` each). One stable algorithm for every layout (PyTorch's channels-last
/// CPU kernel uses `E[x²] − E[x]²`; normkit deliberately does not).
pub fn group_norm(x: &Tensor, y: &mut TensorMut, args: GroupNormArgs) -> Result<SavedStats> {
    if !validate(x, (y.shape(), y.dtype()), &args)? {
        return Ok(SavedStats::empty(x.dtype()));
    }
    with_element!(x.dtype(), T => run_typed::<T>(x, y, &args))
}

/// Every check of [`group_norm`], from shapes and dtypes only (the CUDA op shares it);
/// returns false for an empty input (nothing to compute).
pub(crate) fn validate(x: &Tensor, y: OutMeta, args: &GroupNormArgs) -> Result<bool> {
    check_min_rank(OP, x, 2, "(N, C, *)")?;
    check_output_meta(OP, x, y)?;
    let g = channel_geom(x.shape());
    let groups = args.num_groups;
    if groups == 0 {
        return Err(Error::invalid(OP, "num_groups", "num_groups > 0", "0"));
    }
    if g.c == 0 {
        return Err(Error::shape(
            OP,
            "input",
            "at least one channel",
            format!("shape {}", fmt_shape(x.shape())),
        ));
    }
    if g.c % groups != 0 {
        return Err(Error::invalid(
            OP,
            "num_groups",
            format!("a divisor of the channel count {}", g.c),
            format!(
                "num_groups = {groups} (input shape {})",
                fmt_shape(x.shape())
            ),
        ));
    }
    if g.n * (g.c / groups) * g.s == 1 {
        return Err(Error::invalid(
            OP,
            "input",
            "more than 1 value per group",
            format!(
                "input of shape {} with num_groups = {groups}",
                fmt_shape(x.shape())
            ),
        ));
    }
    if x.rank() > 2 && g.s == 0 {
        return Err(Error::shape(
            OP,
            "input",
            "spatial size greater than 0",
            format!("shape {}", fmt_shape(x.shape())),
        ));
    }
    for (name, t) in [
        ("weight", args.weight.as_ref()),
        ("bias", args.bias.as_ref()),
    ] {
        if let Some(t) = t {
            if t.shape() != [g.c] {
                return Err(Error::shape(
                    OP,
                    name,
                    format!("a vector of {} elements (one per channel)", g.c),
                    format!("shape {}", fmt_shape(t.shape())),
                ));
            }
        }
    }
    check_param_dtypes(
        OP,
        x.dtype(),
        &[
            ("weight", args.weight.as_ref().map(|t| t.dtype())),
            ("bias", args.bias.as_ref().map(|t| t.dtype())),
        ],
    )?;
    Ok(x.numel() != 0)
}

fn run_typed<T: ElementData>(
    x: &Tensor,
    y: &mut TensorMut,
    args: &GroupNormArgs,
) -> Result<SavedStats> {
    let g = channel_geom(x.shape());
    let groups = args.num_groups;
    let cg = g.c / groups;
    let gamma: Vec<T::Compute> = param_values(args.weight.as_ref(), g.c, 1.0);
    let beta: Vec<T::Compute> = param_values(args.bias.as_ref(), g.c, 0.0);
    let eps = args.eps;
    let finish = |m: f64| moments::finish::<T::Compute>(cg * g.s, m, eps, true, false).1;
    let (mean, rstd) = run_dense::<T, _>(OP, x, y, true, |xs, ys, lay| {
        let p = cpu::GroupAffine {
            groups,
            finish: &finish,
            gamma: &gamma,
            beta: &beta,
        };
        let (mean, _, rstd) = cpu::group_norm_fused(xs, ys, g, lay, &p);
        (mean, rstd)
    })?;
    Ok(SavedStats::from_parts(&mean, rstd))
}
