"""One rank of the multi-process tests in test_distributed.py (run as a script, not collected).

Usage: ``python tests/test_distributed_worker.py SCENARIO OUT_DIR [ARG]`` with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set. Each rank writes ``OUT_DIR/rank{r}.json``.
Every optimizer check of a scenario runs inside one process group, so start-up is paid
once. Each rank computes the one-process reference itself on plain tensors (same seed,
same full gradients), so the comparison needs no extra process.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist
from torch import nn

import descent
import descent.distributed as D
from descent.optim.registry import get_optimizer

STEPS = 3

#: (label, registry name, kwargs, tolerance: 0.0 = bit for bit). Every name of
#: descent.list_optimizers() appears, except K-FAC and L-BFGS (see scenario_errors).
OPTIMIZERS = [
    ("SGD", "sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), 0.0),
    ("SGD-plain", "sgd-plain", dict(lr=0.1), 0.0),
    ("momentum", "momentum", dict(lr=0.1, momentum=0.9), 0.0),
    ("Adam", "adam", dict(lr=1e-2), 0.0),
    ("AdamW", "adamw", dict(lr=1e-2, weight_decay=0.1), 0.0),
    ("Adagrad", "adagrad", dict(lr=1e-2), 0.0),
    ("RMSprop", "rmsprop", dict(lr=1e-2, momentum=0.5), 0.0),
    ("Lion", "lion", dict(lr=1e-2, weight_decay=0.1), 0.0),
    ("Lion-loop", "lion", dict(lr=1e-2, backend="loop"), 0.0),
    ("Lion-cautious", "lion", dict(lr=1e-2, cautious=True), 0.0),  # the mask's rescale counts the whole tensor
    ("AdamW-cautious", "adamw", dict(lr=1e-2, weight_decay=0.1, cautious=True), 0.0),
    ("SophiaG", "sophiag", dict(lr=1e-2), 0.0),
    ("ADOPT", "adopt", dict(lr=1e-2), 0.0),
    ("AdEMAMix", "ademamix", dict(lr=1e-2), 0.0),
    ("ScheduleFreeSGD", "schedulefree-sgd", dict(lr=0.1), 0.0),
    ("ScheduleFreeAdamW", "schedulefree-adamw", dict(lr=1e-2), 0.0),
    ("LAMB", "lamb", dict(lr=1e-2, weight_decay=0.01), 1e-6),
    ("Adafactor", "adafactor", dict(), 1e-6),
    ("Adafactor-loop-b1", "adafactor", dict(beta1=0.9, backend="loop", weight_decay=0.01), 1e-6),
    ("Adafactor-b1-max", "adafactor", dict(beta1=0.9, weight_decay=0.01, maximize=True), 1e-6),  # FSDP2: Numba passes
    ("Muon", "muon", dict(lr=0.02, backend="loop", ns_dtype=torch.float32), 0.0),
    ("Muon-default", "muon", dict(lr=0.02), 1e-5),
    ("Shampoo", "shampoo", dict(lr=1e-2, update_freq=2), 0.0),
    ("SOAP", "soap", dict(lr=1e-2), 0.0),
    ("SOAP-cautious", "soap", dict(lr=1e-2, cautious=True), 0.0),  # the vectors' mask is global: owner-rank too
    ("MARS", "mars", dict(lr=1e-2), 1e-6),  # FSDP2: the norm of c_t is reduced over the ranks
    ("MARS-cautious", "mars", dict(lr=1e-2, cautious=True, weight_decay=0.1), 1e-6),
    ("MARS-wd-max", "mars", dict(lr=1e-2, weight_decay=0.1, maximize=True), 1e-6),  # FSDP2: Numba passes
    ("Prodigy", "prodigy", dict(), 1e-6),  # FSDP2: its d-estimate sums are reduced over the ranks
]

#: Not run under FSDP2, and why (the test file asserts the list stays this short).
FSDP_GAPS: dict[str, str] = {}


def model_fn() -> nn.Module:
    torch.manual_seed(0)  # uneven shapes: 5 rows over 4 ranks is 2, 2, 1, 0
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3, bias=False))


def full_grads(model: nn.Module, step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen) for p in model.parameters()]


def make(name: str, model: nn.Module, kwargs: dict):
    params = list(model.parameters())
    if name == "muon":  # explicit groups (ZeroRedundancyOptimizer hands each rank groups)
        params = [{"params": [p for p in params if p.ndim >= 2], "use_muon": True},
                  {"params": [p for p in params if p.ndim < 2], "use_muon": False}]
    return get_optimizer(name)(params, **kwargs)


def fsdp(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if D.is_dtensor(t) else t.detach()


def run_reference(name: str, kwargs: dict, steps: int = STEPS, start: nn.Module | None = None) -> nn.Module:
    model = model_fn() if start is None else start
    opt = make(name, model, kwargs)
    for t in range(steps):
        for p, g in zip(model.parameters(), full_grads(model, t)):
            p.grad = g
        opt.step()
    return model


def run_wrapped(wrapper: str, name: str, kwargs: dict) -> list[torch.Tensor]:
    model = model_fn()
    if wrapper == "fsdp":
        model = fsdp(model)
        opt = make(name, model, kwargs)
    elif wrapper == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
        opt = make(name, model.module, kwargs)
    else:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        params = list(model.parameters())
        if name == "muon":  # ZeRO copies its defaults (lr=...) into every group: give the AdamW group its own
            aux = {k: v for k, v in make(name, model, kwargs).param_groups[1].items()
                   if k in ("lr", "eps", "weight_decay", "betas")}
            params = [{"params": [p for p in params if p.ndim >= 2], "use_muon": True},
                      {"params": [p for p in params if p.ndim < 2], "use_muon": False, **aux}]
        opt = ZeroRedundancyOptimizer(params, optimizer_class=get_optimizer(name), **kwargs)
    plain = model.module if wrapper == "ddp" else model
    for t in range(STEPS):
        for p, g in zip(plain.parameters(), full_grads(plain, t)):
            p.grad = D.shard_like(g, p)
        opt.step()
    return [full(p) for p in plain.parameters()]


def scenario_optimizers(wrapper: str) -> dict:
    out = {}
    for label, name, kwargs, tol in OPTIMIZERS:
        if wrapper == "fsdp" and label in FSDP_GAPS:
            continue
        try:
            got = run_wrapped(wrapper, name, kwargs)
            ref = [p.detach() for p in run_reference(name, kwargs).parameters()]
            diff = max(float((a - b).abs().max()) if a.numel() else 0.0 for a, b in zip(got, ref))
            out[label] = {"diff": diff, "tol": tol}
        except Exception as exc:  # recorded; the test fails on it
            out[label] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
    return out


def scenario_errors(_: str) -> dict:
    out = {}
    model = fsdp(model_fn())
    try:  # a vector in a Muon group: the same error on every rank, before any collective
        descent.Muon([{"params": list(model.parameters()), "use_muon": True}])
        out["muon_vector"] = "no error"
    except ValueError as exc:
        out["muon_vector"] = f"ValueError: {exc}"
    try:
        kfac = descent.KFAC(model, lr=0.1)
        for p, g in zip(model.parameters(), full_grads(model, 0)):
            p.grad = D.shard_like(g, p)
        kfac.step()
        out["kfac"] = "no error"
    except Exception as exc:
        out["kfac"] = f"{type(exc).__name__}: {exc}"
    opt = descent.AdamW(model.parameters(), lr=0.1, skip_nonfinite=True)
    before = [full(p).clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = D.shard_like(torch.ones(p.shape), p)
    last = list(model.parameters())[-1]
    if dist.get_rank() == dist.get_world_size() - 1 and D.local(last.grad).numel():
        D.local(last.grad).view(-1)[0] = float("nan")  # one rank's shard only
    opt.step()
    after = [full(p) for p in model.parameters()]
    out["nan_one_rank_skipped"] = all(bool((a == b).all()) for a, b in zip(before, after))
    out["skipped_steps"] = opt.param_groups[0]["skipped_steps"]
    grads = full_grads(model, 0)  # global-norm clipping sees the whole model's norm on every rank
    for p, g in zip(model.parameters(), grads):
        p.grad = D.shard_like(g, p)
    clip = descent.clip_grad_norm_(model.parameters(), 1.0)
    want = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    scaled = [full(p.grad) for p in model.parameters()]
    out["clip_norm_error"] = abs(float(clip) - want) / want
    out["clip_grads_error"] = max(float((s - g * (1.0 / (want + 1e-6))).abs().max()) for s, g in zip(scaled, grads))
    return out


def scenario_train(out_dir: str) -> dict:
    """``descent.distributed.train``: FSDP2 data parallel on a built-in task, rank 0 logs once."""
    from descent.distributed.train import train

    result = train("digits-mlp", "adamw", steps=4, out=os.path.join(out_dir, "run"), checkpoint_every=2)
    dist.barrier()
    lines = open(os.path.join(out_dir, "run", "train.jsonl")).read().splitlines()
    return {"steps_logged": [json.loads(x)["step"] for x in lines], "checkpoint": result["checkpoint"],
            "loss": result["loss"], "final": result["final"],
            "checkpoints": sorted(os.listdir(os.path.join(out_dir, "run", "checkpoints")))}


def scenario_zero_muon(_: str) -> dict:
    """ZeRO with Muon on a model's plain parameter list: works, or fails the same on every rank.

    Runs last: a rank that fails here leaves, and the others must not wait for it forever.
    """
    out = {}
    try:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        plain = model_fn()
        zero = ZeroRedundancyOptimizer(plain.parameters(), optimizer_class=descent.Muon, lr=0.02)
        ref = model_fn()
        one = descent.Muon(list(ref.parameters()), lr=0.02)  # tensors: matrices to Muon, vectors to AdamW
        for m, opt in ((plain, zero), (ref, one)):
            for p, g in zip(m.parameters(), full_grads(m, 0)):
                p.grad = g
            opt.step()
        out["zero_muon"] = "ok"
        out["diff"] = max(float((a - b).abs().max()) for a, b in zip(plain.parameters(), ref.parameters()))
    except Exception as exc:
        out["zero_muon"] = f"{type(exc).__name__}: {exc}"
    return out


CHECKPOINTED = [("adamw", dict(lr=1e-2, weight_decay=0.1)), ("adafactor", dict(beta1=0.9)),
                ("muon", dict(lr=0.02, backend="loop", ns_dtype=torch.float32)), ("shampoo", dict(lr=1e-2, update_freq=2)),
                ("soap", dict(lr=1e-2, precondition_frequency=2))]


def scenario_owner_state(_: str) -> dict:
    """Shampoo/SOAP under FSDP2: how many preconditioner matrices each parameter's state holds on this rank.

    Each must be held by one rank only (its owner); one process holds them all.
    """
    def square_model() -> nn.Module:  # a square matrix: its preconditioners have the parameter's shape
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3, bias=False))

    out = {}
    for name, kwargs in (("shampoo", dict(lr=1e-2)), ("soap", dict(lr=1e-2, precondition_frequency=2))):
        counts, params = [], []
        for wrapped in (True, False):
            model = fsdp(square_model()) if wrapped else square_model()
            opt = make(name, model, kwargs)
            for step in range(3):
                for p, g in zip(model.parameters(), full_grads(model, step)):
                    p.grad = D.shard_like(g, p)
                opt.step()
            counts.append([sum(1 for k, v in opt.state[p].items() if k.startswith(type(opt).preconditioner_keys)
                               and isinstance(v, torch.Tensor) and not D.is_dtensor(v)) for p in model.parameters()])
            params.append([full(p) for p in model.parameters()])
        diff = max(float((a - b).abs().max()) for a, b in zip(*params))
        out[name] = {"here": counts[0], "one_process": counts[1], "diff": diff}
    out["soap_nd"] = soap_per_dimension()
    return out


def soap_per_dimension() -> dict:
    """SOAP on conv kernels (one basis per dimension, merged, vectors rotated) under FSDP2 against one
    process: the largest difference, and the bases each parameter's state holds here and in one process."""
    from torch.distributed.fsdp import fully_shard

    def conv_model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 5, 3), nn.Tanh(), nn.Conv2d(5, 4, 2), nn.Flatten(), nn.Linear(4, 3))

    out = {}
    for label, kwargs in (("per_dim", dict(lr=1e-2, precondition_frequency=2)),
                          ("merge_dims", dict(lr=1e-2, merge_dims=True, max_precond_dim=16, precondition_frequency=2)),
                          ("precondition_1d", dict(lr=1e-2, precondition_1d=True, precondition_frequency=2))):
        runs = []
        for wrapped in (True, False):
            model = conv_model()
            if wrapped:
                for layer in model:
                    if isinstance(layer, (nn.Conv2d, nn.Linear)):
                        fully_shard(layer)
                fully_shard(model)
            opt = descent.SOAP(model.parameters(), **kwargs)
            for t in range(STEPS):
                for p, g in zip(model.parameters(), full_grads(model, t)):
                    p.grad = D.shard_like(g, p)
                opt.step()
            runs.append(([full(p) for p in model.parameters()],
                         [sorted(k for k in opt.state[p] if k[:3] == "gg_" or k[:2] == "q_") for p in model.parameters()]))
        out[label] = {"diff": max(float((a - b).abs().max()) for a, b in zip(runs[0][0], runs[1][0])),
                      "here": runs[0][1], "one_process": runs[1][1]}
    return out


