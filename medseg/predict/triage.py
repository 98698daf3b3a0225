"""Series triage for predict: which series of a study folder are axial head CT series the model
can take, and, for every other one, why not.

:class:`SeriesInfo` is what the outputs (``predictions.json``, ``skipped.csv``, ``report.html``)
say about each series, predicted or not. The rules (docs/design.md, "Series triage"):

- per file, from its header: a structured report (dose reports among them), a secondary capture
  (SOP Class or ImageType SECONDARY) or a localizer (ImageType LOCALIZER) is left out; so is what
  the header scan rejects (not CT, colour, multi-frame, no pixels);
- duplicates: the same SOPInstanceUID twice is one image, two files at one position of a series
  one slice; :func:`preference` picks the file kept;
- per series: a slice normal more than :data:`MAX_AXIAL_DEG` from the patient z axis (coronal,
  sagittal, a localizer without its ImageType) and a single slice described as a scout are left
  out; fewer than ``min_slices`` slices (1 by default) too;
- predicted with a note: a gantry tilt, a short series, thin slices, uneven spacing, a sharp
  (bone) kernel, identifiers replaced by placeholders, files left out of the series.

Prepare applies the file rules and the scout rule (:func:`training_triage`), not the others: a
labelled RSNA series is what its labels describe, whatever its tilt or length.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

import numpy as np
from pydicom.uid import UID

from medseg.dicom.errors import DicomReadError, NotCTError
from medseg.dicom.header import ID_KEYWORDS, NATIVE_LITTLE_ENDIAN, ImageTags, SliceHeader
from medseg.dicom.series import Series, group_series, majority_normal
from medseg.predict.discover import Skipped

# Gantry tilts of head CT reach about 30 degrees; coronal and sagittal planes are at 90. A normal
# further than this from the patient z axis is not an axial series.
MAX_AXIAL_DEG = 35.0
TILT_NOTE_DEG = 1.0  # below this a series counts as untilted (rounding in the direction cosines)
# RSNA head series have about 20-60 slices (../RSNA_FACTS.md); with fewer the model sees less of
# the head around each slice than in training. Still predicted (with a note): a short series is
# often part of a head series (one slice sent alone, an export cut short), and the file rules
# above already catch the short series that are not head images (localizers, dose screens).
SHORT_SERIES = 10
THIN_MM = 2.0  # RSNA slices are about 5 mm; thinner ones are noisier and see less per slice
# Steps along the normal differing by more than this (and by more than 10 % of the median step)
# are uneven spacing: mixed reconstruction intervals, missing slices.
UNEVEN_MM = 0.5
UNEVEN_FRACTION = 0.1
POSITION_DECIMALS = 4  # mm; positions equal to this precision are one position (as medseg.dicom.series)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame variants .7.1 - .7.4
STRUCTURED_REPORT = "1.2.840.10008.5.1.4.1.1.88."  # every SR class, the radiation dose SRs among them
SCOUT_WORDS = ("SCOUT", "TOPOGRAM", "SCANOGRAM", "SURVIEW", "LOCALIZER", "LOCALISER", "PILOT")
# Reconstruction kernels sharper than the soft-tissue (brain) kernels RSNA series were made with,
# by vendor naming: words (GE BONE/BONEPLUS/EDGE/LUNG, "sharp" anywhere), Siemens head and body
# kernels H/B (also Hr/Br/Hn...) numbered 60 and up, Canon/Toshiba FC30 and up (bone and lung).
SHARP_WORDS = ("BONE", "SHARP", "EDGE", "LUNG")
_SIEMENS_KERNEL = re.compile(r"^[HB][A-Z]?(\d{2})")
_CANON_KERNEL = re.compile(r"^FC(\d{2})")
PLACEHOLDER = "MISSING-{keyword}"  # the id of a slice whose header lacks it (series: per folder)


@dataclass
class SeriesInfo:
    """One series of the folder as triage saw it. ``reason`` is empty for a predicted series;
    ``notes`` are what a reader should know either way (a bone kernel, a tilt, a placeholder for a
    missing tag, a duplicate dropped). Geometry is None where the headers do not give it."""

    series_id: str
    study_id: str
    description: str
    files: int
    predicted: bool
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    kernel: str | None = None
    thickness_mm: float | None = None
    tilt_deg: float | None = None
    spacing_mm: float | None = None  # median step along the slice normal
    spacing_spread_mm: float | None = None  # max - min step


@dataclass
class Triage:
    """What :func:`triage_folder` decided: the series to predict (in series id order), every
    series' :class:`SeriesInfo` by id, and every file left out with its reason."""

    series: list[Series]
    info: dict[str, SeriesInfo]
    skipped: list[Skipped]


