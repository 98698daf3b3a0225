"""The model behind predict: a training checkpoint (dygraph) or an exported model (Paddle Inference).

Both are callables ``model(image [B, S, C, H, W] float32, mask [B, S] bool) → probabilities
[B, S, 6]`` (numpy), so the rest of predict does not care which one it got.
"""

from __future__ import annotations

import os

import numpy as np
import paddle

from medseg.config import Config
from medseg.engine import checkpoint as ckpt
from medseg.export.inference import ExportedModel
from medseg.export.meta import is_export_dir
from medseg.models.outputs import prediction_logits
from medseg.models.weights import check_released_input_scale
from medseg.outputs.calibrate import apply_calibration, load_calibration


class CheckpointModel:
    """The config's model with a training checkpoint's weights, run in dygraph eval mode."""

    kind = "checkpoint"

    def __init__(self, cfg: Config, path: str, chunk_size: int | None = None):
        self.path = path
        check_released_input_scale(cfg, path)
        self.model = cfg.build("model")
        ckpt.load_params(path, self.model, strict=True)
        self.model.eval()
        self.calibration = load_calibration(path)
        encoder = getattr(self.model, "encoder", None)
        if chunk_size is not None and encoder is not None and hasattr(encoder, "chunk_size"):
            encoder.chunk_size = int(chunk_size)  # slices per encoder pass: a memory bound only

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            out = self.model(paddle.to_tensor(image, dtype="float32"), paddle.to_tensor(mask, dtype="bool"))
            probs = paddle.nn.functional.sigmoid(prediction_logits(out)).astype("float32").numpy()
            return apply_calibration(probs, self.calibration)


def model_kind(path: str) -> str:
    """``"export"`` or ``"checkpoint"``; a clear error for anything else."""
    if is_export_dir(path):
        return "export"
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, ckpt.MODEL_FILE)):
        return "checkpoint"
    raise FileNotFoundError(f"{path}: neither an exported model folder (export.json) nor a training checkpoint ({ckpt.MODEL_FILE})")


def load_model(cfg: Config, path: str, threads: int = 1, chunk_size: int | None = None):
    """The callable model for ``path`` (see the module docstring)."""
    if model_kind(path) == "export":
        return ExportedModel(path, threads=threads, chunk_size=chunk_size)
    return CheckpointModel(cfg, path, chunk_size)
