"""CT slices → ordered series → model inputs, with prepare's reader and the training preprocessing.

Each series goes through ``medseg.data.series_volume.build_volume`` (the prepare step's decoder:
RSNA quirks, padding, windows as uint8, crop box per slice in the config's crop mode), is cropped
like the dataset crops (``volume[i, y0:y1, x0:x1]``) and transformed by the config's eval
transforms. Nothing here reimplements a preprocessing step, so predict sees a study exactly as
validation did. With ``crop: released`` the model also takes the slices in the release's order
(``SeriesInput.order``); results stay head to foot.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from medseg.data.build import apply_transforms
from medseg.data.crop import DEFAULT_CROP, RELEASED, released_order
from medseg.data.series_volume import SeriesTask, build_volume
from medseg.data.transforms import Compose
from medseg.data.windows import Window
from medseg.dicom.header import SliceHeader
from medseg.dicom.series import Series, group_series
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
    image: np.ndarray  # float32 [S, C, H, W]
    thumbnails: np.ndarray  # uint8 [S, THUMB_PX, THUMB_PX], first window (brain), cropped
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # "read" (decode + window + crop box), "preprocess"
    order: np.ndarray | None = None  # the slices in the order the model takes them (None: as listed)

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


def assemble_series(headers: list[SliceHeader], root: str) -> tuple[list[Series], list[Skipped]]:
    """Group and order slices (``medseg.dicom.series``); misfits become :class:`Skipped`."""
    series, errors = group_series(headers)
    return series, [Skipped(os.path.relpath(e.path, root), f"{type(e).__name__}: {e.reason}") for e in errors]


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


def load_series(series: Series, root: str, windows: tuple[Window, ...], transforms: Compose,
                slice_ids: dict[str, str], crop: str = DEFAULT_CROP) -> tuple[SeriesInput | None, list[Skipped]]:
    """Decode, window, crop (``crop`` mode, :mod:`medseg.data.crop`) and transform one series; bad
    slices are skipped with a reason (None when no slice of the series could be decoded)."""
    start = time.perf_counter()
    task = SeriesTask(
        series_id=series.series_id, study_id=series.study_id, patient_id=series.patient_id, raw_root=root,
        files=tuple(os.path.relpath(s.path, root) for s in series.slices),
        slice_ids=tuple(slice_ids[s.path] for s in series.slices),
        positions=tuple(float(p) for p in series.positions), spacing=series.spacing,
        rows=series.shape[0], cols=series.shape[1],
    )
    volume, kept, crops, errors = build_volume(task, tuple(windows), crop)
    skipped = [Skipped(e.file, f"{e.kind}: {e.reason}") for e in errors]
    if not kept:
        return None, skipped
    read = time.perf_counter()
    cropped = [volume[i, y0:y1, x0:x1] for i, (y0, y1, x0, x1) in enumerate(crops)]
    image = apply_transforms(transforms, cropped)
    thumbnails = np.stack([cv2.resize(np.ascontiguousarray(c[..., 0]), (THUMB_PX, THUMB_PX), interpolation=cv2.INTER_AREA) for c in cropped])
    done = time.perf_counter()
    order = np.asarray(released_order([series.slices[i].position for i in kept])) if crop == RELEASED else None
    return SeriesInput(
        series_id=series.series_id, study_id=series.study_id, patient_id=series.patient_id,
        files=[task.files[i] for i in kept], slice_ids=[task.slice_ids[i] for i in kept],
        positions=np.asarray([task.positions[i] for i in kept], dtype=np.float64), image=image,
        thumbnails=thumbnails, notes=list(series.notes), seconds={"read": read - start, "preprocess": done - read},
        order=order,
    ), skipped
