"""Shared exit handling for ``train.py`` / ``infer.py``: user errors end in one line, not a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from medseg.utils.logger import get_logger


def run_cli(job: Callable[[], object]) -> int:
    """Run ``job``; bad input (missing file, bad config/checkpoint, occupied save_dir, diverged loss)
    prints ``error: <path>: <problem>`` on stderr and returns non-zero. Other exceptions are bugs
    and keep their traceback."""
    from medseg.engine.trainer import NonFiniteLossError

    try:
        job()
    except NonFiniteLossError as err:
        get_logger("train").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