def scenario_kfac_ddp(_: str) -> dict:
    """K-FAC on a DDP model, each rank on its slice of a global batch, against one process on the whole batch.

    Also the same run with the factor averaging switched off, which must differ (the test can fail).
    """
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
    rank, world = dist.get_rank(), dist.get_world_size()
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)
    kwargs = dict(lr=0.1, T_cov=1, T_inv=1, damping=1e-2)
    out = {}
    for label, average in (("averaged", True), ("not_averaged", False)):
        ddp = nn.parallel.DistributedDataParallel(model_fn())
        opt = descent.KFAC(ddp, **kwargs)
        out.setdefault("group_found", opt._process_group is not None)
        if not average:
            opt._process_group = None
        for _ in range(3):
            opt.zero_grad()
            nn.functional.mse_loss(ddp(x[part]), y[part]).backward()
            opt.step()
        ref = model_fn()
        one = descent.KFAC(ref, **kwargs)
        for _ in range(3):
            one.zero_grad()
            nn.functional.mse_loss(ref(x), y).backward()
            one.step()
        out[label] = max(float((a - b).abs().max()) for a, b in zip(ddp.module.parameters(), ref.parameters()))
    from descent.distributed._kfac import average_factors

    stats = {1: {"A": torch.ones(2, 2)}, 2: {"A": torch.ones(3, 3)}}  # the last rank collected one factor more
    try:
        average_factors(stats if rank == world - 1 else {1: stats[1]}, [1, 2], dist.group.WORLD)
        out["mismatch"] = "no error"
    except RuntimeError as exc:
        out["mismatch"] = f"RuntimeError: {exc}"
    return out


