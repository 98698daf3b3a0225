"""Training's eval preprocessing, rebuilt from the experiment config.

Training sees a slice as: uint8 windows of the HU image (``medseg.data.series_volume``, the same
lookup tables prepare uses), cropped to the head box found at prepare time (``medseg.data.crop``),
then the ``val_dataset`` (or ``infer_dataset``) transforms of the config. Predict and export call
the same functions, so a new study is seen exactly as the validation split was.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from medseg.config import Config
from medseg.data.transforms import Compose, ToCHW, Transform
from medseg.registry import TRANSFORMS, ConfigError, build


def eval_transform_config(cfg: Config) -> list[dict]:
    """The transform list of the dataset section inference uses (``infer_dataset`` if present,
    else ``val_dataset``; the first entry when the section is a list)."""
    key = "infer_dataset" if "infer_dataset" in cfg else "val_dataset"
    section = cfg.section(key)
    entry = section[0] if isinstance(section, list) else section
    transforms = entry.get("transforms") if isinstance(entry, dict) else None
    if not transforms:
        raise ConfigError(f"{cfg.path or '<config>'}: {key} has no transforms (predict needs the eval preprocessing)")
    return copy.deepcopy(list(transforms))


def build_eval_transforms(spec: Sequence[dict], where: str = "eval transforms") -> Compose:
    """Build a deterministic Compose from a transform list; it must end with ToCHW like a dataset's."""
    transforms: list[Transform] = build(copy.deepcopy(list(spec)), TRANSFORMS, where)
    if not transforms or not isinstance(transforms[-1], ToCHW):
        raise ConfigError(f"{where}: transforms must end with ToCHW (models take C × H × W)")
    return Compose(transforms, per_slice=True)


def apply_transforms(compose: Compose, slices: Sequence[np.ndarray]) -> np.ndarray:
    """Cropped uint8 slices ``[H_i, W_i, C]`` → float32 ``[S, C, H, W]``. Eval transforms draw
    nothing; a fixed seed keeps the call deterministic even if one did."""
    return np.stack(compose(list(slices), np.random.default_rng(0))).astype(np.float32, copy=False)


def model_input_shape(compose: Compose, channels: int) -> tuple[int, int | None, int | None]:
    """``(C, H, W)`` the transforms produce; H/W are None when they follow the crop size (no Resize)."""
    shapes = {apply_transforms(compose, [np.zeros((h, w, channels), np.uint8)]).shape[1:] for h, w in ((97, 131), (512, 512))}
    if len(shapes) == 1:
        c, h, w = shapes.pop()
        return int(c), int(h), int(w)
    return channels, None, None
