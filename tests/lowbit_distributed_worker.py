"""One rank of tests/test_lowbit_distributed.py (run as a script, not collected).

Usage: ``python tests/lowbit_distributed_worker.py SCENARIO CKPT_DIR OUT_DIR [NAME]`` with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set; each rank writes ``OUT_DIR/rank{r}.json``.

- ``whole`` (1 rank, plain tensors): 2 steps of 8-bit AdamW, saved with
  torch.distributed.checkpoint to ``CKPT_DIR/whole``.
- ``shards`` (2 or 4 ranks, FSDP2): load ``whole``, 2 more steps, compare with 4 one-process
  steps, save to ``CKPT_DIR/shards{world}``.
- ``back`` (1 rank, plain tensors): load ``CKPT_DIR/NAME`` (``shards2``, ``shards4``), 2 more
  steps, compare parameters and quantized state with 6 one-process steps.
- ``fresh`` (2 or 4 ranks, FSDP2): 4 steps from scratch of each optimizer in :data:`CASES`,
  compared with one process; 8-bit AdamW under ZeroRedundancyOptimizer likewise; and a 4-bit
  state of a weight with odd rows must be refused.

Gradients come from one seeded full gradient per step (as in test_distributed_worker.py), so
every layout sees the same numbers and must match the one-process run bit for bit.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import descent
import descent.distributed as D
from test_distributed_worker import fsdp, full  # the same wrapping and gathering (this folder is on sys.path)


def model_fn(hidden: int = 76) -> nn.Module:
    """6080 and 4560 weights (quantized); their shards over 2/4 ranks start off the 128- and
    256-element blocks (rows of 80 and 76 elements), and their rows hold an even count (4-bit)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(80, hidden), nn.Tanh(), nn.Linear(hidden, 60), nn.Tanh(), nn.Linear(60, 3))


#: Low-bit optimizers checked from scratch under FSDP2 (all step through the same sharded path).
CASES = {
    "adamw8": lambda ps: descent.AdamW(ps, lr=1e-2, weight_decay=0.1, state_bits=8),
    "adamw4": lambda ps: descent.AdamW(ps, lr=1e-2, weight_decay=0.1, state_bits=4),
    "adam8": lambda ps: descent.Adam(ps, lr=1e-2, weight_decay=0.1, state_bits=8),
    "lion8": lambda ps: descent.Lion(ps, lr=1e-3, weight_decay=0.1, state_bits=8),
    "sgd8": lambda ps: descent.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, state_bits=8),
    "sgd4": lambda ps: descent.SGD(ps, lr=0.05, momentum=0.9, state_bits=4),  # lazy, and counts steps (4-bit)
}


def make(model: nn.Module, case: str = "adamw8") -> torch.optim.Optimizer:
    return CASES[case](model.parameters())


def train(model: nn.Module, opt: torch.optim.Optimizer, start: int, stop: int) -> None:
    for step in range(start, stop):
        gen = torch.Generator().manual_seed(100 + step)
        for p in model.parameters():
            p.grad = D.shard_like(torch.randn(p.shape, generator=gen).to(p.dtype), p)
        opt.step()


def reference(steps: int, case: str = "adamw8") -> tuple[nn.Module, torch.optim.Optimizer]:
    model = model_fn()
    opt = make(model, case)
    train(model, opt, 0, steps)
    return model, opt


def save(model: nn.Module, opt: torch.optim.Optimizer, path: str) -> None:
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)


def load(model: nn.Module, opt: torch.optim.Optimizer, path: str) -> None:
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def quantized(ref_opt: torch.optim.Optimizer, ref: nn.Module) -> list[bool]:
    """Per parameter: whether its one-process state is quantized (has uint8 codes)."""
    return [any(v.dtype == torch.uint8 for v in ref_opt.state[q].values()) for q in ref.parameters()]


#: Only the parameters with quantized state are compared: the small ones (biases, the last layer)
#: keep fp32 state, stepped on local shards by the fp32 kernels, which are not bit-identical to the
#: whole tensor's step on every shard length (a few ulps, also with state_bits=32: outside this test).
def diff(model: nn.Module, ref: nn.Module, ref_opt: torch.optim.Optimizer) -> float:
    pairs = [(a, b) for a, b, q in zip(model.parameters(), ref.parameters(), quantized(ref_opt, ref)) if q]
    return max(float((full(a.detach()) - b.detach()).abs().max()) for a, b in pairs)


def state_equal(opt: torch.optim.Optimizer, model: nn.Module, ref_opt: torch.optim.Optimizer, ref: nn.Module) -> dict:
    """Per state key of the quantized parameters: whether every entry equals the one-process run's."""
    out: dict[str, bool] = {}
    for p, q, quant in zip(model.parameters(), ref.parameters(), quantized(ref_opt, ref)):
        if not quant:
            continue
        for key, want in ref_opt.state[q].items():
            got = full(opt.state[p][key]) if isinstance(opt.state[p].get(key), torch.Tensor) else None
            same = got is not None and got.dtype == want.dtype and torch.equal(got.reshape(want.shape), want)
            out[key] = out.get(key, True) and same
    return out


