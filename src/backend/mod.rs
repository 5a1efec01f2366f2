//! Compute backends. The CPU backend is always present.

pub mod cpu;
#[allow(unsafe_code)] // the CUDA launch/raw-pointer layer: every block has a `// SAFETY:` comment
pub mod cuda;
