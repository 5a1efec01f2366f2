#!/usr/bin/env bash
# Runs the bundle built by scripts/build-gpu-bundle.sh on a GPU machine (no Rust toolchain
# needed), most valuable first, so that a short device lease gets the GPU results:
#   1. nvidia-smi and `normkit info`;
#   2. the test executables that use the GPU (cuda_*, capi_cuda, bench_device, nccl,
#      kernels_compile, the unit tests) with NORMKIT_REQUIRE_CUDA=1 (a missing GPU or NVRTC
#      fails instead of skipping; nccl with NORMKIT_REQUIRE_GPU=1, libnccl from python3's wheel);
#   3. `normkit bench --device cuda --json` (every standard case on the GPU, CUDA-event timing,
#      checked against the float64 reference; one JSON object per case in bench.json);
#   4. with NORMKIT_GPU_COMPARE=path/to/compare.py and a python3 that has torch with CUDA:
#      `compare.py --device cuda` (normkit against PyTorch on the GPU, alternating rounds) into
#      compare-gpu.md;
#   5. compute-sanitizer memcheck/racecheck/synccheck on the CUDA device tests, if installed
#      (NORMKIT_GPU_SANITIZE="tool ..." and NORMKIT_GPU_SANITIZE_TESTS="test ..." narrow it);
#   6. the other (CPU-only) test executables, which CI also runs (NORMKIT_GPU_SKIP_CPU=1: not).
# NORMKIT_GPU_SKIP="name ..." skips the steps of those names (e.g. kernels_compile, which CI
# runs with the same NVRTC). NORMKIT_GPU_BUDGET_S=N (default: none) skips the steps that would start after N seconds and
# bounds each step by the time left (coreutils timeout). Logs go to $NORMKIT_GPU_LOGS (default:
# ./gpu-logs). Exit status: non-zero if any step failed or was cut short (skipped steps are listed
# but do not fail). Usage: gpu-bundle/run-gpu-tests.sh
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

budget="${NORMKIT_GPU_BUDGET_S:-0}"
t0=$SECONDS
failed=()
skipped=()
step() { # name, timeout in seconds, command...
    local name="$1" limit="$2" rc
    shift 2
    if [[ " ${NORMKIT_GPU_SKIP:-} " == *" $name "* ]]; then
        echo "=== $name: skipped (NORMKIT_GPU_SKIP)"
        return
    fi
    if [ "$budget" != 0 ]; then
        local left=$((budget - (SECONDS - t0)))
        if [ "$left" -lt 10 ]; then
            echo "=== $name: skipped (budget of ${budget}s spent)"
            skipped+=("$name")
            return
        fi
        [ "$limit" -gt "$left" ] && limit=$left
    fi
    echo "=== $name"
    local s0=$SECONDS
    timeout --kill-after=5 "$limit" "$@" >"$logs/$name.log" 2>&1
    rc=$?
    if [ $rc = 0 ]; then
        echo "    ok in $((SECONDS - s0))s ($(grep -E '^test result' "$logs/$name.log" | tail -1))"
    else
        [ $rc = 124 ] && echo "    TIMED OUT after ${limit}s (see $logs/$name.log)" ||
            echo "    FAILED rc=$rc in $((SECONDS - s0))s (see $logs/$name.log)"
        grep -E '^(test .* FAILED|---- |thread .* panicked|FAILED:)' "$logs/$name.log" | head -20 | sed 's/^/    | /'
        tail -12 "$logs/$name.log" | sed 's/^/    | /'
        failed+=("$name")
    fi
}

nvidia-smi >"$logs/nvidia-smi.log" 2>&1 && head -15 "$logs/nvidia-smi.log"
step info 60 "$here/bin/normkit" info
cat "$logs/info.log"

gpu_tests="unit-tests cuda_device cuda_device_backward cuda_modules cuda_sync_batch_norm"
gpu_tests="$gpu_tests capi_cuda bench_device nccl kernels_compile"
for name in $gpu_tests; do
    [ -x "$here/bin/$name" ] || continue
    NORMKIT_REQUIRE_GPU=1 step "$name" 240 "$here/bin/$name" --test-threads=4
done

# the GPU benchmark: JSON lines to bench.json, progress and failures to bench.log

step bench 180 sh -c '"$1" bench --device cuda --json >"$2/bench.json" 2>"$2/bench.err"; rc=$?;
    cat "$2/bench.err"; exit $rc' sh "$here/bin/normkit" "$logs"
[ -s "$logs/bench.json" ] && echo "    $(wc -l <"$logs/bench.json") cases in $logs/bench.json"

if [ -n "${NORMKIT_GPU_COMPARE:-}" ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    step compare-gpu 240 sh -c 'python3 "$1" --device cuda --normkit "$2" --rounds 2 --reps 20 \
        --bandwidth --markdown >"$3/compare-gpu.md"; rc=$?; cat "$3/compare-gpu.md"; exit $rc' \
        sh "$NORMKIT_GPU_COMPARE" "$here/bin/normkit" "$logs"
elif [ -n "${NORMKIT_GPU_COMPARE:-}" ]; then
    echo "=== compare-gpu: skipped (python3 has no torch with CUDA)"
fi

if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in ${NORMKIT_GPU_SANITIZE:-memcheck racecheck synccheck}; do
        for t in ${NORMKIT_GPU_SANITIZE_TESTS:-cuda_device cuda_device_backward cuda_modules capi_cuda}; do
            # API errors are not reported: tests provoke some on purpose (host pointers given
            # to cuPointerGetAttribute); capi_cuda's C work runs in child processes, and its
            # harness process makes no CUDA call (without --require-cuda-init no: exit 255)
            step "sanitizer-$tool-$t" 150 compute-sanitizer --tool "$tool" --error-exitcode 1 \
                --require-cuda-init no \
                --report-api-errors no --target-processes all "$here/bin/$t" --test-threads=1
        done
    done
else
    echo "=== compute-sanitizer: not installed, skipped"
fi

for t in "$here"/bin/*; do
    [ "${NORMKIT_GPU_SKIP_CPU:-0}" = 1 ] && break
    name="$(basename "$t")"
    case " normkit $gpu_tests " in *" $name "*) continue ;; esac
    case "$name" in bench-*) continue ;; esac
    if [ "$fixtures" = 0 ] && [[ " $fixture_tests " == *" $name "* ]]; then
        echo "=== $name: skipped (fixtures not reachable)"
        continue
    fi
    step "$name" 300 "$t" --test-threads=8
done

[ "${#skipped[@]}" -gt 0 ] && echo "skipped for the time budget: ${skipped[*]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU steps that ran passed"