def scenario_whole(ckpt: str) -> dict:
    model, opt = reference(2)
    save(model, opt, os.path.join(ckpt, "whole"))
    return {"quantized": sum(v.dtype == torch.uint8 for s in opt.state.values() for v in s.values())}


def scenario_shards(ckpt: str) -> dict:
    world = dist.get_world_size()
    model = fsdp(model_fn())
    opt = make(model)
    load(model, opt, os.path.join(ckpt, "whole"))
    train(model, opt, 2, 4)
    ref, ref_opt = reference(4)
    out = {"diff": diff(model, ref, ref_opt), "state": state_equal(opt, model, ref_opt, ref)}
    save(model, opt, os.path.join(ckpt, f"shards{world}"))
    return out


def scenario_back(ckpt: str, name: str) -> dict:
    ref, ref_opt = reference(6)
    model = model_fn()
    opt = make(model)
    load(model, opt, os.path.join(ckpt, name))
    train(model, opt, 4, 6)
    return {"diff": diff(model, ref, ref_opt), "state": state_equal(opt, model, ref_opt, ref)}


def scenario_fresh(ckpt: str) -> dict:
    out: dict = {}
    for case in CASES:
        model = fsdp(model_fn())
        opt = make(model, case)
        train(model, opt, 0, 4)
        ref, ref_opt = reference(4, case)
        out[case] = {"diff": diff(model, ref, ref_opt), "state": state_equal(opt, model, ref_opt, ref),
                     "quantized": sum(v.dtype == torch.uint8 for s in opt.state.values() for v in s.values())}
    bf16 = lambda ps: descent.AdamW(ps, lr=1e-2, weight_decay=0.1, state_bits=8, kahan_summation=True)  # noqa: E731
    model, ref = fsdp(model_fn().to(torch.bfloat16)), model_fn().to(torch.bfloat16)
    opt, ref_opt = bf16(model.parameters()), bf16(ref.parameters())
    train(model, opt, 0, 3)
    train(ref, ref_opt, 0, 3)  # bf16 weights + kahan_comp (a DTensor under FSDP2): the reference path's math
    out["bf16kahan"] = {"diff": diff(model, ref, ref_opt), "state": state_equal(opt, model, ref_opt, ref),
                        "quantized": sum(v.dtype == torch.uint8 for s in opt.state.values() for v in s.values())}

    from torch.distributed.optim import ZeroRedundancyOptimizer

    model = model_fn()  # ZeRO-1 partitions whole tensors: each rank steps its own with the one-process state
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=descent.AdamW, lr=1e-2, weight_decay=0.1,
                                  state_bits=8)
    train(model, opt, 0, 4)
    ref, _ = reference(4)
    out["zero"] = max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(model.parameters(), ref.parameters()))
    model = fsdp(model_fn(hidden=75))  # the second weight's rows hold 75 elements: 4-bit pairs would straddle
    opt = make(model, "adamw4")
    try:
        train(model, opt, 0, 1)
        out["odd4"] = "no error"
    except ValueError as exc:
        out["odd4"] = str(exc)
    return out


def scenario_triton(ckpt: str) -> dict:
    """bf16 weights under Triton's interpreter (TRITON_INTERPRET=1, CPU tensors): shards that hold whole
    global blocks take the Triton low-bit kernels, as one process does; both must agree bit for bit."""
    import descent.distributed._lowbit as DL

    calls: list[int] = []
    real = DL._triton_local
    DL._triton_local = lambda *a, **k: (lambda done: (calls.append(len(done)), done)[1])(real(*a, **k))
    cases = {"adamw8": CASES["adamw8"], "adamw4": CASES["adamw4"], "sgd8": CASES["sgd8"],
             "lion4": lambda ps: descent.Lion(ps, lr=1e-3, weight_decay=0.1, state_bits=4)}

    def aligned() -> nn.Module:  # 8192 and 5120 weights in rows of 256 and 32: 2 shards start on block edges
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(256, 32), nn.Tanh(), nn.Linear(32, 160)).to(torch.bfloat16)

    out: dict = {}
    for case, make_opt in cases.items():
        model, ref = fsdp(aligned()), aligned()
        opt, ref_opt = make_opt(model.parameters()), make_opt(ref.parameters())
        calls.clear()
        train(model, opt, 0, 3)
        train(ref, ref_opt, 0, 3)
        out[case] = {"diff": diff(model, ref, ref_opt), "state": state_equal(opt, model, ref_opt, ref),
                     "quantized": sum(v.dtype == torch.uint8 for s in opt.state.values() for v in s.values()),
                     "triton": sum(calls)}
    return out


def main() -> None:
    scenario, ckpt, out_dir = sys.argv[1:4]
    dist.init_process_group("gloo")
    try:
        if scenario == "back":
            result = scenario_back(ckpt, sys.argv[4])
        else:
            result = {"whole": scenario_whole, "shards": scenario_shards, "fresh": scenario_fresh,
                      "triton": scenario_triton}[scenario](ckpt)
    except Exception as exc:
        result = {"fatal": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    with open(os.path.join(out_dir, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
