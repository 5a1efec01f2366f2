//! Two-pass moments (mean, then the sum of squared deviations) over contiguous runs.
//!
//! Never `E[x²] − E[x]²`: the second pass sums `(x − μ)²` with the mean already known, so data
//! with a large offset and a small spread keeps its precision. Sums run over [`LANES`]
//! independent accumulators (a blocked, pairwise-like order that also vectorises), in the
//! element type's accumulator (`f64` for f32/f64 input, `f32` for f16/bf16).

use crate::dtype::{Element, Real};

/// Independent partial sums per run; the order of their final combination is fixed, so
/// results never depend on the thread count.
pub const LANES: usize = 16;

/// Compiles each enclosed function once per instruction set (AVX-512, AVX2+FMA, baseline) and
/// picks the clone at run time (`multiversion`; no `unsafe` here). The clones perform the same
/// IEEE operations in the same order (Rust never contracts `a·b + c` into an FMA), so results
/// do not depend on the CPU.
macro_rules! simd_clones {
    ($($item:item)*) => {
        $(
            #[multiversion::multiversion(targets(
                "x86_64+avx512f+avx512bw+avx512vl+avx2+fma+f16c",
                "x86_64+avx2+fma+f16c",
            ))]
            $item
        )*
    };
}
pub(crate) use simd_clones;

simd_clones! {
/// Σ x over `xs`, in the accumulator type.
pub fn sum<T: Element>(xs: &[T]) -> T::Acc {
    lane_sum(xs, |_| {})
}
}

