"""prepare end to end on a pydicom-written cohort: meta tables, cache, errors, resume, kill -9."""

from __future__ import annotations

import filecmp
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prepare_cohort import make_cohort
from medseg.constants import DEFAULT_WINDOWS, LABELS
from medseg.data.cache import SeriesCache, read_crops, read_valid_record, safe_name
from medseg.data.meta import META_COLUMNS
from medseg.data.prepare import main, prepare
from medseg.data.windows import apply_windows

pytestmark = pytest.mark.slow  # multi-process prepare runs, kill -9

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("prep")
    raw, out = str(base / "raw"), str(base / "out")
    cohort = make_cohort(raw)
    summary = prepare(raw, out, workers=2, val_fraction=0.34, seed=7)
    return cohort, raw, out, summary


def _meta(out):
    return {split: pd.read_csv(os.path.join(out, f"{split}_meta.csv")) for split in ("train", "val", "test")}


def test_meta_tables_follow_the_contract(prepared):
    cohort, raw, out, summary = prepared
    metas = _meta(out)
    for frame in metas.values():
        assert list(frame.columns) == list(META_COLUMNS)
        assert frame.equals(frame.sort_values(["series_id", "slice_idx"]).reset_index(drop=True))
    train_val = pd.concat([metas["train"], metas["val"]])
    assert len(metas["val"]) and len(metas["train"])
    # No patient in two splits; each patient has one fold; val is fold 0.
    assert not set(metas["train"].patient_id) & set(metas["val"].patient_id)
    assert train_val.groupby("patient_id")["fold"].nunique().max() == 1
    assert (metas["val"].fold == 0).all() and (metas["train"].fold > 0).all()
    # Labels equal the CSV, as six float columns.
    expected = cohort.labels.loc[train_val.slice_id].to_numpy()
    np.testing.assert_array_equal(train_val[list(LABELS)].to_numpy(), expected)
    assert (metas["test"].fold == -1).all() and metas["test"][list(LABELS)].isna().all().all()
    # Every good file is in the tables, and nothing else.
    assert set(pd.concat(metas.values()).slice_id) == set(cohort.hu)
    assert summary.series == {"train": len(metas["train"].series_id.unique()), "val": len(metas["val"].series_id.unique()), "test": 1}


def test_errors_name_every_bad_file_with_its_reason(prepared):
    cohort, raw, out, summary = prepared
    errors = pd.read_csv(os.path.join(out, "prepare_errors.csv"), keep_default_na=False)
    assert list(errors.columns) == ["file", "series_id", "reason"]
    assert set(errors.file) == set(cohort.bad)
    for _, row in errors.iterrows():
        assert cohort.bad[row.file] in row.reason, (row.file, row.reason)
    assert errors.set_index("file").loc["stage_2_train/ID_trunc.dcm", "series_id"] == "ID_serA"
    assert sum(summary.errors.values()) == len(cohort.bad)
    assert summary.mismatch.labels_without_file == ["ID_ghost"]
    assert summary.mismatch.files_without_label == ["ID_nolabel"]


def test_cache_is_the_window_formula_on_true_hu_in_head_to_foot_order(prepared):
    cohort, raw, out, _ = prepared
    meta = pd.concat(_meta(out).values())
    for series_id, rows in meta.groupby("series_id"):
        path = os.path.join(out, rows.cache.iloc[0])
        crops, cache = read_crops(path), SeriesCache(path)
        assert len(crops) == len(rows) and cache.frame == (32, 32) and all(c.dtype == np.uint8 for c in crops)
        zs = [cohort.z[s] for s in rows.slice_id]
        assert zs == sorted(zs, reverse=True)  # head (highest z) first, whatever the acquisition
        np.testing.assert_allclose(rows.position.abs(), np.abs(zs))
        for idx, slice_id, *box in zip(rows.slice_idx, rows.slice_id, rows.crop_y0, rows.crop_y1, rows.crop_x0, rows.crop_x1):
            y0, y1, x0, x1 = box
            assert cache.boxes[idx] == (y0, y1, x0, x1)  # only the head crop is stored
            np.testing.assert_array_equal(crops[idx], apply_windows(cohort.hu[slice_id], DEFAULT_WINDOWS)[y0:y1, x0:x1])


def test_crop_box_ignores_the_headrest_line(prepared):
    _, _, out, _ = prepared
    meta = pd.concat(_meta(out).values())
    assert (meta.crop_y0 >= 0).all() and (meta.crop_y1 <= int(32 * 0.9)).all()  # line at row 28 dropped
    assert ((meta.crop_y1 - meta.crop_y0) >= 20).all() and ((meta.crop_x1 - meta.crop_x0) >= 20).all()


