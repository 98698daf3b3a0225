"""Normal structures that a model can mistake for blood, and the mastoid air of the low slices.

Falx and tentorium (dense dural sheets, +45 to +85 HU: as bright as acute blood in the brain
window), calcified pineal gland and choroid plexus, calcified dural plaques along the inner table,
and mastoid air cells in the petrous bone. Painted into the phantom before the bleeds, each with
its own random stream (see ``sites``), with partial-volume edges so that a 1 mm falx still shows
at 1.5 mm pixels.
"""

from __future__ import annotations

import math

import numpy as np

from medseg.data.synthetic.anatomy import AIR_HU, Head
from medseg.data.synthetic.fields import SmoothField
from medseg.data.synthetic.sites import SiteParams


def _coverage(distance: np.ndarray, half_width: float, pixel_mm: float) -> np.ndarray:
    """Share of a pixel covered by a sheet or blob edge ``distance`` mm away (0..1, float32)."""
    return np.clip((half_width + 0.5 * pixel_mm - distance) / pixel_mm, 0.0, 1.0).astype(np.float32)


def _paint(hu: np.ndarray, weight: np.ndarray, value: float) -> None:
    np.copyto(hu, hu + weight * (np.float32(value) - hu), where=weight > 0)


def _sphere(head: Head, centre: tuple[float, float, float], radius: float) -> np.ndarray:
    d = np.sqrt((head.X - centre[0]) ** 2 + (head.Y - centre[1]) ** 2 + (head.Z - centre[2]) ** 2)
    return _coverage(d - radius, 0.0, head.pixel_mm)


def add_mimics(head: Head, site: SiteParams, seed: int, series_index: int) -> None:
    """Paint the site's hyperdense mimics and mastoid air into ``head.hu`` (in place)."""
    p = head.params
    r0, r1, c0, c1 = head.box
    hu = head.hu[:, r0:r1, c0:c1]
    brain = head.cavity & ~head.ventricles
    if site.falx_hu:  # midline sheet above the tentorium; thicker and brighter towards the vertex
        rng = np.random.default_rng([seed, 8, series_index, 1])
        half = rng.uniform(0.5, 0.9) * (1.0 + 0.4 * np.clip(head.Z / p.c, 0.0, 1.0))
        reach = (head.inner < 40.0) | (np.abs(head.Y / p.b) > 0.5)
        w = _coverage(np.abs(head.X), half, head.pixel_mm) * (brain & reach & (head.Z > -0.15 * p.c))
        _paint(hu, w, site.falx_hu)
    if site.tentorium_hu:  # tent over the posterior fossa: rises to the midline and to the front
        rng = np.random.default_rng([seed, 8, series_index, 2])
        apex = rng.uniform(-0.2, -0.1) * p.c
        surface = apex - 0.35 * np.abs(head.X) - 0.25 * np.maximum(head.Y, 0.0)
        w = _coverage(np.abs(head.Z - surface), 0.6, head.pixel_mm) * (brain & (head.Y > 0.05 * p.b))
        _paint(hu, w, site.tentorium_hu)
    if site.pineal_hu:  # behind the third ventricle, on the midline
        rng = np.random.default_rng([seed, 8, series_index, 3])
        centre = (0.0, 0.08 * p.b + 13.0, rng.uniform(-0.04, 0.02) * p.c)
        _paint(hu, _sphere(head, centre, rng.uniform(2.0, 3.5)) * head.cavity, site.pineal_hu)
    if site.plexus_hu:  # glomus of the choroid plexus in both atria
        rng = np.random.default_rng([seed, 8, series_index, 4])
        vs = p.ventricle_scale
        for side in (-1.0, 1.0):
            centre = (side * 12.0 * vs, 0.02 * p.b + 23.0, 0.18 * p.c - 4.0)
            _paint(hu, _sphere(head, centre, rng.uniform(2.0, 3.5)) * head.cavity, site.plexus_hu)
    if site.dural_plaques:  # flat calcified plaques hugging the inner table over the convexity
        rng = np.random.default_rng([seed, 8, series_index, 5])
        for _ in range(site.dural_plaques):
            phi, el = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.9)
            d = np.array([math.cos(phi) * math.cos(el), math.sin(phi) * math.cos(el), math.sin(el)], np.float32)
            cos = (head.X * (d[0] / p.a) + head.Y * (d[1] / p.b) + head.Z * (d[2] / p.c)) / np.maximum(head.r, 1e-3)
            patch = head.cavity & (cos > math.cos(rng.uniform(0.06, 0.12))) & (head.inner < rng.uniform(1.0, 2.0))
            _paint(hu, patch.astype(np.float32), rng.uniform(200.0, 600.0))
    if site.mastoid:  # honeycomb of air cells in dense bone behind the ears, lowest slices only
        rng = np.random.default_rng([seed, 8, series_index, 6])
        u, v, w = head.X / p.a, head.Y / p.b, head.Z / p.c
        region = (head.inner > -0.8 * p.skull_mm) & (w < -0.45) & (np.abs(u) > 0.55) & (v > 0.0) & (v < 0.5)
        if region.any():
            cells = SmoothField(rng, head.hu.shape[-1] * head.pixel_mm, float(head.positions.min()),
                                float(head.positions.max()), 3.0).sample(head.hu.shape[-1], head.positions, head.box)
            np.copyto(hu, np.float32(p.bone_diploe + 200.0), where=region)
            np.copyto(hu, np.float32(AIR_HU + 100.0), where=region & (cells > 0.3))
            for mask in (head.cavity, head.parenchyma, head.sulci, head.cisterns, head.ventricles):
                mask &= ~region
