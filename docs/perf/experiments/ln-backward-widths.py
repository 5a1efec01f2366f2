# One process: normkit's LayerNorm backward through the C ABI (benches/compare/nkffi.py) on
# torch tensors of (rows, cols), f32 or bf16, 6 Mi elements per tensor by default; prints the
# median ms of 15 calls after 200 ms of warm-up. docs/perf/cpu.md, round 23.
# usage: python3 ln-backward-widths.py COLS THREADS f32|bf16 [ELEMENTS]
# (run from the repository root after `cargo build --release`; alternate processes to A/B)
import sys, time, statistics, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, "benches/compare")
import torch, nkffi
cols, threads, dt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
elems = int(sys.argv[4]) if len(sys.argv) > 4 else 6291456
rows = elems // cols
dtype = torch.float32 if dt == "f32" else torch.bfloat16
nk = nkffi.Normkit("target/release/libnormkit.so", threads)
x = (torch.rand(rows, cols) * 2 - 1).to(dtype)
dy = (torch.rand(rows, cols) * 2 - 1).to(dtype)
w = torch.rand(cols).to(dtype); b = torch.rand(cols).to(dtype)
run, _, _ = nk.backward("LayerNorm", x, w, b, dy, normalized_ndim=1, eps=1e-5)
t0 = time.perf_counter()
while time.perf_counter() - t0 < 0.2:
    run()
ts = []
for _ in range(15):
    a = time.perf_counter(); run(); ts.append((time.perf_counter() - a) * 1e3)
print(statistics.median(ts))
