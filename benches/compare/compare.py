#!/usr/bin/env python3
"""Side-by-side timing of `normkit bench --json` and PyTorch on the standard cases.

For every (threads, dtype, case) the two are run alternately, `--rounds` times (the order is
swapped every round), and the median of the per-round medians is kept. Prints the speed-up
(PyTorch time / normkit time) per case and its geometric mean per thread count and dtype, the
median of the per-round speed-ups ("paired": each round's two sides are timed one right after
the other, so drift of the machine between rounds cancels), and per case the lowest and
highest speed-up of a single round ("per round"): on a shared, noisy machine a case whose
range straddles 1.0x is a tie, whatever its median says.

On the CPU normkit runs as one long-lived `normkit bench --serve` process (since round 19), as
PyTorch runs in this one: normkit prepares a case's tensors once (PyTorch makes its module and
input afresh each round, outside the timing), and each side warms up for --warmup-ms before
each round's timing, as before. (A 50 ms warm-up after the first round left both sides slower
than their steady state after --settle's idle pause: BatchNorm1d eval f32, one thread, 2.0–2.3
ms against 1.2–1.3 ms with 200 ms.) --processes restores the earlier method (a fresh `normkit
bench` process per case and round). --in-process (round 20) runs normkit inside this process
instead, through its C ABI (`nkffi.py`, ctypes, --lib), on the very tensors PyTorch uses: the
same input, parameters and statistics in the same memory, each side writing its own output,
and normkit's output checked against PyTorch's before the timing. Neither side's timing then
depends on where its own buffers happened to land (docs/perf/cpu.md, round 20).

    python3 benches/compare/compare.py [--normkit target/release/normkit] [--reps 11]
        [--rounds 3] [--threads 1 2] [--dtypes float32 bfloat16] [--filter SUBSTR]
        [--bandwidth] [--markdown] [--settle 0.25] [--device cpu|cuda] [--min-elements N]
        [--processes | --in-process [--lib target/release/libnormkit.so]]

With --device cuda both sides run on GPU 0 (`normkit bench --device cuda`, PyTorch on
torch.device("cuda")), each timed with CUDA events around every call after warm-up calls; a
round runs the whole (filtered) suite on one side, then on the other, the order swapped every
round, and --bandwidth measures a device-to-device copy (bytes read + written) through PyTorch.
SIGTERM (a `timeout` running out) ends the rounds and prints the table of what was measured.

Backward ("bwd") cases time only PyTorch's autograd backward of F.batch_norm (training) /
F.group_norm / F.layer_norm with x, weight and bias requiring grad (dx, dweight, dbias), the
forward running untimed before each repetition; normkit times the matching *_backward op from
saved statistics.

PyTorch is needed only here (pip install torch); it is not a CI dependency.
"""

import argparse
import signal
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

import nkffi

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "..", "cases.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CHANNELS_LAST = {"NHWC": torch.channels_last, "NDHWC": torch.channels_last_3d}


def expand(suite, dtypes):
    for c in suite["cases"]:
        for layout in c["layouts"]:
            for mode in c["modes"]:
                for d in dtypes:
                    yield dict(c, layout=layout, mode=mode, dtype=d)


def name(case):
    shape = "x".join(str(s) for s in case["shape"])
    return f"{case['layer']}/{shape}/{case['layout']}/{case['mode']}/{case['dtype']}"


def torch_module(case, suite):
    layer, shape = case["layer"], case["shape"]
    eps = suite["eps"]
    if layer.startswith("BatchNorm"):
        m = getattr(torch.nn, layer)(shape[1], eps=eps)
        m.train(case["mode"] == "train")
    elif layer.startswith("InstanceNorm"):
        m = getattr(torch.nn, layer)(shape[1], eps=eps)
    elif layer == "GroupNorm":
        m = torch.nn.GroupNorm(case["num_groups"], shape[1], eps=eps)
    elif layer == "LayerNorm":
        m = torch.nn.LayerNorm(case["normalized_shape"], eps=eps)
    elif layer == "LocalResponseNorm":
        p = suite["lrn"]
        m = torch.nn.LocalResponseNorm(p["size"], p["alpha"], p["beta"], p["k"])
    else:
        raise ValueError(layer)
    return m.to(DTYPES[case["dtype"]])


