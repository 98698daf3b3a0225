"""Every shell command in the README's code blocks runs, so the documentation cannot drift.

The commands are read from README.md and run as written, in order, from an empty folder, with
the paths swapped for a tiny synthetic cohort and these substitutions (the originals need real
data, GPUs or hours):

* ``make demo`` and ``make test`` are not run here: ``make test`` is this suite, and
  tests/test_end_to_end.py runs ``script/demo.sh`` (what ``make demo`` runs) at toy size;
* the cluster commands (a two-node launch, ``sbatch``) need nodes: tests/test_launch_scripts.py
  runs both scripts with a stand-in launcher and checks what they hand it, and
  ``script/gpu_check.sh`` (about a minute on a CPU) runs in tests/test_gpu_check.py;
* the paper's configs (Swin-B at 224 px, 60k iterations) become the same configs with a two-stage
  Swin at 32 px and 2 iterations (``_tiny_config``); the demo config is used as it is;
* ``--nproc_per_node 4`` becomes 2 (two CPU processes, gloo), ``--workers 8`` becomes 2, the
  synthetic cohort's ``--series 100 --size 256`` becomes ``--series 4 --size 64``;
* ``VAL_PRED.csv``/``TRUTH.csv``/``VAL_TRUTH.csv`` are the test split's predictions and the
  cohort's test truth, ``CONFIG`` and ``output/x`` the (tiny) paper config and its run
  (``output/kfold`` its K-fold run), ``a.csv``/``b.csv`` the test split's predictions twice;
  ``script/pseudo_label.sh`` and ``script/kfold.sh`` run with ``NUM_WORKERS=0``.

The tools import this checkout through ``PYTHONPATH``, standing in for the install ``make venv``
does (the shared test environment must not have it installed).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import paddle
import pytest

from medseg.config import Config
from medseg.data.synthetic import generate_cohort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Commands (by their start) run elsewhere, see the module docstring; each must still be in the README.
NOT_RUN = {
    "make demo": "this suite and tests/test_end_to_end.py",
    "make test": "this suite",
    "script/gpu_check.sh": "tests/test_gpu_check.py",
    "NNODES=2 ": "tests/test_launch_scripts.py (needs two nodes)",
    "sbatch ": "tests/test_launch_scripts.py (needs SLURM)",
}
FLAG_VALUES = {("--nproc_per_node", "4"): "2", ("--workers", "8"): "2", ("--series", "100"): "4", ("--size", "256"): "64"}


def readme_commands() -> list[str]:
    """The shell commands of the README's ``bash``/``sh`` blocks: continuations joined, comments dropped."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


