"""Shared checks for every row of ``tests/optim_db.py``.

The standard run (as torch's ``_test_derived_optimizers``): 32 steps in float64 on two
param groups with different hyperparameters, one step where a parameter has no
gradient, a parameter frozen from step 12 on and a zero-size parameter. Parameters and
every state tensor must equal the reference to ``spec.atol`` (1e-12 by default).
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from optim_db import GROUP0, SPECS, OptimizerSpec

STEPS = 32
FROZEN_AT = 12
NONE_STEP = 5

CASES = [(s, i) for s in SPECS for i in range(len(s.configs))]
CASE_IDS = [f"{s.name}-{i}" for s, i in CASES]


def _init(shapes, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def _groups(params, spec: OptimizerSpec):
    return [{"params": params[:GROUP0]}, {"params": params[GROUP0:], **spec.group2}]


def _run(opt, params, steps=STEPS, seed=1, start=0):
    """Feed the same gradient sequence to ``params`` and step ``opt``."""
    g = torch.Generator().manual_seed(seed + start)
    for t in range(start, start + steps):
        for i, p in enumerate(params):
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if (i == 3 and t >= FROZEN_AT) or (i == 1 and t == NONE_STEP):
                p.grad = None
                if i == 3:
                    p.requires_grad_(False)
            else:
                p.grad = grad
        opt.step()
    return params


def _close(a, b, atol, rtol=0.0):
    assert a.shape == b.shape
    if a.numel():
        torch.testing.assert_close(a.to(torch.float64), b.to(torch.float64), atol=atol, rtol=rtol)


def _compare_state(opt_a, opt_b, params_a, params_b, atol, skip=()):
    for pa, pb in zip(params_a, params_b):
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        for key in set(sa) & set(sb):
            if key in skip:
                continue
            va, vb = sa[key], sb[key]
            va = torch.as_tensor(va, dtype=torch.float64)
            vb = torch.as_tensor(vb, dtype=torch.float64)
            _close(va.reshape(vb.shape) if va.numel() == vb.numel() else va, vb, atol)


@pytest.mark.parametrize("ref", ["torch", "numpy"])
@pytest.mark.parametrize("spec,cfg", CASES, ids=CASE_IDS)
def test_parity_float64(spec: OptimizerSpec, cfg: int, ref: str):
    if ref not in spec.references:
        pytest.skip(f"{spec.name} has no {ref} reference")
    kwargs = spec.configs[cfg]
    for backend in spec.backends:
        a = [torch.nn.Parameter(x) for x in _init(spec.shapes)]
        b = [torch.nn.Parameter(x) for x in _init(spec.shapes)]
        opt_a = spec.cls(_groups(a, spec), backend=backend, **kwargs)
        opt_b = spec.references[ref](_groups(b, spec), **kwargs)
        _run(opt_a, a)
        _run(opt_b, b)
        for pa, pb in zip(a, b):
            _close(pa.detach(), pb.detach(), spec.atol)
        _compare_state(opt_a, opt_b, a, b, spec.atol, spec.state_skip)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_low_precision_close_to_float64(spec: OptimizerSpec, dtype):
    """float32/bfloat16 params on the default backend stay within the row's stated tolerance."""
    kwargs = spec.configs[-1]
    a = [torch.nn.Parameter(x) for x in _init(spec.shapes, dtype)]
    b = [torch.nn.Parameter(x.to(torch.float64)) for x in _init(spec.shapes, dtype)]
    opt_a = spec.cls(_groups(a, spec), **kwargs)
    opt_b = spec.cls(_groups(b, spec), backend="loop", **kwargs)
    _run(opt_a, a, steps=10)
    _run(opt_b, b, steps=10)
    tol = spec.low_precision[dtype]
    for pa, pb in zip(a, b):
        _close(pa.detach(), pb.detach(), atol=tol, rtol=tol)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_state_dict_round_trip_bit_identical(spec: OptimizerSpec):
    kwargs = spec.configs[-1]
    a = [torch.nn.Parameter(x) for x in _init(spec.shapes, torch.float32)]
    opt_a = spec.cls(_groups(a, spec), **kwargs)
    _run(opt_a, a, steps=8)
    buf = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in a], "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    b = [torch.nn.Parameter(x, requires_grad=pa.requires_grad) for x, pa in zip(saved["params"], a)]
    opt_b = spec.cls(_groups(b, spec), **kwargs)
    opt_b.load_state_dict(saved["opt"])
    _run(opt_a, a, steps=8, start=8)
    _run(opt_b, b, steps=8, start=8)
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)
    _compare_state(opt_a, opt_b, a, b, atol=0.0)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_deepcopy_keeps_everything(spec: OptimizerSpec):
    a = [torch.nn.Parameter(x) for x in _init(spec.shapes, torch.float32)]
    opt = spec.cls(_groups(a, spec), **spec.configs[-1])
    _run(opt, a, steps=3)
    clone = copy.deepcopy(opt)
    public = {k for k in vars(opt) if not k.startswith("_")}
    assert public == {k for k in vars(clone) if not k.startswith("_")}
    assert clone.defaults == opt.defaults
    assert len(clone.state) == len(opt.state)
    for ga, gb in zip(opt.param_groups, clone.param_groups):
        assert {k: v for k, v in ga.items() if k != "params"} == {k: v for k, v in gb.items() if k != "params"}