class Clock:
    """Milliseconds of one call: the host clock on the CPU, CUDA events on a GPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def time(self, f):
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            f()
            b.record()
            b.synchronize()
            return a.elapsed_time(b)
        t = time.perf_counter()
        f()
        return (time.perf_counter() - t) * 1e3


def warm(f, runs, ms):
    """Calls f() at least `runs` times and until `ms` milliseconds have passed (the same rule
    as `normkit bench --warmup N --warmup-ms MS`, so both sides are timed warm)."""
    start = time.perf_counter()
    k = 0
    while k < max(runs, 1) or (time.perf_counter() - start) * 1e3 < ms and k < 10000:
        f()
        k += 1


def round_spread(nk, th):
    """The lowest and highest speed-up of one round (its normkit and PyTorch timings, taken
    one after the other), e.g. "0.93-1.08x": how far a single alternation strays from the
    medians the table reports. `nk` and `th` hold one entry per round (`th`'s is None where
    PyTorch failed that round). "n/a" with fewer than two rounds timed on both sides."""
    ratios = [t / n["median_ms"] for n, t in zip(nk, th) if t is not None]
    if len(ratios) < 2:
        return "n/a"
    return f"{min(ratios):.2f}-{max(ratios):.2f}x"


def time_torch(case, suite, threads, reps, device=torch.device("cpu"), warmup=3, warmup_ms=200.0):
    torch.set_num_threads(threads)
    m = torch_module(case, suite).to(device)
    x = random_tensor(case, device, -1.5, 4.0)
    clock = Clock(device)
    if case["mode"] == "bwd":
        return time_torch_backward(case, suite, m, x, reps, clock, warmup, warmup_ms)
    with torch.no_grad():
        try:
            warm(lambda: m(x), warmup, warmup_ms)
        except RuntimeError as e:  # e.g. LRN bf16 at rank 4 on PyTorch's CPU
            return None, str(e).splitlines()[0]
        times = [clock.time(lambda: m(x)) for _ in range(reps)]
    return statistics.median(times), None


def time_torch_backward(case, suite, m, x, reps, clock, warmup, warmup_ms):
    """Times only the backward (grad_input, grad_weight, grad_bias) of F.* with autograd; the
    forward (training mode for BatchNorm, saving the statistics) runs outside the timing."""
    dy = random_tensor(case, x.device, -1.0, 2.0)
    step, _ = torch_backward_step(case, suite, m, x, dy, clock)
    warm(step, warmup, warmup_ms)
    times = [step() for _ in range(reps)]
    return statistics.median(times), None


def random_tensor(case, device, lo, width):
    """Uniform values in [lo, lo + width) in the case's shape, dtype and memory format."""
    # generated where it runs: a grown case's 2^26+ values took seconds on the host
    v = (torch.rand(case["shape"], device=device) * width + lo).to(DTYPES[case["dtype"]])
    if case["layout"] in CHANNELS_LAST:
        v = v.contiguous(memory_format=CHANNELS_LAST[case["layout"]])
    return v


def torch_backward_step(case, suite, m, x, dy, clock):
    """(step, grads): step() runs the forward of F.* untimed, then returns the milliseconds of
    its autograd backward with upstream gradient dy; grads() runs both and returns x's
    gradient."""
    import torch.nn.functional as F
    layer, eps = case["layer"], suite["eps"]
    x = x.detach().requires_grad_(True)
    w = m.weight.detach().requires_grad_(True)
    b = m.bias.detach().requires_grad_(True)
    if layer.startswith("BatchNorm"):
        fwd = lambda: F.batch_norm(x, None, None, w, b, training=True, eps=eps)
    elif layer == "GroupNorm":
        fwd = lambda: F.group_norm(x, case["num_groups"], w, b, eps=eps)
    elif layer == "LayerNorm":
        fwd = lambda: F.layer_norm(x, case["normalized_shape"], w, b, eps=eps)
    else:
        raise ValueError(layer)

    def step():
        y = fwd()
        ms = clock.time(lambda: y.backward(dy))
        x.grad = w.grad = b.grad = None
        return ms

    def grads():
        fwd().backward(dy)
        g = x.grad.detach().clone()
        x.grad = w.grad = b.grad = None
        return g
    return step, grads


