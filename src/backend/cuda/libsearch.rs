//! The search for NVIDIA's run-time libraries shared by NVRTC ([`super::nvrtc`]) and NCCL
//! (`crate::nccl`): an environment variable naming the file or its directory, then the
//! CUDA toolkit directories and the PyPI wheel layout under `./.cuda-deps`.

use std::path::{Path, PathBuf};

/// When `var` is set: tries the file it names, or `candidates(dir)` when it names a
/// directory, with `load`; `Some(Err)` lists every failure. `None` when `var` is unset.
pub(crate) fn from_env<T>(
    var: &str,
    candidates: impl Fn(&Path) -> Vec<PathBuf>,
    mut load: impl FnMut(&Path) -> Result<T, String>,
) -> Option<Result<T, String>> {
    let p = PathBuf::from(std::env::var_os(var)?);
    let files = if p.is_dir() {
        candidates(&p)
    } else {
        vec![p.clone()]
    };
    let mut tried = Vec::new();
    for f in &files {
        match load(f) {
            Ok(t) => return Some(Ok(t)),
            Err(e) => tried.push(e),
        }
    }
    Some(Err(format!("{var}={}: {}", p.display(), tried.join("; "))))
}

/// `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`, then
/// `./.cuda-deps/<w>` for each of `wheel_dirs` (PyPI layouts, e.g. `nvidia/nccl/lib`).
pub(crate) fn toolkit_dirs(wheel_dirs: &[&str]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.push(PathBuf::from(v).join("lib64"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    if let Ok(cwd) = std::env::current_dir() {
        dirs.extend(wheel_dirs.iter().map(|w| cwd.join(".cuda-deps").join(w)));
    }
    dirs
}
