//! Backward ops against PyTorch 2.15 golden gradients (`tests/golden/backward.json`, generated
//! by `tests/golden/generate_backward.py`; schema in `tests/golden/README.md`).
//!
//! Every case runs with all eight contiguous/channels-last combinations of (input,
//! grad_output, grad_input) where the rank allows, requesting every gradient PyTorch produced;
//! then without grad_input (the parameter gradients must not change) and with `accumulate`
//! into pre-filled parameter gradients. The saved statistics come from normkit's own forward
//! op (golden-tested in `golden_functional.rs`), in normkit's statistics dtype (f32 for
//! f32/f16/bf16 input, f64 for f64). Error cases check the backward ops' validation.

mod common;

use common::golden::{
    self, Report, dtype_named, f64_of, list, name, nums, nums_opt, param_dtype_of, shape, str_of,
    tol, usize_of,
};
use common::{from_channels_last, to_channels_last};
use normkit::ops::{
    BatchNormArgs, ForwardStats, Gradients, GroupNormArgs, GroupNormBackwardArgs, InstanceNormArgs,
    LayerNormArgs, LayerNormBackwardArgs, LrnArgs, NormBackwardArgs, SavedStats, batch_norm,
    batch_norm_backward, group_norm, group_norm_backward, instance_norm, instance_norm_backward,
    layer_norm, layer_norm_backward, local_response_norm_backward,
};
use normkit::{Buffer, DType, ErrorKind, Tensor, TensorMut};
use serde_json::Value;

/// Channels-last storage (true) or contiguous (false) of input, grad_output and grad_input.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Lay {
    x: bool,
    g: bool,
    dx: bool,
}

const CONTIGUOUS: Lay = Lay {
    x: false,
    g: false,
    dx: false,
};

fn layouts(rank: usize) -> Vec<Lay> {
    if rank < 3 {
        return vec![CONTIGUOUS];
    }
    (0..8)
        .map(|b| Lay {
            x: b & 1 != 0,
            g: b & 2 != 0,
            dx: b & 4 != 0,
        })
        .collect()
}

fn store(dt: DType, logical: &[f64], shape: &[usize], cl: bool) -> Buffer {
    if cl {
        Buffer::from_f64(dt, &to_channels_last(shape, logical))
    } else {
        Buffer::from_f64(dt, logical)
    }
}

fn view<'a>(b: &'a Buffer, shape: &[usize], cl: bool) -> Tensor<'a> {
    if cl {
        Tensor::channels_last(b.as_data(), shape).expect("channels-last view")
    } else {
        Tensor::new(b.as_data(), shape).expect("contiguous view")
    }
}

fn view_mut<'a>(b: &'a mut Buffer, shape: &[usize], cl: bool) -> TensorMut<'a> {
    if cl {
        TensorMut::channels_last(b.as_data_mut(), shape).expect("channels-last view")
    } else {
        TensorMut::new(b.as_data_mut(), shape).expect("contiguous view")
    }
}

fn read(b: &Buffer, shape: &[usize], cl: bool) -> Vec<f64> {
    let v = b.to_f64_vec();
    if cl { from_channels_last(shape, &v) } else { v }
}

/// The fixed operands of one case.
struct Case<'a> {
    v: &'a Value,
    op: &'a str,
    args: &'a Value,
    dt: DType,
    pd: DType,
    shape: Vec<usize>,
    pshape: Vec<usize>,
    x: Vec<f64>,
    g: Vec<f64>,
    weight: Option<Buffer>,
    bias: Option<Buffer>,
    running_mean: Option<Buffer>,
    running_var: Option<Buffer>,
    /// From normkit's forward (None for running statistics and LRN).
    saved: Option<SavedStats>,
}

