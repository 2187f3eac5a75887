"""descent's Triton kernels against descent.functional, run through Triton's interpreter on CPU.

The interpreter (``TRITON_INTERPRET=1``) executes the same kernels on CPU tensors, so
CI without a GPU tests them. The reference is the functional run in float32 on
float32 copies, rounded to the parameters' dtype after each step (the kernels compute
in float32 and round once on store). Tests marked ``gpu`` run the compiled kernels on
CUDA in a subprocess (without the interpreter) and are skipped without a GPU.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton")

from descent import functional as F  # noqa: E402

#: Triton decides when it is imported, and again when a @triton.jit function is decorated
#: or launched, whether it interprets; one process cannot mix the two modes. So the
#: interpreter tests run in a child pytest started with TRITON_INTERPRET=1
#: (test_interpreter_suite); in this process they are skipped.
from interp_child import INTERPRETED, interp, run_interpreted  # noqa: E402
if INTERPRETED:
    from descent.kernels.triton import _adafactor as KA  # noqa: E402
    from descent.kernels.triton import _common as KC  # noqa: E402
    from descent.kernels.triton import _elementwise as KE  # noqa: E402
    from descent.kernels.triton import _lamb as KL  # noqa: E402


def test_interpreter_suite(request):
    """Every kernel through Triton's interpreter: this file's ``interp`` tests in a child process
    (with this run's ``-m`` selection, e.g. ``-m "not slow"``)."""
    run_interpreted(__file__, request)


def _store_kernel():
    """A test kernel: float32 values stored as bfloat16 through the kernels' ``store``."""
    import triton.language as tl

    @triton.jit
    def kernel(src, dst, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        KC.store(dst + offs, tl.load(src + offs, mask=offs < n), offs < n, tl.bfloat16)

    return kernel


def _cases(hps):
    """Every hyperparameter set in float32, the first in bfloat16 too (keeps the interpreter run short)."""
    return [(torch.float32, hp) for hp in hps] + [(torch.bfloat16, hps[0])]


SHAPES = [(7, 3), (1,), (0,), (2500,), (5, 33)]  # odd sizes, one element, zero-size, two blocks
DTYPES = [torch.float32, torch.bfloat16]


def _bucket(shapes, dtype, seed=0, positive=()):
    """Lists of random tensors (params, grads, states...); roles in ``positive`` are |x| + 0.5."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for role in range(6):
        ts = [torch.randn(s, generator=g) for s in shapes]
        if role in positive:
            ts = [t.abs() + 0.5 for t in ts]
        out.append([t.to(dtype) for t in ts])
    return out


def _f32(cols):
    return [[None if t is None else t.float().clone() for t in col] for col in cols]


def _round(cols, dtype):
    for col in cols:
        for t in col:
            if t is not None:
                t.copy_(t.to(dtype))


def _check(got, want, dtype, rtol=0.0, ulps=0):
    """``got`` (dtype) equals ``want`` (float32) exactly, or within ``rtol`` of the largest value
    plus ``ulps`` units in the last place of ``dtype`` at each value."""
    for i, (a, b) in enumerate(zip(got, want)):
        if a is None or a.numel() == 0:
            continue
        a = a.float()
        if rtol == 0 and ulps == 0:
            assert torch.equal(a, b), f"tensor {i}: max |diff| {(a - b).abs().max().item()}"
        else:
            ulp = torch.finfo(dtype).eps * b.abs()
            tol = rtol * b.abs().max() + ulps * ulp + 1e-30
            assert ((a - b).abs() <= tol).all(), f"tensor {i}: max |diff| {(a - b).abs().max().item()}"


# ------------------------------------------------------------------ elementwise
@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hp", [dict(), dict(weight_decay=0.1, maximize=True)])
def test_lion_equals_functional(dtype, hp):
    p, g, m = _bucket(SHAPES, dtype)[:3]
    ref = _f32([p, g, m])
    for _ in range(2):
        KE.lion(p, g, m, lr=0.1, beta1=0.9, beta2=0.99, **hp)
        for pi, gi, mi in zip(*ref):
            F.lion(pi, gi, mi, lr=0.1, beta1=0.9, beta2=0.99, **hp)
        _round(ref, dtype)
    _check(p, ref[0], dtype)
    _check(m, ref[2], dtype)


@interp
@pytest.mark.parametrize("dtype", DTYPES)
def test_sophia_equals_functional(dtype):
    p, g, m, h = _bucket(SHAPES, dtype, positive=(3,))[:4]
    h[0].neg_()  # a negative Hessian estimate gives the sign step
    ref = _f32([p, g, m, h])
    hp = dict(lr=0.05, beta1=0.9, rho=0.04, bs=8.0, weight_decay=0.1, maximize=True)
    for _ in range(2):
        KE.sophia(p, g, m, h, **hp)
        for cols in zip(*ref):
            F.sophia(*cols, **hp)
        _round(ref, dtype)
    _check(p, ref[0], dtype)
    _check(m, ref[2], dtype)


@pytest.mark.parametrize("dtype, hp", _cases([dict(centered=True, momentum=0.9, weight_decay=0.1), dict(),
                                              dict(centered=True, alpha=0.3, maximize=True)]))
@interp
def test_rmsprop_matches_functional(dtype, hp):
    """torch's CPU float32 sqrt is not correctly rounded (measured: about 15% of random
    inputs differ from the float64 root rounded), the kernel's is: parameters agree to
    one float32 ulp of the step, the averages exactly."""
    p, g, v, ga, buf = _bucket(SHAPES, dtype, positive=(2,))[:5]
    for t in ga:
        t.mul_(0.1)  # |grad_avg| small enough that v - grad_avg^2 > 0
    ref = _f32([p, g, v, ga, buf])
    centered, mom = hp.get("centered", False), hp.get("momentum", 0.0)
    for _ in range(2):
        KE.rmsprop(p, g, v, ga, buf, lr=0.01, **hp)
        for pi, gi, vi, gai, bi in zip(*ref):
            F.rmsprop(pi, gi, vi, gai if centered else None, bi if mom else None, lr=0.01, **hp)
        _round(ref, dtype)
    _check(v, ref[2], dtype)
    _check(p, ref[0], dtype, rtol=2e-7, ulps=1)
    if mom:
        _check(buf, ref[4], dtype, rtol=1e-6, ulps=1)


@interp
def test_lion_float16_and_a_200_tensor_bucket():
    shapes = [(1 + i % 7,) for i in range(200)]
    p, g, m = _bucket(shapes, torch.float16)[:3]
    ref = _f32([p, g, m])
    KE.lion(p, g, m, lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.01)
    for cols in zip(*ref):
        F.lion(*cols, lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.01)
    _round(ref, torch.float16)
    _check(p, ref[0], torch.float16)
    _check(m, ref[2], torch.float16)


@interp
def test_bf16_store_rounds_to_nearest_even():
    """The kernels round float32 to bfloat16 as torch does (Triton 3.9's interpreter cast truncates)."""
    x = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -(1.0 + 3 * 2**-8), 1.0 + 2**-9,
                      3.3e38, float("inf"), float("-inf"), 0.0, -0.0, 1e-40, float("nan")])
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    _store_kernel()[(1,)](x, out, x.numel(), BLOCK=16)
    want = x.to(torch.bfloat16)
    finite = ~x.isnan()
    assert torch.equal(out.view(torch.int16)[finite], want.view(torch.int16)[finite])
    assert out[~finite].isnan().all()


