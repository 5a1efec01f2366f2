//! The standard benchmark suite (`benches/cases.json`, embedded at build time), shared by
//! `normkit bench` and the criterion benches.
//!
//! A [`Case`] is one measured configuration (layer, shape, layout, mode, dtype). [`Prepared`]
//! owns its input, output and parameters, runs the op, and checks a sample of outputs against a
//! float64 reference computed here independently of the kernels. [`measure`] times it on a
//! normkit thread pool of a given size. The byte model (read `x` once, write `y` once, plus the
//! parameters; backward: read `x` and `dy`, write `dx`) gives the effective bandwidth.
//!
//! A backward (`bwd`) case runs the training forward once when prepared (for the saved mean
//! and inverse std) and then times `grad_input`, `grad_weight` and `grad_bias` from those
//! statistics; the check compares `dx` samples and a few parameter gradients with the float64
//! formula `dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`, `ĝ = dy·γ`, `dγ = Σ dy·x̂`, `dβ = Σ dy`.

use crate::backend::cpu::threads::{self, MAX_THREADS, OnThreads};
use crate::ops::{
    BatchNormArgs, ForwardStats, Gradients, GroupNormArgs, GroupNormBackwardArgs, InstanceNormArgs,
    LayerNormArgs, LayerNormBackwardArgs, LrnArgs, NormBackwardArgs, SavedStats, batch_norm,
    batch_norm_backward, group_norm, group_norm_backward, instance_norm, layer_norm,
    layer_norm_backward, local_response_norm,
};
use crate::tensor::{HostData, HostDataMut};
use crate::{Buffer, DType, Tensor, TensorMut};
use rayon::prelude::*;
use std::collections::HashMap;
use std::time::Instant;

pub mod device;

/// The standard cases file, embedded at build time.
pub const CASES_JSON: &str = include_str!("../benches/cases.json");

/// One standard case of the file, before expansion over layouts, modes and dtypes.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub layer: String,
    pub shape: Vec<usize>,
    pub layouts: Vec<String>,
    pub modes: Vec<String>,
    pub num_groups: Option<usize>,
    pub normalized_shape: Option<Vec<usize>>,
}

/// The parsed suite: global parameters and the case list.
#[derive(Clone, Debug)]
pub struct Suite {
    pub eps: f64,
    pub lrn: LrnArgs,
    pub dtypes: Vec<DType>,
    pub threads: Vec<usize>,
    pub specs: Vec<Spec>,
}

/// One measured configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub layer: String,
    pub shape: Vec<usize>,
    pub layout: String,
    pub mode: String,
    pub dtype: DType,
    pub num_groups: Option<usize>,
    pub normalized_shape: Option<Vec<usize>>,
}

fn list<T>(
    v: &serde_json::Value,
    what: &str,
    item: impl Fn(&serde_json::Value) -> Option<T>,
) -> Result<Vec<T>, String> {
    v.as_array()
        .ok_or_else(|| format!("{what}: expected a list"))?
        .iter()
        .map(|e| item(e).ok_or_else(|| format!("{what}: unexpected element {e}")))
        .collect()
}

fn usizes(v: &serde_json::Value, what: &str) -> Result<Vec<usize>, String> {
    list(v, what, |e| e.as_u64().map(|n| n as usize))
}

fn strings(v: &serde_json::Value, what: &str) -> Result<Vec<String>, String> {
    list(v, what, |e| e.as_str().map(str::to_string))
}

/// Long dtype spelling of the cases file (`float32`, `bfloat16`, ...).
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
    }
}

impl Suite {
    /// Parses a cases file.
    pub fn parse(text: &str) -> Result<Suite, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("cases file: {e}"))?;
        let f = |key: &str| v.get(key).ok_or_else(|| format!("cases file: no `{key}`"));
        let lrn = f("lrn")?;
        let num = |key: &str| {
            lrn.get(key)
                .and_then(|x| x.as_f64())
                .ok_or_else(|| format!("lrn.{key}: expected a number"))
        };
        let lrn = LrnArgs {
            size: num("size")? as usize,
            alpha: num("alpha")?,
            beta: num("beta")?,
            k: num("k")?,
        };
        let dtypes = strings(f("dtypes")?, "dtypes")?
            .iter()
            .map(|s| DType::parse(s).ok_or_else(|| format!("dtypes: unknown dtype {s}")))
            .collect::<Result<_, _>>()?;
        let mut specs = Vec::new();
        for c in f("cases")?
            .as_array()
            .ok_or("cases: expected a list")?
            .iter()
        {
            let get = |key: &str| c.get(key).ok_or_else(|| format!("case without `{key}`"));
            specs.push(Spec {
                layer: get("layer")?
                    .as_str()
                    .ok_or("layer: expected a string")?
                    .to_string(),
                shape: usizes(get("shape")?, "shape")?,
                layouts: strings(get("layouts")?, "layouts")?,
                modes: strings(get("modes")?, "modes")?,
                num_groups: c
                    .get("num_groups")
                    .and_then(|g| g.as_u64())
                    .map(|g| g as usize),
                normalized_shape: match c.get("normalized_shape") {
                    Some(ns) => Some(usizes(ns, "normalized_shape")?),
                    None => None,
                },
            });
        }
        Ok(Suite {
            eps: f("eps")?.as_f64().ok_or("eps: expected a number")?,
            lrn,
            dtypes,
            threads: usizes(f("threads")?, "threads")?,
            specs,
        })
    }

    /// The embedded standard suite.
    pub fn standard() -> Result<Suite, String> {
        Suite::parse(CASES_JSON)
    }

    /// Every case, expanded over layouts, modes and the given dtypes (in file order).
    pub fn cases(&self, dtypes: &[DType]) -> Vec<Case> {
        let mut out = Vec::new();
        for s in &self.specs {
            for layout in &s.layouts {
                for mode in &s.modes {
                    for &dtype in dtypes {
                        out.push(Case {
                            layer: s.layer.clone(),
                            shape: s.shape.clone(),
                            layout: layout.clone(),
                            mode: mode.clone(),
                            dtype,
                            num_groups: s.num_groups,
                            normalized_shape: s.normalized_shape.clone(),
                        });
                    }
                }
            }
        }
        out
    }
}

