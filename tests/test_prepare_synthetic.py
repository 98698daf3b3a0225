"""prepare over a tiny generated synthetic cohort, checked against the generator's ground truth."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from medseg.constants import DEFAULT_WINDOWS, LABELS, TRAIN_CSV
from medseg.data.cache import read_crops
from medseg.data.prepare import prepare
from medseg.data.synthetic import generate_cohort
from medseg.data.synthetic.plan import plan_series
from medseg.data.synthetic.quirks import PIXEL_QUIRKS, WINDOW_MODES
from medseg.data.synthetic.series import synthesize_series
from medseg.data.windows import apply_windows

pytestmark = pytest.mark.slow  # end to end: synthetic cohort -> prepare with workers

N_SERIES, SIZE, SLICES = 6, 64, 8


def _seed_with_every_quirk() -> int:
    """First seed whose 6 series show all pixel quirks, all window modes and both z orders."""
    for seed in range(500):
        plans = [plan_series(seed, i, SLICES) for i in range(N_SERIES)]
        if ({p.pixel_quirk for p in plans} == set(PIXEL_QUIRKS) and {p.window_mode for p in plans} == set(WINDOW_MODES)
                and len({p.ascending for p in plans}) == 2):
            return seed
    raise AssertionError("no seed below 500 covers every quirk")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic")
    seed = _seed_with_every_quirk()
    raw, out = str(base / "raw"), str(base / "out")
    generated = generate_cohort(raw, N_SERIES, seed, size=SIZE, test_fraction=0.3, n_slices=SLICES)
    summary = prepare(raw, out, workers=2, val_fraction=0.5, seed=0)
    truth = {s.series_id: s for s in (synthesize_series(seed, i, SIZE, SLICES) for i in range(N_SERIES))}
    metas = {split: pd.read_csv(os.path.join(out, f"{split}_meta.csv")) for split in ("train", "val", "test")}
    return raw, out, generated, summary, truth, metas


def test_every_good_file_processed_and_truncated_reported(cohort):
    raw, out, generated, summary, truth, metas = cohort
    files = {f[:-4] for d in os.listdir(raw) if d.startswith("stage_2_") and os.path.isdir(os.path.join(raw, d))
             for f in os.listdir(os.path.join(raw, d))}
    truncated = os.path.splitext(os.path.basename(generated["truncated_file"]))[0]
    assert set(pd.concat(metas.values()).slice_id) == files - {truncated}
    errors = pd.read_csv(os.path.join(out, "prepare_errors.csv"))
    assert errors.file.tolist() == [generated["truncated_file"]]
    assert "PixelData" in errors.reason[0]
    assert dict(summary.errors) == {"TruncatedPixelDataError": 1}


def test_no_patient_in_two_splits(cohort):
    *_, metas = cohort
    patients = {split: set(frame.patient_id) for split, frame in metas.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


def test_windows_order_and_labels_match_the_truth(cohort):
    raw, out, _, _, truth, metas = cohort
    table = pd.read_csv(os.path.join(raw, TRAIN_CSV)).drop_duplicates("ID").set_index("ID")["Label"]
    for split, meta in metas.items():
        for series_id, rows in meta.groupby("series_id"):
            series = truth[series_id]
            k = [series.sop_ids.index(s) for s in rows.slice_id]  # generator index of each cached slice
            # Head to foot: positions strictly decreasing, equal to the generator's z.
            np.testing.assert_allclose(rows.position.to_numpy(), series.positions[k], atol=1e-6)
            assert np.all(np.diff(rows.position) < 0)
            expected = apply_windows(series.hu[k], DEFAULT_WINDOWS)
            crops = read_crops(os.path.join(out, rows.cache.iloc[0]))
            for got, image, r in zip(crops, expected, rows.itertuples(), strict=True):
                np.testing.assert_array_equal(got, image[r.crop_y0:r.crop_y1, r.crop_x0:r.crop_x1])
            if split == "test":
                assert rows[list(LABELS)].isna().all().all()
                continue
            csv_labels = np.array([[table[f"{s}_{name}"] for name in LABELS] for s in rows.slice_id])
            np.testing.assert_array_equal(rows[list(LABELS)].to_numpy(), csv_labels)
            np.testing.assert_array_equal(rows[list(LABELS)].to_numpy(), series.labels[k])
