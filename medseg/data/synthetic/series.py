"""One synthetic series: phantom + lesions + noise → the true HU volume, masks and labels."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from medseg.constants import LABELS, SUBTYPES
from medseg.data.synthetic import ids
from medseg.data.synthetic.anatomy import AIR_HU, HeadParams, build_head, draw_head_params
from medseg.data.synthetic.lesions import add_lesions
from medseg.data.synthetic.mimics import add_mimics
from medseg.data.synthetic.plan import SeriesPlan, plan_series
from medseg.data.synthetic.quirks import HU_MAX, HU_MIN
from medseg.data.synthetic.scanner import acquire_site
from medseg.data.synthetic.sites import CLASSIC, SiteParams

# Label rule: a slice is positive for a subtype when that subtype's lesion mask covers at least
# min_positive_pixels(size) pixels on it: 48 at 512 px, scaled with the pixel area (about 12 mm²
# at any size), never fewer than 2.
POSITIVE_PIXELS_AT_512 = 48
MIN_POSITIVE_PIXELS = 2


def min_positive_pixels(size: int) -> int:
    return max(MIN_POSITIVE_PIXELS, int(round(POSITIVE_PIXELS_AT_512 * (size / 512.0) ** 2)))


@dataclass
class SyntheticSeries:
    """Ground truth of one series, slices in file (InstanceNumber) order."""

    plan: SeriesPlan
    size: int
    pixel_mm: float
    hu: np.ndarray                         # int16 [S, H, W], true HU in [-1000, 3000]
    lesion_masks: dict[str, np.ndarray]    # subtype → bool [S, H, W] (all five subtypes)
    labels: np.ndarray                     # uint8 [S, 6] in LABELS order, any = OR
    positions: np.ndarray                  # float64 [S]: z of each slice (mm)
    origin: tuple[float, float]            # ImagePositionPatient x, y of the first pixel
    sop_ids: list[str]
    fov: np.ndarray                        # bool [H, W]
    min_pixels: int
    subtle: dict[str, bool] = field(default_factory=dict)  # subtype → lesion is subtle
    contrast: dict[str, float] = field(default_factory=dict)  # subtype → HU over brain (subtle) or blood HU

    @property
    def seed(self) -> int:
        return self.plan.seed

    @property
    def series_index(self) -> int:
        return self.plan.series_index

    @property
    def patient_id(self) -> str:
        return self.plan.patient_id

    @property
    def study_id(self) -> str:
        return self.plan.study_id

    @property
    def series_id(self) -> str:
        return self.plan.series_id

    @property
    def quirk(self) -> str:
        return self.plan.pixel_quirk

    @property
    def window_mode(self) -> str:
        return self.plan.window_mode

    @property
    def ascending(self) -> bool:
        return self.plan.ascending

    @property
    def site(self) -> str:
        return self.plan.site


def slice_positions(plan: SeriesPlan) -> np.ndarray:
    """z of each slice in InstanceNumber order, rounded as written to ImagePositionPatient."""
    z = np.round(plan.z_start + np.arange(plan.n_slices) * plan.spacing_mm, 3)
    return z if plan.ascending else z[::-1].copy()


def _acquire(hu: np.ndarray, fov: np.ndarray, pixel_mm: float, blur_mm: float, noise_sd: float,
             rng: np.random.Generator) -> np.ndarray:
    """Reconstruction blur + quantum noise, clip to the HU range, air outside the field of view."""
    sigma = blur_mm / pixel_mm
    if sigma >= 0.2:
        for k in range(hu.shape[0]):
            hu[k] = cv2.GaussianBlur(hu[k], (0, 0), sigma)
    # Larger pixels average more photons: less noise per pixel at low resolution.
    sd = noise_sd * float(np.clip(0.5 / pixel_mm, 0.35, 1.0))
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(sd)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    hu[:, ~fov] = AIR_HU
    return np.rint(hu).astype(np.int16)


def _site_head(params: HeadParams, site: SiteParams, fov_mm: float, z_low: float) -> HeadParams:
    """The site's head size, shape, position and how much skull base the scan range holds."""
    a, b = params.a * site.head_scale, params.b * site.head_scale * site.head_aspect
    room = max(fov_mm / 2.0 - b - 10.0, 0.0)
    cx, cy = (params.cx, params.cy) if site.head_shift is None else (site.head_shift[0] * room, site.head_shift[1] * room)
    cz = params.cz if site.base_depth is None else z_low + site.base_depth * params.c
    return replace(params, a=float(a), b=float(b), cx=float(cx), cy=float(cy), cz=float(cz))


def synthesize_series(seed: int, series_index: int, size: int = 512, n_slices: int | None = None,
                      sites: tuple[str, ...] = (CLASSIC,), site_params: SiteParams | None = None) -> SyntheticSeries:
    """Pure function of its arguments: the same call always returns the same series.

    The series is acquired at a site drawn among ``sites`` (see ``sites``); ``site_params``
    replaces that draw (tests switch single factors on and off with it).
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    plan = plan_series(seed, series_index, n_slices, sites=sites, site_params=site_params)
    site = plan.site_params
    rng = np.random.default_rng([seed, 1, series_index])
    pixel_mm = round(plan.fov_mm / size, 6)
    positions = slice_positions(plan)
    params = draw_head_params(rng, plan.fov_mm, float(positions.min()), float(positions.max()))
    if site is not None:
        params = _site_head(params, site, plan.fov_mm, float(positions.min()))
    head = build_head(params, rng, size, pixel_mm, positions)
    if site is not None:
        add_mimics(head, site, seed, series_index)
    min_pixels = min_positive_pixels(size)
    lesions = add_lesions(head, plan.subtypes, rng, min_pixels, hard=site is not None and site.hard_lesions)
    if site is None:
        hu = _acquire(head.hu, head.fov, pixel_mm, params.blur_mm, params.noise_sd, rng)
    else:
        hu = acquire_site(head, site, plan.spacing_mm, seed, series_index)

    masks = {s: np.zeros(hu.shape, dtype=bool) for s in SUBTYPES}
    r0, r1, c0, c1 = head.box
    for lesion in lesions:
        masks[lesion.subtype][:, r0:r1, c0:c1] |= lesion.mask & head.fov[r0:r1, c0:c1]
    labels = np.zeros((len(positions), len(LABELS)), dtype=np.uint8)
    for j, subtype in enumerate(SUBTYPES):
        labels[:, j] = masks[subtype].sum(axis=(1, 2)) >= min_pixels
    labels[:, -1] = labels[:, :-1].max(axis=1)
    half = (size - 1) / 2.0 * pixel_mm
    origin = (round(plan.origin_offset[0] - half, 3), round(plan.origin_offset[1] - half, 3))
    return SyntheticSeries(
        plan=plan, size=size, pixel_mm=pixel_mm, hu=hu, lesion_masks=masks, labels=labels,
        positions=positions, origin=origin, sop_ids=ids.sop_ids(seed, series_index, len(positions)),
        fov=head.fov, min_pixels=min_pixels, subtle={les.subtype: les.subtle for les in lesions},
        contrast={les.subtype: les.contrast for les in lesions},
    )
