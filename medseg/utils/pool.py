"""A process pool for long jobs over many files: fork-server workers with a preloaded module, a
progress bar, results in order or as they finish, and a worker's exception naming its item.

A thin layer on :mod:`multiprocessing` rather than ``concurrent.futures``: the latter has no
unordered map in chunks (a 750k-file scan would submit one future per file).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from multiprocessing.pool import Pool
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Worker processes by default: one per core."""
    return max(1, os.cpu_count() or 1)


def _init_worker(extra: Callable[[], None] | None) -> None:
    """Pool initializer. On Linux a worker gets SIGKILL when its parent dies, so a killed run
    leaves no orphan writing into the output folder while the rerun starts. Ctrl-C is the
    parent's to handle. ``extra``: the caller's own per-worker set-up."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if extra is not None:
        extra()


@contextlib.contextmanager
def worker_pool(workers: int, preload: Sequence[str] = (), initializer: Callable[[], None] | None = None) -> Iterator[Pool | None]:
    """A pool of ``workers`` processes, None for in-process work (``workers`` <= 1).

    Use one pool for a whole run: each worker start costs tens of ms of CPU (fork, bootstrap,
    first imports), paid again by every extra pool. forkserver, not fork: a forked child inherits
    the locks of threads the parent runs (OpenCV's pool, Paddle's OpenMP when the caller imported
    it) and can deadlock. The fork server is a clean process started once, with the ``preload``
    modules imported, so workers still start fast. (Python 3.11's fork server imports the preload
    with its default ``sys.path``: the installed package, or the current folder. Where it cannot,
    each worker imports the package itself, ~1.3 s more per worker.) ``initializer`` (picklable)
    runs once in every worker.
    """
    if workers <= 1:
        yield None
        return
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    with ctx.Pool(workers, initializer=_init_worker, initargs=(initializer,)) as pool:
        yield pool


def _call(func: Callable[[T], R], name: Callable[[T], str] | None, item: T) -> R:
    """``func(item)``; an exception keeps its type (so callers still catch it) and gains a note
    naming the item, which survives the trip back from a worker and shows in the traceback."""
    try:
        return func(item)
    except Exception as exc:
        exc.add_note(f"while processing {name(item) if name is not None else item}")
        raise


def parallel_map(func: Callable[[T], R], items: Sequence[T], pool: Pool | None, desc: str, unit: str, chunksize: int = 1,
                 ordered: bool = False, name: Callable[[T], str] | None = None) -> Iterator[R]:
    """Results of ``func`` over ``items`` with a progress bar: in the order of ``items`` when
    ``ordered``, else as they finish. With a pool the work is submitted now, so the caller can do
    something else before iterating; without one (or for one item) it runs in-process as the
    results are taken. ``name`` (picklable, e.g. ``operator.attrgetter``) says how an item is
    named in an error note; default ``str(item)``."""
    call = partial(_call, func, name)
    if pool is None or len(items) <= 1:
        results: Iterable[R] = map(call, items)
    else:
        results = (pool.imap if ordered else pool.imap_unordered)(call, items, chunksize=chunksize)
    return with_progress(results, len(items), desc, unit)


def with_progress(results: Iterable[Any], total: int, desc: str, unit: str) -> Iterator[Any]:
    """``results`` passed through, one progress-bar step per result."""
    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5)
    try:
        for result in results:
            yield result
            bar.update()
    finally:
        bar.close()
