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
pub(crate) mod pairs;
pub mod prefetch;
pub mod scratch;
pub mod simd;
pub mod threads;

use crate::dtype::{Element, Real};
use moments::{Centre, Pass, moments, moments_by, simd_clones};
use rayon::prelude::*;
use scratch::Scratch;
use threads::OnThreads;

/// The instruction sets the hot loops dispatch to on this machine (the `multiversion` clones:
/// AVX-512, AVX2+FMA, or the baseline build), per element type ([`simd::narrow`]).
pub fn simd_level() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("f16c");
        let avx512 = avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl");
        let set = |narrow: bool| match (avx512 && !narrow, avx2) {
            (true, _) => "avx512 (f, bw, vl)",
            (false, true) => "avx2+fma",
            (false, false) => "baseline",
        };
        return format!(
            "x86_64 {} for f32/f64, {} for bf16/f16 (policy {:?})",
            set(simd::narrow::<f32>()),
            set(simd::narrow::<half::bf16>()),
            simd::vector_policy()
        );
    }
    #[allow(unreachable_code)]
    "baseline (no runtime SIMD clone for this CPU)".to_string()
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

/// Elements per work piece of the row-wise passes (64 KiB of f32): large enough that rayon's
/// per-piece cost is negligible, small enough for the L1/L2 caches and for load balance. The
/// partition depends on the data shape only, never on the thread count.
const PIECE: usize = 16 * 1024;

/// Rows per work piece for row-wise passes.
pub(crate) fn rows_per_piece(row_len: usize) -> usize {
    (PIECE / row_len.max(1)).max(1)
}

/// At most this many per-piece partial vectors in a column reduction.
const MAX_PARTIALS: usize = 64;

/// Rows per work piece of a column reduction over `rows` rows of `cols`: [`rows_per_piece`],
/// raised so that there are at most [`MAX_PARTIALS`] pieces (each piece allocates and merges a
/// `cols`-long partial vector; 1024 pieces of 4096 columns cost as much as the data). Depends on
/// the shape only, never on the thread count.
pub(crate) fn reduction_rows(rows: usize, cols: usize) -> usize {
    rows_per_piece(cols).max(rows.div_ceil(MAX_PARTIALS))
}

/// Rows per piece of a column reduction in at most [`MOMENT_TASKS`] pieces (and at least
/// [`reduction_rows`]): for passes whose per-piece partials cost as much as their rows at
/// thousands of columns ([`moment_pieces`]; the backward's channels-last sums, whose 64 slabs
/// of 4096 columns' f64 pairs were 4 MiB to zero, fill and merge). Depends on the shape only.
pub(crate) fn few_pieces_rows(rows: usize, cols: usize) -> usize {
    reduction_rows(rows, cols).max(rows.div_ceil(MOMENT_TASKS))
}

/// A split shift: its `hi` and `lo` parts per column (structure of arrays, for vector loads).
pub(crate) type SplitCentres<'a, C> = (&'a [C], &'a [C]);

simd_clones! {
/// `y = (x − shift)·scale + offset` over a run sharing one set of coefficients.
fn affine_run<T: Element>(
    x: &[T],
    y: &mut [T],
    shift: Centre<T::Compute>,
    scale: T::Compute,
    offset: T::Compute,
) {
    let (hi, offset) = shift.fold(scale, offset);
    if let (Some(xw), Some(yw)) = (T::bf16_words(x), T::bf16_words_mut(y)) {
        let f = pairs::f32_of;
        pairs::affine_run(xw, yw, (f(hi), f(scale), f(offset)));
        return;
    }
    for r in prefetch::store_ranges(y, x.len()) {
        for (o, &v) in y[r.clone()].iter_mut().zip(&x[r]) {
            *o = T::from_compute((v.to_compute() - hi) * scale + offset);
        }
    }
}
}

simd_clones! {
/// `y[r, c] = (x[r, c] − hi_c)·scale_c + offset_c` over the rows of `x` (channels last; the
/// coefficients from [`fold_centres`]), or `y[r, c] = x[r, c]·scale_c + offset_c` when `hi` is
/// empty (the folded form: [`fold_offsets`]), two coefficient streams instead of three.
fn affine_rows<T: Element>(
    x: &[T],
    y: &mut [T],
    coef: FoldedRef<'_, T::Compute>,
    split: Option<pairs::RowSplitRef<'_>>,
) {
    let (hi, scale, offset) = coef;
    if let (Some(k), Some(xw), Some(yw)) = (split, T::bf16_words(x), T::bf16_words_mut(y)) {
        pairs::affine_rows(xw, yw, k);
        return;
    }
    // each row split at its first line boundary where it is long enough (`store_ranges`)
    if hi.is_empty() {
        let cols = scale.len();
        for (yr, xr) in y.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
            for r in prefetch::store_ranges(yr, cols) {
                let coef = scale[r.clone()].iter().zip(&offset[r.clone()]);
                for ((o, &v), (&sc, &of)) in yr[r.clone()].iter_mut().zip(&xr[r]).zip(coef) {
                    *o = T::from_compute(v.to_compute() * sc + of);
                }
            }
        }
        return;
    }
    let cols = hi.len();
    let done = match cols {
        64 => affine_rows_of::<T, 64>(x, y, (hi, scale, offset)),
        128 => affine_rows_of::<T, 128>(x, y, (hi, scale, offset)),
        _ => false,
    };
    if done {
        return;
    }
    for (yr, xr) in y.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
        for r in prefetch::store_ranges(yr, cols) {
            let coef = hi[r.clone()].iter().zip(&scale[r.clone()]).zip(&offset[r.clone()]);
            for ((o, &v), ((&hi, &sc), &of)) in yr[r.clone()].iter_mut().zip(&xr[r]).zip(coef) {
                *o = T::from_compute((v.to_compute() - hi) * sc + of);
            }
        }
    }
}
}

/// [`affine_rows`] for rows of exactly `W` columns: the coefficients as arrays, which the
/// compiler keeps in registers across the rows instead of reading three coefficient streams
/// per row from L1. Same-run microbenchmark on an AMD EPYC (Zen 4) VM, 64 columns, f32:
/// 1.13x (docs/perf/cpu.md, round 17). `false` (nothing written) when a coefficient vector is
/// not `W` long, for the caller's row loop.
#[inline(always)]
fn affine_rows_of<T: Element, const W: usize>(
    x: &[T],
    y: &mut [T],
    (hi, scale, offset): FoldedRef<'_, T::Compute>,
) -> bool {
    let (Ok(hi), Ok(sc), Ok(of)) = (
        <&[T::Compute; W]>::try_from(hi),
        <&[T::Compute; W]>::try_from(scale),
        <&[T::Compute; W]>::try_from(offset),
    ) else {
        return false;
    };
    for (yr, xr) in y.chunks_exact_mut(W).zip(x.chunks_exact(W)) {
        for i in 0..W {
            yr[i] = T::from_compute((xr[i].to_compute() - hi[i]) * sc[i] + of[i]);
        }
    }
    true
}

simd_clones! {
/// One LayerNorm row: `y = (x − μ)·r·γ + β` (γ, β optional); bf16 rows of whole words through
/// [`pairs::layer_norm_row`] with `split` (γ and β split once per call: [`row_split`]).
fn layer_norm_row<T: Element>(
    x: &[T],
    y: &mut [T],
    mu: Centre<T::Compute>,
    rs: T::Compute,
    weight: Option<&[T::Compute]>,
    bias: Option<&[T::Compute]>,
    split: Option<&pairs::RowAffine>,
) {
    if let (Some(k), Some(xw), Some(yw)) = (split, T::bf16_words(x), T::bf16_words_mut(y)) {
        let f = pairs::f32_of;
        pairs::layer_norm_row(xw, yw, (f(mu.hi), f(mu.lo), f(rs)), k);
        return;
    }
    let d = |v: T| mu.centre(v.to_compute()) * rs;
    for r in prefetch::store_ranges(y, x.len()) {
        let (y, x) = (&mut y[r.clone()], &x[r.clone()]);
        match (weight.map(|c| part(c, &r)), bias.map(|c| part(c, &r))) {
            (Some(w), Some(b)) => {
                for (((o, &v), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                    *o = T::from_compute(d(v) * w + b);
                }
            }
            (Some(w), None) => {
                for ((o, &v), &w) in y.iter_mut().zip(x).zip(w) {
                    *o = T::from_compute(d(v) * w);
                }
            }
            (None, Some(b)) => {
                for ((o, &v), &b) in y.iter_mut().zip(x).zip(b) {
                    *o = T::from_compute(d(v) + b);
                }
            }
            (None, None) => {
                for (o, &v) in y.iter_mut().zip(x) {
                    *o = T::from_compute(d(v));
                }
            }
        }
    }
}
}

/// `c[r]` clamped to `c` (a `zip` with a shorter `c` stops where it ends).
#[inline(always)]
pub(crate) fn part<'a, C>(c: &'a [C], r: &std::ops::Range<usize>) -> &'a [C] {
    &c[r.start.min(c.len())..r.end.min(c.len())]
}

/// Per-channel affine coefficients `(hi, scale, offset')` of `y = (x − hi)·scale + offset'`
/// (structure of arrays, for vector loads).
type FoldedRef<'a, C> = (&'a [C], &'a [C], &'a [C]);

/// Folds each channel's `(x − shift)·scale + offset` into `(x − hi)·scale + offset'`
/// ([`Centre::fold`]): returns `(hi, offset')`.
pub(crate) fn fold_centres<C: Real>(
    shift: &[Centre<C>],
    scale: &[C],
    offset: &[C],
) -> (Vec<C>, Vec<C>) {
    shift
        .iter()
        .zip(scale.iter().zip(offset))
        .map(|(c, (&s, &o))| c.fold(s, o))
        .unzip()
}

/// The offsets `offset − shift·scale` (in f64, rounded once) of the folded form
/// `y = x·scale + (offset − shift·scale)` of each channel's `(x − shift)·scale + offset`, for
/// coefficients that [`foldable`] accepts.
pub(crate) fn fold_offsets<C: Real>(shift: &[Centre<C>], scale: &[C], offset: &[C]) -> Vec<C> {
    shift
        .iter()
        .zip(scale.iter().zip(offset))
        .map(|(c, (&s, &o))| {
            let h = c.hi.to_f64() + c.lo.to_f64();
            C::from_f64(o.to_f64() - h * s.to_f64())
        })
        .collect()
}

/// The coefficients `(hi, offset')` of [`affine_rows`] over rows of `cols` channels (one set
/// per row, or one per sample: `shift.len()` a multiple of `cols`): the folded form (`hi` empty, [`fold_offsets`]) where `fold` ([`foldable`]) allows it and it
/// saves a coefficient stream, that is, not at the widths whose coefficients `affine_rows`
/// keeps in registers (64, 128); else the centred form ([`fold_centres`]).
pub(crate) fn row_coefficients<C: Real>(
    (fold, cols): (bool, usize),
    shift: &[Centre<C>],
    scale: &[C],
    offset: &[C],
) -> (Vec<C>, Vec<C>) {
    if fold && !matches!(cols, 64 | 128) {
        (Vec::new(), fold_offsets(shift, scale, offset))
    } else {
        fold_centres(shift, scale, offset)
    }
}

/// Channels whose `|mean|·rstd` is at most this may be applied in the folded form
/// ([`foldable`]).
pub const FOLD_LIMIT: f64 = 2.0;

/// Whether every channel's `(mean, rstd)` allows the folded form `x·scale + (offset −
/// mean·scale)` (PyTorch's) instead of the centred `(x − mean)·scale + offset`: `|mean|·rstd`
/// at most [`FOLD_LIMIT`] (NaN is not). The folded form's extra rounding is that of the terms
/// `x·scale` and `mean·scale`, about `2ε·|mean|·|scale|` = `2ε·|γ|·|mean|·rstd`; within the
/// limit that is at most `4ε·|γ|`, the size of the centred form's own rounding of an output
/// one standard deviation out. Data with a mean larger than that against its spread keeps the
/// centred form, whose subtraction cancels the mean exactly (where PyTorch's folded form loses
/// `log2(|mean|·rstd)` bits). Same-run A/B, BatchNorm1d 4096x1024 f32 eval (two coefficient
/// streams instead of three, AMD Zen 4 VM): 1.08–1.42x at 1 thread, 1.33–1.34x at 2
/// (docs/perf/cpu.md, round 21).
pub(crate) fn foldable<C: Real>(pairs: impl IntoIterator<Item = (f64, C)>) -> bool {
    pairs
        .into_iter()
        .all(|(m, r)| (m * r.to_f64()).abs() <= FOLD_LIMIT)
}

/// Splits centres into their `hi` and `lo` parts (structure of arrays, for vector loads).
pub(crate) fn split_centres<C: Real>(c: &[Centre<C>]) -> (Vec<C>, Vec<C>) {
    c.iter().map(|c| (c.hi, c.lo)).unzip()
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
    match layout {
        ChannelLayout::First if channel_past_l2::<T>(g) => plane_merged_moments(x, g),
        ChannelLayout::First => {
            let stats: Vec<(f64, f64)> = (0..g.c)
                .into_par_iter()
                .on_threads()
                .map(|c| {
                    let planes: Vec<&[T]> = (0..g.n)
                        .map(|n| &x[(n * g.c + c) * g.s..(n * g.c + c + 1) * g.s])
                        .collect();
                    planes_moments(&planes, &[])
                })
                .collect();
            stats.into_iter().unzip()
        }
        ChannelLayout::Last => column_moments(&x[..count * g.c], g.c, true),
    }
}

/// Whether a channels-first channel (`N` planes of `S`) and its output do not fit in L2
/// together ([`prefetch::fits_l2`]): then the per-channel passes ([`planes_moments`], the fused
/// forward) read the channel from memory in `N` short streams `C·S` apart, and a second pass
/// over it finds nothing in cache, so the statistics and the apply run in memory order instead
/// ([`plane_merged_moments`], [`apply_channel`]) — where the planes hold at least
/// [`MIN_MERGED_PLANE`] elements (a plane's moments and its merge cost a few dozen
/// nanoseconds: shorter planes keep the per-channel pass).
fn channel_past_l2<T>(g: Geom) -> bool {
    g.s >= MIN_MERGED_PLANE && !prefetch::fits_l2::<T>(2 * g.n * g.s)
}

/// The shortest plane [`plane_merged_moments`] takes (1 KiB of f32).
const MIN_MERGED_PLANE: usize = 256;

