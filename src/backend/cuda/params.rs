//! Kernel parameter structs, mirroring `kernels/common/params.cuh` field for field.
//!
//! Each struct is passed to its kernel by value as one argument. Instead of transmuting, each
//! serialises itself field by field in declaration order ([`KernelParams::to_bytes`]); the
//! structs have no padding on the C side, and both sides check the size (a `static_assert` in
//! params.cuh, [`KernelParams::SIZE`] here, and the emulator compares the two at launch).
//! Pointers are device addresses (`u64`, 0 = absent).

/// A kernel parameter struct.
pub trait KernelParams {
    /// `sizeof` of the C struct.
    const SIZE: usize;
    /// The C struct's bytes (native endianness).
    fn to_bytes(&self) -> Vec<u8>;
}

macro_rules! params_struct {
    ($(#[$doc:meta])* $name:ident, $size:expr, { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq)]
        pub struct $name { $(pub $field: $ty),* }
        impl KernelParams for $name {
            const SIZE: usize = $size;
            fn to_bytes(&self) -> Vec<u8> {
                let mut out = Vec::with_capacity($size);
                $(out.extend_from_slice(&self.$field.to_ne_bytes());)*
                out
            }
        }
        const _: () = assert!(0 $(+ std::mem::size_of::<$ty>())* == $size);
    };
}

params_struct!(
    /// `LayerNormParams`: rows of `cols` contiguous elements.
    LayerNormParams, 72, {
    x: u64, y: u64, weight: u64, bias: u64, mean: u64, rstd: u64,
    rows: i64, cols: i64, eps: f64,
});

params_struct!(
    /// `GroupNormParams`: (n, c, s) in NCHW or NHWC order, statistics per (n, group)
    /// (mean, rstd, and M2 for InstanceNorm's running variance).
    GroupNormParams, 104, {
    x: u64, y: u64, weight: u64, bias: u64, mean: u64, rstd: u64, m2: u64,
    n: i64, c: i64, s: i64, groups: i64, eps: f64,
    clamp_var: i32, zero_var_rule: i32,
});

params_struct!(
    /// `InstanceNormRunningParams`: running-statistic update from per-(n, c) mean and M2.
    InstanceNormRunningParams, 64, {
    mean: u64, m2: u64, running_mean: u64, running_var: u64,
    n: i64, c: i64, s: i64, momentum: f64,
});

params_struct!(
    /// `BatchNormStatsParams`: per-channel statistics with split partials and last-block merge.
    BatchNormStatsParams, 112, {
    x: u64, mean: u64, rstd: u64, running_mean: u64, running_var: u64,
    workspace: u64, counters: u64,
    n: i64, c: i64, s: i64, splits: i64, eps: f64, momentum: f64, mean_lo: u64,
});

params_struct!(
    /// `BatchNormApplyParams`: elementwise apply (training) or inference from running stats.
    BatchNormApplyParams, 88, {
    x: u64, y: u64, mean: u64, rstd_or_var: u64, weight: u64, bias: u64,
    n: i64, c: i64, s: i64, eps: f64, mean_lo: u64,
});

params_struct!(
    /// `LrnParams`: LocalResponseNorm across channels.
    LrnParams, 72, {
    x: u64, y: u64, n: i64, c: i64, s: i64, size: i64, alpha: f64, beta: f64, k: f64,
});

params_struct!(
    /// `LayerNormBwdParams`: LayerNorm backward (dx, per-block dγ/dβ partials).
    LayerNormBwdParams, 104, {
    x: u64, dy: u64, dx: u64, mean: u64, rstd: u64, weight: u64,
    grad_weight: u64, grad_bias: u64, workspace: u64,
    rows: i64, cols: i64, partials: i64, accumulate: i32, reserved: i32,
});

params_struct!(
    /// `NormBwdParams`: BatchNorm / InstanceNorm / GroupNorm backward.
    NormBwdParams, 144, {
    x: u64, dy: u64, dx: u64, mean: u64, rstd_or_var: u64, weight: u64,
    grad_weight: u64, grad_bias: u64, workspace: u64, counters: u64,
    n: i64, c: i64, s: i64, groups: i64, splits: i64, eps: f64,
    training: i32, accumulate: i32, recover: i32, reserved: i32,
});

params_struct!(
    /// `LrnBwdParams`: LocalResponseNorm backward.
    LrnBwdParams, 80, {
    x: u64, dy: u64, dx: u64, n: i64, c: i64, s: i64, size: i64, alpha: f64, beta: f64, k: f64,
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_follow_declaration_order() {
        let p = LrnParams {
            x: 1,
            size: 5,
            k: 2.0,
            ..Default::default()
        };
        let b = p.to_bytes();
        assert_eq!(b.len(), LrnParams::SIZE);
        assert_eq!(&b[0..8], &1u64.to_ne_bytes());
        assert_eq!(&b[40..48], &5i64.to_ne_bytes());
        assert_eq!(&b[64..72], &2.0f64.to_ne_bytes());
        assert_eq!(GroupNormParams::default().to_bytes().len(), 104);
        assert_eq!(InstanceNormRunningParams::default().to_bytes().len(), 64);
    }
}
