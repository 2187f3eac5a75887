"""The step's C-level fast paths (benchmarks/step_overhead.py) agree with the per-tensor code they skip."""

from __future__ import annotations

import itertools

import pytest
import torch

import descent
from descent import kernels as K
from descent.optim._base import _buckets


class _Sub(torch.Tensor):
    pass


def _cases() -> dict[str, torch.Tensor | None]:
    base = torch.zeros(4, 3)
    return {
        "plain": torch.zeros(4, 3),
        "param": torch.nn.Parameter(torch.zeros(4, 3)),
        "strided": base.t(),
        "empty": torch.zeros(0),
        "sparse": torch.eye(3).to_sparse(),
        "subclass": torch.zeros(4, 3).as_subclass(_Sub),
        "none": None,
    }


def _rowwise(*columns):
    ok = [i for i, row in enumerate(zip(*columns)) if K.kernel_ok(*row)]
    return ok, [i for i in range(len(columns[0])) if i not in ok]


def test_partition_agrees_with_kernel_ok_row_by_row():
    cases = _cases()
    good = [torch.zeros(2, 2), torch.nn.Parameter(torch.ones(3))]
    for bad, col in itertools.product(cases, range(3)):
        columns = [list(good) + [cases["plain"]] for _ in range(3)]
        columns[col][1] = cases[bad]
        assert K.partition(*columns) == _rowwise(*columns), (bad, col)
    all_good = [list(good), list(good), [None, good[0]]]
    assert K.partition(*all_good) == ([0, 1], [])


def test_addresses_with_and_without_missing_tensors():
    a, b, c = torch.zeros(3), torch.zeros(2), torch.zeros(5)
    out = K.addresses([a, b, c], [None, c, None], None)
    assert out.tolist() == [[a.data_ptr(), b.data_ptr(), c.data_ptr()], [0, c.data_ptr(), 0], [0, 0, 0]]


@pytest.mark.skipif(not K.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("bad", [torch.zeros((), dtype=torch.float64), torch.zeros(2), torch.zeros(()).as_subclass(_Sub)])
def test_advance_counters_refuses_and_leaves_every_counter(bad):
    from descent.kernels.multi import advance_counters

    steps = [torch.full((), 3.0), bad]
    before = [s.clone() for s in steps]
    assert advance_counters(steps) is None
    assert all(torch.equal(s, b) for s, b in zip(steps, before))
    assert advance_counters([torch.full((), 3.0), torch.full((1,), 5.0)]) == [4, 6]


def test_buckets_keep_the_order_of_first_appearance():
    ps = [torch.zeros(1), torch.zeros(1, dtype=torch.float64), torch.zeros(1), torch.zeros(1, dtype=torch.float16)]
    assert list(_buckets(ps).items()) == [((torch.device("cpu"), torch.float32), [0, 2]),
                                          ((torch.device("cpu"), torch.float64), [1]),
                                          ((torch.device("cpu"), torch.float16), [3])]
    assert _buckets(ps[:1] + ps[2:3]) == {(torch.device("cpu"), torch.float32): [0, 1]}


def test_states_fast_path_converts_a_loaded_step_as_the_per_parameter_path():
    ps = [torch.nn.Parameter(torch.ones(3)) for _ in range(3)]
    opt = descent.Adafactor(ps, lr=0.1, relative_step=False)
    for p in ps:
        p.grad = torch.ones(3)
    opt.step()
    opt.state[ps[1]]["step"] = torch.tensor(1.0, dtype=torch.float64)  # torch's for-loop layout, or older
    opt.state[ps[2]]["step"] = 1.0
    states = opt._states_of(ps, opt.param_groups[0], torch.device("cpu"))
    assert all(s["step"].dtype == torch.float32 and s["step"].item() == 1.0 for s in states)
    assert [s is opt.state[p] for s, p in zip(states, ps)] == [True] * 3
    new = torch.nn.Parameter(torch.ones(2, 2))
    opt.add_param_group({"params": [new]})
    assert sorted(opt._states_of([new], opt.param_groups[1], torch.device("cpu"))[0]) == ["col_var", "row_var", "step"]


def test_collect_skips_missing_grads_and_names_a_sparse_one():
    ps = [torch.nn.Parameter(torch.ones(3)) for _ in range(3)]
    opt = descent.AdamW(ps)
    ps[0].grad, ps[2].grad = torch.ones(3), torch.ones(3)
    (group, params, grads, index), = opt._collect()
    assert index == [0, 2] and params[1] is ps[2] and grads[0] is ps[0].grad
    ps[1].grad = torch.ones(3)
    assert opt._collect()[0][3] == [0, 1, 2]
    ps[1].grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt._collect()


@pytest.mark.skipif(not K.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("name, kw", [("AdamW", dict(lr=1e-2, weight_decay=0.1)),
                                      ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1, maximize=True)),
                                      ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1))])
def test_torch_fused_op_called_directly_equals_torch_fused(name, kw):
    """On CPU the launcher advances the counters itself and calls torch's op: bit for bit torch's fused=True."""
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (7,), (2, 3, 4)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_a = getattr(descent, name)(ours, **kw)
    opt_b = getattr(torch.optim, name)(theirs, fused=True, **kw)
    for _ in range(4):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        opt_a.step()
        opt_b.step()
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    for a, b in zip(ours, theirs):
        sa, sb = opt_a.state[a], opt_b.state[b]
        assert sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa), sorted(sa)
