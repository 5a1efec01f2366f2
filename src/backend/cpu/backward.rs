//! Backward kernels: one fused reduction pass (Σg and Σg·(x − μ) together), then one
//! elementwise pass, with no temporaries of the input's size.
//!
//! For the channel ops (BatchNorm, InstanceNorm, GroupNorm) the reduction produces, per
//! `(n, c)`, `A = Σ_s g` and `B = Σ_s g·(x − μ)`; the ops layer turns them into per-`(n, c)`
//! coefficients of `dx = g·p + (x − μ)·q + o` and into the parameter gradients.

use super::moments::{self, Centre, acc_of, add_tail, simd_clones};
use super::scratch::Scratch;

/// Independent f64 (f32 input) partial sums of the LayerNorm backward row reductions
/// (`layer_norm_grad_row`; the channels-first sums run through `moments::pair_sums`).
pub const LANES: usize = 16;
use super::prefetch;
use super::threads::{self, OnThreads};
use super::{
    ChannelLayout, Geom, SplitCentres, few_pieces_rows, fold_centres, part, reduction_rows,
    rows_per_piece, sample_runs, split_centres,
};
use crate::dtype::{Element, Real};
use rayon::prelude::*;

/// Per-(n, c) sums `(A, B) = (Σ_s g, Σ_s g·(x − μ_{n,c}))`, as f64, `N·C` each.
/// `mu` holds one centre per `(n, c)`.
pub fn channel_grad_sums<T: Element>(
    x: &[T],
    g: &[T],
    geom: Geom,
    layout: ChannelLayout,
    mu: &[Centre<T::Compute>],
) -> (Vec<f64>, Vec<f64>) {
    let nc = geom.n * geom.c;
    if nc == 0 || geom.s == 0 {
        return (vec![0.0; nc], vec![0.0; nc]);
    }
    match layout {
        ChannelLayout::First => {
            let s = geom.s;
            let sums: Vec<(f64, f64)> = x[..nc * s]
                .par_chunks(s)
                .on_threads()
                .zip(g[..nc * s].par_chunks(s).on_threads())
                .enumerate()
                .map(|(i, (xp, gp))| grad_sums_run(xp, gp, mu[i], [&[]; 3]))
                .collect();
            sums.into_iter().unzip()
        }
        ChannelLayout::Last => {
            let (c, s) = (geom.c, geom.s);
            let (hi, lo) = split_centres(mu);
            let per_sample = (0..geom.n).map(|n| {
                let range = n * s * c..(n + 1) * s * c;
                let centres = (&hi[n * c..(n + 1) * c], &lo[n * c..(n + 1) * c]);
                sample_grad_sums(&x[range.clone()], &g[range], centres, true)
            });
            flatten_pairs(per_sample.collect())
        }
    }
}

/// Per-plane coefficients `(p, q, o)` of one unit of planes (see [`channel_grad_fused`]).
pub type UnitCoefficients<C> = (Vec<C>, Vec<C>, Vec<C>);

/// The `(n, c)` pairs of one unit of planes: `first + j·stride` for its `j`-th plane
/// (consecutive pairs for a GroupNorm group, stride `C` for a BatchNorm channel).
#[derive(Clone, Copy, Debug)]
pub struct UnitPairs {
    pub first: usize,
    pub stride: usize,
}

impl UnitPairs {
    pub fn pair(self, j: usize) -> usize {
        self.first + j * self.stride
    }
}

/// A unit's planes of `x`, `g` and `dx`.
type UnitPlanes<'a, T> = (&'a [&'a [T]], &'a [&'a [T]], Vec<&'a mut [T]>);

/// `v[i]`, or an empty slice past the end.
fn plane<'a, T>(v: &[&'a [T]], i: usize) -> &'a [T] {
    v.get(i).copied().unwrap_or(&[])
}

/// One unit of channels-first planes: each plane's `(A, B)` in order, `coefficients`, then the
/// apply of each plane, while the unit is in cache.
fn unit_grad<T: Element>(
    (xs, gs, ds): UnitPlanes<'_, T>,
    pairs: UnitPairs,
    mu: &[Centre<T::Compute>],
    coefficients: &(impl Fn(UnitPairs, &[f64], &[f64]) -> UnitCoefficients<T::Compute> + Sync),
) -> (Vec<f64>, Vec<f64>) {
    // the sums read each plane from memory: they prefetch the next plane's `x` and `g`
    // (`prefetch::next_input_pays`) and (4- and 8-byte elements, a unit whose `x`, `g` and `dx`
    // fit in L2) this plane's `dx`, written by the apply below
    let unit: usize = xs.iter().map(|p| p.len()).sum();
    let dests: Vec<&[T]> = if prefetch::output_pays::<T>() && prefetch::fits_l2::<T>(3 * unit) {
        ds.iter().map(|d| &**d).collect()
    } else {
        Vec::new()
    };
    let next_planes = prefetch::next_input_pays::<T>();
    let (a, b): (Vec<f64>, Vec<f64>) = xs
        .iter()
        .zip(gs)
        .enumerate()
        .map(|(j, (xp, gp))| {
            // past the end (`usize::MAX`): no plane, no prefetch
            let k = if next_planes { j + 1 } else { usize::MAX };
            let ahead = [plane(xs, k), plane(gs, k), plane(&dests, j)];
            grad_sums_run(xp, gp, mu[pairs.pair(j)], ahead)
        })
        .unzip();
    drop(dests);
    let (p, q, o) = coefficients(pairs, &a, &b);
    for (j, (dp, (xp, gp))) in ds.into_iter().zip(xs.iter().zip(gs)).enumerate() {
        grad_apply_run(xp, gp, dp, mu[pairs.pair(j)], p[j], q[j], o[j]);
    }
    (a, b)
}

/// [`channel_grad_fused`] for statistics per channel over the whole batch (BatchNorm),
/// channels first: a unit per channel, its `N` planes gathered (`N·S` elements of `x` and of
/// `g`, in L2 or L3 while the apply runs). The same operations in the same order as
/// [`channel_grad_sums`] then [`apply_channel_grad`]. Returns the per-plane `(A, B)`.
pub fn channel_grad_fused_per_channel<T: Element>(
    (x, g, dx): (&[T], &[T], &mut [T]),
    geom: Geom,
    mu: &[Centre<T::Compute>],
    coefficients: impl Fn(UnitPairs, &[f64], &[f64]) -> UnitCoefficients<T::Compute> + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let (n, c, s) = (geom.n, geom.c, geom.s);
    if n * c == 0 || s == 0 {
        return (vec![0.0; n * c], vec![0.0; n * c]);
    }
    // each channel's output planes, in `n` order (disjoint borrows of `dx`)
    let mut outs: Vec<Vec<&mut [T]>> = (0..c).map(|_| Vec::with_capacity(n)).collect();
    for (i, dp) in dx[..n * c * s].chunks_mut(s).enumerate() {
        outs[i % c].push(dp);
    }
    let (xp, gp): (Vec<&[T]>, Vec<&[T]>) = (
        x[..n * c * s].chunks(s).collect(),
        g[..n * c * s].chunks(s).collect(),
    );
    let per_channel: Vec<(Vec<f64>, Vec<f64>)> = outs
        .into_par_iter()
        .on_threads()
        .enumerate()
        .map(|(ch, ds)| {
            let pairs = UnitPairs {
                first: ch,
                stride: c,
            };
            let xs: Vec<&[T]> = (0..n).map(|j| xp[pairs.pair(j)]).collect();
            let gs: Vec<&[T]> = (0..n).map(|j| gp[pairs.pair(j)]).collect();
            unit_grad((&xs, &gs, ds), pairs, mu, &coefficients)
        })
        .collect();
    // back to (n, c) order
    let (mut a, mut b) = (vec![0.0; n * c], vec![0.0; n * c]);
    for (ch, (ac, bc)) in per_channel.into_iter().enumerate() {
        for (j, (av, bv)) in ac.into_iter().zip(bc).enumerate() {
            (a[j * c + ch], b[j * c + ch]) = (av, bv);
        }
    }
    (a, b)
}

/// Statistics per unit of `planes` consecutive `(n, c)` pairs (a GroupNorm group, an
/// InstanceNorm channel): per unit, the pairs' sums `(A, B)` (as [`channel_grad_sums`]), then
/// `coefficients(pairs, &A, &B)` and the apply `dx = g·p + (x − μ)·q + o` while the data
/// is in cache — `x` and `g` are read from memory once instead of twice. Channels first works
/// per unit (its planes are contiguous); channels last per sample (its rows), the sample's
/// column sums merged over pieces in order. The same operations in the same order as
/// [`channel_grad_sums`] then [`apply_channel_grad`], so the bits are the same. Returns the
/// per-plane `(A, B)`.
pub fn channel_grad_fused<T: Element>(
    (x, g, dx): (&[T], &[T], &mut [T]),
    (geom, layout): (Geom, ChannelLayout),
    planes: usize,
    mu: &[Centre<T::Compute>],
    coefficients: impl Fn(UnitPairs, &[f64], &[f64]) -> UnitCoefficients<T::Compute> + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let (nc, s) = (geom.n * geom.c, geom.s);
    if nc == 0 || s == 0 || planes == 0 {
        return (vec![0.0; nc], vec![0.0; nc]);
    }
    if layout == ChannelLayout::Last {
        return channel_grad_fused_last((x, g, dx), geom, planes, mu, coefficients);
    }
    let unit = planes * s;
    let sums: Vec<(Vec<f64>, Vec<f64>)> = dx[..nc * s]
        .par_chunks_mut(unit)
        .on_threads()
        .zip(
            x[..nc * s]
                .par_chunks(unit)
                .on_threads()
                .zip(g[..nc * s].par_chunks(unit).on_threads()),
        )
        .enumerate()
        .map(|(u, (du, (xu, gu)))| {
            let pairs = UnitPairs {
                first: u * planes,
                stride: 1,
            };
            let xs: Vec<&[T]> = xu.chunks(s).collect();
            let gs: Vec<&[T]> = gu.chunks(s).collect();
            unit_grad(
                (&xs, &gs, du.chunks_mut(s).collect()),
                pairs,
                mu,
                &coefficients,
            )
        })
        .collect();
    flatten_pairs(sums)
}

