"""The one logger. Rank 0 prints to the console; every rank can also log to its own file."""

from __future__ import annotations

import logging
import os
import sys

LOGGER_NAME = "medseg"
_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


def get_logger(name: str | None = None) -> logging.Logger:
    """Child loggers (``medseg.prepare`` …) share the handlers set up by :func:`setup_logger`."""
    logger = logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")
    root = logging.getLogger(LOGGER_NAME)
    if not root.handlers:
        setup_logger()
    return logger


class _ConsoleHandler(logging.StreamHandler):
    """A handler on whatever ``sys.stdout`` is when a record is written, not when the handler was
    made: a caller that swaps stdout (a notebook, a test's capture that is closed afterwards)
    would otherwise leave the logger writing to a dead stream."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler assigns it; the live sys.stdout wins
        pass


def current_rank() -> int:
    """The distributed rank from the launcher's environment (0 when not launched)."""
    return int(os.environ.get("PADDLE_TRAINER_ID", os.environ.get("RANK", "0")))


def setup_logger(log_file: str | None = None, rank: int | None = None, level: int = logging.INFO) -> logging.Logger:
    """(Re)configure handlers: console on rank 0 only, plus ``log_file`` (per rank) if given."""
    rank = current_rank() if rank is None else rank
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    if rank == 0:
        console = _ConsoleHandler()
        console.setFormatter(formatter)
        logger.addHandler(console)
    if log_file:
        if rank != 0:
            root, ext = os.path.splitext(log_file)
            log_file = f"{root}.rank{rank}{ext or '.log'}"
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger
