"""Data-parallel plumbing: the same code runs alone, under ``paddle.distributed.launch`` on GPUs
(NCCL) or on a CPU box (gloo). Everything else asks this module for rank and world size."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from typing import Any

import numpy as np
import paddle
import paddle.distributed as dist

_INITIALISED = False


class DeviceError(ValueError):
    """The installed Paddle or the GPU cannot run what was asked (one line, no traceback)."""


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


def set_train_mode(model: paddle.nn.Layer, mode: bool = True) -> None:
    """Switch training/eval mode through the model's own ``train()``.

    ``paddle.DataParallel.train()`` sets ``training`` on every sublayer directly and never calls
    the wrapped model's ``train()``, so a model that keeps part of itself in eval mode (a frozen
    encoder) would lose that; switching the unwrapped model keeps its override.
    """
    inner = unwrap_model(model)
    inner.train(mode)
    model.training = mode


def local_world_size() -> int:
    """Processes of this job on this node (``PADDLE_LOCAL_SIZE`` under the launcher, else 1)."""
    return max(1, int(os.environ.get("PADDLE_LOCAL_SIZE", "1")))


def check_paddle_build(compiled_with_cuda: bool | None = None, installed: set[str] | None = None,
                       visible_gpus: str | None = None) -> None:
    """Refuse a CPU Paddle where a GPU one was meant (Paddle itself only warns and trains on the CPU).

    Two cases: ``paddlepaddle`` (CPU wheel) installed beside ``paddlepaddle-gpu`` — both provide the
    ``paddle`` package and whichever was installed last wins — and ``CUDA_VISIBLE_DEVICES`` naming
    GPUs for a CPU build. Arguments default to the real environment (injectable for tests).
    """
    if compiled_with_cuda is None:
        compiled_with_cuda = paddle.is_compiled_with_cuda()
    if compiled_with_cuda:
        return
    if installed is None:
        installed = set()
        for name in ("paddlepaddle", "paddlepaddle-gpu"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # not installed
                importlib.metadata.version(name)
                installed.add(name)
    if visible_gpus is None:
        visible_gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    if "paddlepaddle-gpu" in installed:
        raise DeviceError("the imported paddle is a CPU build although paddlepaddle-gpu is installed (the CPU wheel "
                          "paddlepaddle shadows it): pip uninstall -y paddlepaddle paddlepaddle-gpu && pip install "
                          "paddlepaddle-gpu")
    if visible_gpus and visible_gpus.strip() not in ("", "-1"):
        raise DeviceError(f"CUDA_VISIBLE_DEVICES={visible_gpus} asks for GPUs but the installed paddle is a CPU build: "
                          "install paddlepaddle-gpu, or unset CUDA_VISIBLE_DEVICES to train on the CPU")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank: one decision for all ranks even when their file systems
    differ (node-local disks in a multi-node job)."""
    return all_gather_objects(obj)[0]


def check_amp_dtype(dtype: str, capability: tuple[int, int] | None = None) -> None:
    """bfloat16 needs compute capability 8.0 (Ampere) or newer; below it Paddle's bf16 kernels fall
    back to float32 while the run still reports AMP. ``capability`` defaults to the current GPU's."""
    if dtype != "bfloat16":
        return
    if capability is None:
        capability = paddle.device.cuda.get_device_capability()
    if tuple(capability) < (8, 0):
        raise DeviceError(f"--amp_dtype bfloat16 needs a GPU of compute capability >= 8.0, this one is "
                          f"{capability[0]}.{capability[1]}: use --amp_dtype float16")


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = []
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_across_ranks(values: paddle.Tensor) -> np.ndarray:
    """The element-wise mean over ranks of a 1-D tensor (one small all-reduce and one copy to the
    host): the logged losses of the last steps, and a decision (finite or not) that every rank
    takes alike."""
    total = values.detach().astype("float32")
    if is_distributed():
        total = total.clone()
        dist.all_reduce(total)
    return total.numpy().astype(np.float64) / get_world_size()
