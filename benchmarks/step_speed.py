"""Step time and state memory of descent's optimizers vs torch and pytorch-optimizer.

Usage:
    python benchmarks/step_speed.py                 # everything, full size (~20M params)
    python benchmarks/step_speed.py --only AdamW SGD Adagrad --iters 20
    python benchmarks/step_speed.py --scale 0.01    # smoke run
    python benchmarks/step_speed.py --only AdamW8bit --sets gpt20M   # 8-bit AdamW vs fp32, bitsandbytes, torchao

Prints, per optimizer and parameter set (one 16M tensor; a GPT-shaped list of 196
tensors, ~20M params), the median ms per step (implementations take turns, ``--rounds``), the ratio to descent (>1 means descent is
faster), the % of the a.add_(b) memory roofline and the state bytes per parameter.
"""

from __future__ import annotations

import argparse
import json

from descent.reporting import bench


def _lowbit_case() -> bench.Case:
    """AdamW with 8-bit state: descent's kernel beside fp32 fused AdamW, bitsandbytes and torchao."""
    import torch

    import descent

    peers = {"descent AdamW fp32 (fused)": lambda ps: descent.AdamW(ps, lr=1e-3),
             "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)}
    try:
        import bitsandbytes as bnb

        peers["bitsandbytes AdamW8bit"] = lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-3)
    except Exception:  # noqa: BLE001 - not installed / no CPU backend: no row
        pass
    try:
        import torchao.optim as ao

        peers["torchao AdamW8bit"] = lambda ps: ao.AdamW8bit(ps, lr=1e-3)
    except Exception:  # noqa: BLE001
        pass
    # 16 bytes per parameter: read p, g, 1-byte m and v codes; write p, m, v codes
    return bench.Case("AdamW8bit", 16, lambda ps: descent.AdamW(ps, lr=1e-3, state_bits=8), peers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="optimizer names (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="parameter-count multiplier")
    parser.add_argument("--iters", type=int, default=10, help="timed steps per implementation")
    parser.add_argument("--rounds", type=int, default=3, help="turns the timed steps are split into (interleaved)")
    parser.add_argument("--sets", nargs="*", default=["16M", "gpt20M"])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    cases = bench.CASES
    bench.CASES = lambda: [*cases(), _lowbit_case()]  # the 8-bit row (issue 14), beside the registry's cases
    bandwidth, results = bench.run(args.only, scale=args.scale, iters=args.iters, sets=args.sets, rounds=args.rounds)
    if args.json:
        print(json.dumps({"bandwidth_gbs": bandwidth, "results": bench.as_dicts(results)}, indent=1))
    else:
        print(bench.format_table(bandwidth, results))


if __name__ == "__main__":
    main()
