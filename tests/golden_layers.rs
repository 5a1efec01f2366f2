//! Modules (`normkit::layers`) against the PyTorch 2.15 golden fixtures: every module case is
//! replayed step by step (train/eval switches, attribute flips, lazy materialisation) in the
//! contiguous layout and, where the rank allows, channels-last; after every step the output and
//! the full state (weight, bias, running_mean, running_var, num_batches_tracked) are compared.
//! Error cases must fail with the right `ErrorKind` and leave the state PyTorch leaves.

mod common;

use common::golden::{self, bool_of, f64_of, f64_opt, list, name, nums, shape, str_of, tol};
use common::{Tol, check_close, from_channels_last, to_channels_last};
use normkit::layers::{
    BatchNorm, BatchNormConfig, BatchNormKind, GroupNorm, GroupNormConfig, InstanceNorm,
    InstanceNormConfig, InstanceNormKind, LayerNorm, LayerNormConfig, LocalResponseNorm, Module,
    State,
};
use normkit::ops::LrnArgs;
use normkit::{Buffer, DType, ErrorKind, Tensor, TensorMut};
use serde_json::Value;

fn dtype(s: &str) -> DType {
    DType::parse(s).unwrap_or_else(|| panic!("bad dtype {s}"))
}

fn param_dtype(case: &Value) -> DType {
    match str_of(case, "param_dtype") {
        "same" => dtype(str_of(case, "dtype")),
        other => dtype(other),
    }
}

enum M {
    Bn(BatchNorm),
    In(InstanceNorm),
    Gn(GroupNorm),
    Ln(LayerNorm),
    Lrn(LocalResponseNorm),
}

impl M {
    fn module(&mut self) -> &mut dyn Module {
        match self {
            M::Bn(m) => m,
            M::In(m) => m,
            M::Gn(m) => m,
            M::Ln(m) => m,
            M::Lrn(m) => m,
        }
    }
    fn set_track_running_stats(&mut self, v: bool) {
        match self {
            M::Bn(m) => m.config.track_running_stats = v,
            M::In(m) => m.config.track_running_stats = v,
            _ => panic!("track_running_stats on a module without it"),
        }
    }
}

/// Builds the module described by a fixture `layer` object with parameters in `pd`.
fn build(layer: &Value, pd: DType) -> normkit::Result<M> {
    let kind = str_of(layer, "kind");
    let lazy = kind.starts_with("Lazy");
    let base = kind.trim_start_matches("Lazy");
    let bn_kind = |k: &str| match k {
        "BatchNorm1d" => BatchNormKind::BatchNorm1d,
        "BatchNorm2d" => BatchNormKind::BatchNorm2d,
        "BatchNorm3d" => BatchNormKind::BatchNorm3d,
        other => panic!("unknown {other}"),
    };
    let in_kind = |k: &str| match k {
        "InstanceNorm1d" => InstanceNormKind::InstanceNorm1d,
        "InstanceNorm2d" => InstanceNormKind::InstanceNorm2d,
        "InstanceNorm3d" => InstanceNormKind::InstanceNorm3d,
        other => panic!("unknown {other}"),
    };
    // Lazy modules: defaults eps 1e-5, momentum 0.1, affine, tracking, bias for both families.
    let momentum = match layer.get("momentum") {
        Some(Value::Null) => None,
        Some(v) => Some(golden::num(v)),
        None => Some(0.1),
    };
    let eps = f64_opt(layer, "eps").unwrap_or(1e-5);
    let nf = layer
        .get("num_features")
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    if base.starts_with("BatchNorm") {
        let mut c = BatchNormConfig::new(nf);
        c.eps = eps;
        c.momentum = momentum;
        c.affine = bool_of(layer, "affine", true);
        c.track_running_stats = bool_of(layer, "track_running_stats", true);
        c.bias = bool_of(layer, "bias", true);
        c.dtype = pd;
        return Ok(M::Bn(if lazy {
            BatchNorm::lazy(bn_kind(base), c)
        } else {
            BatchNorm::new(bn_kind(base), c)
        }));
    }
    if base.starts_with("InstanceNorm") {
        let mut c = if lazy {
            InstanceNormConfig::lazy()
        } else {
            InstanceNormConfig::new(nf)
        };
        c.eps = eps;
        c.momentum = momentum;
        c.affine = bool_of(layer, "affine", lazy);
        c.track_running_stats = bool_of(layer, "track_running_stats", lazy);
        c.bias = bool_of(layer, "bias", true);
        c.dtype = pd;
        return Ok(M::In(if lazy {
            InstanceNorm::lazy(in_kind(base), c)
        } else {
            InstanceNorm::new(in_kind(base), c)
        }));
    }
    match kind {
        "GroupNorm" => {
            let mut c = GroupNormConfig::new(
                layer["num_groups"].as_u64().unwrap() as usize,
                layer["num_channels"].as_u64().unwrap() as usize,
            );
            c.eps = eps;
            c.affine = bool_of(layer, "affine", true);
            c.bias = bool_of(layer, "bias", true);
            c.dtype = pd;
            Ok(M::Gn(GroupNorm::new(c)?))
        }
        "LayerNorm" => {
            let ns = shape(layer, "normalized_shape");
            let mut c = LayerNormConfig::new(&ns);
            c.eps = eps;
            c.elementwise_affine = bool_of(layer, "elementwise_affine", true);
            c.bias = bool_of(layer, "bias", true);
            c.dtype = pd;
            Ok(M::Ln(LayerNorm::new(c)))
        }
        "LocalResponseNorm" => Ok(M::Lrn(LocalResponseNorm::with_args(LrnArgs {
            size: layer["size"].as_u64().unwrap() as usize,
            alpha: f64_of(layer, "alpha"),
            beta: f64_of(layer, "beta"),
            k: f64_of(layer, "k"),
        }))),
        other => panic!("unknown layer kind {other}"),
    }
}

