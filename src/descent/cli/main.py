"""Entry point of the ``descent`` command (a first demo; the full CLI grows here)."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import torch
    from sklearn.datasets import load_digits

    import descent

    x, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x = torch.tensor(x, dtype=torch.float32)[perm] / 16.0
    y = torch.tensor(y)[perm]
    n_train = int(0.8 * len(y))
    print(f"digits: {n_train} train / {len(y) - n_train} test images, MLP 64-128-10, {args.epochs} epochs")
    print(f"{'optimizer':<10} {'test acc':>8} {'seconds':>8}")
    for name, make in {
        "SGD": lambda p: descent.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        "Adam": lambda p: descent.Adam(p, lr=1e-3),
        "AdamW": lambda p: descent.AdamW(p, lr=1e-3, weight_decay=0.01),
        "RMSprop": lambda p: descent.RMSprop(p, lr=1e-3),
        "Adagrad": lambda p: descent.Adagrad(p, lr=0.05),
    }.items():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        opt = make(descent.param_groups(model, weight_decay=0.0))
        t0 = time.perf_counter()
        for _ in range(args.epochs):
            for idx in torch.randperm(n_train, generator=g).split(64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        with torch.no_grad():
            acc = (model(x[n_train:]).argmax(1) == y[n_train:]).float().mean().item()
        print(f"{name:<10} {acc:8.3f} {time.perf_counter() - t0:8.2f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="descent", description="descent: optimizers and training tools on PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small model on bundled real data with descent's optimizers")
    demo.add_argument("--epochs", type=int, default=10)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