/// Channels first, channels past L2 ([`channel_past_l2`]): the moments of every `(n, c)`
/// plane ([`moments`]) in one parallel pass over the tensor in memory order, then each
/// channel's `N` planes merged in `n` order (Chan et al., as [`column_moments`]' pieces) —
/// the same bits for every thread count. A non-finite plane mean (±∞, NaN) merges as
/// `Σx / n` does ([`chan_step`]).
fn plane_merged_moments<T: Element>(x: &[T], g: Geom) -> (Vec<f64>, Vec<f64>) {
    let planes: Vec<(f64, f64)> = x[..g.n * g.c * g.s]
        .par_chunks(g.s)
        .on_threads()
        .map(moments)
        .collect();
    let k = g.s as f64;
    let merged: Vec<(f64, f64)> = (0..g.c)
        .into_par_iter()
        .on_threads()
        .map(|c| {
            let (mut mu, mut q) = planes[c];
            let mut count = k;
            for n in 1..g.n {
                let total = count + k;
                chan_step(
                    (&mut mu, &mut q),
                    planes[n * g.c + c],
                    (k / total, count * k / total),
                );
                count = total;
            }
            (mu, q)
        })
        .collect();
    merged.into_iter().unzip()
}

/// Per-column `(mean, m2)` over a row-major `(rows, cols)` slice in one pass over memory:
/// each block of at most [`WELFORD_ROWS`] rows of a fixed piece gets its column means and sums
/// of squared deviations from one shifted pass ([`shifted_columns`]: centred on the mean of
/// the slice's first rows, then on the task's mean so far), or, where that pass's correction
/// is too large, by Welford's update ([`welford_columns`], in the compute type, shifted by the
/// block's first row for f32); the blocks' `(count, mean, m2)` are
/// merged in order with Chan et al.'s pairwise formula (`δ = mean_b − mean_a`, `m2 = m2_a +
/// m2_b + δ²·n_a·n_b/n`), in f64: first within each of at most [`MOMENT_TASKS`] tasks of
/// consecutive pieces, then the tasks' results. No `E[x²] − E[x]²` anywhere; the partition
/// depends on the shape only, so the bits do not depend on the thread count.
/// The tasks run in parallel when `parallel` is set, else one after the other on this thread
/// (the same bits either way).
///
/// Welford replaced a two-pass per piece (column sums, then the centred sums while the piece
/// was in L2): the same loads and stores of the per-column accumulators, but one pass over
/// the piece instead of two, so the memory stream never waits for an in-cache pass. Same-run
/// A/B (median of 6 alternations): BatchNorm channels last train 1.06–1.31x, GroupNorm channels
/// last 1.04–1.19x, BatchNorm1d train 0.79–1.25x (noise). The shifted pass (round 10) then
/// replaced Welford in the common case, see [`shifted_columns`].
fn column_moments<T: Element>(x: &[T], cols: usize, parallel: bool) -> (Vec<f64>, Vec<f64>) {
    column_moments_to(x, &[], cols, parallel)
}

/// [`column_moments`], prefetching `dest` (empty: nothing; else as long as `x`: the output the
/// caller's apply writes next) at the positions it reads in `x` ([`column_dev_sums`]).
fn column_moments_to<T: Element>(
    x: &[T],
    dest: &[T],
    cols: usize,
    parallel: bool,
) -> (Vec<f64>, Vec<f64>) {
    if cols == 0 {
        return (Vec::new(), Vec::new());
    }
    let rows = x.len() / cols;
    let (piece_rows, task_rows) = moment_pieces(rows, cols);
    let mut heads = vec![T::Compute::ZERO; cols];
    column_heads::<T>(&mut heads, &mut vec![T::Compute::ZERO; cols], x);
    // every task's temporaries are `Scratch` vectors, back to the worker's pool for its next
    // task or call (the task's result goes to the pool of the caller, which merges them)
    let task_len = (task_rows * cols).max(1);
    let one = |(t, task): (usize, &[T])| {
        // the caller's output where this task reads (empty: no prefetch)
        let task_dest = dest.get(t * task_len..).unwrap_or(&[]);
        let mut mean = Scratch::filled(T::Compute::ZERO, cols);
        let mut m2 = Scratch::filled(T::Compute::ZERO, cols);
        let mut shift = Scratch::filled(T::Compute::ZERO, cols);
        let mut sums = (
            Scratch::filled(T::Acc::ZERO, cols),
            Scratch::filled(T::Acc::ZERO, cols),
        );
        // the first rows' mean, then the mean of the task's rows so far: each chunk's centre
        let mut centre = Scratch::copy_of(&heads);
        let mut block = ColumnMoments::new(cols);
        let mut total = ColumnMoments::new(cols);
        let piece_len = (piece_rows * cols).max(1);
        let chunk_len = (WELFORD_ROWS * cols).max(1);
        for (p, piece) in task.chunks(piece_len).enumerate() {
            for (c, chunk) in piece.chunks(chunk_len).enumerate() {
                // the chunk and the rest of the task, which the pass prefetches ahead of itself
                let ahead = &task[p * piece_len + c * chunk_len..];
                let dest = task_dest
                    .get(p * piece_len + c * chunk_len..)
                    .unwrap_or(&[]);
                block.n = (chunk.len() / cols) as f64;
                let parts = (&mut mean[..], &mut m2[..]);
                if !shifted_columns::<T>(
                    &mut block,
                    parts,
                    (&mut sums.0, &mut sums.1),
                    &centre,
                    (chunk, ahead, dest),
                ) {
                    // Welford's moments for the columns the check rejected (a non-finite value,
                    // a centre far from the chunk's mean); the others keep their shifted sums,
                    // so one such column costs the rest no precision
                    welford_columns::<T>((&mut mean, &mut m2), &mut shift, chunk);
                    let inv = 1.0 / block.n;
                    let cols = block.mean.iter_mut().zip(&mut block.m2);
                    let ours = mean.iter().zip(&m2).zip(&shift);
                    let shifted = centre.iter().zip(sums.0.iter().zip(&*sums.1));
                    for (((bm, bq), ((&m, &q), &s)), (&h, (&sd, &sq))) in
                        cols.zip(ours).zip(shifted)
                    {
                        let (.., accepted) =
                            shifted_column(h.to_f64(), sd.to_f64(), sq.to_f64(), inv);
                        if !accepted {
                            (*bm, *bq) = (s.to_f64() + m.to_f64(), q.to_f64());
                        }
                    }
                }
                total.merge::<T>(&block);
                for (h, &m) in centre.iter_mut().zip(&total.mean) {
                    let m = T::Compute::from_f64(m);
                    *h = if m.is_finite() { m } else { T::Compute::ZERO };
                }
            }
        }
        total
    };
    let tasks: Vec<ColumnMoments> = if parallel {
        x.par_chunks(task_len)
            .on_threads()
            .enumerate()
            .map(one)
            .collect()
    } else {
        x.chunks(task_len).enumerate().map(one).collect()
    };
    let mut all = ColumnMoments::new(cols);
    for t in &tasks {
        all.merge::<T>(t);
    }
    // A non-finite value turns Welford's running mean within a piece into NaN (∞ − ∞) where
    // the mean `Σx / n` is ±∞ (PyTorch's saved mean and running mean): such columns (rare) get
    // that mean from a plain sum here, rather than a select per element in the hot loop of
    // `welford_columns` (the piece merges keep it themselves: `chan_step`). `m2` is NaN
    // either way.
    for (c, m) in all.mean.iter_mut().enumerate() {
        if m.is_nan() {
            *m = x[c..].iter().step_by(cols).map(|v| v.to_f64()).sum::<f64>() / rows as f64;
        }
    }
    (all.mean.to_vec(), all.m2.to_vec())
}

/// The partition of [`column_moments`] over `rows` rows of `cols` columns: `(piece_rows,
/// task_rows)`, rows per piece (its chunks of at most [`WELFORD_ROWS`] rows are merged in
/// order) and per task (whole pieces, at least [`MIN_TASK`] elements, at most
/// [`MOMENT_TASKS`] tasks). A piece is at least [`reduction_rows`] and at least a
/// [`MOMENT_TASKS`]-th of the rows: each chunk's shifted pass, its checks and merges cost a
/// few operations per column, which rows of thousands of columns in `reduction_rows`' pieces
/// (up to 64 of them) paid every 16–64 rows. Statistics alone, 16 MiB of f32 in one process,
/// medians of 200 calls (round 26): 4096 columns 2.9 → 1.27 ms at one thread, 1.6 → 0.82 ms
/// at two (the 16-row chunks of 4096 columns also fell back to Welford's pass wherever one
/// column's check failed); 1024 columns 1.00 → 0.95 ms / 0.60 → 0.53 ms; 64 and 256 columns
/// unchanged. Depends on the shape only.
fn moment_pieces(rows: usize, cols: usize) -> (usize, usize) {
    let piece_rows = few_pieces_rows(rows, cols);
    let min_pieces = MIN_TASK.div_ceil((piece_rows * cols).max(1));
    let task_pieces = rows.div_ceil(piece_rows).div_ceil(MOMENT_TASKS);
    (piece_rows, piece_rows * task_pieces.max(min_pieces))
}

/// Per-column `(mean, m2)` of the rows of `chunk` into `block` (whose `n` is their count) from
/// one pass, as [`moments_by`] does for a run, the columns side by side: `Σd`, `Σd²` with
/// `d = x − h_c` ([`column_dev_sums`]), `h` = `centre` (the caller's: the mean of the first
/// rows of its task, [`column_heads`], then of the rows before this chunk), and the corrected
/// two-pass formulas
/// `mean = h + Σd/n`, `m2 = Σd² − (Σd)²/n` in f64. Accepted (`true`) only when every column's
/// correction `(Σd)²/n` is at most its `m2` (the subtraction loses at most one bit; NaN fails
/// it); otherwise the caller runs Welford's pass over the chunk, which is in cache then, and
/// takes its moments for the rejected columns only ([`shifted_column`]'s test again), so a
/// non-finite value or a far centre in one column costs the others no precision. `parts` and
/// `sums` are scratch of the chunk's width (`sums` keeps `Σd`, `Σd²` for that test); `ahead`
/// is the input from the chunk's first element on (the chunk, then what the caller reads after
/// it), which the pass prefetches one block ahead, and `dest` the output at the chunk's
/// position (or empty), prefetched as read ([`column_dev_sums`]).
///
/// Round 10: 3 vector operations per element (`x − h`, `+`, `+ d·d`, the partials of
/// [`COLUMN_TILE`] columns in registers) instead of Welford's 7 with two stores. Where the
/// pass is bound by memory (f32 GroupNorm channels last: both forms read 16 MiB in about
/// 1.1 ms, one thread, statistics alone) that changes nothing; where it is bound by the
/// arithmetic (bf16 BatchNorm channels last) it bought 1.24–1.28x (docs/perf/cpu.md).
fn shifted_columns<T: Element>(
    block: &mut ColumnMoments,
    parts: (&mut [T::Compute], &mut [T::Compute]),
    (s1, s2): (&mut [T::Acc], &mut [T::Acc]),
    shift: &[T::Compute],
    (chunk, ahead, dest): (&[T], &[T], &[T]),
) -> bool {
    s1.fill(T::Acc::ZERO);
    s2.fill(T::Acc::ZERO);
    column_dev_sums::<T>((s1, s2), parts, shift, (chunk, ahead, dest));
    let n = block.n;
    let cols = block.mean.iter_mut().zip(&mut block.m2);
    let inv = 1.0 / n;
    let mut ok = true;
    for ((bm, bq), ((&h, &sd), &sq)) in cols.zip(shift.iter().zip(&*s1).zip(&*s2)) {
        let accepted;
        (*bm, *bq, accepted) = shifted_column(h.to_f64(), sd.to_f64(), sq.to_f64(), inv);
        // no early exit: the loop vectorises (a failed chunk is rare)
        ok &= accepted;
    }
    ok
}

/// One column of [`shifted_columns`]: `(mean, m2, accepted)` from centre `h` and the sums
/// `Σd`, `Σd²` of `d = x − h` over `n = 1/inv` rows; accepted when the correction `(Σd)²/n` is
/// at most `m2` (NaN is not).
#[inline(always)]
fn shifted_column(h: f64, sd: f64, sq: f64, inv: f64) -> (f64, f64, bool) {
    let offset = sd * sd * inv;
    let m2 = sq - offset;
    (h + sd * inv, m2, offset <= m2)
}

simd_clones! {
/// `shift[c]` = the mean of column `c` over the first [`moments::HEAD`] rows of `chunk` in the
/// compute type, summed relative to its first row (a constant head gives that value exactly);
/// 0 where not finite. `part` is scratch.
fn column_heads<T: Element>(shift: &mut [T::Compute], part: &mut [T::Compute], chunk: &[T]) {
    let cols = shift.len();
    let rows = (chunk.len() / cols.max(1)).min(moments::HEAD);
    let Some(first) = chunk.get(..cols) else {
        return;
    };
    for (s, &v) in shift.iter_mut().zip(first) {
        let v = v.to_compute();
        *s = if v.is_finite() { v } else { T::Compute::ZERO };
    }
    part.fill(T::Compute::ZERO);
    for row in chunk[..rows * cols].chunks_exact(cols) {
        for ((p, &s), &v) in part.iter_mut().zip(&*shift).zip(row) {
            *p += v.to_compute() - s;
        }
    }
    let inv = T::Compute::ONE / T::Compute::from_usize(rows);
    for (s, &p) in shift.iter_mut().zip(&*part) {
        let h = *s + p * inv;
        *s = if h.is_finite() { h } else { T::Compute::ZERO };
    }
}
}