def scenario_save(ckpt: str) -> dict:
    """Two steps on FSDP2, then the model and optimizer state through torch.distributed.checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    for name, kwargs in CHECKPOINTED:
        model = fsdp(model_fn())
        opt = make(name, model, kwargs)
        for t in range(2):
            for p, g in zip(model.parameters(), full_grads(model, t)):
                p.grad = D.shard_like(g, p)
            opt.step()
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=os.path.join(ckpt, name))
    return {"saved": [n for n, _ in CHECKPOINTED]}


def scenario_load(ckpt: str) -> dict:
    """Load the 2-step checkpoint on this world size, take 2 more steps, compare with 4 one-process steps."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    out = {}
    for name, kwargs in CHECKPOINTED:
        try:
            model = fsdp(model_fn())
            opt = make(name, model, kwargs)
            msd, osd = get_state_dict(model, opt)
            state = {"model": msd, "optim": osd}
            dcp.load(state, checkpoint_id=os.path.join(ckpt, name))
            set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
            for t in range(2, 4):
                for p, g in zip(model.parameters(), full_grads(model, t)):
                    p.grad = D.shard_like(g, p)
                opt.step()
            got = [full(p) for p in model.parameters()]
            ref = [p.detach() for p in run_reference(name, kwargs, steps=4).parameters()]
            out[name] = {"diff": max(float((a - b).abs().max()) for a, b in zip(got, ref))}
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
    return out


