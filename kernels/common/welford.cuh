// welford.cuh: Welford accumulation per element and Chan's merge, thread -> warp -> block.
//
// Counts are 64-bit integers (exact beyond 2^24). Merges always put the lower-index partner
// first, so every lane of a warp (and every thread of a block) ends with bit-identical values
// and the result does not depend on scheduling.
#pragma once
#include "compat.cuh"
#include "types.cuh"

namespace normkit {

template <class C> struct Welford {
    i64 n;
    C mean;
    C m2;
};

template <class C> NK_DEVICE Welford<C> welford_empty() {
    Welford<C> w;
    w.n = 0;
    w.mean = (C)0;
    w.m2 = (C)0;
    return w;
}

// Non-finite data: the mean keeps the value of Σx/n (PyTorch's saved and running mean): ±inf,
// or NaN after the other infinity or a NaN. The update mean + d/n would turn an infinite mean
// into NaN at the next finite element (inf - inf), so an infinite mean adds x instead. m2 is
// NaN either way.
template <class C> NK_DEVICE void welford_push(Welford<C>& w, C x) {
    w.n += 1;
    C d = x - w.mean;
    w.mean = nk_isfinite(w.mean) ? w.mean + d / (C)w.n : w.mean + x;
    w.m2 += d * (x - w.mean);
}

// Chan et al.: (a then b). Empty sides are exact no-ops.
template <class C> NK_DEVICE Welford<C> welford_merge(Welford<C> a, Welford<C> b) {
    if (b.n == 0) return a;
    if (a.n == 0) return b;
    Welford<C> r;
    r.n = a.n + b.n;
    C nb_over_n = (C)b.n / (C)r.n;
    C d = b.mean - a.mean;
    // a non-finite side: the mean of Σx/n (see welford_push)
    r.mean = (nk_isfinite(a.mean) && nk_isfinite(b.mean)) ? a.mean + d * nb_over_n
                                                          : a.mean + b.mean;
    r.m2 = a.m2 + b.m2 + d * d * (C)a.n * nb_over_n;
    return r;
}

// Adds K values held in registers: their own (K, mean, M2) by two passes over the registers
// (the mean as Σ(x/K): no overflow where Σx would), then one merge (a then the K values) — one
// division per K values where K welford_push calls take K. Non-finite values give the merge's
// non-finite rule (mean Σx/n: ±inf or NaN; m2 NaN), as welford_push does.
template <class C, int K> NK_DEVICE void welford_push_k(Welford<C>& w, const C (&v)[K]) {
    const C inv = (C)1 / (C)K;
    C m = (C)0;
#pragma unroll
    for (int k = 0; k < K; ++k) m += v[k] * inv;
    C q = (C)0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
        const C d = v[k] - m;
        q += d * d;
    }
    Welford<C> b;
    b.n = K;
    b.mean = m;
    b.m2 = q;
    w = welford_merge(w, b);
}

template <class C> NK_DEVICE Welford<C> warp_all_reduce_welford(Welford<C> w) {
    const int lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        Welford<C> o;
        o.n = __shfl_xor_sync(0xffffffffu, w.n, off);
        o.mean = __shfl_xor_sync(0xffffffffu, w.mean, off);
        o.m2 = __shfl_xor_sync(0xffffffffu, w.m2, off);
        w = (lane & off) ? welford_merge(o, w) : welford_merge(w, o);
    }
    return w;
}

// All threads of the block must call it; block size a multiple of 32, <= 1024.
template <class C> struct WelfordSmem {
    i64 n[32];
    C mean[32];
    C m2[32];
};

template <class C>
NK_DEVICE Welford<C> block_all_reduce_welford(Welford<C> w, WelfordSmem<C>& smem) {
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int nwarps = (blockDim.x * blockDim.y) >> 5;
    w = warp_all_reduce_welford(w);
    if ((tid & 31) == 0) {
        smem.n[tid >> 5] = w.n;
        smem.mean[tid >> 5] = w.mean;
        smem.m2[tid >> 5] = w.m2;
    }
    __syncthreads();
    Welford<C> total = welford_empty<C>();
    for (int i = 0; i < nwarps; ++i) {
        Welford<C> o;
        o.n = smem.n[i];
        o.mean = smem.mean[i];
        o.m2 = smem.m2[i];
        total = welford_merge(total, o);
    }
    __syncthreads();
    return total;
}

}  // namespace normkit
