//! Stateful modules mirroring `torch.nn`: configuration with PyTorch's defaults, parameters,
//! running statistics, train/eval mode, lazy initialisation and state by `state_dict` names.
//!
//! | torch.nn | normkit |
//! |---|---|
//! | `BatchNorm1d/2d/3d(C)`, `SyncBatchNorm(C)` | [`BatchNorm::new`] with a [`BatchNormKind`] |
//! | `LazyBatchNorm1d/2d/3d()` | [`BatchNorm::lazy`] |
//! | `InstanceNorm1d/2d/3d(C)` | [`InstanceNorm::new`] with an [`InstanceNormKind`] |
//! | `LazyInstanceNorm1d/2d/3d()` | [`InstanceNorm::lazy`] (affine and tracking on by default) |
//! | `GroupNorm(G, C)` | [`GroupNorm::new`] |
//! | `LayerNorm(shape)` | [`LayerNorm::new`] |
//! | `LocalResponseNorm(size)` | [`LocalResponseNorm::new`] |
//!
//! Every module implements [`Module`].

mod batch_norm;
mod device;
mod group_norm;
mod instance_norm;
mod layer_norm;
mod local_response_norm;

pub use batch_norm::{BatchNorm, BatchNormConfig, BatchNormKind, convert_sync_batchnorm};
pub use device::{AnyModule, CudaModule};
pub use group_norm::{GroupNorm, GroupNormConfig};
pub use instance_norm::{InstanceNorm, InstanceNormConfig, InstanceNormKind};
pub use layer_norm::{LayerNorm, LayerNormConfig};
pub use local_response_norm::LocalResponseNorm;

use crate::dtype::DType;
use crate::error::{Error, ErrorKind, Result};
use crate::ops::{ForwardStats, Gradients, SavedStats};
use crate::tensor::{Buffer, Tensor, TensorMut};

/// One entry of a module's state, under its PyTorch `state_dict` name.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// weight, bias, running_mean, running_var.
    Tensor(Buffer),
    /// num_batches_tracked (an int64 scalar in PyTorch).
    Counter(i64),
}

/// The interface every normalization module implements.
pub trait Module {
    /// The torch.nn class name this module behaves as (e.g. `BatchNorm2d`).
    fn name(&self) -> &'static str;
    /// Normalises `x` into `y` (same shape and dtype), updating running statistics in training.
    fn forward(&mut self, x: &Tensor, y: &mut TensorMut) -> Result<()>;
    /// Switches to training mode.
    fn train(&mut self);
    /// Switches to evaluation mode.
    fn eval(&mut self);
    fn is_training(&self) -> bool;
    /// Whether every parameter and buffer exists (false for a lazy module before its first
    /// input).
    fn is_initialized(&self) -> bool {
        true
    }
    /// The state names this module has, in PyTorch's `state_dict` order.
    fn state_names(&self) -> Vec<&'static str>;
    /// The value of one state entry. Errors for unknown names and for uninitialised lazy state.
    fn state(&self, name: &str) -> Result<State>;
    /// Overwrites one state entry (values cast to the entry's dtype; lengths must agree, except
    /// for an uninitialised lazy entry, which takes the given length).
    fn load_state(&mut self, name: &str, value: &State) -> Result<()>;
    /// All state entries.
    fn state_dict(&self) -> Result<Vec<(&'static str, State)>> {
        self.state_names()
            .into_iter()
            .map(|n| Ok((n, self.state(n)?)))
            .collect()
    }
    /// Running mean ← 0, running var ← 1, counter ← 0 (modules with running statistics).
    fn reset_running_stats(&mut self) {}
    /// Running statistics reset, then weight ← 1 and bias ← 0.
    fn reset_parameters(&mut self);
    /// Backward of the last successful forward: `x` is that forward's input and `grad_output`
    /// dL/dy. Writes dL/dx into `grad_input` when given, and accumulates dL/dweight and
    /// dL/dbias into the module's gradients ([`Module::grad`]), as PyTorch's `.grad` does.
    /// Errors when there was no forward, or `x` differs in shape or dtype from its input.
    fn backward(
        &mut self,
        x: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut TensorMut>,
    ) -> Result<()>;
    /// The accumulated gradient of `weight` or `bias` (`None` before the first backward).
    fn grad(&self, name: &str) -> Result<Option<Buffer>> {
        Err(no_such_state(self.name(), name))
    }
    /// Clears the accumulated parameter gradients.
    fn zero_grad(&mut self) {}
}

