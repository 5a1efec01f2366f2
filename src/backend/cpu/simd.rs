//! Which vector width the hot loops run at: the `multiversion` clones (`simd_clones!`) and
//! the choice between their AVX-512 and AVX2 sets per element type and CPU ([`narrow`]).
//!
//! Zen 4 (AMD family 19h with AVX-512) executes a 512-bit operation as two 256-bit halves.
//! Same-binary A/B on an AMD EPYC (Zen 4) VM, 2 vCPUs, all 22 standard cases, alternating
//! processes (docs/perf/cpu.md, round 18): the AVX2 clones are faster for f32 input on most
//! cases and slower for bf16 on all of them (whose conversions AVX-512 BF16/BW do in fewer
//! instructions). So on Zen 4 the element types that compute in their own type (f32, f64)
//! take the AVX2 clones and those converted to f32 (bf16, f16) the AVX-512 ones; on every
//! other CPU the widest clone its features allow. `NORMKIT_CPU_VECTORS=256|512|auto` (or
//! [`set_vector_policy`]) overrides the choice process-wide. The clones perform the same IEEE
//! operations in the same order, so results never depend on it.

use crate::dtype::Element;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Compiles each enclosed function twice behind one dispatcher of the same name and
/// signature: once with AVX-512 and AVX2+FMA clones ("wide"), once with the AVX2+FMA clone
/// only ("narrow"), each with a baseline clone for other CPUs (`multiversion`, which picks
/// among a set's clones at run time by the CPU's features; no `unsafe` here). The dispatcher
/// takes the narrow set where [`narrow`] says so for the function's element type `T` (one
/// choice per op: same-run A/B, docs/perf/cpu.md round 18, mixing the sets within an op cost
/// f32 0.94–0.97x). Parameters are plain identifiers (the dispatcher forwards them).
macro_rules! simd_clones {
    () => {};
    (
        $(#[$m:meta])*
        $vis:vis fn $name:ident<$t:ident: Element>($($arg:ident: $ty:ty),* $(,)?)
            $(-> $ret:ty)? $body:block
        $($rest:tt)*
    ) => {
        $(#[$m])*
        #[inline]
        $vis fn $name<$t: Element>($($arg: $ty),*) $(-> $ret)? {
            #[multiversion::multiversion(targets(
                "x86_64+avx512f+avx512bw+avx512vl+avx2+fma+f16c",
                "x86_64+avx2+fma+f16c",
            ))]
            $(#[$m])*
            fn wide<$t: Element>($($arg: $ty),*) $(-> $ret)? $body
            #[multiversion::multiversion(targets("x86_64+avx2+fma+f16c"))]
            $(#[$m])*
            fn narrow<$t: Element>($($arg: $ty),*) $(-> $ret)? $body
            if $crate::backend::cpu::simd::narrow::<$t>() {
                narrow::<$t>($($arg),*)
            } else {
                wide::<$t>($($arg),*)
            }
        }
        $crate::backend::cpu::simd::simd_clones! { $($rest)* }
    };
}
pub(crate) use simd_clones;

/// The process-wide choice of clone set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorPolicy {
    /// Per CPU and element type (the default): see the module documentation.
    Auto,
    /// The AVX2 clones for every element type (the baseline where there is no AVX2).
    Narrow,
    /// The widest clone the CPU's features allow for every element type.
    Wide,
}

impl VectorPolicy {
    /// The policy's vector width in bits as the C ABI and `NORMKIT_CPU_VECTORS` write it:
    /// 0 (automatic), 256 or 512.
    pub fn width(self) -> u32 {
        match self {
            VectorPolicy::Auto => 0,
            VectorPolicy::Narrow => 256,
            VectorPolicy::Wide => 512,
        }
    }

    /// The policy of a [`VectorPolicy::width`]; `None` for any other number.
    pub fn from_width(bits: u32) -> Option<Self> {
        [VectorPolicy::Auto, VectorPolicy::Narrow, VectorPolicy::Wide]
            .into_iter()
            .find(|p| p.width() == bits)
    }
}

/// The policy's width ([`VectorPolicy::width`]); `UNSET` until set or read from the
/// environment.
static POLICY: AtomicU32 = AtomicU32::new(UNSET);
const UNSET: u32 = u32::MAX;

/// Sets the clone choice process-wide (before or between ops; an op in flight keeps the
/// clones it started with for the calls it has made). Overrides `NORMKIT_CPU_VECTORS`.
pub fn set_vector_policy(p: VectorPolicy) {
    POLICY.store(p.width(), Ordering::Relaxed);
}

/// The clone choice: [`set_vector_policy`], else `NORMKIT_CPU_VECTORS` (`256`, `512`, or
/// `0`/`auto`; anything else is automatic), else [`VectorPolicy::Auto`].
pub fn vector_policy() -> VectorPolicy {
    let mut v = POLICY.load(Ordering::Relaxed);
    if v == UNSET {
        let env = std::env::var("NORMKIT_CPU_VECTORS").unwrap_or_default();
        let p = env.trim().parse().ok().and_then(VectorPolicy::from_width);
        let width = p.unwrap_or(VectorPolicy::Auto).width();
        let _ = POLICY.compare_exchange(UNSET, width, Ordering::Relaxed, Ordering::Relaxed);
        v = POLICY.load(Ordering::Relaxed);
    }
    VectorPolicy::from_width(v).unwrap_or(VectorPolicy::Auto)
}

/// Whether the CPU executes 512-bit vectors as two 256-bit halves and has AVX-512: AMD
/// family 19h (Zen 3 and Zen 4; only Zen 4 has AVX-512). Zen 5 (family 1Ah) and Intel run
/// 512-bit vectors at full width and keep the wide clones. Read once.
pub fn split_512() -> bool {
    static SPLIT: OnceLock<bool> = OnceLock::new();
    *SPLIT.get_or_init(detect_split_512)
}

#[cfg(target_arch = "x86_64")]
fn detect_split_512() -> bool {
    let id = raw_cpuid::CpuId::new();
    let amd = id
        .get_vendor_info()
        .is_some_and(|v| v.as_str() == "AuthenticAMD");
    let family = id.get_feature_info().map_or(0, |f| f.family_id());
    amd && family == 0x19 && std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_split_512() -> bool {
    false
}

/// Whether `simd_clones!` functions for element type `T` take the AVX2 clones
/// ([`vector_policy`]; under `Auto`, on a [`split_512`] CPU for the types computed in their
/// own precision, f32 and f64).
#[inline]
pub fn narrow<T: Element>() -> bool {
    match vector_policy() {
        VectorPolicy::Narrow => true,
        VectorPolicy::Wide => false,
        VectorPolicy::Auto => {
            std::mem::size_of::<T>() == std::mem::size_of::<T::Compute>() && split_512()
        }
    }
}
