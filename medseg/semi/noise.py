"""Label-preserving intensity noise for the "noised" student (Noisy Student, Xie et al. 2020).

The geometric augmentations of :mod:`medseg.data.transforms` move pixels; these change their
values, which a CT model meets in practice through scanner and reconstruction differences.
They follow the same ``sample(rng)`` / ``apply(image, params)`` split so they compose with the
per-slice / per-series switch and stay reproducible from the item's random state; paddle.vision's
``ColorJitter`` draws from a global random state, which would break that.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from medseg.data.transforms import Transform, to_uint8
from medseg.registry import TRANSFORMS


@TRANSFORMS.add_component
class RandomIntensity(Transform):
    """With probability ``prob``: ``x * contrast_factor + brightness_shift`` (on 0..255 values),
    factor drawn from ``1 ± contrast``, shift from ``± brightness * 255``. Before ``Normalize``."""

    def __init__(self, brightness: float = 0.1, contrast: float = 0.2, prob: float = 0.8):
        if brightness < 0 or not 0 <= contrast < 1 or not 0 <= prob <= 1:
            raise ValueError(f"RandomIntensity: need brightness >= 0, 0 <= contrast < 1, 0 <= prob <= 1; "
                             f"got {brightness}, {contrast}, {prob}")
        self.brightness, self.contrast, self.prob = float(brightness), float(contrast), float(prob)

    def sample(self, rng: np.random.Generator) -> tuple[float, float] | None:
        if rng.uniform() >= self.prob:
            return None
        return float(rng.uniform(1 - self.contrast, 1 + self.contrast)), float(rng.uniform(-self.brightness, self.brightness) * 255.0)

    def apply(self, image: np.ndarray, params: tuple[float, float] | None) -> np.ndarray:
        if params is None:
            return image
        factor, shift = params
        return to_uint8(image.astype(np.float32) * factor + shift)


@TRANSFORMS.add_component
class GaussianNoise(Transform):
    """With probability ``prob``: add N(0, sigma²) noise, sigma drawn from ``std`` ([min, max], on
    0..255 values). The noise itself comes from the item's generator, so it is reproducible."""

    def __init__(self, std: Sequence[float] = (0.0, 8.0), prob: float = 0.5):
        if len(std) != 2 or not 0 <= std[0] <= std[1] or not 0 <= prob <= 1:
            raise ValueError(f"GaussianNoise: std is [min, max] with 0 <= min <= max, prob in [0, 1]; got {std}, {prob}")
        self.std, self.prob = (float(std[0]), float(std[1])), float(prob)

    def sample(self, rng: np.random.Generator) -> tuple[float, int] | None:
        if rng.uniform() >= self.prob:
            return None
        return float(rng.uniform(*self.std)), int(rng.integers(0, 2**31 - 1))

    def apply(self, image: np.ndarray, params: Any) -> np.ndarray:
        if params is None:
            return image
        sigma, seed = params
        noise = np.random.default_rng(seed).normal(0.0, sigma, size=image.shape)
        return to_uint8(image.astype(np.float32) + noise)
