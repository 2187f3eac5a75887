"""The declaration, the registry and the shared loop's contracts (issue 11 and the optimizer side of 18)."""

from __future__ import annotations

import copy

import pytest
import torch

import descent
from descent.optim import registry
from descent.optim._base import run_declaration
from descent.optim._spec import Declaration, Kernel, Meta, zeros


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 2))


def test_every_registered_class_is_exported_and_declared():
    names = descent.list_optimizers()
    assert {"sgd", "adamw", "lion", "lamb", "adafactor", "sophiag", "muon", "shampoo", "kfac", "lbfgs"} <= set(names)
    for name in names:
        entry = registry.optimizer_info(name)
        assert getattr(descent, entry.cls.__name__) is entry.cls
        assert entry.meta.state_bytes >= 0 and entry.meta.paper
        assert entry.meta.kind in ("elementwise", "matrix", "quasi-newton")


def test_create_optimizer_by_name_class_and_preset():
    model = _model()
    opt = descent.create_optimizer("lion", model, lr=1e-4, weight_decay=0.1)
    assert type(opt) is descent.Lion and [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    sgd = descent.create_optimizer("sgd", model, lr=0.1)  # timm's "sgd": Nesterov momentum
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9
    plain = descent.create_optimizer(descent.SGD, model.parameters(), lr=0.1)
    assert plain.param_groups[0]["momentum"] == 0
    default = descent.create_optimizer("adamw", model, task_kind="language")
    assert default.param_groups[0]["lr"] == registry.default_lr("adamw", "language")
    muon = descent.create_optimizer("muon", model, lr=0.02)
    assert {g["use_muon"] for g in muon.param_groups} == {True, False}
    with pytest.raises(ValueError, match="Invalid optimizer: 'nope'"):
        descent.create_optimizer("nope", model)
    with pytest.raises(ValueError, match="Invalid task kind"):
        registry.default_lr("adamw", "vision")


def test_audit_reads_adaptivity_from_the_declaration():
    assert registry.is_adaptive(descent.Lion) and registry.is_adaptive("adamw")
    assert not registry.is_adaptive(descent.SGD) and not registry.is_adaptive(torch.optim.SGD([torch.zeros(1)]))
    assert registry.is_adaptive(torch.optim.Adam([torch.zeros(1, requires_grad=True)]))


def test_kernel_signature_is_checked_against_the_declaration():
    decl = Declaration(functional=lambda p, g, m, **hp: None, hyper=lambda g: {"lr": g["lr"], "beta": 0.9},
                       columns=("exp_avg",), state={"exp_avg": zeros}, meta=Meta("toy", False, 4.0, "none"))
    kernel = Kernel("descent.kernels.launch:lion", lambda d, t: True, steps=None)
    with pytest.raises(TypeError, match="missing.*'beta'"):
        kernel.check(decl, decl.hyper({"lr": 0.1}))


def test_options_switched_on_mid_run_get_their_state():
    model = _model()
    opt = descent.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    assert "max_exp_avg_sq" not in opt.state[model[0].weight]
    opt.param_groups[0]["amsgrad"] = True
    opt.step()
    assert "max_exp_avg_sq" in opt.state[model[0].weight]


def test_run_declaration_steps_a_part_of_another_optimizer():
    """Muon's auxiliary AdamW runs through the same loop (no unbound calls into Adam)."""
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    twin = torch.nn.Parameter(torch.ones(3))
    twin.grad = torch.ones(3)
    ref = descent.AdamW([twin], lr=0.1, backend="loop")
    ref.step()
    group = dict(ref.param_groups[0])
    state = descent.AdamW.declaration.init_state(p, group)
    with torch.no_grad():
        run_declaration(descent.AdamW.declaration, "loop", group, [p], [p.grad], [state])
    assert torch.equal(p, twin) and int(state["step"]) == 1


@pytest.mark.parametrize("name", ["adamw", "sgd", "adagrad", "lion"])
def test_grad_scaler_protocol(name):
    """Adam/AdamW/SGD/Adagrad take GradScaler's scale into torch's fused kernel (no separate unscale
    pass); the others say they do not, and GradScaler unscales for them. Both equal an unscaled run."""
    m1 = _model()
    m2 = copy.deepcopy(m1)
    o1, o2 = descent.create_optimizer(name, m1, lr=1e-2), descent.create_optimizer(name, m2, lr=1e-2)
    assert o1._step_supports_amp_scaling == (name != "lion")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(8, 6)
    for _ in range(3):
        o1.zero_grad()
        scaler.scale(m1(x).pow(2).mean()).backward()
        scaler.step(o1)
        scaler.update()
        o2.zero_grad()
        m2(x).pow(2).mean().backward()
        o2.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_grad_scaler_inf_skips_the_step():
    m = torch.nn.Linear(3, 1)
    opt, scaler = descent.AdamW(m.parameters()), torch.amp.GradScaler("cpu", init_scale=8.0)
    before = m.weight.detach().clone()
    scaler.scale(m(torch.tensor([[float("inf"), 1.0, 1.0]])).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(before, m.weight.detach()) and scaler.get_scale() == 4.0 and not opt.state


def test_a_tensor_is_not_an_iterable_of_params():
    with pytest.raises(TypeError, match="iterable of Tensors or dicts"):
        descent.SGD(torch.randn(3, requires_grad=True), lr=1e-3)


def test_grad_scaler_scale_reaches_the_fused_kernel(monkeypatch):
    """AdamW's default bucket gets GradScaler's scale inside torch's fused kernel: no separate unscale."""
    from descent.kernels import launch

    seen = []
    real = launch.adam_fused

    def spy(*args, **kwargs):
        seen.append(kwargs.get("grad_scale"))
        return real(*args, **kwargs)

    monkeypatch.setattr(launch, "adam_fused", spy)
    from descent.optim import _run, _spec

    monkeypatch.setattr(_run, "_CHECKED", {})  # launchers are resolved once and cached
    monkeypatch.setattr(_spec, "_RESOLVED", {})
    m = torch.nn.Linear(4, 2)
    opt, scaler = descent.AdamW(m.parameters()), torch.amp.GradScaler("cpu", init_scale=16.0)
    scaler.scale(m(torch.randn(3, 4)).sum()).backward()
    scaler.step(opt)
    assert seen and all(s is not None and float(s) == 16.0 for s in seen)


def _cautious_ref(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    mask = (u * g > 0).to(u.dtype)
    return u * mask * (mask.numel() / (mask.sum() + 1))


@pytest.mark.parametrize("name", ["sgd", "adamw", "lion"])
def test_cautious_is_an_option_of_the_momentum_optimizers(name):
    """cautious=True equals a float64 reference of the paper's rule; the kernels are bypassed."""
    torch.manual_seed(3)
    p0, grads = torch.randn(7, 5, dtype=torch.float64), [torch.randn(7, 5, dtype=torch.float64) for _ in range(4)]
    p = torch.nn.Parameter(p0.clone())
    kw = dict(lr=0.05, cautious=True)
    opt = {"sgd": lambda: descent.SGD([p], momentum=0.9, **kw), "adamw": lambda: descent.AdamW([p], **kw),
           "lion": lambda: descent.Lion([p], **kw)}[name]()
    ref, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for t, g in enumerate(grads, 1):
        p.grad = g.clone()
        opt.step()
        if name == "sgd":
            m = g.clone() if t == 1 else 0.9 * m + g
            ref -= 0.05 * _cautious_ref(m, g)
        elif name == "adamw":
            ref *= 1 - 0.05 * 0.01
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            u = (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
            ref -= 0.05 * _cautious_ref(u, g)
        else:
            ref -= 0.05 * _cautious_ref((0.9 * m + 0.1 * g).sign(), g)
            m = 0.99 * m + 0.01 * g
    torch.testing.assert_close(p.detach(), ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="cautious=True with state_bits=8"):
        descent.AdamW([torch.nn.Parameter(torch.zeros(64, 64))], cautious=True, state_bits=8)


def test_mixed_precision_records_a_skip_under_the_group_that_caused_it():
    """The non-finite parameter is named in its own group (it was always recorded under group 0)."""
    from descent.stability.amp import MixedPrecision

    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    opt = torch.optim.SGD([{"params": a.parameters()}, {"params": b.parameters()}], lr=0.1)
    mp = MixedPrecision(opt, "fp16", device_type="cpu", max_norm=1.0)
    mp.backward(b(a(torch.randn(4, 3))).sum())
    b.weight.grad[0, 0] = float("inf")
    report = mp.step()
    assert not report.stepped
    assert opt.param_groups[0]["nonfinite_params"] == []
    assert opt.param_groups[1]["nonfinite_params"] == ["param_groups[1]['params'][0]"]
