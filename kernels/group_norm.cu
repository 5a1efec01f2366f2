// group_norm.cu: GroupNorm forward (InstanceNorm = GroupNorm with groups == channels).
//
// View x as (n, c, s) with s = prod(spatial); group g holds channels [g·cg, (g+1)·cg),
// cg = c / groups. One block per (n, g), grid-stride over
// groups; y = (x − μ)·(r·γ_c) + β_c. Statistics relative to the group's first element x0, μ as
// hi + lo (Centre, types.cuh), as the CPU op's (f32 data of mean 1e4 and spread 1e-2 needs it).
//   nchw  group (n, g) is the contiguous run of cg·s elements at (n·groups + g)·cg·s: a row of
//         row_norm_block (common/row_norm.cuh, the LayerNorm block kernel's body): 16-byte
//         packs, two-pass statistics from registers when the group fits (cg·s <= blockDim.x ·
//         GN_ROW_VALUES; the host sizes the block for that, up to GN_ROW_MAX_THREADS), else
//         three streaming reads; one channel index and one γ/β load per pack when s % N == 0.
//   nhwc  Welford statistics of x − x0 per thread over the group's strided elements (thread ->
//         warp -> block, Chan merges in fixed order), then the apply (a second read, mostly from
//         L2).
//   GroupNorm:    r = 1/sqrt(max(var, 0) + eps)          (clamp_var = 1)
//   InstanceNorm: r = 0 when var == 0 and eps == 0       (zero_var_rule = 1)
// Variants by layout: nchw (each group is one contiguous run of cg·s elements) and nhwc
// (element (n, s, c) at (n·s + s)·c + c; a group is cg channels of every pixel).
// With p.m2, the group's M2 = Σ (x − μ)² goes out too (InstanceNorm's running variance).
// Host preconditions: n, c, s >= 1, groups >= 1 divides c, blockDim.x a multiple of 32.
#include "common/compat.cuh"
#include "common/types.cuh"
#include "common/welford.cuh"
#include "common/reduce.cuh"
#include "common/params.cuh"
#include "common/row_norm.cuh"

