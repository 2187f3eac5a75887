"""``stochastic_rounding`` and ``kahan_summation`` on every elementwise optimizer (descent.lowbit.rounding),
``state_bits`` validation, and the low-bit names users know from bitsandbytes / torchao.

The optimizers with low-bit states (Adam, AdamW, Lion, SGD) are tested in tests/test_lowbit_optim.py; here
every other elementwise optimizer that inherits :class:`descent.lowbit.rounding.RoundingMixin`, each against
its own float32 / float64 run (the master copy the bf16 weights should follow).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import descent

#: name -> constructor (params, **rounding options). Every per-step update is below half a bf16 ulp of the
#: weights (weight decay at 1 in the decay test; 1e-3-sized steps on weights in [1, 1.25] in the Kahan test).
CASES = {
    "adagrad": lambda ps, **kw: descent.Adagrad(ps, lr=1e-3, weight_decay=1.0, **kw),
    "rmsprop": lambda ps, **kw: descent.RMSprop(ps, lr=1e-4, weight_decay=1.0, **kw),
    "adopt": lambda ps, **kw: descent.ADOPT(ps, lr=1e-3, weight_decay=1.0, **kw),
    "ademamix": lambda ps, **kw: descent.AdEMAMix(ps, lr=1e-3, weight_decay=1.0, **kw),
    "mars": lambda ps, **kw: descent.MARS(ps, lr=1e-3, weight_decay=1.0, **kw),
    "sophiag": lambda ps, **kw: descent.SophiaG(ps, lr=1e-3, weight_decay=1.0, **kw),
    "schedulefree-sgd": lambda ps, **kw: descent.ScheduleFreeSGD(ps, lr=1e-3, weight_decay=1.0, **kw),
    "schedulefree-adamw": lambda ps, **kw: descent.ScheduleFreeAdamW(ps, lr=1e-3, weight_decay=1.0, **kw),
    "prodigy": lambda ps, **kw: _prodigy(ps, **kw),
    "lamb": lambda ps, **kw: descent.LAMB(ps, lr=1e-3, weight_decay=1.0, **kw),
    "adafactor": lambda ps, **kw: descent.Adafactor(ps, lr=1e-3, relative_step=False, weight_decay=1.0, **kw),
}


def _prodigy(ps, **kw):
    """Prodigy with its step size held near d0 = 3e-4 (d_coef 0.01, growth_rate 1): steps below half a bf16
    ulp. A float32 helper parameter whose gradient flips sign every step gives the estimate a denominator when
    the bf16 parameter's gradient is zero (the decay test checks that d stays d0 there)."""
    helper = torch.nn.Parameter(torch.ones(1))
    return descent.Prodigy([{"params": ps}, {"params": [helper], "weight_decay": 0.0}], lr=1.0, d0=3e-4, d_coef=0.01,
                           weight_decay=1.0, growth_rate=1.0, **kw)


def _run(name: str, p: torch.nn.Parameter, grads: list[torch.Tensor], steps: int, **kw):
    """``steps`` steps of CASES[name] on ``p`` (gradients cycled from ``grads``, cast to p's dtype)."""
    opt = CASES[name]([p], **kw)
    for t in range(steps):
        for group in opt.param_groups:
            for q in group["params"]:
                q.grad = grads[t % len(grads)].to(q.dtype) if q is p else torch.full_like(q, (-1.0) ** t)
        if name == "sophiag":
            opt.update_hessian()  # the GNB refresh of its docstring's loop, on the same gradient
        opt.step()
    return opt


@pytest.mark.parametrize("name", list(CASES))
def test_stochastic_rounding_decays_bf16_weights_as_float32_does(name):
    """Weight decay alone (zero gradients) moves weights at 1 by less than half a bf16 ulp per step:
    round-to-nearest never moves them; with stochastic rounding their mean follows the float32 run."""
    torch.manual_seed(0)
    zero = [torch.zeros(8192)]
    means = {}
    for label, dtype, kw in (("nearest", torch.bfloat16, {}), ("stochastic", torch.bfloat16,
                                                                {"stochastic_rounding": True}),
                             ("float32", torch.float32, {})):
        p = torch.nn.Parameter(torch.ones(8192, dtype=dtype))
        opt = _run(name, p, zero, 100, **kw)
        means[label] = float(p.detach().float().mean())
        if name == "prodigy":
            assert opt.param_groups[0]["d"] == 3e-4  # d pinned at d0: a decay of 3e-4 per step
    moved = 1.0 - means["float32"]
    assert means["nearest"] == 1.0
    assert moved > 0.01, means
    assert abs(means["stochastic"] - means["float32"]) < 0.1 * moved, means


