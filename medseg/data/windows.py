"""HU → uint8 windows with the original method's formula.

``lo = c - w // 2``, ``hi = c + w // 2``, ``(hu - lo) / (hi - lo) * 255``, clipped to [0, 255] and
truncated to uint8. Keeping the formula bit-exact keeps cached images identical to the paper's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medseg.constants import DEFAULT_WINDOWS

Window = tuple[int, int]


def parse_windows(text: str) -> tuple[Window, ...]:
    """``"40/80,80/200,40/380"`` → ``((40, 80), (80, 200), (40, 380))``; raises ValueError."""
    windows = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        centre, sep, width = item.partition("/")
        if not sep:
            raise ValueError(f"window {item!r} is not CENTRE/WIDTH")
        c, w = int(centre), int(width)
        if w <= 1:
            raise ValueError(f"window {item!r}: width must be > 1")
        windows.append((c, w))
    if not windows:
        raise ValueError(f"no windows in {text!r}")
    return tuple(windows)


def format_windows(windows: Sequence[Window]) -> str:
    return ",".join(f"{c}/{w}" for c, w in windows)


def window_uint8(hu: np.ndarray, centre: int, width: int) -> np.ndarray:
    """One window, the original formula (float64 so truncation does not depend on dtype)."""
    lo, hi = centre - width // 2, centre + width // 2
    scaled = (np.asarray(hu, dtype=np.float64) - lo) / (hi - lo) * 255.0
    return np.clip(scaled, 0.0, 255.0).astype(np.uint8)


def apply_windows(hu: np.ndarray, windows: Sequence[Window] = DEFAULT_WINDOWS) -> np.ndarray:
    """All windows stacked last: ``[..., C]`` uint8."""
    return np.stack([window_uint8(hu, c, w) for c, w in windows], axis=-1)
