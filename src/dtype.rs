//! Element types: the four storage dtypes and the arithmetic types they compute in.
//!
//! | storage | reductions accumulate in | elementwise math and statistics |
//! |---|---|---|
//! | `f32` | `f64` (as PyTorch's CPU kernels do) | `f32` |
//! | `f64` | `f64` | `f64` |
//! | `f16` | `f32` | `f32` |
//! | `bf16` | `f32` | `f32` |

use half::{bf16, f16};
use std::fmt;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

/// The dtype of a tensor's elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The dtype that saved statistics (mean, inverse std) use for this input dtype:
    /// f64 for f64 input, f32 otherwise.
    pub fn stat_dtype(self) -> DType {
        match self {
            DType::F64 => DType::F64,
            _ => DType::F32,
        }
    }

    /// Whether the dtype is a 16-bit float (f16 or bf16).
    pub fn is_low_precision(self) -> bool {
        matches!(self, DType::F16 | DType::BF16)
    }

    /// Short lowercase name, as used in kernel names and benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Parses `f32`, `f64`, `f16`, `bf16` (and the long names `float32`, ...).
    pub fn parse(s: &str) -> Option<DType> {
        match s {
            "f32" | "float32" | "float" => Some(DType::F32),
            "f64" | "float64" | "double" => Some(DType::F64),
            "f16" | "float16" | "half" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            _ => None,
        }
    }

    pub const ALL: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A real arithmetic type the kernels compute in (`f32` or `f64`).
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + fmt::Debug
    + Default
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn from_usize(v: usize) -> Self;
    fn sqrt(self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn max(self, other: Self) -> Self;
    fn is_nan(self) -> bool;
    fn is_finite(self) -> bool;
    /// Wraps a vector of this type into an owned [`crate::Buffer`].
    fn into_buffer(v: Vec<Self>) -> crate::tensor::Buffer;
}

