#!/usr/bin/env bash
# Runs the bundle built by scripts/build-gpu-bundle.sh on a GPU machine (no Rust toolchain
# needed): every test executable with NORMKIT_REQUIRE_CUDA=1 (a missing GPU or NVRTC fails
# instead of skipping), then compute-sanitizer memcheck/racecheck/synccheck on the CUDA device
# tests if compute-sanitizer is installed, then `normkit info` and
# `normkit bench --device cuda --json` (every standard case on the GPU, CUDA-event timing; one
# JSON object per case in bench.json). Logs go to $NORMKIT_GPU_LOGS (default: ./gpu-logs).
# Exit status: non-zero if any step failed. Usage: gpu-bundle/run-gpu-tests.sh
set -uo pipefail
bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
logs="${NORMKIT_GPU_LOGS:-$PWD/gpu-logs}"
mkdir -p "$logs"
here="${NORMKIT_GPU_UNPACK:-${TMPDIR:-/tmp}/normkit-gpu-bundle}"
if [ ! -x "$here/bin/normkit" ] || [ "$bundle/payload.tar.xz" -nt "$here/bin/normkit" ]; then
    rm -rf "$here" && mkdir -p "$here" && tar -C "$here" -xJf "$bundle/payload.tar.xz" || {
        echo "cannot unpack $bundle/payload.tar.xz into $here"
        exit 1
    }
fi
export NORMKIT_REQUIRE_CUDA=1 NORMKIT_REQUIRE_NVRTC=1
if [ -e "$here/lib/libnvrtc.so.12" ]; then
    export NORMKIT_NVRTC_PATH="$here/lib/libnvrtc.so.12"
    echo "NVRTC: bundled ($NORMKIT_NVRTC_PATH)"
else
    echo "NVRTC: the machine's (${NORMKIT_NVRTC_PATH:-dynamic loader search path})"
fi
export NORMKIT_KERNEL_CACHE_DIR="${NORMKIT_KERNEL_CACHE_DIR:-$logs/kernel-cache}"
# tests that run the normkit executable (bench_device) find the bundled one
export NORMKIT_BIN="$here/bin/normkit"

# Tests that read fixtures use the build machine's CARGO_MANIFEST_DIR; point it at the bundle.
baked="$(cat "$here/manifest-dir" 2>/dev/null || true)"
fixtures=1
if [ -n "$baked" ] && [ ! -d "$baked/tests/golden" ]; then
    if ! { mkdir -p "$(dirname "$baked")" && ln -sfn "$here/tree" "$baked"; } 2>/dev/null; then
        fixtures=0
        echo "note: cannot link $baked -> $here/tree; fixture-based tests are skipped"
    fi
fi
fixture_tests="golden_functional golden_layers golden_backward"

failed=()
step() { # name, command...
    local name="$1"
    shift
    echo "=== $name"
    if "$@" >"$logs/$name.log" 2>&1; then
        echo "    ok ($(grep -E '^test result' "$logs/$name.log" | tail -1))"
    else
        echo "    FAILED (see $logs/$name.log)"
        tail -20 "$logs/$name.log" | sed 's/^/    | /'
        failed+=("$name")
    fi
}

nvidia-smi >"$logs/nvidia-smi.log" 2>&1 && head -15 "$logs/nvidia-smi.log"
step info "$here/bin/normkit" info
cat "$logs/info.log"
for t in "$here"/bin/*; do
    name="$(basename "$t")"
    case "$name" in normkit | bench-*) continue ;; esac
    if [ "$fixtures" = 0 ] && [[ " $fixture_tests " == *" $name "* ]]; then
        echo "=== $name: skipped (fixtures not reachable)"
        continue
    fi
    step "$name" "$t" --test-threads=4
done

if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in memcheck racecheck synccheck; do
        step "sanitizer-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
            "$here/bin/cuda_device" --test-threads=1
    done
else
    echo "=== compute-sanitizer: not installed, skipped"
fi

# the GPU benchmark: JSON lines to bench.json, progress and failures to bench.log
echo "=== bench (normkit bench --device cuda --json)"
if "$here/bin/normkit" bench --device cuda --json >"$logs/bench.json" 2>"$logs/bench.log"; then
    echo "    ok ($(wc -l <"$logs/bench.json") cases in $logs/bench.json)"
else
    echo "    FAILED (see $logs/bench.log)"
    grep -v '^\[' "$logs/bench.log" | tail -20 | sed 's/^/    | /'
    failed+=(bench)
fi

if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU steps passed"
