//! Backward kernels: one fused reduction pass (Σg and Σg·(x − μ) together), then one
//! elementwise pass, with no temporaries of the input's size.
//!
//! For the channel ops (BatchNorm, InstanceNorm, GroupNorm) the reduction produces, per
//! `(n, c)`, `A = Σ_s g` and `B = Σ_s g·(x − μ)`; the ops layer turns them into per-`(n, c)`
//! coefficients of `dx = g·p + (x − μ)·q + o` and into the parameter gradients.

use super::moments::{Centre, LANES, acc_of, add_tail, simd_clones};
use super::{ChannelLayout, Geom, rows_per_piece};
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
                .zip(g[..nc * s].par_chunks(s))
                .enumerate()
                .map(|(i, (xp, gp))| grad_sums_run(xp, gp, mu[i]))
                .collect();
            sums.into_iter().unzip()
        }
        ChannelLayout::Last => {
            let (c, s) = (geom.c, geom.s);
            let mut a_all = Vec::with_capacity(nc);
            let mut b_all = Vec::with_capacity(nc);
            for n in 0..geom.n {
                let range = n * s * c..(n + 1) * s * c;
                let centres = &mu[n * c..(n + 1) * c];
                let piece = rows_per_piece(c) * c;
                let partials: PairSums<T::Acc> = x[range.clone()]
                    .par_chunks(piece)
                    .zip(g[range].par_chunks(piece))
                    .map(|(xc, gc)| {
                        let mut a = vec![T::Acc::ZERO; c];
                        let mut b = vec![T::Acc::ZERO; c];
                        for (xr, gr) in xc.chunks_exact(c).zip(gc.chunks_exact(c)) {
                            for j in 0..c {
                                let gv = gr[j].to_compute();
                                a[j] += acc_of::<T>(gv);
                                b[j] += acc_of::<T>(gv * centres[j].centre(xr[j].to_compute()));
                            }
                        }
                        (a, b)
                    })
                    .collect();
                let mut a = vec![T::Acc::ZERO; c];
                let mut b = vec![T::Acc::ZERO; c];
                for (pa, pb) in partials {
                    for j in 0..c {
                        a[j] += pa[j];
                        b[j] += pb[j];
                    }
                }
                a_all.extend(a.iter().map(|v| v.to_f64()));
                b_all.extend(b.iter().map(|v| v.to_f64()));
            }
            (a_all, b_all)
        }
    }
}

/// Per-piece partial column sums of two quantities.
type PairSums<A> = Vec<(Vec<A>, Vec<A>)>;

