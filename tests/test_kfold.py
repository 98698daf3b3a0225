"""K-fold training: ``prepare --folds K``, ``medseg.tools.kfold`` (OOF predictions, the fold average,
the report, resume, subsets, bad input), script/kfold.sh, fold averages in ``medseg.outputs.ensemble``
and ``medseg.predict``, and bench/workflow.sh in miniature."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pandas as pd
import paddle
import pytest
from sklearn.metrics import roc_auc_score

from engine_fixtures import make_prepared, write_config
from medseg.config import Config
from medseg.constants import LABELS
from medseg.data.meta import meta_path, read_meta, write_meta
from medseg.data.prepare_tables import split_tables
from medseg.data.split import assign_folds, fold_tags
from medseg.engine import checkpoint as ckpt
from medseg.engine.infer_split import infer_split
from medseg.engine.metrics import weighted_log_loss
from medseg.outputs import ensemble as ensemble_tool
from medseg.outputs.predictions import read_predictions
from medseg.tools import kfold
from medseg.utils.logger import setup_logger
from medseg.models.encoders.cnn import CNNEncoder
from test_end_to_end import TINY, TINY_EMBED  # the demo configs at toy scale (iterations set by the bench's knobs)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 3


def make_root(folder: str, n_folds: int = K, seed: int = 0) -> str:
    """The engine's tiny prepared dataset (12 labelled series, 2 test series) with ``n_folds``
    patient folds from the prepare step's own splitter; two series share a patient."""
    root = make_prepared(folder, {"train": 9, "val": 3, "test": 2}, size=40, min_slices=3, max_slices=5)
    labelled = pd.concat([read_meta(root, "train"), read_meta(root, "val")], ignore_index=True)
    labelled.loc[labelled["series_id"] == "ID_train001", "patient_id"] = "P_ID_train000"
    for tag, frame in split_tables(labelled, read_meta(root, "test"), 0.1, seed, 0, n_folds=n_folds).items():
        write_meta(meta_path(root, tag), frame)
    return root


def labelled_meta(root: str) -> pd.DataFrame:
    return pd.concat([read_meta(root, "train"), read_meta(root, "val")], ignore_index=True)


def args(cfg: str, save_root, *extra: str) -> list[str]:
    """A two-stage K-fold run at toy size: stage 1 is the same tiny model for 3 iterations."""
    return ["--config", cfg, "--pretrain_config", cfg, "--pretrain_iters", "3", "--save_root", str(save_root),
            "--save_interval", "3", "--num_workers", "0", "--log_iters", "3", *extra]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("kfold")
    root = make_root(str(base / "data"))
    cfg = write_config(str(base / "cfg.yml"), root, size=32, iters=6, batch_size=2)
    return base, root, cfg


@pytest.fixture(scope="module")
def full_run(setup):
    base, _, cfg = setup
    assert kfold.main(["run", *args(cfg, base / "A")]) == 0
    return base / "A"


