"""SOAP (issue 15): parity with pytorch-optimizer and the float64 reference on tensors of every order.

The optim_db row (tests/optim_db.py) runs the shared checks on vectors, matrices and a
3-D tensor; this file adds the peer package, conv kernels with ``merge_dims`` and
``precondition_1d``, the sides over ``max_precond_dim``, the bases themselves, and the
checkpoint layout of the per-dimension state.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

import descent
from descent import functional as F
from reference.modern import _soap_merge, soap_rule
from reference._oracle import oracle
from test_optim_common import _close, _init

SHAPES = ((4, 3, 2, 2), (4, 3), (5,), (3, 2))  # a conv kernel, a matrix, a vector; the last gets no grad
KW = dict(lr=0.01, betas=(0.9, 0.95), weight_decay=0.01, precondition_frequency=3)


def _pair(shapes, dtype=torch.float64):
    return ([torch.nn.Parameter(x) for x in _init(shapes, dtype)],
            [torch.nn.Parameter(x) for x in _init(shapes, dtype)])


def _simple_run(opt, params, steps=32, seed=1):
    """``steps`` steps with random gradients for every parameter but the last (its grad stays None)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params[:-1]:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()


def _groups(ps, merge_dims, max_key="max_precond_dim"):
    """The conv kernel and the matrix in one group (with ``merge_dims``), the vector rotated in another."""
    return [dict(params=ps[:2], merge_dims=merge_dims, **{max_key: 8}),
            dict(params=ps[2:], precondition_1d=True)]


# ------------------------------------------------------------------ peer package and reference
@pytest.mark.parametrize("merge_dims", [False, True])
def test_soap_per_dimension_matches_pytorch_optimizer(merge_dims):
    """pytorch-optimizer's SOAP keeps one basis per dimension of a conv kernel, as the authors' code.

    Limit 8: the (4, 3, 2, 2) kernel is rotated by 4x4, 3x3, 2x2, 2x2 bases, merged (4, 6, 2). The
    vector runs with ``precondition_1d`` (pytorch-optimizer skips every tensor's first step; descent
    only a rotated one's). pytorch-optimizer's ``merge_small_dims`` gives ``[1]`` when all dimensions
    merge into one (its reshape then fails: a vector in a merge_dims group, a small matrix), so those
    are left out of its merge_dims group. It takes QR in float32: ~1e-8 apart after 32 steps.
    """
    po = pytest.importorskip("pytorch_optimizer")
    a, b = _pair(SHAPES)
    ours = descent.SOAP(_groups(a, merge_dims), **KW)
    peer = po.SOAP(_groups(b, merge_dims, "max_precondition_dim"), **KW)
    _simple_run(ours, a)
    _simple_run(peer, b)
    for pa, pb in zip(a, b):
        _close(pa.detach(), pb.detach(), 1e-6)
    bases = sorted(k for k in ours.state[a[0]] if k.startswith("q_"))
    assert bases == (["q_0", "q_1", "q_2"] if merge_dims else ["q_0", "q_1", "q_2", "q_3"])
    assert ours.state[a[0]]["q_1"].shape == ((6, 6) if merge_dims else (3, 3))
    assert a[-1].grad is None and torch.equal(a[-1], _init(SHAPES)[-1])


@pytest.mark.parametrize("kwargs", [dict(), dict(merge_dims=True, max_precond_dim=8, precondition_1d=True),
                                    dict(merge_dims=True, max_precond_dim=5),
                                    dict(precondition_1d=True, max_precond_dim=3, cautious=True, maximize=True)])
def test_soap_per_dimension_matches_the_float64_reference(kwargs):
    """The float64 transcription (tests/reference/modern.py: per-dimension statistics by tensordot, the
    authors' merge) on a conv kernel, a 3-D tensor, matrices, a vector and a None grad, 32 steps.

    Shapes and limits keep every first-step statistic's null space at most 1-D: the eigenbasis of a
    larger one is arbitrary (LAPACK's choice, numpy's differs from torch's) and Adam is not invariant
    to it, so e.g. a kernel merged into one dimension (rank-1 statistics) has no comparable reference.
    """
    shapes = ((4, 3, 2, 2), (2, 5, 3), (6, 5), (2,), (3, 2))
    a, b = _pair(shapes)
    kw = dict(KW, **kwargs)
    ours = descent.SOAP(a, **kw)
    ref = oracle(soap_rule, shampoo_beta=None, eps=1e-8, max_precond_dim=10000, correct_bias=True)(b, **kw)
    _simple_run(ours, a)
    _simple_run(ref, b)
    for pa, pb in zip(a, b):
        _close(pa.detach(), pb.detach(), 1e-9)


def test_soap_merge_is_the_authors():
    shapes = [(64, 32, 3, 3), (4, 3, 2, 2), (1, 7), (20000, 3), (5, 20000, 3), (1, 2, 512, 1, 2048, 1, 3, 4),
              (3, 1, 1), (1, 1), (10, 10, 10, 10, 10)]
    for shape in shapes:
        for limit in (8, 100, 1024, 10000):
            assert F.soap_shape(shape, limit, merge_dims=True) == _soap_merge(shape, limit), (shape, limit)
            assert F.soap_shape(shape, limit) == shape
    assert F.soap_shape((64, 32, 3, 3), 10000, merge_dims=True) == (6144, 3)


