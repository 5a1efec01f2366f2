//! The CPU backend: typed kernels over dense slices in one of two channel layouts.
//!
//! The ops layer (`crate::ops`) validates arguments and stages any strided input into a dense
//! layout; the kernels here see only `&[T]` / `&mut [T]` in [`ChannelLayout::First`] (NCHW,
//! logical row-major) or [`ChannelLayout::Last`] (NHWC). Work is split into a fixed number of
//! pieces that does not depend on the thread count, and partial sums are merged in a fixed
//! order, so results are identical for every thread count.

#![forbid(unsafe_code)]

pub mod backward;
pub mod moments;
pub mod threads;

use crate::dtype::{Element, Real};
use moments::{Centre, acc_of, sum, sum_sq_dev};
use rayon::prelude::*;

/// The instruction set the hot loops dispatch to on this machine (the `multiversion` clones:
/// AVX-512, AVX2+FMA, or the baseline build).
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx2") && has!("fma") {
            return "x86_64 avx512 (f, bw, vl)";
        }
        if has!("avx2") && has!("fma") {
            return "x86_64 avx2+fma";
        }
    }
    "baseline (no runtime SIMD clone for this CPU)"
}

/// Dense layouts the kernels handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelLayout {
    /// `(N, C, S)` row-major: each (n, c) plane of S elements is contiguous.
    First,
    /// `(N, S, C)`: each (n, s) row of C channels is contiguous.
    Last,
}

/// Logical `(N, C, S)` sizes (S = product of the spatial dims).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    pub n: usize,
    pub c: usize,
    pub s: usize,
}

/// Rows per work piece for row-wise passes: about 16 KiB of f32 per piece.
pub(crate) fn rows_per_piece(row_len: usize) -> usize {
    (4096 / row_len.max(1)).max(1)
}