/// The `Module` methods every module with a `training` flag and a `state: NormState` field
/// implements the same way.
macro_rules! delegate_mode_and_state {
    () => {
        fn train(&mut self) {
            self.training = true;
        }
        fn eval(&mut self) {
            self.training = false;
        }
        fn is_training(&self) -> bool {
            self.training
        }
        fn is_initialized(&self) -> bool {
            self.state.is_initialized()
        }
        fn state_names(&self) -> Vec<&'static str> {
            self.state.state_names()
        }
        fn state(&self, name: &str) -> $crate::error::Result<$crate::layers::State> {
            self.state.get(self.name(), name)
        }
        fn load_state(
            &mut self,
            name: &str,
            value: &$crate::layers::State,
        ) -> $crate::error::Result<()> {
            self.state.load(self.name(), name, self.config.dtype, value)
        }
        fn reset_running_stats(&mut self) {
            self.state.reset_running_stats();
        }
        fn reset_parameters(&mut self) {
            self.state.reset_parameters();
        }
        fn grad(&self, name: &str) -> $crate::error::Result<Option<$crate::tensor::Buffer>> {
            self.state.grad(self.name(), name)
        }
        fn zero_grad(&mut self) {
            self.state.grad_weight = None;
            self.state.grad_bias = None;
        }
    };
}
pub(crate) use delegate_mode_and_state;

/// A parameter or buffer slot of a module: absent (registered as None), lazy (not yet
/// materialised), or present.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Slot {
    Absent,
    Lazy,
    Present(Buffer),
}

impl Slot {
    pub(crate) fn new(present: bool, lazy: bool, dtype: DType, len: usize, value: f64) -> Slot {
        match (present, lazy) {
            (false, _) => Slot::Absent,
            (true, true) => Slot::Lazy,
            (true, false) => Slot::Present(Buffer::filled(dtype, len, value)),
        }
    }
    pub(crate) fn exists(&self) -> bool {
        !matches!(self, Slot::Absent)
    }
    pub(crate) fn buffer(&self) -> Option<&Buffer> {
        match self {
            Slot::Present(b) => Some(b),
            _ => None,
        }
    }
    pub(crate) fn view(&self) -> Option<Tensor<'_>> {
        self.buffer().map(|b| b.view())
    }
    pub(crate) fn view_mut(&mut self) -> Option<TensorMut<'_>> {
        match self {
            Slot::Present(b) => Some(b.view_mut()),
            _ => None,
        }
    }
    /// Materialises a lazy slot (or re-fills a present one) with `len` copies of `value`.
    pub(crate) fn fill(&mut self, dtype: DType, len: usize, value: f64) {
        if self.exists() {
            *self = Slot::Present(Buffer::filled(dtype, len, value));
        }
    }
    /// Sets every element of a present slot to `value`.
    pub(crate) fn reset(&mut self, value: f64) {
        if let Slot::Present(b) = self {
            *b = Buffer::filled(b.dtype(), b.len(), value);
        }
    }
    pub(crate) fn get(&self, module: &str, name: &str) -> Result<State> {
        match self {
            Slot::Present(b) => Ok(State::Tensor(b.clone())),
            Slot::Lazy => Err(Error::new(
                ErrorKind::Uninitialized,
                module,
                name,
                "an initialised lazy module (run a forward pass or load the state first)",
                "an uninitialised parameter",
            )),
            Slot::Absent => Err(no_such_state(module, name)),
        }
    }
    pub(crate) fn load(
        &mut self,
        module: &str,
        name: &str,
        dtype: DType,
        value: &State,
    ) -> Result<()> {
        let State::Tensor(b) = value else {
            return Err(Error::invalid(module, name, "a tensor value", "a counter"));
        };
        match self {
            Slot::Absent => Err(no_such_state(module, name)),
            Slot::Lazy => {
                *self = Slot::Present(b.cast(dtype));
                Ok(())
            }
            Slot::Present(cur) => {
                if cur.len() != b.len() {
                    return Err(Error::shape(
                        module,
                        name,
                        format!("{} elements", cur.len()),
                        format!("{} elements", b.len()),
                    ));
                }
                *cur = b.cast(cur.dtype());
                Ok(())
            }
        }
    }
}

