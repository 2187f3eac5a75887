"""torch.compile(opt.step): one compile for a whole model, no recompile when a schedule changes lr.

Every registered optimizer whose class is ``compile_friendly`` runs 20 steps of a cosine
schedule compiled (dynamo with the "eager" backend: the recompile counting is dynamo's and
inductor's code generation is slow on a small CPU machine) and uncompiled; the compiled
step must compile a small constant number of graphs (one, plus one when the schedule first
changes lr and the step number, plus at most two for ADOPT's first-step branch or Muon's
two parts) and give the same numbers. The others must say why in their docstring.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import descent
from descent.optim.registry import get_optimizer

#: Graphs one compiled run may compile (see the module docstring).
MAX_GRAPHS = 4
STEPS = 20
#: Constructor settings a name needs to take a scheduled lr.
SETTINGS = {"adafactor": {"relative_step": False}}

FRIENDLY = [n for n in descent.list_optimizers() if getattr(get_optimizer(n), "compile_friendly", False)]
#: The ones run on every test run; the rest are marked slow (they still run in CI).
FAST = {"adamw", "adafactor"}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)).double()


def _run(name: str, compiled: bool, compiler: str = "eager", steps: int = STEPS, **kw):
    model = _model()
    opt = descent.create_optimizer(name, model, lr=1e-3, **{**SETTINGS.get(name, {}), **kw})
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    counter = CompileCounter() if compiler == "eager" else None
    step = torch.compile(opt.step, backend=counter or compiler) if compiled else opt.step
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 8, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        step()
        sched.step()
    return model, opt, counter


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in FRIENDLY])
def test_compiles_once_and_matches_eager(name: str) -> None:
    compiled, opt, counter = _run(name, compiled=True)
    eager, _, _ = _run(name, compiled=False)
    assert 1 <= counter.frame_count <= MAX_GRAPHS, f"{name}: {counter.frame_count} graphs in {STEPS} steps"
    assert counter.op_count > 0
    assert opt.param_groups[0]["lr"] != 1e-3  # the schedule did change lr
    assert not any(descent.optim._compile._NEXT_STEP in s for s in opt.state.values())  # no key left behind
    _assert_same(compiled, eager)


def test_more_steps_compile_nothing_new() -> None:
    """After a few steps, 36 more steps with a new lr, betas and weight decay each compile nothing."""
    model = _model()
    opt = descent.AdamW(model.parameters(), lr=1e-3)
    counter = CompileCounter()
    step = torch.compile(opt.step, backend=counter)
    for i in range(42):
        opt.zero_grad()
        model(torch.randn(4, 8, dtype=torch.float64)).pow(2).mean().backward()
        step()
        opt.param_groups[0]["lr"] = 1e-3 / (i + 2)
        opt.param_groups[0]["betas"] = (0.9 - i / 1000, 0.999 - i / 10000)
        opt.param_groups[0]["weight_decay"] = 0.01 + i / 1000
        if i == 5:
            warm = counter.frame_count
    assert counter.frame_count == warm <= 2 * MAX_GRAPHS


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adamw", "lion"])
def test_requested_backends_compile(name: str) -> None:
    """foreach=True (which failed under torch.compile), the loop and the fused request all trace."""
    for kw in ({"foreach": True}, {"backend": "loop"}, {"fused": True} if name == "adamw" else {}):
        torch._dynamo.reset()
        compiled, _, counter = _run(name, compiled=True, steps=6, **kw)
        eager, _, _ = _run(name, compiled=False, steps=6, **kw)
        assert counter.frame_count <= MAX_GRAPHS, kw
        _assert_same(compiled, eager)


def test_unfriendly_ones_say_why() -> None:
    unfriendly = [n for n in descent.list_optimizers() if n not in FRIENDLY]
    assert unfriendly, "every optimizer claims to compile: drop this test or check the claim"
    for name in unfriendly:
        doc = get_optimizer(name).__doc__ or ""
        assert "Not compile-friendly" in doc and "torch.compile" in doc or "uncompiled" in doc, name


@pytest.mark.slow
def test_adamw_inductor_matches_eager() -> None:
    """One real inductor compile (C++ code generation on CPU): AdamW with a cosine schedule."""
    compiled, _, _ = _run("adamw", compiled=True, compiler="inductor", steps=6)
    eager, _, _ = _run("adamw", compiled=False, steps=6)
    _assert_same(compiled, eager)


def test_compiled_lowbit_step_first_in_a_fresh_process() -> None:
    """A compiled 8-bit AdamW step that is the process's first call of the step-counter loop: dynamo
    must not trace into Numba's dispatcher (it failed with an AssertionError in its bytecode transform)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import torch, descent
        ps = [torch.nn.Parameter(torch.randn(64, 128)) for _ in range(2)]
        ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        opt, eager = descent.AdamW(ps, lr=1e-3, state_bits=8), descent.AdamW(ref, lr=1e-3, state_bits=8)
        step = torch.compile(opt.step, backend="eager")
        for _ in range(2):
            for p, q in zip(ps, ref):
                p.grad = torch.randn_like(p)
                q.grad = p.grad.clone()
            step()
            eager.step()
        assert all(torch.equal(p, q) for p, q in zip(ps, ref))
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