class SharedCase:
    """One case on tensors shared by both libraries in this process (--in-process): PyTorch's
    module, input and upstream gradient; normkit (`nkffi`, its C ABI) reads them in place and
    writes into tensors allocated here. `torch_step()` and `normkit_step()` each time one call
    (ms); `check()` raises when normkit's output strays from PyTorch's."""

    def __init__(self, nk, case, suite):
        self.case, self.clock = case, Clock(torch.device("cpu"))
        layer, mode, eps = case["layer"], case["mode"], suite["eps"]
        m = self.m = torch_module(case, suite)
        x = self.x = random_tensor(case, "cpu", -1.5, 4.0)
        self.out = torch.empty_like(x)
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if mode == "bwd":
            dy = random_tensor(case, "cpu", -1.0, 2.0)
            self.torch_step, self.torch_grads = torch_backward_step(case, suite, m, x, dy,
                                                                    self.clock)
            if layer.startswith("BatchNorm"):
                fields = dict(eps=eps)
            elif layer == "GroupNorm":
                fields = dict(num_groups=case["num_groups"], eps=eps)
            else:
                fields = dict(normalized_ndim=len(case["normalized_shape"]), eps=eps)
            run, (self.out, _, _), _ = nk.backward(layer, x, w, b, dy, **fields)
        else:
            def torch_step():
                with torch.no_grad():
                    return self.clock.time(lambda: m(x))
            self.torch_step = torch_step
            io = dict(x=x, y=self.out)
            if layer.startswith("BatchNorm"):
                op = ("batch_norm_forward_training" if mode == "train"
                      else "batch_norm_forward_inference")
                run = nk.op(op, weight=w, bias=b, running_mean=m.running_mean,
                            running_var=m.running_var, momentum=m.momentum, eps=eps, **io)
            elif layer.startswith("InstanceNorm"):
                run = nk.op("instance_norm_forward", use_input_stats=True, eps=eps, **io)
            elif layer == "GroupNorm":
                run = nk.op("group_norm_forward", weight=w, bias=b,
                            num_groups=case["num_groups"], eps=eps, **io)
            elif layer == "LayerNorm":
                run = nk.op("layer_norm_forward", weight=w, bias=b, eps=eps,
                            normalized_ndim=len(case["normalized_shape"]), **io)
            else:
                p = suite["lrn"]
                run = nk.op("local_response_norm_forward", size=p["size"], alpha=p["alpha"],
                            beta=p["beta"], k=p["k"], **io)
        self.normkit_step = lambda: self.clock.time(run)
        self.run = run

    def try_check(self):
        """check(), except that PyTorch failing to run the case (LocalResponseNorm bf16 at rank
        4) is returned as the first line of its message, for the table; None when both ran."""
        try:
            self.check()
        except NotImplementedError as e:
            self.torch_step = lambda: None
            return str(e).splitlines()[0]
        return None

    def check(self):
        """normkit's output (y, or dx for bwd) against PyTorch's on the same input: the largest
        difference at most 1e-3 (f32) or 5e-2 (bf16) of the larger of 1 and the largest |value|.
        (BatchNorm training's output depends on the batch only; both sides also update the
        running statistics they share.)"""
        self.run()
        if self.case["mode"] == "bwd":
            ref = self.torch_grads()
        else:
            with torch.no_grad():
                ref = self.m(self.x)
        ref, got = ref.float(), self.out.float()
        tol = (1e-3 if self.case["dtype"] == "float32" else 5e-2) * max(1.0, ref.abs().max().item())
        err = (ref - got).abs().max().item()
        if not err <= tol:
            raise RuntimeError(f"{name(self.case)}: normkit's output differs from PyTorch's by "
                               f"{err:.3g} (expected at most {tol:.3g})")


def byte_model(case):
    """`Case::bytes` of src/bench.rs: x read and y written (backward: x and dy read, dx
    written), plus the parameter passes."""
    size = torch.tensor([], dtype=DTYPES[case["dtype"]]).element_size()
    numel = math.prod(case["shape"])
    layer = case["layer"]
    if layer == "LayerNorm":
        params = math.prod(case["normalized_shape"])
    elif layer == "LocalResponseNorm" or layer.startswith("InstanceNorm"):
        params = 0
    else:
        params = case["shape"][1]
    passes = 2 + ((4 if case["mode"] == "train" else 2) if layer.startswith("BatchNorm") else 0)
    return (3 if case["mode"] == "bwd" else 2) * numel * size + passes * params * size


