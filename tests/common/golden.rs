//! Loader of the PyTorch golden fixtures in `tests/golden/*.json` (schema in
//! `tests/golden/README.md`).

use super::Tol;
use serde_json::Value;
use std::path::PathBuf;

/// Loads one fixture file, e.g. `load("batch_norm")`.
pub fn load(family: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
        .join(format!("{family}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// All five fixture families.
pub const FAMILIES: [&str; 5] = [
    "batch_norm",
    "instance_norm",
    "group_norm",
    "layer_norm",
    "local_response_norm",
];

/// One number: a JSON number or one of the strings "NaN", "Infinity", "-Infinity".
pub fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("finite number"),
        Value::String(s) => match s.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            other => panic!("bad number string {other:?}"),
        },
        other => panic!("expected a number, got {other}"),
    }
}

/// A flat list of numbers; `None` for JSON null or a missing key.
pub fn nums_opt(v: &Value, key: &str) -> Option<Vec<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a.iter().map(num).collect()),
        Some(other) => panic!("{key}: expected a list, got {other}"),
    }
}

/// A flat list of numbers (must exist).
pub fn nums(v: &Value, key: &str) -> Vec<f64> {
    nums_opt(v, key).unwrap_or_else(|| panic!("missing list {key:?} in {}", name(v)))
}

/// A shape (list of non-negative integers).
pub fn shape(v: &Value, key: &str) -> Vec<usize> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("missing shape {key:?}"))
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}

pub fn name(v: &Value) -> String {
    v.get("name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string()
}

pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("missing string {key:?} in {}", name(v)))
}

pub fn f64_of(v: &Value, key: &str) -> f64 {
    num(&v[key])
}

pub fn f64_opt(v: &Value, key: &str) -> Option<f64> {
    match v.get(key) {
        None | Some(Value::Null) => None,
        Some(x) => Some(num(x)),
    }
}

pub fn bool_of(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

pub fn usize_of(v: &Value, key: &str) -> usize {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("missing integer {key:?} in {}", name(v))) as usize
}

/// A `{"rtol", "atol"}` object.
pub fn tol(v: &Value, key: &str) -> Tol {
    let t = &v[key];
    Tol::new(num(&t["rtol"]), num(&t["atol"]))
}

/// The list of objects under `key` (`cases`, `functional`, `errors`).
pub fn list<'a>(file: &'a Value, key: &str) -> &'a [Value] {
    file[key].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// A normkit dtype from its fixture name (`"f32"`, `"f64"`, `"f16"`, `"bf16"`).
pub fn dtype_named(s: &str) -> normkit::DType {
    normkit::DType::parse(s).unwrap_or_else(|| panic!("bad dtype {s}"))
}

/// The parameter dtype of a case: `param_dtype` `"same"` means the input's `dtype`.
pub fn param_dtype_of(case: &Value) -> normkit::DType {
    match str_of(case, "param_dtype") {
        "same" => dtype_named(str_of(case, "dtype")),
        other => dtype_named(other),
    }
}

/// Collects check results across many cases and fails once at the end with the first few
/// mismatches (so one run shows every failing case).
#[derive(Default)]
pub struct Report {
    pub failures: Vec<String>,
    pub checked: usize,
}

impl Report {
    pub fn check(&mut self, got: &[f64], exp: &[f64], t: Tol, ctx: String) {
        self.checked += 1;
        if let Err(e) = super::check_close(got, exp, t, &ctx, None) {
            self.failures.push(e);
        }
    }

    pub fn fail(&mut self, msg: String) {
        self.failures.push(msg);
    }

    pub fn finish(self, what: &str) {
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
