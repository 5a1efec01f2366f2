// row_norm.cuh: normalisation of contiguous rows, one block per row, grid-stride over rows.
//
// A row is `cols` consecutive elements: a LayerNorm row, or a GroupNorm / InstanceNorm group in
// NCHW (the cg·s elements of group (n, g) start at (n·groups + g)·cg·s). Two-pass statistics,
// Σx then Σ(x − μ)² with μ known (never E[x²] − E[x]²), sums in the compute type per thread,
// then block sums in a fixed order; 16-byte packs (memory.cuh).
//   resident (cols <= blockDim.x · VALUES): the row is read once, into registers.
//   streaming: three reads of the row (sum, squared deviations, apply), the second and third
//              mostly from L2.
// What differs between the ops is the epilogue `Ep` (a device struct):
//   C rstd(C m2) const                                 r from the row's M2
//   template <int N> void apply(C (&v)[N], C mean, C r, i64 row, i64 j) const
//                                                      the affine of the pack at columns [j, j+N)
//                                                      (lanes past the row: padding, never stored)
//   void save(i64 row, C mean, C r, C m2) const        statistics out (thread 0 only)
// vec_ok: x and y 16-byte aligned and cols % N == 0, checked once by the caller.
// In place (x == y) is fine: each element is read before it is written by the same thread.
#pragma once
#include "types.cuh"
#include "memory.cuh"
#include "reduce.cuh"

namespace normkit {

template <class S, int VALUES, class Ep>
NK_DEVICE void row_norm_block(const S* x, S* y, i64 rows, i64 cols, bool vec_ok, const Ep& ep) {
    typedef typename Traits<S>::C C;
    enum { N = PackWidth<S>::N, ITERS = VALUES / PackWidth<S>::N };
    __shared__ C smem[32];
    const int tid = threadIdx.x;
    const i64 nthreads = blockDim.x;
    const bool resident = cols <= nthreads * VALUES;
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const S* xr = x + row * cols;
        S* yr = y + row * cols;
        C mean, m2, r;
        if (resident) {
            C v[ITERS][N];
            C sum = (C)0;
#pragma unroll
            for (int it = 0; it < ITERS; ++it) {
                load_pack<S, N>(xr, ((i64)it * nthreads + tid) * N, cols, vec_ok, v[it]);
#pragma unroll
                for (int k = 0; k < N; ++k) sum += v[it][k];
            }
            mean = block_all_reduce_sum(sum, smem) / (C)cols;
            C sq = (C)0;
#pragma unroll
            for (int it = 0; it < ITERS; ++it)
#pragma unroll
                for (int k = 0; k < N; ++k)
                    if (((i64)it * nthreads + tid) * N + k < cols) {
                        C d = v[it][k] - mean;
                        sq += d * d;
                    }
            m2 = block_all_reduce_sum(sq, smem);
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
                load_pack<S, N>(xr, j, cols, vec_ok, v);
#pragma unroll
                for (int k = 0; k < N; ++k) sum += v[k];
            }
            mean = block_all_reduce_sum(sum, smem) / (C)cols;
            C sq = (C)0;
            for (i64 j = (i64)tid * N; j < cols; j += nthreads * N) {
                load_pack<S, N>(xr, j, cols, vec_ok, v);
#pragma unroll
                for (int k = 0; k < N; ++k)
                    if (j + k < cols) {
                        C d = v[k] - mean;
                        sq += d * d;
                    }
            }
            m2 = block_all_reduce_sum(sq, smem);
            r = ep.rstd(m2);
            for (i64 j = (i64)tid * N; j < cols; j += nthreads * N) {
                load_pack<S, N>(xr, j, cols, vec_ok, v);
                ep.template apply<N>(v, mean, r, row, j);
                store_pack<S, N>(yr, j, cols, vec_ok, v);
            }
        }
        if (tid == 0) ep.save(row, mean, r, m2);
    }
}

}  // namespace normkit
