//! Functional ops against the PyTorch 2.15 golden fixtures (`tests/golden/*.json`,
//! `functional` and functional `errors` sections). Every case runs with contiguous tensors and,
//! where the rank allows, with channels-last input and output and with a channels-last input
//! written into a contiguous output.

mod common;

use common::golden::{self, bool_of, f64_of, list, name, nums, nums_opt, shape, str_of, tol};
use common::{Tol, check_close, from_channels_last, to_channels_last};
use normkit::ops::{
    BatchNormArgs, GroupNormArgs, InstanceNormArgs, LayerNormArgs, LrnArgs, SavedStats, batch_norm,
    group_norm, instance_norm, layer_norm, local_response_norm,
};
use normkit::{Buffer, DType, ErrorKind, Tensor, TensorMut};
use serde_json::Value;

/// Memory layouts of input and output.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Lay {
    Contiguous,
    ChannelsLast,
    /// Channels-last input, contiguous output.
    MixedClIn,
}

impl Lay {
    fn x_cl(self) -> bool {
        self != Lay::Contiguous
    }
    fn y_cl(self) -> bool {
        self == Lay::ChannelsLast
    }
}

fn layouts(shape: &[usize]) -> Vec<Lay> {
    let mut v = vec![Lay::Contiguous];
    if shape.len() >= 3 {
        v.push(Lay::ChannelsLast);
    }
    if shape.len() >= 4 {
        v.push(Lay::MixedClIn);
    }
    v
}

fn dtype(s: &str) -> DType {
    DType::parse(s).unwrap_or_else(|| panic!("bad dtype {s}"))
}

fn param_dtype(case: &Value) -> DType {
    match str_of(case, "param_dtype") {
        "same" => dtype(str_of(case, "dtype")),
        other => dtype(other),
    }
}

/// A buffer holding `logical` (row-major values) stored contiguously or channels-last.
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

/// Collects mismatches instead of stopping at the first failing case.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    checked: usize,
}

impl Report {
    fn check(&mut self, got: &[f64], exp: &[f64], t: Tol, ctx: String) {
        self.checked += 1;
        if let Err(e) = check_close(got, exp, t, &ctx, None) {
            self.failures.push(e);
        }
    }
    fn fail(&mut self, msg: String) {
        self.failures.push(msg);
    }
    fn finish(self, what: &str) {
        assert!(self.checked > 0, "{what}: nothing was checked");
        if !self.failures.is_empty() {
            let n = self.failures.len();
            let shown: Vec<String> = self.failures.into_iter().take(12).collect();
            panic!(
                "{what}: {n} failing checks (of {}):\n{}",
                self.checked,
                shown.join("\n")
            );
        }
    }
}

fn check_saved(r: &mut Report, case: &Value, st: &SavedStats, ctx: &str) {
    let Some(exp_mean) = nums_opt(case, "save_mean") else {
        return;
    };
    let sd = dtype(str_of(case, "saved_dtype"));
    if st.mean.dtype() != sd || st.invstd.dtype() != sd {
        r.fail(format!(
            "{ctx}: saved stats dtype {:?}/{:?}, expected {sd:?}",
            st.mean.dtype(),
            st.invstd.dtype()
        ));
    }
    let t = tol(case, "saved_tol");
    r.check(
        &st.mean.to_f64_vec(),
        &exp_mean,
        t,
        format!("{ctx}: save_mean"),
    );
    r.check(
        &st.invstd.to_f64_vec(),
        &nums(case, "save_invstd"),
        t,
        format!("{ctx}: save_invstd"),
    );
}

fn opt_param(case: &Value, key: &str, pd: DType) -> Option<Buffer> {
    nums_opt(case, key).map(|v| Buffer::from_f64(pd, &v))
}

