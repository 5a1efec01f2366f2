//! Two-pass moments (a rough mean, then the deviations from it) over contiguous runs
//! ([`moments`], [`moments_by`]).
//!
//! Never `E[x²] − E[x]²`: the second pass sums `(x − h)` and `(x − h)²` with `h` the first
//! pass's mean, so data with a large offset and a small spread keeps its precision, and the
//! corrected two-pass formulas remove the first pass's rounding. Sums run over [`LANES`]
//! independent lanes (a blocked, pairwise-like order that also vectorises); each lane sums
//! [`FLUSH`] terms in the compute type (f32 for f16/bf16/f32) before adding them into the
//! element type's accumulator (`f64` for f32/f64 input, `f32` for f16/bf16).
//!
//! Before round 8 every f32 term was converted to f64 and added into 16 f64 lanes: on AVX-512
//! two dependent chains of additions per sum, 4 cycles per 16 elements (perf annotate of the
//! GroupNorm forward). Same-run A/B of the change, docs/perf/cpu.md "Round 8".

use crate::dtype::{Element, Real};

/// Independent partial sums per run (element `k` of a run goes to lane `k mod LANES`); the
/// order of their final combination is fixed, so results never depend on the thread count or
/// the CPU. 32 lanes: two AVX-512 (four AVX2) registers of f32 per sum, enough independent
/// additions to hide their latency (with 16, one register of f32 lanes made every sum a single
/// chain of dependent additions: 4 cycles per 16 elements).
pub const LANES: usize = 32;

/// Chunks of [`LANES`] elements that the statistics passes sum per lane in the compute type
/// (f32 for f16/bf16/f32) before adding the lane's partial into its accumulator-type lane (f64
/// for f32 input): each compute-type partial holds at most `FLUSH` terms, so its rounding error
/// stays within about `FLUSH·ε` of its terms, while the additions run at the f32 vector rate.
pub const FLUSH: usize = 16;

pub(crate) use super::simd::simd_clones;

/// Elements at the start of a run whose mean centres the run's statistics pass
/// ([`moments_by`]): two chunks of [`LANES`], read again from L1 by that pass.
pub const HEAD: usize = 2 * LANES;

/// Which statistics pass [`moments_by`] asks its caller for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The run's one pass in the common case (it reads the run from memory: fused loops touch
    /// or prefetch other memory during it).
    Single,
    /// A second pass, centred on the first one's mean, for runs whose head was far from their
    /// mean (the run is in cache then).
    Again,
}

/// `(mean, m2)` of a run (or of several runs taken as one, in order) whose first elements are
/// `head` (up to [`HEAD`] of them), from one statistics pass in the common case; the caller
/// runs each pass through `dev` (so fused loops can touch or prefetch memory during it);
/// `count` elements in all.
///
/// 1. `h` = the mean of `head` (its sum taken relative to its first element, so a constant
///    head gives that element exactly), rounded to the compute type; 0 when not finite.
/// 2. `dev(h, Pass::Single)` = (Σ d, Σ d²) with `d = x − h` in the compute type
///    ([`dev_sums`]: compute-type partials of [`FLUSH`] terms per lane, accumulator-type
///    lanes); then the corrected two-pass formulas (Chan, Golub & LeVeque, 1983)
///    `mean = h + Σd/count`, `m2 = Σd² − (Σd)²/count` in f64.
/// 3. The correction `(Σd)²/count` is the part of `Σd²` due to `h` not being the mean. When it
///    is at most `m2` (so `Σd² ≤ 2·m2`), the subtraction loses at most one bit: the result is
///    accepted. Otherwise (a head unlike the rest of the run, e.g. GroupNorm channels with
///    different means) `dev(mean, Pass::Again)` repeats the pass centred on that mean, where
///    the correction is negligible: the two-pass algorithm. Never `E[x²] − E[x]²`, which
///    cancels the whole offset of the data.
///
/// A constant run gives its exact value and `m2 = 0` (every `d` is 0; InstanceNorm's
/// `var == 0 && eps == 0` rule needs it). A non-finite mean (Inf or NaN in the data, or
/// deviations beyond the compute type's range, where f32 sums overflow as PyTorch's do) is
/// returned with `m2 = NaN`. `count == 0` gives `(NaN, 0)`.
#[inline(always)]
pub fn moments_by<T: Element>(
    count: usize,
    head: &[T],
    mut dev: impl FnMut(T::Compute, Pass) -> (T::Acc, T::Acc),
) -> (f64, f64) {
    if count == 0 {
        return (f64::NAN, 0.0);
    }
    let n = count as f64;
    let corrected = |h: T::Compute, (sd, sq): (T::Acc, T::Acc)| {
        let (sd, sq) = (sd.to_f64(), sq.to_f64());
        (h.to_f64() + sd / n, sq - sd * sd / n, sd * sd / n)
    };
    let h = head_mean(head);
    let (mean, m2, offset) = corrected(h, dev(h, Pass::Single));
    if !mean.is_finite() {
        return (mean, f64::NAN);
    }
    let (mean, m2) = if offset <= m2 {
        (mean, m2)
    } else {
        let h = T::Compute::from_f64(mean);
        let (mean, m2, _) = corrected(h, dev(h, Pass::Again));
        (mean, m2)
    };
    // Σd² ≥ (Σd)²/count exactly; rounding may cross it by an ulp when all d are nearly equal
    (mean, if m2 < 0.0 { 0.0 } else { m2 })
}

