"""Two CPU processes under ``paddle.distributed.launch`` (gloo): replicas stay identical, sharded
inference equals single-process inference, and a dying rank fails the launch with its cause."""

import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from engine_fixtures import make_prepared, write_config
from medseg.tools import infer

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
