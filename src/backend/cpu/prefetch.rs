//! Software prefetch of the memory a loop will read (or write) next.
//!
//! The run-wise kernels (LayerNorm forward and backward, GroupNorm / InstanceNorm channels-first
//! forward, BatchNorm channels-first training forward) read each run (row, group, channel
//! plane) from memory once and then work on it in cache. The hardware prefetcher starts each
//! new stream cold, and the apply's stores wait for their lines' read-for-ownership, so the
//! statistics pass prefetches, one line per line it reads, its input ahead of itself (the next
//! run's, or 1 KiB ahead for long runs: [`input_ahead`]) and (forward) the current run's
//! output (round 9: spread over the pass rather than in a burst after the apply, which stalled
//! on full line-fill buffers where the data sat in L3). A prefetch is a hint: it has no effect
//! on the program's results, cannot fault, and a line it brings in that is not used is only
//! wasted bandwidth.
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

/// The L1 data cache assumed by the prefetch decisions: 32 KiB, the common size (this
/// project's AVX-512 VMs have 48 KiB).
pub const L1_BYTES: usize = 32 * 1024;

/// Whether `elems` elements of `T` fit in [`L1_BYTES`]. The fused statistics pass
/// (`fused_runs`) prefetches the run's output into L1 only when the run's input and output
/// fit there together: a 32 KiB f32 GroupNorm group (16x256x32x32, 32 groups) and its output
/// do not, and the output's prefetch evicted the input lines the apply reads again. Same-run
/// A/B (alternating processes, medians of 30 calls, 10 alternations): GroupNorm NCHW fwd f32
/// without the output prefetch 1.60 vs 1.70 ms at one thread, 0.88 vs 0.93 ms at two
/// (InstanceNorm's 16 KiB planes: 1.03x / 0.96x without it, so they keep it; LayerNorm rows up
/// to 4096 f32 keep it, round 9).
#[inline(always)]
pub const fn fits_l1<T>(elems: usize) -> bool {
    elems.saturating_mul(std::mem::size_of::<T>()) <= L1_BYTES
}

/// The L2 cache assumed by the prefetch decisions: 2 MiB, a current server core's (Sapphire
/// Rapids and later; this project's AVX-512 VMs).
pub const L2_BYTES: usize = 2 * 1024 * 1024;

/// Whether `elems` elements of `T` fit in [`L2_BYTES`]. BatchNorm's channels-first training
/// forward and the channels-first backward prefetch a unit's output (a channel's `y`, a
/// unit's `dx`) during its statistics or sums pass only when the unit's tensors fit in L2
/// together: past that, the output lines are evicted before the apply writes them, and the
/// prefetch is one more read of the whole output from memory. The standard cases' units fit
/// (BatchNorm2d 32x64x56x56: `x` and `y` of a channel 784 KiB, with `dy` 1.2 MiB); one 1 GiB f32
/// tensor (`normkit bench --min-elements 268435456`: 1338x64x56x56, 16 MiB per channel) ran
/// BatchNorm2d NCHW training 1.28–1.33x faster without the prefetch (docs/perf/cpu.md, round
/// 14).
#[inline(always)]
pub const fn fits_l2<T>(elems: usize) -> bool {
    elems.saturating_mul(std::mem::size_of::<T>()) <= L2_BYTES
}

/// How far ahead of its reads the statistics pass over a long run prefetches the input
/// ([`input_ahead`]): 1 KiB, 16 lines.
pub const AHEAD_BYTES: usize = 1024;

/// The elements of a block of consecutive runs of `len` elements (the runs one after the other
/// in memory) that the statistics pass over run `r` prefetches, one line per line it reads
/// (`moments::dev_sums_prefetching`), as a range into the block (clamp it to the block):
///
/// * the whole next run when this run's input and output and the next run's input fit in L1
///   together ([`fits_l1`]: runs of up to 2730 f32 or 5461 bf16, e.g. LayerNorm rows of 768
///   or 1024): the next run is in L1 when its pass starts;
/// * otherwise the input [`AHEAD_BYTES`] ahead of the pass, so only the end of the pass
///   reaches into the next run. A whole 32 KiB GroupNorm group prefetched during the current
///   one's pass evicted from L1 the lines that the apply then read again. Same-run A/Bs (f32,
///   alternating processes, round 13): GroupNorm NCHW forward 1.07–1.10x at one thread and
///   1.04–1.05x at two with a scratch switch in one binary (256 bytes to 2 KiB ahead all
///   gained 1.04–1.09x), 1.04–1.08x / 1.03x against the previous build; LayerNorm 4096x4096
///   1.03–1.06x / 1.10–1.21x; InstanceNorm 64x64 planes 1.02x / 0.99–1.02x. LayerNorm rows of
///   768 f32 lose with it (0.93x at 256 elements ahead), hence the whole next run where it
///   fits.
#[inline(always)]
pub const fn input_ahead<T>(r: usize, len: usize) -> std::ops::Range<usize> {
    let start = if fits_l1::<T>(3 * len) {
        (r + 1) * len
    } else {
        r * len + AHEAD_BYTES / std::mem::size_of::<T>()
    };
    start..start + len
}

