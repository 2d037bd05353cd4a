"""Distributed helpers that degrade to no-ops in a single process.

All functions are safe to call without ``paddle.distributed.init_parallel_env()``: with one process
they return the input unchanged (reductions) or trivial values (rank 0, world size 1).
"""

from __future__ import annotations

import paddle
import paddle.distributed as pdist


def get_world_size() -> int:
    """Number of training processes (1 when not launched with ``paddle.distributed.launch``)."""
    try:
        return max(int(pdist.get_world_size()), 1)
    except Exception:  # pragma: no cover - distributed runtime unavailable
        return 1


def get_rank() -> int:
    """Rank of this process (0 in a single process)."""
    try:
        return int(pdist.get_rank())
    except Exception:  # pragma: no cover - distributed runtime unavailable
        return 0


def is_main_process() -> bool:
    """True on rank 0 (the process that logs, evaluates and writes checkpoints)."""
    return get_rank() == 0


def _is_initialized() -> bool:
    try:
        return bool(pdist.is_initialized())
    except Exception:  # pragma: no cover - older Paddle
        return get_world_size() > 1


def all_reduce_sum(tensor: paddle.Tensor) -> paddle.Tensor:
    """Sum of ``tensor`` over all processes; returns a new tensor (the input is left untouched).

    With one process the input itself is returned. The result carries no gradient across processes
    (use it for normalisers, not for values you back-propagate through).
    """
    if get_world_size() == 1 or not _is_initialized():
        return tensor
    out = tensor.detach().clone()
    pdist.all_reduce(out, op=pdist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: paddle.Tensor) -> paddle.Tensor:
    """Mean of ``tensor`` over all processes (the input itself with one process)."""
    world = get_world_size()
    if world == 1 or not _is_initialized():
        return tensor
    return all_reduce_sum(tensor) / float(world)


def init_distributed() -> int:
    """Initialise Paddle's collective environment when started by ``paddle.distributed.launch`` with
    more than one process (gloo on CPU, NCCL on GPU); returns the world size. Safe to call twice."""
    world = get_world_size()
    if world > 1 and not _is_initialized():
        pdist.init_parallel_env()
    return world


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` of rank ``src`` on every rank (the object itself with one process)."""
    if get_world_size() == 1 or not _is_initialized():
        return obj
    box = [obj]
    pdist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: object) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` with one process)."""
    if get_world_size() == 1 or not _is_initialized():
        return [obj]
    out: list = []
    pdist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for all processes (no-op with one process)."""
    if get_world_size() > 1 and _is_initialized():
        pdist.barrier()
