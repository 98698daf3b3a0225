"""Header scan: everything needed to group and order slices, without reading the pixels.

The scan parses each file's header once, skipping (not reading) the pixel bytes, which keeps a
460 GB scan I/O-light, and records where native pixel data start. For native little-endian data
a worker then reads the pixel bytes at that offset without a second parse, which halves the
per-slice parsing cost of prepare. Missing, short or undecodable PixelData is already reported
here. Plain files (uncompressed little-endian, the RSNA case) are parsed by
:mod:`medseg.dicom.plain_scan`, ~5x faster than ``dcmread`` and its ``Dataset``; the rest by
pydicom with large values deferred. Both feed the same checks with the same values.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder

from medseg.dicom.errors import (
    DicomReadError,
    MissingPixelDataError,
    MissingTagError,
    NotCTError,
    NotDicomError,
    TruncatedFileError,
    TruncatedPixelDataError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)
from medseg.dicom.modality import HeaderValues, ModalityParams, WordLayout, modality_params, word_layout
from medseg.dicom.plain_scan import NATIVE_LITTLE_ENDIAN, PIXEL_DATA, scan_plain
from medseg.dicom.validation import convert_elements, disable_value_validation

# Values longer than this are skipped by the pydicom scan, their offset kept (PixelData, in practice).
DEFER_BYTES = 256
# Transfer syntaxes whose pixel data may have lost information: JPEG baseline/extended,
# JPEG-LS near-lossless, JPEG 2000 and HTJ2K "may be lossy", the MPEG/HEVC video syntaxes.
LOSSY_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.203", *(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)),
})
# The identifiers a slice is grouped by: required by prepare (the patient split needs them),
# replaced by placeholders in predict (``read_header(..., lenient=True)``).
ID_KEYWORDS = (("series_id", "SeriesInstanceUID"), ("study_id", "StudyInstanceUID"), ("patient_id", "PatientID"))


@dataclass(frozen=True, slots=True)
class ImageTags:
    """What series triage (:mod:`medseg.predict.triage`) reads besides geometry: what kind of
    image this is and how it was reconstructed. Mostly constant within a series, so instances
    are shared between slices (:func:`image_tags`)."""

    sop_class: str = ""
    image_type: tuple[str, ...] = ()  # upper case, stripped: ("ORIGINAL", "PRIMARY", "AXIAL")
    description: str = ""  # SeriesDescription
    kernel: str = ""  # ConvolutionKernel, values joined by "\\"
    gantry_tilt: float | None = None  # GantryDetectorTilt, degrees
    lossy: bool = False  # lossy transfer syntax or LossyImageCompression "01"


def _text(value: Any) -> tuple[str, ...]:
    """A (possibly multi-valued) text element as stripped strings; () when absent."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return tuple(str(v).strip() for v in value)
    return tuple(part.strip() for part in str(value).split("\\"))


@lru_cache(maxsize=4096)
def _shared_tags(*values: Any) -> ImageTags:
    return ImageTags(*values)


def image_tags(values: HeaderValues, tsyntax: str) -> ImageTags:
    """The :class:`ImageTags` of one parsed header (one shared instance per distinct value set)."""
    lossy = tsyntax in LOSSY_SYNTAXES or str(values.get("LossyImageCompression", "") or "").strip() == "01"
    kernel = "\\".join(v for v in _text(values.get("ConvolutionKernel")) if v)
    return _shared_tags(str(values.get("SOPClassUID", "") or "").strip(),
                        tuple(v.upper() for v in _text(values.get("ImageType"))),
                        str(values.get("SeriesDescription", "") or "").strip(), kernel,
                        first_value(values.get("GantryDetectorTilt")), lossy)


