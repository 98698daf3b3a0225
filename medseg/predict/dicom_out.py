"""``--dicom_out DIR``: per predicted series, an SR (:mod:`medseg.predict.dicom_sr`) and a
Secondary Capture series (:mod:`medseg.predict.dicom_capture`) in the source study.

Files are ``DIR/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, both UIDs generated here: a name
never comes from a string read from the input, so nothing is written outside ``DIR``, and an
existing ``DIR`` keeps its files (new UIDs, new names). Each file is written atomically. A series
whose StudyInstanceUID is not a valid UID gets no outputs, and a slice whose UIDs are not valid is
not referenced (:mod:`medseg.predict.dicom_source`); both are recorded with the reason in
predictions.json (``"dicom"`` of each predicted series) and logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from medseg.predict.dicom_capture import SeriesCaptures, build_capture, caption, render
from medseg.dicom.validation import valid_uid
from medseg.predict.dicom_source import ModelIdentity, model_identity, read_header, reference_dataset, referencable
from medseg.predict.dicom_sr import build_sr, top_rows
from medseg.predict.tables import SeriesResult
from medseg.utils.atomic import atomic_open
from medseg.utils.logger import get_logger

logger = get_logger("predict.dicom")

SERIES_NUMBER = 9900  # outputs of the k-th series: SR 9901 + 2k, captures 9902 + 2k
SR_DESCRIPTION = "medseg ICH measurement report (research)"
SC_DESCRIPTION = "medseg ICH captures NOT FOR DIAGNOSTIC USE"


@dataclass
class DicomWritten:
    """What was written under ``folder``: one record per predicted series (:func:`write_series`)."""

    folder: str
    series: list[dict[str, Any]] = field(default_factory=list)

    def paths(self) -> list[str]:
        """Absolute paths of every file written, each series' SR first."""
        out = []
        for entry in self.series:
            if entry.get("sr"):
                out.append(os.path.join(self.folder, entry["sr"]["file"]))
            out += [os.path.join(self.folder, c["file"]) for c in entry.get("captures", {}).get("files", [])]
        return out

    def by_series(self) -> dict[str, dict[str, Any]]:
        return {entry["series_id"]: entry for entry in self.series}


class _Headers:
    """Source headers read once each; an unreadable one counts as not referencable."""

    def __init__(self, root: str):
        self.root, self.cache, self.notes = root, {}, []

    def get(self, rel: str) -> Dataset | None:
        if rel not in self.cache:
            try:
                self.cache[rel] = read_header(os.path.join(self.root, rel))
            except (OSError, InvalidDicomError, ValueError) as exc:
                self.notes.append(f"{rel}: header unreadable ({type(exc).__name__}: {exc}): not referenced")
                self.cache[rel] = None
        return self.cache[rel]

    def referencable(self, rels: list[str]) -> list[Dataset]:
        out = []
        for rel in rels:
            header = self.get(rel)
            if header is not None and referencable(header):
                out.append(header)
            elif header is not None:
                self.notes.append(f"{rel}: a UID of the slice is not a valid DICOM UID: not referenced")
        return out


def _save(ds: Dataset, folder: str, series_uid: str, sop_uid: str) -> str:
    rel = os.path.join(series_uid, f"{sop_uid}.dcm")
    with atomic_open(os.path.join(folder, rel), "wb") as fh:
        ds.save_as(fh, enforce_file_format=True)
    return rel


def write_series(folder: str, root: str, result: SeriesResult, capture: SeriesCaptures, threshold: float,
                 identity: ModelIdentity, k: int) -> dict[str, Any]:
    """The SR and the capture series of one result; returns its record (files relative to ``folder``)."""
    rows = result.sources if result.sources is not None else [[f] for f in result.files]
    headers = _Headers(root)
    entry: dict[str, Any] = {"series_id": result.series_id, "written": False, "reason": "", "notes": headers.notes}
    first = headers.get(rows[0][0])
    if first is None:
        entry["reason"] = f"{rows[0][0]}: header unreadable: no DICOM outputs (its study is unknown)"
        return entry
    study = first.get("StudyInstanceUID")
    if not valid_uid(study):
        entry["reason"] = (f"StudyInstanceUID {str(study)[:80]!r} of {rows[0][0]} is not a valid DICOM UID: no DICOM "
                           f"outputs (they must join the source study)")
        return entry
    ref = reference_dataset(first)
    row_refs: list[list[Dataset]] = [[] for _ in rows]
    for i in sorted({i for j in range(result.probs.shape[1]) for i in top_rows(result.probs, j)}):
        row_refs[i] = headers.referencable(rows[i])
    evidence = list({h.SOPInstanceUID: h for refs in row_refs for h in refs}.values())
    sr_series, sr_sop, sc_series = generate_uid(), generate_uid(), generate_uid()
    sr = None
    if evidence:
        evidence[0] = reference_dataset(evidence[0])
        sr = build_sr(evidence, result.probs, threshold, row_refs, identity, sr_series, sr_sop,
                      SERIES_NUMBER + 2 * k + 1, SR_DESCRIPTION)
    else:
        headers.notes.append("no top slice has valid UIDs to reference: no SR (highdicom records its evidence)")
    captures = []
    for n, item in enumerate(capture.slices, start=1):
        header = headers.get(rows[item.index][0]) or first
        pixels = render(item, caption(capture, item, threshold, identity))
        sop = generate_uid()
        sc = build_capture(ref, header, headers.referencable(rows[item.index]), pixels, sc_series, sop,
                           SERIES_NUMBER + 2 * k + 2, n, SC_DESCRIPTION)
        captures.append((sc, sop, item.index))
    if sr is not None:
        entry["sr"] = {"file": _save(sr, folder, sr_series, sr_sop), "series_instance_uid": sr_series,
                       "sop_instance_uid": sr_sop}
    entry["captures"] = {"series_instance_uid": sc_series, "flagged": capture.flagged,
                         "files": [{"file": _save(sc, folder, sc_series, sop), "sop_instance_uid": sop, "slice_idx": i}
                                   for sc, sop, i in captures]}
    entry["study_instance_uid"] = str(study)
    entry["written"] = True
    return entry


def write_dicom_outputs(folder: str, root: str, results: list[SeriesResult], captures: list[SeriesCaptures],
                        threshold: float, predictor) -> DicomWritten:
    """The DICOM outputs of every predicted series (module docstring); a series that cannot get
    them is recorded with the reason, the others are still written."""
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    identity = model_identity(predictor, threshold)
    written = DicomWritten(folder)
    for k, (result, capture) in enumerate(zip(results, captures)):
        try:
            entry = write_series(folder, root, result, capture, threshold, identity, k)
        except (ValueError, TypeError, AttributeError) as exc:  # e.g. a source value highdicom refuses to copy
            entry = {"series_id": result.series_id, "written": False, "notes": [],
                     "reason": f"DICOM outputs not written: {type(exc).__name__}: {exc}"}
        for note in entry["notes"]:
            logger.info("%s: %s", result.series_id, note)
        if not entry["written"]:
            logger.warning("%s: %s", result.series_id, entry["reason"])
        written.series.append(entry)
    return written
