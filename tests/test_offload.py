"""descent.CPUOffloadOptimizer: the offloaded step equals the plain optimizer's, bit for bit on CPU
(AdamW, SGD-momentum, Lion; param groups; clipping; schedulers; gradient accumulation; bf16 params
with fp32 masters against a hand-written master-weights loop; state_dict resume), bad input, and
the asynchronous CUDA path (``gpu``-marked, skipped without a device)."""

from __future__ import annotations

import io

import pytest
import torch

import descent

STEPS = 20
MAKERS = {
    "adamw": dict(optimizer_class="adamw", lr=1e-2, weight_decay=0.1),
    "sgd-momentum": dict(optimizer_class=descent.SGD, lr=0.05, momentum=0.9, nesterov=True),
    "lion": dict(optimizer_class="lion", lr=1e-3, weight_decay=0.1),
}


def _model(seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    return model.to(device=device, dtype=dtype)


def _groups(model: torch.nn.Module) -> list[dict]:
    """Two groups: weights with weight decay and a larger lr, biases without."""
    ps = list(model.parameters())
    return [{"params": [p for p in ps if p.ndim == 2]}, {"params": [p for p in ps if p.ndim == 1], "weight_decay": 0.0}]


def _plain(model: torch.nn.Module, spec: dict) -> torch.optim.Optimizer:
    spec = dict(spec)
    cls = spec.pop("optimizer_class")
    cls = descent.optim.registry.get_optimizer(cls) if isinstance(cls, str) else cls
    return cls(_groups(model), **spec)


def _batch(step: int, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 16, generator=gen).to(device, dtype), torch.randint(0, 4, (8,), generator=gen).to(device)


def _backward(model: torch.nn.Module, step: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
    x, y = _batch(step, dtype, device)
    torch.nn.functional.cross_entropy(model(x).float(), y).backward()


def _assert_same(m1: torch.nn.Module, m2: torch.nn.Module) -> None:
    for (name, a), b in zip(m1.named_parameters(), m2.parameters()):
        assert torch.equal(a.detach().cpu(), b.detach().cpu()), f"{name}: max diff {(a.cpu() - b.cpu()).abs().max()}"


@pytest.mark.parametrize("offload_gradients", [False, True], ids=["grads-at-step", "grads-in-backward"])
@pytest.mark.parametrize("name", list(MAKERS))
def test_matches_plain_optimizer_bit_for_bit(name: str, offload_gradients: bool) -> None:
    m1, m2 = _model(), _model()
    spec = MAKERS[name]
    opt = descent.CPUOffloadOptimizer(_groups(m1), offload_gradients=offload_gradients, **spec)
    ref = _plain(m2, spec)
    for step in range(STEPS):
        for model, o in ((m1, opt), (m2, ref)):
            o.zero_grad()
            _backward(model, step)
            if model is m1:
                assert all((p.grad is None) == offload_gradients for p in m1.parameters())
            o.step()
    _assert_same(m1, m2)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert opt.state[p].keys() == ref.state[q].keys()
        assert all(torch.equal(opt.state[p][k], ref.state[q][k]) for k in ref.state[q])
    assert [g["params"] for g in opt.param_groups] == [g["params"] for g in _groups(m1)]


@pytest.mark.parametrize("offload_gradients", [False, True])
def test_clipping_equals_torch_clip_then_plain_step(offload_gradients: bool) -> None:
    m1, m2, m3 = _model(), _model(), _model()
    opt = descent.CPUOffloadOptimizer(m1.parameters(), "adamw", lr=1e-2, offload_gradients=offload_gradients)
    opt_opt = descent.CPUOffloadOptimizer(m3.parameters(), lr=1e-2, max_norm=1.1,
                                          offload_gradients=offload_gradients)  # the max_norm option
    ref = descent.AdamW(m2.parameters(), lr=1e-2)
    clipped = 0
    for step in range(STEPS):
        for model, o in ((m1, opt), (m2, ref), (m3, opt_opt)):
            o.zero_grad()
            _backward(model, step)
        norm = opt.clip_grad_norm_(1.1)
        want = torch.nn.utils.clip_grad_norm_(m2.parameters(), 1.1)
        assert torch.equal(norm.tensor, want), (float(norm), float(want))
        clipped += norm.clipped
        for o in (opt, ref, opt_opt):
            o.step()
    assert 0 < clipped < STEPS  # the threshold is crossed both ways
    _assert_same(m1, m2)
    _assert_same(m3, m2)


def test_lr_schedulers_drive_the_inner_groups() -> None:
    m1, m2 = _model(), _model()
    opt = descent.CPUOffloadOptimizer(_groups(m1), "adamw", lr=1e-2)
    ref = descent.AdamW(_groups(m2), lr=1e-2)
    s1 = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-2, total_steps=STEPS)
    s2 = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=3e-2, total_steps=STEPS)
    d1 = descent.attach(opt, descent.schedules.WarmupCosine(STEPS, warmup=0.2), hyperparam="weight_decay")
    d2 = descent.attach(ref, descent.schedules.WarmupCosine(STEPS, warmup=0.2), hyperparam="weight_decay")
    lrs = set()
    for step in range(STEPS):
        for model, o, s, d in ((m1, opt, s1, d1), (m2, ref, s2, d2)):
            o.zero_grad()
            _backward(model, step)
            o.step()
            s.step()
            d.step()
        assert opt.inner.param_groups[0]["lr"] == ref.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        assert opt.inner.param_groups[0]["weight_decay"] == ref.param_groups[0]["weight_decay"]
        lrs.add(opt.param_groups[0]["lr"])
    assert len(lrs) > 10
    _assert_same(m1, m2)