impl Case {
    /// `Layer/AxBxC/LAYOUT/mode/dtype`, the string `--filter` matches.
    pub fn name(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.layer,
            self.shape_str(),
            self.layout,
            self.mode,
            dtype_name(self.dtype)
        )
    }

    pub fn shape_str(&self) -> String {
        self.shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x")
    }

    pub fn is_backward(&self) -> bool {
        self.mode == "bwd"
    }

    /// The case shrunk to at most `max_elements` elements where it can be, for smoke runs
    /// (`--max-elements`): the batch dimension first (at least 1), then the largest spatial
    /// dimension halved (rounding up, never below 2); channels, groups and LayerNorm's
    /// normalized dimensions stay, so a case may remain above the cap.
    pub fn shrunk(&self, max_elements: usize) -> Case {
        let mut c = self.clone();
        let n = c.shape.first().copied().unwrap_or(1).max(1);
        let per_sample = (c.numel() / n).max(1);
        if let Some(b) = c.shape.first_mut() {
            *b = (max_elements / per_sample).clamp(1, n);
        }
        let first_spatial = if c.layer == "LayerNorm" {
            c.shape.len()
        } else {
            2
        };
        while c.numel() > max_elements {
            let Some(i) = (first_spatial..c.shape.len())
                .filter(|&i| c.shape[i] > 2)
                .max_by_key(|&i| c.shape[i])
            else {
                break;
            };
            c.shape[i] = c.shape[i].div_ceil(2);
        }
        c
    }

    /// The case grown to at least `min_elements` elements by its batch dimension (the first),
    /// for runs on tensors larger than the last-level cache (`--min-elements`); a case that is
    /// already as large is unchanged.
    pub fn grown(&self, min_elements: usize) -> Case {
        let mut c = self.clone();
        let n = c.shape.first().copied().unwrap_or(1).max(1);
        let per_sample = (c.numel() / n).max(1);
        if let Some(b) = c.shape.first_mut() {
            *b = min_elements.div_ceil(per_sample).max(n);
        }
        c
    }

    fn channels_last(&self) -> bool {
        matches!(self.layout.as_str(), "NHWC" | "NDHWC" | "NLC")
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of the per-channel (or LayerNorm elementwise) parameter vectors, 0 if none.
    fn param_len(&self) -> usize {
        match self.layer.as_str() {
            "LayerNorm" => self
                .normalized_shape
                .as_ref()
                .map_or(0, |ns| ns.iter().product()),
            "LocalResponseNorm" | "InstanceNorm1d" | "InstanceNorm2d" | "InstanceNorm3d" => 0,
            _ => self.shape.get(1).copied().unwrap_or(0),
        }
    }

    /// Compulsory traffic of the byte model: `x` read once and `y` written once (backward: `x`
    /// and `dy` read, `dx` written), plus weight and bias, plus the running statistics for
    /// BatchNorm (read in eval, read and written in train).
    pub fn bytes(&self) -> u64 {
        let es = self.dtype.size_in_bytes() as u64;
        let tensors = if self.is_backward() { 3 } else { 2 };
        let p = self.param_len() as u64;
        let param_passes = 2 + if self.layer.starts_with("BatchNorm") {
            if self.mode == "train" { 4 } else { 2 }
        } else {
            0
        };
        tensors * self.numel() as u64 * es + param_passes * p * es
    }
}

/// Deterministic pseudo-random values (splitmix64), uniform in `[-1, 1)`.
fn noise(i: u64) -> f64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

/// A case with its buffers, ready to run.
pub struct Prepared {
    pub case: Case,
    eps: f64,
    lrn: LrnArgs,
    x: Lined,
    y: Lined,
    weight: Option<Buffer>,
    bias: Option<Buffer>,
    running_mean: Option<Buffer>,
    running_var: Option<Buffer>,
    /// Backward only: the upstream gradient, the parameter gradients and the forward's
    /// saved statistics (`y` holds `dx`).
    dy: Option<Lined>,
    grad_weight: Option<Buffer>,
    grad_bias: Option<Buffer>,
    saved: Option<SavedStats>,
    /// The reference check's `(N, C, S)` view ([`Prepared::geom`]) and layout, taken once: the
    /// check asks for them per element (a grown case's check reads whole channels).
    nchw: (usize, usize, usize),
    channels_last: bool,
}

/// Statistics of one normalised group for the backward reference: mean, `r = 1/sqrt(var +
/// eps)`, `mean(ĝ)` and `mean(ĝ·x̂)`.
type GroupGrad = (f64, f64, f64, f64);

/// The storage of a bench tensor (`x`, `y`, `dy`): a buffer a little longer than the tensor,
/// used from `offset` bytes past its first 64-byte boundary. With `offset = 0` (the default)
/// the tensor starts on a cache line, as PyTorch's CPU allocator places its tensors (64-byte
/// alignment), so the side-by-side comparison runs both libraries on the same line pattern.
/// A `Vec<f32>` from the system allocator starts 16 bytes past a page: `normkit bench
/// --offset-bytes 16` measures that placement.
#[derive(Clone, Debug)]
pub(crate) struct Lined {
    buf: Buffer,
    start: usize,
    len: usize,
}

impl Lined {
    /// The cache line the CPU kernels split their stores at.
    const LINE: usize = crate::backend::cpu::prefetch::LINE;

    fn filled(d: DType, len: usize, value: f64, offset_bytes: usize) -> Lined {
        let size = d.size_in_bytes();
        let buf = Buffer::filled(d, len + (Self::LINE + offset_bytes).div_ceil(size), value);
        let start = buf.first_aligned(Self::LINE) + offset_bytes / size;
        Lined { buf, start, len }
    }

    fn from_f64(d: DType, values: &[f64], offset_bytes: usize) -> Lined {
        let mut l = Lined::filled(d, values.len(), 0.0, offset_bytes);
        l.as_data_mut().copy_from_f64(values);
        l
    }

    /// A whole buffer as it is (a download from a device).
    pub(crate) fn from_buffer(buf: Buffer) -> Lined {
        let len = buf.len();
        Lined { buf, start: 0, len }
    }

    pub(crate) fn as_data(&self) -> HostData<'_> {
        self.buf.range_data(self.start..self.start + self.len)
    }

    pub(crate) fn as_data_mut(&mut self) -> HostDataMut<'_> {
        self.buf.range_data_mut(self.start..self.start + self.len)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// A copy of the tensor's elements in a buffer of their own (for an upload).
    pub(crate) fn to_buffer(&self) -> Buffer {
        self.as_data().to_buffer()
    }
}

impl Prepared {
    /// Allocates and fills the buffers of a case (values in `[-1.5, 2.5)`, parameters near 1
    /// and 0, upstream gradients in `[-1, 1)`), in the case's dtype, its tensors on 64-byte
    /// boundaries (`Lined`). A backward case runs the (training) forward here once for its
    /// saved statistics.
    pub fn new(case: &Case, suite: &Suite) -> Result<Prepared, String> {
        Prepared::with_offset(case, suite, 0)
    }

