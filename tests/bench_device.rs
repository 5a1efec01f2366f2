//! `normkit bench --device ...` end to end (the executable): on the host emulation of the CUDA
//! kernels (`--device emu`) every standard case, shrunk, goes through the whole device bench
//! path (upload, device ops forward and backward, timing, download, the float64 reference
//! check, the table and JSON output); `--device cuda` without a GPU is a clear
//! `DeviceUnavailable` error with the probe's reason, not a panic. No timing assertions.
//!
//! The executable is the one cargo built with this test, or `NORMKIT_BIN` (the GPU bundle's
//! runner points it at the bundled `bin/normkit`).

use normkit::DType;
use normkit::backend::cuda::{emu, probe};
use normkit::bench::Suite;
use std::process::{Command, Output};

fn normkit(args: &[&str]) -> Output {
    let exe = std::env::var_os("NORMKIT_BIN").unwrap_or(env!("CARGO_BIN_EXE_normkit").into());
    Command::new(exe)
        .args(args)
        .output()
        .expect("run the normkit executable")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const MAX_ELEMENTS: usize = 4096;

fn emu_available(test: &str) -> bool {
    if !emu::available() {
        let require = std::env::var("NORMKIT_REQUIRE_CUDA_EMU").as_deref() == Ok("1");
        assert!(
            !require,
            "NORMKIT_REQUIRE_CUDA_EMU=1 but the emulation was not built"
        );
        eprintln!("{test}: skipped, the CUDA host emulation was not built");
    }
    emu::available()
}

#[test]
fn emulated_device_bench_prints_one_json_object_per_case() {
    if !emu_available("emulated_device_bench_prints_one_json_object_per_case") {
        return;
    }
    let max = MAX_ELEMENTS.to_string();
    let args = [
        "bench",
        "--device",
        "emu",
        "--json",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--max-elements",
        &max,
        "--dtype",
        "f32",
    ];
    let out = normkit(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{args:?} failed:\n{stderr}\n{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("timing: wall-clock"), "{stderr}");
    // every case of the suite, in order, shrunk as asked
    let want: Vec<_> = Suite::standard()
        .unwrap()
        .cases(&[DType::F32])
        .into_iter()
        .map(|c| c.shrunk(MAX_ELEMENTS))
        .collect();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), want.len(), "{stdout}");
    for (line, case) in lines.iter().zip(&want) {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
        let num = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {line}"));
        let str_ = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {line}"));
        assert_eq!(str_("layer"), case.layer, "{line}");
        assert_eq!(str_("layout"), case.layout, "{line}");
        assert_eq!(str_("mode"), case.mode, "{line}");
        assert_eq!(
            str_("dtype"),
            normkit::bench::dtype_name(case.dtype),
            "{line}"
        );
        assert_eq!(str_("device"), "cuda-emu", "{line}");
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, case.shape, "{line}");
        assert_eq!(num("bytes") as u64, case.bytes(), "{line}");
        assert_eq!(num("reps"), 1.0, "{line}");
        assert_eq!(num("threads"), 0.0, "{line}");
        let (med, min, gbps) = (num("median_ms"), num("min_ms"), num("gbps"));
        assert!(med.is_finite() && med >= 0.0 && min <= med, "{line}");
        assert!(gbps.is_finite() || med == 0.0, "{line}");
    }
    // at least one case per op, and the backward of each op that has one
    for layer in [
        "BatchNorm",
        "InstanceNorm",
        "GroupNorm",
        "LayerNorm",
        "LocalResponseNorm",
    ] {
        assert!(lines.iter().any(|l| l.contains(layer)), "no {layer} case");
    }
    for layer in ["BatchNorm2d", "GroupNorm", "LayerNorm"] {
        let bwd = format!("\"layer\":\"{layer}\"");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&bwd) && l.contains("\"mode\":\"bwd\"")),
            "no {layer} backward case"
        );
    }
}

#[test]
fn emulated_device_bench_prints_a_table() {
    if !emu_available("emulated_device_bench_prints_a_table") {
        return;
    }
    let out = normkit(&[
        "bench",
        "--device",
        "emu",
        "--reps",
        "3",
        "--warmup",
        "1",
        "--max-elements",
        "2048",
        "--dtype",
        "f16",
        "--dtype",
        "bf16",
        "--filter",
        "LayerNorm/",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("LayerNorm")).collect();
    assert!(stdout.contains("median ms"), "{stdout}");
    // 3 LayerNorm cases × fwd/bwd × 2 dtypes
    assert_eq!(rows.len(), 12, "{stdout}");
    for r in rows {
        let cols: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(cols.len(), 8, "{r}");
        assert_eq!(cols[5], "-", "threads column of a device row: {r}");
        assert!(
            cols[6].parse::<f64>().is_ok() && cols[7].parse::<f64>().is_ok(),
            "{r}"
        );
    }
}

#[test]
fn cuda_device_bench_without_a_gpu_is_a_clear_error() {
    let p = probe();
    let Some(reason) = p.reason() else {
        eprintln!("a GPU is available: nothing to check");
        return;
    };
    for device in ["cuda", "cuda:1"] {
        let out = normkit(&["bench", "--device", device, "--filter", "LayerNorm"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains("DeviceUnavailable"), "{stderr}");
        assert!(
            stderr.contains(reason),
            "{stderr} lacks the probe's reason '{reason}'"
        );
        assert!(out.stdout.is_empty());
    }
    let out = normkit(&["bench", "--device", "tpu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("expected cpu, cuda, cuda:N, emu or auto"));
    // auto (the default) falls back to the CPU, saying why
    let out = normkit(&[
        "bench",
        "--json",
        "--quick",
        "--threads",
        "1",
        "--filter",
        "LayerNorm/8192x768/row-major/fwd/float32",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("benchmarking the CPU") && stderr.contains(reason),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("\"device\":\"cpu\""),
        "{}",
        text(&out.stdout)
    );
}

/// `--min-elements` grows a case's batch dimension (8192 rows of 768 and one element more take
/// 8193 rows), and its bad uses are errors that name the option, not panics.
#[test]
fn cpu_bench_grows_cases_to_min_elements() {
    let min = (8192 * 768 + 1).to_string();
    let out = normkit(&[
        "bench",
        "--device",
        "cpu",
        "--json",
        "--threads",
        "1",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--warmup-ms",
        "0",
        "--dtype",
        "f32",
        "--filter",
        "LayerNorm/8192x768/row-major/fwd",
        "--min-elements",
        &min,
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["shape"], serde_json::json!([8193, 768]), "{stdout}");
    for (args, want) in [
        (
            vec!["--min-elements", "5", "--max-elements", "5"],
            "--max-elements and --min-elements",
        ),
        (
            vec!["--min-elements", "1073741825"],
            "expected at most 1073741824",
        ),
        (vec!["--min-elements", "0"], "expected a positive integer"),
    ] {
        let out = normkit(&[&["bench", "--device", "cpu"], &args[..]].concat());
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(want) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}
