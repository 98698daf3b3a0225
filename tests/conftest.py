"""Shared pytest setup: a quiet, single-threaded Paddle. Run the tests as ``python -m pytest``
from the repository root (the current folder is then on ``sys.path``)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
