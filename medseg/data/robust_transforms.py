"""Scanner-robustness augmentations: what changes between hospitals, drawn once per series.

A second scanner changes the noise level and grain, the reconstruction kernel (smooth or sharp),
the contrast curve and the HU calibration, the same way on every slice of a study. So these
transforms draw their parameters once per series even inside a ``per_slice: true`` pipeline (the
paper's geometric draws stay per slice): ``sample`` returns the draw it made for the same random
state object, and the loader gives every series item a fresh generator
(``RSNASeriesDataset.rng(index, epoch)``). Images are the uint8 windowed slices (one channel per
HU window, ``windows`` in the order of the cache); noise and window-level jitter act in HU, so
the three windows see one consistent change. Pixels saturated at 0 or 255 stay saturated: their
HU is unknown beyond the window (air stays black, bone stays white).

YAML (before ``Normalize``), e.g.::

    - {type: ScannerNoise, sigma_hu: [0, 12], prob: 0.8}
    - {type: BlurSharpen, blur_sigma: [0.3, 1.2], sharpen: [0.2, 1.0], prob: 0.6}
    - {type: GammaContrast, gamma: [0.8, 1.25], contrast: [0.85, 1.15], prob: 0.5}
    - {type: WindowJitter, level_hu: [-8, 8], width_scale: [0.9, 1.1], prob: 0.8}
"""

from __future__ import annotations

import abc

from typing import Any, Sequence

import cv2
import numpy as np

from medseg.constants import DEFAULT_WINDOWS
from medseg.data.transforms import Transform, per_window, to_uint8
from medseg.registry import TRANSFORMS


def _range(name: str, value: Sequence[float], lo: float, hi: float = float("inf")) -> tuple[float, float]:
    if len(value) != 2 or not lo <= float(value[0]) <= float(value[1]) <= hi:
        raise ValueError(f"{name} must be [min, max] with {lo} <= min <= max <= {hi}, got {value!r}")
    return float(value[0]), float(value[1])


def _prob(name: str, prob: float) -> float:
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"{name}: prob must be in [0, 1], got {prob!r}")
    return float(prob)


class SeriesTransform(Transform):
    """One draw per series: repeated ``sample`` calls with the same generator object (the slices of
    one series item) return the first draw. ``draw`` does the drawing (``None``: leave as is)."""

    prob = 1.0

    def __init__(self) -> None:
        self._rng: np.random.Generator | None = None  # a strong reference: its id cannot be reused
        self._params: Any = None

    @abc.abstractmethod
    def draw(self, rng: np.random.Generator) -> Any:
        """This series' parameters (``None``: leave the series as it is)."""

    def sample(self, rng: np.random.Generator) -> Any:
        if rng is not self._rng:
            self._rng = rng
            self._params = self.draw(rng) if rng.uniform() < self.prob else None
        return self._params

    def __getstate__(self) -> dict:  # loader workers get the transform without a stale draw
        return {**self.__dict__, "_rng": None, "_params": None}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def _unsaturated(image: np.ndarray) -> np.ndarray:
    return (image > 0) & (image < 255)


@TRANSFORMS.add_component
class ScannerNoise(SeriesTransform):
    """Quantum noise of sd ``sigma_hu`` (drawn per series) in HU, optionally with a coarser grain
    (``grain_px``: Gaussian correlation), scaled into each window by 255 / width. A new noise field
    per slice, from a generator seeded once per series (reproducible, slice order)."""

    def __init__(self, sigma_hu: Sequence[float] = (0.0, 10.0), grain_px: Sequence[float] = (0.0, 0.0),
                 windows: Sequence[Sequence[int]] = DEFAULT_WINDOWS, prob: float = 0.8):
        super().__init__()
        self.sigma_hu = _range("ScannerNoise: sigma_hu", sigma_hu, 0.0)
        self.grain_px = _range("ScannerNoise: grain_px", grain_px, 0.0)
        self.widths = np.array([float(w) for _, w in windows], np.float32)
        self.prob = _prob("ScannerNoise", prob)

    def draw(self, rng: np.random.Generator) -> tuple[float, float, np.random.Generator]:
        return float(rng.uniform(*self.sigma_hu)), float(rng.uniform(*self.grain_px)), \
            np.random.default_rng(int(rng.integers(0, 2**63 - 1)))

    def apply(self, image: np.ndarray, params: Any) -> np.ndarray:
        if params is None or params[0] <= 0:
            return image
        sigma, grain, noise_rng = params
        widths = per_window(self.widths, image.shape[-1], "ScannerNoise window widths")  # a stacked slice repeats them
        field = noise_rng.standard_normal(image.shape[:2], dtype=np.float32)
        if grain >= 0.2:
            field = cv2.GaussianBlur(field, (0, 0), grain)
            field /= max(float(field.std()), 1e-6)
        noisy = image.astype(np.float32) + field[..., None] * (np.float32(sigma * 255.0) / widths)
        return np.where(_unsaturated(image), to_uint8(noisy), image)


