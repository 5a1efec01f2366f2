#!/usr/bin/env bash
# One device call that gets the most out of a short GPU lease (15 minutes of device time, one
# call of at most 10 minutes), most valuable first, each part bounded in time:
#   1. gpu-bundle/run-gpu-tests.sh: nvidia-smi, `normkit info`, every GPU test executable with
#      NORMKIT_REQUIRE_CUDA=1, then compute-sanitizer memcheck on the device op tests
#      (NORMKIT_SESSION_SANITIZE_TESTS; the CPU-only tests, kernels_compile and nccl are left to
#      CI, which runs them with the same NVRTC); 45 s on an H200 (round 15);
#   2. benches/compare/compare.py --device cuda on the standard cases: normkit against
#      PyTorch on the same GPU, alternating rounds, plus a device-to-device copy; ~55 s;
#   3. if gpu-bundle/normkit-base exists: scripts/gpu-ab.sh, that build against this one
#      (2 rounds, ~70 s);
#   4. compare.py --min-elements (default 2^26: working sets several times the L2, per-call
#      host time a small share): about 4 minutes per side and round (the device bench spends
#      ~5 s of host time per grown case), so give it a call of its own
#      (NORMKIT_SESSION_PARTS=grown) or a --filter (cut short, compare.py prints what it has).
# NORMKIT_SESSION_PARTS="tests std ab grown" (default) picks the parts.
# Everything goes to $OUT (at most 8 files come back): summary.txt (this script's output),
# compare-std.md, compare-grown.md, ab.md, logs.tar.xz (every log).
# Usage (device tool): run(command="scripts/gpu-session.sh", carry=["gpu-bundle"], timeout_s=580)
# Budgets (seconds): NORMKIT_SESSION_TESTS_S (170), _STD_S (130), _AB_S (170), _GROWN_S (130),
# NORMKIT_SESSION_GROWN_ROUNDS (2), NORMKIT_SESSION_MIN_ELEMENTS.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/gpu-out}"
mkdir -p "$out"
logs="${TMPDIR:-/tmp}/normkit-gpu-logs"
mkdir -p "$logs"
export NORMKIT_GPU_LOGS="$logs" NORMKIT_KERNEL_CACHE_DIR="$logs/kernel-cache"
export PYTHONUNBUFFERED=1
here="${NORMKIT_GPU_UNPACK:-${TMPDIR:-/tmp}/normkit-gpu-bundle}"
t0=$SECONDS
exec > >(tee "$out/summary.txt") 2>&1

parts=" ${NORMKIT_SESSION_PARTS:-tests std ab grown} "
# the runner unpacks the bundle; with "tests" left out it runs nothing else
[[ "$parts" == *" tests "* ]] || export NORMKIT_GPU_SKIP="unit-tests cuda_device cuda_device_backward cuda_modules cuda_sync_batch_norm capi_cuda bench_device nccl kernels_compile bench info" NORMKIT_GPU_SANITIZE=" "
echo "### 1. tests and memcheck ($(date -u +%H:%M:%S))"
NORMKIT_GPU_BUDGET_S="${NORMKIT_SESSION_TESTS_S:-170}" NORMKIT_GPU_SKIP_CPU=1 \
    NORMKIT_GPU_SKIP="${NORMKIT_GPU_SKIP:-kernels_compile nccl bench}" \
    NORMKIT_GPU_SANITIZE="${NORMKIT_GPU_SANITIZE:-memcheck}" \
    NORMKIT_GPU_SANITIZE_TESTS="${NORMKIT_SESSION_SANITIZE_TESTS:-cuda_device cuda_device_backward}" \
    "$root/gpu-bundle/run-gpu-tests.sh"
echo "tests rc=$? after $((SECONDS - t0))s"
[ -e "$here/lib/libnvrtc.so.12" ] && export NORMKIT_NVRTC_PATH="$here/lib/libnvrtc.so.12"

compare() { # name, budget, extra args...
    local name="$1" limit="$2"
    shift 2
    echo "### $name ($(date -u +%H:%M:%S), at most ${limit}s)"
    timeout --kill-after=5 "$limit" python3 "$root/benches/compare/compare.py" --device cuda \
        --normkit "$here/bin/normkit" --bandwidth --markdown "$@" >"$out/$name.md" \
        2>"$logs/$name.err"
    echo "$name rc=$? after $((SECONDS - t0))s"
    cat "$out/$name.md"
    grep -E 'FAILED|Error|error' "$logs/$name.err" | head -20
}
[[ "$parts" == *" std "* ]] && compare compare-std "${NORMKIT_SESSION_STD_S:-130}" --rounds 2 --reps 20
if [[ "$parts" == *" ab "* ]] && [ -x "$root/gpu-bundle/normkit-base" ]; then
    echo "### A/B ($(date -u +%H:%M:%S))"
    timeout --kill-after=5 "${NORMKIT_SESSION_AB_S:-170}" \
        "$root/scripts/gpu-ab.sh" "$root/gpu-bundle/normkit-base" "$logs/ab" "" 2
    cp "$logs/ab/ab.md" "$out/ab.md" 2>/dev/null
fi
[[ "$parts" == *" grown "* ]] && compare compare-grown "${NORMKIT_SESSION_GROWN_S:-130}" \
    --rounds "${NORMKIT_SESSION_GROWN_ROUNDS:-2}" --reps 10 \
    --min-elements "${NORMKIT_SESSION_MIN_ELEMENTS:-67108864}"
echo "### done after $((SECONDS - t0))s"
tar -C "$logs" --exclude kernel-cache -cf - . | xz -T0 >"$out/logs.tar.xz"
