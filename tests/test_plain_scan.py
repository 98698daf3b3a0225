"""The plain header scan gives exactly what the pydicom scan gives, or steps aside."""

from __future__ import annotations

import os

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_fixtures import ct_dataset, phantom, save
from medseg.dicom import header as header_module
from medseg.dicom.plain_scan import HEAD_BYTES, PlainValues, scan_plain
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