@TRANSFORMS.add_component
class BlurSharpen(SeriesTransform):
    """A smoother or sharper reconstruction kernel: per series, with probability ``sharp_prob`` an
    unsharp mask of amount ``sharpen`` (1-pixel blur), else a Gaussian blur of ``blur_sigma`` px."""

    def __init__(self, blur_sigma: Sequence[float] = (0.3, 1.2), sharpen: Sequence[float] = (0.2, 1.0),
                 sharp_prob: float = 0.5, prob: float = 0.6):
        super().__init__()
        self.blur_sigma = _range("BlurSharpen: blur_sigma", blur_sigma, 0.0)
        self.sharpen = _range("BlurSharpen: sharpen", sharpen, 0.0)
        self.sharp_prob = _prob("BlurSharpen sharp_prob", sharp_prob)
        self.prob = _prob("BlurSharpen", prob)

    def draw(self, rng: np.random.Generator) -> tuple[str, float]:
        if rng.uniform() < self.sharp_prob:
            return "sharpen", float(rng.uniform(*self.sharpen))
        return "blur", float(rng.uniform(*self.blur_sigma))

    def apply(self, image: np.ndarray, params: Any) -> np.ndarray:
        if params is None:
            return image
        kind, amount = params
        if kind == "blur":
            out = cv2.GaussianBlur(image, (0, 0), amount) if amount >= 0.1 else image
        else:
            smooth = cv2.GaussianBlur(image, (0, 0), 1.0)
            out = to_uint8(image.astype(np.float32) * (1 + amount) - smooth.astype(np.float32) * amount)
        return out.reshape(image.shape)


@TRANSFORMS.add_component
class GammaContrast(SeriesTransform):
    """A different display curve: ``255 * (x / 255) ** gamma``, then contrast about mid-grey, the
    same on every window channel (one 256-entry table per series)."""

    def __init__(self, gamma: Sequence[float] = (0.8, 1.25), contrast: Sequence[float] = (0.85, 1.15),
                 prob: float = 0.5):
        super().__init__()
        self.gamma = _range("GammaContrast: gamma", gamma, 1e-3)
        self.contrast = _range("GammaContrast: contrast", contrast, 0.0)
        self.prob = _prob("GammaContrast", prob)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        gamma, contrast = float(rng.uniform(*self.gamma)), float(rng.uniform(*self.contrast))
        values = 255.0 * (np.arange(256) / 255.0) ** gamma
        return to_uint8(127.5 + contrast * (values - 127.5))

    def apply(self, image: np.ndarray, params: Any) -> np.ndarray:
        return image if params is None else cv2.LUT(image, params).reshape(image.shape)


@TRANSFORMS.add_component
class WindowJitter(SeriesTransform):
    """A scanner's HU calibration and a reader's window choice: every window moves by the same
    ``level_hu`` (HU) and its width scales by the same ``width_scale``; a channel's pixel maps to the
    value the shifted window would give its HU, ``v / s + 255 * (0.5 - (0.5 + dL / W) / s)``."""

    def __init__(self, level_hu: Sequence[float] = (-8.0, 8.0), width_scale: Sequence[float] = (0.9, 1.1),
                 windows: Sequence[Sequence[int]] = DEFAULT_WINDOWS, prob: float = 0.8):
        super().__init__()
        self.level_hu = _range("WindowJitter: level_hu", level_hu, -float("inf"))
        self.width_scale = _range("WindowJitter: width_scale", width_scale, 1e-3)
        self.widths = [float(w) for _, w in windows]
        self.prob = _prob("WindowJitter", prob)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One 256-entry table per window channel: uint8 [1, 256, C] (cv2.LUT's layout)."""
        level, scale = float(rng.uniform(*self.level_hu)), float(rng.uniform(*self.width_scale))
        v = np.arange(256, dtype=np.float64)
        tables = [to_uint8(v / scale + 255.0 * (0.5 - (0.5 + level / w) / scale)) for w in self.widths]
        for table in tables:  # saturated stays saturated (the HU beyond the window is unknown)
            table[0], table[255] = 0, 255
        return np.stack(tables, axis=-1).reshape(1, 256, len(tables))

    def apply(self, image: np.ndarray, params: Any) -> np.ndarray:
        if params is None:
            return image
        if image.shape[-1] % params.shape[-1]:  # a stacked neighbour slice repeats the windows
            raise ValueError(f"WindowJitter: image has {image.shape[-1]} channels, windows give {params.shape[-1]}")
        if image.shape[-1] != params.shape[-1]:
            params = np.tile(params, (1, 1, image.shape[-1] // params.shape[-1]))
        return cv2.LUT(image, params).reshape(image.shape)
