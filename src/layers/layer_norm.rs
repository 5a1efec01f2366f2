//! LayerNorm.

use super::{Module, NormState, delegate_mode_and_state};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{LayerNormArgs, LayerNormBackwardArgs, layer_norm, layer_norm_backward};
use crate::tensor::{Tensor, TensorMut};

/// Constructor arguments ([`LayerNormConfig::new`] gives PyTorch's defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormConfig {
    /// The trailing dims normalised over.
    pub normalized_shape: Vec<usize>,
    /// Default 1e-5.
    pub eps: f64,
    /// Default true: elementwise weight (ones) and bias (zeros) of shape `normalized_shape`.
    pub elementwise_affine: bool,
    /// Default true; `false` drops the bias only.
    pub bias: bool,
    /// Parameter dtype (default f32).
    pub dtype: DType,
}

impl LayerNormConfig {
    pub fn new(normalized_shape: &[usize]) -> Self {
        LayerNormConfig {
            normalized_shape: normalized_shape.to_vec(),
            eps: 1e-5,
            elementwise_affine: true,
            bias: true,
            dtype: DType::F32,
        }
    }
}

/// A layer-normalisation module.
///
/// ```
/// use normkit::layers::{LayerNorm, LayerNormConfig, Module};
/// use normkit::{Tensor, TensorMut};
/// let mut ln = LayerNorm::new(LayerNormConfig::new(&[4]));
/// let x = vec![1.0f32, 2.0, 4.0, 8.0];
/// let mut y = vec![0.0f32; 4];
/// ln.forward(&Tensor::new(&x, &[1, 4])?, &mut TensorMut::new(&mut y, &[1, 4])?)?;
/// assert!((y[3] - 1.5852571).abs() < 1e-5);
/// # Ok::<(), normkit::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub config: LayerNormConfig,
    state: NormState,
    training: bool,
}

impl LayerNorm {
    pub fn new(config: LayerNormConfig) -> Self {
        let n = config.normalized_shape.iter().product();
        let state = NormState::new(
            n,
            config.elementwise_affine,
            config.bias,
            false,
            config.dtype,
            false,
        );
        LayerNorm {
            config,
            state,
            training: true,
        }
    }
}

impl Module for LayerNorm {
    fn name(&self) -> &'static str {
        "LayerNorm"
    }
    fn forward(&mut self, x: &Tensor, y: &mut TensorMut) -> Result<()> {
        self.state.saved = None;
        let ns = &self.config.normalized_shape;
        let args = LayerNormArgs {
            normalized_shape: ns.clone(),
            weight: self
                .state
                .weight
                .view()
                .map(|t| t.reshape(ns))
                .transpose()?,
            bias: self.state.bias.view().map(|t| t.reshape(ns)).transpose()?,
            eps: self.config.eps,
        };
        let stats = layer_norm(x, y, args).map_err(|e| e.in_op("LayerNorm"))?;
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
        let saved = self.state.saved_for("LayerNorm", x)?;
        let Some(stats) = saved.stats else {
            return Err(Error::invalid(
                "LayerNorm",
                "backward",
                "saved statistics",
                "none",
            ));
        };
        let ns = self.config.normalized_shape.clone();
        let pg = self.state.param_grads(grad_input);
        let args = LayerNormBackwardArgs {
            normalized_shape: ns.clone(),
            weight: pg.weight.map(|t| t.reshape(&ns)).transpose()?,
            mean: stats.mean.view(),
            invstd: stats.invstd.view(),
            grads: pg.grads,
        };
        layer_norm_backward(grad_output, x, args).map_err(|e| e.in_op("LayerNorm"))
    }
}
