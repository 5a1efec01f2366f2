//! Flattened kernel sources (one per `kernels/<op>.cu`, headers inlined by build.rs with
//! `#line` markers) and the entry-point names each defines.

include!(concat!(env!("OUT_DIR"), "/kernel_modules.rs"));

/// One kernel module: `kernels/<name>.cu` with its headers inlined.
#[derive(Clone, Copy, Debug)]
pub struct KernelModule {
    pub name: &'static str,
    pub source: &'static str,
    pub entry_points: &'static [&'static str],
}

/// Every kernel module.
pub fn all() -> impl Iterator<Item = KernelModule> {
    KERNEL_MODULES
        .iter()
        .map(|&(name, source, entry_points)| KernelModule {
            name,
            source,
            entry_points,
        })
}

/// The module that defines entry point `kernel`.
pub fn module_of(kernel: &str) -> Option<KernelModule> {
    all().find(|m| m.entry_points.contains(&kernel))
}
