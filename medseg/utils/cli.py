"""The convention of every command-line tool: bad input ends in one line ``error: …`` on stderr
and a non-zero exit code, never a traceback.

Each tool parses its flags with :class:`ArgumentParser` and runs its work through
:func:`run_cli`; ``python -m`` modules end with ``sys.exit(main())``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from medseg.utils.logger import get_logger


class ToolError(Exception):
    """An error a tool reports as one line with its own exit code (``exit_code``, default 2).

    Subclasses that are also ``ValueError``/``RuntimeError`` keep their usual meaning for
    callers; the attribute only tells :func:`run_cli` how to end the process.
    """

    exit_code = 2


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors follow the convention (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def error_message(err: BaseException) -> str:
    """The first line of an error, naming the file for OS errors (``path: No such file or directory``)."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    text = str(err).splitlines()[0] if str(err) else ""
    return text or type(err).__name__


def run_cli(job: Callable[[], object]) -> int:
    """Run ``job``; bad input (missing or unreadable file, bad config/checkpoint/table, occupied
    save_dir, diverged loss) prints ``error: <path>: <problem>`` on stderr and returns the error's
    exit code (2 unless it is a :class:`ToolError` with its own). Other exceptions are bugs and
    keep their traceback."""
    try:
        job()
    except (ToolError, ValueError, OSError) as err:
        message = error_message(err)
        if isinstance(err, ToolError):  # a run's own failure (e.g. a diverged loss): its log file keeps it
            get_logger("cli").error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        return int(getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
