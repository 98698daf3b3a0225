"""Test helpers for the engine: a tiny prepared dataset, a tiny registered model, a config.

Also a script: ``python tests/engine_fixtures.py {train,infer} ...`` runs ``train.py``/``infer.py``
with the tiny model registered (what the distributed tests launch).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import paddle
import paddle.nn as nn

from medseg.constants import DEFAULT_WINDOWS, LABELS
from medseg.data.cache import LEGACY_SUFFIX, SUFFIX, write_cache_file
from medseg.data.meta import meta_path, write_meta
from medseg.registry import MODELS


if "TinySeriesNet" not in MODELS:

    @MODELS.add_component
    class TinySeriesNet(nn.Layer):
        """The design.md model interface at toy size (conv → pooled features → slice/sequence logits)."""

        def __init__(self, width: int = 8, in_channels: int = 3, num_classes: int = 6, sequential: bool = True,
                     dropout: float = 0.2):
            super().__init__()
            self.sequential = sequential
            self.conv = nn.Conv2D(in_channels, width, 3, stride=2, padding=1)
            self.pool = nn.AdaptiveAvgPool2D(1)
            self.drop = nn.Dropout(dropout)
            self.slice_head = nn.Linear(width, num_classes)
            self.seq_head = nn.Linear(2 * width, num_classes)

        def forward(self, image, mask):
            b, s = image.shape[:2]
            feats = self.pool(nn.functional.relu(self.conv(image.reshape([b * s, *image.shape[2:]]))))
            feats = self.drop(feats.reshape([b, s, -1]))
            keep = mask.astype("float32").unsqueeze(-1)
            slice_logits = self.slice_head(feats) * keep
            if not self.sequential:
                return {"slice": slice_logits}
            context = (feats * keep).sum(axis=1, keepdim=True) / keep.sum(axis=1, keepdim=True).clip(min=1.0)
            seq_logits = self.seq_head(paddle.concat([feats, context.expand_as(feats)], axis=-1)) * keep
            return {"sequence": seq_logits, "slice": slice_logits}


def make_prepared(root: str, splits: dict[str, int] | None = None, size: int = 40, seed: int = 0,
                  min_slices: int = 3, max_slices: int = 8, legacy: bool = False) -> str:
    """A prepared dataset per docs/design.md: ``<split>_meta.csv`` + head-crop caches (``.hcc``, or
    the old full-frame ``.npy`` with ``legacy``); test unlabelled."""
    splits = splits or {"train": 6, "val": 5, "test": 3}
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "cache"), exist_ok=True)
    for split, n_series in splits.items():
        rows = []
        for k in range(n_series):
            series = f"ID_{split}{k:03d}"
            n = int(rng.integers(min_slices, max_slices + 1))
            volume = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
            labels = (rng.uniform(size=(n, 6)) < 0.3).astype(float)
            labels[:, 5] = labels[:, :5].max(axis=1)
            volume[labels[:, 5] > 0, 10:30, 10:30] += 150  # a bright "bleed" the model can learn
            cache = f"cache/{series}{LEGACY_SUFFIX if legacy else SUFFIX}"
            boxes = []
            for i in range(n):
                y0, x0 = int(rng.integers(0, 6)), int(rng.integers(0, 6))
                boxes.append((y0, size - int(rng.integers(0, 6)), x0, size - int(rng.integers(0, 6))))
            if legacy:
                np.save(os.path.join(root, cache), volume)  # the old uncompressed cache format
            else:
                write_cache_file(os.path.join(root, cache), (size, size), DEFAULT_WINDOWS,
                                 ((b, volume[i, b[0]:b[1], b[2]:b[3]], None) for i, b in enumerate(boxes)))
            for i, (y0, y1, x0, x1) in enumerate(boxes):
                row = {"slice_id": f"ID_{split}{k:03d}s{i:02d}", "series_id": series, "study_id": f"ST_{series}",
                       "patient_id": f"P_{series}", "slice_idx": i, "position": 5.0 * i, "spacing": 5.0,
                       "fold": -1 if split == "test" else k % 5, "crop_y0": y0, "crop_y1": y1,
                       "crop_x0": x0, "crop_x1": x1, "cache": cache}
                for j, name in enumerate(LABELS):
                    row[name] = np.nan if split == "test" else labels[i, j]
                rows.append(row)
        write_meta(meta_path(root, split), pd.DataFrame(rows))
    return root


def write_config(path: str, dataset_root: str, size: int = 32, iters: int = 6, batch_size: int = 1,
                 total_iters: int | None = None) -> str:
    """An experiment YAML in the shape of the real configs, around TinySeriesNet."""
    total = f"\n  total_iters: {total_iters}" if total_iters else ""
    text = f"""\
batch_size: {batch_size}
iters: {iters}
train_dataset:
  type: RSNASeriesDataset
  dataset_root: {dataset_root}
  split: train
  per_slice: true
  transforms:
    - {{type: RandomResizedCrop, size: {size}, scale: [0.8, 1.2]}}
    - {{type: HorizontalFlip}}
    - {{type: VerticalFlip}}
    - {{type: RandomRotation, degrees: 180}}
    - {{type: Normalize}}
    - {{type: ToCHW}}
val_dataset:
  type: RSNASeriesDataset
  dataset_root: {dataset_root}
  split: val
  transforms:
    - {{type: Resize, size: {size}}}
    - {{type: Normalize}}
    - {{type: ToCHW}}
model:
  type: TinySeriesNet
  width: 8
loss:
  type: MixedLoss
  losses: [{{type: MaskedWeightedBCE}}, {{type: MaskedWeightedBCE}}]
  coef: [2, 1]
optimizer:
  type: Momentum
  momentum: 0.9
  use_nesterov: true
  weight_decay: 1.0e-4
lr_scheduler:
  type: WarmupCosine
  learning_rate: 0.05
  warmup_iters: 2{total}
"""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


if __name__ == "__main__":
    # Test launcher: ``engine_fixtures.py train|infer <flags>``; MEDSEG_TEST_DIE_RANK makes one rank fail.
    import importlib

    command, argv = sys.argv[1], sys.argv[2:]
    # MEDSEG_TEST_RANK1_SAVE_DIR: rank 1 gets another --save_dir, as if its node had its own disk.
    rank1_dir = os.environ.get("MEDSEG_TEST_RANK1_SAVE_DIR")
    if rank1_dir and os.environ.get("PADDLE_TRAINER_ID") == "1" and "--save_dir" in argv:
        argv[argv.index("--save_dir") + 1] = rank1_dir
    die_rank = os.environ.get("MEDSEG_TEST_DIE_RANK")
    if die_rank is not None and os.environ.get("PADDLE_TRAINER_ID", "0") == die_rank:
        from medseg.engine import distributed

        distributed.init_distributed()
        raise RuntimeError(f"rank {die_rank} failed on purpose (MEDSEG_TEST_DIE_RANK)")
    sys.exit(importlib.import_module(f"medseg.tools.{command}").main(argv))
