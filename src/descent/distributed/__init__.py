"""descent on ``torch.distributed``: DTensor (FSDP2) parameters, and the collectives the steps need.

What works with which wrapper is in the README's "Distributed training" section. In
short: every descent optimizer runs under ``DistributedDataParallel`` and
``ZeroRedundancyOptimizer`` as in one process (they hand it plain tensors; K-FAC averages
its Kronecker factors over a DDP model's ranks, :mod:`._kfac`); under FSDP2
(``fully_shard``, DTensor parameters) the optimizer's bucket loop calls
:func:`step_bucket`, which steps elementwise optimizers on the local shards, reduces the
whole-tensor statistics of LAMB, Adafactor and MARS once per bucket, gives each Muon matrix
to one owner rank for Newton–Schulz, and keeps each Shampoo/SOAP matrix with its
preconditioners on one owner rank (:mod:`._precond`). Their collectives are asynchronous and a
bucket goes in waves, so communication overlaps compute (:mod:`._comm`; ``DESCENT_OVERLAP=0``
makes them blocking, with the same numbers).

Example:
    >>> import torch, descent
    >>> from descent.distributed import local, assign_owners
    >>> local(torch.ones(2)).tolist()
    [1.0, 1.0]
    >>> assign_owners([9.0, 1.0, 5.0], 2)   # Newton-Schulz costs -> owner ranks
    [0, 1, 1]
"""

from ._comm import any_across, assign_owners, exchange, reset_traffic, sum_across, traffic
from ._layout import any_dtensor, check_bucket, is_dtensor, is_sharded, like_param, local, local_slice, shard_group
from ._step import MODES, mode_of, step_bucket
from ._checks import nonfinite_indices, shard_like

__all__ = ["MODES", "any_across", "any_dtensor", "assign_owners", "check_bucket", "exchange", "is_dtensor",
           "is_sharded", "like_param", "local", "local_slice", "mode_of", "nonfinite_indices", "reset_traffic",
           "shard_group", "shard_like", "step_bucket", "sum_across", "traffic"]
