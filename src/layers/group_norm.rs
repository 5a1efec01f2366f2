//! GroupNorm.

use super::{Module, NormState, delegate_mode_and_state};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{GroupNormArgs, GroupNormBackwardArgs, group_norm, group_norm_backward};
use crate::tensor::{Tensor, TensorMut};

/// Constructor arguments ([`GroupNormConfig::new`] gives PyTorch's defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupNormConfig {
    pub num_groups: usize,
    pub num_channels: usize,
    /// Default 1e-5.
    pub eps: f64,
    /// Default true: per-channel weight (ones) and bias (zeros).
    pub affine: bool,
    /// Default true.
    pub bias: bool,
    /// Parameter dtype (default f32).
    pub dtype: DType,
}

impl GroupNormConfig {
    pub fn new(num_groups: usize, num_channels: usize) -> Self {
        GroupNormConfig {
            num_groups,
            num_channels,
            eps: 1e-5,
            affine: true,
            bias: true,
            dtype: DType::F32,
        }
    }
}

/// A group-normalisation module (no running statistics, no train/eval difference).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    pub config: GroupNormConfig,
    state: NormState,
    training: bool,
}

impl GroupNorm {
    /// Fails when `num_groups` is 0 or does not divide `num_channels` (as PyTorch's constructor).
    pub fn new(config: GroupNormConfig) -> Result<Self> {
        let (g, c) = (config.num_groups, config.num_channels);
        if g == 0 || c % g != 0 {
            return Err(Error::invalid(
                "GroupNorm",
                "num_groups",
                format!("a positive divisor of num_channels ({c})"),
                format!("{g}"),
            ));
        }
        let state = NormState::new(c, config.affine, config.bias, false, config.dtype, false);
        Ok(GroupNorm {
            config,
            state,
            training: true,
        })
    }
}

impl Module for GroupNorm {
    fn name(&self) -> &'static str {
        "GroupNorm"
    }
    fn forward(&mut self, x: &Tensor, y: &mut TensorMut) -> Result<()> {
        self.state.saved = None;
        let args = GroupNormArgs {
            num_groups: self.config.num_groups,
            weight: self.state.weight.view(),
            bias: self.state.bias.view(),
            eps: self.config.eps,
        };
        let stats = group_norm(x, y, args).map_err(|e| e.in_op("GroupNorm"))?;
        self.state.remember(x, Some(stats));
        Ok(())
    }
    delegate_mode_and_state!();

    fn backward(
        &mut self,
        x: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut TensorMut>,
    ) -> Result<()> {
        let saved = self.state.saved_for("GroupNorm", x)?;
        let Some(stats) = saved.stats else {
            return Err(Error::invalid(
                "GroupNorm",
                "backward",
                "saved statistics",
                "none",
            ));
        };
        let num_groups = self.config.num_groups;
        let pg = self.state.param_grads(grad_input);
        let args = GroupNormBackwardArgs {
            num_groups,
            weight: pg.weight,
            mean: stats.mean.view(),
            invstd: stats.invstd.view(),
            grads: pg.grads,
        };
        group_norm_backward(grad_output, x, args).map_err(|e| e.in_op("GroupNorm"))
    }
}
