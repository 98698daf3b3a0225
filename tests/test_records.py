"""The values prepare's stages pass: one error-row type, the frozen series record."""

from __future__ import annotations

import dataclasses
import os
import pickle

import pandas as pd
import pytest

from medseg.data.prepare_tables import ERRORS_CSV, write_tables
from medseg.data.records import ERROR_COLUMNS, ErrorRow, SeriesRecord
from medseg.dicom.errors import TruncatedPixelDataError

STORED = {  # a .json record as medseg.data.series_volume writes it
    "series_id": "ID_s", "study_id": "ID_st", "patient_id": "ID_p", "cache": "cache/ID_s.hcc", "format": "hcc1",
    "windows": "40/80", "inputs": [["a.dcm", 10]], "shape": [2, 32, 32, 3], "slice_ids": ["ID_a", "ID_b"],
    "positions": [5.0, 0.0], "spacing": 5.0, "crops": [[0, 32, 1, 31], [2, 30, 0, 32]],
    "errors": [["stage_2_train/ID_c.dcm", "file ends early", "TruncatedPixelDataError"]], "cache_bytes": 99,
}


def test_error_row_from_a_dicom_error_and_its_order():
    exc = TruncatedPixelDataError("/raw/stage_2_train/ID_c.dcm", "file ends early", series_id="ID_s")
    row = ErrorRow.from_error(exc, "/raw")
    assert row == ErrorRow("stage_2_train/ID_c.dcm", "ID_s", "file ends early", "TruncatedPixelDataError")
    assert ErrorRow.from_error(exc, "/raw", series_id="").series_id == ""
    assert sorted([row, ErrorRow("stage_2_train/ID_a.dcm", "ID_z", "x", "K")])[0].file == "stage_2_train/ID_a.dcm"
    assert row._fields[: len(ERROR_COLUMNS)] == ERROR_COLUMNS


def test_series_record_from_json_is_frozen_slotted_and_picklable():
    record = SeriesRecord.from_json(STORED, reused=True)
    assert record.crops == ((0, 32, 1, 31), (2, 30, 0, 32)) and record.shape == (2, 32, 32, 3) and record.reused
    assert record.errors == (ErrorRow("stage_2_train/ID_c.dcm", "ID_s", "file ends early", "TruncatedPixelDataError"),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.cache = ""
    assert not hasattr(record, "__dict__")
    assert pickle.loads(pickle.dumps(record)) == record  # it comes back from a worker


def test_errors_csv_keeps_three_columns(tmp_path):
    rows = [ErrorRow("stage_2_train/ID_c.dcm", "ID_s", "reason, with a comma", "Kind"), ErrorRow("b.dcm", "", "r", "K")]
    write_tables(str(tmp_path), {}, rows)
    assert (tmp_path / ERRORS_CSV).read_text() == 'file,series_id,reason\nstage_2_train/ID_c.dcm,ID_s,"reason, with a comma"\nb.dcm,,r\n'
    write_tables(str(tmp_path), {}, [])
    assert pd.read_csv(os.path.join(tmp_path, ERRORS_CSV)).columns.tolist() == list(ERROR_COLUMNS)