    /// [`Prepared::new`] with the tensors (`x`, `y`, `dy`) starting `offset_bytes` past a
    /// 64-byte boundary (a multiple of the element size, less than 64).
    pub fn with_offset(
        case: &Case,
        suite: &Suite,
        offset_bytes: usize,
    ) -> Result<Prepared, String> {
        let n = case.numel();
        let d = case.dtype;
        let size = d.size_in_bytes();
        if offset_bytes % size != 0 || offset_bytes >= Lined::LINE {
            return Err(format!(
                "bench: offset-bytes: expected a multiple of the {d:?} element size ({size}) \
                 below {}, got {offset_bytes}",
                Lined::LINE
            ));
        }
        let xs: Vec<f64> = (0..n)
            .into_par_iter()
            .on_threads()
            .map(|i| 0.5 + 2.0 * noise(i as u64))
            .collect();
        let p = case.param_len();
        let param = |f: &dyn Fn(f64) -> f64| {
            (p > 0).then(|| Buffer::from_f64(d, &(0..p).map(|i| f(i as f64)).collect::<Vec<_>>()))
        };
        let bn = case.layer.starts_with("BatchNorm");
        Ok(Prepared {
            case: case.clone(),
            eps: suite.eps,
            lrn: suite.lrn,
            x: Lined::from_f64(d, &xs, offset_bytes),
            y: Lined::filled(d, n, 0.0, offset_bytes),
            weight: param(&|c| 1.0 + 0.25 * (0.7 * c).sin()),
            bias: param(&|c| 0.1 * (0.3 * c).cos()),
            running_mean: if bn {
                param(&|c| 0.2 * (0.11 * c).sin())
            } else {
                None
            },
            running_var: if bn {
                param(&|c| 1.0 + 0.5 * (0.13 * c).cos().abs())
            } else {
                None
            },
            dy: None,
            grad_weight: None,
            grad_bias: None,
            saved: None,
            nchw: Prepared::geom_of(case),
            channels_last: case.channels_last(),
        })
        .and_then(|mut prep| {
            if case.is_backward() {
                let saved = prep
                    .forward()
                    .map_err(|e| format!("{}: forward: {e}", case.name()))?;
                prep.saved = Some(saved);
                let dys: Vec<f64> = (0..n)
                    .into_par_iter()
                    .on_threads()
                    .map(|i| noise(i as u64 ^ 0x0005_DEEC_E66D))
                    .collect();
                prep.dy = Some(Lined::from_f64(d, &dys, offset_bytes));
                prep.grad_weight = param(&|_| 0.0);
                prep.grad_bias = param(&|_| 0.0);
            }
            Ok(prep)
        })
    }

    /// Runs the op once on the current thread pool (the backward op for `bwd` cases).
    pub fn run(&mut self) -> crate::Result<()> {
        if self.case.is_backward() {
            self.backward()
        } else {
            self.forward().map(|_| ())
        }
    }

    /// The parameter shape (`normalized_shape` for LayerNorm, `[C]` otherwise).
    fn param_shape(&self) -> Vec<usize> {
        self.case
            .normalized_shape
            .clone()
            .unwrap_or_else(|| vec![self.weight.as_ref().map_or(0, |w| w.len())])
    }