impl<'a> Case<'a> {
    fn new(v: &'a Value) -> Case<'a> {
        let op = str_of(v, "op");
        let args = &v["args"];
        let dt = dtype_named(str_of(v, "dtype"));
        let pd = param_dtype_of(v);
        let shp = shape(v, "shape");
        let pshape = match op {
            "layer_norm" => shape(args, "normalized_shape"),
            _ => vec![shp[1]],
        };
        let param = |k: &str| nums_opt(v, k).map(|p| Buffer::from_f64(pd, &p));
        let mut c = Case {
            v,
            op,
            args,
            dt,
            pd,
            x: nums(v, "input"),
            g: nums(v, "grad_output"),
            shape: shp,
            pshape,
            weight: param("weight"),
            bias: param("bias"),
            running_mean: param("running_mean"),
            running_var: param("running_var"),
            saved: None,
        };
        c.saved = c.forward();
        c
    }

    fn param<'b>(&self, b: &'b Option<Buffer>) -> Option<Tensor<'b>> {
        b.as_ref()
            .map(|b| Tensor::new(b.as_data(), &self.pshape).expect("param view"))
    }

    /// Runs normkit's forward op (contiguous) for the saved statistics of a training forward.
    fn forward(&self) -> Option<SavedStats> {
        let xb = Buffer::from_f64(self.dt, &self.x);
        let mut yb = Buffer::filled(self.dt, self.x.len(), 0.0);
        let x = Tensor::new(xb.as_data(), &self.shape).unwrap();
        let mut y = TensorMut::new(yb.as_data_mut(), &self.shape).unwrap();
        let (weight, bias) = (self.param(&self.weight), self.param(&self.bias));
        let eps = || f64_of(self.args, "eps");
        let res = match self.op {
            "batch_norm" if self.args["training"].as_bool().unwrap() => batch_norm(
                &x,
                &mut y,
                BatchNormArgs {
                    weight,
                    bias,
                    training: true,
                    eps: eps(),
                    ..Default::default()
                },
            ),
            "instance_norm" if self.args["use_input_stats"].as_bool().unwrap() => instance_norm(
                &x,
                &mut y,
                InstanceNormArgs {
                    weight,
                    bias,
                    eps: eps(),
                    ..Default::default()
                },
            ),
            "group_norm" => {
                let mut a = GroupNormArgs::new(usize_of(self.args, "num_groups"));
                (a.weight, a.bias, a.eps) = (weight, bias, eps());
                group_norm(&x, &mut y, a)
            }
            "layer_norm" => {
                let mut a = LayerNormArgs::new(&self.pshape);
                (a.weight, a.bias, a.eps) = (weight, bias, eps());
                layer_norm(&x, &mut y, a)
            }
            _ => return None,
        };
        let st = res.unwrap_or_else(|e| panic!("{}: forward failed: {e}", name(self.v)));
        let sd = if self.dt == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        assert!(
            st.mean.dtype() == sd && st.invstd.dtype() == sd,
            "{}: forward saved statistics are not {sd:?}",
            name(self.v)
        );
        Some(st)
    }

    fn stats(&self) -> ForwardStats<'_> {
        match &self.saved {
            Some(s) => ForwardStats::Saved {
                mean: s.mean.view(),
                invstd: s.invstd.view(),
            },
            None => {
                let c = [self.shape[1]];
                fn rs<'b>(b: &'b Option<Buffer>, c: &[usize]) -> Tensor<'b> {
                    Tensor::new(b.as_ref().expect("running stats").as_data(), c).unwrap()
                }
                ForwardStats::Running {
                    mean: rs(&self.running_mean, &c),
                    var: rs(&self.running_var, &c),
                    eps: f64_of(self.args, "eps"),
                }
            }
        }
    }

    /// Calls the case's backward op.
    fn backward(&self, x: &Tensor, g: &Tensor, mut grads: Gradients) -> normkit::Result<()> {
        let weight = self.param(&self.weight);
        match self.op {
            "batch_norm" => batch_norm_backward(
                g,
                x,
                NormBackwardArgs {
                    weight,
                    stats: self.stats(),
                    grads,
                },
            ),
            "instance_norm" => instance_norm_backward(
                g,
                x,
                NormBackwardArgs {
                    weight,
                    stats: self.stats(),
                    grads,
                },
            ),
            "group_norm" => {
                let s = self.saved.as_ref().unwrap();
                group_norm_backward(
                    g,
                    x,
                    GroupNormBackwardArgs {
                        num_groups: usize_of(self.args, "num_groups"),
                        weight,
                        mean: s.mean.view(),
                        invstd: s.invstd.view(),
                        grads,
                    },
                )
            }
            "layer_norm" => {
                let s = self.saved.as_ref().unwrap();
                layer_norm_backward(
                    g,
                    x,
                    LayerNormBackwardArgs {
                        normalized_shape: self.pshape.clone(),
                        weight,
                        mean: s.mean.view(),
                        invstd: s.invstd.view(),
                        grads,
                    },
                )
            }
            "local_response_norm" => {
                let dx = grads.grad_input.as_mut().expect("LRN needs grad_input");
                local_response_norm_backward(
                    g,
                    x,
                    dx,
                    LrnArgs {
                        size: usize_of(self.args, "size"),
                        alpha: f64_of(self.args, "alpha"),
                        beta: f64_of(self.args, "beta"),
                        k: f64_of(self.args, "k"),
                    },
                )
            }
            other => panic!("unknown op {other}"),
        }
    }
}