def _tiny_config(path: str, base: str, prepared: str, student: bool = False) -> str:
    """``base`` at toy size: a two-stage 32 px Swin, 2 iterations, the tiny prepared dataset."""
    noised = """[{type: RandomResizedCrop, size: 32, scale: [0.8, 1.2]}, {type: HorizontalFlip},
      {type: Normalize, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}, {type: ToCHW}]"""
    train = (f"""  type: MixedSeriesDataset
  ratios: [3, 1]
  datasets:
    - {{type: RSNASeriesDataset, dataset_root: {prepared}, split: train, transforms: {noised}}}
    - {{type: PseudoSeriesDataset, dataset_root: {prepared}, split: test_pseudo, exclude_splits: [train, val],
       transforms: {noised}}}""" if student else f"""  dataset_root: {prepared}
  transforms: {noised}""")
    inherit = "\n  _inherited_: false" if student else ""
    text = f"""_base_: {base}
iters: 2
model:
  encoder: {{variant: null, img_size: 32, embed_dim: 8, depths: [1, 1], num_heads: [1, 2], window_size: 4}}
train_dataset:{inherit}
{train}
val_dataset:
  dataset_root: {prepared}
  transforms: [{{type: Resize, size: 32}}, {{type: Normalize, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}},
    {{type: ToCHW}}]
"""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def _substitute(command: str, paths: dict[str, str]) -> list[str]:
    words = shlex.split(command)
    out = []
    for i, word in enumerate(words):
        previous = words[i - 1] if i else ""
        if (previous, word) in FLAG_VALUES:
            word = FLAG_VALUES[(previous, word)]
        for old, new in paths.items():  # longest first: "output/paper/best_model" before "output/paper"
            if word == old or word.startswith(old + "/"):
                word = new + word[len(old):]
                break
        out.append(word)
    if out[0] == "python":
        out[0] = sys.executable
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    raw, prepared = str(tmp / "raw"), str(tmp / "prepared")
    generate_cohort(raw, 14, seed=3, size=48, n_slices=4)
    demo_ckpt = str(tmp / "demo_ckpt")
    paddle.seed(0)
    model = Config(os.path.join(ROOT, "config", "demo_cpu.yml")).build("model")
    os.makedirs(demo_ckpt)
    paddle.save(model.state_dict(), os.path.join(demo_ckpt, "model.pdparams"))  # untrained: export does not care
    paper = os.path.join(ROOT, "config", "brain_intracranial_hemorrhage_clas_sequential.yml")
    student = os.path.join(ROOT, "config", "semi", "student_paper.yml")
    paths = {
        "config/brain_intracranial_hemorrhage_clas_sequential.yml": _tiny_config(str(tmp / "paper.yml"), paper, prepared),
        "config/semi/student_paper.yml": _tiny_config(str(tmp / "student.yml"), student, prepared, student=True),
        "output/demo/best_model": demo_ckpt,
        "/path/to/study": os.path.join(raw, "stage_2_test"),
        "VAL_PRED.csv": str(tmp / "output" / "paper" / "test.csv"),
        "TRUTH.csv": os.path.join(raw, "stage_2_test_truth.csv"),
        "VAL_TRUTH.csv": os.path.join(raw, "stage_2_test_truth.csv"),
        "CONFIG": str(tmp / "paper.yml"),
        "output/x": str(tmp / "output" / "paper"),
        "a.csv": str(tmp / "output" / "paper" / "test.csv"),
        "b.csv": str(tmp / "output" / "paper" / "test.csv"),
        "data/rsna_prepared": prepared,
        "output/paper": str(tmp / "output" / "paper"),  # absolute: script/*.sh run from the repository root
        "output/kfold": str(tmp / "output" / "kfold"),
        "RAW": raw,
    }
    for script in ("train.py", "infer.py", "export.py", "script/pseudo_label.sh", "script/kfold.sh", "config/demo_cpu.yml"):
        paths[script] = os.path.join(ROOT, script)
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "NUM_WORKERS": "0"}
    return tmp, dict(sorted(paths.items(), key=lambda kv: -len(kv[0]))), env


def test_readme_lists_the_commands_this_test_knows():
    commands = readme_commands()
    assert {"make demo", "make test"} <= set(commands)
    for start in NOT_RUN:  # an entry for a command the README no longer has is stale
        assert any(c.startswith(start) for c in commands), f"NOT_RUN entry {start!r} matches no README command"
    assert any(c.startswith("python export.py --config config/demo_cpu.yml") for c in commands)
    assert len(commands) >= 12


@pytest.mark.slow
def test_every_readme_command_runs(workspace):
    tmp, paths, env = workspace
    for command in readme_commands():
        if any(command.startswith(start) for start in NOT_RUN):
            continue
        argv = _substitute(command, paths)
        if argv[0].endswith(".sh"):
            argv = ["bash", *argv]
        proc = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n-> {shlex.join(argv)}\n{(proc.stdout + proc.stderr)[-3000:]}"
    # What the steps promise, briefly: a submission, a report, an export that predict used.
    assert (tmp / "submission.csv").stat().st_size > 0 and (tmp / "report" / "index.html").is_file()
    assert (tmp / "results" / "predictions.csv").is_file()
