"""Datasets and eval preprocessing, built from an experiment config.

Training, evaluation, ``infer.py``, pseudo-labelling, export and ``medseg.predict`` all see data
through these functions, so a new study is preprocessed exactly as the validation split was.
Inference reads the config's ``infer_dataset`` section if it has one, else ``val_dataset``.

Training sees a slice as: uint8 windows of the HU image (``medseg.data.series_volume``, the same
lookup tables prepare uses), cropped to the head box found at prepare time (``medseg.data.crop``),
then the section's transforms.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.config import Config
from medseg.data.dataset import ConcatSeriesDataset
from medseg.data.neighbours import KEY as NEIGHBOURS
from medseg.data.neighbours import check_neighbours, input_channels
from medseg.data.transforms import Compose, ToCHW, Transform
from medseg.registry import DATASETS, TRANSFORMS, ConfigError, build


def config_neighbours(cfg: Config) -> int:
    """The config's ``neighbours`` (k slices on each side stacked as channels; 0: the 2-D model)."""
    try:
        return check_neighbours(cfg.get(NEIGHBOURS, 0), cfg.path or "<config>")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def config_input_channels(cfg: Config, windows: int) -> int:
    """Channels of the model's input slices: ``windows`` per slice, ``2k + 1`` slices."""
    return input_channels(windows, config_neighbours(cfg))


def eval_section(cfg: Config) -> str:
    """The dataset section inference uses: ``infer_dataset`` if present, else ``val_dataset``."""
    return "infer_dataset" if "infer_dataset" in cfg else "val_dataset"


def build_dataset(cfg: Config, key: str, seed: int | None = None, **overrides: Any):
    """A dataset section is one ``{type: ...}`` or a list of them (concatenated, e.g. labelled +
    pseudo-labelled series). ``overrides`` replace keys of every entry (e.g. ``split``)."""
    section = cfg.section(key)
    items = section if isinstance(section, list) else [section]
    built = []
    for i, item in enumerate(items):
        item = {**item, **overrides}
        extra = {"seed": seed} if seed is not None and "seed" not in item else {}
        where = f"{cfg.path or '<config>'}: {key}" + (f"[{i}]" if isinstance(section, list) else "")
        built.append(build(item, DATASETS, where, **extra))
    return built[0] if len(built) == 1 else ConcatSeriesDataset(built)


def build_eval_dataset(cfg: Config, split: str, **overrides: Any):
    """The ``split`` tag read with the eval section's dataset and transforms."""
    return build_dataset(cfg, eval_section(cfg), split=split, **overrides)


def eval_transform_config(cfg: Config) -> list[dict]:
    """The transform list of the eval section (its first entry when the section is a list)."""
    key = eval_section(cfg)
    section = cfg.section(key)
    entry = section[0] if isinstance(section, list) else section
    transforms = entry.get("transforms") if isinstance(entry, dict) else None
    if not transforms:
        raise ConfigError(f"{cfg.path or '<config>'}: {key} has no transforms (inference needs the eval preprocessing)")
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
