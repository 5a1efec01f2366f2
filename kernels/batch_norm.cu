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
//   apply_{nchw,nhwc}  y = (x − μ_c)·(r_c·γ_c) + β_c, grid-stride, a 16-byte pack per thread
//               step where the layout allows (bn_affine), else one element.
// Inference = 1 launch: infer_{nchw,nhwc} with scale = 1/sqrt(rv + eps)·γ in the compute type;
//   where that scale is not finite, PyTorch's folded form x·scale + (β − μ·scale) is used so NaN
//   and ∞ appear where PyTorch's do.
// Host preconditions: n·s >= 2 for training, c >= 1, splits >= 1, counters zeroed once.
#include "common/compat.cuh"
#include "common/types.cuh"
#include "common/welford.cuh"
#include "common/reduce.cuh"
#include "common/params.cuh"
#include "common/memory.cuh"

namespace normkit {

// Partials in the accumulator type A (f64 for f32 input).
template <class A> struct BnWorkspace {
    A* mean;
    A* m2;
    i64* count;
};

template <class A> NK_DEVICE BnWorkspace<A> bn_workspace(const BatchNormStatsParams& p) {
    BnWorkspace<A> ws;
    const i64 slots = p.splits * p.c;
    ws.mean = static_cast<A*>(p.workspace);
    ws.m2 = ws.mean + slots;
    ws.count = reinterpret_cast<i64*>(ws.m2 + slots);
    return ws;
}

// Merge the partials of channel ch in split order (in A) and write every per-channel output
// (in C): the mean rounded to C, and when asked its remainder mean − (A)hi (the apply centres
// on both, as the CPU op does: an f32 mean of 1e4 is off by up to 5e-4, a tenth of a spread
// of 1e-2), rstd, the running statistics.
template <class A, class C>
NK_DEVICE void bn_finish_channel(const BatchNormStatsParams& p, const BnWorkspace<A>& ws, i64 ch) {
    Welford<A> t = welford_empty<A>();
    for (i64 k = 0; k < p.splits; ++k) {
        Welford<A> o;
        const i64 slot = k * p.c + ch;
        o.n = ((volatile i64*)ws.count)[slot];
        o.mean = ((volatile A*)ws.mean)[slot];
        o.m2 = ((volatile A*)ws.m2)[slot];
        t = welford_merge(t, o);
    }
    const A rstd = rstd_from_m2<A>(t.m2, t.n, p.eps, false, true);
    const C hi = (C)t.mean;
    static_cast<C*>(p.mean)[ch] = hi;
    if (p.mean_lo) static_cast<C*>(p.mean_lo)[ch] = nk_isfinite(t.mean) ? (C)(t.mean - (A)hi) : (C)0;
    static_cast<C*>(p.rstd)[ch] = (C)rstd;
    if (p.running_mean) {
        C* rm = static_cast<C*>(p.running_mean);
        rm[ch] = (C)ema<A>((A)rm[ch], t.mean, p.momentum);
    }
    if (p.running_var) {
        C* rv = static_cast<C*>(p.running_var);
        const A unbiased = (A)((double)t.m2 / (double)(t.n - 1));
        rv[ch] = (C)ema<A>((A)rv[ch], unbiased, p.momentum);
    }
}

template <class S>
NK_DEVICE void batch_norm_stats_nchw(const BatchNormStatsParams p) {
    typedef typename Traits<S>::C C;
    typedef typename Traits<S>::A A;
    __shared__ WelfordSmem<A> smem;
    __shared__ int last;
    const S* x = static_cast<const S*>(p.x);
    const i64 ch = blockIdx.x;
    const i64 split = blockIdx.y;
    const i64 total = p.n * p.s;
    const i64 lo = total * split / p.splits;
    const i64 hi = total * (split + 1) / p.splits;
    Welford<A> acc = welford_empty<A>();
    // Four loads in flight, then one Welford update for the four (welford_push_k: one division
    // per four elements; with one welford_push per element, a division each, the loop was
    // bound by instructions: 0.93 TB/s for one read on an H200).
    // Element e of this channel (e = n·s + spatial index).
    auto at = [&](i64 e) {
        const i64 n = e / p.s;
        return (A)Traits<S>::load(x[(n * p.c + ch) * p.s + (e - n * p.s)]);
    };
    const i64 step = blockDim.x;
    i64 j = lo + threadIdx.x;
    for (; j + 3 * step < hi; j += 4 * step) {
        A v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) v[u] = at(j + u * step);
        welford_push_k<A, 4>(acc, v);
    }
    for (; j < hi; j += step) welford_push(acc, at(j));
    acc = block_all_reduce_welford(acc, smem);
    const BnWorkspace<A> ws = bn_workspace<A>(p);
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
        bn_finish_channel<A, C>(p, ws, ch);
        static_cast<u32*>(p.counters)[ch] = 0u;
    }
}

