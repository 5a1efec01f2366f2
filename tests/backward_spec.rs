//! Backward passes against the spec's verified numbers (PyTorch 2.15, §2.9) and a float64
//! finite-difference check of every layer.

use normkit::ops::{
    BatchNormArgs, ForwardStats, Gradients, GroupNormArgs, GroupNormBackwardArgs, InstanceNormArgs,
    LayerNormArgs, LayerNormBackwardArgs, LrnArgs, NormBackwardArgs, batch_norm,
    batch_norm_backward, group_norm, group_norm_backward, instance_norm, instance_norm_backward,
    layer_norm, layer_norm_backward, local_response_norm, local_response_norm_backward,
};
use normkit::{Tensor, TensorMut};

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}; all {got:?}"
        );
    }
}

#[test]
fn batch_norm_backward_worked_example() {
    let x = [1.0, 10.0, 2.0, 20.0, 4.0, 60.0];
    let w = [2.0, 0.5];
    let b = [0.0, 0.0];
    let g = [1.0, 0.0, 0.0, 1.0, -1.0, 2.0];
    let mut y = [0.0; 6];
    let stats = batch_norm(
        &Tensor::new(&x[..], &[3, 2]).unwrap(),
        &mut TensorMut::new(&mut y[..], &[3, 2]).unwrap(),
        BatchNormArgs {
            training: true,
            weight: Some(Tensor::new(&w[..], &[2]).unwrap()),
            bias: Some(Tensor::new(&b[..], &[2]).unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    let (mut dx, mut dw, mut db) = ([0.0; 6], [0.0; 2], [0.0; 2]);
    batch_norm_backward(
        &Tensor::new(&g[..], &[3, 2]).unwrap(),
        &Tensor::new(&x[..], &[3, 2]).unwrap(),
        NormBackwardArgs {
            weight: Some(Tensor::new(&w[..], &[2]).unwrap()),
            stats: ForwardStats::Saved {
                mean: stats.mean.view(),
                invstd: stats.invstd.view(),
            },
            grads: Gradients {
                grad_input: Some(TensorMut::new(&mut dx[..], &[3, 2]).unwrap()),
                grad_weight: Some(TensorMut::new(&mut dw[..], &[2]).unwrap()),
                grad_bias: Some(TensorMut::new(&mut db[..], &[2]).unwrap()),
                accumulate: false,
            },
        },
    )
    .unwrap();
    close(
        &dx,
        &[
            0.22908916406663332,
            -0.006613000996075388,
            -0.3436182832772034,
            0.008266250625125437,
            0.11452911921056969,
            -0.0016532496290500485,
        ],
        1e-12,
        "dx",
    );
    close(&dw, &[-2.4053434457631697, 2.3145502246326264], 1e-12, "dw");
    close(&db, &[0.0, 3.0], 1e-12, "db");
}

/// forward(x, γ, β) -> y
type Forward<'a> = dyn Fn(&[f64], &[f64], &[f64]) -> Vec<f64> + 'a;
/// backward(x, γ, β, dy) -> (dx, dγ, dβ)
type Backward<'a> = dyn Fn(&[f64], &[f64], &[f64], &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) + 'a;

/// `L(x, γ, β) = Σ gout·forward(x, γ, β)`; checks the analytical gradients against central
/// differences in float64.
fn fd_check(name: &str, shape: &[usize], pshape: &[usize], fwd: &Forward, bwd: &Backward) {
    let n: usize = shape.iter().product();
    let pn: usize = pshape.iter().product();
    let x: Vec<f64> = (0..n)
        .map(|i| ((i * 7919 % 97) as f64 / 97.0 - 0.5) * 3.0 + 0.2)
        .collect();
    let gamma: Vec<f64> = (0..pn).map(|i| 0.5 + (i as f64) * 0.25).collect();
    let beta: Vec<f64> = (0..pn).map(|i| (i as f64) * 0.1 - 0.3).collect();
    let gout: Vec<f64> = (0..n)
        .map(|i| ((i * 104729 % 89) as f64 / 89.0) - 0.45)
        .collect();
    let loss = |x: &[f64], gm: &[f64], bt: &[f64]| -> f64 {
        fwd(x, gm, bt).iter().zip(&gout).map(|(a, b)| a * b).sum()
    };
    let (dx, dw, db) = bwd(&x, &gamma, &beta, &gout);
    let h = 1e-6;
    let num = |v: &[f64], i: usize, f: &dyn Fn(&[f64]) -> f64| {
        let mut p = v.to_vec();
        p[i] += h;
        let lp = f(&p);
        p[i] -= 2.0 * h;
        (lp - f(&p)) / (2.0 * h)
    };
    let ndx: Vec<f64> = (0..n)
        .map(|i| num(&x, i, &|v| loss(v, &gamma, &beta)))
        .collect();
    close(&dx, &ndx, 1e-6, &format!("{name} dx"));
    if !dw.is_empty() {
        let ndw: Vec<f64> = (0..pn)
            .map(|i| num(&gamma, i, &|v| loss(&x, v, &beta)))
            .collect();
        let ndb: Vec<f64> = (0..pn)
            .map(|i| num(&beta, i, &|v| loss(&x, &gamma, v)))
            .collect();
        close(&dw, &ndw, 1e-6, &format!("{name} dweight"));
        close(&db, &ndb, 1e-6, &format!("{name} dbias"));
    }
}

fn grads<'a>(
    dx: &'a mut [f64],
    dw: &'a mut [f64],
    db: &'a mut [f64],
    shape: &[usize],
    p: &[usize],
) -> Gradients<'a> {
    Gradients {
        grad_input: Some(TensorMut::new(dx, shape).unwrap()),
        grad_weight: Some(TensorMut::new(dw, p).unwrap()),
        grad_bias: Some(TensorMut::new(db, p).unwrap()),
        accumulate: false,
    }
}

#[test]
fn batch_norm_finite_differences_train_and_eval() {
    let shape = [3, 2, 5];
    let rm = [0.3, -0.2];
    let rv = [1.5, 0.7];
    for training in [true, false] {
        let fwd = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = vec![0.0; x.len()];
            let (mut m, mut v) = (rm.to_vec(), rv.to_vec());
            batch_norm(
                &Tensor::new(x, &shape).unwrap(),
                &mut TensorMut::new(&mut y, &shape).unwrap(),
                BatchNormArgs {
                    training,
                    weight: Some(Tensor::new(w, &[2]).unwrap()),
                    bias: Some(Tensor::new(b, &[2]).unwrap()),
                    running_mean: Some(TensorMut::new(&mut m, &[2]).unwrap()),
                    running_var: Some(TensorMut::new(&mut v, &[2]).unwrap()),
                    ..Default::default()
                },
            )
            .unwrap();
            y
        };
        let bwd = |x: &[f64], w: &[f64], b: &[f64], g: &[f64]| {
            let mut y = vec![0.0; x.len()];
            let stats = batch_norm(
                &Tensor::new(x, &shape).unwrap(),
                &mut TensorMut::new(&mut y, &shape).unwrap(),
                BatchNormArgs {
                    training: true,
                    weight: Some(Tensor::new(w, &[2]).unwrap()),
                    bias: Some(Tensor::new(b, &[2]).unwrap()),
                    ..Default::default()
                },
            )
            .unwrap();
            let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; 2], vec![0.0; 2]);
            let st = if training {
                ForwardStats::Saved {
                    mean: stats.mean.view(),
                    invstd: stats.invstd.view(),
                }
            } else {
                ForwardStats::Running {
                    mean: Tensor::new(&rm[..], &[2]).unwrap(),
                    var: Tensor::new(&rv[..], &[2]).unwrap(),
                    eps: 1e-5,
                }
            };
            batch_norm_backward(
                &Tensor::new(g, &shape).unwrap(),
                &Tensor::new(x, &shape).unwrap(),
                NormBackwardArgs {
                    weight: Some(Tensor::new(w, &[2]).unwrap()),
                    stats: st,
                    grads: grads(&mut dx, &mut dw, &mut db, &shape, &[2]),
                },
            )
            .unwrap();
            (dx, dw, db)
        };
        fd_check(
            &format!("batch_norm training={training}"),
            &shape,
            &[2],
            &fwd,
            &bwd,
        );
    }
}

