"""Find every file under a folder and sort out which are usable CT slices.

A clinical export has any file names and any nesting (``DICOMDIR``, ``IM0001``, ``1.2.840….dcm``,
``series/3/…``), plus readme files and other modalities, so nothing is filtered by name: every
file gets a header read, and what is not a CT slice is reported with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tqdm import tqdm

from medseg.dicom.errors import DicomReadError
from medseg.dicom.header import SliceHeader, read_header


@dataclass(frozen=True)
class Skipped:
    """A file left out of the prediction; ``file`` is relative to the DICOM folder, ``series_id``
    the series its header names ("" when unknown)."""

    file: str
    reason: str
    series_id: str = ""


def list_files(root: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """Every regular file under ``root`` (absolute paths, sorted), not descending into ``exclude``
    (e.g. the output folder when it lies inside the input) nor following directory symlinks."""
    root = os.path.abspath(root)
    excluded = {os.path.realpath(p) for p in exclude}
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(folder, d)) not in excluded)
        found.extend(os.path.join(folder, f) for f in files if os.path.isfile(os.path.join(folder, f)))
    return sorted(found)


def scan_headers(paths: list[str], progress: bool = True) -> tuple[list[SliceHeader], list[DicomReadError]]:
    """Read each file's header leniently (missing identifiers are left to placeholders, see
    :func:`medseg.predict.triage.with_placeholders`); CT slices come back as headers, every other
    file as the error saying why (its ``series_id`` and ``tags`` set when the header was parsed)."""
    headers, errors = [], []
    for path in tqdm(paths, desc="scan", unit="file", disable=not progress, leave=False):
        try:
            headers.append(read_header(path, lenient=True))
        except DicomReadError as exc:
            errors.append(exc)
        except Exception as exc:  # one odd file must not stop the study; say what happened
            errors.append(DicomReadError(path, f"unexpected {type(exc).__name__}: {exc}"))
    return headers, errors