template <class S>
NK_DEVICE void batch_norm_stats_nhwc(const BatchNormStatsParams p) {
    typedef typename Traits<S>::C C;
    typedef typename Traits<S>::A A;
    __shared__ i64 sn[8][32];
    __shared__ A smean[8][32];
    __shared__ A sm2[8][32];
    __shared__ int last;
    const S* x = static_cast<const S*>(p.x);
    const i64 ch = (i64)blockIdx.x * 32 + threadIdx.x;
    const i64 split = blockIdx.y;
    const i64 rows = p.n * p.s;
    const i64 lo = rows * split / p.splits;
    const i64 hi = rows * (split + 1) / p.splits;
    Welford<A> acc = welford_empty<A>();
    if (ch < p.c) {
        // Four rows' loads in flight, then one Welford update for the four (welford_push_k).
        const i64 step = blockDim.y;
        i64 r = lo + threadIdx.y;
        for (; r + 3 * step < hi; r += 4 * step) {
            A v[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) v[u] = (A)Traits<S>::load(x[(r + u * step) * p.c + ch]);
            welford_push_k<A, 4>(acc, v);
        }
        for (; r < hi; r += step) welford_push(acc, (A)Traits<S>::load(x[r * p.c + ch]));
    }
    sn[threadIdx.y][threadIdx.x] = acc.n;
    smean[threadIdx.y][threadIdx.x] = acc.mean;
    sm2[threadIdx.y][threadIdx.x] = acc.m2;
    __syncthreads();
    const BnWorkspace<A> ws = bn_workspace<A>(p);
    if (threadIdx.y == 0 && ch < p.c) {
        Welford<A> t = welford_empty<A>();
        for (int k = 0; k < (int)blockDim.y; ++k) {
            Welford<A> o;
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
        if (threadIdx.y == 0 && ch < p.c) bn_finish_channel<A, C>(p, ws, ch);
        if (threadIdx.x == 0 && threadIdx.y == 0) static_cast<u32*>(p.counters)[blockIdx.x] = 0u;
    }
}

template <bool NHWC> NK_DEVICE i64 bn_channel(const BatchNormApplyParams& p, i64 i) {
    return NHWC ? i % p.c : (i / p.s) % p.c;
}

// Per-channel coefficients of y = (x − shift)·scale + offset for the K channels [c0, c0 + K)
// (K = 1, or a pack of N adjacent channels channels last). Training apply (INFER false), from
// the saved statistics: (μ_c, r_c·γ_c, β_c). Inference (INFER true), from the running
// statistics: scale = 1/sqrt(rv + eps)·γ, shift = rm, offset = β, and where that scale is not
// finite PyTorch's folded form (shift 0, offset β − rm·scale), so NaN and ∞ appear where
// PyTorch's do. The per-channel arrays come through load_params (vector loads when `vec`).
template <class C, bool INFER> struct BnCoef {
    const C* mean;  // saved mean, or running mean
    const C* lo;    // training: the saved mean's remainder, or null (offset β − lo·scale)
    const C* r;     // saved rstd, or running variance
    const C* w;
    const C* b;
    i64 c;
    bool vec;
    C eps;
    template <int K> NK_MEMBER void pack(i64 c0, C (&shift)[K], C (&scale)[K], C (&offset)[K]) const {
        C r_[K], wv[K], lo_[K];
        load_params<C, K>(mean, c0, c, vec, shift);
        if (lo) {
            load_params<C, K>(lo, c0, c, vec, lo_);
        } else {
#pragma unroll
            for (int k = 0; k < K; ++k) lo_[k] = (C)0;
        }
        load_params<C, K>(r, c0, c, vec, r_);
        if (b) {
            load_params<C, K>(b, c0, c, vec, offset);
        } else {
#pragma unroll
            for (int k = 0; k < K; ++k) offset[k] = (C)0;
        }
        if (w) {
            load_params<C, K>(w, c0, c, vec, wv);
        } else {
#pragma unroll
            for (int k = 0; k < K; ++k) wv[k] = (C)1;
        }
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const C gamma = wv[k];
            if (!INFER) {
                scale[k] = w ? r_[k] * gamma : r_[k];
                if (lo) offset[k] = offset[k] - lo_[k] * scale[k];
            } else {
                scale[k] = (C)1 / nk_sqrt(r_[k] + eps) * gamma;
                if (!nk_isfinite(scale[k])) {
                    offset[k] = offset[k] - shift[k] * scale[k];
                    shift[k] = (C)0;
                }
            }
        }
    }
};

