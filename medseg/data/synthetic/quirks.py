"""How a series stores its HU: the pixel-storage and window-tag quirks of the RSNA files.

Every true HU lies in [HU_MIN, HU_MAX] = [-1000, 3000]; out-of-field pixels are air (-1000).
Pixel quirks (one per series):

- ``signed_padded``: PixelRepresentation 1, BitsStored 16, intercept -1024, raw = HU + 1024,
  pixels outside the circular field of view stored as -2000 (also in PixelPaddingValue).
- ``signed_zero``: PixelRepresentation 1, BitsStored 16, intercept 0, raw = HU.
- ``unsigned``: PixelRepresentation 0, BitsStored 12, intercept -1024, raw = HU + 1024.
- ``bug12``: the 12-bit intercept bug: PixelRepresentation 0, BitsStored 12, intercept 0,
  raw = HU mod 4096. The RSNA fix recovers HU exactly: x = raw + 1000, x -= 4096 where
  x >= 4096, HU = x - 1000.

Decoding every file: HU = raw * slope + intercept, except the ``bug12`` rule above, which applies
whenever BitsStored == 12, PixelRepresentation == 0 and RescaleIntercept > -100; then clip HU
below at -1000, which turns padding (HU -3024) into air and changes no true value.

Window quirks (one per series): ``single`` (one WindowCenter/WindowWidth), ``multi`` (two values
each, take the first), ``absent`` (no window tags).
"""

from __future__ import annotations

import numpy as np

HU_MIN = -1000
HU_MAX = 3000
PADDING_VALUE = -2000

PIXEL_QUIRKS: tuple[str, ...] = ("signed_padded", "signed_zero", "unsigned", "bug12")
PIXEL_QUIRK_P: tuple[float, ...] = (0.35, 0.15, 0.35, 0.15)
WINDOW_MODES: tuple[str, ...] = ("single", "multi", "absent")
WINDOW_MODE_P: tuple[float, ...] = (0.6, 0.25, 0.15)


def encode_pixels(hu: np.ndarray, quirk: str, fov: np.ndarray) -> tuple[np.ndarray, dict]:
    """Stored pixel values (int16 or uint16, same shape as ``hu``) and the pixel-module tags.

    ``fov`` is the bool [H, W] field-of-view disc; only ``signed_padded`` marks what lies outside.
    """
    if hu.min() < HU_MIN or hu.max() > HU_MAX:
        raise ValueError(f"HU outside [{HU_MIN}, {HU_MAX}]: [{hu.min()}, {hu.max()}]")
    values = hu.astype(np.int32)
    tags: dict = {"BitsAllocated": 16, "RescaleSlope": 1}
    if quirk == "signed_padded":
        raw = values + 1024
        raw[..., ~fov] = PADDING_VALUE
        tags.update(BitsStored=16, HighBit=15, PixelRepresentation=1, RescaleIntercept=-1024,
                    PixelPaddingValue=PADDING_VALUE)
        return raw.astype(np.int16), tags
    if quirk == "signed_zero":
        tags.update(BitsStored=16, HighBit=15, PixelRepresentation=1, RescaleIntercept=0)
        return values.astype(np.int16), tags
    if quirk == "unsigned":
        tags.update(BitsStored=12, HighBit=11, PixelRepresentation=0, RescaleIntercept=-1024)
        return (values + 1024).astype(np.uint16), tags
    if quirk == "bug12":
        tags.update(BitsStored=12, HighBit=11, PixelRepresentation=0, RescaleIntercept=0)
        return np.mod(values, 4096).astype(np.uint16), tags
    raise ValueError(f"unknown pixel quirk {quirk!r}; expected one of {PIXEL_QUIRKS}")


def window_tags(mode: str, rng: np.random.Generator) -> dict:
    """WindowCenter/WindowWidth as the scanner wrote them (none, one, or two values)."""
    if mode == "absent":
        return {}
    center, width = int(rng.choice([30, 35, 36, 40, 50])), int(rng.choice([80, 90, 100, 150]))
    if mode == "single":
        return {"WindowCenter": center, "WindowWidth": width}
    if mode == "multi":
        return {"WindowCenter": [center, int(rng.choice([center, 300, 600]))],
                "WindowWidth": [width, int(rng.choice([width, 1500, 2800]))]}
    raise ValueError(f"unknown window mode {mode!r}; expected one of {WINDOW_MODES}")