simd_clones! {
/// Per-column `Σd` and `Σd²`, `d = x − shift_c`, over the rows of `chunk`, added into `s1`,
/// `s2`: compute-type partials (`p1`, `p2`, scratch) over [`moments::FLUSH`] rows each, added
/// into the accumulator type (f64 for f32 input) — the run-wise sums' scheme per column.
///
/// The tiles read each block of rows in 64-column pieces, an order the hardware prefetcher
/// does not follow, so each tile prefetches the lines it will read in the next block of
/// `ahead` (the input from the chunk's first element on), one line per line it reads.
/// Same-run A/B (round 13, alternating processes, 1 and 2 threads): BatchNorm2d NHWC train
/// 1.08–1.10x f32, 1.03–1.13x bf16; GroupNorm NHWC fwd 1.07–1.12x f32, 1.03–1.07x bf16
/// (docs/perf/cpu.md, round 13). `dest` (the caller's output from the chunk's first element
/// on, or empty) is prefetched at the lines the tile reads in this block. Results unchanged: a
/// prefetch is only a hint.
fn column_dev_sums<T: Element>(
    sums: (&mut [T::Acc], &mut [T::Acc]),
    parts: (&mut [T::Compute], &mut [T::Compute]),
    shift: &[T::Compute],
    input: (&[T], &[T], &[T]),
) {
    let ((s1, s2), (p1, p2), (chunk, ahead, dest)) = (sums, parts, input);
    let cols = shift.len();
    let tiled = cols - cols % COLUMN_TILE;
    let block_len = (moments::FLUSH * cols).max(1);
    for (k, block) in chunk.chunks(block_len).enumerate() {
        let next = ahead.get((k + 1) * block_len..).unwrap_or(&[]);
        let here = dest.get(k * block_len..).unwrap_or(&[]);
        for c0 in (0..tiled).step_by(COLUMN_TILE) {
            let (mut a, mut b) = ([T::Compute::ZERO; COLUMN_TILE], [T::Compute::ZERO; COLUMN_TILE]);
            let sh = &shift[c0..c0 + COLUMN_TILE];
            for (r, row) in block.chunks_exact(cols).enumerate() {
                let xr = &row[c0..c0 + COLUMN_TILE];
                for i in 0..COLUMN_TILE {
                    dev_step(&mut a[i], &mut b[i], xr[i].to_compute() - sh[i]);
                }
                for l in (0..COLUMN_TILE).step_by(prefetch::line_elems::<T>()) {
                    prefetch::line(next, r * cols + c0 + l);
                    prefetch::line(here, r * cols + c0 + l);
                }
            }
            p1[c0..c0 + COLUMN_TILE].copy_from_slice(&a);
            p2[c0..c0 + COLUMN_TILE].copy_from_slice(&b);
        }
        p1[tiled..].fill(T::Compute::ZERO);
        p2[tiled..].fill(T::Compute::ZERO);
        for row in block.chunks_exact(cols) {
            let tail = p1[tiled..].iter_mut().zip(&mut p2[tiled..]);
            for ((a, b), (&s, &v)) in tail.zip(shift[tiled..].iter().zip(&row[tiled..])) {
                dev_step(a, b, v.to_compute() - s);
            }
        }
        moments::add_parts::<T>(s1, p1);
        moments::add_parts::<T>(s2, p2);
    }
}
}

/// `a += d`, `b += d²` (one term of [`column_dev_sums`]).
#[inline(always)]
fn dev_step<C: Real>(a: &mut C, b: &mut C, d: C) {
    *a += d;
    *b += d * d;
}

/// Columns whose [`column_dev_sums`] partials stay in registers over a block of rows (four
/// AVX-512 vectors of f32 per sum).
const COLUMN_TILE: usize = 64;

/// Rows of one [`welford_columns`] block (at most): its compute-type moments are merged into
/// the task's f64 ones (Chan) after this many updates, which bounds their rounding. (128 made
/// the merges cost bf16 inputs 0.79–0.96x in a same-run A/B; most pieces are smaller anyway.)
const WELFORD_ROWS: usize = 1024;

simd_clones! {
/// Per-column mean and sum of squared deviations of the rows of `chunk` by Welford's update
/// (`δ = x − mean`, `mean += δ/n`, `m2 += δ·(x − mean)`) in the compute type, in one pass over
/// the rows; overwrites `mean`, `m2` and `shift`; the column mean is `shift + mean`. The
/// count is the same for every column, so `1/n` is one scalar per row and the columns
/// vectorise: f32 lanes for f32 input, twice as many per vector as the f64 of the accumulator
/// type, which this loop used before round 8 (GroupNorm channels last spent a third of its
/// time here).
///
/// Where the compute type is the input's own (f32, f64), the updates take `x − shift` with
/// `shift` the chunk's first row (0 where not finite): they work at the data's spread, not its
/// offset, so an f32 column near 1e4 with a spread of 1e-2 keeps its digits, and a constant
/// column stays exactly 0. f16/bf16 inputs (8 or 11 significant bits, computed in f32's 24)
/// need no shift and skip its subtraction (`shift` = 0): with it, 0.88–0.96x in a same-run A/B.
fn welford_columns<T: Element>(
    moments: (&mut [T::Compute], &mut [T::Compute]),
    shift: &mut [T::Compute],
    chunk: &[T],
) {
    let (mean, m2) = moments;
    let cols = mean.len();
    mean.fill(T::Compute::ZERO);
    m2.fill(T::Compute::ZERO);
    shift.fill(T::Compute::ZERO);
    let Some(first) = chunk.get(..cols) else {
        return;
    };
    let rows = chunk.chunks_exact(cols).enumerate();
    if std::mem::size_of::<T>() < std::mem::size_of::<T::Compute>() {
        for (r, row) in rows {
            let inv = T::Compute::ONE / T::Compute::from_usize(r + 1);
            for ((m, q), &v) in mean.iter_mut().zip(m2.iter_mut()).zip(row) {
                welford_step(m, q, v.to_compute(), inv);
            }
        }
        return;
    }
    for (s, &v) in shift.iter_mut().zip(first) {
        let v = v.to_compute();
        *s = if v.is_finite() { v } else { T::Compute::ZERO };
    }
    for (r, row) in rows {
        let inv = T::Compute::ONE / T::Compute::from_usize(r + 1);
        for (((m, q), &s), &v) in mean.iter_mut().zip(m2.iter_mut()).zip(&*shift).zip(row) {
            welford_step(m, q, v.to_compute() - s, inv);
        }
    }
}
}

/// One Welford update of `(mean, m2)` with `x`, `inv` = 1/count.
#[inline(always)]
fn welford_step<C: Real>(m: &mut C, q: &mut C, x: C, inv: C) {
    let d = x - *m;
    *m += d * inv;
    *q += d * (x - *m);
}

/// At least this many elements per task of [`column_moments`] (whole pieces): each task starts
/// its own sums and merges them, which cost GroupNorm channels last (one 256 KiB sample of
/// f32 in 16 tasks of 64 rows) more than its pass over the rows.
const MIN_TASK: usize = 64 * 1024;

/// At most this many tasks in [`column_moments`] (each merges its pieces' moments as it goes).
const MOMENT_TASKS: usize = 16;

/// Per-column count, mean and sum of squared deviations of a set of rows.
struct ColumnMoments {
    n: f64,
    mean: Scratch<f64>,
    m2: Scratch<f64>,
}

impl ColumnMoments {
    fn new(cols: usize) -> Self {
        ColumnMoments {
            n: 0.0,
            mean: Scratch::filled(0.0, cols),
            m2: Scratch::filled(0.0, cols),
        }
    }

    /// Adds the rows of `b` (Chan et al.); merging into an empty set copies `b`.
    fn merge<T: Element>(&mut self, b: &ColumnMoments) {
        if self.n == 0.0 {
            self.n = b.n;
            self.mean.copy_from_slice(&b.mean);
            self.m2.copy_from_slice(&b.m2);
            return;
        }
        let total = self.n + b.n;
        chan_merge::<T>(
            (&mut self.mean, &mut self.m2),
            (&b.mean, &b.m2),
            (b.n / total, self.n * b.n / total),
        );
        self.n = total;
    }
}

simd_clones! {
/// `mean_a += δ·f_b`, `m2_a += m2_b + δ²·w` per column, `δ = mean_b − mean_a` (f64; `T`, the
/// input's element type, picks the clones: [`simd::narrow`]).
#[allow(clippy::extra_unused_type_parameters)] // `T` only chooses the clones
fn chan_merge<T: Element>(
    a: (&mut [f64], &mut [f64]),
    b: (&[f64], &[f64]),
    factors: (f64, f64),
) {
    let ((mean, m2), (mean_b, m2_b), (fb, w)) = (a, b, factors);
    for ((ma, m2a), (&mb, &m2b)) in mean.iter_mut().zip(m2).zip(mean_b.iter().zip(m2_b)) {
        chan_step((ma, m2a), (mb, m2b), (fb, w));
    }
}
}

/// One Chan et al. merge of `(mean_b, m2_b)` into `(mean_a, m2_a)` with the count factors
/// `f_b = n_b/n` and `w = n_a·n_b/n`. A non-finite side keeps the mean of `Σx / n` (±∞, or
/// NaN), which `+= δ·f_b` would turn into NaN (`∞ − ∞`) at the next finite side, as in the
/// CUDA kernels' merge and SyncBatchNorm's; `m2` is NaN either way.
#[inline(always)]
fn chan_step((ma, m2a): (&mut f64, &mut f64), (mb, m2b): (f64, f64), (fb, w): (f64, f64)) {
    let d = mb - *ma;
    *ma = if ma.is_finite() && mb.is_finite() {
        *ma + d * fb
    } else {
        *ma + mb
    };
    *m2a += m2b + d * d * w;
}

/// `(mean, m2)` over one channel's planes taken as one run ([`moments_by`]): each pass adds
/// the planes' sums in `n` order. The pass from memory prefetches the next plane (the planes lie
/// C·S apart, so the hardware prefetcher restarts at each one) and the plane's destination in
/// `dests` (the fused forward's output planes, written right after; none when shorter).
fn planes_moments<T: Element>(planes: &[&[T]], dests: &[&[T]]) -> (f64, f64) {
    let count: usize = planes.iter().map(|p| p.len()).sum();
    let head = planes
        .iter()
        .find(|p| !p.is_empty())
        .copied()
        .unwrap_or(&[]);
    moments_by(count, head, |h, pass| {
        let (mut sd, mut sq) = (T::Acc::ZERO, T::Acc::ZERO);
        for (i, p) in planes.iter().enumerate() {
            let (d, q) = match pass {
                Pass::Single => {
                    let next = planes.get(i + 1).copied().unwrap_or(&[]);
                    let dest = dests.get(i).copied().unwrap_or(&[]);
                    moments::dev_sums_prefetching(p, h, next, dest)
                }
                Pass::Again => moments::dev_sums(p, h),
            };
            sd += d;
            sq += q;
        }
        (sd, sq)
    })
}

/// BatchNorm training forward in [`ChannelLayout::First`] (local statistics only), fused per
/// channel: the channel's moments (`planes_moments`), `r = finish(m2)` and the apply
/// `y = (x − μ)·(r·γ_c) + β_c` of its `N` planes run back to back while the channel is in
/// L2, so `x` is read from memory once instead of twice. The same operations in the same
/// order as [`channel_moments`] then [`apply_channel`], so the results are bit-identical.
/// A channel that does not fit in L2 with its output (`channel_past_l2`) would be read from
/// memory twice either way: such tensors take [`channel_moments`] (in memory order) and
/// [`apply_channel`] themselves. Returns `(mean, m2, r)` per channel.
pub fn batch_norm_first_fused<T: Element>(
    x: &[T],
    y: &mut [T],
    g: Geom,
    finish: impl Fn(f64) -> T::Compute + Sync,
    gamma: &[T::Compute],
    beta: &[T::Compute],
) -> (Vec<f64>, Vec<f64>, Vec<T::Compute>) {
    let total = g.n * g.c * g.s;
    if total == 0 || channel_past_l2::<T>(g) {
        // nothing to fuse: the channel would be read from memory again by the apply
        let (mean, m2) = channel_moments(x, g, ChannelLayout::First);
        let r: Vec<T::Compute> = m2.iter().map(|&m| finish(m)).collect();
        apply_channels_first(x, y, g, (&mean, &r), (gamma, beta));
        return (mean, m2, r);
    }
    // Each channel's output planes, in `n` order (disjoint borrows of `y`).
    let mut outs: Vec<Vec<&mut [T]>> = (0..g.c).map(|_| Vec::with_capacity(g.n)).collect();
    for (i, yp) in y[..total].chunks_mut(g.s).enumerate() {
        outs[i % g.c].push(yp);
    }
    let stats: Vec<(f64, f64, T::Compute)> = outs
        .into_par_iter()
        .on_threads()
        .enumerate()
        .map(|(c, ys)| {
            let planes: Vec<&[T]> = (0..g.n)
                .map(|n| &x[(n * g.c + c) * g.s..(n * g.c + c + 1) * g.s])
                .collect();
            // the output planes are prefetched with the input where that pays (they stay in
            // L2 until the apply: the channel fits there with its output, `channel_past_l2`)
            let dests: Vec<&[T]> = if prefetch::output_pays::<T>() {
                ys.iter().map(|p| &**p).collect()
            } else {
                Vec::new()
            };
            let (mean, m2) = planes_moments(&planes, &dests);
            let rs = finish(m2);
            let (shift, scale) = (Centre::of(mean), rs * gamma[c]);
            for (yp, xp) in ys.into_iter().zip(planes) {
                affine_run(xp, yp, shift, scale, beta[c]);
            }
            (mean, m2, rs)
        })
        .collect();
    unzip3(stats)
}

/// `y = (x − μ_c)·(r_c·γ_c) + β_c` over channels-first data ([`apply_channel`] with
/// BatchNorm's per-channel coefficients: the unfused forward's apply).
fn apply_channels_first<T: Element>(
    x: &[T],
    y: &mut [T],
    g: Geom,
    (mean, r): (&[f64], &[T::Compute]),
    (gamma, beta): (&[T::Compute], &[T::Compute]),
) {
    let shift: Vec<Centre<T::Compute>> = mean.iter().map(|&m| Centre::of(m)).collect();
    let scale: Vec<T::Compute> = r.iter().zip(gamma).map(|(&r, &w)| r * w).collect();
    let k = Coefficients {
        shift: &shift,
        scale: &scale,
        offset: beta,
        per_sample: false,
        fold: false,
    };
    apply_channel(x, y, g, ChannelLayout::First, &k);
}

/// Splits a vector of triples into three vectors.
fn unzip3<A, B, C>(v: Vec<(A, B, C)>) -> (Vec<A>, Vec<B>, Vec<C>) {
    let mut out = (
        Vec::with_capacity(v.len()),
        Vec::with_capacity(v.len()),
        Vec::with_capacity(v.len()),
    );
    for (a, b, c) in v {
        out.0.push(a);
        out.1.push(b);
        out.2.push(c);
    }
    out
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
    match layout {
        ChannelLayout::First => {
            let stats: Vec<(f64, f64)> = x[..g.n * g.c * g.s]
                .par_chunks(count)
                .on_threads()
                .map(moments)
                .collect();
            stats.into_iter().unzip()
        }
        ChannelLayout::Last => {
            let mut means = Vec::with_capacity(n_stats);
            let mut m2s = Vec::with_capacity(n_stats);
            let sample_len = g.s * g.c;
            for n in 0..g.n {
                let xs = &x[n * sample_len..(n + 1) * sample_len];
                let (gmean, gm2) = sample_group_moments(xs, &[], g.c, cg, true);
                means.extend(gmean);
                m2s.extend(gm2);
            }
            (means, m2s)
        }
    }
}

