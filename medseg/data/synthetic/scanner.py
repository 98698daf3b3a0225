"""How a site's scanner turns the phantom into the stored image (the site path of ``series``).

In order: slice sensitivity along z (partial volume of thick slices), beam-hardening streaks
where dense skull-base bone is in the slice, patient motion, a coarser native matrix, the
reconstruction kernel (smooth blur or sharp unsharp mask) applied to image and noise alike,
quantum noise with the kernel's grain, and the scanner's HU calibration offset. Each random step
has its own stream ``(seed, 8, series index, k)`` so a factor switched off changes nothing else.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from medseg.data.synthetic.anatomy import AIR_HU, Head
from medseg.data.synthetic.quirks import HU_MAX, HU_MIN
from medseg.data.synthetic.sites import SiteParams

FWHM_PER_SIGMA = 2.3548


def _blur(volume: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px < 0.2:
        return volume
    return np.stack([cv2.GaussianBlur(plane, (0, 0), sigma_px) for plane in volume])


def _kernel(volume: np.ndarray, site: SiteParams, pixel_mm: float) -> np.ndarray:
    """Smooth kernels blur; sharp ones add back the detail a 1-pixel blur removes."""
    out = _blur(volume, site.kernel_mm / pixel_mm)
    if site.sharpen > 0:
        out = out + np.float32(site.sharpen) * (out - _blur(out, 1.0))
    return out


def slice_profile(hu: np.ndarray, thickness_mm: float, spacing_mm: float) -> np.ndarray:
    """Average along z with the slice sensitivity profile (Gaussian, FWHM = slice thickness):
    a bleed thinner than the slice loses contrast and bleeds into its neighbours."""
    sigma = thickness_mm / FWHM_PER_SIGMA / max(spacing_mm, 1e-3)
    if sigma < 0.2 or hu.shape[0] < 2:
        return hu
    return gaussian_filter1d(hu, sigma, axis=0, mode="nearest", truncate=3.0)


def _streaks(head: Head, site: SiteParams, rng: np.random.Generator) -> None:
    """Dark bands through the posterior fossa (the 'Hounsfield bar' between the petrous bones)
    and a few streaks fanning from the skull base, as deep as the slice holds dense bone."""
    p = head.params
    r0, r1, c0, c1 = head.box
    hu = head.hu[:, r0:r1, c0:c1]
    # Dense bone of the skull base and petrous ridges (below the brain; the vault is not counted).
    dense = ((hu > 600) & (head.r < 0.9) & (head.Z < -0.25 * p.c)).sum(axis=(1, 2)).astype(np.float32)
    if dense.max() <= 0:
        return
    strength = (dense / dense.max())[:, None, None]
    x0, y0 = 0.0, 0.15 * p.b
    total = np.zeros(hu.shape, np.float32)
    angles = [0.0] + list(rng.uniform(-math.pi / 2, math.pi / 2, size=int(rng.integers(2, 5))))
    for k, phi in enumerate(angles):
        width = rng.uniform(1.5, 3.5)
        dist = np.abs((head.X - x0) * math.sin(phi) - (head.Y - y0) * math.cos(phi))
        depth = 1.0 if k == 0 else rng.uniform(0.3, 0.8)
        total -= np.float32(depth) * np.exp(-(dist / width) ** 2)
    hu += np.float32(site.streak_hu) * strength * total * head.cavity


def _motion(hu: np.ndarray, site: SiteParams, pixel_mm: float, rng: np.random.Generator) -> None:
    """A run of slices smeared along one direction, with a faint ghost of the head."""
    n = hu.shape[0]
    count = max(1, int(round(n * rng.uniform(0.2, 0.6))))
    start = int(rng.integers(0, n - count + 1))
    angle = rng.uniform(0, math.pi)
    length = max(2, int(round(site.motion_px)) + 1)
    kernel = np.zeros((2 * length + 1, 2 * length + 1), np.float32)
    for t in np.linspace(-length / 2, length / 2, 4 * length):
        kernel[int(round(length + t * math.sin(angle))), int(round(length + t * math.cos(angle)))] = 1.0
    kernel /= kernel.sum()
    shift = np.float32([[1, 0, 2 * length * math.cos(angle)], [0, 1, 2 * length * math.sin(angle)]])
    for k in range(start, start + count):
        smeared = cv2.filter2D(hu[k], -1, kernel, borderType=cv2.BORDER_REPLICATE)
        ghost = cv2.warpAffine(hu[k], shift, hu[k].shape[::-1], borderMode=cv2.BORDER_REPLICATE)
        hu[k] = 0.88 * smeared + 0.12 * ghost


def _matrix(hu: np.ndarray, fraction: float) -> np.ndarray:
    """Reconstructed on a coarser matrix, stored at the written one (lost detail, not pixels)."""
    size = hu.shape[-1]
    native = int(round(size * fraction))
    if native >= size:
        return hu
    return np.stack([cv2.resize(cv2.resize(plane, (native, native), interpolation=cv2.INTER_AREA), (size, size),
                                interpolation=cv2.INTER_LINEAR) for plane in hu])


def _noise(shape: tuple[int, ...], site: SiteParams, pixel_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Noise of the site's level and grain (correlation length, then the kernel's sharpening)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = _blur(noise, site.grain_mm / pixel_mm)
    if site.sharpen > 0:
        noise = noise + np.float32(site.sharpen) * (noise - _blur(noise, 1.0))
    noise /= max(float(noise.std()), 1e-6)
    # Larger pixels average more photons (as in the classic path).
    return noise * np.float32(site.noise_sd * float(np.clip(0.5 / pixel_mm, 0.35, 1.0)))


def acquire_site(head: Head, site: SiteParams, spacing_mm: float, seed: int, series_index: int) -> np.ndarray:
    """The stored HU (int16 [S, H, W]) of the phantom in ``head.hu`` (modified in place)."""
    stream = lambda k: np.random.default_rng([seed, 8, series_index, k])  # noqa: E731
    if site.streak_hu:
        _streaks(head, site, stream(10))
    hu = slice_profile(head.hu, site.thickness_mm, spacing_mm)
    if site.motion_px:
        _motion(hu, site, head.pixel_mm, stream(11))
    hu = _matrix(hu, site.matrix)
    hu = _kernel(hu, site, head.pixel_mm)
    if site.noise_sd:
        hu = hu + _noise(hu.shape, site, head.pixel_mm, stream(12))
    hu = hu + np.float32(site.hu_offset)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    hu[:, ~head.fov] = AIR_HU
    return np.rint(hu).astype(np.int16)