/// [`channel_grad_fused`] for channels last: a task per sample.
fn channel_grad_fused_last<T: Element>(
    (x, g, dx): (&[T], &[T], &mut [T]),
    geom: Geom,
    planes: usize,
    mu: &[Centre<T::Compute>],
    coefficients: impl Fn(UnitPairs, &[f64], &[f64]) -> UnitCoefficients<T::Compute> + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let (c, s) = (geom.c, geom.s);
    let (nc, sample) = (geom.n * c, s * c);
    let (hi, lo) = split_centres(mu);
    let one = |n: usize, (ds, (xs, gs)): (&mut [T], (&[T], &[T])), parallel: bool| {
        let cs = n * c..(n + 1) * c;
        let centres = (&hi[cs.clone()], &lo[cs]);
        let (a, b) = sample_grad_sums(xs, gs, centres, parallel);
        let (mut p, mut q, mut o) = (Vec::new(), Vec::new(), Vec::new());
        for (k, (ak, bk)) in a.chunks(planes).zip(b.chunks(planes)).enumerate() {
            let pairs = UnitPairs {
                first: n * c + k * planes,
                stride: 1,
            };
            let (pk, qk, ok) = coefficients(pairs, ak, bk);
            p.extend(pk);
            q.extend(qk);
            o.extend(ok);
        }
        let (fhi, fo) = fold_centres(&mu[n * c..(n + 1) * c], &q, &o);
        let k = (fhi.as_slice(), (p.as_slice(), q.as_slice(), fo.as_slice()));
        if parallel {
            let rows = rows_per_piece(c) * c;
            ds.par_chunks_mut(rows)
                .on_threads()
                .zip(
                    xs.par_chunks(rows)
                        .on_threads()
                        .zip(gs.par_chunks(rows).on_threads()),
                )
                .for_each(|(dc, (xc, gc))| grad_apply_rows(xc, gc, dc, k));
        } else {
            grad_apply_rows(xs, gs, ds, k);
        }
        (a, b)
    };
    let units = dx[..nc * s]
        .chunks_mut(sample)
        .zip(x[..nc * s].chunks(sample).zip(g[..nc * s].chunks(sample)));
    // A task per sample when every thread gets one, else parallel inside each sample.
    let sums = if geom.n >= threads::current_threads() {
        let units: Vec<_> = units.collect();
        units
            .into_par_iter()
            .on_threads()
            .enumerate()
            .map(|(n, u)| one(n, u, false))
            .collect()
    } else {
        units.enumerate().map(|(n, u)| one(n, u, true)).collect()
    };
    flatten_pairs(sums)
}

/// The coefficients of one statistic of [`group_grad_short`] from its γ-weighted sums
/// `(Σ γ_c·A_c, Σ γ_c·B_c)` over its planes in order: `(r, q, o)`, plane `c`'s `p` being
/// `r·γ_c`.
pub type StatCoefficients<'a, C> = &'a (dyn Fn(usize, f64, f64) -> (f64, C, C) + Sync);

/// What [`group_grad_short`] needs besides the tensors.
pub struct ShortGroups<'a, C> {
    /// Elements per plane (`S`) and planes per statistic.
    pub s: usize,
    pub planes: usize,
    /// Statistics per sample (`C / planes`).
    pub groups: usize,
    /// One centre per statistic, `(n, group)` order.
    pub mu: &'a [Centre<C>],
    /// `γ` per channel.
    pub gamma: &'a [f64],
    pub coefficients: StatCoefficients<'a, C>,
}

impl<C: Real> ShortGroups<'_, C> {
    /// Statistic `stat`'s `(r, q, o)` from its planes' `(A, B)` in order, `gamma` theirs.
    #[inline(always)]
    fn of_stat(
        &self,
        stat: usize,
        gamma: &[f64],
        sums: impl Iterator<Item = (f64, f64)>,
    ) -> (f64, C, C) {
        let (mut sa, mut sb) = (0.0, 0.0);
        for (&gm, (av, bv)) in gamma.iter().zip(sums) {
            sa += gm * av;
            sb += gm * bv;
        }
        (self.coefficients)(stat, sa, sb)
    }
}

/// `x`, `g` and, when wanted, `dx` of one task.
type TaskData<'a, T> = (&'a [T], &'a [T], Option<&'a mut [T]>);

/// Statistics per (sample, group) on short planes (GroupNorm and InstanceNorm over `(N, C)`
/// input and over planes of fewer than a few hundred elements), `samples` samples:
/// * channels first (and planes of one element, the same memory): per statistic, its
///   planes' `A = Σ g` and `B = Σ g·(x − μ)` as [`channel_grad_sums`], their coefficients
///   ([`StatCoefficients`]) and the apply `dx = g·p + (x − μ)·q + o` of
///   [`apply_channel_grad`] (the same operations, so the same `dx` as [`channel_grad_fused`]),
///   a task per [`rows_per_piece`]-sized run of whole statistics;
/// * channels last: per sample, its column sums `(A, B)` per channel around its groups'
///   centres, the coefficients per statistic, the apply over its rows, a task per run of
///   whole samples.
///
/// Returns the parameter gradients `(dγ, dβ) = (Σ r·B, Σ A)` per channel, summed per task in
/// order, then over the tasks in order. [`channel_grad_fused`] kept a vector of plane slices
/// and three of coefficients per statistic, and N·C sums for the ops layer to divide out per
/// pair: GroupNorm(32)'s backward at one thread took 329 ms on (16384, 256) and 84 ms on
/// (4096, 256, 2, 2) NHWC this way (PyTorch 2.15: 49 and 10 ms).
pub fn group_grad_short<T: Element>(
    data: TaskData<'_, T>,
    (samples, layout): (usize, ChannelLayout),
    k: &ShortGroups<'_, T::Compute>,
) -> (Vec<f64>, Vec<f64>) {
    let c = k.planes * k.groups;
    if layout == ChannelLayout::First || k.s == 1 {
        let items = (samples * k.groups, k.s * k.planes);
        group_grad_tasks(data, items, c, |d, params, first| {
            group_grad_task(d, params, first, k)
        })
    } else {
        let items = (samples, k.s * c);
        group_grad_tasks(data, items, c, |d, params, first| {
            group_grad_last_task(d, params, first, k)
        })
    }
}

/// Statistics per channel over the batch (BatchNorm) on channels-first planes of a few
/// hundred elements at most: two passes in memory order over tasks of whole samples, the
/// first taking each plane's `A = Σ g` and `B = Σ g·(x − μ)` (as [`channel_grad_sums`]) into
/// per-task sums per channel (added in task order), the second the apply of
/// [`apply_channel_grad`] with one coefficient set per channel. `k.mu` and `k.gamma` are per
/// channel (channel `c`'s statistic is `c`). Returns `(dγ, dβ) = (r·B, A)` per channel.
/// Gathering each channel's planes instead (one pass, [`channel_grad_fused_per_channel`])
/// reads short runs a plane apart, which the hardware prefetcher does not follow:
/// BatchNorm2d's backward on (256, 256, 8, 8) took 15–17 ms at one thread that way
/// (PyTorch 2.15: 9.3 ms).
pub fn channel_grad_short<T: Element>(
    (x, g, dx): TaskData<'_, T>,
    geom: Geom,
    k: &ShortGroups<'_, T::Compute>,
) -> (Vec<f64>, Vec<f64>) {
    let (n, c, s) = (geom.n, geom.c, geom.s);
    let items = (n, c * s);
    let (b, a) = group_grad_tasks((x, g, None), items, c, |(xt, gt, _), sums, _| {
        channel_sums_task(xt, gt, sums, k)
    });
    let mut dw = vec![0.0; c];
    let mut coef = Vec::with_capacity(c);
    for (ch, w) in dw.iter_mut().enumerate() {
        let gm = k.gamma[ch];
        let (r, q, o) = (k.coefficients)(ch, gm * a[ch], gm * b[ch]);
        *w = r * b[ch];
        let (hi, o) = k.mu[ch].fold(q, o);
        coef.push((hi, T::Compute::from_f64(r * gm), q, o));
    }
    let total = n * c * s;
    if let Some(dx) = dx.filter(|_| total > 0) {
        // the same tasks as the sums, without their per-task sums
        let len = rows_per_piece(c * s) * c * s;
        let inputs = x[..total]
            .par_chunks(len)
            .on_threads()
            .zip(g[..total].par_chunks(len).on_threads());
        let tasks = dx[..total].par_chunks_mut(len).on_threads().zip(inputs);
        tasks.for_each(|(dt, (xt, gt))| channel_apply_task(xt, gt, dt, (s, &coef)));
    }
    (dw, a)
}