fn param_mut<'b>(b: &'b mut Option<Buffer>, shape: &[usize]) -> Option<TensorMut<'b>> {
    b.as_mut()
        .map(|b| TensorMut::new(b.as_data_mut(), shape).unwrap())
}

/// Pre-filled values for the accumulate check (exact in every dtype).
fn prefill(n: usize) -> Vec<f64> {
    (0..n).map(|i| ((i % 7) as f64 - 3.0) * 0.25).collect()
}

/// One backward call: grad_input (when `with_dx`) and the expected parameter gradients, the
/// latter pre-filled with `pre` (and accumulated into) when given. Returns the results read
/// back in logical order.
#[allow(clippy::type_complexity)]
fn call(
    c: &Case,
    lay: Lay,
    with_dx: bool,
    pre: Option<&[f64]>,
) -> normkit::Result<(Option<Vec<f64>>, Option<Vec<f64>>, Option<Vec<f64>>)> {
    let shp = &c.shape;
    let xb = store(c.dt, &c.x, shp, lay.x);
    let gb = store(c.dt, &c.g, shp, lay.g);
    let mut dxb = with_dx.then(|| Buffer::filled(c.dt, c.x.len(), f64::NAN));
    let pn: usize = c.pshape.iter().product();
    let pbuf = |key: &str| {
        nums_opt(c.v, key).map(|_| match pre {
            Some(p) => Buffer::from_f64(c.pd, p),
            None => Buffer::filled(c.pd, pn, f64::NAN),
        })
    };
    let (mut dwb, mut dbb) = (pbuf("grad_weight"), pbuf("grad_bias"));
    {
        let x = view(&xb, shp, lay.x);
        let g = view(&gb, shp, lay.g);
        let grads = Gradients {
            grad_input: dxb.as_mut().map(|b| view_mut(b, shp, lay.dx)),
            grad_weight: param_mut(&mut dwb, &c.pshape),
            grad_bias: param_mut(&mut dbb, &c.pshape),
            accumulate: pre.is_some(),
        };
        c.backward(&x, &g, grads)?;
    }
    for b in [&dwb, &dbb].into_iter().flatten() {
        assert_eq!(b.dtype(), c.pd);
    }
    Ok((
        dxb.map(|b| read(&b, shp, lay.dx)),
        dwb.map(|b| b.to_f64_vec()),
        dbb.map(|b| b.to_f64_vec()),
    ))
}