// y = (x − shift_c)·scale_c + offset_c over the whole tensor, grid-stride. When x and y are
// 16-byte aligned and a pack of N = 16/sizeof(S) elements never crosses a channel boundary
// (channels first: s % N == 0, one channel per pack) or a row (channels last: c % N == 0, N
// adjacent channels per pack), each thread moves whole packs: one 16-byte load and store, one
// channel index (a 64-bit division) and one set of coefficient loads per pack instead of per
// element. Otherwise one element per thread. The same arithmetic per element either way.
template <class S, bool NHWC, class Coef>
NK_DEVICE void bn_affine(const BatchNormApplyParams& p, const Coef& coef) {
    typedef typename Traits<S>::C C;
    enum { N = PackWidth<S>::N };
    const S* x = static_cast<const S*>(p.x);
    S* y = static_cast<S*>(p.y);
    const i64 total = p.n * p.c * p.s;
    const i64 first = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    const bool packs = is_aligned16(x) && is_aligned16(y) && (NHWC ? p.c % N : p.s % N) == 0;
    if (packs) {
        for (i64 i = first * N; i < total; i += stride * N) {
            C v[N];
            load_pack<S, N>(x, i, total, true, v);
            if (NHWC) {
                C sh[N], sc[N], of[N];
                coef.template pack<N>(i % p.c, sh, sc, of);
#pragma unroll
                for (int k = 0; k < N; ++k) v[k] = (v[k] - sh[k]) * sc[k] + of[k];
            } else {
                C sh[1], sc[1], of[1];
                coef.template pack<1>((i / p.s) % p.c, sh, sc, of);
#pragma unroll
                for (int k = 0; k < N; ++k) v[k] = (v[k] - sh[0]) * sc[0] + of[0];
            }
            store_pack<S, N>(y, i, total, true, v);
        }
    } else {
        for (i64 i = first; i < total; i += stride) {
            C sh[1], sc[1], of[1];
            coef.template pack<1>(bn_channel<NHWC>(p, i), sh, sc, of);
            y[i] = Traits<S>::store((Traits<S>::load(x[i]) - sh[0]) * sc[0] + of[0]);
        }
    }
}