/// The mean of a run's `head` in the compute type, summed relative to its first element (a
/// constant head gives that element exactly); 0 for an empty head or a non-finite mean.
#[inline]
fn head_mean<T: Element>(head: &[T]) -> T::Compute {
    let head = &head[..head.len().min(HEAD)];
    let Some(first) = head.first() else {
        return T::Compute::ZERO;
    };
    let shift = Some(first.to_compute())
        .filter(|v| v.is_finite())
        .unwrap_or(T::Compute::ZERO);
    let sum = shifted_sum(head, shift).to_f64();
    let h = T::Compute::from_f64(shift.to_f64() + sum / head.len() as f64);
    if h.is_finite() { h } else { T::Compute::ZERO }
}

/// `(mean, m2)` of `xs` ([`moments_by`] with the plain pass).
#[inline]
pub fn moments<T: Element>(xs: &[T]) -> (f64, f64) {
    moments_by(xs.len(), xs, |h, _| dev_sums(xs, h))
}

simd_clones! {
/// Σ (x − shift) over `xs`: [`LANES`] lanes of compute-type partials, each added into its
/// accumulator-type lane every [`FLUSH`] chunks.
pub fn shifted_sum<T: Element>(xs: &[T], shift: T::Compute) -> T::Acc {
    let [s] = lane_sums::<T, 1>(xs, xs, |x, _| [x - shift], |_| {});
    s
}
}

/// `acc[i] += part[i]` over [`LANES`] lanes ([`add_parts`]).
#[inline(always)]
fn flush<T: Element>(acc: &mut [T::Acc; LANES], part: &[T::Compute; LANES]) {
    add_parts::<T>(acc, part);
}

/// Whether `T`'s accumulator type is wider than its compute type (f32 input: f64 sums of f32
/// terms), where compute-type partials flushed into the accumulator save a conversion per
/// element; for bf16/f16 (f32 both) and f64 the two are one type.
#[inline(always)]
pub(crate) fn acc_is_wider<T: Element>() -> bool {
    std::mem::size_of::<T::Acc>() > std::mem::size_of::<T::Compute>()
}

/// `acc[i] += part[i]` (compute type into accumulator type, exact conversion): compute-type
/// partials of a bounded number of terms added into their accumulators (the statistics' and
/// the backward sums' flush).
#[inline(always)]
pub(crate) fn add_parts<T: Element>(acc: &mut [T::Acc], part: &[T::Compute]) {
    for (t, &v) in acc.iter_mut().zip(part) {
        *t += acc_of::<T>(v);
    }
}

