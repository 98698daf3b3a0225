"""train.py / infer.py end to end on a tiny prepared dataset: exact resume, batching, logs,
VisualDL, best model, inference CSV + metrics, and bad input stopping with one line."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

import infer
from medseg.tools import train
from engine_fixtures import make_prepared, write_config
from medseg.config import Config
from medseg.constants import LABELS
from medseg.engine.trainer import TrainOptions, Trainer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    root = make_prepared(str(base / "data"), {"train": 6, "val": 5, "test": 3}, size=40)
    # total_iters pinned: a run stopped early with --iters 3 keeps the 6-iteration schedule.
    cfg = write_config(str(base / "cfg.yml"), root, size=32, iters=6, batch_size=2, total_iters=6)
    return base, root, cfg


def history(save_dir):
    return pd.read_csv(os.path.join(save_dir, "loss_history.csv"))


def run_train(cfg, save_dir, *flags):
    return train.main(["--config", cfg, "--save_dir", str(save_dir), "--log_iters", "1", "--save_interval", "3", *flags])


@pytest.fixture(scope="module")
def full_run(setup):
    base, _, cfg = setup
    save = base / "A"
    assert run_train(cfg, save, "--do_eval", "--use_vdl", "--amp", "O1") == 0
    return save


def test_resume_reproduces_the_uninterrupted_losses_exactly(setup, full_run):
    base, _, cfg = setup
    save = base / "B"
    assert run_train(cfg, save, "--iters", "3") == 0
    assert history(save).iteration.tolist() == [1, 2, 3]
    assert run_train(cfg, save, "--resume_model", str(save / "iter_3")) == 0
    a, b = history(full_run), history(save)
    assert a.iteration.tolist() == list(range(1, 7))
    assert a.loss.tolist() == b.loss.tolist()  # bit for bit, eval and AMP fallback included in A
    import paddle

    for key, value in paddle.load(str(full_run / "iter_6" / "model.pdparams")).items():
        np.testing.assert_array_equal(value.numpy(), paddle.load(str(save / "iter_6" / "model.pdparams"))[key].numpy())


def test_resume_is_exact_with_augmentation_on_the_device(setup, full_run):
    """augment_on_device: the warp runs in the step, from the draws the workers made; a resumed
    run still repeats the uninterrupted one bit for bit, and learns what the CPU path learns."""
    base, _, cfg = setup
    device = ["-o", "train_dataset.augment_on_device=true", "-o", "val_dataset.augment_on_device=true"]
    whole, parts = base / "D1", base / "D2"
    assert run_train(cfg, whole, "--do_eval", *device) == 0
    assert run_train(cfg, parts, "--iters", "3", *device) == 0
    assert run_train(cfg, parts, "--resume_model", str(parts / "iter_3"), *device) == 0
    assert history(whole).loss.tolist() == history(parts).loss.tolist()
    np.testing.assert_allclose(history(whole).loss, history(full_run).loss, rtol=0.02)  # same draws, float vs uint8 rounding


def test_worker_processes_do_not_change_the_run(setup, full_run):
    base, _, cfg = setup
    save = base / "W"
    assert run_train(cfg, save, "--num_workers", "2") == 0  # augmentations are keyed by (seed, epoch, series)
    assert history(save).loss.tolist() == history(full_run).loss.tolist()


def test_logs_vdl_and_best_model(full_run):
    log = (full_run / "train.log").read_text()
    assert "batch_cost" in log and "reader_cost" in log and "ETA" in log and " lr " in log
    assert "AMP is GPU-only, training in float32" in log and log.count("AMP is GPU-only") == 1
    assert "parameter checksum" in log
    assert os.listdir(full_run / "vdl")
    score = json.loads((full_run / "best_model" / "score.json").read_text())
    assert score["iteration"] in (3, 6) and np.isfinite(score["weighted_logloss"])
    assert sorted(p for p in os.listdir(full_run) if p.startswith("iter_")) == ["iter_3", "iter_6"]


def test_batch_size_means_series_per_step(setup, tmp_path):
    _, _, cfg = setup
    trainer = Trainer(Config(cfg, ["batch_size=3"]), TrainOptions(save_dir=str(tmp_path / "bs")))
    assert len(trainer.sampler) == 2  # 6 series / 3
    _, batch = next(trainer._batches(0))
    assert batch["image"].shape[0] == 3 and batch["mask"].shape[0] == 3
    assert batch["image"].shape[1] == int(batch["mask"].numpy().sum(1).max())  # padded to the longest


def test_infer_writes_one_row_per_slice_and_metrics(setup, full_run, capsys):
    base, root, cfg = setup
    out = base / "pred" / "val.csv"
    assert infer.main(["--config", cfg, "--resume_model", str(full_run / "best_model"), "--infer_splition", "val",
                       "--output", str(out)]) == 0
    frame = pd.read_csv(out)
    meta = pd.read_csv(os.path.join(root, "val_meta.csv"))
    assert list(frame.columns) == ["slice_id", "series_id", *LABELS]
    assert sorted(frame.slice_id) == sorted(meta.slice_id) and not frame.slice_id.duplicated().any()
    assert frame[list(LABELS)].to_numpy().min() > 0
    metrics = json.loads((base / "pred" / "val_metrics.json").read_text())
    assert "weighted_logloss" in capsys.readouterr().out and metrics["n_images"] == len(meta)
    assert infer.main(["--config", cfg, "--resume_model", str(full_run / "iter_6"), "--split", "test", "--num_workers", "2"]) == 0
    test_pred = pd.read_csv(full_run / "iter_6" / "predictions_test.csv")
    assert len(test_pred) == len(pd.read_csv(os.path.join(root, "test_meta.csv")))
    assert not (full_run / "iter_6" / "predictions_test_metrics.json").exists()


def test_pretrained_weights_start_a_new_run(setup, full_run, tmp_path, capsys):
    _, _, cfg = setup
    assert run_train(cfg, tmp_path / "ft", "--iters", "1", "--pretrained", str(full_run / "iter_6" / "model.pdparams")) == 0
    assert history(tmp_path / "ft").loss[0] != history(full_run).loss[0]  # started from the trained weights
    assert run_train(cfg, tmp_path / "ft2", "--iters", "1", "-o", "model.width=5", "--pretrained", str(full_run / "iter_6")) == 2
    one_error_line(capsys, "iter_6/model.pdparams", "needs [5, 3, 3, 3]")


def one_error_line(capsys, *needles):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]


def test_bad_input_stops_with_one_line_naming_the_path(setup, full_run, tmp_path, capsys):
    _, root, cfg = setup
    fresh = str(tmp_path / "fresh")
    assert run_train(cfg, fresh, "-o", f"train_dataset.dataset_root={tmp_path}/missing_root") == 2
    one_error_line(capsys, f"{tmp_path}/missing_root", "dataset root not found")
    assert run_train(cfg, fresh, "--overwrite_save_dir", "-o", "train_dataset.split=nosuch") == 2
    one_error_line(capsys, "nosuch_meta.csv", "meta file not found")
    broken = str(tmp_path / "broken")
    shutil.copytree(root, broken)
    os.remove(os.path.join(broken, "cache", "ID_train002.hcc"))
    assert run_train(cfg, fresh, "--overwrite_save_dir", "-o", f"train_dataset.dataset_root={broken}") == 2
    one_error_line(capsys, "cache/ID_train002.hcc", "cache file missing")
    frozen = "{type: ICHSequenceClassifier, freeze_encoder: true, encoder: {type: CNNEncoder, arch: mobilenet_v3_small, scale: 0.5}}"
    assert run_train(cfg, fresh, "--overwrite_save_dir", "-o", f"model={frozen}") == 2
    one_error_line(capsys, cfg, "freeze_encoder", "would stay random")
    assert run_train(cfg, fresh, "--resume_model", str(full_run / "iter_99")) == 2
    one_error_line(capsys, "iter_99", "not found")
    assert run_train(cfg, fresh, "--overwrite_save_dir", "--resume_model", str(full_run / "iter_6"), "-o", "model.width=6") == 2
    one_error_line(capsys, "iter_6/model.pdparams", "shape")
    assert infer.main(["--config", cfg, "--resume_model", str(full_run / "nothing")]) == 2
    one_error_line(capsys, "nothing", "checkpoint not found")
    # An existing run is never touched without --overwrite_save_dir, nor when the new run is bad.
    before = {p: os.path.getmtime(os.path.join(full_run, p)) for p in os.listdir(full_run)}
    assert run_train(cfg, full_run) == 2
    one_error_line(capsys, str(full_run), "--overwrite_save_dir")
    assert run_train(cfg, full_run, "--overwrite_save_dir", "-o", "train_dataset.split=nosuch") == 2
    one_error_line(capsys, "nosuch_meta.csv")
    assert {p: os.path.getmtime(os.path.join(full_run, p)) for p in os.listdir(full_run)} == before


def test_non_finite_loss_is_reported(setup, tmp_path, capsys):
    _, _, cfg = setup
    # The test split has no labels (NaN): training on it must stop at once, clearly.
    assert run_train(cfg, tmp_path / "nan", "-o", "train_dataset.split=test") == 3
    one_error_line(capsys, "non-finite loss", "iteration 1")
    assert not [p for p in os.listdir(tmp_path / "nan") if p.startswith("iter_")]
