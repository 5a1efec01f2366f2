//! BatchNorm and GroupNorm backward against the closed form in f64, on every plane length the
//! CPU backend routes differently: planes of 1, 4 and 16 elements (column sums, short-plane
//! kernels), 63/64 and 99 (the short kernels and BatchNorm's two passes in memory order),
//! 255/256 and 300 (the fused per-unit kernels), in both layouts. The golden PyTorch cases are
//! small (planes of at most 97 elements, most under 16); these reach the larger shapes' paths.
//!
//! Reference, per statistic `k` (a channel over the batch, or a (sample, group)) with `M`
//! elements, from the forward's saved `μ_k` and `r_k`: `x̂ = (x − μ_k)·r_k`, `ĝ = g·γ_c`,
//! `dx = r_k·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`, `dγ_c = Σ g·x̂`, `dβ_c = Σ g`.

mod sync_common;
use normkit::ops::{
    BatchNormArgs, ForwardStats, Gradients, GroupNormArgs, GroupNormBackwardArgs, NormBackwardArgs,
    batch_norm, batch_norm_backward, group_norm, group_norm_backward,
};
use normkit::{Tensor, TensorMut};
use sync_common::{lcg_data as data, view, view_mut};

/// `(N, C, S)` of a shape and the memory position of logical `(n, c, s)`.
struct Layout {
    n: usize,
    c: usize,
    s: usize,
    cl: bool,
}

impl Layout {
    fn of(shape: &[usize], cl: bool) -> Layout {
        Layout {
            n: shape[0],
            c: shape[1],
            s: shape[2..].iter().product(),
            cl,
        }
    }
    fn len(&self) -> usize {
        self.n * self.c * self.s
    }
    fn at(&self, n: usize, c: usize, s: usize) -> usize {
        if self.cl {
            (n * self.s + s) * self.c + c
        } else {
            (n * self.c + c) * self.s + s
        }
    }
}

/// The closed-form `(dx, dγ, dβ)` in f64 (dx in memory order) and the size of dx's terms
/// (`max r·|ĝ|`, its error's scale where the terms cancel, as over a statistic of one
/// element); `stat(n, c)` is the index of the statistic of `(n, c)` into `mean` and
/// `invstd`.
fn reference(
    l: &Layout,
    (x, g, w): (&[f32], &[f32], &[f32]),
    (mean, invstd): (&[f64], &[f64]),
    stat: &dyn Fn(usize, usize) -> usize,
) -> Reference {
    let k = mean.len();
    let (mut sum_g, mut sum_gx, mut count) = (vec![0.0; k], vec![0.0; k], vec![0.0; k]);
    let (mut dw, mut db) = (vec![0.0; l.c], vec![0.0; l.c]);
    let xhat = |n, c, s| (x[l.at(n, c, s)] as f64 - mean[stat(n, c)]) * invstd[stat(n, c)];
    for n in 0..l.n {
        for c in 0..l.c {
            for s in 0..l.s {
                let (gv, xh, j) = (g[l.at(n, c, s)] as f64, xhat(n, c, s), stat(n, c));
                sum_g[j] += gv * w[c] as f64;
                sum_gx[j] += gv * w[c] as f64 * xh;
                count[j] += 1.0;
                dw[c] += gv * xh;
                db[c] += gv;
            }
        }
    }
    let mut dx = vec![0.0; x.len()];
    let mut terms = 0.0f64;
    for n in 0..l.n {
        for c in 0..l.c {
            let j = stat(n, c);
            for s in 0..l.s {
                let gh = g[l.at(n, c, s)] as f64 * w[c] as f64;
                terms = terms.max(invstd[j] * gh.abs());
                let v = gh - sum_g[j] / count[j] - xhat(n, c, s) * sum_gx[j] / count[j];
                dx[l.at(n, c, s)] = invstd[j] * v;
            }
        }
    }
    ((dx, terms), dw, db)
}

type Reference = ((Vec<f64>, f64), Vec<f64>, Vec<f64>);