/// The body of [`sum`] (and [`sum_touching`]): [`LANES`] accumulators over the whole chunks,
/// `after_chunk(k)` after chunk `k`, then the tail and the fixed lane tree.
#[inline(always)]
fn lane_sum<T: Element>(xs: &[T], mut after_chunk: impl FnMut(usize)) -> T::Acc {
    let mut acc = [T::Acc::ZERO; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for (k, c) in chunks.enumerate() {
        for i in 0..LANES {
            acc[i] += c[i].to_acc();
        }
        after_chunk(k);
    }
    add_tail(&mut acc, tail.len(), |i| tail[i].to_acc());
    combine(&acc)
}

simd_clones! {
/// [`sum`] of `xs` (the same result, bit for bit) that also reads one element of `ys` per
/// 64 bytes (a cache line) and returns a value made from them, for the caller to pass to
/// `black_box`. Used just before `ys` is written: the destination's lines come from memory in
/// the same loop as `xs`'s, overlapped with them, instead of one by one through the stores'
/// read-for-ownership, which stalls the apply loop once the store queue is full (streaming
/// stores would avoid the read but need `unsafe` intrinsics). For element types of at least
/// 4 bytes (a chunk of `LANES` spans whole lines); see [`sum_before_writing`].
pub fn sum_touching<T: Element>(xs: &[T], ys: &[T]) -> (T::Acc, T::Compute) {
    let mut touch = T::Compute::ZERO;
    let step = (64 / std::mem::size_of::<T>()).clamp(1, LANES);
    let s = lane_sum(xs, |k| {
        for j in (0..LANES).step_by(step) {
            if let Some(v) = ys.get(k * LANES + j) {
                touch = touch.max(v.to_compute());
            }
        }
    });
    (s, touch)
}
}

/// Σ `xs` ([`sum`], bit for bit) before `ys` is written: through [`sum_touching`] for 4- and
/// 8-byte elements (f32 LayerNorm / GroupNorm forward 1.07–1.33x in a same-run A/B); plain
/// [`sum`] for f16/bf16, where a chunk is half a line and the touch measured 0.89–1.07x.
pub fn sum_before_writing<T: Element>(xs: &[T], ys: &[T]) -> T::Acc {
    if std::mem::size_of::<T>() >= 4 {
        let (s, touched) = sum_touching(xs, ys);
        std::hint::black_box(touched);
        s
    } else {
        sum(xs)
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
/// Σ (x − mean)² over `xs`: the difference and its square in the compute type, the sum in the
/// accumulator type.
pub fn sum_sq_dev<T: Element>(xs: &[T], mean: Centre<T::Compute>) -> T::Acc {
    lane_sum_sq_dev(xs, mean, |_| {})
}
}

simd_clones! {
/// [`sum_sq_dev`] of `xs` (the same result, bit for bit) that also prefetches the lines of
/// `next` (the run the caller reads after this one; [`super::prefetch`]), one line per line of
/// `xs`, so memory fetches it while this in-cache pass computes.
pub fn sum_sq_dev_prefetching<T: Element>(
    xs: &[T],
    mean: Centre<T::Compute>,
    next: &[T],
) -> T::Acc {
    let step = super::prefetch::line_elems::<T>();
    lane_sum_sq_dev(xs, mean, |k| {
        if (k * LANES) % step == 0 {
            super::prefetch::line(next, k * LANES);
        }
    })
}
}

/// The body of [`sum_sq_dev`] (and [`sum_sq_dev_prefetching`]): `after_chunk(k)` after chunk
/// `k` of [`LANES`] elements.
#[inline(always)]
fn lane_sum_sq_dev<T: Element>(
    xs: &[T],
    mean: Centre<T::Compute>,
    mut after_chunk: impl FnMut(usize),
) -> T::Acc {
    let mut acc = [T::Acc::ZERO; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for (k, c) in chunks.enumerate() {
        for i in 0..LANES {
            let d = mean.centre(c[i].to_compute());
            acc[i] += acc_of::<T>(d * d);
        }
        after_chunk(k);
    }
    add_tail(&mut acc, tail.len(), |i| {
        let d = mean.centre(tail[i].to_compute());
        acc_of::<T>(d * d)
    });
    combine(&acc)
}

/// Converts a compute-type value into the accumulator type (exact: the accumulator is at
/// least as wide as the compute type).
#[inline(always)]
pub fn acc_of<T: Element>(v: T::Compute) -> T::Acc {
    T::Acc::from_f64(v.to_f64())
}

/// Converts an accumulator value to the compute type (rounds f64 → f32 where they differ).
#[inline(always)]
pub fn compute_of<T: Element>(v: T::Acc) -> T::Compute {
    T::Compute::from_f64(v.to_f64())
}

/// `acc[i] += f(i)` for the `len < LANES` elements of a run's tail.
///
/// Never inlined, as [`combine`]: when the tail's (or the combination's) scalar code is inlined
/// after a lane-accumulation loop, LLVM's SLP vectoriser lays the loop's accumulators out to
/// suit that code (scalar and partial loads, `pshufb`, several register widths) instead of
/// whole vectors of consecutive lanes; behind calls the loop keeps plain vector loads. Same
/// IEEE operations either way.
#[inline(never)]
pub(crate) fn add_tail<A: Real>(acc: &mut [A; LANES], len: usize, f: impl Fn(usize) -> A) {
    for (i, a) in acc.iter_mut().enumerate().take(len) {
        *a += f(i);
    }
}

/// Pairwise tree over the lanes. Never inlined (see [`add_tail`]).
#[inline(never)]
pub(crate) fn combine<A: Real>(acc: &[A; LANES]) -> A {
    let mut w = *acc;
    let mut n = LANES;
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
    use super::*;
    use half::bf16;

    #[test]
    fn sum_before_writing_is_sum_bit_for_bit() {
        fn check<T: Element>(xs: &[T], ys: &[T], n: usize) {
            let (a, b) = (sum_before_writing(xs, ys), sum(xs));
            assert_eq!(a.to_f64().to_bits(), b.to_f64().to_bits(), "n={n}");
        }
        for n in [0usize, 1, 7, 13, 16, 17, 97, 1025, 4099] {
            let v: Vec<f64> = (0..n).map(|i| 1e4 + (i as f64 * 0.37).sin()).collect();
            // the destination holds anything, NaN and infinities included
            let junk: Vec<f64> = (0..n)
                .map(|i| [f64::NAN, f64::INFINITY, -1.0, 0.0][i % 4])
                .collect();
            let f = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<_>>();
            check(&f(&v), &f(&junk), n);
            check(&v, &junk, n);
            let h = |v: &[f64]| v.iter().map(|&v| bf16::from_f64(v)).collect::<Vec<_>>();
            check(&h(&v), &h(&junk), n);
            assert_eq!(sum_touching(&f(&v), &f(&v)).0, sum(&f(&v)), "n={n}");
        }
    }

    #[test]
    fn sums_match_naive_for_odd_lengths() {
        for n in [0usize, 1, 7, 13, 15, 16, 17, 97, 1025] {
            let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let naive: f64 = xs.iter().map(|&v| v as f64).sum();
            assert!((sum(&xs) - naive).abs() < 1e-9, "n={n}");
            let mean = (naive / n.max(1) as f64) as f32;
            let naive2: f64 = xs.iter().map(|&v| ((v - mean) * (v - mean)) as f64).sum();
            assert!(
                (sum_sq_dev(&xs, Centre { hi: mean, lo: 0.0 }) - naive2).abs() < 1e-9,
                "n={n}"
            );
        }
    }

    #[test]
    fn large_offset_keeps_its_spread() {
        // 1e4 + small spread: E[x²]−E[x]² in f32 would lose every digit here.
        let xs: Vec<f32> = (0..1000)
            .map(|i| 1e4 + 0.01 * ((i % 7) as f32 - 3.0))
            .collect();
        let s = sum(&xs);
        let m2 = sum_sq_dev(&xs, Centre::<f32>::of(s / 1000.0));
        let var = m2 / 1000.0;
        // exact spread of the f32-rounded data
        let mean64: f64 = xs.iter().map(|&v| v as f64).sum::<f64>() / 1000.0;
        let var64: f64 = xs.iter().map(|&v| (v as f64 - mean64).powi(2)).sum::<f64>() / 1000.0;
        assert!((var - var64).abs() / var64 < 1e-4, "var {var} vs {var64}");
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
        assert_eq!(sum(&xs), 1000.0f32);
    }
}
