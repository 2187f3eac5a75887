"""Low-bit optimizer states of FSDP2 parameters, quantized in the blocks of the global tensor.

A parameter sharded ``Shard(0)`` (what ``fully_shard`` makes) holds rows ``[r0, r1)``,
that is elements ``[s, e)`` of the flattened global tensor. Its quantized state is the
one-process state (:mod:`descent.lowbit.optim`) cut into shards:

* the codes: a DTensor sharded like the parameter, of the global shape
  :func:`descent.lowbit.state.codes_shape` (the parameter's shape for 8-bit codes,
  ``(rows, cols // 2)`` packed pairs for 4-bit), so each rank holds its own elements' codes;
* the absmax (one float32 per block of the *global* flattened tensor) and the code map:
  plain tensors, identical on every rank.

``torch.distributed.checkpoint`` therefore saves one global state and reshards it to any
world size, or to a whole tensor, exactly. A step (:func:`lowbit_step`) dequantizes the
local elements with their global blocks' absmax, runs the one-process math on them, takes
each block's absmax over its local elements, reduces those with one ``all_reduce(MAX)``
per bucket (a block that straddles ranks gets its true max; ranks without a block send
zeros) and quantizes with it. The result is the one-process step bit for bit: on CPU
float32/float64 the Numba kernel's operation order, elsewhere the reference path's.
On CUDA (rounding to nearest), shards whose elements are whole global blocks (a start on a
block boundary: rows of a multiple of 256 elements, as most weight matrices have) are stepped
by the one-process Triton kernels, one launch per bucket (:func:`_triton_local`), and only
share their absmax in the reduce; the others take the reference path, which agrees with the
kernels to a few ulps.
Replicated absmax costs each rank 4 bytes per block (256 elements for 8-bit states).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..lowbit.maps import code_map
from ..lowbit.quant import block_size, encode, pack, unpack
from ..lowbit.state import QuantState, codes_shape
from ._comm import traffic
from ._layout import _dtensor_module, is_sharded, local, local_range, shard_dim, shard_group

__all__ = ["lowbit_split", "lowbit_step"]

_FLOATS = (torch.float32, torch.float64)


def _bits_of(state: Mapping[str, Any], key: str) -> int:
    return 8 if state[key + "_qmap"].numel() == 256 else 4


def _wanted(opt: Any, algo: Any, group: Mapping[str, Any], p: Tensor, hp: Mapping[str, Any]) -> bool:
    """Whether ``p``'s state is (or becomes at this step) quantized, as the one-process step decides."""
    from ..lowbit.optim import _eligible

    state, key0 = opt.state[p], next(iter(algo.keys))
    if key0 + "_absmax" in state:
        return True
    if int(group.get("state_bits", 32)) == 32 or not _eligible(p, group):
        return False
    if algo.lazy:
        return key0 not in state and hp.get("momentum", 0) != 0
    return not state


def _check(owner: str, p: Tensor, bits: int, label: str) -> None:
    if shard_dim(p) != 0:
        raise ValueError(f"{owner}: {label} of shape {tuple(p.shape)} is sharded on dim {shard_dim(p)}; "
                         f"state_bits={bits} states are kept for Shard(0) (FSDP2's default)")
    if len(codes_shape(p.shape, bits)) != 2 and bits == 4:
        raise ValueError(f"{owner}: {label} of shape {tuple(p.shape)} cannot keep a 4-bit state under FSDP2: "
                         "its dim-0 slices have an odd number of elements (or it is 1-D), so code pairs would "
                         "straddle shards; use state_bits=8 for it (a param group of its own)")


