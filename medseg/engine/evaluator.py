"""Sharded prediction over a series dataset, gathered by slice id, and its metrics.

Each rank predicts the series ``rank, rank + world, …`` (uneven shards, nothing padded or
repeated); the per-series results are gathered on every rank and put back in dataset order, so
the table has one row per real slice whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import pandas as pd
import paddle
from tqdm import tqdm

from medseg.constants import LABELS
from medseg.data.device_augment import to_model_input
from medseg.data.sampler import SeriesBatchSampler
from medseg.engine import distributed as dist
from medseg.engine.loader import make_loader, worker_batches
from medseg.engine.metrics import WeightedLogLoss
from medseg.engine.tta import TTA, predict_views
from medseg.models.outputs import prediction_logits
from medseg.utils.logger import get_logger

logger = get_logger("evaluator")


def predict_shard(model: paddle.nn.Layer, dataset, batch_size: int = 1, num_workers: int = 0,
                  sharded: bool = True, progress: bool = True, amp: dict[str, Any] | None = None,
                  tta: TTA | None = None) -> dict[int, dict[str, Any]]:
    """``{series index: {series_id, slice_ids, probs [S, 6], labels [S, 6]}}`` for this rank's shard.

    ``amp``: ``paddle.amp.auto_cast`` arguments; evaluation during training passes the training's
    (AMP O2 weights are float16/bfloat16 and need their inputs cast alike). ``tta``: test-time
    views, run as one batch per step and averaged (:mod:`medseg.engine.tta`).
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    sampler = SeriesBatchSampler(len(dataset), batch_size, shuffle=False, rank=rank, world_size=world, pad_shards=False)
    keys = list(sampler)
    loader = make_loader(dataset, sampler, num_workers)
    model = dist.unwrap_model(model)
    was_training = model.training
    model.eval()
    results: dict[int, dict[str, Any]] = {}
    bar = tqdm(total=len(keys), desc="predict", unit="batch", disable=not (progress and dist.is_main()), leave=False)
    try:
        with paddle.no_grad(), worker_batches(loader) as batches:
            for batch_keys, batch in zip(keys, batches):
                batch = to_model_input(batch)  # augment_on_device: warp + normalise here

                def forward(image, mask):
                    with paddle.amp.auto_cast(**amp) if amp else contextlib.nullcontext():
                        return prediction_logits(model(image, mask))

                probs = predict_views(forward, batch["image"], batch["mask"], tta)
                # Own copies: a tensor's numpy view can be recycled before the shards are gathered.
                probs = np.array(probs.astype("float32").numpy(), copy=True)
                labels = np.array(batch["label"].numpy(), copy=True)
                for b, (index, _epoch) in enumerate(batch_keys):
                    n = len(batch["slice_ids"][b])
                    results[index] = {"series_id": batch["series_id"][b], "slice_ids": batch["slice_ids"][b],
                                      "probs": probs[b, :n], "labels": labels[b, :n]}
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return results


def gather_predictions(shard: dict[int, dict[str, Any]], num_series: int,
                       across_ranks: bool = True) -> tuple[pd.DataFrame, np.ndarray]:
    """Merge every rank's shard: (predictions frame, labels [N, 6]), one row per real slice in
    dataset order; a series predicted twice or not at all is an error."""
    merged: dict[int, dict[str, Any]] = {}
    for part in (dist.all_gather_objects(shard) if across_ranks else [shard]):
        for index, item in part.items():
            if index in merged:
                raise RuntimeError(f"series {item['series_id']} was predicted by two ranks")
            merged[index] = item
    missing = sorted(set(range(num_series)) - set(merged))
    if missing:
        raise RuntimeError(f"{len(missing)} series were not predicted (first index {missing[0]})")
    order = [merged[i] for i in range(num_series)]
    frame = pd.DataFrame({
        "slice_id": [s for item in order for s in item["slice_ids"]],
        "series_id": [item["series_id"] for item in order for _ in item["slice_ids"]],
    })
    probs = np.concatenate([item["probs"] for item in order]) if order else np.zeros((0, len(LABELS)))
    labels = np.concatenate([item["labels"] for item in order]) if order else np.zeros((0, len(LABELS)))
    for j, name in enumerate(LABELS):
        frame[name] = probs[:, j].astype(np.float64)
    if frame["slice_id"].duplicated().any():
        raise RuntimeError(f"duplicate slice_id {frame.loc[frame['slice_id'].duplicated(), 'slice_id'].iloc[0]} in predictions")
    return frame, labels


def predict_dataset(model: paddle.nn.Layer, dataset, batch_size: int = 1, num_workers: int = 0,
                    sharded: bool = True, amp: dict[str, Any] | None = None,
                    tta: TTA | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """(predictions CSV frame of docs/design.md, the matching labels [N, 6]); ``tta``: see :func:`predict_shard`."""
    if tta is not None and tta.active and getattr(dataset, "manifest", None) is not None:
        # Saved embeddings are one feature vector per slice: a flip of them is no view of the slice.
        raise ValueError(f"{dataset.root}: saved embeddings have no test-time views to add (made with "
                         f"views {'+'.join(dataset.manifest.get('tta') or ['identity'])}); views are chosen when "
                         "they are made (medseg-embed --tta), or predict the joined model on images with --tta")
    shard = predict_shard(model, dataset, batch_size, num_workers, sharded=sharded, amp=amp, tta=tta)
    return gather_predictions(shard, len(dataset), across_ranks=sharded)


def evaluate(model: paddle.nn.Layer, dataset, metric: WeightedLogLoss | None = None, batch_size: int = 1,
             num_workers: int = 0, amp: dict[str, Any] | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """Predict ``dataset`` across ranks and score it (every rank gets the same metrics)."""
    if not getattr(dataset, "labelled", False):
        raise ValueError(f"{getattr(dataset, 'meta_file', 'dataset')}: cannot evaluate an unlabelled split")
    metric = metric or WeightedLogLoss()
    start = time.time()
    frame, labels = predict_dataset(model, dataset, batch_size, num_workers, amp=amp)
    metrics = metric(labels, frame[list(LABELS)].to_numpy())
    logger.info("[EVAL] %d series, %d slices, weighted log loss %.5f, mean AUC %.4f (%.1f s)",
                len(dataset), len(frame), metrics["weighted_logloss"], metrics["mean_auc"], time.time() - start)
    return metrics, frame
