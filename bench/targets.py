"""Conventions shared by the benches: target checks (each target with its measured value, then the
exit code) and the toy-size switch.

A bench that misses a target exits 1, so a script or CI can act on it; ``--no_fail`` (or
``BENCH_NO_FAIL=1`` in the environment) reports the same lines and exits 0, for exploring.
"""

from __future__ import annotations

import os


def no_fail_default() -> bool:
    return os.environ.get("BENCH_NO_FAIL", "0") not in ("", "0")


def toy_default() -> bool:
    """``BENCH_TOY=1`` (or a bench's ``--toy``): every ``*_bench.py`` at toy size, seconds instead of
    minutes, to check that it runs end to end (the smoke tests); its timings mean nothing."""
    return os.environ.get("BENCH_TOY", "0") not in ("", "0")


def finish(checks: list[tuple[str, bool]], no_fail: bool = False) -> int:
    """Print ``target: <name> PASS|MISS`` lines; 1 if any target is missed (0 with ``no_fail``)."""
    for name, ok in checks:
        print(f"target: {name} {'PASS' if ok else 'MISS'}")
    missed = [name for name, ok in checks if not ok]
    if not missed:
        print("all targets met")
        return 0
    print(f"{len(missed)} target(s) missed" + (" (exit 0: --no_fail / BENCH_NO_FAIL)" if no_fail else ""))
    return 0 if no_fail else 1