def lowbit_split(opt: Any, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                 overrides: Mapping[str, Any] | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """Step the sharded parameters whose state is (or becomes) quantized; return the others' params, grads."""
    algo = opt._algo() if hasattr(opt, "_algo") else None
    key0 = next(iter(algo.keys)) if algo is not None else ""
    if algo is None or (int(group.get("state_bits", 32)) == 32
                        and not any(key0 + "_absmax" in opt.state.get(p, ()) for p in params)):
        return params, grads  # the common case, checked without building the hyperparameters
    hp = opt.declaration.hyper(group)
    if overrides:
        hp.update((k, v) for k, v in overrides.items() if v is not None)
    mine = [i for i, p in enumerate(params) if is_sharded(p) and _wanted(opt, algo, group, p, hp)]
    if not mine:
        return params, grads
    lowbit_step(opt, algo, group, [params[i] for i in mine], [grads[i] for i in mine], hp)
    rest = [i for i in range(len(params)) if i not in set(mine)]
    return [params[i] for i in rest], [grads[i] for i in rest]


def _start(p: Tensor) -> int:
    """The flat global index of this rank's first element."""
    return local_range(p)[0] * (p.numel() // p.shape[0])


def _entries(p: Tensor, key: str, signed: bool, bits: int, codes: Tensor | None = None) -> dict[str, Tensor]:
    """``key``'s state entries for a sharded ``p``: codes (zeros' codes unless given) as a DTensor."""
    lp = local(p)
    shape = codes_shape(p.shape, bits)
    if codes is None:
        codes = QuantState.zeros(lp.numel(), signed, bits, lp.device).codes
    codes = codes.view((lp.shape[0],) + shape[1:])
    stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
    dcodes = _dtensor_module().DTensor.from_local(codes, p.device_mesh, p.placements, run_check=False,
                                                  shape=torch.Size(shape), stride=stride)
    absmax = torch.zeros(-(-p.numel() // block_size(bits)), dtype=torch.float32, device=lp.device)
    return {key: dcodes, key + "_absmax": absmax, key + "_qmap": code_map(signed, bits, lp.device)}


def _dequantize(state: Mapping[str, Any], key: str, start: int, n: int, dtype: torch.dtype) -> Tensor:
    """Local elements ``[start, start + n)`` of the global state, each ``qmap[code] * absmax[block]``."""
    bits, qmap, absmax = _bits_of(state, key), state[key + "_qmap"], state[key + "_absmax"]
    codes = unpack(local(state[key]).reshape(-1), bits, n)
    block = torch.arange(start, start + n, device=codes.device) // block_size(bits)
    return qmap.to(device=codes.device, dtype=dtype)[codes] * absmax.to(dtype)[block]


def _kernel_math(algo: Any, p: Tensor, g: Tensor, vals: list[Tensor | None], hp: Mapping[str, Any],
                 step: int | None) -> list[Tensor | None]:
    """The update of :mod:`descent.kernels.lowbit` (its compiled per-element math, so its fused
    multiply-adds, whatever the slice's length), on float ``vals``; hyperparameters from the same
    builders as its launchers."""
    from ..kernels import lowbit as KL

    dt = p.numpy().dtype.type
    n, lr, wd, maximize = p.numel(), hp["lr"], hp.get("weight_decay", 0.0), bool(hp.get("maximize"))
    arrays = [t.numpy() for t in (p, g)]
    if algo.launcher == "adam_lowbit":
        b1, b2 = hp["beta1"], hp["beta2"]
        step_size, bc2 = KL.adam_step_terms([step], lr, b1, b2)
        KL._adam_math(*arrays, vals[0].numpy(), vals[1].numpy(), n,
                      *KL.adam_hp(dt, lr, b1, b2, hp["eps"], wd, maximize, hp.get("decoupled_weight_decay", False)),
                      dt(step_size[0]), dt(bc2[0]))
    elif algo.launcher == "lion_lowbit":
        KL._lion_math(*arrays, vals[0].numpy(), n, *KL.lion_hp(dt, lr, hp["beta1"], hp["beta2"], wd, maximize))
    else:
        first = vals[0] is None
        buf = torch.empty_like(p) if first else vals[0]
        KL._sgd_math(*arrays, buf.numpy(), n, *KL.sgd_hp(dt, lr, hp["momentum"], hp.get("dampening", 0.0), wd,
                                                        bool(hp.get("nesterov")), maximize), first)
        vals = [buf]
    return vals


def _rounded(group: Mapping[str, Any], p: Tensor, state: dict[str, Any]) -> tuple[Any, Any]:
    """``(master, write)``: the float weight a local step starts from, and how it goes back into the
    shard, as :mod:`descent.lowbit.optim` does it (stochastic rounding or Kahan summation for bf16);
    a Kahan compensation it creates is kept as a DTensor sharded like ``p``."""
    from ..lowbit import optim as LO
    from ._layout import like_param

    lp = local(p)
    rounding = LO._rounding(group, lp)
    view = {k: local(v) for k, v in state.items() if k == LO.KAHAN_KEY}

    def write(w: Tensor) -> None:
        LO._write_param(lp, w, view, rounding)
        if LO.KAHAN_KEY in view and LO.KAHAN_KEY not in state:
            state[LO.KAHAN_KEY] = like_param(view[LO.KAHAN_KEY], p)

    return (lambda: LO._master(lp, view, rounding)), write


def _local_update(algo: Any, group: Mapping[str, Any], p: Tensor, g: Tensor, state: dict[str, Any],
                  hp: dict[str, Any], step: int | None) -> list[Tensor | None]:
    """The one-process math on this rank's elements; returns each key's new value (float)."""
    from ..lowbit.optim import _kernel_ok

    lp, lg = local(p), local(g)
    dtype = lp.dtype if lp.dtype in _FLOATS else torch.float32
    master, write = _rounded(group, p, state)
    work = lp.detach().reshape(-1) if lp.dtype in _FLOATS else master().reshape(-1)
    start = _start(p)
    vals = [_dequantize(state, k, start, work.numel(), dtype) if k + "_absmax" in state else None
            for k in algo.keys]
    grad = lg.reshape(-1).to(dtype)
    if _kernel_ok(lp, lg) and work.data_ptr() == lp.data_ptr():
        vals = _kernel_math(algo, work, grad, vals, hp, step)
    else:
        out = algo.step(work, grad, vals, hp, step)
        if algo.lazy and out is not None:
            vals = [out]
    write(work)
    return vals


def _partial_absmax(value: Tensor, start: int, bits: int, blocks: int) -> Tensor:
    """Each global block's absmax over this rank's elements (0 for blocks it has none of)."""
    block = block_size(bits)
    out = torch.zeros(blocks, dtype=torch.float32, device=value.device)
    if value.numel():
        lead, tail = start % block, (-(start + value.numel())) % block
        padded = torch.cat([value.new_zeros(lead), value.abs(), value.new_zeros(tail)]).view(-1, block)
        out[start // block: start // block + padded.shape[0]] = padded.amax(dim=1).to(torch.float32)
    return out


def _quantize(value: Tensor, absmax: Tensor, qmap: Tensor, start: int, bits: int, step: int) -> Tensor:
    """Packed codes of local ``value`` with the global blocks' ``absmax`` (as :func:`descent.lowbit.quantize`)."""
    scale = torch.where(absmax == 0, torch.ones_like(absmax), absmax).to(value.dtype)
    index = torch.arange(start, start + value.numel(), device=value.device)
    block = index // block_size(bits)
    normalized = (value / scale[block]).to(torch.float32)
    return pack(encode(normalized, qmap, bits, absmax[block], index % block_size(bits), step), bits)


def _aligned(p: Tensor, bits: int) -> tuple[int, int] | None:
    """``(first block, blocks)`` of this rank's elements when they are whole global blocks (the start on a
    block boundary, the length a multiple of the block or running to the tensor's end), else ``None``."""
    block, start, n = block_size(bits), _start(p), local(p).numel()
    if start % block or (n % block and start + n != p.numel()):
        return None
    return start // block, -(-n // block)


def _own_blocks(p: Tensor, state: Mapping[str, Any], key: str) -> Tensor:
    """The global absmax with this rank's blocks (:func:`_aligned`) and zeros elsewhere, for the MAX reduce."""
    absmax = state[key + "_absmax"]
    first, count = _aligned(p, _bits_of(state, key))  # type: ignore[misc]
    out = torch.zeros_like(absmax)
    out[first:first + count] = absmax[first:first + count]
    return out


def _triton_local(algo: Any, group: Mapping[str, Any], params: list[Tensor], grads: list[Tensor],
                  states: list[dict[str, Any]], steps: list[int | None], bits_wanted: int,
                  hp: Mapping[str, Any]) -> set[int]:
    """Step with the Triton low-bit kernels (one launch per bucket, as one process does) the shards whose
    elements are whole global blocks (:func:`_aligned`: no block straddles ranks, so the local absmax is the
    block's), on CUDA (or under Triton's interpreter) with rounding to nearest; return their positions.
    Their codes and this rank's slice of the absmax are written; the MAX reduce then shares the absmax."""
    from ..kernels import triton as KT
    from ..lowbit import optim as LO

    key0, batches = next(iter(algo.keys)), {}
    for k, (p, g, s) in enumerate(zip(params, grads, states)):
        lp, lg = local(p), local(g)
        quantized = key0 + "_absmax" in s
        first = not quantized and algo.lazy and key0 not in s
        bits = _bits_of(s, key0) if quantized else bits_wanted
        if ((not quantized and not first) or LO._kernel_ok(lp, lg)
                or not LO._triton_ok(lp, lg, LO._rounding(group, lp)) or _aligned(p, bits) is None):
            continue
        if first:
            for key, signed in algo.keys.items():
                s.update(_entries(p, key, signed, bits))
        maps = tuple(s[key + "_qmap"].data_ptr() for key in algo.keys)
        batches.setdefault((bits, first, maps, steps[k] is None), []).append(k)
    for (bits, first, _, stepless), idx in batches.items():
        cols: dict[str, Any] = {}
        for key in algo.keys:
            cols[key] = [local(states[k][key]).reshape(-1) for k in idx]
            cols[key + "_absmax"] = [states[k][key + "_absmax"].narrow(0, *_aligned(params[k], bits)) for k in idx]
            cols[key + "_qmap"] = [states[k][key + "_qmap"] for k in idx]
        extra: dict[str, Any] = {} if stepless else {"steps": [steps[k] for k in idx]}
        if algo.lazy:
            extra["first"] = first
        getattr(KT, algo.launcher)([local(params[k]).view(-1) for k in idx],
                                   [local(grads[k]).reshape(-1) for k in idx], **cols, **extra, **hp)
    return {k for idx in batches.values() for k in idx}


def _state(opt: Any, algo: Any, group: dict[str, Any], p: Tensor, i: int) -> dict[str, Any]:
    """``p``'s state, made sharded on its first step (nothing yet for a lazy state); layout checked."""
    from ..lowbit.optim import counts_steps

    bits, key0, state = int(group.get("state_bits", 32)), next(iter(algo.keys)), opt.state[p]
    _check(type(opt).__name__, p, _bits_of(state, key0) if key0 + "_absmax" in state else bits,
           f"parameter {i} of the bucket")
    if not state and counts_steps(opt.declaration.steps, bits):
        state["step"] = torch.zeros((), dtype=torch.float32, device=local(p).device)
    if list(state) in ([], ["step"]) and not algo.lazy:
        for key, signed in algo.keys.items():
            state.update(_entries(p, key, signed, bits))
    return opt._state_of(p, group)


def lowbit_step(opt: Any, algo: Any, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                hp: dict[str, Any]) -> None:
    """Step sharded parameters with quantized state: local math, one ``all_reduce(MAX)`` of the
    blocks' absmax over the shard group, local quantization (see the module docstring)."""
    bits_wanted = int(group.get("state_bits", 32))
    states = [_state(opt, algo, group, p, i) for i, p in enumerate(params)]
    steps: list[int | None] = [None] * len(params)
    counted = [k for k, s in enumerate(states) if "step" in s]  # with_steps, or 4-bit (counts_steps)
    if counted:
        from ..optim._run import advance_steps

        for k, t in zip(counted, advance_steps([states[k]["step"] for k in counted])):
            steps[k] = t
    fast = _triton_local(algo, group, params, grads, states, steps, bits_wanted, hp)
    new = [[None] * len(algo.keys) if k in fast else _local_update(algo, group, p, g, s, hp, t)
           for k, (p, g, s, t) in enumerate(zip(params, grads, states, steps))]
    todo = []  # (param, state, key, signed, bits, value, step)
    for p, s, vals, t in zip(params, states, new, steps):
        for (key, signed), value in zip(algo.keys.items(), vals):
            if value is not None:
                todo.append((p, s, key, signed, _bits_of(s, key) if key + "_absmax" in s else bits_wanted, value, t))
    synced = [(states[k], key) for k in sorted(fast) for key in algo.keys]  # quantized already: absmax to share
    if not todo and not synced:
        return
    parts = [_partial_absmax(v, _start(p), b, -(-p.numel() // block_size(b))) for p, _, _, _, b, v, _ in todo]
    parts += [_own_blocks(params[k], states[k], key) for k in sorted(fast) for key in algo.keys]
    reduced, group = torch.cat(parts), shard_group(params[0])
    world = dist.get_world_size(group)
    if world > 1:
        dist.all_reduce(reduced, op=dist.ReduceOp.MAX, group=group)
        traffic["reduce"] += 2 * (world - 1) * reduced.numel() * reduced.element_size() // world  # as _comm counts
        traffic["calls"] += 1
    pieces = reduced.split([t.numel() for t in parts])
    for (s, key), absmax in zip(synced, pieces[len(todo):]):
        s[key + "_absmax"].copy_(absmax)
    for (p, s, key, signed, bits, value, t), absmax in zip(todo, pieces):
        qmap = s[key + "_qmap"] if key + "_qmap" in s else code_map(signed, bits, value.device)
        codes = _quantize(value, absmax, qmap, _start(p), bits, t or 0)
        if key + "_absmax" in s:
            local(s[key]).view(-1).copy_(codes)
            s[key + "_absmax"].copy_(absmax)
        else:  # a lazy state's first step (SGD's momentum buffer)
            s.update(_entries(p, key, signed, bits, codes))
            s[key + "_absmax"].copy_(absmax)