fn run_case(r: &mut Report, case: &Value) {
    let op = str_of(case, "op");
    let dt = dtype(str_of(case, "dtype"));
    let pd = param_dtype(case);
    let shp = shape(case, "shape");
    let input = nums(case, "input");
    let out_tol = tol(case, "tol");
    let state_tol = tol(case, "state_tol");
    let args = &case["args"];
    let c = if shp.len() >= 2 { shp[1] } else { 0 };
    for lay in layouts(&shp) {
        let ctx = format!("{} [{op} {dt:?} {lay:?} shape {shp:?}]", name(case));
        let xb = store(dt, &input, &shp, lay.x_cl());
        let mut yb = Buffer::filled(dt, input.len(), f64::NAN);
        let x = view(&xb, &shp, lay.x_cl());
        let mut y = view_mut(&mut yb, &shp, lay.y_cl());
        let w = opt_param(case, "weight", pd);
        let b = opt_param(case, "bias", pd);
        let mut rm = opt_param(case, "running_mean", pd);
        let mut rv = opt_param(case, "running_var", pd);
        let pshape: Vec<usize> = if op == "layer_norm" {
            args["normalized_shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect()
        } else {
            vec![c]
        };
        let wt = w
            .as_ref()
            .map(|b| Tensor::new(b.as_data(), &pshape).unwrap());
        let bt = b
            .as_ref()
            .map(|b| Tensor::new(b.as_data(), &pshape).unwrap());
        let res: Result<Option<SavedStats>, normkit::Error> = match op {
            "batch_norm" => batch_norm(
                &x,
                &mut y,
                BatchNormArgs {
                    weight: wt,
                    bias: bt,
                    running_mean: rm
                        .as_mut()
                        .map(|b| TensorMut::new(b.as_data_mut(), &[c]).unwrap()),
                    running_var: rv
                        .as_mut()
                        .map(|b| TensorMut::new(b.as_data_mut(), &[c]).unwrap()),
                    num_batches_tracked: None,
                    training: bool_of(args, "training", false),
                    momentum: Some(f64_of(args, "momentum")),
                    eps: f64_of(args, "eps"),
                },
            )
            .map(Some),
            "instance_norm" => instance_norm(
                &x,
                &mut y,
                InstanceNormArgs {
                    weight: wt,
                    bias: bt,
                    running_mean: rm
                        .as_mut()
                        .map(|b| TensorMut::new(b.as_data_mut(), &[c]).unwrap()),
                    running_var: rv
                        .as_mut()
                        .map(|b| TensorMut::new(b.as_data_mut(), &[c]).unwrap()),
                    use_input_stats: bool_of(args, "use_input_stats", true),
                    momentum: f64_of(args, "momentum"),
                    eps: f64_of(args, "eps"),
                },
            )
            .map(Some),
            "group_norm" => group_norm(
                &x,
                &mut y,
                GroupNormArgs {
                    num_groups: args["num_groups"].as_u64().unwrap() as usize,
                    weight: wt,
                    bias: bt,
                    eps: f64_of(args, "eps"),
                },
            )
            .map(Some),
            "layer_norm" => layer_norm(
                &x,
                &mut y,
                LayerNormArgs {
                    normalized_shape: pshape.clone(),
                    weight: wt,
                    bias: bt,
                    eps: f64_of(args, "eps"),
                },
            )
            .map(Some),
            "local_response_norm" => local_response_norm(
                &x,
                &mut y,
                LrnArgs {
                    size: args["size"].as_u64().unwrap() as usize,
                    alpha: f64_of(args, "alpha"),
                    beta: f64_of(args, "beta"),
                    k: f64_of(args, "k"),
                },
            )
            .map(|()| None),
            other => panic!("unknown op {other}"),
        };
        drop(y);
        match res {
            Err(e) => r.fail(format!("{ctx}: unexpected error: {e}")),
            Ok(saved) => {
                r.check(
                    &read(&yb, &shp, lay.y_cl()),
                    &nums(case, "output"),
                    out_tol,
                    format!("{ctx}: output"),
                );
                if let Some(exp) = nums_opt(case, "running_mean_after") {
                    r.check(
                        &rm.as_ref().unwrap().to_f64_vec(),
                        &exp,
                        state_tol,
                        format!("{ctx}: running_mean"),
                    );
                    if rm.as_ref().unwrap().dtype() != pd {
                        r.fail(format!("{ctx}: running_mean changed dtype"));
                    }
                }
                if let Some(exp) = nums_opt(case, "running_var_after") {
                    r.check(
                        &rv.as_ref().unwrap().to_f64_vec(),
                        &exp,
                        state_tol,
                        format!("{ctx}: running_var"),
                    );
                }
                if let Some(st) = saved {
                    check_saved(r, case, &st, &ctx);
                }
            }
        }
    }
}

fn run_family(family: &str) {
    let file = golden::load(family);
    let mut r = Report::default();
    let cases = list(&file, "functional");
    assert!(!cases.is_empty(), "{family}: no functional cases");
    for case in cases {
        run_case(&mut r, case);
    }
    r.finish(family);
}

#[test]
fn batch_norm_functional_matches_pytorch() {
    run_family("batch_norm");
}

#[test]
fn instance_norm_functional_matches_pytorch() {
    run_family("instance_norm");
}

#[test]
fn group_norm_functional_matches_pytorch() {
    run_family("group_norm");
}

#[test]
fn layer_norm_functional_matches_pytorch() {
    run_family("layer_norm");
}

#[test]
fn local_response_norm_functional_matches_pytorch() {
    run_family("local_response_norm");
}

/// Error kinds normkit may report for each condition (PyTorch's exception classes are
/// informative only, spec Preface).
pub fn allowed_kinds(condition: &str) -> &'static [ErrorKind] {
    use ErrorKind::*;
    match condition {
        "batch_of_one_training"
        | "eps_nonpositive_training"
        | "eps_negative"
        | "lrn_size_zero"
        | "groups_zero"
        | "missing_running_stats"
        | "groups_not_dividing" => &[InvalidArgument],
        "channel_mismatch" | "wrong_rank" | "normalized_shape_mismatch" => &[ShapeMismatch],
        "empty_spatial" | "normalized_shape_empty" => &[ShapeMismatch, InvalidArgument],
        "dtype_mismatch" => &[UnsupportedDType],
        other => panic!("unknown error condition {other}"),
    }
}

