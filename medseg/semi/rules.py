"""Teacher probabilities → pseudo-labels: confidence filter, temperature sharpening, hard labels.

Pure NumPy over ``[N, 6]`` arrays so each rule can be tested on its own. The order is fixed:

1. the confidence filter looks at the *teacher's* probabilities (sharpening would push every
   value out of the band and hide the uncertainty it is meant to catch);
2. temperature: ``sigmoid(logit(p) / T)``; ``T < 1`` sharpens towards 0/1, ``T > 1`` softens;
3. hard labels: values at or above ``hi`` become 1, at or below ``lo`` become 0, the rest stay soft.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.outputs.calibrate import temperature_scale


@dataclass(frozen=True)
class PseudoLabelRules:
    """The options of ``python -m medseg.semi.pseudo_label`` (see the module doc for the order)."""

    temperature: float = 1.0
    uncertain_band: tuple[float, float] | None = None
    drop: str = "series"                      # "slice" or "series"
    max_uncertain_fraction: float = 0.0       # series mode: drop a series above this share
    hard_threshold: tuple[float, float] | None = None  # (hi, lo)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.uncertain_band is not None:
            lo, hi = self.uncertain_band
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"uncertain_band must satisfy 0 <= LO < HI <= 1, got {self.uncertain_band}")
        if self.drop not in ("slice", "series"):
            raise ValueError(f"drop must be 'slice' or 'series', got {self.drop!r}")
        if not 0.0 <= self.max_uncertain_fraction < 1.0:
            raise ValueError(f"max_uncertain_fraction must be in [0, 1), got {self.max_uncertain_fraction}")
        if self.hard_threshold is not None:
            hi, lo = self.hard_threshold
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"hard_threshold is HI LO with 0 <= LO < HI <= 1, got {self.hard_threshold}")


def sharpen(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``sigmoid(logit(p) / T)`` element-wise: the calibration's temperature scaling with one T."""
    return temperature_scale(probs, temperature)


def harden(probs: np.ndarray, hi: float, lo: float) -> np.ndarray:
    """1 where ``p >= hi``, 0 where ``p <= lo``, ``p`` elsewhere."""
    out = np.array(probs, dtype=np.float64, copy=True)
    out[out >= hi] = 1.0
    out[out <= lo] = 0.0
    return out


def uncertain_slices(probs: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """``[N]`` bool: a slice is uncertain if any of its probabilities lies strictly inside the band."""
    lo, hi = band
    probs = np.asarray(probs)
    return ((probs > lo) & (probs < hi)).any(axis=1)


def keep_mask(probs: np.ndarray, series_ids: np.ndarray, rules: PseudoLabelRules) -> np.ndarray:
    """``[N]`` bool: the slices that keep a pseudo-label under the confidence filter."""
    n = len(probs)
    if rules.uncertain_band is None:
        return np.ones(n, dtype=bool)
    uncertain = uncertain_slices(probs, rules.uncertain_band)
    if rules.drop == "slice":
        return ~uncertain
    series_ids = np.asarray(series_ids)
    _, inverse = np.unique(series_ids, return_inverse=True)
    share = np.bincount(inverse, weights=uncertain.astype(float)) / np.bincount(inverse)
    return share[inverse] <= rules.max_uncertain_fraction


def pseudo_labels(probs: np.ndarray, series_ids: np.ndarray, rules: PseudoLabelRules) -> tuple[np.ndarray, np.ndarray]:
    """(labels ``[N, 6]`` in [0, 1], keep ``[N]``); labels of dropped slices are NaN."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(series_ids):
        raise ValueError(f"probs must be [N, C] with one series id per row, got {probs.shape} and {len(series_ids)} ids")
    keep = keep_mask(probs, series_ids, rules)
    labels = sharpen(probs, rules.temperature) if rules.temperature != 1.0 else probs.copy()
    if rules.hard_threshold is not None:
        labels = harden(labels, *rules.hard_threshold)
    labels[~keep] = np.nan
    return labels, keep
