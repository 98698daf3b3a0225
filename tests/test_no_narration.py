"""The project speaks of itself — its commits, dates and issues — never of how it was made.

Every text file of the checkout (``git ls-files``, tracked and new but not ignored: README, docs,
configs, code, tests, scripts, benches, Makefile) is searched for narration: numbered or named
work sessions, a work period, helpers or agents, "we were asked", first-person reports. A hit
fails naming ``file:line`` and the phrase; say when with a date (YYYY-MM-DD) or a short commit
instead. Code identifiers that merely contain the word (pytest's ``scope="session"``,
onnxruntime's ``InferenceSession`` and ``session.run``) are not prose and do not match; the
pattern tests below pin both sides, so the check can fail. This file itself is not scanned: its
samples are narration on purpose.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELF = os.path.relpath(os.path.abspath(__file__), ROOT)
BINARY_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg", ".gif", ".npy", ".npz", ".hcc", ".pdparams", ".pdiparams",
                   ".pdmodel", ".onnx", ".safetensors", ".gz", ".zip", ".tar", ".pkl", ".pt", ".ico", ".pdf")
_S = "session"
# Prose use of the word: not glued to an identifier (InferenceSession, session_id), not a quoted or
# back-ticked name (scope="session"), not an attribute or a call (request.session, session.run(),
# session = ...). A sentence may still end with it ("... this session.").
_SESSION_PROSE = rf"(?<![\w.\"'`-]){_S}s?(?:'s)?(?![\w\"'`(]|\.\w|\s*=(?!=)|\s*\()"
PATTERNS: dict[str, re.Pattern[str]] = {
    "numbered session": re.compile(rf"\b{_S}s?[\s-]+\d", re.I),
    "session in prose": re.compile(_SESSION_PROSE, re.I),
    "work period": re.compile(r"\bwork(?:ing)?[\s-]+periods?\b", re.I),
    "helper or agent": re.compile(
        r"\b(?:the|a|an|another|each|every|one|this|that|other|previous|next)\s+(?:helpers?|agents?)\b"
        r"|\b(?:helpers?|agents?)\s+(?:\w+\s+)?(?:ran|measured|wrote|found|tried|built|added|reported)\b", re.I),
    "we were asked": re.compile(r"\b(?:we|I|you)\s+(?:were|was|are|am)\s+(?:asked|told|instructed)\b", re.I),
    "the brief": re.compile(r"\b(?:the|my|our|this)\s+brief\b(?!\s*(?:summary|description))", re.I),
    "first person": re.compile(
        r"(?<![\w'])I\s+(?:did|was|have|had|ran|measured|found|think|tried|wrote|added|chose|built|fixed|changed)\b"
        r"|(?<![\w'])I'(?:m|ve|d|ll)\b"),
    "numbered by the work": re.compile(r"\bnumbered\s+by\s+the\s+(?:work|run|period|person)", re.I),
}


def narration(line: str) -> list[str]:
    """The names of the patterns ``line`` matches (empty: no narration)."""
    return [name for name, pattern in PATTERNS.items() if pattern.search(line)]


def text_files() -> list[str]:
    """Tracked and new (not ignored) files of the checkout that hold text, relative to ROOT."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:  # a source archive without .git
        pytest.skip(f"git ls-files failed in {ROOT}: {exc}")
    files = []
    for rel in sorted(p.decode() for p in out.split(b"\0") if p):
        path = os.path.join(ROOT, rel)
        if rel == SELF or rel.lower().endswith(BINARY_SUFFIXES) or not os.path.isfile(path):
            continue
        with open(path, "rb") as fh:
            if b"\0" in fh.read(8192):
                continue
        files.append(rel)
    return files


SHOULD_MATCH = [
    f"The run of {_S} 12 gave 0.93.",
    f"Re-checked in this {_S}, on dev seed 0.",
    f"{_S.capitalize()}s 8 to 11 tried seven ways.",
    f"the {_S}-11 dev students' ratios",
    f"None of them fits this {_S}.",
    f"the {_S}'s issue note quotes them",
    f"# measured by the previous {_S}",
    "a semi-supervised section numbered by the work period that ran them",
    "as the helper measured on Tuesday",
    "another agent ran the bench",
    "we were asked to keep it",
    "I measured 0.5 on seed 101.",
    "Here I've kept the old layout.",
]
SHOULD_NOT_MATCH = [
    f'@pytest.fixture(scope="{_S}")',
    f"    {_S} = onnxruntime.Inference{_S.capitalize()}(path, options)",
    f"got = {_S}.run(None, feeds)[0]",
    f"names = [i.name for i in {_S}.get_inputs()]",
    f"def test_x(request): return request.{_S}",
    f"a `{_S}` fixture",
    f"{_S}_id = uuid4()",
    "Paddle's C++-extension helper warns about a missing ccache",
    "the released code's ResNet-I weights",
    "2026-12-01 (5cb60d6): dropout 0.5 in front of the slice head",
]


@pytest.mark.parametrize("line", SHOULD_MATCH)
def test_pattern_finds_narration(line):
    assert narration(line), f"no pattern matches {line!r}"


@pytest.mark.parametrize("line", SHOULD_NOT_MATCH)
def test_pattern_leaves_code_alone(line):
    assert not narration(line), f"{narration(line)} match code or a dated line: {line!r}"


def test_scan_reports_file_and_line(tmp_path):
    """The scan's own report on a file with one narrated line names that line."""
    (tmp_path / "notes.md").write_text(f"2026-12-01, 3b1cbdf: fine\nRe-run in {_S} 14.\n", encoding="utf-8")
    assert scan(str(tmp_path), ["notes.md"]) == [f"notes.md:2: numbered session, session in prose: Re-run in {_S} 14."]


def scan(root: str, files: list[str]) -> list[str]:
    """``file:line: pattern: text`` for every narrated line of ``files`` (relative to ``root``)."""
    hits = []
    for rel in files:
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                names = narration(line)
                if names:
                    hits.append(f"{rel}:{number}: {', '.join(names)}: {line.strip()[:160]}")
    return hits


def test_no_file_narrates_how_the_project_was_made():
    files = text_files()
    assert {"README.md", "Makefile", "docs/tuning_notes.md"} <= set(files) and SELF not in files
    hits = scan(ROOT, files)
    assert not hits, "narration (say when with a date or a commit instead):\n" + "\n".join(hits)