@dataclass(frozen=True, slots=True)  # slots: ~750k of these live in the parent during a real run
class SliceHeader:
    """One CT slice as seen by the header scan. Geometry fields are None when absent."""

    path: str
    slice_id: str  # file stem: the Kaggle ID (= SOPInstanceUID in RSNA data)
    series_id: str
    study_id: str
    patient_id: str
    rows: int
    cols: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    instance_number: int | None
    slice_thickness: float | None
    window_center: float | None
    window_width: float | None
    transfer_syntax: str
    modality: ModalityParams = ModalityParams()  # stored value → HU
    layout: WordLayout | None = None  # set with pixel_offset: how to read the native pixel words
    pixel_offset: int | None = None  # file offset of native PixelData; None → decode with pydicom
    sop_instance_uid: str = ""  # "" when absent
    tags: ImageTags = ImageTags()
    missing: tuple[str, ...] = ()  # identifiers absent from a leniently read header (ids left "")


def first_value(value: Any) -> float | None:
    """WindowCenter/Width may be multi-valued (take the first), empty or absent (None)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    """A multi-valued DS as floats, or None when absent or of the wrong length."""
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def read_dataset(path: str, stop_before_pixels: bool = False, defer_size: int | None = None) -> pydicom.Dataset:
    """``dcmread`` with its failures turned into typed errors naming the file."""
    try:
        if os.path.getsize(path) == 0:
            raise NotDicomError(path, "empty file (0 bytes)")
        with disable_value_validation():  # RSNA ids ID_<hex> are not valid UIDs (medseg.dicom.validation)
            return convert_elements(pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, defer_size=defer_size))
    except DicomReadError:
        raise
    except InvalidDicomError as exc:
        raise NotDicomError(path, f"not a DICOM file ({exc})") from None
    except EOFError as exc:
        raise TruncatedFileError(path, f"file ends inside a DICOM element ({exc})") from None
    except OSError as exc:
        raise DicomReadError(path, f"cannot read file ({type(exc).__name__}: {exc})") from None
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        # Garbage that passes the preamble check surfaces as one of these while parsing elements.
        raise NotDicomError(path, f"cannot parse as DICOM ({type(exc).__name__}: {exc})") from None


def check_ct_slice(ds: HeaderValues, path: str) -> None:
    """Reject what is not a single greyscale CT slice, with the reason."""
    modality = str(ds.get("Modality", "") or "")
    if modality != "CT":
        raise NotCTError(path, f"Modality is {modality!r}, expected 'CT'" if modality else "Modality missing")
    frames = ds.get("NumberOfFrames", 1)
    try:
        frames = int(frames or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames != 1:
        raise UnsupportedImageError(path, f"multi-frame image ({frames} frames), expected one CT slice")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        raise UnsupportedImageError(path, f"colour image (SamplesPerPixel={samples}, {photometric}), expected greyscale")
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(keyword) is None:
            raise MissingTagError(path, f"{keyword} missing")


def check_transfer_syntax(ds: pydicom.Dataset, path: str) -> None:
    """Raise if no installed pydicom handler can decode this file's pixel data."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not tsyntax:
        return
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise UnsupportedTransferSyntaxError(path, f"no pixel data decoder for transfer syntax {tsyntax.name} ({tsyntax})") from None
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(path, f"transfer syntax {tsyntax.name} needs a decoder plugin that is not installed")


def _pydicom_pixels(ds: pydicom.Dataset, path: str) -> tuple[int, int | None, int]:
    """``(length, offset, file size)`` of PixelData, checked without reading it; offset None when
    pydicom holds the value (it is not a deferred raw element)."""
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if element is None:
        raise MissingPixelDataError(path, "no PixelData element")
    check_transfer_syntax(ds, path)
    if not isinstance(element, pydicom.dataelem.RawDataElement):
        return element.length, None, 0
    return element.length, element.value_tell, os.path.getsize(path)


