"""Overhead of descent.Monitor.log per training step, on a benchmark model.

Benchmark model: a 4-layer GPT-shaped transformer (d_model 256, 8 heads, seq 64, batch 16;
~3.2M parameters in ~50 tensors) trained with AdamW on random tokens. The same steps are timed
with and without ``monitor.log(...)`` (per-layer grad norms on, update ratio every 10 steps),
interleaved in rounds so machine noise hits both; the median per-step times are compared.

Run: python benchmarks/monitor_overhead.py [--steps 30] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import descent


class GPT(nn.Module):
    def __init__(self, vocab: int = 512, d: int = 256, layers: int = 4, heads: int = 8, seq: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq, d))
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.tok(x) + self.pos)))


def run(steps: int, monitor: descent.Monitor | None, model: nn.Module, opt: torch.optim.Optimizer,
        data: list[tuple[torch.Tensor, torch.Tensor]], log_times: list[float] | None = None) -> list[float]:
    times = []
    for i in range(steps):
        x, y = data[i % len(data)]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if monitor is not None:
            t1 = time.perf_counter()
            monitor.log(i, loss=loss, model=model, optimizer=opt, clip=norm, batch_size=x.shape[0])
            if log_times is not None:
                log_times.append(time.perf_counter() - t1)
        else:
            float(loss.detach())  # the loop without a monitor still reads the loss once
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT()
    opt = descent.AdamW(descent.param_groups(model, weight_decay=0.1), lr=3e-4)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randint(0, 512, (16, 64), generator=g), torch.randint(0, 512, (16, 64), generator=g))
            for _ in range(8)]
    n_params = sum(p.numel() for p in model.parameters())
    run(5, None, model, opt, data)  # warm-up
    base, mon, logs = [], [], []
    for _ in range(args.rounds):
        base += run(args.steps, None, model, opt, data)
        mon += run(args.steps, descent.Monitor(ratio_every=10), model, opt, data, logs)
    b, m = statistics.median(base), statistics.median(mon)
    print(f"model: {n_params / 1e6:.2f}M params in {len(list(model.parameters()))} tensors, "
          f"{args.threads} threads, {args.rounds}x{args.steps} steps each")
    print(f"step without monitor: {b * 1e3:.2f} ms (median)")
    print(f"step with monitor.log: {m * 1e3:.2f} ms (median)")
    lg = statistics.mean(logs)
    print(f"monitor.log itself: {lg * 1e3:.3f} ms mean = {lg / b:.2%} of a step (direct, less noisy; target < 5%)")
    print(f"end-to-end difference: {(m - b) / b:+.2%} of a step (noisy on a shared machine)")


if __name__ == "__main__":
    main()
