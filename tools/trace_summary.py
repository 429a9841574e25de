#!/usr/bin/env python3
"""Summarises a Chrome trace written by stip-profile (LibTorch's Kineto).

    tools/trace_summary.py decode.json [steps]

Prints, per event category (ATen calls on the host, CUDA runtime calls, GPU
kernels), the count and total time, then the heaviest names of each, and the
time per step if the number of profiled steps is given.
"""
import collections
import json
import sys


def main():
    path = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    with open(path) as f:
        events = json.load(f).get("traceEvents", [])
    by_cat = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0.0]))
    lo, hi = float("inf"), 0.0
    for e in events:
        if e.get("ph") != "X":
            continue
        cat, name, dur = e.get("cat", "?"), e.get("name", "?"), float(e.get("dur", 0))
        by_cat[cat][name][0] += 1
        by_cat[cat][name][1] += dur
        ts = float(e.get("ts", 0))
        lo, hi = min(lo, ts), max(hi, ts + dur)
    print(f"trace span {(hi - lo) / 1e3:.3f} ms over {steps} step(s): "
          f"{(hi - lo) / 1e3 / steps:.3f} ms per step")
    for cat, names in sorted(by_cat.items()):
        n = sum(v[0] for v in names.values())
        t = sum(v[1] for v in names.values())
        print(f"\n[{cat}] {n / steps:.0f} events per step, {t / 1e3 / steps:.3f} ms per step "
              f"(nested events overlap)")
        for name, (count, dur) in sorted(names.items(), key=lambda kv: -kv[1][1])[:14]:
            print(f"  {dur / 1e3 / steps:9.3f} ms  {count / steps:7.1f}x  {name[:90]}")


if __name__ == "__main__":
    main()
