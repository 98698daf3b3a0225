"""Prepare's header scan and series planning: Kaggle folders → slice headers → one task per series.

:func:`scan_header` runs in the workers (one call per file, never raising); the rest runs in the
parent over its results. Unusable files become :class:`~medseg.data.records.ErrorRow` values.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from medseg.constants import TEST_DIR, TRAIN_DIR
from medseg.data import cache as cache_io
from medseg.data.crop import DEFAULT_CROP, RELEASED, released_order
from medseg.data.records import ErrorRow
from medseg.data.series_volume import SeriesTask
from medseg.dicom.errors import DicomReadError
from medseg.dicom.header import SliceHeader, read_header
from medseg.dicom.series import Series, group_series
from medseg.predict.triage import training_triage

TRIAGE_KIND = "SeriesTriage"  # the error kind of a file left out by series triage (localizer, secondary capture, ...)

def list_dicom_files(raw_root: str) -> dict[str, list[str]]:
    """``{"train": [...], "test": [...]}`` absolute paths under the Kaggle stage folders."""
    found = {}
    for split, folder in (("train", TRAIN_DIR), ("test", TEST_DIR)):
        directory = os.path.join(raw_root, folder)
        if os.path.isdir(directory):
            with os.scandir(directory) as entries:
                found[split] = sorted(e.path for e in entries if e.name.lower().endswith(".dcm") and e.is_file())
    if not found:
        raise FileNotFoundError(f"{raw_root}: neither {TRAIN_DIR}/ nor {TEST_DIR}/ found")
    return found


def scan_header(path: str) -> SliceHeader | DicomReadError:
    """One file's header, or the error that names why it cannot be used (returned, not raised)."""
    try:
        return read_header(path)
    except DicomReadError as exc:
        return exc
    except Exception as exc:  # never let one odd header stop a 750k-file scan
        return DicomReadError(path, f"unexpected {type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class HeaderScan:
    """The scan's readable headers per split, and a row per unreadable file."""

    headers: dict[str, list[SliceHeader]]
    errors: list[ErrorRow]


def collect_headers(results: Iterable[SliceHeader | DicomReadError], files: dict[str, list[str]], raw_root: str) -> HeaderScan:
    """Sort :func:`scan_header` results (any order) into their splits."""
    split_of = {path: split for split, paths in files.items() for path in paths}
    headers: dict[str, list[SliceHeader]] = {split: [] for split in files}
    errors: list[ErrorRow] = []
    for result in results:
        if isinstance(result, DicomReadError):
            errors.append(ErrorRow.from_error(result, raw_root))
        else:
            headers[split_of[result.path]].append(result)
    return HeaderScan(headers, errors)


def relative_path(path: str, root: str) -> str:
    """``os.path.relpath`` for the paths :func:`list_dicom_files` builds (``root/folder/name``),
    by slicing: relpath normalises both paths on every call, seconds over 750k files."""
    return path[len(root) + 1 :] if path.startswith(root + os.sep) else os.path.relpath(path, root)


def task_for(series: Series, raw_root: str, crop: str = DEFAULT_CROP) -> SeriesTask:
    """A worker's task for one assembled series (files relative to ``raw_root``): its slices head
    to foot, or in the release's order (:func:`medseg.data.crop.released_order`) for
    ``crop="released"``, the order the released checkpoints were trained with."""
    order = released_order([s.position for s in series.slices]) if crop == RELEASED else range(len(series.slices))
    slices = [series.slices[i] for i in order]
    return SeriesTask(
        series_id=series.series_id,
        study_id=series.study_id,
        patient_id=series.patient_id,
        raw_root=raw_root,
        files=tuple(relative_path(s.path, raw_root) for s in slices),
        slice_ids=tuple(s.slice_id for s in slices),
        positions=tuple(float(series.positions[i]) for i in order),
        spacing=series.spacing,
        rows=series.shape[0],
        cols=series.shape[1],
        slices=tuple(slices),
    )


def plan_tasks(headers: dict[str, list[SliceHeader]], raw_root: str,
               crop: str = DEFAULT_CROP) -> tuple[list[tuple[str, SeriesTask]], list[ErrorRow]]:
    """Assemble series per split: ``([(split, task)], errors)``, one task per series, each with
    its own cache name (slices ordered as ``crop`` asks: :func:`task_for`). Localizers, secondary
    captures and structured reports are left out first (:func:`medseg.predict.triage.training_triage`),
    each file an error row of kind :data:`TRIAGE_KIND`."""
    tasks: list[tuple[str, SeriesTask]] = []
    errors: list[ErrorRow] = []
    taken: set[str] = set()
    for split in ("train", "test"):  # an id in both splits is kept in train
        kept, excluded = training_triage(headers.get(split, []))
        errors.extend(ErrorRow(relative_path(h.path, raw_root), h.series_id, reason, TRIAGE_KIND) for h, reason in excluded)
        series_list, assembly_errors = group_series(kept)
        series_of = {h.path: h.series_id for h in headers.get(split, [])}
        errors.extend(ErrorRow.from_error(e, raw_root, series_of.get(e.path, "")) for e in assembly_errors)
        for series in series_list:
            name = cache_io.safe_name(series.series_id)
            if name in taken:
                errors.extend(ErrorRow(os.path.relpath(s.path, raw_root), series.series_id, "series id also used in the other split", "SeriesIdClash")
                              for s in series.slices)
                continue
            taken.add(name)
            tasks.append((split, task_for(series, raw_root, crop)))
    return tasks, errors