@pytest.mark.parametrize("spec", [s for s in SPECS if s.torch_cls], ids=[s.name for s in SPECS if s.torch_cls])
def test_state_dict_moves_between_torch_and_descent(spec: OptimizerSpec):
    """A torch optimizer's state_dict loads into descent (and back); both continue alike."""
    kwargs = spec.configs[-1]
    for src_cls, dst_cls in ((spec.torch_cls, spec.cls), (spec.cls, spec.torch_cls)):
        a = [torch.nn.Parameter(x) for x in _init(spec.shapes)]
        src = src_cls(_groups(a, spec), **kwargs)
        _run(src, a, steps=6)
        b = [torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad) for p in a]
        dst = dst_cls(_groups(b, spec), **kwargs)
        dst.load_state_dict(copy.deepcopy(src.state_dict()))
        _run(src, a, steps=6, start=6)
        _run(dst, b, steps=6, start=6)
        for pa, pb in zip(a, b):
            _close(pa.detach(), pb.detach(), 1e-12)


def _quadratic(n=10, cond=10.0):
    scales = torch.logspace(0, math.log10(cond), n, dtype=torch.float64)
    target = torch.linspace(-1, 1, n, dtype=torch.float64)
    return lambda x: 0.5 * (scales * (x - target) ** 2).sum(), target


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_converges_on_quadratic(spec: OptimizerSpec):
    c = spec.converge
    f, target = _quadratic()
    x = torch.nn.Parameter(torch.full((10,), 2.0, dtype=torch.float64))
    opt = spec.cls([x], lr=c.lr, **c.kwargs)
    for _ in range(c.steps):
        opt.zero_grad()
        f(x).backward()
        opt.step()
    assert (x.detach() - target).norm() < c.quadratic_tol


@pytest.mark.parametrize("spec", [s for s in SPECS if s.converge.rosenbrock_tol],
                         ids=[s.name for s in SPECS if s.converge.rosenbrock_tol])
def test_converges_on_rosenbrock(spec: OptimizerSpec):
    c = spec.converge
    xy = torch.nn.Parameter(torch.tensor([-1.5, 2.0], dtype=torch.float64))
    opt = spec.cls([xy], lr=c.rosenbrock_lr or c.lr, **c.kwargs)
    for _ in range(c.rosenbrock_steps or c.steps):
        opt.zero_grad()
        x, y = xy
        ((1 - x) ** 2 + 100 * (y - x**2) ** 2).backward()
        opt.step()
    assert (xy.detach() - 1).norm() < c.rosenbrock_tol


ERROR_CASES = [(s, kw, msg) for s in SPECS for kw, msg in s.error_inputs]


@pytest.mark.parametrize("spec,kwargs,match", ERROR_CASES,
                         ids=[f"{s.name}-{i}" for i, (s, _, _) in enumerate(ERROR_CASES)])