def test_gradient_accumulation_and_zero_grad() -> None:
    """Two backwards per step: with grads offloaded in the backward the second one is added on the host."""
    models = [_model() for _ in range(3)]
    opts = [descent.CPUOffloadOptimizer(models[0].parameters(), lr=1e-2, offload_gradients=True),
            descent.CPUOffloadOptimizer(models[1].parameters(), lr=1e-2),
            descent.AdamW(models[2].parameters(), lr=1e-2)]
    for step in range(6):
        for model, o in zip(models, opts):
            o.zero_grad(set_to_none=step % 2 == 0)
            _backward(model, 2 * step)
            _backward(model, 2 * step + 1)
            o.step()
    _assert_same(models[0], models[2])
    _assert_same(models[1], models[2])
    _backward(models[0], 99)
    opts[0].zero_grad()  # a gradient already on the host is dropped: the next step changes nothing
    before = [p.detach().clone() for p in models[0].parameters()]
    opts[0].step()
    assert all(torch.equal(a, b) for a, b in zip(before, models[0].parameters()))
    grads = [torch.randn(p.shape) for p in models[0].parameters()]
    for model, o in zip(models, opts):  # gradients set by hand (no backward, so no hook) are stepped too
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        o.step()
    _assert_same(models[0], models[2])


def test_bf16_params_with_fp32_masters() -> None:
    """Against a hand-written loop: fp32 masters stepped by AdamW on the bf16 model's gradients."""
    model = _model(dtype=torch.bfloat16)
    twin = _model(dtype=torch.bfloat16)
    masters = [torch.nn.Parameter(p.detach().float()) for p in _model(dtype=torch.bfloat16).parameters()]
    ref = descent.AdamW(masters, lr=1e-2, weight_decay=0.1)
    opt = descent.CPUOffloadOptimizer(model.parameters(), lr=1e-2, weight_decay=0.1, offload_gradients=True)
    for step in range(STEPS):
        opt.zero_grad()
        _backward(model, step, torch.bfloat16)
        twin.zero_grad()
        _backward(twin, step, torch.bfloat16)
        for m, p in zip(masters, twin.parameters()):
            m.grad = p.grad.float()
        ref.step()
        opt.step()
        with torch.no_grad():
            for m, p in zip(masters, twin.parameters()):
                p.copy_(m)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    _assert_same(model, twin)
    assert all(torch.equal(a, b) for a, b in zip(opt._masters, masters))  # the fp32 weights, not just bf16
    assert any(not torch.equal(m, m.bfloat16().float()) for m in opt._masters)  # precision the bf16 copy lacks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_resume_is_bit_exact(dtype: torch.dtype) -> None:
    model = _model(dtype=dtype)
    opt = descent.CPUOffloadOptimizer(model.parameters(), "adamw", lr=1e-2, state_bits=32)
    for step in range(4):
        opt.zero_grad(); _backward(model, step, dtype); opt.step()  # noqa: E702
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    for step in range(4, 8):
        opt.zero_grad(); _backward(model, step, dtype); opt.step()  # noqa: E702

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert (len(saved["opt"]["master_weights"]) > 0) == (dtype != torch.float32)
    model2 = _model(seed=9, dtype=dtype)
    model2.load_state_dict(saved["model"])  # the model first: fp32 masters are refreshed from it
    opt2 = descent.CPUOffloadOptimizer(model2.parameters(), "adamw", lr=1e-2)
    opt2.load_state_dict(saved["opt"])
    for step in range(4, 8):
        opt2.zero_grad(); _backward(model2, step, dtype); opt2.step()  # noqa: E702
    _assert_same(model, model2)
    assert all(torch.equal(a, b) for a, b in zip(opt._masters, opt2._masters))


