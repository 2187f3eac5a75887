"""The doctor on logs of real runs: planted pathologies and healthy runs, as a confusion table.

Every run trains a built-in task (descent.tasks) with a descent optimizer, logs every step
through descent.Monitor to a JSONL file, and the doctor reads that *file* (descent.reporting.logs
.read_log, then descent.diagnose), as ``descent doctor run.jsonl`` would. A scenario names the
code that must fire (``expect``; ``None`` for a healthy run) and the codes that are a fair
consequence of the pathology (``tolerate``: e.g. a run whose lr is 30x too high may also end
non-finite). A run passes when its expected code fired and nothing outside expect + tolerate did.

Pathologies planted (issue 17): lr x30 (SGD-momentum on digits and logistic), no warmup on charlm
(at lr 0.3, where the same run with a 10 % warmup is smooth; at the task's lr 3e-3 and up to 0.1 a
missing warmup did not hurt this small model), a NaN injected into one batch,
weight decay off on an overfitting model (500 hidden units, 60 training images), a clipping
threshold far too low (0.01); plus an lr 1000x too low and a smooth schedule stepped once per "epoch"
of 10 steps. No run here plants an oscillation: SGD-momentum at 3-10x its lr on these tasks either
diverged early or stayed below the rule's threshold (its behaviour test is in tests/test_tools_doctor.py).

Usage:
    python benchmarks/doctor_confusion.py              # every scenario, seeds 0 and 1
    python benchmarks/doctor_confusion.py --seeds 0 --only digits
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import descent
from descent.reporting.logs import read_log
from descent.schedules import Scheduler, WarmupCosine
from descent.tasks import Batches, get_task
from descent.tools.doctor import CODES


@dataclass
class Scenario:
    name: str
    task: str
    expect: str | None
    optimizer: str = "adamw"
    lr: float = 3e-3
    steps: int = 300
    warmup: float = 0.05
    wd: float = 1e-2
    clip: float | None = None
    nan_at: int | None = None
    n_train: int | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    sched_every: int = 1
    tolerate: tuple[str, ...] = ()


SCENARIOS = [
    # healthy runs: the doctor must stay silent
    Scenario("digits-mlp AdamW, warmup+cosine", "digits-mlp", None),
    Scenario("digits-mlp SGD-momentum, warmup+cosine", "digits-mlp", None, optimizer="sgd", lr=0.1),
    Scenario("digits-mlp AdamW, clip 5 (rarely fires)", "digits-mlp", None, clip=5.0),
    Scenario("logistic SGD, warmup+cosine", "logistic", None, optimizer="sgd", lr=0.1, wd=0.0),
    Scenario("charlm AdamW lr 3e-3, warmup 10%", "charlm", None, lr=3e-3, warmup=0.1, steps=150, wd=0.0),
    Scenario("charlm AdamW lr 0.3, warmup 10%", "charlm", None, lr=0.3, warmup=0.1, steps=150, wd=0.0),
    # planted pathologies: the named rule must fire
    Scenario("digits-mlp SGD-momentum lr x30", "digits-mlp", "early_divergence", optimizer="sgd", lr=0.1 * 30,
             tolerate=("nonfinite", "oscillation", "plateau")),
    Scenario("logistic SGD lr x30", "logistic", "early_divergence", optimizer="sgd", lr=0.1 * 30, wd=0.0,
             tolerate=("nonfinite", "oscillation", "plateau")),
    Scenario("charlm AdamW lr 0.3, no warmup", "charlm", "early_divergence", lr=0.3, warmup=0.0, steps=150,
             wd=0.0, tolerate=("plateau", "oscillation")),
    Scenario("digits-mlp AdamW, NaN injected at step 150", "digits-mlp", "nonfinite", nan_at=150),
    Scenario("digits-mlp 500 units on 60 images, weight decay off", "digits-mlp", "overfitting", wd=0.0,
             n_train=60, task_options={"hidden": 500}, steps=600),
    Scenario("digits-mlp SGD, clip threshold 0.01", "digits-mlp", "clip_saturation", optimizer="sgd", lr=0.1,
             clip=0.01, tolerate=("plateau",)),
    Scenario("digits-mlp AdamW lr / 1000", "digits-mlp", "plateau", lr=3e-6),
    Scenario("digits-mlp AdamW, schedule stepped every 10 steps", "digits-mlp", "schedule_per_epoch",
             sched_every=10, steps=300),
]


def _optimizer(s: Scenario, model: torch.nn.Module) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return descent.SGD(model.parameters(), lr=s.lr, momentum=0.9, weight_decay=s.wd)
    return descent.AdamW(model.parameters(), lr=s.lr, weight_decay=s.wd)


def run(s: Scenario, seed: int, log: Path) -> dict[str, Any]:
    """Train one scenario, logging to ``log``; return the doctor's verdict on the file."""
    torch.manual_seed(seed)
    task = get_task(s.task, seed=seed, **s.task_options)
    train = task.train
    if s.n_train is not None:
        train = Batches(task.train.x[:s.n_train], task.train.y[:s.n_train], 32, seed=seed)
    model = task.make_model(seed)
    opt = _optimizer(s, model)
    # per-epoch stepping: the schedule is sized in steps but stepped every sched_every steps
    sched = Scheduler(opt, WarmupCosine(s.steps, warmup=s.warmup), unit="epoch" if s.sched_every > 1 else "step")
    mon = descent.Monitor(per_layer=False, jsonl=log, clip_max_norm=s.clip)
    eval_every = max(10, s.steps // 15)
    for step in range(s.steps):
        x, y = train.at(step)
        if step == s.nan_at:
            x = x.float() * math.nan if x.is_floating_point() else x
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model, (x, y))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip) if s.clip else None
        opt.step()
        if (step + 1) % s.sched_every == 0:
            sched.step()
        val = task.evaluate(model)["val_loss"] if (step + 1) % eval_every == 0 else None
        mon.log(step, loss=loss.detach(), model=model, optimizer=opt, clip=norm, val_loss=val)
    mon.close()
    found = descent.diagnose(read_log(log))
    fired = set(found.codes)
    hit = s.expect is None or s.expect in fired
    extra = sorted(fired - {s.expect} - set(s.tolerate))
    return {"scenario": s.name, "seed": seed, "expect": s.expect, "fired": sorted(fired), "hit": hit,
            "extra": extra, "ok": hit and not extra}


