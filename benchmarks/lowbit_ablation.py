"""Which 4-bit state costs AdamW its quality: the first moment, the second, or both?

AdamW written out in torch (torch's operation order), where after each step the first
and/or the second moment is replaced by its quantize -> dequantize round trip through
descent's own quantizer (``descent.lowbit.quantize``/``dequantize``, 128-element blocks, the
maps of ``state_bits=4``). With both moments quantized it follows ``descent.AdamW(...,
state_bits=4)`` with every tensor quantized (``benchmarks/lowbit_quality.py --min-numel 0``);
with neither it is fp32 AdamW. ``stochastic`` rounds the first moment's codes up or down
with probability proportional to the distance (torch's RNG; an experiment, not an option of
descent).

    python benchmarks/lowbit_ablation.py                         # digits-cnn, 100 steps, seeds 0-2
    python benchmarks/lowbit_ablation.py --only fp32 m4 --steps 300
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from torch import Tensor

from descent.lowbit import dequantize, quantize
from descent.lowbit.maps import code_map
from descent.tasks import get_task

Round = Callable[[Tensor], Tensor] | None


def round_trip(x: Tensor, signed: bool) -> Tensor:
    """``x`` through descent's 4-bit quantizer and back (the map of a first or second moment)."""
    qmap = code_map(signed, 4)
    codes, absmax = quantize(x.reshape(-1), qmap, 4)
    return dequantize(codes, absmax, qmap, 4, x.numel()).reshape(x.shape)


def stochastic_round_trip(x: Tensor, block: int = 128) -> Tensor:
    """The signed 4-bit map with codes rounded stochastically between the two nearest entries."""
    qmap = code_map(True, 4)
    flat = x.reshape(-1)
    n = flat.numel()
    blocks = torch.cat([flat, flat.new_zeros(-n % block)]).view(-1, block)
    absmax = blocks.abs().amax(1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    y = (blocks / absmax).clamp(float(qmap[0]), 1.0)
    hi = torch.bucketize(y, qmap).clamp(1, qmap.numel() - 1)
    below, above = qmap[hi - 1], qmap[hi]
    up = torch.rand_like(y) < (y - below) / (above - below)
    return (torch.where(up, above, below) * absmax).reshape(-1)[:n].view_as(x)


VARIANTS: dict[str, tuple[Round, Round]] = {
    "fp32": (None, None),
    "m4": (lambda x: round_trip(x, True), None),
    "v4": (None, lambda x: round_trip(x, False)),
    "m4 v4": (lambda x: round_trip(x, True), lambda x: round_trip(x, False)),
    "m4 stochastic": (stochastic_round_trip, None),
}


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