def test_bad_input_names_the_value() -> None:
    ps = list(_model().parameters())
    with pytest.raises(ValueError, match="nonesuch"):
        descent.CPUOffloadOptimizer(ps, "nonesuch")
    with pytest.raises(TypeError, match="Invalid optimizer_class: 3"):
        descent.CPUOffloadOptimizer(ps, 3)
    with pytest.raises(ValueError, match="Muon needs the model"):
        descent.CPUOffloadOptimizer(ps, "muon")
    with pytest.raises(ValueError, match="Invalid max_norm: -1"):
        descent.CPUOffloadOptimizer(ps, max_norm=-1.0)
    with pytest.raises(ValueError, match="empty parameter list"):
        descent.CPUOffloadOptimizer([])
    with pytest.raises(ValueError, match="given twice"):
        descent.CPUOffloadOptimizer([ps[0], ps[0]])
    with pytest.raises(ValueError, match="torch.int64"):
        descent.CPUOffloadOptimizer([torch.zeros(3, dtype=torch.long)])
    with pytest.raises(ValueError, match="Invalid learning rate: -0.1|Invalid lr: -0.1"):
        descent.CPUOffloadOptimizer(ps, lr=-0.1)
    opt = descent.CPUOffloadOptimizer(ps)
    with pytest.raises(ValueError, match="master_weights for parameter 7"):
        opt.load_state_dict({**opt.state_dict(), "master_weights": {7: torch.zeros(1)}})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_async_path_matches_host_reference(dtype: torch.dtype) -> None:
    """On a device: pinned buffers, side-stream copies, the next forward sees the new weights without a
    host sync, no optimizer state on the device; the result equals the same step on host copies."""
    model = _model(dtype=dtype, device="cuda")
    opt = descent.CPUOffloadOptimizer(model.parameters(), lr=1e-2, weight_decay=0.1, offload_gradients=True,
                                      max_norm=1.0)
    masters = [torch.nn.Parameter(p.detach().float().cpu()) for p in model.parameters()]
    ref = descent.AdamW(masters, lr=1e-2, weight_decay=0.1)
    assert all(m.is_pinned() for m in opt._masters)
    for step in range(STEPS):
        x, y = _batch(step, dtype, "cuda")
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)  # reads the weights sent by the last step
        grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
        for m, g in zip(masters, grads):
            m.grad = g.float().cpu()
        torch.nn.utils.clip_grad_norm_(masters, 1.0)
        ref.step()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.parameters())
        opt.step()
    torch.cuda.synchronize()
    for p, m in zip(model.parameters(), masters):
        assert torch.equal(p.detach().cpu(), m.detach().to(dtype))
    assert all(v.device.type == "cpu" for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))


def test_grad_scaler_with_grads_at_step() -> None:
    m1, m2 = _model(), _model()
    opt, ref = descent.CPUOffloadOptimizer(m1.parameters(), lr=1e-2), descent.AdamW(m2.parameters(), lr=1e-2)
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in range(2)]
    for step in range(5):
        for model, o, s in ((m1, opt, scalers[0]), (m2, ref, scalers[1])):
            o.zero_grad()
            x, y = _batch(step)
            s.scale(torch.nn.functional.cross_entropy(model(x), y)).backward()
            s.step(o)
            s.update()
    _assert_same(m1, m2)
    assert not torch.equal(m1[0].weight, _model()[0].weight)
