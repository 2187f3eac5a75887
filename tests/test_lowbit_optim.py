"""state_bits and stochastic_rounding as options of AdamW/Adam/Lion/SGD: kernel vs reference path,
exact resume through torch.save/weights_only and torch.distributed.checkpoint, memory, errors."""

from __future__ import annotations

import copy

import pytest
import torch

import descent
import descent.lowbit.optim as LO

pytest.importorskip("numba")


def _model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Tanh(), torch.nn.Linear(96, 10)).to(dtype)


def _run(model, opt, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 64, generator=gen).to(next(model.parameters()).dtype)
        y = torch.randint(0, 10, (32,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()


CASES = {
    "adamw8": lambda ps: descent.AdamW(ps, lr=1e-2, weight_decay=0.1, state_bits=8),
    "adamw4": lambda ps: descent.AdamW(ps, lr=1e-2, weight_decay=0.1, state_bits=4),
    "adam8": lambda ps: descent.Adam(ps, lr=1e-2, state_bits=8),
    "lion8": lambda ps: descent.Lion8bit(ps, lr=1e-3, weight_decay=0.1),
    "sgd8": lambda ps: descent.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, state_bits=8),
    "adamw8bit": lambda ps: descent.AdamW8bit(ps, lr=1e-2),
}


def test_quantized_only_large_tensors():
    model = _model()
    opt = CASES["adamw8"](model.parameters())
    _run(model, opt, 1)
    w, b = model[0].weight, model[0].bias  # 6144 and 96 elements
    assert opt.state[w]["exp_avg"].dtype == torch.uint8 and opt.state[w]["exp_avg_absmax"].numel() == 24
    assert opt.state[b]["exp_avg"].dtype == torch.float32 and "exp_avg_absmax" not in opt.state[b]
    assert opt.state[w]["exp_avg_qmap"] is opt.state[model[2].weight]["exp_avg_qmap"] if model[2].weight.numel() >= 4096 \
        else True


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_path_equals_reference_path(name, monkeypatch):
    """The Numba path and the dequantize/functional/quantize path give the same states and
    parameters equal to a few ulps (the kernels' sqrt/division may differ in the last bit)."""
    m1, m2 = _model(), _model()
    o1, o2 = CASES[name](m1.parameters()), CASES[name](m2.parameters())
    _run(m1, o1, 5)
    monkeypatch.setattr(LO, "_kernel_ok", lambda p, g: False)
    _run(m2, o2, 5)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)
        s1, s2 = o1.state[p1], o2.state[p2]
        assert s1.keys() == s2.keys()
        for k in s1:
            if s1[k].dtype == torch.uint8:
                same = (s1[k] == s2[k]).float().mean().item()
                assert same > 0.99, (k, same)


def test_small_tensors_match_fp32_optimizer_exactly():
    """With the same gradients, a tensor below 4096 elements steps exactly as with state_bits=32."""
    gen = torch.Generator().manual_seed(0)
    p1 = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in (100, 8192)]
    p2 = [torch.nn.Parameter(p.detach().clone()) for p in p1]
    o1 = descent.AdamW(p1, lr=1e-2, state_bits=8)
    o2 = descent.AdamW(p2, lr=1e-2)
    for _ in range(3):
        for a, b in zip(p1, p2):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        o1.step()
        o2.step()
    assert torch.equal(p1[0], p2[0]) and not torch.equal(p1[1], p2[1])


@pytest.mark.parametrize("name", ["adamw8", "adamw4", "lion8", "sgd8"])
def test_exact_resume_through_weights_only_load(name, tmp_path):
    ref_model = _model()
    ref = CASES[name](ref_model.parameters())
    _run(ref_model, ref, 3)
    torch.save({"model": ref_model.state_dict(), "opt": ref.state_dict()}, tmp_path / "ckpt.pt")
    _run(ref_model, ref, 3, seed=2)

    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model = _model(seed=5)
    model.load_state_dict(ckpt["model"])
    opt = CASES[name](model.parameters())
    opt.load_state_dict(ckpt["opt"])
    codes = [v for s in opt.state.values() for k, v in s.items() if k + "_absmax" in s]
    assert codes and all(c.dtype == torch.uint8 for c in codes), "torch's load must not cast the codes"
    _run(model, opt, 3, seed=2)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        for k in opt.state[p]:
            assert torch.equal(opt.state[p][k], ref.state[q][k]), k


