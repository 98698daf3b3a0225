"""medseg.utils.pool: results in order or as they finish, a worker's exception names its item,
the worker count, the per-worker set-up."""

from __future__ import annotations

import os
import time

import pytest

from medseg.utils.pool import default_workers, parallel_map, worker_pool

_SET_UP = {"done": False}


def _set_up() -> None:
    _SET_UP["done"] = True


def _slow_square(n: int) -> int:
    time.sleep(0.3 if n == 0 else 0.0)  # the first item finishes last
    return n * n


def _pid_and_set_up(_: int) -> tuple[int, bool]:
    time.sleep(0.05)
    return os.getpid(), _SET_UP["done"]


def _fail_on_b(name: str) -> str:
    if name == "b.dcm":
        raise ValueError("cannot read it")
    return name


def test_in_process_without_a_pool_and_default_worker_count():
    assert default_workers() == max(1, os.cpu_count() or 1)
    with worker_pool(1) as pool:
        assert pool is None
        assert list(parallel_map(_pid_and_set_up, [0, 1], pool, "t", "item")) == [(os.getpid(), False)] * 2
        assert list(parallel_map(_slow_square, range(6), pool, "t", "item")) == [n * n for n in range(6)]


def test_in_process_exception_keeps_its_type_and_names_the_item():
    with pytest.raises(ValueError, match="cannot read it") as info:
        list(parallel_map(_fail_on_b, ["a.dcm", "b.dcm", "c.dcm"], None, "t", "file"))
    assert info.value.__notes__ == ["while processing b.dcm"]
    with pytest.raises(ValueError) as info:
        list(parallel_map(_fail_on_b, ["b.dcm"], None, "t", "file", name=lambda f: f"file {f.upper()}"))
    assert info.value.__notes__ == ["while processing file B.DCM"]


@pytest.mark.slow  # starts worker processes
def test_pool_orders_counts_workers_and_surfaces_worker_errors():
    items = list(range(10))
    with worker_pool(2, initializer=_set_up) as pool:
        assert list(parallel_map(_slow_square, items, pool, "t", "item", ordered=True)) == [n * n for n in items]
        unordered = list(parallel_map(_slow_square, items, pool, "t", "item"))
        assert sorted(unordered) == [n * n for n in items] and unordered[-1] == 0  # as they finish
        seen = list(parallel_map(_pid_and_set_up, range(8), pool, "t", "item"))
        assert len({pid for pid, _ in seen}) == 2 and os.getpid() not in {pid for pid, _ in seen}
        assert all(done for _, done in seen)  # the initializer ran in every worker
        with pytest.raises(ValueError, match="cannot read it") as info:
            list(parallel_map(_fail_on_b, ["a.dcm", "b.dcm", "c.dcm"], pool, "t", "file", chunksize=2))
        assert info.value.__notes__ == ["while processing b.dcm"]
