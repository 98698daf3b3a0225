"""Build one series' cache entry: decode each slice, window it, find its crop box
(:mod:`medseg.data.crop`: ``head`` per slice as it streams, or ``released`` over the whole series).

Runs inside a prepare worker. Windowing goes through a lookup table indexed by the stored 16-bit
word (bit masking, modality LUT, 12-bit fix, padding and all windows folded into one gather),
which is exact (each entry is the reference formula on that word's HU) and several times faster
than recomputing the float formula per pixel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from medseg.data import cache as cache_io
from medseg.data.crop import DEFAULT_CROP, RELEASED, check_crop_mode, crop_box, released_boxes
from medseg.data.records import ErrorRow, SeriesRecord
from medseg.data.windows import Window, apply_windows, format_windows
from medseg.dicom.errors import DicomReadError
from medseg.dicom.header import SliceHeader
from medseg.dicom.modality import ModalityParams, WordLayout, modality_params, raw_to_hu, word_values
from medseg.dicom.pixels import read_native_words, read_words


@dataclass(frozen=True)
class SeriesTask:
    """Everything a worker needs, picklable and small. Per-slice tuples are in the order the
    series is stored in: head to foot, or the release's order for ``crop="released"``
    (:func:`medseg.data.scan.task_for`).

    ``slices`` (the scan's headers) is optional: with it, native pixel data are read at the
    offsets the scan found, without a second pydicom parse; without it every file is decoded
    by pydicom from ``files``.
    """

    series_id: str
    study_id: str
    patient_id: str
    raw_root: str
    files: tuple[str, ...]  # relative to raw_root
    slice_ids: tuple[str, ...]
    positions: tuple[float, ...]
    spacing: float
    rows: int
    cols: int
    slices: tuple[SliceHeader, ...] | None = None

    def inputs(self) -> list[list]:
        """Fingerprint of the inputs: a cached series is reused only if these are unchanged."""
        return [[f, os.path.getsize(os.path.join(self.raw_root, f))] for f in self.files]


@lru_cache(maxsize=64)
def word_lut(params: ModalityParams, layout: WordLayout, windows: tuple[Window, ...]) -> np.ndarray:
    """``[2**word_bits, C]`` uint8: the windows of every possible stored word, each entry computed
    with the reference formula on that word's HU (so the table is exact, not an approximation)."""
    words = np.arange(2**layout.word_bits, dtype=np.uint16 if layout.word_bits == 16 else np.uint8)
    return apply_windows(raw_to_hu(word_values(words, layout), params), windows)


@lru_cache(maxsize=64)
def code_lut(params: ModalityParams, layout: WordLayout, windows: tuple[Window, ...]) -> np.ndarray | None:
    """``[2**word_bits]`` uint16: the cache's chain code of every possible stored word (see
    :mod:`medseg.data.cache`), or None if a word's windows are off the chain (then the slices are
    stored as plain channels)."""
    return cache_io.chain_codes(word_lut(params, layout, windows), windows) if len(windows) > 1 else None


@lru_cache(maxsize=64)
def _packed_lut(params: ModalityParams, layout: WordLayout, windows: tuple[Window, ...]) -> np.ndarray:
    """The 3-window table packed into uint32 (4th byte unused): a 4-byte gather is ~3x faster
    than numpy's gather of 3-byte rows."""
    packed = np.zeros((2**layout.word_bits, 4), dtype=np.uint8)
    packed[:, :3] = word_lut(params, layout, windows)
    return packed.view(np.uint32).reshape(-1)


def window_words(words: np.ndarray, params: ModalityParams, layout: WordLayout, windows: tuple[Window, ...], out: np.ndarray,
                 scratch: np.ndarray | None = None) -> None:
    """Stored words → ``out[H, W, C]`` uint8 windows (one table gather per slice). ``scratch``
    (uint32, shape of ``words``) lets a caller reuse the gather buffer across slices."""
    if len(windows) == 3:
        if scratch is None:
            scratch = np.empty(words.shape, dtype=np.uint32)
        # mode="clip" never clips here (every word indexes the table) but lets numpy gather
        # straight into ``scratch`` without its bounds-checking buffer.
        np.take(_packed_lut(params, layout, windows), words, out=scratch, mode="clip")
        # Dropping the 4th byte of each pixel is what OpenCV's BGRA→BGR does, vectorised.
        cv2.cvtColor(scratch.view(np.uint8).reshape(*words.shape, 4), cv2.COLOR_BGRA2BGR, dst=out)
    else:
        np.take(word_lut(params, layout, windows), words, axis=0, out=out)


def _slice_words(path: str, header: SliceHeader | None) -> tuple[np.ndarray, ModalityParams, WordLayout]:
    """Pixel words of one slice: straight from disk when the scan located native data."""
    if header is not None and header.pixel_offset is not None and header.layout is not None:
        words = read_native_words(path, header.pixel_offset, header.rows, header.cols, header.layout)
        return words, header.modality, header.layout
    ds, words, layout = read_words(path)
    return words, modality_params(ds), layout


Crop = tuple[int, int, int, int]


def window_slices(task: SeriesTask, windows: tuple[Window, ...], target: Callable[[int], np.ndarray],
                  errors: list[ErrorRow], words_out: list | None = None,
                  head_boxes: bool = True) -> Iterator[tuple[int, Crop | None, np.ndarray]]:
    """Decode and window each slice into ``target(k)`` (``[H, W, C]`` uint8; k counts the slices
    kept so far) and yield ``(index in the series, crop box, that image)`` per good slice. A bad
    slice is appended to ``errors`` and skipped, never raised.
    ``words_out``, if given, holds ``[words, params, layout]`` of the slice being yielded.
    ``head_boxes`` False: no per-slice box (None), for a crop that needs the whole series."""
    rows, cols = task.rows, task.cols
    # Per-slice buffers reused across the series: fresh pages cost more than the work done in them.
    scratch = np.empty((rows, cols), dtype=np.uint32)
    tissue, eroded = np.empty((rows, cols), dtype=np.uint8), np.empty((rows, cols), dtype=np.uint8)
    tissue_channel = int(np.argmax([w for _, w in windows]))  # widest window: all soft tissue
    headers = task.slices or (None,) * len(task.files)
    kept = 0
    for index, (rel, header) in enumerate(zip(task.files, headers)):
        path = os.path.join(task.raw_root, rel)
        try:
            words, params, layout = _slice_words(path, header)
            if words.shape != (rows, cols):
                raise DicomReadError(path, f"decoded size {words.shape} differs from the series size {(rows, cols)}")
            out = target(kept)
            window_words(words, params, layout, windows, out, scratch)
        except DicomReadError as exc:
            errors.append(ErrorRow(rel, task.series_id, exc.reason, type(exc).__name__))
            continue
        except Exception as exc:  # a file pydicom chokes on in an unforeseen way must not stop the run
            errors.append(ErrorRow(rel, task.series_id, f"unexpected {type(exc).__name__}: {exc}", "UnexpectedError"))
            continue
        kept += 1
        if words_out is not None:
            words_out[:] = (words, params, layout)
        box = crop_box(cv2.extractChannel(out, tissue_channel, dst=tissue), eroded) if head_boxes else None
        yield index, box, out


def build_volume(task: SeriesTask, windows: tuple[Window, ...], crop: str = DEFAULT_CROP,
                 decoded: list | None = None) -> tuple[np.ndarray, list[int], list[Crop], list[ErrorRow]]:
    """The whole series in memory: (volume of the kept slices, kept indices, crop boxes, errors).

    ``crop="released"``: the release's boxes (:func:`medseg.data.crop.released_boxes`); a blank
    slice (its opening left nothing) gets the series box and its frame is zeroed here, so that
    ``volume[k, y0:y1, x0:x1]`` is the zeros the release feeds. ``decoded``, if a list, receives
    each kept slice's ``(words, params, layout)``."""
    check_crop_mode(crop, "build_volume")
    volume = np.empty((len(task.files), task.rows, task.cols, len(windows)), dtype=np.uint8)
    errors: list[ErrorRow] = []
    holder: list = []
    done = []
    for index, box, _ in window_slices(task, windows, volume.__getitem__, errors, holder, head_boxes=crop != RELEASED):
        done.append((index, box))
        if decoded is not None:
            decoded.append(tuple(holder))
    volume = volume[: len(done)]
    crops = [box for _, box in done]
    if crop == RELEASED and done:
        frame, boxes = released_boxes(volume)
        for k, box in enumerate(boxes):
            if box is None:
                volume[k] = 0
            crops[k] = frame if box is None else box
    return volume, [index for index, _ in done], crops, errors


def _released_crops(task: SeriesTask, windows: tuple[Window, ...], errors: list[ErrorRow], kept: list[int],
                    crops: list[Crop]) -> Iterator[tuple[Crop, np.ndarray, np.ndarray | None]]:
    """The cache's slices for ``crop="released"``: the whole series is windowed first (its box
    needs every slice), then each slice's crop and chain codes (from its stored words; a blank
    slice's zeros are coded from the image)."""
    decoded: list = []
    volume, indices, boxes, failed = build_volume(task, windows, RELEASED, decoded)
    errors.extend(failed)
    for k, (index, (y0, y1, x0, x1)) in enumerate(zip(indices, boxes)):
        kept.append(index)
        crops.append((y0, y1, x0, x1))
        image = volume[k, y0:y1, x0:x1]
        words, params, layout = decoded[k]
        table = code_lut(params, layout, windows)
        blank = not image.any()  # a slice's own box holds its opening's nonzero pixels: all zero = blank
        yield (y0, y1, x0, x1), image, None if table is None or blank else np.take(table, words[y0:y1, x0:x1])


def process_series(task: SeriesTask, dataset_root: str, windows: tuple[Window, ...], durable: bool = False,
                   crop: str = DEFAULT_CROP) -> SeriesRecord:
    """Build (or reuse, if complete and valid and made with the same ``crop`` mode) one series'
    cache; returns its record. ``durable``: fsync the cache files (see :mod:`medseg.data.cache`).

    ``head``: each slice is windowed into one reused buffer (for its crop box), and only its head
    crop goes to the cache, as chain codes gathered straight from the stored words (one table
    look-up). ``released``: the series is windowed whole first (``_released_crops``).
    """
    check_crop_mode(crop, "process_series")
    rel, cache_path, record_path = cache_io.cache_paths(dataset_root, task.series_id)
    inputs = task.inputs()
    window_text = format_windows(windows)
    record = cache_io.read_valid_record(cache_path, record_path, inputs, window_text)
    # A record from before crop modes existed was made with the head crop.
    if record is not None and record.get("crop", DEFAULT_CROP) == crop:
        return SeriesRecord.from_json(record, reused=True)
    image = np.empty((task.rows, task.cols, len(windows)), dtype=np.uint8)
    kept: list[int] = []
    crops: list[Crop] = []
    errors: list[ErrorRow] = []
    decoded: list = []

    def head_crops() -> Iterator[tuple[Crop, np.ndarray, np.ndarray | None]]:
        for index, crop, out in window_slices(task, windows, lambda _: image, errors, decoded):
            kept.append(index)
            crops.append(crop)
            y0, y1, x0, x1 = crop
            words, params, layout = decoded
            table = code_lut(params, layout, windows)
            yield crop, out[y0:y1, x0:x1], None if table is None else np.take(table, words[y0:y1, x0:x1])

    slices = _released_crops(task, windows, errors, kept, crops) if crop == RELEASED else head_crops()
    count = cache_io.write_cache_file(cache_path, (task.rows, task.cols), tuple(windows), slices, durable)
    record = {
        "series_id": task.series_id,
        "study_id": task.study_id,
        "patient_id": task.patient_id,
        "cache": rel if count else "",
        "format": cache_io.FORMAT,
        "windows": window_text,
        "crop": crop,
        "inputs": inputs,
        "shape": [count, *image.shape],
        "slice_ids": [task.slice_ids[i] for i in kept],
        "positions": [task.positions[i] for i in kept],
        "spacing": task.spacing,
        "crops": [list(c) for c in crops],
        "errors": [[e.file, e.reason, e.kind] for e in errors],
    }
    record = cache_io.write_record(record_path, record, cache_path, durable)
    legacy = os.path.join(dataset_root, cache_io.CACHE_DIR, os.path.basename(cache_path)[: -len(cache_io.SUFFIX)] + cache_io.LEGACY_SUFFIX)
    if os.path.exists(legacy):  # the old uncompressed format of this series, now replaced
        os.unlink(legacy)
    return SeriesRecord.from_json(record, reused=False)