# --- rules ----------------------------------------------------------------------------------------

def _image_type(tags: ImageTags) -> str:
    return "\\".join(tags.image_type)


def image_reason(tags: ImageTags | None) -> str | None:
    """Why one image is not an axial CT slice by its header alone (None: nothing against it)."""
    if tags is None:
        return None
    sop = tags.sop_class
    if sop.startswith(STRUCTURED_REPORT):
        return f"structured report: SOP Class {sop} ({UID(sop).name}), not an image (a dose report, for one)"
    if sop == SECONDARY_CAPTURE or sop.startswith(SECONDARY_CAPTURE + "."):
        kind = f", ImageType {_image_type(tags)}" if tags.image_type else ""
        return f"secondary capture: SOP Class {sop} ({UID(sop).name}{kind})"
    if "SECONDARY" in tags.image_type:
        return f"secondary capture: ImageType {_image_type(tags)}"
    if "LOCALIZER" in tags.image_type:
        return f"localizer: ImageType {_image_type(tags)}"
    return None


def normal_angle(normal: np.ndarray | None) -> float | None:
    """Degrees between a unit slice normal and the patient z axis (0 = axial, 90 = coronal/sagittal)."""
    if normal is None:
        return None
    return float(np.degrees(np.arccos(min(1.0, abs(float(normal[2]))))))


def series_reason(slices: list[SliceHeader], angle: float | None) -> str | None:
    """Why a series (its slices after the file rules) is not an axial head series, or None."""
    if angle is not None and angle > MAX_AXIAL_DEG:
        return f"not axial: slice normal {angle:.1f}° from the patient z axis (axial up to {MAX_AXIAL_DEG:g}°; coronal/sagittal ~90°)"
    if len(slices) == 1:
        tags = slices[0].tags
        text = " ".join((tags.description.upper(), *tags.image_type))
        word = next((w for w in SCOUT_WORDS if w in text), None)
        if word is not None:
            return f"scout: a single slice described as {word.lower()} ({tags.description or _image_type(tags)})"
    return None


def sharp_kernel(kernel: str | None) -> bool:
    """Whether ``kernel`` (ConvolutionKernel) names a bone/sharp reconstruction (see :data:`SHARP_WORDS`)."""
    if not kernel:
        return False
    for part in kernel.upper().split("\\"):
        part = part.strip()
        if any(word in part for word in SHARP_WORDS):
            return True
        match = _SIEMENS_KERNEL.match(part) or _CANON_KERNEL.match(part)
        if match and int(match.group(1)) >= (60 if match.re is _SIEMENS_KERNEL else 30):
            return True
    return False


def preference(header: SliceHeader, root: str) -> tuple:
    """Sort key of duplicate files, best first: stored without loss (not a lossy transfer syntax,
    LossyImageCompression not "01"), then uncompressed, then the higher InstanceNumber (a later
    image of that place), then the first by relative file path."""
    instance = header.instance_number if header.instance_number is not None else -(2**31)
    return (header.tags.lossy, header.transfer_syntax not in NATIVE_LITTLE_ENDIAN, -instance, os.path.relpath(header.path, root))


# --- geometry -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """Where a series' slices lie, from ImagePositionPatient/ImageOrientationPatient (None: not given)."""

    angle: float | None  # slice normal vs patient z, degrees
    spacing: float | None  # median step along the normal, mm
    spread: float | None  # max - min step, mm