pub(crate) fn no_such_state(module: &str, name: &str) -> Error {
    Error::invalid(
        module,
        "state name",
        "a state entry this module has",
        format!("\"{name}\""),
    )
}

/// The statistics a BatchNorm/InstanceNorm forward used: its saved batch statistics, or the
/// running statistics (frozen normalisation).
pub(crate) fn forward_stats<'a>(
    module: &str,
    saved: &'a SavedForward,
    running: &'a (Option<Buffer>, Option<Buffer>),
    eps: f64,
) -> Result<ForwardStats<'a>> {
    match (&saved.stats, running) {
        (Some(s), _) => Ok(ForwardStats::Saved {
            mean: s.mean.view(),
            invstd: s.invstd.view(),
        }),
        (None, (Some(m), Some(v))) => Ok(ForwardStats::Running {
            mean: m.view(),
            var: v.view(),
            eps,
        }),
        (None, _) => Err(Error::invalid(
            module,
            "backward",
            "the running statistics the forward used",
            "none",
        )),
    }
}

/// Checks a backward call against the record of the last forward.
pub(crate) fn check_saved<'a>(
    module: &str,
    saved: Option<&'a SavedForward>,
    x: &Tensor,
) -> Result<&'a SavedForward> {
    check_forward_record(
        module,
        saved.map(|s| (s.shape.as_slice(), s.dtype)),
        x.shape(),
        x.dtype(),
    )?;
    saved.ok_or_else(|| Error::invalid(module, "backward", "a forward record", "none"))
}

/// Checks a backward's input (`shape`, `dtype`) against the last forward's (`saved`, none
/// when there was no successful forward).
pub(crate) fn check_forward_record(
    module: &str,
    saved: Option<(&[usize], DType)>,
    shape: &[usize],
    dtype: DType,
) -> Result<()> {
    let Some((s_shape, s_dtype)) = saved else {
        return Err(Error::invalid(
            module,
            "backward",
            "a successful forward pass before backward",
            "none",
        ));
    };
    if s_shape != shape || s_dtype != dtype {
        return Err(Error::shape(
            module,
            "input",
            format!(
                "the last forward's input ({} {})",
                s_dtype,
                crate::error::fmt_shape(s_shape)
            ),
            format!("{} {}", dtype, crate::error::fmt_shape(shape)),
        ));
    }
    Ok(())
}

/// Checks that the input's rank is one of `ranks` and reports `expected` otherwise.
pub(crate) fn check_rank(module: &str, rank: usize, ranks: &[usize], expected: &str) -> Result<()> {
    if ranks.contains(&rank) {
        Ok(())
    } else {
        Err(Error::shape(
            module,
            "input",
            expected,
            format!("{rank}D input"),
        ))
    }
}