macro_rules! impl_real {
    ($t:ty, $variant:ident) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_usize(v: usize) -> Self {
                v as $t
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn into_buffer(v: Vec<Self>) -> crate::tensor::Buffer {
                crate::tensor::Buffer::$variant(v)
            }
        }
    };
}
impl_real!(f32, F32);
impl_real!(f64, F64);

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A storage element type. Sealed: implemented for `f32`, `f64`, `f16` and `bf16` only.
pub trait Element:
    Copy + Send + Sync + Default + fmt::Debug + PartialEq + 'static + sealed::Sealed
{
    const DTYPE: DType;
    /// Elementwise math and statistics (f32 for f16/bf16/f32, f64 for f64).
    type Compute: Real;
    /// Reduction accumulator (f64 for f32/f64, f32 for f16/bf16).
    type Acc: Real;
    fn to_compute(self) -> Self::Compute;
    fn from_compute(v: Self::Compute) -> Self;
    fn to_acc(self) -> Self::Acc;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    /// bf16 only: the slice as 32-bit words of two elements each (the even one in the low
    /// half; [`convert::bf16_pair_even`], [`convert::bf16_pair_odd`], [`convert::bf16_pair`]),
    /// for loops that convert two lanes per word; `None` for other types and for a slice that is
    /// not 4-byte aligned or has an odd length.
    #[inline(always)]
    fn bf16_words(s: &[Self]) -> Option<&[u32]> {
        let _ = s;
        None
    }
    /// [`Element::bf16_words`] of a mutable slice.
    #[inline(always)]
    fn bf16_words_mut(s: &mut [Self]) -> Option<&mut [u32]> {
        let _ = s;
        None
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    type Compute = f32;
    type Acc = f64;
    #[inline(always)]
    fn to_compute(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_compute(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn to_acc(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    type Compute = f64;
    type Acc = f64;
    #[inline(always)]
    fn to_compute(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_compute(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_acc(self) -> f64 {
        self
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// Branch-free conversions between the 16-bit floats and f32, bit-identical to `half`'s
/// (round to nearest even, NaN kept quiet with its payload's high bits) but written with
/// integer and select operations only, so that loops over slices of them vectorise (`half`'s
/// per-element branches and, for f16, its per-call CPU-feature check do not).
pub(crate) mod convert {
    /// bf16 bits → f32: the bits are the high half of an f32. Unlike `half`, a signalling
    /// NaN stays signalling (no select per element); the first arithmetic operation on it
    /// quiets it, and every use in the kernels is arithmetic, so no result changes.
    #[inline(always)]
    pub fn bf16_to_f32(h: u16) -> f32 {
        f32::from_bits((h as u32) << 16)
    }

    /// f32 → bf16 bits, round to nearest even (overflow to ±∞); a NaN stays a quiet NaN.
    #[inline(always)]
    pub fn f32_to_bf16(v: f32) -> u16 {
        (bf16_rounded(v) >> 16) as u16
    }

    /// [`f32_to_bf16`] in the high half of a 32-bit word (the low half is left over from the
    /// rounding): the form [`bf16_pair`] packs without a shift for the odd element.
    #[inline(always)]
    pub fn bf16_rounded(v: f32) -> u32 {
        let x = v.to_bits();
        // wrapping: a negative NaN (x near u32::MAX) overflows; its result is not used
        let rounded = x.wrapping_add(0x7FFF + ((x >> 16) & 1));
        // one unordered compare (vcmpunordps) rather than mask, max and compare on the bits
        if v.is_nan() { x | 0x0040_0000 } else { rounded }
    }

    /// The even (first) element of two bf16 in one little-endian 32-bit word
    /// ([`crate::dtype::Element::bf16_words`]) as f32: one shift, where widening a lane of
    /// 16-bit elements takes a zero-extension and a shift.
    #[inline(always)]
    pub fn bf16_pair_even(w: u32) -> f32 {
        f32::from_bits(w << 16)
    }

    /// The odd (second) element of a bf16 word as f32: one mask.
    #[inline(always)]
    pub fn bf16_pair_odd(w: u32) -> f32 {
        f32::from_bits(w & 0xFFFF_0000)
    }

    /// Two f32 rounded to bf16 ([`f32_to_bf16`]'s bits) and packed into one word, `even` in
    /// the low half: a shift and a mask-merge per two lanes, and whole-vector stores (Zen 4's
    /// narrowing `vpmovdw` store was the bf16 apply loops' bottleneck).
    #[inline(always)]
    pub fn bf16_pair(even: f32, odd: f32) -> u32 {
        (bf16_rounded(odd) & 0xFFFF_0000) | (bf16_rounded(even) >> 16)
    }

    /// f16 bits → f32 (exact; subnormals through one exact multiplication by 2¹¹²).
    #[inline(always)]
    pub fn f16_to_f32(h: u16) -> f32 {
        let h = h as u32;
        let sign = (h & 0x8000) << 16;
        let em = h & 0x7FFF;
        // finite: the exponent and mantissa bits moved into place, rebiased by a multiplication
        let finite = (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits();
        let quiet = if em > 0x7C00 { 0x0040_0000 } else { 0 };
        let special = 0x7F80_0000 | quiet | ((em & 0x03FF) << 13);
        f32::from_bits(sign | if em >= 0x7C00 { special } else { finite })
    }

    /// f32 → f16 bits, round to nearest even (overflow to ±∞, underflow through subnormals); a
    /// NaN stays a quiet NaN with the high bits of its payload.
    #[inline(always)]
    pub fn f32_to_f16(v: f32) -> u16 {
        let x = v.to_bits();
        let sign = (x >> 16) & 0x8000;
        let a = x & 0x7FFF_FFFF;
        // |v| < 2⁻¹⁴: adding 0.5 aligns the 10 subnormal mantissa bits at the bottom (the FPU
        // rounds to nearest even), then the magic's bits are subtracted.
        let magic = 126u32 << 23;
        let sub = (f32::from_bits(a) + f32::from_bits(magic)).to_bits() - magic;
        // normal: rebias the exponent, round to nearest even on bit 13
        let norm = (a
            .wrapping_add((15u32.wrapping_sub(127)) << 23)
            .wrapping_add(0x0FFF + ((a >> 13) & 1)))
            >> 13;
        let nan = 0x7E00 | ((a >> 13) & 0x03FF);
        let r = if a >= 0x4780_0000 {
            // |v| ≥ 65536 (or ∞ / NaN)
            if a > 0x7F80_0000 { nan } else { 0x7C00 }
        } else if a < 0x3880_0000 {
            sub
        } else {
            norm
        };
        (sign | r) as u16
    }
}

macro_rules! impl_half_element {
    ($t:ty, $dt:expr, $to:path, $from:path, $words:expr) => {
        impl Element for $t {
            const DTYPE: DType = $dt;
            type Compute = f32;
            type Acc = f32;
            #[inline(always)]
            fn to_compute(self) -> f32 {
                $to(self.to_bits())
            }
            #[inline(always)]
            fn from_compute(v: f32) -> Self {
                <$t>::from_bits($from(v))
            }
            #[inline(always)]
            fn to_acc(self) -> f32 {
                $to(self.to_bits())
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self.to_f64()
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            #[inline(always)]
            fn bf16_words(s: &[Self]) -> Option<&[u32]> {
                if $words { words(s) } else { None }
            }
            #[inline(always)]
            fn bf16_words_mut(s: &mut [Self]) -> Option<&mut [u32]> {
                if $words { words_mut(s) } else { None }
            }
        }
    };
}
impl_half_element!(
    f16,
    DType::F16,
    convert::f16_to_f32,
    convert::f32_to_f16,
    false
);
impl_half_element!(
    bf16,
    DType::BF16,
    convert::bf16_to_f32,
    convert::f32_to_bf16,
    true
);

/// A slice of 16-bit floats as little-endian 32-bit words of two elements each, the first in
/// the low half; `None` where it is not 4-byte aligned or has an odd length, or on a big-endian
/// target (`bytemuck`'s checked cast: no `unsafe` here).
fn words<H: bytemuck::Pod>(s: &[H]) -> Option<&[u32]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice(s).ok()
    } else {
        None
    }
}

/// [`words`] of a mutable slice.
fn words_mut<H: bytemuck::Pod>(s: &mut [H]) -> Option<&mut [u32]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice_mut(s).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_dtypes_follow_the_decision() {
        assert_eq!(DType::F16.stat_dtype(), DType::F32);
        assert_eq!(DType::BF16.stat_dtype(), DType::F32);
        assert_eq!(DType::F32.stat_dtype(), DType::F32);
        assert_eq!(DType::F64.stat_dtype(), DType::F64);
    }

    #[test]
    fn parse_roundtrips_names() {
        for d in DType::ALL {
            assert_eq!(DType::parse(d.name()), Some(d));
        }
        assert_eq!(DType::parse("int8"), None);
    }

    /// Every 16-bit pattern converts to f32 exactly as `half` converts it (up to a bf16 NaN's
    /// quiet bit).
    #[test]
    fn branch_free_widening_matches_half_exhaustively() {
        for h in 0..=u16::MAX {
            // bf16 signalling NaNs stay signalling (the quiet bit is the only difference)
            let b = convert::bf16_to_f32(h).to_bits();
            let want = bf16::from_bits(h).to_f32().to_bits();
            let nan = f32::from_bits(b).is_nan();
            assert_eq!(b | if nan { 0x0040_0000 } else { 0 }, want, "bf16 {h:#06x}");
            let f = convert::f16_to_f32(h).to_bits();
            assert_eq!(f, f16::from_bits(h).to_f32().to_bits(), "f16 {h:#06x}");
        }
    }

    /// Both narrowing conversions of the f32 with bits `x` agree with `half`'s.
    fn assert_narrowing_matches_half(x: u32) {
        let v = f32::from_bits(x);
        let bf = (convert::f32_to_bf16(v), bf16::from_f32(v).to_bits());
        assert_eq!(bf.0, bf.1, "bf16 of {x:#010x}");
        let h = (convert::f32_to_f16(v), f16::from_f32(v).to_bits());
        assert_eq!(h.0, h.1, "f16 of {x:#010x}");
    }

    /// f32 → bf16/f16 agrees with `half` on every f32 whose low 12 bits follow a pattern that
    /// covers all rounding cases (ties, sticky bits, odd/even), over every exponent and sign.
    #[test]
    fn branch_free_narrowing_matches_half() {
        let lows = [
            0u32, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFF, 0x8000, 0x8001, 0xFFFF,
        ];
        for hi in (0..1u32 << 20).step_by(3) {
            for &low in &lows {
                assert_narrowing_matches_half((hi << 12) | (low & 0x0FFF));
                assert_narrowing_matches_half((hi << 12) ^ low);
            }
        }
        for v in [
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::MIN,
            65504.0,
            65520.0,
            65519.99,
        ] {
            assert_narrowing_matches_half(v.to_bits());
        }
    }

    /// The word form of bf16 (two elements per 32-bit word, the even one low) widens each half
    /// as [`convert::bf16_to_f32`] does and packs each value as [`convert::f32_to_bf16`]
    /// rounds it, on every 16-bit pattern against a spread of partners and rounding cases.
    #[test]
    fn bf16_words_widen_and_pack_as_the_element_conversions() {
        for h in 0..=u16::MAX {
            let partner = h.wrapping_mul(40503) ^ 0x5A5A;
            for w in [
                (h as u32) | ((partner as u32) << 16),
                (partner as u32) | ((h as u32) << 16),
            ] {
                let (e, o) = (convert::bf16_pair_even(w), convert::bf16_pair_odd(w));
                assert_eq!(
                    e.to_bits(),
                    convert::bf16_to_f32(w as u16).to_bits(),
                    "{w:#010x}"
                );
                assert_eq!(
                    o.to_bits(),
                    convert::bf16_to_f32((w >> 16) as u16).to_bits()
                );
            }
            // an f32 whose low 16 bits test the rounding (ties, sticky), high bits from `h`
            let lows = [0u32, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF];
            let v = f32::from_bits(((h as u32) << 16) | lows[h as usize % lows.len()]);
            let u = f32::from_bits(((partner as u32) << 16) | lows[partner as usize % 6]);
            let w = convert::bf16_pair(v, u);
            assert_eq!(w as u16, convert::f32_to_bf16(v), "even of {v:e}");
            assert_eq!((w >> 16) as u16, convert::f32_to_bf16(u), "odd of {u:e}");
            assert_eq!(
                w as u16,
                bf16::from_f32(v).to_bits(),
                "even of {v:e} (half)"
            );
        }
    }

    /// Only bf16 slices of whole aligned words have a word view.
    #[test]
    fn only_aligned_even_bf16_slices_have_words() {
        let backing = [0x3F80_4000u32, 0xC000_0000, 0];
        let b: &[bf16] = bytemuck::cast_slice(&backing);
        assert_eq!(bf16::bf16_words(&b[..4]), Some(&backing[..2]));
        assert_eq!(bf16::bf16_words(&b[1..5]), None);
        assert_eq!(bf16::bf16_words(&b[..3]), None);
        assert_eq!(b[0].to_f32(), 2.0);
        assert_eq!(b[1].to_f32(), 1.0);
        let h: &[f16] = bytemuck::cast_slice(&backing);
        assert_eq!(f16::bf16_words(h), None);
        assert_eq!(f32::bf16_words(&[1.0f32, 2.0]), None);
    }

    /// Every f32 bit pattern (about a minute in release: `cargo test --release -- --ignored`).
    #[test]
    #[ignore = "4 billion inputs: about a minute in release, far longer in CI's debug build"]
    fn branch_free_narrowing_matches_half_exhaustively() {
        for x in 0..=u32::MAX {
            assert_narrowing_matches_half(x);
        }
    }

    #[test]
    fn half_conversions_round_to_nearest() {
        assert_eq!(
            <bf16 as Element>::from_compute(1.0 + 1.0 / 512.0).to_f32(),
            1.0
        );
        assert_eq!(<f16 as Element>::from_compute(65504.0).to_f32(), 65504.0);
        assert!(<f16 as Element>::from_compute(1e6).to_f32().is_infinite());
    }
}
