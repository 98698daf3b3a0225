"""Every shell command in the README's code blocks runs, so the documentation cannot drift.

The commands are read from README.md and run as written, in order, from an empty folder (the few
that need nothing the others make, ``SIDE``, run in a second stream beside them), with the paths
swapped for a tiny synthetic cohort and these substitutions (the originals need real data, GPUs or
hours):

* ``make demo`` and ``make test`` are not run here: ``make test`` is this suite, and
  tests/test_end_to_end.py runs ``script/demo.sh`` (what ``make demo`` runs) at toy size;
* ``medseg-listen`` serves until it is stopped: tests/test_node.py and tests/test_node_orthanc.py
  run it against a sender and a real PACS;
* the cluster commands (a two-node launch, ``sbatch``) need nodes: tests/test_launch_scripts.py
  runs both scripts with a stand-in launcher and checks what they hand it, and
  ``script/gpu_check.sh`` (about a minute on a CPU) runs in tests/test_gpu_check.py;
* the paper's configs (Swin-B at 224 px, 60k iterations) become the same configs with a two-stage
  Swin at 32 px and 2 iterations (``_tiny_config``); the demo config is used as it is;
* ``--nproc_per_node 4`` becomes 2 (two CPU processes, gloo), ``--workers 8`` becomes 2, the
  synthetic cohort's ``--series 100 --size 256`` becomes ``--series 4 --size 64``, prepare's
  ``--folds 3`` becomes 2 (K-fold training is the same code for any K; two folds train two models
  instead of three);
* ``VAL_PRED.csv``/``TRUTH.csv``/``VAL_TRUTH.csv`` are the test split's predictions and the
  cohort's test truth, ``CONFIG`` and ``output/x`` the (tiny) paper config and its run
  (``output/kfold`` its K-fold run), ``a.csv``/``b.csv`` the test split's predictions twice;
  ``script/pseudo_label.sh`` and ``script/kfold.sh`` run with ``NUM_WORKERS=0``.

The tools import this checkout through ``PYTHONPATH``, standing in for the install ``make venv``
does (the shared test environment must not have it installed).

The commands the README names in running text (results and benchmark tables, ``DEMO_SITES=classic
make demo``, ``SEMI_RUNS=2 bench/semi.sh``, ``--tta``, …) are too long to run here; for those,
:func:`test_readme_inline_references_exist` checks that what they name exists: make targets,
scripts and the environment knobs they read, modules, console scripts, flags, repository paths, and
the docs sections and anchors the README points to.
"""

from __future__ import annotations

import concurrent.futures
import glob
import importlib.util
import itertools
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
    "medseg-listen ": "tests/test_node.py and tests/test_node_orthanc.py (a server that runs until stopped)",
}
# Commands (by their start) that read only the cohort, the demo checkpoint and the configs, and write
# only their own outputs (the export, results/, data/synth): they run beside the others.
SIDE = ("python -m medseg.tools.model_info", "python export.py", "python -m medseg.predict",
        "python -m medseg.data.synthetic")
FLAG_VALUES = {("--nproc_per_node", "4"): "2", ("--workers", "8"): "2", ("--series", "100"): "4", ("--size", "256"): "64",
               ("--folds", "3"): "2"}


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
    for start in (*NOT_RUN, *SIDE):  # an entry for a command the README no longer has is stale
        assert any(c.startswith(start) for c in commands), f"entry {start!r} matches no README command"
    assert any(c.startswith("python export.py --config config/demo_cpu.yml") for c in commands)
    assert len(commands) >= 12


def _run_in_order(commands: list[str], tmp, paths: dict[str, str], env: dict[str, str]) -> list[str]:
    """Run ``commands`` one after the other from ``tmp``; the failures (command, argv, output tail)."""
    failures = []
    for command in commands:
        argv = _substitute(command, paths)
        if argv[0].endswith(".sh"):
            argv = ["bash", *argv]
        proc = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            failures.append(f"{command}\n-> {shlex.join(argv)}\n{(proc.stdout + proc.stderr)[-3000:]}")
            break  # later commands of this stream may need this one's output
    return failures


@pytest.mark.slow
def test_every_readme_command_runs(workspace):
    """The README's commands in its order; those that read nothing the others write (SIDE) run in a
    second stream beside the rest, in their own order: about a fifth less time on two cores."""
    tmp, paths, env = workspace
    commands = [c for c in readme_commands() if not any(c.startswith(start) for start in NOT_RUN)]
    side = [c for c in commands if c.startswith(SIDE)]
    main = [c for c in commands if not c.startswith(SIDE)]
    assert side and main
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        side_failures = pool.submit(_run_in_order, side, tmp, paths, env)
        failures = _run_in_order(main, tmp, paths, env) + side_failures.result()
    assert not failures, "\n\n".join(failures)
    # What the steps promise, briefly: a submission, a report, an export that predict used.
    assert (tmp / "submission.csv").stat().st_size > 0 and (tmp / "report" / "index.html").is_file()
    assert (tmp / "results" / "predictions.csv").is_file()