def time_normkit(exe, case, threads, reps, warmup_ms, max_elements=None):
    shrink = ["--max-elements", str(max_elements)] if max_elements else []
    out = subprocess.run(
        [exe, "bench", "--json", "--threads", str(threads), "--dtype", case["dtype"],
         "--filter", name(case), "--reps", str(reps), "--warmup", "3",
         "--warmup-ms", str(warmup_ms)] + shrink,
        check=True, capture_output=True, text=True).stdout
    rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    if len(rows) != 1:
        raise RuntimeError(f"{name(case)}: expected one result, got {len(rows)}")
    return rows[0]


class NormkitServer:
    """A long-lived `normkit bench --device cpu --serve` process: one JSON request per line on
    its stdin, one JSON answer per line on its stdout. The case's tensors stay allocated between
    requests for the same case, so each round only re-warms them, as PyTorch's long-lived
    process does; a round of normkit and one of PyTorch then lie tens of milliseconds apart
    instead of a process start and a full warm-up apart."""

    def __init__(self, exe, max_elements=None):
        cmd = [exe, "bench", "--device", "cpu", "--serve", "--warmup", "3"]
        if max_elements:
            cmd += ["--max-elements", str(max_elements)]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, bufsize=1)

    def ask(self, **req):
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"normkit --serve ended without answering {req}")
        ans = json.loads(line)
        if "error" in ans:
            raise RuntimeError(ans["error"])
        return ans

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def time_normkit_suite(exe, dtypes, filt, reps, min_elements=None):
    """One `normkit bench --device cuda` run over the whole (filtered) suite: {name: row}, keyed
    by the standard (full-size) case name even when --min-elements grew the shapes."""
    cmd = [exe, "bench", "--device", "cuda", "--json", "--reps", str(reps)]
    if min_elements:
        cmd += ["--min-elements", str(min_elements)]
    for d in dtypes:
        cmd += ["--dtype", d]
    if filt:
        cmd += ["--filter", filt]
    run = subprocess.run(cmd, capture_output=True, text=True)
    for line in run.stderr.splitlines():  # a failed case is left out of the table, not fatal
        if line.startswith("FAILED"):
            print(line, file=sys.stderr)
    rows = [json.loads(l) for l in run.stdout.splitlines() if l.startswith("{")]
    return {standard_name(r): r for r in rows}


def standard_name(row):
    """A bench row's case name with its batch (first) dim left out: --min-elements grows the
    batch dim only, so this names the same case at either size."""
    return name(dict(row, shape=["N"] + list(row["shape"][1:])))


def gpu_bandwidth():
    """GB/s of a 1 GiB device-to-device copy (bytes read + written), median of 20."""
    a = torch.empty(1 << 28, dtype=torch.float32, device="cuda").uniform_()
    b = torch.empty_like(a)
    clock = Clock(a.device)
    for _ in range(3):
        b.copy_(a)
    ms = statistics.median(clock.time(lambda: b.copy_(a)) for _ in range(20))
    return 2 * a.numel() * 4 / (ms * 1e-3) / 1e9


class Interrupted(Exception):
    """Raised by the SIGTERM handler (set in main for --device cuda)."""


def on_sigterm(signum, frame):
    raise Interrupted()


def cuda_rounds(args, suite, dev, cases, nk, th, errs):
    """The alternating rounds of compare_cuda, filling nk / th / errs as they go."""
    for r in range(args.rounds):
        order = ("n", "t") if r % 2 == 0 else ("t", "n")
        for who in order:
            if who == "n":
                for k, row in time_normkit_suite(args.normkit, args.dtypes, args.filter,
                                                 args.reps, args.min_elements).items():
                    nk.setdefault(k, []).append(row)
            else:
                for c in cases:
                    k = standard_name(c)
                    if args.min_elements:  # PyTorch runs the shape normkit ran (round 0: first)
                        if k not in nk:
                            continue
                        c = dict(c, shape=nk[k][0]["shape"])
                    ms, err = time_torch(c, suite, 1, args.reps, dev, warmup=3, warmup_ms=0.0)
                    if ms is None:
                        errs[k] = err
                    th.setdefault(k, []).append(ms)
                torch.cuda.empty_cache()


