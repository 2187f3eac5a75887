"""Compile every Triton kernel of descent for an NVIDIA GPU without one (a helper of tests/test_triton_compile.py).

``python tests/triton_aot.py capture SPECS`` (with ``TRITON_INTERPRET=1``): runs each Triton launcher on small
CPU buckets through the interpreter, recording every launch's kernel, argument types and constexpr values,
and writes the distinct ones to ``SPECS`` (JSON).

``python tests/triton_aot.py compile SPECS ARCH`` (without the interpreter): compiles each recorded launch
with ``triton.compile`` for ``GPUTarget("cuda", ARCH, 32)`` down to PTX and a cubin (Triton's bundled
``ptxas``), as the first launch on such a GPU would, and prints ``compiled N`` or the failures. The
interpreter runs the kernels' arithmetic but not Triton's type checks and code generation; this does.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys

_TYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64", "int64": "i64",
          "int32": "i32", "uint8": "u8", "int8": "i8", "bool": "i1"}
_OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")


def _arg_type(value):  # noqa: ANN001, ANN202
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + _TYPES[str(value.dtype).removeprefix("torch.")]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unexpected kernel argument {value!r}")


def _constexpr(value):  # noqa: ANN001, ANN202
    import triton.language as tl

    return {"dtype": str(value)} if isinstance(value, tl.dtype) else value


def capture(path: str) -> None:
    import torch
    import triton.runtime.interpreter as interp

    specs: dict[str, dict] = {}
    real_run = interp.InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):  # noqa: ANN001, ANN202
        fn = self.fn
        params = inspect.signature(fn).parameters
        bound = dict(zip(self.arg_names, args)) | {k: v for k, v in kwargs.items() if k in params}
        signature, constexprs = {}, {}
        for name, p in params.items():
            value = bound[name]
            if "constexpr" in str(p.annotation) or value is None:
                signature[name], constexprs[name] = "constexpr", _constexpr(value)
            else:
                signature[name] = _arg_type(value)
        spec = {"module": fn.__module__, "name": fn.__name__, "signature": signature, "constexprs": constexprs,
                "options": {k: v for k, v in kwargs.items() if k in _OPTIONS}}
        specs[json.dumps(spec, sort_keys=True)] = spec
        return real_run(self, *args, grid=grid, warmup=warmup, **kwargs)

    interp.InterpretedFunction.run = run
    _exercise(torch)
    with open(path, "w") as f:
        json.dump(list(specs.values()), f)
    print(f"captured {len(specs)}")


def _exercise(torch) -> None:  # noqa: ANN001 - every launcher, bf16 (the rounding paths) and fp32 low-bit
    from descent.kernels import triton as KT
    from descent.lowbit import QuantState

    bf = torch.bfloat16
    shapes = [(5, 33), (300,)]
    rand = lambda dt=bf: [torch.randn(s).to(dt) for s in shapes]  # noqa: E731
    pos = lambda dt=bf: [torch.rand(s).add(0.5).to(dt) for s in shapes]  # noqa: E731
    KT.lion(rand(), rand(), rand(), lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.1)
    KT.sophia(rand(), rand(), rand(), pos(), lr=0.1, beta1=0.9, rho=0.04, bs=8.0, weight_decay=0.1)
    KT.rmsprop(rand(), rand(), pos(), None, None, lr=0.01)
    KT.rmsprop(rand(), rand(), pos(), rand(), rand(), lr=0.01, weight_decay=0.1, momentum=0.9, centered=True)
    KT.lamb(rand(), rand(), rand(), pos(), steps=[3, 3], lr=0.01, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01)
    p = rand()
    rows = [torch.zeros(5, 1, dtype=bf), None]
    cols = [torch.zeros(1, 33, dtype=bf), None]
    var = [None, torch.zeros(300, dtype=bf)]
    KT.adafactor(p, rand(), rows, cols, var, rand(), steps=[2, 2], lr=None, relative_step=True, warmup_init=False,
                 decay_rate=-0.8, eps1=1e-30, eps2=1e-3, clip_threshold=1.0, beta1=0.9, weight_decay=0.1,
                 scale_parameter=True, maximize=False)
    for dt in (torch.float32, bf):
        for bits in (8, 4):
            ps, gs = [torch.randn(4100).to(dt)], [torch.randn(4100).to(dt)]
            m, v = QuantState.zeros(4100, True, bits), QuantState.zeros(4100, False, bits)
            KT.adam_lowbit(ps, gs, [m.codes], [m.absmax], [m.qmap], [v.codes], [v.absmax], [v.qmap], steps=[3],
                           lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled_weight_decay=True)
            KT.lion_lowbit(ps, gs, [m.codes], [m.absmax], [m.qmap], lr=1e-3, beta1=0.9, beta2=0.99, steps=[3])
            KT.sgd_lowbit(ps, gs, [m.codes], [m.absmax], [m.qmap], lr=0.1, momentum=0.9, nesterov=True, first=True)


def compile_all(path: str, arch: int) -> int:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    dtypes = {str(getattr(tl, n)): getattr(tl, n) for n in dir(tl) if isinstance(getattr(tl, n), tl.dtype)}
    failures = []
    with open(path) as f:
        specs = json.load(f)
    for spec in specs:
        fn = getattr(importlib.import_module(spec["module"]), spec["name"])
        constexprs = {k: dtypes[v["dtype"]] if isinstance(v, dict) else v for k, v in spec["constexprs"].items()}
        label = f"{spec['name']} {constexprs}"
        try:
            kernel = triton.compile(ASTSource(fn=fn, signature=spec["signature"], constexprs=constexprs),
                                    target=GPUTarget("cuda", arch, 32), options=spec["options"])
            if "cubin" not in kernel.asm or not kernel.asm["cubin"]:
                failures.append(f"{label}: no cubin")
        except Exception as exc:  # noqa: BLE001 - reported with the kernel's name
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:600]}")
    for line in failures:
        print("FAILED", line)
    print(f"compiled {len(specs) - len(failures)} of {len(specs)}")
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1] == "capture":
        capture(sys.argv[2])
    else:
        sys.exit(compile_all(sys.argv[2], int(sys.argv[3])))