// apply (INFER false) and infer (INFER true): bn_affine with BnCoef.
template <class S, bool NHWC, bool INFER>
NK_DEVICE void batch_norm_affine(const BatchNormApplyParams p) {
    typedef typename Traits<S>::C C;
    BnCoef<C, INFER> k;
    k.mean = static_cast<const C*>(p.mean);
    k.lo = INFER ? 0 : static_cast<const C*>(p.mean_lo);
    k.r = static_cast<const C*>(p.rstd_or_var);
    k.w = static_cast<const C*>(p.weight);
    k.b = static_cast<const C*>(p.bias);
    k.c = p.c;
    k.vec = is_aligned16(k.mean) && is_aligned16(k.r) && optional_aligned16(k.w) &&
            optional_aligned16(k.b) && optional_aligned16(k.lo);
    k.eps = (C)p.eps;
    bn_affine<S, NHWC>(p, k);
}

// ---- Backward ------------------------------------------------------------------------------
// Training (saved mean/rstd) = 2 launches:
//   bwd_reduce_{nchw,nhwc}  same grid and split decomposition as the stats kernels. Each block
//     writes its per-channel partial (Σdy, Σdy·(x − μ)) to the workspace and takes a ticket;
//     the last block of a channel (tile) adds the partials in split order (A, B), then writes
//     the coefficients of dx = dy·p + (x − μ)·q + o (in f64, rounded to C, CPU order):
//       p = r·γ, q = −r³·γB/M, o = −r·γA/M   (M = n·s)
//     and grad_weight = B·r, grad_bias = A (overwritten or accumulated); resets the counter.
//     f32 with `recover` (saved statistics of this batch) where |μ|·r >= 64 (`rounding_matters`,
//     common/types.cuh): the blocks also sum D = Σ(x − μ) and the last one recovers the saved
//     mean's rounding, μ' = μ + lo from recentred(μ, D/M) (the CPU backward's rule, as the
//     LayerNorm and GroupNorm backward): B = Σdy·(x − μ) − lo·A, and the input kernel's
//     dx = dy·p + (x − μ)·q + (o − lo·q) centres on μ' with the saved μ.
//   bwd_input_{nchw,nhwc}  dx elementwise from the coefficients. Grid-stride.
// Frozen (running statistics, training = 0): r = 1/sqrt(rv + eps) in C, q = o = 0; the input
//   kernel computes p = r·γ itself (1 launch); the reduce runs only for grad_weight/grad_bias.
// Workspace (C values): sa[splits·c], sb[splits·c], coef[3·c] (p, q, o), sd[splits·c].
template <class C> struct BnBwdWorkspace {
    C* sa;
    C* sb;
    C* coef;
    C* sd;
};

template <class C> NK_DEVICE BnBwdWorkspace<C> bn_bwd_workspace(const NormBwdParams& p) {
    BnBwdWorkspace<C> ws;
    const i64 slots = p.splits * p.c;
    ws.sa = static_cast<C*>(p.workspace);
    ws.sb = ws.sa + slots;
    ws.coef = ws.sb + slots;
    ws.sd = ws.coef + 3 * p.c;
    return ws;
}

template <class C> NK_DEVICE C bn_bwd_rstd(const NormBwdParams& p, i64 ch) {
    const C v = static_cast<const C*>(p.rstd_or_var)[ch];
    return p.training ? v : (C)1 / nk_sqrt(v + (C)p.eps);
}

// Whether channel `ch` (saved mean `mu`) has its saved mean's rounding recovered: f32 data,
// `recover` and saved statistics, |μ|·r >= 64 (f16/bf16 data cannot carry the case and an f64
// mean's rounding is 2^-29 of an f32 one's, as in layer_norm_bwd).
template <class S, class C> NK_DEVICE bool bn_bwd_recovers(const NormBwdParams& p, C mu, i64 ch) {
    return sizeof(S) == 4 && p.recover && p.training && rounding_matters(mu, bn_bwd_rstd<C>(p, ch));
}

