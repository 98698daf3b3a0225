"""A 3-D head phantom in Hounsfield units, built from continuous fields so slices agree.

The head is an ellipsoid (random size, in-plane rotation, pitch and position) layered from the
outside in by the depth below the scalp surface: scalp with a fat band, skull (dense tables,
softer diploe, varying thickness), a thin CSF space, cortex (grey) over white matter, sulci where
a smooth random field crosses zero, the interhemispheric and Sylvian fissures, basal cisterns,
deep grey nuclei, lateral/third/fourth ventricles in the middle of the scan range, a bony skull
base with air sinuses in the lowest slices, and sometimes a headrest arc below the head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medseg.data.synthetic.fields import SmoothField

AIR_HU = -1000.0


@dataclass(frozen=True)
class HeadParams:
    cx: float            # head centre in the image plane, mm from the image centre (x right, y down)
    cy: float
    cz: float            # head centre along z, mm
    theta: float         # in-plane rotation (rad)
    pitch: float         # tilt about the left-right axis (rad)
    a: float             # outer semi-axes, mm: left-right, front-back, up-down
    b: float
    c: float
    scalp_mm: float
    skull_mm: float
    skull_var: float     # relative thickness variation of the skull
    bone_peak: float     # HU of the inner/outer tables
    bone_diploe: float   # HU of the diploe between them
    csf_mm: float        # CSF space between inner table and brain
    sulcal_depth: float  # mm
    grey_hu: float
    white_hu: float
    csf_hu: float
    ventricle_scale: float
    plexus_calcified: bool
    plexus_hu: float
    headrest: bool
    headrest_gap: float
    headrest_mm: float
    headrest_hu: float
    noise_sd: float      # quantum noise, HU
    blur_mm: float       # reconstruction blur (Gaussian sigma)


def draw_head_params(rng: np.random.Generator, fov_mm: float, z_low: float, z_high: float) -> HeadParams:
    """Random head filling the scan range [z_low, z_high] from just below the skull base to the vertex."""
    c = (z_high - z_low) / rng.uniform(1.72, 1.8)
    a, b = rng.uniform(64.0, 76.0), rng.uniform(84.0, 98.0)
    room = max(fov_mm / 2.0 - b - 12.0, 0.0)
    return HeadParams(
        cx=float(rng.uniform(-room, room) * 0.6), cy=float(rng.uniform(-room, room) * 0.6),
        cz=float(z_low + 0.74 * c), theta=float(rng.uniform(-0.26, 0.26)), pitch=float(rng.uniform(-0.18, 0.18)),
        a=float(a), b=float(b), c=float(c),
        scalp_mm=float(rng.uniform(3.5, 6.5)), skull_mm=float(rng.uniform(5.0, 8.0)),
        skull_var=float(rng.uniform(0.15, 0.35)), bone_peak=float(rng.uniform(1150, 1500)),
        bone_diploe=float(rng.uniform(650, 900)), csf_mm=float(rng.uniform(0.6, 2.5)),
        sulcal_depth=float(rng.uniform(8.0, 15.0)), grey_hu=float(rng.uniform(35, 42)),
        white_hu=float(rng.uniform(24, 30)), csf_hu=float(rng.uniform(2, 9)),
        ventricle_scale=float(rng.uniform(0.8, 1.8)), plexus_calcified=bool(rng.random() < 0.4),
        plexus_hu=float(rng.uniform(110, 260)), headrest=bool(rng.random() < 0.5),
        headrest_gap=float(rng.uniform(4.0, 18.0)), headrest_mm=float(rng.uniform(2.0, 4.5)),
        headrest_hu=float(rng.uniform(120, 450)), noise_sd=float(rng.uniform(2.5, 6.0)),
        blur_mm=float(rng.uniform(0.35, 0.7)),
    )


@dataclass
class Head:
    """The noise-free phantom plus the coordinates and regions the lesions are placed with."""

    params: HeadParams
    hu: np.ndarray           # float32 [S, H, W], the whole frame
    box: tuple[int, int, int, int]  # (row0, row1, col0, col1): the crop holding the head
    # Everything below lives on the crop ``box`` (most of the frame is air; skipping it halves
    # the work). X is [1, h, w]; the other arrays are [S, h, w].
    X: np.ndarray            # head-frame coordinates (mm)
    Y: np.ndarray
    Z: np.ndarray
    r: np.ndarray            # ellipsoidal radius (1 = scalp surface)
    inner: np.ndarray        # mm below the inner table (< 0 outside the cranial cavity)
    cavity: np.ndarray       # bool: inside the inner table (and not skull base bone)
    parenchyma: np.ndarray   # bool: grey or white matter
    sulci: np.ndarray        # bool: cortical sulci and fissures
    cisterns: np.ndarray     # bool: basal cisterns and Sylvian fissures
    ventricles: np.ndarray   # bool
    sulcal_field: np.ndarray  # float32 field whose zero set draws the sulci
    fov: np.ndarray          # bool [H, W] (whole frame): the reconstructed disc
    pixel_mm: float
    positions: np.ndarray    # z of each slice (mm)


def _ellipsoid(X, Y, Z, centre, semi) -> np.ndarray:
    return ((X - centre[0]) / semi[0]) ** 2 + ((Y - centre[1]) / semi[1]) ** 2 + ((Z - centre[2]) / semi[2]) ** 2


def _span(coords: np.ndarray, centre: float, reach: float) -> tuple[int, int]:
    """Index range [lo, hi) of the pixels whose centres lie within ``reach`` of ``centre``."""
    inside = np.flatnonzero(np.abs(coords - centre) <= reach)
    return int(inside[0]), int(inside[-1]) + 1


def build_head(params: HeadParams, rng: np.random.Generator, size: int, pixel_mm: float,
               positions: np.ndarray) -> Head:
    p = params
    fov_mm = size * pixel_mm
    coords = ((np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * pixel_mm).astype(np.float32)
    reach = max(p.a, p.b, p.c) + 2.0 * pixel_mm  # bounds the rotated, tilted ellipsoid in-plane
    box = (*_span(coords, p.cy, reach), *_span(coords, p.cx, reach))
    x = coords[None, None, box[2]:box[3]] - np.float32(p.cx)
    y = coords[None, box[0]:box[1], None] - np.float32(p.cy)
    z = (np.asarray(positions, dtype=np.float32) - np.float32(p.cz))[:, None, None]
    ct, st, cp, sp = (np.float32(f(v)) for f, v in ((math.cos, p.theta), (math.sin, p.theta),
                                                    (math.cos, p.pitch), (math.sin, p.pitch)))
    X = ct * x + st * y                      # [1, H, W]
    yr = -st * x + ct * y
    Y = cp * yr + sp * z                     # [S, H, W]
    Z = -sp * yr + cp * z
    u, v, w = X / np.float32(p.a), Y / np.float32(p.b), Z / np.float32(p.c)
    r = np.sqrt(u * u + v * v + w * w)
    rho = np.sqrt(X * X + Y * Y + Z * Z)
    depth = rho * (1.0 - r) / np.maximum(r, 1e-3)  # mm below the scalp along the ray from the centre

    z_lo, z_hi = float(np.min(positions)), float(np.max(positions))
    f_skull, f_gyri, f_sulci, f_tex = (
        SmoothField(rng, fov_mm, z_lo, z_hi, cell).sample(size, positions, box) for cell in (40.0, 14.0, 11.0, 4.0)
    )

    hu = np.full(r.shape, AIR_HU, dtype=np.float32)
    scalp_t = p.scalp_mm * (1.0 + 0.15 * np.clip(f_skull, -1.5, 1.5))
    skull_t = p.skull_mm * (1.0 + p.skull_var * np.clip(-f_skull, -1.5, 1.5))
    inner = depth - scalp_t - skull_t
    scalp = (depth >= 0) & (depth < scalp_t)
    frac = depth / scalp_t
    np.copyto(hu, np.where((frac > 0.35) & (frac < 0.7), -90.0, 40.0).astype(np.float32), where=scalp)
    bone = (depth >= scalp_t) & (inner < 0)
    bone_frac = np.clip((depth - scalp_t) / skull_t, 0.0, 1.0)
    np.copyto(hu, p.bone_peak - (p.bone_peak - p.bone_diploe) * np.sin(np.pi * bone_frac), where=bone)

    cavity = inner >= 0
    brain_depth = inner - p.csf_mm
    parenchyma = cavity & (brain_depth >= 0)
    np.copyto(hu, np.float32(p.csf_hu), where=cavity & ~parenchyma)
    cortex_t = np.maximum(3.4 + 1.3 * f_gyri, 1.5)
    grey = parenchyma & (brain_depth < cortex_t)
    vs = p.ventricle_scale
    for side in (-1.0, 1.0):  # thalamus and lentiform nucleus, each side
        grey |= parenchyma & (_ellipsoid(X, Y, Z, (side * 11, 0.06 * p.b, 0.05 * p.c), (8, 12, 10)) < 1)
        grey |= parenchyma & (_ellipsoid(X, Y, Z, (side * (20 + 2 * vs), -0.06 * p.b, 0.1 * p.c), (6, 15, 11)) < 1)
    tissue = np.where(grey, np.float32(p.grey_hu), np.float32(p.white_hu)) + 2.0 * f_tex
    np.copyto(hu, tissue, where=parenchyma)

    # CSF spaces: sulci (zero set of a smooth field, wider near the surface), fissures, cisterns.
    band = 0.24 * (1.0 - 0.6 * brain_depth / p.sulcal_depth)
    sulci = parenchyma & (brain_depth < p.sulcal_depth) & (np.abs(f_sulci) < band)
    abs_x, abs_u = np.abs(X), np.abs(u)
    sulci |= parenchyma & (abs_x < 1.3) & (w > -0.2) & ((brain_depth < 35.0) | (np.abs(v) > 0.5))
    cisterns = parenchyma & (w > -0.35) & (w < 0.15) & (abs_u > 0.35) & (np.abs(v + 0.08 - 0.45 * (abs_u - 0.35)) < 0.02)
    stem = (X / 11.0) ** 2 + ((Y - 0.12 * p.b) / 13.0) ** 2
    cisterns |= cavity & (Z < -0.12 * p.c) & (stem > 1.0) & (stem < np.where(Z > -0.38 * p.c, 2.1, 1.4))

    # Ventricles: curved lateral ventricles (horns spread out and dip down), third and fourth.
    q = (Y - 0.02 * p.b) / 33.0
    lateral = ((abs_x - (5.0 + 7.0 * q * q) * vs) / (4.5 * vs)) ** 2 + q * q \
        + ((Z - 0.18 * p.c + 8.0 * q * q) / 13.0) ** 2
    ventricles = cavity & (lateral < 1.0) & (abs_x > 0.8)
    ventricles |= cavity & (abs_x < 1.3 * vs) & (np.abs(Y - 0.08 * p.b) < 11.0) & (Z > -0.12 * p.c) & (Z < 0.08 * p.c)
    ventricles |= cavity & (_ellipsoid(X, Y, Z, (0.0, 0.38 * p.b, -0.5 * p.c), (7, 5, 9)) < 1)
    sulci &= ~ventricles
    cisterns &= ~ventricles
    np.copyto(hu, np.float32(p.csf_hu), where=sulci | cisterns | ventricles)
    parenchyma &= ~(sulci | cisterns | ventricles)
    if p.plexus_calcified:
        for side in (-1.0, 1.0):
            spot = _ellipsoid(X, Y, Z, (side * 12.0 * vs, 0.02 * p.b + 0.7 * 33.0, 0.18 * p.c - 4.0), (2.5, 2.5, 2.5)) < 1
            np.copyto(hu, np.float32(p.plexus_hu), where=spot & cavity)

    # Skull base in the lowest slices: anterior bone with air sinuses, petrous ridges.
    base = cavity & (w < -0.3) & (v < -0.55 + 0.5 * (-0.3 - w))
    base |= cavity & (w < -0.45) & (abs_u > 0.2) & (np.abs(v - 0.12 - 0.6 * (abs_u - 0.2)) < 0.06)
    sinus = base & (abs_u < 0.28) & (v > -0.85) & (v < -0.5)
    np.copyto(hu, (p.bone_diploe + 80.0 * f_tex).astype(np.float32), where=base)
    np.copyto(hu, np.float32(-900.0) + 20.0 * f_tex, where=sinus)
    for region in (cavity, parenchyma, sulci, cisterns, ventricles):
        region &= ~base

    full = np.full((len(positions), size, size), AIR_HU, dtype=np.float32)
    full[:, box[0]:box[1], box[2]:box[3]] = hu
    hu = full
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    if p.headrest:
        radius = p.b * 1.02 + p.headrest_gap
        dist = np.sqrt((xx - p.cx) ** 2 + (yy - p.cy) ** 2)
        arc = (np.abs(dist - radius) < p.headrest_mm / 2) & (yy - p.cy > 0.45 * radius)
        np.copyto(hu, np.float32(p.headrest_hu), where=arc[None] & (hu <= AIR_HU))
    fov = (xx * xx + yy * yy) <= (fov_mm / 2.0) ** 2
    return Head(params=p, hu=hu, box=box, X=X, Y=Y, Z=Z, r=r, inner=inner, cavity=cavity,
                parenchyma=parenchyma, sulci=sulci, cisterns=cisterns, ventricles=ventricles,
                sulcal_field=f_sulci, fov=fov, pixel_mm=pixel_mm, positions=np.asarray(positions))
