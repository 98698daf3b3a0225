"""Ordered series → model inputs, with prepare's reader and the training preprocessing.

Each series goes through ``medseg.data.series_volume.build_volume`` (the prepare step's decoder:
RSNA quirks, padding, windows as uint8, crop box per slice in the config's crop mode), is cropped
like the dataset crops (``volume[i, y0:y1, x0:x1]``) and transformed by the config's eval
transforms. Nothing here reimplements a preprocessing step, so predict sees a study exactly as
validation did. With ``crop: released`` the model also takes the slices in the release's order
(``SeriesInput.order``); results stay head to foot. With ``slab_mm`` a thin series is averaged
into slabs first (:func:`slab_groups`; docs/design.md, "Series triage"). With ``neighbours`` each
slice carries its neighbours in the model's order as the dataset stacks them
(:func:`medseg.data.neighbours.stack_neighbours` on the crops and their boxes).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from medseg.data.build import apply_transforms
from medseg.data.crop import DEFAULT_CROP, RELEASED, crop_box, released_boxes, released_order
from medseg.data.neighbours import stack_neighbours
from medseg.data.series_volume import SeriesTask, build_volume
from medseg.data.transforms import Compose
from medseg.data.windows import Window, apply_windows
from medseg.dicom.modality import raw_to_hu, word_values
from medseg.dicom.series import Series
from medseg.predict.discover import Skipped

THUMB_PX = 64  # thumbnail edge in the report strips


@dataclass
class SeriesInput:
    """One series ready for the model; lists are in head-to-foot order."""

    series_id: str
    study_id: str
    patient_id: str
    files: list[str]  # relative to the DICOM folder
    slice_ids: list[str]
    positions: np.ndarray  # mm along the slice normal; NaN when ordered by InstanceNumber
    image: np.ndarray  # float32 [S, C, H, W]; with neighbours C = windows × (2k + 1), the centre slice's in the middle
    thumbnails: np.ndarray  # uint8 [S, THUMB_PX, THUMB_PX], first window (brain), cropped
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # "read" (decode + window + crop box), "preprocess"
    order: np.ndarray | None = None  # the slices in the order the model takes them (None: as listed)
    sources: list[list[str]] | None = None  # with slabs: each slab's source files (``files`` joins them by ";")

    def model_image(self) -> np.ndarray:
        """``image`` in the model's slice order."""
        return self.image if self.order is None else self.image[self.order]

    def from_model_order(self, values: np.ndarray) -> np.ndarray:
        """Per-slice ``values`` in the model's order → in this series' order (head to foot)."""
        if self.order is None:
            return values
        out = np.empty_like(values)
        out[self.order] = values
        return out


def unique_slice_ids(series: list[Series], root: str) -> dict[str, str]:
    """``{path: slice_id}``: the file stem (the RSNA convention), or the relative path without
    extension for stems that occur more than once (``IM0001`` in every series folder)."""
    stems = Counter(s.slice_id for ser in series for s in ser.slices)
    ids = {}
    for ser in series:
        for s in ser.slices:
            rel = os.path.splitext(os.path.relpath(s.path, root))[0].replace(os.sep, "/")
            ids[s.path] = s.slice_id if stems[s.slice_id] == 1 else rel
    return ids


def slab_groups(positions: np.ndarray, spacing: float, slab_mm: float | None) -> list[np.ndarray] | None:
    """Consecutive slices averaged into one slab of about ``slab_mm``: ``k = round(slab_mm /
    spacing)`` slices each, split into ``round(S / k)`` near-equal runs (sizes differ by at most
    one). None when that leaves one slice per slab (the series is not thin), or when the spacing is
    unknown."""
    if not slab_mm or not np.isfinite(spacing) or spacing <= 0:
        return None
    per_slab = max(1, round(slab_mm / spacing))
    if per_slab < 2:
        return None
    return np.array_split(np.arange(len(positions)), max(1, round(len(positions) / per_slab)))


def _slab_volume(task: SeriesTask, windows: tuple[Window, ...], crop: str, slab_mm: float
                 ) -> tuple[np.ndarray, list[np.ndarray], list[tuple[int, int, int, int]], list, list[int]]:
    """Slabs of the decoded slices of a thin series (:func:`slab_groups` is not None): HU averaged
    over each run (what a thicker reconstruction approximates; averaging windowed values would
    differ wherever a window clips), then windowed and cropped as single slices are. Returns
    ``(volume, groups of kept indices, crops, errors, kept)``."""
    decoded: list = []
    _, kept, _, errors = build_volume(task, windows, crop, decoded)
    groups = slab_groups(np.asarray([task.positions[i] for i in kept]), task.spacing, slab_mm) if kept else []
    volume = np.empty((len(groups), task.rows, task.cols, len(windows)), dtype=np.uint8)
    for k, group in enumerate(groups):
        hu = np.zeros((task.rows, task.cols), dtype=np.float64)
        for j in group:
            words, params, layout = decoded[j]
            hu += raw_to_hu(word_values(words, layout), params)
        volume[k] = apply_windows(hu / len(group), windows)
    if crop == RELEASED:
        frame, boxes = released_boxes(volume)
        crops = []
        for k, box in enumerate(boxes):
            if box is None:
                volume[k] = 0
            crops.append(frame if box is None else box)
    else:
        tissue = int(np.argmax([w for _, w in windows]))  # widest window, as prepare's head crop
        crops = [crop_box(np.ascontiguousarray(volume[k, ..., tissue])) for k in range(len(groups))]
    return volume, [np.asarray([kept[j] for j in g]) for g in groups], crops, errors, kept


