// batch_norm.cu: BatchNorm forward (spec §2.4, §2.5).
//
// Training = 2 launches: stats, then apply.
//   stats_nchw  grid (c, splits), blockDim.x = 256: block (ch, k) runs Welford over the k-th
//               slice of channel ch's n·s elements.
//   stats_nhwc  grid (ceil(c / 32), splits), blockDim (32, 8): a tile of 32 adjacent channels
//               (coalesced), 8 row lanes; block (t, k) covers the k-th slice of the n·s rows.
//   Each block writes its (count, mean, M2) partial to the workspace, takes a ticket from its
//   counter; the last block of a channel (tile) merges the partials in split order (so the
//   result does not depend on which block finished last), writes mean and rstd
//   (r = 1/sqrt(var + eps), r = 0 when var == 0 and eps == 0), updates the running statistics
//   (running_var with the unbiased variance M2/(count − 1)) and resets the counter, so repeated
//   launches and graph replays need no memset.
//   apply_{nchw,nhwc}  y = (x − μ_c)·(r_c·γ_c) + β_c, one thread per element, grid-stride.
// Inference = 1 launch: infer_{nchw,nhwc} with scale = 1/sqrt(rv + eps)·γ in the compute type;
//   where that scale is not finite, PyTorch's folded form x·scale + (β − μ·scale) is used so NaN
//   and ∞ appear where PyTorch's do.
// Host preconditions: n·s >= 2 for training, c >= 1, splits >= 1, counters zeroed once.
#include "common/compat.cuh"
#include "common/types.cuh"
#include "common/welford.cuh"
#include "common/params.cuh"

