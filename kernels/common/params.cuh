// params.cuh: kernel parameter structs, passed by value. Mirrored field for field by
// src/backend/cuda/params.rs (#[repr(C)]); both sides assert the size. Pointers are device
// addresses (u64 on the Rust side); a null optional pointer means "absent". Sizes are 64-bit;
// eps, momentum and the LRN constants are f64 and converted to the compute type in-kernel.
#pragma once
#include "compat.cuh"

namespace normkit {

// LayerNorm over `rows` rows of `cols` contiguous elements. weight/bias: `cols` compute
// values or null; mean/rstd: `rows` compute values or null.
struct LayerNormParams {
    const void* x;
    void* y;
    const void* weight;
    const void* bias;
    void* mean;
    void* rstd;
    i64 rows;
    i64 cols;
    double eps;
};
static_assert(sizeof(LayerNormParams) == 72, "LayerNormParams layout");

// GroupNorm / InstanceNorm over x of logical shape (n, c, s) in NCHW or NHWC order.
// Statistics per (n, g) over (c/groups)·s elements; weight/bias per channel.
struct GroupNormParams {
    const void* x;
    void* y;
    const void* weight;
    const void* bias;
    void* mean;   // n·groups, or null
    void* rstd;   // n·groups, or null
    void* m2;     // n·groups, or null: Σ (x − mean)² of the group (InstanceNorm running var)
    i64 n;
    i64 c;
    i64 s;
    i64 groups;
    double eps;
    int clamp_var;      // GroupNorm: 1 (var = max(var, 0))
    int zero_var_rule;  // InstanceNorm: 1 (var == 0 && eps == 0 -> rstd 0)
};
static_assert(sizeof(GroupNormParams) == 104, "GroupNormParams layout");

// InstanceNorm running-statistic update from the instance statistics of a training forward:
// mean and m2 (n·c compute values, written by group_norm_fwd with groups = c); running_mean /
// running_var: c compute values, either may be null. Each (n, c) plane has s >= 2 elements.
struct InstanceNormRunningParams {
    const void* mean;
    const void* m2;
    void* running_mean;
    void* running_var;
    i64 n;
    i64 c;
    i64 s;
    double momentum;  // f: new = f·instance + (1 − f)·old, averaged over n
};
static_assert(sizeof(InstanceNormRunningParams) == 64, "InstanceNormRunningParams layout");

// BatchNorm training statistics: per-channel (count, mean, M2) partials of `splits` blocks per
// channel (tile), merged in split order by the last block to arrive, which also writes
// mean/rstd and updates the running statistics. `workspace` holds splits·c compute values of
// mean, then of m2, then splits·c i64 counts; `counters` holds one u32 ticket per channel
// (NCHW) or per 32-channel tile (NHWC), zero before the first launch and reset by the kernel.
struct BatchNormStatsParams {
    const void* x;
    void* mean;
    void* rstd;
    void* running_mean;  // or null
    void* running_var;   // or null
    void* workspace;
    void* counters;
    i64 n;
    i64 c;
    i64 s;
    i64 splits;
    double eps;
    double momentum;  // running-statistic factor f: new = f·batch + (1 − f)·old
    void* mean_lo;    // or null: c compute values, the batch mean's remainder below `mean`
};
static_assert(sizeof(BatchNormStatsParams) == 112, "BatchNormStatsParams layout");

// BatchNorm elementwise apply: training (mean/rstd from the stats kernel) or inference
// (mean/var = running statistics, scale computed in-kernel).
struct BatchNormApplyParams {
    const void* x;
    void* y;
    const void* mean;
    const void* rstd_or_var;
    const void* weight;
    const void* bias;
    i64 n;
    i64 c;
    i64 s;
    double eps;  // inference only
    const void* mean_lo;  // training: the mean's remainder (stats kernel), or null
};
static_assert(sizeof(BatchNormApplyParams) == 88, "BatchNormApplyParams layout");

// LocalResponseNorm across channels.
struct LrnParams {
    const void* x;
    void* y;
    i64 n;
    i64 c;
    i64 s;
    i64 size;
    double alpha;
    double beta;
    double k;
};
static_assert(sizeof(LrnParams) == 72, "LrnParams layout");

// ---- Backward ----------------------------------------------------------------------------
// Gradient outputs: dx (input dtype), grad_weight/grad_bias (compute type); each may be null
// (absent). `accumulate` = 1 adds into grad_weight/grad_bias instead of overwriting them.

// LayerNorm backward over `rows` rows of `cols` elements. mean/rstd: the forward's saved
// statistics (rows compute values). workspace: 2·partials·cols compute values (per-block dγ,
// then dβ partials), needed when grad_weight or grad_bias is requested.
struct LayerNormBwdParams {
    const void* x;
    const void* dy;
    void* dx;
    const void* mean;
    const void* rstd;
    const void* weight;
    void* grad_weight;
    void* grad_bias;
    void* workspace;
    i64 rows;
    i64 cols;
    i64 partials;
    int accumulate;
    int reserved;
};
static_assert(sizeof(LayerNormBwdParams) == 104, "LayerNormBwdParams layout");

// BatchNorm / InstanceNorm / GroupNorm backward over x of logical shape (n, c, s).
// BatchNorm: statistics per channel (mean/rstd_or_var: c values); `training` = 1 uses the
// saved rstd, 0 the running variance (r = 1/sqrt(var + eps)) and no batch terms.
// GroupNorm / InstanceNorm (groups = c): saved statistics per (n, group), training only.
// `recover` = 1 (with saved statistics): an f32 saved mean's rounding is recovered where it
// matters (`rounding_matters`, common/types.cuh), as the CPU backward does; 0 keeps the saved
// mean as given (SyncBatchNorm: its means are over every rank's batch, and the CPU op keeps
// them too).
// workspace / counters: sized by the launch plan (src/backend/cuda/launch.rs); counters are
// zero before the first launch and left zero by the kernels.
struct NormBwdParams {
    const void* x;
    const void* dy;
    void* dx;
    const void* mean;
    const void* rstd_or_var;
    const void* weight;
    void* grad_weight;
    void* grad_bias;
    void* workspace;
    void* counters;
    i64 n;
    i64 c;
    i64 s;
    i64 groups;
    i64 splits;
    double eps;
    int training;
    int accumulate;
    int recover;
    int reserved;
};
static_assert(sizeof(NormBwdParams) == 144, "NormBwdParams layout");

// LocalResponseNorm backward across channels.
struct LrnBwdParams {
    const void* x;
    const void* dy;
    void* dx;
    i64 n;
    i64 c;
    i64 s;
    i64 size;
    double alpha;
    double beta;
    double k;
};
static_assert(sizeof(LrnBwdParams) == 80, "LrnBwdParams layout");

}  // namespace normkit
