// group_norm.cu: GroupNorm forward (InstanceNorm = GroupNorm with groups == channels).
//
// View x as (n, c, s) with s = prod(spatial); group g holds channels [g·cg, (g+1)·cg),
// cg = c / groups. Per (n, g): Welford statistics over its cg·s elements (thread -> warp ->
// block, Chan merges in fixed order), then y = (x − μ)·(r·γ_c) + β_c in the same kernel
// (a second read of the group, mostly from L2). One block per (n, g), grid-stride over groups.
//   GroupNorm:    r = 1/sqrt(max(var, 0) + eps)          (clamp_var = 1)
//   InstanceNorm: r = 0 when var == 0 and eps == 0       (zero_var_rule = 1)
// Variants by layout: nchw (each group is one contiguous run of cg·s elements) and nhwc
// (element (n, s, c) at (n·s + s)·c + c; a group is cg channels of every pixel).
// Host preconditions: n, c, s >= 1, groups >= 1 divides c, blockDim.x a multiple of 32.
#include "common/compat.cuh"
#include "common/types.cuh"
#include "common/welford.cuh"
#include "common/params.cuh"

namespace normkit {

// Element offset of the i-th element of group (n, g), 0 <= i < cg·s.
template <bool NHWC>
NK_DEVICE i64 gn_offset(const GroupNormParams& p, i64 n, i64 g, i64 cg, i64 i, i64* channel) {
    if (NHWC) {
        const i64 px = i / cg;
        const i64 cc = g * cg + (i - px * cg);
        *channel = cc;
        return (n * p.s + px) * p.c + cc;
    }
    *channel = g * cg + i / p.s;
    return (n * p.c + g * cg) * p.s + i;
}

template <class S, bool NHWC>
NK_DEVICE void group_norm_fwd(const GroupNormParams p) {
    typedef typename Traits<S>::C C;
    __shared__ WelfordSmem<C> smem;
    const S* x = static_cast<const S*>(p.x);
    S* y = static_cast<S*>(p.y);
    const C* w = static_cast<const C*>(p.weight);
    const C* b = static_cast<const C*>(p.bias);
    const i64 cg = p.c / p.groups;
    const i64 len = cg * p.s;
    const i64 nthreads = blockDim.x;
    for (i64 ng = blockIdx.x; ng < p.n * p.groups; ng += gridDim.x) {
        const i64 n = ng / p.groups;
        const i64 g = ng - n * p.groups;
        Welford<C> acc = welford_empty<C>();
        for (i64 i = threadIdx.x; i < len; i += nthreads) {
            i64 ch;
            const i64 off = gn_offset<NHWC>(p, n, g, cg, i, &ch);
            welford_push(acc, Traits<S>::load(x[off]));
        }
        acc = block_all_reduce_welford(acc, smem);
        const C mean = acc.mean;
        const C rstd = rstd_from_m2<C>(acc.m2, len, p.eps, p.clamp_var != 0, p.zero_var_rule != 0);
        for (i64 i = threadIdx.x; i < len; i += nthreads) {
            i64 ch;
            const i64 off = gn_offset<NHWC>(p, n, g, cg, i, &ch);
            const C scale = w ? rstd * w[ch] : rstd;
            const C shift = b ? b[ch] : (C)0;
            y[off] = Traits<S>::store((Traits<S>::load(x[off]) - mean) * scale + shift);
        }
        if (threadIdx.x == 0) {
            if (p.mean) static_cast<C*>(p.mean)[ng] = mean;
            if (p.rstd) static_cast<C*>(p.rstd)[ng] = rstd;
        }
        __syncthreads();  // in place: all reads of this group finish before the next group
    }
}

}  // namespace normkit

using namespace normkit;

NK_ENTRY(group_norm_fwd_nchw_f32, GroupNormParams, group_norm_fwd<float, false>)
NK_ENTRY(group_norm_fwd_nchw_f64, GroupNormParams, group_norm_fwd<double, false>)
NK_ENTRY(group_norm_fwd_nchw_f16, GroupNormParams, group_norm_fwd<f16, false>)
NK_ENTRY(group_norm_fwd_nchw_bf16, GroupNormParams, group_norm_fwd<bf16, false>)
NK_ENTRY(group_norm_fwd_nhwc_f32, GroupNormParams, group_norm_fwd<float, true>)
NK_ENTRY(group_norm_fwd_nhwc_f64, GroupNormParams, group_norm_fwd<double, true>)
NK_ENTRY(group_norm_fwd_nhwc_f16, GroupNormParams, group_norm_fwd<f16, true>)
NK_ENTRY(group_norm_fwd_nhwc_bf16, GroupNormParams, group_norm_fwd<bf16, true>)