def test_hostile_series_id_stays_inside_the_cache(prepared):
    _, raw, out, _ = prepared
    meta = pd.concat(_meta(out).values())
    path = meta.loc[meta.series_id == "../../x", "cache"].iloc[0]
    assert path == f"cache/{safe_name('../../x')}.hcc" and "/" not in path[len("cache/"):] and ".." not in path
    assert os.path.isfile(os.path.join(out, path))
    assert sorted(os.listdir(os.path.dirname(out))) == ["out", "raw"]


def test_safe_name():
    assert safe_name("ID_0a1b2c") == "ID_0a1b2c"
    names = {safe_name(s) for s in ("../../x", "..", ".", "", "a/b", "a_b", "a b", "x" * 500)}
    assert len(names) == 8
    assert all(n and "/" not in n and not n.startswith(".") and len(n) < 140 for n in names)


def test_rerun_reuses_everything_and_changes_nothing(prepared, tmp_path):
    cohort, raw, out, _ = prepared
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    summary = prepare(raw, copy, workers=1, val_fraction=0.34, seed=7)
    assert summary.reused == summary.series["train"] + summary.series["val"] + summary.series["test"]
    _assert_same_tree(out, copy)


def test_crop_mode_is_recorded_checked_and_another_mode_rebuilds(prepared, tmp_path):
    """``--crop released``: every series rebuilt in the release's order, the manifest says so, a
    dataset asking for the other mode is refused; back to ``head``, the root is as before."""
    from medseg.data.dataset import RSNASeriesDataset
    from medseg.data.meta import read_manifest
    from medseg.data.transforms import Resize, ToCHW

    cohort, raw, out, _ = prepared
    assert read_manifest(out)["crop"] == "head"
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    assert main(["--raw_root", raw, "--dataset_root", copy, "--workers", "1", "--val_fraction", "0.34", "--seed", "7",
                 "--crop", "released"]) == 0
    assert read_manifest(copy)["crop"] == "released"
    metas = _meta(copy)
    records = glob.glob(os.path.join(copy, "cache", "*.json"))
    assert records and all(json.loads(Path(p).read_text())["crop"] == "released" for p in records)
    for _, rows in pd.concat(metas.values()).groupby("series_id"):
        zs = [cohort.z[s] for s in rows.slice_id]
        assert zs == sorted(zs)  # ascending z: the release's order
    transforms = [Resize(16), ToCHW()]
    assert len(RSNASeriesDataset(copy, "test", transforms, crop="released")) == 1
    with pytest.raises(ValueError, match=f"^{copy}: prepared with --crop released, .* --crop head$"):
        RSNASeriesDataset(copy, "test", transforms, crop="head")
    summary = prepare(raw, copy, workers=1, val_fraction=0.34, seed=7)
    assert summary.reused == 0
    _assert_same_tree(out, copy)


def test_invalid_cache_is_rebuilt(prepared, tmp_path):
    _, raw, out, _ = prepared
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    wrong = os.path.join(copy, "cache", "ID_serA.hcc")
    record = wrong[:-4] + ".json"
    shutil.copy(os.path.join(copy, "cache", "ID_serB.hcc"), wrong)  # another series' file: slice count or boxes differ
    os.unlink(os.path.join(copy, "cache", "ID_serB.json"))  # file without its record
    cut = os.path.join(copy, "cache", "ID_serC.hcc")  # cut short, as a power cut can leave an unsynced file
    os.truncate(cut, os.path.getsize(cut) - 5)
    assert read_valid_record(wrong, record, [], "40/80") is None
    leftovers = [os.path.join(copy, "cache", ".ID_serC.hcc.k9x.tmp"), os.path.join(copy, ".train_meta.csv.k9x.tmp")]
    foreign = os.path.join(copy, ".someone_else.csv.k9x.tmp")  # another tool's write in progress
    for path in leftovers + [foreign]:
        open(path, "wb").close()
    summary = prepare(raw, copy, workers=1, val_fraction=0.34, seed=7)
    assert summary.reused == 5
    assert not any(os.path.exists(p) for p in leftovers) and os.path.exists(foreign)
    os.unlink(foreign)
    _assert_same_tree(out, copy)


