"""Which 4-bit state costs AdamW its quality, and which first-moment quantizer fixes it?

AdamW written out in torch (torch's operation order), where after each step the first
and/or the second moment is replaced by a quantize -> dequantize round trip. ``m4``/``v4``
use descent's own quantizer (``descent.lowbit.quantize``/``dequantize``, 128-element blocks,
the maps and rounding of ``state_bits=4``); with both it follows ``descent.AdamW(...,
state_bits=4)`` with every tensor quantized (``benchmarks/lowbit_quality.py --min-numel 0``);
with neither it is fp32 AdamW. Candidates for the first moment, each ``m4 <map> ...``
with ``v4`` (descent's second moment) or without: maps (:data:`MAPS`: ``de`` the 4-bit
dynamic map of ``state_bits=4``, ``de+-1`` it with -1 for -0.0055, ``nf4``
QLoRA's normal float, ``geoR`` 0 and +-R**k, ``linear`` k/7) rounded to nearest in blocks of
128 or 64 (``b128``/``b64``); rounded stochastically with torch's RNG (``stochastic``; an
experiment, not an option of descent; ``m4 stochastic`` is ``de``'s), with descent's hashed
threshold (``hashed``, :func:`descent.lowbit.quant.encode`), or with the threshold at a
fraction F of each gap from the entry nearer 0 (``tF``; 0.5 is nearest).

    python benchmarks/lowbit_ablation.py                         # digits-cnn, 100 steps, seeds 0-2
    python benchmarks/lowbit_ablation.py --only fp32 m4 --steps 300
    python benchmarks/lowbit_ablation.py --only fp32 "m4 v4" "m4 de b128 v4" "m4 nf4 b128 v4" "m4 nf4 b64 v4" \
        "m4 nf4 stochastic v4" "m4 nf4 hashed v4"
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable

import torch
from torch import Tensor

from descent.lowbit import dequantize, quantize
from descent.lowbit.maps import code_map, dynamic_map, normal_map
from descent.tasks import get_task

Round = Callable[[Tensor], Tensor] | None


def round_trip(x: Tensor, signed: bool, qmap: Tensor | None = None, block: int | None = None) -> Tensor:
    """``x`` through descent's 4-bit quantizer and back: the map of a first or second moment
    (or ``qmap``), blocks of 128 (or ``block``)."""
    qmap = code_map(signed, 4) if qmap is None else qmap
    codes, absmax = quantize(x.reshape(-1), qmap, 4, block)
    return dequantize(codes, absmax, qmap, 4, x.numel(), block=block).reshape(x.shape)


def _normalized_blocks(x: Tensor, block: int) -> tuple[Tensor, Tensor]:
    flat = x.reshape(-1)
    blocks = torch.cat([flat, flat.new_zeros(-flat.numel() % block)]).view(-1, block)
    absmax = blocks.abs().amax(1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return blocks / absmax, absmax


def stochastic_round_trip(x: Tensor, qmap: Tensor | None = None, block: int = 128) -> Tensor:
    """The signed 4-bit map (or ``qmap``) with codes rounded stochastically between the two nearest entries."""
    qmap = code_map(True, 4) if qmap is None else qmap
    y, absmax = _normalized_blocks(x, block)
    y = y.clamp(float(qmap[0]), 1.0)
    hi = torch.bucketize(y, qmap).clamp(1, qmap.numel() - 1)
    below, above = qmap[hi - 1], qmap[hi]
    up = torch.rand_like(y) < (y - below) / (above - below)
    return (torch.where(up, above, below) * absmax).reshape(-1)[:x.numel()].view_as(x)


def threshold_round_trip(x: Tensor, qmap: Tensor, fraction: float, block: int = 128) -> Tensor:
    """Like :func:`round_trip`, but a value moves to the entry farther from 0 only past ``fraction``
    of the gap (0.5: nearest; more: rounds toward 0, so a decaying first moment does not stick)."""
    y, absmax = _normalized_blocks(x, block)
    lo, hi = qmap[:-1], qmap[1:]
    cuts = torch.where(hi > 0, lo + fraction * (hi - lo), hi - fraction * (hi - lo))
    return (qmap[torch.bucketize(y, cuts)] * absmax).reshape(-1)[:x.numel()].view_as(x)


def _signed(*positive: float, negative: tuple[float, ...] | None = None) -> Tensor:
    """A sorted 16-entry signed map: 0, ``positive`` and ``negative`` (default: ``-positive``)."""
    neg = tuple(-v for v in positive) if negative is None else negative
    values = sorted({0.0, *positive, *neg})
    if len(values) != 16:
        raise ValueError(f"Invalid map: {len(values)} entries (must be 16)")
    return torch.tensor(values, dtype=torch.float32)


def _geometric(ratio: float) -> Tensor:
    """0 and +-``ratio**k``: 8 entries above 0 (k = 0..7), 7 below (k = 0..6)."""
    return _signed(*[ratio**k for k in range(8)], negative=tuple(-(ratio**k) for k in range(7)))


_DE = dynamic_map(True, 4)
#: Candidate first-moment maps (16 entries each, sorted, 0 and 1 among them).
MAPS: dict[str, Tensor] = {
    "de": _DE,  # state_bits=4's: dynamic exponent (torchao's), 7 below 0 (down to -0.8875), 8 above (up to 1)
    "de+-1": _signed(*_DE[_DE > 0].tolist(), negative=(-1.0, *_DE[_DE < -0.006].tolist())),  # -0.0055 -> -1
    "nf4": normal_map(),
    "geo0.8": _geometric(0.8),
    "geo0.75": _geometric(0.75),
    "geo0.7": _geometric(0.7),
    "linear": _signed(*[k / 7 for k in range(1, 8)], negative=(*[-k / 7 for k in range(1, 8)], -0.5 / 7)),
}
_V4 = functools.partial(round_trip, signed=False)

VARIANTS: dict[str, tuple[Round, Round]] = {
    "fp32": (None, None),
    "m4": (functools.partial(round_trip, signed=True), None),  # descent's state_bits=4 first moment
    "v4": (None, _V4),
    "m4 v4": (functools.partial(round_trip, signed=True), _V4),  # descent's state_bits=4
    "m4 stochastic": (functools.partial(stochastic_round_trip, qmap=_DE), None),
}
for _name, _qmap in MAPS.items():
    for _block in (128, 64):  # rounded to nearest
        _first = functools.partial(threshold_round_trip, qmap=_qmap, fraction=0.5, block=_block)
        VARIANTS[f"m4 {_name} b{_block}"] = (_first, None)
        VARIANTS[f"m4 {_name} b{_block} v4"] = (_first, _V4)
    VARIANTS[f"m4 {_name} stochastic v4"] = (functools.partial(stochastic_round_trip, qmap=_qmap), _V4)
    VARIANTS[f"m4 {_name} hashed v4"] = (functools.partial(round_trip, signed=True, qmap=_qmap), _V4)
    for _fraction in (0.4, 0.6, 0.7):
        VARIANTS[f"m4 {_name} t{_fraction} v4"] = (
            functools.partial(threshold_round_trip, qmap=_qmap, fraction=_fraction), _V4)


def run(task_name: str, seed: int, steps: int, first: Round, second: Round, lr: float = 3e-3,
        weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> float:
    """Final validation loss of AdamW on ``task_name`` with the moments rounded as given."""
    task = get_task(task_name)
    model = task.make_model(seed)
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        x, y = task.train.at(t - 1)
        model.zero_grad()
        task.loss_fn(model(x), y).backward()
        with torch.no_grad():
            for p, mi, vi in zip(params, m, v):
                p.mul_(1 - lr * weight_decay)
                mi.lerp_(p.grad, 1 - betas[0])
                vi.mul_(betas[1]).addcmul_(p.grad, p.grad, value=1 - betas[1])
                if first is not None:
                    mi.copy_(first(mi))
                if second is not None:
                    vi.copy_(second(vi))
                denom = (vi / (1 - betas[1] ** t)).sqrt_().add_(eps)
                p.addcdiv_(mi, denom, value=-lr / (1 - betas[0] ** t))
    return float(task.evaluate(model)["val_loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="digits-cnn")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to run (default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = {}
    for name in args.only or VARIANTS:
        rows[name] = [run(args.task, seed, args.steps, *VARIANTS[name]) for seed in range(args.seeds)]
        print(f"{name}: {rows[name]}", flush=True)
    print(f"{args.task}, {args.steps} steps, AdamW lr 3e-3: final val loss (mean, per seed), change against fp32 "
          "per seed")
    base = rows.get("fp32")
    for name, losses in rows.items():
        paired = "" if base is None else ", ".join(f"{100 * (a / b - 1):+.1f} %" for a, b in zip(losses, base))
        print(f"{name:14s} {statistics.mean(losses):.4f}  ({', '.join(f'{v:.4f}' for v in losses)})  {paired}")


if __name__ == "__main__":
    main()
