"""Clipping vs torch, NaN-safe stepping (descent and wrapped torch optimizers), mixed precision,
accumulation exactness, batch-size scaling."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import descent
from descent import schedules as S
from descent.stability.amp import MixedPrecision, precision_agreement


def _grads(seed: int, scale: float = 1.0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in ((3, 4), (5,), (0,), (2, 2))]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * scale
    ps.append(torch.nn.Parameter(torch.zeros(2)))  # no grad
    return ps


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
@pytest.mark.parametrize("foreach", [None, False])
def test_clip_grad_norm_equals_torch(norm_type: float, max_norm: float, foreach) -> None:
    ours, ref = _grads(0), _grads(0)
    if norm_type == math.inf:  # torch's inf-norm raises on a zero-size grad; so does descent's (same call)
        ours, ref = [p for p in ours if p.numel()], [p for p in ref if p.numel()]
    r = descent.clip_grad_norm_(ours, max_norm, norm_type, foreach=foreach)
    t = torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type, foreach=foreach)
    for a, b in zip(ours, ref):
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad)
    assert float(r) == t.item() and r.total_norm == t.item() and torch.equal(r.tensor, t)
    assert r.clipped == (t.item() > max_norm)
    assert r.item() == t.item() and (r > 0) and f"{r:.3f}" == f"{t.item():.3f}"


def test_clip_grad_value_equals_torch() -> None:
    ours, ref = _grads(1, 3.0), _grads(1, 3.0)
    before = torch.nn.utils.get_total_norm([p.grad for p in ref if p.grad is not None])
    r = descent.clip_grad_value_(ours, 1.0)
    torch.nn.utils.clip_grad_value_(ref, 1.0)
    for a, b in zip(ours, ref):
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad)
    assert float(r) == before.item() and r.clipped
    assert not descent.clip_grad_value_(_grads(1, 1e-3), 1.0).clipped


def test_clip_nonfinite_and_errors() -> None:
    ps = _grads(2)
    ps[0].grad[0, 0] = math.inf
    assert not descent.clip_grad_norm_(ps, 1.0).finite
    ps = _grads(2)
    ps[1].grad[0] = math.nan
    with pytest.raises(RuntimeError):
        descent.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="-1"):
        descent.clip_grad_norm_(ps, -1.0)
    assert not descent.clip_grad_norm_([torch.nn.Parameter(torch.zeros(1))], 1.0).clipped


# ----------------------------------------------------------------- NaN-safe step
def _data(n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randn(16, 1, generator=g, dtype=torch.float64))
            for _ in range(n)]


def _run(make_opt, batches, poison_at: int | None) -> tuple[list[torch.Tensor], torch.optim.Optimizer, S.Scheduler]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    named = dict(model.named_parameters())
    opt = make_opt([{"params": list(named.values()), "param_names": list(named)}])
    sched = S.Scheduler(opt, S.WarmupCosine(20, warmup=5))
    for i, (x, y) in enumerate(batches):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if i == poison_at:
            model[2].weight.grad[0, 3] = math.inf
        opt.step()
        sched.step()
    return [p.detach().clone() for p in model.parameters()], opt, sched


@pytest.mark.parametrize("which", ["descent", "torch_wrapped", "torch_skip_nonfinite"])
def test_injected_inf_run_equals_run_without_that_batch(which: str) -> None:
    makers = {
        "descent": lambda g: descent.AdamW(g, lr=1e-2, skip_nonfinite=True),
        "torch_wrapped": lambda g: descent.NonFiniteGuard(torch.optim.AdamW(g, lr=1e-2)),
        "torch_skip_nonfinite": lambda g: descent.skip_nonfinite(torch.optim.SGD(g, lr=0.05, momentum=0.9)),
    }
    batches = _data()
    clean, _, clean_sched = _run(makers[which], batches[:3] + batches[4:], None)
    poisoned, opt, sched = _run(makers[which], batches, poison_at=3)
    for a, b in zip(clean, poisoned):
        assert torch.equal(a, b)
    assert sched.last_epoch == clean_sched.last_epoch == len(batches) - 1 and sched.skipped == 1
    assert opt.param_groups[0]["skipped_steps"] == 1
    assert opt.param_groups[0]["nonfinite_params"] == ["param_groups[0]['params'][2] ('2.weight')"]
    assert opt.param_groups[0]["lr"] == clean_sched.optimizer.param_groups[0]["lr"]


def test_guard_is_an_optimizer_that_round_trips() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    guard = descent.skip_nonfinite(torch.optim.Adam([p], lr=0.1))
    p.grad = torch.ones(3)
    guard.step()
    inner = guard.optimizer
    assert guard.state is inner.state and guard.param_groups is inner.param_groups
    clone = copy.deepcopy(guard)
    assert isinstance(clone, descent.NonFiniteGuard) and clone.optimizer is not inner
    sd = guard.state_dict()
    assert sd["param_groups"][0]["skipped_steps"] == 0
    p.grad = torch.full((3,), math.nan)
    before = p.detach().clone()
    guard.step()
    assert torch.equal(p, before) and guard.skipped_steps == 1
    # the closure is evaluated once and its loss returned
    calls = []

    def closure():
        calls.append(1)
        p.grad = torch.ones(3)
        return torch.tensor(1.0)

    assert guard.step(closure).item() == 1.0 and len(calls) == 1
    d = descent.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    assert descent.skip_nonfinite(d) is d and d.param_groups[0]["skip_nonfinite"]


# ---------------------------------------------------------------- mixed precision
def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def test_bf16_step_and_skip_reporting() -> None:
    model = _model()
    opt = descent.skip_nonfinite(torch.optim.SGD(model.parameters(), lr=0.01))
    sched = S.Scheduler(opt, S.LinearWarmup(10))
    mp = MixedPrecision(opt, "bf16", max_norm=1.0)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    for i in range(3):
        with mp.autocast():
            out = model(x)
        assert out.dtype == torch.bfloat16
        mp.backward(torch.nn.functional.mse_loss(out.float(), y))
        if i == 1:
            model[0].weight.grad[0, 0] = math.nan
        rep = mp.step()
        sched.step()
        assert rep.stepped == (i != 1) and rep.grad_norm is not None
    assert mp.skipped_steps == 1 and sched.last_epoch == 2


def test_fp16_scaler_order_and_skip_detection() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = S.Scheduler(opt, S.LinearWarmup(10, start_factor=0.1))  # lr 0 at step 0 would hide a step
    mp = MixedPrecision(opt, "fp16", max_norm=10.0, scaler_kwargs={"init_scale": 2.0 ** 18})
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    reports = []
    for _ in range(8):
        before = [p.detach().clone() for p in model.parameters()]
        with mp.autocast():
            out = model(x)
        assert out.dtype == torch.float16
        mp.backward(torch.nn.functional.mse_loss(out.float(), y))
        rep = mp.step()
        sched.step()
        changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert changed == rep.stepped  # a reported skip is a real skip, and vice versa
        reports.append(rep)
    skipped = [r for r in reports if not r.stepped]
    assert skipped and "GradScaler" in skipped[0].reason  # 2**18 overflows fp16 at first
    assert reports[-1].stepped and mp.skipped_steps == len(skipped)
    assert sched.last_epoch == 8 - len(skipped)  # warmup did not advance on scaler skips
    assert all(math.isfinite(r.grad_norm) and r.grad_norm < 1e6 for r in reports if r.stepped)  # unscaled


def test_precision_agreement_reports_divergence() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)

    def loss_fn(m, b):
        return torch.nn.functional.mse_loss(m(b[0]).float(), b[1])

    rep = precision_agreement(_model(), lambda p: torch.optim.SGD(p, lr=0.05), [(x, y)] * 8, loss_fn)
    assert rep.agree and 0 < rep.max_rel_diff < 0.05 and len(rep.losses_low) == 8
    assert "agree" in rep.explain()
    strict = precision_agreement(_model(), lambda p: torch.optim.SGD(p, lr=0.05), [(x, y)] * 8, loss_fn,
                                 tolerance=1e-9)
    assert not strict.agree  # bf16 is not bit-identical to fp32


# -------------------------------------------------------------------- accumulation
@pytest.mark.parametrize("sizes", [(4, 4, 4, 3), (5, 1, 9)])
def test_accumulation_equals_one_big_batch(sizes) -> None:
    g = torch.Generator().manual_seed(0)
    n = sum(sizes)
    x, y = torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randn(n, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    big = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    small = copy.deepcopy(big)
    torch.nn.functional.mse_loss(big(x), y).backward()
    opt = torch.optim.SGD(small.parameters(), lr=0.0)
    acc = descent.GradientAccumulator(opt, micro_batches=len(sizes))
    start = 0
    for k in sizes:
        xb, yb = x[start:start + k], y[start:start + k]
        start += k
        stepped = acc.backward(torch.nn.functional.mse_loss(small(xb), yb), count=k)
    assert stepped and acc.steps == 1
    # step() zeroed the grads; redo without stepping to compare the averaged gradient
    start = 0
    acc2 = descent.GradientAccumulator(opt)
    for k in sizes:
        acc2.backward(torch.nn.functional.mse_loss(small(x[start:start + k]), y[start:start + k]), count=k)
        start += k
    acc2.average_()
    for a, b in zip(big.parameters(), small.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-12)
    # the naive (loss / k) recipe is measurably wrong with an uneven last micro-batch
    naive = copy.deepcopy(big)
    naive.zero_grad()
    start = 0
    for k in sizes:
        (torch.nn.functional.mse_loss(naive(x[start:start + k]), y[start:start + k]) / len(sizes)).backward()
        start += k
    assert any((a.grad - b.grad).abs().max() > 1e-6 for a, b in zip(big.parameters(), naive.parameters()))


def test_token_weighted_accumulation() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(4, dtype=torch.float64, generator=g))
    seqs = [torch.randn(n, 4, dtype=torch.float64, generator=g) for n in (7, 2, 5)]
    (torch.cat(seqs) @ w).pow(2).mean().backward()  # mean over all tokens
    ref = w.grad.clone()
    w.grad = None
    acc = descent.GradientAccumulator(torch.optim.SGD([w], lr=0.0))
    for s in seqs:
        acc.backward((s @ w).pow(2).mean(), count=len(s))  # per-sequence token mean, weighted by tokens
    acc.average_()
    assert torch.allclose(w.grad, ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="0"):
        acc.backward((seqs[0] @ w).sum(), count=0)
    assert descent.micro_batches_for(1000, 64) == 16


# ------------------------------------------------------------------------ scaling
def test_scale_lr_rules_and_explanation() -> None:
    lin = descent.scale_lr(0.1, 256, 1024)
    assert lin == pytest.approx(0.4) and lin.lr == pytest.approx(0.4) and "linear" in lin.explanation
    sq = descent.scale_lr(0.1, 256, 1024, rule="sqrt")
    assert sq == pytest.approx(0.2)
    two = descent.scale_lr(1.0, 64, 128)
    assert two.range == pytest.approx((1.5, 2.0))
    down = descent.scale_lr(1.0, 128, 64)
    assert down.range == pytest.approx((0.5, 1 / 1.5))
    with pytest.raises(ValueError, match="cubic"):
        descent.scale_lr(0.1, 1, 2, rule="cubic")
    with pytest.raises(ValueError, match="-5"):
        descent.scale_lr(0.1, -5, 2)


def test_lion_from_adamw() -> None:
    a = descent.lion_from_adamw(1e-3, 0.01, factor=10)
    assert a.lr == pytest.approx(1e-4) and a.weight_decay == pytest.approx(0.1)
    assert a.lr * a.weight_decay == pytest.approx(1e-3 * 0.01)
    assert a.lr_range == pytest.approx((1e-4, 1e-3 / 3)) and "3-10x" in a.explanation
    with pytest.raises(ValueError, match="100"):
        descent.lion_from_adamw(1e-3, 0.01, factor=100)


def test_skip_nonfinite_with_zero_size_params() -> None:
    # torch's inf-norm raises on empty tensors; the shared detection must skip them
    empty, w = torch.nn.Parameter(torch.zeros(0)), torch.nn.Parameter(torch.ones(2))
    for opt in (descent.Adam([empty, w], lr=0.1, skip_nonfinite=True),
                descent.NonFiniteGuard(torch.optim.Adam([empty, w], lr=0.1))):
        empty.grad, w.grad = torch.zeros(0), torch.tensor([1.0, math.inf])
        opt.step()
        assert opt.param_groups[0]["skipped_steps"] == 1
        assert opt.param_groups[0]["nonfinite_params"] == ["param_groups[0]['params'][1]"]
        assert w.tolist() == [1.0, 1.0]
