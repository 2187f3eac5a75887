"""Where a parameter's numbers live: DTensor introspection shared by the distributed step.

A DTensor parameter (what ``torch.distributed.fsdp.fully_shard`` makes) reports the
global shape, but its storage is the local shard (``to_local()``; its ``data_ptr()`` is 0).
descent steps the local shards and treats a DTensor as a layout: a one-dimensional
device mesh with ``Shard(d)`` or ``Replicate()`` placements (FSDP2's default is
``Shard(0)``). Anything else is refused, before any collective, with the same error on
every rank.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor



def _dtensor_module() -> Any:
    """``torch.distributed.tensor`` if something imported it (no DTensor can exist otherwise), else None.

    Importing it costs about a second, so descent never imports it just to ask.
    """
    return sys.modules.get("torch.distributed.tensor")

__all__ = ["is_dtensor", "any_dtensor", "local", "is_sharded", "shard_dim", "shard_group", "shard_rank",
           "shard_count", "local_range", "shard_shape", "local_slice", "like_param", "sharded_like", "check_bucket"]


def is_dtensor(t: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor``."""
    mod = _dtensor_module()
    return mod is not None and isinstance(t, mod.DTensor)


def any_dtensor(tensors: Sequence[Any]) -> bool:
    """True when any entry is a DTensor."""
    mod = _dtensor_module()
    return mod is not None and any(isinstance(t, mod.DTensor) for t in tensors)


def local(t: Any) -> Any:
    """The local shard of a DTensor (dense storage a kernel can take), any other value unchanged.

    Example:
        >>> import torch
        >>> t = torch.ones(2)
        >>> local(t) is t
        True
    """
    return t.to_local() if is_dtensor(t) else t


def shard_dim(p: Tensor) -> int | None:
    """The sharded dimension of a DTensor on a 1-D mesh, or None (replicated or a plain tensor)."""
    if not is_dtensor(p):
        return None
    place = p.placements[0]
    return place.dim if isinstance(place, _dtensor_module().Shard) else None


def is_sharded(p: Tensor) -> bool:
    """True for a DTensor whose numbers are split across ranks (a ``Shard`` placement)."""
    return shard_dim(p) is not None


def shard_group(p: Tensor):  # -> torch.distributed.ProcessGroup
    """The process group of a DTensor's (1-D) device mesh."""
    return p.device_mesh.get_group()


def shard_count(p: Tensor) -> int:
    """Number of ranks the DTensor's mesh spans (1 for a plain tensor)."""
    return p.device_mesh.size() if is_dtensor(p) else 1


def shard_rank(p: Tensor) -> int:
    """This rank's coordinate in the DTensor's mesh (0 for a plain tensor)."""
    return int(p.device_mesh.get_local_rank()) if is_dtensor(p) else 0


def local_range(p: Tensor, rank: int | None = None) -> tuple[int, int]:
    """``(offset, size)`` along :func:`shard_dim` of the shard held by ``rank`` (default: this rank).

    Follows ``torch.chunk`` as DTensor's ``Shard`` does: chunks of ``ceil(n / N)``, the
    last ones short or empty.
    """
    dim = shard_dim(p)
    if dim is None:
        return 0, p.shape[0] if p.ndim else 1
    n, count = p.shape[dim], shard_count(p)
    rank = shard_rank(p) if rank is None else rank
    chunk = -(-n // count) if n else 0
    start = min(rank * chunk, n)
    return start, min(chunk, n - start)


def shard_shape(p: Tensor, rank: int) -> torch.Size:
    """The shape of the shard of ``p`` that ``rank`` holds (:func:`local_range` along :func:`shard_dim`)."""
    shape = list(p.shape)
    shape[shard_dim(p)] = local_range(p, rank)[1]
    return torch.Size(shape)


def local_slice(full: Tensor, p: Tensor) -> Tensor:
    """The part of a full-size tensor that this rank's shard of ``p`` covers (a view)."""
    dim = shard_dim(p)
    if dim is None:
        return full
    start, size = local_range(p)
    return full.narrow(dim, start, size)


def sharded_like(opt: Any, key: str, value: Any, p: Tensor) -> bool:
    """Whether state ``key`` is kept sharded with ``p``'s layout: a tensor of ``p``'s shape that is not
    one of the optimizer's preconditioners (``opt.preconditioner_keys``, prefixes: a square matrix's
    Shampoo/SOAP statistics have ``p``'s shape too, and live whole on one rank)."""
    return (isinstance(value, Tensor) and value.ndim > 0 and value.shape == p.shape
            and not key.startswith(tuple(getattr(opt, "preconditioner_keys", ()))))


def like_param(value: Tensor, p: Tensor) -> Tensor:
    """Wrap a local shard shaped like ``p``'s as a DTensor with ``p``'s layout (for optimizer state)."""
    if not is_dtensor(p) or is_dtensor(value):
        return value
    return _dtensor_module().DTensor.from_local(value, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                              stride=p.stride())


def check_bucket(params: Sequence[Tensor], owner: str, where: Sequence[str] | None = None) -> None:
    """Refuse layouts descent cannot step, naming the parameter; the same decision on every rank.

    Accepted: all parameters plain tensors, or all DTensors on one 1-D device mesh with a
    ``Shard(d)`` or ``Replicate()`` placement. Nothing here communicates, so an error is
    raised on every rank (the global shapes and placements are the same everywhere).

    Raises:
        ValueError: for a mix of DTensors and plain tensors, several meshes, a mesh of more
            than one dimension, or a ``Partial``/strided placement.
    """
    kinds = [is_dtensor(p) for p in params]
    if not any(kinds):
        return
    label = (lambda i: where[i]) if where is not None else (lambda i: f"parameter {i}")
    if not all(kinds):
        i = kinds.index(False)
        raise ValueError(f"{owner}: {label(i)} is a plain tensor in a bucket of DTensors; shard every parameter "
                         "of the model (fully_shard the root module too) or none")
    mesh, mod = params[0].device_mesh, _dtensor_module()
    for i, p in enumerate(params):
        if p.device_mesh != mesh:
            raise ValueError(f"{owner}: {label(i)} lives on another device mesh than {label(0)}; "
                             "put parameters of different meshes in different param groups")
        if p.device_mesh.ndim != 1:
            raise ValueError(f"{owner}: {label(i)} is on a {p.device_mesh.ndim}-D device mesh; descent steps "
                             "DTensors on 1-D meshes (FSDP2 without HSDP)")
        place = p.placements[0]
        if not (type(place) is mod.Shard or isinstance(place, mod.Replicate)):
            raise ValueError(f"{owner}: {label(i)} has placement {place}; descent steps Shard(d) and Replicate()")

