"""GPU step time of descent's Triton kernels beside torch, pytorch-optimizer and torch.compile.

Usage:
    python benchmarks/gpu_step.py                        # everything, 1B-parameter GPT list (a few minutes, H100)
    python benchmarks/gpu_step.py --only Lion LAMB --no-compile
    python benchmarks/gpu_step.py --layers 2             # a small list (smoke run)
    python benchmarks/gpu_step.py --dtype bf16           # bfloat16 parameters, gradients and state

Prints the measured device copy bandwidth (``b.copy_(a)`` on 1 GiB), then for each
optimizer and implementation the median ms per step (CUDA events, ``--iters`` steps after
``--warmup``) on a GPT-shaped list (width 2048, 18 blocks, 50304-token vocabulary: 1.01B
parameters, 220 tensors) and the fraction of the copy bandwidth reached, counting the
bytes a single pass must move per parameter (AdamW 28, Lion 20, RMSprop 20, SophiaG 24,
LAMB 28, Adafactor 12 in fp32; half in bf16). descent's LAMB moves 40 B/param (two
passes) and Adafactor about 20 (the gradient is read three times), so their fraction
against those one-pass minimums is capped below 100 %. AdamW8bit/AdamW4bit: descent's Triton kernel
for quantized states (:mod:`descent.kernels.triton._lowbit`) beside bitsandbytes' and torchao's, counting
the parameter read and written, the gradient read and the codes (16 and 14 B/param in fp32). Then Muon's Newton-Schulz on the
list's matrices (same-shape matrices batched, bf16) against a measured bf16 matmul peak.
Last, the CUDA-graph check (``--no-capture`` skips it): for each optimizer with a GPU path,
``capturable=True`` on a small GPT-shaped list, three warm-up steps, ``torch.cuda.graph``
around ``step()``, four replays with new gradients copied in, against seven eager steps of a
``capturable=False`` twin; prints ``ok`` and the largest difference, or the error.

Exits with a message (status 0) on a machine without CUDA. ``--cpu-smoke`` runs every row on
CPU tensors instead (with ``TRITON_INTERPRET=1`` the Triton kernels run in Triton's interpreter;
wall-clock timing, no CUDA-graph check): it checks that the script runs end to end before device
time is spent on it, and measures nothing (``tests/test_gpu_step_script.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from descent import functional as F
from descent.reporting.bench import gpt_shapes

MIN_BYTES = {"AdamW": 28, "Lion": 20, "RMSprop": 20, "SophiaG": 24, "LAMB": 28, "Adafactor": 12}
#: low-bit AdamW: bytes of codes read and written per parameter (two states); the parameter is read and
#: written and the gradient read in the parameters' dtype (fp32: 12 + 4 = 16 B/param for 8 bits)
LOWBIT = {"AdamW8bit": 4, "AdamW4bit": 2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: where the tensors live: "cuda", or "cpu" for ``--cpu-smoke``
DEV = "cuda"


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def _empty_cache() -> None:
    if DEV == "cuda":
        torch.cuda.empty_cache()


def timed(fn: Callable[[], object], iters: int, warmup: int) -> float:
    """Median ms of ``fn`` over ``iters`` calls, each between two CUDA events (wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(iters):
        if DEV != "cuda":
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth() -> float:
    """GB/s of a device-to-device ``copy_`` of 1 GiB (read + write counted)."""
    a = torch.empty(2**28 if DEV == "cuda" else 2**20, device=DEV)
    b = torch.empty_like(a)
    ms = timed(lambda: b.copy_(a), 20, 3)
    return 2 * a.numel() * 4 / (ms / 1e3) / 1e9


def make_list(shapes: list[tuple[int, ...]], dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator(device=DEV).manual_seed(0)
    params = [(torch.randn(s, device=DEV, generator=g) * 0.02).to(dtype) for s in shapes]
    grads = [(torch.randn(s, device=DEV, generator=g) * 1e-3).to(dtype) for s in shapes]
    return params, grads


def zeros(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) for p in params]


def _adafactor_state(params):
    rows = [p.new_zeros(p.shape[:-1] + (1,)) if p.dim() >= 2 else None for p in params]
    cols = [p.new_zeros(p.shape[:-2] + (1, p.shape[-1])) if p.dim() >= 2 else None for p in params]
    var = [None if p.dim() >= 2 else torch.zeros_like(p) for p in params]
    return rows, cols, var


AF = dict(eps1=1e-30, eps2=1e-3, clip_threshold=1.0, decay_rate=-0.8, beta1=None, weight_decay=0.0,
          scale_parameter=True, maximize=False)
LAMB = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01)


