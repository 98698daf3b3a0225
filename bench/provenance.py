"""One line saying what produced a bench's numbers: commit, UTC time, CPU, cores, load, versions.

A timing or a score without the code and the machine behind it cannot be compared with another
run, so every bench prints this line first. Python benches call ``provenance_line()``; the shell
benches run this file (``python bench/provenance.py``, or ``python -m bench.provenance``). Nothing
here fails: a run outside a git checkout says ``commit=unknown``, an unknown CPU ``cpu="unknown"``.

    provenance: commit=b8e2b28+dirty utc=2026-12-06T08:14:55Z cpu="AMD EPYC" cores=2 load1=2.41 python=3.11.7 paddle=3.3.1

``+dirty``: tracked files differ from the commit (untracked files do not count, as with
``git describe --dirty``). ``load1``: the one-minute load average when the bench started, since
timings taken beside other jobs are slower.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r'provenance: commit=(\S+) utc=(\S+) cpu="([^"]*)" cores=(\d+) load1=(\S+) python=(\S+) paddle=(\S+)')


def _git(root: str, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def commit(root: str = ROOT) -> str:
    """``<short sha>`` (``+dirty`` when tracked files changed) of the checkout ``root`` is the top
    of, else ``unknown`` (no git, or ``root`` is not a checkout of its own but sits in another one)."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or os.path.realpath(top) != os.path.realpath(root):
        return "unknown"
    sha = _git(root, "rev-parse", "--short", "HEAD")
    if not sha:
        return "unknown"
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return sha + ("+dirty" if status else "") if status is not None else sha + "+unknown-state"


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo, else lscpu (ARM kernels leave it out of cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def paddle_version() -> str:
    """From the installed distribution's metadata: importing Paddle would cost the shell benches
    seconds per call."""
    for dist in ("paddlepaddle", "paddlepaddle-gpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none"


def provenance_line(root: str = ROOT) -> str:
    """The one line (format: module docstring; ``LINE`` parses it)."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        load = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        load = "unknown"
    cpu = cpu_model().replace('"', "'")
    return (f'provenance: commit={commit(root)} utc={now} cpu="{cpu}" cores={os.cpu_count() or 0} load1={load} '
            f"python={platform.python_version()} paddle={paddle_version()}")


if __name__ == "__main__":
    print(provenance_line(), flush=True)