def locate_pixels(values: HeaderValues, path: str, tsyntax: str, length: int, offset: int | None,
                  file_size: int) -> tuple[int | None, WordLayout | None]:
    """``(offset, layout)`` of native pixel words, or ``(None, None)`` when pydicom must decode
    them (compressed, big-endian, unusual layouts); raises if PixelData is short."""
    allocated = int(values.get("BitsAllocated"))
    if tsyntax not in NATIVE_LITTLE_ENDIAN or allocated not in (8, 16) or offset is None:
        return None, None
    rows, cols = int(values.get("Rows")), int(values.get("Columns"))
    expected = rows * cols * allocated // 8
    if length < expected:
        raise TruncatedPixelDataError(path, f"PixelData has {length} bytes, {rows}x{cols}x{allocated} bits needs {expected}")
    on_disk = file_size - offset
    if on_disk < expected:
        raise TruncatedPixelDataError(path, f"file ends {max(on_disk, 0)} bytes into PixelData, {expected} needed")
    return offset, word_layout(values)


def read_header(path: str, lenient: bool = False) -> SliceHeader:
    """Scan one file's header; raise a :class:`DicomReadError` subclass if it is unusable.

    ``lenient``: a missing SeriesInstanceUID, StudyInstanceUID or PatientID is no error (the id
    is left "" and named in ``missing``): prediction needs pixels, geometry and rescale only,
    training needs the ids for its patient split."""
    path = str(path)
    plain = scan_plain(path)
    if plain is not None:
        return _slice_header(path, plain.values, plain.transfer_syntax, lambda: (plain.pixel_length, plain.pixel_offset, plain.file_size),
                             lenient)
    ds = read_dataset(path, stop_before_pixels=False, defer_size=DEFER_BYTES)
    tsyntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    return _slice_header(path, ds, tsyntax, lambda: _pydicom_pixels(ds, path), lenient)


def _slice_header(path: str, values: HeaderValues, tsyntax: str, pixel_data: Callable[[], tuple[int, int | None, int]],
                  lenient: bool = False) -> SliceHeader:
    """Check one parsed header and build its SliceHeader; ``pixel_data`` gives PixelData's
    ``(length, offset, file size)`` (or raises) once the slice is known to be CT. The plain scan
    already knows the size: no second stat per file."""
    series_id = str(values.get("SeriesInstanceUID", "") or "").strip()
    ids, missing = {}, []
    try:
        check_ct_slice(values, path)
        offset, layout = locate_pixels(values, path, tsyntax, *pixel_data())
        for field, keyword in ID_KEYWORDS:
            value = str(values.get(keyword, "") or "").strip()
            if not value:
                if not lenient:
                    raise MissingTagError(path, f"{keyword} missing")
                missing.append(keyword)
            ids[field] = value
    except DicomReadError as exc:
        exc.series_id = series_id
        exc.study_id = str(values.get("StudyInstanceUID", "") or "").strip()
        exc.tags = image_tags(values, tsyntax)
        raise
    slice_id = os.path.splitext(os.path.basename(path))[0]
    sop = str(values.get("SOPInstanceUID", "") or "").strip()
    if sop == slice_id:  # the RSNA naming: share the string, ~750k of them live in prepare's parent
        sop = slice_id
    instance = values.get("InstanceNumber")
    try:
        instance = int(instance) if instance not in (None, "") else None
    except (TypeError, ValueError):
        instance = None
    return SliceHeader(
        path=path,
        slice_id=slice_id,
        rows=int(values.get("Rows")),
        cols=int(values.get("Columns")),
        position=_floats(values.get("ImagePositionPatient"), 3),
        orientation=_floats(values.get("ImageOrientationPatient"), 6),
        instance_number=instance,
        slice_thickness=first_value(values.get("SliceThickness")),
        window_center=first_value(values.get("WindowCenter")),
        window_width=first_value(values.get("WindowWidth")),
        transfer_syntax=tsyntax,
        modality=modality_params(values),
        layout=layout,
        pixel_offset=offset,
        sop_instance_uid=sop,
        tags=image_tags(values, tsyntax),
        missing=tuple(missing),
        **ids,
    )
