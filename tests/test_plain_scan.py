"""The plain header scan gives exactly what the pydicom scan gives, or steps aside."""

from __future__ import annotations

import os

import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_fixtures import ct_dataset, phantom, save
from medseg.dicom import header as header_module
from medseg.dicom.plain_scan import HEAD_BYTES, PIXEL_DATA, PlainValues, scan_plain
from medseg.dicom.validation import disable_value_validation


def _set(**values):
    def edit(ds):
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    return edit


def _raw(tag, vr, value: bytes):
    """An element written as these bytes, whatever pydicom would make of them."""
    def edit(ds):
        ds[tag] = RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True)
    return edit


@disable_value_validation()
def _sequence(ds):
    item = Dataset()
    item.ReferencedSOPInstanceUID = "ID_ref"
    ds.ReferencedImageSequence = [item]


# name → (pixel quirk, edit of the dataset, taken by the plain scan in both syntaxes)
VARIANTS = {
    "signed_padded_multi_windows": ("signed", None, True),
    "unsigned": ("unsigned", None, True),
    "bug12": ("bug12", None, True),
    "no_windows_no_instance": ("unsigned", _set(InstanceNumber=None), True),
    "no_position": ("bug12", _set(ImagePositionPatient=None), True),
    "one_value_position": ("unsigned", _raw(0x00200032, "DS", b"12.5"), True),
    "slope_zero_empty_intercept": ("unsigned", _set(RescaleSlope="0", RescaleIntercept=""), True),
    "padding_range": ("signed", _set(PixelPaddingRangeLimit=-1500), True),
    "latin1_ascii_patient": ("signed", _set(SpecificCharacterSet="ISO_IR 100", PatientID="ID_p1"), True),
    "latin1_patient": ("signed", _set(SpecificCharacterSet="ISO_IR 100", PatientID="Müller"), False),
    "text_in_ds": ("unsigned", _raw(0x00180050, "DS", b"abc "), True),
    "multi_valued_slope": ("unsigned", _raw(0x00281053, "DS", b"1\\2 "), True),
    "multi_valued_instance": ("unsigned", _raw(0x00200013, "IS", b"1\\2 "), True),
    "control_byte_in_uid": ("unsigned", _raw(0x0020000E, "UI", b"ID_\x01s\x00"), True),
    "empty_uid": ("unsigned", _raw(0x0020000E, "UI", b""), True),
    "sequence": ("unsigned", _sequence, True),  # defined length: skipped
    "trailing_padding": ("unsigned", _raw(0xFFFCFFFC, "OB", b"\0" * 16), False),
    "long_header": ("unsigned", _set(ImageComments="x" * HEAD_BYTES), False),
    "mr": ("unsigned", _set(Modality="MR"), True),
    "no_series": ("unsigned", _set(SeriesInstanceUID=None), True),
    "no_pixels": ("unsigned", _set(PixelData=None), False),
    "rgb": ("unsigned", _set(SamplesPerPixel=3, PhotometricInterpretation="RGB"), True),
}


def _outcome(path: str):
    try:
        return header_module.read_header(path)
    except Exception as exc:
        return type(exc).__name__, str(exc), getattr(exc, "series_id", None)


def _via_pydicom(path: str, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(header_module, "scan_plain", lambda _: None)
        return _outcome(path)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_plain_scan_equals_pydicom_scan(tmp_path, monkeypatch, name, syntax):
    quirk, edit, plain = VARIANTS[name]
    ds = ct_dataset("ID_v", "ID_s", phantom(16, 0), 0.0, 1, quirk=quirk)
    if edit is not None:
        with disable_value_validation():
            edit(ds)
    ds.file_meta.TransferSyntaxUID = syntax
    path = save(ds, str(tmp_path / "ID_v.dcm"))
    assert (scan_plain(path) is not None) == plain
    assert repr(_outcome(path)) == repr(_via_pydicom(path, monkeypatch))


def test_truncated_and_foreign_files_go_to_pydicom(tmp_path, monkeypatch):
    path = save(ct_dataset("ID_t", "ID_s", phantom(16, 0), 0.0, 1), str(tmp_path / "ID_t.dcm"))
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 10)
    for candidate in (path, get_testdata_file("CT_small.dcm"), get_testdata_file("693_J2KI.dcm")):
        assert repr(_outcome(candidate)) == repr(_via_pydicom(candidate, monkeypatch))
    assert scan_plain(path) is None


def test_asking_for_an_unread_keyword_is_an_error():
    with pytest.raises(KeyError):
        PlainValues().get("PatientName")


# --- random and corrupted headers against pydicom itself ------------------------------------------

# Bytes a value of each VR may hold here, odd ones included (letters in numbers, separators, NUL,
# control and non-ASCII bytes): what real files and a fuzzer put there.
_ALPHABETS = {
    "DS": b"0123456789.-+eE \\", "IS": b"0123456789-+ \\", "UI": b"0123456789.ID_abcdef\x00",
    "CS": b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ \\", "LO": b"abcXYZ019 _-\\", "SH": b"abcXYZ019 _-\\",
}
_ODD = b"\x00\x01\x7f\xe9\xff"


