"""Series-level choices (length, geometry, storage quirk, which bleeds), cheap to compute.

A plan is drawn from its own random stream keyed by (seed, series index), so a test or the
cohort writer can survey hundreds of series without synthesising a single voxel, and the voxels
of series ``i`` never depend on other series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medseg.constants import SUBTYPES
from medseg.data.synthetic import ids
from medseg.data.synthetic.quirks import PIXEL_QUIRK_P, PIXEL_QUIRKS, WINDOW_MODE_P, WINDOW_MODES, window_tags
from medseg.data.synthetic.sites import CLASSIC, SiteParams, choose_site, draw_site_params

BLEED_FRACTION = 0.4
# How often each subtype is picked for a bleeding series (epidural is rare, as in RSNA).
SUBTYPE_P = {"epidural": 0.08, "intraparenchymal": 0.26, "intraventricular": 0.14,
             "subarachnoid": 0.24, "subdural": 0.28}
N_TYPES_P = (0.6, 0.3, 0.1)  # one, two or three subtypes in a bleeding series
LONG_SERIES_FRACTION = 0.08    # series of 61-80 slices; the rest have 20-60


@dataclass(frozen=True)
class SeriesPlan:
    seed: int
    series_index: int
    n_slices: int
    spacing_mm: float          # distance between slice centres
    ascending: bool            # z grows with InstanceNumber (else it shrinks)
    z_start: float             # z of the lowest slice (mm)
    fov_mm: float              # reconstruction diameter (the image width)
    origin_offset: tuple[float, float]  # table shift of ImagePositionPatient x, y (mm)
    pixel_quirk: str
    window_mode: str
    window: dict = field(repr=False)
    subtypes: tuple[str, ...]  # bleed subtypes planned for this series (empty: no bleed)
    patient_index: int
    patient_id: str
    study_id: str
    series_id: str
    site: str = CLASSIC
    site_params: SiteParams | None = field(default=None, repr=False)  # None: the classic look


def plan_series(seed: int, series_index: int, n_slices: int | None = None, sites: tuple[str, ...] = (CLASSIC,),
                site_params: SiteParams | None = None) -> SeriesPlan:
    """The plan of series ``series_index``; ``n_slices`` overrides the drawn length (for tests).

    The series' site is drawn among ``sites``; ``site_params`` replaces that draw (tests).
    """
    rng = np.random.default_rng([seed, 0, series_index])
    drawn = int(rng.integers(61, 81)) if rng.random() < LONG_SERIES_FRACTION else int(rng.integers(20, 61))
    if site_params is None:
        site_params = draw_site_params(seed, series_index, choose_site(seed, series_index, tuple(sites)))
    if site_params is not None and site_params.slices is not None:
        drawn = site_params.slices
    length = drawn if n_slices is None else int(n_slices)
    if not 2 <= length <= ids.SLICES_PER_SERIES_SLOT:
        raise ValueError(f"n_slices must be in [2, {ids.SLICES_PER_SERIES_SLOT}], got {length}")
    coverage = rng.uniform(135.0, 165.0)  # skull base to vertex, mm
    spacing = round(coverage / (length - 1), 3)
    ascending = bool(rng.random() < 0.5)
    z_start = round(float(rng.uniform(-80.0, 120.0)), 3)
    fov = float(rng.uniform(225.0, 290.0))
    if site_params is not None and site_params.fov_mm is not None:
        fov = site_params.fov_mm
    offset = (round(float(rng.uniform(-8, 8)), 3), round(float(rng.uniform(-30, 30)), 3))
    quirk = str(rng.choice(PIXEL_QUIRKS, p=PIXEL_QUIRK_P))
    window_mode = str(rng.choice(WINDOW_MODES, p=WINDOW_MODE_P))
    window = window_tags(window_mode, rng)
    subtypes: tuple[str, ...] = ()
    if rng.random() < BLEED_FRACTION:
        n_types = int(rng.choice(len(N_TYPES_P), p=N_TYPES_P)) + 1
        p = np.array([SUBTYPE_P[s] for s in SUBTYPES])
        chosen = rng.choice(len(SUBTYPES), size=n_types, replace=False, p=p / p.sum())
        subtypes = tuple(SUBTYPES[i] for i in sorted(chosen))
    patient = ids.patient_index(seed, series_index)
    return SeriesPlan(
        seed=seed, series_index=series_index, n_slices=length, spacing_mm=spacing,
        ascending=ascending, z_start=z_start, fov_mm=fov, origin_offset=offset,
        pixel_quirk=quirk, window_mode=window_mode, window=window, subtypes=subtypes,
        patient_index=patient, patient_id=ids.patient_id(seed, patient),
        study_id=ids.study_id(seed, series_index), series_id=ids.series_id(seed, series_index),
        site=CLASSIC if site_params is None else site_params.site, site_params=site_params,
    )
