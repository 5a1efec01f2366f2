//! Compiles the C and C++ programs in tests/c/ against include/normkit.h with the system `cc`
//! and `c++` (-Wall -Wextra -Werror -pedantic), links each against the cdylib and the
//! staticlib, runs them, and runs them under valgrind when it is installed; the C program also
//! runs built with AddressSanitizer (LeakSanitizer on) when `cc -fsanitize=address` works.
//!
//! The library is (re)built first with `cargo build --lib` in the test's own profile and target
//! directory, so the test never links a stale libnormkit.

mod capi_common;

use capi_common::{build_library, profile_dir, run, valgrind_available};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The libraries the staticlib needs (`cargo rustc --crate-type staticlib -- --print
/// native-static-libs` on Linux).
const NATIVE_STATIC_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

struct Program {
    source: &'static str,
    compiler: &'static str,
    std: &'static str,
}

const PROGRAMS: [Program; 2] = [
    Program {
        source: "capi_test.c",
        compiler: "cc",
        std: "-std=c11",
    },
    Program {
        source: "capi_test.cpp",
        compiler: "c++",
        std: "-std=c++17",
    },
];

/// Compiles `p` against the shared (`static_link` false) or static library, with `extra`
/// compiler flags (named by `tag` in the binary's name); returns the binary.
fn compile(p: &Program, profile: &Path, static_link: bool, extra: &[&str], tag: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = profile.join("capi-tests");
    std::fs::create_dir_all(&out_dir).expect("create capi-tests dir");
    let kind = if static_link { "static" } else { "shared" };
    let exe = out_dir.join(format!("{}-{kind}{tag}", p.source.replace('.', "_")));
    let mut cmd = Command::new(p.compiler);
    cmd.args([p.std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .args(extra)
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join("tests/c").join(p.source))
        .arg("-o")
        .arg(&exe);
    if static_link {
        cmd.arg(profile.join("libnormkit.a"))
            .args(NATIVE_STATIC_LIBS);
    } else {
        cmd.arg("-L").arg(profile).args(["-lnormkit", "-lm"]);
    }
    run(&mut cmd, &format!("{} {} ({kind})", p.compiler, p.source));
    exe
}

fn program_command(exe: &Path, profile: &Path, valgrind: bool) -> Command {
    let mut cmd = if valgrind {
        // Rayon's worker pools live until the process exits, so their thread stacks show up as
        // "possibly lost"; definite and indirect leaks (a context or module not freed, a lost
        // buffer) and every memory error still fail the run. The one suppression shipped for
        // embedders (include/normkit-valgrind.supp) covers rayon's record of each exited
        // thread that had a caller team (the C program's threaded test makes four).
        let supp = concat!(env!("CARGO_MANIFEST_DIR"), "/include/normkit-valgrind.supp");
        let mut c = Command::new("valgrind");
        c.args([
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            &format!("--suppressions={supp}"),
            "--num-callers=50",
            "-q",
        ])
        .arg(exe);
        c
    } else {
        Command::new(exe)
    };
    cmd.env("LD_LIBRARY_PATH", profile)
        .env("RUST_BACKTRACE", "0");
    cmd
}

#[test]
fn c_and_cpp_programs_pass_against_both_libraries() {
    let profile = profile_dir();
    build_library(&profile);
    let valgrind = valgrind_available();
    if !valgrind {
        println!("valgrind is not installed: the valgrind runs were skipped");
    }
    for p in &PROGRAMS {
        for static_link in [false, true] {
            let exe = compile(p, &profile, static_link, &[], "");
            let out = run(
                &mut program_command(&exe, &profile, false),
                &exe.display().to_string(),
            );
            assert!(
                out.contains("all"),
                "{}: unexpected output:\n{out}",
                exe.display()
            );
            if valgrind {
                run(
                    &mut program_command(&exe, &profile, true),
                    &format!("valgrind {}", exe.display()),
                );
            }
        }
    }
}

/// Whether `cc -fsanitize=address` builds and runs a program here.
fn asan_available(dir: &Path) -> bool {
    let src = dir.join("asan_probe.c");
    let exe = dir.join("asan_probe");
    std::fs::write(&src, "int main(void) { return 0; }\n").is_ok()
        && Command::new("cc")
            .args(["-fsanitize=address", "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .is_ok_and(|o| o.status.success())
        && Command::new(&exe)
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The C program built with AddressSanitizer against the shared library: no memory error and
/// no leak but the one caller teams leave (rayon's record of each exited calling thread),
/// which LeakSanitizer reports without include/normkit-lsan.supp and not with it.
#[test]
fn c_program_passes_under_address_sanitizer() {
    let profile = profile_dir();
    build_library(&profile);
    let dir = profile.join("capi-tests");
    std::fs::create_dir_all(&dir).expect("create capi-tests dir");
    if !asan_available(&dir) {
        println!("cc -fsanitize=address is not available: the AddressSanitizer run was skipped");
        return;
    }
    let exe = compile(
        &PROGRAMS[0],
        &profile,
        false,
        &["-fsanitize=address"],
        "-asan",
    );
    let supp = concat!(env!("CARGO_MANIFEST_DIR"), "/include/normkit-lsan.supp");
    let sanitized = |suppress: bool| {
        let mut cmd = program_command(&exe, &profile, false);
        cmd.env("ASAN_OPTIONS", "detect_leaks=1");
        if suppress {
            cmd.env("LSAN_OPTIONS", format!("suppressions={supp}"));
        }
        cmd
    };
    let text = run(
        &mut sanitized(true),
        &format!("{} with the suppressions", exe.display()),
    );
    assert!(text.contains("all"), "unexpected output:\n{text}");
    // the suppression is needed, and for that leak: without it LeakSanitizer reports rayon's
    // pool constructor
    let bare = sanitized(false)
        .output()
        .expect("run the AddressSanitizer build");
    let report = String::from_utf8_lossy(&bare.stderr);
    assert!(
        !bare.status.success(),
        "no leak reported without the suppressions"
    );
    assert!(
        report.contains("LeakSanitizer") && report.contains("Registry::new"),
        "{report}"
    );
}
