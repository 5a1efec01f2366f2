//! The choice between the AVX-512 and AVX2 clones of the CPU kernels (`simd::narrow`): the
//! overrides win, and the automatic choice narrows f32/f64 (never bf16/f16) exactly on CPUs
//! that split 512-bit vectors (AMD family 19h with AVX-512, read here from /proc/cpuinfo
//! independently of the crate's CPUID reading).

use half::{bf16, f16};
use normkit::backend::cpu::simd::{VectorPolicy, narrow, set_vector_policy, split_512};

/// `Some(true)` when /proc/cpuinfo says AMD family 25 with avx512f; `None` where there is no
/// /proc/cpuinfo (not Linux).
fn cpuinfo_split_512() -> Option<bool> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let amd = field("vendor_id") == "AuthenticAMD";
    let family_19h = field("cpu family") == "25";
    let avx512 = field("flags").split_whitespace().any(|f| f == "avx512f");
    Some(amd && family_19h && avx512)
}

#[test]
fn vector_policy_overrides_and_auto_choice() {
    set_vector_policy(VectorPolicy::Narrow);
    assert!(narrow::<f32>() && narrow::<f64>() && narrow::<bf16>() && narrow::<f16>());
    set_vector_policy(VectorPolicy::Wide);
    assert!(!narrow::<f32>() && !narrow::<f64>() && !narrow::<bf16>() && !narrow::<f16>());
    set_vector_policy(VectorPolicy::Auto);
    assert!(
        !narrow::<bf16>() && !narrow::<f16>(),
        "bf16/f16 keep the widest clones"
    );
    assert_eq!(narrow::<f32>(), split_512());
    assert_eq!(narrow::<f64>(), split_512());
    if cfg!(target_arch = "x86_64") {
        match cpuinfo_split_512() {
            Some(expected) => assert_eq!(
                split_512(),
                expected,
                "CPUID and /proc/cpuinfo disagree on AMD family 19h with AVX-512"
            ),
            None => eprintln!("skipped the /proc/cpuinfo cross-check: no /proc/cpuinfo here"),
        }
    } else {
        assert!(!split_512());
    }
}

#[test]
fn vector_policy_widths_are_the_documented_numbers() {
    for (p, bits) in [
        (VectorPolicy::Auto, 0),
        (VectorPolicy::Narrow, 256),
        (VectorPolicy::Wide, 512),
    ] {
        assert_eq!(p.width(), bits);
        assert_eq!(VectorPolicy::from_width(bits), Some(p));
    }
    for bits in [1, 128, 255, 1024, u32::MAX] {
        assert_eq!(VectorPolicy::from_width(bits), None, "{bits}");
    }
}
