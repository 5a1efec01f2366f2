//! bf16 apply loops over 32-bit words of two elements ([`Element::bf16_words`]).
//!
//! Widening a vector of bf16 lanes takes a zero-extension and a shift per 16 lanes, and
//! narrowing them back a truncating `vpmovdw` (on Zen 4 its store form is the slowest part of
//! the bf16 apply loops); taken as words, the even element is `w << 16` and the odd one
//! `w & 0xFFFF0000`, and the two rounded results merge into one word with a shift and a
//! mask, stored whole. Per-column coefficients are split into their even and odd columns
//! ([`Split`]) once per call. Every element gets the same operations in the same order as in
//! the element loops it replaces, so the results are bit-identical (tests below and in
//! `super::tests`). Same-run microbenchmark, AMD EPYC (Zen 4) VM, 256-column rows in L2:
//! 0.098 against 0.130 ns per element (1.33x; docs/perf/cpu.md, round 24).
//!
//! The callers take these loops where both slices are whole words (4-byte aligned, even
//! lengths) and rows hold an even number of columns; otherwise the element loops.

use super::scratch::Scratch;
use crate::dtype::Real;
use crate::dtype::convert::{bf16_pair as pack, bf16_pair_even as even, bf16_pair_odd as odd};

/// Per-column coefficients split into their even and odd columns, as f32 (the compute type of
/// bf16: the conversion is exact).
pub(crate) struct Split {
    pub even: Scratch<f32>,
    pub odd: Scratch<f32>,
}

impl Split {
    /// `c`'s even and odd columns (`c.len()` even: the callers check).
    pub fn of<C: Real>(c: &[C]) -> Split {
        let mut even = Scratch::any(0.0, c.len() / 2);
        let mut odd = Scratch::any(0.0, c.len() / 2);
        for ((e, o), p) in even.iter_mut().zip(odd.iter_mut()).zip(c.chunks_exact(2)) {
            (*e, *o) = (p[0].to_f64() as f32, p[1].to_f64() as f32);
        }
        Split { even, odd }
    }

    fn parts(&self) -> (&[f32], &[f32]) {
        (&self.even, &self.odd)
    }
}

/// The value of a compute-type scalar as f32 (exact for bf16's compute type).
#[inline(always)]
pub(crate) fn f32_of<C: Real>(v: C) -> f32 {
    v.to_f64() as f32
}

/// `y = (x − hi)·scale + offset` over a run of words ([`super::affine_run`]).
#[inline(always)]
pub(crate) fn affine_run(x: &[u32], y: &mut [u32], (hi, scale, offset): (f32, f32, f32)) {
    for (o, &w) in y.iter_mut().zip(x) {
        *o = pack(
            (even(w) - hi) * scale + offset,
            (odd(w) - hi) * scale + offset,
        );
    }
}

/// The backward's `dx = g·p + (x − hi)·q + o` over a run of words
/// (`super::backward::grad_apply_run`).
#[inline(always)]
pub(crate) fn grad_apply_run(
    (x, g): (&[u32], &[u32]),
    dx: &mut [u32],
    (hi, p, q, o): (f32, f32, f32, f32),
) {
    let f = |g: f32, x: f32| g * p + (x - hi) * q + o;
    for (d, (&xw, &gw)) in dx.iter_mut().zip(x.iter().zip(g)) {
        *d = pack(f(even(gw), even(xw)), f(odd(gw), odd(xw)));
    }
}

/// Channels-last coefficients for [`affine_rows`]: `hi` `None` for the folded form.
pub(crate) struct RowCoefficients {
    pub hi: Option<Split>,
    pub scale: Split,
    pub offset: Split,
}