#[test]
fn instance_and_group_norm_finite_differences() {
    let shape = [2, 4, 3];
    let fwd_in = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; x.len()];
        let args = InstanceNormArgs {
            weight: Some(Tensor::new(w, &[4]).unwrap()),
            bias: Some(Tensor::new(b, &[4]).unwrap()),
            ..Default::default()
        };
        instance_norm(
            &Tensor::new(x, &shape).unwrap(),
            &mut TensorMut::new(&mut y, &shape).unwrap(),
            args,
        )
        .unwrap();
        y
    };
    let bwd_in = |x: &[f64], w: &[f64], b: &[f64], g: &[f64]| {
        let mut y = vec![0.0; x.len()];
        let args = InstanceNormArgs {
            weight: Some(Tensor::new(w, &[4]).unwrap()),
            bias: Some(Tensor::new(b, &[4]).unwrap()),
            ..Default::default()
        };
        let s = instance_norm(
            &Tensor::new(x, &shape).unwrap(),
            &mut TensorMut::new(&mut y, &shape).unwrap(),
            args,
        )
        .unwrap();
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; 4], vec![0.0; 4]);
        instance_norm_backward(
            &Tensor::new(g, &shape).unwrap(),
            &Tensor::new(x, &shape).unwrap(),
            NormBackwardArgs {
                weight: Some(Tensor::new(w, &[4]).unwrap()),
                stats: ForwardStats::Saved {
                    mean: s.mean.view(),
                    invstd: s.invstd.view(),
                },
                grads: grads(&mut dx, &mut dw, &mut db, &shape, &[4]),
            },
        )
        .unwrap();
        (dx, dw, db)
    };
    fd_check("instance_norm", &shape, &[4], &fwd_in, &bwd_in);
    let fwd_gn = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; x.len()];
        let args = GroupNormArgs {
            weight: Some(Tensor::new(w, &[4]).unwrap()),
            bias: Some(Tensor::new(b, &[4]).unwrap()),
            ..GroupNormArgs::new(2)
        };
        group_norm(
            &Tensor::new(x, &shape).unwrap(),
            &mut TensorMut::new(&mut y, &shape).unwrap(),
            args,
        )
        .unwrap();
        y
    };
    let bwd_gn = |x: &[f64], w: &[f64], b: &[f64], g: &[f64]| {
        let mut y = vec![0.0; x.len()];
        let args = GroupNormArgs {
            weight: Some(Tensor::new(w, &[4]).unwrap()),
            bias: Some(Tensor::new(b, &[4]).unwrap()),
            ..GroupNormArgs::new(2)
        };
        let s = group_norm(
            &Tensor::new(x, &shape).unwrap(),
            &mut TensorMut::new(&mut y, &shape).unwrap(),
            args,
        )
        .unwrap();
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; 4], vec![0.0; 4]);
        group_norm_backward(
            &Tensor::new(g, &shape).unwrap(),
            &Tensor::new(x, &shape).unwrap(),
            GroupNormBackwardArgs {
                num_groups: 2,
                weight: Some(Tensor::new(w, &[4]).unwrap()),
                mean: s.mean.view(),
                invstd: s.invstd.view(),
                grads: grads(&mut dx, &mut dw, &mut db, &shape, &[4]),
            },
        )
        .unwrap();
        (dx, dw, db)
    };
    fd_check("group_norm", &shape, &[4], &fwd_gn, &bwd_gn);
}