def main() -> None:
    begin = time.perf_counter()
    scenario, out_dir = sys.argv[1], sys.argv[2]
    arg = sys.argv[3] if len(sys.argv) > 3 else ""
    if os.environ.get("DESCENT_DEV_PATCH"):
        sys.path.insert(0, os.environ["DESCENT_DEV_PATCH"])
        import devpatch  # noqa: F401
    dist.init_process_group("gloo")
    imported = round(time.perf_counter() - begin, 1)
    rank = dist.get_rank()
    scenarios = {"fsdp": scenario_optimizers, "ddp": scenario_optimizers, "zero": scenario_optimizers,
                 "errors": scenario_errors, "train": scenario_train, "owner_state": scenario_owner_state, "kfac_ddp": scenario_kfac_ddp,
                 "zero_muon": scenario_zero_muon, "save": scenario_save, "load": scenario_load}
    from test_distributed_scenarios import SCENARIOS  # overlap, Adafactor beyond 2-D, K-FAC with fisher_backward

    scenarios.update(SCENARIOS)
    result = {}
    for name in scenario.split(","):
        start = time.perf_counter()
        try:
            result[name] = scenarios[name](name if scenarios[name] is scenario_optimizers else arg)
        except Exception as exc:
            result[name] = {"fatal": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
        result[name + "_seconds"] = round(time.perf_counter() - start, 1)
        if name != "zero_muon":
            dist.barrier()
    result["import_seconds"] = imported
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
