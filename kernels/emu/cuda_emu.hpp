// cuda_emu.hpp: a host emulation of the CUDA execution model, so the same kernels/*.cu sources
// compile with g++ (C++17) and run on the CPU for tests (tests/cuda_emulated.rs).
//
// Model. Blocks run one after another on the calling OS thread, in an order the caller picks
// (forward or reverse), so "last block to arrive" logic sees different arrival orders. The
// threads of a block are cooperative fibers (ucontext), each with its own stack; a fiber runs
// until it reaches a synchronisation point:
//   __syncthreads()          waits until every live thread of the block is there;
//   __shfl_*_sync, __syncwarp  wait until every lane named in the mask is at a warp sync point,
//                            then exchange values through a per-warp slot array.
// Sweeps over the fibers alternate direction when `reverse_threads` is set, so a missing
// barrier (a read of another thread's shared-memory write) changes results. Divergent barriers
// (some lanes at __syncthreads, others at a shuffle), shuffles naming exited lanes and
// deadlocks are reported as launch errors instead of hanging.
// __shared__ variables are `static thread_local`: one copy per OS thread, reused by each block
// in turn (their contents are stale between blocks, as on a GPU). Atomics are plain operations
// (fibers never interleave inside one). No heap use beyond malloc/free and no C++ runtime
// (no exceptions, RTTI or thread-safe statics), so linking it needs only libc and libm.
#pragma once

#define NORMKIT_CUDA_EMU 1

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local
#define __launch_bounds__(...)
#define __restrict__ __restrict

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

namespace cuda_emu {

enum FiberState { RUNNABLE = 0, AT_BLOCK = 1, AT_WARP = 2, DONE = 3 };

struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    int state;
    unsigned int warp_mask;
};

typedef void (*KernelFn)(const void* params);

struct Block {
    Fiber* fibers;
    int nthreads;
    ucontext_t sched;
    unsigned long long (*slots)[32];  // per warp, per lane shuffle slot
    KernelFn fn;
    const void* params;
};

extern thread_local Block* g_block;
extern thread_local Fiber* g_cur;
extern thread_local dim3 g_blockIdx_, g_blockDim_, g_gridDim_;

inline int linear_tid() {
    return (int)((g_cur->tid.z * g_blockDim_.y + g_cur->tid.y) * g_blockDim_.x + g_cur->tid.x);
}

inline void yield_at(int state, unsigned int mask) {
    g_cur->state = state;
    g_cur->warp_mask = mask;
    Fiber* self = g_cur;
    swapcontext(&self->ctx, &g_block->sched);
}

template <class T> inline T shfl(unsigned int mask, T v, int src_lane) {
    const int t = linear_tid();
    const int warp = t >> 5, lane = t & 31;
    unsigned long long bits = 0;
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    memcpy(&bits, &v, sizeof(T));
    g_block->slots[warp][lane] = bits;
    yield_at(AT_WARP, mask);
    T out = v;
    if (src_lane >= 0 && src_lane < 32) memcpy(&out, &g_block->slots[warp][src_lane], sizeof(T));
    yield_at(AT_WARP, mask);  // nobody overwrites a slot before every lane has read
    return out;
}

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::g_cur->tid)
#define blockIdx (::cuda_emu::g_blockIdx_)
#define blockDim (::cuda_emu::g_blockDim_)
#define gridDim (::cuda_emu::g_gridDim_)
#define warpSize 32

inline void __syncthreads() { ::cuda_emu::yield_at(::cuda_emu::AT_BLOCK, 0u); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) {
    ::cuda_emu::yield_at(::cuda_emu::AT_WARP, mask);
}
inline void __threadfence() {}
inline void __threadfence_block() {}

template <class T> inline T __shfl_xor_sync(unsigned int mask, T v, int lane_mask) {
    return ::cuda_emu::shfl(mask, v, (::cuda_emu::linear_tid() & 31) ^ lane_mask);
}
template <class T> inline T __shfl_down_sync(unsigned int mask, T v, unsigned int delta) {
    const int lane = ::cuda_emu::linear_tid() & 31;
    const int src = lane + (int)delta;
    return ::cuda_emu::shfl(mask, v, src < 32 ? src : lane);
}
template <class T> inline T __shfl_sync(unsigned int mask, T v, int src_lane) {
    return ::cuda_emu::shfl(mask, v, src_lane & 31);
}

inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    unsigned int old = *p;
    *p = old + v;
    return old;
}
inline int atomicAdd(int* p, int v) {
    int old = *p;
    *p = old + v;
    return old;
}
inline unsigned int atomicInc(unsigned int* p, unsigned int limit) {
    unsigned int old = *p;
    *p = old >= limit ? 0u : old + 1u;
    return old;
}
inline unsigned int atomicCAS(unsigned int* p, unsigned int cmp, unsigned int v) {
    unsigned int old = *p;
    if (old == cmp) *p = v;
    return old;
}
inline unsigned int atomicExch(unsigned int* p, unsigned int v) {
    unsigned int old = *p;
    *p = v;
    return old;
}

inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned int u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Registration of entry points (one static registrar per NK_ENTRY line).
namespace cuda_emu {
struct Entry {
    const char* name;
    unsigned long params_size;
    KernelFn fn;
};
void register_kernel(const char* name, unsigned long params_size, KernelFn fn);
struct Registrar {
    Registrar(const char* name, unsigned long params_size, KernelFn fn) {
        register_kernel(name, params_size, fn);
    }
};
}  // namespace cuda_emu

#define NK_EMU_REGISTER(NAME, PARAMS)                                                         \
    static ::cuda_emu::Registrar nk_emu_registrar_##NAME(                                     \
        #NAME, sizeof(PARAMS), [](const void* raw) { NAME(*static_cast<const PARAMS*>(raw)); });
