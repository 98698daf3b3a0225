"""script/gpu_check.sh on a CPU: the float32 cases of a tiny config with 1 and 2 processes, with
and without recompute, each evaluating and saving, then resume and inference; one row per case."""

import json
import os
import subprocess
import sys

import pytest

from medseg.tools import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_runs_every_cpu_case_and_prints_one_row_each(tmp_path):
    # PYTHONPATH: this checkout, standing in for the install ``make venv`` does
    env = dict(os.environ, PYTHON=sys.executable, WORK=str(tmp_path / "check"), ITERS="3", OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore", PYTHONPATH=ROOT)
    done = subprocess.run(["bash", os.path.join(ROOT, "script", "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = [ln for ln in done.stdout.splitlines() if ln.startswith("| fp32")]
    names = [r.split("|")[1].strip() for r in rows]
    assert names == ["fp32_1p", "fp32_1p_resume", "fp32_1p_infer", "fp32_1p_rc", "fp32_2p", "fp32_2p_rc"]
    assert all("| pass |" in r for r in rows)
    for row in rows:  # a measured throughput in every row
        assert float(row.split("|")[4]) > 0
    # both ranks of a 2-process case reported, and the resumed run continued from iteration 3
    assert os.path.isfile(tmp_path / "check" / "results" / "fp32_2p_rc.rank1.json")
    history = (tmp_path / "check" / "runs" / "fp32_1p" / "loss_history.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in history[1:]] == ["1", "2", "3", "4", "5"]


def test_a_case_without_results_is_a_failure(tmp_path):
    os.makedirs(tmp_path / "results")
    (tmp_path / "results" / "a.rank0.json").write_text(json.dumps({"ok": True, "peak_gpu_mb": 900.0, "slices_per_s": 10.0}))
    (tmp_path / "results" / "a.rank1.json").write_text(json.dumps({"ok": True, "peak_gpu_mb": 1000.0, "slices_per_s": 9.0}))
    (tmp_path / "results" / "b.rank0.json").write_text(json.dumps({"ok": False, "error": "DeviceError: bf16"}))
    text, ok = gpu_check.table(str(tmp_path), ["a", "b", "c"])
    lines = text.splitlines()
    assert not ok
    assert lines[2] == "| a | pass | 1000 | 19.0 |  |"  # peak over ranks, throughput summed
    assert lines[3].startswith("| b | FAIL |") and "DeviceError: bf16" in lines[3]
    assert lines[4].startswith("| c | FAIL |") and "no result" in lines[4]


def test_gpu_cases_cover_every_precision_the_gpu_has(monkeypatch):
    import paddle

    monkeypatch.setattr(gpu_check, "on_gpu", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda: (7, 0))  # V100: no bfloat16
    names = [c[0] for c in gpu_check.cases()]
    assert names == [f"{p}_{n}p{rc}" for n in (1, 4) for p in ("fp32", "O1-fp16", "O2-fp16") for rc in ("", "_rc")]
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda: (8, 0))  # A100
    cases = gpu_check.cases()
    assert ("O2-bf16_4p_rc", 4, "O2", "bfloat16", True) in cases and len(cases) == 20
