"""CPU time per parameter of descent's low-bit AdamW kernel beside fp32 fused AdamW (and an older kernel).

Usage:
    python benchmarks/lowbit_speed.py                       # 8-bit, one thread, 5.2M GPT-shaped list
    python benchmarks/lowbit_speed.py --bits 4 --rounds 7
    python benchmarks/lowbit_speed.py --baseline ba1b611~1  # also the kernel of that git revision
    python benchmarks/lowbit_speed.py --parts               # the 8-bit step's (de)quantization loops alone

Runs one Numba/torch thread and reports the median *CPU* time of a step (``time.process_time``)
per parameter and its ratio to descent's fp32 fused AdamW, the implementations taking turns:
on a shared, loaded machine CPU time is the number that survives (wall clock below it).
``benchmarks/step_speed.py --only AdamW8bit --sets gpt20M`` is the wall-clock, 2-thread
comparison with bitsandbytes and torchao on the 20.1M list.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, default=8, choices=(8, 4))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--width", type=int, default=160, help="GPT width (160: 5.2M params, 320: 20.1M)")
    parser.add_argument("--baseline", help="git revision whose src/descent/kernels/lowbit.py runs beside")
    parser.add_argument("--parts", action="store_true", help="time the (de)quantization loops of the 8-bit step alone")
    args = parser.parse_args()
    os.environ["NUMBA_NUM_THREADS"] = "1"
    if args.parts:
        return _parts(args.rounds)
    import importlib.util

    import torch

    import descent
    import descent.kernels.lowbit as current
    from descent.lowbit import QuantState
    from descent.reporting.bench import _params, gpt_shapes

    torch.set_num_threads(1)
    kernels = {"descent": current}
    if args.baseline:
        src = subprocess.run(["git", "show", f"{args.baseline}:src/descent/kernels/lowbit.py"], check=True,
                             capture_output=True, text=True).stdout.replace("cache=True", "cache=False")
        path = os.path.join(tempfile.mkdtemp(), "lowbit_baseline.py")
        with open(path, "w") as f:
            f.write(src)
        spec = importlib.util.spec_from_file_location("descent.kernels._lowbit_baseline", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        kernels[args.baseline] = module
    shapes = gpt_shapes(width=args.width)

    def stepper(module):  # noqa: ANN001, ANN202 - the kernel module; a step function
        ps = [p.detach() for p in _params(shapes)]
        gs = [p.grad if p.grad is not None else torch.zeros_like(p) for p in _params(shapes)]
        m = [QuantState.zeros(p.numel(), True, args.bits) for p in ps]
        v = [QuantState.zeros(p.numel(), False, args.bits) for p in ps]
        count = [0]

        def step() -> None:
            count[0] += 1
            module.adam_lowbit(ps, gs, [s.codes for s in m], [s.absmax for s in m], [s.qmap for s in m],
                               [s.codes for s in v], [s.absmax for s in v], [s.qmap for s in v],
                               steps=[count[0]] * len(ps), lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                               weight_decay=0.01, decoupled_weight_decay=True)
        return step

    fp32 = descent.AdamW(_params(shapes), lr=1e-3)
    steps = {"descent AdamW fp32 (fused)": fp32.step} | {f"{k} {args.bits}-bit": stepper(m) for k, m in kernels.items()}
    numel = sum(p.numel() for p in fp32.param_groups[0]["params"])
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    wall: dict[str, list[float]] = {k: [] for k in steps}
    for f in steps.values():
        f()
        f()
    for _ in range(args.rounds):
        for k, f in steps.items():
            c, w = time.process_time(), time.perf_counter()
            f()
            cpu[k].append(time.process_time() - c)
            wall[k].append(time.perf_counter() - w)
    base = statistics.median(cpu["descent AdamW fp32 (fused)"])
    print(f"{numel / 1e6:.1f}M params, 1 thread, {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    print(f"{'implementation':34s} {'CPU ns/param':>12s} {'x fp32':>7s} {'wall ns/param':>13s}")
    for k in steps:
        c = statistics.median(cpu[k])
        print(f"{k:34s} {c / numel * 1e9:12.2f} {c / base:7.2f} {statistics.median(wall[k]) / numel * 1e9:13.2f}")


def _parts(rounds: int) -> None:
    """CPU ns per value of the 8-bit AdamW block's quantization loops, alone, on 64 blocks (16K values, in L2)
    (the update itself is fp32 AdamW's math)."""
    import numpy as np
    from numba import njit

    from descent.kernels import lowbit as K
    from descent.lowbit.maps import code_map

    n, qb = 64 * 256, 256
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    mc, vc = rng.integers(0, 256, n).astype(np.uint8), rng.integers(128, 256, n).astype(np.uint8)
    t1, t2 = K._tables(code_map(True, 8), p), K._tables(code_map(False, 8), p)
    sm, codes, absmax = np.empty(n, np.float32), np.empty(n, np.uint8), np.ones(64, np.float32)

    @njit
    def dequantize(mc, vc, d1, d2):  # noqa: ANN001, ANN202 - scratch allocated here, as in the kernel
        sm, sv = np.empty(qb, np.float32), np.empty(qb, np.float32)
        for s in range(0, n, qb):
            K._dequantize(mc, s, qb, d1, np.float32(1e-3), sm, 8)
            K._dequantize(vc, s, qb, d2, np.float32(1e-6), sv, 8)
        return sm[0] + sv[0]

    @njit
    def amax(sm):  # noqa: ANN001, ANN202
        return sum([K._amax(sm[s:s + qb], qb) for s in range(0, n, qb)])

    @njit
    def quantize(sm, enc, table, codes, absmax):  # noqa: ANN001, ANN202
        scratch = (np.empty(qb, np.float32), np.empty(qb, np.uint32))
        for s in range(0, n, qb):
            stored = np.float32(K._amax(sm[s:s + qb], qb))
            if not K._quantize(sm[s:s + qb], qb, absmax, s // qb, codes, s, 8, enc, stored):
                K._quantize_table(sm[s:s + qb], qb, absmax[s // qb], codes, s, 8, table, scratch, np.uint64(0))

    (d1, e1, l1), (d2, _, _) = K._split(t1), K._split(t2)
    for s in range(0, n, qb):
        K._dequantize(mc, s, qb, d1, np.float32(1e-3), sm[s:], 8)
    off = lambda t, i: t[:i] + (False,) + t[i + 1:]  # noqa: E731 - a table with its flag i off
    cases = {"dequantize m and v: permute": (dequantize, mc, vc, d1, d2),
             "dequantize m and v: table": (dequantize, mc, vc, off(d1, 2), off(d2, 2)),
             "absmax of one state": (amax, sm),
             "absmax + codes of m: arith. 16": (quantize, sm, e1, l1, codes, absmax),
             "absmax + codes of m: arith. 1": (quantize, sm, off(e1, 9), l1, codes, absmax),
             "absmax + codes of m: table": (quantize, sm, off(e1, 4), l1, codes, absmax)}
    print(f"{'part':30s} {'CPU ns/value':>12s}  (1 thread, best of {rounds} x 100 passes over 16K values)")
    for name, (f, *a) in cases.items():
        f(*a)
        best = min(_cpu(lambda: [f(*a) for _ in range(100)]) for _ in range(rounds))
        print(f"{name:30s} {best / (100 * n) * 1e9:12.3f}")


def _cpu(f) -> float:  # noqa: ANN001
    c = time.process_time()
    f()
    return time.process_time() - c


if __name__ == "__main__":
    sys.exit(main())
