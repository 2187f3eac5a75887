"""Lion, LAMB, Adafactor, SophiaG (and RMSprop's kernel) beyond the shared table (tests/optim_db.py).

Numba kernels against the pure functional math, Adafactor against torch.optim.Adafactor
where the two agree by design, Sophia's Hessian refreshes, backend choice and
fallbacks, state size, and training a small MLP on scikit-learn's digits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn

import descent
from descent import kernels as K
from descent.optim.sophia import gnb_sample_labels
from reference.elementwise import sophia_hessian_rule, sophia_rule

OPTIMS = {
    "Lion": (descent.Lion, dict(lr=0.01, weight_decay=0.1)),
    "LAMB": (descent.LAMB, dict(lr=0.01, weight_decay=0.1)),
    "Adafactor": (descent.Adafactor, dict(beta1=0.9, weight_decay=0.1)),
    "SophiaG": (descent.SophiaG, dict(lr=0.01, bs=16)),
    "RMSprop": (descent.RMSprop, dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)),
    "RMSprop-plain": (descent.RMSprop, dict(lr=0.01)),
}
#: Elementwise kernels are bit-identical to the functional; norms/means are parallel sums.
KERNEL_TOL = {"Lion": 0.0, "SophiaG": 0.0, "LAMB": 1e-13, "Adafactor": 1e-13, "RMSprop": 1e-13, "RMSprop-plain": 1e-13}
#: float32: rounding. torch 2.13's vectorized CPU sqrt is not correctly rounded (measured: it differs from
#: IEEE sqrt on ~1% of float64 and ~17% of float32 inputs) and the kernels use IEEE sqrt; centered RMSprop's
#: sqrt(v - g_avg^2) cancels, which magnifies a last-bit difference.
FP32_TOL = {"RMSprop": 1e-5}
#: one small tensor (serial path), one above PARALLEL_MIN (threaded path), a 3-D one, a vector
SHAPES = [(7, 5), (300, 230), (3, 4, 6), (11,)]


def _params(dtype, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def _run(opt, params, steps, seed=1, hessian_every=0):
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()
        if hessian_every and t % hessian_every == 0:
            opt.update_hessian()


@pytest.mark.skipif(not K.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", list(OPTIMS))
def test_fused_kernel_matches_functional(name, dtype):
    cls, kw = OPTIMS[name]
    a, b = _params(dtype), _params(dtype)
    opt_a, opt_b = cls(a, backend="fused", **kw), cls(b, backend="loop", **kw)
    assert set(opt_a.backends().values()) == {"fused"}
    every = 3 if name == "SophiaG" else 0
    _run(opt_a, a, 12, hessian_every=every)
    _run(opt_b, b, 12, hessian_every=every)
    tol = KERNEL_TOL[name] if dtype == torch.float64 else FP32_TOL.get(name, 2e-6)
    for pa, pb in zip(a, b):
        if tol == 0.0:
            assert torch.equal(pa, pb)
        else:
            torch.testing.assert_close(pa, pb, atol=tol, rtol=tol)
        for key, va in opt_a.state[pa].items():
            vb = opt_b.state[pb][key]
            if tol == 0.0:
                assert torch.equal(va, vb), key
            else:
                torch.testing.assert_close(va, vb, atol=tol, rtol=tol)


#: many tensors of awkward shapes: zero-size, 0-d, vectors, rows/columns of one, a batch of matrices,
#: and one over 4 waves in size (LAMB recomputes its direction there instead of storing it)
MANY = [(7, 5), (0,), (30, 23), (3, 4, 6), (11,), (2, 50, 3), (), (120,), (13, 1), (1, 17), (0, 4), (9, 40), (50, 30)]


@pytest.mark.skipif(not K.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("name", list(OPTIMS))
def test_multi_tensor_kernel_over_many_blocks_and_waves(name, tiny_plan):
    """One kernel call over a bucket of many tensors equals the per-tensor functional."""
    cls, kw = OPTIMS[name]
    a, b = _params(torch.float64, shapes=MANY), _params(torch.float64, shapes=MANY)
    opt_a, opt_b = cls(a, backend="fused", **kw), cls(b, backend="loop", **kw)
    every = 3 if name == "SophiaG" else 0
    _run(opt_a, a, 8, hessian_every=every)
    _run(opt_b, b, 8, hessian_every=every)
    tol = KERNEL_TOL[name]
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, atol=tol, rtol=tol)
        for key, va in opt_a.state[pa].items():
            torch.testing.assert_close(va, opt_b.state[pb][key], atol=tol, rtol=tol)


@pytest.mark.skipif(not K.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("name", list(OPTIMS))
def test_multi_tensor_kernel_results_do_not_depend_on_the_thread_count(name, monkeypatch):
    """float32, bit for bit: sums are per block and added in block order, whatever the threads."""
    cls, kw = OPTIMS[name]
    shapes = [(300, 230), (5,), (3, 40, 700), (70000,)]
    runs = []
    for parallel_min in (1 << 60, 0):  # one thread, then all of them
        monkeypatch.setattr(K, "PARALLEL_MIN", parallel_min)
        ps = _params(torch.float32, shapes=shapes)
        opt = cls(ps, **kw)
        _run(opt, ps, 4, hessian_every=2 if name == "SophiaG" else 0)
        runs.append(ps)
    for pa, pb in zip(*runs):
        assert torch.equal(pa, pb)


@pytest.mark.skipif(not K.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("name", list(OPTIMS))
def test_a_non_contiguous_tensor_inside_a_bucket_takes_the_functional(name, tiny_plan):
    cls, kw = OPTIMS[name]
    base = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    a = _params(torch.float64, shapes=MANY[:4]) + [torch.nn.Parameter(base.t())]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a[:4]] + [torch.nn.Parameter(base.t().contiguous())]
    opt_a, opt_b = cls(a, **kw), cls(b, backend="loop", **kw)
    _run(opt_a, a, 5)
    _run(opt_b, b, 5)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, atol=1e-13, rtol=1e-13)


@pytest.mark.parametrize("name", list(OPTIMS))
def test_default_backend_is_fused_on_cpu_and_loop_for_bf16(name):
    cls, kw = OPTIMS[name]
    p32 = torch.nn.Parameter(torch.zeros(3, 2))
    p16 = torch.nn.Parameter(torch.zeros(3, 2, dtype=torch.bfloat16))
    choice = cls([{"params": [p32]}, {"params": [p16]}], **kw).backends()
    assert choice == {(0, "cpu", "torch.float32"): "fused" if K.AVAILABLE else "loop",
                      (1, "cpu", "torch.bfloat16"): "loop"}
    with pytest.raises(RuntimeError, match="cannot run parameters of dtype torch.bfloat16"):
        cls([p16], backend="fused", **kw).backends()


@pytest.mark.parametrize("name", list(OPTIMS))
def test_non_contiguous_tensors_fall_back_to_the_functional(name):
    cls, kw = OPTIMS[name]
    base_a = torch.randn(6, 8, dtype=torch.float64)
    a = torch.nn.Parameter(base_a.t())  # a non-contiguous parameter
    b = torch.nn.Parameter(base_a.t().contiguous())
    opt_a, opt_b = cls([a], **kw), cls([b], backend="loop", **kw)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        grad = torch.randn(8, 6, dtype=torch.float64, generator=g)
        a.grad, b.grad = grad.t().contiguous().t(), grad.clone()  # non-contiguous grad for a
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a.detach(), b.detach(), atol=1e-13, rtol=1e-13)


# --- Adafactor vs torch.optim.Adafactor -------------------------------------------


@pytest.mark.parametrize("backend", ["loop", "fused"])
def test_adafactor_defaults_match_torch_adafactor(backend):
    """Where the two agree by design: relative step, no momentum, no weight decay."""
    if backend == "fused" and not K.AVAILABLE:
        pytest.skip("numba not installed")
    shapes = [(6, 5), (5,), (2, 3, 4), (4, 1)]
    a, b = _params(torch.float64, shapes=shapes), _params(torch.float64, shapes=shapes)
    opt_a = descent.Adafactor(a, backend=backend)
    opt_b = torch.optim.Adafactor(b, lr=1e-2, eps=(None, 1e-3), beta2_decay=-0.8, d=1.0, weight_decay=0.0)
    _run(opt_a, a, 40)
    _run(opt_b, b, 40)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, atol=1e-13, rtol=1e-12)
        for key in ("row_var", "col_var", "variance"):
            if key in opt_b.state[pb]:
                torch.testing.assert_close(opt_a.state[pa][key], opt_b.state[pb][key], atol=1e-13, rtol=1e-12)


def test_adafactor_differs_from_torch_where_documented():
    """torch decays weights by lr * weight_decay; descent (as the paper's alpha_t) by alpha_t * weight_decay."""
    a, b = _params(torch.float64, shapes=[(6, 5)]), _params(torch.float64, shapes=[(6, 5)])
    opt_a = descent.Adafactor(a, weight_decay=0.5)
    opt_b = torch.optim.Adafactor(b, lr=1e-2, weight_decay=0.5)
    _run(opt_a, a, 5)
    _run(opt_b, b, 5)
    assert not torch.allclose(a[0], b[0], atol=1e-6)
    # and torch's state loads into descent (same key names and shapes)
    c = _params(torch.float64, shapes=[(6, 5)])
    opt_c = descent.Adafactor(c, weight_decay=0.5)
    state = opt_b.state_dict()
    state["param_groups"][0] = {**opt_c.state_dict()["param_groups"][0], "params": [0]}
    opt_c.load_state_dict(state)
    assert set(opt_c.state[c[0]]) == {"step", "row_var", "col_var"}


def test_adafactor_state_is_sublinear_and_lion_is_4_bytes():
    w = torch.nn.Parameter(torch.randn(64, 32))
    af = descent.Adafactor([w])
    w.grad = torch.randn(64, 32)
    af.step()
    state_numel = sum(v.numel() for k, v in af.state[w].items() if k != "step")
    assert state_numel == 64 + 32
    lion = descent.Lion([w])
    lion.step()
    assert sum(v.numel() * v.element_size() for v in lion.state[w].values()) == 4 * w.numel()


def test_adafactor_relative_step_and_warmup():
    assert descent.functional.adafactor_lr(1, None, relative_step=True, warmup_init=False) == 1e-2
    assert descent.functional.adafactor_lr(10**6, None, relative_step=True, warmup_init=False) == 1e-3
    assert descent.functional.adafactor_lr(100, None, relative_step=True, warmup_init=True) == pytest.approx(1e-4)
    assert descent.functional.adafactor_lr(7, 0.3, relative_step=False, warmup_init=False) == 0.3


def test_adafactor_rejects_complex():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    opt = descent.Adafactor([p])
    p.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(ValueError, match="complex"):
        opt.step()


# --- Sophia -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["loop", "fused"])
def test_sophia_with_hessian_refresh_matches_oracle(backend):
    if backend == "fused" and not K.AVAILABLE:
        pytest.skip("numba not installed")
    hp = dict(lr=0.01, betas=(0.9, 0.95), rho=0.05, weight_decay=0.1, bs=8, eps=1e-15)
    (p,) = _params(torch.float64, shapes=[(5, 4)])
    x = p.detach().numpy().copy()
    st: dict = {}
    opt = descent.SophiaG([p], backend=backend, **hp)
    g = torch.Generator().manual_seed(3)
    for t in range(25):
        grad = torch.randn(5, 4, generator=g, dtype=torch.float64)
        p.grad = grad
        opt.step()
        sophia_rule(x, grad.numpy(), st, {**hp, "maximize": False})
        if t % 5 == 0:
            hgrad = torch.randn(5, 4, generator=g, dtype=torch.float64)
            p.grad = hgrad
            opt.update_hessian()
            sophia_hessian_rule(st, hgrad.numpy(), 0.95)
    np.testing.assert_allclose(p.detach().numpy(), x, atol=1e-13, rtol=0)
    np.testing.assert_allclose(opt.state[p]["hessian"].numpy(), st["hessian"], atol=1e-15, rtol=1e-13)


def test_sophia_step_bs_overrides_for_one_step_only():
    a, b = _params(torch.float64, shapes=[(4,)]), _params(torch.float64, shapes=[(4,)])
    opt_a, opt_b = descent.SophiaG(a, lr=0.1, bs=10), descent.SophiaG(b, lr=0.1, bs=2)
    for opt, ps in ((opt_a, a), (opt_b, b)):
        opt.state[ps[0]].update(opt._init_state(ps[0], opt.param_groups[0]))
        opt.state[ps[0]]["hessian"].fill_(1.0)
        ps[0].grad = torch.full((4,), 0.5, dtype=torch.float64)
    opt_a.step(bs=2)
    opt_b.step()
    assert torch.equal(a[0], b[0])
    assert opt_a.param_groups[0]["bs"] == 10
    with pytest.raises(ValueError, match="Invalid bs: 0.0"):
        opt_a.step(bs=0)


def test_hutchinson_estimates_the_diagonal_of_a_diagonal_hessian():
    scales = torch.tensor([1.0, 4.0, 9.0, 0.5], dtype=torch.float64)
    x = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = descent.SophiaG([x], betas=(0.9, 0.0), bs=1)  # beta2 = 0: h is the last estimate
    loss = opt.update_hessian_hutchinson(lambda: 0.5 * (scales * x**2).sum(),
                                         generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(7.25)
    torch.testing.assert_close(opt.state[x]["hessian"], scales)  # u*(H u) = diag(H) when H is diagonal


def test_gnb_labels_follow_the_softmax():
    logits = torch.log(torch.tensor([[0.2, 0.8]])).expand(4000, 2)
    labels = gnb_sample_labels(logits, generator=torch.Generator().manual_seed(0))
    assert labels.shape == (4000,)
    assert abs(labels.float().mean().item() - 0.8) < 0.03


def test_sophia_gnb_loop_trains_softmax_regression():
    """The module docstring's loop, checked: the refreshes make h positive and the loss falls."""
    torch.manual_seed(0)
    X = torch.randn(256, 10)
    y = (X @ torch.randn(10, 3)).argmax(1)
    model = torch.nn.Linear(10, 3)
    opt = descent.SophiaG(model.parameters(), lr=0.05, bs=256, weight_decay=0.0)
    first = Fn.cross_entropy(model(X), y).item()
    for step in range(60):
        opt.zero_grad()
        Fn.cross_entropy(model(X), y).backward()
        opt.step()
        if step % 10 == 9:
            opt.zero_grad()
            logits = model(X)
            Fn.cross_entropy(logits, gnb_sample_labels(logits)).backward()
            opt.update_hessian()
    assert all(bool((opt.state[p]["hessian"] > 0).any()) for p in model.parameters())
    assert Fn.cross_entropy(model(X), y).item() < 0.5 * first


# --- training on real data ----------------------------------------------------------

#: (kwargs on top of the documented defaults, accuracy reached on held-out digits)
DIGITS = {
    "Lion": (dict(lr=1e-3), 0.93),  # reached 0.947 (LAMB 0.965, SophiaG 0.942)
    "LAMB": (dict(lr=1e-2), 0.93),
    "Adafactor": (dict(), 0.92),  # reached 0.935
    "SophiaG": (dict(lr=1e-3, bs=64), 0.93),
}


@pytest.mark.parametrize("name", list(DIGITS))
def test_trains_mlp_on_digits(name):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=gen)
    tr, te = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    kw, target = DIGITS[name]
    cls = getattr(descent, name)
    opt = cls(model.parameters(), **kw)
    for epoch in range(15):
        order = tr[torch.randperm(len(tr), generator=gen)]
        for i, batch in enumerate(order.split(64)):
            opt.zero_grad()
            Fn.cross_entropy(model(X[batch]), y[batch]).backward()
            opt.step()
            if name == "SophiaG" and i % 10 == 0:
                opt.zero_grad()
                logits = model(X[batch])
                Fn.cross_entropy(logits, gnb_sample_labels(logits, generator=gen)).backward()
                opt.update_hessian()
    acc = (model(X[te]).argmax(1) == y[te]).float().mean().item()
    assert acc >= target, f"{name}: held-out accuracy {acc:.3f} < {target}"


@pytest.mark.skipif(not K.AVAILABLE, reason="numba is needed")
def test_a_kernel_step_keeps_the_users_torch_thread_count():
    # Numba's OpenMP layer shares the OpenMP default with torch: without care, a user's
    # torch.set_num_threads(1) became 2 after the first large kernel step.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        p = torch.zeros(2 * K.PARALLEL_MIN, requires_grad=True)
        p.grad = torch.ones_like(p)
        descent.Lion([p], lr=1e-3).step()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not K.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("name", ["LAMB", "Adafactor"])
@pytest.mark.parametrize("shapes", [[(2, 4, 1, 1), (2,), (2,), (2,)], [(6, 1), (3, 1, 5), (4,)], [(1, 1, 9)]],
                         ids=["conv1x1-bn", "unit-dims", "one"])
def test_tiny_buckets_whose_tensors_count_as_large_match_the_functional(name, shapes):
    """A bucket so small that one tensor is over half a thread's share takes the kernels' "large
    tensor" loops; their scratch once was sized for a factored side of 1 and corrupted the heap."""
    cls, kw = OPTIMS[name]
    runs = []
    for backend in ("loop", "fused"):
        ps = _params(torch.float64, shapes=shapes)
        _run(cls(ps, backend=backend, **kw), ps, 3)
        runs.append(ps)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=KERNEL_TOL[name])


@pytest.mark.skipif(not K.AVAILABLE, reason="numba not installed")
def test_step_counters_advance_as_foreach_add_does():
    """float32 CPU counters are advanced by one compiled loop over their addresses; others by torch."""
    from descent.kernels.multi import advance_counters
    from descent.optim._run import advance_steps

    a = [torch.full((), float(v)) for v in (0, 1, 2**24 - 2, 7)]
    b = [t.clone() for t in a]
    assert advance_steps(a) == [1, 2, 2**24 - 1, 8]
    torch._foreach_add_(b, 1.0)
    assert all(torch.equal(x, y) and x.dtype == torch.float32 for x, y in zip(a, b))
    assert advance_counters([torch.zeros(()), torch.zeros((), dtype=torch.float64)]) is None
    c = [torch.zeros(()), torch.zeros((), dtype=torch.float64)]
    assert advance_steps(c) == [1, 1] and c[1].dtype == torch.float64 and c[1].item() == 1.0