fn run_case(r: &mut Report, v: &Value) {
    let c = Case::new(v);
    let exp_dx = nums(v, "grad_input");
    let exp_dw = nums_opt(v, "grad_weight");
    let exp_db = nums_opt(v, "grad_bias");
    let has_params = exp_dw.is_some() || exp_db.is_some();
    let t = tol(v, "tol");
    let pt = if has_params { tol(v, "param_tol") } else { t };
    let base = format!("{} [{} {:?}/{:?} {:?}]", name(v), c.op, c.dt, c.pd, c.shape);
    let check_params = |r: &mut Report,
                        got: (Option<Vec<f64>>, Option<Vec<f64>>),
                        add: Option<&[f64]>,
                        ctx: &str| {
        for (what, got, exp) in [
            ("grad_weight", got.0, &exp_dw),
            ("grad_bias", got.1, &exp_db),
        ] {
            let (Some(got), Some(exp)) = (got, exp) else {
                continue;
            };
            let exp: Vec<f64> = match add {
                Some(p) => exp.iter().zip(p).map(|(e, p)| e + p).collect(),
                None => exp.clone(),
            };
            r.check(&got, &exp, pt, format!("{ctx}: {what}"));
        }
    };
    for lay in layouts(c.shape.len()) {
        let ctx = format!("{base} {lay:?}");
        match call(&c, lay, true, None) {
            Err(e) => r.fail(format!("{ctx}: unexpected error: {e}")),
            Ok((dx, dw, db)) => {
                r.check(&dx.unwrap(), &exp_dx, t, format!("{ctx}: grad_input"));
                check_params(r, (dw, db), None, &ctx);
            }
        }
    }
    if !has_params {
        return;
    }
    let pre = prefill(c.pshape.iter().product());
    let last = *layouts(c.shape.len()).last().unwrap();
    for (lay, with_dx, acc) in [
        (CONTIGUOUS, false, false),
        (last, false, false),
        (CONTIGUOUS, true, true),
        (last, false, true),
    ] {
        let ctx = format!("{base} {lay:?} grad_input {with_dx} accumulate {acc}");
        let add = acc.then_some(&pre[..]);
        match call(&c, lay, with_dx, add) {
            Err(e) => r.fail(format!("{ctx}: unexpected error: {e}")),
            Ok((dx, dw, db)) => {
                if let Some(dx) = dx {
                    r.check(&dx, &exp_dx, t, format!("{ctx}: grad_input"));
                }
                check_params(r, (dw, db), add, &ctx);
            }
        }
    }
}

fn run_op(op: &str) {
    let file = golden::load("backward");
    let mut r = Report::default();
    let mut n = 0;
    for case in list(&file, "cases")
        .iter()
        .filter(|c| str_of(c, "op") == op)
    {
        n += 1;
        run_case(&mut r, case);
    }
    assert!(n >= 20, "{op}: only {n} backward cases");
    r.finish(op);
}

#[test]
fn batch_norm_backward_matches_pytorch() {
    run_op("batch_norm");
}

#[test]
fn instance_norm_backward_matches_pytorch() {
    run_op("instance_norm");
}

#[test]
fn group_norm_backward_matches_pytorch() {
    run_op("group_norm");
}

#[test]
fn layer_norm_backward_matches_pytorch() {
    run_op("layer_norm");
}

#[test]
fn local_response_norm_backward_matches_pytorch() {
    run_op("local_response_norm");
}

