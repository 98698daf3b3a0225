"""Black-border crop, computed once per slice at prepare time.

The original re-ran a morphological open on every slice in every epoch; here the box is stored in
the meta table and the loader only slices. Same recipe: tissue mask, 5x5 elliptical open (removes
the thin headrest line and speckle), bounding box of what remains.
"""

from __future__ import annotations

import cv2
import numpy as np

_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
# How far the opening's dilation grows the eroded mask: the ellipse's centre row and column
# span the whole kernel, so its box grows by exactly the kernel's half size on each side.
_REACH_Y, _REACH_X = _KERNEL.shape[0] // 2, _KERNEL.shape[1] // 2


def crop_box(tissue: np.ndarray, eroded: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """Half-open box ``(y0, y1, x0, x1)`` of the opened nonzero mask; the full frame if empty.

    ``tissue`` is a 2-D uint8 image whose nonzero pixels are tissue (e.g. the widest window);
    ``eroded`` (same shape and type) is an optional scratch buffer. A grey-level opening has
    exactly the support of the binary opening of the support (erosion is a local min, dilation a
    local max), and the box of a dilation is the box of what it dilates grown by the kernel's
    reach, clipped to the frame; so only the erosion is computed (half the work of the opening).
    """
    eroded = cv2.erode(np.ascontiguousarray(tissue, dtype=np.uint8), _KERNEL, dst=eroded)
    x, y, w, h = cv2.boundingRect(eroded)
    rows, cols = tissue.shape
    if w == 0 or h == 0:
        return (0, int(rows), 0, int(cols))
    return (max(y - _REACH_Y, 0), min(y + h + _REACH_Y, rows), max(x - _REACH_X, 0), min(x + w + _REACH_X, cols))
