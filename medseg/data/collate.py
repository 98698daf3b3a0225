"""Batch B series by padding to the longest series in the batch (not to a fixed 60)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from medseg.data.device_augment import collate_device


def collate_series(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items of docs/design.md → ``image [B, S, C, H, W]``, ``label [B, S, 6]``, ``mask [B, S]``.

    Padded slices are zeros with ``mask`` False; ``slice_ids`` keeps only the real slices, so
    nothing downstream can mistake a padding row for a slice. uint8 CPU-path items (``[S, H, W, C]``
    with their ``norm``) give ``image`` uint8 ``[B, S, H, W, C]``, which
    :func:`medseg.data.device_augment.to_model_input` normalises. Items augmented on the device
    (uint8 crops + warps) become ``image`` uint8 ``[B, S, H, W, C]`` plus the fields
    :func:`medseg.data.device_augment.to_model_input` turns into the model's input.
    """
    if not items:
        raise ValueError("collate_series: empty batch")
    on_device = {"inverse" in item for item in items}
    if len(on_device) != 1:
        raise ValueError("collate_series: a batch mixes items augmented on the CPU and on the device")
    longest = max(len(item["image"]) for item in items)
    batch = len(items)
    if on_device.pop():
        fields = collate_device(list(items), longest)
    else:
        shapes = {item["image"].shape[1:] for item in items}
        if len(shapes) != 1:
            raise ValueError(f"collate_series: slices of one batch must share one shape, got {sorted(shapes)}")
        deferred = {("norm" in item, item["image"].dtype == np.uint8) for item in items}
        if deferred not in ({(True, True)}, {(False, False)}):
            raise ValueError("collate_series: a batch must hold either float32 slices or uint8 slices with their norm")
        dtype = np.uint8 if deferred.pop()[0] else np.float32
        fields = {"image": np.zeros((batch, longest, *shapes.pop()), dtype=dtype)}
        for b, item in enumerate(items):
            fields["image"][b, :len(item["image"])] = item["image"]
        if dtype == np.uint8:
            if any(not np.array_equal(item["norm"], items[0]["norm"]) for item in items):
                raise ValueError("collate_series: items of one batch were normalised differently (their Normalize differs)")
            fields["norm"] = items[0]["norm"]
    label = np.zeros((batch, longest, items[0]["label"].shape[-1]), dtype=np.float32)
    mask = np.zeros((batch, longest), dtype=bool)
    for b, item in enumerate(items):
        n = len(item["image"])
        label[b, :n] = item["label"]
        mask[b, :n] = True
    return {
        **fields,
        "label": label,
        "mask": mask,
        "series_id": [item["series_id"] for item in items],
        "slice_ids": [list(item["slice_ids"]) for item in items],
    }
