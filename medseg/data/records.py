"""The values prepare's stages hand each other: an error row per file it could not use, and the
record of one cached series (what a worker returns and the meta tables are built from)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NamedTuple

from medseg.dicom.errors import DicomReadError

ERROR_COLUMNS = ("file", "series_id", "reason")  # prepare_errors.csv; ``kind`` only feeds the summary


class ErrorRow(NamedTuple):
    """A file that could not be used. Sorts by file first, as ``prepare_errors.csv`` is written."""

    file: str  # relative to raw_root
    series_id: str  # "" when unknown
    reason: str
    kind: str  # the error class, e.g. TruncatedPixelDataError

    @classmethod
    def from_error(cls, exc: DicomReadError, raw_root: str, series_id: str | None = None) -> ErrorRow:
        """The row of a typed DICOM error (its own series id unless ``series_id`` is given)."""
        return cls(os.path.relpath(exc.path, raw_root), exc.series_id if series_id is None else series_id,
                   exc.reason, type(exc).__name__)


@dataclass(frozen=True, slots=True)  # slots: one per series, ~20k in the parent of a real run
class SeriesRecord:
    """One processed series: its kept slices in head-to-foot order (ids, positions, crop boxes),
    its cache file relative to the dataset root ("" when no slice could be used), and the files
    it dropped. ``reused``: found complete from an earlier run rather than built now."""

    series_id: str
    study_id: str
    patient_id: str
    cache: str
    shape: tuple[int, ...]  # [S, H, W, C] of the cached frames
    slice_ids: tuple[str, ...]
    positions: tuple[float, ...]
    spacing: float | None
    crops: tuple[tuple[int, int, int, int], ...]
    errors: tuple[ErrorRow, ...]
    reused: bool = False

    @classmethod
    def from_json(cls, record: dict[str, Any], reused: bool) -> SeriesRecord:
        """From the stored ``.json`` record (see :mod:`medseg.data.cache`; its errors are
        ``[file, reason, kind]`` lists)."""
        series_id = record["series_id"]
        return cls(
            series_id=series_id,
            study_id=record["study_id"],
            patient_id=record["patient_id"],
            cache=record["cache"],
            shape=tuple(record["shape"]),
            slice_ids=tuple(record["slice_ids"]),
            positions=tuple(record["positions"]),
            spacing=record["spacing"],
            crops=tuple(tuple(c) for c in record["crops"]),
            errors=tuple(ErrorRow(file, series_id, reason, kind) for file, reason, kind in record["errors"]),
            reused=reused,
        )
