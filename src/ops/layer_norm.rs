//! `layer_norm`: statistics per row over the trailing `normalized_shape` dims (`F.layer_norm`).

use super::{
    OutMeta, SavedStats, check_output_meta, check_param_dtypes, param_values, run_dense,
    with_element,
};
use crate::backend::cpu::{self, moments};
use crate::error::{Error, Result, fmt_shape};
use crate::tensor::{ElementData, Tensor, TensorMut};

const OP: &str = "layer_norm";

/// Arguments of [`layer_norm`]; [`LayerNormArgs::new`] gives PyTorch's defaults.
#[derive(Debug)]
pub struct LayerNormArgs<'a> {
    /// The trailing dims normalised over (at least one dim).
    pub normalized_shape: Vec<usize>,
    /// Elementwise scale of shape `normalized_shape`, or none.
    pub weight: Option<Tensor<'a>>,
    /// Elementwise shift of shape `normalized_shape`, or none (independent of `weight`).
    pub bias: Option<Tensor<'a>>,
    /// Not validated (PyTorch does not validate it).
    pub eps: f64,
}

impl LayerNormArgs<'_> {
    /// Normalise over `normalized_shape`, no affine parameters, eps 1e-5.
    pub fn new(normalized_shape: &[usize]) -> Self {
        LayerNormArgs {
            normalized_shape: normalized_shape.to_vec(),
            weight: None,
            bias: None,
            eps: 1e-5,
        }
    }
}

/// Layer normalisation of `x` (shape `[*, *normalized_shape]`) into `y`; returns the mean and
/// inverse std of every row (`prod(leading dims)` each).
///
/// ```
/// use normkit::{Tensor, TensorMut, ops::{layer_norm, LayerNormArgs}};
/// let x = vec![1.0f64, 2.0, 4.0, 8.0];
/// let mut y = vec![0.0f64; 4];
/// layer_norm(&Tensor::new(&x, &[1, 4])?, &mut TensorMut::new(&mut y, &[1, 4])?, LayerNormArgs::new(&[4]))?;
/// assert!((y[0] + 1.0257545754961932).abs() < 1e-12);
/// # Ok::<(), normkit::Error>(())
/// ```
pub fn layer_norm(x: &Tensor, y: &mut TensorMut, args: LayerNormArgs) -> Result<SavedStats> {
    let Some((rows, cols)) = validate(x, (y.shape(), y.dtype()), &args)? else {
        return Ok(SavedStats::empty(x.dtype()));
    };
    with_element!(x.dtype(), T => run_typed::<T>(x, y, &args, rows, cols))
}

/// Every check of [`layer_norm`], from shapes and dtypes only (the CUDA op shares it);
/// returns `(rows, cols)`, or `None` for an empty input.
pub(crate) fn validate(
    x: &Tensor,
    y: OutMeta,
    args: &LayerNormArgs,
) -> Result<Option<(usize, usize)>> {
    check_output_meta(OP, x, y)?;
    let ns = &args.normalized_shape;
    if ns.is_empty() {
        return Err(Error::shape(
            OP,
            "normalized_shape",
            "at least one dim",
            "[]",
        ));
    }
    for (name, t) in [
        ("weight", args.weight.as_ref()),
        ("bias", args.bias.as_ref()),
    ] {
        if let Some(t) = t {
            if t.shape() != ns.as_slice() {
                return Err(Error::shape(
                    OP,
                    name,
                    format!("shape {} (normalized_shape)", fmt_shape(ns)),
                    format!("shape {}", fmt_shape(t.shape())),
                ));
            }
        }
    }
    let shape = x.shape();
    if shape.len() < ns.len() || &shape[shape.len() - ns.len()..] != ns.as_slice() {
        return Err(Error::shape(
            OP,
            "input",
            format!(
                "shape [*, {}] (ending in normalized_shape)",
                &fmt_shape(ns)[1..fmt_shape(ns).len() - 1]
            ),
            format!("shape {}", fmt_shape(shape)),
        ));
    }
    check_param_dtypes(
        OP,
        x.dtype(),
        &[
            ("weight", args.weight.as_ref().map(|t| t.dtype())),
            ("bias", args.bias.as_ref().map(|t| t.dtype())),
        ],
    )?;
    let cols: usize = ns.iter().product();
    let rows: usize = shape[..shape.len() - ns.len()].iter().product();
    Ok((rows * cols != 0).then_some((rows, cols)))
}

fn run_typed<T: ElementData>(
    x: &Tensor,
    y: &mut TensorMut,
    args: &LayerNormArgs,
    rows: usize,
    cols: usize,
) -> Result<SavedStats> {
    let weight: Option<Vec<T::Compute>> = args
        .weight
        .as_ref()
        .map(|w| param_values(Some(w), cols, 1.0));
    let bias: Option<Vec<T::Compute>> =
        args.bias.as_ref().map(|b| param_values(Some(b), cols, 0.0));
    let eps = args.eps;
    let (mean, rstd) = run_dense::<T, _>(OP, x, y, false, |xs, ys, _| {
        cpu::layer_norm_fused(
            xs,
            ys,
            rows,
            cols,
            |m2| moments::finish::<T::Compute>(cols, m2, eps, false, false).1,
            weight.as_deref(),
            bias.as_deref(),
        )
    })?;
    Ok(SavedStats::from_compute(mean, rstd))
}
