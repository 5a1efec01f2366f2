//! bf16 apply loops over 32-bit words of two elements ([`Element::bf16_words`]).
//!
//! Widening a vector of bf16 lanes takes a zero-extension and a shift per 16 lanes, and
//! narrowing them back a truncating `vpmovdw` (on Zen 4 its store form is the slowest part of
//! the bf16 apply loops); taken as words, the even element is `w << 16` and the odd one
//! `w & 0xFFFF0000`, and the two rounded results merge into one word with a shift and a
//! mask, stored whole. Per-column coefficients are split into their even and odd columns
//! ([`Split`]) once per op call ([`RowSplit`], `super::row_split`), never per run of rows
//! (BatchNorm1d's runs are single rows: splitting per run made it 2–4x slower). The
//! channels-last rows have no form with their coefficients held in registers (as
//! `super::affine_rows_of` for the element loops): for 64 columns that form, over words,
//! was 0.27–0.37x of the element loops (BatchNorm2d NHWC bf16), the loop over coefficient
//! streams 1.01–1.11x. Every element gets the same operations in the same order as in
//! the element loops it replaces, so the results are bit-identical (tests below and in
//! `super::tests`). Same-run microbenchmark, AMD EPYC (Zen 4) VM, 256-column rows in L2:
//! 0.098 against 0.130 ns per element (1.33x; docs/perf/cpu.md, round 24).
//!
//! The callers take these loops where both slices are whole words (4-byte aligned, even
//! lengths) and rows hold an even number of columns; otherwise the element loops.

use super::scratch::Scratch;
use crate::dtype::convert::{bf16_pair as pack, bf16_pair_even as even, bf16_pair_odd as odd};
use crate::dtype::{DType, Element, Real};

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

/// Whether rows of `cols` elements of `T` take the word loops with split coefficients: bf16
/// and an even width (so every row of an aligned tensor starts on a word).
pub(crate) fn splits<T: Element>(cols: usize) -> bool {
    T::DTYPE == DType::BF16 && cols % 2 == 0
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

/// Channels-last coefficients `(hi, scale, offset)` of `super::affine_rows` split once per
/// call of the op (not per run of rows: BatchNorm1d's runs are single rows), for one or more
/// sets of `cols` channels; [`RowSplit::view`] takes one set. `hi` is `None` for the folded
/// form.
pub(crate) struct RowSplit {
    hi: Option<Split>,
    scale: Split,
    offset: Split,
}

/// Even and odd columns.
type Halves<'a> = (&'a [f32], &'a [f32]);

/// The coefficients of one run of rows ([`RowSplit::view`]).
#[derive(Clone, Copy)]
pub(crate) struct RowSplitRef<'a> {
    hi: Option<Halves<'a>>,
    scale: Halves<'a>,
    offset: Halves<'a>,
}

impl RowSplit {
    /// The split of `(hi, scale, offset)` (`hi` empty: folded), for bf16 input `T` and an even
    /// number of columns `cols` only (`None` otherwise: the element loops run).
    pub fn of<T: Element>(
        cols: usize,
        (hi, scale, offset): super::FoldedRef<'_, T::Compute>,
    ) -> Option<RowSplit> {
        (splits::<T>(cols) && scale.len() % 2 == 0).then(|| RowSplit {
            hi: (!hi.is_empty()).then(|| Split::of(hi)),
            scale: Split::of(scale),
            offset: Split::of(offset),
        })
    }

    /// The coefficients of channels `cols` (a range of even bounds; `hi` whole when folded).
    pub fn view(&self, cols: std::ops::Range<usize>) -> RowSplitRef<'_> {
        let w = cols.start / 2..cols.end / 2;
        fn part(s: &Split, w: std::ops::Range<usize>) -> Halves<'_> {
            (&s.even[w.clone()], &s.odd[w])
        }
        let part = |s| part(s, w.clone());
        RowSplitRef {
            hi: self.hi.as_ref().map(part),
            scale: part(&self.scale),
            offset: part(&self.offset),
        }
    }
}

/// `y[r, c] = (x[r, c] − hi_c)·scale_c + offset_c` (or `x·scale_c + offset_c` folded) over
/// rows of `2·k.scale.0.len()` columns, `k.scale.0.len()` words (`super::affine_rows`).
#[inline(always)]
pub(crate) fn affine_rows(x: &[u32], y: &mut [u32], k: RowSplitRef<'_>) {
    let ((se, so), (oe, oo)) = (k.scale, k.offset);
    let words = se.len();
    if words == 0 {
        return;
    }
    let Some((he, ho)) = k.hi else {
        for (yr, xr) in y.chunks_exact_mut(words).zip(x.chunks_exact(words)) {
            let coef = se.iter().zip(so).zip(oe.iter().zip(oo));
            for ((o, &w), ((&se, &so), (&oe, &oo))) in yr.iter_mut().zip(xr).zip(coef) {
                *o = pack(even(w) * se + oe, odd(w) * so + oo);
            }
        }
        return;
    };
    for (yr, xr) in y.chunks_exact_mut(words).zip(x.chunks_exact(words)) {
        let coef = (he.iter().zip(ho)).zip(se.iter().zip(so).zip(oe.iter().zip(oo)));
        for ((o, &w), ((&he, &ho), ((&se, &so), (&oe, &oo)))) in yr.iter_mut().zip(xr).zip(coef) {
            *o = pack((even(w) - he) * se + oe, (odd(w) - ho) * so + oo);
        }
    }
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
