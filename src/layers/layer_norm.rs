//! LayerNorm.

use super::{Module, NormState, delegate_mode_and_state};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::{LayerNormArgs, layer_norm};
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
        layer_norm(x, y, args)
            .map(|_| ())
            .map_err(|e| e.in_op("LayerNorm"))
    }
    delegate_mode_and_state!();
}