# ------------------------------------------------------------------ LAMB
@pytest.mark.parametrize("dtype, hp", _cases([dict(weight_decay=0.1, clamp_value=1.0, maximize=True), dict(),
                                              dict(bias_correction=False)]))
@interp
def test_lamb_matches_functional(dtype, hp):
    """Moments equal; parameters within a few float32 ulp (norms summed in another order),
    one bfloat16 ulp in bfloat16 (the kernel's direction uses the rounded moments)."""
    p, g, m, v = _bucket(SHAPES, dtype)[:4]
    for t in m + v:
        t.zero_()
    ref = _f32([p, g, m, v])
    for step in (1, 2):
        ratios = KL.lamb(p, g, m, v, steps=[step] * len(p), lr=0.01, beta1=0.9, beta2=0.999, eps=1e-6, **hp)
        want = [F.lamb(*cols, step=step, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-6, **hp) for cols in zip(*ref)]
        _round(ref, dtype)
    nonempty = [float(r) for r, pi in zip(want, p) if pi.numel()]
    assert ratios.shape == (len(nonempty),)
    torch.testing.assert_close(ratios, torch.tensor(nonempty), rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=0)
    if dtype == torch.float32:
        _check(m, ref[2], dtype)
        _check(v, ref[3], dtype)
        _check(p, ref[0], dtype, rtol=1e-7, ulps=2)
    else:
        _check(p, ref[0], dtype, rtol=2**-8, ulps=1)


