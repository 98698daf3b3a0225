"""predictions.csv, predictions.json and skipped.csv of a predict run (all written atomically).

``predictions.json`` lists every series found (``"series"``): its :class:`SeriesInfo` (predicted
or not, the reason, notes, kernel, thickness, tilt, spacing) and, for a predicted one, its
predictions. ``skipped.csv`` names every file left out, its series and the reason.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from medseg.constants import LABELS
from medseg.outputs.predictions import validate_predictions
from medseg.predict.discover import Skipped
from medseg.predict.triage import SeriesInfo
from medseg.utils.atomic import atomic_write_csv, atomic_write_json

CSV_COLUMNS = ("series_id", "slice_id", "slice_idx", "position", *LABELS, "file")


@dataclass
class SeriesResult:
    """Predictions of one series, slices head to foot."""

    series_id: str
    study_id: str
    patient_id: str
    files: list[str]
    slice_ids: list[str]
    positions: np.ndarray
    probs: np.ndarray  # [S, 6] in LABELS order
    thumbnails: np.ndarray  # uint8 [S, T, T]
    notes: list[str]
    sources: list[list[str]] | None = None  # slabs (``--slab_mm``): each row's source files
    series_info: SeriesInfo | None = None  # what triage recorded (kernel, thickness, tilt, notes)

    def series_max(self) -> dict[str, float]:
        return {label: float(self.probs[:, j].max()) for j, label in enumerate(LABELS)}

    def flagged(self, threshold: float) -> np.ndarray:
        """bool [S]: slices with any probability at or above ``threshold``."""
        return (self.probs >= threshold).any(axis=1)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None  # JSON has no NaN


def predictions_frame(results: list[SeriesResult]) -> pd.DataFrame:
    rows = []
    for r in results:
        for i, (sid, pos, file) in enumerate(zip(r.slice_ids, r.positions, r.files)):
            rows.append({"series_id": r.series_id, "slice_id": sid, "slice_idx": i, "position": float(pos),
                         **{label: float(r.probs[i, j]) for j, label in enumerate(LABELS)}, "file": file})
    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    validate_predictions(frame, source="predictions.csv")  # unique slice ids, probabilities in [0, 1]
    return frame


def write_predictions_csv(path: str, results: list[SeriesResult]) -> None:
    """One row per slice: ``series_id, slice_id, slice_idx, position, <six labels>, file``; readable by
    ``medseg.outputs.read_predictions`` (it needs ``slice_id``, ``series_id`` and the labels)."""
    atomic_write_csv(path, predictions_frame(results))


def _prediction_entry(r: SeriesResult, threshold: float) -> dict[str, Any]:
    above = {label: [int(i) for i in np.flatnonzero(r.probs[:, j] >= threshold)] for j, label in enumerate(LABELS)}
    slices = []
    for i, (sid, f, p) in enumerate(zip(r.slice_ids, r.files, r.positions)):
        entry = {"slice_idx": i, "slice_id": sid, "file": f, "position": _finite_or_none(p),
                 "probabilities": {label: float(r.probs[i, j]) for j, label in enumerate(LABELS)}}
        if r.sources is not None:
            entry["sources"] = r.sources[i]
        slices.append(entry)
    return {
        "series_id": r.series_id, "study_id": r.study_id, "patient_id": r.patient_id, "n_slices": len(r.slice_ids),
        "max": r.series_max(),
        "max_slice_idx": {label: int(np.argmax(r.probs[:, j])) for j, label in enumerate(LABELS)},
        "slices_above_threshold": above,
        "notes": r.notes,
        "slices": slices,
    }


def predictions_json(results: list[SeriesResult], threshold: float, info: dict[str, Any],
                     series_info: list[SeriesInfo] = (), dicom: dict[str, dict] | None = None) -> dict[str, Any]:
    """``"series"``: one entry per :class:`SeriesInfo` (all its fields), with the predictions of
    the predicted ones (``n_slices``, ``max``, ``max_slice_idx``, ``slices_above_threshold``,
    ``slices``); a result without a SeriesInfo is listed by its predictions alone. ``dicom``: per
    series id, the record of its DICOM outputs (``--dicom_out``: files relative to
    ``info["dicom_out"]``, their UIDs, or why none), under ``"dicom"``."""
    predicted = {r.series_id: _prediction_entry(r, threshold) for r in results}
    for series_id, record in (dicom or {}).items():
        if series_id in predicted:
            predicted[series_id]["dicom"] = record
    series = []
    for entry in series_info:
        series.append({**asdict(entry), **predicted.pop(entry.series_id, {})})
    series += predicted.values()
    return {**info, "threshold": threshold, "labels": list(LABELS), "series": series}


def write_predictions_json(path: str, results: list[SeriesResult], threshold: float, info: dict[str, Any],
                           series_info: list[SeriesInfo] = (), dicom: dict[str, dict] | None = None) -> None:
    atomic_write_json(path, predictions_json(results, threshold, info, series_info, dicom))


def write_skipped(path: str, skipped: list[Skipped]) -> None:
    """``file, series_id, reason`` for every file not used, one row per file (header line even
    when empty); ``series_id`` is empty for a file whose header names none."""
    rows = sorted({(s.file, s.series_id, s.reason) for s in skipped})
    atomic_write_csv(path, pd.DataFrame(rows, columns=["file", "series_id", "reason"]))


def output_paths(out_dir: str) -> dict[str, str]:
    names = {"csv": "predictions.csv", "json": "predictions.json", "skipped": "skipped.csv", "html": "report.html"}
    return {k: os.path.join(out_dir, v) for k, v in names.items()}
