"""The Numba kernels of ADOPT, AdEMAMix, MARS and schedule-free SGD/AdamW (descent.kernels.modern)
against their functionals: one bucket per call, over many blocks and waves, mixed step counts,
thread-count independence and the fallbacks. (Float64 parity with the papers' references on the
"fused" backend is in tests/optim_db.py's rows.)
"""

from __future__ import annotations

import pytest
import torch

import descent
from descent import kernels as K

pytestmark = pytest.mark.skipif(not K.AVAILABLE, reason="numba not installed")

OPTIMS = {
    "ADOPT": (descent.ADOPT, dict(lr=0.01, weight_decay=0.1)),
    "ADOPT-decoupled": (descent.ADOPT, dict(lr=0.01, weight_decay=0.1, decouple=True, clip_exponent=None,
                                            maximize=True)),
    "AdEMAMix": (descent.AdEMAMix, dict(lr=0.01, weight_decay=0.1, t_alpha_beta3=6)),
    "MARS": (descent.MARS, dict(lr=0.01, weight_decay=0.1, gamma=0.5, maximize=True)),
    "ScheduleFreeSGD": (descent.ScheduleFreeSGD, dict(lr=0.05, weight_decay=0.1, warmup_steps=3)),
    "ScheduleFreeAdamW": (descent.ScheduleFreeAdamW, dict(lr=0.01, weight_decay=0.1, warmup_steps=3, r=1.0)),
}
#: schedule-free SGD has no square root: bit for bit. The others take one (torch 2.13's vectorized CPU
#: sqrt is not correctly rounded, the kernels' is); MARS's norm is also a sum in another order.
FP64_TOL = {"ScheduleFreeSGD": 0.0}
#: one small tensor (serial path), one above PARALLEL_MIN (threaded path), a 3-D one, a vector
SHAPES = [(7, 5), (300, 230), (3, 4, 6), (11,)]
#: many awkward shapes: zero-size, 0-d, rows/columns of one, tensors cut into many blocks
MANY = [(7, 5), (0,), (30, 23), (3, 4, 6), (11,), (2, 50, 3), (), (120,), (13, 1), (1, 17), (0, 4), (50, 30)]


def _params(dtype, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def _run(opt, params, steps, seed=1, late=()):
    """``steps`` steps of random gradients; parameters in ``late`` get none on the first two steps."""
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        for i, p in enumerate(params):
            grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.grad = None if (i in late and t < 2) else grad
        opt.step()


def _assert_same(opt_a, opt_b, a, b, tol):
    for pa, pb in zip(a, b):
        pairs = [(pa, pb)] + [(va, opt_b.state[pb][k]) for k, va in opt_a.state[pa].items()]
        for x, y in pairs:
            if tol == 0.0:
                assert torch.equal(x, y)
            else:
                torch.testing.assert_close(x, y, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", list(OPTIMS))
def test_kernel_matches_functional(name, dtype):
    cls, kw = OPTIMS[name]
    a, b = _params(dtype), _params(dtype)
    opt_a, opt_b = cls(a, backend="fused", **kw), cls(b, backend="loop", **kw)
    assert set(opt_a.backends().values()) == {"fused"}
    _run(opt_a, a, 10, late=(2,))  # a late parameter: its step count (ADOPT's first step) differs in the bucket
    _run(opt_b, b, 10, late=(2,))
    fp32 = 0.0 if FP64_TOL.get(name) == 0.0 else 2e-6
    _assert_same(opt_a, opt_b, a, b, FP64_TOL.get(name, 1e-13) if dtype == torch.float64 else fp32)


@pytest.mark.parametrize("name", list(OPTIMS))
def test_kernel_over_many_blocks_and_waves(name, tiny_plan):
    cls, kw = OPTIMS[name]
    a, b = _params(torch.float64, shapes=MANY), _params(torch.float64, shapes=MANY)
    opt_a, opt_b = cls(a, backend="fused", **kw), cls(b, backend="loop", **kw)
    _run(opt_a, a, 6)
    _run(opt_b, b, 6)
    _assert_same(opt_a, opt_b, a, b, FP64_TOL.get(name, 1e-13))


@pytest.mark.parametrize("name", ["MARS", "AdEMAMix"])
def test_kernel_results_do_not_depend_on_the_thread_count(name, monkeypatch):
    """float32, bit for bit (MARS's norms are per-block sums added in block order)."""
    cls, kw = OPTIMS[name]
    runs = []
    for parallel_min in (1 << 60, 0):  # one thread, then all of them
        monkeypatch.setattr(K, "PARALLEL_MIN", parallel_min)
        ps = _params(torch.float32, shapes=[(300, 230), (5,), (70000,)])
        _run(cls(ps, **kw), ps, 3)
        runs.append(ps)
    for pa, pb in zip(*runs):
        assert torch.equal(pa, pb)


def test_mars_kernel_clips_by_the_norm_of_each_tensor():
    """A large gradient on one tensor (norm > 1: divided) beside a tiny one (norm < 1: kept)."""
    a = [torch.nn.Parameter(torch.ones(50, 40, dtype=torch.float64)),
         torch.nn.Parameter(torch.ones(30, dtype=torch.float64))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_a, opt_b = descent.MARS(a, backend="fused", lr=0.1), descent.MARS(b, backend="loop", lr=0.1)
    for scale in (100.0, 1e-3, 50.0):
        for ps in (a, b):
            ps[0].grad = torch.full((50, 40), scale, dtype=torch.float64)
            ps[1].grad = torch.full((30,), scale * 1e-3, dtype=torch.float64)
        opt_a.step()
        opt_b.step()
    _assert_same(opt_a, opt_b, a, b, 1e-13)


@pytest.mark.parametrize("name", list(OPTIMS))
def test_default_backend_is_the_kernel_and_strided_tensors_take_the_functional(name):
    cls, kw = OPTIMS[name]
    base = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a = _params(torch.float64, shapes=[(4, 3)]) + [torch.nn.Parameter(base.t())]  # non-contiguous
    b = _params(torch.float64, shapes=[(4, 3)]) + [torch.nn.Parameter(base.t().contiguous())]
    opt_a, opt_b = cls(a, **kw), cls(b, backend="loop", **kw)
    assert set(opt_a.backends().values()) == {"fused"}
    _run(opt_a, a, 4)
    _run(opt_b, b, 4)
    _assert_same(opt_a, opt_b, a, b, FP64_TOL.get(name, 1e-13))