/// Channels last: the per-group `(mean, m2)` of one sample's `(S, C)` rows, groups of `cg`
/// consecutive channels: the channels' moments in one pass ([`column_moments`]), then each
/// group's channels merged in order (Chan et al., equal counts).
fn sample_group_moments<T: Element>(
    xs: &[T],
    dest: &[T],
    c: usize,
    cg: usize,
    parallel: bool,
) -> (Vec<f64>, Vec<f64>) {
    let n = (xs.len() / c.max(1)) as f64;
    let (mean, m2) = column_moments_to(xs, dest, c, parallel);
    mean.chunks(cg.max(1))
        .zip(m2.chunks(cg.max(1)))
        .map(|(ms, qs)| {
            let (mut mu, mut q, mut k) = (ms[0], qs[0], n);
            for (&mb, &qb) in ms.iter().zip(qs).skip(1) {
                let total = k + n;
                chan_step((&mut mu, &mut q), (mb, qb), (n / total, k * n / total));
                k = total;
            }
            (mu, q)
        })
        .unzip()
}

/// `(mean, m2, r)` of the groups of one sample.
type GroupStats<C> = (Vec<f64>, Vec<f64>, Vec<C>);

/// GroupNorm's per-channel affine and the `finish` that turns a group's `m2` into its `r`.
pub struct GroupAffine<'a, C> {
    pub groups: usize,
    pub finish: &'a (dyn Fn(f64) -> C + Sync),
    pub gamma: &'a [C],
    pub beta: &'a [C],
}

/// GroupNorm / InstanceNorm (`groups = C`) forward, statistics and apply fused per group
/// (channels first) or per sample (channels last): `y = (x − μ_g)·(r_g·γ_c) + β_c`.
/// Returns `(mean, m2, r)` per `(n, g)`.
pub fn group_norm_fused<T: Element>(
    x: &[T],
    y: &mut [T],
    g: Geom,
    layout: ChannelLayout,
    p: &GroupAffine<'_, T::Compute>,
) -> GroupStats<T::Compute> {
    if g.c / p.groups * g.s == 0 || g.n == 0 {
        let (mean, m2) = group_moments(x, g, p.groups, layout);
        let r = m2.iter().map(|&m| (p.finish)(m)).collect();
        return (mean, m2, r);
    }
    match layout {
        ChannelLayout::First => group_norm_first_fused((x, y), g, p),
        ChannelLayout::Last => group_norm_last_fused((x, y), g, p),
    }
}

/// GroupNorm / InstanceNorm (`groups = C`) forward in [`ChannelLayout::Last`], one task per
/// sample (when there are at least as many samples as threads): the sample's group moments
/// ([`sample_group_moments`], its pieces one after the other), `finish` and the apply
/// `y = (x − μ_g)·(r_g·γ_c) + β_c` of its rows, back to back while the sample is in cache —
/// one parallel pass instead of three per sample. A sample whose groups all pass [`foldable`]
/// is applied in the folded form `x·(r_g·γ_c) + (β_c − μ_g·r_g·γ_c)`, two coefficient streams
/// per row instead of three. The same operations in the same order as [`group_moments`] then
/// [`apply_channel`] on the sample (its `fold` set as here), so the results are bit-identical
/// to them (and for every thread count). Returns `(mean, m2, r)` per `(n, g)`.
fn group_norm_last_fused<T: Element>(
    (x, y): (&[T], &mut [T]),
    g: Geom,
    p: &GroupAffine<'_, T::Compute>,
) -> GroupStats<T::Compute> {
    let (groups, finish, gamma, beta) = (p.groups, p.finish, p.gamma, p.beta);
    let cg = g.c / groups;
    let sample = g.s * g.c;
    let total = g.n * sample;
    // the statistics pass prefetches the sample's `y` (4- and 8-byte elements, a sample whose
    // `x` and `y` fit in L2), so that the apply stores into cached lines: same-binary A/B on a
    // Xeon (Emerald Rapids) VM, 16x256x32x32 f32, 1.21x at 1 and 2 threads; bf16 0.88x
    let prefetch_y = prefetch::output_pays::<T>() && prefetch::fits_l2::<T>(2 * sample);
    let per_sample = |xs: &[T], ys: &mut [T], parallel: bool| {
        let dest: &[T] = if prefetch_y { ys } else { &[] };
        let (mean, m2) = sample_group_moments(xs, dest, g.c, cg, parallel);
        let r: Vec<T::Compute> = m2.iter().map(|&v| finish(v)).collect();
        let shift: Vec<_> = (0..g.c)
            .map(|c| Centre::<T::Compute>::of(mean[c / cg]))
            .collect();
        let scale: Vec<T::Compute> = (0..g.c).map(|c| r[c / cg] * gamma[c]).collect();
        // the folded form where it is as accurate (decided per sample)
        let fold = foldable(mean.iter().copied().zip(r.iter().copied()));
        let (hi, offset) = row_coefficients((fold, g.c), &shift, &scale, beta);
        let k = (&hi[..], &scale[..], &offset[..]);
        let split = pairs::RowSplit::of::<T>(g.c, k);
        let split = split.as_ref().map(|s| s.view(0..g.c));
        if parallel {
            let rows = rows_per_piece(g.c);
            ys.par_chunks_mut(rows * g.c)
                .on_threads()
                .zip(xs.par_chunks(rows * g.c).on_threads())
                .for_each(|(yc, xc)| affine_rows(xc, yc, k, split));
        } else {
            affine_rows(xs, ys, k, split);
        }
        (mean, m2, r)
    };
    let stats: Vec<GroupStats<T::Compute>> = if g.n < threads::current_threads() {
        // Too few samples to give every thread one: parallel inside each sample.
        y[..total]
            .chunks_mut(sample)
            .zip(x[..total].chunks(sample))
            .map(|(ys, xs)| per_sample(xs, ys, true))
            .collect()
    } else {
        y[..total]
            .par_chunks_mut(sample)
            .on_threads()
            .zip(x[..total].par_chunks(sample).on_threads())
            .map(|(ys, xs)| per_sample(xs, ys, false))
            .collect()
    };
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for (m, v, r) in stats {
        out.0.extend(m);
        out.1.extend(v);
        out.2.extend(r);
    }
    out
}

/// GroupNorm / InstanceNorm (`groups = C`) forward in [`ChannelLayout::First`], fused per
/// `(n, g)` group: the group's moments ([`moments_by`]; `finish` gives `r`) and the
/// apply `y = (x − μ)·(r·γ_c) + β_c` of its planes run back to back while the group
/// (`(C/G)·S` elements) is in L1/L2, so `x` is read from memory once. The same operations in
/// the same order as [`group_moments`] then [`apply_channel`], so the results are
/// bit-identical. Returns `(mean, m2, r)` per `(n, g)`.
fn group_norm_first_fused<T: Element>(
    (x, y): (&[T], &mut [T]),
    g: Geom,
    p: &GroupAffine<'_, T::Compute>,
) -> GroupStats<T::Compute> {
    let count = g.c / p.groups * g.s;
    let mut stats = vec![(0.0, 0.0, T::Compute::ZERO); g.n * p.groups];
    fused_runs(x, y, count, &mut stats, |i, xg, yg, mean, m2| {
        let rs = (p.finish)(m2);
        let c0 = (i % p.groups) * (g.c / p.groups);
        for (j, (yp, xp)) in yg.chunks_mut(g.s).zip(xg.chunks(g.s)).enumerate() {
            let c = c0 + j;
            affine_run(xp, yp, Centre::of(mean), rs * p.gamma[c], p.beta[c]);
        }
        (mean, m2, rs)
    });
    unzip3(stats)
}

/// Per-row moments over a row-major `(rows, cols)` slice (LayerNorm).
pub fn row_moments<T: Element>(x: &[T], rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>) {
    if cols == 0 {
        return (vec![0.0; rows], vec![0.0; rows]);
    }
    let stats: Vec<(f64, f64)> = x[..rows * cols]
        .par_chunks(cols)
        .on_threads()
        .map(moments)
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
    /// Every channel passed [`foldable`]: channels last may apply `x·scale + offset'`.
    pub fold: bool,
}

/// `y = (x − shift)·scale + offset` with per-channel (or per-(n, c)) coefficients.
///
/// The centred form (rather than PyTorch's folded `x·α + β'`) keeps the cancellation in the
/// subtraction of two nearby values, so inputs with a large mean keep their precision. Channels
/// last, coefficients marked `fold` ([`foldable`]: every mean within [`FOLD_LIMIT`] standard
/// deviations, where the folded form is as accurate) take the folded form: two coefficient
/// streams per row instead of three (`affine_rows`).
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
                .on_threads()
                .zip(x.par_chunks(planes * g.s).on_threads())
                .enumerate()
                .for_each(|(p, (yc, xc))| {
                    for (j, (yp, xp)) in yc.chunks_mut(g.s).zip(xc.chunks(g.s)).enumerate() {
                        let plane = p * planes + j;
                        let i = idx(plane / g.c, plane % g.c);
                        affine_run(xp, yp, k.shift[i], k.scale[i], k.offset[i]);
                    }
                });
        }
        ChannelLayout::Last => {
            let (hi, offset) = row_coefficients((k.fold, g.c), k.shift, k.scale, k.offset);
            let fold = hi.is_empty(); // (`total` > 0: the centred form has coefficients)
            // bf16: the coefficients split into even and odd columns once, for every run
            let split = pairs::RowSplit::of::<T>(g.c, (&hi, k.scale, &offset));
            let rows = rows_per_piece(g.c);
            y.par_chunks_mut(rows * g.c)
                .on_threads()
                .zip(x.par_chunks(rows * g.c).on_threads())
                .enumerate()
                .for_each(|(p, (yc, xc))| {
                    sample_runs((p * rows, xc.len() / g.c), g, k.per_sample, |n, span| {
                        let cs = idx(n, 0)..idx(n, 0) + g.c;
                        let hs = if fold { &hi[..] } else { &hi[cs.clone()] };
                        let words = split.as_ref().map(|s| s.view(cs.clone()));
                        let k = (hs, &k.scale[cs.clone()], &offset[cs]);
                        affine_rows(&xc[span.clone()], &mut yc[span], k, words);
                    });
                });
        }
    }
}

/// Channels last: splits the rows `first .. first + rows` of a work piece (rows of `C`
/// elements, `S` rows per sample) into runs within one sample, and calls `f(n, span)` with the
/// sample and the run's element range relative to the piece. Coefficients shared by every
/// sample (`per_sample` false) need no split: one run of the whole piece, `n` its first
/// row's sample. (BatchNorm1d has `S` = 1, so a split made a call per row: 4096 calls of the
/// row kernel for the standard 4096x1024 case, its dispatch and slicing in each.)
pub(crate) fn sample_runs(
    (first, rows): (usize, usize),
    g: Geom,
    per_sample: bool,
    mut f: impl FnMut(usize, std::ops::Range<usize>),
) {
    let s = g.s.max(1);
    if !per_sample {
        f(first / s, 0..rows * g.c);
        return;
    }
    let (mut r, end) = (first, first + rows);
    while r < end {
        let run_end = ((r / s + 1) * s).min(end);
        f(r / s, (r - first) * g.c..(run_end - first) * g.c);
        r = run_end;
    }
}

/// LayerNorm forward fused per row over row-major `(rows, cols)`: the row's moments
/// ([`moments_by`]; `finish` gives `r`) and the apply `y = (x − μ)·r·γ + β` run back to
/// back while the row is in L1/L2, so `x` is read from memory once. The same operations in the
/// same order as [`row_moments`] then [`apply_rows`], so the results are bit-identical.
/// Runs through `fused_runs` (which prefetches the next row).
/// Returns the mean (rounded to the compute type, as PyTorch's saved mean) and the `r` of
/// every row; the per-row pairs are gathered in [`Scratch`] memory, so the two returned
/// vectors are the call's only allocations.
pub fn layer_norm_fused<T: Element>(
    x: &[T],
    y: &mut [T],
    rows: usize,
    cols: usize,
    finish: impl Fn(f64) -> T::Compute + Sync,
    weight: Option<&[T::Compute]>,
    bias: Option<&[T::Compute]>,
) -> (Vec<T::Compute>, Vec<T::Compute>) {
    if rows * cols == 0 {
        let (mean, m2) = row_moments(x, rows, cols);
        let mean = mean.into_iter().map(T::Compute::from_f64).collect();
        return (mean, m2.into_iter().map(finish).collect());
    }
    let mut stats = Scratch::filled((T::Compute::ZERO, T::Compute::ZERO), rows);
    let split = row_split::<T>(cols, weight, bias);
    fused_runs(x, y, cols, &mut stats, |_, xr, yr, mean, m2| {
        let rs = finish(m2);
        layer_norm_row(xr, yr, Centre::of(mean), rs, weight, bias, split.as_ref());
        (T::Compute::from_f64(mean), rs)
    });
    stats.iter().copied().unzip()
}