def _slab_position(positions: list[tuple[float, float, float] | None]) -> tuple[float, float, float] | None:
    """ImagePositionPatient of a slab: its slices' mean (a single slice's own; None if one lacks it)."""
    if len(positions) == 1 or any(p is None for p in positions):
        return positions[0] if len(positions) == 1 else None
    return tuple(float(v) for v in np.mean(positions, axis=0))


def stacked_inputs(cropped: list[np.ndarray], boxes: list, neighbours: int, order: np.ndarray | None) -> list[np.ndarray]:
    """The slices with their ``neighbours`` stacked as channels, neighbours taken in the model's
    slice ``order`` (the dataset's order: prepare stores a series so), listed head to foot."""
    model_order = np.arange(len(cropped)) if order is None else np.asarray(order)
    stacked = stack_neighbours([cropped[i] for i in model_order], [boxes[i] for i in model_order], neighbours)
    out: list[np.ndarray] = [np.empty(0)] * len(cropped)
    for position, i in enumerate(model_order):
        out[i] = stacked[position]
    return out


def load_series(series: Series, root: str, windows: tuple[Window, ...], transforms: Compose,
                slice_ids: dict[str, str], crop: str = DEFAULT_CROP, slab_mm: float | None = None,
                neighbours: int = 0) -> tuple[SeriesInput | None, list[Skipped]]:
    """Decode, window, crop (``crop`` mode, :mod:`medseg.data.crop`) and transform one series; bad
    slices are skipped with a reason (None when no slice of the series could be decoded).
    ``slab_mm``: average a thin series into slabs of about that thickness first (one model row
    per slab; its slice id ``<first>..<last>`` of its source slices, its file their paths joined
    by ";"). ``neighbours``: k neighbour slices on each side stacked as channels (the config's
    top-level ``neighbours``)."""
    start = time.perf_counter()
    task = SeriesTask(
        series_id=series.series_id, study_id=series.study_id, patient_id=series.patient_id, raw_root=root,
        files=tuple(os.path.relpath(s.path, root) for s in series.slices),
        slice_ids=tuple(slice_ids[s.path] for s in series.slices),
        positions=tuple(float(p) for p in series.positions), spacing=series.spacing,
        rows=series.shape[0], cols=series.shape[1],
    )
    thin = slab_groups(np.asarray(task.positions), task.spacing, slab_mm) is not None
    slabs = _slab_volume(task, tuple(windows), crop, slab_mm) if thin else None
    if slabs is None:
        volume, kept, crops, errors = build_volume(task, tuple(windows), crop)
        groups = [np.asarray([i]) for i in kept]
    else:
        volume, groups, crops, errors, kept = slabs
    skipped = [Skipped(e.file, f"{e.kind}: {e.reason}", series.series_id) for e in errors]
    if not kept:
        return None, skipped
    read = time.perf_counter()
    cropped = [volume[i, y0:y1, x0:x1] for i, (y0, y1, x0, x1) in enumerate(crops)]
    if crop == RELEASED:
        order = np.asarray(released_order([_slab_position([series.slices[i].position for i in g]) for g in groups]))
    else:
        order = None
    image = apply_transforms(transforms, stacked_inputs(cropped, crops, neighbours, order) if neighbours else cropped)
    thumbnails = np.stack([cv2.resize(np.ascontiguousarray(c[..., 0]), (THUMB_PX, THUMB_PX), interpolation=cv2.INTER_AREA) for c in cropped])
    done = time.perf_counter()
    sources = [[task.files[i] for i in g] for g in groups]
    ids = [task.slice_ids[g[0]] if len(g) == 1 else f"{task.slice_ids[g[0]]}..{task.slice_ids[g[-1]]}" for g in groups]
    return SeriesInput(
        series_id=series.series_id, study_id=series.study_id, patient_id=series.patient_id,
        files=[";".join(files) for files in sources], slice_ids=ids,
        positions=np.asarray([float(np.mean([task.positions[i] for i in g])) for g in groups], dtype=np.float64), image=image,
        thumbnails=thumbnails, notes=list(series.notes), seconds={"read": read - start, "preprocess": done - read},
        order=order, sources=sources if slabs is not None else None,
    ), skipped
