"""The pieces of prepare: label table, patient split, window formula, crop box, cache writing."""

from __future__ import annotations

import dataclasses
import json
import os

import cv2
import numpy as np
import pandas as pd
import pytest

from dicom_fixtures import ct_dataset, phantom, save
from medseg.constants import DEFAULT_WINDOWS, LABELS
from medseg.data.crop import crop_box
from medseg.data.kaggle_tables import label_file_mismatch, read_label_table
from medseg.data.split import assign_folds, series_strata
from medseg.data.cache import cache_paths, read_crops
from medseg.data.scan import task_for
from medseg.data.series_volume import build_volume, process_series
from medseg.data.windows import apply_windows, parse_windows, window_uint8
from medseg.dicom.header import read_header
from medseg.dicom.series import group_series


def test_label_table_pivot_duplicates_and_errors(tmp_path):
    rows = [(f"ID_aa_{n}", float(n == "subdural" or n == "any")) for n in reversed(LABELS)]
    rows += [(f"ID_bb_{n}", 0.0) for n in LABELS] + [("ID_bb_epidural", 1.0)]  # repeated row: first kept
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(path, index=False)
    table = read_label_table(str(path))
    assert list(table.columns) == list(LABELS) and list(table.index) == ["ID_aa", "ID_bb"]
    np.testing.assert_array_equal(table.loc["ID_aa"], [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(table.loc["ID_bb"], [0] * 6)
    (tmp_path / "bad.csv").write_text("ID,Label\nID_aa_headache,1\n")
    with pytest.raises(ValueError, match="unknown subtypes"):
        read_label_table(str(tmp_path / "bad.csv"))
    (tmp_path / "bad2.csv").write_text("ID,Label\nID_aa_any,__import__('os')\n")
    with pytest.raises(ValueError, match="non-numeric"):
        read_label_table(str(tmp_path / "bad2.csv"))


def test_mismatch_report_counts_and_examples():
    report = label_file_mismatch(["ID_a", "ID_b", "ID_c"], ["ID_b", "ID_c", "ID_d"])
    assert report.labels_without_file == ["ID_a"] and report.files_without_label == ["ID_d"]
    assert "1 labelled images without a file, e.g. ID_a" in report.summary()
    assert label_file_mismatch(["ID_a"], ["ID_a"]).ok


def _series_table(n_patients=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for s in range(rng.integers(1, 4)):  # 1-3 series per patient
            flags = (rng.random(5) < [0.05, 0.2, 0.15, 0.2, 0.25]).astype(float)
            rows.append({"series_id": f"ID_s{p}_{s}", "patient_id": f"ID_p{p}", **dict(zip(LABELS, list(flags) + [flags.max()]))})
    return pd.DataFrame(rows).set_index("series_id")


def test_folds_group_patients_deterministically_and_spread_rare_cases():
    table = _series_table()
    folds = assign_folds(table, val_fraction=0.2, seed=5)
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4]
    assert table.assign(fold=folds).groupby("patient_id")["fold"].nunique().max() == 1
    assert folds.equals(assign_folds(table.sample(frac=1, random_state=1), val_fraction=0.2, seed=5))
    assert not folds.equals(assign_folds(table, val_fraction=0.2, seed=6))
    positives = table.assign(fold=folds).groupby("fold")["any"].sum()
    assert positives.min() > 0  # every fold gets bleeds


def test_strata_pick_rarest_subtype_and_merge_tiny_classes():
    table = pd.DataFrame({n: [0.0] * 6 for n in LABELS})
    table.loc[0, ["epidural", "subdural", "any"]] = 1  # rarest positive wins
    table.loc[1:3, ["subdural", "any"]] = 1
    assert list(series_strata(table, n_folds=1)) == ["epidural", "subdural", "subdural", "subdural", "none", "none"]
    # 1 epidural series < 3 folds → "any"; "any" then has 1 < 3 members → "none".
    assert list(series_strata(table, n_folds=3)) == ["none", "subdural", "subdural", "subdural", "none", "none"]


def test_window_formula_known_values():
    hu = np.array([-1024, -5, 0, 16, 40, 79, 80, 81, 3000])
    # 40/80: lo = 0, hi = 80; (hu - 0) / 80 * 255, clipped, truncated.
    np.testing.assert_array_equal(window_uint8(hu, 40, 80), [0, 0, 0, 51, 127, 251, 255, 255, 255])
    # 40/380: lo = -150, hi = 230 (w // 2 = 190).
    assert window_uint8(np.array([-150, 40, 229]), 40, 380).tolist() == [0, 127, 254]
    assert apply_windows(hu.reshape(3, 3)).shape == (3, 3, 3)
    assert parse_windows("40/80, 80/200,40/380") == ((40, 80), (80, 200), (40, 380))
    for bad in ("40", "40/1", ""):
        with pytest.raises(ValueError):
            parse_windows(bad)


def test_crop_box_on_head_and_on_empty_frame():
    tissue = apply_windows(phantom(128, 0))[..., 2]
    y0, y1, x0, x1 = crop_box(tissue)
    rows, cols = np.nonzero(phantom(128, 0) > -150)
    assert y1 < int(128 * 0.9)  # the 1-pixel headrest line is opened away
    assert (y0, x0, x1) == (rows.min(), cols.min(), cols.max() + 1)
    assert crop_box(np.zeros((20, 30), np.uint8)) == (0, 20, 0, 30)


def test_crop_box_is_the_box_of_the_opening():
    """crop_box erodes only; its box must be the box of the full 5x5 elliptical opening."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    rng = np.random.default_rng(0)
    for _ in range(3000):
        rows, cols = rng.integers(1, 24, 2)
        tissue = ((rng.random((rows, cols)) < rng.uniform(0.05, 0.95)) * rng.integers(1, 256, (rows, cols))).astype(np.uint8)
        x, y, w, h = cv2.boundingRect(cv2.morphologyEx(tissue, cv2.MORPH_OPEN, kernel))
        assert crop_box(tissue) == ((y, y + h, x, x + w) if w else (0, rows, 0, cols))


def test_slice_failing_after_the_scan_is_dropped_from_the_streamed_cache(tmp_path):
    """A file that breaks between the scan and the cache step: the series is written without it."""
    raw = tmp_path / "raw"
    paths = [save(ct_dataset(f"ID_{k}", "ID_s", phantom(24, k), float(k), k + 1), str(raw / f"ID_{k}.dcm")) for k in range(4)]
    series = group_series([read_header(p) for p in paths])[0][0]
    with open(paths[1], "r+b") as fh:
        fh.truncate(os.path.getsize(paths[1]) - 100)
    task = task_for(series, str(raw))
    record = process_series(task, str(tmp_path / "out"), DEFAULT_WINDOWS)
    volume, kept, crops, errors = build_volume(task, DEFAULT_WINDOWS)
    assert record.shape == volume.shape and volume.shape[0] == 3 and record.errors == tuple(errors) and len(errors) == 1
    assert errors[0].file == "ID_1.dcm" and errors[0].series_id == "ID_s" and not record.reused
    assert record.crops == tuple(crops) and record.slice_ids == tuple(task.slice_ids[i] for i in kept)
    assert process_series(task, str(tmp_path / "out"), DEFAULT_WINDOWS) == dataclasses.replace(record, reused=True)  # from its .json
    for got, image, (y0, y1, x0, x1) in zip(read_crops(str(tmp_path / "out" / record.cache)), volume, crops, strict=True):
        np.testing.assert_array_equal(got, image[y0:y1, x0:x1])


def test_released_series_box_drops_the_last_nonzero_row_and_column():
    from medseg.data.crop import series_box

    volume = np.zeros((3, 40, 50, 3), np.uint8)
    volume[0, 5:9, 7, 2] = 1  # one channel of one slice is enough
    volume[2, 20, 30:44, 0] = 9
    assert series_box(volume) == (5, 20, 7, 43)  # the release's img[:, min:max]: last row and column left out
    assert series_box(np.zeros((2, 10, 12, 3), np.uint8)) == (0, 10, 0, 12)  # nothing nonzero: the whole frame
    line = np.zeros((2, 10, 12, 3), np.uint8)
    line[1, 4, 2:9] = 5  # a single row: empty for the release, the whole frame here
    assert series_box(line) == (0, 10, 0, 12)


def test_released_black_edge_box_three_openings_exclusive_max_and_blank():
    from medseg.data.crop import black_edge_box

    brain = np.zeros((60, 70), np.uint8)
    brain[10:40, 15:45] = 200  # a square survives the opening whole (its corners come back)
    brain[55, 0:70] = 255  # a headrest line: opened away
    brain[3, 3] = 255  # speckle: opened away
    assert black_edge_box(brain) == (10, 39, 15, 44)
    speckle = np.zeros((60, 70), np.uint8)
    speckle[::6, ::6] = 255
    assert black_edge_box(speckle) is None  # the opening leaves nothing: the release feeds zeros
    # Three openings, not one: three erosions take 6 rows off each side, so a bar 9 rows high
    # survives one 5x5 opening (the head crop) but not three, and one 13 rows high survives both.
    for rows, survives in ((9, False), (13, True)):
        bar = np.zeros((60, 70), np.uint8)
        bar[20:20 + rows, 5:65] = 80
        assert crop_box(bar) == (20, 20 + rows, 5, 65)
        assert black_edge_box(bar) == ((20, 19 + rows, 5, 64) if survives else None)


def test_released_order_sorts_by_x_then_y_then_z():
    from medseg.data.crop import released_order

    head_first = [(-125.0, -123.5, 30.0), (-125.0, -123.5, 20.0), (-125.0, -123.5, 10.0)]
    assert released_order(head_first) == [2, 1, 0]  # x, y constant: ascending z (foot to head)
    assert released_order([(0.0, 2.0, 1.0), (0.0, 1.0, 5.0), (-1.0, 9.0, 9.0)]) == [2, 1, 0]  # x first, then y
    assert released_order([(0.0, 0.0, 2.0), None, (0.0, 0.0, 1.0)]) == [0, 1, 2]  # no position: as given


def test_released_crop_mode_cache_order_blank_slice_and_rebuild(tmp_path):
    """``crop="released"``: slices in ascending z, boxes from the series frame, an all-air slice
    cached as zeros of the series box; a rerun with the other mode rebuilds the series."""
    from medseg.data.crop import released_boxes

    raw = tmp_path / "raw"
    air = np.full((32, 32), -1000, np.int32)
    hus = [phantom(32, k) for k in range(3)] + [air]
    paths = [save(ct_dataset(f"ID_{k}", "ID_s", hu, float(10 * k), k + 1), str(raw / f"ID_{k}.dcm")) for k, hu in enumerate(hus)]
    series = group_series([read_header(p) for p in paths])[0][0]
    assert [s.slice_id for s in series.slices] == ["ID_3", "ID_2", "ID_1", "ID_0"]  # head first
    task = task_for(series, str(raw), "released")
    assert task.slice_ids == ("ID_0", "ID_1", "ID_2", "ID_3")  # the release's order: ascending z
    out = str(tmp_path / "out")
    record = process_series(task, out, DEFAULT_WINDOWS, crop="released")
    volume = np.stack([apply_windows(hu, DEFAULT_WINDOWS) for hu in hus])
    frame, boxes = released_boxes(volume)
    assert boxes[3] is None and all(b is not None for b in boxes[:3])
    assert record.crops == tuple(boxes[:3]) + (frame,)  # the blank slice spans the series frame
    crops = read_crops(os.path.join(out, record.cache))
    for got, image, box in zip(crops[:3], volume, boxes):
        np.testing.assert_array_equal(got, image[box[0]:box[1], box[2]:box[3]])
    assert crops[3].shape == (frame[1] - frame[0], frame[3] - frame[2], 3) and not crops[3].any()
    assert process_series(task, out, DEFAULT_WINDOWS, crop="released").reused
    head = process_series(task_for(series, str(raw)), out, DEFAULT_WINDOWS)  # head mode: rebuilt
    assert not head.reused and head.slice_ids == ("ID_3", "ID_2", "ID_1", "ID_0")
    _, _, record_path = cache_paths(out, "ID_s")
    with open(record_path) as fh:
        assert json.load(fh)["crop"] == "head"
    again = process_series(task, out, DEFAULT_WINDOWS, crop="released")
    assert not again.reused and again.crops == record.crops
