"""The exit convention of every tool: bad input ends in one line ``error: …`` and a non-zero
exit code, never a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from medseg.utils.logger import get_logger


class ToolError(Exception):
    """An error a tool reports as one line with its own exit code (``exit_code``, default 2).

    Subclasses that are also ``ValueError``/``RuntimeError`` keep their usual meaning for
    callers; the attribute only tells :func:`run_cli` how to end the process.
    """

    exit_code = 2


def run_cli(job: Callable[[], object]) -> int:
    """Run ``job``; bad input (missing file, bad config/checkpoint, occupied save_dir, diverged loss)
    prints ``error: <path>: <problem>`` on stderr, is logged, and returns the error's exit code
    (2 unless it is a :class:`ToolError` with its own). Other exceptions are bugs and keep their
    traceback."""
    try:
        job()
    except (ToolError, ValueError, FileNotFoundError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, ToolError):  # a run's own failure (e.g. a diverged loss): its log file keeps it
            get_logger("cli").error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        return int(getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
