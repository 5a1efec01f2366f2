#!/bin/bash
# Page faults per call of each standard case: `perf stat -e page-faults` over a run of 20 and a
# run of 120 timed calls (each after 2 warm-up calls, no check), the difference divided by 100.
# A kernel whose temporaries the allocator returns to the OS and takes back shows here
# (docs/perf/cpu.md, round 14).
#
# usage: scripts/faults-per-call.sh [NORMKIT] [THREADS] [DTYPE] [FILTER...]
#   (a filter matching several cases gives their per-call faults together)
#   defaults: target/release/normkit, 2, f32, every standard case
# MALLOC_TRIM_THRESHOLD_ and other glibc variables pass through to normkit.
set -euo pipefail
exe=${1:-target/release/normkit}
threads=${2:-2}
dtype=${3:-f32}
shift $(( $# < 3 ? $# : 3 ))
command -v perf >/dev/null || { echo "faults-per-call: perf not found (linux-perf)" >&2; exit 2; }
if [ $# -eq 0 ]; then
    set -- BatchNorm2d/32x64x56x56/NCHW/train BatchNorm2d/32x64x56x56/NCHW/eval \
        BatchNorm2d/32x64x56x56/NCHW/bwd BatchNorm2d/32x64x56x56/NHWC/train \
        BatchNorm2d/32x64x56x56/NHWC/eval BatchNorm2d/32x64x56x56/NHWC/bwd \
        BatchNorm1d/4096x1024/NC/train BatchNorm1d/4096x1024/NC/eval \
        BatchNorm3d/8x32x16x32x32/NCDHW/train BatchNorm3d/8x32x16x32x32/NCDHW/eval \
        InstanceNorm2d/ GroupNorm/16x256x32x32/NCHW/fwd GroupNorm/16x256x32x32/NCHW/bwd \
        GroupNorm/16x256x32x32/NHWC/fwd GroupNorm/16x256x32x32/NHWC/bwd \
        LayerNorm/8192x768/row-major/fwd LayerNorm/8192x768/row-major/bwd \
        LayerNorm/4096x4096/row-major/fwd LayerNorm/4096x4096/row-major/bwd \
        LayerNorm/16384x1024/row-major/fwd LayerNorm/16384x1024/row-major/bwd \
        LocalResponseNorm/
fi
faults() {
    perf stat -x, -e page-faults "$exe" bench --threads "$threads" --dtype "$dtype" \
        --filter "$1" --reps "$2" --warmup 2 --warmup-ms 0 2>&1 >/dev/null |
        awk -F, '/page-faults/ { print $1 }'
}
for f in "$@"; do
    a=$(faults "$f" 20)
    b=$(faults "$f" 120)
    printf '%-40s threads %s %s: %s page faults per call\n' "$f" "$threads" "$dtype" $(( (b - a) / 100 ))
done
