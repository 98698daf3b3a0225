"""Two CPU processes under ``paddle.distributed.launch`` (gloo): replicas stay identical, sharded
inference equals single-process inference, a dying rank fails the launch with its cause; and the
GPU-cluster paths a CPU launch can exercise: a frozen encoder stays frozen under DataParallel,
recompute over chunks trains the same weights as no recompute, and every rank takes rank 0's
save_dir decision even when their disks differ."""

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import paddle
import pytest

from engine_fixtures import make_prepared, write_config
from medseg.tools import infer, train

pytestmark = pytest.mark.slow  # multi-process (paddle.distributed.launch)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "engine_fixtures.py")


def env():
    # The launched script lives in tests/: PYTHONPATH gives its processes this checkout, as an
    # installed package would (the shared test environment must not have it installed).
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=os.path.dirname(HERE))
    e.pop("MEDSEG_TEST_DIE_RANK", None)
    return e


def launch(log_dir, *args, extra_env=None):
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir),
           SCRIPT, *args]
    return subprocess.run(cmd, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    # 7 val series over 2 ranks: uneven shards (4 + 3).
    root = make_prepared(str(base / "data"), {"train": 6, "val": 7}, size=40)
    cfg = write_config(str(base / "cfg.yml"), root, size=32, iters=4, batch_size=1)
    return base, cfg


def test_two_ranks_train_in_sync_and_shard_inference(setup):
    base, cfg = setup
    save = base / "run"
    done = launch(base / "log_train", "train", "--config", cfg, "--save_dir", str(save), "--save_interval", "2",
                  "--log_iters", "1", "--do_eval")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    sums = {}
    for name in ("train.log", "train.rank1.log"):
        found = re.findall(r"parameter checksum \(rank (\d)\): ([0-9a-f]{64})", (save / name).read_text())
        assert len(found) == 1, name
        sums[found[0][0]] = found[0][1]
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"]
    assert sorted(p for p in os.listdir(save) if p.startswith("iter_")) == ["iter_2", "iter_4"]
    assert "batch 1 series x 2 process(es), 3 batches/epoch" in (save / "train.log").read_text()

    multi = base / "multi.csv"
    done = launch(base / "log_infer", "infer", "--config", cfg, "--resume_model", str(save / "iter_4"),
                  "--infer_splition", "val", "--multigpu_infer", "--output", str(multi))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    single = base / "single.csv"
    assert infer.main(["--config", cfg, "--resume_model", str(save / "iter_4"), "--split", "val", "--output", str(single)]) == 0
    a, b = pd.read_csv(multi), pd.read_csv(single)
    assert not a.slice_id.duplicated().any() and len(a) == len(pd.read_csv(os.path.join(base, "data", "val_meta.csv")))
    pd.testing.assert_frame_equal(a, b, rtol=0, atol=1e-6)
    assert (base / "multi_metrics.json").read_text() == (base / "single_metrics.json").read_text()


def test_a_dying_rank_fails_the_launch_with_its_cause(setup):
    base, cfg = setup
    done = launch(base / "log_die", "train", "--config", cfg, "--save_dir", str(base / "die"),
                  extra_env={"MEDSEG_TEST_DIE_RANK": "1"})
    assert done.returncode != 0
    assert "rank 1 failed on purpose" in (base / "log_die" / "workerlog.1").read_text()


ENCODER = "{type: CNNEncoder, arch: mobilenet_v3_small, scale: 0.5, chunk_size: %d, recompute: %s}"
SLICE_LOSS = "loss={type: MixedLoss, losses: [{type: MaskedWeightedBCE}], coef: [1], outputs: [slice]}"


def params(path):
    return {k: v.numpy() for k, v in paddle.load(os.path.join(path, "model.pdparams")).items()}


def test_frozen_encoder_is_bit_identical_after_a_data_parallel_stage_2(setup):
    base, cfg = setup
    stage1 = base / "stage1"
    model1 = "model={type: ICHSequenceClassifier, sequential: false, encoder: %s}" % (ENCODER % (2, "false"))
    # a small learning rate: a from-scratch encoder trained faster gives eval-mode features that blow up
    assert train.main(["--config", cfg, "--save_dir", str(stage1), "--iters", "2", "--num_workers", "0", "--learning_rate", "0.001",
                       "-o", model1, "-o", SLICE_LOSS]) == 0
    stage2 = base / "stage2"
    model2 = ("model={type: ICHSequenceClassifier, freeze_encoder: true, residual: true, encoder: %s, "
              "head: {type: BiGRUSequenceHead, hidden_size: 8, num_layers: 1}}" % (ENCODER % (2, "false")))
    done = launch(base / "log_stage2", "train", "--config", cfg, "--save_dir", str(stage2), "--num_workers", "0",
                  "--pretrained", str(stage1 / "iter_2"), "--learning_rate", "0.001", "-o", model2)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    before, after = params(stage1 / "iter_2"), params(stage2 / "iter_4")
    encoder = [k for k in before if k.startswith("encoder.")]
    assert any(k.endswith("_mean") for k in encoder) and any(k.endswith("_variance") for k in encoder)
    changed = [k for k in encoder if not np.array_equal(before[k], after[k])]
    assert not changed, f"{len(changed)} of {len(encoder)} encoder tensors moved, e.g. {changed[:3]}"
    history = (stage2 / "loss_history.csv").read_text().splitlines()
    assert len(history) == 5  # header + 4 steps: the head trained


def test_recompute_over_chunks_trains_like_no_recompute_under_data_parallel(setup):
    base, cfg = setup
    runs = {}
    for recompute in ("false", "true"):
        save = base / f"recompute_{recompute}"
        model = "model={type: ICHSequenceClassifier, encoder: %s, head: {type: BiGRUSequenceHead, hidden_size: 8, num_layers: 1}}" % (
            ENCODER % (2, recompute))
        done = launch(base / f"log_rc_{recompute}", "train", "--config", cfg, "--save_dir", str(save),
                      "--num_workers", "0", "--log_iters", "1", "-o", model)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        log = (save / "train.log").read_text() + (save / "train.rank1.log").read_text()
        assert "has been ready before" not in log
        runs[recompute] = params(save / "iter_4")
    plain, recomputed = runs["false"], runs["true"]
    trained = [k for k in plain if not k.endswith(("_mean", "_variance"))]
    for key in trained:  # BatchNorm running stats are updated again by the recomputation; weights are not
        np.testing.assert_allclose(recomputed[key], plain[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_every_rank_takes_rank_0s_save_dir_decision(setup):
    base, cfg = setup
    occupied = base / "occupied"
    occupied.mkdir()
    (occupied / "loss_history.csv").write_text("iteration,loss\n1,0.5\n")
    # rank 1 sees another (empty) directory, as on a node-local disk of a second node
    done = launch(base / "log_savedir", "train", "--config", cfg, "--save_dir", str(occupied), "--num_workers", "0",
                  extra_env={"MEDSEG_TEST_RANK1_SAVE_DIR": str(base / "elsewhere")})
    assert done.returncode != 0
    for rank in (0, 1):
        log = (base / "log_savedir" / f"workerlog.{rank}").read_text()
        assert f"{occupied}: save_dir already holds a run" in log, (rank, log[-2000:])
    assert not (base / "elsewhere").exists()
