"""``capturable=True``: step counters and hyperparameters on the device, no host sync in ``step``.

On CPU the Triton kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, a child
pytest started by :func:`test_interpreter_suite`, as in tests/test_triton_kernels.py), with
CPU tensors standing in for device tensors. Checked there, for every optimizer with a GPU
path: (a) a capturable step equals a non-capturable one bit for bit (launchers: float32;
optimizers: bfloat16 buckets, which only the Triton kernels take on CPU, so both runs use
them; Adam/AdamW/SGD: torch's fused kernels, float32); (b) the step reads nothing back to
the host (``Tensor.item``/``tolist``/``__bool__``/``__float__``/``__int__`` raise from any
code but Triton's interpreter); (c) the state_dict round trip with tensor steps. The CUDA-graph
capture test is marked ``gpu`` and skipped without CUDA.
"""

from __future__ import annotations

import copy
import io
import sys

import pytest
import torch

import descent

from interp_child import INTERPRETED, interp, run_interpreted  # noqa: E402

SHAPES = [(7, 3), (1,), (0,), (2500,), (5, 33)]  # odd sizes, one element, zero-size, two blocks

#: optimizer class, its keyword arguments (lr given separately) and lr.
TRITON_OPTIMIZERS = [
    (descent.Lion, dict(weight_decay=0.1), 1e-2),
    (descent.LAMB, dict(weight_decay=0.01), 1e-2),
    (descent.Adafactor, dict(relative_step=False, beta1=0.9, weight_decay=0.01), 1e-2),
    (descent.SophiaG, dict(weight_decay=0.1), 1e-2),
    (descent.RMSprop, dict(momentum=0.9, centered=True, weight_decay=0.1), 1e-3),
]
TORCH_OPTIMIZERS = [
    (descent.Adam, dict(weight_decay=0.1), 1e-2),
    (descent.AdamW, dict(amsgrad=True), 1e-2),
    (descent.SGD, dict(momentum=0.9, weight_decay=0.1), 1e-2),
]
_IDS = [c.__name__ for c, _, _ in TRITON_OPTIMIZERS + TORCH_OPTIMIZERS]


def test_interpreter_suite(request):
    """This file's ``interp`` tests in a child process under Triton's interpreter."""
    run_interpreted(__file__, request)


def _params(dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(device=device, dtype=dtype)) for s in SHAPES]


def _grads(params, k):
    g = torch.Generator().manual_seed(100 + k)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(device=p.device, dtype=p.dtype)


def _run(cls, kw, lr, dtype, capturable, steps=3, device="cpu"):
    params = _params(dtype, device)
    lr = torch.tensor(lr, dtype=torch.float64, device=device) if capturable else lr
    opt = cls(params, lr=lr, capturable=capturable, **kw)
    for k in range(steps):
        _grads(params, k)
        opt.step()
    return params, opt


class _HostSync(RuntimeError):
    pass


@pytest.fixture
def no_host_sync(monkeypatch):
    """Reading a tensor's value on the host raises, unless Triton's interpreter does it (it runs
    the kernels on the host; on a GPU that is the device)."""
    def guard(name):
        real = getattr(torch.Tensor, name)

        def patched(self, *args, **kwargs):
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_globals.get("__name__", "").startswith("triton"):
                    return real(self, *args, **kwargs)
                frame = frame.f_back
            raise _HostSync(f"host sync: Tensor.{name}")
        return patched

    def arm():
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
            monkeypatch.setattr(torch.Tensor, name, guard(name))
    return arm


