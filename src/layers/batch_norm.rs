//! BatchNorm1d/2d/3d, their Lazy variants and SyncBatchNorm.

use super::{Module, NormState, check_rank, delegate_mode_and_state, forward_stats};
use crate::comm::Communicator;
use crate::dtype::DType;
use crate::error::{Error, ErrorKind, Result};
use crate::ops::{
    BatchNormArgs, NormBackwardArgs, batch_norm, batch_norm_backward, sync_batch_norm,
    sync_batch_norm_backward,
};
use crate::tensor::{Tensor, TensorMut};
use std::sync::Arc;

/// Which torch.nn class a [`BatchNorm`] behaves as (it decides the accepted input ranks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchNormKind {
    /// `(N, C)` or `(N, C, L)`.
    BatchNorm1d,
    /// `(N, C, H, W)`.
    BatchNorm2d,
    /// `(N, C, D, H, W)`.
    BatchNorm3d,
    /// Any rank ≥ 2 with C > 0. In one process it is exactly BatchNorm.
    SyncBatchNorm,
}

/// Constructor arguments with PyTorch's defaults ([`BatchNormConfig::new`]).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormConfig {
    pub num_features: usize,
    /// Default 1e-5.
    pub eps: f64,
    /// Default `Some(0.1)`; `None` is a cumulative moving average.
    pub momentum: Option<f64>,
    /// Default true: learnable weight (ones) and bias (zeros).
    pub affine: bool,
    /// Default true: running_mean, running_var and num_batches_tracked exist.
    pub track_running_stats: bool,
    /// Default true; with `affine`, whether the bias exists.
    pub bias: bool,
    /// dtype of weight, bias and running statistics (default f32; f16/bf16 input may use f32
    /// parameters or parameters of its own dtype).
    pub dtype: DType,
}

impl BatchNormConfig {
    pub fn new(num_features: usize) -> Self {
        BatchNormConfig {
            num_features,
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
            bias: true,
            dtype: DType::F32,
        }
    }
}

/// A batch-normalisation module (see [`BatchNormKind`]).
///
/// ```
/// use normkit::layers::{BatchNorm, BatchNormConfig, BatchNormKind, Module, State};
/// use normkit::{Tensor, TensorMut};
/// let mut bn = BatchNorm::new(BatchNormKind::BatchNorm1d, BatchNormConfig::new(2));
/// let x = vec![1.0f32, 10.0, 2.0, 20.0, 4.0, 60.0];
/// let mut y = vec![0.0f32; 6];
/// bn.forward(&Tensor::new(&x, &[3, 2])?, &mut TensorMut::new(&mut y, &[3, 2])?)?;
/// assert_eq!(bn.state("num_batches_tracked")?, State::Counter(1));
/// bn.eval();
/// bn.forward(&Tensor::new(&x, &[3, 2])?, &mut TensorMut::new(&mut y, &[3, 2])?)?;
/// assert!((y[0] - 0.7201548).abs() < 1e-5);
/// # Ok::<(), normkit::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BatchNorm {
    kind: BatchNormKind,
    lazy: bool,
    /// The constructor arguments. `track_running_stats` may be changed after construction,
    /// with PyTorch's meaning: the buffers keep existing, but training stops updating them.
    pub config: BatchNormConfig,
    state: NormState,
    training: bool,
    /// SyncBatchNorm's process group (`None`: the module behaves as plain BatchNorm).
    process_group: Option<Arc<dyn Communicator>>,
}

impl BatchNorm {
    /// A module with `config.num_features` channels, in training mode.
    pub fn new(kind: BatchNormKind, config: BatchNormConfig) -> Self {
        Self::build(kind, config, false)
    }

    /// A Lazy module: `num_features` comes from dim 1 of the first input.
    pub fn lazy(kind: BatchNormKind, mut config: BatchNormConfig) -> Self {
        config.num_features = 0;
        Self::build(kind, config, true)
    }

    fn build(kind: BatchNormKind, config: BatchNormConfig, lazy: bool) -> Self {
        let c = &config;
        let state = NormState::new(
            c.num_features,
            c.affine,
            c.bias,
            c.track_running_stats,
            c.dtype,
            lazy,
        );
        BatchNorm {
            kind,
            lazy,
            state,
            training: true,
            config,
            process_group: None,
        }
    }

    pub fn kind(&self) -> BatchNormKind {
        self.kind
    }

    /// The same module as a SyncBatchNorm over `process_group` (the `convert_sync_batchnorm`
    /// of one module): the configuration, parameters, running statistics, counter and mode are
    /// kept (moved, not copied).
    pub fn into_sync(mut self, process_group: Option<Arc<dyn Communicator>>) -> BatchNorm {
        self.kind = BatchNormKind::SyncBatchNorm;
        self.process_group = process_group;
        self
    }

    /// Sets SyncBatchNorm's process group (`None`: no synchronisation).
    pub fn set_process_group(&mut self, process_group: Option<Arc<dyn Communicator>>) {
        self.process_group = process_group;
    }

    pub fn process_group(&self) -> Option<&Arc<dyn Communicator>> {
        self.process_group.as_ref()
    }
}

/// What a BatchNorm forward does, decided by the module (see [`BatchNorm::plan_forward`]).
pub(crate) struct BatchNormPlan {
    /// Normalise with batch statistics (training, or no running statistics).
    pub use_batch_stats: bool,
    /// Hand the running statistics to the op (read in eval, updated in training).
    pub pass_buffers: bool,
    /// The running-statistics factor (cumulative average already resolved).
    pub momentum: f64,
    /// SyncBatchNorm's group when the step is synchronised.
    pub group: Option<Arc<dyn Communicator>>,
    /// The counter before this step moved it (restored when the step fails collectively).
    pub counter_before: i64,
}

