// layer_norm.cu: LayerNorm forward, y = (x − μ)·r·γ + β per row, with
// μ = Σx/N, r = 1/sqrt(Σ(x − μ)²/N + eps) (biased variance, no clamp; spec §6.3, §9.2).
//
// Two-pass statistics from registers (Σ(x − x0) with x0 the row's first element, then
// Σ(x − μ)² with μ as hi + lo: resident_moments, common/row_norm.cuh), never E[x²] − E[x]².
// Saved mean and rstd are in the compute type (f32 for f16/bf16/f32, f64 for f64).
//
// Variants (chosen on the host by src/backend/cuda/launch.rs):
//   warp   one warp per row, rows in registers: cols <= 32 * LN_WARP_VALUES (1024).
//          blockDim.x = 128 (4 rows per block), grid-stride over rows.
//   block  one block per row (blockDim.x = 256), row in registers up to 256 * LN_BLOCK_VALUES
//          (4096); longer rows stream: three reads of the row (sum, squared deviations, apply),
//          the second and third mostly from L2. Grid-stride over rows. The body is
//          row_norm_block (common/row_norm.cuh), shared with GroupNorm NCHW.
// Host preconditions: rows >= 1, cols >= 1, x/y distinct or identical (in place is fine: each
// element is read before it is written by the same thread).
#include "common/compat.cuh"
#include "common/types.cuh"
#include "common/memory.cuh"
#include "common/reduce.cuh"
#include "common/params.cuh"
#include "common/row_norm.cuh"