/// A mean held as an unevaluated sum `hi + lo` of two compute-type values.
///
/// For f32 input the mean of data near 1e4 rounded to f32 is off by up to half an ulp
/// (4.9e-4), which is 5 % of a standard deviation of 1e-2. Centring as `(x − hi) − lo`
/// keeps the f64 mean's precision at the cost of one subtraction: `x − hi` is exact when `x`
/// is near the mean (Sterbenz), and `lo` is tiny.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Centre<C> {
    pub hi: C,
    pub lo: C,
}

impl<C: Real> Centre<C> {
    /// Splits an f64 mean into `hi = round(m)` and `lo = round(m − hi)`.
    #[inline]
    pub fn of(m: f64) -> Self {
        let hi = C::from_f64(m);
        // A non-finite mean has no low part (∞ − ∞ would turn it into NaN).
        let lo = if hi.is_finite() {
            C::from_f64(m - hi.to_f64())
        } else {
            C::ZERO
        };
        Centre { hi, lo }
    }
    /// `x − mean`.
    #[inline(always)]
    pub fn centre(self, x: C) -> C {
        (x - self.hi) - self.lo
    }
    /// The affine `(x − mean)·scale + offset` as `(x − hi)·scale + offset'` with
    /// `offset' = offset − lo·scale`: returns `(hi, offset')`. One subtraction and one
    /// coefficient stream fewer per element than [`Centre::centre`]. `x − hi` is still exact
    /// near the mean; `lo·scale` is at most half an ulp of `hi` times the scale, i.e. of the
    /// size of the outputs, so folding it costs one rounding of an output-sized value (not a
    /// cancellation). With no low part (running statistics, non-finite means) `offset` is
    /// returned untouched, so a non-finite scale is not turned into NaN through `0·∞`.
    #[inline]
    pub fn fold(self, scale: C, offset: C) -> (C, C) {
        if self.lo == C::ZERO {
            (self.hi, offset)
        } else {
            (self.hi, offset - self.lo * scale)
        }
    }
}

simd_clones! {
/// `(Σ d, Σ d²)` over `xs` with `d = x − h`: the difference and its square in the compute
/// type, each sum as in [`shifted_sum`] (compute-type partials of [`FLUSH`] terms per lane).
pub fn dev_sums<T: Element>(xs: &[T], h: T::Compute) -> (T::Acc, T::Acc) {
    lane_dev_sums(xs, h, |_| {})
}
}

simd_clones! {
/// [`dev_sums`] of `xs` (the same result, bit for bit) that also prefetches the lines of
/// `next` and of `dest` ([`super::prefetch`]), one line of each per line of `xs`: `next` is
/// the input the caller reads after these elements (the next run or plane, or the input a
/// fixed distance ahead: `prefetch::input_ahead`; the hardware prefetcher starts each new
/// stream cold), `dest` the output this run is written to right after (so the stores find
/// their lines in cache instead of waiting for their read-for-ownership). Spread over the
/// pass, the prefetches never fill the line-fill buffers at once.
pub fn dev_sums_prefetching<T: Element>(
    xs: &[T],
    h: T::Compute,
    next: &[T],
    dest: &[T],
) -> (T::Acc, T::Acc) {
    lane_dev_sums(xs, h, |k| prefetch_chunk(k, [next, dest]))
}
}

/// Prefetches, for chunk `k` of [`LANES`] elements of a pass, the lines of each slice of
/// `ahead` at the same element positions ([`super::prefetch`]): one line of each per line the
/// pass reads.
#[inline(always)]
pub(crate) fn prefetch_chunk<T, const N: usize>(k: usize, ahead: [&[T]; N]) {
    let step = super::prefetch::line_elems::<T>();
    for j in (0..LANES).step_by(step.min(LANES)) {
        if (k * LANES + j) % step == 0 {
            for s in ahead {
                super::prefetch::line(s, k * LANES + j);
            }
        }
    }
}