def geometry(slices: list[SliceHeader]) -> Geometry:
    """Orientation and spacing of one series' slices (positions projected on the majority normal)."""
    located = [s for s in slices if s.position is not None and s.orientation is not None]
    normal = majority_normal(located) if located else None
    if normal is None:
        return Geometry(None, None, None)
    positions = np.unique(np.round([float(np.dot(normal, s.position)) for s in located], POSITION_DECIMALS))
    steps = np.diff(positions)
    if len(steps) == 0:
        return Geometry(normal_angle(normal), None, None)
    return Geometry(normal_angle(normal), float(np.median(steps)), float(steps.max() - steps.min()))


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _most_common(values: list[str]) -> str:
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], v)) if counts else ""


def describe(series_id: str, slices: list[SliceHeader], files: int, geo: Geometry) -> SeriesInfo:
    """The :class:`SeriesInfo` fields the headers give (predicted and reason are set by the caller)."""
    tilts = [s.tags.gantry_tilt for s in slices if s.tags.gantry_tilt is not None]
    tilt = _median(tilts) if tilts else geo.angle
    return SeriesInfo(
        series_id=series_id, study_id=_most_common([s.study_id for s in slices]),
        description=_most_common([s.tags.description for s in slices]), files=files, predicted=False,
        kernel=_most_common([s.tags.kernel for s in slices]) or None,
        thickness_mm=_median([s.slice_thickness for s in slices if s.slice_thickness]),
        tilt_deg=tilt, spacing_mm=geo.spacing, spacing_spread_mm=geo.spread,
    )


def series_notes(info: SeriesInfo, slices: int, geo: Geometry) -> list[str]:
    """What a reader of a predicted series should know (see the module docstring)."""
    notes = []
    if geo.angle is not None and geo.angle >= TILT_NOTE_DEG:
        given = f" (GantryDetectorTilt {info.tilt_deg:g}°)" if info.tilt_deg is not None and info.tilt_deg != geo.angle else ""
        notes.append(f"tilted: slice normal {geo.angle:.1f}° from the patient z axis{given}; slices ordered along the normal")
    if slices < SHORT_SERIES:
        notes.append(f"short series: {slices} slice(s); RSNA head series have 20-60, so the model sees less of the head "
                     f"around each slice than in training")
    thickness = info.thickness_mm if info.thickness_mm is not None else info.spacing_mm
    if thickness is not None and thickness < THIN_MM:
        notes.append(f"thin slices ({thickness:.2g} mm): the model was trained on ~5 mm slices; --slab_mm 5 averages "
                     f"them into 5 mm slabs")
    if info.spacing_mm is not None and info.spacing_spread_mm is not None and \
            info.spacing_spread_mm > max(UNEVEN_MM, UNEVEN_FRACTION * info.spacing_mm):
        notes.append(f"uneven slice spacing: steps along the normal differ by up to {info.spacing_spread_mm:.2f} mm "
                     f"(median step {info.spacing_mm:.2f} mm: mixed intervals or missing slices)")
    if sharp_kernel(info.kernel):
        notes.append(f"sharp kernel {info.kernel}: the model saw soft-tissue (brain) reconstructions")
    return notes


# --- predict --------------------------------------------------------------------------------------

def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root)


def with_placeholders(header: SliceHeader, root: str) -> SliceHeader:
    """``header`` with a placeholder for each identifier its file lacks: PatientID and
    StudyInstanceUID get :data:`PLACEHOLDER`, SeriesInstanceUID one per folder (an export's
    usual layout is a folder per series)."""
    if not header.missing:
        return header
    ids = {}
    for name, keyword in ID_KEYWORDS:
        if keyword in header.missing:
            value = PLACEHOLDER.format(keyword=keyword)
            if keyword == "SeriesInstanceUID":
                value += ":" + (os.path.dirname(_relative(header.path, root)).replace(os.sep, "/") or ".")
            ids[name] = value
    return replace(header, **ids)