def descent_steps(name: str, ps, gs) -> Callable[[], object] | None:
    """descent's Triton launcher for one step over the whole list."""
    from descent.kernels import triton as KT

    n = len(ps)
    if name == "Lion":
        m = zeros(ps)
        return lambda: KT.lion(ps, gs, m, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.1)
    if name == "SophiaG":
        m, h = zeros(ps), [torch.ones_like(p) for p in ps]
        return lambda: KT.sophia(ps, gs, m, h, lr=1e-4, beta1=0.96, rho=0.04, bs=480.0, weight_decay=0.1)
    if name == "RMSprop":
        v = zeros(ps)
        return lambda: KT.rmsprop(ps, gs, v, None, None, lr=1e-3)
    if name == "LAMB":
        m, v = zeros(ps), zeros(ps)
        return lambda: KT.lamb(ps, gs, m, v, steps=[10] * n, **LAMB)
    if name == "Adafactor":
        rows, cols, var = _adafactor_state(ps)
        return lambda: KT.adafactor(ps, gs, rows, cols, var, [None] * n, steps=[10] * n, lr=1e-3,
                                    relative_step=False, warmup_init=False, **AF)
    if name in LOWBIT:
        from descent.lowbit import QuantState

        bits = 8 if name == "AdamW8bit" else 4
        m, v = ([QuantState.zeros(p.numel(), signed, bits, p.device) for p in ps] for signed in (True, False))
        cols = [[getattr(s, f) for s in states] for states in (m, v) for f in ("codes", "absmax", "qmap")]
        return lambda: KT.adam_lowbit(ps, gs, *cols, steps=[10] * n, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                                      weight_decay=0.01, decoupled_weight_decay=True)
    return None


def functional_loop(name: str, ps, gs) -> Callable[[], object] | None:
    """A Python loop of descent.functional over the list (to be compiled), with its state."""
    if name == "Lion":
        m = zeros(ps)
        return lambda: [F.lion(p, g, a, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.1) for p, g, a in zip(ps, gs, m)]
    if name == "SophiaG":
        m, h = zeros(ps), [torch.ones_like(p) for p in ps]
        return lambda: [F.sophia(p, g, a, b, lr=1e-4, beta1=0.96, rho=0.04, bs=480.0, weight_decay=0.1)
                        for p, g, a, b in zip(ps, gs, m, h)]
    if name == "RMSprop":
        v = zeros(ps)
        return lambda: [F.rmsprop(p, g, a, None, None, lr=1e-3) for p, g, a in zip(ps, gs, v)]
    if name == "LAMB":
        m, v = zeros(ps), zeros(ps)
        return lambda: [F.lamb(p, g, a, b, step=10, **LAMB) for p, g, a, b in zip(ps, gs, m, v)]
    return None  # Adafactor's functional reads norms back to Python (float()): not a graph