@interp
def test_lamb_step_tensors_give_the_int_step():
    """0-d step tensors (the capturable form, no host sync) give the same step as ints."""
    p, g, m, v = _bucket(SHAPES, torch.float32)[:4]
    v = [t.abs() for t in v]
    p2, m2, v2 = _f32([p])[0], _f32([m])[0], _f32([v])[0]
    steps = [1, 2, 3, 4, 5]
    hp = dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01)
    r1 = KL.lamb(p, g, m, v, steps=steps, **hp)
    r2 = KL.lamb(p2, g, m2, v2, steps=[torch.tensor(float(s)) for s in steps], **hp)
    torch.testing.assert_close(r1, r2, rtol=1e-6, atol=0)
    _check(p2, [t.clone() for t in p], torch.float32, rtol=1e-7, ulps=2)


@pytest.mark.slow
@interp
def test_lamb_200_tensor_bucket():
    """One launch set over 200 tensors with different steps: every tensor gets its own ratio."""
    shapes = [(1 + i % 5, 3) for i in range(200)]
    p, g, m, v = _bucket(shapes, torch.float32)[:4]
    v = [t.abs() for t in v]
    ref = _f32([p, g, m, v])
    steps = [1 + i % 3 for i in range(200)]
    hp = dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01)
    KL.lamb(p, g, m, v, steps=steps, **hp)
    for i, cols in enumerate(zip(*ref)):
        F.lamb(*cols, step=steps[i], **hp)
    _check(m, ref[2], torch.float32)
    _check(p, ref[0], torch.float32, rtol=1e-7, ulps=2)


# ------------------------------------------------------------------ Adafactor
AF_SHAPES = [(7, 3), (1,), (0,), (2500,), (2, 9, 37), (1, 1), (0, 4)]


def _adafactor_state(shapes, dtype):
    fac = [len(s) >= 2 for s in shapes]
    rows = [torch.zeros(s[:-1] + (1,), dtype=dtype) if f else None for s, f in zip(shapes, fac)]
    cols = [torch.zeros(s[:-2] + (1, s[-1]), dtype=dtype) if f else None for s, f in zip(shapes, fac)]
    var = [None if f else torch.zeros(s, dtype=dtype) for s, f in zip(shapes, fac)]
    return rows, cols, var, [torch.zeros(s, dtype=dtype) for s in shapes]


@pytest.mark.parametrize("dtype, hp", _cases([dict(weight_decay=0.1, beta1=0.9, maximize=True), dict(),
                                              dict(scale_parameter=False, clip_threshold=0.01, relative_step=False,
                                                   lr=0.05)]))
@interp
def test_adafactor_matches_functional(dtype, hp):
    """Statistics and parameters within a few float32 ulp (means and norms are sums in
    another order); two bfloat16 ulp of the largest value in bfloat16."""
    p, g = _bucket(AF_SHAPES, dtype)[:2]
    state = _adafactor_state(AF_SHAPES, dtype)
    ref = _f32([p, g, *state])
    hp = dict(hp)
    rule = dict(lr=hp.pop("lr", None), relative_step=hp.pop("relative_step", True), warmup_init=False)
    full = dict(eps1=1e-30, eps2=1e-3, clip_threshold=1.0, decay_rate=-0.8, beta1=None, weight_decay=0.0,
                scale_parameter=True, maximize=False)
    full.update(hp)
    for step in (1, 2):
        KA.adafactor(p, g, *state, steps=[step] * len(p), **rule, **full)
        for pi, gi, ri, ci, vi, mi in zip(*ref):
            F.adafactor(pi, gi, ri, ci, vi, mi if full["beta1"] else None, step=step, lr=F.adafactor_lr(step, **rule),
                        **full)
        _round(ref, dtype)
    if dtype == torch.float32:
        _check(p, ref[0], dtype, rtol=2e-7, ulps=4)
        for got, want in zip(state[:3], ref[2:5]):
            _check(got, want, dtype, rtol=4e-7)
    else:
        _check(p, ref[0], dtype, rtol=2 * 2**-8)


@interp
def test_adafactor_step_tensors_give_the_int_step():
    p, g = _bucket(AF_SHAPES[:5], torch.float32)[:2]
    s1, s2 = _adafactor_state(AF_SHAPES[:5], torch.float32), _adafactor_state(AF_SHAPES[:5], torch.float32)
    p2 = [t.clone() for t in p]
    hp = dict(lr=None, relative_step=True, warmup_init=True, eps1=1e-30, eps2=1e-3, clip_threshold=1.0,
              decay_rate=-0.8, beta1=None, weight_decay=0.0, scale_parameter=True, maximize=False)
    KA.adafactor(p, g, *s1, steps=[3] * 5, **hp)
    KA.adafactor(p2, g, *s2, steps=[torch.tensor(3.0)] * 5, **hp)
    _check(p2, [t.clone() for t in p], torch.float32, rtol=1e-7)