def test_state_with_another_map_keeps_it_beside_default_maps(monkeypatch):
    """A 4-bit state saved with earlier maps (the linear second-moment map 1/16..1; the normal-float
    first-moment map of commit 13e44bd) loads, keeps those maps, and is stepped with them while the
    other parameters use the square and dynamic maps: the kernel call is split by map, and the
    kernel and reference paths agree."""
    from descent.lowbit import linear_map
    from descent.lowbit.maps import normal_map
    from descent.lowbit.quant import quantize

    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(8192, generator=gen) for _ in range(2)]
    grads = [[torch.randn(8192, generator=gen) for _ in range(2)] for _ in range(3)]
    results = []
    for kernel in (True, False):
        if not kernel:
            monkeypatch.setattr(LO, "_kernel_ok", lambda p, g: False)
        ps = [torch.nn.Parameter(t.clone()) for t in init]
        opt = descent.AdamW(ps, lr=1e-2, state_bits=4)
        for p, g in zip(ps, grads[0]):
            p.grad = g.clone()
        opt.step()
        sd = copy.deepcopy(opt.state_dict())
        old = sd["state"][0]  # rewrite parameter 0's second moment in the old format
        v = LO.QuantState.from_entries(old, "exp_avg_sq", 8192).dequantize()
        old["exp_avg_sq"], old["exp_avg_sq_absmax"] = quantize(v, linear_map(4), 4)
        old["exp_avg_sq_qmap"] = linear_map(4)
        m = LO.QuantState.from_entries(old, "exp_avg", 8192).dequantize()
        old["exp_avg"], old["exp_avg_absmax"] = quantize(m, normal_map(), 4)
        old["exp_avg_qmap"] = normal_map()
        opt.load_state_dict(sd)
        for g_step in grads[1:]:
            for p, g in zip(ps, g_step):
                p.grad = g.clone()
            opt.step()
        assert torch.equal(opt.state[ps[0]]["exp_avg_sq_qmap"], linear_map(4))
        assert torch.equal(opt.state[ps[0]]["exp_avg_qmap"], normal_map())
        assert opt.state[ps[1]]["exp_avg_sq_qmap"] is LO.code_map(False, 4)
        assert opt.state[ps[1]]["exp_avg_qmap"] is LO.code_map(True, 4)
        results.append((ps, opt))
    (pk, ok), (pr, orf) = results
    for a, b in zip(pk, pr):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for key in ("exp_avg", "exp_avg_sq"):
            same = (ok.state[a][key] == orf.state[b][key]).float().mean().item()
            assert same > 0.99, (key, same)


def test_resume_into_bf16_keeps_absmax_float32():
    model = _model(dtype=torch.bfloat16)
    opt = descent.AdamW(model.parameters(), lr=1e-2, state_bits=8)
    _run(model, opt, 2)
    sd = copy.deepcopy(opt.state_dict())
    opt2 = descent.AdamW(model.parameters(), lr=1e-2, state_bits=8)
    opt2.load_state_dict(sd)
    s = opt2.state[model[0].weight]
    assert s["exp_avg_absmax"].dtype == torch.float32 and torch.equal(s["exp_avg_absmax"], sd["state"][0]["exp_avg_absmax"])