def peers(name: str, ps, gs) -> dict[str, Callable[[], Callable[[], object]]]:
    """Builders of torch's and pytorch-optimizer's steps over the same tensors (leaf parameters with .grad)."""
    leaves = [torch.nn.Parameter(p, requires_grad=True) for p in ps]
    for leaf, g in zip(leaves, gs):
        leaf.grad = g
    makers: dict[str, Callable[[], torch.optim.Optimizer]] = {}
    if name == "AdamW":
        makers["torch AdamW fused"] = lambda: torch.optim.AdamW(leaves, lr=1e-3, fused=True)
        makers["torch AdamW foreach"] = lambda: torch.optim.AdamW(leaves, lr=1e-3, foreach=True)
    if name == "RMSprop":
        makers["torch RMSprop foreach"] = lambda: torch.optim.RMSprop(leaves, lr=1e-3, foreach=True)
    if name == "Adafactor":
        makers["torch Adafactor foreach"] = lambda: torch.optim.Adafactor(leaves, lr=1e-3, foreach=True)
    if name in LOWBIT and DEV == "cuda":  # their CPU paths are not what a GPU user runs
        makers.update(_lowbit_peers(name, leaves))
    try:
        import pytorch_optimizer as po
    except ImportError:
        po = None
    if po is not None:
        table = {"Lion": lambda: po.Lion(leaves, lr=1e-4, foreach=True),
                 "LAMB": lambda: po.Lamb(leaves, lr=1e-3, foreach=True),
                 "Adafactor": lambda: po.AdaFactor(leaves, lr=1e-3, relative_step=False, betas=(None, 0.999),
                                                   foreach=True),
                 "SophiaG": lambda: _sophia_h(po, leaves)}
        if name in table:
            makers["pytorch_optimizer foreach"] = table[name]
    return {label: (lambda make=make: make().step) for label, make in makers.items()}


def _lowbit_peers(name: str, leaves: list[torch.nn.Parameter]) -> dict[str, Callable[[], torch.optim.Optimizer]]:
    """bitsandbytes' and torchao's low-bit AdamW where they import."""
    out: dict[str, Callable[[], torch.optim.Optimizer]] = {}
    try:
        import bitsandbytes as bnb

        if name == "AdamW8bit":
            out["bitsandbytes AdamW8bit"] = lambda: bnb.optim.AdamW8bit(leaves, lr=1e-3, weight_decay=0.01)
    except ImportError:
        pass
    try:
        import torchao.optim as ao

        cls = ao.AdamW8bit if name == "AdamW8bit" else ao.AdamW4bit
        out[f"torchao {name}"] = lambda: cls(leaves, lr=1e-3, weight_decay=0.01)
    except (ImportError, AttributeError):
        pass
    return out