/// Statistics and apply fused per contiguous run of `len` elements (LayerNorm rows, GroupNorm
/// / InstanceNorm channels-first groups), for the `out.len()` runs of `x`: each run's
/// statistics ([`moments_by`]: one pass from memory in the common case, a second one from
/// cache when the run's head was far from its mean), then `out[i] = apply(i, x_run, y_run,
/// mean, m2)` while the run is in L1/L2, so `x` is read from memory once. The statistics pass
/// prefetches `x` ahead of itself ([`prefetch::input_ahead`]: the next run where it fits in
/// L1 with this one, else 1 KiB ahead) and, when the run's `x` and `y` fit in L1 together
/// ([`prefetch::fits_l1`]), this run's `y`, one line of each per line it reads
/// (same-run A/Bs: docs/perf/cpu.md, "Software prefetch", "Round 9", "Round 13"). The runs are
/// split into at most [`ROW_BLOCKS`] blocks of consecutive runs (a partition by shape only;
/// each run's results do not depend on it at all).
fn fused_runs<T: Element, S: Send>(
    x: &[T],
    y: &mut [T],
    len: usize,
    out: &mut [S],
    apply: impl Fn(usize, &[T], &mut [T], f64, f64) -> S + Sync,
) {
    let runs = out.len();
    if runs * len == 0 {
        return;
    }
    let block = runs.div_ceil(ROW_BLOCKS);
    let next_input = prefetch::next_input_pays::<T>();
    let one_block = |b: usize, ((yb, xb), ob): ((&mut [T], &[T]), &mut [S])| {
        for (r, o) in ob.iter_mut().enumerate() {
            let xr = &xb[r * len..(r + 1) * len];
            let x_next: &[T] = if next_input {
                part(xb, &prefetch::input_ahead::<T>(r, len))
            } else {
                &[]
            };
            let yr = &mut yb[r * len..(r + 1) * len];
            // one pass from memory in the common case, prefetching `x` ahead (where that pays:
            // `prefetch::next_input_pays`) and (when both fit in L1) this run's `y` meanwhile
            let y_ahead: &[T] = if prefetch::fits_l1::<T>(2 * len) {
                yr
            } else {
                &[]
            };
            let (mean, m2) = moments_by(len, xr, |h, pass| match pass {
                Pass::Single => moments::dev_sums_prefetching(xr, h, x_next, y_ahead),
                Pass::Again => moments::dev_sums(xr, h),
            });
            *o = apply(b * block + r, xr, yr, mean, m2);
        }
    };
    let (ys, xs) = (&mut y[..runs * len], &x[..runs * len]);
    if threads::current_threads() == 1 {
        // the same blocks in the same order, on this thread
        let blocks = ys.chunks_mut(block * len).zip(xs.chunks(block * len));
        for (b, item) in blocks.zip(out.chunks_mut(block)).enumerate() {
            one_block(b, item);
        }
    } else {
        ys.par_chunks_mut(block * len)
            .on_threads()
            .zip(xs.par_chunks(block * len))
            .zip(out.par_chunks_mut(block))
            .enumerate()
            .for_each(|(b, item)| one_block(b, item));
    }
}

/// At most this many blocks of consecutive runs in [`fused_runs`].
const ROW_BLOCKS: usize = 256;

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
    let split = row_split::<T>(cols, weight, bias);
    y[..rows * cols]
        .par_chunks_mut(cols)
        .on_threads()
        .zip(x[..rows * cols].par_chunks(cols).on_threads())
        .enumerate()
        .for_each(|(r, (yr, xr))| {
            layer_norm_row(xr, yr, mean[r], rstd[r], weight, bias, split.as_ref())
        });
}

/// LayerNorm's γ and β split into even and odd columns for bf16 rows of an even length
/// ([`pairs::layer_norm_row`]); `None` otherwise.
fn row_split<T: Element>(
    cols: usize,
    weight: Option<&[T::Compute]>,
    bias: Option<&[T::Compute]>,
) -> Option<pairs::RowAffine> {
    let usable = |c: Option<&[T::Compute]>| c.is_none_or(|c| c.len() == cols);
    (pairs::splits::<T>(cols) && usable(weight) && usable(bias)).then(|| pairs::RowAffine {
        weight: weight.map(pairs::Split::of),
        bias: bias.map(pairs::Split::of),
    })
}

/// Local response normalisation parameters.
#[derive(Clone, Copy, Debug)]
pub struct LrnParams {
    pub size: usize,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
}

/// How `d^beta` is computed: `powf` in general, square roots for the common exponents (within
/// an ulp or two of `powf`, and vectorisable).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Power<C> {
    /// `d^0.75 = sqrt(d)·sqrt(sqrt(d))` (the default beta).
    ThreeQuarters,
    /// `d^0.5 = sqrt(d)`.
    Half,
    /// `d^1 = d`.
    One,
    General(C),
}

impl<C: Real> Power<C> {
    /// `v / d^0.75`.
    #[inline(always)]
    fn div_three_quarters(v: C, d: C) -> C {
        let r = d.sqrt();
        v / (r * r.sqrt())
    }
    /// `v / d^0.5`.
    #[inline(always)]
    fn div_half(v: C, d: C) -> C {
        v / d.sqrt()
    }
    /// `v / d`.
    #[inline(always)]
    fn div_one(v: C, d: C) -> C {
        v / d
    }

    fn of(beta: f64) -> Self {
        match beta {
            0.75 => Power::ThreeQuarters,
            0.5 => Power::Half,
            1.0 => Power::One,
            b => Power::General(C::from_f64(b)),
        }
    }
}

/// The per-call constants of the LocalResponseNorm denominator `(k + sumsq·scale)^beta`, with
/// `scale = alpha/size` taken once per call (a division per element less than
/// `sumsq/size·alpha`: 1.24–1.28x for the channels-first plane kernel; within an ulp).
#[derive(Clone, Copy, Debug)]
struct LrnDenom<C> {
    scale: C,
    k: C,
    pow: Power<C>,
}

impl<C: Real> LrnDenom<C> {
    fn new(size: C, alpha: C, k: C, pow: Power<C>) -> Self {
        LrnDenom {
            scale: alpha / size,
            k,
            pow,
        }
    }

    /// `k + sumsq·scale`.
    #[inline(always)]
    fn base(self, sumsq: C) -> C {
        sumsq * self.scale + self.k
    }
}

/// Positions of a channels-first LocalResponseNorm plane taken at once by [`lrn_plane`]: their
/// window sums stay in vector registers.
const LRN_CHUNK: usize = 16;

simd_clones! {
/// One output plane of the channels-first LocalResponseNorm, `y = x / (k + sum·(alpha/size))^beta`
/// with `sum` the squares of the window's planes (`window`, in channel order) at the same
/// position: chunk by chunk of [`LRN_CHUNK`] positions, the sums are taken from zero in window
/// order in registers and divided out at once. Before: a plane-sized accumulator zeroed, then
/// read and written once per window plane, then read by the division pass (37 % of the time in
/// the accumulation). The same additions in the same order and the same denominator as
/// [`lrn_divide`], so the same bits as the channels-last path.
fn lrn_plane<T: Element>(window: &[&[T]], x: &[T], y: &mut [T], den: LrnDenom<T::Compute>) {
    let base = move |a: T::Compute| den.base(a);
    match den.pow {
        Power::ThreeQuarters => lrn_plane_by(window, x, y, base, Power::div_three_quarters),
        Power::Half => lrn_plane_by(window, x, y, base, Power::div_half),
        Power::One => lrn_plane_by(window, x, y, base, Power::div_one),
        Power::General(b) => lrn_plane_by(window, x, y, base, |v, d| v / d.powf(b)),
    }
}
}

/// [`lrn_plane`] for one exponent (`div(v, d) = v / d^beta`): one loop, no branch on `beta`.
#[inline(always)]
fn lrn_plane_by<T: Element>(
    window: &[&[T]],
    x: &[T],
    y: &mut [T],
    base: impl Fn(T::Compute) -> T::Compute,
    div: impl Fn(T::Compute, T::Compute) -> T::Compute,
) {
    let n = x.len().min(y.len());
    let full = n - n % LRN_CHUNK;
    for i in (0..full).step_by(LRN_CHUNK) {
        lrn_chunk::<T, LRN_CHUNK>(window, x, y, i, &base, &div);
    }
    for i in full..n {
        lrn_chunk::<T, 1>(window, x, y, i, &base, &div);
    }
}

/// Positions `i..i + L` of [`lrn_plane_by`] (`L` a constant: the loops unroll into vectors).
#[inline(always)]
fn lrn_chunk<T: Element, const L: usize>(
    window: &[&[T]],
    x: &[T],
    y: &mut [T],
    i: usize,
    base: &impl Fn(T::Compute) -> T::Compute,
    div: &impl Fn(T::Compute, T::Compute) -> T::Compute,
) {
    let mut acc = [T::Compute::ZERO; L];
    for p in window {
        let q = &p[i..i + L];
        for j in 0..L {
            let v = q[j].to_compute();
            acc[j] += v * v;
        }
    }
    let (xq, yq) = (&x[i..i + L], &mut y[i..i + L]);
    for j in 0..L {
        yq[j] = T::from_compute(div(xq[j].to_compute(), base(acc[j])));
    }
}

simd_clones! {
/// `y = x / (k + sumsq·(alpha/size))^beta` elementwise, `sumsq` from `acc`.
fn lrn_divide<T: Element>(x: &[T], y: &mut [T], acc: &[T::Compute], den: LrnDenom<T::Compute>) {
    let base = move |a: T::Compute| den.base(a);
    for r in prefetch::store_ranges(y, x.len()) {
        let items = y[r.clone()].iter_mut().zip(&x[r.clone()]).zip(part(acc, &r));
        lrn_items(items, base, den.pow);
    }
}
}

/// The body of [`lrn_divide`] over one range of its outputs.
#[inline(always)]
fn lrn_items<'a, T: Element>(
    items: impl Iterator<Item = ((&'a mut T, &'a T), &'a T::Compute)>,
    base: impl Fn(T::Compute) -> T::Compute,
    pow: Power<T::Compute>,
) {
    match pow {
        Power::ThreeQuarters => items.for_each(|((o, &v), &a)| {
            *o = T::from_compute(Power::div_three_quarters(v.to_compute(), base(a)));
        }),
        Power::Half => items.for_each(|((o, &v), &a)| {
            *o = T::from_compute(Power::div_half(v.to_compute(), base(a)));
        }),
        Power::One => items.for_each(|((o, &v), &a)| {
            *o = T::from_compute(Power::div_one(v.to_compute(), base(a)));
        }),
        Power::General(b) => items.for_each(|((o, &v), &a)| {
            *o = T::from_compute(v.to_compute() / base(a).powf(b));
        }),
    }
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
    let den = LrnDenom::new(
        T::Compute::from_usize(p.size),
        T::Compute::from_f64(p.alpha),
        T::Compute::from_f64(p.k),
        Power::of(p.beta),
    );
    let window = |c: usize| (c.saturating_sub(before), (c + after).min(g.c - 1));
    match layout {
        ChannelLayout::First => {
            let sample = g.c * g.s;
            y[..total]
                .par_chunks_mut(sample)
                .on_threads()
                .zip(x[..total].par_chunks(sample).on_threads())
                .for_each(|(ys, xs)| {
                    let planes: Vec<&[T]> = xs.chunks(g.s).collect();
                    for (c, yp) in ys.chunks_mut(g.s).enumerate() {
                        let (lo, hi) = window(c);
                        lrn_plane(&planes[lo..=hi], planes[c], yp, den);
                    }
                });
        }
        ChannelLayout::Last => {
            let rows = rows_per_piece(g.c);
            y[..total]
                .par_chunks_mut(rows * g.c)
                .on_threads()
                .zip(x[..total].par_chunks(rows * g.c).on_threads())
                .for_each(|(yc, xc)| {
                    let mut sq = vec![T::Compute::ZERO; g.c];
                    let mut acc = vec![T::Compute::ZERO; g.c];
                    for (yr, xr) in yc.chunks_mut(g.c).zip(xc.chunks(g.c)) {
                        for (s, &v) in sq.iter_mut().zip(xr) {
                            let v = v.to_compute();
                            *s = v * v;
                        }
                        for (c, a) in acc.iter_mut().enumerate() {
                            let (lo, hi) = window(c);
                            *a = T::Compute::ZERO;
                            for &s in &sq[lo..=hi] {
                                *a += s;
                            }
                        }
                        lrn_divide(xr, yr, &acc, den);
                    }
                });
        }
    }
}

