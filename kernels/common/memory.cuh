// memory.cuh: 16-byte vector loads and stores with predicated tails.
//
// A pack is N = 16 / sizeof(S) consecutive elements. The vector path is taken only when the
// caller has checked (once per launch) that base pointers are 16-byte aligned and row lengths
// are multiples of N; otherwise, and for the ragged last pack, elements are moved one by one
// with a bounds check. Never a second kernel for odd sizes (design/gpu-kernels.md §4 rule 1).
#pragma once
#include "types.cuh"

namespace normkit {

template <class S> struct PackWidth { enum { N = 16 / sizeof(S) }; };

template <class S, int N> struct alignas(16) Pack { S v[N]; };

NK_DEVICE bool is_aligned16(const void* p) { return (((u64)p) & 15u) == 0; }

// An optional array (γ, β: null when absent) that load_params may read as vectors.
NK_DEVICE bool optional_aligned16(const void* p) { return !p || is_aligned16(p); }

// Loads elements [i, i + N) of `p` as compute values; lanes at or beyond `end` read as `fill`
// (0 unless given: a row's shift, so that padding adds nothing to Σ(x − shift)).
template <class S, int N>
NK_DEVICE void load_pack(const S* p, i64 i, i64 end, bool vec_ok,
                         typename Traits<S>::C (&out)[N],
                         typename Traits<S>::C fill = (typename Traits<S>::C)0) {
    if (vec_ok && i + N <= end) {
        Pack<S, N> pk = *reinterpret_cast<const Pack<S, N>*>(p + i);
#pragma unroll
        for (int k = 0; k < N; ++k) out[k] = Traits<S>::load(pk.v[k]);
    } else {
#pragma unroll
        for (int k = 0; k < N; ++k)
            out[k] = (i + k < end) ? Traits<S>::load(p[i + k]) : fill;
    }
}

// Loads elements [i, i + N) of a compute-type parameter array (γ, β: C = f32 or f64) for the
// pack of N input elements starting at i; lanes at or beyond `end` read as 0. When `vec_ok`
// (16-byte aligned base, and i a multiple of N, which makes p + i 16-byte aligned because
// N·sizeof(C) is a multiple of 16) the pack comes as N·sizeof(C)/16 vector loads instead of N
// scalar loads: a warp whose lanes hold consecutive packs then issues 2 (bf16/f16) or 1
// (f32/f64) load per array and pack, not N loads each spanning the warp's whole stride.
template <class C, int N>
NK_DEVICE void load_params(const C* p, i64 i, i64 end, bool vec_ok, C (&out)[N]) {
    enum { PER = 16 / sizeof(C), VECS = N / PER };
    if (vec_ok && VECS * PER == N && i + N <= end) {
#pragma unroll
        for (int v = 0; v < VECS; ++v) {
            Pack<C, PER> pk = *reinterpret_cast<const Pack<C, PER>*>(p + i + v * PER);
#pragma unroll
            for (int k = 0; k < PER; ++k) out[v * PER + k] = pk.v[k];
        }
    } else {
#pragma unroll
        for (int k = 0; k < N; ++k) out[k] = (i + k < end) ? p[i + k] : (C)0;
    }
}

// Stores elements [i, min(i + N, end)).
template <class S, int N>
NK_DEVICE void store_pack(S* p, i64 i, i64 end, bool vec_ok,
                          const typename Traits<S>::C (&in)[N]) {
    if (vec_ok && i + N <= end) {
        Pack<S, N> pk;
#pragma unroll
        for (int k = 0; k < N; ++k) pk.v[k] = Traits<S>::store(in[k]);
        *reinterpret_cast<Pack<S, N>*>(p + i) = pk;
    } else {
#pragma unroll
        for (int k = 0; k < N; ++k)
            if (i + k < end) p[i + k] = Traits<S>::store(in[k]);
    }
}

}  // namespace normkit