# ------------------------------------------------------------------ (a) launchers, float32
@interp
def test_triton_launchers_capturable_equal_plain():
    """Each Triton launcher with device-made scalars, tensor hyperparameters and tensor steps
    equals the host-scalar, int-step launch bit for bit (float32 tensors; float64 hyperparameters,
    so both launches see the same numbers)."""
    from descent.kernels import triton as KT

    def t(v):  # float64, so the tensor holds the same number as the Python float
        return torch.tensor(v, dtype=torch.float64)

    g = torch.Generator().manual_seed(0)

    def bucket(roles, positive=()):
        return [[(torch.randn(s, generator=g).abs() + 0.5 if r in positive else torch.randn(s, generator=g))
                 for s in SHAPES] for r in range(roles)]

    def twice(fn, cols, plain, tensors):
        a = [[x.clone() for x in c] for c in cols]
        b = [[x.clone() for x in c] for c in cols]
        for k in (1, 2):
            fn(*a, **plain(k))
            fn(*b, **tensors(k), capturable=True)
        for ca, cb in zip(a, b):
            assert all(torch.equal(x, y) for x, y in zip(ca, cb)), fn.__name__
            assert all(x.isfinite().all() for x in ca), fn.__name__

    hp = dict(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1)
    thp = {k: t(v) for k, v in hp.items()}
    twice(KT.lion, bucket(3), lambda k: hp, lambda k: thp)
    hp = dict(lr=0.01, beta1=0.9, rho=0.04, bs=8.0, weight_decay=0.1)
    twice(KT.sophia, bucket(4, positive=(3,)), lambda k: hp, lambda k: {**hp, "lr": t(0.01), "weight_decay": t(0.1)})
    hp = dict(lr=0.01, alpha=0.9, momentum=0.9, centered=True, weight_decay=0.1)
    cols = bucket(5, positive=(2,))
    cols[3] = [x.mul(0.1) for x in cols[3]]  # grad_avg small against square_avg: a real centered variance
    twice(KT.rmsprop, cols, lambda k: hp, lambda k: {**hp, "lr": t(0.01), "alpha": t(0.9)})
    hp = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, clamp_value=10.0)
    n = len(SHAPES)
    twice(KT.lamb, bucket(4, positive=(3,)), lambda k: dict(hp, steps=[k] * n),
          lambda k: dict(hp, lr=t(0.01), weight_decay=t(0.01), beta1=t(0.9), steps=[t(float(k))] * n))


@interp
def test_triton_adafactor_launcher_capturable_equals_plain():
    from descent.kernels import triton as KT

    g = torch.Generator().manual_seed(1)
    fac = [len(s) >= 2 for s in SHAPES]

    def state():
        p = [torch.randn(s, generator=g) for s in SHAPES]
        rows = [torch.zeros(s[:-1] + (1,)) if f else None for s, f in zip(SHAPES, fac)]
        cols = [torch.zeros(s[:-2] + (1, s[-1])) if f else None for s, f in zip(SHAPES, fac)]
        var = [None if f else torch.zeros(s) for s, f in zip(SHAPES, fac)]
        return [p, [torch.randn(s, generator=g) for s in SHAPES], rows, cols, var, [torch.zeros(s) for s in SHAPES]]

    a = state()
    b = copy.deepcopy(a)
    hp = dict(relative_step=False, warmup_init=False, decay_rate=-0.8, eps1=1e-30, eps2=1e-3, clip_threshold=1.0,
              scale_parameter=True, maximize=False)
    for k in (1, 2):
        KT.adafactor(*a, steps=[k] * len(SHAPES), lr=0.01, beta1=0.9, weight_decay=0.01, **hp)
        KT.adafactor(*b, steps=[torch.tensor(float(k))] * len(SHAPES), lr=torch.tensor(0.01, dtype=torch.float64),
                     beta1=torch.tensor(0.9, dtype=torch.float64), weight_decay=torch.tensor(0.01, dtype=torch.float64),
                     capturable=True, **hp)
    for ca, cb in zip(a, b):
        assert all(x is None and y is None or torch.equal(x, y) for x, y in zip(ca, cb))


# ------------------------------------------------------------------ (a) + (b) optimizers
@interp
@pytest.mark.parametrize("cls, kw, lr", TRITON_OPTIMIZERS + TORCH_OPTIMIZERS, ids=_IDS)
def test_capturable_step_equals_plain_and_never_syncs(cls, kw, lr, no_host_sync):
    """Three steps with capturable=True (lr a float64 tensor) equal three plain steps bit for bit, and
    none of them reads a tensor on the host. bfloat16 puts the Triton optimizers on their Triton
    kernels in both runs (the Numba kernels take float32/float64 only)."""
    dtype = torch.bfloat16 if (cls, kw, lr) in TRITON_OPTIMIZERS else torch.float32
    want, _ = _run(cls, kw, lr, dtype, capturable=False)
    params = _params(dtype)
    opt = cls(params, lr=torch.tensor(lr, dtype=torch.float64), capturable=True, **kw)
    _grads(params, 0)
    opt.step()  # the first step makes the lazy state
    no_host_sync()
    for k in (1, 2):
        _grads(params, k)
        opt.step()
    for a, b in zip(params, want):
        assert torch.equal(a, b), (a - b).abs().max()
    steps = [s["step"] for s in opt.state.values() if "step" in s]
    assert all(isinstance(s, torch.Tensor) and s.dtype == torch.float32 and s.device.type == "cpu" for s in steps)
    assert all(s.equal(torch.tensor(3.0)) for s in steps)