/// Runs of outputs shorter than this many bytes are not split at a line boundary
/// ([`store_ranges`]): the split's second loop entry costs more than the straddling stores.
pub const MIN_SPLIT_BYTES: usize = 16 * LINE;

/// The ranges `0..k` and `k..len` of a run of `len` outputs starting at `y[0]` (`len` at most
/// `y.len()`), `k` being the first element on a [`LINE`] boundary (`0` for a run shorter than
/// [`MIN_SPLIT_BYTES`] or of elements narrower than 4 bytes, `len` when no element is on
/// one). A vector loop over the second range stores whole lines; one over an unsplit run whose
/// start is off a line boundary (a `Vec<f32>` from the system allocator starts 16 bytes past a
/// page) makes every 64-byte store straddle two lines: GroupNorm forward f32 1.11x / 1.07x
/// (1 / 2 threads) with the split (docs/perf/cpu.md, round 11). f16/bf16 outputs are stored
/// 32 bytes at a time after the conversion, so only half of them straddle; not split (0.98x
/// measured). The split changes no result: the loops are elementwise.
#[inline(always)]
pub fn store_ranges<T>(y: &[T], len: usize) -> [std::ops::Range<usize>; 2] {
    let len = len.min(y.len());
    let size = std::mem::size_of::<T>();
    let k = if size < 4 || len * size < MIN_SPLIT_BYTES {
        0
    } else {
        y.as_ptr().align_offset(LINE).min(len)
    };
    [0..k, k..len]
}

/// Whether prefetching a pass's output pays for element type `T`: for 4- and 8-byte elements
/// (f32 BatchNorm NCHW train / backward 1.04–1.36x in same-run A/Bs); f16/bf16 measured
/// 0.91–1.05x (round 9, as round 6's touch of the output).
#[inline(always)]
pub const fn output_pays<T>() -> bool {
    std::mem::size_of::<T>() >= 4
}

/// Whether a pass prefetches the input of the unit it works on next (the next run or plane)
/// as well as its own output: not for 4- and 8-byte elements on AMD Zen 4
/// ([`super::simd::split_512`]), where `perf annotate` put about half the samples of such
/// passes right after their `prefetcht0`s (waiting for a free miss buffer) and the hardware
/// prefetcher follows the runs there; bf16 (one line per 32 elements) keeps them, as do other
/// CPUs (the Xeon of rounds 8–16 measured them as a gain). Same-run A/Bs on the Zen 4 VM,
/// alternating processes (docs/perf/cpu.md, rounds 18 and 19), f32:
///
/// * the channels-first backward's sums pass (`backward::unit_grad`: the next plane's `x` and
///   `dy`): GroupNorm NCHW bwd 1.34x at 1 and at 2 threads, BatchNorm2d NCHW bwd 1.18x and
///   1.08x; f64 1.00–1.14x; bf16 without them 0.89–0.99x;
/// * the fused forward's statistics pass (`fused_runs`: the next run's `x`, its own `y` still
///   prefetched): LayerNorm 1.10–1.34x at 1 thread and 1.01–1.10x at 2, InstanceNorm2d
///   1.27x / 1.21x, GroupNorm NCHW 1.10x / 1.06x; bf16 without it 0.90–1.11x.
#[inline]
pub fn next_input_pays<T>() -> bool {
    std::mem::size_of::<T>() < 4 || !super::simd::split_512()
}

/// Bytes per page (x86_64 and the common aarch64 configurations).
pub const PAGE: usize = 4096;

