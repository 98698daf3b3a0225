"""Every tool, given what a new user gets wrong: a non-zero exit and one line ``error: …`` naming
the problem, never a traceback (``medseg.utils.cli``). Real subprocesses, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.slow  # 18 tool processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def _cases(tmp) -> dict[str, tuple[list[str], str]]:
    """name → (command, text the error line must contain)."""
    raw_empty = tmp / "raw_empty"
    (raw_empty / "stage_2_train").mkdir(parents=True)
    (raw_empty / "stage_2_train.csv").write_text("ID,Label\n")
    a_file = tmp / "a_file"
    a_file.write_text("")
    (tmp / "unknown.yml").write_text("model:\n  type: NoSuchModel\n")
    (tmp / "broken.yml").write_text("model: [1, 2\n")
    missing = str(tmp / "missing")
    demo = os.path.join(ROOT, "config", "demo_cpu.yml")
    return {
        "prepare: label table without rows": (
            [PY, "-m", "medseg.data.prepare", "--raw_root", str(raw_empty), "--dataset_root", str(tmp / "d1"), "--workers", "1"],
            "stage_2_train.csv: no label rows"),
        "prepare: raw root missing": (
            [PY, "-m", "medseg.data.prepare", "--raw_root", missing, "--dataset_root", str(tmp / "d2")], "missing: neither"),
        "prepare: malformed --windows": (
            [PY, "-m", "medseg.data.prepare", "--raw_root", missing, "--dataset_root", str(tmp / "d3"), "--windows", "40x80"],
            "--windows"),
        "synthetic: --out is a file": ([PY, "-m", "medseg.data.synthetic", "--out", str(a_file), "--series", "2"], "a_file"),
        "synthetic: --series 0": ([PY, "-m", "medseg.data.synthetic", "--out", str(tmp / "s"), "--series", "0"], "got 0"),
        "model_info: config missing": (
            [PY, "-m", "medseg.tools.model_info", "--config", str(tmp / "nope.yml")], "config file not found"),
        "model_info: unknown type": (
            [PY, "-m", "medseg.tools.model_info", "--config", str(tmp / "unknown.yml")], "unknown"),
        "train: no --config": ([PY, os.path.join(ROOT, "train.py")], "--config"),
        "train: invalid YAML": ([PY, os.path.join(ROOT, "train.py"), "--config", str(tmp / "broken.yml")], "not valid YAML"),
        "infer: checkpoint missing": (
            [PY, os.path.join(ROOT, "infer.py"), "--config", demo, "--resume_model", missing], "checkpoint not found"),
        "export: checkpoint missing": (
            [PY, os.path.join(ROOT, "export.py"), "--config", demo, "--model", missing, "--save_dir", str(tmp / "e")],
            "checkpoint not found"),
        "predict: model missing": (
            [PY, "-m", "medseg.predict", "--config", demo, "--model", missing, "--dicom_dir", str(tmp), "--out", str(tmp / "p")],
            "missing: neither"),
        "submission: predictions missing": (
            [PY, "-m", "medseg.outputs.submission", "--pred", missing, "--sample", str(a_file), "--out", str(tmp / "s.csv")],
            "file not found"),
        "report: empty tables": (
            [PY, "-m", "medseg.outputs.report", "--pred", str(a_file), "--truth", str(a_file), "--out", str(tmp / "r")], "empty"),
        "calibrate: predictions missing": (
            [PY, "-m", "medseg.outputs.calibrate", "--pred", missing, "--truth", missing, "--out", str(tmp / "c.json")],
            "missing"),
        "ensemble: empty input": ([PY, "-m", "medseg.outputs.ensemble", "--inputs", str(a_file), "--out", str(tmp / "x.csv")], "empty"),
        "subset: no prepared dataset": (
            [PY, "-m", "medseg.semi.subset", "--dataset_root", missing], "train_meta.csv: meta file not found"),
        "pseudo_label: --out outside the dataset root": (
            [PY, "-m", "medseg.semi.pseudo_label", "--config", demo, "--model", missing, "--split", "test",
             "--dataset_root", str(tmp), "--out", str(tmp / "elsewhere" / "x_meta.csv")], "must be written into the dataset root"),
        "pseudo_label: --out not a meta table": (
            [PY, "-m", "medseg.semi.pseudo_label", "--config", demo, "--model", missing, "--split", "test",
             "--dataset_root", str(tmp), "--out", str(tmp / "x.csv")], "must be named <tag>_meta.csv"),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cases = _cases(tmp)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(command):
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:  # two at a time: most of each run is imports
        done = dict(zip(cases, pool.map(run, [command for command, _ in cases.values()])))
    return {name: (done[name], expected) for name, (_, expected) in cases.items()}


CASES = [
    "prepare: label table without rows", "prepare: raw root missing", "prepare: malformed --windows",
    "synthetic: --out is a file", "synthetic: --series 0", "model_info: config missing", "model_info: unknown type",
    "train: no --config", "train: invalid YAML", "infer: checkpoint missing", "export: checkpoint missing",
    "predict: model missing", "submission: predictions missing", "report: empty tables", "ensemble: empty input",
    "calibrate: predictions missing",
    "subset: no prepared dataset", "pseudo_label: --out outside the dataset root", "pseudo_label: --out not a meta table",
]


def test_every_case_runs(results):
    assert sorted(results) == sorted(CASES)


@pytest.mark.parametrize("name", CASES)
def test_bad_input_ends_in_one_error_line(results, name):
    proc, expected = results[name]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, (name, proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, (name, proc.stderr[-2000:])
    assert len(errors) == 1 and proc.stderr.rstrip().splitlines()[-1] == errors[0], (name, proc.stderr[-2000:])
    assert expected in errors[0], (name, errors[0])


def test_console_log_follows_the_current_stdout(capsys):
    """A logger set up while stdout was another stream (since closed) still logs, to today's stdout."""
    import io

    from medseg.utils.logger import get_logger, setup_logger

    saved, sys.stdout = sys.stdout, io.StringIO()
    try:
        setup_logger()
        get_logger("cli").info("to the stream of that moment")
        earlier = sys.stdout.getvalue()
        sys.stdout.close()
    finally:
        sys.stdout = saved
    get_logger("cli").info("after it closed")
    captured = capsys.readouterr()
    assert "to the stream of that moment" in earlier
    assert "after it closed" in captured.out and "Logging error" not in captured.err