/// The fixture covers what it claims to (dtypes, layouts, odd sizes, PyTorch-free expectations
/// only where documented).
#[test]
fn backward_fixture_coverage() {
    let file = golden::load("backward");
    let cases = list(&file, "cases");
    let has = |f: &dyn Fn(&Value) -> bool| cases.iter().any(f);
    for dt in ["f32", "f64", "f16", "bf16"] {
        for op in [
            "batch_norm",
            "instance_norm",
            "group_norm",
            "layer_norm",
            "local_response_norm",
        ] {
            assert!(
                has(&|c| str_of(c, "dtype") == dt && str_of(c, "op") == op),
                "no {op} {dt}"
            );
        }
    }
    for pd in ["same", "f32"] {
        assert!(has(
            &|c| str_of(c, "dtype") == "bf16" && str_of(c, "param_dtype") == pd
        ));
    }
    assert!(has(&|c| str_of(c, "memory_format") == "channels_last"
        && str_of(c, "grad_output_format") == "contiguous"));
    for (op, key) in [
        ("batch_norm", "training"),
        ("instance_norm", "use_input_stats"),
    ] {
        for mode in [true, false] {
            assert!(has(
                &|c| str_of(c, "op") == op && c["args"][key].as_bool() == Some(mode)
            ));
        }
    }
    for d in [1, 7, 13, 97] {
        assert!(has(&|c| shape(c, "shape").contains(&d)), "no dim {d}");
    }
    for c in cases {
        if c.get("expected_source").is_some() {
            assert_eq!(str_of(c, "expected_source"), "float64_reference");
            assert!(
                str_of(c, "dtype") == "f16" || str_of(c, "dtype") == "bf16",
                "{}: float64 reference only for f16/bf16",
                name(c)
            );
        }
    }
}

// ----------------------------------------------------------------------------- errors

/// BatchNorm training data (2, 3, 4) f32 with its saved statistics, for the error cases.
struct ErrFixture {
    x: Vec<f32>,
    g: Vec<f32>,
    w: Vec<f32>,
    mean: Buffer,
    invstd: Buffer,
}

fn err_fixture(groups: Option<usize>) -> ErrFixture {
    let x: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32) * 0.3 - 1.0).collect();
    let g: Vec<f32> = (0..24).map(|i| ((i * 5 % 13) as f32) * 0.1 - 0.6).collect();
    let w = vec![1.0f32, 0.5, 2.0];
    let mut y = vec![0.0f32; 24];
    let xt = Tensor::new(&x, &[2, 3, 4]).unwrap();
    let mut yt = TensorMut::new(&mut y, &[2, 3, 4]).unwrap();
    let st = match groups {
        None => batch_norm(
            &xt,
            &mut yt,
            BatchNormArgs {
                training: true,
                ..Default::default()
            },
        ),
        Some(gr) => group_norm(&xt, &mut yt, GroupNormArgs::new(gr)),
    }
    .unwrap();
    ErrFixture {
        x,
        g,
        w,
        mean: st.mean,
        invstd: st.invstd,
    }
}

#[track_caller]
fn expect_kind(res: normkit::Result<()>, kind: ErrorKind, what: &str) {
    match res {
        Ok(()) => panic!("{what}: expected {kind:?}, got Ok"),
        Err(e) => assert_eq!(e.kind(), kind, "{what}: wrong kind ({e})"),
    }
}

