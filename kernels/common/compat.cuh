// compat.cuh: the only place that tells NVRTC and the host emulation apart.
//
// Under NVRTC (`__CUDACC__`), the CUDA keywords and intrinsics are built in. Under the host
// emulation (kernels/emu/cuda_emu.hpp, compiled by g++), that header is included first and
// defines them; it also defines NK_EMU_REGISTER so every entry point registers itself.
#pragma once

#if !defined(__CUDACC__) && !defined(NORMKIT_CUDA_EMU)
#error "kernels/*.cu compile under NVRTC, or under the host emulation (kernels/emu/cuda_emu.hpp)"
#endif

#ifndef NK_EMU_REGISTER
#define NK_EMU_REGISTER(NAME, PARAMS)
#endif

// Device helpers: `static __device__ __forceinline__`.
#define NK_DEVICE static __device__ __forceinline__
// Member functions of device-side structs (no `static`).
#define NK_MEMBER __device__ __forceinline__

// One kernel entry point: forwards to a templated __device__ body, nothing else.
//   NK_ENTRY(layer_norm_fwd_warp_f32, LayerNormParams, layer_norm_fwd_warp<float, 32>)
#define NK_ENTRY(NAME, PARAMS, ...)                                                           \
    extern "C" __global__ void NAME(const PARAMS p) { __VA_ARGS__(p); }                       \
    NK_EMU_REGISTER(NAME, PARAMS)

// An entry point that the host launches with up to MAX_THREADS threads per block: the compiler
// keeps its registers within what such a block may use (without the bound, a kernel compiled
// for more registers fails at launch with CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, as
// layer_norm_bwd_bf16 did at 512 threads on an H100).
#define NK_ENTRY_BOUNDED(NAME, PARAMS, MAX_THREADS, ...)                                      \
    extern "C" __global__ void __launch_bounds__(MAX_THREADS) NAME(const PARAMS p) {          \
        __VA_ARGS__(p);                                                                       \
    }                                                                                         \
    NK_EMU_REGISTER(NAME, PARAMS)

namespace normkit {
typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
}  // namespace normkit