/// `max |got − want| / max(max |want|, floor)`.
fn rel_err(got: &[f32], want: &[f64], floor: f64) -> f64 {
    let scale = want.iter().fold(floor, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
    err / scale
}

const SHAPES: [&[usize]; 9] = [
    &[512, 24],
    &[64, 24, 2, 2],
    &[24, 24, 4, 4],
    &[12, 24, 7, 9],
    &[12, 24, 8, 8],
    &[10, 24, 9, 11],
    &[4, 24, 15, 17],
    &[4, 24, 16, 16],
    &[3, 24, 15, 20],
];

/// Rows wider than the channels-last backward's column blocks (1024 columns; 2100 = two whole
/// blocks and a partial one), over more rows than its 16 pieces of partial sums take at once
/// (600 rows of 1030), and channels last with two blocks per row.
const WIDE_SHAPES: [&[usize]; 3] = [&[37, 2100], &[600, 1030], &[2, 1100, 3, 5]];

/// f32 rows of a multiple of 32 columns other than 64 and 128, which the channels-last
/// backward sums in 32-column tiles of 16-row blocks: 192 over 40 rows (two whole blocks and
/// part of one), 256 over 33, 384 channels last over samples of 35 rows, 1152 (past one
/// column block) over 17.
const TILE_SHAPES: [&[usize]; 4] = [&[40, 192], &[33, 256], &[3, 384, 5, 7], &[17, 1152]];

/// `f(shape, channels_last, layout, x, g)` for every shape of `shapes` in both layouts (2-D
/// shapes in one), `x` and `g` from `seeds` around `offsets`.
fn each_case(shapes: &[&[usize]], seeds: (u64, u64), offsets: (f32, f32), f: Case<'_>) {
    for &shape in shapes {
        for cl in [false, true]
            .into_iter()
            .filter(|&cl| !cl || shape.len() > 2)
        {
            let l = Layout::of(shape, cl);
            let (x, g) = (
                data(l.len(), seeds.0, offsets.0),
                data(l.len(), seeds.1, offsets.1),
            );
            f(shape, cl, l, &x, &g);
        }
    }
}

/// The body of [`each_case`].
type Case<'a> = &'a dyn Fn(&[usize], bool, Layout, &[f32], &[f32]);

/// A backward call writing `(dx, dγ, dβ)`, `dx` only when asked (`with_dx`).
type Backward<'a> = &'a dyn Fn(&mut [f32], &mut [f32], &mut [f32], bool);

/// The gradients of a call of [`Backward`] on a tensor of `shape`.
fn grads<'a>(
    (dx, dw, db): (&'a mut [f32], &'a mut [f32], &'a mut [f32]),
    shape: &[usize],
    cl: bool,
    with_dx: bool,
) -> Gradients<'a> {
    let c = shape[1];
    Gradients {
        grad_input: with_dx.then(|| view_mut(dx, shape, cl)),
        grad_weight: Some(TensorMut::new(dw, &[c]).unwrap()),
        grad_bias: Some(TensorMut::new(db, &[c]).unwrap()),
        accumulate: false,
    }
}

/// Runs `backward(dx, dγ, dβ, with_dx)` with and without `grad_input` and checks the result
/// against `want`, and that the parameter gradients are the same bits without `dx`.
fn check(what: &str, want: Reference, backward: Backward<'_>) {
    let (n, c) = (want.0.0.len(), want.1.len());
    let (mut dx, mut dw, mut db) = (vec![0.0f32; n], vec![0.0f32; c], vec![0.0f32; c]);
    backward(&mut dx, &mut dw, &mut db, true);
    for (name, got, want, floor, tol) in [
        ("dx", &dx, &want.0.0, want.0.1, 2e-5),
        ("dweight", &dw, &want.1, 1e-30, 1e-5),
        ("dbias", &db, &want.2, 1e-30, 1e-5),
    ] {
        let e = rel_err(got, want, floor);
        assert!(e <= tol, "{what}: {name} relative error {e:e} > {tol:e}");
    }
    let (mut dx2, mut dw2, mut db2) = (vec![0.0f32; n], vec![0.0f32; c], vec![0.0f32; c]);
    backward(&mut dx2, &mut dw2, &mut db2, false);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(&dw) == bits(&dw2) && bits(&db) == bits(&db2),
        "{what}: the parameter gradients differ without grad_input"
    );
    assert!(
        dx2.iter().all(|&v| v == 0.0),
        "{what}: dx written though not asked for"
    );
}

#[test]
fn batch_norm_backward_matches_the_closed_form_on_every_plane_length() {
    each_case(&SHAPES, (3, 5), (1.5, 0.25), &batch_norm_case);
}

#[test]
fn batch_norm_backward_matches_the_closed_form_on_wide_rows() {
    each_case(&WIDE_SHAPES, (13, 17), (-0.75, 0.5), &batch_norm_case);
}

#[test]
fn batch_norm_backward_matches_the_closed_form_on_tiled_rows() {
    each_case(&TILE_SHAPES, (19, 23), (0.5, -0.25), &batch_norm_case);
}

