"""The released preprocess of arXiv 2205.07556, re-implemented as the benches' "original" arm.

PaddlePaddle/Research, easymia: ``preprocess/rsna_ihd_preprocess.py`` and the dataset's
``get_dicom_metainfo`` / ``dicom2img`` / ``preprocess`` with ``functional.hu2uint8`` and
``load_dcm``. The steps, as ../shared/fixtures/easymia_parity/README.md ("ge_head_expected.npz")
records them from running the release:

1. every file's header with pydicom, the whole file read (``pydicom.read_file``);
2. one table, sorted by series, then ImagePositionPatient x, y, z; labels merged; a 10 % series
   split (``train_test_split``, seed 42); ``train/val/test_meta.csv``;
3. per series: SimpleITK ``ReadImage`` of the sorted file list; three windows (centre, width)
   (40, 80), (80, 200), (40, 380), each ``[c - w//2, c + w//2]``, scaled in float64 (for the
   integer volumes SimpleITK returns), clipped to [0, 1], times 255, truncated to uint8, into one
   ``[S, H, W, 3]`` array; cropped to the box of every ``> 0`` value of the whole
   array with exclusive upper bounds (the last non-zero row and column are dropped);
   ``np.savez_compressed`` to ``imgdata/<series>.npz``.

Departures, none of which changes the work done: the release's joblib pool of 24 becomes a fork
pool of the bench's worker count; each worker's SimpleITK runs one thread (one core per worker,
like ours); optional header fields (WindowCenter …) are read with ``get``, since some synthetic
files lack them and the release would stop there; the test series are read from the test folder
(the released script passes the train folder for them, which fails on Kaggle's layout); a file
that cannot be read is the caller's to leave out (the release has no handling for it); an integer
volume is cast to float64 before the windows (the values the release's numpy 1 computed; numpy 2
refuses its ``uint16 - (-20)``, see ``window_uint8``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pydicom
from pydicom.config import disable_value_validation

from medseg.constants import TEST_DIR, TRAIN_DIR

RELEASED_WINDOWS = ((40, 80), (80, 200), (40, 380))  # dicom2img's window_center / window_width
HU_NAN = -2000.0  # hu2uint8's value for NaN
VAL_RATIO, SPLIT_SEED = 0.1, 42  # the released script's series split
SORT_KEYS = ["series_id", "ImagePos1", "ImagePos2", "ImagePos3"]


def dicom_metadata(path: str) -> dict[str, Any]:
    """The released header record of one file (the whole file is read, as ``pydicom.read_file`` did)."""
    with disable_value_validation():  # RSNA ids are not valid UIDs (pydicom 2 did not check)
        ds = pydicom.dcmread(path)
        record = {"slice_id": ds.SOPInstanceUID, "series_id": ds.SeriesInstanceUID,
                  "study_id": ds.get("StudyInstanceUID"), "patient_id": ds.get("PatientID"),
                  "window_center": ds.get("WindowCenter"), "window_width": ds.get("WindowWidth"),
                  "intercept": ds.get("RescaleIntercept"), "slope": ds.get("RescaleSlope")}
        # plain values: a pydicom UID is validated again wherever it is unpickled (the pool's parent)
        record = {key: None if value is None else str(value) for key, value in record.items()}
        for axis, value in enumerate(ds.ImagePositionPatient, start=1):
            record[f"ImagePos{axis}"] = float(value)
    return record


def sort_slices(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Header records → one table in the released order (series, then x, y, z), ``slice_idx`` per series."""
    table = pd.DataFrame(list(records)).sort_values(SORT_KEYS)
    table["slice_idx"] = table.groupby("series_id").cumcount()
    return table


