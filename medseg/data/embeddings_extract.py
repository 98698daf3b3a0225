"""Extract one split's slice embeddings with a trained encoder (the work of ``medseg.tools.embed``).

The split is read exactly as infer.py reads it (the config's eval dataset section, its transforms
and crop), the encoder runs in eval mode, and each series' features (float16), per-slice logits
and labels go to one part file as soon as the series is done; a rerun skips the series whose part
exists. When every series is done the parts are packed into the split's folder
(:mod:`medseg.data.embeddings`). With test-time views the features are the mean over the views and
the logits the slice head of that mean (the head is linear: the mean of the views' logits).

Under ``paddle.distributed.launch`` each process embeds its share of the series (balanced by
slices) into the same parts folder, and rank 0 packs the split once all are done: the per-series
parts make the shards independent, and a rerun resumes whatever any process finished.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
from typing import Any

import numpy as np
import pandas as pd
import paddle
from tqdm import tqdm

from medseg.config import Config
from medseg.data.build import build_eval_dataset, eval_section, eval_transform_config
from medseg.data.device_augment import to_model_input
from medseg.data.embeddings import (FEATURES, FORMAT, LABELS_FILE, LOGITS, SLICES, SPLIT_RECORD, EmbeddingsError,
                                    claim_manifest, parts_dir, split_dir, split_record, tensors_sha256)
from medseg.engine import checkpoint as ckpt
from medseg.engine import distributed as dist
from medseg.engine.loader import make_loader, worker_batches
from medseg.engine.tta import TTA, mean_views, stack_views
from medseg.models import weights
from medseg.utils.atomic import atomic_open, atomic_write_json, file_sha256, read_json_object, staged_dir
from medseg.utils.logger import get_logger

logger = get_logger("embed")
PARTS_RECORD = "parts.json"
# Encoder keys that change how it runs, not what it computes (its weights are hashed separately).
RUN_ONLY = ("chunk_size", "recompute", "pretrained")
DTYPES = ("float16", "float32")


def load_encoder_model(cfg: Config, model_path: str) -> paddle.nn.Layer:
    """The config's model in eval mode with the checkpoint's encoder (a stage-1 slice model or any
    model of that encoder: the sequence head, if any, is not used). Every encoder tensor must be in
    the file, else an error naming it."""
    model = cfg.build("model")
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "encode_series"):
        raise EmbeddingsError(f"{cfg.path or '<config>'}: model {type(model).__name__} has no slice encoder to embed with")
    file = model_path if os.path.isfile(model_path) else os.path.join(model_path, ckpt.MODEL_FILE)
    if not os.path.isfile(file):
        raise ckpt.CheckpointError(f"{model_path}: checkpoint not found")
    keys = set(paddle.load(file, return_numpy=True))
    if weights.is_easymia(keys):
        keys = {weights.easymia_name(k) for k in keys}
    missing = [f"encoder.{k}" for k in encoder.state_dict() if f"encoder.{k}" not in keys]
    if missing:
        raise ckpt.CheckpointError(f"{file}: no weights for {missing[0]} ({len(missing)} encoder tensors missing): "
                                   f"not a checkpoint of the encoder in {cfg.path or 'the config'}")
    ckpt.load_params(file, model, strict=False)
    model.eval()
    return model


def build_manifest(cfg: Config, model_path: str, model: paddle.nn.Layer, tta: TTA | None,
                   dtype: str = "float16") -> dict[str, Any]:
    """What the features depend on (the identity entries) plus provenance."""
    section = cfg.section(eval_section(cfg))
    entry = section[0] if isinstance(section, list) else section
    return {
        "format": FORMAT,
        "encoder_sha256": tensors_sha256(model.encoder.state_dict()),
        "slice_head_sha256": tensors_sha256(model.encoder.head.state_dict()),
        "feature_dim": int(model.encoder.feature_dim),
        "tta": list(tta.views) if tta is not None and tta.active else ["identity"],
        "transforms": eval_transform_config(cfg),
        "crop": entry.get("crop") if isinstance(entry, dict) else None,
        "encoder": {k: copy.deepcopy(v) for k, v in (cfg.get("model.encoder") or {}).items() if k not in RUN_ONLY},
        "dtype": dtype,
        "model": os.path.abspath(model_path),
        "config_path": os.path.abspath(cfg.path) if cfg.path else None,
        "config": copy.deepcopy(cfg.dict),
        "paddle_version": paddle.__version__,
    }


class _Batches(paddle.io.Sampler):
    """One series per batch, the given indices only (those not done yet)."""

    def __init__(self, indices: list[int]):
        super().__init__()
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter([[(i, 0)] for i in self.indices])


def part_path(out: str, split: str, series_id: str) -> str:
    return os.path.join(parts_dir(out, split), f"{series_id}.npz")


def _check_parts(out: str, split: str, meta_sha: str, meta_file: str) -> None:
    """Parts left by an earlier run must come from the same meta table (the manifest already
    guarantees the encoder); a fresh parts folder records it."""
    path = os.path.join(parts_dir(out, split), PARTS_RECORD)
    if os.path.isfile(path):
        seen = read_json_object(path, EmbeddingsError, "parts record") or {}
        if seen.get("meta_sha256") != meta_sha:
            raise EmbeddingsError(f"{parts_dir(out, split)}: parts of an unfinished run on another meta table "
                                  f"({seen.get('meta_file')}); remove the folder to start over")
    else:
        atomic_write_json(path, {"meta_file": os.path.abspath(meta_file), "meta_sha256": meta_sha})


@paddle.no_grad()
def _embed_batch(model: paddle.nn.Layer, batch: dict[str, Any], tta: TTA | None) -> tuple[np.ndarray, np.ndarray]:
    """features [B, S, D] float32 (view-averaged) and slice logits [B, S, 6] float32."""
    batch = to_model_input(batch)
    image, mask = (x if isinstance(x, paddle.Tensor) else paddle.to_tensor(x) for x in (batch["image"], batch["mask"]))
    views = tta.views if tta is not None and tta.active else ("identity",)
    if len(views) > 1 or views[0] != "identity":
        image, mask = stack_views(image, mask, views)
    features = model.encoder.encode_series(image, mask.astype("bool"))
    if len(views) > 1:
        features = mean_views(features, len(views))
    logits = model.encoder.forward_head(features)
    return np.array(features.astype("float32").numpy()), np.array(logits.astype("float32").numpy())


def _pack(out: str, split: str, dataset, meta_sha: str, seconds: float, dtype: str) -> dict[str, Any]:
    """The parts of every series of ``dataset`` → ``out/<split>/`` (temporary folder renamed into place)."""
    features, logits, labels, slice_ids, series_ids = [], [], [], [], []
    for sid in dataset.series_ids:
        with np.load(part_path(out, split, sid), allow_pickle=False) as part:
            features.append(part["features"])
            logits.append(part["logits"])
            labels.append(part["labels"])
            slice_ids.extend(str(s) for s in part["slice_ids"])
            series_ids.extend([sid] * len(part["features"]))
    record = {"split": split, "series": len(dataset.series_ids), "slices": len(slice_ids),
              "meta_file": os.path.abspath(dataset.meta_file), "meta_sha256": meta_sha,
              "labelled": bool(getattr(dataset, "labelled", False)), "extract_seconds": round(seconds, 3)}
    with staged_dir(split_dir(out, split)) as tmp:
        np.save(os.path.join(tmp, FEATURES), np.concatenate(features).astype(dtype))
        np.save(os.path.join(tmp, LOGITS), np.concatenate(logits).astype(np.float32))
        np.save(os.path.join(tmp, LABELS_FILE), np.concatenate(labels).astype(np.float32))
        pd.DataFrame({"slice_id": slice_ids, "series_id": series_ids}).to_csv(os.path.join(tmp, SLICES), index=False)
        atomic_write_json(os.path.join(tmp, SPLIT_RECORD), record)
    shutil.rmtree(parts_dir(out, split), ignore_errors=True)
    with contextlib.suppress(OSError):  # another split's parts still there: .parts stays
        os.rmdir(os.path.dirname(parts_dir(out, split)))  # the last split packed: no empty .parts left behind
    return record


def shard(lengths: list[int], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s share of the series with ``lengths`` slices (their positions, in order): the
    longest first to the least loaded process, so that every process gets about the same slices."""
    loads, owner = [0] * world, {}
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = loads.index(min(loads))
        owner[i] = r
        loads[r] += lengths[i]
    return [i for i in range(len(lengths)) if owner[i] == rank]