def _random_value(rng, vr: str) -> bytes:
    alphabet = _ALPHABETS.get(vr, b"0123456789")
    if rng.random() < (0.5 if vr in ("LO", "SH") else 0.1):  # text: its decoding depends on the character set
        alphabet += _ODD
    n = int(rng.integers(0, 14))
    value = bytes(int(b) for b in rng.choice(list(alphabet), size=n))
    return value + (b" " if len(value) % 2 else b"")  # even length, as DICOM requires


def _random_header(rng) -> Dataset:
    """A CT slice whose header elements are randomly removed, garbled, multi-valued or binary."""
    import struct

    from medseg.dicom.plain_scan import KEYWORDS

    quirk = ["signed", "unsigned", "bug12"][int(rng.integers(3))]
    ds = ct_dataset("ID_r", "ID_s", phantom(16, 0), float(rng.normal()), int(rng.integers(1, 99)), quirk=quirk)
    with disable_value_validation():
        for keyword in KEYWORDS:
            tag = tag_for_keyword(keyword)
            vr = dictionary_VR(tag)
            roll = rng.random()
            if roll < 0.15 and keyword not in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation"):
                if keyword in ds:
                    del ds[keyword]
            elif roll < 0.45 and len(vr) == 2 and vr in _ALPHABETS:
                value = _random_value(rng, vr)
                ds[tag] = RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True)
            elif roll < 0.5 and vr in ("US", "SS", "US or SS"):
                ds[tag] = RawDataElement(BaseTag(tag), "SS" if vr == "SS" else "US", 2,
                                         struct.pack("<H", int(rng.integers(0, 65536))), 0, False, True)
        if rng.random() < 0.3:  # text of non-ASCII bytes decodes by the character set
            ds.SpecificCharacterSet = ["ISO_IR 100", "ISO_IR 192", "ISO_IR 144"][int(rng.integers(3))]
        if rng.random() < 0.3:  # a private element in the way
            ds.add_new(0x00091010 + 2 * int(rng.integers(8)), "LO", "x" * int(rng.integers(0, 20)))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if rng.random() < 0.5 else ImplicitVRLittleEndian
    return ds


def _corrupt(rng, data: bytes) -> bytes:
    """One random corruption: bytes flipped, a cut, or bytes inserted, anywhere after the preamble."""
    pos = int(rng.integers(128, len(data)))
    kind = rng.integers(3)
    if kind == 0:
        n = int(rng.integers(1, 4))
        return data[:pos] + bytes(rng.integers(0, 256, size=n, dtype="uint8")) + data[pos + n:]
    if kind == 1:
        return data[:pos]
    return data[:pos] + bytes(rng.integers(0, 256, size=int(rng.integers(1, 9)), dtype="uint8")) + data[pos:]


def _pydicom_view(path: str):
    """What pydicom reads: (transfer syntax, keyword values, PixelData length and offset), or the
    name of the error it raises."""
    import warnings

    import pydicom

    from medseg.dicom.plain_scan import KEYWORDS

    try:
        with disable_value_validation(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=256)
            values = {keyword: repr(ds.get(keyword)) for keyword in KEYWORDS}
            pixels = ds.get_item(PIXEL_DATA, keep_deferred=True)
            return str(ds.file_meta.get("TransferSyntaxUID", "")), values, (pixels.length, pixels.value_tell)
    except Exception as exc:  # noqa: BLE001  (any failure: the plain scan must then step aside)
        return type(exc).__name__


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the deliberately odd bytes
@pytest.mark.parametrize("corrupted", [False, True])
def test_plain_scan_agrees_with_pydicom_on_random_headers(tmp_path, corrupted):
    """Whenever the plain scan takes a file, every value it returns is the one pydicom reads;
    whatever pydicom rejects, the plain scan leaves to it."""
    import numpy as np

    from medseg.dicom.plain_scan import KEYWORDS

    rng = np.random.default_rng(1234 + corrupted)
    taken = 0
    for i in range(150):
        path = str(tmp_path / f"ID_{i}.dcm")
        try:
            save(_random_header(rng), path)
        except (UnicodeError, TypeError, ValueError):  # pydicom cannot write this one: nothing to compare
            continue
        if corrupted:
            with open(path, "rb") as fh:
                data = _corrupt(rng, fh.read())
            with open(path, "wb") as fh:
                fh.write(data)
        plain = scan_plain(path)
        if plain is None:
            continue
        taken += 1
        reference = _pydicom_view(path)
        assert not isinstance(reference, str), f"file {i}: plain scan read a file pydicom rejects ({reference})"
        tsyntax, values, pixels = reference
        assert plain.transfer_syntax == tsyntax, i
        assert {keyword: repr(plain.values.get(keyword)) for keyword in KEYWORDS} == values, i
        assert (plain.pixel_length, plain.pixel_offset) == pixels, i
    assert taken >= (10 if corrupted else 50), taken  # the comparison ran on many files, not on none