def compare_cuda(args, suite):
    dev = torch.device("cuda")
    cases = [c for c in expand(suite, args.dtypes) if args.filter in name(c)]
    nk, th, errs = {}, {}, {}
    try:
        cuda_rounds(args, suite, dev, cases, nk, th, errs)
    except Interrupted:  # SIGTERM (coreutils timeout): tabulate what was measured
        print("interrupted: the table holds the rounds and cases measured so far",
              file=sys.stderr)
    rows = []
    for c in cases:
        k = standard_name(c)
        if k not in nk:
            print(f"{name(c)}: no normkit result", file=sys.stderr)
            continue
        c = dict(c, shape=nk[k][0]["shape"])
        n_ms = statistics.median(r["median_ms"] for r in nk[k])
        ok = [v for v in th.get(k, []) if v is not None]
        t_ms = statistics.median(ok) if ok else None
        err = errs.get(k) or (None if ok else "not measured")
        rows.append((0, c, n_ms, t_ms, nk[k][0]["bytes"] / (n_ms * 1e-3) / 1e9, err,
                     round_spread(nk[k], th.get(k, [])), paired(nk[k], th.get(k, []))))
    return rows


def paired(nk, th):
    """The median of the per-round speed-ups (each round's PyTorch median / its normkit median,
    timed one right after the other): drift of a shared machine between rounds moves both
    sides of a round together, so this is the steadier estimate; None with no round timed on
    both sides."""
    ratios = [t / n["median_ms"] for n, t in zip(nk, th) if t is not None]
    return statistics.median(ratios) if ratios else None


def geomean(v):
    return math.exp(sum(math.log(x) for x in v) / len(v))