/// Runs a functional call for an error case (functional-target cases, plus layer cases whose
/// condition the functional op itself must reject, built with the module's default parameters).
fn functional_error(case: &Value) -> Option<Result<(), normkit::Error>> {
    let dt = dtype(str_of(case, "dtype"));
    let shp = shape(case, "shape");
    let xb = Buffer::from_f64(dt, &nums(case, "input"));
    let mut yb = Buffer::filled(dt, xb.len(), 0.0);
    let x = Tensor::new(xb.as_data(), &shp).unwrap();
    let mut y = TensorMut::new(yb.as_data_mut(), &shp).unwrap();
    let cond = str_of(case, "condition");
    let target = str_of(case, "target");
    let training = str_of(case, "mode") == "train";
    if target == "functional" {
        let args = &case["args"];
        return Some(match cond {
            "missing_running_stats" => batch_norm(
                &x,
                &mut y,
                BatchNormArgs {
                    training: false,
                    eps: f64_of(args, "eps"),
                    ..Default::default()
                },
            )
            .map(drop),
            "groups_not_dividing" => {
                let mut a = GroupNormArgs::new(args["num_groups"].as_u64().unwrap() as usize);
                a.eps = f64_of(args, "eps");
                group_norm(&x, &mut y, a).map(drop)
            }
            "normalized_shape_empty" => layer_norm(&x, &mut y, LayerNormArgs::new(&[])).map(drop),
            other => panic!("functional error case with condition {other}"),
        });
    }
    if target != "layer" {
        return None;
    }
    let layer = &case["layer"];
    let kind = str_of(layer, "kind");
    let c_in = if shp.len() >= 2 { shp[1] } else { 0 };
    match (kind, cond) {
        (
            k,
            "batch_of_one_training"
            | "eps_nonpositive_training"
            | "eps_negative"
            | "channel_mismatch",
        ) if k.starts_with("BatchNorm") && shp.len() >= 2 => {
            let nf = layer["num_features"].as_u64().unwrap() as usize;
            let track = bool_of(layer, "track_running_stats", true);
            let affine = bool_of(layer, "affine", true);
            let (mut rm, mut rv) = (Buffer::filled(dt, nf, 0.0), Buffer::filled(dt, nf, 1.0));
            let (w, b) = (Buffer::filled(dt, nf, 1.0), Buffer::filled(dt, nf, 0.0));
            let _ = c_in;
            Some(
                batch_norm(
                    &x,
                    &mut y,
                    BatchNormArgs {
                        weight: affine.then(|| Tensor::new(w.as_data(), &[nf]).unwrap()),
                        bias: affine.then(|| Tensor::new(b.as_data(), &[nf]).unwrap()),
                        running_mean: track
                            .then(|| TensorMut::new(rm.as_data_mut(), &[nf]).unwrap()),
                        running_var: track
                            .then(|| TensorMut::new(rv.as_data_mut(), &[nf]).unwrap()),
                        training: training || !track,
                        momentum: Some(0.1),
                        eps: f64_of(layer, "eps"),
                        num_batches_tracked: None,
                    },
                )
                .map(drop),
            )
        }
        (k, "batch_of_one_training") if k.starts_with("InstanceNorm") && shp.len() >= 3 => {
            Some(instance_norm(&x, &mut y, InstanceNormArgs::default()).map(drop))
        }
        ("GroupNorm", _) if shp.len() >= 2 || cond == "wrong_rank" => {
            let g = layer["num_groups"].as_u64().unwrap() as usize;
            let nc = layer["num_channels"].as_u64().unwrap() as usize;
            let (w, b) = (Buffer::filled(dt, nc, 1.0), Buffer::filled(dt, nc, 0.0));
            let mut a = GroupNormArgs::new(g);
            a.weight = Some(Tensor::new(w.as_data(), &[nc]).unwrap());
            a.bias = Some(Tensor::new(b.as_data(), &[nc]).unwrap());
            a.eps = f64_of(layer, "eps");
            Some(group_norm(&x, &mut y, a).map(drop))
        }
        ("LayerNorm", _) => {
            let ns: Vec<usize> = layer["normalized_shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            Some(layer_norm(&x, &mut y, LayerNormArgs::new(&ns)).map(drop))
        }
        ("LocalResponseNorm", _) => Some(
            local_response_norm(
                &x,
                &mut y,
                LrnArgs::new(layer["size"].as_u64().unwrap() as usize),
            )
            .map(drop),
        ),
        _ => None,
    }
}

#[test]
fn functional_error_cases_are_rejected() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for family in golden::FAMILIES {
        let file = golden::load(family);
        for case in list(&file, "errors") {
            let cond = str_of(case, "condition");
            let allowed = allowed_kinds(cond);
            let hint = str_of(case, "error_kind");
            assert!(
                allowed.iter().any(|k| format!("{k:?}") == hint),
                "{}: fixture error_kind {hint} not in the allowed set for {cond}",
                name(case)
            );
            let Some(res) = functional_error(case) else {
                continue;
            };
            checked += 1;
            match res {
                Ok(()) => {
                    failures.push(format!("{}: {cond}: expected an error, got Ok", name(case)))
                }
                Err(e) if !allowed.contains(&e.kind()) => failures.push(format!(
                    "{}: {cond}: error kind {:?} not in {allowed:?} ({e})",
                    name(case),
                    e.kind()
                )),
                Err(_) => {}
            }
        }
    }
    assert!(checked >= 15, "only {checked} functional error cases ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