def test_old_format_cache_is_rebuilt_with_a_message(prepared, tmp_path, caplog):
    """A dataset prepared before the compressed cache: its full-frame .npy files are replaced."""
    _, raw, out, _ = prepared
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    for record_path in glob.glob(os.path.join(copy, "cache", "*.json")):  # turn every series into the old format
        with open(record_path, encoding="utf-8") as fh:
            record = json.load(fh)
        if record["cache"]:
            frame = np.zeros((len(record["crops"]), 32, 32, 3), np.uint8)
            np.save(os.path.join(copy, record["cache"][: -len(".hcc")] + ".npy"), frame)
            os.unlink(os.path.join(copy, record["cache"]))
            record["cache"] = record["cache"][: -len(".hcc")] + ".npy"
        del record["format"]
        with open(record_path, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
    with caplog.at_level("WARNING", logger="medseg.data.prepare"):
        summary = prepare(raw, copy, workers=1, val_fraction=0.34, seed=7)
    assert summary.reused == 0
    assert any("old format" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    assert not glob.glob(os.path.join(copy, "cache", "*.npy"))
    _assert_same_tree(out, copy)


def test_cache_is_fsynced_only_on_request(prepared, tmp_path, monkeypatch):
    _, raw, out, _ = prepared
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    prepare(raw, str(tmp_path / "plain"), workers=1, val_fraction=0.34, seed=7)
    assert len(synced) == 5 and not any(os.sep + "cache" + os.sep in p for p in synced)  # 3 meta tables + errors + manifest
    synced.clear()
    prepare(raw, str(tmp_path / "durable"), workers=1, val_fraction=0.34, seed=7, fsync=True)
    cached = glob.glob(os.path.join(out, "cache", "*.hcc")) + glob.glob(os.path.join(out, "cache", "*.json"))
    assert sum(os.sep + "cache" + os.sep in p for p in synced) == len(cached) and len(synced) == len(cached) + 5
    _assert_same_tree(str(tmp_path / "plain"), str(tmp_path / "durable"))
    _assert_same_tree(out, str(tmp_path / "plain"))


def test_workers_start_preloaded_from_any_folder(tmp_path):
    """Run from outside the repository with the package installed, the fork server preloads it,
    so workers do not import pandas and friends themselves. ``PYTHONPATH`` stands in for the
    install here (both put the package on every interpreter's default ``sys.path``; the shared
    test environment must not have this checkout installed)."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "PRELOADED = 'pandas' in sys.modules  # a worker imports this file after the fork server's preload\n"
        "from medseg.data.prepare import _worker_pool\n"
        "def preloaded(_):\n"
        "    return PRELOADED\n"
        "if __name__ == '__main__':\n"
        "    with _worker_pool(2) as pool:\n"
        "        print(pool.map(preloaded, range(2)))\n")
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[True, True]"


def test_cli_windows_and_split_args(prepared, tmp_path, capsys):
    cohort, raw, _, _ = prepared
    out = str(tmp_path / "cli")
    assert main(["--raw_root", raw, "--dataset_root", out, "--workers", "1", "--windows", "40/80,80/200", "--val_fraction", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "errors: 8 files" in printed and "subdural" in printed
    meta = pd.read_csv(os.path.join(out, "test_meta.csv"))
    crops = read_crops(os.path.join(out, meta.cache[0]))
    expected = [apply_windows(cohort.hu[s], ((40, 80), (80, 200)))[r.crop_y0:r.crop_y1, r.crop_x0:r.crop_x1]
                for s, r in zip(meta.slice_id, meta.itertuples())]
    for got, want in zip(crops, expected, strict=True):  # the non-3-window gather path
        np.testing.assert_array_equal(got, want)


def _tree(root):
    return sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**"), recursive=True) if os.path.isfile(p))


def _assert_same_tree(a, b):
    assert _tree(a) == _tree(b)
    for rel in _tree(a):
        assert filecmp.cmp(os.path.join(a, rel), os.path.join(b, rel), shallow=False), rel


def test_kill_9_then_rerun_gives_identical_results(tmp_path):
    raw, reference, killed = str(tmp_path / "raw"), str(tmp_path / "ref"), str(tmp_path / "killed")
    make_cohort(raw, size=96, n_extra=10, slices=6)
    prepare(raw, reference, workers=1, val_fraction=0.2, seed=3)
    command = [sys.executable, "-m", "medseg.data.prepare", "--raw_root", raw, "--dataset_root", killed, "--workers", "2",
               "--val_fraction", "0.2", "--seed", "3"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    records = lambda: len(glob.glob(os.path.join(killed, "cache", "*.json")))  # noqa: E731
    killed_mid_run = 0
    for target in (1, 6, 12):  # kill once the cache holds at least `target` finished series
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while proc.poll() is None and records() < target and time.time() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_mid_run += 1
        proc.wait()
    assert killed_mid_run >= 2
    assert not os.path.exists(os.path.join(killed, "train_meta.csv")) or records() == 17
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "series reused from an earlier run" in done.stdout
    _assert_same_tree(reference, killed)