simd_clones! {
/// The first pass of [`channel_grad_short`] over one task's samples: `(B, A)` per channel.
fn channel_sums_task<T: Element>(
    xs: &[T],
    gs: &[T],
    sums: (&mut [f64], &mut [f64]),
    k: &ShortGroups<'_, T::Compute>,
) {
    let ((bs, as_), s) = (sums, k.s);
    let sample = s * k.mu.len();
    for (xn, gn) in xs.chunks_exact(sample).zip(gs.chunks_exact(sample)) {
        let planes = xn.chunks_exact(s).zip(gn.chunks_exact(s));
        for (((xp, gp), m), (a, b)) in planes.zip(k.mu).zip(as_.iter_mut().zip(bs.iter_mut())) {
            let hi = m.hi;
            let (pa, pb) = moments::short_pair_sums(gp, xp, |g, x| (g, g * (x - hi)));
            let pa = pa.to_f64();
            *a += pa;
            *b += pb.to_f64() - m.lo.to_f64() * pa;
        }
    }
}
/// The apply of [`channel_grad_short`] over one task's samples, `(hi, p, q, o')` per channel.
fn channel_apply_task<T: Element>(
    xs: &[T],
    gs: &[T],
    dx: &mut [T],
    coef: (usize, &[ChannelApply<T::Compute>]),
) {
    let (s, coef) = coef;
    let sample = s * coef.len();
    let samples = dx.chunks_exact_mut(sample).zip(xs.chunks_exact(sample).zip(gs.chunks_exact(sample)));
    for (dn, (xn, gn)) in samples {
        let planes = dn.chunks_exact_mut(s).zip(xn.chunks_exact(s).zip(gn.chunks_exact(s)));
        for ((dp, (xp, gp)), &(hi, p, q, o)) in planes.zip(coef) {
            for (d, (&xv, &gv)) in dp.iter_mut().zip(xp.iter().zip(gp)) {
                *d = T::from_compute(gv.to_compute() * p + (xv.to_compute() - hi) * q + o);
            }
        }
    }
}
}

/// One channel's `(hi, p, q, o')` of `dx = g·p + (x − hi)·q + o'`.
type ChannelApply<C> = (C, C, C, C);

/// The tasks of [`group_grad_short`]: `items` items of `unit`
/// elements (statistics, samples) in runs of [`rows_per_piece`] items, `task(x, g, dx,
/// (dγ, dβ), first item)` on each with its own zeroed per-channel partials of `(dγ, dβ)`,
/// which are then added in task order.
fn group_grad_tasks<T: Element>(
    (x, g, dx): TaskData<'_, T>,
    (items, unit): (usize, usize),
    c: usize,
    task: impl Fn(TaskData<'_, T>, (&mut [f64], &mut [f64]), usize) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    if unit == 0 || items == 0 || c == 0 {
        return (vec![0.0; c], vec![0.0; c]);
    }
    let per_task = rows_per_piece(unit);
    let (len, total) = (per_task * unit, items * unit);
    let mut slab = piece_sums::<f64>(total.div_ceil(len), c);
    let sums = slab.par_chunks_mut(2 * c).on_threads();
    let inputs = x[..total]
        .par_chunks(len)
        .on_threads()
        .zip(g[..total].par_chunks(len).on_threads());
    match dx {
        Some(dx) => sums
            .zip(inputs.zip(dx[..total].par_chunks_mut(len).on_threads()))
            .enumerate()
            .for_each(|(t, (slot, ((xt, gt), dt)))| {
                task((xt, gt, Some(dt)), zeroed_halves(slot), t * per_task)
            }),
        None => sums
            .zip(inputs)
            .enumerate()
            .for_each(|(t, (slot, (xt, gt)))| {
                task((xt, gt, None), zeroed_halves(slot), t * per_task)
            }),
    }
    merge_pairs(&slab, c)
}

/// The samples `first ..` of [`group_grad_short`] in channels-last layout over one task's
/// elements, adding their channels' `r·B` and `A` into `params`.
fn group_grad_last_task<T: Element>(
    (xs, gs, dx): TaskData<'_, T>,
    (dw, db): (&mut [f64], &mut [f64]),
    first: usize,
    k: &ShortGroups<'_, T::Compute>,
) {
    let (planes, groups) = (k.planes, k.groups);
    let c = planes * groups;
    let sample = k.s * c;
    let mut dx = dx;
    let zero = T::Compute::ZERO;
    let (mut hi, mut lo) = (vec![zero; c], vec![zero; c]);
    let (mut p, mut q, mut o) = (vec![zero; c], vec![zero; c], vec![zero; c]);
    let (mut a, mut b) = (vec![T::Acc::ZERO; c], vec![T::Acc::ZERO; c]);
    for (j, (xn, gn)) in xs
        .chunks_exact(sample)
        .zip(gs.chunks_exact(sample))
        .enumerate()
    {
        let stats = (first + j) * groups;
        let mu = &k.mu[stats..stats + groups];
        for (m, (h, l)) in mu
            .iter()
            .zip(hi.chunks_exact_mut(planes).zip(lo.chunks_exact_mut(planes)))
        {
            h.fill(m.hi);
            l.fill(m.lo);
        }
        a.fill(T::Acc::ZERO);
        b.fill(T::Acc::ZERO);
        grad_sums_columns(&mut a, &mut b, xn, gn, (&hi, &lo));
        for (gi, m) in mu.iter().enumerate() {
            let cs = gi * planes..(gi + 1) * planes;
            let gamma = &k.gamma[cs.clone()];
            let (ag, bg) = (&a[cs.clone()], &b[cs.clone()]);
            let sums = ag.iter().zip(bg).map(|(av, bv)| (av.to_f64(), bv.to_f64()));
            let (r, qg, og) = k.of_stat(stats + gi, gamma, sums);
            let (_, og) = m.fold(qg, og);
            for (ch, &gm) in cs.zip(gamma) {
                db[ch] += a[ch].to_f64();
                dw[ch] += b[ch].to_f64() * r;
                (p[ch], q[ch], o[ch]) = (T::Compute::from_f64(r * gm), qg, og);
            }
        }
        if let Some(dx) = dx.as_deref_mut() {
            let dn = &mut dx[j * sample..(j + 1) * sample];
            grad_apply_rows(xn, gn, dn, (&hi, (&p, &q, &o)));
        }
    }
}

simd_clones! {
/// The statistics `first ..` of [`group_grad_short`] over one task's elements, adding their
/// planes' `r·B` and `A` into `params` per channel.
fn group_grad_task<T: Element>(
    data: TaskData<'_, T>,
    params: (&mut [f64], &mut [f64]),
    first: usize,
    k: &ShortGroups<'_, T::Compute>,
) {
    let (s, planes) = (k.s, k.planes);
    let unit = planes * s;
    let ((xs, gs, mut dx), (dw, db)) = (data, params);
    let (mut a, mut b, mut p) = (vec![0.0; planes], vec![0.0; planes], vec![T::Compute::ZERO; planes]);
    for (j, (xu, gu)) in xs.chunks_exact(unit).zip(gs.chunks_exact(unit)).enumerate() {
        let stat = first + j;
        let m = k.mu[stat];
        let (hi, lo) = (m.hi, m.lo.to_f64());
        if s == 1 {
            // one element per plane: the sums of one term (exactly what `pair_sums` gives)
            for (((av, bv), &xv), &gv) in a.iter_mut().zip(b.iter_mut()).zip(xu).zip(gu) {
                let gc = gv.to_compute();
                *av = gc.to_f64();
                *bv = (gc * (xv.to_compute() - hi)).to_f64() - lo * *av;
            }
        } else {
            let planes_in = xu.chunks_exact(s).zip(gu.chunks_exact(s));
            for ((av, bv), (xp, gp)) in a.iter_mut().zip(b.iter_mut()).zip(planes_in) {
                let (sa, sb) = moments::short_pair_sums(gp, xp, |g, x| (g, g * (x - hi)));
                *av = sa.to_f64();
                *bv = sb.to_f64() - lo * *av;
            }
        }
        let base = (stat % k.groups) * planes;
        let gamma = &k.gamma[base..base + planes];
        let (r, q, o) = k.of_stat(stat, gamma, a.iter().copied().zip(b.iter().copied()));
        let params = dw[base..base + planes].iter_mut().zip(&mut db[base..base + planes]);
        for ((w, d), (&av, &bv)) in params.zip(a.iter().zip(&b)) {
            *d += av;
            *w += bv * r;
        }
        let Some(dx) = dx.as_deref_mut() else {
            continue;
        };
        for (pc, &gm) in p.iter_mut().zip(gamma) {
            *pc = T::Compute::from_f64(r * gm);
        }
        let (hi, o) = m.fold(q, o);
        let du = &mut dx[j * unit..(j + 1) * unit];
        let apply = |d: &mut T, xv: T, gv: T, pc: T::Compute| {
            *d = T::from_compute(gv.to_compute() * pc + (xv.to_compute() - hi) * q + o);
        };
        if s == 1 {
            // one loop over the statistic's elements, each with its own `p` (vectorised)
            let elems = du.iter_mut().zip(xu.iter().zip(gu));
            elems.zip(&p).for_each(|((d, (&xv, &gv)), &pc)| apply(d, xv, gv, pc));
        } else {
            let rows = du.chunks_exact_mut(s).zip(xu.chunks_exact(s).zip(gu.chunks_exact(s)));
            for ((dp, (xp, gp)), &pc) in rows.zip(&p) {
                let elems = dp.iter_mut().zip(xp.iter().zip(gp));
                elems.for_each(|(d, (&xv, &gv))| apply(d, xv, gv, pc));
            }
        }
    }
}
}

