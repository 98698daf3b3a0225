"""bench/external.sh in smoke mode: train on all sites but one, score in-domain and on the held-out
site (through medseg.predict), print both score lines and exit 1 when the target is missed."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.test_end_to_end import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = r"{} weighted_logloss=([0-9.]+) prior=([0-9.]+) ratio=([0-9.]+)"


@pytest.mark.slow  # end to end: bench/external.sh (synthetic sites, training, predict)
def test_leave_one_site_out_smoke(tmp_path):
    configs = {}
    for stage, base, batch, head in (("PRETRAIN_CONFIG", "demo_cpu_pretrain.yml", 4, "{dim_feedforward: 16}"),
                                     ("CONFIG", "demo_cpu.yml", 1, "{hidden_size: 16}")):
        configs[f"DEMO_{stage}"] = str(tmp_path / base)
        (tmp_path / base).write_text(TINY.format(base=os.path.join(ROOT, "config", base), batch=batch, head=head))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), SMOKE="1", HOLDOUT="legacy", SITES="classic,sharp,legacy",
               SERIES="8", EXT_SERIES="4", DEMO_PROCS="1", OMP_NUM_THREADS="1", **configs)
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "external.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    text = proc.stdout
    assert proc.returncode == 1, text[-3000:] + proc.stderr[-3000:]  # a 4-step model misses the target
    assert "target external ratio <= 0.6: NOT met" in text
    for name in ("in_domain", "external"):
        match = re.search(LINE.format(name), text)
        assert match, text
        loss, prior, ratio = map(float, match.groups())
        assert ratio == pytest.approx(loss / prior, rel=1e-3)
        assert re.search(rf"{name} ece before=[0-9.]+ after=[0-9.]+", text)
    manifest = json.loads((out / "in_domain" / "raw" / "synthetic_cohort.json").read_text())
    assert manifest["params"]["sites"] == ["classic", "sharp"], "the held-out site is not trained on"
    external = json.loads((out / "external_raw" / "synthetic_cohort.json").read_text())
    assert external["summary"]["sites"] == {"legacy": 4}
    assert (out / "in_domain" / "train" / "best_model" / "calibration.json").is_file()