    /// The backward op: `dx` into `y`, parameter gradients, from the saved statistics.
    fn backward(&mut self) -> crate::Result<()> {
        let c = &self.case;
        let shape = c.shape.as_slice();
        let pshape = self.param_shape();
        let (Some(dy), Some(saved)) = (&self.dy, &self.saved) else {
            return Err(crate::Error::invalid(
                "bench",
                "case",
                "a prepared backward case",
                c.name(),
            ));
        };
        let cl = c.channels_last();
        fn tensor<'b>(b: &'b Lined, shape: &[usize], cl: bool) -> crate::Result<Tensor<'b>> {
            if cl {
                Tensor::channels_last(b.as_data(), shape)
            } else {
                Tensor::new(b.as_data(), shape)
            }
        }
        let (x, g) = (tensor(&self.x, shape, cl)?, tensor(dy, shape, cl)?);
        let dx = if cl {
            TensorMut::channels_last(self.y.as_data_mut(), shape)?
        } else {
            TensorMut::new(self.y.as_data_mut(), shape)?
        };
        let weight = self
            .weight
            .as_ref()
            .map(|b| Tensor::new(b.as_data(), &pshape))
            .transpose()?;
        let grads = Gradients {
            grad_input: Some(dx),
            grad_weight: self.grad_weight.as_mut().map(|b| b.view_mut()),
            grad_bias: self.grad_bias.as_mut().map(|b| b.view_mut()),
            accumulate: false,
        };
        let (mean, invstd) = (saved.mean.view(), saved.invstd.view());
        match c.layer.as_str() {
            l if l.starts_with("BatchNorm") => batch_norm_backward(
                &g,
                &x,
                NormBackwardArgs {
                    weight,
                    stats: ForwardStats::Saved { mean, invstd },
                    grads,
                },
            ),
            "GroupNorm" => group_norm_backward(
                &g,
                &x,
                GroupNormBackwardArgs {
                    num_groups: c.num_groups.unwrap_or(1),
                    weight,
                    mean,
                    invstd,
                    grads,
                },
            ),
            "LayerNorm" => layer_norm_backward(
                &g,
                &x,
                LayerNormBackwardArgs {
                    normalized_shape: pshape,
                    weight,
                    mean,
                    invstd,
                    grads,
                },
            ),
            other => Err(crate::Error::invalid(
                "bench",
                "layer",
                "a layer with a backward case (BatchNorm, GroupNorm, LayerNorm)",
                other.to_string(),
            )),
        }
    }

    /// The forward op (BatchNorm in training mode for backward cases); returns the saved
    /// statistics (empty for LocalResponseNorm).
    fn forward(&mut self) -> crate::Result<SavedStats> {
        let pshape = self.param_shape();
        let c = &self.case;
        let shape = c.shape.as_slice();
        let cl = c.channels_last();
        let x = if cl {
            Tensor::channels_last(self.x.as_data(), shape)?
        } else {
            Tensor::new(self.x.as_data(), shape)?
        };
        let mut y = if cl {
            TensorMut::channels_last(self.y.as_data_mut(), shape)?
        } else {
            TensorMut::new(self.y.as_data_mut(), shape)?
        };
        fn view<'b>(b: &'b Option<Buffer>, shape: &[usize]) -> crate::Result<Option<Tensor<'b>>> {
            b.as_ref()
                .map(|b| Tensor::new(b.as_data(), shape))
                .transpose()
        }
        let weight = view(&self.weight, &pshape)?;
        let bias = view(&self.bias, &pshape)?;
        match c.layer.as_str() {
            l if l.starts_with("BatchNorm") => {
                let rm = self.running_mean.as_mut().map(|b| b.view_mut());
                let rv = self.running_var.as_mut().map(|b| b.view_mut());
                let args = BatchNormArgs {
                    weight,
                    bias,
                    running_mean: rm,
                    running_var: rv,
                    training: c.mode != "eval",
                    eps: self.eps,
                    ..Default::default()
                };
                batch_norm(&x, &mut y, args)
            }
            l if l.starts_with("InstanceNorm") => {
                let args = InstanceNormArgs {
                    eps: self.eps,
                    ..Default::default()
                };
                instance_norm(&x, &mut y, args)
            }
            "GroupNorm" => {
                let mut args = GroupNormArgs::new(c.num_groups.unwrap_or(1));
                (args.weight, args.bias, args.eps) = (weight, bias, self.eps);
                group_norm(&x, &mut y, args)
            }
            "LayerNorm" => {
                let mut args = LayerNormArgs::new(&pshape);
                (args.weight, args.bias, args.eps) = (weight, bias, self.eps);
                layer_norm(&x, &mut y, args)
            }
            "LocalResponseNorm" => {
                local_response_norm(&x, &mut y, self.lrn)?;
                Ok(SavedStats::empty(c.dtype))
            }
            other => Err(crate::Error::invalid(
                "bench",
                "layer",
                "a layer of the standard suite",
                other.to_string(),
            )),
        }
    }

    /// Geometry of the logical `(N, C, S)` view of `case` (LayerNorm: rows × 1 × columns).
    fn geom_of(case: &Case) -> (usize, usize, usize) {
        let sh = &case.shape;
        if case.layer == "LayerNorm" {
            let cols = case.param_len().max(1);
            return (case.numel() / cols, 1, cols);
        }
        (
            sh[0],
            sh.get(1).copied().unwrap_or(1),
            sh[2..].iter().product(),
        )
    }

    /// Geometry of the logical `(N, C, S)` view ([`Prepared::geom_of`] of the case).
    fn geom(&self) -> (usize, usize, usize) {
        self.nchw
    }

    /// The memory offset of `(n, c, s)`.
    fn offset(&self, n: usize, c: usize, s: usize) -> usize {
        let (_, cc, ss) = self.nchw;
        if self.channels_last {
            (n * ss + s) * cc + c
        } else {
            (n * cc + c) * ss + s
        }
    }

    /// Float64 mean and biased variance over the `(n, c, s)` triples of `items`.
    fn moments(&self, items: impl Iterator<Item = (usize, usize, usize)> + Clone) -> (f64, f64) {
        let x = self.x.as_data();
        let (mut sum, mut count) = (0.0, 0usize);
        for (n, c, s) in items.clone() {
            sum += x.get_f64(self.offset(n, c, s));
            count += 1;
        }
        let mean = sum / count as f64;
        let m2: f64 = items
            .map(|(n, c, s)| (x.get_f64(self.offset(n, c, s)) - mean).powi(2))
            .sum();
        (mean, m2 / count as f64)
    }

    /// The float64 reference of output `(n, c, s)` (`cache` keeps group statistics).
    fn reference(
        &self,
        n: usize,
        c: usize,
        s: usize,
        cache: &mut HashMap<usize, (f64, f64)>,
    ) -> f64 {
        let (nn, cc, ss) = self.geom();
        let x = self.x.as_data();
        let v = x.get_f64(self.offset(n, c, s));
        let p = |b: &Option<Buffer>, i: usize, default: f64| {
            b.as_ref().map_or(default, |b| b.as_data().get_f64(i))
        };
        let layer = self.case.layer.as_str();
        if layer == "LocalResponseNorm" {
            let a = self.lrn;
            let lo = c.saturating_sub(a.size / 2);
            let hi = (c + (a.size - 1) / 2).min(cc - 1);
            let sq: f64 = (lo..=hi)
                .map(|j| x.get_f64(self.offset(n, j, s)).powi(2))
                .sum();
            return v / (a.k + a.alpha / a.size as f64 * sq).powf(a.beta);
        }
        let (key, pi) = match layer {
            "LayerNorm" => (n, s),
            "GroupNorm" => (n * cc + c / (cc / self.case.num_groups.unwrap_or(1)), c),
            l if l.starts_with("InstanceNorm") => (n * cc + c, c),
            _ => (c, c),
        };
        let (mean, var) = if layer.starts_with("BatchNorm") && self.case.mode == "eval" {
            (p(&self.running_mean, c, 0.0), p(&self.running_var, c, 1.0))
        } else {
            *cache.entry(key).or_insert_with(|| match layer {
                "LayerNorm" => self.moments((0..ss).map(|j| (n, 0, j))),
                "GroupNorm" => {
                    let cg = cc / self.case.num_groups.unwrap_or(1);
                    let c0 = c / cg * cg;
                    self.moments((c0..c0 + cg).flat_map(move |ch| (0..ss).map(move |j| (n, ch, j))))
                }
                l if l.starts_with("InstanceNorm") => self.moments((0..ss).map(|j| (n, c, j))),
                _ => self.moments((0..nn).flat_map(move |b| (0..ss).map(move |j| (b, c, j)))),
            })
        };
        (v - mean) / (var + self.eps).sqrt() * p(&self.weight, pi, 1.0) + p(&self.bias, pi, 0.0)
    }

    /// Backward: the `(n, c, s)` triples of the group `(n, c, s)` belongs to (its BatchNorm
    /// channel, GroupNorm group or LayerNorm row).
    fn group_items(&self, n: usize, c: usize) -> Vec<(usize, usize, usize)> {
        let (nn, cc, ss) = self.geom();
        match self.case.layer.as_str() {
            "LayerNorm" => (0..ss).map(|j| (n, 0, j)).collect(),
            "GroupNorm" => {
                let c0 = self.group_key(n, c) - n * cc;
                let cg = cc / self.case.num_groups.unwrap_or(1);
                (c0..c0 + cg)
                    .flat_map(|ch| (0..ss).map(move |j| (n, ch, j)))
                    .collect()
            }
            _ => (0..nn)
                .flat_map(|b| (0..ss).map(move |j| (b, c, j)))
                .collect(),
        }
    }

    /// The cache key of the group of `(n, c)` (see [`group_items`](Self::group_items)).
    fn group_key(&self, n: usize, c: usize) -> usize {
        let (_, cc, _) = self.geom();
        match self.case.layer.as_str() {
            "LayerNorm" => n,
            "GroupNorm" => {
                let cg = cc / self.case.num_groups.unwrap_or(1);
                n * cc + c / cg * cg
            }
            _ => c,
        }
    }

    /// Index of the parameter (γ, β) that element `(n, c, s)` uses.
    fn param_index(&self, c: usize, s: usize) -> usize {
        if self.case.layer == "LayerNorm" { s } else { c }
    }

    /// Float64 `(mean, r, mean(ĝ), mean(ĝ·x̂))` of the group of `(n, c)` (cached by key).
    fn group_grad(&self, n: usize, c: usize, cache: &mut HashMap<usize, GroupGrad>) -> GroupGrad {
        *cache.entry(self.group_key(n, c)).or_insert_with(|| {
            let items = self.group_items(n, c);
            let (mean, var) = self.moments(items.iter().copied());
            let r = 1.0 / (var + self.eps).sqrt();
            let (x, g) = (self.x.as_data(), self.dy.as_ref().map(|b| b.as_data()));
            let gamma = |i: usize| self.weight.as_ref().map_or(1.0, |w| w.as_data().get_f64(i));
            let (mut a, mut b) = (0.0, 0.0);
            for &(n, c, s) in &items {
                let o = self.offset(n, c, s);
                let gh = g.as_ref().map_or(0.0, |g| g.get_f64(o)) * gamma(self.param_index(c, s));
                a += gh;
                b += gh * (x.get_f64(o) - mean) * r;
            }
            let m = items.len() as f64;
            (mean, r, a / m, b / m)
        })
    }

    /// Backward: the float64 `dx` at `(n, c, s)`.
    fn reference_dx(
        &self,
        n: usize,
        c: usize,
        s: usize,
        cache: &mut HashMap<usize, GroupGrad>,
    ) -> f64 {
        let (mean, r, a, b) = self.group_grad(n, c, cache);
        let o = self.offset(n, c, s);
        let gamma = self
            .weight
            .as_ref()
            .map_or(1.0, |w| w.as_data().get_f64(self.param_index(c, s)));
        let gh = self.dy.as_ref().map_or(0.0, |g| g.as_data().get_f64(o)) * gamma;
        let xh = (self.x.as_data().get_f64(o) - mean) * r;
        r * (gh - a - xh * b)
    }

    /// Backward: float64 `(dγ_p, dβ_p, Σ|dy·x̂|, Σ|dy|)` of parameter `p`.
    fn reference_param_grads(
        &self,
        p: usize,
        cache: &mut HashMap<usize, GroupGrad>,
    ) -> (f64, f64, f64, f64) {
        let (nn, _, ss) = self.geom();
        let items: Vec<(usize, usize, usize)> = if self.case.layer == "LayerNorm" {
            (0..nn).map(|n| (n, 0, p)).collect()
        } else {
            (0..nn)
                .flat_map(|n| (0..ss).map(move |s| (n, p, s)))
                .collect()
        };
        let (x, g) = (self.x.as_data(), self.dy.as_ref().map(|b| b.as_data()));
        let mut out = (0.0, 0.0, 0.0, 0.0);
        for (n, c, s) in items {
            let (mean, r, _, _) = self.group_grad(n, c, cache);
            let o = self.offset(n, c, s);
            let gv = g.as_ref().map_or(0.0, |g| g.get_f64(o));
            let xh = (x.get_f64(o) - mean) * r;
            out.0 += gv * xh;
            out.1 += gv;
            out.2 += (gv * xh).abs();
            out.3 += gv.abs();
        }
        out
    }

    /// Backward: checks `grad_weight`/`grad_bias` of the first and last parameter against
    /// the float64 sums (the dtype's tolerance relative to the value, plus 1e-5 of the sum of
    /// the terms' magnitudes for the summation).
    fn check_param_grads(
        &self,
        tol: f64,
        cache: &mut HashMap<usize, GroupGrad>,
    ) -> Result<(), String> {
        let (Some(gw), Some(gb)) = (&self.grad_weight, &self.grad_bias) else {
            return Ok(());
        };
        let len = gw.len();
        for p in [0, len.saturating_sub(1)].into_iter().filter(|&p| p < len) {
            let (dw, db, dw_abs, db_abs) = self.reference_param_grads(p, cache);
            for (what, got, want, scale) in [
                ("grad_weight", gw.as_data().get_f64(p), dw, dw_abs),
                ("grad_bias", gb.as_data().get_f64(p), db, db_abs),
            ] {
                let (err, bound) = ((got - want).abs(), tol * (1.0 + want.abs()) + 1e-5 * scale);
                if err > bound {
                    return Err(format!(
                        "{}: {what}[{p}] = {got}, float64 reference {want} (error {err:.3e} > tolerance {tol:.0e}·(1+|ref|) + 1e-5·Σ|terms| = {bound:.3e})",
                        self.case.name(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Compares `samples` outputs (spread over the tensor, first and last included) with the
    /// float64 reference (backward: `dx` samples, then the first and last parameter
    /// gradients); returns a description of the first mismatch beyond the dtype's tolerance.
    pub fn check(&self, samples: usize) -> Result<(), String> {
        let (nn, cc, ss) = self.geom();
        let total = nn * cc * ss;
        if total == 0 {
            return Ok(());
        }
        let tol = match self.case.dtype {
            DType::F64 => 1e-9,
            DType::F32 => 1e-4,
            DType::F16 => 4e-3,
            DType::BF16 => 2e-2,
        };
        let y = self.y.as_data();
        let mut cache = HashMap::new();
        let mut grad_cache = HashMap::new();
        let bwd = self.case.is_backward();
        let count = samples.max(2).min(total);
        for k in 0..count {
            let i = if k + 1 == count {
                total - 1
            } else {
                (((noise(k as u64 ^ 0xABCD) + 1.0) / 2.0) * total as f64) as usize % total
            };
            let (n, c, s) = (i / (cc * ss), i / ss % cc, i % ss);
            let want = if bwd {
                self.reference_dx(n, c, s, &mut grad_cache)
            } else {
                self.reference(n, c, s, &mut cache)
            };
            let got = y.get_f64(self.offset(n, c, s));
            let err = (got - want).abs();
            let within = err <= tol * (1.0 + want.abs());
            if !within {
                return Err(format!(
                    "{}: output ({n}, {c}, {s}) = {got}, float64 reference {want} (error {err:.3e} > tolerance {tol:.0e}·(1+|ref|))",
                    self.case.name()
                ));
            }
        }
        if bwd {
            self.check_param_grads(tol, &mut grad_cache)?;
        }
        Ok(())
    }
}

/// Timing of one case.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub case: Case,
    pub device: String,
    pub threads: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub reps: usize,
}

impl Measurement {
    pub fn bytes(&self) -> u64 {
        self.case.bytes()
    }

    /// Effective bandwidth in GB/s (1e9 bytes/s) at the median time.
    pub fn gbps(&self) -> f64 {
        self.bytes() as f64 / (self.median_ms * 1e-3) / 1e9
    }

    /// One JSON object in the format of `cases.json` (`json_output`).
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "layer": self.case.layer,
            "shape": self.case.shape,
            "layout": self.case.layout,
            "mode": self.case.mode,
            "dtype": dtype_name(self.case.dtype),
            "device": self.device,
            "threads": self.threads,
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "reps": self.reps,
            "bytes": self.bytes(),
            "gbps": self.gbps(),
        })
        .to_string()
    }
}

/// Median of a non-empty list (mean of the two middle values for even lengths).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Warm-up before a CPU timing: at least `runs` runs, and more until `ms` milliseconds have
/// passed (at most [`Warmup::MAX_RUNS`]).
///
/// Why time as well as runs: on the 2-vCPU VM of docs/perf/cpu.md a fresh process's first
/// runs of a ~1 ms op are up to 2x slower than its steady state, for a varying number of runs
/// (BatchNorm1d eval bf16, 2 threads: 2.06, 1.66, then 0.8–0.9 ms in one process; in another
/// the median of 25 runs after one warm-up was 1.7–2.1 ms against 0.8 ms over 200 runs), while
/// a long-lived process such as PyTorch's in `benches/compare/compare.py` is already warm.
/// `compare.py` warms PyTorch up the same way, so both sides are timed in their steady state.
#[derive(Clone, Copy, Debug)]
pub struct Warmup {
    pub runs: usize,
    pub ms: f64,
}

impl Warmup {
    /// Upper bound on warm-up runs (an op of a few microseconds stops here, not at `ms`).
    pub const MAX_RUNS: usize = 10_000;
}

impl Default for Warmup {
    fn default() -> Self {
        Warmup { runs: 3, ms: 200.0 }
    }
}

/// Warms `prep` up ([`Warmup`]) and checks its output, then times `reps` runs on a pool of
/// `threads`.
pub fn measure(
    prep: &mut Prepared,
    threads: usize,
    reps: usize,
    warmup: Warmup,
) -> Result<Measurement, String> {
    let name = prep.case.name();
    let run = |p: &mut Prepared| -> Result<f64, String> {
        let t = Instant::now();
        // as a caller with its own count calls an op (a C ABI context): from this thread
        threads::with_threads(threads, || p.run()).map_err(|e| format!("{name}: {e}"))?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let start = Instant::now();
    let mut runs = 0;
    while runs < warmup.runs.max(1)
        || (start.elapsed().as_secs_f64() * 1e3 < warmup.ms && runs < Warmup::MAX_RUNS)
    {
        run(prep)?;
        runs += 1;
    }
    prep.check(256)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        times.push(run(prep)?);
    }
    let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(Measurement {
        case: prep.case.clone(),
        device: "cpu".into(),
        threads,
        median_ms: median(&mut times),
        min_ms,
        reps: times.len(),
    })
}

/// The cases [`serve`] answers for, each under the name a request gives: its full-size name
/// ([`Case::name`]) even where the case was shrunk or grown (`normkit bench --max-elements`).
pub struct Served<'a> {
    pub suite: &'a Suite,
    pub cases: Vec<(String, Case)>,
    /// [`Prepared::with_offset`]'s offset of every tensor from a 64-byte boundary.
    pub offset_bytes: usize,
    /// The least number of warm-up runs before each timing ([`Warmup::runs`]).
    pub warmup_runs: usize,
}

/// `normkit bench --serve`: answers timing requests read from `input`, one JSON object per line,
/// with one JSON line each on `output` (flushed), until the end of `input`. A long-lived
/// process lets a comparison interleave its timings with another library's call by call
/// (`benches/compare/compare.py`) instead of process by process, so that both sides of a
/// round see the same state of a shared, noisy machine.
///
/// * `{"case": NAME, "threads": T, "reps": R, "warmup_ms": MS}` times case `NAME` as
///   [`measure`] does (`MS` optional, default [`Warmup::default`]'s) and answers with
///   [`Measurement::to_json`]. The last case's tensors are kept for the next request, so
///   repeated requests for one case time the same buffers, warm.
/// * `{"bandwidth": T, "size_mib": M}` answers `{"threads", "read", "write", "scale"}` in
///   GB/s ([`bandwidth`] over two buffers of `M` MiB, default 256, best of 3).
///
/// A request that cannot be served (not JSON, an unknown case, a failed check) is answered
/// with `{"error": "..."}` naming what was wrong; the loop goes on. Only an I/O error on
/// `input` or `output` ends it early.
pub fn serve(
    served: &Served<'_>,
    input: impl std::io::BufRead,
    mut output: impl std::io::Write,
) -> std::io::Result<()> {
    let mut kept: Option<(String, Prepared)> = None;
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = serve_one(served, &line, &mut kept)
            .unwrap_or_else(|e| serde_json::json!({ "error": e }).to_string());
        writeln!(output, "{answer}")?;
        output.flush()?;
    }
    Ok(())
}

