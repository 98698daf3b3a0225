"""Stored pixel value → Hounsfield units: the parameters and the arithmetic, no file I/O.

The modality LUT CT uses is the linear rescale (slope, intercept), plus two RSNA realities: the
12-bit intercept bug and out-of-field padding. Parameters are kept apart from the pixels so the
header scan can record them and a series builder can fold them into one lookup table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# No tissue is less dense than air; anything below is padding or a reconstruction artefact.
AIR_HU = -1024.0


class HeaderValues(Protocol):
    """A parsed header: a pydicom ``Dataset`` or the plain scan's values, read by keyword."""

    def get(self, keyword: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class ModalityParams:
    """What maps a stored value to HU for one slice."""

    slope: float = 1.0
    intercept: float = 0.0
    fix_12bit: bool = False
    padding: tuple[int, int] | None = None  # inclusive stored-value range marked as padding


def needs_12bit_fix(ds: HeaderValues) -> bool:
    """RSNA bug: 12-bit unsigned data stored with an intercept near 0 instead of about -1000."""
    return (
        int(ds.get("BitsStored", 16)) == 12
        and int(ds.get("PixelRepresentation", 0)) == 0
        and float(ds.get("RescaleIntercept", 0) or 0) > -100
    )


def modality_params(ds: HeaderValues) -> ModalityParams:
    """Read slope/intercept/padding once; the 12-bit fix replaces the intercept by -1000."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    fix = needs_12bit_fix(ds)
    if fix:
        intercept = -1000.0
    padding = None
    pad_value = ds.get("PixelPaddingValue")
    if pad_value is not None and not isinstance(pad_value, bytes):
        limit = ds.get("PixelPaddingRangeLimit", pad_value)
        if isinstance(limit, bytes):
            limit = pad_value
        padding = (int(min(pad_value, limit)), int(max(pad_value, limit)))
    return ModalityParams(slope=slope, intercept=intercept, fix_12bit=fix, padding=padding)


def raw_to_hu(raw: np.ndarray, params: ModalityParams, map_padding: bool = True) -> np.ndarray:
    """Stored values → HU (float32). With ``map_padding`` padding and sub-air values become air.

    Without ``map_padding`` (and without the 12-bit fix) the result equals
    ``pydicom.pixels.apply_modality_lut``.
    """
    values = raw.astype(np.int64)
    if params.fix_12bit:
        values = values + 1000
        values[values >= 4096] -= 4096
    hu = values.astype(np.float64) * params.slope + params.intercept
    if map_padding:
        if params.padding is not None:
            lo, hi = params.padding
            hu[(raw >= lo) & (raw <= hi)] = AIR_HU
        np.maximum(hu, AIR_HU, out=hu)
    return hu.astype(np.float32)


@dataclass(frozen=True)
class WordLayout:
    """How to read a pixel value out of a stored 8/16-bit word: low ``bits`` bits, two's
    complement if ``signed`` (what pydicom does with BitsStored and PixelRepresentation)."""

    word_bits: int
    bits: int
    signed: bool


def word_values(words: np.ndarray, layout: WordLayout) -> np.ndarray:
    """Stored words → pixel values (int32): mask unused high bits, sign-extend signed data."""
    values = words.astype(np.int32) & ((1 << layout.bits) - 1)
    if layout.signed:
        values[values >= 1 << (layout.bits - 1)] -= 1 << layout.bits
    return values


def word_layout(ds: HeaderValues) -> WordLayout:
    """The layout of native (uncompressed) pixel words as the header describes it."""
    allocated = int(ds.get("BitsAllocated"))
    stored = min(int(ds.get("BitsStored", allocated) or allocated), allocated)
    return WordLayout(allocated, stored, int(ds.get("PixelRepresentation", 0) or 0) == 1)
