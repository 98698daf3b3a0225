"""Series cache: ``cache/<safe_series_id>.hcc`` (the head crop of every slice, compressed one slice
at a time) plus a ``.json`` record.

Why this format: at RSNA scale (~874k slices) an uncompressed full frame costs ~0.75 MB per slice
(~600 GB). Here each slice keeps only its head box (the crop is known at prepare time) and is
compressed on its own with zstd (``zstandard``: fast to inflate, ~0.2 ms per slice), so a loader
still reads just the slices an item needs. Before zstd, a slice's three window channels are
replaced by one 16-bit "chain" code: every window is a non-decreasing function of HU, so the
triples a series can hold lie on one monotone path and the position on that path (``chain_table``)
is lossless — it drops the redundancy between the windows that no general-purpose codec sees
(0.75× the size of zstd on the channels themselves, 0.73× the published npz: measured). A slice
the path does not cover (never with the standard formula; kept as a safety net) is stored as
plain channels.

File layout (all little-endian): the chain table's raw bytes, then one zstd frame per slice,
then a JSON footer (format, frame size, channels, per-slice box / offset / size / coding), then
its length (uint64) and ``MAGIC``. A file cut short lacks the trailing magic and is rebuilt.
The container is this small hand-written one because the crops of a series differ in size,
which chunked array formats (blosc2, zarr: one chunk shape per array) do not hold, and zip/npz
would tie the slices to zlib.

The record is written after the data, both atomically, so a record whose file matches it marks a
finished series; a rerun after ``kill -9`` skips exactly those. Both are fsynced only on request
(``durable``): the cache is derived data, and a rerun after a power cut finds a file the disk lost
or cut short (no record, or no footer) and rebuilds that series.

The previous format (``.npy``, uncompressed full frames ``[S, H, W, C]``) is still read by
:func:`open_series`; prepare rebuilds it in this format (and says so).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import zstandard

from medseg.data.windows import Window, apply_windows
from medseg.utils.atomic import atomic_open, atomic_write_json

CACHE_DIR = "cache"
SUFFIX = ".hcc"
LEGACY_SUFFIX = ".npy"
FORMAT = "hcc1"
MAGIC = b"MEDSEGHC"
ZSTD_LEVEL = 1  # chain codes: level 1 is as small as 3 or 9 here (within 2 %) and the fastest to write
CHAIN, CHANNELS = "chain16", "hwc8"  # per-slice codings
_TAIL = struct.Struct("<Q8s")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_NAME = 120

Box = tuple[int, int, int, int]


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
    """``(relative cache path, absolute cache path, absolute record path)`` for one series."""
    name = safe_name(series_id)
    rel = f"{CACHE_DIR}/{name}{SUFFIX}"
    folder = os.path.join(dataset_root, CACHE_DIR)
    return rel, os.path.join(folder, f"{name}{SUFFIX}"), os.path.join(folder, f"{name}.json")


@lru_cache(maxsize=16)
def chain_table(windows: tuple[Window, ...]) -> np.ndarray:
    """``[N, C]`` uint8: every window triple HU can produce, in increasing HU order.

    Each window is a non-decreasing step function of HU, so the triples form a chain; sampling HU
    every 1/1024 over the span of the windows visits every step of every window (steps are at
    least 80/255 HU apart within a window), and all integer HU exactly.
    """
    lo = min(c - w // 2 for c, w in windows) - 2
    hi = max(c + w // 2 for c, w in windows) + 2
    hu = np.arange(lo * 1024, hi * 1024 + 1, dtype=np.float64) / 1024.0
    table = apply_windows(hu, windows)
    keep = np.r_[True, np.any(table[1:] != table[:-1], axis=1)]
    return np.ascontiguousarray(table[keep])


def _packed(table: np.ndarray) -> np.ndarray:
    """``[N, C<=4]`` uint8 rows → uint32 per row (zero-padded), for one 4-byte gather per pixel."""
    packed = np.zeros((len(table), 4), np.uint8)
    packed[:, : table.shape[1]] = table
    return packed.view(np.uint32).reshape(-1)


def chain_codes(triples: np.ndarray, windows: tuple[Window, ...]) -> np.ndarray | None:
    """Chain positions (uint16) of ``triples`` ``[..., C]``, or None if one is not on the chain."""
    chain = _packed(chain_table(windows))
    flat = _packed(triples.reshape(-1, triples.shape[-1]))
    codes = np.searchsorted(chain, flat)  # the chain is sorted as uint32 too: every byte only grows
    if len(chain) > 2**16 or np.any(codes >= len(chain)) or np.any(chain[np.minimum(codes, len(chain) - 1)] != flat):
        return None
    return codes.astype(np.uint16).reshape(triples.shape[:-1])


class _SliceStream:
    """Writes the slices of one series into an open file: chain table, one zstd frame per slice,
    then (``finish``) the footer."""

    def __init__(self, fh, windows: tuple[Window, ...]):
        self.fh, self.windows = fh, windows
        self.slices: list[dict[str, Any]] = []
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._chain_bytes = chain_table(windows).tobytes()
        fh.write(self._chain_bytes)
        self._offset = len(self._chain_bytes)

    def add(self, box: Box, image: np.ndarray, codes: np.ndarray | None = None) -> None:
        """One slice: its crop ``image`` (``[h, w, C]`` uint8) and, if known, its chain ``codes``
        (``[h, w]`` uint16, what the prepare step gathers straight from the stored words)."""
        if image.ndim != 3 or image.shape[2] != len(self.windows) or image.dtype != np.uint8:
            raise ValueError(f"{self.fh.name}: a slice must be uint8 [h, w, {len(self.windows)}], got {image.dtype} {list(image.shape)}")
        if codes is None and image.shape[-1] > 1:
            codes = chain_codes(image, self.windows)
        entry = {"box": [int(v) for v in box], "offset": self._offset, "coding": CHANNELS if codes is None else CHAIN}
        if codes is None:
            blob = self._compressor.compress(np.ascontiguousarray(image).data)
        else:
            # Codes minus a base (the median tissue code), as two byte planes, low then high:
            # tissue then sits inside one 256-code block, the high plane is a few long runs, and
            # zstd packs the planes far better apart (0.73x vs 0.84x the published npz, measured).
            entry["base"] = base = _median_tissue_code(codes)
            shifted = np.ascontiguousarray(codes, dtype=np.uint16) - np.uint16(base)  # wraps modulo 2**16
            low, high = cv2.split(shifted.view(np.uint8).reshape(*codes.shape, 2))
            blob = self._compressor.compress(low.tobytes() + high.tobytes())
        entry["size"] = len(blob)
        self.fh.write(blob)
        self.slices.append(entry)
        self._offset += len(blob)

    def finish(self, frame: tuple[int, int]) -> None:
        footer = json.dumps({"format": FORMAT, "frame": [int(v) for v in frame], "channels": len(self.windows),
                             "chain_bytes": len(self._chain_bytes), "slices": self.slices},
                            separators=(",", ":")).encode("utf-8")
        self.fh.write(footer)
        self.fh.write(_TAIL.pack(len(footer), MAGIC))


def _median_tissue_code(codes: np.ndarray) -> int:
    """About the median of the nonzero codes, minus 128 (0 for an empty slice): any value near
    the tissue's codes serves, so every 4th row and column is enough."""
    sample = codes[::4, ::4]
    tissue = sample[sample > 0]
    if tissue.size == 0:
        return 0
    return max(int(np.partition(tissue, tissue.size // 2)[tissue.size // 2]) - 128, 0)


class _NothingWritten(Exception):
    """Raised inside ``atomic_open`` to discard its temporary file."""


def write_cache_file(path: str, frame: tuple[int, int], windows: tuple[Window, ...],
                     slices: Iterable[tuple[Box, np.ndarray, np.ndarray | None]], durable: bool = False) -> int:
    """Stream ``slices`` (``(box in the frame, crop, chain codes or None)``) into ``path``
    atomically; returns the count, and writes no file when it is 0."""
    count = 0
    with contextlib.suppress(_NothingWritten), atomic_open(path, "wb", durable=durable) as fh:
        stream = _SliceStream(fh, windows)
        for box, image, codes in slices:
            stream.add(box, image, codes)
        if not stream.slices:
            raise _NothingWritten
        stream.finish(frame)
        count = len(stream.slices)
    return count


class CacheFormatError(ValueError):
    """A cache file that cannot be read: the message names the file and the reason."""


class SeriesCache:
    """Reads slices of one ``.hcc`` file: ``read(i)`` → the head crop ``[h, w, C]`` uint8."""

    legacy = False

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                if size < _TAIL.size:
                    raise CacheFormatError(f"{path}: cache file too short ({size} bytes)")
                fh.seek(size - _TAIL.size)
                footer_len, magic = _TAIL.unpack(fh.read(_TAIL.size))
                if magic != MAGIC or footer_len > size - _TAIL.size:
                    raise CacheFormatError(f"{path}: no cache footer (file cut short, or not a {FORMAT} file)")
                fh.seek(size - _TAIL.size - footer_len)
                footer = json.loads(fh.read(footer_len))
                fh.seek(0)
                self.chain = _packed(np.frombuffer(fh.read(footer["chain_bytes"]), np.uint8).reshape(-1, footer["channels"]))
        except CacheFormatError:
            raise
        except OSError as err:
            raise CacheFormatError(f"{path}: unreadable cache file ({err})") from err
        except (ValueError, KeyError) as err:
            raise CacheFormatError(f"{path}: corrupt cache footer ({err})") from err
        if footer.get("format") != FORMAT:
            raise CacheFormatError(f"{path}: cache format {footer.get('format')!r}, expected {FORMAT!r}")
        self.frame = tuple(footer["frame"])
        self.channels = int(footer["channels"])
        self.slices = footer["slices"]
        self.boxes = [tuple(s["box"]) for s in self.slices]
        self._decompressor = zstandard.ZstdDecompressor()

    def __len__(self) -> int:
        return len(self.slices)

    def read_many(self, indices: Sequence[int]) -> list[np.ndarray]:
        """The crops of ``indices`` (one open, one read)."""
        return list(self.iter_many(indices))

    def iter_many(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        """The crops of ``indices`` one at a time: a loader that warps each crop as it comes finds
        it still in the CPU cache (decoding the whole series first left the warp reading cold
        memory; 3x slower warps, measured)."""
        indices = list(indices)
        if not indices:
            return
        # One read for the span of the slices asked for (stored in order: a window of a series is
        # one run of bytes), then each slice decoded from its part.
        first = min(self.slices[i]["offset"] for i in indices)
        end = max(self.slices[i]["offset"] + self.slices[i]["size"] for i in indices)
        with open(self.path, "rb") as fh:
            fh.seek(first)
            span = memoryview(fh.read(end - first))
        for i in indices:
            offset = self.slices[i]["offset"] - first
            yield self._decode(span[offset:offset + self.slices[i]["size"]], i)

    def read(self, index: int) -> np.ndarray:
        return self.read_many([index])[0]

    def _decode(self, blob: memoryview, index: int) -> np.ndarray:
        entry = self.slices[index]
        y0, y1, x0, x1 = entry["box"]
        h, w = y1 - y0, x1 - x0
        try:
            raw = self._decompressor.decompress(blob)
        except zstandard.ZstdError as err:
            raise CacheFormatError(f"{self.path}: slice {index} does not inflate ({err})") from err
        if entry["coding"] == CHAIN:
            planes = np.frombuffer(raw, np.uint8)
            if planes.size != 2 * h * w:
                raise CacheFormatError(f"{self.path}: slice {index} holds {planes.size} bytes for {h}x{w} codes")
            planes = planes.reshape(2, h, w)
            codes = cv2.merge([planes[0], planes[1]]).view(np.uint16).reshape(h, w)
            codes += np.uint16(entry["base"])  # wraps modulo 2**16, undoing the writer's shift
            # mode="wrap": a corrupt code cannot read outside the table (and wrap gathers ~20 %
            # faster than clip, measured on 377x279 crops)
            gathered = np.take(self.chain, codes, mode="wrap")
            # A view without each pixel's 4th byte: no copy, and the loader's warp reads the
            # 4-byte pixels as they are (medseg.data.transforms._warp), saving two colour conversions.
            return gathered.view(np.uint8).reshape(h, w, 4)[..., : self.channels]
        image = np.frombuffer(raw, np.uint8)
        if image.size != h * w * self.channels:
            raise CacheFormatError(f"{self.path}: slice {index} holds {image.size} bytes for a {h}x{w}x{self.channels} box")
        return image.reshape(h, w, self.channels)


class LegacySeriesCache:
    """The previous format, ``.npy`` full frames ``[S, H, W, C]``: read through a memory map and
    cropped by the boxes of the meta table (``boxes``)."""

    legacy = True

    def __init__(self, path: str, boxes: Sequence[Box]):
        self.path = path
        try:
            self.volume = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise CacheFormatError(f"{path}: unreadable cache file ({err})") from err
        if self.volume.ndim != 4 or self.volume.dtype != np.uint8:
            raise CacheFormatError(f"{path}: expected uint8 [S, H, W, C], found {self.volume.dtype} {list(self.volume.shape)}")
        self.frame = tuple(self.volume.shape[1:3])
        self.channels = int(self.volume.shape[3])
        self.boxes = [tuple(int(v) for v in b) for b in boxes]

    def __len__(self) -> int:
        return int(self.volume.shape[0])

    def read_many(self, indices: Sequence[int]) -> list[np.ndarray]:
        return [np.asarray(self.volume[i, y0:y1, x0:x1]) for i in indices for y0, y1, x0, x1 in [self.boxes[i]]]

    def iter_many(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        return iter(self.read_many(indices))

    def read(self, index: int) -> np.ndarray:
        return self.read_many([index])[0]


def open_series(path: str, boxes: Sequence[Box] | None = None) -> SeriesCache | LegacySeriesCache:
    """A reader for either format (``boxes``: the meta table's crop boxes, used by the old one)."""
    if path.endswith(LEGACY_SUFFIX):
        if boxes is None:
            raise ValueError(f"{path}: an old-format cache needs the crop boxes of its meta table")
        return LegacySeriesCache(path, boxes)
    return SeriesCache(path)


def read_crops(path: str) -> list[np.ndarray]:
    """Every slice's head crop of a ``.hcc`` file, in order (tests, tools)."""
    cache = SeriesCache(path)
    return cache.read_many(range(len(cache)))


def write_record(record_path: str, record: dict[str, Any], cache_path: str, durable: bool = False) -> dict[str, Any]:
    """Write the record of a series whose cache file :func:`write_cache_file` has written (or
    left out, when ``record["shape"][0]`` is 0), with the file's size as ``cache_bytes``. The
    record comes after the file: its existence implies a complete file."""
    record = {**record, "cache_bytes": os.path.getsize(cache_path) if record["shape"][0] else 0}
    atomic_write_json(record_path, record, durable=durable)
    return record


def read_valid_record(path: str, record_path: str, inputs: list, windows: str) -> dict[str, Any] | None:
    """The stored record if it was built from exactly ``inputs`` with ``windows`` in this format
    and its file is intact (its size, footer, slice count and boxes match); otherwise None and
    the series is rebuilt."""
    try:
        with open(record_path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    if record.get("inputs") != inputs or record.get("windows") != windows:
        return None
    shape = tuple(record.get("shape", ()))
    if not shape or shape[0] == 0:
        return record if record.get("format") == FORMAT else None  # every slice failed: the errors are in the record
    if record.get("format") != FORMAT:
        return None
    try:
        if os.path.getsize(path) != record.get("cache_bytes"):
            return None
        cache = SeriesCache(path)
    except (OSError, CacheFormatError):
        return None
    if len(cache) != shape[0] or tuple(cache.frame) != tuple(shape[1:3]) or [list(b) for b in cache.boxes] != record.get("crops"):
        return None
    return record


def legacy_files(folder: str) -> list[str]:
    """Old-format cache arrays (``*.npy``) in ``folder``."""
    return sorted(glob.glob(os.path.join(folder, f"*{LEGACY_SUFFIX}")))


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