simd_clones! {
/// `(Σ g, Σ g·(x − m))` over one contiguous run, in [`LANES`] independent accumulators
/// (element `k` goes to lane `k mod LANES`), combined in lane order.
fn grad_sums_run<T: Element>(xs: &[T], gs: &[T], m: Centre<T::Compute>) -> (f64, f64) {
    let mut a = [T::Acc::ZERO; LANES];
    let mut b = [T::Acc::ZERO; LANES];
    let (xc, gc) = (xs.chunks_exact(LANES), gs.chunks_exact(LANES));
    let (xt, gt) = (xc.remainder(), gc.remainder());
    for (xv, gv) in xc.zip(gc) {
        for i in 0..LANES {
            let g = gv[i].to_compute();
            a[i] += acc_of::<T>(g);
            b[i] += acc_of::<T>(g * m.centre(xv[i].to_compute()));
        }
    }
    let len = xt.len().min(gt.len());
    add_tail(&mut a, len, |i| acc_of::<T>(gt[i].to_compute()));
    add_tail(&mut b, len, |i| acc_of::<T>(gt[i].to_compute() * m.centre(xt[i].to_compute())));
    (lanes_sum(&a), lanes_sum(&b))
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
    for ((d, &xv), &gv) in dx.iter_mut().zip(xs).zip(gs) {
        *d = T::from_compute(gv.to_compute() * p + m.centre(xv.to_compute()) * q + o);
    }
}
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
    let one = |i: usize, xv: T, gv: T| {
        let d = k.mu[i].centre(xv.to_compute());
        T::from_compute(gv.to_compute() * k.p[i] + d * k.q[i] + k.o[i])
    };
    match layout {
        ChannelLayout::First => {
            let s = geom.s;
            dx[..total]
                .par_chunks_mut(s)
                .zip(x[..total].par_chunks(s).zip(g[..total].par_chunks(s)))
                .enumerate()
                .for_each(|(plane, (dp, (xp, gp)))| {
                    let i = idx(plane / geom.c, plane % geom.c);
                    grad_apply_run(xp, gp, dp, k.mu[i], k.p[i], k.q[i], k.o[i]);
                });
        }
        ChannelLayout::Last => {
            let c = geom.c;
            let rows = rows_per_piece(c);
            dx[..total]
                .par_chunks_mut(rows * c)
                .zip(
                    x[..total]
                        .par_chunks(rows * c)
                        .zip(g[..total].par_chunks(rows * c)),
                )
                .enumerate()
                .for_each(|(p, (dc, (xc, gc)))| {
                    for (j, ((dr, xr), gr)) in dc
                        .chunks_mut(c)
                        .zip(xc.chunks(c))
                        .zip(gc.chunks(c))
                        .enumerate()
                    {
                        let base = idx((p * rows + j) / geom.s.max(1), 0);
                        for ch in 0..c {
                            dr[ch] = one(base + ch, xr[ch], gr[ch]);
                        }
                    }
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
    let piece = rows_per_piece(cols);
    let m = T::Compute::from_usize(cols);
    let w = |j: usize| weight.map_or(T::Compute::ONE, |w| w[j]);
    let work = |r0: usize, xc: &[T], gc: &[T], mut dc: Option<&mut [T]>| {
        let mut dw = vec![T::Acc::ZERO; cols];
        let mut db = vec![T::Acc::ZERO; cols];
        for (k, (xr, gr)) in xc.chunks(cols).zip(gc.chunks(cols)).enumerate() {
            let r = r0 + k;
            let (c, rs) = (mu[r], rstd[r]);
            let mut sa = T::Acc::ZERO;
            let mut sb = T::Acc::ZERO;
            for j in 0..cols {
                let gv = gr[j].to_compute();
                let d = c.centre(xr[j].to_compute());
                let gw = gv * w(j);
                sa += acc_of::<T>(gw);
                sb += acc_of::<T>(gw * d);
                dw[j] += acc_of::<T>(gv * d * rs);
                db[j] += acc_of::<T>(gv);
            }
            if let Some(dc) = dc.as_deref_mut() {
                let a = T::Compute::from_f64(sa.to_f64()) / m * rs;
                let b = T::Compute::from_f64(sb.to_f64()) / m * rs * rs * rs;
                let dr = &mut dc[k * cols..(k + 1) * cols];
                for j in 0..cols {
                    let d = c.centre(xr[j].to_compute());
                    dr[j] = T::from_compute(gr[j].to_compute() * w(j) * rs - a - d * b);
                }
            }
        }
        (dw, db)
    };
    let total = rows * cols;
    let partials: PairSums<T::Acc> = match dx {
        Some(d) => d[..total]
            .par_chunks_mut(piece * cols)
            .zip(
                x[..total]
                    .par_chunks(piece * cols)
                    .zip(g[..total].par_chunks(piece * cols)),
            )
            .enumerate()
            .map(|(p, (dc, (xc, gc)))| work(p * piece, xc, gc, Some(dc)))
            .collect(),
        None => x[..total]
            .par_chunks(piece * cols)
            .zip(g[..total].par_chunks(piece * cols))
            .enumerate()
            .map(|(p, (xc, gc))| work(p * piece, xc, gc, None))
            .collect(),
    };
    let mut dw = vec![T::Acc::ZERO; cols];
    let mut db = vec![T::Acc::ZERO; cols];
    for (pw, pb) in partials {
        for j in 0..cols {
            dw[j] += pw[j];
            db[j] += pb[j];
        }
    }
    (
        dw.iter().map(|v| v.to_f64()).collect(),
        db.iter().map(|v| v.to_f64()).collect(),
    )
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
                .zip(
                    x[..total]
                        .par_chunks(rows * c)
                        .zip(g[..total].par_chunks(rows * c)),
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
                .zip(
                    x[..total]
                        .par_chunks(sample)
                        .zip(g[..total].par_chunks(sample)),
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
