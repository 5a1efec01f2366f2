//! Shared helpers of the integration tests: a seeded RNG, tolerances and `assert_close`, the
//! golden-fixture loader (`golden`) and an independent float64 reference (`reference`).
#![allow(dead_code)]

pub mod golden;
pub mod reference;

use std::fmt::Write as _;

/// SplitMix64: a tiny seeded generator (no extra crates).
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
    pub seed: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed, seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn normal_vec(&mut self, n: usize, mean: f64, std: f64) -> Vec<f64> {
        (0..n).map(|_| mean + std * self.normal()).collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `|got − expected| ≤ atol + rtol·|expected|`; NaN matches NaN; infinities must be equal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    pub rtol: f64,
    pub atol: f64,
}

impl Tol {
    pub const fn new(rtol: f64, atol: f64) -> Tol {
        Tol { rtol, atol }
    }

    pub fn scaled(self, k: f64) -> Tol {
        Tol::new(self.rtol * k, self.atol * k)
    }

    pub fn ok(&self, got: f64, exp: f64) -> bool {
        if exp.is_nan() || got.is_nan() {
            return exp.is_nan() && got.is_nan();
        }
        if exp.is_infinite() || got.is_infinite() {
            return got == exp;
        }
        (got - exp).abs() <= self.atol + self.rtol * exp.abs()
    }
}

/// Asserts that `got` and `expected` agree elementwise within `tol`; on failure reports the
/// first mismatches (index, got, expected, abs and rel diff), their count, the context and seed.
#[track_caller]
pub fn assert_close(got: &[f64], expected: &[f64], tol: Tol, context: &str, seed: Option<u64>) {
    if let Err(msg) = check_close(got, expected, tol, context, seed) {
        panic!("{msg}");
    }
}

/// Non-panicking form of [`assert_close`].
pub fn check_close(
    got: &[f64],
    expected: &[f64],
    tol: Tol,
    context: &str,
    seed: Option<u64>,
) -> Result<(), String> {
    let seed_txt = seed.map_or(String::new(), |s| format!(" (seed {s:#x})"));
    if got.len() != expected.len() {
        return Err(format!(
            "{context}{seed_txt}: length mismatch: got {} values, expected {}",
            got.len(),
            expected.len()
        ));
    }
    let mut bad = 0usize;
    let mut report = String::new();
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        if !tol.ok(g, e) {
            bad += 1;
            if bad <= 8 {
                let abs = (g - e).abs();
                let rel = abs / e.abs().max(f64::MIN_POSITIVE);
                let _ = writeln!(
                    report,
                    "  [{i}] got {g:e} expected {e:e} abs diff {abs:.3e} rel diff {rel:.3e}"
                );
            }
        }
    }
    if bad == 0 {
        return Ok(());
    }
    Err(format!(
        "{context}{seed_txt}: {bad} of {} values outside rtol {:e} atol {:e}; first mismatches:\n{report}",
        got.len(),
        tol.rtol,
        tol.atol
    ))
}

/// Maximum relative error `|got − exp| / max(|exp|, floor)`.
pub fn max_rel_err(got: &[f64], expected: &[f64], floor: f64) -> f64 {
    got.iter()
        .zip(expected)
        .map(|(g, e)| (g - e).abs() / e.abs().max(floor))
        .fold(0.0, f64::max)
}

/// Logical row-major index → offset in a channels-last buffer of `shape` (rank ≥ 3;
/// channels innermost, then the spatial dims in order, batch outermost).
pub fn channels_last_offset(shape: &[usize], logical: usize) -> usize {
    let r = shape.len();
    let mut rem = logical;
    let mut idx = vec![0usize; r];
    for d in (0..r).rev() {
        idx[d] = rem % shape[d];
        rem /= shape[d];
    }
    // channels-last dim order: 0, 2, 3, ..., r-1, 1
    let order: Vec<usize> = std::iter::once(0)
        .chain(2..r)
        .chain(std::iter::once(1))
        .collect();
    let mut off = 0;
    for &d in &order {
        off = off * shape[d] + idx[d];
    }
    off
}

/// Permutes logical row-major values into channels-last storage order.
pub fn to_channels_last(shape: &[usize], logical: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; logical.len()];
    for (i, v) in logical.iter().enumerate() {
        out[channels_last_offset(shape, i)] = *v;
    }
    out
}

/// Inverse of [`to_channels_last`].
pub fn from_channels_last(shape: &[usize], stored: &[f64]) -> Vec<f64> {
    (0..stored.len())
        .map(|i| stored[channels_last_offset(shape, i)])
        .collect()
}
