"""DICOM reading: real pydicom CT files, the RSNA pixel quirks, typed errors for bad files."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut
from pydicom.uid import MPEG2MPML

from dicom_fixtures import ct_dataset, phantom, read_hu, save
from medseg.data.series_volume import word_lut
from medseg.data.windows import DEFAULT_WINDOWS, apply_windows
from medseg.dicom import errors
from medseg.dicom.header import first_value, read_header
from medseg.dicom.modality import AIR_HU, modality_params, raw_to_hu, word_values
from medseg.dicom.pixels import decode_pixels, read_native_words, read_pixels, read_words

REAL_CT = ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")


@pytest.mark.parametrize("name", REAL_CT)
def test_real_ct_matches_pydicom_modality_lut(name):
    path = get_testdata_file(name)  # by name: a glob pattern would trigger downloads
    reference = apply_modality_lut(pydicom.dcmread(path).pixel_array, pydicom.dcmread(path))
    np.testing.assert_array_equal(read_hu(path, map_padding=False), reference)
    hu = read_hu(path)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, np.maximum(reference, AIR_HU))  # padding/sub-air → air only


@pytest.mark.parametrize("name", REAL_CT)
def test_real_ct_word_lut_equals_formula_on_hu(name):
    """The fast path (raw words + one table) gives exactly the window formula on the HU."""
    path = get_testdata_file(name)
    ds, words, layout = read_words(path)
    np.testing.assert_array_equal(word_values(words, layout), decode_pixels(ds, path))
    fast = word_lut(modality_params(ds), layout, DEFAULT_WINDOWS)[words]
    np.testing.assert_array_equal(fast, apply_windows(read_hu(path), DEFAULT_WINDOWS))


def test_real_ct_header():
    header = read_header(get_testdata_file("CT_small.dcm"))
    assert (header.rows, header.cols) == (128, 128)
    assert header.position == pytest.approx((-158.135803, -179.035797, -75.699997))
    assert header.slice_id == "CT_small"


@pytest.mark.parametrize("quirk", ["signed", "unsigned", "bug12"])
def test_quirks_recover_true_hu(tmp_path, quirk):
    hu = phantom(32, 3)
    hu[0, 0], hu[0, 1] = 3000, -1000  # extremes of the value range survive every encoding
    path = save(ct_dataset("ID_q", "ID_s", hu, 0.0, 1, quirk=quirk), str(tmp_path / "ID_q.dcm"))
    decoded = read_hu(path)
    ds, words, layout = read_words(path)
    assert modality_params(ds).fix_12bit == (quirk == "bug12")
    if quirk == "signed":  # outside the field of view: -2000 padding → air
        padded = word_values(words, layout) == -2000
        assert padded.any()
        assert np.all(decoded[padded] == AIR_HU)
        np.testing.assert_array_equal(decoded[~padded], hu[~padded])
    else:
        np.testing.assert_array_equal(decoded, hu)


def test_word_layout_masks_and_sign_extends_like_pydicom(tmp_path):
    ds = ct_dataset("ID_w", "ID_s", np.zeros((2, 4), int), 0.0, 1, quirk="signed")
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = np.array([0x0FFF, 0x0800, 0xF7FF, 5, 0x1001, 0, 7, 9], dtype="<u2").tobytes()
    path = save(ds, str(tmp_path / "ID_w.dcm"))
    ds, words, layout = read_words(path)
    np.testing.assert_array_equal(word_values(words, layout), pydicom.dcmread(path).pixel_array)


def test_raw_to_hu_12bit_rule():
    raw = np.array([0, 3095, 3096, 4095], dtype=np.uint16)  # raw + 1000 wraps at 4096
    params = modality_params(ct_dataset("ID_b", "ID_s", np.zeros((1, 4), int), 0, 1, quirk="bug12"))
    np.testing.assert_array_equal(raw_to_hu(raw, params), [0, 3095, -1000, -1])


def test_window_values_multi_and_absent():
    assert first_value(pydicom.multival.MultiValue(float, [40, 300])) == 40.0
    assert first_value(None) is None and first_value([]) is None and first_value("50") == 50.0


def _bad_corpus(folder) -> dict[str, type]:
    """File name → the error class its reading must raise."""
    def good():
        return ct_dataset("ID_good", "ID_s", phantom(16, 0), 0.0, 1)

    corpus = {}

    def add(name, ds, err):
        save(ds, str(folder / name))
        corpus[name] = err

    path = save(ct_dataset("ID_trunc", "ID_s", phantom(16, 0), 0.0, 1), str(folder / "ID_trunc.dcm"))
    with open(path, "r+b") as fh:  # cut inside PixelData, like ID_6431af929
        fh.truncate(os.path.getsize(path) - 100)
    corpus["ID_trunc.dcm"] = errors.TruncatedPixelDataError
    (folder / "ID_zero.dcm").write_bytes(b"")
    corpus["ID_zero.dcm"] = errors.NotDicomError
    (folder / "ID_text.dcm").write_text("this is a readme, not an image\n" * 20)
    corpus["ID_text.dcm"] = errors.NotDicomError
    ds = good()
    del ds.PixelData
    add("ID_nopix.dcm", ds, errors.MissingPixelDataError)
    ds = good()
    ds.Modality = "MR"
    add("ID_mr.dcm", ds, errors.NotCTError)
    ds = good()
    ds.NumberOfFrames = 2
    add("ID_multi.dcm", ds, errors.UnsupportedImageError)
    ds = good()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    add("ID_rgb.dcm", ds, errors.UnsupportedImageError)
    ds = good()
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    add("ID_mpeg.dcm", ds, errors.UnsupportedTransferSyntaxError)
    return corpus


def test_bad_files_raise_typed_errors_naming_the_file(tmp_path):
    for name, expected in _bad_corpus(tmp_path).items():
        path = str(tmp_path / name)
        with pytest.raises(expected) as info:
            read_pixels(path)
        assert info.value.path == path and path in str(info.value) and info.value.reason
        with pytest.raises(expected):
            read_words(path)


def test_header_scan_already_rejects_every_bad_file(tmp_path):
    """The scan sees PixelData's length and offset without reading it, so even missing or cut
    pixel data and unsupported transfer syntaxes are reported before any worker runs."""
    for name, expected in _bad_corpus(tmp_path).items():
        with pytest.raises(expected) as info:
            read_header(str(tmp_path / name))
        assert info.value.path == str(tmp_path / name)


@pytest.mark.parametrize("quirk", ["signed", "unsigned", "bug12"])
def test_native_words_at_scanned_offset_equal_pydicom(tmp_path, quirk):
    path = save(ct_dataset("ID_n", "ID_s", phantom(24, 1), 0.0, 1, quirk=quirk), str(tmp_path / "ID_n.dcm"))
    header = read_header(path)
    assert header.pixel_offset is not None
    words = read_native_words(path, header.pixel_offset, header.rows, header.cols, header.layout)
    np.testing.assert_array_equal(word_values(words, header.layout), pydicom.dcmread(path).pixel_array)
    assert header.modality == modality_params(pydicom.dcmread(path))
    assert read_header(get_testdata_file("693_J2KI.dcm")).pixel_offset is None  # compressed: pydicom decodes


def test_errors_survive_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(errors.NotCTError("/x/a.dcm", "Modality is 'MR'", series_id="ID_s")))
    assert isinstance(err, errors.NotCTError) and err.path == "/x/a.dcm" and err.reason == "Modality is 'MR'"
    assert err.series_id == "ID_s"
