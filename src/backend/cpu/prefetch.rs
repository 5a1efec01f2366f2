//! Software prefetch of the memory a loop will read (or write) next.
//!
//! The run-wise kernels (LayerNorm forward and backward, GroupNorm / InstanceNorm channels-first
//! forward, BatchNorm channels-first training forward) read each run (row, group, channel
//! plane) from memory once and then work on it in cache. The hardware prefetcher starts each
//! new stream cold, and the apply's stores wait for their lines' read-for-ownership, so the
//! statistics pass prefetches, one line per line it reads, the next run's input and (forward)
//! the current run's output (round 9: spread over the pass rather than in a burst after the
//! apply, which stalled on full line-fill buffers where the data sat in L3). A prefetch is a
//! hint: it has no effect on the program's results, cannot fault, and a line it brings in
//! that is not used is only wasted bandwidth.
//!
//! The instruction comes from the `prefetch-index` crate (a safe function around
//! `_mm_prefetch` / `prfm`), so this backend keeps `forbid(unsafe_code)`.

/// Bytes per cache line (x86_64 and the common aarch64 cores).
pub const LINE: usize = 64;

/// Elements of `T` per cache line.
#[inline(always)]
pub const fn line_elems<T>() -> usize {
    let size = std::mem::size_of::<T>();
    if size == 0 || size >= LINE {
        1
    } else {
        LINE / size
    }
}

/// Whether prefetching a pass's output pays for element type `T`: for 4- and 8-byte elements
/// (f32 BatchNorm NCHW train / backward 1.04–1.36x in same-run A/Bs); f16/bf16 measured
/// 0.91–1.05x (round 9, as round 6's touch of the output).
#[inline(always)]
pub const fn output_pays<T>() -> bool {
    std::mem::size_of::<T>() >= 4
}

/// Prefetches the line holding `s[i]` into all cache levels; nothing when `i` is past the end.
#[inline(always)]
pub fn line<T>(s: &[T], i: usize) {
    if i < s.len() {
        prefetch_index::prefetch_index(s, i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_per_element_type() {
        assert_eq!(line_elems::<f32>(), 16);
        assert_eq!(line_elems::<half::bf16>(), 32);
        assert_eq!(line_elems::<f64>(), 8);
        assert_eq!(line_elems::<[u8; 128]>(), 1);
        assert_eq!(line_elems::<()>(), 1);
    }

    #[test]
    fn prefetch_leaves_data_alone_and_ignores_indices_past_the_end() {
        let v: Vec<f32> = (0..100).map(|i| i as f32).collect();
        for i in [0, 15, 16, 99, 100, usize::MAX] {
            line(&v, i);
        }
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32));
    }
}
