"""Scanner sites: each series is acquired at one site, whose preset plus per-series jitter sets
how it looks (noise and kernel, slice thickness, normal hyperdense structures, skull base, streaks,
motion, head placement, field of view, matrix, HU calibration) and how hard its bleeds are.

Why: a model trained on one phantom "scanner" was confidently wrong on another author's phantom
(issue 13); RSNA 2019 itself pools several institutions. ``classic`` is the generator as it was
before sites existed (bit for bit: it draws nothing from the site streams), so old cohorts stay
reproducible; the others differ from it and from each other.

Randomness: the site of series ``i`` comes from stream ``(seed, 7, i)``, its parameters from
``(seed, 6, i)``, and each factor paints with its own stream ``(seed, 8, i, k)``, so switching
one factor off (tests) leaves every other pixel of the series unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSIC = "classic"


@dataclass(frozen=True)
class SitePreset:
    """Ranges (lo, hi) drawn uniformly per series; probabilities for on/off structures."""

    slices: tuple[int, int]          # series length range (sets the spacing over the head)
    thickness_mm: tuple[float, float]  # slice sensitivity FWHM along z (partial volume)
    fov_mm: tuple[float, float]
    matrix: tuple[float, float]      # native reconstruction matrix as a fraction of the written one
    noise_sd: tuple[float, float]    # HU at 0.5 mm pixels
    grain_mm: tuple[float, float]    # noise correlation length (0 = white, the sharp kernels' fine grain)
    kernel_mm: tuple[float, float]   # image blur sigma (smooth kernels)
    sharpen: tuple[float, float]     # unsharp-mask amount (sharp kernels), applied to image and noise
    hu_offset: tuple[float, float]   # calibration offset of the scanner, HU
    head_scale: tuple[float, float]
    head_aspect: tuple[float, float]  # front-back / left-right stretch
    head_shift: float                # share of the free room the head may be off centre
    base_depth: tuple[float, float]  # head centre above the lowest slice, in half heights (classic 0.74)
    falx_hu: tuple[float, float]
    p_tentorium: float
    p_pineal: float
    p_plexus: float
    dural_plaques: tuple[int, int]
    p_mastoid: float
    streak_hu: tuple[float, float]   # beam-hardening streak depth at the skull base
    p_motion: float
    motion_px: tuple[float, float]
    hard_lesions: bool               # thin/small/isodense bleeds and bleeds next to bone


@dataclass(frozen=True)
class SiteParams:
    """One series' draw from its site preset; a zero or ``None`` turns a factor off (the defaults:
    the site path with every factor off, which tests switch on one at a time)."""

    site: str
    slices: int | None = None
    thickness_mm: float = 0.0
    fov_mm: float | None = None
    matrix: float = 1.0
    noise_sd: float = 0.0
    grain_mm: float = 0.0
    kernel_mm: float = 0.0
    sharpen: float = 0.0
    hu_offset: float = 0.0
    head_scale: float = 1.0
    head_aspect: float = 1.0
    head_shift: tuple[float, float] | None = None  # (x, y) in [-1, 1] of the free room
    base_depth: float | None = None
    falx_hu: float = 0.0
    tentorium_hu: float = 0.0
    pineal_hu: float = 0.0
    plexus_hu: float = 0.0
    dural_plaques: int = 0
    mastoid: bool = False
    streak_hu: float = 0.0
    motion_px: float = 0.0
    hard_lesions: bool = False


SITE_PRESETS: dict[str, SitePreset | None] = {
    CLASSIC: None,  # the pre-site generator: no site factor at all
    # Modern scanner, soft-tissue kernel: smooth, low noise with a coarse grain, 5 mm slices.
    "smooth": SitePreset(
        slices=(26, 34), thickness_mm=(4.5, 5.5), fov_mm=(220, 250), matrix=(0.9, 1.0), noise_sd=(2.0, 4.0),
        grain_mm=(0.8, 1.4), kernel_mm=(0.6, 0.9), sharpen=(0.0, 0.0), hu_offset=(-3, 3), head_scale=(0.95, 1.05),
        head_aspect=(0.95, 1.05), head_shift=0.3, base_depth=(0.74, 0.8), falx_hu=(45, 60), p_tentorium=0.5,
        p_pineal=0.5, p_plexus=0.4, dural_plaques=(0, 1), p_mastoid=0.6, streak_hu=(5, 15), p_motion=0.05,
        motion_px=(1.0, 2.0), hard_lesions=True),
    # Sharp kernel, thin slices: much fine-grained noise, crisp falx and sulci, skull base and air.
    "sharp": SitePreset(
        slices=(44, 60), thickness_mm=(2.5, 3.5), fov_mm=(230, 260), matrix=(1.0, 1.0), noise_sd=(8.0, 14.0),
        grain_mm=(0.0, 0.2), kernel_mm=(0.25, 0.4), sharpen=(0.4, 0.9), hu_offset=(-4, 4), head_scale=(0.9, 1.1),
        head_aspect=(0.92, 1.08), head_shift=0.5, base_depth=(0.8, 0.9), falx_hu=(60, 85), p_tentorium=0.8,
        p_pineal=0.7, p_plexus=0.6, dural_plaques=(0, 3), p_mastoid=0.9, streak_hu=(15, 40), p_motion=0.1,
        motion_px=(1.0, 3.0), hard_lesions=True),
    # Older scanner: thick slices, coarse noise, strong streaks, motion, a calibration offset.
    "legacy": SitePreset(
        slices=(20, 28), thickness_mm=(5.0, 7.0), fov_mm=(240, 280), matrix=(0.6, 0.8), noise_sd=(5.0, 9.0),
        grain_mm=(1.0, 2.0), kernel_mm=(0.4, 0.7), sharpen=(0.0, 0.2), hu_offset=(-8, 10), head_scale=(0.9, 1.1),
        head_aspect=(0.9, 1.1), head_shift=0.8, base_depth=(0.78, 0.9), falx_hu=(50, 75), p_tentorium=0.6,
        p_pineal=0.6, p_plexus=0.5, dural_plaques=(0, 2), p_mastoid=0.7, streak_hu=(30, 70), p_motion=0.35,
        motion_px=(2.0, 5.0), hard_lesions=True),
    # Large field of view (small head in the frame, far off centre), children and small adults.
    "wide": SitePreset(
        slices=(30, 50), thickness_mm=(3.0, 5.0), fov_mm=(280, 340), matrix=(0.8, 1.0), noise_sd=(4.0, 8.0),
        grain_mm=(0.3, 0.8), kernel_mm=(0.35, 0.6), sharpen=(0.0, 0.5), hu_offset=(-5, 5), head_scale=(0.85, 1.0),
        head_aspect=(0.85, 1.1), head_shift=0.9, base_depth=(0.74, 0.86), falx_hu=(50, 80), p_tentorium=0.6,
        p_pineal=0.4, p_plexus=0.4, dural_plaques=(0, 2), p_mastoid=0.6, streak_hu=(10, 35), p_motion=0.15,
        motion_px=(1.0, 4.0), hard_lesions=True),
}
SITES: tuple[str, ...] = tuple(SITE_PRESETS)


def parse_sites(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"all"`` → every preset; ``"smooth,sharp"`` → those two (order kept, duplicates dropped)."""
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if items == ["all"]:
        return SITES
    unknown = [s for s in items if s not in SITE_PRESETS]
    if unknown or not items:
        raise ValueError(f"unknown site(s) {unknown or text!r}; expected 'all' or a comma list of {', '.join(SITES)}")
    return tuple(dict.fromkeys(items))