def _start(n: int = 4096) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    w0 = (1 + 0.25 * torch.rand(n, generator=gen)).to(torch.bfloat16)
    return w0, [torch.randn(n, generator=gen).to(torch.bfloat16) for _ in range(4)]


@pytest.mark.parametrize("name", list(CASES))
def test_kahan_summation_tracks_the_float64_master_weights(name):
    """Updates below half a bf16 ulp of weights in [1, 1.25]: round-to-nearest loses (almost) all of them;
    with Kahan summation ``param + kahan_comp`` follows the float64 run of the same optimizer from the same
    bf16 start and bf16 gradients (up to what the bf16 moments cost), and the bf16 weight is the nearest
    bf16 to it."""
    w0, grads = _start()
    steps = 100
    pk, pn, p64 = (torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone()),
                   torch.nn.Parameter(w0.double()))
    ok = _run(name, pk, grads, steps, kahan_summation=True)
    _run(name, pn, grads, steps)
    _run(name, p64, grads, steps)
    w = p64.detach()
    comp = ok.state[pk]["kahan_comp"]
    assert comp.dtype == torch.bfloat16
    moved = (w - w0.double()).abs().max().item()
    err_master = (pk.detach().double() + comp.double() - w).abs().max().item()
    err_nearest = (pn.detach().double() - w).abs().max().item()
    err_kahan = (pk.detach().double() - w).abs().max().item()
    assert err_nearest >= 0.5 * moved, (err_nearest, moved)
    assert err_master <= 0.05 * moved, (err_master, moved)
    assert err_kahan <= 0.5 * 2.0**-7 + err_master + 1e-6


@pytest.mark.parametrize("name", list(CASES))
def test_kahan_state_dict_round_trip(name):
    w0, grads = _start(64)
    p = torch.nn.Parameter(w0.clone())
    opt = _run(name, p, grads, 3, kahan_summation=True)
    buf = io.BytesIO()
    torch.save({"p": p.detach(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    q = torch.nn.Parameter(ckpt["p"].clone())
    opt2 = CASES[name]([q], kahan_summation=True)
    for g1, g2 in zip(opt.param_groups, opt2.param_groups):  # Prodigy's float32 helper parameter
        for a, b in zip(g1["params"], g2["params"]):
            if a is not p:
                b.data.copy_(a.data)
    opt2.load_state_dict(ckpt["opt"])
    comps = [k for k in opt.state[p] if k.endswith("kahan_comp")]
    assert "kahan_comp" in comps and (name.startswith("schedulefree") == ("z_kahan_comp" in comps))
    for o, r in ((opt, p), (opt2, q)):  # three more steps on both (Prodigy's helper: its own gradient)
        for t in range(3, 6):
            for group in o.param_groups:
                for x in group["params"]:
                    x.grad = grads[t % 4].clone() if x is r else torch.full_like(x, (-1.0) ** t)
            if name == "sophiag":
                o.update_hessian()
            o.step()
    assert torch.equal(p, q)
    for k in comps:
        assert opt2.state[q][k].dtype == torch.bfloat16
        assert torch.equal(opt.state[p][k], opt2.state[q][k]), k
    assert opt.state[p]["kahan_comp"].abs().max() > 0


@pytest.mark.parametrize("name", list(CASES))
def test_rounding_options_are_validated(name):
    p = [torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))]
    with pytest.raises(ValueError, match="kahan_summation=True with stochastic_rounding=True"):
        CASES[name](p, stochastic_rounding=True, kahan_summation=True)
    with pytest.raises(ValueError, match="Invalid stochastic_rounding: 1"):
        CASES[name](p, stochastic_rounding=1)
    opt = CASES[name](p)
    groups = len(opt.param_groups)
    with pytest.raises(ValueError, match="Invalid kahan_summation: 'yes'"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "kahan_summation": "yes"})
    assert len(opt.param_groups) == groups


