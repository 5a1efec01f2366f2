#!/usr/bin/env python3
"""A/B timing of two normkit binaries on the standard cases, alternating per case.

usage: ab.py BASE_EXE NEW_EXE THREADS DTYPE REPS ROUNDS [FILTER]
Prints base and new medians (median over rounds of per-run medians) and the speed-up.
Both binaries must warm up the same way: builds before the time-based warm-up of
`normkit bench` (--warmup-ms, default 200 ms) warm up with one run only, which times a fresh
process's slower first runs; compare such a build only with another such build."""
import json, subprocess, sys, statistics
base, new, t, d, reps, rounds = sys.argv[1:7]
filt = sys.argv[7] if len(sys.argv) > 7 else ""
names = []
out = subprocess.run([new, "bench", "--json", "--threads", t, "--dtype", d, "--filter", filt, "--reps", "1"], capture_output=True, text=True).stdout
for l in out.splitlines():
    r = json.loads(l); names.append("{}/{}/{}/{}/{}".format(r["layer"], "x".join(map(str, r["shape"])), r["layout"], r["mode"], r["dtype"]))
for n in names:
    res = {base: [], new: []}
    for k in range(int(rounds)):
        for exe in ([base, new] if k % 2 == 0 else [new, base]):
            o = subprocess.run([exe, "bench", "--json", "--threads", t, "--dtype", d, "--filter", n, "--reps", reps], capture_output=True, text=True)
            if o.returncode: print("FAIL", exe, n, o.stderr[-500:]); continue
            res[exe].append(json.loads(o.stdout.splitlines()[0])["median_ms"])
    b, m = statistics.median(res[base]), statistics.median(res[new])
    print(f"{n:<50} t={t} base {b:8.3f}  new {m:8.3f}  speed-up {b/m:5.2f}x", flush=True)