/// One request of [`serve`]: its answer line, or the error message.
fn serve_one(
    served: &Served<'_>,
    line: &str,
    kept: &mut Option<(String, Prepared)>,
) -> Result<String, String> {
    let req: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| format!("serve: request: expected a JSON object, got '{line}' ({e})"))?;
    // the integer at `key` (`default` when absent), from 1 to `max`
    let count = |key: &str, default: Option<usize>, max: usize| -> Result<usize, String> {
        let v = req.get(key);
        match (v, default) {
            (None, Some(d)) => Ok(d),
            _ => v
                .and_then(|v| v.as_u64())
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    let got = v.map_or("nothing".to_string(), |v| v.to_string());
                    format!(
                        "serve: request '{key}': expected an integer from 1 to {max}, got {got}"
                    )
                }),
        }
    };
    if req.get("bandwidth").is_some() {
        let threads = count("bandwidth", None, MAX_THREADS)?;
        let mib = count("size_mib", Some(256), MAX_SIZE_MIB)?;
        let b = bandwidth(threads, mib << 20, 3)?;
        return Ok(serde_json::json!({
            "threads": b.threads, "read": b.read, "write": b.write, "scale": b.scale,
        })
        .to_string());
    }
    let name = req
        .get("case")
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("serve: request 'case': expected a case name, got {line}"))?;
    let threads = count("threads", None, MAX_THREADS)?;
    let reps = count("reps", Some(15), usize::MAX)?;
    let warmup_ms = match req.get("warmup_ms") {
        None => Warmup::default().ms,
        Some(v) => v.as_f64().filter(|m| *m >= 0.0).ok_or_else(|| {
            format!("serve: request 'warmup_ms': expected a number >= 0, got {v}")
        })?,
    };
    let prep = match kept {
        Some((k, prep)) if k == name => prep,
        _ => {
            *kept = None; // the previous case's tensors go before the next one's are allocated
            let case = served
                .cases
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| c)
                .ok_or_else(|| format!("serve: request 'case': no case named '{name}'"))?;
            let prep = Prepared::with_offset(case, served.suite, served.offset_bytes)?;
            &mut kept.insert((name.to_string(), prep)).1
        }
    };
    let warm = Warmup {
        runs: served.warmup_runs,
        ms: warmup_ms,
    };
    Ok(measure(prep, threads, reps, warm)?.to_json())
}