#[test]
fn layer_norm_and_lrn_finite_differences() {
    let shape = [3, 2, 3];
    let ns = [2usize, 3];
    let fwd = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; x.len()];
        let args = LayerNormArgs {
            weight: Some(Tensor::new(w, &ns).unwrap()),
            bias: Some(Tensor::new(b, &ns).unwrap()),
            ..LayerNormArgs::new(&ns)
        };
        layer_norm(
            &Tensor::new(x, &shape).unwrap(),
            &mut TensorMut::new(&mut y, &shape).unwrap(),
            args,
        )
        .unwrap();
        y
    };
    let bwd = |x: &[f64], w: &[f64], b: &[f64], g: &[f64]| {
        let mut y = vec![0.0; x.len()];
        let args = LayerNormArgs {
            weight: Some(Tensor::new(w, &ns).unwrap()),
            bias: Some(Tensor::new(b, &ns).unwrap()),
            ..LayerNormArgs::new(&ns)
        };
        let s = layer_norm(
            &Tensor::new(x, &shape).unwrap(),
            &mut TensorMut::new(&mut y, &shape).unwrap(),
            args,
        )
        .unwrap();
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; 6], vec![0.0; 6]);
        layer_norm_backward(
            &Tensor::new(g, &shape).unwrap(),
            &Tensor::new(x, &shape).unwrap(),
            LayerNormBackwardArgs {
                normalized_shape: ns.to_vec(),
                weight: Some(Tensor::new(w, &ns).unwrap()),
                mean: s.mean.view(),
                invstd: s.invstd.view(),
                grads: grads(&mut dx, &mut dw, &mut db, &shape, &ns),
            },
        )
        .unwrap();
        (dx, dw, db)
    };
    fd_check("layer_norm", &shape, &ns, &fwd, &bwd);
    for size in [2usize, 3, 4, 5] {
        let shape = [2, 5, 3];
        let lrn = LrnArgs {
            size,
            alpha: 0.3,
            beta: 0.75,
            k: 1.0,
        };
        let fwd = |x: &[f64], _: &[f64], _: &[f64]| {
            let mut y = vec![0.0; x.len()];
            local_response_norm(
                &Tensor::new(x, &shape).unwrap(),
                &mut TensorMut::new(&mut y, &shape).unwrap(),
                lrn,
            )
            .unwrap();
            y
        };
        let bwd = |x: &[f64], _: &[f64], _: &[f64], g: &[f64]| {
            let mut dx = vec![0.0; x.len()];
            local_response_norm_backward(
                &Tensor::new(g, &shape).unwrap(),
                &Tensor::new(x, &shape).unwrap(),
                &mut TensorMut::new(&mut dx, &shape).unwrap(),
                lrn,
            )
            .unwrap();
            (dx, vec![], vec![])
        };
        fd_check(&format!("lrn size {size}"), &shape, &[1], &fwd, &bwd);
    }
}

