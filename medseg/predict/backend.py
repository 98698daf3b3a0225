"""The model behind predict: a training checkpoint (dygraph) or an exported model (Paddle Inference).

Both are callables ``model(image [B, S, C, H, W] float32, mask [B, S] bool) → probabilities
[B, S, 6]`` (numpy), so the rest of predict does not care which one it got. Both average the
test-time views they are given (``tta``, :mod:`medseg.engine.tta`) before their calibration.
Several models (e.g. the K fold models of ``medseg.tools.kfold``) make one such callable,
:class:`ModelAverage`, the mean of their calibrated probabilities (:func:`load_models`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import paddle

from medseg.config import Config
from medseg.engine import checkpoint as ckpt
from medseg.engine.tta import TTA, predict_views
from medseg.export.inference import ExportedModel
from medseg.export.meta import is_export_dir
from medseg.models.outputs import prediction_logits
from medseg.models.weights import check_released_input_scale
from medseg.outputs.calibrate import apply_calibration, load_calibration
from medseg.utils.logger import get_logger

logger = get_logger("predict.backend")


class CheckpointModel:
    """The config's model with a training checkpoint's weights, run in dygraph eval mode."""

    kind = "checkpoint"

    def __init__(self, cfg: Config, path: str, chunk_size: int | None = None, tta: TTA | None = None):
        self.path = path
        self.tta = tta
        check_released_input_scale(cfg, path)
        self.model = cfg.build("model")
        ckpt.load_params(path, self.model, strict=True)
        self.model.eval()
        self.calibration = load_calibration(path, tta)
        encoder = getattr(self.model, "encoder", None)
        if chunk_size is not None and encoder is not None and hasattr(encoder, "chunk_size"):
            encoder.chunk_size = int(chunk_size)  # slices per encoder pass: a memory bound only

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            # The views are stacked in numpy (faster on a CPU than Paddle's flip), then handed over.
            forward = lambda x, m: prediction_logits(self.model(paddle.to_tensor(x, dtype="float32"),  # noqa: E731
                                                                paddle.to_tensor(m, dtype="bool")))
            probs = predict_views(forward, np.asarray(image), np.asarray(mask), self.tta)
            return apply_calibration(probs.numpy(), self.calibration)


def model_kind(path: str) -> str:
    """``"export"`` or ``"checkpoint"``; a clear error for anything else."""
    if is_export_dir(path):
        return "export"
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, ckpt.MODEL_FILE)):
        return "checkpoint"
    raise FileNotFoundError(f"{path}: neither an exported model folder (export.json) nor a training checkpoint ({ckpt.MODEL_FILE})")


def load_model(cfg: Config, path: str, threads: int = 1, chunk_size: int | None = None, tta: TTA | None = None):
    """The callable model for ``path`` (see the module docstring)."""
    if model_kind(path) == "export":
        return ExportedModel(path, threads=threads, chunk_size=chunk_size, tta=tta)
    return CheckpointModel(cfg, path, chunk_size, tta=tta)


class ModelAverage:
    """Several models as one: the mean of their probabilities, each calibrated by its own
    ``calibration.json`` first. Probabilities, not logits, as the fold average of
    ``medseg.tools.kfold`` (docs/design.md, "K-fold training"): a mean of calibrated probabilities
    stays on their scale, and an over-confident member cannot outvote the others."""

    kind = "average"

    def __init__(self, members: Sequence, paths: Sequence[str]):
        if len(members) < 2:
            raise ValueError("an average needs at least two models")
        self.members, self.paths = list(members), list(paths)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        total = self.members[0](image, mask).astype(np.float64)
        for member in self.members[1:]:
            total += member(image, mask)
        return (total / len(self.members)).astype(np.float32)


def load_models(cfg: Config, paths: Sequence[str], threads: int = 1, chunk_size: int | None = None,
                tta: TTA | None = None):
    """:func:`load_model` of one path, or the :class:`ModelAverage` of several; each load is logged."""
    paths = list(paths)
    if not paths:
        raise ValueError("no model given")
    members = []
    for i, path in enumerate(paths, start=1):
        tic = time.perf_counter()
        members.append(load_model(cfg, path, threads=threads, chunk_size=chunk_size, tta=tta))
        logger.info("model %d/%d: %s (%s) loaded in %.2f s", i, len(paths), path, members[-1].kind, time.perf_counter() - tic)
    return members[0] if len(members) == 1 else ModelAverage(members, paths)