#[test]
fn backward_rejects_bad_operands() {
    let f = err_fixture(None);
    let shp = [2usize, 3, 4];
    let x = Tensor::new(&f.x, &shp).unwrap();
    let g = Tensor::new(&f.g, &shp).unwrap();
    let w = Tensor::new(&f.w, &[3]).unwrap();
    let saved = || ForwardStats::Saved {
        mean: f.mean.view(),
        invstd: f.invstd.view(),
    };
    let bn = |g: &Tensor, stats: ForwardStats, weight: Option<Tensor>, grads: Gradients| {
        batch_norm_backward(
            g,
            &x,
            NormBackwardArgs {
                weight,
                stats,
                grads,
            },
        )
    };
    let (mut dx, mut dw) = (vec![0.0f32; 24], vec![0.0f32; 3]);
    // sanity: the valid call succeeds
    bn(
        &g,
        saved(),
        Some(w.clone()),
        Gradients {
            grad_input: Some(TensorMut::new(&mut dx, &shp).unwrap()),
            grad_weight: Some(TensorMut::new(&mut dw, &[3]).unwrap()),
            ..Default::default()
        },
    )
    .unwrap();

    // grad_output of the wrong shape / dtype
    let g_short = Tensor::new(&f.g[..18], &[2, 3, 3]).unwrap();
    expect_kind(
        bn(&g_short, saved(), None, Gradients::default()),
        ErrorKind::ShapeMismatch,
        "grad_output shape",
    );
    let g64: Vec<f64> = f.g.iter().map(|&v| v as f64).collect();
    expect_kind(
        bn(
            &Tensor::new(&g64, &shp).unwrap(),
            saved(),
            None,
            Gradients::default(),
        ),
        ErrorKind::UnsupportedDType,
        "grad_output dtype",
    );
    // grad_input of the wrong shape / dtype
    let mut dx_bad = vec![0.0f32; 24];
    expect_kind(
        bn(
            &g,
            saved(),
            None,
            Gradients {
                grad_input: Some(TensorMut::new(&mut dx_bad, &[2, 4, 3]).unwrap()),
                ..Default::default()
            },
        ),
        ErrorKind::ShapeMismatch,
        "grad_input shape",
    );
    let mut dx64 = vec![0.0f64; 24];
    expect_kind(
        bn(
            &g,
            saved(),
            None,
            Gradients {
                grad_input: Some(TensorMut::new(&mut dx64, &shp).unwrap()),
                ..Default::default()
            },
        ),
        ErrorKind::UnsupportedDType,
        "grad_input dtype",
    );
    // saved statistics of the wrong length / dtype
    let short = Buffer::from_f64(DType::F32, &[0.0, 1.0]);
    expect_kind(
        bn(
            &g,
            ForwardStats::Saved {
                mean: short.view(),
                invstd: f.invstd.view(),
            },
            None,
            Gradients::default(),
        ),
        ErrorKind::ShapeMismatch,
        "saved mean length",
    );
    expect_kind(
        bn(
            &g,
            ForwardStats::Saved {
                mean: f.mean.view(),
                invstd: short.view(),
            },
            None,
            Gradients::default(),
        ),
        ErrorKind::ShapeMismatch,
        "saved invstd length",
    );
    let mean64 = f.mean.cast(DType::F64);
    expect_kind(
        bn(
            &g,
            ForwardStats::Saved {
                mean: mean64.view(),
                invstd: f.invstd.view(),
            },
            None,
            Gradients::default(),
        ),
        ErrorKind::UnsupportedDType,
        "saved mean f64 for f32 input",
    );
    // running statistics of the wrong length / dtype
    let (rm, rv) = (vec![0.0f32; 3], vec![1.0f32; 3]);
    expect_kind(
        bn(
            &g,
            ForwardStats::Running {
                mean: Tensor::new(&rm[..2], &[2]).unwrap(),
                var: Tensor::new(&rv, &[3]).unwrap(),
                eps: 1e-5,
            },
            None,
            Gradients::default(),
        ),
        ErrorKind::ShapeMismatch,
        "running_mean length",
    );
    let rv64 = vec![1.0f64; 3];
    expect_kind(
        bn(
            &g,
            ForwardStats::Running {
                mean: Tensor::new(&rm, &[3]).unwrap(),
                var: Tensor::new(&rv64, &[3]).unwrap(),
                eps: 1e-5,
            },
            None,
            Gradients::default(),
        ),
        ErrorKind::UnsupportedDType,
        "running_var f64 for f32 input",
    );
    // grad_weight / grad_bias: wrong length, dtype not following the parameter rule
    let mut dw4 = vec![0.0f32; 4];
    expect_kind(
        bn(
            &g,
            saved(),
            Some(w.clone()),
            Gradients {
                grad_weight: Some(TensorMut::new(&mut dw4, &[4]).unwrap()),
                ..Default::default()
            },
        ),
        ErrorKind::ShapeMismatch,
        "grad_weight length",
    );
    let mut dw64 = vec![0.0f64; 3];
    expect_kind(
        bn(
            &g,
            saved(),
            Some(w.clone()),
            Gradients {
                grad_weight: Some(TensorMut::new(&mut dw64, &[3]).unwrap()),
                ..Default::default()
            },
        ),
        ErrorKind::UnsupportedDType,
        "grad_weight f64 for f32 input",
    );
    let mut db64 = vec![0.0f64; 3];
    expect_kind(
        bn(
            &g,
            saved(),
            None,
            Gradients {
                grad_bias: Some(TensorMut::new(&mut db64, &[3]).unwrap()),
                ..Default::default()
            },
        ),
        ErrorKind::UnsupportedDType,
        "grad_bias f64 for f32 input",
    );
    // weight of the wrong length
    expect_kind(
        bn(
            &g,
            saved(),
            Some(Tensor::new(&f.w[..2], &[2]).unwrap()),
            Gradients::default(),
        ),
        ErrorKind::ShapeMismatch,
        "weight length",
    );
    // InstanceNorm: saved statistics per (n, c), not per channel
    expect_kind(
        instance_norm_backward(
            &g,
            &x,
            NormBackwardArgs {
                weight: None,
                stats: saved(),
                grads: Gradients::default(),
            },
        ),
        ErrorKind::ShapeMismatch,
        "instance_norm saved stats of length C",
    );
}