/// The body of [`dev_sums`] (and [`dev_sums_prefetching`]): `after_chunk(k)` after chunk `k`
/// of [`LANES`] elements.
#[inline(always)]
fn lane_dev_sums<T: Element>(
    xs: &[T],
    h: T::Compute,
    after_chunk: impl FnMut(usize),
) -> (T::Acc, T::Acc) {
    // `xs` twice: the second read of the same element is the same load, folded by the compiler
    pair_sums(
        xs,
        xs,
        |x, _| {
            let d = x - h;
            (d, d * d)
        },
        after_chunk,
    )
}

/// `(Σ u, Σ v)` with `(u, v) = term(x, y)` over the pairs of `xs` and `ys` (the shorter's
/// length): [`LANES`] lanes of compute-type partials, each added into its accumulator-type lane
/// every [`FLUSH`] chunks, `after_chunk(k)` after chunk `k`, then the tail and the fixed lane
/// tree. The body of [`dev_sums`] and of the backward's `(Σ g, Σ g·(x − μ))`.
#[inline(always)]
pub(crate) fn pair_sums<T: Element>(
    xs: &[T],
    ys: &[T],
    term: impl Fn(T::Compute, T::Compute) -> (T::Compute, T::Compute),
    after_chunk: impl FnMut(usize),
) -> (T::Acc, T::Acc) {
    let [u, v] = lane_sums::<T, 2>(
        xs,
        ys,
        |x, y| {
            let (u, v) = term(x, y);
            [u, v]
        },
        after_chunk,
    );
    (u, v)
}

/// [`pair_sums`] of a run shorter than [`LANES`] (longer runs: `pair_sums` itself), inlined
/// and without its calls: the same bits. Such a run is all tail, so each of its lanes holds
/// `0 + term` of one element (never `−0`) and the rest zeros, which the pairwise tree adds
/// exactly: the tree over the run's length rounded up to a power of two `M` is the same tree,
/// here over `M` lanes of a constant size (unrolled and vectorised).
#[inline(always)]
pub(crate) fn short_pair_sums<T: Element>(
    xs: &[T],
    ys: &[T],
    term: impl Fn(T::Compute, T::Compute) -> (T::Compute, T::Compute),
) -> (T::Acc, T::Acc) {
    let len = xs.len().min(ys.len());
    match len.next_power_of_two() {
        1 => short_tree::<T, 1>(xs, ys, term),
        2 => short_tree::<T, 2>(xs, ys, term),
        4 => short_tree::<T, 4>(xs, ys, term),
        8 => short_tree::<T, 8>(xs, ys, term),
        16 => short_tree::<T, 16>(xs, ys, term),
        32 if len < LANES => short_tree::<T, 32>(xs, ys, term),
        _ => pair_sums(xs, ys, term, |_| {}),
    }
}

/// [`short_pair_sums`] of a run of at most `M` elements.
#[inline(always)]
fn short_tree<T: Element, const M: usize>(
    xs: &[T],
    ys: &[T],
    term: impl Fn(T::Compute, T::Compute) -> (T::Compute, T::Compute),
) -> (T::Acc, T::Acc) {
    let (mut u, mut v) = ([T::Acc::ZERO; M], [T::Acc::ZERO; M]);
    let mut add = |i: usize, x: T, y: T| {
        let (a, b) = term(x.to_compute(), y.to_compute());
        u[i] += acc_of::<T>(a);
        v[i] += acc_of::<T>(b);
    };
    if let (Some(xs), Some(ys)) = (xs.first_chunk::<M>(), ys.first_chunk::<M>()) {
        // a whole run of `M`: constant bounds (vectorised)
        (0..M).for_each(|i| add(i, xs[i], ys[i]));
    } else {
        let pairs = xs.iter().zip(ys).take(M).enumerate();
        pairs.for_each(|(i, (&x, &y))| add(i, x, y));
    }
    let mut n = M;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            u[i] += u[i + n];
            v[i] += v[i + n];
        }
    }
    (u[0], v[0])
}