fn load_state(m: &mut dyn Module, st: &Value, pd: DType) -> normkit::Result<()> {
    let Some(obj) = st.as_object() else {
        return Ok(());
    };
    for (k, v) in obj {
        let value = if k == "num_batches_tracked" {
            State::Counter(v.as_i64().unwrap())
        } else {
            State::Tensor(Buffer::from_f64(pd, &nums(st, k)))
        };
        m.load_state(k, &value)?;
    }
    Ok(())
}

/// Compares the module state with the expected state object (same names, same values).
fn compare_state(
    m: &dyn Module,
    exp: &Value,
    pd: DType,
    t: Tol,
    ctx: &str,
    failures: &mut Vec<String>,
) {
    let obj = exp.as_object().unwrap();
    let mut names: Vec<&str> = m
        .state_names()
        .into_iter()
        .filter(|n| m.state(n).is_ok())
        .collect();
    names.sort_unstable();
    let mut want: Vec<&str> = obj.keys().map(String::as_str).collect();
    want.sort_unstable();
    if names != want {
        failures.push(format!("{ctx}: state names {names:?}, expected {want:?}"));
    }
    for (k, v) in obj {
        match m.state(k) {
            Err(e) => failures.push(format!("{ctx}: state {k}: {e}")),
            Ok(State::Counter(n)) => {
                if Some(n) != v.as_i64() {
                    failures.push(format!("{ctx}: num_batches_tracked {n}, expected {v}"));
                }
            }
            Ok(State::Tensor(b)) => {
                if b.dtype() != pd {
                    failures.push(format!(
                        "{ctx}: state {k} has dtype {:?}, expected {pd:?}",
                        b.dtype()
                    ));
                }
                if let Err(e) = check_close(
                    &b.to_f64_vec(),
                    &nums(exp, k),
                    t,
                    &format!("{ctx}: state {k}"),
                    None,
                ) {
                    failures.push(e);
                }
            }
        }
    }
}

fn store(dt: DType, logical: &[f64], shape: &[usize], cl: bool) -> Buffer {
    if cl {
        Buffer::from_f64(dt, &to_channels_last(shape, logical))
    } else {
        Buffer::from_f64(dt, logical)
    }
}

fn run_forward(
    m: &mut dyn Module,
    dt: DType,
    input: &[f64],
    shp: &[usize],
    cl: bool,
) -> normkit::Result<Vec<f64>> {
    let xb = store(dt, input, shp, cl);
    let mut yb = Buffer::filled(dt, input.len(), f64::NAN);
    {
        let (x, mut y) = if cl {
            (
                Tensor::channels_last(xb.as_data(), shp).unwrap(),
                TensorMut::channels_last(yb.as_data_mut(), shp).unwrap(),
            )
        } else {
            (
                Tensor::new(xb.as_data(), shp).unwrap(),
                TensorMut::new(yb.as_data_mut(), shp).unwrap(),
            )
        };
        m.forward(&x, &mut y)?;
    }
    let v = yb.to_f64_vec();
    Ok(if cl { from_channels_last(shp, &v) } else { v })
}