namespace normkit {

#define LN_WARP_VALUES 32
#define LN_BLOCK_VALUES 16
// __launch_bounds__(256, 3): at most 85 registers a thread, so three 256-thread blocks (768
// threads) per SM; unbounded, ptxas took 93 (bf16) / 99 (f32) registers, two blocks per SM,
// and rows of 4096 ran latency-bound (bf16 no faster than f32 on an H200). f64 stays
// unbounded: at three blocks, or at two on sm_80, it spills (kernels_compile test).
#define LN_BLOCK_BOUNDS 256, 3

// ((v − μ.hi) − μ.lo)·r·γ_j + β_j for the pack of N values at columns [j, j + N). γ and β come through
// load_params: vector loads when `params_vec`, and lanes past the row (j + k >= cols: padding
// of the last pack, never stored) read no γ/β, which hold only cols values (an out-of-bounds
// read found by compute-sanitizer on an H100).
// Before: one scalar load of γ_j and of β_j per element, lanes N elements apart, so each warp
// load spanned 32·N·sizeof(C) bytes (1 KiB for bf16): 2N such loads per pack made the bf16
// forward as slow as the f32 one (H100, docs/perf/gpu.md).
template <class C, int N>
NK_DEVICE void ln_affine_pack(C (&v)[N], const Centre<C>& mean, C rstd, const C* w, const C* b,
                              i64 j, i64 cols, bool params_vec) {
    C wv[N], bv[N];
    if (w) load_params<C, N>(w, j, cols, params_vec, wv);
    if (b) load_params<C, N>(b, j, cols, params_vec, bv);
#pragma unroll
    for (int k = 0; k < N; ++k) {
        C t = mean.centre(v[k]) * rstd;
        if (w) t = t * wv[k];
        if (b) t = t + bv[k];
        v[k] = t;
    }
}

template <class S, int VALUES>
NK_DEVICE void layer_norm_fwd_warp(const LayerNormParams p) {
    typedef typename Traits<S>::C C;
    enum { N = PackWidth<S>::N, ITERS = VALUES / PackWidth<S>::N };
    const S* x = static_cast<const S*>(p.x);
    S* y = static_cast<S*>(p.y);
    const C* w = static_cast<const C*>(p.weight);
    const C* b = static_cast<const C*>(p.bias);
    const int lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    const i64 cols = p.cols;
    const bool vec_ok = is_aligned16(x) && is_aligned16(y) && cols % N == 0;
    const bool params_vec = vec_ok && optional_aligned16(w) && optional_aligned16(b);
    for (i64 row = (i64)blockIdx.x * warps + (threadIdx.x >> 5); row < p.rows;
         row += (i64)gridDim.x * warps) {
        const S* xr = x + row * cols;
        const C x0 = shift_of(Traits<S>::load(xr[0]));
        C v[ITERS][N];
#pragma unroll
        for (int it = 0; it < ITERS; ++it)
            load_pack<S, N>(xr, ((i64)it * 32 + lane) * N, cols, vec_ok, v[it], x0);
        C m2;
        const Centre<C> mean = resident_moments<C, ITERS, N>(
            v, x0, lane, 32, cols, [](C s) { return warp_all_reduce_sum(s); }, m2);
        const C rstd = rstd_from_m2<C>(m2, cols, p.eps, false, false);
        S* yr = y + row * cols;
#pragma unroll
        for (int it = 0; it < ITERS; ++it) {
            const i64 base = ((i64)it * 32 + lane) * N;
            ln_affine_pack<C, N>(v[it], mean, rstd, w, b, base, cols, params_vec);
            store_pack<S, N>(yr, base, cols, vec_ok, v[it]);
        }
        if (lane == 0) {
            if (p.mean) static_cast<C*>(p.mean)[row] = mean.hi;
            if (p.rstd) static_cast<C*>(p.rstd)[row] = rstd;
        }
    }
}

// LayerNorm's epilogue for row_norm_block (common/row_norm.cuh).
template <class C> struct LnEpilogue {
    const C* w;
    const C* b;
    C* mean;
    C* rstd_out;
    i64 cols;
    double eps;
    bool params_vec;
    NK_MEMBER C rstd(C m2) const { return rstd_from_m2<C>(m2, cols, eps, false, false); }
    template <int N> NK_MEMBER void apply(C (&v)[N], const Centre<C>& mu, C r, i64, i64 j) const {
        ln_affine_pack<C, N>(v, mu, r, w, b, j, cols, params_vec);
    }
    NK_MEMBER void save(i64 row, C mu, C r, C) const {
        if (mean) mean[row] = mu;
        if (rstd_out) rstd_out[row] = r;
    }
};

template <class S, int VALUES>
NK_DEVICE void layer_norm_fwd_block(const LayerNormParams p) {
    typedef typename Traits<S>::C C;
    const S* x = static_cast<const S*>(p.x);
    S* y = static_cast<S*>(p.y);
    LnEpilogue<C> ep;
    ep.w = static_cast<const C*>(p.weight);
    ep.b = static_cast<const C*>(p.bias);
    ep.mean = static_cast<C*>(p.mean);
    ep.rstd_out = static_cast<C*>(p.rstd);
    ep.cols = p.cols;
    ep.eps = p.eps;
    const bool vec_ok = is_aligned16(x) && is_aligned16(y) && p.cols % PackWidth<S>::N == 0;
    ep.params_vec = vec_ok && optional_aligned16(ep.w) && optional_aligned16(ep.b);
    row_norm_block<S, VALUES>(x, y, p.rows, p.cols, vec_ok, ep);
}

// ---- Backward ------------------------------------------------------------------------------
// layer_norm_bwd: one block per row (blockDim.x = 32..512, chosen by the host from cols),
// grid-stride over rows, grid = SMs × (LN_BWD_THREADS_PER_SM / blockDim.x) (launch.rs). Per
// row, with d = x − μ (μ the saved mean, or hi + lo where its rounding matters: `recentred`,
// common/types.cuh, one more block sum for such rows), ĝ = dy·γ:
//   a = Σĝ/cols·r, b = Σĝ·d/cols·r³, dx = ĝ·r − a − d·b        (CPU order, sums in C)
// and each thread accumulates dγ_j += dy·d·r, dβ_j += dy for its columns:
//   resident (cols <= T·LN_BWD_VALUES): thread t holds the packs q = it·T + t (16-byte packs
//            of N elements, columns q·N .. q·N+N−1, memory.cuh) of x and dy in registers, γ
//            for its columns once per block, dγ/dβ in registers; x and dy are read once, dx
//            written as packs;
//   streaming: element by element, x and dy read twice (the second mostly from L2), dγ/dβ
//            straight into the block's own workspace row.
// The two row sums are one block reduction (block_all_reduce_sum2). Partials:
// workspace[block][cols] of dγ, then of dβ (no atomics).
// layer_norm_bwd_params: 32 columns × 16 slices per block sum the partials in a fixed order
// (deterministic) and write / accumulate grad_weight and grad_bias.
#define LN_BWD_VALUES 8
#define LN_BWD_MAX_THREADS 512  // launch::LN_BWD_MAX_THREADS

template <class S, int VALUES>
NK_DEVICE void layer_norm_bwd(const LayerNormBwdParams p) {
    typedef typename Traits<S>::C C;
    enum { N = PackWidth<S>::N, ITERS = VALUES / PackWidth<S>::N };
    __shared__ C smem[64];
    const S* x = static_cast<const S*>(p.x);
    const S* dy = static_cast<const S*>(p.dy);
    S* dx = static_cast<S*>(p.dx);
    const C* w = static_cast<const C*>(p.weight);
    const i64 cols = p.cols;
    const int tid = threadIdx.x;
    const i64 nthreads = blockDim.x;
    const bool params = p.workspace && (p.grad_weight || p.grad_bias);
    C* pdw = params ? static_cast<C*>(p.workspace) + (i64)blockIdx.x * cols : 0;
    C* pdb = params ? static_cast<C*>(p.workspace) + (p.partials + blockIdx.x) * cols : 0;
    const bool resident = cols <= nthreads * VALUES;
    const C m = (C)cols;
    // the saved mean's rounding is recovered for f32 rows only: f16/bf16 data near a mean
    // of 1e4 are 8–64 apart, far more than an f32 mean's rounding, and an f64 mean's
    // rounding is 2^-29 of an f32 one's; the f64 and f16 kernels would spill registers
    const bool RECOVER = sizeof(S) == 4;
    if (resident) {
        const bool vec_ok = is_aligned16(x) && is_aligned16(dy) && optional_aligned16(dx) &&
                            cols % N == 0;
        const bool w_vec = vec_ok && optional_aligned16(w);
        C wv[ITERS][N], adw[ITERS][N], adb[ITERS][N];
#pragma unroll
        for (int it = 0; it < ITERS; ++it) {
            const i64 j = ((i64)it * nthreads + tid) * N;
            if (w) {
                load_params<C, N>(w, j, cols, w_vec, wv[it]);
            } else {
#pragma unroll
                for (int k = 0; k < N; ++k) wv[it][k] = (C)1;
            }
#pragma unroll
            for (int k = 0; k < N; ++k) adw[it][k] = adb[it][k] = (C)0;
        }
        for (i64 row = blockIdx.x; row < p.rows; row += gridDim.x) {
            const S* xr = x + row * cols;
            const S* gr = dy + row * cols;
            const C mu = static_cast<const C*>(p.mean)[row];
            const C rs = static_cast<const C*>(p.rstd)[row];
            C xv[ITERS][N], gv[ITERS][N];
#pragma unroll
            for (int it = 0; it < ITERS; ++it) {
                const i64 j = ((i64)it * nthreads + tid) * N;
                load_pack<S, N>(xr, j, cols, vec_ok, xv[it]);
                load_pack<S, N>(gr, j, cols, vec_ok, gv[it]);
            }
            Centre<C> mc;
            mc.hi = mu;
            mc.lo = (C)0;
            if (RECOVER && rounding_matters(mu, rs)) {  // uniform over the block (one row)
                C s = (C)0;
#pragma unroll
                for (int it = 0; it < ITERS; ++it) {
                    const i64 j = ((i64)it * nthreads + tid) * N;
#pragma unroll
                    for (int k = 0; k < N; ++k)
                        if (j + k < cols) s += xv[it][k] - mu;
                }
                s = block_all_reduce_sum(s, smem);
                mc = recentred(mu, s / m);
            }
            C sa = (C)0, sb = (C)0;
#pragma unroll
            for (int it = 0; it < ITERS; ++it) {
                const i64 j = ((i64)it * nthreads + tid) * N;
#pragma unroll
                for (int k = 0; k < N; ++k)
                    if (j + k < cols) {
                        const C d = mc.centre(xv[it][k]);
                        const C gw = w ? gv[it][k] * wv[it][k] : gv[it][k];
                        sa += gw;
                        sb += gw * d;
                        adw[it][k] += gv[it][k] * d * rs;
                        adb[it][k] += gv[it][k];
                    }
            }
            block_all_reduce_sum2(sa, sb, smem);
            if (dx) {
                const C a = sa / m * rs;
                const C b = sb / m * rs * rs * rs;
                S* dr = dx + row * cols;
#pragma unroll
                for (int it = 0; it < ITERS; ++it) {
                    const i64 j = ((i64)it * nthreads + tid) * N;
                    if (j < cols) {
                        C o[N];
#pragma unroll
                        for (int k = 0; k < N; ++k) {
                            const C gw = w ? gv[it][k] * wv[it][k] : gv[it][k];
                            o[k] = gw * rs - a - mc.centre(xv[it][k]) * b;
                        }
                        store_pack<S, N>(dr, j, cols, vec_ok, o);
                    }
                }
            }
        }
        if (params) {
#pragma unroll
            for (int q = 0; q < ITERS * N; ++q) {  // pack q / N, lane q % N
                const i64 j = ((i64)(q / N) * nthreads + tid) * N + q % N;
                if (j < cols) {
                    pdw[j] = adw[q / N][q % N];
                    pdb[j] = adb[q / N][q % N];
                }
            }
        }
        return;
    }
    if (params)
        for (i64 j = tid; j < cols; j += nthreads) pdw[j] = pdb[j] = (C)0;
    for (i64 row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const S* xr = x + row * cols;
        const S* gr = dy + row * cols;
        const C mu = static_cast<const C*>(p.mean)[row];
        const C rs = static_cast<const C*>(p.rstd)[row];
        Centre<C> mc;
        mc.hi = mu;
        mc.lo = (C)0;
        if (RECOVER && rounding_matters(mu, rs)) {
            C s = (C)0;
            for (i64 j = tid; j < cols; j += nthreads) s += Traits<S>::load(xr[j]) - mu;
            s = block_all_reduce_sum(s, smem);
            mc = recentred(mu, s / m);
        }
        C sa = (C)0, sb = (C)0;
        for (i64 j = tid; j < cols; j += nthreads) {
            const C g = Traits<S>::load(gr[j]);
            const C d = mc.centre(Traits<S>::load(xr[j]));
            const C gw = w ? g * w[j] : g;
            sa += gw;
            sb += gw * d;
            if (params) {
                pdw[j] += g * d * rs;
                pdb[j] += g;
            }
        }
        block_all_reduce_sum2(sa, sb, smem);
        if (dx) {
            const C a = sa / m * rs;
            const C b = sb / m * rs * rs * rs;
            S* dr = dx + row * cols;
            for (i64 j = tid; j < cols; j += nthreads) {
                const C g = Traits<S>::load(gr[j]);
                const C d = mc.centre(Traits<S>::load(xr[j]));
                const C gw = w ? g * w[j] : g;
                dr[j] = Traits<S>::store(gw * rs - a - d * b);
            }
        }
    }
}

// One block of 32 columns × blockDim.y slices: slice y sums the partial rows y, y + Y, ... of
// its column in increasing order, then slice 0 adds the Y slice sums in order 0..Y-1 (fixed
// order: deterministic for a given partial count). Grid-stride over column tiles.
template <class S>
NK_DEVICE void layer_norm_bwd_params(const LayerNormBwdParams p) {
    typedef typename Traits<S>::C C;
    __shared__ C sw_s[32][33], sb_s[32][33];
    const C* ws = static_cast<const C*>(p.workspace);
    C* gw = static_cast<C*>(p.grad_weight);
    C* gb = static_cast<C*>(p.grad_bias);
    const int tx = threadIdx.x, ty = threadIdx.y, slices = blockDim.y;
    for (i64 tile = (i64)blockIdx.x * 32; tile < p.cols; tile += (i64)gridDim.x * 32) {
        const i64 j = tile + tx;
        C sw = (C)0, sb = (C)0;
        if (j < p.cols)
#pragma unroll 4
            for (i64 k = ty; k < p.partials; k += slices) {
                sw += ws[k * p.cols + j];
                sb += ws[(p.partials + k) * p.cols + j];
            }
        sw_s[ty][tx] = sw;
        sb_s[ty][tx] = sb;
        __syncthreads();
        if (ty == 0 && j < p.cols) {
            C tw = (C)0, tb = (C)0;
            for (int y = 0; y < slices; ++y) {
                tw += sw_s[y][tx];
                tb += sb_s[y][tx];
            }
            if (gw) gw[j] = p.accumulate ? gw[j] + tw : tw;
            if (gb) gb[j] = p.accumulate ? gb[j] + tb : tb;
        }
        __syncthreads();
    }
}

}  // namespace normkit

