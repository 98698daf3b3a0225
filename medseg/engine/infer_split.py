"""``infer.py``: a training checkpoint over one prepared split → the predictions CSV of docs/design.md (+ metrics)."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from medseg.config import Config
from medseg.constants import LABELS
from medseg.data.build import build_eval_dataset
from medseg.engine import checkpoint as ckpt
from medseg.engine import distributed as dist
from medseg.engine.evaluator import predict_dataset
from medseg.engine.metrics import WeightedLogLoss
from medseg.engine.tta import TTA, record
from medseg.outputs.calibrate import apply_calibration, load_calibration
from medseg.outputs.predictions import write_predictions
from medseg.utils.atomic import atomic_write_json
from medseg.utils.logger import get_logger

logger = get_logger("infer")


def metrics_path(output: str) -> str:
    """``preds.csv`` → ``preds_metrics.json`` (next to the predictions)."""
    return f"{os.path.splitext(output)[0]}_metrics.json"


def infer_split(cfg: Config, resume_model: str, split: str, output: str, num_workers: int = 0,
                multigpu_infer: bool = False, batch_size: int = 1,
                calibrate: bool = True, tta: TTA | None = None) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """Predict ``split`` with the weights at ``resume_model``; rank 0 writes ``output``.

    The checkpoint's ``calibration.json`` (``medseg.outputs.calibrate``) is applied when present
    and ``calibrate``; the labels of a labelled split are in ``frame.attrs["labels"]``. ``tta``:
    test-time views averaged before the calibration (:mod:`medseg.engine.tta`; the callers
    resolve it from ``--tta`` and the config), recorded in the metrics JSON.

    With ``multigpu_infer`` under ``paddle.distributed.launch`` each rank predicts a shard and the
    shards are gathered by series; the CSV is the same as a single process writes.
    """
    if not os.path.exists(resume_model):
        raise ckpt.CheckpointError(f"{resume_model}: checkpoint not found")
    if multigpu_infer:
        dist.init_distributed()
    dataset = build_eval_dataset(cfg, split)
    model = cfg.build("model")
    ckpt.load_params(resume_model, model, strict=True)
    calibration = load_calibration(resume_model, tta) if calibrate else None  # refused before the long run
    logger.info("predicting %s: %d series with %s on %d process(es)%s", dataset.meta_file if hasattr(dataset, "meta_file") else split,
                len(dataset), resume_model, dist.get_world_size(),
                f", test-time views {tta.describe()}" if tta is not None and tta.active else "")
    frame, labels = predict_dataset(model, dataset, batch_size=batch_size, num_workers=num_workers,
                                    sharded=dist.is_distributed(), tta=tta)
    frame[list(LABELS)] = apply_calibration(frame[list(LABELS)].to_numpy(), calibration)
    metrics = None
    if getattr(dataset, "labelled", False):
        frame.attrs["labels"] = labels
        metric = cfg.build("metric") if "metric" in cfg else WeightedLogLoss()
        metrics = metric(labels, frame[list(LABELS)].to_numpy())
        if record(tta) is not None:  # what calibrate --pred reads back
            metrics["test_time_augmentation"] = record(tta)
    if dist.is_main():
        write_predictions(output, frame)
        logger.info("wrote %d predictions to %s", len(frame), output)
        if metrics is not None:
            atomic_write_json(metrics_path(output), metrics)
            logger.info("metrics saved to %s", metrics_path(output))
    dist.barrier()
    return frame, metrics
