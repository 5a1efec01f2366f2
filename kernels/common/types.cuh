// types.cuh: storage types and their compute types, with normkit's own f16/bf16 <-> f32
// conversions (NVRTC has no built-in cuda_fp16.h / cuda_bf16.h; design/cuda-infra.md §3.2).
//
// Storage f32 -> compute f32, f64 -> f64, f16/bf16 -> f32. Parameters (weight, bias, running
// statistics) and saved statistics are always in the compute type. Conversions to 16 bits round
// to nearest even and keep NaNs quiet, like the `half` crate on the CPU side.
#pragma once
#include "compat.cuh"

namespace normkit {

struct f16 { unsigned short bits; };
struct bf16 { unsigned short bits; };

NK_DEVICE float f16_to_f32(f16 h) {
    u32 sign = (u32)(h.bits & 0x8000u) << 16;
    u32 exp = (h.bits >> 10) & 0x1fu;
    u32 mant = h.bits & 0x3ffu;
    if (exp == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (mant << 13));
    if (exp == 0u) {
        // zero or subnormal: mant * 2^-24, exact in f32
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

NK_DEVICE f16 f32_to_f16(float f) {
    u32 u = __float_as_uint(f);
    unsigned short sign = (unsigned short)((u >> 16) & 0x8000u);
    u &= 0x7fffffffu;
    f16 out;
    if (u >= 0x7f800000u) {  // inf or NaN (NaN stays quiet)
        out.bits = sign | 0x7c00u | (u > 0x7f800000u ? (0x200u | ((u >> 13) & 0x3ffu)) : 0u);
        return out;
    }
    if (u >= 0x477ff000u) {  // >= 65520 rounds to infinity
        out.bits = sign | 0x7c00u;
        return out;
    }
    if (u < 0x38800000u) {  // below the smallest normal (2^-14): subnormal or zero
        if (u <= 0x33000000u) {  // <= 2^-25 rounds to zero (2^-25 is a tie to even 0)
            out.bits = sign;
            return out;
        }
        u32 e = u >> 23;
        u32 m = (u & 0x7fffffu) | 0x800000u;
        u32 shift = 126u - e;
        u32 r = m >> shift;
        u32 rem = m & ((1u << shift) - 1u);
        u32 half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) r += 1u;
        out.bits = (unsigned short)(sign | r);
        return out;
    }
    u32 r = ((((u >> 23) - 112u)) << 10) | ((u & 0x7fffffu) >> 13);
    u32 rem = u & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r += 1u;
    out.bits = (unsigned short)(sign | r);
    return out;
}

NK_DEVICE float bf16_to_f32(bf16 h) { return __uint_as_float((u32)h.bits << 16); }

NK_DEVICE bf16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    bf16 out;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        out.bits = (unsigned short)((u >> 16) | 0x40u);
        return out;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    out.bits = (unsigned short)(u >> 16);
    return out;
}

template <class S> struct Traits;
// C: the compute type (elementwise math, parameters, saved statistics). A: the accumulator of
// statistics that span many elements (f64 for f32 input, as the CPU op's; C otherwise).
template <> struct Traits<float> {
    typedef float C;
    typedef double A;
    static __device__ __forceinline__ C load(float v) { return v; }
    static __device__ __forceinline__ float store(C v) { return v; }
};
template <> struct Traits<double> {
    typedef double C;
    typedef double A;
    static __device__ __forceinline__ C load(double v) { return v; }
    static __device__ __forceinline__ double store(C v) { return v; }
};
template <> struct Traits<f16> {
    typedef float C;
    typedef float A;
    static __device__ __forceinline__ C load(f16 v) { return f16_to_f32(v); }
    static __device__ __forceinline__ f16 store(C v) { return f32_to_f16(v); }
};
template <> struct Traits<bf16> {
    typedef float C;
    typedef float A;
    static __device__ __forceinline__ C load(bf16 v) { return bf16_to_f32(v); }
    static __device__ __forceinline__ bf16 store(C v) { return f32_to_bf16(v); }
};

// Finite test that needs no math header (false for inf and NaN).
NK_DEVICE bool nk_isfinite(float v) { return v - v == 0.0f; }
NK_DEVICE bool nk_isfinite(double v) { return v - v == 0.0; }
NK_DEVICE float nk_sqrt(float v) { return sqrtf(v); }
NK_DEVICE double nk_sqrt(double v) { return sqrt(v); }
NK_DEVICE float nk_pow(float a, float b) { return powf(a, b); }
NK_DEVICE double nk_pow(double a, double b) { return pow(a, b); }

// A mean held as the unevaluated sum hi + lo of two compute values (the CPU op's `Centre`,
// backend/cpu/moments.rs): hi is the mean rounded to C (the saved mean), lo the remainder.
// `(x − hi) − lo` keeps the mean's precision: x − hi is exact near the mean (Sterbenz), lo is
// tiny. An f32 mean of 1e4 alone is off by up to 4.9e-4, a twentieth of a spread of 1e-2.
template <class C> struct Centre {
    C hi;
    C lo;
    NK_MEMBER C centre(C x) const { return (x - hi) - lo; }
};

// The shift of a run's statistics (sums of x − shift, at the data's spread instead of its
// offset): the run's first element, or 0 where that is not finite (the sums then see the data
// itself, so NaN and ±inf propagate as without a shift).
template <class C> NK_DEVICE C shift_of(C first) { return nk_isfinite(first) ? first : (C)0; }

// shift + dm (dm: the mean of x − shift) as a Centre: hi = fl(shift + dm), lo = the exact
// rounding error of that sum (TwoSum; no products, so no FMA contraction), wherever the shift
// lies relative to the mean. A non-finite mean has no low part (lo = 0, as `Centre::of`).
template <class C> NK_DEVICE Centre<C> centre_of(C shift, C dm) {
    Centre<C> m;
    m.hi = shift + dm;
    m.lo = (C)0;
    if (nk_isfinite(m.hi)) {
        const C b = m.hi - shift;
        m.lo = (shift - (m.hi - b)) + (dm - b);
    }
    return m;
}

// The backward's recovery of a saved mean's rounding (the CPU backward's `recovered_centre` /
// `recovered_centres`, backend/cpu/backward.rs): where |hi|·r >= 64 (RECOVER_LIMIT; NaN is
// not), the rounding δ of an f32 saved mean (up to 4.9e-4 at 1e4) is a sizeable part of
// x − mean, and every x̂ would be off by δ·r. The caller then sums dm = Σ(x − hi)/count over
// the statistic's elements and centres on recentred(hi, dm): hi + dm as hi + lo where hi is
// that sum's rounding (the forward saved it), else the saved mean as given (statistics from
// elsewhere).
template <class C> NK_DEVICE bool rounding_matters(C hi, C r) {
    const double t = (double)hi * (double)r;
    return t >= 64.0 || t <= -64.0;
}

template <class C> NK_DEVICE Centre<C> recentred(C hi, C dm) {
    Centre<C> m = centre_of(hi, dm);
    if (m.hi != hi) {
        m.hi = hi;
        m.lo = (C)0;
    }
    return m;
}

// Inverse standard deviation from m2 = Σ(x−μ)² over `count` elements, in CPU order
// (backend/cpu/moments.rs `finish`): var = C(m2)/count (biased), optional clamp of a negative
// var at 0 (max(var, 0) as PyTorch's C++ computes it: a NaN variance stays NaN),
// r = C(1/sqrt(double(var) + eps)); with `zero_var_rule`, var == 0 and eps == 0 give r = 0
// (PyTorch's batch-norm kernel rule, reached through InstanceNorm).
template <class C>
NK_DEVICE C rstd_from_m2(C m2, i64 count, double eps, bool clamp, bool zero_var_rule) {
    C var = (C)((double)m2 / (double)count);
    if (clamp && var < (C)0) var = (C)0;
    if (zero_var_rule && var == (C)0 && eps == 0.0) return (C)0;
    return (C)(1.0 / sqrt((double)var + eps));
}

// Running-statistic update `f·new + (1−f)·old` in the parameter type (ops::ema).
template <class C> NK_DEVICE C ema(C old, C fresh, double f) {
    C fc = (C)f;
    return fc * fresh + ((C)1 - fc) * old;
}

// Writes (or, with `accumulate`, adds in f64 into) a parameter gradient in the parameter type,
// like ops::backward's `store`; a null `out` is an absent gradient.
template <class C> NK_DEVICE void store_param_grad(void* out, i64 i, double v, int accumulate) {
    if (!out) return;
    C* o = static_cast<C*>(out);
    o[i] = accumulate ? (C)((double)o[i] + v) : (C)v;
}

}  // namespace normkit