#[cfg(test)]
mod tests {
    /// The elementwise kernels split their outputs at the first line boundary
    /// (`prefetch::store_ranges`): with the output at every offset of a line, each element is
    /// the same function of its inputs and per-column coefficients as without the split.
    #[test]
    fn elementwise_kernels_give_the_same_results_at_every_output_offset() {
        use super::{Centre, LrnDenom, Power, affine_rows, affine_run, layer_norm_row, lrn_divide};
        let n = 700; // 2800 bytes: split (prefetch::MIN_SPLIT_BYTES)
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0 + 1000.0)
            .collect();
        let w: Vec<f32> = (0..n).map(|i| 1.0 + (i % 13) as f32 / 16.0).collect();
        let b: Vec<f32> = (0..n).map(|i| (i % 7) as f32 / 8.0 - 0.5).collect();
        let acc: Vec<f32> = (0..n).map(|i| (i % 11) as f32 * 3.0).collect();
        let mu = Centre::of(1000.0312_f64);
        let (rs, scale, offset) = (0.37_f32, 1.25_f32, -0.5_f32);
        let mut buf = vec![0f32; n + 32];
        for off in 0..16 {
            let y = &mut buf[off..off + n];
            layer_norm_row(&x, y, mu, rs, Some(&w), Some(&b), None);
            for i in 0..n {
                let want = ((x[i] - mu.hi) - mu.lo) * rs * w[i] + b[i];
                assert_eq!(
                    y[i].to_bits(),
                    want.to_bits(),
                    "layer_norm_row off {off} i {i}"
                );
            }
            layer_norm_row(&x, y, mu, rs, None, Some(&b), None);
            for i in 0..n {
                let want = ((x[i] - mu.hi) - mu.lo) * rs + b[i];
                assert_eq!(
                    y[i].to_bits(),
                    want.to_bits(),
                    "layer_norm_row (bias) off {off} i {i}"
                );
            }
            affine_run(&x, y, mu, scale, offset);
            let (hi, of) = mu.fold(scale, offset);
            for i in 0..n {
                let want = (x[i] - hi) * scale + of;
                assert_eq!(y[i].to_bits(), want.to_bits(), "affine_run off {off} i {i}");
            }
            // channels-last rows: 2 rows of 350 columns (1400 bytes, each row split) and 7 of
            // 100 (400 bytes, not split), folded (no `hi`) and centred
            for cols in [350, 100] {
                let (sc, of, hi) = (&w[..cols], &b[..cols], &acc[..cols]);
                for centred in [false, true] {
                    let his: &[f32] = if centred { hi } else { &[] };
                    affine_rows(&x, y, (his, sc, of), None);
                    for i in 0..n {
                        let c = i % cols;
                        let v = if centred { x[i] - hi[c] } else { x[i] };
                        let want = v * sc[c] + of[c];
                        assert_eq!(
                            y[i].to_bits(),
                            want.to_bits(),
                            "affine_rows cols {cols} centred {centred} off {off} i {i}"
                        );
                    }
                }
            }
            lrn_divide(&x, y, &acc, LrnDenom::new(5.0, 1e-2, 2.0, Power::Half));
            for i in 0..n {
                let want = x[i] / (acc[i] * (1e-2 / 5.0) + 2.0).sqrt();
                assert_eq!(y[i].to_bits(), want.to_bits(), "lrn_divide off {off} i {i}");
            }
        }
    }

    /// Channels-last runs: within one sample where the coefficients are per sample, the
    /// whole piece where they are shared.
    #[test]
    fn sample_runs_split_only_per_sample_coefficients() {
        use super::{Geom, sample_runs};
        let g = Geom { n: 4, c: 3, s: 5 };
        let mut runs = Vec::new();
        sample_runs((3, 9), g, true, |n, span| runs.push((n, span)));
        assert_eq!(runs, vec![(0, 0..6), (1, 6..21), (2, 21..27)]);
        runs.clear();
        sample_runs((3, 9), g, false, |n, span| runs.push((n, span)));
        assert_eq!(runs, vec![(0, 0..27)]);
        runs.clear();
        // one row per sample (BatchNorm1d): a run per row, or one for the piece
        let g1 = Geom { n: 8, c: 3, s: 1 };
        sample_runs((2, 3), g1, true, |n, span| runs.push((n, span)));
        assert_eq!(runs, vec![(2, 0..3), (3, 3..6), (4, 6..9)]);
        runs.clear();
        sample_runs((2, 3), g1, false, |n, span| runs.push((n, span)));
        assert_eq!(runs, vec![(2, 0..9)]);
    }

    /// The channels-first LocalResponseNorm plane kernel sums the window's squares from zero in
    /// window order and divides as the formula says, bit for bit, for every exponent, window
    /// length and plane length (whole chunks, a tail, tail only).
    #[test]
    fn lrn_plane_is_the_formula_bit_for_bit() {
        use super::{LrnDenom, Power, lrn_plane};
        for n in [1usize, 7, 13, 16, 97, 1025] {
            let planes: Vec<Vec<f32>> = (0..5)
                .map(|p| {
                    (0..n)
                        .map(|i| ((i * 37 + p * 11) % 101) as f32 / 9.0 - 5.0)
                        .collect()
                })
                .collect();
            for w in 1..=5 {
                let window: Vec<&[f32]> = planes[..w].iter().map(|p| &p[..]).collect();
                let x = window[w / 2];
                for (beta, pow) in [
                    (0.75, Power::ThreeQuarters),
                    (0.5, Power::Half),
                    (1.0, Power::One),
                    (0.6, Power::General(0.6f32)),
                ] {
                    let mut y = vec![f32::NAN; n];
                    lrn_plane(&window, x, &mut y, LrnDenom::new(5.0, 1e-2, 2.0, pow));
                    for i in 0..n {
                        let mut sum = 0f32;
                        for p in &window {
                            sum += p[i] * p[i];
                        }
                        let d = sum * (1e-2 / 5.0) + 2.0;
                        let want = match pow {
                            Power::ThreeQuarters => x[i] / (d.sqrt() * d.sqrt().sqrt()),
                            Power::Half => x[i] / d.sqrt(),
                            Power::One => x[i] / d,
                            Power::General(b) => x[i] / d.powf(b),
                        };
                        assert_eq!(
                            y[i].to_bits(),
                            want.to_bits(),
                            "lrn_plane n {n} window {w} beta {beta} i {i}: {} vs {want}",
                            y[i]
                        );
                    }
                }
            }
        }
    }

    use super::threads::install;
    use crate::ops::{
        BatchNormArgs, GroupNormArgs, InstanceNormArgs, LayerNormArgs, LrnArgs, batch_norm,
        group_norm, instance_norm, layer_norm, local_response_norm,
    };
    use crate::{Buffer, DType, Tensor, TensorMut};

    /// Runs every op on `x` (shape (4, 8, 40, 40): several work pieces) in one layout.
    fn run_all(x: &Buffer, channels_last: bool) -> Vec<Vec<f64>> {
        let shape = [4usize, 8, 40, 40];
        let mut outs = Vec::new();
        for op in 0..5 {
            let mut y = Buffer::filled(x.dtype(), x.len(), 0.0);
            let mut yv = if channels_last {
                TensorMut::channels_last(y.as_data_mut(), &shape)
            } else {
                TensorMut::new(y.as_data_mut(), &shape)
            }
            .unwrap();
            let xv = if channels_last {
                Tensor::channels_last(x.as_data(), &shape)
            } else {
                Tensor::new(x.as_data(), &shape)
            }
            .unwrap();
            match op {
                0 => {
                    let args = BatchNormArgs {
                        training: true,
                        ..Default::default()
                    };
                    batch_norm(&xv, &mut yv, args).map(|_| ())
                }
                1 => group_norm(&xv, &mut yv, GroupNormArgs::new(2)).map(|_| ()),
                2 => instance_norm(&xv, &mut yv, InstanceNormArgs::default()).map(|_| ()),
                3 => local_response_norm(&xv, &mut yv, LrnArgs::new(5)),
                _ => {
                    let flat = Tensor::new(x.as_data(), &[160, 320]).unwrap();
                    let mut yf = TensorMut::new(y.as_data_mut(), &[160, 320]).unwrap();
                    layer_norm(&flat, &mut yf, LayerNormArgs::new(&[320])).map(|_| ())
                }
            }
            .unwrap();
            outs.push(y.to_f64_vec());
        }
        outs
    }

    /// The fixed work partition makes every result independent of the thread count, bit for
    /// bit, in both layouts and for f32 and bf16.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let n = 4 * 8 * 40 * 40;
        let values: Vec<f64> = (0..n)
            .map(|i| 3.0 + ((i * 7919) % 1013) as f64 / 97.0)
            .collect();
        for dtype in [DType::F32, DType::BF16] {
            let x = Buffer::from_f64(dtype, &values);
            for cl in [false, true] {
                let one = install(Some(1), || run_all(&x, cl));
                let three = install(Some(3), || run_all(&x, cl));
                for (op, (a, b)) in one.iter().zip(&three).enumerate() {
                    let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(same, "op {op} {dtype} channels_last={cl}");
                }
            }
        }
    }

    /// The test BatchNorm affine: `γ_c = 0.5 + c`, `β_c = c − 2`.
    fn test_affine<C: crate::dtype::Real>(c: usize) -> (Vec<C>, Vec<C>) {
        let gamma = (0..c).map(|c| C::from_f64(0.5 + c as f64)).collect();
        let beta = (0..c).map(|c| C::from_f64(c as f64 - 2.0)).collect();
        (gamma, beta)
    }

    /// The unfused channels-first BatchNorm forward: `channel_moments`, `r = fin(m2)`, then
    /// `apply_channel`. Returns `(mean, m2, r, y)`.
    #[allow(clippy::type_complexity)]
    fn moments_then_apply<T: crate::dtype::Element>(
        x: &[T],
        g: super::Geom,
        fin: impl Fn(f64) -> T::Compute,
        (gamma, beta): (&[T::Compute], &[T::Compute]),
    ) -> (Vec<f64>, Vec<f64>, Vec<T::Compute>, Vec<T>) {
        use super::{ChannelLayout, apply_channels_first, channel_moments};
        let (mean, m2) = channel_moments(x, g, ChannelLayout::First);
        let r: Vec<T::Compute> = m2.iter().map(|&m| fin(m)).collect();
        let mut y = vec![T::default(); x.len()];
        apply_channels_first(x, &mut y, g, (&mean, &r), (gamma, beta));
        (mean, m2, r, y)
    }

    /// The bits of a vector of values (NaN compares equal to itself).
    fn bits_of<T: crate::dtype::Element>(v: &[T]) -> Vec<u64> {
        v.iter().map(|v| v.to_f64().to_bits()).collect()
    }

    /// Channels past L2 (`channel_past_l2`: 70 planes of 8000, 2.1 MiB of bf16 with its
    /// output): the per-plane moments merged per channel match a float64 two-pass reference on
    /// data that breaks naive statistics (a mean of 1e4 with a spread of 1e-2, a constant
    /// channel, channels holding a NaN, a +inf, both infinities, planes with their own means),
    /// give the same bits at one and three threads, and the BatchNorm forward takes them and
    /// the apply (the same bits as `channel_moments` then `apply_channel`).
    #[test]
    fn channels_past_l2_merge_plane_moments() {
        use super::{
            ChannelLayout, Geom, batch_norm_first_fused, channel_moments, channel_past_l2,
        };
        let g = Geom {
            n: 70,
            c: 6,
            s: 8000,
        };
        assert!(channel_past_l2::<half::bf16>(g) && channel_past_l2::<f32>(g));
        // short planes keep the per-channel pass however large the channel
        assert!(!channel_past_l2::<f32>(Geom {
            n: 1 << 20,
            c: 2,
            s: 255
        }));
        let value = |i: usize| -> f64 {
            let (n, c, s) = (i / (g.c * g.s), i / g.s % g.c, i % g.s);
            let u = ((i * 7919) % 1013) as f64 / 506.0 - 1.0;
            match (c, n, s) {
                (0, ..) => 1e4 + 1e-2 * u,
                (1, ..) => 3.25,
                (2, 17, 5) => f64::NAN,
                (3, 40, 7999) => f64::INFINITY,
                (4, 0, 0) => f64::INFINITY,
                (4, 69, 3) => f64::NEG_INFINITY,
                // planes with their own means and spreads: the merge's δ² term counts
                (5, ..) => n as f64 * 0.5 + u * (1.0 + n as f64),
                _ => u,
            }
        };
        let xs: Vec<f64> = (0..g.n * g.c * g.s).map(value).collect();
        fn check<T: crate::dtype::Element>(x: &[T], g: Geom) {
            let (mean, m2) = install(Some(1), || channel_moments(x, g, ChannelLayout::First));
            let three = install(Some(3), || channel_moments(x, g, ChannelLayout::First));
            assert_eq!(
                (bits_of(&three.0), bits_of(&three.1)),
                (bits_of(&mean), bits_of(&m2))
            );
            let x64: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
            for c in 0..g.c {
                // float64 two-pass reference
                let items =
                    || (0..g.n).flat_map(|n| (0..g.s).map(move |s| (n * g.c + c) * g.s + s));
                let rm = items().map(|i| x64[i]).sum::<f64>() / (g.n * g.s) as f64;
                let rq: f64 = items().map(|i| (x64[i] - rm).powi(2)).sum();
                let what = format!(
                    "{:?} channel {c}: ({}, {}) vs ({rm}, {rq})",
                    T::DTYPE,
                    mean[c],
                    m2[c]
                );
                if !rm.is_finite() {
                    assert!(mean[c] == rm || (rm.is_nan() && mean[c].is_nan()), "{what}");
                    assert!(m2[c].is_nan(), "{what}");
                } else {
                    // within a millionth of the spread (the constant channel: exact)
                    let sd = (rq / (g.n * g.s) as f64).sqrt();
                    assert!(
                        (mean[c] - rm).abs() <= 1e-6 * sd + 1e-15 * rm.abs(),
                        "{what}"
                    );
                    assert!((m2[c] - rq).abs() <= 1e-6 * rq, "{what}");
                }
            }
            let fin =
                |m: f64| super::moments::finish::<T::Compute>(g.n * g.s, m, 1e-5, false, true).1;
            let (gamma, beta) = test_affine::<T::Compute>(g.c);
            let mut y1 = vec![T::default(); x.len()];
            let (m1, v1, r1) = install(Some(2), || {
                batch_norm_first_fused(x, &mut y1, g, fin, &gamma, &beta)
            });
            let (_, _, r2, y2) = moments_then_apply(x, g, fin, (&gamma, &beta));
            assert_eq!((bits_of(&m1), bits_of(&v1)), (bits_of(&mean), bits_of(&m2)));
            let r64 = |r: &[T::Compute]| {
                r.iter()
                    .map(|&v| crate::dtype::Real::to_f64(v))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits_of(&r64(&r1)), bits_of(&r64(&r2)));
            assert!(
                bits_of(&y1) == bits_of(&y2),
                "{:?}: the forward is not moments then apply",
                T::DTYPE
            );
        }
        check(&xs.iter().map(|&v| v as f32).collect::<Vec<_>>(), g);
        check(
            &xs.iter()
                .map(|&v| half::bf16::from_f64(v))
                .collect::<Vec<_>>(),
            g,
        );
    }

    /// The fused channels-first BatchNorm forward gives the same bits as the moments, then the
    /// apply, in f32 and bf16.
    #[test]
    fn fused_batch_norm_matches_moments_then_apply() {
        use super::{Geom, batch_norm_first_fused, moments::finish};
        fn check<T: crate::dtype::Element>(x: &[T]) {
            let g = Geom { n: 3, c: 5, s: 37 };
            let fin = |m: f64| finish::<T::Compute>(g.n * g.s, m, 1e-5, false, true).1;
            let (gamma, beta) = test_affine::<T::Compute>(g.c);
            let mut y1 = vec![T::default(); x.len()];
            let (m1, v1, r1) = batch_norm_first_fused(x, &mut y1, g, fin, &gamma, &beta);
            let (m2, v2, r2, y2) = moments_then_apply(x, g, fin, (&gamma, &beta));
            assert_eq!((m1, v1, r1), (m2, v2, r2));
            assert_eq!(bits_of(&y1), bits_of(&y2));
        }
        let values: Vec<f64> = (0..3 * 5 * 37)
            .map(|i| 7.0 + ((i * 7919) % 1013) as f64 / 97.0)
            .collect();
        check(&values.iter().map(|&v| v as f32).collect::<Vec<_>>());
        check(
            &values
                .iter()
                .map(|&v| half::bf16::from_f64(v))
                .collect::<Vec<_>>(),
        );
    }

    /// Both layouts: channels last (s = 5000 rows of 8 channels: three reduction pieces per
    /// sample), channels first (37 samples of 8 groups: 296 runs in blocks of 2, the last one
    /// short, each block prefetching its next run).
    #[test]
    fn fused_group_norm_matches_moments_then_apply() {
        use super::{
            ChannelLayout, Coefficients, Geom, GroupAffine, apply_channel, foldable, group_moments,
            group_norm_fused, moments::Centre, moments::finish, threads::install,
        };
        fn check<T: crate::dtype::Element>(
            x: &[T],
            (g, layout): (Geom, ChannelLayout),
            (groups, threads): (usize, usize),
            folds: bool,
        ) {
            let cg = g.c / groups;
            let fin = |m: f64| finish::<T::Compute>(cg * g.s, m, 1e-5, true, false).1;
            let real = <T::Compute as crate::dtype::Real>::from_f64;
            let gamma: Vec<T::Compute> = (0..g.c).map(|c| real(0.5 + c as f64)).collect();
            let beta: Vec<T::Compute> = (0..g.c).map(|c| real(c as f64 - 2.0)).collect();
            let mut y1 = vec![T::default(); x.len()];
            let p = GroupAffine {
                groups,
                finish: &fin,
                gamma: &gamma,
                beta: &beta,
            };
            let (m1, v1, r1) = install(Some(threads), || {
                group_norm_fused(x, &mut y1, g, layout, &p)
            });
            let (m2, v2) = install(Some(threads), || group_moments(x, g, groups, layout));
            let r2: Vec<T::Compute> = v2.iter().map(|&m| fin(m)).collect();
            let nc = g.n * g.c;
            let stat = |i: usize| (i / g.c) * groups + (i % g.c) / cg;
            let shift: Vec<Centre<T::Compute>> = (0..nc).map(|i| Centre::of(m2[stat(i)])).collect();
            let scale: Vec<T::Compute> = (0..nc).map(|i| r2[stat(i)] * gamma[i % g.c]).collect();
            let offset: Vec<T::Compute> = (0..nc).map(|i| beta[i % g.c]).collect();
            // channels last decides the folded form per sample (`foldable` over its groups)
            let fold = |n: usize| {
                let stats = (n * groups..(n + 1) * groups).map(|i| (m2[i], r2[i]));
                layout == ChannelLayout::Last && foldable(stats)
            };
            assert_eq!(
                (0..g.n).any(fold),
                folds,
                "{layout:?} groups {groups}: folds"
            );
            let mut y2 = vec![T::default(); x.len()];
            let sample = g.c * g.s;
            let one = Geom { n: 1, ..g };
            for (n, (ys, xs)) in y2.chunks_mut(sample).zip(x.chunks(sample)).enumerate() {
                let cs = n * g.c..(n + 1) * g.c;
                let k = Coefficients {
                    shift: &shift[cs.clone()],
                    scale: &scale[cs.clone()],
                    offset: &offset[cs],
                    per_sample: true,
                    fold: fold(n),
                };
                install(Some(threads), || apply_channel(xs, ys, one, layout, &k));
            }
            assert_eq!(
                (m1, v1, r1),
                (m2, v2, r2),
                "{layout:?} groups {groups} threads {threads}"
            );
            let bits = |y: &[T]| y.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&y1) == bits(&y2),
                "{layout:?} groups {groups} threads {threads}"
            );
        }
        let last = Geom {
            n: 3,
            c: 8,
            s: 5000,
        };
        let first = Geom { n: 37, c: 8, s: 13 };
        // values in 7 .. 17.4 (means ≈ 4σ: centred form), and the same less 12.2 (means
        // within 2σ: channels last folds)
        for (base, centred) in [(7.0, true), (-5.2, false)] {
            for case in [(last, ChannelLayout::Last), (first, ChannelLayout::First)] {
                let g = case.0;
                let values: Vec<f64> = (0..g.n * g.c * g.s)
                    .map(|i| base + ((i * 7919) % 1013) as f64 / 97.0)
                    .collect();
                let f32s: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                let bf16s: Vec<half::bf16> =
                    values.iter().map(|&v| half::bf16::from_f64(v)).collect();
                let folds = !centred && case.1 == ChannelLayout::Last;
                // channels last, 1 thread: one task per sample; 4 threads > 3 samples:
                // parallel inside each sample.
                for threads in [1, 4] {
                    for groups in [2, 8] {
                        check(&f32s, case, (groups, threads), folds);
                        check(&bf16s, case, (groups, threads), folds);
                    }
                }
            }
        }
    }

    /// The fused LayerNorm forward (blocks of rows, each prefetching its next row) gives the
    /// same bits as the row moments, then the apply, for row counts that leave a short last
    /// block (1, 7, 257, 1027 rows: blocks of 1, 1, 2 and 5 rows, the last one short for 257
    /// and 1027) and odd row lengths, f32 and bf16.
    #[test]
    fn fused_layer_norm_matches_moments_then_apply() {
        use super::{apply_rows, layer_norm_fused, moments::Centre, moments::finish, row_moments};
        fn check<T: crate::dtype::Element>(rows: usize, cols: usize) {
            let x: Vec<T> = (0..rows * cols)
                .map(|i| T::from_f64(1e3 + ((i * 7919) % 1013) as f64 / 97.0))
                .collect();
            let fin = |m: f64| finish::<T::Compute>(cols, m, 1e-5, false, true).1;
            let real = <T::Compute as crate::dtype::Real>::from_f64;
            let w: Vec<T::Compute> = (0..cols).map(|c| real(0.5 + c as f64)).collect();
            let b: Vec<T::Compute> = (0..cols).map(|c| real(c as f64 - 2.0)).collect();
            let mut y1 = vec![T::default(); x.len()];
            let (m1, r1) = layer_norm_fused(&x, &mut y1, rows, cols, fin, Some(&w), Some(&b));
            let (m2, v2) = row_moments(&x, rows, cols);
            let r2: Vec<T::Compute> = v2.iter().map(|&m| fin(m)).collect();
            let mu: Vec<Centre<T::Compute>> = m2.iter().map(|&m| Centre::of(m)).collect();
            let mut y2 = vec![T::default(); x.len()];
            apply_rows(&x, &mut y2, cols, &mu, &r2, Some(&w), Some(&b));
            let m2: Vec<T::Compute> = m2.into_iter().map(real).collect();
            assert_eq!((m1, r1), (m2, r2), "{rows}x{cols}");
            let bits = |y: &[T]| y.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>();
            assert!(bits(&y1) == bits(&y2), "{rows}x{cols}");
        }
        for rows in [1, 7, 257, 1027] {
            for cols in [1, 13, 97] {
                check::<f32>(rows, cols);
                check::<half::bf16>(rows, cols);
            }
        }
    }

    /// Large mean, small spread (1e4 ± 1e-2) in f32 through the vectorised paths: the
    /// normalised output keeps a relative error ≤ 1e-3 against float64.
    #[test]
    fn column_moments_match_a_float64_two_pass_reference() {
        use super::column_moments;
        // 5000 rows of 97: 16 pieces of 313 rows in 6 tasks; columns: a large mean with a
        // small spread, a constant, an alternating ±1, a trend, mixed scales; f32 and bf16.
        let (rows, cols) = (5000usize, 97usize);
        assert_eq!(super::moment_pieces(rows, cols), (313, 939));
        let value = |r: usize, c: usize| -> f64 {
            let u = ((r * 7919 + c * 104_729) % 1013) as f64 / 506.0 - 1.0;
            match c {
                0 => 1e4 + 1e-2 * u,
                1 => 3.25,
                2 => {
                    if r % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    }
                }
                // a trend: every piece has its own mean
                3 => r as f64 * 1e-2 + u,
                _ => u * 10f64.powi(c as i32 % 7 - 3),
            }
        };
        for dtype in [DType::F32, DType::BF16] {
            let x = Buffer::from_f64(
                dtype,
                &(0..rows * cols)
                    .map(|i| value(i / cols, i % cols))
                    .collect::<Vec<_>>(),
            );
            let xs = x.to_f64_vec();
            let (mean, m2) = match x.as_data() {
                crate::HostData::F32(v) => column_moments(v, cols, true),
                crate::HostData::BF16(v) => column_moments(v, cols, false),
                _ => unreachable!("f32 and bf16 only"),
            };
            for c in 0..cols {
                let col: Vec<f64> = xs.iter().skip(c).step_by(cols).copied().collect();
                let mu = col.iter().sum::<f64>() / rows as f64;
                let want = col.iter().map(|v| (v - mu).powi(2)).sum::<f64>();
                // Welford in f32 within blocks of WELFORD_ROWS rows, then f64 merges: the
                // error is a few f32 ulps of the size of the values, not of their mean
                let scale = col.iter().fold(0f64, |a, v| a.max(v.abs()));
                let tol = if dtype == DType::F32 { 1e-7 } else { 1e-6 };
                assert!(
                    (mean[c] - mu).abs() <= tol * scale,
                    "{dtype} col {c} mean {} vs {mu}",
                    mean[c]
                );
                // f32/bf16 squares accumulated in f64/f32: a few ulps of f32 per term
                assert!(
                    (m2[c] - want).abs() <= 1e-5 * want,
                    "{dtype} col {c} m2 {} vs {want}",
                    m2[c]
                );
            }
            // a constant column has exactly its value as mean and no spread
            assert_eq!((mean[1], m2[1]), (3.25, 0.0), "{dtype}");
        }
    }

    /// The partition of the column statistics: at most 16 pieces, at least `reduction_rows`
    /// rows each, tasks of whole pieces of at least 64 Ki elements; and rows of 4100 columns
    /// (64 register tiles and a tail of 4) in 16 pieces of 69 rows, the large-mean data of the
    /// test above, keep its precision and the same bits at 1, 2 and 3 threads.
    #[test]
    fn wide_rows_take_pieces_of_at_least_a_sixteenth() {
        use super::{column_moments, moment_pieces, reduction_rows, threads::install};
        assert_eq!(moment_pieces(4096, 1024), (256, 256)); // BatchNorm1d 4096x1024
        assert_eq!(moment_pieces(1024, 4096), (64, 64));
        assert_eq!(moment_pieces(1024, 256), (64, 256)); // a GroupNorm NHWC sample
        assert_eq!(moment_pieces(100_352, 64), (6272, 6272)); // BatchNorm2d NHWC
        for (rows, cols) in [(1, 1), (7, 13), (97, 1025), (5000, 97), (1 << 20, 3)] {
            let (piece, task) = moment_pieces(rows, cols);
            assert!(rows.div_ceil(piece) <= 16 && piece >= reduction_rows(rows, cols));
            assert!(task % piece == 0 && (task * cols >= 64 * 1024 || task >= rows));
        }
        let (rows, cols) = (1100usize, 4100usize);
        let u = |r: usize, c: usize| ((r * 7919 + c * 104_729) % 1013) as f64 / 506.0 - 1.0;
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| (1e4 + 1e-2 * u(i / cols, i % cols)) as f32)
            .collect();
        let (mean, m2) = install(Some(1), || column_moments(&x, cols, true));
        for threads in [2, 3] {
            let other = install(Some(threads), || column_moments(&x, cols, true));
            assert!(other == (mean.clone(), m2.clone()), "{threads} threads");
        }
        for c in (0..cols).step_by(37).chain([cols - 1]) {
            assert_column_close((&x, cols, c), (mean[c], m2[c]), (1e-7, 1e-5));
        }
    }

    /// Column `c` of row-major `x` with `cols` columns has `(mean, m2)` within `tol`: the
    /// mean's relative to the column's largest |x|, `m2`'s relative to the float64 `m2`.
    fn assert_column_close(
        (x, cols, c): (&[f32], usize, usize),
        (mean, m2): (f64, f64),
        (tol_mean, tol_m2): (f64, f64),
    ) {
        let (mu, want, scale) = column_reference(x, cols, c);
        assert!(
            (mean - mu).abs() <= tol_mean * scale,
            "col {c}: mean {mean} vs {mu}"
        );
        assert!(
            (m2 - want).abs() <= tol_m2 * want,
            "col {c}: m2 {m2} vs {want}"
        );
    }

    /// Column `c` of row-major `x` with `cols` columns in float64: `(mean, m2, largest |x|)`.
    fn column_reference(x: &[f32], cols: usize, c: usize) -> (f64, f64, f64) {
        let col: Vec<f64> = x[c..].iter().step_by(cols).map(|&v| v as f64).collect();
        let mu = col.iter().sum::<f64>() / col.len() as f64;
        let scale = col.iter().fold(0f64, |a, v| a.max(v.abs()));
        (mu, col.iter().map(|v| (v - mu).powi(2)).sum::<f64>(), scale)
    }

    #[test]
    fn a_non_finite_column_costs_the_other_columns_no_precision() {
        use super::column_moments;
        // 3000 rows (three chunks of Welford's size) of 7 columns near 1e3 with a spread of
        // ±1; one NaN in column 3's first chunk. The other columns keep the shifted sums'
        // precision (before, Welford's f32 update for every column of that chunk: column 0's
        // mean 2.3e-8 off, 2.3e-11 of it)
        let (rows, cols) = (3000usize, 7usize);
        let u = |r: usize, c: usize| ((r * 7919 + c * 104_729) % 1013) as f64 / 506.0 - 1.0;
        let mut x: Vec<f32> = (0..rows * cols)
            .map(|i| (1e3 + u(i / cols, i % cols)) as f32)
            .collect();
        x[5 * cols + 3] = f32::NAN;
        for parallel in [false, true] {
            let (mean, m2) = column_moments(&x, cols, parallel);
            assert!(mean[3].is_nan() && m2[3].is_nan(), "the NaN column");
            for c in (0..cols).filter(|&c| c != 3) {
                assert_column_close((&x, cols, c), (mean[c], m2[c]), (1e-12, 1e-8));
            }
        }
    }

    #[test]
    fn column_moments_take_one_pass_unless_a_chunk_is_far_from_its_centre() {
        use super::{ColumnMoments, column_heads, column_moments, shifted_columns};
        // 70 columns: one register tile of 64 and a tail of 6
        let (rows, cols) = (300usize, 70usize);
        let u = |r: usize, c: usize| ((r * 7919 + c * 104_729) % 1013) as f64 / 506.0 - 1.0;
        // (mean, m2, the largest magnitude: f32 rounding is relative to the values' size)
        let reference = |x: &[f32], c: usize| column_reference(x, cols, c);
        let one_pass = |x: &[f32]| {
            let mut heads = vec![0f32; cols];
            column_heads::<f32>(&mut heads, &mut vec![0.0; cols], x);
            let mut block = ColumnMoments::new(cols);
            block.n = (x.len() / cols) as f64;
            let parts = (&mut vec![0f32; cols][..], &mut vec![0f32; cols][..]);
            let mut sums = (vec![0f64; cols], vec![0f64; cols]);
            let ok = shifted_columns::<f32>(
                &mut block,
                parts,
                (&mut sums.0, &mut sums.1),
                &heads,
                (x, x, &[]),
            );
            (ok, block)
        };
        // spread-out columns around 0, 1e4 and -3: the head's mean is near the column's
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                ([0.0, 1e4, -3.0][c % 3] + u(r, c)) as f32
            })
            .collect();
        let (ok, block) = one_pass(&x);
        assert!(ok, "representative heads take one pass");
        for c in 0..cols {
            let (mu, m2, scale) = reference(&x, c);
            assert!((block.mean[c] - mu).abs() <= 1e-7 * scale, "col {c}");
            assert!(
                (block.m2[c] - m2).abs() <= 1e-6 * m2,
                "col {c}: {} vs {m2}",
                block.m2[c]
            );
        }
        // a constant column: its value and no spread, in the one pass
        let k = vec![2.75f32; rows * cols];
        let (ok, block) = one_pass(&k);
        assert!(ok && block.mean.iter().all(|&m| m == 2.75) && block.m2.iter().all(|&q| q == 0.0));
        // rows after the head offset by 1e3 in one column (the tail's last): rejected, and
        // column_moments (Welford for that chunk) still matches the float64 reference
        let mut y = x.clone();
        for r in 64..rows {
            y[r * cols + cols - 1] += 1e3;
        }
        assert!(!one_pass(&y).0, "an unrepresentative head is not accepted");
        let (mean, m2) = column_moments(&y, cols, false);
        for c in 0..cols {
            let (mu, want, scale) = reference(&y, c);
            // Welford in f32: within a couple of f32 ulps of the values
            assert!(
                (mean[c] - mu).abs() <= 3e-7 * scale,
                "col {c}: {} vs {mu}",
                mean[c]
            );
            assert!(
                (m2[c] - want).abs() <= 1e-5 * want,
                "col {c}: {} vs {want}",
                m2[c]
            );
        }
        // no columns: no moments (and no zero-width rows to split)
        assert_eq!(column_moments::<f32>(&[], 0, true), (vec![], vec![]));
        // a non-finite value fails the check (NaN m2), so Welford gives the column NaN
        let mut z = x.clone();
        z[5 * cols + 3] = f32::INFINITY;
        assert!(!one_pass(&z).0);
        let (mean, m2) = column_moments(&z, cols, false);
        assert!(mean[3] == f32::INFINITY as f64 && m2[3].is_nan());
    }

    #[test]
    fn large_mean_data_keeps_its_precision() {
        let n = 4 * 8 * 40 * 40;
        let values: Vec<f64> = (0..n)
            .map(|i| 1e4 + 1e-2 * (((i * 7919) % 1013) as f64 / 506.0 - 1.0))
            .collect();
        let x = Buffer::from_f64(DType::F32, &values);
        let xs = x.to_f64_vec();
        // LayerNorm rows of 320 against a float64 reference
        let outs = run_all(&x, false);
        for (r, row) in xs.chunks(320).enumerate() {
            let mean = row.iter().sum::<f64>() / 320.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 320.0;
            for (j, v) in row.iter().enumerate() {
                let want = (v - mean) / (var + 1e-5).sqrt();
                let got = outs[4][r * 320 + j];
                assert!(
                    (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                    "row {r} col {j}: {got} vs {want}"
                );
            }
        }
    }

    /// The channels-last apply (`affine_rows`: coefficient arrays for 64 and 128 columns, the
    /// row loop otherwise) gives every element the bits of `(x − hi_c)·s_c + o_c` in the
    /// compute type, for f32 and bf16, at 64, 128 and 96 columns.
    #[test]
    fn channels_last_apply_is_elementwise_at_every_width() {
        use crate::dtype::{Element, Real};
        fn check<T: Element>(cols: usize) {
            let rows = 13;
            let x: Vec<T> = (0..rows * cols)
                .map(|i| T::from_f64(1000.0 + ((i * 37 % 101) as f64 - 50.0) / 7.0))
                .collect();
            let coef = |k: f64| -> Vec<T::Compute> {
                (0..cols)
                    .map(|c| T::Compute::from_f64(k * (1.0 + (c % 13) as f64 / 16.0)))
                    .collect()
            };
            let (hi, scale, offset) = (coef(1000.0), coef(0.75), coef(-0.5));
            let mut y = vec![T::default(); rows * cols];
            let k = (&hi[..], &scale[..], &offset[..]);
            let split = super::pairs::RowSplit::of::<T>(cols, k);
            super::affine_rows(&x, &mut y, k, split.as_ref().map(|s| s.view(0..cols)));
            for (i, (&got, &v)) in y.iter().zip(&x).enumerate() {
                let c = i % cols;
                let want = T::from_compute((v.to_compute() - hi[c]) * scale[c] + offset[c]);
                assert_eq!(
                    got.to_f64().to_bits(),
                    want.to_f64().to_bits(),
                    "{cols} cols, {i}"
                );
            }
        }
        for cols in [64, 128, 96] {
            check::<f32>(cols);
            check::<half::bf16>(cols);
        }
    }

    /// The folded form (`hi` empty) is `x·scale + offset`, elementwise, at every width.
    #[test]
    fn channels_last_folded_apply_is_elementwise() {
        use crate::dtype::{Element, Real};
        fn check<T: Element>(cols: usize) {
            let rows = 7;
            let x: Vec<T> = (0..rows * cols)
                .map(|i| T::from_f64(((i * 37 % 101) as f64 - 50.0) / 7.0))
                .collect();
            let coef = |k: f64| -> Vec<T::Compute> {
                (0..cols)
                    .map(|c| T::Compute::from_f64(k * (1.0 + (c % 13) as f64 / 16.0)))
                    .collect()
            };
            let (scale, offset) = (coef(0.75), coef(-0.5));
            let mut y = vec![T::default(); rows * cols];
            let k = (&[][..], &scale[..], &offset[..]);
            let split = super::pairs::RowSplit::of::<T>(cols, k);
            super::affine_rows(&x, &mut y, k, split.as_ref().map(|s| s.view(0..cols)));
            for (i, (&got, &v)) in y.iter().zip(&x).enumerate() {
                let c = i % cols;
                let want = T::from_compute(v.to_compute() * scale[c] + offset[c]);
                assert_eq!(
                    got.to_f64().to_bits(),
                    want.to_f64().to_bits(),
                    "{cols}, {i}"
                );
            }
        }
        for cols in [1, 13, 64, 97, 1025] {
            check::<f32>(cols);
            check::<half::bf16>(cols);
        }
    }

    #[test]
    fn folding_needs_every_mean_within_two_standard_deviations() {
        use super::{FOLD_LIMIT, foldable};
        assert!(foldable([(0.0, 1.0f32), (-2.0, 1.0), (4.0, 0.5)]));
        assert!(foldable::<f32>([]));
        assert!(!foldable([(0.0, 1.0f32), (2.5, 1.0)]));
        assert!(!foldable([(FOLD_LIMIT * 1.0001, 1.0f32)]));
        assert!(!foldable([(1.0, f32::NAN)]));
        assert!(!foldable([(0.0, f32::INFINITY)]));
        assert!(!foldable([(f64::INFINITY, 1.0f32)]));
    }

    /// bf16 inputs of every class for the word-loop tests: ±0, subnormals, ties and near-ties,
    /// values that round up to ∞ after the affine, ±∞, NaNs (quiet and signalling), and a
    /// spread of ordinary values.
    pub(crate) fn bf16_inputs(n: usize) -> Vec<half::bf16> {
        let special = [
            0x0000u16, 0x8000, 0x0001, 0x807F, 0x3F80, 0xBF81, 0x7F7F, 0xFF7F, 0x7F80, 0xFF80,
            0x7FC0, 0xFFC1, 0x7F81, 0x4480, 0xC2F7,
        ];
        (0..n)
            .map(|i| match i % 5 {
                0 => half::bf16::from_bits(special[(i / 5) % special.len()]),
                _ => half::bf16::from_f64(((i * 37 % 101) as f64 - 50.0) / 7.0 + 3.0),
            })
            .collect()
    }

    /// `n` bf16 starting 4-byte aligned (`off` 0: the word loops run) or one element past it
    /// (`off` 1: the element loops), copied from `v`.
    pub(crate) fn bf16_at<'a>(
        backing: &'a mut Vec<u32>,
        off: usize,
        v: &[half::bf16],
    ) -> &'a mut [half::bf16] {
        backing.clear();
        backing.resize(v.len() / 2 + 2, 0);
        let all: &mut [half::bf16] = bytemuck::cast_slice_mut(&mut backing[..]);
        let s = &mut all[off..off + v.len()];
        s.copy_from_slice(v);
        s
    }

    /// The bf16 word loops (`pairs`) give every element the bits of `half`'s rounding of the
    /// element formula in f32, as the element loops do, for values of every class; the aligned
    /// slices take the word loops (checked) and the misaligned ones the element loops. Widths:
    /// 64 and 128 columns (the element loops' register form), 2, 96, 1026, odd ones (element
    /// loops only); every LayerNorm weight/bias combination; folded and centred channels-last
    /// forms.
    #[test]
    fn bf16_word_loops_match_the_element_formula() {
        use super::Centre;
        use crate::dtype::Element;
        use half::bf16;
        let want = |v: f32| bf16::from_f32(v).to_bits();
        let rows = 5;
        for cols in [2, 13, 64, 96, 97, 128, 1026] {
            let n = rows * cols;
            let x = bf16_inputs(n);
            let coef = |k: f32, add: f32| -> Vec<f32> {
                (0..cols)
                    .map(|c| k * (1.0 + (c % 13) as f32 / 16.0) + add)
                    .collect()
            };
            let (hi, scale, offset) = (coef(0.0, 2.5), coef(0.75, 0.0), coef(-0.5, 0.0));
            let (mut xb, mut yb) = (Vec::new(), Vec::new());
            for off in [0, 1] {
                let xs: &[bf16] = bf16_at(&mut xb, off, &x);
                let y = bf16_at(&mut yb, off, &vec![bf16::ZERO; n]);
                let words = bf16::bf16_words(xs).is_some() && cols % 2 == 0;
                assert_eq!(
                    words,
                    off == 0 && cols % 2 == 0,
                    "{cols} cols, offset {off}"
                );
                let tag = |what: &str, i: usize| format!("{what}: {cols} cols, offset {off}, {i}");
                // channels last, centred and folded
                let k = (&hi[..], &scale[..], &offset[..]);
                let split = super::pairs::RowSplit::of::<bf16>(cols, k);
                assert_eq!(split.is_some(), cols % 2 == 0);
                super::affine_rows(xs, y, k, split.as_ref().map(|s| s.view(0..cols)));
                for (i, (&got, &v)) in y.iter().zip(xs).enumerate() {
                    let c = i % cols;
                    let e = want((v.to_f32() - hi[c]) * scale[c] + offset[c]);
                    assert_eq!(got.to_bits(), e, "{}", tag("affine_rows", i));
                }
                let k = (&[][..], &scale[..], &offset[..]);
                let split = super::pairs::RowSplit::of::<bf16>(cols, k);
                super::affine_rows(xs, y, k, split.as_ref().map(|s| s.view(0..cols)));
                for (i, (&got, &v)) in y.iter().zip(xs).enumerate() {
                    let c = i % cols;
                    let e = want(v.to_f32() * scale[c] + offset[c]);
                    assert_eq!(got.to_bits(), e, "{}", tag("affine_rows folded", i));
                }
                // channels first: one run
                let mu = Centre::<f32>::of(2.5000123);
                super::affine_run(xs, y, mu, 0.75, -0.5);
                let (h, o) = mu.fold(0.75, -0.5);
                for (i, (&got, &v)) in y.iter().zip(xs).enumerate() {
                    let e = want((v.to_f32() - h) * 0.75 + o);
                    assert_eq!(got.to_bits(), e, "{}", tag("affine_run", i));
                }
                // LayerNorm rows, every weight/bias combination
                for (w, b) in [(true, true), (true, false), (false, true), (false, false)] {
                    let (w, b) = (w.then_some(&scale[..]), b.then_some(&offset[..]));
                    let rs = 0.37f32;
                    let mean: Vec<Centre<f32>> = (0..rows)
                        .map(|r| Centre::of(2.5 + r as f64 / 3.0))
                        .collect();
                    let rstd = vec![rs; rows];
                    super::apply_rows(xs, y, cols, &mean, &rstd, w, b);
                    for (i, (&got, &v)) in y.iter().zip(xs).enumerate() {
                        let (r, c) = (i / cols, i % cols);
                        let d = ((v.to_f32() - mean[r].hi) - mean[r].lo) * rs;
                        let d = w.map_or(d, |w| d * w[c]);
                        let e = want(b.map_or(d, |b| d + b[c]));
                        let what = format!("layer_norm_row w {} b {}", w.is_some(), b.is_some());
                        assert_eq!(got.to_bits(), e, "{}", tag(&what, i));
                    }
                }
            }
        }
    }

    /// `apply_channel` channels last with per-sample coefficients over several samples (each
    /// sample's run takes its slice of the once-split coefficients, `RowSplit::view`), both
    /// forms, aligned (word loops) and one element off (element loops): every element is
    /// `half`'s rounding of the formula with its own sample's and channel's coefficients.
    #[test]
    fn bf16_per_sample_channels_last_apply_uses_each_samples_coefficients() {
        use super::{Centre, ChannelLayout, Coefficients, Geom, apply_channel};
        use half::bf16;
        let g = Geom { n: 3, c: 6, s: 5 };
        let total = g.n * g.c * g.s;
        let x = bf16_inputs(total);
        let k = g.n * g.c;
        let shift: Vec<Centre<f32>> = (0..k).map(|i| Centre::of(i as f64 / 8.0)).collect();
        let scale: Vec<f32> = (0..k).map(|i| 0.5 + i as f32 / 16.0).collect();
        let offset: Vec<f32> = (0..k).map(|i| i as f32 / 4.0 - 2.0).collect();
        let (mut xb, mut yb) = (Vec::new(), Vec::new());
        for fold in [false, true] {
            for off in [0, 1] {
                let xs: &[bf16] = bf16_at(&mut xb, off, &x);
                let y = bf16_at(&mut yb, off, &vec![bf16::ZERO; total]);
                let coef = Coefficients {
                    shift: &shift,
                    scale: &scale,
                    offset: &offset,
                    per_sample: true,
                    fold,
                };
                apply_channel(xs, y, g, ChannelLayout::Last, &coef);
                for (i, (&got, &v)) in y.iter().zip(xs).enumerate() {
                    let j = (i / (g.c * g.s)) * g.c + i % g.c;
                    let (m, sc, of) = (shift[j], scale[j], offset[j]);
                    let v = v.to_f32();
                    let e = if fold {
                        let h = m.hi as f64 + m.lo as f64;
                        v * sc + (of as f64 - h * sc as f64) as f32
                    } else {
                        let (h, o) = m.fold(sc, of);
                        (v - h) * sc + o
                    };
                    let what = format!("fold {fold}, offset {off}, element {i}");
                    assert_eq!(got.to_bits(), bf16::from_f32(e).to_bits(), "{what}");
                }
            }
        }
    }
}