def test_distributed_checkpoint_roundtrip(tmp_path):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    ref_model = _model()
    ref = CASES["adamw8"](ref_model.parameters())
    _run(ref_model, ref, 2)
    dcp.save({"opt": ref.state_dict()}, checkpoint_id=str(tmp_path / "dcp"))
    saved_model = copy.deepcopy(ref_model.state_dict())
    _run(ref_model, ref, 2, seed=2)

    model = _model(seed=7)
    opt = CASES["adamw8"](model.parameters())
    _run(model, opt, 1, seed=9)  # state of the right shapes to load into
    target = {"opt": opt.state_dict()}
    dcp.load(target, checkpoint_id=str(tmp_path / "dcp"))
    model.load_state_dict(saved_model)
    opt.load_state_dict(target["opt"])
    _run(model, opt, 2, seed=2)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)


def _state_bytes(opt) -> float:
    seen, total = set(), 0
    for s in opt.state.values():
        for v in s.values():
            if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() not in seen:
                seen.add(v.untyped_storage().data_ptr())
                total += v.untyped_storage().nbytes()
    return total


@pytest.mark.parametrize("make,limit", [(lambda ps: descent.AdamW(ps, state_bits=8), 2.1),
                                        (lambda ps: descent.AdamW(ps, state_bits=4), 1.1),
                                        (lambda ps: descent.Lion(ps, state_bits=8), 1.05),
                                        (lambda ps: descent.SGD(ps, lr=0.1, momentum=0.9, state_bits=8), 1.05)])
def test_state_bytes_per_param(make, limit):
    p = torch.nn.Parameter(torch.zeros(1 << 20))
    opt = make([p])
    p.grad = torch.ones_like(p)
    opt.step()
    assert _state_bytes(opt) / p.numel() <= limit


def test_invalid_options():
    ps = _model().parameters()
    with pytest.raises(ValueError, match="Invalid state_bits: 16"):
        descent.AdamW(ps, state_bits=16)
    with pytest.raises(ValueError, match="amsgrad"):
        descent.Adam(_model().parameters(), amsgrad=True, state_bits=8)
    with pytest.raises(ValueError, match="stochastic_rounding"):
        descent.Lion(_model().parameters(), stochastic_rounding="yes")


def test_deepcopy_keeps_options():
    opt = descent.AdamW8bit(_model().parameters())
    assert copy.deepcopy(opt).param_groups[0]["state_bits"] == 8


# ------------------------------------------------------------------------- stochastic rounding
def test_stochastic_round_is_unbiased():
    x = torch.full((200_000,), 1.0 + 3 * 2**-10)  # 3/8 of a bf16 ulp above 1
    y = LO.stochastic_round_(torch.empty_like(x, dtype=torch.bfloat16), x).float()
    assert set(y.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(float(y.mean()) - float(x[0])) < 2e-4
    with pytest.raises(ValueError, match="bfloat16"):
        LO.stochastic_round_(torch.empty(2), torch.ones(2))


@pytest.mark.parametrize("make", [lambda ps, sr: descent.AdamW(ps, lr=1e-3, weight_decay=1.0, stochastic_rounding=sr),
                                  lambda ps, sr: descent.Lion(ps, lr=1e-3, weight_decay=1.0, stochastic_rounding=sr),
                                  lambda ps, sr: descent.SGD(ps, lr=1e-3, weight_decay=1.0,
                                                             stochastic_rounding=sr),
                                  pytest.param(lambda ps, sr: descent.AdamW(ps, lr=1e-3, weight_decay=1.0, state_bits=8,
                                                                            stochastic_rounding=sr),
                                               marks=pytest.mark.slow)])  # the reference path, 100 steps
def test_weight_decay_survives_on_bf16_with_stochastic_rounding(make):
    """Decay by (1 - 1e-3) per step is below half a bf16 ulp of 1: round-to-nearest never moves the
    weights; stochastic rounding decays them as float32 would (0.999**100 = 0.905)."""
    torch.manual_seed(0)
    results = {}
    for sr in (False, True):
        p = torch.nn.Parameter(torch.ones(8192, dtype=torch.bfloat16))
        opt = make([p], sr)
        for _ in range(100):
            p.grad = torch.zeros_like(p)
            opt.step()
        results[sr] = float(p.detach().float().mean())
    expected = 0.999**100
    assert results[False] == 1.0
    assert abs(results[True] - expected) < 0.01


# ---------------------------------------------------------------------------- Kahan summation
_KAHAN_CASES = {
    "sgd": (lambda ps, **kw: descent.SGD(ps, lr=1e-3, **kw), lambda ps: torch.optim.SGD(ps, lr=1e-3)),
    "adamw": (lambda ps, **kw: descent.AdamW(ps, lr=1e-3, weight_decay=0.1, **kw),
              lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.1)),
    "adamw 8-bit": (lambda ps, **kw: descent.AdamW(ps, lr=1e-3, weight_decay=0.1, state_bits=8, **kw), None),
}