/// GroupNorm and BatchNorm backward on f32 data far from zero against its spread
/// (1e4 ± 1e-2): the saved f32 means are off by up to 4.9e-4, 5 % of the spread. dweight must
/// still match float64 on the exact means of the same data within 1e-4 of `Σ|g·x̂|`: the
/// backward recovers the saved means' rounding (`recovered_centres`), as PyTorch does not.
#[test]
fn channel_backward_recovers_the_saved_f32_means() {
    let shape = [4usize, 4, 8];
    let (n, c, s) = (shape[0], shape[1], shape[2]);
    let len = n * c * s;
    let wave = |i: usize, k: usize| ((i * k % 97) as f64 / 97.0 - 0.5) * 2.0;
    let x: Vec<f32> = (0..len)
        .map(|i| (1e4 + 1e-2 * wave(i, 37)) as f32)
        .collect();
    let g: Vec<f32> = (0..len).map(|i| wave(i, 53) as f32).collect();
    let w: Vec<f32> = (0..c).map(|j| 0.5 + j as f32 * 0.25).collect();
    let b = vec![0.0f32; c];
    // dweight over the exact (f64) mean of each statistic's elements
    let want_dw = |stat: &dyn Fn(usize) -> usize, groups: usize| {
        let mut sum = vec![0.0f64; groups];
        let mut count = vec![0.0f64; groups];
        let mut sq = vec![0.0f64; groups];
        for i in 0..len {
            sum[stat(i)] += x[i] as f64;
            count[stat(i)] += 1.0;
        }
        let mean: Vec<f64> = sum.iter().zip(&count).map(|(s, n)| s / n).collect();
        for i in 0..len {
            sq[stat(i)] += (x[i] as f64 - mean[stat(i)]).powi(2);
        }
        let (mut dw, mut abs) = (vec![0.0; c], vec![0.0; c]);
        for i in 0..len {
            let k = stat(i);
            let xhat = (x[i] as f64 - mean[k]) / (sq[k] / count[k] + 1e-5).sqrt();
            dw[i / s % c] += g[i] as f64 * xhat;
            abs[i / s % c] += (g[i] as f64 * xhat).abs();
        }
        (dw, abs)
    };
    let check = |name: &str, got: &[f32], (want, abs): (Vec<f64>, Vec<f64>)| {
        for j in 0..c {
            let err = (got[j] as f64 - want[j]).abs();
            assert!(
                err <= 1e-4 * abs[j],
                "{name} dweight[{j}]: {} vs {} (error {err:e}, Σ|g·x̂| {})",
                got[j],
                want[j],
                abs[j]
            );
        }
    };
    let (xt, gt) = (
        Tensor::new(&x[..], &shape).unwrap(),
        Tensor::new(&g[..], &shape).unwrap(),
    );
    let (wt, bt) = (
        Tensor::new(&w[..], &[c]).unwrap(),
        Tensor::new(&b[..], &[c]).unwrap(),
    );
    let mut y = vec![0f32; len];
    let (mut dx, mut dw, mut db) = (vec![0f32; len], vec![0f32; c], vec![0f32; c]);
    fn grads32<'a>(
        dx: &'a mut [f32],
        dw: &'a mut [f32],
        db: &'a mut [f32],
        shape: &[usize],
    ) -> Gradients<'a> {
        let c = [shape[1]];
        Gradients {
            grad_input: Some(TensorMut::new(dx, shape).unwrap()),
            grad_weight: Some(TensorMut::new(dw, &c).unwrap()),
            grad_bias: Some(TensorMut::new(db, &c).unwrap()),
            accumulate: false,
        }
    }
    // GroupNorm, 2 groups of 2 channels
    let args = GroupNormArgs {
        weight: Some(wt.clone()),
        bias: Some(bt.clone()),
        ..GroupNormArgs::new(2)
    };
    let st = group_norm(&xt, &mut TensorMut::new(&mut y[..], &shape).unwrap(), args).unwrap();
    group_norm_backward(
        &gt,
        &xt,
        GroupNormBackwardArgs {
            num_groups: 2,
            weight: Some(wt.clone()),
            mean: st.mean.view(),
            invstd: st.invstd.view(),
            grads: grads32(&mut dx, &mut dw, &mut db, &shape),
        },
    )
    .unwrap();
    check("group_norm", &dw, want_dw(&|i| i / (2 * s), n * 2));
    // BatchNorm, training
    let args = BatchNormArgs {
        training: true,
        weight: Some(wt.clone()),
        bias: Some(bt.clone()),
        ..Default::default()
    };
    let st = batch_norm(&xt, &mut TensorMut::new(&mut y[..], &shape).unwrap(), args).unwrap();
    batch_norm_backward(
        &gt,
        &xt,
        NormBackwardArgs {
            weight: Some(wt.clone()),
            stats: ForwardStats::Saved {
                mean: st.mean.view(),
                invstd: st.invstd.view(),
            },
            grads: grads32(&mut dx, &mut dw, &mut db, &shape),
        },
    )
    .unwrap();
    check("batch_norm", &dw, want_dw(&|i| i / s % c, c));
}
