"""More scenarios of the multi-process tests (run by tests/test_distributed_worker.py; no tests here).

Overlapped collectives against blocking ones, Adafactor on tensors of more than two
dimensions and other layouts, K-FAC under DDP with ``fisher_backward`` and copies of a
K-FAC optimizer holding a process group. Each function takes the scenario argument and
returns what this rank reports.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

import descent
import descent.distributed as D
from test_distributed_worker import OPTIMIZERS, STEPS, full, model_fn, run_wrapped

#: Steps whose collectives run in waves, asynchronously (descent.distributed._comm.overlap).
OVERLAPPED = ("LAMB", "Adafactor", "Adafactor-b1-max", "MARS", "MARS-wd-max", "Muon", "Muon-default", "Shampoo",
              "SOAP", "SOAP-cautious")


def scenario_overlap(_: str) -> dict:
    """FSDP2 steps with overlapped collectives (waves) against blocking ones (one wave): the same bits."""
    from descent.distributed import _comm

    kwargs = {o[0]: (o[1], o[2]) for o in OPTIMIZERS}
    least, _comm.MIN_WAVE_NUMEL = _comm.MIN_WAVE_NUMEL, 0  # the test model is tiny: waves of one tensor
    default = _comm.overlap
    out = {}
    for label in OVERLAPPED:
        got, calls = [], []
        for on in (True, False):
            _comm.overlap = on
            _comm.reset_traffic()
            got.append(run_wrapped("fsdp", *kwargs[label]))
            calls.append(_comm.traffic["calls"])
        _comm.overlap = default
        out[label] = {"diff": max(float((a - b).abs().max()) for a, b in zip(*got)), "calls": calls}
    _comm.MIN_WAVE_NUMEL = least
    return out


#: Adafactor's factored tensors of more than 2 dims and other layouts: (shape, sharded dim) -> path under FSDP2.
ND_SHAPES = [((4, 5, 6), 0), ((3, 4, 6), 1), ((2, 3, 5, 4), 0), ((5, 8), 1), ((7,), 0)]  # dim 1: even (FSDP2)


def scenario_adafactor_nd(_: str) -> dict:
    """Adafactor on 3-D/4-D tensors split along dim 0 or by rows (Numba passes) and a matrix split by
    columns (eager ops), against one process; and how many tensors the Numba passes took."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    from descent.kernels import sharded

    taken = []
    stages = sharded.adafactor_stages
    sharded.adafactor_stages = lambda params, *a, **k: (taken.append(len(params)), stages(params, *a, **k))[1]
    out = {}
    for label, kwargs in (("default", {}), ("b1-wd-max", dict(beta1=0.9, weight_decay=0.01, maximize=True))):
        models = []
        for wrapped in (True, False):
            torch.manual_seed(1)
            holder = nn.ParameterList([nn.Parameter(torch.randn(s)) for s, _ in ND_SHAPES])
            if wrapped:
                dims = {id(p): d for p, (_, d) in zip(holder, ND_SHAPES)}
                fully_shard(holder, shard_placement_fn=lambda p: Shard(dims[id(p)]))
            opt = descent.Adafactor(holder.parameters(), **kwargs)
            for t in range(STEPS):
                gen = torch.Generator().manual_seed(200 + t)
                for p in holder:
                    p.grad = D.shard_like(torch.randn(p.shape, generator=gen), p)
                opt.step()
            models.append([full(p) for p in holder])
        out[label] = {"diff": max(float((a - b).abs().max()) for a, b in zip(*models))}
    sharded.adafactor_stages = stages
    out["numba_tensors_per_step"] = sum(taken) / (2 * STEPS)  # over the waves of a step
    return out


def _kfac_fisher_run(model: nn.Module, opt, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> None:
    """Three K-FAC steps whose factors come from fisher_backward on targets sampled around the outputs."""
    for _ in range(3):
        opt.zero_grad()
        out = model(x)
        opt.fisher_backward(nn.functional.mse_loss(out, (out + noise).detach()))  # the true Fisher's G
        nn.functional.mse_loss(out, y).backward()
        opt.step()


def scenario_kfac_more(_: str) -> dict:
    """K-FAC under DDP with fisher_backward against one process; a copy and a pickle of one holding a group."""
    import copy
    import pickle

    gen = torch.Generator().manual_seed(8)
    x, y, noise = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    rank, world = dist.get_rank(), dist.get_world_size()
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)
    kwargs = dict(lr=0.1, T_cov=1, T_inv=1, damping=1e-2)
    ref = model_fn()
    _kfac_fisher_run(ref, descent.KFAC(ref, **kwargs), x, y, noise)
    out = {}
    for label, average in (("fisher", True), ("fisher_not_averaged", False)):
        ddp = nn.parallel.DistributedDataParallel(model_fn())
        opt = descent.KFAC(ddp, **kwargs)
        if not average:
            opt._process_group = None
        _kfac_fisher_run(ddp, opt, x[part], y[part], noise[part])
        out[label] = max(float((a - b).abs().max()) for a, b in zip(ddp.module.parameters(), ref.parameters()))
    out["fisher_collected"] = all(opt._empirical.get(id(g["params"][0])) is False
                                  for g in opt.param_groups if g["kfac"])
    for label, clone in (("deepcopy", copy.deepcopy), ("pickle", lambda o: pickle.loads(pickle.dumps(o)))):
        try:
            twin = clone(opt)
            before = [p.detach().clone() for g in twin.param_groups for p in g["params"]]
            for g in twin.param_groups:
                for p in g["params"]:
                    p.grad = torch.ones_like(p)
            twin.step()  # no hooks, no group (nothing to average): it steps with the last factors
            after = [p.detach() for g in twin.param_groups for p in g["params"]]
            stepped = any(not torch.equal(a, b) for a, b in zip(before, after))
            out[label] = "ok" if stepped and getattr(twin, "_process_group", None) is None else "did not step"
        except Exception as exc:
            out[label] = f"{type(exc).__name__}: {exc}"
    return out


#: The scenarios this module adds to the worker's.
SCENARIOS = {"overlap": scenario_overlap, "adafactor_nd": scenario_adafactor_nd, "kfac_more": scenario_kfac_more}