def test_bad_hyperparameters_raise_value_error(spec, kwargs, match):
    p = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=match):
        spec.cls([p], **kwargs)
    # a bad value in a second group is caught too, and names the value
    if "backend" not in kwargs and "foreach" not in kwargs and not any(k in kwargs for k in ("capturable",)):
        q = torch.nn.Parameter(torch.zeros(2))
        with pytest.raises(ValueError, match=match):
            spec.cls([{"params": [p]}, {"params": [q], **kwargs}])


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_empty_and_duplicated_params_raise(spec):
    with pytest.raises(ValueError, match="empty parameter list"):
        spec.cls([])
    p = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        spec.cls([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match="appears twice"):
        spec.cls([p, p])


SPARSE = ("SGD", "Adagrad")  # torch's SGD and Adagrad take sparse gradients; so do descent's


@pytest.mark.parametrize("spec", [s for s in SPECS if s.name not in SPARSE],
                         ids=[s.name for s in SPECS if s.name not in SPARSE])
def test_sparse_gradient_error_names_the_parameter(spec):
    p = torch.nn.Parameter(torch.zeros(3, 2))
    q = torch.nn.Parameter(torch.zeros(4, 2))
    opt = spec.cls([{"params": [p]}, {"params": [q]}])
    p.grad = torch.zeros(3, 2)
    q.grad = torch.zeros(4, 2).to_sparse()
    with pytest.raises(RuntimeError, match=r"param_groups\[1\]\['params'\]\[0\]"):
        opt.step()


@pytest.mark.parametrize("spec", [s for s in SPECS if s.name in SPARSE], ids=list(SPARSE))
def test_sparse_gradients_match_torch(spec):
    """nn.Embedding(sparse=True): the rows a batch touches are updated as torch's optimizer does."""
    for kwargs in spec.configs:
        if kwargs.get("weight_decay") or kwargs.get("maximize"):
            continue  # torch refuses weight decay with sparse gradients
        torch.manual_seed(0)
        ours, theirs = torch.nn.Embedding(10, 3, sparse=True), torch.nn.Embedding(10, 3, sparse=True)
        theirs.load_state_dict(ours.state_dict())
        kw = {k: v for k, v in kwargs.items() if k not in ("backend", "foreach", "fused")}
        opts = [(ours, spec.cls(ours.parameters(), **kw)), (theirs, spec.torch_cls(theirs.parameters(), **kw))]
        for _ in range(4):
            idx = torch.randint(0, 10, (5,))
            for emb, opt in opts:
                opt.zero_grad()
                emb(idx).pow(2).sum().backward()
                opt.step()
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.torch_cls], ids=[s.name for s in SPECS if s.torch_cls])
def test_complex_parameters_match_torch(spec):
    kwargs = spec.configs[-1]
    g = torch.Generator().manual_seed(3)
    init = torch.randn(4, 3, dtype=torch.complex128, generator=g)
    a, b = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    opt_a, opt_b = spec.cls([a], **kwargs), spec.torch_cls([b], **kwargs)
    for _ in range(10):
        grad = torch.randn(4, 3, dtype=torch.complex128, generator=g)
        a.grad, b.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a.detach(), b.detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_nonfinite_gradient_is_observable_and_skippable(spec):
    p = torch.nn.Parameter(torch.ones(3))
    opt = spec.cls([p], skip_nonfinite=True, **spec.configs[-1])
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3))
    assert opt.param_groups[0]["skipped_steps"] == 1
    assert opt.param_groups[0]["nonfinite_params"] == ["param_groups[0]['params'][0]"]
    # without the option the corrupted state is still observable
    opt2 = spec.cls([p], **spec.configs[-1])
    p.grad = torch.tensor([1.0, float("inf"), 0.0])
    opt2.step()
    assert opt2.nonfinite_state() or not torch.isfinite(p).all()


def test_closure_runs_with_grad_enabled():
    import descent

    x = torch.nn.Parameter(torch.tensor([3.0]))
    opt = descent.SGD([x], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (x**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 9.0
    assert x.item() == pytest.approx(2.4)


def test_backend_choice_explicit_wins_and_default_is_fused_on_cpu():
    import descent

    p = torch.nn.Parameter(torch.zeros(3))
    for cls in (descent.SGD, descent.Adam, descent.AdamW, descent.Adagrad):
        assert set(cls([p]).backends().values()) == {"fused"}
        assert set(cls([p], foreach=True).backends().values()) == {"foreach"}
        assert set(cls([p], backend="loop").backends().values()) == {"loop"}
    from descent import kernels

    assert set(descent.RMSprop([p]).backends().values()) == {"fused" if kernels.AVAILABLE else "loop"}
    with pytest.raises(ValueError, match="Invalid backend: 'fuse'"):
        descent.RMSprop([p], backend="fuse").backends()


def test_sgd_fused_initialises_late_momentum_buffers_correctly():
    """torch's fused SGD leaves garbage buffers for a param whose first grad comes late."""
    import descent

    a = [torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))]
    b = [torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))]
    opt_a = descent.SGD(a, lr=0.1, momentum=0.9, dampening=0.5, backend="fused")
    opt_b = torch.optim.SGD(b, lr=0.1, momentum=0.9, dampening=0.5)
    for t in range(4):
        for ps in (a, b):
            ps[0].grad = torch.full((4,), 1.0 + t)
            ps[1].grad = None if t == 0 else torch.full((4,), 2.0)
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa.detach(), pb.detach())
