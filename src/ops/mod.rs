//! Stateless functional ops over caller-owned buffers (the `torch.nn.functional` equivalents).
//!
//! Each op validates its arguments, then writes the output in place into the caller's `y`
//! (in `y`'s own strides) and returns the statistics a backward pass needs. Semantics follow
//! PyTorch 2.15 (`shared/spec/pytorch-semantics.md`); the deliberate deviations are listed in
//! the crate docs.
//!
//! | op | statistics |
//! |---|---|
//! | [`batch_norm`] | per channel over `N·S` |
//! | [`instance_norm`] | per `(n, c)` over `S` |
//! | [`group_norm`] | per `(n, g)` over `(C/G)·S` |
//! | [`layer_norm`] | per row over the trailing `normalized_shape` |
//! | [`local_response_norm`] | none (window over channels) |

mod backward;
pub(crate) mod batch_norm;
pub(crate) mod group_norm;
pub(crate) mod instance_norm;
pub(crate) mod layer_norm;
pub(crate) mod local_response_norm;

pub use backward::{
    ForwardStats, Gradients, GroupNormBackwardArgs, LayerNormBackwardArgs, NormBackwardArgs,
    batch_norm_backward, group_norm_backward, instance_norm_backward, layer_norm_backward,
    local_response_norm_backward, sync_batch_norm_backward,
};
pub(crate) use backward::{
    GradSpec, validate_batch_norm as validate_batch_norm_backward,
    validate_group_norm as validate_group_norm_backward,
    validate_instance_norm as validate_instance_norm_backward,
    validate_layer_norm as validate_layer_norm_backward,
    validate_local_response_norm as validate_local_response_norm_backward,
};
pub(crate) use batch_norm::update_running;
pub use batch_norm::{BatchNormArgs, batch_norm, sync_batch_norm};
pub use group_norm::{GroupNormArgs, group_norm};
pub use instance_norm::{InstanceNormArgs, instance_norm};
pub use layer_norm::{LayerNormArgs, layer_norm};
pub use local_response_norm::{LrnArgs, local_response_norm};

use crate::backend::cpu::moments::Centre;
use crate::backend::cpu::{ChannelLayout, Geom};
use crate::dtype::{DType, Real};
use crate::error::{Error, ErrorKind, Result, fmt_shape};
use crate::tensor::{Buffer, ElementData, Layout, Tensor, TensorMut, for_each_offset};

/// Statistics saved by a forward pass for the backward pass: the mean and the inverse
/// standard deviation `1/sqrt(var + eps)` of every normalised group, in the statistics dtype
/// (f64 for f64 input, f32 otherwise). Empty when the op normalised with running statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedStats {
    pub mean: Buffer,
    pub invstd: Buffer,
}

impl SavedStats {
    /// Saved statistics from f64 means (rounded to the compute type, as PyTorch's
    /// `float(Σx / M)`) and inverse standard deviations.
    pub(crate) fn from_parts<C: Real>(mean: &[f64], invstd: Vec<C>) -> SavedStats {
        SavedStats::from_compute(mean.iter().map(|&m| C::from_f64(m)).collect(), invstd)
    }

    /// Saved statistics already in the compute type.
    pub(crate) fn from_compute<C: Real>(mean: Vec<C>, invstd: Vec<C>) -> SavedStats {
        SavedStats {
            mean: C::into_buffer(mean),
            invstd: C::into_buffer(invstd),
        }
    }

    pub(crate) fn empty(x: DType) -> SavedStats {
        SavedStats {
            mean: Buffer::filled(x.stat_dtype(), 0, 0.0),
            invstd: Buffer::filled(x.stat_dtype(), 0, 0.0),
        }
    }
}

/// Runs `$body` with `$T` bound to the element type of `$dtype`.
macro_rules! with_element {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::dtype::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::dtype::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::dtype::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::dtype::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
        }
    };
}
pub(crate) use with_element;

/// `(N, C, S)` of an input whose dim 0 is the batch and dim 1 the channels.
pub(crate) fn channel_geom(shape: &[usize]) -> Geom {
    Geom {
        n: shape[0],
        c: shape[1],
        s: shape[2..].iter().product(),
    }
}

