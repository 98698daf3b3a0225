"""Batch B series by padding to the longest series in the batch (not to a fixed 60)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def collate_series(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items of docs/design.md → ``image [B, S, C, H, W]``, ``label [B, S, 6]``, ``mask [B, S]``.

    Padded slices are zeros with ``mask`` False; ``slice_ids`` keeps only the real slices, so
    nothing downstream can mistake a padding row for a slice.
    """
    if not items:
        raise ValueError("collate_series: empty batch")
    shapes = {item["image"].shape[1:] for item in items}
    if len(shapes) != 1:
        raise ValueError(f"collate_series: slices of one batch must share C × H × W, got {sorted(shapes)}")
    longest = max(len(item["image"]) for item in items)
    batch = len(items)
    image = np.zeros((batch, longest, *shapes.pop()), dtype=np.float32)
    label = np.zeros((batch, longest, items[0]["label"].shape[-1]), dtype=np.float32)
    mask = np.zeros((batch, longest), dtype=bool)
    for b, item in enumerate(items):
        n = len(item["image"])
        image[b, :n] = item["image"]
        label[b, :n] = item["label"]
        mask[b, :n] = True
    return {
        "image": image,
        "label": label,
        "mask": mask,
        "series_id": [item["series_id"] for item in items],
        "slice_ids": [list(item["slice_ids"]) for item in items],
    }
