"""The demo pipeline in miniature: synthetic cohort → prepare → train the encoder (two processes) →
embed → train the sequence model on the embeddings → calibrate → join → infer → submission → report.

Runs `script/demo.sh` itself (what `make demo` runs) on a tiny cohort and a tiny model, so the
shell glue, the CLIs and the file formats between the stages are all exercised together.
"""

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from medseg.models.encoders.cnn import CNNEncoder

pytestmark = pytest.mark.slow  # end to end (script/demo.sh)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = """
_base_: {base}
iters: 4
batch_size: {batch}
model:
  encoder: {{arch: mobilenet_v3_small, scale: 0.5, img_size: 32}}
  head: {head}
train_dataset:
  transforms:
    - {{type: RandomResizedCrop, size: 32, scale: [0.8, 1.2]}}
    - {{type: HorizontalFlip, prob: 0.5}}
    - {{type: Normalize, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
    - {{type: ToCHW}}
val_dataset:
  transforms:
    - {{type: Resize, size: 32}}
    - {{type: Normalize, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
    - {{type: ToCHW}}
"""

TINY_EMBED = """
_base_: {base}
iters: 4
model:
  encoder: {{feature_dim: {width}}}
  head: {{hidden_size: 16}}
"""


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    configs = {}
    for stage, base, batch, head in (("PRETRAIN_CONFIG", "demo_cpu_pretrain.yml", 4, "{dim_feedforward: 16}"),
                                     ("CONFIG", "demo_cpu.yml", 1, "{hidden_size: 16}")):  # stage 2: BiGRU head
        configs[f"DEMO_{stage}"] = str(tmp / base)
        (tmp / base).write_text(TINY.format(base=os.path.join(ROOT, "config", base), batch=batch, head=head))
    # stage 2 on the embeddings: the demo's embeddings config on the tiny image config, its features as wide
    width = CNNEncoder(arch="mobilenet_v3_small", scale=0.5).feature_dim
    configs["DEMO_EMBED_CONFIG"] = str(tmp / "demo_cpu_embed.yml")
    (tmp / "demo_cpu_embed.yml").write_text(TINY_EMBED.format(base=os.path.join(ROOT, "config", "demo_cpu_embed.yml"), width=width))
    env = dict(os.environ, PYTHON=sys.executable, DEMO_OUT=str(tmp / "out"), DEMO_SERIES="8", DEMO_SIZE="64",
               DEMO_SLICES="6", DEMO_SAVE_INTERVAL="2", DEMO_PROCS="2", OMP_NUM_THREADS="1", **configs)
    proc = subprocess.run(["bash", os.path.join(ROOT, "script", "demo.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "out", proc.stdout


def test_demo_ends_with_the_score_line(demo_run):
    out, stdout = demo_run
    last = stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"weighted_logloss=([0-9.]+) prior=([0-9.]+) ratio=([0-9.]+)", last)
    assert match, last
    loss, prior, ratio = map(float, match.groups())
    assert ratio == pytest.approx(loss / prior, rel=1e-3)
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["weighted_logloss"] == pytest.approx(loss, rel=1e-5)


def test_demo_submission_matches_the_sample(demo_run):
    out, _ = demo_run
    with open(out / "raw" / "stage_2_sample_submission.csv") as fh:
        sample = [row["ID"] for row in csv.DictReader(fh)]
    with open(out / "submission.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["ID"] for row in rows] == sample
    assert all(0.0 < float(row["Label"]) < 1.0 for row in rows)


def test_demo_left_a_checkpoint_and_a_report(demo_run):
    out, stdout = demo_run
    assert (out / "pretrain" / "iter_4").is_dir()
    # the embeddings are the stage-1 encoder's, and stage 2 starts from its slice head (2 tensors)
    assert re.search(rf"{out / 'pretrain' / 'iter_4'}/model.pdparams: loaded \d+ tensors, \d+ model tensors not in the file, 0 file tensors unused", stdout)
    assert f"{out / 'pretrain' / 'iter_4'}/model.pdparams: loaded 2 tensors" in stdout
    for step in ("pretrain", "embed", "infer"):  # stage 1, the embeddings and the inference on two processes
        assert (out / "logs" / step / "workerlog.1").is_file(), step
    assert "Skip loading for" not in stdout  # the partial load is reported once, not as a Paddle warning per tensor
    assert (out / "embeddings" / "manifest.json").is_file()
    assert (out / "train" / "best_model").is_dir()
    assert (out / "train" / "iter_4").is_dir()
    assert (out / "report" / "index.html").is_file()
    # step 6 calibrated on the validation embeddings; the joined model carries the calibration, and
    # the report shows the calibration error before/after
    assert (out / "train" / "best_model" / "calibration.json").is_file()
    assert (out / "model" / "calibration.json").is_file()
    assert (out / "model" / "config.yml").is_file()
    assert re.search(r"^ece before=[0-9.]+ after=[0-9.]+", stdout, re.M)
    for name in ("train_meta.csv", "val_meta.csv", "test_meta.csv", "prepare_errors.csv"):
        assert (out / "prepared" / name).is_file(), name