/// One sample's per-channel `(Σ g, Σ g·(x − μ_c))` over its `(S, C)` rows: fixed pieces of rows
/// (in parallel, or one after the other: the same bits), merged in order.
fn sample_grad_sums<T: Element>(
    xs: &[T],
    gs: &[T],
    centres: SplitCentres<'_, T::Compute>,
    parallel: bool,
) -> (Vec<f64>, Vec<f64>) {
    let c = centres.0.len();
    // past one column block, at most 16 pieces: 64 slabs of 4096 columns' f64 pairs (4 MiB) to
    // zero, fill and merge per call cost 1.15–1.4x (BatchNorm1d 1024x4096 f32 backward)
    let rows = xs.len() / c.max(1);
    let piece_rows = if c > COLUMN_BLOCK {
        few_pieces_rows(rows, c)
    } else {
        reduction_rows(rows, c)
    };
    let piece = (piece_rows * c).max(1);
    let mut slab = piece_sums::<T::Acc>(xs.len().min(gs.len()).div_ceil(piece), c);
    let one = |xc: &[T], gc: &[T], slot: &mut [T::Acc]| {
        let (a, b) = zeroed_halves(slot);
        grad_sums_columns(a, b, xc, gc, centres);
    };
    if parallel {
        xs.par_chunks(piece)
            .on_threads()
            .zip(gs.par_chunks(piece).on_threads())
            .zip(slab.par_chunks_mut((2 * c).max(1)).on_threads())
            .for_each(|((xc, gc), slot)| one(xc, gc, slot));
    } else {
        xs.chunks(piece)
            .zip(gs.chunks(piece))
            .zip(slab.chunks_mut((2 * c).max(1)))
            .for_each(|((xc, gc), slot)| one(xc, gc, slot));
    }
    merge_pairs(&slab, c)
}

/// Concatenates per-unit `(A, B)` vectors in unit order.
fn flatten_pairs(units: Vec<(Vec<f64>, Vec<f64>)>) -> (Vec<f64>, Vec<f64>) {
    let mut out = (Vec::new(), Vec::new());
    for (a, b) in units {
        out.0.extend(a);
        out.1.extend(b);
    }
    out
}

/// Per-piece partial column sums of two quantities in one [`Scratch`] slab (no allocation per
/// piece, none per call once the thread's pool has one): `2·cols` per piece, the first
/// quantity's `cols` then the second's ([`zeroed_halves`]), merged by [`merge_pairs`].
fn piece_sums<A: Real>(pieces: usize, cols: usize) -> Scratch<A> {
    // each piece zeroes its own slot, in parallel and in cache
    Scratch::any(A::ZERO, pieces * 2 * cols)
}

/// A piece's slot of a [`piece_sums`] slab, zeroed and split into its two quantities.
fn zeroed_halves<A: Real>(slot: &mut [A]) -> (&mut [A], &mut [A]) {
    slot.fill(A::ZERO);
    let half = slot.len() / 2;
    slot.split_at_mut(half)
}

/// Adds the per-piece partial column sums of a [`piece_sums`] slab in piece order.
fn merge_pairs<A: Real>(slab: &[A], cols: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = vec![A::ZERO; cols];
    let mut b = vec![A::ZERO; cols];
    for piece in slab.chunks_exact((2 * cols).max(1)) {
        let (pa, pb) = piece.split_at(cols);
        for (t, &v) in a.iter_mut().zip(pa) {
            *t += v;
        }
        for (t, &v) in b.iter_mut().zip(pb) {
            *t += v;
        }
    }
    (
        a.iter().map(|v| v.to_f64()).collect(),
        b.iter().map(|v| v.to_f64()).collect(),
    )
}

/// Per-column coefficients `(p, q, o)` of `dx = g·p + (x − μ)·q + o`.
type GradColumns<'a, C> = (&'a [C], &'a [C], &'a [C]);

/// Columns taken at once by the channels-last backward loops at generic widths
/// ([`grad_sums_columns`], [`grad_apply_rows`]): every row of the piece over one block, then the
/// next block, so the block's per-column sums (f64) or coefficients stay in L1 (4096 columns'
/// sums and centres are 96 KiB). Each column sees the same operations in the same order.
const COLUMN_BLOCK: usize = 1024;

