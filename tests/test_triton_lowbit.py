"""The Triton kernels for 8- and 4-bit states against the Numba kernels and the torch reference,
run through Triton's interpreter on CPU (a child pytest with TRITON_INTERPRET=1, see interp_child)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("numba")

from interp_child import INTERPRETED, interp, run_interpreted  # noqa: E402

import descent  # noqa: E402
import descent.lowbit.optim as LO  # noqa: E402
from descent.kernels import lowbit as KN  # noqa: E402
from descent.lowbit import QuantState  # noqa: E402

if INTERPRETED:
    from descent.kernels.triton import _lowbit as KT  # noqa: E402


def test_interpreter_suite(request):
    """This file's ``interp`` tests in a TRITON_INTERPRET=1 child process."""
    run_interpreted(__file__, request)


SIZES = [4096, 5001, 4097, 300, 1, 0]  # whole blocks, a partial block, an odd byte count, tiny, empty


def _bucket(bits, n_states, seed=0, sizes=SIZES):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=g) for n in sizes]
    grads = [torch.randn(n, generator=g) for n in sizes]
    states = []
    for k in range(n_states):
        signed = k == 0
        states.append([QuantState.quantize(torch.randn(n, generator=g).abs().mul(0.01) if not signed
                                           else torch.randn(n, generator=g).mul(0.1), signed, bits, 3)
                       for n in sizes])
    return params, grads, states


def _columns(states):
    """The launcher's state arguments (codes, absmax, map per state), fresh copies."""
    out = []
    for col in states:
        out += [[s.codes.clone() for s in col], [s.absmax.clone() for s in col], [s.qmap for s in col]]
    return out


def _same(a_params, b_params, a_cols, b_cols):
    for x, y in zip(a_params, b_params):
        assert torch.equal(x, y)
    for ca, cb in zip(a_cols, b_cols):
        for x, y in zip(ca, cb):
            assert torch.equal(x, y)


@interp
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("adamw", [True, False])
def test_adam_equals_numba_bit_for_bit(bits, adamw):
    """Parameters, codes and absmax equal the Numba kernel's (which the reference path is tested against),
    4-bit stochastic codes included (same hashed thresholds)."""
    params, grads, states = _bucket(bits, 2)
    a, b = _columns(states), _columns(states)
    pa, pb = [p.clone() for p in params], [p.clone() for p in params]
    hp = dict(steps=[7] * len(params), lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
              decoupled_weight_decay=adamw, maximize=not adamw)
    KN.adam_lowbit(pa, grads, *a, **hp)
    KT.adam_lowbit(pb, grads, *b, **hp)
    assert not torch.equal(pb[0], params[0]) and not torch.equal(b[0][0], states[0][0].codes)
    _same(pa, pb, a, b)


@interp
@pytest.mark.parametrize("bits", [8, 4])
def test_lion_and_sgd_equal_numba_bit_for_bit(bits):
    params, grads, states = _bucket(bits, 1, seed=1)
    for name, hp in (("lion", dict(lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.01)),
                     ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, first=False)),
                     ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.1, first=True))):
        a, b = _columns(states), _columns(states)
        pa, pb = [p.clone() for p in params], [p.clone() for p in params]
        getattr(KN, name + "_lowbit")(pa, grads, *a, **hp)
        getattr(KT, name + "_lowbit")(pb, grads, *b, **hp)
        _same(pa, pb, a, b)


@interp
def test_two_hundred_tensor_bucket_and_steps_per_tensor():
    sizes = [1 + (37 * k) % 300 for k in range(200)]  # one program each (the interpreter is slow)
    params, grads, states = _bucket(4, 2, seed=2, sizes=sizes)
    a, b = _columns(states), _columns(states)
    pa, pb = [p.clone() for p in params], [p.clone() for p in params]
    hp = dict(steps=[1 + k % 5 for k in range(200)], lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8)
    KN.adam_lowbit(pa, grads, *a, **hp)
    KT.adam_lowbit(pb, grads, *b, **hp)
    _same(pa, pb, a, b)


def _model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Tanh(), torch.nn.Linear(96, 64)).to(dtype)


def _train(model, opt, steps=4):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 64, generator=gen).to(next(model.parameters()).dtype)
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()


