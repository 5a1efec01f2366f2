//! LocalResponseNorm.

use super::{Module, SavedForward, State, check_saved, no_such_state};
use crate::error::Result;
use crate::ops::{LrnArgs, local_response_norm, local_response_norm_backward};
use crate::tensor::{Tensor, TensorMut};

/// A local-response-normalisation module (no parameters, no buffers, no validation at
/// construction: a size of 0 fails at forward time, as in PyTorch).
#[derive(Clone, Debug)]
pub struct LocalResponseNorm {
    pub args: LrnArgs,
    training: bool,
    saved: Option<SavedForward>,
}

impl LocalResponseNorm {
    /// `size` channels, alpha 1e-4, beta 0.75, k 1.
    pub fn new(size: usize) -> Self {
        LocalResponseNorm {
            args: LrnArgs::new(size),
            training: true,
            saved: None,
        }
    }
    pub fn with_args(args: LrnArgs) -> Self {
        LocalResponseNorm {
            args,
            training: true,
            saved: None,
        }
    }
}

impl Module for LocalResponseNorm {
    fn name(&self) -> &'static str {
        "LocalResponseNorm"
    }
    fn forward(&mut self, x: &Tensor, y: &mut TensorMut) -> Result<()> {
        self.saved = None;
        local_response_norm(x, y, self.args).map_err(|e| e.in_op("LocalResponseNorm"))?;
        self.saved = Some(SavedForward {
            shape: x.shape().to_vec(),
            dtype: x.dtype(),
            stats: None,
            sync_count: None,
        });
        Ok(())
    }

    fn backward(
        &mut self,
        x: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut TensorMut>,
    ) -> Result<()> {
        check_saved("LocalResponseNorm", self.saved.as_ref(), x)?;
        match grad_input {
            Some(gi) => local_response_norm_backward(grad_output, x, gi, self.args)
                .map_err(|e| e.in_op("LocalResponseNorm")),
            None => Ok(()),
        }
    }
    fn train(&mut self) {
        self.training = true;
    }
    fn eval(&mut self) {
        self.training = false;
    }
    fn is_training(&self) -> bool {
        self.training
    }
    fn state_names(&self) -> Vec<&'static str> {
        Vec::new()
    }
    fn state(&self, name: &str) -> Result<State> {
        Err(no_such_state(self.name(), name))
    }
    fn load_state(&mut self, name: &str, _value: &State) -> Result<()> {
        Err(no_such_state(self.name(), name))
    }
    fn reset_parameters(&mut self) {}
}
