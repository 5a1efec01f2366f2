#!/usr/bin/env bash
# Builds everything a GPU machine without a Rust toolchain needs into gpu-bundle/ (git-ignored;
# design/cuda-infra.md §10): gpu-bundle/run-gpu-tests.sh (the runner, scripts/run-gpu-tests.sh)
# and gpu-bundle/payload.tar.xz (~45 MB, under the device tool's 64 MiB carry limit), which
# the runner unpacks on first use and which holds:
#   bin/<test>                  every test executable (release, all features, debug info stripped,
#                               hash suffix dropped) except the build-machine tests (c_header,
#                               capi_link, capi_boundary, capi_mpi: they need the source tree, cbindgen, cc, mpicc)
#   bin/bench-<name>           the criterion bench executables
#   bin/normkit                 the normkit binary: `info`, and `bench --device cuda --json`, which
#                               the runner runs last (the bench_device test runs it too, found
#                               through NORMKIT_BIN)
#   lib/                        libnvrtc.so.12 + libnvrtc-builtins (NVRTC 12.8 from PyPI, which a
#                               CUDA 12.8+/13.x driver accepts); left out with --no-nvrtc, the
#                               runner then uses the machine's NVRTC (NORMKIT_NVRTC_PATH or the
#                               dynamic loader's search path)
#   tree/                       kernels/, tests/golden/, benches/cases.json (fixtures the tests read)
#   manifest-dir                the build's CARGO_MANIFEST_DIR (baked into tests that read fixtures)
# Usage: scripts/build-gpu-bundle.sh [--no-nvrtc]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
with_nvrtc=1
[ "${1:-}" = "--no-nvrtc" ] && with_nvrtc=0
bundle="$root/gpu-bundle"
rm -rf "$bundle"
out="$bundle/payload"
mkdir -p "$out/bin" "$out/lib" "$out/tree/tests" "$out/tree/benches"

json="$(mktemp)"
trap 'rm -f "$json"' EXIT
cargo test --release --all-features --tests --benches --no-run --message-format=json >"$json"
cargo build --release --all-features --bin normkit
python3 - "$json" "$out/bin" <<'PY'
import json, shutil, sys, os
src, dest = sys.argv[1], sys.argv[2]
seen = set()
for line in open(src):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if not m.get("profile", {}).get("test") and "bench" not in m["target"]["kind"]:
        continue
    kinds, name = m["target"]["kind"], m["target"]["name"]
    kind = kinds[0]
    if name in ("c_header", "capi_link", "capi_boundary", "capi_mpi", "capi_common"):
        continue
    if set(kinds) & {"lib", "rlib", "cdylib", "staticlib"}:
        name = "unit-tests"
    elif kind == "bin":
        name = "unit-tests-" + name
    elif kind == "bench":
        name = "bench-" + name
    if name in seen:
        continue
    seen.add(name)
    shutil.copy2(m["executable"], os.path.join(dest, name))
    print(f"  bin/{name}")
PY
cp target/release/normkit "$out/bin/normkit"
# smoke test of the device bench path the runner will take (on the host emulation here)
target/release/normkit bench --device emu --json --reps 1 --warmup 0 --max-elements 1024 \
    --dtype f32 --filter LayerNorm/8192 >/dev/null
for f in "$out"/bin/*; do strip --strip-debug "$f"; done
cp -r kernels "$out/tree/kernels"
cp -r tests/golden "$out/tree/tests/golden"
cp benches/cases.json "$out/tree/benches/"
echo "$root" >"$out/manifest-dir"
if [ "$with_nvrtc" = 1 ]; then
    lib="$(bash .ci/install-nvrtc.sh)"
    cp -L "$lib"/libnvrtc.so.12 "$out/lib/"
    cp -L "$lib"/libnvrtc-builtins.so.* "$out/lib/"
fi
tar -C "$out" -cf - . | xz -T0 -6 >"$bundle/payload.tar.xz"
rm -rf "$out"
cp scripts/run-gpu-tests.sh "$bundle/run-gpu-tests.sh"
chmod +x "$bundle/run-gpu-tests.sh"
echo "gpu-bundle: $(du -sh "$bundle" | cut -f1) in $bundle"
