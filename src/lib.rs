//! # normkit
//!
//! PyTorch-exact normalization layers (BatchNorm, InstanceNorm, GroupNorm, LayerNorm,
//! LocalResponseNorm, SyncBatchNorm and the Lazy variants) with a CPU backend and a C ABI.
//!
//! * [`ops`]: stateless functional ops over caller-owned buffers.
//! * [`layers`]: stateful modules mirroring `torch.nn`.
//! * [`Tensor`] / [`TensorMut`]: views over borrowed memory with shape and element strides;
//!   contiguous and channels-last are the fast layouts.
//!
//! ## Deliberate deviations from PyTorch 2.15
//! * GroupNorm on channels-last input uses the same stable algorithm as contiguous input
//!   (PyTorch's CPU channels-last kernel computes `E[x²] − E[x]²` and loses all precision for
//!   data with a large mean).
//! * LocalResponseNorm supports f16/bf16 at every rank (PyTorch's CPU raises for rank ≥ 4) and
//!   squares in f32 (PyTorch's f16 `x·x` overflows above |x| ≈ 256).
//! * Saved statistics are f32 for f16/bf16/f32 input and f64 for f64 input, also when every
//!   parameter is bf16 (PyTorch then rounds them to bf16).
//! * The affine step is computed in the centred form `(x − μ)·(r·γ) + β` rather than PyTorch's
//!   folded `x·α + (β − μ·α)`, which keeps precision for inputs with a large mean; results
//!   differ from PyTorch by rounding only.

// `unsafe` is allowed only in the C ABI (`capi`), the CUDA launch/raw-pointer layer
// (`backend::cuda`) and the NCCL binding (`nccl`).
#![deny(unsafe_code)]

pub mod backend;
pub mod bench;
#[cfg(feature = "capi")]
#[allow(unsafe_code)] // the C ABI layer: every block has a `// SAFETY:` comment
pub mod capi;
pub mod comm;
pub mod device;
pub mod dtype;
pub mod error;
pub mod layers;
#[cfg(feature = "nccl")]
#[allow(unsafe_code)] // the NCCL binding: every block has a `// SAFETY:` comment
pub mod nccl;
pub mod ops;
pub mod tensor;

pub use backend::cpu::simd::{VectorPolicy, set_vector_policy, vector_policy};
pub use backend::cpu::threads::{
    MAX_THREADS, caller_teams, num_threads, set_caller_teams, set_num_threads, set_spin_wait,
    spin_wait,
};
pub use dtype::{DType, Element};
pub use error::{Error, ErrorKind, Result};
pub use half::{bf16, f16};
pub use tensor::{Buffer, ElementData, HostData, HostDataMut, Layout, Tensor, TensorMut};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