/// One shape of the BatchNorm backward tests.
fn batch_norm_case(shape: &[usize], cl: bool, l: Layout, x: &[f32], g: &[f32]) {
    {
        let w: Vec<f32> = (0..l.c).map(|i| 0.5 + i as f32 / 16.0).collect();
        let mut y = vec![0.0f32; l.len()];
        let args = BatchNormArgs {
            training: true,
            ..Default::default()
        };
        let s = batch_norm(&view(x, shape, cl), &mut view_mut(&mut y, shape, cl), args).unwrap();
        let stats = (s.mean.to_f64_vec(), s.invstd.to_f64_vec());
        let want = reference(&l, (x, g, &w), (&stats.0, &stats.1), &|_, c| c);
        let what = format!("batch_norm_backward {shape:?} channels_last={cl}");
        check(&what, want, &|dx, dw, db, with_dx| {
            batch_norm_backward(
                &view(g, shape, cl),
                &view(x, shape, cl),
                NormBackwardArgs {
                    weight: Some(Tensor::new(&w, &[l.c]).unwrap()),
                    stats: ForwardStats::Saved {
                        mean: s.mean.view(),
                        invstd: s.invstd.view(),
                    },
                    grads: grads((dx, dw, db), shape, cl, with_dx),
                },
            )
            .unwrap()
        });
    }
}

#[test]
fn group_norm_backward_matches_the_closed_form_on_every_plane_length() {
    for groups in [4, 24] {
        each_case(&SHAPES, (7, 11), (-2.5, 0.5), &group_norm_case(groups));
    }
}

/// GroupNorm over 256 and 192 channels: channels last, the column sums of the short-plane
/// path (samples of 16 and 25 rows) and of the long one (samples of 300 rows) in tiles.
#[test]
fn group_norm_backward_matches_the_closed_form_on_tiled_rows() {
    let shapes: [&[usize]; 3] = [&[6, 256, 4, 4], &[3, 192, 5, 5], &[2, 256, 15, 20]];
    each_case(&shapes, (29, 31), (1.25, -0.5), &group_norm_case(8));
}

/// One shape of the GroupNorm backward tests with `groups` groups.
fn group_norm_case(groups: usize) -> impl Fn(&[usize], bool, Layout, &[f32], &[f32]) {
    move |shape, cl, l, x, g| {
        let w: Vec<f32> = (0..l.c).map(|i| 1.5 - i as f32 / 32.0).collect();
        let mut y = vec![0.0f32; l.len()];
        let xt = view(x, shape, cl);
        let args = GroupNormArgs::new(groups);
        let s = group_norm(&xt, &mut view_mut(&mut y, shape, cl), args).unwrap();
        let stats = (s.mean.to_f64_vec(), s.invstd.to_f64_vec());
        let per = l.c / groups;
        let stat = |n: usize, c: usize| n * groups + c / per;
        let want = reference(&l, (x, g, &w), (&stats.0, &stats.1), &stat);
        let what = format!("group_norm_backward G={groups} {shape:?} channels_last={cl}");
        check(&what, want, &|dx, dw, db, with_dx| {
            group_norm_backward(
                &view(g, shape, cl),
                &xt,
                GroupNormBackwardArgs {
                    num_groups: groups,
                    weight: Some(Tensor::new(&w, &[l.c]).unwrap()),
                    mean: s.mean.view(),
                    invstd: s.invstd.view(),
                    grads: grads((dx, dw, db), shape, cl, with_dx),
                },
            )
            .unwrap()
        });
    }
}

/// No channels: channels-last rows of zero columns (which the tile rule's `cols % 32 == 0`
/// also matches) end in empty gradients or an error naming the op, never a panic.
#[test]
fn backward_with_no_channels_does_not_panic() {
    for (shape, cl) in [([4usize, 0, 3, 3], true), ([4, 0, 3, 3], false)] {
        let (x, g) = (Vec::<f32>::new(), Vec::<f32>::new());
        let (mut dx, mut dw, mut db) = (Vec::<f32>::new(), Vec::<f32>::new(), Vec::<f32>::new());
        let (mean, invstd) = (Vec::<f32>::new(), Vec::<f32>::new());
        let r = batch_norm_backward(
            &view(&g, &shape, cl),
            &view(&x, &shape, cl),
            NormBackwardArgs {
                weight: None,
                stats: ForwardStats::Saved {
                    mean: Tensor::new(&mean, &[0]).unwrap(),
                    invstd: Tensor::new(&invstd, &[0]).unwrap(),
                },
                grads: grads((&mut dx, &mut dw, &mut db), &shape, cl, true),
            },
        );
        // an error or an empty result, either way no panic
        if let Err(e) = r {
            assert!(e.to_string().contains("batch_norm_backward"), "{e}");
        }
    }
}
