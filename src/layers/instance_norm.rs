//! InstanceNorm1d/2d/3d and their Lazy variants.

use super::{Module, NormState, check_rank, delegate_mode_and_state, forward_stats};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{InstanceNormArgs, NormBackwardArgs, instance_norm, instance_norm_backward};
use crate::tensor::{Tensor, TensorMut};

/// Which torch.nn class an [`InstanceNorm`] behaves as (batched and unbatched ranks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceNormKind {
    /// `(N, C, L)`, or unbatched `(C, L)` (a 2-D input is always unbatched).
    InstanceNorm1d,
    /// `(N, C, H, W)` or `(C, H, W)`.
    InstanceNorm2d,
    /// `(N, C, D, H, W)` or `(C, D, H, W)`.
    InstanceNorm3d,
}

impl InstanceNormKind {
    /// Rank of an unbatched input.
    fn unbatched_rank(self) -> usize {
        match self {
            InstanceNormKind::InstanceNorm1d => 2,
            InstanceNormKind::InstanceNorm2d => 3,
            InstanceNormKind::InstanceNorm3d => 4,
        }
    }
}

/// Constructor arguments ([`InstanceNormConfig::new`] gives InstanceNorm's defaults,
/// [`InstanceNormConfig::lazy`] the Lazy variants' defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceNormConfig {
    pub num_features: usize,
    /// Default 1e-5 (not validated).
    pub eps: f64,
    /// Default `Some(0.1)`; `None` means the running statistics are never updated.
    pub momentum: Option<f64>,
    /// Default false (true for the Lazy variants).
    pub affine: bool,
    /// Default false (true for the Lazy variants).
    pub track_running_stats: bool,
    /// Default true.
    pub bias: bool,
    /// Parameter and running-statistic dtype (default f32).
    pub dtype: DType,
}

impl InstanceNormConfig {
    pub fn new(num_features: usize) -> Self {
        InstanceNormConfig {
            num_features,
            eps: 1e-5,
            momentum: Some(0.1),
            affine: false,
            track_running_stats: false,
            bias: true,
            dtype: DType::F32,
        }
    }
    /// The Lazy variants' defaults: affine and tracking on (PyTorch's surprise, spec §1.1).
    pub fn lazy() -> Self {
        InstanceNormConfig {
            affine: true,
            track_running_stats: true,
            ..Self::new(0)
        }
    }
}

/// An instance-normalisation module.
#[derive(Clone, Debug)]
pub struct InstanceNorm {
    kind: InstanceNormKind,
    lazy: bool,
    /// The constructor arguments; `track_running_stats` may be changed afterwards (PyTorch's
    /// attribute semantics).
    pub config: InstanceNormConfig,
    state: NormState,
    training: bool,
}

impl InstanceNorm {
    pub fn new(kind: InstanceNormKind, config: InstanceNormConfig) -> Self {
        Self::build(kind, config, false)
    }

    /// A Lazy module; pass [`InstanceNormConfig::lazy`] for PyTorch's Lazy defaults.
    pub fn lazy(kind: InstanceNormKind, mut config: InstanceNormConfig) -> Self {
        config.num_features = 0;
        Self::build(kind, config, true)
    }

    fn build(kind: InstanceNormKind, config: InstanceNormConfig, lazy: bool) -> Self {
        let c = &config;
        let state = NormState::new(
            c.num_features,
            c.affine,
            c.bias,
            c.track_running_stats,
            c.dtype,
            lazy,
        );
        InstanceNorm {
            kind,
            lazy,
            state,
            training: true,
            config,
        }
    }

    pub fn kind(&self) -> InstanceNormKind {
        self.kind
    }
}

/// What an InstanceNorm forward does (see [`InstanceNorm::plan_forward`]).
pub(crate) struct InstanceNormPlan {
    /// The input has no batch dim (it is normalised as a batch of one).
    pub unbatched: bool,
    pub use_input_stats: bool,
    pub momentum: f64,
}