simd_clones! {
/// `(Σ g, Σ g·(x − m))` over one contiguous run ([`moments::pair_sums`]: compute-type partials
/// in lanes, flushed into accumulator-type lanes). The second sum is taken around `m.hi` and
/// corrected by `m.lo·Σg` in f64, one subtraction per element fewer than centring on both.
/// Prefetches the lines of the slices of `ahead` (empty ones: none) as it reads, one line of
/// each per line of the run (`moments::prefetch_chunk`).
fn grad_sums_run<T: Element>(
    xs: &[T],
    gs: &[T],
    m: Centre<T::Compute>,
    ahead: [&[T]; 3],
) -> (f64, f64) {
    let hi = m.hi;
    let (a, b) = moments::pair_sums(gs, xs, |g, x| (g, g * (x - hi)), |k| {
        moments::prefetch_chunk(k, ahead)
    });
    let a = a.to_f64();
    (a, b.to_f64() - m.lo.to_f64() * a)
}
/// `dx = g·p + (x − m)·q + o` over one contiguous run.
#[allow(clippy::too_many_arguments)]
fn grad_apply_run<T: Element>(
    xs: &[T],
    gs: &[T],
    dx: &mut [T],
    m: Centre<T::Compute>,
    p: T::Compute,
    q: T::Compute,
    o: T::Compute,
) {
    let (hi, o) = m.fold(q, o);
    let words = (T::bf16_words(xs), T::bf16_words(gs), T::bf16_words_mut(dx));
    if let (Some(xw), Some(gw), Some(dw)) = words {
        let f = super::pairs::f32_of;
        super::pairs::grad_apply_run((xw, gw), dw, (f(hi), f(p), f(q), f(o)));
        return;
    }
    for r in prefetch::store_ranges(dx, xs.len().min(gs.len())) {
        for ((d, &xv), &gv) in dx[r.clone()].iter_mut().zip(&xs[r.clone()]).zip(&gs[r]) {
            *d = T::from_compute(gv.to_compute() * p + (xv.to_compute() - hi) * q + o);
        }
    }
}

/// Channels last: per-column `a[c] += g`, `b[c] += g·(x − μ_c)` over the rows of a piece.
///
/// Rows of 64 or 128 columns (BatchNorm / GroupNorm channels last at those widths) are summed
/// in blocks of [`moments::FLUSH`] rows whose compute-type partials stay in registers, each
/// block's then added into the accumulator type — the statistics' scheme per column
/// ([`super::column_dev_sums`]), in memory order. Same-run A/B on an AMD EPYC (Zen 4) VM, one
/// thread, BatchNorm2d NHWC backward: 1.10–1.22x f32, 1.18–1.22x bf16.
///
/// Other rows of f32 of a multiple of 32 columns take the same blocks in 32-column tiles
/// (four AVX-512 or eight AVX2 vectors of partials: no spills in either clone, and the same
/// operations per column in both). Before, they added every element into f64 (a conversion
/// and two read-modify-writes of the column sums per element). In-process A/B on an Intel Xeon
/// (Emerald Rapids) VM, one thread, 5 alternations (docs/perf/cpu.md, round 30), AVX-512 /
/// AVX2 clones: GroupNorm NHWC (1024, 256, 4, 4) 1.07x / 1.08x, (16, 256, 32, 32) 1.14x /
/// 1.10x, BatchNorm2d NHWC (256, 256, 8, 8) 1.10x / 1.21x, BatchNorm1d 4096x1024 1.10x /
/// 1.28x (128-column tiles in the AVX-512 clone: within 3 % of these). Round 17 measured
/// 64-column tiles of GroupNorm's 256 columns at 0.66–0.74x on an AMD EPYC (Zen 4) VM, in the
/// AVX-512 clone that f32 took there before round 18; the 32-column tiles in the AVX2 clone
/// that Zen 4 runs for f32 now have not been measured there. bf16/f16 (whose
/// accumulator is the compute type: 0.88–1.11x with tiles) and other widths keep the
/// element-wise sums, [`COLUMN_BLOCK`] columns at a time.
fn grad_sums_columns<T: Element>(
    a: &mut [T::Acc],
    b: &mut [T::Acc],
    xs: &[T],
    gs: &[T],
    centres: SplitCentres<'_, T::Compute>,
) {
    let wide = moments::acc_is_wider::<T>();
    match a.len() {
        64 => grad_sums_tile::<T, 64>(a, b, xs, gs, centres),
        128 => grad_sums_tile::<T, 128>(a, b, xs, gs, centres),
        cols if wide && cols > 0 && cols % 32 == 0 => grad_sums_tile::<T, 32>(a, b, xs, gs, centres),
        cols => {
            let (hi, lo) = centres;
            for c0 in (0..cols).step_by(COLUMN_BLOCK) {
                let c1 = (c0 + COLUMN_BLOCK).min(cols);
                let (a, b, hi, lo) = (&mut a[c0..c1], &mut b[c0..c1], &hi[c0..c1], &lo[c0..c1]);
                for (xr, gr) in xs.chunks_exact(cols).zip(gs.chunks_exact(cols)) {
                    let cols = a.iter_mut().zip(b.iter_mut()).zip(hi.iter().zip(lo));
                    for (((a, b), (&hi, &lo)), (&xv, &gv)) in cols.zip(xr[c0..c1].iter().zip(&gr[c0..c1])) {
                        let g = gv.to_compute();
                        *a += acc_of::<T>(g);
                        *b += acc_of::<T>(g * Centre { hi, lo }.centre(xv.to_compute()));
                    }
                }
            }
        }
    }
}

/// Channels last: `dx = g·p_c + (x − hi_c)·q_c + o'_c` over the rows of one sample's run
/// (`(hi, o')` from [`fold_centres`]).
fn grad_apply_rows<T: Element>(
    xs: &[T],
    gs: &[T],
    dx: &mut [T],
    coef: (&[T::Compute], GradColumns<'_, T::Compute>),
) {
    let (hi, (p, q, o)) = coef;
    let cols = hi.len();
    for c0 in (0..cols).step_by(COLUMN_BLOCK) {
        let c1 = (c0 + COLUMN_BLOCK).min(cols);
        let rows = dx.chunks_exact_mut(cols).zip(xs.chunks_exact(cols).zip(gs.chunks_exact(cols)));
        for (dr, (xr, gr)) in rows {
            let (dr, xr, gr) = (&mut dr[c0..c1], &xr[c0..c1], &gr[c0..c1]);
            // split at the row's first line boundary where it is long enough (`store_ranges`)
            for r in prefetch::store_ranges(dr, c1 - c0) {
                let k = c0 + r.start..c0 + r.end;
                let coef = (hi[k.clone()].iter()).zip(p[k.clone()].iter().zip(&q[k.clone()]).zip(&o[k]));
                let (dr, xr, gr) = (&mut dr[r.clone()], &xr[r.clone()], &gr[r]);
                for ((d, (&xv, &gv)), (&hi, ((&p, &q), &o))) in
                    dr.iter_mut().zip(xr.iter().zip(gr)).zip(coef)
                {
                    *d = T::from_compute(gv.to_compute() * p + (xv.to_compute() - hi) * q + o);
                }
            }
        }
    }
}

/// One LayerNorm backward row: the column sums `pw += g·(x − μ)·r`, `pb += g` into the
/// caller's compute-type partials (added into the accumulator type every [`moments::FLUSH`]
/// rows by the caller: the statistics' scheme per column), and the row's
/// `(Σ g·w, Σ g·w·(x − μ))` in [`LANES`] compute-type lanes, added into accumulator-type
/// lanes every [`moments::FLUSH`] chunks where that type is wider (f32 input), combined in
/// lane order. Adding every element into f64 lanes and f64 column sums made f32 input 1.45x
/// slower than PyTorch on an AMD EPYC (Zen 4) VM (same-run A/B of this scheme: 1.09–1.18x).
#[allow(clippy::too_many_arguments)]
fn layer_norm_grad_row<T: Element>(
    xr: &[T],
    gr: &[T],
    w: &[T::Compute],
    mu: Centre<T::Compute>,
    rs: T::Compute,
    pw: &mut [T::Compute],
    pb: &mut [T::Compute],
) -> (f64, f64) {
    // one loop over the row for all four sums (x and g converted and centred once)
    let mut a = [T::Acc::ZERO; LANES];
    let mut b = [T::Acc::ZERO; LANES];
    // the row sums' compute-type lanes; added into `a`, `b` every `FLUSH` chunks where the
    // accumulator type is wider (f32 input), else once at the end (the same type: bf16, f16
    // and f64 input sum in place, as a flush in the loop cost bf16 0.85x)
    let wide = moments::acc_is_wider::<T>();
    let (mut pa, mut pq) = ([T::Compute::ZERO; LANES], [T::Compute::ZERO; LANES]);
    let (xc, gc, wc) = (xr.chunks_exact(LANES), gr.chunks_exact(LANES), w.chunks_exact(LANES));
    let (xt, gt, wt) = (xc.remainder(), gc.remainder(), wc.remainder());
    let (mut pwc, mut pbc) = (pw.chunks_exact_mut(LANES), pb.chunks_exact_mut(LANES));
    let chunks = xc.zip(gc).zip(wc.zip((&mut pwc).zip(&mut pbc)));
    for (k, ((xv, gv), (wv, (pwv, pbv)))) in chunks.enumerate() {
        for i in 0..LANES {
            let (g, c) = (gv[i].to_compute(), mu.centre(xv[i].to_compute()));
            pwv[i] += g * c * rs;
            pbv[i] += g;
            let gw = g * wv[i];
            pa[i] += gw;
            pq[i] += gw * c;
        }
        if wide && (k + 1) % moments::FLUSH == 0 {
            flush_lanes::<T>(&mut a, &mut pa);
            flush_lanes::<T>(&mut b, &mut pq);
        }
    }
    flush_lanes::<T>(&mut a, &mut pa);
    flush_lanes::<T>(&mut b, &mut pq);
    let (pwt, pbt) = (pwc.into_remainder(), pbc.into_remainder());
    for ((pw, pb), (&xv, &gv)) in pwt.iter_mut().zip(pbt.iter_mut()).zip(xt.iter().zip(gt)) {
        let g = gv.to_compute();
        *pw += g * mu.centre(xv.to_compute()) * rs;
        *pb += g;
    }
    let len = xt.len().min(gt.len()).min(wt.len());
    add_tail(&mut a, len, |i| acc_of::<T>(gt[i].to_compute() * wt[i]));
    add_tail(&mut b, len, |i| {
        acc_of::<T>(gt[i].to_compute() * wt[i] * mu.centre(xt[i].to_compute()))
    });
    (lanes_sum(&a), lanes_sum(&b))
}

/// One LayerNorm row of `dx = g·w·r − a − (x − μ)·b`, prefetching the lines of the slices
/// in `next` (the next row's `x`, `g` and `dx`) one line per line of this row, so memory
/// fetches them while this in-cache pass computes ([`prefetch`]).
#[allow(clippy::too_many_arguments)]
fn layer_norm_grad_apply<T: Element>(
    xr: &[T],
    gr: &[T],
    w: &[T::Compute],
    dr: &mut [T],
    mu: Centre<T::Compute>,
    coef: (T::Compute, T::Compute, T::Compute),
    next: [&[T]; 3],
) {
    let (rs, a, b) = coef;
    // −a − (x − μ)·b as (x − hi)·(−b) + o' with o' = −a + lo·b (Centre::fold)
    let (hi, o) = mu.fold(-b, -a);
    let run = |dr: &mut [T], w: &[T::Compute], xr: &[T], gr: &[T]| {
        for ((d, &wv), (&xv, &gv)) in dr.iter_mut().zip(w).zip(xr.iter().zip(gr)) {
            *d = T::from_compute(gv.to_compute() * wv * rs + (xv.to_compute() - hi) * -b + o);
        }
    };
    // the head up to the first line boundary of `dr`, then whole lines of it
    let [head, body] = prefetch::store_ranges(dr, xr.len());
    let (dh, dr) = dr.split_at_mut(head.end);
    run(dh, part(w, &head), part(xr, &head), part(gr, &head));
    let (w, xr, gr) = (part(w, &body), part(xr, &body), part(gr, &body));
    let step = prefetch::line_elems::<T>();
    let (mut dc, wc) = (dr.chunks_exact_mut(step), w.chunks_exact(step));
    let (xc, gc) = (xr.chunks_exact(step), gr.chunks_exact(step));
    let (wt, xt, gt) = (wc.remainder(), xc.remainder(), gc.remainder());
    for (j, ((d, w), (x, g))) in (&mut dc).zip(wc).zip(xc.zip(gc)).enumerate() {
        for s in next {
            prefetch::line(s, body.start + j * step);
        }
        run(d, w, x, g);
    }
    run(dc.into_remainder(), wt, xt, gt);
}
}

/// [`grad_sums_columns`] for rows of a multiple of `W` columns: per block of `FLUSH` rows,
/// each `W`-column tile's compute-type partials in registers over the block's rows, then
/// added into the accumulator type.
#[inline(always)]
fn grad_sums_tile<T: Element, const W: usize>(
    a: &mut [T::Acc],
    b: &mut [T::Acc],
    xs: &[T],
    gs: &[T],
    (hi, lo): SplitCentres<'_, T::Compute>,
) {
    let cols = a.len();
    let block = moments::FLUSH * cols;
    for (xb, gb) in xs.chunks(block).zip(gs.chunks(block)) {
        for c0 in (0..cols).step_by(W) {
            let (hi, lo) = (&hi[c0..c0 + W], &lo[c0..c0 + W]);
            let (mut pa, mut pb) = ([T::Compute::ZERO; W], [T::Compute::ZERO; W]);
            for (xr, gr) in xb.chunks_exact(cols).zip(gb.chunks_exact(cols)) {
                let (xr, gr) = (&xr[c0..c0 + W], &gr[c0..c0 + W]);
                for i in 0..W {
                    let g = gr[i].to_compute();
                    pa[i] += g;
                    pb[i] += g * Centre {
                        hi: hi[i],
                        lo: lo[i],
                    }
                    .centre(xr[i].to_compute());
                }
            }
            moments::add_parts::<T>(&mut a[c0..c0 + W], &pa);
            moments::add_parts::<T>(&mut b[c0..c0 + W], &pb);
        }
    }
}

/// `acc[i] += part[i]; part[i] = 0` over [`LANES`] lanes.
#[inline(always)]
fn flush_lanes<T: Element>(acc: &mut [T::Acc; LANES], part: &mut [T::Compute; LANES]) {
    moments::add_parts::<T>(acc, part);
    *part = [T::Compute::ZERO; LANES];
}

/// The lanes summed in order. Never inlined (see [`add_tail`]).
#[inline(never)]
fn lanes_sum<A: Real>(l: &[A; LANES]) -> f64 {
    let mut s = A::ZERO;
    for &v in l {
        s += v;
    }
    s.to_f64()
}

/// Per-(n, c) (or per-c) coefficients of `dx = g·p + (x − μ)·q + o`.
pub struct GradCoefficients<'a, C> {
    pub mu: &'a [Centre<C>],
    pub p: &'a [C],
    pub q: &'a [C],
    pub o: &'a [C],
    pub per_sample: bool,
}