def window_uint8(volume: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``hu2uint8``: NaN → -2000, ``(HU - lo) / (hi - lo)`` clipped to [0, 1], × 255, truncated.

    An integer volume is scaled in float64: what the release's numpy 1 did (an int16 volume stays
    int16 through the subtraction, a uint16 one becomes int32, then the division is float64), and
    what numpy 2 refuses for SimpleITK's uint16 volumes (``uint16 - (-20)``). A float volume keeps
    its dtype, as in the release."""
    values = volume.astype(np.float64) if volume.dtype.kind in "iu" else np.array(volume)  # a copy either way
    values[np.isnan(values)] = HU_NAN
    return (np.clip((values - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def series_windows(volume: np.ndarray) -> np.ndarray:
    """``dicom2img``: ``[S, H, W]`` HU → ``[S, H, W, 3]`` uint8, one channel per released window."""
    out = np.zeros((*volume.shape, len(RELEASED_WINDOWS)), dtype=np.uint8)
    for channel, (centre, width) in enumerate(RELEASED_WINDOWS):
        out[..., channel] = window_uint8(volume, centre - width // 2, centre + width // 2)
    return out


def crop_nonzero(windows: np.ndarray, where: str = "series") -> np.ndarray:
    """The series box of every ``> 0`` value (all slices and channels), upper bounds exclusive."""
    _, rows, cols, _ = np.where(windows > 0)
    if not rows.size:
        raise ValueError(f"{where}: every windowed value is 0, no box to crop to")
    return windows[:, rows.min():rows.max(), cols.min():cols.max()]


def read_volume(files: list[str]) -> np.ndarray:
    """``load_dcm``: SimpleITK ``ReadImage`` of the sorted file list → ``[S, H, W]`` (rescaled by ITK)."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(files))


def preprocess_series(series_id: str, slice_ids: list[str], dicom_dir: str, out_dir: str) -> str:
    """One series as released: read, windows, crop, ``np.savez_compressed``; returns the npz path."""
    windows = series_windows(read_volume([os.path.join(dicom_dir, f"{s}.dcm") for s in slice_ids]))
    path = os.path.join(out_dir, f"{series_id}.npz")
    np.savez_compressed(path, crop_nonzero(windows, series_id))  # key arr_0, as released
    return path


def _worker_init() -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # as released ("non uniform sampling" etc.)


def _preprocess_task(task: tuple[str, list[str], str, str]) -> int:
    preprocess_series(*task)
    return len(task[1])


def read_labels(csv_path: str) -> pd.DataFrame:
    """``stage_2_train.csv`` → one row per slice with its labels as a list (the released parsing:
    per-row string splits, duplicated rows dropped, labels grouped in file order)."""
    table = pd.read_csv(csv_path)
    table["slice_id"] = table["ID"].map(lambda name: "ID_" + name.split("_")[1])
    table["disease"] = table["ID"].map(lambda name: name.split("_")[2])
    table = table.loc[~table.duplicated(["slice_id", "disease", "Label"])]
    return table.groupby("slice_id")["Label"].apply(lambda values: [int(v) for v in values]).reset_index()


def run_released(raw: str, out: str, workers: int, skip: Iterable[str] = ()) -> tuple[int, int]:
    """The released script on a Kaggle-layout folder ``raw`` → ``out`` (meta CSVs, ``imgdata/*.npz``).

    ``skip``: paths to leave out (a file the release would crash on). Returns (series, slices).
    """
    from sklearn.model_selection import train_test_split

    skipped = set(skip)
    images = os.path.join(out, "imgdata")
    os.makedirs(images, exist_ok=True)
    folders = {split: os.path.join(raw, split) for split in (TRAIN_DIR, TEST_DIR)}
    files = {split: [p for p in (os.path.join(d, n) for n in os.listdir(d)) if p not in skipped]
             for split, d in folders.items() if os.path.isdir(d)}
    pool = mp.get_context("fork").Pool(workers, initializer=_worker_init)
    try:
        labels = read_labels(os.path.join(raw, f"{TRAIN_DIR}.csv"))
        train = sort_slices(pool.map(dicom_metadata, files.get(TRAIN_DIR, []), chunksize=32))
        test = sort_slices(pool.map(dicom_metadata, files[TEST_DIR], chunksize=32)) if files.get(TEST_DIR) else None
        train = train.merge(labels, how="left", on="slice_id")
        train_series, val_series = train_test_split(train.series_id.unique(), test_size=VAL_RATIO, random_state=SPLIT_SEED)
        tables = {"train": (train.loc[train.series_id.isin(train_series)], TRAIN_DIR),
                  "val": (train.loc[train.series_id.isin(val_series)], TRAIN_DIR)}
        if test is not None:
            tables["test"] = (test, TEST_DIR)
        for name, (table, _) in tables.items():
            table.to_csv(os.path.join(out, f"{name}_meta.csv"), index=False)
        tasks = [(series, rows.slice_id.tolist(), folders[folder], images)
                 for table, folder in tables.values() for series, rows in table.groupby("series_id")]
        slices = sum(pool.imap_unordered(_preprocess_task, tasks))
    except BaseException:
        pool.terminate()
        raise
    finally:
        # close + join lets the workers exit on their own: one terminated (the ``with Pool`` exit)
        # in a process that imported Paddle prints Paddle's fatal-signal report
        pool.close()
        pool.join()
    return len(tasks), slices
