//! NVRTC: finding libnvrtc, compiling kernel modules, caching the PTX.
//!
//! Library search, in order (the first that loads wins):
//! 1. `NORMKIT_NVRTC_PATH`: the `libnvrtc.so.N` file itself or its directory;
//! 2. cudarc's own search (the normal dlopen order: `LD_LIBRARY_PATH`, RUNPATH, ld.so.cache);
//! 3. `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`, and the PyPI wheel layouts
//!    `.cuda-deps/nvidia/cuda_nvrtc/lib` and `.cuda-deps/nvidia/cu13/lib` under the current
//!    directory.
//!
//! A library found by path is preloaded (its `libnvrtc-builtins` first), so cudarc's later
//! `dlopen("libnvrtc.so.12")` returns the same object (glibc matches the SONAME;
//! design/cuda-infra.md §3.3). A failed search returns an error listing every place tried.
//!
//! Compiled PTX is cached in memory, and on disk under `NORMKIT_KERNEL_CACHE_DIR` when set,
//! keyed by a hash of the source, the options and the NVRTC version.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{result, sys};

use super::libsearch;
use crate::error::{Error, ErrorKind, Result};

const OP: &str = "nvrtc";

static LOADED: OnceLock<std::result::Result<String, String>> = OnceLock::new();
static KEEP: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());

fn candidates_in(dir: &Path) -> Vec<PathBuf> {
    ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
        .iter()
        .map(|n| dir.join(n))
        .collect()
}

/// Preloads `lib` (and the builtins next to it) by absolute path. Returns an error text.
fn preload(lib: &Path) -> std::result::Result<(), String> {
    if !lib.is_file() {
        return Err(format!("{}: no such file", lib.display()));
    }
    let mut keep = KEEP
        .lock()
        .map_err(|_| "nvrtc loader lock poisoned".to_string())?;
    if let Some(dir) = lib.parent() {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("libnvrtc-builtins.so.") && !name.contains("alt") {
                    // SAFETY: loading NVIDIA's NVRTC builtins library runs only its ELF
                    // initialisers, which have no preconditions.
                    if let Ok(l) = unsafe { libloading::Library::new(e.path()) } {
                        keep.push(l);
                    }
                }
            }
        }
    }
    // SAFETY: as above, for libnvrtc itself; it stays loaded for the process lifetime (KEEP),
    // so the handle cudarc obtains later through the same SONAME stays valid.
    let l =
        unsafe { libloading::Library::new(lib) }.map_err(|e| format!("{}: {e}", lib.display()))?;
    keep.push(l);
    Ok(())
}

fn search() -> std::result::Result<String, String> {
    if let Some(r) = libsearch::from_env("NORMKIT_NVRTC_PATH", candidates_in, |f| {
        preload(f).map(|()| f.display().to_string())
    }) {
        return r;
    }
    let mut tried = Vec::new();
    // SAFETY: a dlopen probe over cudarc's candidate names; no symbol is called.
    if unsafe { sys::is_culib_present() } {
        return Ok("the dynamic loader's search path".into());
    }
    tried.push("libnvrtc.so{,.13,.12,.11} on the dynamic loader's search path".into());
    let dirs = libsearch::toolkit_dirs(&["nvidia/cuda_nvrtc/lib", "nvidia/cu13/lib"]);
    for d in dirs {
        for f in candidates_in(&d) {
            if f.is_file() && preload(&f).is_ok() {
                return Ok(f.display().to_string());
            }
        }
        tried.push(d.display().to_string());
    }
    Err(format!(
        "libnvrtc not found; looked in: {}",
        tried.join(", ")
    ))
}

/// Finds and loads libnvrtc once per process; returns where it came from.
pub fn ensure_loaded() -> Result<String> {
    LOADED.get_or_init(search).clone().map_err(|e| {
        Error::new(
            ErrorKind::DeviceUnavailable,
            OP,
            "libnvrtc",
            "an NVRTC library (set NORMKIT_NVRTC_PATH)",
            e,
        )
    })
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32)> {
    ensure_loaded()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: nvrtcVersion writes two ints through valid pointers; the library is loaded.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| backend("version", format!("{e:?}")))?;
    Ok((major, minor))
}