namespace normkit {

// Element offset of the i-th element of group (n, g), 0 <= i < cg·s.
template <bool NHWC, class P>
NK_DEVICE i64 gn_offset(const P& p, i64 n, i64 g, i64 cg, i64 i, i64* channel) {
    if (NHWC) {
        const i64 px = i / cg;
        const i64 cc = g * cg + (i - px * cg);
        *channel = cc;
        return (n * p.s + px) * p.c + cc;
    }
    *channel = g * cg + i / p.s;
    return (n * p.c + g * cg) * p.s + i;
}

#define GN_ROW_VALUES 16
#define GN_ROW_MAX_THREADS 512  // launch::GN_ROW_MAX_THREADS
// __launch_bounds__(512, 1): up to 128 registers a thread. With the first argument alone
// ptxas chose 64 for f32 and spilled (kernels_compile test).
#define GN_ROW_BOUNDS GN_ROW_MAX_THREADS, 1

// GroupNorm / InstanceNorm's epilogue for row_norm_block: row = n·groups + g, column j of the
// row is channel g·cg + j / s. A pack within one channel (always when s % N == 0 and the row
// is 16-byte aligned) takes one index division and one γ, β load; a pack across channels
// (s % N != 0) takes them per element.
template <class C> struct GnEpilogue {
    const C* w;
    const C* b;
    C* mean;
    C* rstd_out;
    C* m2_out;
    i64 s;
    i64 cg;
    i64 groups;
    double eps;
    bool clamp_var;
    bool zero_var_rule;
    NK_MEMBER C rstd(C m2) const {
        return rstd_from_m2<C>(m2, cg * s, eps, clamp_var, zero_var_rule);
    }
    // The group-relative channel of column j: a 32-bit division where the group allows (a
    // 64-bit one is a long instruction sequence).
    NK_MEMBER i64 channel_of(i64 j) const {
        return (cg * s <= 0x7fffffffLL) ? (i64)((u32)j / (u32)s) : j / s;
    }
    template <int N>
    NK_MEMBER void apply(C (&v)[N], const Centre<C>& mu, C r, i64 row, i64 j) const {
        const i64 c0 = (row % groups) * cg;
        const i64 ch = channel_of(j);
        if (j - ch * s + N <= s) {
            const C scale = w ? r * w[c0 + ch] : r;
            const C beta = b ? b[c0 + ch] : (C)0;
#pragma unroll
            for (int k = 0; k < N; ++k) v[k] = mu.centre(v[k]) * scale + beta;
        } else {
#pragma unroll
            for (int k = 0; k < N; ++k) {
                // lanes past the row (padding, never stored) take the group's last channel
                const i64 t = channel_of(j + k);
                const i64 ck = t < cg ? t : cg - 1;
                const C scale = w ? r * w[c0 + ck] : r;
                const C beta = b ? b[c0 + ck] : (C)0;
                v[k] = mu.centre(v[k]) * scale + beta;
            }
        }
    }
    NK_MEMBER void save(i64 row, C mu, C r, C m2) const {
        if (mean) mean[row] = mu;
        if (rstd_out) rstd_out[row] = r;
        if (m2_out) m2_out[row] = m2;
    }
};

template <class S>
NK_DEVICE void group_norm_fwd_rows(const GroupNormParams p) {
    typedef typename Traits<S>::C C;
    const S* x = static_cast<const S*>(p.x);
    S* y = static_cast<S*>(p.y);
    GnEpilogue<C> ep;
    ep.w = static_cast<const C*>(p.weight);
    ep.b = static_cast<const C*>(p.bias);
    ep.mean = static_cast<C*>(p.mean);
    ep.rstd_out = static_cast<C*>(p.rstd);
    ep.m2_out = static_cast<C*>(p.m2);
    ep.s = p.s;
    ep.cg = p.c / p.groups;
    ep.groups = p.groups;
    ep.eps = p.eps;
    ep.clamp_var = p.clamp_var != 0;
    ep.zero_var_rule = p.zero_var_rule != 0;
    const i64 len = ep.cg * p.s;
    const bool vec_ok = is_aligned16(x) && is_aligned16(y) && len % PackWidth<S>::N == 0;
    row_norm_block<S, GN_ROW_VALUES>(x, y, p.n * p.groups, len, vec_ok, ep);
}

// nhwc.
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
        i64 ch;
        // read before the block merge (a barrier): in place, no thread has written yet
        const i64 first = gn_offset<NHWC, GroupNormParams>(p, n, g, cg, 0, &ch);
        const C x0 = shift_of(Traits<S>::load(x[first]));
        Welford<C> acc = welford_empty<C>();
        for (i64 i = threadIdx.x; i < len; i += nthreads) {
            const i64 off = gn_offset<NHWC, GroupNormParams>(p, n, g, cg, i, &ch);
            welford_push(acc, Traits<S>::load(x[off]) - x0);
        }
        acc = block_all_reduce_welford(acc, smem);
        const Centre<C> mean = centre_of(x0, acc.mean);
        const C rstd = rstd_from_m2<C>(acc.m2, len, p.eps, p.clamp_var != 0, p.zero_var_rule != 0);
        for (i64 i = threadIdx.x; i < len; i += nthreads) {
            const i64 off = gn_offset<NHWC, GroupNormParams>(p, n, g, cg, i, &ch);
            const C scale = w ? rstd * w[ch] : rstd;
            const C beta = b ? b[ch] : (C)0;
            y[off] = Traits<S>::store(mean.centre(Traits<S>::load(x[off])) * scale + beta);
        }
        if (threadIdx.x == 0) {
            if (p.mean) static_cast<C*>(p.mean)[ng] = mean.hi;
            if (p.rstd) static_cast<C*>(p.rstd)[ng] = rstd;
            if (p.m2) static_cast<C*>(p.m2)[ng] = acc.m2;
        }
        __syncthreads();  // in place: all reads of this group finish before the next group
    }
}

