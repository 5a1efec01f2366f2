//! Module backward: uses what the last forward saved, accumulates parameter gradients like
//! PyTorch's `.grad`, and refuses to run without a matching forward.

use normkit::layers::{
    BatchNorm, BatchNormConfig, BatchNormKind, GroupNorm, GroupNormConfig, InstanceNorm,
    InstanceNormConfig, InstanceNormKind, LayerNorm, LayerNormConfig, LocalResponseNorm, Module,
    State,
};
use normkit::{Buffer, DType, ErrorKind, Tensor, TensorMut};

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}; all {got:?}"
        );
    }
}

fn fwd(m: &mut dyn Module, x: &[f64], shape: &[usize]) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    m.forward(
        &Tensor::new(x, shape).unwrap(),
        &mut TensorMut::new(&mut y, shape).unwrap(),
    )
    .unwrap();
    y
}

fn bwd(m: &mut dyn Module, x: &[f64], g: &[f64], shape: &[usize]) -> Vec<f64> {
    let mut dx = vec![0.0; x.len()];
    m.backward(
        &Tensor::new(x, shape).unwrap(),
        &Tensor::new(g, shape).unwrap(),
        Some(&mut TensorMut::new(&mut dx, shape).unwrap()),
    )
    .unwrap();
    dx
}

fn grad(m: &dyn Module, name: &str) -> Vec<f64> {
    m.grad(name)
        .unwrap()
        .expect("a gradient after backward")
        .to_f64_vec()
}

fn set(m: &mut dyn Module, name: &str, v: &[f64]) {
    m.load_state(name, &State::Tensor(Buffer::from_f64(DType::F64, v)))
        .unwrap();
}

#[test]
fn batch_norm_module_backward_matches_the_spec_and_accumulates() {
    let cfg = BatchNormConfig {
        dtype: DType::F64,
        ..BatchNormConfig::new(2)
    };
    let mut m = BatchNorm::new(BatchNormKind::BatchNorm1d, cfg);
    set(&mut m, "weight", &[2.0, 0.5]);
    let x = [1.0, 10.0, 2.0, 20.0, 4.0, 60.0];
    let g = [1.0, 0.0, 0.0, 1.0, -1.0, 2.0];
    fwd(&mut m, &x, &[3, 2]);
    let dx = bwd(&mut m, &x, &g, &[3, 2]);
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
    close(
        &grad(&m, "weight"),
        &[-2.4053434457631697, 2.3145502246326264],
        1e-12,
        "dweight",
    );
    close(&grad(&m, "bias"), &[0.0, 3.0], 1e-12, "dbias");
    // a second backward of the same forward accumulates, like PyTorch's .grad
    m.backward(
        &Tensor::new(&x[..], &[3, 2]).unwrap(),
        &Tensor::new(&g[..], &[3, 2]).unwrap(),
        None,
    )
    .unwrap();
    close(&grad(&m, "bias"), &[0.0, 6.0], 1e-12, "accumulated dbias");
    m.zero_grad();
    assert_eq!(m.grad("bias").unwrap(), None);
}

#[test]
fn frozen_batch_norm_backward_uses_running_statistics() {
    let cfg = BatchNormConfig {
        dtype: DType::F64,
        ..BatchNormConfig::new(2)
    };
    let mut m = BatchNorm::new(BatchNormKind::BatchNorm1d, cfg);
    set(&mut m, "weight", &[2.0, 0.5]);
    set(&mut m, "running_mean", &[1.0, -1.0]);
    set(&mut m, "running_var", &[4.0, 0.25]);
    m.eval();
    let x = [1.0, 10.0, 2.0, 20.0, 4.0, 60.0];
    let g = [1.0, 0.0, 0.0, 1.0, -1.0, 2.0];
    fwd(&mut m, &x, &[3, 2]);
    let dx = bwd(&mut m, &x, &g, &[3, 2]);
    let r = [1.0 / (4.0f64 + 1e-5).sqrt(), 1.0 / (0.25f64 + 1e-5).sqrt()];
    let want: Vec<f64> = (0..6)
        .map(|i| g[i] * [2.0, 0.5][i % 2] * r[i % 2])
        .collect();
    close(&dx, &want, 1e-12, "frozen dx");
    let dw: Vec<f64> = (0..2)
        .map(|c| {
            (0..3)
                .map(|n| g[n * 2 + c] * (x[n * 2 + c] - [1.0, -1.0][c]) * r[c])
                .sum()
        })
        .collect();
    close(&grad(&m, "weight"), &dw, 1e-12, "frozen dweight");
}

