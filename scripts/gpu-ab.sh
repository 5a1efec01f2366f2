#!/usr/bin/env bash
# A/B of two normkit binaries on the GPU, in one device call, after gpu-bundle/run-gpu-tests.sh
# has unpacked the bundle (its bin/normkit is "new"): ROUNDS rounds (default 3), the order of
# base and new swapped every round, each a `normkit bench --device cuda --json --reps 30` over
# the cases matching FILTER (default: all). Writes DIR/ab-<side>-<round>.json and DIR/ab.md
# (benches/compare/ab_json.py) and prints the table.
# Usage: scripts/gpu-ab.sh BASE_NORMKIT DIR [FILTER] [ROUNDS]
# Example (device call, base binary built from the base commit, stripped, carried in
# gpu-bundle/normkit-base; $OUT returns at most 8 files, so keep DIR elsewhere and copy ab.md):
#   gpu-bundle/run-gpu-tests.sh > $OUT/summary.txt
#   scripts/gpu-ab.sh gpu-bundle/normkit-base /tmp/ab LayerNorm; cp /tmp/ab/ab.md $OUT/
set -uo pipefail
base="$1" dir="$2" filter="${3:-}" rounds="${4:-3}"
here="${NORMKIT_GPU_UNPACK:-${TMPDIR:-/tmp}/normkit-gpu-bundle}"
new="$here/bin/normkit"
[ -e "$here/lib/libnvrtc.so.12" ] && export NORMKIT_NVRTC_PATH="$here/lib/libnvrtc.so.12"
mkdir -p "$dir"
for r in $(seq 1 "$rounds"); do
    order="base new"
    [ $((r % 2)) = 0 ] && order="new base"
    for side in $order; do
        exe="$new"
        [ "$side" = base ] && exe="$base"
        timeout 120 "$exe" bench --device cuda --json --reps 30 ${filter:+--filter "$filter"} \
            >"$dir/ab-$side-$r.json" 2>>"$dir/ab-errors.log" ||
            echo "$side round $r: exit $? (see $dir/ab-errors.log)"
    done
done
python3 "$(dirname "${BASH_SOURCE[0]}")/../benches/compare/ab_json.py" "$dir" | tee "$dir/ab.md"
