//! Source checks of src/capi/: every exported `extern "C"` function runs its whole body inside
//! the panic boundary (`boundary!`/`boundary_or!` naming the function), and the C ABI code
//! never calls `.unwrap()`/`.expect(` outside its unit tests.

use std::path::Path;

fn capi_sources() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/capi");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("src/capi")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read source");
            (p.display().to_string(), text)
        })
        .collect()
}

/// The source without its `#[cfg(test)]` module (always last in these files).
fn without_tests(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

#[test]
fn every_export_runs_inside_the_panic_boundary() {
    let mut exports = 0;
    for (path, text) in capi_sources() {
        let code = without_tests(&text);
        let mut rest = code;
        while let Some(pos) = rest.find("extern \"C\" fn ") {
            let after = &rest[pos + "extern \"C\" fn ".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let body_start = after.find('{').expect("function body");
            let body = after[body_start + 1..].trim_start();
            let ok = ["boundary!(", "boundary_or!("].iter().any(|m| {
                body.strip_prefix(m)
                    .is_some_and(|b| b.trim_start().starts_with(&format!("\"{name}\"")))
            });
            assert!(
                ok,
                "{path}: `{name}` must start its body with boundary!(\"{name}\", ...) or \
                 boundary_or!(\"{name}\", ...); found: {}",
                body.lines().next().unwrap_or("")
            );
            exports += 1;
            rest = &after[body_start..];
        }
        assert!(
            !code.contains("#[no_mangle]"),
            "{path}: use #[unsafe(no_mangle)] (Rust 2024)"
        );
    }
    assert!(
        exports >= 40,
        "found only {exports} exports: is the scan broken?"
    );
}

#[test]
fn the_c_abi_never_unwraps() {
    for (path, text) in capi_sources() {
        let code = without_tests(&text);
        for (i, line) in code.lines().enumerate() {
            let l = line.trim_start();
            if l.starts_with("//") {
                continue;
            }
            assert!(
                !line.contains(".unwrap()") && !line.contains(".expect("),
                "{path}:{}: no .unwrap()/.expect( in the C ABI: {line}",
                i + 1
            );
        }
    }
}

#[test]
fn every_unsafe_block_has_a_safety_comment() {
    for (path, text) in capi_sources() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.contains("unsafe {") {
                continue;
            }
            let documented = lines[..i]
                .iter()
                .rev()
                .take(6)
                .take_while(|l| {
                    let t = l.trim_start();
                    t.starts_with("//") || t.is_empty() || !t.contains(';')
                })
                .any(|l| l.contains("SAFETY:"));
            assert!(
                documented,
                "{path}:{}: unsafe block without a `// SAFETY:` comment",
                i + 1
            );
        }
    }
}
