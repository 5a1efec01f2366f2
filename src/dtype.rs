//! Element types: the four storage dtypes and the arithmetic types they compute in.
//!
//! | storage | reductions accumulate in | elementwise math and statistics |
//! |---|---|---|
//! | `f32` | `f64` (as PyTorch's CPU kernels do) | `f32` |
//! | `f64` | `f64` | `f64` |
//! | `f16` | `f32` | `f32` |
//! | `bf16` | `f32` | `f32` |

use half::{bf16, f16};
use std::fmt;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

/// The dtype of a tensor's elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The dtype that saved statistics (mean, inverse std) use for this input dtype:
    /// f64 for f64 input, f32 otherwise.
    pub fn stat_dtype(self) -> DType {
        match self {
            DType::F64 => DType::F64,
            _ => DType::F32,
        }
    }

    /// Whether the dtype is a 16-bit float (f16 or bf16).
    pub fn is_low_precision(self) -> bool {
        matches!(self, DType::F16 | DType::BF16)
    }

    /// Short lowercase name, as used in kernel names and benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Parses `f32`, `f64`, `f16`, `bf16` (and the long names `float32`, ...).
    pub fn parse(s: &str) -> Option<DType> {
        match s {
            "f32" | "float32" | "float" => Some(DType::F32),
            "f64" | "float64" | "double" => Some(DType::F64),
            "f16" | "float16" | "half" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            _ => None,
        }
    }

    pub const ALL: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A real arithmetic type the kernels compute in (`f32` or `f64`).
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + fmt::Debug
    + Default
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn from_usize(v: usize) -> Self;
    fn sqrt(self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn max(self, other: Self) -> Self;
    fn is_nan(self) -> bool;
    fn is_finite(self) -> bool;
    /// Wraps a vector of this type into an owned [`crate::Buffer`].
    fn into_buffer(v: Vec<Self>) -> crate::tensor::Buffer;
}

macro_rules! impl_real {
    ($t:ty, $variant:ident) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_usize(v: usize) -> Self {
                v as $t
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn into_buffer(v: Vec<Self>) -> crate::tensor::Buffer {
                crate::tensor::Buffer::$variant(v)
            }
        }
    };
}
impl_real!(f32, F32);
impl_real!(f64, F64);

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A storage element type. Sealed: implemented for `f32`, `f64`, `f16` and `bf16` only.
pub trait Element:
    Copy + Send + Sync + Default + fmt::Debug + PartialEq + 'static + sealed::Sealed
{
    const DTYPE: DType;
    /// Elementwise math and statistics (f32 for f16/bf16/f32, f64 for f64).
    type Compute: Real;
    /// Reduction accumulator (f64 for f32/f64, f32 for f16/bf16).
    type Acc: Real;
    fn to_compute(self) -> Self::Compute;
    fn from_compute(v: Self::Compute) -> Self;
    fn to_acc(self) -> Self::Acc;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    type Compute = f32;
    type Acc = f64;
    #[inline(always)]
    fn to_compute(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_compute(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn to_acc(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    type Compute = f64;
    type Acc = f64;
    #[inline(always)]
    fn to_compute(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_compute(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_acc(self) -> f64 {
        self
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
}

macro_rules! impl_half_element {
    ($t:ty, $dt:expr) => {
        impl Element for $t {
            const DTYPE: DType = $dt;
            type Compute = f32;
            type Acc = f32;
            #[inline(always)]
            fn to_compute(self) -> f32 {
                self.to_f32()
            }
            #[inline(always)]
            fn from_compute(v: f32) -> Self {
                <$t>::from_f32(v)
            }
            #[inline(always)]
            fn to_acc(self) -> f32 {
                self.to_f32()
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self.to_f64()
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
        }
    };
}
impl_half_element!(f16, DType::F16);
impl_half_element!(bf16, DType::BF16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_dtypes_follow_the_decision() {
        assert_eq!(DType::F16.stat_dtype(), DType::F32);
        assert_eq!(DType::BF16.stat_dtype(), DType::F32);
        assert_eq!(DType::F32.stat_dtype(), DType::F32);
        assert_eq!(DType::F64.stat_dtype(), DType::F64);
    }

    #[test]
    fn parse_roundtrips_names() {
        for d in DType::ALL {
            assert_eq!(DType::parse(d.name()), Some(d));
        }
        assert_eq!(DType::parse("int8"), None);
    }

    #[test]
    fn half_conversions_round_to_nearest() {
        assert_eq!(
            <bf16 as Element>::from_compute(1.0 + 1.0 / 512.0).to_f32(),
            1.0
        );
        assert_eq!(<f16 as Element>::from_compute(65504.0).to_f32(), 65504.0);
        assert!(<f16 as Element>::from_compute(1e6).to_f32().is_infinite());
    }
}