/// Per-column sums over a row-major `(rows, cols)` slice: Σ x (or Σ (x − mean_col)² when
/// `mean` is given), merged over fixed pieces of rows in order.
fn column_sums<T: Element>(
    x: &[T],
    cols: usize,
    mean: Option<&[Centre<T::Compute>]>,
) -> Vec<T::Acc> {
    let piece = rows_per_piece(cols) * cols;
    let partials: Vec<Vec<T::Acc>> = x
        .par_chunks(piece.max(1))
        .map(|chunk| {
            let mut acc = vec![T::Acc::ZERO; cols];
            for row in chunk.chunks_exact(cols) {
                match mean {
                    None => {
                        for (a, &v) in acc.iter_mut().zip(row) {
                            *a += v.to_acc();
                        }
                    }
                    Some(m) => {
                        for ((a, &v), &mu) in acc.iter_mut().zip(row).zip(m) {
                            let d = mu.centre(v.to_compute());
                            *a += acc_of::<T>(d * d);
                        }
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![T::Acc::ZERO; cols];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// Per-channel moments over batch and spatial dims (BatchNorm): `(mean, m2)` per channel, with
/// `mean = Σx / M` and `m2 = Σ (x − mean)²`, both as f64.
pub fn channel_moments<T: Element>(
    x: &[T],
    g: Geom,
    layout: ChannelLayout,
) -> (Vec<f64>, Vec<f64>) {
    let count = g.n * g.s;
    if count == 0 || g.c == 0 {
        return (vec![0.0; g.c], vec![0.0; g.c]);
    }
    let m = count as f64;
    match layout {
        ChannelLayout::First => {
            let stats: Vec<(f64, f64)> = (0..g.c)
                .into_par_iter()
                .map(|c| {
                    let plane = |n: usize| &x[(n * g.c + c) * g.s..(n * g.c + c + 1) * g.s];
                    let mut s = T::Acc::ZERO;
                    for n in 0..g.n {
                        s += sum(plane(n));
                    }
                    let mean64 = s.to_f64() / m;
                    let mean = Centre::of(mean64);
                    let mut m2 = T::Acc::ZERO;
                    for n in 0..g.n {
                        m2 += sum_sq_dev(plane(n), mean);
                    }
                    (mean64, m2.to_f64())
                })
                .collect();
            stats.into_iter().unzip()
        }
        ChannelLayout::Last => {
            let sums = column_sums(x, g.c, None);
            let mean: Vec<f64> = sums.iter().map(|s| s.to_f64() / m).collect();
            let centres: Vec<Centre<T::Compute>> = mean.iter().map(|&v| Centre::of(v)).collect();
            let m2 = column_sums(x, g.c, Some(&centres));
            (mean, m2.iter().map(|v| v.to_f64()).collect())
        }
    }
}

/// Per-(sample, group) moments (GroupNorm; InstanceNorm with `groups = C`): `(mean, m2)` of
/// length `N·G`, each over `(C/G)·S` elements.
pub fn group_moments<T: Element>(
    x: &[T],
    g: Geom,
    groups: usize,
    layout: ChannelLayout,
) -> (Vec<f64>, Vec<f64>) {
    let cg = g.c / groups;
    let count = cg * g.s;
    let n_stats = g.n * groups;
    if count == 0 {
        return (vec![0.0; n_stats], vec![0.0; n_stats]);
    }
    let m = count as f64;
    match layout {
        ChannelLayout::First => {
            let stats: Vec<(f64, f64)> = x[..g.n * g.c * g.s]
                .par_chunks(count)
                .map(|run| {
                    let mean = sum(run).to_f64() / m;
                    (mean, sum_sq_dev(run, Centre::of(mean)).to_f64())
                })
                .collect();
            stats.into_iter().unzip()
        }
        ChannelLayout::Last => {
            let mut means = Vec::with_capacity(n_stats);
            let mut m2s = Vec::with_capacity(n_stats);
            let sample_len = g.s * g.c;
            for n in 0..g.n {
                let xs = &x[n * sample_len..(n + 1) * sample_len];
                let csum = column_sums(xs, g.c, None);
                let gmean: Vec<f64> = csum
                    .chunks(cg)
                    .map(|ch| {
                        let mut s = T::Acc::ZERO;
                        for &v in ch {
                            s += v;
                        }
                        s.to_f64() / m
                    })
                    .collect();
                let chan_mean: Vec<Centre<T::Compute>> =
                    (0..g.c).map(|c| Centre::of(gmean[c / cg])).collect();
                let cm2 = column_sums(xs, g.c, Some(&chan_mean));
                for ch in cm2.chunks(cg) {
                    let mut s = T::Acc::ZERO;
                    for &v in ch {
                        s += v;
                    }
                    m2s.push(s.to_f64());
                }
                means.extend(gmean);
            }
            (means, m2s)
        }
    }
}

/// Per-row moments over a row-major `(rows, cols)` slice (LayerNorm).
pub fn row_moments<T: Element>(x: &[T], rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>) {
    if cols == 0 {
        return (vec![0.0; rows], vec![0.0; rows]);
    }
    let m = cols as f64;
    let stats: Vec<(f64, f64)> = x[..rows * cols]
        .par_chunks(cols)
        .map(|row| {
            let mean = sum(row).to_f64() / m;
            (mean, sum_sq_dev(row, Centre::of(mean)).to_f64())
        })
        .collect();
    stats.into_iter().unzip()
}

/// Per-(n, c) affine coefficients of the centred form `y = (x − shift)·scale + offset`.
/// Indexed by channel (`per_sample = false`) or by `n·C + c` (`per_sample = true`).
pub struct Coefficients<'a, C> {
    pub shift: &'a [Centre<C>],
    pub scale: &'a [C],
    pub offset: &'a [C],
    pub per_sample: bool,
}

/// `y = (x − shift)·scale + offset` with per-channel (or per-(n, c)) coefficients.
///
/// The centred form (rather than PyTorch's folded `x·α + β'`) keeps the cancellation in the
/// subtraction of two nearby values, so inputs with a large mean keep their precision.
pub fn apply_channel<T: Element>(
    x: &[T],
    y: &mut [T],
    g: Geom,
    layout: ChannelLayout,
    k: &Coefficients<'_, T::Compute>,
) {
    let total = g.n * g.c * g.s;
    if total == 0 {
        return;
    }
    let (x, y) = (&x[..total], &mut y[..total]);
    let idx = |n: usize, c: usize| if k.per_sample { n * g.c + c } else { c };
    match layout {
        ChannelLayout::First => {
            // pieces of whole planes
            let planes = rows_per_piece(g.s);
            y.par_chunks_mut(planes * g.s)
                .zip(x.par_chunks(planes * g.s))
                .enumerate()
                .for_each(|(p, (yc, xc))| {
                    for (j, (yp, xp)) in yc.chunks_mut(g.s).zip(xc.chunks(g.s)).enumerate() {
                        let plane = p * planes + j;
                        let i = idx(plane / g.c, plane % g.c);
                        let (sh, sc, of) = (k.shift[i], k.scale[i], k.offset[i]);
                        for (o, &v) in yp.iter_mut().zip(xp) {
                            *o = T::from_compute(sh.centre(v.to_compute()) * sc + of);
                        }
                    }
                });
        }
        ChannelLayout::Last => {
            let rows = rows_per_piece(g.c);
            y.par_chunks_mut(rows * g.c)
                .zip(x.par_chunks(rows * g.c))
                .enumerate()
                .for_each(|(p, (yc, xc))| {
                    for (j, (yr, xr)) in yc.chunks_mut(g.c).zip(xc.chunks(g.c)).enumerate() {
                        let row = p * rows + j;
                        let base = idx(row / g.s.max(1), 0);
                        let (sh, sc, of) = (
                            &k.shift[base..base + g.c],
                            &k.scale[base..base + g.c],
                            &k.offset[base..base + g.c],
                        );
                        for c in 0..g.c {
                            yr[c] =
                                T::from_compute(sh[c].centre(xr[c].to_compute()) * sc[c] + of[c]);
                        }
                    }
                });
        }
    }
}

/// LayerNorm apply over row-major `(rows, cols)`: `y = (x − μ_row)·r_row·γ_col + β_col`.
pub fn apply_rows<T: Element>(
    x: &[T],
    y: &mut [T],
    cols: usize,
    mean: &[Centre<T::Compute>],
    rstd: &[T::Compute],
    weight: Option<&[T::Compute]>,
    bias: Option<&[T::Compute]>,
) {
    let rows = mean.len();
    if rows * cols == 0 {
        return;
    }
    y[..rows * cols]
        .par_chunks_mut(cols)
        .zip(x[..rows * cols].par_chunks(cols))
        .enumerate()
        .for_each(|(r, (yr, xr))| {
            let (mu, rs) = (mean[r], rstd[r]);
            match (weight, bias) {
                (Some(w), Some(b)) => {
                    for j in 0..cols {
                        yr[j] = T::from_compute(mu.centre(xr[j].to_compute()) * rs * w[j] + b[j]);
                    }
                }
                (Some(w), None) => {
                    for j in 0..cols {
                        yr[j] = T::from_compute(mu.centre(xr[j].to_compute()) * rs * w[j]);
                    }
                }
                (None, Some(b)) => {
                    for j in 0..cols {
                        yr[j] = T::from_compute(mu.centre(xr[j].to_compute()) * rs + b[j]);
                    }
                }
                (None, None) => {
                    for j in 0..cols {
                        yr[j] = T::from_compute(mu.centre(xr[j].to_compute()) * rs);
                    }
                }
            }
        });
}

/// Local response normalisation parameters.
#[derive(Clone, Copy, Debug)]
pub struct LrnParams {
    pub size: usize,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
}

/// LocalResponseNorm across channels: `y_c = x_c / (k + alpha/size · Σ_{j∈W(c)} x_j²)^beta`,
/// `W(c) = [c − ⌊size/2⌋, c + ⌊(size−1)/2⌋] ∩ [0, C)`. Squares and sums in the compute type
/// (f32 for f16/bf16, so `x·x` never overflows there).
pub fn lrn<T: Element>(x: &[T], y: &mut [T], g: Geom, layout: ChannelLayout, p: LrnParams) {
    let total = g.n * g.c * g.s;
    if total == 0 {
        return;
    }
    let before = p.size / 2;
    let after = (p.size - 1) / 2;
    let alpha_over_size =
        |sumsq: T::Compute| sumsq / T::Compute::from_usize(p.size) * T::Compute::from_f64(p.alpha);
    let kk = T::Compute::from_f64(p.k);
    let beta = T::Compute::from_f64(p.beta);
    let window = |c: usize| (c.saturating_sub(before), (c + after).min(g.c - 1));
    match layout {
        ChannelLayout::First => {
            let sample = g.c * g.s;
            y[..total]
                .par_chunks_mut(sample)
                .zip(x[..total].par_chunks(sample))
                .for_each(|(ys, xs)| {
                    let mut acc = vec![T::Compute::ZERO; g.s];
                    for c in 0..g.c {
                        acc.iter_mut().for_each(|a| *a = T::Compute::ZERO);
                        let (lo, hi) = window(c);
                        for j in lo..=hi {
                            for (a, &v) in acc.iter_mut().zip(&xs[j * g.s..(j + 1) * g.s]) {
                                let v = v.to_compute();
                                *a += v * v;
                            }
                        }
                        let (yp, xp) =
                            (&mut ys[c * g.s..(c + 1) * g.s], &xs[c * g.s..(c + 1) * g.s]);
                        for ((o, &v), &a) in yp.iter_mut().zip(xp).zip(&acc) {
                            let denom = (alpha_over_size(a) + kk).powf(beta);
                            *o = T::from_compute(v.to_compute() / denom);
                        }
                    }
                });
        }
        ChannelLayout::Last => {
            let rows = rows_per_piece(g.c);
            y[..total]
                .par_chunks_mut(rows * g.c)
                .zip(x[..total].par_chunks(rows * g.c))
                .for_each(|(yc, xc)| {
                    let mut sq = vec![T::Compute::ZERO; g.c];
                    for (yr, xr) in yc.chunks_mut(g.c).zip(xc.chunks(g.c)) {
                        for (s, &v) in sq.iter_mut().zip(xr) {
                            let v = v.to_compute();
                            *s = v * v;
                        }
                        for c in 0..g.c {
                            let (lo, hi) = window(c);
                            let mut a = T::Compute::ZERO;
                            for &s in &sq[lo..=hi] {
                                a += s;
                            }
                            let denom = (alpha_over_size(a) + kk).powf(beta);
                            yr[c] = T::from_compute(xr[c].to_compute() / denom);
                        }
                    }
                });
        }
    }
}
