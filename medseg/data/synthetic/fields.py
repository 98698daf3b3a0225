"""Smooth random 3-D fields for textures, folds and irregular shapes.

A coarse Gaussian lattice (spacing in millimetres) is upsampled in-plane with OpenCV's bicubic
resize and linearly along z. The lattice is drawn in physical units, so the same seed gives the
same anatomy at 64 and at 512 pixels, and neighbouring slices sample one continuous field (scipy's
``zoom`` would do the same on the full volume but is several times slower at 512 px).
"""

from __future__ import annotations

import math

import cv2
import numpy as np


class SmoothField:
    """A zero-mean, unit-variance random field with features about ``cell_mm`` apart."""

    def __init__(self, rng: np.random.Generator, fov_mm: float, z_min: float, z_max: float, cell_mm: float):
        self.z_min = float(z_min)
        self.cell_mm = float(cell_mm)
        n_xy = int(math.ceil(fov_mm / cell_mm)) + 2
        n_z = int(math.ceil((z_max - z_min) / cell_mm)) + 2
        self.lattice = rng.standard_normal((n_z, n_xy, n_xy), dtype=np.float32)

    def sample(self, size: int, z: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Values at the slice positions ``z`` (mm) on a ``size`` x ``size`` grid, or on its
        ``box`` = (row0, row1, col0, col1) crop: float32 [S, rows, cols]."""
        planes = np.stack(
            [cv2.resize(plane, (size, size), interpolation=cv2.INTER_CUBIC) for plane in self.lattice]
        )
        planes /= max(float(planes[:, ::4, ::4].std()), 1e-6)  # a subsample estimates it well
        if box is not None:
            planes = np.ascontiguousarray(planes[:, box[0]:box[1], box[2]:box[3]])
        t = np.clip((np.asarray(z, dtype=np.float64) - self.z_min) / self.cell_mm, 0.0, len(planes) - 1.000001)
        lower = np.floor(t).astype(np.int64)
        frac = (t - lower).astype(np.float32)[:, None, None]
        return planes[lower] * (1.0 - frac) + planes[lower + 1] * frac