// ---- InstanceNorm running statistics -------------------------------------------------------
// instance_norm_running_{f32,f64} (compute type): after group_norm_fwd with groups = c wrote
// the instance mean and M2 = Σ (x − μ)² per (n, c), PyTorch's update of N tiled copies of the
// running statistics, averaged: for each channel, in n order,
//   running_mean_c ← (1/N)·Σ_n [f·μ_nc + (1 − f)·rm_c]
//   running_var_c  ← (1/N)·Σ_n [f·(M2_nc / (s − 1)) + (1 − f)·rv_c]
// each term in the compute type (as the CPU op's ema), the sum in f64. The unbiased variance
// comes from M2 directly (not from rstd), so small variances keep their digits. One thread per
// channel, grid-stride; deterministic (no atomics, fixed order).
template <class C>
NK_DEVICE void instance_norm_running(const InstanceNormRunningParams p) {
    const C* mean = static_cast<const C*>(p.mean);
    const C* m2 = static_cast<const C*>(p.m2);
    C* rm = static_cast<C*>(p.running_mean);
    C* rv = static_cast<C*>(p.running_var);
    const C f = (C)p.momentum;
    const C keep = (C)1 - f;
    const double count = (double)p.n;
    const double dof = (double)(p.s - 1);
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < p.c; c += stride) {
        if (rm) {
            const C old = rm[c];
            double sum = 0.0;
            for (i64 n = 0; n < p.n; ++n) sum += (double)(f * mean[n * p.c + c] + keep * old);
            rm[c] = (C)(sum / count);
        }
        if (rv) {
            const C old = rv[c];
            double sum = 0.0;
            for (i64 n = 0; n < p.n; ++n) {
                const C unbiased = (C)((double)m2[n * p.c + c] / dof);
                sum += (double)(f * unbiased + keep * old);
            }
            rv[c] = (C)(sum / count);
        }
    }
}

// ---- Backward ------------------------------------------------------------------------------
// group_norm_bwd_{nchw,nhwc} (GroupNorm; InstanceNorm with groups = c; saved statistics):
// one launch, one block per (n, g), grid-stride. For each channel of the group the block sums
// A = Σ_s dy and B = Σ_s dy·(x − μ) (block reductions: every thread holds the same totals),
// then, in f64 and channel order, sa = Σ γ_c·A_c, sb = Σ γ_c·B_c, q = −r³·sb/M, o = −r·sa/M
// (M = cg·s), and writes dx = dy·(r·γ_c) + (x − μ)·q + o over the group (a second read, mostly
// from L2). With parameter gradients, A and B go to workspace (2·n·c C values); the last block
// to take a ticket (counters[0], reset by it) writes grad_weight_c = Σ_n B_{n,c}·r_{n,g} and
// grad_bias_c = Σ_n A_{n,c}, summed in n order in f64. μ is the saved mean, or (f32, where its
// rounding matters) hi + lo from one more pass over the group (`recentred`).
template <class S, bool NHWC>
NK_DEVICE void group_norm_bwd(const NormBwdParams p) {
    typedef typename Traits<S>::C C;
    __shared__ C smem[32];
    __shared__ int last;
    const S* x = static_cast<const S*>(p.x);
    const S* dy = static_cast<const S*>(p.dy);
    S* dx = static_cast<S*>(p.dx);
    const C* w = static_cast<const C*>(p.weight);
    const C* mean = static_cast<const C*>(p.mean);
    const C* rstd = static_cast<const C*>(p.rstd_or_var);
    const i64 cg = p.c / p.groups;
    const i64 nc = p.n * p.c;
    const bool params = p.workspace && (p.grad_weight || p.grad_bias);
    C* wa = static_cast<C*>(p.workspace);
    C* wb = params ? wa + nc : 0;
    for (i64 ng = blockIdx.x; ng < p.n * p.groups; ng += gridDim.x) {
        const i64 n = ng / p.groups;
        const i64 g = ng - n * p.groups;
        const C r = rstd[ng];
        Centre<C> mu;
        mu.hi = mean[ng];
        mu.lo = (C)0;
        // the saved mean's rounding recovered where it matters (f32 only, as layer_norm_bwd:
        // `rounding_matters` / `recentred`, common/types.cuh; the CPU backward's rule)
        if (sizeof(S) == 4 && p.recover && rounding_matters(mu.hi, r)) {
            C sd = (C)0;
            for (i64 i = threadIdx.x; i < cg * p.s; i += blockDim.x) {
                i64 ch;
                const i64 off = gn_offset<NHWC, NormBwdParams>(p, n, g, cg, i, &ch);
                sd += Traits<S>::load(x[off]) - mu.hi;
            }
            sd = block_all_reduce_sum(sd, smem);
            mu = recentred(mu.hi, sd / (C)(cg * p.s));
        }
        double sa = 0.0, sb = 0.0;
        for (i64 cc = 0; cc < cg; ++cc) {
            const i64 ch = g * cg + cc;
            C a = (C)0, b = (C)0;
            for (i64 t = threadIdx.x; t < p.s; t += blockDim.x) {
                const i64 off = NHWC ? (n * p.s + t) * p.c + ch : (n * p.c + ch) * p.s + t;
                const C gv = Traits<S>::load(dy[off]);
                a += gv;
                b += gv * mu.centre(Traits<S>::load(x[off]));
            }
            a = block_all_reduce_sum(a, smem);
            b = block_all_reduce_sum(b, smem);
            const double gm = w ? (double)w[ch] : 1.0;
            sa += gm * (double)a;
            sb += gm * (double)b;
            if (params && threadIdx.x == 0) {
                wa[n * p.c + ch] = a;
                wb[n * p.c + ch] = b;
            }
        }
        if (dx) {
            const double rd = (double)r;
            const double count = (double)(cg * p.s);
            const C q = (C)(-rd * rd * rd * sb / count);
            const C o = (C)(-rd * sa / count);
            for (i64 i = threadIdx.x; i < cg * p.s; i += blockDim.x) {
                i64 ch;
                const i64 off = gn_offset<NHWC, NormBwdParams>(p, n, g, cg, i, &ch);
                const C pc = w ? r * w[ch] : r;
                const C d = mu.centre(Traits<S>::load(x[off]));
                dx[off] = Traits<S>::store(Traits<S>::load(dy[off]) * pc + d * q + o);
            }
        }
    }
    if (!params) return;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        last = atomicAdd(static_cast<u32*>(p.counters), 1u) == (u32)(gridDim.x - 1);
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (i64 ch = threadIdx.x; ch < p.c; ch += blockDim.x) {
        const i64 g = ch / cg;
        double dw = 0.0, db = 0.0;
        for (i64 n = 0; n < p.n; ++n) {
            dw += (double)((volatile C*)wb)[n * p.c + ch] * (double)rstd[n * p.groups + g];
            db += (double)((volatile C*)wa)[n * p.c + ch];
        }
        store_param_grad<C>(p.grad_weight, ch, dw, p.accumulate);
        store_param_grad<C>(p.grad_bias, ch, db, p.accumulate);
    }
    if (threadIdx.x == 0) static_cast<u32*>(p.counters)[0] = 0u;
}

}  // namespace normkit