template <class S, class C>
NK_DEVICE void bn_bwd_finish_channel(const NormBwdParams& p, const BnBwdWorkspace<C>& ws, i64 ch) {
    const C mu = static_cast<const C*>(p.mean)[ch];
    const bool rec = bn_bwd_recovers<S>(p, mu, ch);
    C a = (C)0, b = (C)0, d = (C)0;
    for (i64 k = 0; k < p.splits; ++k) {
        a += ((volatile C*)ws.sa)[k * p.c + ch];
        b += ((volatile C*)ws.sb)[k * p.c + ch];
        if (rec) d += ((volatile C*)ws.sd)[k * p.c + ch];
    }
    const C r = bn_bwd_rstd<C>(p, ch);
    const C gamma = p.weight ? static_cast<const C*>(p.weight)[ch] : (C)1;
    const double rd = (double)r;
    const double count = (double)(p.n * p.s);
    // the saved mean's rounding: μ' = μ + lo, B = Σdy·(x − μ') = Σdy·(x − μ) − lo·A
    const double lo = rec ? (double)recentred(mu, d / (C)count).lo : 0.0;
    const double bb = (double)b - lo * (double)a;
    const C q = p.training ? (C)(-rd * rd * rd * ((double)gamma * bb) / count) : (C)0;
    ws.coef[ch] = r * gamma;
    ws.coef[p.c + ch] = q;
    ws.coef[2 * p.c + ch] =
        p.training ? (C)(-rd * ((double)gamma * (double)a) / count - lo * (double)q) : (C)0;
    store_param_grad<C>(p.grad_weight, ch, bb * rd, p.accumulate);
    store_param_grad<C>(p.grad_bias, ch, (double)a, p.accumulate);
}

template <class S>
NK_DEVICE void batch_norm_bwd_reduce_nchw(const NormBwdParams p) {
    typedef typename Traits<S>::C C;
    __shared__ C smem[32];
    __shared__ int last;
    const S* x = static_cast<const S*>(p.x);
    const S* dy = static_cast<const S*>(p.dy);
    const i64 ch = blockIdx.x;
    const i64 split = blockIdx.y;
    const i64 total = p.n * p.s;
    const i64 lo = total * split / p.splits;
    const i64 hi = total * (split + 1) / p.splits;
    const C mu = static_cast<const C*>(p.mean)[ch];
    const bool rec = bn_bwd_recovers<S>(p, mu, ch);
    C a = (C)0, b = (C)0, d = (C)0;
    for (i64 j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        const i64 n = j / p.s;
        const i64 off = (n * p.c + ch) * p.s + (j - n * p.s);
        const C g = Traits<S>::load(dy[off]);
        const C dev = Traits<S>::load(x[off]) - mu;
        a += g;
        b += g * dev;
        if (rec) d += dev;
    }
    a = block_all_reduce_sum(a, smem);
    b = block_all_reduce_sum(b, smem);
    if (rec) d = block_all_reduce_sum(d, smem);  // uniform over the block (one channel)
    const BnBwdWorkspace<C> ws = bn_bwd_workspace<C>(p);
    if (threadIdx.x == 0) {
        ws.sa[split * p.c + ch] = a;
        ws.sb[split * p.c + ch] = b;
        if (rec) ws.sd[split * p.c + ch] = d;
        __threadfence();
        u32* counter = static_cast<u32*>(p.counters) + ch;
        last = atomicAdd(counter, 1u) == (u32)(p.splits - 1);
    }
    __syncthreads();
    if (last && threadIdx.x == 0) {
        __threadfence();
        bn_bwd_finish_channel<S, C>(p, ws, ch);
        static_cast<u32*>(p.counters)[ch] = 0u;
    }
}