/// The parameters and buffers shared by BatchNorm and InstanceNorm (`_NormBase`): weight,
/// bias, running_mean, running_var and num_batches_tracked, each possibly absent or lazy.
#[derive(Clone, Debug)]
pub(crate) struct NormState {
    pub(crate) weight: Slot,
    pub(crate) bias: Slot,
    pub(crate) running_mean: Slot,
    pub(crate) running_var: Slot,
    pub(crate) num_batches_tracked: Option<i64>,
    /// What the last successful forward saved for the backward pass.
    pub(crate) saved: Option<SavedForward>,
    pub(crate) grad_weight: Option<Buffer>,
    pub(crate) grad_bias: Option<Buffer>,
}

/// What a module's forward pass saves for its backward pass.
#[derive(Clone, Debug)]
pub(crate) struct SavedForward {
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    /// Batch statistics (mean, inverse std), or `None` when the running statistics were used.
    pub(crate) stats: Option<SavedStats>,
    /// SyncBatchNorm: the global element count per channel of a synchronised forward.
    pub(crate) sync_count: Option<f64>,
}

/// The parameter-gradient outputs of a module's backward: views of the module's accumulated
/// gradients (created as zeros on first use).
pub(crate) struct ParamGrads<'a> {
    pub(crate) weight: Option<Tensor<'a>>,
    pub(crate) grads: Gradients<'a>,
}

const NORM_STATE_NAMES: [&str; 5] = [
    "weight",
    "bias",
    "running_mean",
    "running_var",
    "num_batches_tracked",
];

impl NormState {
    pub(crate) fn new(
        c: usize,
        affine: bool,
        bias: bool,
        track: bool,
        dtype: DType,
        lazy: bool,
    ) -> Self {
        NormState {
            weight: Slot::new(affine, lazy, dtype, c, 1.0),
            bias: Slot::new(affine && bias, lazy, dtype, c, 0.0),
            running_mean: Slot::new(track, lazy, dtype, c, 0.0),
            running_var: Slot::new(track, lazy, dtype, c, 1.0),
            num_batches_tracked: track.then_some(0),
            saved: None,
            grad_weight: None,
            grad_bias: None,
        }
    }

    /// Records what a successful forward saved (called with the forward's result).
    pub(crate) fn remember(&mut self, x: &Tensor, stats: Option<SavedStats>) {
        self.saved = Some(SavedForward {
            shape: x.shape().to_vec(),
            dtype: x.dtype(),
            stats,
            sync_count: None,
        });
    }

    /// The last forward's record, checked against the backward's input.
    pub(crate) fn saved_for(&self, module: &str, x: &Tensor) -> Result<SavedForward> {
        check_saved(module, self.saved.as_ref(), x).cloned()
    }