/// Whether the LayerNorm backward's in-cache apply of row `r` prefetches row `r + 1`'s `x`,
/// `dy` and `dx` (`backward::layer_norm_grad_apply`): wherever [`next_input_pays`], and for
/// rows of a page or more. Rows shorter than a page of 4- and 8-byte elements on AMD Zen 4
/// leave the next row to the hardware prefetcher. Same-run A/B on the Zen 4 VM (f32, 6 Mi
/// elements per tensor, alternating processes, 6 rounds, docs/perf/cpu.md round 23), without
/// against with the prefetch: 512–896 columns 1.11–1.23x at 1 and at 2 threads; 1024 columns
/// 0.97x / 1.08x; 1280–4096 columns 0.87–1.00x; bf16 (where it pays) 0.74–0.87x without it.
#[inline]
pub fn next_row_pays<T>(cols: usize) -> bool {
    next_input_pays::<T>() || cols.saturating_mul(std::mem::size_of::<T>()) >= PAGE
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
    fn the_next_row_is_prefetched_where_the_next_input_is_or_rows_are_a_page_long() {
        for cols in [0, 1, 512, 1023, 1024, 4096] {
            // 2-byte elements prefetch the next row on every CPU, at every width
            assert!(next_row_pays::<half::bf16>(cols), "bf16, {cols} columns");
            assert_eq!(
                next_row_pays::<f32>(cols),
                next_input_pays::<f32>() || cols >= 1024,
                "f32, {cols} columns"
            );
            assert_eq!(
                next_row_pays::<f64>(cols),
                next_input_pays::<f64>() || cols >= 512,
                "f64, {cols} columns"
            );
        }
    }

    #[test]
    fn l2_fit_counts_bytes() {
        assert!(fits_l2::<f32>(512 * 1024) && !fits_l2::<f32>(512 * 1024 + 1));
        assert!(fits_l2::<half::bf16>(1024 * 1024) && !fits_l2::<half::bf16>(1024 * 1024 + 1));
        // the standard BatchNorm2d channel's x and y fit; a 1338-sample one's do not
        assert!(fits_l2::<f32>(2 * 32 * 3136) && !fits_l2::<f32>(2 * 1338 * 3136));
        assert!(!fits_l2::<f32>(usize::MAX));
    }

    #[test]
    fn lines_per_element_type() {
        assert_eq!(line_elems::<f32>(), 16);
        assert_eq!(line_elems::<half::bf16>(), 32);
        assert_eq!(line_elems::<f64>(), 8);
        assert_eq!(line_elems::<[u8; 128]>(), 1);
        assert_eq!(line_elems::<()>(), 1);
    }

    #[test]
    fn l1_budget_counts_bytes() {
        assert!(fits_l1::<f32>(2 * 4096)); // LayerNorm 4096 / InstanceNorm 64x64: x and y
        assert!(!fits_l1::<f32>(2 * 8192)); // a 32 KiB GroupNorm group and its output
        assert!(fits_l1::<half::bf16>(2 * 8192));
        assert!(!fits_l1::<f64>(usize::MAX));
    }

    #[test]
    fn input_ahead_is_the_next_run_where_three_fit_in_l1_else_a_kib_ahead() {
        // LayerNorm 768 / 1024 f32 rows: the whole next row
        assert_eq!(input_ahead::<f32>(0, 768), 768..1536);
        assert_eq!(input_ahead::<f32>(5, 1024), 6144..7168);
        // a 32 KiB GroupNorm group, 4096-element f32 rows and planes: 256 f32 ahead
        assert_eq!(input_ahead::<f32>(0, 8192), 256..8448);
        assert_eq!(input_ahead::<f32>(3, 4096), 12544..16640);
        // bf16 rows of 4096 fit three times (24 KiB); a bf16 group of 8192 does not
        assert_eq!(input_ahead::<half::bf16>(1, 4096), 8192..12288);
        assert_eq!(input_ahead::<half::bf16>(1, 8192), 8704..16896);
        assert_eq!(input_ahead::<f64>(2, 2048), 4224..6272);
    }

    #[test]
    fn store_ranges_split_at_the_first_line_boundary() {
        let v = vec![0f32; 1000];
        for start in 0..40 {
            let y = &v[start..];
            for len in [0, 1, 15, 63, 64, 65, 500, 960] {
                let [a, b] = store_ranges(y, len);
                assert_eq!(
                    (a.start, a.end, b.start, b.end),
                    (0, a.end, a.end, len.min(y.len()))
                );
                if len * 4 >= MIN_SPLIT_BYTES {
                    assert!(a.end < 16, "start {start} len {len}: head {}", a.end);
                    assert_eq!((y.as_ptr() as usize + 4 * a.end) % LINE, 0);
                } else {
                    assert_eq!(a.end, 0);
                }
            }
        }
        // a length past the slice is clamped
        assert_eq!(store_ranges(&v[..100], 500)[1].end, 100);
        // 2-byte elements are not split
        let h = vec![half::bf16::ZERO; 1000];
        for start in 0..40 {
            assert_eq!(store_ranges(&h[start..], 900), [0..0, 0..900]);
        }
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
