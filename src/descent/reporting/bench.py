"""Step-speed and state-memory benchmark of descent's optimizers against torch and peers.

Two parameter sets: (a) one flat 16M-element tensor and (b) a GPT-shaped list of 196
tensors totalling ~20M parameters (16 blocks of width 320, a GPT-2-small-like layout). Every
optimizer is timed on the same tensors with fixed gradients, the implementations of one
optimizer taking turns (interleaved rounds, so a slow spell of a shared machine hits
them all); the memory bandwidth of
``a.add_(b)`` is measured in the same run, so each result also reports the fraction of
that roofline it reaches (``bytes moved per parameter / bandwidth``).

``benchmarks/step_speed.py`` and ``descent bench`` are thin front-ends over
:func:`run`. Peers that are not installed (pytorch-optimizer) are skipped and said so.

Example:
    >>> from descent.reporting import bench
    >>> results = bench.run(only=["AdamW"], scale=0.01, iters=2)  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

log = logging.getLogger("descent.reporting.bench")

__all__ = ["Case", "Result", "CASES", "gpt_shapes", "measure_bandwidth", "run", "format_table", "MAX_SCALE"]

#: The largest ``scale`` :func:`run` accepts (1 = the full 16M / 20M parameter sets).
MAX_SCALE = 4.0
#: Note on a row that runs above the bandwidth measured in the same run.
ABOVE_ROOFLINE = ("above 100 % of the add_ bandwidth measured in this run: the tensors fit in cache "
                  "better than the bandwidth test's, or the machine was busier during that test")

Factory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


@dataclass
class Case:
    """One optimizer under test, with the peers it is compared against.

    Attributes:
        name: the optimizer's name (``descent.<name>``).
        bytes_per_param: bytes one step must move per fp32 parameter (roofline).
        descent: builds descent's optimizer, or ``None`` if it is not available.
        peers: label -> factory, for torch's and other packages' implementations.
        matrices_only_16m: skip the single 16M tensor (matrix methods such as Muon).
    """

    name: str
    bytes_per_param: float | None
    descent: Factory | None
    peers: dict[str, Factory] = field(default_factory=dict)
    matrices_only_16m: bool = False


@dataclass
class Result:
    """Timing of one implementation on one parameter set."""

    case: str
    impl: str
    params: str
    ms: float
    roofline_pct: float | None
    state_bytes_per_param: float
    vs_descent: float | None = None
    note: str = ""


def gpt_shapes(width: int = 320, layers: int = 16, vocab: int = 1024, ctx: int = 256) -> list[tuple[int, ...]]:
    """Shapes of a GPT-2-style model: embeddings, 12 tensors per block, final norm (196 tensors)."""
    d = width
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes + [(d,), (d,)]


def _params(shapes: Iterable[tuple[int, ...]], seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=g) * 0.02)
        p.grad = torch.randn(s, generator=g) * 1e-3
        params.append(p)
    return params


def measure_bandwidth(numel: int = 64 * 2**20, iters: int = 10) -> float:
    """GB/s of ``a.add_(b)`` on ``numel`` fp32 elements (reads a and b, writes a: 12 bytes/element)."""
    a, b = torch.zeros(numel), torch.ones(numel)
    a.add_(b)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        a.add_(b)
        times.append(time.perf_counter() - t0)
    return 12 * numel / statistics.median(times) / 1e9


def _time_interleaved(opts: dict[str, torch.optim.Optimizer], warmup: int, iters: int,
                      rounds: int) -> dict[str, float]:
    """Median ms per step of each optimizer, their steps interleaved in ``rounds`` rounds.

    Interleaving spreads a slow spell of a shared machine over every implementation
    instead of whichever happened to run during it, so the ratios are steadier.
    """
    times: dict[str, list[float]] = {name: [] for name in opts}
    for opt in opts.values():
        for _ in range(warmup):
            opt.step()
    per_round = max(1, -(-iters // rounds))
    for _ in range(rounds):
        for name, opt in opts.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                opt.step()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def _state_bytes(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> float:
    total = 0
    for st in opt.state.values():
        for v in st.values() if isinstance(st, dict) else ():
            if isinstance(v, torch.Tensor) and v.numel() > 1:
                total += v.numel() * v.element_size()
    return total / max(1, sum(p.numel() for p in params))


def _descent(name: str, **kw: Any) -> Factory:
    """Build descent's optimizer ``name`` from the registry on a parameter list."""
    from descent.optim.registry import create_optimizer

    return lambda ps: create_optimizer(name.lower(), ps, **kw)


def _torch(cls: Callable[..., torch.optim.Optimizer], **kw: Any) -> dict[str, Factory]:
    out: dict[str, Factory] = {"torch default": lambda ps: cls(ps, **kw),
                               "torch foreach": lambda ps: cls(ps, foreach=True, **kw)}
    if "fused" in cls.__init__.__code__.co_varnames:
        out["torch fused"] = lambda ps: cls(ps, fused=True, **kw)
    return out


