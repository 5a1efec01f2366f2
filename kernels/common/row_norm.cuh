// row_norm.cuh: normalisation of contiguous rows, one block per row, grid-stride over rows.
//
// A row is `cols` consecutive elements: a LayerNorm row, or a GroupNorm / InstanceNorm group in
// NCHW (the cg·s elements of group (n, g) start at (n·groups + g)·cg·s). Two-pass statistics,
// Σ(x − x0) then Σ(x − μ)² with μ known (never E[x²] − E[x]²), sums in the compute type per
// thread, then block sums in a fixed order; 16-byte packs (memory.cuh). x0 is the row's first
// element (shift_of: 0 where not finite), read by every thread: the first sum works at the
// data's spread, not its offset, and μ = x0 + Σ(x − x0)/cols is kept as hi + lo (Centre,
// types.cuh) for the second pass and the apply, as the CPU op's statistics (f32 rows of mean 1e4
// and spread 1e-2 were 1.3 % off with plain f32 sums and an f32 centre).
//   resident (cols <= blockDim.x · VALUES): the row is read once, into registers.
//   streaming: three reads of the row (sum, squared deviations, apply), the second and third
//              mostly from L2.
// What differs between the ops is the epilogue `Ep` (a device struct):
//   C rstd(C m2) const                                 r from the row's M2
//   template <int N> void apply(C (&v)[N], Centre<C> mean, C r, i64 row, i64 j) const
//                                                      the affine of the pack at columns [j, j+N)
//                                                      (lanes past the row: padding, never stored)
//   void save(i64 row, C mean, C r, C m2) const        statistics out (thread 0 only; mean.hi)
// vec_ok: x and y 16-byte aligned and cols % N == 0, checked once by the caller.
// In place (x == y) is fine: each element is read before it is written by the same thread, and
// x0 is read before the first block sum (a barrier), so before any thread writes.
#pragma once
#include "types.cuh"
#include "memory.cuh"
#include "reduce.cuh"

namespace normkit {

// Σ (v − shift) over the pack v (lanes past the row were loaded as `shift`: they add 0).
template <class C, int N> NK_DEVICE C pack_dev_sum(const C (&v)[N], C shift) {
    C s = (C)0;
#pragma unroll
    for (int k = 0; k < N; ++k) s += v[k] - shift;
    return s;
}

// Σ (v − μ)² over the lanes of the pack v at columns [j, j + N) that lie in the row.
template <class C, int N>
NK_DEVICE C pack_sq_sum(const C (&v)[N], const Centre<C>& mu, i64 j, i64 cols) {
    C s = (C)0;
#pragma unroll
    for (int k = 0; k < N; ++k)
        if (j + k < cols) {
            const C d = mu.centre(v[k]);
            s += d * d;
        }
    return s;
}

// The statistics of a row held in registers by `lanes` threads (a warp or a block): thread t
// holds the packs it at columns (it·lanes + t)·N, loaded with padding x0 (the row's shift).
// `all_sum` adds a value over the threads (every thread gets the total). Returns μ as hi + lo,
// and M2 = Σ(x − μ)² in `m2`.
template <class C, int ITERS, int N, class Sum>
NK_DEVICE Centre<C> resident_moments(const C (&v)[ITERS][N], C x0, i64 t, i64 lanes, i64 cols,
                                     const Sum& all_sum, C& m2) {
    C sum = (C)0;
#pragma unroll
    for (int it = 0; it < ITERS; ++it) sum += pack_dev_sum<C, N>(v[it], x0);
    const Centre<C> mu = centre_of(x0, all_sum(sum) / (C)cols);
    C sq = (C)0;
#pragma unroll
    for (int it = 0; it < ITERS; ++it)
        sq += pack_sq_sum<C, N>(v[it], mu, ((i64)it * lanes + t) * N, cols);
    m2 = all_sum(sq);
    return mu;
}

template <class S, int VALUES, class Ep>
NK_DEVICE void row_norm_block(const S* x, S* y, i64 rows, i64 cols, bool vec_ok, const Ep& ep) {
    typedef typename Traits<S>::C C;
    enum { N = PackWidth<S>::N, ITERS = VALUES / PackWidth<S>::N };
    __shared__ C smem[32];
    const int tid = threadIdx.x;
    const i64 nthreads = blockDim.x;
    const bool resident = cols <= nthreads * VALUES;
    auto block_sum = [&](C v) { return block_all_reduce_sum(v, smem); };
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const S* xr = x + row * cols;
        S* yr = y + row * cols;
        const C x0 = shift_of(Traits<S>::load(xr[0]));
        Centre<C> mean;
        C m2, r;
        if (resident) {
            C v[ITERS][N];
#pragma unroll
            for (int it = 0; it < ITERS; ++it)
                load_pack<S, N>(xr, ((i64)it * nthreads + tid) * N, cols, vec_ok, v[it], x0);
            mean = resident_moments<C, ITERS, N>(v, x0, tid, nthreads, cols, block_sum, m2);
            r = ep.rstd(m2);
#pragma unroll
            for (int it = 0; it < ITERS; ++it) {
                const i64 j = ((i64)it * nthreads + tid) * N;
                if (j < cols) {
                    ep.template apply<N>(v[it], mean, r, row, j);
                    store_pack<S, N>(yr, j, cols, vec_ok, v[it]);
                }
            }
        } else {
            C v[N];
            C sum = (C)0;
            for (i64 j = (i64)tid * N; j < cols; j += nthreads * N) {
                load_pack<S, N>(xr, j, cols, vec_ok, v, x0);
                sum += pack_dev_sum<C, N>(v, x0);
            }
            mean = centre_of(x0, block_sum(sum) / (C)cols);
            C sq = (C)0;
            for (i64 j = (i64)tid * N; j < cols; j += nthreads * N) {
                load_pack<S, N>(xr, j, cols, vec_ok, v);
                sq += pack_sq_sum<C, N>(v, mean, j, cols);
            }
            m2 = block_sum(sq);
            r = ep.rstd(m2);
            for (i64 j = (i64)tid * N; j < cols; j += nthreads * N) {
                load_pack<S, N>(xr, j, cols, vec_ok, v);
                ep.template apply<N>(v, mean, r, row, j);
                store_pack<S, N>(yr, j, cols, vec_ok, v);
            }
        }
        if (tid == 0) ep.save(row, mean.hi, r, m2);
    }
}

}  // namespace normkit