/// The largest buffer [`bandwidth`] is asked for by `normkit bandwidth --size-mib` and
/// [`serve`], in MiB (two buffers of this size).
pub const MAX_SIZE_MIB: usize = 1 << 16;

/// Memory bandwidth of this machine for a given thread count (GB/s = 1e9 bytes/s).
#[derive(Clone, Copy, Debug)]
pub struct Bandwidth {
    pub threads: usize,
    /// Σ over a buffer (read stream).
    pub read: f64,
    /// Filling a buffer with a value (write stream, ordinary stores).
    pub write: f64,
    /// `b = s·a` (STREAM "scale"): one read and one write stream, bytes of both counted. A
    /// forward normalisation has this access pattern, so it is the reference limit.
    pub scale: f64,
}

#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn read_sum(a: &[f64]) -> f64 {
    let mut acc = [0.0f64; 16];
    let chunks = a.chunks_exact(16);
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum()
}

#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn write_fill(b: &mut [f64], v: f64) {
    for (i, o) in b.iter_mut().enumerate() {
        // depends on the index so the compiler cannot turn it into memset (which may use
        // non-temporal stores that a kernel's output would not use)
        *o = v + (i & 1) as f64;
    }
}

#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn scale(a: &[f64], b: &mut [f64], s: f64) {
    for (o, &v) in b.iter_mut().zip(a) {
        *o = v * s;
    }
}