@interp
@pytest.mark.parametrize("make", [lambda ps: descent.AdamW(ps, lr=1e-2, weight_decay=0.1, state_bits=4),
                                  lambda ps: descent.Lion8bit(ps, lr=1e-3),
                                  lambda ps: descent.SGD(ps, lr=0.05, momentum=0.9, state_bits=8)],
                         ids=["adamw4", "lion8", "sgd8"])
def test_bf16_optimizer_takes_triton_and_matches_the_reference(make, monkeypatch):
    """bf16 parameters (not the Numba kernels' dtype) take the Triton kernels (on CPU only under the
    interpreter); the torch reference path gives the same states and parameters within a bf16 ulp."""
    assert LO._route({}, torch.zeros(4, dtype=torch.bfloat16), torch.zeros(4, dtype=torch.bfloat16)) == "triton"
    assert LO._route({"stochastic_rounding": True}, torch.zeros(4, dtype=torch.bfloat16),
                     torch.zeros(4, dtype=torch.bfloat16)) == "reference"
    calls = []
    real = LO._launch
    monkeypatch.setattr(LO, "_launch", lambda *a, **k: (calls.append(a[-1]), real(*a, **k)))
    m1, m2 = _model(torch.bfloat16), _model(torch.bfloat16)
    o1, o2 = make(m1.parameters()), make(m2.parameters())
    _train(m1, o1)
    assert calls and set(calls) == {"triton"}
    monkeypatch.setattr(LO, "_triton_ok", lambda p, g, r: False)
    _train(m2, o2)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1.float(), p2.float(), rtol=8e-3, atol=1e-5)
        for k, v in o1.state[p1].items():
            if v.dtype == torch.uint8:
                assert (v == o2.state[p2][k]).float().mean() > 0.99, k


@interp
def test_bad_buckets_are_refused():
    params, grads, states = _bucket(8, 2, sizes=[4096])
    cols = _columns(states)
    hp = dict(steps=[1], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    bad = [c.float() for c in cols[0]]
    with pytest.raises(ValueError, match=r"exp_avg\[0\]: torch.float32"):
        KT.adam_lowbit(params, grads, bad, *cols[1:], **hp)
    with pytest.raises(ValueError, match=r"exp_avg_absmax\[0\]: .*3 elements.*need 16"):
        KT.adam_lowbit(params, grads, cols[0], [torch.zeros(3)], *cols[2:], **hp)
    with pytest.raises(ValueError, match="not contiguous"):
        KT.adam_lowbit([torch.zeros(4096, 2)[:, 0]], grads, *cols, **hp)
    with pytest.raises(ValueError, match="amsgrad"):
        KT.adam_lowbit(params, grads, *cols, amsgrad=True, **hp)
    KT.adam_lowbit([], [], [], [], [], [], [], [], steps=[], **{k: v for k, v in hp.items() if k != "steps"})


# ------------------------------------------------------------------ real GPU (compiled kernels)
_GPU_SCRIPT = textwrap.dedent("""
    import torch, descent
    torch.manual_seed(0)
    for make in (lambda ps: descent.AdamW(ps, lr=1e-2, weight_decay=0.1, state_bits=8),
                 lambda ps: descent.AdamW(ps, lr=1e-2, state_bits=4), lambda ps: descent.Lion8bit(ps, lr=1e-3)):
        cpu = torch.nn.Linear(300, 200)
        gpu = torch.nn.Linear(300, 200).cuda()
        gpu.load_state_dict(cpu.state_dict())
        oc, og = make(cpu.parameters()), make(gpu.parameters())
        for _ in range(3):
            x = torch.randn(8, 300)
            for m, o, d in ((cpu, oc, "cpu"), (gpu, og, "cuda")):
                o.zero_grad(); m(x.to(d)).pow(2).mean().backward(); o.step()
        for a, b in zip(cpu.parameters(), gpu.parameters()):  # Triton on CUDA = Numba on CPU, bit for bit
            assert torch.equal(a, b.cpu())
            for k, v in oc.state[a].items():
                assert torch.equal(v, og.state[b][k].cpu()), k
    print("ok")
""")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_lowbit_equals_cpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _GPU_SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
