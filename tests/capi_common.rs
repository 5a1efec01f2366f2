//! Helpers shared by the C ABI tests (tests/capi_link.rs, tests/capi_mpi.rs): building the
//! library in the test's own profile and running commands. Included with `mod capi_common;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// target/<profile>, found from this test executable (target/<profile>/deps/capi_link-*).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

pub fn build_library(profile: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let target_dir = profile.parent().expect("target dir");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--lib", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir);
    // Same features as this test build (CI runs `cargo test --all-features`), so the nested
    // build reuses the test build's artifacts instead of rebuilding with other features (the
    // lib's file names carry no feature hash: a different set would replace the rlib that the
    // doctests link).
    for (feature, on) in [
        ("cuda", cfg!(feature = "cuda")),
        ("nccl", cfg!(feature = "nccl")),
    ] {
        if on {
            cmd.args(["--features", feature]);
        }
    }
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    run(&mut cmd, "cargo build --lib");
    for lib in ["libnormkit.so", "libnormkit.a"] {
        assert!(
            profile.join(lib).exists(),
            "{} missing after cargo build",
            lib
        );
    }
}

pub fn valgrind_available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
