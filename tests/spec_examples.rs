//! The verified worked examples and behaviour tables of `shared/spec/pytorch-semantics.md`
//! (numbers observed in PyTorch 2.15), and the rejection of bad input (issue 2, item 8).

use normkit::layers::{
    BatchNorm, BatchNormConfig, BatchNormKind, GroupNorm, GroupNormConfig, InstanceNorm,
    InstanceNormConfig, InstanceNormKind, LayerNorm, LayerNormConfig, LocalResponseNorm, Module,
    State,
};
use normkit::ops::{
    BatchNormArgs, GroupNormArgs, InstanceNormArgs, LayerNormArgs, LrnArgs, batch_norm, group_norm,
    instance_norm, layer_norm, local_response_norm,
};
use normkit::{Buffer, DType, ErrorKind, Tensor, TensorMut, bf16, f16};

fn close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || (g - w).abs() <= tol * (1.0 + w.abs());
        assert!(
            ok,
            "element {i}: got {g}, want {w} (tol {tol}); all: {got:?}"
        );
    }
}

fn tensor_state(m: &dyn Module, name: &str) -> Vec<f64> {
    match m.state(name).unwrap() {
        State::Tensor(b) => b.to_f64_vec(),
        State::Counter(c) => panic!("{name} is a counter ({c})"),
    }
}

fn counter(m: &dyn Module) -> i64 {
    match m.state("num_batches_tracked").unwrap() {
        State::Counter(c) => c,
        State::Tensor(_) => panic!("counter is a tensor"),
    }
}

fn run(m: &mut dyn Module, x: &[f64], shape: &[usize]) -> normkit::Result<Vec<f64>> {
    let mut y = vec![0.0; x.len()];
    m.forward(&Tensor::new(x, shape)?, &mut TensorMut::new(&mut y, shape)?)?;
    Ok(y)
}

fn bn(kind: BatchNormKind, c: usize, f: impl FnOnce(&mut BatchNormConfig)) -> BatchNorm {
    let mut cfg = BatchNormConfig::new(c);
    cfg.dtype = DType::F64;
    f(&mut cfg);
    BatchNorm::new(kind, cfg)
}

const BN_X: [f64; 6] = [1.0, 10.0, 2.0, 20.0, 4.0, 60.0];

#[test]
fn batch_norm1d_worked_example_train_then_eval() {
    let mut m = bn(BatchNormKind::BatchNorm1d, 2, |_| {});
    let y = run(&mut m, &BN_X, &[3, 2]).unwrap();
    close(
        &y,
        &[
            -1.069041531450298,
            -0.9258200898530504,
            -0.2672603828625746,
            -0.4629100449265252,
            1.3363019143128718,
            1.3887301347795757,
        ],
        1e-12,
    );
    close(
        &tensor_state(&m, "running_mean"),
        &[0.23333333333333336, 3.0],
        1e-12,
    );
    close(
        &tensor_state(&m, "running_var"),
        &[1.1333333333333333, 70.9],
        1e-12,
    );
    assert_eq!(counter(&m), 1);
    m.eval();
    let y = run(&mut m, &BN_X, &[3, 2]).unwrap();
    close(
        &y,
        &[
            0.7201547576015879,
            0.8313327540394195,
            1.6594870501253982,
            2.018950974095733,
            3.538151635173019,
            6.769423854320988,
        ],
        1e-12,
    );
    assert_eq!(counter(&m), 1, "eval never counts");
}

#[test]
fn batch_norm_momentum_none_is_a_cumulative_average() {
    let mut m = bn(BatchNormKind::BatchNorm1d, 2, |c| c.momentum = None);
    run(&mut m, &BN_X, &[3, 2]).unwrap();
    let x2: Vec<f64> = BN_X.iter().map(|v| 2.0 * v).collect();
    run(&mut m, &x2, &[3, 2]).unwrap();
    close(&tensor_state(&m, "running_mean"), &[3.5, 45.0], 1e-12);
    close(
        &tensor_state(&m, "running_var"),
        &[5.833333333333332, 1750.0],
        1e-12,
    );
    assert_eq!(counter(&m), 2);
}

#[test]
fn batch_norm_momentum_is_used_literally() {
    let mut m = bn(BatchNormKind::BatchNorm1d, 2, |c| c.momentum = Some(1.5));
    run(&mut m, &[0.0, 1.0, 2.0, 3.0], &[2, 2]).unwrap();
    close(&tensor_state(&m, "running_mean"), &[1.5, 3.0], 1e-12);
}