template <class S>
NK_DEVICE void batch_norm_bwd_reduce_nhwc(const NormBwdParams p) {
    typedef typename Traits<S>::C C;
    __shared__ C ssa[8][32];
    __shared__ C ssb[8][32];
    __shared__ C ssd[8][32];
    __shared__ int last;
    const S* x = static_cast<const S*>(p.x);
    const S* dy = static_cast<const S*>(p.dy);
    const i64 ch = (i64)blockIdx.x * 32 + threadIdx.x;
    const i64 split = blockIdx.y;
    const i64 rows = p.n * p.s;
    const i64 lo = rows * split / p.splits;
    const i64 hi = rows * (split + 1) / p.splits;
    C a = (C)0, b = (C)0, d = (C)0;
    bool rec = false;
    if (ch < p.c) {
        const C mu = static_cast<const C*>(p.mean)[ch];
        rec = bn_bwd_recovers<S>(p, mu, ch);
        for (i64 r = lo + threadIdx.y; r < hi; r += blockDim.y) {
            const C g = Traits<S>::load(dy[r * p.c + ch]);
            const C dev = Traits<S>::load(x[r * p.c + ch]) - mu;
            a += g;
            b += g * dev;
            if (rec) d += dev;
        }
    }
    ssa[threadIdx.y][threadIdx.x] = a;
    ssb[threadIdx.y][threadIdx.x] = b;
    ssd[threadIdx.y][threadIdx.x] = d;
    __syncthreads();
    const BnBwdWorkspace<C> ws = bn_bwd_workspace<C>(p);
    if (threadIdx.y == 0 && ch < p.c) {
        C ta = (C)0, tb = (C)0, td = (C)0;
        for (int k = 0; k < (int)blockDim.y; ++k) {
            ta += ssa[k][threadIdx.x];
            tb += ssb[k][threadIdx.x];
            td += ssd[k][threadIdx.x];
        }
        ws.sa[split * p.c + ch] = ta;
        ws.sb[split * p.c + ch] = tb;
        if (rec) ws.sd[split * p.c + ch] = td;
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
        if (threadIdx.y == 0 && ch < p.c) bn_bwd_finish_channel<S, C>(p, ws, ch);
        if (threadIdx.x == 0 && threadIdx.y == 0) static_cast<u32*>(p.counters)[blockIdx.x] = 0u;
    }
}

