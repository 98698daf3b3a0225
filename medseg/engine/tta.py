"""Test-time augmentation (TTA): the model sees a few flipped or transposed copies of each series
and their outputs are averaged (docs/design.md, "Test-time augmentation").

A view acts on the model input ``[B, S, C, H, W]`` (after crop, resize and normalisation):
``hflip`` reverses W, ``vflip`` reverses H, ``transpose`` swaps H and W; a per-slice prediction
does not move under any of them, so the outputs need no inverse transform. All views of a batch
run as one model call on ``[V * B, S, C, H, W]`` (the mask repeated), which keeps the cost at
about V times one view instead of V calls' overheads. Views are kept in the order of
:data:`VIEWS` whatever order they are given in, so two runs with the same set of views give the
same numbers.

The one place that reads the YAML section ``test_time_augmentation: {views: [...], average: ...}``
and the ``--tta`` flag (:func:`resolve_tta`); infer.py, ``medseg.predict`` (checkpoint or exported
model), ``medseg.semi.pseudo_label`` and ``medseg.outputs.calibrate`` use it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit, logit

VIEWS = ("identity", "hflip", "vflip", "transpose")
AVERAGES = ("probabilities", "logits")
# Probabilities, as the RSNA 2019 top teams averaged: bounded, so one over-confident view cannot
# outvote the others, and the metric (log loss) and the calibration act on probabilities.
DEFAULT_AVERAGE = "probabilities"
SECTION = "test_time_augmentation"
IDENTITY = ("identity",)
# An exported model returns probabilities; averaging logits then takes logit(p), clipped so that a
# float32 probability of exactly 0 or 1 stays finite.
_CLIP = 1e-7


@dataclass(frozen=True)
class TTA:
    """The views (in :data:`VIEWS` order) and the space their outputs are averaged in."""

    views: tuple[str, ...] = IDENTITY
    average: str = DEFAULT_AVERAGE

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", parse_views(self.views))
        if self.average not in AVERAGES:
            raise ValueError(f"{SECTION}.average: {self.average!r} is not one of {', '.join(AVERAGES)}")

    @property
    def active(self) -> bool:
        """False for the identity view alone, which is no TTA (bit for bit)."""
        return self.views != IDENTITY

    def record(self) -> dict[str, Any] | None:
        """What calibration files and predictions record: ``None`` for no TTA, else the views and
        the average (a single view has nothing to average: recorded as ``probabilities``)."""
        if not self.active:
            return None
        return {"views": list(self.views), "average": self.average if len(self.views) > 1 else DEFAULT_AVERAGE}

    def describe(self) -> str:
        return "none" if not self.active else f"{'+'.join(self.views)} (average of {self.average})"


def parse_views(spec: str | Sequence[str], where: str = "--tta") -> tuple[str, ...]:
    """``"identity,hflip"`` or a list → the views in :data:`VIEWS` order; an unknown, repeated or
    missing name is a one-line error."""
    names = [v.strip() for v in spec.split(",")] if isinstance(spec, str) else list(spec)
    if not names or any(not isinstance(v, str) or not v for v in names):
        raise ValueError(f"{where}: expected a comma list of views from {', '.join(VIEWS)}, got {spec!r}")
    unknown = [v for v in names if v not in VIEWS]
    if unknown:
        raise ValueError(f"{where}: unknown view {unknown[0]!r} (views: {', '.join(VIEWS)})")
    repeated = sorted({v for v in names if names.count(v) > 1})
    if repeated:
        raise ValueError(f"{where}: view {repeated[0]!r} is listed twice")
    return tuple(v for v in VIEWS if v in names)


def views_argument(text: str) -> tuple[str, ...]:
    """``argparse`` type of ``--tta``: a bad name stops with one usage line."""
    try:
        return parse_views(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--tta: ")) from None


def add_tta_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--tta VIEWS`` flag every predicting tool shares."""
    parser.add_argument("--tta", type=views_argument, default=None, metavar="VIEWS",
                        help=f"test-time views, a comma list of {', '.join(VIEWS)} (overrides the config's "
                             f"{SECTION}.views; 'identity' alone turns TTA off)")


def resolve_tta(cfg, views: Sequence[str] | str | None = None) -> TTA | None:
    """The TTA a run uses: ``views`` (the ``--tta`` flag) over the config's ``test_time_augmentation``
    section; the average always comes from the config (default :data:`DEFAULT_AVERAGE`).
    ``None`` when neither asks for it."""
    section = cfg.get(SECTION) if cfg is not None else None
    where = f"{getattr(cfg, 'path', None) or '<config>'}: {SECTION}"
    if section is not None and not isinstance(section, dict):
        raise ValueError(f"{where}: expected a mapping with views and average, got {type(section).__name__}")
    section = section or {}
    unknown = sorted(set(section) - {"views", "average"})
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (keys: views, average)")
    average = section.get("average", DEFAULT_AVERAGE)
    if average not in AVERAGES:
        raise ValueError(f"{where}.average: {average!r} is not one of {', '.join(AVERAGES)}")
    if views is not None:
        return TTA(parse_views(views), average)
    if "views" not in section:
        return None
    return TTA(parse_views(section["views"], f"{where}.views"), average)