using namespace normkit;

// Instantiation table: one line per entry point.
NK_ENTRY(layer_norm_fwd_warp_f32, LayerNormParams, layer_norm_fwd_warp<float, LN_WARP_VALUES>)
NK_ENTRY(layer_norm_fwd_warp_f64, LayerNormParams, layer_norm_fwd_warp<double, LN_WARP_VALUES>)
NK_ENTRY(layer_norm_fwd_warp_f16, LayerNormParams, layer_norm_fwd_warp<f16, LN_WARP_VALUES>)
NK_ENTRY(layer_norm_fwd_warp_bf16, LayerNormParams, layer_norm_fwd_warp<bf16, LN_WARP_VALUES>)
NK_ENTRY_BOUNDED(layer_norm_fwd_block_f32, LayerNormParams, LN_BLOCK_BOUNDS,
                 layer_norm_fwd_block<float, LN_BLOCK_VALUES>)
NK_ENTRY(layer_norm_fwd_block_f64, LayerNormParams, layer_norm_fwd_block<double, LN_BLOCK_VALUES>)
NK_ENTRY_BOUNDED(layer_norm_fwd_block_f16, LayerNormParams, LN_BLOCK_BOUNDS,
                 layer_norm_fwd_block<f16, LN_BLOCK_VALUES>)
