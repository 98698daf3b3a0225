"""Data-parallel plumbing: the same code runs alone, under ``paddle.distributed.launch`` on GPUs
(NCCL) or on a CPU box (gloo). Everything else asks this module for rank and world size."""

from __future__ import annotations

import os
from typing import Any

import paddle
import paddle.distributed as dist

_INITIALISED = False


def launched_world_size() -> int:
    """World size announced by the launcher (1 when run as a plain script)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def init_distributed() -> bool:
    """Initialise the parallel environment once when launched with more than one process."""
    global _INITIALISED
    if launched_world_size() > 1 and not _INITIALISED:
        dist.init_parallel_env()
        _INITIALISED = True
    return _INITIALISED


def is_distributed() -> bool:
    return _INITIALISED and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if _INITIALISED else 0


def get_world_size() -> int:
    return dist.get_world_size() if _INITIALISED else 1


def is_main() -> bool:
    """Rank 0 logs to the console, saves checkpoints and writes outputs."""
    return get_rank() == 0


def wrap_model(model: paddle.nn.Layer) -> paddle.nn.Layer:
    """``paddle.DataParallel`` (gradients all-reduced in backward) when distributed."""
    return paddle.DataParallel(model) if is_distributed() else model


def unwrap_model(model: paddle.nn.Layer) -> paddle.nn.Layer:
    return model._layers if isinstance(model, paddle.DataParallel) else model


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = []
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_across_ranks(value: paddle.Tensor) -> float:
    """The mean of a scalar over ranks (one tiny all-reduce): the logged loss of a step, and a
    decision (finite or not) that every rank takes alike."""
    if not is_distributed():
        return float(value)
    total = value.detach().astype("float32").clone()
    dist.all_reduce(total)
    return float(total) / get_world_size()

