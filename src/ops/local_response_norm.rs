//! `local_response_norm`: normalisation over a window of neighbouring channels
//! (`F.local_response_norm`).

use super::{OutMeta, channel_geom, check_min_rank, check_output_meta, run_dense, with_element};
use crate::backend::cpu::{self, LrnParams};
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorMut};

const OP: &str = "local_response_norm";

/// Arguments of [`local_response_norm`]; [`LrnArgs::new`] gives PyTorch's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrnArgs {
    /// Window size in channels (> 0). Even sizes reach one channel further back than forward.
    pub size: usize,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
}

impl LrnArgs {
    /// `size` channels, alpha 1e-4, beta 0.75, k 1.
    pub fn new(size: usize) -> Self {
        LrnArgs {
            size,
            alpha: 1e-4,
            beta: 0.75,
            k: 1.0,
        }
    }
}

/// `y_c = x_c / (k + alpha/size · Σ_{j∈W(c)} x_j²)^beta` with
/// `W(c) = [c − ⌊size/2⌋, c + ⌊(size−1)/2⌋]`; channels outside `[0, C)` count as zero and the
/// divisor is always `size`. `x` has rank ≥ 3. Every dtype works at every rank (PyTorch's CPU
/// lacks f16/bf16 for rank ≥ 4), and f16/bf16 square in f32 (PyTorch overflows `x·x` in f16).
pub fn local_response_norm(x: &Tensor, y: &mut TensorMut, args: LrnArgs) -> Result<()> {
    if !validate(x, (y.shape(), y.dtype()), &args)? {
        return Ok(());
    }
    let g = channel_geom(x.shape());
    let p = LrnParams {
        size: args.size,
        alpha: args.alpha,
        beta: args.beta,
        k: args.k,
    };
    with_element!(x.dtype(), T => run_dense::<T, _>(OP, x, y, true, |xs, ys, lay| cpu::lrn(xs, ys, g, lay, p)))
}

/// Every check of [`local_response_norm`], from shapes and dtypes only (the CUDA op shares
/// it); returns false for an empty input (nothing to compute).
pub(crate) fn validate(x: &Tensor, y: OutMeta, args: &LrnArgs) -> Result<bool> {
    check_min_rank(OP, x, 3, "(N, C, *) with at least one spatial dim")?;
    check_output_meta(OP, x, y)?;
    if args.size == 0 {
        return Err(Error::invalid(OP, "size", "size > 0", "0"));
    }
    Ok(x.numel() != 0)
}