namespace normkit {

template <class C> struct BnWorkspace {
    C* mean;
    C* m2;
    i64* count;
};

template <class C> NK_DEVICE BnWorkspace<C> bn_workspace(const BatchNormStatsParams& p) {
    BnWorkspace<C> ws;
    const i64 slots = p.splits * p.c;
    ws.mean = static_cast<C*>(p.workspace);
    ws.m2 = ws.mean + slots;
    ws.count = reinterpret_cast<i64*>(ws.m2 + slots);
    return ws;
}

// Merge the partials of channel ch in split order and write every per-channel output.
template <class C>
NK_DEVICE void bn_finish_channel(const BatchNormStatsParams& p, const BnWorkspace<C>& ws, i64 ch) {
    Welford<C> t = welford_empty<C>();
    for (i64 k = 0; k < p.splits; ++k) {
        Welford<C> o;
        const i64 slot = k * p.c + ch;
        o.n = ((volatile i64*)ws.count)[slot];
        o.mean = ((volatile C*)ws.mean)[slot];
        o.m2 = ((volatile C*)ws.m2)[slot];
        t = welford_merge(t, o);
    }
    const C rstd = rstd_from_m2<C>(t.m2, t.n, p.eps, false, true);
    static_cast<C*>(p.mean)[ch] = t.mean;
    static_cast<C*>(p.rstd)[ch] = rstd;
    if (p.running_mean) {
        C* rm = static_cast<C*>(p.running_mean);
        rm[ch] = ema<C>(rm[ch], t.mean, p.momentum);
    }
    if (p.running_var) {
        C* rv = static_cast<C*>(p.running_var);
        const C unbiased = (C)((double)t.m2 / (double)(t.n - 1));
        rv[ch] = ema<C>(rv[ch], unbiased, p.momentum);
    }
}

template <class S>
NK_DEVICE void batch_norm_stats_nchw(const BatchNormStatsParams p) {
    typedef typename Traits<S>::C C;
    __shared__ WelfordSmem<C> smem;
    __shared__ int last;
    const S* x = static_cast<const S*>(p.x);
    const i64 ch = blockIdx.x;
    const i64 split = blockIdx.y;
    const i64 total = p.n * p.s;
    const i64 lo = total * split / p.splits;
    const i64 hi = total * (split + 1) / p.splits;
    Welford<C> acc = welford_empty<C>();
    for (i64 j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        const i64 n = j / p.s;
        welford_push(acc, Traits<S>::load(x[(n * p.c + ch) * p.s + (j - n * p.s)]));
    }
    acc = block_all_reduce_welford(acc, smem);
    const BnWorkspace<C> ws = bn_workspace<C>(p);
    if (threadIdx.x == 0) {
        const i64 slot = split * p.c + ch;
        ws.count[slot] = acc.n;
        ws.mean[slot] = acc.mean;
        ws.m2[slot] = acc.m2;
        __threadfence();
        u32* counter = static_cast<u32*>(p.counters) + ch;
        last = atomicAdd(counter, 1u) == (u32)(p.splits - 1);
    }
    __syncthreads();
    if (last && threadIdx.x == 0) {
        __threadfence();
        bn_finish_channel<C>(p, ws, ch);
        static_cast<u32*>(p.counters)[ch] = 0u;
    }
}

template <class S>
NK_DEVICE void batch_norm_stats_nhwc(const BatchNormStatsParams p) {
    typedef typename Traits<S>::C C;
    __shared__ i64 sn[8][32];
    __shared__ C smean[8][32];
    __shared__ C sm2[8][32];
    __shared__ int last;
    const S* x = static_cast<const S*>(p.x);
    const i64 ch = (i64)blockIdx.x * 32 + threadIdx.x;
    const i64 split = blockIdx.y;
    const i64 rows = p.n * p.s;
    const i64 lo = rows * split / p.splits;
    const i64 hi = rows * (split + 1) / p.splits;
    Welford<C> acc = welford_empty<C>();
    if (ch < p.c)
        for (i64 r = lo + threadIdx.y; r < hi; r += blockDim.y)
            welford_push(acc, Traits<S>::load(x[r * p.c + ch]));
    sn[threadIdx.y][threadIdx.x] = acc.n;
    smean[threadIdx.y][threadIdx.x] = acc.mean;
    sm2[threadIdx.y][threadIdx.x] = acc.m2;
    __syncthreads();
    const BnWorkspace<C> ws = bn_workspace<C>(p);
    if (threadIdx.y == 0 && ch < p.c) {
        Welford<C> t = welford_empty<C>();
        for (int k = 0; k < (int)blockDim.y; ++k) {
            Welford<C> o;
            o.n = sn[k][threadIdx.x];
            o.mean = smean[k][threadIdx.x];
            o.m2 = sm2[k][threadIdx.x];
            t = welford_merge(t, o);
        }
        const i64 slot = split * p.c + ch;
        ws.count[slot] = t.n;
        ws.mean[slot] = t.mean;
        ws.m2[slot] = t.m2;
        __threadfence();
    }
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        u32* counter = static_cast<u32*>(p.counters) + blockIdx.x;
        last = atomicAdd(counter, 1u) == (u32)(p.splits - 1);
    }
    __syncthreads();
    if (last) {
        __threadfence();
        if (threadIdx.y == 0 && ch < p.c) bn_finish_channel<C>(p, ws, ch);
        if (threadIdx.x == 0 && threadIdx.y == 0) static_cast<u32*>(p.counters)[blockIdx.x] = 0u;
    }
}

template <bool NHWC> NK_DEVICE i64 bn_channel(const BatchNormApplyParams& p, i64 i) {
    return NHWC ? i % p.c : (i / p.s) % p.c;
}

template <class S, bool NHWC>
NK_DEVICE void batch_norm_apply(const BatchNormApplyParams p) {
    typedef typename Traits<S>::C C;
    const S* x = static_cast<const S*>(p.x);
    S* y = static_cast<S*>(p.y);
    const C* mean = static_cast<const C*>(p.mean);
    const C* rstd = static_cast<const C*>(p.rstd_or_var);
    const C* w = static_cast<const C*>(p.weight);
    const C* b = static_cast<const C*>(p.bias);
    const i64 total = p.n * p.c * p.s;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (i64)gridDim.x * blockDim.x) {
        const i64 c = bn_channel<NHWC>(p, i);
        const C scale = w ? rstd[c] * w[c] : rstd[c];
        const C shift = b ? b[c] : (C)0;
        y[i] = Traits<S>::store((Traits<S>::load(x[i]) - mean[c]) * scale + shift);
    }
}