/// f64 means as hi/lo centres in the compute type.
pub(crate) fn centres<C: Real>(mean: &[f64]) -> Vec<Centre<C>> {
    mean.iter().map(|&m| Centre::of(m)).collect()
}

/// The shape and dtype of an output: what the validation of an op needs from it (the CUDA ops
/// validate device tensors through the same functions as the CPU ops).
pub(crate) type OutMeta<'a> = (&'a [usize], DType);

/// Checks that the output `y` has `x`'s shape and dtype.
pub(crate) fn check_output_meta(op: &str, x: &Tensor, y: OutMeta) -> Result<()> {
    let (y_shape, y_dtype) = y;
    if y_shape != x.shape() {
        return Err(Error::shape(
            op,
            "output",
            format!("shape {} (the input's)", fmt_shape(x.shape())),
            format!("shape {}", fmt_shape(y_shape)),
        ));
    }
    if y_dtype != x.dtype() {
        return Err(Error::dtype(
            op,
            "output",
            format!("dtype {} (the input's)", x.dtype()),
            y_dtype.to_string(),
        ));
    }
    Ok(())
}

/// Checks PyTorch's mixed-precision rule: every parameter has the input's dtype, or the input
/// is f16/bf16 and every parameter is f32. Returns the parameters' dtype (the input's when none
/// is given).
pub(crate) fn check_param_dtypes(
    op: &str,
    x: DType,
    params: &[(&str, Option<DType>)],
) -> Result<DType> {
    let given: Vec<(&str, DType)> = params
        .iter()
        .filter_map(|(n, d)| d.map(|d| (*n, d)))
        .collect();
    let Some(&(_, first)) = given.first() else {
        return Ok(x);
    };
    let allowed = first == x || (x.is_low_precision() && first == DType::F32);
    for &(name, d) in &given {
        if !allowed || d != first {
            let expected = if x.is_low_precision() {
                format!("every parameter in {x} or every parameter in f32 (input is {x})")
            } else {
                format!("dtype {x} (the input's)")
            };
            let got = given
                .iter()
                .map(|(n, d)| format!("{n} {d}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::dtype(op, name, expected, got));
        }
    }
    Ok(first)
}

/// Checks that an optional per-channel tensor has `len` elements.
pub(crate) fn check_numel(
    op: &str,
    operand: &str,
    t: Option<usize>,
    len: usize,
    what: &str,
) -> Result<()> {
    match t {
        Some(n) if n != len => Err(Error::shape(
            op,
            operand,
            format!("{len} elements ({what})"),
            format!("{n} elements"),
        )),
        _ => Ok(()),
    }
}

/// The values of an optional parameter tensor in the compute type, or `default` repeated.
pub(crate) fn param_values<C: Real>(t: Option<&Tensor>, len: usize, default: f64) -> Vec<C> {
    match t {
        Some(t) => t.to_f64_vec().into_iter().map(C::from_f64).collect(),
        None => vec![C::from_f64(default); len],
    }
}

/// Reads a writable per-channel tensor in the compute type.
pub(crate) fn mut_values<C: Real>(t: &TensorMut) -> Vec<C> {
    t.to_f64_vec().into_iter().map(C::from_f64).collect()
}

/// Exponential moving average `(1 − f)·old + f·new`, in the parameters' precision
/// (f64 for f64 parameters, f32 otherwise), as PyTorch's CPU kernel computes it.
pub(crate) fn ema(param: DType, old: f64, new: f64, f: f64) -> f64 {
    if param == DType::F64 {
        f * new + (1.0 - f) * old
    } else {
        let (old, new, f) = (old as f32, new as f32, f as f32);
        (f * new + (1.0 - f) * old) as f64
    }
}

pub(crate) fn dense_layout(layout: Layout, channel_op: bool, s: usize) -> Option<ChannelLayout> {
    match layout {
        // (N, C, 1...) is both layouts at once; rows of C are the faster walk.
        Layout::Contiguous if channel_op && s == 1 => Some(ChannelLayout::Last),
        Layout::Contiguous => Some(ChannelLayout::First),
        Layout::ChannelsLast if channel_op => Some(ChannelLayout::Last),
        _ => None,
    }
}

/// Runs a dense kernel `f(x, y, layout)` on `x` and `y` (see [`run_staged`]).
pub(crate) fn run_dense<T: ElementData, R: Send>(
    op: &str,
    x: &Tensor,
    y: &mut TensorMut,
    channel_op: bool,
    f: impl FnOnce(&[T], &mut [T], ChannelLayout) -> R + Send,
) -> Result<R> {
    run_staged::<T, R, 1>(op, [x], Some(y), channel_op, |[xs], ys, lay| match ys {
        Some(ys) => f(xs, ys, lay),
        // run_staged passes the output it was given
        None => f(xs, &mut [], lay),
    })
}

/// Runs a dense kernel `f(inputs, output, layout)` on `K` inputs of one shape and an optional
/// output, on the CPU thread pool.
///
/// When every tensor is dense in the same layout (contiguous, or channels-last for channel ops)
/// the kernel runs on them directly. Otherwise the inputs are gathered into contiguous copies,
/// the kernel writes a contiguous temporary, and that is scattered into the output's strides.
pub(crate) fn run_staged<T: ElementData, R: Send, const K: usize>(
    op: &str,
    inputs: [&Tensor; K],
    out: Option<&mut TensorMut>,
    channel_op: bool,
    f: impl FnOnce([&[T]; K], Option<&mut [T]>, ChannelLayout) -> R + Send,
) -> Result<R> {
    let x = inputs[0];
    let numel = x.numel();
    let s = if channel_op && x.rank() >= 2 {
        x.shape()[2..].iter().product()
    } else {
        0
    };
    let internal = || {
        Error::new(
            ErrorKind::Backend,
            op,
            "input",
            "typed data",
            "a dtype mismatch (internal error)",
        )
    };
    let mut data: [&[T]; K] = [&[]; K];
    for (d, t) in data.iter_mut().zip(inputs) {
        *d = t.typed::<T>().ok_or_else(internal)?;
    }
    let install = |ins: [&[T]; K], o: Option<&mut [T]>, lay| {
        crate::backend::cpu::threads::install_sized(numel, || f(ins, o, lay))
    };
    let lay = dense_layout(x.layout(), channel_op, s);
    let same = inputs
        .iter()
        .all(|t| dense_layout(t.layout(), channel_op, s) == lay)
        && out
            .as_ref()
            .is_none_or(|o| dense_layout(o.layout(), channel_op, s) == lay);
    if let (Some(lay), true) = (lay, same) {
        let ins = data.map(|d| &d[..numel]);
        return match out {
            Some(o) => {
                let os = o.typed_mut::<T>().ok_or_else(internal)?;
                Ok(install(ins, Some(&mut os[..numel]), lay))
            }
            None => Ok(install(ins, None, lay)),
        };
    }
    let staged: Vec<Vec<T>> = inputs
        .iter()
        .zip(data)
        .map(|(t, d)| {
            let mut v = Vec::with_capacity(numel);
            for_each_offset(t.shape(), t.strides(), |o| v.push(d[o]));
            v
        })
        .collect();
    let mut ins: [&[T]; K] = [&[]; K];
    for (i, v) in ins.iter_mut().zip(&staged) {
        *i = v;
    }
    let first = if channel_op && s == 1 {
        ChannelLayout::Last
    } else {
        ChannelLayout::First
    };
    let Some(o) = out else {
        return Ok(install(ins, None, first));
    };
    let mut tmp = vec![T::default(); numel];
    let r = install(ins, Some(&mut tmp), first);
    let (shape, strides) = (o.shape().to_vec(), o.strides().to_vec());
    let os = o.typed_mut::<T>().ok_or_else(internal)?;
    let mut i = 0;
    for_each_offset(&shape, &strides, |off| {
        os[off] = tmp[i];
        i += 1;
    });
    Ok(r)
}

/// Rejects inputs whose rank is below `min`.
pub(crate) fn check_min_rank(op: &str, x: &Tensor, min: usize, what: &str) -> Result<()> {
    if x.rank() < min {
        return Err(Error::shape(
            op,
            "input",
            format!("at least {min} dims ({what})"),
            format!("{} dims (shape {})", x.rank(), fmt_shape(x.shape())),
        ));
    }
    Ok(())
}