/// `y[r, c] = (x[r, c] − hi_c)·scale_c + offset_c` (or `x·scale_c + offset_c` folded) over
/// rows of `2·k.scale.even.len()` columns, `k.scale.even.len()` words ([`super::affine_rows`]).
#[inline(always)]
pub(crate) fn affine_rows(x: &[u32], y: &mut [u32], k: &RowCoefficients) {
    let ((se, so), (oe, oo)) = (k.scale.parts(), k.offset.parts());
    let words = se.len();
    if words == 0 {
        return;
    }
    let Some(hi) = &k.hi else {
        for (yr, xr) in y.chunks_exact_mut(words).zip(x.chunks_exact(words)) {
            let coef = se.iter().zip(so).zip(oe.iter().zip(oo));
            for ((o, &w), ((&se, &so), (&oe, &oo))) in yr.iter_mut().zip(xr).zip(coef) {
                *o = pack(even(w) * se + oe, odd(w) * so + oo);
            }
        }
        return;
    };
    let (he, ho) = hi.parts();
    let done = match words {
        32 => affine_rows_of::<32>(x, y, [he, ho, se, so, oe, oo]),
        64 => affine_rows_of::<64>(x, y, [he, ho, se, so, oe, oo]),
        _ => false,
    };
    if done {
        return;
    }
    for (yr, xr) in y.chunks_exact_mut(words).zip(x.chunks_exact(words)) {
        let coef = (he.iter().zip(ho)).zip(se.iter().zip(so).zip(oe.iter().zip(oo)));
        for ((o, &w), ((&he, &ho), ((&se, &so), (&oe, &oo)))) in yr.iter_mut().zip(xr).zip(coef) {
            *o = pack((even(w) - he) * se + oe, (odd(w) - ho) * so + oo);
        }
    }
}

/// [`affine_rows`] (centred) for rows of exactly `W` words: the six coefficient vectors as
/// arrays the compiler keeps in registers across the rows (as `super::affine_rows_of`);
/// `false` when they are not `W` long.
#[inline(always)]
fn affine_rows_of<const W: usize>(x: &[u32], y: &mut [u32], k: [&[f32]; 6]) -> bool {
    let arr = |s: &[f32]| <[f32; W]>::try_from(s).ok();
    let (Some(he), Some(ho), Some(se), Some(so), Some(oe), Some(oo)) = (
        arr(k[0]),
        arr(k[1]),
        arr(k[2]),
        arr(k[3]),
        arr(k[4]),
        arr(k[5]),
    ) else {
        return false;
    };
    for (yr, xr) in y.chunks_exact_mut(W).zip(x.chunks_exact(W)) {
        for i in 0..W {
            let w = xr[i];
            yr[i] = pack(
                (even(w) - he[i]) * se[i] + oe[i],
                (odd(w) - ho[i]) * so[i] + oo[i],
            );
        }
    }
    true
}

/// LayerNorm's weight and bias split for [`layer_norm_row`].
pub(crate) struct RowAffine {
    pub weight: Option<Split>,
    pub bias: Option<Split>,
}

/// One LayerNorm row of words: `y = ((x − hi) − lo)·rs·γ + β` ([`super::layer_norm_row`]).
#[inline(always)]
pub(crate) fn layer_norm_row(
    x: &[u32],
    y: &mut [u32],
    (hi, lo, rs): (f32, f32, f32),
    k: &RowAffine,
) {
    let d = |v: f32| ((v - hi) - lo) * rs;
    match (
        k.weight.as_ref().map(Split::parts),
        k.bias.as_ref().map(Split::parts),
    ) {
        (Some((we, wo)), Some((be, bo))) => {
            let coef = we.iter().zip(wo).zip(be.iter().zip(bo));
            for ((o, &w), ((&we, &wo), (&be, &bo))) in y.iter_mut().zip(x).zip(coef) {
                *o = pack(d(even(w)) * we + be, d(odd(w)) * wo + bo);
            }
        }
        (Some((we, wo)), None) => {
            for ((o, &w), (&we, &wo)) in y.iter_mut().zip(x).zip(we.iter().zip(wo)) {
                *o = pack(d(even(w)) * we, d(odd(w)) * wo);
            }
        }
        (None, Some((be, bo))) => {
            for ((o, &w), (&be, &bo)) in y.iter_mut().zip(x).zip(be.iter().zip(bo)) {
                *o = pack(d(even(w)) + be, d(odd(w)) + bo);
            }
        }
        (None, None) => {
            for (o, &w) in y.iter_mut().zip(x) {
                *o = pack(d(even(w)), d(odd(w)));
            }
        }
    }
}