# ------------------------------------------------------------------ contract and errors
@interp
def test_empty_buckets_do_nothing():
    z = [torch.zeros(0), torch.zeros(0, 3)]
    KE.lion(z, z, z, lr=0.1, beta1=0.9, beta2=0.99)
    assert KL.lamb(z, z, z, z, steps=[1, 1], lr=0.1, beta1=0.9, beta2=0.99, eps=1e-6) is None
    KE.lion([], [], [], lr=0.1, beta1=0.9, beta2=0.99)


@interp
def test_bad_buckets_are_refused():
    p = torch.zeros(4, 4)
    with pytest.raises(ValueError, match=r"params\[0\]: not contiguous"):
        KE.lion([p.t()], [p], [p.clone()], lr=0.1, beta1=0.9, beta2=0.99)
    with pytest.raises(ValueError, match=r"grads\[0\]: not contiguous"):
        KE.lion([p], [p.t()], [p.clone()], lr=0.1, beta1=0.9, beta2=0.99)
    with pytest.raises(ValueError, match="float64"):
        KE.lion([p.double()], [p.double()], [p.double()], lr=0.1, beta1=0.9, beta2=0.99)
    with pytest.raises(ValueError, match=r"exp_avg\[0\]: torch.bfloat16"):
        KL.lamb([p], [p], [p.bfloat16()], [p], steps=[1], lr=0.1, beta1=0.9, beta2=0.99, eps=1e-6)
    with pytest.raises(ValueError, match="Invalid steps"):
        KL.lamb([p], [p], [p], [p], steps=[], lr=0.1, beta1=0.9, beta2=0.99, eps=1e-6)
    with pytest.raises(ValueError, match="momentum_buffer: None"):
        KE.rmsprop([p], [p], [p], None, None, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"Invalid row_var/col_var of params\[0\]"):
        KA.adafactor([p], [p], [torch.zeros(3, 1)], [torch.zeros(1, 4)], [None], [None], steps=[1], lr=None,
                     relative_step=True, warmup_init=False, decay_rate=-0.8, eps1=1e-30, eps2=1e-3, clip_threshold=1.0,
                     beta1=None)
    with pytest.raises(ValueError, match="needs row_var and col_var"):
        KA.adafactor([p], [p], [None], [None], [None], [None], steps=[1], lr=None, relative_step=True,
                     warmup_init=False, decay_rate=-0.8, eps1=1e-30, eps2=1e-3, clip_threshold=1.0, beta1=None)


@interp
def test_launchers_take_the_functionals_hyperparameters():
    """The launcher convention: state lists named by state key, then the functional's keywords
    (but ``cautious``: a cautious group runs the functional, no kernel masks), and ``capturable``."""
    def keywords(fn):
        names = {n for n, q in inspect.signature(fn).parameters.items() if q.kind is q.KEYWORD_ONLY}
        assert fn is F.__dict__.get(fn.__name__) or "capturable" in names, fn
        return names - {"cautious", "capturable"}

    assert keywords(KE.lion) == keywords(F.lion)
    assert keywords(KE.sophia) == keywords(F.sophia)
    assert keywords(KE.rmsprop) == keywords(F.rmsprop)
    assert keywords(KL.lamb) == keywords(F.lamb) - {"step"} | {"steps"}
    assert keywords(KA.adafactor) == keywords(F.adafactor) - {"step"} | {"steps", "relative_step", "warmup_init"}
    assert list(inspect.signature(KA.adafactor).parameters)[:6] == ["params", "grads", "row_var", "col_var",
                                                                     "variance", "exp_avg"]


@interp
def test_tables_are_built_once_per_bucket():
    p, g, m = _bucket([(5,), (3, 3)], torch.float32)[:3]
    KE.lion(p, g, m, lr=0.1, beta1=0.9, beta2=0.99)
    before = len(KC._CACHE)
    KE.lion(p, g, m, lr=0.1, beta1=0.9, beta2=0.99)
    assert len(KC._CACHE) == before


