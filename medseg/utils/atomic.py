"""Atomic writes: write to a temporary file in the same folder, then ``os.replace``.

A reader (or a rerun after ``kill -9``) sees either the old file or the complete new one, never
a half-written file. By default the data are also fsynced before the rename, so the new file
survives a power cut too; ``durable=False`` skips that wait for derived files that a rerun checks
and rebuilds anyway (the prepare cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", durable: bool = True, **kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path``; rename over ``path`` only if the block succeeds
    (after an fsync when ``durable``)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str, durable: bool = True) -> None:
    with atomic_open(path, "w", durable=durable, encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: str, obj: Any, durable: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", durable=durable)


def read_json_object(path: str, error: type[Exception], what: str = "JSON file") -> dict | None:
    """The JSON object in ``path`` (the counterpart of :func:`atomic_write_json` for records and
    manifests); None when the file does not exist; ``error`` naming the file when it cannot be read
    or does not hold an object."""
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise error(f"{path}: unreadable {what} ({err})") from err
    if not isinstance(value, dict):
        raise error(f"{path}: the {what} is not a JSON object")
    return value


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


@contextlib.contextmanager
def staged_dir(final: str) -> Iterator[str]:
    """A temporary sibling of ``final`` to fill; on success it replaces ``final`` whole
    (:func:`replace_dir`), on any error it is removed and ``final`` is left as it was."""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp.", dir=parent)
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (weights can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