    /// The module's weight and its accumulated parameter gradients, ready for a backward op.
    pub(crate) fn param_grads<'a>(
        &'a mut self,
        grad_input: Option<&'a mut TensorMut>,
    ) -> ParamGrads<'a> {
        let (wlen, blen) = (
            self.weight.buffer().map(|b| (b.dtype(), b.len())),
            self.bias.buffer().map(|b| (b.dtype(), b.len())),
        );
        if let (None, Some((dt, n))) = (&self.grad_weight, wlen) {
            self.grad_weight = Some(Buffer::filled(dt, n, 0.0));
        }
        if let (None, Some((dt, n))) = (&self.grad_bias, blen) {
            self.grad_bias = Some(Buffer::filled(dt, n, 0.0));
        }
        ParamGrads {
            weight: self.weight.view(),
            grads: Gradients {
                grad_input: grad_input.map(|g| g.reborrow()),
                grad_weight: self.grad_weight.as_mut().map(|b| b.view_mut()),
                grad_bias: self.grad_bias.as_mut().map(|b| b.view_mut()),
                accumulate: true,
            },
        }
    }

    pub(crate) fn grad(&self, module: &str, name: &str) -> Result<Option<Buffer>> {
        match name {
            "weight" if self.weight.exists() => Ok(self.grad_weight.clone()),
            "bias" if self.bias.exists() => Ok(self.grad_bias.clone()),
            _ => Err(no_such_state(module, name)),
        }
    }

    fn slots(&self) -> [&Slot; 4] {
        [
            &self.weight,
            &self.bias,
            &self.running_mean,
            &self.running_var,
        ]
    }

    pub(crate) fn is_initialized(&self) -> bool {
        !self.slots().iter().any(|s| matches!(s, Slot::Lazy))
    }

    pub(crate) fn has_running_stats(&self) -> bool {
        self.running_mean.buffer().is_some() && self.running_var.buffer().is_some()
    }

    /// Materialises every lazy slot with dim 1 of `x` (PyTorch's pre-forward hook, which runs
    /// before any other check). Returns the inferred channel count, or `None` when nothing was
    /// lazy.
    pub(crate) fn materialize(
        &mut self,
        module: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Option<usize>> {
        if self.is_initialized() {
            return Ok(None);
        }
        if self.slots().iter().any(|s| matches!(s, Slot::Present(_))) {
            return Err(Error::new(
                ErrorKind::Uninitialized,
                module,
                "state",
                "every lazy parameter loaded, or none",
                "a partially loaded lazy module",
            ));
        }
        if shape.len() < 2 {
            return Err(Error::shape(
                module,
                "input",
                "at least 2 dims (num_features is inferred from dim 1)",
                format!("{}D input", shape.len()),
            ));
        }
        let c = shape[1];
        self.weight.fill(dtype, c, 1.0);
        self.bias.fill(dtype, c, 0.0);
        self.running_mean.fill(dtype, c, 0.0);
        self.running_var.fill(dtype, c, 1.0);
        Ok(Some(c))
    }

    pub(crate) fn state_names(&self) -> Vec<&'static str> {
        let s = self.slots();
        let exists = [
            s[0].exists(),
            s[1].exists(),
            s[2].exists(),
            s[3].exists(),
            self.num_batches_tracked.is_some(),
        ];
        NORM_STATE_NAMES
            .iter()
            .zip(exists)
            .filter(|(_, e)| *e)
            .map(|(n, _)| *n)
            .collect()
    }

    fn slot_mut(&mut self, name: &str) -> Option<&mut Slot> {
        match name {
            "weight" => Some(&mut self.weight),
            "bias" => Some(&mut self.bias),
            "running_mean" => Some(&mut self.running_mean),
            "running_var" => Some(&mut self.running_var),
            _ => None,
        }
    }

    pub(crate) fn get(&self, module: &str, name: &str) -> Result<State> {
        match name {
            "weight" => self.weight.get(module, name),
            "bias" => self.bias.get(module, name),
            "running_mean" => self.running_mean.get(module, name),
            "running_var" => self.running_var.get(module, name),
            "num_batches_tracked" => self
                .num_batches_tracked
                .map(State::Counter)
                .ok_or_else(|| no_such_state(module, name)),
            _ => Err(no_such_state(module, name)),
        }
    }

    pub(crate) fn load(
        &mut self,
        module: &str,
        name: &str,
        dtype: DType,
        value: &State,
    ) -> Result<()> {
        if name == "num_batches_tracked" {
            return match (self.num_batches_tracked.as_mut(), value) {
                (Some(n), State::Counter(v)) => {
                    *n = *v;
                    Ok(())
                }
                (Some(_), State::Tensor(_)) => {
                    Err(Error::invalid(module, name, "a counter value", "a tensor"))
                }
                (None, _) => Err(no_such_state(module, name)),
            };
        }
        match self.slot_mut(name) {
            Some(slot) => slot.load(module, name, dtype, value),
            None => Err(no_such_state(module, name)),
        }
    }

    pub(crate) fn reset_running_stats(&mut self) {
        self.running_mean.reset(0.0);
        self.running_var.reset(1.0);
        if let Some(n) = self.num_batches_tracked.as_mut() {
            *n = 0;
        }
    }

    pub(crate) fn reset_parameters(&mut self) {
        self.reset_running_stats();
        self.weight.reset(1.0);
        self.bias.reset(0.0);
    }
}
