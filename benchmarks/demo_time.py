"""Time the full ``descent demo`` (default budget) end to end, in-process, and each of its phases.

Usage: python benchmarks/demo_time.py [--out DIR] [--steps N] [--task T]
The issue's target is <= 180 s on the 2-core reference machine; the script prints the wall time,
the CPU time and the load average (other processes on a shared machine inflate the wall time).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from descent.cli.main import main


def run() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--task", default="digits-mlp")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="descent-demo-")
    argv = ["demo", "--out", out, "--task", args.task] + (["--steps", str(args.steps)] if args.steps else [])
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    code = main(argv)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\ndescent {' '.join(argv)}: exit {code}, wall {wall:.1f} s, process CPU {cpu:.1f} s, "
          f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()}); "
          f"target <= 180 s: {'met' if wall <= 180 else 'NOT met'}")
    return code


if __name__ == "__main__":
    sys.exit(run())