def _bf16_run(make, kahan: bool, steps: int, n: int = 4096):
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter((1 + 0.25 * torch.rand(n, generator=gen)).to(torch.bfloat16))
    grads = [torch.randn(n, generator=gen) for _ in range(4)]
    opt = make([p], kahan_summation=kahan)
    for t in range(steps):
        p.grad = grads[t % 4].to(torch.bfloat16)
        opt.step()
    return p, opt, grads


@pytest.mark.parametrize("name", list(_KAHAN_CASES))
def test_kahan_summation_tracks_float64_master_weights(name):
    """lr 1e-3 updates are below half a bf16 ulp of weights in [1, 1.25] (2**-8): round-to-nearest
    loses them; with Kahan summation param + kahan_comp follows the float64 run (measured: 0.2 %
    (SGD), 1.3 % (AdamW, bf16 moments) of the distance moved) and the bf16 weight is the nearest
    bf16 to it."""
    make, torch_make = _KAHAN_CASES[name]
    steps = 100
    pk, ok, grads = _bf16_run(make, True, steps)
    pn, _, _ = _bf16_run(make, False, steps)
    # float64 reference: the same rule in float64 from the same bf16 start and bf16 gradients
    p64 = torch.nn.Parameter(_bf16_run(make, False, 0)[0].detach().double())
    ref = (torch_make or (lambda ps: descent.AdamW(ps, lr=1e-3, weight_decay=0.1)))([p64])
    for t in range(steps):
        p64.grad = grads[t % 4].to(torch.bfloat16).double()
        ref.step()
    w = p64.detach()
    comp = ok.state[pk]["kahan_comp"]
    assert comp.dtype == torch.bfloat16
    err_kahan = (pk.detach().double() - w).abs().max().item()
    err_master = (pk.detach().double() + comp.double() - w).abs().max().item()
    err_nearest = (pn.detach().double() - w).abs().max().item()
    moved = (w - p64.new_tensor(_bf16_run(make, False, 0)[0].detach().double())).abs().max().item()
    ulp = 2.0**-7  # bf16 spacing in [1, 2)
    assert err_nearest >= 0.9 * moved  # round-to-nearest drops (almost) every update
    # bf16 moments (and 8-bit states, which also move a float32 run by ~9 % of this) stay in
    # the compensated weight's error; rounding the weights themselves costs ~nothing
    assert err_master <= (0.1 if name == "adamw 8-bit" else 0.02) * moved
    assert err_kahan <= 0.5 * ulp + err_master + 1e-6  # the bf16 weight: nearest to param + comp


def test_kahan_summation_state_dict_round_trip(tmp_path):
    make = _KAHAN_CASES["adamw"][0]
    p, opt, grads = _bf16_run(make, True, 3)
    torch.save({"p": p.detach(), "opt": opt.state_dict()}, tmp_path / "k.pt")
    ckpt = torch.load(tmp_path / "k.pt", weights_only=True)
    q = torch.nn.Parameter(ckpt["p"].clone())
    opt2 = make([q], kahan_summation=True)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.state[q]["kahan_comp"].dtype == torch.bfloat16
    for t in range(3, 6):
        p.grad = grads[t % 4].to(torch.bfloat16)
        q.grad = p.grad.clone()
        opt.step()
        opt2.step()
    assert torch.equal(p, q) and torch.equal(opt.state[p]["kahan_comp"], opt2.state[q]["kahan_comp"])
    assert opt.state[p]["kahan_comp"].abs().max() > 0