/// The `K` sums `Σ term(x, y)[j]` over the pairs of `xs` and `ys` (the shorter's length), each
/// in [`LANES`] lanes of compute-type partials added into accumulator-type lanes every
/// [`FLUSH`] chunks; `after_chunk(k)` after chunk `k`, then the tail and the fixed lane tree.
/// The one body of [`shifted_sum`] (`K = 1`), [`dev_sums`] and [`pair_sums`] (`K = 2`).
#[inline(always)]
fn lane_sums<T: Element, const K: usize>(
    xs: &[T],
    ys: &[T],
    term: impl Fn(T::Compute, T::Compute) -> [T::Compute; K],
    mut after_chunk: impl FnMut(usize),
) -> [T::Acc; K] {
    let len = xs.len().min(ys.len());
    let whole = len - len % LANES;
    let mut acc = [[T::Acc::ZERO; LANES]; K];
    let blocks = xs[..whole]
        .chunks(LANES * FLUSH)
        .zip(ys[..whole].chunks(LANES * FLUSH));
    for (b, (xb, yb)) in blocks.enumerate() {
        let mut part = [[T::Compute::ZERO; LANES]; K];
        let chunks = xb.chunks_exact(LANES).zip(yb.chunks_exact(LANES));
        for (k, (xc, yc)) in chunks.enumerate() {
            for i in 0..LANES {
                let t = term(xc[i].to_compute(), yc[i].to_compute());
                for j in 0..K {
                    part[j][i] += t[j];
                }
            }
            after_chunk(b * FLUSH + k);
        }
        for j in 0..K {
            flush::<T>(&mut acc[j], &part[j]);
        }
    }
    let (xt, yt) = (&xs[whole..len], &ys[whole..len]);
    std::array::from_fn(|j| {
        add_tail(&mut acc[j], xt.len(), |i| {
            acc_of::<T>(term(xt[i].to_compute(), yt[i].to_compute())[j])
        });
        combine(&acc[j])
    })
}

/// Converts a compute-type value into the accumulator type (exact: the accumulator is at
/// least as wide as the compute type).
#[inline(always)]
pub fn acc_of<T: Element>(v: T::Compute) -> T::Acc {
    T::Acc::from_f64(v.to_f64())
}

/// `acc[i] += f(i)` for the `len < N` elements of a run's tail (`N` lanes: [`LANES`] here,
/// `backward::LANES` in the backward sums).
///
/// Never inlined, as [`combine`]: when the tail's (or the combination's) scalar code is inlined
/// after a lane-accumulation loop, LLVM's SLP vectoriser lays the loop's accumulators out to
/// suit that code (scalar and partial loads, `pshufb`, several register widths) instead of
/// whole vectors of consecutive lanes; behind calls the loop keeps plain vector loads. Same
/// IEEE operations either way.
#[inline(never)]
pub(crate) fn add_tail<A: Real, const N: usize>(
    acc: &mut [A; N],
    len: usize,
    f: impl Fn(usize) -> A,
) {
    for (i, a) in acc.iter_mut().enumerate().take(len) {
        *a += f(i);
    }
}

/// Pairwise tree over the lanes. Never inlined (see [`add_tail`]).
#[inline(never)]
pub(crate) fn combine<A: Real, const N: usize>(acc: &[A; N]) -> A {
    let mut w = *acc;
    let mut n = N;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            let v = w[i + n];
            w[i] += v;
        }
    }
    w[0]
}

/// Mean and inverse standard deviation from a count, a sum and a sum of squared deviations,
/// with PyTorch's rounding order: `μ = float(Σx / M)`, `σ² = float(m2) / M` (biased),
/// `r = float(1 / sqrt(double(σ²) + eps))`. `σ² = 0` with `eps = 0` gives `r = 0` when
/// `zero_var_rule` is set (PyTorch's batch-norm kernel rule, reached through InstanceNorm).
#[inline]
pub fn finish<C: Real>(
    count: usize,
    m2: f64,
    eps: f64,
    clamp: bool,
    zero_var_rule: bool,
) -> (C, C) {
    let var = C::from_f64(C::from_f64(m2).to_f64() / count as f64);
    // max(var, 0) as PyTorch's C++ computes it: a NaN variance stays NaN.
    let var = if clamp && var < C::ZERO { C::ZERO } else { var };
    let denom = var.to_f64() + eps;
    let r = if zero_var_rule && var.to_f64() == 0.0 && eps == 0.0 {
        C::ZERO
    } else {
        C::from_f64(1.0 / denom.sqrt())
    };
    (var, r)
}