def test_prepare_asks_for_k_patient_folds(tmp_path, capsys):
    """``--folds K``: K stratified patient folds (fold 0 is val_meta.csv); K < 2 or more folds
    than patients is refused before any work."""
    from prepare_cohort import make_cohort
    from medseg.data import prepare

    raw, out = tmp_path / "raw", tmp_path / "prepared"
    make_cohort(str(raw))
    assert prepare.main(["--raw_root", str(raw), "--dataset_root", str(out), "--workers", "1", "--folds", "3"]) == 0
    train, val = read_meta(str(out), "train"), read_meta(str(out), "val")
    assert set(train["fold"]) == {1, 2} and set(val["fold"]) == {0}
    both = pd.concat([train, val])
    assert (both.groupby("patient_id")["fold"].nunique() == 1).all()
    capsys.readouterr()
    assert prepare.main(["--raw_root", str(raw), "--dataset_root", str(tmp_path / "x"), "--folds", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --folds 1: K-fold needs K >= 2 folds"
    series = pd.DataFrame({"patient_id": ["a", "a", "b"], **{label: [0.0, 1.0, 0.0] for label in LABELS}},
                          index=pd.Index(["s1", "s2", "s3"], name="series_id"))
    with pytest.raises(ValueError, match="only 2 patient"):
        assign_folds(series, 0.1, 0, n_folds=3)


def test_oof_covers_every_labelled_slice_once_from_the_model_that_did_not_see_it(setup, full_run):
    _, root, cfg = setup
    meta = labelled_meta(root)
    oof = read_predictions(str(full_run / "oof.csv"))
    assert len(oof) == len(meta) and not oof["slice_id"].duplicated().any()
    assert set(oof["slice_id"]) == set(meta["slice_id"])
    oof = oof.set_index("slice_id")
    fold_of = meta.set_index("slice_id")["fold"]
    for k in range(K):
        mine = meta.loc[meta["fold"] == k, "slice_id"]
        part = read_predictions(str(full_run / f"fold_{k}" / "predictions_val.csv")).set_index("slice_id")
        assert set(part.index) == set(mine)
        np.testing.assert_array_equal(oof.loc[mine, list(LABELS)].to_numpy(), part.loc[mine, list(LABELS)].to_numpy())
        # Both stages of fold k trained on a table without any of fold k's patients, and with all the others.
        train_tag, val_tag = fold_tags(k, K)
        for run in (full_run / f"fold_{k}", full_run / f"fold_{k}" / "pretrain"):
            saved = Config(str(run / "config.yml"))
            assert saved.get("train_dataset.split") == train_tag and saved.get("val_dataset.split") == val_tag
        seen = set(read_meta(root, train_tag)["patient_id"])
        assert seen.isdisjoint(meta.loc[meta["fold"] == k, "patient_id"])
        assert seen == set(meta.loc[meta["fold"] != k, "patient_id"])
        assert set(fold_of[list(mine)]) == {k}
    # The OOF rows of fold 1 are fold 1's model's: fold 0's model predicts those slices otherwise.
    other, _ = infer_split(Config(cfg), str(full_run / "fold_0" / "iter_6"), fold_tags(1, K)[1],
                           str(full_run.parent / "other.csv"), num_workers=0)
    ids = other["slice_id"].to_numpy()
    assert np.abs(other[list(LABELS)].to_numpy() - oof.loc[ids, list(LABELS)].to_numpy()).max() > 1e-4


def test_report_and_test_average_are_computed_from_the_fold_predictions(setup, full_run, capsys):
    _, root, cfg = setup
    meta = labelled_meta(root).set_index("slice_id")
    oof = read_predictions(str(full_run / "oof.csv")).set_index("slice_id")
    truth, pred = meta.loc[oof.index, list(LABELS)].to_numpy(), oof[list(LABELS)].to_numpy()
    report = json.loads((full_run / "fold_report.json").read_text())
    assert report["complete"] and report["folds"] == [0, 1, 2] and report["oof"]["slices"] == len(meta)
    assert report["oof"]["weighted_logloss"] == pytest.approx(weighted_log_loss(truth, pred), rel=1e-12)
    for j, label in enumerate(LABELS):
        if 0 < truth[:, j].sum() < len(truth):
            assert report["oof"]["auc"][label] == pytest.approx(roc_auc_score(truth[:, j], pred[:, j]), rel=1e-12)
    scores = []
    for entry in report["per_fold"]:
        ids = meta.index[meta["fold"] == entry["fold"]]
        scores.append(weighted_log_loss(meta.loc[ids, list(LABELS)].to_numpy(), oof.loc[ids, list(LABELS)].to_numpy()))
        assert entry["weighted_logloss"] == pytest.approx(scores[-1], rel=1e-12)
        done = json.loads((full_run / f"fold_{entry['fold']}" / "done.json").read_text())
        assert done["val_weighted_logloss"] == pytest.approx(scores[-1], rel=1e-6)  # infer.py's own metric
    assert report["fold_weighted_logloss_mean"] == pytest.approx(np.mean(scores), rel=1e-12)
    tests = [read_predictions(str(full_run / f"fold_{k}" / "predictions_test.csv")).set_index("slice_id") for k in range(K)]
    averaged = read_predictions(str(full_run / "test.csv")).set_index("slice_id")
    assert len(averaged) == len(read_meta(root, "test"))
    np.testing.assert_allclose(averaged[list(LABELS)].to_numpy(),
                               np.mean([t.loc[averaged.index, list(LABELS)].to_numpy() for t in tests], axis=0), atol=1e-15)
    assert kfold.main(["collect", *args(cfg, full_run)]) == 0
    printed = capsys.readouterr().out
    assert f"OOF (every fold of 3: {len(meta)} of {len(meta)} labelled slices): weighted_logloss " \
           f"{report['oof']['weighted_logloss']:.5f}" in printed


def test_an_interrupted_run_resumes_and_ends_with_the_same_files(setup, full_run, monkeypatch):
    """Killed right after fold 1 saved iter_3 of its stage 2: the rerun keeps fold 0, resumes fold 1
    from iter_3, trains fold 2, and every output equals the uninterrupted run's."""
    base, _, cfg = setup
    save = base / "B"
    real_save = ckpt.save_checkpoint

    def save_then_die(save_dir, iteration, *a, **kw):
        path = real_save(save_dir, iteration, *a, **kw)
        if save_dir.endswith("fold_1") and iteration == 3:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)
    assert kfold.main(["run", *args(cfg, save)]) == 130
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    assert (save / "fold_0" / "done.json").is_file() and not (save / "fold_1" / "done.json").exists()
    assert [n for n, _ in ckpt.list_checkpoints(str(save / "fold_1"))] == [3]
    kept = (save / "fold_0" / "iter_6" / "model.pdparams").stat().st_mtime_ns
    assert kfold.main(["run", *args(cfg, save)]) == 0
    assert (save / "fold_0" / "iter_6" / "model.pdparams").stat().st_mtime_ns == kept
    assert f"resumed from {save / 'fold_1' / 'iter_3'} at iteration 3" in (save / "fold_1" / "train.log").read_text()
    folds = [f"fold_{k}/predictions_{split}.csv" for k in range(K) for split in ("val", "test")]
    for name in ("oof.csv", "test.csv", "fold_report.json", *folds):
        assert (save / name).read_bytes() == (full_run / name).read_bytes(), name


def test_a_subset_of_folds_trains_and_reports_only_those(setup, full_run, capsys):
    base, root, cfg = setup
    save = base / "S"
    assert kfold.main(["run", *args(cfg, save, "--folds", "0,2")]) == 0
    assert not (save / "fold_1").exists()
    printed = capsys.readouterr().out
    meta = labelled_meta(root)
    ours = meta[meta["fold"] != 1]
    assert f"OOF (folds 0, 2 only of 3: {len(ours)} of {len(meta)} labelled slices)" in printed
    report = json.loads((save / "fold_report.json").read_text())
    assert not report["complete"] and report["folds"] == [0, 2] and report["test"]["folds"] == [0, 2]
    oof = read_predictions(str(save / "oof.csv")).set_index("slice_id")
    assert set(oof.index) == set(ours["slice_id"])
    whole = read_predictions(str(full_run / "oof.csv")).set_index("slice_id")
    np.testing.assert_array_equal(oof[list(LABELS)].to_numpy(), whole.loc[oof.index, list(LABELS)].to_numpy())
    # Asking for the remaining fold later trains fold 1 only and completes the run.
    assert kfold.main(["plan", *args(cfg, save)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "todo: 1"


def _tables(folder, root, edit):
    """A copy of ``root``'s meta tables (no cache: the check comes first), changed by ``edit``."""
    os.makedirs(folder)
    meta = labelled_meta(root)
    edit(meta)
    write_meta(meta_path(folder, "train"), meta[meta["fold"] != 0])
    write_meta(meta_path(folder, "val"), meta[meta["fold"] == 0])
    return folder


def _zero_fold_2(meta):
    meta.loc[meta["fold"] == 2, list(LABELS)] = 0.0


def _one_fold(meta):
    meta["fold"] = 0


@pytest.mark.parametrize("case", ["one fold", "fold without positives", "another config", "unknown fold", "not finished"])
def test_bad_input_ends_in_one_error_line(setup, full_run, tmp_path, capsys, case):
    _, root, cfg = setup
    save = tmp_path / "R"
    data = []
    if case in ("one fold", "fold without positives"):
        other = _tables(str(tmp_path / "data"), root, _one_fold if case == "one fold" else _zero_fold_2)
        data = ["-o", f"train_dataset.dataset_root={other}", "-o", f"val_dataset.dataset_root={other}"]
    command, extra, expected = {
        "one fold": ("plan", data, "the labelled slices are in 1 fold; K-fold needs K >= 2"),
        "fold without positives": ("plan", data, "fold 2 of 3 has no positive slice (any)"),
        "another config": ("plan", ["-o", "lr_scheduler.learning_rate=0.01"], f"{full_run / 'kfold.json'}: {full_run} "
                           "holds the folds of another experiment (different config, pretrain_config)"),
        "unknown fold": ("plan", ["--folds", "0,5"], f"--folds 5: {root} has folds 0..2"),
        "not finished": ("collect", [], "fold 0 is not finished"),
    }[case]
    if case == "another config":
        save = full_run
    if case == "not finished":
        assert kfold.main(["plan", *args(cfg, save)]) == 0
        capsys.readouterr()
    assert kfold.main([command, *args(cfg, save, *extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def _tiny_checkpoint(cfg: str, folder, seed: int) -> str:
    paddle.seed(seed)
    model = Config(cfg).build("model")
    os.makedirs(folder, exist_ok=True)
    paddle.save(model.state_dict(), os.path.join(folder, "model.pdparams"))
    return str(folder)


def test_the_average_of_k_identical_models_is_the_model(setup, full_run, tmp_path, dicom_study, capsys):
    """medseg.predict: ``--model`` K times the same checkpoint predicts what it predicts alone, and
    two different models give the mean of their probabilities (each load logged). The ensemble
    tool reads fold folders and K-fold SAVE_ROOTs: the fold average is test.csv."""
    from medseg.constants import DEFAULT_WINDOWS
    from medseg.data.build import build_eval_transforms, eval_transform_config
    from medseg.predict.__main__ import main as predict_main
    from medseg.predict.backend import ModelAverage, load_model, load_models
    from medseg.predict.run import predict_folder

    _, _, cfg = setup
    a, b = _tiny_checkpoint(cfg, tmp_path / "a", 1), _tiny_checkpoint(cfg, tmp_path / "b", 2)
    image = np.random.default_rng(0).normal(size=(2, 4, 3, 32, 32)).astype(np.float32)
    mask = np.ones((2, 4), bool)
    config = Config(cfg)
    one = load_model(config, a)(image, mask)
    same = load_models(config, [a, a, a])
    assert isinstance(same, ModelAverage)
    np.testing.assert_array_equal(same(image, mask), one)
    mixed = load_models(config, [a, b])(image, mask)
    np.testing.assert_allclose(mixed, (one + load_model(config, b)(image, mask)) / 2, rtol=1e-6)
    assert np.abs(mixed - one).max() > 1e-4

    folder = str(dicom_study[0])
    setup_logger()  # the console handler on this test's captured stdout
    assert predict_main(["--config", cfg, "--model", a, a, a, "--dicom_dir", folder, "--out", str(tmp_path / "three"),
                         "--no_progress", "--no_saliency"]) == 0
    logged = capsys.readouterr().out
    assert all(f"model {i}/3: {a} (checkpoint) loaded in " in logged for i in (1, 2, 3))
    three = read_predictions(str(tmp_path / "three" / "predictions.csv")).set_index("slice_id")
    transforms = build_eval_transforms(eval_transform_config(config))
    alone = predict_folder(load_model(config, a), folder, transforms, DEFAULT_WINDOWS, progress=False).results
    ids = [s for r in alone for s in r.slice_ids]
    assert len(ids) == len(three) > 0
    np.testing.assert_array_equal(three.loc[ids, list(LABELS)].to_numpy(), np.concatenate([r.probs for r in alone]))
    info = json.loads((tmp_path / "three" / "predictions.json").read_text())
    assert info["model_kind"] == "average" and info["model"] == [os.path.abspath(a)] * 3

    fold_files = [str(full_run / f"fold_{k}" / "predictions_test.csv") for k in range(K)]
    assert ensemble_tool.expand_inputs([str(full_run)]) == fold_files
    for inputs in ([str(full_run)], [str(full_run / f"fold_{k}") for k in range(K)]):
        out = tmp_path / "avg.csv"
        assert ensemble_tool.main(["--inputs", *inputs, "--out", str(out)]) == 0
        np.testing.assert_allclose(read_predictions(str(out))[list(LABELS)].to_numpy(),
                                   read_predictions(str(full_run / "test.csv"))[list(LABELS)].to_numpy(), atol=1e-15)
    assert ensemble_tool.main(["--inputs", str(full_run / "fold_0"), "--split", "val", "--out", str(tmp_path / "v.csv")]) == 0
    assert (tmp_path / "v.csv").read_bytes() == (full_run / "fold_0" / "predictions_val.csv").read_bytes()
    capsys.readouterr()
    assert ensemble_tool.main(["--inputs", str(tmp_path / "a"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "a folder without predictions_test.csv or fold_*/predictions_test.csv" in capsys.readouterr().err


RECORDER = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$RECORD"
case " $* " in *" plan "*) echo "some log line"; echo "todo: 0 2" ;; esac
"""


def test_kfold_script_launches_each_fold_left(tmp_path):
    """script/kfold.sh: plan, one paddle.distributed.launch per fold left (no --devices), collect."""
    python = tmp_path / "python"
    python.write_text(RECORDER)
    python.chmod(0o755)
    record = tmp_path / "record.txt"
    env = dict(os.environ, PYTHON=str(python), RECORD=str(record), NPROC="2")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run(["bash", "script/kfold.sh", "config/x.yml", str(tmp_path / "R"), "--folds", "0,2"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = [shlex.split(line) for line in record.read_text().splitlines()]
    common = ["--config", "config/x.yml", "--save_root", str(tmp_path / "R"), "--folds", "0,2"]
    assert calls[0] == ["-m", "medseg.tools.kfold", "plan", *common]
    for call, k in zip(calls[1:3], (0, 2)):
        assert call[:6] == ["-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--nnodes", "1"]
        assert "--devices" not in call and call[call.index("--log_dir") + 1] == str(tmp_path / "R" / "logs" / f"fold_{k}")
        launched = [str(python), "-m", "medseg.tools.kfold", "fold", "--fold", str(k), *common]
        assert call[call.index("--log_dir") + 2:] == launched
    assert calls[3] == ["-m", "medseg.tools.kfold", "collect", *common] and len(calls) == 4


WORKFLOW_LINE = re.compile(r"workflow (folds|tta|bagging|neighbours) ratio=([0-9.]+) sd=(nan|[0-9.]+) target=(0\.95|0\.98) (met|missed)")
SPEED_LINE = re.compile(r"workflow embed_speed ratio=([0-9.]+) target=30 (met|missed)")


def test_workflow_bench_prints_provenance_then_refuses_a_missing_raw_folder(tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "workflow.sh")], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHON=sys.executable, WF_SEEDS="1", RAW=str(tmp_path / "missing"),
                                   WF_OUT=str(tmp_path / "out")))
    assert proc.returncode == 2 and proc.stderr.strip() == f"RAW={tmp_path / 'missing'}: not a directory", proc.stderr
    assert proc.stdout.splitlines()[0].startswith("provenance: commit=") and len(proc.stdout.splitlines()) == 1


@pytest.mark.slow
def test_workflow_bench_toy(tmp_path):
    """bench/workflow.sh on one tiny cohort, 2 folds, 2 processes per fold: its closing lines are
    the ratios of the scores of the files it wrote, and its exit status follows the targets."""
    env = dict(os.environ, PYTHON=sys.executable, WF_OUT=str(tmp_path / "out"), WF_SEEDS="1", WF_FOLDS="2",
               WF_SERIES="12", WF_SIZE="64", WF_SLICES="6", WF_PRETRAIN_ITERS="4", WF_ITERS="2", WF_PROCS="2",
               WF_SAVE_INTERVAL="2", WF_WORKERS="1", WF_SPEED_ITERS="4", WF_BAG="2")
    for key, base, batch in (("WF_PRETRAIN_CONFIG", "demo_cpu_pretrain.yml", 4), ("WF_CONFIG", "demo_cpu.yml", 1),
                             ("WF_PRETRAIN_CONFIG_25D", "demo_cpu_pretrain_25d.yml", 4), ("WF_CONFIG_25D", "demo_cpu_25d.yml", 1)):
        (tmp_path / base).write_text(TINY.format(base=os.path.join(ROOT, "config", base), batch=batch, head="{}"))
        env[key] = str(tmp_path / base)
    width = CNNEncoder(arch="mobilenet_v3_small", scale=0.5).feature_dim
    (tmp_path / "embed.yml").write_text(TINY_EMBED.format(base=os.path.join(ROOT, "config", "demo_cpu_embed.yml"), width=width)
                                        .replace("head: {hidden_size: 16}", "head: {}"))
    env["WF_EMBED_CONFIG"] = str(tmp_path / "embed.yml")
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "workflow.sh")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("provenance: commit=")
    parsed = [WORKFLOW_LINE.fullmatch(line) for line in lines[-6:-4] + lines[-2:]]  # folds, tta, bagging, neighbours
    assert all(parsed), lines[-7:]
    speed = SPEED_LINE.fullmatch(lines[-3])
    assert speed, lines[-4:]
    seed = tmp_path / "out" / "seed_1"
    truth = pd.read_csv(seed / "raw" / "stage_2_test_truth.csv")
    from medseg.outputs.predictions import kaggle_to_wide

    truth = kaggle_to_wide(truth).set_index("slice_id")

    def loss(path):
        pred = read_predictions(str(path)).set_index("slice_id").loc[truth.index]
        return weighted_log_loss(truth[list(LABELS)].to_numpy(), pred[list(LABELS)].to_numpy())

    folds = loss(seed / "kfold" / "test.csv") / loss(seed / "kfold" / "fold_0" / "predictions_test.csv")
    tta = loss(seed / "tta" / "test.csv") / loss(seed / "plain" / "test.csv")
    assert float(parsed[0].group(2)) == pytest.approx(folds, abs=1e-4)
    assert float(parsed[1].group(2)) == pytest.approx(tta, abs=1e-4)
    assert (parsed[0].group(5) == "met") == (folds <= 0.95) and (parsed[1].group(5) == "met") == (tta <= 0.98)
    bag = loss(seed / "bagging" / "bag_test.csv") / loss(seed / "bagging" / "one_test.csv")
    neighbours = loss(seed / "kfold_25d" / "fold_0" / "predictions_test.csv") / loss(seed / "kfold" / "fold_0" / "predictions_test.csv")
    assert float(parsed[2].group(2)) == pytest.approx(bag, abs=1e-4)
    assert float(parsed[3].group(2)) == pytest.approx(neighbours, abs=1e-4)
    record = json.loads((seed / "speed.json").read_text())
    assert float(speed.group(1)) == pytest.approx(record["image_s_per_iter"] / record["embeddings_s_per_iter"], rel=1e-2)
    # the same start, data and steps: the arms differ by where the features come from (float32 both)
    assert record["max_abs_diff"] <= 1e-4, record
    bagged = json.loads((seed / "bagging" / "heads" / "bagged" / "bag.json").read_text())
    assert len(bagged["members"]) == 2
    time_line = next(line for line in lines if line.startswith("run time "))
    time_met = time_line.endswith("met)")
    speed_met = speed.group(2) == "met"
    assert (speed_met) == (float(speed.group(1)) >= 30 and record["max_abs_diff"] <= 1e-4)
    assert proc.returncode == (0 if folds <= 0.95 and tta <= 0.98 and time_met and bag <= 0.98 and neighbours <= 0.95
                               and speed_met else 1)
    assert re.search(r"^fold +slices", proc.stdout, re.M)  # kfold's table, printed per seed
    report = json.loads((seed / "kfold" / "fold_report.json").read_text())
    assert report["complete"] and report["n_folds"] == 2
    assert f"{report['oof']['weighted_logloss']:.4f}" in proc.stdout