def extract_split(cfg: Config, model_path: str, split: str, out: str, tta: TTA | None = None,
                  num_workers: int = 0, progress: bool = True, dtype: str = "float16") -> dict[str, Any]:
    """Embed every series of ``split`` into ``out`` (resumable); returns the split's record plus
    ``done_before`` (series a previous run had finished) and ``seconds``. ``dtype``: of the saved
    features, ``float16`` (half the bytes; relative rounding ~5e-4) or ``float32`` (the encoder's
    values exactly, for bit-level comparisons with the image pipeline)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    dist.init_distributed()  # a no-op unless launched with several processes
    model = load_encoder_model(cfg, model_path)
    manifest = build_manifest(cfg, model_path, model, tta, dtype)
    if dist.is_main():  # one process claims the folder, then the others check it
        os.makedirs(out, exist_ok=True)
        claim_manifest(out, manifest)
    dist.barrier()
    if not dist.is_main():
        claim_manifest(out, manifest)
    dataset = build_eval_dataset(cfg, split)
    meta_sha = file_sha256(dataset.meta_file)
    record = split_record(out, split)
    if record is not None:
        if record.get("meta_sha256") != meta_sha:
            raise EmbeddingsError(f"{split_dir(out, split)}: made from another meta table ({record.get('meta_file')}) than "
                                  f"{dataset.meta_file}; write to another --out")
        logger.info("%s: split %s already embedded (%d series, %d slices): nothing to do", out, split,
                    record["series"], record["slices"])
        return {**record, "done_before": record["series"], "seconds": 0.0}
    if dist.is_main():
        os.makedirs(parts_dir(out, split), exist_ok=True)
        _check_parts(out, split, meta_sha, dataset.meta_file)
    dist.barrier()
    todo = [i for i, sid in enumerate(dataset.series_ids) if not os.path.isfile(part_path(out, split, sid))]
    done_before = len(dataset) - len(todo)
    dist.barrier()  # every process has listed the parts before any writes one
    world = dist.get_world_size()
    if world > 1:
        todo = [todo[j] for j in shard([dataset.num_slices(i) for i in todo], dist.get_rank(), world)]
    logger.info("embedding %s: %d series (%d done before) with %s%s -> %s", dataset.meta_file, len(dataset), done_before,
                model_path, f", views {tta.describe()}" if tta is not None and tta.active else "", out)
    start = time.time()
    # rank 0's bar: its own share when the series are shared out
    total, initial = (len(dataset), done_before) if world == 1 else (len(todo), 0)
    bar = tqdm(total=total, initial=initial, desc=f"embed {split}", unit="series", disable=not progress or not dist.is_main())
    try:
        if todo:
            loader = make_loader(dataset, _Batches(todo), num_workers)
            with worker_batches(loader) as batches:
                for batch in batches:
                    features, logits = _embed_batch(model, batch, tta)
                    for b, sid in enumerate(batch["series_id"]):
                        n = len(batch["slice_ids"][b])
                        label = batch["label"]
                        label = label.numpy() if isinstance(label, paddle.Tensor) else np.asarray(label)
                        with atomic_open(part_path(out, split, sid), "wb", durable=False) as fh:
                            np.savez(fh, features=features[b, :n].astype(dtype), logits=logits[b, :n],
                                     labels=label[b, :n].astype(np.float32), slice_ids=np.array(batch["slice_ids"][b]))
                        bar.update(1)
    finally:
        bar.close()
    dist.barrier()  # every share written
    seconds = time.time() - start
    if dist.is_main():
        record = _pack(out, split, dataset, meta_sha, seconds, dtype)
        logger.info("wrote %s: %d series, %d slices, features %d wide (%s), %.1f s on %d process(es)", split_dir(out, split),
                    record["series"], record["slices"], int(model.encoder.feature_dim), dtype, seconds, world)
    dist.barrier()
    record = split_record(out, split)
    if record is None:
        raise EmbeddingsError(f"{split_dir(out, split)}: not written (rank 0 did not pack the split)")
    return {**record, "done_before": done_before, "seconds": seconds}
