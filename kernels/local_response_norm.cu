// local_response_norm.cu: LocalResponseNorm forward across channels (spec §8.3):
//   W(c) = [c − ⌊size/2⌋, c + ⌊(size−1)/2⌋] ∩ [0, C)   (even sizes reach one further back)
//   y_c  = x_c / (Σ_{j∈W(c)} x_j² / size · alpha + k)^beta
// The divisor is always `size` (zero padding counts). Squares and sums in the compute type
// (f32 for f16/bf16: no overflow of x·x), in the CPU backend's order (j ascending).
// One thread per element, grid-stride; the window is re-summed per element (size is small),
// so there is no add/subtract drift. Layouts: nchw (channel stride s), nhwc (channel stride 1).
// Host preconditions: n, c, s >= 1, size >= 1; x and y must not overlap (window reads).
#include "common/compat.cuh"
#include "common/types.cuh"
#include "common/params.cuh"

namespace normkit {

template <class S, bool NHWC>
NK_DEVICE void lrn_fwd(const LrnParams p) {
    typedef typename Traits<S>::C C;
    const S* x = static_cast<const S*>(p.x);
    S* y = static_cast<S*>(p.y);
    const i64 total = p.n * p.c * p.s;
    const i64 before = p.size / 2;
    const i64 after = (p.size - 1) / 2;
    const i64 cstride = NHWC ? 1 : p.s;
    const C size = (C)p.size, alpha = (C)p.alpha, beta = (C)p.beta, k = (C)p.k;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (i64)gridDim.x * blockDim.x) {
        const i64 c = NHWC ? i % p.c : (i / p.s) % p.c;
        const i64 lo = c - before < 0 ? 0 : c - before;
        const i64 hi = c + after > p.c - 1 ? p.c - 1 : c + after;
        const S* base = x + (i - c * cstride);
        C acc = (C)0;
        for (i64 j = lo; j <= hi; ++j) {
            const C v = Traits<S>::load(base[j * cstride]);
            acc += v * v;
        }
        const C denom = nk_pow(acc / size * alpha + k, beta);
        y[i] = Traits<S>::store(Traits<S>::load(x[i]) / denom);
    }
}

// ---- Backward ------------------------------------------------------------------------------
// lrn_bwd_{nchw,nhwc}: one thread per element i (channel c), grid-stride, everything recomputed
// from x (no saved scale), in the CPU backend's order:
//   B_j  = Σ_{l∈W(j)} x_l² / size · alpha + k
//   dx_c = dy_c·B_c^(−β) − (2αβ/size)·x_c·Σ_{j∈W'(c)} dy_j·x_j·B_j^(−β−1),
//   W'(c) = [c − ⌊(size−1)/2⌋, c + ⌊size/2⌋] ∩ [0, C)   (the mirrored window)
// O(size²) work per element (size is small); x, dy read through the caches, dx written once.
// Host preconditions: n, c, s >= 1, size >= 1; dx must not overlap x or dy.
template <class S, bool NHWC>
NK_DEVICE typename Traits<S>::C lrn_scale(const S* base, i64 cstride, i64 c, i64 nch, i64 before,
                                          i64 after, typename Traits<S>::C size,
                                          typename Traits<S>::C alpha,
                                          typename Traits<S>::C k) {
    typedef typename Traits<S>::C C;
    const i64 lo = c - before < 0 ? 0 : c - before;
    const i64 hi = c + after > nch - 1 ? nch - 1 : c + after;
    C acc = (C)0;
    for (i64 j = lo; j <= hi; ++j) {
        const C v = Traits<S>::load(base[j * cstride]);
        acc += v * v;
    }
    return acc / size * alpha + k;
}

template <class S, bool NHWC>
NK_DEVICE void lrn_bwd(const LrnBwdParams p) {
    typedef typename Traits<S>::C C;
    const S* x = static_cast<const S*>(p.x);
    const S* dy = static_cast<const S*>(p.dy);
    S* dx = static_cast<S*>(p.dx);
    const i64 total = p.n * p.c * p.s;
    const i64 before = p.size / 2;
    const i64 after = (p.size - 1) / 2;
    const i64 cstride = NHWC ? 1 : p.s;
    const C size = (C)p.size, alpha = (C)p.alpha, beta = (C)p.beta, k = (C)p.k;
    const C coef = (C)(2.0 * p.alpha * p.beta / (double)p.size);
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (i64)gridDim.x * blockDim.x) {
        const i64 c = NHWC ? i % p.c : (i / p.s) % p.c;
        const i64 first = i - c * cstride;
        const S* xb = x + first;
        const S* gb = dy + first;
        const i64 lo = c - after < 0 ? 0 : c - after;
        const i64 hi = c + before > p.c - 1 ? p.c - 1 : c + before;
        C sum = (C)0;
        for (i64 j = lo; j <= hi; ++j) {
            const C bj = lrn_scale<S, NHWC>(xb, cstride, j, p.c, before, after, size, alpha, k);
            const C xj = Traits<S>::load(xb[j * cstride]);
            const C gj = Traits<S>::load(gb[j * cstride]);
            sum += gj * xj * nk_pow(bj, -beta - (C)1);
        }
        const C bc = lrn_scale<S, NHWC>(xb, cstride, c, p.c, before, after, size, alpha, k);
        const C xc = Traits<S>::load(x[i]);
        const C gc = Traits<S>::load(dy[i]);
        dx[i] = Traits<S>::store(gc * nk_pow(bc, -beta) - coef * xc * sum);
    }
}

}  // namespace normkit

using namespace normkit;

NK_ENTRY(lrn_fwd_nchw_f32, LrnParams, lrn_fwd<float, false>)
NK_ENTRY(lrn_fwd_nchw_f64, LrnParams, lrn_fwd<double, false>)
NK_ENTRY(lrn_fwd_nchw_f16, LrnParams, lrn_fwd<f16, false>)
NK_ENTRY(lrn_fwd_nchw_bf16, LrnParams, lrn_fwd<bf16, false>)
NK_ENTRY(lrn_fwd_nhwc_f32, LrnParams, lrn_fwd<float, true>)
NK_ENTRY(lrn_fwd_nhwc_f64, LrnParams, lrn_fwd<double, true>)
NK_ENTRY(lrn_fwd_nhwc_f16, LrnParams, lrn_fwd<f16, true>)
NK_ENTRY(lrn_fwd_nhwc_bf16, LrnParams, lrn_fwd<bf16, true>)
NK_ENTRY(lrn_bwd_nchw_f32, LrnBwdParams, lrn_bwd<float, false>)
NK_ENTRY(lrn_bwd_nchw_f64, LrnBwdParams, lrn_bwd<double, false>)
NK_ENTRY(lrn_bwd_nchw_f16, LrnBwdParams, lrn_bwd<f16, false>)
NK_ENTRY(lrn_bwd_nchw_bf16, LrnBwdParams, lrn_bwd<bf16, false>)
NK_ENTRY(lrn_bwd_nhwc_f32, LrnBwdParams, lrn_bwd<float, true>)
NK_ENTRY(lrn_bwd_nhwc_f64, LrnBwdParams, lrn_bwd<double, true>)
NK_ENTRY(lrn_bwd_nhwc_f16, LrnBwdParams, lrn_bwd<f16, true>)
NK_ENTRY(lrn_bwd_nhwc_bf16, LrnBwdParams, lrn_bwd<bf16, true>)