def bandwidth(exe, threads):
    out = subprocess.run([exe, "bandwidth", "--threads", str(threads), "--size-mib", "1024"],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "scale" in line:
            return float(line.split("scale (read+write)")[1].split()[0])
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normkit", default=os.path.join(HERE, "..", "..", "target", "release", "normkit"))
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--filter", default="")
    ap.add_argument("--bandwidth", action="store_true", help="also measure memory bandwidth")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--max-elements", type=int, default=None,
                    help="CPU: shrink every case to about this many elements (normkit's rule: "
                         "batch first, then spatial dims; both sides get the shrunk shape), "
                         "to compare the per-call cost on small tensors")
    ap.add_argument("--min-elements", type=int, default=None,
                    help="CUDA: grow every case's batch dim to at least this many elements "
                         "(normkit's --min-elements; PyTorch gets the same shapes), so the "
                         "working set is several times the GPU's L2 and per-call host time "
                         "is a small share")
    ap.add_argument("--settle", type=float, default=0.25,
                    help="seconds of idleness before each side's timing, so that neither "
                         "side's still-spinning worker threads (PyTorch's OpenMP spin-wait, "
                         "normkit's) compete with the other's")
    ap.add_argument("--warmup-ms", type=float, default=200.0,
                    help="CPU: warm each side up for at least this long before timing (a fresh "
                         "normkit process's first runs are slower than its steady state; "
                         "PyTorch's process is long-lived)")
    ap.add_argument("--processes", action="store_true",
                    help="CPU: a fresh `normkit bench` process per case and round (the method "
                         "before round 19) instead of one `normkit bench --serve` process that "
                         "keeps each case's tensors between rounds")
    ap.add_argument("--in-process", action="store_true",
                    help="CPU: run normkit in this process through its C ABI (--lib, ctypes) "
                         "on the very tensors PyTorch uses, instead of a separate `normkit "
                         "bench` process with its own buffers")
    ap.add_argument("--lib", default=os.path.join(HERE, "..", "..", "target", "release",
                                                  "libnormkit.so"),
                    help="the libnormkit shared library for --in-process")
    args = ap.parse_args()
    with open(CASES) as f:
        suite = json.load(f)
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
          f"normkit {args.normkit}", file=sys.stderr)
    server = None  # the CPU comparison's `normkit bench --serve` process
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}", file=sys.stderr)
        args.threads = [0]  # one row per case; "0" = not a CPU thread count
        signal.signal(signal.SIGTERM, on_sigterm)
        bw = {0: gpu_bandwidth()} if args.bandwidth else {}
        rows = compare_cuda(args, suite)
    else:
        server = None
        if not (args.processes or args.in_process):
            server = NormkitServer(args.normkit, args.max_elements)
        if not args.bandwidth:
            bw = {}
        elif server:
            bw = {t: server.ask(bandwidth=t, size_mib=1024)["scale"] for t in args.threads}
        else:
            bw = {t: bandwidth(args.normkit, t) for t in args.threads}
        rows = []
    for t in args.threads if args.device == "cpu" else []:
        lib = None
        if args.in_process:
            torch.set_num_threads(t)
            lib = nkffi.Normkit(args.lib, t)
        for case in expand(suite, args.dtypes):
            if args.filter not in name(case):
                continue
            nk, th, err = [], [], None
            full = case
            if args.max_elements:
                row = time_normkit(args.normkit, full, t, 1, 0, args.max_elements)
                case = dict(full, shape=row["shape"])
            shared = None
            if args.in_process:
                shared = SharedCase(lib, case, suite)
                err = shared.try_check()
            for r in range(args.rounds):
                order = ("n", "t") if r % 2 == 0 else ("t", "n")
                for who in order:
                    time.sleep(args.settle)
                    if shared:
                        step = shared.normkit_step if who == "n" else shared.torch_step
                        warm(step, 3, args.warmup_ms)
                        times = [step() for _ in range(args.reps)]
                        ms = None if None in times else statistics.median(times)
                        if who == "n":
                            nk.append({"median_ms": ms, "bytes": byte_model(case)})
                        else:
                            th.append(ms)
                    elif who == "n" and server:
                        nk.append(server.ask(case=name(full), threads=t, reps=args.reps,
                                             warmup_ms=args.warmup_ms))
                    elif who == "n":
                        nk.append(time_normkit(args.normkit, full, t, args.reps,
                                               args.warmup_ms, args.max_elements))
                    else:
                        ms, err = time_torch(case, suite, t, args.reps,
                                             warmup_ms=args.warmup_ms)
                        th.append(ms)
            n_ms = statistics.median(r["median_ms"] for r in nk)
            ok = [v for v in th if v is not None]
            t_ms = statistics.median(ok) if ok else None
            gbps = nk[0]["bytes"] / (n_ms * 1e-3) / 1e9
            spread = round_spread(nk, th)
            pair = paired(nk, th)
            rows.append((t, case, n_ms, t_ms, gbps, err, spread, pair))
            ratio = f"{t_ms / n_ms:5.2f}x" if t_ms else "  n/a"
            print(f"[{t}t] {name(case):<52} normkit {n_ms:8.3f} ms  torch "
                  f"{(t_ms or float('nan')):8.3f} ms  {ratio}  paired "
                  f"{(pair or float('nan')):5.2f}x  rounds {spread}", file=sys.stderr)
    if server and args.bandwidth:
        # again after the cases: the share is taken of the higher of the two measurements
        for t in args.threads:
            after = server.ask(bandwidth=t, size_mib=1024)["scale"]
            print(f"memory bandwidth (scale, {t} thread(s)): {bw[t]:.1f} GB/s before the "
                  f"cases, {after:.1f} GB/s after", file=sys.stderr)
            bw[t] = max(bw[t], after)
    if server:
        server.close()
    sep = "|" if args.markdown else " "
    head = ["case", "thr", "normkit ms", "torch ms", "speed-up", "paired", "per round",
            "GB/s"] + (["% of bw"] if bw else [])
    print(("| " + " | ".join(head) + " |\n|" + "---|" * len(head)) if args.markdown
          else "  ".join(head))
    for t, case, n_ms, t_ms, gbps, err, spread, pair in rows:
        cells = [name(case), str(t), f"{n_ms:.3f}", f"{t_ms:.3f}" if t_ms else "n/a",
                 f"{t_ms / n_ms:.2f}x" if t_ms else "n/a (torch: " + (err or "") + ")",
                 f"{pair:.2f}x" if pair else "n/a", spread, f"{gbps:.1f}"]
        if bw:
            cells.append(f"{100 * gbps / bw[t]:.0f}%")
        print(("| " + " | ".join(cells) + " |") if args.markdown else sep.join(cells))
    print()
    for t in args.threads:
        for d in args.dtypes + ["all"]:
            sel = [row for row in rows if row[0] == t and row[3]
                   and (d == "all" or row[1]["dtype"] == d)]
            if sel:
                who = "GPU" if args.device == "cuda" else f"{t} thread(s)"
                r = [row[3] / row[2] for row in sel]
                p = [row[7] for row in sel]
                print(f"geometric-mean speed-up, {who}, {d}: {geomean(r):.2f}x over {len(r)} "
                      f"cases (slowest {min(r):.2f}x); paired {geomean(p):.2f}x "
                      f"(slowest {min(p):.2f}x)")
    for t, v in bw.items():
        what = "device-to-device copy" if args.device == "cuda" else f"scale, {t} thread(s)"
        print(f"memory bandwidth ({what}, read+write): {v:.1f} GB/s")


if __name__ == "__main__":
    main()
