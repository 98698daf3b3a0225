"""Series assembly: group slice headers by SeriesInstanceUID and order them head to foot.

Order comes from geometry, not file names: each ImagePositionPatient is projected on the slice
normal (row x column direction cosines), the normal is flipped to point to the head (+z in the
patient LPS frame), and slices are sorted by decreasing projection. Ascending and descending
acquisitions therefore come out the same way round.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from medseg.dicom.errors import DicomReadError, InconsistentSliceError, MissingGeometryError
from medseg.dicom.header import SliceHeader
from medseg.utils.logger import get_logger

logger = get_logger("dicom.series")


@dataclass
class Series:
    """One series, slices in head-to-foot order. ``positions`` is NaN when ordered by InstanceNumber."""

    series_id: str
    study_id: str
    patient_id: str
    slices: list[SliceHeader]
    positions: np.ndarray
    spacing: float
    notes: list[str] = field(default_factory=list)  # non-fatal oddities (fallback order, duplicates)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.slices[0].rows, self.slices[0].cols)


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """Unit normal of the slice plane, pointing to the head (+z); raises ValueError if degenerate."""
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:6], dtype=np.float64)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError(f"degenerate ImageOrientationPatient {orientation}")
    normal /= norm
    # Choose the sign by the dominant superior component so a flipped row/column order does not
    # reverse the series (sagittal/coronal normals fall back to their largest component).
    axis = 2 if abs(normal[2]) > 1e-3 else int(np.argmax(np.abs(normal)))
    return -normal if normal[axis] < 0 else normal


def _majority_shape(slices: list[SliceHeader]) -> tuple[int, int]:
    counts = Counter((s.rows, s.cols) for s in slices)
    # Most common size; ties broken by the larger frame so the choice is deterministic.
    return max(counts, key=lambda shape: (counts[shape], shape))


def majority_normal(slices: list[SliceHeader]) -> np.ndarray | None:
    """The head-pointing normal of the most common orientation (None if it is degenerate)."""
    orientations = Counter(s.orientation for s in slices)
    try:
        return slice_normal(max(orientations, key=lambda o: (orientations[o], o)))
    except ValueError:
        return None


def _order_by_geometry(slices: list[SliceHeader], normal: np.ndarray) -> tuple[list[SliceHeader], np.ndarray, list[str]]:
    projections = np.array([float(np.dot(normal, s.position)) for s in slices])
    instance = [s.instance_number if s.instance_number is not None else 0 for s in slices]
    # Decreasing position = head first; InstanceNumber then slice_id break exact ties.
    order = sorted(range(len(slices)), key=lambda i: (-round(projections[i], 4), instance[i], slices[i].slice_id))
    notes = []
    rounded = np.round(projections, 4)
    duplicates = len(rounded) - len(np.unique(rounded))
    if duplicates:
        notes.append(f"{duplicates} duplicate slice position(s), kept and ordered by InstanceNumber")
    return [slices[i] for i in order], projections[order], notes


def _order_by_instance(slices: list[SliceHeader]) -> tuple[list[SliceHeader], np.ndarray, list[str]]:
    order = sorted(range(len(slices)), key=lambda i: (slices[i].instance_number, slices[i].slice_id))
    return [slices[i] for i in order], np.full(len(slices), np.nan), ["no usable ImagePositionPatient: ordered by InstanceNumber"]


def _spacing(positions: np.ndarray, slices: list[SliceHeader]) -> float:
    if len(positions) > 1 and np.all(np.isfinite(positions)):
        steps = np.abs(np.diff(positions))
        steps = steps[steps > 1e-4]
        if len(steps):
            return float(np.median(steps))
    thickness = [s.slice_thickness for s in slices if s.slice_thickness]
    return float(np.median(thickness)) if thickness else float("nan")


def build_series(series_id: str, slices: list[SliceHeader]) -> tuple[Series | None, list[DicomReadError]]:
    """Order one series' slices; slices that do not fit are returned as errors, never raised."""
    errors: list[DicomReadError] = []
    shape = _majority_shape(slices)
    kept = []
    for s in slices:
        if (s.rows, s.cols) != shape:
            errors.append(InconsistentSliceError(s.path, f"slice is {s.rows}x{s.cols}, series {series_id} is {shape[0]}x{shape[1]}"))
        else:
            kept.append(s)
    located = [s for s in kept if s.position is not None and s.orientation is not None]
    normal = majority_normal(located) if located else None
    if normal is not None:
        for s in kept:
            if s.position is None or s.orientation is None:
                missing = "ImagePositionPatient" if s.position is None else "ImageOrientationPatient"
                errors.append(MissingGeometryError(s.path, f"{missing} missing or malformed while the rest of series {series_id} has it"))
        ordered, positions, notes = _order_by_geometry(located, normal)
    elif kept and all(s.instance_number is not None for s in kept):
        ordered, positions, notes = _order_by_instance(kept)
    else:
        for s in kept:
            errors.append(MissingGeometryError(s.path, f"series {series_id} has neither ImagePositionPatient/Orientation nor InstanceNumber on every slice"))
        return None, errors
    for note in notes:
        logger.warning("series %s: %s", series_id, note)
    first = ordered[0]
    return Series(series_id, first.study_id, first.patient_id, ordered, positions, _spacing(positions, ordered), notes), errors


def group_series(headers: list[SliceHeader]) -> tuple[list[Series], list[DicomReadError]]:
    """Group by SeriesInstanceUID and order each series; returns series sorted by id, and errors."""
    groups: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in headers:
        groups[header.series_id].append(header)
    series, errors = [], []
    for series_id in sorted(groups):
        built, errs = build_series(series_id, groups[series_id])
        errors.extend(errs)
        if built is not None:
            series.append(built)
    return series, errors
