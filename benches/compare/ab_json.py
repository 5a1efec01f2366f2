#!/usr/bin/env python3
"""Summarises an A/B of two normkit binaries from `normkit bench --json` outputs.

usage: ab_json.py DIR   (files DIR/ab-base-<round>.json and DIR/ab-new-<round>.json, as written by
scripts/gpu-ab.sh). Prints a markdown table: per case the median over rounds of each side's
per-run medians, the speed-up (base / new, > 1 means new is faster) and every round's value."""
import glob
import json
import statistics
import sys


def main():
    res = {}
    for f in sorted(glob.glob(sys.argv[1] + "/ab-*.json")):
        who = f.rsplit("ab-", 1)[1].split("-")[0]
        for line in open(f):
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            k = "{}/{}/{}/{}/{}".format(r["layer"], "x".join(map(str, r["shape"])), r["layout"],
                                        r["mode"], r["dtype"])
            res.setdefault(k, {}).setdefault(who, []).append(r["median_ms"])
    print("| case | base ms | new ms | speed-up | base runs | new runs |")
    print("|---|---|---|---|---|---|")
    for k, v in res.items():
        if "base" not in v or "new" not in v:
            print(f"| {k} | {'missing' if 'base' not in v else ''} | "
                  f"{'missing' if 'new' not in v else ''} | n/a | | |")
            continue
        b, n = statistics.median(v["base"]), statistics.median(v["new"])
        runs = lambda xs: " ".join(f"{x:.4f}" for x in xs)
        print(f"| {k} | {b:.4f} | {n:.4f} | {b / n:.2f}x | {runs(v['base'])} | {runs(v['new'])} |")


if __name__ == "__main__":
    main()