/// `dx = g·p + (x − μ)·q + o` elementwise.
pub fn apply_channel_grad<T: Element>(
    x: &[T],
    g: &[T],
    dx: &mut [T],
    geom: Geom,
    layout: ChannelLayout,
    k: &GradCoefficients<'_, T::Compute>,
) {
    let total = geom.n * geom.c * geom.s;
    if total == 0 {
        return;
    }
    let idx = |n: usize, c: usize| if k.per_sample { n * geom.c + c } else { c };
    match layout {
        ChannelLayout::First => {
            let s = geom.s;
            dx[..total]
                .par_chunks_mut(s)
                .on_threads()
                .zip(
                    x[..total]
                        .par_chunks(s)
                        .on_threads()
                        .zip(g[..total].par_chunks(s).on_threads()),
                )
                .enumerate()
                .for_each(|(plane, (dp, (xp, gp)))| {
                    let i = idx(plane / geom.c, plane % geom.c);
                    grad_apply_run(xp, gp, dp, k.mu[i], k.p[i], k.q[i], k.o[i]);
                });
        }
        ChannelLayout::Last => {
            let c = geom.c;
            let rows = rows_per_piece(c);
            let (hi, fo) = fold_centres(k.mu, k.q, k.o);
            dx[..total]
                .par_chunks_mut(rows * c)
                .on_threads()
                .zip(
                    x[..total]
                        .par_chunks(rows * c)
                        .on_threads()
                        .zip(g[..total].par_chunks(rows * c).on_threads()),
                )
                .enumerate()
                .for_each(|(p, (dc, (xc, gc)))| {
                    sample_runs((p * rows, xc.len() / c), geom, k.per_sample, |n, span| {
                        let cs = idx(n, 0)..idx(n, 0) + c;
                        let coef = (&k.p[cs.clone()], &k.q[cs.clone()], &fo[cs.clone()]);
                        grad_apply_rows(
                            &xc[span.clone()],
                            &gc[span.clone()],
                            &mut dc[span],
                            (&hi[cs], coef),
                        );
                    });
                });
        }
    }
}

/// LayerNorm backward over row-major `(rows, cols)`. Writes `dx` when given and returns the
/// column sums `(Σ_rows g·x̂, Σ_rows g)` (the weight and bias gradients), merged over fixed
/// pieces of rows in order.
pub fn layer_norm_backward<T: Element>(
    x: &[T],
    g: &[T],
    dx: Option<&mut [T]>,
    cols: usize,
    mu: &[Centre<T::Compute>],
    rstd: &[T::Compute],
    weight: Option<&[T::Compute]>,
) -> (Vec<f64>, Vec<f64>) {
    let rows = mu.len();
    if rows * cols == 0 {
        return (vec![0.0; cols], vec![0.0; cols]);
    }
    let piece = reduction_rows(rows, cols);
    let m = T::Compute::from_usize(cols);
    let ones;
    let w = match weight {
        Some(w) => w,
        None => {
            ones = vec![T::Compute::ONE; cols];
            &ones
        }
    };
    // the apply prefetches the next row where that pays (`prefetch::next_row_pays`)
    let ahead = prefetch::next_row_pays::<T>(cols);
    let work = |r0: usize, xc: &[T], gc: &[T], mut dc: Option<&mut [T]>, slot: &mut [T::Acc]| {
        let (dw, db) = zeroed_halves(slot);
        // compute-type column partials, added into `dw`, `db` every `FLUSH` rows
        let mut pw = Scratch::filled(T::Compute::ZERO, cols);
        let mut pb = Scratch::filled(T::Compute::ZERO, cols);
        let rows_here = xc.len() / cols;
        for (k, (xr, gr)) in xc.chunks(cols).zip(gc.chunks(cols)).enumerate() {
            let rs = rstd[r0 + k];
            let c = recovered_centre(xr, mu[r0 + k], rs);
            let (sa, sb) = layer_norm_grad_row(xr, gr, w, c, rs, &mut pw, &mut pb);
            if (k + 1) % moments::FLUSH == 0 || k + 1 == rows_here {
                moments::add_parts::<T>(dw, &pw);
                moments::add_parts::<T>(db, &pb);
                pw.fill(T::Compute::ZERO);
                pb.fill(T::Compute::ZERO);
            }
            if let Some(dc) = dc.as_deref_mut() {
                let a = T::Compute::from_f64(sa) / m * rs;
                let b = T::Compute::from_f64(sb) / m * rs * rs * rs;
                let (dr, d_rest) = dc[k * cols..].split_at_mut(cols);
                let rest = (k + 1) * cols..(k + 2) * cols;
                let next = if ahead {
                    [
                        xc.get(rest.clone()).unwrap_or(&[]),
                        gc.get(rest).unwrap_or(&[]),
                        &d_rest[..cols.min(d_rest.len())],
                    ]
                } else {
                    [&[][..]; 3]
                };
                layer_norm_grad_apply(xr, gr, w, dr, c, (rs, a, b), next);
            }
        }
    };
    let total = rows * cols;
    let mut slab = piece_sums::<T::Acc>(rows.div_ceil(piece), cols);
    let slots = slab.par_chunks_mut(2 * cols).on_threads();
    let inputs = x[..total]
        .par_chunks(piece * cols)
        .on_threads()
        .zip(g[..total].par_chunks(piece * cols).on_threads());
    match dx {
        Some(d) => d[..total]
            .par_chunks_mut(piece * cols)
            .on_threads()
            .zip(inputs)
            .zip(slots)
            .enumerate()
            .for_each(|(p, ((dc, (xc, gc)), slot))| work(p * piece, xc, gc, Some(dc), slot)),
        None => inputs
            .zip(slots)
            .enumerate()
            .for_each(|(p, ((xc, gc), slot))| work(p * piece, xc, gc, None, slot)),
    }
    merge_pairs(&slab, cols)
}

/// Rows whose saved mean is at least this many standard deviations from zero get its
/// rounding recovered ([`recovered_centre`]).
pub const RECOVER_LIMIT: f64 = 64.0;

/// The centre of a LayerNorm row for its backward: `mu` itself, except where the saved mean
/// is far from zero against the row's spread (`|mean|·r ≥` [`RECOVER_LIMIT`]) and is the
/// compute-type rounding of the row's own mean (as the forward saves it). There the rounding
/// `δ` (up to half an ulp of the mean: 4.9e-4 at 1e4 in f32) is a sizeable part of `x − mean`,
/// and every `x̂ = (x − mean)·r` of the row would be off by `δ·r` (dweight by as much
/// relative to its terms: the round-20 cross-check's mismatches, where PyTorch has the same
/// bound); the row's mean is taken again from one in-cache pass of `Σ (x − mean)` (the
/// statistics' lane sums) and the centre becomes that mean as `hi + lo`. A saved mean that is
/// not the rounding of the row's mean (statistics from elsewhere) is used as given. One
/// multiplication per row otherwise.
fn recovered_centre<T: Element>(
    xr: &[T],
    mu: Centre<T::Compute>,
    rs: T::Compute,
) -> Centre<T::Compute> {
    if xr.is_empty() || !rounding_matters(mu.hi, rs) {
        return mu;
    }
    let sum = moments::shifted_sum(xr, mu.hi).to_f64();
    recentred(mu, mu.hi.to_f64() + sum / xr.len() as f64)
}

/// Whether a saved mean `hi` with inverse standard deviation `r` is far enough from zero
/// against the spread (`|hi|·r ≥` [`RECOVER_LIMIT`]) for its rounding to matter; NaN is not.
/// The rule of [`recovered_centre`] (LayerNorm rows) and of the channel ops' statistics
/// (`ops::backward::recovered_centres`).
pub(crate) fn rounding_matters<C: Real>(hi: C, r: C) -> bool {
    (hi.to_f64() * r.to_f64()).abs() >= RECOVER_LIMIT
}

/// `mu` re-centred on `mean` (its statistic's mean, taken again from the elements) as
/// `hi + lo` when `mu.hi` is that mean's rounding (as the forward saves it); `mu` as given
/// otherwise (statistics from elsewhere).
pub(crate) fn recentred<C: Real>(mu: Centre<C>, mean: f64) -> Centre<C> {
    if C::from_f64(mean) == mu.hi {
        Centre::of(mean)
    } else {
        mu
    }
}