#[test]
fn backward_needs_a_matching_forward() {
    let mut m = LayerNorm::new(LayerNormConfig {
        dtype: DType::F64,
        ..LayerNormConfig::new(&[3])
    });
    let x = [1.0, 2.0, 4.0, 3.0, 3.0, 0.0];
    let e = m
        .backward(
            &Tensor::new(&x[..], &[2, 3]).unwrap(),
            &Tensor::new(&x[..], &[2, 3]).unwrap(),
            None,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("forward"), "{e}");
    fwd(&mut m, &x, &[2, 3]);
    let e = m.backward(
        &Tensor::new(&x[..], &[6]).unwrap(),
        &Tensor::new(&x[..], &[3, 2]).unwrap(),
        None,
    );
    assert_eq!(e.unwrap_err().kind(), ErrorKind::ShapeMismatch);
    // a failed forward forgets the previous one
    assert!(
        m.forward(
            &Tensor::new(&x[..], &[3, 2]).unwrap(),
            &mut TensorMut::new(&mut [0.0; 6][..], &[3, 2]).unwrap()
        )
        .is_err()
    );
    assert!(
        m.backward(
            &Tensor::new(&x[..], &[2, 3]).unwrap(),
            &Tensor::new(&x[..], &[2, 3]).unwrap(),
            None
        )
        .is_err()
    );
}

/// Central differences of `Σ g·module(x)` against the module's backward (train mode, f64).
fn fd_module(name: &str, m: &mut dyn Module, shape: &[usize]) {
    let n: usize = shape.iter().product();
    let x: Vec<f64> = (0..n)
        .map(|i| ((i * 37 % 23) as f64) * 0.21 - 1.3)
        .collect();
    let g: Vec<f64> = (0..n).map(|i| ((i * 53 % 17) as f64) * 0.1 - 0.7).collect();
    let h = 1e-6;
    let mut ndx = vec![0.0; n];
    for i in 0..n {
        let mut p = x.clone();
        p[i] += h;
        let lp: f64 = fwd(m, &p, shape).iter().zip(&g).map(|(a, b)| a * b).sum();
        p[i] -= 2.0 * h;
        let lm: f64 = fwd(m, &p, shape).iter().zip(&g).map(|(a, b)| a * b).sum();
        ndx[i] = (lp - lm) / (2.0 * h);
    }
    fwd(m, &x, shape);
    let dx = bwd(m, &x, &g, shape);
    close(&dx, &ndx, 1e-6, name);
}

#[test]
fn every_module_backward_matches_finite_differences() {
    let mut inorm = InstanceNorm::new(
        InstanceNormKind::InstanceNorm1d,
        InstanceNormConfig {
            affine: true,
            dtype: DType::F64,
            ..InstanceNormConfig::new(3)
        },
    );
    set(&mut inorm, "weight", &[1.5, -0.5, 2.0]);
    fd_module("InstanceNorm1d unbatched", &mut inorm, &[3, 5]);
    fd_module("InstanceNorm1d", &mut inorm, &[2, 3, 5]);
    let mut gn = GroupNorm::new(GroupNormConfig {
        dtype: DType::F64,
        ..GroupNormConfig::new(2, 4)
    })
    .unwrap();
    set(&mut gn, "weight", &[1.0, 2.0, 0.5, -1.0]);
    fd_module("GroupNorm", &mut gn, &[2, 4, 3]);
    let mut ln = LayerNorm::new(LayerNormConfig {
        dtype: DType::F64,
        ..LayerNormConfig::new(&[2, 3])
    });
    set(&mut ln, "weight", &[1.0, 2.0, 0.5, -1.0, 0.3, 0.7]);
    fd_module("LayerNorm", &mut ln, &[2, 2, 3]);
    let mut lrn = LocalResponseNorm::new(4);
    lrn.args.alpha = 0.5;
    fd_module("LocalResponseNorm", &mut lrn, &[2, 5, 2]);
    let mut bn = BatchNorm::new(
        BatchNormKind::SyncBatchNorm,
        BatchNormConfig {
            dtype: DType::F64,
            ..BatchNormConfig::new(3)
        },
    );
    fd_module("SyncBatchNorm (one process)", &mut bn, &[4, 3, 2]);
}