def _readme_text() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        return fh.read()


def _source_text() -> str:
    """Every script, bench, Makefile and Python source of the checkout, where flags and knobs are read."""
    parts = []
    for pattern in ("Makefile", "*.py", "script/*", "bench/*", "medseg/**/*.py"):
        for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as fh:
                    parts.append(fh.read())
    return "\n".join(parts)


def _expand(path: str) -> list[str]:
    """``a_{x,y}.yml`` -> ``a_x.yml``, ``a_y.yml`` (the README's one brace form)."""
    m = re.search(r"\{([^}]*)\}", path)
    return [path[:m.start()] + alt + path[m.end():] for alt in m.group(1).split(",")] if m else [path]


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def inline_problems(text: str) -> list[str]:
    """What the README's inline code and docs references name that does not exist (empty: all true)."""
    source = _source_text()
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as fh:
        targets = set(re.findall(r"^([\w-]+):", fh.read(), flags=re.M))
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as fh:
        scripts = set(re.findall(r"^(medseg-[\w-]+)\s*=", fh.read(), flags=re.M))
    problems = []
    for span in re.findall(r"`([^`\n]+)`", text):
        try:
            words = shlex.split(span)
        except ValueError:  # an unbalanced quote: prose, not a command
            words = span.split()
        lead = list(itertools.takewhile(lambda w: re.fullmatch(r"[A-Z][A-Z0-9_]*=.*", w, flags=re.S), words))
        knobs = [w.split("=", 1)[0] for w in lead]
        rest = words[len(lead):]
        first = rest[0] if rest else ""
        ours = first in ("make", "python") or first.startswith(("script/", "bench/", "medseg-", "medseg.", "--"))
        for knob in knobs:  # an environment knob must be read somewhere (MKL_CBWR: MKL's own, named as such)
            if knob not in source and knob != "MKL_CBWR":
                problems.append(f"`{span}`: {knob} is read nowhere")
        if first == "make" and len(rest) > 1 and rest[1] not in targets:
            problems.append(f"`{span}`: no make target {rest[1]}")
        if first.startswith("medseg-") and first not in scripts:
            problems.append(f"`{span}`: no console script {first}")
        module = rest[2] if first == "python" and rest[1:2] == ["-m"] and len(rest) > 2 else (
            first if re.fullmatch(r"medseg(\.\w+)+", first) else "")
        if module and not module.startswith("<") and importlib.util.find_spec(module) is None:
            problems.append(f"`{span}`: no module {module}")
        for word in rest if ours else []:
            flag = word.split("=", 1)[0]
            if re.fullmatch(r"--[a-z][\w-]*", flag) and flag not in source:
                problems.append(f"`{span}`: flag {flag} is parsed nowhere")
        for word in rest:
            if re.match(r"(config|medseg|script|bench|docs|tests)/", word) and "<" not in word:
                for path in _expand(word):
                    if not glob.glob(os.path.join(ROOT, path)):
                        problems.append(f"`{span}`: no {path}")
    for doc, anchor in re.findall(r"\]\((docs/[\w.]+\.md)(?:#([\w-]+))?\)", text):
        if not os.path.isfile(os.path.join(ROOT, doc)):
            problems.append(f"link to missing {doc}")
        elif anchor:
            with open(os.path.join(ROOT, doc), encoding="utf-8") as fh:
                slugs = {_slug(h) for h in re.findall(r"^#+ (.*)$", fh.read(), flags=re.M)}
            if anchor not in slugs:
                problems.append(f"link to {doc}#{anchor}: no such heading")
    for doc, sections in re.findall(r"(docs/[\w.]+\.md), ((?:\"[^\"]+\"(?:,\s*)?)+)", text):
        with open(os.path.join(ROOT, doc), encoding="utf-8") as fh:
            headings = re.findall(r"^#+ (.*)$", fh.read(), flags=re.M)
        for section in re.findall(r'"([^"]+)"', sections):
            if not any(section in h for h in headings):
                problems.append(f'{doc}, "{section}": no such section')
    return problems


def test_readme_inline_references_exist():
    text = _readme_text()
    assert inline_problems(text) == []
    # The check can fail: a renamed knob, script, flag, module, make target, path and section are caught.
    broken = ("`DEMO_SITEZ=classic make demo` `make demos` `bench/semi2.sh` `python bench/loader_bench.py --fastest` "
              "`medseg.semi.pseudo_labels` `medseg-kfolds run` `config/semi/nothing.yml` "
              '[x](docs/benchmarks.md#no-such-heading) docs/design.md, "No such section"')
    assert len(inline_problems(broken)) == 9, inline_problems(broken)
