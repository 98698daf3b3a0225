"""Black-border crop, computed once per slice at prepare time.

The original re-ran a morphological open on every slice in every epoch; here the box is stored in
the meta table and the loader only slices. Same recipe: tissue mask, 5x5 elliptical open (removes
the thin headrest line and speckle), bounding box of what remains.
"""

from __future__ import annotations

import cv2
import numpy as np

_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


def crop_box(tissue: np.ndarray) -> tuple[int, int, int, int]:
    """Half-open box ``(y0, y1, x0, x1)`` of the opened nonzero mask; the full frame if empty.

    ``tissue`` is a 2-D uint8 image whose nonzero pixels are tissue (e.g. the widest window).
    A grey-level opening has exactly the support of the binary opening of the support (erosion is
    a local min, dilation a local max), so no separate mask image is needed.
    """
    opened = cv2.morphologyEx(np.ascontiguousarray(tissue, dtype=np.uint8), cv2.MORPH_OPEN, _KERNEL)
    x, y, w, h = cv2.boundingRect(opened)
    if w == 0 or h == 0:
        return (0, int(tissue.shape[0]), 0, int(tissue.shape[1]))
    return (int(y), int(y + h), int(x), int(x + w))