@interp
def test_the_guard_catches_a_host_sync(no_host_sync, monkeypatch):
    """The no-sync check can fail: a non-capturable LAMB step reads its step counters (through torch,
    as for counters on a GPU: float32 CPU counters are advanced by a compiled loop that torch does
    not see, so that loop is switched off here)."""
    import descent.kernels.multi as multi

    monkeypatch.setattr(multi, "advance_counters", lambda steps: None)
    params = _params(torch.bfloat16)
    opt = descent.LAMB(params, lr=1e-2)
    _grads(params, 0)
    no_host_sync()
    with pytest.raises(_HostSync):
        opt.step()


# ------------------------------------------------------------------ (c) state_dict
@interp
@pytest.mark.parametrize("cls, kw, lr", TRITON_OPTIMIZERS + TORCH_OPTIMIZERS, ids=_IDS)
def test_state_dict_round_trip_with_tensor_steps(cls, kw, lr):
    """Save a capturable optimizer after 2 steps, load it (weights_only) into a fresh one over
    copies of the parameters; both continue 2 steps and agree bit for bit."""
    dtype = torch.bfloat16 if (cls, kw, lr) in TRITON_OPTIMIZERS else torch.float32
    params, opt = _run(cls, kw, lr, dtype, capturable=True, steps=2)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin = cls(twins, lr=torch.tensor(lr, dtype=torch.float64), capturable=True, **kw)
    twin.load_state_dict(torch.load(buf, weights_only=True))
    assert twin.param_groups[0]["capturable"] is True
    for k in (5, 6):
        for ps, o in ((params, opt), (twins, twin)):
            _grads(ps, k)
            o.step()
    for a, b in zip(params, twins):
        assert torch.equal(a, b)
    for p, q in zip(params, twins):
        for key, v in opt.state[p].items():
            assert torch.equal(v, twin.state[q][key]), key


# ------------------------------------------------------------------ no interpreter needed
def test_capturable_refuses_what_would_sync():
    p = [torch.nn.Parameter(torch.zeros(3))]
    for cls, kwargs in ((descent.Lion, dict(cautious=True)), (descent.Adam, dict(state_bits=8)),
                        (descent.LAMB, dict(skip_nonfinite=True))):
        key, value = next(iter(kwargs.items()))
        with pytest.raises(ValueError, match=f"Invalid capturable=True with {key}={value!r}: descent.{cls.__name__}"):
            cls(p, capturable=True, **kwargs)


def test_capturable_without_a_capturable_kernel_still_steps_on_cpu():
    """On CPU without the interpreter the Numba kernels run (the numbers are read on the host,
    which costs nothing there): same result as capturable=False."""
    if INTERPRETED:
        pytest.skip("the parent runs this one")
    for cls, kw, lr in TRITON_OPTIMIZERS:
        want, _ = _run(cls, kw, lr, torch.float32, capturable=False)
        got, _ = _run(cls, kw, lr, torch.float32, capturable=True)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), cls.__name__


# ------------------------------------------------------------------ CUDA graphs
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs a CUDA device")
@pytest.mark.parametrize("cls, kw, lr", TRITON_OPTIMIZERS + TORCH_OPTIMIZERS, ids=_IDS)
def test_cuda_graph_capture_of_a_step_equals_eager(cls, kw, lr):
    """torch.cuda.graph around optimizer.step: 3 warm-up steps, capture, 4 replays (new gradients
    copied into the static ones each time) equal 7 eager steps of a plain twin."""
    dev = torch.device("cuda")
    params = _params(torch.float32, dev)
    opt = cls(params, lr=torch.tensor(lr, device=dev), capturable=True, **kw)
    eager, _ = _run(cls, kw, lr, torch.float32, capturable=False, steps=7, device=dev)
    for p in params:
        p.grad = torch.zeros_like(p)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for k in range(3):
            _fill_grads(params, k)
            opt.step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for k in range(3, 7):
        _fill_grads(params, k)
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(params, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _fill_grads(params, k):
    """The gradients of step ``k`` copied into the (static) ``.grad`` tensors."""
    g = torch.Generator().manual_seed(100 + k)
    for p in params:
        p.grad.copy_(torch.randn(p.shape, generator=g).to(p.device))