def test_soap_conv_kernel_is_not_the_matrix_view():
    """Per dimension is another update than the ``(shape[0], prod(rest))`` view :func:`F.soap` takes."""
    a, b = _pair(((4, 3, 2, 2),))
    idle = torch.nn.Parameter(torch.zeros(1))  # no grad: _simple_run draws for the kernel only
    _simple_run(descent.SOAP(a + [idle], **KW), a + [idle], steps=8)
    p, (m, v) = b[0], (torch.zeros(4, 3, 2, 2, dtype=torch.float64) for _ in range(2))
    mats = [torch.zeros(n, n, dtype=torch.float64) for n in (4, 12, 4, 12)]
    g = torch.Generator().manual_seed(1)
    hp = dict(lr=0.01, beta1=0.9, beta2=0.95, shampoo_beta=0.95, eps=1e-8, weight_decay=0.01, precondition_frequency=3)
    with torch.no_grad():
        for t in range(1, 9):
            F.soap(p, torch.randn(p.shape, generator=g, dtype=p.dtype), m, v, *mats, step=t, **hp)
    assert (a[0] - b[0]).abs().max() > 1e-4


# ------------------------------------------------------------------ matrices
def test_soap_matches_pytorch_optimizer_on_matrices():
    """pytorch-optimizer's SOAP on 2-D tensors (it skips the first step of 1-D ones too; descent runs Adam there).

    It takes eigenvectors and QR in float32 (as the authors' code) also for float64
    parameters, descent in the parameter's precision: ~1e-8 apart after 20 steps.
    """
    po = pytest.importorskip("pytorch_optimizer")
    a, b = _pair(((6, 5), (4, 3), (1,)))
    ours, peer = descent.SOAP(a, **KW), po.SOAP(b, **KW)
    _simple_run(ours, a, steps=20)
    _simple_run(peer, b, steps=20)
    for pa, pb in zip(a, b):
        _close(pa.detach(), pb.detach(), 1e-6)


def test_soap_sides_above_max_precond_dim_match_pytorch_optimizer():
    """A side longer than the limit gets no preconditioner (the identity), as in the authors' code and
    pytorch-optimizer's ``max_precondition_dim``: rows over it, columns over it (limit 5 here)."""
    po = pytest.importorskip("pytorch_optimizer")
    a, b = _pair(((9, 4), (3, 8), (5, 5), (2, 6, 3), (1,)))
    ours, peer = descent.SOAP(a, max_precond_dim=5, **KW), po.SOAP(b, max_precondition_dim=5, **KW)
    _simple_run(ours, a, steps=20)
    _simple_run(peer, b, steps=20)
    assert [sorted(k for k in ours.state[p] if k.startswith("q_")) for p in a[:4]] == [
        ["q_right"], ["q_left"], ["q_left", "q_right"], ["q_0", "q_2"]]
    for pa, pb in zip(a, b):
        _close(pa.detach(), pb.detach(), 1e-6)


def test_soap_bases_are_the_statistics_eigenvectors_and_large_sides_are_not_rotated():
    w = torch.nn.Parameter(torch.randn(6, 20, dtype=torch.float64))
    opt = descent.SOAP([w], max_precond_dim=10, precondition_frequency=1000)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        w.grad = torch.randn(6, 20, generator=g, dtype=torch.float64)
        opt.step()
    st = opt.state[w]
    assert "q_right" not in st and st["q_left"].shape == (6, 6)
    # Q_L diagonalizes the statistics it was taken from (at the first step) and is orthogonal
    q = st["q_left"]
    torch.testing.assert_close(q.T @ q, torch.eye(6, dtype=torch.float64), atol=1e-12, rtol=0)


# ------------------------------------------------------------------ checkpoints
def test_soap_per_dimension_state_round_trips_through_torch_load_weights_only():
    """Plain tensors per key (gg_k, q_k): a checkpoint taken at step 5 (weights_only) continues exactly."""
    a, b = _pair(SHAPES)
    full = descent.SOAP(_groups(a, True), **KW)
    _simple_run(full, a, steps=10)
    first = descent.SOAP(_groups(b, True), **KW)
    _simple_run(first, b, steps=5)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = descent.SOAP(_groups(b, True), **KW)
    second.load_state_dict(torch.load(buf, weights_only=True))
    assert sorted(k for k in second.state[b[0]] if k.startswith("gg_")) == ["gg_0", "gg_1", "gg_2"]
    g = torch.Generator().manual_seed(1)
    for _ in range(5):  # the generator's first 5 draws, as _simple_run's first 5 steps
        for p in b[:-1]:
            torch.randn(p.shape, generator=g, dtype=p.dtype)
    for _ in range(5):
        for p in b[:-1]:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        second.step()
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)


def test_soap_old_matrix_view_checkpoint_and_changed_options_raise():
    """A state of the earlier ``(shape[0], prod(rest))`` layout of a conv kernel is refused by name, not mis-read."""
    w = torch.nn.Parameter(torch.randn(4, 3, 2, 2))
    opt = descent.SOAP([w])
    w.grad = torch.randn_like(w)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())  # state_dict() shares the state's dicts
    st = sd["state"][0]
    for k in [k for k in st if k[:3] == "gg_" or k[:2] == "q_"]:
        del st[k]
    st.update(gg_left=torch.zeros(4, 4), q_left=torch.zeros(4, 4), gg_right=torch.zeros(12, 12),
              q_right=torch.zeros(12, 12))
    with pytest.raises(ValueError, match=r"\(shape\[0\], prod\(rest\)\) matrix layout of an earlier descent"):
        descent.SOAP([w]).load_state_dict(sd)
    opt.param_groups[0]["merge_dims"] = True  # the bases exist: merging now would mis-read them
    with pytest.raises(ValueError, match="merge_dims=True"):
        opt.step()
    with pytest.raises(ValueError, match="Invalid merge_dims: 1"):
        descent.SOAP([w], merge_dims=1)
