// reduce.cuh: plain warp and block sums. Every lane/thread ends with the bit-identical total
// (a butterfly of commutative additions), and the block step adds warp partials in warp order,
// so results do not depend on scheduling.
#pragma once
#include "compat.cuh"

namespace normkit {

template <class T> NK_DEVICE T warp_all_reduce_sum(T v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// All threads of the block must call it; blockDim.x * blockDim.y is a multiple of 32, <= 1024.
template <class T> NK_DEVICE T block_all_reduce_sum(T v, T* smem /* >= 32 entries */) {
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int nwarps = (blockDim.x * blockDim.y) >> 5;
    v = warp_all_reduce_sum(v);
    if ((tid & 31) == 0) smem[tid >> 5] = v;
    __syncthreads();
    T total = smem[0];
    for (int w = 1; w < nwarps; ++w) total += smem[w];
    __syncthreads();  // smem may be reused right after
    return total;
}

// Two block sums in one pass (two barriers instead of four): the same additions in the same
// order as two block_all_reduce_sum calls, so the same bits.
template <class T> NK_DEVICE void block_all_reduce_sum2(T& a, T& b, T* smem /* >= 64 entries */) {
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int nwarps = (blockDim.x * blockDim.y) >> 5;
    a = warp_all_reduce_sum(a);
    b = warp_all_reduce_sum(b);
    if ((tid & 31) == 0) {
        smem[tid >> 5] = a;
        smem[32 + (tid >> 5)] = b;
    }
    __syncthreads();
    T ta = smem[0], tb = smem[32];
    for (int w = 1; w < nwarps; ++w) {
        ta += smem[w];
        tb += smem[32 + w];
    }
    __syncthreads();  // smem may be reused right after
    a = ta;
    b = tb;
}

}  // namespace normkit