impl BatchNorm {
    /// PyTorch's module-level rules for a forward of an input of `shape`, wherever the
    /// tensors live: lazy materialisation, the rank check of the kind, the counter increment
    /// (before validation, as PyTorch) and the momentum, which statistics normalise and
    /// whether the step is synchronised. Clears the previous forward's record.
    pub(crate) fn plan_forward(&mut self, shape: &[usize]) -> Result<BatchNormPlan> {
        self.state.saved = None;
        if let Some(c) = self
            .state
            .materialize(self.name(), shape, self.config.dtype)?
        {
            self.config.num_features = c;
        }
        let name = self.name();
        let rank = shape.len();
        match self.kind {
            BatchNormKind::BatchNorm1d => check_rank(name, rank, &[2, 3], "2D or 3D input")?,
            BatchNormKind::BatchNorm2d => check_rank(name, rank, &[4], "4D input")?,
            BatchNormKind::BatchNorm3d => check_rank(name, rank, &[5], "5D input")?,
            BatchNormKind::SyncBatchNorm => {
                if rank < 2 {
                    return Err(Error::shape(
                        name,
                        "input",
                        "at least 2D input",
                        format!("{rank}D input"),
                    ));
                }
                if shape[1] == 0 {
                    return Err(Error::shape(
                        name,
                        "input",
                        "a non-zero number of channels",
                        "0 channels",
                    ));
                }
            }
        }
        let tracking = self.config.track_running_stats;
        let counter_before = self.state.num_batches_tracked.unwrap_or(0);
        let mut factor = self.config.momentum.unwrap_or(0.0);
        if self.training && tracking {
            if let Some(n) = self.state.num_batches_tracked.as_mut() {
                // PyTorch increments before validation: a call that then fails still counts.
                *n += 1;
                factor = self.config.momentum.unwrap_or(1.0 / *n as f64);
            }
        }
        let group = match (&self.process_group, self.kind) {
            (Some(pg), BatchNormKind::SyncBatchNorm) if self.training && pg.world_size() > 1 => {
                Some(pg.clone())
            }
            _ => None,
        };
        Ok(BatchNormPlan {
            use_batch_stats: self.training || !self.state.has_running_stats(),
            pass_buffers: !self.training || tracking,
            momentum: factor,
            group,
            counter_before,
        })
    }

    /// Puts the counter back (a step that failed on every rank).
    pub(crate) fn restore_counter(&mut self, before: i64) {
        if let Some(n) = self.state.num_batches_tracked.as_mut() {
            *n = before;
        }
    }
}

impl Module for BatchNorm {
    fn name(&self) -> &'static str {
        match (self.kind, self.lazy && !self.is_initialized()) {
            (BatchNormKind::BatchNorm1d, false) => "BatchNorm1d",
            (BatchNormKind::BatchNorm2d, false) => "BatchNorm2d",
            (BatchNormKind::BatchNorm3d, false) => "BatchNorm3d",
            (BatchNormKind::BatchNorm1d, true) => "LazyBatchNorm1d",
            (BatchNormKind::BatchNorm2d, true) => "LazyBatchNorm2d",
            (BatchNormKind::BatchNorm3d, true) => "LazyBatchNorm3d",
            (BatchNormKind::SyncBatchNorm, _) => "SyncBatchNorm",
        }
    }

    fn forward(&mut self, x: &Tensor, y: &mut TensorMut) -> Result<()> {
        let plan = self.plan_forward(x.shape())?;
        let name = self.name();
        let st = &mut self.state;
        let (running_mean, running_var) = if plan.pass_buffers {
            (st.running_mean.view_mut(), st.running_var.view_mut())
        } else {
            (None, None)
        };
        let args = BatchNormArgs {
            weight: st.weight.view(),
            bias: st.bias.view(),
            running_mean,
            running_var,
            num_batches_tracked: None,
            training: plan.use_batch_stats,
            momentum: Some(plan.momentum),
            eps: self.config.eps,
        };
        let Some(group) = plan.group else {
            let stats = batch_norm(x, y, args).map_err(|e| e.in_op(name))?;
            self.state
                .remember(x, plan.use_batch_stats.then_some(stats));
            return Ok(());
        };
        match sync_batch_norm(x, y, args, group.as_ref()) {
            Ok((stats, count)) => {
                self.state.remember(x, Some(stats));
                if let Some(saved) = self.state.saved.as_mut() {
                    saved.sync_count = Some(count);
                }
                Ok(())
            }
            Err(e) => {
                // A failed exchange leaves the state as it was (the counter included).
                if e.kind() == ErrorKind::Communication {
                    self.restore_counter(plan.counter_before);
                }
                Err(e.in_op(name))
            }
        }
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
        let pg = self.state.param_grads(grad_input);
        let stats = forward_stats(name, &saved, &running, eps)?;
        let args = NormBackwardArgs {
            weight: pg.weight,
            stats,
            grads: pg.grads,
        };
        match (saved.sync_count, &self.process_group) {
            (Some(count), Some(group)) => {
                sync_batch_norm_backward(grad_output, x, args, count, group.as_ref())
            }
            _ => batch_norm_backward(grad_output, x, args),
        }
        .map_err(|e| e.in_op(name))
    }
}

/// Converts every BatchNorm in `modules` into a SyncBatchNorm over `process_group`, keeping
/// its state (the `SyncBatchNorm.convert_sync_batchnorm` equivalent for a list of modules).
pub fn convert_sync_batchnorm(
    modules: Vec<BatchNorm>,
    process_group: Option<Arc<dyn Communicator>>,
) -> Vec<BatchNorm> {
    modules
        .into_iter()
        .map(|m| m.into_sync(process_group.clone()))
        .collect()
}
