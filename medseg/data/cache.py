"""Series cache: ``cache/<safe_series_id>.npy`` (uint8 [S, H, W, C]) plus a ``.json`` record.

Why uncompressed ``.npy``: the loader reads a whole series per item; ``np.load(mmap_mode="r")``
maps it without decompression (the original's ``savez_compressed`` spent most of its load time
inflating). The record is written after the array, both atomically, so a record whose array
matches it marks a finished series; a rerun after ``kill -9`` skips exactly those. Both are
fsynced only on request (``durable``): the cache is derived data, and a rerun after a power cut
finds a file the disk lost or cut short (no record, or an array shorter than its header says) and
rebuilds that series, so the default does not wait for the disk on every series.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from medseg.utils.atomic import atomic_save_npy_stream, atomic_write_json

CACHE_DIR = "cache"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_NAME = 120


def safe_name(identifier: str) -> str:
    """A file-name-safe, collision-resistant form of a DICOM identifier.

    Clean RSNA ids (``ID_<hex>``) are kept as they are; anything else (``../../x``, slashes,
    spaces, leading dots, very long UIDs) is reduced to ``[A-Za-z0-9_.-]`` and suffixed with a
    hash of the original, so two different ids never share a file and none escapes the folder.
    """
    cleaned = _UNSAFE.sub("_", identifier).lstrip(".")[:_MAX_NAME]
    if cleaned == identifier and cleaned not in ("", ".", ".."):
        return cleaned
    digest = hashlib.sha1(identifier.encode("utf-8")).hexdigest()[:12]
    return f"{cleaned.strip('._') or 'id'}_{digest}"


def cache_paths(dataset_root: str, series_id: str) -> tuple[str, str, str]:
    """``(relative npy path, absolute npy path, absolute record path)`` for one series."""
    name = safe_name(series_id)
    rel = f"{CACHE_DIR}/{name}.npy"
    absolute = os.path.join(dataset_root, CACHE_DIR, f"{name}.npy")
    return rel, absolute, os.path.join(dataset_root, CACHE_DIR, f"{name}.json")


def write_series(npy_path: str, record_path: str, shape: tuple[int, ...], slices: Iterable[np.ndarray],
                 make_record: Callable[[int], dict[str, Any]], durable: bool = False) -> dict[str, Any]:
    """Array first, streamed from ``slices`` (``shape[0]`` expected, no file if none come), then
    the record ``make_record(count)``: the record's existence implies a complete array."""
    count = atomic_save_npy_stream(npy_path, shape, np.uint8, slices, durable=durable)
    record = make_record(count)
    atomic_write_json(record_path, record, durable=durable)
    return record


def read_valid_record(npy_path: str, record_path: str, inputs: list, windows: str) -> dict[str, Any] | None:
    """The stored record if it was built from exactly ``inputs`` with ``windows`` and its array is
    intact (shape and dtype match); otherwise None and the series is rebuilt."""
    try:
        with open(record_path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    if record.get("inputs") != inputs or record.get("windows") != windows:
        return None
    shape = tuple(record.get("shape", ()))
    if not shape or shape[0] == 0:
        return record  # every slice failed: nothing to cache, the errors are in the record
    try:
        array = np.load(npy_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if array.dtype != np.uint8 or tuple(array.shape) != shape:
        return None
    return record


def remove_stale_temporaries(folder: str, names: list[str] | None = None) -> int:
    """Delete temp files a killed run left in ``folder`` (``atomic_open`` names them
    ``.<name>.<random>.tmp``): all of them, or only those of ``names``, so temporaries of other
    tools writing into the same folder are left alone."""
    patterns = [".*.tmp"] if names is None else [f".{glob.escape(name)}.*.tmp" for name in names]
    removed = 0
    for pattern in patterns:
        for path in glob.glob(os.path.join(folder, pattern)):
            os.unlink(path)
            removed += 1
    return removed
