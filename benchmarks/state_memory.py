"""Optimizer-state bytes per parameter: descent's 32/8/4-bit states beside bitsandbytes and torchao.

Usage:
    python benchmarks/state_memory.py              # GPT-shaped list of 196 tensors, ~20.1M params
    python benchmarks/state_memory.py --scale 0.05 # smaller model (more of it below 4096 elements)

Each optimizer takes one step on its own copy of the parameters; its state is then
measured as the bytes of the distinct storages it holds (a code map shared by every
parameter counts once; torchao's tensor subclasses are opened up). Peers that are not
installed, or fail on CPU, are reported as such.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

import descent
from descent.reporting.bench import _params, gpt_shapes


def _storages(t: torch.Tensor, seen: dict[int, int]) -> None:
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        for name in names:
            _storages(getattr(t, name), seen)
        return
    storage = t.untyped_storage()
    seen[storage.data_ptr()] = storage.nbytes()


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the distinct tensor storages in ``opt.state`` (step counters included)."""
    seen: dict[int, int] = {}
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                _storages(v, seen)
    return sum(seen.values())


def _peers() -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    try:
        import bitsandbytes as bnb

        out["bitsandbytes AdamW8bit"] = lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-3)
        out["bitsandbytes Lion8bit"] = lambda ps: bnb.optim.Lion8bit(ps, lr=1e-4)
    except Exception as exc:  # noqa: BLE001 - reported
        out[f"bitsandbytes (not available: {type(exc).__name__})"] = None
    try:
        import torchao.optim as ao

        out["torchao AdamW8bit"] = lambda ps: ao.AdamW8bit(ps, lr=1e-3)
        out["torchao AdamW4bit"] = lambda ps: ao.AdamW4bit(ps, lr=1e-3)
    except Exception as exc:  # noqa: BLE001 - reported
        out[f"torchao (not available: {type(exc).__name__})"] = None
    return out


CASES: dict[str, Callable | None] = {
    "descent AdamW (32-bit)": lambda ps: descent.AdamW(ps, lr=1e-3),
    "descent AdamW state_bits=8": lambda ps: descent.AdamW(ps, lr=1e-3, state_bits=8),
    "descent AdamW state_bits=4": lambda ps: descent.AdamW(ps, lr=1e-3, state_bits=4),
    "descent Lion (32-bit)": lambda ps: descent.Lion(ps, lr=1e-4),
    "descent Lion state_bits=8": lambda ps: descent.Lion(ps, lr=1e-4, state_bits=8),
    "descent SGD momentum state_bits=8": lambda ps: descent.SGD(ps, lr=0.1, momentum=0.9, state_bits=8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="parameter-count multiplier of the GPT list")
    args = parser.parse_args()
    width = max(16, int(round(320 * args.scale**0.5 / 16)) * 16)
    shapes = gpt_shapes(width=width)
    numel = sum(int(torch.Size(s).numel()) for s in shapes)
    print(f"GPT-shaped list: {len(shapes)} tensors, {numel / 1e6:.1f}M parameters")
    print(f"{'optimizer':44s} {'state MB':>9s} {'bytes/param':>12s}")
    for name, make in {**CASES, **_peers()}.items():
        if make is None:
            print(f"{name:44s} {'-':>9s} {'-':>12s}")
            continue
        params = _params(shapes)
        try:
            opt = make(params)
            opt.step()
        except Exception as exc:  # noqa: BLE001 - a peer failing on CPU is reported, not fatal
            print(f"{name:44s} failed: {exc}")
            continue
        b = state_bytes(opt)
        print(f"{name:44s} {b / 1e6:9.1f} {b / numel:12.3f}")
        del opt, params


if __name__ == "__main__":
    main()