@pytest.mark.parametrize("cls", [descent.Adagrad, descent.RMSprop, descent.ADOPT, descent.AdEMAMix, descent.MARS,
                                 descent.SophiaG, descent.Prodigy, descent.ScheduleFreeSGD, descent.ScheduleFreeAdamW])
def test_state_bits_is_refused_where_there_is_no_low_bit_state(cls):
    p = torch.nn.Parameter(torch.ones(4))
    with pytest.raises(TypeError, match="state_bits"):
        cls([p], state_bits=8)
    opt = cls([p])
    with pytest.raises(ValueError, match="Invalid state_bits: 8 .*no low-bit state"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "state_bits": 8})


@pytest.mark.parametrize("bits", [8.0, True, "8", 16, None])
def test_state_bits_must_be_one_of_the_ints(bits):
    with pytest.raises(ValueError, match=f"Invalid state_bits: {bits!r}"):
        descent.AdamW([torch.nn.Parameter(torch.ones(4))], state_bits=bits)
    assert descent.AdamW([torch.nn.Parameter(torch.ones(4))], state_bits=np.int64(8)).defaults["state_bits"] == 8


def test_schedule_free_eval_train_keeps_the_compensated_weights():
    """A Kahan run's eval/train switch moves param + kahan_comp (from z + z_kahan_comp) in float32: the
    compensated y comes back to within the bf16 compensation's precision."""
    w0, grads = _start(256)
    p = torch.nn.Parameter(w0.clone())
    opt = _run("schedulefree-adamw", p, grads, 5, kahan_summation=True)
    before = p.detach().double() + opt.state[p]["kahan_comp"].double()
    opt.eval()
    opt.train()
    after = p.detach().double() + opt.state[p]["kahan_comp"].double()
    assert (after - before).abs().max().item() < 2.0**-7 * 2.0**-7  # a bf16 ulp of the compensation


ALIASES = {"adamw8bit": (descent.AdamW8bit, descent.AdamW, 8), "adam8bit": (descent.Adam8bit, descent.Adam, 8),
           "lion8bit": (descent.Lion8bit, descent.Lion, 8), "sgd8bit": (descent.SGD8bit, descent.SGD, 8),
           "adamw4bit": (descent.AdamW4bit, descent.AdamW, 4), "adam4bit": (descent.Adam4bit, descent.Adam, 4)}


@pytest.mark.parametrize("name", list(ALIASES))
def test_low_bit_aliases(name):
    cls, base, bits = ALIASES[name]
    assert issubclass(cls, base) and getattr(descent.optim, cls.__name__) is cls and cls.__name__ in descent.__all__
    model = torch.nn.Linear(64, 64).to(torch.bfloat16)  # bf16 on CPU: the reference path (no kernel to compile)
    opt = descent.create_optimizer(name, model, lr=1e-3)
    assert type(opt) is cls and opt.defaults["state_bits"] == bits
    model(torch.randn(2, 64, dtype=torch.bfloat16)).sum().backward()
    opt.step()
    key = "momentum_buffer" if name == "sgd8bit" else "exp_avg"
    assert opt.state[model.weight][key].dtype == torch.uint8  # 4096 elements: quantized
    assert name in descent.list_optimizers(aliases=True) and name not in descent.list_optimizers()


def test_sgd8bit_needs_momentum():
    ps = [torch.nn.Parameter(torch.ones(4))]
    with pytest.raises(ValueError, match="Invalid momentum: 0 "):
        descent.SGD8bit(ps, lr=0.1)
    opt = descent.SGD8bit(ps, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="Invalid momentum: 0.0"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "momentum": 0.0})
    assert descent.create_optimizer("sgd8bit", torch.nn.Linear(2, 2)).defaults["momentum"] == 0.9


def test_cli_trains_with_an_alias(tmp_path):
    from descent.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "--task", "linear", "--optimizer", "adamw8bit", "--steps", "2", "--eval-every", "0",
                 "--quiet", "--out", str(out)]) == 0
    assert "adamw8bit" in (out / "run.json").read_text()
