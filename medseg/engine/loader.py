"""The series DataLoader: worker count from the cores a process owns, one OpenCV thread per
worker, and a clear message when ``/dev/shm`` cannot hold the batches in flight.

Paddle's worker processes hand batches to the trainer through shared memory (``/dev/shm``);
Docker gives a container 64 MB of it by default, which a few prefetched CT series exceed, and the
failure then shows up as a worker dying with a bus error. Checking the need up front turns that
into one line saying what to change.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, Iterator

import numpy as np
import paddle

from medseg.data.collate import collate_series
from medseg.engine import distributed as dist

SHM_PATH = "/dev/shm"
PREFETCH_FACTOR = 2  # paddle.io.DataLoader's default: batches queued per worker
MAX_AUTO_WORKERS = 8  # more rarely helps one process and multiplies shared memory and RAM


class SharedMemoryError(ValueError):
    """``/dev/shm`` is too small for the batches the workers keep in flight."""


def available_cores() -> int:
    """Cores this process may run on (the affinity mask of a container/SLURM job, not the host)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows have no affinity mask
        return os.cpu_count() or 1


def default_num_workers(cores: int | None = None, local_world: int | None = None) -> int:
    """Workers per training process: the cores this process gets on its node minus one for the
    process itself (which on a GPU launches kernels and on a CPU runs the step), at most
    ``MAX_AUTO_WORKERS``. 0 (load in the main process) when a process has a single core."""
    cores = available_cores() if cores is None else cores
    local_world = dist.local_world_size() if local_world is None else local_world
    per_process = max(1, cores // max(1, local_world))
    return int(min(MAX_AUTO_WORKERS, per_process - 1))


def _opencv():
    try:
        import cv2
    except ImportError:  # OpenCV is optional for loading cached series
        return None
    return cv2


def worker_init(_worker_id: int) -> None:
    """One OpenCV thread per worker: the workers already use every core, and OpenCV's own thread
    pool per worker would oversubscribe them (workers × cores threads)."""
    cv2 = _opencv()
    if cv2 is not None:
        cv2.setNumThreads(1)


def batch_nbytes(dataset, batch_size: int) -> int:
    """Bytes of the largest batch: the arrays of one collated item (what the workers put in shared
    memory: uint8 slices, uint8 crops for augmentation on the device, or float32 slices) per slice × the
    most slices an item can hold (the longest series, or ``max_slices``) × batch size."""
    batch = collate_series([dataset[(0, 0)]])
    slices = max(1, len(batch["slice_ids"][0]))
    per_slice = sum(v.nbytes for v in batch.values() if isinstance(v, np.ndarray)) / slices
    longest = slices
    num_slices = getattr(dataset, "num_slices", None)
    if num_slices is not None:
        longest = max(longest, max((num_slices(i) for i in range(len(dataset))), default=0))
        if getattr(dataset, "max_slices", None):
            longest = min(longest, int(dataset.max_slices))
    return int(per_slice * longest * batch_size)


def check_shared_memory(num_workers: int, nbytes: int, path: str = SHM_PATH, free: int | None = None) -> None:
    """Raise :class:`SharedMemoryError` when ``num_workers`` × prefetch batches of ``nbytes`` do
    not fit in the free space of ``path`` (``free`` injectable for tests)."""
    if num_workers <= 0:
        return
    if free is None:
        if not os.path.isdir(path):
            return  # no /dev/shm (not Linux): Paddle uses other means
        free = shutil.disk_usage(path).free
    need = num_workers * PREFETCH_FACTOR * nbytes
    if need > free:
        raise SharedMemoryError(
            f"{path}: {free / 2**20:.0f} MB free but {num_workers} loader workers x {PREFETCH_FACTOR} batches of "
            f"{nbytes / 2**20:.0f} MB need {need / 2**20:.0f} MB: run the container with a larger --shm-size "
            f"(e.g. docker run --shm-size=8g), or use fewer --num_workers (0 needs none), or --no_shared_memory")


def make_loader(dataset, batch_sampler, num_workers: int, use_shared_memory: bool = True) -> paddle.io.DataLoader:
    """A DataLoader of collated series batches with the worker setup above."""
    extra: dict[str, Any] = {}
    if num_workers > 0:
        # Set in the parent too, before the workers fork: a forked worker that imported OpenCV
        # or resized its thread pool itself deadlocked here when the parent had other threads
        # running (VisualDL's writer; the training loader's reader during an evaluation).
        # worker_init repeats it for the spawn start method.
        cv2 = _opencv()
        if cv2 is not None:
            cv2.setNumThreads(1)
        extra["worker_init_fn"] = worker_init
    return paddle.io.DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_series,
                                num_workers=num_workers, use_shared_memory=use_shared_memory, **extra)


@contextlib.contextmanager
def worker_batches(loader: paddle.io.DataLoader) -> Iterator[Iterator[Any]]:
    """Iterate ``loader`` and stop its worker processes when the block ends, also mid-epoch.

    Paddle 3.3's multi-process iterator stops its workers only when it runs out or is deleted,
    and its reader thread keeps it referenced, so a loop left early (an evaluation zipped with its
    keys, the training loop at its last iteration) left its workers alive until the interpreter
    exited: one more process per evaluation over a long run. The iterator has no public close, so
    this calls its shutdown method (a no-op when it already ran out; absent with num_workers 0).
    """
    batches = iter(loader)
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_try_shutdown_all", None)
        if shutdown is not None:
            shutdown()