def _sophia_h(po, leaves: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """pytorch-optimizer's SophiaH with its Hessian set once (its own estimate needs a graph), so
    that the timed steps are the plain ones (no Hessian refresh within ``update_period``)."""
    opt = po.SophiaH(leaves, lr=1e-4, foreach=True, update_period=10**9)
    opt.step(hessian=[torch.ones_like(p) for p in leaves])
    return opt


def row(name: str, impl: str, ms: float | None, numel: int, bw: float, half: bool, note: str = "") -> str:
    if ms is None:
        return f"{name:<10} {impl:<28} {'-':>9} {'-':>8}  {note}"
    if name in LOWBIT:
        need = (3 * (2 if half else 4) + LOWBIT[name]) * numel
    else:
        need = MIN_BYTES.get(name, 0) * (0.5 if half else 1.0) * numel
    pct = 100 * need / (ms / 1e3) / (bw * 1e9) if need else float("nan")
    return f"{name:<10} {impl:<28} {ms:>9.2f} {pct:>7.0f}%  {note}"


def run_case(name: str, args, ps, gs, bw: float, budget: list[float]) -> list[str]:
    numel = sum(p.numel() for p in ps)
    half = ps[0].dtype != torch.float32
    lines = []
    candidates: dict[str, Callable[[], Callable[[], object] | dict | None]] = {}
    if name != "AdamW":
        candidates["descent triton"] = lambda: descent_steps(name, ps, gs)
    candidates.update(_safe(lambda: peers(name, ps, gs), {}))
    if name != "AdamW" and not args.no_compile:
        candidates["torch.compile(functional)"] = lambda: functional_loop(name, ps, gs)
    for impl, build in candidates.items():
        try:
            fn = build()
            if fn is None:
                lines.append(row(name, impl, None, numel, bw, half, "not applicable"))
                continue
            note = ""
            if impl.startswith("torch.compile"):
                if budget[0] <= 0:
                    lines.append(row(name, impl, None, numel, bw, half, "skipped: --compile-budget spent"))
                    continue
                fn = torch.compile(fn)
                t0 = time.perf_counter()
                fn()
                _sync()
                spent = time.perf_counter() - t0
                budget[0] -= spent
                note = f"compile {spent:.0f} s"
            lines.append(row(name, impl, timed(fn, args.iters, args.warmup), numel, bw, half, note))
        except Exception as exc:  # a peer that cannot run this list is reported, not fatal
            lines.append(row(name, impl, None, numel, bw, half, f"failed: {type(exc).__name__}: {exc}"[:120]))
        fn = None  # drop this implementation's state (and compiled graphs) before the next one
        if impl.startswith("torch.compile"):
            torch._dynamo.reset()
        _empty_cache()
    return lines


def _safe(fn, default):
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return default


def matmul_peak() -> float:
    """Measured bf16 TFLOP/s of an 8192^3 matmul (256^3 in a CPU smoke run)."""
    n = 8192 if DEV == "cuda" else 256
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    ms = timed(lambda: a @ b, 10, 3)
    return 2 * n**3 / (ms / 1e3) / 1e12


def muon_lines(shapes: list[tuple[int, ...]], args) -> list[str]:
    """Newton-Schulz over the list's hidden matrices, batched by shape, standard and Gram forms."""
    peak = matmul_peak()
    lines = [f"bf16 matmul peak ({'8192' if DEV == 'cuda' else '256'}^3, measured): {peak:.0f} TFLOP/s"]
    groups: dict[tuple[int, int], int] = {}
    for s in shapes[2:]:
        if len(s) == 2:
            groups[s] = groups.get(s, 0) + 1
    for method in ("standard", "gram"):
        total_ms = flops = std_flops = 0.0
        for (r, c), k in groups.items():
            m, n = min(r, c), max(r, c)
            G = torch.randn(k, r, c, device=DEV, dtype=torch.bfloat16)
            total_ms += timed(lambda: F.newton_schulz(G, dtype=torch.bfloat16, method=method), args.iters,
                              args.warmup)
            std = 5 * (4 * m * m * n + 2 * m**3) * k
            std_flops += std
            flops += std if method == "standard" else 2 * (4 * m * m * n + 14 * m**3) * k
            del G
        own = flops / (total_ms / 1e3) / 1e12
        eq = std_flops / (total_ms / 1e3) / 1e12
        lines.append(f"Muon NS    {method:<9} {total_ms:>8.2f} ms  {own:>6.0f} TFLOP/s ({100 * own / peak:.0f}% of peak)"
                     f"  standard-form equivalent {eq:.0f} TFLOP/s ({100 * eq / peak:.0f}%)")
    return lines


CAPTURED = {"AdamW": dict(weight_decay=0.1), "SGD": dict(momentum=0.9), "Lion": dict(weight_decay=0.1),
            "LAMB": dict(weight_decay=0.01), "Adafactor": dict(relative_step=False, beta1=0.9),
            "SophiaG": dict(), "RMSprop": dict(momentum=0.9, centered=True)}


def capture_check(name: str, shapes: list[tuple[int, ...]], dtype: torch.dtype) -> str:
    """One optimizer's step captured in a CUDA graph and replayed, against eager steps (see the docstring)."""
    import descent

    cls, kw = getattr(descent, name), CAPTURED[name]

    def grads(params, k):
        g = torch.Generator(device="cuda").manual_seed(100 + k)
        for p in params:
            p.grad.copy_(torch.randn(p.shape, device="cuda", generator=g) * 1e-3)

    def fresh():
        g = torch.Generator(device="cuda").manual_seed(0)
        params = [torch.nn.Parameter((torch.randn(s, device="cuda", generator=g) * 0.02).to(dtype)) for s in shapes]
        for p in params:
            p.grad = torch.zeros_like(p)
        return params

    try:
        eager, params = fresh(), fresh()
        twin = cls(eager, lr=1e-3, **kw)
        for k in range(7):
            grads(eager, k)
            twin.step()
        opt = cls(params, lr=torch.tensor(1e-3, device="cuda"), capturable=True, **kw)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for k in range(3):
                grads(params, k)
                opt.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opt.step()
        for k in range(3, 7):
            grads(params, k)
            graph.replay()
        torch.cuda.synchronize()
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(params, eager))
        scale = max(float(b.float().abs().max()) for b in eager)
        rtol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: an ulp of the stored value
        verdict = "ok" if diff <= rtol * scale + 1e-6 else "MISMATCH"
        return f"capture    {name:<10} {verdict}: max |graph - eager| {diff:.2e} (largest |param| {scale:.2e})"
    except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
        return f"capture    {name:<10} FAILED: {type(exc).__name__}: {exc}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help=f"optimizers (default: {' '.join([*MIN_BYTES, *LOWBIT])} Muon)")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--no-capture", action="store_true", help="skip the CUDA-graph capture check")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run on CPU tensors (TRITON_INTERPRET=1 for the Triton rows): checks the script, times nothing")
    parser.add_argument("--compile-budget", type=float, default=240.0,
                        help="seconds of compilation after which further torch.compile rows are skipped")
    args = parser.parse_args()
    global DEV
    DEV = "cpu" if args.cpu_smoke else "cuda"
    if DEV == "cuda" and not torch.cuda.is_available():
        print("gpu_step.py: no CUDA device here (torch.cuda.is_available() is False); nothing to measure. "
              "Run it on a machine with an NVIDIA GPU and triton installed.")
        return 0
    from descent.kernels import triton as KT

    if not KT.AVAILABLE:
        print("gpu_step.py: the triton package is not installed; descent's GPU kernels cannot run.")
        return 0
    names = args.only or [*MIN_BYTES, *LOWBIT, "Muon"]
    unknown = set(names) - {*MIN_BYTES, *LOWBIT, "Muon"}
    if unknown:
        parser.error(f"unknown optimizer(s): {', '.join(sorted(unknown))}")
    shapes = gpt_shapes(width=args.width, layers=args.layers, vocab=args.vocab, ctx=2048)
    bw = copy_bandwidth()
    device = torch.cuda.get_device_name() if DEV == "cuda" else "CPU smoke run (no timing is meaningful)"
    print(f"device: {device}; torch {torch.__version__}; copy bandwidth {bw:.0f} GB/s")
    ps, gs = make_list(shapes, DTYPES[args.dtype])
    numel = sum(p.numel() for p in ps)
    print(f"list: {len(shapes)} tensors, {numel / 1e9:.3f}B parameters, {args.dtype}")
    print(f"{'optimizer':<10} {'implementation':<28} {'ms/step':>9} {'% copy':>8}  note")
    budget = [args.compile_budget]
    for name in names:
        if name == "Muon":
            continue
        for line in run_case(name, args, ps, gs, bw, budget):
            print(line, flush=True)
    if "Muon" in names:
        del ps, gs
        _empty_cache()
        for line in muon_lines(shapes, args):
            print(line, flush=True)
    if DEV != "cuda" and not args.no_capture:
        print("capture    skipped: CUDA graphs need a GPU (CPU smoke run)")
    elif not args.no_capture:
        small = gpt_shapes(width=256, layers=2, vocab=1024, ctx=256)
        for name in CAPTURED:
            print(capture_check(name, small, DTYPES[args.dtype]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