template <class S, bool NHWC>
NK_DEVICE void batch_norm_infer(const BatchNormApplyParams p) {
    typedef typename Traits<S>::C C;
    const S* x = static_cast<const S*>(p.x);
    S* y = static_cast<S*>(p.y);
    const C* rm = static_cast<const C*>(p.mean);
    const C* rv = static_cast<const C*>(p.rstd_or_var);
    const C* w = static_cast<const C*>(p.weight);
    const C* b = static_cast<const C*>(p.bias);
    const i64 total = p.n * p.c * p.s;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (i64)gridDim.x * blockDim.x) {
        const i64 c = bn_channel<NHWC>(p, i);
        const C gamma = w ? w[c] : (C)1;
        const C beta = b ? b[c] : (C)0;
        const C scale = (C)1 / nk_sqrt(rv[c] + (C)p.eps) * gamma;
        C shift = rm[c], offset = beta;
        if (!nk_isfinite(scale)) {
            offset = beta - rm[c] * scale;
            shift = (C)0;
        }
        y[i] = Traits<S>::store((Traits<S>::load(x[i]) - shift) * scale + offset);
    }
}

}  // namespace normkit

using namespace normkit;

NK_ENTRY(batch_norm_stats_nchw_f32, BatchNormStatsParams, batch_norm_stats_nchw<float>)
NK_ENTRY(batch_norm_stats_nchw_f64, BatchNormStatsParams, batch_norm_stats_nchw<double>)
NK_ENTRY(batch_norm_stats_nchw_f16, BatchNormStatsParams, batch_norm_stats_nchw<f16>)
NK_ENTRY(batch_norm_stats_nchw_bf16, BatchNormStatsParams, batch_norm_stats_nchw<bf16>)
NK_ENTRY(batch_norm_stats_nhwc_f32, BatchNormStatsParams, batch_norm_stats_nhwc<float>)
NK_ENTRY(batch_norm_stats_nhwc_f64, BatchNormStatsParams, batch_norm_stats_nhwc<double>)
NK_ENTRY(batch_norm_stats_nhwc_f16, BatchNormStatsParams, batch_norm_stats_nhwc<f16>)
NK_ENTRY(batch_norm_stats_nhwc_bf16, BatchNormStatsParams, batch_norm_stats_nhwc<bf16>)
NK_ENTRY(batch_norm_apply_nchw_f32, BatchNormApplyParams, batch_norm_apply<float, false>)
NK_ENTRY(batch_norm_apply_nchw_f64, BatchNormApplyParams, batch_norm_apply<double, false>)
NK_ENTRY(batch_norm_apply_nchw_f16, BatchNormApplyParams, batch_norm_apply<f16, false>)
NK_ENTRY(batch_norm_apply_nchw_bf16, BatchNormApplyParams, batch_norm_apply<bf16, false>)
NK_ENTRY(batch_norm_apply_nhwc_f32, BatchNormApplyParams, batch_norm_apply<float, true>)
NK_ENTRY(batch_norm_apply_nhwc_f64, BatchNormApplyParams, batch_norm_apply<double, true>)
NK_ENTRY(batch_norm_apply_nhwc_f16, BatchNormApplyParams, batch_norm_apply<f16, true>)
NK_ENTRY(batch_norm_apply_nhwc_bf16, BatchNormApplyParams, batch_norm_apply<bf16, true>)
NK_ENTRY(batch_norm_infer_nchw_f32, BatchNormApplyParams, batch_norm_infer<float, false>)
NK_ENTRY(batch_norm_infer_nchw_f64, BatchNormApplyParams, batch_norm_infer<double, false>)
NK_ENTRY(batch_norm_infer_nchw_f16, BatchNormApplyParams, batch_norm_infer<f16, false>)
NK_ENTRY(batch_norm_infer_nchw_bf16, BatchNormApplyParams, batch_norm_infer<bf16, false>)
NK_ENTRY(batch_norm_infer_nhwc_f32, BatchNormApplyParams, batch_norm_infer<float, true>)
NK_ENTRY(batch_norm_infer_nhwc_f64, BatchNormApplyParams, batch_norm_infer<double, true>)
NK_ENTRY(batch_norm_infer_nhwc_f16, BatchNormApplyParams, batch_norm_infer<f16, true>)
NK_ENTRY(batch_norm_infer_nhwc_bf16, BatchNormApplyParams, batch_norm_infer<bf16, true>)
