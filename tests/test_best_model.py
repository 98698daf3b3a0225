"""best_model/ is what every reported test score is computed from: it must hold the lowest
validation score the run logged and exactly the weights of that iteration, also across a resume."""

import json
import re

import numpy as np
import paddle
import pytest

import infer
import train
from engine_fixtures import make_prepared, write_config

ITERS = 8
EVAL_LINE = re.compile(r"\[EVAL\] \d+ series, \d+ slices, weighted log loss ([0-9.]+)")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("best")
    root = make_prepared(str(base / "data"), {"train": 6, "val": 5}, size=40, seed=3)
    # A high learning rate makes the validation score go up and down, so the best iteration is
    # not simply the last one (checked below, or the test could not tell the two apart).
    cfg = write_config(str(base / "cfg.yml"), root, size=32, iters=ITERS, batch_size=2, total_iters=10 * ITERS)
    return base, cfg


def run(cfg, save_dir, *flags):
    argv = ["--config", cfg, "--save_dir", str(save_dir), "--do_eval", "--save_interval", "1", "--log_iters", "1",
            "--keep_checkpoint_max", str(ITERS), "-o", "lr_scheduler.learning_rate=0.5", *flags]
    assert train.main(argv) == 0


def logged_scores(save_dir):
    text = (save_dir / "train.log").read_text()
    return [float(m.group(1)) for m in EVAL_LINE.finditer(text)]


def rescored(cfg, save_dir, iteration):
    """The validation score of iter_<iteration>/, computed again by infer.py."""
    out = save_dir / "rescore" / f"val_{iteration}.csv"
    assert infer.main(["--config", cfg, "--resume_model", str(save_dir / f"iter_{iteration}"), "--split", "val",
                       "--output", str(out)]) == 0
    return json.loads((save_dir / "rescore" / f"val_{iteration}_metrics.json").read_text())["weighted_logloss"]


def assert_best_is_the_minimum(cfg, save_dir):
    logged = logged_scores(save_dir)
    assert len(logged) == ITERS  # one evaluation per iteration
    scores = [rescored(cfg, save_dir, i) for i in range(1, ITERS + 1)]
    np.testing.assert_allclose(scores, logged, atol=6e-6)  # the log shows 5 decimals
    best_iter = int(np.argmin(scores)) + 1  # the first of equal minima, as "score < best" keeps it
    assert best_iter != ITERS, f"the best iteration is the last ({scores}); the test cannot tell best from last"
    summary = json.loads((save_dir / "best_model" / "score.json").read_text())
    assert summary["iteration"] == best_iter, (summary, scores)
    assert summary["weighted_logloss"] == pytest.approx(min(scores), abs=1e-9)
    best = paddle.load(str(save_dir / "best_model" / "model.pdparams"))
    same_iter = paddle.load(str(save_dir / f"iter_{best_iter}" / "model.pdparams"))
    assert sorted(best) == sorted(same_iter)
    for key in best:  # bit-equal, BatchNorm statistics included
        np.testing.assert_array_equal(best[key].numpy(), same_iter[key].numpy(), err_msg=key)
    return best_iter


def test_best_model_holds_the_lowest_logged_score_and_that_iterations_weights(setup):
    base, cfg = setup
    assert_best_is_the_minimum(cfg, base / "whole")


def test_best_model_survives_a_resume(setup):
    """Stopped right at the best iteration and resumed: the later, worse iterations must not replace
    it (the resumed run has to remember the best score, not only the weights)."""
    base, cfg = setup
    best_iter = json.loads((base / "whole" / "best_model" / "score.json").read_text())["iteration"]
    save = base / "resumed"
    run(cfg, save, "--iters", str(best_iter))
    run(cfg, save, "--resume_model", str(save / f"iter_{best_iter}"))
    assert assert_best_is_the_minimum(cfg, save) == best_iter


@pytest.fixture(scope="module", autouse=True)
def whole_run(setup):
    base, cfg = setup
    run(cfg, base / "whole")
