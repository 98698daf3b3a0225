"""Atomic writes: write to a temporary file in the same folder, then ``os.replace``.

A reader (or a rerun after ``kill -9``) sees either the old file or the complete new one, never
a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import IO, Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path``; rename over ``path`` only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: str, array: np.ndarray) -> None:
    """``np.save`` atomically (uncompressed ``.npy``, so readers can memory-map it)."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def atomic_write_csv(path: str, frame: Any, **kwargs: Any) -> None:
    """``DataFrame.to_csv`` atomically (index off unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, **kwargs)


def replace_dir(tmp: str, final: str) -> None:
    """Move the finished directory ``tmp`` to ``final`` (same filesystem).

    An existing ``final`` is first renamed aside, then removed, so ``final`` is at every moment
    either the old complete directory or the new one (a directory cannot be renamed over a
    non-empty one in a single step).
    """
    old = None
    if os.path.exists(final):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old.", dir=os.path.dirname(os.path.abspath(final)))
        os.rename(final, os.path.join(old, "d"))
    os.rename(tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)