#[test]
fn batch_norm_counter_increments_before_validation() {
    let mut m = bn(BatchNormKind::BatchNorm1d, 3, |_| {});
    let e = run(&mut m, &[1.0, 2.0, 3.0], &[1, 3]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(
        e.to_string().contains("more than 1 value per channel"),
        "{e}"
    );
    assert_eq!(counter(&m), 1);
}

#[test]
fn batch_norm_empty_batch_counts_and_keeps_stats() {
    let mut m = bn(BatchNormKind::BatchNorm2d, 3, |_| {});
    let y = run(&mut m, &[], &[0, 3, 4, 4]).unwrap();
    assert!(y.is_empty());
    assert_eq!(tensor_state(&m, "running_mean"), vec![0.0; 3]);
    assert_eq!(tensor_state(&m, "running_var"), vec![1.0; 3]);
    assert_eq!(counter(&m), 1);
}

#[test]
fn batch_norm_untracked_module_uses_batch_stats_in_eval() {
    let mut m = bn(BatchNormKind::BatchNorm1d, 2, |c| {
        c.track_running_stats = false
    });
    m.eval();
    let y = run(&mut m, &BN_X, &[3, 2]).unwrap();
    close(&y[..2], &[-1.069041531450298, -0.9258200898530504], 1e-12);
    assert!(m.state("running_mean").is_err());
    // and the batch-of-one check applies in eval
    assert!(run(&mut m, &[1.0, 2.0], &[1, 2]).is_err());
}

#[test]
fn batch_norm_flipped_tracking_attribute() {
    let mut m = bn(BatchNormKind::BatchNorm1d, 2, |_| {});
    m.config.track_running_stats = false;
    // train: batch stats, no update, no count
    run(&mut m, &BN_X, &[3, 2]).unwrap();
    assert_eq!(tensor_state(&m, "running_mean"), vec![0.0, 0.0]);
    assert_eq!(counter(&m), 0);
    // eval: the buffers still exist, so the running statistics are used
    m.eval();
    let y = run(&mut m, &BN_X, &[3, 2]).unwrap();
    close(
        &y[..2],
        &[1.0 / (1.0f64 + 1e-5).sqrt(), 10.0 / (1.0f64 + 1e-5).sqrt()],
        1e-12,
    );
}

#[test]
fn batch_norm_eval_zero_variance_zero_eps_is_nan() {
    let x = [1.0f32, 2.0];
    let mut y = [0.0f32; 2];
    let (mut rm, mut rv) = ([0.0f32; 2], [0.0f32; 2]);
    batch_norm(
        &Tensor::new(&x[..], &[1, 2]).unwrap(),
        &mut TensorMut::new(&mut y[..], &[1, 2]).unwrap(),
        BatchNormArgs {
            running_mean: Some(TensorMut::new(&mut rm[..], &[2]).unwrap()),
            running_var: Some(TensorMut::new(&mut rv[..], &[2]).unwrap()),
            eps: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(y[0].is_nan() && y[1].is_nan(), "{y:?}");
}

#[test]
fn instance_norm1d_worked_example() {
    let x = [1.0, 2.0, 4.0, 0.0, 0.0, 3.0, 2.0, 2.0, 5.0, 1.0, 1.0, 1.0];
    let mut cfg = InstanceNormConfig::new(2);
    cfg.track_running_stats = true;
    cfg.dtype = DType::F64;
    let mut m = InstanceNorm::new(InstanceNormKind::InstanceNorm1d, cfg);
    let y = run(&mut m, &x, &[2, 2, 3]).unwrap();
    close(
        &y,
        &[
            -1.0690415314502977,
            -0.2672603828625746,
            1.3363019143128716,
            -0.7071050134262237,
            -0.7071050134262237,
            1.4142100268524473,
            -0.7071050134262238,
            -0.7071050134262238,
            1.4142100268524471,
            0.0,
            0.0,
            0.0,
        ],
        1e-12,
    );
    close(
        &tensor_state(&m, "running_mean"),
        &[0.2666666666666667, 0.1],
        1e-12,
    );
    close(
        &tensor_state(&m, "running_var"),
        &[1.1666666666666667, 1.05],
        1e-12,
    );
    assert_eq!(counter(&m), 0, "InstanceNorm never counts");
}

#[test]
fn instance_norm_momentum_none_never_updates() {
    let mut cfg = InstanceNormConfig::new(2);
    cfg.track_running_stats = true;
    cfg.momentum = None;
    let mut m = InstanceNorm::new(InstanceNormKind::InstanceNorm1d, cfg);
    run(&mut m, &[1.0, 2.0, 4.0, 0.0, 0.0, 3.0], &[1, 2, 3]).unwrap_err(); // f64 input, f32 params
    let x = [1.0f32, 2.0, 4.0, 0.0, 0.0, 3.0];
    let mut y = [0.0f32; 6];
    m.forward(
        &Tensor::new(&x[..], &[1, 2, 3]).unwrap(),
        &mut TensorMut::new(&mut y[..], &[1, 2, 3]).unwrap(),
    )
    .unwrap();
    assert_eq!(tensor_state(&m, "running_mean"), vec![0.0, 0.0]);
    assert_eq!(tensor_state(&m, "running_var"), vec![1.0, 1.0]);
}

#[test]
fn instance_norm_constant_plane_with_zero_eps_is_zero() {
    let x = [1.0f64; 8];
    let mut y = [5.0f64; 8];
    instance_norm(
        &Tensor::new(&x[..], &[1, 2, 4]).unwrap(),
        &mut TensorMut::new(&mut y[..], &[1, 2, 4]).unwrap(),
        InstanceNormArgs {
            eps: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(y, [0.0; 8]);
}

#[test]
fn instance_norm1d_two_dims_is_unbatched() {
    let mut m = InstanceNorm::new(InstanceNormKind::InstanceNorm1d, InstanceNormConfig::new(2));
    let x = [1.0f32, 2.0, 4.0, 0.0, 0.0, 3.0];
    let mut y = [0.0f32; 6];
    m.forward(
        &Tensor::new(&x[..], &[2, 3]).unwrap(),
        &mut TensorMut::new(&mut y[..], &[2, 3]).unwrap(),
    )
    .unwrap();
    close(
        &y.map(f64::from),
        &[
            -1.0690415314502977,
            -0.2672603828625746,
            1.3363019143128716,
            -0.7071050134262237,
            -0.7071050134262237,
            1.4142100268524473,
        ],
        1e-5,
    );
}

#[test]
fn lazy_instance_norm_defaults_and_dim1_inference() {
    let mut m = InstanceNorm::lazy(InstanceNormKind::InstanceNorm1d, InstanceNormConfig::lazy());
    assert!(!m.is_initialized());
    assert_eq!(
        m.state("weight").unwrap_err().kind(),
        ErrorKind::Uninitialized
    );
    // unbatched (3, 5): PyTorch infers 5 features from dim 1, then rejects dim 0 = 3
    let x = vec![0.5f32; 15];
    let mut y = vec![0.0f32; 15];
    let e = m
        .forward(
            &Tensor::new(&x, &[3, 5]).unwrap(),
            &mut TensorMut::new(&mut y, &[3, 5]).unwrap(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ShapeMismatch);
    assert!(m.is_initialized());
    assert_eq!(tensor_state(&m, "weight").len(), 5);
    assert_eq!(
        m.state_names(),
        vec![
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked"
        ]
    );
}

#[test]
fn lazy_batch_norm_initialises_even_when_forward_fails() {
    let mut m = BatchNorm::lazy(BatchNormKind::BatchNorm1d, BatchNormConfig::new(0));
    assert_eq!(m.name(), "LazyBatchNorm1d");
    let x = vec![0.0f32; 2 * 3 * 4 * 5];
    let mut y = x.clone();
    let e = m
        .forward(
            &Tensor::new(&x, &[2, 3, 4, 5]).unwrap(),
            &mut TensorMut::new(&mut y, &[2, 3, 4, 5]).unwrap(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ShapeMismatch);
    assert_eq!(m.name(), "BatchNorm1d");
    assert_eq!(m.config.num_features, 3);

    let mut m = BatchNorm::lazy(BatchNormKind::BatchNorm1d, BatchNormConfig::new(0));
    let x = vec![1.0f32; 4];
    let mut y = x.clone();
    assert!(
        m.forward(
            &Tensor::new(&x, &[1, 4]).unwrap(),
            &mut TensorMut::new(&mut y, &[1, 4]).unwrap()
        )
        .is_err()
    );
    assert_eq!(m.config.num_features, 4);
    assert_eq!(counter(&m), 1);

    // a 1-D input leaves it lazy
    let mut m = BatchNorm::lazy(BatchNormKind::BatchNorm1d, BatchNormConfig::new(0));
    assert!(
        m.forward(
            &Tensor::new(&x, &[4]).unwrap(),
            &mut TensorMut::new(&mut y, &[4]).unwrap()
        )
        .is_err()
    );
    assert!(!m.is_initialized());
}

#[test]
fn lazy_batch_norm_may_start_in_eval() {
    let mut m = BatchNorm::lazy(BatchNormKind::BatchNorm1d, BatchNormConfig::new(0));
    m.eval();
    let x = [3.0f32, -1.0, 2.0];
    let mut y = [0.0f32; 3];
    m.forward(
        &Tensor::new(&x[..], &[1, 3]).unwrap(),
        &mut TensorMut::new(&mut y[..], &[1, 3]).unwrap(),
    )
    .unwrap();
    close(
        &y.map(f64::from),
        &x.map(|v| f64::from(v) / (1.0f64 + 1e-5).sqrt()),
        1e-6,
    );
}

#[test]
fn lazy_state_loaded_before_forward_is_used() {
    let mut m = BatchNorm::lazy(BatchNormKind::BatchNorm1d, BatchNormConfig::new(0));
    for (name, v) in [
        ("weight", 2.0),
        ("bias", 1.0),
        ("running_mean", 0.0),
        ("running_var", 1.0),
    ] {
        m.load_state(name, &State::Tensor(Buffer::from_f64(DType::F32, &[v, v])))
            .unwrap();
    }
    assert!(m.is_initialized());
    m.eval();
    let x = [1.0f32, 2.0];
    let mut y = [0.0f32; 2];
    m.forward(
        &Tensor::new(&x[..], &[1, 2]).unwrap(),
        &mut TensorMut::new(&mut y[..], &[1, 2]).unwrap(),
    )
    .unwrap();
    close(&y.map(f64::from), &[3.0, 5.0], 1e-4);
}

#[test]
fn partial_lazy_load_is_rejected_at_forward() {
    let mut m = BatchNorm::lazy(BatchNormKind::BatchNorm2d, BatchNormConfig::new(0));
    m.load_state(
        "weight",
        &State::Tensor(Buffer::from_f64(DType::F32, &[1.0])),
    )
    .unwrap();
    let x = vec![0.0f32; 8];
    let mut y = x.clone();
    let e = m
        .forward(
            &Tensor::new(&x, &[2, 1, 2, 2]).unwrap(),
            &mut TensorMut::new(&mut y, &[2, 1, 2, 2]).unwrap(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Uninitialized);
}

#[test]
fn layer_norm_worked_example_and_edges() {
    let mut m = LayerNorm::new(LayerNormConfig {
        dtype: DType::F64,
        ..LayerNormConfig::new(&[4])
    });
    let y = run(&mut m, &[1.0, 2.0, 4.0, 8.0], &[1, 4]).unwrap();
    close(
        &y,
        &[
            -1.0257545754961932,
            -0.6527529116793956,
            0.09325041595419938,
            1.5852570712213894,
        ],
        1e-12,
    );
    // eps = 0 with a constant row is NaN; normalized size 1 gives zeros
    let x = [3.0f64; 4];
    let mut y = [0.0f64; 4];
    let args = LayerNormArgs {
        eps: 0.0,
        ..LayerNormArgs::new(&[4])
    };
    layer_norm(
        &Tensor::new(&x[..], &[4]).unwrap(),
        &mut TensorMut::new(&mut y[..], &[4]).unwrap(),
        args,
    )
    .unwrap();
    assert!(y.iter().all(|v| v.is_nan()));
    layer_norm(
        &Tensor::new(&x[..], &[4, 1]).unwrap(),
        &mut TensorMut::new(&mut y[..], &[4, 1]).unwrap(),
        LayerNormArgs::new(&[1]),
    )
    .unwrap();
    assert_eq!(y, [0.0; 4]);
}

#[test]
fn layer_norm_bias_false_and_multi_dim_shape() {
    let cfg = LayerNormConfig {
        bias: false,
        dtype: DType::F64,
        ..LayerNormConfig::new(&[2, 2])
    };
    let mut m = LayerNorm::new(cfg);
    assert_eq!(m.state_names(), vec!["weight"]);
    m.load_state(
        "weight",
        &State::Tensor(Buffer::from_f64(DType::F64, &[1.0, 2.0, 3.0, 4.0])),
    )
    .unwrap();
    let y = run(&mut m, &[1.0, 2.0, 4.0, 8.0], &[1, 2, 2]).unwrap();
    let want = [
        -1.0257545754961932,
        -0.6527529116793956 * 2.0,
        0.09325041595419938 * 3.0,
        1.5852570712213894 * 4.0,
    ];
    close(&y, &want, 1e-12);
}

#[test]
fn group_norm_worked_example() {
    let x: Vec<f64> = (0..8).map(|i| f64::from(i * i)).collect();
    let mut m = GroupNorm::new(GroupNormConfig {
        dtype: DType::F64,
        ..GroupNormConfig::new(2, 4)
    })
    .unwrap();
    let y = run(&mut m, &x, &[1, 4, 2]).unwrap();
    close(
        &y,
        &[
            -0.9999995918369845,
            -0.7142854227407032,
            0.14285708454814064,
            1.571427930029547,
            -1.2561833513793492,
            -0.526786566707469,
            0.3646983923359401,
            1.418271525750878,
        ],
        1e-12,
    );
}

#[test]
fn group_norm_constant_group_with_zero_eps_is_nan() {
    let x = [2.0f32; 8];
    let mut y = [0.0f32; 8];
    let args = GroupNormArgs {
        eps: 0.0,
        ..GroupNormArgs::new(2)
    };
    group_norm(
        &Tensor::new(&x[..], &[1, 4, 2]).unwrap(),
        &mut TensorMut::new(&mut y[..], &[1, 4, 2]).unwrap(),
        args,
    )
    .unwrap();
    assert!(y.iter().all(|v| v.is_nan()));
}

#[test]
fn local_response_norm_windows() {
    let x = [1.0, 2.0, 3.0, 4.0];
    for (size, want) in [
        (
            2,
            [
                0.6666666666666666,
                0.5714285714285714,
                0.4,
                0.2962962962962963,
            ],
        ),
        (
            3,
            [
                0.37499999999999994,
                0.3529411764705882,
                0.28125,
                0.42857142857142855,
            ],
        ),
    ] {
        let mut m = LocalResponseNorm::with_args(LrnArgs {
            size,
            alpha: 1.0,
            beta: 1.0,
            k: 1.0,
        });
        let y = run(&mut m, &x, &[1, 4, 1]).unwrap();
        close(&y, &want, 1e-12);
    }
}

#[test]
fn local_response_norm_f16_squares_without_overflow() {
    // |x| = 300: PyTorch's f16 x·x overflows and outputs 0; normkit squares in f32.
    let xs = [300.0f32, -300.0, 300.0];
    let x: Vec<f16> = xs.iter().map(|&v| f16::from_f32(v)).collect();
    let mut y = vec![f16::ZERO; 3];
    local_response_norm(
        &Tensor::new(&x, &[1, 3, 1, 1]).unwrap(),
        &mut TensorMut::new(&mut y, &[1, 3, 1, 1]).unwrap(),
        LrnArgs::new(3),
    )
    .unwrap();
    let sum = 3.0 * 300.0f64 * 300.0;
    let want = 300.0 / (1.0 + 1e-4 / 3.0 * sum).powf(0.75);
    assert!(
        (f64::from(y[1].to_f32()) + want).abs() < want * 2e-3,
        "{y:?} vs {want}"
    );
}

/// Runs `f` on contiguous and channels-last copies of the same logical data and checks that
/// the outputs agree (issue 2, item 6), also when the output strides differ from the input's.
fn check_layouts(shape: &[usize], f: &dyn Fn(&Tensor, &mut TensorMut)) {
    let n: usize = shape.iter().product();
    let logical: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 * 0.13).sin() * 3.0 + 0.5)
        .collect();
    let strides_cl = normkit::tensor::channels_last_strides(shape);
    let mut cl = vec![0.0f32; n];
    for (i, &v) in logical.iter().enumerate() {
        let mut rem = i;
        let mut off = 0;
        for d in (0..shape.len()).rev() {
            off += (rem % shape[d]) * strides_cl[d];
            rem /= shape[d];
        }
        cl[off] = v;
    }
    let mut y1 = vec![0.0f32; n];
    f(
        &Tensor::new(&logical, shape).unwrap(),
        &mut TensorMut::new(&mut y1, shape).unwrap(),
    );
    let mut y2 = vec![0.0f32; n];
    f(
        &Tensor::channels_last(&cl, shape).unwrap(),
        &mut TensorMut::channels_last(&mut y2, shape).unwrap(),
    );
    let y2_logical = Tensor::channels_last(&y2, shape).unwrap().to_f64_vec();
    let mut y3 = vec![0.0f32; n];
    f(
        &Tensor::channels_last(&cl, shape).unwrap(),
        &mut TensorMut::new(&mut y3, shape).unwrap(),
    );
    let y1: Vec<f64> = y1.iter().map(|&v| f64::from(v)).collect();
    let y3: Vec<f64> = y3.iter().map(|&v| f64::from(v)).collect();
    close(&y2_logical, &y1, 1e-5);
    close(&y3, &y1, 1e-5);
    assert!(y1.iter().any(|v| *v != 0.0));
}

#[test]
fn every_layer_gives_the_same_values_in_both_layouts() {
    for shape in [[2usize, 3, 5, 7], [3, 8, 1, 13]] {
        check_layouts(&shape, &|x, y| {
            let (mut rm, mut rv) = (vec![0.0f32; shape[1]], vec![1.0f32; shape[1]]);
            let args = BatchNormArgs {
                training: true,
                running_mean: Some(TensorMut::new(&mut rm, &[shape[1]]).unwrap()),
                running_var: Some(TensorMut::new(&mut rv, &[shape[1]]).unwrap()),
                ..Default::default()
            };
            batch_norm(x, y, args).unwrap();
        });
        check_layouts(&shape, &|x, y| {
            instance_norm(x, y, InstanceNormArgs::default()).unwrap();
        });
        let g = if shape[1] % 4 == 0 { 4 } else { 3 };
        check_layouts(&shape, &|x, y| {
            group_norm(x, y, GroupNormArgs::new(g)).unwrap();
        });
        check_layouts(&shape, &|x, y| {
            layer_norm(x, y, LayerNormArgs::new(&shape[2..])).unwrap();
        });
        check_layouts(&shape, &|x, y| {
            local_response_norm(
                x,
                y,
                LrnArgs {
                    size: 4,
                    alpha: 0.5,
                    beta: 0.75,
                    k: 1.0,
                },
            )
            .unwrap()
        });
    }
}

#[test]
fn mixed_precision_parameters_are_f32_or_the_input_dtype() {
    let x = vec![
        bf16::from_f32(1.0),
        bf16::from_f32(2.0),
        bf16::from_f32(4.0),
        bf16::from_f32(8.0),
    ];
    let mut y = vec![bf16::ZERO; 4];
    let w32 = [1.0f32, 1.0];
    let wbf = [bf16::ONE, bf16::ONE];
    let w64 = [1.0f64, 1.0];
    let go = |w: Tensor, b: Tensor, y: &mut Vec<bf16>| {
        let args = GroupNormArgs {
            weight: Some(w),
            bias: Some(b),
            ..GroupNormArgs::new(1)
        };
        group_norm(
            &Tensor::new(&x, &[2, 2]).unwrap(),
            &mut TensorMut::new(y, &[2, 2]).unwrap(),
            args,
        )
    };
    let t32 = || Tensor::new(&w32[..], &[2]).unwrap();
    let tbf = || Tensor::new(&wbf[..], &[2]).unwrap();
    assert!(go(t32(), t32(), &mut y).is_ok());
    assert!(go(tbf(), tbf(), &mut y).is_ok());
    let e = go(t32(), tbf(), &mut y).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedDType);
    assert!(e.to_string().contains("bias"), "{e}");
    let e = go(
        Tensor::new(&w64[..], &[2]).unwrap(),
        Tensor::new(&w64[..], &[2]).unwrap(),
        &mut y,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedDType);
    // f32 input requires f32 parameters
    let xf = [1.0f32, 2.0, 3.0, 4.0];
    let mut yf = [0.0f32; 4];
    let args = GroupNormArgs {
        weight: Some(tbf()),
        ..GroupNormArgs::new(1)
    };
    let e = group_norm(
        &Tensor::new(&xf[..], &[2, 2]).unwrap(),
        &mut TensorMut::new(&mut yf[..], &[2, 2]).unwrap(),
        args,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedDType);
}

#[test]
fn bad_input_is_an_error_with_an_actionable_message() {
    let x = vec![1.0f32; 2 * 6 * 5];
    let mut y = vec![0.0f32; 2 * 6 * 5];
    let xt = || Tensor::new(&x, &[2, 6, 5]).unwrap();
    let expect = |r: normkit::Result<normkit::ops::SavedStats>, kind: ErrorKind, words: &[&str]| {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), kind, "{e}");
        let msg = e.to_string();
        for w in words {
            assert!(msg.contains(w), "message {msg:?} lacks {w:?}");
        }
    };
    // num_groups not dividing channels
    expect(
        group_norm(
            &xt(),
            &mut TensorMut::new(&mut y, &[2, 6, 5]).unwrap(),
            GroupNormArgs::new(4),
        ),
        ErrorKind::InvalidArgument,
        &["group_norm", "num_groups", "6", "4"],
    );
    assert!(GroupNorm::new(GroupNormConfig::new(2, 5)).is_err());
    assert!(GroupNorm::new(GroupNormConfig::new(0, 4)).is_err());
    // channel count mismatch
    let w = [1.0f32; 4];
    let args = BatchNormArgs {
        training: true,
        weight: Some(Tensor::new(&w[..], &[4]).unwrap()),
        ..Default::default()
    };
    expect(
        batch_norm(
            &xt(),
            &mut TensorMut::new(&mut y, &[2, 6, 5]).unwrap(),
            args,
        ),
        ErrorKind::ShapeMismatch,
        &["batch_norm", "weight", "6 elements", "4 elements"],
    );
    // eps <= 0 in training; missing running stats in eval
    let args = BatchNormArgs {
        training: true,
        eps: 0.0,
        ..Default::default()
    };
    expect(
        batch_norm(
            &xt(),
            &mut TensorMut::new(&mut y, &[2, 6, 5]).unwrap(),
            args,
        ),
        ErrorKind::InvalidArgument,
        &["eps"],
    );
    expect(
        batch_norm(
            &xt(),
            &mut TensorMut::new(&mut y, &[2, 6, 5]).unwrap(),
            BatchNormArgs::default(),
        ),
        ErrorKind::InvalidArgument,
        &["running_mean"],
    );
    // normalized_shape mismatch
    expect(
        layer_norm(
            &xt(),
            &mut TensorMut::new(&mut y, &[2, 6, 5]).unwrap(),
            LayerNormArgs::new(&[4]),
        ),
        ErrorKind::ShapeMismatch,
        &["layer_norm", "input", "[2, 6, 5]"],
    );
    expect(
        layer_norm(
            &xt(),
            &mut TensorMut::new(&mut y, &[2, 6, 5]).unwrap(),
            LayerNormArgs::new(&[]),
        ),
        ErrorKind::ShapeMismatch,
        &["normalized_shape"],
    );
    // instance norm with one spatial element
    let x1 = vec![1.0f32; 6];
    let mut y1 = vec![0.0f32; 6];
    expect(
        instance_norm(
            &Tensor::new(&x1, &[2, 3, 1]).unwrap(),
            &mut TensorMut::new(&mut y1, &[2, 3, 1]).unwrap(),
            InstanceNormArgs::default(),
        ),
        ErrorKind::InvalidArgument,
        &["more than 1 spatial element"],
    );
    // LRN rank < 3 and size 0
    let e = local_response_norm(
        &Tensor::new(&x1, &[2, 3]).unwrap(),
        &mut TensorMut::new(&mut y1, &[2, 3]).unwrap(),
        LrnArgs::new(3),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ShapeMismatch);
    let e = local_response_norm(
        &xt(),
        &mut TensorMut::new(&mut y, &[2, 6, 5]).unwrap(),
        LrnArgs::new(0),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // output shape / dtype disagreeing with the input
    let mut y64 = vec![0.0f64; 60];
    expect(
        group_norm(
            &xt(),
            &mut TensorMut::new(&mut y64, &[2, 6, 5]).unwrap(),
            GroupNormArgs::new(3),
        ),
        ErrorKind::UnsupportedDType,
        &["output"],
    );
    expect(
        group_norm(
            &xt(),
            &mut TensorMut::new(&mut y, &[2, 5, 6]).unwrap(),
            GroupNormArgs::new(3),
        ),
        ErrorKind::ShapeMismatch,
        &["output"],
    );
    // wrong rank for modules
    let mut m = BatchNorm::new(BatchNormKind::BatchNorm2d, BatchNormConfig::new(6));
    let e = m
        .forward(&xt(), &mut TensorMut::new(&mut y, &[2, 6, 5]).unwrap())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ShapeMismatch);
    assert!(
        e.to_string().contains("BatchNorm2d") && e.to_string().contains("4D"),
        "{e}"
    );
    // module channel mismatch (tracking) and unknown state names
    let mut m = BatchNorm::new(BatchNormKind::BatchNorm1d, BatchNormConfig::new(4));
    let e = m
        .forward(&xt(), &mut TensorMut::new(&mut y, &[2, 6, 5]).unwrap())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ShapeMismatch);
    assert!(m.state("running_average").is_err());
    assert!(
        m.load_state(
            "running_mean",
            &State::Tensor(Buffer::from_f64(DType::F32, &[0.0; 3]))
        )
        .is_err()
    );
    // buffers too small, overlapping outputs
    assert_eq!(
        Tensor::new(&x, &[2, 6, 6]).unwrap_err().kind(),
        ErrorKind::BufferTooSmall
    );
    assert_eq!(
        TensorMut::with_strides(&mut y, &[2, 6, 5], &[1, 1, 1])
            .unwrap_err()
            .kind(),
        ErrorKind::UnsupportedLayout
    );
}

#[test]
fn every_dtype_runs_every_layer() {
    fn go<T: normkit::ElementData>() {
        let shape = [2usize, 4, 3];
        let x: Vec<T> = (0..24)
            .map(|i| T::from_f64(((i * 7 % 11) as f64) * 0.25 - 1.0))
            .collect();
        let mut y = vec![T::default(); 24];
        let xt = Tensor::new(x.as_slice(), &shape).unwrap();
        let mut yt = TensorMut::new(y.as_mut_slice(), &shape).unwrap();
        let args = BatchNormArgs {
            training: true,
            ..Default::default()
        };
        let stats = batch_norm(&xt, &mut yt, args).unwrap();
        assert_eq!(stats.mean.dtype(), T::DTYPE.stat_dtype());
        group_norm(&xt, &mut yt, GroupNormArgs::new(2)).unwrap();
        instance_norm(&xt, &mut yt, InstanceNormArgs::default()).unwrap();
        layer_norm(&xt, &mut yt, LayerNormArgs::new(&[4, 3])).unwrap();
        local_response_norm(&xt, &mut yt, LrnArgs::new(5)).unwrap();
        // the last op's output against an f64 evaluation of the LRN formula
        let got = yt.as_tensor().to_f64_vec();
        let xs = xt.to_f64_vec();
        for n in 0..2 {
            for c in 0..4usize {
                for s in 0..3 {
                    let lo = c.saturating_sub(2);
                    let hi = (c + 2).min(3);
                    let sq: f64 = (lo..=hi).map(|j| xs[(n * 4 + j) * 3 + s].powi(2)).sum();
                    let want = xs[(n * 4 + c) * 3 + s] / (1.0 + 1e-4 / 5.0 * sq).powf(0.75);
                    let i = (n * 4 + c) * 3 + s;
                    assert!(
                        (got[i] - want).abs() <= 1e-2 * (1.0 + want.abs()),
                        "{:?} {i}: {} vs {want}",
                        T::DTYPE,
                        got[i]
                    );
                }
            }
        }
    }
    go::<f32>();
    go::<f64>();
    go::<f16>();
    go::<bf16>();
}

#[test]
fn group_norm_inf_in_a_group_makes_that_group_nan() {
    // Observed with PyTorch 2.15: F.group_norm(x, 2) with x[0, 1, 2] = inf gives NaN for every
    // element of group 0 of sample 0, finite values elsewhere.
    let mut x: Vec<f32> = (0..40).map(|i| (i as f32 * 0.3).sin()).collect();
    x[7] = f32::INFINITY;
    let mut y = vec![0.0f32; 40];
    group_norm(
        &Tensor::new(&x, &[2, 4, 5]).unwrap(),
        &mut TensorMut::new(&mut y, &[2, 4, 5]).unwrap(),
        GroupNormArgs::new(2),
    )
    .unwrap();
    assert!(y[..10].iter().all(|v| v.is_nan()), "{:?}", &y[..10]);
    assert!(y[10..].iter().all(|v| v.is_finite()), "{:?}", &y[10..]);
}
