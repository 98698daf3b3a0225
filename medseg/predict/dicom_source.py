"""What the DICOM outputs take from their sources: the slices' headers, checked UIDs, and the
identity of the model that produced the probabilities.

Source headers are read as predict reads them (pydicom's relaxed reading validation), so a
RSNA-style id such as ``ID_5a4f185c85`` arrives where a UID belongs. The outputs must still be
valid DICOM, so an id that is not a valid UID is never written: a series whose
StudyInstanceUID is invalid gets no DICOM outputs (they would have to join its study), and a
slice whose SOP Instance, SOP Class or Series UID is invalid is not referenced (the record in
predictions.json says so).
"""

from __future__ import annotations

import copy
import functools
import glob
import hashlib
import os
from dataclasses import dataclass

from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

import medseg
from medseg.constants import LABELS
from medseg.dicom.validation import valid_uid
from medseg.engine import checkpoint as ckpt
from medseg.outputs.calibrate import calibration_path
from medseg.utils.atomic import file_sha256

# Type 2 attributes of the Patient and General Study modules: present (empty when unknown) in
# every output, so a source header that lacks one still yields a complete module.
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")
_AXES = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, -x / +y, -y / +z, -z of the patient system


def read_header(path: str) -> Dataset:
    """The header of one source file (no pixel data)."""
    return dcmread(path, stop_before_pixels=True)


def referencable(header: Dataset) -> bool:
    """Whether an output may reference this instance: every UID of the reference is valid."""
    return all(valid_uid(header.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"))


def reference_dataset(header: Dataset) -> Dataset:
    """The patient and study modules of ``header`` (highdicom copies them from this dataset into
    each output), with the type 2 attributes a source lacks added empty, and a de-identification
    method when the source says its patient identity was removed without saying how."""
    ref = copy.deepcopy(header)
    for keyword in TYPE2:
        if keyword not in ref:
            setattr(ref, keyword, "")
    if str(ref.get("PatientIdentityRemoved", "")).upper() == "YES" and not (
            ref.get("DeidentificationMethod") or ref.get("DeidentificationMethodCodeSequence")):
        ref.DeidentificationMethod = "not stated by the source"  # type 1C once identity is removed
    return ref


def patient_orientation(header: Dataset) -> tuple[str, str]:
    """PatientOrientation of a capture of this slice (its rows and columns keep the slice's
    directions): the dominant patient axis of each ImageOrientationPatient cosine; ``L``/``P``,
    the axial convention, when the header has none."""
    iop = header.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return "L", "P"
    letters = []
    for cosines in (iop[:3], iop[3:]):
        axis = max(range(3), key=lambda a: abs(float(cosines[a])))
        letters.append(_AXES[axis][0 if float(cosines[axis]) >= 0 else 1])
    return letters[0], letters[1]


def weight_files(model_path: str) -> list[str]:
    """The files holding a model's weights: a checkpoint's ``model.pdparams`` (or the file given),
    an exported model's ``*.pdiparams``."""
    if os.path.isfile(model_path):
        return [model_path]
    exported = sorted(glob.glob(os.path.join(model_path, "*.pdiparams")))
    return exported or [os.path.join(model_path, ckpt.MODEL_FILE)]


@functools.lru_cache(maxsize=16)
def _digest(paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...]) -> str:
    """sha256 of one file, or of the member digests of several (cached: a node hashes once)."""
    digests = [file_sha256(p) for p in paths]
    return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()


def weights_sha256(model_paths: list[str]) -> str:
    files = tuple(f for m in model_paths for f in weight_files(m))
    return _digest(files, tuple((os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files))


@dataclass(frozen=True)
class ModelIdentity:
    """The algorithm identification of the outputs (TID 4019 in the SR, burned into captures)."""

    name: str
    version: str
    parameters: tuple[str, ...]
    device_uid: str  # the same for the same weights: the SR's device observer
    sha256: str


def calibration_text(model, paths: list[str]) -> str:
    """Each member model's calibration: its temperatures and calibration.json's sha256, or none."""
    members = getattr(model, "members", [model])
    parts = []
    for member, path in zip(members, paths):
        cal = getattr(member, "calibration", None)
        if cal is None:
            parts.append("none")
        else:
            temps = " ".join(f"{label}={t:.4g}" for label, t in zip(LABELS, cal.temperature))
            parts.append(f"temperature scaling ({temps}; calibration.json sha256 {file_sha256(calibration_path(path))[:16]})")
    return "calibration: " + "; ".join(parts)


def model_identity(predictor, threshold: float) -> ModelIdentity:
    """Name (config), version (package and weights' sha256), parameters (kind, calibration,
    test-time views, windows, crop, threshold) of a :class:`medseg.predict.run.Predictor`."""
    config = predictor.cfg.path
    name = f"medseg {os.path.splitext(os.path.basename(config))[0]}" if config else "medseg"
    sha = weights_sha256(predictor.models)
    info = predictor.info()
    views = predictor.test_time.describe() if predictor.test_time is not None else "none"
    parameters = (f"model kind: {predictor.model.kind} ({len(predictor.models)} model(s))",
                  calibration_text(predictor.model, predictor.models),
                  f"test-time views: {views}", f"windows: {info['windows']}", f"crop: {info['crop']}",
                  f"decision threshold: {threshold:g}")
    return ModelIdentity(name, f"medseg {medseg.__version__} weights sha256:{sha}", parameters,
                         generate_uid(entropy_srcs=[sha]), sha)