using namespace normkit;

NK_ENTRY_BOUNDED(group_norm_fwd_nchw_f32, GroupNormParams, GN_ROW_BOUNDS,
                 group_norm_fwd_rows<float>)
NK_ENTRY_BOUNDED(group_norm_fwd_nchw_f64, GroupNormParams, GN_ROW_BOUNDS,
                 group_norm_fwd_rows<double>)
NK_ENTRY_BOUNDED(group_norm_fwd_nchw_f16, GroupNormParams, GN_ROW_BOUNDS,
                 group_norm_fwd_rows<f16>)
NK_ENTRY_BOUNDED(group_norm_fwd_nchw_bf16, GroupNormParams, GN_ROW_BOUNDS,
                 group_norm_fwd_rows<bf16>)
NK_ENTRY(group_norm_fwd_nhwc_f32, GroupNormParams, group_norm_fwd<float, true>)
NK_ENTRY(group_norm_fwd_nhwc_f64, GroupNormParams, group_norm_fwd<double, true>)
NK_ENTRY(group_norm_fwd_nhwc_f16, GroupNormParams, group_norm_fwd<f16, true>)
NK_ENTRY(group_norm_fwd_nhwc_bf16, GroupNormParams, group_norm_fwd<bf16, true>)
NK_ENTRY(instance_norm_running_f32, InstanceNormRunningParams, instance_norm_running<float>)
NK_ENTRY(instance_norm_running_f64, InstanceNormRunningParams, instance_norm_running<double>)
NK_ENTRY(group_norm_bwd_nchw_f32, NormBwdParams, group_norm_bwd<float, false>)
NK_ENTRY(group_norm_bwd_nchw_f64, NormBwdParams, group_norm_bwd<double, false>)
NK_ENTRY(group_norm_bwd_nchw_f16, NormBwdParams, group_norm_bwd<f16, false>)
NK_ENTRY(group_norm_bwd_nchw_bf16, NormBwdParams, group_norm_bwd<bf16, false>)
NK_ENTRY(group_norm_bwd_nhwc_f32, NormBwdParams, group_norm_bwd<float, true>)
NK_ENTRY(group_norm_bwd_nhwc_f64, NormBwdParams, group_norm_bwd<double, true>)
NK_ENTRY(group_norm_bwd_nhwc_f16, NormBwdParams, group_norm_bwd<f16, true>)
NK_ENTRY(group_norm_bwd_nhwc_bf16, NormBwdParams, group_norm_bwd<bf16, true>)