fn backend(what: &str, got: String) -> Error {
    Error::new(ErrorKind::Backend, OP, what, "NVRTC success", got)
}

/// The result of one compilation: PTX and the program log (ptxas report with
/// `--ptxas-options=-v`).
#[derive(Clone, Debug)]
pub struct Compiled {
    pub ptx: String,
    pub log: String,
}

fn c_text(v: Vec<std::os::raw::c_char>) -> String {
    let bytes: Vec<u8> = v
        .into_iter()
        .map(|c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles `source` (named `name` in messages) with `options`, uncached. A compile error is
/// an `Err` whose text contains the NVRTC log.
pub fn compile_uncached(source: &str, name: &str, options: &[String]) -> Result<Compiled> {
    ensure_loaded()?;
    let src = CString::new(source)
        .map_err(|_| Error::invalid(OP, name, "source without NUL", "NUL byte"))?;
    let cname =
        CString::new(name).map_err(|_| Error::invalid(OP, "name", "name without NUL", name))?;
    let prog =
        result::create_program(&src, Some(&cname)).map_err(|e| backend(name, format!("{e:?}")))?;
    // SAFETY: `prog` was just created from `src`/`cname`, which outlive it; it is destroyed
    // exactly once below, after its log and PTX were read.
    let (ok, log, ptx) = unsafe {
        let ok = result::compile_program(prog, options).is_ok();
        let log = result::get_program_log(prog)
            .map(c_text)
            .unwrap_or_default();
        let ptx = if ok {
            result::get_ptx(prog).map(c_text).ok()
        } else {
            None
        };
        let _ = result::destroy_program(prog);
        (ok, log, ptx)
    };
    match (ok, ptx) {
        (true, Some(ptx)) => Ok(Compiled { ptx, log }),
        _ => Err(Error::new(
            ErrorKind::Backend,
            OP,
            name,
            format!("a successful compile with {options:?}"),
            log,
        )),
    }
}

/// FNV-1a 64 (stable across Rust releases, unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

static MEMORY: Mutex<Option<HashMap<u64, String>>> = Mutex::new(None);

/// Compiles to PTX through the caches (memory, then `NORMKIT_KERNEL_CACHE_DIR`).
pub fn compile_ptx(source: &str, name: &str, options: &[String]) -> Result<String> {
    let (major, minor) = version()?;
    let ver = format!("{major}.{minor}");
    let opts = options.join("\u{1}");
    let key = fnv1a(&[source.as_bytes(), opts.as_bytes(), ver.as_bytes()]);
    if let Some(p) = MEMORY
        .lock()
        .ok()
        .and_then(|m| m.as_ref().and_then(|m| m.get(&key).cloned()))
    {
        return Ok(p);
    }
    let disk = std::env::var_os("NORMKIT_KERNEL_CACHE_DIR")
        .map(|d| PathBuf::from(d).join(format!("{name}-{key:016x}.ptx")));
    let ptx = match disk.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        Some(p) => p,
        None => {
            let p = compile_uncached(source, name, options)?.ptx;
            if let Some(path) = &disk {
                // best effort: a cache that cannot be written only costs a recompile
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &p).is_ok() {
                    let _ = std::fs::rename(&tmp, path);
                }
            }
            p
        }
    };
    if let Ok(mut m) = MEMORY.lock() {
        m.get_or_insert_with(HashMap::new).insert(key, ptx.clone());
    }
    Ok(ptx)
}

/// Options for a device of compute capability `major.minor` (fast math off).
pub fn options_for(major: u32, minor: u32) -> Vec<String> {
    vec![
        format!("--gpu-architecture=sm_{major}{minor}"),
        "--std=c++17".into(),
        "-lineinfo".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_separates_parts() {
        assert_eq!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"ab", b"c"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(options_for(9, 0)[0], "--gpu-architecture=sm_90");
    }
}