fn run_case(case: &Value, failures: &mut Vec<String>) -> usize {
    let dt = dtype(str_of(case, "dtype"));
    let pd = param_dtype(case);
    let out_tol = tol(case, "tol");
    let state_tol = tol(case, "state_tol");
    let steps = case["steps"].as_array().unwrap();
    let min_rank = steps.iter().map(|s| shape(s, "shape").len()).min().unwrap();
    let mut layouts = vec![false];
    if min_rank >= 3 {
        layouts.push(true);
    }
    let mut checks = 0;
    for cl in layouts {
        let mut m = build(&case["layer"], pd)
            .unwrap_or_else(|e| panic!("{}: constructor failed: {e}", name(case)));
        if let Some(init) = case.get("init_state") {
            if let Err(e) = load_state(m.module(), init, pd) {
                failures.push(format!("{}: loading init_state: {e}", name(case)));
                continue;
            }
        }
        for (i, step) in steps.iter().enumerate() {
            let shp = shape(step, "shape");
            let ctx = format!(
                "{} [{dt:?}/{pd:?} cl {cl}] step {i} ({}, shape {shp:?})",
                name(case),
                str_of(step, "mode")
            );
            if let Some(set) = step.get("set") {
                if let Some(v) = set.get("track_running_stats").and_then(Value::as_bool) {
                    m.set_track_running_stats(v);
                }
            }
            let md = m.module();
            if str_of(step, "mode") == "train" {
                md.train();
            } else {
                md.eval();
            }
            match run_forward(md, dt, &nums(step, "input"), &shp, cl) {
                Err(e) => {
                    failures.push(format!("{ctx}: unexpected error: {e}"));
                    break;
                }
                Ok(y) => {
                    checks += 1;
                    if let Err(e) = check_close(
                        &y,
                        &nums(step, "output"),
                        out_tol,
                        &format!("{ctx}: output"),
                        None,
                    ) {
                        failures.push(e);
                    }
                    compare_state(md, &step["state"], pd, state_tol, &ctx, failures);
                }
            }
        }
    }
    checks
}

fn run_family(family: &str) {
    let file = golden::load(family);
    let mut failures = Vec::new();
    let mut checks = 0;
    let cases = list(&file, "cases");
    assert!(!cases.is_empty());
    for case in cases {
        checks += run_case(case, &mut failures);
    }
    assert!(checks > 0, "{family}: nothing checked");
    if !failures.is_empty() {
        let n = failures.len();
        failures.truncate(15);
        panic!(
            "{family}: {n} failing checks (of {checks} steps):\n{}",
            failures.join("\n")
        );
    }
}

#[test]
fn batch_norm_modules_match_pytorch() {
    run_family("batch_norm");
}

#[test]
fn instance_norm_modules_match_pytorch() {
    run_family("instance_norm");
}

#[test]
fn group_norm_modules_match_pytorch() {
    run_family("group_norm");
}

#[test]
fn layer_norm_modules_match_pytorch() {
    run_family("layer_norm");
}

#[test]
fn local_response_norm_modules_match_pytorch() {
    run_family("local_response_norm");
}

fn allowed_kinds(condition: &str) -> &'static [ErrorKind] {
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

#[test]
fn module_error_cases_are_rejected_and_leave_pytorchs_state() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for family in golden::FAMILIES {
        let file = golden::load(family);
        for case in list(&file, "errors") {
            let target = str_of(case, "target");
            if target == "functional" {
                continue;
            }
            checked += 1;
            let cond = str_of(case, "condition");
            let allowed = allowed_kinds(cond);
            let dt = dtype(str_of(case, "dtype"));
            let pd = param_dtype(case);
            let ctx = format!("{} ({cond})", name(case));
            let built = build(&case["layer"], pd);
            if target == "constructor" {
                match built {
                    Ok(_) => {
                        failures.push(format!("{ctx}: constructor accepted the configuration"))
                    }
                    Err(e) if !allowed.contains(&e.kind()) => failures.push(format!(
                        "{ctx}: error kind {:?} not in {allowed:?} ({e})",
                        e.kind()
                    )),
                    Err(_) => {}
                }
                continue;
            }
            let mut m = match built {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("{ctx}: constructor failed: {e}"));
                    continue;
                }
            };
            let md = m.module();
            if str_of(case, "mode") == "train" {
                md.train();
            } else {
                md.eval();
            }
            match run_forward(md, dt, &nums(case, "input"), &shape(case, "shape"), false) {
                Ok(_) => failures.push(format!("{ctx}: expected an error, got Ok")),
                Err(e) if !allowed.contains(&e.kind()) => failures.push(format!(
                    "{ctx}: error kind {:?} not in {allowed:?} ({e})",
                    e.kind()
                )),
                Err(_) => {}
            }
            if let Some(st) = case.get("state_after") {
                compare_state(
                    md,
                    st,
                    pd,
                    Tol::new(0.0, 0.0),
                    &format!("{ctx}: state after the failed call"),
                    &mut failures,
                );
            }
        }
    }
    assert!(checked >= 20, "only {checked} module error cases");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