#[cfg(test)]
mod tests {

    /// `short_pair_sums` is `pair_sums` bit for bit at every length, short or not, f32 and bf16
    /// (terms whose sums round: large and small magnitudes, both signs, a zero).
    #[test]
    fn short_pair_sums_are_pair_sums_bit_for_bit() {
        use super::{pair_sums, short_pair_sums};
        use crate::dtype::Element;
        fn check<T: Element>(name: &str) {
            let v: Vec<f64> = (0..80)
                .map(|i| match i % 5 {
                    0 => 1e4 + i as f64 * 0.37,
                    1 => -3.1e-3 * i as f64,
                    2 => 0.0,
                    3 => 7.7e2 / (i as f64 + 1.0),
                    _ => -(i as f64).sqrt() * 1e3,
                })
                .collect();
            let xs: Vec<T> = v
                .iter()
                .map(|&a| T::from_compute(T::Compute::from_f64(a)))
                .collect();
            let ys: Vec<T> = v
                .iter()
                .rev()
                .map(|&a| T::from_compute(T::Compute::from_f64(a * 0.5 - 3.0)))
                .collect();
            let term = |x: T::Compute, y: T::Compute| (x, x * (y - T::Compute::from_f64(1.5)));
            for len in 0..70 {
                for off in [0, 3] {
                    let (xs, ys) = (&xs[off..off + len], &ys[off..off + len]);
                    let (a, b) = pair_sums(xs, ys, term, |_| {});
                    let (c, d) = short_pair_sums(xs, ys, term);
                    let same = |p: T::Acc, q: T::Acc| p.to_f64().to_bits() == q.to_f64().to_bits();
                    assert!(
                        same(a, c) && same(b, d),
                        "{name} len {len} off {off}: {a:?} {b:?} vs {c:?} {d:?}"
                    );
                }
            }
        }
        check::<f32>("f32");
        check::<half::bf16>("bf16");
        check::<f64>("f64");
    }
    use super::*;
    use half::bf16;

    /// (mean, m2) of `xs` in f64, the reference (two-pass over the f64 values).
    fn reference(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        (mean, xs.iter().map(|&v| (v - mean).powi(2)).sum())
    }

    #[test]
    fn the_prefetching_pass_is_the_plain_one_bit_for_bit() {
        fn check<T: Element>(xs: &[T], next: &[T], n: usize) {
            let h = head_mean(xs);
            let (c, d) = (dev_sums_prefetching(xs, h, next, xs), dev_sums(xs, h));
            assert_eq!(c.0.to_f64().to_bits(), d.0.to_f64().to_bits(), "n={n}");
            assert_eq!(c.1.to_f64().to_bits(), d.1.to_f64().to_bits(), "n={n}");
        }
        for n in [0usize, 1, 7, 13, 16, 17, 97, 1025, 4099, 20_000] {
            let v: Vec<f64> = (0..n).map(|i| 1e4 + (i as f64 * 0.37).sin()).collect();
            let next: Vec<f64> = (0..n / 2).map(|i| i as f64).collect();
            let f = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<_>>();
            check(&f(&v), &f(&next), n);
            check(&v, &next, n);
            let h = |v: &[f64]| v.iter().map(|&v| bf16::from_f64(v)).collect::<Vec<_>>();
            check(&h(&v), &h(&next), n);
        }
    }

    /// `moments_by` with the plain pass, counting the passes it asks for.
    fn counted<T: Element>(xs: &[T]) -> ((f64, f64), Vec<Pass>) {
        let mut passes = Vec::new();
        let r = moments_by(xs.len(), xs, |h, p| {
            passes.push(p);
            dev_sums(xs, h)
        });
        (r, passes)
    }

