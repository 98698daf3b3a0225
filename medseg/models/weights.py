"""Load local pretrained weights into an encoder, with key mapping and a loaded/missing report.

Sources: ``.safetensors`` (read with safetensors' numpy API: plain arrays, cannot run code) or
``.pdparams`` (Paddle's pickle format: only load files you trust). Nothing is downloaded.

Key maps (``key_map:``), each a function ``source key → our key`` (``None`` = not used):
- ``paddleclas_swin``: PaddleClas ``SwinTransformer`` names are ours already; its derived buffers
  (``relative_position_index``, ``attn_mask``, the export-time ``relative_position_bias``) are
  rebuilt by our blocks and skipped.
- ``paddle_vision``: ``paddle.vision.models`` ResNet/ResNeXt/DenseNet names get the
  ``backbone.`` prefix; their classifier (``fc.*`` / ``out.*``) maps to our per-slice ``head.*``.
- ``medseg``: our own checkpoints (an encoder's keys, or a full model's ``encoder.*`` keys).
- ``auto``: whichever of the above loads the most tensors (ties: the fewest unexpected keys).
Tensors whose shape differs (e.g. a 1000-class ImageNet head vs our 6 outputs) are not loaded
and are listed in the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import paddle

from medseg.utils.logger import get_logger

logger = get_logger("models.weights")

_SWIN_DERIVED = ("relative_position_index", "attn_mask", "relative_position_bias")
_STRIP_PREFIXES = ("backbone.", "model.")


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def map_paddleclas_swin(key: str) -> str | None:
    """PaddleClas SwinTransformer key → ours (``None`` for buffers our blocks derive)."""
    key = _strip(key, _STRIP_PREFIXES)
    if key.rsplit(".", 1)[-1] in _SWIN_DERIVED:
        return None
    return key


def map_paddle_vision(key: str) -> str | None:
    """paddle.vision ResNet/DenseNet key → ``backbone.<key>``; its classifier → ``head.*``."""
    for classifier in ("fc.", "out."):
        if key.startswith(classifier):
            return "head." + key[len(classifier) :]
    return "backbone." + key


def map_medseg(key: str) -> str | None:
    """Our own checkpoints: an encoder state dict as is, or the ``encoder.*`` part of a model."""
    if key.startswith("encoder."):
        return key[len("encoder.") :]
    return key


KEY_MAPS: dict[str, Callable[[str], str | None]] = {
    "medseg": map_medseg,
    "paddleclas_swin": map_paddleclas_swin,
    "paddle_vision": map_paddle_vision,
}


@dataclass
class LoadReport:
    """What happened to each tensor: loaded, left at its initial value, or skipped."""

    path: str
    key_map: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # ours, absent from the file
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (ours, file shape, our shape)
    unexpected: list[str] = field(default_factory=list)  # the file's, no counterpart here
    skipped: list[str] = field(default_factory=list)  # the file's derived buffers

    def summary(self, max_names: int = 8) -> str:
        def names(items: list) -> str:
            shown = ", ".join(str(i) for i in items[:max_names])
            return shown + (f", … (+{len(items) - max_names})" if len(items) > max_names else "")

        lines = [
            f"pretrained {self.path} (key map {self.key_map}): loaded {len(self.loaded)}, "
            f"missing {len(self.missing)}, shape-mismatched {len(self.mismatched)}, "
            f"unexpected {len(self.unexpected)}, derived buffers skipped {len(self.skipped)}"
        ]
        if self.missing:
            lines.append(f"  missing (kept initial values): {names(self.missing)}")
        if self.mismatched:
            lines.append("  shape-mismatched (not loaded): " + names([f"{k} file{list(a)} vs ours{list(b)}" for k, a, b in self.mismatched]))
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {names(self.unexpected)}")
        return "\n".join(lines)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """``.safetensors`` or ``.pdparams`` → {name: numpy array}; clear errors for bad paths."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if ext == ".pdparams":
        state = paddle.load(path, return_numpy=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        return {k: np.asarray(v) for k, v in state.items() if isinstance(v, (np.ndarray, np.generic))}
    raise ValueError(f"{path}: unsupported weights format {ext!r} (use .safetensors or .pdparams)")


def _match(state: dict[str, np.ndarray], target: dict[str, paddle.Tensor], key_map: Callable, path: str, name: str) -> tuple[LoadReport, dict]:
    report = LoadReport(path=path, key_map=name)
    updates: dict[str, np.ndarray] = {}
    for src, value in state.items():
        dst = key_map(src)
        if dst is None:
            report.skipped.append(src)
        elif dst not in target:
            report.unexpected.append(src)
        elif tuple(value.shape) != tuple(target[dst].shape):
            report.mismatched.append((dst, tuple(value.shape), tuple(target[dst].shape)))
        else:
            updates[dst] = value
    report.loaded = sorted(updates)
    seen = set(updates) | {k for k, _, _ in report.mismatched}
    report.missing = [k for k in target if k not in seen]
    return report, updates


def load_pretrained(layer: paddle.nn.Layer, path: str, key_map: str | Callable = "auto") -> LoadReport:
    """Copy matching tensors from ``path`` into ``layer`` and log the report; returns it.

    Raises ``FileNotFoundError`` naming the file when it does not exist and ``ValueError`` when
    not a single tensor matches (almost always the wrong file or key map).
    """
    state = read_state_dict(path)
    target = layer.state_dict()
    if callable(key_map):
        candidates = {getattr(key_map, "__name__", "custom"): key_map}
    elif key_map == "auto":
        candidates = KEY_MAPS
    elif key_map in KEY_MAPS:
        candidates = {key_map: KEY_MAPS[key_map]}
    else:
        raise ValueError(f"unknown key_map {key_map!r}; known: auto, {', '.join(KEY_MAPS)}")
    best = max((_match(state, target, fn, path, name) for name, fn in candidates.items()), key=lambda r: (len(r[1]), -len(r[0].unexpected)))
    report, updates = best
    if not updates:
        raise ValueError(f"{path}: no tensor matches {type(layer).__name__} ({report.summary()})")
    for key, value in updates.items():
        tensor = target[key]
        tensor.set_value(value.astype(str(tensor.dtype).split(".")[-1], copy=False))
    logger.info(report.summary())
    return report