NK_ENTRY_BOUNDED(layer_norm_fwd_block_bf16, LayerNormParams, LN_BLOCK_BOUNDS,
                 layer_norm_fwd_block<bf16, LN_BLOCK_VALUES>)
NK_ENTRY_BOUNDED(layer_norm_bwd_f32, LayerNormBwdParams, LN_BWD_MAX_THREADS,
                 layer_norm_bwd<float, LN_BWD_VALUES>)
NK_ENTRY_BOUNDED(layer_norm_bwd_f64, LayerNormBwdParams, LN_BWD_MAX_THREADS,
                 layer_norm_bwd<double, LN_BWD_VALUES>)
NK_ENTRY_BOUNDED(layer_norm_bwd_f16, LayerNormBwdParams, LN_BWD_MAX_THREADS,
                 layer_norm_bwd<f16, LN_BWD_VALUES>)
NK_ENTRY_BOUNDED(layer_norm_bwd_bf16, LayerNormBwdParams, LN_BWD_MAX_THREADS,
                 layer_norm_bwd<bf16, LN_BWD_VALUES>)
NK_ENTRY(layer_norm_bwd_params_f32, LayerNormBwdParams, layer_norm_bwd_params<float>)
NK_ENTRY(layer_norm_bwd_params_f64, LayerNormBwdParams, layer_norm_bwd_params<double>)
NK_ENTRY(layer_norm_bwd_params_f16, LayerNormBwdParams, layer_norm_bwd_params<f16>)
NK_ENTRY(layer_norm_bwd_params_bf16, LayerNormBwdParams, layer_norm_bwd_params<bf16>)