impl InstanceNorm {
    /// PyTorch's module-level rules for a forward of an input of `shape` (lazy
    /// materialisation, accepted ranks, the num_features check with affine, which statistics
    /// normalise). Clears the previous forward's record.
    pub(crate) fn plan_forward(&mut self, shape: &[usize]) -> Result<InstanceNormPlan> {
        self.state.saved = None;
        // PyTorch infers num_features from dim 1 even for unbatched input (spec §5.2).
        if let Some(c) = self
            .state
            .materialize(self.name(), shape, self.config.dtype)?
        {
            self.config.num_features = c;
        }
        let name = self.name();
        let ub = self.kind.unbatched_rank();
        check_rank(
            name,
            shape.len(),
            &[ub, ub + 1],
            &format!("{ub}D or {}D input", ub + 1),
        )?;
        let unbatched = shape.len() == ub;
        let feature_dim = if unbatched { 0 } else { 1 };
        let c = shape[feature_dim];
        if c != self.config.num_features && self.config.affine {
            return Err(Error::shape(
                name,
                "input",
                format!(
                    "size {} at dim {feature_dim} (num_features)",
                    self.config.num_features
                ),
                format!("size {c}"),
            ));
        }
        Ok(InstanceNormPlan {
            unbatched,
            use_input_stats: self.training || !self.config.track_running_stats,
            momentum: self.config.momentum.unwrap_or(0.0),
        })
    }

    /// Whether an input of this rank has no batch dim.
    pub(crate) fn is_unbatched(&self, rank: usize) -> bool {
        rank == self.kind.unbatched_rank()
    }
}

impl Module for InstanceNorm {
    fn name(&self) -> &'static str {
        match (self.kind, self.lazy && !self.is_initialized()) {
            (InstanceNormKind::InstanceNorm1d, false) => "InstanceNorm1d",
            (InstanceNormKind::InstanceNorm2d, false) => "InstanceNorm2d",
            (InstanceNormKind::InstanceNorm3d, false) => "InstanceNorm3d",
            (InstanceNormKind::InstanceNorm1d, true) => "LazyInstanceNorm1d",
            (InstanceNormKind::InstanceNorm2d, true) => "LazyInstanceNorm2d",
            (InstanceNormKind::InstanceNorm3d, true) => "LazyInstanceNorm3d",
        }
    }

    fn forward(&mut self, x: &Tensor, y: &mut TensorMut) -> Result<()> {
        let plan = self.plan_forward(x.shape())?;
        let name = self.name();
        let st = &mut self.state;
        let args = InstanceNormArgs {
            weight: st.weight.view(),
            bias: st.bias.view(),
            running_mean: st.running_mean.view_mut(),
            running_var: st.running_var.view_mut(),
            use_input_stats: plan.use_input_stats,
            momentum: plan.momentum,
            eps: self.config.eps,
        };
        let stats = if plan.unbatched {
            instance_norm(&x.unsqueeze0(), &mut y.unsqueeze0(), args)
        } else {
            instance_norm(x, y, args)
        }
        .map_err(|e| e.in_op(name))?;
        self.state
            .remember(x, plan.use_input_stats.then_some(stats));
        Ok(())
    }

    delegate_mode_and_state!();

    fn backward(
        &mut self,
        x: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut TensorMut>,
    ) -> Result<()> {
        let name = self.name();
        let saved = self.state.saved_for(name, x)?;
        let eps = self.config.eps;
        let running = (
            self.state.running_mean.buffer().cloned(),
            self.state.running_var.buffer().cloned(),
        );
        let unbatched = self.is_unbatched(x.rank());
        let mut gi = grad_input.map(|g| {
            if unbatched {
                g.unsqueeze0()
            } else {
                g.reborrow()
            }
        });
        let pg = self.state.param_grads(gi.as_mut());
        let stats = forward_stats(name, &saved, &running, eps)?;
        let args = NormBackwardArgs {
            weight: pg.weight,
            stats,
            grads: pg.grads,
        };
        if unbatched {
            instance_norm_backward(&grad_output.unsqueeze0(), &x.unsqueeze0(), args)
        } else {
            instance_norm_backward(grad_output, x, args)
        }
        .map_err(|e| e.in_op(name))
    }
}
