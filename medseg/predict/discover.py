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
    """A file left out of the prediction; ``file`` is relative to the DICOM folder."""

    file: str
    reason: str


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


def _reason(exc: DicomReadError) -> str:
    """The error's reason without the path (the file column already says which file)."""
    return f"{type(exc).__name__}: {exc.reason}"


def scan_headers(paths: list[str], root: str, progress: bool = True) -> tuple[list[SliceHeader], list[Skipped]]:
    """Read each file's header; CT slices come back as headers, everything else as :class:`Skipped`."""
    headers, skipped = [], []
    for path in tqdm(paths, desc="scan", unit="file", disable=not progress, leave=False):
        try:
            headers.append(read_header(path))
        except DicomReadError as exc:
            skipped.append(Skipped(os.path.relpath(path, root), _reason(exc)))
        except Exception as exc:  # one odd file must not stop the study; say what happened
            skipped.append(Skipped(os.path.relpath(path, root), f"unexpected {type(exc).__name__}: {exc}"))
    return headers, skipped
