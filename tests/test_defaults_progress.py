"""Every optimizer's documented defaults make progress on a quadratic, Rosenbrock and a regression.

Each optimizer is built with nothing but its parameters (``descent.X(params)``; Muon and KFAC take
the model) and run for 200 steps (LBFGS: 10 steps of up to 20 evaluations). The stated bound is the
final loss as a fraction of the starting loss; the numbers in :data:`BOUNDS` are the measured
fractions with a margin (measured on CPU, torch 2.13: ``pytest tests/test_defaults_progress.py``),
and every bound is below 0.98: the defaults must move the loss, not only stay finite.

* quadratic: :math:`\\tfrac12\\sum_i h_i w_i^2` on an 8x8 matrix, :math:`h` log-spaced from 1 to
  1e-2 (condition number 100), from all ones;
* Rosenbrock: :math:`(1-x)^2 + 100(y-x^2)^2` from (-1.5, 2), as a 1x2 matrix;
* regression: MLP 10-16-1 (tanh), full-batch MSE on 256 rows of a noisy linear target.
"""

import math

import pytest
import torch
from torch import nn

import descent

torch.set_num_threads(1)
STEPS = 200

#: optimizer -> (quadratic, rosenbrock, regression) bound on final / start loss (None: not applicable)
BOUNDS = {
    "SGD": (0.9, 0.55, 0.8),
    "Adam": (0.8, 0.6, 0.2),
    "AdamW": (0.8, 0.6, 0.2),
    "RMSprop": (1e-6, 0.5, 0.02),
    "Adagrad": (0.7, 0.6, 0.1),
    "Lion": (0.98, 0.85, 0.95),
    "LAMB": (0.8, 0.55, 0.93),
    "Adafactor": (0.1, 0.5, 0.05),
    "SophiaG": (0.98, 0.85, 0.95),
    "Muon": (0.95, 0.6, 0.9),
    "Shampoo": (0.98, 0.65, 0.75),
    "KFAC": (None, None, 0.05),
    "LBFGS": (1e-6, 1e-6, 1e-3),
    "ADOPT": (0.8, 0.6, 0.1),
    "AdEMAMix": (0.8, 0.6, 0.2),
    "MARS": (0.3, 0.55, 0.05),
    "Prodigy": (1e-6, 0.05, 0.05),
    "ScheduleFreeAdamW": (0.7, 0.6, 0.1),
    "ScheduleFreeSGD": (0.05, 0.98, 0.2),
}
#: known failures of a documented default, with the measured reason
XFAIL = {("ScheduleFreeSGD", "rosenbrock"): "its default lr=1.0 diverges (NaN) on Rosenbrock from (-1.5, 2)"}


def _quadratic(w):
    h = torch.logspace(0, -2, w.numel()).view_as(w)
    return 0.5 * (h * w * w).sum()


def _rosenbrock(w):
    x, y = w[0, 0], w[0, 1]
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def _run(opt, loss_fn, steps):
    needs_closure = isinstance(opt, descent.LBFGS)
    with torch.no_grad():
        start = float(loss_fn())
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            out = loss_fn()
            out.backward()
            return out
        if needs_closure:
            opt.step(closure)
        else:
            closure()
            opt.step()
    with torch.no_grad():
        return float(loss_fn()) / start


def _progress(name, problem):
    cls = getattr(descent, name, None)
    if cls is None:
        pytest.skip(f"descent.{name} is not in this build")
    steps = 10 if name == "LBFGS" else STEPS
    if problem == "regression":
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 10, generator=g)
        y = x @ torch.randn(10, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 1))
        opt = cls(net if name in ("Muon", "KFAC") else net.parameters())
        return _run(opt, lambda: nn.functional.mse_loss(net(x), y), steps)
    w = nn.Parameter(torch.ones(8, 8) if problem == "quadratic" else torch.tensor([[-1.5, 2.0]]))
    opt = cls([w])
    return _run(opt, lambda: (_quadratic if problem == "quadratic" else _rosenbrock)(w), steps)


_CASES = [(n, p, b) for n, bounds in BOUNDS.items() for p, b in zip(("quadratic", "rosenbrock", "regression"), bounds)
          if b is not None]


@pytest.mark.slow  # 19 optimizers x 3 problems x 200 steps: ~1-3 min on 2 loaded cores
@pytest.mark.parametrize("name, problem, bound", [
    pytest.param(n, p, b, marks=pytest.mark.xfail(strict=True, reason=XFAIL[(n, p)])) if (n, p) in XFAIL
    else (n, p, b) for n, p, b in _CASES])
def test_defaults_make_progress(name, problem, bound):
    ratio = _progress(name, problem)
    assert math.isfinite(ratio) and ratio <= bound, f"{name} on {problem}: final/start {ratio:.3g} > {bound}"
    assert bound < 0.98 or ratio < 0.98


def _kfac_problem(kind):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if kind == "classification":
        x = torch.randn(512, 10, generator=g)
        y = (x @ torch.randn(10, 3, generator=g)).argmax(1)
        return x, y, nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3)), nn.functional.cross_entropy
    # ill-conditioned least squares with a large loss (targets ~100x the inputs)
    x = torch.randn(512, 10, generator=g) * torch.logspace(0, -3, 10)
    y = x @ torch.randn(10, 1, generator=g) * 100
    return x, y, nn.Linear(10, 1), nn.functional.mse_loss


def _kfac_run(kind, steps=60, **kwargs):
    x, y, net, loss = _kfac_problem(kind)
    return _run(descent.KFAC(net, **kwargs), lambda: loss(net(x), y), steps)


def test_kfac_defaults_classification():
    assert _kfac_run("classification") < 0.2  # the defaults (lr 1e-3, kl_clip 1e-3) make progress here


def _newton_momentum_reference(steps=60, lr=1e-3, momentum=0.9):
    """(final - optimum) / (start - optimum) of SGD-momentum (K-FAC's defaults) along the exact
    Gauss-Newton = Newton direction H^-1 grad of the least squares (H its exact Hessian)."""
    x, y, net, loss = _kfac_problem("regression")
    xb = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    w = torch.zeros(11, 1, dtype=torch.float64)
    with torch.no_grad():
        w[:10, 0], w[10, 0] = net.weight[0].double(), net.bias.double()[0]
    opt_w = torch.linalg.lstsq(xb, y.double()).solution
    f = lambda v: float(((xb @ v - y.double()) ** 2).mean())
    hess = 2 * xb.T @ xb / len(x)
    buf = torch.zeros_like(w)
    start, best = f(w), f(opt_w)
    for _ in range(steps):
        d = torch.linalg.solve(hess, 2 * xb.T @ (xb @ w - y.double()) / len(x))
        buf = momentum * buf + d
        w = w - lr * buf
    return (f(w) - best) / (start - best), best / start


def test_kfac_defaults_large_loss_regression():
    """With the empirical Fisher, G = 4·loss·I here, so the unnormalised natural step is the
    Gauss-Newton step / (2·loss): 0.9999 of the start after 60 steps (``fisher_scale="none"``).
    The default ``fisher_scale="trace"`` must do at least as well as SGD-momentum at the same lr
    along the exact Newton direction (measured: K-FAC 0.089, the reference 0.33)."""
    ref, floor = _newton_momentum_reference()
    assert floor < 1e-6  # the least-squares optimum is ~0: the ratio below measures progress to it
    assert _kfac_run("regression") <= ref
    assert _kfac_run("regression", fisher_scale="none") > 0.99  # the pathology the default removes