    #[test]
    fn one_pass_when_the_head_is_near_the_mean_two_when_it_is_not() {
        // the head (the first HEAD elements) has the run's distribution: one pass
        let n = 50_000;
        let xs: Vec<f32> = (0..n)
            .map(|i| 1e4 + 0.01 * (i as f32 * 0.37).sin())
            .collect();
        let ((mean, m2), passes) = counted(&xs);
        assert_eq!(passes, [Pass::Single]);
        let (rm, rm2) = reference(&xs.iter().map(|&v| v as f64).collect::<Vec<_>>());
        assert!((m2 - rm2).abs() / rm2 < 1e-5, "m2 {m2} vs {rm2}");
        assert!(
            (mean - rm).abs() < 1e-3 * (rm2 / n as f64).sqrt(),
            "{mean} vs {rm}"
        );
        // a head unlike the rest (GroupNorm channels with different means): the single
        // pass's correction would exceed m2, so the pass is repeated around the mean; the
        // result is as accurate as with a representative head (accepting the single pass here
        // would amplify its rounding up to ~n/HEAD times; the f32 values of this data round
        // too coarsely to show it, so the pass list is what pins the rule down)
        for offset in [1.0f32, 100.0, 1e4] {
            let mut ys = xs.clone();
            for v in &mut ys[..HEAD] {
                *v += offset;
            }
            let ((mean, m2), passes) = counted(&ys);
            assert_eq!(passes, [Pass::Single, Pass::Again], "offset {offset}");
            let (rm, rm2) = reference(&ys.iter().map(|&v| v as f64).collect::<Vec<_>>());
            assert!(
                (m2 - rm2).abs() / rm2 < 1e-5,
                "offset {offset}: {m2} vs {rm2}"
            );
            assert!(
                (mean - rm).abs() < 1e-3 * (rm2 / n as f64).sqrt(),
                "offset {offset}: {mean} vs {rm}"
            );
        }
        // constant runs and non-finite means never take a second pass
        assert_eq!(counted(&[3.5f32; 100]).1, [Pass::Single]);
        let mut zs = xs.clone();
        zs[4000] = f32::INFINITY;
        assert_eq!(counted(&zs).1, [Pass::Single]);
    }

    #[test]
    fn an_accepted_single_pass_loses_at_most_a_bit() {
        // acceptance means (Σd)²/n ≤ m2, so the correction at most halves Σd²: for every
        // head position of a spread-out run, the result stays within f32-partial rounding of
        // the f64 reference, whichever pass produced it
        let n = 3000;
        let base: Vec<f64> = (0..n)
            .map(|i| 7.0 + ((i * 7919) % 1000) as f64 / 1000.0)
            .collect();
        let (rm, rm2) = reference(&base);
        for rot in (0..n).step_by(97) {
            let xs: Vec<f32> = base[rot..]
                .iter()
                .chain(&base[..rot])
                .map(|&v| v as f32)
                .collect();
            let (rm_f, rm2_f) = reference(&xs.iter().map(|&v| v as f64).collect::<Vec<_>>());
            let (mean, m2) = moments(&xs);
            assert!(
                (m2 - rm2_f).abs() / rm2_f < 2e-6,
                "rot {rot}: {m2} vs {rm2_f}"
            );
            assert!(
                (mean - rm_f).abs() < 1e-6 * rm.abs(),
                "rot {rot}: {mean} vs {rm_f}"
            );
            assert!((rm2_f - rm2).abs() / rm2 < 1e-3);
        }
    }