def test_launchers_fit_the_optimizers_declarations():
    """Each launcher can be bound as a kernel of its optimizer's declaration (same columns and hyperparameters)."""
    import descent
    from descent.kernels import triton as KT
    from descent.optim._spec import Kernel

    for cls, name, steps in ((descent.Lion, "lion", None), (descent.SophiaG, "sophia", None),
                             (descent.RMSprop, "rmsprop", None), (descent.LAMB, "lamb", "int"),
                             (descent.Adafactor, "adafactor", "int")):
        opt = cls([torch.nn.Parameter(torch.zeros(3, 2))])
        hyper = cls.declaration.hyper(opt.param_groups[0])
        Kernel(f"descent.kernels.triton:{name}", KT.supports, steps=steps, capturable=True).check(cls.declaration,
                                                                                                   hyper)


# ------------------------------------------------------------------ real GPU (compiled kernels)
_GPU_SCRIPT = textwrap.dedent("""
    import torch
    from descent import functional as F
    from descent.kernels import triton as KT

    torch.manual_seed(0)
    dev = torch.device("cuda")
    shapes = [(7, 3), (1,), (0,), (300_001,), (64, 257)]
    rand = lambda: [torch.randn(s, device=dev) for s in shapes]
    # Lion and Sophia: bit for bit against the functional on CUDA
    p, g, m = rand(), rand(), rand()
    rp, rm = [t.clone() for t in p], [t.clone() for t in m]
    KT.lion(p, g, m, lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.1)
    for a, b, c in zip(rp, g, rm):
        F.lion(a, b, c, lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.1)
    assert all(torch.equal(a, b) for a, b in zip(p, rp)), "lion"
    # Sophia bit for bit; RMSprop and Adafactor within a few ulp
    p, g, m, h = rand(), rand(), rand(), [t.abs() for t in rand()]
    ref = [[t.clone() for t in c] for c in (p, g, m, h)]
    KT.sophia(p, g, m, h, lr=0.1, beta1=0.9, rho=0.04, bs=8.0, weight_decay=0.1)
    for cols in zip(*ref):
        F.sophia(*cols, lr=0.1, beta1=0.9, rho=0.04, bs=8.0, weight_decay=0.1)
    assert all(torch.equal(a, b) for a, b in zip(p, ref[0])), "sophia"
    p, g, v = rand(), rand(), [t.abs() for t in rand()]
    ref = [[t.clone() for t in c] for c in (p, g, v)]
    KT.rmsprop(p, g, v, None, None, lr=0.01)
    for a, b, c in zip(*ref):
        F.rmsprop(a, b, c, None, None, lr=0.01)
    for a, b in zip(p, ref[0]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    p, g = rand(), rand()
    fac = [len(s) >= 2 for s in shapes]
    rows = [torch.zeros(s[:-1] + (1,), device=dev) if f else None for s, f in zip(shapes, fac)]
    cols = [torch.zeros(s[:-2] + (1, s[-1]), device=dev) if f else None for s, f in zip(shapes, fac)]
    var = [None if f else torch.zeros(s, device=dev) for s, f in zip(shapes, fac)]
    ref = [[None if t is None else t.clone() for t in c] for c in (p, g, rows, cols, var)]
    hp = dict(eps1=1e-30, eps2=1e-3, clip_threshold=1.0, decay_rate=-0.8, beta1=None, weight_decay=0.0,
              scale_parameter=True, maximize=False)
    KT.adafactor(p, g, rows, cols, var, [None] * len(p), steps=[1] * len(p), lr=None, relative_step=True,
                 warmup_init=False, **hp)
    for a, b, c, d, e in zip(*ref):
        F.adafactor(a, b, c, d, e, None, step=1, lr=1e-2, **hp)
    for a, b in zip(p, ref[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # LAMB and Lion captured in a CUDA graph, step counters as device tensors
    p, g, m, v = rand(), rand(), rand(), [t.abs() for t in rand()]
    steps = [torch.zeros((), device=dev) for _ in shapes]
    eager = [[t.clone() for t in c] for c in (p, g, m, v)]
    hp = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01)
    def step(p, g, m, v, steps):
        torch._foreach_add_(steps, 1.0)
        KT.lamb(p, g, m, v, steps=steps, **hp)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step(p, g, m, v, steps)  # warm-up: compiles and caches the tables
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(p, g, m, v, steps)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    for k in range(1, 5):  # eager: the warm-up and three replays (capturing runs nothing)
        for a, b, c, d in zip(*eager):
            F.lamb(a, b, c, d, step=k, **hp)
    for a, b in zip(p, eager[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert float(steps[0]) == 4.0
    print("ok")
""")


def _run_gpu(script: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_kernels_and_cuda_graph_capture():
    """Compiled kernels on CUDA: Lion bit for bit; a LAMB step with device step counters
    captured in a CUDA graph and replayed equals eager functional steps."""
    _run_gpu(_GPU_SCRIPT)