def _keep_best(group: list[SliceHeader], why: str, root: str, skipped: list[Skipped]) -> SliceHeader:
    """The preferred file of a group of duplicates (:func:`preference`); the others go to ``skipped``."""
    best, *rest = sorted(group, key=lambda h: preference(h, root))
    for h in rest:
        skipped.append(Skipped(_relative(h.path, root), f"duplicate: {why} as {_relative(best.path, root)}, which is kept "
                               f"(lossless, then uncompressed, then higher InstanceNumber, then first file name)", h.series_id))
    return best


def drop_same_uid(headers: list[SliceHeader], root: str) -> tuple[list[SliceHeader], list[Skipped]]:
    """One file per SOPInstanceUID (the same image stored twice, e.g. lossless and lossy); the
    others as :class:`Skipped`. Files without the UID are all kept."""
    skipped: list[Skipped] = []
    by_uid: dict[str, list[SliceHeader]] = defaultdict(list)
    kept = []
    for h in headers:
        (by_uid[h.sop_instance_uid].append(h) if h.sop_instance_uid else kept.append(h))
    kept += [_keep_best(group, "same SOPInstanceUID", root, skipped) for group in by_uid.values()]
    return sorted(kept, key=lambda h: h.path), skipped


def drop_same_position(slices: list[SliceHeader], root: str) -> tuple[list[SliceHeader], list[Skipped]]:
    """One file per position along the normal of one series' ``slices`` (to
    :data:`POSITION_DECIMALS`); the others as :class:`Skipped`. Slices without geometry are kept."""
    located = [h for h in slices if h.position is not None and h.orientation is not None]
    normal = majority_normal(located) if located else None
    if normal is None:
        return slices, []
    skipped: list[Skipped] = []
    at: dict[float, list[SliceHeader]] = defaultdict(list)
    for h in located:
        at[round(float(np.dot(normal, h.position)), POSITION_DECIMALS)].append(h)
    kept = [h for h in slices if h.position is None or h.orientation is None]
    kept += [_keep_best(same, f"same position ({position:g} mm along the normal) in its series", root, skipped)
             for position, same in at.items()]
    return sorted(kept, key=lambda h: h.path), skipped


def _error_reason(error: DicomReadError) -> str:
    """A rejected file's reason: the triage rule when its header says what it is (a secondary
    capture in colour is a secondary capture first), except that another modality stays the
    reason of a non-CT image; else the reader's error."""
    rule = image_reason(error.tags)
    if rule and (not isinstance(error, NotCTError) or rule_of(rule) == "structured report"):
        return rule
    return f"{type(error).__name__}: {error.reason}"


