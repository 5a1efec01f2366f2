//! LocalResponseNorm.

use super::{Module, State, no_such_state};
use crate::error::Result;
use crate::ops::{LrnArgs, local_response_norm};
use crate::tensor::{Tensor, TensorMut};

/// A local-response-normalisation module (no parameters, no buffers, no validation at
/// construction: a size of 0 fails at forward time, as in PyTorch).
#[derive(Clone, Debug)]
pub struct LocalResponseNorm {
    pub args: LrnArgs,
    training: bool,
}

impl LocalResponseNorm {
    /// `size` channels, alpha 1e-4, beta 0.75, k 1.
    pub fn new(size: usize) -> Self {
        LocalResponseNorm {
            args: LrnArgs::new(size),
            training: true,
        }
    }
    pub fn with_args(args: LrnArgs) -> Self {
        LocalResponseNorm {
            args,
            training: true,
        }
    }
}

impl Module for LocalResponseNorm {
    fn name(&self) -> &'static str {
        "LocalResponseNorm"
    }
    fn forward(&mut self, x: &Tensor, y: &mut TensorMut) -> Result<()> {
        local_response_norm(x, y, self.args).map_err(|e| e.in_op("LocalResponseNorm"))
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
