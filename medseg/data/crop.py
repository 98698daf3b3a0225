"""Black-border crop, computed once per slice at prepare time, in one of two modes.

The original re-ran a morphological open on every slice in every epoch; here the box is stored
with the prepared series and the loader only slices. ``head`` (the default): per slice on the
full frame, the widest window, one 5x5 elliptical opening (removes the thin headrest line and
speckle), the box of what remains. ``released``: exactly what the paper's released code feeds its
model (series box first, then a 3-iteration opening of the brain window in that frame, its
exclusive maxima, blank slices as zeros, and its slice order); see the section below.
"""

from __future__ import annotations

from collections.abc import Sequence

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


# --- Crop modes ------------------------------------------------------------------------------
# "head": the box above, per slice, on the full frame (this project's default).
# "released": what the paper's released code (easymia) feeds its model, step for step: the series
# is first cut to the box of every nonzero window value over all its slices, then each slice to
# the box of an opening (5x5 ellipse, 3 iterations) of its first window inside that series frame;
# a slice whose opening is empty becomes zeros of the series frame. Its slices also come in the
# release's order (:func:`released_order`). docs/design.md, "Crop modes and input scale".
HEAD, RELEASED = "head", "released"
CROP_MODES: tuple[str, ...] = (HEAD, RELEASED)
DEFAULT_CROP = HEAD
_RELEASED_OPEN_ITERATIONS = 3

Box = tuple[int, int, int, int]


def check_crop_mode(mode: str, where: str = "crop") -> str:
    """``mode`` if it is a known crop mode; ValueError naming ``where`` otherwise."""
    if mode not in CROP_MODES:
        raise ValueError(f"{where}: unknown crop mode {mode!r} (known: {', '.join(CROP_MODES)})")
    return mode


def _exclusive_max_span(nonzero: np.ndarray) -> tuple[int, int] | None:
    """``(first, last)`` index of a 1-D mask's True values, used as a half-open span the way the
    release slices with ``np.where(...).max()`` (its last row or column is left out); None when
    that span is empty (no True value, or a single one)."""
    index = np.flatnonzero(nonzero)
    if len(index) == 0 or index[0] == index[-1]:
        return None
    return int(index[0]), int(index[-1])


def series_box(volume: np.ndarray) -> Box:
    """The release's series crop of ``volume`` ``[S, H, W, C]`` uint8: rows and columns holding a
    nonzero value in any slice and window, max exclusive as the release slices (the last such
    row and column are dropped). Where that box is empty (an all-zero series, or one row or
    column of nonzero values: the release fails there) the whole frame is kept."""
    frame = volume.max(axis=0).max(axis=-1) if volume.ndim == 4 else volume.max(axis=0)  # [H, W]
    rows, cols = _exclusive_max_span(frame.any(axis=1)), _exclusive_max_span(frame.any(axis=0))
    if rows is None or cols is None:
        return (0, int(frame.shape[0]), 0, int(frame.shape[1]))
    return (*rows, *cols)


def black_edge_box(brain: np.ndarray) -> Box | None:
    """The release's per-slice black-edge box of ``brain`` (the first window, uint8, already in
    the series frame): the box of ``opening > 0`` after a 5x5 elliptical opening iterated 3 times,
    max exclusive; None when the opening leaves nothing (the release then feeds zeros). The
    opening is cv2's own call with its default border, as in the release, so the frame edge acts
    as the release's does (which is why the series frame must be cut first). An opening whose box
    is empty although it is not (only in a frame one pixel high; the release would fail on it)
    counts as nothing left."""
    opened = cv2.morphologyEx(np.ascontiguousarray(brain, dtype=np.uint8), cv2.MORPH_OPEN, _KERNEL,
                              iterations=_RELEASED_OPEN_ITERATIONS)
    rows, cols = _exclusive_max_span(opened.any(axis=1)), _exclusive_max_span(opened.any(axis=0))
    if rows is None or cols is None:
        return None
    return (*rows, *cols)


def released_boxes(volume: np.ndarray) -> tuple[Box, list[Box | None]]:
    """``(series box, each slice's box in the full frame or None for a blank slice)`` of a
    windowed series ``[S, H, W, C]`` uint8, channel 0 being the brain window (40/80)."""
    y0, y1, x0, x1 = box = series_box(volume)
    boxes: list[Box | None] = []
    for image in volume:
        edge = black_edge_box(image[y0:y1, x0:x1, 0])
        boxes.append(None if edge is None else (y0 + edge[0], y0 + edge[1], x0 + edge[2], x0 + edge[3]))
    return box, boxes


def released_order(positions: Sequence[tuple[float, float, float] | None]) -> list[int]:
    """The release's slice order: ascending ImagePositionPatient x, then y, then z (its
    preprocess sorts its table so). With x and y constant, as in RSNA axial series, that is
    ascending z, foot to head, the reverse of this project's head-to-foot order. Ties keep the
    given order; without a position on every slice the given order is kept (the release cannot
    read such a series)."""
    if any(p is None for p in positions):
        return list(range(len(positions)))
    return sorted(range(len(positions)), key=lambda i: tuple(positions[i]))
