//! Round 30 (docs/perf/cpu.md): LocalResponseNorm bf16 with explicit AVX-512 (`unsafe`, scratch only,
//! never part of normkit): `kv` today's plane loop in intrinsics, exact or `vrsqrt14ps` + one Newton step per
//! root (d^-1/2, then (sqrt d)^-1/2); `kw::<U>` interior channels with U chunks of 16 side by side.
//! Harness: lrn-bf16-blocked.rs with this file as `mod simd`, its kernel list replaced by `kv`/`kw`
//! wrappers and `C`/`S` read from the environment (channels, plane size); runs
//! `C=96 S=256 ONLY=w4 ./lrnp 1 1 20001` (RUSTFLAGS as in lrn-bf16-blocked.rs).
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn ld_bf(p: *const u16) -> __m512 {
    unsafe { _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)), 16)) }
}
#[inline(always)]
unsafe fn st_bf(p: *mut u16, v: __m512) {
    unsafe {
        let b = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
        let r = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), lsb);
        let nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        let r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(b, _mm512_set1_epi32(0x0040_0000)));
        _mm256_storeu_si256(p as *mut __m256i, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
    }
}
/// d^-3/4 by rsqrt14 + one Newton per root
#[inline(always)]
unsafe fn pow34(d: __m512) -> __m512 {
    unsafe {
        let half = _mm512_set1_ps(0.5);
        let three_half = _mm512_set1_ps(1.5);
        let r0 = _mm512_rsqrt14_ps(d);
        // r = r0*(1.5 - 0.5*d*r0*r0)
        let t = _mm512_mul_ps(_mm512_mul_ps(d, half), r0);
        let r = _mm512_mul_ps(r0, _mm512_fnmadd_ps(t, r0, three_half));
        let s = _mm512_mul_ps(d, r); // sqrt d
        let u0 = _mm512_rsqrt14_ps(s);
        let t = _mm512_mul_ps(_mm512_mul_ps(s, half), u0);
        let u = _mm512_mul_ps(u0, _mm512_fnmadd_ps(t, u0, three_half));
        _mm512_mul_ps(r, u)
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub unsafe fn kv(x: &[u16], y: &mut [u16], c: usize, s: usize, scale: f32, k: f32, exact: bool) { unsafe { kvr(x, y, c, s, scale, k, exact, 0..c) } }
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub unsafe fn kvr(x: &[u16], y: &mut [u16], c: usize, s: usize, scale: f32, k: f32, exact: bool, chans: std::ops::Range<usize>) {
    unsafe {
        let vs = _mm512_set1_ps(scale);
        let vk = _mm512_set1_ps(k);
        let lo_ok = _mm512_set1_ps(1e-18);
        let hi_ok = _mm512_set1_ps(1e18);
        for ci in chans {
            let lo = ci.saturating_sub(2);
            let hi = (ci + 2).min(c - 1);
            let xp = x.as_ptr().add(ci * s);
            let yp = y.as_mut_ptr().add(ci * s);
            let full = s - s % 16;
            let mut i = 0;
            while i < full {
                let mut acc;
                if hi - lo == 4 {
                    let b = x.as_ptr().add(lo * s + i);
                    let v0 = ld_bf(b); let v1 = ld_bf(b.add(s)); let v2 = ld_bf(b.add(2 * s)); let v3 = ld_bf(b.add(3 * s)); let v4 = ld_bf(b.add(4 * s));
                    acc = _mm512_mul_ps(v0, v0);
                    acc = _mm512_fmadd_ps(v1, v1, acc);
                    acc = _mm512_fmadd_ps(v2, v2, acc);
                    acc = _mm512_fmadd_ps(v3, v3, acc);
                    acc = _mm512_fmadd_ps(v4, v4, acc);
                } else {
                acc = _mm512_setzero_ps();
                for w in lo..=hi {
                    let v = ld_bf(x.as_ptr().add(w * s + i));
                    acc = _mm512_fmadd_ps(v, v, acc);
                }
                }
                let d = _mm512_fmadd_ps(acc, vs, vk);
                let xv = ld_bf(xp.add(i));
                let out = if exact {
                    let r = _mm512_sqrt_ps(d);
                    _mm512_div_ps(xv, _mm512_mul_ps(r, _mm512_sqrt_ps(r)))
                } else {
                    let ok = _mm512_cmp_ps_mask(d, lo_ok, _CMP_GE_OQ) & _mm512_cmp_ps_mask(d, hi_ok, _CMP_LE_OQ);
                    if ok == 0xffff {
                        _mm512_mul_ps(xv, pow34(d))
                    } else {
                        let r = _mm512_sqrt_ps(d);
                        _mm512_div_ps(xv, _mm512_mul_ps(r, _mm512_sqrt_ps(r)))
                    }
                };
                st_bf(yp.add(i), out);
                i += 16;
            }
            for i in full..s {
                let mut a = 0f32;
                for w in lo..=hi { let v = crate::b2f(x[w * s + i]); a += v * v; }
                y[ci * s + i] = crate::f2b(crate::div34(crate::b2f(x[ci * s + i]), a * scale + k));
            }
        }
    }
}

#[inline(always)]
unsafe fn sq5(b: *const u16, s: usize) -> __m512 {
    unsafe {
        let v0 = ld_bf(b); let v1 = ld_bf(b.add(s)); let v2 = ld_bf(b.add(2 * s)); let v3 = ld_bf(b.add(3 * s)); let v4 = ld_bf(b.add(4 * s));
        // same order as acc += v*v sequentially: ((((v0²+v1²)+v2²)+v3²)+v4²)
        let a = _mm512_fmadd_ps(v1, v1, _mm512_mul_ps(v0, v0));
        let a = _mm512_fmadd_ps(v2, v2, a);
        let a = _mm512_fmadd_ps(v3, v3, a);
        _mm512_fmadd_ps(v4, v4, a)
    }
}

/// interior channels: U chunks of 16 side by side
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub unsafe fn kw<const U: usize>(x: &[u16], y: &mut [u16], c: usize, s: usize, scale: f32, k: f32, exact: bool) {
    unsafe {
        let vs = _mm512_set1_ps(scale);
        let vk = _mm512_set1_ps(k);
        let lo_ok = _mm512_set1_ps(1e-18);
        let hi_ok = _mm512_set1_ps(1e18);
        for ci in 0..c {
            let lo = ci.saturating_sub(2);
            let hi = (ci + 2).min(c - 1);
            if hi - lo != 4 {
                kvr(x, y, c, s, scale, k, exact, ci..ci + 1);
                continue;
            }
            let xb = x.as_ptr().add(lo * s);
            let xp = x.as_ptr().add(ci * s);
            let yp = y.as_mut_ptr().add(ci * s);
            let step = 16 * U;
            let full = s - s % step;
            let mut i = 0;
            while i < full {
                let mut d = [_mm512_setzero_ps(); U];
                let mut xv = [_mm512_setzero_ps(); U];
                for u in 0..U { d[u] = _mm512_fmadd_ps(sq5(xb.add(i + 16 * u), s), vs, vk); }
                for u in 0..U { xv[u] = ld_bf(xp.add(i + 16 * u)); }
                let mut out = [_mm512_setzero_ps(); U];
                if exact {
                    for u in 0..U { let r = _mm512_sqrt_ps(d[u]); out[u] = _mm512_div_ps(xv[u], _mm512_mul_ps(r, _mm512_sqrt_ps(r))); }
                } else {
                    let mut ok = 0xffffu16;
                    for u in 0..U { ok &= _mm512_cmp_ps_mask(d[u], lo_ok, _CMP_GE_OQ) & _mm512_cmp_ps_mask(d[u], hi_ok, _CMP_LE_OQ); }
                    if ok == 0xffff {
                        for u in 0..U { out[u] = _mm512_mul_ps(xv[u], pow34(d[u])); }
                    } else {
                        for u in 0..U { let r = _mm512_sqrt_ps(d[u]); out[u] = _mm512_div_ps(xv[u], _mm512_mul_ps(r, _mm512_sqrt_ps(r))); }
                    }
                }
                for u in 0..U { st_bf(yp.add(i + 16 * u), out[u]); }
                i += step;
            }
            for i in full..s {
                let mut a = 0f32;
                for w in lo..=hi { let v = crate::b2f(x[w * s + i]); a += v * v; }
                y[ci * s + i] = crate::f2b(crate::div34(crate::b2f(x[ci * s + i]), a * scale + k));
            }
        }
    }
}