#[test]
fn backward_rejects_bad_low_precision_dtypes() {
    // bf16 input: saved statistics must be f32; parameter gradients follow the weight's dtype
    let f = err_fixture(None);
    let shp = [2usize, 3, 4];
    let xb = Buffer::from_f64(
        DType::BF16,
        &f.x.iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    let gb = Buffer::from_f64(
        DType::BF16,
        &f.g.iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    let x = Tensor::new(xb.as_data(), &shp).unwrap();
    let g = Tensor::new(gb.as_data(), &shp).unwrap();
    let w32 = Buffer::from_f64(DType::F32, &[1.0, 0.5, 2.0]);
    let w16 = w32.cast(DType::BF16);
    let run = |mean: &Buffer, w: &Buffer, dw: DType, db: Option<DType>| {
        let mut dwb = Buffer::filled(dw, 3, 0.0);
        let mut dbb = db.map(|d| Buffer::filled(d, 3, 0.0));
        batch_norm_backward(
            &g,
            &x,
            NormBackwardArgs {
                weight: Some(Tensor::new(w.as_data(), &[3]).unwrap()),
                stats: ForwardStats::Saved {
                    mean: mean.view(),
                    invstd: f.invstd.view(),
                },
                grads: Gradients {
                    grad_weight: Some(TensorMut::new(dwb.as_data_mut(), &[3]).unwrap()),
                    grad_bias: dbb
                        .as_mut()
                        .map(|b| TensorMut::new(b.as_data_mut(), &[3]).unwrap()),
                    ..Default::default()
                },
            },
        )
    };
    run(&f.mean, &w32, DType::F32, Some(DType::F32)).expect("mixed precision is valid");
    run(&f.mean, &w16, DType::BF16, Some(DType::BF16)).expect("all-bf16 is valid");
    expect_kind(
        run(&f.mean.cast(DType::BF16), &w32, DType::F32, None),
        ErrorKind::UnsupportedDType,
        "bf16 saved mean",
    );
    expect_kind(
        run(&f.mean, &w32, DType::BF16, None),
        ErrorKind::UnsupportedDType,
        "bf16 grad_weight for f32 weight",
    );
    expect_kind(
        run(&f.mean, &w16, DType::F32, None),
        ErrorKind::UnsupportedDType,
        "f32 grad_weight for bf16 weight",
    );
    expect_kind(
        run(&f.mean, &w32, DType::F32, Some(DType::BF16)),
        ErrorKind::UnsupportedDType,
        "bf16 grad_bias for f32 weight",
    );
    expect_kind(
        run(&f.mean, &w16, DType::F16, None),
        ErrorKind::UnsupportedDType,
        "f16 grad_weight for bf16 input",
    );
}

#[test]
fn group_layer_lrn_backward_reject_bad_arguments() {
    let f = err_fixture(Some(3));
    let shp = [2usize, 3, 4];
    let x = Tensor::new(&f.x, &shp).unwrap();
    let g = Tensor::new(&f.g, &shp).unwrap();
    let gn = |groups: usize, mean: &Buffer| {
        group_norm_backward(
            &g,
            &x,
            GroupNormBackwardArgs {
                num_groups: groups,
                weight: None,
                mean: mean.view(),
                invstd: f.invstd.view(),
                grads: Gradients::default(),
            },
        )
    };
    gn(3, &f.mean).expect("valid group_norm_backward");
    expect_kind(
        gn(2, &f.mean),
        ErrorKind::InvalidArgument,
        "num_groups not dividing C",
    );
    expect_kind(gn(0, &f.mean), ErrorKind::InvalidArgument, "num_groups 0");
    expect_kind(
        gn(3, &Buffer::filled(DType::F32, 3, 0.0)),
        ErrorKind::ShapeMismatch,
        "group stats of length G instead of N·G",
    );
    expect_kind(
        gn(3, &f.mean.cast(DType::F64)),
        ErrorKind::UnsupportedDType,
        "group stats f64 for f32 input",
    );
    // group_norm_backward: grad_output shape
    let g_bad = Tensor::new(&f.g, &[2, 4, 3]).unwrap();
    expect_kind(
        group_norm_backward(
            &g_bad,
            &x,
            GroupNormBackwardArgs {
                num_groups: 3,
                weight: None,
                mean: f.mean.view(),
                invstd: f.invstd.view(),
                grads: Gradients::default(),
            },
        ),
        ErrorKind::ShapeMismatch,
        "group_norm grad_output shape",
    );

    // layer_norm over the last dim: 6 rows
    let rows = Buffer::filled(DType::F32, 6, 0.5);
    let ln = |ns: &[usize], mean: &Buffer, g: &Tensor| {
        layer_norm_backward(
            g,
            &x,
            LayerNormBackwardArgs {
                normalized_shape: ns.to_vec(),
                weight: None,
                mean: mean.view(),
                invstd: rows.view(),
                grads: Gradients::default(),
            },
        )
    };
    ln(&[4], &rows, &g).expect("valid layer_norm_backward");
    expect_kind(
        ln(&[3], &rows, &g),
        ErrorKind::ShapeMismatch,
        "normalized_shape mismatch",
    );
    expect_kind(
        ln(&[4], &Buffer::filled(DType::F32, 5, 0.5), &g),
        ErrorKind::ShapeMismatch,
        "layer_norm mean length",
    );
    expect_kind(
        ln(&[4], &rows.cast(DType::F16), &g),
        ErrorKind::UnsupportedDType,
        "layer_norm mean dtype",
    );
    expect_kind(
        ln(&[4], &rows, &g_bad),
        ErrorKind::ShapeMismatch,
        "layer_norm grad_output shape",
    );

    // local_response_norm
    let mut dx = vec![0.0f32; 24];
    let mut lrn = |size: usize, g: &Tensor, dx_shape: &[usize]| {
        let mut dxt = TensorMut::new(&mut dx, dx_shape).unwrap();
        local_response_norm_backward(g, &x, &mut dxt, LrnArgs::new(size))
    };
    lrn(3, &g, &shp).expect("valid local_response_norm_backward");
    expect_kind(lrn(0, &g, &shp), ErrorKind::InvalidArgument, "LRN size 0");
    expect_kind(
        lrn(3, &g_bad, &shp),
        ErrorKind::ShapeMismatch,
        "LRN grad_output shape",
    );
    expect_kind(
        lrn(3, &g, &[2, 4, 3]),
        ErrorKind::ShapeMismatch,
        "LRN grad_input shape",
    );
}
