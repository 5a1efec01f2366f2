//! Compiles every kernel module (kernels/*.cu, flattened by build.rs) with NVRTC for sm_80 and
//! sm_90, and fails on any compile error or register spill (ptxas report through
//! `--ptxas-options=-v`; design/cuda-infra.md §4-5). Needs libnvrtc, not a GPU: install it
//! with `.ci/install-nvrtc.sh`. Without NVRTC it skips with the reason, unless
//! `NORMKIT_REQUIRE_NVRTC=1`. Needs `--features cuda`.
#![cfg(feature = "cuda")]

use normkit::backend::cuda::{modules, nvrtc};

#[test]
fn every_kernel_module_compiles_without_spills() {
    let require = std::env::var("NORMKIT_REQUIRE_NVRTC").as_deref() == Ok("1");
    if let Err(e) = nvrtc::ensure_loaded() {
        assert!(!require, "NORMKIT_REQUIRE_NVRTC=1: {e}");
        eprintln!("skipped: {e}");
        return;
    }
    let (major, minor) = nvrtc::version().expect("nvrtcVersion");
    eprintln!("NVRTC {major}.{minor}");
    // NORMKIT_PTXAS_REPORT=1 prints ptxas's report (registers, shared memory, stack, spills per
    // entry point) for sm_90: occupancy read at no device time (run with --nocapture)
    let report = std::env::var("NORMKIT_PTXAS_REPORT").as_deref() == Ok("1");
    let mut failures = Vec::new();
    for m in modules::all() {
        for arch in ["sm_80", "sm_90"] {
            let opts = vec![
                format!("--gpu-architecture={arch}"),
                "--std=c++17".to_string(),
                "--ptxas-options=-v".to_string(),
            ];
            match nvrtc::compile_uncached(m.source, &format!("{}.cu", m.name), &opts) {
                Err(e) => failures.push(format!("{} {arch}: {e}", m.name)),
                Ok(c) => {
                    if report && arch == "sm_90" {
                        eprintln!("== {} {arch}\n{}", m.name, c.log);
                    }
                    for e in m.entry_points {
                        if !c.ptx.contains(&format!(".entry {e}(")) {
                            failures.push(format!("{} {arch}: entry {e} missing from PTX", m.name));
                        }
                    }
                    let spills: Vec<&str> = c
                        .log
                        .lines()
                        .filter(|l| {
                            l.contains("spill")
                                && !l.contains(" 0 bytes spill stores, 0 bytes spill loads")
                        })
                        .collect();
                    if !spills.is_empty() {
                        failures.push(format!(
                            "{} {arch}: spills:\n{}\n{}",
                            m.name,
                            spills.join("\n"),
                            c.log
                        ));
                    }
                    let reports = c.log.lines().filter(|l| l.contains("spill")).count();
                    if reports < m.entry_points.len() {
                        failures.push(format!(
                            "{} {arch}: ptxas reported {reports} of {} entry points:\n{}",
                            m.name,
                            m.entry_points.len(),
                            c.log
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_broken_kernel_is_an_error_with_the_log() {
    if nvrtc::ensure_loaded().is_err() {
        return;
    }
    let err = nvrtc::compile_uncached(
        "extern \"C\" __global__ void k() { undefined_fn(); }",
        "broken.cu",
        &["--gpu-architecture=sm_80".to_string()],
    )
    .unwrap_err();
    assert!(err.to_string().contains("undefined_fn"), "{err}");
}