    #[test]
    fn moments_match_f64_for_odd_lengths_and_partials_over_many_flushes() {
        // LANES·FLUSH = 512 elements per flush: 20_000 spans 39 of them and a tail
        for n in [
            1usize, 7, 13, 15, 16, 17, 31, 32, 33, 97, 511, 513, 1025, 20_000,
        ] {
            let xs: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 0.37).sin() * 3.0 + 0.5)
                .collect();
            let x64: Vec<f64> = xs.iter().map(|&v| v as f64).collect();
            let (mean, m2) = moments(&xs);
            let (rm, rm2) = reference(&x64);
            assert!(
                (mean - rm).abs() <= 1e-7 * (1.0 + rm.abs()),
                "n={n}: {mean} vs {rm}"
            );
            assert!(
                (m2 - rm2).abs() <= 1e-6 * (1e-30 + rm2),
                "n={n}: {m2} vs {rm2}"
            );
        }
    }

    #[test]
    fn large_offset_keeps_its_spread() {
        // 1e4 + small spread: E[x²]−E[x]² in f32 would lose every digit here; so would a
        // plain f32 sum's mean (half an ulp of 1e4 is 5 % of the spread)
        for n in [1000usize, 20_000] {
            let xs: Vec<f32> = (0..n)
                .map(|i| 1e4 + 0.01 * ((i % 7) as f32 - 3.0))
                .collect();
            let (mean, m2) = moments(&xs);
            let (rm, rm2) = reference(&xs.iter().map(|&v| v as f64).collect::<Vec<_>>());
            assert!((m2 - rm2).abs() / rm2 < 1e-5, "n={n}: m2 {m2} vs {rm2}");
            assert!(
                (mean - rm).abs() < 1e-3 * (rm2 / n as f64).sqrt(),
                "n={n}: {mean} vs {rm}"
            );
            // the first element far from the rest (an outlier as the shift)
            let mut ys = xs.clone();
            ys[0] = -3e4;
            let (mean, m2) = moments(&ys);
            let (rm, rm2) = reference(&ys.iter().map(|&v| v as f64).collect::<Vec<_>>());
            assert!(
                (m2 - rm2).abs() / rm2 < 1e-5,
                "n={n}: outlier m2 {m2} vs {rm2}"
            );
            assert!(
                (mean - rm).abs() / rm.abs() < 1e-9,
                "n={n}: outlier {mean} vs {rm}"
            );
        }
    }

    #[test]
    fn constant_runs_have_their_exact_mean_and_zero_m2() {
        // the head's mean (summed relative to its first element) is that element exactly, so
        // every deviation is exactly 0
        for n in [1usize, 7, 33, 1025, 20_000] {
            for c in [0.1f32, -3.7e5, 1e-30, 16_777_215.0] {
                assert_eq!(moments(&vec![c; n]), (c as f64, 0.0), "n={n} c={c}");
            }
            let b = bf16::from_f32(0.3);
            assert_eq!(moments(&vec![b; n]), (b.to_f64(), 0.0), "bf16 n={n}");
            assert_eq!(moments(&vec![0.1f64; n]), (0.1, 0.0), "f64 n={n}");
        }
    }

    #[test]
    fn non_finite_data() {
        let mut xs = vec![1.0f32; 100];
        xs[50] = f32::INFINITY;
        let (mean, m2) = moments(&xs);
        assert_eq!(mean, f64::INFINITY);
        assert!(m2.is_nan());
        xs[0] = f32::INFINITY; // an infinite first element is not the shift
        assert_eq!(moments(&xs).0, f64::INFINITY);
        xs[10] = f32::NEG_INFINITY;
        assert!(moments(&xs).0.is_nan());
        let mut ys = vec![2.0f32; 100];
        ys[0] = f32::NAN;
        let (mean, m2) = moments(&ys);
        assert!(mean.is_nan() && m2.is_nan());
        assert_eq!(moments::<f32>(&[]).1, 0.0);
    }

    #[test]
    fn zero_variance_and_zero_eps_follow_the_rule() {
        let (_, r) = finish::<f32>(4, 0.0, 0.0, false, true);
        assert_eq!(r, 0.0);
        let (_, r) = finish::<f32>(4, 0.0, 0.0, false, false);
        assert!(r.is_infinite());
        let (v, _) = finish::<f64>(2, -1.0, 1e-5, true, false);
        assert_eq!(v, 0.0);
    }

    #[test]
    fn bf16_accumulates_in_f32() {
        let xs = vec![bf16::from_f32(1.0); 1000];
        // bf16 accumulation would stall at 256; f32 reaches 1000 exactly
        assert_eq!(shifted_sum(&xs, 0.0), 1000.0f32);
        let ys: Vec<bf16> = (0..1000).map(|i| bf16::from_f32((i % 2) as f32)).collect();
        assert_eq!(moments(&ys), (0.5, 250.0));
    }
}
