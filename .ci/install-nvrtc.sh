#!/usr/bin/env bash
# Installs NVRTC from PyPI into .cuda-deps/ (git-ignored) and prints the directory that holds
# libnvrtc.so.12, for NORMKIT_NVRTC_PATH / LD_LIBRARY_PATH. Needs no GPU and no CUDA toolkit.
# Pinned to CUDA 12.8: PTX from a newer NVRTC than the driver is rejected by the driver
# (design/cuda-infra.md §3.4); the GPU machines run driver 580 (CUDA 13.0).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.cuda-deps"
lib="$dest/nvidia/cuda_nvrtc/lib"
if [ ! -e "$lib/libnvrtc.so.12" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest" \
        'nvidia-cuda-nvrtc-cu12==12.8.93' >&2
    rm -f "$lib"/*.alt.so* # unused copies (~100 MB)
fi
test -e "$lib/libnvrtc.so.12" || { echo "install-nvrtc: libnvrtc.so.12 missing under $lib" >&2; exit 1; }
echo "$lib"
