"""Pixel data: decode one CT slice (pydicom handlers, or a direct native read) and convert to HU."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom

from medseg.dicom.errors import MissingPixelDataError, TruncatedPixelDataError, UnsupportedImageError
from medseg.dicom.header import NATIVE_LITTLE_ENDIAN, check_ct_slice, check_transfer_syntax, read_dataset
from medseg.dicom.modality import WordLayout, word_layout


def _check_pixel_module(ds: pydicom.Dataset, path: str) -> None:
    """Everything that can be said about PixelData before decoding it."""
    check_ct_slice(ds, path)
    if "PixelData" not in ds:
        raise MissingPixelDataError(path, "no PixelData element")
    check_transfer_syntax(ds, path)
    if not _is_compressed(ds):
        rows, cols = int(ds.Rows), int(ds.Columns)
        expected = rows * cols * int(ds.BitsAllocated) // 8
        got = len(ds.PixelData)
        if got < expected:
            raise TruncatedPixelDataError(path, f"PixelData has {got} bytes, {rows}x{cols}x{ds.BitsAllocated} bits needs {expected}")


def _is_compressed(ds: pydicom.Dataset) -> bool:
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return bool(tsyntax) and tsyntax.is_compressed


def decode_pixels(ds: pydicom.Dataset, path: str) -> np.ndarray:
    """The pixel values of one CT slice via pydicom's handlers (2-D integer array), or a typed error."""
    _check_pixel_module(ds, path)
    rows, cols = int(ds.Rows), int(ds.Columns)
    try:
        with warnings.catch_warnings():
            # Odd-length padding bytes and similar benign deviations warn on every file.
            warnings.simplefilter("ignore")
            raw = ds.pixel_array
    except Exception as exc:  # decoders raise ValueError/RuntimeError/... on corrupt streams
        raise TruncatedPixelDataError(path, f"PixelData cannot be decoded ({type(exc).__name__}: {exc})") from None
    if raw.shape != (rows, cols):
        raise UnsupportedImageError(path, f"decoded shape {raw.shape} is not one {rows}x{cols} slice")
    return raw


def read_native_words(path: str, offset: int, rows: int, cols: int, layout: WordLayout) -> np.ndarray:
    """Native little-endian pixel words read straight from ``offset`` (found by the header scan).

    Why not pydicom here: the scan already parsed the header; a second ``dcmread`` +
    ``pixel_array`` per slice would double prepare's parsing cost. The words are interpreted
    exactly as pydicom would (see :func:`medseg.dicom.modality.word_values`; tested against it).
    """
    count = rows * cols * layout.word_bits // 8
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(count)
    if len(data) < count:
        raise TruncatedPixelDataError(path, f"file ends {len(data)} bytes into PixelData, {count} needed")
    return np.frombuffer(data, dtype="<u2" if layout.word_bits == 16 else "u1").reshape(rows, cols)


def read_words(path: str) -> tuple[pydicom.Dataset, np.ndarray, WordLayout]:
    """One slice as raw 8/16-bit words plus how to interpret them, from a full ``dcmread``.

    Native little-endian data are viewed in place; everything else goes through pydicom's
    decoders and is then viewed as words of the decoded dtype.
    """
    path = str(path)
    ds = read_dataset(path)
    _check_pixel_module(ds, path)
    rows, cols, allocated = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    tsyntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if tsyntax in NATIVE_LITTLE_ENDIAN and allocated in (8, 16):
        dtype = "<u2" if allocated == 16 else "u1"
        words = np.frombuffer(ds.PixelData, dtype=dtype, count=rows * cols).reshape(rows, cols)
        return ds, words, word_layout(ds)
    raw = decode_pixels(ds, path)
    if raw.dtype.itemsize > 2 or raw.dtype.kind not in "iu":
        raise UnsupportedImageError(path, f"{raw.dtype} pixels: only 8/16-bit integer CT data are supported")
    bits = 8 * raw.dtype.itemsize
    words = raw.view(np.uint16 if bits == 16 else np.uint8)
    return ds, words, WordLayout(bits, bits, raw.dtype.kind == "i")


def read_pixels(path: str) -> tuple[pydicom.Dataset, np.ndarray]:
    """Read a whole file and decode it with pydicom: ``(dataset, pixel values)``."""
    path = str(path)
    ds = read_dataset(path)
    return ds, decode_pixels(ds, path)