def confusion(results: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per rule: TP (expected and fired), FN (expected, silent), FP (fired, neither expected nor tolerated), TN."""
    table = {c: {"TP": 0, "FN": 0, "FP": 0, "TN": 0} for c in CODES}
    for r in results:
        s = next(x for x in SCENARIOS if x.name == r["scenario"])
        for c in CODES:
            fired = c in r["fired"]
            if c == s.expect:
                table[c]["TP" if fired else "FN"] += 1
            elif c in s.tolerate:
                continue
            else:
                table[c]["FP" if fired else "TN"] += 1
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    ap.add_argument("--only", default="", help="run the scenarios whose name contains this text")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    chosen = [s for s in SCENARIOS if args.only.lower() in s.name.lower()]
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for s in chosen:
            for seed in seeds:
                r = run(s, seed, Path(tmp) / f"{len(results)}.jsonl")
                results.append(r)
                print(f"{'ok ' if r['ok'] else 'BAD'} seed {seed}  {s.name:<52} expect {str(s.expect):<18} "
                      f"fired {', '.join(r['fired']) or '-'}", flush=True)
    print(f"\n{sum(r['ok'] for r in results)}/{len(results)} runs as expected "
          f"({time.perf_counter() - t0:.0f} s)\n")
    print("| rule | TP (fired on its pathology) | FN (silent on it) | FP (fired elsewhere) | TN (silent elsewhere) |")
    print("| --- | --- | --- | --- | --- |")
    for code, row in confusion(results).items():
        print(f"| {code} | {row['TP']} | {row['FN']} | {row['FP']} | {row['TN']} |")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
