//! Compute backends. The CPU backend is always present.

pub mod cpu;
pub mod cuda;