def _po(name: str, **kw: Any) -> dict[str, Factory]:
    try:
        import pytorch_optimizer as po
    except ImportError:
        return {}
    cls = getattr(po, name, None)
    return {} if cls is None else {f"pytorch_optimizer.{name}": lambda ps: cls(ps, **kw)}


def _po_muon(ps: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    import pytorch_optimizer as po

    mats = [p for p in ps[2:] if p.ndim == 2]
    rest = [p for p in ps if not (p.ndim == 2 and any(p is m for m in mats))]
    return po.Muon([dict(params=mats, use_muon=True, lr=0.02), dict(params=rest, use_muon=False, lr=3e-4)])


def _muon_cases() -> Case:
    def make(ps: list[torch.nn.Parameter], **kw: Any) -> torch.optim.Optimizer:
        import descent

        mats = [p for p in ps[2:] if p.ndim == 2]
        rest = [p for p in ps if not (p.ndim == 2 and any(p is m for m in mats))]
        return descent.Muon([dict(params=mats, use_muon=True), dict(params=rest, use_muon=False)], lr=0.02, **kw)

    variants: dict[str, Factory] = {"descent ns_method='auto'": lambda ps: make(ps, ns_method="auto")}
    if _po("Muon"):
        variants["pytorch_optimizer.Muon"] = _po_muon
    return Case("Muon", None, make, variants, matrices_only_16m=True)


def _cases() -> list[Case]:
    adam_kw = dict(lr=1e-3)
    cases = [
        Case("AdamW", 28, _descent("AdamW", **adam_kw), _torch(torch.optim.AdamW, **adam_kw)),
        Case("Adam", 28, _descent("Adam", **adam_kw), _torch(torch.optim.Adam, **adam_kw)),
        Case("SGD", 20, _descent("SGD", lr=0.1, momentum=0.9), _torch(torch.optim.SGD, lr=0.1, momentum=0.9)),
        Case("Adagrad", 20, _descent("Adagrad", lr=0.01), _torch(torch.optim.Adagrad, lr=0.01)),
        Case("RMSprop", 20, _descent("RMSprop", lr=0.01), _torch(torch.optim.RMSprop, lr=0.01)),
        Case("Lion", 20, _descent("Lion", lr=1e-4), _po("Lion", lr=1e-4)),
        Case("LAMB", 28, _descent("LAMB", lr=1e-3), _po("Lamb", lr=1e-3)),
        Case("Adafactor", 12, _descent("Adafactor", lr=1e-3, relative_step=False),
             {**_po("AdaFactor", lr=1e-3, relative_step=False, betas=(None, 0.999)),
              "torch Adafactor": lambda ps: torch.optim.Adafactor(ps, lr=1e-3)}),
        Case("SophiaG", 24, _descent("SophiaG", lr=1e-4), _po("SophiaH", lr=1e-4)),
        _muon_cases(),
    ]
    return cases + _registered_cases({c.name.lower() for c in cases})


def _registered_cases(known: set[str]) -> list[Case]:
    """Every other registered elementwise optimizer, at its declared classification lr; bytes
    moved per parameter: read p and g, write p, read and write the state (12 + 2 x state bytes)."""
    from descent.optim.registry import list_optimizers, optimizer_info

    out = []
    for name in list_optimizers("elementwise"):
        entry = optimizer_info(name)
        if name in known or entry.kwargs or entry.cls.__name__.lower() in known:
            continue
        meta = entry.meta
        out.append(Case(entry.cls.__name__, round(12 + 2 * meta.state_bytes),
                        _descent(name, lr=entry.default_lr("classification") or 1e-3), {}))
    return out


#: Built lazily so that optimizers added later are picked up.
CASES = _cases


def run(
    only: Iterable[str] | None = None,
    scale: float = 1.0,
    iters: int = 10,
    warmup: int = 3,
    sets: Iterable[str] = ("16M", "gpt20M"),
    rounds: int = 3,
    callback: Callable[[str, str], None] | None = None,
) -> tuple[float, list[Result]]:
    """Time every case (or those in ``only``); returns (bandwidth GB/s, results).

    The implementations of one case live side by side (each on its own copy of the
    parameters) and take turns: ``rounds`` rounds of ``iters / rounds`` steps each.

    Args:
        only: case names to run (case-insensitive); all by default.
        scale: multiply parameter counts by this (e.g. 0.01 for a smoke run).
        iters, warmup: timed and untimed steps per implementation.
        sets: which parameter sets: ``"16M"`` (one tensor) and/or ``"gpt20M"``.
        rounds: how many turns the timed steps are split into.
        callback: called as ``callback(case_name, set_name)`` after each case on each set (progress).

    The ``roofline_pct`` of a row is computed from the bandwidth measured at the start of the
    same call; a row above 100 % carries a note saying so (cache effects, or a noisy
    bandwidth measurement on a busy machine), never a silent number.

    Raises:
        ValueError: ``scale`` outside (0, :data:`MAX_SCALE`], ``iters``/``rounds`` < 1 or an unknown set.
    """
    if not 0 < scale <= MAX_SCALE:
        raise ValueError(f"Invalid scale: {scale!r} (must be in (0, {MAX_SCALE:g}])")
    if int(iters) != iters or iters < 1 or int(rounds) != rounds or rounds < 1:
        raise ValueError(f"Invalid iters/rounds: {iters!r}/{rounds!r} (must be integers >= 1)")
    sets = list(sets)
    if any(s not in ("16M", "gpt20M") for s in sets):
        raise ValueError(f"Invalid sets: {sets!r} (from '16M', 'gpt20M')")
    wanted = {n.lower() for n in only} if only else None
    bandwidth = measure_bandwidth(max(2**16, int(64 * 2**20 * scale)))
    width = max(16, int(round(320 * scale**0.5 / 16)) * 16)
    param_sets = {"16M": [(max(1, int(16 * 2**20 * scale)),)], "gpt20M": gpt_shapes(width=width)}
    results: list[Result] = []
    for case in CASES():
        if wanted and case.name.lower() not in wanted:
            continue
        for set_name in sets:
            if set_name == "16M" and case.matrices_only_16m:
                continue
            impls = ({"descent": case.descent} if case.descent else {}) | case.peers
            rows, opts, sets_of = [], {}, {}
            for impl, factory in impls.items():
                params = _params(param_sets[set_name])
                try:
                    opts[impl] = factory(params)
                    opts[impl].step()  # a peer that cannot run this set fails here, not mid-timing
                    sets_of[impl] = params
                except Exception as exc:  # reported, not fatal
                    log.warning("%s / %s on %s failed: %s", case.name, impl, set_name, exc)
                    opts.pop(impl, None)
                    rows.append(Result(case.name, impl, set_name, float("nan"), None, 0.0, note=f"failed: {exc}"))
            timed = _time_interleaved(opts, warmup, iters, rounds)
            for impl, ms in timed.items():
                n = sum(p.numel() for p in sets_of[impl])
                roof = None
                if case.bytes_per_param:
                    roof = 100 * (case.bytes_per_param * n / (bandwidth * 1e9)) / (ms / 1e3)
                note = ABOVE_ROOFLINE if roof is not None and roof > 100 else ""
                rows.append(Result(case.name, impl, set_name, ms, roof, _state_bytes(opts[impl], sets_of[impl]),
                                   note=note))
            rows.sort(key=lambda r: list(impls).index(r.impl))
            del opts, sets_of
            gc.collect()
            base = next((r.ms for r in rows if r.impl == "descent"), None)
            for r in rows:
                r.vs_descent = (r.ms / base) if base and r.ms == r.ms else None
            if case.descent is None:
                rows.append(Result(case.name, "descent", set_name, float("nan"), None, 0.0, note="not available"))
            results += rows
            if callback is not None:
                callback(case.name, set_name)
    return bandwidth, results


def format_table(bandwidth: float, results: list[Result]) -> str:
    """A plain-text table of :func:`run`'s results."""
    lines = [f"memory bandwidth (a.add_(b), fp32): {bandwidth:.1f} GB/s; threads: {torch.get_num_threads()}",
             f"{'optimizer':<10} {'params':<7} {'implementation':<28} {'ms/step':>9} {'x descent':>9} "
             f"{'roofline':>8} {'state B/p':>9}"]
    for r in results:
        roof = f"{r.roofline_pct:.0f}%" if r.roofline_pct is not None else "-"
        roof += "*" if r.note == ABOVE_ROOFLINE else ""
        ratio = f"{r.vs_descent:.2f}" if r.vs_descent is not None else "-"
        ms = f"{r.ms:.1f}" if r.ms == r.ms else "-"
        lines.append(f"{r.case:<10} {r.params:<7} {r.impl:<28} {ms:>9} {ratio:>9} {roof:>8} "
                     f"{r.state_bytes_per_param:>9.2f} {'' if r.note == ABOVE_ROOFLINE else r.note}".rstrip())
    if any(r.note == ABOVE_ROOFLINE for r in results):
        lines.append(f"* {ABOVE_ROOFLINE}")
    lines.append("roofline: bytes one step must move per parameter / the add_ bandwidth above (100 % = "
                 "memory-bound at that bandwidth)")
    return "\n".join(lines)


def as_dicts(results: list[Result]) -> list[dict[str, Any]]:
    """Results as plain dicts (for ``--json``)."""
    return [asdict(r) for r in results]