/// LocalResponseNorm backward:
/// `dx_i = g_i·B_i^(−β) − (2αβ/size)·x_i·Σ_{c∈W'(i)} g_c·x_c·B_c^(−β−1)`,
/// `W'(i) = [i − ⌊(size−1)/2⌋, i + ⌊size/2⌋]`.
pub fn lrn_backward<T: Element>(
    x: &[T],
    g: &[T],
    dx: &mut [T],
    geom: Geom,
    layout: ChannelLayout,
    p: super::LrnParams,
) {
    let total = geom.n * geom.c * geom.s;
    if total == 0 {
        return;
    }
    let c = geom.c;
    let (before, after) = (p.size / 2, (p.size - 1) / 2);
    let size = T::Compute::from_usize(p.size);
    let alpha = T::Compute::from_f64(p.alpha);
    let beta = T::Compute::from_f64(p.beta);
    let k = T::Compute::from_f64(p.k);
    let coef = T::Compute::from_f64(2.0 * p.alpha * p.beta / p.size as f64);
    // One position: `xs`, `gs`, `ds` are strided views of C channels.
    let position = |get: &dyn Fn(usize) -> (T::Compute, T::Compute),
                    set: &mut dyn FnMut(usize, T),
                    scratch: &mut [T::Compute]| {
        let (b, t) = scratch.split_at_mut(c);
        for (ch, bc) in b.iter_mut().enumerate() {
            let lo = ch.saturating_sub(before);
            let hi = (ch + after).min(c - 1);
            let mut sq = T::Compute::ZERO;
            for j in lo..=hi {
                let v = get(j).0;
                sq += v * v;
            }
            *bc = sq / size * alpha + k;
        }
        for ch in 0..c {
            let (xv, gv) = get(ch);
            t[ch] = gv * xv * b[ch].powf(-beta - T::Compute::ONE);
        }
        for (i, &bi) in b.iter().enumerate() {
            let lo = i.saturating_sub(after);
            let hi = (i + before).min(c - 1);
            let mut s = T::Compute::ZERO;
            for &tv in &t[lo..=hi] {
                s += tv;
            }
            let (xv, gv) = get(i);
            set(i, T::from_compute(gv * bi.powf(-beta) - coef * xv * s));
        }
    };
    match layout {
        ChannelLayout::Last => {
            let rows = rows_per_piece(c);
            dx[..total]
                .par_chunks_mut(rows * c)
                .on_threads()
                .zip(
                    x[..total]
                        .par_chunks(rows * c)
                        .on_threads()
                        .zip(g[..total].par_chunks(rows * c).on_threads()),
                )
                .for_each(|(dc, (xc, gc))| {
                    let mut scratch = vec![T::Compute::ZERO; 2 * c];
                    for ((dr, xr), gr) in dc.chunks_mut(c).zip(xc.chunks(c)).zip(gc.chunks(c)) {
                        let get = |j: usize| (xr[j].to_compute(), gr[j].to_compute());
                        position(&get, &mut |i, v| dr[i] = v, &mut scratch);
                    }
                });
        }
        ChannelLayout::First => {
            let (s, sample) = (geom.s, c * geom.s);
            dx[..total]
                .par_chunks_mut(sample)
                .on_threads()
                .zip(
                    x[..total]
                        .par_chunks(sample)
                        .on_threads()
                        .zip(g[..total].par_chunks(sample).on_threads()),
                )
                .for_each(|(ds, (xs, gs))| {
                    let mut scratch = vec![T::Compute::ZERO; 2 * c];
                    for pos in 0..s {
                        let get =
                            |j: usize| (xs[j * s + pos].to_compute(), gs[j * s + pos].to_compute());
                        position(&get, &mut |i, v| ds[i * s + pos] = v, &mut scratch);
                    }
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Element;

    /// The dx loops split their outputs at the first line boundary
    /// (`prefetch::store_ranges`): at every offset of a line each `dx` is the same function
    /// of its `x`, `g` and per-column weight as without the split.
    #[test]
    fn dx_loops_give_the_same_results_at_every_output_offset() {
        let n = 700;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0 + 3.0)
            .collect();
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
            .collect();
        let w: Vec<f32> = (0..n).map(|i| 1.0 + (i % 13) as f32 / 16.0).collect();
        let mu = Centre::of(3.0312_f64);
        let (rs, a, b) = (0.37_f32, 0.125_f32, -0.0625_f32);
        let (p, q, o) = (0.75_f32, -0.3_f32, 0.01_f32);
        let mut buf = vec![0f32; n + 32];
        for off in 0..16 {
            let dx = &mut buf[off..off + n];
            layer_norm_grad_apply(&x, &g, &w, dx, mu, (rs, a, b), [&x, &g, &[]]);
            let (hi, o2) = mu.fold(-b, -a);
            for i in 0..n {
                let want = g[i] * w[i] * rs + (x[i] - hi) * -b + o2;
                assert_eq!(
                    dx[i].to_bits(),
                    want.to_bits(),
                    "layer_norm_grad_apply off {off} i {i}"
                );
            }
            // channels-last rows: 2 of 350 columns (split) and 7 of 100 (not split)
            for cols in [350, 100] {
                let (hi, pc, qc, oc) = (&x[..cols], &w[..cols], &g[..cols], &w[cols..2 * cols]);
                grad_apply_rows(&x, &g, dx, (hi, (pc, qc, oc)));
                for i in 0..n {
                    let c = i % cols;
                    let want = g[i] * pc[c] + (x[i] - hi[c]) * qc[c] + oc[c];
                    assert_eq!(
                        dx[i].to_bits(),
                        want.to_bits(),
                        "grad_apply_rows cols {cols} off {off} i {i}"
                    );
                }
            }
            grad_apply_run(&x, &g, dx, mu, p, q, o);
            let (hi, o3) = mu.fold(q, o);
            for i in 0..n {
                let want = g[i] * p + (x[i] - hi) * q + o3;
                assert_eq!(
                    dx[i].to_bits(),
                    want.to_bits(),
                    "grad_apply_run off {off} i {i}"
                );
            }
        }
    }

    /// The fused per-group backward gives the bits of the two passes (sums, then apply) with
    /// the same coefficients, for f32 and bf16, and for 1 and 3 threads.
    #[test]
    fn fused_channel_grad_matches_sums_then_apply() {
        // `planes = None`: statistics per channel over the batch (BatchNorm, channels first)
        fn check<T: Element>(
            x: &[T],
            g: &[T],
            threads: usize,
            lay: ChannelLayout,
            planes: Option<usize>,
        ) {
            let geom = Geom {
                n: 3,
                c: 6,
                s: x.len() / 18,
            };
            let nc = geom.n * geom.c;
            let real = <T::Compute as Real>::from_f64;
            let mu: Vec<Centre<T::Compute>> = (0..nc)
                .map(|i| Centre::of(7.0 + 0.25 * i as f64 + 1e-9))
                .collect();
            // any deterministic function of the unit's sums
            let coef = |pairs: UnitPairs, a: &[f64], b: &[f64]| {
                let (sa, sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
                let n = a.len();
                (
                    (0..n)
                        .map(|j| real(0.5 + pairs.pair(j) as f64 * 0.1))
                        .collect::<Vec<_>>(),
                    (0..n)
                        .map(|j| real(-sb * 1e-3 / (1 + j) as f64))
                        .collect::<Vec<_>>(),
                    (0..n)
                        .map(|j| real(-sa * 1e-3 * (1 + j) as f64))
                        .collect::<Vec<_>>(),
                )
            };
            let mut dx1 = vec![T::default(); x.len()];
            let (a1, b1) = super::super::threads::install(Some(threads), || match planes {
                Some(planes) => {
                    channel_grad_fused((x, g, &mut dx1), (geom, lay), planes, &mu, coef)
                }
                None => channel_grad_fused_per_channel((x, g, &mut dx1), geom, &mu, coef),
            });
            let (a2, b2) = super::super::threads::install(Some(threads), || {
                channel_grad_sums(x, g, geom, lay, &mu)
            });
            // the units' pairs: consecutive groups of `planes`, or each channel's N planes
            let units: Vec<(UnitPairs, usize)> = match planes {
                Some(planes) => (0..nc)
                    .step_by(planes)
                    .map(|first| (UnitPairs { first, stride: 1 }, planes))
                    .collect(),
                None => (0..geom.c)
                    .map(|first| {
                        (
                            UnitPairs {
                                first,
                                stride: geom.c,
                            },
                            geom.n,
                        )
                    })
                    .collect(),
            };
            let (mut p, mut q, mut o) = (
                vec![real(0.0); nc],
                vec![real(0.0); nc],
                vec![real(0.0); nc],
            );
            for (pairs, len) in units {
                let a: Vec<f64> = (0..len).map(|j| a2[pairs.pair(j)]).collect();
                let b: Vec<f64> = (0..len).map(|j| b2[pairs.pair(j)]).collect();
                let k = coef(pairs, &a, &b);
                for j in 0..len {
                    (p[pairs.pair(j)], q[pairs.pair(j)], o[pairs.pair(j)]) =
                        (k.0[j], k.1[j], k.2[j]);
                }
            }
            let k = GradCoefficients {
                mu: &mu,
                p: &p,
                q: &q,
                o: &o,
                per_sample: true,
            };
            let mut dx2 = vec![T::default(); x.len()];
            apply_channel_grad(x, g, &mut dx2, geom, lay, &k);
            assert_eq!((&a1, &b1), (&a2, &b2), "threads {threads} {lay:?}");
            let bits = |y: &[T]| y.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>();
            assert!(bits(&dx1) == bits(&dx2), "threads {threads} {lay:?}");
            assert!(dx1.iter().any(|v| v.to_f64() != 0.0));
        }
        // channels last: 5000 rows give two reduction pieces per sample; 1 thread: a task per
        // sample, 4 threads > 3 samples: parallel inside each sample
        let cases = [
            (ChannelLayout::First, 37usize, Some(2)),
            (ChannelLayout::First, 37, None),
            (ChannelLayout::Last, 5000, Some(2)),
        ];
        for (lay, s, planes) in cases {
            let len = 3 * 6 * s;
            let xs: Vec<f64> = (0..len)
                .map(|i| 7.0 + ((i * 7919) % 1013) as f64 / 97.0)
                .collect();
            let gs: Vec<f64> = (0..len)
                .map(|i| ((i * 104729) % 211) as f64 / 50.0 - 2.0)
                .collect();
            for threads in [1, 4] {
                let f = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<_>>();
                check(&f(&xs), &f(&gs), threads, lay, planes);
                let h = |v: &[f64]| {
                    v.iter()
                        .map(|&v| half::bf16::from_f64(v))
                        .collect::<Vec<_>>()
                };
                check(&h(&xs), &h(&gs), threads, lay, planes);
            }
        }
    }

    /// Deterministic uniform values in [-0.5, 0.5) (a 64-bit LCG's top 53 bits).
    fn uniform(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        }
    }

    /// The channels-last column sums (register blocks for 64 and 128 columns, element-wise
    /// otherwise) against float64 sums of the same products, on columns near 1e4 with a spread
    /// of 1e-2, for a row count that is not a multiple of the block, f32 and bf16.
    #[test]
    fn channels_last_grad_sums_match_f64_sums() {
        fn check<T: Element>(cols: usize, rows: usize, tol: f64) {
            let mut next = uniform(0x9e37_79b9_7f4a_7c15 ^ cols as u64);
            let x: Vec<T> = (0..rows * cols)
                .map(|i| T::from_f64(1e4 + (i % cols) as f64 * 0.5 + 1e-2 * next()))
                .collect();
            let g: Vec<T> = (0..rows * cols).map(|_| T::from_f64(next())).collect();
            let mu: Vec<Centre<T::Compute>> = (0..cols)
                .map(|c| Centre::of(1e4 + c as f64 * 0.5 + 1e-3))
                .collect();
            let (hi, lo) = split_centres(&mu);
            let (mut a, mut b) = (vec![T::Acc::ZERO; cols], vec![T::Acc::ZERO; cols]);
            grad_sums_columns(&mut a, &mut b, &x, &g, (&hi, &lo));
            for c in 0..cols {
                let (mut wa, mut wb, mut sa, mut sb) = (0.0, 0.0, 0.0, 0.0);
                for r in 0..rows {
                    let gv = g[r * cols + c].to_compute();
                    // the product in the compute type, as the kernel forms it
                    let d = gv * mu[c].centre(x[r * cols + c].to_compute());
                    wa += gv.to_f64();
                    wb += d.to_f64();
                    sa += gv.to_f64().abs();
                    sb += d.to_f64().abs();
                }
                let (ga, gb) = (a[c].to_f64(), b[c].to_f64());
                assert!(
                    (ga - wa).abs() <= tol * sa,
                    "{cols} cols, column {c}: Σg {ga} vs {wa}"
                );
                assert!(
                    (gb - wb).abs() <= tol * sb,
                    "{cols} cols, column {c}: Σg·d {gb} vs {wb}"
                );
            }
        }
        // 96, 256 and 1056 (past one column block): f32 in 32-column tiles; 0: no columns
        for cols in [64, 128, 96, 7, 256, 1056, 0] {
            check::<f32>(cols, 16 * 5 + 7, 2e-6);
            check::<half::bf16>(cols, 16 * 5 + 7, 1e-5);
        }
    }

    /// LayerNorm backward (column partials flushed every `FLUSH` rows, row lanes flushed every
    /// `FLUSH` chunks for f32) against float64 on rows near 1e4 with a spread of 1e-2: 53
    /// rows (not a multiple of the block) of 775 columns (past the last whole chunk).
    #[test]
    fn layer_norm_backward_matches_f64() {
        // the exact mean as `hi + lo`, and the mean rounded to f32 as the forward saves it
        // (whose rounding, up to 4.9e-4 at 1e4, the backward recovers: `recovered_centre`)
        for saved in [false, true] {
            layer_norm_backward_case(saved);
        }
    }

    fn layer_norm_backward_case(saved: bool) {
        let (rows, cols) = (16 * 3 + 5, 775);
        let mut next = uniform(0x2545_f491_4f6c_dd1d);
        let x: Vec<f32> = (0..rows * cols)
            .map(|_| (1e4 + 1e-2 * next()) as f32)
            .collect();
        let g: Vec<f32> = (0..rows * cols).map(|_| next() as f32).collect();
        let w: Vec<f32> = (0..cols).map(|c| 0.5 + (c % 7) as f32 * 0.25).collect();
        let (mut mean, mut rstd) = (Vec::new(), Vec::new());
        for r in x.chunks(cols) {
            let m = r.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let v = r.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / cols as f64;
            mean.push(m);
            rstd.push((1.0 / (v + 1e-5).sqrt()) as f32);
        }
        let mu: Vec<Centre<f32>> = mean
            .iter()
            .map(|&m| Centre::of(if saved { m as f32 as f64 } else { m }))
            .collect();
        let mut dx = vec![0f32; rows * cols];
        let (dw, db) = layer_norm_backward(&x, &g, Some(&mut dx), cols, &mu, &rstd, Some(&w));
        let (mut want_dw, mut want_db, mut abs_dw, mut abs_db) = (
            vec![0.0; cols],
            vec![0.0; cols],
            vec![0.0; cols],
            vec![0.0; cols],
        );
        let mut want_dx = vec![0.0; rows * cols];
        for r in 0..rows {
            let rs = rstd[r] as f64;
            let m = mean[r];
            let xhat = |c: usize| (x[r * cols + c] as f64 - m) * rs;
            let (mut sa, mut sb) = (0.0, 0.0);
            for c in 0..cols {
                let gv = g[r * cols + c] as f64;
                want_dw[c] += gv * xhat(c);
                want_db[c] += gv;
                abs_dw[c] += (gv * xhat(c)).abs();
                abs_db[c] += gv.abs();
                sa += gv * w[c] as f64;
                sb += gv * w[c] as f64 * xhat(c);
            }
            let (sa, sb) = (sa / cols as f64, sb / cols as f64);
            for c in 0..cols {
                let gw = g[r * cols + c] as f64 * w[c] as f64;
                want_dx[r * cols + c] = rs * (gw - sa - xhat(c) * sb);
            }
        }
        for c in 0..cols {
            assert!(
                (dw[c] - want_dw[c]).abs() <= 1e-5 * abs_dw[c],
                "saved mean {saved}: dw[{c}] {} vs {}",
                dw[c],
                want_dw[c]
            );
            assert!(
                (db[c] - want_db[c]).abs() <= 2e-6 * abs_db[c],
                "saved mean {saved}: db[{c}] {} vs {}",
                db[c],
                want_db[c]
            );
        }
        let scale = want_dx.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (&got, &want)) in dx.iter().zip(&want_dx).enumerate() {
            assert!(
                (got as f64 - want).abs() <= 1e-3 * scale,
                "saved mean {saved}: dx[{i}] {got} vs {want}"
            );
        }
    }

    /// The channels-first `dx` over bf16 words (`pairs::grad_apply_run`) gives every element
    /// `half`'s rounding of the f32 formula, as the element loop does (one element off
    /// alignment), with values of every class in `x` and `g`.
    #[test]
    fn bf16_word_grad_apply_matches_the_element_formula() {
        use super::super::tests::{bf16_at, bf16_inputs};
        use crate::dtype::Element;
        use half::bf16;
        for n in [2, 64, 98, 1026, 13] {
            let x = bf16_inputs(n);
            let g: Vec<bf16> = bf16_inputs(n + 3)[3..].to_vec();
            let m = Centre::<f32>::of(0.3333);
            let (p, q, o) = (0.75f32, -1.25f32, 0.5f32);
            let (hi, of) = m.fold(q, o);
            let (mut xb, mut gb, mut db) = (Vec::new(), Vec::new(), Vec::new());
            for off in [0, 1] {
                let xs: &[bf16] = bf16_at(&mut xb, off, &x);
                let gs: &[bf16] = bf16_at(&mut gb, off, &g);
                let dx = bf16_at(&mut db, off, &vec![bf16::ZERO; n]);
                assert_eq!(bf16::bf16_words(xs).is_some(), off == 0 && n % 2 == 0);
                super::grad_apply_run(xs, gs, dx, m, p, q, o);
                for i in 0..n {
                    let e = bf16::from_f32(gs[i].to_f32() * p + (xs[i].to_f32() - hi) * q + of);
                    assert_eq!(dx[i].to_bits(), e.to_bits(), "n {n}, offset {off}, {i}");
                }
            }
        }
    }
}