def test_kahan_summation_invalid():
    with pytest.raises(ValueError, match="Invalid kahan_summation: 'yes'"):
        descent.AdamW(_model().parameters(), kahan_summation="yes")
    with pytest.raises(ValueError, match="kahan_summation=True with stochastic_rounding=True"):
        descent.Lion(_model().parameters(), kahan_summation=True, stochastic_rounding=True)


@pytest.mark.parametrize("make, key", [(lambda ps: descent.AdamW(ps, lr=1e-3, weight_decay=0.0, state_bits=4), "exp_avg"),
                                       (lambda ps: descent.Lion(ps, lr=1e-4, betas=(0.9, 0.9), state_bits=4),
                                        "exp_avg"),
                                       (lambda ps: descent.SGD(ps, lr=1e-4, momentum=0.9, dampening=0.9, state_bits=4),
                                        "momentum_buffer")], ids=["adamw", "lion", "sgd"])
@pytest.mark.parametrize("route", ["kernel", "reference"])
def test_4bit_momentum_decays_when_the_block_absmax_stays_put(make, key, route, monkeypatch):
    """A 4-bit first moment whose gradient stops must decay even where its block's absmax is fixed (one
    element with a constant gradient): the rounding thresholds change with the step number, not only
    with the absmax (without the step, 117 of 127 entries stuck at up to 0.66 of the absmax for good).
    Lion's and SGD's 4-bit states count steps for this (a ``step`` entry beside the codes)."""
    if route == "reference":
        monkeypatch.setattr(LO, "_kernel_ok", lambda p, g: False)
    p = torch.nn.Parameter(torch.zeros(4096))
    opt = make([p])
    for step in range(300):
        g = torch.zeros(4096)
        g.view(32, 128)[:, 0] = 1.0  # each block's absmax converges to 1 and stays there
        if step < 80:
            g.view(32, 128)[:, 1:] = torch.linspace(0.05, 0.5, 127)
        p.grad = g
        opt.step()
    assert float(opt.state[p]["step"]) == 300
    m = LO.QuantState.from_entries(opt.state[p], key, 4096).dequantize().view(32, 128)
    assert float(m[:, 0].min()) > 0.99
    assert float(m[:, 1:].abs().max()) < 1e-3, float(m[:, 1:].abs().max())  # 0.5 * 0.9**220 in exact arithmetic


def test_min_8bit_size_sets_which_tensors_are_quantized():
    """bitsandbytes' ``min_8bit_size``: tensors below it keep 32-bit state (default 4096); bad values refused."""
    for limit, bias_quantized, weight_quantized in ((None, False, True), (64, True, True), (10_000, False, False)):
        model = _model()
        opt = descent.AdamW8bit(model.parameters(), lr=1e-2, min_8bit_size=limit)
        _run(model, opt, 1)
        b, w = model[0].bias, model[0].weight  # 96 and 6144 elements
        assert ("exp_avg_absmax" in opt.state[b]) == bias_quantized, limit
        assert ("exp_avg_absmax" in opt.state[w]) == weight_quantized, limit
    model = _model()
    opt = descent.SGD(model.parameters(), lr=0.1, momentum=0.9, state_bits=8, min_8bit_size=0)  # lazy state too
    _run(model, opt, 2)
    assert all("momentum_buffer_absmax" in opt.state[p] for p in model.parameters())
    for bad in (-1, 1.5, True, "4096"):
        with pytest.raises(ValueError, match="Invalid min_8bit_size"):
            descent.Lion(_model().parameters(), state_bits=8, min_8bit_size=bad)
