"""Fast path of the header scan for plain files: uncompressed little-endian DICOM.

Why hand-written: ``pydicom.dcmread`` and its ``Dataset`` cost ~0.45 ms per file, a third of a
slice's whole prepare cost, to read ~20 short elements. Here the element headers (tag, VR,
length; DICOM PS3.5 section 7.1) of the first 16 KB are walked in one pass, and only the needed
elements are decoded, by ``pydicom.values.convert_value``, the converter a ``Dataset`` applies
to a raw element (VR from the file, or from the dictionary when implicit, as pydicom does), so
each value is exactly what ``Dataset.get`` returns.

Anything outside that plain case returns None and the caller reads the file with pydicom, which
then also names any error: no DICM prefix, compressed or big-endian syntax, a dataset encoded
unlike its syntax says, undefined lengths, an unknown VR, a needed element stored as "UN" or
"SQ", non-ASCII text (its decoding depends on the character set; in any text VR), a repeated or unconvertible value,
no PixelData, PixelData running past the end of the file or followed by more elements, a header
longer than 16 KB.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag
from pydicom.uid import ImplicitVRLittleEndian
from pydicom.valuerep import CUSTOMIZABLE_CHARSET_VR, EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_value

from medseg.dicom.validation import disable_value_validation

HEAD_BYTES = 16384
PIXEL_DATA = 0x7FE00010
TRANSFER_SYNTAX = 0x00020010
# Uncompressed little-endian transfer syntaxes: pixel bytes on disk are the pixel words.
NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
# Every keyword the header scan reads (medseg.dicom.header and the modality/layout helpers).
KEYWORDS = (
    "Modality", "PatientID", "SliceThickness", "StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber",
    "ImagePositionPatient", "ImageOrientationPatient", "SamplesPerPixel", "PhotometricInterpretation",
    "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "PixelPaddingValue", "PixelPaddingRangeLimit", "WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope",
    # series triage (medseg.dicom.header.ImageTags) and duplicate detection
    "SOPClassUID", "SOPInstanceUID", "ImageType", "SeriesDescription", "ConvolutionKernel", "GantryDetectorTilt",
    "LossyImageCompression",
)
_WANTED = {tag: (keyword, dictionary_VR(tag)) for keyword in KEYWORDS for tag in [tag_for_keyword(keyword)]}
_VALID_VRS = frozenset(vr.value.encode() for vr in VR if len(vr.value) == 2)
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHL")
_UINT32 = struct.Struct("<L")
_UNDEFINED = 0xFFFFFFFF
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_ASCII = re.compile(rb"[\x00-\x7f]*")
# Text VRs outside the character-set ones: pydicom reads a non-ASCII byte in them (invalid, but
# seen in damaged files) by the dataset's character set when plain conversion fails.
_ASCII_TEXT_VRS = frozenset({VR.AE, VR.AS, VR.CS, VR.DA, VR.DS, VR.DT, VR.IS, VR.TM, VR.UI, VR.UR})


class _NotPlain(Exception):
    """The file is outside the fast path."""


class PlainValues(dict):
    """keyword → value as ``Dataset.get`` gives it (read-only: values are shared between files);
    asking for a keyword the scan does not read is a bug (it would silently look absent), so it
    raises."""

    def get(self, keyword: str, default: Any = None) -> Any:
        if keyword not in KEYWORDS:
            raise KeyError(f"{keyword} is not read by the plain header scan")
        return super().get(keyword, default)


@dataclass(frozen=True, slots=True)
class PlainHeader:
    """What the header scan needs from a plain file."""

    values: PlainValues
    transfer_syntax: str
    pixel_length: int  # PixelData's length field
    pixel_offset: int  # file offset of its value
    file_size: int


def _element(buf: bytes, pos: int, implicit: bool) -> tuple[int, str | None, int, int]:
    """``(tag, VR or None if implicit, length, value offset)`` of the element at ``pos``."""
    if implicit:
        group, elem, length = _IMPLICIT.unpack_from(buf, pos)
        return group << 16 | elem, None, length, pos + 8
    group, elem, vr, length = _EXPLICIT.unpack_from(buf, pos)
    if vr not in _VALID_VRS:
        raise _NotPlain
    if vr in _LONG_VRS:
        return group << 16 | elem, vr.decode(), _UINT32.unpack_from(buf, pos + 8)[0], pos + 12
    return group << 16 | elem, vr.decode(), length, pos + 8


def _value(buf: bytes, vr: str, length: int, offset: int) -> Any:
    if vr in (VR.UN, VR.SQ) or (vr in CUSTOMIZABLE_CHARSET_VR and not _PRINTABLE.fullmatch(buf, offset, offset + length)):
        # pydicom replaces UN by the dictionary VR; a sequence is a nested dataset; text decoding
        # depends on the character set
        raise _NotPlain
    if vr in _ASCII_TEXT_VRS and not _ASCII.fullmatch(buf, offset, offset + length):
        raise _NotPlain
    return _convert(vr, buf[offset : offset + length])


@lru_cache(maxsize=4096)
def _convert(vr: str, value: bytes) -> Any:
    """pydicom's conversion of one value, memoized: most elements (ids, sizes, rescale, window)
    repeat across a series' slices, and converting costs more than the rest of the scan. The
    results are shared between files, so they are only read, never changed. (A raw element's
    tag, offset and VR encoding only matter to sequences, excluded, and to log messages.)"""
    return convert_value(vr, RawDataElement(BaseTag(0), vr, len(value), value, 0, False, True))


def _parse(buf: bytes, size: int) -> PlainHeader:
    if buf[128:132] != b"DICM":
        raise _NotPlain
    pos, tsyntax = 132, None
    while buf[pos : pos + 2] == b"\x02\x00":  # file meta group 0002: always explicit VR little endian
        tag, vr, length, offset = _element(buf, pos, implicit=False)
        if length == _UNDEFINED or offset + length > len(buf):
            raise _NotPlain
        if tag == TRANSFER_SYNTAX:
            tsyntax = str(_value(buf, vr, length, offset))
        pos = offset + length
    if tsyntax not in NATIVE_LITTLE_ENDIAN:
        raise _NotPlain
    implicit = tsyntax == ImplicitVRLittleEndian
    looks_explicit = 0x40 < buf[pos + 4] < 0x5B and 0x40 < buf[pos + 5] < 0x5B  # pydicom's own test
    if looks_explicit == implicit:
        raise _NotPlain  # pydicom would switch encodings with a warning
    found: dict[int, tuple[str | None, int, int]] = {}
    while True:
        tag, vr, length, offset = _element(buf, pos, implicit)
        if length == _UNDEFINED or tag >> 16 in (0x0002, 0xFFFE):
            raise _NotPlain
        if tag == PIXEL_DATA:
            break
        if offset + length > len(buf) or tag in found:
            raise _NotPlain
        if tag in _WANTED:
            found[tag] = (vr, length, offset)
        pos = offset + length
    if not 0 <= size - (offset + length) < 8:  # pydicom stops reading at fewer than 8 bytes
        raise _NotPlain
    values = PlainValues()
    for tag in sorted(found):  # PixelRepresentation (0028,0103) before the padding values (0028,012x)
        vr, value_length, value_offset = found[tag]
        keyword, dictionary_vr = _WANTED[tag]
        vr = vr or dictionary_vr
        if vr == VR.US_SS:
            # Implicit VR: pydicom settles "US or SS" by PixelRepresentation after reading
            # (pydicom.filewriter.correct_ambiguous_vr_element); the same rule here.
            representation = values.get("PixelRepresentation")
            if not isinstance(representation, int):
                raise _NotPlain
            vr = VR.US if representation == 0 else VR.SS
        values[keyword] = _value(buf, vr, value_length, value_offset)
    return PlainHeader(values, tsyntax, length, offset, size)


def scan_plain(path: str) -> PlainHeader | None:
    """The needed header values of a plain file, or None when pydicom must read it."""
    try:
        with open(path, "rb") as fh:
            buf = fh.read(HEAD_BYTES)
            size = os.fstat(fh.fileno()).st_size
        with disable_value_validation():  # pydicom's converters validate; RSNA ids are not valid UIDs
            return _parse(buf, size)
    except Exception:  # _NotPlain, a short buffer (struct.error, IndexError), a failed conversion...
        return None
