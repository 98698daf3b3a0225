"""The GPU-cluster paths that a 2-process CPU launch (gloo) can exercise: a frozen encoder stays
frozen under paddle.DataParallel, recompute over chunks trains the same weights as no recompute,
and every rank takes rank 0's save_dir decision even when their disks differ."""

import os

import numpy as np
import paddle
import pytest

import train
from engine_fixtures import make_prepared, write_config
from test_distributed import launch

ENCODER = "{type: CNNEncoder, arch: mobilenet_v3_small, scale: 0.5, chunk_size: %d, recompute: %s}"
SLICE_LOSS = "loss={type: MixedLoss, losses: [{type: MaskedWeightedBCE}], coef: [1], outputs: [slice]}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu_paths")
    # series of 3-8 slices, chunks of 2: every series spans several encoder chunks
    root = make_prepared(str(base / "data"), {"train": 4, "val": 3}, size=40)
    cfg = write_config(str(base / "cfg.yml"), root, size=32, iters=3, batch_size=1)
    return base, cfg


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
    before, after = params(stage1 / "iter_2"), params(stage2 / "iter_3")
    encoder = [k for k in before if k.startswith("encoder.")]
    assert any(k.endswith("_mean") for k in encoder) and any(k.endswith("_variance") for k in encoder)
    changed = [k for k in encoder if not np.array_equal(before[k], after[k])]
    assert not changed, f"{len(changed)} of {len(encoder)} encoder tensors moved, e.g. {changed[:3]}"
    history = (stage2 / "loss_history.csv").read_text().splitlines()
    assert len(history) == 4  # header + 3 steps: the head trained


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
        runs[recompute] = params(save / "iter_3")
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