def choose_site(seed: int, series_index: int, sites: tuple[str, ...]) -> str:
    if len(sites) == 1:
        return sites[0]
    return str(sites[int(np.random.default_rng([seed, 7, series_index]).integers(len(sites)))])


def _u(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


def draw_site_params(seed: int, series_index: int, site: str) -> SiteParams | None:
    """The site parameters of one series (``None`` for ``classic``)."""
    preset = SITE_PRESETS[site]
    if preset is None:
        return None
    rng = np.random.default_rng([seed, 6, series_index])
    return SiteParams(
        site=site, slices=int(rng.integers(preset.slices[0], preset.slices[1] + 1)),
        thickness_mm=_u(rng, preset.thickness_mm), fov_mm=_u(rng, preset.fov_mm), matrix=_u(rng, preset.matrix),
        noise_sd=_u(rng, preset.noise_sd), grain_mm=_u(rng, preset.grain_mm), kernel_mm=_u(rng, preset.kernel_mm),
        sharpen=_u(rng, preset.sharpen), hu_offset=_u(rng, preset.hu_offset), head_scale=_u(rng, preset.head_scale),
        head_aspect=_u(rng, preset.head_aspect),
        head_shift=(float(rng.uniform(-1, 1)) * preset.head_shift, float(rng.uniform(-1, 1)) * preset.head_shift),
        base_depth=_u(rng, preset.base_depth), falx_hu=_u(rng, preset.falx_hu),
        tentorium_hu=_u(rng, (50, 75)) if rng.random() < preset.p_tentorium else 0.0,
        pineal_hu=_u(rng, (150, 450)) if rng.random() < preset.p_pineal else 0.0,
        plexus_hu=_u(rng, (120, 350)) if rng.random() < preset.p_plexus else 0.0,
        dural_plaques=int(rng.integers(preset.dural_plaques[0], preset.dural_plaques[1] + 1)),
        mastoid=bool(rng.random() < preset.p_mastoid), streak_hu=_u(rng, preset.streak_hu),
        motion_px=_u(rng, preset.motion_px) if rng.random() < preset.p_motion else 0.0,
        hard_lesions=preset.hard_lesions,
    )

