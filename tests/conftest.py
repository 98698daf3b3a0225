"""Shared pytest setup and fixtures. Run the tests as ``python -m pytest`` from the repository
root (the current folder is then on ``sys.path``).

The builders behind the fixtures stay plain modules (``engine_fixtures`` also launches the
distributed tests' processes): ``engine_fixtures`` (a tiny prepared dataset, a tiny registered
model, its config), ``predict_fixtures`` (a DICOM study, a demo-CNN config and checkpoint),
``dicom_fixtures`` (pydicom-written CT slices), ``prepare_cohort`` (a raw Kaggle-layout cohort).
"""

import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a quiet, single-threaded Paddle


@pytest.fixture(scope="session")
def prepared_dataset(tmp_path_factory):
    """Factory: ``prepared_dataset(splits, size=…, …)`` writes a prepared dataset (docs/design.md)
    into a fresh folder and returns its root (``engine_fixtures.make_prepared``)."""
    from engine_fixtures import make_prepared

    def make(splits: dict[str, int] | None = None, **kwargs) -> str:
        return make_prepared(str(tmp_path_factory.mktemp("prepared")), splits, **kwargs)

    return make


@pytest.fixture(scope="session")
def dicom_study(tmp_path_factory):
    """``(folder, expected ids)``: a DICOM folder as users hand it to predict — real CT files
    renamed without extension, a nested synthetic series, stray files (``predict_fixtures.write_study``).
    Shared: tests only read it and write their outputs elsewhere."""
    from tests.predict_fixtures import write_study

    folder = tmp_path_factory.mktemp("dicom_study")
    return folder, write_study(str(folder))