def record(tta: TTA | None) -> dict[str, Any] | None:
    """:meth:`TTA.record`, ``None`` for no TTA."""
    return tta.record() if tta is not None else None


# --------------------------------------------------------------------------- views


def _is_tensor(x: Any) -> bool:
    # Paddle is imported only where a tensor can exist: parsing --tta and calibrating a CSV stay light.
    paddle = sys.modules.get("paddle")
    return paddle is not None and isinstance(x, paddle.Tensor)


def apply_view(image: Any, view: str) -> Any:
    """``image [..., H, W]`` (numpy or Paddle) seen through ``view``."""
    if view == "identity":
        return image
    if view == "transpose" and image.shape[-1] != image.shape[-2]:
        raise ValueError(f"TTA view transpose needs square model inputs, got H x W = {image.shape[-2]} x {image.shape[-1]}")
    if _is_tensor(image):
        import paddle

        if view == "hflip":
            return paddle.flip(image, axis=[image.ndim - 1])
        if view == "vflip":
            return paddle.flip(image, axis=[image.ndim - 2])
        perm = list(range(image.ndim))
        perm[-2], perm[-1] = perm[-1], perm[-2]
        return paddle.transpose(image, perm)
    if view == "hflip":
        return np.flip(image, axis=-1)
    if view == "vflip":
        return np.flip(image, axis=-2)
    if view == "transpose":
        return np.swapaxes(image, -1, -2)
    raise ValueError(f"unknown TTA view {view!r} (views: {', '.join(VIEWS)})")


def stack_views(image: Any, mask: Any, views: Sequence[str]) -> tuple[Any, Any]:
    """``[B, S, C, H, W]`` and mask ``[B, S]`` → ``[V * B, ...]``, view-major (rows ``v * B + b``)."""
    if _is_tensor(image):
        import paddle

        if image.place.is_cpu_place():  # numpy's strided copies: ~3x faster than Paddle's CPU flip kernel
            stacked, masks = stack_views(image.numpy(), mask.numpy(), views)
            return paddle.to_tensor(stacked), paddle.to_tensor(masks)
        return paddle.concat([apply_view(image, v) for v in views], axis=0), paddle.concat([mask] * len(views), axis=0)
    image, mask = np.asarray(image), np.asarray(mask)
    out = np.empty((len(views) * image.shape[0], *image.shape[1:]), dtype=image.dtype)
    for k, view in enumerate(views):  # one copy per view into the batch (no concatenate of copies)
        out[k * len(image):(k + 1) * len(image)] = apply_view(image, view)
    return out, np.concatenate([mask] * len(views), axis=0)


def mean_views(values: Any, n_views: int) -> Any:
    """``[V * B, ...]`` → the mean over views ``[B, ...]`` (float32)."""
    if _is_tensor(values):
        values = values.astype("float32")
        return values.reshape([n_views, values.shape[0] // n_views, *values.shape[1:]]).mean(axis=0)
    values = np.asarray(values, dtype=np.float32)
    return values.reshape(n_views, values.shape[0] // n_views, *values.shape[1:]).mean(axis=0)


def sigmoid(logits: Any) -> Any:
    """float32 probabilities, as prediction computes them without TTA."""
    if _is_tensor(logits):
        import paddle

        return paddle.nn.functional.sigmoid(logits.astype("float32"))
    return expit(np.asarray(logits, dtype=np.float32))


def predict_views(forward: Callable[[Any, Any], Any], image: Any, mask: Any, tta: TTA | None,
                  outputs: str = "logits") -> Any:
    """Probabilities ``[B, S, 6]`` (float32, the input's array type) from ONE call of
    ``forward(image, mask)`` on every view of the batch stacked, averaged over the views.

    ``outputs``: what ``forward`` returns, ``"logits"`` (a dygraph model) or ``"probabilities"``
    (an exported model). Without TTA (``None`` or the identity view alone) this is exactly
    ``sigmoid(forward(image, mask))``.
    """
    if outputs not in ("logits", "probabilities"):
        raise ValueError(f"outputs must be 'logits' or 'probabilities', got {outputs!r}")
    views = tta.views if tta is not None else IDENTITY
    if views != IDENTITY:
        image, mask = stack_views(image, mask, views)
    out = forward(image, mask)
    n = len(views)
    if n == 1:
        return sigmoid(out) if outputs == "logits" else out
    if tta.average == "logits":
        if outputs == "probabilities":
            out = logit(np.clip(np.asarray(out, dtype=np.float64), _CLIP, 1.0 - _CLIP))
        return sigmoid(mean_views(out, n))
    return mean_views(sigmoid(out) if outputs == "logits" else out, n)
