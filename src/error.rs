//! The one error type of normkit.
//!
//! Every error names the op (`batch_norm`, `BatchNorm2d.forward`, ...), the operand (`input`,
//! `weight`, `num_groups`, ...), what was expected and what was got, so that a user can act on
//! the message without reading normkit's source. The [`ErrorKind`] says which class of problem
//! it is; the C ABI maps each kind to one stable status code.

use std::fmt;

/// The class of an error. Stable: the C ABI maps each kind to a status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An argument's value is out of its domain (eps ≤ 0 in training, LRN size 0, ...).
    InvalidArgument,
    /// A tensor's shape (or rank) disagrees with what the op or module needs.
    ShapeMismatch,
    /// A dtype or a dtype combination the op does not support.
    UnsupportedDType,
    /// Strides or memory layout the op cannot handle (negative strides, overlapping output).
    UnsupportedLayout,
    /// A buffer is smaller than the tensor that views it.
    BufferTooSmall,
    /// A lazy module's state was read or used before its first input.
    Uninitialized,
    /// The requested device (CUDA) is not available here.
    DeviceUnavailable,
    /// A tensor lives on a different device than the op runs on.
    DeviceMismatch,
    /// A shape whose element count or index overflows the supported range.
    Overflow,
    /// Something failed inside a backend (driver, compiler).
    Backend,
    /// A collective of a SyncBatchNorm communicator failed (or ranks disagreed on sizes).
    Communication,
}

/// A normkit error: op, operand, expectation and what was got.
#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    pub kind: ErrorKind,
    pub op: String,
    pub operand: String,
    pub expected: String,
    pub got: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(
        kind: ErrorKind,
        op: impl Into<String>,
        operand: impl Into<String>,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Error {
        Error {
            kind,
            op: op.into(),
            operand: operand.into(),
            expected: expected.into(),
            got: got.into(),
        }
    }

    pub fn invalid(
        op: &str,
        operand: &str,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Error {
        Error::new(ErrorKind::InvalidArgument, op, operand, expected, got)
    }

    pub fn shape(
        op: &str,
        operand: &str,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Error {
        Error::new(ErrorKind::ShapeMismatch, op, operand, expected, got)
    }

    pub fn dtype(
        op: &str,
        operand: &str,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Error {
        Error::new(ErrorKind::UnsupportedDType, op, operand, expected, got)
    }

    pub fn layout(
        op: &str,
        operand: &str,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Error {
        Error::new(ErrorKind::UnsupportedLayout, op, operand, expected, got)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Re-labels the op, e.g. when a module forwards to a functional op.
    pub fn in_op(mut self, op: &str) -> Error {
        self.op = op.to_string();
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: expected {}, got {}",
            self.op, self.operand, self.expected, self.got
        )
    }
}

impl std::error::Error for Error {}

/// Formats a shape as `[2, 3, 4]`.
pub fn fmt_shape(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_op_operand_expected_and_got() {
        let e = Error::shape("layer_norm", "weight", "shape [4]", "shape [3]");
        assert_eq!(
            e.to_string(),
            "layer_norm: weight: expected shape [4], got shape [3]"
        );
        assert_eq!(e.kind(), ErrorKind::ShapeMismatch);
        assert_eq!(e.in_op("LayerNorm.forward").op, "LayerNorm.forward");
    }
}