def triage_folder(headers: list[SliceHeader], errors: list[DicomReadError], root: str, min_slices: int = 1) -> Triage:
    """Decide, for every series found under ``root``, whether it is predicted (see the module
    docstring). ``headers``: the readable CT slices (read leniently); ``errors``: the files the
    header scan rejected. Order: file rules, one file per SOPInstanceUID, series rules (before
    positions are compared: a coronal series has many slices at one axial position), one file
    per position, assembly, ``min_slices``."""
    if min_slices < 1:
        raise ValueError(f"min_slices must be at least 1, got {min_slices}")
    skipped = [Skipped(_relative(e.path, root), _error_reason(e), e.series_id) for e in errors]
    rejected = {e.series_id: e for e in errors if e.series_id}
    headers = [with_placeholders(h, root) for h in headers]
    files = Counter([e.series_id for e in errors if e.series_id] + [h.series_id for h in headers])
    every: dict[str, list[SliceHeader]] = defaultdict(list)  # all readable slices of each series
    missing: dict[str, Counter] = defaultdict(Counter)
    candidates = []
    for h in headers:
        every[h.series_id].append(h)
        missing[h.series_id].update(h.missing)
        reason = image_reason(h.tags)
        if reason:
            skipped.append(Skipped(_relative(h.path, root), reason, h.series_id))
        else:
            candidates.append(h)
    candidates, duplicates = drop_same_uid(candidates, root)
    skipped += duplicates
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in candidates:
        by_series[h.series_id].append(h)
    keep = []
    for series_id, group in sorted(by_series.items()):
        reason = series_reason(group, geometry(group).angle)
        if reason:
            skipped += [Skipped(_relative(h.path, root), reason, series_id) for h in group]
            continue
        group, duplicates = drop_same_position(group, root)
        skipped += duplicates
        keep += group
    built, assembly = group_series(keep)
    skipped += [Skipped(_relative(e.path, root), f"{type(e).__name__}: {e.reason}", e.series_id) for e in assembly]

    left_out = Counter(s.series_id for s in skipped)
    duplicates_of = Counter(s.series_id for s in skipped if s.reason.startswith("duplicate:"))
    info: dict[str, SeriesInfo] = {}
    predicted = []
    for series in built:
        if len(series.slices) < min_slices:
            reason = f"too few slices: {len(series.slices)}, fewer than --min_slices {min_slices}"
            skipped += [Skipped(_relative(s.path, root), reason, series.series_id) for s in series.slices]
            continue
        geo = geometry(series.slices)
        entry = describe(series.series_id, series.slices, files[series.series_id], geo)
        entry.predicted = True
        entry.notes = series_notes(entry, len(series.slices), geo) + list(series.notes)
        duplicates, others = duplicates_of[series.series_id], left_out[series.series_id] - duplicates_of[series.series_id]
        if duplicates:
            entry.notes.append(f"{duplicates} duplicate file(s) left out (skipped.csv)")
        if others:
            entry.notes.append(f"{others} file(s) of the series left out (reasons in skipped.csv)")
        for keyword, count in sorted(missing[series.series_id].items()):
            value = series.series_id if keyword == "SeriesInstanceUID" else PLACEHOLDER.format(keyword=keyword)
            entry.notes.append(f"{keyword} missing on {count} file(s): placeholder {value}")
        info[series.series_id] = entry
        predicted.append(series)

    # Series none of whose files reached the model's input: the reason most of their files have.
    reasons: dict[str, Counter] = defaultdict(Counter)
    for s in skipped:
        if s.series_id and s.series_id not in info:
            reasons[s.series_id][s.reason] += 1
    for series_id, counts in reasons.items():
        slices = every.get(series_id, [])
        if slices:
            entry = describe(series_id, slices, files[series_id], geometry(slices))
        else:
            error = rejected[series_id]
            entry = SeriesInfo(series_id, error.study_id, error.tags.description if error.tags else "", files[series_id], False)
        entry.reason = _most_common_reason(counts)
        info[series_id] = entry
    return Triage(predicted, dict(sorted(info.items())), skipped)


def _most_common_reason(counts: Counter) -> str:
    """A series' reason from its files': the most common one, and how many files had another rule."""
    reason = max(counts, key=lambda r: (counts[r], r))
    others = sum(n for r, n in counts.items() if rule_of(r) != rule_of(reason))
    return reason if not others else f"{reason} (and {others} file(s) for other reasons)"


# --- prepare --------------------------------------------------------------------------------------

def training_triage(headers: list[SliceHeader]) -> tuple[list[SliceHeader], list[tuple[SliceHeader, str]]]:
    """The slices prepare may train on, and every other one with its reason: the file rules of
    :func:`image_reason` and the single-slice scout rule. Orientation, length, spacing and kernel
    do not exclude a labelled series from training."""
    kept, excluded = [], []
    for h in headers:
        reason = image_reason(h.tags)
        (excluded.append((h, reason)) if reason else kept.append(h))
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in kept:
        by_series[h.series_id].append(h)
    scouts = set()
    for slices in by_series.values():
        reason = series_reason(slices, None)
        if reason:
            excluded.append((slices[0], reason))
            scouts.add(slices[0].path)
    return [h for h in kept if h.path not in scouts], excluded


def rule_of(reason: str) -> str:
    """The rule name a triage reason starts with (``"localizer"`` of ``"localizer: ImageType …"``)."""
    return reason.split(":", 1)[0]