/// Measures read, write and scale bandwidth over two buffers of `bytes` each (best of `reps`).
/// An error naming the size when the two buffers cannot be allocated (rather than aborting the
/// process, as a plain `vec!` of a size the machine cannot hold would).
pub fn bandwidth(threads: usize, bytes: usize, reps: usize) -> Result<Bandwidth, String> {
    let n = (bytes / 8).max(1 << 16);
    let piece = 1 << 16;
    let buffer = |v: f64| -> Result<Vec<f64>, String> {
        let mut b = Vec::new();
        b.try_reserve_exact(n).map_err(|e| {
            format!(
                "bandwidth: a buffer of {} bytes: expected to allocate it, got: {e}",
                n * 8
            )
        })?;
        b.resize(n, v);
        Ok(b)
    };
    let (mut a, mut b) = (buffer(1.0)?, buffer(0.0)?);
    let best = |f: &mut dyn FnMut()| {
        (0..reps.max(1))
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    Ok(threads::install(Some(threads), || {
        let mut sink = 0.0;
        let t_read =
            best(&mut || sink += a.par_chunks(piece).on_threads().map(read_sum).sum::<f64>());
        std::hint::black_box(sink);
        let t_write = best(&mut || {
            b.par_chunks_mut(piece)
                .on_threads()
                .for_each(|c| write_fill(c, 2.0))
        });
        let t_scale = best(&mut || {
            b.par_chunks_mut(piece)
                .on_threads()
                .zip(a.par_chunks(piece).on_threads())
                .for_each(|(o, i)| scale(i, o, 3.0))
        });
        a[0] = std::hint::black_box(b[n - 1]);
        let gb = (n * 8) as f64 / 1e9;
        Bandwidth {
            threads,
            read: gb / t_read,
            write: gb / t_write,
            scale: 2.0 * gb / t_scale,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_suite_parses_and_expands() {
        let s = Suite::standard().unwrap();
        assert_eq!(s.eps, 1e-5);
        assert_eq!(s.lrn.size, 5);
        assert_eq!(s.threads, vec![1, 2]);
        assert_eq!(s.dtypes, vec![DType::F32, DType::BF16]);
        let cases = s.cases(&[DType::F32]);
        // 6 + 2 + 2 + 1 + 4 + 2 + 2 + 2 + 1 layout×mode combinations
        assert_eq!(cases.len(), 22);
        assert_eq!(
            cases[0].name(),
            "BatchNorm2d/32x64x56x56/NCHW/train/float32"
        );
        assert_eq!(cases.iter().filter(|c| c.is_backward()).count(), 7);
    }

    /// The tensors start `offset` bytes past a 64-byte boundary (0 by default), the cases run
    /// and pass their check there, and offsets that are not whole elements below a line are
    /// refused with the bench's error.
    #[test]
    fn tensors_start_at_the_requested_offset_from_a_line() {
        let s = Suite::standard().unwrap();
        for dtype in [DType::F32, DType::BF16] {
            for case in s.cases(&[dtype]).iter().filter(|c| c.layer == "GroupNorm") {
                let case = case.shrunk(4096);
                for off in [0, 2 * dtype.size_in_bytes(), 48] {
                    let mut p = Prepared::with_offset(&case, &s, off).unwrap();
                    assert_eq!(p.x.as_data().addr() % 64, off, "{} x", case.name());
                    assert_eq!(p.y.as_data().addr() % 64, off, "{} y", case.name());
                    if let Some(dy) = &p.dy {
                        assert_eq!(dy.as_data().addr() % 64, off, "{} dy", case.name());
                    }
                    assert_eq!(p.x.len(), case.numel());
                    p.run().unwrap();
                    p.check(64).unwrap();
                }
                for bad in [1, 64, 100] {
                    let e = Prepared::with_offset(&case, &s, bad).err().unwrap();
                    assert!(
                        e.contains("offset-bytes") && e.contains(&format!("got {bad}")),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn byte_model_counts_input_output_and_parameters() {
        let s = Suite::standard().unwrap();
        let c = &s.cases(&[DType::BF16])[0];
        let numel = 32 * 64 * 56 * 56;
        assert_eq!(c.bytes(), (2 * numel * 2 + 6 * 64 * 2) as u64);
    }

    /// Small versions of every case (forward and backward) pass the reference check, and a
    /// corrupted output (or parameter gradient) fails it.
    #[test]
    fn reference_check_accepts_kernels_and_rejects_corruption() {
        let s = Suite::standard().unwrap();
        for mut case in s.cases(&[DType::F32, DType::BF16]) {
            case.shape[0] = 2;
            let mut p = Prepared::new(&case, &s).unwrap();
            p.run().unwrap();
            p.check(64).unwrap();
            let last = p.y.len() - 1;
            p.y.as_data_mut().set_f64(last, 1e3);
            assert!(p.check(64).is_err(), "{}", case.name());
            if case.is_backward() {
                p.run().unwrap();
                p.check(64).unwrap();
                fn grad(p: &mut Prepared, k: usize) -> &mut Buffer {
                    let g = if k == 0 {
                        &mut p.grad_weight
                    } else {
                        &mut p.grad_bias
                    };
                    g.as_mut().unwrap()
                }
                for k in 0..2 {
                    let v = grad(&mut p, k).as_data().get_f64(0);
                    grad(&mut p, k).as_data_mut().set_f64(0, 2.0 * v + 1.0);
                    assert!(p.check(64).is_err(), "{} grad {k}", case.name());
                    grad(&mut p, k).as_data_mut().set_f64(0, v);
                }
            }
        }
    }

    /// `measure` warms up for at least `Warmup::ms` (and still checks the output and times
    /// `reps` runs); `ms = 0` leaves only the run count.
    #[test]
    fn measure_warms_up_for_the_requested_time() {
        let s = Suite::standard().unwrap();
        let case = s.cases(&[DType::F32])[0].shrunk(1 << 12);
        let mut p = Prepared::new(&case, &s).unwrap();
        let t = std::time::Instant::now();
        let warm = Warmup { runs: 1, ms: 60.0 };
        let m = measure(&mut p, 1, 2, warm).unwrap();
        assert!(t.elapsed().as_secs_f64() * 1e3 >= 60.0);
        assert_eq!(m.reps, 2);
        assert!(m.median_ms > 0.0 && m.min_ms <= m.median_ms);
        let m = measure(&mut p, 1, 1, Warmup { runs: 1, ms: 0.0 }).unwrap();
        assert_eq!(m.reps, 1);
    }

    /// `serve` answers every request line: timings under the full-size name of a shrunk case,
    /// bandwidth, and an error naming the problem for each bad request, after which it goes on.
    #[test]
    fn serve_answers_each_request_and_survives_bad_ones() {
        let s = Suite::standard().unwrap();
        let full = standard_f32("GroupNorm");
        let served = Served {
            suite: &s,
            cases: vec![(full.name(), full.shrunk(1 << 12))],
            offset_bytes: 0,
            warmup_runs: 1,
        };
        let case = |threads: &str, reps: &str| {
            format!(
                r#"{{"case": "{}", "threads": {threads}, "reps": {reps}, "warmup_ms": 0}}"#,
                full.name()
            )
        };
        let input = [
            case("1", "3"),
            "not json".to_string(),
            r#"{"case": "GroupNorm/1x1/NCHW/fwd/float32", "threads": 1}"#.to_string(),
            case("0", "3"),
            case("2", "-1"),
            case("100000", "1"),
            String::new(),
            r#"{"bandwidth": 1, "size_mib": 1}"#.to_string(),
            case("2", "2"),
        ]
        .join("\n");
        let mut out = Vec::new();
        serve(&served, input.as_bytes(), &mut out).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 8, "one answer per non-empty line: {lines:?}");
        let timed = |v: &serde_json::Value, threads: u64, reps: u64| {
            assert_eq!(v["layer"], "GroupNorm", "{v}");
            assert_eq!(v["threads"], threads, "{v}");
            assert_eq!(v["reps"], reps, "{v}");
            let shape: Vec<usize> = serde_json::from_value(v["shape"].clone()).unwrap();
            assert_eq!(
                shape,
                full.shrunk(1 << 12).shape,
                "the shrunk case is timed"
            );
            assert!(v["median_ms"].as_f64().unwrap() > 0.0, "{v}");
        };
        timed(&lines[0], 1, 3);
        let error = |v: &serde_json::Value, words: &[&str]| {
            let e = v["error"]
                .as_str()
                .unwrap_or_else(|| panic!("no error: {v}"));
            for w in words {
                assert!(e.contains(w), "'{e}' lacks '{w}'");
            }
        };
        error(&lines[1], &["expected a JSON object", "not json"]);
        error(
            &lines[2],
            &["no case named", "GroupNorm/1x1/NCHW/fwd/float32"],
        );
        error(&lines[3], &["'threads'", "from 1 to 1024", "got 0"]);
        error(&lines[4], &["'reps'", "got -1"]);
        error(&lines[5], &["'threads'", "from 1 to 1024", "got 100000"]);
        assert_eq!(lines[6]["threads"], 1);
        for k in ["read", "write", "scale"] {
            assert!(lines[6][k].as_f64().unwrap() > 0.0, "{}", lines[6]);
        }
        timed(&lines[7], 2, 2);
    }

    /// A size that cannot be allocated is an error naming it, not an abort.
    #[test]
    fn bandwidth_of_an_impossible_size_is_an_error() {
        let e = bandwidth(1, usize::MAX / 2, 1).unwrap_err();
        assert!(
            e.contains("bandwidth: a buffer of") && e.contains("allocate"),
            "{e}"
        );
        let b = bandwidth(1, 1 << 20, 1).unwrap();
        assert!(b.read > 0.0 && b.write > 0.0 && b.scale > 0.0, "{b:?}");
    }

    /// The first standard f32 case whose name starts with `prefix`.
    fn standard_f32(prefix: &str) -> Case {
        let cases = Suite::standard().unwrap().cases(&[DType::F32]);
        cases
            .into_iter()
            .find(|c| c.name().starts_with(prefix))
            .unwrap()
    }

    #[test]
    fn grown_cases_grow_their_batch_only() {
        let find = standard_f32;
        // 8192 rows of 768: at least 2^28 elements takes 349526 rows (2^28 / 768 rounded up)
        let ln = find("LayerNorm/8192x768").grown(1 << 28);
        assert_eq!(ln.shape, vec![349_526, 768]);
        assert!(ln.numel() >= 1 << 28 && ln.numel() - 768 < 1 << 28);
        // channels and spatial dims stay; the batch grows
        let bn = find("BatchNorm2d/").grown(1 << 26);
        assert_eq!(bn.shape, vec![335, 64, 56, 56]);
        // a case already past the minimum is unchanged
        let gn = find("GroupNorm/");
        assert_eq!(gn.grown(1000).shape, gn.shape);
    }

    #[test]
    fn shrunk_cases_keep_channels_and_normalized_dims() {
        let find = standard_f32;
        let bn = find("BatchNorm2d/").shrunk(1 << 14);
        assert_eq!(bn.shape, vec![1, 64, 14, 14]);
        let ln = find("LayerNorm/4096x4096").shrunk(1 << 14);
        assert_eq!(ln.shape, vec![4, 4096]);
        // a cap below one LayerNorm row keeps the row
        assert_eq!(find("LayerNorm/8192x768").shrunk(100).shape, vec![1, 768]);
        let bn1 = find("BatchNorm1d/").shrunk(5000);
        assert_eq!(bn1.shape, vec![4, 1024]);
        let gn = find("GroupNorm/").shrunk(1);
        assert_eq!(gn.shape, vec![1, 256, 2, 2]);
        // big enough: unchanged
        assert_eq!(
            find("LocalResponseNorm/").shrunk(usize::MAX),
            find("LocalResponseNorm/")
        );
    }

    #[test]
    fn median_of_even_and_odd_lists() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