template <class S, bool NHWC>
NK_DEVICE void batch_norm_bwd_input(const NormBwdParams p) {
    typedef typename Traits<S>::C C;
    const S* x = static_cast<const S*>(p.x);
    const S* dy = static_cast<const S*>(p.dy);
    S* dx = static_cast<S*>(p.dx);
    const C* mean = static_cast<const C*>(p.mean);
    const C* w = static_cast<const C*>(p.weight);
    const C* coef = p.training ? bn_bwd_workspace<C>(p).coef : 0;
    const i64 total = p.n * p.c * p.s;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (i64)gridDim.x * blockDim.x) {
        const i64 c = NHWC ? i % p.c : (i / p.s) % p.c;
        C pc, qc = (C)0, oc = (C)0;
        if (coef) {
            pc = coef[c];
            qc = coef[p.c + c];
            oc = coef[2 * p.c + c];
        } else {
            pc = w ? bn_bwd_rstd<C>(p, c) * w[c] : bn_bwd_rstd<C>(p, c);
        }
        const C d = Traits<S>::load(x[i]) - mean[c];
        dx[i] = Traits<S>::store(Traits<S>::load(dy[i]) * pc + d * qc + oc);
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
NK_ENTRY(batch_norm_apply_nchw_f32, BatchNormApplyParams, batch_norm_affine<float, false, false>)
NK_ENTRY(batch_norm_apply_nchw_f64, BatchNormApplyParams, batch_norm_affine<double, false, false>)
NK_ENTRY(batch_norm_apply_nchw_f16, BatchNormApplyParams, batch_norm_affine<f16, false, false>)
NK_ENTRY(batch_norm_apply_nchw_bf16, BatchNormApplyParams, batch_norm_affine<bf16, false, false>)
NK_ENTRY(batch_norm_apply_nhwc_f32, BatchNormApplyParams, batch_norm_affine<float, true, false>)
NK_ENTRY(batch_norm_apply_nhwc_f64, BatchNormApplyParams, batch_norm_affine<double, true, false>)
NK_ENTRY(batch_norm_apply_nhwc_f16, BatchNormApplyParams, batch_norm_affine<f16, true, false>)
NK_ENTRY(batch_norm_apply_nhwc_bf16, BatchNormApplyParams, batch_norm_affine<bf16, true, false>)
NK_ENTRY(batch_norm_infer_nchw_f32, BatchNormApplyParams, batch_norm_affine<float, false, true>)
NK_ENTRY(batch_norm_infer_nchw_f64, BatchNormApplyParams, batch_norm_affine<double, false, true>)
NK_ENTRY(batch_norm_infer_nchw_f16, BatchNormApplyParams, batch_norm_affine<f16, false, true>)
NK_ENTRY(batch_norm_infer_nchw_bf16, BatchNormApplyParams, batch_norm_affine<bf16, false, true>)
NK_ENTRY(batch_norm_infer_nhwc_f32, BatchNormApplyParams, batch_norm_affine<float, true, true>)
NK_ENTRY(batch_norm_infer_nhwc_f64, BatchNormApplyParams, batch_norm_affine<double, true, true>)
NK_ENTRY(batch_norm_infer_nhwc_f16, BatchNormApplyParams, batch_norm_affine<f16, true, true>)
NK_ENTRY(batch_norm_infer_nhwc_bf16, BatchNormApplyParams, batch_norm_affine<bf16, true, true>)
NK_ENTRY(batch_norm_bwd_reduce_nchw_f32, NormBwdParams, batch_norm_bwd_reduce_nchw<float>)
NK_ENTRY(batch_norm_bwd_reduce_nchw_f64, NormBwdParams, batch_norm_bwd_reduce_nchw<double>)
NK_ENTRY(batch_norm_bwd_reduce_nchw_f16, NormBwdParams, batch_norm_bwd_reduce_nchw<f16>)
NK_ENTRY(batch_norm_bwd_reduce_nchw_bf16, NormBwdParams, batch_norm_bwd_reduce_nchw<bf16>)
NK_ENTRY(batch_norm_bwd_reduce_nhwc_f32, NormBwdParams, batch_norm_bwd_reduce_nhwc<float>)
NK_ENTRY(batch_norm_bwd_reduce_nhwc_f64, NormBwdParams, batch_norm_bwd_reduce_nhwc<double>)
NK_ENTRY(batch_norm_bwd_reduce_nhwc_f16, NormBwdParams, batch_norm_bwd_reduce_nhwc<f16>)
NK_ENTRY(batch_norm_bwd_reduce_nhwc_bf16, NormBwdParams, batch_norm_bwd_reduce_nhwc<bf16>)
NK_ENTRY(batch_norm_bwd_input_nchw_f32, NormBwdParams, batch_norm_bwd_input<float, false>)
NK_ENTRY(batch_norm_bwd_input_nchw_f64, NormBwdParams, batch_norm_bwd_input<double, false>)
NK_ENTRY(batch_norm_bwd_input_nchw_f16, NormBwdParams, batch_norm_bwd_input<f16, false>)
NK_ENTRY(batch_norm_bwd_input_nchw_bf16, NormBwdParams, batch_norm_bwd_input<bf16, false>)
NK_ENTRY(batch_norm_bwd_input_nhwc_f32, NormBwdParams, batch_norm_bwd_input<float, true>)
NK_ENTRY(batch_norm_bwd_input_nhwc_f64, NormBwdParams, batch_norm_bwd_input<double, true>)
NK_ENTRY(batch_norm_bwd_input_nhwc_f16, NormBwdParams, batch_norm_bwd_input<f16, true>)
NK_ENTRY(batch_norm_bwd_input_nhwc_bf16, NormBwdParams, batch_norm_bwd_input<bf16, true>)
